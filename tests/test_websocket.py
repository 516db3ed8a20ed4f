"""WebSockets: the ASGI websocket scope and messages, the HTTP/1.1 handshake and its refusals,
permessage-deflate, framing errors from a raw client, pings, limits, backpressure both ways,
graceful shutdown and the access log; driven by the `websockets` client library and raw
sockets. (Autobahn's cases run in `make autobahn`; Starlette, FastAPI and a browser below.)"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import httpx
import pytest
from conftest import IS_UVICORN, RawConn
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="pronghorn's WebSocket flags and limits")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(scope="module")
def wsrv(module_server):
    return module_server("ws_app:app")


def ws_url(srv, path="/echo"):
    return f"ws://127.0.0.1:{srv.port}{path}"


def results(srv) -> dict:
    return httpx.get(srv.url + "/result", timeout=5).json()


def wait_result(srv, key, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = results(srv)
        if key in r:
            return r[key]
        time.sleep(0.05)
    raise AssertionError(f"no {key!r} in {results(srv)}")


# ---- a raw client: the handshake and frames by hand -------------------------------------


def handshake(port, path="/echo", extra=b"", key=b"dGhlIHNhbXBsZSBub25jZQ==", version=b"13"):
    """A raw connection that sent a handshake; returns (conn, response head)."""
    c = RawConn(port)
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    req += b"Connection: Upgrade\r\n"
    if key is not None:
        req += b"Sec-WebSocket-Key: " + key + b"\r\n"
    if version is not None:
        req += b"Sec-WebSocket-Version: " + version + b"\r\n"
    c.send(req + extra + b"\r\n")
    return c, c.read_head()


def open_raw(port, path="/echo", extra=b""):
    c, head = handshake(port, path, extra)
    assert head.status == 101, head
    return c


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, (0x80 if mask else 0) | n])
    elif n < 65536:
        head = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(c, timeout=5.0):
    """(opcode, payload) of the next frame from the server (unmasked, as servers send)."""
    deadline = time.monotonic() + timeout

    def need(n):
        while len(c.buf) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("no frame")
            if not c._fill(timeout=max(0.01, deadline - time.monotonic())):
                raise ConnectionError(f"closed with {bytes(c.buf)!r}")
        out = bytes(c.buf[:n])
        del c.buf[:n]
        return out

    b0, b1 = need(2)
    assert not b1 & 0x80, "a server frame is never masked"
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", need(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", need(8))[0]
    return b0 & 0x0F, need(n)


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def expect_close(c, code):
    """The server's next frames end in a close frame with code, then the TCP close."""
    while True:
        op, payload = read_frame(c)
        if op == 8:
            assert close_code(payload) == code, payload
            break
    assert c.is_closed(timeout=5)


# ---- the ASGI messages -------------------------------------------------------------------


def test_echo_text_and_bytes(wsrv):
    with connect(ws_url(wsrv)) as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv() == b"\x00\x01\xff"
        ws.send("ünïcødé ✓ 🦌")
        assert ws.recv() == "ünïcødé ✓ 🦌"
        ws.send("")
        assert ws.recv() == ""
        ws.send("after an empty one")  # (compressed: the empty one must not upset the window)
        assert ws.recv() == "after an empty one"


@pytest.mark.parametrize("compression", ["deflate", None])
def test_big_and_many_messages(wsrv, compression):
    with connect(ws_url(wsrv), compression=compression, max_size=None) as ws:
        ext = ws.response.headers.get("sec-websocket-extensions")
        if compression:
            assert ext and ext.startswith("permessage-deflate"), ext
        else:
            assert ext is None
        big = os.urandom(1 << 20)
        ws.send(big)
        assert ws.recv() == big
        text = "pronghorn " * 100_000  # compresses well
        ws.send(text)
        assert ws.recv() == text
        for i in range(500):
            ws.send(f"m{i}")
        for i in range(500):
            assert ws.recv() == f"m{i}"


