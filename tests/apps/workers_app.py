"""An app for the process-model tests (tests/test_workers.py): every answer names the worker
that gave it. The tests copy this file into a directory of their own when they edit it
(reloads), so VERSION is what the code on disk said when the worker imported it."""

import asyncio
import os
import threading
import time

VERSION = "1"
_leak = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("WORKERS_APP_FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
                    return
                await send({"type": "lifespan.startup.complete"})
                crash = os.environ.get("WORKERS_APP_CRASH")
                if crash:  # a worker that dies soon after it started serving
                    threading.Timer(float(crash), os._exit, (1,)).start()
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if path == "/sleep":
        await asyncio.sleep(float(query.get("s", "0.01")))
    elif path == "/block":
        time.sleep(float(query.get("s", "30")))  # stalls this worker's event loop
    elif path == "/leak":
        _leak.append(b"\1" * (int(query.get("mib", "1")) << 20))  # touched: resident
    body = f"{os.getpid()} {VERSION}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
