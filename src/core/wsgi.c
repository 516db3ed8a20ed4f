#include "wsgi.h"

#include "tls.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The reactor buffers this much unread request body before it stops reading the socket; an app
 * thread that took the body below BODY_LOW_WATER asks for more. A request whose whole body fits
 * is read before it takes an app thread, so a slow sender never holds one. */
#define BODY_HIGH_WATER 65536
#define BODY_LOW_WATER 16384
/* Parts of a list response up to this size go out as one body. */
#define JOIN_MAX 65536

typedef struct wsgi_server_s wsgi_server_t;

/* ---- what the threads share ---- */

typedef struct chunk_s chunk_t;
struct chunk_s {
    chunk_t *next;
    size_t len, off;
    char data[];
};

enum { OP_START, OP_BODY, OP_FILE, OP_ABORT, OP_ERROR };

/* A response part an app thread hands to the reactor. */
typedef struct op_s op_t;
struct op_s {
    op_t *next;
    int type;
    int more;
    int status;         /* OP_START, OP_ERROR */
    ph_header_t *hs;    /* OP_START: into buf */
    size_t nh;          /* OP_START */
    int fd;             /* OP_FILE: owned until handed to the stream */
    uint64_t off, flen; /* OP_FILE */
    size_t len;         /* OP_BODY: bytes at buf */
    char buf[];
};

/* One request, shared by the reactor (which owns the stream) and the app thread running it. The
 * fields under "shared" are guarded by the server's mutex; the head is written once before the
 * request is handed over and only read afterwards. */
typedef struct {
    ph_work_t work; /* in the work queue */
    ph_work_t mail; /* in the mailbox, while it has something for the reactor */
    wsgi_server_t *srv;
    atomic_int refs;     /* the stream's, the app thread's, its Python objects', a posting's */
    ph_stream_t *stream; /* reactor only; NULL once released */
    int ending;          /* reactor only: the last part is being handed to the stream */
    uv_cond_t cond;      /* the app thread waits here for body or room */
    /* shared */
    chunk_t *body_head, *body_tail;
    size_t body_buffered;
    op_t *ops_head, *ops_tail;
    size_t ops_bytes; /* body bytes posted, not yet handed to the stream */
    size_t queued;    /* the stream's queued() when the reactor last looked */
    int failed;       /* a stream op refused what the app sent (PH_EINVAL ...) */
    /* Set by the reactor before it queues the request again, to have a thread log the refusal
     * (the reactor has no GIL); the queue's lock orders it before the thread reads it. */
    int report;
    /* gone: the client left before the response was whole; released: the protocol is done
     * with the stream (no more body comes, whatever the app still holds) */
    unsigned body_end : 1, gone : 1, released : 1, paused : 1, asked : 1, want : 1, dispatched : 1,
        responded : 1;
    /* head: immutable once handed over */
    ph_request_t req;
    struct sockaddr_storage peer, local;
    const char *scheme;
    char *tls_env; /* with TLS: mod_ssl's variables (ph_tls_env()), read by the app thread */
    int has_sendfile;
    double t0;
    char *head_mem;
    /* reactor only, for the counters: what the stream was given, and how it ended */
    int out_status, answered;
    uint64_t out_bytes;
    unsigned out_body : 1, out_done : 1, out_aborted : 1;
    uint64_t in_bytes; /* request body bytes received (under srv->mu: the log line reads it) */
} wreq_t;

/* environ keys every request has (interned once: no hashing per request) */
enum {
    K_REQUEST_METHOD,
    K_PATH_INFO,
    K_QUERY_STRING,
    K_RAW_URI,
    K_REQUEST_URI,
    K_SERVER_PROTOCOL,
    K_INPUT,
    K_URL_SCHEME,
    K_REMOTE_ADDR,
    K_REMOTE_PORT,
    K_SERVER_NAME,
    K_SERVER_PORT,
    K_PER_REQUEST, /* the keys above are in every environ; the two below when sent */
    K_CONTENT_TYPE = K_PER_REQUEST,
    K_CONTENT_LENGTH,
    NKEYS
};
static const char *const key_names[NKEYS] = {
    "REQUEST_METHOD",  "PATH_INFO",   "QUERY_STRING",    "RAW_URI",        "REQUEST_URI",
    "SERVER_PROTOCOL", "wsgi.input",  "wsgi.url_scheme", "REMOTE_ADDR",    "REMOTE_PORT",
    "SERVER_NAME",     "SERVER_PORT", "CONTENT_TYPE",    "CONTENT_LENGTH",
};

/* REMOTE_ADDR and REMOTE_PORT as strings, kept per peer address (every request on a
 * connection shares them); also the one for SERVER_NAME / SERVER_PORT. */
#define ADDR_SLOTS 64
typedef struct {
    struct sockaddr_storage addr;
    PyObject *host, *port;
} addr_slot_t;

struct wsgi_server_s {
    PyObject_HEAD
    ph_state_t *st;
    ph_loop_t loop;
    ph_server_t server;
    ph_workq_t q;
    ph_mailbox_t mb;
    ph_work_t ctl;    /* the main thread's commands, through the mailbox */
    uv_timer_t nudge; /* while requests wait for busy app threads (ph_workq_nudge) */
    uv_mutex_t mu;    /* every request's shared part, and cmd */
    uv_thread_t thread;
    int cmd; /* CMD_* bits */
    int stopping;
    atomic_size_t conns, inflight, running;
    atomic_size_t app_errors; /* counted by app threads; the reactor publishes it */
    PyObject *app, *access_log, *log_exception, *proxy, *root_path, *errors;
    PyObject *environ_template, *extra_headers;
    PyObject *tls_held;              /* (TLSContext, debug callable) that server borrows */
    PyObject *beat_held;             /* the heartbeat page's memoryview (server.beat) */
    PyObject *reject_held;           /* the on_reject callable server.on_reject calls */
    int log_headers;                 /* the access log format names headers: pass them */
    PyObject *hkeys[PH_HNAME_SLOTS]; /* "HTTP_..." environ keys by header name */
    PyObject *keys[NKEYS];
    PyObject *protos[3]; /* "HTTP/1.0" "HTTP/1.1" "HTTP/2" */
    addr_slot_t peers[ADDR_SLOTS], local;
    unsigned loop_open : 1, q_open : 1, mu_open : 1, mb_open : 1, thread_started : 1, closed : 1;
};

enum { CMD_DRAIN = 1, CMD_EXPIRE = 2, CMD_STOP = 4 };

static const ph_stream_handler_t wsgi_handler;

#define REQ_OF(w, field) ((wreq_t *)((char *)(w)-offsetof(wreq_t, field)))

static void req_free(wreq_t *r)
{
    for (chunk_t *c = r->body_head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    for (op_t *o = r->ops_head, *n; o; o = n) {
        n = o->next;
        if (o->type == OP_FILE && o->fd >= 0)
            close(o->fd);
        free(o);
    }
    atomic_fetch_sub(&r->srv->inflight, 1);
    uv_cond_destroy(&r->cond);
    free(r->head_mem);
    free(r->tls_env);
    free(r);
}

static void req_ref(wreq_t *r)
{
    atomic_fetch_add(&r->refs, 1);
}

/* From any thread (a request holds no Python object). */
static void req_unref(wreq_t *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1)
        req_free(r);
}

/* ====================================================================================
 * The reactor's side: stream events, and what the app threads post.
 * ==================================================================================== */

/* Copies the head out of the protocol's buffers: the app thread reads it later. */
static wreq_t *req_new(wsgi_server_t *srv, ph_stream_t *s)
{
    const ph_request_t *rq = &s->req;
    size_t need = rq->method.len + rq->target.len + rq->path.len + rq->query.len;
    for (size_t i = 0; i < rq->nheaders; i++)
        need += rq->headers[i].name.len + rq->headers[i].value.len;
    wreq_t *r = calloc(1, sizeof(*r));
    char *mem = malloc(need + rq->nheaders * sizeof(ph_header_t) + 1);
    if (r == NULL || mem == NULL || uv_cond_init(&r->cond) < 0) {
        free(r);
        free(mem);
        return NULL;
    }
    r->srv = srv;
    atomic_init(&r->refs, 1);
    atomic_fetch_add(&srv->inflight, 1);
    r->head_mem = mem;
    r->req = *rq;
    ph_header_t *hs = (ph_header_t *)mem;
    char *p = mem + rq->nheaders * sizeof(ph_header_t);
#define COPY(dst, src)                                                                             \
    do {                                                                                           \
        memcpy(p, (src).base, (src).len);                                                          \
        (dst) = (ph_slice_t){p, (src).len};                                                        \
        p += (src).len;                                                                            \
    } while (0)
    COPY(r->req.method, rq->method);
    COPY(r->req.target, rq->target);
    COPY(r->req.path, rq->path);
    COPY(r->req.query, rq->query);
    for (size_t i = 0; i < rq->nheaders; i++) {
        COPY(hs[i].name, rq->headers[i].name);
        COPY(hs[i].value, rq->headers[i].value);
    }
#undef COPY
    r->req.headers = hs;
    if (s->peer)
        r->peer = *s->peer;
    if (s->local)
        r->local = *s->local;
    r->scheme = s->scheme;
    if (s->tls && (r->tls_env = ph_tls_env(s->tls)) == NULL) {
        req_free(r);
        return NULL;
    }
    r->has_sendfile = s->ops->sendfile != NULL;
    r->stream = s;
    return r;
}

