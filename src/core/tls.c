#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "util.h"

typedef struct {
    unsigned char name[16], aes[32], hmac[32];
} ticket_key_t;

struct ph_tls_ctx_s {
    SSL_CTX **ctxs; /* one per certificate: SNI switches a session to another */
    X509 **leaves;  /* each one's own certificate (owned by its SSL_CTX) */
    size_t n;
    BIO_METHOD *bio_method;
    unsigned char alpn[16]; /* our ALPN list in wire format, preferred first */
    size_t alpn_len;
    ticket_key_t keys[2]; /* [0] seals new tickets; [1] (the one before) still opens them */
    int have_prev;
    uint64_t keys_at; /* monotonic seconds when keys[0] was made */
    /* Records made by any session: the transport takes them right after each call, before
     * it touches another session, so one buffer serves every connection of the server. */
    char *out;
    size_t out_len, out_cap;
    ph_tls_t *out_owner;
};

struct ph_tls_s {
    SSL *ssl;
    ph_tls_ctx_t *ctx;
    const char *in; /* fed and not yet taken by OpenSSL (the caller's buffer) */
    size_t in_len;
    void *data;
    void (*data_free)(void *);
    int shut;
    int plain_http; /* the handshake failed on a plain HTTP request */
    char err[200];
};

static uint64_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec;
}

/* ---- the BIO between OpenSSL and the transport ---- */

static int bio_write(BIO *b, const char *data, size_t len, size_t *written)
{
    ph_tls_t *t = BIO_get_data(b);
    ph_tls_ctx_t *c = t->ctx;
    if (c->out_len > 0 && c->out_owner != t)
        return 0; /* another session's records were not taken: a transport bug, not ours to mix */
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 16384;
        while (cap < c->out_len + len)
            cap *= 2;
        char *p = realloc(c->out, cap);
        if (p == NULL)
            return 0;
        c->out = p;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    c->out_owner = t;
    *written = len;
    return 1;
}

static int bio_read(BIO *b, char *buf, size_t len, size_t *nread)
{
    ph_tls_t *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->in_len == 0) {
        BIO_set_retry_read(b); /* OpenSSL keeps a partial record itself and asks again later */
        *nread = 0;
        return 0;
    }
    size_t n = len < t->in_len ? len : t->in_len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    *nread = n;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    ph_tls_t *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return t ? (long)t->in_len : 0;
    default: return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* ---- callbacks ---- */