def test_fragmented_message_is_one_receive(wsrv):
    with connect(ws_url(wsrv)) as ws:
        ws.send(["frag", "men", "ted"])  # websockets sends an iterable as fragments
        assert ws.recv() == "fragmented"
        ws.send([b"a", b"b"])
        assert ws.recv() == b"ab"


def test_deflate_off_by_flag(server):
    srv = server("ws_app:app", "--no-ws-per-message-deflate")
    with connect(ws_url(srv)) as ws:
        assert ws.response.headers.get("sec-websocket-extensions") is None
        ws.send("x" * 1000)
        assert ws.recv() == "x" * 1000


def test_deflate_parameters_negotiated(wsrv):
    offer = (
        b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; "
        b"client_max_window_bits; server_no_context_takeover\r\n"
    )
    c, head = handshake(wsrv.port, extra=offer)
    with c:
        assert head.status == 101
        ext = head.header("sec-websocket-extensions")
        params = [p.strip() for p in ext.split(";")]
        assert params[0] == "permessage-deflate"
        assert "server_max_window_bits=10" in params
        assert "server_no_context_takeover" in params


def test_subprotocol_and_headers(wsrv):
    with connect(ws_url(wsrv, "/subprotocol"), subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers["x-extra"] == "yes"
        assert json.loads(ws.recv()) == {"subprotocols": ["chat", "superchat"]}


def test_scope(wsrv):
    c = open_raw(wsrv.port, "/scope?q=1")
    with c:
        op, payload = read_frame(c)
    facts = json.loads(payload)
    assert facts["type"] == "websocket"
    assert facts["scheme"] == "ws"
    assert facts["http_version"] == "1.1"
    assert facts["path"] == "/scope"
    assert facts["raw_path"] == "/scope"
    assert facts["query_string"] == "q=1"
    assert facts["subprotocols"] == []
    assert facts["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert facts["has_method"] is False
    assert "websocket.http.response" in facts["extensions"]
    assert facts["client"][0] == "127.0.0.1"
    names = [n for n, _ in facts["headers"]]
    assert "sec-websocket-key" in names and "upgrade" in names


def test_close_before_accept_is_403(wsrv):
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(wsrv, "/deny"))
    assert e.value.response.status_code == 403


def test_return_before_accept_is_403(wsrv):
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(wsrv, "/refuse"))
    assert e.value.response.status_code == 403


def test_raise_before_accept_is_500(wsrv):
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url(wsrv, "/raise"))
    assert e.value.response.status_code == 500
    wsrv.wait_for_log("boom before accept")