/* The server's own answer (the app failed, or never ran): 500 or 503 and a close. */
static void respond_error(wreq_t *r, int status)
{
    ph_stream_t *s = r->stream;
    if (s == NULL)
        return;
    const char *text = status == 503 ? "Service Unavailable" : "Internal Server Error";
    static const ph_header_t hs[] = {
        {{"content-type", 12}, {"text/plain; charset=utf-8", 25}},
        {{"connection", 10}, {"close", 5}},
    };
    r->out_status = status; /* counted first: body() may release the stream inside it */
    r->out_bytes = strlen(text);
    r->out_body = r->out_done = 1;
    if (s->ops->start(s, status, hs, 2) < 0 || s->ops->body(s, text, strlen(text), 0) < 0) {
        if (r->stream)
            r->stream->ops->abort(r->stream);
        r->out_body = r->out_done = 0;
        r->out_aborted = 1;
    }
}

/* Requests left to busy app threads: if none was taken for this long, the busy ones are
 * blocked in their apps and idle threads are woken (workq.h). */
#define NUDGE_MS 1

static void on_nudge(uv_timer_t *t)
{
    wsgi_server_t *srv = t->data;
    if (!ph_workq_nudge(&srv->q))
        uv_timer_stop(t);
}

/* To a thread: the head, and the body when it fits below the high-water mark. */
static void dispatch(wsgi_server_t *srv, wreq_t *r)
{
    uv_mutex_lock(&srv->mu);
    int already = r->dispatched;
    r->dispatched = 1;
    uv_mutex_unlock(&srv->mu);
    if (already)
        return;
    req_ref(r);
    int rv = ph_workq_push(&srv->q, &r->work);
    if (rv < 0) {
        req_unref(r);
        respond_error(r, 503);
    } else if (rv == 1 && !uv_is_active((uv_handle_t *)&srv->nudge)) {
        uv_timer_start(&srv->nudge, on_nudge, NUDGE_MS, NUDGE_MS);
    }
}

static void mark_gone(wreq_t *r, int released)
{
    wsgi_server_t *srv = r->srv;
    uv_mutex_lock(&srv->mu);
    if (!r->responded && !r->ending) /* (a stream may be released inside its last body()) */
        r->gone = 1;
    if (released)
        r->released = 1;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&srv->mu);
}

static void on_body(ph_stream_t *s, const char *data, size_t len)
{
    wreq_t *r = s->user;
    wsgi_server_t *srv = r->srv;
    if (len == 0)
        return;
    chunk_t *c = malloc(sizeof(*c) + len);
    if (c == NULL) {
        s->ops->abort(s);
        return;
    }
    memcpy(c->data, data, len);
    c->len = len;
    c->off = 0;
    c->next = NULL;
    uv_mutex_lock(&srv->mu);
    if (r->body_tail)
        r->body_tail->next = c;
    else
        r->body_head = c;
    r->body_tail = c;
    r->body_buffered += len;
    r->in_bytes += len;
    int pause = r->body_buffered > BODY_HIGH_WATER && !r->paused;
    if (pause)
        r->paused = 1;
    int go = r->body_buffered >= BODY_HIGH_WATER && !r->dispatched;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&srv->mu);
    if (pause)
        s->ops->pause_body(s);
    if (go)
        dispatch(srv, r);
}

static void on_body_end(ph_stream_t *s)
{
    wreq_t *r = s->user;
    wsgi_server_t *srv = r->srv;
    uv_mutex_lock(&srv->mu);
    r->body_end = 1;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&srv->mu);
    dispatch(srv, r);
}

static void on_drain(ph_stream_t *s)
{
    wreq_t *r = s->user;
    wsgi_server_t *srv = r->srv;
    size_t q = s->ops->queued(s);
    uv_mutex_lock(&srv->mu);
    r->queued = q;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&srv->mu);
}

static void on_disconnect(ph_stream_t *s)
{
    wreq_t *r = s->user;
    if (s->answered)
        r->answered = s->answered;
    mark_gone(r, 0);
}

/* The exchange is over for the protocol: counted here, on the reactor (the counters' one
 * writer); the access line is the app thread's. */
static void count_end(wreq_t *r)
{
    ph_server_t *server = &r->srv->server;
    if (server->beat == NULL)
        return;
    ph_exchange_t x = {.method = r->req.method, .bytes_in = r->in_bytes, .bytes_out = r->out_bytes};
    x.status = r->out_body ? r->out_status : 0;
    x.end = r->out_done ? PH_END_OK : r->out_aborted ? PH_END_APP_ERROR : PH_END_CLIENT_GONE;
    if (r->answered && !r->out_body) {
        x.status = r->answered;
        x.end = PH_END_REJECTED;
        x.reject = ph_reject_reason(r->answered);
    }
    x.seconds = r->t0 ? ph_monotonic() - r->t0 : 0;
    ph_server_count(server, &x);
    server->beat->m.app_errors = atomic_load(&r->srv->app_errors);
}

static void on_release(ph_stream_t *s)
{
    wreq_t *r = s->user;
    count_end(r);
    r->stream = NULL;
    mark_gone(r, 1);
    req_unref(r); /* the stream's */
}

static const ph_stream_handler_t wsgi_handler = {
    .on_body = on_body,
    .on_body_end = on_body_end,
    .on_drain = on_drain,
    .on_disconnect = on_disconnect,
    .on_release = on_release,
};

static void on_stream(ph_server_t *server, ph_stream_t *s)
{
    wsgi_server_t *srv = server->host;
    size_t limit = server->cfg.limit_concurrency;
    if (limit && atomic_load(&srv->inflight) >= limit) {
        ph_server_refuse_busy(server, s);
        return;
    }
    wreq_t *r = req_new(srv, s);
    if (r == NULL) {
        ph_stream_respond_text(s, 500, "Internal Server Error", 21);
        return;
    }
    r->t0 = srv->access_log || server->beat ? ph_monotonic() : 0;
    s->handler = &wsgi_handler;
    s->user = r; /* the stream's reference, dropped in on_release */
    const ph_request_t *rq = &s->req;
    int has_body = rq->content_length > 0 || rq->chunked;
    r->body_end = !has_body;
    if (has_body && !rq->expect_continue) {
        /* Read the body before an app thread is taken (up to the high-water mark): a client
         * that sends slowly waits on the reactor, not on a thread. */
        r->asked = 1;
        s->ops->want_body(s);
        return;
    }
    dispatch(srv, r);
}

static void out_sent(wreq_t *r, uint64_t len, int more)
{
    r->out_bytes += len;
    r->out_body = 1;
    r->out_done = !more;
}

static void out_undo(wreq_t *r, uint64_t len)
{
    r->out_bytes -= len;
    r->out_done = 0;
}

/* What an app thread posted for r: run it against the stream, on this (the reactor's) thread. */
static void handle_req(wsgi_server_t *srv, wreq_t *r)
{
    uv_mutex_lock(&srv->mu);
    op_t *ops = r->ops_head;
    r->ops_head = r->ops_tail = NULL;
    int want = r->want;
    r->want = 0;
    if (want) {
        r->asked = 1;
        r->paused = 0;
    }
    uv_mutex_unlock(&srv->mu);

    size_t handled = 0;
    int failed = 0, responded = 0;
    if (want && r->stream)
        r->stream->ops->want_body(r->stream);
    for (op_t *o = ops, *next; o; o = next) {
        next = o->next;
        ph_stream_t *s = r->stream;
        int rv = 0;
        if (o->type == OP_BODY)
            handled += o->len;
        if (s == NULL || failed) {
            /* the client left, or an earlier part was refused: nothing more goes out */
        } else if (o->type == OP_START) {
            rv = s->ops->start(s, o->status, o->hs, o->nh);
            if (rv == 0)
                r->out_status = o->status;
        } else if (o->type == OP_BODY) {
            r->ending = !o->more;
            /* counted first: the last body() may release the stream (count_end) inside it */
            out_sent(r, o->len, o->more);
            rv = s->ops->body(s, o->buf, o->len, o->more);
            responded |= rv == 0 && !o->more;
            if (rv < 0)
                out_undo(r, o->len);
        } else if (o->type == OP_FILE) {
            int fd = o->fd;
            o->fd = -1;
            r->ending = !o->more;
            out_sent(r, o->flen, o->more);
            rv = s->ops->sendfile(s, fd, o->off, o->flen, o->more);
            responded |= rv == 0 && !o->more;
            if (rv < 0)
                out_undo(r, o->flen);
        } else if (o->type == OP_ABORT) {
            r->out_aborted = 1;
            s->ops->abort(s);
        } else if (o->type == OP_ERROR) {
            respond_error(r, o->status);
            responded = 1;
        }
        r->ending = 0;
        if (rv < 0 && rv != PH_ECLOSED) {
            failed = rv;
            if (r->stream)
                respond_error(r, 500); /* only answers if nothing has left; else aborts */
        }
        if (o->type == OP_FILE && o->fd >= 0)
            close(o->fd);
        free(o);
    }
    size_t q = r->stream ? r->stream->ops->queued(r->stream) : 0;
    uv_mutex_lock(&srv->mu);
    r->ops_bytes -= handled;
    r->queued = q;
    if (failed)
        r->failed = failed;
    if (responded)
        r->responded = 1;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&srv->mu);
    if (failed) {
        r->report = failed; /* a thread logs it: the thread that ran the app is done with work */
        req_ref(r);
        if (ph_workq_push(&srv->q, &r->work) < 0)
            req_unref(r);
    }
}

