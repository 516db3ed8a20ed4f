/* The WebSocket session (ws.c): the handshake key, permessage-deflate negotiation, frames fed in
 * every split, each way a client can break the protocol (and the close code it gets), UTF-8
 * checked as it arrives, size limits before and after inflating, compression both ways, and
 * what the session writes. Client frames are built by hand here, compressed ones with zlib. */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "check.h"
#include "utf8_ref.h"
#include "ws.h"

#define S(lit) lit, sizeof(lit) - 1

/* ---- a bridge that records ------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void put(buf_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL)
            abort();
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

typedef struct {
    ph_ws_t *ws;
    buf_t out; /* every frame written, in order */
    buf_t log; /* every message: its opcode, its length, its bytes */
    buf_t msg; /* the last message */
    int last_op, messages, closes, pongs, writes;
    int fail_at;     /* the write that fails (1: the first), 0: none */
    int echo;        /* on_message sends the message back */
    size_t buffered; /* ph_ws_buffered() seen from the last on_message */
    int close_code;
    char reason[128];
    size_t reason_len;
    char pong[128];
    size_t pong_len;
} rec_t;

static void on_message(ph_ws_t *ws, int op, const char *data, size_t len)
{
    rec_t *r = ph_ws_data(ws);
    r->messages++;
    r->last_op = op;
    r->msg.len = 0;
    put(&r->msg, data, len);
    char head[32];
    int n = snprintf(head, sizeof(head), "%d:%zu:", op, len);
    put(&r->log, head, (size_t)n);
    put(&r->log, data, len);
    r->buffered = ph_ws_buffered(ws);
    if (r->echo)
        ph_ws_send(ws, op, data, len);
}

static void on_close(ph_ws_t *ws, int code, const char *reason, size_t len)
{
    rec_t *r = ph_ws_data(ws);
    r->closes++;
    r->close_code = code;
    memcpy(r->reason, reason, len);
    r->reason_len = len;
}

static void on_pong(ph_ws_t *ws, const char *data, size_t len)
{
    rec_t *r = ph_ws_data(ws);
    r->pongs++;
    memcpy(r->pong, data, len);
    r->pong_len = len;
    put(&r->log, "pong:", 5);
    put(&r->log, data, len);
}

static int on_write(ph_ws_t *ws, const char *data, size_t len)
{
    rec_t *r = ph_ws_data(ws);
    if (++r->writes == r->fail_at)
        return -32; /* UV_EPIPE */
    put(&r->out, data, len);
    return 0;
}

static const ph_ws_callbacks_t callbacks = {on_message, on_close, on_pong, on_write};

static void rec_open(rec_t *r, const ph_ws_config_t *cfg)
{
    memset(r, 0, sizeof(*r));
    ph_ws_config_t plain = {0};
    r->ws = ph_ws_new(cfg ? cfg : &plain, &callbacks, r);
    if (r->ws == NULL)
        abort();
}

static void rec_close(rec_t *r)
{
    ph_ws_free(r->ws);
    free(r->out.p);
    free(r->log.p);
    free(r->msg.p);
}

/* ---- frames ---------------------------------------------------------------------------------- */

static const unsigned char mask_key[4] = {0x37, 0xfa, 0x21, 0x3d};

/* A client frame (masked) with a 7-, 16- or 64-bit length field (form 0: the shortest). */
static size_t cframe_form(char *dst, int b0, const void *payload, size_t n, int form)
{
    size_t o = 0;
    dst[o++] = (char)b0;
    if (form == 0)
        form = n < 126 ? 7 : n <= 0xffff ? 16 : 64;
    if (form == 7) {
        dst[o++] = (char)(0x80 | n);
    } else if (form == 16) {
        dst[o++] = (char)(0x80 | 126);
        dst[o++] = (char)(n >> 8);
        dst[o++] = (char)n;
    } else {
        dst[o++] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++)
            dst[o++] = (char)((uint64_t)n >> (56 - 8 * i));
    }
    memcpy(dst + o, mask_key, 4);
    o += 4;
    for (size_t i = 0; i < n; i++)
        dst[o + i] = (char)(((const unsigned char *)payload)[i] ^ mask_key[i & 3]);
    return o + n;
}

static size_t cframe(char *dst, int b0, const void *payload, size_t n)
{
    return cframe_form(dst, b0, payload, n, 0);
}

typedef struct {
    int b0;
    const char *p;
    size_t n;
} sframe_t;

/* Splits what the server wrote into frames; -1 if it is not a run of whole unmasked frames. */
static int sframes(const buf_t *b, sframe_t *f, int max)
{
    size_t off = 0;
    int k = 0;
    while (off < b->len) {
        if (b->len - off < 2 || k == max)
            return -1;
        const unsigned char *h = (const unsigned char *)b->p + off;
        if (h[1] & 0x80)
            return -1; /* a server never masks */
        size_t n = h[1] & 0x7f, hl = 2;
        if (n == 126) {
            n = (size_t)h[2] << 8 | h[3];
            hl = 4;
        } else if (n == 127) {
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | h[2 + i];
            hl = 10;
        }
        if (b->len - off < hl + n)
            return -1;
        f[k].b0 = h[0];
        f[k].p = (const char *)h + hl;
        f[k].n = n;
        k++;
        off += hl + n;
    }
    return k;
}

/* The last frame the session wrote is a close frame with this code (-1: none), and the only one
 * since `from`. */
static int closed_with(rec_t *r, size_t from, int code)
{
    sframe_t f[64];
    int k = sframes(&r->out, f, 64);
    if (k < 1 || f[k - 1].b0 != 0x88 || (size_t)(f[k - 1].p - r->out.p) < from)
        return 0;
    for (int i = 0; i < k - 1; i++)
        if (f[i].b0 == 0x88)
            return 0;
    if (code < 0)
        return f[k - 1].n == 0;
    return f[k - 1].n == 2 &&
           ((unsigned char)f[k - 1].p[0] << 8 | (unsigned char)f[k - 1].p[1]) == code;
}

/* Feeds one stream to a fresh session and expects a failure with the code. */
static int fails_with(const ph_ws_config_t *cfg, const char *in, size_t n, int code)
{
    rec_t r;
    rec_open(&r, cfg);
    int rv = ph_ws_feed(r.ws, in, n), got = ph_ws_close_code(r.ws);
    int ok =
        rv == PH_WS_FAILED && got == code && closed_with(&r, 0, code) && ph_ws_close_sent(r.ws);
    /* After that nothing is read or written, and nothing can be sent. */
    size_t before = r.out.len;
    char ping[16];
    size_t pl = cframe(ping, 0x89, "x", 1);
    ok = ok && ph_ws_feed(r.ws, ping, pl) == PH_WS_FAILED && r.out.len == before;
    ok = ok && ph_ws_send(r.ws, PH_WS_TEXT, "x", 1) == PH_ECLOSED;
    ok = ok && ph_ws_close(r.ws, 1000, NULL, 0) == PH_ECLOSED;
    rec_close(&r);
    if (!ok)
        fprintf(stderr, "  expected close %d, got rv %d code %d\n", code, rv, got);
    return ok;
}

/* ---- zlib on the client's side --------------------------------------------------------------- */

