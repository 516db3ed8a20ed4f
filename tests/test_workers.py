"""The process model: --workers under a supervisor, signals (drain, reload, more or fewer
workers), recycling (--max-requests, --max-rss, --worker-timeout), --reload, systemd socket
activation, --uds-perms and --pid-file. Under load, every request is counted: the tests assert
which ones may fail (none, in most) rather than that most succeed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import APPS_DIR, IS_UVICORN, RawConn, request_bytes, run_cli

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="pronghorn's process model")

APP = "workers_app:app"
NOBYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}  # edited files must be imported anew


# ---- helpers ------------------------------------------------------------------------------


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """(worker pid, app version) from one request on a new connection."""
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
    assert r.status_code == 200, r.text
    pid, version = r.text.split()
    return int(pid), version


def children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.update(int(p) for p in text)
    return out


def wait_for(predicate, timeout: float, what: str, srv=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            log = f"\nserver log:\n{srv.log()[-3000:]}" if srv is not None else ""
            raise AssertionError(f"timed out waiting for {what}{log}")
        time.sleep(0.05)


def wait_workers(srv, n: int, timeout: float = 10.0, *, without: set[int] = frozenset()):
    """The supervisor's worker pids once there are n of them, none in `without`."""

    def check():
        now = children(srv.pid)
        return now if len(now) == n and not now & without else None

    return wait_for(check, timeout, f"{n} workers")


