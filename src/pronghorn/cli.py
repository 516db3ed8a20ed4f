"""``pronghorn [OPTIONS] APP``: flags and ``PRONGHORN_*`` env vars into one Config.

A flag given on the command line beats its env var, which beats the Config default. Values are
passed to Config as strings, so the command line, env vars and ``pronghorn.run()`` share one
set of checks and messages. Nothing here imports the server or the C extension until a config
is valid, so ``--help``, ``--version`` and usage errors work before anything is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pronghorn import __version__
from pronghorn.config import (
    HTTP_CHOICES,
    INTERFACE_CHOICES,
    LIFESPAN_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    LOOP_CHOICES,
    SSL_CERT_REQS,
    SSL_MIN_VERSIONS,
    WS_CHOICES,
    Config,
    ConfigError,
    flag_name,
    load_env_file,
)

ENV_PREFIX = "PRONGHORN_"


class Option(NamedTuple):
    flag: str  # "--timeout-keep-alive"
    field: str  # Config field it sets
    kind: str  # "value" | "choice" | "bool" (--x/--no-x) | "flag" (store_true) | "append"
    group: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()


OPTIONS: tuple[Option, ...] = (
    Option("--host", "host", "value", "binding", "address to bind", "ADDR"),
    Option("--port", "port", "value", "binding", "TCP port to bind (0 = any free port)", "PORT"),
    Option("--uds", "uds", "value", "binding", "bind a unix domain socket at PATH instead", "PATH"),
    Option("--fd", "fd", "value", "binding", "serve an already-listening socket fd instead", "FD"),
    Option("--backlog", "backlog", "value", "binding", "listen() backlog", "N"),
    Option(
        "--uds-perms",
        "uds_perms",
        "value",
        "binding",
        "file mode of the --uds socket, octal",
        "MODE",
    ),
    Option("--app-dir", "app_dir", "value", "app", "directory put first on sys.path", "DIR"),
    Option("--factory", "factory", "flag", "app", "APP is a factory: call it with no arguments"),
    Option("--root-path", "root_path", "value", "app", "ASGI root_path (mount prefix)", "PATH"),
    Option(
        "--lifespan", "lifespan", "choice", "app", "ASGI lifespan protocol", None, LIFESPAN_MODES
    ),
    Option("--loop", "loop", "choice", "app", "event loop", None, LOOP_CHOICES),
    Option(
        "--interface",
        "interface",
        "choice",
        "app",
        "app interface: auto = WSGI for a plain callable (environ, start_response), else ASGI",
        None,
        INTERFACE_CHOICES,
    ),
    Option(
        "--threads",
        "threads",
        "value",
        "app",
        "WSGI: threads that run the app (default 8)",
        "N",
    ),
    Option(
        "--http",
        "http",
        "choice",
        "http",
        "HTTP versions: auto = HTTP/1.1 and HTTP/2 on one port (h2c in cleartext, ALPN over "
        "TLS), 1 = HTTP/1.1 only, 2 = HTTP/2 only",
        None,
        HTTP_CHOICES,
    ),
    Option(
        "--h2-max-concurrent-streams",
        "h2_max_concurrent_streams",
        "value",
        "http",
        "HTTP/2 streams a client may have open at once",
        "N",
    ),
    Option(
        "--h2-initial-window-size",
        "h2_initial_window_size",
        "value",
        "http",
        "HTTP/2 receive window per stream: request bytes held for an app that is not reading",
        "BYTES",
    ),
    Option(
        "--h2-max-header-list-size",
        "h2_max_header_list_size",
        "value",
        "http",
        "HTTP/2 request header list size (431 beyond; 0 = --limit-request-header-size)",
        "BYTES",
    ),
    Option(
        "--h2-max-frame-size",
        "h2_max_frame_size",
        "value",
        "http",
        "largest HTTP/2 frame accepted (16384 .. 16777215)",
        "BYTES",
    ),
    Option(
        "--ssl-certfile",
        "ssl_certfile",
        "append",
        "tls",
        "serve HTTPS with this PEM certificate chain; repeat with --ssl-keyfile for more "
        "certificates, chosen by SNI (the first also serves unknown names)",
        "PATH",
    ),
    Option(
        "--ssl-keyfile",
        "ssl_keyfile",
        "append",
        "tls",
        "the PEM private key of each --ssl-certfile, in the same order (none: each key is "
        "in its certificate's file)",
        "PATH",
    ),
    Option(
        "--ssl-keyfile-password",
        "ssl_keyfile_password",
        "value",
        "tls",
        "password of encrypted keys",
        "PASSWORD",
    ),
    Option(
        "--ssl-ca-certs",
        "ssl_ca_certs",
        "value",
        "tls",
        "PEM file of the CAs that sign client certificates (mTLS)",
        "PATH",
    ),
    Option(
        "--ssl-cert-reqs",
        "ssl_cert_reqs",
        "choice",
        "tls",
        "client certificates: none, optional (verified when sent) or required",
        None,
        SSL_CERT_REQS,
    ),
    Option(
        "--ssl-ciphers",
        "ssl_ciphers",
        "value",
        "tls",
        "TLS 1.2 cipher list, OpenSSL syntax (TLS 1.3 suites are OpenSSL's defaults)",
        "CIPHERS",
    ),
    Option(
        "--ssl-min-version",
        "ssl_min_version",
        "choice",
        "tls",
        "oldest TLS version accepted (1.0 and 1.1 never are)",
        None,
        SSL_MIN_VERSIONS,
    ),
    Option(
        "--ws",
        "ws",
        "choice",
        "ws",
        "WebSockets: auto serves them (ASGI), none answers an upgrade as plain HTTP "
        "(uvicorn's websockets/wsproto names mean auto)",
        None,
        WS_CHOICES,
    ),
    Option(
        "--ws-max-size",
        "ws_max_size",
        "value",
        "ws",
        "largest WebSocket message taken (close 1009 beyond; default 16 MiB)",
        "BYTES",
    ),
    Option(
        "--ws-max-queue",
        "ws_max_queue",
        "value",
        "ws",
        "WebSocket messages held for an app that is not receiving before reading stops",
        "N",
    ),
    Option(
        "--ws-ping-interval",
        "ws_ping_interval",
        "value",
        "ws",
        "send a WebSocket ping after SECONDS (0 or none: never)",
        "SECONDS",
    ),
    Option(
        "--ws-ping-timeout",
        "ws_ping_timeout",
        "value",
        "ws",
        "close a WebSocket whose ping is not answered within SECONDS (0 or none: wait)",
        "SECONDS",
    ),
    Option(
        "--ws-per-message-deflate",
        "ws_per_message_deflate",
        "bool",
        "ws",
        "agree on permessage-deflate compression when the client offers it",
    ),
    Option(
        "--timeout-keep-alive",
        "timeout_keep_alive",
        "value",
        "timeouts",
        "close an idle keep-alive connection after SECONDS",
        "SECONDS",
    ),
    Option(
        "--timeout-request-header",
        "timeout_request_header",
        "value",
        "timeouts",
        "close a connection whose request head takes longer than SECONDS",
        "SECONDS",
    ),
    Option(
        "--timeout-request-body",
        "timeout_request_body",
        "value",
        "timeouts",
        "close a connection whose request body makes no progress for SECONDS",
        "SECONDS",
    ),
    Option(
        "--timeout-write",
        "timeout_write",
        "value",
        "timeouts",
        "drop a client that takes none of a pending response for SECONDS (progress, not total)",
        "SECONDS",
    ),
    Option(
        "--timeout-graceful-shutdown",
        "timeout_graceful_shutdown",
        "value",
        "timeouts",
        "on shutdown, wait this long for in-flight requests ('none' = forever)",
        "SECONDS",
    ),
    Option(
        "--limit-concurrency",
        "limit_concurrency",
        "value",
        "limits",
        "answer 503 beyond N concurrent requests (0 = unlimited)",
        "N",
    ),
    Option(
        "--limit-max-connections",
        "limit_max_connections",
        "value",
        "limits",
        "answer 503 and close beyond N open connections (0 = unlimited)",
        "N",
    ),
    Option(
        "--limit-request-line",
        "limit_request_line",
        "value",
        "limits",
        "max bytes of the request line / target (414 beyond)",
        "BYTES",
    ),
    Option(
        "--limit-request-headers",
        "limit_request_headers",
        "value",
        "limits",
        "max number of request headers (431 beyond)",
        "N",
    ),
    Option(
        "--limit-request-header-size",
        "limit_request_header_size",
        "value",
        "limits",
        "max total bytes of header names and values (431 beyond)",
        "BYTES",
    ),
    Option(
        "--limit-request-body",
        "limit_request_body",
        "value",
        "limits",
        "max bytes of a request body (413 beyond; 0 = unlimited)",
        "BYTES",
    ),
    Option(
        "--header",
        "headers",
        "append",
        "headers",
        "extra response header; repeatable (env: comma- or newline-separated)",
        "NAME:VALUE",
    ),
    Option("--server-header", "server_header", "bool", "headers", "send a Server header"),
    Option("--date-header", "date_header", "bool", "headers", "send a Date header"),
    Option(
        "--proxy-headers",
        "proxy_headers",
        "bool",
        "proxy",
        "take client address and scheme from X-Forwarded-For/-Proto of trusted proxies",
    ),
    Option(
        "--forwarded-allow-ips",
        "forwarded_allow_ips",
        "value",
        "proxy",
        "comma-separated proxy IPs or CIDR networks to trust ('*' = all)",
        "IPS",
    ),
    Option(
        "--workers",
        "workers",
        "value",
        "process",
        "worker processes, each a whole server on the shared sockets (0 or auto: one per "
        "core; more than 1 adds a supervisor process)",
        "N",
    ),
    Option(
        "--reload",
        "reload",
        "flag",
        "process",
        "development: restart the worker when a watched file changes",
    ),
    Option(
        "--reload-dir",
        "reload_dirs",
        "append",
        "process",
        "directory to watch for --reload; repeatable (default: the current directory)",
        "DIR",
    ),
    Option(
        "--reload-include",
        "reload_includes",
        "append",
        "process",
        "glob of file names that trigger a reload; repeatable (default: *.py)",
        "GLOB",
    ),
    Option(
        "--reload-exclude",
        "reload_excludes",
        "append",
        "process",
        "glob of paths that never trigger a reload; repeatable (default: .*, .py[cod], .sw.*, ~*)",
        "GLOB",
    ),
    Option(
        "--max-requests",
        "max_requests",
        "value",
        "process",
        "replace a worker gracefully after about N requests (0 = never)",
        "N",
    ),
    Option(
        "--max-requests-jitter",
        "max_requests_jitter",
        "value",
        "process",
        "add a random 0..J to each worker's --max-requests, so workers do not restart together",
        "J",
    ),
    Option(
        "--max-rss",
        "max_rss",
        "value",
        "process",
        "replace a worker gracefully once its resident memory passes MIB (0 = never)",
        "MIB",
    ),
    Option(
        "--worker-timeout",
        "worker_timeout",
        "value",
        "process",
        "kill and replace a worker whose event loop has been stuck for SECONDS (0 or none = never)",
        "SECONDS",
    ),
    Option(
        "--pid-file",
        "pid_file",
        "value",
        "process",
        "write the PID of the process to signal here (removed at exit)",
        "PATH",
    ),
    Option(
        "--log-level",
        "log_level",
        "choice",
        "logging",
        "log level (default: info)",
        None,
        LOG_LEVELS,
    ),  # fmt: skip
    Option("--access-log", "access_log", "bool", "logging", "log one line per request"),
    Option(
        "--access-log-format",
        "access_log_format",
        "value",
        "logging",
        "access line format: %%(atom)s with atoms client, time, method, path, query, target, "
        "version, request_line, status, bytes_in, bytes_out, duration_ms, duration_s, outcome, "
        "end, request_id; %%({header}i)s a request header, %%({header}o)s a response header",
        "FORMAT",
    ),
    Option(
        "--log-format",
        "log_format",
        "choice",
        "logging",
        "text lines or JSON objects",
        None,
        LOG_FORMATS,
    ),  # fmt: skip
    Option(
        "--log-config",
        "log_config",
        "value",
        "logging",
        "a logging configuration: dictConfig JSON or YAML (.json, .yaml), else INI (fileConfig)",
        "PATH",
    ),
    Option(
        "--use-colors", "use_colors", "bool", "logging", "color the log levels (auto: on a TTY)"
    ),  # fmt: skip
    Option(
        "--metrics-bind",
        "metrics_bind",
        "value",
        "logging",
        "serve Prometheus metrics (/metrics), /healthz and /readyz on a listener of their own",
        "HOST:PORT",
    ),
    Option(
        "--env-file",
        "env_file",
        "value",
        "app",
        "load environment variables from this file (python-dotenv format) before anything",
        "PATH",
    ),
)

_GROUPS = {
    "binding": "binding (fd beats uds beats host:port)",
    "app": "application",
    "http": "HTTP versions",
    "tls": "TLS (HTTPS)",
    "ws": "WebSockets",
    "timeouts": "timeouts",
    "limits": "limits",
    "headers": "response headers",
    "proxy": "proxies",
    "process": "processes (workers, signals, recycling, reload)",
    "logging": "logging and metrics",
}

_DEFAULTS = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for f in dataclasses.fields(Config)
}

# Split an env header list on newlines, and on commas only where a new "Name:" follows, so
# "Cache-Control: no-cache, no-store" stays one header.
_ENV_HEADER_SPLIT = re.compile(r"\r?\n|,(?=\s*[!#$%&'*+\-.^_`|~0-9A-Za-z]+\s*:)")


def _split_commas(raw: str) -> list[str]:
    return [p.strip() for p in raw.split(",")]


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(str(v) if not isinstance(v, tuple) else ":".join(v) for v in value) or (
            "none"
        )
    if value == "":
        return '""'
    return str(value)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pronghorn",
        usage="pronghorn [OPTIONS] APP",
        description="Serve an ASGI application with pronghorn.",
        epilog=(
            "Every option can also be set by an env var, shown with it; a flag on the command "
            "line wins. Boolean env vars take true/false, 1/0, yes/no or on/off."
        ),
        allow_abbrev=False,
        formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=34),
    )
    parser.add_argument(
        "app",
        nargs="?",
        metavar="APP",
        help='the ASGI app as "module:attr" (attr defaults to "app") [env: PRONGHORN_APP]',
    )
    parser.add_argument("--version", action="version", version=f"pronghorn {__version__}")
    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    for opt in OPTIONS:
        text = f"{opt.help} [default: {_show_default(_DEFAULTS[opt.field])}; env: {opt.env}]"
        text = text.replace("%", "%%")
        group = groups[opt.group]
        if opt.kind == "bool":
            group.add_argument(
                opt.flag,
                dest=opt.field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        elif opt.kind == "flag":
            group.add_argument(
                opt.flag, dest=opt.field, action="store_true", default=None, help=text
            )
        elif opt.kind == "append":
            group.add_argument(
                opt.flag, dest=opt.field, action="append", metavar=opt.metavar, help=text
            )
        else:
            group.add_argument(
                opt.flag, dest=opt.field, metavar=opt.metavar, choices=opt.choices, help=text
            )
    return parser


def options_from(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[dict, dict]:
    """Config keyword arguments from parsed flags, then env vars; also {field: env var name}
    for the values that came from the environment."""
    options: dict[str, Any] = {}
    sources: dict[str, str] = {}
    specs = [Option("APP", "app", "value", "app", "")] + list(OPTIONS)
    for opt in specs:
        value = getattr(ns, opt.field)
        if value is not None:
            options[opt.field] = value
            continue
        env = opt.env
        raw = environ.get(env)
        if raw is None or not raw.strip():
            continue
        if opt.kind == "append":
            split = _ENV_HEADER_SPLIT.split if opt.field == "headers" else _split_commas
            options[opt.field] = [h for h in split(raw) if h.strip()]
        else:
            options[opt.field] = raw
        sources[opt.field] = env
    return options, sources


def _error(message: str) -> None:
    print(f"pronghorn: error: {message}", file=sys.stderr)


def _explain(exc: ConfigError, sources: Mapping[str, str]) -> str:
    message = str(exc)
    for name, env in sources.items():
        if message.startswith(flag_name(name) + ":"):
            return f"{message} (from {env})"
    return message


def _debugging(options: Mapping[str, Any]) -> bool:
    return str(options.get("log_level", "")).strip().lower() in ("debug", "trace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server from the command line; returns the process exit code."""
    options: dict[str, Any] = {}
    try:
        try:
            ns = build_parser().parse_args(argv)
        except _UsageError as exc:
            _error(str(exc))
            return 2
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else 0

        env_file = ns.env_file or os.environ.get(f"{ENV_PREFIX}ENV_FILE")
        if env_file:
            try:
                load_env_file(env_file)
            except ConfigError as exc:
                _error(str(exc))
                return 2
        options, sources = options_from(ns, os.environ)
        if "app" not in options:
            _error("the following arguments are required: APP")
            return 2
        try:
            config = Config(**options)
        except ConfigError as exc:
            _error(_explain(exc, sources))
            return 2

        from pronghorn import logs

        try:
            logs.setup(config)
        except ValueError as exc:  # a --log-config that does not load
            _error(str(exc))
            return 2
        from pronghorn.server import serve, tls_context

        try:
            tls = tls_context(config)  # certificates are checked before the app loads or binds
        except ConfigError as exc:
            _error(str(exc))
            return 2
        if config.supervised:
            from pronghorn.supervisor import Supervisor

            return Supervisor(config, tls).run()
        return int(serve(config, tls) or 0)
    except ConfigError as exc:  # the app could not be loaded
        if _debugging(options) and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
