"""Every http request is answered with its scope as JSON (bytes as latin-1, tuples as lists)."""

import json

from basic import jsonable, lifespan, read_body


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    await read_body(receive)
    body = json.dumps(jsonable(scope)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
