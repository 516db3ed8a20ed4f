"""HTTP/2: h2c by prior knowledge and by Upgrade, streams as ASGI scopes, flow control, resets,
trailers, GOAWAY, and the flood limits. Frame-level cases use the `h2` library over a raw
socket; curl and httpx show what real clients get."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import httpx
import pytest
from conftest import IS_UVICORN, proc_status

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="uvicorn has no HTTP/2")

APP = "h2_cases:app"


class H2:
    """One HTTP/2 client connection: h2's state machine over a blocking socket."""

    def __init__(self, port, settings=None, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.events: list = []
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def request(self, path, method="GET", body=None, headers=(), end=True):
        sid = self.conn.get_next_available_stream_id()
        hs = [
            (":method", method),
            (":path", path),
            (":scheme", "http"),
            (":authority", "localhost"),
            *headers,
        ]
        self.conn.send_headers(sid, hs, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def read(self, timeout=5.0) -> list:
        """Events from one read (empty when the server closed)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        evs = self.conn.receive_data(data)
        self.events += evs
        self.flush()
        return evs

    def until(self, pred, timeout=10.0):
        """Reads until pred(event) holds for an event; returns it."""
        deadline = time.monotonic() + timeout
        for ev in self.events:
            if pred(ev):
                return ev
        while time.monotonic() < deadline and not self.closed:
            for ev in self.read(max(0.05, deadline - time.monotonic())):
                if pred(ev):
                    return ev
        raise AssertionError(f"no such event; got {self.events[-10:]}")

    def response(self, sid, timeout=10.0):
        """(status, headers, body, trailers) of stream sid, acknowledging the DATA it reads."""
        self.until(
            lambda e: (
                isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == sid
            ),
            timeout,
        )
        headers, body, trailers = {}, b"", {}
        for ev in self.events:
            if getattr(ev, "stream_id", None) != sid:
                continue
            if isinstance(ev, h2.events.ResponseReceived):
                headers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.StreamReset) and ev.error_code:
                # (NO_ERROR after a whole response only tells the client to stop sending)
                raise AssertionError(f"stream {sid} reset: {ev.error_code!r}")
        return int(headers.get(":status", 0)), headers, body, trailers

    def ack_all(self):
        for ev in self.events:
            if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                ev.flow_controlled_length = 0
        self.flush()

    def goaway(self, timeout=10.0):
        return self.until(lambda e: isinstance(e, h2.events.ConnectionTerminated), timeout)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def srv(module_server):
    return module_server(APP, "--h2-initial-window-size", "65535")


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4
PROTOCOL_ERROR, INTERNAL_ERROR, ENHANCE_YOUR_CALM = 0x1, 0x2, 0xB


class Raw:
    """Frames by hand, for what a well-behaved client library will not send (or will not accept
    after a GOAWAY): frames are read as (type, flags, stream id, payload), HEADERS decoded."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.buf = b""
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))

    def send(self, data: bytes):
        self.sock.sendall(data)

    def headers(self, sid, hs, end_stream=True):
        block = self.enc.encode([(k.encode(), v.encode()) for k, v in hs])
        self.send(frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, block))

    def next(self, timeout=5.0):
        """The next frame, or None once the server closed; HEADERS payloads come decoded."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    ftype, flags = self.buf[3], self.buf[4]
                    sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
                    payload, self.buf = self.buf[9 : 9 + n], self.buf[9 + n :]
                    if ftype == HEADERS:
                        payload = dict(self.dec.decode(payload, raw=True))
                    return ftype, flags, sid, payload
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data

    def until(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            f = self.next(max(0.05, deadline - time.monotonic()))
            if f is None or pred(f):
                return f
        raise AssertionError("no such frame")

    def close(self):
        self.sock.close()


def error_code(f) -> int:
    """The error code of a RST_STREAM or GOAWAY frame."""
    return int.from_bytes(f[3][:4] if f[0] == RST_STREAM else f[3][4:8], "big")


# ---- real clients ---------------------------------------------------------------------------


def test_curl_prior_knowledge(srv):
    out = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{srv.port}/echo?a=1"],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout
    info = json.loads(out)
    assert info["line"] == "2 GET /echo a=1 0"
    assert info["headers"][0] == ["host", f"127.0.0.1:{srv.port}"]
    assert "http.response.trailers" in info["extensions"]


def test_curl_upgrade_with_body(srv):
    """`Upgrade: h2c` with a body: the request is stream 1, its body delivered whole."""
    r = subprocess.run(
        [
            "curl",
            "-sv",
            "--http2",
            "--data-binary",
            "x" * 5000,
            f"http://127.0.0.1:{srv.port}/echo",
        ],
        capture_output=True,
        timeout=10,
        check=True,
    )
    assert b"101 Switching Protocols" in r.stderr
    info = json.loads(r.stdout)
    assert info["line"] == "2 POST /echo  5000"
    names = [k for k, _ in info["headers"]]
    assert "upgrade" not in names and "http2-settings" not in names and "connection" not in names


def test_upgrade_then_more_streams(srv):
    """After the 101 the connection is HTTP/2: a second request goes as stream 3."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(
            b"GET /echo?first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        head, rest = got.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101")
        c = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        c.initiate_upgrade_connection()
        s.sendall(c.data_to_send())
        events = c.receive_data(rest) if rest else []
        c.send_headers(
            3,
            [
                (":method", "GET"),
                (":path", "/echo?second"),
                (":scheme", "http"),
                (":authority", "x"),
            ],
            end_stream=True,
        )
        s.sendall(c.data_to_send())
        done = set()
        bodies = {}
        deadline = time.monotonic() + 5
        while done != {1, 3} and time.monotonic() < deadline:
            for ev in events:
                if isinstance(ev, h2.events.DataReceived):
                    bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
                if isinstance(ev, h2.events.StreamEnded):
                    done.add(ev.stream_id)
            s.sendall(c.data_to_send())
            if done != {1, 3}:
                events = c.receive_data(s.recv(65536))
        assert json.loads(bodies[1])["line"] == "2 GET /echo first 0"
        assert json.loads(bodies[3])["line"] == "2 GET /echo second 0"


