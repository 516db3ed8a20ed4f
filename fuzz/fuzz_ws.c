/* libFuzzer target: arbitrary bytes as what a client sends on a WebSocket, in arbitrary slices,
 * through the session (ws.c: frame parser, UTF-8 check, permessage-deflate both ways), with a
 * bridge that echoes every message (so our compressor runs on what the inflater produced) and
 * may start the close handshake itself.
 *
 * Byte 0 picks the session: bit 0 permessage-deflate, bit 1 client_no_context_takeover, bit 2
 * server_no_context_takeover, bits 3-4 max_size (none, 64, 1000, 70000), bits 5-7 the windows.
 * Byte 1 seeds the slice sizes; the rest is the client's bytes. What is checked: every message
 * is text in valid UTF-8 or binary, and within max_size; the buffer stays within the limit;
 * every frame written is a whole unmasked server frame, none after our close; what we compress
 * inflates back to what we were given; a failure carries 1002, 1007 or 1009 and ends the
 * session. Built by `make fuzz`. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "../tests/c/utf8_ref.h"
#include "ws.h"

/* An invariant broke: say which before the fuzzer's crash report (a trap has no line). */
#define BROKEN() (fprintf(stderr, "fuzz_ws.c:%d: invariant broken\n", __LINE__), abort())

typedef struct {
    ph_ws_config_t cfg;
    z_stream zin; /* the client's inflater for what we compress */
    int zin_ready;
    int messages, closes, close_written, close_after;
    const char *echo; /* the message being echoed, to compare with what was written */
    size_t echo_len;
    int echo_op;
} fz_t;

static void check_buffer(const ph_ws_t *ws, const fz_t *f)
{
    if (f->cfg.max_size) {
        size_t bound = f->cfg.max_size + 1 > 4096 ? f->cfg.max_size + 1 : 4096;
        if (ph_ws_buffered(ws) > bound)
            BROKEN(); /* more held than the limit needs */
    }
}

static void on_message(ph_ws_t *ws, int op, const char *data, size_t len)
{
    fz_t *f = ph_ws_data(ws);
    if (op != PH_WS_TEXT && op != PH_WS_BINARY)
        BROKEN();
    if (op == PH_WS_TEXT && !utf8_ref((const unsigned char *)data, len))
        BROKEN();
    if (f->cfg.max_size && len > f->cfg.max_size)
        BROKEN();
    check_buffer(ws, f);
    f->messages++;
    f->echo = data;
    f->echo_len = len;
    f->echo_op = op;
    int rv = ph_ws_send(ws, op, data, len);
    if (rv != 0 && rv != PH_ECLOSED)
        BROKEN();
    if (rv == PH_ECLOSED && !f->close_written)
        BROKEN();
    f->echo = NULL;
    if (f->messages == f->close_after && ph_ws_close(ws, 1000, "bye", 3) != 0)
        BROKEN();
}

