#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "tls.h"

typedef struct {
    uv_write_t req;
    ph_conn_t *conn;
    size_t len;
    char data[];
} queued_write_t;

/* A piece of output waiting behind a file: the file itself (fd >= 0), or bytes written after
 * it (fd < 0). */
typedef struct ph_seg_s {
    struct ph_seg_s *next;
    int fd;
    int no_sendfile; /* sendfile refused this file: pieces are read and written instead */
    uint64_t off, len;
    char data[];
} seg_t;

/* Bytes of a file read into a write at a time when the socket is full (small: sendfile takes
 * over again as soon as that write completes), or when sendfile cannot be used. */
#define FILE_PIECE 16384
#define FILE_PIECE_NO_SENDFILE 65536

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_timer(uv_timer_t *t);
static void on_write_timer(uv_timer_t *t);
static void finish(ph_conn_t *conn);
static void uncork(ph_server_t *server);
static void deliver(ph_conn_t *conn);
static void tls_input(ph_conn_t *conn, const char *data, size_t len);
static const ph_conn_proto_t handshake_proto;

/* Reading is on while the connection is open and not paused, and while it closes (input is
 * then dropped), until the peer's FIN. */
static void update_reading(ph_conn_t *conn)
{
    int want = !conn->eof && conn->state != PH_CONN_CLOSED &&
               (conn->state != PH_CONN_OPEN || !conn->paused);
    if (want && !conn->reading) {
        if (uv_read_start(&conn->h.stream, on_alloc, on_read) == 0) {
            conn->reading = 1;
            ph_loop_touch(conn->server->loop);
        }
    } else if (!want && conn->reading) {
        uv_read_stop(&conn->h.stream);
        conn->reading = 0;
    }
}

int ph_conn_start(ph_conn_t *conn)
{
    ph_server_t *server = conn->server;
    conn->rbuf = NULL;
    conn->rstart = conn->rlen = conn->rcap = 0;
    conn->wqueued = 0;
    conn->segs = conn->segs_tail = NULL;
    conn->squeued = 0;
    conn->wtotal = conn->wseen = 0;
    conn->nwrites = 0;
    conn->deadline = conn->armed = 0;
    conn->state = PH_CONN_OPEN;
    conn->reading = conn->paused = conn->eof = conn->linger = 0;
    conn->handles_open = 0;
    conn->h.handle.data = conn;
    uv_timer_init(&server->loop->uv, &conn->timer);
    conn->timer.data = conn;
    uv_timer_init(&server->loop->uv, &conn->write_timer);
    conn->write_timer.data = conn;
    conn->prev = NULL;
    conn->next = server->conns;
    if (server->conns)
        server->conns->prev = conn;
    server->conns = conn;
    server->nconns++;
    ph_server_count_conns(server);
    conn->speaks = -1;
    conn->why = NULL;
    if (server->beat)
        server->beat->m.conns_total++;
    ph_server_debug(server, conn, "connection open");
    if (!conn->is_unix)
        uv_tcp_nodelay(&conn->h.tcp, 1);
    conn->tls = NULL;
    conn->tls_ready = conn->tls_notified = 0;
    if (server->tls) {
        /* The handshake comes first; the protocol is attached when it is done (ALPN). */
        conn->tls = ph_tls_new(server->tls);
        if (conn->tls == NULL)
            return PH_ENOMEM;
        conn->proto = &handshake_proto;
        ph_conn_set_timeout(conn, server->cfg.timeout_request_header_ms);
    }
    int rv = uv_read_start(&conn->h.stream, on_alloc, on_read);
    if (rv < 0)
        return rv;
    conn->reading = 1;
    if (conn->tls == NULL && server->on_conn(server, conn) < 0)
        return PH_EPROTO;
    return 0;
}

/* ---- reading ---- */

