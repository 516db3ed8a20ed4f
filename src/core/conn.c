#include "conn.h"

#include <stdlib.h>
#include <string.h>

#define LINGER_MS 2000

typedef struct {
    uv_write_t req;
    ph_conn_t *conn;
    size_t len;
    char data[];
} queued_write_t;

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_timer(uv_timer_t *t);
static void on_write_timer(uv_timer_t *t);
static void close_now(ph_conn_t *conn);

int ph_conn_start(ph_conn_t *conn)
{
    ph_server_t *server = conn->server;
    conn->rbuf = NULL;
    conn->rstart = conn->rlen = conn->rcap = 0;
    conn->wqueued = 0;
    conn->reading = conn->eof = conn->closing = conn->shutting = 0;
    conn->close_after_flush = conn->linger = 0;
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
    if (!conn->is_unix)
        uv_tcp_nodelay(&conn->h.tcp, 1);
    int rv = uv_read_start(&conn->h.stream, on_alloc, on_read);
    if (rv < 0)
        return rv;
    conn->reading = 1;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ph_conn_t *conn = h->data;
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

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    ph_conn_t *conn = s->data;
    if (nread == 0 || conn->closing)
        return;
    if (nread < 0) {
        conn->eof = 1;
        uv_read_stop(s);
        conn->reading = 0;
        if (conn->shutting || conn->close_after_flush) {
            close_now(conn);
            return;
        }
        conn->proto->on_eof(conn, nread == UV_EOF ? 0 : (int)nread);
        return;
    }
    if (conn->shutting || conn->close_after_flush) {
        /* Lingering: input after our last response is read and dropped. */
        conn->rstart = conn->rlen = 0;
        return;
    }
    conn->rlen += (size_t)nread;
    conn->proto->on_read(conn);
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
    if (conn->reading && !conn->shutting && !conn->close_after_flush) {
        uv_read_stop(&conn->h.stream);
        conn->reading = 0;
    }
}

void ph_conn_resume(ph_conn_t *conn)
{
    if (!conn->reading && !conn->eof && !conn->closing) {
        if (uv_read_start(&conn->h.stream, on_alloc, on_read) == 0)
            conn->reading = 1;
        ph_loop_touch(conn->server->loop);
    }
}

static void on_written(uv_write_t *req, int status)
{
    queued_write_t *w = (queued_write_t *)req;
    ph_conn_t *conn = w->conn;
    size_t before = conn->wqueued;
    conn->wqueued -= w->len;
    free(w);
    if (conn->closing)
        return;
    if (status < 0) {
        /* The peer is gone; reading will report it too, but a paused reader would not. */
        if (!conn->close_after_flush && !conn->shutting)
            conn->proto->on_eof(conn, status);
        else
            close_now(conn);
        return;
    }
    if (conn->wqueued == 0)
        uv_timer_stop(&conn->write_timer);
    else if (conn->server->cfg.timeout_write_ms)
        uv_timer_again(&conn->write_timer);
    if (conn->close_after_flush && conn->wqueued == 0) {
        close_now(conn);
        return;
    }
    size_t hw = conn->server->cfg.write_high_water;
    if (before > hw && conn->wqueued <= hw && !conn->close_after_flush)
        conn->proto->on_drain(conn);
}

int ph_conn_write(ph_conn_t *conn, const uv_buf_t *bufs, unsigned nbufs)
{
    if (conn->closing || conn->shutting || conn->close_after_flush)
        return PH_ECLOSED;
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    size_t done = 0;
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
    if (w == NULL)
        return PH_ENOMEM;
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
    uv_buf_t b = uv_buf_init(w->data, (unsigned)rest);
    int rv = uv_write(&w->req, &conn->h.stream, &b, 1, on_written);
    if (rv < 0) {
        free(w);
        return rv;
    }
    if (conn->wqueued == 0 && conn->server->cfg.timeout_write_ms)
        uv_timer_start(&conn->write_timer, on_write_timer, conn->server->cfg.timeout_write_ms,
                       conn->server->cfg.timeout_write_ms);
    conn->wqueued += rest;
    ph_loop_touch(conn->server->loop);
    return 0;
}

void ph_conn_set_timeout(ph_conn_t *conn, uint64_t ms)
{
    if (conn->closing)
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
    if (conn->closing)
        return;
    if (conn->shutting || conn->close_after_flush) {
        close_now(conn); /* linger or flush took too long */
        return;
    }
    if (conn->deadline == 0)
        return;
    uint64_t now = uv_now(&conn->server->loop->uv);
    if (now < conn->deadline) {
        uv_timer_start(&conn->timer, on_timer, conn->deadline - now, 0);
        conn->armed = conn->deadline;
        return;
    }
    conn->deadline = 0;
    conn->proto->on_timeout(conn);
}

static void on_write_timer(uv_timer_t *t)
{
    /* The peer stopped reading: drop it rather than keep its queued bytes forever. */
    ph_conn_abort(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    ph_conn_t *conn = req->data;
    free(req);
    if (conn->closing)
        return;
    if (conn->eof)
        close_now(conn);
    /* else keep dropping input until EOF or the linger timer */
}

void ph_conn_close(ph_conn_t *conn, int linger)
{
    if (conn->closing || conn->shutting || conn->close_after_flush)
        return;
    conn->close_after_flush = 1;
    conn->linger = linger && !conn->eof;
    if (conn->linger && !conn->reading && !conn->eof) {
        if (uv_read_start(&conn->h.stream, on_alloc, on_read) == 0)
            conn->reading = 1;
    }
    uv_timer_start(&conn->timer, on_timer, LINGER_MS, 0);
    if (conn->wqueued == 0)
        close_now(conn);
    ph_loop_touch(conn->server->loop);
}

static void on_handle_closed(uv_handle_t *h)
{
    ph_conn_t *conn = h->data;
    /* Three handles close; the connection goes with the last. */
    if (--conn->closing > 0)
        return;
    if (conn->proto && conn->proto->on_free)
        conn->proto->on_free(conn);
    release_rbuf(conn);
    free(conn);
}

static void close_now(ph_conn_t *conn)
{
    if (conn->closing)
        return;
    if (conn->linger && !conn->shutting && !conn->eof) {
        /* Send FIN, keep reading (and dropping) until the peer closes or the timer fires. */
        uv_shutdown_t *req = malloc(sizeof(*req));
        if (req) {
            req->data = conn;
            if (uv_shutdown(req, &conn->h.stream, on_shutdown) == 0) {
                conn->shutting = 1;
                conn->close_after_flush = 0;
                uv_timer_start(&conn->timer, on_timer, LINGER_MS, 0);
                ph_loop_touch(conn->server->loop);
                return;
            }
            free(req);
        }
    }
    ph_server_t *server = conn->server;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        server->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    server->nconns--;
    if (conn->proto)
        conn->proto->on_close(conn);
    conn->closing = 3;
    uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
    uv_close((uv_handle_t *)&conn->write_timer, on_handle_closed);
    uv_close(&conn->h.handle, on_handle_closed);
    ph_loop_touch(server->loop);
}

void ph_conn_abort(ph_conn_t *conn)
{
    if (conn->closing)
        return;
    conn->linger = 0;
    conn->shutting = 0;
    if (!conn->is_unix && !conn->eof) {
        /* SO_LINGER 0: reset instead of a FIN, so the peer cannot take a cut-off body as whole. */
        uv_os_fd_t fd;
        if (uv_fileno(&conn->h.handle, &fd) == 0) {
            struct linger l = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        }
    }
    close_now(conn);
}
