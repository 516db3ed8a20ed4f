"""One validated configuration, shared by the CLI, env vars and ``pronghorn.run()``.

Values may arrive typed (``port=9000`` from ``run()``) or as strings (from the command line or
``PRONGHORN_*`` env vars); ``Config`` coerces and checks both the same way, so every entry
point gives the same one-line error for the same mistake.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class ConfigError(Exception):
    """A bad option or an app that cannot be loaded; the message is one line for the user."""


LIFESPAN_MODES = ("auto", "on", "off")
LOOP_CHOICES = ("auto", "asyncio", "uvloop")
#: auto: HTTP/1.1 and HTTP/2 (h2c: prior knowledge or Upgrade) on one port
HTTP_CHOICES = ("auto", "1", "2")
#: auto: WSGI for a plain callable, ASGI for a coroutine function or an ASGI-shaped callable
INTERFACE_CHOICES = ("auto", "asgi", "wsgi")
#: app threads in WSGI mode (README, WSGI: enough to overlap blocking I/O, few enough that
#: Python threads do not spend their time handing the GIL around)
DEFAULT_THREADS = 8
#: client certificates: none asked for; optional (asked for, verified when sent); required
SSL_CERT_REQS = ("none", "optional", "required")
#: uvicorn's numbers for the same (ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)
_SSL_CERT_REQS_NUMBERS = {"0": "none", "1": "optional", "2": "required"}
SSL_MIN_VERSIONS = ("1.2", "1.3")
#: WebSockets: auto serves them (ASGI apps); none serves an upgrade request as plain HTTP.
#: uvicorn's library names are taken for auto: pronghorn's own implementation serves them.
WS_CHOICES = ("auto", "none", "websockets", "wsproto", "websockets-sansio")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")

#: --workers above this is a typo, not a machine (each worker is a whole server process)
MAX_WORKERS = 128

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1

# RFC 9110 token: what a header name may be.
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

# Framing and hop-by-hop headers are the server's to set per response; a fixed default value
# would desync or break connections.
_FORBIDDEN_DEFAULT_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_UDS_PATH_MAX = 107


_FLAG_NAMES = {
    "app": "APP",
    "headers": "--header",
    "reload_dirs": "--reload-dir",
    "reload_includes": "--reload-include",
    "reload_excludes": "--reload-exclude",
}


def cpu_count() -> int:
    """The cores this process may run on (what --workers 0/auto starts one worker per)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def flag_name(name: str) -> str:
    """The command-line spelling of a Config field, as used in error messages."""
    return _FLAG_NAMES.get(name) or "--" + name.replace("_", "-")


def _fail(name: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{flag_name(name)}: {what}, got {value!r}")


def _as_int(name: str, value: Any, lo: int, hi: int) -> int:
    if hi >= _INT32_MAX:
        what = f"must be an integer >= {lo}"
    else:
        what = f"must be an integer {lo}..{hi}"
    if isinstance(value, bool):
        raise _fail(name, what, value)
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        try:
            n = int(value.strip(), 10)
        except ValueError:
            raise _fail(name, what, value) from None
    else:
        raise _fail(name, what, value)
    if not lo <= n <= hi:
        raise _fail(name, what, value)
    return n


def _as_seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    what = "must be a number of seconds " + (">= 0" if allow_zero else "> 0")
    if isinstance(value, bool):
        raise _fail(name, what, value)
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            raise _fail(name, what, value) from None
    else:
        raise _fail(name, what, value)
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        raise _fail(name, what, value)
    return x


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        s = value.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _fail(name, "must be true or false (1/0, yes/no, on/off)", value)


def _as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise _fail(name, "must be one of " + "|".join(choices), value)


def _has_control_chars(s: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)


def _parse_header(item: Any) -> tuple[str, str]:
    name = "headers"
    if isinstance(item, str):
        if ":" not in item:
            raise _fail(name, 'must be "NAME:VALUE"', item)
        hname, value = item.split(":", 1)
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        hname, value = item
        if not isinstance(hname, str) or not isinstance(value, str):
            raise _fail(name, "must be a (name, value) pair of strings", item)
    else:
        raise _fail(name, 'must be "NAME:VALUE" or a (name, value) pair', item)
    hname = hname.strip()
    value = value.strip(" \t")
    if not _TOKEN_RE.match(hname):
        raise _fail(name, f"header name {hname!r} is not a valid HTTP token", item)
    if hname.lower() in _FORBIDDEN_DEFAULT_HEADERS:
        raise _fail(name, f"{hname!r} is set by the server per response, not a default", item)
    if any(c in value for c in "\r\n\0"):
        raise _fail(name, f"value of {hname!r} must not contain CR, LF or NUL", item)
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F or ord(c) > 0xFF for c in value):
        raise _fail(name, f"value of {hname!r} has a control or non-Latin-1 character", item)
    return hname, value


