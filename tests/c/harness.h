/* Drives h1 (and h2, which h1 hands an HTTP/2 connection to) + conn + loop without Python: a
 * socketpair stands in for the client, and a tiny in-C "bridge" answers each stream. Shared by
 * the h1 and h2 unit tests and fuzz targets. */
#ifndef PH_HARNESS_H
#define PH_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "h1.h"

typedef struct {
    ph_loop_t loop;
    ph_server_t server;
    int client; /* the test's end of the socketpair */
    /* what the bridge saw */
    int streams;
    char body[65536];
    size_t body_len;
    int body_end, disconnects;
    char last_path[256];
    /* how the bridge answers: body sent with more=1 then an empty end when chunked_reply */
    int chunked_reply;
    int respond_on_end; /* answer only once the whole request body is in */
    int trailers_reply; /* end the response with a trailer field */
    int abort_reply;    /* start a response, send part of it, then abort (an app that failed) */
    int pause_reads;    /* pause the body at its first bytes and never ask for more */
    int file_reply;     /* the body ("hello") from a file, through the stream's sendfile op */
    int file_fd;        /* that file (a memfd), -1 until first used */
    int trailers_seen;  /* request trailer fields the bridge was given */
    ph_stream_t *pending;
} harness_t;

static harness_t *H;

static void hb_on_body(ph_stream_t *s, const char *d, size_t n)
{
    if (H->pause_reads)
        s->ops->pause_body(s);
    if (H->body_len + n <= sizeof(H->body)) {
        memcpy(H->body + H->body_len, d, n);
        H->body_len += n;
    }
}

static void hb_respond(ph_stream_t *s)
{
    static const ph_header_t hs[] = {{{"content-type", 12}, {"text/plain", 10}}};
    if (s->ops->start(s, 200, hs, 1) != 0)
        return;
    if (H->abort_reply) {
        if (s->ops->body(s, "hel", 3, 1) == 0)
            s->ops->abort(s);
    } else if (H->trailers_reply) {
        static const ph_header_t tr[] = {{{"grpc-status", 11}, {"0", 1}}};
        /* with chunked_reply too: no body at all, only trailers (a gRPC error's shape) */
        size_t n = H->chunked_reply ? 0 : 5;
        if (s->ops->body(s, "hello", n, 1) == 0)
            s->ops->trailers(s, tr, 1);
    } else if (H->file_reply && s->ops->sendfile) {
        if (H->file_fd < 0) {
            H->file_fd = memfd_create("ph-harness", MFD_CLOEXEC);
            if (H->file_fd < 0 || pwrite(H->file_fd, "hello", 5, 0) != 5)
                abort();
        }
        /* the stream takes the descriptor (closes it when sent, or on failure) */
        if (s->ops->sendfile(s, dup(H->file_fd), 0, 5, H->chunked_reply) == 0 && H->chunked_reply)
            s->ops->body(s, "", 0, 0);
    } else if (H->chunked_reply) {
        s->ops->body(s, "hello", 5, 1);
        s->ops->body(s, "", 0, 0);
    } else {
        s->ops->body(s, "hello", 5, 0);
    }
}

static void hb_on_trailers(ph_stream_t *s, const ph_header_t *hs, size_t n)
{
    (void)s;
    for (size_t i = 0; i < n; i++)
        if (hs[i].name.len == 0)
            abort(); /* a trailer field without a name never reaches a bridge */
    H->trailers_seen += (int)n;
}

static void hb_on_body_end(ph_stream_t *s)
{
    H->body_end++;
    if (H->pending == s) {
        H->pending = NULL;
        hb_respond(s);
    }
}

static void hb_on_drain(ph_stream_t *s)
{
    (void)s;
}

static void hb_on_disconnect(ph_stream_t *s)
{
    (void)s;
    H->disconnects++;
}

static void hb_on_release(ph_stream_t *s)
{
    if (H->pending == s)
        H->pending = NULL;
}

