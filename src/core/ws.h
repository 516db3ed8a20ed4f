/* WebSocket framing (RFC 6455) and permessage-deflate (RFC 7692), sans I/O.
 *
 * A session is the server's end of one WebSocket, after the handshake. The bridge feeds it
 * the bytes the tunnel delivered (ph_ws_feed) and gets back whole messages (fragments joined,
 * inflated, text checked as UTF-8 as it arrives); what the session has to send (the frames
 * the bridge asks for, pongs, the close reply) leaves through the write callback, one call
 * per frame. No socket, no timer, no Python: the bridge owns those.
 *
 * Closing: ph_ws_close() sends a close frame; a close frame from the peer is answered with
 * one (unless ours is already out) and reported with on_close. A peer that breaks the
 * protocol gets a close frame with the code that says why (1002 protocol error, 1007 bad
 * UTF-8, 1009 too big) and ph_ws_feed() returns PH_WS_FAILED: the bridge closes the
 * connection once that frame is flushed. After a close frame is out, sends fail. */
#ifndef PH_WS_H
#define PH_WS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct ph_ws_s ph_ws_t;

enum {
    PH_WS_CONT = 0x0,
    PH_WS_TEXT = 0x1,
    PH_WS_BINARY = 0x2,
    PH_WS_CLOSE = 0x8,
    PH_WS_PING = 0x9,
    PH_WS_PONG = 0xA,
};

/* Close codes used by the session itself (RFC 6455 §7.4.1). */
enum {
    PH_WS_NORMAL = 1000,
    PH_WS_GOING_AWAY = 1001,
    PH_WS_PROTOCOL_ERROR = 1002,
    PH_WS_NO_STATUS = 1005, /* reported, never sent: the close frame had no code */
    PH_WS_ABNORMAL = 1006,  /* reported, never sent: the connection went without a close frame */
    PH_WS_INVALID_DATA = 1007,
    PH_WS_TOO_BIG = 1009,
    PH_WS_INTERNAL_ERROR = 1011,
};

/* ph_ws_feed() results besides 0. Not -1 and -2: those are libuv's UV_EPERM and UV_ENOENT on
 * Unix, which a write error can be (a firewall rule makes send() fail with EPERM).
 * PH_WS_FAILED: the peer broke the protocol, a close frame with the reason is out.
 * PH_WS_DONE: the close handshake is complete (both close frames seen). */
#define PH_WS_FAILED (-10101)
#define PH_WS_DONE (-10102)
/* (Both differ from every PH_E* and libuv error, which a write error passes through.) */

typedef struct {
    /* A whole message: opcode PH_WS_TEXT (valid UTF-8) or PH_WS_BINARY; data valid for the
     * call. */
    void (*on_message)(ph_ws_t *ws, int opcode, const char *data, size_t len);
    /* The peer's close frame: its code (PH_WS_NO_STATUS when it carried none) and reason
     * (valid UTF-8, valid for the call). The session has already sent its reply close frame
     * (echoing the code) unless one of ours was out before. */
    void (*on_close)(ph_ws_t *ws, int code, const char *reason, size_t len);
    /* A pong arrived (the answer to a ping of ours, or unsolicited). Optional. */
    void (*on_pong)(ph_ws_t *ws, const char *data, size_t len);
    /* Bytes for the peer, in order: one whole frame per call (valid for the call). 0, or a
     * negative error: the session then sends nothing more and its calls return that error. */
    int (*write)(ph_ws_t *ws, const char *data, size_t len);
} ph_ws_callbacks_t;

typedef struct {
    /* The biggest message taken from the peer (after inflating), in bytes; 0: no limit. A
     * bigger one fails the connection with 1009 as soon as its size passes the limit. */
    size_t max_size;
    /* permessage-deflate, as ph_ws_negotiate() agreed; deflate 0: none. */
    unsigned deflate : 1, server_no_context_takeover : 1, client_no_context_takeover : 1;
    int server_max_window_bits; /* 9..15: what we compress with */
    int client_max_window_bits; /* 8..15: what the peer compresses with */
} ph_ws_config_t;

/* permessage-deflate negotiation (RFC 7692 §5, §7). value: the request's
 * Sec-WebSocket-Extensions field values joined by ", " (or NULL / len 0 when absent). Takes
 * the first permessage-deflate offer whose parameters are valid and acceptable, fills
 * cfg->deflate and the window / context-takeover fields (leaving max_size alone) and writes
 * the response's Sec-WebSocket-Extensions value, NUL-terminated, to out. Returns its length,
 * or 0 when nothing is agreed (cfg->deflate = 0, out = ""; also when the answer does not fit).
 * outcap >= 129 is always enough: the longest answer (all four parameters) is 128 bytes. */
size_t ph_ws_negotiate(const char *value, size_t len, ph_ws_config_t *cfg, char *out,
                       size_t outcap);

/* The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 §4.2.2): 28 characters
 * and a NUL into out. -1 when the key is not the base64 of 16 bytes (the handshake must be
 * refused), else 0. */
int ph_ws_accept_key(const char *key, size_t len, char out[29]);

/* NULL when memory ran out. data: the bridge's, see ph_ws_data(). */
ph_ws_t *ph_ws_new(const ph_ws_config_t *cfg, const ph_ws_callbacks_t *cb, void *data);
void ph_ws_free(ph_ws_t *ws);
void *ph_ws_data(const ph_ws_t *ws);

/* Takes len bytes from the peer (all of them: an incomplete frame is kept for the next call).
 * Callbacks run during the call. 0; PH_WS_FAILED (the close frame saying why has been
 * written; ph_ws_close_code() tells the code); PH_WS_DONE once the peer's close frame answered
 * ours or ours answered its (what follows is ignored); PH_ENOMEM; or a
 * write error. */
int ph_ws_feed(ph_ws_t *ws, const char *data, size_t len);

/* One message as one frame: PH_WS_TEXT (data must be valid UTF-8: the bridge's text comes from
 * a Python str) or PH_WS_BINARY; compressed when permessage-deflate was agreed and the message
 * is long enough to gain from it. 0; PH_ECLOSED (util.h) once a close frame of ours is out or
 * the session failed; PH_ENOMEM; or the write error. */
int ph_ws_send(ph_ws_t *ws, int opcode, const char *data, size_t len);

/* A ping (payload <= 125 bytes; PH_EINVAL if longer). Same results as ph_ws_send. */
int ph_ws_ping(ph_ws_t *ws, const char *data, size_t len);

/* Starts the close handshake: a close frame with code (1000-1003, 1007-1014 or 3000-4999, what
 * a peer accepts; 0 for none, the reason then unused) and reason (cut to what fits in 123 bytes
 * at a UTF-8 boundary). PH_EINVAL for another code. Sends only once; PH_ECLOSED the second
 * time. */
int ph_ws_close(ph_ws_t *ws, int code, const char *reason, size_t len);

/* The code the session failed the connection with (after PH_WS_FAILED), else 0. */
int ph_ws_close_code(const ph_ws_t *ws);

/* Whether a close frame of ours / of the peer's has been written / seen. */
int ph_ws_close_sent(const ph_ws_t *ws);
int ph_ws_close_received(const ph_ws_t *ws);

/* Bytes held for messages being assembled: the buffer's size, not just what is in it (for
 * limits and tests). Back to at most 4 KiB once a bigger message is delivered. */
size_t ph_ws_buffered(const ph_ws_t *ws);

#endif
