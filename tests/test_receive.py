"""receive() behaves as asyncio and anyio code expects (as under uvicorn): every waiting
receiver is woken by a disconnect, receive() takes a message only when it runs, and it can be
wrapped in tasks and futures."""

import socket
import struct
import time
import uuid

import httpx
import pytest
from conftest import RawConn, request_bytes, wait_state


@pytest.fixture(scope="module")
def srv(module_server):
    return module_server("receiving:app")


def result(srv, token, predicate, timeout=5.0):
    return wait_state(srv, "/result", token, predicate, timeout)


def reset(conn: RawConn) -> None:
    """Close with RST (SO_LINGER 0): the client is gone, not just done sending."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


@pytest.mark.parametrize("leave", ["close", "reset"])
def test_every_concurrent_receiver_gets_the_disconnect(srv, leave):
    token = uuid.uuid4().hex
    conn = RawConn(srv.port)
    conn.send(request_bytes("POST", f"/concurrent?token={token}&n=3", body=b"x"))
    result(srv, token, lambda s: s["state"] == "waiting")
    time.sleep(0.1)
    reset(conn) if leave == "reset" else conn.close()
    state = result(srv, token, lambda s: s["state"] == "done")
    assert state["types"] == ["http.disconnect"] * 3


def test_receive_after_timed_out_receives_still_sees_the_disconnect(srv):
    token = uuid.uuid4().hex
    conn = RawConn(srv.port)
    conn.send(request_bytes("POST", f"/timed-out?token={token}", body=b"x"))
    state = result(srv, token, lambda s: s["state"] == "waiting")
    assert state["seen"] == [None, None, None]
    reset(conn)
    state = result(srv, token, lambda s: s["state"] == "done")
    assert state["last"] == "http.disconnect"


def test_receive_in_create_task_ensure_future_and_anyio(srv):
    with RawConn(srv.port) as conn:
        conn.send(
            request_bytes("POST", "/in-tasks", headers=[("Transfer-Encoding", "chunked")])
            + b"1\r\na\r\n"
        )
        time.sleep(0.2)
        conn.send(b"1\r\nb\r\n")
        time.sleep(0.2)
        conn.send(b"0\r\n\r\n")
        resp = conn.read_response()
    assert resp.status == 200, resp.body
    out = resp.json()
    assert out["create_task"] == ["http.request", "a"]
    assert out["ensure_future"] == ["http.request", "b"]
    assert out["anyio"] == ["http.request", ""]
    assert out["is_coroutine"] is True


def test_receive_cancelled_before_it_ran_loses_nothing(srv):
    resp = httpx.post(f"{srv.url}/cancelled", content=b"every byte", timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"body": "every byte", "fut_cancelled": True}


def test_disconnect_listener_beside_a_streaming_response(srv):
    token = uuid.uuid4().hex
    conn = RawConn(srv.port)
    conn.send(request_bytes("POST", f"/listener?token={token}", body=b"x"))
    conn.read_head()
    result(srv, token, lambda s: s["sent"] >= 3)
    reset(conn)
    state = result(srv, token, lambda s: s["state"] == "done")
    assert state.get("listener") == "http.disconnect" or state.get("send_error")
