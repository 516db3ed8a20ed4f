"""The transport under the unhappy paths a real network produces: slow readers, half-closed
clients, stalled peers, timers after async responses, a stalled event loop, Upgrade headers.
Nothing queued for a client that is still reading may be lost, and every deadline is about
progress, not about how long a response takes."""

import hashlib
import re
import select
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
from conftest import IS_UVICORN, RawConn, request_bytes

MiB = 1 << 20
PATTERN = bytes(range(256)) * 4096  # the /big route's body pattern (tests/apps/basic.py)


def pattern_sha256(size: int) -> str:
    h = hashlib.sha256()
    whole, rest = divmod(size, len(PATTERN))
    for _ in range(whole):
        h.update(PATTERN)
    h.update(PATTERN[:rest])
    return h.hexdigest()


def read_slowly(conn: RawConn, rate: float, limit: int | None = None) -> tuple[bytes, str]:
    """Read until the server closes, at about ``rate`` bytes/s. Returns (bytes, how it ended:
    "fin" or "reset")."""
    sock = conn.sock
    sock.settimeout(15)
    data = bytearray(conn.buf)
    conn.buf.clear()
    t0 = time.monotonic()
    step = 16384
    while limit is None or len(data) < limit:
        try:
            got = sock.recv(step)
        except ConnectionResetError:
            return bytes(data), "reset"
        if not got:
            return bytes(data), "fin"
        data += got
        ahead = len(data) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    return bytes(data), "limit"


def split_response(data: bytes) -> tuple[bytes, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    return head, body


# ---- 1, 2: nothing queued is dropped by a close ---------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["connection-close", "http10-close-delimited", "keep-alive"],
)
def test_slow_reader_gets_the_whole_large_response(server, kind):
    """12 MiB to a client reading ~3 MB/s takes ~4 s (the kernel's buffers hold a few MiB; the
    rest waits in the server), longer than any linger or flush timer: every byte must arrive,
    hashed, and a close-delimited body must end with a clean FIN."""
    srv = server("basic:app")
    size = 12 * MiB
    # one body message: the app's send() returns at once and the server closes right after,
    # with most of the body still queued
    if kind == "connection-close":
        req = request_bytes(
            "GET", f"/big?size={size}&chunk={size}", headers=[("Connection", "close")]
        )
    elif kind == "http10-close-delimited":
        # a first byte, then all the rest: no length known, so the close ends the body
        req = request_bytes(
            "GET", f"/big?size={size}&first=1&chunk={size}&cl=0", version="HTTP/1.0", host=None
        )
    else:
        req = request_bytes("GET", f"/big?size={size}&chunk={size}")
    conn = RawConn(srv.port, rcvbuf=32768, timeout=15)
    try:
        conn.send(req)
        head = conn.read_head().raw_head
        if kind == "keep-alive":
            data, how = read_slowly(conn, 3e6, limit=size)
        else:
            data, how = read_slowly(conn, 3e6)
            assert how == "fin", f"the response ended with a {how} after {len(data)} bytes"
    finally:
        conn.close()
    assert len(data) == size, f"got {len(data)} of {size} body bytes"
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(size)
    if kind == "http10-close-delimited":
        assert b"content-length" not in head.lower()


def test_half_closed_client_still_gets_the_whole_response(server):
    """An HTTP/1.0 client that sends its request, shuts down its sending side and then reads
    slowly is still reading (RFC 9112 §9.6): all of it arrives."""
    srv = server("basic:app")
    size = 12 * MiB
    conn = RawConn(srv.port, rcvbuf=32768, timeout=15)
    try:
        conn.send(
            request_bytes(
                "GET", f"/big?size={size}&first=1&chunk={size}&cl=0", version="HTTP/1.0", host=None
            )
        )
        time.sleep(0.3)  # the server is writing: its queue is full
        conn.sock.shutdown(socket.SHUT_WR)
        data, how = read_slowly(conn, 3e6)
    finally:
        conn.close()
    head, body = split_response(data)
    assert head.startswith(b"HTTP/1.1 200")
    assert how == "fin"
    assert len(body) == size, f"got {len(body)} of {size} body bytes"
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)


# ---- 3: the write timeout is about progress ------------------------------------------------


