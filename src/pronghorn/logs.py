"""The two loggers: ``pronghorn.error`` (server events) and ``pronghorn.access`` (one line per
response). Only these are configured; the root logger is left to the application.
"""

from __future__ import annotations

import logging
import sys

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


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so capture and redirection work)."""

    _pronghorn = True

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _LevelPrefixFormatter(logging.Formatter):
    """``INFO:     message``: the level name and colon padded to 10 columns."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelprefix = f"{record.levelname + ':':<10}"
        return super().format(record)


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


def configure(level: str | int, access_log: bool) -> None:
    """Set up both loggers; calling it again only updates levels (no duplicate handlers)."""
    numeric = level if isinstance(level, int) else LEVELS[level.lower()]
    _install(error_logger, _LevelPrefixFormatter("%(levelprefix)s%(message)s"))
    error_logger.setLevel(numeric)
    error_logger.disabled = False

    _install(access_logger, _LevelPrefixFormatter("%(levelprefix)s%(message)s"))
    # Access lines are INFO: a quieter --log-level (warning, ...) silences them too.
    access_logger.setLevel(numeric)
    access_logger.disabled = not access_log


def access_log_enabled() -> bool:
    """Cheap check the server can make once, before building per-request log arguments."""
    return not access_logger.disabled and access_logger.isEnabledFor(logging.INFO)


def access_log_line(
    client_addr: str | None,
    method: str,
    path: str,
    http_version: str,
    status: int,
    nbytes: int,
    duration: float,
) -> None:
    """Log ``127.0.0.1:53422 - "GET /path?q=1 HTTP/1.1" 200 13 0.4ms`` on pronghorn.access.

    ``duration`` is in seconds; ``client_addr`` is "ip:port" or empty/None (unix sockets).
    """
    if access_logger.disabled or not access_logger.isEnabledFor(logging.INFO):
        return
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    if not path.isprintable() or '"' in path:
        # Never let a client write raw control characters or quotes into the log.
        path = path.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    access_logger.info(
        '%s - "%s %s HTTP/%s" %d %d %.1fms',
        client_addr or "-",
        method,
        path,
        http_version,
        status,
        nbytes,
        duration * 1000.0,
    )
