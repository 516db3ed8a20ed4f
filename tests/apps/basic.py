"""The general-purpose ASGI test app: one route per behaviour the tests look at.

Side channels: ``/progress?token=T`` returns what a long-running request with that token has
recorded in ``PROGRESS`` (so a test can look into a request that is stalled or disconnected).
"""

import asyncio
import gc
import hashlib
import json
import logging
import mmap
import os
import sys
import time
from urllib.parse import parse_qs

PROGRESS: dict[str, dict] = {}
EVENTS: dict[str, asyncio.Event] = {}


def jsonable(value):
    """The scope in JSON form: bytes -> latin-1 str, tuples -> lists."""
    if isinstance(value, bytes | bytearray):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def query(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}


def event(token: str) -> asyncio.Event:
    if token not in EVENTS:
        EVENTS[token] = asyncio.Event()
    return EVENTS[token]


async def respond(send, body=b"", status=200, headers=(), content_type=b"text/plain"):
    if isinstance(body, str):
        body = body.encode()
    hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    hdrs += list(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, obj, status=200):
    await respond(send, json.dumps(obj).encode(), status, content_type=b"application/json")


async def read_body(receive):
    """The whole body plus how it arrived: (body, number of chunks, more_body flags)."""
    chunks = []
    flags = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        assert msg["type"] == "http.request", msg
        chunks.append(msg.get("body", b""))
        flags.append(msg.get("more_body", False))
        if not msg.get("more_body", False):
            return b"".join(chunks), len(chunks), flags


