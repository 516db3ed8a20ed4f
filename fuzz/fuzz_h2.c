/* libFuzzer target: arbitrary HTTP/2 frames after the client preface, in arbitrary fragments,
 * through conn -> h1 (which hands over on the preface) -> h2 (nghttp2 + our stream mapping,
 * flow control, flood budget) -> stream events -> frames written back, with a bridge that
 * answers at once or after the body, with or without trailers.
 *
 * The first two bytes pick the bridge's behaviour (answer at once or after the body, chunked,
 * with trailers, aborted half way, never reading past the first bytes) and the fragment size;
 * the rest is what the client sends after the preface. Built by `make fuzz`. */
#include <stdint.h>

#include "../tests/c/harness.h"
#include "h2.h"

static char in[1 << 16];
static char out[1 << 20];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size - 2 > sizeof(in) - PH_H2_PREFACE_LEN)
        return 0;
    harness_t h;
    if (harness_init(&h) != 0)
        return 0;
    h.chunked_reply = data[0] & 1;
    h.respond_on_end = (data[0] >> 1) & 1;
    h.trailers_reply = (data[0] >> 2) & 1;
    size_t piece = (size_t)(data[0] >> 3) * 32 + 1; /* 1 .. 993 bytes a write */
    h.abort_reply = data[1] & 1;
    h.pause_reads = (data[1] >> 1) & 1;
    memcpy(in, PH_H2_PREFACE, PH_H2_PREFACE_LEN);
    memcpy(in + PH_H2_PREFACE_LEN, data + 2, size - 2);
    size_t outlen;
    harness_exchange(&h, in, PH_H2_PREFACE_LEN + size - 2, piece, out, sizeof(out), &outlen);
    /* Whatever came in, what goes out is frames, starting with our SETTINGS. */
    if (outlen >= 9 && out[3] != 0x4)
        __builtin_trap();
    harness_free(&h);
    return 0;
}
