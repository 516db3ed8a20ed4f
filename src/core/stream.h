/* The seam between protocols and bridges: one request/response exchange. A protocol (h1, h2)
 * fills in the request head and the ops; a bridge (asgi) sets the handler and drives the ops.
 * Neither knows which one is on the other side. */
#ifndef PH_STREAM_H
#define PH_STREAM_H

#include <stdint.h>
#include <sys/socket.h>

#include "util.h"

typedef struct ph_stream_s ph_stream_t;

typedef struct {
    ph_slice_t method;
    ph_slice_t target; /* the request-target as received */
    ph_slice_t path;   /* its path part (scheme and authority of an absolute-form target removed) */
    ph_slice_t query;  /* after '?', without it */
    int http_major, http_minor;
    ph_header_t *headers; /* names lower-cased; order kept */
    size_t nheaders;
    int64_t content_length; /* -1 when absent */
    /* te_trailers: the client takes response trailers (HTTP/1.1 `TE: trailers`; always on
     * HTTP/2). */
    unsigned chunked : 1, expect_continue : 1, is_head : 1, te_trailers : 1;
    /* A WebSocket handshake the protocol checked (HTTP/1.1 `Upgrade: websocket` with version 13
     * and a valid key; HTTP/2 extended CONNECT with `:protocol: websocket`). start() with status
     * 101 accepts it: the protocol sends its own form of the answer (101 and
     * Sec-WebSocket-Accept; 200 on HTTP/2) and the stream becomes a tunnel: body() carries raw
     * bytes to the peer, more=0 closes it; on_body() delivers the peer's raw bytes; no
     * deadline of the protocol's applies. Any other status refuses it with an HTTP response. */
    unsigned websocket : 1;
} ph_request_t;

/* What a bridge may ask of the protocol. Every op returns 0 or a negative PH_E* / libuv error;
 * after the stream is disconnected they return PH_ECLOSED. */
typedef struct {
    /* Response status and the app's headers (names and values are validated: PH_EINVAL; then
     * nothing changes). Nothing is sent yet: the head leaves with the first body() call, in
     * the same write; until then a later start() replaces it (an error answer after all). */
    int (*start)(ph_stream_t *s, int status, const ph_header_t *headers, size_t n);
    /* Response body; more=0 ends the response. PH_EINVAL when the body runs past, or ends short
     * of, the Content-Length the app declared; PH_EINVAL and PH_ENOMEM leave nothing written,
     * so a first body() that fails can still be followed by another start(). */
    int (*body)(ph_stream_t *s, const char *data, size_t len, int more);
    /* Response body from a file: len bytes of fd from offset, sent without copying them through
     * user space where the transport can (sendfile). The stream owns fd from the call on and
     * closes it, also when it fails. Otherwise as body(); a file shorter than len ends the
     * exchange with an abort. NULL when the protocol cannot: the bridge reads the file and
     * uses body(). */
    int (*sendfile)(ph_stream_t *s, int fd, uint64_t offset, uint64_t len, int more);
    /* Ends a response whose last body() call said more=1: trailer fields (validated as in
     * start(): PH_EINVAL, nothing sent). Sent where the protocol can carry them (an HTTP/2
     * HEADERS frame; HTTP/1.1 chunked trailers when the request had `TE: trailers`), else
     * dropped, as the ASGI trailers extension allows. */
    int (*trailers)(ph_stream_t *s, const ph_header_t *headers, size_t n);
    /* The bridge wants (more of) the request body: read on, sending 100 Continue if expected. */
    void (*want_body)(ph_stream_t *s);
    /* The bridge holds enough unconsumed body: stop reading for now. */
    void (*pause_body)(ph_stream_t *s);
    /* Give up on the exchange (app failure after the response started): the peer must not take
     * what it got for a complete response. */
    void (*abort)(ph_stream_t *s);
    /* Response bytes accepted but not yet sent to the peer. */
    size_t (*queued)(ph_stream_t *s);
} ph_stream_ops_t;

/* What the protocol tells the bridge. */
typedef struct {
    void (*on_body)(ph_stream_t *s, const char *data, size_t len); /* bytes valid for the call */
    /* The request's trailer fields, just before on_body_end (names lower-cased; valid for the
     * call). Optional. */
    void (*on_trailers)(ph_stream_t *s, const ph_header_t *headers, size_t n);
    void (*on_body_end)(ph_stream_t *s);
    void (*on_drain)(ph_stream_t *s);      /* queued() fell below the high-water mark */
    void (*on_disconnect)(ph_stream_t *s); /* the peer left or broke the protocol */
    /* The peer closed its sending side after the whole request (an HTTP/1 half-close): it may
     * still read the response, or be gone (the next write tells). Optional. */
    void (*on_peer_closed)(ph_stream_t *s);
    /* The server is shutting down: a tunnel should be closed soon (its peer told so); the
     * protocol ends it at the shutdown deadline. Optional. */
    void (*on_goaway)(ph_stream_t *s);
    /* Last call: the protocol forgets the stream; the bridge must not touch it again. */
    void (*on_release)(ph_stream_t *s);
} ph_stream_handler_t;

struct ph_stream_s {
    const ph_stream_ops_t *ops;
    const ph_stream_handler_t *handler; /* set by the bridge when it takes the stream */
    void *user;                         /* the bridge's per-request object */
    ph_request_t req;
    const struct sockaddr_storage *peer, *local;
    const char *scheme;   /* "http" or "https" */
    struct ph_tls_s *tls; /* the connection's TLS session (tls.h), or NULL */
    /* Set by the protocol before on_disconnect when it answered the request itself (413 for a
     * body too large, 408, 503 at the shutdown deadline): the status the client got. */
    int answered;
};

/* A bridge's own short answer to a stream no app saw (503 at a limit, 500 when memory ran
 * out): a text/plain body, or nothing if the protocol refuses it. */
static inline void ph_stream_respond_text(ph_stream_t *s, int status, const char *text, size_t len)
{
    static const ph_header_t hs[] = {{{"content-type", 12}, {"text/plain; charset=utf-8", 25}}};
    if (s->ops->start(s, status, hs, 1) == 0)
        s->ops->body(s, text, len, 0);
}

#endif