/* Room at the end of the read buffer (taken from the pool, compacted or grown as needed). */
static void rbuf_space(ph_conn_t *conn, uv_buf_t *buf)
{
    if (conn->rbuf == NULL) {
        conn->rbuf = ph_pool_get(&conn->server->rbufs, PH_RBUF_SIZE);
        conn->rcap = conn->rbuf ? PH_RBUF_SIZE : 0;
    }
    if (conn->rstart == conn->rlen) {
        conn->rstart = conn->rlen = 0;
    } else if (conn->rlen == conn->rcap && conn->rstart > 0) {
        memmove(conn->rbuf, conn->rbuf + conn->rstart, conn->rlen - conn->rstart);
        conn->rlen -= conn->rstart;
        conn->rstart = 0;
    }
    if (conn->rlen == conn->rcap && conn->rcap > 0) {
        /* Full of unconsumed bytes: grow; the protocol bounds what it leaves unconsumed. */
        size_t ncap = conn->rcap * 2;
        char *nb = realloc(conn->rbuf, ncap);
        if (nb) {
            conn->rbuf = nb;
            conn->rcap = ncap;
        }
    }
    buf->base = conn->rbuf ? conn->rbuf + conn->rlen : NULL;
    buf->len = conn->rbuf ? conn->rcap - conn->rlen : 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ph_conn_t *conn = h->data;
    if (conn->tls == NULL) {
        rbuf_space(conn, buf);
        return;
    }
    /* Ciphertext: decrypted into the read buffer as soon as it is read, so every connection
     * of the server reads into the same one. */
    ph_server_t *server = conn->server;
    if (server->tls_in == NULL)
        server->tls_in = malloc(PH_RBUF_SIZE);
    buf->base = server->tls_in;
    buf->len = server->tls_in ? PH_RBUF_SIZE : 0;
}

static void release_rbuf(ph_conn_t *conn)
{
    if (conn->rcap == PH_RBUF_SIZE)
        ph_pool_put(&conn->server->rbufs, conn->rbuf);
    else
        free(conn->rbuf);
    conn->rbuf = NULL;
    conn->rcap = 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    ph_conn_t *conn = s->data;
    if (nread == 0 || conn->state == PH_CONN_CLOSED)
        return;
    if (nread > 0)
        ph_server_count_bytes(conn->server, (uint64_t)nread, 0);
    if (nread < 0) {
        conn->eof = 1;
        update_reading(conn);
        int err = nread == UV_EOF ? 0 : (int)nread;
        if (conn->state == PH_CONN_OPEN)
            conn->proto->on_eof(conn, err);
        else if (err < 0 || conn->state == PH_CONN_LINGERING)
            finish(conn); /* gone, or the FIN we lingered for */
        /* flushing and the peer only half-closed: it may still be reading, so flush on */
        return;
    }
    if (conn->state != PH_CONN_OPEN) {
        /* Closing: input after our last response is read and dropped. */
        if (conn->tls == NULL)
            conn->rstart = conn->rlen = 0;
        return;
    }
    if (conn->tls) {
        tls_input(conn, buf->base, (size_t)nread);
        return;
    }
    conn->rlen += (size_t)nread;
    deliver(conn);
}

/* New bytes are in the read buffer: the protocol takes them, its answers gathered in the cork. */
static void deliver(ph_conn_t *conn)
{
    ph_server_t *server = conn->server;
    int cork = server->corked == NULL &&
               (server->cork != NULL || (server->cork = malloc(PH_CORK_SIZE)) != NULL);
    if (cork)
        server->corked = conn;
    conn->proto->on_read(conn);
    if (cork && server->corked == conn)
        uncork(server);
}

/* Reads what the socket holds right now, outside libuv's poll: a deadline that expired while
 * the loop was busy must not win over input that arrived in time. 1 if something was read
 * (or the peer closed), 0 if nothing was waiting. */
static int read_waiting(ph_conn_t *conn)
{
    uv_os_fd_t fd;
    if (!conn->reading || uv_fileno(&conn->h.handle, &fd) < 0)
        return 0;
    uv_buf_t buf;
    on_alloc(&conn->h.handle, 0, &buf);
    if (buf.base == NULL || buf.len == 0)
        return 0;
    ssize_t n;
    do
        n = read(fd, buf.base, buf.len);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (conn->rstart == conn->rlen && conn->rbuf)
            release_rbuf(conn);
        return 0;
    }
    on_read(&conn->h.stream, n > 0 ? n : (n == 0 ? UV_EOF : -errno), &buf);
    return 1;
}

