#include "h2.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

/* The connection's receive window. Every stream's DATA is credited to the connection as soon
 * as it arrives (a stream whose app does not read stalls only itself, through its own window),
 * so this only bounds the bytes in flight. */
#define CONN_WINDOW (16 * 1024 * 1024)

/* Frames that make no work for an app (PING, SETTINGS, PRIORITY, RST_STREAM, empty DATA,
 * unknown types) draw on a per-connection budget: this many at once, refilled at
 * FLOOD_RATE a second. A client that runs it dry gets GOAWAY ENHANCE_YOUR_CALM. */
#define FLOOD_BURST 1000
#define FLOOD_RATE 100

/* Decoded header bytes of one block beyond this many times the advertised limit are not a
 * large request but an HPACK bomb: the connection goes. */
#define BOMB_FACTOR 4

/* Stream ids remembered to tell a closed stream (STREAM_CLOSED) from one never opened below the
 * highest id (PROTOCOL_ERROR, RFC 9113 §5.1.1), which nghttp2 cannot tell apart. */
#define RECENT_IDS 64

/* Frames gathered by one flush before they are handed to the connection. */
#define OUT_CHUNK 65536

typedef struct h2_s h2_t;

typedef struct h2_file_s {
    struct h2_file_s *next;
    int fd;
    uint64_t off, len;
    size_t at; /* obuf offset it follows */
} h2_file_t;

/* Header fields copied into one growing arena, kept as offsets (the arena moves as it grows). */
typedef struct {
    char *arena;
    size_t len, cap;
    size_t *offs; /* per field: name offset, name length, value offset, value length */
    size_t n, ocap;
} fields_t;

typedef struct h2_stream_s {
    ph_stream_t stream; /* what the bridge sees */
    h2_t *h2;
    int32_t id;
    struct h2_stream_s *prev, *next; /* in h2->streams */

    /* Request fields as they are decoded (made into slices once the head is whole), then its
     * trailer fields. */
    fields_t req;
    size_t pseudo[5][2];  /* :method :path :scheme :authority :protocol (offset, length + 1) */
    size_t head_size;     /* RFC 9113 §6.5.2 accounting: name + value + 32 per field */
    size_t ntrailer_from; /* fields from here on are trailers */
    ph_header_t *headers;
    uint64_t body_received;
    uint64_t held; /* DATA bytes not credited back to the peer while the bridge is paused */

    /* Response. */
    int status;
    fields_t resp; /* the app's response fields, names lower-cased */
    int64_t resp_cl;
    uint64_t resp_sent;
    char *obuf; /* body bytes accepted, not yet framed */
    size_t ostart, olen, ocap;
    /* File bodies (op_sendfile), in order: each is read straight into DATA frames once obuf
     * is framed up to its mark; bytes accepted after it wait in obuf behind that mark. */
    struct h2_file_s *files, *files_tail;
    uint64_t files_len;    /* their bytes still to send */
    ph_header_t *trailers; /* what op_trailers() got, kept in tarena until framed */
    size_t ntrailers;
    char *tarena;

    /* attached: handed to the bridge and not yet released. */
    unsigned attached : 1, head_done : 1, remote_done : 1, paused : 1, too_large : 1, started : 1,
        submitted : 1, body_done : 1, has_trailers : 1, end_sent : 1, over : 1, no_body : 1,
        continue_sent : 1;
} h2_stream_t;

struct h2_s {
    ph_conn_t *conn;
    ph_server_t *server;
    nghttp2_session *ss;
    h2_stream_t *streams;
    size_t nstreams;
    char *out;
    size_t olen, ocap;
    ph_defer_t flush_later; /* a flush asked for inside nghttp2's callbacks, or by a bridge op */
    ph_defer_t read_later;  /* input already buffered when HTTP/2 took the connection */
    double tokens;          /* the flood budget */
    uint64_t tokens_at;     /* loop time (ms) it was last refilled */
    size_t max_header_list;
    int32_t recent[RECENT_IDS]; /* the last ids the client opened, oldest overwritten */
    unsigned nrecent;
    unsigned in_recv : 1, closed : 1, goaway : 1, draining : 1;
};

static const ph_conn_proto_t h2_proto;
static const ph_stream_ops_t h2_ops;
static void flush(h2_t *h);
static void schedule_flush(h2_t *h);
static void drain(ph_conn_t *conn);

int ph_h2_match_preface(const char *p, size_t n)
{
    /* "PRI * HTTP/2.0\r\n" is no HTTP/1.1 request: from there on it is HTTP/2's to judge (a
     * bad rest of the preface closes the connection, as RFC 9113 §3.4 says). */
    size_t m = n < PH_H2_PREFACE_COMMITS ? n : PH_H2_PREFACE_COMMITS;
    if (memcmp(p, PH_H2_PREFACE, m) != 0)
        return -1;
    return n >= PH_H2_PREFACE_COMMITS ? 1 : 0;
}

/* ---- small buffers ---- */

