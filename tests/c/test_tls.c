/* The TLS engine against an in-memory OpenSSL client (an SSL with two memory BIOs): handshakes
 * and ALPN, versions, SNI, client certificates, resumption across ticket-key rotations, data
 * both ways, key updates, close_notify each way, refusals (garbage, plain HTTP, old versions),
 * ph_tls_ctx_new's errors and mod_ssl's variables. Certificates are made at run time. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "certs.h"
#include "check.h"
#include "tls.h"
#include "util.h"

#define WIRE(lit) lit, sizeof(lit) - 1
#define ALPN_BOTH "\x02h2\x08http/1.1"

/* ---- fixtures: keys, certificates and their files ---- */

enum { F_CA, F_ALPHA, F_ALPHA_KEY, F_BETA, F_BETA_KEY, F_ENC_KEY, F_RSA_KEY, F_GARBAGE, NFILES };
static const char *const file_names[NFILES] = {
    "ca.pem", "alpha.pem", "alpha.key", "beta.pem", "beta.key", "enc.key", "rsa.key", "garbage.pem",
};
static char dir[] = "/tmp/ph-test-tls-XXXXXX";
static char paths[NFILES][96];
static const char *certfiles[2], *keyfiles[2]; /* alpha's, then beta's */

static EVP_PKEY *ca_key, *alpha_key, *beta_key, *client_key, *evil_ca_key, *evil_key, *rsa_key;
static X509 *ca, *alpha, *beta, *client, *evil_ca, *evil;
static SSL_CTX *client_ctx;

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    int ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

static int setup(void)
{
    if (mkdtemp(dir) == NULL)
        return 0;
    for (int i = 0; i < NFILES; i++)
        snprintf(paths[i], sizeof(paths[i]), "%s/%s", dir, file_names[i]);
    certfiles[0] = paths[F_ALPHA];
    certfiles[1] = paths[F_BETA];
    keyfiles[0] = paths[F_ALPHA_KEY];
    keyfiles[1] = paths[F_BETA_KEY];
    ca_key = certs_key();
    alpha_key = certs_key();
    beta_key = certs_key();
    client_key = certs_key();
    evil_ca_key = certs_key();
    evil_key = certs_key();
    rsa_key = EVP_RSA_gen(2048);
    if (!ca_key || !alpha_key || !beta_key || !client_key || !evil_ca_key || !evil_key || !rsa_key)
        return 0;
    ca = certs_make(ca_key, "pronghorn test CA", NULL, NULL, NULL, 1);
    alpha = certs_make(alpha_key, "alpha.test", "DNS:alpha.test,DNS:*.alpha.test", ca, ca_key, 2);
    beta = certs_make(beta_key, "beta.test", "DNS:beta.test", ca, ca_key, 3);
    client = certs_make(client_key, "client-1", NULL, ca, ca_key, 0x1234);
    /* Another CA's client, with the same names as ours. */
    evil_ca = certs_make(evil_ca_key, "pronghorn test CA", NULL, NULL, NULL, 1);
    evil = certs_make(evil_key, "client-1", NULL, evil_ca, evil_ca_key, 0x1234);
    if (!ca || !alpha || !beta || !client || !evil_ca || !evil)
        return 0;
    if (!certs_write_chain(paths[F_CA], &ca, 1) || !certs_write_chain(paths[F_ALPHA], &alpha, 1) ||
        !certs_write_key(paths[F_ALPHA_KEY], alpha_key, NULL) ||
        !certs_write_chain(paths[F_BETA], &beta, 1) ||
        !certs_write_key(paths[F_BETA_KEY], beta_key, NULL) ||
        !certs_write_key(paths[F_ENC_KEY], alpha_key, "s3cret") ||
        !certs_write_key(paths[F_RSA_KEY], rsa_key, NULL) ||
        !write_text(paths[F_GARBAGE], "this is not a certificate\n"))
        return 0;
    /* The client checks the server's chain (not its name: SNI tests send names it lacks). */
    client_ctx = SSL_CTX_new(TLS_client_method());
    if (client_ctx == NULL || X509_STORE_add_cert(SSL_CTX_get_cert_store(client_ctx), ca) != 1)
        return 0;
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, NULL);
    /* A client certificate goes alone, not with the CA that store holds, unless a test adds it. */
    SSL_CTX_set_mode(client_ctx, SSL_MODE_NO_AUTO_CHAIN);
    return 1;
}

static void teardown(void)
{
    for (int i = 0; i < NFILES; i++)
        unlink(paths[i]);
    rmdir(dir);
    SSL_CTX_free(client_ctx);
    X509 *xs[] = {ca, alpha, beta, client, evil_ca, evil};
    for (size_t i = 0; i < sizeof(xs) / sizeof(xs[0]); i++)
        X509_free(xs[i]);
    EVP_PKEY *ks[] = {ca_key, alpha_key, beta_key, client_key, evil_ca_key, evil_key, rsa_key};
    for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++)
        EVP_PKEY_free(ks[i]);
}

/* The certificate as PEM, malloc'd. */
static char *pem_of(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *p, *s = NULL;
    if (b && PEM_write_bio_X509(b, x) == 1) {
        long n = BIO_get_mem_data(b, &p);
        s = malloc((size_t)n + 1);
        if (s) {
            memcpy(s, p, (size_t)n);
            s[n] = 0;
        }
    }
    BIO_free(b);
    return s;
}

