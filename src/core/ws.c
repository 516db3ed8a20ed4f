/* WebSocket framing (RFC 6455) and permessage-deflate (RFC 7692): see ws.h. */
#include "ws.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <zlib.h>

/* Buffers bigger than this are freed once their message is done, so an idle session holds at
 * most this much per direction whatever it carried before. Most messages (chat lines, JSON
 * events) fit, so they reuse the buffer instead of allocating per message. */
#define KEEP_BYTES 4096

/* Our compressor: a 4 KiB window and memLevel 5 take about 32 KiB per connection where
 * zlib's defaults (15, 8) take about 256 KiB; on the short messages WebSockets carry the ratio
 * barely moves (the same trade the websockets library makes). We ask the peer for the same
 * window when it lets us choose (client_max_window_bits), so our inflater holds 4 KiB, not
 * 32 KiB. */
#define SERVER_WINDOW_BITS 12
#define CLIENT_WINDOW_BITS 12
#define DEFLATE_MEM_LEVEL 5

/* Once permessage-deflate is agreed, every message goes out compressed, short ones and ones
 * deflate does not shrink too. RFC 7692 §6 lets any message go plain (RSV1 clear), and for a
 * message under about 50 bytes deflate saves nothing, but clients are less kind than the RFC:
 * kosoku (the Autobahn cases) fails an echo of a short text message that comes back plain
 * on a compressed connection, where a compressed one passes. The websockets library (uvicorn)
 * compresses everything too. */

/* Room kept free in the message buffer for each inflate call: big enough that a stream of
 * output does not cost a call per few bytes, small enough that growth tracks what arrives. */
#define INFLATE_ROOM 4096

/* The longest frame header we send: no mask, a 64-bit length. */
#define HDR_ROOM 10

/* UTF-8 validation as a small state machine, so a text message is checked as its bytes arrive
 * (in any split across frames and feeds) and fails on the first byte that cannot continue a
 * valid sequence. Each state says what the next byte must be. */
enum {
    U_OK,  /* between characters */
    U_BAD, /* sticky: no valid UTF-8 starts like this */
    U_1,   /* one continuation byte (80..BF) to go */
    U_2,   /* two */
    U_3,   /* three */
    U_E0,  /* after E0: A0..BF, else the 3-byte form is overlong */
    U_ED,  /* after ED: 80..9F, else it encodes a surrogate D800..DFFF */
    U_F0,  /* after F0: 90..BF, else the 4-byte form is overlong */
    U_F4,  /* after F4: 80..8F, else past U+10FFFF */
};

/* Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 never valid (C0 C1 F5..FF), 5 C2..DF,
 * 6 E0, 7 E1..EC EE EF, 8 ED, 9 F0, 10 F1..F3, 11 F4. */
static const uint8_t utf8_class[256] = {
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 00 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 20 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 30 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 40 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 50 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 60 */
    0, 0,  0,  0,  0,  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 70 */
    1, 1,  1,  1,  1,  1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 80 */
    2, 2,  2,  2,  2,  2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 90 */
    3, 3,  3,  3,  3,  3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* A0 */
    3, 3,  3,  3,  3,  3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* B0 */
    4, 4,  5,  5,  5,  5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, /* C0 */
    5, 5,  5,  5,  5,  5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, /* D0 */
    6, 7,  7,  7,  7,  7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 7, /* E0 */
    9, 10, 10, 10, 11, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, /* F0 */
};

#define B U_BAD
static const uint8_t utf8_next[9][12] = {
    /*          asc  80   90   A0   bad  C2   E0    E1   ED    F0    F1   F4 */
    [U_OK] = {U_OK, B, B, B, B, U_1, U_E0, U_2, U_ED, U_F0, U_3, U_F4},
    [U_BAD] = {B, B, B, B, B, B, B, B, B, B, B, B},
    [U_1] = {B, U_OK, U_OK, U_OK, B, B, B, B, B, B, B, B},
    [U_2] = {B, U_1, U_1, U_1, B, B, B, B, B, B, B, B},
    [U_3] = {B, U_2, U_2, U_2, B, B, B, B, B, B, B, B},
    [U_E0] = {B, B, B, U_1, B, B, B, B, B, B, B, B},
    [U_ED] = {B, U_1, U_1, B, B, B, B, B, B, B, B, B},
    [U_F0] = {B, B, U_2, U_2, B, B, B, B, B, B, B, B},
    [U_F4] = {B, U_2, B, B, B, B, B, B, B, B, B, B},
};
#undef B

static uint8_t utf8_scan(uint8_t st, const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (st == U_OK) {
            /* Text is mostly ASCII: skip it eight bytes at a time. */
            while (n - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ULL)
                    break;
                i += 8;
            }
            if (i == n)
                break;
        }
        st = utf8_next[st][utf8_class[p[i++]]];
        if (st == U_BAD)
            break;
    }
    return st;
}

