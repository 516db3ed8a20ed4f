#include "server.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "listener.h"
#include "stream.h"

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
    c->server_line = PH_SLICE_LIT("server: pronghorn\r\n");
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

const uint64_t ph_metric_bounds_us[PH_METRIC_BUCKETS] = {
    1000,   2500,   5000,    10000,   25000,   50000,    100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, UINT64_MAX};

int ph_reject_reason(int status)
{
    switch (status) {
    case 400: return PH_REJECT_MALFORMED;
    case 408: return PH_REJECT_TIMEOUT;
    case 413: return PH_REJECT_BODY;
    case 414: return PH_REJECT_TARGET;
    case 431: return PH_REJECT_HEADERS;
    case 501: return PH_REJECT_METHOD;
    case 426:
    case 505: return PH_REJECT_VERSION;
    case 503: return PH_REJECT_SHUTDOWN;
    default: return PH_REJECT_OTHER;
    }
}

static int method_index(ph_slice_t m)
{
    static const char *const names[PH_METRIC_METHODS - 1] = {"GET",    "HEAD",  "POST",   "PUT",
                                                             "DELETE", "PATCH", "OPTIONS"};
    for (int i = 0; i < PH_METRIC_METHODS - 1; i++)
        if (strlen(names[i]) == m.len && memcmp(names[i], m.base, m.len) == 0)
            return i;
    return PH_METRIC_METHODS - 1;
}

void ph_server_count(ph_server_t *server, const ph_exchange_t *x)
{
    if (server->beat == NULL)
        return;
    ph_metrics_t *m = &server->beat->m;
    int cls = x->status >= 100 && x->status < 600 ? x->status / 100 : 0;
    m->responses[method_index(x->method)][cls]++;
    uint64_t us = x->seconds > 0 ? (uint64_t)(x->seconds * 1e6) : 0;
    int b = 0;
    while (us > ph_metric_bounds_us[b])
        b++;
    m->duration[b]++;
    m->duration_sum_us += us;
    m->ends[x->end >= 0 && x->end < PH_ENDS ? x->end : PH_END_OK]++;
    if (x->end == PH_END_REJECTED)
        m->rejected[x->reject > 0 && x->reject < PH_REJECTS ? x->reject : PH_REJECT_OTHER]++;
}

void ph_server_reject(ph_server_t *server, const struct sockaddr_storage *peer,
                      const ph_exchange_t *x)
{
    ph_server_count(server, x);
    if (server->on_reject)
        server->on_reject(server, peer, x);
}

