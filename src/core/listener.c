#include "listener.h"

#include <stdlib.h>
#include <sys/un.h>
#include <unistd.h>

/* Takes the connection libuv accepted (uv_accept) and starts it. */
static void take(ph_listener_t *l)
{
    ph_server_t *server = l->server;
    uv_stream_t *s = &l->h.stream;
    ph_conn_t *conn = calloc(1, sizeof(*conn));
    if (conn == NULL)
        return;
    conn->server = server;
    conn->is_unix = l->is_unix;
    int rv = l->is_unix ? uv_pipe_init(&server->loop->uv, &conn->h.pipe, 0)
                        : uv_tcp_init(&server->loop->uv, &conn->h.tcp);
    if (rv < 0) {
        free(conn);
        return;
    }
    conn->h.handle.data = conn;
    if (uv_accept(s, &conn->h.stream) < 0) {
        uv_close(&conn->h.handle, (uv_close_cb)free);
        return;
    }
    if (!l->is_unix) {
        int len = sizeof(conn->peer);
        uv_tcp_getpeername(&conn->h.tcp, (struct sockaddr *)&conn->peer, &len);
        len = sizeof(conn->local);
        uv_tcp_getsockname(&conn->h.tcp, (struct sockaddr *)&conn->local, &len);
    } else {
        conn->peer.ss_family = AF_UNIX;
        struct sockaddr_un *u = (struct sockaddr_un *)&conn->local;
        u->sun_family = AF_UNIX;
        size_t n = sizeof(u->sun_path) - 1; /* the listener's path, for scope["server"] */
        if (uv_pipe_getsockname(&conn->h.pipe, u->sun_path, &n) < 0)
            n = 0;
        u->sun_path[n] = '\0';
    }
    size_t max = server->cfg.limit_max_connections;
    if (max && server->nconns >= max) {
        /* Over the limit: a last answer from a static buffer (in cleartext only: a TLS client
         * could not read it), then the socket goes at once. */
        static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n"
                                   "content-length: 0\r\n\r\n";
        uv_buf_t b = {.base = (char *)busy, .len = sizeof(busy) - 1};
        if (server->tls == NULL)
            uv_try_write(&conn->h.stream, &b, 1);
        ph_exchange_t x = {
            .status = 503, .end = PH_END_REJECTED, .version = 11, .reject = PH_REJECT_CONNECTIONS};
        ph_server_reject(server, &conn->peer, &x);
        uv_close(&conn->h.handle, (uv_close_cb)free);
        return;
    }
    if (ph_conn_start(conn) < 0)
        ph_conn_abort(conn);
}

static void on_pause_end(uv_timer_t *t)
{
    ph_listener_t *l = t->data;
    l->paused = 0;
    if (l->held) {
        l->held = 0;
        take(l); /* libuv polls the socket again from here */
    }
}

static void on_connection(uv_stream_t *s, int status)
{
    ph_listener_t *l = s->data;
    ph_server_t *server = l->server;
    if (status < 0 || server->draining)
        return;
    if (l->paused) {
        l->held = 1; /* not taken: libuv keeps it and stops accepting until it is */
        return;
    }
    take(l);
    if (l->has_timer && ph_server_over_share(server)) {
        l->paused = 1;
        uv_timer_start(&l->pause, on_pause_end, PH_ACCEPT_PAUSE_MS, 0);
    }
}

int ph_listener_start(ph_listener_t *l, ph_server_t *server)
{
    l->server = server;
    int rv = l->is_unix ? uv_pipe_init(&server->loop->uv, &l->h.pipe, 0)
                        : uv_tcp_init(&server->loop->uv, &l->h.tcp);
    if (rv < 0) {
        close(l->fd);
        l->fd = -1;
        return rv;
    }
    l->h.handle.data = l;
    l->has_handle = 1;
    rv = l->is_unix ? uv_pipe_open(&l->h.pipe, l->fd) : uv_tcp_open(&l->h.tcp, l->fd);
    if (rv < 0) {
        close(l->fd);
        l->fd = -1;
        return rv;
    }
    l->fd = -1; /* the handle's now */
    if (server->peers) {
        if ((rv = uv_timer_init(&server->loop->uv, &l->pause)) < 0)
            return rv;
        l->pause.data = l;
        l->has_timer = 1;
    }
    return uv_listen(&l->h.stream, l->backlog, on_connection);
}

void ph_listener_close(ph_listener_t *l)
{
    if (l->held) {
        l->held = 0;
        take(l);
    }
    if (l->has_timer) {
        l->has_timer = 0;
        uv_close((uv_handle_t *)&l->pause, NULL);
    }
    if (l->has_handle) {
        if (!uv_is_closing(&l->h.handle)) {
            uv_close(&l->h.handle, NULL);
            ph_loop_touch(l->server->loop);
        }
    } else if (l->fd >= 0) {
        close(l->fd);
    }
    l->fd = -1;
}