struct ph_ws_s {
    ph_ws_config_t cfg;
    ph_ws_callbacks_t cb;
    void *data;

    /* The frame being read: its header gathers in hdr until hdr_need bytes are there. */
    uint8_t hdr[14];
    uint8_t hdr_len, hdr_need;
    uint8_t in_payload;
    uint8_t opcode, fin;
    uint8_t mask[4];
    unsigned mask_pos;
    uint64_t left; /* payload bytes of the frame still to come */

    /* The data message being assembled (msg_opcode 0: none open). */
    uint8_t msg_opcode, msg_deflated, msg_zbytes, utf8;
    uint8_t zended; /* the peer's deflate stream ended (BFINAL) with the last bytes fed */
    char *buf;
    size_t len, cap;

    /* A control frame's payload (at most 125 bytes, checked in its header). */
    uint8_t ctl_len;
    char ctl[125];

    z_stream *inflater, *deflater; /* made at the first message that needs them */

    char *out; /* frames we send: HDR_ROOM bytes for the header, then the payload */
    size_t out_cap;

    int fail_code;
    int werr; /* the write callback's error: sticky */
    uint8_t close_sent, close_received;
};

/* ---- the handshake --------------------------------------------------------------------------- */

static int b64char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

int ph_ws_accept_key(const char *key, size_t len, char out[29])
{
    /* RFC 6455 §1.3: the key's base64 text, not its bytes, is hashed with this GUID. */
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    out[0] = '\0';
    /* 16 bytes are 24 base64 characters, the last two padding. The 22nd also carries 4 bits
     * that no byte uses; like Python's and Go's decoders we do not insist they are zero. */
    if (len != 24 || key[22] != '=' || key[23] != '=')
        return -1;
    for (size_t i = 0; i < 22; i++)
        if (!b64char((unsigned char)key[i]))
            return -1;
    char text[24 + sizeof(guid) - 1];
    memcpy(text, key, 24);
    memcpy(text + 24, guid, sizeof(guid) - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(text, sizeof(text), md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 characters and a NUL */
    return 0;
}

/* ---- permessage-deflate negotiation ---------------------------------------------------------- */

typedef struct {
    int deflate; /* the extension is permessage-deflate */
    int ok;      /* every parameter known, once, with a good value */
    int server_nct, client_nct;
    int server_bits; /* 0: not offered */
    int client_bits; /* 0: not offered; else 8..15 (15 when offered without a value) */
} offer_t;

static const char *ows(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static const char *token_end(const char *p, const char *end)
{
    while (p < end && ph_is_token(p, 1))
        p++;
    return p;
}

/* A window-bits value: "8" to "15", no sign, no leading zero (RFC 7692 §7.1.2). -1 if not. */
static int window_bits(const char *v, size_t n)
{
    if (n == 1 && v[0] >= '8' && v[0] <= '9')
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + v[1] - '0';
    return -1;
}

static int eq(const char *p, size_t n, const char *lit)
{
    return ph_eq_lower(p, n, lit, strlen(lit));
}

/* One parameter of a permessage-deflate offer (vlen -1: no value); clears o->ok when it
 * spoils the offer. */
static void offer_param(offer_t *o, const char *name, size_t nlen, const char *v, int vlen)
{
    if (eq(name, nlen, "server_no_context_takeover")) {
        if (vlen >= 0 || o->server_nct)
            o->ok = 0;
        o->server_nct = 1;
    } else if (eq(name, nlen, "client_no_context_takeover")) {
        if (vlen >= 0 || o->client_nct)
            o->ok = 0;
        o->client_nct = 1;
    } else if (eq(name, nlen, "server_max_window_bits")) {
        int bits = vlen >= 0 ? window_bits(v, (size_t)vlen) : -1;
        if (bits < 0 || o->server_bits)
            o->ok = 0;
        o->server_bits = bits;
    } else if (eq(name, nlen, "client_max_window_bits")) {
        int bits = vlen >= 0 ? window_bits(v, (size_t)vlen) : 15;
        if (bits < 0 || o->client_bits)
            o->ok = 0;
        o->client_bits = bits;
    } else {
        o->ok = 0;
    }
}

/* Reads one element of the extension list at *pp and moves past it and its comma. Any syntax
 * error spoils only this element: the rest of it is skipped up to the next comma that is not
 * inside a quoted string. */
static void parse_offer(const char **pp, const char *end, offer_t *o)
{
    const char *p = ows(*pp, end);
    memset(o, 0, sizeof(*o));
    o->ok = 1;
    const char *name = p;
    p = token_end(p, end);
    o->deflate = eq(name, (size_t)(p - name), "permessage-deflate");
    if (p == name)
        o->ok = 0;
    int syntax = p > name;
    while (syntax) {
        p = ows(p, end);
        if (p == end || *p == ',')
            break;
        if (*p != ';') {
            syntax = 0;
            break;
        }
        p = ows(p + 1, end);
        const char *pname = p;
        p = token_end(p, end);
        size_t plen = (size_t)(p - pname);
        if (plen == 0) {
            syntax = 0;
            break;
        }
        p = ows(p, end);
        char v[4]; /* no good value is longer than 2 characters */
        int vlen = -1;
        if (p < end && *p == '=') {
            p = ows(p + 1, end);
            size_t n = 0;
            if (p < end && *p == '"') {
                /* RFC 7692 §7.1: a value may be a quoted-string; what counts is the unquoted
                 * text, so "1\5" means 15. */
                p++;
                while (p < end && *p != '"') {
                    if (*p == '\\' && ++p == end)
                        break;
                    if (n < sizeof(v))
                        v[n] = *p;
                    n++;
                    p++;
                }
                if (p == end) {
                    syntax = 0;
                    break;
                }
                p++;
            } else {
                const char *t = p;
                p = token_end(p, end);
                n = (size_t)(p - t);
                if (n == 0) {
                    syntax = 0;
                    break;
                }
                memcpy(v, t, n < sizeof(v) ? n : sizeof(v));
            }
            vlen = n <= sizeof(v) ? (int)n : 0; /* too long reads as empty: bad either way */
        }
        if (o->deflate)
            offer_param(o, pname, plen, v, vlen);
    }
    if (!syntax) {
        o->ok = 0;
        int quoted = 0;
        while (p < end && (quoted || *p != ',')) {
            if (*p == '"')
                quoted = !quoted;
            else if (*p == '\\' && quoted && p + 1 < end)
                p++;
            p++;
        }
    }
    if (p < end)
        p++; /* the comma */
    *pp = p;
}

size_t ph_ws_negotiate(const char *value, size_t len, ph_ws_config_t *cfg, char *out, size_t outcap)
{
    cfg->deflate = 0;
    cfg->server_no_context_takeover = 0;
    cfg->client_no_context_takeover = 0;
    cfg->server_max_window_bits = 15;
    cfg->client_max_window_bits = 15;
    if (outcap > 0)
        out[0] = '\0';
    if (value == NULL)
        return 0;
    const char *p = value, *end = value + len;
    while (p < end) {
        offer_t o;
        parse_offer(&p, end, &o);
        /* A client that asks for an 8-bit window from us cannot have it: zlib refuses raw
         * deflate with 8 (deflateInit2 gives Z_STREAM_ERROR) and with a zlib header it quietly
         * uses 9, which would reach further back than the client keeps. RFC 7692 §7.1.2.1
         * says to decline such an offer; the next one may be acceptable. */
        if (!o.deflate || !o.ok || o.server_bits == 8)
            continue;
        int sbits = o.server_bits && o.server_bits < SERVER_WINDOW_BITS ? o.server_bits
                                                                        : SERVER_WINDOW_BITS;
        /* The client may only be told a window when it offered client_max_window_bits
         * (§7.1.2.2); without one it may use up to 15. */
        int cbits = 15;
        if (o.client_bits)
            cbits = o.client_bits < CLIENT_WINDOW_BITS ? o.client_bits : CLIENT_WINDOW_BITS;
        int n = snprintf(out, outcap, "permessage-deflate%s%s",
                         o.server_nct ? "; server_no_context_takeover" : "",
                         o.client_nct ? "; client_no_context_takeover" : "");
        /* Stated whenever it is below 15 (and always when the client asked): the client then
         * inflates with a window no bigger than we use. */
        if (n >= 0 && (size_t)n < outcap && (sbits < 15 || o.server_bits))
            n += snprintf(out + n, outcap - (size_t)n, "; server_max_window_bits=%d", sbits);
        if (n >= 0 && (size_t)n < outcap && o.client_bits)
            n += snprintf(out + n, outcap - (size_t)n, "; client_max_window_bits=%d", cbits);
        if (n < 0 || (size_t)n >= outcap) {
            if (outcap > 0)
                out[0] = '\0';
            return 0;
        }
        cfg->deflate = 1;
        cfg->server_no_context_takeover = o.server_nct;
        cfg->client_no_context_takeover = o.client_nct;
        cfg->server_max_window_bits = sbits;
        cfg->client_max_window_bits = cbits;
        return (size_t)n;
    }
    return 0;
}

/* ---- the session ----------------------------------------------------------------------------- */

ph_ws_t *ph_ws_new(const ph_ws_config_t *cfg, const ph_ws_callbacks_t *cb, void *data)
{
    ph_ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return NULL;
    ws->cfg = *cfg;
    ws->cb = *cb;
    ws->data = data;
    ws->hdr_need = 2;
    /* A config filled by hand rather than by ph_ws_negotiate: out-of-range windows mean zlib's
     * default, which every peer accepts. */
    if (ws->cfg.server_max_window_bits < 9 || ws->cfg.server_max_window_bits > 15)
        ws->cfg.server_max_window_bits = 15;
    if (ws->cfg.client_max_window_bits < 8 || ws->cfg.client_max_window_bits > 15)
        ws->cfg.client_max_window_bits = 15;
    return ws;
}

/* What a finished session no longer needs: after both close frames, or a failure, nothing is
 * sent or assembled again, and the bridge may keep the session until the app lets go. */
static void release(ph_ws_t *ws)
{
    free(ws->buf);
    ws->buf = NULL;
    ws->len = ws->cap = 0;
    free(ws->out);
    ws->out = NULL;
    ws->out_cap = 0;
    if (ws->inflater) {
        inflateEnd(ws->inflater);
        free(ws->inflater);
        ws->inflater = NULL;
    }
    if (ws->deflater) {
        deflateEnd(ws->deflater);
        free(ws->deflater);
        ws->deflater = NULL;
    }
}

void ph_ws_free(ph_ws_t *ws)
{
    if (ws == NULL)
        return;
    release(ws);
    free(ws);
}

void *ph_ws_data(const ph_ws_t *ws)
{
    return ws->data;
}
int ph_ws_close_code(const ph_ws_t *ws)
{
    return ws->fail_code;
}
int ph_ws_close_sent(const ph_ws_t *ws)
{
    return ws->close_sent;
}
int ph_ws_close_received(const ph_ws_t *ws)
{
    return ws->close_received;
}
size_t ph_ws_buffered(const ph_ws_t *ws)
{
    return ws->cap;
}

/* ---- sending --------------------------------------------------------------------------------- */

/* Hands one frame to the write callback. 0 or its (sticky) error. */
static int emit(ph_ws_t *ws, const char *frame, size_t n)
{
    int rv = ws->cb.write(ws, frame, n);
    if (rv < 0) {
        ws->werr = rv;
        return rv;
    }
    return 0;
}

/* A control frame (payload <= 125 bytes): small enough to build on the stack. */
static int send_control(ph_ws_t *ws, int opcode, const char *payload, size_t n)
{
    char f[2 + 125];
    f[0] = (char)(0x80 | opcode);
    f[1] = (char)n;
    if (n)
        memcpy(f + 2, payload, n);
    return emit(ws, f, 2 + n);
}

static int out_reserve(ph_ws_t *ws, size_t payload)
{
    if (payload > SIZE_MAX - HDR_ROOM)
        return PH_ENOMEM;
    size_t need = HDR_ROOM + payload;
    if (need <= ws->out_cap)
        return 0;
    size_t cap = ws->out_cap > need / 2 && ws->out_cap <= SIZE_MAX / 2 ? ws->out_cap * 2 : need;
    char *p = realloc(ws->out, cap);
    if (p == NULL)
        return PH_ENOMEM;
    ws->out = p;
    ws->out_cap = cap;
    return 0;
}

/* Sends the payload at out + HDR_ROOM as one frame, its header written just in front of it. */
static int send_out(ph_ws_t *ws, int b0, size_t plen)
{
    char *h;
    if (plen < 126) {
        h = ws->out + HDR_ROOM - 2;
        h[1] = (char)plen;
    } else if (plen <= 0xffff) {
        h = ws->out + HDR_ROOM - 4;
        h[1] = 126;
        h[2] = (char)(plen >> 8);
        h[3] = (char)plen;
    } else {
        h = ws->out;
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (char)((uint64_t)plen >> (56 - 8 * i));
    }
    h[0] = (char)b0;
    int rv = emit(ws, h, (size_t)(ws->out + HDR_ROOM - h) + plen);
    if (ws->out_cap > KEEP_BYTES) {
        free(ws->out);
        ws->out = NULL;
        ws->out_cap = 0;
    }
    return rv;
}

/* Compresses data into out + HDR_ROOM (RFC 7692 §7.2.1): a sync flush ends the message on a
 * byte boundary with an empty stored block, whose 00 00 ff ff the receiver adds back. Returns
 * the compressed length in *n. */
static int compress_message(ph_ws_t *ws, const char *data, size_t len, size_t *n)
{
    if (len == 0) {
        /* zlib writes nothing for a flush with no input since the last one, and an empty
         * payload would leave the peer's inflater reading our appended tail as a block
         * header: the one byte of an empty stored block's header goes instead (with the tail
         * the peer appends, a whole empty block; our window is unchanged, and so is its). */
        if (out_reserve(ws, 1) != 0)
            return PH_ENOMEM;
        ws->out[HDR_ROOM] = 0;
        *n = 1;
        return 0;
    }
    z_stream *z = ws->deflater;
    if (z == NULL) {
        z = calloc(1, sizeof(*z));
        if (z == NULL)
            return PH_ENOMEM;
        if (deflateInit2(z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -ws->cfg.server_max_window_bits,
                         DEFLATE_MEM_LEVEL, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(z);
            return PH_ENOMEM;
        }
        ws->deflater = z;
    }
    /* Most messages shrink: start at half and grow if they do not. */
    int rv = out_reserve(ws, len / 2 + 64);
    size_t used = 0;
    const char *in = data;
    size_t in_left = len;
    z->avail_in = 0;
    while (rv == 0) {
        if (z->avail_in == 0 && in_left) {
            uInt k = in_left > UINT_MAX ? UINT_MAX : (uInt)in_left;
            z->next_in = (Bytef *)(uintptr_t)in;
            z->avail_in = k;
            in += k;
            in_left -= k;
        }
        int flush = in_left ? Z_NO_FLUSH : Z_SYNC_FLUSH;
        size_t room = ws->out_cap - HDR_ROOM - used;
        if (room == 0) {
            if ((rv = out_reserve(ws, ws->out_cap - HDR_ROOM + 1)) != 0)
                break;
            room = ws->out_cap - HDR_ROOM - used;
        }
        uInt avail = room > UINT_MAX ? UINT_MAX : (uInt)room;
        z->next_out = (Bytef *)ws->out + HDR_ROOM + used;
        z->avail_out = avail;
        int zr = deflate(z, flush);
        used += avail - z->avail_out;
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rv = PH_ESTATE;
            break;
        }
        /* Room left over after a sync flush: everything is out. */
        if (flush == Z_SYNC_FLUSH && z->avail_out != 0)
            break;
    }
    if (rv != 0) {
        /* Part of the message is in our window but will never reach the peer's: forget it, or
         * later messages could point at bytes the peer does not have. */
        deflateReset(z);
        return rv;
    }
    const char *tail = ws->out + HDR_ROOM + used - 4;
    if (used >= 4 && memcmp(tail, "\x00\x00\xff\xff", 4) == 0)
        used -= 4;
    if (ws->cfg.server_no_context_takeover)
        deflateReset(z);
    *n = used;
    return 0;
}

int ph_ws_send(ph_ws_t *ws, int opcode, const char *data, size_t len)
{
    if (ws->werr)
        return ws->werr;
    if (ws->close_sent || ws->fail_code)
        return PH_ECLOSED;
    if (opcode != PH_WS_TEXT && opcode != PH_WS_BINARY)
        return PH_EINVAL;
    if (ws->cfg.deflate) {
        size_t n;
        int rv = compress_message(ws, data, len, &n);
        if (rv != 0)
            return rv;
        return send_out(ws, 0x80 | 0x40 | opcode, n);
    }
    if (out_reserve(ws, len) != 0)
        return PH_ENOMEM;
    if (len)
        memcpy(ws->out + HDR_ROOM, data, len);
    return send_out(ws, 0x80 | opcode, len);
}

int ph_ws_ping(ph_ws_t *ws, const char *data, size_t len)
{
    if (ws->werr)
        return ws->werr;
    if (ws->close_sent || ws->fail_code)
        return PH_ECLOSED;
    if (len > 125)
        return PH_EINVAL;
    return send_control(ws, PH_WS_PING, data, len);
}

/* Codes a close frame may carry (RFC 6455 §7.4, and the IANA registry up to 1014). 1004 is
 * reserved, 1005, 1006 and 1015 are for reports only, 1016-2999 are unassigned. */
static int close_code_ok(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int ph_ws_close(ph_ws_t *ws, int code, const char *reason, size_t len)
{
    if (ws->werr)
        return ws->werr;
    if (ws->close_sent)
        return PH_ECLOSED;
    /* Only what a peer accepts: ours would fail a close frame with 1016-2999 too. */
    if (code != 0 && !close_code_ok(code))
        return PH_EINVAL;
    char payload[125];
    size_t n = 0;
    if (code != 0) {
        payload[0] = (char)(code >> 8);
        payload[1] = (char)code;
        if (len > 123) {
            /* Back up to the start of a character, so the reason stays valid UTF-8. */
            len = 123;
            while (len > 0 && ((unsigned char)reason[len] & 0xc0) == 0x80)
                len--;
        }
        if (len)
            memcpy(payload + 2, reason, len);
        n = 2 + len;
    }
    ws->close_sent = 1;
    return send_control(ws, PH_WS_CLOSE, payload, n);
}

/* ---- receiving ------------------------------------------------------------------------------- */

/* Fails the connection (RFC 6455 §7.1.7): our close frame with the code unless one is out. */
static int fail(ph_ws_t *ws, int code)
{
    ws->fail_code = code;
    int rv = 0;
    if (!ws->close_sent) {
        ws->close_sent = 1;
        char payload[2] = {(char)(code >> 8), (char)code};
        rv = send_control(ws, PH_WS_CLOSE, payload, 2);
    }
    release(ws);
    return rv ? rv : PH_WS_FAILED;
}

static void unmask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4], unsigned *pos)
{
    unsigned k = *pos;
    size_t i = 0;
    while (i < n && (k & 3)) {
        dst[i] = src[i] ^ mask[k & 3];
        i++;
        k++;
    }
    /* Aligned with the mask now: eight bytes at a time against the mask twice over. */
    if (n - i >= 8) {
        uint8_t m8[8] = {mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]};
        uint64_t m;
        memcpy(&m, m8, 8);
        for (; n - i >= 8; i += 8) {
            uint64_t w;
            memcpy(&w, src + i, 8);
            w ^= m;
            memcpy(dst + i, &w, 8);
        }
    }
    for (; i < n; i++, k++)
        dst[i] = src[i] ^ mask[k & 3];
    *pos = k & 3;
}

/* Makes room for need bytes in the message buffer, doubling as bytes come, never past hint
 * (the most the message can take, as far as is known) unless need does. */
static int reserve(ph_ws_t *ws, size_t need, size_t hint)
{
    if (need <= ws->cap)
        return 0;
    size_t cap = ws->cap < 512 ? 512 : ws->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > hint)
        cap = hint > need ? hint : need;
    char *p = realloc(ws->buf, cap);
    if (p == NULL)
        return PH_ENOMEM;
    ws->buf = p;
    ws->cap = cap;
    return 0;
}

