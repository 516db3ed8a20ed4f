#include "util.h"

#include <stdlib.h>
#include <string.h>

/* RFC 9110 tchar: "!#$%&'*+-.^_`|~" DIGIT ALPHA */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int ph_is_token(const char *p, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!tchar[(unsigned char)p[i]])
            return 0;
    return 1;
}

int ph_is_field_value(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

int ph_eq_lower(const char *p, size_t n, const char *lower, size_t lower_len)
{
    if (n != lower_len)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c |= 0x20;
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

size_t ph_u64toa(uint64_t v, char *dst)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

int64_t ph_parse_decimal(const char *p, size_t n)
{
    if (n == 0)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static time_t date_second = -1;
static char date_buf[PH_DATE_LEN + 1];

const char *ph_date_now(void)
{
    time_t now = time(NULL);
    if (now != date_second) {
        static const char days[] = "SunMonTueWedThuFriSat";
        static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
        struct tm tm;
        gmtime_r(&now, &tm);
        char *d = date_buf;
        memcpy(d, days + 3 * tm.tm_wday, 3);
        d[3] = ',';
        d[4] = ' ';
        d[5] = (char)('0' + tm.tm_mday / 10);
        d[6] = (char)('0' + tm.tm_mday % 10);
        d[7] = ' ';
        memcpy(d + 8, months + 3 * tm.tm_mon, 3);
        d[11] = ' ';
        int y = tm.tm_year + 1900;
        d[12] = (char)('0' + y / 1000 % 10);
        d[13] = (char)('0' + y / 100 % 10);
        d[14] = (char)('0' + y / 10 % 10);
        d[15] = (char)('0' + y % 10);
        d[16] = ' ';
        d[17] = (char)('0' + tm.tm_hour / 10);
        d[18] = (char)('0' + tm.tm_hour % 10);
        d[19] = ':';
        d[20] = (char)('0' + tm.tm_min / 10);
        d[21] = (char)('0' + tm.tm_min % 10);
        d[22] = ':';
        d[23] = (char)('0' + tm.tm_sec / 10);
        d[24] = (char)('0' + tm.tm_sec % 10);
        memcpy(d + 25, " GMT", 4);
        date_second = now;
    }
    return date_buf;
}

const char *ph_status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

size_t ph_percent_decode(const char *src, size_t n, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '%' && i + 2 < n) {
            int h = hexval((unsigned char)src[i + 1]), l = hexval((unsigned char)src[i + 2]);
            if (h >= 0 && l >= 0) {
                dst[o++] = (char)(h << 4 | l);
                i += 2;
                continue;
            }
        }
        dst[o++] = src[i];
    }
    return o;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

ptrdiff_t ph_base64url_decode(const char *src, size_t n, uint8_t *dst)
{
    while (n && src[n - 1] == '=')
        n--; /* padding is not expected, but tolerated */
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)src[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[o++] = (uint8_t)(acc >> bits);
        }
    }
    return (ptrdiff_t)o;
}

double ph_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void *ph_pool_get(ph_pool_t *pool, size_t size)
{
    void *b = pool->head;
    if (b == NULL)
        return malloc(size);
    pool->head = *(void **)b;
    pool->count--;
    return b;
}

void ph_pool_put(ph_pool_t *pool, void *block)
{
    if (block == NULL)
        return;
    if (pool->count >= PH_POOL_MAX) {
        free(block);
        return;
    }
    *(void **)block = pool->head;
    pool->head = block;
    pool->count++;
}

void ph_pool_clear(ph_pool_t *pool)
{
    while (pool->head) {
        void *next = *(void **)pool->head;
        free(pool->head);
        pool->head = next;
    }
    pool->count = 0;
}

int ph_list_next(const char **p, const char *end, ph_slice_t *item)
{
    const char *q = *p;
    for (;;) {
        while (q < end && (*q == ' ' || *q == '\t' || *q == ','))
            q++;
        if (q == end) {
            *p = q;
            return 0;
        }
        const char *s = q;
        while (q < end && *q != ',')
            q++;
        const char *e = q;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e > s) {
            *p = q;
            *item = (ph_slice_t){s, (size_t)(e - s)};
            return 1;
        }
    }
}

int ph_has_token(const char *p, size_t n, const char *lower, size_t lower_len)
{
    ph_slice_t item;
    const char *end = p + n;
    while (ph_list_next(&p, end, &item)) {
        if (ph_eq_lower(item.base, item.len, lower, lower_len))
            return 1;
    }
    return 0;
}
