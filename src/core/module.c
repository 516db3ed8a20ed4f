/* pronghorn._core: the Server type that runs the libuv reactor on an asyncio loop's thread. */
#include "asgi.h"
#include "h1.h"
#include "h2.h"
#include "tls.h"
#include "wsgi.h"

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

/* ---- reactor <-> asyncio ---- */

static void kick(ph_loop_t *loop)
{
    ph_pyserver_t *srv = loop->host;
    if (srv->closed)
        return;
    PyObject *r = PyObject_CallMethodOneArg(srv->aloop, srv->st->s_call_soon, srv->tick);
    if (r == NULL)
        PyErr_WriteUnraisable(srv->aloop);
    Py_XDECREF(r);
}

/* The reactor's timer, as one asyncio call_later (ph_loop_t only ever moves it earlier). */
static void set_timer(ph_loop_t *loop, uint64_t ms)
{
    ph_pyserver_t *srv = loop->host;
    if (srv->closed)
        return;
    if (srv->timer_handle) {
        PyObject *r = PyObject_CallMethodNoArgs(srv->timer_handle, srv->st->s_cancel);
        if (r == NULL)
            PyErr_WriteUnraisable(srv->timer_handle);
        Py_XDECREF(r);
        Py_CLEAR(srv->timer_handle);
    }
    PyObject *delay = PyFloat_FromDouble((double)ms / 1000.0);
    if (delay == NULL) {
        PyErr_WriteUnraisable(NULL);
        return;
    }
    PyObject *args[3] = {srv->aloop, delay, srv->on_timer};
    srv->timer_handle = PyObject_VectorcallMethod(srv->st->s_call_later, args,
                                                  3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(delay);
    if (srv->timer_handle == NULL)
        PyErr_WriteUnraisable(srv->aloop);
}

/* For calls from Python code (maybe inside a task): the tick runs as its own loop callback. */
static void request_tick(ph_pyserver_t *srv)
{
    if (!srv->loop.kick_pending && !srv->closed) {
        srv->loop.kick_pending = 1;
        kick(&srv->loop);
    }
}

static PyObject *server_tick(ph_pyserver_t *srv, PyObject *unused)
{
    (void)unused;
    if (!srv->closed)
        ph_loop_tick(&srv->loop);
    Py_RETURN_NONE;
}

static PyObject *server_on_timer(ph_pyserver_t *srv, PyObject *unused)
{
    Py_CLEAR(srv->timer_handle);
    ph_loop_timer_fired(&srv->loop);
    return server_tick(srv, unused);
}

/* ---- construction ---- */

static int opt_double(PyObject *opts, const char *key, double dflt, double *out)
{
    PyObject *v = PyDict_GetItemString(opts, key);
    if (v == NULL || v == Py_None) {
        *out = dflt;
        return 0;
    }
    *out = PyFloat_AsDouble(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int opt_size(PyObject *opts, const char *key, size_t dflt, size_t *out)
{
    PyObject *v = PyDict_GetItemString(opts, key);
    if (v == NULL || v == Py_None) {
        *out = dflt;
        return 0;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(v);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (size_t)n;
    return 0;
}

static PyObject *opt_obj(PyObject *opts, const char *key)
{
    PyObject *v = PyDict_GetItemString(opts, key);
    return (v == NULL || v == Py_None) ? NULL : Py_NewRef(v);
}

static void on_reject(ph_server_t *server, const struct sockaddr_storage *peer,
                      const ph_exchange_t *x)
{
    char client[INET6_ADDRSTRLEN + 16] = "-";
    if (peer->ss_family != AF_UNIX)
        ph_peer_text(peer, client, sizeof(client));
    const char *version = x->version == 20 ? "2" : x->version == 10 ? "1.0" : "1.1";
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *method = x->method.len
                           ? PyUnicode_DecodeLatin1(x->method.base, (Py_ssize_t)x->method.len, NULL)
                           : PyUnicode_FromString("-");
    PyObject *r = method ? PyObject_CallFunction(server->reject_data, "sOy#siKdKii", client, method,
                                                 x->target.base ? x->target.base : "",
                                                 (Py_ssize_t)x->target.len, version, x->status,
                                                 (unsigned long long)x->bytes_out, x->seconds,
                                                 (unsigned long long)x->bytes_in, x->end, x->reject)
                         : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable(server->reject_data);
    Py_XDECREF(r);
    Py_XDECREF(method);
    PyGILState_Release(g);
}

int ph_reject_options(ph_server_t *server, PyObject *opts, PyObject **held)
{
    *held = opt_obj(opts, "on_reject");
    if (*held && !PyCallable_Check(*held)) {
        Py_CLEAR(*held);
        PyErr_SetString(PyExc_TypeError, "on_reject must be callable");
        return -1;
    }
    server->on_reject = *held ? on_reject : NULL;
    server->reject_data = *held;
    return 0;
}

int ph_beat_options(ph_server_t *server, PyObject *opts, PyObject **held)
{
    PyObject *page = PyDict_GetItemString(opts, "heartbeat");
    if (page == NULL || page == Py_None)
        return 0;
    double every;
    size_t slot, size, count, limit, retire_fd;
    if (opt_double(opts, "heartbeat_interval", 0.2, &every) < 0 ||
        opt_size(opts, "max_requests", 0, &limit) < 0 ||
        opt_size(opts, "retire_fd", (size_t)-1, &retire_fd) < 0 ||
        opt_size(opts, "heartbeat_slot", 0, &slot) < 0 ||
        opt_size(opts, "heartbeat_slot_size", sizeof(ph_beat_t), &size) < 0 ||
        opt_size(opts, "heartbeat_slots", 1, &count) < 0)
        return -1;
    /* a memoryview holds the buffer export: the page cannot be unmapped under the reactor */
    PyObject *view = PyMemoryView_FromObject(page);
    if (view == NULL)
        return -1;
    Py_buffer *b = PyMemoryView_GET_BUFFER(view);
    if (b->readonly || !PyBuffer_IsContiguous(b, 'C') || size < sizeof(ph_beat_t) || size % 8 ||
        slot >= count || count > (size_t)b->len / size || ((uintptr_t)b->buf % 8) != 0 ||
        !(every > 0)) {
        Py_DECREF(view);
        PyErr_SetString(PyExc_ValueError,
                        "heartbeat: a writable, aligned buffer of heartbeat_slots slots of "
                        "heartbeat_slot_size >= sizeof(ph_beat_t) bytes, and an interval > 0");
        return -1;
    }
    Py_XSETREF(*held, view);
    server->beat = (ph_beat_t *)((char *)b->buf + slot * size);
    server->beat_ms = every * 1000 < 1 ? 1 : (uint64_t)(every * 1000);
    server->max_requests = limit;
    server->retire_fd = retire_fd > INT_MAX ? -1 : (int)retire_fd;
    if (count > 1) {
        server->peers = b->buf;
        server->npeers = count;
        server->peer_size = size;
    }
    return 0;
}

int ph_attach_protocol(ph_server_t *server, ph_conn_t *conn)
{
    /* Over TLS, ALPN chose (with --http 2 only h2 is offered, and a client that names nothing
     * gets it too); in cleartext, auto is HTTP/1.1, which hands over to HTTP/2 on the preface
     * or an h2c upgrade. */
    int h2 = server->cfg.http == PH_HTTP_2;
    if (conn->tls && server->cfg.http == PH_HTTP_AUTO) {
        const char *alpn = ph_tls_alpn(conn->tls);
        h2 = alpn && strcmp(alpn, "h2") == 0;
    }
    return h2 ? ph_h2_attach(conn) : ph_h1_attach(conn);
}

int ph_server_options(ph_server_t *server, PyObject *opts, PyObject **extra_headers,
                      PyObject **root_path)
{
    ph_config_t *cfg = &server->cfg;
    double ka, hdr, bd, wr, ping, pong;
    size_t line, nhdr, hdrsize, body, conc, maxconn, hw, http, h2s, h2w, h2h, h2f, ws, wsq, wsmax;
    int sh, dh;
    if (opt_double(opts, "timeout_keep_alive", 5.0, &ka) < 0 ||
        opt_double(opts, "timeout_request_header", 10.0, &hdr) < 0 ||
        opt_double(opts, "timeout_request_body", 30.0, &bd) < 0 ||
        opt_double(opts, "timeout_write", 30.0, &wr) < 0 ||
        opt_size(opts, "limit_request_line", 8190, &line) < 0 ||
        opt_size(opts, "limit_request_headers", 100, &nhdr) < 0 ||
        opt_size(opts, "limit_request_header_size", 65536, &hdrsize) < 0 ||
        opt_size(opts, "limit_request_body", 0, &body) < 0 ||
        opt_size(opts, "limit_concurrency", 0, &conc) < 0 ||
        opt_size(opts, "limit_max_connections", 0, &maxconn) < 0 ||
        opt_size(opts, "write_high_water", 65536, &hw) < 0 ||
        opt_size(opts, "http", PH_HTTP_AUTO, &http) < 0 ||
        opt_size(opts, "h2_max_concurrent_streams", 100, &h2s) < 0 ||
        opt_size(opts, "h2_initial_window_size", 262144, &h2w) < 0 ||
        opt_size(opts, "h2_max_header_list_size", 0, &h2h) < 0 ||
        opt_size(opts, "h2_max_frame_size", 16384, &h2f) < 0 ||
        /* WebSockets are the ASGI bridge's: off unless it asks */
        opt_size(opts, "ws", 0, &ws) < 0 ||
        opt_size(opts, "ws_max_size", 16 * 1024 * 1024, &wsmax) < 0 ||
        opt_size(opts, "ws_max_queue", 32, &wsq) < 0 ||
        opt_double(opts, "ws_ping_interval", 20.0, &ping) < 0 ||
        opt_double(opts, "ws_ping_timeout", 20.0, &pong) < 0)
        return -1;
    if (http > PH_HTTP_2 || h2s > UINT32_MAX || h2w > 0x7fffffff || h2h > UINT32_MAX ||
        h2f < 16384 || h2f > 16777215) {
        PyErr_SetString(PyExc_ValueError, "an HTTP/2 option is out of range");
        return -1;
    }
    PyObject *v = PyDict_GetItemString(opts, "server_header");
    sh = v ? PyObject_IsTrue(v) : 1;
    v = PyDict_GetItemString(opts, "date_header");
    dh = v ? PyObject_IsTrue(v) : 1;
    v = PyDict_GetItemString(opts, "ws_per_message_deflate");
    int wsd = v ? PyObject_IsTrue(v) : 1;
    if (sh < 0 || dh < 0 || wsd < 0)
        return -1;
    cfg->ws = ws != 0;
    cfg->ws_deflate = wsd;
    cfg->ws_max_size = wsmax;
    cfg->ws_max_queue = wsq ? wsq : 1;
    cfg->ws_ping_interval_ms = (uint64_t)(ping * 1000);
    cfg->ws_ping_timeout_ms = (uint64_t)(pong * 1000);
    cfg->timeout_keep_alive_ms = (uint64_t)(ka * 1000);
    cfg->timeout_request_header_ms = (uint64_t)(hdr * 1000);
    cfg->timeout_request_body_ms = (uint64_t)(bd * 1000);
    cfg->timeout_write_ms = (uint64_t)(wr * 1000);
    cfg->limit_request_line = line;
    cfg->limit_request_headers = nhdr;
    cfg->limit_request_header_size = hdrsize;
    cfg->limit_request_body = body;
    cfg->limit_concurrency = conc;
    cfg->limit_max_connections = maxconn;
    cfg->server_header = sh;
    cfg->date_header = dh;
    cfg->write_high_water = hw;
    cfg->http = (int)http;
    cfg->h2_max_concurrent_streams = (uint32_t)h2s;
    cfg->h2_initial_window_size = (uint32_t)h2w;
    cfg->h2_max_header_list_size = (uint32_t)h2h;
    cfg->h2_max_frame_size = (uint32_t)h2f;
    /* One held bytes object: "server: <value>\r\n" followed by the extra header lines. */
    PyObject *extra = PyDict_GetItemString(opts, "extra_headers");
    PyObject *name = PyDict_GetItemString(opts, "server_value");
    if ((extra && extra != Py_None && !PyBytes_Check(extra)) ||
        (name && name != Py_None && !PyBytes_Check(name))) {
        PyErr_SetString(PyExc_TypeError, "extra_headers and server_value must be bytes");
        return -1;
    }
    *extra_headers = PyBytes_FromFormat(
        "server: %s\r\n%s", name && name != Py_None ? PyBytes_AS_STRING(name) : "pronghorn",
        extra && extra != Py_None ? PyBytes_AS_STRING(extra) : "");
    if (*extra_headers == NULL)
        return -1;
    const char *all = PyBytes_AS_STRING(*extra_headers);
    size_t total = (size_t)PyBytes_GET_SIZE(*extra_headers);
    size_t first = (size_t)(strstr(all, "\r\n") - all) + 2;
    cfg->server_line = (ph_slice_t){all, first};
    cfg->extra_headers = (ph_slice_t){all + first, total - first};
    *root_path = opt_obj(opts, "root_path");
    if (*root_path == NULL)
        *root_path = PyUnicode_FromString("");
    if (*root_path == NULL || !PyUnicode_Check(*root_path))
        return -1;
    return 0;
}

static PyObject *server_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"app", "loop", "state", "options", NULL};
    PyObject *app, *aloop, *state, *opts;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO!", kwlist, &app, &aloop, &state, &PyDict_Type,
                                     &opts))
        return NULL;
    ph_pyserver_t *srv = (ph_pyserver_t *)type->tp_alloc(type, 0);
    if (srv == NULL)
        return NULL;
    srv->st = PyType_GetModuleState(type);
    srv->app = Py_NewRef(app);
    srv->aloop = Py_NewRef(aloop);
    srv->state = state == Py_None ? NULL : Py_NewRef(state);

    int rv = ph_loop_init(&srv->loop);
    if (rv < 0) {
        PyErr_Format(PyExc_OSError, "uv_loop_init: %s", uv_strerror(rv));
        goto fail;
    }
    srv->loop_open = 1;
    srv->loop.host = srv;
    srv->loop.kick = kick;
    srv->loop.set_timer = set_timer;
    ph_server_init(&srv->server, &srv->loop);
    srv->server.host = srv;
    srv->server.on_conn = ph_attach_protocol;
    srv->server.on_stream = ph_asgi_on_stream;

    if (ph_server_options(&srv->server, opts, &srv->extra_headers, &srv->root_path) < 0 ||
        ph_pytls_server_options(srv->st, &srv->server, opts, &srv->tls_held) < 0 ||
        ph_beat_options(&srv->server, opts, &srv->beat_held) < 0 ||
        ph_reject_options(&srv->server, opts, &srv->reject_held) < 0)
        goto fail;
    srv->root_path_bytes = PyUnicode_AsUTF8String(srv->root_path);
    if (srv->root_path_bytes == NULL)
        goto fail;
    srv->access_log = opt_obj(opts, "access_log");
    srv->trace = opt_obj(opts, "trace");
    PyObject *lh = PyDict_GetItemString(opts, "access_log_headers");
    srv->log_headers = lh ? PyObject_IsTrue(lh) : 0;
    if (srv->log_headers < 0)
        goto fail;
    srv->log_exception = opt_obj(opts, "log_exception");
    srv->proxy = opt_obj(opts, "proxy");
    if (srv->log_exception == NULL) {
        PyErr_SetString(PyExc_TypeError, "options need a log_exception callable");
        goto fail;
    }

    return (PyObject *)srv;
fail:
    Py_DECREF(srv);
    return NULL;
}