/* Inflates n bytes of a compressed message (tail: the 00 00 ff ff we add at its end) into the
 * message buffer, checking the size limit and the text's UTF-8 as output appears: a small frame
 * that inflates to gigabytes stops at max_size + 1 bytes. */
static int inflate_some(ph_ws_t *ws, const uint8_t *in, size_t n, int tail)
{
    z_stream *z = ws->inflater;
    size_t limit =
        ws->cfg.max_size && ws->cfg.max_size < SIZE_MAX ? ws->cfg.max_size + 1 : SIZE_MAX;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n;
    for (;;) {
        if (ws->cap - ws->len < INFLATE_ROOM && ws->cap < limit) {
            size_t want = ws->len + INFLATE_ROOM < limit ? ws->len + INFLATE_ROOM : limit;
            if (reserve(ws, want, limit) != 0)
                return PH_ENOMEM;
        }
        size_t room = (ws->cap < limit ? ws->cap : limit) - ws->len;
        uInt avail = room > UINT_MAX ? UINT_MAX : (uInt)room;
        uInt before_in = z->avail_in;
        if (!tail)
            ws->zended = 0;
        z->next_out = (Bytef *)ws->buf + ws->len;
        z->avail_out = avail;
        int zr = inflate(z, Z_SYNC_FLUSH);
        size_t got = avail - z->avail_out;
        if (got && ws->msg_opcode == PH_WS_TEXT) {
            ws->utf8 = utf8_scan(ws->utf8, (uint8_t *)ws->buf + ws->len, got);
            if (ws->utf8 == U_BAD)
                return fail(ws, PH_WS_INVALID_DATA);
        }
        ws->len += got;
        if (ws->cfg.max_size && ws->len > ws->cfg.max_size)
            return fail(ws, PH_WS_TOO_BIG);
        if (zr == Z_STREAM_END) {
            /* The peer ended its deflate stream with a BFINAL block (RFC 7692 §7.2.3 allows
             * it): our tail then has nothing to complete, and bytes of the peer's that follow
             * start a new stream. */
            inflateReset(z);
            ws->zended = 1;
            if (tail || z->avail_in == 0)
                return 0;
            continue;
        }
        if (zr == Z_MEM_ERROR)
            return PH_ENOMEM;
        /* Not DEFLATE data: the frames were fine, the message's content is not what its RSV1
         * bit says, which is what 1007 means (RFC 6455 §7.4.1: data not consistent with the
         * type of the message). */
        if (zr != Z_OK && zr != Z_BUF_ERROR)
            return fail(ws, PH_WS_INVALID_DATA);
        if (z->avail_in == 0 && z->avail_out != 0)
            return 0;
        if (got == 0 && z->avail_in == before_in && z->avail_out != 0)
            return fail(ws, PH_WS_INVALID_DATA); /* no progress: cannot happen, never spin */
    }
}