static void handle_ctl(wsgi_server_t *srv)
{
    uv_mutex_lock(&srv->mu);
    int cmd = srv->cmd;
    srv->cmd = 0;
    uv_mutex_unlock(&srv->mu);
    if (cmd & CMD_DRAIN)
        ph_server_drain(&srv->server);
    if (cmd & CMD_EXPIRE) {
        /* Requests no thread has taken yet get a 503; the rest end as any exchange does. */
        ph_work_t *w;
        while ((w = ph_workq_try_pop(&srv->q)) != NULL) {
            wreq_t *r = REQ_OF(w, work);
            respond_error(r, 503);
            req_unref(r);
        }
        ph_server_expire(&srv->server);
    }
    if (cmd & CMD_STOP)
        srv->stopping = 1;
}

static void on_mail(ph_mailbox_t *mb, ph_work_t *w)
{
    wsgi_server_t *srv = mb->data;
    if (w == &srv->ctl) {
        handle_ctl(srv);
        return;
    }
    wreq_t *r = REQ_OF(w, mail);
    handle_req(srv, r);
    req_unref(r); /* the posting's */
}

/* SCHED_BATCH: a thread woken by the other side of a hand-off does not preempt the one that
 * woke it, so on a busy core each side runs through what is queued before the other takes
 * over, instead of switching for every request. (Nothing waits longer on an idle core.) */
static void batch_scheduling(void)
{
    struct sched_param sp = {.sched_priority = 0};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
}

static void reactor_main(void *arg)
{
    wsgi_server_t *srv = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main thread's */
    batch_scheduling();
    while (!srv->stopping) {
        ph_loop_run_once(&srv->loop);
        atomic_store(&srv->conns, srv->server.nconns);
    }
}

/* ====================================================================================
 * The app threads' side (GIL held unless said otherwise).
 * ==================================================================================== */

/* Hands ops (a chain) to the reactor. 0, or -1 when the client is gone or the response was
 * refused (the ops are dropped). */
static int post(wsgi_server_t *srv, wreq_t *r, op_t *first, op_t *last, size_t bytes)
{
    uv_mutex_lock(&srv->mu);
    if (r->gone || r->failed) {
        uv_mutex_unlock(&srv->mu);
        for (op_t *o = first, *n; o; o = n) {
            n = o->next;
            if (o->type == OP_FILE && o->fd >= 0)
                close(o->fd);
            free(o);
        }
        return -1;
    }
    if (r->ops_tail)
        r->ops_tail->next = first;
    else
        r->ops_head = first;
    r->ops_tail = last;
    r->ops_bytes += bytes;
    uv_mutex_unlock(&srv->mu);
    req_ref(r);
    int rv = ph_mailbox_post(&srv->mb, &r->mail);
    if (rv != 1)
        req_unref(r); /* already on its way (or the reactor is gone: the ops go with r) */
    return rv == PH_ECLOSED ? -1 : 0;
}

/* Waits (GIL released) while more than the high-water mark of response is on its way. 0, or
 * -1 when the client is gone. */
static int wait_room(wsgi_server_t *srv, wreq_t *r)
{
    size_t hw = srv->server.cfg.write_high_water;
    int ok;
    uv_mutex_lock(&srv->mu);
    if (!r->gone && !r->failed && r->ops_bytes + r->queued > hw) {
        uv_mutex_unlock(&srv->mu);
        Py_BEGIN_ALLOW_THREADS
            uv_mutex_lock(&srv->mu);
            while (!r->gone && !r->failed && r->ops_bytes + r->queued > hw)
                uv_cond_wait(&r->cond, &srv->mu);
            uv_mutex_unlock(&srv->mu);
        Py_END_ALLOW_THREADS
        uv_mutex_lock(&srv->mu);
    }
    ok = !r->gone && !r->failed;
    uv_mutex_unlock(&srv->mu);
    return ok ? 0 : -1;
}

static op_t *op_new(int type, size_t extra)
{
    op_t *o = malloc(sizeof(*o) + extra);
    if (o) {
        memset(o, 0, sizeof(*o));
        o->type = type;
        o->fd = -1;
    }
    return o;
}

/* ---- wsgi.input ---- */

typedef struct {
    PyObject_HEAD
    wsgi_server_t *srv; /* a reference */
    wreq_t *r;          /* a reference */
} input_t;

/* Under the lock: asks the reactor to read (more of) the body when nothing asked yet or it
 * paused. */
static void ask_body(wsgi_server_t *srv, wreq_t *r)
{
    if (r->want || r->gone || r->released || r->body_end || (r->asked && !r->paused))
        return;
    if (r->asked && r->body_buffered >= BODY_LOW_WATER)
        return;
    r->want = 1;
    req_ref(r);
    if (ph_mailbox_post(&srv->mb, &r->mail) != 1)
        req_unref(r);
}

/* Takes body bytes into buf (cap bytes at most), waiting (GIL released) while none are there;
 * with line, stops after a newline. Returns the count (0 at the end of the body), or -1 when
 * the client left before the end. */
static ssize_t take_body(wsgi_server_t *srv, wreq_t *r, char *buf, size_t cap, int line)
{
    size_t got = 0;
    int cut = 0, lost;
    Py_BEGIN_ALLOW_THREADS
        uv_mutex_lock(&srv->mu);
        while (r->body_head == NULL && !r->body_end && !r->gone && !r->released) {
            ask_body(srv, r);
            uv_cond_wait(&r->cond, &srv->mu);
        }
        while (r->body_head && got < cap) {
            chunk_t *c = r->body_head;
            size_t n = c->len - c->off;
            if (n > cap - got)
                n = cap - got;
            const char *from = c->data + c->off;
            if (line) {
                const char *nl = memchr(from, '\n', n);
                if (nl) {
                    n = (size_t)(nl - from) + 1;
                    cut = 1;
                }
            }
            memcpy(buf + got, from, n);
            got += n;
            c->off += n;
            r->body_buffered -= n;
            if (c->off == c->len) {
                r->body_head = c->next;
                if (r->body_head == NULL)
                    r->body_tail = NULL;
                free(c);
            }
            if (cut)
                break;
        }
        lost = got == 0 && r->body_head == NULL && !r->body_end && (r->gone || r->released);
        ask_body(srv, r);
        uv_mutex_unlock(&srv->mu);
    Py_END_ALLOW_THREADS
    return lost ? -1 : (ssize_t)got;
}