def test_httpx_http2(srv):
    with httpx.Client(http2=True, http1=False, base_url=f"http://127.0.0.1:{srv.port}") as c:
        for i in range(5):
            r = c.post("/echo", content=b"y" * i)
            assert r.http_version == "HTTP/2"
            assert r.json()["line"] == f"2 POST /echo  {i}"


def test_nghttp_client(srv):
    r = subprocess.run(
        ["nghttp", f"http://127.0.0.1:{srv.port}/big?n=300000"],
        capture_output=True,
        timeout=15,
        check=True,
    )
    assert r.stdout == b"x" * 300000


def test_h2load_concurrent_connections(srv):
    """Many connections whose first bytes arrive in the same tick: each is handed to HTTP/2
    and served (a cancelled deferred callback once cut the others off the reactor's queue)."""
    r = subprocess.run(
        ["h2load", "-n", "4000", "-c", "16", "-m", "8", f"http://127.0.0.1:{srv.port}/echo"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "4000 succeeded, 0 failed" in r.stdout, r.stdout


def test_http1_still_served(srv):
    r = httpx.get(f"http://127.0.0.1:{srv.port}/echo")
    assert r.http_version == "HTTP/1.1"
    assert r.json()["line"] == "1.1 GET /echo  0"


# ---- streams ----------------------------------------------------------------------------------


def test_hundred_streams_multiplexed(srv):
    c = H2(srv.port)
    try:
        c.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        max_streams = c.conn.remote_settings.max_concurrent_streams
        assert max_streams == 100
        sids = [c.request(f"/echo?n={i}") for i in range(100)]
        for i, sid in enumerate(sids):
            status, _, body, _ = c.response(sid)
            assert status == 200
            assert json.loads(body)["line"] == f"2 GET /echo n={i} 0"
    finally:
        c.close()


def test_trailers(srv):
    c = H2(srv.port)
    try:
        sid = c.request("/trailers", headers=[("te", "trailers")])
        status, headers, body, trailers = c.response(sid)
        assert status == 200 and body == b"part1,part2"
        assert trailers == {"x-first": "1", "grpc-status": "0"}
    finally:
        c.close()


def test_trailers_over_http1(srv):
    """HTTP/1.1 carries trailers as chunked trailer fields, only to a client that said `TE:
    trailers`; others get the body alone."""
    for te, want in ((b"TE: trailers\r\n", True), (b"", False)):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            s.sendall(b"GET /trailers HTTP/1.1\r\nHost: x\r\n" + te + b"Connection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert b"transfer-encoding: chunked" in head
        assert body.startswith(b"6\r\npart1,\r\n5\r\npart2\r\n0\r\n")
        if want:
            assert body.endswith(b"0\r\nx-first: 1\r\ngrpc-status: 0\r\n\r\n")
        else:
            assert body.endswith(b"part2\r\n0\r\n\r\n")


def test_request_trailers_over_http1(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Checksum: 42 \r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    info = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert info["trailers"] == [["x-checksum", "42"]]


def test_request_trailers(srv):
    c = H2(srv.port)
    try:
        sid = c.request("/echo", method="POST", body=b"abc", end=False)
        c.conn.send_headers(sid, [("x-checksum", "42")], end_stream=True)
        c.flush()
        status, _, body, _ = c.response(sid)
        info = json.loads(body)
        assert info["line"] == "2 POST /echo  3"
        assert info["trailers"] == [["x-checksum", "42"]]
    finally:
        c.close()


def test_cookies_joined(srv):
    c = H2(srv.port)
    try:
        sid = c.request("/echo", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        info = json.loads(c.response(sid)[2])
        assert ["cookie", "a=1; b=2"] in info["headers"]
        assert sum(1 for k, _ in info["headers"] if k == "cookie") == 1
    finally:
        c.close()


def test_head_and_204_have_no_body(srv):
    c = H2(srv.port)
    try:
        a = c.request("/head-or-204", method="HEAD")
        b = c.request("/head-or-204")
        status, headers, body, _ = c.response(a)
        assert status == 200 and body == b"" and headers["content-length"] == "12"
        status, headers, body, _ = c.response(b)
        assert status == 204 and body == b""
    finally:
        c.close()


def test_reset_one_stream_reaches_only_its_app(srv):
    c = H2(srv.port)
    try:
        waiting = c.request("/wait?key=rst1")
        other = c.request("/wait?key=rst2")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            q = c.request("/events?key=rst1")
            if c.response(q)[2] == b"waiting":
                break
        c.conn.reset_stream(waiting, h2.errors.ErrorCodes.CANCEL)
        c.flush()
        deadline = time.monotonic() + 5
        state = b""
        while time.monotonic() < deadline:
            state = c.response(c.request("/events?key=rst1"))[2]
            if state == b"disconnected":
                break
            time.sleep(0.05)
        assert state == b"disconnected"
        # the other stream's app still waits, and the connection still serves
        assert c.response(c.request("/events?key=rst2"))[2] == b"waiting"
        c.conn.reset_stream(other, h2.errors.ErrorCodes.CANCEL)
        c.flush()
    finally:
        c.close()


def test_dropped_connection_reaches_every_app(srv):
    c = H2(srv.port)
    c.request("/wait?key=drop1")
    c.request("/wait?key=drop2")
    time.sleep(0.3)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    d = H2(srv.port)
    try:
        deadline = time.monotonic() + 5
        states = []
        while time.monotonic() < deadline:
            states = [d.response(d.request(f"/events?key=drop{i}"))[2] for i in (1, 2)]
            if states == [b"disconnected"] * 2:
                break
            time.sleep(0.05)
        assert states == [b"disconnected"] * 2
    finally:
        d.close()


def test_app_error_after_start_resets_only_its_stream(srv):
    c = H2(srv.port)
    try:
        bad = c.request("/fail-after-start")
        ev = c.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == bad)
        assert ev.error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        status, _, body, _ = c.response(c.request("/echo"))
        assert status == 200
    finally:
        c.close()
    assert "HTTP/2" in srv.log()


# ---- flow control -------------------------------------------------------------------------------


def test_send_waits_for_the_peer_window(srv):
    """A client that grants 1000 bytes gets 1000 bytes until it grants more; meanwhile other
    streams on the connection are served."""
    c = H2(srv.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    try:
        big = c.request("/big?n=200000")
        time.sleep(0.5)
        for _ in range(3):
            try:
                c.read(0.2)
            except TimeoutError:
                pass
        got = sum(
            len(e.data)
            for e in c.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == big
        )
        assert got == 1000
        status, _, body, _ = c.response(c.request("/events?key=none"))
        assert status == 200
        # now read it all, opening the window as we go
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            c.ack_all()
            c.conn.increment_flow_control_window(65535, big)
            c.flush()
            evs = c.read(2)
            if any(isinstance(e, h2.events.StreamEnded) and e.stream_id == big for e in evs):
                break
        total = sum(
            len(e.data)
            for e in c.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == big
        )
        assert total == 200000
    finally:
        c.close()


def test_concurrent_responses_interleave(srv):
    """Two large responses on one connection share it frame by frame: neither waits for the
    other to finish."""
    c = H2(srv.port)
    try:
        a = c.request("/big?n=400000")
        b = c.request("/big?n=400000")
        order = []
        deadline = time.monotonic() + 20
        while len([e for e in order if e[1] == "end"]) < 2 and time.monotonic() < deadline:
            for ev in c.read(2):
                if isinstance(ev, h2.events.DataReceived):
                    order.append((ev.stream_id, "data"))
                elif isinstance(ev, h2.events.StreamEnded):
                    order.append((ev.stream_id, "end"))
            c.ack_all()
            ended = {sid for sid, kind in order if kind == "end"}
            for sid in {a, b} - ended:
                c.conn.increment_flow_control_window(65535, sid)
            c.conn.increment_flow_control_window(131070)
            c.flush()
        first_end = next(i for i, e in enumerate(order) if e[1] == "end")
        other = b if order[first_end][0] == a else a
        before = sum(1 for sid, kind in order[:first_end] if sid == other and kind == "data")
        assert before >= 5, order[: first_end + 1]
    finally:
        c.close()


def test_slow_consumer_stalls_only_its_stream(srv):
    """A stream whose app does not read holds only its own window: another stream's upload
    goes through at once."""
    c = H2(srv.port)
    try:
        c.until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        slow = c.request("/slow-read", method="POST", end=False)
        window = c.conn.local_flow_control_window(slow)
        assert window == 65535
        for i in range(0, 65535, 16384):
            c.conn.send_data(slow, b"s" * min(16384, 65535 - i))
        c.flush()
        fast = c.request("/echo", method="POST", end=False)
        for _ in range(6):
            c.conn.send_data(fast, b"f" * 10000)
        c.conn.end_stream(fast)
        c.flush()
        status, _, body, _ = c.response(fast, timeout=0.9)  # before /slow-read reads
        assert json.loads(body)["line"] == "2 POST /echo  60000"
        # the slow stream's window comes back once its app reads
        deadline = time.monotonic() + 5
        while c.conn.local_flow_control_window(slow) == 0 and time.monotonic() < deadline:
            c.read(1)
        assert c.conn.local_flow_control_window(slow) > 0
        c.conn.send_data(slow, b"s" * 1000, end_stream=True)
        c.flush()
        assert c.response(slow)[2] == b"66535"
    finally:
        c.close()


# ---- malformed requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "GET"), (":scheme", "http"), (":authority", "x")],  # no :path
        [(":method", "GET"), (":path", "/"), (":scheme", "http")],  # no :authority nor host
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "x"),
            ("Upper", "x"),
        ],
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "x"),
            ("connection", "close"),
        ],
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "x"),
            ("te", "gzip"),
        ],
        [(":method", "GET"), (":path", "*"), (":scheme", "http"), (":authority", "x")],
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "x"),
            (":bogus", "1"),
        ],
        [
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "x"),
            ("x", "a\r\nb: c"),
        ],
        [(":path", "/"), (":method", "GET"), (":scheme", "http"), ("x", "1"), (":authority", "x")],
        [
            (":method", "GET"),
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "x"),
        ],
    ],
    ids=[
        "no-path",
        "no-authority",
        "uppercase",
        "connection",
        "te-gzip",
        "star-get",
        "bad-pseudo",
        "crlf",
        "pseudo-after-regular",
        "pseudo-twice",
    ],
)
def test_malformed_request_resets_the_stream(srv, headers):
    c = Raw(srv.port)
    try:
        c.headers(1, headers)
        f = c.until(lambda f: f[0] in (RST_STREAM, GOAWAY))
        assert f[0] == RST_STREAM and f[2] == 1, f
        assert error_code(f) == PROTOCOL_ERROR
    finally:
        c.close()
    d = H2(srv.port)
    try:
        assert d.response(d.request("/echo"))[0] == 200
    finally:
        d.close()