static int inflate_payload(ph_ws_t *ws, const uint8_t *p, size_t n)
{
    if (ws->inflater == NULL) {
        z_stream *z = calloc(1, sizeof(*z));
        if (z == NULL)
            return PH_ENOMEM;
        /* A window of at least 9: zlib-based peers that agreed to 8 compress with 9 (zlib
         * raises 8 to 9), and a bigger window inflates whatever a smaller one does. */
        int bits = ws->cfg.client_max_window_bits < 9 ? 9 : ws->cfg.client_max_window_bits;
        if (inflateInit2(z, -bits) != Z_OK) {
            free(z);
            return PH_ENOMEM;
        }
        ws->inflater = z;
    }
    uint8_t tmp[4096]; /* the unmasked input: the caller's bytes are read-only */
    while (n) {
        size_t k = n < sizeof(tmp) ? n : sizeof(tmp);
        unmask(tmp, p, k, ws->mask, &ws->mask_pos);
        int rv = inflate_some(ws, tmp, k, 0);
        if (rv != 0)
            return rv;
        p += k;
        n -= k;
    }
    return 0;
}

/* The first two header bytes: everything that can be refused before the length is known. */
static int check_start(ph_ws_t *ws)
{
    uint8_t b0 = ws->hdr[0], b1 = ws->hdr[1];
    int fin = b0 >> 7, rsv1 = (b0 >> 6) & 1, op = b0 & 0x0f;
    unsigned len7 = b1 & 0x7f;
    if (b0 & 0x30)
        return fail(ws, PH_WS_PROTOCOL_ERROR); /* RSV2, RSV3: no extension of ours uses them */
    if (!(b1 & 0x80))
        return fail(ws, PH_WS_PROTOCOL_ERROR); /* §5.1: a client masks every frame */
    if (op >= 0x8) {
        /* §5.5: control frames are whole and short; permessage-deflate is for data only. */
        if (op > PH_WS_PONG || !fin || len7 > 125 || rsv1)
            return fail(ws, PH_WS_PROTOCOL_ERROR);
    } else if (op == PH_WS_CONT) {
        /* RFC 7692 §6: RSV1 marks the first frame of a compressed message only. */
        if (!ws->msg_opcode || rsv1)
            return fail(ws, PH_WS_PROTOCOL_ERROR);
    } else if (op == PH_WS_TEXT || op == PH_WS_BINARY) {
        if (ws->msg_opcode || (rsv1 && !ws->cfg.deflate))
            return fail(ws, PH_WS_PROTOCOL_ERROR);
    } else {
        return fail(ws, PH_WS_PROTOCOL_ERROR);
    }
    ws->hdr_need = (uint8_t)(2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4);
    return 0;
}

