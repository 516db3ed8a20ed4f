"""Apps checking that the app runs as under an ``asyncio.Task``: current_task, contextvars,
cancellation, asyncio.timeout and anyio."""

import asyncio
import contextvars
import json
import threading

import anyio

request_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_var", default="unset")


async def respond_json(send, obj):
    body = json.dumps(obj).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def current_task(scope, receive, send):
    # Checked before the app awaits anything: an eagerly stepped coroutine must already be
    # inside a real Task here.
    first = asyncio.current_task()
    first_ok = isinstance(first, asyncio.Task)
    await asyncio.sleep(0)
    second = asyncio.current_task()
    await asyncio.sleep(0.01)
    third = asyncio.current_task()
    await respond_json(
        send,
        {
            "first_is_task": first_ok,
            "same_task_after_await": first is second is third,
            "task_done": first.done() if first else None,
            "running_loop": asyncio.get_running_loop() is not None,
        },
    )


async def context_vars(scope, receive, send):
    seen_before = request_var.get()  # must not leak from an earlier request
    request_var.set("request-value")

    async def child():
        inherited = request_var.get()
        request_var.set("child-value")  # a child works on a copy of the context
        return inherited

    inherited = await asyncio.create_task(child())
    after_child = request_var.get()
    await asyncio.sleep(0.01)
    await respond_json(
        send,
        {
            "seen_before": seen_before,
            "inherited": inherited,
            "after_child": after_child,
            "after_await": request_var.get(),
        },
    )


async def cancellation(scope, receive, send):
    result = {}

    # 1. cancelling a sub-task
    started = asyncio.Event()

    async def forever():
        started.set()
        await asyncio.sleep(3600)

    t = asyncio.create_task(forever())
    await started.wait()
    t.cancel()
    try:
        await t
        result["subtask"] = "not cancelled"
    except asyncio.CancelledError:
        result["subtask"] = "cancelled"

    # 2. asyncio.timeout() cancels the *current* task (the request's) and turns it into
    #    TimeoutError; this only works if the app runs inside a real Task.
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
        result["timeout"] = "no timeout"
    except TimeoutError:
        result["timeout"] = "TimeoutError"
    result["cancelling_after_timeout"] = asyncio.current_task().cancelling()

    # 3. wait_for
    try:
        await asyncio.wait_for(asyncio.sleep(10), 0.05)
        result["wait_for"] = "no timeout"
    except TimeoutError:
        result["wait_for"] = "TimeoutError"

    # 4. the current task cancelling itself and catching it
    task = asyncio.current_task()
    task.cancel()
    try:
        await asyncio.sleep(1)
        result["self_cancel"] = "not cancelled"
    except asyncio.CancelledError:
        task.uncancel()
        result["self_cancel"] = "cancelled"
    await respond_json(send, result)


async def anyio_route(scope, receive, send):
    result = {"order": []}

    async def worker(name, delay):
        await anyio.sleep(delay)
        result["order"].append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, "slow", 0.05)
        tg.start_soon(worker, "fast", 0.0)

    main_thread = threading.get_ident()
    result["thread_differs"] = await anyio.to_thread.run_sync(
        lambda: threading.get_ident() != main_thread
    )
    try:
        with anyio.fail_after(0.05):
            await anyio.sleep(10)
        result["fail_after"] = "no timeout"
    except TimeoutError:
        result["fail_after"] = "TimeoutError"
    with anyio.move_on_after(0.05) as scope_:
        await anyio.sleep(10)
    result["move_on_after"] = scope_.cancelled_caught
    await respond_json(send, result)


async def cancel_in_first_step(scope, receive, send):
    """The request's task cancels itself before its first await: the cancellation arrives at
    that await, as it does in any Task (the server may take this first step itself)."""
    task = asyncio.current_task()
    task.cancel()
    delay = 0 if scope["query_string"] == b"bare" else 1
    try:
        await asyncio.sleep(delay)
        outcome = "not cancelled"
    except asyncio.CancelledError:
        outcome = "cancelled"
        task.uncancel()
    await respond_json(send, {"outcome": outcome, "cancelling": task.cancelling()})


async def cancel_then_return(scope, receive, send):
    """Cancelled in its first step, the app answers without waiting and returns: the answer
    stands; the task ends cancelled."""
    asyncio.current_task().cancel()
    await respond_json(send, {"answered": True})


async def raise_cancelled_first(scope, receive, send):
    raise asyncio.CancelledError


ROUTES = {
    "/cancel-first": cancel_in_first_step,
    "/cancel-then-return": cancel_then_return,
    "/raise-cancelled-first": raise_cancelled_first,
    "/current-task": current_task,
    "/contextvars": context_vars,
    "/cancel": cancellation,
    "/anyio": anyio_route,
}


async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    await ROUTES[scope["path"]](scope, receive, send)
