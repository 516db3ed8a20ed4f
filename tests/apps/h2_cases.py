"""Routes for tests/test_http2.py. The same app serves HTTP/1.1 and HTTP/2: what differs is
below the stream, and these routes show what the app sees.

/echo          200, "<http_version> <method> <path> <query> <body length>", plus the request's
               headers (JSON) and request trailers
/big?n=N       N bytes of "x" in 16 KiB messages (each send() waits for the peer's window)
/trailers      a body in two messages, then trailers in two messages (more_trailers)
/slow-read     sleeps 1 s before reading the body, then answers its length
/wait          waits for http.disconnect, then records it under the query as its key
/events?key=K  what /wait recorded for K ("none" while nothing)
/fail-after-start  starts a response, sends part of the body, then raises
/sleep?s=S     answers after S seconds
/head-or-204   GET: 204 with a body the server must drop; HEAD: like GET with a length
"""

import asyncio
import json

EVENTS: dict[str, str] = {}


async def read_body(receive):
    body = b""
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


def query(scope) -> dict:
    out = {}
    for part in scope["query_string"].decode().split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


async def respond(send, status, body, headers=()):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    q = query(scope)
    if path == "/echo":
        body = await read_body(receive)
        ext = scope["extensions"]
        info = {
            "line": f"{scope['http_version']} {scope['method']} {path} "
            f"{scope['query_string'].decode()} {len(body or b'')}",
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "trailers": [
                [k.decode(), v.decode()] for k, v in ext.get("pronghorn.request_trailers") or []
            ],
            "extensions": sorted(ext),
            "scheme": scope["scheme"],
        }
        await respond(
            send, 200, json.dumps(info).encode(), [(b"content-type", b"application/json")]
        )
    elif path == "/big":
        n = int(q.get("n", "1000000"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 16384
        while n > 0:
            part = chunk[: min(n, len(chunk))]
            n -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": n > 0})
    elif path == "/trailers":
        await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"part1,", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-first", b"1")],
                "more_trailers": True,
            }
        )
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})
    elif path == "/slow-read":
        await asyncio.sleep(1.0)
        body = await read_body(receive)
        await respond(send, 200, str(len(body or b"")).encode())
    elif path == "/wait":
        key = q.get("key", "")
        EVENTS[key] = "waiting"
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                EVENTS[key] = "disconnected"
                return
    elif path == "/events":
        await respond(send, 200, EVENTS.get(q.get("key", ""), "none").encode())
    elif path == "/fail-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("failing after the response started (expected by the test)")
    elif path == "/sleep":
        await asyncio.sleep(float(q.get("s", "1")))
        await respond(send, 200, b"slept")
    elif path == "/head-or-204":
        if scope["method"] == "HEAD":
            await respond(send, 200, b"twelve bytes", [(b"content-length", b"12")])
        else:
            await respond(send, 204, b"dropped")
    else:
        await respond(send, 404, b"not found")
