"""--metrics-bind: Prometheus text on /metrics, and /healthz and /readyz for orchestrators, on a
listener of their own.

The counters live in C (``ph_metrics_t``, src/core/server.h), in each worker's heartbeat slot:
the reactor adds to them on the request path and nothing else happens per request. The text is
built here only when scraped, from a copy of every slot (``_core.read_beat``). With several
workers the supervisor answers: counters are the sum over every worker that ever ran (a
worker's last counts are kept when it exits, so no counter goes back), gauges the sum over the
live ones, and the per-process figures (RSS, CPU, fds, event-loop lag) carry a ``worker``
label. A single process answers for itself from a thread of its own.

``/healthz``: 200 while every worker's event loop has beaten within the last second.
``/readyz``: 200 while the server accepts; 503 from the moment a drain starts.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable

from . import _core
from .logs import END_NAMES, REJECTS

SLOT_SIZE = 1024  # bytes of one worker's slot: a ph_beat_t (_core.BEAT_SIZE) and room
assert _core.BEAT_SIZE <= SLOT_SIZE
BEAT_INTERVAL = 0.2
HEALTHY_WITHIN = 1.0  # seconds since a worker's last beat
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other")
CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
PROTOCOLS = ("http1", "http2", "websocket")
COUNTERS = ("requests", "duration_sum_us", "app_errors", "conns_total", "bytes_in", "bytes_out")
LISTS = ("duration", "ends", "rejected")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def read(page, slot: int) -> dict:
    return _core.read_beat(page, slot * SLOT_SIZE)


def zero() -> dict:
    snap = read(bytes(SLOT_SIZE), 0)
    snap["beat_ns"] = 0
    return snap


def add_counters(total: dict, snap: dict) -> None:
    """Adds snap's counters (not its gauges) into total."""
    for key in COUNTERS:
        total[key] += snap[key]
    for key in LISTS:
        total[key] = [a + b for a, b in zip(total[key], snap[key], strict=True)]
    total["responses"] = [
        [a + b for a, b in zip(ra, rb, strict=True)]
        for ra, rb in zip(total["responses"], snap["responses"], strict=True)
    ]


class OwnPage:
    """A single process's page: one slot, the heartbeat options that make the core fill it."""

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, SLOT_SIZE)

    def core_options(self) -> dict:
        return {
            "heartbeat": self.page,
            "heartbeat_slot": 0,
            "heartbeat_slot_size": SLOT_SIZE,
            "heartbeat_slots": 1,
            "heartbeat_interval": BEAT_INTERVAL,
        }

    def workers(self) -> list[tuple[str, int, dict]]:
        return [("0", os.getpid(), read(self.page, 0))]


