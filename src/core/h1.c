#include "h1.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <llhttp.h>

#include "h2.h"
#include "ws.h"

/* Unconsumed pipelined input beyond this pauses reading until the current exchange is done. */
#define PIPELINE_BUFFER_MAX 65536

/* An app that answers before reading the request body: up to this much of the rest is read and
 * dropped to keep the connection; a longer rest is not worth reading, the connection closes. */
#define DRAIN_MAX (256 * 1024)

/* Header slots in the first pooled arrays (their bytes must fit PH_BLOCK_SIZE). */
#define HEADERS_FIRST 32

/* An `Upgrade: h2c` request with a longer body (or a chunked one) is served as HTTP/1.1: the
 * body would have to be held whole until the switch (RFC 9113 §3.2 lets a server ignore it). */
#define UPGRADE_BODY_MAX 65536

enum { EV_NONE, EV_HEADERS, EV_MESSAGE, EV_CHUNK };
enum { RESP_NONE, RESP_STARTED, RESP_BODY, RESP_DONE };

typedef struct {
    size_t name_off, name_len, value_off, value_len;
} hdr_pos_t;

typedef struct {
    ph_conn_t *conn;
    ph_server_t *server;
    llhttp_t parser;
    ph_defer_t resume; /* parse buffered input outside the caller's stack */
    ph_stream_t stream;

    /* Request head, copied into a per-connection arena (reused for every request). */
    char *arena;
    size_t arena_len, arena_cap;
    hdr_pos_t *pos;
    ph_header_t *headers;
    size_t nheaders, headers_cap;
    size_t pos_bytes, headers_bytes; /* allocated sizes of pos and headers */
    size_t url_len;
    size_t head_bytes;
    int last_was_value;
    int value_done; /* the last field's value ended; a value now needs a new name first */
    /* Line feeds in the head, counted to find obs-fold (llhttp joins folded lines silently):
     * a head without folds has one per header, plus the request line and the blank line. */
    size_t head_lfs;
    const char *head_from; /* where the request line began, within the current execute() */
    int counting;
    char last2[2]; /* the last two bytes llhttp consumed, for checks that span two reads */
    int event;
    int method_done; /* the request line's method was read (for a rejection's log line) */
    size_t url_kept; /* bytes of the target in the arena (a 414 keeps those under the limit) */
    /* While a parse error is answered: this execute()'s input, when the request began in it
     * (what the log line shows of a request llhttp stopped reading). */
    ph_slice_t err_raw;
    int err_status; /* set by a callback that fails the request */
    const char *err_text;

    /* Request trailer fields (chunked bodies), kept like the head until the message ends. */
    char *tarena;
    size_t tarena_len, tarena_cap;
    hdr_pos_t *tpos;
    size_t ntr, tpos_bytes;

    /* h2c: fresh: no byte read yet (the HTTP/2 preface may come); upgrade: this request asked
     * for `Upgrade: h2c` and gets it once its body is in (up_body); switching: do it now. */
    unsigned fresh : 1, up_h2c : 1, up_conn : 1, upgrade : 1, switching : 1;
    /* WebSocket: the request said `Upgrade: websocket` / `Connection: upgrade`; tunnel: the 101
     * is out and the connection carries the WebSocket's bytes both ways (stream.h). */
    unsigned up_ws : 1, up_ws_conn : 1, tunnel : 1;
    int ws_versions; /* Sec-WebSocket-Version fields seen, and whether the one was 13 */
    unsigned ws_version_ok : 1;
    int ws_keys;
    ph_slice_t ws_key;
    char ws_accept[29]; /* its Sec-WebSocket-Accept, made when the handshake is checked */
    int up_settings;    /* HTTP2-Settings fields seen */
    ph_slice_t up_settings_value;
    uint8_t *h2_settings;
    size_t h2_settings_len;
    char *up_body;
    size_t up_len, up_cap;

    /* Request state. head_timer: the header deadline runs (from the first byte of a request
     * on, never extended). eof_pending: the peer sent its FIN; what it asked for is answered,
     * then the connection closes. */
    unsigned in_message : 1, headers_done : 1, msg_complete : 1, stream_open : 1, keep_alive : 1,
        continue_sent : 1, processing : 1, closed : 1, draining : 1, eof_pending : 1,
        head_timer : 1;
    uint64_t body_received;
    uint64_t drain_limit; /* body_received beyond which an unread body is not drained */

    /* Response state: what op_start() accepted, serialised into obuf until the first body. */
    int resp_state;
    int resp_status;
    int64_t resp_cl; /* declared or computed; -1 = none */
    uint64_t resp_sent;
    unsigned resp_chunked : 1, resp_want_chunked : 1, resp_no_body : 1, resp_conn_close : 1;
    char *obuf;
    size_t olen, ocap;
} h1_t;

static const ph_conn_proto_t h1_proto;
static const ph_stream_ops_t h1_ops;
static llhttp_settings_t settings;

static void process(h1_t *h);
static void fail(h1_t *h, int status, const char *text);
static void fail_with(h1_t *h, int status, const char *text, const char *header_line);

/* ---- small buffers ---- */

