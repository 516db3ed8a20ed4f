"""The command line (``pronghorn [OPTIONS] APP``, ``python -m pronghorn``), environment
variables, and the Python API ``pronghorn.run()``."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from importlib import metadata

import httpx
import pytest
from conftest import (
    ENV_PREFIX,
    IS_UVICORN,
    SERVER_KIND,
    SERVER_NAME,
    RawConn,
    check_flags_supported,
    free_port,
    request_bytes,
    run_cli,
)

ALL_FLAGS = [
    "--host",
    "--port",
    "--uds",
    "--fd",
    "--backlog",
    "--app-dir",
    "--factory",
    "--root-path",
    "--lifespan",
    "--loop",
    "--timeout-keep-alive",
    "--timeout-request-header",
    "--timeout-graceful-shutdown",
    "--limit-concurrency",
    "--limit-request-line",
    "--limit-request-headers",
    "--limit-request-header-size",
    "--limit-request-body",
    "--header",
    "--server-header",
    "--no-server-header",
    "--date-header",
    "--no-date-header",
    "--proxy-headers",
    "--no-proxy-headers",
    "--forwarded-allow-ips",
    "--log-level",
    "--access-log",
    "--no-access-log",
    "--version",
]


def get_json(url, **kw):
    resp = httpx.get(url, timeout=5, **kw)
    assert resp.status_code == 200, resp.text
    return resp.json()


# -- version and help -----------------------------------------------------------------------


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert metadata.version(SERVER_KIND) in out.stdout + out.stderr


def test_python_m_version():
    out = run_cli("--version", python_module=True)
    assert out.returncode == 0, out.stderr
    assert metadata.version(SERVER_KIND) in out.stdout + out.stderr


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_lists_every_flag(flag):
    out = run_cli(flag)
    assert out.returncode == 0, out.stderr
    missing = [f for f in ALL_FLAGS if f not in out.stdout]
    assert not missing, f"help does not mention {missing}"


# -- app loading ----------------------------------------------------------------------------


def test_python_m_serves(server):
    port = free_port()
    srv = server(
        argv=[
            sys.executable,
            "-m",
            SERVER_KIND,
            "basic:app",
            "--app-dir",
            "tests/apps",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        port=port,
    )
    assert httpx.get(srv.url, timeout=5).text == "Hello, world!"
    assert srv.stop() == 0


@pytest.mark.skipif(IS_UVICORN, reason="uvicorn requires module:attr")
def test_attr_defaults_to_app(server):
    srv = server("basic")
    assert httpx.get(srv.url, timeout=5).text == "Hello, world!"


def test_app_found_through_pythonpath_without_app_dir(server):
    port = free_port()
    argv = server.argv("scope_app:app", [], port=port, app_dir=False)
    srv = server(argv=argv, port=port, env={"PYTHONPATH": "tests/apps"})
    assert get_json(srv.url + "/x")["path"] == "/x"


def test_factory_flag(server):
    srv = server("factory:create_app", "--factory")
    assert get_json(srv.url) == {"factory": True}


def test_uds_flag(server, tmp_path):
    path = str(tmp_path / "s.sock")
    srv = server("basic:app", "--uds", path, bind=False, uds=path)
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as client:
        assert client.get("http://localhost/id?n=9").text == "9"
    with RawConn(None, uds=path) as conn:
        conn.send(request_bytes())
        assert conn.read_response().status == 200
    assert srv.stop() == 0


def listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def test_fd_flag(server):
    sock, port = listening_socket()
    fd = sock.fileno()
    try:
        srv = server(
            "basic:app", "--fd", str(fd), bind=False, port=port, pass_fds=(fd,), wait=False
        )
    finally:
        sock.close()  # the server has its own copy now
    # the socket already listens, so a connect proves nothing: wait for the start-up line
    srv.wait_for_log(r"(?i)running on", timeout=10)
    assert httpx.get(srv.url + "/id?n=fd", timeout=5).text == "fd"


def test_fd_connections_queued_before_start_are_served(server):
    # With an inherited socket (systemd socket activation, a supervisor's restart) clients may
    # already wait in the backlog when the server starts: they must be served too.
    sock, port = listening_socket()
    early = RawConn(port, timeout=10)
    early.send(request_bytes("GET", "/id?n=early"))
    fd = sock.fileno()
    try:
        srv = server(
            "basic:app", "--fd", str(fd), bind=False, port=port, pass_fds=(fd,), wait=False
        )
    finally:
        sock.close()
    try:
        resp = early.read_response()
    finally:
        early.close()
    assert resp.body == b"early"
    assert httpx.get(srv.url + "/id?n=late", timeout=5).text == "late"


def test_backlog_flag(server):
    srv = server("basic:app", "--backlog", "16")
    assert httpx.get(srv.url, timeout=5).status_code == 200


@pytest.mark.parametrize(
    "loop, module", [("auto", "uvloop"), ("asyncio", "asyncio.unix_events"), ("uvloop", "uvloop")]
)
def test_loop_flag(server, loop, module):
    srv = server("basic:app", "--loop", loop)
    with httpx.Client(base_url=srv.url, timeout=5) as client:
        assert client.get("/loop").text == module
        assert client.post("/echo", content=b"x" * 100_000).content == b"x" * 100_000


def test_loop_auto_without_uvloop(server, tmp_path):
    """`auto` falls back to asyncio's loop where uvloop cannot be imported."""
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text("raise ImportError('no uvloop here')\n")
    pythonpath = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    srv = server("basic:app", env={"PYTHONPATH": pythonpath})
    assert httpx.get(srv.url + "/loop", timeout=5).text == "asyncio.unix_events"


