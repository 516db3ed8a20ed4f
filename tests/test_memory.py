"""No memory growth over a keep-alive run: RSS after a warm-up of 1000 requests and after
1000 more differ by at most a small slack (not a timing test)."""

import os

import httpx
import pytest
from conftest import IS_UVICORN, RawConn, proc_status, request_bytes

SLACK = 1 << 20  # 1 MiB


def run_requests(port, n):
    body = b"m" * 1024
    with RawConn(port, timeout=10) as conn:
        for i in range(n):
            if i % 2:
                conn.send(request_bytes("POST", "/echo", body=body))
                assert conn.read_response().body == body
            else:
                conn.send(request_bytes("GET", f"/id?n={i}", headers=[("X-Request", str(i))]))
                assert conn.read_response().body == str(i).encode()


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    bool(os.environ.get("PRONGHORN_TEST_PRELOAD")),
    reason="under ASan, freed memory waits in the quarantine: RSS says nothing there",
)
def test_keep_alive_run_does_not_grow_rss(server):
    srv = server("basic:app", "--no-access-log")
    run_requests(srv.port, 1000)
    warm = proc_status(srv.pid, "VmRSS")
    run_requests(srv.port, 1000)
    after = proc_status(srv.pid, "VmRSS")
    growth = after - warm
    assert growth <= SLACK, f"RSS grew by {growth / 1024:.0f} KiB over 1000 keep-alive requests"


def mixed_requests(port, n):
    """Keep-alive GET/POST, pipelined pairs, errors in the app, aborted uploads, bad requests."""
    run_requests(port, n)
    for _ in range(n // 10):
        with RawConn(port, timeout=10) as conn:
            conn.send(request_bytes("GET", "/id?n=a") + request_bytes("GET", "/id?n=b"))
            assert conn.read_response().body == b"a"
            assert conn.read_response().body == b"b"
        with RawConn(port, timeout=10) as conn:
            conn.send(request_bytes("GET", "/error-before"))
            assert conn.read_response().status == 500
        with RawConn(port, timeout=10) as conn:  # upload abandoned half way
            conn.send(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 500
            )
        with RawConn(port, timeout=10) as conn:
            conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            assert conn.read_response().status == 400


@pytest.mark.timeout(120)
def test_no_python_objects_leak_per_request(server):
    # LeakSanitizer cannot see a leaked reference to a GC-tracked object (the collector's
    # lists still reach it), so count the live objects instead.
    srv = server("basic:app", "--no-access-log")

    def objects():
        with RawConn(srv.port, timeout=10) as conn:
            conn.send(request_bytes("GET", "/objects"))
            return int(conn.read_response().body)

    mixed_requests(srv.port, 500)
    before = objects()
    mixed_requests(srv.port, 500)
    after = objects()
    # 500 requests leaking even one object each would add 500+.
    assert after - before < 100, f"{after - before} more live objects after 500 more requests"


def test_startup_heap_is_frozen(basic):
    """What the app built before serving is out of the collector's way: a full collection
    under load does not walk it."""
    if IS_UVICORN:
        pytest.skip("pronghorn's own behaviour")
    info = httpx.get(basic.url + "/gc", timeout=5).json()
    assert info["frozen"] > 1000, info
