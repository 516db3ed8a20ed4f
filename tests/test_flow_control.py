"""Request bodies stream through ``receive()`` with backpressure; ``send()`` waits for the
socket; small things stay small."""

import hashlib
import os
import time
import uuid

import httpx
from conftest import RawConn, request_bytes

MiB = 1 << 20


def progress(srv, token):
    return httpx.get(f"{srv.url}/progress", params={"token": token}, timeout=5).json()


def test_receive_streams_body_as_chunks(basic):
    body = os.urandom(8 * MiB)
    resp = httpx.post(f"{basic.url}/echo-info", content=body, timeout=20)
    info = resp.json()
    assert info["length"] == len(body)
    assert info["sha256"] == hashlib.sha256(body).hexdigest()
    # delivered as several http.request messages: more_body=True on all but the last
    assert info["chunks"] > 1
    assert info["max_chunk"] < len(body)
    assert info["all_but_last_more"] is True
    assert info["last_more_body"] is False


def test_empty_body_is_one_message_without_more_body(basic):
    info = httpx.post(f"{basic.url}/echo-info", content=b"", timeout=5).json()
    assert info["length"] == 0
    assert info["chunks"] == 1
    assert info["last_more_body"] is False


def test_upload_backpressure_pauses_reading_then_resumes(basic):
    """A 64 MiB upload to an app that reads one chunk and then waits: the client's send stalls
    (the server did not buffer the upload); when the app reads again, all of it arrives."""
    token = uuid.uuid4().hex
    total = 64 * MiB
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    for _ in range(total // MiB):
        expected.update(block)
    view = memoryview(block)

    conn = RawConn(basic.port, sndbuf=64 * 1024)
    try:
        conn.send(
            request_bytes(
                "POST",
                f"/slow-upload?token={token}",
                headers=[("Content-Length", str(total))],
            )
        )
        sock = conn.sock
        sock.settimeout(1.0)
        sent = 0
        stalled = False
        while sent < total:
            try:
                sent += sock.send(view[sent % MiB :])
            except TimeoutError:
                stalled = True
                break
        assert stalled, "the server accepted the whole 64 MiB upload while the app was not reading"
        assert sent < total // 2, f"{sent / MiB:.1f} MiB accepted before the send stalled"
        # still stalled a little later: the server is not reading on our behalf
        sock.settimeout(0.5)
        try:
            more = sock.send(view[sent % MiB :])
        except TimeoutError:
            more = 0
        sent += more
        state = progress(basic, token)
        assert state["state"] == "paused", state

        httpx.get(f"{basic.url}/resume", params={"token": token}, timeout=5)
        sock.settimeout(10)
        while sent < total:
            sent += sock.send(view[sent % MiB :])
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status == 200
    info = resp.json()
    assert info["length"] == total
    assert info["sha256"] == expected.hexdigest()


def test_download_backpressure_send_waits_for_slow_client(basic):
    """An app sending 64 × 1 MiB to a client that does not read stalls well before the end
    (send() waits on the write buffer's high-water mark); then the client reads every byte."""
    token = uuid.uuid4().hex
    n = 64
    conn = RawConn(basic.port, rcvbuf=64 * 1024, timeout=10)
    try:
        conn.send(request_bytes("GET", f"/download?token={token}&n={n}"))
        time.sleep(1.0)
        first = progress(basic, token)
        time.sleep(0.5)
        second = progress(basic, token)
        assert first is not None, "the app never started"
        assert second["sent"] < n // 2, f"app sent {second['sent']} MiB to a client not reading"
        assert second["sent"] - first["sent"] <= 1, "still sending while the client does not read"
        resp = conn.read_response()
    finally:
        conn.close()
    assert resp.status == 200
    assert len(resp.body) == n * MiB
    for i in range(n):
        assert resp.body[i * MiB : (i + 1) * MiB] == bytes([i % 256]) * MiB, f"chunk {i} differs"
    final = progress(basic, token)
    assert final["sent"] == n


def test_stalled_connection_does_not_block_other_clients(basic):
    token = uuid.uuid4().hex
    with RawConn(basic.port, rcvbuf=64 * 1024) as conn:
        conn.send(request_bytes("GET", f"/download?token={token}&n=32"))
        time.sleep(0.3)
        t0 = time.monotonic()
        for i in range(5):
            assert httpx.get(f"{basic.url}/id", params={"n": i}, timeout=5).text == str(i)
        assert time.monotonic() - t0 < 3
