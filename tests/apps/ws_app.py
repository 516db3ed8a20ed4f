"""A raw ASGI app for the WebSocket tests: one behaviour per path.

/echo           accept, echo every message (text as text, bytes as bytes) until disconnect
/subprotocol    accept with the first subprotocol offered, and a header; send the scope facts
/deny           websocket.close before accept (the client sees 403)
/refuse         return without accepting (403)
/raise          raise before accepting (500)
/raise-after    accept, then raise (close 1011)
/respond        answer the handshake with an HTTP 418 response (websocket.http.response)
/close          accept, then close with 4321 "bye"; report what receive() says after
/server-close   accept, send "hi", close 1000; the test checks the close frame
/slow           accept, sleep 1 s before each receive (backpressure on the reader)
/flood          accept, send N messages of SIZE bytes as fast as send() lets it (?n=&size=)
/send-after-close  accept, close, then send: reports the exception
/disconnect     record the websocket.disconnect code and reason; /result returns them
/scope          accept, send the scope (minus non-JSON parts) as JSON text
/late-accept    wait 1 s before accepting (a handshake the shutdown overtakes)
/http           a plain HTTP endpoint (200 "plain")
"""

import asyncio
import json

RESULTS: dict = {}


async def _http(scope, receive, send):
    if scope["path"] == "/result":
        body = json.dumps(RESULTS).encode()
    else:
        body = b"plain"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _query(scope):
    out = {}
    for part in scope["query_string"].decode().split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        return await _http(scope, receive, send)
    assert scope["type"] == "websocket"
    path = scope["path"]
    msg = await receive()
    assert msg == {"type": "websocket.connect"}, msg

    if path == "/deny":
        await send({"type": "websocket.close"})
        return
    if path == "/refuse":
        return
    if path == "/raise":
        raise RuntimeError("boom before accept")
    if path == "/respond":
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 418,
                "headers": [(b"content-type", b"text/plain"), (b"x-why", b"teapot")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"websocket here"})
        return

    if path == "/late-accept":
        await asyncio.sleep(1)
    if path == "/subprotocol":
        offered = scope["subprotocols"]
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": offered[0] if offered else None,
                "headers": [(b"x-extra", b"yes")],
            }
        )
        await send({"type": "websocket.send", "text": json.dumps({"subprotocols": offered})})
        await receive()
        return
    await send({"type": "websocket.accept"})

    if path == "/raise-after":
        raise RuntimeError("boom after accept")
    if path == "/scope":
        facts = {
            k: v
            for k, v in scope.items()
            if k not in ("headers", "state", "client", "server", "raw_path", "query_string")
        }
        facts["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
        facts["raw_path"] = scope["raw_path"].decode()
        facts["query_string"] = scope["query_string"].decode()
        facts["client"] = list(scope["client"])
        facts["has_method"] = "method" in scope
        await send({"type": "websocket.send", "text": json.dumps(facts)})
        await receive()
        return
    if path == "/close":
        await send({"type": "websocket.close", "code": 4321, "reason": "bye"})
        after = await receive()
        RESULTS["close"] = after
        return
    if path == "/server-close":
        await send({"type": "websocket.send", "text": "hi"})
        await send({"type": "websocket.close", "code": 1000})
        return
    if path == "/send-after-close":
        await send({"type": "websocket.close"})
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except Exception as e:  # noqa: BLE001
            RESULTS["send_after_close"] = [type(e).__name__, isinstance(e, OSError)]
        else:
            RESULTS["send_after_close"] = ["no error", False]
        return
    if path == "/disconnect":
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                RESULTS["disconnect"] = msg
                return
    if path == "/flood":
        q = _query(scope)
        n, size = int(q.get("n", "100")), int(q.get("size", "65536"))
        chunk = b"x" * size
        for _ in range(n):
            await send({"type": "websocket.send", "bytes": chunk})
        RESULTS["flood_done"] = True
        await receive()
        return
    if path == "/slow":
        while True:
            await asyncio.sleep(1)
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "ok"})

    # /echo and anything else
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await send({"type": "websocket.send", "text": msg["text"]})
        else:
            await send({"type": "websocket.send", "bytes": msg["bytes"]})
