"""receive() as asyncio and anyio code uses it: concurrent receivers, receive() wrapped in
tasks and futures, receive() cancelled before it ran, a disconnect listener beside a streaming
response. Each route records what it saw in RESULTS; /result?token=T returns it."""

import asyncio
import json
from urllib.parse import parse_qs

import anyio

RESULTS: dict[str, dict] = {}


def query(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


async def respond(send, obj, status=200):
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_all(receive) -> bytes:
    parts = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise ConnectionError(msg["type"])
        parts.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(parts)


async def concurrent(scope, receive, send, q):
    """Reads the body, then waits in ``n`` concurrent receive() calls (the client leaves)."""
    token = q["token"]
    await read_all(receive)
    n = int(q.get("n", 3))
    RESULTS[token] = {"state": "waiting"}
    got = await asyncio.gather(*(receive() for _ in range(n)))
    RESULTS[token] = {"state": "done", "types": [m["type"] for m in got]}


async def timed_out_then_disconnect(scope, receive, send, q):
    """Three receive() calls that time out one after another, then one that waits for the
    client to leave."""
    token = q["token"]
    await read_all(receive)
    seen = []
    for _ in range(3):
        try:
            seen.append((await asyncio.wait_for(receive(), 0.2))["type"])
        except asyncio.TimeoutError:
            seen.append(None)
    RESULTS[token] = {"state": "waiting", "seen": seen}
    msg = await asyncio.wait_for(receive(), 10)
    RESULTS[token] = {"state": "done", "seen": seen, "last": msg["type"]}


async def in_tasks(scope, receive, send, q):
    """receive() handed to asyncio.create_task, asyncio.ensure_future and anyio."""
    out = {}
    first = await asyncio.create_task(receive())
    out["create_task"] = [first["type"], first.get("body", b"").decode()]
    second = await asyncio.ensure_future(receive())
    out["ensure_future"] = [second["type"], second.get("body", b"").decode()]
    async with anyio.create_task_group() as tg:
        box = {}

        async def take():
            box["msg"] = await receive()

        tg.start_soon(take)
    out["anyio"] = [box["msg"]["type"], box["msg"].get("body", b"").decode()]
    out["is_coroutine"] = asyncio.iscoroutine(receive())
    await respond(send, out)


async def cancelled_before_start(scope, receive, send, q):
    """A receive() cancelled before it ever ran must not take the body with it."""
    await asyncio.sleep(0.2)  # the body is in the server's hands now
    fut = asyncio.ensure_future(receive())
    fut.cancel()
    await asyncio.sleep(0)
    task = asyncio.create_task(receive())
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    body = await read_all(receive)
    await respond(send, {"body": body.decode(), "fut_cancelled": fut.cancelled()})


async def listener(scope, receive, send, q):
    """Starlette's StreamingResponse pattern: an anyio task listens for http.disconnect while
    another streams; the listener's disconnect cancels the stream."""
    token = q["token"]
    await read_all(receive)
    RESULTS[token] = {"state": "streaming", "sent": 0}
    await send({"type": "http.response.start", "status": 200, "headers": []})

    async def listen(scope_):
        msg = await receive()
        RESULTS[token]["listener"] = msg["type"]
        scope_.cancel()

    async def stream():
        while True:
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            RESULTS[token]["sent"] += 1
            await anyio.sleep(0.05)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen, tg.cancel_scope)
            await stream()
    except OSError as exc:
        RESULTS[token]["send_error"] = type(exc).__name__
    RESULTS[token]["state"] = "done"


async def result(scope, receive, send, q):
    await respond(send, RESULTS.get(q["token"]))


ROUTES = {
    "/concurrent": concurrent,
    "/timed-out": timed_out_then_disconnect,
    "/in-tasks": in_tasks,
    "/cancelled": cancelled_before_start,
    "/listener": listener,
    "/result": result,
}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await ROUTES[scope["path"]](scope, receive, send, query(scope))
