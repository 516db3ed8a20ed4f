/* The ASGI 3 bridge: turns streams into `app(scope, receive, send)` calls, stepping the app's
 * coroutine in an asyncio.Task started eagerly (no event-loop round trip before the app runs). */
#ifndef PH_ASGI_H
#define PH_ASGI_H

#include "bridge.h"
#include "listener.h"

typedef struct ph_req_s ph_req_t;

/* The scope's "client" tuple, kept per peer address: every request on a connection (and any
 * later connection from the same address and port) shares one. */
#define PH_PEER_SLOTS 64
typedef struct {
    struct sockaddr_storage addr;
    PyObject *tuple;
} ph_peer_slot_t;

typedef struct {
    PyObject_HEAD
    ph_state_t *st;
    ph_loop_t loop;
    ph_server_t server;
    PyObject *app, *aloop, *state, *root_path, *root_path_bytes;
    /* callable(client, method, target, version, status, bytes_out, seconds, bytes_in, end,
     * reject, headers): one access line per exchange (logs.py) */
    PyObject *access_log;
    int log_headers;         /* the access log format names headers: pass them */
    PyObject *log_exception; /* callable(message, exc, client_gone) -> True for an app error */
    PyObject *trace;         /* callable(client, event, message) with --log-level trace */
    PyObject *proxy;         /* callable(client_host, x_forwarded_for, x_forwarded_proto) or NULL */
    PyObject *tick, *on_timer; /* bound methods handed to the asyncio loop */
    PyObject *timer_handle;
    PyObject *extra_headers; /* bytes that server.cfg.extra_headers points into */
    PyObject *tls_held;      /* (TLSContext, debug callable) that server borrows */
    PyObject *beat_held;     /* the heartbeat page's memoryview (server.beat) */
    PyObject *reject_held;   /* the on_reject callable server.on_reject calls */
    PyObject *server_addr;   /* the last scope["server"] tuple, for server_sockaddr */
    PyObject *scope_template, *asgi_template; /* what every scope starts as (asgi.c) */
    PyObject *ext_template;                   /* and its "extensions" */
    struct sockaddr_storage server_sockaddr;
    ph_peer_slot_t peers[PH_PEER_SLOTS];
    ph_req_t *reqs; /* requests whose app has not returned (for shutdown) */
    size_t nreqs;
    ph_req_t *held; /* requests an open stream holds a reference to */
    int reader_added, closed, loop_open;
    int cancelling; /* ph_asgi_cancel_all() ran: the tasks' cancellations are the server's */
} ph_pyserver_t;

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
