"""The supervisor: binds the sockets once, forks the worker processes (each a whole server, its
own reactor and event loop, on the shared sockets) and keeps them as asked:

- a worker that dies is logged with its exit status or signal and replaced, with a growing
  delay while workers keep dying young (no fork loop);
- SIGTERM/SIGINT drain every worker within --timeout-graceful-shutdown; a second SIGINT forces;
- SIGHUP reloads: new workers import the app again and serve before the old ones drain, so
  the shared sockets never lack a worker that accepts;
- SIGTTIN/SIGTTOU add or remove a worker;
- --max-requests (+ jitter) and --max-rss replace a worker the same way as a reload;
- --worker-timeout kills a worker whose reactor stopped beating (its event loop is stuck),
  after it printed every thread's traceback, and logs the request it was last given;
- --reload restarts the worker when a watched file changes (watchfiles).

The supervisor never imports the app: each worker imports it after the fork, so a reload
serves the code as it is on disk now. It runs no event loop; fork() happens from one select()
loop over a self-pipe that signals write to and one pipe per worker, which carries the
worker's "ready". What a worker's reactor reports (heartbeat, requests served, the last
request) it writes into a page of shared memory (ph_beat_t in src/core/server.h).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import fnmatch
import logging
import mmap
import os
import random
import select
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import metrics as _metrics
from . import server as _server
from .config import MAX_WORKERS, Config, ConfigError

logger = logging.getLogger("pronghorn.error")

#: ph_beat_t (src/core/server.h): beat_ns, requests, streams, conns, accepting, last
BEAT = struct.Struct("=QQQQQ88s")
#: bytes of shared page per worker (8-byte aligned; ph_beat_t with its counters fits)
SLOT_SIZE = _metrics.SLOT_SIZE
#: worker slots: twice the most workers, for a reload's overlap of old and new
SLOTS = 2 * MAX_WORKERS + 8
#: how often a worker's reactor beats (seconds); shorter when --worker-timeout asks for less
BEAT_INTERVAL = 0.2
#: how often the supervisor looks at its workers (seconds)
TICK = 0.1
#: a worker that dies younger than this counts towards the restart delay
YOUNG = 5.0
#: after the graceful time, how long a worker has to exit before it is killed
KILL_GRACE = 5.0
#: between a stuck worker's traceback (SIGUSR1) and its SIGKILL
TRACEBACK_GRACE = 0.5
READY = b"R"  # a worker's message: it serves
RETIRE = b"M"  # from its reactor: it opened its --max-requests-th request

#: --reload's defaults (uvicorn's): what triggers a reload, and what never does
RELOAD_INCLUDES = ("*.py",)
RELOAD_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")

_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


def _describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"signal {name}"


def _backoff(failures: int) -> float:
    """Seconds before the next start after `failures` workers in a row died young."""
    return 0.0 if failures <= 0 else min(0.5 * 2 ** (failures - 1), 30.0)


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * mmap.PAGESIZE / (1024 * 1024)


def _die_with_parent(parent: int) -> None:
    """A worker must not outlive its supervisor (killed with SIGKILL, say): it drains and exits
    when the supervisor is gone."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(0)


class WorkerLink:
    """What a worker's server (server.serve) needs from its supervisor: the heartbeat page the
    C core writes into, and a way to say it is serving."""

    def __init__(
        self, ctl_fd: int, page: mmap.mmap, slot: int, interval: float, max_requests: int
    ) -> None:
        self.ctl_fd = ctl_fd
        self.core_options = {
            "max_requests": max_requests,
            "retire_fd": ctl_fd,
            "heartbeat": page,
            "heartbeat_slot": slot,
            "heartbeat_slot_size": SLOT_SIZE,
            "heartbeat_slots": SLOTS,
            "heartbeat_interval": interval,
        }

    def ready(self) -> None:
        os.write(self.ctl_fd, READY)


