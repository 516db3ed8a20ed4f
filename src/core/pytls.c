/* TLS as the bridges see it: the TLSContext type Python builds before binding (so a bad
 * certificate is an error at startup), the ASGI `tls` extension, WSGI's mod_ssl variables, and
 * the debug line for connections that end below any request. */
#include <arpa/inet.h>
#include <sys/un.h>

#include "bridge.h"
#include "conn.h"
#include "tls.h"

typedef struct {
    PyObject_HEAD
    ph_tls_ctx_t *ctx;
} pytls_t;

/* A list of str from a sequence of str (a lone str is one item). New reference or NULL. */
static const char **str_list(PyObject *seq, const char *what, Py_ssize_t *n, PyObject **keep)
{
    *keep = PySequence_Fast(seq, what);
    if (*keep == NULL)
        return NULL;
    *n = PySequence_Fast_GET_SIZE(*keep);
    const char **out = PyMem_Calloc((size_t)*n + 1, sizeof(*out));
    if (out == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        out[i] = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(*keep, i));
        if (out[i] == NULL) {
            PyMem_Free(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *tls_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"certfiles", "keyfiles",    "password", "ca_certs", "cert_reqs",
                             "ciphers",   "min_version", "h2",       "http1",    NULL};
    PyObject *certs, *keys;
    const char *password = NULL, *ca = NULL, *ciphers = NULL;
    int verify = 0, minv = 12, h2 = 1, http1 = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|zzizipp", kwlist, &certs, &keys, &password, &ca,
                                     &verify, &ciphers, &minv, &h2, &http1))
        return NULL;
    PyObject *kc = NULL, *kk = NULL;
    Py_ssize_t nc = 0, nk = 0;
    const char **cf = str_list(certs, "certfiles must be a sequence", &nc, &kc);
    const char **kf = cf ? str_list(keys, "keyfiles must be a sequence", &nk, &kk) : NULL;
    pytls_t *self = NULL;
    if (kf == NULL)
        goto done;
    if (nc != nk) {
        PyErr_SetString(PyExc_ValueError, "--ssl-keyfile: give one per --ssl-certfile");
        goto done;
    }
    ph_tls_options_t o = {
        .certfiles = cf,
        .keyfiles = kf,
        .ncerts = (size_t)nc,
        .password = password,
        .ca_certs = ca,
        .verify = verify,
        .ciphers = ciphers,
        .min_version = minv,
        .h2 = h2,
        .http1 = http1,
    };
    char err[512];
    ph_tls_ctx_t *ctx;
    Py_BEGIN_ALLOW_THREADS
        ctx = ph_tls_ctx_new(&o, err, sizeof(err));
    Py_END_ALLOW_THREADS
    if (ctx == NULL) {
        PyErr_SetString(PyExc_ValueError, err);
        goto done;
    }
    self = (pytls_t *)type->tp_alloc(type, 0);
    if (self == NULL)
        ph_tls_ctx_free(ctx);
    else
        self->ctx = ctx;
done:
    PyMem_Free(cf);
    PyMem_Free(kf);
    Py_XDECREF(kc);
    Py_XDECREF(kk);
    return (PyObject *)self;
}

