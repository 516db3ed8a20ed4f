"""Memory soak: ~1,000,000 mixed requests against one server, RSS before and after.

    .venv/bin/python tests/soak.py [--requests 1000000]

Mix (against basic:app, or --app wsgi_app:app for the WSGI bridge): keep-alive GETs and
pipelined GETs (wrk), plus uploads, aborted uploads, client resets and malformed requests from
raw sockets; HTTP/2 GETs (h2load, 16 streams a connection) and HTTP/2 uploads, stream resets
and dropped connections (the h2 library). With --tls all of it goes over TLS (a certificate
made by trustme), plus abandoned and garbage handshakes. With --ws (against ws_app:app) the
mix is WebSocket sessions instead: echoes of small and 256 KiB messages with and without
permessage-deflate, sessions the client drops without a close frame, framing errors, app
closes and refused handshakes. Prints RSS after a warm-up and at the
end; exits 1 if it grew by more than --slack-mib. Not part of `make test` (it takes a few
minutes); run by `make soak`.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINE_LUA = """
init = function(args)
  local r = {}
  for i = 1, 16 do r[i] = wrk.format(nil, "/id?n=p") end
  req = table.concat(r)
end
request = function() return req end
"""


# "https" with --tls: every client below then speaks TLS (certificates not verified).
SCHEME = "http"


def connect(port: int, alpn: str = "http/1.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if SCHEME == "http":
        return s
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    try:
        return ctx.wrap_socket(s)
    except BaseException:
        s.close()
        raise


def make_cert(directory: str) -> list[str]:
    """The server's TLS flags, with a certificate for 127.0.0.1 written into directory."""
    import trustme

    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return ["--ssl-certfile", cert, "--ssl-keyfile", key]


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(port: int, seconds: float, conns: int, script: str | None = None) -> int:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:.0f}s", f"{SCHEME}://127.0.0.1:{port}/id?n=k"]
    if script:
        argv[1:1] = ["-s", script]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return int(m.group(1)) if m else 0


def raw_mix(port: int, n: int) -> int:
    """Uploads, aborted uploads, client resets and malformed requests, one connection each
    (with TLS also handshakes abandoned half way and garbage instead of a ClientHello)."""
    rnd = random.Random(1)
    done = 0
    body = os.urandom(32 * 1024)
    for _ in range(n):
        kind = rnd.randrange(6 if SCHEME == "https" else 4)
        if kind >= 4:  # TLS only: a handshake that never completes
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" if kind == 4 else body[:300]
                )
                if kind == 5:
                    try:
                        s.recv(4096)
                    except OSError:
                        pass
            done += 1
            continue
        try:
            s = connect(port)
        except OSError:
            continue
        try:
            if kind == 0:  # a whole upload, answered
                s.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                got = 0
                while got < len(body):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
            elif kind == 1:  # an upload abandoned half way
                s.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body[: len(body) // 2]
                )
            elif kind == 2:  # a reset in the middle of a chunked upload
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
                s.sendall(b"1000\r\n" + body[:2000])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:  # malformed: CL + TE
                s.sendall(
                    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                )
                s.recv(4096)
        except OSError:
            pass
        finally:
            s.close()
        done += 1
    return done