static z_stream *zdeflater(int bits)
{
    z_stream *z = calloc(1, sizeof(*z));
    if (deflateInit2(z, 6, Z_DEFLATED, -bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        abort();
    return z;
}

static z_stream *zinflater(int bits)
{
    z_stream *z = calloc(1, sizeof(*z));
    if (inflateInit2(z, -bits) != Z_OK)
        abort();
    return z;
}

static void zdone(z_stream *z, int deflating)
{
    if (deflating)
        deflateEnd(z);
    else
        inflateEnd(z);
    free(z);
}

/* Compresses a message as RFC 7692 §7.2.1 says: sync flush, the trailing 00 00 ff ff cut. */
static size_t zmsg(z_stream *z, const void *in, size_t n, char *out, size_t cap)
{
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n;
    z->next_out = (Bytef *)out;
    z->avail_out = (uInt)cap;
    if (deflate(z, Z_SYNC_FLUSH) != Z_OK || z->avail_out == 0)
        abort();
    size_t len = cap - z->avail_out;
    if (len < 4 || memcmp(out + len - 4, "\x00\x00\xff\xff", 4) != 0)
        abort();
    return len - 4;
}

/* Inflates a message the server compressed (the tail added back); its length, or -1. */
static long zunmsg(z_stream *z, const char *in, size_t n, char *out, size_t cap)
{
    char tmp[1 << 17];
    if (n + 4 > sizeof(tmp))
        return -1;
    memcpy(tmp, in, n);
    memcpy(tmp + n, "\x00\x00\xff\xff", 4);
    z->next_in = (Bytef *)tmp;
    z->avail_in = (uInt)(n + 4);
    z->next_out = (Bytef *)out;
    z->avail_out = (uInt)cap;
    int zr = inflate(z, Z_SYNC_FLUSH);
    if ((zr != Z_OK && zr != Z_BUF_ERROR) || z->avail_in != 0)
        return -1;
    return (long)(cap - z->avail_out);
}

/* ---- the handshake --------------------------------------------------------------------------- */

static void test_accept_key(void)
{
    char out[29];
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25jZQ=="), out) == 0);
    CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    CHECK(ph_ws_accept_key(S("x3JJHMbDL1EzLkh9GBhXDw=="), out) == 0);
    CHECK(strcmp(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=") == 0);
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25jZQ="), out) == -1);   /* 23 characters */
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25jZQ==="), out) == -1); /* 25 */
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25jZQAA"), out) == -1);  /* 18 bytes' worth */
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25j*Q=="), out) == -1);  /* not base64 */
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25j-Q=="), out) == -1);  /* base64url */
    CHECK(ph_ws_accept_key(S("dGhlIHNhbXBsZSBub25jZ==="), out) == -1);
    CHECK(ph_ws_accept_key(S("                      =="), out) == -1);
    CHECK(ph_ws_accept_key(S(""), out) == -1);
    CHECK(ph_ws_accept_key(S("AAAAAAAAAAAAAAAAAAAAAA=="), out) == 0); /* 16 zero bytes */
}

/* Negotiates and checks the response and the agreed windows; resp NULL: nothing agreed. */
static int agrees(const char *offer, const char *resp, int sbits, int cbits, int snct, int cnct)
{
    ph_ws_config_t cfg = {.max_size = 77, .deflate = 1};
    char out[129];
    size_t n = ph_ws_negotiate(offer, offer ? strlen(offer) : 0, &cfg, out, sizeof(out));
    if (cfg.max_size != 77)
        return 0;
    if (resp == NULL)
        return n == 0 && out[0] == '\0' && !cfg.deflate;
    int ok = n == strlen(resp) && strcmp(out, resp) == 0 && cfg.deflate &&
             cfg.server_max_window_bits == sbits && cfg.client_max_window_bits == cbits &&
             cfg.server_no_context_takeover == snct && cfg.client_no_context_takeover == cnct;
    if (!ok)
        fprintf(stderr, "  offer [%s] -> [%s] (%d %d)\n", offer, out, cfg.server_max_window_bits,
                cfg.client_max_window_bits);
    return ok;
}

static void test_negotiate(void)
{
    const char *dflt = "permessage-deflate; server_max_window_bits=12";
    CHECK(agrees(NULL, NULL, 0, 0, 0, 0));
    CHECK(agrees("", NULL, 0, 0, 0, 0));
    CHECK(agrees("x-webkit-deflate-frame", NULL, 0, 0, 0, 0));
    CHECK(agrees("permessage-deflate-x", NULL, 0, 0, 0, 0));
    /* Firefox's offer, and Chrome's. */
    CHECK(agrees("permessage-deflate", dflt, 12, 15, 0, 0));
    CHECK(agrees("permessage-deflate; client_max_window_bits",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12", 12, 12,
                 0, 0));
    CHECK(agrees("Permessage-Deflate", dflt, 12, 15, 0, 0));
    CHECK(agrees("  permessage-deflate\t ;\tclient_no_context_takeover  ",
                 "permessage-deflate; client_no_context_takeover; server_max_window_bits=12", 12,
                 15, 0, 1));
    /* Every parameter: the longest answer is 128 bytes. */
    ph_ws_config_t cfg;
    char out[129];
    const char *all = "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                      "server_max_window_bits=11; client_max_window_bits=9";
    CHECK(agrees(all,
                 "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                 "server_max_window_bits=11; client_max_window_bits=9",
                 11, 9, 1, 1));
    const char *longest = "permessage-deflate; server_no_context_takeover; "
                          "client_no_context_takeover; server_max_window_bits=15; "
                          "client_max_window_bits=15";
    size_t n = ph_ws_negotiate(longest, strlen(longest), &cfg, out, sizeof(out));
    CHECK(n == 128 && cfg.server_max_window_bits == 12 && cfg.client_max_window_bits == 12);
    CHECK(ph_ws_negotiate(longest, strlen(longest), &cfg, out, 128) == 0 && !cfg.deflate &&
          out[0] == '\0'); /* no room: nothing agreed rather than a cut answer */

    /* Windows: the client's limit is a ceiling, ours is 12; 8 from us is declined. */
    CHECK(agrees("permessage-deflate; server_max_window_bits=15",
                 "permessage-deflate; server_max_window_bits=12", 12, 15, 0, 0));
    CHECK(agrees("permessage-deflate; server_max_window_bits=9",
                 "permessage-deflate; server_max_window_bits=9", 9, 15, 0, 0));
    CHECK(agrees("permessage-deflate; server_max_window_bits=8", NULL, 0, 0, 0, 0));
    CHECK(agrees("permessage-deflate; server_max_window_bits=8, permessage-deflate", dflt, 12, 15,
                 0, 0));
    CHECK(agrees("permessage-deflate; client_max_window_bits=8",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=8", 12, 8,
                 0, 0));
    CHECK(agrees("permessage-deflate; client_max_window_bits=15",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12", 12, 12,
                 0, 0));
    /* Quoted values (RFC 7692 §7.1): what counts is the text inside. */
    CHECK(agrees("permessage-deflate; server_max_window_bits=\"10\"",
                 "permessage-deflate; server_max_window_bits=10", 10, 15, 0, 0));
    CHECK(agrees("permessage-deflate; client_max_window_bits = \"1\\1\"",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=11", 12, 11,
                 0, 0));
    CHECK(agrees("permessage-deflate; server_max_window_bits=\"10", NULL, 0, 0, 0, 0));
    CHECK(agrees("permessage-deflate; server_max_window_bits=\"\"", NULL, 0, 0, 0, 0));
    CHECK(agrees("permessage-deflate; server_max_window_bits=\"100000\"", NULL, 0, 0, 0, 0));
    /* Bad parameters spoil their offer only. */
    static const char *bad[] = {
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=+9",
        "permessage-deflate; server_max_window_bits=1 0",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"\"",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; mux",
        "permessage-deflate; ",
        "permessage-deflate;; client_no_context_takeover",
        "permessage-deflate client_no_context_takeover",
        "permessage-deflate; =10",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK(agrees(bad[i], NULL, 0, 0, 0, 0));
        char two[256];
        snprintf(two, sizeof(two), "%s, permessage-deflate; server_no_context_takeover", bad[i]);
        CHECK(agrees(two,
                     "permessage-deflate; server_no_context_takeover; "
                     "server_max_window_bits=12",
                     12, 15, 1, 0));
    }
    /* Many offers: the first acceptable one wins; other extensions are passed over, commas
     * inside their quoted values included. */
    CHECK(agrees("x-webkit-deflate-frame, permessage-deflate; foo=1, "
                 "permessage-deflate; server_max_window_bits=10, permessage-deflate",
                 "permessage-deflate; server_max_window_bits=10", 10, 15, 0, 0));
    CHECK(agrees("foo; bar=\", permessage-deflate, \\\" ,\", permessage-deflate; "
                 "client_no_context_takeover",
                 "permessage-deflate; client_no_context_takeover; server_max_window_bits=12", 12,
                 15, 0, 1));
    CHECK(agrees(", ,permessage-deflate,", dflt, 12, 15, 0, 0));
    CHECK(agrees("foo; bar=\"permessage-deflate", NULL, 0, 0, 0, 0));
    CHECK(agrees("permessage-deflate; x=\"a,b\", permessage-deflate; client_max_window_bits=10",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10", 12, 10,
                 0, 0));
}

/* ---- framing --------------------------------------------------------------------------------- */

/* A stream of client frames covering the framing: every length form (and non-minimal ones),
 * fragments with control frames between them, empty messages and frames. */
static size_t framing_stream(char *s, int big)
{
    size_t o = 0;
    o += cframe(s + o, 0x81, "Hello", 5);
    o += cframe(s + o, 0x82, "\x00\xff\x01", 3);
    o += cframe_form(s + o, 0x81, "short", 5, 16); /* non-minimal lengths are allowed */
    o += cframe_form(s + o, 0x82, "short", 5, 64);
    o += cframe(s + o, 0x81, "", 0);
    /* "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" in three fragments cut inside characters,
     * with a ping, a pong and an empty continuation among them. */
    o += cframe(s + o, 0x01, "caf\xc3", 4);
    o += cframe(s + o, 0x89, "p1", 2);
    o += cframe(s + o, 0x00, "\xa9 \xe2\x82", 4);
    o += cframe(s + o, 0x8a, "unsolicited", 11);
    o += cframe(s + o, 0x00, "", 0);
    o += cframe(s + o, 0x00, "\xac \xf0\x9f", 4);
    o += cframe(s + o, 0x89, "", 0);
    o += cframe(s + o, 0x80, "\x98\x80", 2);
    o += cframe(s + o, 0x02, "bin", 3);
    o += cframe(s + o, 0x80, "ary", 3);
    static char payload[70000];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (char)('a' + i % 26);
    o += cframe(s + o, 0x82, payload, 126);
    o += cframe(s + o, 0x81, payload, 300);
    if (big)
        o += cframe(s + o, 0x82, payload, sizeof(payload)); /* the 64-bit form */
    return o;
}

static void test_framing_splits(void)
{
    static char s[80000];
    size_t n = framing_stream(s, 1);
    rec_t whole;
    rec_open(&whole, NULL);
    CHECK(ph_ws_feed(whole.ws, s, n) == 0);
    CHECK(whole.messages == 10);
    CHECK(whole.pongs == 1 && whole.pong_len == 11 && memcmp(whole.pong, "unsolicited", 11) == 0);
    CHECK(whole.last_op == PH_WS_BINARY && whole.msg.len == 70000);
    static const char want[] = "1:5:Hello2:3:\x00\xff\x01"
                               "1:5:short2:5:short1:0:pong:unsolicited"
                               "1:14:caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"
                               "2:6:binary2:126:";
    CHECK(whole.log.len > sizeof(want) && memcmp(whole.log.p, want, sizeof(want) - 1) == 0);
    /* The two pings were answered at once, with their payloads. */
    sframe_t f[4];
    CHECK(sframes(&whole.out, f, 4) == 2);
    CHECK(f[0].b0 == 0x8a && f[0].n == 2 && memcmp(f[0].p, "p1", 2) == 0);
    CHECK(f[1].b0 == 0x8a && f[1].n == 0);
    CHECK(ph_ws_buffered(whole.ws) <= 4096); /* the 70000-byte buffer went back */
    CHECK(whole.buffered >= 70000);

    /* Byte by byte. */
    rec_t r;
    rec_open(&r, NULL);
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= ph_ws_feed(r.ws, s + i, 1) == 0;
    CHECK(ok);
    CHECK(r.log.len == whole.log.len && memcmp(r.log.p, whole.log.p, r.log.len) == 0);
    CHECK(r.out.len == whole.out.len && memcmp(r.out.p, whole.out.p, r.out.len) == 0);
    rec_close(&r);

    /* Every two-piece split of the stream without its big frame, and three-piece ones. */
    size_t m = framing_stream(s, 0);
    rec_t small;
    rec_open(&small, NULL);
    CHECK(ph_ws_feed(small.ws, s, m) == 0 && small.messages == 9);
    int bad = 0;
    for (size_t i = 0; i <= m; i++) {
        for (size_t j = i; j <= m; j += (i % 7 == 0 ? 1 : m + 1)) {
            rec_open(&r, NULL);
            int rv = ph_ws_feed(r.ws, s, i) | ph_ws_feed(r.ws, s + i, j - i) |
                     ph_ws_feed(r.ws, s + j, m - j);
            if (rv != 0 || r.log.len != small.log.len || r.out.len != small.out.len ||
                memcmp(r.log.p, small.log.p, r.log.len) != 0 ||
                memcmp(r.out.p, small.out.p, r.out.len) != 0)
                bad++;
            rec_close(&r);
        }
    }
    CHECK(bad == 0);
    rec_close(&small);
    rec_close(&whole);
}

/* A compressed stream (context taken over between messages, a ping in a fragmented message)
 * in every two-piece split: the inflater's state carries over any cut. */
static void test_deflate_splits(void)
{
    ph_ws_config_t cfg = {.deflate = 1, .server_max_window_bits = 12, .client_max_window_bits = 15};
    static char s[4096], c[2048];
    static const char text[] =
        "{\"op\": \"update\", \"id\": 42, \"caf\xc3\xa9\": \"\xe2\x82\xac\"}";
    z_stream *z = zdeflater(15);
    size_t n = 0, cl = zmsg(z, text, sizeof(text) - 1, c, sizeof(c));
    n += cframe(s + n, 0xc1, c, cl);
    cl = zmsg(z, text, sizeof(text) - 1, c, sizeof(c));
    n += cframe(s + n, 0x41, c, cl / 2);
    n += cframe(s + n, 0x89, "p", 1);
    n += cframe(s + n, 0x80, c + cl / 2, cl - cl / 2);
    n += cframe(s + n, 0x81, "plain", 5);
    cl = zmsg(z, text + 3, sizeof(text) - 4, c, sizeof(c));
    n += cframe(s + n, 0xc2, c, cl);
    zdone(z, 1);
    rec_t whole, r;
    rec_open(&whole, &cfg);
    CHECK(ph_ws_feed(whole.ws, s, n) == 0 && whole.messages == 4 && whole.out.len == 3);
    CHECK(whole.msg.len == sizeof(text) - 4 && memcmp(whole.msg.p, text + 3, whole.msg.len) == 0);
    int bad = 0;
    for (size_t i = 0; i <= n; i++) {
        rec_open(&r, &cfg);
        bad += ph_ws_feed(r.ws, s, i) != 0 || ph_ws_feed(r.ws, s + i, n - i) != 0 ||
               r.log.len != whole.log.len || memcmp(r.log.p, whole.log.p, r.log.len) != 0 ||
               r.out.len != whole.out.len;
        rec_close(&r);
    }
    CHECK(bad == 0);
    rec_close(&whole);
}

static void test_many_fragments(void)
{
    /* 200 KB in 100-byte fragments, with a 125-byte ping now and then. */
    static char payload[200000], s[200000 + 2100 * 14 + 200];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (char)('A' + i % 23);
    size_t n = 0;
    for (size_t off = 0; off < sizeof(payload); off += 100) {
        int first = off == 0, last = off + 100 >= sizeof(payload);
        n += cframe(s + n, (last ? 0x80 : 0) | (first ? 0x01 : 0x00), payload + off, 100);
        if (off % 20000 == 0)
            n += cframe(s + n, 0x89, payload, 125);
    }
    rec_t r;
    rec_open(&r, NULL);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1 && r.msg.len == sizeof(payload) &&
          memcmp(r.msg.p, payload, sizeof(payload)) == 0);
    sframe_t f[16];
    CHECK(sframes(&r.out, f, 16) == 10 && f[9].b0 == 0x8a && f[9].n == 125 &&
          memcmp(f[9].p, payload, 125) == 0);
    CHECK(r.buffered >= sizeof(payload) && r.buffered < 2 * sizeof(payload));
    rec_close(&r);
}

static void test_claimed_length(void)
{
    /* A frame that claims 2^62 bytes costs what actually arrives, not what it claims. */
    rec_t r;
    rec_open(&r, NULL);
    char s[64] = {(char)0x82, (char)(0x80 | 127), 0x40, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    memset(s + 14, 'x', 20);
    CHECK(ph_ws_feed(r.ws, s, 34) == 0);
    CHECK(ph_ws_buffered(r.ws) > 0 && ph_ws_buffered(r.ws) <= 4096);
    rec_close(&r);
    /* The most a 64-bit length may say (the top bit clear) is fine in itself. */
    rec_open(&r, NULL);
    s[2] = 0x7f;
    memset(s + 3, 0xff, 7);
    CHECK(ph_ws_feed(r.ws, s, 34) == 0);
    rec_close(&r);
}

/* ---- the protocol broken --------------------------------------------------------------------- */

static void test_failures(void)
{
    char s[512];
    size_t n;
    ph_ws_config_t deflate = {
        .deflate = 1, .server_max_window_bits = 12, .client_max_window_bits = 15};

    /* An unmasked frame. */
    CHECK(fails_with(NULL, S("\x81\x02hi"), PH_WS_PROTOCOL_ERROR));
    /* RSV2, RSV3; RSV1 without deflate, on a continuation, on a control frame. */
    n = cframe(s, 0x81 | 0x20, "hi", 2);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x81 | 0x10, "hi", 2);
    CHECK(fails_with(&deflate, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x81 | 0x40, "hi", 2);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x01, "h", 1);
    n += cframe(s + n, 0x80 | 0x40, "i", 1);
    CHECK(fails_with(&deflate, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x89 | 0x40, "", 0);
    CHECK(fails_with(&deflate, s, n, PH_WS_PROTOCOL_ERROR));
    /* Reserved opcodes. */
    static const int reserved[] = {3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++) {
        n = cframe(s, 0x80 | reserved[i], "", 0);
        CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
        n = cframe(s, 0x81, "ok", 2); /* after a good frame too */
        n += cframe(s + n, 0x80 | reserved[i], "x", 1);
        CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    }
    /* Control frames: at most 125 bytes, never fragmented. */
    char big[200] = {0};
    n = cframe(s, 0x89, big, 126);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe_form(s, 0x89, big, 5, 16); /* even a small length in the long form */
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x09, "x", 1);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x08, "", 0);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    /* A continuation with nothing to continue; a new message inside a fragmented one. */
    n = cframe(s, 0x80, "x", 1);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x81, "whole", 5);
    n += cframe(s + n, 0x00, "x", 1);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x01, "a", 1);
    n += cframe(s + n, 0x81, "b", 1);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    n = cframe(s, 0x02, "a", 1);
    n += cframe(s + n, 0x89, "", 0);
    n += cframe(s + n, 0x02, "b", 1);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    /* A 64-bit length with its top bit set. */
    CHECK(
        fails_with(NULL, S("\x82\xff\x80\x00\x00\x00\x00\x00\x00\x01mask"), PH_WS_PROTOCOL_ERROR));
    /* Close frames: a lone byte; codes that may not be sent; a reason that is not UTF-8. */
    n = cframe(s, 0x88, "\x03", 1);
    CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    static const int bad_codes[] = {0,    999,  1004, 1005, 1006, 1015,
                                    1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++) {
        char p[2] = {(char)(bad_codes[i] >> 8), (char)bad_codes[i]};
        n = cframe(s, 0x88, p, 2);
        CHECK(fails_with(NULL, s, n, PH_WS_PROTOCOL_ERROR));
    }
    n = cframe(s, 0x88, "\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80", 16);
    CHECK(fails_with(NULL, s, n, PH_WS_INVALID_DATA));
    n = cframe(s, 0x88, "\x03\xe8\xc3", 3);
    CHECK(fails_with(NULL, s, n, PH_WS_INVALID_DATA));
    /* Text that is not UTF-8. */
    static const char *const bad_text[] = {
        "\xc0\x80",
        "\xc1\xbf",
        "\xe0\x80\x80",
        "\xe0\x9f\xbf",
        "\xed\xa0\x80",
        "\xed\xbf\xbf",
        "\xf0\x80\x80\x80",
        "\xf0\x8f\xbf\xbf",
        "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80",
        "\xff",
        "\x80",
        "a\xbf",
        "\xe2\x82",
        "\xf0\x9f\x98",
        "\xc3",
        "\xc3\x28",
        "\xe2\x28\xa1",
        "\xf8\x88\x80\x80\x80",
    };
    for (size_t i = 0; i < sizeof(bad_text) / sizeof(bad_text[0]); i++) {
        n = cframe(s, 0x81, bad_text[i], strlen(bad_text[i]));
        CHECK(fails_with(NULL, s, n, PH_WS_INVALID_DATA));
    }
    /* The same bytes as binary are fine. */
    rec_t r;
    rec_open(&r, NULL);
    n = cframe(s, 0x82, "\xc0\x80\xff", 3);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1);
    rec_close(&r);
}