/* 1 when the malloc'd PEM string is x's; frees it. */
static int pem_is(char *got, X509 *x)
{
    char *want = pem_of(x);
    int same = got && want && strcmp(got, want) == 0;
    free(got);
    free(want);
    return same;
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* ---- the two ends ---- */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const char *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
}

typedef struct {
    const char *alpn; /* ALPN list in wire format, or NULL for no extension */
    size_t alpn_len;
    const char *sni;
    int max_version; /* e.g. TLS1_2_VERSION; 0: OpenSSL's */
    X509 *cert;      /* a client certificate, its key and one more of its chain */
    EVP_PKEY *key;
    X509 *chain;
    SSL_SESSION *session; /* to resume */
} client_opts_t;

typedef struct {
    SSL *ssl;
    BIO *in, *out; /* what the server sent, what the client sends */
    int failed;    /* SSL_get_error()'s answer when the client gave up */
    int closed;    /* the server's close_notify arrived */
    buf_t rx;
} client_t;

typedef struct {
    ph_tls_t *t;
    int hs;     /* ph_tls_handshake()'s last answer */
    ssize_t rd; /* ph_tls_read()'s last answer that was not bytes */
    buf_t rx;
} server_t;

static void client_init(client_t *c, const client_opts_t *o)
{
    memset(c, 0, sizeof(*c));
    c->ssl = SSL_new(client_ctx);
    c->in = BIO_new(BIO_s_mem());
    c->out = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || c->in == NULL || c->out == NULL)
        abort();
    SSL_set_bio(c->ssl, c->in, c->out);
    SSL_set_connect_state(c->ssl);
    if (o->alpn)
        CHECK(SSL_set_alpn_protos(c->ssl, (const unsigned char *)o->alpn, (unsigned)o->alpn_len) ==
              0);
    if (o->sni)
        CHECK(SSL_set_tlsext_host_name(c->ssl, o->sni) == 1);
    if (o->max_version)
        CHECK(SSL_set_max_proto_version(c->ssl, o->max_version) == 1);
    if (o->cert)
        CHECK(SSL_use_certificate(c->ssl, o->cert) == 1 && SSL_use_PrivateKey(c->ssl, o->key) == 1);
    if (o->chain)
        CHECK(SSL_add1_chain_cert(c->ssl, o->chain) == 1);
    if (o->session)
        CHECK(SSL_set_session(c->ssl, o->session) == 1);
}

/* The client handshakes, then reads whatever arrived (tickets and key updates included). */
static void client_step(client_t *c)
{
    if (c->failed || c->closed)
        return;
    int rv = SSL_do_handshake(c->ssl);
    if (rv == 1) {
        char buf[16384];
        size_t n;
        while (SSL_read_ex(c->ssl, buf, sizeof(buf), &n) == 1)
            buf_add(&c->rx, buf, n);
        rv = 0;
    }
    int e = SSL_get_error(c->ssl, rv);
    if (e == SSL_ERROR_ZERO_RETURN)
        c->closed = 1;
    else if (e != SSL_ERROR_WANT_READ)
        c->failed = e;
    ERR_clear_error();
}

/* The server takes what the client sent as the transport would: feed, then handshake or read
 * until it asks for more (the fed bytes are borrowed until then). */
static void server_input(server_t *s, const char *d, size_t n)
{
    CHECK(ph_tls_feed(s->t, d, n) == 0);
    if (s->hs == 0)
        s->hs = ph_tls_handshake(s->t);
    if (s->hs != 1 || s->rd < 0)
        return;
    char buf[16384];
    ssize_t r;
    while ((r = ph_tls_read(s->t, buf, sizeof(buf))) > 0)
        buf_add(&s->rx, buf, (size_t)r);
    s->rd = r;
}

/* The server's records go to the client. 1 if there were any. */
static int to_client(ph_tls_t *t, client_t *c)
{
    const char *p;
    size_t n = ph_tls_output(t, &p);
    if (n == 0)
        return 0;
    CHECK(BIO_write(c->in, p, (int)n) == (int)n);
    ph_tls_output_done(t);
    return 1;
}

/* Moves records both ways until neither side has more to say; what the client sent reaches
 * the server in slices of at most piece bytes. */
static void pump(client_t *c, server_t *s, size_t piece)
{
    char buf[16384];
    if (piece > sizeof(buf))
        piece = sizeof(buf);
    for (int round = 0; round < 1000; round++) {
        client_step(c);
        int moved = 0, n;
        while ((n = BIO_read(c->out, buf, (int)piece)) > 0) {
            server_input(s, buf, (size_t)n);
            moved = 1;
        }
        moved |= to_client(s->t, c);
        if (!moved)
            return;
    }
    CHECK(!"pump never settled");
}

static void server_init(server_t *s, ph_tls_ctx_t *ctx)
{
    memset(s, 0, sizeof(*s));
    s->t = ph_tls_new(ctx);
    if (s->t == NULL)
        abort();
}

/* A client and a server session through the handshake: the server's answer. */
static int connect_sliced(client_t *c, server_t *s, ph_tls_ctx_t *ctx, const client_opts_t *o,
                          size_t piece)
{
    client_init(c, o);
    server_init(s, ctx);
    pump(c, s, piece);
    if (s->hs == 1)
        CHECK(c->failed == 0 && SSL_is_init_finished(c->ssl));
    return s->hs;
}

