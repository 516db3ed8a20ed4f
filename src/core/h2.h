/* HTTP/2 on a connection (RFC 9113), framed by nghttp2: every request stream becomes a
 * ph_stream_t, so the bridges serve it as they serve HTTP/1.1. Flow control follows what the
 * bridge consumes; floods are bounded per connection and answered with GOAWAY
 * ENHANCE_YOUR_CALM. */
#ifndef PH_H2_H
#define PH_H2_H

#include "conn.h"
#include "stream.h"

/* The client connection preface (RFC 9113 §3.4). */
#define PH_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define PH_H2_PREFACE_LEN 24
#define PH_H2_PREFACE_COMMITS 16 /* "PRI * HTTP/2.0\r\n": no HTTP/1.1 request starts so */

/* Whether [p, p+n) starts as the preface does (its first PH_H2_PREFACE_COMMITS bytes): 1 yes,
 * 0 not yet known (a prefix of those), -1 no. */
int ph_h2_match_preface(const char *p, size_t n);

/* Attaches HTTP/2 to a connection whose next input is the client preface (prior knowledge, or
 * ALPN "h2"): sends the server's SETTINGS. Input already in the buffer is processed from the
 * next tick. 0 or PH_ENOMEM (the connection is left as it was). */
int ph_h2_attach(ph_conn_t *conn);

/* An HTTP/1.1 request that asked for `Upgrade: h2c` and was answered with 101: it becomes
 * stream 1, half-closed (its whole body came with it). */
typedef struct {
    const ph_request_t *req; /* the HTTP/1.1 head; copied */
    const uint8_t *settings; /* the decoded HTTP2-Settings payload */
    size_t settings_len;
    const char *body; /* the request body, whole; copied */
    size_t body_len;
} ph_h2_upgrade_t;

/* Attaches HTTP/2 after a 101 to `Upgrade: h2c`. 0, PH_EINVAL (bad settings payload) or
 * PH_ENOMEM; on an error the connection is left as it was. */
int ph_h2_attach_upgrade(ph_conn_t *conn, const ph_h2_upgrade_t *up);

#endif