def test_write_timeout_spares_a_slow_but_steady_reader(server):
    """--timeout-write 1: a client reading 8 MiB, sent as one body message, steadily at ~2 MB/s
    for ~4 s is never cut: one write holds most of the body, and the timeout is about
    progress within it."""
    srv = server("basic:app", "--timeout-write", "1")
    size = 8 * MiB
    conn = RawConn(srv.port, rcvbuf=32768, timeout=15)
    try:
        conn.send(request_bytes("GET", f"/big?size={size}&chunk={size}"))
        data, how = read_slowly(conn, 2e6, limit=size + 1000)
    finally:
        conn.close()
    head, body = split_response(data)
    assert how != "reset", f"reset after {len(body)} of {size} body bytes"
    body = body[:size]
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)


def test_write_timeout_cuts_a_reader_that_stops(server):
    """--timeout-write 1: a client that reads a while, then stops, is reset within a few
    seconds of stopping."""
    srv = server("basic:app", "--timeout-write", "1")
    conn = RawConn(srv.port, rcvbuf=32768, timeout=15)
    try:
        conn.send(request_bytes("GET", f"/big?size={64 * MiB}&chunk=65536"))
        read_slowly(conn, 2e6, limit=2 * MiB)
        stopped = time.monotonic()
        p = select.poll()
        p.register(conn.sock, select.POLLERR | select.POLLHUP | select.POLLRDHUP)
        assert p.poll(8000), "a client that stopped reading was never dropped"
        elapsed = time.monotonic() - stopped
    finally:
        conn.close()
    assert elapsed < 4, f"dropped {elapsed:.1f} s after the client stopped reading"


# ---- 4: half-close before the answer; abandoned responses are unmistakable --------------------


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_request_then_fin_is_answered(server, version):
    """`printf 'GET / ...' | nc -N`: the request, then FIN, to an app that awaits before it
    answers. The client gets the answer, then the server closes."""
    srv = server("basic:app")
    conn = RawConn(srv.port, timeout=5)
    try:
        host = None if version == "HTTP/1.0" else "test"
        conn.send(request_bytes("GET", "/sleep?s=0.3", version=version, host=host))
        conn.sock.shutdown(socket.SHUT_WR)
        data = conn.read_until_closed(timeout=5)
    finally:
        conn.close()
    head, body = split_response(data)
    assert head.startswith(b"HTTP/1.1 200"), data
    assert body == b"slept"


@pytest.mark.skipif(shutil.which("nc") is None, reason="no nc")
def test_request_then_fin_with_netcat(server):
    srv = server("basic:app")
    out = subprocess.run(
        ["nc", "-N", "127.0.0.1", str(srv.port)],
        input=request_bytes("GET", "/sleep?s=0.3"),
        capture_output=True,
        timeout=10,
    )
    assert out.stdout.startswith(b"HTTP/1.1 200"), out
    assert out.stdout.endswith(b"slept")


def test_pipelined_requests_then_fin_are_all_answered(server):
    srv = server("basic:app")
    conn = RawConn(srv.port, timeout=5)
    try:
        conn.send(b"".join(request_bytes("GET", f"/id?n={i}&s=0.05") for i in range(3)))
        conn.sock.shutdown(socket.SHUT_WR)
        data = conn.read_until_closed(timeout=5)
    finally:
        conn.close()
    assert data.count(b"HTTP/1.1 200") == 3, data
    assert data.endswith(b"2")


@pytest.mark.parametrize("half_close", [False, True])
def test_abandoned_close_delimited_body_ends_in_reset(server, half_close):
    """HTTP/1.0, no Content-Length: the body ends at the close, so a response the app abandons
    mid-body must end in a reset, never a FIN that makes the cut body look complete — also
    when the client had already half-closed."""
    srv = server("basic:app")
    conn = RawConn(srv.port, timeout=5)
    try:
        conn.send(request_bytes("GET", "/error-after", version="HTTP/1.0", host=None))
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        data = b""
        how = "fin"
        while True:
            try:
                got = conn.sock.recv(65536)
            except ConnectionResetError:
                how = "reset"
                break
            if not got:
                break
            data += got
    finally:
        conn.close()
    assert how == "reset", f"an abandoned body ended with a clean FIN: {data!r}"


# ---- 5: bodies of 4 GiB and more -------------------------------------------------------------


