"""SIGINT/SIGTERM: stop accepting, finish in-flight requests within
``--timeout-graceful-shutdown``, run lifespan shutdown, exit 0."""

import signal
import socket
import time

import pytest
from conftest import RawConn, request_bytes


def connect_refused(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_finishes_in_flight_request(server, sig):
    srv = server("lifespans:slow_shutdown_app")
    conn = RawConn(srv.port, timeout=10)
    try:
        conn.send(request_bytes("GET", "/slow?s=1.5"))
        srv.wait_for_log("REQUEST-START /slow")
        srv.send_signal(sig)
        time.sleep(0.4)
        assert srv.proc.poll() is None, "exited without waiting for the in-flight request"
        assert connect_refused(srv.port), "still accepting connections during shutdown"
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status == 200
    assert resp.json() == {"slept": 1.5}
    rc = srv.wait_exit(10)
    assert rc == 0, srv.log()
    log = srv.log()
    assert "SHUTDOWN-DONE" in log
    assert log.index("REQUEST-END /slow") < log.index("SHUTDOWN-DONE")


def test_graceful_shutdown_timeout_bounds_exit(server):
    srv = server("lifespans:slow_shutdown_app", "--timeout-graceful-shutdown", "1")
    conn = RawConn(srv.port, timeout=10)
    try:
        conn.send(request_bytes("GET", "/stuck?s=30"))
        srv.wait_for_log("REQUEST-START /stuck")
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        rc = srv.wait_exit(8)
        elapsed = time.monotonic() - t0
        assert rc is not None, "still running 8 s after SIGTERM with --timeout-graceful-shutdown 1"
        assert elapsed < 5, f"took {elapsed:.1f} s to exit"
        assert rc >= 0, f"died of signal {-rc}"
        # the unfinished request's connection is closed (with or without an error response)
        conn.read_until_closed(timeout=3)
    finally:
        conn.close()


def test_idle_keep_alive_connections_do_not_delay_shutdown(server):
    srv = server("basic:app")
    conns = [RawConn(srv.port) for _ in range(3)]
    try:
        for c in conns:
            c.send(request_bytes())
            assert c.read_response().status == 200
        t0 = time.monotonic()
        rc = srv.stop(signal.SIGTERM)
        assert rc == 0
        assert time.monotonic() - t0 < 3, "idle keep-alive connections held up the shutdown"
        for c in conns:
            assert c.is_closed(timeout=2)
    finally:
        for c in conns:
            c.close()


def test_shutdown_when_idle_is_quick_and_clean(server):
    srv = server("basic:app")
    t0 = time.monotonic()
    assert srv.stop(signal.SIGINT) == 0
    assert time.monotonic() - t0 < 3
    assert "BASIC-LIFESPAN-SHUTDOWN" in srv.log()


def test_graceful_shutdown_timeout_answers_503_to_requests_not_yet_answered(server):
    """At the graceful-shutdown timeout, a request whose response has not started gets a 503
    with `connection: close` (nothing was sent, so a reset would hide what happened); a
    response cut mid-body ends in a reset."""
    srv = server("basic:app", "--timeout-graceful-shutdown", "1")
    waiting = RawConn(srv.port, timeout=10)
    streaming = RawConn(srv.port, timeout=10, rcvbuf=16384)
    try:
        waiting.send(request_bytes("GET", "/stuck"))
        streaming.send(request_bytes("GET", "/download?token=shutdown&n=64"))
        time.sleep(0.5)
        srv.send_signal(signal.SIGTERM)
        resp = waiting.read_response()
        assert resp.status == 503
        assert resp.header("connection") == "close"
        assert waiting.is_closed()
        how = "fin"
        try:
            while streaming.sock.recv(1 << 20):
                pass
        except ConnectionResetError:
            how = "reset"
        assert how == "reset"
        assert srv.wait_exit(10) == 0
    finally:
        waiting.close()
        streaming.close()