static int on_password(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pw = u;
    if (pw == NULL)
        return 0; /* never a prompt on the terminal */
    size_t n = strlen(pw);
    if (n > (size_t)size)
        return 0;
    memcpy(buf, pw, n);
    return (int)n;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    ph_tls_ctx_t *c = arg;
    /* Our preference wins: h2 when the client offers it at all. */
    for (size_t i = 0; i < c->alpn_len; i += 1 + c->alpn[i]) {
        unsigned l = c->alpn[i];
        for (unsigned j = 0; j < inlen && j + 1 + in[j] <= inlen; j += 1 + in[j]) {
            if (in[j] == l && memcmp(in + j + 1, c->alpn + i + 1, l) == 0) {
                *out = in + j + 1;
                *outlen = (unsigned char)l;
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    return SSL_TLSEXT_ERR_NOACK; /* no protocol in common: HTTP/1.1 without ALPN */
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    ph_tls_ctx_t *c = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || c->n == 1)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < c->n; i++) {
        if (X509_check_host(c->leaves[i], name, 0, 0, NULL) == 1) {
            if (i > 0 && SSL_set_SSL_CTX(ssl, c->ctxs[i]) == NULL)
                return SSL_TLSEXT_ERR_ALERT_FATAL;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    /* A name none of ours covers gets the first certificate, as nginx and uvicorn do: a
     * client that checks names refuses it; one that sent an IP address still connects. */
    return SSL_TLSEXT_ERR_OK;
}

static int new_ticket_key(ticket_key_t *k)
{
    return RAND_bytes((unsigned char *)k, sizeof(*k)) == 1 ? 0 : -1;
}

void ph_tls_ctx_rotate_tickets(ph_tls_ctx_t *c)
{
    ticket_key_t k;
    if (new_ticket_key(&k) < 0)
        return; /* keep the current key rather than have none */
    c->keys[1] = c->keys[0];
    c->keys[0] = k;
    c->have_prev = 1;
    c->keys_at = now_s();
    OPENSSL_cleanse(&k, sizeof(k));
}

/* Seals (enc) or opens a session ticket: AES-256-CBC with HMAC-SHA256, keys our own so they
 * can be rotated. 1: use it; 2: opened with the previous key, so issue a fresh ticket; 0: not
 * one of ours (a full handshake); -1: failure. */
static int on_ticket_key(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                         EVP_MAC_CTX *hctx, int enc)
{
    ph_tls_ctx_t *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (now_s() - c->keys_at >= PH_TLS_TICKET_ROTATE_S)
        ph_tls_ctx_rotate_tickets(c);
    const ticket_key_t *k;
    int rv = 1;
    if (enc) {
        k = &c->keys[0];
        memcpy(name, k->name, 16);
        if (RAND_bytes(iv, 16) != 1 ||
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            return -1;
    } else {
        if (memcmp(name, c->keys[0].name, 16) == 0) {
            k = &c->keys[0];
        } else if (c->have_prev && memcmp(name, c->keys[1].name, 16) == 0) {
            k = &c->keys[1];
            rv = 2;
        } else {
            return 0;
        }
        if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) != 1)
            return -1;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    return EVP_MAC_CTX_set_params(hctx, params) == 1 ? rv : -1;
}

/* ---- the server's context ---- */

static const char *last_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown error";
}

/* 1 if the file holds an encrypted PEM key (a password question, not a format one). */
static int is_encrypted_pem(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char line[256];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, "ENCRYPTED") != NULL;
    fclose(f);
    return found;
}

static int readable(const char *flag, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot read '%s': %s", flag, path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

static SSL_CTX *new_ctx(ph_tls_ctx_t *c, const ph_tls_options_t *o, size_t i, char *err,
                        size_t errlen)
{
    const char *certfile = o->certfiles[i], *keyfile = o->keyfiles[i];
    if (readable("--ssl-certfile", certfile, err, errlen) < 0 ||
        readable("--ssl-keyfile", keyfile, err, errlen) < 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "TLS: cannot create a context: %s", last_reason());
        return NULL;
    }
    SSL_CTX_set_app_data(ctx, c);
    SSL_CTX_set_min_proto_version(ctx, o->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* Resumption is by tickets alone: no per-session state kept on the server. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"pronghorn", 9);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, c);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, c);
    SSL_CTX_set_default_passwd_cb(ctx, on_password);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)o->password);

    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1) {
        snprintf(err, errlen, "--ssl-certfile: no usable PEM certificate in '%s' (%s)", certfile,
                 last_reason());
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1) {
        int reason = ERR_GET_REASON(ERR_peek_last_error());
        if (reason == X509_R_KEY_VALUES_MISMATCH || reason == X509_R_KEY_TYPE_MISMATCH)
            snprintf(err, errlen, "--ssl-keyfile: '%s' does not match the certificate in '%s'",
                     keyfile, certfile);
        else if (is_encrypted_pem(keyfile))
            snprintf(err, errlen, "--ssl-keyfile: cannot decrypt '%s': %s (--ssl-keyfile-password)",
                     keyfile,
                     o->password ? "wrong password?" : "it is encrypted and no password was given");
        else
            snprintf(err, errlen, "--ssl-keyfile: no usable PEM private key in '%s' (%s)", keyfile,
                     last_reason());
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "--ssl-keyfile: '%s' does not match the certificate in '%s'", keyfile,
                 certfile);
        goto fail;
    }
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL); /* the password is not kept */
    if (o->ciphers && SSL_CTX_set_cipher_list(ctx, o->ciphers) != 1) {
        snprintf(err, errlen, "--ssl-ciphers: no cipher matches '%s'", o->ciphers);
        goto fail;
    }
    if (o->ca_certs) {
        if (readable("--ssl-ca-certs", o->ca_certs, err, errlen) < 0)
            goto fail;
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_certs);
        if (SSL_CTX_load_verify_locations(ctx, o->ca_certs, NULL) != 1 || names == NULL) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            snprintf(err, errlen, "--ssl-ca-certs: no usable PEM certificate in '%s' (%s)",
                     o->ca_certs, last_reason());
            goto fail;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    int mode = SSL_VERIFY_NONE;
    if (o->verify == PH_TLS_VERIFY_OPTIONAL)
        mode = SSL_VERIFY_PEER;
    else if (o->verify == PH_TLS_VERIFY_REQUIRED)
        mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

