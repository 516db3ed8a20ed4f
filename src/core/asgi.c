#include "asgi.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ws.h"

/* The bridge buffers this much unread request body before it stops reading the socket. */
#define BODY_HIGH_WATER 65536

struct ph_req_s {
    PyObject_HEAD
    ph_pyserver_t *srv;
    ph_stream_t *stream; /* NULL once the protocol released it */
    PyObject *task;
    PyObject *recv_futs; /* list of the futures receive() calls wait on, or NULL */
    PyObject *send_fut;
    PyObject *body;         /* list of bytes not yet received by the app, or NULL */
    PyObject *trailers;     /* response trailer pairs gathered while more_trailers, or NULL */
    PyObject *req_trailers; /* the list in scope["extensions"] request trailers go to, or NULL */
    size_t body_buffered;
    ph_req_t *prev, *next;   /* in srv->reqs while the app runs */
    ph_req_t *hprev, *hnext; /* in srv->held while the stream holds a reference */
    /* started: the app's http.response.start was accepted; body_started: a body message was,
     * so bytes have left (before that an error can still be answered with a 500). */
    unsigned body_end : 1, body_final_sent : 1, disconnected : 1, started : 1, body_started : 1,
        done : 1, want_body_sent : 1, paused : 1, app_running : 1, linked : 1, peer_closed : 1,
        held : 1, want_trailers : 1, body_complete : 1;
    int status;
    uint64_t bytes;    /* response body bytes accepted */
    uint64_t bytes_in; /* request body bytes received */
    double t0;
    /* logged: its access line went out (once per request); answered: the status the protocol
     * answered with itself (stream.h) */
    unsigned logged : 1;
    int answered;
    uint64_t id;    /* the server's count of requests when it opened (trace lines name it) */
    char method[8]; /* for the counters: the method when it is one of the common ones */
    size_t method_len;
    /* kept for the access log only */
    PyObject *log_client, *log_method, *log_path, *log_version;
    PyObject *log_req_headers, *log_resp_headers; /* when the log format names headers */
    /* A WebSocket (is_ws: the request was a handshake). ws: its session once accepted;
     * ws_queue: messages read and not yet received; ws_code / ws_reason: what
     * websocket.disconnect will say; ws_timer: pings and the close handshake's deadline.
     * connect_taken: websocket.connect was received; accepted: the 101 is out; close_sent:
     * our close frame is; over: the session ended (websocket.disconnect comes after the
     * queue); ended: the tunnel was closed (the stream goes with it). */
    ph_ws_t *ws;
    PyObject *ws_queue, *ws_reason;
    int ws_code;
    struct ws_timer_s *ws_timer;
    uint64_t ws_ping_at; /* loop time (ms) of the ping not yet answered; 0: none */
    unsigned is_ws : 1, ws_connect_taken : 1, ws_accepted : 1, ws_close_sent : 1, ws_over : 1,
        ws_ended : 1, ws_write_paused : 1;
};

typedef struct {
    PyObject_HEAD
    PyObject *coro;
    ph_req_t *req;
    int running;
    /* 3.11: the bridge took the app's first step itself (start_task()); the Task's own first
     * step picks up what it left: the value the app yielded, or its end. */
    int stepped;
    PyObject *yielded; /* NULL: the app ended in that step */
    PyObject *exc;     /* how it ended when that was a cancellation, for the Task to see */
} driver_t;

enum { WAIT_RECEIVE, WAIT_SEND };

typedef struct {
    PyObject_HEAD
    PyObject *result;
    PyObject *fut_iter;
    ph_req_t *req;
    int kind;
    int finished; /* it returned: like a coroutine, it cannot be awaited again */
} waiter_t;

static const ph_stream_handler_t asgi_handler;
static PyObject *ws_take_message(ph_req_t *r);
static PyObject *ws_send(ph_req_t *r, PyObject *msg, PyObject *type);
static void ws_app_done(ph_req_t *r, PyObject *exc, int cancelled);
static void ws_input(ph_req_t *r, const char *data, size_t len);
static void ws_finish(ph_req_t *r, int code);
static void ws_timer_drop(ph_req_t *r);

/* ---- helpers ---- */

/* Resolves the future a receive() or send() waits on. Not once the server is closed: its
 * asyncio loop may be closed too, and nothing will run the waiter again. */
static void wake(ph_req_t *req, PyObject **futp)
{
    PyObject *fut = *futp;
    if (fut == NULL)
        return;
    *futp = NULL;
    if (req->srv->closed) {
        Py_DECREF(fut);
        return;
    }
    ph_state_t *st = req->srv->st;
    PyObject *done = PyObject_CallMethodNoArgs(fut, st->s_done);
    if (done == Py_False) {
        PyObject *r = PyObject_CallMethodOneArg(fut, st->s_set_result, Py_None);
        if (r == NULL)
            PyErr_WriteUnraisable(fut);
        Py_XDECREF(r);
    } else if (done == NULL) {
        PyErr_WriteUnraisable(fut);
    }
    Py_XDECREF(done);
    Py_DECREF(fut);
}

/* Wakes every receive() that waits: each looks for its message again (and waits again if
 * another took it). */
static void wake_receivers(ph_req_t *r)
{
    PyObject *futs = r->recv_futs;
    if (futs == NULL)
        return;
    r->recv_futs = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(futs); i++) {
        PyObject *fut = Py_NewRef(PyList_GET_ITEM(futs, i));
        wake(r, &fut);
    }
    Py_DECREF(futs);
}

static void log_exception(ph_pyserver_t *srv, const char *msg, PyObject *exc)
{
    if (ph_log_exception(srv->log_exception, msg, exc, 0))
        ph_server_count_app_error(&srv->server);
}

/* "a.b.c.d" without sprintf (inet_ntop formats through printf: measurable per request). */
static size_t format_ipv4(const struct in_addr *a, char *out)
{
    const unsigned char *b = (const unsigned char *)&a->s_addr;
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        if (i)
            out[n++] = '.';
        n += ph_u64toa(b[i], out + n);
    }
    out[n] = 0;
    return n;
}

static PyObject *addr_tuple(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    size_t hl;
    int port;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        hl = format_ipv4(&a->sin_addr, host);
        port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        hl = strlen(host);
        port = ntohs(a->sin6_port);
    } else {
        Py_RETURN_NONE;
    }
    PyObject *h = PyUnicode_DecodeASCII(host, (Py_ssize_t)hl, NULL);
    PyObject *p = h ? PyLong_FromLong(port) : NULL;
    if (p == NULL) {
        Py_XDECREF(h);
        return NULL;
    }
    PyObject *t = PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(h);
        Py_DECREF(p);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, h);
    PyTuple_SET_ITEM(t, 1, p);
    return t;
}

/* The scope's "server": the same for every request on a listener, so the last one is kept. */
static PyObject *server_tuple(ph_pyserver_t *srv, const struct sockaddr_storage *ss)
{
    size_t len = ss->ss_family == AF_INET6  ? sizeof(struct sockaddr_in6)
                 : ss->ss_family == AF_UNIX ? sizeof(struct sockaddr_un)
                                            : sizeof(struct sockaddr_in);
    if (srv->server_addr && memcmp(&srv->server_sockaddr, ss, len) == 0)
        return Py_NewRef(srv->server_addr);
    PyObject *t;
    if (ss->ss_family == AF_UNIX) { /* (path, None), as uvicorn gives */
        const struct sockaddr_un *u = (const struct sockaddr_un *)ss;
        t = Py_BuildValue("(sO)", u->sun_path, Py_None);
    } else {
        t = addr_tuple(ss);
    }
    if (t) {
        Py_XSETREF(srv->server_addr, Py_NewRef(t));
        memcpy(&srv->server_sockaddr, ss, sizeof(*ss));
    }
    return t;
}

/* The scope's "client": shared by every request from the same peer address. */
static PyObject *client_tuple(ph_pyserver_t *srv, const struct sockaddr_storage *ss)
{
    size_t len;
    unsigned key;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        len = sizeof(*a);
        key = ntohs(a->sin_port) ^ a->sin_addr.s_addr;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        len = sizeof(*a);
        key = ntohs(a->sin6_port) ^ a->sin6_addr.s6_addr[15];
    } else {
        Py_RETURN_NONE;
    }
    ph_peer_slot_t *slot = &srv->peers[(key ^ (key >> 16)) % PH_PEER_SLOTS];
    if (slot->tuple && memcmp(&slot->addr, ss, len) == 0)
        return Py_NewRef(slot->tuple);
    PyObject *t = addr_tuple(ss);
    if (t) {
        Py_XSETREF(slot->tuple, Py_NewRef(t));
        memcpy(&slot->addr, ss, len);
    }
    return t;
}

/* ---- the request object: receive() / send() ---- */

static void req_unlink(ph_req_t *r)
{
    if (!r->linked)
        return;
    ph_pyserver_t *srv = r->srv;
    if (r->prev)
        r->prev->next = r->next;
    else
        srv->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
    r->linked = 0;
    srv->nreqs--;
}

static int req_traverse(ph_req_t *r, visitproc visit, void *arg)
{
    Py_VISIT(r->srv);
    Py_VISIT(r->task);
    Py_VISIT(r->recv_futs);
    Py_VISIT(r->send_fut);
    Py_VISIT(r->body);
    Py_VISIT(r->trailers);
    Py_VISIT(r->req_trailers);
    Py_VISIT(r->ws_queue);
    Py_VISIT(Py_TYPE(r));
    return 0;
}

static int req_clear(ph_req_t *r)
{
    Py_CLEAR(r->task);
    Py_CLEAR(r->recv_futs);
    Py_CLEAR(r->send_fut);
    Py_CLEAR(r->body);
    Py_CLEAR(r->trailers);
    Py_CLEAR(r->req_trailers);
    Py_CLEAR(r->log_client);
    Py_CLEAR(r->log_method);
    Py_CLEAR(r->log_path);
    Py_CLEAR(r->log_version);
    Py_CLEAR(r->log_req_headers);
    Py_CLEAR(r->log_resp_headers);
    Py_CLEAR(r->ws_queue);
    Py_CLEAR(r->ws_reason);
    return 0;
}

static void req_dealloc(ph_req_t *r)
{
    PyTypeObject *tp = Py_TYPE(r);
    PyObject_GC_UnTrack(r);
    req_unlink(r);
    req_clear(r);
    if (r->ws)
        ph_ws_free(r->ws);
    Py_CLEAR(r->srv);
    tp->tp_free(r);
    Py_DECREF(tp);
}

/* --log-level trace: srv->trace(id, event, message) for a message in or out, the scope, the
 * app's end. A failure there is unraisable: tracing never changes what the app sees. */
static void trace(ph_req_t *r, const char *event, PyObject *msg)
{
    PyObject *res = PyObject_CallFunction(r->srv->trace, "KsO", (unsigned long long)r->id, event,
                                          msg ? msg : Py_None);
    if (res == NULL)
        PyErr_WriteUnraisable(r->srv->trace);
    Py_XDECREF(res);
}

static PyObject *take_message_(ph_req_t *r);

/* The next message for receive(), or NULL without an exception when the app must wait. */
static PyObject *take_message(ph_req_t *r)
{
    PyObject *msg = take_message_(r);
    if (msg && r->srv->trace)
        trace(r, "receive", msg);
    return msg;
}

static PyObject *take_message_(ph_req_t *r)
{
    ph_state_t *st = r->srv->st;
    if (r->is_ws)
        return ws_take_message(r);
    if (r->body || (r->body_end && !r->body_final_sent)) {
        PyObject *body;
        if (r->body == NULL) {
            body = Py_NewRef(st->empty_bytes);
        } else if (PyList_GET_SIZE(r->body) == 1) {
            body = Py_NewRef(PyList_GET_ITEM(r->body, 0));
        } else {
            body = PyObject_CallMethod(st->empty_bytes, "join", "O", r->body);
            if (body == NULL)
                return NULL;
        }
        Py_CLEAR(r->body);
        r->body_buffered = 0;
        int more = !r->body_end;
        if (!more)
            r->body_final_sent = 1;
        if (r->paused && r->stream) {
            r->paused = 0;
            r->stream->ops->want_body(r->stream);
            ph_loop_touch(&r->srv->loop);
        }
        PyObject *msg = PyDict_New();
        if (msg == NULL || PyDict_SetItem(msg, st->k_type, st->v_http_request) < 0 ||
            PyDict_SetItem(msg, st->k_body, body) < 0 ||
            PyDict_SetItem(msg, st->k_more_body, more ? Py_True : Py_False) < 0) {
            Py_XDECREF(msg);
            Py_DECREF(body);
            return NULL;
        }
        Py_DECREF(body);
        return msg;
    }
    if (r->disconnected || r->done ||
        (r->body_final_sent && (r->stream == NULL || r->peer_closed))) {
        PyObject *msg = PyDict_New();
        if (msg && PyDict_SetItem(msg, st->k_type, st->v_http_disconnect) < 0)
            Py_CLEAR(msg);
        return msg;
    }
    return NULL;
}

