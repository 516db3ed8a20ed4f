"""The plain WSGI test app (PEP 3333, no framework): one route per behaviour the tests look at.

Side channels, shared by the server's threads: ``/progress?token=T`` returns what a request with
that token has recorded in ``PROGRESS`` (how far a stream got, whether ``close()`` was called,
how much of a body was read), and ``/release?token=T`` lets a request waiting on that token go
on (a stream that must not yield its next part before the test has looked at the first).
Lines printed to stderr (``SLEEP-START``) land in the server log.
"""

import hashlib
import io
import json
import sys
import threading
import time
from urllib.parse import parse_qs

LOCK = threading.Lock()
PROGRESS: dict[str, dict] = {}
EVENTS: dict[str, threading.Event] = {}

HELLO = b"Hello, world!"


def query(environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def record(token, **values):
    if not token:
        return
    with LOCK:
        PROGRESS.setdefault(token, {}).update(values)


def bump(token, key, by=1):
    if not token:
        return
    with LOCK:
        state = PROGRESS.setdefault(token, {})
        state[key] = state.get(key, 0) + by


def event(token) -> threading.Event:
    with LOCK:
        if token not in EVENTS:
            EVENTS[token] = threading.Event()
        return EVENTS[token]


def respond(start_response, body=b"", status="200 OK", content_type="text/plain", headers=()):
    if isinstance(body, str):
        body = body.encode()
    start_response(
        status,
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def respond_json(start_response, obj, status="200 OK"):
    return respond(start_response, json.dumps(obj), status, "application/json")


# -- the environ ----------------------------------------------------------------------------

OBJECT_KEYS = ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper")
INPUT_METHODS = ("read", "readline", "readlines", "__iter__")
ERRORS_METHODS = ("write", "writelines", "flush")


def environ_route(environ, start_response, q):
    """The environ as JSON: plain values as they are (tuples as lists), the file-like objects by
    type name and by the methods PEP 3333 requires of them, and every value's type name."""
    values, objects, types = {}, {}, {}
    for key, value in environ.items():
        types[str(key)] = type(value).__name__
        if key in OBJECT_KEYS:
            continue
        if isinstance(value, str | int | bool | float) or value is None:
            values[key] = value
        elif isinstance(value, tuple):
            values[key] = list(value)
        else:
            objects[str(key)] = type(value).__name__
    for key in OBJECT_KEYS:
        if key in environ:
            objects[key] = type(environ[key]).__name__
    inp, err = environ.get("wsgi.input"), environ.get("wsgi.errors")
    body = inp.read() if inp is not None else b""
    out = {
        "environ": values,
        "objects": objects,
        "types": types,
        "non_str_keys": [repr(k) for k in environ if type(k) is not str],
        "input_methods": [m for m in INPUT_METHODS if callable(getattr(inp, m, None))],
        "errors_methods": [m for m in ERRORS_METHODS if callable(getattr(err, m, None))],
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
        "body_length": len(body),
    }
    return respond_json(start_response, out)


# -- the request body -----------------------------------------------------------------------


def echo(environ, start_response, q):
    body = environ["wsgi.input"].read()
    return respond(
        start_response, body, content_type=environ.get("CONTENT_TYPE") or "application/octet-stream"
    )


def echo_info(environ, start_response, q):
    """Length and SHA-256 of the body, read in pieces of ``size`` (default 64 KiB); with a
    ``token`` the bytes read so far are recorded as they come (``read``), so a test can see
    the app consuming a body the client has not finished sending."""
    token, size = q.get("token"), int(q.get("size", 65536))
    inp, digest, total = environ["wsgi.input"], hashlib.sha256(), 0
    record(token, read=0)
    while True:
        chunk = inp.read(size)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
        record(token, read=total)
    return respond_json(start_response, {"length": total, "sha256": digest.hexdigest()})


def latin1(parts):
    return [p.decode("latin-1") for p in parts]


def read_variants(environ, start_response, q):
    """wsgi.input's read methods; every part comes back as a latin-1 string, in order."""
    inp, mode, n = environ["wsgi.input"], q.get("mode", "read"), int(q.get("n", 3))
    if mode == "read_n":  # read(n) until b""
        parts = []
        while chunk := inp.read(n):
            parts.append(chunk)
    elif mode == "read_neg":  # read(-1) and read(None) both mean "the rest"
        parts = [inp.read(n), inp.read(-1), inp.read(None), inp.read()]
    elif mode == "readline":  # readline() until b""
        parts = []
        while line := inp.readline():
            parts.append(line)
    elif mode == "readline_n":  # readline(n): at most n bytes, never past a newline
        parts = []
        while line := inp.readline(n):
            parts.append(line)
    elif mode == "readlines":
        parts = inp.readlines()
    elif mode == "iter":
        parts = list(inp)
    elif mode == "mixed":  # the methods share one position in the stream
        parts = [inp.read(n), inp.readline(), inp.readline(n), inp.read()]
    elif mode == "read_past_end":
        parts = [inp.read(), inp.read(), inp.read(10), inp.readline(), *inp.readlines()]
    else:
        return respond(start_response, f"unknown mode {mode}", "400 Bad Request")
    return respond_json(start_response, {"parts": latin1(parts)})


def unread_body(environ, start_response, q):
    """Answers without reading the request body at all."""
    return respond(start_response, b"ignored")


# -- responses ------------------------------------------------------------------------------


def stream(environ, start_response, q):
    """Server-sent-events style: ``n`` events ``delay`` seconds apart; with a ``token`` each
    event after the first waits until ``/release?token=T`` (at most 10 s)."""
    n, delay, token = int(q.get("n", 3)), float(q.get("delay", 0)), q.get("token")
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

    def events():
        for i in range(n):
            if i and token:
                event(token).wait(10)
            elif i and delay:
                time.sleep(delay)
            record(token, yielded=i + 1)
            yield f"data: {i}\n\n".encode()

    return events()


def firehose(environ, start_response, q):
    """``mb`` MiB in 1 MiB parts as fast as the server takes them; ``yielded`` counts the
    bytes handed over (a client that stops reading must stop this generator)."""
    token, mb = q.get("token"), int(q.get("mb", 64))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    part = b"x" * (1 << 20)

    def parts():
        for i in range(mb):
            record(token, yielded=(i + 1) << 20)
            yield part

    return parts()


def hold_body(environ, start_response, q):
    """Waits for ``/release?token=T`` before reading the body; answers its length."""
    token = q.get("token")
    record(token, waiting=1)
    event(token).wait(20)
    n = len(environ["wsgi.input"].read())
    return respond(start_response, str(n).encode())


STASH = {}


def stash_input(environ, start_response, q):
    """Keeps wsgi.input past the response without reading the body."""
    STASH[q["token"]] = environ["wsgi.input"]
    return respond(start_response, b"stashed")


def read_stashed(environ, start_response, q):
    """Reads an input kept from a finished request: it must end, not wait forever."""
    try:
        out = f"read:{len(STASH.pop(q['token']).read())}"
    except OSError as exc:
        out = f"error:{type(exc).__name__}"
    return respond(start_response, out.encode())


def release(environ, start_response, q):
    event(q["token"]).set()
    return respond(start_response, b"released")


def write_route(environ, start_response, q):
    """The write() callable start_response returns, then an iterable for the rest."""
    headers = [("Content-Type", "text/plain")]
    if q.get("cl"):
        headers.append(("Content-Length", "17"))
    write = start_response("200 OK", headers)
    write(b"part1,")
    write(b"part2,")
    if q.get("only"):  # everything through write(), an empty iterable
        write(b"part3")
        return []
    return [b"part3"]


class Closeable:
    """An iterable that is not a generator, with a close() that records it was called."""

    def __init__(self, token, n, delay, fail_at):
        self.token, self.n, self.delay, self.fail_at = token, n, delay, fail_at

    def __iter__(self):
        for i in range(self.n):
            if i and self.delay:
                time.sleep(self.delay)
            if i == self.fail_at:
                raise RuntimeError(f"wsgi-boom-in-iterable {self.token}")
            bump(self.token, "yielded")
            yield f"part{i};".encode()

    def close(self):
        bump(self.token, "closed")


class CloseableList(list):
    """A list is the usual iterable; a list subclass with close() must still be closed."""

    token = None

    def close(self):
        bump(self.token, "closed")


def closeable(environ, start_response, q):
    """kind=object (default): a Closeable, ``n`` parts ``delay`` s apart, raising at part
    ``fail_at``; kind=list: a CloseableList; kind=generator: a generator whose ``finally``
    records (a generator's close() runs it)."""
    token, kind = q.get("token"), q.get("kind", "object")
    n, delay = int(q.get("n", 3)), float(q.get("delay", 0))
    fail_at = int(q.get("fail_at", -1))
    record(token, closed=0, yielded=0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    if kind == "list":
        out = CloseableList([b"a;", b"b;", b"c;"])
        out.token = token
        return out
    if kind == "generator":

        def gen():
            try:
                for i in range(n):
                    if i and delay:
                        time.sleep(delay)
                    bump(token, "yielded")
                    yield f"part{i};".encode()
            finally:
                bump(token, "closed")

        return gen()
    return Closeable(token, n, delay, fail_at)


def progress(environ, start_response, q):
    with LOCK:
        state = PROGRESS.get(q.get("token", ""))
        state = dict(state) if state is not None else None
    return respond_json(start_response, state)


# -- errors ---------------------------------------------------------------------------------


def raise_before(environ, start_response, q):
    raise RuntimeError(f"wsgi-boom-before {q.get('token', '')}")


def raise_after(environ, start_response, q):
    """The first part goes out (PEP 3333: a server must not hold back a yielded block), then
    the iterable fails: the client must see a response that is visibly cut short."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    delay, token = float(q.get("delay", 0.2)), q.get("token", "")

    def gen():
        yield b"partial"
        time.sleep(delay)
        raise RuntimeError(f"wsgi-boom-after {token}")

    return gen()


def exc_info_route(environ, start_response, q):
    """start_response(..., exc_info) (PEP 3333, "Error Handling").

    before: headers not sent yet, so the second call replaces status and headers.
    empty-first: the first status is followed by an empty part only, which does not send the
      headers either; the second call still wins.
    after: headers sent (write() returned), so start_response re-raises the app's exception,
      which the app lets propagate; whether it was the same exception is recorded.
    twice: a second start_response without exc_info is an error the app catches and reports.
    """
    mode, token = q.get("mode", "before"), q.get("token")
    if mode == "before":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("wsgi-exc-info-before")
        except ValueError:
            start_response(
                "503 Service Unavailable",
                [("Content-Type", "text/plain"), ("X-Second", "1")],
                sys.exc_info(),
            )
        return [b"recovered"]
    if mode == "empty-first":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])

        def gen():
            yield b""
            try:
                raise ValueError("wsgi-exc-info-empty-first")
            except ValueError:
                start_response(
                    "503 Service Unavailable",
                    [("Content-Type", "text/plain"), ("X-Second", "1")],
                    sys.exc_info(),
                )
            yield b"recovered"

        return gen()
    if mode == "after":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"sent")
        try:
            raise ValueError("wsgi-exc-info-after")
        except ValueError as original:
            try:
                start_response("500 Internal Server Error", [], sys.exc_info())
            except BaseException as again:
                record(token, reraised=type(again).__name__, same=again is original)
                raise
            record(token, reraised=None)
        return [b"not reached"]
    if mode == "twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            start_response("201 Created", [("Content-Type", "text/plain")])
        except Exception as e:
            return [f"second call raised {type(e).__name__}".encode()]
        return [b"second call accepted"]
    return respond(start_response, f"unknown mode {mode}", "400 Bad Request")


BAD_VALUES = {"crlf": "a\r\nInjected: 1", "lf": "a\nInjected: 1", "nul": "a\0b"}


def bad_header(environ, start_response, q):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", BAD_VALUES[q["kind"]])])
    return [b"must not be sent"]


def no_start(environ, start_response, q):
    return [b"start_response was never called"]


def str_body(environ, start_response, q):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["a str, not bytes"]


def content_length_mismatch(environ, start_response, q):
    """kind=short: Content-Length 10 and 5 bytes of body; kind=long: Content-Length 5 and
    10 bytes in two parts (PEP 3333: never send more than the header allows)."""
    if q["kind"] == "short":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"12345"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"12345", b"67890"]


def log_errors(environ, start_response, q):
    err = environ["wsgi.errors"]
    err.write(q.get("msg", "wsgi-errors-line") + "\n")
    err.writelines(["wsgi-errors-writelines\n"])
    err.flush()
    return respond(start_response, b"logged")


# -- time and threads -----------------------------------------------------------------------


def sleep(environ, start_response, q):
    """time.sleep(ms); the answer names the thread that ran it."""
    ms = float(q.get("ms", 100))
    print(f"SLEEP-START {q.get('tag', '')}", file=sys.stderr, flush=True)
    time.sleep(ms / 1000)
    return respond(start_response, threading.current_thread().name)


def threads(environ, start_response, q):
    return respond(start_response, threading.current_thread().name)


def status_route(environ, start_response, q):
    return respond(start_response, b"status", q.get("s", "200 OK"))


# -- files ----------------------------------------------------------------------------------


class TrackedFile(io.FileIO):
    """A real file (it has fileno(), so a server may sendfile() it) whose close() is recorded."""

    token = None

    def close(self):
        if not self.closed:
            bump(self.token, "closed")
        super().close()


class TrackedBytes(io.BytesIO):
    """A file-like without fileno(): the server must read() it."""

    token = None

    def close(self):
        if not self.closed:
            bump(self.token, "closed")
        super().close()


def file_route(environ, start_response, q):
    """environ['wsgi.file_wrapper'] over the file at ``path`` from ``offset``, with a
    Content-Length of ``length`` (default: the rest of the file); like=bytes serves the same
    bytes from a BytesIO."""
    token, path = q.get("token"), q["path"]
    offset, length = int(q.get("offset", 0)), q.get("length")
    record(token, closed=0)
    if q.get("like") == "bytes":
        with open(path, "rb") as f:
            f_obj = TrackedBytes(f.read())
    else:
        f_obj = TrackedFile(path, "rb")
    f_obj.token = token
    size = f_obj.seek(0, io.SEEK_END)
    f_obj.seek(offset)
    n = int(length) if length is not None else size - offset
    start_response(
        "200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))]
    )
    return environ["wsgi.file_wrapper"](f_obj, int(q.get("blksize", 8192)))


# -- the app --------------------------------------------------------------------------------


def hello(environ, start_response, q):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


ROUTES = {
    "/": hello,
    "/environ": environ_route,
    "/echo": echo,
    "/echo-info": echo_info,
    "/read": read_variants,
    "/unread-body": unread_body,
    "/stream": stream,
    "/release": release,
    "/write": write_route,
    "/closeable": closeable,
    "/progress": progress,
    "/raise-before": raise_before,
    "/raise-after": raise_after,
    "/exc-info": exc_info_route,
    "/bad-header": bad_header,
    "/no-start": no_start,
    "/str-body": str_body,
    "/cl-mismatch": content_length_mismatch,
    "/log-errors": log_errors,
    "/sleep": sleep,
    "/threads": threads,
    "/status": status_route,
    "/file": file_route,
    "/firehose": firehose,
    "/hold-body": hold_body,
    "/stash-input": stash_input,
    "/read-stashed": read_stashed,
}


def app(environ, start_response):
    """Routes by PATH_INFO; any other path answers with the environ (as ``/environ`` does)."""
    route = ROUTES.get(environ["PATH_INFO"])
    if route is None:
        return environ_route(environ, start_response, {})
    return route(environ, start_response, query(environ))