HANDSHAKE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def test_http_response_denial(wsrv):
    c = RawConn(wsrv.port)
    with c:
        c.send(b"GET /respond HTTP/1.1\r\nHost: x\r\n" + HANDSHAKE + b"\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (418, b"no websocket here")
        assert r.header("x-why") == "teapot"
        assert r.header("upgrade") is None
        # keep-alive goes on after a refused upgrade
        c.send(b"GET /http HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.read_response().body == b"plain"
    r = httpx.get(wsrv.url + "/respond")  # a plain GET: the app sees http, not websocket
    assert r.text == "plain"


def test_raise_after_accept_closes_1011(wsrv):
    with connect(ws_url(wsrv, "/raise-after")) as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
    assert e.value.rcvd.code == 1011
    wsrv.wait_for_log("boom after accept")


def test_app_close_code_and_reason(wsrv):
    with connect(ws_url(wsrv, "/close")) as ws:
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
    assert (e.value.rcvd.code, e.value.rcvd.reason) == (4321, "bye")
    after = wait_result(wsrv, "close")
    assert after["type"] == "websocket.disconnect"
    assert after["code"] == 4321


def test_server_close_after_message(wsrv):
    c = open_raw(wsrv.port, "/server-close")
    with c:
        assert read_frame(c) == (1, b"hi")
        op, payload = read_frame(c)
        assert op == 8 and close_code(payload) == 1000
        c.send(frame(8, struct.pack("!H", 1000)))
        assert c.is_closed(timeout=5)  # the server closes TCP after the handshake


def test_our_close_does_not_wait_forever_for_the_peers(server):
    srv = server("ws_app:app", "--ws-ping-interval", "0")
    c = open_raw(srv.port, "/server-close")
    with c:
        assert read_frame(c) == (1, b"hi")
        op, payload = read_frame(c)
        assert op == 8
        t0 = time.monotonic()
        assert c.is_closed(timeout=10)  # no close frame from us: the server stops waiting
        assert 3 < time.monotonic() - t0 < 9


def test_limit_concurrency_counts_open_websockets(server):
    srv = server("ws_app:app", "--limit-concurrency", "1")
    with connect(ws_url(srv)) as ws:
        ws.send("x")
        assert ws.recv() == "x"
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url(srv))
        assert e.value.response.status_code == 503
    time.sleep(0.3)
    with connect(ws_url(srv)) as ws:  # the first one's end made room
        ws.send("y")
        assert ws.recv() == "y"


def test_send_after_close_raises_oserror(wsrv):
    with connect(ws_url(wsrv, "/send-after-close")) as ws:
        with pytest.raises(ConnectionClosed):
            ws.recv()
    assert wait_result(wsrv, "send_after_close") == ["ClientDisconnected", True]


def test_client_close_reaches_the_app(server):
    srv = server("ws_app:app")
    with connect(ws_url(srv, "/disconnect")) as ws:
        ws.close(4000, "done here")
    got = wait_result(srv, "disconnect")
    assert got == {"type": "websocket.disconnect", "code": 4000, "reason": "done here"}


def test_half_close_without_a_close_frame_is_1006(server):
    srv = server("ws_app:app")
    c = open_raw(srv.port, "/disconnect")
    with c:
        c.sock.shutdown(socket.SHUT_WR)  # a FIN, no close frame: the session was cut short
        assert wait_result(srv, "disconnect")["code"] == 1006
        assert c.is_closed(timeout=5)


def test_abrupt_close_is_1006(server):
    srv = server("ws_app:app")
    c = open_raw(srv.port, "/disconnect")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    got = wait_result(srv, "disconnect")
    assert got["code"] == 1006


# ---- the handshake, checked ---------------------------------------------------------------


def test_handshake_accept_key(wsrv):
    c, head = handshake(wsrv.port)
    with c:
        assert head.status == 101
        expected = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + GUID).digest())
        assert head.header("sec-websocket-accept") == expected.decode()
        assert head.header("upgrade").lower() == "websocket"
        assert "upgrade" in head.header("connection").lower()
        c.send(frame(1, b"after the handshake"))
        assert read_frame(c) == (1, b"after the handshake")


@pytest.mark.parametrize(
    "key, version, status",
    [
        (None, b"13", 400),
        (b"c2hvcnQ=", b"13", 400),  # base64 of 5 bytes, not 16
        (b"not base64 at all!!!!!!=", b"13", 400),
        (b"dGhlIHNhbXBsZSBub25jZQ==", b"8", 426),
        (b"dGhlIHNhbXBsZSBub25jZQ==", None, 426),
    ],
)
def test_bad_handshakes(wsrv, key, version, status):
    c, head = handshake(wsrv.port, key=key, version=version)
    with c:
        assert head.status == status
        if status == 426:
            assert head.header("sec-websocket-version") == "13"


def test_frames_sent_with_the_handshake_are_kept(wsrv):
    c = RawConn(wsrv.port)
    with c:  # the handshake and the first frame in one write
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + HANDSHAKE + b"\r\n" + frame(1, b"eager"))
        assert c.read_head().status == 101
        assert read_frame(c) == (1, b"eager")


def test_not_an_upgrade_is_plain_http(wsrv):
    c = RawConn(wsrv.port)
    with c:  # Upgrade without Connection: upgrade
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"plain")
        # POST with the headers is no handshake either
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        r = c.read_response()
        assert (r.status, r.body) == (200, b"plain")