static void tls_dealloc(pytls_t *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    ph_tls_ctx_free(self->ctx);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *tls_rotate(pytls_t *self, PyObject *unused)
{
    (void)unused;
    ph_tls_ctx_rotate_tickets(self->ctx);
    Py_RETURN_NONE;
}

static PyMethodDef tls_methods[] = {
    {"rotate_tickets", (PyCFunction)tls_rotate, METH_NOARGS,
     "Seal new session tickets with a new key (done every 12 hours by itself)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot tls_slots[] = {
    {Py_tp_new, tls_new},
    {Py_tp_dealloc, tls_dealloc},
    {Py_tp_methods, tls_methods},
    {Py_tp_doc, "TLSContext(certfiles, keyfiles, password=None, ca_certs=None, cert_reqs=0, "
                "ciphers=None, min_version=12, h2=True, http1=True): certificates loaded and "
                "checked; ValueError with one line for the user otherwise."},
    {0, NULL},
};

static PyType_Spec tls_spec = {
    .name = "pronghorn._core.TLSContext",
    .basicsize = sizeof(pytls_t),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = tls_slots,
};

int ph_pytls_init_types(PyObject *m, ph_state_t *st)
{
    st->tls_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &tls_spec, NULL);
    return st->tls_type == NULL || PyModule_AddType(m, st->tls_type) < 0 ? -1 : 0;
}

/* ---- debug lines ---- */

/* "host:port" of a peer, or "unix" */
void ph_peer_text(const struct sockaddr_storage *ss, char *out, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
    } else {
        snprintf(out, len, "unix");
        return;
    }
    snprintf(out, len, ss->ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
}

/* server->debug: the bridge's callable(peer, what); from any thread (the GIL is taken). */
static void on_debug(ph_server_t *server, ph_conn_t *conn, const char *what)
{
    char peer[INET6_ADDRSTRLEN + 16];
    ph_peer_text(&conn->peer, peer, sizeof(peer));
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(server->debug_data, "ss", peer, what);
    if (r == NULL)
        PyErr_WriteUnraisable(server->debug_data);
    Py_XDECREF(r);
    PyGILState_Release(g);
}

int ph_pytls_server_options(ph_state_t *st, ph_server_t *server, PyObject *opts, PyObject **held)
{
    PyObject *tls = PyDict_GetItemString(opts, "tls");
    PyObject *dbg = PyDict_GetItemString(opts, "log_debug");
    if (tls == Py_None)
        tls = NULL;
    if (dbg == Py_None)
        dbg = NULL;
    if (tls && !PyObject_TypeCheck(tls, st->tls_type)) {
        PyErr_SetString(PyExc_TypeError, "tls must be a TLSContext");
        return -1;
    }
    *held = PyTuple_Pack(2, tls ? tls : Py_None, dbg ? dbg : Py_None);
    if (*held == NULL)
        return -1;
    server->tls = tls ? ((pytls_t *)tls)->ctx : NULL;
    server->debug = dbg ? on_debug : NULL;
    server->debug_data = dbg;
    return 0;
}

/* ---- what an app sees ---- */

/* A str from a malloc'd C string (freed here); None for NULL. New reference or NULL. */
static PyObject *take_str(char *s)
{
    if (s == NULL)
        return Py_NewRef(Py_None);
    PyObject *o = PyUnicode_DecodeLatin1(s, (Py_ssize_t)strlen(s), NULL);
    free(s);
    return o;
}

static PyObject *opt_str(const char *s)
{
    return s ? PyUnicode_FromString(s) : Py_NewRef(Py_None);
}

static void decref(void *o)
{
    Py_DECREF((PyObject *)o); /* sessions are freed on the loop's thread, which holds the GIL */
}

/* What the session tells the app, made once per connection (its certificates as PEM are
 * the costly part) and kept with the session. */
static PyObject *asgi_tls_dict(ph_tls_t *t)
{
    PyObject *d = PyDict_New();
    PyObject *chain = PyList_New(0);
    if (d == NULL || chain == NULL)
        goto fail;
    size_t n = ph_tls_peer_count(t);
    for (size_t i = 0; i < n; i++) {
        PyObject *p = take_str(ph_tls_peer_cert_pem(t, i));
        if (p == NULL || PyList_Append(chain, p) < 0) {
            Py_XDECREF(p);
            goto fail;
        }
        Py_DECREF(p);
    }
    struct {
        const char *key;
        PyObject *value;
    } items[] = {
        {"server_cert", take_str(ph_tls_server_cert_pem(t))},
        {"client_cert_chain", PyList_AsTuple(chain)},
        {"client_cert_name", take_str(ph_tls_peer_field(t, PH_TLS_SUBJECT))},
        {"client_cert_error", opt_str(ph_tls_peer_error(t))},
        {"tls_version", PyLong_FromLong(ph_tls_version(t))},
        {"cipher_suite", PyLong_FromLong(ph_tls_cipher_id(t))},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof(items) / sizeof(items[0]); i++) {
        if (ok &&
            (items[i].value == NULL || PyDict_SetItemString(d, items[i].key, items[i].value) < 0))
            ok = 0;
        Py_XDECREF(items[i].value);
    }
    Py_DECREF(chain);
    if (!ok) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
fail:
    Py_XDECREF(chain);
    Py_XDECREF(d);
    return NULL;
}

PyObject *ph_pytls_asgi_extension(ph_tls_t *t)
{
    PyObject *d = ph_tls_data(t);
    if (d == NULL) {
        d = asgi_tls_dict(t);
        if (d == NULL)
            return NULL;
        ph_tls_set_data(t, d, decref);
    }
    return PyDict_Copy(d); /* each request its own dict; the values are immutable */
}

int ph_pytls_wsgi_environ(PyObject *env, const char *packed)
{
    for (const char *p = packed; *p;) {
        const char *key = p, *value = p + strlen(p) + 1;
        PyObject *v = PyUnicode_DecodeLatin1(value, (Py_ssize_t)strlen(value), NULL);
        if (v == NULL || PyDict_SetItemString(env, key, v) < 0) {
            Py_XDECREF(v);
            return -1;
        }
        Py_DECREF(v);
        p = value + strlen(value) + 1;
    }
    return 0;
}