ph_tls_ctx_t *ph_tls_ctx_new(const ph_tls_options_t *o, char *err, size_t errlen)
{
    if (o->ncerts == 0) {
        snprintf(err, errlen, "--ssl-certfile: none given");
        return NULL;
    }
    if (o->verify != PH_TLS_VERIFY_NONE && o->ca_certs == NULL) {
        snprintf(err, errlen, "--ssl-cert-reqs: client certificates need --ssl-ca-certs");
        return NULL;
    }
    ph_tls_ctx_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto nomem;
    c->ctxs = calloc(o->ncerts, sizeof(*c->ctxs));
    c->leaves = calloc(o->ncerts, sizeof(*c->leaves));
    c->bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pronghorn");
    if (c->ctxs == NULL || c->leaves == NULL || c->bio_method == NULL) {
        ph_tls_ctx_free(c);
        goto nomem;
    }
    BIO_meth_set_write_ex(c->bio_method, bio_write);
    BIO_meth_set_read_ex(c->bio_method, bio_read);
    BIO_meth_set_ctrl(c->bio_method, bio_ctrl);
    BIO_meth_set_create(c->bio_method, bio_create);
    if (o->h2) {
        memcpy(c->alpn, "\x02h2", 3);
        c->alpn_len = 3;
    }
    if (o->http1) {
        memcpy(c->alpn + c->alpn_len, "\x08http/1.1", 9);
        c->alpn_len += 9;
    }
    if (new_ticket_key(&c->keys[0]) < 0) {
        snprintf(err, errlen, "TLS: no randomness for session-ticket keys");
        ph_tls_ctx_free(c);
        return NULL;
    }
    c->keys_at = now_s();
    for (size_t i = 0; i < o->ncerts; i++) {
        c->ctxs[i] = new_ctx(c, o, i, err, errlen);
        if (c->ctxs[i] == NULL) {
            ph_tls_ctx_free(c);
            return NULL;
        }
        c->n = i + 1;
        c->leaves[i] = SSL_CTX_get0_certificate(c->ctxs[i]);
    }
    return c;
nomem:
    snprintf(err, errlen, "TLS: out of memory");
    return NULL;
}

void ph_tls_ctx_free(ph_tls_ctx_t *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->n; i++)
        SSL_CTX_free(c->ctxs[i]);
    free(c->ctxs);
    free(c->leaves);
    if (c->bio_method)
        BIO_meth_free(c->bio_method);
    free(c->out);
    OPENSSL_cleanse(c->keys, sizeof(c->keys));
    free(c);
}

/* ---- sessions ---- */

ph_tls_t *ph_tls_new(ph_tls_ctx_t *c)
{
    ph_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->ctx = c;
    t->ssl = SSL_new(c->ctxs[0]);
    BIO *bio = BIO_new(c->bio_method);
    if (t->ssl == NULL || bio == NULL) {
        BIO_free(bio);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio); /* one reference, taken by the session */
    SSL_set_accept_state(t->ssl);
    return t;
}

void ph_tls_free(ph_tls_t *t)
{
    if (t == NULL)
        return;
    if (t->ctx->out_owner == t) {
        t->ctx->out_len = 0; /* its records go nowhere now */
        t->ctx->out_owner = NULL;
    }
    if (t->data_free)
        t->data_free(t->data);
    SSL_free(t->ssl);
    free(t);
}

void ph_tls_set_data(ph_tls_t *t, void *data, void (*free_fn)(void *))
{
    if (t->data_free)
        t->data_free(t->data);
    t->data = data;
    t->data_free = free_fn;
}

void *ph_tls_data(const ph_tls_t *t)
{
    return t->data;
}

int ph_tls_feed(ph_tls_t *t, const char *data, size_t len)
{
    t->in = data;
    t->in_len = len;
    return 0;
}

static void set_error(ph_tls_t *t, int e)
{
    unsigned long code = ERR_peek_last_error();
    if (code && (ERR_GET_REASON(code) == SSL_R_HTTP_REQUEST ||
                 ERR_GET_REASON(code) == SSL_R_HTTPS_PROXY_REQUEST))
        t->plain_http = 1;
    if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN || code == 0)
        snprintf(t->err, sizeof(t->err), "the peer closed the TLS session");
    else
        snprintf(t->err, sizeof(t->err), "%s", last_reason());
    ERR_clear_error();
}

int ph_tls_handshake(ph_tls_t *t)
{
    ERR_clear_error();
    int rv = SSL_do_handshake(t->ssl);
    if (rv == 1)
        return 1;
    int e = SSL_get_error(t->ssl, rv);
    if (e == SSL_ERROR_WANT_READ)
        return 0;
    set_error(t, e);
    return PH_EPROTO;
}

ssize_t ph_tls_read(ph_tls_t *t, char *buf, size_t len)
{
    size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(t->ssl, buf, len, &n) == 1)
        return (ssize_t)n;
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_READ)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN)
        return PH_TLS_CLOSED;
    set_error(t, e);
    return PH_EPROTO;
}