def test_ws_none_serves_plain_http(server):
    srv = server("ws_app:app", "--ws", "none")
    c, head = handshake(srv.port)
    with c:
        assert head.status == 200


# ---- frames from a raw client ---------------------------------------------------------------


def test_ping_gets_pong_and_control_frames_interleave(wsrv):
    c = open_raw(wsrv.port)
    with c:
        c.send(frame(9, b"are you there"))
        assert read_frame(c) == (0xA, b"are you there")
        c.send(frame(1, b"one ", fin=False) + frame(9, b"p") + frame(0, b"two"))
        assert read_frame(c) == (0xA, b"p")
        assert read_frame(c) == (1, b"one two")


@pytest.mark.parametrize(
    "data, code",
    [
        (frame(1, b"unmasked", mask=False), 1002),
        (frame(1, b"\xff\xfe"), 1007),
        (frame(1, b"ok \xed\xa0\x80"), 1007),  # a UTF-16 surrogate
        (frame(3, b""), 1002),  # reserved opcode
        (frame(1, b"x", rsv=2), 1002),
        (frame(0, b"continuation without a start"), 1002),
        (frame(9, b"x" * 126), 1002),  # control frame too long
        (frame(9, b"", fin=False), 1002),  # fragmented control frame
        (frame(8, b"\x03"), 1002),  # close payload of one byte
        (frame(8, struct.pack("!H", 1005)), 1002),  # a code never sent
        (frame(8, struct.pack("!H", 1000) + b"\xff"), 1007),  # reason not UTF-8
    ],
)
def test_protocol_errors_close_with_the_right_code(wsrv, data, code):
    c = open_raw(wsrv.port)
    with c:
        c.send(data)
        expect_close(c, code)


def test_invalid_utf8_fails_fast_across_fragments(wsrv):
    c = open_raw(wsrv.port)
    with c:
        c.send(frame(1, b"fine so far", fin=False))
        c.send(frame(0, b"\xc0\xaf", fin=False))  # an overlong: fail now, not at the end
        expect_close(c, 1007)


def test_max_size_closes_1009(server):
    srv = server("ws_app:app", "--ws-max-size", "1000")
    with connect(ws_url(srv), max_size=None, compression=None) as ws:
        ws.send(b"x" * 1000)
        assert ws.recv() == b"x" * 1000
        ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
    assert e.value.rcvd.code == 1009
    c = open_raw(srv.port)
    with c:  # the limit applies to a message whose frames each fit
        c.send(frame(2, b"y" * 600, fin=False) + frame(0, b"y" * 600))
        expect_close(c, 1009)


def test_max_size_applies_after_inflating(server):
    srv = server("ws_app:app", "--ws-max-size", "100000")
    with connect(ws_url(srv), max_size=None) as ws:  # deflate: 1 MB of zeros is ~1 KB
        assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
        ws.send(b"\x00" * 1_000_000)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
    assert e.value.rcvd.code == 1009


def test_server_pings_and_drops_a_silent_peer(server):
    srv = server("ws_app:app", "--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3")
    with connect(ws_url(srv)) as ws:  # the library answers pings: the connection lives on
        time.sleep(1.0)
        ws.send("still here")
        assert ws.recv() == "still here"
    c = open_raw(srv.port)
    with c:  # a raw peer that never answers
        op, _ = read_frame(c, timeout=2)
        assert op == 9
        expect_close(c, 1011)


# ---- backpressure -----------------------------------------------------------------------


