"""h2spec, every case over h2c (cleartext, prior knowledge): against ``--http 2`` and against
``--http auto``, where the first bytes of a connection decide between h2c and HTTP/1.1; and
over TLS, where ALPN decides.

h2spec is pinned in ``tests/h2spec/go.mod`` and built into ``.tools/bin`` by ``make h2spec``,
which ``make test`` runs first. It runs all of its cases, the strict one included (``--strict``:
146 in all), each waiting at most CASE_TIMEOUT seconds for the frame it expects. A run passes
only when every case passed: none failed and none skipped (h2spec skips its concurrency case
when the server advertises no SETTINGS_MAX_CONCURRENT_STREAMS, and its flow-control cases when
the answer to a GET has no body). The one exception is AUTO_EXEMPT, on the shared port only.
h2spec's summary line is printed either way.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import IS_UVICORN, REPO

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="uvicorn has no HTTP/2")

CASE_TIMEOUT = 2  # h2spec -o: seconds one case waits for the frame it expects
RUN_TIMEOUT = 240  # the whole run: 146 cases, each failing one costs up to CASE_TIMEOUT
SUMMARY = re.compile(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed")
JUNIT_CASE = re.compile(
    r'<testcase package="([^"]*)" classname="([^"]*)"[^>]*>\s*<(failure|error|skipped)\b'
)

# With --http auto, bytes that are not the h2c preface are HTTP/1.1: h2spec's "invalid
# connection preface" is a malformed HTTP/1.1 request there, and the server rightly answers it
# (501 or 400) before it closes. h2spec expects a bare close and reads the answer as a
# truncated frame ("Actual: Error: unexpected EOF"). hypercorn's shared port fails it the same
# way; with --http 2 the case must pass.
AUTO_EXEMPT = {"http2/3.5: Sends invalid connection preface"}


def h2spec_executable() -> str:
    """``$H2SPEC``, else ``.tools/bin/h2spec`` (``make h2spec``), else one on PATH."""
    for candidate in (os.environ.get("H2SPEC"), REPO / ".tools" / "bin" / "h2spec"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    found = shutil.which("h2spec")
    if not found:
        pytest.fail("h2spec is not installed: `make h2spec` builds it into .tools/bin")
    return found


@dataclass
class H2specRun:
    argv: list[str]
    output: str
    summary: str | None = None  # "146 tests, 146 passed, 0 skipped, 0 failed"
    counts: dict = field(default_factory=dict)  # tests, passed, skipped, failed
    failures: str = ""  # h2spec's "Failures:" section: each failed case, expected and actual
    failed: list[str] = field(default_factory=list)  # "http2/3.5: <case>", from the report
    skipped: list[str] = field(default_factory=list)  # the same for skipped cases
    timed_out: bool = False

    def clean(self, exempt=frozenset()) -> bool:
        """Every case passed, but for failures of the cases in ``exempt``."""
        c = self.counts
        if not c or c["skipped"] or set(self.failed) - exempt:
            return False
        return c["passed"] + len(set(self.failed) & exempt) == c["tests"]


def run_h2spec(port: int, report: Path, host: str = "127.0.0.1", tls=False) -> H2specRun:
    """Every h2spec case (``--strict``) against host:port over h2c (or TLS with ALPN h2, the
    certificate not checked). The JUnit report (written to ``report``) names the failed and
    skipped cases; the text output explains the failures."""
    argv = [
        h2spec_executable(), "--strict", "-h", host, "-p", str(port),
        "-o", str(CASE_TIMEOUT), "--junit-report", str(report),
    ]  # fmt: skip
    if tls:
        argv += ["-t", "-k"]
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL
        )
        out, timed_out = proc.stdout + proc.stderr, False
    except subprocess.TimeoutExpired as e:
        out, timed_out = (e.stdout or b"") + (e.stderr or b""), True
    run = H2specRun(argv, out.decode("utf-8", "replace").replace("\r", "\n"), timed_out=timed_out)
    matches = list(SUMMARY.finditer(run.output))
    if matches:
        m = matches[-1]
        run.summary = m.group(0)
        names = ("tests", "passed", "skipped", "failed")
        run.counts = dict(zip(names, map(int, m.groups()), strict=True))
    start = run.output.find("\nFailures:")
    if start >= 0:
        end = run.output.find("\nFinished in", start)
        run.failures = run.output[start + 1 : end if end >= 0 else None].strip()
    if report.exists():
        # a regex, not an XML parser: h2spec writes error texts into the report unescaped
        for m in JUNIT_CASE.finditer(report.read_text("utf-8", "replace")):
            case = f"{m.group(1)}: {html.unescape(m.group(2))}"
            (run.skipped if m.group(3) == "skipped" else run.failed).append(case)
    return run


def explain(run: H2specRun, server_log: str, exempt=frozenset()) -> str:
    """The assertion message: what h2spec found wrong, case by case."""
    lines = [f"$ {' '.join(run.argv)}", f"h2spec: {run.summary or 'no summary line'}"]
    if run.timed_out:
        lines.append(f"h2spec did not finish within {RUN_TIMEOUT} s")
    if set(run.failed) & exempt:
        lines.append(f"(tolerated here: {', '.join(sorted(set(run.failed) & exempt))})")
    if run.failures:
        lines += ["", run.failures]
    if run.skipped:
        lines += ["", "Skipped:", *(f"  {name}" for name in run.skipped)]
    if not run.summary or not (run.failures or run.skipped):
        lines += ["", "h2spec's output (last 3000 characters):", run.output[-3000:]]
    lines += ["", "server log (last 2000 characters):", server_log[-2000:]]
    return "\n".join(lines)


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("http", ["2", "auto"])
def test_h2spec_every_case_over_h2c(server, tmp_path, capsys, http):
    srv = server("h2spec_app:app", "--http", http, "--lifespan", "off", "--no-access-log")
    run = run_h2spec(srv.port, tmp_path / "h2spec-junit.xml")
    with capsys.disabled():  # shown even when the test passes (CI logs quote it)
        print(f"\nh2spec (--http {http}): {run.summary or 'no summary line'}")
    exempt = AUTO_EXEMPT if http == "auto" else frozenset()
    alive = srv.proc.poll() is None  # malformed input must never crash it
    died = "" if alive else f"the server exited with {srv.proc.returncode}\n"
    ok = run.clean(exempt) and alive
    assert ok, died + explain(run, srv.log(), exempt)


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_h2spec_every_case_over_tls(server, tmp_path, capsys):
    """Over TLS, ALPN chooses h2 before any HTTP/2 byte: no case is exempt."""
    import trustme

    leaf = trustme.CA().issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    srv = server(
        "h2spec_app:app", "--lifespan", "off", "--no-access-log",
        "--ssl-certfile", cert, "--ssl-keyfile", key,
    )  # fmt: skip
    run = run_h2spec(srv.port, tmp_path / "h2spec-junit.xml", tls=True)
    with capsys.disabled():
        print(f"\nh2spec (TLS): {run.summary or 'no summary line'}")
    alive = srv.proc.poll() is None
    died = "" if alive else f"the server exited with {srv.proc.returncode}\n"
    assert run.clean() and alive, died + explain(run, srv.log())
