/* libFuzzer target: arbitrary bytes as what a client sends, in arbitrary slices, through the TLS
 * engine (tls.c: OpenSSL behind our BIO, the ALPN, SNI and session-ticket callbacks, client
 * certificates) as conn drives it: feed, then the handshake until it is done or fails, then
 * reads until more is needed; the records made after each call are taken and dropped.
 *
 * The first byte picks the server (bit 7: two certificates chosen by SNI, client certificates
 * optional, TLS 1.2 and 1.3, h2 and http/1.1; else one certificate, client certificates
 * required, TLS 1.3 only, h2 only) and the slice size; the rest is the client's bytes. The
 * certificates are made once, at the first input. Built by `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tests/c/certs.h"
#include "tls.h"

static ph_tls_ctx_t *servers[2];

static void make_servers(void)
{
    char dir[] = "/tmp/ph-fuzz-tls-XXXXXX";
    if (mkdtemp(dir) == NULL)
        abort();
    char ca_pem[64], alpha_pem[64], alpha_key[64], beta_pem[64], beta_key[64];
    snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", dir);
    snprintf(alpha_pem, sizeof(alpha_pem), "%s/alpha.pem", dir);
    snprintf(alpha_key, sizeof(alpha_key), "%s/alpha.key", dir);
    snprintf(beta_pem, sizeof(beta_pem), "%s/beta.pem", dir);
    snprintf(beta_key, sizeof(beta_key), "%s/beta.key", dir);
    EVP_PKEY *cak = certs_key(), *ak = certs_key(), *bk = certs_key();
    X509 *ca = cak ? certs_make(cak, "fuzz CA", NULL, NULL, NULL, 1) : NULL;
    X509 *a = ak && ca ? certs_make(ak, "alpha.test", "DNS:alpha.test", ca, cak, 2) : NULL;
    X509 *b = bk && ca ? certs_make(bk, "beta.test", "DNS:beta.test", ca, cak, 3) : NULL;
    if (!a || !b || !certs_write_chain(ca_pem, &ca, 1) || !certs_write_chain(alpha_pem, &a, 1) ||
        !certs_write_key(alpha_key, ak, NULL) || !certs_write_chain(beta_pem, &b, 1) ||
        !certs_write_key(beta_key, bk, NULL))
        abort();
    const char *certs[] = {alpha_pem, beta_pem}, *keys[] = {alpha_key, beta_key};
    ph_tls_options_t o = {.certfiles = certs,
                          .keyfiles = keys,
                          .ncerts = 1,
                          .ca_certs = ca_pem,
                          .verify = PH_TLS_VERIFY_REQUIRED,
                          .min_version = 13,
                          .h2 = 1};
    char err[256];
    servers[0] = ph_tls_ctx_new(&o, err, sizeof(err));
    o.ncerts = 2;
    o.verify = PH_TLS_VERIFY_OPTIONAL;
    o.min_version = 12;
    o.http1 = 1;
    servers[1] = ph_tls_ctx_new(&o, err, sizeof(err));
    if (servers[0] == NULL || servers[1] == NULL)
        abort();
    /* Everything is loaded: the files can go. */
    const char *files[] = {ca_pem, alpha_pem, alpha_key, beta_pem, beta_key};
    for (size_t i = 0; i < 5; i++)
        unlink(files[i]);
    rmdir(dir);
    X509_free(ca);
    X509_free(a);
    X509_free(b);
    EVP_PKEY_free(cak);
    EVP_PKEY_free(ak);
    EVP_PKEY_free(bk);
}

/* The records the last call made go nowhere, as if sent. */
static void drop_output(ph_tls_t *t)
{
    const char *p;
    if (ph_tls_output(t, &p) > 0)
        ph_tls_output_done(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (servers[0] == NULL)
        make_servers();
    ph_tls_t *t = ph_tls_new(servers[data[0] >> 7]);
    if (t == NULL)
        return 0;
    size_t piece = (size_t)(data[0] & 127) * 8 + 1; /* 1 .. 1017 bytes a read */
    const char *in = (const char *)data + 1;
    size_t left = size - 1;
    int hs = 0;
    ssize_t rd = 0;
    char buf[16384];
    while (left > 0 && hs >= 0 && rd >= 0) {
        size_t n = left < piece ? left : piece;
        ph_tls_feed(t, in, n);
        in += n;
        left -= n;
        if (hs == 0) {
            hs = ph_tls_handshake(t);
            drop_output(t);
        }
        while (hs == 1 && (rd = ph_tls_read(t, buf, sizeof(buf))) > 0)
            drop_output(t);
        drop_output(t);
    }
    if (hs < 0 && (ph_tls_error(t)[0] == 0 || ph_tls_plain_http(t) > 1))
        __builtin_trap(); /* every failure says why */
    if (hs == 1) {
        free(ph_tls_env(t));
        if (ph_tls_write(t, "x", 1) == 0)
            drop_output(t);
        ph_tls_shutdown(t);
        drop_output(t);
    }
    ph_tls_free(t);
    return 0;
}