@dataclass(eq=False)
class Worker:
    pid: int
    slot: int
    ctl: int  # read end of its pipe; -1 once it closed
    started: float
    max_requests: int  # 0: no limit
    replaces: Worker | None = None  # the worker this one takes over from once it is ready
    replaced_by: Worker | None = None
    ready_at: float | None = None
    stopping_since: float | None = None
    kill_at: float | None = None
    retry_at: float = 0.0  # a failed replacement is tried again from then on
    stuck: bool = False  # killed for --worker-timeout (its SIGKILL is no surprise)

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    @property
    def counted(self) -> bool:
        """It counts towards --workers: neither on its way out nor still a stand-in."""
        return self.stopping_since is None and self.replaces is None


class Supervisor:
    def __init__(self, config: Config, tls=None) -> None:
        self.config = config
        self.tls = tls
        self.target = config.workers
        self.workers: list[Worker] = []
        self.page = mmap.mmap(-1, SLOT_SIZE * SLOTS)
        self.free_slots = list(range(SLOTS - 1, -1, -1))
        self.phase = "starting"  # -> running -> stopping
        self.exit_code = 0
        self.failures = 0  # workers in a row that died young
        self.next_spawn = 0.0
        self.broken = False  # --reload: the app does not start; wait for the next change
        self.next_rss_check = 0.0
        self.watcher = None
        self.socks: list = []
        self.names: list[str] = []
        self.wake_r = self.wake_w = -1
        self.pid = os.getpid()
        self.endpoint: _metrics.Endpoint | None = None  # --metrics-bind
        self.retired = _metrics.zero()  # the counters of workers that exited
        interval = BEAT_INTERVAL
        if config.worker_timeout:
            interval = min(interval, config.worker_timeout / 4)
        self.beat_interval = interval

    # ---- the supervisor's life ---------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the process exit code (1 when the first start failed)."""
        config = self.config
        self.socks = _server.bind_sockets(config)
        self.names = [_server._describe(config, s, is_unix) for s, is_unix in self.socks]
        if config.metrics_bind:
            try:
                self.endpoint = _metrics.Endpoint(
                    config.metrics_address,
                    _metrics.answer_for(self._live_slots, self._ready, lambda: self.retired),
                )
            except OSError as exc:
                for sock, _ in self.socks:
                    sock.close()
                raise ConfigError(
                    f"--metrics-bind: cannot bind {config.metrics_bind}: {exc.strerror or exc}"
                ) from exc
            logger.info("Metrics on http://%s:%d/metrics", *self.endpoint.sock.getsockname()[:2])
        _server.write_pid_file(config)
        old_handlers = {}
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        try:
            for sig in _SIGNALS:
                old_handlers[sig] = signal.signal(sig, _server._ignore_signal)
            logger.info("Started parent process [%d]", self.pid)
            if config.reload:
                self._start_watcher()
            for _ in range(self.target):
                self.spawn()
            return self._loop()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            os.close(self.wake_r)
            os.close(self.wake_w)
            if self.watcher is not None:
                self.watcher.close()
            for sock, _ in self.socks:
                sock.close()
            if self.endpoint is not None:
                self.endpoint.close()
            _server.remove_pid_file(config)
            _server.remove_uds(config)
            logger.info("Finished parent process [%d]", self.pid)

    def _loop(self) -> int:
        while True:
            self._wait(TICK)
            self._reap()
            now = time.monotonic()
            self._enforce_deadlines(now)
            if self.phase == "stopping":
                if not self.workers:
                    return self.exit_code
                continue
            self._check(now)
            self._reconcile(now)

    def _wait(self, timeout: float) -> None:
        """Sleeps until a signal, a worker's message or a file change, at most timeout."""
        if self.watcher is not None:
            # No stop event: watchfiles drops the changes it holds when one fires, so an edit
            # made as a signal or a worker's message came would be lost. The wait is at most
            # one tick; signals and messages are taken right after it.
            changes = self.watcher.watch(50, 50, int(timeout * 1000), None)
            if isinstance(changes, set):
                self._on_changes(changes)
            timeout = 0.0
        fds = [self.wake_r] + [w.ctl for w in self.workers if w.ctl >= 0]
        if self.endpoint is not None:
            fds += self.endpoint.fds()
        readable, _, _ = select.select(fds, [], [], timeout)
        if self.endpoint is not None:
            self.endpoint.handle(readable)
        for fd in readable:
            if fd == self.wake_r:
                with contextlib.suppress(BlockingIOError):
                    for signum in os.read(self.wake_r, 64):
                        self._on_signal(signum)
                continue
            worker = next((w for w in self.workers if w.ctl == fd), None)
            if worker is None:
                continue
            data = os.read(fd, 64)
            if not data:
                os.close(fd)
                worker.ctl = -1
                continue
            if READY in data and not worker.ready:
                self._on_ready(worker)
            if RETIRE in data and worker.replaced_by is None and worker.stopping_since is None:
                requests = self._beat(worker)[1]
                self._replace(worker, f"{requests} requests served (--max-requests)")

    # ---- workers -----------------------------------------------------------------------------

    def spawn(self, replaces: Worker | None = None) -> Worker:
        """Forks a worker: it imports the app, runs lifespan startup, then serves the shared
        sockets and says so on its pipe."""
        config = self.config
        slot = self.free_slots.pop()
        offset = slot * SLOT_SIZE
        self.page[offset : offset + SLOT_SIZE] = bytes(SLOT_SIZE)
        limit = 0
        if config.max_requests:
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read_end)
                code = self._be_worker(write_end, offset, limit)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write_end)
        worker = Worker(pid, slot, read_end, time.monotonic(), limit, replaces=replaces)
        if replaces is not None:
            replaces.replaced_by = worker
        self.workers.append(worker)
        logger.debug("Started worker [%d]", pid)
        return worker

    def _be_worker(self, ctl_fd: int, offset: int, limit: int) -> int:
        """In the forked child: leave the supervisor's signals and pipes behind, then serve."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)  # the supervisor's to act on
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # until the server sets its own
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.endpoint is not None:  # the supervisor's to answer
            self.endpoint.close()
        for other in self.workers:
            if other.ctl >= 0:
                os.close(other.ctl)
        _die_with_parent(self.pid)
        # what --worker-timeout prints before the kill: every thread's stack, from a C signal
        # handler, so it works while the interpreter is stuck
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        link = WorkerLink(ctl_fd, self.page, offset // SLOT_SIZE, self.beat_interval, limit)
        try:
            return _server.serve(self.config, self.tls, socks=self.socks, worker=link)
        except ConfigError as exc:  # the app could not be loaded
            if self.config.log_level in ("debug", "trace") and exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__)
            print(f"pronghorn: error: {exc}", file=sys.stderr)
            return 1

    def _live_slots(self) -> list[tuple[str, int, dict]]:
        """(label, pid, slot) of every worker serving or draining, for /metrics and /healthz."""
        return [
            (str(w.slot), w.pid, _metrics.read(self.page, w.slot))
            for w in sorted(self.workers, key=lambda w: w.slot)
            if w.ready
        ]

    def _ready(self) -> bool:
        """/readyz: serving, and no drain begun (a SIGTERM makes it 503 at once)."""
        return self.phase == "running" and any(s["accepting"] for _, _, s in self._live_slots())

    def _beat(self, worker: Worker) -> tuple[int, int, int, int, str]:
        beat_ns, requests, streams, conns, _, last = BEAT.unpack_from(
            self.page, worker.slot * SLOT_SIZE
        )
        return beat_ns, requests, streams, conns, last.split(b"\0", 1)[0].decode("latin-1")

    def _on_ready(self, worker: Worker) -> None:
        worker.ready_at = time.monotonic()
        logger.debug("Worker [%d] is serving", worker.pid)
        old = worker.replaces
        if old is not None:
            worker.replaces = None
            old.replaced_by = None
            if old.stopping_since is None:
                self._stop(old, signal.SIGTERM)
        if self.phase == "starting":
            counted = [w for w in self.workers if w.counted]
            if len(counted) >= self.target and all(w.ready for w in counted):
                self.phase = "running"
                for name in self.names:
                    logger.info(
                        "pronghorn running on %s with %d worker(s) (Press CTRL+C to quit)",
                        name,
                        self.target,
                    )

    def _stop(self, worker: Worker, sig: int, *, kill_after: float | None = None) -> None:
        """Asks a worker to drain (SIGTERM) and, unless the graceful time is unbounded, kills it
        once that time and a margin are past."""
        now = time.monotonic()
        if worker.stopping_since is None:
            worker.stopping_since = now
        if kill_after is None and self.config.timeout_graceful_shutdown is not None:
            kill_after = self.config.timeout_graceful_shutdown + KILL_GRACE
        if kill_after is not None:
            at = now + kill_after
            worker.kill_at = at if worker.kill_at is None else min(worker.kill_at, at)
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def _replace(self, worker: Worker, why: str) -> None:
        logger.info("Replacing worker [%d]: %s", worker.pid, why)
        self.spawn(replaces=worker)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is not None:
                self._on_exit(worker, status)

    def _on_exit(self, worker: Worker, status: int) -> None:
        served = self._beat(worker)[1]
        self.workers.remove(worker)
        # its counts stay in the totals: no counter of /metrics ever goes back
        _metrics.add_counters(self.retired, _metrics.read(self.page, worker.slot))
        offset = worker.slot * SLOT_SIZE
        self.page[offset : offset + SLOT_SIZE] = bytes(SLOT_SIZE)  # no longer a peer
        self.free_slots.append(worker.slot)
        if worker.ctl >= 0:
            os.close(worker.ctl)
            worker.ctl = -1
        how = _describe_exit(status)
        now = time.monotonic()
        if worker.stopping_since is not None:
            clean = os.waitstatus_to_exitcode(status) == 0
            (logger.info if clean else logger.warning)(
                "Worker [%d] stopped (%s) after %d request(s)", worker.pid, how, served
            )
            return
        if worker.replaced_by is not None:
            # its stand-in takes its place from now on
            worker.replaced_by.replaces = None
        if not worker.ready:
            old = worker.replaces
            if old is not None:
                old.replaced_by = None
                old.retry_at = now + 30.0
                logger.error(
                    "Worker [%d] failed to start (%s): worker [%d] keeps serving",
                    worker.pid,
                    how,
                    old.pid,
                )
                return
            if self.phase == "starting" and not self.config.reload:
                logger.error("Worker [%d] failed to start (%s): stopping", worker.pid, how)
                self.exit_code = 1
                self._begin_stop()
                return
            if self.config.reload:
                logger.error(
                    "Worker [%d] failed to start (%s): waiting for a file change", worker.pid, how
                )
                self.broken = True
                return
        else:
            logger.error("Worker [%d] died (%s) after %d request(s)", worker.pid, how, served)
        if now - worker.started < YOUNG or not worker.ready:
            self.failures += 1
        else:
            self.failures = 0
        delay = _backoff(self.failures)
        self.next_spawn = now + delay
        if delay:
            logger.warning("Next worker in %.1f s (%d died young in a row)", delay, self.failures)

    def _check(self, now: float) -> None:
        """Recycling and stuck workers."""
        config = self.config
        rss_due = config.max_rss and now >= self.next_rss_check
        if rss_due:
            self.next_rss_check = now + 1.0
        now_ns = time.monotonic_ns()
        for w in list(self.workers):
            if not w.ready or w.stopping_since is not None:
                continue
            beat_ns, requests, streams, _, last = self._beat(w)
            if config.worker_timeout and beat_ns:
                silent = (now_ns - beat_ns) / 1e9
                if silent > config.worker_timeout:
                    logger.error(
                        "Worker [%d] is stuck: its event loop has not run for %.1f s "
                        "(--worker-timeout %g); %d request(s) in flight, the last one %s; "
                        "killing it",
                        w.pid,
                        silent,
                        config.worker_timeout,
                        streams,
                        f'"{last}"' if last else "none",
                    )
                    w.stuck = True
                    self._stop(w, signal.SIGUSR1, kill_after=TRACEBACK_GRACE)
                    continue
            if w.replaced_by is not None or now < w.retry_at:
                continue
            if w.max_requests and requests >= w.max_requests:
                # the reactor said so at once (RETIRE); this is the retry after a failed start
                self._replace(w, f"{requests} requests served (--max-requests)")
            elif rss_due:
                rss = _rss_mib(w.pid)
                if rss is not None and rss > config.max_rss:
                    self._replace(w, f"RSS {rss:.0f} MiB above --max-rss {config.max_rss}")

    def _reconcile(self, now: float) -> None:
        """As many counted workers as --workers (and SIGTTIN/SIGTTOU) ask for."""
        counted = [w for w in self.workers if w.counted]
        if len(counted) > self.target:
            for w in sorted(counted, key=lambda w: w.started)[self.target :]:
                logger.info("Stopping worker [%d] (%d worker(s) wanted)", w.pid, self.target)
                self._stop(w, signal.SIGTERM)
        elif len(counted) < self.target and now >= self.next_spawn and not self.broken:
            for _ in range(self.target - len(counted)):
                self.spawn()

    def _enforce_deadlines(self, now: float) -> None:
        for w in self.workers:
            if w.kill_at is not None and now >= w.kill_at:
                if not w.stuck:
                    logger.warning("Worker [%d] did not stop in time: killing it", w.pid)
                w.kill_at = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)

    def _kill_all(self) -> None:
        for w in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
        for w in self.workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(w.pid, 0)
            if w.ctl >= 0:
                os.close(w.ctl)
        self.workers.clear()

    # ---- signals -----------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            if self.phase != "stopping":
                self._begin_stop()
            elif signum == signal.SIGINT:
                logger.info("Forcing the workers to stop")
                for w in self.workers:
                    self._stop(w, signal.SIGINT, kill_after=KILL_GRACE)
        elif self.phase == "stopping":
            return
        elif signum == signal.SIGHUP:
            self._reload("SIGHUP")
        elif signum == signal.SIGTTIN:
            if self.target < MAX_WORKERS:
                self.target += 1
            logger.info("SIGTTIN: %d worker(s)", self.target)
        elif signum == signal.SIGTTOU:
            self.target = max(1, self.target - 1)
            logger.info("SIGTTOU: %d worker(s)", self.target)

    def _begin_stop(self) -> None:
        self.phase = "stopping"
        logger.info("Shutting down: draining %d worker(s)", len(self.workers))
        for w in self.workers:
            self._stop(w, signal.SIGTERM)
        # Each worker takes what waits in the backlog before it closes its copy of the
        # sockets; with ours closed too, the last of them closing refuses new connections.
        for sock, _ in self.socks:
            sock.close()

    def _reload(self, why: str) -> None:
        """New workers for all that serve; each old one drains once its stand-in serves."""
        self.broken = False
        self.failures = 0
        self.next_spawn = 0.0
        serving = [w for w in self.workers if w.counted and w.replaced_by is None]
        logger.info("%s: reloading %d worker(s)", why, len(serving))
        for w in serving:
            w.retry_at = 0.0
            self.spawn(replaces=w)

    # ---- --reload ----------------------------------------------------------------------------

    def _start_watcher(self) -> None:
        try:
            from watchfiles._rust_notify import RustNotify
        except ImportError:
            raise ConfigError("--reload needs watchfiles (pip install watchfiles)") from None
        config = self.config
        dirs = [str(Path(d).resolve()) for d in (config.reload_dirs or ["."])]
        self.watch_dirs = dirs
        self.includes = tuple(config.reload_includes) or RELOAD_INCLUDES
        self.excludes = tuple(config.reload_excludes) or RELOAD_EXCLUDES
        # Its thread lives in this process only: a forked worker never touches the watcher and
        # ends with os._exit(), so the copy it inherits is never used or freed.
        self.watcher = RustNotify(dirs, False, False, 300, True, False)
        logger.info("Will watch for changes in these directories: %s", dirs)

    def _matters(self, path: str) -> bool:
        """Whether a changed path triggers a reload: its name matches an include glob, and
        neither it nor a directory on its way matches an exclude glob."""
        p = Path(path)
        rel = p
        for d in self.watch_dirs:
            with contextlib.suppress(ValueError):
                rel = p.relative_to(d)
                break
        parts = rel.parts
        if any(fnmatch.fnmatch(part, pat) for part in parts for pat in self.excludes):
            return False
        return any(
            fnmatch.fnmatch(p.name, pat) or fnmatch.fnmatch(str(rel), pat) for pat in self.includes
        )

    def _on_changes(self, changes: set) -> None:
        paths = sorted({path for _, path in changes if self._matters(path)})
        if not paths or self.phase == "stopping":
            return
        shown = ", ".join(os.path.relpath(p) for p in paths[:3])
        if len(paths) > 3:
            shown += f" and {len(paths) - 3} more"
        self._reload(f"Changes detected in {shown}")