static int text_accepted(const unsigned char *t, size_t n)
{
    char s[32];
    size_t fl = cframe(s, 0x81, t, n);
    rec_t r;
    rec_open(&r, NULL);
    int rv = ph_ws_feed(r.ws, s, fl);
    int got = rv == 0 && r.messages == 1                       ? 1
              : rv == PH_WS_FAILED && closed_with(&r, 0, 1007) ? 0
                                                               : -1;
    rec_close(&r);
    return got;
}

static void test_utf8_exhaustive(void)
{
    int bad = 0;
    unsigned char t[4];
    for (unsigned a = 0; a < 256; a++) {
        t[0] = (unsigned char)a;
        bad += text_accepted(t, 1) != utf8_ref(t, 1);
        for (unsigned b = 0; b < 256; b++) {
            t[1] = (unsigned char)b;
            bad += text_accepted(t, 2) != utf8_ref(t, 2);
        }
    }
    /* Three bytes for every lead that has its own rule (and one that does not). */
    static const unsigned char leads3[] = {0xe0, 0xe1, 0xed, 0xee, 0xef};
    for (size_t l = 0; l < sizeof(leads3); l++) {
        t[0] = leads3[l];
        for (unsigned b = 0; b < 256; b++) {
            for (unsigned c = 0; c < 256; c += (b >= 0x80 && b < 0xc0) ? 1 : 17) {
                t[1] = (unsigned char)b, t[2] = (unsigned char)c;
                bad += text_accepted(t, 3) != utf8_ref(t, 3);
            }
        }
    }
    static const unsigned char tails[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0xbf, 0xc0, 0xff};
    for (unsigned a = 0xf0; a <= 0xf8; a++) {
        for (unsigned b = 0; b < 256; b++) {
            for (size_t c = 0; c < sizeof(tails); c++) {
                for (size_t d = 0; d < sizeof(tails); d++) {
                    t[0] = (unsigned char)a, t[1] = (unsigned char)b, t[2] = tails[c];
                    t[3] = tails[d];
                    bad += text_accepted(t, 4) != utf8_ref(t, 4);
                }
            }
        }
    }
    CHECK(bad == 0);
}