def test_connect_refused(srv):
    c = Raw(srv.port)
    try:
        c.headers(1, [(":method", "CONNECT"), (":authority", "example.com:443")], end_stream=False)
        f = c.until(lambda f: f[0] in (HEADERS, RST_STREAM, GOAWAY))
        assert f[0] == HEADERS and f[3][b":status"] == b"501", f
    finally:
        c.close()


def test_options_star(srv):
    c = H2(srv.port)
    try:
        sid = c.request("*", method="OPTIONS")
        status, _, _, _ = c.response(sid)
        assert status == 404  # the app's answer: the request reached it
    finally:
        c.close()


# ---- limits and floods ------------------------------------------------------------------------


def test_header_list_too_large_is_431(server):
    s = server(APP, "--h2-max-header-list-size", "4096")
    c = H2(s.port)
    try:
        sid = c.request("/echo", headers=[("x-big", "v" * 5000)])
        assert c.response(sid)[0] == 431
        assert c.response(c.request("/echo"))[0] == 200
    finally:
        c.close()


def test_body_limit_per_stream(server):
    s = server(APP, "--limit-request-body", "1000")
    c = H2(s.port)
    try:
        assert (
            c.response(
                c.request(
                    "/echo", method="POST", body=b"a" * 2000, headers=[("content-length", "2000")]
                )
            )[0]
            == 413
        )
        assert c.response(c.request("/echo", method="POST", body=b"a" * 900))[0] == 200
        sid = c.request("/echo", method="POST", body=b"a" * 2000)  # no length: counted as it comes
        assert c.response(sid)[0] == 413
    finally:
        c.close()


