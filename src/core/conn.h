/* The transport: one accepted socket, its read buffer, its write queue and its deadlines. A
 * protocol (h1, later h2) attaches to the connection with a ph_conn_proto_t and sees bytes,
 * never the socket.
 *
 * A connection is a small state machine:
 *   open       reading (unless the protocol paused it) and writing; the protocol's deadline
 *              (header, body, keep-alive) and the write-progress deadline apply
 *   flushing   ph_conn_close() was called: nothing new is written, what is queued drains
 *              (the write-progress deadline still applies); input is read and dropped
 *   lingering  our FIN is out: input is read and dropped until the peer's FIN or the linger
 *              time, so the peer reads our last response before any reset
 *   closed     the handles are closing; the memory goes with the last one
 * Nothing queued is dropped on the way to closed unless the peer is gone (a write fails, a
 * reset arrives) or ph_conn_abort() is called. */
#ifndef PH_CONN_H
#define PH_CONN_H

#include <sys/socket.h>

#include <uv.h>

#include "server.h"

typedef enum {
    PH_CONN_OPEN,
    PH_CONN_FLUSHING,
    PH_CONN_LINGERING,
    PH_CONN_CLOSED,
} ph_conn_state_t;

typedef struct {
    /* New bytes are in conn->rbuf[conn->rstart .. conn->rlen); consume with ph_conn_consume(). */
    void (*on_read)(ph_conn_t *conn);
    /* Open connections only. err 0: the peer closed its sending side (it may still read: the
     * protocol decides whether to answer first). err < 0: the peer is gone (reset, or a write
     * failed); nothing more can reach it. */
    void (*on_eof)(ph_conn_t *conn, int err);
    /* The write queue fell below the server's high-water mark. */
    void (*on_drain)(ph_conn_t *conn);
    /* The deadline set with ph_conn_set_timeout() passed with no input waiting. */
    void (*on_timeout)(ph_conn_t *conn);
    /* The connection is closing: release streams; no more callbacks but on_free follow. */
    void (*on_close)(ph_conn_t *conn);
    /* The memory goes now (no stack frame of ours is using it any more). */
    void (*on_free)(ph_conn_t *conn);
    /* Graceful shutdown: close at once if idle, else after the exchange in flight. */
    void (*drain)(ph_conn_t *conn);
    /* Shutdown time is up: end what is in flight (an answer if none started, else a reset). */
    void (*expire)(ph_conn_t *conn);
} ph_conn_proto_t;

struct ph_conn_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer;       /* the protocol's deadline; the linger time while lingering */
    uv_timer_t write_timer; /* write progress, while bytes are queued */
    ph_server_t *server;
    ph_conn_t *prev, *next; /* in server->conns */
    const ph_conn_proto_t *proto;
    void *proto_data;
    char *rbuf;
    size_t rstart, rlen, rcap;
    size_t wqueued; /* bytes handed to uv_write and not yet reported written */
    /* While a file goes out (ph_conn_sendfile), it and whatever is written after it wait here
     * in order; squeued counts their bytes. */
    struct ph_seg_s *segs, *segs_tail;
    size_t squeued;
    uint64_t wtotal;       /* bytes ever handed to uv_write */
    uint64_t wseen;        /* of those, written at the last progress check */
    uint64_t wprogress_at; /* loop time (ms) of the last progress seen */
    uint64_t wcheck_at;    /* loop time (ms) of the last progress check */
    uint64_t deadline;     /* loop time (ms) of the protocol's deadline; 0 = none */
    uint64_t armed;        /* when the timer is set to fire */
    uint64_t nwrites;      /* writes handed to the socket (try_write or uv_write) */
    ph_conn_state_t state;
    unsigned reading : 1, paused : 1, eof : 1, linger : 1;
    /* With TLS (server->tls): the session; ready once the handshake is done (until then a
     * stand-in protocol holds the connection); notified once close_notify is queued. */
    struct ph_tls_s *tls;
    unsigned tls_ready : 1, tls_notified : 1;
    int handles_open; /* while closed: handles whose close callback is still to come */
    int is_unix;
    int speaks;      /* PH_PROTO_* it is counted under (ph_conn_speaks), -1: none yet */
    const char *why; /* set by the protocol before it closes: the reason debug lines give */
    struct sockaddr_storage peer, local;
};

/* What the connection speaks from now on (PH_PROTO_*, -1: nothing), for the open-connection
 * counters. */
static inline void ph_conn_speaks(ph_conn_t *conn, int proto)
{
    if (conn->speaks != proto) {
        ph_server_count_proto(conn->server, conn->speaks, proto);
        conn->speaks = proto;
    }
}

/* Takes an accepted stream handle (already uv_accept()ed into conn->h): sets up buffers and the
 * timers, links the connection into the server, starts reading and attaches the protocol
 * (server->on_conn; with TLS after the handshake). 0 or a negative error (then the caller
 * aborts it). */
int ph_conn_start(ph_conn_t *conn);

/* Marks n bytes at rbuf+rstart as consumed. */
void ph_conn_consume(ph_conn_t *conn, size_t n);

/* Pauses / resumes reading from the socket (flow control; the buffer keeps what it has). */
void ph_conn_pause(ph_conn_t *conn);
void ph_conn_resume(ph_conn_t *conn);

/* Writes the buffers in order: synchronously as far as the socket takes them, the rest is
 * copied and queued. 0; PH_ECLOSED when the connection is no longer open (or was aborted
 * because memory ran out half-way); PH_ENOMEM when nothing was written; or a libuv error when
 * the socket failed. */
int ph_conn_write(ph_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs);

/* Queues len bytes of the file fd from offset behind everything written so far; conn owns fd
 * from the call on and closes it when sent or closed. The bytes go out with sendfile(2) while
 * the socket takes them; when it is full, the next piece is read and written as an ordinary
 * queued write, whose completion says there is room again. A file that turns out shorter than
 * len aborts the connection (the response could not be framed). 0, or PH_ECLOSED / PH_ENOMEM
 * (fd closed, nothing queued). */
int ph_conn_sendfile(ph_conn_t *conn, int fd, uint64_t offset, uint64_t len);

/* Bytes queued and not yet written (a file's unsent part included). */
static inline size_t ph_conn_queued(const ph_conn_t *conn)
{
    return conn->wqueued + conn->squeued;
}

/* Sets the protocol's deadline to ms from now; 0 clears it. Cheap enough to call per read:
 * the timer is only re-armed when the deadline moves earlier. */
void ph_conn_set_timeout(ph_conn_t *conn, uint64_t ms);

/* Open -> flushing: what is queued goes out (however long that takes, as long as the peer
 * makes progress), then the connection closes. With linger, the write side is shut down
 * first and input is read and dropped for up to the server's linger time. */
void ph_conn_close(ph_conn_t *conn, int linger);

/* Closes now, dropping anything queued; the peer sees a reset (TCP), so a response cut short
 * can never pass for a complete one. */
void ph_conn_abort(ph_conn_t *conn);

#endif