/* Fail fast: the session gives up at the first byte that cannot be UTF-8, in the middle of a
 * frame and across fragments, before the rest arrives (Autobahn grades this, section 6). */
static void test_utf8_fail_fast(void)
{
    /* (text, index of the byte that must fail it) */
    static const struct {
        const char *t;
        size_t at;
    } cases[] = {
        {"Hello-\xc0\x80-world", 6},
        {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90"
         "\x80\x80"
         "edited",
         12},
        {"abc\xed\xa0\x80xyz", 4},
        {"\xe0\x80", 1},
        {"ok\xf5", 2},
        {"ok\xe2\x82(", 4},
        {"\xf0\x9f\x98\x80\xf0\x9f\xff", 6},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const char *t = cases[c].t;
        size_t tl = strlen(t);
        /* One frame claiming 1000 bytes, fed a byte at a time. */
        char hdr[16];
        size_t hl = cframe_form(hdr, 0x81, "", 0, 16);
        hdr[2] = (char)(1000 >> 8), hdr[3] = (char)(1000 & 0xff);
        rec_t r;
        rec_open(&r, NULL);
        CHECK(ph_ws_feed(r.ws, hdr, hl) == 0);
        size_t failed_at = (size_t)-1;
        for (size_t i = 0; i < tl; i++) {
            char b = (char)(t[i] ^ mask_key[i & 3]);
            if (ph_ws_feed(r.ws, &b, 1) == PH_WS_FAILED) {
                failed_at = i;
                break;
            }
        }
        CHECK(failed_at == cases[c].at && closed_with(&r, 0, 1007));
        rec_close(&r);
        /* The same text one byte per fragment: the fragment holding the byte fails. */
        rec_open(&r, NULL);
        failed_at = (size_t)-1;
        for (size_t i = 0; i < tl; i++) {
            char f[16];
            size_t fl = cframe(f, i == 0 ? 0x01 : 0x00, t + i, 1);
            if (ph_ws_feed(r.ws, f, fl) == PH_WS_FAILED) {
                failed_at = i;
                break;
            }
        }
        CHECK(failed_at == cases[c].at && closed_with(&r, 0, 1007));
        rec_close(&r);
    }
    /* Ending a message inside a character fails at the end, and only there. */
    rec_t r;
    rec_open(&r, NULL);
    char s[64];
    size_t n = cframe(s, 0x01, "\xf0\x9f", 2);
    CHECK(ph_ws_feed(r.ws, s, n) == 0);
    n = cframe(s, 0x80, "\x98", 1);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_FAILED && closed_with(&r, 0, 1007));
    rec_close(&r);
}