def test_limit_concurrency_per_stream(server):
    s = server(APP, "--limit-concurrency", "2")
    c = H2(s.port)
    try:
        a = c.request("/sleep?s=1")
        b = c.request("/sleep?s=1")
        third = c.request("/echo")
        assert c.response(third)[0] == 503
        assert c.response(a)[0] == 200 and c.response(b)[0] == 200
    finally:
        c.close()


def assert_calm(c: H2):
    ev = c.goaway()
    assert ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, ev


def test_rapid_reset_flood(srv):
    c = H2(srv.port)
    try:
        for _ in range(3000):
            sid = c.conn.get_next_available_stream_id()
            c.conn.send_headers(
                sid,
                [
                    (":method", "GET"),
                    (":path", "/sleep?s=5"),
                    (":scheme", "http"),
                    (":authority", "x"),
                ],
            )
            c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            c.flush()
        assert_calm(c)
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["ping", "settings", "empty-data", "priority"])
def test_control_frame_floods(srv, kind):
    c = H2(srv.port)
    try:
        sid = c.request("/slow-read", method="POST", end=False) if kind == "empty-data" else 0
        if kind == "ping":
            one = frame(0x6, 0, 0, b"12345678")
        elif kind == "settings":
            one = frame(0x4, 0, 0, b"")
        elif kind == "empty-data":
            one = frame(0x0, 0, sid, b"")
        else:
            one = frame(0x2, 0, 1, b"\x00\x00\x00\x00\x10")
        try:
            for _ in range(50):
                c.send_raw(one * 100)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert_calm(c)
    finally:
        c.close()


