"""A page for a real browser: its script fetches /info (the request's scope facts as JSON)
and writes what came back into the document, so a dump of the DOM shows that the browser
ran the page, made a second request on the same origin, and over which HTTP version.
/ws-page opens a WebSocket to /ws (an echo) and writes what came back."""

import json

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>pronghorn</title></head>
<body><p id="out">waiting</p>
<script>
fetch("/info").then(r => r.json()).then(info => {
  document.getElementById("out").textContent =
    "fetched http_version=" + info.http_version + " scheme=" + info.scheme +
    " tls_version=" + info.tls_version;
}).catch(e => { document.getElementById("out").textContent = "failed " + e; });
</script></body></html>
"""


WS_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>pronghorn ws</title></head>
<body><p id="out">waiting</p>
<script>
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
const ws = new WebSocket(scheme + location.host + "/ws");
ws.onopen = () => ws.send("hello from the browser");
ws.onmessage = (e) => {
  document.getElementById("out").textContent = "echoed: " + e.data;
  ws.close();
};
ws.onerror = () => { document.getElementById("out").textContent = "websocket error"; };
</script></body></html>
"""


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": msg.get("text") or ""})
    if scope["type"] != "http":
        return
    if scope["path"] == "/info":
        tls = scope["extensions"].get("tls") or {}
        body = json.dumps(
            {
                "http_version": scope["http_version"],
                "scheme": scope["scheme"],
                "tls_version": hex(tls.get("tls_version", 0)),
            }
        ).encode()
        ctype = b"application/json"
    elif scope["path"] == "/":
        body, ctype = PAGE, b"text/html; charset=utf-8"
    elif scope["path"] == "/ws-page":
        body, ctype = WS_PAGE, b"text/html; charset=utf-8"
    else:
        body, ctype = b"not found", b"text/plain"
    status = 404 if body == b"not found" else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