/* The whole header is in: the length, the mask, a new message if this frame opens one. */
static int start_payload(ph_ws_t *ws)
{
    const uint8_t *h = ws->hdr;
    unsigned len7 = h[1] & 0x7f;
    uint64_t plen = len7;
    if (len7 == 126) {
        plen = (uint64_t)h[2] << 8 | h[3];
    } else if (len7 == 127) {
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = plen << 8 | h[2 + i];
        if (plen >> 63)
            return fail(ws, PH_WS_PROTOCOL_ERROR); /* §5.2: the top bit must be 0 */
    }
    memcpy(ws->mask, h + ws->hdr_need - 4, 4);
    ws->mask_pos = 0;
    ws->opcode = h[0] & 0x0f;
    ws->fin = h[0] >> 7;
    ws->left = plen;
    if (ws->opcode >= 0x8) {
        ws->ctl_len = 0;
    } else {
        if (ws->opcode != PH_WS_CONT) {
            ws->msg_opcode = ws->opcode;
            ws->msg_deflated = (h[0] >> 6) & 1;
            ws->msg_zbytes = 0;
            ws->utf8 = U_OK;
            ws->len = 0;
        }
        /* Plain bytes are the message's bytes: a frame that cannot fit under the limit is
         * refused from its header. (Compressed ones are counted as they inflate.) */
        if (!ws->msg_deflated &&
            (plen > SIZE_MAX - ws->len || (ws->cfg.max_size && plen > ws->cfg.max_size - ws->len)))
            return fail(ws, PH_WS_TOO_BIG);
    }
    ws->in_payload = 1;
    return 0;
}

