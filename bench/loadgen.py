"""Load generators, each pinned to CLIENT_CPU: wrk, h2load, oha, wsload (WebSockets) and the
idle-connection holder.

Every runner returns a dict with at least "rps", "errors" (socket errors, timeouts, failed
requests) and "non2xx" (answers that were not 2xx); a run with either above zero is flagged and
does not count as a result. wrk and h2load also say how much of its core the tool used
("client_cpu"): near 1.0, the figure may be the load generator's ceiling, not the server's.
Over HTTPS neither verifies the certificate (the run's is self-signed).
"""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

from servers import BENCH, CLIENT_CPU

WRK_LUA = BENCH / "lua" / "wrk.lua"
IDLE = BENCH / "idle.py"
TOOLS_BIN = BENCH / ".tools" / "bin"
WSLOAD_SRC = BENCH / "wsload"  # Go; its dependency pinned in go.mod / go.sum


class ToolError(RuntimeError):
    """The load generator itself failed (not the server under test)."""


def find_tool(name):
    """A tool from bench/.tools/bin (where `make bench` installs oha) or from PATH."""
    local = TOOLS_BIN / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def tool_version(name):
    exe = find_tool(name)
    if not exe:
        return "not installed"
    flag = {"wrk": "-v", "h2load": "--version", "oha": "--version"}[name]
    out = subprocess.run([exe, flag], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else text.splitlines()[0] if text else "unknown"


def _pinned(argv, cpus=None):
    return ["taskset", "-c", cpus or CLIENT_CPU, *argv]


def _children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(argv, timeout, env=None, cpus=None):
    """The tool's CompletedProcess, with .client_cpu: the cores it used over its run (the
    reaped children's CPU time; the servers under test are reaped only once stopped)."""
    cpu0, t0 = _children_cpu(), time.monotonic()
    try:
        out = subprocess.run(
            _pinned(argv, cpus), capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{argv[0]} did not finish within {timeout:.0f}s") from e
    out.client_cpu = round((_children_cpu() - cpu0) / max(time.monotonic() - t0, 1e-6), 3)
    return out


def wrk(
    url, conns, seconds, depth=1, method="GET", body=0, pace_ms=0, headers=(), preload=None,
    threads=1, cpus=None,
):  # fmt: skip
    """Closed-loop HTTP/1.1 load; depth > 1 pipelines, pace_ms > 0 waits before each request.
    headers: ("Name: value", ...) added to every request (wrk -H); with "Connection: close"
    wrk opens a new connection for each request. preload: a library to LD_PRELOAD into wrk
    (bench/noresume.c: no TLS session resumption). threads/cpus: wrk threads and where they
    run (default one thread on CLIENT_CPU)."""
    exe = find_tool("wrk")
    if not exe:
        raise ToolError("wrk not installed")
    env = dict(os.environ, BENCH_WRK_DELAY="1" if pace_ms else "0")
    if preload:
        env["LD_PRELOAD"] = str(preload)
    argv = [
        exe, f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
        *(x for h in headers for x in ("-H", h)),
        "-s", str(WRK_LUA), url, "--", str(depth), method, str(body), str(pace_ms),
    ]  # fmt: skip
    out = _run(argv, timeout=seconds + 60, env=env, cpus=cpus)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise ToolError(f"wrk gave no result: {(out.stderr or out.stdout).strip()[:300]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    secs = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    return {
        "rps": raw["requests"] / secs if secs else 0.0,
        "bytes_per_s": raw["bytes"] / secs if secs else 0.0,  # headers and bodies read
        "requests": raw["requests"],
        "errors": raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        "non2xx": raw["status"],
        "p50_ms": lat["50"] / 1000,
        "p99_ms": lat["99"] / 1000,
        "p999_ms": lat["99.9"] / 1000,
        "client_cpu": out.client_cpu,
        "raw": raw,
    }


def h2load(url, conns, streams, seconds, warmup):
    """HTTP/2: conns connections, streams in flight on each. An http:// URL is h2c with prior
    knowledge; an https:// one is TLS offering ALPN h2 alone (by default h2load also offers
    http/1.1 and would fall back to it unnoticed)."""
    exe = find_tool("h2load")
    if not exe:
        raise ToolError("h2load not installed (Debian package nghttp2-client)")
    argv = [
        exe, "-t1", f"-c{conns}", f"-m{streams}", "-D", str(seconds),
        "--warm-up-time", str(warmup), *_alpn_h2(url), url,
    ]  # fmt: skip
    out = _run(argv, timeout=seconds + warmup + 60)
    text = out.stdout
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    # per connection: min, max, mean req/s. In a timed run (-D) a connection the server never
    # answers fails no request, it only completes none: min 0 is how it shows.
    per_conn = re.search(r"^req/s\s*:\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.M)
    if not (fin and req and codes):
        raise ToolError(f"h2load gave no result: {(out.stderr or text).strip()[:300]}")
    total, _, done, ok, failed, errored, timeout = map(int, req.groups())
    c2, c3, c4, c5 = map(int, codes.groups())
    errors = failed + errored + timeout
    raw = {"total": total, "succeeded": ok, "failed": failed, "errored": errored}
    for key, pattern in (("tls_protocol", r"^TLS Protocol: (\S+)"), ("cipher", r"^Cipher: (\S+)"),
                         ("alpn", r"^Application protocol: (\S+)")):  # fmt: skip
        m = re.search(pattern, text, re.M)
        if m:
            raw[key] = m.group(1)
    if per_conn:
        raw["conn_rps_min_max_mean"] = [float(x) for x in per_conn.groups()]
        if float(per_conn.group(1)) == 0:
            raw["idle_conns"] = True  # at least one connection completed no request
            errors += 1
    return {
        "rps": float(fin.group(3)),
        "requests": done,
        "errors": errors if done else max(1, errors),
        "non2xx": c3 + c4 + c5,
        "client_cpu": out.client_cpu,
        "raw": raw,
    }


def _alpn_h2(url):
    return ["--npn-list=h2"] if url.startswith("https:") else []


def h2_probe(url):
    """True if the server answers HTTP/2 requests: h2c with prior knowledge (http://) or h2
    by ALPN (https://)."""
    exe = find_tool("h2load")
    if not exe:
        return False
    try:
        out = _run([exe, "-n4", "-c1", *_alpn_h2(url), url], timeout=15)
    except ToolError:
        return False
    return "4 succeeded" in out.stdout


def oha(url, conns, rate, seconds):
    """Open-loop load at a fixed rate; latency is corrected for coordinated omission."""
    exe = find_tool("oha")
    if not exe:
        raise ToolError("oha not installed")
    argv = [
        exe, "-z", f"{seconds}s", "-q", str(rate), "-c", str(conns), "--worker-threads", "1",
        "--latency-correction", "--wait-ongoing-requests-after-deadline",
        "--no-tui", "--output-format", "json", url,
    ]  # fmt: skip
    out = _run(argv, timeout=seconds + 60)
    try:
        raw = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise ToolError(f"oha gave no result: {(out.stderr or out.stdout).strip()[:300]}") from e
    summary = raw["summary"]
    pct = raw.get("latencyPercentiles", {})
    codes = {int(k): v for k, v in raw.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    errors = sum(raw.get("errorDistribution", {}).values())
    total_secs = summary.get("total") or seconds

    def ms(key):
        v = pct.get(key)
        return v * 1000 if v is not None else None

    return {
        "rps": ok / total_secs,
        "requests": ok,
        "errors": errors,
        "non2xx": sum(codes.values()) - ok,
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99.9"),
        "raw": {
            "summary": summary,
            "latencyPercentiles": pct,
            "statusCodeDistribution": raw.get("statusCodeDistribution", {}),
            "errorDistribution": raw.get("errorDistribution", {}),
        },
    }


def _go():
    return shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go") if os.access(p, os.X_OK)), None
    )


def build_wsload():
    """(path of the wsload binary, None) once `go build` made bench/.tools/bin/wsload from
    bench/wsload, else (None, why). Quick when nothing changed (Go's build cache); the first
    build fetches gorilla/websocket through the Go module proxy, at the version go.sum pins."""
    go = _go()
    if not go:
        return None, "no Go toolchain (go) on PATH or in /usr/local/go/bin"
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    exe = TOOLS_BIN / "wsload"
    # -mod=readonly: go.mod and go.sum as committed, never rewritten; -buildvcs=false: no git
    # stamp (a fresh clone in CI need not satisfy git's ownership checks); GOTOOLCHAIN=local: the
    # Go that is installed, never one downloaded for the go.mod's directive
    flags = (os.environ.get("GOFLAGS", "") + " -mod=readonly -buildvcs=false").strip()
    env = dict(os.environ, GOFLAGS=flags, GOTOOLCHAIN="local")
    try:
        out = subprocess.run(
            [go, "build", "-trimpath", "-o", str(exe), "."],
            cwd=WSLOAD_SRC, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if out.returncode != 0:
        return None, (out.stderr or out.stdout).strip()[-500:]
    return str(exe), None


def wsload_version():
    """What bench/wsload is built from, e.g. "gorilla/websocket v1.5.3, go1.26.8"."""
    m = re.search(r"github.com/gorilla/websocket (\S+)", (WSLOAD_SRC / "go.mod").read_text())
    go = _go()
    ver = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True).stdout
    return f"gorilla/websocket {m.group(1) if m else '?'}, {ver.strip() or 'go ?'}"


def wsload(exe, url, conns, size, warmup, seconds):
    """WebSocket echo: conns connections, each sending one binary message of `size` bytes and
    waiting for its echo (closed loop), over `warmup` + `seconds` on the same connections; the
    measured window is the last `seconds`. "rps" is round trips completed per second (each one
    message sent and its echo received, checked byte for byte); "bytes_per_s" the message bytes
    echoed per second (one way); p50/p99 the round-trip latency. Errors: failed handshakes,
    read and write errors, timeouts (10 s) and echoes that differ from what was sent. No
    compression is offered."""
    argv = [
        exe, "-url", url, "-conns", str(conns), "-size", str(size),
        "-warmup", str(warmup), "-seconds", str(seconds), "-timeout", "10s",
    ]  # fmt: skip
    out = _run(argv, timeout=warmup + seconds + 60)
    try:
        raw = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise ToolError(f"wsload gave no result: {(out.stderr or out.stdout).strip()[:300]}") from e
    lat = raw["latency_us"]
    return {
        "rps": raw["round_trips_per_s"],
        "bytes_per_s": raw["bytes_per_s"],
        "requests": raw["round_trips"],
        "errors": raw["error_total"],
        "non2xx": 0,  # a refused upgrade is a handshake error
        "p50_ms": lat["50"] / 1000,
        "p99_ms": lat["99"] / 1000,
        "p999_ms": lat["99.9"] / 1000,
        "client_cpu": out.client_cpu,
        "raw": raw,
    }


def paced_wrk(url, conns, rate, seconds):
    """The smoke run's stand-in for oha: wrk paced to about `rate` req/s (closed loop, so its
    latency is not corrected for coordinated omission; a smoke check, not a result)."""
    pace_ms = max(1, round(conns * 1000 / rate))
    result = wrk(url, conns, seconds, pace_ms=pace_ms)
    result["tool"] = f"wrk paced ({pace_ms} ms/conn)"
    return result


class IdleHolder:
    """bench/idle.py in a subprocess: opens n keep-alive connections, sends one request on
    each, then holds them idle until released."""

    def __init__(self, host, port, n):
        self.proc = subprocess.Popen(
            _pinned([sys.executable, str(IDLE), host, str(port), str(n)]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _line(self, timeout):
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=0.5):
                    line = self.proc.stdout.readline()
                    if not line:
                        break
                    return json.loads(line)
        finally:
            sel.close()
        self.close()
        err = self.proc.stderr.read()[-300:] if self.proc.stderr else ""
        raise ToolError(f"idle holder gave no answer: {err.strip()}")

    def ready(self, timeout=120):
        """{"ok": connections answered, "failed": ..., "seconds": ...} once all are idle."""
        return self._line(timeout)

    def release(self, timeout=60):
        """Check how many connections the server kept open, then close them all."""
        self.proc.stdin.write("check\n")
        self.proc.stdin.flush()
        result = self._line(timeout)
        self.close()
        return result

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