static PyObject *new_waiter(ph_req_t *r, int kind, PyObject *result, PyObject **futp)
{
    ph_state_t *st = r->srv->st;
    waiter_t *w = PyObject_GC_New(waiter_t, st->waiter_type);
    if (w == NULL)
        return NULL;
    w->result = result; /* stolen */
    w->fut_iter = NULL;
    w->req = (ph_req_t *)Py_NewRef(r);
    w->kind = kind;
    w->finished = 0;
    if (futp) {
        PyObject *fut = PyObject_CallMethodNoArgs(r->srv->aloop, st->s_create_future);
        if (fut == NULL) {
            PyObject_GC_Track(w);
            Py_DECREF(w);
            return NULL;
        }
        w->fut_iter = PyObject_CallMethodNoArgs(fut, st->s_await);
        if (w->fut_iter == NULL) {
            Py_DECREF(fut);
            PyObject_GC_Track(w);
            Py_DECREF(w);
            return NULL;
        }
        Py_XSETREF(*futp, fut);
    }
    PyObject_GC_Track(w);
    return (PyObject *)w;
}

/* The message is taken when the awaitable first runs, not here: a receive() that is never
 * awaited, or cancelled before it ran, takes nothing. */
static PyObject *req_receive(ph_req_t *r, PyObject *unused)
{
    (void)unused;
    if (!r->want_body_sent && r->stream && !r->body_end) {
        r->want_body_sent = 1;
        r->stream->ops->want_body(r->stream); /* 100 Continue goes out on the first receive() */
        ph_loop_touch(&r->srv->loop);
    }
    return new_waiter(r, WAIT_RECEIVE, NULL, NULL);
}

/* The request's one access line and its count, when it ends (end: PH_END_*). A request the
 * protocol answered itself (413, 408, 503 at the deadline) is logged with that answer. */
static void log_end(ph_req_t *r, int end, int reject)
{
    if (r->logged)
        return;
    r->logged = 1;
    ph_pyserver_t *srv = r->srv;
    ph_exchange_t x = {.end = end, .reject = reject};
    x.method = (ph_slice_t){r->method, r->method_len};
    x.status = r->body_started || end == PH_END_OK ? r->status : 0;
    if (r->answered && !r->body_started) {
        x.status = r->answered;
        x.end = PH_END_REJECTED;
        x.reject = ph_reject_reason(r->answered);
    }
    x.bytes_in = r->bytes_in;
    x.bytes_out = r->bytes;
    x.seconds = r->t0 ? ph_monotonic() - r->t0 : 0;
    ph_server_count(&srv->server, &x);
    if (srv->access_log == NULL || r->log_method == NULL)
        return;
    PyObject *headers = Py_None;
    if (srv->log_headers)
        headers = PyTuple_Pack(2, r->log_req_headers ? r->log_req_headers : Py_None,
                               r->log_resp_headers ? r->log_resp_headers : Py_None);
    PyObject *res =
        headers ? PyObject_CallFunction(srv->access_log, "OOOOiKdKiiO", r->log_client,
                                        r->log_method, r->log_path, r->log_version, x.status,
                                        (unsigned long long)x.bytes_out, x.seconds,
                                        (unsigned long long)x.bytes_in, x.end, x.reject, headers)
                : NULL;
    if (headers != Py_None)
        Py_XDECREF(headers);
    if (res == NULL)
        PyErr_WriteUnraisable(srv->access_log);
    Py_XDECREF(res);
}

static PyObject *raise_disconnected(ph_req_t *r)
{
    PyErr_SetString(r->srv->st->client_disconnected, "the client disconnected");
    return NULL;
}

/* A stream op failed: only a peer that is gone is ClientDisconnected. */
static PyObject *raise_for(ph_req_t *r, int rv, const char *what)
{
    switch (rv) {
    case PH_ENOMEM: return PyErr_NoMemory();
    case PH_ESTATE:
        PyErr_Format(PyExc_RuntimeError, "%s not allowed at this point of the response", what);
        return NULL;
    case PH_EINVAL: PyErr_Format(PyExc_ValueError, "invalid %s", what); return NULL;
    default: return raise_disconnected(r);
    }
}

#define MAX_STACK_HEADERS 32

/* An app's headers (an iterable of [name, value] byte pairs, or None) as slices into its bytes
 * objects, which seq keeps alive until header_array_free(). */
typedef struct {
    PyObject *seq;
    ph_header_t stack[MAX_STACK_HEADERS], *arr;
    size_t n;
} header_array_t;

static void header_array_free(header_array_t *ha)
{
    if (ha->arr != ha->stack)
        PyMem_Free(ha->arr);
    Py_CLEAR(ha->seq);
}

/* 0, or -1 with an exception set (and nothing to free). */
static int header_array(header_array_t *ha, PyObject *hs)
{
    ha->seq = NULL;
    ha->arr = ha->stack;
    ha->n = 0;
    if (hs == NULL || hs == Py_None)
        return 0;
    ha->seq = PySequence_Fast(hs, "headers must be an iterable of [name, value] pairs");
    if (ha->seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ha->seq);
    if (n > MAX_STACK_HEADERS) {
        ha->arr = PyMem_Malloc(sizeof(ph_header_t) * (size_t)n);
        if (ha->arr == NULL) {
            ha->arr = ha->stack;
            Py_CLEAR(ha->seq);
            PyErr_NoMemory();
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(ha->seq, i);
        PyObject *name, *value;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
            name = PyTuple_GET_ITEM(pair, 0);
            value = PyTuple_GET_ITEM(pair, 1);
        } else if (PyList_Check(pair) && PyList_GET_SIZE(pair) == 2) {
            name = PyList_GET_ITEM(pair, 0);
            value = PyList_GET_ITEM(pair, 1);
        } else {
            PyErr_SetString(PyExc_TypeError, "each header must be a [name, value] pair");
            header_array_free(ha);
            return -1;
        }
        if (!PyBytes_Check(name) || !PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "header names and values must be bytes");
            header_array_free(ha);
            return -1;
        }
        ha->arr[i].name = (ph_slice_t){PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name)};
        ha->arr[i].value = (ph_slice_t){PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value)};
    }
    ha->n = (size_t)n;
    return 0;
}

static void response_complete(ph_req_t *r)
{
    r->done = 1;
    log_end(r, PH_END_OK, 0);
    wake_receivers(r); /* a pending receive() now returns http.disconnect */
}

static PyObject *send_start(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    if (r->started) {
        PyErr_SetString(PyExc_RuntimeError, "http.response.start sent twice");
        return NULL;
    }
    PyObject *status_o = PyDict_GetItemWithError(msg, st->k_status);
    if (status_o == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "http.response.start needs a status");
        return NULL;
    }
    if (!PyLong_Check(status_o)) {
        PyErr_Format(PyExc_TypeError, "http.response.start status must be an int, not %.100s",
                     Py_TYPE(status_o)->tp_name);
        return NULL;
    }
    int overflow;
    long status_l = PyLong_AsLongAndOverflow(status_o, &overflow);
    if (status_l == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || status_l < 100 || status_l > 999) {
        PyErr_Format(PyExc_ValueError, "http.response.start status %R is not a 3-digit code",
                     status_o);
        return NULL;
    }
    int status = (int)status_l;
    PyObject *trailers = PyDict_GetItemWithError(msg, st->k_trailers);
    int want_trailers = trailers ? PyObject_IsTrue(trailers) : 0;
    if (want_trailers < 0 || (trailers == NULL && PyErr_Occurred()))
        return NULL;
    PyObject *hs = PyDict_GetItemWithError(msg, st->k_headers);
    if (hs == NULL && PyErr_Occurred())
        return NULL;
    header_array_t ha;
    if (header_array(&ha, hs) < 0)
        return NULL;
    PyObject *ret = NULL;
    if (r->stream == NULL || r->disconnected) {
        raise_disconnected(r);
        goto out;
    }
    int rv = r->stream->ops->start(r->stream, status, ha.arr, ha.n);
    if (rv == PH_EINVAL) {
        PyErr_Format(PyExc_ValueError,
                     "invalid response: status %d or a header name/value is not allowed", status);
        goto out;
    } else if (rv < 0) {
        raise_for(r, rv, "http.response.start");
        goto out;
    }
    r->started = 1;
    r->status = status;
    r->want_trailers = want_trailers;
    if (r->srv->log_headers && hs)
        Py_XSETREF(r->log_resp_headers, Py_NewRef(hs));
    ret = Py_NewRef(st->done);
out:
    header_array_free(&ha);
    return ret;
}

/* A body part (bytes or a file) was accepted: the response completes, or send() waits while
 * more than the high-water mark is queued. */
static PyObject *body_sent(ph_req_t *r, uint64_t len, int more)
{
    ph_state_t *st = r->srv->st;
    r->body_started = 1;
    r->bytes += len;
    if (!more && r->want_trailers) {
        r->body_complete = 1;
    } else if (!more) {
        response_complete(r);
        return Py_NewRef(st->done);
    }
    /* r->stream may have been released by now (the protocol is done with it). */
    if (r->stream && r->stream->ops->queued(r->stream) > r->srv->server.cfg.write_high_water)
        return new_waiter(r, WAIT_SEND, NULL, &r->send_fut);
    ph_loop_touch(&r->srv->loop);
    return Py_NewRef(st->done);
}

static PyObject *send_body(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    if (!r->started) {
        PyErr_SetString(PyExc_RuntimeError, "http.response.body before http.response.start");
        return NULL;
    }
    if (r->done || r->body_complete) {
        PyErr_SetString(PyExc_RuntimeError, "http.response.body after the response completed");
        return NULL;
    }
    PyObject *body = PyDict_GetItemWithError(msg, st->k_body);
    if (body == NULL && PyErr_Occurred())
        return NULL;
    PyObject *more_o = PyDict_GetItemWithError(msg, st->k_more_body);
    if (more_o == NULL && PyErr_Occurred())
        return NULL;
    int more = more_o ? PyObject_IsTrue(more_o) : 0;
    if (more < 0)
        return NULL;
    Py_buffer view = {0};
    const char *data = "";
    size_t len = 0;
    if (body && body != Py_None) {
        if (PyBytes_Check(body)) {
            data = PyBytes_AS_STRING(body);
            len = (size_t)PyBytes_GET_SIZE(body);
        } else {
            if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) {
                PyErr_Format(PyExc_TypeError,
                             "http.response.body body must be bytes (or bytes-like), not %.100s",
                             Py_TYPE(body)->tp_name);
                return NULL;
            }
            data = view.buf;
            len = (size_t)view.len;
        }
    }
    if (r->stream == NULL || r->disconnected) {
        if (view.obj)
            PyBuffer_Release(&view);
        return raise_disconnected(r);
    }
    ph_stream_t *s = r->stream;
    /* Trailers to come: the protocol hears of the body's end with them. */
    int rv = s->ops->body(s, data, len, more || r->want_trailers);
    if (view.obj)
        PyBuffer_Release(&view);
    if (rv == PH_EINVAL) {
        PyErr_SetString(PyExc_RuntimeError,
                        more ? "response body longer than its Content-Length"
                             : "response body shorter or longer than its Content-Length");
        return NULL;
    }
    if (rv < 0)
        return raise_for(r, rv, "http.response.body");
    return body_sent(r, len, more);
}

/* A file as (the rest of) the body: the pathsend and zerocopysend extensions. The stream owns
 * fd from here on. */