async def lifespan(scope, receive, send):
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            if "state" in scope:
                scope["state"]["started"] = True
                scope["state"]["counter"] = 0
                scope["state"]["shared"] = []
            print("BASIC-LIFESPAN-STARTUP", file=sys.stderr, flush=True)
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            print("BASIC-LIFESPAN-SHUTDOWN", file=sys.stderr, flush=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    assert scope["type"] == "http"
    path = scope["path"]
    q = query(scope)
    route = ROUTES.get(path)
    if route is None:
        if path.startswith("/status/"):
            return await status_route(scope, receive, send, int(path.rsplit("/", 1)[1]))
        # everything else: a small fixed answer (the access-log example is 13 bytes)
        return await respond(send, b"Hello, world!")
    return await route(scope, receive, send, q)


# -- routes ------------------------------------------------------------------------------------


async def hello(scope, receive, send, q):
    await respond(send, b"Hello, world!")


async def scope_route(scope, receive, send, q):
    await read_body(receive)
    await respond_json(send, jsonable(scope))


async def echo(scope, receive, send, q):
    body, _, _ = await read_body(receive)
    await respond(send, body, content_type=b"application/octet-stream")


async def echo_info(scope, receive, send, q):
    """Stream the body through a hash without keeping it; report how it arrived."""
    h = hashlib.sha256()
    n = 0
    chunks = 0
    max_chunk = 0
    flags = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body = msg.get("body", b"")
        h.update(body)
        n += len(body)
        chunks += 1
        max_chunk = max(max_chunk, len(body))
        flags.append(msg.get("more_body", False))
        if not msg.get("more_body", False):
            break
    await respond_json(
        send,
        {
            "length": n,
            "sha256": h.hexdigest(),
            "chunks": chunks,
            "max_chunk": max_chunk,
            "last_more_body": flags[-1],
            "all_but_last_more": all(flags[:-1]),
        },
    )


async def ident(scope, receive, send, q):
    """Answers with its ``n`` after sleeping ``s`` seconds (pipelining order)."""
    await read_body(receive)
    await asyncio.sleep(float(q.get("s", 0)))
    await respond(send, q.get("n", "").encode())


async def sleep_route(scope, receive, send, q):
    token = q.get("token")
    if token:
        PROGRESS[token] = {"state": "sleeping"}
    print(f"SLEEP-START {q.get('s')}", file=sys.stderr, flush=True)
    await asyncio.sleep(float(q.get("s", 1)))
    if token:
        PROGRESS[token] = {"state": "done"}
    await respond(send, b"slept")


async def chunked_route(scope, receive, send, q):
    """No Content-Length: chunked on HTTP/1.1, close-delimited on HTTP/1.0."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-route", b"ch")]})
    for part in (b"first,", b"second,", b"third"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def stream_route(scope, receive, send, q):
    n = int(q.get("n", 10))
    size = int(q.get("size", 1000))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for i in range(n):
        await send(
            {"type": "http.response.body", "body": bytes([65 + i % 26]) * size, "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


async def cl_long(scope, receive, send, q):
    """Declares 5 bytes, sends 10: an app error."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"0123456789"})


async def cl_short(scope, receive, send, q):
    """Declares 10 bytes, sends 5 and finishes: an app error."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
    )
    await send({"type": "http.response.body", "body": b"01234", "more_body": False})


async def status_route(scope, receive, send, status):
    """Any status; the app tries to send a body too (204/304/HEAD must not carry it)."""
    await read_body(receive)
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"" if status in (204, 304) else b"body"})


async def bad_header_name(scope, receive, send, q):
    await respond(send, b"never", headers=[(b"x-bad\r\ninjected", b"yes")])


async def bad_header_value(scope, receive, send, q):
    await respond(send, b"never", headers=[(b"x-bad", b"a\r\ninjected: yes")])


async def error_before(scope, receive, send, q):
    raise RuntimeError("boom-before-start")


async def error_after(scope, receive, send, q):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("boom-after-start")


async def no_response(scope, receive, send, q):
    return None


async def custom_headers(scope, receive, send, q):
    await respond(
        send, b"ok", headers=[(b"x-app", b"1"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    )


async def continue_read(scope, receive, send, q):
    """For Expect: 100-continue: waits ``s`` seconds, then reads the body."""
    await asyncio.sleep(float(q.get("s", 0)))
    body, _, _ = await read_body(receive)
    await respond(send, f"got {len(body)}".encode())


async def no_read(scope, receive, send, q):
    """Answers without reading the request body."""
    await respond(send, b"not reading")


async def state_route(scope, receive, send, q):
    """Returns the request's state, then changes it (a shallow copy must not leak the change)."""
    state = scope.get("state", {})
    snapshot = jsonable(dict(state))
    if "counter" in state:
        state["counter"] += 1
        state["shared"].append(1)
        state["added"] = "by-request"
    await respond_json(send, snapshot)


async def slow_upload(scope, receive, send, q):
    """Reads one chunk, then waits for /resume?token=T before reading the rest."""
    token = q["token"]
    first = await receive()
    h = hashlib.sha256(first.get("body", b""))
    n = len(first.get("body", b""))
    PROGRESS[token] = {"state": "paused", "received": n}
    await event(token).wait()
    more = first.get("more_body", False)
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        body = msg.get("body", b"")
        h.update(body)
        n += len(body)
        PROGRESS[token] = {"state": "reading", "received": n}
        more = msg.get("more_body", False)
    PROGRESS[token] = {"state": "done", "received": n}
    await respond_json(send, {"length": n, "sha256": h.hexdigest()})


async def download(scope, receive, send, q):
    """Sends ``n`` chunks of 1 MiB (chunk i is bytes([i % 256]) * 1 MiB), counting progress."""
    token = q["token"]
    n = int(q.get("n", 64))
    mib = 1 << 20
    PROGRESS[token] = {"sent": 0, "n": n}
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(n * mib).encode())],
        }
    )
    for i in range(n):
        await send(
            {"type": "http.response.body", "body": bytes([i % 256]) * mib, "more_body": True}
        )
        PROGRESS[token] = {"sent": i + 1, "n": n}
    await send({"type": "http.response.body", "body": b""})
    PROGRESS[token]["done"] = True


