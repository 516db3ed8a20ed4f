"""Access log lines through ``pronghorn.access``; errors through ``pronghorn.error``."""

import re
import time

import httpx
from conftest import SERVER_NAME, RawConn, request_bytes

# 127.0.0.1:53422 - "GET /path?q=1 HTTP/1.1" 200 13 0.4ms
ACCESS_RE = (
    r'127\.0\.0\.1:(\d+) - "{method} {target} HTTP/{version}" {status} {size}'
    r" [\d.]+ ?(?:ns|us|µs|ms|s)\b"
)


def access_re(method="GET", target="/", version="1.1", status=200, size=r"\d+"):
    return ACCESS_RE.format(
        method=method,
        target=re.escape(target),
        version=re.escape(version),
        status=status,
        size=size,
    )


def test_access_log_line(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("GET", "/path?q=1"))
        conn.read_response()
        port = conn.local_port
    m = basic.wait_for_log(access_re("GET", "/path?q=1", size=13))
    assert int(m.group(1)) == port


def test_access_log_status_bytes_and_version(basic):
    with RawConn(basic.port) as conn:
        conn.send(request_bytes("POST", "/status/418", body=b"abc", version="HTTP/1.0"))
        conn.read_response()
    basic.wait_for_log(access_re("POST", "/status/418", version="1.0", status=418, size=4))


def test_access_log_for_500(basic):
    httpx.get(f"{basic.url}/error-before?x=1", timeout=5)
    basic.wait_for_log(access_re("GET", "/error-before?x=1", status=500))


def test_no_access_log_flag(server):
    srv = server("basic:app", "--no-access-log")
    httpx.get(f"{srv.url}/quiet-path", timeout=5)
    time.sleep(0.3)
    assert "/quiet-path" not in srv.log()


def test_log_level_warning_hides_access_log_but_not_errors(server):
    # Like uvicorn: --log-level applies to the access logger too.
    srv = server("basic:app", "--log-level", "warning")
    httpx.get(f"{srv.url}/quiet-path", timeout=5)
    httpx.get(f"{srv.url}/error-before", timeout=5)
    srv.wait_for_log("boom-before-start")
    assert "/quiet-path" not in srv.log()


def test_lines_go_through_named_loggers(server, tmp_path):
    srv = server("basic:app")
    capture = tmp_path / "captured.log"
    with httpx.Client(base_url=srv.url, timeout=5) as client:
        client.get("/capture-logs", params={"file": str(capture)})
        client.get("/logged?q=1")
        client.get("/error-before")
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = capture.read_text() if capture.exists() else ""
        if "boom-before-start" in text and "/logged" in text:
            break
        time.sleep(0.05)
    assert re.search(rf"ACCESS\|{SERVER_NAME}\.access\|.*GET /logged\?q=1 HTTP/1\.1\" 200", text), (
        text
    )
    assert re.search(rf"ERROR\|{SERVER_NAME}\.error\|", text), text
    assert "Traceback" in text
    assert "RuntimeError: boom-before-start" in text