class Load:
    """Clients that count every request until stopped: `keepalive` threads on pooled httpx
    connections and `fresh` threads on a new raw connection per request. Each result is
    (start, end, ok, pid, version, error)."""

    def __init__(self, port: int, path: str = "/sleep?s=0.002", keepalive: int = 3, fresh: int = 2):
        self.port = port
        self.path = path
        self.results: list[tuple] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._keepalive) for _ in range(keepalive)]
        self.threads += [threading.Thread(target=self._fresh) for _ in range(fresh)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(15)

    def _record(self, start, ok, pid=None, version=None, error=None) -> None:
        with self.lock:
            self.results.append((start, time.monotonic(), ok, pid, version, error))

    def _keepalive(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10) as client:
            while not self.stopping.is_set():
                start = time.monotonic()
                try:
                    r = client.get(self.path)
                    pid, version = r.text.split()
                    self._record(start, r.status_code == 200, int(pid), version)
                except Exception as exc:  # noqa: BLE001 - every failure is counted
                    self._record(start, False, error=repr(exc))
                    time.sleep(0.01)

    def _fresh(self) -> None:
        # A fresh request counts from when connect() returned: only then is the connection
        # known to be in the listen queue (or known to be refused). A connect begun just
        # before the signal may reach the kernel after the listeners closed, and its refusal
        # is then the right answer, not a lost request.
        while not self.stopping.is_set():
            try:
                conn = RawConn(self.port, timeout=10)
            except Exception as exc:  # noqa: BLE001
                self._record(time.monotonic(), False, error=repr(exc))
                time.sleep(0.01)
                continue
            start = time.monotonic()
            try:
                with conn:
                    conn.send(request_bytes("GET", self.path, headers=[("Connection", "close")]))
                    resp = conn.read_response()
                pid, version = resp.text.split()
                self._record(start, resp.status == 200, int(pid), version)
            except Exception as exc:  # noqa: BLE001
                self._record(start, False, error=repr(exc))
                time.sleep(0.01)

    def failures(self, since: float = 0.0, until: float = float("inf")) -> list[tuple]:
        with self.lock:
            return [r for r in self.results if not r[2] and since <= r[0] < until]

    def count(self) -> int:
        with self.lock:
            return len(self.results)

    def pids(self, since: float = 0.0) -> set[int]:
        with self.lock:
            return {r[3] for r in self.results if r[2] and r[0] >= since}

    def versions(self, since: float = 0.0) -> set[str]:
        with self.lock:
            return {r[4] for r in self.results if r[2] and r[0] >= since}


def copy_app(tmp_path: Path) -> Path:
    shutil.copy(APPS_DIR / "workers_app.py", tmp_path / "workers_app.py")
    return tmp_path / "workers_app.py"


def reload_flags(tmp_path: Path) -> list[str]:
    """--reload of the app copied into tmp_path (copy_app), imported from there."""
    return ["--reload", "--reload-dir", str(tmp_path), "--app-dir", str(tmp_path)]


def set_version(path: Path, version: str) -> None:
    text = re.sub(r"^VERSION = .*$", f'VERSION = "{version}"', path.read_text(), flags=re.M)
    path.write_text(text)


# ---- starting -----------------------------------------------------------------------------


def test_one_worker_and_no_flags_is_one_process(server):
    srv = server(APP)
    assert get(srv.port)[0] == srv.pid
    assert children(srv.pid) == set()
    assert "parent process" not in srv.log()


def test_workers_serve_the_shared_socket_and_split_connections(server):
    srv = server(APP, "--workers", "2", "--no-access-log")
    workers = wait_workers(srv, 2)
    srv.wait_for_log(r"running on http://127\.0\.0\.1:\d+ with 2 worker\(s\)")
    # 64 clients connect at once, as a load generator does: each worker takes about half
    barrier = threading.Barrier(64)
    owners: list[int] = []
    conns = []

    def connect():
        barrier.wait()
        conn = RawConn(srv.port)
        conns.append(conn)
        conn.send(request_bytes())
        owners.append(int(conn.read_response().text.split()[0]))

    threads = [threading.Thread(target=connect) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for c in conns:
        c.close()
    assert set(owners) == workers
    counts = sorted(owners.count(p) for p in workers)
    assert counts[0] >= 24, f"connections per worker: {counts}"
    assert srv.stop() == 0


def test_workers_from_env_and_auto(server):
    srv = server(APP, env={"PRONGHORN_WORKERS": "2"})
    wait_workers(srv, 2)
    srv2 = server(APP, "--workers", "auto")
    srv2.wait_for_log(rf"with {len(os.sched_getaffinity(0))} worker\(s\)")


def test_a_worker_whose_startup_fails_stops_the_start(server):
    srv = server(APP, "--workers", "2", env={"WORKERS_APP_FAIL_STARTUP": "1"}, wait=False)
    assert srv.wait_exit(15) == 1, srv.log()
    log = srv.log()
    assert "Application startup failed: no database" in log
    assert re.search(r"Worker \[\d+\] failed to start \(exit code 3\): stopping", log)


def test_an_app_that_cannot_be_imported_stops_the_start(server):
    srv = server("no_such_module:app", "--workers", "2", wait=False)
    assert srv.wait_exit(15) == 1, srv.log()
    log = srv.log()
    assert 'could not import module "no_such_module"' in log
    assert len(re.findall(r"Started server process", log)) <= 2  # no fork loop


def test_workers_need_an_import_string():
    out = run_cli("--workers", "2", "--reload-dir", ".", APP)
    assert out.returncode == 2
    assert "--reload-dir needs --reload" in out.stderr
    out = run_cli("--max-requests-jitter", "5", APP)
    assert out.returncode == 2 and "--max-requests-jitter needs --max-requests" in out.stderr
    from pronghorn import Config, ConfigError

    with pytest.raises(ConfigError, match="import string"):
        Config(app=lambda scope, receive, send: None, workers=2)
    assert Config(app=APP, workers="0").workers == len(os.sched_getaffinity(0))


def test_wsgi_workers(server):
    srv = server("wsgi_app:app", "--workers", "2", "--max-requests", "40")
    wait_workers(srv, 2)
    env = httpx.get(f"http://127.0.0.1:{srv.port}/environ", timeout=5).json()["environ"]
    assert env["wsgi.multiprocess"] is True
    for _ in range(200):  # 201 requests, 2 workers retiring at 40: at least 2 replacements
        assert httpx.get(f"http://127.0.0.1:{srv.port}/environ", timeout=5).status_code == 200
    assert len(re.findall(r"Replacing worker", srv.log())) >= 2
    assert srv.stop() == 0


# ---- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_drain_under_load_answers_every_request_sent_before_the_signal(server, sig):
    srv = server(APP, "--workers", "2", "--no-access-log")
    wait_workers(srv, 2)
    with Load(srv.port) as load:
        wait_for(lambda: load.count() > 200, 10, "load")
        t_signal = time.monotonic()
        srv.send_signal(sig)
        rc = srv.wait_exit(10)
        load.stop()
    assert rc == 0, srv.log()
    sent_before = [r for r in load.results if r[0] < t_signal]
    assert len(sent_before) > 200
    assert load.failures(until=t_signal) == [], load.failures(until=t_signal)[:5]
    assert time.monotonic() - t_signal < 10
    assert "Shutting down: draining 2 worker(s)" in srv.log()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()


def test_second_sigint_forces_the_stop(server):
    srv = server(APP, "--workers", "2", "--timeout-graceful-shutdown", "60")
    wait_workers(srv, 2)
    conn = RawConn(srv.port, timeout=20)
    try:
        conn.send(request_bytes("GET", "/sleep?s=30"))
        time.sleep(0.3)
        srv.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "did not wait for the request in flight"
        t0 = time.monotonic()
        srv.send_signal(signal.SIGINT)
        rc = srv.wait_exit(10)
        assert rc is not None and time.monotonic() - t0 < 8, srv.log()
        assert "Forcing the workers to stop" in srv.log()
    finally:
        conn.close()


def test_sighup_reloads_new_code_without_a_failed_request(server, tmp_path):
    app_file = copy_app(tmp_path)
    srv = server(
        APP, "--workers", "2", "--app-dir", str(tmp_path), "--no-access-log", env=NOBYTECODE
    )
    old = wait_workers(srv, 2)
    with Load(srv.port) as load:
        wait_for(lambda: load.count() > 100, 10, "load")
        set_version(app_file, "2")
        t_hup = time.monotonic()
        srv.send_signal(signal.SIGHUP)
        wait_for(lambda: load.versions(since=time.monotonic() - 0.3) == {"2"}, 15, "new code")
        new = wait_workers(srv, 2, without=old)
        t_new = time.monotonic()
        time.sleep(0.5)
        load.stop()
    assert not new & old, "the old workers are still there"
    assert load.failures() == [], load.failures()[:5]
    assert load.pids(since=t_new) == new
    assert {r[4] for r in load.results if r[0] < t_hup} == {"1"}
    assert re.search(r"SIGHUP: reloading 2 worker\(s\)", srv.log())
    assert srv.stop() == 0


def test_a_reload_that_fails_keeps_the_old_workers(server, tmp_path):
    app_file = copy_app(tmp_path)
    srv = server(APP, "--workers", "2", "--app-dir", str(tmp_path), env=NOBYTECODE)
    old = wait_workers(srv, 2)
    app_file.write_text(app_file.read_text() + "\n)\n")
    srv.send_signal(signal.SIGHUP)
    srv.wait_for_log(r"failed to start \(exit code 1\): worker \[\d+\] keeps serving", 10)
    assert "SyntaxError" in srv.log()
    # one new worker per old one: the second may still be on its way out when the first is
    # logged
    wait_for(lambda: children(srv.pid) == old, 10, "only the old workers")
    assert get(srv.port)[1] == "1"


def test_a_killed_worker_is_replaced_and_the_other_keeps_serving(server):
    srv = server(APP, "--workers", "2", "--no-access-log")
    first, second = sorted(wait_workers(srv, 2))
    with Load(srv.port) as load:
        wait_for(lambda: load.count() > 100, 10, "load")
        t_kill = time.monotonic()
        os.kill(first, signal.SIGKILL)
        srv.wait_for_log(rf"Worker \[{first}\] died \(signal SIGKILL\)", 5)
        now = wait_workers(srv, 2)
        wait_for(lambda: len(load.pids(since=time.monotonic() - 0.5)) == 2, 10, "two workers")
        load.stop()
    assert first not in now and second in now
    # only requests the killed worker held at that moment may have failed
    late = load.failures(since=t_kill + 0.5)
    assert late == [], late[:5]
    assert second in load.pids(since=t_kill)


def test_workers_that_keep_dying_young_are_restarted_with_a_growing_delay(server):
    srv = server(
        APP, "--workers", "1", "--max-requests", "1000000", env={"WORKERS_APP_CRASH": "0.2"}
    )
    time.sleep(5)
    log = srv.log()
    deaths = len(re.findall(r"Worker \[\d+\] died", log))
    assert 2 <= deaths <= 6, log
    assert "Next worker in" in log
    assert srv.proc.poll() is None


def test_sigttin_and_sigttou_change_the_number_of_workers(server):
    srv = server(APP, "--workers", "1", "--max-requests", "1000000")
    wait_workers(srv, 1)
    srv.send_signal(signal.SIGTTIN)
    wait_workers(srv, 2)
    srv.send_signal(signal.SIGTTIN)
    three = wait_workers(srv, 3)
    srv.send_signal(signal.SIGTTOU)
    two = wait_workers(srv, 2)
    assert two < three
    srv.wait_for_log(r"SIGTTOU: 2 worker\(s\)")
    assert srv.stop() == 0


# ---- recycling ----------------------------------------------------------------------------


def test_max_requests_with_jitter_recycles_workers_without_a_failed_request(server):
    srv = server(
        APP,
        "--workers",
        "2",
        "--max-requests",
        "100",
        "--max-requests-jitter",
        "20",
        "--no-access-log",
    )
    wait_workers(srv, 2)
    with Load(srv.port, path="/", keepalive=3, fresh=2) as load:
        wait_for(lambda: load.count() >= 2000, 60, "2,000 requests")
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    replaced = re.findall(r"Replacing worker \[\d+\]: (\d+) requests served", srv.log())
    assert len(replaced) >= 8, srv.log()[-3000:]
    assert all(100 <= int(n) <= 160 for n in replaced), replaced
    assert len(load.pids()) >= 8
    assert srv.stop() == 0


def test_max_rss_replaces_a_growing_worker_without_a_failed_request(server):
    srv = server(APP, "--workers", "1", "--max-rss", "120", "--no-access-log")
    (first,) = wait_workers(srv, 1)
    with Load(srv.port, path="/", keepalive=2, fresh=1) as load:
        for _ in range(12):
            httpx.get(f"http://127.0.0.1:{srv.port}/leak?mib=10", timeout=5)
        srv.wait_for_log(rf"Replacing worker \[{first}\]: RSS \d+ MiB above --max-rss 120", 10)
        wait_for(lambda: first not in children(srv.pid), 10, "the old worker to go")
        time.sleep(0.3)
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    assert get(srv.port)[0] != first


def test_a_stuck_worker_is_killed_with_its_traceback_and_replaced(server):
    srv = server(APP, "--workers", "1", "--worker-timeout", "1")
    (first,) = wait_workers(srv, 1)
    blocked = RawConn(srv.port, timeout=10)
    try:
        blocked.send(request_bytes("GET", "/block?s=30"))
        srv.wait_for_log(
            rf"Worker \[{first}\] is stuck: its event loop has not run for [\d.]+ s "
            r'\(--worker-timeout 1\); 1 request\(s\) in flight, the last one "GET /block\?s=30"',
            6,
        )
        srv.wait_for_log(r"Worker \[\d+\] stopped \(signal SIGKILL\)", 5)
        log = srv.log()
        assert "Current thread" in log and "workers_app.py" in log  # faulthandler's dump
        (second,) = wait_workers(srv, 1)
        assert second != first
        assert get(srv.port)[0] == second
    finally:
        blocked.close()


# ---- --reload -----------------------------------------------------------------------------


def test_reload_serves_edits_survives_a_syntax_error_and_ignores_excluded_files(server, tmp_path):
    app_file = copy_app(tmp_path)
    srv = server(APP, *reload_flags(tmp_path), "--reload-exclude", "skip_*", env=NOBYTECODE)
    srv.wait_for_log("Will watch for changes in these directories")
    assert get(srv.port)[1] == "1"

    set_version(app_file, "2")
    wait_for(lambda: get(srv.port)[1] == "2", 10, "the edit", srv)

    time.sleep(0.5)
    reloads = srv.log().count("Changes detected")
    (tmp_path / "skip_me.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not python\n")
    time.sleep(1)
    assert srv.log().count("Changes detected") == reloads  # excluded, and not *.py

    app_file.write_text(app_file.read_text().replace('VERSION = "2"', 'VERSION = "3" +'))
    srv.wait_for_log("SyntaxError", 10)
    srv.wait_for_log(r"failed to start \(exit code 1\)", 10)
    assert get(srv.port)[1] == "2"  # the last good code serves on

    app_file.write_text(app_file.read_text().replace('VERSION = "3" +', 'VERSION = "4"'))
    wait_for(lambda: get(srv.port)[1] == "4", 10, "the fix")
    assert srv.stop() == 0


def test_reload_with_an_app_that_never_imported_waits_for_the_fix(server, tmp_path):
    app_file = copy_app(tmp_path)
    good = app_file.read_text()
    app_file.write_text(good + "\n)\n")
    srv = server(APP, *reload_flags(tmp_path), env=NOBYTECODE, wait=False)
    srv.wait_for_log("waiting for a file change", 10)
    assert srv.proc.poll() is None
    app_file.write_text(good)
    srv.wait_ready()
    assert get(srv.port)[1] == "1"


# ---- sockets and files --------------------------------------------------------------------


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


# Passes the sockets named on its command line as systemd does: at fds 3, 4, ... with
# LISTEN_FDS and LISTEN_PID (its own pid, which exec keeps) set, then execs the server.
AS_SYSTEMD = """
import fcntl, os, sys
n = int(sys.argv[1])
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in sys.argv[2:2 + n]]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(n))
argv = sys.argv[2 + n:]
os.execv(argv[0], argv)
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_socket_activation(server, workers):
    import sys

    from conftest import server_executable

    socks = [_listening_socket(), _listening_socket()]
    ports = [s.getsockname()[1] for s in socks]
    fds = [s.fileno() for s in socks]
    argv = [sys.executable, "-c", AS_SYSTEMD, "2", *map(str, fds), *server_executable()]
    argv += [APP, "--app-dir", "tests/apps", "--workers", workers]
    srv = server(argv=argv, port=ports[0], pass_fds=fds)
    for s in socks:
        s.close()
    for port in ports:
        assert get(port)[1] == "1"
    if workers == "2":
        assert len(children(srv.pid)) == 2
    assert srv.stop() == 0


def test_uds_perms_and_pid_file(server, tmp_path):
    path = str(tmp_path / "s.sock")
    pid_file = tmp_path / "p.pid"
    for flags in ([], ["--workers", "2"]):
        srv = server(
            APP,
            "--uds",
            path,
            "--uds-perms",
            "600",
            "--pid-file",
            str(pid_file),
            *flags,
            bind=False,
            uds=path,
        )
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert pid_file.read_text().strip() == str(srv.pid)
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as c:
            assert c.get("http://x/").status_code == 200
        assert srv.stop() == 0
        assert not os.path.exists(path) and not pid_file.exists()


def test_fd_that_is_not_a_socket_is_one_line():
    out = run_cli(APP, "--app-dir", "tests/apps", "--fd", "0")  # stdin: /dev/null
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "pronghorn: error: --fd: fd 0 is not a socket" in out.stderr
