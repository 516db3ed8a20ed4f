/* The transport: one accepted socket, its read buffer, its write queue and its timer. A protocol
 * (h1, later h2) attaches to the connection with a ph_conn_proto_t and sees bytes, never the
 * socket. */
#ifndef PH_CONN_H
#define PH_CONN_H

#include <sys/socket.h>

#include <uv.h>

#include "server.h"

typedef struct {
    /* New bytes are in conn->rbuf[conn->rstart .. conn->rlen); consume with ph_conn_consume(). */
    void (*on_read)(ph_conn_t *conn);
    /* The peer closed its side (0) or the connection failed (negative error). */
    void (*on_eof)(ph_conn_t *conn, int err);
    /* The write queue fell below the server's high-water mark. */
    void (*on_drain)(ph_conn_t *conn);
    /* The timer set with ph_conn_set_timeout() fired. */
    void (*on_timeout)(ph_conn_t *conn);
    /* The connection is closing: release streams; no more callbacks but on_free follow. */
    void (*on_close)(ph_conn_t *conn);
    /* The memory goes now (no stack frame of ours is using it any more). */
    void (*on_free)(ph_conn_t *conn);
    /* Graceful shutdown: close at once if idle, else after the exchange in flight. */
    void (*drain)(ph_conn_t *conn);
} ph_conn_proto_t;

struct ph_conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer;
    uv_timer_t write_timer;
    ph_server_t *server;
    ph_conn_t *prev, *next; /* in server->conns */
    const ph_conn_proto_t *proto;
    void *proto_data;
    char *rbuf;
    size_t rstart, rlen, rcap;
    size_t wqueued; /* bytes handed to uv_write and not yet written */
    uint64_t deadline; /* loop time (ms) of the protocol's timeout; 0 = none */
    uint64_t armed;    /* when the timer is set to fire */
    unsigned reading : 1, eof : 1, shutting : 1, close_after_flush : 1, linger : 1;
    int closing; /* handles still to close; non-zero once closing started */
    int is_unix;
    struct sockaddr_storage peer, local;
};

/* Takes an accepted stream handle (already uv_accept()ed into conn->h): sets up buffers and the
 * timer, links the connection into the server and starts reading. 0 or a negative error (then
 * the caller closes the handle). */
int ph_conn_start(ph_conn_t *conn);

/* Marks n bytes at rbuf+rstart as consumed. */
void ph_conn_consume(ph_conn_t *conn, size_t n);

/* Pauses / resumes reading from the socket (flow control; the buffer keeps what it has). */
void ph_conn_pause(ph_conn_t *conn);
void ph_conn_resume(ph_conn_t *conn);

/* Writes the buffers in order: synchronously as far as the socket takes them, the rest is
 * copied and queued. 0, or a negative error when the connection is closing or failed. */
int ph_conn_write(ph_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs);

/* Bytes queued and not yet written. */
static inline size_t ph_conn_queued(const ph_conn_t *conn) { return conn->wqueued; }

/* Sets the protocol's timeout to ms from now; 0 clears it. Cheap enough to call per request:
 * the timer is only re-armed when the deadline moves earlier. */
void ph_conn_set_timeout(ph_conn_t *conn, uint64_t ms);

/* Flushes what is queued, then closes. With linger, the write side is shut down first and input
 * is read and dropped for a short while so the peer sees the last response before any reset. */
void ph_conn_close(ph_conn_t *conn, int linger);

/* Closes now, dropping anything queued (the peer may see a reset). */
void ph_conn_abort(ph_conn_t *conn);

#endif