static int server_traverse(ph_pyserver_t *srv, visitproc visit, void *arg)
{
    Py_VISIT(srv->app);
    Py_VISIT(srv->tls_held);
    Py_VISIT(srv->beat_held);
    Py_VISIT(srv->reject_held);
    Py_VISIT(srv->trace);
    Py_VISIT(srv->aloop);
    Py_VISIT(srv->state);
    Py_VISIT(srv->access_log);
    Py_VISIT(srv->log_exception);
    Py_VISIT(srv->proxy);
    Py_VISIT(srv->tick);
    Py_VISIT(srv->on_timer);
    Py_VISIT(srv->timer_handle);
    Py_VISIT(srv->server_addr);
    Py_VISIT(srv->scope_template);
    Py_VISIT(srv->asgi_template);
    Py_VISIT(srv->ext_template);
    for (int i = 0; i < PH_PEER_SLOTS; i++)
        Py_VISIT(srv->peers[i].tuple);
    /* The references open streams hold (through the reactor, which the GC cannot see): a
     * request in flight on a server nobody closed is a cycle the GC must find. */
    for (ph_req_t *r = srv->held; r; r = ph_asgi_next_held(r))
        Py_VISIT((PyObject *)r);
    Py_VISIT(Py_TYPE(srv));
    return 0;
}

