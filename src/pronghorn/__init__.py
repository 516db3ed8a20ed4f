"""pronghorn: an ASGI application server whose request path is written in C."""

from __future__ import annotations

import dataclasses
from typing import Any

from pronghorn.config import Config, ConfigError

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "Server", "__version__", "run"]


def __getattr__(name: str) -> Any:
    # Server lives with the serving code, imported (with the C core) only when asked for.
    if name == "Server":
        from pronghorn.server import Server

        return Server
    raise AttributeError(f"module 'pronghorn' has no attribute {name!r}")


def run(app: Any, **options: Any) -> None:
    """Serve ``app`` ("module:attr" or an ASGI callable) until shut down.

    ``options`` are Config fields (``port=9000``, ``log_level="debug"``, ...). A bad option
    or an app that cannot be loaded raises ConfigError; a non-zero exit raises SystemExit.
    """
    known = {f.name for f in dataclasses.fields(Config)} - {"app"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"run(): unknown option {unknown[0]!r}")
    if options.get("env_file"):
        from pronghorn.config import load_env_file

        load_env_file(options["env_file"])
    config = Config(app=app, **options)

    from pronghorn import logs
    from pronghorn.server import serve

    logs.setup(config)
    code = serve(config)
    if code:
        raise SystemExit(code)