def rss_kib(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_client_that_does_not_read_is_not_buffered_without_bound(server):
    srv = server("ws_app:app")
    before = rss_kib(srv.pid)
    c = RawConn(srv.port, rcvbuf=65536)
    with c:
        c.send(b"GET /flood?n=4000&size=65536 HTTP/1.1\r\nHost: x\r\n" + HANDSHAKE + b"\r\n")
        time.sleep(2.0)  # 256 MB would be queued by now without backpressure
        grown = rss_kib(srv.pid) - before
        assert grown < 32 * 1024, f"server grew {grown} KiB for a client that reads nothing"
        assert "flood_done" not in results(srv)


def flood(sock, data: bytes, seconds: float, pause: float = 0.02) -> int:
    """Sends data again and again on a non-blocking socket for `seconds`, always whole copies
    of it (a cut frame would desynchronise the peer); returns the bytes the socket took."""
    sent, pending, deadline = 0, data, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            n = sock.send(pending)
        except BlockingIOError:
            time.sleep(pause)
            continue
        sent += n
        pending = pending[n:] or data
    return sent


def test_pings_from_a_peer_that_does_not_read_are_not_buffered_without_bound(server):
    srv = server("ws_app:app")
    before = rss_kib(srv.pid)
    c = RawConn(srv.port, rcvbuf=16384)
    with c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        c.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + HANDSHAKE + b"\r\n")
        c.sock.setblocking(False)
        ping = frame(9, b"p" * 125)  # each answered with a 127-byte pong nobody reads
        sent = flood(c.sock, ping * 512, 3)

        grown = rss_kib(srv.pid) - before
        # without the brake every ping read becomes a queued pong: 3 s of them is far more
        assert sent < 64 * 1024 * 1024, f"the server read {sent} bytes of pings"
        assert grown < 24 * 1024, f"server grew {grown} KiB queueing pongs"


def test_frames_before_the_app_accepts_are_not_read_without_bound(server):
    """Frames a client sends right behind its handshake wait for the app's accept; beyond one
    read buffer of them the server stops reading (it read 2 GB/s into a growing buffer)."""
    srv = server("ws_app:app")
    c = RawConn(srv.port)
    with c:
        c.send(b"GET /late-accept HTTP/1.1\r\nHost: x\r\n" + HANDSHAKE + b"\r\n")
        c.sock.setblocking(False)
        sent = flood(c.sock, frame(9, b"p" * 125) * 512, 0.8)  # the app accepts at 1 s
        assert sent < 16 * 1024 * 1024, f"the server took {sent} bytes before the accept"


def test_slow_app_stops_the_server_reading(server):
    srv = server("ws_app:app", "--ws-max-queue", "4")
    c = open_raw(srv.port, "/slow")
    with c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        c.sock.setblocking(False)
        msg = frame(2, b"z" * 16384)
        sent = flood(c.sock, msg, 3, pause=0.05)
        # 4 messages held for the app, a read buffer and the kernel's: never 3 s of input
        assert sent < 8 * 1024 * 1024, f"the server took {sent} bytes from a slow app's peer"
        grown = rss_kib(srv.pid)
        assert grown < 200 * 1024


# ---- the server's life cycle ----------------------------------------------------------------


def test_graceful_shutdown_closes_1001(server):
    srv = server("ws_app:app")
    with connect(ws_url(srv)) as ws:
        ws.send("x")
        assert ws.recv() == "x"
        srv.send_signal(signal.SIGINT)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
    assert e.value.rcvd.code == 1001
    assert srv.wait_exit(10) == 0


def test_accepted_during_shutdown_is_told_at_once(server):
    srv = server("ws_app:app")
    c = RawConn(srv.port)
    with c:
        c.send(b"GET /late-accept HTTP/1.1\r\nHost: x\r\n" + HANDSHAKE + b"\r\n")
        time.sleep(0.3)
        srv.send_signal(signal.SIGINT)  # the app accepts 0.7 s after the drain began
        assert c.read_head().status == 101
        op, payload = read_frame(c, timeout=3)
        assert op == 8 and close_code(payload) == 1001
        c.send(frame(8, payload[:2]))
        assert c.is_closed(timeout=5)
    assert srv.wait_exit(10) == 0


def test_access_log_has_101_and_the_session(server):
    srv = server("ws_app:app", "--access-log", "--log-level", "info")
    with connect(ws_url(srv)) as ws:
        ws.send("x")
        ws.recv()
    srv.wait_for_log(r'"GET /echo HTTP/1\.1" 101')


