"""An app for the logging, metrics and uvicorn-parity tests (tests/test_observability.py)."""

import asyncio
import json
import os


async def respond(send, body=b"ok", status=200, headers=()):
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})


def query(scope):
    pairs = [p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p]
    return dict(pairs)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, q = scope["path"], query(scope)
    if path == "/stream":
        # Server-sent-events style: a chunk every few ms until the client leaves (send()
        # raises ClientDisconnected then: the app lets it escape, as Starlette apps do).
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
            await asyncio.sleep(0.005)
    if path == "/finite":
        n = int(q.get("n", "3"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(n):
            await send({"type": "http.response.body", "body": b"12345", "more_body": True})
            await asyncio.sleep(float(q.get("s", "0.01")))
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/error-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom-after-start")
    if path == "/cancel":
        raise asyncio.CancelledError()
    if path == "/empty":
        return await respond(send, b"", status=204)
    if path == "/echo":
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        return await respond(send, body)
    if path == "/slow":
        await asyncio.sleep(float(q.get("s", "1")))
        return await respond(send, b"slow")
    if path == "/env":
        return await respond(send, os.environ.get(q.get("name", ""), "<unset>").encode())
    if path == "/server":
        return await respond(send, json.dumps(scope["server"]).encode())
    if path == "/own-server":
        return await respond(send, headers=[(b"server", b"mine")])
    if path == "/headers":
        return await respond(send, headers=[(b"x-out", b"out-value"), (b"content-type", b"text/x")])
    return await respond(send, b"Hello, world!")


def create_app():
    """A factory, for the auto-detection test (used without --factory)."""
    return app
