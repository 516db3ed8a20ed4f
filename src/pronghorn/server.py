"""Runs one server process: binds the sockets, runs lifespan, hands the sockets to the C core
(pronghorn._core.Server) on an asyncio loop, and drains on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any

from . import logs
from .config import Config, ConfigError
from .lifespan import Lifespan, LifespanFailed

logger = logging.getLogger("pronghorn.error")

# A send() waits for the socket once this much response is queued in user space.
WRITE_HIGH_WATER = 65536


def _inherited(fd: int, what: str) -> tuple[socket.socket, bool]:
    """An inherited listening socket (--fd, socket activation), with whether it is Unix."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"{what}: fd {fd} is not a socket ({exc.strerror or exc})") from None
    if sock.type != socket.SOCK_STREAM or sock.family not in (
        socket.AF_INET,
        socket.AF_INET6,
        socket.AF_UNIX,
    ):
        sock.detach()
        raise ConfigError(f"{what}: fd {fd} is not a TCP or Unix stream socket")
    return sock, sock.family == socket.AF_UNIX


def activated_fds(environ=os.environ) -> list[int]:
    """The sockets systemd passed (socket activation: LISTEN_FDS sockets from fd 3 on, meant
    for the process LISTEN_PID names). The variables are removed, so that processes started
    later do not take them for their own."""
    try:
        pid = int(environ.get("LISTEN_PID", ""))
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    return list(range(3, 3 + count))


def bind_sockets(config: Config) -> list[tuple[socket.socket, bool]]:
    """The sockets: systemd's (socket activation), --fd, --uds or --host/--port, with whether
    each is Unix. They are bound (so a taken port fails before the app starts) but listen only
    once lifespan startup is done: no client waits in the backlog of a server that is not
    ready."""
    activated = activated_fds()
    if activated:
        return [_inherited(fd, "LISTEN_FDS") for fd in activated]
    if config.fd is not None:
        return [_inherited(config.fd, "--fd")]
    if config.uds:
        path = config.uds
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            os.chmod(path, config.uds_perms)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"--uds: cannot bind {path}: {exc.strerror or exc}") from exc
        return [(sock, True)]
    try:
        infos = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {config.host!r}: {exc.strerror}") from exc
    # Every address the name resolves to ("localhost": 127.0.0.1 and ::1), each once; with
    # --port 0 the first one's port is used for the rest, so all of them are one server.
    addrs = list(dict.fromkeys((info[0], info[4]) for info in infos))
    bound: list[tuple[socket.socket, bool]] = []
    port = config.port
    for family, addr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" alone is dual-stack; beside an IPv4 address each socket keeps to its own.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(len(addrs) > 1))
        try:
            sock.bind((addr[0], port, *addr[2:]))
        except OSError as exc:
            sock.close()
            if bound and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue  # e.g. ::1 on a host without IPv6: the other addresses serve
            for other, _ in bound:
                other.close()
            raise ConfigError(
                f"cannot bind {config.host}:{port} ({addr[0]}): {exc.strerror or exc}"
            ) from exc
        port = sock.getsockname()[1]
        bound.append((sock, False))
    return bound


