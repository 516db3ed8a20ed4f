"""Cases for tests/test_core.py: pronghorn._core.Server used directly, as server.py uses it.
Each runs in a process of its own (`python core_cases.py NAME`): under `make test-asan` that
process gets the sanitizer runtime preloaded, like every server the suite starts."""

import asyncio
import gc
import os
import socket
import sys

from pronghorn import _core


def raises(exc_type, fn):
    try:
        fn()
    except exc_type:
        return
    raise AssertionError(f"{fn} did not raise {exc_type.__name__}")


def bound_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Log:
    def __init__(self):
        self.errors = []

    def __call__(self, message, exc, client_gone=False):
        self.errors.append((message, exc))
        return True


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


async def forever(scope, receive, send):
    await asyncio.Event().wait()


async def fetch(port, request=b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", read=True):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    if not read:
        return reader, writer
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return data


def test_start_twice_fails_cleanly():
    loop = asyncio.new_event_loop()
    sock = bound_socket()
    port = sock.getsockname()[1]
    try:
        srv = _core.Server(hello, loop, None, {"log_exception": Log()})
        srv.listen(sock.detach(), False, 16)
        srv.start()
        raises(RuntimeError, srv.start)
        assert loop.run_until_complete(fetch(port)).startswith(b"HTTP/1.1 200")
        srv.close()
        assert refused(port)
    finally:
        loop.close()


def test_start_that_fails_half_way_closes_what_it_opened():
    loop = asyncio.new_event_loop()
    good = bound_socket()
    port = good.getsockname()[1]
    r, w = os.pipe()  # not a socket: listen() on it fails
    try:
        srv = _core.Server(hello, loop, None, {"log_exception": Log()})
        srv.listen(good.detach(), False, 16)
        srv.listen(r, False, 16)
        raises(OSError, srv.start)
        assert refused(port), "the listener that did start is still accepting"
        raises(RuntimeError, srv.start)
        srv.close()
    finally:
        os.close(w)
        loop.close()


def test_exception_in_the_proxy_hook_is_a_500_not_a_pending_error():
    loop = asyncio.new_event_loop()
    sock = bound_socket()
    port = sock.getsockname()[1]
    log = Log()

    def broken_proxy(client, xff, xfp):
        raise ValueError("proxy hook failed")

    try:
        srv = _core.Server(hello, loop, None, {"log_exception": log, "proxy": broken_proxy})
        srv.listen(sock.detach(), False, 16)
        srv.start()
        req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        data = loop.run_until_complete(fetch(port, req))
        srv.close()
    finally:
        loop.close()
    assert data.startswith(b"HTTP/1.1 500"), data
    assert any(isinstance(e, ValueError) for _, e in log.errors), log.errors
    assert not any(isinstance(e, SystemError) for _, e in log.errors), log.errors


def serve_and_drop(app, leave_request_open: bool) -> None:
    """A server that serves (or is in the middle of serving) a request, then is dropped
    without close(); the asyncio loop is closed under it."""
    loop = asyncio.new_event_loop()
    sock = bound_socket()
    port = sock.getsockname()[1]
    srv = _core.Server(app, loop, {"k": "v"}, {"log_exception": Log()})
    srv.listen(sock.detach(), False, 16)
    srv.start()
    if leave_request_open:
        reader, writer = loop.run_until_complete(fetch(port, read=False))
        loop.run_until_complete(asyncio.sleep(0.1))
        assert srv.requests == 1
        writer.transport.abort()
    else:
        assert loop.run_until_complete(fetch(port)).startswith(b"HTTP/1.1 200")
    del srv
    loop.close()


def test_server_never_closed_is_freed(leave_request_open):
    app = forever if leave_request_open else hello
    serve_and_drop(app, leave_request_open)  # warm up: first-use allocations
    gc.collect()
    before = open_fds()
    for _ in range(5):
        serve_and_drop(app, leave_request_open)
        gc.collect()
    assert open_fds() == before, "a dropped Server kept its loop or sockets open"


def test_module_state_is_visible_to_the_gc():
    """Every object the module state owns is reported by its traverse function (what m_clear
    must break at interpreter shutdown)."""
    referents = gc.get_referents(_core)
    for obj in (
        _core.Server,
        _core.ClientDisconnected,
        _core.AppCoroutine,
        asyncio.Task,
        asyncio.CancelledError,
    ):
        assert any(r is obj for r in referents), obj


CASES = {
    "start_twice": test_start_twice_fails_cleanly,
    "start_half_way": test_start_that_fails_half_way_closes_what_it_opened,
    "proxy_hook_error": test_exception_in_the_proxy_hook_is_a_500_not_a_pending_error,
    "never_closed_idle": lambda: test_server_never_closed_is_freed(False),
    "never_closed_in_flight": lambda: test_server_never_closed_is_freed(True),
    "module_gc": test_module_state_is_visible_to_the_gc,
}

if __name__ == "__main__":
    CASES[sys.argv[1]]()
    print("CASE-OK")
