"""ASGI lifespan protocol: startup before the first request, shutdown after the last.

Runs once per process and touches no request, so it stays in Python.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("pronghorn.error")


class LifespanFailed(Exception):
    """Startup failed (the app said so, or raised with --lifespan on)."""


class Lifespan:
    def __init__(self, app: Any, mode: str, state: dict) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self.supported = True
        self._receive_queue: asyncio.Queue[dict] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failed: str | None = None
        self._task: asyncio.Task | None = None

    async def startup(self) -> None:
        """Raises LifespanFailed when startup fails; returns quietly when the app has no
        lifespan support and the mode is auto."""
        if self.mode == "off":
            self.supported = False
            return
        logger.info("Waiting for application startup.")
        self._task = asyncio.get_running_loop().create_task(self._run())
        await self._receive_queue.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failed is not None:
            raise LifespanFailed(self._failed)
        if self.supported:
            logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        logger.info("Waiting for application shutdown.")
        await self._receive_queue.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failed is not None:
            logger.error("Application shutdown failed: %s", self._failed)
        else:
            logger.info("Application shutdown complete.")

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "state": self.state,
        }
        logger.debug("Lifespan: calling the app with the lifespan scope (--lifespan %s)", self.mode)
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: BLE001 - reported, never raised further
            if not self._startup_done.is_set() and self.mode == "auto":
                # An app without lifespan support typically raises on the unknown scope type.
                self.supported = False
                logger.info("ASGI 'lifespan' protocol appears unsupported.")
            else:
                self._failed = f"{type(exc).__name__}: {exc}"
                logger.error("Exception in 'lifespan' protocol", exc_info=exc)
        else:
            if not self._startup_done.is_set():
                # Returned without a word about lifespan (as uvicorn allows): nothing to run.
                self.supported = False
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> dict:
        message = await self._receive_queue.get()
        logger.debug("Lifespan: sent %s to the app", message.get("type"))
        return message

    async def _send(self, message: dict) -> None:
        kind = message.get("type")
        logger.debug("Lifespan: the app sent %s", kind)
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._failed = message.get("message") or "startup failed"
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._failed = message.get("message") or "shutdown failed"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message type {kind!r}")