static void close_loop(ph_pyserver_t *srv);

static int server_clear(ph_pyserver_t *srv)
{
    close_loop(srv); /* releases the streams, and with them the references they hold */
    Py_CLEAR(srv->app);
    Py_CLEAR(srv->aloop);
    Py_CLEAR(srv->state);
    Py_CLEAR(srv->access_log);
    Py_CLEAR(srv->trace);
    Py_CLEAR(srv->log_exception);
    Py_CLEAR(srv->proxy);
    Py_CLEAR(srv->tick);
    Py_CLEAR(srv->on_timer);
    Py_CLEAR(srv->timer_handle);
    Py_CLEAR(srv->server_addr);
    Py_CLEAR(srv->scope_template);
    Py_CLEAR(srv->asgi_template);
    Py_CLEAR(srv->ext_template);
    for (int i = 0; i < PH_PEER_SLOTS; i++)
        Py_CLEAR(srv->peers[i].tuple);
    return 0;
}

static void close_loop(ph_pyserver_t *srv)
{
    srv->closed = 1;
    if (!srv->loop_open)
        return;
    srv->loop_open = 0;
    ph_server_close(&srv->server);
    ph_loop_close(&srv->loop);
    ph_server_free(&srv->server);
}

static void server_dealloc(ph_pyserver_t *srv)
{
    PyTypeObject *tp = Py_TYPE(srv);
    PyObject_GC_UnTrack(srv);
    close_loop(srv);
    server_clear(srv);
    Py_CLEAR(srv->root_path);
    Py_CLEAR(srv->tls_held);
    Py_CLEAR(srv->beat_held);
    Py_CLEAR(srv->reject_held);
    Py_CLEAR(srv->root_path_bytes);
    Py_CLEAR(srv->extra_headers);
    tp->tp_free(srv);
    Py_DECREF(tp);
}

