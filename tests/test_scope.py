"""The ASGI ``http`` scope (ASGI 3, spec 2.4), seen by an app that returns it as JSON
(bytes as latin-1 strings, tuples as lists)."""

import json

import httpx
import pytest
from conftest import IS_UVICORN, RawConn, request_bytes

REQUIRED_KEYS = {
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
    "state",
    "extensions",
}


def get_scope(port, target="/scope", method="GET", version="HTTP/1.1", headers=(), body=b""):
    with RawConn(port) as conn:
        conn.send(request_bytes(method, target, version=version, headers=headers, body=body))
        resp = conn.read_response()
        assert resp.status == 200, resp
        scope = json.loads(resp.body)
        scope["_client_port"] = conn.local_port
    return scope


def test_scope_has_every_key(basic):
    scope = get_scope(basic.port)
    missing = REQUIRED_KEYS - scope.keys()
    assert not missing, f"scope lacks {sorted(missing)}"


def test_scope_type_and_asgi_versions(basic):
    scope = get_scope(basic.port)
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    spec = tuple(int(x) for x in scope["asgi"]["spec_version"].split("."))
    assert spec >= (2, 3), scope["asgi"]
    if not IS_UVICORN:
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}


@pytest.mark.parametrize("version,expected", [("HTTP/1.1", "1.1"), ("HTTP/1.0", "1.0")])
def test_scope_http_version(basic, version, expected):
    assert get_scope(basic.port, version=version)["http_version"] == expected


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_scope_method(basic, method):
    assert (
        get_scope(basic.port, method=method, body=b"x" if method == "POST" else b"")["method"]
        == method
    )


def test_scope_scheme_is_http(basic):
    assert get_scope(basic.port)["scheme"] == "http"


@pytest.fixture(scope="module")
def scope_everywhere(module_server):
    """A server whose every route returns the scope (so any path can be looked at)."""
    return module_server("scope_app:app")


