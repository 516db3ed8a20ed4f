"""The app h2spec talks to (tests/test_h2spec.py): any method, any path. It reads the whole
request body, then answers 200 with a short body: h2spec skips its flow-control cases when the
answer to a GET has no body."""

BODY = b"Hello, world!"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # run with --lifespan off
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        if not msg.get("more_body", False):
            break
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
