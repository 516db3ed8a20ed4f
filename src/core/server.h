/* What every connection of one server shares: its limits and timeouts, its listeners and open
 * connections, and the hooks the top layer wires in (which protocol runs on a new connection,
 * which bridge gets a new stream); and the server's life cycle, so a bridge never walks the
 * connections or the listeners itself. */
#ifndef PH_SERVER_H
#define PH_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "util.h"

typedef struct ph_conn_s ph_conn_t;
typedef struct ph_stream_s ph_stream_t;
typedef struct ph_server_s ph_server_t;
typedef struct ph_listener_s ph_listener_t;
struct ph_tls_ctx_s;
struct sockaddr_storage;

#define PH_RBUF_SIZE 16384
#define PH_BLOCK_SIZE 2048
#define PH_CORK_SIZE 16384

typedef struct {
    uint64_t timeout_keep_alive_ms;     /* idle between requests; 0 = none */
    uint64_t timeout_request_header_ms; /* from the first byte of a request to its last header */
    uint64_t timeout_request_body_ms;   /* no body progress for this long while reading it */
    uint64_t timeout_write_ms;          /* no write progress for this long drops the client */
    uint64_t linger_ms;                 /* after our FIN, read and drop input this long at most */
    size_t limit_request_line;          /* bytes of the request target, 414 beyond */
    size_t limit_request_headers;       /* count, 431 beyond */
    size_t limit_request_header_size;   /* bytes of all names and values, 431 beyond */
    uint64_t limit_request_body;        /* bytes, 413 beyond; 0 = none */
    size_t limit_concurrency;           /* streams in flight, 503 beyond; 0 = none */
    size_t limit_max_connections;       /* open connections, 503 and close beyond; 0 = none */
    int server_header;                  /* add server_line unless the app sent a Server */
    ph_slice_t server_line;             /* "server: <value>\r\n" (pronghorn, or --header Server) */
    int date_header;                    /* add "date: ..." */
    ph_slice_t extra_headers; /* pre-serialised "name: value\r\n" lines, added to every response */
    size_t write_high_water;  /* a stream waits for drain above this many queued bytes */
    int http; /* PH_HTTP_AUTO (HTTP/1.1 and h2c on one port), PH_HTTP_1, PH_HTTP_2 */
    uint32_t h2_max_concurrent_streams;
    uint32_t h2_initial_window_size;  /* each stream's receive window (bytes held per stream) */
    uint32_t h2_max_header_list_size; /* advertised and enforced (431 beyond); 0 = as HTTP/1 */
    uint32_t h2_max_frame_size;       /* the largest frame we accept (16384 .. 16777215) */
    /* WebSockets: ws 0 serves an upgrade request as plain HTTP; the rest is the bridge's. */
    int ws;
    int ws_deflate;       /* offer to agree on permessage-deflate */
    uint64_t ws_max_size; /* biggest message taken, bytes (1009 beyond) */
    size_t ws_max_queue;  /* messages held for the app before reading stops */
    uint64_t ws_ping_interval_ms, ws_ping_timeout_ms; /* 0: no pings / no timeout */
} ph_config_t;

enum { PH_HTTP_AUTO, PH_HTTP_1, PH_HTTP_2 };

/* Why a request was answered below the app (or the bridge's own 503 at a limit). */
enum {
    PH_REJECT_NONE,
    PH_REJECT_MALFORMED,   /* 400 */
    PH_REJECT_TIMEOUT,     /* 408: the head or the body stopped coming */
    PH_REJECT_BODY,        /* 413 */
    PH_REJECT_TARGET,      /* 414 */
    PH_REJECT_HEADERS,     /* 431 */
    PH_REJECT_METHOD,      /* 501: a method or a coding not implemented */
    PH_REJECT_VERSION,     /* 505, 426 */
    PH_REJECT_CONCURRENCY, /* 503 at --limit-concurrency */
    PH_REJECT_CONNECTIONS, /* 503 at --limit-max-connections */
    PH_REJECT_SHUTDOWN,    /* 503 at the shutdown deadline */
    PH_REJECT_OTHER,       /* 500 below the app (out of memory) */
    PH_REJECTS
};

/* How an exchange ended. */
enum {
    PH_END_OK,          /* the response went out whole */
    PH_END_CLIENT_GONE, /* the client left (or broke the protocol) before it was whole */
    PH_END_APP_ERROR,   /* the app raised after bytes had left: cut short */
    PH_END_CANCELLED,   /* the app's task was cancelled (at the shutdown deadline, or by itself) */
    PH_END_INCOMPLETE,  /* the app returned without finishing the response */
    PH_END_REJECTED,    /* answered below the app (reject says why) */
    PH_ENDS
};

