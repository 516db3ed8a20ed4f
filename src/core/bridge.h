/* What the bridges (asgi.c, wsgi.c) share above the stream seam: the module state with its
 * interned strings and types (module.c creates it), the server options both read, and the
 * hook that attaches a protocol to a new connection. */
#ifndef PH_BRIDGE_H
#define PH_BRIDGE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "server.h"
#include "stream.h"

#define PH_HNAME_SLOTS 128
#define PH_HNAME_PROBES 4
/* Where a header name's search in ph_state_t.hnames starts (open addressing, PH_HNAME_PROBES
 * slots at most). */
static inline unsigned ph_hname_slot(const char *name, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 16777619u;
    return (h >> 16) % PH_HNAME_SLOTS;
}

/* Interned strings and constants, created once per module. Object references only (the
 * module's GC support walks it as an array of them). */
typedef struct {
    PyTypeObject *server_type, *req_type, *driver_type, *waiter_type;
    PyTypeObject *wsgi_server_type, *wsgi_input_type, *wsgi_responder_type, *file_wrapper_type;
    PyTypeObject *tls_type;
    PyObject *client_disconnected; /* OSError subclass raised by send() after a disconnect */
    PyObject *cancelled_error;     /* asyncio.CancelledError */
    PyObject *task_type;           /* asyncio.Task */
    PyObject *done;                /* the awaitable send() returns when it need not wait */
    PyObject *empty_bytes;
    /* keys */
    PyObject *k_type, *k_asgi, *k_version, *k_spec_version, *k_http_version, *k_method, *k_scheme,
        *k_path, *k_raw_path, *k_query_string, *k_root_path, *k_headers, *k_client, *k_server,
        *k_state, *k_extensions, *k_body, *k_more_body, *k_status, *k_trailers, *k_more_trailers,
        *k_ext_response_trailers, *k_ext_request_trailers;
    /* values */
    PyObject *v_http, *v_https, *v_3_0, *v_2_4, *v_1_0, *v_1_1, *v_2, *v_http_request,
        *v_http_disconnect, *v_http_response_start, *v_http_response_body,
        *v_http_response_trailers;
    /* WebSockets */
    PyObject *k_subprotocols, *k_subprotocol, *k_text, *k_bytes, *k_code, *k_reason,
        *k_ext_ws_response, *v_websocket, *v_ws, *v_wss, *v_ws_connect, *v_ws_accept, *v_ws_receive,
        *v_ws_send, *v_ws_close, *v_ws_disconnect, *v_ws_response_start, *v_ws_response_body;
    /* methods and attributes */
    PyObject *s_create_future, *s_set_result, *s_done, *s_cancel, *s_call_soon, *s_call_later,
        *s_add_reader, *s_remove_reader, *s_throw, *s_close, *s_loop, *s_eager_start, *s_await;
    PyObject *methods[8]; /* GET HEAD POST PUT DELETE PATCH OPTIONS TRACE */
    PyObject *kw_loop_eager, *kw_loop_name, *kw_loop_name_context;
    PyObject *enter_task, *leave_task; /* asyncio's _enter_task / _leave_task (3.11) */
    PyObject *task_name; /* one name for every request's Task (3.11 formats "Task-N" otherwise) */
    /* Common request header names as bytes, by ph_hname_slot(): a request's headers share
     * them instead of allocating each name again. */
    PyObject *hnames[PH_HNAME_SLOTS];
} ph_state_t;

/* Reads the options every server takes (limits, timeouts, HTTP/2 settings, headers, root
 * path) into server->cfg; *extra_headers and *root_path get new references. 0, or -1 with an
 * exception. */
int ph_server_options(ph_server_t *server, PyObject *opts, PyObject **extra_headers,
                      PyObject **root_path);

/* The "heartbeat" option (a writable, 8-byte aligned buffer shared with a supervisor:
 * "heartbeat_slots" pages of "heartbeat_slot_size" bytes, one per worker), this worker's
 * "heartbeat_slot" and "heartbeat_interval" (seconds) into server->beat, and with more than
 * one slot server->peers (accept balancing); "max_requests" and "retire_fd" (--max-requests);
 * *held gets the memoryview that keeps the buffer
 * exported. 0, or -1 with an exception. */