def test_many_connections_at_once(wsrv):
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(connect(ws_url(wsrv))) for _ in range(50)]
        for i, ws in enumerate(conns):
            ws.send(f"c{i}")
        for i, ws in enumerate(conns):
            assert ws.recv() == f"c{i}"


# ---- over TLS, in frameworks, in a browser ------------------------------------------------


def test_wss(server, tmp_path):
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    srv = server("ws_app:app", "--ssl-certfile", cert, "--ssl-keyfile", key)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with connect(f"wss://localhost:{srv.port}/scope", ssl=ctx) as ws:
        facts = json.loads(ws.recv())
    assert facts["scheme"] == "wss"
    assert "tls" in facts["extensions"]
    with connect(f"wss://localhost:{srv.port}/echo", ssl=ctx) as ws:
        big = os.urandom(300_000)
        ws.send(big)
        assert ws.recv() == big


def test_starlette_websocket(server):
    srv = server("starlette_app:app")
    with connect(ws_url(srv, "/ws")) as ws:
        ws.send("hi")
        assert ws.recv() == "starlette: hi"
        ws.send(json.dumps({"n": 1}))
        assert ws.recv() == 'starlette: {"n": 1}'


def test_fastapi_websocket(server):
    srv = server("fastapi_app:app")
    with connect(ws_url(srv, "/ws/room1?token=t")) as ws:
        assert json.loads(ws.recv()) == {"room": "room1", "token": "t"}
        ws.send("hello")
        assert ws.recv() == "room1: hello"
    with pytest.raises(InvalidStatus) as e:  # FastAPI's WebSocketException before accept
        connect(ws_url(srv, "/ws/forbidden"))
    assert e.value.response.status_code == 403


def test_chromium_websocket_echo(server):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is in the Makefile's package list"
    srv = server("browser_app:app")
    out = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--virtual-time-budget=5000", "--dump-dom", srv.url + "/ws-page",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "echoed: hello from the browser" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


# ---- over HTTP/2: extended CONNECT (RFC 8441) ----------------------------------------------