/* One exchange, as the access log and the counters see it. */
typedef struct {
    ph_slice_t method, target; /* as far as they were read; empty: not at all */
    int version;               /* 10, 11 or 20 */
    int status;                /* what the client got; 0: no status line left */
    int end;                   /* PH_END_* */
    int reject;                /* PH_REJECT_*, with PH_END_REJECTED */
    uint64_t bytes_in;         /* request body bytes received */
    uint64_t bytes_out;        /* response body bytes sent */
    double seconds;            /* from the complete head (or the first byte) to the end */
} ph_exchange_t;

/* The reject reason a status answered below the app stands for. */
int ph_reject_reason(int status);

#define PH_METRIC_METHODS 8  /* GET HEAD POST PUT DELETE PATCH OPTIONS, then the rest */
#define PH_METRIC_BUCKETS 14 /* request durations: see ph_metric_bounds_us */
enum { PH_PROTO_HTTP1, PH_PROTO_HTTP2, PH_PROTO_WEBSOCKET, PH_PROTOS };

/* Counters for --metrics-bind, kept by the reactor next to its heartbeat (in the page a
 * supervisor reads, or a page of a single process's own). Each is written whole by the reactor
 * alone; readers take them without a lock. */
typedef struct {
    uint64_t responses[PH_METRIC_METHODS][6]; /* by method and status class ([0]: no status) */
    uint64_t duration[PH_METRIC_BUCKETS];     /* per bucket, not cumulative; the last is +Inf */
    uint64_t duration_sum_us;
    uint64_t ends[PH_ENDS];
    uint64_t rejected[PH_REJECTS];
    uint64_t app_errors;
    uint64_t conns_total;           /* accepted since the start */
    uint64_t conns_open[PH_PROTOS]; /* open, by what they speak now */
    uint64_t bytes_in, bytes_out;   /* on the wire (after TLS), both ways */
    uint64_t loop_lag_us;           /* how late the last heartbeat ran */
} ph_metrics_t;

/* The upper bounds of the duration buckets, in microseconds (the last one is +Inf). */
extern const uint64_t ph_metric_bounds_us[PH_METRIC_BUCKETS];

/* What a supervised worker's reactor publishes to its supervisor, in memory both share: a
 * heartbeat (it stops when the event loop is stuck) and what the worker serves. Word-sized
 * fields, each written whole; the supervisor reads them without a lock. */
typedef struct {
    uint64_t beat_ns;   /* CLOCK_MONOTONIC at the reactor's last beat; 0 before the first */
    uint64_t requests;  /* requests opened since the start */
    uint64_t streams;   /* requests in flight */
    uint64_t conns;     /* open connections, kept current (accept balancing reads it) */
    uint64_t accepting; /* 1 while the worker accepts from the shared sockets */
    char last[88];      /* "METHOD target" of the last request opened, cut short, NUL-ended */
    ph_metrics_t m;
} ph_beat_t;

/* Workers on one shared listening socket would otherwise take connections as the kernel wakes
 * them, which is by chance: one worker took all 64 of wrk's connections in one measured start
 * (README, Workers). With peers set, a worker with more than PH_ACCEPT_SLACK connections above
 * the least-loaded accepting peer stops accepting for PH_ACCEPT_PAUSE_MS, holding at most one
 * accepted connection meanwhile. */
#define PH_ACCEPT_SLACK 1
/* Once a drain starts, how long a connection with nothing in flight (just accepted, in its TLS
 * handshake, or idle between requests) may stay for the request its client may be sending. */
#define PH_DRAIN_IDLE_MS 1000
#define PH_ACCEPT_PAUSE_MS 2

struct ph_server_s {
    ph_loop_t *loop;
    ph_config_t cfg;
    /* Called for every accepted connection: attach a protocol (sets conn->proto). Returns 0, or
     * a negative error to close the connection at once. */
    int (*on_conn)(ph_server_t *server, ph_conn_t *conn);
    /* Called when a protocol has a complete request head: the bridge takes the stream. */
    void (*on_stream)(ph_server_t *server, ph_stream_t *stream);
    void *host;       /* the bridge's server object */
    ph_conn_t *conns; /* every open connection (intrusive list) */
    size_t nconns;
    size_t nstreams;  /* streams handed to the bridge and not yet released */
    int draining;     /* shutting down: finish what is in flight, take nothing new */
    int drain_queued; /* ph_server_drain() was called; the drain runs after a poll */
    ph_defer_t drain_work;
    ph_listener_t *listeners; /* fixed once started: libuv holds the handles by address */
    size_t nlisteners;
    int started;
    ph_pool_t rbufs;  /* connections' read buffers (PH_RBUF_SIZE), taken while there is input */
    ph_pool_t blocks; /* protocols' per-request buffers (PH_BLOCK_SIZE), taken while busy */
    /* While a connection's input is handled, what it writes gathers here (PH_CORK_SIZE) and
     * leaves in one write afterwards: pipelined requests answered at once share a syscall. One
     * connection at a time (input is handled one connection at a time), so one buffer. */
    char *cork;
    size_t cork_len;
    ph_conn_t *corked;
    /* Set: every connection speaks TLS, the handshake first (bounded by the header timeout),
     * then the protocol ALPN chose. The server does not own it. */
    struct ph_tls_ctx_s *tls;
    char *tls_in; /* ciphertext read buffer (PH_RBUF_SIZE), decrypted at once, so shared */
    /* A line about a connection (opened, closed and why, a failed TLS handshake); NULL: not
     * wanted (--log-level debug sets it). */
    void (*debug)(ph_server_t *server, ph_conn_t *conn, const char *what);
    void *debug_data;
    /* An exchange answered below the bridge (ph_server_reject): its access log line. */
    void (*on_reject)(ph_server_t *server, const struct sockaddr_storage *peer,
                      const ph_exchange_t *x);
    void *reject_data;
    uint64_t nrequests; /* streams opened since the start */
    /* Set (before ph_server_start): the reactor beats into it every beat_ms; the server does
     * not own it. */
    ph_beat_t *beat;
    uint64_t beat_ms;
    /* Set with beat: every worker's page (npeers of them, peer_size bytes apart, beat among
     * them), for accept balancing. */
    const char *peers;
    size_t npeers, peer_size;
    /* --max-requests: when the max_requests-th request opens, one byte ('M') goes to retire_fd
     * (the supervisor's pipe), which replaces the worker. 0: no limit. */
    uint64_t max_requests;
    int retire_fd;
    uv_timer_t beat_timer;
    int beat_open;
};