void ph_conn_consume(ph_conn_t *conn, size_t n)
{
    conn->rstart += n;
    if (conn->rstart == conn->rlen) {
        /* Nothing buffered: the buffer goes back to the pool until the next read. */
        conn->rstart = conn->rlen = 0;
        release_rbuf(conn);
    }
}

void ph_conn_pause(ph_conn_t *conn)
{
    conn->paused = 1;
    update_reading(conn);
}

void ph_conn_resume(ph_conn_t *conn)
{
    conn->paused = 0;
    update_reading(conn);
}

/* ---- writing ---- */

/* Progress is what libuv has written of our queued bytes: its write queue size falls with
 * every partial write, not only when a whole write request completes. */
static uint64_t written(ph_conn_t *conn)
{
    return conn->wtotal - uv_stream_get_write_queue_size(&conn->h.stream);
}

static uint64_t write_check_ms(const ph_conn_t *conn)
{
    uint64_t ms = conn->server->cfg.timeout_write_ms / 4;
    return ms ? ms : 1;
}

static void pump(ph_conn_t *conn);

/* A write failed: the peer is gone. Reading will report it too, but a paused reader would not. */
static void peer_gone(ph_conn_t *conn, int err)
{
    conn->eof = 1;
    update_reading(conn);
    if (conn->state == PH_CONN_OPEN)
        conn->proto->on_eof(conn, err);
    else
        finish(conn);
}

static void on_written(uv_write_t *req, int status)
{
    queued_write_t *w = (queued_write_t *)req;
    ph_conn_t *conn = w->conn;
    size_t before = ph_conn_queued(conn);
    conn->wqueued -= w->len;
    free(w);
    if (conn->state == PH_CONN_CLOSED)
        return;
    if (status < 0) {
        peer_gone(conn, status);
        return;
    }
    if (conn->wqueued == 0 && conn->segs) {
        pump(conn); /* the socket took everything: a file waiting goes on */
        if (conn->state == PH_CONN_CLOSED)
            return;
    }
    if (conn->wqueued == 0)
        uv_timer_stop(&conn->write_timer);
    if (conn->state == PH_CONN_FLUSHING) {
        if (conn->wqueued == 0 && conn->segs == NULL)
            ph_conn_close(conn, conn->linger); /* flushed: on to lingering or closed */
        return;
    }
    size_t hw = conn->server->cfg.write_high_water;
    if (before > hw && ph_conn_queued(conn) <= hw)
        conn->proto->on_drain(conn);
}

