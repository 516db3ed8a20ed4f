#include "server.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "listener.h"

void ph_server_init(ph_server_t *server, ph_loop_t *loop)
{
    memset(server, 0, sizeof(*server));
    server->loop = loop;
    ph_config_t *c = &server->cfg;
    c->timeout_keep_alive_ms = 5000;
    c->timeout_request_header_ms = 10000;
    c->timeout_request_body_ms = 30000;
    c->timeout_write_ms = 30000;
    c->linger_ms = 2000;
    c->limit_request_line = 8190;
    c->limit_request_headers = 100;
    c->limit_request_header_size = 65536;
    c->server_header = 1;
    c->date_header = 1;
    c->write_high_water = 65536;
    c->http = PH_HTTP_AUTO;
    c->h2_max_concurrent_streams = 100;
    c->h2_initial_window_size = 262144;
    c->h2_max_header_list_size = 0;
    c->h2_max_frame_size = 16384;
    c->ws_deflate = 1;
    c->ws_max_size = 16 * 1024 * 1024;
    c->ws_max_queue = 32;
    c->ws_ping_interval_ms = 20000;
    c->ws_ping_timeout_ms = 20000;
}

int ph_server_add_listener(ph_server_t *server, int fd, int is_unix, int backlog)
{
    if (server->started)
        return PH_ESTATE;
    ph_listener_t *ls = realloc(server->listeners, sizeof(*ls) * (server->nlisteners + 1));
    if (ls == NULL)
        return PH_ENOMEM;
    server->listeners = ls;
    ph_listener_t *l = &ls[server->nlisteners++];
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    l->is_unix = is_unix;
    l->backlog = backlog;
    return 0;
}

int ph_server_start(ph_server_t *server)
{
    if (server->started)
        return PH_ESTATE;
    server->started = 1;
    for (size_t i = 0; i < server->nlisteners; i++) {
        ph_listener_t *l = &server->listeners[i];
        int rv = ph_listener_start(l, server);
        if (rv < 0) {
            for (size_t j = 0; j < server->nlisteners; j++)
                ph_listener_close(&server->listeners[j]);
            return rv;
        }
    }
    ph_loop_touch(server->loop);
    return 0;
}

void ph_server_drain(ph_server_t *server)
{
    server->draining = 1;
    for (size_t i = 0; i < server->nlisteners; i++)
        ph_listener_close(&server->listeners[i]);
    for (ph_conn_t *c = server->conns; c;) {
        ph_conn_t *next = c->next;
        if (c->state == PH_CONN_OPEN && c->proto && c->proto->drain)
            c->proto->drain(c);
        c = next;
    }
    ph_loop_touch(server->loop);
}

void ph_server_expire(ph_server_t *server)
{
    server->draining = 1;
    for (ph_conn_t *c = server->conns; c;) {
        ph_conn_t *next = c->next;
        if (c->state == PH_CONN_OPEN) {
            if (c->proto && c->proto->expire)
                c->proto->expire(c);
            else
                ph_conn_abort(c);
        }
        c = next;
    }
    ph_loop_touch(server->loop);
}

void ph_server_close(ph_server_t *server)
{
    server->draining = 1;
    for (size_t i = 0; i < server->nlisteners; i++)
        ph_listener_close(&server->listeners[i]);
    while (server->conns)
        ph_conn_abort(server->conns);
    ph_loop_touch(server->loop);
}

void ph_server_free(ph_server_t *server)
{
    for (size_t i = 0; i < server->nlisteners; i++)
        ph_listener_close(&server->listeners[i]); /* closes the fds of those never started */
    free(server->listeners);
    server->listeners = NULL;
    server->nlisteners = 0;
    ph_pool_clear(&server->rbufs);
    ph_pool_clear(&server->blocks);
    free(server->cork);
    server->cork = NULL;
    free(server->tls_in);
    server->tls_in = NULL;
}