/* ---- closing --------------------------------------------------------------------------------- */

static void test_close_handshake(void)
{
    char s[256];
    size_t n;
    rec_t r;

    /* The peer closes: we echo the code, report it with the reason, and stop reading. */
    rec_open(&r, NULL);
    n = cframe(s, 0x88,
               "\x03\xe8"
               "bye \xe2\x9c\x93",
               9);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_DONE);
    CHECK(closed_with(&r, 0, 1000));
    CHECK(r.closes == 1 && r.close_code == 1000 && r.reason_len == 7 &&
          memcmp(r.reason, "bye \xe2\x9c\x93", 7) == 0);
    CHECK(ph_ws_close_received(r.ws) && ph_ws_close_sent(r.ws) && ph_ws_close_code(r.ws) == 0);
    size_t before = r.out.len;
    n = cframe(s, 0x89, "x", 1);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_DONE && r.out.len == before);
    CHECK(ph_ws_feed(r.ws, S("garbage")) == PH_WS_DONE);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "x", 1) == PH_ECLOSED);
    CHECK(ph_ws_ping(r.ws, "x", 1) == PH_ECLOSED);
    CHECK(ph_ws_close(r.ws, 1000, NULL, 0) == PH_ECLOSED);
    rec_close(&r);

    /* Every code a peer may send is accepted and echoed. */
    static const int good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                               1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    int bad = 0;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        rec_open(&r, NULL);
        char p[2] = {(char)(good[i] >> 8), (char)good[i]};
        n = cframe(s, 0x88, p, 2);
        bad += ph_ws_feed(r.ws, s, n) != PH_WS_DONE || !closed_with(&r, 0, good[i]) ||
               r.close_code != good[i];
        rec_close(&r);
    }
    CHECK(bad == 0);

    /* A close without a code: reported as 1005, answered with an empty close. */
    rec_open(&r, NULL);
    n = cframe(s, 0x88, "", 0);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_DONE && closed_with(&r, 0, -1));
    CHECK(r.close_code == PH_WS_NO_STATUS && r.reason_len == 0);
    rec_close(&r);

    /* A close in the middle of a fragmented message ends it all; the message is dropped. */
    rec_open(&r, NULL);
    n = cframe(s, 0x01, "half", 4);
    n += cframe(s + n, 0x88, "\x03\xe9", 2);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_DONE && r.messages == 0 && r.close_code == 1001);
    rec_close(&r);

    /* We close first: data still arrives, pings go unanswered, the peer's close ends it with no
     * second close frame from us. */
    rec_open(&r, NULL);
    CHECK(ph_ws_close(r.ws, 4000, S("going")) == 0);
    sframe_t f[4];
    CHECK(sframes(&r.out, f, 4) == 1 && f[0].b0 == 0x88 && f[0].n == 7 &&
          memcmp(f[0].p, "\x0f\xa0going", 7) == 0);
    CHECK(ph_ws_close_sent(r.ws) && !ph_ws_close_received(r.ws));
    n = cframe(s, 0x81, "late", 4);
    n += cframe(s + n, 0x89, "p", 1);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1 && r.out.len == 9);
    n = cframe(s, 0x88, "\x0f\xa0", 2);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_DONE && r.out.len == 9 && r.closes == 1 &&
          r.close_code == 4000);
    rec_close(&r);

    /* We close first and the peer then breaks the protocol: failed, but no second close. */
    rec_open(&r, NULL);
    CHECK(ph_ws_close(r.ws, 1000, NULL, 0) == 0);
    n = cframe(s, 0x81, "\xff", 1);
    CHECK(ph_ws_feed(r.ws, s, n) == PH_WS_FAILED && ph_ws_close_code(r.ws) == 1007 &&
          r.out.len == 4);
    rec_close(&r);
}