def test_continuation_flood(srv):
    c = H2(srv.port)
    try:
        from hpack import Encoder

        block = Encoder().encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")])
        c.send_raw(frame(0x1, 0x1, 1, block))  # HEADERS without END_HEADERS
        try:
            for _ in range(1000):
                c.send_raw(frame(0x9, 0, 1, b""))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert_calm(c)
    finally:
        c.close()


def test_hpack_bomb(srv):
    """One large entry in the dynamic table, then a block that names it over and over: small on
    the wire, huge decoded."""
    c = Raw(srv.port)
    try:
        c.headers(
            1,
            [
                (":method", "GET"),
                (":path", "/echo"),
                (":scheme", "http"),
                (":authority", "x"),
                ("x-bomb", "b" * 3000),
            ],
        )
        index = bytes([0x80 | 62])  # the dynamic table entry just added
        block = c.enc.encode(
            [
                (b":method", b"GET"),
                (b":path", b"/echo"),
                (b":scheme", b"http"),
                (b":authority", b"x"),
            ]
        )
        c.send(frame(HEADERS, END_STREAM | END_HEADERS, 3, block + index * 8000))
        f = c.until(lambda f: f[0] == GOAWAY or (f[0] == HEADERS and f[2] == 3))
        assert f[0] == GOAWAY and error_code(f) == ENHANCE_YOUR_CALM, f
    finally:
        c.close()