static PyObject *send_file(ph_req_t *r, int fd, uint64_t off, uint64_t len, int more,
                           const char *what)
{
    ph_stream_t *s = r->stream;
    if (s == NULL || r->disconnected) {
        close(fd);
        return raise_disconnected(r);
    }
    int rv = s->ops->sendfile(s, fd, off, len, more || r->want_trailers);
    if (rv == PH_EINVAL) {
        PyErr_Format(PyExc_RuntimeError,
                     "%s: the file does not match the response's "
                     "Content-Length",
                     what);
        return NULL;
    }
    if (rv < 0)
        return raise_for(r, rv, what);
    return body_sent(r, len, more);
}

static int body_allowed(ph_req_t *r, const char *what)
{
    if (!r->started) {
        PyErr_Format(PyExc_RuntimeError, "%s before http.response.start", what);
        return 0;
    }
    if (r->done || r->body_complete) {
        PyErr_Format(PyExc_RuntimeError, "%s after the response completed", what);
        return 0;
    }
    return 1;
}

/* http.response.pathsend: {"path": str}, the whole file. */
static PyObject *send_pathsend(ph_req_t *r, PyObject *msg)
{
    const char *what = "http.response.pathsend";
    if (!body_allowed(r, what))
        return NULL;
    PyObject *path = PyDict_GetItemString(msg, "path");
    PyObject *fs = NULL;
    if (path == NULL || !PyUnicode_FSConverter(path, &fs)) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s needs a 'path'", what);
        return NULL;
    }
    int fd = open(PyBytes_AS_STRING(fs), O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        int err = fd < 0 ? errno : EISDIR;
        if (fd >= 0)
            close(fd);
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        Py_DECREF(fs);
        return NULL;
    }
    Py_DECREF(fs);
    return send_file(r, fd, 0, (uint64_t)sb.st_size, 0, what);
}

static int opt_u64(PyObject *msg, const char *key, int64_t *out)
{
    PyObject *v = PyDict_GetItemString(msg, key);
    *out = -1;
    if (v == NULL || v == Py_None)
        return 0;
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < 0) {
        PyErr_Format(PyExc_ValueError, "http.response.zerocopysend: %s must be >= 0", key);
        return -1;
    }
    *out = x;
    return 0;
}