int ph_tls_write(ph_tls_t *t, const char *data, size_t len)
{
    ph_tls_ctx_t *c = t->ctx;
    if (!SSL_is_init_finished(t->ssl) || (c->out_len > 0 && c->out_owner != t))
        return PH_ESTATE; /* before the handshake, or another session's records not taken */
    while (len > 0) {
        size_t n = 0;
        ERR_clear_error();
        if (SSL_write_ex(t->ssl, data, len, &n) != 1) {
            int e = SSL_get_error(t->ssl, 0);
            set_error(t, e);
            return e == SSL_ERROR_SSL ? PH_EPROTO : PH_ENOMEM;
        }
        data += n;
        len -= n;
    }
    return 0;
}

void ph_tls_shutdown(ph_tls_t *t)
{
    if (t->shut || !SSL_is_init_finished(t->ssl))
        return;
    t->shut = 1;
    ERR_clear_error();
    SSL_shutdown(t->ssl); /* queues close_notify; we do not wait for the peer's */
    ERR_clear_error();
}

size_t ph_tls_output(ph_tls_t *t, const char **data)
{
    ph_tls_ctx_t *c = t->ctx;
    if (c->out_owner != t)
        return 0;
    *data = c->out;
    return c->out_len;
}

/* Past this, the shared output buffer is given back once taken (a big body written at once
 * must not pin its size for the server's life). */
#define OUT_KEEP (256 * 1024)

void ph_tls_output_done(ph_tls_t *t)
{
    ph_tls_ctx_t *c = t->ctx;
    if (c->out_owner != t)
        return;
    c->out_len = 0;
    c->out_owner = NULL;
    if (c->out_cap > OUT_KEEP) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
}

int ph_tls_plain_http(const ph_tls_t *t)
{
    return t->plain_http;
}

const char *ph_tls_error(ph_tls_t *t)
{
    return t->err[0] ? t->err : "TLS error";
}

/* ---- what the session agreed ---- */

const char *ph_tls_alpn(const ph_tls_t *t)
{
    const unsigned char *p = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    if (len == 2 && memcmp(p, "h2", 2) == 0)
        return "h2";
    if (len == 8 && memcmp(p, "http/1.1", 8) == 0)
        return "http/1.1";
    return NULL;
}

int ph_tls_version(const ph_tls_t *t)
{
    return SSL_version(t->ssl);
}

const char *ph_tls_version_name(const ph_tls_t *t)
{
    return SSL_get_version(t->ssl);
}

uint16_t ph_tls_cipher_id(const ph_tls_t *t)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    return c ? SSL_CIPHER_get_protocol_id(c) : 0;
}

const char *ph_tls_cipher_name(const ph_tls_t *t)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    return c ? SSL_CIPHER_get_name(c) : NULL;
}

const char *ph_tls_server_name(const ph_tls_t *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

int ph_tls_resumed(const ph_tls_t *t)
{
    return SSL_session_reused(t->ssl);
}

/* What was printed to a memory BIO, as a malloc'd string; frees the BIO. */
static char *bio_string(BIO *b, int ok)
{
    char *s = NULL;
    if (b && ok) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        s = malloc((size_t)(n > 0 ? n : 0) + 1);
        if (s) {
            if (n > 0)
                memcpy(s, p, (size_t)n);
            s[n > 0 ? n : 0] = 0;
        }
    }
    BIO_free(b);
    return s;
}

static char *pem(X509 *x)
{
    if (x == NULL)
        return NULL;
    BIO *b = BIO_new(BIO_s_mem());
    return bio_string(b, b && PEM_write_bio_X509(b, x) == 1);
}

char *ph_tls_server_cert_pem(const ph_tls_t *t)
{
    return pem(SSL_get_certificate(t->ssl));
}

/* The client's chain as it sent it: its own certificate, then the rest. (Whether OpenSSL's
 * stack holds the client's own certificate has varied, so it is skipped there.) */
static X509 *peer_cert_at(const ph_tls_t *t, size_t i)
{
    X509 *leaf = SSL_get0_peer_certificate(t->ssl);
    if (leaf == NULL)
        return NULL;
    if (i == 0)
        return leaf;
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(t->ssl);
    int n = chain ? sk_X509_num(chain) : 0;
    for (int k = 0; k < n; k++) {
        X509 *x = sk_X509_value(chain, k);
        if (X509_cmp(x, leaf) == 0)
            continue;
        if (--i == 0)
            return x;
    }
    return NULL;
}

