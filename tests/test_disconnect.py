"""A client that leaves is reported to the app: ``receive()`` returns ``http.disconnect`` and
``send()`` raises an ``OSError`` subclass (ASGI spec 2.4)."""

import socket
import struct
import time
import uuid

import httpx
from conftest import RawConn, request_bytes, wait_state


def wait_progress(srv, token, predicate, timeout=5.0):
    return wait_state(srv, "/progress", token, predicate, timeout)


def test_receive_returns_disconnect_after_client_leaves(basic):
    token = uuid.uuid4().hex
    conn = RawConn(basic.port)
    conn.send(request_bytes("POST", f"/wait-disconnect?token={token}", body=b"hello"))
    wait_progress(basic, token, lambda s: s["state"] == "waiting")
    conn.close()
    state = wait_progress(basic, token, lambda s: s["state"] == "received")
    assert state["message"] == "http.disconnect"


def test_send_after_disconnect_raises_oserror_subclass(basic):
    """The client is gone (a reset): send() raises an OSError subclass."""
    token = uuid.uuid4().hex
    conn = RawConn(basic.port)
    conn.send(request_bytes("POST", f"/wait-disconnect?token={token}", body=b"hello"))
    wait_progress(basic, token, lambda s: s["state"] == "waiting")
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    state = wait_progress(basic, token, lambda s: "send" in s)
    assert state["message"] == "http.disconnect"
    assert state["send"] != "no error", "send() after a disconnect did not raise"
    assert state["send_is_oserror"] is True, f"raised {state['send']} ({state['send_mro']})"


def test_half_closed_client_hears_disconnect_and_still_gets_the_answer(basic):
    """A FIN after the whole request (RFC 9112 §9.6): an app waiting for more input hears
    http.disconnect, yet what it sends still reaches a client that is only half-closed."""
    token = uuid.uuid4().hex
    conn = RawConn(basic.port)
    try:
        conn.send(request_bytes("POST", f"/wait-disconnect?token={token}", body=b"hello"))
        wait_progress(basic, token, lambda s: s["state"] == "waiting")
        conn.sock.shutdown(socket.SHUT_WR)
        state = wait_progress(basic, token, lambda s: "send" in s)
        assert state["message"] == "http.disconnect"
        assert state["send"] == "no error"
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"too late"
        assert conn.is_closed()
    finally:
        conn.close()


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
