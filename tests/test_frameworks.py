"""Starlette and FastAPI apps served correctly: routes, JSON, form upload, streaming
response, background task, lifespan; over HTTP/1.1 and over HTTP/2 (h2c)."""

import time

import httpx
import pytest
from conftest import IS_UVICORN

UPLOAD = bytes(range(256)) * 400  # 100 KiB, every byte value


@pytest.fixture(scope="module")
def starlette_srv(module_server):
    return module_server("starlette_app:app")


@pytest.fixture(scope="module")
def fastapi_srv(module_server):
    return module_server("fastapi_app:app")


@pytest.fixture(params=["http1", "http2"])
def proto(request):
    if request.param == "http2" and IS_UVICORN:
        pytest.skip("uvicorn has no HTTP/2")
    return request.param


def client(srv, proto="http1"):
    """An httpx client that speaks HTTP/1.1, or HTTP/2 by prior knowledge."""
    h2 = proto == "http2"
    return httpx.Client(base_url=srv.url, timeout=10, http1=not h2, http2=h2)


def wait_background(c, value):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if value in c.get("/background-result").json()["done"]:
            return
        time.sleep(0.05)
    raise AssertionError(f"background task for {value!r} never ran")


# -- Starlette ------------------------------------------------------------------------------


def test_starlette_routes(starlette_srv, proto):
    with client(starlette_srv, proto) as c:
        r = c.get("/")
        assert r.status_code == 200
        assert r.http_version == ("HTTP/2" if proto == "http2" else "HTTP/1.1")
        assert r.text == "starlette home"
        assert r.headers["content-type"].startswith("text/plain")
        assert c.get("/items/42", params={"q": "x"}).json() == {"item_id": 42, "q": "x"}
        assert c.get("/nowhere").status_code == 404
        assert c.put("/json").status_code == 405


def test_starlette_json(starlette_srv, proto):
    with client(starlette_srv, proto) as c:
        r = c.post("/json", json={"a": [1, 2, {"b": "café"}]})
    assert r.json() == {"received": {"a": [1, 2, {"b": "café"}]}, "method": "POST"}


def test_starlette_form_upload(starlette_srv, proto):
    with client(starlette_srv, proto) as c:
        r = c.post(
            "/upload",
            data={"name": "report"},
            files={"file": ("data.bin", UPLOAD, "application/octet-stream")},
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "name": "report",
        "filename": "data.bin",
        "size": len(UPLOAD),
        "head": UPLOAD[:16].decode("latin-1"),
    }


def test_starlette_streaming_response(starlette_srv, proto):
    with client(starlette_srv, proto) as c, c.stream("GET", "/stream") as r:
        if proto == "http2":
            assert r.http_version == "HTTP/2"
        else:
            assert r.headers.get("transfer-encoding") == "chunked"
        lines = list(r.iter_lines())
    assert lines == [f"line {i}" for i in range(5)]


def test_starlette_background_task(starlette_srv, proto):
    with client(starlette_srv, proto) as c:
        assert c.get("/background", params={"value": "bg-1"}).text == "scheduled"
        wait_background(c, "bg-1")


def test_starlette_lifespan_state(starlette_srv, proto):
    assert "STARLETTE-STARTUP" in starlette_srv.log()
    with client(starlette_srv, proto) as c:
        assert c.get("/state").json() == {"greeting": "hello from lifespan"}


def test_starlette_request_client_and_url(starlette_srv, proto):
    with client(starlette_srv, proto) as c:
        r = c.get("/client", params={"a": "1"}).json()
    assert r["client"][0] == "127.0.0.1"
    assert r["url"] == f"{starlette_srv.url}/client?a=1"


def test_starlette_lifespan_shutdown(server):
    srv = server("starlette_app:app")
    assert httpx.get(srv.url, timeout=5).status_code == 200
    assert srv.stop() == 0
    assert "STARLETTE-SHUTDOWN" in srv.log()


# -- FastAPI --------------------------------------------------------------------------------


def test_fastapi_routes(fastapi_srv, proto):
    with client(fastapi_srv, proto) as c:
        r = c.get("/")
        assert r.http_version == ("HTTP/2" if proto == "http2" else "HTTP/1.1")
        assert r.json() == {"hello": "fastapi"}
        assert c.get("/items/5", params={"q": "z"}).json() == {"item_id": 5, "q": "z"}
        r = c.get("/items/404")
        assert r.status_code == 404
        assert r.json() == {"detail": "no such item"}
        assert c.get("/items/not-a-number").status_code == 422
        assert c.get("/sync").json() == {"sync": True}


def test_fastapi_json_body_validation(fastapi_srv, proto):
    with client(fastapi_srv, proto) as c:
        r = c.post("/items", json={"name": "pen", "price": 1.5, "tags": ["a"]})
        assert r.json() == {"name": "pen", "price": 1.5, "tags": ["a"], "total": 3.0}
        bad = c.post("/items", json={"name": "pen"})
        assert bad.status_code == 422


def test_fastapi_form_upload(fastapi_srv, proto):
    with client(fastapi_srv, proto) as c:
        r = c.post(
            "/upload",
            data={"name": "scan"},
            files={"file": ("scan.bin", UPLOAD, "application/octet-stream")},
        )
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "scan", "filename": "scan.bin", "size": len(UPLOAD)}


def test_fastapi_streaming_response(fastapi_srv, proto):
    with client(fastapi_srv, proto) as c, c.stream("GET", "/stream") as r:
        lines = list(r.iter_lines())
    assert lines == [f"chunk {i}" for i in range(5)]


def test_fastapi_background_task(fastapi_srv, proto):
    with client(fastapi_srv, proto) as c:
        assert c.post("/background", params={"value": "fa-1"}).json() == {"scheduled": "fa-1"}
        wait_background(c, "fa-1")


def test_fastapi_lifespan_state(fastapi_srv, proto):
    assert "FASTAPI-STARTUP" in fastapi_srv.log()
    with client(fastapi_srv, proto) as c:
        assert c.get("/state").json() == {"model": "loaded"}


def test_fastapi_openapi(fastapi_srv, proto):
    with client(fastapi_srv, proto) as c:
        spec = c.get("/openapi.json").json()
    assert "/items/{item_id}" in spec["paths"]


def test_fastapi_lifespan_shutdown(server):
    srv = server("fastapi_app:app")
    assert httpx.get(srv.url, timeout=5).status_code == 200
    assert srv.stop() == 0
    assert "FASTAPI-SHUTDOWN" in srv.log()