static int write_now(ph_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs, size_t total)
{
    size_t done = 0;
    conn->nwrites++;
    ph_server_count_bytes(conn->server, 0, total);
    if (conn->wqueued == 0) {
        int n = uv_try_write(&conn->h.stream, bufs, nbufs);
        if (n < 0 && n != UV_EAGAIN && n != UV_ENOSYS)
            return n;
        if (n > 0)
            done = (size_t)n;
        if (done == total)
            return 0;
    }
    /* The socket is full: copy what is left so the caller's buffers are free at once. */
    size_t rest = total - done;
    queued_write_t *w = malloc(sizeof(*w) + rest);
    if (w == NULL) {
        if (done == 0)
            return PH_ENOMEM; /* nothing went out: the caller may still answer otherwise */
        ph_conn_abort(conn);  /* part went out: what follows could never be framed right */
        return PH_ECLOSED;
    }
    size_t off = 0, skip = done;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(w->data + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    w->conn = conn;
    w->len = rest;
    uv_buf_t b;
    b.base = w->data; /* not uv_buf_init(): its length is an unsigned int */
    b.len = rest;
    int rv = uv_write(&w->req, &conn->h.stream, &b, 1, on_written);
    if (rv < 0) {
        free(w);
        return rv;
    }
    if (conn->wqueued == 0 && conn->server->cfg.timeout_write_ms) {
        uint64_t now = uv_now(&conn->server->loop->uv);
        conn->wseen = written(conn);
        conn->wprogress_at = conn->wcheck_at = now;
        uv_timer_start(&conn->write_timer, on_write_timer, write_check_ms(conn),
                       write_check_ms(conn));
    }
    conn->wqueued += rest;
    conn->wtotal += rest;
    ph_loop_touch(conn->server->loop);
    return 0;
}

/* The TLS records the session made (handshake, data, alerts, close_notify) go out. 0, or a
 * negative error from the socket. */
static int tls_flush(ph_conn_t *conn)
{
    const char *p;
    size_t n = ph_tls_output(conn->tls, &p);
    if (n == 0)
        return 0;
    uv_buf_t b = {.base = (char *)p, .len = n};
    int rv = write_now(conn, &b, 1, n);
    ph_tls_output_done(conn->tls);
    return rv;
}

/* Bytes of the protocol's stream to the socket: as they are, or as TLS records. A TLS
 * failure here leaves the session unusable (records lost), so it aborts the connection. */
static int transport_write(ph_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs, size_t total)
{
    if (conn->tls == NULL)
        return write_now(conn, bufs, nbufs, total);
    int rv = 0;
    if (nbufs > 1 && total <= PH_CORK_SIZE) {
        /* One record for a head and its body, not one per buffer. */
        char gather[PH_CORK_SIZE];
        size_t off = 0;
        for (unsigned i = 0; i < nbufs; i++) {
            memcpy(gather + off, bufs[i].base, bufs[i].len);
            off += bufs[i].len;
        }
        rv = ph_tls_write(conn->tls, gather, total);
    } else {
        for (unsigned i = 0; i < nbufs && rv == 0; i++)
            rv = ph_tls_write(conn->tls, bufs[i].base, bufs[i].len);
    }
    if (rv == 0)
        rv = tls_flush(conn);
    if (rv < 0) {
        ph_tls_output_done(conn->tls);
        ph_conn_abort(conn);
        return PH_ECLOSED;
    }
    return 0;
}

/* What conn gathered in the cork goes out now, in one write. A write that fails here fails
 * after the protocol was told it worked: the peer is gone (or memory is), so the connection
 * ends with a reset. 0, or PH_ECLOSED when it did. */
static int flush_cork(ph_conn_t *conn)
{
    ph_server_t *server = conn->server;
    size_t len = server->cork_len;
    server->cork_len = 0;
    if (len == 0 || conn->state != PH_CONN_OPEN)
        return 0;
    uv_buf_t b = {.base = server->cork, .len = len};
    if (transport_write(conn, &b, 1, len) < 0) {
        ph_conn_abort(conn);
        return PH_ECLOSED;
    }
    return 0;
}

/* The corked connection's gathered bytes go out, and nothing is corked any more. */
static void uncork(ph_server_t *server)
{
    ph_conn_t *conn = server->corked;
    server->corked = NULL;
    if (conn)
        flush_cork(conn);
    server->cork_len = 0;
}

int ph_conn_write(ph_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs)
{
    if (conn->state != PH_CONN_OPEN)
        return PH_ECLOSED;
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    if (conn->segs) {
        /* A file is going out: this waits behind it. */
        seg_t *sg = malloc(sizeof(*sg) + total);
        if (sg == NULL)
            return PH_ENOMEM;
        sg->next = NULL;
        sg->fd = -1;
        sg->no_sendfile = 0;
        sg->off = 0;
        sg->len = total;
        size_t off = 0;
        for (unsigned i = 0; i < nbufs; i++) {
            memcpy(sg->data + off, bufs[i].base, bufs[i].len);
            off += bufs[i].len;
        }
        conn->segs_tail->next = sg;
        conn->segs_tail = sg;
        conn->squeued += total;
        return 0;
    }
    ph_server_t *server = conn->server;
    if (server->corked == conn) {
        if (server->cork_len + total <= PH_CORK_SIZE) {
            for (unsigned i = 0; i < nbufs; i++) {
                memcpy(server->cork + server->cork_len, bufs[i].base, bufs[i].len);
                server->cork_len += bufs[i].len;
            }
            return 0;
        }
        /* Too big to gather: what is gathered goes first, then this, and gathering goes on. */
        if (flush_cork(conn) < 0)
            return PH_ECLOSED;
    }
    return transport_write(conn, bufs, nbufs, total);
}

/* ---- files ---- */

static void seg_pop(ph_conn_t *conn)
{
    seg_t *sg = conn->segs;
    conn->segs = sg->next;
    if (conn->segs == NULL)
        conn->segs_tail = NULL;
    if (sg->fd >= 0)
        close(sg->fd);
    free(sg);
}

static void segs_free(ph_conn_t *conn)
{
    while (conn->segs)
        seg_pop(conn);
    conn->squeued = 0;
}

/* Sends what waits in conn->segs while libuv's queue is empty: files with sendfile until the
 * socket is full, then one piece as a queued write (its completion brings us back here). */
static void pump(ph_conn_t *conn)
{
    uv_os_fd_t sock;
    if (uv_fileno(&conn->h.handle, &sock) < 0) {
        ph_conn_abort(conn);
        return;
    }
    while (conn->segs && conn->wqueued == 0 && conn->state != PH_CONN_CLOSED) {
        seg_t *sg = conn->segs;
        if (sg->fd < 0) {
            uv_buf_t b = {.base = sg->data, .len = sg->len};
            conn->squeued -= sg->len;
            conn->segs = sg->next; /* off the list first: write_now must not queue behind it */
            if (conn->segs == NULL)
                conn->segs_tail = NULL;
            int rv = transport_write(conn, &b, 1, sg->len);
            free(sg);
            if (rv < 0) {
                ph_conn_abort(conn);
                return;
            }
            continue;
        }
        if (sg->len == 0) {
            seg_pop(conn);
            continue;
        }
        if (!sg->no_sendfile) {
            off_t off = (off_t)sg->off;
            size_t want = sg->len > (1u << 30) ? (1u << 30) : (size_t)sg->len;
            ssize_t n = sendfile(sock, sg->fd, &off, want);
            if (n > 0) {
                sg->off += (uint64_t)n;
                sg->len -= (uint64_t)n;
                conn->squeued -= (size_t)n;
                conn->wtotal += (uint64_t)n; /* progress, for the write timeout */
                conn->nwrites++;
                ph_server_count_bytes(conn->server, 0, (uint64_t)n);
                continue;
            }
            if (n == 0) {
                ph_conn_abort(conn); /* the file is shorter than the response said */
                return;
            }
            if (errno == EINTR)
                continue;
            if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
                sg->no_sendfile = 1;
            else if (errno != EAGAIN) {
                peer_gone(conn, -errno);
                return;
            }
        }
        /* The socket is full (or sendfile cannot serve this file): one piece goes as a write. */
        size_t piece = sg->no_sendfile ? FILE_PIECE_NO_SENDFILE : FILE_PIECE;
        if (piece > sg->len)
            piece = (size_t)sg->len;
        char *buf = malloc(piece);
        ssize_t got = buf ? pread(sg->fd, buf, piece, (off_t)sg->off) : -1;
        if (got <= 0) {
            free(buf);
            ph_conn_abort(conn); /* unreadable, or shorter than the response said */
            return;
        }
        sg->off += (uint64_t)got;
        sg->len -= (uint64_t)got;
        conn->squeued -= (size_t)got;
        uv_buf_t b = {.base = buf, .len = (size_t)got};
        int rv = transport_write(conn, &b, 1, (size_t)got);
        free(buf);
        if (rv < 0) {
            ph_conn_abort(conn);
            return;
        }
    }
}

int ph_conn_sendfile(ph_conn_t *conn, int fd, uint64_t offset, uint64_t len)
{
    if (conn->state != PH_CONN_OPEN) {
        close(fd);
        return PH_ECLOSED;
    }
    ph_server_t *server = conn->server;
    if (server->corked == conn && flush_cork(conn) < 0) { /* the head goes first */
        close(fd);
        return PH_ECLOSED;
    }
    seg_t *sg = malloc(sizeof(*sg));
    if (sg == NULL) {
        close(fd);
        return PH_ENOMEM;
    }
    sg->next = NULL;
    sg->fd = fd;
    sg->no_sendfile = conn->tls != NULL; /* the kernel cannot encrypt it (no kTLS) */
    sg->off = offset;
    sg->len = len;
    if (conn->segs_tail)
        conn->segs_tail->next = sg;
    else
        conn->segs = sg;
    conn->segs_tail = sg;
    conn->squeued += len;
    if (conn->wqueued == 0 && conn->segs == sg)
        pump(conn);
    return 0;
}

/* Every quarter of the write timeout: did libuv write anything of the queue since? A peer that
 * takes nothing for the whole timeout is dropped; one that reads slowly but steadily is not. */
static void on_write_timer(uv_timer_t *t)
{
    ph_conn_t *conn = t->data;
    if (conn->state == PH_CONN_CLOSED)
        return;
    uint64_t now = uv_now(&conn->server->loop->uv);
    uint64_t w = written(conn);
    if (w != conn->wseen) {
        conn->wseen = w;
        conn->wprogress_at = now;
    } else if (now - conn->wcheck_at > 2 * write_check_ms(conn)) {
        /* This check is late: the loop itself was stalled and libuv could not write. */
        conn->wprogress_at = now;
    }
    conn->wcheck_at = now;
    if (now - conn->wprogress_at >= conn->server->cfg.timeout_write_ms)
        ph_conn_abort(conn); /* the peer stopped reading: do not keep its bytes forever */
}

/* ---- deadlines ---- */

void ph_conn_set_timeout(ph_conn_t *conn, uint64_t ms)
{
    if (conn->state != PH_CONN_OPEN)
        return;
    if (ms == 0) {
        conn->deadline = 0; /* an armed timer fires and finds nothing due */
        return;
    }
    ph_loop_t *loop = conn->server->loop;
    if (!loop->in_tick)
        uv_update_time(&loop->uv); /* called from app code: the loop's clock may be stale */
    conn->deadline = uv_now(&loop->uv) + ms;
    if (!uv_is_active((uv_handle_t *)&conn->timer) || conn->armed > conn->deadline) {
        uv_timer_start(&conn->timer, on_timer, ms, 0);
        conn->armed = conn->deadline;
        ph_loop_touch(loop);
    }
}

static void on_timer(uv_timer_t *t)
{
    ph_conn_t *conn = t->data;
    if (conn->state == PH_CONN_LINGERING) {
        finish(conn); /* the peer never sent its FIN */
        return;
    }
    if (conn->state != PH_CONN_OPEN || conn->deadline == 0)
        return;
    uint64_t now = uv_now(&conn->server->loop->uv);
    if (now < conn->deadline) {
        uv_timer_start(&conn->timer, on_timer, conn->deadline - now, 0);
        conn->armed = conn->deadline;
        return;
    }
    /* Input that is already waiting wins over a deadline that passed at the same time (the
     * loop may have been busy): the protocol sees it first and moves its deadline. */
    while (read_waiting(conn)) {
        if (conn->state != PH_CONN_OPEN || conn->deadline == 0)
            return;
        if (now < conn->deadline) {
            uv_timer_start(&conn->timer, on_timer, conn->deadline - now, 0);
            conn->armed = conn->deadline;
            return;
        }
    }
    conn->deadline = 0;
    conn->proto->on_timeout(conn);
}

/* ---- closing ---- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    ph_conn_t *conn = req->data;
    free(req);
    if (conn->state == PH_CONN_LINGERING && conn->eof)
        finish(conn);
}

void ph_conn_close(ph_conn_t *conn, int linger)
{
    if (conn->state == PH_CONN_OPEN && conn->server->corked == conn)
        uncork(conn->server); /* what was gathered goes before the FIN */
    if (conn->state == PH_CONN_OPEN) {
        conn->state = PH_CONN_FLUSHING;
        conn->linger = linger != 0;
        conn->deadline = 0;
        uv_timer_stop(&conn->timer);
        update_reading(conn); /* read and drop what the peer still sends */
        ph_loop_touch(conn->server->loop);
    }
    if (conn->state != PH_CONN_FLUSHING || conn->wqueued > 0 || conn->segs)
        return; /* on_written() comes back here when the queue is empty */
    if (conn->tls && conn->tls_ready && !conn->tls_notified) {
        /* A clean close says so (close_notify), after everything else. */
        conn->tls_notified = 1;
        ph_tls_shutdown(conn->tls);
        if (tls_flush(conn) < 0) {
            finish(conn);
            return;
        }
        if (conn->wqueued > 0)
            return;
    }
    if (conn->linger && !conn->eof) {
        /* Send our FIN, keep reading (and dropping) until the peer's FIN or the linger time. */
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (req) {
            req->data = conn;
            if (uv_shutdown(req, &conn->h.stream, on_shutdown) == 0) {
                conn->state = PH_CONN_LINGERING;
                uv_timer_start(&conn->timer, on_timer, conn->server->cfg.linger_ms, 0);
                ph_loop_touch(conn->server->loop);
                return;
            }
            free(req);
        }
    }
    finish(conn);
}