void ph_server_refuse_busy(ph_server_t *server, ph_stream_t *s)
{
    static const char text[] = "Service Unavailable";
    ph_stream_respond_text(s, 503, text, sizeof(text) - 1);
    ph_exchange_t x = {.method = s->req.method,
                       .target = s->req.target,
                       .status = 503,
                       .end = PH_END_REJECTED,
                       .reject = PH_REJECT_CONCURRENCY,
                       .bytes_out = sizeof(text) - 1};
    x.version = s->req.http_major == 2 ? 20 : s->req.http_minor == 0 ? 10 : 11;
    ph_server_reject(server, s->peer, &x);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void beat(ph_server_t *server)
{
    uint64_t now = now_ns();
    ph_beat_t *b = server->beat;
    b->requests = server->nrequests;
    b->streams = server->nstreams;
    b->conns = server->nconns;
    b->accepting = !server->draining && !server->drain_queued;
    /* How late this beat runs: what the event loop made everything else wait. */
    uint64_t due = b->beat_ns ? b->beat_ns + server->beat_ms * 1000000u : now;
    b->m.loop_lag_us = now > due ? (now - due) / 1000u : 0;
    b->beat_ns = now;
}

static void on_beat(uv_timer_t *t)
{
    beat(t->data);
}

/* The heartbeat runs on the reactor's own loop, so it stops exactly when that loop does. It
 * does not keep the loop alive by itself. */
static int start_beat(ph_server_t *server)
{
    int rv = uv_timer_init(&server->loop->uv, &server->beat_timer);
    if (rv < 0)
        return rv;
    server->beat_open = 1;
    server->beat_timer.data = server;
    uv_unref((uv_handle_t *)&server->beat_timer);
    /* a slot a retired worker used: its counters were taken when it exited */
    memset(&server->beat->m, 0, sizeof(server->beat->m));
    server->beat->beat_ns = 0;
    beat(server);
    return uv_timer_start(&server->beat_timer, on_beat, server->beat_ms, server->beat_ms);
}

int ph_server_over_share(const ph_server_t *server)
{
    if (server->peers == NULL)
        return 0;
    uint64_t least = UINT64_MAX;
    for (size_t i = 0; i < server->npeers; i++) {
        const ph_beat_t *b = (const ph_beat_t *)(server->peers + i * server->peer_size);
        if (b == server->beat || !__atomic_load_n(&b->accepting, __ATOMIC_RELAXED))
            continue;
        uint64_t n = __atomic_load_n(&b->conns, __ATOMIC_RELAXED);
        if (n < least)
            least = n;
    }
    return least != UINT64_MAX && server->nconns > least + PH_ACCEPT_SLACK;
}

void ph_server_open_stream(ph_server_t *server, ph_stream_t *s)
{
    server->nstreams++;
    server->nrequests++;
    if (server->beat) {
        /* what a stuck worker was last asked for, for its supervisor's log line */
        char *out = server->beat->last;
        size_t cap = sizeof(server->beat->last) - 1;
        ph_slice_t m = s->req.method, t = s->req.target;
        size_t n = m.len < cap ? m.len : cap;
        memcpy(out, m.base, n);
        if (n < cap)
            out[n++] = ' ';
        size_t k = t.len < cap - n ? t.len : cap - n;
        memcpy(out + n, t.base, k);
        out[n + k] = '\0';
        server->beat->requests = server->nrequests;
        server->beat->streams = server->nstreams;
        if (server->nrequests == server->max_requests && server->retire_fd >= 0) {
            ssize_t rv = write(server->retire_fd, "M", 1); /* 1 byte, a pipe with room */
            (void)rv;
        }
    }
    server->on_stream(server, s);
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
    if (server->beat && server->beat_ms) {
        int rv = start_beat(server);
        if (rv < 0) {
            for (size_t j = 0; j < server->nlisteners; j++)
                ph_listener_close(&server->listeners[j]);
            return rv;
        }
    }
    ph_loop_touch(server->loop);
    return 0;
}

static void do_drain(ph_server_t *server)
{
    server->drain_queued = 0;
    ph_loop_cancel(server->loop, &server->drain_work);
    server->draining = 1;
    if (server->beat)
        __atomic_store_n(&server->beat->accepting, 0, __ATOMIC_RELAXED);
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

static void on_drain_due(ph_defer_t *d)
{
    do_drain((ph_server_t *)((char *)d - offsetof(ph_server_t, drain_work)));
}

void ph_server_drain(ph_server_t *server)
{
    if (server->draining || server->drain_queued)
        return;
    server->drain_queued = 1;
    if (server->beat) /* not ready from now on (/readyz), though the drain runs a poll later */
        __atomic_store_n(&server->beat->accepting, 0, __ATOMIC_RELAXED);
    server->drain_work.cb = on_drain_due;
    ph_loop_defer(server->loop, &server->drain_work);
    ph_loop_touch(server->loop);
}

void ph_server_expire(ph_server_t *server)
{
    if (server->drain_queued)
        do_drain(server);
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
    if (server->drain_queued) {
        server->drain_queued = 0;
        ph_loop_cancel(server->loop, &server->drain_work);
    }
    server->draining = 1;
    if (server->beat_open && !uv_is_closing((uv_handle_t *)&server->beat_timer))
        uv_close((uv_handle_t *)&server->beat_timer, NULL);
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