static const ph_stream_handler_t hb_handler = {
    .on_body = hb_on_body,
    .on_trailers = hb_on_trailers,
    .on_body_end = hb_on_body_end,
    .on_drain = hb_on_drain,
    .on_disconnect = hb_on_disconnect,
    .on_release = hb_on_release,
};

static void hb_on_stream(ph_server_t *server, ph_stream_t *s)
{
    (void)server;
    H->streams++;
    size_t n =
        s->req.path.len < sizeof(H->last_path) - 1 ? s->req.path.len : sizeof(H->last_path) - 1;
    memcpy(H->last_path, s->req.path.base, n);
    H->last_path[n] = 0;
    s->handler = &hb_handler;
    if (H->respond_on_end) {
        H->pending = s;
        s->ops->want_body(s);
        return;
    }
    hb_respond(s);
}

static int hb_on_conn(ph_server_t *server, ph_conn_t *conn)
{
    (void)server;
    return ph_h1_attach(conn);
}

/* Sets up a server with test-sized limits and one connection; returns 0 on success. */
static int harness_init(harness_t *h)
{
    memset(h, 0, sizeof(*h));
    h->file_fd = -1;
    H = h;
    signal(SIGPIPE, SIG_IGN); /* both ends may close under the other */
    if (ph_loop_init(&h->loop) < 0)
        return -1;
    ph_server_init(&h->server, &h->loop);
    h->server.on_conn = hb_on_conn;
    h->server.on_stream = hb_on_stream;
    ph_config_t *c = &h->server.cfg;
    c->timeout_keep_alive_ms = 5000;
    c->timeout_request_header_ms = 5000;
    c->timeout_request_body_ms = 5000;
    c->timeout_write_ms = 5000;
    c->limit_request_line = 256;
    c->limit_request_headers = 16;
    c->limit_request_header_size = 2048;
    c->limit_request_body = 4096;
    c->server_header = 1;
    c->date_header = 0;
    c->write_high_water = 65536;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0)
        return -1;
    h->client = fds[1];
    fcntl(h->client, F_SETFL, O_NONBLOCK);
    ph_conn_t *conn = calloc(1, sizeof(*conn));
    conn->server = &h->server;
    conn->is_unix = 1;
    uv_pipe_init(&h->loop.uv, &conn->h.pipe, 0);
    if (uv_pipe_open(&conn->h.pipe, fds[0]) < 0)
        return -1;
    if (ph_conn_start(conn) < 0) /* which attaches h1 through server.on_conn */
        return -1;
    return 0;
}

/* Runs the loop until it has nothing left to do right now. */
static void harness_spin(harness_t *h)
{
    for (int i = 0; i < 3; i++)
        ph_loop_tick(&h->loop);
}

/* Sends bytes (in pieces of at most `piece` bytes, each followed by a spin), then collects
 * whatever the server answers into out (NUL-terminated); returns 1 if the server closed. */
static int harness_exchange(harness_t *h, const char *data, size_t len, size_t piece, char *out,
                            size_t outcap, size_t *outlen)
{
    size_t off = 0;
    *outlen = 0;
    int closed = 0;
    while (off < len) {
        size_t n = len - off < piece ? len - off : piece;
        ssize_t w = write(h->client, data + off, n);
        if (w <= 0)
            break;
        off += (size_t)w;
        harness_spin(h);
    }
    harness_spin(h);
    for (;;) {
        ssize_t r = read(h->client, out + *outlen, outcap - 1 - *outlen);
        if (r > 0) {
            *outlen += (size_t)r;
            if (*outlen == outcap - 1)
                break;
            continue;
        }
        if (r == 0)
            closed = 1;
        break;
    }
    out[*outlen] = 0;
    return closed;
}

static void harness_free(harness_t *h)
{
    if (h->file_fd >= 0)
        close(h->file_fd);
    close(h->client);
    ph_server_close(&h->server);
    ph_loop_close(&h->loop);
    ph_server_free(&h->server);
}

#endif