/* read(limit) / readline(limit): limit < 0 means no limit. */
static PyObject *input_read_impl(input_t *in, Py_ssize_t limit, int line)
{
    size_t cap = limit >= 0 ? (size_t)limit : 16384, len = 0;
    if (limit == 0)
        return PyBytes_FromStringAndSize("", 0);
    char *buf = PyMem_Malloc(cap ? cap : 1);
    if (buf == NULL)
        return PyErr_NoMemory();
    for (;;) {
        if (len == cap) {
            if (limit >= 0)
                break;
            char *nb = PyMem_Realloc(buf, cap * 2);
            if (nb == NULL) {
                PyMem_Free(buf);
                return PyErr_NoMemory();
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = take_body(in->srv, in->r, buf + len, cap - len, line);
        if (n < 0) {
            PyMem_Free(buf);
            PyErr_SetString(in->srv->st->client_disconnected,
                            "the client disconnected before the request body ended");
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (line && buf[len - 1] == '\n')
            break;
    }
    PyObject *b = PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
    PyMem_Free(buf);
    return b;
}

static int size_arg(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *out)
{
    *out = -1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "expected at most one argument");
        return -1;
    }
    if (nargs == 1 && args[0] != Py_None) {
        *out = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
        if (*out == -1 && PyErr_Occurred())
            return -1;
        if (*out < 0)
            *out = -1;
    }
    return 0;
}

static PyObject *input_read(input_t *in, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit;
    return size_arg(args, nargs, &limit) < 0 ? NULL : input_read_impl(in, limit, 0);
}

static PyObject *input_readline(input_t *in, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t limit;
    return size_arg(args, nargs, &limit) < 0 ? NULL : input_read_impl(in, limit, 1);
}

static PyObject *input_readlines(input_t *in, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t hint;
    if (size_arg(args, nargs, &hint) < 0)
        return NULL;
    PyObject *lines = PyList_New(0);
    Py_ssize_t total = 0;
    while (lines) {
        PyObject *l = input_read_impl(in, -1, 1);
        if (l == NULL) {
            Py_CLEAR(lines);
            break;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(l);
        if (n == 0 || PyList_Append(lines, l) < 0) {
            Py_DECREF(l);
            if (n != 0)
                Py_CLEAR(lines);
            break;
        }
        Py_DECREF(l);
        total += n;
        if (hint > 0 && total >= hint)
            break;
    }
    return lines;
}

static PyObject *input_next(input_t *in)
{
    PyObject *l = input_read_impl(in, -1, 1);
    if (l && PyBytes_GET_SIZE(l) == 0) {
        Py_DECREF(l);
        return NULL; /* StopIteration */
    }
    return l;
}

static PyObject *input_iter(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *input_close(input_t *in, PyObject *unused)
{
    (void)in;
    (void)unused;
    Py_RETURN_NONE;
}

static void input_dealloc(input_t *in)
{
    PyTypeObject *tp = Py_TYPE(in);
    req_unref(in->r);
    Py_DECREF((PyObject *)in->srv);
    tp->tp_free(in);
    Py_DECREF(tp);
}

static PyMethodDef input_methods[] = {
    {"read", (PyCFunction)(void (*)(void))input_read, METH_FASTCALL, NULL},
    {"readline", (PyCFunction)(void (*)(void))input_readline, METH_FASTCALL, NULL},
    {"readlines", (PyCFunction)(void (*)(void))input_readlines, METH_FASTCALL, NULL},
    {"close", (PyCFunction)input_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot input_slots[] = {
    {Py_tp_dealloc, input_dealloc},
    {Py_tp_iter, input_iter},
    {Py_tp_iternext, input_next},
    {Py_tp_methods, input_methods},
    {Py_tp_doc, "wsgi.input: the request body, read from the socket as the app asks for it."},
    {0, NULL},
};

static PyType_Spec input_spec = {
    .name = "pronghorn._core.WSGIInput",
    .basicsize = sizeof(input_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = input_slots,
};

/* ---- wsgi.file_wrapper ---- */

typedef struct {
    PyObject_HEAD
    PyObject *filelike;
    Py_ssize_t blksize;
} filewrapper_t;

static PyObject *fw_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"filelike", "blksize", NULL};
    PyObject *f;
    Py_ssize_t blksize = 8192;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|n", kwlist, &f, &blksize))
        return NULL;
    filewrapper_t *fw = (filewrapper_t *)type->tp_alloc(type, 0);
    if (fw) {
        fw->filelike = Py_NewRef(f);
        fw->blksize = blksize > 0 ? blksize : 8192;
    }
    return (PyObject *)fw;
}

static PyObject *fw_next(filewrapper_t *fw)
{
    PyObject *b = PyObject_CallMethod(fw->filelike, "read", "n", fw->blksize);
    if (b && PyObject_Length(b) == 0) {
        Py_DECREF(b);
        return NULL;
    }
    return b;
}

static PyObject *fw_close(filewrapper_t *fw, PyObject *unused)
{
    (void)unused;
    PyObject *close = PyObject_GetAttrString(fw->filelike, "close");
    if (close == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *r = PyObject_CallNoArgs(close);
    Py_DECREF(close);
    return r;
}

static int fw_traverse(filewrapper_t *fw, visitproc visit, void *arg)
{
    Py_VISIT(fw->filelike);
    Py_VISIT(Py_TYPE(fw));
    return 0;
}

static int fw_clear(filewrapper_t *fw)
{
    Py_CLEAR(fw->filelike);
    return 0;
}

static void fw_dealloc(filewrapper_t *fw)
{
    PyTypeObject *tp = Py_TYPE(fw);
    PyObject_GC_UnTrack(fw);
    fw_clear(fw);
    tp->tp_free(fw);
    Py_DECREF(tp);
}

static PyMethodDef fw_methods[] = {
    {"close", (PyCFunction)fw_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef fw_members[] = {
    {"filelike", T_OBJECT, offsetof(filewrapper_t, filelike), READONLY, NULL},
    {"blksize", T_PYSSIZET, offsetof(filewrapper_t, blksize), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot fw_slots[] = {
    {Py_tp_new, fw_new},
    {Py_tp_dealloc, fw_dealloc},
    {Py_tp_traverse, fw_traverse},
    {Py_tp_clear, fw_clear},
    {Py_tp_iter, input_iter},
    {Py_tp_iternext, fw_next},
    {Py_tp_methods, fw_methods},
    {Py_tp_members, fw_members},
    {Py_tp_doc, "wsgi.file_wrapper(filelike, blksize=8192): a regular file is sent with "
                "sendfile(2) from its current position; anything else by iteration."},
    {0, NULL},
};

static PyType_Spec fw_spec = {
    .name = "pronghorn._core.FileWrapper",
    .basicsize = sizeof(filewrapper_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = fw_slots,
};

/* ---- start_response and write ---- */

typedef struct {
    PyObject_HEAD
    wsgi_server_t *srv; /* a reference */
    wreq_t *r;          /* a reference */
    op_t *start;        /* the head start_response() set, until it leaves */
    int status;
    int64_t content_length; /* the app's, -1 when none */
    unsigned head_sent : 1, ended : 1;
    uint64_t bytes;
    PyObject *log_headers; /* the response headers, when the access log format names one */
} responder_t;

static void responder_dealloc(responder_t *rs)
{
    PyTypeObject *tp = Py_TYPE(rs);
    free(rs->start);
    req_unref(rs->r);
    Py_XDECREF(rs->log_headers);
    Py_DECREF((PyObject *)rs->srv);
    tp->tp_free(rs);
    Py_DECREF(tp);
}

/* "200 OK" -> 200; -1 with ValueError for anything but three digits and a reason (or none). */
static int parse_status(PyObject *status)
{
    if (!PyUnicode_Check(status)) {
        PyErr_SetString(PyExc_TypeError, "status must be a str such as '200 OK'");
        return -1;
    }
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(status, &n);
    if (p == NULL)
        return -1;
    if (n < 3 || (n > 3 && p[3] != ' ') || p[0] < '1' || p[0] > '9' || p[1] < '0' || p[1] > '9' ||
        p[2] < '0' || p[2] > '9' || !ph_is_field_value(p, (size_t)n)) {
        PyErr_Format(PyExc_ValueError, "invalid status %R: three digits, a space, a reason",
                     status);
        return -1;
    }
    return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
}

/* The head as an OP_START (names and values latin-1, checked as HTTP requires). NULL with an
 * exception. */
static op_t *head_op(int status, PyObject *headers, int64_t *content_length)
{
    PyObject *seq = PySequence_Fast(headers, "response_headers must be a list of (name, value)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    size_t bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "each response header must be a (str, str) tuple");
            Py_DECREF(seq);
            return NULL;
        }
        bytes += (size_t)PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(pair, 0)) +
                 (size_t)PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(pair, 1));
    }
    op_t *o = op_new(OP_START, (size_t)n * sizeof(ph_header_t) + bytes);
    if (o == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    o->status = status;
    o->nh = (size_t)n;
    o->hs = (ph_header_t *)o->buf;
    char *p = o->buf + (size_t)n * sizeof(ph_header_t);
    *content_length = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        ph_slice_t *dst[2] = {&o->hs[i].name, &o->hs[i].value};
        for (int k = 0; k < 2; k++) {
            PyObject *s = PyTuple_GET_ITEM(pair, k);
            if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
                PyErr_Format(PyExc_ValueError, "response header %R is not latin-1", s);
                goto fail;
            }
            size_t len = (size_t)PyUnicode_GET_LENGTH(s);
            memcpy(p, PyUnicode_1BYTE_DATA(s), len);
            *dst[k] = (ph_slice_t){p, len};
            p += len;
        }
        ph_slice_t nm = o->hs[i].name, v = o->hs[i].value;
        if (!ph_is_token(nm.base, nm.len)) {
            PyErr_Format(PyExc_ValueError, "invalid response header name %R",
                         PyTuple_GET_ITEM(pair, 0));
            goto fail;
        }
        if (!ph_is_field_value(v.base, v.len)) {
            PyErr_Format(PyExc_ValueError, "invalid value for response header %R (CR, LF, NUL?)",
                         PyTuple_GET_ITEM(pair, 0));
            goto fail;
        }
        if (ph_eq_lower(nm.base, nm.len, "content-length", 14))
            *content_length = ph_parse_decimal(v.base, v.len);
    }
    Py_DECREF(seq);
    return o;
fail:
    Py_DECREF(seq);
    free(o);
    return NULL;
}

static PyObject *resp_write(responder_t *rs, PyObject *data);
static PyMethodDef write_def = {"write", (PyCFunction)resp_write, METH_O, NULL};

static PyObject *start_response(responder_t *rs, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "start_response(status, response_headers, exc_info=None)");
        return NULL;
    }
    PyObject *exc_info = nargs == 3 ? args[2] : Py_None;
    if (exc_info != Py_None) {
        if (rs->head_sent) {
            /* PEP 3333: too late to change the head; the app's error goes on up. */
            if (!PyTuple_Check(exc_info) || PyTuple_GET_SIZE(exc_info) != 3) {
                PyErr_SetString(PyExc_TypeError, "exc_info must be a (type, value, traceback)");
                return NULL;
            }
            PyObject *v = PyTuple_GET_ITEM(exc_info, 1);
            if (PyExceptionInstance_Check(v)) {
                PyObject *tb = PyTuple_GET_ITEM(exc_info, 2);
                if (tb != Py_None)
                    PyException_SetTraceback(v, tb);
                PyErr_SetObject((PyObject *)Py_TYPE(v), v);
            } else {
                PyErr_SetString(PyExc_RuntimeError, "start_response with exc_info after the head "
                                                    "was sent");
            }
            return NULL;
        }
    } else if (rs->start) {
        PyErr_SetString(PyExc_RuntimeError,
                        "start_response() called again without exc_info (PEP 3333)");
        return NULL;
    }
    int status = parse_status(args[0]);
    if (status < 0)
        return NULL;
    int64_t cl;
    op_t *o = head_op(status, args[1], &cl);
    if (o == NULL)
        return NULL;
    free(rs->start);
    rs->start = o;
    rs->status = status;
    rs->content_length = cl;
    if (rs->srv->log_headers)
        Py_XSETREF(rs->log_headers, Py_NewRef(args[1]));
    return PyCFunction_New(&write_def, (PyObject *)rs);
}

/* Sends data (and the head first, if it has not left): more=0 ends the response. 0, or -1 with
 * ClientDisconnected set when the client is gone (or the response was refused). */
static int send_part(responder_t *rs, const char *data, size_t len, int more)
{
    wsgi_server_t *srv = rs->srv;
    op_t *first = NULL, *last = NULL;
    if (!rs->head_sent) {
        if (rs->start == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "the response body began before start_response()");
            return -1;
        }
        first = last = rs->start;
        rs->start = NULL;
        rs->head_sent = 1;
    } else if (wait_room(srv, rs->r) < 0) {
        goto gone;
    }
    op_t *b = op_new(OP_BODY, len);
    if (b == NULL) {
        free(first);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(b->buf, data, len);
    b->len = len;
    b->more = more;
    if (first)
        last->next = b;
    else
        first = b;
    last = b;
    rs->bytes += len;
    if (!more)
        rs->ended = 1;
    if (post(srv, rs->r, first, last, len) < 0)
        goto gone;
    return 0;
gone:
    PyErr_SetString(srv->st->client_disconnected, "the client disconnected");
    return -1;
}

static PyObject *resp_write(responder_t *rs, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rv = view.len ? send_part(rs, view.buf, (size_t)view.len, 1) : 0;
    PyBuffer_Release(&view);
    if (rv < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef start_response_def = {
    "start_response", (PyCFunction)(void (*)(void))start_response, METH_FASTCALL, NULL};

static PyType_Slot responder_slots[] = {
    {Py_tp_dealloc, responder_dealloc},
    {0, NULL},
};

static PyType_Spec responder_spec = {
    .name = "pronghorn._core.WSGIResponder",
    .basicsize = sizeof(responder_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = responder_slots,
};

/* ---- the request's run on an app thread ---- */

static void log_exception_as(wsgi_server_t *srv, const char *msg, PyObject *exc, int gone)
{
    if (ph_log_exception(srv->log_exception, msg, exc, gone))
        atomic_fetch_add(&srv->app_errors, 1);
}

static void log_exception(wsgi_server_t *srv, const char *msg, PyObject *exc)
{
    log_exception_as(srv, msg, exc, 0);
}

static PyObject *fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static PyObject *host_str(const struct sockaddr_storage *ss, int *port)
{
    char host[INET6_ADDRSTRLEN] = "";
    *port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        *port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        *port = ntohs(a->sin6_port);
    }
    return PyUnicode_FromString(host);
}

static int set_obj(PyObject *env, const char *key, PyObject *v)
{
    int rv = v ? PyDict_SetItemString(env, key, v) : -1;
    Py_XDECREF(v);
    return rv;
}

/* "HTTP_ACCEPT_ENCODING" for "accept-encoding", cached by name; NULL (no exception) for a
 * name with '_' (dropped, so that X_Forwarded cannot pose as X-Forwarded) and for the two
 * that have keys of their own. */
static PyObject *header_key(wsgi_server_t *srv, ph_slice_t name, int *err)
{
    *err = 0;
    if (memchr(name.base, '_', name.len) || name.len == 0 ||
        ph_eq_lower(name.base, name.len, "content-type", 12) ||
        ph_eq_lower(name.base, name.len, "content-length", 14))
        return NULL;
    unsigned slot = ph_hname_slot(name.base, name.len);
    PyObject *k = srv->hkeys[slot];
    if (k && (size_t)PyUnicode_GET_LENGTH(k) == name.len + 5) {
        const char *kp = (const char *)PyUnicode_1BYTE_DATA(k) + 5;
        size_t i = 0;
        for (; i < name.len; i++) {
            char c = name.base[i];
            c = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
            if (kp[i] != c)
                break;
        }
        if (i == name.len)
            return Py_NewRef(k);
    }
    char stack[128];
    char *buf = name.len + 5 <= sizeof(stack) ? stack : PyMem_Malloc(name.len + 5);
    if (buf == NULL) {
        *err = 1;
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(buf, "HTTP_", 5);
    for (size_t i = 0; i < name.len; i++) {
        char c = name.base[i];
        buf[5 + i] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
    }
    k = PyUnicode_DecodeLatin1(buf, (Py_ssize_t)name.len + 5, NULL);
    if (buf != stack)
        PyMem_Free(buf);
    if (k == NULL) {
        *err = 1;
        return NULL;
    }
    PyUnicode_InternInPlace(&k);
    Py_XSETREF(srv->hkeys[slot], Py_NewRef(k));
    return k;
}

/* Applies --proxy-headers: REMOTE_ADDR and wsgi.url_scheme from a trusted proxy's
 * X-Forwarded-For / X-Forwarded-Proto. */
static int apply_proxy(wsgi_server_t *srv, const ph_request_t *rq, PyObject *env, PyObject *host,
                       const struct sockaddr_storage *peer)
{
    int port = 0;
    if (peer->ss_family == AF_INET)
        port = ntohs(((const struct sockaddr_in *)peer)->sin_port);
    else if (peer->ss_family == AF_INET6)
        port = ntohs(((const struct sockaddr_in6 *)peer)->sin6_port);
    PyObject *xff, *xfp;
    if (ph_forwarded(rq, &xff, &xfp) < 0)
        return -1;
    if (xff == NULL && xfp == NULL)
        return 0;
    PyObject *client = Py_BuildValue("(Oi)", host, port);
    PyObject *res = client ? PyObject_CallFunctionObjArgs(srv->proxy, client, xff ? xff : Py_None,
                                                          xfp ? xfp : Py_None, NULL)
                           : NULL;
    Py_XDECREF(client);
    Py_XDECREF(xff);
    Py_XDECREF(xfp);
    if (res == NULL)
        return -1;
    int rv = 0;
    if (PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2) {
        PyObject *c = PyTuple_GET_ITEM(res, 0), *s = PyTuple_GET_ITEM(res, 1);
        if (c != Py_None && PyTuple_Check(c) && PyTuple_GET_SIZE(c) == 2) {
            rv = PyDict_SetItem(env, srv->keys[K_REMOTE_ADDR], PyTuple_GET_ITEM(c, 0));
            PyObject *ps = rv == 0 ? PyObject_Str(PyTuple_GET_ITEM(c, 1)) : NULL;
            rv = ps ? PyDict_SetItem(env, srv->keys[K_REMOTE_PORT], ps) : -1;
            Py_XDECREF(ps);
        }
        if (rv == 0 && s != Py_None)
            rv = PyDict_SetItem(env, srv->keys[K_URL_SCHEME], s);
    }
    Py_DECREF(res);
    return rv;
}

/* The (host, port) strings of an address, from its slot when the slot holds that address. 0,
 * or -1 with an exception. */
static int addr_strs(addr_slot_t *slot, const struct sockaddr_storage *ss, PyObject **host,
                     PyObject **port)
{
    size_t len = ss->ss_family == AF_INET6  ? sizeof(struct sockaddr_in6)
                 : ss->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                            : sizeof(ss->ss_family);
    if (slot->host == NULL || memcmp(&slot->addr, ss, len) != 0) {
        int p;
        PyObject *h = host_str(ss, &p);
        char num[24];
        size_t nl = ph_u64toa((uint64_t)p, num);
        PyObject *ps = h ? PyUnicode_DecodeLatin1(num, (Py_ssize_t)nl, NULL) : NULL;
        if (ps == NULL) {
            Py_XDECREF(h);
            return -1;
        }
        Py_XSETREF(slot->host, h);
        Py_XSETREF(slot->port, ps);
        memcpy(&slot->addr, ss, len);
    }
    *host = slot->host;
    *port = slot->port;
    return 0;
}

static addr_slot_t *peer_slot(wsgi_server_t *srv, const struct sockaddr_storage *ss)
{
    unsigned key = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        key = ntohs(a->sin_port) ^ a->sin_addr.s_addr;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        key = ntohs(a->sin6_port) ^ a->sin6_addr.s6_addr[15];
    }
    return &srv->peers[(key ^ (key >> 16)) % ADDR_SLOTS];
}

/* Sets env[srv->keys[k]] to a new string of [p, p+n) as latin-1. */
static int set_latin1(wsgi_server_t *srv, PyObject *env, int k, const char *p, size_t n)
{
    PyObject *v = PyUnicode_DecodeLatin1(p, (Py_ssize_t)n, NULL);
    int rv = v ? PyDict_SetItem(env, srv->keys[k], v) : -1;
    Py_XDECREF(v);
    return rv;
}

static PyObject *build_environ(wsgi_server_t *srv, wreq_t *r, PyObject *input)
{
    ph_state_t *st = srv->st;
    PyObject **k = srv->keys;
    const ph_request_t *rq = &r->req;
    /* The template holds every key a request always has: the copy never grows for them. */
    PyObject *env = PyDict_Copy(srv->environ_template);
    if (env == NULL)
        return NULL;
    char stackbuf[512];
    char *dec = rq->path.len <= sizeof(stackbuf) ? stackbuf : PyMem_Malloc(rq->path.len + 1);
    if (dec == NULL)
        goto fail;
    size_t dl = ph_percent_decode(rq->path.base, rq->path.len, dec);
    int rv = set_latin1(srv, env, K_PATH_INFO, dec, dl);
    if (dec != stackbuf)
        PyMem_Free(dec);
    PyObject *target =
        rv == 0 ? PyUnicode_DecodeLatin1(rq->target.base, (Py_ssize_t)rq->target.len, NULL) : NULL;
    if (target == NULL || PyDict_SetItem(env, k[K_RAW_URI], target) < 0 ||
        PyDict_SetItem(env, k[K_REQUEST_URI], target) < 0) {
        Py_XDECREF(target);
        goto fail;
    }
    Py_DECREF(target);
    PyObject *proto = srv->protos[rq->http_major == 2 ? 2 : rq->http_minor == 0 ? 0 : 1];
    PyObject *scheme = r->scheme && strcmp(r->scheme, "https") == 0 ? st->v_https : st->v_http;
    if (PyDict_SetItem(env, k[K_SERVER_PROTOCOL], proto) < 0 ||
        PyDict_SetItem(env, k[K_INPUT], input) < 0 ||
        PyDict_SetItem(env, k[K_URL_SCHEME], scheme) < 0 ||
        set_latin1(srv, env, K_QUERY_STRING, rq->query.base, rq->query.len) < 0 ||
        (r->tls_env && ph_pytls_wsgi_environ(env, r->tls_env) < 0))
        goto fail;
    PyObject *method = ph_method_str(st, rq->method);
    if (method == NULL || PyDict_SetItem(env, k[K_REQUEST_METHOD], method) < 0) {
        Py_XDECREF(method);
        goto fail;
    }
    Py_DECREF(method);
    PyObject *host, *port;
    if (addr_strs(peer_slot(srv, &r->peer), &r->peer, &host, &port) < 0 ||
        PyDict_SetItem(env, k[K_REMOTE_ADDR], host) < 0 ||
        PyDict_SetItem(env, k[K_REMOTE_PORT], port) < 0)
        goto fail;
    if (srv->proxy && apply_proxy(srv, rq, env, host, &r->peer) < 0)
        goto fail;
    if (addr_strs(&srv->local, &r->local, &host, &port) < 0 ||
        PyDict_SetItem(env, k[K_SERVER_NAME], host) < 0 ||
        PyDict_SetItem(env, k[K_SERVER_PORT], port) < 0)
        goto fail;
    for (size_t i = 0; i < rq->nheaders; i++) {
        ph_slice_t n = rq->headers[i].name, v = rq->headers[i].value;
        int special = ph_eq_lower(n.base, n.len, "content-type", 12)     ? K_CONTENT_TYPE
                      : ph_eq_lower(n.base, n.len, "content-length", 14) ? K_CONTENT_LENGTH
                                                                         : -1;
        if (special >= 0) {
            if (PyDict_GetItem(env, k[special]) == NULL &&
                set_latin1(srv, env, special, v.base, v.len) < 0)
                goto fail;
            continue;
        }
        int err;
        PyObject *key = header_key(srv, n, &err);
        if (key == NULL) {
            if (err)
                goto fail;
            continue;
        }
        PyObject *val = PyUnicode_DecodeLatin1(v.base, (Py_ssize_t)v.len, NULL);
        PyObject *old = val ? PyDict_GetItemWithError(env, key) : NULL;
        if (val && old) {
            /* Repeated fields join with ","; cookies (split into crumbs by HTTP/2) with "; ". */
            const char *sep = ph_eq_lower(n.base, n.len, "cookie", 6) ? "; " : ",";
            Py_SETREF(val, PyUnicode_FromFormat("%U%s%U", old, sep, val));
        }
        rv = val && !PyErr_Occurred() ? PyDict_SetItem(env, key, val) : -1;
        Py_DECREF(key);
        Py_XDECREF(val);
        if (rv < 0)
            goto fail;
    }
    return env;
fail:
    Py_DECREF(env);
    return NULL;
}

/* The request's access line (logs.py), from its app thread: end is PH_END_*. */
static void access_log(wsgi_server_t *srv, wreq_t *r, PyObject *env, PyObject *resp_headers,
                       int status, uint64_t bytes, int end)
{
    if (srv->access_log == NULL)
        return;
    PyObject *addr = env ? PyDict_GetItem(env, srv->keys[K_REMOTE_ADDR]) : NULL;
    PyObject *port = env ? PyDict_GetItem(env, srv->keys[K_REMOTE_PORT]) : NULL;
    PyObject *client;
    if (addr && port && PyUnicode_GET_LENGTH(addr)) {
        client = PyUnicode_FromFormat("%U:%U", addr, port);
    } else {
        char peer[INET6_ADDRSTRLEN + 16] = "-";
        if (r->peer.ss_family != AF_UNIX)
            ph_peer_text(&r->peer, peer, sizeof(peer));
        client = PyUnicode_FromString(peer);
    }
    PyObject *method = ph_method_str(srv->st, r->req.method);
    const char *ver = r->req.http_major == 2 ? "2" : r->req.http_minor == 0 ? "1.0" : "1.1";
    double dt = ph_monotonic() - r->t0;
    uv_mutex_lock(&srv->mu);
    uint64_t in = r->in_bytes;
    uv_mutex_unlock(&srv->mu);
    PyObject *headers = srv->log_headers ? PyTuple_Pack(2, env ? env : Py_None,
                                                        resp_headers ? resp_headers : Py_None)
                                         : Py_NewRef(Py_None);
    PyObject *res = client && method && headers
                        ? PyObject_CallFunction(srv->access_log, "OOy#siKdKiiO", client, method,
                                                r->req.target.base, (Py_ssize_t)r->req.target.len,
                                                ver, status, (unsigned long long)bytes, dt,
                                                (unsigned long long)in, end, 0, headers)
                        : NULL;
    if (res == NULL)
        PyErr_WriteUnraisable(srv->access_log);
    Py_XDECREF(res);
    Py_XDECREF(client);
    Py_XDECREF(method);
    Py_XDECREF(headers);
}

/* A response the app did not send itself: the server's 500 if nothing has left, else an
 * abort so the client cannot take a cut-short body for a whole one. */
static void fail_response(responder_t *rs)
{
    op_t *o = op_new(rs->head_sent ? OP_ABORT : OP_ERROR, 0);
    if (o == NULL)
        return;
    o->status = 500;
    if (!rs->head_sent)
        rs->status = 500;
    rs->ended = 1;
    post(rs->srv, rs->r, o, o, 0);
}

/* The response is a wsgi.file_wrapper around a regular file and the protocol can sendfile: the
 * head and the file leave without the file passing through Python. 1 when sent that way, 0 to
 * iterate instead, -1 with an exception. */
static int send_file(responder_t *rs, filewrapper_t *fw)
{
    if (!rs->r->has_sendfile || rs->start == NULL || rs->head_sent)
        return 0;
    PyObject *fn = PyObject_CallMethod(fw->filelike, "fileno", NULL);
    if (fn == NULL) {
        PyErr_Clear();
        return 0;
    }
    long fd = PyLong_AsLong(fn);
    Py_DECREF(fn);
    if (fd < 0) {
        PyErr_Clear();
        return 0;
    }
    struct stat st;
    if (fd > INT32_MAX || fstat((int)fd, &st) < 0 || !S_ISREG(st.st_mode))
        return 0;
    /* From where the app left the file (tell() counts what a buffered reader holds). */
    int64_t off;
    PyObject *pos = PyObject_CallMethod(fw->filelike, "tell", NULL);
    if (pos) {
        off = PyLong_AsLongLong(pos);
        Py_DECREF(pos);
        if (off == -1 && PyErr_Occurred())
            return -1;
    } else {
        PyErr_Clear();
        off = lseek((int)fd, 0, SEEK_CUR);
        if (off < 0)
            return 0;
    }
    uint64_t len = st.st_size > off ? (uint64_t)(st.st_size - off) : 0;
    if (rs->content_length >= 0 && (uint64_t)rs->content_length < len)
        len = (uint64_t)rs->content_length;
    int dup_fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0); /* the app may close its file at once */
    if (dup_fd < 0)
        return 0;
    op_t *o = op_new(OP_FILE, 0);
    if (o == NULL) {
        close(dup_fd);
        PyErr_NoMemory();
        return -1;
    }
    o->fd = dup_fd;
    o->off = (uint64_t)off;
    o->flen = len;
    o->more = 0;
    op_t *head = rs->start;
    rs->start = NULL;
    rs->head_sent = 1;
    rs->ended = 1;
    head->next = o;
    rs->bytes += len;
    if (post(rs->srv, rs->r, head, o, 0) < 0) {
        PyErr_SetString(rs->srv->st->client_disconnected, "the client disconnected");
        return -1;
    }
    return 1;
}

/* Sends every part of result; 0, or -1 with an exception (from the app, or ClientDisconnected). */
static int send_result(responder_t *rs, PyObject *result)
{
    ph_state_t *st = rs->srv->st;
    if (Py_IS_TYPE(result, st->file_wrapper_type)) {
        int rv = send_file(rs, (filewrapper_t *)result);
        if (rv != 0)
            return rv < 0 ? -1 : 0;
    }
    if (PyList_CheckExact(result) || PyTuple_CheckExact(result)) {
        /* Every part is known: small ones leave as one body, with its length. */
        PyObject *seq = result;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        size_t total = 0;
        int all_bytes = 1;
        for (Py_ssize_t i = 0; i < n && all_bytes; i++) {
            PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
            all_bytes = PyBytes_CheckExact(b);
            if (all_bytes)
                total += (size_t)PyBytes_GET_SIZE(b);
        }
        if (all_bytes && n == 1 && rs->start)
            return send_part(rs, PyBytes_AS_STRING(PySequence_Fast_GET_ITEM(seq, 0)), total, 0);
        if (all_bytes && total <= JOIN_MAX && rs->start) {
            char *buf = PyMem_Malloc(total ? total : 1);
            if (buf == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            size_t off = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
                memcpy(buf + off, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b));
                off += (size_t)PyBytes_GET_SIZE(b);
            }
            int rv = send_part(rs, buf, total, 0);
            PyMem_Free(buf);
            return rv;
        }
    }
    /* A file wrapper stops at the Content-Length the app declared (PEP 3333: the file may be
     * longer); any other iterable that runs past it is refused by the protocol. */
    int64_t left = Py_IS_TYPE(result, st->file_wrapper_type) ? rs->content_length : -1;
    PyObject *it = PyObject_GetIter(result);
    if (it == NULL)
        return -1;
    PyObject *item;
    while (left != 0 && (item = PyIter_Next(it)) != NULL) {
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "the response iterable yielded %.100s, not bytes",
                         Py_TYPE(item)->tp_name);
            Py_DECREF(item);
            Py_DECREF(it);
            return -1;
        }
        size_t n = (size_t)PyBytes_GET_SIZE(item);
        if (left >= 0 && (int64_t)n > left)
            n = (size_t)left;
        if (left >= 0)
            left -= (int64_t)n;
        int rv = n ? send_part(rs, PyBytes_AS_STRING(item), n, 1) : 0;
        Py_DECREF(item);
        if (rv < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return -1;
    return send_part(rs, "", 0, 0);
}

static void run_request(wsgi_server_t *srv, wreq_t *r)
{
    ph_state_t *st = srv->st;
    uv_mutex_lock(&srv->mu);
    int gone = r->gone;
    uv_mutex_unlock(&srv->mu);
    if (gone) {
        /* the client left before a thread was free: no app call for nobody */
        access_log(srv, r, NULL, NULL, 0, 0, PH_END_CLIENT_GONE);
        return;
    }
    input_t *in = PyObject_New(input_t, st->wsgi_input_type);
    responder_t *rs = in ? PyObject_New(responder_t, st->wsgi_responder_type) : NULL;
    if (rs == NULL) {
        Py_XDECREF(in);
        PyErr_WriteUnraisable(NULL);
        return;
    }
    in->srv = (wsgi_server_t *)Py_NewRef((PyObject *)srv);
    in->r = r;
    req_ref(r);
    rs->srv = (wsgi_server_t *)Py_NewRef((PyObject *)srv);
    rs->r = r;
    req_ref(r);
    rs->start = NULL;
    rs->status = 0;
    rs->content_length = -1;
    rs->head_sent = rs->ended = 0;
    rs->bytes = 0;
    rs->log_headers = NULL;
    atomic_fetch_add(&srv->running, 1);

    PyObject *env = build_environ(srv, r, (PyObject *)in);
    PyObject *sr = env ? PyCFunction_New(&start_response_def, (PyObject *)rs) : NULL;
    PyObject *result = NULL;
    int failed = 0;
    if (sr) {
        PyObject *args[2] = {env, sr};
        result = PyObject_Vectorcall(srv->app, args, 2, NULL);
    }
    if (result == NULL || send_result(rs, result) < 0)
        failed = 1;
    PyObject *exc = failed ? fetch_exception() : NULL;
    if (result) {
        /* PEP 3333: close() whatever happened, the client's leaving included. */
        PyObject *close = PyObject_GetAttrString(result, "close");
        if (close == NULL) {
            PyErr_Clear();
        } else {
            PyObject *res = PyObject_CallNoArgs(close);
            Py_DECREF(close);
            if (res == NULL) {
                PyObject *cexc = fetch_exception();
                if (exc == NULL) {
                    exc = cexc;
                    failed = 1;
                } else {
                    log_exception(srv, "Exception in the WSGI response's close()", cexc);
                    Py_XDECREF(cexc);
                }
            }
            Py_XDECREF(res);
        }
        Py_DECREF(result);
    }
    if (failed) {
        uv_mutex_lock(&srv->mu);
        gone = r->gone;
        uv_mutex_unlock(&srv->mu);
        log_exception_as(srv,
                         env ? "Exception in WSGI application"
                             : "Exception while building the WSGI environ",
                         exc, gone);
        if (!rs->ended)
            fail_response(rs);
    }
    Py_XDECREF(exc);
    if (rs->status == 0)
        rs->status = 500;
    uv_mutex_lock(&srv->mu);
    gone = r->gone && !r->responded;
    uv_mutex_unlock(&srv->mu);
    int end = gone ? PH_END_CLIENT_GONE : failed && rs->head_sent ? PH_END_APP_ERROR : PH_END_OK;
    access_log(srv, r, env, rs->log_headers, gone && !rs->head_sent ? 0 : rs->status, rs->bytes,
               end);
    Py_XDECREF(sr);
    Py_XDECREF(env);
    Py_DECREF(rs);
    Py_DECREF(in);
    atomic_fetch_sub(&srv->running, 1);
}

/* ====================================================================================
 * The WSGIServer type (the main thread's handle).
 * ==================================================================================== */

static void post_cmd(wsgi_server_t *srv, int cmd)
{
    uv_mutex_lock(&srv->mu);
    srv->cmd |= cmd;
    uv_mutex_unlock(&srv->mu);
    ph_mailbox_post(&srv->mb, &srv->ctl);
}

static PyObject *wsrv_work(wsgi_server_t *srv, PyObject *unused)
{
    (void)unused;
    if (!srv->q_open) {
        PyErr_SetString(PyExc_RuntimeError, "server not started");
        return NULL;
    }
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the main thread's */
    batch_scheduling();
    ph_workq_join(&srv->q);
    for (;;) {
        /* More work waiting: take it without letting go of the GIL. Handing the GIL to another
         * app thread between two requests costs two context switches (measured: 8 threads
         * served a hello app 25 % slower than 1 when each request went through the wait);
         * the others still get it when an app blocks, and every interpreter switch interval. */
        ph_work_t *w = ph_workq_try_pop(&srv->q);
        if (w == NULL) {
            Py_BEGIN_ALLOW_THREADS
                w = ph_workq_pop(&srv->q);
            Py_END_ALLOW_THREADS
            if (w == NULL)
                break;
        }
        wreq_t *r = REQ_OF(w, work);
        if (r->report)
            log_exception(srv,
                          r->report == PH_EINVAL
                              ? "WSGI response refused: its body does not match its "
                                "Content-Length, or its headers are invalid"
                              : "WSGI response could not be sent",
                          NULL);
        else
            run_request(srv, r);
        req_unref(r);
        if (PyErr_Occurred())
            PyErr_WriteUnraisable(NULL);
    }
    Py_RETURN_NONE;
}

static PyObject *wsrv_new(PyTypeObject *type, PyObject *args, PyObject *kw);

static PyObject *wsrv_listen(wsgi_server_t *srv, PyObject *args)
{
    int fd, is_unix, backlog;
    if (!PyArg_ParseTuple(args, "ipi", &fd, &is_unix, &backlog))
        return NULL;
    if (srv->closed || srv->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "listen() must come before start()");
        return NULL;
    }
    if (ph_server_add_listener(&srv->server, fd, is_unix, backlog) < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *wsrv_start(wsgi_server_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->closed || srv->server.started) {
        PyErr_SetString(PyExc_RuntimeError, "server already started (or closed)");
        return NULL;
    }
    int rv = ph_server_start(&srv->server);
    if (rv < 0) {
        PyErr_Format(PyExc_OSError, "cannot listen: %s", uv_strerror(rv));
        return NULL;
    }
    rv = uv_thread_create(&srv->thread, reactor_main, srv);
    if (rv < 0) {
        PyErr_Format(PyExc_OSError, "cannot start the reactor thread: %s", uv_strerror(rv));
        return NULL;
    }
    srv->thread_started = 1;
    Py_RETURN_NONE;
}

static PyObject *wsrv_shutdown(wsgi_server_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->thread_started && !srv->closed)
        post_cmd(srv, CMD_DRAIN);
    Py_RETURN_NONE;
}

static PyObject *wsrv_expire(wsgi_server_t *srv, PyObject *unused)
{
    (void)unused;
    if (srv->thread_started && !srv->closed)
        post_cmd(srv, CMD_EXPIRE);
    Py_RETURN_NONE;
}

/* Stops the reactor thread and closes everything (connections left are reset); the app threads
 * get no more work and end when their request does. */
static void stop(wsgi_server_t *srv)
{
    if (srv->closed)
        return;
    srv->closed = 1;
    if (srv->thread_started) {
        post_cmd(srv, CMD_STOP);
        Py_BEGIN_ALLOW_THREADS
            uv_thread_join(&srv->thread);
        Py_END_ALLOW_THREADS
        srv->thread_started = 0;
    }
    if (srv->q_open)
        ph_workq_close(&srv->q);
    /* The reactor thread is gone: this thread owns the loop now (no app thread touches it). */
    if (srv->mb_open) {
        ph_work_t *w = ph_mailbox_close(&srv->mb);
        while (w) {
            ph_work_t *next = w->next;
            if (w != &srv->ctl)
                req_unref(REQ_OF(w, mail));
            w = next;
        }
    }
    if (srv->loop_open) {
        srv->loop_open = 0;
        ph_server_close(&srv->server);
        ph_loop_close(&srv->loop);
        ph_server_free(&srv->server);
    }
    if (srv->q_open) {
        ph_work_t *w;
        while ((w = ph_workq_try_pop(&srv->q)) != NULL)
            req_unref(REQ_OF(w, work));
    }
}

static PyObject *wsrv_close(wsgi_server_t *srv, PyObject *unused)
{
    (void)unused;
    stop(srv);
    Py_RETURN_NONE;
}

static PyObject *get_connections(wsgi_server_t *srv, void *c)
{
    (void)c;
    return PyLong_FromSize_t(srv->closed ? 0 : atomic_load(&srv->conns));
}

static PyObject *get_requests(wsgi_server_t *srv, void *c)
{
    (void)c;
    return PyLong_FromSize_t(atomic_load(&srv->running));
}

static PyObject *get_streams(wsgi_server_t *srv, void *c)
{
    (void)c;
    return PyLong_FromSize_t(atomic_load(&srv->inflight));
}

static int wsrv_traverse(wsgi_server_t *srv, visitproc visit, void *arg)
{
    Py_VISIT(srv->app);
    Py_VISIT(srv->tls_held);
    Py_VISIT(srv->beat_held);
    Py_VISIT(srv->reject_held);
    Py_VISIT(srv->access_log);
    Py_VISIT(srv->log_exception);
    Py_VISIT(srv->proxy);
    Py_VISIT(srv->environ_template);
    Py_VISIT(Py_TYPE(srv));
    return 0;
}

static int wsrv_clear(wsgi_server_t *srv)
{
    Py_CLEAR(srv->app);
    Py_CLEAR(srv->access_log);
    Py_CLEAR(srv->log_exception);
    Py_CLEAR(srv->proxy);
    Py_CLEAR(srv->environ_template);
    return 0;
}

static void wsrv_dealloc(wsgi_server_t *srv)
{
    PyTypeObject *tp = Py_TYPE(srv);
    PyObject_GC_UnTrack(srv);
    stop(srv);
    if (srv->q_open)
        ph_workq_destroy(&srv->q);
    if (srv->mu_open)
        uv_mutex_destroy(&srv->mu);
    wsrv_clear(srv);
    Py_CLEAR(srv->root_path);
    Py_CLEAR(srv->tls_held);
    Py_CLEAR(srv->beat_held);
    Py_CLEAR(srv->reject_held);
    Py_CLEAR(srv->errors);
    Py_CLEAR(srv->extra_headers);
    for (int i = 0; i < PH_HNAME_SLOTS; i++)
        Py_CLEAR(srv->hkeys[i]);
    for (int i = 0; i < NKEYS; i++)
        Py_CLEAR(srv->keys[i]);
    for (int i = 0; i < 3; i++)
        Py_CLEAR(srv->protos[i]);
    for (int i = 0; i < ADDR_SLOTS; i++) {
        Py_CLEAR(srv->peers[i].host);
        Py_CLEAR(srv->peers[i].port);
    }
    Py_CLEAR(srv->local.host);
    Py_CLEAR(srv->local.port);
    tp->tp_free(srv);
    Py_DECREF(tp);
}

static PyMethodDef wsrv_methods[] = {
    {"listen", (PyCFunction)wsrv_listen, METH_VARARGS,
     "listen(fd, is_unix, backlog): serve on a bound socket (the server takes the fd)."},
    {"start", (PyCFunction)wsrv_start, METH_NOARGS, "Start the reactor thread and accept."},
    {"work", (PyCFunction)wsrv_work, METH_NOARGS,
     "Run requests until the server closes: the body of each app thread."},
    {"shutdown", (PyCFunction)wsrv_shutdown, METH_NOARGS,
     "Stop accepting; close idle connections, the rest after their response."},
    {"expire", (PyCFunction)wsrv_expire, METH_NOARGS,
     "End every exchange in flight; requests no thread has taken get a 503."},
    {"close", (PyCFunction)wsrv_close, METH_NOARGS,
     "Stop the reactor thread and release everything; app threads end after their request."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef wsrv_getset[] = {
    {"connections", (getter)get_connections, NULL, "open connections", NULL},
    {"requests", (getter)get_requests, NULL, "app calls running", NULL},
    {"streams", (getter)get_streams, NULL, "requests in flight", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot wsrv_slots[] = {
    {Py_tp_new, wsrv_new},
    {Py_tp_dealloc, wsrv_dealloc},
    {Py_tp_traverse, wsrv_traverse},
    {Py_tp_clear, wsrv_clear},
    {Py_tp_methods, wsrv_methods},
    {Py_tp_getset, wsrv_getset},
    {0, NULL},
};

static PyType_Spec wsrv_spec = {
    .name = "pronghorn._core.WSGIServer",
    .basicsize = sizeof(wsgi_server_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = wsrv_slots,
};

static PyObject *wsrv_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"app", "options", NULL};
    PyObject *app, *opts;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!", kwlist, &app, &PyDict_Type, &opts))
        return NULL;
    wsgi_server_t *srv = (wsgi_server_t *)type->tp_alloc(type, 0);
    if (srv == NULL)
        return NULL;
    srv->st = PyType_GetModuleState(type);
    srv->app = Py_NewRef(app);
    atomic_init(&srv->conns, 0);
    atomic_init(&srv->inflight, 0);
    atomic_init(&srv->running, 0);
    int rv = uv_mutex_init(&srv->mu);
    if (rv < 0)
        goto uv_fail;
    srv->mu_open = 1;
    rv = ph_workq_init(&srv->q);
    if (rv < 0)
        goto uv_fail;
    srv->q_open = 1;
    rv = ph_loop_init(&srv->loop);
    if (rv < 0)
        goto uv_fail;
    srv->loop_open = 1;
    srv->loop.host = srv;
    rv = ph_mailbox_init(&srv->mb, &srv->loop.uv, on_mail);
    if (rv < 0)
        goto uv_fail;
    srv->mb_open = 1;
    srv->mb.data = srv;
    uv_timer_init(&srv->loop.uv, &srv->nudge); /* closed with the loop */
    srv->nudge.data = srv;
    ph_server_init(&srv->server, &srv->loop);
    srv->server.host = srv;
    srv->server.on_conn = ph_attach_protocol;
    srv->server.on_stream = on_stream;
    if (ph_server_options(&srv->server, opts, &srv->extra_headers, &srv->root_path) < 0 ||
        ph_pytls_server_options(srv->st, &srv->server, opts, &srv->tls_held) < 0 ||
        ph_beat_options(&srv->server, opts, &srv->beat_held) < 0 ||
        ph_reject_options(&srv->server, opts, &srv->reject_held) < 0)
        goto fail;
    PyObject *v = PyDict_GetItemString(opts, "access_log");
    srv->access_log = v && v != Py_None ? Py_NewRef(v) : NULL;
    v = PyDict_GetItemString(opts, "access_log_headers");
    if (v && (srv->log_headers = PyObject_IsTrue(v)) < 0)
        goto fail;
    v = PyDict_GetItemString(opts, "log_exception");
    srv->log_exception = v && v != Py_None ? Py_NewRef(v) : NULL;
    v = PyDict_GetItemString(opts, "proxy");
    srv->proxy = v && v != Py_None ? Py_NewRef(v) : NULL;
    v = PyDict_GetItemString(opts, "errors");
    srv->errors = v ? Py_NewRef(v) : PySys_GetObject("stderr");
    if (srv->errors == NULL || srv->log_exception == NULL) {
        PyErr_SetString(PyExc_TypeError, "options need log_exception (and errors, or sys.stderr)");
        goto fail;
    }
    if (!v)
        Py_INCREF(srv->errors);
    for (int i = 0; i < NKEYS; i++)
        if ((srv->keys[i] = PyUnicode_InternFromString(key_names[i])) == NULL)
            goto fail;
    static const char *const protos[3] = {"HTTP/1.0", "HTTP/1.1", "HTTP/2"};
    for (int i = 0; i < 3; i++)
        if ((srv->protos[i] = PyUnicode_InternFromString(protos[i])) == NULL)
            goto fail;
    PyObject *t = PyDict_New();
    srv->environ_template = t;
    if (t == NULL)
        goto fail;
    for (int i = 0; i < K_PER_REQUEST; i++) /* placeholders: every request sets them */
        if (PyDict_SetItem(t, srv->keys[i], Py_None) < 0)
            goto fail;
    PyObject *version = Py_BuildValue("(ii)", 1, 0);
    v = PyDict_GetItemString(opts, "multiprocess");
    int mp = v ? PyObject_IsTrue(v) : 0;
    if (version == NULL || mp < 0 || PyDict_SetItemString(t, "wsgi.version", version) < 0 ||
        PyDict_SetItemString(t, "wsgi.errors", srv->errors) < 0 ||
        PyDict_SetItemString(t, "wsgi.multithread", Py_True) < 0 ||
        PyDict_SetItemString(t, "wsgi.multiprocess", mp ? Py_True : Py_False) < 0 ||
        PyDict_SetItemString(t, "wsgi.run_once", Py_False) < 0 ||
        PyDict_SetItemString(t, "wsgi.input_terminated", Py_True) < 0 ||
        PyDict_SetItemString(t, "wsgi.file_wrapper", (PyObject *)srv->st->file_wrapper_type) < 0 ||
        PyDict_SetItemString(t, "SCRIPT_NAME", srv->root_path) < 0 ||
        set_obj(t, "SERVER_SOFTWARE", PyUnicode_FromString("pronghorn")) < 0) {
        Py_XDECREF(version);
        goto fail;
    }
    Py_DECREF(version);
    return (PyObject *)srv;
uv_fail:
    PyErr_Format(PyExc_OSError, "cannot set up the WSGI server: %s", uv_strerror(rv));
fail:
    Py_DECREF(srv);
    return NULL;
}

int ph_wsgi_init_types(PyObject *m, ph_state_t *st)
{
    st->wsgi_input_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &input_spec, NULL);
    if (st->wsgi_input_type == NULL)
        return -1;
    st->wsgi_responder_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &responder_spec, NULL);
    if (st->wsgi_responder_type == NULL)
        return -1;
    st->file_wrapper_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &fw_spec, NULL);
    if (st->file_wrapper_type == NULL || PyModule_AddType(m, st->file_wrapper_type) < 0)
        return -1;
    st->wsgi_server_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &wsrv_spec, NULL);
    if (st->wsgi_server_type == NULL || PyModule_AddType(m, st->wsgi_server_type) < 0)
        return -1;
    return 0;
}
