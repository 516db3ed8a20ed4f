"""Logs that tell the whole truth, --log-level debug/trace, the access log's formats, metrics
and health on --metrics-bind, and the uvicorn-parity items of issue 14.

Every test runs real servers (subprocesses) and real clients; access lines are parsed from the
server's log, metrics with prometheus_client's text parser.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from conftest import (
    IS_UVICORN,
    REPO,
    RawConn,
    child_env,
    free_port,
    request_bytes,
    server_executable,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="pronghorn's own logs, metrics and flags")

APP = "observe_app:app"
# 127.0.0.1:53422 - "GET /path?q=1 HTTP/1.1" 200 13 0.4ms[ outcome]
LINE = re.compile(
    r'(?P<client>\S+) - "(?P<method>\S+) (?P<target>\S*) HTTP/(?P<version>[\d.]+)" '
    r"(?P<status>\d{3}|-) (?P<bytes>\d+) (?P<ms>[\d.]+)ms(?: (?P<outcome>.+))?$"
)


def access_lines(srv) -> list[dict]:
    out = []
    for line in srv.log().splitlines():
        if not line.startswith("INFO:"):
            continue
        m = LINE.search(line[10:])
        if m:
            out.append(m.groupdict())
    return out


def wait_lines(srv, predicate, timeout=5.0, what="access line") -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [x for x in access_lines(srv) if predicate(x)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {what} in:\n{srv.log()[-3000:]}")


def raw(port, data: bytes, timeout=5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def scrape(port) -> dict:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name, **match) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == x for k, x in match.items())
    )


# ---- one access line per request, however it ended -----------------------------------------


def test_every_outcome_gets_exactly_one_access_line(server):
    srv = server(
        APP,
        "--limit-request-body",
        "10",
        "--limit-request-line",
        "100",
        "--limit-request-headers",
        "5",
        "--timeout-request-header",
        "0.5",
    )
    port = srv.port
    httpx.get(f"{srv.url}/ok-path", timeout=5)
    raw(port, b"GET /bad\x01path HTTP/1.1\r\nHost: x\r\n\r\n")  # 400
    raw(port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # 414
    raw(port, b"GET /many HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(9)) + b"\r\n")
    raw(port, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")  # 501
    raw(port, b"GET /v HTTP/3.0\r\nHost: x\r\n\r\n")  # 505
    raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n" + b"x" * 50)  # 413
    raw(port, b"GET /slow-head HTTP/1.1\r\nHost: x\r\n")  # 408 after the header timeout
    raw(port, request_bytes("GET", "/error-after"))  # aborted (app error)
    raw(port, request_bytes("GET", "/cancel"))  # 500 cancelled
    with RawConn(port) as conn:  # the client leaves a stream
        conn.send(request_bytes("GET", "/stream"))
        conn.read_head()
        time.sleep(0.1)
    wait_lines(srv, lambda x: x["target"] == "/stream", what="/stream's line")
    wait_lines(srv, lambda x: x["status"] == "408", what="408")
    lines = access_lines(srv)
    by_target = {}
    for x in lines:
        by_target.setdefault(x["target"], []).append(x)
    expect = {
        "/ok-path": ("200", None),
        "/bad": ("400", None),
        "/many": ("431", None),
        "/pot": ("501", None),
        "/v": ("505", None),
        "/echo": ("413", None),
        "/slow-head": ("408", None),
        "/error-after": ("200", "aborted (app error)"),
        "/cancel": ("500", "cancelled"),
        "/stream": ("200", "aborted (client gone)"),
    }
    for target, (status, outcome) in expect.items():
        got = [x for t, xs in by_target.items() if t.startswith(target) for x in xs]
        assert len(got) == 1, (target, lines, srv.log()[-2000:])
        assert (got[0]["status"], got[0]["outcome"]) == (status, outcome), (target, got)
    long_one = [x for x in lines if x["status"] == "414"]
    assert len(long_one) == 1 and long_one[0]["target"].startswith("/aaa"), lines
    stream = by_target["/stream"][0]
    assert int(stream["bytes"]) > 0 and float(stream["ms"]) >= 100, stream
    assert len(lines) == len(expect) + 1, lines
    # a CancelledError escaping the app is an error with its traceback, not silence
    assert "CancelledError escaped the ASGI application" in srv.log()


def test_limit_rejections_are_logged_counted_and_warned(server):
    srv = server(APP, "--limit-concurrency", "1", "--limit-max-connections", "3")
    slow = RawConn(srv.port, timeout=10)
    try:
        slow.send(request_bytes("GET", "/slow?s=1.5"))
        time.sleep(0.2)
        for _ in range(3):
            assert httpx.get(f"{srv.url}/busy", timeout=5).status_code == 503
        held = [RawConn(srv.port) for _ in range(2)]  # with the slow one: the limit
        time.sleep(0.2)
        refused = raw(srv.port, request_bytes("GET", "/over"))
        assert refused.startswith(b"HTTP/1.1 503"), refused
        for c in held:
            c.close()
        assert slow.read_response().status == 200
    finally:
        slow.close()
    lines = wait_lines(srv, lambda x: x["status"] == "503" and x["outcome"], what="503 lines")
    conc = [x for x in access_lines(srv) if x["outcome"] == "(limit-concurrency)"]
    conns = [x for x in access_lines(srv) if x["outcome"] == "(limit-max-connections)"]
    assert len(conc) == 3 and all(x["target"] == "/busy" for x in conc), lines
    assert len(conns) == 1 and conns[0]["method"] == "-", lines
    warnings = re.findall(r"WARNING: +--limit-\S+ reached", srv.log())
    assert 1 <= len(warnings) <= 2, srv.log()  # rate limited: not one per request


def test_client_leaving_a_stream_is_debug_not_error(server):
    srv = server(APP, "--log-level", "debug")
    for _ in range(3):
        with RawConn(srv.port) as conn:
            conn.send(request_bytes("GET", "/stream"))
            conn.read_head()
            time.sleep(0.05)
    wait_lines(srv, lambda x: x["target"] == "/stream", what="stream lines")
    time.sleep(0.3)
    log = srv.log()
    assert "ERROR" not in log and "Traceback" not in log, log
    assert len(re.findall(r"DEBUG: +Exception in ASGI application after the client left", log)) == 3


def test_starlette_client_disconnect_is_debug(server, tmp_path):
    (tmp_path / "sse_app.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            from starlette.applications import Starlette
            from starlette.requests import ClientDisconnect
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def upload(request):
                async for _ in request.stream():
                    pass
                return PlainTextResponse("done")

            app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
            """
        )
    )
    srv = server("sse_app:app", "--app-dir", tmp_path, "--log-level", "debug")
    with RawConn(srv.port) as conn:  # the body never comes whole: the client leaves
        conn.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        time.sleep(0.2)
    srv.wait_for_log(
        r"DEBUG: +Exception in ASGI application after the client left: "
        r"ClientDisconnect"
    )
    assert "ERROR" not in srv.log()
    wait_lines(srv, lambda x: x["target"] == "/upload" and x["outcome"] == "aborted (client gone)")