/* Prepares a server on loop with safe defaults in cfg; the caller sets the hooks and config. */
void ph_server_init(ph_server_t *server, ph_loop_t *loop);

/* Adds a bound socket (TCP or Unix) to listen on from ph_server_start(); the server owns the
 * fd from now on. 0, PH_ESTATE once started, or PH_ENOMEM. */
int ph_server_add_listener(ph_server_t *server, int fd, int is_unix, int backlog);

/* Starts accepting on every listener. On failure nothing is left listening: the listeners
 * that started are closed again, every fd is closed, and the error (libuv's) is returned;
 * the server cannot be started again. */
int ph_server_start(ph_server_t *server);

/* Publishes server->nconns to the supervisor's page, if there is one. */
static inline void ph_server_count_conns(ph_server_t *server)
{
    if (server->beat)
        __atomic_store_n(&server->beat->conns, (uint64_t)server->nconns, __ATOMIC_RELAXED);
}

/* Whether this worker holds more connections than its fair share (see PH_ACCEPT_SLACK). */
int ph_server_over_share(const ph_server_t *server);

/* A protocol has a complete request head on s: counts it and hands it to the bridge
 * (on_stream). */
void ph_server_open_stream(ph_server_t *server, ph_stream_t *s);

/* Counts an exchange that ended (the bridges call it for theirs). */
void ph_server_count(ph_server_t *server, const ph_exchange_t *x);

/* An exchange answered below the bridge (or by the bridge before any app saw it): counted, and
 * given to on_reject. peer: the client's address. */
void ph_server_reject(ph_server_t *server, const struct sockaddr_storage *peer,
                      const ph_exchange_t *x);

/* --limit-concurrency reached: a bridge's 503 for s, logged and counted as a rejection. */
void ph_server_refuse_busy(ph_server_t *server, ph_stream_t *s);

/* Counts wire bytes, connections and what they speak, when there are counters. */
static inline void ph_server_count_bytes(ph_server_t *server, uint64_t in, uint64_t out)
{
    if (server->beat) {
        server->beat->m.bytes_in += in;
        server->beat->m.bytes_out += out;
    }
}

static inline void ph_server_count_proto(ph_server_t *server, int from, int to)
{
    if (server->beat) {
        if (from >= 0)
            server->beat->m.conns_open[from]--;
        if (to >= 0)
            server->beat->m.conns_open[to]++;
    }
}

static inline void ph_server_count_app_error(ph_server_t *server)
{
    if (server->beat)
        server->beat->m.app_errors++;
}

/* A line for --log-level debug about conn, when wanted. */
static inline void ph_server_debug(ph_server_t *server, ph_conn_t *conn, const char *what)
{
    if (server->debug)
        server->debug(server, conn, what);
}

/* Graceful shutdown: stop accepting; idle connections close now, busy ones after their
 * exchange. It happens in the next tick, after libuv polled once more: connections already
 * waiting in the backlog are taken and input already waiting is read first, so what a client
 * sent before the drain was asked for is answered. */
void ph_server_drain(ph_server_t *server);

/* The graceful time is up: every connection ends what it has in flight (a request not yet
 * answered gets its answer and a close, a response cut short a reset); what is then queued
 * still drains. */
void ph_server_expire(ph_server_t *server);

/* Closes every listener and resets every connection now. Then ph_loop_close(), then
 * ph_server_free(). */
void ph_server_close(ph_server_t *server);

/* Frees what the server holds: the listener array, fds never started, the buffer pools. */
void ph_server_free(ph_server_t *server);

#endif
