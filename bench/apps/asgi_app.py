"""The benchmark's ASGI app, served unchanged by every ASGI server.

Routes (anything else is 404):
  GET  /        13-byte "Hello, world!"
  GET  /10k     10,240-byte body
  POST /echo    the request body, echoed back
  GET  /sleep   "Hello, world!" after ``asyncio.sleep(0.01)``
  GET  /file1m  a 1 MiB file through Starlette's FileResponse (starlette_app.py, imported on
                the first such request, so the scenarios that run before it never load it)
  WS   /ws      WebSocket echo: accepts, then sends back every message as it came (text as
                text, bytes as bytes) until the client disconnects; any other WebSocket path
                is refused (closed before the accept: the server answers 403)

Plain ASGI 3 with no framework, so the figures measure the server and not the app (except
/file1m, whose point is Starlette's FileResponse).
"""

import asyncio

from bodies import BODY_10K, HELLO


def _start(body):
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode("ascii")),
        ],
    }


HELLO_START = _start(HELLO)
HELLO_BODY = {"type": "http.response.body", "body": HELLO}
BIG_START = _start(BODY_10K)
BIG_BODY = {"type": "http.response.body", "body": BODY_10K}
NOT_FOUND_START = {
    "type": "http.response.start",
    "status": 404,
    "headers": [(b"content-length", b"0")],
}
EMPTY_BODY = {"type": "http.response.body", "body": b""}
WS_ACCEPT = {"type": "websocket.accept"}
WS_REFUSE = {"type": "websocket.close", "code": 1008}
_starlette_app = None


def _file_app():
    global _starlette_app
    if _starlette_app is None:
        from starlette_app import app as _starlette_app
    return _starlette_app


async def app(scope, receive, send):
    if scope["type"] == "http":
        path = scope["path"]
        if path == "/":
            await send(HELLO_START)
            await send(HELLO_BODY)
        elif path == "/10k":
            await send(BIG_START)
            await send(BIG_BODY)
        elif path == "/echo":
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(chunks)
            await send(_start(body))
            await send({"type": "http.response.body", "body": body})
        elif path == "/sleep":
            await asyncio.sleep(0.01)
            await send(HELLO_START)
            await send(HELLO_BODY)
        elif path == "/file1m":
            await _file_app()(scope, receive, send)
        else:
            await send(NOT_FOUND_START)
            await send(EMPTY_BODY)
    elif scope["type"] == "websocket":
        await _ws_echo(scope, receive, send)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _ws_echo(scope, receive, send):
    message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws":
        await send(WS_REFUSE)
        return
    await send(WS_ACCEPT)
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":  # websocket.disconnect
            return
        # a message is text or bytes: the other key is absent or None
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
