/* What every connection of one server shares: its limits and timeouts, its open connections,
 * and the hooks the top layer wires in (which protocol runs on a new connection, which bridge
 * gets a new stream). Plain data; no behaviour of its own. */
#ifndef PH_SERVER_H
#define PH_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "loop.h"
#include "util.h"

typedef struct ph_conn_s ph_conn_t;
typedef struct ph_stream_s ph_stream_t;
typedef struct ph_server_s ph_server_t;

#define PH_RBUF_SIZE 16384
#define PH_BLOCK_SIZE 2048

typedef struct {
    uint64_t timeout_keep_alive_ms;     /* idle between requests; 0 = none */
    uint64_t timeout_request_header_ms; /* from the first byte of a request to its last header */
    uint64_t timeout_write_ms;          /* no write progress for this long drops the client */
    size_t limit_request_line;          /* bytes of the request target, 414 beyond */
    size_t limit_request_headers;       /* count, 431 beyond */
    size_t limit_request_header_size;   /* bytes of all names and values, 431 beyond */
    uint64_t limit_request_body;        /* bytes, 413 beyond; 0 = none */
    size_t limit_concurrency;           /* streams in flight, 503 beyond; 0 = none */
    size_t limit_max_connections;       /* open connections, 503 and close beyond; 0 = none */
    int server_header;                  /* add "server: pronghorn" */
    int date_header;                    /* add "date: ..." */
    ph_slice_t extra_headers;           /* pre-serialised "name: value\r\n" lines, added to every response */
    size_t write_high_water;            /* a stream waits for drain above this many queued bytes */
} ph_config_t;

struct ph_server_s {
    ph_loop_t *loop;
    ph_config_t cfg;
    /* Called for every accepted connection: attach a protocol (sets conn->proto). Returns 0, or
     * a negative error to close the connection at once. */
    int (*on_conn)(ph_server_t *server, ph_conn_t *conn);
    /* Called when a protocol has a complete request head: the bridge takes the stream. */
    void (*on_stream)(ph_server_t *server, ph_stream_t *stream);
    void *host; /* the bridge's server object */
    ph_conn_t *conns; /* every open connection (intrusive list) */
    size_t nconns;
    size_t nstreams; /* streams handed to the bridge and not yet released */
    int draining;    /* shutting down: finish what is in flight, take nothing new */
    ph_pool_t rbufs;  /* connections' read buffers (PH_RBUF_SIZE), taken while there is input */
    ph_pool_t blocks; /* protocols' per-request buffers (PH_BLOCK_SIZE), taken while busy */
};

/* Frees the pools (after every connection is gone). */
static inline void ph_server_clear_pools(ph_server_t *server)
{
    ph_pool_clear(&server->rbufs);
    ph_pool_clear(&server->blocks);
}

#endif
