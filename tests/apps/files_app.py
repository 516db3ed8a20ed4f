"""ASGI file responses: Starlette's FileResponse (which uses http.response.pathsend when the
server offers it) and raw http.response.zerocopysend / pathsend messages. The file to serve is
named by the FILES_PATH environment variable."""

import os

from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route

PATH = os.environ.get("FILES_PATH", "")


async def file_response(request):
    return FileResponse(PATH, media_type="application/octet-stream")


starlette = Starlette(routes=[Route("/file", file_response)])


def _query(scope) -> dict:
    out = {}
    for part in scope["query_string"].decode().split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


async def raw(scope, receive, send):
    """/extensions: which file extensions the scope offers; /zerocopy?offset=&count=&parts=:
    the file in `parts` zerocopysend messages; /pathsend?path=: a bare pathsend."""
    q = _query(scope)
    if scope["path"] == "/extensions":
        names = ",".join(sorted(k for k in scope["extensions"] if "send" in k))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": names.encode()})
        return
    if scope["path"] == "/zerocopy-pipe":  # not a regular file: refused
        rd, wr = os.pipe()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.zerocopysend", "file": rd})
        finally:
            os.close(rd)
            os.close(wr)
        return
    if scope["path"] == "/pathsend":
        path = q.get("path", PATH)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": path})
        return
    offset, count = int(q.get("offset", 0)), int(q.get("count", 0))
    parts = int(q.get("parts", 1))
    headers = [(b"content-length", str(count).encode())] if q.get("cl") else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    with open(PATH, "rb") as f:
        step = count // parts
        for i in range(parts):
            n = step if i < parts - 1 else count - step * (parts - 1)
            if i == 0:
                msg = {"offset": offset, "count": n}
            else:
                msg = {"count": n}  # from the file's position: where the last part left it
                f.seek(offset + step * i)
            await send({"type": "http.response.zerocopysend", "file": f, **msg, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        return
    if scope["path"] == "/file":
        return await starlette(scope, receive, send)
    return await raw(scope, receive, send)