static int payload(ph_ws_t *ws, const uint8_t *p, size_t n)
{
    ws->left -= n;
    if (ws->opcode >= 0x8) {
        unmask((uint8_t *)ws->ctl + ws->ctl_len, p, n, ws->mask, &ws->mask_pos);
        ws->ctl_len = (uint8_t)(ws->ctl_len + n);
        return 0;
    }
    if (ws->msg_deflated) {
        ws->msg_zbytes = 1;
        return inflate_payload(ws, p, n);
    }
    /* Grow with what arrives, not with what the header claims: a length of 2^62 costs
     * nothing until the bytes come. Only the last frame tells where the message ends; before
     * it, capping the growth at each frame's end would copy the buffer once per fragment. */
    size_t hint = ws->fin            ? ws->len + n + (size_t)ws->left
                  : ws->cfg.max_size ? ws->cfg.max_size
                                     : SIZE_MAX;
    if (reserve(ws, ws->len + n, hint) != 0)
        return PH_ENOMEM;
    uint8_t *dst = (uint8_t *)ws->buf + ws->len;
    unmask(dst, p, n, ws->mask, &ws->mask_pos);
    ws->len += n;
    if (ws->msg_opcode == PH_WS_TEXT) {
        ws->utf8 = utf8_scan(ws->utf8, dst, n);
        if (ws->utf8 == U_BAD)
            return fail(ws, PH_WS_INVALID_DATA);
    }
    return 0;
}

