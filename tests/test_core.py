"""pronghorn._core.Server used directly, as server.py uses it: its life cycle (start twice, a
start that fails half-way), what it does with an exception in its own hooks, and that a
Server nobody closed is freed with everything it holds. The cases are in apps/core_cases.py;
each runs in a process of its own, with the sanitizer runtime under `make test-asan`."""

import subprocess
import sys

import pytest
from conftest import APPS_DIR, IS_UVICORN, REPO, SANITIZER_MARKS, child_env

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="pronghorn's own C extension")


@pytest.mark.parametrize(
    "case",
    [
        "start_twice",
        "start_half_way",
        "proxy_hook_error",
        "never_closed_idle",
        "never_closed_in_flight",
        "module_gc",
    ],
)
def test_core(case):
    out = subprocess.run(
        [sys.executable, str(APPS_DIR / "core_cases.py"), case],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = out.stdout + out.stderr
    assert out.returncode == 0 and "CASE-OK" in out.stdout, output
    assert not any(mark in output for mark in SANITIZER_MARKS), output