/* ---- limits ---------------------------------------------------------------------------------- */

static void test_max_size(void)
{
    ph_ws_config_t cfg = {.max_size = 1000};
    static char s[4096], payload[2000];
    memset(payload, 'm', sizeof(payload));
    size_t n;
    rec_t r;

    rec_open(&r, &cfg);
    n = cframe(s, 0x81, payload, 1000); /* exactly the limit */
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1 && r.msg.len == 1000);
    rec_close(&r);
    /* One byte over, in one frame: refused from its header, before the payload comes. */
    rec_open(&r, &cfg);
    n = cframe(s, 0x82, payload, 1001);
    CHECK(ph_ws_feed(r.ws, s, 8) == PH_WS_FAILED && closed_with(&r, 0, 1009));
    rec_close(&r);
    /* Over across fragments. */
    n = cframe(s, 0x01, payload, 600);
    n += cframe(s + n, 0x89, "", 0);
    n += cframe(s + n, 0x80, payload, 401);
    CHECK(fails_with(&cfg, s, n, PH_WS_TOO_BIG));
    /* Control frames do not count. */
    rec_open(&r, &cfg);
    n = cframe(s, 0x01, payload, 1000);
    n += cframe(s + n, 0x89, payload, 125);
    n += cframe(s + n, 0x80, "", 0);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1);
    rec_close(&r);
}

/* ---- permessage-deflate ---------------------------------------------------------------------- */

static void test_inflate(void)
{
    ph_ws_config_t cfg = {.deflate = 1, .server_max_window_bits = 12, .client_max_window_bits = 15};
    static char s[1 << 17], c[1 << 16], text[20000];
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = "the quick brown fox jumps over the lazy dog. "[i % 45];
    size_t n, cl;
    rec_t r;

    /* With context takeover: the second message leans on the first. */
    z_stream *z = zdeflater(15);
    rec_open(&r, &cfg);
    cl = zmsg(z, text, 5000, c, sizeof(c));
    n = cframe(s, 0xc1, c, cl);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1 && r.last_op == PH_WS_TEXT &&
          r.msg.len == 5000 && memcmp(r.msg.p, text, 5000) == 0);
    cl = zmsg(z, text, 5000, c, sizeof(c));
    CHECK(cl < 100);
    n = cframe(s, 0xc2, c, cl);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 2 && r.last_op == PH_WS_BINARY &&
          r.msg.len == 5000 && memcmp(r.msg.p, text, 5000) == 0);
    /* A plain message between compressed ones. */
    n = cframe(s, 0x81, "plain", 5);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.msg.len == 5 && memcmp(r.msg.p, "plain", 5) == 0);
    /* A compressed message in fragments (RSV1 on the first only), a ping between, fed a byte
     * at a time. */
    cl = zmsg(z, text + 100, 15000, c, sizeof(c));
    size_t third = cl / 3;
    n = cframe(s, 0x41, c, third);
    n += cframe(s + n, 0x89, "mid", 3);
    n += cframe(s + n, 0x00, c + third, third);
    n += cframe(s + n, 0x80, c + 2 * third, cl - 2 * third);
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        ok &= ph_ws_feed(r.ws, s + i, 1) == 0;
    CHECK(ok && r.messages == 4 && r.msg.len == 15000 && memcmp(r.msg.p, text + 100, 15000) == 0);
    /* Empty compressed messages: an empty stored block (0x00, what zlib makes of nothing), and
     * no bytes at all. The stream goes on unharmed after both. */
    n = cframe(s, 0xc1, "\x00", 1);
    n += cframe(s + n, 0xc1, "", 0);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 6 && r.msg.len == 0);
    cl = zmsg(z, text, 2000, c, sizeof(c));
    n = cframe(s, 0xc1, c, cl);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.msg.len == 2000 && memcmp(r.msg.p, text, 2000) == 0);
    /* Two deflate streams in one message: the first ends (BFINAL), the second follows. */
    z_stream *z2 = zdeflater(15);
    z2->next_in = (Bytef *)"first ";
    z2->avail_in = 6;
    z2->next_out = (Bytef *)c;
    z2->avail_out = sizeof(c);
    CHECK(deflate(z2, Z_FINISH) == Z_STREAM_END);
    cl = sizeof(c) - z2->avail_out;
    zdone(z2, 1);
    z2 = zdeflater(15);
    cl += zmsg(z2, "second", 6, c + cl, sizeof(c) - cl);
    zdone(z2, 1);
    n = cframe(s, 0xc1, c, cl);
    rec_t r2;
    rec_open(&r2, &cfg);
    CHECK(ph_ws_feed(r2.ws, s, n) == 0 && r2.msg.len == 12 &&
          memcmp(r2.msg.p, "first second", 12) == 0);
    rec_close(&r2);
    /* A message that ends its deflate stream (BFINAL): the next one starts a new stream. */
    z->next_in = (Bytef *)"final";
    z->avail_in = 5;
    z->next_out = (Bytef *)c;
    z->avail_out = sizeof(c);
    CHECK(deflate(z, Z_FINISH) == Z_STREAM_END);
    n = cframe(s, 0xc1, c, sizeof(c) - z->avail_out);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.msg.len == 5 && memcmp(r.msg.p, "final", 5) == 0);
    deflateReset(z);
    cl = zmsg(z, text, 3000, c, sizeof(c));
    n = cframe(s, 0xc1, c, cl);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.msg.len == 3000 && memcmp(r.msg.p, text, 3000) == 0);
    CHECK(ph_ws_buffered(r.ws) <= 4096);
    rec_close(&r);
    zdone(z, 1);

    /* client_no_context_takeover: the client starts afresh each message, and so do we. */
    ph_ws_config_t nct = cfg;
    nct.client_no_context_takeover = 1;
    nct.client_max_window_bits = 9;
    rec_open(&r, &nct);
    ok = 1;
    for (int i = 0; i < 3; i++) {
        z = zdeflater(9);
        cl = zmsg(z, text + i, 4000, c, sizeof(c));
        zdone(z, 1);
        n = cframe(s, 0xc1, c, cl);
        ok &= ph_ws_feed(r.ws, s, n) == 0 && r.msg.len == 4000 &&
              memcmp(r.msg.p, text + i, 4000) == 0;
    }
    CHECK(ok && r.messages == 3);
    rec_close(&r);

    /* A window larger than agreed: a message that points further back into the one before
     * than the agreed 512 bytes is not valid data for us. (Within one message zlib resolves
     * any distance from the output itself.) */
    static char far[1000];
    uint32_t x = 1;
    for (size_t i = 0; i < sizeof(far); i++) {
        x = x * 1103515245 + 12345;
        far[i] = (char)(x >> 16);
    }
    for (int bits = 9; bits <= 15; bits += 6) {
        ph_ws_config_t w = cfg;
        w.client_max_window_bits = bits;
        z = zdeflater(15);
        n = cframe(s, 0xc2, c, zmsg(z, far, sizeof(far), c, sizeof(c)));
        n += cframe(s + n, 0xc2, c, zmsg(z, far, sizeof(far), c, sizeof(c)));
        zdone(z, 1);
        if (bits == 9) {
            CHECK(fails_with(&w, s, n, PH_WS_INVALID_DATA));
        } else {
            rec_open(&r, &w);
            CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 2 && r.msg.len == sizeof(far) &&
                  memcmp(r.msg.p, far, sizeof(far)) == 0);
            rec_close(&r);
        }
    }

    /* Not DEFLATE data at all (a reserved block type). */
    n = cframe(s, 0xc2, "\xff\xff\xff\xff", 4);
    CHECK(fails_with(&cfg, s, n, PH_WS_INVALID_DATA));
    /* Compressed text that is not UTF-8, failed as it inflates. */
    z = zdeflater(15);
    memcpy(c + 30000, text, 1000);
    memcpy(c + 31000, "\xed\xa0\x80", 3);
    cl = zmsg(z, c + 30000, 1003, c, 30000);
    zdone(z, 1);
    n = cframe(s, 0xc1, c, cl);
    CHECK(fails_with(&cfg, s, n, PH_WS_INVALID_DATA));
}

