/* HTTP/2 through h1's hand-over: prior knowledge and Upgrade: h2c, frames checked by hand. */
#include "check.h"
#include "h2.h"
#include "harness.h"

static char out[65536];
static size_t outlen;

/* HPACK for GET / with :authority "x" (static table entries 2, 4, 6, then 1 with a literal). */
static const char get_block[] = "\x82\x84\x86\x01\x01x";

static size_t frame(char *dst, int type, int flags, int sid, const char *payload, size_t n)
{
    dst[0] = (char)(n >> 16);
    dst[1] = (char)(n >> 8);
    dst[2] = (char)n;
    dst[3] = (char)type;
    dst[4] = (char)flags;
    dst[5] = (char)(sid >> 24);
    dst[6] = (char)(sid >> 16);
    dst[7] = (char)(sid >> 8);
    dst[8] = (char)sid;
    memcpy(dst + 9, payload, n);
    return 9 + n;
}

/* Walks the frames in out: how many of a type on a stream (sid -1: any), and the flags of the
 * last one found. */
static int frames(const char *buf, size_t len, int type, int sid, int *flags)
{
    int n = 0;
    size_t off = 0;
    while (off + 9 <= len) {
        size_t fl = (size_t)(unsigned char)buf[off] << 16 |
                    (size_t)(unsigned char)buf[off + 1] << 8 | (unsigned char)buf[off + 2];
        int t = (unsigned char)buf[off + 3];
        int id = ((unsigned char)buf[off + 5] & 0x7f) << 24 | (unsigned char)buf[off + 6] << 16 |
                 (unsigned char)buf[off + 7] << 8 | (unsigned char)buf[off + 8];
        if (t == type && (sid < 0 || sid == id)) {
            n++;
            if (flags)
                *flags = (unsigned char)buf[off + 4];
        }
        off += 9 + fl;
    }
    return n;
}

static void test_preface_match(void)
{
    CHECK(ph_h2_match_preface(PH_H2_PREFACE, PH_H2_PREFACE_LEN) == 1);
    CHECK(ph_h2_match_preface("PRI * HT", 8) == 0);
    CHECK(ph_h2_match_preface("PRI * HTTP/1.1\r\n", 16) == -1);
    CHECK(ph_h2_match_preface("GET / HTTP/1.1\r\n", 16) == -1);
}

static void test_prior_knowledge(void)
{
    harness_t h;
    harness_init(&h);
    h.trailers_reply = 1;
    char req[512];
    size_t n = 0;
    memcpy(req, PH_H2_PREFACE, PH_H2_PREFACE_LEN);
    n += PH_H2_PREFACE_LEN;
    n += frame(req + n, 0x4, 0, 0, "", 0);                              /* SETTINGS */
    n += frame(req + n, 0x1, 0x5, 1, get_block, sizeof(get_block) - 1); /* HEADERS, END */
    n += frame(req + n, 0x1, 0x5, 3, get_block, sizeof(get_block) - 1);
    int closed = harness_exchange(&h, req, n, 7, out, sizeof(out), &outlen);
    CHECK(!closed);
    CHECK(h.streams == 2);
    CHECK(strcmp(h.last_path, "/") == 0);
    int flags = 0;
    CHECK(frames(out, outlen, 0x4, 0, NULL) >= 1); /* our SETTINGS first */
    CHECK((unsigned char)out[3] == 0x4);
    CHECK(frames(out, outlen, 0x0, 1, NULL) == 1);   /* DATA "hello" */
    CHECK(frames(out, outlen, 0x1, 1, &flags) == 2); /* response HEADERS + trailers */
    CHECK(flags & 0x1);                              /* the trailers end the stream */
    CHECK(frames(out, outlen, 0x1, 3, NULL) == 2);
    harness_free(&h);
}

static void test_trailers_without_body(void)
{
    harness_t h;
    harness_init(&h);
    h.trailers_reply = 1;
    h.chunked_reply = 1; /* the bridge sends no body bytes, then trailers */
    char req[256];
    size_t n = 0;
    memcpy(req, PH_H2_PREFACE, PH_H2_PREFACE_LEN);
    n += PH_H2_PREFACE_LEN;
    n += frame(req + n, 0x4, 0, 0, "", 0);
    n += frame(req + n, 0x1, 0x5, 1, get_block, sizeof(get_block) - 1);
    harness_exchange(&h, req, n, 1 << 20, out, sizeof(out), &outlen);
    int flags = 0;
    CHECK(frames(out, outlen, 0x1, 1, &flags) == 2); /* response HEADERS + trailers */
    CHECK(flags & 0x1);
    harness_free(&h);
}

static void test_upgrade(void)
{
    harness_t h;
    harness_init(&h);
    /* HTTP2-Settings: MAX_CONCURRENT_STREAMS 100, base64url */
    const char *req = "POST /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nContent-Length: 5\r\n\r\nhello";
    harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    CHECK(strncmp(out, "HTTP/1.1 101 Switching Protocols\r\n", 34) == 0);
    CHECK(h.streams == 1 && h.body_len == 5 && memcmp(h.body, "hello", 5) == 0);
    CHECK(h.body_end == 1);
    const char *frames_at = strstr(out, "\r\n\r\n") + 4;
    size_t flen = outlen - (size_t)(frames_at - out);
    CHECK(frames(frames_at, flen, 0x4, 0, NULL) >= 1);
    CHECK(frames(frames_at, flen, 0x0, 1, NULL) == 1); /* the answer is on stream 1 */
    harness_free(&h);
}

static void test_bad_settings_is_plain_http1(void)
{
    harness_t h;
    harness_init(&h);
    const char *req = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                      "Upgrade: h2c\r\nHTTP2-Settings: !!\r\n\r\n";
    harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    CHECK(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
    harness_free(&h);
}

static void test_request_trailers(void)
{
    harness_t h;
    harness_init(&h);
    h.respond_on_end = 1;
    char req[512];
    size_t n = 0;
    memcpy(req, PH_H2_PREFACE, PH_H2_PREFACE_LEN);
    n += PH_H2_PREFACE_LEN;
    n += frame(req + n, 0x4, 0, 0, "", 0);
    n += frame(req + n, 0x1, 0x4, 1, get_block, sizeof(get_block) - 1); /* no END_STREAM */
    n += frame(req + n, 0x0, 0, 1, "abc", 3);
    n += frame(req + n, 0x1, 0x5, 1, "\x00\x01x\x01y", 5); /* trailers: x: y */
    harness_exchange(&h, req, n, 1 << 20, out, sizeof(out), &outlen);
    CHECK(h.body_len == 3 && h.trailers_seen == 1 && h.body_end == 1);
    CHECK(frames(out, outlen, 0x0, 1, NULL) == 1);
    harness_free(&h);
}

int main(void)
{
    test_preface_match();
    test_prior_knowledge();
    test_trailers_without_body();
    test_upgrade();
    test_bad_settings_is_plain_http1();
    test_request_trailers();
    return CHECK_REPORT();
}
