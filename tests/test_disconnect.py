"""A client that leaves is reported to the app: ``receive()`` returns ``http.disconnect`` and
``send()`` raises an ``OSError`` subclass (ASGI spec 2.4)."""

import time
import uuid

import httpx
from conftest import RawConn, request_bytes


def wait_progress(srv, token, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = httpx.get(f"{srv.url}/progress", params={"token": token}, timeout=5).json()
        if state is not None and predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"app state never matched; last: {state}")


def test_receive_returns_disconnect_after_client_leaves(basic):
    token = uuid.uuid4().hex
    conn = RawConn(basic.port)
    conn.send(request_bytes("POST", f"/wait-disconnect?token={token}", body=b"hello"))
    wait_progress(basic, token, lambda s: s["state"] == "waiting")
    conn.close()
    state = wait_progress(basic, token, lambda s: s["state"] == "received")
    assert state["message"] == "http.disconnect"


def test_send_after_disconnect_raises_oserror_subclass(basic):
    token = uuid.uuid4().hex
    conn = RawConn(basic.port)
    conn.send(request_bytes("POST", f"/wait-disconnect?token={token}", body=b"hello"))
    wait_progress(basic, token, lambda s: s["state"] == "waiting")
    conn.close()
    state = wait_progress(basic, token, lambda s: "send" in s)
    assert state["send"] != "no error", "send() after a disconnect did not raise"
    assert state["send_is_oserror"] is True, f"raised {state['send']} ({state['send_mro']})"


def test_disconnect_while_body_is_incomplete(basic):
    token = uuid.uuid4().hex
    conn = RawConn(basic.port)
    conn.send(
        request_bytes(
            "POST", f"/wait-disconnect?token={token}", headers=[("Content-Length", "1000")]
        )
        + b"x" * 10
    )
    wait_progress(basic, token, lambda s: s["state"] == "reading")
    time.sleep(0.2)
    conn.close()
    state = wait_progress(basic, token, lambda s: s["state"] != "reading")
    assert state["state"] == "disconnected-early"
    assert state["message"] == "http.disconnect"


def test_server_keeps_serving_after_disconnects(basic):
    for _ in range(5):
        conn = RawConn(basic.port)
        conn.send(request_bytes("GET", "/sleep?s=0.2"))
        conn.close()
    assert httpx.get(f"{basic.url}/id", params={"n": 1}, timeout=5).text == "1"
