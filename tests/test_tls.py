"""TLS: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), SNI, mTLS, the ASGI `tls` extension and WSGI's
mod_ssl variables, session resumption, close_notify, and every way a handshake can go wrong
(each refused cleanly and logged at debug while other clients are served). Certificates are
made per test module with trustme."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import shutil
import socket
import ssl
import subprocess
import time

import httpx
import pytest
import trustme
from conftest import APPS_DIR, IS_UVICORN, run_cli
from cryptography.hazmat.primitives import serialization

pytestmark = pytest.mark.skipif(IS_UVICORN, reason="pronghorn's TLS flags and extensions")


def pattern(size: int) -> bytes:
    """What basic.py's /big sends."""
    spec = importlib.util.spec_from_file_location("basic_for_tls", APPS_DIR / "basic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pattern(size)


class Certs:
    def __init__(self, tmp):
        self.dir = tmp
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()  # signs a client certificate the server does not trust
        self.ca_pem = self.write("ca.pem", self.ca.cert_pem.bytes())
        self.ca_text = self.ca.cert_pem.bytes().decode()
        leaf = self.ca.issue_cert("localhost", "127.0.0.1", "alpha.test")
        self.cert = self.write("cert.pem", b"".join(p.bytes() for p in leaf.cert_chain_pems))
        self.key = self.write("key.pem", leaf.private_key_pem.bytes())
        self.leaf_pem = leaf.cert_chain_pems[0].bytes().decode()
        beta = self.ca.issue_cert("beta.test")
        self.beta_cert = self.write("beta.pem", beta.cert_chain_pems[0].bytes())
        self.beta_key = self.write("beta.key", beta.private_key_pem.bytes())
        self.beta_pem = beta.cert_chain_pems[0].bytes().decode()
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        self.encrypted_key = self.write(
            "encrypted.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"s3cret"),
            ),
        )
        client = self.ca.issue_cert("client.example")
        self.client = self.write("client.pem", client.private_key_and_cert_chain_pem.bytes())
        self.client_chain = [p.bytes().decode() for p in client.cert_chain_pems]
        self.stranger = self.write(
            "stranger.pem",
            self.other_ca.issue_cert("stranger.example").private_key_and_cert_chain_pem.bytes(),
        )

    def write(self, name, data):
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def flags(self, *more):
        return ["--ssl-certfile", self.cert, "--ssl-keyfile", self.key, *more]

    def context(self, alpn=None, client=None, **kw):
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if client:
            ctx.load_cert_chain(client)
        for k, v in kw.items():
            setattr(ctx, k, v)
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def https(module_server, certs):
    return module_server("basic:app", *certs.flags("--log-level", "debug"))


@pytest.fixture(scope="module")
def mtls(module_server, certs):
    return module_server(
        "scope_app:app",
        *certs.flags("--ssl-ca-certs", certs.ca_pem, "--ssl-cert-reqs", "required"),
        "--log-level",
        "debug",
    )


def url(srv, path="/"):
    return f"https://localhost:{srv.port}{path}"


def tls_socket(srv, ctx, name="localhost", timeout=5.0):
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


def get(sock, path="/hello", extra=b""):
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: localhost\r\n" + extra + b"\r\n")


def read_all(sock) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            break
        if not chunk:
            break
        out += chunk
    return out


def served(srv, certs) -> bool:
    """The server still answers a normal HTTPS request."""
    return httpx.get(url(srv, "/hello"), verify=certs.context()).text == "Hello, world!"


# -- HTTP/1.1 and HTTP/2 over TLS ----------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True])
def test_httpx_scope_and_tls_extension(https, certs, http2):
    with httpx.Client(verify=certs.context(), http2=http2) as c:
        r = c.get(url(https, "/scope"))
    assert r.status_code == 200
    assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    scope = r.json()
    assert scope["scheme"] == "https"
    assert scope["http_version"] == ("2" if http2 else "1.1")
    tls = scope["extensions"]["tls"]
    assert tls["server_cert"] == certs.leaf_pem
    assert list(tls["client_cert_chain"]) == []
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)


