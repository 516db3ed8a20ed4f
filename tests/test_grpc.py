"""gRPC for real: a connect-python ASGI service (tests/apps/grpc_app.py) served with default
flags, called by grpcio over h2c (prior knowledge) with every kind of call, a deadline that
expires and error statuses, which gRPC carries in HTTP/2 trailers.

The stubs are generated here, once per session, from tests/apps/proto: grpcio's for the
client, connectrpc's for the app. ``PRONGHORN_TEST_HYPERCORN=/path/to/bin/hypercorn`` serves the
app with that hypercorn instead (from a venv of its own with the same pins): it is how the tests
themselves were checked before pronghorn spoke HTTP/2.
"""

import importlib
import os
import queue
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from conftest import APPS_DIR, BIN_DIR, IS_UVICORN, free_port

PROTO_DIR = APPS_DIR / "proto"
HYPERCORN = os.environ.get("PRONGHORN_TEST_HYPERCORN")
TIMEOUT = 10  # seconds, for every call that should succeed: a hang fails, and fast

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="uvicorn has no HTTP/2")


@pytest.fixture(scope="session")
def stubs_dir(tmp_path_factory):
    """Generates the stubs into a fresh directory and puts it on this process's sys.path."""
    out = tmp_path_factory.mktemp("grpc_stubs")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-connectrpc={BIN_DIR / 'protoc-gen-connectrpc'}",
        f"--connectrpc_out={out}",
        # connectrpc targets its own protobuf-py by default; grpcio needs Google's protobuf.
        "--connectrpc_opt=protobuf=google",
        str(PROTO_DIR / "pronghorn_test" / "v1" / "echo.proto"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"protoc failed:\n{done.stdout}{done.stderr}"
    sys.path.insert(0, str(out))
    yield out
    sys.path.remove(str(out))


@pytest.fixture(scope="session")
def pb(stubs_dir):
    return importlib.import_module("pronghorn_test.v1.echo_pb2")


@pytest.fixture(scope="module")
def grpc_server(module_server, stubs_dir):
    # The app imports the stubs; an inherited PYTHONPATH stays after them.
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    path = [str(stubs_dir)] + [p for p in inherited if p]  # an empty entry would mean the cwd
    if not HYPERCORN:
        return module_server("grpc_app:app", env={"PYTHONPATH": os.pathsep.join(path)})
    path.append(str(APPS_DIR))  # hypercorn has no --app-dir
    port = free_port()
    argv = [HYPERCORN, "--bind", f"127.0.0.1:{port}", "grpc_app:app"]
    return module_server(argv=argv, port=port, env={"PYTHONPATH": os.pathsep.join(path)})


@pytest.fixture
def channel(grpc_server):
    # A proxy from the environment would take the calls elsewhere.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.port}", options=options) as ch:
        yield ch


@pytest.fixture
def stub(channel, stubs_dir):
    return importlib.import_module("pronghorn_test.v1.echo_pb2_grpc").EchoServiceStub(channel)


def test_unary(stub, pb):
    reply, call = stub.Unary.with_call(
        pb.EchoRequest(text="hello"), metadata=[("x-echo", "there")], timeout=TIMEOUT
    )
    assert reply.text == "hello"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-method", "unary") in call.initial_metadata()
    # Set by the app after the reply: it can only have come in the trailing HEADERS frame.
    assert ("x-echo", "there") in call.trailing_metadata()


def test_server_streaming(stub, pb):
    replies = list(stub.ServerStream(pb.EchoRequest(text="n", count=5), timeout=TIMEOUT))
    assert [(r.text, r.index) for r in replies] == [(f"n {i}", i) for i in range(5)]


def test_client_streaming(stub, pb):
    requests = (pb.EchoRequest(text=str(i)) for i in range(6))
    reply = stub.ClientStream(requests, timeout=TIMEOUT)
    assert (reply.text, reply.index) == ("0 1 2 3 4 5", 6)


def test_bidirectional_streaming_interleaved(stub, pb):
    """Each message is sent only after the reply to the one before it has arrived, so this
    hangs (and fails on the deadline) if the server holds the request body or the replies."""
    outbox = queue.Queue()
    replies = stub.Bidi(iter(outbox.get, None), timeout=TIMEOUT)
    try:
        for i in range(4):
            outbox.put(pb.EchoRequest(text=f"m{i}"))
            reply = next(replies)
            assert (reply.text, reply.index) == (f"M{i}", i)
    finally:
        outbox.put(None)  # ends the request stream, also when an assertion failed
    assert list(replies) == []
    assert replies.code() == grpc.StatusCode.OK


def test_deadline_expires_and_server_stays_healthy(stub, pb):
    token = uuid.uuid4().hex
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        stub.Unary(pb.EchoRequest(text="slow", sleep=30, token=token), timeout=0.5)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    # The handler was cancelled (the grpc-timeout header or the client's RST_STREAM reached
    # it), not left sleeping for 30 s.
    assert wait_outcome(stub, pb, token) == "cancelled"
    # The same connection goes on serving.
    assert stub.Unary(pb.EchoRequest(text="next"), timeout=TIMEOUT).text == "next"


def wait_outcome(stub, pb, token, timeout=5.0) -> str:
    """How the handler of the call named ``token`` ended, once it has."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = stub.Outcome(pb.OutcomeRequest(token=token), timeout=TIMEOUT).outcome
        if outcome not in ("", "sleeping") or time.monotonic() > deadline:
            return outcome
        time.sleep(0.05)


def test_deadline_expires_mid_stream(stub, pb):
    started = time.monotonic()
    replies = stub.ServerStream(pb.EchoRequest(text="s", count=3, sleep=30), timeout=3)
    assert next(replies).text == "s 0"
    # Well before the deadline: the response had started when it expired.
    assert time.monotonic() - started < 2
    with pytest.raises(grpc.RpcError) as exc:
        next(replies)
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_error_status_in_trailers(stub, pb):
    with pytest.raises(grpc.RpcError) as exc:
        stub.Unary(
            pb.EchoRequest(text="no such thing", fail="not_found"),
            metadata=[("x-echo", "kept")],
            timeout=TIMEOUT,
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert exc.value.details() == "no such thing"
    assert ("x-echo", "kept") in exc.value.trailing_metadata()


def test_error_status_after_streamed_messages(stub, pb):
    replies = stub.ServerStream(
        pb.EchoRequest(text="gone soon", count=2, fail="failed_precondition"), timeout=TIMEOUT
    )
    assert [next(replies).index, next(replies).index] == [0, 1]
    with pytest.raises(grpc.RpcError) as exc:
        next(replies)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.details() == "gone soon"


def test_unknown_method_is_unimplemented(channel, pb):
    # The app answers HTTP 404, which gRPC clients read as UNIMPLEMENTED.
    missing = channel.unary_unary(
        "/pronghorn_test.v1.EchoService/Missing",
        request_serializer=pb.EchoRequest.SerializeToString,
        response_deserializer=pb.EchoResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as exc:
        missing(pb.EchoRequest(text="x"), timeout=TIMEOUT)
    assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_concurrent_calls_share_one_connection(stub, pb):
    """gRPC multiplexes calls on one HTTP/2 connection: these run side by side."""
    started = time.monotonic()
    futures = [
        stub.Unary.future(pb.EchoRequest(text=str(i), sleep=1), timeout=TIMEOUT) for i in range(8)
    ]
    assert [f.result().text for f in futures] == [str(i) for i in range(8)]
    assert time.monotonic() - started < 4  # one after the other would take 8 s