def test_paths_are_readable_and_bytes_are_real(server):
    srv = server(APP)
    httpx.get(f"{srv.url}/caf%C3%A9?x=%C3%A9", timeout=5)
    raw(srv.port, "GET /café HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    httpx.get(f"{srv.url}/empty", timeout=5)
    httpx.post(f"{srv.url}/echo", content=b"x" * 7, timeout=5)
    lines = wait_lines(srv, lambda x: x["target"] == "/echo")
    lines = access_lines(srv)
    cafe = [x for x in lines if x["target"].startswith("/café")]
    assert [x["target"] for x in cafe] == ["/café?x=%C3%A9", "/café"], lines
    empty = [x for x in lines if x["target"] == "/empty"][0]
    assert (empty["status"], empty["bytes"]) == ("204", "0")


def test_access_log_format_atoms_and_headers(server):
    fmt = (
        "%(client)s|%(method)s|%(path)s|%(query)s|%(version)s|%(status)s|%(bytes_in)s|"
        "%(bytes_out)s|%(duration_ms).2f|%(request_id)s|%({user-agent}i)s|%({x-out}o)s|"
        "%(outcome)s|%(time)s"
    )
    srv = server(APP, "--access-log-format", fmt)
    httpx.post(
        f"{srv.url}/echo?q=1",
        content=b"abcd",
        headers={"user-agent": "tester/1", "x-request-id": "rid-42"},
        timeout=5,
    )
    httpx.get(f"{srv.url}/headers", timeout=5)
    srv.wait_for_log(r"\|/headers\|")
    lines = [line[10:] for line in srv.log().splitlines() if line.count("|") == 13]
    first = lines[0].split("|")
    assert first[1:8] == ["POST", "/echo", "q=1", "1.1", "200", "4", "4"], first
    assert first[9:13] == ["rid-42", "tester/1", "-", "-"], first
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", first[13]), first
    second = lines[1].split("|")
    assert second[9] == "-" and second[11] == "out-value", second


def test_bad_access_log_format_is_one_line(server):
    srv = server(APP, "--access-log-format", "%(nosuch)s", wait=False)
    assert srv.wait_exit(10) == 2
    assert "--access-log-format" in srv.log() and "Traceback" not in srv.log()


def test_json_log_format(server):
    srv = server(APP, "--log-format", "json")
    httpx.get(f"{srv.url}/json?q=2", timeout=5)
    raw(srv.port, b"GET /x HTTP/1.1\r\n\r\n")  # 400: no Host
    srv.wait_for_log(r'"status": 400')
    objects = [json.loads(line) for line in srv.log().splitlines() if line.startswith("{")]
    access = [o for o in objects if o["logger"] == "pronghorn.access"]
    assert access[0]["path"] == "/json" and access[0]["query"] == "q=2", access
    assert access[0]["status"] == 200 and access[0]["bytes_out"] == 13, access
    assert access[1]["status"] == 400 and access[1]["reason"] == "malformed", access
    assert any(o["logger"] == "pronghorn.error" and o["level"] == "INFO" for o in objects)
    assert all(set(o) >= {"time", "level", "logger", "message"} for o in objects)


def test_log_config_json_yaml_and_ini(server, tmp_path):
    out = tmp_path / "access.log"
    cfg = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "CFG %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "plain"}
        },
        "loggers": {
            "pronghorn.access": {"handlers": ["file"], "level": "INFO", "propagate": False}
        },
    }
    path = tmp_path / "log.json"
    path.write_text(json.dumps(cfg))
    srv = server(APP, "--log-config", path)
    httpx.get(f"{srv.url}/configured", timeout=5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "/configured" not in (
        out.read_text() if out.exists() else ""
    ):
        time.sleep(0.05)
    assert re.search(
        r'CFG INFO pronghorn\.access .*"GET /configured HTTP/1\.1" 200', out.read_text()
    )
    srv.stop()

    yaml_path = tmp_path / "log.yaml"
    import yaml

    cfg["formatters"]["plain"]["format"] = "YAML %(name)s %(message)s"
    yaml_path.write_text(yaml.safe_dump(cfg))
    srv = server(APP, "--log-config", yaml_path)
    httpx.get(f"{srv.url}/yaml", timeout=5)
    time.sleep(0.3)
    srv.stop()
    assert "YAML pronghorn.access" in out.read_text()

    ini = tmp_path / "log.ini"
    ini.write_text(
        textwrap.dedent(
            f"""
            [loggers]
            keys=root,access
            [handlers]
            keys=file
            [formatters]
            keys=plain
            [logger_root]
            handlers=
            [logger_access]
            handlers=file
            qualname=pronghorn.access
            propagate=0
            level=INFO
            [handler_file]
            class=FileHandler
            args=({str(out)!r},)
            formatter=plain
            [formatter_plain]
            format=INI %(name)s %(message)s
            """
        )
    )
    srv = server(APP, "--log-config", ini)
    httpx.get(f"{srv.url}/ini", timeout=5)
    time.sleep(0.3)
    srv.stop()
    assert re.search(r'INI pronghorn\.access .*"GET /ini HTTP/1\.1" 200', out.read_text())


def test_log_config_in_run_takes_a_dict(tmp_path):
    out = tmp_path / "run.log"
    port = free_port()
    script = textwrap.dedent(
        f"""
        import pronghorn, threading, time, httpx, os, signal
        cfg = {{"version": 1, "disable_existing_loggers": False,
                "handlers": {{"f": {{"class": "logging.FileHandler", "filename": {str(out)!r}}}}},
                "loggers": {{"pronghorn.access": {{"handlers": ["f"], "level": "INFO"}}}}}}
        def poke():
            for _ in range(100):
                try:
                    httpx.get("http://127.0.0.1:{port}/from-run", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=poke, daemon=True).start()
        pronghorn.run("observe_app:app", port={port}, app_dir="tests/apps", log_config=cfg)
        """
    )
    subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=child_env(), timeout=30, check=True
    )
    assert "GET /from-run HTTP/1.1" in out.read_text()


