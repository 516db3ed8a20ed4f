"""pronghorn's side-by-side benchmark: every scenario against every server, in the same run.

    bench/.venv/bin/python bench/run.py            # the full run (what `make bench` does)
    .venv/bin/python bench/run.py --smoke          # one short round, pronghorn alone

Method (bench/README.md has the why): each server runs one worker pinned with all its threads
to CPU 0, the load generator to CPU 1. Each round starts every server in turn (forward order,
then reversed in the next round), warms it up, then runs each of its scenarios: a warm-up, then
the measurement. A run with errors or non-2xx answers is flagged and does not count. The TLS
scenarios run on an instance of each server started with one certificate made for the run. The
WebSocket scenarios are driven by bench/wsload (Go), built at the start of the run.
Results go to bench/results/<date>-<commit>.json, bench/results/latest.md and
bench/results/charts/.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import history
import loadgen
import quiet
import report
import servers
from apps.bodies import FILE_1M_ENV, FILE_1M_SIZE, file_1m_bytes
from servers import (
    BOTH_CPUS,
    ROOT,
    SLEEP_THREADS,
    Running,
    all_servers,
    pronghorn_source_fingerprint,
    resolve_pronghorn_features,
)


@dataclass
class Scenario:
    key: str
    number: str  # the scenario's number in the issue
    title: str
    kinds: tuple  # server kinds that get a row
    tool: str  # "wrk", "h2load", "oha", "idle" or "wsload"
    metric: str  # "rps", "latency" or "rss"
    path: str = "/"
    conns: int = 64
    depth: int = 1
    method: str = "GET"
    body: int = 0
    rate: int = 0
    streams: int = 1
    needs: str | None = None  # a feature the server must have ("echo", "sleep", "h2", "wsgi", "ws")
    ceiling: str | None = None  # scenario whose nginx row is this one's ceiling, if not its own
    peers: tuple | None = None  # the only peers (server ids) with a row; pronghorn's always
    transfer: bool = False  # the table shows the transfer rate (MiB/s) as well
    file_size: int = 0  # the path serves the file made at start ($BENCH_FILE_1M): its size
    # seconds between the warm-up and the measurement, for the requests the warm-up left queued
    # to drain (a server finishes them after wrk has hung up)
    settle: float = 0
    tls: bool = False  # HTTPS, on the server's TLS instance (Server.tls_argv), the run's cert
    # every request on a new connection ("Connection: close"), each a full TLS handshake: wrk
    # runs with bench/noresume.c preloaded, which stops it resuming sessions
    reconnect: bool = False
    unit: str | None = None  # what the figures count, if not the metric's unit (report.UNITS)
    # WebSocket echo (wsload): the message size in bytes; each connection sends one binary
    # message of this size, waits for its echo and checks it, then sends the next
    message: int = 0
    # every server with this many workers (Server.scenario_args), on both cores, and the load
    # generator on both cores too (two wrk threads): the machine has no third core to keep apart
    workers: int = 0

    def has_row(self, server):
        """Whether the server gets a row in this scenario's table."""
        if server.kind not in self.kinds:
            return False
        if server.only is not None and self.key not in server.only:
            return False
        return self.peers is None or server.id.startswith("pronghorn") or server.id in self.peers