def test_zero_window_stall_is_dropped(server):
    s = server(APP, "--timeout-write", "1")
    c = H2(s.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        c.request("/big?n=1000000")
        t0 = time.monotonic()
        ev = c.goaway(timeout=10)
        assert ev.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert time.monotonic() - t0 < 5
    finally:
        c.close()


# ---- connection lifetime ----------------------------------------------------------------------


def test_body_timeout_ends_only_that_stream(server):
    s = server(APP, "--timeout-request-body", "1")
    c = H2(s.port)
    try:
        stalled = c.request("/echo", method="POST", body=b"abc", end=False)
        t0 = time.monotonic()
        assert c.response(stalled, timeout=5)[0] == 408
        assert 0.8 < time.monotonic() - t0 < 3
        assert c.response(c.request("/echo"))[0] == 200  # the connection goes on
    finally:
        c.close()


def test_header_block_stall_closes(server):
    s = server(APP, "--timeout-request-header", "1")
    c = Raw(s.port)
    try:
        block = c.enc.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")])
        c.send(frame(HEADERS, END_STREAM, 1, block))  # no END_HEADERS: a CONTINUATION is owed
        t0 = time.monotonic()
        f = c.until(lambda f: f[0] == GOAWAY, timeout=5)
        assert error_code(f) == ENHANCE_YOUR_CALM
        assert 0.8 < time.monotonic() - t0 < 3
        assert c.next() is None
    finally:
        c.close()


def test_too_many_headers_is_431(server):
    s = server(APP, "--limit-request-headers", "10")
    c = H2(s.port)
    try:
        many = [(f"x-h{i}", "v") for i in range(11)]
        assert c.response(c.request("/echo", headers=many))[0] == 431
        assert c.response(c.request("/echo", headers=many[:10]))[0] == 200
    finally:
        c.close()


def test_expect_100_continue(srv):
    c = H2(srv.port)
    try:
        sid = c.request("/echo", method="POST", end=False, headers=[("expect", "100-continue")])
        ev = c.until(lambda e: isinstance(e, h2.events.InformationalResponseReceived))
        assert dict(ev.headers)[b":status"] == b"100"
        c.conn.send_data(sid, b"body", end_stream=True)
        c.flush()
        assert json.loads(c.response(sid)[2])["line"] == "2 POST /echo  4"
    finally:
        c.close()


def test_idle_connection_gets_goaway(server):
    s = server(APP, "--timeout-keep-alive", "1")
    c = H2(s.port)
    try:
        assert c.response(c.request("/echo"))[0] == 200
        t0 = time.monotonic()
        ev = c.goaway(timeout=5)
        assert ev.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert 0.8 < time.monotonic() - t0 < 3
    finally:
        c.close()


def test_graceful_shutdown_goaway_then_finish(server):
    s = server(APP, "--timeout-graceful-shutdown", "10")
    c = Raw(s.port)
    try:
        c.headers(
            1,
            [(":method", "GET"), (":path", "/sleep?s=1"), (":scheme", "http"), (":authority", "x")],
        )
        time.sleep(0.2)
        s.send_signal(signal.SIGTERM)
        f = c.until(lambda f: f[0] == GOAWAY)
        assert error_code(f) == 0 and int.from_bytes(f[3][:4], "big") == 1
        c.headers(
            3, [(":method", "GET"), (":path", "/echo"), (":scheme", "http"), (":authority", "x")]
        )
        got = {}
        while (f := c.next()) is not None:
            if f[2] in (1, 3) and f[0] in (HEADERS, DATA):
                got.setdefault(f[2], []).append(f)
        assert 3 not in got
        assert got[1][0][3][b":status"] == b"200" and got[1][-1][3] == b"slept"
        assert s.wait_exit(10) == 0
    finally:
        c.close()


def test_graceful_time_up_resets_or_answers_503(server):
    """Shutdown time runs out: a stream whose response started (and waits on a shut window) is
    reset, one not yet answered gets a whole 503; then the connection closes and the server
    exits."""
    s = server(APP, "--timeout-graceful-shutdown", "0.5")
    c = Raw(s.port)
    try:
        auth = (":authority", "x")
        c.headers(1, [(":method", "GET"), (":path", "/sleep?s=30"), (":scheme", "http"), auth])
        c.headers(3, [(":method", "GET"), (":path", "/big?n=10000000"), (":scheme", "http"), auth])
        c.until(lambda f: f[0] == DATA and f[2] == 3)  # stream 3's response has started
        c.send(frame(0x8, 0, 0, (1 << 20).to_bytes(4, "big")))  # room on the connection
        s.send_signal(signal.SIGTERM)
        frames = []
        while (f := c.next()) is not None:
            frames.append(f)
        one = [f for f in frames if f[2] == 1]
        assert one[0][0] == HEADERS and one[0][3][b":status"] == b"503"
        assert one[-1][0] == DATA and one[-1][1] & END_STREAM
        three = [f for f in frames if f[2] == 3 and f[0] == RST_STREAM]
        assert three and error_code(three[0]) == INTERNAL_ERROR
        assert s.wait_exit(10) == 0
    finally:
        c.close()


def test_half_close_after_a_request_is_answered(srv):
    """A client that sends a whole request and then its FIN (shutdown(SHUT_WR)) still reads the
    answer, as over HTTP/1.1; then the server closes."""
    c = Raw(srv.port)
    try:
        auth = (":authority", "x")
        c.headers(1, [(":method", "GET"), (":path", "/sleep?s=0.3"), (":scheme", "http"), auth])
        c.sock.shutdown(socket.SHUT_WR)
        frames = []
        while (f := c.next()) is not None:
            frames.append(f)
        one = [f for f in frames if f[2] == 1]
        assert one and one[0][0] == HEADERS and one[0][3][b":status"] == b"200", frames
        assert one[-1][0] == DATA and one[-1][3] == b"slept" and one[-1][1] & END_STREAM
    finally:
        c.close()


def test_slow_reader_does_not_make_the_server_buffer(srv):
    """A client with windows wide open that stops reading its socket: the server stops taking
    the app's body once its write queue is full (send() waits), instead of holding 30 MB."""
    size = 30_000_000
    c = H2(srv.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.conn.increment_flow_control_window(2**31 - 1 - 65535)
        c.flush()
        before = proc_status(srv.pid, "VmRSS")
        sid = c.request(f"/big?n={size}")
        time.sleep(2.0)  # not reading
        grew = proc_status(srv.pid, "VmRSS") - before
        assert grew < 8 * 2**20, f"RSS grew {grew / 2**20:.1f} MiB while the client did not read"
        got = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            evs = c.read(5)
            got += sum(len(e.data) for e in evs if isinstance(e, h2.events.DataReceived))
            if any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in evs):
                break
            c.events.clear()
        assert got == size
    finally:
        c.close()


def test_streams_beyond_the_limit_are_refused(server):
    """A client that opens more streams than --h2-max-concurrent-streams allows gets the extra
    one reset; the others are served."""
    s = server(APP, "--h2-max-concurrent-streams", "2")
    c = Raw(s.port)
    try:
        auth = (":authority", "x")
        for sid in (1, 3, 5):
            c.headers(
                sid, [(":method", "GET"), (":path", "/sleep?s=0.3"), (":scheme", "http"), auth]
            )
        frames = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len([f for f in frames if f[0] == DATA]) < 2:
            frames.append(c.next())
        rst = [f for f in frames if f[0] == RST_STREAM and f[2] == 5]
        assert rst and error_code(rst[0]) in (PROTOCOL_ERROR, 0x7), frames  # 0x7: REFUSED_STREAM
        assert sorted(f[2] for f in frames if f[0] == DATA) == [1, 3]
    finally:
        c.close()


def test_upgrade_with_a_large_body_is_served_over_http1(srv):
    """Past 64 KiB an upgrade body would have to be held whole: the request is served as
    HTTP/1.1 instead (RFC 9113 lets a server ignore the upgrade)."""
    body = b"z" * 70000
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nContent-Length: 70000\r\n"
            b"Connection: close\r\n\r\n" + body
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(rest)["line"] == "1.1 POST /echo  70000"


def test_http_1_flag_refuses_h2(server):
    s = server(APP, "--http", "1")
    c = H2(s.port)
    try:
        c.read(2)
    except h2.exceptions.ProtocolError:
        pass
    finally:
        c.close()
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--http2",
            f"http://127.0.0.1:{s.port}/echo",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert out == "1.1"


def test_http_2_flag_serves_only_h2(server):
    s = server(APP, "--http", "2")
    c = H2(s.port)
    try:
        assert c.response(c.request("/echo"))[0] == 200
    finally:
        c.close()
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = raw.recv(4096)
            if not chunk:
                break
            data += chunk
        assert not data.startswith(b"HTTP/1.1")