static int end_message(ph_ws_t *ws)
{
    /* A compressed message with no bytes at all is taken as empty: the tail alone would open
     * a stored block that the next message's bytes would then be read into. */
    if (ws->msg_deflated && ws->msg_zbytes && !ws->zended) {
        static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
        int rv = inflate_some(ws, tail, 4, 1);
        if (rv != 0)
            return rv;
        if (ws->cfg.client_no_context_takeover)
            inflateReset(ws->inflater);
    }
    if (ws->msg_opcode == PH_WS_TEXT && ws->utf8 != U_OK)
        return fail(ws, PH_WS_INVALID_DATA); /* ends inside a character */
    int op = ws->msg_opcode;
    ws->msg_opcode = 0;
    ws->cb.on_message(ws, op, ws->buf ? ws->buf : "", ws->len);
    ws->len = 0;
    if (ws->cap > KEEP_BYTES) {
        free(ws->buf);
        ws->buf = NULL;
        ws->cap = 0;
    }
    return ws->werr; /* the app may have sent from the callback */
}

static int close_frame(ph_ws_t *ws)
{
    int code = PH_WS_NO_STATUS;
    const char *reason = "";
    size_t rlen = 0;
    if (ws->ctl_len == 1)
        return fail(ws, PH_WS_PROTOCOL_ERROR); /* half a code */
    if (ws->ctl_len >= 2) {
        code = (uint8_t)ws->ctl[0] << 8 | (uint8_t)ws->ctl[1];
        if (!close_code_ok(code))
            return fail(ws, PH_WS_PROTOCOL_ERROR);
        reason = ws->ctl + 2;
        rlen = ws->ctl_len - 2u;
        if (utf8_scan(U_OK, (const uint8_t *)reason, rlen) != U_OK)
            return fail(ws, PH_WS_INVALID_DATA);
    }
    ws->close_received = 1;
    if (!ws->close_sent) {
        /* §5.5.1: the reply echoes the code; a close without one gets one without one. */
        ws->close_sent = 1;
        int rv = send_control(ws, PH_WS_CLOSE, ws->ctl, code == PH_WS_NO_STATUS ? 0 : 2);
        if (rv != 0)
            return rv;
    }
    if (ws->cb.on_close)
        ws->cb.on_close(ws, code, reason, rlen);
    release(ws);
    return ws->werr ? ws->werr : PH_WS_DONE;
}