def write_pid_file(config: Config) -> None:
    """--pid-file: this process's PID, for whoever signals the server."""
    if config.pid_file:
        try:
            with open(config.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise ConfigError(
                f"--pid-file: cannot write {config.pid_file}: {exc.strerror}"
            ) from None


def remove_pid_file(config: Config) -> None:
    if config.pid_file:
        with contextlib.suppress(OSError):
            if open(config.pid_file).read().strip() == str(os.getpid()):
                os.unlink(config.pid_file)


def _proxy_resolver(config: Config):
    """What the core calls for a request that carries X-Forwarded-For/-Proto: the client and
    scheme to put in the scope, when the peer is a trusted proxy."""

    @functools.lru_cache(maxsize=1024)
    def trusted(host: str) -> bool:
        return config.is_trusted_proxy(host)

    def resolve(client: tuple[str, int], xff: bytes | None, xfp: bytes | None):
        if not trusted(client[0]):
            return None
        scheme = None
        if xfp:
            proto = xfp.decode("latin-1").split(",")[0].strip().lower()
            if proto in ("http", "https"):
                scheme = proto
        new_client = None
        if xff:
            hosts = [h.strip() for h in xff.decode("latin-1").split(",") if h.strip()]
            for host in reversed(hosts):
                if not trusted(host):
                    new_client = (host, 0)
                    break
            else:
                if hosts:
                    new_client = (hosts[0], 0)
        return (new_client, scheme)

    return resolve


def _extra_headers(config: Config) -> bytes:
    """The --header lines but Server, which replaces the default one (see _server_value)."""
    return b"".join(
        f"{name}: {value}\r\n".encode("latin-1")
        for name, value in config.headers
        if name.lower() != "server"
    )


def _server_value(config: Config) -> bytes | None:
    """A --header "Server: x" replaces "pronghorn" (the last one given wins); None = default."""
    given = [value for name, value in config.headers if name.lower() == "server"]
    return given[-1].encode("latin-1") if given else None


def _describe(config: Config, sock: socket.socket, is_unix: bool) -> str:
    if is_unix:
        return f"unix socket {sock.getsockname()}" + (" (TLS)" if config.ssl else "")
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if config.ssl else 'http'}://{host}:{port}"