static int connect_pair(client_t *c, server_t *s, ph_tls_ctx_t *ctx, const client_opts_t *o)
{
    return connect_sliced(c, s, ctx, o, 16384);
}

static void pair_free(client_t *c, server_t *s)
{
    SSL_free(c->ssl);
    free(c->rx.p);
    ph_tls_free(s->t);
    free(s->rx.p);
}

static ph_tls_options_t options(void)
{
    return (ph_tls_options_t){.certfiles = certfiles,
                              .keyfiles = keyfiles,
                              .ncerts = 1,
                              .min_version = 12,
                              .h2 = 1,
                              .http1 = 1};
}

static ph_tls_ctx_t *ctx_new(const ph_tls_options_t *o)
{
    char err[256] = "";
    ph_tls_ctx_t *ctx = ph_tls_ctx_new(o, err, sizeof(err));
    if (ctx == NULL) {
        fprintf(stderr, "ph_tls_ctx_new: %s\n", err);
        abort();
    }
    return ctx;
}

/* ---- handshakes ---- */

/* What ALPN agreed on (the server's answer; the client must have seen the same). */
static const char *agreed(ph_tls_ctx_t *ctx, const char *alpn, size_t alpn_len)
{
    client_t c;
    server_t s;
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.alpn = alpn, .alpn_len = alpn_len}) == 1);
    const char *got = ph_tls_alpn(s.t);
    const unsigned char *p;
    unsigned len;
    SSL_get0_alpn_selected(c.ssl, &p, &len);
    CHECK(got ? len == strlen(got) && memcmp(p, got, len) == 0 : len == 0);
    pair_free(&c, &s);
    return got;
}

static void test_alpn(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    CHECK(same_str(agreed(ctx, WIRE(ALPN_BOTH)), "h2"));
    CHECK(same_str(agreed(ctx, WIRE("\x08http/1.1\x02h2")), "h2")); /* our preference wins */
    CHECK(same_str(agreed(ctx, WIRE("\x08http/1.1")), "http/1.1"));
    CHECK(same_str(agreed(ctx, WIRE("\x02h2")), "h2"));
    CHECK(agreed(ctx, NULL, 0) == NULL);
    CHECK(agreed(ctx, WIRE("\x06spdy/3\x08http/1.0")) == NULL); /* nothing in common: no ALPN */
    ph_tls_ctx_free(ctx);

    o.h2 = 0;
    ctx = ctx_new(&o);
    CHECK(same_str(agreed(ctx, WIRE(ALPN_BOTH)), "http/1.1"));
    CHECK(agreed(ctx, WIRE("\x02h2")) == NULL);
    CHECK(agreed(ctx, NULL, 0) == NULL);
    ph_tls_ctx_free(ctx);

    o.h2 = 1;
    o.http1 = 0;
    ctx = ctx_new(&o);
    CHECK(same_str(agreed(ctx, WIRE(ALPN_BOTH)), "h2"));
    CHECK(agreed(ctx, WIRE("\x08http/1.1")) == NULL);
    ph_tls_ctx_free(ctx);
}

static void test_versions(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    CHECK(ph_tls_version(s.t) == 0x0304);
    CHECK(same_str(ph_tls_version_name(s.t), "TLSv1.3"));
    CHECK(ph_tls_cipher_id(s.t) >= 0x1301 && ph_tls_cipher_id(s.t) <= 0x1305);
    CHECK(ph_tls_cipher_name(s.t) && strncmp(ph_tls_cipher_name(s.t), "TLS_", 4) == 0);
    CHECK(ph_tls_cipher_id(s.t) == SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(c.ssl)));
    CHECK(ph_tls_server_name(s.t) == NULL);
    CHECK(ph_tls_resumed(s.t) == 0);
    CHECK(pem_is(ph_tls_server_cert_pem(s.t), alpha));
    pair_free(&c, &s);

    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.max_version = TLS1_2_VERSION}) == 1);
    CHECK(ph_tls_version(s.t) == 0x0303);
    CHECK(same_str(ph_tls_version_name(s.t), "TLSv1.2"));
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);

    /* TLS 1.2's cipher list is ours to choose. */
    o.ciphers = "ECDHE-ECDSA-CHACHA20-POLY1305";
    ctx = ctx_new(&o);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.max_version = TLS1_2_VERSION}) == 1);
    CHECK(ph_tls_cipher_id(s.t) == 0xcca9);
    CHECK(same_str(ph_tls_cipher_name(s.t), "ECDHE-ECDSA-CHACHA20-POLY1305"));
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);

    /* TLS 1.3 only: a TLS 1.2 client is refused, and told so. */
    o = options();
    o.min_version = 13;
    ctx = ctx_new(&o);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.max_version = TLS1_2_VERSION}) == PH_EPROTO);
    CHECK(strlen(ph_tls_error(s.t)) > 0);
    CHECK(c.failed != 0);
    pair_free(&c, &s);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    CHECK(ph_tls_version(s.t) == 0x0304);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);
}