static int end_frame(ph_ws_t *ws)
{
    switch (ws->opcode) {
    case PH_WS_PING:
        /* After our close frame we send nothing (§5.5.1 forbids data; a pong would only hold
         * up a connection that is closing). */
        if (ws->close_sent)
            return 0;
        return send_control(ws, PH_WS_PONG, ws->ctl, ws->ctl_len);
    case PH_WS_PONG:
        if (ws->cb.on_pong)
            ws->cb.on_pong(ws, ws->ctl, ws->ctl_len);
        return ws->werr;
    case PH_WS_CLOSE: return close_frame(ws);
    default: return ws->fin ? end_message(ws) : 0;
    }
}

int ph_ws_feed(ph_ws_t *ws, const char *data, size_t len)
{
    if (ws->werr)
        return ws->werr;
    if (ws->fail_code)
        return PH_WS_FAILED;
    if (ws->close_received)
        return PH_WS_DONE;
    if (len == 0)
        return 0; /* nothing waits on input that is already here: a frame ends as it completes */
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    int rv;
    for (;;) {
        if (!ws->in_payload) {
            if (p == end)
                break;
            size_t take = ws->hdr_need - ws->hdr_len;
            if (take > (size_t)(end - p))
                take = (size_t)(end - p);
            memcpy(ws->hdr + ws->hdr_len, p, take);
            ws->hdr_len = (uint8_t)(ws->hdr_len + take);
            p += take;
            if (ws->hdr_len < ws->hdr_need)
                break;
            if (ws->hdr_need == 2) {
                /* hdr_need grows past 2 here (the mask alone is 4 more bytes). */
                if ((rv = check_start(ws)) != 0)
                    return rv;
                continue;
            }
            if ((rv = start_payload(ws)) != 0)
                return rv;
        }
        size_t n = ws->left < (uint64_t)(end - p) ? (size_t)ws->left : (size_t)(end - p);
        if (n) {
            if ((rv = payload(ws, p, n)) != 0)
                return rv;
            p += n;
        }
        if (ws->left)
            break;
        ws->in_payload = 0;
        ws->hdr_len = 0;
        ws->hdr_need = 2;
        if ((rv = end_frame(ws)) != 0)
            return rv;
    }
    return 0;
}
