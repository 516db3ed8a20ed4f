/* LD_PRELOAD shim for wrk in scenario 7c (new TLS connections): every reconnection is a full
 * TLS handshake, not a resumption.
 *
 * wrk keeps one SSL object per connection slot and, when the server closes (`Connection:
 * close`), calls SSL_shutdown() then SSL_clear() on it and connects again. SSL_clear() keeps
 * the session of a connection that was shut down cleanly, TLS 1.3 tickets included, so the
 * next ClientHello offers it and nearly every "new" connection resumes (nginx logs
 * $ssl_session_reused "r" for all but the first per slot). Dropping the session first makes
 * the next handshake a full one: key exchange, certificate, signature.
 *
 * bench/run.py compiles this with `cc -shared -fPIC` per run. Both functions are looked up
 * at run time, so the library links against nothing and loads into any process (taskset
 * too, which never calls them). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

int SSL_clear(SSL *s)
{
    static int (*real_clear)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    if (real_clear == NULL) {
        real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    if (set_session != NULL)
        set_session(s, NULL);
    return real_clear(s);
}