/* The handshake and data in slices of one and seven bytes: partial records wait in OpenSSL. */
static void test_slices(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    size_t pieces[] = {1, 7};
    for (size_t i = 0; i < 2; i++) {
        client_t c;
        server_t s;
        CHECK(connect_sliced(&c, &s, ctx, &(client_opts_t){.alpn = WIRE(ALPN_BOTH)}, pieces[i]) ==
              1);
        CHECK(same_str(ph_tls_alpn(s.t), "h2"));
        CHECK(SSL_write(c.ssl, "sliced hello", 12) == 12);
        pump(&c, &s, pieces[i]);
        CHECK(s.rx.len == 12 && memcmp(s.rx.p, "sliced hello", 12) == 0);
        CHECK(s.rd == 0);
        pair_free(&c, &s);
    }
    ph_tls_ctx_free(ctx);
}

/* ---- data, key updates, closing ---- */

static void test_data(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.alpn = WIRE(ALPN_BOTH)}) == 1);
    CHECK(SSL_write(c.ssl, "hello", 5) == 5);
    pump(&c, &s, 16384);
    CHECK(s.rx.len == 5 && memcmp(s.rx.p, "hello", 5) == 0);
    CHECK(ph_tls_write(s.t, "world", 5) == 0);
    const char *p;
    CHECK(ph_tls_output(s.t, &p) > 5); /* a record, not the plaintext */
    pump(&c, &s, 16384);
    CHECK(c.rx.len == 5 && memcmp(c.rx.p, "world", 5) == 0);

    /* More than 64 KiB each way: many records. */
    size_t big = 100000;
    char *data = malloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i * 7 % 251);
    c.rx.len = s.rx.len = 0;
    CHECK(ph_tls_write(s.t, data, big) == 0);
    size_t n = ph_tls_output(s.t, &p);
    CHECK(n > big && n < big + 1024);
    pump(&c, &s, 16384);
    CHECK(c.rx.len == big && memcmp(c.rx.p, data, big) == 0);
    size_t done = 0;
    CHECK(SSL_write_ex(c.ssl, data, big, &done) == 1 && done == big);
    pump(&c, &s, 16384);
    CHECK(s.rx.len == big && memcmp(s.rx.p, data, big) == 0);
    CHECK(s.rd == 0 && c.failed == 0);
    CHECK(ph_tls_write(s.t, "", 0) == 0);
    free(data);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);
}

/* A key update the client asks the server to return: OpenSSL sends its own KeyUpdate before
 * its next record (RFC 8446 4.6.3), so it is in the output of the next write. */
static void test_key_update(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    CHECK(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED) == 1);
    CHECK(SSL_do_handshake(c.ssl) == 1); /* sends it */
    pump(&c, &s, 16384);
    CHECK(s.rd == 0 && s.rx.len == 0);
    const char *p;
    CHECK(ph_tls_write(s.t, "after", 5) == 0);
    size_t with_update = ph_tls_output(s.t, &p);
    pump(&c, &s, 16384);
    CHECK(ph_tls_write(s.t, "again", 5) == 0);
    CHECK(ph_tls_output(s.t, &p) < with_update); /* one record this time */
    CHECK(SSL_write(c.ssl, "client", 6) == 6);
    pump(&c, &s, 16384);
    CHECK(c.rx.len == 10 && memcmp(c.rx.p, "afteragain", 10) == 0);
    CHECK(s.rx.len == 6 && memcmp(s.rx.p, "client", 6) == 0);
    CHECK(c.failed == 0 && s.rd == 0);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);
}

static void test_close_notify(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;

    /* From the client: what came before it is read, then PH_TLS_CLOSED. */
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    CHECK(SSL_write(c.ssl, "bye", 3) == 3);
    CHECK(SSL_shutdown(c.ssl) == 0); /* 0: ours is sent, the server's not yet here */
    pump(&c, &s, 16384);
    CHECK(s.rx.len == 3 && memcmp(s.rx.p, "bye", 3) == 0);
    CHECK(s.rd == PH_TLS_CLOSED);
    char buf[16];
    CHECK(ph_tls_read(s.t, buf, sizeof(buf)) == PH_TLS_CLOSED); /* and so it stays */
    pair_free(&c, &s);

    /* From the server: nothing before the handshake is done, once after. */
    server_init(&s, ctx);
    ph_tls_shutdown(s.t);
    const char *p;
    CHECK(ph_tls_output(s.t, &p) == 0);
    ph_tls_free(s.t);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    CHECK(ph_tls_write(s.t, "last", 4) == 0);
    ph_tls_shutdown(s.t);
    size_t n = ph_tls_output(s.t, &p);
    CHECK(n > 0);
    ph_tls_shutdown(s.t);
    CHECK(ph_tls_output(s.t, &p) == n); /* not twice */
    pump(&c, &s, 16384);
    CHECK(c.rx.len == 4 && memcmp(c.rx.p, "last", 4) == 0);
    CHECK(c.closed == 1 && c.failed == 0);
    CHECK(SSL_get_shutdown(c.ssl) & SSL_RECEIVED_SHUTDOWN);
    size_t got;
    CHECK(SSL_read_ex(c.ssl, buf, sizeof(buf), &got) == 0);
    CHECK(SSL_get_error(c.ssl, 0) == SSL_ERROR_ZERO_RETURN);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);
}

/* ---- refusals ---- */

/* A session fed bytes in one go: ph_tls_handshake()'s answer. */
static int handshake_on(ph_tls_ctx_t *ctx, const char *data, size_t len, server_t *s)
{
    server_init(s, ctx);
    CHECK(ph_tls_feed(s->t, data, len) == 0);
    s->hs = ph_tls_handshake(s->t);
    ph_tls_output_done(s->t); /* an alert, if any: nobody to send it to */
    return s->hs;
}

