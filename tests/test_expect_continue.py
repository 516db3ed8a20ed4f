"""``Expect: 100-continue``: the interim response goes out only when the app first calls
``receive()``; it carries no body; an app that answers without reading gets no 100."""

import hashlib
import os
import subprocess
import time

from conftest import RawConn, request_bytes


def continue_request(target, version="HTTP/1.1", length=5):
    return request_bytes(
        "POST",
        target,
        version=version,
        headers=[("Content-Length", str(length)), ("Expect", "100-continue")],
    )


def test_100_continue_sent_when_app_calls_receive(basic):
    with RawConn(basic.port) as conn:
        conn.send(continue_request("/continue?s=0.6"))
        # the app sleeps 0.6 s before receive(): nothing may arrive before that
        assert conn.recv_available(0.3) == b""
        interim = conn.read_head()
        assert interim.status == 100
        assert interim.version == "HTTP/1.1"
        # a 1xx response has no body and no framing headers
        assert interim.header("content-length") is None
        assert interim.header("transfer-encoding") is None
        assert conn.recv_available(0.2) == b"", "bytes after the 100 before the body was sent"
        conn.send(b"hello")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"got 5"


def test_100_continue_when_app_reads_at_once(basic):
    with RawConn(basic.port) as conn:
        conn.send(continue_request("/continue"))
        head = conn.read_head()
        assert head.status == 100
        conn.send(b"hello")
        assert conn.read_response().body == b"got 5"


def test_no_100_continue_when_app_answers_without_reading(basic):
    with RawConn(basic.port) as conn:
        conn.send(continue_request("/no-read"))
        resp = conn.read_response()
        assert resp.interim == [], "100 Continue sent although the app never called receive()"
        assert resp.status == 200
        assert resp.body == b"not reading"


def test_no_100_continue_for_http10_client(basic):
    # RFC 9110 §10.1.1: a server MUST NOT send a 100 to an HTTP/1.0 client.
    with RawConn(basic.port) as conn:
        conn.send(continue_request("/continue", version="HTTP/1.0"))
        assert conn.recv_available(0.4) == b""
        conn.send(b"hello")
        resp = conn.read_response()
        assert resp.interim == []
        assert resp.body == b"got 5"


def test_100_continue_with_curl(basic, tmp_path):
    payload = os.urandom(2 * 1024 * 1024)
    f = tmp_path / "big.bin"
    f.write_bytes(payload)
    t0 = time.monotonic()
    out = subprocess.run(
        [
            "curl",
            "-sv",
            "--max-time",
            "20",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
            "--data-binary",
            f"@{f}",
            f"{basic.url}/echo-info",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "HTTP/1.1 100 Continue" in out.stderr
    # curl waited for the 100, not for its 10 s expect timeout
    assert time.monotonic() - t0 < 8
    assert f'"sha256": "{hashlib.sha256(payload).hexdigest()}"' in out.stdout


def test_expect_continue_with_empty_body_keeps_the_connection(basic):
    """Content-Length: 0 has no body to wait for: the connection and a request pipelined
    behind it go on as usual."""
    with RawConn(basic.port) as conn:
        conn.send(continue_request("/no-read", length=0) + request_bytes("GET", "/id?n=behind"))
        first = conn.read_response()
        assert first.status == 200
        assert first.header("connection") is None
        assert conn.read_response().body == b"behind"


def test_unread_expected_body_closes_and_says_so(basic):
    """The app answers without reading and no 100 went out: the client will not send the body,
    so the server closes — and the response head says `connection: close` first."""
    with RawConn(basic.port) as conn:
        conn.send(continue_request("/no-read", length=1000))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("connection") == "close"
        assert conn.is_closed()
