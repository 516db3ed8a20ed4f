/* Listening sockets: accepts connections and hands each to the server's on_conn hook. The
 * sockets are bound by the caller (Python binds host/port/uds/fd) and passed in as fds. */
#ifndef PH_LISTENER_H
#define PH_LISTENER_H

#include "conn.h"

typedef struct ph_listener_s {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    ph_server_t *server;
    int fd, is_unix, backlog;
    int open;
} ph_listener_t;

/* Starts listening on fd (a bound socket, TCP or Unix; the listener owns it from now on).
 * 0 or a negative libuv error. */
int ph_listener_start(ph_listener_t *l, ph_server_t *server, int fd, int is_unix, int backlog);

/* Stops accepting and closes the socket; the struct must live until on_closed is called. */
void ph_listener_close(ph_listener_t *l, void (*on_closed)(uv_handle_t *));

#endif