def _parse_forwarded_ip(entry: str) -> str:
    s = entry.strip()
    if s == "*":
        return s
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        if "/" in s:
            return str(ipaddress.ip_network(s, strict=False))
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise _fail(
            "forwarded_allow_ips", 'entries must be IP addresses, CIDR networks or "*"', entry
        ) from None


def _module_is_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when the app module itself (or a parent package) is missing, not an import in it."""
    missing = exc.name
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def _where(exc: BaseException) -> str:
    """' (file.py, line N)' for the innermost frame of user code in exc's traceback."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<") and f.filename != __file__
    ]
    if not frames:
        return ""
    frame = frames[-1]
    filename = frame.filename
    try:
        rel = os.path.relpath(filename)
        if not rel.startswith(".."):
            filename = rel
    except ValueError:
        pass
    return f" ({filename}, line {frame.lineno})"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc}"  # str() already names file and line
    return f"{type(exc).__name__}: {exc}{_where(exc)}"


def load_env_file(path: str) -> None:
    """--env-file: the variables of a python-dotenv file into os.environ (those already set
    win, as with uvicorn), before any other option is read — PRONGHORN_* ones included."""
    try:
        from dotenv import load_dotenv
    except ImportError:
        raise ConfigError("--env-file needs python-dotenv: pip install python-dotenv") from None
    if not os.path.isfile(path):
        raise ConfigError(f"--env-file: no such file: {path}")
    try:
        load_dotenv(path, override=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--env-file {path}: {exc}") from exc


def looks_like_asgi(app: Any) -> bool:
    """The --interface auto rule: WSGI for a callable that is not a coroutine function and
    takes exactly two required positional parameters (environ, start_response); ASGI for
    everything else (a coroutine function, three parameters, or no signature to read)."""
    import inspect

    call = app if inspect.isroutine(app) else type(app).__call__
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call):
        return True
    try:
        params = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):
        return True
    required = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(required) != 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