static void on_handle_closed(uv_handle_t *h)
{
    ph_conn_t *conn = h->data;
    /* Three handles close; the connection goes with the last. */
    if (--conn->handles_open > 0)
        return;
    if (conn->proto && conn->proto->on_free)
        conn->proto->on_free(conn);
    release_rbuf(conn);
    ph_tls_free(conn->tls);
    free(conn);
}

/* -> closed: unlinks the connection, tells the protocol, closes the handles. */
static void finish(ph_conn_t *conn)
{
    if (conn->state == PH_CONN_CLOSED)
        return;
    conn->state = PH_CONN_CLOSED;
    ph_server_t *server = conn->server;
    if (server->corked == conn) { /* gone: what it gathered goes nowhere */
        server->corked = NULL;
        server->cork_len = 0;
    }
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        server->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    server->nconns--;
    ph_server_count_conns(server);
    ph_conn_speaks(conn, -1);
    if (server->debug) {
        const char *why = conn->why ? conn->why : conn->eof ? "client closed" : "closed";
        char line[96];
        snprintf(line, sizeof(line), "connection closed (%s)", why);
        server->debug(server, conn, line);
    }
    segs_free(conn);
    if (conn->proto)
        conn->proto->on_close(conn);
    conn->handles_open = 3;
    uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
    uv_close((uv_handle_t *)&conn->write_timer, on_handle_closed);
    uv_close(&conn->h.handle, on_handle_closed);
    ph_loop_touch(server->loop);
}