def test_host_flag_ipv6(server):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", port))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    argv = server.argv("basic:app", ["--host", "::1", "--port", str(port)], bind=False)
    srv = server(argv=argv, port=port, wait=False)
    srv.host = "::1"
    srv.wait_ready()
    assert httpx.get(f"http://[::1]:{port}/", timeout=5).text == "Hello, world!"


# -- environment variables ------------------------------------------------------------------


def test_env_vars_set_flags(server):
    port = free_port()
    srv = server(
        "scope_app:app",
        bind=False,
        port=port,
        env={
            ENV_PREFIX + "HOST": "127.0.0.1",
            ENV_PREFIX + "PORT": str(port),
            ENV_PREFIX + "ROOT_PATH": "/from-env",
        },
    )
    assert get_json(srv.url + "/x")["root_path"] == "/from-env"


def test_flag_overrides_env_var(server):
    srv = server(
        "scope_app:app", "--root-path", "/from-flag", env={ENV_PREFIX + "ROOT_PATH": "/env"}
    )
    assert get_json(srv.url + "/x")["root_path"] == "/from-flag"


def test_env_var_for_numeric_flag(server):
    srv = server("basic:app", env={ENV_PREFIX + "TIMEOUT_KEEP_ALIVE": "1"})
    with RawConn(srv.port) as conn:
        conn.send(request_bytes())
        assert conn.read_response().status == 200
        t0 = time.monotonic()
        assert conn.is_closed(timeout=4), "keep-alive timeout from the env var not applied"
        assert time.monotonic() - t0 < 3.5


# -- bad input: one line, no traceback, non-zero ----------------------------------------------


def assert_one_line_error(out, *needles):
    text = out.stdout + out.stderr
    assert out.returncode != 0, f"exit status 0 for a bad invocation:\n{text}"
    assert "Traceback" not in text, f"a traceback instead of a one-line error:\n{text}"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    # one line naming the problem (a usage line and a hint may come with it, as with argparse)
    assert len(lines) <= 3, f"more than a one-line error:\n{out.stderr}"
    assert any(n.lower() in out.stderr.lower() for n in needles), (
        f"error does not name {needles}:\n{out.stderr}"
    )