static void test_inflate_limits(void)
{
    ph_ws_config_t cfg = {.deflate = 1,
                          .max_size = 65536,
                          .server_max_window_bits = 12,
                          .client_max_window_bits = 15};
    static char zeros[1 << 20], c[1 << 16], s[1 << 17];
    size_t cl, n;
    rec_t r;
    /* A bomb: 1 MiB of zeros is about a kilobyte compressed. It stops at the limit. */
    z_stream *z = zdeflater(15);
    cl = zmsg(z, zeros, sizeof(zeros), c, sizeof(c));
    zdone(z, 1);
    CHECK(cl < 2048);
    n = cframe(s, 0xc2, c, cl);
    CHECK(fails_with(&cfg, s, n, PH_WS_TOO_BIG));
    /* Exactly the limit inflated is fine, and the buffer is let go afterwards. */
    z = zdeflater(15);
    cl = zmsg(z, zeros, 65536, c, sizeof(c));
    zdone(z, 1);
    rec_open(&r, &cfg);
    n = cframe(s, 0xc2, c, cl);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.messages == 1 && r.msg.len == 65536);
    CHECK(r.buffered >= 65536 && r.buffered <= 65537);
    CHECK(ph_ws_buffered(r.ws) <= 4096);
    rec_close(&r);
    /* One over, inflated from a single tiny frame. */
    z = zdeflater(15);
    cl = zmsg(z, zeros, 65537, c, sizeof(c));
    zdone(z, 1);
    n = cframe(s, 0xc2, c, cl);
    CHECK(fails_with(&cfg, s, n, PH_WS_TOO_BIG));
}

static void test_deflate_send(void)
{
    static char text[100000], got[1 << 17];
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = "{\"type\": \"event\", \"value\": 12345} "[i % 35];
    sframe_t f[8];
    rec_t r;

    /* Context takeover (window 10, as a client might ask): the second copy costs little. */
    ph_ws_config_t cfg = {.deflate = 1, .server_max_window_bits = 10, .client_max_window_bits = 15};
    rec_open(&r, &cfg);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, text, 1000) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, text, 1000) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, "tiny", 4) == 0); /* compressed too, however short */
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, text, sizeof(text)) == 0);
    CHECK(sframes(&r.out, f, 8) == 4);
    CHECK(f[0].b0 == 0xc1 && f[0].n < 200 && f[1].b0 == 0xc1 && f[1].n < f[0].n);
    CHECK(f[2].b0 == 0xc2 && f[3].b0 == 0xc2);
    /* The client inflates them in order with the window we said we would use. */
    z_stream *z = zinflater(10);
    CHECK(zunmsg(z, f[0].p, f[0].n, got, sizeof(got)) == 1000 && memcmp(got, text, 1000) == 0);
    CHECK(zunmsg(z, f[1].p, f[1].n, got, sizeof(got)) == 1000 && memcmp(got, text, 1000) == 0);
    CHECK(zunmsg(z, f[2].p, f[2].n, got, sizeof(got)) == 4 && memcmp(got, "tiny", 4) == 0);
    CHECK(zunmsg(z, f[3].p, f[3].n, got, sizeof(got)) == (long)sizeof(text) &&
          memcmp(got, text, sizeof(text)) == 0);
    zdone(z, 0);
    CHECK(ph_ws_buffered(r.ws) == 0);
    rec_close(&r);

    /* An empty message between two others, with context takeover: zlib writes nothing for
     * it, so the session sends one byte (an empty stored block's header), which the peer's
     * inflater must take without losing its place. */
    rec_open(&r, &cfg);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, text, 45) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "", 0) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, "x", 1) == 0);
    CHECK(sframes(&r.out, f, 8) == 3);
    CHECK(f[1].b0 == 0xc1 && f[1].n == 1);
    z = zinflater(10);
    CHECK(zunmsg(z, f[0].p, f[0].n, got, sizeof(got)) == 45 && memcmp(got, text, 45) == 0);
    CHECK(zunmsg(z, f[1].p, f[1].n, got, sizeof(got)) == 0);
    CHECK(zunmsg(z, f[2].p, f[2].n, got, sizeof(got)) == 1 && got[0] == 'x');
    zdone(z, 0);
    rec_close(&r);

    /* server_no_context_takeover: each message inflates alone, one deflate cannot shrink
     * too. */
    cfg.server_no_context_takeover = 1;
    cfg.server_max_window_bits = 9;
    rec_open(&r, &cfg);
    static char noise[600];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof(noise); i++) {
        x = x * 1103515245 + 12345;
        noise[i] = (char)(x >> 16);
    }
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, text, 2000) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, noise, sizeof(noise)) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, text, 2000) == 0);
    CHECK(sframes(&r.out, f, 8) == 3);
    CHECK(f[0].b0 == 0xc1 && f[2].b0 == 0xc1 && f[0].n == f[2].n);
    CHECK(f[1].b0 == 0xc2);
    for (int i = 0; i < 3; i++) {
        z = zinflater(9);
        long want = i == 1 ? (long)sizeof(noise) : 2000;
        CHECK(zunmsg(z, f[i].p, f[i].n, got, sizeof(got)) == want &&
              memcmp(got, i == 1 ? noise : text, (size_t)want) == 0);
        zdone(z, 0);
    }
    rec_close(&r);

    /* Round trip: what we send, a session of ours with the same settings reads back. */
    ph_ws_config_t both = {
        .deflate = 1, .server_max_window_bits = 12, .client_max_window_bits = 12};
    rec_t a, b;
    rec_open(&a, &both);
    rec_open(&b, &both);
    for (int i = 0; i < 4; i++)
        CHECK(ph_ws_send(a.ws, i & 1 ? PH_WS_BINARY : PH_WS_TEXT, text + i, 3000 + 1000 * i) == 0);
    CHECK(sframes(&a.out, f, 8) == 4);
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        static char m[8192];
        size_t n = cframe(m, f[i].b0, f[i].p, f[i].n); /* as a client would: masked */
        ok &= ph_ws_feed(b.ws, m, n) == 0 && b.msg.len == (size_t)(3000 + 1000 * i) &&
              memcmp(b.msg.p, text + i, b.msg.len) == 0;
    }
    CHECK(ok && b.messages == 4);
    rec_close(&a);
    rec_close(&b);
}

/* ---- sending --------------------------------------------------------------------------------- */

