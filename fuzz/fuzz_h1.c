/* libFuzzer target: arbitrary bytes, in arbitrary fragments, through the whole HTTP/1 path —
 * conn (socket reads) -> h1 (llhttp + our checks) -> stream events -> serialised responses —
 * with a bridge that answers at once or after the body, with a fixed or a chunked body, from
 * memory or from a file (the stream's sendfile op: conn's file segments).
 *
 * The first byte picks the bridge's behaviour and the fragment size; the rest is the stream of
 * bytes the client sends. Built by `make fuzz` (clang -fsanitize=fuzzer,address,undefined). */
#include <stdint.h>

#include "../tests/c/harness.h"
#include "h2.h"

static char out[1 << 20];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    harness_t h;
    if (harness_init(&h) != 0)
        return 0;
    h.chunked_reply = data[0] & 1;
    h.respond_on_end = (data[0] >> 1) & 1;
    h.file_reply = (data[0] >> 7) & 1;                     /* the body through sendfile */
    size_t piece = (size_t)((data[0] >> 2) & 31) * 32 + 1; /* 1 .. 993 bytes a write */
    size_t outlen;
    harness_exchange(&h, (const char *)data + 1, size - 1, piece, out, sizeof(out), &outlen);
    /* HTTP/2's preface: the connection is h2's (fuzz_h2 checks what it writes). */
    if (size - 1 >= PH_H2_PREFACE_COMMITS && memcmp(data + 1, PH_H2_PREFACE, 16) == 0) {
        harness_free(&h);
        return 0;
    }
    /* Every answer the server wrote must start like one. */
    if (outlen > 0 && memcmp(out, "HTTP/1.1 ", 9) != 0)
        __builtin_trap();
    /* The bridge answers every stream with a 200; the only other answer h1 may write is one
     * error response, and it must be the last thing sent. So: no more 200s than streams, at
     * most one error, nothing after it (no request behind a bad one is ever answered). */
    int ok = 0, errors = 0;
    for (const char *p = out; (p = memmem(p, outlen - (size_t)(p - out), "HTTP/1.1 ", 9)) != NULL;
         p += 9) {
        if (errors)
            __builtin_trap(); /* a response after an error response */
        if (memcmp(p + 9, "100 ", 4) == 0)
            continue;
        if (memcmp(p + 9, "200 ", 4) == 0)
            ok++;
        else
            errors++;
    }
    if (ok > h.streams)
        __builtin_trap(); /* more responses than requests */
    harness_free(&h);
    return 0;
}
