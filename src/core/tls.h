/* TLS as a sans-I/O engine (OpenSSL 3 with memory BIOs): the transport feeds it the bytes it
 * read and sends what it produced; the protocols above see plaintext and ALPN's choice. It never
 * touches a socket, so libuv keeps owning the connection.
 *
 * A ph_tls_ctx_t is the server's configuration (certificates, client verification, versions,
 * ALPN, session tickets); a ph_tls_t is one connection's session. */
#ifndef PH_TLS_H
#define PH_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct ph_tls_ctx_s ph_tls_ctx_t;
typedef struct ph_tls_s ph_tls_t;

#define PH_TLS_CLOSED (-10101)

enum { PH_TLS_VERIFY_NONE, PH_TLS_VERIFY_OPTIONAL, PH_TLS_VERIFY_REQUIRED };

typedef struct {
    /* PEM certificate chains and their keys, in pairs; the first also serves clients whose
     * SNI matches none (or who send none). */
    const char *const *certfiles;
    const char *const *keyfiles;
    size_t ncerts;
    const char *password; /* for encrypted keys; NULL: none */
    const char *ca_certs; /* PEM file of CAs that sign client certificates; NULL: none */
    int verify;           /* PH_TLS_VERIFY_* */
    const char *ciphers;  /* TLS 1.2 cipher list (OpenSSL syntax); NULL: OpenSSL's default */
    int min_version;      /* 12 or 13 (TLS 1.0 and 1.1 are never accepted) */
    int h2;               /* offer h2 in ALPN (first: preferred) */
    int http1;            /* offer http/1.1 in ALPN */
} ph_tls_options_t;

/* Loads and checks everything (files readable, password right, each key matches its
 * certificate). NULL on failure, with one line for the user in err. */
ph_tls_ctx_t *ph_tls_ctx_new(const ph_tls_options_t *o, char *err, size_t errlen);
void ph_tls_ctx_free(ph_tls_ctx_t *ctx);

/* Session-ticket keys are replaced after this many seconds; tickets sealed with the previous
 * key are still accepted (and renewed) for one more period. */
#define PH_TLS_TICKET_ROTATE_S (12 * 3600)
/* Replaces the ticket key now (the rotation the ticket callback does on its own by age). */
void ph_tls_ctx_rotate_tickets(ph_tls_ctx_t *ctx);

/* One connection's session, or NULL when memory ran out. */
ph_tls_t *ph_tls_new(ph_tls_ctx_t *ctx);
void ph_tls_free(ph_tls_t *t);

/* Something the layer above keeps with the session (a cache of what it made from it):
 * free_fn(data) runs when the session is freed, or when it is replaced. */
void ph_tls_set_data(ph_tls_t *t, void *data, void (*free_fn)(void *));
void *ph_tls_data(const ph_tls_t *t);

/* Bytes read from the peer. 0 or PH_ENOMEM. */
int ph_tls_feed(ph_tls_t *t, const char *data, size_t len);

/* Runs the handshake on what was fed: 1 done, 0 needs more input, PH_EPROTO failed (see
 * ph_tls_error()). Its output (and any alert) waits in ph_tls_output(). */
int ph_tls_handshake(ph_tls_t *t);

/* Decrypted bytes into buf: > 0 bytes, 0 when more input is needed, PH_TLS_CLOSED when the
 * peer sent close_notify, PH_EPROTO on a broken record (see ph_tls_error()). */
ssize_t ph_tls_read(ph_tls_t *t, char *buf, size_t len);

/* Encrypts len bytes; the records wait in ph_tls_output(). 0, PH_ENOMEM, PH_EPROTO, or
 * PH_ESTATE before the handshake is done or while another session's output is not taken. */
int ph_tls_write(ph_tls_t *t, const char *data, size_t len);

/* Queues close_notify in ph_tls_output() (once). */
void ph_tls_shutdown(ph_tls_t *t);

/* What is ready to go to the peer: *data points to len bytes that stay valid until
 * ph_tls_output_done(), which forgets them. */
size_t ph_tls_output(ph_tls_t *t, const char **data);
void ph_tls_output_done(ph_tls_t *t);

/* Why the handshake or a read failed: one line (OpenSSL's reason), valid until the next call. */
const char *ph_tls_error(ph_tls_t *t);

/* 1 when the handshake failed because the client spoke plain HTTP (it can read a plain
 * answer). */
int ph_tls_plain_http(const ph_tls_t *t);

/* After the handshake. */
const char *ph_tls_alpn(const ph_tls_t *t);         /* "h2", "http/1.1" or NULL (none agreed) */
int ph_tls_version(const ph_tls_t *t);              /* 0x0303 (TLS 1.2), 0x0304 (TLS 1.3) */
const char *ph_tls_version_name(const ph_tls_t *t); /* "TLSv1.3" */
uint16_t ph_tls_cipher_id(const ph_tls_t *t);       /* IANA number, e.g. 0x1301 */
const char *ph_tls_cipher_name(const ph_tls_t *t); /* OpenSSL's name, e.g. TLS_AES_128_GCM_SHA256 */
const char *ph_tls_server_name(const ph_tls_t *t); /* the SNI the client sent, or NULL */
int ph_tls_resumed(const ph_tls_t *t); /* 1 when a session ticket skipped the full handshake */

/* Certificates as malloc'd NUL-terminated strings (the caller frees them), or NULL when there
 * is none (or memory ran out). */
char *ph_tls_server_cert_pem(const ph_tls_t *t);
/* The client's chain: its own certificate first. */
size_t ph_tls_peer_count(const ph_tls_t *t);
char *ph_tls_peer_cert_pem(const ph_tls_t *t, size_t i);
/* Fields of the client's certificate: subject and issuer as RFC 4514 strings, the serial in
 * hex, validity as "Jan  1 00:00:00 2030 GMT". */
enum { PH_TLS_SUBJECT, PH_TLS_ISSUER, PH_TLS_SERIAL, PH_TLS_NOT_BEFORE, PH_TLS_NOT_AFTER };
char *ph_tls_peer_field(const ph_tls_t *t, int field);
/* Why the client's certificate did not verify, or NULL (verified, or none sent). */
const char *ph_tls_peer_error(const ph_tls_t *t);

/* The session as mod_ssl's environment variables (HTTPS, SSL_PROTOCOL, SSL_CIPHER,
 * SSL_SESSION_RESUMED, SSL_TLS_SNI, SSL_CLIENT_VERIFY and, with a client certificate,
 * SSL_CLIENT_S_DN/I_DN/M_SERIAL/V_START/V_END/CERT), packed as "key\0value\0...\0": a copy
 * another thread can read after the connection is gone. malloc'd; NULL when memory ran out. */
char *ph_tls_env(const ph_tls_t *t);

#endif