@dataclass
class Config:
    """Every server option, validated and normalised in ``__post_init__``.

    Binding: ``fd`` (an inherited listening socket) wins, else ``uds``, else ``host:port``;
    ``fd`` and ``uds`` are mutually exclusive.
    """

    app: str | Callable[..., Any]
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    fd: int | None = None
    backlog: int = 2048
    app_dir: str = "."
    factory: bool = False
    root_path: str = ""
    lifespan: str = "auto"
    loop: str = "auto"
    interface: str = "auto"
    threads: int = DEFAULT_THREADS
    http: str = "auto"
    h2_max_concurrent_streams: int = 100
    h2_initial_window_size: int = 262144
    h2_max_header_list_size: int = 0
    h2_max_frame_size: int = 16384
    ssl_certfile: list[str] = field(default_factory=list)
    ssl_keyfile: list[str] = field(default_factory=list)
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "none"
    ssl_ciphers: str | None = None
    ssl_min_version: str = "1.2"
    ws: str = "auto"
    ws_max_size: int = 16 * 1024 * 1024
    ws_max_queue: int = 32
    ws_ping_interval: float | None = 20.0
    ws_ping_timeout: float | None = 20.0
    ws_per_message_deflate: bool = True
    timeout_keep_alive: float = 5.0
    timeout_request_header: float = 10.0
    timeout_request_body: float = 30.0
    timeout_write: float = 30.0
    timeout_graceful_shutdown: float | None = 30.0
    limit_concurrency: int = 0
    limit_max_connections: int = 0
    limit_request_line: int = 8190
    limit_request_headers: int = 100
    limit_request_header_size: int = 65536
    limit_request_body: int = 1073741824
    headers: list[tuple[str, str]] = field(default_factory=list)
    server_header: bool = True
    date_header: bool = True
    proxy_headers: bool = True
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    log_level: str | None = None  # None: info, or what log_config sets
    access_log: bool = True
    access_log_format: str | None = None
    log_format: str = "text"
    log_config: str | dict | None = None
    use_colors: bool | None = None  # None: on when stderr is a terminal
    env_file: str | None = None
    metrics_bind: str | None = None
    workers: int = 1
    reload: bool = False
    reload_dirs: list[str] = field(default_factory=list)
    reload_includes: list[str] = field(default_factory=list)
    reload_excludes: list[str] = field(default_factory=list)
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_rss: int = 0
    worker_timeout: float | None = None
    uds_perms: int = 0o666
    pid_file: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field, coercing strings; raises ConfigError on the first bad one."""
        self._validate_app()
        self._validate_binding()

        self.factory = _as_bool("factory", self.factory)
        self.root_path = self._validate_root_path(self.root_path)
        self.lifespan = _as_choice("lifespan", self.lifespan, LIFESPAN_MODES)
        self.loop = _as_choice("loop", self.loop, LOOP_CHOICES)
        self.http = _as_choice("http", self.http, HTTP_CHOICES)
        self.interface = _as_choice("interface", self.interface, INTERFACE_CHOICES)
        self.threads = _as_int("threads", self.threads, 1, 1024)
        self.h2_max_concurrent_streams = _as_int(
            "h2_max_concurrent_streams", self.h2_max_concurrent_streams, 1, _INT32_MAX
        )
        self.h2_initial_window_size = _as_int(
            "h2_initial_window_size", self.h2_initial_window_size, 1, _INT32_MAX
        )
        self.h2_max_header_list_size = _as_int(
            "h2_max_header_list_size", self.h2_max_header_list_size, 0, _INT32_MAX
        )
        self.h2_max_frame_size = _as_int(
            "h2_max_frame_size", self.h2_max_frame_size, 16384, 16777215
        )
        self._validate_tls()
        self._validate_ws()
        if self.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise _fail("loop", "uvloop is not installed (pip install uvloop)", "uvloop")

        self.timeout_keep_alive = _as_seconds(
            "timeout_keep_alive", self.timeout_keep_alive, allow_zero=False
        )
        self.timeout_request_header = _as_seconds(
            "timeout_request_header", self.timeout_request_header, allow_zero=False
        )
        g = self.timeout_graceful_shutdown
        if g is None or (isinstance(g, str) and g.strip().lower() == "none"):
            self.timeout_graceful_shutdown = None
        else:
            self.timeout_graceful_shutdown = _as_seconds(
                "timeout_graceful_shutdown", g, allow_zero=True
            )

        self.timeout_request_body = _as_seconds(
            "timeout_request_body", self.timeout_request_body, allow_zero=False
        )
        self.timeout_write = _as_seconds("timeout_write", self.timeout_write, allow_zero=False)
        self.limit_concurrency = _as_int("limit_concurrency", self.limit_concurrency, 0, _INT32_MAX)
        self.limit_max_connections = _as_int(
            "limit_max_connections", self.limit_max_connections, 0, _INT32_MAX
        )
        self.limit_request_line = _as_int(
            "limit_request_line", self.limit_request_line, 1, _INT32_MAX
        )
        self.limit_request_headers = _as_int(
            "limit_request_headers", self.limit_request_headers, 1, _INT32_MAX
        )
        self.limit_request_header_size = _as_int(
            "limit_request_header_size", self.limit_request_header_size, 1, _INT32_MAX
        )
        self.limit_request_body = _as_int(
            "limit_request_body", self.limit_request_body, 0, _INT64_MAX
        )

        self._validate_headers()
        self.server_header = _as_bool("server_header", self.server_header)
        self.date_header = _as_bool("date_header", self.date_header)
        self.proxy_headers = _as_bool("proxy_headers", self.proxy_headers)
        self._validate_forwarded_allow_ips()
        if self.log_level is not None:
            self.log_level = _as_choice("log_level", self.log_level, LOG_LEVELS)
        self.access_log = _as_bool("access_log", self.access_log)
        self._validate_logging()
        self._validate_processes()

    def _validate_logging(self) -> None:
        self.log_format = _as_choice("log_format", self.log_format, LOG_FORMATS)
        if self.use_colors is not None:
            self.use_colors = _as_bool("use_colors", self.use_colors)
        fmt = self.access_log_format
        if fmt is not None:
            if not isinstance(fmt, str) or not fmt.strip():
                raise _fail("access_log_format", "must be a non-empty format string", fmt)
            from .logs import AccessLog

            try:
                AccessLog(fmt)
            except ValueError as exc:
                raise _fail("access_log_format", str(exc).split(": ", 1)[1], fmt) from None
        lc = self.log_config
        if lc is not None and not isinstance(lc, dict):
            lc = os.fspath(lc) if isinstance(lc, os.PathLike) else lc
            if not isinstance(lc, str) or not os.path.isfile(lc):
                raise _fail("log_config", "must be a dictConfig dict or an existing file", lc)
            self.log_config = lc
        if self.env_file is not None:
            ef = os.fspath(self.env_file)
            if not os.path.isfile(ef):
                raise _fail("env_file", "no such file", ef)
            self.env_file = ef
        if self.metrics_bind is not None:
            self.metrics_bind = self._validate_metrics_bind(self.metrics_bind)

    def _validate_metrics_bind(self, value: Any) -> str:
        if not isinstance(value, str) or ":" not in value:
            raise _fail("metrics_bind", 'must be "HOST:PORT"', value)
        host, _, port = value.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self.metrics_host = host
        self.metrics_port = _as_int("metrics_bind", port, 0, 65535)
        return value

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_bind is None:
            return None
        return self.metrics_host, self.metrics_port

    def _validate_processes(self) -> None:
        w = self.workers
        if isinstance(w, str) and w.strip().lower() == "auto":
            w = 0
        self.workers = _as_int("workers", w, 0, MAX_WORKERS) or cpu_count()
        self.reload = _as_bool("reload", self.reload)
        for name in ("reload_dirs", "reload_includes", "reload_excludes"):
            value = getattr(self, name)
            if value is None:
                value = []
            elif isinstance(value, (str, os.PathLike)):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise _fail(name, "must be a list", value)
            items = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
            if not all(isinstance(v, str) and v.strip() and "\0" not in v for v in items):
                raise _fail(name, "entries must be non-empty strings", value)
            setattr(self, name, [v.strip() for v in items])
        for d in self.reload_dirs:
            if not os.path.isdir(d):
                raise _fail("reload_dirs", "no such directory", d)
        if not self.reload:
            given = [
                n for n in ("reload_dirs", "reload_includes", "reload_excludes") if getattr(self, n)
            ]
            if given:
                raise ConfigError(f"{flag_name(given[0])} needs --reload")
        self.max_requests = _as_int("max_requests", self.max_requests, 0, _INT64_MAX)
        self.max_requests_jitter = _as_int(
            "max_requests_jitter", self.max_requests_jitter, 0, _INT64_MAX
        )
        if self.max_requests_jitter and not self.max_requests:
            raise ConfigError("--max-requests-jitter needs --max-requests")
        self.max_rss = _as_int("max_rss", self.max_rss, 0, _INT32_MAX)
        t = self.worker_timeout
        if t is None or (isinstance(t, str) and t.strip().lower() == "none"):
            self.worker_timeout = None
        else:
            self.worker_timeout = _as_seconds("worker_timeout", t, allow_zero=True) or None
        perms = self.uds_perms
        if isinstance(perms, str):
            try:
                perms = int(perms.strip().lower().removeprefix("0o"), 8)
            except ValueError:
                raise _fail("uds_perms", "must be an octal mode like 660", self.uds_perms) from None
        if isinstance(perms, bool) or not isinstance(perms, int) or not 0 <= perms <= 0o777:
            raise _fail("uds_perms", "must be an octal mode like 660", self.uds_perms)
        self.uds_perms = perms
        if isinstance(self.pid_file, os.PathLike):
            self.pid_file = os.fspath(self.pid_file)
        if self.pid_file is not None and (
            not isinstance(self.pid_file, str) or not self.pid_file.strip() or "\0" in self.pid_file
        ):
            raise _fail("pid_file", "must be a file path", self.pid_file)
        if self.supervised and not isinstance(self.app, str):
            what = "--reload" if self.reload else "--workers and the recycling options"
            raise ConfigError(
                f'{what} need the app as an import string ("module:attr"): each worker '
                "imports it anew"
            )

    @property
    def supervised(self) -> bool:
        """Whether a supervisor process runs the server in worker processes: more than one
        worker, --reload, or a limit that replaces a worker (never otherwise: one worker and
        no such flag is one process)."""
        return bool(
            self.workers > 1
            or self.reload
            or self.max_requests
            or self.max_rss
            or self.worker_timeout
        )

    def _validate_ws(self) -> None:
        ws = _as_choice("ws", self.ws, WS_CHOICES)
        self.ws = "none" if ws == "none" else "auto"
        self.ws_max_size = _as_int("ws_max_size", self.ws_max_size, 1, _INT64_MAX)
        self.ws_max_queue = _as_int("ws_max_queue", self.ws_max_queue, 1, _INT32_MAX)
        for name in ("ws_ping_interval", "ws_ping_timeout"):
            v = getattr(self, name)
            if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
                setattr(self, name, None)  # as in uvicorn: no pings / no timeout
            else:
                setattr(self, name, _as_seconds(name, v, allow_zero=True) or None)
        self.ws_per_message_deflate = _as_bool(
            "ws_per_message_deflate", self.ws_per_message_deflate
        )

    def _validate_app(self) -> None:
        app = self.app
        if isinstance(app, str):
            app = app.strip()
            module, sep, attr = app.partition(":")
            what = 'must be "module:attr" (e.g. "examples.hello:app")'
            if module.endswith(".py") or "/" in module:
                dotted = module.removesuffix(".py").strip("./").replace("/", ".")
                raise ConfigError(
                    f"APP: {what}, got {self.app!r} (did you mean {dotted}:{attr or 'app'}?)"
                )
            if not module or not all(p.isidentifier() for p in module.split(".")):
                raise _fail("app", what, self.app)
            if sep and not all(p.isidentifier() for p in attr.split(".")):
                raise _fail("app", what, self.app)
            self.app = app
        elif not callable(app):
            raise _fail("app", 'must be "module:attr" or an ASGI callable', app)

        if isinstance(self.app_dir, os.PathLike):
            self.app_dir = os.fspath(self.app_dir)
        if not isinstance(self.app_dir, str) or not self.app_dir:
            raise _fail("app_dir", "must be a directory path", self.app_dir)
        if isinstance(self.app, str) and not os.path.isdir(self.app_dir):
            raise _fail("app_dir", "no such directory", self.app_dir)

    def _validate_binding(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise _fail("host", "must be a host name or IP address", self.host)
        host = self.host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or any(c.isspace() for c in host) or _has_control_chars(host):
            raise _fail("host", "must be a host name or IP address", self.host)
        self.host = host
        self.port = _as_int("port", self.port, 0, 65535)
        self.backlog = _as_int("backlog", self.backlog, 1, 65535)

        if isinstance(self.uds, os.PathLike):
            self.uds = os.fspath(self.uds)
        if self.uds is not None:
            if not isinstance(self.uds, str) or not self.uds or "\0" in self.uds:
                raise _fail("uds", "must be a socket file path", self.uds)
            if len(os.fsencode(self.uds)) > _UDS_PATH_MAX:
                raise _fail("uds", f"path is longer than {_UDS_PATH_MAX} bytes", self.uds)
        if self.fd is not None:
            self.fd = _as_int("fd", self.fd, 0, _INT32_MAX)
        if self.uds is not None and self.fd is not None:
            raise ConfigError(
                f"--uds and --fd are mutually exclusive, got {self.uds!r} and {self.fd}"
            )

    @property
    def ssl(self) -> bool:
        """Whether the server speaks TLS (--ssl-certfile given)."""
        return bool(self.ssl_certfile)

    def _validate_tls(self) -> None:
        def paths(name: str, value: Any) -> list[str]:
            if value is None:
                return []
            if isinstance(value, (str, os.PathLike)):
                value = [value]
            if not isinstance(value, (list, tuple)):
                raise _fail(name, "must be a file path (or a list of them)", value)
            out = []
            for v in value:
                if isinstance(v, os.PathLike):
                    v = os.fspath(v)
                if not isinstance(v, str) or not v.strip() or "\0" in v:
                    raise _fail(name, "must be a file path", v)
                out.append(v.strip())
            return out

        def one_path(name: str, value: Any) -> str | None:
            items = paths(name, value)
            if len(items) > 1:
                raise _fail(name, "must be one file path", value)
            return items[0] if items else None

        self.ssl_certfile = paths("ssl_certfile", self.ssl_certfile)
        self.ssl_keyfile = paths("ssl_keyfile", self.ssl_keyfile)
        self.ssl_ca_certs = one_path("ssl_ca_certs", self.ssl_ca_certs)
        reqs = self.ssl_cert_reqs
        if isinstance(reqs, int) and not isinstance(reqs, bool):
            reqs = str(reqs)
        if isinstance(reqs, str):
            reqs = _SSL_CERT_REQS_NUMBERS.get(reqs.strip(), reqs)
        self.ssl_cert_reqs = _as_choice("ssl_cert_reqs", reqs, SSL_CERT_REQS)
        version = self.ssl_min_version
        if isinstance(version, float):
            version = str(version)
        if isinstance(version, str):
            version = version.strip().lower().removeprefix("tlsv")
        self.ssl_min_version = _as_choice("ssl_min_version", version, SSL_MIN_VERSIONS)
        for name in ("ssl_keyfile_password", "ssl_ciphers"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise _fail(name, "must be a string", value)
        if not self.ssl_certfile:
            given = [
                n
                for n in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs", "ssl_ciphers")
                if getattr(self, n)
            ]
            if self.ssl_cert_reqs != "none":
                given.append("ssl_cert_reqs")
            if given:
                raise ConfigError(f"{flag_name(given[0])} needs --ssl-certfile (TLS is off)")
            return
        if not self.ssl_keyfile:
            # As uvicorn (ssl.load_cert_chain): each key may sit in its certificate's file.
            self.ssl_keyfile = list(self.ssl_certfile)
        if len(self.ssl_keyfile) != len(self.ssl_certfile):
            raise ConfigError(
                f"--ssl-keyfile: give one per --ssl-certfile, got {len(self.ssl_keyfile)} "
                f"key(s) for {len(self.ssl_certfile)} certificate(s)"
            )
        if self.ssl_cert_reqs != "none" and not self.ssl_ca_certs:
            raise ConfigError(
                f"--ssl-cert-reqs {self.ssl_cert_reqs} needs --ssl-ca-certs (the CAs that "
                "sign client certificates)"
            )

    @staticmethod
    def _validate_root_path(value: Any) -> str:
        what = 'must be empty or a path starting with "/"'
        if not isinstance(value, str):
            raise _fail("root_path", what, value)
        path = value.strip()
        if path and (not path.startswith("/") or _has_control_chars(path) or " " in path):
            raise _fail("root_path", what, value)
        return path.rstrip("/")

    def _validate_headers(self) -> None:
        items = self.headers
        if items is None:
            items = []
        elif isinstance(items, str):
            items = [items]
        elif not isinstance(items, (list, tuple)):
            raise _fail("headers", 'must be a list of "NAME:VALUE"', items)
        self.headers = [_parse_header(item) for item in items]

    def _validate_forwarded_allow_ips(self) -> None:
        value = self.forwarded_allow_ips
        if isinstance(value, str):
            entries = value.split(",")
        elif isinstance(value, (list, tuple)) and all(isinstance(e, str) for e in value):
            entries = list(value)
        else:
            raise _fail("forwarded_allow_ips", "must be a comma-separated list of IPs", value)
        parsed = [_parse_forwarded_ip(e) for e in entries if e.strip()]
        self.forwarded_allow_ips = ["*"] if "*" in parsed else list(dict.fromkeys(parsed))

    def is_trusted_proxy(self, host: str) -> bool:
        """Whether a peer at ``host`` may set X-Forwarded-* (by --forwarded-allow-ips)."""
        if "*" in self.forwarded_allow_ips:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        for entry in self.forwarded_allow_ips:
            if "/" in entry:
                if addr in ipaddress.ip_network(entry):
                    return True
            elif addr == ipaddress.ip_address(entry):
                return True
        return False

    def app_interface(self, app: Callable[..., Any]) -> str:
        """ "asgi" or "wsgi": --interface, or for auto what the callable looks like."""
        if self.interface != "auto":
            return self.interface
        return "asgi" if looks_like_asgi(app) else "wsgi"

    def load_app(self) -> Callable[..., Any]:
        """Import (and with ``factory``, call) the app; every failure is a ConfigError."""
        if not isinstance(self.app, str):
            app = self.app
            label = getattr(app, "__qualname__", type(app).__name__)
        else:
            label = self.app
            module_name, _, attr = self.app.partition(":")
            attr = attr or "app"
            app_dir = os.path.abspath(self.app_dir)
            if not sys.path or sys.path[0] != app_dir:
                sys.path.insert(0, app_dir)
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if _module_is_missing(exc, module_name):
                    raise ConfigError(f'could not import module "{module_name}": {exc}') from exc
                raise ConfigError(
                    f'error while importing module "{module_name}": {_describe(exc)}'
                ) from exc
            except (Exception, SystemExit) as exc:
                raise ConfigError(
                    f'error while importing module "{module_name}": {_describe(exc)}'
                ) from exc

            app = module
            for part in attr.split("."):
                try:
                    app = getattr(app, part)
                except AttributeError:
                    raise ConfigError(
                        f'attribute "{attr}" not found in module "{module_name}"'
                    ) from None
                except Exception as exc:
                    raise ConfigError(
                        f'error while reading "{attr}" from module "{module_name}": '
                        f"{_describe(exc)}"
                    ) from exc

        if self.factory:
            if not callable(app):
                raise ConfigError(f'app factory "{label}" is not callable ({type(app).__name__})')
            app = _call_factory(app, label, f'app factory "{label}" returned')
        elif not callable(app):
            raise ConfigError(f'app "{label}" is not callable ({type(app).__name__})')
        elif _looks_like_factory(app):
            # A factory passed without --factory would answer 500 to every request (it
            # cannot take scope, receive, send): call it, as uvicorn does, and say so.
            import logging

            logging.getLogger("pronghorn.error").warning(
                'app "%s" takes no arguments: calling it as an app factory '
                "(pass --factory to say so)",
                label,
            )
            app = _call_factory(app, label, f'app "{label}" takes no arguments and returned')
        return app


def _call_factory(factory: Callable[..., Any], label: str, returned: str) -> Any:
    """The app a factory makes; ConfigError when it fails or makes no callable."""
    try:
        app = factory()
    except Exception as exc:
        raise ConfigError(f'app factory "{label}" failed: {_describe(exc)}') from exc
    if not callable(app):
        raise ConfigError(f"{returned} {type(app).__name__}, not an ASGI callable")
    return app


def _looks_like_factory(app: Any) -> bool:
    """A plain function (not a class, not a coroutine function) callable with no arguments
    and taking no *args: it cannot be an ASGI or WSGI app, so it must make one."""
    import inspect

    if inspect.isclass(app) or not inspect.isfunction(app) or inspect.iscoroutinefunction(app):
        return False
    params = inspect.signature(app).parameters.values()
    return not any(
        p.kind == p.VAR_POSITIONAL
        or (p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
        for p in params
    )
