"""Flask and Django served as WSGI: a view, JSON, a urlencoded form, a multipart upload, a
streamed response that reaches the client part by part, a file through wsgi.file_wrapper
(Flask's send_file with Range, Django's FileResponse), URLs built from SCRIPT_NAME
(--root-path) and X-Forwarded-Proto; over HTTP/1.1 and HTTP/2 (h2c)."""

import hashlib
import os
import uuid

import httpx
import pytest
from conftest import IS_UVICORN

UPLOAD = bytes(range(256)) * 400  # 100 KiB, every byte value
WSGI = ("--interface", "wsgi")
APPS = {"flask": "flask_app:app", "django": "django_app:application"}


@pytest.fixture(scope="module", params=["flask", "django"])
def framework(request):
    return request.param


@pytest.fixture(scope="module")
def srv(module_server, framework):
    return module_server(APPS[framework], *WSGI)


@pytest.fixture(params=["http1", "http2"])
def proto(request):
    if request.param == "http2" and IS_UVICORN:
        pytest.skip("uvicorn has no HTTP/2")
    return request.param


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("static") / "static.bin"
    path.write_bytes(os.urandom(500_000))
    return path


def client(srv, proto="http1"):
    """An httpx client that speaks HTTP/1.1, or HTTP/2 by prior knowledge."""
    h2 = proto == "http2"
    return httpx.Client(base_url=srv.url, timeout=10, http1=not h2, http2=h2)


def test_view_and_json(srv, framework, proto):
    with client(srv, proto) as c:
        r = c.get("/")
        assert r.status_code == 200
        assert r.http_version == ("HTTP/2" if proto == "http2" else "HTTP/1.1")
        assert r.text == f"{framework} home"
        assert r.headers["content-type"].startswith("text/plain")
        r = c.get("/items/42", params={"q": "café"})
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"item_id": 42, "q": "café"}
        assert c.get("/nowhere").status_code == 404
        assert c.get("/form").status_code == 405


def test_form_post_urlencoded(srv, proto):
    with client(srv, proto) as c:
        r = c.post("/form", data={"name": "Zoë", "tags": "a b&c=d"})
    assert r.status_code == 200, r.text
    assert r.json() == {"form": {"name": "Zoë", "tags": "a b&c=d"}, "method": "POST"}


def test_multipart_upload(srv, proto):
    with client(srv, proto) as c:
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
        "sha256": hashlib.sha256(UPLOAD).hexdigest(),
    }


def test_streaming_response_arrives_part_by_part(srv, framework, proto):
    """The first event reaches the client while the view's generator waits to yield the
    second (it waits for /release)."""
    token = uuid.uuid4().hex
    tag = "&tag=t" if framework == "flask" else ""
    suffix = " t" if framework == "flask" else ""
    with client(srv, proto) as c, c.stream("GET", f"/stream?n=3&token={token}{tag}") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        if proto == "http1":
            assert r.headers.get("transfer-encoding") == "chunked"
        parts = r.iter_raw()
        first = next(parts)
        assert first == f"data: 0{suffix}\n\n".encode()
        httpx.get(f"{srv.url}/release", params={"token": token}, timeout=5)
        rest = b"".join(parts)
    assert rest == f"data: 1{suffix}\n\ndata: 2{suffix}\n\n".encode()


def test_file_through_file_wrapper(srv, framework, data_file, proto):
    data = data_file.read_bytes()
    params = {"path": str(data_file)}
    with client(srv, proto) as c:
        r = c.get("/file", params=params)
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(data))
        assert r.content == data
        r = c.head("/file", params=params)
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(data))
        assert r.content == b""
        if framework == "flask":  # send_file answers a Range with a slice of the wrapped file
            r = c.get("/file", params=params, headers={"Range": "bytes=1000-1999"})
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
            assert r.content == data[1000:2000]
        # the connection is still good: nothing beyond the promised bytes was sent
        assert c.get("/items/1").json()["item_id"] == 1


def test_urls_from_script_name_and_forwarded_proto(module_server, framework):
    srv = module_server(APPS[framework], *WSGI, "--root-path", "/mount")
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        plain = c.get("/where").json()
        proxied = c.get("/where", headers={"X-Forwarded-Proto": "https"}).json()
        assert c.get("/items/3").json()["item_id"] == 3  # routing ignores the mount point
    host = f"127.0.0.1:{srv.port}"
    assert plain["home"] == "/mount/"
    assert plain["external"] == f"http://{host}/mount/items/7"
    assert plain["scheme"] == "http"
    assert proxied["external"] == f"https://{host}/mount/items/7"
    assert proxied["scheme"] == "https"
    if framework == "flask":
        assert plain["script_root"] == "/mount"
        assert plain["path"] == "/where"
    else:
        assert plain["script_name"] == "/mount"
        assert plain["path"] == "/mount/where"
        assert plain["path_info"] == "/where"


def test_framework_app_detected_as_wsgi(server, framework):
    """A Flask app and a Django WSGIHandler are callables with (environ, start_response):
    the default --interface auto serves them as WSGI."""
    srv = server(APPS[framework])
    assert httpx.get(f"{srv.url}/", timeout=5).text == f"{framework} home"
    srv.wait_for_log("WSGI")
    assert "ASGI" not in srv.log()
