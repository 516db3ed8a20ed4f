"""Shared fixtures for pronghorn's integration tests.

Every test drives a real server subprocess (``pronghorn MODULE:ATTR --host 127.0.0.1 --port N``)
with real clients: httpx, curl and raw sockets.  The apps live in ``tests/apps`` and are imported
as top-level modules through ``--app-dir tests/apps``.

Set ``PRONGHORN_TEST_SERVER=uvicorn`` to run the same tests against uvicorn (same flags where
uvicorn has them; tests that need a flag uvicorn lacks are skipped).  It is how the tests
themselves are debugged; uvicorn is laxer than pronghorn, so some strict tests fail under it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APPS_DIR = REPO / "tests" / "apps"
BIN_DIR = Path(sys.executable).parent
SERVER_KIND = os.environ.get("PRONGHORN_TEST_SERVER", "pronghorn")
IS_UVICORN = SERVER_KIND == "uvicorn"
#: the value of the ``Server`` response header and the prefix of the server's loggers
SERVER_NAME = "uvicorn" if IS_UVICORN else "pronghorn"
#: prefix of the environment variables that set flags (PRONGHORN_PORT, ...)
ENV_PREFIX = SERVER_NAME.upper() + "_"
#: what AddressSanitizer / UBSan print (`make test-asan`): any of these fails the test
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
DEFAULT_TIMEOUT = 60  # seconds per test, generous; a hung test fails instead of hanging CI
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Flags of pronghorn's CLI that uvicorn does not have: a test using one is skipped under uvicorn.
UVICORN_MISSING_FLAGS = {
    "--timeout-request-header",
    "--limit-request-line",
    "--limit-request-headers",
    "--limit-request-header-size",
    "--limit-request-body",
    "--http",  # uvicorn's --http picks an HTTP/1.1 implementation
}


# --------------------------------------------------------------------------------------------
# per-test timeout: pytest-timeout when installed, else a SIGALRM fallback with the same marker
# --------------------------------------------------------------------------------------------


def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.hasplugin("timeout"):
        # pyproject.toml sets pytest-timeout's ini keys; declare them so pytest does not warn.
        parser.addini("timeout", "per-test timeout in seconds (fallback)", default=None)
        parser.addini("timeout_func_only", "unused by the fallback", type="bool", default=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): fail the test after this many seconds")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if item.config.pluginmanager.hasplugin("timeout"):
        return (yield)
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker and marker.args else DEFAULT_TIMEOUT

    def on_alarm(signum, frame):
        pytest.fail(f"test timed out after {seconds:g} s", pytrace=True)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------
# server subprocesses
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_executable() -> list[str]:
    name = "uvicorn" if IS_UVICORN else "pronghorn"
    for candidate in (BIN_DIR / name, REPO / ".venv" / "bin" / name):
        if candidate.exists():
            return [str(candidate)]
    pytest.fail(f"{name} executable not found in {BIN_DIR} (build and install pronghorn first)")


def child_env(env: dict | None = None) -> dict:
    """The environment of a server subprocess: ours without PRONGHORN_* settings, plus ``env``."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("PRONGHORN_") or k.startswith("UVICORN_"))
        or k.startswith("PRONGHORN_TEST_")
    }
    out["PYTHONUNBUFFERED"] = "1"
    out["PRONGHORN_TEST_LOGGER_PREFIX"] = SERVER_NAME
    # `make test-asan`: the sanitizer runtime goes into the servers only, not into curl & co.
    preload = os.environ.get("PRONGHORN_TEST_PRELOAD")
    if preload:
        out["LD_PRELOAD"] = preload
    if env:
        out.update(env)
    return out


def _die_with_parent():
    # If pytest itself is killed, do not leave servers behind on a shared machine.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def check_flags_supported(flags) -> None:
    if not IS_UVICORN:
        return
    for f in flags:
        if isinstance(f, str) and f.split("=")[0] in UVICORN_MISSING_FLAGS:
            pytest.skip(f"uvicorn has no {f}")