async def wait_disconnect(scope, receive, send, q):
    """Reads the body, then waits on receive() for http.disconnect; then tries to send."""
    token = q["token"]
    PROGRESS[token] = {"state": "reading"}
    more = True
    while more:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            PROGRESS[token] = {"state": "disconnected-early", "message": msg["type"]}
            break
        more = msg.get("more_body", False)
    else:
        PROGRESS[token] = {"state": "waiting"}
        msg = await receive()
        PROGRESS[token] = {"state": "received", "message": msg["type"]}
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})
        PROGRESS[token]["send"] = "no error"
    except BaseException as exc:  # noqa: BLE001 - recording what the server raised
        PROGRESS[token]["send"] = type(exc).__name__
        PROGRESS[token]["send_is_oserror"] = isinstance(exc, OSError)
        PROGRESS[token]["send_mro"] = [c.__name__ for c in type(exc).__mro__]


PATTERN = bytes(range(256)) * 4096  # 1 MiB; byte i of a /big body is i % 256


def pattern(size: int) -> bytes:
    """The first ``size`` bytes of every /big body (what a client hashes it against)."""
    whole, rest = divmod(size, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


async def big(scope, receive, send, q):
    """``size`` bytes of the pattern in ``chunk``-byte messages (the first one ``first`` bytes);
    ``cl=0`` leaves the length out (chunked on HTTP/1.1, close-delimited on HTTP/1.0)."""
    size = int(q.get("size", 1 << 20))
    chunk = int(q.get("chunk", 1 << 20))
    first = int(q.get("first", chunk))  # the first message may be shorter
    headers = [(b"content-type", b"application/octet-stream")]
    if q.get("cl", "1") == "1":
        headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    sent = 0
    while sent < size:
        n = min(first if sent == 0 else chunk, size - sent)
        start = sent % len(PATTERN)
        if start + n <= len(PATTERN):
            part = PATTERN[start : start + n]
        else:
            part = (PATTERN * ((start + n) // len(PATTERN) + 1))[start : start + n]
        sent += n
        await send({"type": "http.response.body", "body": part, "more_body": sent < size})
    if size == 0:
        await send({"type": "http.response.body", "body": b""})


async def huge(scope, receive, send, q):
    """One body message of ``size`` bytes (default 4 GiB + 16) from an anonymous mapping: zero
    pages, except a marker at each 1 GiB boundary and at the end, so a length truncated to 32
    bits or a wrapped offset shows."""
    size = int(q.get("size", (4 << 30) + 16))
    m = mmap.mmap(-1, size)
    for gib in range(1, size >> 30):
        m[(gib << 30) - 8 : (gib << 30)] = b"GiB-%03d|" % gib
    m[size - 8 :] = b"THE-END!"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(size).encode())],
        }
    )
    await send({"type": "http.response.body", "body": memoryview(m)})


async def block(scope, receive, send, q):
    """Blocks the event loop for ``s`` seconds (an app doing blocking work)."""
    time.sleep(float(q.get("s", 1)))
    await respond(send, b"blocked")


async def te_chunked(scope, receive, send, q):
    """The app frames its own body: Transfer-Encoding: chunked, in two parts."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"transfer-encoding", b"chunked")],
        }
    )
    await send({"type": "http.response.body", "body": b"part1,", "more_body": True})
    await send({"type": "http.response.body", "body": b"part2"})


async def retry_start(scope, receive, send, q):
    """A rejected http.response.start, then a valid one: nothing of the first may stick."""
    bad = {
        "chunked": [(b"transfer-encoding", b"chunked"), (b"content-length", b"3")],
        "close": [(b"connection", b"close"), (b"x-bad", b"a\r\nb")],
    }[q.get("first", "chunked")]
    try:
        await send({"type": "http.response.start", "status": 200, "headers": bad})
    except ValueError:
        pass
    await respond(send, b"ok!")


async def status_cl(scope, receive, send, q):
    """Any status, with a Content-Length the app sets (and tries to send a body)."""
    status = int(q.get("status", 204))
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"" if status in (204, 304) else b"12345"})


async def str_body(scope, receive, send, q):
    """An app bug: a str body (not bytes)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": "text"})


