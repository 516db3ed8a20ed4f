"""The two loggers: ``pronghorn.error`` (server events) and ``pronghorn.access`` (one line per
request, however it ended). Only these are configured; the root logger is left to the
application.

The C core calls the functions made here: ``AccessLog`` for every exchange a bridge saw,
``on_reject`` for every request answered below it (400, 408, 413, 414, 431, 501, 505, the
503s at a limit), ``log_exception`` for an app's exception and ``trace`` for ASGI messages
with ``--log-level trace``. Nothing here runs on the request path unless its line is wanted.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
import os
import sys
import time
import urllib.parse
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

error_logger = logging.getLogger("pronghorn.error")
access_logger = logging.getLogger("pronghorn.access")

# How an exchange ended (PH_END_* in src/core/server.h): what the access line adds after the
# duration. A whole response adds nothing; a rejection's status says what it was.
ENDS = ("", "aborted (client gone)", "aborted (app error)", "cancelled", "aborted (incomplete)",
        "")  # fmt: skip
# Why a request was answered below the app (PH_REJECT_*): the metrics' reason label.
REJECTS = ("", "malformed", "timeout", "body_too_large", "target_too_long",
           "headers_too_large", "not_implemented", "version", "limit_concurrency",
           "limit_max_connections", "shutdown", "other")  # fmt: skip
END_NAMES = ("ok", "client_gone", "app_error", "cancelled", "incomplete", "rejected")

_COLORS = {
    "TRACE": "\x1b[34m",
    "DEBUG": "\x1b[36m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[91m",
}
_STATUS_COLORS = {1: "\x1b[37m", 2: "\x1b[32m", 3: "\x1b[33m", 4: "\x1b[31m", 5: "\x1b[91m"}
_RESET = "\x1b[0m"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so capture and redirection work)."""

    _pronghorn = True

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class TextFormatter(logging.Formatter):
    """``INFO:     message``: the level name and colon padded to 10 columns, the level in color
    with ``use_colors`` (and an access line's status too)."""

    def __init__(self, fmt: str = "%(levelprefix)s%(message)s", use_colors: bool = False):
        super().__init__(fmt)
        self.use_colors = use_colors

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname + ':':<10}"
        if self.use_colors:
            color = _COLORS.get(record.levelname, "")
            prefix = f"{color}{record.levelname}{_RESET}:" + " " * (9 - len(record.levelname))
            status = getattr(record, "status_text", None)
            if status and status[0].isdigit() and record.args:
                colored = f"{_STATUS_COLORS.get(int(status[0]), '')}{status}{_RESET}"
                record = logging.makeLogRecord(record.__dict__)
                record.msg = record.getMessage().replace(f'" {status} ', f'" {colored} ', 1)
                record.args = None
        record.levelprefix = prefix
        return super().format(record)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message; an access line's fields
    (``access``) and an error's traceback (``exception``) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _install(logger: logging.Logger, formatter: logging.Formatter) -> None:
    for h in logger.handlers:
        if getattr(h, "_pronghorn", False):
            h.setFormatter(formatter)
            break
    else:
        handler = _StderrHandler()
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.propagate = False


def colors_wanted(use_colors: bool | None) -> bool:
    """--use-colors / --no-use-colors, or auto: on when stderr is a terminal."""
    if use_colors is not None:
        return use_colors
    try:
        return sys.stderr.isatty() and os.environ.get("NO_COLOR") is None
    except (AttributeError, ValueError):
        return False


def load_log_config(source: str | dict) -> None:
    """--log-config / run(log_config=): a dictConfig dict, or a file — JSON, YAML (with PyYAML)
    or INI (logging.config.fileConfig). Raises ValueError with one line on a bad one."""
    if isinstance(source, dict):
        logging.config.dictConfig(source)
        return
    path = str(source)
    try:
        if path.endswith(".json"):
            with open(path) as f:
                logging.config.dictConfig(json.load(f))
        elif path.endswith((".yaml", ".yml")):
            try:
                import yaml
            except ImportError:
                raise ValueError("a YAML --log-config needs PyYAML: pip install PyYAML") from None
            with open(path) as f:
                logging.config.dictConfig(yaml.safe_load(f))
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("a YAML"):
            raise
        raise ValueError(f"--log-config {path}: {exc}") from exc


def configure(
    level: str | int | None,
    access_log: bool,
    *,
    log_format: str = "text",
    use_colors: bool | None = None,
    log_config: str | dict | None = None,
) -> None:
    """Set up both loggers; calling it again only updates them (no duplicate handlers). With
    log_config, that configuration is applied over ours, and level (when given) last."""
    if log_format == "json":
        error_fmt: logging.Formatter = JSONFormatter()
        access_fmt: logging.Formatter = JSONFormatter()
    else:
        colors = colors_wanted(use_colors)
        error_fmt = TextFormatter(use_colors=colors)
        access_fmt = TextFormatter(use_colors=colors)
    _install(error_logger, error_fmt)
    _install(access_logger, access_fmt)
    error_logger.disabled = False
    if log_config is not None:
        load_log_config(log_config)
    if level is not None or log_config is None:
        numeric = level if isinstance(level, int) else LEVELS[(level or "info").lower()]
        error_logger.setLevel(numeric)
        # Access lines are INFO: a quieter --log-level (warning, ...) silences them too.
        access_logger.setLevel(numeric)
    if not access_log:
        access_logger.disabled = True
    elif log_config is None:
        access_logger.disabled = False