int ph_beat_options(ph_server_t *server, PyObject *opts, PyObject **held);

/* TLS for the bridges (pytls.c): the TLSContext type; the "tls" and "log_debug" options
 * into server->tls / server->debug (*held gets a new reference to what they borrow); a
 * connection's TLS facts as the ASGI `tls` extension (a new dict); mod_ssl's variables
 * (HTTPS, SSL_*) copied into a WSGI environ. 0 / an object, or -1 / NULL with an exception. */
struct ph_tls_s;
int ph_pytls_init_types(PyObject *m, ph_state_t *st);
int ph_pytls_server_options(ph_state_t *st, ph_server_t *server, PyObject *opts, PyObject **held);
PyObject *ph_pytls_asgi_extension(struct ph_tls_s *t);
int ph_pytls_wsgi_environ(PyObject *env, const char *packed); /* packed: ph_tls_env() */

/* "ip:port" ("[ip6]:port"; "unix" for a Unix socket peer) into out. */
void ph_peer_text(const struct sockaddr_storage *ss, char *out, size_t len);

/* The "on_reject" option: server->on_reject calls it with (client, method, target, version,
 * status, bytes_out, seconds, bytes_in, end, reject) for every exchange answered below the
 * bridge, from any thread (the GIL is taken). The server borrows it: the caller holds
 * *held (a new reference). 0, or -1 with an exception. */
int ph_reject_options(ph_server_t *server, PyObject *opts, PyObject **held);

/* The servers' on_conn hook: the protocol --http asks for on a new connection. */
int ph_attach_protocol(ph_server_t *server, ph_conn_t *conn);

/* A request method as a str: the interned one for the common methods. New reference, or NULL
 * with an exception. */
static inline PyObject *ph_method_str(ph_state_t *st, ph_slice_t m)
{
    static const char *const names[8] = {"GET",    "HEAD",  "POST",    "PUT",
                                         "DELETE", "PATCH", "OPTIONS", "TRACE"};
    for (int i = 0; i < 8; i++)
        if (strlen(names[i]) == m.len && memcmp(names[i], m.base, m.len) == 0)
            return Py_NewRef(st->methods[i]);
    return PyUnicode_DecodeLatin1(m.base, (Py_ssize_t)m.len, NULL);
}

/* Calls the server's log_exception(message, exc or None, client_gone); a failure there is
 * unraisable. Returns 1 when it was logged as an app error (not a client that left). */
static inline int ph_log_exception(PyObject *log_fn, const char *msg, PyObject *exc,
                                   int client_gone)
{
    PyObject *m = PyUnicode_FromString(msg);
    PyObject *r = m ? PyObject_CallFunction(log_fn, "OOO", m, exc ? exc : Py_None,
                                            client_gone ? Py_True : Py_False)
                    : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable(log_fn);
    int app_error = r == NULL || r != Py_False;
    Py_XDECREF(r);
    Py_XDECREF(m);
    return app_error;
}

/* The first X-Forwarded-For and X-Forwarded-Proto values as bytes (NULL when absent). 0, or -1
 * with an exception (and nothing to release). */
static inline int ph_forwarded(const ph_request_t *rq, PyObject **xff, PyObject **xfp)
{
    *xff = *xfp = NULL;
    for (size_t i = 0; i < rq->nheaders; i++) {
        ph_slice_t n = rq->headers[i].name, v = rq->headers[i].value;
        PyObject **dst = NULL;
        if (n.len == 15 && memcmp(n.base, "x-forwarded-for", 15) == 0)
            dst = xff;
        else if (n.len == 17 && memcmp(n.base, "x-forwarded-proto", 17) == 0)
            dst = xfp;
        if (dst == NULL || *dst != NULL)
            continue;
        if ((*dst = PyBytes_FromStringAndSize(v.base, (Py_ssize_t)v.len)) == NULL) {
            Py_CLEAR(*xff);
            Py_CLEAR(*xfp);
            return -1;
        }
    }
    return 0;
}

#endif