/* ---- methods ---- */

static PyObject *server_listen(ph_pyserver_t *srv, PyObject *args)
{
    int fd, is_unix, backlog;
    if (!PyArg_ParseTuple(args, "ipi", &fd, &is_unix, &backlog))
        return NULL;
    if (srv->closed) {
        PyErr_SetString(PyExc_RuntimeError, "server is closed");
        return NULL;
    }
    int rv = ph_server_add_listener(&srv->server, fd, is_unix, backlog);
    if (rv == PH_ESTATE) {
        PyErr_SetString(PyExc_RuntimeError, "listen() must come before start()");
        return NULL;
    }
    if (rv < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *server_start(ph_pyserver_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->closed || srv->server.started) {
        PyErr_SetString(PyExc_RuntimeError,
                        srv->closed ? "server is closed" : "server already started (or failed to)");
        return NULL;
    }
    srv->tick = PyObject_GetAttrString((PyObject *)srv, "_tick");
    srv->on_timer = PyObject_GetAttrString((PyObject *)srv, "_on_timer");
    if (srv->tick == NULL || srv->on_timer == NULL)
        return NULL;
    int rv = ph_server_start(&srv->server);
    if (rv < 0) {
        PyErr_Format(PyExc_OSError, "cannot listen: %s", uv_strerror(rv));
        return NULL;
    }
    PyObject *fd = PyLong_FromLong(ph_loop_fd(&srv->loop));
    if (fd == NULL)
        return NULL;
    PyObject *r =
        PyObject_CallMethodObjArgs(srv->aloop, srv->st->s_add_reader, fd, srv->tick, NULL);
    Py_DECREF(fd);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    srv->reader_added = 1;
    /* The listen watchers only reach epoll in a first run; it runs as a loop callback, not here,
     * since the caller may be a task and requests are started as tasks. */
    request_tick(srv);
    Py_RETURN_NONE;
}

static PyObject *server_shutdown(ph_pyserver_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->closed)
        Py_RETURN_NONE;
    ph_server_drain(&srv->server);
    request_tick(srv);
    Py_RETURN_NONE;
}