def test_use_colors(server):
    srv = server(APP, "--use-colors")
    httpx.get(f"{srv.url}/colored", timeout=5)
    srv.wait_for_log(r"/colored")
    assert "\x1b[32mINFO\x1b[0m:" in srv.log()
    assert re.search(r'"GET /colored HTTP/1\.1" \x1b\[32m200\x1b\[0m ', srv.log())
    plain = server(APP, "--no-use-colors")  # and auto: not a TTY here
    httpx.get(f"{plain.url}/plain", timeout=5)
    plain.wait_for_log(r"/plain")
    assert "\x1b[" not in plain.log()


# ---- debug and trace -------------------------------------------------------------------------


def test_debug_lines_connections_lifespan_and_shutdown(server):
    srv = server(APP, "--log-level", "debug", "--timeout-keep-alive", "0.3")
    with RawConn(srv.port) as conn:
        conn.send(request_bytes("GET", "/"))
        conn.read_response()
        assert conn.is_closed(3)  # the keep-alive timeout closes it
    srv.wait_for_log(r"DEBUG: +127\.0\.0\.1:\d+ - connection closed \(keep-alive timeout\)")
    assert re.search(r"DEBUG: +127\.0\.0\.1:\d+ - connection open", srv.log())
    raw(srv.port, b"GET / HTTP/1.1\r\n\r\n")  # no Host: 400
    srv.wait_for_log(r"DEBUG: +127\.0\.0\.1:\d+ - rejected GET /: 400 \(malformed\)")
    assert "Lifespan: the app sent lifespan.startup.complete" in srv.log()
    slow = RawConn(srv.port, timeout=10)
    slow.send(request_bytes("GET", "/slow?s=1"))
    time.sleep(0.2)
    srv.send_signal(signal.SIGTERM)
    srv.wait_for_log(r"Waiting for 1 request\(s\) and 1 connection\(s\) to finish; press Ctrl\+C")
    assert slow.read_response().status == 200
    slow.close()
    assert srv.wait_exit(10) == 0
    assert "Lifespan: the app sent lifespan.shutdown.complete" in srv.log()


