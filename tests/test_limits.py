"""--limit-concurrency (503 beyond it) and --timeout-request-header (slow request heads)."""

import time

import httpx
from conftest import RawConn, request_bytes


def test_limit_concurrency_answers_503_beyond_limit(server):
    srv = server("basic:app", "--limit-concurrency", "2")
    slow = [RawConn(srv.port, timeout=10) for _ in range(2)]
    try:
        for c in slow:
            c.send(request_bytes("GET", "/sleep?s=1.5"))
        deadline = time.monotonic() + 5
        while srv.log().count("SLEEP-START") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        resp = httpx.get(f"{srv.url}/id?n=extra", timeout=5)
        assert resp.status_code == 503
        assert time.monotonic() - t0 < 1.0, "the 503 should not wait for a free slot"
        for c in slow:
            assert c.read_response().body == b"slept"
    finally:
        for c in slow:
            c.close()
    # below the limit again
    assert httpx.get(f"{srv.url}/id?n=after", timeout=5).text == "after"


def test_limit_concurrency_zero_means_unlimited(server):
    srv = server("basic:app", "--limit-concurrency", "0")
    conns = [RawConn(srv.port, timeout=10) for _ in range(5)]
    try:
        for c in conns:
            c.send(request_bytes("GET", "/sleep?s=0.5"))
        assert [c.read_response().status for c in conns] == [200] * 5
    finally:
        for c in conns:
            c.close()


def test_timeout_request_header_closes_slow_head(server):
    srv = server("basic:app", "--timeout-request-header", "1")
    with RawConn(srv.port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n")  # the head never ends
        t0 = time.monotonic()
        data = conn.read_until_closed(timeout=5)
        elapsed = time.monotonic() - t0
    assert 0.7 <= elapsed <= 3.5, f"closed after {elapsed:.2f} s with --timeout-request-header 1"
    # either a plain close or a 408 (RFC 9110 §15.5.9) is fine
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data


def test_timeout_request_header_is_for_the_whole_head(server):
    # A slowloris client that keeps sending a byte now and then must not extend the deadline.
    srv = server("basic:app", "--timeout-request-header", "1")
    with RawConn(srv.port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 5:
            time.sleep(0.25)
            conn.send(b"X")
            if conn.recv_available(0.01) or conn.eof:
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed, "a dribbling request head kept the connection open"
    assert elapsed <= 3.5


def test_request_head_within_timeout_is_served(server):
    srv = server("basic:app", "--timeout-request-header", "1")
    with RawConn(srv.port) as conn:
        conn.send(b"GET /id?n=ok HTTP/1.1\r\n")
        time.sleep(0.4)
        conn.send(b"Host: t\r\n\r\n")
        assert conn.read_response().body == b"ok"