def test_scope_path_utf8(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/caf%C3%A9")
    assert scope["path"] == "/café"
    assert scope["raw_path"] == "/caf%C3%A9"  # raw bytes, shown as latin-1


def test_scope_path_encoded_slash_and_space(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/a%2Fb/c%20d")
    assert scope["path"] == "/a/b/c d"
    assert scope["raw_path"] == "/a%2Fb/c%20d"


def test_scope_query_string_raw(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/p?q=caf%C3%A9&x=1+2&empty=&flag")
    assert scope["path"] == "/p"
    assert scope["raw_path"] == "/p"
    assert scope["query_string"] == "q=caf%C3%A9&x=1+2&empty=&flag"


def test_scope_query_string_empty(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/p")
    assert scope["query_string"] == ""


def test_scope_root_path_default_empty(scope_everywhere):
    assert get_scope(scope_everywhere.port, target="/p")["root_path"] == ""


def test_scope_root_path_flag(server):
    srv = server("scope_app:app", "--root-path", "/api")
    scope = get_scope(srv.port, target="/caf%C3%A9")
    assert scope["root_path"] == "/api"
    # Like uvicorn (>= 0.26): path and raw_path include root_path, as ASGI 2.4 describes
    # path as the full request path with root_path a prefix of it.
    assert scope["path"] == "/api/café"
    assert scope["raw_path"] == "/api/caf%C3%A9"


def test_scope_headers_lowercase_raw_and_ordered(scope_everywhere):
    with RawConn(scope_everywhere.port) as conn:
        conn.send(
            b"GET /h HTTP/1.1\r\n"
            b"Host: example.test\r\n"
            b"X-First: 1\r\n"
            b"X-Mixed-CASE: Keep Value Case\r\n"
            b"Accept: */*\r\n"
            b"X-First: 2\r\n"
            b"X-Latin: caf\xe9\r\n"
            b"\r\n"
        )
        scope = json.loads(conn.read_response().body)
    assert scope["headers"] == [
        ["host", "example.test"],
        ["x-first", "1"],
        ["x-mixed-case", "Keep Value Case"],
        ["accept", "*/*"],
        ["x-first", "2"],
        ["x-latin", "caf\xe9"],  # raw byte 0xE9, not decoded as UTF-8
    ]


def test_scope_header_value_excludes_surrounding_whitespace(scope_everywhere):
    # RFC 9112 §5.1: optional whitespace before and after a field value is not part of it.
    with RawConn(scope_everywhere.port) as conn:
        conn.send(b"GET /h HTTP/1.1\r\nHost: t\r\nX-Spaces: \t padded value \t \r\n\r\n")
        scope = json.loads(conn.read_response().body)
    assert ["x-spaces", "padded value"] in scope["headers"]


def test_scope_client_and_server(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/p")
    assert scope["client"] == ["127.0.0.1", scope["_client_port"]]
    assert scope["server"] == ["127.0.0.1", scope_everywhere.port]


def test_scope_state_is_shallow_copy_of_lifespan_state(basic):
    with httpx.Client(base_url=basic.url) as client:
        first = client.get("/state").json()
        second = client.get("/state").json()
    # startup put these into the lifespan state
    assert first["started"] is True
    assert first["counter"] == 0
    # the request changed scope["state"]["counter"] and added a key: a copy, so not visible
    assert second["counter"] == 0
    assert "added" not in second
    # ...but the copy is shallow: the list object is shared with the lifespan state
    assert len(second["shared"]) == len(first["shared"]) + 1


def test_scope_extensions_is_a_dict(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/p")
    assert isinstance(scope["extensions"], dict)


# -- proxy headers (default on, trusted from 127.0.0.1) ---------------------------------------

PROXY = [("X-Forwarded-For", "203.0.113.7, 127.0.0.1"), ("X-Forwarded-Proto", "https")]


def test_proxy_headers_trusted_from_localhost_by_default(scope_everywhere):
    scope = get_scope(scope_everywhere.port, target="/p", headers=PROXY)
    assert scope["client"][0] == "203.0.113.7"
    assert scope["scheme"] == "https"


def test_no_proxy_headers_flag(server):
    srv = server("scope_app:app", "--no-proxy-headers")
    scope = get_scope(srv.port, target="/p", headers=PROXY)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_forwarded_allow_ips_flag(server):
    srv = server("scope_app:app", "--forwarded-allow-ips", "10.9.9.9")
    scope = get_scope(srv.port, target="/p", headers=PROXY)
    assert scope["client"][0] == "127.0.0.1"  # 127.0.0.1 is no longer a trusted proxy
    assert scope["scheme"] == "http"


def test_scope_client_port_per_connection(scope_everywhere):
    """Many connections open at once, several requests each: every scope names its own
    connection's port (the client tuple is shared per peer address, never mixed up)."""
    conns = [RawConn(scope_everywhere.port) for _ in range(150)]
    try:
        for _ in range(2):
            for conn in conns:
                conn.send(request_bytes("GET", "/scope"))
            for conn in conns:
                scope = json.loads(conn.read_response().body)
                assert scope["client"] == ["127.0.0.1", conn.local_port]
    finally:
        for conn in conns:
            conn.close()


def test_scope_common_and_rare_header_names(scope_everywhere):
    """Names the server keeps ready-made and names it does not come out the same way."""
    sent = [
        ("User-Agent", "ua"),
        ("X-Forwarded-Fo", "near miss"),
        ("Accept-Encoding", "gzip"),
        ("Te", "trailers"),
        ("X-Custom", "1"),
        ("Content-Typ", "near miss"),
    ]
    scope = get_scope(scope_everywhere.port, target="/scope", headers=sent)
    names = [n for n, _ in scope["headers"]]
    for name, value in sent:
        assert [name.lower(), value] in scope["headers"]
    assert names.count("user-agent") == 1