static PyObject *server_cancel_all(ph_pyserver_t *srv, PyObject *unused)
{
    (void)unused;
    return PyLong_FromSsize_t(ph_asgi_cancel_all(srv));
}

static PyObject *server_expire(ph_pyserver_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->closed)
        Py_RETURN_NONE;
    ph_server_expire(&srv->server);
    request_tick(srv);
    Py_RETURN_NONE;
}

static PyObject *server_close(ph_pyserver_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->closed)
        Py_RETURN_NONE;
    if (srv->reader_added) {
        srv->reader_added = 0;
        PyObject *fd = PyLong_FromLong(ph_loop_fd(&srv->loop));
        PyObject *r =
            fd ? PyObject_CallMethodOneArg(srv->aloop, srv->st->s_remove_reader, fd) : NULL;
        Py_XDECREF(fd);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    if (srv->timer_handle) {
        PyObject *r = PyObject_CallMethodNoArgs(srv->timer_handle, srv->st->s_cancel);
        Py_XDECREF(r);
        Py_CLEAR(srv->timer_handle);
    }
    close_loop(srv);
    Py_CLEAR(srv->tick);
    Py_CLEAR(srv->on_timer);
    Py_RETURN_NONE;
}

static PyObject *get_connections(ph_pyserver_t *srv, void *c)
{
    (void)c;
    return PyLong_FromSize_t(srv->closed ? 0 : srv->server.nconns);
}