static void test_garbage(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    server_t s;
    server_init(&s, ctx);
    CHECK(strcmp(ph_tls_error(s.t), "TLS error") == 0); /* none yet */
    ph_tls_free(s.t);

    char junk[300];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)(0xde + i * 13);
    CHECK(handshake_on(ctx, junk, sizeof(junk), &s) == PH_EPROTO);
    CHECK(strlen(ph_tls_error(s.t)) > 0);
    CHECK(ph_tls_plain_http(s.t) == 0);
    ph_tls_free(s.t);

    /* A handshake record whose message is nonsense. */
    static const char bad_hello[] = "\x16\x03\x01\x00\x08\x01\x00\x00\x04\xff\xff\xff\xff";
    CHECK(handshake_on(ctx, WIRE(bad_hello), &s) == PH_EPROTO);
    CHECK(strlen(ph_tls_error(s.t)) > 0 && ph_tls_plain_http(s.t) == 0);
    ph_tls_free(s.t);

    /* Too little to tell: more is needed. */
    CHECK(handshake_on(ctx, "\x16\x03", 2, &s) == 0);
    ph_tls_free(s.t);
    CHECK(handshake_on(ctx, "", 0, &s) == 0);
    ph_tls_free(s.t);
    ph_tls_ctx_free(ctx);
}

static void test_plain_http(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    server_t s;
    static const char get[] = "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n";
    CHECK(handshake_on(ctx, WIRE(get), &s) == PH_EPROTO);
    CHECK(ph_tls_plain_http(s.t) == 1);
    CHECK(strlen(ph_tls_error(s.t)) > 0);
    ph_tls_free(s.t);

    /* In two pieces, the first too short to judge. */
    CHECK(handshake_on(ctx, get, 2, &s) == 0);
    CHECK(ph_tls_feed(s.t, get + 2, sizeof(get) - 3) == 0);
    CHECK(ph_tls_handshake(s.t) == PH_EPROTO);
    CHECK(ph_tls_plain_http(s.t) == 1);
    ph_tls_free(s.t);

    static const char post[] = "POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    CHECK(handshake_on(ctx, WIRE(post), &s) == PH_EPROTO);
    CHECK(ph_tls_plain_http(s.t) == 1);
    ph_tls_free(s.t);
    ph_tls_ctx_free(ctx);
}

/* ---- SNI ---- */

/* Connects naming sni: 1 if the server presented cert (to the client and in its own view). */
static int served(ph_tls_ctx_t *ctx, const char *sni, X509 *cert)
{
    client_t c;
    server_t s;
    int ok = connect_pair(&c, &s, ctx, &(client_opts_t){.alpn = WIRE(ALPN_BOTH), .sni = sni}) == 1;
    X509 *peer = SSL_get0_peer_certificate(c.ssl);
    ok = ok && peer && X509_cmp(peer, cert) == 0 && pem_is(ph_tls_server_cert_pem(s.t), cert) &&
         same_str(ph_tls_server_name(s.t), sni) && same_str(ph_tls_alpn(s.t), "h2");
    pair_free(&c, &s);
    return ok;
}

static void test_sni(void)
{
    ph_tls_options_t o = options();
    o.ncerts = 2;
    ph_tls_ctx_t *ctx = ctx_new(&o);
    CHECK(served(ctx, "beta.test", beta));
    CHECK(served(ctx, "Beta.Test", beta));
    CHECK(served(ctx, "alpha.test", alpha));
    CHECK(served(ctx, "www.alpha.test", alpha)); /* its wildcard */
    CHECK(served(ctx, "gamma.test", alpha));     /* nobody's: the first */
    CHECK(served(ctx, NULL, alpha));
    ph_tls_ctx_free(ctx);

    /* One certificate: whatever the name. */
    o.ncerts = 1;
    ctx = ctx_new(&o);
    CHECK(served(ctx, "beta.test", alpha));
    ph_tls_ctx_free(ctx);
}

/* ---- client certificates ---- */