ASGI = ("asgi", "nginx")
TLS_PEERS = ("granian", "uvicorn", "nginx")
# WebSockets: uvicorn three times (its websockets, wsproto and websockets-sansio
# implementations). nginx has no app to echo with (only a proxy); pyvoy and gunicorn not run.
WS_PEERS = ("granian", "uvicorn", "uvicorn-wsproto", "uvicorn-sansio", "hypercorn")
# Two workers: granian --workers 2, uvicorn --workers 2, gunicorn with two uvicorn workers
WORKER_PEERS = ("granian", "uvicorn", "gunicorn")
SCENARIOS = [
    Scenario("hello", "1", "ASGI hello (13 B), keep-alive, 64 conns", ASGI, "wrk", "rps"),
    Scenario(
        "pipelined", "1p", "ASGI hello, pipelined ×16, 64 conns", ASGI, "wrk", "rps", depth=16
    ),
    Scenario("body10k", "2a", "ASGI 10 KB response, 64 conns", ASGI, "wrk", "rps", path="/10k"),
    Scenario(
        "echo10k", "2b", "ASGI POST echo of 10 KB, 64 conns", ASGI, "wrk", "rps",
        path="/echo", method="POST", body=10240, needs="echo",
    ),
    Scenario(
        "file1m", "2c", "1 MiB file, Starlette FileResponse, 64 conns", ("asgi",), "wrk", "rps",
        path="/file1m", peers=("granian", "uvicorn"), transfer=True, file_size=FILE_1M_SIZE,
    ),
    Scenario(
        "sleep10ms", "3", "ASGI sleep 10 ms, 512 conns", ASGI, "wrk", "rps",
        path="/sleep", conns=512, needs="sleep",
    ),
    Scenario("rate5k", "4a", "fixed rate 5,000 req/s, 64 conns", ASGI, "oha", "latency", rate=5000),
    Scenario(
        "rate20k", "4b", "fixed rate 20,000 req/s, 64 conns", ASGI, "oha", "latency", rate=20000
    ),
    Scenario(
        "rate40k", "4c", "fixed rate 40,000 req/s, 64 conns", ASGI, "oha", "latency", rate=40000
    ),
    Scenario(
        "idle_rss", "5a", "RSS per idle keep-alive connection (10k conns)", ASGI, "idle", "rss",
        conns=10000,
    ),
    Scenario("conns10k", "5b", "ASGI hello, 10,000 conns", ASGI, "wrk", "rps", conns=10000),
    Scenario(
        "wsgi_hello", "6a", "WSGI hello, 64 conns", ("wsgi",), "wrk", "rps",
        needs="wsgi", ceiling="hello",
    ),
    Scenario(
        "wsgi_sleep100", "6d",
        f"WSGI sleep 100 ms, 256 conns, {SLEEP_THREADS} threads (at most "
        f"{int(SLEEP_THREADS) * 10} req/s)",
        ("wsgi",), "wrk", "rps", path="/sleep100", conns=256, needs="wsgi",
        # the warm-up leaves up to 256 - 32 requests queued: 0.7 s of work at 32 threads
        settle=1.5,
    ),
    Scenario(
        "h2_hello", "6b", "HTTP/2 (h2c) hello, 64 conns × 1 stream", ASGI, "h2load", "rps",
        needs="h2",
    ),
    Scenario(
        "h2_streams", "6c", "HTTP/2 (h2c) hello, 16 conns × 32 streams", ASGI, "h2load", "rps",
        conns=16, streams=32, needs="h2",
    ),
    # TLS: pronghorn, granian, uvicorn and nginx only (hypercorn, pyvoy and gunicorn not run)
    Scenario(
        "tls_hello", "7a", "TLS hello, HTTP/1.1 keep-alive, 64 conns", ASGI, "wrk", "rps",
        peers=TLS_PEERS, tls=True,
    ),
    Scenario(
        "tls_h2_hello", "7b", "TLS HTTP/2 (ALPN h2) hello, 64 conns × 1 stream", ASGI, "h2load",
        "rps", needs="h2", peers=TLS_PEERS, tls=True,
    ),
    Scenario(
        "tls_handshakes", "7c", "new TLS connections (full handshake per request), 64 conns",
        ASGI, "wrk", "rps", peers=TLS_PEERS, tls=True, reconnect=True, unit="handshakes/s",
    ),
    # WebSockets (ASGI websocket scope, HTTP/1.1 Upgrade, no compression offered): the app's
    # /ws echoes every message; bench/wsload checks each echo's type, length and bytes
    Scenario(
        "ws_echo", "8a", "WebSocket echo of 64 B binary messages, 64 conns", ("asgi",), "wsload",
        "rps", path="/ws", needs="ws", peers=WS_PEERS, unit="msgs/s", message=64,
    ),
    Scenario(
        "ws_1mib", "8b", "WebSocket echo of a 1 MiB binary message, 1 conn", ("asgi",), "wsload",
        "rps", path="/ws", conns=1, needs="ws", peers=WS_PEERS, transfer=True,
        unit="round trips/s", message=1 << 20,
    ),
    Scenario(
        "workers2", "9", "ASGI hello, 2 workers, load generator on both cores, 64 conns",
        ("asgi",), "wrk", "rps", peers=WORKER_PEERS, workers=2,
    ),
]  # fmt: skip