static void test_send(void)
{
    rec_t r;
    sframe_t f[8];
    static char big[70000];
    memset(big, 'b', sizeof(big));

    rec_open(&r, NULL);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "hi", 2) == 0);
    CHECK(r.out.len == 4 && memcmp(r.out.p, "\x81\x02hi", 4) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, NULL, 0) == 0);
    CHECK(r.out.len == 6 && memcmp(r.out.p + 4, "\x82\x00", 2) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, big, 125) == 0);
    CHECK(r.out.len == 6 + 2 + 125 && (unsigned char)r.out.p[7] == 125);
    r.out.len = 0;
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, big, 126) == 0);
    CHECK(r.out.len == 4 + 126 && memcmp(r.out.p, "\x82\x7e\x00\x7e", 4) == 0);
    r.out.len = 0;
    CHECK(ph_ws_send(r.ws, PH_WS_BINARY, big, 65535) == 0);
    CHECK(r.out.len == 4 + 65535 && memcmp(r.out.p, "\x82\x7e\xff\xff", 4) == 0);
    r.out.len = 0;
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, big, 70000) == 0);
    CHECK(r.out.len == 10 + 70000 &&
          memcmp(r.out.p, "\x81\x7f\x00\x00\x00\x00\x00\x01\x11\x70", 10) == 0);
    CHECK(r.writes == 6); /* one write per frame */
    CHECK(ph_ws_send(r.ws, PH_WS_PING, "x", 1) == PH_EINVAL);
    CHECK(ph_ws_send(r.ws, PH_WS_CONT, "x", 1) == PH_EINVAL);

    r.out.len = 0;
    CHECK(ph_ws_ping(r.ws, "abc", 3) == 0);
    CHECK(ph_ws_ping(r.ws, NULL, 0) == 0);
    CHECK(ph_ws_ping(r.ws, big, 125) == 0);
    CHECK(ph_ws_ping(r.ws, big, 126) == PH_EINVAL);
    CHECK(sframes(&r.out, f, 8) == 3 && f[0].b0 == 0x89 && f[0].n == 3 && f[1].n == 0 &&
          f[2].n == 125);
    /* A pong from the peer. */
    char s[64];
    size_t n = cframe(s, 0x8a, "abc", 3);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.pongs == 1 && r.pong_len == 3);

    /* Closing: codes checked, the reason cut to 123 bytes at a character boundary. */
    CHECK(ph_ws_close(r.ws, 999, NULL, 0) == PH_EINVAL);
    CHECK(ph_ws_close(r.ws, 1005, NULL, 0) == PH_EINVAL);
    CHECK(ph_ws_close(r.ws, 1015, NULL, 0) == PH_EINVAL);
    CHECK(ph_ws_close(r.ws, 5000, NULL, 0) == PH_EINVAL);
    CHECK(ph_ws_close(r.ws, 1016, NULL, 0) == PH_EINVAL);
    CHECK(ph_ws_close(r.ws, 2999, NULL, 0) == PH_EINVAL);
    CHECK(ph_ws_close(r.ws, 1004, NULL, 0) == PH_EINVAL);
    CHECK(!ph_ws_close_sent(r.ws));
    char reason[200];
    for (size_t i = 0; i < 200; i += 2)
        memcpy(reason + i, "\xc3\xa9", 2); /* é: a cut at 123 would split one */
    r.out.len = 0;
    CHECK(ph_ws_close(r.ws, 1001, reason, sizeof(reason)) == 0);
    CHECK(sframes(&r.out, f, 8) == 1 && f[0].b0 == 0x88 && f[0].n == 2 + 122 &&
          memcmp(f[0].p, "\x03\xe9", 2) == 0 && memcmp(f[0].p + 2, reason, 122) == 0);
    CHECK(ph_ws_close(r.ws, 1000, NULL, 0) == PH_ECLOSED);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "x", 1) == PH_ECLOSED);
    CHECK(ph_ws_ping(r.ws, "x", 1) == PH_ECLOSED);
    rec_close(&r);

    rec_open(&r, NULL);
    CHECK(ph_ws_close(r.ws, 0, "ignored", 7) == 0);
    CHECK(r.out.len == 2 && memcmp(r.out.p, "\x88\x00", 2) == 0);
    rec_close(&r);
    rec_open(&r, NULL);
    memset(reason, 'r', sizeof(reason));
    CHECK(ph_ws_close(r.ws, 3000, reason, 124) == 0); /* ASCII: cut at exactly 123 */
    CHECK(r.out.len == 2 + 2 + 123 && (unsigned char)r.out.p[1] == 125);
    rec_close(&r);
    rec_open(&r, NULL);
    CHECK(ph_ws_close(r.ws, 3000, "abc", 3) == 0);
    CHECK(r.out.len == 7 && memcmp(r.out.p,
                                   "\x88\x05\x0b\xb8"
                                   "abc",
                                   7) == 0);
    rec_close(&r);

    /* The app answering from on_message (an echo). */
    rec_open(&r, NULL);
    r.echo = 1;
    n = cframe(s, 0x81, "echo", 4);
    CHECK(ph_ws_feed(r.ws, s, n) == 0 && r.out.len == 6 &&
          memcmp(r.out.p,
                 "\x81\x04"
                 "echo",
                 6) == 0);
    rec_close(&r);
}

static void test_write_errors(void)
{
    rec_t r;
    char s[64];
    size_t n;

    /* A failed send: the error comes back, and from every call after it. */
    rec_open(&r, NULL);
    r.fail_at = 2;
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "one", 3) == 0);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "two", 3) == -32);
    CHECK(ph_ws_send(r.ws, PH_WS_TEXT, "three", 5) == -32 && r.writes == 2);
    CHECK(ph_ws_ping(r.ws, NULL, 0) == -32 && ph_ws_close(r.ws, 1000, NULL, 0) == -32);
    n = cframe(s, 0x81, "in", 2);
    CHECK(ph_ws_feed(r.ws, s, n) == -32 && r.messages == 0 && r.writes == 2);
    rec_close(&r);

    /* A pong that cannot be written. */
    rec_open(&r, NULL);
    r.fail_at = 1;
    n = cframe(s, 0x89, "p", 1);
    n += cframe(s + n, 0x81, "after", 5);
    CHECK(ph_ws_feed(r.ws, s, n) == -32 && r.messages == 0);
    rec_close(&r);

    /* The close frame of a failure that cannot be written: the write error, the code kept. */
    rec_open(&r, NULL);
    r.fail_at = 1;
    n = cframe(s, 0x81, "\xff", 1);
    CHECK(ph_ws_feed(r.ws, s, n) == -32 && ph_ws_close_code(r.ws) == 1007);
    CHECK(ph_ws_feed(r.ws, s, n) == -32);
    rec_close(&r);

    /* The reply to the peer's close. */
    rec_open(&r, NULL);
    r.fail_at = 1;
    n = cframe(s, 0x88, "\x03\xe8", 2);
    CHECK(ph_ws_feed(r.ws, s, n) == -32 && ph_ws_close_received(r.ws));
    rec_close(&r);

    /* A send from on_message that fails ends the feed with its error. */
    rec_open(&r, NULL);
    r.fail_at = 1;
    r.echo = 1;
    n = cframe(s, 0x81, "a", 1);
    n += cframe(s + n, 0x81, "b", 1);
    CHECK(ph_ws_feed(r.ws, s, n) == -32 && r.messages == 1);
    rec_close(&r);
}

int main(void)
{
    test_accept_key();
    test_negotiate();
    test_framing_splits();
    test_deflate_splits();
    test_many_fragments();
    test_claimed_length();
    test_failures();
    test_utf8_exhaustive();
    test_utf8_fail_fast();
    test_close_handshake();
    test_max_size();
    test_inflate();
    test_inflate_limits();
    test_deflate_send();
    test_send();
    test_write_errors();
    return CHECK_REPORT();
}