class ServerProcess:
    """One running server subprocess; stdout and stderr go to one log file."""

    def __init__(self, argv, env, log_path: Path, port=None, uds=None, pass_fds=()):
        self.argv = argv
        self.port = port
        self.uds = uds
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{port}" if port else "http://localhost"
        self.log_path = log_path
        self._log_file = open(log_path, "ab")
        nofile = int(env.get("PRONGHORN_TEST_NOFILE", 0))

        def preexec():
            _die_with_parent()
            if nofile:  # run the server with few descriptors (fd-exhaustion tests)
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            preexec_fn=preexec,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in server log:\n{self.log()}")
            time.sleep(0.02)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode} before accepting connections:\n"
                    f"$ {' '.join(self.argv)}\n{self.log()}"
                )
            try:
                if self.uds:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(0.5)
                        s.connect(self.uds)
                else:
                    socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGINT, timeout: float = STOP_TIMEOUT) -> int:
        """Signal the server, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        self.send_signal(sig)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
            rc = self.proc.returncode
        self._log_file.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


class ServerFactory:
    """``factory(app="basic:app", *flags, env=None)`` starts a server; all are stopped at the end.

    By default it binds ``--host 127.0.0.1 --port <free port>``; pass ``bind=False`` when the
    flags carry their own socket (``--uds``, ``--fd``, ``--port`` via env).  ``wait=False``
    returns at once (for servers expected to fail).  ``port`` forces a port.
    """

    def __init__(self, tmp_dir: Path):
        self.tmp_dir = tmp_dir
        self.servers: list[ServerProcess] = []

    def argv(self, app, flags, *, bind=True, port=None, app_dir=True):
        argv = server_executable()
        if app is not None:
            argv.append(app)
        if app_dir:
            argv += ["--app-dir", "tests/apps"]
        if bind:
            argv += ["--host", "127.0.0.1", "--port", str(port)]
        argv += [str(f) for f in flags]
        return argv

    def __call__(
        self,
        app="basic:app",
        *flags,
        env=None,
        wait=True,
        bind=True,
        port=None,
        uds=None,
        pass_fds=(),
        argv=None,
    ) -> ServerProcess:
        check_flags_supported(flags)
        if bind and port is None:
            port = free_port()
        if argv is None:
            argv = self.argv(app, flags, bind=bind, port=port)
        log_path = self.tmp_dir / f"server-{len(self.servers)}-{os.getpid()}.log"
        srv = ServerProcess(argv, child_env(env), log_path, port=port, uds=uds, pass_fds=pass_fds)
        self.servers.append(srv)
        if wait:
            srv.wait_ready()
        return srv

    def cleanup(self):
        reports = []
        for srv in self.servers:
            srv.stop(signal.SIGINT, STOP_TIMEOUT)
            log = srv.log()
            if any(mark in log for mark in SANITIZER_MARKS):
                reports.append(f"$ {' '.join(srv.argv)}\n{log}")
        if reports:
            pytest.fail("sanitizer report from a server:\n" + "\n".join(reports), pytrace=False)


@pytest.fixture
def server(tmp_path_factory):
    """Function-scoped server factory: every process it starts is stopped after the test."""
    factory = ServerFactory(tmp_path_factory.mktemp("srv"))
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """Module-scoped server factory, for servers shared by the tests of one module."""
    factory = ServerFactory(tmp_path_factory.mktemp("msrv"))
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def basic(module_server) -> ServerProcess:
    """One ``basic:app`` server with default flags, shared by a test module."""
    return module_server("basic:app")


def run_cli(*args, env=None, timeout=15.0, python_module=False) -> subprocess.CompletedProcess:
    """Run the server's CLI to completion (for --version, -h and start-up errors)."""
    if python_module:
        argv = [sys.executable, "-m", SERVER_KIND, *args]
    else:
        argv = server_executable() + list(args)
    return subprocess.run(
        argv,
        cwd=REPO,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        text=True,
        preexec_fn=_die_with_parent,
    )


# --------------------------------------------------------------------------------------------
# raw-socket HTTP/1.x client
# --------------------------------------------------------------------------------------------


