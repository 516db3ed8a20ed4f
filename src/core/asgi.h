/* The ASGI 3 bridge: turns streams into `app(scope, receive, send)` calls, stepping the app's
 * coroutine in an asyncio.Task started eagerly (no event-loop round trip before the app runs). */
#ifndef PH_ASGI_H
#define PH_ASGI_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "listener.h"
#include "stream.h"

typedef struct ph_req_s ph_req_t;

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

/* The scope's "client" tuple, kept per peer address: every request on a connection (and any
 * later connection from the same address and port) shares one. */
#define PH_PEER_SLOTS 64
typedef struct {
    struct sockaddr_storage addr;
    PyObject *tuple;
} ph_peer_slot_t;

/* Interned strings and constants, created once per module. Object references only (the
 * module's GC support walks it as an array of them). */
typedef struct {
    PyTypeObject *server_type, *req_type, *driver_type, *waiter_type;
    PyTypeObject *wsgi_server_type, *wsgi_input_type, *wsgi_responder_type, *file_wrapper_type;
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

typedef struct {
    PyObject_HEAD
    ph_state_t *st;
    ph_loop_t loop;
    ph_server_t server;
    PyObject *app, *aloop, *state, *root_path, *root_path_bytes;
    PyObject *access_log;    /* callable(client, method, path, version, status, bytes, seconds) */
    PyObject *log_exception; /* callable(message, exc) */
    PyObject *proxy;         /* callable(client_host, x_forwarded_for, x_forwarded_proto) or NULL */
    PyObject *tick, *on_timer; /* bound methods handed to the asyncio loop */
    PyObject *timer_handle;
    PyObject *extra_headers; /* bytes that server.cfg.extra_headers points into */
    PyObject *server_addr;   /* the last scope["server"] tuple, for server_sockaddr */
    PyObject *scope_template, *asgi_template; /* what every scope starts as (asgi.c) */
    PyObject *ext_template;                   /* and its "extensions" */
    struct sockaddr_storage server_sockaddr;
    ph_peer_slot_t peers[PH_PEER_SLOTS];
    ph_req_t *reqs; /* requests whose app has not returned (for shutdown) */
    size_t nreqs;
    ph_req_t *held; /* requests an open stream holds a reference to */
    int reader_added, closed, loop_open;
} ph_pyserver_t;

/* Reads the options every server takes (limits, timeouts, HTTP/2 settings, headers, root
 * path) into server->cfg; *extra_headers and *root_path get new references. 0, or -1 with an
 * exception. */
int ph_server_options(ph_server_t *server, PyObject *opts, PyObject **extra_headers,
                      PyObject **root_path);

/* The servers' on_conn hook: the protocol --http asks for on a new connection. */
int ph_attach_protocol(ph_server_t *server, ph_conn_t *conn);

/* Registers the bridge's types on the module; 0 or -1 with an exception. */
int ph_asgi_init_types(PyObject *module, ph_state_t *st);

/* The server's on_stream hook. */
void ph_asgi_on_stream(ph_server_t *server, ph_stream_t *stream);

/* The next request in srv->held (for the server's GC traversal). */
ph_req_t *ph_asgi_next_held(ph_req_t *r);

/* Answers 503 to every request no byte of whose response has left, and cancels the tasks of
 * every request whose app is still running; returns how many were cancelled. */
Py_ssize_t ph_asgi_cancel_all(ph_pyserver_t *srv);

#endif