async def double_start(scope, receive, send, q):
    """An app bug: http.response.start twice."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"never"})


async def bad_status(scope, receive, send, q):
    """An app bug: a status that does not fit in 32 bits (2**32 + 200)."""
    await send({"type": "http.response.start", "status": int(q.get("status", 2**32 + 200))})
    await send({"type": "http.response.body", "body": b"never"})


class _Str(str):
    pass


async def message_types(scope, receive, send, q):
    """Message types spelled as a str subclass, as a string built at run time (not interned),
    or (?kind=bad) as a near miss of the right one."""
    if q.get("kind") == "bad":
        start, body = "http.response.star", "http.response.body"
    elif q.get("kind") == "subclass":
        start, body = _Str("http.response.start"), _Str("http.response.body")
    else:
        start, body = "".join(["http.response.", "start"]), "".join(["http.", "response.body"])
    await send({"type": start, "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": body, "body": b"ok"})


async def no_start_then_stuck(scope, receive, send, q):
    """Never answers (for graceful-shutdown timeouts)."""
    await asyncio.sleep(3600)


async def progress(scope, receive, send, q):
    await respond_json(send, PROGRESS.get(q["token"]))


async def resume(scope, receive, send, q):
    event(q["token"]).set()
    await respond(send, b"resumed")


async def pid_route(scope, receive, send, q):
    await respond(send, str(os.getpid()).encode())


async def gc_route(scope, receive, send, q):
    """How many objects the collector skips (frozen at startup)."""
    frozen = gc.get_freeze_count()
    await respond_json(send, {"frozen": frozen})


async def loop_route(scope, receive, send, q):
    loop = asyncio.get_running_loop()
    await respond(send, type(loop).__module__.encode())


async def objects_route(scope, receive, send, q):
    """Live objects the garbage collector tracks, after a collection: a reference leaked per
    request (a scope, a message dict, a task) shows up here, not in LeakSanitizer."""
    gc.collect()
    await respond(send, str(len(gc.get_objects())).encode())


async def capture_logs(scope, receive, send, q):
    """Attach a handler to the server's access and error loggers that appends to a file.

    Shows that the lines really go through loggers named ``<server>.access`` / ``.error``.
    """
    prefix = os.environ.get("PRONGHORN_TEST_LOGGER_PREFIX", "pronghorn")
    path = q["file"]
    for name in ("access", "error"):
        logger = logging.getLogger(f"{prefix}.{name}")
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(f"{name.upper()}|%(name)s|%(message)s"))
        logger.addHandler(handler)
    await respond(send, b"capturing")


ROUTES = {
    "/": hello,
    "/scope": scope_route,
    "/echo": echo,
    "/echo-info": echo_info,
    "/id": ident,
    "/sleep": sleep_route,
    "/chunked": chunked_route,
    "/stream": stream_route,
    "/cl-long": cl_long,
    "/cl-short": cl_short,
    "/bad-header-name": bad_header_name,
    "/bad-header-value": bad_header_value,
    "/error-before": error_before,
    "/error-after": error_after,
    "/no-response": no_response,
    "/custom-headers": custom_headers,
    "/continue": continue_read,
    "/no-read": no_read,
    "/state": state_route,
    "/slow-upload": slow_upload,
    "/download": download,
    "/wait-disconnect": wait_disconnect,
    "/progress": progress,
    "/resume": resume,
    "/pid": pid_route,
    "/loop": loop_route,
    "/gc": gc_route,
    "/objects": objects_route,
    "/capture-logs": capture_logs,
    "/big": big,
    "/huge": huge,
    "/block": block,
    "/te-chunked": te_chunked,
    "/retry-start": retry_start,
    "/status-cl": status_cl,
    "/str-body": str_body,
    "/double-start": double_start,
    "/bad-status": bad_status,
    "/message-types": message_types,
    "/stuck": no_start_then_stuck,
}


async def send_after_done(scope, receive, send, q):
    """Sends again after the response completed: what does send() raise?"""
    token = q["token"]
    await respond(send, b"done")
    try:
        await send({"type": "http.response.body", "body": b"more"})
        PROGRESS[token] = {"raised": None}
    except BaseException as exc:  # noqa: BLE001 - recording what the server raised
        PROGRESS[token] = {"raised": type(exc).__name__, "oserror": isinstance(exc, OSError)}


ROUTES["/send-after-done"] = send_after_done