@pytest.mark.timeout(180)
def test_body_of_more_than_4_gib_in_one_message(server):
    """One http.response.body of 4 GiB + 16 bytes: no 32-bit truncation of any length. The
    body is zeros but for an 8-byte marker before each GiB boundary and at the end; the client
    checks the length and where each marker landed."""
    srv = server("basic:app")
    size = (4 << 30) + 16
    conn = RawConn(srv.port, timeout=60)
    buf = bytearray(4 * MiB)
    found = {}  # offset -> 8-byte marker
    try:
        conn.send(request_bytes("GET", f"/huge?size={size}"))
        head = conn.read_head()
        assert head.status == 200
        assert head.header("content-length") == str(size)
        total = 0
        tail = b""
        pending = bytes(conn.buf)
        conn.buf.clear()
        while total < size:
            if pending:
                n = len(pending)
                buf[:n] = pending
                pending = b""
            else:
                n = conn.sock.recv_into(buf)
            assert n, f"closed after {total} of {size} body bytes"
            if buf.count(0, 0, n) != n or tail.strip(b"\0"):
                # a marker may straddle two reads: the last 8 bytes of the previous one lead
                joined = tail + bytes(buf[:n])
                base = total - len(tail)
                for m in re.finditer(rb"[^\x00]{8}", joined):
                    found[base + m.start()] = m.group()
            tail = bytes(buf[max(0, n - 8) : n])
            total += n
        conn.sock.settimeout(0.5)
        try:
            extra = conn.sock.recv(16)
        except TimeoutError:
            extra = b""
    finally:
        conn.close()
    assert total == size
    assert extra == b""
    expected = [((g << 30) - 8, b"GiB-%03d|" % g) for g in range(1, 4)]
    expected.append((size - 8, b"THE-END!"))
    assert sorted(found.items()) == expected


# ---- 6: an Upgrade header does not wedge keep-alive -----------------------------------------