static void test_client_certs(void)
{
    ph_tls_options_t o = options();
    o.ca_certs = paths[F_CA];
    o.verify = PH_TLS_VERIFY_REQUIRED;
    o.ncerts = 2;
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;

    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == PH_EPROTO); /* none sent */
    CHECK(strlen(ph_tls_error(s.t)) > 0);
    CHECK(c.failed != 0); /* the alert reached the client */
    pair_free(&c, &s);

    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.cert = evil, .key = evil_key}) == PH_EPROTO);
    CHECK(strlen(ph_tls_error(s.t)) > 0);
    CHECK(c.failed != 0);
    pair_free(&c, &s);

    /* Also after SNI switched the session to the second certificate's context. */
    CHECK(connect_pair(&c, &s, ctx,
                       &(client_opts_t){.sni = "beta.test", .cert = evil, .key = evil_key}) ==
          PH_EPROTO);
    pair_free(&c, &s);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.sni = "beta.test"}) == PH_EPROTO);
    pair_free(&c, &s);

    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.cert = client, .key = client_key}) == 1);
    CHECK(ph_tls_peer_count(s.t) == 1);
    char *subject = ph_tls_peer_field(s.t, PH_TLS_SUBJECT);
    CHECK(subject && strstr(subject, "CN=client-1") && strstr(subject, "O=pronghorn tests"));
    free(subject);
    char *issuer = ph_tls_peer_field(s.t, PH_TLS_ISSUER);
    CHECK(issuer && strstr(issuer, "CN=pronghorn test CA"));
    free(issuer);
    char *serial = ph_tls_peer_field(s.t, PH_TLS_SERIAL);
    CHECK(same_str(serial, "1234"));
    free(serial);
    char *nb = ph_tls_peer_field(s.t, PH_TLS_NOT_BEFORE),
         *na = ph_tls_peer_field(s.t, PH_TLS_NOT_AFTER);
    CHECK(nb && strlen(nb) == 24 && strcmp(nb + 20, " GMT") == 0);
    CHECK(na && strlen(na) == 24 && strcmp(na + 20, " GMT") == 0);
    free(nb);
    free(na);
    CHECK(ph_tls_peer_field(s.t, 99) == NULL);
    CHECK(ph_tls_peer_error(s.t) == NULL);
    CHECK(pem_is(ph_tls_peer_cert_pem(s.t, 0), client));
    CHECK(ph_tls_peer_cert_pem(s.t, 1) == NULL);
    pair_free(&c, &s);

    /* Behind SNI's switch, over TLS 1.2, with its CA in the chain it sent. */
    CHECK(connect_pair(&c, &s, ctx,
                       &(client_opts_t){.sni = "beta.test",
                                        .max_version = TLS1_2_VERSION,
                                        .cert = client,
                                        .key = client_key,
                                        .chain = ca}) == 1);
    CHECK(ph_tls_version(s.t) == 0x0303);
    CHECK(pem_is(ph_tls_server_cert_pem(s.t), beta));
    CHECK(ph_tls_peer_count(s.t) == 2);
    CHECK(pem_is(ph_tls_peer_cert_pem(s.t, 0), client));
    CHECK(pem_is(ph_tls_peer_cert_pem(s.t, 1), ca));
    CHECK(ph_tls_peer_cert_pem(s.t, 2) == NULL);
    CHECK(ph_tls_peer_error(s.t) == NULL);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);

    /* Optional: none is fine, a good one is read, a bad one still refused. */
    o.verify = PH_TLS_VERIFY_OPTIONAL;
    ctx = ctx_new(&o);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    CHECK(ph_tls_peer_count(s.t) == 0);
    CHECK(ph_tls_peer_field(s.t, PH_TLS_SUBJECT) == NULL);
    CHECK(ph_tls_peer_cert_pem(s.t, 0) == NULL);
    CHECK(ph_tls_peer_error(s.t) == NULL);
    pair_free(&c, &s);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.cert = client, .key = client_key}) == 1);
    CHECK(ph_tls_peer_count(s.t) == 1 && ph_tls_peer_error(s.t) == NULL);
    pair_free(&c, &s);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.cert = evil, .key = evil_key}) == PH_EPROTO);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);

    /* Not asked for: a client that has one does not send it. */
    o.verify = PH_TLS_VERIFY_NONE;
    ctx = ctx_new(&o);
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.cert = client, .key = client_key}) == 1);
    CHECK(ph_tls_peer_count(s.t) == 0);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);
}

/* ---- resumption ---- */