def setup(config) -> None:
    """configure() from a Config."""
    configure(
        config.log_level,
        config.access_log,
        log_format=config.log_format,
        use_colors=config.use_colors,
        log_config=config.log_config,
    )


def access_log_enabled() -> bool:
    """Cheap check the server can make once, before building per-request log arguments."""
    return not access_logger.disabled and access_logger.isEnabledFor(logging.INFO)


def _printable(text: str) -> str:
    """Never let a client write raw control characters or quotes into the log."""
    if text.isprintable() and '"' not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


def split_target(target: bytes | str) -> tuple[str, str]:
    """The path as the client meant it (percent-escapes decoded, UTF-8 read as UTF-8: both
    ``/caf%C3%A9`` and a raw ``/café`` read ``/café``) and the query as sent."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    if target.isascii() and b"%" not in target:  # the common case: nothing to decode
        text = target.decode("ascii")
        path, _, query = text.partition("?")
        return _printable(path), _printable(query)
    raw_path, _, raw_query = target.partition(b"?")
    path = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8", "backslashreplace")
    return _printable(path), _printable(raw_query.decode("utf-8", "backslashreplace"))


def _header(pairs, name: bytes) -> str | None:
    if not pairs:
        return None
    if isinstance(pairs, dict):  # a WSGI environ
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if name in (b"content-type", b"content-length"):
            key = key[5:]
        value = pairs.get(key)
        return None if value is None else str(value)
    for k, v in pairs:
        if isinstance(k, str):
            k, v = k.encode("latin-1"), v.encode("latin-1") if isinstance(v, str) else v
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class _Atoms(dict):
    """The --access-log-format mapping: each atom computed only when the format names it."""

    def __init__(self, line: dict, headers) -> None:
        super().__init__()
        self.line = line
        self.headers = headers

    def __missing__(self, key: str):
        if key.startswith("{") and key[-2:] in ("}i", "}o") and len(key) > 3:
            req, resp = self.headers if self.headers else (None, None)
            value = _header(req if key[-1] == "i" else resp, key[1:-2].lower().encode("latin-1"))
            return _printable(value) if value is not None else "-"
        value = self.line[key] if key in self.line else _ATOMS[key](self.line)
        self[key] = value
        return value


def _time(line: dict) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(line["when"]))


_ATOMS = {
    "time": _time,
    "request_line": lambda x: f"{x['method']} {x['target']} HTTP/{x['version']}",
    "duration_s": lambda x: x["duration_ms"] / 1000.0,
    "outcome": lambda x: x["end_text"] or "-",
}


class AccessLog:
    """The access line of one exchange (the core calls it): the default text line, a
    --access-log-format line, or a JSON object's fields. Once per request, whatever its end."""

    def __init__(self, fmt: str | None = None) -> None:
        self.fmt = fmt
        self.wants_headers = bool(fmt) and ("}i)" in fmt or "}o)" in fmt or "request_id" in fmt)
        if fmt:
            try:
                fmt % _Atoms(_SAMPLE, None)
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"--access-log-format: {exc!r} is not a known atom") from None

    def __call__(
        self,
        client: str | None,
        method: str,
        target: bytes | str,
        version: str,
        status: int,
        bytes_out: int,
        seconds: float,
        bytes_in: int = 0,
        end: int = 0,
        reject: int = 0,
        headers=None,
    ) -> None:
        if access_logger.disabled or not access_logger.isEnabledFor(logging.INFO):
            return
        path, query = split_target(target)
        status_text = str(status) if status else "-"
        end_text = ENDS[end] if 0 <= end < len(ENDS) else ""
        if end == 5 and reject in (8, 9):  # a 503 at a limit says which
            end_text = f"({REJECTS[reject].replace('_', '-')})"
        shown = f"{path}?{query}" if query else path
        json_out = _json_access()
        if self.fmt is None and not json_out:
            access_logger.info(
                '%s - "%s %s HTTP/%s" %s %d %.1fms%s',
                client or "-",
                method,
                shown,
                version,
                status_text,
                bytes_out,
                seconds * 1000.0,
                " " + end_text if end_text else "",
                extra={"status_text": status_text},
            )
            return
        line = {
            "client": client or "-",
            "method": method,
            "path": path,
            "query": query,
            "target": shown,
            "version": version,
            "status": status_text,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration_ms": seconds * 1000.0,
            "end": END_NAMES[end] if 0 <= end < len(END_NAMES) else "ok",
            "end_text": end_text,
            "when": time.time(),
        }
        atoms = _Atoms(line, headers)
        if self.wants_headers or headers:
            rid = _header(headers[0] if headers else None, b"x-request-id")
            atoms["request_id"] = _printable(rid) if rid else "-"
        else:
            atoms["request_id"] = "-"
        if json_out:
            fields = {
                k: line[k]
                for k in (
                    "client",
                    "method",
                    "path",
                    "query",
                    "version",
                    "bytes_in",
                    "bytes_out",
                    "end",
                )  # fmt: skip
            }
            fields["status"] = status or None
            fields["duration_ms"] = round(seconds * 1000.0, 3)
            fields["request_id"] = atoms["request_id"]
            if reject:
                fields["reason"] = REJECTS[reject] if 0 <= reject < len(REJECTS) else "other"
            message = (
                (self.fmt % atoms)
                if self.fmt
                else (
                    f'{line["client"]} - "{method} {shown} HTTP/{version}" '
                    f"{status_text} {bytes_out}"
                )
            )
            access_logger.info("%s", message, extra={"access": fields})
            return
        access_logger.info("%s", self.fmt % atoms, extra={"status_text": status_text})


