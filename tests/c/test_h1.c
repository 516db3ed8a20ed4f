#include "check.h"
#include "harness.h"

static char out[65536];
static size_t outlen;

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* One connection per case: send, collect, check the status line and whether it closed. */
static void expect(const char *name, const char *req, size_t piece, const char *status,
                   int want_closed, int want_streams)
{
    harness_t h;
    if (harness_init(&h) != 0) {
        CHECK(!"harness_init");
        return;
    }
    int closed = harness_exchange(&h, req, strlen(req), piece, out, sizeof(out), &outlen);
    int ok = strncmp(out, status, strlen(status)) == 0 && closed == want_closed &&
             (want_streams < 0 || h.streams == want_streams);
    if (!ok)
        fprintf(stderr, "case %s: got closed=%d streams=%d:\n%s\n", name, closed, h.streams, out);
    CHECK(ok);
    harness_free(&h);
}

static void test_malformed(void)
{
    expect("get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1 << 20, "HTTP/1.1 200 OK", 0, 1);
    expect("get bytewise", "GET /x?y HTTP/1.1\r\nHost: a\r\nX-Long: abcdefghij\r\n\r\n", 1,
           "HTTP/1.1 200 OK", 0, 1);
    expect("no host", "GET / HTTP/1.1\r\n\r\n", 1 << 20, "HTTP/1.1 400", 1, 0);
    expect("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 1 << 20, "HTTP/1.1 400", 1,
           0);
    expect("cl+te",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
           "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
           1 << 20, "HTTP/1.1 400", 1, 0);
    expect("two cl",
           "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
           1 << 20, "HTTP/1.1 400", 1, 0);
    /* answered before the body came: the bad chunk only closes, it adds no second response */
    expect("bad chunk", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
           1 << 20, "HTTP/1.1 200", 1, 1);
    CHECK(count(out, "HTTP/1.1") == 1);
    expect("junk after chunk data",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"
           "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
           1 << 20, "HTTP/1.1 200", 1, 1);
    CHECK(strstr(out, "smuggled") == NULL && count(out, "HTTP/1.1") == 1);
    expect("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 1 << 20, "HTTP/1.1 400",
           1, 0);
    expect("obs-fold bytewise", "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 1,
           "HTTP/1.1 400", 1, 0);
    expect("space before colon", "GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n", 1 << 20,
           "HTTP/1.1 400", 1, 0);
    expect("empty name first", "GET / HTTP/1.1\r\n:x\r\nHost: a\r\n\r\n", 1 << 20, "HTTP/1.1 400",
           1, 0);
    expect("empty name later", "GET / HTTP/1.1\r\nHost: a\r\n: evil\r\n\r\n", 1 << 20,
           "HTTP/1.1 400", 1, 0);
    expect("control char", "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 1 << 20, "HTTP/1.1 400",
           1, 0);
    expect("unknown coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n",
           1 << 20, "HTTP/1.1 501", 1, 0);
    expect("chunked not last",
           "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 1 << 20,
           "HTTP/1.1 400", 1, 0);
    expect("http/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 1 << 20, "HTTP/1.1 505", 1, 0);
    expect("garbage version", "GET / HTTP/1.x\r\nHost: a\r\n\r\n", 1 << 20, "HTTP/1.1 400", 1, 0);
    expect("unknown method", "BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 1 << 20, "HTTP/1.1 501", 1, 0);
    char longline[600];
    snprintf(longline, sizeof(longline), "GET /%0400d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    expect("long target", longline, 1 << 20, "HTTP/1.1 414", 1, 0);
    char many[2048] = "GET / HTTP/1.1\r\nHost: a\r\n";
    for (int i = 0; i < 20; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "X-%d: y\r\n", i);
    strcat(many, "\r\n");
    expect("many headers", many, 1 << 20, "HTTP/1.1 431", 1, 0);
    expect("big body", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n", 1 << 20,
           "HTTP/1.1 413", 1, 0);
    expect("http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 1 << 20, "HTTP/1.1 200", 1, 1);
}

static void test_pipelining(void)
{
    harness_t h;
    harness_init(&h);
    const char *req = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
                      "GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    int closed = harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    CHECK(closed);
    CHECK(h.streams == 3);
    CHECK(count(out, "HTTP/1.1 200 OK") == 3);
    CHECK(strcmp(h.last_path, "/3") == 0);
    CHECK(count(out, "connection: close") == 1);
    harness_free(&h);
}

static void test_chunked_request_and_reply(void)
{
    harness_t h;
    harness_init(&h);
    h.respond_on_end = 1;
    h.chunked_reply = 1;
    const char *req = "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer-Field: x\r\n\r\n";
    int closed = harness_exchange(&h, req, strlen(req), 7, out, sizeof(out), &outlen);
    CHECK(!closed);
    CHECK(strncmp(out, "HTTP/1.1 200", 12) == 0);
    CHECK(h.body_len == 5 && memcmp(h.body, "abcde", 5) == 0);
    CHECK(h.body_end == 1);
    CHECK(strstr(out, "transfer-encoding: chunked\r\n") != NULL);
    CHECK(strstr(out, "\r\n\r\n5\r\nhello\r\n0\r\n\r\n") != NULL);
    harness_free(&h);
}

static void test_head_and_length(void)
{
    harness_t h;
    harness_init(&h);
    const char *req = "HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    /* HEAD: no body bytes; GET: the whole body known, so Content-Length, not chunked. */
    CHECK(count(out, "HTTP/1.1 200 OK") == 2);
    CHECK(count(out, "hello") == 1);
    CHECK(count(out, "content-length: 5\r\n") == 1);
    CHECK(strstr(out, "server: pronghorn\r\n") != NULL);
    harness_free(&h);
}

static void test_content_length_body(void)
{
    harness_t h;
    harness_init(&h);
    h.respond_on_end = 1;
    const char *req = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
                      "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    harness_exchange(&h, req, strlen(req), 5, out, sizeof(out), &outlen);
    CHECK(h.body_len == 11 && memcmp(h.body, "hello world", 11) == 0);
    CHECK(h.streams == 2);
    CHECK(strcmp(h.last_path, "/next") == 0);
    harness_free(&h);
}

/* No protocol takes an upgrade yet: the request is served as HTTP/1.1 and the connection
 * goes on (llhttp would otherwise stop parsing after it). */
static void test_upgrade_is_ignored(void)
{
    harness_t h;
    harness_init(&h);
    const char *req = "GET /1 HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                      "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
    int closed = harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    CHECK(!closed);
    CHECK(h.streams == 2);
    CHECK(count(out, "HTTP/1.1 200 OK") == 2);
    CHECK(strcmp(h.last_path, "/2") == 0);
    harness_free(&h);
}

static void test_fragment_is_dropped(void)
{
    harness_t h;
    harness_init(&h);
    const char *req = "GET /p?q=1#frag HTTP/1.1\r\nHost: a\r\n\r\n";
    harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    CHECK(strcmp(h.last_path, "/p") == 0);
    harness_free(&h);
}

/* RFC 9112 §6.1: never chunked to HTTP/1.0; the close ends the body. */
static void test_http10_never_chunked(void)
{
    harness_t h;
    harness_init(&h);
    h.chunked_reply = 1;
    const char *req = "GET / HTTP/1.0\r\n\r\n";
    int closed = harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
    CHECK(closed);
    CHECK(strstr(out, "transfer-encoding") == NULL);
    CHECK(strstr(out, "content-length") == NULL);
    CHECK(outlen > 5 && memcmp(out + outlen - 9, "\r\n\r\nhello", 9) == 0);
    harness_free(&h);
}

/* Bodies sent from a file keep their place among pipelined responses, framed by length or in
 * chunks like any body, and a HEAD gets none of the file. */
static void test_file_bodies_pipelined(void)
{
    for (int chunked = 0; chunked < 2; chunked++) {
        harness_t h;
        harness_init(&h);
        h.file_reply = 1;
        h.chunked_reply = chunked;
        const char *req = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\n"
                          "GET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
        int closed = harness_exchange(&h, req, strlen(req), 1 << 20, out, sizeof(out), &outlen);
        CHECK(!closed && h.streams == 3);
        CHECK(count(out, "HTTP/1.1 200 OK") == 3);
        if (chunked) {
            CHECK(count(out, "\r\n\r\n5\r\nhello\r\n0\r\n\r\n") == 2);
        } else {
            CHECK(count(out, "content-length: 5\r\n") == 2);
            CHECK(count(out, "\r\n\r\nhello") == 2);
        }
        CHECK(count(out, "hello") == 2); /* not for the HEAD */
        harness_free(&h);
    }
}

int main(void)
{
    test_upgrade_is_ignored();
    test_fragment_is_dropped();
    test_http10_never_chunked();
    test_malformed();
    test_pipelining();
    test_chunked_request_and_reply();
    test_head_and_length();
    test_content_length_body();
    test_file_bodies_pipelined();
    return CHECK_REPORT();
}
