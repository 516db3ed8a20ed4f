#include <string.h>

#include "check.h"
#include "util.h"

#define S(lit) lit, sizeof(lit) - 1

static void test_base64url(void)
{
    uint8_t out[16];
    CHECK(ph_base64url_decode(S("AAMAAABk"), out) == 6);
    CHECK(memcmp(out, "\x00\x03\x00\x00\x00\x64", 6) == 0);
    CHECK(ph_base64url_decode(S("_-8"), out) == 2 && out[0] == 0xff && out[1] == 0xef);
    CHECK(ph_base64url_decode(S("QQ=="), out) == 1 && out[0] == 'A'); /* padding tolerated */
    CHECK(ph_base64url_decode(S(""), out) == 0);
    CHECK(ph_base64url_decode(S("A"), out) == -1);    /* a lone sixth of a byte */
    CHECK(ph_base64url_decode(S("ab+/"), out) == -1); /* base64's alphabet, not base64url's */
    CHECK(ph_base64url_decode(S("a b="), out) == -1);
}

static void test_lists(void)
{
    static const char v[] = " chat ,,\tsuper chat\t, ,v2.json,";
    const char *p = v, *end = v + sizeof(v) - 1;
    ph_slice_t item;
    CHECK(ph_list_next(&p, end, &item) && item.len == 4 && memcmp(item.base, "chat", 4) == 0);
    CHECK(ph_list_next(&p, end, &item) && item.len == 10 &&
          memcmp(item.base, "super chat", 10) == 0);
    CHECK(ph_list_next(&p, end, &item) && item.len == 7 && memcmp(item.base, "v2.json", 7) == 0);
    CHECK(!ph_list_next(&p, end, &item) && p == end);
    p = ", \t,";
    CHECK(!ph_list_next(&p, p + 4, &item));
    CHECK(ph_has_token(S("keep-alive, Upgrade"), S("upgrade")));
    CHECK(ph_has_token(S("Upgrade"), S("upgrade")));
    CHECK(!ph_has_token(S("upgrade-ish, x"), S("upgrade")));
    CHECK(!ph_has_token(S(""), S("upgrade")));
}

int main(void)
{
    test_base64url();
    test_lists();
    CHECK(ph_is_token(S("Content-Type")));
    CHECK(ph_is_token(S("x!#$%&'*+-.^_`|~09")));
    CHECK(!ph_is_token(S("")));
    CHECK(!ph_is_token(S("Bad Name")));
    CHECK(!ph_is_token(S("colon:")));
    CHECK(!ph_is_token(S("nul\0")));

    CHECK(ph_is_field_value(S("text/plain; q=1\tx")));
    CHECK(ph_is_field_value(S("\x80\xff obs-text")));
    CHECK(!ph_is_field_value(S("a\r\nb")));
    CHECK(!ph_is_field_value(S("a\0b")));
    CHECK(!ph_is_field_value(S("a\x7f")));

    CHECK(ph_eq_lower(S("Content-Length"), S("content-length")));
    CHECK(!ph_eq_lower(S("Content-Lengt"), S("content-length")));

    CHECK(ph_parse_decimal(S("0")) == 0);
    CHECK(ph_parse_decimal(S("1234567890")) == 1234567890);
    CHECK(ph_parse_decimal(S("9223372036854775807")) == -1 ||
          ph_parse_decimal(S("9223372036854775807")) > 0);
    CHECK(ph_parse_decimal(S("99999999999999999999")) == -1);
    CHECK(ph_parse_decimal(S("+1")) == -1);
    CHECK(ph_parse_decimal(S("1 ")) == -1);
    CHECK(ph_parse_decimal(S("")) == -1);
    CHECK(ph_parse_decimal(S("0x10")) == -1);

    char buf[32];
    size_t n = ph_u64toa(0, buf);
    CHECK(n == 1 && buf[0] == '0');
    n = ph_u64toa(18446744073709551615ULL, buf);
    CHECK(n == 20 && memcmp(buf, "18446744073709551615", 20) == 0);

    n = ph_percent_decode(S("/caf%C3%A9/%2f%zz%4"), buf);
    CHECK(n == 13 && memcmp(buf, "/caf\xc3\xa9//%zz%4", 13) == 0);

    const char *d = ph_date_now();
    CHECK(d[3] == ',' && d[4] == ' ' && memcmp(d + 25, " GMT", 4) == 0);
    CHECK(d[19] == ':' && d[22] == ':');

    CHECK(strcmp(ph_status_reason(200), "OK") == 0);
    CHECK(strcmp(ph_status_reason(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(ph_status_reason(799), "") == 0);
    return CHECK_REPORT();
}