_SAMPLE = {
    "client": "127.0.0.1:1",
    "method": "GET",
    "path": "/",
    "query": "",
    "target": "/",
    "version": "1.1",
    "status": "200",
    "bytes_in": 0,
    "bytes_out": 0,
    "duration_ms": 0.0,
    "end": "ok",
    "end_text": "",
    "when": 0.0,
    "request_id": "-",
}


def _json_access() -> bool:
    return any(isinstance(h.formatter, JSONFormatter) for h in access_logger.handlers)


class Rejections:
    """The core's on_reject: the access line of a request answered below the app, a debug
    line, and — when limits turn requests away — a warning at most every WARN_EVERY seconds
    with how many."""

    WARN_EVERY = 10.0

    def __init__(self, access: AccessLog | None) -> None:
        self.access = access
        self.limited = 0
        self.warned_at = 0.0

    def __call__(self, client, method, target, version, status, bytes_out, seconds, bytes_in,
                 end, reject) -> None:  # fmt: skip
        if self.access is not None:
            self.access(client, method, target, version, status, bytes_out, seconds, bytes_in,
                        end, reject)  # fmt: skip
        reason = REJECTS[reject] if 0 < reject < len(REJECTS) else "other"
        if error_logger.isEnabledFor(logging.DEBUG):
            path, query = split_target(target)
            error_logger.debug(
                "%s - rejected %s %s: %s (%s)",
                client or "-",
                method,
                f"{path}?{query}" if query else path or "-",
                status,
                reason,
            )
        if reason in ("limit_concurrency", "limit_max_connections"):
            self.limited += 1
            now = time.monotonic()
            if now - self.warned_at >= self.WARN_EVERY:
                flag = "--" + reason.replace("_", "-")
                error_logger.warning(
                    "%s reached: %d request(s) answered 503 since the last warning",
                    flag,
                    self.limited,
                )
                self.limited = 0
                self.warned_at = now


def _client_left(exc: BaseException) -> bool:
    """What an app raises when it finds the client gone: our ClientDisconnected (an OSError),
    Starlette's ClientDisconnect, anyio's broken/closed resource errors."""
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(
        names
        & {
            "ClientDisconnected",
            "ClientDisconnect",
            "BrokenResourceError",
            "ClosedResourceError",
        }  # fmt: skip
    ) or isinstance(exc, (ConnectionError, OSError))


def log_exception(message: str, exc: BaseException | None, client_gone: bool = False) -> bool:
    """An app's exception (or a broken response). A client that left is no app failure: one
    debug line, no traceback; returns False then (the core counts True ones as app errors)."""
    if exc is not None and client_gone and _client_left(exc):
        error_logger.debug("%s after the client left: %s: %s", message, type(exc).__name__, exc)
        return False
    if exc is None:
        error_logger.error(message)
    else:
        error_logger.error(message, exc_info=(type(exc), exc, exc.__traceback__))
    return True


def _short(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str) and len(value) > 80:
        return f"<{len(value)} chars>"
    if isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (list, tuple)):
        return f"<{len(value)} items>"
    return value


def trace(request_id: int, event: str, message: Any) -> None:
    """--log-level trace: one line per ASGI message in and out (type and the small fields,
    never bodies), the scope when the app is called and how it ended."""
    if not error_logger.isEnabledFor(TRACE):
        return
    if event == "end":
        how = "returned" if message is None else f"raised {type(message).__name__}"
        error_logger.log(TRACE, "ASGI [%d] %s", request_id, how)
        return
    if isinstance(message, dict):
        shown = {
            k: _short(v)
            for k, v in message.items()
            if k not in ("state", "extensions", "app") or event != "scope"
        }
    else:
        shown = message
    error_logger.log(TRACE, "ASGI [%d] %s %s", request_id, event, shown)