# What runs first on a fresh server: idle_rss wants a warmed-up but unfragmented process, the
# 1 MiB file (and the megabytes of buffers it may leave) comes after the latency rows, and the
# 10k-connection storm goes last. wsgi_sleep100 runs on an instance of its own (more threads),
# and so do the TLS rows (HTTPS), after the cleartext ones.
RUN_ORDER = [
    "idle_rss", "hello", "pipelined", "body10k", "echo10k", "sleep10ms", "wsgi_hello",
    "wsgi_sleep100", "rate5k", "rate20k", "rate40k", "file1m", "h2_hello", "h2_streams",
    "ws_echo", "ws_1mib", "conns10k", "tls_hello", "tls_h2_hello", "tls_handshakes", "workers2",
]  # fmt: skip

# The h2 rows of a server that should speak h2c but does not answer h2load's prior-knowledge
# probe: a note, not a figure.
NO_H2C = "no h2c (prior knowledge) answer: see its log"
NO_H2_TLS = "no h2 over TLS (ALPN) answer: see its log"

# The run's certificate: RSA 2048, self-signed for localhost and 127.0.0.1, made at start into
# a temporary directory with the openssl command line tool. RSA, not ECDSA: signing is the
# server's costly half of a handshake and verifying the client's cheap one, so 7c measures the
# servers (with ECDSA the client's half costs more and wrk's one core is the limit).
CERT_CMD = [
    "openssl", "req", "-x509", "-newkey", "rsa:2048",
    "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-days", "2",
]  # fmt: skip
NORESUME_C = Path(__file__).resolve().parent / "noresume.c"

# A disturbed measurement is repeated at most RETRIES times, after waiting up to QUIET_WAIT
# seconds for the machine to be quiet, while repeats have taken less than RETRY_BUDGET seconds
# in all (so that a full run stays within 30 minutes).
RETRIES = 2
QUIET_WAIT = 20
RETRY_BUDGET = 180

