"""App errors: an exception before the response started is a 500 with the traceback logged;
after it started the connection is aborted; an app that returns without responding is a 500."""

import re
import time

import httpx
import pytest
from conftest import RawConn, request_bytes


def test_exception_before_response_is_500_and_traceback_logged(basic):
    before = len(basic.log())
    resp = httpx.get(f"{basic.url}/error-before", timeout=5)
    assert resp.status_code == 500
    basic.wait_for_log("boom-before-start")
    log = basic.log()[before:]
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom-before-start" in log
    assert "error_before" in log  # the app's own frame is in the traceback


def test_exception_after_response_started_aborts_connection(basic):
    before = len(basic.log())
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/error-after") + request_bytes("GET", "/id?n=next"))
        resp = conn.read_response(allow_incomplete=True)
        assert resp.status == 200  # the head was already out
        assert resp.incomplete, "an aborted response must not look complete to the client"
        assert resp.body in (b"", b"partial")
        assert conn.is_closed()
    basic.wait_for_log("boom-after-start")
    assert "Traceback" in basic.log()[before:]


def test_app_returning_without_response_is_500(basic):
    before = len(basic.log())
    resp = httpx.get(f"{basic.url}/no-response", timeout=5)
    assert resp.status_code == 500
    assert re.search(r"(?i)without|response|error", basic.log()[before:])


def test_server_keeps_serving_after_app_errors(basic):
    with httpx.Client(base_url=basic.url, timeout=5) as client:
        for path in ("/error-before", "/no-response", "/error-before"):
            assert client.get(path).status_code == 500
        assert client.get("/id", params={"n": 3}).text == "3"


@pytest.mark.parametrize(
    "path, why",
    [
        ("/str-body", "bytes"),
        ("/double-start", "twice"),
        ("/cl-long", "Content-Length"),
        ("/bad-status", "status"),
    ],
)
def test_app_error_before_any_byte_left_is_a_500_not_a_reset(basic, path, why):
    """Nothing of the response has been written yet: the client gets a 500, and the log says
    why (the exception the app got from send())."""
    before = len(basic.log())
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", path))
        resp = conn.read_response()
    assert resp.status == 500
    assert resp.body == b"Internal Server Error"
    basic.wait_for_log("Exception in ASGI application")
    log = basic.log()[before:]
    assert why in log, log


@pytest.mark.parametrize("kind", ["built", "subclass"])
def test_message_types_compared_by_value(basic, kind):
    """A message type equal to the constant but not the same object (a str subclass, or a
    string built at run time) is still that type."""
    resp = httpx.get(basic.url + "/message-types", params={"kind": kind}, timeout=5)
    assert (resp.status_code, resp.text) == (200, "ok")


def test_unknown_message_type_is_an_app_error(basic):
    resp = httpx.get(basic.url + "/message-types", params={"kind": "bad"}, timeout=5)
    assert resp.status_code == 500
    basic.wait_for_log("unexpected ASGI message type")


def test_send_after_the_response_completed_is_an_app_error_not_a_disconnect(basic):
    """The client is still there: a message after the last body is the app's mistake
    (RuntimeError, as under uvicorn), not ClientDisconnected."""
    token = "after-done"
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", f"/send-after-done?token={token}"))
        assert conn.read_response().body == b"done"
        state = None
        for _ in range(50):
            state = httpx.get(f"{basic.url}/progress", params={"token": token}, timeout=5).json()
            if state:
                break
            time.sleep(0.05)
    assert state == {"raised": "RuntimeError", "oserror": False}