void ph_conn_abort(ph_conn_t *conn)
{
    if (conn->state == PH_CONN_CLOSED)
        return;
    if (conn->state == PH_CONN_OPEN && conn->server->corked == conn)
        uncork(conn->server); /* what was written goes out before the reset, as it would have */
    if (!conn->is_unix) {
        /* SO_LINGER 0: a reset instead of a FIN, also after the peer's own FIN, so the peer
         * cannot take a cut-off body (close-delimited above all) for a whole one. */
        uv_os_fd_t fd;
        if (uv_fileno(&conn->h.handle, &fd) == 0) {
            struct linger l = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        }
    }
    finish(conn);
}

/* ---- TLS ---- */

static void debug(ph_conn_t *conn, const char *what)
{
    ph_server_debug(conn->server, conn, what);
}

/* The handshake failed: the alert (if any) goes out and the connection closes. A client that
 * spoke plain HTTP gets a plain answer it can read. */
static void handshake_failed(ph_conn_t *conn)
{
    char line[256];
    snprintf(line, sizeof(line), "TLS handshake failed: %s", ph_tls_error(conn->tls));
    debug(conn, line);
    if (conn->state != PH_CONN_OPEN)
        return;
    if (ph_tls_plain_http(conn->tls)) {
        static const char plain[] = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"
                                    "content-type: text/plain; charset=utf-8\r\n"
                                    "content-length: 36\r\n\r\n"
                                    "This port expects HTTPS, not HTTP.\r\n";
        uv_buf_t b = {.base = (char *)plain, .len = sizeof(plain) - 1};
        if (write_now(conn, &b, 1, b.len) < 0) {
            ph_conn_abort(conn);
            return;
        }
    }
    ph_conn_close(conn, 1);
}

