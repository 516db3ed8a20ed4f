/* Small shared pieces of the plain-C core: slices, error codes, header helpers, the Date cache. */
#ifndef PH_UTIL_H
#define PH_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Errors are negative: libuv's own (UV_E*, negative errno) or these. */
#define PH_EPROTO (-10001)  /* the peer broke the protocol */
#define PH_ELIMIT (-10002)  /* a configured limit was exceeded */
#define PH_ESTATE (-10003)  /* call not allowed in the stream's current state */
#define PH_EINVAL (-10004)  /* invalid argument (e.g. a header the app gave) */
#define PH_ECLOSED (-10005) /* the peer has gone */
#define PH_ENOMEM (-10006)

/* A byte range that is not NUL-terminated. */
typedef struct {
    const char *base;
    size_t len;
} ph_slice_t;

typedef struct {
    ph_slice_t name;
    ph_slice_t value;
} ph_header_t;

#define PH_SLICE_LIT(s) ((ph_slice_t){(s), sizeof(s) - 1})

/* 1 if [p, p+n) is a non-empty RFC 9110 token (tchar+). */
int ph_is_token(const char *p, size_t n);

/* 1 if [p, p+n) is a valid field value: no CR, LF, NUL or other controls but HTAB. */
int ph_is_field_value(const char *p, size_t n);

/* ASCII case-insensitive equality of a slice with a lower-case literal. */
int ph_eq_lower(const char *p, size_t n, const char *lower, size_t lower_len);

/* The next item of a comma-separated field value (RFC 9110 §5.6.1) from *p (moved past it),
 * without the spaces around it; empty items are skipped. 0 at the end of the list. */
int ph_list_next(const char **p, const char *end, ph_slice_t *item);

/* 1 if the comma-separated list [p, p+n) holds the token (ASCII case-insensitive, given in
 * lower case), as in `Connection: keep-alive, Close`. */
int ph_has_token(const char *p, size_t n, const char *lower, size_t lower_len);

/* Writes the decimal form of v at dst (room for 20 bytes); returns its length. */
size_t ph_u64toa(uint64_t v, char *dst);

/* Parses a non-empty run of decimal digits; -1 on anything else or overflow past INT64_MAX. */
int64_t ph_parse_decimal(const char *p, size_t n);

/* The IMF-fixdate for now, rebuilt at most once a second: 29 bytes, not NUL-terminated. */
const char *ph_date_now(void);
#define PH_DATE_LEN 29

/* Reason phrase for a status code ("" when unknown). */
const char *ph_status_reason(int status);

/* Percent-decodes [src, src+n) into dst (room for n bytes); returns the decoded length. */
size_t ph_percent_decode(const char *src, size_t n, char *dst);

/* Decodes base64url (RFC 4648 §5, padding optional) into dst (room for n * 3 / 4 bytes);
 * returns the decoded length, or -1 on a character outside the alphabet or a bad length. */
ptrdiff_t ph_base64url_decode(const char *src, size_t n, uint8_t *dst);

/* A free list of equal-sized heap blocks. Per-connection buffers go back to a shared pool while
 * their connection is idle: no malloc per request, and little memory held per idle connection.
 * A zeroed pool is ready; it keeps at most PH_POOL_MAX blocks and frees the rest. */
typedef struct {
    void *head;
    size_t count;
} ph_pool_t;
#define PH_POOL_MAX 512

/* A block of size bytes (the pool's only size), or NULL when out of memory. */
void *ph_pool_get(ph_pool_t *pool, size_t size);
/* Returns a block from ph_pool_get(); NULL is ignored. */
void ph_pool_put(ph_pool_t *pool, void *block);
/* Frees every pooled block. */
void ph_pool_clear(ph_pool_t *pool);

/* Monotonic seconds, for durations. */
double ph_monotonic(void);

#endif
