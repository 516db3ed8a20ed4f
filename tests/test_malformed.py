"""Malformed, ambiguous and oversize requests (RFC 9112): the exact status, then a close,
and a request smuggled behind the bad one is never answered."""

import pytest
from conftest import RawConn, parse_responses, request_bytes

SMUGGLED = b"GET /id?n=smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


def assert_rejected(port, data: bytes, status: int, smuggle=True):
    """Send ``data`` (plus a second request); exactly one response with ``status``, then close."""
    with RawConn(port, timeout=5) as conn:
        conn.send(data + (SMUGGLED if smuggle else b""))
        captured = conn.read_until_closed(timeout=5)  # AssertionError if the server keeps it open
    assert captured, "connection closed without any response"
    responses = parse_responses(captured)
    assert responses[0].status == status, (
        f"expected {status}, got {responses[0].status}: {captured[:300]!r}"
    )
    assert len(responses) == 1, f"more than one response: {captured!r}"
    assert b"smuggled" not in captured
    return responses[0]


# Each case: (request bytes, expected status, why). ``H`` is the usual start of a request.
H = b"GET / HTTP/1.1\r\nHost: t\r\n"
P = b"POST /echo HTTP/1.1\r\nHost: t\r\n"

BAD_REQUESTS = {
    # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host or with more than one Host line.
    "missing-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "duplicate-host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "duplicate-host-same-value": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    # RFC 9112 §6.1 / §11.2: Content-Length with Transfer-Encoding is a smuggling vector; the
    # server may reject it and must close. We require the rejection (400).
    "cl-and-te": (
        P + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    "te-and-cl": (
        P + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 §6.3 item 5: an invalid Content-Length (differing values, non-digits) -> 400.
    "conflicting-content-lengths": (
        P + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "content-length-list": (P + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    "content-length-not-a-number": (P + b"Content-Length: abc\r\n\r\n", 400),
    "content-length-negative": (P + b"Content-Length: -1\r\n\r\n", 400),
    "content-length-plus-sign": (P + b"Content-Length: +5\r\n\r\nhello", 400),
    # RFC 9112 §7.1: chunk-size = 1*HEXDIG
    "chunk-size-not-hex": (P + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-negative": (P + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-0x-prefix": (
        P + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-size-overflow": (
        P + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "chunk-size-empty": (P + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-longer-than-size": (
        P + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 §5.2: obs-fold in a request -> 400 (or unfold; we require the rejection)
    "obs-fold": (H + b"X-Folded: a\r\n  continued\r\n\r\n", 400),
    "obs-fold-tab": (H + b"X-Folded: a\r\n\tcontinued\r\n\r\n", 400),
    # RFC 9112 §5.1: whitespace between field name and colon -> MUST 400
    "space-before-colon": (H + b"X-Test : 1\r\n\r\n", 400),
    "tab-before-colon": (H + b"X-Test\t: 1\r\n\r\n", 400),
    "space-before-colon-content-length": (P + b"Content-Length : 5\r\n\r\nhello", 400),
    # RFC 9110 §5.5 / RFC 9112 §2.2: control characters (and NUL, bare CR) are invalid
    "ctl-in-header-value": (H + b"X-Test: a\x01b\r\n\r\n", 400),
    "nul-in-header-value": (H + b"X-Test: a\x00b\r\n\r\n", 400),
    "bare-cr-in-header-value": (H + b"X-Test: a\rb\r\n\r\n", 400),
    "del-in-header-value": (H + b"X-Test: a\x7fb\r\n\r\n", 400),
    "ctl-in-header-name": (H + b"X-T\x01est: 1\r\n\r\n", 400),
    "non-token-header-name": (H + b"X[Test]: 1\r\n\r\n", 400),
    "empty-header-name": (H + b": value\r\n\r\n", 400),
    "ctl-in-target": (b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "nul-in-target": (b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    "no-line-terminator-header": (H + b"X-Test 1\r\n\r\n", 400),
    # RFC 9112 §6.1: a transfer coding the server does not understand -> 501 (Not
    # Implemented). "foo" alone is also "chunked is not last" (§6.3 item 4, 400); we follow
    # §6.1's more specific status for an unknown coding.
    "te-unknown": (P + b"Transfer-Encoding: foo\r\n\r\n", 501),
    "te-unknown-then-chunked": (
        P + b"Transfer-Encoding: foo, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        501,
    ),
    # RFC 9112 §6.3 item 4: in a request, chunked must be the final coding, else 400.
    "te-chunked-not-last": (
        P + b"Transfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 §7: chunked must not be applied more than once: ambiguous framing -> 400.
    "te-chunked-twice": (
        P + b"Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9110 §15.6.6 / RFC 9112 §2.3: a major version the server does not support -> 505;
    # a version that is not HTTP-version syntax at all -> 400.
    "version-2.0": (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    "version-3.0": (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
    "version-1.x": (b"GET / HTTP/1.x\r\nHost: t\r\n\r\n", 400),
    "version-no-minor": (b"GET / HTTP/1\r\nHost: t\r\n\r\n", 400),
    "version-lowercase": (b"GET / http/1.1\r\nHost: t\r\n\r\n", 400),
    "version-wrong-name": (b"GET / FOO/1.1\r\nHost: t\r\n\r\n", 400),
    "version-missing": (b"GET / \r\nHost: t\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_malformed_request_rejected_and_closed(basic, name):
    data, status = BAD_REQUESTS[name]
    assert_rejected(basic.port, data, status)


def test_server_still_serves_after_malformed_requests(basic):
    for name in ("cl-and-te", "chunk-size-not-hex", "obs-fold", "nul-in-target", "version-1.x"):
        with RawConn(basic.port) as conn:
            conn.send(BAD_REQUESTS[name][0])
            conn.recv_available(0.5)
    with RawConn(basic.port) as conn:
        conn.send(request_bytes())
        assert conn.read_response().status == 200


def test_http10_request_without_host_is_fine(basic):
    # Host is only required in HTTP/1.1 (RFC 9112 §3.2)
    with RawConn(basic.port) as conn:
        conn.send(b"GET / HTTP/1.0\r\n\r\n")
        assert conn.read_response().status == 200


# -- limits: defaults -------------------------------------------------------------------------


def test_request_line_over_default_limit_is_414(basic):
    # default --limit-request-line is 8190 bytes
    assert_rejected(basic.port, request_bytes("GET", "/" + "a" * 9000), 414)


def test_request_line_under_default_limit_is_served(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/" + "a" * 8000))
        assert conn.read_response().status == 200


def test_too_many_headers_default_is_431(basic):
    # default --limit-request-headers is 100 header lines
    headers = [(f"X-H{i}", "v") for i in range(120)]
    assert_rejected(basic.port, request_bytes(headers=headers), 431)


def test_many_headers_under_default_limit_are_served(basic):
    headers = [(f"X-H{i}", "v") for i in range(90)]
    with RawConn(basic.port) as conn:
        conn.send(request_bytes(headers=headers))
        assert conn.read_response().status == 200


def test_header_section_over_default_size_is_431(basic):
    # default --limit-request-header-size is 65536 bytes in total
    headers = [(f"X-Big{i}", "v" * 8000) for i in range(9)]
    assert_rejected(basic.port, request_bytes(headers=headers), 431)


def test_one_huge_header_is_431(basic):
    assert_rejected(basic.port, request_bytes(headers=[("X-Huge", "v" * 70000)]), 431)


# -- limits: flags --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(module_server):
    return module_server(
        "basic:app",
        "--limit-request-line",
        "200",
        "--limit-request-headers",
        "10",
        "--limit-request-header-size",
        "2000",
        "--limit-request-body",
        "1000",
    )


def test_limit_request_line_flag(limited):
    assert_rejected(limited.port, request_bytes("GET", "/" + "a" * 300), 414)
    with RawConn(limited.port) as conn:
        conn.send(request_bytes("GET", "/" + "a" * 100))
        assert conn.read_response().status == 200


def test_limit_request_headers_flag(limited):
    assert_rejected(limited.port, request_bytes(headers=[(f"X-H{i}", "1") for i in range(15)]), 431)
    with RawConn(limited.port) as conn:
        conn.send(request_bytes(headers=[(f"X-H{i}", "1") for i in range(5)]))
        assert conn.read_response().status == 200


def test_limit_request_header_size_flag(limited):
    assert_rejected(limited.port, request_bytes(headers=[("X-Big", "v" * 3000)]), 431)
    with RawConn(limited.port) as conn:
        conn.send(request_bytes(headers=[("X-Big", "v" * 1000)]))
        assert conn.read_response().status == 200


def test_limit_request_body_content_length_is_413(limited):
    assert_rejected(limited.port, request_bytes("POST", "/echo", body=b"x" * 1001), 413)


def test_limit_request_body_at_limit_is_served(limited):
    with RawConn(limited.port) as conn:
        conn.send(request_bytes("POST", "/echo", body=b"x" * 1000))
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"x" * 1000


def test_limit_request_body_chunked_is_413(limited):
    # A chunked body has no declared size: the limit trips while it streams in. The app has
    # not answered yet (it reads the whole body first), so the client gets the 413.
    chunk = b"x" * 600
    data = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(chunk)
        + chunk
        + b"\r\n"
        + b"%x\r\n" % len(chunk)
        + chunk
        + b"\r\n0\r\n\r\n"
    )
    assert_rejected(limited.port, data, 413)
