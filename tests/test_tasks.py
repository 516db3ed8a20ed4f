"""The app runs as under an ``asyncio.Task``: ``current_task()``, contextvars, cancellation,
``asyncio.timeout`` and anyio all behave."""

import httpx
import pytest


@pytest.fixture(scope="module")
def tasks_server(module_server):
    return module_server("tasks:app")


def get(srv, path):
    resp = httpx.get(srv.url + path, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_current_task_is_a_task(tasks_server):
    result = get(tasks_server, "/current-task")
    assert result["first_is_task"] is True
    assert result["same_task_after_await"] is True
    assert result["task_done"] is False


def test_contextvars_in_app_and_child_tasks(tasks_server):
    result = get(tasks_server, "/contextvars")
    assert result["inherited"] == "request-value"  # a child task copies the context
    assert result["after_child"] == "request-value"  # the child's change stays in the child
    assert result["after_await"] == "request-value"


def test_contextvars_do_not_leak_between_requests(tasks_server):
    with httpx.Client(base_url=tasks_server.url, timeout=10) as client:
        for _ in range(3):  # same keep-alive connection
            assert client.get("/contextvars").json()["seen_before"] == "unset"


def test_cancellation(tasks_server):
    result = get(tasks_server, "/cancel")
    assert result == {
        "subtask": "cancelled",
        "timeout": "TimeoutError",
        "cancelling_after_timeout": 0,
        "wait_for": "TimeoutError",
        "self_cancel": "cancelled",
    }


def test_anyio(tasks_server):
    result = get(tasks_server, "/anyio")
    assert result["order"] == ["fast", "slow"]
    assert result["thread_differs"] is True
    assert result["fail_after"] == "TimeoutError"
    assert result["move_on_after"] is True


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_task_semantics_with_each_loop(server, loop):
    srv = server("tasks:app", "--loop", loop)
    assert get(srv, "/current-task")["first_is_task"] is True
    assert get(srv, "/cancel")["timeout"] == "TimeoutError"
    assert get(srv, "/anyio")["fail_after"] == "TimeoutError"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("kind", ["bare", "timer"])
def test_cancel_before_the_first_await(server, loop, kind):
    """The first step of the app may run before the loop's first iteration for its Task: a
    cancellation requested in it still lands at the first await, and the task can take it
    back (uncancel) as in any Task."""
    srv = server("tasks:app", "--loop", loop)
    assert get(srv, "/cancel-first?" + kind) == {"outcome": "cancelled", "cancelling": 0}
    assert get(srv, "/current-task")["first_is_task"] is True


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_cancelled_in_first_step_after_answering(server, loop):
    srv = server("tasks:app", "--loop", loop)
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/cancel-then-return").json() == {"answered": True}
        resp = client.get("/raise-cancelled-first")
        assert resp.status_code == 500  # nothing was sent: the server answers for the app
        assert client.get("/current-task").status_code == 200
    assert "Traceback" not in srv.log()  # a cancellation is not an app error