def tls_context(config: Config):
    """The TLS context (certificates loaded and checked), or None without --ssl-certfile. Made
    before binding: a bad file, a wrong password or a key that does not match is a ConfigError
    (one line, exit 2) before any socket exists."""
    if not config.ssl:
        return None
    from . import _core

    try:
        return _core.TLSContext(
            config.ssl_certfile,
            config.ssl_keyfile,
            password=config.ssl_keyfile_password,
            ca_certs=config.ssl_ca_certs,
            cert_reqs=("none", "optional", "required").index(config.ssl_cert_reqs),
            ciphers=config.ssl_ciphers,
            min_version=13 if config.ssl_min_version == "1.3" else 12,
            h2=config.http != "1",
            http1=config.http != "2",
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _log_debug(peer: str, what: str) -> None:
    logger.debug("%s - %s", peer, what)


class _Shutdown:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.forced = False

    def request(self, sig: int) -> None:
        # SIGINT once draining (a second Ctrl+C) stops waiting for in-flight requests; SIGTERM
        # again does not (a supervisor or systemd repeating the first request), as in uvicorn.
        if self.event.is_set() and sig == signal.SIGINT:
            self.forced = True
        self.event.set()


def _freeze_startup_heap() -> None:
    """What the app built at import and startup (modules, routes, models) lives as long as the
    process: moved out of the collector's generations, a full collection under load no longer
    walks it. Measured with a FastAPI app: full collections took up to 29 ms with its 46k
    startup objects in the heap, 0.5 ms with them frozen (README, Performance)."""
    gc.collect()
    gc.freeze()


def _announce(names: list[str], worker) -> None:
    """The server is serving: say where (a worker's supervisor said so already) and tell the
    supervisor."""
    if worker is None:
        for name in names:
            logger.info("pronghorn running on %s (Press CTRL+C to quit)", name)
    else:
        worker.ready()


def _core_options(config: Config, tls=None, worker=None, page=None) -> dict:
    """What the C core's servers take (limits, timeouts, HTTP/2 settings, TLS, logging hooks,
    a worker's heartbeat page, or a single process's own for --metrics-bind)."""
    access = None
    if config.access_log and logs.access_log_enabled():
        access = logs.AccessLog(config.access_log_format)
    extra = worker.core_options if worker is not None else {}
    if page is not None:
        extra = page.core_options()
    return extra | {
        "tls": tls,
        "log_debug": _log_debug if logger.isEnabledFor(logging.DEBUG) else None,
        "on_reject": logs.Rejections(access),
        "access_log_headers": bool(access and access.wants_headers),
        "trace": logs.trace if logger.isEnabledFor(logs.TRACE) else None,
        "timeout_keep_alive": config.timeout_keep_alive,
        "timeout_request_header": config.timeout_request_header,
        "timeout_request_body": config.timeout_request_body,
        "timeout_write": config.timeout_write,
        "limit_max_connections": config.limit_max_connections,
        "limit_request_line": config.limit_request_line,
        "limit_request_headers": config.limit_request_headers,
        "limit_request_header_size": config.limit_request_header_size,
        "limit_request_body": config.limit_request_body,
        "limit_concurrency": config.limit_concurrency,
        "server_header": config.server_header or _server_value(config) is not None,
        "server_value": _server_value(config),
        "date_header": config.date_header,
        "extra_headers": _extra_headers(config),
        "root_path": config.root_path,
        "write_high_water": WRITE_HIGH_WATER,
        "http": {"auto": 0, "1": 1, "2": 2}[config.http],
        "h2_max_concurrent_streams": config.h2_max_concurrent_streams,
        "h2_initial_window_size": config.h2_initial_window_size,
        "h2_max_header_list_size": config.h2_max_header_list_size,
        "h2_max_frame_size": config.h2_max_frame_size,
        "access_log": access,
        "log_exception": logs.log_exception,
        "proxy": _proxy_resolver(config) if config.proxy_headers else None,
    }


def _ws_options(config: Config) -> dict:
    """WebSockets, for the ASGI server only (WSGI has none: an upgrade is plain HTTP there)."""
    return {
        "ws": 1 if config.ws == "auto" else 0,
        "ws_max_size": config.ws_max_size,
        "ws_max_queue": config.ws_max_queue,
        "ws_ping_interval": config.ws_ping_interval or 0.0,
        "ws_ping_timeout": config.ws_ping_timeout or 0.0,
        "ws_per_message_deflate": config.ws_per_message_deflate,
    }


def _ignore_signal(signum, frame) -> None:
    pass


def _serve_wsgi(
    config: Config, app: Any, socks: list[tuple[socket.socket, bool]], tls=None, worker=None
) -> int:
    """WSGI: the reactor on a thread of its own, the app on --threads threads; this (the main)
    thread only waits for signals and runs the shutdown. No asyncio loop is involved."""
    from . import _core

    # Blocked before any thread starts, so every thread inherits the mask and SIGINT/SIGTERM
    # stay pending for sigwait() here instead of landing on a thread that would ignore them.
    signals = {signal.SIGINT, signal.SIGTERM}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    # A handler of our own (never run: the signals are blocked) so that one ignored when we
    # started (a shell's `&` ignores SIGINT) is still delivered to sigwait(), as the ASGI
    # server's loop.add_signal_handler() also makes it.
    old_handlers = {sig: signal.signal(sig, _ignore_signal) for sig in signals}
    try:
        metrics = _metrics_for(config, worker)
    except ConfigError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        raise
    options = _core_options(config, tls, worker, metrics.page if metrics else None)
    options["errors"] = sys.stderr
    # under a supervisor, other processes run the app too (always so during a reload)
    options["multiprocess"] = worker is not None
    server = _core.WSGIServer(app, options)
    threads = [
        threading.Thread(target=server.work, name=f"pronghorn-wsgi-{i}", daemon=True)
        for i in range(config.threads)
    ]
    try:
        names = []
        for sock, is_unix in socks:
            names.append(_describe(config, sock, is_unix))
            server.listen(sock.detach(), is_unix, config.backlog)
        for t in threads:
            t.start()
        server.start()
        if metrics:
            metrics.start()
        _freeze_startup_heap()
        _announce(names, worker)
        signal.sigwait(signals)
        logger.info("Shutting down")
        if metrics:
            metrics.draining = True
        server.shutdown()
        _waiting(server, worker)
        deadline = None
        if config.timeout_graceful_shutdown is not None:
            deadline = time.monotonic() + config.timeout_graceful_shutdown
        while server.connections:
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning(
                    "Graceful shutdown timed out with %d connection(s) open", server.connections
                )
                break
            again = signal.sigtimedwait(signals, 0.02)
            if again is not None and again.si_signo == signal.SIGINT:
                break  # a second Ctrl+C: stop waiting for in-flight requests
        # Time is up: requests no thread has taken get a 503, responses cut short a reset;
        # what is then queued still drains for a moment.
        server.expire()
        end = time.monotonic() + 1.0
        while (server.connections or server.requests) and time.monotonic() < end:
            time.sleep(0.02)
        server.close()
        end = time.monotonic() + 1.0
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        busy = sum(t.is_alive() for t in threads)
        if busy:
            logger.warning("%d app thread(s) still running at exit", busy)
        logger.info("Finished server process [%d]", os.getpid())
        return 0
    finally:
        server.close()
        if metrics:
            metrics.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


class _Metrics:
    """--metrics-bind in a process without a supervisor: the page the core counts into, and
    the listener, on a thread of its own (it reads the page; nothing on the event loop)."""

    def __init__(self, config: Config) -> None:
        from . import metrics

        self.page = metrics.OwnPage()
        self.draining = False
        try:
            self.endpoint = metrics.Endpoint(
                config.metrics_address,
                metrics.answer_for(self.page.workers, self.ready),
            )
        except OSError as exc:
            raise ConfigError(
                f"--metrics-bind: cannot bind {config.metrics_bind}: {exc.strerror or exc}"
            ) from exc

    def ready(self) -> bool:
        return not self.draining and bool(self.page.workers()[0][2]["accepting"])

    def start(self) -> None:
        self.endpoint.start_thread()
        logger.info("Metrics on http://%s:%d/metrics", *self.endpoint.sock.getsockname()[:2])

    def close(self) -> None:
        self.endpoint.close()


def _metrics_for(config: Config, worker) -> _Metrics | None:
    return _Metrics(config) if config.metrics_bind and worker is None else None


async def _serve(
    config: Config,
    app: Any,
    socks: list[tuple[socket.socket, bool]],
    tls=None,
    worker=None,
    owner: Server | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    shutdown = owner._shutdown if owner is not None else _Shutdown()
    handled = []
    if owner is None or (
        owner.install_signal_handlers and threading.current_thread() is threading.main_thread()
    ):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.request, sig)
            handled.append(sig)
    try:
        return await _run_server(config, app, socks, tls, worker, owner, loop, shutdown)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _run_server(config, app, socks, tls, worker, owner, loop, shutdown) -> int:
    from . import _core

    metrics = _metrics_for(config, worker)  # bound before the app starts, as the sockets
    state: dict = {}
    lifespan = Lifespan(app, config.lifespan, state)
    try:
        await lifespan.startup()
    except LifespanFailed as exc:
        logger.error("Application startup failed: %s", exc)
        for sock, _ in socks:
            sock.close()
        if metrics:
            metrics.close()
        return 3

    options = _core_options(config, tls, worker, metrics.page if metrics else None)
    options.update(_ws_options(config))
    server = _core.Server(app, loop, state, options)
    names = []
    for sock, is_unix in socks:
        names.append(_describe(config, sock, is_unix))
        server.listen(sock.detach(), is_unix, config.backlog)
    server.start()
    if metrics:
        metrics.start()
    _freeze_startup_heap()
    _announce(names, worker)
    if owner is not None:
        owner.started = True

    try:
        await shutdown.event.wait()
        logger.info("Shutting down")
        if metrics:
            metrics.draining = True
        server.shutdown()
        deadline = None
        if config.timeout_graceful_shutdown is not None:
            deadline = loop.time() + config.timeout_graceful_shutdown
        _waiting(server, worker)
        next_note = loop.time() + 1.0
        while server.connections and not shutdown.forced:
            if deadline is not None and loop.time() >= deadline:
                logger.warning(
                    "Graceful shutdown timed out with %d connection(s) open", server.connections
                )
                break
            if loop.time() >= next_note:
                next_note += 1.0
                logger.debug(
                    "Still waiting: %d request(s), %d connection(s)",
                    server.requests,
                    server.connections,
                )
            await asyncio.sleep(0.02)
        # Time is up: a request not yet answered gets a 503 (nothing of a response had left, so
        # a reset would hide what happened); its task is cancelled; a response cut short is
        # reset.
        if server.requests:
            logger.debug("Cancelling %d request(s) still running", server.requests)
            server.cancel_all()
        server.expire()
        # Let cancelled request tasks run their cleanup, and the last answers drain, before
        # lifespan shutdown (close() then resets whatever is left).
        for _ in range(50):
            if not server.requests and not server.connections:
                break
            await asyncio.sleep(0.02)
        await lifespan.shutdown()
    finally:
        server.close()
        if metrics:
            metrics.close()
    logger.info("Finished server process [%d]", os.getpid())
    return 0


def _waiting(server, worker) -> None:
    """The first word of a drain with work in flight (a worker's supervisor says it once)."""
    if worker is None and (server.requests or server.connections):
        logger.info(
            "Waiting for %d request(s) and %d connection(s) to finish; press Ctrl+C again to force",
            server.requests,
            server.connections,
        )


class Server:
    """pronghorn inside an asyncio program of your own (as uvicorn's ``Server``)::

        server = pronghorn.Server(pronghorn.Config("app:app", port=8000))
        await server.serve()          # beside your other tasks, on the running loop

    ``should_exit = True`` (from any thread) starts the graceful shutdown; SIGINT/SIGTERM do
    too when serve() runs on the main thread (``install_signal_handlers`` = False to keep
    yours). ``started`` is True once it accepts. serve() returns the exit code (0; 3 when
    lifespan startup failed). ASGI apps only: a WSGI app needs a thread pool (pronghorn.run()).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = False
        self.install_signal_handlers = True
        self._shutdown: _Shutdown | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._should_exit = False

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = bool(value)
        if value and self._loop is not None and self._shutdown is not None:
            self._loop.call_soon_threadsafe(self._shutdown.request, signal.SIGTERM)

    async def serve(self, sockets: list[socket.socket] | None = None) -> int:
        config = self.config
        if config.supervised:
            raise ConfigError("Server.serve() runs one process: use pronghorn.run() for workers")
        logs.setup(config)
        tls = tls_context(config)
        app = config.load_app()
        if config.app_interface(app) == "wsgi":
            raise ConfigError(
                "Server.serve() serves ASGI apps; run a WSGI app with pronghorn.run()"
            )
        self._loop = asyncio.get_running_loop()
        self._shutdown = _Shutdown()
        if self._should_exit:
            self._shutdown.request(signal.SIGTERM)
        owner = sockets is None
        socks = (
            bind_sockets(config)
            if owner
            else [(sock, sock.family == socket.AF_UNIX) for sock in sockets]
        )
        logger.info("Started server process [%d]", os.getpid())
        try:
            return await _serve(config, app, socks, tls, None, self)
        finally:
            self.started = False
            if owner:
                remove_uds(config)


def _new_loop(choice: str) -> asyncio.AbstractEventLoop:
    """`auto` is uvloop when it can be imported (a dependency of pronghorn where it builds):
    measured, it serves ASGI hello about 1.4x faster than asyncio's own loop (README,
    Performance). Without it, asyncio's loop."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(config: Config, tls=None, socks=None, worker=None) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code. tls: what
    tls_context(config) made, if the caller checked the certificates already. A supervisor's
    worker passes the sockets it inherited and its link to the supervisor (supervisor.py)."""
    logs.setup(config)
    if tls is None:
        tls = tls_context(config)
    app = config.load_app()
    interface = config.app_interface(app)
    owner = socks is None  # this process bound the sockets: it cleans up after them
    if owner:
        socks = bind_sockets(config)
        write_pid_file(config)
    logger.info("Started server process [%d]", os.getpid())
    try:
        if interface == "wsgi":
            logger.info(
                "Serving a WSGI app on %d thread(s) (--interface %s)",
                config.threads,
                config.interface,
            )
            return _serve_wsgi(config, app, socks, tls, worker)
        return _serve_asgi(config, app, socks, tls, worker)
    finally:
        if owner:
            remove_pid_file(config)
            remove_uds(config)
        sys.stderr.flush()


def remove_uds(config: Config) -> None:
    """The --uds socket file goes with the server that made it."""
    if config.uds and config.fd is None:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(config.uds).st_mode):
                os.unlink(config.uds)


def _serve_asgi(config: Config, app: Any, socks, tls, worker) -> int:
    logger.info("Serving an ASGI app (--interface %s)", config.interface)
    loop = _new_loop(config.loop)
    logger.debug("Event loop: %s.%s", type(loop).__module__, type(loop).__qualname__)
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(_serve(config, app, socks, tls, worker))
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