static void tls_input(ph_conn_t *conn, const char *data, size_t len)
{
    ph_tls_feed(conn->tls, data, len);
    if (!conn->tls_ready) {
        int rv = ph_tls_handshake(conn->tls);
        if (tls_flush(conn) < 0) {
            ph_conn_abort(conn);
            return;
        }
        if (rv < 0) {
            handshake_failed(conn);
            return;
        }
        if (rv == 0)
            return;
        /* Done: the protocol ALPN chose takes over, with its own deadlines. */
        conn->tls_ready = 1;
        conn->deadline = 0;
        conn->proto = NULL;
        if (conn->server->on_conn(conn->server, conn) < 0) {
            ph_conn_abort(conn);
            return;
        }
        if (conn->state != PH_CONN_OPEN)
            return;
    }
    int closed = 0;
    size_t before = conn->rlen - conn->rstart;
    for (;;) {
        uv_buf_t b;
        rbuf_space(conn, &b);
        if (b.len == 0) {
            ph_conn_abort(conn); /* out of memory */
            return;
        }
        ssize_t n = ph_tls_read(conn->tls, b.base, b.len);
        if (n > 0) {
            conn->rlen += (size_t)n;
            continue;
        }
        if (n == PH_TLS_CLOSED)
            closed = 1;
        else if (n < 0) {
            char line[256];
            snprintf(line, sizeof(line), "TLS: %s", ph_tls_error(conn->tls));
            debug(conn, line);
            tls_flush(conn); /* the alert, if the socket takes it */
            conn->eof = 1;
            update_reading(conn);
            conn->proto->on_eof(conn, PH_EPROTO); /* nothing more can be read from it */
            return;
        }
        break;
    }
    if (tls_flush(conn) < 0) { /* what reading made: tickets, a KeyUpdate's answer */
        ph_conn_abort(conn);
        return;
    }
    /* Only new plaintext goes up (a record may carry none: a ticket, a KeyUpdate). */
    if (conn->rlen - conn->rstart > before)
        deliver(conn);
    else if (conn->rbuf && conn->rstart == conn->rlen)
        ph_conn_consume(conn, 0); /* nothing buffered: the buffer goes back to the pool */
    if (closed && conn->state == PH_CONN_OPEN && !conn->eof) {
        conn->eof = 1;
        update_reading(conn);
        conn->proto->on_eof(conn, 0); /* close_notify: the peer sends no more */
    }
}