/* The value of key in ph_tls_env()'s packing, or NULL. */
static const char *env_get(const char *env, const char *key)
{
    for (const char *p = env; *p;) {
        const char *v = p + strlen(p) + 1;
        if (strcmp(p, key) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}

/* Connects with a session to resume: 1 resumed, 0 a full handshake, -1 failed. *next gets the
 * session the client holds afterwards (its new ticket). */
static int resume(ph_tls_ctx_t *ctx, SSL_SESSION *sess, int max_version, SSL_SESSION **next)
{
    client_t c;
    server_t s;
    int rv = -1;
    if (connect_pair(&c, &s, ctx, &(client_opts_t){.session = sess, .max_version = max_version}) ==
        1) {
        rv = ph_tls_resumed(s.t);
        CHECK(rv == SSL_session_reused(c.ssl));
        char *env = ph_tls_env(s.t);
        CHECK(env && same_str(env_get(env, "SSL_SESSION_RESUMED"), rv ? "Resumed" : "Initial"));
        free(env);
    }
    /* OpenSSL makes the session of a connection freed without close_notify unresumable. */
    SSL_shutdown(c.ssl);
    ERR_clear_error();
    if (next) {
        *next = SSL_get1_session(c.ssl);
        CHECK(*next && SSL_SESSION_is_resumable(*next) && SSL_SESSION_has_ticket(*next));
    }
    pair_free(&c, &s);
    return rv;
}

static void test_resumption(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    int versions[] = {0, TLS1_2_VERSION};
    for (size_t i = 0; i < 2; i++) {
        SSL_SESSION *first, *renewed, *after;
        CHECK(resume(ctx, NULL, versions[i], &first) == 0);
        CHECK(resume(ctx, first, versions[i], NULL) == 1);
        CHECK(resume(ctx, first, versions[i], NULL) == 1); /* stateless tickets: again */
        /* The key that sealed it is now the previous one: still opened, and a ticket under
         * the new key is issued. */
        ph_tls_ctx_rotate_tickets(ctx);
        CHECK(resume(ctx, first, versions[i], &renewed) == 1);
        /* Two rotations back: unknown, so a full handshake; the renewed one still works. */
        ph_tls_ctx_rotate_tickets(ctx);
        CHECK(resume(ctx, first, versions[i], &after) == 0);
        CHECK(resume(ctx, renewed, versions[i], NULL) == 1);
        CHECK(resume(ctx, after, versions[i], NULL) == 1);
        SSL_SESSION_free(first);
        SSL_SESSION_free(renewed);
        SSL_SESSION_free(after);
    }
    /* Another server's ticket (other keys) is not ours: a full handshake. */
    SSL_SESSION *sess;
    CHECK(resume(ctx, NULL, 0, &sess) == 0);
    ph_tls_ctx_t *other = ctx_new(&o);
    CHECK(resume(other, sess, 0, NULL) == 0);
    SSL_SESSION_free(sess);
    ph_tls_ctx_free(other);
    ph_tls_ctx_free(ctx);
}

/* ---- ph_tls_ctx_new's errors ---- */

/* 1 when ph_tls_ctx_new refuses o with an error that says needle. */
static int refused(ph_tls_options_t o, const char *needle)
{
    char err[256] = "";
    ph_tls_ctx_t *ctx = ph_tls_ctx_new(&o, err, sizeof(err));
    if (ctx != NULL) {
        ph_tls_ctx_free(ctx);
        fprintf(stderr, "accepted, expected '%s'\n", needle);
        return 0;
    }
    if (strstr(err, needle) == NULL) {
        fprintf(stderr, "error '%s' does not say '%s'\n", err, needle);
        return 0;
    }
    return 1;
}

static void test_ctx_errors(void)
{
    ph_tls_options_t o = options();
    const char *missing[] = {"/nonexistent/pronghorn.pem"};
    const char *garbage[] = {paths[F_GARBAGE]};
    const char *beta_key_only[] = {paths[F_BETA_KEY]};
    const char *enc_key[] = {paths[F_ENC_KEY]};
    const char *rsa[] = {paths[F_RSA_KEY]};
    const char *alpha_again[] = {paths[F_ALPHA]};

    o.ncerts = 0;
    CHECK(refused(o, "none given"));
    o = options();
    o.certfiles = missing;
    CHECK(refused(o, "--ssl-certfile: cannot read '/nonexistent/pronghorn.pem'"));
    o = options();
    o.keyfiles = missing;
    CHECK(refused(o, "--ssl-keyfile: cannot read"));
    o = options();
    o.certfiles = garbage;
    CHECK(refused(o, "--ssl-certfile: no usable PEM certificate"));
    o = options();
    o.keyfiles = garbage;
    CHECK(refused(o, "--ssl-keyfile: no usable PEM private key"));
    o.keyfiles = alpha_again; /* a certificate where the key should be */
    CHECK(refused(o, "--ssl-keyfile: no usable PEM private key"));
    o.keyfiles = beta_key_only;
    CHECK(refused(o, "does not match"));
    o.keyfiles = rsa; /* another type of key altogether */
    CHECK(refused(o, "does not match"));

    /* The encrypted key: no password, a wrong one, the right one. */
    o = options();
    o.keyfiles = enc_key;
    CHECK(refused(o, "no password was given"));
    o.password = "wrong";
    CHECK(refused(o, "wrong password?"));
    o.password = "s3cret";
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){0}) == 1);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);

    o = options();
    o.ciphers = "NO-SUCH-CIPHER";
    CHECK(refused(o, "--ssl-ciphers: no cipher matches 'NO-SUCH-CIPHER'"));
    o = options();
    o.verify = PH_TLS_VERIFY_REQUIRED;
    CHECK(refused(o, "need --ssl-ca-certs"));
    o.verify = PH_TLS_VERIFY_OPTIONAL;
    CHECK(refused(o, "need --ssl-ca-certs"));
    o.ca_certs = missing[0];
    CHECK(refused(o, "--ssl-ca-certs: cannot read"));
    o.ca_certs = paths[F_GARBAGE];
    CHECK(refused(o, "--ssl-ca-certs: no usable PEM certificate"));

    /* The second pair is the broken one: the first context is freed with the rest. */
    const char *keys[] = {paths[F_ALPHA_KEY], missing[0]};
    o = options();
    o.ncerts = 2;
    o.keyfiles = keys;
    CHECK(refused(o, "cannot read"));
}

/* ---- what the layers above read ---- */

