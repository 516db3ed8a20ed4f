/* Listening sockets: accepts connections and hands each to the server's on_conn hook. The
 * sockets are bound by the caller (Python binds host/port/uds/fd) and passed in as fds. */
#ifndef PH_LISTENER_H
#define PH_LISTENER_H

#include "conn.h"

struct ph_listener_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    ph_server_t *server;
    int fd; /* ours until the handle takes it; -1 once it is the handle's or closed */
    int is_unix, backlog;
    int has_handle; /* h was initialised (it must be closed through libuv) */
    /* Accept balancing (server.h): paused, libuv holds at most one accepted connection
     * (held) and stops polling until it is taken; the timer ends the pause. */
    int paused, held, has_timer;
    uv_timer_t pause;
};

/* Starts listening on l->fd (a bound socket, TCP or Unix). 0 or a negative libuv error; on
 * error the fd is closed too (call ph_listener_close() for the handle). */
int ph_listener_start(ph_listener_t *l, ph_server_t *server);

/* Stops accepting and closes the socket (also one never started); idempotent. A connection
 * held back by accept balancing is taken first, so that closing the socket does not reset it. The
 * struct must live until libuv has closed the handle (ph_loop_close()). */
void ph_listener_close(ph_listener_t *l);

#endif
