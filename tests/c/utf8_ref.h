/* A reference UTF-8 check (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF),
 * written the slow obvious way: ws.c's state machine is compared with it (tests/c/test_ws.c)
 * and what the fuzzer sees delivered is checked with it (fuzz/fuzz_ws.c). */
#ifndef PH_UTF8_REF_H
#define PH_UTF8_REF_H

#include <stddef.h>
#include <stdint.h>

static inline int utf8_ref(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i], k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < k + 1)
            return 0;
        for (unsigned j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return 0;
        i += k + 1;
    }
    return 1;
}

#endif