static PyObject *get_requests(ph_pyserver_t *srv, void *c)
{
    (void)c;
    return PyLong_FromSize_t(srv->nreqs);
}

static PyObject *get_streams(ph_pyserver_t *srv, void *c)
{
    (void)c;
    return PyLong_FromSize_t(srv->server.nstreams);
}

static PyMethodDef server_methods[] = {
    {"listen", (PyCFunction)server_listen, METH_VARARGS,
     "listen(fd, is_unix, backlog): serve on a bound socket (the server takes the fd)."},
    {"start", (PyCFunction)server_start, METH_NOARGS, "Start accepting on the asyncio loop."},
    {"shutdown", (PyCFunction)server_shutdown, METH_NOARGS,
     "Stop accepting; close idle connections, the rest after their response."},
    {"cancel_all", (PyCFunction)server_cancel_all, METH_NOARGS,
     "Answer 503 to requests not yet answered, cancel the tasks of requests still running; "
     "returns how many were cancelled."},
    {"expire", (PyCFunction)server_expire, METH_NOARGS,
     "End every exchange in flight (a reset for a response cut short); queued bytes still "
     "drain."},
    {"close", (PyCFunction)server_close, METH_NOARGS, "Release the reactor."},
    {"_tick", (PyCFunction)server_tick, METH_NOARGS, NULL},
    {"_on_timer", (PyCFunction)server_on_timer, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"connections", (getter)get_connections, NULL, "open connections", NULL},
    {"requests", (getter)get_requests, NULL, "requests whose app is running", NULL},
    {"streams", (getter)get_streams, NULL, "exchanges in flight", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot server_slots[] = {
    {Py_tp_new, server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {0, NULL},
};

static PyType_Spec server_spec = {
    .name = "pronghorn._core.Server",
    .basicsize = sizeof(ph_pyserver_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = server_slots,
};

/* ---- module ---- */

#define INTERN(field, text)                                                                        \
    do {                                                                                           \
        if ((st->field = PyUnicode_InternFromString(text)) == NULL)                                \
            return -1;                                                                             \
    } while (0)

static int module_exec(PyObject *m)
{
    ph_state_t *st = PyModule_GetState(m);
    INTERN(k_type, "type");
    INTERN(k_asgi, "asgi");
    INTERN(k_version, "version");
    INTERN(k_spec_version, "spec_version");
    INTERN(k_http_version, "http_version");
    INTERN(k_method, "method");
    INTERN(k_scheme, "scheme");
    INTERN(k_path, "path");
    INTERN(k_raw_path, "raw_path");
    INTERN(k_query_string, "query_string");
    INTERN(k_root_path, "root_path");
    INTERN(k_headers, "headers");
    INTERN(k_client, "client");
    INTERN(k_server, "server");
    INTERN(k_state, "state");
    INTERN(k_extensions, "extensions");
    INTERN(k_body, "body");
    INTERN(k_more_body, "more_body");
    INTERN(k_status, "status");
    INTERN(k_trailers, "trailers");
    INTERN(k_more_trailers, "more_trailers");
    INTERN(k_ext_response_trailers, "http.response.trailers");
    INTERN(k_ext_request_trailers, "pronghorn.request_trailers");
    INTERN(v_http, "http");
    INTERN(v_https, "https");
    INTERN(v_3_0, "3.0");
    INTERN(v_2_4, "2.4");
    INTERN(v_1_0, "1.0");
    INTERN(v_1_1, "1.1");
    INTERN(v_2, "2");
    INTERN(v_http_request, "http.request");
    INTERN(v_http_disconnect, "http.disconnect");
    INTERN(v_http_response_start, "http.response.start");
    INTERN(v_http_response_body, "http.response.body");
    INTERN(v_http_response_trailers, "http.response.trailers");
    INTERN(k_subprotocols, "subprotocols");
    INTERN(k_subprotocol, "subprotocol");
    INTERN(k_text, "text");
    INTERN(k_bytes, "bytes");
    INTERN(k_code, "code");
    INTERN(k_reason, "reason");
    INTERN(k_ext_ws_response, "websocket.http.response");
    INTERN(v_websocket, "websocket");
    INTERN(v_ws, "ws");
    INTERN(v_wss, "wss");
    INTERN(v_ws_connect, "websocket.connect");
    INTERN(v_ws_accept, "websocket.accept");
    INTERN(v_ws_receive, "websocket.receive");
    INTERN(v_ws_send, "websocket.send");
    INTERN(v_ws_close, "websocket.close");
    INTERN(v_ws_disconnect, "websocket.disconnect");
    INTERN(v_ws_response_start, "websocket.http.response.start");
    INTERN(v_ws_response_body, "websocket.http.response.body");
    INTERN(s_create_future, "create_future");
    INTERN(s_set_result, "set_result");
    INTERN(s_done, "done");
    INTERN(s_cancel, "cancel");
    INTERN(s_call_soon, "call_soon");
    INTERN(s_call_later, "call_later");
    INTERN(s_add_reader, "add_reader");
    INTERN(s_remove_reader, "remove_reader");
    INTERN(s_throw, "throw");
    INTERN(s_close, "close");
    INTERN(s_loop, "loop");
    INTERN(s_eager_start, "eager_start");
    INTERN(s_await, "__await__");
    static const char *const methods[8] = {"GET",    "HEAD",  "POST",    "PUT",
                                           "DELETE", "PATCH", "OPTIONS", "TRACE"};
    for (int i = 0; i < 8; i++)
        INTERN(methods[i], methods[i]);
    st->kw_loop_eager = Py_BuildValue("(OO)", st->s_loop, st->s_eager_start);
    INTERN(task_name, "pronghorn-request");
    st->kw_loop_name = Py_BuildValue("(Os)", st->s_loop, "name");
    st->kw_loop_name_context = Py_BuildValue("(Oss)", st->s_loop, "name", "context");
    if (!st->kw_loop_name || !st->kw_loop_name_context)
        return -1;
    /* Common request header names, shared as bytes by every request's scope. */
    static const char hnames[] =
        "host user-agent accept accept-encoding accept-language connection content-type "
        "content-length cookie authorization cache-control origin referer x-forwarded-for "
        "x-forwarded-proto x-forwarded-host x-real-ip x-request-id if-none-match "
        "if-modified-since upgrade pragma te transfer-encoding sec-fetch-mode sec-fetch-site "
        "sec-fetch-dest sec-fetch-user sec-ch-ua sec-ch-ua-mobile sec-ch-ua-platform "
        "upgrade-insecure-requests dnt range expect content-encoding traceparent priority "
        "grpc-timeout connect-protocol-version sec-websocket-key sec-websocket-version "
        "sec-websocket-extensions sec-websocket-protocol";
    for (const char *name = hnames; *name;) {
        size_t len = strcspn(name, " ");
        unsigned slot = ph_hname_slot(name, len);
        for (int probe = 0; probe < PH_HNAME_PROBES; probe++, slot = (slot + 1) % PH_HNAME_SLOTS) {
            if (st->hnames[slot] == NULL) {
                st->hnames[slot] = PyBytes_FromStringAndSize(name, (Py_ssize_t)len);
                if (st->hnames[slot] == NULL)
                    return -1;
                break;
            }
        }
        name += len + (name[len] == ' ');
    }
    st->empty_bytes = PyBytes_FromStringAndSize("", 0);
    if (!st->kw_loop_eager || !st->empty_bytes)
        return -1;

    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return -1;
    st->task_type = PyObject_GetAttrString(asyncio, "Task");
    st->enter_task = PyObject_GetAttrString(asyncio, "_enter_task");
    st->leave_task = PyObject_GetAttrString(asyncio, "_leave_task");
    st->cancelled_error = PyObject_GetAttrString(asyncio, "CancelledError");
    Py_DECREF(asyncio);
    if (!st->task_type || !st->cancelled_error || !st->enter_task || !st->leave_task)
        return -1;

    st->client_disconnected = PyErr_NewExceptionWithDoc(
        "pronghorn._core.ClientDisconnected",
        "Raised by send() when the client has gone; an OSError, as ASGI asks.", PyExc_OSError,
        NULL);
    if (st->client_disconnected == NULL ||
        PyModule_AddObjectRef(m, "ClientDisconnected", st->client_disconnected) < 0)
        return -1;
    st->server_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &server_spec, NULL);
    if (st->server_type == NULL || PyModule_AddType(m, st->server_type) < 0)
        return -1;
    if (PyModule_AddIntConstant(m, "BEAT_SIZE", (long)sizeof(ph_beat_t)) < 0)
        return -1;
    if (ph_asgi_init_types(m, st) < 0 || ph_wsgi_init_types(m, st) < 0 ||
        ph_pytls_init_types(m, st) < 0)
        return -1;
    return PyModule_AddStringConstant(m, "libuv_version", uv_version_string());
}

/* Every member of ph_state_t is an object reference (types are objects too): the GC walks
 * the state as an array, so no member can be forgotten here. */
#define STATE_SLOTS (sizeof(ph_state_t) / sizeof(PyObject *))
_Static_assert(sizeof(ph_state_t) % sizeof(PyObject *) == 0, "ph_state_t holds only objects");

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    PyObject **slot = PyModule_GetState(m);
    for (size_t i = 0; slot && i < STATE_SLOTS; i++)
        Py_VISIT(slot[i]);
    return 0;
}

static int module_clear(PyObject *m)
{
    PyObject **slot = PyModule_GetState(m);
    for (size_t i = 0; slot && i < STATE_SLOTS; i++)
        Py_CLEAR(slot[i]);
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

/* read_beat(buffer, offset): one worker's slot of a heartbeat page as a dict (the counters
 * of ph_metrics_t by name), for the supervisor and the metrics endpoint. */
static PyObject *read_beat(PyObject *mod, PyObject *args)
{
    (void)mod;
    Py_buffer b;
    Py_ssize_t off;
    if (!PyArg_ParseTuple(args, "y*n", &b, &off))
        return NULL;
    if (off < 0 || off % 8 || (size_t)off + sizeof(ph_beat_t) > (size_t)b.len) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "read_beat: offset out of the page");
        return NULL;
    }
    ph_beat_t v;
    memcpy(&v, (const char *)b.buf + off, sizeof(v)); /* one copy, then no more reads */
    PyBuffer_Release(&b);
    v.last[sizeof(v.last) - 1] = '\0';
    const ph_metrics_t *m = &v.m;
    PyObject *resp = PyList_New(PH_METRIC_METHODS);
    PyObject *dur = PyList_New(PH_METRIC_BUCKETS);
    PyObject *ends = PyList_New(PH_ENDS);
    PyObject *rej = PyList_New(PH_REJECTS);
    PyObject *open = PyList_New(PH_PROTOS);
    PyObject *bounds = PyList_New(PH_METRIC_BUCKETS);
    PyObject *d = NULL;
    if (!resp || !dur || !ends || !rej || !open || !bounds)
        goto out;
    for (int i = 0; i < PH_METRIC_METHODS; i++) {
        PyObject *row =
            Py_BuildValue("[KKKKKK]", m->responses[i][0], m->responses[i][1], m->responses[i][2],
                          m->responses[i][3], m->responses[i][4], m->responses[i][5]);
        if (row == NULL)
            goto out;
        PyList_SET_ITEM(resp, i, row);
    }
#define FILL(list, n, expr)                                                                        \
    for (int i = 0; i < (n); i++) {                                                                \
        PyObject *x = PyLong_FromUnsignedLongLong(expr);                                           \
        if (x == NULL)                                                                             \
            goto out;                                                                              \
        PyList_SET_ITEM(list, i, x);                                                               \
    }
    FILL(dur, PH_METRIC_BUCKETS, m->duration[i])
    FILL(ends, PH_ENDS, m->ends[i])
    FILL(rej, PH_REJECTS, m->rejected[i])
    FILL(open, PH_PROTOS, m->conns_open[i])
    FILL(bounds, PH_METRIC_BUCKETS, ph_metric_bounds_us[i])
#undef FILL
    d = Py_BuildValue("{sKsKsKsKsKsssOsOsKsOsOsKsKsOsKsKsKsO}", "beat_ns", v.beat_ns, "requests",
                      v.requests, "streams", v.streams, "conns", v.conns, "accepting", v.accepting,
                      "last", v.last, "responses", resp, "duration", dur, "duration_sum_us",
                      m->duration_sum_us, "ends", ends, "rejected", rej, "app_errors",
                      m->app_errors, "conns_total", m->conns_total, "conns_open", open, "bytes_in",
                      m->bytes_in, "bytes_out", m->bytes_out, "loop_lag_us", m->loop_lag_us,
                      "bounds_us", bounds);
out:
    Py_XDECREF(resp);
    Py_XDECREF(dur);
    Py_XDECREF(ends);
    Py_XDECREF(rej);
    Py_XDECREF(open);
    Py_XDECREF(bounds);
    return d;
}

static PyMethodDef module_methods[] = {
    {"read_beat", read_beat, METH_VARARGS,
     "read_beat(page, offset): a worker's heartbeat slot and counters as a dict."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pronghorn._core",
    .m_doc = "pronghorn's C core: libuv reactor, HTTP/1.1 (llhttp) and the ASGI bridge.",
    .m_size = sizeof(ph_state_t),
    .m_slots = module_slots,
    .m_methods = module_methods,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    return PyModuleDef_Init(&module_def);
}