class ConnectionClosed(Exception):
    """The peer closed (FIN or RST) before a full response arrived."""


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # (lower-cased name, value) in wire order
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    interim: list[Response] = field(default_factory=list)  # 1xx responses before this one
    raw_head: bytes = b""
    chunked: bool = False
    incomplete: bool = False  # the connection closed before the body was complete

    def header(self, name: str, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_list(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        import json

        return json.loads(self.body)


class RawConn:
    """A raw TCP connection with a tiny HTTP/1.x response parser; every read has a timeout."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, rcvbuf=None, sndbuf=None, uds=None):
        if uds:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(uds if uds else (host, port))
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    # context manager
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        """Send everything; a peer that already closed is not an error here (reads will tell)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _fill(self, timeout=None) -> bool:
        """Read once more into the buffer. False on EOF/RST; raises TimeoutError on timeout."""
        if self.eof:
            return False
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        except TimeoutError as e:
            raise TimeoutError("no data from server within timeout") from e
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if not self._fill():
                raise ConnectionClosed(f"closed while reading a line; got {bytes(self.buf)!r}")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionClosed(f"closed after {len(self.buf)} of {n} body bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionClosed(
                    f"closed before a full response head; got {bytes(self.buf)!r}"
                )
        i = self.buf.index(b"\r\n\r\n")
        raw = bytes(self.buf[: i + 4])
        del self.buf[: i + 4]
        lines = raw[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r}"
            headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
        return Response(
            version=m.group(1).decode(),
            status=int(m.group(2)),
            reason=(m.group(3) or b"").decode("latin-1"),
            headers=headers,
            raw_head=raw,
        )

    def read_response(self, head_request=False, allow_incomplete=False) -> Response:
        """Read one final response (1xx responses are collected in ``.interim``)."""
        interim = []
        while True:
            resp = self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp)
                continue
            break
        resp.interim = interim
        try:
            self._read_body(resp, head_request)
        except ConnectionClosed:
            if not allow_incomplete:
                raise
            partial = getattr(resp, "_partial", None)
            resp.body = bytes(partial if partial is not None else self.buf)
            self.buf.clear()
            resp.incomplete = True
        return resp

    def _read_body(self, resp: Response, head_request: bool) -> None:
        if head_request or resp.status in (204, 304) or 100 <= resp.status < 200:
            return
        te = resp.header("transfer-encoding")
        if te is not None and te.lower().split(",")[-1].strip() == "chunked":
            resp.chunked = True
            body = bytearray()
            resp._partial = body
            while True:
                size_line = self._read_line()
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    break
                body += self._read_exact(size)
                assert self._read_exact(2) == b"\r\n", "chunk not followed by CRLF"
            while True:
                line = self._read_line()
                if not line:
                    break
                name, _, value = line.partition(b":")
                resp.trailers.append((name.decode().lower(), value.strip().decode()))
            resp.body = bytes(body)
            return
        cl = resp.header("content-length")
        if cl is not None:
            n = int(cl)
            while len(self.buf) < n:
                if not self._fill():
                    raise ConnectionClosed(f"closed after {len(self.buf)} of {n} body bytes")
            resp.body = self._read_exact(n)
            return
        # close-delimited
        while self._fill():
            pass
        resp.body = bytes(self.buf)
        self.buf.clear()

    def read_until_closed(self, timeout=5.0) -> bytes:
        """Everything until the server closes; AssertionError if it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection not closed within {timeout} s")
            try:
                self._fill(timeout=left)
            except TimeoutError:
                raise AssertionError(
                    f"connection not closed within {timeout} s; got {bytes(self.buf)!r}"
                ) from None
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def is_closed(self, timeout=3.0) -> bool:
        """True if the server closes the connection within ``timeout`` without sending more."""
        try:
            return self.read_until_closed(timeout) == b""
        except AssertionError:
            return False

    def recv_available(self, wait: float) -> bytes:
        """Whatever arrives within ``wait`` seconds (b"" if nothing)."""
        try:
            self._fill(timeout=wait)
        except TimeoutError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


def parse_responses(data: bytes, head_request=False) -> list[Response]:
    """Parse every complete response in ``data`` (a capture read until close)."""

    class _Buffered(RawConn):
        def __init__(self, data):
            self.buf = bytearray(data)
            self.eof = True
            self.timeout = 0

    conn = _Buffered(data)
    out = []
    while conn.buf:
        out.append(conn.read_response(head_request=head_request, allow_incomplete=True))
    return out


def request_bytes(
    method="GET", target="/", *, host="test", headers=(), body=b"", version="HTTP/1.1"
) -> bytes:
    lines = [f"{method} {target} {version}".encode()]
    if host is not None:
        lines.append(b"Host: " + host.encode())
    for name, value in headers:
        n = name.encode() if isinstance(name, str) else name
        v = value.encode() if isinstance(value, str) else value
        lines.append(n + b": " + v)
    if body and not any(
        str(n).lower() in ("content-length", "transfer-encoding") for n, _ in headers
    ):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_request(port, data: bytes, head_request=False, timeout=5.0) -> Response:
    """Open a connection, send ``data``, return the first response."""
    with RawConn(port, timeout=timeout) as conn:
        conn.send(data)
        return conn.read_response(head_request=head_request)


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` value from /proc/<pid>/status (e.g. VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def wait_state(srv, path: str, token: str, predicate, timeout: float = 5.0):
    """Polls ``GET <path>?token=T`` (a test app's side channel, JSON) until ``predicate`` holds
    for what it returns; AssertionError with the last state if it never does."""
    import httpx

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = httpx.get(f"{srv.url}{path}", params={"token": token}, timeout=5).json()
        if state is not None and predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"app state never matched; last: {state}")