class H2WebSocket:
    """A WebSocket over one HTTP/2 stream, by hand: h2's state machine on a blocking socket."""

    def __init__(self, port, path="/echo", headers=()):
        import h2.config
        import h2.connection
        import h2.events

        self.events_mod = h2.events
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: list = []
        self.buf = bytearray()
        self.settings = self.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        self.sid = self.conn.get_next_available_stream_id()
        hs = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("sec-websocket-version", "13"),
            *headers,
        ]
        self.conn.send_headers(self.sid, hs)
        self.sock.sendall(self.conn.data_to_send())
        resp = self.until(lambda e: isinstance(e, h2.events.ResponseReceived))
        self.status = int(dict(resp.headers)[b":status"])
        self.headers = {k.decode(): v.decode() for k, v in resp.headers}

    def until(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if pred(ev):
                    del self.events[: i + 1]
                    return ev
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event: {self.events}")
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed")
            for ev in self.conn.receive_data(data):
                if isinstance(ev, self.events_mod.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    self.buf += ev.data
                self.events.append(ev)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)

    def send(self, data, end=False):
        """DATA frames as the windows allow (waiting for WINDOW_UPDATE when they are shut)."""
        view = memoryview(data)
        while True:
            room = min(
                self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size
            )
            if room == 0:
                self.until(lambda e: isinstance(e, self.events_mod.WindowUpdated))
                continue
            chunk, view = view[:room], view[room:]
            self.conn.send_data(self.sid, bytes(chunk), end_stream=end and not view)
            self.sock.sendall(self.conn.data_to_send())
            if not view:
                return

    def read_frame(self):
        while True:
            if len(self.buf) >= 2:
                n, at = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, at = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
                if n < 126 or at > 2:
                    if len(self.buf) >= at + n:
                        op, payload = self.buf[0] & 0x0F, bytes(self.buf[at : at + n])
                        del self.buf[: at + n]
                        return op, payload
            self.until(lambda e: isinstance(e, self.events_mod.DataReceived))


def test_websocket_over_http2(wsrv):
    import h2.settings

    ws = H2WebSocket(wsrv.port)
    try:
        assert (
            ws.settings.changed_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value
            == 1
        )
        assert ws.status == 200
        assert "sec-websocket-accept" not in ws.headers
        ws.send(frame(1, b"over h2"))
        assert ws.read_frame() == (1, b"over h2")
        big = os.urandom(200_000)  # more than a window's worth both ways
        ws.send(frame(2, big))
        assert ws.read_frame() == (2, big)
        ws.send(frame(9, b"p"))
        assert ws.read_frame() == (0xA, b"p")
        ws.send(frame(8, struct.pack("!H", 1000)))
        op, payload = ws.read_frame()
        assert op == 8 and close_code(payload) == 1000
        ws.until(lambda e: isinstance(e, ws.events_mod.StreamEnded))
    finally:
        ws.sock.close()


def test_websocket_over_http2_end_stream_is_a_disconnect(server):
    srv = server("ws_app:app")
    ws = H2WebSocket(srv.port, "/disconnect")
    try:
        ws.send(b"", end=True)  # END_STREAM without a close frame
        ws.until(lambda e: isinstance(e, (ws.events_mod.StreamEnded, ws.events_mod.StreamReset)))
        # (while the connection stays open: the stream's end alone tells the app)
        assert wait_result(srv, "disconnect")["code"] == 1006
    finally:
        ws.sock.close()


def test_websocket_over_http2_graceful_shutdown(server):
    srv = server("ws_app:app")
    ws = H2WebSocket(srv.port)
    try:
        ws.send(frame(1, b"x"))
        assert ws.read_frame() == (1, b"x")
        srv.send_signal(signal.SIGINT)
        # The GOAWAY comes first, and the h2 library takes no frame after one (RFC 9113 lets
        # open streams go on): the frames from here on are read, and written, by hand.
        raw, data, end = b"", b"", False
        deadline = time.monotonic() + 5
        while not end and time.monotonic() < deadline:
            chunk = ws.sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            while len(raw) >= 9 and len(raw) >= 9 + int.from_bytes(raw[:3], "big"):
                n, ftype, flags = int.from_bytes(raw[:3], "big"), raw[3], raw[4]
                sid = int.from_bytes(raw[5:9], "big") & 0x7FFFFFFF
                if ftype == 0 and sid == ws.sid:
                    data += raw[9 : 9 + n]
                    if data[:1] == b"\x88" and len(data) >= 2 + (data[1] & 0x7F):
                        code = close_code(data[2 : 2 + (data[1] & 0x7F)])
                        assert code == 1001
                        reply = frame(8, struct.pack("!H", code))
                        head = (
                            len(reply).to_bytes(3, "big") + b"\x00\x00" + ws.sid.to_bytes(4, "big")
                        )
                        ws.sock.sendall(head + reply)
                    end = end or bool(flags & 1)
                raw = raw[9 + n :]
        assert data[:1] == b"\x88", data
        assert end, "the stream ended after the closing handshake"
    finally:
        ws.sock.close()
    assert srv.wait_exit(10) == 0


def test_websocket_over_http2_scope_and_denial(wsrv):
    ws = H2WebSocket(wsrv.port, "/scope?x=1")
    try:
        op, payload = ws.read_frame()
        facts = json.loads(payload)
        assert (facts["type"], facts["http_version"], facts["scheme"]) == ("websocket", "2", "ws")
        assert facts["query_string"] == "x=1"
    finally:
        ws.sock.close()
    ws = H2WebSocket(wsrv.port, "/deny")
    try:
        assert ws.status == 403
    finally:
        ws.sock.close()


def test_http2_without_ws_offers_no_extended_connect(server):
    import h2.settings

    srv = server("ws_app:app", "--ws", "none")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    try:
        import h2.config
        import h2.connection
        import h2.events

        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        changed = {}
        while not changed:
            for ev in conn.receive_data(sock.recv(65536)):
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    changed = ev.changed_settings
        assert h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL not in changed
    finally:
        sock.close()
