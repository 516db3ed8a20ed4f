"""Apps with different lifespan behaviours."""

import asyncio
import json
import sys


async def respond_json(send, obj):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(obj).encode()})


async def ok_app(scope, receive, send):
    """Startup fills ``state``; requests return their ``state``; shutdown prints a marker."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await asyncio.sleep(0.01)
                scope["state"]["db"] = "connected"
                scope["state"]["items"] = ["a"]
                print("STARTUP-DONE", flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await asyncio.sleep(0.01)
                print("SHUTDOWN-DONE", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    await respond_json(send, {"state": dict(scope.get("state", {}))})


async def failing_app(scope, receive, send):
    """Startup fails with a message: the server must exit non-zero and show the message."""
    if scope["type"] == "lifespan":
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database unreachable 7731"})
        return
    await respond_json(send, {})


async def raising_app(scope, receive, send):
    """Startup raises: with --lifespan on the server must exit non-zero."""
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("startup exploded 4242")
    await respond_json(send, {"served": True})


async def no_lifespan_app(scope, receive, send):
    """An app that knows only http (rejects lifespan like many simple apps do)."""
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']}")
    await respond_json(send, {"served": True})


async def slow_shutdown_app(scope, receive, send):
    """Lifespan shutdown prints markers; /sleep?s=N sleeps before answering."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                print("SHUTDOWN-DONE", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    qs = scope["query_string"].decode()
    seconds = float(qs.split("=", 1)[1]) if qs.startswith("s=") else 0
    print(f"REQUEST-START {scope['path']}", flush=True)
    await asyncio.sleep(seconds)
    print(f"REQUEST-END {scope['path']}", file=sys.stderr, flush=True)
    await respond_json(send, {"slept": seconds})


async def returning_app(scope, receive, send):
    """Ignores every scope but http by returning at once (a common minimal-app pattern)."""
    if scope["type"] != "http":
        return
    await respond_json(send, {"served": True})