def h2load(port: int, n: int) -> int:
    """HTTP/2 GETs, many streams per connection (h2load, Debian nghttp2-client)."""
    out = subprocess.run(
        ["h2load", "-n", str(n), "-c", "8", "-m", "16", f"{SCHEME}://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    return int(m.group(1)) if m else 0


def h2_mix(port: int, n: int) -> int:
    """HTTP/2 connections with an upload read back, an upload reset half way, and a response
    abandoned by dropping the connection."""
    import h2.config
    import h2.connection
    import h2.errors

    body = os.urandom(32 * 1024)
    head = [(":method", "POST"), (":path", "/echo"), (":scheme", SCHEME), (":authority", "t")]
    for _ in range(n):
        try:
            s = connect(port, "h2")
        except OSError:
            continue
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        try:
            c.initiate_connection()
            c.send_headers(1, head)
            c.send_data(1, body[:16384])
            c.send_data(1, body[16384:], end_stream=True)
            c.send_headers(3, head)
            c.send_data(3, body[:10000])
            c.reset_stream(3, h2.errors.ErrorCodes.CANCEL)
            c.send_headers(5, head, end_stream=True)
            s.sendall(c.data_to_send())
            got = 0
            while got < len(body):
                data = s.recv(65536)
                if not data:
                    break
                for ev in c.receive_data(data):
                    if getattr(ev, "stream_id", 0) == 1 and hasattr(ev, "data"):
                        got += len(ev.data)
                        c.acknowledge_received_data(ev.flow_controlled_length, 1)
                s.sendall(c.data_to_send())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, ssl.SSLError, h2.exceptions.H2Error):
            pass
        finally:
            s.close()
    return 3 * n


def ws_round(port: int, n: int) -> int:
    """About n WebSocket messages in sessions of every kind; returns the messages echoed."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    ctx = None
    if SCHEME == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    base = ("wss" if SCHEME == "https" else "ws") + f"://127.0.0.1:{port}"
    done = 0
    big = os.urandom(256 * 1024)
    rnd = random.Random(n)
    while done < n:
        kind = rnd.randrange(8)
        compression = "deflate" if rnd.randrange(2) else None
        try:
            if kind == 6:
                with connect(base + "/deny", ssl=ctx):
                    pass
            with connect(base + ("/close" if kind == 5 else "/echo"), ssl=ctx,
                         compression=compression, max_size=None) as ws:  # fmt: skip
                if kind == 5:
                    ws.recv()
                    continue
                for i in range(50):
                    msg = big if i % 25 == 24 else f"message {i} " * rnd.randrange(1, 40)
                    ws.send(msg)
                    assert ws.recv() == msg
                    done += 1
                if kind == 3:  # gone without a close frame: a reset
                    ws.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    ws.socket.close()
                elif kind == 4:  # a frame the server must refuse (unmasked): close 1002
                    ws.socket.sendall(b"\x81\x02hi")
                    ws.recv(timeout=5)
        except (ConnectionClosed, InvalidStatus, OSError):
            pass
    return done


def one_round(port: int, lua: str, raw_share: int) -> int:
    total = wrk(port, 5, 64)
    total += wrk(port, 3, 32, lua)  # counts wrk's pipelined batches
    total += raw_mix(port, min(raw_share // 10, 5000))
    return total + h2load(port, 50000) + h2_mix(port, min(raw_share // 30, 1000))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--slack-mib", type=float, default=4.0)
    ap.add_argument(
        "--app",
        default="basic:app",
        help="the app under load (wsgi_app:app for the WSGI bridge; same routes)",
    )
    ap.add_argument(
        "--leak-check",
        action="store_true",
        help="run the ASan build (.venv-asan) with LeakSanitizer and fail on any leak whose "
        "allocation stack passes through src/core",
    )
    ap.add_argument(
        "--warmup-rounds",
        type=int,
        default=0,
        help="full rounds of the mix before RSS is first taken (a WSGI server's app threads "
        "each grow a malloc arena of their own during the first one)",
    )
    ap.add_argument("--tls", action="store_true", help="everything over TLS (HTTP/1.1 and h2)")
    ap.add_argument("--ws", action="store_true", help="WebSocket sessions (ws_app:app)")
    args = ap.parse_args()
    if args.ws:
        args.app = "ws_app:app"

    global SCHEME
    tls_flags: list[str] = []
    if args.tls:
        SCHEME = "https"
        tls_flags = make_cert(tempfile.mkdtemp(prefix="soak-tls-"))
    port = free_port()
    env = dict(os.environ)
    binary = REPO / ".venv/bin/pronghorn"
    log = None
    if args.leak_check:
        binary = REPO / ".venv-asan/bin/pronghorn"
        libasan = subprocess.run(
            ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
        log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        env.update(
            LD_PRELOAD=libasan,
            PYTHONMALLOC="malloc",  # every object through malloc, so LSan sees refcount leaks
            ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=30",
        )
    server = subprocess.Popen(
        [
            str(binary),
            args.app,
            "--app-dir",
            str(REPO / "tests/apps"),
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            *tls_flags,
        ],
        cwd=REPO,
        env=env,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(PIPELINE_LUA)
            lua = f.name
        if args.ws:
            total = ws_round(port, 2000)
        else:
            total = wrk(port, 3, 64) + raw_mix(port, 2000) + h2load(port, 20000) + h2_mix(port, 200)
        raw_share = max(1000, args.requests // 50)
        for _ in range(args.warmup_rounds):
            total += one_round(port, lua, raw_share)
        before = rss(server.pid)
        print(f"after warm-up ({total} requests): RSS {before / 2**20:.1f} MiB", flush=True)
        target = args.requests
        while total < target:
            total += ws_round(port, 10000) if args.ws else one_round(port, lua, raw_share)
            print(f"  {total} requests, RSS {rss(server.pid) / 2**20:.1f} MiB", flush=True)
        after = rss(server.pid)
        grew = (after - before) / 2**20
        print(f"after {total} requests: RSS {after / 2**20:.1f} MiB (grew {grew:+.1f} MiB)")
        os.unlink(lua)
        ok = server.poll() is None and (args.leak_check or grew <= args.slack_mib)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
    if log is not None:
        log.seek(0)
        text = log.read()
        leaks = ours(text)
        total = len(re.findall(r"(?:Direct|Indirect) leak of", text))
        print(
            f"LeakSanitizer: {total} leak report(s) at exit (the interpreter's own), "
            f"{len(leaks)} with an allocation stack through src/core"
        )
        for leak in leaks[:5]:
            print(leak)
        ok = ok and not leaks
    return 0 if ok else 1


def ours(report: str) -> list[str]:
    """The leak blocks whose allocation stack goes through our C, except the module's own
    once-per-process state (interned strings, types), which lives until exit by design."""
    blocks = re.split(r"\n(?=(?:Direct|Indirect) leak of)", report)
    return [
        b
        for b in blocks
        if re.match(r"(Direct|Indirect) leak of", b)
        and "src/core/" in b
        and "module_exec" not in b
        and "ph_asgi_init_types" not in b
        and "ph_wsgi_init_types" not in b
    ]


if __name__ == "__main__":
    sys.exit(main())