/* http.response.zerocopysend: {"file": file object or fd, "offset", "count", "more_body"}. */
static PyObject *send_zerocopysend(ph_req_t *r, PyObject *msg)
{
    const char *what = "http.response.zerocopysend";
    if (!body_allowed(r, what))
        return NULL;
    PyObject *file = PyDict_GetItemString(msg, "file");
    if (file == NULL) {
        PyErr_Format(PyExc_TypeError, "%s needs a 'file'", what);
        return NULL;
    }
    int src = PyObject_AsFileDescriptor(file);
    if (src < 0)
        return NULL;
    int64_t off, count;
    if (opt_u64(msg, "offset", &off) < 0 || opt_u64(msg, "count", &count) < 0)
        return NULL;
    PyObject *more_o = PyDict_GetItemString(msg, "more_body");
    int more = more_o ? PyObject_IsTrue(more_o) : 0;
    if (more < 0)
        return NULL;
    struct stat sb;
    if (fstat(src, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        PyErr_Format(PyExc_ValueError, "%s: 'file' must be a regular file", what);
        return NULL;
    }
    if (off < 0) {
        off = lseek(src, 0, SEEK_CUR); /* from the file's position, as the extension says */
        if (off < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    uint64_t len = sb.st_size > off ? (uint64_t)(sb.st_size - off) : 0;
    if (count >= 0 && (uint64_t)count < len)
        len = (uint64_t)count;
    int fd = fcntl(src, F_DUPFD_CLOEXEC, 0); /* the app may close its file at once */
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return send_file(r, fd, (uint64_t)off, len, more, what);
}

/* http.response.trailers (the ASGI extension): gathered while more_trailers, sent at the last. */
static PyObject *send_trailers(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    if (!r->want_trailers) {
        PyErr_SetString(PyExc_RuntimeError,
                        "http.response.trailers without trailers=True in http.response.start");
        return NULL;
    }
    if (r->done) {
        PyErr_SetString(PyExc_RuntimeError, "http.response.trailers after the response completed");
        return NULL;
    }
    if (!r->body_complete) {
        PyErr_SetString(PyExc_RuntimeError,
                        "http.response.trailers before the last http.response.body");
        return NULL;
    }
    PyObject *hs = PyDict_GetItemWithError(msg, st->k_headers);
    if (hs == NULL && PyErr_Occurred())
        return NULL;
    PyObject *more_o = PyDict_GetItemWithError(msg, st->k_more_trailers);
    if (more_o == NULL && PyErr_Occurred())
        return NULL;
    int more = more_o ? PyObject_IsTrue(more_o) : 0;
    if (more < 0)
        return NULL;
    if (hs && hs != Py_None) {
        if (r->trailers == NULL && (r->trailers = PyList_New(0)) == NULL)
            return NULL;
        Py_ssize_t end = PyList_GET_SIZE(r->trailers);
        if (PyList_SetSlice(r->trailers, end, end, hs) < 0)
            return NULL;
    }
    if (more)
        return Py_NewRef(st->done);
    header_array_t ha;
    if (header_array(&ha, r->trailers) < 0)
        return NULL;
    if (r->stream == NULL || r->disconnected) {
        header_array_free(&ha);
        return raise_disconnected(r);
    }
    int rv = r->stream->ops->trailers(r->stream, ha.arr, ha.n);
    header_array_free(&ha);
    Py_CLEAR(r->trailers);
    if (rv == PH_EINVAL) {
        PyErr_SetString(PyExc_ValueError, "invalid response trailers: a name or value is not "
                                          "allowed, or the body is shorter than its length");
        return NULL;
    }
    if (rv < 0)
        return raise_for(r, rv, "http.response.trailers");
    response_complete(r);
    return Py_NewRef(st->done);
}

/* obj == the interned ASCII string s. An app's "http.response.start" literal is not interned
 * (it is not an identifier), so identity alone misses it; this compares the bytes, without
 * PyUnicode_Compare's generality. */
static int str_eq(PyObject *obj, PyObject *s)
{
    if (obj == s)
        return 1;
    if (!PyUnicode_Check(obj))
        return 0;
    if (!PyUnicode_IS_COMPACT_ASCII(obj)) /* a str subclass, or not ASCII */
        return PyUnicode_Compare(obj, s) == 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    return PyUnicode_GET_LENGTH(obj) == n && memcmp(PyUnicode_DATA(obj), PyUnicode_DATA(s), n) == 0;
}

static PyObject *req_send(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    if (!PyDict_Check(msg)) {
        PyErr_SetString(PyExc_TypeError, "an ASGI message must be a dict");
        return NULL;
    }
    if (r->srv->trace)
        trace(r, "send", msg);
    PyObject *type = PyDict_GetItemWithError(msg, st->k_type);
    if (type == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_KeyError, "an ASGI message needs a 'type'");
        return NULL;
    }
    if (r->is_ws)
        return ws_send(r, msg, type);
    if (str_eq(type, st->v_http_response_body))
        return send_body(r, msg);
    if (str_eq(type, st->v_http_response_start))
        return send_start(r, msg);
    if (str_eq(type, st->v_http_response_trailers))
        return send_trailers(r, msg);
    if (PyUnicode_Check(type) &&
        PyUnicode_CompareWithASCIIString(type, "http.response.pathsend") == 0)
        return send_pathsend(r, msg);
    if (PyUnicode_Check(type) &&
        PyUnicode_CompareWithASCIIString(type, "http.response.zerocopysend") == 0)
        return send_zerocopysend(r, msg);
    PyErr_Format(PyExc_RuntimeError, "unexpected ASGI message type %R for an http scope", type);
    return NULL;
}

static PyMethodDef receive_def = {"receive", (PyCFunction)req_receive, METH_NOARGS, NULL};
static PyMethodDef send_def = {"send", (PyCFunction)req_send, METH_O, NULL};

static PyType_Slot req_slots[] = {
    {Py_tp_dealloc, req_dealloc},
    {Py_tp_traverse, req_traverse},
    {Py_tp_clear, req_clear},
    {0, NULL},
};

static PyType_Spec req_spec = {
    .name = "pronghorn._core.Request",
    .basicsize = sizeof(ph_req_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = req_slots,
};

/* ---- the awaitable receive() and send() return ---- */

static int waiter_traverse(waiter_t *w, visitproc visit, void *arg)
{
    Py_VISIT(w->result);
    Py_VISIT(w->fut_iter);
    Py_VISIT(w->req);
    Py_VISIT(Py_TYPE(w));
    return 0;
}

static int waiter_clear(waiter_t *w)
{
    Py_CLEAR(w->result);
    Py_CLEAR(w->fut_iter);
    Py_CLEAR(w->req);
    return 0;
}

static void waiter_dealloc(waiter_t *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    waiter_clear(w);
    tp->tp_free(w);
    Py_DECREF(tp);
}

/* The future fired: produce the result, or wait again. */
static PySendResult waiter_resume(waiter_t *w, PyObject **result)
{
    ph_req_t *r = w->req;
    if (r == NULL) { /* the shared "done" awaitable */
        *result = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    ph_state_t *st = r->srv->st;
    if (w->kind == WAIT_RECEIVE) {
        PyObject *msg = take_message(r);
        if (msg) {
            *result = msg;
            return PYGEN_RETURN;
        }
        if (PyErr_Occurred())
            return PYGEN_ERROR;
        /* Wait on a future of this call's own (a receiver that is cancelled cancels only its
         * own); every event wakes them all. Futures of receivers that gave up are dropped. */
        if (r->recv_futs == NULL && (r->recv_futs = PyList_New(0)) == NULL)
            return PYGEN_ERROR;
        for (Py_ssize_t i = PyList_GET_SIZE(r->recv_futs) - 1; i >= 0; i--) {
            PyObject *done =
                PyObject_CallMethodNoArgs(PyList_GET_ITEM(r->recv_futs, i), st->s_done);
            if (done == NULL)
                return PYGEN_ERROR;
            int gone = done == Py_True;
            Py_DECREF(done);
            if (gone && PySequence_DelItem(r->recv_futs, i) < 0)
                return PYGEN_ERROR;
        }
        PyObject *fut = PyObject_CallMethodNoArgs(r->srv->aloop, st->s_create_future);
        if (fut == NULL)
            return PYGEN_ERROR;
        w->fut_iter = PyObject_CallMethodNoArgs(fut, st->s_await);
        int rv = w->fut_iter ? PyList_Append(r->recv_futs, fut) : -1;
        Py_DECREF(fut);
        return rv == 0 ? PYGEN_NEXT : PYGEN_ERROR;
    }
    if (r->disconnected || (r->stream == NULL && !r->done)) {
        raise_disconnected(r);
        return PYGEN_ERROR;
    }
    if (r->stream && r->stream->ops->queued(r->stream) > r->srv->server.cfg.write_high_water) {
        PyObject *fut = PyObject_CallMethodNoArgs(r->srv->aloop, st->s_create_future);
        if (fut == NULL)
            return PYGEN_ERROR;
        w->fut_iter = PyObject_CallMethodNoArgs(fut, st->s_await);
        Py_XSETREF(r->send_fut, fut);
        return w->fut_iter ? PYGEN_NEXT : PYGEN_ERROR;
    }
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult waiter_send_step(waiter_t *w, PyObject *arg, PyObject **result)
{
    for (;;) {
        if (w->fut_iter == NULL) {
            if (w->result) {
                *result = w->result;
                w->result = NULL;
                return PYGEN_RETURN;
            }
            if (w->req == NULL) {
                *result = Py_NewRef(Py_None);
                return PYGEN_RETURN;
            }
        }
        if (w->fut_iter) {
            PyObject *v;
            PySendResult rv = PyIter_Send(w->fut_iter, arg, &v);
            if (rv == PYGEN_NEXT) {
                *result = v;
                return rv;
            }
            Py_CLEAR(w->fut_iter);
            if (rv == PYGEN_ERROR)
                return rv;
            Py_DECREF(v);
        }
        PySendResult rv = waiter_resume(w, result);
        if (rv != PYGEN_NEXT)
            return rv;
        arg = Py_None; /* a new future to yield */
    }
}

static PySendResult waiter_am_send(waiter_t *w, PyObject *arg, PyObject **result)
{
    if (w->finished) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    PySendResult rv = waiter_send_step(w, arg, result);
    if (rv != PYGEN_NEXT && w->req)
        w->finished = 1;
    return rv;
}

static PyObject *gen_result(PySendResult rv, PyObject *v)
{
    if (rv == PYGEN_NEXT)
        return v;
    if (rv == PYGEN_RETURN) {
        if (v == Py_None)
            PyErr_SetNone(PyExc_StopIteration);
        else {
            PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, v);
            if (e) {
                PyErr_SetObject(PyExc_StopIteration, e);
                Py_DECREF(e);
            }
        }
        Py_DECREF(v);
    }
    return NULL;
}

static PyObject *waiter_iternext(waiter_t *w)
{
    PyObject *v = NULL;
    PySendResult rv = waiter_am_send(w, Py_None, &v);
    if (rv == PYGEN_RETURN) {
        /* tp_iternext signals the value through StopIteration */
        return gen_result(rv, v);
    }
    return rv == PYGEN_NEXT ? v : NULL;
}

static PyObject *waiter_send(waiter_t *w, PyObject *arg)
{
    PyObject *v = NULL;
    PySendResult rv = waiter_am_send(w, arg, &v);
    return gen_result(rv, v);
}

/* Raises what throw(typ[, val[, tb]]) names, as a generator with nothing to delegate to does. */
static PyObject *raise_thrown(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : NULL;
    if (PyExceptionInstance_Check(typ))
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    else if (PyExceptionClass_Check(typ))
        PyErr_SetObject(typ, val && val != Py_None ? val : NULL);
    else
        PyErr_SetString(PyExc_TypeError, "exceptions must derive from BaseException");
    return NULL;
}

static PyObject *waiter_throw(waiter_t *w, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw() takes 1 to 3 arguments");
        return NULL;
    }
    if (w->fut_iter == NULL)
        return raise_thrown(args, nargs);
    PyObject *it = w->fut_iter;
    w->fut_iter = NULL;
    PyObject *meth = PyObject_GetAttr(it, w->req->srv->st->s_throw);
    PyObject *res = meth ? PyObject_Vectorcall(meth, args, (size_t)nargs, NULL) : NULL;
    Py_XDECREF(meth);
    if (res) {
        w->fut_iter = it; /* the future handled it and yields again */
        return res;
    }
    Py_DECREF(it);
    return NULL;
}

static PyObject *waiter_close(waiter_t *w, PyObject *unused)
{
    (void)unused;
    Py_CLEAR(w->fut_iter);
    Py_CLEAR(w->result);
    Py_RETURN_NONE;
}

static PyObject *self_iter(PyObject *self)
{
    return Py_NewRef(self);
}

static PyMethodDef waiter_methods[] = {
    {"send", (PyCFunction)waiter_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))waiter_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)waiter_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot waiter_slots[] = {
    {Py_tp_dealloc, waiter_dealloc}, {Py_tp_traverse, waiter_traverse}, {Py_tp_clear, waiter_clear},
    {Py_tp_iter, self_iter},         {Py_tp_iternext, waiter_iternext}, {Py_am_await, self_iter},
    {Py_am_send, waiter_am_send},    {Py_tp_methods, waiter_methods},   {0, NULL},
};

static PyType_Spec waiter_spec = {
    .name = "pronghorn._core.Awaitable",
    .basicsize = sizeof(waiter_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = waiter_slots,
};

/* ---- the app's end: what happens when its coroutine returns or raises ---- */

/* The server's own answer when nothing of the app's response has left (a head the app
 * started is replaced): 500 for an app error, 503 at the shutdown deadline. end: how the
 * access line tells it (PH_END_OK for a whole 500, PH_END_CANCELLED, PH_END_REJECTED). */
static void respond_error(ph_req_t *r, int status, int end)
{
    ph_stream_t *s = r->stream;
    const char *text = status == 503 ? "Service Unavailable" : "Internal Server Error";
    static const ph_header_t hs[] = {
        {{"content-type", 12}, {"text/plain; charset=utf-8", 25}},
        {{"connection", 10}, {"close", 5}},
    };
    r->done = 1; /* from here on the app's sends find the response complete */
    size_t len = strlen(text);
    if (s->ops->start(s, status, hs, 2) == 0 && s->ops->body(s, text, len, 0) == 0) {
        r->started = r->body_started = 1;
        r->status = status;
        r->bytes = len;
        log_end(r, end, end == PH_END_REJECTED ? PH_REJECT_SHUTDOWN : 0);
    } else {
        if (r->stream)
            r->stream->ops->abort(r->stream);
        log_end(r, PH_END_CLIENT_GONE, 0);
    }
}

static void respond_500(ph_req_t *r)
{
    respond_error(r, 500, PH_END_OK);
}

/* exc: the exception the app raised (borrowed), or NULL when it returned. */
static void app_done(ph_req_t *r, PyObject *exc)
{
    ph_pyserver_t *srv = r->srv;
    ph_state_t *st = srv->st;
    r->app_running = 0;
    req_unlink(r);
    if (srv->trace)
        trace(r, "end", exc);
    int cancelled = exc && PyObject_TypeCheck(exc, (PyTypeObject *)st->cancelled_error);
    /* The client left before the response was whole: what the app raises then (Starlette's
     * ClientDisconnect, our ClientDisconnected) is no app failure (logs.py decides). */
    int gone = !r->done && (r->disconnected || r->stream == NULL);
    if (exc && !cancelled) {
        if (ph_log_exception(srv->log_exception, "Exception in ASGI application", exc, gone))
            ph_server_count_app_error(&srv->server);
    } else if (cancelled && !srv->cancelling && !r->done && !gone) {
        /* Nobody here cancelled it: a CancelledError escaped the app. */
        log_exception(srv, "CancelledError escaped the ASGI application (answered 500)", NULL);
    }
    int failed_end = cancelled ? PH_END_CANCELLED : exc ? PH_END_APP_ERROR : PH_END_INCOMPLETE;
    if (r->is_ws) {
        ws_app_done(r, exc, cancelled);
    } else if (r->stream && !r->disconnected && !r->done && r->body_complete && !exc) {
        /* The body is whole and the app sent no trailers after all: end with none. */
        if (r->stream->ops->trailers(r->stream, NULL, 0) == 0)
            response_complete(r);
        else if (r->stream)
            r->stream->ops->abort(r->stream);
    } else if (r->stream && !r->disconnected && !r->done) {
        if (!r->body_started) {
            /* Nothing has left yet: the client gets a 500, not a bare reset. */
            if (!exc)
                log_exception(srv,
                              r->started ? "ASGI callable returned without a response body"
                                         : "ASGI callable returned without starting a response",
                              NULL);
            respond_error(r, 500, cancelled ? PH_END_CANCELLED : PH_END_OK);
        } else {
            if (!exc && !cancelled)
                log_exception(srv, "ASGI callable returned without completing the response", NULL);
            r->stream->ops->abort(r->stream);
            log_end(r, failed_end, 0);
        }
    }
    /* Whatever else ended it (the client left, a denial cut short) is logged now; an accepted
     * WebSocket is logged when its tunnel closes. */
    if (!(r->is_ws && r->ws_accepted && r->stream))
        log_end(r, r->done ? PH_END_OK : gone ? PH_END_CLIENT_GONE : failed_end, 0);
    Py_CLEAR(r->task);
    Py_CLEAR(r->recv_futs);
    Py_CLEAR(r->send_fut);
}

static int driver_traverse(driver_t *d, visitproc visit, void *arg)
{
    Py_VISIT(d->coro);
    Py_VISIT(d->req);
    Py_VISIT(d->yielded);
    Py_VISIT(d->exc);
    Py_VISIT(Py_TYPE(d));
    return 0;
}

static int driver_clear(driver_t *d)
{
    Py_CLEAR(d->coro);
    Py_CLEAR(d->req);
    Py_CLEAR(d->yielded);
    Py_CLEAR(d->exc);
    return 0;
}

static void driver_dealloc(driver_t *d)
{
    PyTypeObject *tp = Py_TYPE(d);
    PyObject_GC_UnTrack(d);
    driver_clear(d);
    tp->tp_free(d);
    Py_DECREF(tp);
}

static PySendResult driver_after(driver_t *d, PySendResult rv, PyObject **result)
{
    if (rv == PYGEN_NEXT)
        return rv;
    ph_req_t *r = d->req;
    Py_CLEAR(d->coro);
    if (rv == PYGEN_RETURN) {
        Py_DECREF(*result);
        if (r)
            app_done(r, NULL);
        *result = Py_NewRef(Py_None);
        Py_CLEAR(d->req);
        return PYGEN_RETURN;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    int cancelled =
        r && value && PyObject_TypeCheck(value, (PyTypeObject *)r->srv->st->cancelled_error);
    if (r)
        app_done(r, value);
    Py_CLEAR(d->req);
    if (cancelled) {
        /* The task was cancelled: let it end cancelled. */
        PyErr_Restore(type, value, tb);
        return PYGEN_ERROR;
    }
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

/* The Task's first step after the bridge's eager one: hand over what that step left. */
static PySendResult driver_take_stepped(driver_t *d, PyObject **result)
{
    d->stepped = 0;
    if (d->yielded) {
        *result = d->yielded;
        d->yielded = NULL;
        return PYGEN_NEXT;
    }
    if (d->exc) {
        PyObject *exc = d->exc;
        d->exc = NULL;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return PYGEN_ERROR;
    }
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult driver_am_send(driver_t *d, PyObject *arg, PyObject **result)
{
    if (d->stepped)
        return driver_take_stepped(d, result);
    if (d->coro == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    d->running = 1;
    PySendResult rv = PyIter_Send(d->coro, arg, result);
    d->running = 0;
    return driver_after(d, rv, result);
}

static PyObject *driver_send(driver_t *d, PyObject *arg)
{
    PyObject *v = NULL;
    PySendResult rv = driver_am_send(d, arg, &v);
    return gen_result(rv, v);
}

static PyObject *driver_iternext(driver_t *d)
{
    PyObject *v = NULL;
    PySendResult rv = driver_am_send(d, Py_None, &v);
    if (rv == PYGEN_RETURN)
        return gen_result(rv, v);
    return rv == PYGEN_NEXT ? v : NULL;
}

static PyObject *driver_throw(driver_t *d, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw() takes 1 to 3 arguments");
        return NULL;
    }
    if (d->stepped) {
        /* Thrown in before the Task saw what the eager step left (a cancellation). */
        d->stepped = 0;
        Py_CLEAR(d->exc);
        PyObject *y = d->yielded;
        d->yielded = NULL;
        if (y && y != Py_None) {
            /* The app awaits y, which the Task never saw: cancel it, as the Task would. */
            PyObject *res = PyObject_CallMethod(y, "cancel", NULL);
            Py_XDECREF(res);
            PyErr_Clear();
        }
        Py_XDECREF(y);
    }
    if (d->coro == NULL)
        return raise_thrown(args, nargs);
    PyObject *meth = PyObject_GetAttrString(d->coro, "throw");
    if (meth == NULL)
        return NULL;
    d->running = 1;
    PyObject *res = PyObject_Vectorcall(meth, args, (size_t)nargs, NULL);
    d->running = 0;
    Py_DECREF(meth);
    if (res)
        return res;
    PyObject *v = NULL;
    PySendResult rv;
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        v = value ? PyObject_GetAttrString(value, "value") : Py_NewRef(Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (v == NULL)
            return NULL;
        rv = PYGEN_RETURN;
    } else {
        rv = PYGEN_ERROR;
    }
    rv = driver_after(d, rv, &v);
    return gen_result(rv, v);
}

static PyObject *driver_close(driver_t *d, PyObject *unused)
{
    (void)unused;
    d->stepped = 0;
    Py_CLEAR(d->yielded);
    Py_CLEAR(d->exc);
    if (d->coro == NULL)
        Py_RETURN_NONE;
    PyObject *coro = d->coro;
    d->coro = NULL;
    PyObject *r = PyObject_CallMethod(coro, "close", NULL);
    Py_DECREF(coro);
    return r;
}

static PyObject *driver_getattr_coro(driver_t *d, const char *name, PyObject *dflt)
{
    if (d->coro == NULL)
        return Py_NewRef(dflt);
    PyObject *v = PyObject_GetAttrString(d->coro, name);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return Py_NewRef(dflt);
    }
    return v;
}

static PyObject *driver_cr_running(driver_t *d, void *c)
{
    (void)c;
    if (d->running)
        Py_RETURN_TRUE;
    return driver_getattr_coro(d, "cr_running", Py_False);
}

static PyObject *driver_cr_suspended(driver_t *d, void *c)
{
    (void)c;
    return driver_getattr_coro(d, "cr_suspended", Py_False);
}

static PyObject *driver_cr_frame(driver_t *d, void *c)
{
    (void)c;
    return driver_getattr_coro(d, "cr_frame", Py_None);
}

static PyObject *driver_cr_await(driver_t *d, void *c)
{
    (void)c;
    return driver_getattr_coro(d, "cr_await", Py_None);
}

static PyObject *driver_cr_code(driver_t *d, void *c)
{
    (void)c;
    return driver_getattr_coro(d, "cr_code", Py_None);
}

static PyObject *driver_qualname(driver_t *d, void *c)
{
    (void)c;
    return driver_getattr_coro(d, "__qualname__", Py_None);
}

static PyGetSetDef driver_getset[] = {
    {"cr_running", (getter)driver_cr_running, NULL, NULL, NULL},
    {"cr_suspended", (getter)driver_cr_suspended, NULL, NULL, NULL},
    {"cr_frame", (getter)driver_cr_frame, NULL, NULL, NULL},
    {"cr_await", (getter)driver_cr_await, NULL, NULL, NULL},
    {"cr_code", (getter)driver_cr_code, NULL, NULL, NULL},
    {"__qualname__", (getter)driver_qualname, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef driver_methods[] = {
    {"send", (PyCFunction)driver_send, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))driver_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)driver_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot driver_slots[] = {
    {Py_tp_dealloc, driver_dealloc},   {Py_tp_traverse, driver_traverse},
    {Py_tp_clear, driver_clear},       {Py_tp_iter, self_iter},
    {Py_tp_iternext, driver_iternext}, {Py_am_await, self_iter},
    {Py_am_send, driver_am_send},      {Py_tp_methods, driver_methods},
    {Py_tp_getset, driver_getset},     {0, NULL},
};

static PyType_Spec driver_spec = {
    .name = "pronghorn._core.AppCoroutine",
    .basicsize = sizeof(driver_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = driver_slots,
};

/* ---- WebSockets ---- */

/* Our close frame waits this long for the peer's before the connection closes anyway. */
#define WS_CLOSE_TIMEOUT_MS 5000

/* The ping / close-handshake timer. It outlives the request by a loop turn (uv_close), so it
 * is not part of it: req is NULL once the request let go. */
typedef struct ws_timer_s {
    uv_timer_t t;
    ph_req_t *req;
} ws_timer_t;

static void ws_timer_fire(uv_timer_t *t);

static void ws_arm(ph_req_t *r, uint64_t ms)
{
    if (r->ws_timer && ms)
        uv_timer_start(&r->ws_timer->t, ws_timer_fire, ms, 0);
}

static void ws_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void ws_timer_drop(ph_req_t *r)
{
    ws_timer_t *wt = r->ws_timer;
    if (wt == NULL)
        return;
    r->ws_timer = NULL;
    wt->req = NULL;
    uv_close((uv_handle_t *)&wt->t, ws_timer_closed);
}

/* The session is over: websocket.disconnect follows the messages still queued. */
static void ws_finish(ph_req_t *r, int code)
{
    if (r->ws_over)
        return;
    r->ws_over = 1;
    if (r->ws_code == 0)
        r->ws_code = code;
    ws_timer_drop(r);
    wake_receivers(r);
    wake(r, &r->send_fut);
}

/* Closes the tunnel (what is queued still goes, then the connection closes); the stream is
 * released on the way, so the caller holds a reference to r. */
static void ws_end(ph_req_t *r, int code)
{
    ws_finish(r, code);
    if (r->stream && !r->ws_ended) {
        r->ws_ended = 1;
        r->stream->ops->body(r->stream, NULL, 0, 0);
    }
}

/* Starts the closing handshake from our side (the app's close, its end, a shutdown, a ping
 * unanswered); a close frame that cannot go out ends the tunnel at once. */
static void ws_start_close(ph_req_t *r, int code, const char *reason, size_t len)
{
    if (r->ws_close_sent || r->ws_over)
        return;
    r->ws_close_sent = 1;
    Py_INCREF(r); /* ending the tunnel releases the stream's reference */
    if (ph_ws_close(r->ws, code, reason, len) == 0)
        ws_arm(r, WS_CLOSE_TIMEOUT_MS);
    else
        ws_end(r, PH_WS_ABNORMAL);
    ph_loop_touch(&r->srv->loop);
    Py_DECREF(r);
}

static void ws_timer_fire(uv_timer_t *t)
{
    ws_timer_t *wt = (ws_timer_t *)t;
    ph_req_t *r = wt->req;
    if (r == NULL || r->ws_over)
        return;
    const ph_config_t *cfg = &r->srv->server.cfg;
    Py_INCREF(r);
    if (r->ws_close_sent) {
        ws_end(r, PH_WS_ABNORMAL); /* the peer never answered our close */
    } else if (r->ws_ping_at && cfg->ws_ping_timeout_ms) {
        /* No pong in time: the peer (or the path to it) is gone. */
        ws_start_close(r, PH_WS_INTERNAL_ERROR, "keepalive ping timeout", 22);
        ws_end(r, PH_WS_INTERNAL_ERROR);
    } else {
        r->ws_ping_at = uv_now(t->loop) | 1;
        if (ph_ws_ping(r->ws, "", 0) < 0)
            ws_end(r, PH_WS_ABNORMAL);
        else
            ws_arm(r, cfg->ws_ping_timeout_ms ? cfg->ws_ping_timeout_ms : cfg->ws_ping_interval_ms);
        ph_loop_touch(&r->srv->loop);
    }
    Py_DECREF(r);
}

static int ws_write(ph_ws_t *ws, const char *data, size_t len)
{
    ph_req_t *r = ph_ws_data(ws);
    if (r->stream == NULL || r->ws_ended)
        return PH_ECLOSED;
    return r->stream->ops->body(r->stream, data, len, 1);
}

static void ws_on_message(ph_ws_t *ws, int opcode, const char *data, size_t len)
{
    ph_req_t *r = ph_ws_data(ws);
    ph_state_t *st = r->srv->st;
    if (r->ws_close_sent)
        return; /* the app closed: what still comes is not for it */
    PyObject *msg = PyDict_New();
    PyObject *payload = opcode == PH_WS_TEXT ? PyUnicode_DecodeUTF8(data, (Py_ssize_t)len, NULL)
                                             : PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (msg == NULL || payload == NULL || PyDict_SetItem(msg, st->k_type, st->v_ws_receive) < 0 ||
        PyDict_SetItem(msg, opcode == PH_WS_TEXT ? st->k_text : st->k_bytes, payload) < 0 ||
        (r->ws_queue == NULL && (r->ws_queue = PyList_New(0)) == NULL) ||
        PyList_Append(r->ws_queue, msg) < 0) {
        PyErr_WriteUnraisable(NULL);
    } else if ((size_t)PyList_GET_SIZE(r->ws_queue) >= r->srv->server.cfg.ws_max_queue &&
               !r->paused && r->stream) {
        r->paused = 1; /* the app is behind: stop reading until it catches up */
        r->stream->ops->pause_body(r->stream);
    }
    Py_XDECREF(msg);
    Py_XDECREF(payload);
    wake_receivers(r);
}

static void ws_on_close(ph_ws_t *ws, int code, const char *reason, size_t len)
{
    ph_req_t *r = ph_ws_data(ws);
    r->ws_code = code;
    Py_XSETREF(r->ws_reason, PyUnicode_DecodeUTF8(reason, (Py_ssize_t)len, NULL));
    if (r->ws_reason == NULL)
        PyErr_Clear();
}

static void ws_on_pong(ph_ws_t *ws, const char *data, size_t len)
{
    (void)data;
    (void)len;
    ph_req_t *r = ph_ws_data(ws);
    if (r->ws_ping_at && !r->ws_close_sent) {
        r->ws_ping_at = 0;
        ws_arm(r, r->srv->server.cfg.ws_ping_interval_ms);
    }
}

static const ph_ws_callbacks_t ws_callbacks = {
    .on_message = ws_on_message,
    .on_close = ws_on_close,
    .on_pong = ws_on_pong,
    .write = ws_write,
};

/* Pongs (and close replies) are written by the session as input arrives, without asking the
 * app: a peer that pings and never reads would have them queue without bound. Above the
 * high-water mark reading stops until the queue drains (on_drain). */
static void ws_throttle(ph_req_t *r)
{
    ph_stream_t *s = r->stream;
    if (s && !r->ws_write_paused && !r->ws_over &&
        s->ops->queued(s) > r->srv->server.cfg.write_high_water) {
        r->ws_write_paused = 1;
        s->ops->pause_body(s);
    }
}

/* Bytes from the tunnel. */
static void ws_input(ph_req_t *r, const char *data, size_t len)
{
    if (r->ws == NULL || r->ws_over)
        return;
    Py_INCREF(r); /* the stream may let go of it during the feed */
    int rv = ph_ws_feed(r->ws, data, len);
    if (rv == PH_WS_DONE)
        ws_end(r, PH_WS_NO_STATUS); /* both close frames are out: we close the TCP connection */
    else if (rv == PH_WS_FAILED)
        ws_end(r, ph_ws_close_code(r->ws));
    else if (rv < 0)
        ws_end(r, PH_WS_ABNORMAL);
    else
        ws_throttle(r);
    ph_loop_touch(&r->srv->loop);
    Py_DECREF(r);
}

static PyObject *ws_message(ph_state_t *st, PyObject *type)
{
    PyObject *msg = PyDict_New();
    if (msg && PyDict_SetItem(msg, st->k_type, type) < 0)
        Py_CLEAR(msg);
    return msg;
}

/* The next message for receive() on a WebSocket, or NULL (no exception: wait). */
static PyObject *ws_take_message(ph_req_t *r)
{
    ph_state_t *st = r->srv->st;
    if (!r->ws_connect_taken) {
        r->ws_connect_taken = 1;
        return ws_message(st, st->v_ws_connect);
    }
    if (r->ws_queue && PyList_GET_SIZE(r->ws_queue) > 0) {
        PyObject *msg = Py_NewRef(PyList_GET_ITEM(r->ws_queue, 0));
        if (PySequence_DelItem(r->ws_queue, 0) < 0) {
            Py_DECREF(msg);
            return NULL;
        }
        if (r->paused && r->stream &&
            (size_t)PyList_GET_SIZE(r->ws_queue) < r->srv->server.cfg.ws_max_queue) {
            r->paused = 0;
            if (!r->ws_write_paused)
                r->stream->ops->want_body(r->stream);
            ph_loop_touch(&r->srv->loop);
        }
        return msg;
    }
    if (r->ws_over || r->disconnected || r->done || r->stream == NULL) {
        PyObject *msg = ws_message(st, st->v_ws_disconnect);
        PyObject *code = msg ? PyLong_FromLong(r->ws_code ? r->ws_code : PH_WS_ABNORMAL) : NULL;
        PyObject *reason =
            code ? (r->ws_reason ? Py_NewRef(r->ws_reason) : PyUnicode_New(0, 0)) : NULL;
        if (reason == NULL || PyDict_SetItem(msg, st->k_code, code) < 0 ||
            PyDict_SetItem(msg, st->k_reason, reason) < 0)
            Py_CLEAR(msg);
        Py_XDECREF(code);
        Py_XDECREF(reason);
        return msg;
    }
    return NULL;
}

/* The request's Sec-WebSocket-Extensions values, joined as one list. */
static size_t ws_request_extensions(const ph_request_t *rq, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < rq->nheaders; i++) {
        const ph_header_t *h = &rq->headers[i];
        if (!ph_eq_lower(h->name.base, h->name.len, "sec-websocket-extensions", 24))
            continue;
        if (n + 2 + h->value.len > cap)
            break;
        if (n) {
            memcpy(buf + n, ", ", 2);
            n += 2;
        }
        memcpy(buf + n, h->value.base, h->value.len);
        n += h->value.len;
    }
    return n;
}

static PyObject *ws_accept(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    const ph_config_t *cfg = &r->srv->server.cfg;
    if (r->ws_accepted || r->started || r->done) {
        PyErr_SetString(PyExc_RuntimeError, "websocket.accept after the handshake was answered");
        return NULL;
    }
    if (r->stream == NULL || r->disconnected)
        return raise_disconnected(r);
    PyObject *sub = PyDict_GetItemWithError(msg, st->k_subprotocol);
    if (sub == NULL && PyErr_Occurred())
        return NULL;
    const char *subp = NULL;
    Py_ssize_t sublen = 0;
    if (sub && sub != Py_None) {
        if (!PyUnicode_Check(sub)) {
            PyErr_SetString(PyExc_TypeError, "websocket.accept subprotocol must be a str or None");
            return NULL;
        }
        subp = PyUnicode_AsUTF8AndSize(sub, &sublen);
        if (subp == NULL)
            return NULL;
    }
    PyObject *hs = PyDict_GetItemWithError(msg, st->k_headers);
    if (hs == NULL && PyErr_Occurred())
        return NULL;
    header_array_t ha;
    if (header_array(&ha, hs) < 0)
        return NULL;
    ph_ws_config_t wcfg;
    memset(&wcfg, 0, sizeof(wcfg));
    wcfg.max_size = cfg->ws_max_size;
    char offers[1024], agreed[256];
    size_t agreed_len = 0;
    if (cfg->ws_deflate) {
        size_t n = ws_request_extensions(&r->stream->req, offers, sizeof(offers));
        agreed_len = ph_ws_negotiate(offers, n, &wcfg, agreed, sizeof(agreed));
    }
    /* The app's headers, then the subprotocol and the extensions agreed on. */
    ph_header_t stackhs[MAX_STACK_HEADERS + 2], *all = stackhs;
    if (ha.n > MAX_STACK_HEADERS &&
        (all = PyMem_Malloc(sizeof(ph_header_t) * (ha.n + 2))) == NULL) {
        header_array_free(&ha);
        return PyErr_NoMemory();
    }
    size_t n = 0;
    for (size_t i = 0; i < ha.n; i++) {
        if (ph_eq_lower(ha.arr[i].name.base, ha.arr[i].name.len, "sec-websocket-extensions", 24))
            continue; /* what permessage-deflate says is the session's, not the app's */
        all[n++] = ha.arr[i];
    }
    if (subp)
        all[n++] = (ph_header_t){{"sec-websocket-protocol", 22}, {subp, (size_t)sublen}};
    if (agreed_len)
        all[n++] = (ph_header_t){{"sec-websocket-extensions", 24}, {agreed, agreed_len}};
    r->ws = ph_ws_new(&wcfg, &ws_callbacks, r);
    int rv = r->ws ? r->stream->ops->start(r->stream, 101, all, n) : PH_ENOMEM;
    if (rv == PH_EINVAL)
        PyErr_SetString(PyExc_ValueError,
                        "invalid websocket.accept: a header name/value or the subprotocol");
    else if (rv < 0)
        raise_for(r, rv, "websocket.accept");
    if (rv == 0) {
        rv = r->stream->ops->body(r->stream, "", 0, 1); /* the 101 goes now */
        if (rv < 0)
            raise_for(r, rv, "websocket.accept");
    }
    if (all != stackhs)
        PyMem_Free(all);
    header_array_free(&ha);
    if (rv < 0) {
        if (r->ws) {
            ph_ws_free(r->ws);
            r->ws = NULL;
        }
        return NULL;
    }
    r->ws_accepted = r->started = r->body_started = 1;
    r->status = 101;
    /* The timer pings (when asked to) and bounds our close's wait for the peer's. */
    ws_timer_t *wt = malloc(sizeof(*wt));
    if (wt && uv_timer_init(&r->srv->loop.uv, &wt->t) == 0) {
        wt->t.data = wt;
        wt->req = r;
        r->ws_timer = wt;
        ws_arm(r, cfg->ws_ping_interval_ms);
    } else {
        free(wt); /* the connection works without it, but waits on a silent peer's close */
    }
    /* Accepted while the server shuts down (the handshake came before the drain did): it
     * hears at once that it is going away, as the sockets open at the time did. */
    if (r->srv->server.draining)
        ws_start_close(r, PH_WS_GOING_AWAY, "", 0);
    ph_loop_touch(&r->srv->loop);
    return Py_NewRef(st->done);
}

static PyObject *ws_send_message(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    if (!r->ws_accepted) {
        PyErr_SetString(PyExc_RuntimeError, "websocket.send before websocket.accept");
        return NULL;
    }
    if (r->ws_close_sent || r->ws_over || r->stream == NULL)
        return raise_disconnected(r);
    PyObject *b = PyDict_GetItemWithError(msg, st->k_bytes);
    if (b == NULL && PyErr_Occurred())
        return NULL;
    PyObject *t = (b == NULL || b == Py_None) ? PyDict_GetItemWithError(msg, st->k_text) : NULL;
    if (t == NULL && PyErr_Occurred())
        return NULL;
    int rv;
    size_t len;
    if (b && b != Py_None) {
        Py_buffer view;
        if (PyObject_GetBuffer(b, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        len = (size_t)view.len;
        rv = ph_ws_send(r->ws, PH_WS_BINARY, view.buf, len);
        PyBuffer_Release(&view);
    } else if (t && t != Py_None) {
        if (!PyUnicode_Check(t)) {
            PyErr_SetString(PyExc_TypeError, "websocket.send text must be a str");
            return NULL;
        }
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(t, &n);
        if (u == NULL)
            return NULL;
        len = (size_t)n;
        rv = ph_ws_send(r->ws, PH_WS_TEXT, u, len);
    } else {
        PyErr_SetString(PyExc_ValueError, "websocket.send needs 'bytes' or 'text'");
        return NULL;
    }
    if (rv < 0)
        return rv == PH_ENOMEM ? PyErr_NoMemory() : raise_disconnected(r);
    r->bytes += len;
    if (r->stream && r->stream->ops->queued(r->stream) > r->srv->server.cfg.write_high_water)
        return new_waiter(r, WAIT_SEND, NULL, &r->send_fut);
    ph_loop_touch(&r->srv->loop);
    return Py_NewRef(st->done);
}

/* RFC 6455 §7.4: what an endpoint may send. */
static int ws_code_sendable(long code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* The handshake refused with an empty 403 (a close before accept, or an app that returned
 * without accepting). 0, or the stream op's error. */
static int ws_refuse(ph_req_t *r)
{
    static const ph_header_t hs[] = {{{"content-length", 14}, {"0", 1}}};
    int rv = r->stream->ops->start(r->stream, 403, hs, 1);
    if (rv == 0)
        rv = r->stream->ops->body(r->stream, "", 0, 0);
    if (rv == 0) {
        r->started = r->body_started = 1;
        r->status = 403;
        response_complete(r);
    }
    return rv;
}

static PyObject *ws_close_message(ph_req_t *r, PyObject *msg)
{
    ph_state_t *st = r->srv->st;
    PyObject *code_o = PyDict_GetItemWithError(msg, st->k_code);
    if (code_o == NULL && PyErr_Occurred())
        return NULL;
    long code = 1000;
    if (code_o && code_o != Py_None) {
        code = PyLong_AsLong(code_o);
        if (code == -1 && PyErr_Occurred())
            return NULL;
        if (!ws_code_sendable(code)) {
            PyErr_Format(PyExc_ValueError, "websocket.close code %ld cannot be sent", code);
            return NULL;
        }
    }
    PyObject *reason_o = PyDict_GetItemWithError(msg, st->k_reason);
    if (reason_o == NULL && PyErr_Occurred())
        return NULL;
    const char *reason = "";
    Py_ssize_t rlen = 0;
    if (reason_o && reason_o != Py_None) {
        if (!PyUnicode_Check(reason_o)) {
            PyErr_SetString(PyExc_TypeError, "websocket.close reason must be a str");
            return NULL;
        }
        if ((reason = PyUnicode_AsUTF8AndSize(reason_o, &rlen)) == NULL)
            return NULL;
    }
    if (!r->ws_accepted) {
        if (r->started || r->done) {
            PyErr_SetString(PyExc_RuntimeError, "websocket.close after the handshake was answered");
            return NULL;
        }
        /* Closed before it was accepted: the handshake is refused with 403 (ASGI spec). */
        if (r->stream == NULL || r->disconnected)
            return raise_disconnected(r);
        int rv = ws_refuse(r);
        return rv < 0 ? raise_for(r, rv, "websocket.close") : Py_NewRef(st->done);
    }
    if (r->ws_close_sent) {
        PyErr_SetString(PyExc_RuntimeError, "websocket.close sent twice");
        return NULL;
    }
    if (r->ws_over || r->stream == NULL)
        return raise_disconnected(r);
    ws_start_close(r, (int)code, reason, (size_t)rlen);
    return Py_NewRef(st->done);
}

static PyObject *ws_send(ph_req_t *r, PyObject *msg, PyObject *type)
{
    ph_state_t *st = r->srv->st;
    if (str_eq(type, st->v_ws_send))
        return ws_send_message(r, msg);
    if (str_eq(type, st->v_ws_accept))
        return ws_accept(r, msg);
    if (str_eq(type, st->v_ws_close))
        return ws_close_message(r, msg);
    /* The websocket.http.response extension: the handshake answered with an HTTP response. */
    if (str_eq(type, st->v_ws_response_start)) {
        if (r->ws_accepted) {
            PyErr_SetString(PyExc_RuntimeError, "websocket.http.response.start after accept");
            return NULL;
        }
        return send_start(r, msg);
    }
    if (str_eq(type, st->v_ws_response_body)) {
        if (r->ws_accepted) {
            PyErr_SetString(PyExc_RuntimeError, "websocket.http.response.body after accept");
            return NULL;
        }
        return send_body(r, msg);
    }
    PyErr_Format(PyExc_RuntimeError, "unexpected ASGI message type %R for a websocket scope", type);
    return NULL;
}

/* The app returned (exc NULL) or raised. Not accepted: the handshake is refused (403, or 500
 * for an error), unless its HTTP response is under way; accepted and open: we close (1000, or
 * 1011 for an error). */
static void ws_app_done(ph_req_t *r, PyObject *exc, int cancelled)
{
    if (r->ws_accepted) {
        if (r->stream)
            ws_start_close(r, exc && !cancelled ? PH_WS_INTERNAL_ERROR : PH_WS_NORMAL, "", 0);
        return;
    }
    if (r->stream == NULL || r->disconnected || r->done)
        return;
    if (r->body_started) {
        r->stream->ops->abort(r->stream); /* a denial response cut short */
        return;
    }
    if (exc) {
        respond_500(r);
        return;
    }
    if (ws_refuse(r) < 0 && r->stream)
        r->stream->ops->abort(r->stream);
}

/* The server is shutting down: an open WebSocket is closed with 1001 (going away). */
static void on_goaway(ph_stream_t *s)
{
    ph_req_t *r = s->user;
    if (r->is_ws && r->ws_accepted)
        ws_start_close(r, PH_WS_GOING_AWAY, "", 0);
}

/* ---- stream events ---- */

static void on_body(ph_stream_t *s, const char *data, size_t len)
{
    ph_req_t *r = s->user;
    if (r->is_ws) {
        ws_input(r, data, len);
        return;
    }
    r->bytes_in += len;
    if (r->body_final_sent || len == 0)
        return;
    PyObject *b = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (b == NULL) {
        PyErr_WriteUnraisable(NULL);
        return;
    }
    if (r->body == NULL) {
        r->body = PyList_New(0);
        if (r->body == NULL) {
            Py_DECREF(b);
            PyErr_WriteUnraisable(NULL);
            return;
        }
    }
    PyList_Append(r->body, b);
    Py_DECREF(b);
    r->body_buffered += len;
    if (r->body_buffered > BODY_HIGH_WATER && !r->paused) {
        r->paused = 1;
        s->ops->pause_body(s);
    }
    wake_receivers(r);
}

static void on_trailers(ph_stream_t *s, const ph_header_t *hs, size_t n)
{
    ph_req_t *r = s->user;
    if (r->req_trailers == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        PyObject *pair = Py_BuildValue("(y#y#)", hs[i].name.base, (Py_ssize_t)hs[i].name.len,
                                       hs[i].value.base, (Py_ssize_t)hs[i].value.len);
        if (pair == NULL || PyList_Append(r->req_trailers, pair) < 0) {
            Py_XDECREF(pair);
            PyErr_WriteUnraisable(NULL);
            return;
        }
        Py_DECREF(pair);
    }
}

static void on_body_end(ph_stream_t *s)
{
    ph_req_t *r = s->user;
    r->body_end = 1;
    if (r->is_ws && r->ws_accepted && !r->ws_over) {
        /* An HTTP/2 WebSocket's peer ended its side of the stream: what a TCP FIN is to
         * one over HTTP/1.1. Without a close frame first, the session was cut short. */
        Py_INCREF(r);
        ws_end(r, PH_WS_ABNORMAL);
        Py_DECREF(r);
        return;
    }
    wake_receivers(r);
}

static void on_drain(ph_stream_t *s)
{
    ph_req_t *r = s->user;
    if (r->ws_write_paused) {
        r->ws_write_paused = 0; /* the peer reads again: so do we (unless the app is behind) */
        if (!r->paused)
            s->ops->want_body(s);
    }
    wake(r, &r->send_fut);
}

static void on_disconnect(ph_stream_t *s)
{
    ph_req_t *r = s->user;
    if (s->answered)
        r->answered = s->answered;
    if (r->is_ws && r->ws_accepted)
        ws_finish(r, PH_WS_ABNORMAL); /* gone without (finishing) the closing handshake */
    if (!r->done)
        r->disconnected = 1;
    wake_receivers(r);
    wake(r, &r->send_fut);
}

static void on_peer_closed(ph_stream_t *s)
{
    ph_req_t *r = s->user;
    r->peer_closed = 1;
    wake_receivers(r); /* a receive() waiting past the body hears the client is done */
}

static void on_release(ph_stream_t *s)
{
    ph_req_t *r = s->user;
    if (r->held) {
        ph_pyserver_t *srv = r->srv;
        if (r->hprev)
            r->hprev->hnext = r->hnext;
        else
            srv->held = r->hnext;
        if (r->hnext)
            r->hnext->hprev = r->hprev;
        r->hprev = r->hnext = NULL;
        r->held = 0;
    }
    r->stream = NULL;
    if (r->is_ws && r->ws_accepted) {
        ws_finish(r, PH_WS_ABNORMAL);
        ws_timer_drop(r);
        if (!r->done) {
            r->done = 1;
            log_end(r, PH_END_OK, 0); /* 101, the bytes sent and how long the session lasted */
        }
    }
    if (!r->done)
        r->disconnected = 1;
    wake_receivers(r);
    wake(r, &r->send_fut);
    Py_DECREF(r);
}

static const ph_stream_handler_t asgi_handler = {
    .on_body = on_body,
    .on_trailers = on_trailers,
    .on_body_end = on_body_end,
    .on_drain = on_drain,
    .on_disconnect = on_disconnect,
    .on_peer_closed = on_peer_closed,
    .on_goaway = on_goaway,
    .on_release = on_release,
};

/* ---- scope ---- */

/* With --proxy-headers: the trusted proxy's X-Forwarded-For/-Proto replace client and scheme.
 * 0, or -1 with an exception set (the request then fails: a scope built on a half-applied
 * proxy decision could name the wrong client or scheme). */
static int apply_proxy(ph_pyserver_t *srv, const ph_request_t *rq, PyObject **client,
                       PyObject **scheme)
{
    PyObject *xff, *xfp;
    if (ph_forwarded(rq, &xff, &xfp) < 0)
        return -1;
    if (xff == NULL && xfp == NULL)
        return 0;
    PyObject *res = PyObject_CallFunctionObjArgs(srv->proxy, *client, xff ? xff : Py_None,
                                                 xfp ? xfp : Py_None, NULL);
    Py_XDECREF(xff);
    Py_XDECREF(xfp);
    if (res == NULL)
        return -1;
    if (PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2) {
        PyObject *c = PyTuple_GET_ITEM(res, 0), *s = PyTuple_GET_ITEM(res, 1);
        if (c != Py_None)
            Py_SETREF(*client, Py_NewRef(c));
        if (s != Py_None)
            Py_SETREF(*scheme, Py_NewRef(s));
    }
    Py_DECREF(res);
    return 0;
}

/* path: root_path + the percent-decoded path as UTF-8; raw_path: root_path + the bytes as sent. */
static int set_paths(ph_pyserver_t *srv, PyObject *scope, const ph_request_t *rq)
{
    ph_state_t *st = srv->st;
    char stackbuf[512];
    char *dec = rq->path.len <= sizeof(stackbuf) ? stackbuf : PyMem_Malloc(rq->path.len);
    if (dec == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t dl = ph_percent_decode(rq->path.base, rq->path.len, dec);
    PyObject *path = PyUnicode_DecodeUTF8(dec, (Py_ssize_t)dl, "replace");
    if (dec != stackbuf)
        PyMem_Free(dec);
    PyObject *raw = NULL;
    Py_ssize_t root_len = PyBytes_GET_SIZE(srv->root_path_bytes);
    if (path && root_len > 0)
        Py_SETREF(path, PyUnicode_Concat(srv->root_path, path));
    if (path)
        raw = PyBytes_FromStringAndSize(NULL, root_len + (Py_ssize_t)rq->path.len);
    if (raw) {
        memcpy(PyBytes_AS_STRING(raw), PyBytes_AS_STRING(srv->root_path_bytes), (size_t)root_len);
        memcpy(PyBytes_AS_STRING(raw) + root_len, rq->path.base, rq->path.len);
    }
    int rv = raw ? 0 : -1;
    if (rv == 0)
        rv = PyDict_SetItem(scope, st->k_path, path);
    if (rv == 0)
        rv = PyDict_SetItem(scope, st->k_raw_path, raw);
    Py_XDECREF(path);
    Py_XDECREF(raw);
    return rv;
}

static PyObject *header_name(ph_state_t *st, ph_slice_t name)
{
    if (name.len > 0) {
        unsigned slot = ph_hname_slot(name.base, name.len);
        for (int probe = 0; probe < PH_HNAME_PROBES; probe++, slot = (slot + 1) % PH_HNAME_SLOTS) {
            PyObject *b = st->hnames[slot];
            if (b == NULL)
                break;
            if ((size_t)PyBytes_GET_SIZE(b) == name.len &&
                memcmp(PyBytes_AS_STRING(b), name.base, name.len) == 0)
                return Py_NewRef(b);
        }
    }
    return PyBytes_FromStringAndSize(name.base, (Py_ssize_t)name.len);
}

static PyObject *header_list(ph_state_t *st, const ph_request_t *rq)
{
    PyObject *headers = PyList_New((Py_ssize_t)rq->nheaders);
    if (headers == NULL)
        return NULL;
    for (size_t i = 0; i < rq->nheaders; i++) {
        const ph_header_t *h = &rq->headers[i];
        PyObject *n = header_name(st, h->name);
        PyObject *v = n ? PyBytes_FromStringAndSize(h->value.base, (Py_ssize_t)h->value.len) : NULL;
        PyObject *pair = v ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_XDECREF(n);
            Py_XDECREF(v);
            Py_DECREF(headers);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, n);
        PyTuple_SET_ITEM(pair, 1, v);
        PyList_SET_ITEM(headers, (Py_ssize_t)i, pair);
    }
    return headers;
}

/* Sets d[k] = v and drops the reference to v; v NULL (a failed constructor) fails. */
static int set_new(PyObject *d, PyObject *k, PyObject *v)
{
    if (v == NULL)
        return -1;
    int rv = PyDict_SetItem(d, k, v);
    Py_DECREF(v);
    return rv;
}

/* What every scope holds whatever the request, in the order a scope lists its keys (None
 * where the request fills in a value). A request's scope is a copy of it, which CPython makes
 * with one copy of the table, and its own values replace the Nones without growing it: cheaper
 * than inserting the keys one by one. 0, or -1 with an exception set. */
static int make_templates(ph_pyserver_t *srv)
{
    ph_state_t *st = srv->st;
    PyObject *asgi = PyDict_New();
    PyObject *scope = asgi ? PyDict_New() : NULL;
    int rv = scope ? 0 : -1;
    PyObject *const keys[] = {
        st->k_type,   st->k_asgi,     st->k_http_version, st->k_method,    st->k_scheme,
        st->k_path,   st->k_raw_path, st->k_query_string, st->k_root_path, st->k_headers,
        st->k_client, st->k_server,   st->k_extensions};
    for (size_t i = 0; rv == 0 && i < sizeof(keys) / sizeof(keys[0]); i++)
        rv = PyDict_SetItem(scope, keys[i], Py_None);
    if (rv == 0)
        rv = PyDict_SetItem(scope, st->k_type, st->v_http);
    if (rv == 0)
        rv = PyDict_SetItem(scope, st->k_root_path, srv->root_path);
    if (rv == 0)
        rv = PyDict_SetItem(asgi, st->k_version, st->v_3_0);
    if (rv == 0)
        rv = PyDict_SetItem(asgi, st->k_spec_version, st->v_2_4);
    /* Extensions the server supports, each with its (empty) options dict. */
    PyObject *ext = rv == 0 ? PyDict_New() : NULL;
    PyObject *opts = ext ? PyDict_New() : NULL;
    rv = opts ? PyDict_SetItem(ext, st->k_ext_response_trailers, opts) : -1;
    Py_XDECREF(opts);
    /* Files go out with sendfile: Starlette's FileResponse uses pathsend when offered. */
    static const char *const file_exts[] = {"http.response.pathsend", "http.response.zerocopysend"};
    for (int i = 0; rv == 0 && i < 2; i++) {
        opts = PyDict_New();
        rv = opts ? PyDict_SetItemString(ext, file_exts[i], opts) : -1;
        Py_XDECREF(opts);
    }
    if (rv < 0)
        Py_CLEAR(ext);
    if (rv < 0) {
        Py_XDECREF(asgi);
        Py_XDECREF(scope);
        return -1;
    }
    srv->scope_template = scope;
    srv->asgi_template = asgi;
    srv->ext_template = ext;
    return 0;
}

/* What a websocket scope has instead of an http one's: its type, ws/wss, no method, the
 * subprotocols the client offers (Sec-WebSocket-Protocol, in order). */
static int ws_scope(ph_state_t *st, PyObject *scope, const ph_request_t *rq, PyObject **scheme)
{
    PyObject *ws_scheme =
        *scheme == st->v_https || PyUnicode_CompareWithASCIIString(*scheme, "https") == 0
            ? st->v_wss
            : st->v_ws;
    Py_SETREF(*scheme, Py_NewRef(ws_scheme));
    if (PyDict_SetItem(scope, st->k_type, st->v_websocket) < 0 ||
        PyDict_SetItem(scope, st->k_scheme, ws_scheme) < 0 ||
        PyDict_DelItem(scope, st->k_method) < 0)
        return -1;
    PyObject *subs = PyList_New(0);
    if (subs == NULL)
        return -1;
    for (size_t i = 0; i < rq->nheaders; i++) {
        const ph_header_t *h = &rq->headers[i];
        if (!ph_eq_lower(h->name.base, h->name.len, "sec-websocket-protocol", 22))
            continue;
        const char *p = h->value.base, *end = p + h->value.len;
        ph_slice_t item;
        while (ph_list_next(&p, end, &item)) {
            PyObject *one = PyUnicode_DecodeLatin1(item.base, (Py_ssize_t)item.len, NULL);
            if (one == NULL || PyList_Append(subs, one) < 0) {
                Py_XDECREF(one);
                Py_DECREF(subs);
                return -1;
            }
            Py_DECREF(one);
        }
    }
    int rv = PyDict_SetItem(scope, st->k_subprotocols, subs);
    Py_DECREF(subs);
    return rv;
}

/* The request's scope, or NULL with an exception set (nothing leaks either way). */
static PyObject *build_scope(ph_pyserver_t *srv, ph_stream_t *s, ph_req_t *r)
{
    ph_state_t *st = srv->st;
    const ph_request_t *rq = &s->req;
    PyObject *method = ph_method_str(st, rq->method);
    PyObject *version = rq->http_major == 2 ? st->v_2 : rq->http_minor == 0 ? st->v_1_0 : st->v_1_1;
    PyObject *client = method ? client_tuple(srv, s->peer) : NULL;
    PyObject *scheme = Py_NewRef(s->scheme[4] == 's' ? st->v_https : st->v_http);
    int ready = client && (srv->scope_template || make_templates(srv) == 0);
    PyObject *scope = ready ? PyDict_Copy(srv->scope_template) : NULL;
    PyObject *asgi = scope ? PyDict_Copy(srv->asgi_template) : NULL;
    int rv = asgi ? 0 : -1;
    if (rv == 0 && srv->proxy && client != Py_None)
        rv = apply_proxy(srv, rq, &client, &scheme);
#define SET(d, k, v)                                                                               \
    if (rv == 0)                                                                                   \
    rv = PyDict_SetItem((d), (k), (v))
#define SET_NEW(d, k, v)                                                                           \
    if (rv == 0)                                                                                   \
    rv = set_new((d), (k), (v))
    SET(scope, st->k_asgi, asgi);
    SET(scope, st->k_http_version, version);
    SET(scope, st->k_method, method);
    SET(scope, st->k_scheme, scheme);
    if (rv == 0)
        rv = set_paths(srv, scope, rq);
    SET_NEW(scope, st->k_query_string,
            PyBytes_FromStringAndSize(rq->query.base, (Py_ssize_t)rq->query.len));
    SET_NEW(scope, st->k_headers, header_list(st, rq));
    SET(scope, st->k_client, client);
    SET_NEW(scope, st->k_server, server_tuple(srv, s->local));
    PyObject *ext = NULL;
    if (rv == 0 && r->is_ws) {
        rv = ws_scope(st, scope, rq, &scheme);
        /* Its one extension: answering the handshake with an HTTP response. */
        PyObject *opts = rv == 0 ? PyDict_New() : NULL;
        ext = opts ? PyDict_New() : NULL;
        if (ext && PyDict_SetItem(ext, st->k_ext_ws_response, opts) < 0)
            Py_CLEAR(ext);
        Py_XDECREF(opts);
    } else if (rv == 0) {
        ext = PyDict_Copy(srv->ext_template);
    }
    if (ext && !r->body_end) {
        /* Request trailers (chunked HTTP/1.1, HTTP/2) land here before the last body message. */
        r->req_trailers = PyList_New(0);
        if (r->req_trailers == NULL ||
            PyDict_SetItem(ext, st->k_ext_request_trailers, r->req_trailers) < 0)
            Py_CLEAR(ext);
    }
    if (ext && s->tls) {
        PyObject *tls = ph_pytls_asgi_extension(s->tls);
        if (tls == NULL || PyDict_SetItemString(ext, "tls", tls) < 0)
            Py_CLEAR(ext);
        Py_XDECREF(tls);
    }
    SET_NEW(scope, st->k_extensions, ext);
    if (srv->state)
        SET_NEW(scope, st->k_state, PyDict_Copy(srv->state));
#undef SET
#undef SET_NEW
    if (rv == 0 && srv->access_log) {
        /* Strings for the log line, kept until the response ends. */
        if (client != Py_None)
            r->log_client = PyUnicode_FromFormat("%S:%S", PyTuple_GET_ITEM(client, 0),
                                                 PyTuple_GET_ITEM(client, 1));
        else
            r->log_client = PyUnicode_FromString("-");
        r->log_method = Py_NewRef(method);
        r->log_path = PyBytes_FromStringAndSize(rq->target.base, (Py_ssize_t)rq->target.len);
        r->log_version = Py_NewRef(version);
        if (srv->log_headers)
            r->log_req_headers = Py_XNewRef(PyDict_GetItemWithError(scope, st->k_headers));
        if (!r->log_client || !r->log_path) {
            Py_CLEAR(r->log_client);
            Py_CLEAR(r->log_method);
            Py_CLEAR(r->log_path);
            Py_CLEAR(r->log_version);
            PyErr_Clear(); /* no log line is better than no response */
        }
    }
    Py_XDECREF(method);
    Py_XDECREF(client);
    Py_XDECREF(scheme);
    Py_XDECREF(asgi);
    if (rv < 0 || PyErr_Occurred()) {
        Py_XDECREF(scope);
        return NULL;
    }
    return scope;
}

/* ---- starting the app ---- */

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* 3.11: the app's first step, taken now as the Task would take it (in the Task's context, with
 * the Task current), whatever the loop. The Task's own first step, a loop iteration later, picks
 * up what this one left (driver_take_stepped()); an app that never waits on I/O has answered by
 * then. When another task is current (a request accepted inside server.start()), the Task takes
 * the first step itself. */
static void eager_step(ph_pyserver_t *srv, driver_t *d, PyObject *task, PyObject *ctx)
{
    ph_state_t *st = srv->st;
    PyObject *args[2] = {srv->aloop, task};
    if (PyContext_Enter(ctx) < 0) {
        PyErr_Clear();
        return;
    }
    PyObject *ok = PyObject_Vectorcall(st->enter_task, args, 2, NULL);
    if (ok == NULL) {
        PyErr_Clear();
        PyContext_Exit(ctx);
        return;
    }
    Py_DECREF(ok);
    PyObject *v = NULL;
    PySendResult rv = driver_am_send(d, Py_None, &v);
    d->stepped = 1;
    if (rv == PYGEN_NEXT) {
        d->yielded = v;
    } else if (rv == PYGEN_RETURN) {
        Py_DECREF(v);
    } else {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value && tb)
            PyException_SetTraceback(value, tb);
        d->exc = value ? value : Py_NewRef(st->cancelled_error);
        Py_XDECREF(type);
        Py_XDECREF(tb);
    }
    PyObject *left = PyObject_Vectorcall(st->leave_task, args, 2, NULL);
    if (left == NULL)
        PyErr_WriteUnraisable(st->leave_task);
    Py_XDECREF(left);
    PyContext_Exit(ctx);
}
#endif

/* The app's Task, its first step taken now, inside the current callback, instead of a loop
 * iteration later: 3.12+ has this built in (eager_start); 3.11 gets eager_step(); 3.10 waits for
 * the loop. */
static PyObject *start_task(ph_pyserver_t *srv, driver_t *d)
{
    ph_state_t *st = srv->st;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *argv[3] = {(PyObject *)d, srv->aloop, Py_True};
    return PyObject_Vectorcall(st->task_type, argv, 1, st->kw_loop_eager);
#elif PY_VERSION_HEX >= 0x030B0000
    PyObject *ctx = PyContext_CopyCurrent();
    if (ctx == NULL)
        return NULL;
    PyObject *argv[4] = {(PyObject *)d, srv->aloop, st->task_name, ctx};
    PyObject *task = PyObject_Vectorcall(st->task_type, argv, 1, st->kw_loop_name_context);
    if (task)
        eager_step(srv, d, task, ctx);
    Py_DECREF(ctx);
    return task;
#else
    PyObject *argv[3] = {(PyObject *)d, srv->aloop, st->task_name};
    return PyObject_Vectorcall(st->task_type, argv, 1, st->kw_loop_name);
#endif
}

void ph_asgi_on_stream(ph_server_t *server, ph_stream_t *s)
{
    ph_pyserver_t *srv = server->host;
    ph_state_t *st = srv->st;
    size_t limit = server->cfg.limit_concurrency;
    if (limit && srv->nreqs >= limit) {
        ph_server_refuse_busy(server, s);
        return;
    }
    ph_req_t *r = PyObject_GC_New(ph_req_t, st->req_type);
    if (r == NULL) {
        PyErr_WriteUnraisable(NULL);
        ph_stream_respond_text(s, 500, "Internal Server Error", 21);
        return;
    }
    memset((char *)r + sizeof(PyObject), 0, sizeof(*r) - sizeof(PyObject));
    r->srv = (ph_pyserver_t *)Py_NewRef(srv);
    r->stream = s;
    r->t0 = srv->access_log || server->beat ? ph_monotonic() : 0;
    if (s->req.method.len <= sizeof(r->method)) {
        memcpy(r->method, s->req.method.base, s->req.method.len);
        r->method_len = s->req.method.len;
    }
    r->is_ws = s->req.websocket;
    /* A WebSocket's bytes are its session's, never an http.request body. */
    r->body_end = r->is_ws || (s->req.content_length <= 0 && !s->req.chunked);
    PyObject_GC_Track(r);
    s->handler = &asgi_handler;
    s->user = Py_NewRef(r); /* the stream's reference, dropped in on_release */
    r->held = 1;            /* listed so the server can show it to the GC */
    r->hnext = srv->held;
    if (srv->held)
        srv->held->hprev = r;
    srv->held = r;

    r->id = server->nrequests;
    PyObject *scope = build_scope(srv, s, r);
    if (scope && srv->trace)
        trace(r, "scope", scope);
    PyObject *receive = scope ? PyCFunction_New(&receive_def, (PyObject *)r) : NULL;
    PyObject *send = receive ? PyCFunction_New(&send_def, (PyObject *)r) : NULL;
    PyObject *coro = NULL;
    if (send) {
        PyObject *args[3] = {scope, receive, send};
        coro = PyObject_Vectorcall(srv->app, args, 3, NULL);
    }
    int have_scope = scope != NULL;
    Py_XDECREF(scope);
    Py_XDECREF(receive);
    Py_XDECREF(send);
    if (coro == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value && tb)
            PyException_SetTraceback(value, tb);
        log_exception(srv,
                      have_scope ? "Exception in ASGI application"
                                 : "Exception while building the request scope",
                      value);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (r->stream)
            respond_500(r);
        Py_DECREF(r);
        return;
    }
    driver_t *d = PyObject_GC_New(driver_t, st->driver_type);
    if (d == NULL) {
        Py_DECREF(coro);
        PyErr_WriteUnraisable(NULL);
        if (r->stream)
            respond_500(r);
        Py_DECREF(r);
        return;
    }
    d->coro = coro;
    d->req = (ph_req_t *)Py_NewRef(r);
    d->running = 0;
    d->stepped = 0;
    d->yielded = d->exc = NULL;
    PyObject_GC_Track(d);
    r->app_running = 1;
    r->linked = 1;
    r->next = srv->reqs;
    if (srv->reqs)
        srv->reqs->prev = r;
    srv->reqs = r;
    srv->nreqs++;
    PyObject *task = start_task(srv, d);
    Py_DECREF(d);
    if (task == NULL) {
        PyErr_WriteUnraisable(NULL);
        if (r->app_running) {
            r->app_running = 0;
            req_unlink(r);
            if (r->stream)
                respond_500(r);
        }
    } else if (r->app_running) {
        r->task = task; /* still running: keep it for shutdown */
    } else {
        Py_DECREF(task);
    }
    Py_DECREF(r);
}

ph_req_t *ph_asgi_next_held(ph_req_t *r)
{
    return r->hnext;
}

Py_ssize_t ph_asgi_cancel_all(ph_pyserver_t *srv)
{
    Py_ssize_t n = 0;
    srv->cancelling = 1; /* the CancelledErrors that follow are ours */
    for (ph_req_t *r = srv->reqs; r; r = r->next) {
        /* No byte of its response left yet: the client hears why, not a reset. */
        if (r->stream && !r->disconnected && !r->done && !r->body_started)
            respond_error(r, 503, PH_END_REJECTED);
        if (r->task == NULL)
            continue;
        PyObject *res = PyObject_CallMethodNoArgs(r->task, srv->st->s_cancel);
        if (res == NULL)
            PyErr_WriteUnraisable(r->task);
        Py_XDECREF(res);
        n++;
    }
    return n;
}

int ph_asgi_init_types(PyObject *module, ph_state_t *st)
{
    st->req_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &req_spec, NULL);
    st->driver_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &driver_spec, NULL);
    st->waiter_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    if (!st->req_type || !st->driver_type || !st->waiter_type)
        return -1;
    if (PyModule_AddObjectRef(module, "AppCoroutine", (PyObject *)st->driver_type) < 0)
        return -1;
    waiter_t *done = PyObject_GC_New(waiter_t, st->waiter_type);
    if (done == NULL)
        return -1;
    done->result = NULL;
    done->fut_iter = NULL;
    done->req = NULL;
    done->kind = WAIT_SEND;
    done->finished = 0;
    PyObject_GC_Track(done);
    st->done = (PyObject *)done;
    return 0;
}