@pytest.mark.parametrize("flag,version", [("--http1.1", "1.1"), ("--http2", "2")])
def test_curl_over_https(https, certs, flag, version):
    out = subprocess.run(
        [
            "curl",
            "-sS",
            flag,
            "--cacert",
            certs.ca_pem,
            "--resolve",
            f"localhost:{https.port}:127.0.0.1",
            "-w",
            "\n%{http_version}",
            url(https, "/hello"),
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["Hello, world!", version]


def test_tls12_with_a_chosen_cipher(module_server, certs):
    srv = module_server(
        "scope_app:app", *certs.flags("--ssl-ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384")
    )
    ctx = certs.context(maximum_version=ssl.TLSVersion.TLSv1_2)
    scope = httpx.get(url(srv), verify=ctx).json()
    assert scope["extensions"]["tls"]["tls_version"] == 0x0303
    assert scope["extensions"]["tls"]["cipher_suite"] == 0xC02C


@pytest.mark.parametrize(
    "flags,offer,chosen,version",
    [
        ((), ["h2", "http/1.1"], "h2", None),
        ((), ["http/1.1", "h2"], "h2", None),  # the server's preference
        ((), ["http/1.1"], "http/1.1", b"HTTP/1.1 200"),
        ((), None, None, b"HTTP/1.1 200"),  # no ALPN at all: HTTP/1.1
        ((), ["spdy/3"], None, b"HTTP/1.1 200"),  # nothing in common: HTTP/1.1
        (("--http", "1"), ["h2", "http/1.1"], "http/1.1", b"HTTP/1.1 200"),
        (("--http", "2"), ["h2", "http/1.1"], "h2", None),
    ],
)
def test_alpn(module_server, certs, flags, offer, chosen, version):
    srv = module_server("basic:app", *certs.flags(*flags))
    with tls_socket(srv, certs.context(alpn=offer)) as s:
        assert s.selected_alpn_protocol() == chosen
        if version:
            get(s, extra=b"connection: close\r\n")
            assert read_all(s).startswith(version)


def test_h2_prior_knowledge_and_upgrade_are_cleartext_only(https, certs):
    # Over TLS without ALPN, the HTTP/2 preface is not a request: the answer is a 400, not h2.
    with tls_socket(https, certs.context()) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert read_all(s).startswith(b"HTTP/1.1 4")
    with tls_socket(https, certs.context()) as s:
        get(
            s,
            extra=b"connection: Upgrade, HTTP2-Settings, close\r\nupgrade: h2c\r\n"
            b"http2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
        )
        assert read_all(s).startswith(b"HTTP/1.1 200")


# -- a real browser ----------------------------------------------------------------------------


def _spki_pin(cert_path: str) -> str:
    """Chromium's --ignore-certificate-errors-spki-list entry for this certificate: it then
    trusts this key and no other (a narrower trust than --ignore-certificate-errors)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.parametrize("http,version", [("auto", "2"), ("1", "1.1")])
def test_chromium_renders_a_page_over_https(module_server, certs, tmp_path, http, version):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is in the Makefile's package list"
    srv = module_server("browser_app:app", *certs.flags("--http", http))
    argv = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--ignore-certificate-errors-spki-list={_spki_pin(certs.cert)}",
        "--virtual-time-budget=10000",  # lets the page's fetch finish before the dump
        "--dump-dom", f"https://127.0.0.1:{srv.port}/",
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert f"fetched http_version={version} scheme=https tls_version=0x304" in out.stdout, (
        out.stdout[-2000:] + out.stderr[-2000:]
    )
    assert f'"GET /info HTTP/{"2" if version == "2" else "1.1"}" 200' in srv.log()


# -- bodies, backpressure, files ---------------------------------------------------------------


def test_upload_and_large_download(https, certs):
    body = bytes(range(256)) * 8192  # 2 MiB
    with httpx.Client(verify=certs.context()) as c:
        assert c.post(url(https, "/echo"), content=body).content == body
        r = c.get(url(https, "/big?size=8000000&chunk=300000"))
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(pattern(8_000_000)).digest()


def test_slow_reader_gets_everything(https, certs):
    size = 6_000_000
    with tls_socket(https, certs.context()) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        get(s, f"/big?size={size}&chunk={size}", b"connection: close\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            time.sleep(0.002)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == pattern(size)


def test_write_timeout_drops_a_reader_that_stopped(module_server, certs):
    srv = module_server("basic:app", *certs.flags("--timeout-write", "1"))
    with tls_socket(srv, certs.context(), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        get(s, "/big?size=200000000&chunk=1000000")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(3)  # reads nothing for longer than the write timeout
        got = len(first) + len(read_all(s))
    assert got < 50_000_000
    assert served(srv, certs)


def test_file_response_over_tls(module_server, certs, tmp_path):
    data = tmp_path / "data.bin"
    payload = bytes(range(256)) * 12000  # ~3 MB: the sendfile path falls back to encrypting
    data.write_bytes(payload)
    srv = module_server("files_app:app", *certs.flags(), env={"FILES_PATH": str(data)})
    for http2 in (False, True):
        with httpx.Client(verify=certs.context(), http2=http2) as c:
            r = c.get(url(srv, "/file"))
        assert r.status_code == 200
        assert r.content == payload


# -- certificates: SNI and client certificates ---------------------------------------------------


def test_sni_picks_the_certificate(module_server, certs):
    srv = module_server(
        "basic:app",
        *certs.flags("--ssl-certfile", certs.beta_cert, "--ssl-keyfile", certs.beta_key),
    )
    for name, pem in (("alpha.test", certs.leaf_pem), ("beta.test", certs.beta_pem)):
        with tls_socket(srv, certs.context(), name=name) as s:
            der = s.getpeercert(binary_form=True)
        assert ssl.DER_cert_to_PEM_cert(der).strip() == pem.strip()
    # A name no certificate covers gets the first one, which a checking client refuses.
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_socket(srv, certs.context(), name="gamma.test")
    assert served(srv, certs)


def test_mtls_client_certificate_accepted(mtls, certs):
    ctx = certs.context(client=certs.client)
    with httpx.Client(verify=ctx) as c:
        tls = c.get(url(mtls)).json()["extensions"]["tls"]
    # what the client sent: its own certificate first (OpenSSL clients add the CA's after it)
    assert tls["client_cert_chain"] in (certs.client_chain, certs.client_chain + [certs.ca_text])
    assert "O=trustme" in tls["client_cert_name"]
    assert tls["client_cert_error"] is None


@pytest.mark.parametrize("client", [None, "stranger"])
def test_mtls_refuses_no_certificate_and_unknown_ca(mtls, certs, client):
    ctx = certs.context(client=getattr(certs, client) if client else None)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_socket(mtls, ctx) as s:
            get(s)
            if not s.recv(1024):  # TLS 1.3: the refusal arrives after the client's Finished
                raise ConnectionError("closed without an answer")
    mtls.wait_for_log(
        r"TLS handshake failed: (peer did not return a certificate|certificate verify failed)"
    )
    ok = certs.context(client=certs.client)
    assert httpx.get(url(mtls), verify=ok).status_code == 200


def test_mtls_optional(module_server, certs):
    srv = module_server(
        "scope_app:app",
        *certs.flags("--ssl-ca-certs", certs.ca_pem, "--ssl-cert-reqs", "optional"),
    )
    without = httpx.get(url(srv), verify=certs.context()).json()["extensions"]["tls"]
    assert without["client_cert_chain"] == [] and without["client_cert_name"] is None
    ctx = certs.context(client=certs.client)
    with_cert = httpx.get(url(srv), verify=ctx).json()["extensions"]["tls"]
    assert with_cert["client_cert_chain"][0] == certs.client_chain[0]


def test_wsgi_environ_over_tls(module_server, certs):
    srv = module_server(
        "wsgi_app:app",
        *certs.flags("--ssl-ca-certs", certs.ca_pem, "--ssl-cert-reqs", "optional"),
    )
    env = httpx.get(url(srv, "/environ"), verify=certs.context()).json()["environ"]
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["SSL_CIPHER"].startswith("TLS_")
    assert env["SSL_CLIENT_VERIFY"] == "NONE"
    assert env["SSL_TLS_SNI"] == "localhost"
    assert "SSL_CLIENT_S_DN" not in env
    ctx = certs.context(client=certs.client)
    with httpx.Client(verify=ctx, http2=True) as c:
        r = c.get(url(srv, "/environ"))
    env = r.json()["environ"]
    assert r.http_version == "HTTP/2"
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert "O=trustme" in env["SSL_CLIENT_S_DN"]
    assert "O=trustme" in env["SSL_CLIENT_I_DN"]
    assert env["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    assert int(env["SSL_CLIENT_M_SERIAL"], 16) > 0
    assert env["SSL_CLIENT_V_END"].endswith("GMT")


# -- sessions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_session_ticket_resumes(https, certs, version):
    ctx = certs.context(maximum_version=version)
    with tls_socket(https, ctx) as s:
        get(s)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")  # tickets arrive with the first read
        session = s.session
        assert not s.session_reused
    raw = socket.create_connection(("127.0.0.1", https.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        assert s.session_reused
        get(s)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_clean_close_sends_close_notify(https, certs):
    raw = socket.create_connection(("127.0.0.1", https.port), timeout=5)
    with certs.context().wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False
    ) as s:
        get(s, extra=b"connection: close\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)  # raises SSLEOFError if the server only closed TCP
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello, world!")


def test_keep_alive_timeout_closes_with_close_notify(module_server, certs):
    srv = module_server("basic:app", *certs.flags("--timeout-keep-alive", "0.5"))
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    with certs.context().wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=False
    ) as s:
        get(s)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert s.recv(4096) == b""  # the idle close, announced


# -- refusals ----------------------------------------------------------------------------------


def test_plain_http_on_the_tls_port(https, certs):
    with socket.create_connection(("127.0.0.1", https.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"This port expects HTTPS, not HTTP.\r\n")
    https.wait_for_log(r"TLS handshake failed: http request")
    assert served(https, certs)


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00" * 64,
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a ClientHello that claims nothing
        b"\x16\x03\x01\xff\xff" + b"\xaa" * 2000,  # a record longer than allowed
        bytes(range(256)) * 8,
    ],
)
def test_garbage_is_refused_and_logged(https, certs, junk):
    with socket.create_connection(("127.0.0.1", https.port), timeout=5) as s:
        s.sendall(junk)
        read_all(s)  # an alert and a close, or a close: never a hang
    https.wait_for_log(r"TLS handshake failed")
    assert served(https, certs)


def test_truncated_client_hello_then_close(https, certs):
    hello = _client_hello(certs)
    with socket.create_connection(("127.0.0.1", https.port), timeout=5) as s:
        s.sendall(hello[: len(hello) // 2])
        time.sleep(0.1)
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b""
    https.wait_for_log(r"TLS handshake: the client closed the connection")
    assert served(https, certs)


def test_stalled_handshakes_time_out_and_stall_nobody(module_server, certs):
    srv = module_server(
        "basic:app", *certs.flags("--timeout-request-header", "1", "--log-level", "debug")
    )
    hello = _client_hello(certs)
    stalled = []
    try:
        for i in range(50):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(hello[: i % 2 and len(hello) // 2])  # nothing, or half a ClientHello
            stalled.append(s)
        t0 = time.monotonic()
        assert served(srv, certs)  # while 50 handshakes hang
        assert time.monotonic() - t0 < 1.0
        for s in stalled:
            assert read_all(s) == b""  # closed by the server within the header timeout
        assert time.monotonic() - t0 < 4.0
    finally:
        for s in stalled:
            s.close()
    srv.wait_for_log(r"TLS handshake: timed out")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_refused(https, certs, version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.0/1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_socket(https, ctx).close()
    https.wait_for_log(r"TLS handshake failed: (unsupported protocol|no protocols available)")
    assert served(https, certs)


def test_min_version_13_refuses_tls12(module_server, certs):
    srv = module_server("basic:app", *certs.flags("--ssl-min-version", "1.3"))
    with pytest.raises(ssl.SSLError):
        tls_socket(srv, certs.context(maximum_version=ssl.TLSVersion.TLSv1_2)).close()
    assert served(srv, certs)


def _client_hello(certs) -> bytes:
    """A real ClientHello, as Python's ssl module writes it (from a memory BIO)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = certs.context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# -- configuration errors: one line, exit 2, nothing bound ----------------------------------------


def _startup_error(*flags) -> str:
    out = run_cli("basic:app", "--app-dir", "tests/apps", "--port", "0", *flags)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "running on" not in out.stderr
    return lines[0]


def test_bad_files_wrong_password_and_mismatch_exit_2(certs, tmp_path):
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    line = _startup_error("--ssl-certfile", missing, "--ssl-keyfile", certs.key)
    assert "--ssl-certfile: cannot read" in line and "No such file" in line
    line = _startup_error("--ssl-certfile", str(not_pem), "--ssl-keyfile", certs.key)
    assert "--ssl-certfile: no usable PEM certificate" in line
    line = _startup_error("--ssl-certfile", certs.cert, "--ssl-keyfile", str(not_pem))
    assert "--ssl-keyfile: no usable PEM private key" in line
    line = _startup_error("--ssl-certfile", certs.cert, "--ssl-keyfile", certs.encrypted_key)
    assert "no password was given" in line
    line = _startup_error(
        "--ssl-certfile",
        certs.cert,
        "--ssl-keyfile",
        certs.encrypted_key,
        "--ssl-keyfile-password",
        "wrong",
    )
    assert "wrong password?" in line
    line = _startup_error("--ssl-certfile", certs.cert, "--ssl-keyfile", certs.beta_key)
    assert "does not match the certificate" in line
    line = _startup_error(*certs.flags("--ssl-cert-reqs", "required"))
    assert "needs --ssl-ca-certs" in line
    line = _startup_error(*certs.flags("--ssl-ciphers", "NOPE-NOTHING"))
    assert "--ssl-ciphers: no cipher matches" in line
    line = _startup_error("--ssl-keyfile", certs.key)
    assert "needs --ssl-certfile" in line
    line = _startup_error(*certs.flags("--ssl-min-version", "1.1"))
    assert "--ssl-min-version" in line


def test_encrypted_key_with_its_password(module_server, certs):
    srv = module_server(
        "basic:app",
        "--ssl-certfile",
        certs.cert,
        "--ssl-keyfile",
        certs.encrypted_key,
        "--ssl-keyfile-password",
        "s3cret",
    )
    assert served(srv, certs)
    assert f"https://127.0.0.1:{srv.port}" in srv.log()


def test_key_in_the_certificate_file(module_server, certs, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(open(certs.cert, "rb").read() + open(certs.key, "rb").read())
    srv = module_server("basic:app", "--ssl-certfile", str(both))
    assert served(srv, certs)
    line = _startup_error("--ssl-certfile", certs.cert)  # no key in it, and none given
    assert f"--ssl-keyfile: no usable PEM private key in '{certs.cert}'" in line


def test_env_vars_set_tls(module_server, certs):
    srv = module_server(
        "basic:app", env={"PRONGHORN_SSL_CERTFILE": certs.cert, "PRONGHORN_SSL_KEYFILE": certs.key}
    )
    assert served(srv, certs)


def test_graceful_shutdown_over_tls(server, certs):
    srv = server("basic:app", *certs.flags())
    with tls_socket(srv, certs.context()) as s:
        get(s, "/sleep?s=0.5")
        time.sleep(0.1)
        srv.send_signal(__import__("signal").SIGTERM)
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slept")
    assert srv.wait_exit() == 0