static void on_close(ph_ws_t *ws, int code, const char *reason, size_t len)
{
    fz_t *f = ph_ws_data(ws);
    f->closes++;
    int ok = code == PH_WS_NO_STATUS || (code >= 1000 && code <= 1003) ||
             (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
    if (!ok || !utf8_ref((const unsigned char *)reason, len) || !ph_ws_close_sent(ws))
        BROKEN();
}

/* What we compressed must inflate, with the window we announced, to what we were given. */
static void check_inflates(fz_t *f, const unsigned char *p, size_t n)
{
    if (!f->zin_ready) {
        if (inflateInit2(&f->zin, -f->cfg.server_max_window_bits) != Z_OK)
            abort();
        f->zin_ready = 1;
    }
    if (f->echo == NULL)
        BROKEN();
    unsigned char *in = malloc(n + 4), *out = malloc(f->echo_len + 1);
    if (in == NULL || out == NULL)
        abort();
    memcpy(in, p, n);
    memcpy(in + n, "\x00\x00\xff\xff", 4);
    f->zin.next_in = in;
    f->zin.avail_in = (uInt)(n + 4);
    f->zin.next_out = out;
    f->zin.avail_out = (uInt)(f->echo_len + 1); /* one more: nothing beyond the message */
    int zr = inflate(&f->zin, Z_SYNC_FLUSH);
    size_t got = f->echo_len + 1 - f->zin.avail_out;
    if ((zr != Z_OK && zr != Z_BUF_ERROR) || f->zin.avail_in != 0)
        BROKEN();
    if (got != f->echo_len || memcmp(out, f->echo, got) != 0)
        BROKEN();
    free(in);
    free(out);
    if (f->cfg.server_no_context_takeover)
        inflateReset(&f->zin);
}

static int on_write(ph_ws_t *ws, const char *data, size_t len)
{
    fz_t *f = ph_ws_data(ws);
    const unsigned char *h = (const unsigned char *)data;
    if (len < 2 || (h[1] & 0x80) || f->close_written)
        BROKEN(); /* short, masked, or after our close frame */
    size_t n = h[1] & 0x7f, hl = 2;
    if (n == 126) {
        hl = 4;
        n = len >= 4 ? (size_t)h[2] << 8 | h[3] : 0;
        if (n < 126)
            BROKEN();
    } else if (n == 127) {
        hl = 10;
        n = 0;
        for (int i = 0; i < 8 && len >= 10; i++)
            n = n << 8 | h[2 + i];
        if (n <= 0xffff)
            BROKEN();
    }
    if (len != hl + n || !(h[0] & 0x80) || (h[0] & 0x30))
        BROKEN(); /* one whole, final frame */
    int op = h[0] & 0x0f;
    if (op >= 0x8) {
        if (n > 125 || (h[0] & 0x40))
            BROKEN();
        if (op == PH_WS_CLOSE)
            f->close_written = 1;
    } else if (op == PH_WS_TEXT || op == PH_WS_BINARY) {
        if (op != f->echo_op || f->echo == NULL)
            BROKEN();
        if (h[0] & 0x40) {
            if (!f->cfg.deflate)
                BROKEN();
            check_inflates(f, h + hl, n);
        } else if (n != f->echo_len || memcmp(h + hl, f->echo, n) != 0) {
            BROKEN();
        }
    } else {
        BROKEN();
    }
    return 0;
}

static const ph_ws_callbacks_t callbacks = {on_message, on_close, NULL, on_write};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static fz_t f;
    memset(&f, 0, sizeof(f));
    static const size_t limits[4] = {0, 64, 1000, 70000};
    f.cfg.max_size = limits[(data[0] >> 3) & 3];
    if (data[0] & 1) {
        f.cfg.deflate = 1;
        f.cfg.client_no_context_takeover = (data[0] >> 1) & 1;
        f.cfg.server_no_context_takeover = (data[0] >> 2) & 1;
        f.cfg.server_max_window_bits = 9 + (data[0] >> 5) % 7;
        f.cfg.client_max_window_bits = 8 + (data[0] >> 5);
    }
    f.close_after = (data[1] & 7) == 7 ? 2 : 0; /* sometimes we close first, after 2 messages */
    ph_ws_t *ws = ph_ws_new(&f.cfg, &callbacks, &f);
    if (ws == NULL)
        return 0;
    uint32_t seed = data[1] * 2654435761u + 1;
    const char *p = (const char *)data + 2;
    size_t left = size - 2;
    int rv = 0;
    while (left) {
        seed = seed * 1103515245 + 12345;
        size_t piece = (seed >> 16) % 4 == 0 ? 1 : 1 + (seed >> 8) % 300;
        if (piece > left)
            piece = left;
        rv = ph_ws_feed(ws, p, piece);
        p += piece;
        left -= piece;
        check_buffer(ws, &f);
        if (rv == PH_WS_FAILED) {
            int code = ph_ws_close_code(ws);
            if ((code != 1002 && code != 1007 && code != 1009) || !f.close_written)
                BROKEN();
        } else if (rv == PH_WS_DONE) {
            if (!ph_ws_close_received(ws) || f.closes != 1 || !f.close_written)
                BROKEN();
        } else if (rv != 0) {
            BROKEN(); /* no write fails here, and nothing is big enough to run out */
        }
        if (rv != 0) {
            /* The end: what follows is ignored and nothing more is written. */
            int again = ph_ws_feed(ws, p, left);
            if (again != rv || ph_ws_send(ws, PH_WS_TEXT, "x", 1) != PH_ECLOSED)
                BROKEN();
            break;
        }
    }
    ph_ws_free(ws);
    if (f.zin_ready)
        inflateEnd(&f.zin);
    return 0;
}