BAD_FLAGS = {
    "port-not-a-number": (["--port", "abc"], ["port", "abc"]),
    "port-out-of-range": (["--port", "70000"], ["port", "70000"]),
    "lifespan-unknown": (["--lifespan", "maybe"], ["lifespan", "maybe"]),
    "loop-unknown": (["--loop", "nope"], ["loop", "nope"]),
    "timeout-keep-alive-not-a-number": (["--timeout-keep-alive", "soon"], ["keep-alive", "soon"]),
    "limit-concurrency-negative": (["--limit-concurrency", "-5"], ["concurrency", "-5"]),
    "limit-request-line-not-a-number": (["--limit-request-line", "big"], ["request-line", "big"]),
    "limit-request-body-negative": (["--limit-request-body", "-1"], ["request-body", "-1"]),
    "header-without-colon": (["--header", "NoColonHere"], ["header", "NoColonHere"]),
    "log-level-unknown": (["--log-level", "loud"], ["log-level", "loud"]),
    "http-unknown": (["--http", "3"], ["http", "3"]),
    "h2-frame-size-too-small": (["--h2-max-frame-size", "100"], ["frame-size", "100"]),
    "h2-streams-zero": (["--h2-max-concurrent-streams", "0"], ["concurrent-streams", "0"]),
    "unknown-flag": (["--no-such-flag"], ["no-such-flag"]),
}


@pytest.mark.parametrize("name", list(BAD_FLAGS))
def test_bad_flag_value_is_one_line_error(name):
    flags, needles = BAD_FLAGS[name]
    check_flags_supported(flags)
    out = run_cli("basic:app", "--app-dir", "tests/apps", "--port", str(free_port()), *flags)
    assert_one_line_error(out, *needles)


def test_bad_env_var_value_is_one_line_error():
    out = run_cli("basic:app", "--app-dir", "tests/apps", env={ENV_PREFIX + "LIFESPAN": "maybe"})
    assert_one_line_error(out, "lifespan", "maybe")


def test_missing_app_argument_is_error():
    out = run_cli()
    assert out.returncode != 0
    assert "Traceback" not in out.stdout + out.stderr


BAD_APPS = {
    "missing-module": ("no_such_module_xyz:app", ["no_such_module_xyz"]),
    "missing-attribute": ("basic:no_such_attr", ["no_such_attr"]),
    "module-import-fails": ("broken:app", ["does_not_exist_pronghorn_test"]),
    "empty-module": (":app", ["app", "module"]),
}


@pytest.mark.parametrize("name", list(BAD_APPS))
def test_unimportable_app_is_one_line_error(name):
    app, needles = BAD_APPS[name]
    out = run_cli(app, "--app-dir", "tests/apps", "--port", str(free_port()))
    assert_one_line_error(out, *needles)


# -- pronghorn.run() ------------------------------------------------------------------------


def run_script(server, body: str, port: int):
    script = textwrap.dedent(body).format(kind=SERVER_KIND, port=port)
    return server(argv=[sys.executable, "-c", script], port=port)


def test_run_api_with_import_string(server):
    port = free_port()
    srv = run_script(
        server,
        """
        import {kind}
        {kind}.run("scope_app:app", host="127.0.0.1", port={port}, app_dir="tests/apps",
                   root_path="/api", server_header=False)
        """,
        port,
    )
    resp = httpx.get(srv.url + "/x", timeout=5)
    assert json.loads(resp.content)["root_path"] == "/api"
    assert "server" not in resp.headers
    assert srv.stop() == 0


def test_run_api_with_app_object(server):
    port = free_port()
    srv = run_script(
        server,
        """
        import sys
        sys.path.insert(0, "tests/apps")
        import {kind}, scope_app
        {kind}.run(scope_app.app, host="127.0.0.1", port={port}, timeout_keep_alive=1,
                   access_log=False)
        """,
        port,
    )
    assert get_json(srv.url + "/x")["path"] == "/x"
    assert srv.stop() == 0


def test_run_api_rejects_unknown_option():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import {SERVER_KIND}\n"
            "try:\n"
            f"    {SERVER_KIND}.run('basic:app', no_such_option=1)\n"
            "except Exception as e:\n"
            "    print('REJECTED', type(e).__name__, e)\n",
        ],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert "REJECTED" in out.stdout, out.stdout + out.stderr
    assert "no_such_option" in out.stdout


def test_default_server_header_value(server):
    srv = server("basic:app")
    assert httpx.get(srv.url, timeout=5).headers["server"] == SERVER_NAME