def test_info_adds_no_debug_lines(server):
    srv = server(APP)
    httpx.get(f"{srv.url}/", timeout=5)
    time.sleep(0.2)
    assert "connection open" not in srv.log() and "DEBUG" not in srv.log()


def test_trace_shows_asgi_messages_without_bodies(server):
    srv = server(APP, "--log-level", "trace")
    httpx.post(f"{srv.url}/echo", content=b"secret-body-bytes", timeout=5)
    srv.wait_for_log(r"ASGI \[\d+\] returned")
    log = srv.log()
    assert re.search(r"TRACE: +ASGI \[(\d+)\] scope \{'type': 'http'", log), log
    assert re.search(r"ASGI \[\d+\] receive \{'type': 'http.request', 'body': '<17 bytes>'", log)
    assert re.search(r"ASGI \[\d+\] send \{'type': 'http.response.start', 'status': 200", log)
    assert "secret-body-bytes" not in log


# ---- metrics and health ----------------------------------------------------------------------


def test_metrics_count_what_was_sent(server):
    mport = free_port()
    srv = server(APP, "--metrics-bind", f"127.0.0.1:{mport}", "--limit-request-body", "10")
    with httpx.Client(base_url=srv.url, timeout=5) as client:
        for _ in range(20):
            assert client.get("/").status_code == 200
        for _ in range(5):
            client.post("/echo", content=b"abc")
        client.get("/another")
    raw(srv.port, b"GET / HTTP/1.1\r\n\r\n")  # 400 malformed
    raw(srv.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n" + b"x" * 50)
    time.sleep(0.3)
    s = scrape(mport)
    assert value(s, "pronghorn_requests_total", method="GET", status_class="2xx") == 21
    assert value(s, "pronghorn_requests_total", method="POST", status_class="2xx") == 5
    assert value(s, "pronghorn_requests_total", method="POST", status_class="4xx") == 1  # 413
    assert value(s, "pronghorn_requests_total", method="GET", status_class="4xx") == 1  # 400
    assert value(s, "pronghorn_requests_rejected_total", reason="malformed") == 1
    assert value(s, "pronghorn_requests_rejected_total", reason="body_too_large") == 1
    assert value(s, "pronghorn_request_duration_seconds_count") == 28
    assert value(s, "pronghorn_request_duration_seconds_bucket", le="+Inf") == 28
    assert value(s, "pronghorn_request_ends_total", end="ok") == 26
    assert value(s, "pronghorn_connections_total") >= 3
    assert value(s, "pronghorn_received_bytes_total") > 26 * 20
    assert value(s, "pronghorn_sent_bytes_total") > 26 * 13
    assert value(s, "pronghorn_workers") == 1
    assert value(s, "pronghorn_process_resident_memory_bytes", worker="0") > 10e6
    assert value(s, "pronghorn_process_open_fds", worker="0") > 3
    assert value(s, "pronghorn_requests_in_flight") == 0
    # gauges while something is in flight
    slow = RawConn(srv.port, timeout=10)
    slow.send(request_bytes("GET", "/slow?s=1"))
    time.sleep(0.3)
    s = scrape(mport)
    assert value(s, "pronghorn_requests_in_flight") == 1
    assert value(s, "pronghorn_connections_open", protocol="http1") == 1
    slow.read_response()
    slow.close()


def test_metrics_app_errors_and_disconnects(server):
    mport = free_port()
    srv = server(APP, "--metrics-bind", f"127.0.0.1:{mport}")
    raw(srv.port, request_bytes("GET", "/error-after"))
    with RawConn(srv.port) as conn:
        conn.send(request_bytes("GET", "/stream"))
        conn.read_head()
    time.sleep(0.4)
    s = scrape(mport)
    assert value(s, "pronghorn_app_exceptions_total") == 1
    assert value(s, "pronghorn_client_disconnects_total") == 1
    assert value(s, "pronghorn_request_ends_total", end="app_error") == 1


def test_health_and_readiness(server):
    mport = free_port()
    srv = server(APP, "--metrics-bind", f"127.0.0.1:{mport}", "--timeout-graceful-shutdown", "5")
    base = f"http://127.0.0.1:{mport}"
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
    slow = RawConn(srv.port, timeout=10)
    slow.send(request_bytes("GET", "/slow?s=1.5"))
    time.sleep(0.2)
    srv.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 503  # draining
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # but alive
    assert slow.read_response().status == 200
    slow.close()
    assert srv.wait_exit(10) == 0


def test_healthz_fails_while_the_event_loop_is_stuck(server, tmp_path):
    (tmp_path / "stuck_app.py").write_text(
        textwrap.dedent(
            """
            import time
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                if scope["path"] == "/block":
                    time.sleep(2)  # blocks the event loop
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"x"})
            """
        )
    )
    mport = free_port()
    srv = server(
        "stuck_app:app",
        "--app-dir",
        tmp_path,
        "--metrics-bind",
        f"127.0.0.1:{mport}",
        "--lifespan",
        "off",
    )
    base = f"http://127.0.0.1:{mport}"
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    blocker = RawConn(srv.port, timeout=10)
    blocker.send(request_bytes("GET", "/block"))
    time.sleep(1.4)
    r = httpx.get(f"{base}/healthz", timeout=5)
    assert r.status_code == 503 and "not answering" in r.text
    blocker.read_response()
    blocker.close()
    time.sleep(0.5)
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200


def test_metrics_with_workers_add_up_and_never_go_back(server):
    mport = free_port()
    srv = server(APP, "--workers", "2", "--metrics-bind", f"127.0.0.1:{mport}")
    srv.wait_for_log(r"Metrics on http://127\.0\.0\.1:\d+/metrics")
    base = f"http://127.0.0.1:{mport}"
    deadline = time.monotonic() + 10
    while value(scrape(mport), "pronghorn_workers") != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for _ in range(40):  # new connections: both workers take some
        assert httpx.get(f"{srv.url}/", timeout=5).status_code == 200
    time.sleep(0.3)
    s = scrape(mport)
    assert value(s, "pronghorn_requests_total", method="GET", status_class="2xx") == 40
    workers = {dict(k[1])["worker"] for k in s if k[0] == "pronghorn_event_loop_lag_seconds"}
    assert len(workers) == 2
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    pids = [int(p) for p in open(f"/proc/{srv.pid}/task/{srv.pid}/children").read().split()]
    os.kill(pids[0], signal.SIGKILL)  # its counts must stay in the totals
    srv.wait_for_log(r"Worker \[\d+\] .*(killed|signal)")
    time.sleep(0.5)
    s = scrape(mport)
    assert value(s, "pronghorn_requests_total", method="GET", status_class="2xx") == 40
    srv.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    with _maybe_closed():
        r = httpx.get(f"{base}/readyz", timeout=2)
        assert r.status_code == 503
    assert srv.wait_exit(15) == 0


class _maybe_closed:
    """The supervisor may be gone already by the time the scrape connects."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, httpx.TransportError)


def test_wsgi_metrics_and_access_lines(server):
    mport = free_port()
    srv = server(
        "wsgi_app:app", "--metrics-bind", f"127.0.0.1:{mport}", "--limit-request-body", "5"
    )
    for _ in range(7):
        httpx.get(f"{srv.url}/", timeout=5)
    raw(srv.port, b"GET / HTTP/1.1\r\n\r\n")
    time.sleep(0.3)
    s = scrape(mport)
    assert value(s, "pronghorn_requests_total", method="GET", status_class="2xx") == 7
    assert value(s, "pronghorn_requests_rejected_total", reason="malformed") == 1
    assert len([x for x in access_lines(srv) if x["status"] == "400"]) == 1


def test_metrics_bind_taken_is_one_line(server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = server(APP, "--metrics-bind", f"127.0.0.1:{port}", wait=False)
        assert srv.wait_exit(10) == 1
    assert "--metrics-bind: cannot bind" in srv.log() and "Traceback" not in srv.log()


# ---- uvicorn parity --------------------------------------------------------------------------


def test_header_server_replaces_the_default(server):
    srv = server(APP, "--header", "Server: edge/1", "--header", "X-Team: core")
    for http2 in (False, True):
        with httpx.Client(http2=http2, timeout=5) as client:
            r = client.get(f"{srv.url}/")
            assert r.headers.get_list("server") == ["edge/1"], r.headers
            assert r.headers["x-team"] == "core"
            assert client.get(f"{srv.url}/own-server").headers.get_list("server") == ["mine"]
    answer = raw(srv.port, b"GET / HTTP/1.1\r\n\r\n")  # the server's own 400 too
    assert answer.lower().count(b"\r\nserver: ") == 1 and b"server: edge/1" in answer.lower()


def test_uds_scope_server_is_path_and_none(server, tmp_path):
    path = str(tmp_path / "p.sock")
    server(APP, "--uds", path, bind=False, uds=path)
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as client:
        assert client.get("http://x/server").json() == [path, None]


def test_factory_without_flag_is_detected(server):
    srv = server("observe_app:create_app")
    assert httpx.get(f"{srv.url}/", timeout=5).text == "Hello, world!"
    assert re.search(
        r'WARNING: +app "observe_app:create_app" takes no arguments: calling it as '
        r"an app factory",
        srv.log(),
    )


def test_no_llhttp_words_to_clients(server):
    srv = server(APP, "--http", "1")
    answer = raw(srv.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Pause" not in answer and b"PRI/Upgrade" not in answer
    assert answer.endswith(b"HTTP/2 is not served on this connection\n"), answer
    for bad in (
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ):
        body = raw(srv.port, bad).split(b"\r\n\r\n", 1)[1]
        # llhttp's own reasons name its states ("Expected LF after ...", "Invalid character in
        # Content-Length", "Span callback error"): none of them reaches a client
        assert not re.search(
            rb"Expected|Span|callback|Pause|char in|Invalid character in C", body
        ), (bad, body)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 here")
def test_host_localhost_binds_every_address(server):
    port = free_port()
    srv = server(APP, "--host", "localhost", "--port", port, bind=False, port=port)
    infos = {i[4][0] for i in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    for host in infos:
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        assert httpx.get(url, timeout=5).status_code == 200, host
        shown = f"[{host}]" if ":" in host else host
        assert f"pronghorn running on http://{shown}:{port}" in srv.log()


def test_env_file(server, tmp_path):
    env = tmp_path / "app.env"
    port = free_port()
    env.write_text(f"# comment\nGREETING='hello from env'\nexport OTHER=2\nPRONGHORN_PORT={port}\n")
    srv = server(APP, "--env-file", env, "--host", "127.0.0.1", bind=False, port=port)
    assert httpx.get(f"{srv.url}/env?name=GREETING", timeout=5).text == "hello from env"
    assert httpx.get(f"{srv.url}/env?name=OTHER", timeout=5).text == "2"
    missing = server(APP, "--env-file", tmp_path / "nope.env", wait=False)
    assert missing.wait_exit(10) == 2
    assert "--env-file: no such file" in missing.log()


def test_embedded_server_serves_beside_other_tasks(tmp_path):
    port = free_port()
    script = textwrap.dedent(
        f"""
        import asyncio, httpx, pronghorn

        async def main():
            server = pronghorn.Server(pronghorn.Config(
                "observe_app:app", port={port}, app_dir="tests/apps", access_log=False))
            ticks = []

            async def other():
                while True:
                    ticks.append(1)
                    await asyncio.sleep(0.01)

            async def client():
                while not server.started:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the other task runs on meanwhile
                async with httpx.AsyncClient() as c:
                    r = await c.get("http://127.0.0.1:{port}/")
                print("GOT", r.status_code, r.text, flush=True)
                server.should_exit = True

            side = asyncio.create_task(other())
            poke = asyncio.create_task(client())
            code = await server.serve()
            side.cancel()
            await poke
            print("CODE", code, "TICKS", len(ticks) > 5, flush=True)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "GOT 200 Hello, world!" in out.stdout, out.stdout + out.stderr
    assert "CODE 0 TICKS True" in out.stdout, out.stdout + out.stderr


def test_lifespan_startup_failure_exits_3(server, tmp_path):
    (tmp_path / "fail_app.py").write_text(
        textwrap.dedent(
            """
            async def app(scope, receive, send):
                assert scope["type"] == "lifespan"
                await receive()
                await send({"type": "lifespan.startup.failed", "message": "no db"})
            """
        )
    )
    srv = server("fail_app:app", "--app-dir", tmp_path, wait=False)
    assert srv.wait_exit(10) == 3
    assert "Application startup failed: no db" in srv.log()


def test_fd_that_is_not_a_socket_is_one_line(tmp_path):
    path = tmp_path / "plain"
    path.write_text("x")
    with open(path) as f:
        out = subprocess.run(
            [*server_executable(), APP, "--app-dir", "tests/apps", "--fd", str(f.fileno())],
            pass_fds=[f.fileno()],
            cwd=REPO,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_metrics_listener_survives_stalled_and_bad_clients(server):
    mport = free_port()
    server(APP, "--metrics-bind", f"127.0.0.1:{mport}")
    stalled = socket.create_connection(("127.0.0.1", mport))
    stalled.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finishes its head
    try:
        assert httpx.get(f"http://127.0.0.1:{mport}/healthz", timeout=5).status_code == 200
        assert raw(mport, b"X" * 9000).startswith(b"HTTP/1.1 431")
        assert raw(mport, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert stalled.recv(100) == b""  # dropped after the endpoint's timeout
    finally:
        stalled.close()
    assert httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).status_code == 200
