"""HTTP/1.1 and HTTP/1.0 behaviour: keep-alive, pipelining, request and response framing,
HEAD/204/304, Date and Server headers, response header validation."""

import asyncio
import email.utils
import hashlib
import os
import re
import subprocess
import time

import httpx
import pytest
from conftest import (
    IS_UVICORN,
    SERVER_NAME,
    RawConn,
    parse_responses,
    raw_request,
    request_bytes,
)

# -- keep-alive -----------------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(basic):
    with RawConn(basic.port) as conn:
        for i in range(5):
            conn.send(request_bytes("GET", f"/id?n={i}"))
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.body == str(i).encode()
            assert (resp.header("connection") or "").lower() != "close"


def test_keep_alive_httpx_reuses_connection(basic):
    with httpx.Client(base_url=basic.url) as client:
        ports = {client.get("/scope").json()["client"][1] for _ in range(3)}
    assert len(ports) == 1, "httpx should have reused one connection"


def test_keep_alive_curl_reuses_connection(basic):
    out = subprocess.run(
        ["curl", "-sv", "--max-time", "10", f"{basic.url}/", f"{basic.url}/id?n=2"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello, world!2"
    assert re.search(r"Re-using existing connection", out.stderr), out.stderr


def test_keep_alive_default_timeout_keeps_idle_connection_open(basic):
    # The default --timeout-keep-alive is 5 s: after 1.5 s idle the connection still works.
    with RawConn(basic.port) as conn:
        conn.send(request_bytes())
        assert conn.read_response().status == 200
        time.sleep(1.5)
        conn.send(request_bytes("GET", "/id?n=7"))
        assert conn.read_response().body == b"7"


def test_keep_alive_idle_timeout_closes_connection(server):
    srv = server("basic:app", "--timeout-keep-alive", "1")
    with RawConn(srv.port) as conn:
        conn.send(request_bytes())
        assert conn.read_response().status == 200
        t0 = time.monotonic()
        assert conn.is_closed(timeout=5.0), "idle keep-alive connection was not closed"
        elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed <= 4.0, f"closed after {elapsed:.2f} s with --timeout-keep-alive 1"


def test_connection_close_request_header_closes(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes(headers=[("Connection", "close")]))
        resp = conn.read_response()
        assert resp.status == 200
        assert (resp.header("connection") or "").lower() == "close"
        assert conn.is_closed()


# -- HTTP/1.0 -------------------------------------------------------------------------------


def test_http10_without_keep_alive_closes_after_response(basic):
    with RawConn(basic.port) as conn:
        conn.send(b"GET / HTTP/1.0\r\n\r\n")  # no Host needed in 1.0
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"Hello, world!"
        assert (resp.header("connection") or "close").lower() != "keep-alive"
        assert conn.is_closed()


def test_http10_with_keep_alive_keeps_connection(basic):
    with RawConn(basic.port) as conn:
        for i in range(3):
            conn.send(f"GET /id?n={i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.body == str(i).encode()
            assert (resp.header("connection") or "").lower() == "keep-alive"


def test_http10_keep_alive_without_content_length_is_close_delimited(basic):
    # No Content-Length from the app and no chunked in 1.0: the body ends with the connection,
    # so the server must close even though the client asked for keep-alive.
    with RawConn(basic.port) as conn:
        conn.send(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") is None
        assert resp.body == b"first,second,third"
        assert conn.eof


def test_http10_curl(basic):
    out = subprocess.run(
        ["curl", "-s", "--http1.0", "--max-time", "10", "-D", "-", f"{basic.url}/chunked"],
        capture_output=True,
        timeout=15,
    )
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.")
    assert b" 200" in head.splitlines()[0]
    assert b"transfer-encoding" not in head.lower()
    assert body == b"first,second,third"


# -- pipelining -----------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(basic):
    # The first request is the slowest: answers must still come back in request order.
    data = (
        request_bytes("GET", "/id?n=1&s=0.3")
        + request_bytes("GET", "/id?n=2")
        + request_bytes("POST", "/echo", body=b"three")
    )
    with RawConn(basic.port) as conn:
        conn.send(data)
        bodies = [conn.read_response().body for _ in range(3)]
    assert bodies == [b"1", b"2", b"three"]


def test_pipelined_burst(basic):
    data = b"".join(request_bytes("GET", f"/id?n={i}") for i in range(50))
    with RawConn(basic.port) as conn:
        conn.send(data)
        bodies = [conn.read_response().body for _ in range(50)]
    assert bodies == [str(i).encode() for i in range(50)]


# -- request bodies -------------------------------------------------------------------------


def test_request_body_content_length(basic):
    body = os.urandom(300_000)
    resp = httpx.post(f"{basic.url}/echo", content=body, timeout=10)
    assert resp.status_code == 200
    assert resp.content == body


def test_request_body_chunked_with_trailers_and_extensions(basic):
    data = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum\r\n\r\n"
        b"5\r\nhello\r\n"
        b"6;name=value\r\n world\r\n"  # a chunk extension is allowed and ignored
        b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    with RawConn(basic.port) as conn:
        conn.send(data + request_bytes("GET", "/id?n=next"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"hello world"
        # the trailers were consumed: the next request on the connection is parsed cleanly
        assert conn.read_response().body == b"next"


def test_request_body_chunked_empty(basic):
    data = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    resp = raw_request(basic.port, data)
    assert resp.status == 200
    assert resp.body == b""


def test_request_body_chunked_upload_curl(basic, tmp_path):
    payload = os.urandom(1_500_000)
    f = tmp_path / "upload.bin"
    f.write_bytes(payload)
    out = subprocess.run(
        [
            "curl",
            "-s",
            "--max-time",
            "20",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            f"@{f}",
            f"{basic.url}/echo-info",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    import json

    info = json.loads(out.stdout)
    assert info["length"] == len(payload)
    assert info["sha256"] == hashlib.sha256(payload).hexdigest()


# -- response framing -----------------------------------------------------------------------


def test_response_framed_by_app_content_length(basic):
    resp = raw_request(basic.port, request_bytes())
    assert resp.header("content-length") == "13"
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"Hello, world!"


def test_response_chunked_without_content_length_on_http11(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/chunked") + request_bytes("GET", "/id?n=after"))
        resp = conn.read_response()
        assert resp.header("transfer-encoding", "").lower() == "chunked"
        assert resp.header("content-length") is None
        assert resp.chunked
        assert resp.body == b"first,second,third"
        assert conn.read_response().body == b"after"  # the chunked framing ended cleanly


def test_response_streaming_many_parts(basic):
    with httpx.Client(base_url=basic.url, timeout=10) as client:
        resp = client.get("/stream", params={"n": 200, "size": 5000})
    assert resp.status_code == 200
    assert len(resp.content) == 200 * 5000
    assert resp.content[:5000] == b"A" * 5000


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_body_longer_than_content_length_is_app_error(basic, version):
    # Sending more than the declared Content-Length is an app error: the extra bytes never
    # reach the wire (they would be read as the next response) and the connection is closed.
    before = len(basic.log())
    with RawConn(basic.port) as conn:
        conn.send(
            request_bytes(
                "GET", "/cl-long", version=version, headers=[("Connection", "keep-alive")]
            )
            + request_bytes("GET", "/id?n=second", version=version)
        )
        data = conn.read_until_closed(timeout=5)
    head, _, body = data.partition(b"\r\n\r\n")
    if data == b"" or re.match(rb"HTTP/1\.[01] 500", head):
        pass  # the server held the head back and aborted (or answered 500): also fine
    else:
        assert re.match(rb"HTTP/1\.[01] 200", head), data
        assert body in (b"", b"01234"), f"extra bytes after the declared length: {body!r}"
    assert b"second" not in data
    time.sleep(0.2)
    assert re.search(r"(?i)error|exception|traceback", basic.log()[before:])


def test_body_shorter_than_content_length_is_app_error(basic):
    # The app ends the body early: the response cannot be completed, so the server must close
    # the connection (the client sees fewer bytes than declared) and not reuse it.
    before = len(basic.log())
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/cl-short") + request_bytes("GET", "/id?n=second"))
        data = conn.read_until_closed(timeout=5)
    head, _, body = data.partition(b"\r\n\r\n")
    if data and not head.startswith(b"HTTP/1.1 500"):  # b"": aborted before anything went out
        assert head.startswith(b"HTTP/1.1 200"), data
        assert len(body) < 10
    assert b"second" not in data
    time.sleep(0.2)
    assert re.search(r"(?i)error|exception|traceback", basic.log()[before:])


def test_head_response_has_no_body(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("HEAD", "/"))
        resp = conn.read_response(head_request=True)
        assert resp.status == 200
        # the app's Content-Length is kept (it describes the GET body); no body bytes follow
        assert resp.header("content-length") == "13"
        conn.send(request_bytes("GET", "/id?n=after-head"))
        assert conn.read_response().body == b"after-head"


def test_head_on_streaming_route_has_no_body(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("HEAD", "/chunked") + request_bytes("GET", "/id?n=after-head"))
        resp = conn.read_response(head_request=True)
        assert resp.status == 200
        # had the server written chunks (even "0\r\n\r\n"), this would not parse as a response
        assert conn.read_response().body == b"after-head"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(basic, status):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", f"/status/{status}") + request_bytes("GET", "/id?n=after"))
        resp = conn.read_response()
        assert resp.status == status
        # RFC 9112 §6.1: no Transfer-Encoding in 204 (and no body on the wire for 204/304)
        assert resp.header("transfer-encoding") is None
        if status == 204:
            assert resp.header("content-length") in (None, "0")
        assert conn.read_response().body == b"after"


def test_status_with_body(basic):
    resp = raw_request(basic.port, request_bytes("GET", "/status/418"))
    assert resp.status == 418
    assert resp.body == b"body"


# -- Date / Server / response headers -------------------------------------------------------


def test_date_header(basic):
    resp = raw_request(basic.port, request_bytes())
    dates = resp.header_list("date")
    assert len(dates) == 1
    # IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110 §5.6.7)
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", dates[0])
    when = email.utils.parsedate_to_datetime(dates[0]).timestamp()
    assert abs(when - time.time()) < 5


def test_server_header(basic):
    resp = raw_request(basic.port, request_bytes())
    assert resp.header_list("server") == [SERVER_NAME]


def test_app_headers_kept_in_order_with_repeats(basic):
    resp = raw_request(basic.port, request_bytes("GET", "/custom-headers"))
    assert resp.header("x-app") == "1"
    assert resp.header_list("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("route", ["/bad-header-name", "/bad-header-value"])
def test_invalid_response_header_rejected(basic, route):
    # A header name or value with CR/LF would let the app split the response. It must never
    # reach the wire: send() fails, the app error becomes a 500 (as uvicorn does).
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", route))
        resp = conn.read_response(allow_incomplete=True)
        rest = conn.recv_available(0.3)
    assert resp.status == 500
    assert resp.header("injected") is None
    assert b"injected" not in resp.raw_head.lower() + rest.lower()


def test_server_header_can_be_disabled_and_extra_headers_added(server):
    srv = server(
        "basic:app",
        "--no-server-header",
        "--no-date-header",
        "--header",
        "X-Deployment:blue",
        "--header",
        "X-Team: core",
    )
    resp = raw_request(srv.port, request_bytes())
    assert resp.header("server") is None
    assert resp.header("date") is None
    assert resp.header("x-deployment") == "blue"
    assert resp.header("x-team") == "core"
    assert resp.body == b"Hello, world!"


def test_many_concurrent_clients(basic):
    async def main():
        async with httpx.AsyncClient(
            base_url=basic.url, timeout=20, limits=httpx.Limits(max_connections=50)
        ) as client:
            resps = await asyncio.gather(
                *(client.get("/id", params={"n": i, "s": 0.05}) for i in range(100))
            )
        return [r.text for r in resps]

    assert asyncio.run(main()) == [str(i) for i in range(100)]


@pytest.mark.skipif(IS_UVICORN, reason="uvicorn writes with send(), not counted in syscw")
def test_small_response_is_one_write(server):
    # /proc/<pid>/io counts write(2)/writev(2) calls; with the access log off, each small
    # response on a keep-alive connection should cost one write (head and body coalesced).
    srv = server("basic:app", "--no-access-log")
    n = 30
    with RawConn(srv.port) as conn:
        conn.send(request_bytes())
        conn.read_response()
        time.sleep(0.1)

        def syscw():
            for line in open(f"/proc/{srv.pid}/io"):
                if line.startswith("syscw:"):
                    return int(line.split()[1])

        before = syscw()
        for _ in range(n):
            conn.send(request_bytes())
            assert conn.read_response().body == b"Hello, world!"
        time.sleep(0.1)
        writes = syscw() - before
    if writes == 0:
        pytest.skip("server writes with send()/sendmsg(), which syscw does not count")
    assert writes <= n + 3, f"{writes} write calls for {n} small responses"


def test_responses_parse_after_connection_close(basic):
    # A capture read until close parses as exactly the responses sent.
    with RawConn(basic.port) as conn:
        conn.send(request_bytes() + request_bytes(headers=[("Connection", "close")]))
        responses = parse_responses(conn.read_until_closed())
    assert [r.status for r in responses] == [200, 200]


# -- framing corner cases ----------------------------------------------------------------------


def test_app_chunked_encoding_to_http10_client_is_close_delimited(basic):
    """RFC 9112 §6.1: never chunked to an HTTP/1.0 client, even when the app asks for it."""
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/te-chunked", version="HTTP/1.0", host=None))
        data = conn.read_until_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    assert b"transfer-encoding" not in head.lower()
    assert body == b"part1,part2"


def test_app_chunked_encoding_to_http11_client(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/te-chunked") + request_bytes("GET", "/id?n=next"))
        resp = conn.read_response()
        assert resp.chunked and resp.body == b"part1,part2"
        assert conn.read_response().body == b"next"


@pytest.mark.parametrize("first", ["chunked", "close"])
def test_rejected_response_start_leaves_nothing_behind(basic, first):
    """A start rejected for its headers (TE with CL; a bad value beside `connection: close`),
    then a valid one: the response is framed by the valid one alone and keep-alive goes on."""
    with RawConn(basic.port) as conn:
        conn.send(
            request_bytes("GET", f"/retry-start?first={first}") + request_bytes("GET", "/id?n=next")
        )
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"ok!"
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") == "3"
        assert resp.header("connection") is None
        assert conn.read_response().body == b"next"


def test_204_never_carries_content_length(basic):
    """RFC 9110 §8.6: no Content-Length in a 1xx or 204 response, whatever the app set."""
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/status-cl?status=204") + request_bytes("GET", "/id?n=b"))
        resp = conn.read_response()
        assert resp.status == 204
        assert resp.header("content-length") is None
        assert conn.read_response().body == b"b"


def test_304_keeps_the_apps_content_length_and_sends_no_body(basic):
    """RFC 9110 §8.6 lets a 304 carry the Content-Length of the 200 it stands for."""
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/status-cl?status=304") + request_bytes("GET", "/id?n=b"))
        resp = conn.read_response()
        assert resp.status == 304
        assert resp.header("content-length") == "5"
        assert conn.read_response().body == b"b"


def test_fragment_is_not_part_of_path_or_query(basic):
    resp = raw_request(basic.port, request_bytes("GET", "/scope?x=1#frag"))
    scope = resp.json()
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "x=1"
    resp = raw_request(basic.port, request_bytes("GET", "/scope#only-frag"))
    scope = resp.json()
    assert scope["path"] == "/scope" and scope["query_string"] == ""
