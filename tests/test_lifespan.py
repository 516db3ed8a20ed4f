"""Lifespan: startup/shutdown with ``state``; a failed startup exits non-zero with the app's
message; ``--lifespan auto`` tolerates apps without lifespan; ``on`` and ``off``."""

import signal

import httpx
import pytest


def wait_failed_start(srv, timeout=10.0):
    rc = srv.wait_exit(timeout)
    assert rc is not None, f"server still running after a failed startup:\n{srv.log()}"
    return rc


def test_startup_state_reaches_requests(server):
    srv = server("lifespans:ok_app")
    assert "STARTUP-DONE" in srv.log()  # startup completed before the port accepted
    state = httpx.get(srv.url, timeout=5).json()["state"]
    assert state == {"db": "connected", "items": ["a"]}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_shutdown_runs_on_signal_and_exits_zero(server, sig):
    srv = server("lifespans:ok_app")
    httpx.get(srv.url, timeout=5)
    rc = srv.stop(sig)
    assert rc == 0, srv.log()
    log = srv.log()
    assert "SHUTDOWN-DONE" in log
    assert log.index("STARTUP-DONE") < log.index("SHUTDOWN-DONE")


def test_startup_failed_exits_nonzero_with_message(server):
    srv = server("lifespans:failing_app", wait=False)
    rc = wait_failed_start(srv)
    assert rc != 0
    assert "database unreachable 7731" in srv.log()


def test_startup_exception_with_lifespan_on_exits_nonzero(server):
    srv = server("lifespans:raising_app", "--lifespan", "on", wait=False)
    rc = wait_failed_start(srv)
    assert rc != 0
    assert "startup exploded 4242" in srv.log()


def test_lifespan_on_requires_app_support(server):
    srv = server("lifespans:no_lifespan_app", "--lifespan", "on", wait=False)
    assert wait_failed_start(srv) != 0


@pytest.mark.parametrize(
    "app", ["lifespans:no_lifespan_app", "lifespans:raising_app", "lifespans:returning_app"]
)
def test_lifespan_auto_tolerates_app_without_lifespan(server, app):
    # raising on the lifespan scope, or returning without a word (as uvicorn tolerates)
    srv = server(app)  # --lifespan auto is the default
    assert httpx.get(srv.url, timeout=5).json() == {"served": True}
    assert srv.stop() == 0


def test_lifespan_explicit_auto(server):
    srv = server("lifespans:no_lifespan_app", "--lifespan", "auto")
    assert httpx.get(srv.url, timeout=5).json() == {"served": True}


def test_lifespan_off_never_calls_lifespan(server):
    srv = server("lifespans:failing_app", "--lifespan", "off")
    assert httpx.get(srv.url, timeout=5).status_code == 200
    srv2 = server("lifespans:ok_app", "--lifespan", "off")
    assert httpx.get(srv2.url, timeout=5).json()["state"] == {}
    assert srv2.stop() == 0
    assert "STARTUP-DONE" not in srv2.log()
    assert "SHUTDOWN-DONE" not in srv2.log()