static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL)
        return PH_ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static int put(char **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
    if (grow(buf, cap, *len + n) < 0)
        return PH_ENOMEM;
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Appends a field (the name lower-cased when lower). 0 or PH_ENOMEM. */
static int fields_add(fields_t *f, const char *name, size_t nl, const char *value, size_t vl,
                      int lower)
{
    if (f->n == f->ocap) {
        size_t ncap = f->ocap ? f->ocap * 2 : 16;
        size_t *no = realloc(f->offs, ncap * 4 * sizeof(size_t));
        if (no == NULL)
            return PH_ENOMEM;
        f->offs = no;
        f->ocap = ncap;
    }
    if (grow(&f->arena, &f->cap, f->len + nl + vl) < 0)
        return PH_ENOMEM;
    size_t *o = &f->offs[f->n * 4];
    o[0] = f->len;
    o[1] = nl;
    for (size_t i = 0; i < nl; i++) {
        char c = name[i];
        f->arena[f->len + i] = lower && c >= 'A' && c <= 'Z' ? (char)(c | 0x20) : c;
    }
    f->len += nl;
    o[2] = f->len;
    o[3] = vl;
    memcpy(f->arena + f->len, value, vl);
    f->len += vl;
    f->n++;
    return 0;
}

static void fields_free(fields_t *f)
{
    free(f->arena);
    free(f->offs);
}

/* ---- streams ---- */

static h2_stream_t *stream_new(h2_t *h, int32_t id)
{
    h2_stream_t *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->h2 = h;
    st->id = id;
    st->resp_cl = -1;
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    return st;
}

/* The bridge lets go of the stream: told first that the peer is gone when the response is not
 * all out. */
static void detach(h2_stream_t *st, int disconnect)
{
    if (!st->attached)
        return;
    st->attached = 0;
    st->h2->server->nstreams--;
    const ph_stream_handler_t *hd = st->stream.handler;
    st->stream.handler = NULL;
    if (hd) {
        if (disconnect)
            hd->on_disconnect(&st->stream);
        hd->on_release(&st->stream);
    }
    st->stream.user = NULL;
}

static void file_pop(h2_stream_t *st)
{
    h2_file_t *f = st->files;
    st->files = f->next;
    if (st->files == NULL)
        st->files_tail = NULL;
    st->files_len -= f->len;
    close(f->fd);
    free(f);
}

static void stream_free(h2_stream_t *st)
{
    h2_t *h = st->h2;
    detach(st, !st->end_sent);
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    h->nstreams--;
    fields_free(&st->req);
    free(st->headers);
    fields_free(&st->resp);
    free(st->obuf);
    while (st->files)
        file_pop(st);
    free(st->trailers);
    free(st->tarena);
    free(st);
}

#define STREAM_OF(s) ((h2_stream_t *)((char *)(s)-offsetof(h2_stream_t, stream)))

/* ---- the flood budget ---- */

static int spend(h2_t *h)
{
    uint64_t now = uv_now(&h->server->loop->uv);
    if (now > h->tokens_at) {
        h->tokens += (double)(now - h->tokens_at) * FLOOD_RATE / 1000.0;
        if (h->tokens > FLOOD_BURST)
            h->tokens = FLOOD_BURST;
        h->tokens_at = now;
    }
    if (h->tokens < 1) {
        nghttp2_session_terminate_session(h->ss, NGHTTP2_ENHANCE_YOUR_CALM);
        return -1;
    }
    h->tokens -= 1;
    return 0;
}

/* ---- the connection's deadline ---- */

/* What the connection waits for, in the order a deadline is chosen: a response held by a
 * window the peer does not open (the write time); a header block not yet whole (the header
 * time); a request body an app waits for (the body time); no streams at all (the keep-alive
 * time, the header time before the first request). Every deadline is about progress: it starts
 * again whenever the connection moves. */
enum { WAIT_NONE, WAIT_WINDOW, WAIT_HEAD, WAIT_BODY, WAIT_IDLE };

/* An app waits for this stream's body, which the client owes (no 100 it still waits for). A
 * WebSocket's stream never does: its bytes come when its peer has something to say, and the
 * bridge's pings watch it. */
static int reading(const h2_stream_t *st)
{
    return st->attached && !st->remote_done && !st->paused && !st->stream.req.websocket &&
           !(st->stream.req.expect_continue && !st->continue_sent);
}

static int waiting_for(h2_t *h)
{
    if (h->nstreams == 0)
        return WAIT_IDLE;
    int head = 0, body = 0;
    for (h2_stream_t *st = h->streams; st; st = st->next) {
        if (st->submitted && st->olen > st->ostart &&
            (nghttp2_session_get_stream_remote_window_size(h->ss, st->id) <= 0 ||
             nghttp2_session_get_remote_window_size(h->ss) <= 0))
            return WAIT_WINDOW;
        if (!st->head_done)
            head = 1;
        else if (reading(st))
            body = 1;
    }
    return head ? WAIT_HEAD : body ? WAIT_BODY : WAIT_NONE;
}

static void update_timer(h2_t *h)
{
    if (h->closed)
        return;
    const ph_config_t *cfg = &h->server->cfg;
    uint64_t ms = 0;
    switch (waiting_for(h)) {
    case WAIT_WINDOW: ms = cfg->timeout_write_ms; break;
    case WAIT_HEAD: ms = cfg->timeout_request_header_ms; break;
    case WAIT_BODY: ms = cfg->timeout_request_body_ms; break;
    case WAIT_IDLE:
        ms = nghttp2_session_get_last_proc_stream_id(h->ss) == 0 ? cfg->timeout_request_header_ms
                                                                 : cfg->timeout_keep_alive_ms;
        break;
    }
    ph_conn_set_timeout(h->conn, 0);
    if (ms)
        ph_conn_set_timeout(h->conn, ms);
}

/* ---- closing ---- */

static void close_conn(h2_t *h)
{
    if (h->closed)
        return;
    h->closed = 1;
    for (h2_stream_t *st = h->streams; st; st = st->next)
        detach(st, !st->end_sent);
    ph_conn_close(h->conn, 1);
}

/* A GOAWAY written by hand, for when nghttp2's session is past sending one itself. */
static void raw_goaway(h2_t *h, uint32_t code)
{
    int32_t last = nghttp2_session_get_last_proc_stream_id(h->ss);
    uint8_t f[17] = {0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0};
    f[9] = (uint8_t)((last >> 24) & 0x7f);
    f[10] = (uint8_t)(last >> 16);
    f[11] = (uint8_t)(last >> 8);
    f[12] = (uint8_t)last;
    f[13] = (uint8_t)(code >> 24);
    f[14] = (uint8_t)(code >> 16);
    f[15] = (uint8_t)(code >> 8);
    f[16] = (uint8_t)code;
    uv_buf_t b;
    b.base = (char *)f;
    b.len = sizeof(f);
    ph_conn_write(h->conn, &b, 1);
}

/* ---- response body source ---- */

static ssize_t read_body(nghttp2_session *ss, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ss;
    (void)id;
    (void)ud;
    h2_stream_t *st = src->ptr;
    size_t n;
    h2_file_t *f = st->files;
    if (f && st->ostart == f->at) {
        size_t want = f->len < length ? (size_t)f->len : length;
        ssize_t got = want ? pread(f->fd, buf, want, (off_t)f->off) : 0;
        if (got <= 0 && want)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* unreadable or short: reset */
        n = (size_t)got;
        f->off += n;
        f->len -= n;
        st->files_len -= n;
        if (f->len == 0)
            file_pop(st);
        if (st->files)
            return (ssize_t)n;
    } else {
        /* obuf, up to the next file's mark */
        size_t avail = (f ? f->at : st->olen) - st->ostart;
        n = avail < length ? avail : length;
        if (n == 0 && !st->body_done)
            return NGHTTP2_ERR_DEFERRED;
        if (n) /* (no body at all: obuf may be NULL) */
            memcpy(buf, st->obuf + st->ostart, n);
        st->ostart += n;
        if (f)
            return (ssize_t)n;
    }
    if (st->ostart == st->olen)
        st->ostart = st->olen = 0;
    if (st->olen == 0 && st->body_done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->has_trailers) {
            nghttp2_nv nv[st->ntrailers ? st->ntrailers : 1];
            for (size_t i = 0; i < st->ntrailers; i++) {
                nv[i].name = (uint8_t *)st->trailers[i].name.base;
                nv[i].namelen = st->trailers[i].name.len;
                nv[i].value = (uint8_t *)st->trailers[i].value.base;
                nv[i].valuelen = st->trailers[i].value.len;
                nv[i].flags = NGHTTP2_NV_FLAG_NONE;
            }
            if (nghttp2_submit_trailer(st->h2->ss, st->id, nv, st->ntrailers) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
    }
    return (ssize_t)n;
}

/* ---- request head ---- */

static ph_slice_t pseudo(h2_stream_t *st, int i)
{
    if (st->pseudo[i][1] == 0)
        return (ph_slice_t){"", 0};
    return (ph_slice_t){st->req.arena + st->pseudo[i][0], st->pseudo[i][1] - 1};
}

enum { P_METHOD, P_PATH, P_SCHEME, P_AUTHORITY, P_PROTOCOL };

/* Answers a stream the bridge never saw (a refusal below the app). */
static void send_simple(h2_stream_t *st, int status)
{
    char code[4] = {(char)('0' + status / 100), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10), 0};
    const char *reason = ph_status_reason(status);
    nghttp2_nv nv[] = {
        {(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"text/plain; charset=utf-8", 12, 25,
         NGHTTP2_NV_FLAG_NONE},
    };
    st->started = st->submitted = st->body_done = 1;
    st->has_trailers = 0;
    st->ostart = st->olen = 0;
    if (put(&st->obuf, &st->olen, &st->ocap, reason, strlen(reason)) < 0) {
        nghttp2_submit_rst_stream(st->h2->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    if (nghttp2_submit_response(st->h2->ss, st->id, nv, 2, &dp) != 0)
        nghttp2_submit_rst_stream(st->h2->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* A request answered here, not by the app: one the bridge has learns what the client got
 * (the bridge logs it); one it never saw is logged and counted as a rejection. */
static void respond_simple(h2_stream_t *st, int status)
{
    if (st->attached) {
        st->stream.answered = status;
        detach(st, 1);
    } else {
        ph_exchange_t x = {.status = status, .end = PH_END_REJECTED, .version = 20};
        x.reject = ph_reject_reason(status);
        x.method = pseudo(st, P_METHOD);
        x.target = pseudo(st, P_PATH);
        x.bytes_in = st->body_received;
        x.bytes_out = strlen(ph_status_reason(status));
        ph_server_reject(st->h2->server, &st->h2->conn->peer, &x);
    }
    send_simple(st, status);
}

/* The request head is whole: make it a ph_request_t and hand it to the bridge. */
static void open_stream(h2_stream_t *st, int end_stream)
{
    h2_t *h = st->h2;
    ph_request_t *r = &st->stream.req;
    st->head_done = 1;
    st->ntrailer_from = st->req.n;
    if (st->too_large) {
        respond_simple(st, 431);
        return;
    }
    /* RFC 8441: extended CONNECT with :protocol websocket (offered in our SETTINGS when
     * WebSockets are on; nghttp2 has checked :scheme and :path are there) opens a WebSocket.
     * Plain CONNECT and other protocols are not served. */
    ph_slice_t proto = pseudo(st, P_PROTOCOL);
    int websocket = st->pseudo[P_PROTOCOL][1] && h->server->cfg.ws &&
                    ph_eq_lower(proto.base, proto.len, "websocket", 9);
    if (!websocket &&
        (st->pseudo[P_PROTOCOL][1] ||
         ph_eq_lower(pseudo(st, P_METHOD).base, pseudo(st, P_METHOD).len, "connect", 7))) {
        respond_simple(st, 501);
        return;
    }
    /* Several cookie fields become one (RFC 9113 §8.2.3), as an HTTP/1.1 app expects. */
    size_t ncookies = 0, first_cookie = 0;
    for (size_t i = 0; i < st->req.n; i++) {
        size_t *o = &st->req.offs[i * 4];
        if (o[1] == 6 && memcmp(st->req.arena + o[0], "cookie", 6) == 0 && ncookies++ == 0)
            first_cookie = i;
    }
    if (ncookies > 1) {
        size_t from = st->req.len;
        for (size_t i = first_cookie; i < st->req.n; i++) {
            size_t *o = &st->req.offs[i * 4];
            if (o[1] != 6 || memcmp(st->req.arena + o[0], "cookie", 6) != 0)
                continue;
            if ((st->req.len > from &&
                 put(&st->req.arena, &st->req.len, &st->req.cap, "; ", 2) < 0) ||
                grow(&st->req.arena, &st->req.cap, st->req.len + o[3]) < 0) {
                respond_simple(st, 500);
                return;
            }
            memcpy(st->req.arena + st->req.len, st->req.arena + o[2],
                   o[3]); /* after grow: no overlap */
            st->req.len += o[3];
            if (i != first_cookie)
                o[1] = 0; /* dropped below */
        }
        st->req.offs[first_cookie * 4 + 2] = from;
        st->req.offs[first_cookie * 4 + 3] = st->req.len - from;
    }
    ph_slice_t authority = pseudo(st, P_AUTHORITY);
    st->headers = malloc((st->req.n + 1) * sizeof(ph_header_t));
    if (st->headers == NULL) {
        respond_simple(st, 500);
        return;
    }
    size_t n = 0;
    if (authority.len)
        st->headers[n++] = (ph_header_t){PH_SLICE_LIT("host"), authority};
    memset(r, 0, sizeof(*r));
    r->content_length = -1;
    for (size_t i = 0; i < st->req.n; i++) {
        size_t *o = &st->req.offs[i * 4];
        if (o[1] == 0)
            continue;
        ph_slice_t nm = {st->req.arena + o[0], o[1]}, v = {st->req.arena + o[2], o[3]};
        if (authority.len && nm.len == 4 && memcmp(nm.base, "host", 4) == 0)
            continue; /* :authority wins (RFC 9113 §8.3.1) */
        if (nm.len == 14 && memcmp(nm.base, "content-length", 14) == 0) {
            r->content_length = ph_parse_decimal(v.base, v.len);
        } else if (nm.len == 6 && memcmp(nm.base, "expect", 6) == 0 &&
                   ph_eq_lower(v.base, v.len, "100-continue", 12)) {
            r->expect_continue = 1;
        }
        st->headers[n++] = (ph_header_t){nm, v};
    }
    r->method = pseudo(st, P_METHOD);
    r->target = pseudo(st, P_PATH);
    const char *t = r->target.base, *tend = t + r->target.len;
    const char *hash = memchr(t, '#', r->target.len);
    if (hash)
        tend = hash;
    const char *q = memchr(t, '?', (size_t)(tend - t));
    r->path = (ph_slice_t){t, (size_t)((q ? q : tend) - t)};
    r->query = q ? (ph_slice_t){q + 1, (size_t)(tend - q - 1)} : (ph_slice_t){tend, 0};
    r->http_major = 2;
    r->http_minor = 0;
    r->headers = st->headers;
    r->nheaders = n;
    r->is_head = r->method.len == 4 && memcmp(r->method.base, "HEAD", 4) == 0;
    r->te_trailers = 1;
    r->websocket = websocket;
    if (websocket) {
        /* The WebSocket's own version (RFC 8441 §5: as in RFC 6455). */
        int version_ok = 0;
        for (size_t i = 0; i < n; i++) {
            ph_header_t *f = &st->headers[i];
            if (ph_eq_lower(f->name.base, f->name.len, "sec-websocket-version", 21))
                version_ok = f->value.len == 2 && memcmp(f->value.base, "13", 2) == 0;
        }
        if (!version_ok) {
            respond_simple(st, 400);
            return;
        }
        if (end_stream) {
            respond_simple(st, 400); /* a tunnel with its client's side already closed */
            return;
        }
    }
    /* No body will come: the bridge must not wait for one. */
    if (end_stream)
        r->content_length = 0;
    else if (r->content_length == 0)
        r->content_length = -1; /* DATA may still carry END_STREAM alone */
    uint64_t limit = h->server->cfg.limit_request_body;
    if (limit && r->content_length > 0 && (uint64_t)r->content_length > limit) {
        respond_simple(st, 413);
        return;
    }
    if (!end_stream && r->content_length < 0)
        r->chunked = 1; /* length unknown: read to the end of the stream */
    st->stream.ops = &h2_ops;
    st->stream.answered = 0;
    st->stream.handler = NULL;
    st->stream.user = NULL;
    st->stream.peer = &h->conn->peer;
    st->stream.local = &h->conn->local;
    st->stream.scheme = h->conn->tls ? "https" : "http";
    st->stream.tls = h->conn->tls;
    st->attached = 1;
    ph_server_open_stream(h->server, &st->stream);
}

static void request_done(h2_stream_t *st)
{
    st->remote_done = 1;
    if (!st->attached || st->stream.handler == NULL)
        return;
    if (st->req.n > st->ntrailer_from && st->stream.handler->on_trailers) {
        size_t n = st->req.n - st->ntrailer_from;
        ph_header_t tr[n];
        for (size_t i = 0; i < n; i++) {
            size_t *o = &st->req.offs[(st->ntrailer_from + i) * 4];
            tr[i] = (ph_header_t){{st->req.arena + o[0], o[1]}, {st->req.arena + o[2], o[3]}};
        }
        st->stream.handler->on_trailers(&st->stream, tr, n);
    }
    if (st->attached && st->stream.handler)
        st->stream.handler->on_body_end(&st->stream);
}

/* ---- nghttp2 callbacks ---- */

/* A HEADERS frame's stream id is new (above every id so far), open, or one we remember. */
static int known_id(h2_t *h, int32_t id)
{
    unsigned n = h->nrecent < RECENT_IDS ? h->nrecent : RECENT_IDS;
    if (n == 0 || id > h->recent[(h->nrecent - 1) % RECENT_IDS])
        return 1;
    if (nghttp2_session_get_stream_user_data(h->ss, id))
        return 1;
    int32_t oldest = h->nrecent <= RECENT_IDS ? 0 : h->recent[h->nrecent % RECENT_IDS];
    if (id < oldest)
        return 1; /* too old to tell: nghttp2 decides */
    for (unsigned i = 0; i < n; i++) {
        if (h->recent[i] == id)
            return 1;
    }
    return 0;
}

static int on_begin_frame(nghttp2_session *ss, const nghttp2_frame_hd *hd, void *ud)
{
    (void)ss;
    h2_t *h = ud;
    switch (hd->type) {
    case NGHTTP2_DATA:
        if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM))
            spend(h);
        return 0;
    case NGHTTP2_HEADERS:
        if (hd->stream_id % 2 == 1 && !known_id(h, hd->stream_id))
            nghttp2_session_terminate_session(h->ss, NGHTTP2_PROTOCOL_ERROR);
        return 0;
    case NGHTTP2_CONTINUATION:
    case NGHTTP2_WINDOW_UPDATE:
    case NGHTTP2_GOAWAY: return 0;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        if (hd->flags & NGHTTP2_FLAG_ACK)
            return 0;
        /* fall through */
    default: /* PRIORITY, RST_STREAM, PUSH_PROMISE, unknown extension frames */ spend(h); return 0;
    }
}

static int on_begin_headers(nghttp2_session *ss, const nghttp2_frame *frame, void *ud)
{
    h2_t *h = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h->recent[h->nrecent++ % RECENT_IDS] = frame->hd.stream_id;
    h2_stream_t *st = stream_new(h, frame->hd.stream_id);
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(ss, frame->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *ss, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)flags;
    h2_t *h = ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ss, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    st->head_size += nl + vl + 32;
    if (st->head_size > h->max_header_list * BOMB_FACTOR) {
        nghttp2_session_terminate_session(ss, NGHTTP2_ENHANCE_YOUR_CALM);
        return 0;
    }
    if (st->head_size > h->max_header_list || (!st->head_done && (nl == 0 || name[0] != ':') &&
                                               st->req.n >= h->server->cfg.limit_request_headers))
        st->too_large = 1;
    if (st->too_large)
        return 0; /* decoded (HPACK state must stay in step), not kept */
    if (nl && name[0] == ':') {
        static const char *names[] = {":method", ":path", ":scheme", ":authority", ":protocol"};
        for (int i = 0; i < 5; i++) {
            if (strlen(names[i]) == nl && memcmp(names[i], name, nl) == 0) {
                st->pseudo[i][0] = st->req.len;
                st->pseudo[i][1] = vl + 1;
                if (put(&st->req.arena, &st->req.len, &st->req.cap, value, vl) < 0)
                    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
        }
        return 0;
    }
    if (fields_add(&st->req, (const char *)name, nl, (const char *)value, vl, 0) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int on_frame_recv(nghttp2_session *ss, const nghttp2_frame *frame, void *ud)
{
    (void)ud;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    h2_stream_t *st =
        frame->hd.stream_id ? nghttp2_session_get_stream_user_data(ss, frame->hd.stream_id) : NULL;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (st == NULL)
            return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            open_stream(st, end);
            if (end && st->attached && st->stream.handler)
                request_done(st);
            else if (end)
                st->remote_done = 1;
        } else if (end) {
            request_done(st); /* trailers */
        }
        return 0;
    case NGHTTP2_DATA:
        if (st && end)
            request_done(st);
        return 0;
    default: return 0;
    }
}

static int on_data(nghttp2_session *ss, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)flags;
    h2_t *h = ud;
    nghttp2_session_consume_connection(ss, len);
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ss, id);
    if (st == NULL || !st->attached || st->stream.handler == NULL) {
        nghttp2_session_consume_stream(ss, id, len); /* nobody reads it: keep the peer going */
        return 0;
    }
    st->body_received += len;
    uint64_t limit = h->server->cfg.limit_request_body;
    if (limit && st->body_received > limit) {
        if (!st->started) {
            respond_simple(st, 413);
        } else {
            nghttp2_submit_rst_stream(ss, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
            detach(st, 1);
        }
        nghttp2_session_consume_stream(ss, id, len);
        return 0;
    }
    if (st->paused)
        st->held += len;
    else
        nghttp2_session_consume_stream(ss, id, len);
    st->stream.handler->on_body(&st->stream, (const char *)data, len);
    return 0;
}

static int on_frame_send(nghttp2_session *ss, const nghttp2_frame *frame, void *ud)
{
    (void)ud;
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ss, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    st->end_sent = 1;
    /* The response is whole but the request is not: tell the client to stop sending (RFC 9113
     * §8.1), which also closes the stream. */
    if (!nghttp2_session_get_stream_remote_close(ss, frame->hd.stream_id))
        nghttp2_submit_rst_stream(ss, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *ss, int32_t id, uint32_t code, void *ud)
{
    (void)code;
    (void)ud;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ss, id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ss, id, NULL);
    stream_free(st);
    return 0;
}

/* ---- sending ---- */

static void write_out(h2_t *h)
{
    if (h->olen == 0)
        return;
    uv_buf_t b;
    b.base = h->out;
    b.len = h->olen;
    h->olen = 0;
    int rv = ph_conn_write(h->conn, &b, 1);
    if (rv < 0 && rv != PH_ENOMEM && !h->closed) {
        /* the peer is gone */
        h->closed = 1;
        for (h2_stream_t *st = h->streams; st; st = st->next)
            detach(st, !st->end_sent);
        ph_conn_abort(h->conn);
    }
}

/* Streams whose queued response fell to the high-water mark hear so. */
static void notify_drains(h2_t *h)
{
    size_t mark = h->server->cfg.write_high_water;
    if (ph_conn_queued(h->conn) > mark)
        return;
    h2_stream_t *st = h->streams;
    while (st && !h->closed) {
        h2_stream_t *next = st->next; /* on_drain may end the stream */
        if (st->over && st->olen - st->ostart + st->files_len <= mark) {
            st->over = 0;
            if (st->attached && st->stream.handler)
                st->stream.handler->on_drain(&st->stream);
        }
        st = next;
    }
}

/* Frames nghttp2 has ready go to the connection, as far as its write queue takes them. */
static void flush(h2_t *h)
{
    if (h->closed)
        return;
    if (h->in_recv) {
        ph_loop_defer(h->server->loop, &h->flush_later);
        return;
    }
    size_t mark = h->server->cfg.write_high_water;
    while (!h->closed && ph_conn_queued(h->conn) <= mark) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->ss, &data);
        if (n < 0) {
            write_out(h);
            close_conn(h);
            return;
        }
        if (n == 0)
            break;
        if (put(&h->out, &h->olen, &h->ocap, data, (size_t)n) < 0) {
            close_conn(h);
            return;
        }
        if (h->olen >= OUT_CHUNK)
            write_out(h);
    }
    write_out(h);
    if (h->closed)
        return;
    notify_drains(h);
    if (h->closed)
        return;
    if (!nghttp2_session_want_read(h->ss) && !nghttp2_session_want_write(h->ss)) {
        close_conn(h);
        return;
    }
    if (h->draining && h->nstreams == 0 && !nghttp2_session_want_write(h->ss)) {
        close_conn(h);
        return;
    }
    update_timer(h);
}

static void schedule_flush(h2_t *h)
{
    if (!h->closed)
        ph_loop_defer(h->server->loop, &h->flush_later);
}

static void on_flush_later(ph_defer_t *d)
{
    flush((h2_t *)((char *)d - offsetof(h2_t, flush_later)));
}

/* ---- stream ops ---- */

static int check_headers(const ph_header_t *hs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!ph_is_token(hs[i].name.base, hs[i].name.len) ||
            !ph_is_field_value(hs[i].value.base, hs[i].value.len))
            return PH_EINVAL;
    }
    return 0;
}