def test_upgrade_request_is_served_as_http11_and_keep_alive_goes_on(server):
    """With HTTP/2 off, `Upgrade: h2c` is ignored and the connection serves on (the default
    takes the upgrade: tests/test_http2.py)."""
    srv = server("basic:app", "--http", "1")
    with RawConn(srv.port) as conn:
        conn.send(
            request_bytes(
                "GET",
                "/sleep?s=0.1",
                headers=[
                    ("Connection", "Upgrade, HTTP2-Settings"),
                    ("Upgrade", "h2c"),
                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
            )
        )
        first = conn.read_response()
        assert first.status == 200 and first.body == b"slept"
        conn.send(request_bytes("GET", "/id?n=second"))
        second = conn.read_response()
        assert second.body == b"second"


def test_upgrade_websocket_on_a_plain_route_then_next_request(server):
    """With WebSockets off, a handshake is a plain GET and keep-alive goes on past it (with
    them on, the app gets a websocket scope: tests/test_websocket.py)."""
    srv = server("basic:app", "--ws", "none")
    with RawConn(srv.port) as conn:
        conn.send(
            request_bytes(
                "GET",
                "/sleep?s=0.1",
                headers=[
                    ("Connection", "Upgrade"),
                    ("Upgrade", "websocket"),
                    ("Sec-WebSocket-Version", "13"),
                    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ],
            )
            + request_bytes("GET", "/id?n=pipelined")
        )
        assert conn.read_response().body == b"slept"
        assert conn.read_response().body == b"pipelined"


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_curl_http2_upgrade_attempt_serves_both_urls(server):
    """curl --http2 on http:// sends `Upgrade: h2c`; until h2c is served, both requests on the
    connection must be answered over HTTP/1.1."""
    srv = server("basic:app")
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2",
            "-m",
            "8",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            f"{srv.url}/sleep?s=0.1",
            f"{srv.url}/sleep?s=0.1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "200" and lines[2] == "200", out.stdout


# ---- 7, 8: timers ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/sleep?s=0.05"], ids=["sync", "async"])
def test_keep_alive_timeout_after_response(server, path):
    """--timeout-keep-alive 1 with a later header timeout: an idle connection closes after ~1 s,
    whether the response was written in the same tick (sync) or after an await (async)."""
    srv = server("basic:app", "--timeout-keep-alive", "1", "--timeout-request-header", "4")
    with RawConn(srv.port, timeout=10) as conn:
        conn.send(request_bytes("GET", path))
        assert conn.read_response().status == 200
        t0 = time.monotonic()
        assert conn.is_closed(timeout=8)
        elapsed = time.monotonic() - t0
    assert 0.8 < elapsed < 2.0, f"idle connection closed after {elapsed:.2f} s, not ~1 s"


def test_empty_lines_do_not_hold_a_connection(server):
    """CRLFs before a request-line are skipped (RFC 9112 §2.2) but are not progress: a client
    sending one every 0.7 s is cut at the header timeout."""
    srv = server("basic:app", "--timeout-keep-alive", "1", "--timeout-request-header", "2")
    with RawConn(srv.port, timeout=10) as conn:
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 6:
            conn.send(b"\r\n")
            r, _, _ = select.select([conn.sock], [], [], 0.7)
            if r:
                closed = True
                break
        elapsed = time.monotonic() - t0
    assert closed, "a client sending empty lines held the connection for 6 s"
    assert elapsed < 3.5


# ---- 9: the request body has a progress timeout -------------------------------------------


def test_body_timeout_cuts_a_stalled_upload(server):
    srv = server("basic:app", "--timeout-request-body", "1")
    with RawConn(srv.port, timeout=10) as conn:
        conn.send(request_bytes("POST", "/echo", headers=[("Content-Length", "100")]) + b"x")
        t0 = time.monotonic()
        data = conn.read_until_closed(timeout=8)
        elapsed = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408"), data
    assert 0.8 < elapsed < 3


def test_body_timeout_cuts_a_dripping_upload(server):
    """One byte every 1.5 s is slower than --timeout-request-body 1: cut."""
    srv = server("basic:app", "--timeout-request-body", "1")
    with RawConn(srv.port, timeout=10) as conn:
        conn.send(request_bytes("POST", "/echo", headers=[("Content-Length", "100")]))
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 8:
            conn.send(b"x")
            r, _, _ = select.select([conn.sock], [], [], 1.5)
            if r:
                closed = True
                break
    assert closed, "a body dripping a byte every 1.5 s held the connection for 8 s"


def test_body_timeout_spares_a_slow_but_steady_upload(server):
    srv = server("basic:app", "--timeout-request-body", "1")
    with RawConn(srv.port, timeout=10) as conn:
        conn.send(request_bytes("POST", "/echo", headers=[("Content-Length", "10")]))
        for _ in range(10):
            time.sleep(0.3)
            conn.send(b"y")
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"y" * 10


def test_body_timeout_bounds_the_drain_of_an_unread_body(server):
    """The app answers without reading the body; the server reads on to keep the connection,
    but a client that stops sending the rest is cut at the body timeout."""
    srv = server("basic:app", "--timeout-request-body", "1")
    with RawConn(srv.port, timeout=10) as conn:
        conn.send(request_bytes("POST", "/no-read", headers=[("Content-Length", "1000")]) + b"z")
        resp = conn.read_response()
        assert resp.status == 200
        t0 = time.monotonic()
        assert conn.is_closed(timeout=6), "the drain of an unread body has no timeout"
        assert time.monotonic() - t0 < 3


# ---- 10: input that is waiting wins over an expired deadline ----------------------------------


def test_request_waiting_while_the_loop_is_blocked_is_served(server):
    """A keep-alive request that arrives while the app blocks the event loop longer than the
    keep-alive timeout is read and answered when the loop runs again, not reset."""
    srv = server("basic:app", "--timeout-keep-alive", "1")
    for attempt in range(3):
        with RawConn(srv.port, timeout=10) as idle:
            idle.send(request_bytes("GET", "/id?n=first"))
            assert idle.read_response().body == b"first"
            blocker = threading.Thread(
                target=lambda: httpx.get(f"{srv.url}/block?s=2.5", timeout=10), daemon=True
            )
            blocker.start()
            time.sleep(0.5)  # the loop is blocked now
            idle.send(request_bytes("GET", f"/id?n=second-{attempt}"))
            resp = idle.read_response()
            assert resp.body == f"second-{attempt}".encode()
            blocker.join()


# ---- the same checks against uvicorn need flags it lacks ---------------------------------------

if IS_UVICORN:
    pytestmark = pytest.mark.skip("transport tests use pronghorn's flags")
