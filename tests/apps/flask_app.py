"""A Flask app served as WSGI: a view, JSON, a urlencoded form, a multipart upload, a streamed
response (stream_with_context), a file through wsgi.file_wrapper (send_file), and the URL
Flask builds from SCRIPT_NAME and wsgi.url_scheme."""

import hashlib
import threading

from flask import Flask, Response, abort, request, send_file, stream_with_context, url_for

app = Flask(__name__)

EVENTS: dict[str, threading.Event] = {}
LOCK = threading.Lock()


def event(token: str) -> threading.Event:
    with LOCK:
        return EVENTS.setdefault(token, threading.Event())


@app.get("/")
def home():
    return Response("flask home", mimetype="text/plain")


@app.get("/items/<int:item_id>")
def item(item_id):
    return {"item_id": item_id, "q": request.args.get("q")}


@app.post("/form")
def form():
    return {"form": request.form.to_dict(), "method": request.method}


@app.post("/upload")
def upload():
    f = request.files["file"]
    data = f.read()
    return {
        "name": request.form["name"],
        "filename": f.filename,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


@app.get("/stream")
def stream():
    """``n`` events; with a ``token`` each after the first waits for ``/release``. The
    generator reads ``request.args`` while it runs: only stream_with_context keeps it there."""
    n, token = int(request.args.get("n", 3)), request.args.get("token")

    @stream_with_context
    def events():
        for i in range(n):
            if i and token:
                event(token).wait(10)
            yield f"data: {i} {request.args.get('tag', '')}\n\n"

    return Response(events(), mimetype="text/event-stream")


@app.get("/release")
def release():
    event(request.args["token"]).set()
    return "released"


@app.get("/file")
def file():
    """The file at ``path`` with send_file (conditional: Range and If-Modified-Since work)."""
    path = request.args.get("path")
    if not path:
        abort(400)
    return send_file(path, mimetype="application/octet-stream", conditional=True)


@app.get("/where")
def where():
    return {
        "script_root": request.script_root,
        "path": request.path,
        "home": url_for("home"),
        "external": url_for("item", item_id=7, _external=True),
        "scheme": request.scheme,
    }