# More, shorter rounds: the machine's speed drifts over minutes (other guests on the host), so
# four interleaved rounds of 2 s say more than three of 4 s, and a row keeps a figure when one
# round is lost. About 25 minutes in all.
FULL = {"rounds": 4, "warmup": 1, "seconds": 2, "rate_seconds": 4}
SMOKE = {"rounds": 1, "warmup": 1, "seconds": 2, "rate_seconds": 2}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def git(*args):
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def machine_info():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def _os_name():
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _read(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def wait_for_quiet(minutes, limit=0.5):
    """Wait (up to `minutes`) for the 1-minute load average to drop below `limit`: a benchmark
    sharing the machine with a compile measures the compile."""
    deadline = time.monotonic() + minutes * 60
    while (load := os.getloadavg()[0]) >= limit:
        if time.monotonic() >= deadline:
            log(f"warning: load average still {load:.2f}: other work may skew the figures")
            return
        log(f"load average {load:.2f} >= {limit}: waiting for the machine to quieten")
        time.sleep(20)


def raise_nofile():
    """Servers and clients inherit the limit; 10k connections need more than 10k fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Bench:
    def __init__(self, args):
        self.args = args
        self.cfg = dict(SMOKE if args.smoke else FULL)
        if args.rounds:
            self.cfg["rounds"] = args.rounds
        if args.seconds:
            self.cfg["seconds"] = args.seconds
            self.cfg["rate_seconds"] = max(args.seconds, 2)
        self.nofile = raise_nofile()
        self.many = min(10000, self.nofile - 200)  # the "10k connections" count we can afford
        self.scenarios = [s for s in SCENARIOS if not args.only or s.key in args.only]
        self.oha = loadgen.find_tool("oha")
        if not self.oha and not args.smoke and any(sc.tool == "oha" for sc in self.scenarios):
            sys.exit("oha not installed: `make bench` installs it into bench/.tools")
        self.commit = git("rev-parse", "--short", "HEAD") or "unknown"
        changes = git("status", "--porcelain", "--", "src", "meson.build", "pyproject.toml")
        self.dirty = bool(changes)
        # an editable install rebuilds whatever the tree holds when a server starts
        self.source_fp = args.pronghorn is None and pronghorn_source_fingerprint()
        self.sources_seen = [self.source_fp] if self.source_fp else []
        self.servers = [s for s in all_servers() if self._selected(s)]
        resolve_pronghorn_features(self.servers, probe_h2=True)
        # results[scenario key][server id] = list of samples
        self.samples = {sc.key: {s.id: [] for s in self.servers} for sc in self.scenarios}
        self.notes = {sc.key: {} for sc in self.scenarios}  # why a row is empty
        self.log_dir = Path(args.out) / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def _selected(self, s):
        if self.args.smoke:
            return s.is_pronghorn
        if self.args.servers:
            return s.id in self.args.servers
        return s.default

    # -- what runs where ----------------------------------------------------------------------

    def applies(self, sc, server):
        """None if the scenario runs on the server, else why not (shown in its row)."""
        if not sc.has_row(server):
            return "skip"
        if sc.tls and ("tls" not in server.features or not server.tls_argv):
            return server.lacks.get("tls", "n/a")
        if sc.tls and not self.tls_files:
            return "no certificate: `openssl req` failed or is not installed (see the log)"
        if sc.reconnect and not self.noresume:
            return "no bench/noresume.c build (cc): wrk would resume TLS sessions"
        if sc.tool == "wsload" and not self.wsload:
            return "no bench/wsload build (Go): see the start of the run's output"
        if sc.needs and sc.needs not in server.features:
            if sc.needs == "h2" and "h2?" in server.features:
                return None  # probed once the server is up
            return server.lacks.get(sc.needs, "n/a")
        if sc.tool == "h2load" and not loadgen.find_tool("h2load"):
            return "h2load not installed"
        if sc.tool == "wrk" and not loadgen.find_tool("wrk"):
            return "wrk not installed"
        return None

    # -- one scenario -------------------------------------------------------------------------

    def measure(self, sc, run):
        cfg = self.cfg
        url = run.url(sc.path, h2=sc.tool == "h2load")
        conns = self.many if sc.conns == 10000 else sc.conns
        if sc.tool == "wrk":
            args = dict(depth=sc.depth, method=sc.method, body=sc.body)
            if sc.reconnect:
                args.update(headers=["Connection: close"], preload=self.noresume)
            if sc.workers:
                args.update(threads=2, cpus=BOTH_CPUS)
            secs = cfg["seconds"] + (2 if sc.conns == 10000 else 0)  # connecting takes a while
            loadgen.wrk(url, conns, cfg["warmup"], **args)
            time.sleep(sc.settle)
            return loadgen.wrk(url, conns, secs, **args)
        if sc.tool == "h2load":
            return loadgen.h2load(url, sc.conns, sc.streams, cfg["seconds"], cfg["warmup"])
        if sc.tool == "oha":
            if self.oha:
                loadgen.oha(url, sc.conns, sc.rate, cfg["warmup"])
                return loadgen.oha(url, sc.conns, sc.rate, cfg["rate_seconds"])
            return loadgen.paced_wrk(url, sc.conns, sc.rate, cfg["rate_seconds"])
        if sc.tool == "idle":
            return self.idle_rss(run, conns)
        if sc.tool == "wsload":  # its warm-up runs on the same connections, in the same process
            return loadgen.wsload(
                self.wsload, run.url(sc.path, ws=True), sc.conns, sc.message, cfg["warmup"],
                cfg["seconds"],
            )  # fmt: skip
        raise ValueError(sc.tool)

    def idle_rss(self, run, n):
        before = run.rss_kib()
        holder = loadgen.IdleHolder("127.0.0.1", run.port, n)
        try:
            opened = holder.ready()
            time.sleep(1.0)  # let the server settle (freed buffers, lazily allocated state)
            after = run.rss_kib()
            check = holder.release()
        finally:
            holder.close()
        ok = max(opened["ok"], 1)
        return {
            "value": (after - before) / ok,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "conns": opened["ok"],
            "errors": opened["failed"] + check["closed"],
            "non2xx": 0,
            "connect_seconds": opened["seconds"],
        }

    # -- a server's turn in a round -------------------------------------------------------------

    def serve(self, server, rnd):
        todo = {}
        for sc in self.scenarios:
            why = self.applies(sc, server)
            if why == "skip":
                continue
            if why:
                self.notes[sc.key][server.id] = why
            else:
                todo[sc.key] = sc
        if not todo:
            return
        # One instance per command line, each started once the one before has stopped: a
        # server with an h2 command line of its own (granian --http 2) serves its h2 rows from
        # a second instance, and a scenario with options of its own (Server.scenario_args,
        # e.g. 32 threads) gets an instance with them.
        # The TLS rows run on an instance of their own (Server.tls_argv) that serves HTTP/1.1
        # and h2 on one HTTPS port, as pronghorn does.
        instances = {}
        for key in RUN_ORDER:
            if key in todo:
                sc = todo[key]
                h2_instance = bool(server.h2_argv) and sc.needs == "h2" and not sc.tls
                extra = tuple(server.scenario_args.get(key, ()))
                instances.setdefault((h2_instance, extra, sc.tls, sc.workers), []).append(sc)
        for (h2_instance, extra, tls, workers), scenarios in instances.items():
            self._serve(server, rnd, scenarios, h2_instance, extra, tls, workers)

    def _serve(self, server, rnd, ordered, h2_instance, extra=(), tls=False, workers=0):
        if server.is_pronghorn and self.source_fp:
            fp = pronghorn_source_fingerprint()
            if fp not in self.sources_seen:
                self.sources_seen.append(fp)
                if len(self.sources_seen) > 1:
                    log("  !! pronghorn's source changed since the run started (an edit or a "
                        "commit): its rows now mix builds")  # fmt: skip
        t0 = time.monotonic()
        run = Running(
            server, self.log_dir, h2_instance=h2_instance, extra=extra,
            tls=self.tls_files if tls else None, cpus=BOTH_CPUS if workers else None,
        )  # fmt: skip
        h2_ok = True
        try:
            if h2_instance:
                run.wait_ready(check=run.accepts)  # it answers no HTTP/1.1 GET
            else:
                run.wait_ready()
                loadgen.wrk(run.url("/"), 64, self.cfg["warmup"])  # warm the server up
            if any(sc.needs == "h2" for sc in ordered):
                h2_ok = self._probe_h2(server, run)
            for sc in ordered:
                if sc.needs == "h2" and "h2" not in server.features:
                    self.notes[sc.key][server.id] = server.lacks.get("h2", "n/a")
                    continue
                if sc.needs == "h2" and not h2_ok:
                    self.notes[sc.key][server.id] = NO_H2_TLS if tls else NO_H2C
                    continue
                tags = {}
                if sc.tls:  # what the server negotiates (progress line and table)
                    try:
                        # as the load generator: h2load offers h2 alone, wrk no ALPN
                        tags = {"tls": run.tls_info(("h2",) if sc.tool == "h2load" else ())}
                    except OSError as e:
                        tags = {"tls": f"handshake failed: {e}"}
                if sc.file_size:
                    wrong, tags = self._check_file(sc, run)
                    if wrong:
                        log(f"  !! {server.id}: {sc.path}: {wrong}")
                        self._record(sc, server, rnd, {"failed": wrong})
                        continue
                self._one(sc, server, run, rnd, tags)
        except RuntimeError as e:  # the server did not start or died: every row says so
            log(f"  !! {server.id}: {e}")
            for sc in ordered:
                if not any(x["round"] == rnd for x in self.samples[sc.key][server.id]):
                    self._record(sc, server, rnd, {"failed": str(e)})
        finally:
            run.stop()
        log(f"  {server.id}: {time.monotonic() - t0:.0f}s")

    def _probe_h2(self, server, run):
        """Whether the server answers h2c with prior knowledge (h2load, 4 requests). It enables
        pronghorn's h2 rows ("h2?"); a peer that should but does not gets a note in those rows
        this round instead of a figure."""
        ok = loadgen.h2_probe(run.url("/", h2=True))
        how = "h2 over TLS (ALPN)" if run.tls else "h2c"
        if "h2?" in server.features:
            server.features.discard("h2?")
            if ok:
                server.features.add("h2")
                server.lacks.pop("h2", None)
                log(f"  {server.id}: answers HTTP/2 ({how}): h2 rows enabled")
        elif "h2" in server.features and not ok:
            log(f"  !! {server.id}: {NO_H2_TLS if run.tls else NO_H2C}")
        return ok

    def _check_file(self, sc, run):
        """(what is wrong or None, tags for the samples): one GET of the file's path must
        answer its exact bytes; the tags record whether the app saw the pathsend extension."""
        try:
            with urllib.request.urlopen(run.url(sc.path), timeout=10) as r:
                body = r.read()
                pathsend = r.headers.get("x-bench-pathsend")
        except OSError as e:
            return f"GET failed: {e}", {}
        if body != self.file_bytes:
            return f"wrong body: {len(body)} bytes, not the file's {len(self.file_bytes)}", {}
        return None, {"pathsend": pathsend == "yes"}

    def _one(self, sc, server, run, rnd, tags=None):
        """Measure; a measurement that other processes disturbed is kept (flagged) and
        repeated, up to RETRIES times, once the machine is quiet again."""
        for attempt in range(RETRIES + 1):
            if run.proc.poll() is not None:
                raise RuntimeError(f"server exited with {run.proc.returncode}; see {run.log_path}")
            t0 = time.monotonic()
            with quiet.Watch(run.proc.pid) as watch:
                try:
                    result = self.measure(sc, run)
                except loadgen.ToolError as e:
                    result = {"failed": str(e)}
            result["elapsed_s"] = round(time.monotonic() - t0, 1)
            result.update(tags or {})
            result["server_cpu"] = round(watch.server, 3)  # warm-up included
            result["foreign_cpu"] = round(watch.foreign, 3)
            result["steal_cpu"] = round(watch.steal, 3)
            if watch.top:
                result["foreign_top"] = watch.top
            if run.proc.poll() is not None:
                result = {"failed": f"server exited with {run.proc.returncode} during the run"}
            # smoke checks the harness, not the figures: it neither discards nor repeats
            # RSS does not depend on CPU time, and a repeat would find the memory allocated
            disturbed = watch.disturbed and "failed" not in result and sc.metric != "rss"
            if disturbed and not self.args.smoke:
                result["disturbed"] = True
            self._record(sc, server, rnd, result)
            if (
                not result.get("disturbed")
                or attempt == RETRIES
                or self.retry_seconds > RETRY_BUDGET
            ):
                return
            self.retries += 1
            t_retry = time.monotonic()
            left = quiet.wait_quiet(QUIET_WAIT)
            self.retry_seconds += time.monotonic() - t_retry + result["elapsed_s"]
            log(
                f"  disturbed (other processes {watch.foreign:.2f}, steal {watch.steal:.2f} "
                "cores): again"
                + ("" if left < quiet.FOREIGN_LIMIT else f", though still {left:.2f} busy")
            )

    def _record(self, sc, server, rnd, result):
        result = {k: v for k, v in result.items()}
        result["round"] = rnd
        if "failed" in result:
            result["valid"] = False
        else:
            if "value" not in result:
                result["value"] = result["p99_ms"] if sc.metric == "latency" else result["rps"]
            result["valid"] = (
                result["errors"] == 0
                and result["non2xx"] == 0
                and result.get("requests") != 0  # nothing answered within the measurement
                and not result.get("disturbed")
            )
        self.samples[sc.key][server.id].append(result)
        log("  " + report.describe_sample(sc, server.label, result))

    # -- the whole run --------------------------------------------------------------------------

    def run(self):
        # built before the machine is expected quiet: a compile is what the wait is for
        self.wsload = None
        if any(sc.tool == "wsload" for sc in self.scenarios):
            self.wsload, why = loadgen.build_wsload()
            if not self.wsload:
                log(f"warning: bench/wsload did not build, no WebSocket rows: {why}")
        if not self.args.smoke:
            wait_for_quiet(self.args.wait_quiet)
        started = time.time()
        self.retry_seconds = 0.0
        self.retries = 0
        load = os.getloadavg()
        files = self._make_file()
        tls_dir = self._make_tls()
        try:
            for rnd in range(1, self.cfg["rounds"] + 1):
                order = self.servers if rnd % 2 else list(reversed(self.servers))
                log(f"round {rnd}/{self.cfg['rounds']}: " + " ".join(s.id for s in order))
                for server in order:
                    self.serve(server, rnd)
        finally:
            for d in (files, tls_dir):
                if d:
                    shutil.rmtree(d, ignore_errors=True)
        meta = self.meta(started, load)
        return report.build(meta, self.scenarios, self.servers, self.samples, self.notes)

    def _make_file(self):
        """The file scenario 2c serves, in a temporary directory the servers learn through
        $BENCH_FILE_1M (they inherit the environment); the directory, or None."""
        self.file_bytes = b""
        if not any(sc.file_size for sc in self.scenarios):
            return None
        self.file_bytes = file_1m_bytes()
        files = Path(tempfile.mkdtemp(prefix="bench-files-"))
        path = files / "1m.bin"
        path.write_bytes(self.file_bytes)
        os.environ[FILE_1M_ENV] = str(path)
        return files

    def _make_tls(self):
        """The TLS scenarios' certificate and key (self.tls_files) and, for 7c, wrk's
        no-resumption shim (self.noresume), in a temporary directory: the directory, or None.
        What cannot be made leaves the rows a note (applies)."""
        self.tls_files = self.noresume = None
        if not any(sc.tls for sc in self.scenarios):
            return None
        tmp = Path(tempfile.mkdtemp(prefix="bench-tls-"))
        cert, key = tmp / "cert.pem", tmp / "key.pem"
        try:
            out = subprocess.run(
                [*CERT_CMD, "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True
            )
        except OSError as e:
            log(f"warning: no certificate for the TLS rows: {e}")
        else:
            if out.returncode == 0:
                self.tls_files = (cert, key)
            else:
                log(f"warning: no certificate for the TLS rows: {out.stderr.strip()[-300:]}")
        if any(sc.reconnect for sc in self.scenarios):
            so = tmp / "noresume.so"
            cc = os.environ.get("CC", "cc")
            try:
                out = subprocess.run(
                    [cc, "-shared", "-fPIC", "-O2", "-o", str(so), str(NORESUME_C), "-ldl"],
                    capture_output=True, text=True,
                )  # fmt: skip
                ok, why = out.returncode == 0, out.stderr.strip()[-300:]
            except OSError as e:
                ok, why = False, str(e)
            if ok:
                self.noresume = so
            else:
                log(f"warning: bench/noresume.c did not build: {why}")
        return tmp

    def tls_meta(self):
        if not any(sc.tls for sc in self.scenarios):
            return None
        try:
            version = subprocess.run(["openssl", "version"], capture_output=True, text=True)
            openssl = version.stdout.strip()
        except OSError:
            openssl = "not installed"
        return {
            "certificate": "RSA 2048, self-signed for localhost and 127.0.0.1, one per run: "
            + " ".join(CERT_CMD),
            "openssl": openssl,
            "verification": "none by the load generators (wrk and h2load do not verify)",
            "new_connections": "wrk -H 'Connection: close' with bench/noresume.c preloaded: "
            "every request a new connection and a full handshake (no session resumption)",
        }

    def meta(self, started, load):
        tools = {t: loadgen.tool_version(t) for t in ("wrk", "h2load", "oha")}
        if any(sc.tool == "wsload" for sc in self.scenarios):
            tools["wsload"] = loadgen.wsload_version() if self.wsload else "did not build"
        if not self.oha and any(sc.tool == "oha" for sc in self.scenarios):
            tools["oha"] = "not installed: fixed-rate rows use wrk paced (closed loop)"
        versions = {}
        for s in self.servers:
            versions.setdefault(s.label, s.version())
        tls = self.tls_meta()
        return {
            "date": datetime.datetime.fromtimestamp(started).astimezone().isoformat("T", "seconds"),
            "commit": self.commit,
            "pronghorn_source_dirty": self.dirty and self.args.pronghorn is None,
            "pronghorn_exe": (
                "a separate build (run.py --pronghorn)"
                if self.args.pronghorn
                else ".venv/bin/pronghorn (editable install)"
            ),
            "pronghorn_source_changed_during_run": len(self.sources_seen) > 1,
            "smoke": self.args.smoke,
            "elapsed_seconds": round(time.time() - started),
            "disturbed_and_repeated": self.retries,
            "load_average_at_start": [round(x, 2) for x in load],
            "machine": machine_info(),
            "versions": versions,
            "tools": tools,
            **({"tls": tls} if tls else {}),
            "settings": {
                **self.cfg,
                "many_connections": self.many,
                "server_cpu": 0,
                "client_cpu": 1,
            },
            "servers": {
                **{s.id: command_line(s) for s in self.servers},
                **{
                    f"{s.id} (h2 rows)": command_line(s, h2=True) for s in self.servers if s.h2_argv
                },
                **{
                    f"{s.id} ({key})": command_line(s, extra=extra)
                    for s in self.servers
                    for key, extra in s.scenario_args.items()
                    if any(sc.key == key for sc in self.scenarios)
                },
                **{
                    f"{s.id} (TLS rows)": command_line(s, tls=True)
                    for s in self.servers
                    if s.tls_argv and any(sc.tls and sc.has_row(s) for sc in self.scenarios)
                },
            },
            "scenarios": [asdict(sc) for sc in self.scenarios],
        }


def rebuild(results):
    """Recompute a results document from its own samples (after a change to report.py)."""
    meta = results["meta"]
    scenarios = [
        Scenario(**{**d, "kinds": tuple(d["kinds"]), "peers": d.get("peers") and tuple(d["peers"])})
        for d in meta["scenarios"]
    ]
    ids = {r["id"] for sc in results["scenarios"] for r in sc["rows"]}
    servers = [s for s in all_servers() if s.id in ids]
    samples = {sc.key: {s.id: [] for s in servers} for sc in scenarios}
    notes = {sc.key: {} for sc in scenarios}
    for sc in results["scenarios"]:
        for r in sc["rows"]:
            samples[sc["key"]][r["id"]] = r["samples"]
            if not r["samples"]:
                notes[sc["key"]][r["id"]] = r["status"]
    return report.build(meta, scenarios, servers, samples, notes)


def command_line(server, h2=False, extra=(), tls=False):
    """The server's command line as recorded in the results, without this machine's paths."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-argv-"))
    try:
        if tls:  # nginx: the certificate is in its rendered configuration
            argv = server.tls_argv(8000, 8000, scratch, "$TLS/cert.pem", "$TLS/key.pem")
        else:
            argv = (server.h2_argv if h2 else server.argv)(8000, 8001, scratch)
        argv = servers.with_args(argv, extra)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    argv[0] = Path(argv[0]).name
    text = " ".join(argv).replace(str(scratch), "$SCRATCH")
    return "taskset -c 0 " + text.replace(str(ROOT) + "/", "")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="one short round, pronghorn alone")
    p.add_argument("--rounds", type=int, help="rounds (default 3; smoke 1)")
    p.add_argument("--seconds", type=int, help="seconds per measurement (default 4; smoke 2)")
    p.add_argument("--servers", nargs="*", help="server ids to run (default: all)")
    p.add_argument("--only", nargs="*", help="scenario keys to run (default: all)")
    p.add_argument("--out", help="results directory (default bench/results, smoke: .../smoke)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument(
        "--pronghorn",
        metavar="EXE",
        help="the pronghorn executable to measure (default: the editable install in .venv)",
    )
    p.add_argument("--report", metavar="JSON", help="only redo the tables and charts of a run")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=2,
        metavar="MINUTES",
        help="first wait up to MINUTES for a load average below 0.5 (default 2; not in smoke)",
    )
    args = p.parse_args()
    results_dir = Path(__file__).resolve().parent / "results"
    args.out = args.out or str(results_dir / "smoke" if args.smoke else results_dir)

    if args.pronghorn:
        servers.PRONGHORN_EXE = Path(args.pronghorn).resolve()
    if args.report:
        results = rebuild(json.loads(Path(args.report).read_text()))
        args.smoke = results["meta"]["smoke"]
    else:
        results = Bench(args).run()
    out = Path(args.out)
    stamp = results["meta"]["date"][:10] + "-" + results["meta"]["commit"]
    json_path = out / ("smoke.json" if args.smoke else f"{stamp}.json")
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    charts = []
    if not args.no_charts:
        charts = report.charts(results, out / "charts")
    md = report.markdown(results, charts_rel=[c.relative_to(out) for c in charts])
    if not args.smoke and out == results_dir and not args.servers and not args.only:
        # a full run of the repository's own results: it joins the history, and the README
        # shows it
        history.record(results)
        entries = history.load()
        hist_chart = (
            None if args.no_charts else history.chart(entries, out / "charts" / "history.png")
        )
        md += "\n" + "\n".join(history.markdown(entries)) + "\n"
        readme = ROOT / "README.md"
        section = report.readme_section(results, charts, hist_chart)
        if report.update_readme(readme, section):
            log(f"updated the Performance figures in {readme}")
    (out / ("smoke.md" if args.smoke else "latest.md")).write_text(md)
    print(md)
    log(f"wrote {json_path}, {out / ('smoke.md' if args.smoke else 'latest.md')}")
    if charts:
        log(f"wrote {len(charts)} charts in {out / 'charts'}")
    elif not args.no_charts:
        log("charts skipped: matplotlib not installed (it is in bench/.venv)")
    return report.exit_status(results, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