static void test_env(void)
{
    ph_tls_options_t o = options();
    o.ca_certs = paths[F_CA];
    o.verify = PH_TLS_VERIFY_OPTIONAL;
    o.ncerts = 2;
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c;
    server_t s;
    CHECK(connect_pair(&c, &s, ctx, &(client_opts_t){.sni = "beta.test"}) == 1);
    char *env = ph_tls_env(s.t);
    CHECK(env != NULL);
    CHECK(same_str(env_get(env, "HTTPS"), "on"));
    CHECK(same_str(env_get(env, "SSL_PROTOCOL"), "TLSv1.3"));
    CHECK(same_str(env_get(env, "SSL_CIPHER"), ph_tls_cipher_name(s.t)));
    CHECK(same_str(env_get(env, "SSL_SESSION_RESUMED"), "Initial"));
    CHECK(same_str(env_get(env, "SSL_TLS_SNI"), "beta.test"));
    CHECK(same_str(env_get(env, "SSL_CLIENT_VERIFY"), "NONE"));
    CHECK(env_get(env, "SSL_CLIENT_S_DN") == NULL && env_get(env, "SSL_CLIENT_CERT") == NULL);
    free(env);
    pair_free(&c, &s);

    CHECK(connect_pair(&c, &s, ctx,
                       &(client_opts_t){
                           .max_version = TLS1_2_VERSION, .cert = client, .key = client_key}) == 1);
    env = ph_tls_env(s.t);
    CHECK(env != NULL);
    CHECK(same_str(env_get(env, "SSL_PROTOCOL"), "TLSv1.2"));
    CHECK(env_get(env, "SSL_TLS_SNI") == NULL);
    CHECK(same_str(env_get(env, "SSL_CLIENT_VERIFY"), "SUCCESS"));
    const char *dn = env_get(env, "SSL_CLIENT_S_DN");
    CHECK(dn && strstr(dn, "CN=client-1"));
    dn = env_get(env, "SSL_CLIENT_I_DN");
    CHECK(dn && strstr(dn, "CN=pronghorn test CA"));
    CHECK(same_str(env_get(env, "SSL_CLIENT_M_SERIAL"), "1234"));
    const char *v = env_get(env, "SSL_CLIENT_V_START");
    CHECK(v && strstr(v, " GMT"));
    v = env_get(env, "SSL_CLIENT_V_END");
    CHECK(v && strstr(v, " GMT"));
    char *want = pem_of(client);
    CHECK(same_str(env_get(env, "SSL_CLIENT_CERT"), want));
    free(want);
    free(env);
    pair_free(&c, &s);
    ph_tls_ctx_free(ctx);
}

/* Sessions share the context's output buffer: each one's records are taken before the next
 * session is touched, and none end up at the wrong client. */
static void test_two_sessions(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    client_t c1, c2;
    server_t s1, s2;
    CHECK(connect_pair(&c1, &s1, ctx, &(client_opts_t){.alpn = WIRE(ALPN_BOTH)}) == 1);
    CHECK(connect_pair(&c2, &s2, ctx, &(client_opts_t){.alpn = WIRE("\x08http/1.1")}) == 1);
    CHECK(same_str(ph_tls_alpn(s1.t), "h2") && same_str(ph_tls_alpn(s2.t), "http/1.1"));
    char want_a[512] = "", want_b[512] = "";
    for (int i = 0; i < 10; i++) {
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "to a #%d;", i);
        CHECK(ph_tls_write(s1.t, msg, (size_t)n) == 0);
        strcat(want_a, msg);
        const char *p;
        CHECK(ph_tls_output(s2.t, &p) == 0); /* a's, not b's */
        CHECK(to_client(s1.t, &c1));
        n = snprintf(msg, sizeof(msg), "to b #%d;", i);
        CHECK(ph_tls_write(s2.t, msg, (size_t)n) == 0);
        strcat(want_b, msg);
        CHECK(to_client(s2.t, &c2));
        /* And the clients talk back, in turn. */
        CHECK(SSL_write(c1.ssl, "a", 1) == 1);
        CHECK(SSL_write(c2.ssl, "b", 1) == 1);
        pump(&c1, &s1, 16384);
        pump(&c2, &s2, 16384);
    }
    CHECK(c1.rx.len == strlen(want_a) && memcmp(c1.rx.p, want_a, c1.rx.len) == 0);
    CHECK(c2.rx.len == strlen(want_b) && memcmp(c2.rx.p, want_b, c2.rx.len) == 0);
    CHECK(s1.rx.len == 10 && s2.rx.len == 10 && memcmp(s1.rx.p, "aaaaaaaaaa", 10) == 0 &&
          memcmp(s2.rx.p, "bbbbbbbbbb", 10) == 0);

    /* A session freed with records not taken: they are dropped, the next session's go out. */
    CHECK(ph_tls_write(s1.t, "lost", 4) == 0);
    pair_free(&c1, &s1);
    c2.rx.len = 0;
    CHECK(ph_tls_write(s2.t, "still here", 10) == 0);
    pump(&c2, &s2, 16384);
    CHECK(c2.rx.len == 10 && memcmp(c2.rx.p, "still here", 10) == 0);
    pair_free(&c2, &s2);
    ph_tls_ctx_free(ctx);
}

static int freed;
static void count_free(void *p)
{
    freed++;
    free(p);
}

static void test_data_slot(void)
{
    ph_tls_options_t o = options();
    ph_tls_ctx_t *ctx = ctx_new(&o);
    ph_tls_t *t = ph_tls_new(ctx);
    CHECK(ph_tls_data(t) == NULL);
    void *a = malloc(8), *b = malloc(8);
    ph_tls_set_data(t, a, count_free);
    CHECK(ph_tls_data(t) == a && freed == 0);
    ph_tls_set_data(t, b, count_free); /* replaced: a is freed */
    CHECK(ph_tls_data(t) == b && freed == 1);
    ph_tls_free(t);
    CHECK(freed == 2);
    ph_tls_free(NULL);
    ph_tls_ctx_free(ctx);
    ph_tls_ctx_free(NULL);
}

int main(void)
{
    if (!setup()) {
        fprintf(stderr, "cannot make the test certificates in %s\n", dir);
        teardown();
        return 1;
    }
    test_alpn();
    test_versions();
    test_slices();
    test_data();
    test_key_update();
    test_close_notify();
    test_garbage();
    test_plain_http();
    test_sni();
    test_client_certs();
    test_resumption();
    test_ctx_errors();
    test_env();
    test_two_sessions();
    test_data_slot();
    teardown();
    return CHECK_REPORT();
}