/* Fields HTTP/2 forbids (RFC 9113 §8.2.2): framing and hop-by-hop, the server's own business. */
static int connection_specific(ph_slice_t nm)
{
    return ph_eq_lower(nm.base, nm.len, "connection", 10) ||
           ph_eq_lower(nm.base, nm.len, "keep-alive", 10) ||
           ph_eq_lower(nm.base, nm.len, "proxy-connection", 16) ||
           ph_eq_lower(nm.base, nm.len, "transfer-encoding", 17) ||
           ph_eq_lower(nm.base, nm.len, "upgrade", 7);
}

static int op_start(ph_stream_t *s, int status, const ph_header_t *hs, size_t n)
{
    h2_stream_t *st = STREAM_OF(s);
    if (!st->attached || st->h2->closed)
        return PH_ECLOSED;
    if (st->submitted)
        return PH_ESTATE;
    /* 101 accepts a WebSocket: on HTTP/2 that is a 200 whose DATA frames carry it (RFC 8441). */
    if (status == 101 && s->req.websocket)
        status = 200;
    if (status < 200 || status > 999 || check_headers(hs, n) < 0)
        return PH_EINVAL;
    int64_t cl = -1;
    int has_server = 0, has_date = 0;
    for (size_t i = 0; i < n; i++) {
        ph_slice_t nm = hs[i].name, v = hs[i].value;
        if (ph_eq_lower(nm.base, nm.len, "content-length", 14)) {
            int64_t x = ph_parse_decimal(v.base, v.len);
            if (x < 0 || (cl >= 0 && x != cl))
                return PH_EINVAL;
            cl = x;
        } else if (ph_eq_lower(nm.base, nm.len, "server", 6)) {
            has_server = 1;
        } else if (ph_eq_lower(nm.base, nm.len, "date", 4)) {
            has_date = 1;
        }
    }
    st->resp.n = 0;
    st->resp.len = 0;
    int rv = 0;
    for (size_t i = 0; i < n && rv == 0; i++) {
        if (connection_specific(hs[i].name) ||
            ph_eq_lower(hs[i].name.base, hs[i].name.len, "content-length", 14) ||
            ph_eq_lower(hs[i].name.base, hs[i].name.len, "sec-websocket-accept", 20))
            continue;
        rv = fields_add(&st->resp, hs[i].name.base, hs[i].name.len, hs[i].value.base,
                        hs[i].value.len, 1);
    }
    const ph_config_t *cfg = &st->h2->server->cfg;
    if (rv == 0 && cfg->server_header && !has_server)
        rv = fields_add(&st->resp, "server", 6, cfg->server_line.base + 8,
                        cfg->server_line.len - 10, 1);
    if (rv == 0 && cfg->date_header && !has_date)
        rv = fields_add(&st->resp, "date", 4, ph_date_now(), PH_DATE_LEN, 1);
    /* --header lines, pre-serialised as "name: value\r\n" for HTTP/1.1 */
    const char *p = cfg->extra_headers.base;
    const char *end = p ? p + cfg->extra_headers.len : NULL;
    while (rv == 0 && p < end) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *eol = colon ? memchr(colon, '\r', (size_t)(end - colon)) : NULL;
        if (eol == NULL)
            break;
        const char *v = colon + 1;
        while (v < eol && *v == ' ')
            v++;
        rv = fields_add(&st->resp, p, (size_t)(colon - p), v, (size_t)(eol - v), 1);
        p = eol + 2;
    }
    if (rv < 0) {
        st->resp.n = 0;
        return PH_ENOMEM;
    }
    st->status = status;
    st->resp_cl = cl;
    st->no_body = s->req.is_head || status == 204 || status == 304;
    st->started = 1;
    return 0;
}