def _proc(pid: int) -> tuple[float, float, int] | None:
    """RSS bytes, CPU seconds and open fds of pid, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        rss = int(fields[21]) * mmap.PAGESIZE
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        return None
    return rss, cpu, fds


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(workers: list[tuple[str, int, dict]], retired: dict | None = None) -> str:
    """The Prometheus text exposition (version 0.0.4) for these workers (label, pid, slot)."""
    total = zero()
    if retired is not None:
        add_counters(total, retired)
    streams = conns = 0
    open_by = [0] * len(PROTOCOLS)
    for _, _, snap in workers:
        add_counters(total, snap)
        streams += snap["streams"]
        conns += snap["conns"]
        open_by = [a + b for a, b in zip(open_by, snap["conns_open"], strict=True)]
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{k}="{_esc(str(v))}"' for k, v in labels.items())
            out.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")

    metric(
        "pronghorn_requests_total",
        "counter",
        "Requests that ended, by method and response status class (none: no status was sent).",
        [
            ({"method": m, "status_class": c}, total["responses"][i][j])
            for i, m in enumerate(METHODS)
            for j, c in enumerate(CLASSES)
            if total["responses"][i][j]
        ],
    )
    bounds = workers[0][2]["bounds_us"] if workers else zero()["bounds_us"]
    running = 0
    buckets = []
    for bound, n in zip(bounds, total["duration"], strict=True):
        running += n
        le = "+Inf" if bound >= 2**63 else f"{bound / 1e6:g}"
        buckets.append(({"le": le}, running))
    out.append("# HELP pronghorn_request_duration_seconds From the request head to its end.")
    out.append("# TYPE pronghorn_request_duration_seconds histogram")
    for labels, value in buckets:
        out.append(f'pronghorn_request_duration_seconds_bucket{{le="{labels["le"]}"}} {value}')
    out.append(f"pronghorn_request_duration_seconds_sum {total['duration_sum_us'] / 1e6}")
    out.append(f"pronghorn_request_duration_seconds_count {running}")
    metric(
        "pronghorn_request_ends_total",
        "counter",
        "Requests by how they ended.",
        [({"end": name}, total["ends"][i]) for i, name in enumerate(END_NAMES)],
    )
    metric(
        "pronghorn_requests_rejected_total",
        "counter",
        "Requests answered below the app, by reason.",
        [({"reason": REJECTS[i]}, total["rejected"][i]) for i in range(1, len(REJECTS))],
    )
    metric(
        "pronghorn_client_disconnects_total",
        "counter",
        "Requests whose client left before the response was whole.",
        [({}, total["ends"][END_NAMES.index("client_gone")])],
    )
    metric(
        "pronghorn_app_exceptions_total",
        "counter",
        "Exceptions raised by the application (a client that left excluded).",
        [({}, total["app_errors"])],
    )
    metric("pronghorn_requests_in_flight", "gauge", "Requests being served.", [({}, streams)])
    metric(
        "pronghorn_connections_open",
        "gauge",
        "Open client connections, by what they speak (TLS handshakes in progress excluded).",
        [({"protocol": p}, open_by[i]) for i, p in enumerate(PROTOCOLS)],
    )
    metric(
        "pronghorn_connections_total",
        "counter",
        "Client connections accepted.",
        [({}, total["conns_total"])],
    )
    metric(
        "pronghorn_received_bytes_total",
        "counter",
        "Bytes read from clients (on the wire).",
        [({}, total["bytes_in"])],
    )
    metric(
        "pronghorn_sent_bytes_total",
        "counter",
        "Bytes written to clients (on the wire).",
        [({}, total["bytes_out"])],
    )
    metric("pronghorn_workers", "gauge", "Worker processes serving.", [({}, len(workers))])
    metric(
        "pronghorn_event_loop_lag_seconds",
        "gauge",
        "How late the worker's last heartbeat ran (what its event loop made others wait).",
        [({"worker": w}, snap["loop_lag_us"] / 1e6) for w, _, snap in workers],
    )
    procs = [(w, _proc(pid)) for w, pid, _ in workers]
    procs = [(w, p) for w, p in procs if p is not None]
    metric(
        "pronghorn_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the worker process.",
        [({"worker": w}, p[0]) for w, p in procs],
    )
    metric(
        "pronghorn_process_cpu_seconds_total",
        "counter",
        "CPU time (user and system) of the worker process.",
        [({"worker": w}, p[1]) for w, p in procs],
    )
    metric(
        "pronghorn_process_open_fds",
        "gauge",
        "Open file descriptors of the worker process.",
        [({"worker": w}, p[2]) for w, p in procs],
    )
    return "\n".join(out) + "\n"


def healthy(workers: list[tuple[str, int, dict]]) -> tuple[bool, str]:
    now = time.monotonic_ns()
    stale = [
        w for w, _, s in workers if not s["beat_ns"] or now - s["beat_ns"] > HEALTHY_WITHIN * 1e9
    ]
    if not workers:
        return False, "no worker\n"
    if stale:
        return False, f"event loop not answering: worker {', '.join(stale)}\n"
    return True, "ok\n"


_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Endpoint:
    """The metrics listener: a few short HTTP/1.1 exchanges at a time, without threads of its
    own; the owner calls handle() when a socket it lists in fds() is readable (or runs
    serve_forever() on a thread). answer(path) -> (status, content type, body)."""

    MAX_HEAD = 8192
    TIMEOUT = 2.0

    def __init__(self, address: tuple[str, int], answer: Callable[[str], tuple[int, str, bytes]]):
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.answer = answer
        self.clients: dict[int, tuple[socket.socket, bytearray, float]] = {}
        self._stop_r, self._stop_w = os.pipe()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def fds(self) -> list[int]:
        self._expire()
        return [self.sock.fileno(), *self.clients]

    def handle(self, readable) -> None:
        for fd in readable:
            if fd == self.sock.fileno():
                self._accept()
            elif fd in self.clients:
                self._read(fd)

    def _accept(self) -> None:
        for _ in range(16):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            self.clients[conn.fileno()] = (conn, bytearray(), time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for fd, (_, _, since) in list(self.clients.items()):
            if now - since > self.TIMEOUT:
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        conn = self.clients.pop(fd)[0]
        with contextlib.suppress(OSError):
            conn.close()

    def _read(self, fd: int) -> None:
        conn, buf, _ = self.clients[fd]
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        buf += data
        if b"\r\n\r\n" not in buf and len(buf) < self.MAX_HEAD:
            return
        line = bytes(buf).split(b"\r\n", 1)[0].split()
        if len(buf) >= self.MAX_HEAD and b"\r\n\r\n" not in buf:
            status, ctype, body = 431, "text/plain", b"request head too large\n"
        elif len(line) != 3 or line[0] not in (b"GET", b"HEAD"):
            status, ctype, body = 405, "text/plain", b"GET only\n"
        else:
            path = line[1].decode("latin-1").split("?", 1)[0]
            try:
                status, ctype, body = self.answer(path)
            except Exception as exc:  # noqa: BLE001 - an answer, never a dead supervisor
                status, ctype, body = 500, "text/plain", f"{type(exc).__name__}: {exc}\n".encode()
        reason = _REASONS.get(status, "")
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        payload = head + (body if line[:1] != [b"HEAD"] else b"")
        conn.setblocking(True)
        conn.settimeout(self.TIMEOUT)
        with contextlib.suppress(OSError):
            conn.sendall(payload)
        self._drop(fd)

    def serve_forever(self) -> None:
        with selectors.DefaultSelector() as sel:
            while True:
                fds = self.fds()
                keys = {}
                for fd in fds + [self._stop_r]:
                    keys[fd] = sel.register(fd, selectors.EVENT_READ)
                ready = [key.fd for key, _ in sel.select(0.5 if self.clients else None)]
                for fd in keys:
                    sel.unregister(fd)
                if self._stop_r in ready:
                    return
                self.handle(ready)

    def start_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="pronghorn-metrics", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        for fd in list(self.clients):
            self._drop(fd)
        with contextlib.suppress(OSError):
            self.sock.close()


def answer_for(workers: Callable[[], list], ready: Callable[[], bool], retired=None):
    """The endpoint's answer() over a source of worker slots."""

    def answer(path: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            text = render(workers(), retired() if retired else None)
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode()
        if path == "/healthz":
            ok, why = healthy(workers())
            return (200 if ok else 503), "text/plain", why.encode()
        if path == "/readyz":
            ok = ready()
            return (200, "text/plain", b"ready\n") if ok else (503, "text/plain", b"draining\n")
        return 404, "text/plain", b"/metrics, /healthz or /readyz\n"

    return answer