/* Per-request buffers start as pooled blocks and grow with realloc when a request needs more. */
static int reserve(h1_t *h, char **buf, size_t *cap, size_t len, size_t more)
{
    if (len + more <= *cap)
        return 0;
    if (*buf == NULL && len + more <= PH_BLOCK_SIZE) {
        *buf = ph_pool_get(&h->server->blocks, PH_BLOCK_SIZE);
        if (*buf == NULL)
            return PH_ENOMEM;
        *cap = PH_BLOCK_SIZE;
        return 0;
    }
    size_t ncap = *cap ? *cap : PH_BLOCK_SIZE;
    while (ncap < len + more)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (nb == NULL)
        return PH_ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

static void release(h1_t *h, void **buf, size_t *cap)
{
    if (*cap == PH_BLOCK_SIZE)
        ph_pool_put(&h->server->blocks, *buf);
    else
        free(*buf);
    *buf = NULL;
    *cap = 0;
}

/* The connection is idle: its per-request buffers go back to the pool. */
static void release_buffers(h1_t *h)
{
    release(h, (void **)&h->arena, &h->arena_cap);
    release(h, (void **)&h->obuf, &h->ocap);
    release(h, (void **)&h->pos, &h->pos_bytes);
    release(h, (void **)&h->headers, &h->headers_bytes);
    release(h, (void **)&h->tarena, &h->tarena_cap);
    release(h, (void **)&h->tpos, &h->tpos_bytes);
    h->headers_cap = 0;
}

static int arena_add(h1_t *h, const char *p, size_t n, int lower)
{
    if (reserve(h, &h->arena, &h->arena_cap, h->arena_len, n) < 0)
        return -1;
    char *d = h->arena + h->arena_len;
    if (lower) {
        for (size_t i = 0; i < n; i++) {
            char c = p[i];
            d[i] = (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
        }
    } else {
        memcpy(d, p, n);
    }
    h->arena_len += n;
    return 0;
}

static int out_add(h1_t *h, const char *p, size_t n)
{
    if (reserve(h, &h->obuf, &h->ocap, h->olen, n) < 0)
        return PH_ENOMEM;
    memcpy(h->obuf + h->olen, p, n);
    h->olen += n;
    return 0;
}

#define OUT_LIT(h, s) out_add((h), (s), sizeof(s) - 1)

static uv_buf_t buf_of(const char *base, size_t len)
{
    uv_buf_t b;
    b.base = (char *)base; /* not uv_buf_init(): its length is an unsigned int */
    b.len = len;
    return b;
}

/* ---- llhttp callbacks ---- */

/* The header deadline counts from the first byte of a request (an empty line before it
 * counts too) and is never extended by more bytes. */
static void start_head_timer(h1_t *h)
{
    if (h->head_timer)
        return;
    h->head_timer = 1;
    ph_conn_set_timeout(h->conn, h->server->cfg.timeout_request_header_ms);
}

/* The body deadline is about progress: it moves with every body byte read. */
static void arm_body_timer(h1_t *h)
{
    ph_conn_set_timeout(h->conn, h->server->cfg.timeout_request_body_ms);
}

static int cb_message_begin(llhttp_t *p)
{
    h1_t *h = p->data;
    h->in_message = 1;
    h->headers_done = 0;
    h->arena_len = 0;
    h->nheaders = 0;
    h->url_len = 0;
    h->url_kept = 0;
    h->method_done = 0;
    h->head_bytes = 0;
    h->last_was_value = 1;
    h->value_done = 1;
    h->body_received = 0;
    h->err_status = 0;
    h->ntr = 0;
    h->tarena_len = 0;
    h->up_h2c = h->up_conn = 0;
    h->up_settings = 0;
    h->up_ws = h->up_ws_conn = 0;
    h->ws_versions = h->ws_keys = 0;
    h->ws_version_ok = 0;
    start_head_timer(h);
    return 0;
}

static int user_error(h1_t *h, int status, const char *text)
{
    h->err_status = status;
    h->err_text = text;
    return HPE_USER;
}

static int cb_method(llhttp_t *p, const char *at, size_t len)
{
    h1_t *h = p->data;
    (void)len;
    if (!h->counting && !h->headers_done) {
        h->counting = 1;
        h->head_from = at;
        h->head_lfs = 0;
    }
    return 0;
}

static int cb_method_complete(llhttp_t *p)
{
    ((h1_t *)p->data)->method_done = 1;
    return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    h1_t *h = p->data;
    size_t limit = h->server->cfg.limit_request_line;
    h->url_len += len;
    if (h->url_len > limit) {
        size_t keep = len - (h->url_len - limit); /* the log line shows the start of it */
        if (keep && arena_add(h, at, keep, 0) == 0)
            h->url_kept += keep;
        return user_error(h, 414, "Request-target too long");
    }
    if (arena_add(h, at, len, 0) < 0)
        return user_error(h, 500, "Out of memory");
    h->url_kept += len;
    return 0;
}

/* Trailer fields of a chunked request: kept (names lower-cased) for the bridge, under the same
 * count and size limits as the head. */
static int trailer_name(h1_t *h, const char *at, size_t len)
{
    if (h->last_was_value) {
        if (h->ntr >= h->server->cfg.limit_request_headers)
            return user_error(h, 431, "Too many request trailer fields");
        if (reserve(h, (char **)&h->tpos, &h->tpos_bytes, h->ntr * sizeof(hdr_pos_t),
                    sizeof(hdr_pos_t)) < 0)
            return user_error(h, 500, "Out of memory");
        hdr_pos_t *tp = &h->tpos[h->ntr++];
        tp->name_off = h->tarena_len;
        tp->name_len = tp->value_off = tp->value_len = 0;
        h->last_was_value = 0;
    }
    if (reserve(h, &h->tarena, &h->tarena_cap, h->tarena_len, len) < 0)
        return user_error(h, 500, "Out of memory");
    for (size_t i = 0; i < len; i++) {
        char c = at[i];
        h->tarena[h->tarena_len + i] = (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
    }
    h->tarena_len += len;
    h->tpos[h->ntr - 1].name_len += len;
    return 0;
}

static int trailer_value(h1_t *h, const char *at, size_t len)
{
    hdr_pos_t *tp = &h->tpos[h->ntr - 1];
    if (!h->last_was_value) {
        tp->value_off = h->tarena_len;
        h->last_was_value = 1;
    }
    if (reserve(h, &h->tarena, &h->tarena_cap, h->tarena_len, len) < 0)
        return user_error(h, 500, "Out of memory");
    memcpy(h->tarena + h->tarena_len, at, len);
    h->tarena_len += len;
    tp->value_len += len;
    return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    h1_t *h = p->data;
    if (len == 0)
        return 0;
    const ph_config_t *cfg = &h->server->cfg;
    h->head_bytes += len;
    if (h->head_bytes > cfg->limit_request_header_size)
        return user_error(h, 431, "Request header fields too large");
    /* llhttp lets "Name : value" through; RFC 9112 §5.1 says 400 (a smuggling vector). */
    if (!ph_is_token(at, len))
        return user_error(h, 400, "Invalid character in header name");
    h->value_done = 0;
    if (h->headers_done)
        return trailer_name(h, at, len);
    if (h->last_was_value) {
        if (h->nheaders >= cfg->limit_request_headers)
            return user_error(h, 431, "Too many request header fields");
        if (h->nheaders == h->headers_cap) {
            /* The first arrays are pooled blocks; more headers than fit come from realloc. */
            size_t ncap = h->headers_cap ? h->headers_cap * 2 : HEADERS_FIRST;
            if (reserve(h, (char **)&h->pos, &h->pos_bytes, 0, ncap * sizeof(*h->pos)) < 0 ||
                reserve(h, (char **)&h->headers, &h->headers_bytes, 0, ncap * sizeof(*h->headers)) <
                    0)
                return user_error(h, 500, "Out of memory");
            h->headers_cap = ncap;
        }
        hdr_pos_t *hp = &h->pos[h->nheaders++];
        hp->name_off = h->arena_len;
        hp->name_len = 0;
        hp->value_off = 0;
        hp->value_len = 0;
        h->last_was_value = 0;
    }
    h->pos[h->nheaders - 1].name_len += len;
    return arena_add(h, at, len, 1) < 0 ? user_error(h, 500, "Out of memory") : 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    h1_t *h = p->data;
    if (len == 0)
        return 0;
    h->head_bytes += len;
    if (h->head_bytes > h->server->cfg.limit_request_header_size)
        return user_error(h, 431, "Request header fields too large");
    /* llhttp tolerates some of these; RFC 9112 §5.5 does not (CR, LF, NUL: smuggling vectors). */
    if (!ph_is_field_value(at, len))
        return user_error(h, 400, "Invalid character in header value");
    if (h->value_done) /* llhttp passes ": value" with no name callback at all */
        return user_error(h, 400, "Header field without a name");
    if (h->headers_done)
        return trailer_value(h, at, len);
    hdr_pos_t *hp = &h->pos[h->nheaders - 1];
    if (!h->last_was_value) {
        hp->value_off = h->arena_len;
        h->last_was_value = 1;
    }
    hp->value_len += len;
    return arena_add(h, at, len, 0) < 0 ? user_error(h, 500, "Out of memory") : 0;
}

static int cb_header_value_complete(llhttp_t *p)
{
    h1_t *h = p->data;
    h->value_done = 1;
    if (h->headers_done) {
        if (!h->last_was_value && h->ntr) /* an empty value: no value callback came */
            h->tpos[h->ntr - 1].value_off = h->tarena_len;
        h->last_was_value = 1;
        return 0;
    }
    if (h->nheaders == 0) {
        h->last_was_value = 1;
        return 0;
    }
    if (!h->last_was_value) {
        /* An empty value: no value callback came. */
        h->pos[h->nheaders - 1].value_off = h->arena_len;
        h->last_was_value = 1;
    }
    return 0;
}

/* RFC 9112 §6.1: codings must be known, chunked must come last and only once. */
static int check_transfer_encoding(h1_t *h, ph_slice_t v, int *chunked)
{
    const char *p = v.base, *end = v.base + v.len;
    int last_chunked = 0, seen_chunked = 0;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',' && *p != ';')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (p < end && *p == ';') /* parameters: not for any coding we know */
            return user_error(h, 501, "Unsupported transfer coding");
        if (e == s)
            continue;
        if (ph_eq_lower(s, (size_t)(e - s), "chunked", 7)) {
            if (seen_chunked)
                return user_error(h, 400, "Transfer-Encoding repeats chunked");
            seen_chunked = last_chunked = 1;
        } else {
            return user_error(h, 501, "Unsupported transfer coding");
        }
    }
    if (!last_chunked)
        return user_error(h, 400, "Transfer-Encoding does not end in chunked");
    *chunked = 1;
    return 0;
}

static int cb_headers_complete(llhttp_t *p)
{
    h1_t *h = p->data;
    ph_request_t *r = &h->stream.req;
    h->headers_done = 1;
    memset(r, 0, sizeof(*r));
    r->content_length = -1;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    if (p->http_major != 1 || p->http_minor > 1)
        return user_error(h, 505, "HTTP version not supported");
    const char *m = llhttp_method_name((llhttp_method_t)p->method);
    r->method = (ph_slice_t){m, strlen(m)};
    r->is_head = p->method == HTTP_HEAD;
    if (p->method == HTTP_CONNECT)
        return user_error(h, 501, "CONNECT is not supported");
    /* No protocol takes an upgrade yet: serve the request as HTTP/1.1 and go on with keep-alive
     * (llhttp would otherwise stop after it, leaving the connection wedged). */
    p->upgrade = 0;

    int hosts = 0, te = 0, cls = 0, chunked = 0;
    for (size_t i = 0; i < h->nheaders; i++) {
        hdr_pos_t *hp = &h->pos[i];
        const char *v = h->arena + hp->value_off;
        size_t vl = hp->value_len;
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        h->headers[i].name = (ph_slice_t){h->arena + hp->name_off, hp->name_len};
        h->headers[i].value = (ph_slice_t){v, vl};
        ph_slice_t n = h->headers[i].name;
        switch (n.len) {
        case 2:
            if (memcmp(n.base, "te", 2) == 0 && ph_has_token(v, vl, "trailers", 8))
                r->te_trailers = 1;
            break;
        case 7:
            if (memcmp(n.base, "upgrade", 7) == 0) {
                if (ph_has_token(v, vl, "h2c", 3))
                    h->up_h2c = 1;
                if (ph_has_token(v, vl, "websocket", 9))
                    h->up_ws = 1;
            }
            break;
        case 10:
            if (memcmp(n.base, "connection", 10) == 0 && ph_has_token(v, vl, "upgrade", 7)) {
                h->up_ws_conn = 1;
                if (ph_has_token(v, vl, "http2-settings", 14))
                    h->up_conn = 1;
            }
            break;
        case 17:
            if (memcmp(n.base, "sec-websocket-key", 17) == 0) {
                h->ws_keys++;
                h->ws_key = (ph_slice_t){v, vl};
                break;
            }
            if (memcmp(n.base, "transfer-encoding", 17) == 0) {
                te++;
                if (check_transfer_encoding(h, h->headers[i].value, &chunked) != 0)
                    return HPE_USER;
            }
            break;
        case 21:
            if (memcmp(n.base, "sec-websocket-version", 21) == 0) {
                h->ws_versions++;
                h->ws_version_ok = vl == 2 && v[0] == '1' && v[1] == '3';
            }
            break;
        case 4:
            if (memcmp(n.base, "host", 4) == 0)
                hosts++;
            break;
        case 6:
            if (memcmp(n.base, "expect", 6) == 0 && ph_eq_lower(v, vl, "100-continue", 12))
                r->expect_continue = 1;
            break;
        case 14:
            if (memcmp(n.base, "content-length", 14) == 0) {
                cls++;
                r->content_length = ph_parse_decimal(v, vl);
                if (r->content_length < 0)
                    return user_error(h, 400, "Invalid Content-Length");
            } else if (memcmp(n.base, "http2-settings", 14) == 0) {
                h->up_settings++;
                h->up_settings_value = (ph_slice_t){v, vl};
            }
            break;
        }
    }
    /* RFC 9112 §3.2: exactly one Host in HTTP/1.1 (and at most one in 1.0). */
    if (hosts > 1 || (hosts == 0 && p->http_minor == 1))
        return user_error(h, 400, hosts ? "Duplicate Host header" : "Missing Host header");
    if (te > 1)
        return user_error(h, 400, "Multiple Transfer-Encoding headers");
    if (te && cls)
        return user_error(h, 400, "Both Transfer-Encoding and Content-Length");
    if (cls > 1)
        return user_error(h, 400, "Multiple Content-Length headers");
    if (te && p->http_minor == 0)
        return user_error(h, 400, "Transfer-Encoding in an HTTP/1.0 request");
    r->chunked = chunked;
    r->headers = h->headers;
    r->nheaders = h->nheaders;

    /* The target: origin-form, absolute-form (scheme://authority/path) or asterisk-form. */
    const char *t = h->arena, *tend = h->arena + h->url_len;
    r->target = (ph_slice_t){t, h->url_len};
    const char *path = t;
    if (h->url_len && *t != '/' && *t != '*') {
        const char *sep = memchr(t, ':', h->url_len);
        if (sep && sep + 2 < tend && sep[1] == '/' && sep[2] == '/') {
            const char *slash = memchr(sep + 3, '/', (size_t)(tend - sep - 3));
            const char *q = memchr(sep + 3, '?', (size_t)(tend - sep - 3));
            if (slash == NULL || (q && q < slash))
                path = q ? q : tend; /* no path: "/" is implied */
            else
                path = slash;
        } else {
            return user_error(h, 400, "Invalid request-target");
        }
    }
    /* A #fragment is the client's alone (RFC 9110 §4.2.5); one sent anyway is left out. */
    const char *hash = memchr(path, '#', (size_t)(tend - path));
    if (hash)
        tend = hash;
    const char *q = memchr(path, '?', (size_t)(tend - path));
    r->path = (ph_slice_t){path, (size_t)((q ? q : tend) - path)};
    r->query = q ? (ph_slice_t){q + 1, (size_t)(tend - q - 1)} : (ph_slice_t){tend, 0};
    h->event = EV_HEADERS;
    return HPE_PAUSED;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    h1_t *h = p->data;
    h->body_received += len;
    uint64_t limit = h->server->cfg.limit_request_body;
    if (limit && h->body_received > limit)
        return user_error(h, 413, "Request body too large");
    if (h->resp_state == RESP_DONE && h->body_received > h->drain_limit)
        return user_error(h, 413, "Unread request body too large to drain");
    if (!h->conn->paused)
        arm_body_timer(h);
    if (h->upgrade) {
        if (h->up_len + len > h->up_cap) {
            size_t ncap = h->up_cap ? h->up_cap * 2 : 4096;
            while (ncap < h->up_len + len)
                ncap *= 2;
            char *nb = realloc(h->up_body, ncap);
            if (nb == NULL)
                return user_error(h, 500, "Out of memory");
            h->up_body = nb;
            h->up_cap = ncap;
        }
        memcpy(h->up_body + h->up_len, at, len);
        h->up_len += len;
        return 0;
    }
    if (h->stream_open && h->stream.handler)
        h->stream.handler->on_body(&h->stream, at, len);
    return 0;
}

/* llhttp 8 skips the two bytes after chunk data without looking at them ("helloXX0\r\n"
 * passes), a smuggling vector fixed only in llhttp 9: pause here and check them ourselves. */
static int cb_chunk_complete(llhttp_t *p)
{
    h1_t *h = p->data;
    h->event = EV_CHUNK;
    return HPE_PAUSED;
}

static int cb_message_complete(llhttp_t *p)
{
    h1_t *h = p->data;
    h->event = EV_MESSAGE;
    return HPE_PAUSED;
}

/* ---- exchange lifecycle ---- */

static void release_stream(h1_t *h)
{
    if (!h->stream_open)
        return;
    h->stream_open = 0;
    h->server->nstreams--;
    if (h->stream.handler)
        h->stream.handler->on_release(&h->stream);
    h->stream.handler = NULL;
    h->stream.user = NULL;
}

static void disconnect_stream(h1_t *h)
{
    if (h->stream_open && h->stream.handler)
        h->stream.handler->on_disconnect(&h->stream);
    release_stream(h);
}

static void close_conn(h1_t *h, int linger)
{
    if (h->closed)
        return;
    h->closed = 1;
    disconnect_stream(h);
    ph_conn_close(h->conn, linger);
}

/* The peer is gone, or a response is cut short: a reset, never a FIN that could pass for the
 * end of a close-delimited body. */
static void abort_conn(h1_t *h)
{
    if (h->closed)
        return;
    h->closed = 1;
    disconnect_stream(h);
    ph_conn_abort(h->conn);
}

/* Both halves of the exchange are done: next request, or close. */
static void finish_exchange(h1_t *h)
{
    release_stream(h);
    ph_conn_t *c = h->conn;
    int buffered = c->rlen > c->rstart;
    if (!h->keep_alive || h->draining || (h->eof_pending && !buffered)) {
        close_conn(h, 1);
        return;
    }
    h->in_message = 0;
    h->msg_complete = 0;
    h->resp_state = RESP_NONE;
    h->continue_sent = 0;
    h->head_timer = 0;
    ph_conn_set_timeout(c, h->server->cfg.timeout_keep_alive_ms);
    ph_conn_resume(c);
    if (!buffered) {
        release_buffers(h); /* idle: hold no per-request memory while waiting */
        return;
    }
    if (!h->processing) /* else the loop in process() goes on */
        ph_loop_defer(h->server->loop, &h->resume);
}

static void response_done(h1_t *h)
{
    h->resp_state = RESP_DONE;
    if (h->msg_complete) {
        finish_exchange(h);
        return;
    }
    /* The app answered before reading the whole body. finish_head() decided whether the rest
     * is worth reading to keep the connection (and said `connection: close` if not). */
    release_stream(h);
    if (!h->keep_alive) {
        close_conn(h, 1); /* lingering reads and drops what the client still sends */
        return;
    }
    h->drain_limit = h->body_received + DRAIN_MAX;
    arm_body_timer(h);
    ph_conn_resume(h->conn);
    if (h->conn->rlen > h->conn->rstart && !h->processing)
        ph_loop_defer(h->server->loop, &h->resume);
}

static int body_expected(const ph_request_t *r)
{
    return r->content_length > 0 || r->chunked;
}

/* RFC 7540 §3.2 (kept by curl and nghttp though RFC 9113 dropped it): `Upgrade: h2c` with one
 * valid HTTP2-Settings named in Connection. Anything less is served as plain HTTP/1.1. */
static int want_h2c(h1_t *h)
{
    const ph_request_t *r = &h->stream.req;
    if (!h->up_h2c || !h->up_conn || h->up_settings != 1 || h->server->cfg.http != PH_HTTP_AUTO ||
        h->conn->tls || r->http_minor != 1 || h->draining || r->chunked || r->expect_continue ||
        r->content_length > UPGRADE_BODY_MAX)
        return 0;
    ph_slice_t v = h->up_settings_value;
    uint8_t *buf = malloc(v.len * 3 / 4 + 3);
    ptrdiff_t n = buf ? ph_base64url_decode(v.base, v.len, buf) : -1;
    for (ptrdiff_t i = 0; n > 0 && i + 6 <= n; i += 6) {
        unsigned id = (unsigned)buf[i] << 8 | buf[i + 1];
        uint32_t val = (uint32_t)buf[i + 2] << 24 | (uint32_t)buf[i + 3] << 16 |
                       (uint32_t)buf[i + 4] << 8 | buf[i + 5];
        if ((id == 2 && val > 1) || (id == 4 && val > 0x7fffffff) ||
            (id == 5 && (val < 16384 || val > 16777215)))
            n = -1;
    }
    if (n < 0 || n % 6 != 0) {
        free(buf);
        return 0;
    }
    free(h->h2_settings);
    h->h2_settings = buf;
    h->h2_settings_len = (size_t)n;
    return 1;
}

/* RFC 6455 §4.2.1: a GET on HTTP/1.1 with `Upgrade: websocket` and `Connection: upgrade` is a
 * WebSocket handshake (plain HTTP when WebSockets are off). 1: a valid one; 0: not one; -1: a
 * broken one, answered here (426 names the version we speak, §4.4). */
static int websocket_handshake(h1_t *h)
{
    const ph_request_t *r = &h->stream.req;
    if (!h->up_ws || !h->up_ws_conn || !h->server->cfg.ws || r->http_minor != 1 ||
        h->parser.method != HTTP_GET)
        return 0;
    if (h->ws_versions != 1 || !h->ws_version_ok) {
        fail_with(h, 426, "Unsupported WebSocket version", "sec-websocket-version: 13\r\n");
        return -1;
    }
    if (h->ws_keys != 1 || ph_ws_accept_key(h->ws_key.base, h->ws_key.len, h->ws_accept) < 0) {
        fail(h, 400, "Invalid Sec-WebSocket-Key");
        return -1;
    }
    if (body_expected(r)) {
        fail(h, 400, "A WebSocket handshake with a body");
        return -1;
    }
    return 1;
}

static void on_headers(h1_t *h)
{
    ph_request_t *r = &h->stream.req;
    h->head_timer = 0;
    ph_conn_set_timeout(h->conn, 0);
    if (h->head_lfs != h->nheaders + 2) {
        /* RFC 9112 §5.2: a server may reject obs-fold with 400; joining lines is riskier. */
        fail(h, 400, "Obsolete line folding in a header");
        return;
    }
    uint64_t limit = h->server->cfg.limit_request_body;
    if (limit && r->content_length > 0 && (uint64_t)r->content_length > limit) {
        fail(h, 413, "Request body too large");
        return;
    }
    h->keep_alive = llhttp_should_keep_alive(&h->parser) && !h->draining;
    h->resp_state = RESP_NONE;
    h->resp_cl = -1;
    h->resp_sent = 0;
    h->resp_chunked = h->resp_want_chunked = h->resp_no_body = h->resp_conn_close = 0;
    h->continue_sent = 0;
    h->drain_limit = UINT64_MAX;
    /* A client that expects a 100 sends nothing before it: the body deadline starts when the
     * 100 goes out (op_want_body). */
    if (body_expected(r) && !(r->expect_continue && r->http_minor >= 1))
        arm_body_timer(h);
    if (want_h2c(h)) {
        h->upgrade = 1; /* to HTTP/2 once the body is in: it goes to the app as stream 1 */
        return;
    }
    int ws = websocket_handshake(h);
    if (ws < 0)
        return;
    r->websocket = ws;
    h->stream.ops = &h1_ops;
    h->stream.answered = 0;
    h->stream.handler = NULL;
    h->stream.user = NULL;
    h->stream.peer = &h->conn->peer;
    h->stream.local = &h->conn->local;
    h->stream.scheme = h->conn->tls ? "https" : "http";
    h->stream.tls = h->conn->tls;
    h->stream_open = 1;
    ph_server_open_stream(h->server, &h->stream);
}

static void on_message(h1_t *h)
{
    h->msg_complete = 1;
    if (h->upgrade) {
        h->switching = 1; /* process() hands the connection over, then returns */
        return;
    }
    if (h->stream_open) {
        ph_conn_set_timeout(h->conn, 0); /* the app has the whole request: no deadline of ours */
        if (h->ntr && h->stream.handler && h->stream.handler->on_trailers) {
            ph_header_t tr[h->ntr];
            for (size_t i = 0; i < h->ntr; i++) {
                hdr_pos_t *tp = &h->tpos[i];
                const char *v = h->tarena + tp->value_off;
                size_t vl = tp->value_len;
                while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                    vl--;
                tr[i] = (ph_header_t){{h->tarena + tp->name_off, tp->name_len}, {v, vl}};
            }
            h->stream.handler->on_trailers(&h->stream, tr, h->ntr);
        }
        if (h->stream_open && h->stream.handler)
            h->stream.handler->on_body_end(&h->stream);
    }
    if (h->resp_state == RESP_DONE)
        finish_exchange(h);
}

/* llhttp rejects a Transfer-Encoding not ending in chunked before we see the head; RFC 9112 §6.1
 * still wants 501 when a coding is one we do not know. */
static int unknown_coding(h1_t *h)
{
    for (size_t i = 0; i < h->nheaders; i++) {
        hdr_pos_t *hp = &h->pos[i];
        if (hp->name_len != 17 || memcmp(h->arena + hp->name_off, "transfer-encoding", 17) != 0)
            continue;
        int chunked = 0;
        ph_slice_t v = {h->arena + hp->value_off, hp->value_len};
        if (check_transfer_encoding(h, v, &chunked) != 0 && h->err_status == 501)
            return 1;
    }
    h->err_status = 0;
    return 0;
}

static int parse_error_status(h1_t *h, llhttp_errno_t err, const char **text)
{
    if (h->err_status) {
        /* One of our callbacks failed the request (llhttp may report it under its own code). */
        *text = h->err_text;
        return h->err_status;
    }
    switch (err) {
    case HPE_INVALID_TRANSFER_ENCODING:
        if (unknown_coding(h)) {
            *text = "Unsupported transfer coding";
            return 501;
        }
        *text = "Transfer-Encoding does not end in chunked";
        return 400;
    case HPE_INVALID_VERSION: *text = "Invalid HTTP version"; return 400;
    case HPE_INVALID_METHOD: *text = "Invalid or unsupported method"; return 400;
    /* Our own words for every answer: llhttp's reasons name its internals
     * ("Pause on PRI/Upgrade"), which are no business of a client's. */
    case HPE_PAUSED_H2_UPGRADE: *text = "HTTP/2 is not served on this connection"; return 400;
    case HPE_INVALID_URL: *text = "Invalid request target"; return 400;
    case HPE_INVALID_HEADER_TOKEN: *text = "Invalid header field"; return 400;
    case HPE_INVALID_CONTENT_LENGTH: *text = "Invalid Content-Length"; return 400;
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        *text = "Content-Length together with Transfer-Encoding";
        return 400;
    case HPE_INVALID_CHUNK_SIZE: *text = "Invalid chunk size"; return 400;
    case HPE_CR_EXPECTED:
    case HPE_LF_EXPECTED: *text = "Invalid line ending"; return 400;
    case HPE_UNEXPECTED_SPACE: *text = "Unexpected whitespace"; return 400;
    default: *text = "Malformed request"; return 400;
    }
}

/* llhttp accepts only the versions it knows; an HTTP/d.d it does not is a 505, not a 400. */
static int version_status(h1_t *h, const char *pos)
{
    const ph_conn_t *c = h->conn;
    const char *start = c->rbuf + c->rstart, *end = c->rbuf + c->rlen;
    if (pos < start || pos > end)
        return 400;
    const char *v = pos;
    while (v > start && v[-1] != ' ' && v[-1] != '\n')
        v--;
    if (end - v >= 8 && memcmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' && v[6] == '.' &&
        v[7] >= '0' && v[7] <= '9' &&
        (end - v == 8 || (v[8] == '\r' && (end - v == 9 || v[9] == '\n'))))
        return 505;
    return 400;
}

/* HTTP/2 has the connection now: the HTTP/1.1 side goes. */
static void h1_free(h1_t *h)
{
    ph_loop_cancel(h->server->loop, &h->resume);
    release_buffers(h);
    free(h->up_body);
    free(h->h2_settings);
    free(h);
}

static void upgrade_now(h1_t *h)
{
    ph_conn_t *c = h->conn;
    static const char resp[] =
        "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n";
    uv_buf_t b = buf_of(resp, sizeof(resp) - 1);
    ph_h2_upgrade_t up = {&h->stream.req, h->h2_settings, h->h2_settings_len, h->up_body,
                          h->up_len};
    h->head_timer = 0;
    ph_conn_set_timeout(c, 0);
    if (ph_conn_write(c, &b, 1) < 0 || ph_h2_attach_upgrade(c, &up) < 0) {
        h->processing = 0;
        abort_conn(h); /* the 101 may be out: only a reset is safe */
        return;
    }
    h1_free(h);
}

static void prior_knowledge(h1_t *h)
{
    ph_conn_t *c = h->conn;
    h->head_timer = 0;
    if (ph_h2_attach(c) < 0) {
        close_conn(h, 0);
        return;
    }
    h1_free(h);
}

static void process(h1_t *h)
{
    if (h->processing || h->closed)
        return;
    h->processing = 1;
    ph_conn_t *c = h->conn;
    int resumed = 0;
    while (!h->closed) {
        if (h->tunnel) {
            /* The WebSocket's bytes, as they come (some may have come with the handshake):
             * the bridge frames them. */
            while (!h->closed && h->stream_open && !c->paused && c->rlen > c->rstart) {
                size_t avail = c->rlen - c->rstart;
                if (h->stream.handler)
                    h->stream.handler->on_body(&h->stream, c->rbuf + c->rstart, avail);
                if (h->closed)
                    break; /* the bridge ended the tunnel: what is left goes with it */
                ph_conn_consume(c, avail);
            }
            h->processing = 0;
            return;
        }
        if (h->stream_open && h->msg_complete)
            break; /* pipelined input waits for the response in flight */
        size_t avail = c->rlen - c->rstart;
        /* After a pause llhttp may have steps left that need no input (the end of a message
         * without a body): run it once more even with nothing new. */
        if (avail == 0 && !resumed)
            break;
        resumed = 0;
        const char *p = c->rbuf ? c->rbuf + c->rstart : "";
        h->event = EV_NONE;
        int line_here = !h->in_message; /* a request (line) starts in this input */
        llhttp_errno_t err = llhttp_execute(&h->parser, p, avail);
        const char *pos = err == HPE_OK ? p + avail : llhttp_get_error_pos(&h->parser);
        size_t used = (pos && pos >= p && pos <= p + avail) ? (size_t)(pos - p) : avail;
        if (h->counting) {
            const char *from = h->head_from ? h->head_from : p;
            for (const char *q = from; q < p + used; q++)
                h->head_lfs += *q == '\n';
            h->head_from = NULL;
            if (h->event == EV_HEADERS)
                h->counting = 0;
        }
        /* The two bytes before pos: from this buffer, else partly from the previous one. */
        char before[2] = {h->last2[0], h->last2[1]};
        if (used >= 2) {
            before[0] = p[used - 2];
            before[1] = p[used - 1];
        } else if (used == 1) {
            before[0] = h->last2[1];
            before[1] = p[0];
        }
        h->last2[0] = before[0];
        h->last2[1] = before[1];
        if (err == HPE_OK) {
            ph_conn_consume(c, avail);
            continue;
        }
        if (err == HPE_PAUSED) {
            ph_conn_consume(c, used);
            llhttp_resume(&h->parser);
            resumed = 1;
            if (h->event == EV_HEADERS)
                on_headers(h);
            else if (h->event == EV_MESSAGE) {
                on_message(h);
                if (h->switching) {
                    upgrade_now(h); /* h is gone */
                    return;
                }
            } else if (h->event == EV_CHUNK && (before[0] != '\r' || before[1] != '\n'))
                fail(h, 400, "Chunk data not followed by CRLF");
            continue;
        }
        if (err == HPE_PAUSED_UPGRADE) {
            /* Not reached: cb_headers_complete() turns every upgrade down. */
            ph_conn_consume(c, used);
            llhttp_resume_after_upgrade(&h->parser);
            resumed = 1;
            continue;
        }
        const char *text;
        int status = parse_error_status(h, err, &text);
        if (err == HPE_INVALID_VERSION && !h->err_status)
            status = version_status(h, pos);
        else if (err == HPE_INVALID_METHOD && !h->err_status && pos && pos >= p) {
            /* A well-formed token we do not implement is a 501 (RFC 9110 §9.1). */
            size_t n = 0;
            while (p + n < p + avail && p[n] != ' ')
                n++;
            if (p + n < p + avail && ph_is_token(p, n)) {
                status = 501;
                text = "Method not implemented";
            }
        }
        if (line_here)
            h->err_raw = (ph_slice_t){p, avail};
        fail(h, status, text);
        h->err_raw = (ph_slice_t){NULL, 0};
        break;
    }
    h->processing = 0;
    if (h->closed)
        return;
    if (h->stream_open && h->msg_complete && c->rlen - c->rstart > PIPELINE_BUFFER_MAX)
        ph_conn_pause(c);
    /* The peer's FIN came: once no answer is in the making, nothing more can be asked. */
    if (h->eof_pending && !h->stream_open)
        close_conn(h, 0);
}

/* ---- responses ---- */

static void write_simple(h1_t *h, int status, const char *text, const char *header_line)
{
    char head[256], body[200];
    size_t tl = text ? strlen(text) : 0;
    size_t bl = tl < sizeof(body) - 1 ? tl : sizeof(body) - 1;
    if (bl)
        memcpy(body, text, bl);
    body[bl] = '\n';
    char len[24];
    size_t ll = ph_u64toa(bl + 1, len);
    const char *reason = ph_status_reason(status);
    size_t n = 0;
    memcpy(head + n, "HTTP/1.1 ", 9);
    n += 9;
    n += ph_u64toa((uint64_t)status, head + n);
    head[n++] = ' ';
    size_t rl = strlen(reason);
    memcpy(head + n, reason, rl);
    n += rl;
    static const char mid[] = "\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                              "content-length: ";
    memcpy(head + n, mid, sizeof(mid) - 1);
    n += sizeof(mid) - 1;
    memcpy(head + n, len, ll);
    n += ll;
    memcpy(head + n, "\r\n", 2);
    n += 2;
    uv_buf_t bufs[5];
    unsigned nb = 0;
    bufs[nb++] = buf_of(head, n);
    if (header_line)
        bufs[nb++] = buf_of(header_line, strlen(header_line));
    const ph_config_t *cfg = &h->server->cfg;
    if (cfg->server_header)
        bufs[nb++] = buf_of(cfg->server_line.base, cfg->server_line.len);
    char date[6 + PH_DATE_LEN + 4];
    if (cfg->date_header) {
        memcpy(date, "date: ", 6);
        memcpy(date + 6, ph_date_now(), PH_DATE_LEN);
        memcpy(date + 6 + PH_DATE_LEN, "\r\n\r\n", 4);
        bufs[nb++] = buf_of(date, 6 + PH_DATE_LEN + 4);
    } else {
        bufs[nb++] = buf_of("\r\n", 2);
    }
    bufs[nb++] = buf_of(body, bl + 1);
    ph_conn_write(h->conn, bufs, nb);
}

/* A request no bridge saw, answered here: its line in the access log, and the counters. */
static void record_reject(h1_t *h, int status, const char *text)
{
    const llhttp_t *p = &h->parser;
    ph_exchange_t x = {.status = status, .end = PH_END_REJECTED};
    x.reject = ph_reject_reason(status);
    if (h->method_done) {
        const char *m = llhttp_method_name((llhttp_method_t)p->method);
        x.method = (ph_slice_t){m, strlen(m)};
    }
    x.target = (ph_slice_t){h->arena, h->url_kept < 1024 ? h->url_kept : 1024};
    if ((!h->method_done || !h->url_kept) && h->err_raw.len) {
        /* llhttp stopped inside the request line: what of it came, as it came */
        const char *q = h->err_raw.base, *end = q + h->err_raw.len;
        while (q < end && (*q == '\r' || *q == '\n'))
            q++;
        const char *m = q;
        while (q < end && *q != ' ' && *q != '\r' && *q != '\n')
            q++;
        x.method = (ph_slice_t){m, (size_t)(q - m) < 32 ? (size_t)(q - m) : 32};
        const char *t = q < end && *q == ' ' ? ++q : q;
        while (q < end && *q != ' ' && *q != '\r' && *q != '\n' && q - t < 1024)
            q++;
        x.target = (ph_slice_t){t, (size_t)(q - t)};
    }
    x.version = p->http_major == 1 && p->http_minor == 0 ? 10 : 11;
    x.bytes_in = h->body_received;
    size_t tl = strlen(text); /* write_simple's body: the text (cut at 199) and a newline */
    x.bytes_out = (tl < 199 ? tl : 199) + 1;
    ph_server_reject(h->server, &h->conn->peer, &x);
}

/* The request failed below the app: answer with status if nothing was sent yet (with
 * header_line, a "name: value\r\n", when not NULL), then close. */
static void fail_with(h1_t *h, int status, const char *text, const char *header_line)
{
    if (h->closed)
        return;
    if (h->resp_state == RESP_BODY) {
        abort_conn(h); /* part of a response is out: only a reset tells it is cut short */
        return;
    }
    if (h->resp_state == RESP_DONE) {
        close_conn(h, 1); /* the request was answered; its tail was bad */
        return;
    }
    if (h->conn->why == NULL)
        h->conn->why = text ? text : ph_status_reason(status);
    if (h->stream_open)
        h->stream.answered = status; /* the bridge logs the request with what the client got */
    else if (h->in_message || status == 503)
        record_reject(h, status, text ? text : ph_status_reason(status));
    disconnect_stream(h);
    write_simple(h, status, text ? text : ph_status_reason(status), header_line);
    close_conn(h, 1);
}

static void fail(h1_t *h, int status, const char *text)
{
    fail_with(h, status, text, NULL);
}

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

#define STREAM_H1(s) ((h1_t *)((char *)(s)-offsetof(h1_t, stream)))

/* The app's headers are checked and serialised; framing and connection headers are the
 * server's own (finish_head() writes them from what is decided when the body starts). Nothing
 * changes unless all of it is valid, so a rejected start leaves no trace and a later one may
 * replace the head as long as no byte of it has been sent. */
static int op_start(ph_stream_t *s, int status, const ph_header_t *hs, size_t n)
{
    h1_t *h = STREAM_H1(s);
    if (h->closed || !h->stream_open)
        return PH_ECLOSED;
    if (h->resp_state != RESP_NONE && h->resp_state != RESP_STARTED)
        return PH_ESTATE;
    if (status < 100 || status > 999)
        return PH_EINVAL;
    /* 101 opens a WebSocket's tunnel, and only that: no other upgrade is the app's to make. */
    int tunnel = status == 101;
    if (tunnel && !s->req.websocket)
        return PH_EINVAL;
    int64_t cl = -1;
    int want_chunked = 0, conn_close = 0, has_server = 0, has_date = 0;
    for (size_t i = 0; i < n; i++) {
        ph_slice_t nm = hs[i].name, v = hs[i].value;
        if (!ph_is_token(nm.base, nm.len) || !ph_is_field_value(v.base, v.len))
            return PH_EINVAL;
        if (ph_eq_lower(nm.base, nm.len, "content-length", 14)) {
            int64_t x = ph_parse_decimal(v.base, v.len);
            if (x < 0 || (cl >= 0 && x != cl))
                return PH_EINVAL;
            cl = x;
        } else if (ph_eq_lower(nm.base, nm.len, "transfer-encoding", 17)) {
            if (!ph_eq_lower(v.base, v.len, "chunked", 7))
                return PH_EINVAL;
            want_chunked = 1;
        } else if (ph_eq_lower(nm.base, nm.len, "connection", 10)) {
            if (ph_has_token(v.base, v.len, "close", 5))
                conn_close = 1;
        } else if (ph_eq_lower(nm.base, nm.len, "server", 6)) {
            has_server = 1;
        } else if (ph_eq_lower(nm.base, nm.len, "date", 4)) {
            has_date = 1;
        }
    }
    if (want_chunked && cl >= 0)
        return PH_EINVAL;

    const ph_config_t *cfg = &h->server->cfg;
    h->olen = 0;
    char line[64];
    size_t l = 9;
    memcpy(line, "HTTP/1.1 ", 9);
    l += ph_u64toa((uint64_t)status, line + l);
    line[l++] = ' ';
    int rv = out_add(h, line, l);
    const char *reason = ph_status_reason(status);
    rv |= out_add(h, reason, strlen(reason));
    rv |= OUT_LIT(h, "\r\n");
    for (size_t i = 0; i < n; i++) {
        ph_slice_t nm = hs[i].name;
        if (ph_eq_lower(nm.base, nm.len, "content-length", 14) ||
            ph_eq_lower(nm.base, nm.len, "transfer-encoding", 17) ||
            ph_eq_lower(nm.base, nm.len, "connection", 10))
            continue;
        if (tunnel && (ph_eq_lower(nm.base, nm.len, "upgrade", 7) ||
                       ph_eq_lower(nm.base, nm.len, "sec-websocket-accept", 20)))
            continue; /* the handshake's own, written below */
        rv |= out_add(h, nm.base, nm.len);
        rv |= OUT_LIT(h, ": ");
        rv |= out_add(h, hs[i].value.base, hs[i].value.len);
        rv |= OUT_LIT(h, "\r\n");
    }
    if (cfg->server_header && !has_server)
        rv |= out_add(h, cfg->server_line.base, cfg->server_line.len);
    if (cfg->date_header && !has_date) {
        rv |= OUT_LIT(h, "date: ");
        rv |= out_add(h, ph_date_now(), PH_DATE_LEN);
        rv |= OUT_LIT(h, "\r\n");
    }
    if (cfg->extra_headers.len)
        rv |= out_add(h, cfg->extra_headers.base, cfg->extra_headers.len);
    if (tunnel) {
        rv |= OUT_LIT(h, "upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: ");
        rv |= out_add(h, h->ws_accept, 28);
        rv |= OUT_LIT(h, "\r\n\r\n");
    }
    if (rv) {
        h->olen = 0;
        h->resp_state = RESP_NONE;
        return PH_ENOMEM;
    }
    h->resp_status = status;
    h->resp_cl = cl;
    h->resp_want_chunked = want_chunked;
    h->resp_conn_close = conn_close;
    h->resp_no_body = s->req.is_head || status < 200 || status == 204 || status == 304;
    h->resp_state = RESP_STARTED;
    return 0;
}

/* Whether keep-alive survives an answer given before the request body was all read: the rest
 * must be coming (no 100 the client still waits for) and short enough to drop. */
static int unread_body_drains(h1_t *h)
{
    const ph_request_t *r = &h->stream.req;
    if (h->msg_complete || !body_expected(r))
        return 1;
    if (r->expect_continue && r->http_minor >= 1 && !h->continue_sent)
        return 0;
    if (r->content_length > 0)
        return (uint64_t)r->content_length - h->body_received <= DRAIN_MAX;
    return 1; /* chunked: drained up to DRAIN_MAX, then closed */
}

/* Ends the head: framing (RFC 9112 §6: Content-Length, chunked on HTTP/1.1, or the close on
 * HTTP/1.0) and the connection header, then the blank line. */
static int finish_head(h1_t *h, size_t first_len, int more)
{
    int rv = 0;
    const ph_request_t *r = &h->stream.req;
    int status = h->resp_status;
    if (h->draining || h->resp_conn_close || !unread_body_drains(h))
        h->keep_alive = 0;
    h->resp_chunked = 0;
    if (status < 200 || status == 204) {
        h->resp_cl = -1; /* RFC 9110 §8.6, RFC 9112 §6.1: neither length nor coding */
    } else if (h->resp_cl >= 0) {
        /* the app's length (a HEAD or 304 may declare the length of the GET / 200 body) */
    } else if (status == 304) {
        /* no body, no framing */
    } else if (!more && !h->resp_want_chunked && !r->is_head) {
        h->resp_cl = (int64_t)first_len; /* the whole body is known: say so */
    } else if (r->is_head && !more && !h->resp_want_chunked) {
        /* HEAD without a declared length: nothing to frame */
    } else if (r->http_minor >= 1) {
        h->resp_chunked = 1;
    } else {
        h->keep_alive = 0; /* HTTP/1.0: never chunked; the close ends the body */
    }
    if (h->resp_cl >= 0) {
        char num[24];
        size_t nl = ph_u64toa((uint64_t)h->resp_cl, num);
        rv |= OUT_LIT(h, "content-length: ");
        rv |= out_add(h, num, nl);
        rv |= OUT_LIT(h, "\r\n");
    }
    if (h->resp_chunked)
        rv |= OUT_LIT(h, "transfer-encoding: chunked\r\n");
    if (!h->keep_alive && r->http_minor >= 1)
        rv |= OUT_LIT(h, "connection: close\r\n");
    else if (h->keep_alive && r->http_minor == 0)
        rv |= OUT_LIT(h, "connection: keep-alive\r\n");
    rv |= OUT_LIT(h, "\r\n");
    if (h->resp_no_body)
        h->resp_chunked = 0; /* a HEAD says chunked as its GET would, but sends no chunks */
    return rv ? PH_ENOMEM : 0;
}

/* The bytes of an accepted WebSocket: the 101 head first (op_start() made it whole), then the
 * tunnel's bytes as they are; more=0 ends the tunnel and the connection. */
static int tunnel_out(h1_t *h, const char *data, size_t len, int more)
{
    uv_buf_t bufs[2];
    unsigned nb = 0;
    int opening = h->resp_state == RESP_STARTED;
    if (opening)
        bufs[nb++] = buf_of(h->obuf, h->olen);
    if (len)
        bufs[nb++] = buf_of(data, len);
    int rv = nb ? ph_conn_write(h->conn, bufs, nb) : 0;
    if (rv == PH_ENOMEM)
        return rv;
    if (rv < 0) {
        abort_conn(h);
        return PH_ECLOSED;
    }
    if (opening) {
        h->resp_state = RESP_BODY;
        h->tunnel = 1;
        ph_conn_speaks(h->conn, PH_PROTO_WEBSOCKET);
        h->keep_alive = 0;
        h->olen = 0;
        /* No deadline of ours from here: the bridge's pings watch the peer. Input that came
         * with the handshake (or after it) is the tunnel's. */
        ph_conn_set_timeout(h->conn, 0);
        ph_conn_resume(h->conn);
        if (h->conn->rlen > h->conn->rstart && !h->processing)
            ph_loop_defer(h->server->loop, &h->resume);
    }
    h->resp_sent += len;
    if (!more) {
        release_stream(h);
        close_conn(h, 1);
    }
    return 0;
}

/* The body of op_body() and op_sendfile(): len bytes from data, or (fd >= 0) from the file fd
 * at offset, which is then owned here and closed on every path. */
static int body_out(h1_t *h, const char *data, int fd, uint64_t offset, size_t len, int more)
{
    if (h->closed || !h->stream_open) {
        close_fd(fd);
        return PH_ECLOSED;
    }
    if (h->resp_status == 101 && h->resp_state != RESP_NONE) {
        close_fd(fd);
        return fd >= 0 ? PH_EINVAL : tunnel_out(h, data, len, more);
    }
    if (h->resp_state != RESP_STARTED && h->resp_state != RESP_BODY) {
        close_fd(fd);
        return PH_ESTATE;
    }
    if (h->resp_no_body) {
        len = 0; /* HEAD, 1xx, 204, 304: the app's bytes are not sent */
        close_fd(fd);
        fd = -1;
    }
    if (h->resp_cl >= 0 && !h->resp_no_body) {
        if (h->resp_sent + len > (uint64_t)h->resp_cl ||
            (!more && h->resp_sent + len < (uint64_t)h->resp_cl)) {
            close_fd(fd);
            return PH_EINVAL;
        }
    }
    uv_buf_t bufs[4];
    unsigned nb = 0;
    size_t head_len = h->olen;
    int keep_alive = h->keep_alive;
    if (h->resp_state == RESP_STARTED) {
        int rv = finish_head(h, len, more);
        if (rv < 0) {
            h->olen = head_len;
            h->keep_alive = keep_alive;
            close_fd(fd);
            return rv;
        }
        bufs[nb++] = buf_of(h->obuf, h->olen);
    }
    char prefix[24];
    if (len && h->resp_chunked) {
        static const char hex[] = "0123456789abcdef";
        char tmp[20];
        size_t t = 0, v = len;
        while (v) {
            tmp[t++] = hex[v & 15];
            v >>= 4;
        }
        size_t pl = 0;
        while (t)
            prefix[pl++] = tmp[--t];
        prefix[pl++] = '\r';
        prefix[pl++] = '\n';
        bufs[nb++] = buf_of(prefix, pl);
    }
    uv_buf_t tail;
    tail.len = 0;
    if (h->resp_chunked) {
        if (len && more)
            tail = buf_of("\r\n", 2);
        else if (len && !more)
            tail = buf_of("\r\n0\r\n\r\n", 7);
        else if (!more)
            tail = buf_of("0\r\n\r\n", 5);
    }
    if (len && fd < 0)
        bufs[nb++] = buf_of(data, len);
    if (fd < 0 && tail.len)
        bufs[nb++] = tail;
    int rv = nb ? ph_conn_write(h->conn, bufs, nb) : 0;
    if (rv == PH_ENOMEM) {
        /* nothing was written: the exchange can still fail cleanly */
        if (h->resp_state == RESP_STARTED) {
            h->olen = head_len;
            h->keep_alive = keep_alive;
        }
        close_fd(fd);
        return rv;
    }
    if (rv == 0 && fd >= 0) {
        rv = ph_conn_sendfile(h->conn, fd, offset, len); /* takes fd */
        fd = -1;
        if (rv == 0 && tail.len)
            rv = ph_conn_write(h->conn, &tail, 1);
    }
    close_fd(fd);
    if (rv < 0) {
        abort_conn(h); /* the socket failed (the peer is gone), or half a file was framed */
        return PH_ECLOSED;
    }
    h->resp_state = RESP_BODY;
    h->resp_sent += len;
    if (!more)
        response_done(h);
    return 0;
}

static int op_body(ph_stream_t *s, const char *data, size_t len, int more)
{
    return body_out(STREAM_H1(s), data, -1, 0, len, more);
}

static int op_sendfile(ph_stream_t *s, int fd, uint64_t offset, uint64_t len, int more)
{
    if (len > SIZE_MAX) {
        close(fd);
        return PH_EINVAL;
    }
    return body_out(STREAM_H1(s), NULL, fd, offset, (size_t)len, more);
}

/* Fields that must not travel as trailers (RFC 9110 §6.5.1): framing, routing, hop-by-hop. */
static int trailer_forbidden(ph_slice_t nm)
{
    return ph_eq_lower(nm.base, nm.len, "content-length", 14) ||
           ph_eq_lower(nm.base, nm.len, "transfer-encoding", 17) ||
           ph_eq_lower(nm.base, nm.len, "host", 4) ||
           ph_eq_lower(nm.base, nm.len, "connection", 10) ||
           ph_eq_lower(nm.base, nm.len, "trailer", 7) || ph_eq_lower(nm.base, nm.len, "te", 2);
}

static int op_trailers(ph_stream_t *s, const ph_header_t *hs, size_t n)
{
    h1_t *h = STREAM_H1(s);
    if (h->closed || !h->stream_open)
        return PH_ECLOSED;
    if (h->resp_state != RESP_STARTED && h->resp_state != RESP_BODY)
        return PH_ESTATE;
    for (size_t i = 0; i < n; i++) {
        if (!ph_is_token(hs[i].name.base, hs[i].name.len) ||
            !ph_is_field_value(hs[i].value.base, hs[i].value.len))
            return PH_EINVAL;
    }
    if (h->resp_cl >= 0 && !h->resp_no_body && h->resp_sent != (uint64_t)h->resp_cl)
        return PH_EINVAL;
    if (h->resp_state == RESP_STARTED) {
        int rv = op_body(s, "", 0, 1); /* the head first */
        if (rv < 0)
            return rv;
        if (h->closed || !h->stream_open)
            return PH_ECLOSED;
    }
    if (h->resp_chunked) {
        /* The last chunk, then the trailer section: only to a client that said it takes one. */
        size_t olen = h->olen;
        h->olen = 0;
        int rv = OUT_LIT(h, "0\r\n");
        for (size_t i = 0; s->req.te_trailers && i < n; i++) {
            if (trailer_forbidden(hs[i].name))
                continue;
            rv |= out_add(h, hs[i].name.base, hs[i].name.len);
            rv |= OUT_LIT(h, ": ");
            rv |= out_add(h, hs[i].value.base, hs[i].value.len);
            rv |= OUT_LIT(h, "\r\n");
        }
        rv |= OUT_LIT(h, "\r\n");
        if (rv) {
            h->olen = olen;
            return PH_ENOMEM;
        }
        uv_buf_t b = buf_of(h->obuf, h->olen);
        h->olen = 0;
        rv = ph_conn_write(h->conn, &b, 1);
        if (rv == PH_ENOMEM)
            return rv;
        if (rv < 0) {
            abort_conn(h);
            return PH_ECLOSED;
        }
    }
    response_done(h);
    return 0;
}

static void op_want_body(ph_stream_t *s)
{
    h1_t *h = STREAM_H1(s);
    if (h->closed || !h->stream_open)
        return;
    /* RFC 9110 §10.1.1: never a 100 to an HTTP/1.0 client. */
    if (s->req.expect_continue && s->req.http_minor >= 1 && !h->continue_sent && !h->msg_complete &&
        h->resp_state == RESP_NONE) {
        h->continue_sent = 1;
        uv_buf_t b = buf_of("HTTP/1.1 100 Continue\r\n\r\n", 25);
        ph_conn_write(h->conn, &b, 1);
    }
    ph_conn_resume(h->conn);
    if (!h->msg_complete)
        arm_body_timer(h);
    else if (h->tunnel && h->conn->rlen > h->conn->rstart && !h->processing)
        ph_loop_defer(h->server->loop, &h->resume); /* what was read before the pause */
}

static void op_pause_body(ph_stream_t *s)
{
    h1_t *h = STREAM_H1(s);
    if (h->closed || (h->msg_complete && !h->tunnel))
        return;
    ph_conn_pause(h->conn);
    ph_conn_set_timeout(h->conn, 0); /* the app holds the body: the client is not late */
}

static void op_abort(ph_stream_t *s)
{
    abort_conn(STREAM_H1(s));
}

static size_t op_queued(ph_stream_t *s)
{
    h1_t *h = STREAM_H1(s);
    return h->closed ? 0 : ph_conn_queued(h->conn);
}

static const ph_stream_ops_t h1_ops = {
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
    h1_t *h = conn->proto_data;
    if (h->fresh) {
        /* h2c with prior knowledge starts with the HTTP/2 preface instead of a request. */
        int m = ph_h2_match_preface(conn->rbuf + conn->rstart, conn->rlen - conn->rstart);
        if (m == 0) {
            start_head_timer(h);
            return; /* a prefix of it so far */
        }
        h->fresh = 0;
        if (m == 1) {
            prior_knowledge(h);
            return;
        }
    }
    if (!h->in_message && !h->stream_open)
        start_head_timer(h); /* bytes of the next request (maybe only empty lines) */
    process(h);
}

static void on_resume(ph_defer_t *d)
{
    h1_t *h = (h1_t *)((char *)d - offsetof(h1_t, resume));
    process(h);
}

static void on_eof(ph_conn_t *conn, int err)
{
    h1_t *h = conn->proto_data;
    if (err < 0) {
        abort_conn(h); /* reset, or a write failed: nothing more reaches the peer */
        return;
    }
    if (h->tunnel) {
        /* The peer's last bytes were delivered; the bridge hears it is gone (a WebSocket
         * closed properly has seen the close frames by now) and what is queued still goes. */
        close_conn(h, 0);
        return;
    }
    h->eof_pending = 1;
    if (h->stream_open && h->msg_complete) {
        /* A half-close after a whole request (RFC 9112 §9.6): the client may still read, so
         * the answer goes out; an app waiting for more input hears the client is done. */
        if (h->stream.handler && h->stream.handler->on_peer_closed)
            h->stream.handler->on_peer_closed(&h->stream);
        return;
    }
    if (h->in_message) {
        /* A request cut short: the client gave up on it (a response mid-body is reset). */
        if (h->resp_state == RESP_BODY)
            abort_conn(h);
        else
            close_conn(h, 0);
        return;
    }
    process(h); /* complete requests may still wait in the buffer: answer them, then close */
}

static void on_drain(ph_conn_t *conn)
{
    h1_t *h = conn->proto_data;
    if (h->stream_open && h->stream.handler)
        h->stream.handler->on_drain(&h->stream);
}

static void on_timeout(ph_conn_t *conn)
{
    h1_t *h = conn->proto_data;
    if (h->tunnel || (h->stream_open && h->msg_complete))
        return; /* the app has the request; no deadline of ours applies to it */
    if (h->in_message && h->headers_done) {
        fail(h, 408, "Request body timeout");
        return;
    }
    if (h->in_message) {
        fail(h, 408, "Request header timeout");
        return;
    }
    h->conn->why = "keep-alive timeout";
    close_conn(h, 0); /* idle too long (keep-alive), or only empty lines came */
}

static void on_close(ph_conn_t *conn)
{
    h1_t *h = conn->proto_data;
    h->closed = 1;
    disconnect_stream(h);
    ph_loop_cancel(h->server->loop, &h->resume);
}

static void on_free(ph_conn_t *conn)
{
    h1_free(conn->proto_data);
}

static void drain(ph_conn_t *conn)
{
    h1_t *h = conn->proto_data;
    h->draining = 1;
    if (!h->stream_open && !h->in_message) {
        /* Idle: just accepted, or between requests. A client may be sending its request at
         * this moment (one that just connected to a reloading worker, one that took this
         * keep-alive connection from its pool); closing now would lose that request. It gets
         * its answer, with a close, if it comes within PH_DRAIN_IDLE_MS. */
        uint64_t t = h->server->cfg.timeout_keep_alive_ms;
        ph_conn_set_timeout(conn, t && t < PH_DRAIN_IDLE_MS ? t : PH_DRAIN_IDLE_MS);
        return;
    }
    if (!h->stream_open && h->in_message && !h->headers_done)
        return; /* a head on its way: it gets its answer (the header timeout bounds it) */
    if (!h->stream_open) {
        h->conn->why = "shutting down";
        close_conn(h, h->in_message); /* idle, or dropping an unread body: go now */
    } else if (h->tunnel && h->stream.handler && h->stream.handler->on_goaway)
        h->stream.handler->on_goaway(&h->stream);
}

static void expire(ph_conn_t *conn)
{
    h1_t *h = conn->proto_data;
    h->draining = 1;
    if (h->tunnel)
        close_conn(h, 0); /* a WebSocket that did not close in time: what is queued still goes */
    else if (h->stream_open && h->resp_state == RESP_BODY)
        abort_conn(h);
    else if (h->stream_open)
        fail(h, 503, "Server shutting down");
    else
        close_conn(h, h->in_message);
}

static const ph_conn_proto_t h1_proto = {
    .on_read = on_read,
    .on_eof = on_eof,
    .on_drain = on_drain,
    .on_timeout = on_timeout,
    .on_close = on_close,
    .on_free = on_free,
    .drain = drain,
    .expire = expire,
};

int ph_h1_attach(ph_conn_t *conn)
{
    static int settings_ready;
    if (!settings_ready) {
        llhttp_settings_init(&settings);
        settings.on_message_begin = cb_message_begin;
        settings.on_method = cb_method;
        settings.on_method_complete = cb_method_complete;
        settings.on_url = cb_url;
        settings.on_header_field = cb_header_field;
        settings.on_header_value = cb_header_value;
        settings.on_header_value_complete = cb_header_value_complete;
        settings.on_headers_complete = cb_headers_complete;
        settings.on_body = cb_body;
        settings.on_chunk_complete = cb_chunk_complete;
        settings.on_message_complete = cb_message_complete;
        settings_ready = 1;
    }
    h1_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return PH_ENOMEM;
    h->conn = conn;
    h->server = conn->server;
    h->resume.cb = on_resume;
    llhttp_init(&h->parser, HTTP_REQUEST, &settings);
    h->parser.data = h;
    /* h2c is for cleartext only: over TLS, ALPN chose the protocol. */
    h->fresh = conn->server->cfg.http == PH_HTTP_AUTO && conn->tls == NULL;
    conn->proto = &h1_proto;
    conn->proto_data = h;
    ph_conn_speaks(conn, PH_PROTO_HTTP1);
    /* A new connection owes its first request head within the header timeout. */
    start_head_timer(h);
    if (conn->server->draining)
        drain(conn);
    return 0;
}