/* While the handshake runs, no protocol is attached yet; this stands in for one. */
static void hs_on_read(ph_conn_t *conn)
{
    (void)conn; /* input goes to tls_input() until the handshake is done */
}

static void hs_on_eof(ph_conn_t *conn, int err)
{
    (void)err;
    debug(conn, "TLS handshake: the client closed the connection");
    ph_conn_close(conn, 0);
}

static void hs_on_drain(ph_conn_t *conn)
{
    (void)conn;
}

static void hs_on_timeout(ph_conn_t *conn)
{
    debug(conn, "TLS handshake: timed out");
    ph_conn_abort(conn);
}

static void hs_on_close(ph_conn_t *conn)
{
    (void)conn;
}

static void hs_drain(ph_conn_t *conn)
{
    /* A client in its handshake is about to send a request: let the handshake finish (the
     * protocol then drains as it starts: HTTP/1.1 answers one request with a close), within
     * PH_DRAIN_IDLE_MS at most. */
    uint64_t t = conn->server->cfg.timeout_request_header_ms;
    ph_conn_set_timeout(conn, t && t < PH_DRAIN_IDLE_MS ? t : PH_DRAIN_IDLE_MS);
}

static const ph_conn_proto_t handshake_proto = {
    .on_read = hs_on_read,
    .on_eof = hs_on_eof,
    .on_drain = hs_on_drain,
    .on_timeout = hs_on_timeout,
    .on_close = hs_on_close,
    .drain = hs_drain,
    .expire = ph_conn_abort,
};
