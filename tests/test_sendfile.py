"""Response bodies from files, sent with sendfile(2): the ASGI pathsend and zerocopysend
extensions (Starlette's FileResponse uses pathsend when offered), over HTTP/1.1 and HTTP/2,
to fast and slow readers, with what follows on the connection intact. (WSGI's
wsgi.file_wrapper is in test_wsgi.py.)"""

from __future__ import annotations

import os
import socket
import struct
import time

import h2.config
import h2.connection
import httpx
import pytest
from conftest import IS_UVICORN, ConnectionClosed, RawConn, request_bytes

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="pronghorn's sendfile path")

SIZE = 3_000_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "data.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture(scope="module")
def files(module_server, data):
    return module_server("files_app:app", env={"FILES_PATH": str(data)})


def test_scope_offers_the_file_extensions(files):
    body = httpx.get(f"{files.url}/extensions").text
    assert body == "http.response.pathsend,http.response.zerocopysend"


@pytest.mark.parametrize("http2", [False, True])
def test_starlette_file_response(files, data, http2):
    with httpx.Client(http2=http2, http1=not http2) as c:
        r = c.get(f"{files.url}/file")
    assert r.status_code == 200
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert r.headers["content-length"] == str(SIZE)
    assert r.content == data.read_bytes()


def test_starlette_file_response_head_and_range(files, data):
    r = httpx.head(f"{files.url}/file")
    assert r.status_code == 200 and r.headers["content-length"] == str(SIZE)
    assert r.content == b""
    r = httpx.get(f"{files.url}/file", headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206
    assert r.content == data.read_bytes()[1000:2000]


@pytest.mark.parametrize("http2", [False, True])
@pytest.mark.parametrize("parts, cl", [(1, True), (3, True), (4, False)])
def test_zerocopysend_offset_count_parts(files, data, http2, parts, cl):
    offset, count = 12345, 1_000_001
    url = f"{files.url}/zerocopy?offset={offset}&count={count}&parts={parts}"
    if cl:
        url += "&cl=1"
    with httpx.Client(http2=http2, http1=not http2) as c:
        r = c.get(url)
    assert r.status_code == 200
    assert r.content == data.read_bytes()[offset : offset + count]


@pytest.mark.parametrize(
    "target, says",
    [
        ("/pathsend?path=/nonexistent/file", "No such file"),
        ("/pathsend?path=/tmp", "Is a directory"),
        ("/zerocopy-pipe", "must be a regular file"),
    ],
)
def test_file_that_cannot_be_sent_is_500_logged(files, target, says):
    before = len(files.log())
    r = httpx.get(f"{files.url}{target}")
    assert r.status_code == 500
    files.wait_for_log(says, timeout=5)
    assert says in files.log()[before:]


@pytest.mark.parametrize("http2", [False, True])
def test_client_reset_mid_file_leaves_the_server_serving(files, data, http2):
    """A client that resets while a file is going out: the file's descriptor and segments go
    with the connection (or stream), and the next client is served."""
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", files.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        if http2:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            hs = [(":method", "GET"), (":path", "/file"), (":scheme", "http"), (":authority", "t")]
            conn.send_headers(1, hs, end_stream=True)
            sock.sendall(conn.data_to_send())
        else:
            sock.sendall(request_bytes("GET", "/file"))
        assert sock.recv(4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, with most of the file unsent
    with httpx.Client(http2=http2, http1=not http2) as c:
        assert c.get(f"{files.url}/file").content == data.read_bytes()


def test_slow_reader_gets_the_whole_file_then_the_next_response(files, data):
    """The socket fills: the rest goes on as the reader makes room, in order, and a pipelined
    request behind it is answered after it."""
    want = data.read_bytes()
    with RawConn(files.port, rcvbuf=4096, timeout=20) as conn:
        conn.send(request_bytes("GET", "/file") + request_bytes("GET", "/extensions"))
        got = bytearray()
        deadline = time.monotonic() + 30
        while len(conn.buf) < SIZE + 600 and time.monotonic() < deadline:
            time.sleep(0.002)  # a slow reader: the server meets a full socket again and again
            if not conn._fill():
                break
        resp = conn.read_response()
        got += resp.body
        assert resp.status == 200 and bytes(got) == want
        assert conn.read_response().body == b"http.response.pathsend,http.response.zerocopysend"


def test_reader_that_stops_is_dropped_after_write_timeout(server, data):
    srv = server("files_app:app", "--timeout-write", "1", env={"FILES_PATH": str(data)})
    with RawConn(srv.port, rcvbuf=4096, timeout=10) as conn:
        conn.send(request_bytes("GET", "/file"))
        conn._fill()  # the head and a little of the body, then no more reading
        t0 = time.monotonic()
        time.sleep(3)
        # the server gave up on us: draining what the kernel holds ends in EOF or a reset
        with pytest.raises(ConnectionClosed):
            while True:
                conn._read_exact(len(conn.buf) + 1)
        assert time.monotonic() - t0 < 10
    assert httpx.get(f"{srv.url}/extensions").status_code == 200
