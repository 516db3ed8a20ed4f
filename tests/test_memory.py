"""No memory growth over a keep-alive run: RSS after a warm-up of 1000 requests and after
1000 more differ by at most a small slack (not a timing test)."""

import pytest
from conftest import RawConn, proc_status, request_bytes

SLACK = 1 << 20  # 1 MiB


def run_requests(port, n):
    body = b"m" * 1024
    with RawConn(port, timeout=10) as conn:
        for i in range(n):
            if i % 2:
                conn.send(request_bytes("POST", "/echo", body=body))
                assert conn.read_response().body == body
            else:
                conn.send(request_bytes("GET", f"/id?n={i}", headers=[("X-Request", str(i))]))
                assert conn.read_response().body == str(i).encode()


@pytest.mark.timeout(120)
def test_keep_alive_run_does_not_grow_rss(server):
    srv = server("basic:app", "--no-access-log")
    run_requests(srv.port, 1000)
    warm = proc_status(srv.pid, "VmRSS")
    run_requests(srv.port, 1000)
    after = proc_status(srv.pid, "VmRSS")
    growth = after - warm
    assert growth <= SLACK, f"RSS grew by {growth / 1024:.0f} KiB over 1000 keep-alive requests"