static int submit(h2_stream_t *st, int end)
{
    size_t n = st->resp.n + 2;
    nghttp2_nv stack[32], *nv = n <= 32 ? stack : malloc(n * sizeof(nghttp2_nv));
    if (nv == NULL)
        return PH_ENOMEM;
    char code[4] = {(char)('0' + st->status / 100), (char)('0' + st->status / 10 % 10),
                    (char)('0' + st->status % 10), 0};
    size_t k = 0;
    nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)code, 7, 3, NGHTTP2_NV_FLAG_NONE};
    char num[24];
    if (st->resp_cl >= 0) {
        size_t nl = ph_u64toa((uint64_t)st->resp_cl, num);
        nv[k++] =
            (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)num, 14, nl, NGHTTP2_NV_FLAG_NONE};
    }
    for (size_t i = 0; i < st->resp.n; i++) {
        size_t *o = &st->resp.offs[i * 4];
        nv[k++] = (nghttp2_nv){(uint8_t *)st->resp.arena + o[0], (uint8_t *)st->resp.arena + o[2],
                               o[1], o[3], NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    int rv = nghttp2_submit_response(st->h2->ss, st->id, nv, k, end ? NULL : &dp);
    if (nv != stack)
        free(nv);
    if (rv != 0)
        return PH_ENOMEM;
    st->submitted = 1;
    return 0;
}

static int op_body(ph_stream_t *s, const char *data, size_t len, int more)
{
    h2_stream_t *st = STREAM_OF(s);
    h2_t *h = st->h2;
    if (!st->attached || h->closed)
        return PH_ECLOSED;
    if (!st->started || st->body_done)
        return PH_ESTATE;
    if (st->no_body)
        len = 0;
    if (st->resp_cl >= 0 && !st->no_body) {
        if (st->resp_sent + len > (uint64_t)st->resp_cl)
            return PH_EINVAL;
        if (!more && st->resp_sent + len < (uint64_t)st->resp_cl)
            return PH_EINVAL;
    }
    if (len && put(&st->obuf, &st->olen, &st->ocap, data, len) < 0)
        return PH_ENOMEM;
    if (!st->submitted) {
        int rv = submit(st, !more && len == 0);
        if (rv < 0) {
            st->olen -= len;
            return rv;
        }
    } else {
        nghttp2_session_resume_data(h->ss, st->id);
    }
    st->resp_sent += len;
    if (!more)
        st->body_done = 1;
    if (st->olen - st->ostart > h->server->cfg.write_high_water)
        st->over = 1;
    flush(h);
    return 0;
}

static int op_sendfile(ph_stream_t *s, int fd, uint64_t offset, uint64_t len, int more)
{
    h2_stream_t *st = STREAM_OF(s);
    h2_t *h = st->h2;
    if (!st->attached || h->closed || !st->started || st->body_done) {
        close(fd);
        return !st->attached || h->closed ? PH_ECLOSED : PH_ESTATE;
    }
    if (st->no_body || len == 0) {
        close(fd);
        return op_body(s, "", 0, more);
    }
    if (st->resp_cl >= 0 && (st->resp_sent + len > (uint64_t)st->resp_cl ||
                             (!more && st->resp_sent + len < (uint64_t)st->resp_cl))) {
        close(fd);
        return PH_EINVAL;
    }
    h2_file_t *f = malloc(sizeof(*f));
    if (f == NULL) {
        close(fd);
        return PH_ENOMEM;
    }
    if (!st->submitted) {
        int rv = submit(st, 0);
        if (rv < 0) {
            close(fd);
            free(f);
            return rv;
        }
    } else {
        nghttp2_session_resume_data(h->ss, st->id);
    }
    *f = (h2_file_t){.next = NULL, .fd = fd, .off = offset, .len = len, .at = st->olen};
    if (st->files_tail)
        st->files_tail->next = f;
    else
        st->files = f;
    st->files_tail = f;
    st->files_len += len;
    st->resp_sent += len;
    if (!more)
        st->body_done = 1;
    if (st->olen - st->ostart + st->files_len > h->server->cfg.write_high_water)
        st->over = 1;
    flush(h);
    return 0;
}

static int op_trailers(ph_stream_t *s, const ph_header_t *hs, size_t n)
{
    h2_stream_t *st = STREAM_OF(s);
    h2_t *h = st->h2;
    if (!st->attached || h->closed)
        return PH_ECLOSED;
    if (!st->started || st->body_done)
        return PH_ESTATE;
    if (check_headers(hs, n) < 0)
        return PH_EINVAL;
    if (st->resp_cl >= 0 && !st->no_body && st->resp_sent != (uint64_t)st->resp_cl)
        return PH_EINVAL;
    size_t bytes = 0, kept = 0;
    for (size_t i = 0; i < n; i++)
        bytes += hs[i].name.len + hs[i].value.len;
    st->trailers = malloc((n ? n : 1) * sizeof(ph_header_t));
    st->tarena = malloc(bytes ? bytes : 1);
    if (st->trailers == NULL || st->tarena == NULL) {
        free(st->trailers);
        free(st->tarena);
        st->trailers = NULL;
        st->tarena = NULL;
        return PH_ENOMEM;
    }
    char *p = st->tarena;
    for (size_t i = 0; i < n; i++) {
        if (connection_specific(hs[i].name))
            continue;
        for (size_t j = 0; j < hs[i].name.len; j++) {
            char c = hs[i].name.base[j];
            p[j] = (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
        }
        st->trailers[kept].name = (ph_slice_t){p, hs[i].name.len};
        p += hs[i].name.len;
        memcpy(p, hs[i].value.base, hs[i].value.len);
        st->trailers[kept].value = (ph_slice_t){p, hs[i].value.len};
        p += hs[i].value.len;
        kept++;
    }
    st->ntrailers = kept;
    st->has_trailers = kept > 0 && !st->no_body;
    if (!st->submitted) {
        int rv = submit(st, !st->has_trailers);
        if (rv < 0)
            return rv;
    } else {
        nghttp2_session_resume_data(h->ss, st->id);
    }
    st->body_done = 1;
    flush(h);
    return 0;
}

static void op_want_body(ph_stream_t *s)
{
    h2_stream_t *st = STREAM_OF(s);
    h2_t *h = st->h2;
    if (!st->attached || h->closed)
        return;
    if (s->req.expect_continue && !st->continue_sent && !st->started && !st->remote_done) {
        st->continue_sent = 1;
        nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE};
        nghttp2_submit_headers(h->ss, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
        schedule_flush(h);
    }
    st->paused = 0;
    if (st->held) {
        nghttp2_session_consume_stream(h->ss, st->id, st->held);
        st->held = 0;
        schedule_flush(h);
    }
}

static void op_pause_body(ph_stream_t *s)
{
    STREAM_OF(s)->paused = 1;
}

static void op_abort(ph_stream_t *s)
{
    h2_stream_t *st = STREAM_OF(s);
    h2_t *h = st->h2;
    if (!st->attached || h->closed)
        return;
    nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    detach(st, 1);
    schedule_flush(h);
}

static size_t op_queued(ph_stream_t *s)
{
    h2_stream_t *st = STREAM_OF(s);
    if (!st->attached || st->h2->closed)
        return 0;
    /* Above the mark the bridge waits for on_drain: the stream must be told when both its own
     * bytes and the connection's queue are back under it, whichever held it. */
    size_t q = st->olen - st->ostart + (size_t)st->files_len + ph_conn_queued(st->h2->conn);
    if (q > st->h2->server->cfg.write_high_water)
        st->over = 1;
    return q;
}

static const ph_stream_ops_t h2_ops = {
    .start = op_start,
    .body = op_body,
    .sendfile = op_sendfile,
    .trailers = op_trailers,
    .want_body = op_want_body,
    .pause_body = op_pause_body,
    .abort = op_abort,
    .queued = op_queued,
};

/* ---- connection events ---- */

static void on_read(ph_conn_t *conn)
{
    h2_t *h = conn->proto_data;
    if (h->closed)
        return;
    size_t avail = conn->rlen - conn->rstart;
    if (avail == 0)
        return;
    h->in_recv = 1;
    ssize_t rv = nghttp2_session_mem_recv(h->ss, (const uint8_t *)conn->rbuf + conn->rstart, avail);
    h->in_recv = 0;
    if (h->closed)
        return;
    if (rv < 0) {
        uint32_t code = NGHTTP2_INTERNAL_ERROR;
        if (rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
            code = NGHTTP2_ENHANCE_YOUR_CALM;
        ph_conn_consume(conn, avail);
        write_out(h);
        /* not HTTP/2 at all (a bad preface): no frame, just the close */
        if (!h->closed && rv != NGHTTP2_ERR_BAD_CLIENT_MAGIC)
            raw_goaway(h, code);
        close_conn(h);
        return;
    }
    ph_conn_consume(conn, (size_t)rv);
    ph_loop_cancel(h->server->loop, &h->flush_later);
    flush(h);
}

static void on_read_later(ph_defer_t *d)
{
    h2_t *h = (h2_t *)((char *)d - offsetof(h2_t, read_later));
    if (!h->closed && h->conn->rlen > h->conn->rstart)
        on_read(h->conn);
}

static void on_eof(ph_conn_t *conn, int err)
{
    h2_t *h = conn->proto_data;
    if (err < 0) {
        h->closed = 1;
        for (h2_stream_t *st = h->streams; st; st = st->next)
            detach(st, !st->end_sent);
        ph_conn_abort(conn);
        return;
    }
    /* The peer sent its FIN: no more frames can come, but it may still read (as an HTTP/1.1
     * client that half-closes after its request). Streams whose request is whole are answered;
     * those still waiting for request bytes never get them and are reset; then GOAWAY, and the
     * connection closes once the last answer is out. */
    for (h2_stream_t *st = h->streams; st && !h->closed; st = st->next) {
        if (st->remote_done)
            continue;
        nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        detach(st, 1);
    }
    drain(conn);
}

static void on_drain(ph_conn_t *conn)
{
    flush(conn->proto_data);
}

static void on_timeout(ph_conn_t *conn)
{
    h2_t *h = conn->proto_data;
    if (h->closed)
        return;
    int what = waiting_for(h);
    if (what == WAIT_BODY) {
        /* Bodies that stopped coming: those streams end (408 if nothing was answered yet, else
         * a reset); the connection and its other streams go on. */
        for (h2_stream_t *st = h->streams; st; st = st->next) {
            if (!st->head_done || !reading(st))
                continue;
            if (!st->submitted) {
                respond_simple(st, 408);
            } else {
                nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
                detach(st, 1);
            }
        }
        flush(h);
        return;
    }
    if (what == WAIT_NONE)
        return;
    /* Idle past the keep-alive (or header) time; or a header block, or a window shut on a
     * waiting response, that made no progress: the connection goes. */
    uint32_t code = what == WAIT_IDLE ? NGHTTP2_NO_ERROR : NGHTTP2_ENHANCE_YOUR_CALM;
    nghttp2_session_terminate_session(h->ss, code);
    h->draining = 1;
    flush(h);
    close_conn(h);
}

static void on_close(ph_conn_t *conn)
{
    h2_t *h = conn->proto_data;
    h->closed = 1;
    ph_loop_cancel(h->server->loop, &h->flush_later);
    ph_loop_cancel(h->server->loop, &h->read_later);
    while (h->streams)
        stream_free(h->streams);
}

static void on_free(ph_conn_t *conn)
{
    h2_t *h = conn->proto_data;
    nghttp2_session_del(h->ss);
    free(h->out);
    free(h);
}

static void drain(ph_conn_t *conn)
{
    h2_t *h = conn->proto_data;
    if (h->closed || h->draining)
        return;
    h->draining = 1;
    nghttp2_submit_goaway(h->ss, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ss),
                          NGHTTP2_NO_ERROR, NULL, 0);
    /* Open WebSockets hear it too: they close themselves (1001) before the deadline. What
     * they write is flushed after the walk, as within nghttp2's callbacks: a flush inside it
     * could end (and free) the next stream of the list. */
    unsigned in_recv = h->in_recv;
    h->in_recv = 1;
    for (h2_stream_t *st = h->streams; st && !h->closed; st = st->next) {
        if (st->attached && st->stream.req.websocket && st->stream.handler &&
            st->stream.handler->on_goaway)
            st->stream.handler->on_goaway(&st->stream);
    }
    h->in_recv = in_recv;
    flush(h);
}

static void expire(ph_conn_t *conn)
{
    h2_t *h = conn->proto_data;
    if (h->closed)
        return;
    drain(conn);
    for (h2_stream_t *st = h->streams; st && !h->closed; st = st->next) {
        if (!st->attached)
            continue;
        if (st->submitted) {
            nghttp2_submit_rst_stream(h->ss, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
            detach(st, 1);
        } else {
            st->resp.n = 0;
            respond_simple(st, 503);
        }
    }
    /* What nghttp2 can send now goes (the resets, the 503s as far as the windows let them),
     * and the connection closes behind it: time is up, no window is waited for. */
    flush(h);
    close_conn(h);
}

static const ph_conn_proto_t h2_proto = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_timeout = on_timeout,
    .on_close = on_close,
    .on_free = on_free,
    .drain = drain,
    .expire = expire,
};

/* ---- attaching ---- */

static nghttp2_session_callbacks *callbacks(void)
{
    static nghttp2_session_callbacks *cbs;
    if (cbs == NULL && nghttp2_session_callbacks_new(&cbs) == 0) {
        nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    }
    return cbs;
}

static h2_t *h2_new(ph_conn_t *conn)
{
    nghttp2_session_callbacks *cbs = callbacks();
    if (cbs == NULL)
        return NULL;
    h2_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    const ph_config_t *cfg = &conn->server->cfg;
    h->conn = conn;
    h->server = conn->server;
    h->flush_later.cb = on_flush_later;
    h->read_later.cb = on_read_later;
    h->tokens = FLOOD_BURST;
    h->tokens_at = uv_now(&conn->server->loop->uv);
    h->max_header_list = cfg->h2_max_header_list_size ? cfg->h2_max_header_list_size
                                                      : cfg->limit_request_header_size;
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        free(h);
        return NULL;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Resets are budgeted with the other cheap frames (our GOAWAY says ENHANCE_YOUR_CALM);
     * nghttp2's own limiter stays as a backstop above ours. */
    nghttp2_option_set_stream_reset_rate_limit(opt, FLOOD_BURST * 2, FLOOD_RATE * 2);
    nghttp2_option_set_max_continuations(opt, 16);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    int rv = nghttp2_session_server_new2(&h->ss, cbs, h, opt);
    nghttp2_option_del(opt);
    if (rv != 0) {
        free(h);
        return NULL;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->h2_max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->h2_initial_window_size},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, cfg->h2_max_frame_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)h->max_header_list},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    /* The last entry (RFC 8441's extended CONNECT) only when WebSockets are served. */
    size_t niv = sizeof(iv) / sizeof(iv[0]) - (cfg->ws ? 0 : 1);
    if (nghttp2_submit_settings(h->ss, NGHTTP2_FLAG_NONE, iv, niv) != 0 ||
        nghttp2_session_set_local_window_size(h->ss, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0) {
        nghttp2_session_del(h->ss);
        free(h);
        return NULL;
    }
    return h;
}

static void take_over(ph_conn_t *conn, h2_t *h)
{
    conn->proto = &h2_proto;
    conn->proto_data = h;
    ph_conn_speaks(conn, PH_PROTO_HTTP2);
    if (conn->rlen > conn->rstart)
        ph_loop_defer(h->server->loop, &h->read_later);
    if (h->server->draining)
        drain(conn);
    else
        schedule_flush(h);
    update_timer(h);
}

int ph_h2_attach(ph_conn_t *conn)
{
    h2_t *h = h2_new(conn);
    if (h == NULL)
        return PH_ENOMEM;
    take_over(conn, h);
    return 0;
}

int ph_h2_attach_upgrade(ph_conn_t *conn, const ph_h2_upgrade_t *up)
{
    h2_t *h = h2_new(conn);
    if (h == NULL)
        return PH_ENOMEM;
    const ph_request_t *r = up->req;
    h2_stream_t *st = stream_new(h, 1);
    int rv = st ? 0 : PH_ENOMEM;
    h->recent[h->nrecent++] = 1;
    if (rv == 0 &&
        nghttp2_session_upgrade2(h->ss, up->settings, up->settings_len, r->is_head, st) != 0)
        rv = PH_EINVAL;
    /* The HTTP/1.1 head as HTTP/2 fields: the pseudo-headers from the request line and Host,
     * the rest but the hop-by-hop fields of the upgrade itself. */
    ph_slice_t authority = {"", 0};
    for (size_t i = 0; rv == 0 && i < r->nheaders; i++) {
        ph_slice_t nm = r->headers[i].name, v = r->headers[i].value;
        if (ph_eq_lower(nm.base, nm.len, "host", 4)) {
            authority = v;
            continue;
        }
        if (connection_specific(nm) || ph_eq_lower(nm.base, nm.len, "http2-settings", 14) ||
            ph_eq_lower(nm.base, nm.len, "te", 2))
            continue;
        if (fields_add(&st->req, nm.base, nm.len, v.base, v.len, 0) < 0)
            rv = PH_ENOMEM;
    }
    const ph_slice_t ps[] = {r->method, r->target, PH_SLICE_LIT("http"), authority};
    for (int i = 0; rv == 0 && i < 4; i++) {
        st->pseudo[i][0] = st->req.len;
        st->pseudo[i][1] = ps[i].len + 1;
        if (put(&st->req.arena, &st->req.len, &st->req.cap, ps[i].base, ps[i].len) < 0)
            rv = PH_ENOMEM;
    }
    if (rv < 0) {
        if (st) {
            nghttp2_session_set_stream_user_data(h->ss, 1, NULL);
            stream_free(st);
        }
        nghttp2_session_del(h->ss);
        free(h->out);
        free(h);
        return rv;
    }
    take_over(conn, h);
    /* The body came whole with the upgrade: stream 1 is half-closed (remote). */
    st->remote_done = 1;
    open_stream(st, up->body_len == 0);
    if (st->attached && st->stream.handler && up->body_len) {
        st->body_received = up->body_len;
        st->stream.handler->on_body(&st->stream, up->body, up->body_len);
    }
    if (st->attached && st->stream.handler)
        st->stream.handler->on_body_end(&st->stream);
    return 0;
}