size_t ph_tls_peer_count(const ph_tls_t *t)
{
    size_t n = 0;
    while (peer_cert_at(t, n))
        n++;
    return n;
}

char *ph_tls_peer_cert_pem(const ph_tls_t *t, size_t i)
{
    return pem(peer_cert_at(t, i));
}

char *ph_tls_peer_field(const ph_tls_t *t, int field)
{
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    if (x == NULL)
        return NULL;
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return NULL;
    int ok = 0;
    switch (field) {
    case PH_TLS_SUBJECT:
        ok = X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0;
        break;
    case PH_TLS_ISSUER:
        ok = X509_NAME_print_ex(b, X509_get_issuer_name(x), 0, XN_FLAG_RFC2253) >= 0;
        break;
    case PH_TLS_SERIAL: {
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn ? BN_bn2hex(bn) : NULL;
        ok = hex && BIO_puts(b, hex) >= 0;
        OPENSSL_free(hex);
        BN_free(bn);
        break;
    }
    case PH_TLS_NOT_BEFORE: ok = ASN1_TIME_print(b, X509_get0_notBefore(x)) == 1; break;
    case PH_TLS_NOT_AFTER: ok = ASN1_TIME_print(b, X509_get0_notAfter(x)) == 1; break;
    }
    return bio_string(b, ok);
}

const char *ph_tls_peer_error(const ph_tls_t *t)
{
    if (SSL_get0_peer_certificate(t->ssl) == NULL)
        return NULL;
    long v = SSL_get_verify_result(t->ssl);
    return v == X509_V_OK ? NULL : X509_verify_cert_error_string(v);
}

/* ---- mod_ssl's variables ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} pack_t;

static void pack(pack_t *pk, const char *key, const char *value)
{
    if (value == NULL || pk->failed)
        return;
    size_t kl = strlen(key) + 1, vl = strlen(value) + 1;
    if (pk->len + kl + vl + 1 > pk->cap) {
        size_t cap = (pk->cap ? pk->cap : 1024);
        while (cap < pk->len + kl + vl + 1)
            cap *= 2;
        char *np = realloc(pk->p, cap);
        if (np == NULL) {
            pk->failed = 1;
            return;
        }
        pk->p = np;
        pk->cap = cap;
    }
    memcpy(pk->p + pk->len, key, kl);
    memcpy(pk->p + pk->len + kl, value, vl);
    pk->len += kl + vl;
    pk->p[pk->len] = 0;
}

static void pack_owned(pack_t *pk, const char *key, char *value)
{
    if (value == NULL)
        pk->failed = 1; /* the certificate is there, so only memory can be missing */
    else
        pack(pk, key, value);
    free(value);
}

char *ph_tls_env(const ph_tls_t *t)
{
    pack_t pk = {0};
    pack(&pk, "HTTPS", "on");
    pack(&pk, "SSL_PROTOCOL", ph_tls_version_name(t));
    pack(&pk, "SSL_CIPHER", ph_tls_cipher_name(t));
    pack(&pk, "SSL_SESSION_RESUMED", ph_tls_resumed(t) ? "Resumed" : "Initial");
    pack(&pk, "SSL_TLS_SNI", ph_tls_server_name(t));
    if (ph_tls_peer_count(t) == 0) {
        pack(&pk, "SSL_CLIENT_VERIFY", "NONE");
    } else {
        const char *err = ph_tls_peer_error(t);
        char verify[160];
        snprintf(verify, sizeof(verify), err ? "FAILED:%s" : "SUCCESS", err);
        pack(&pk, "SSL_CLIENT_VERIFY", verify);
        pack_owned(&pk, "SSL_CLIENT_S_DN", ph_tls_peer_field(t, PH_TLS_SUBJECT));
        pack_owned(&pk, "SSL_CLIENT_I_DN", ph_tls_peer_field(t, PH_TLS_ISSUER));
        pack_owned(&pk, "SSL_CLIENT_M_SERIAL", ph_tls_peer_field(t, PH_TLS_SERIAL));
        pack_owned(&pk, "SSL_CLIENT_V_START", ph_tls_peer_field(t, PH_TLS_NOT_BEFORE));
        pack_owned(&pk, "SSL_CLIENT_V_END", ph_tls_peer_field(t, PH_TLS_NOT_AFTER));
        pack_owned(&pk, "SSL_CLIENT_CERT", ph_tls_peer_cert_pem(t, 0));
    }
    if (pk.failed) {
        free(pk.p);
        return NULL;
    }
    return pk.p;
}
