/* The reactor: a libuv loop driven in steps by a host event loop (asyncio) instead of uv_run's
 * own blocking wait. The host watches ph_loop_fd() for readability and calls ph_loop_tick() when
 * it is readable, when a timer the tick asked for is due, and when ph_loop_t.kick asks for it. */
#ifndef PH_LOOP_H
#define PH_LOOP_H

#include <uv.h>

typedef struct ph_loop_s ph_loop_t;
typedef struct ph_defer_s ph_defer_t;

/* Work to run at the next tick, outside any caller's stack (e.g. resuming a parser). */
struct ph_defer_s {
    ph_defer_t *next;
    void (*cb)(ph_defer_t *d);
    int queued;
};

struct ph_loop_s {
    uv_loop_t uv;
    int in_tick;
    int kick_pending;
    ph_defer_t *defer_head, *defer_tail;
    /* Asks the host to call ph_loop_tick() soon; set by the host. Called at most once until the
     * next tick starts. */
    void (*kick)(ph_loop_t *loop);
    void *host;
};

/* 0 or a negative libuv error. */
int ph_loop_init(ph_loop_t *loop);

/* Runs libuv without blocking until no watcher change or pending callback is left (libuv only
 * applies watcher changes at the start of its next poll), then the deferred work. Returns the
 * milliseconds until libuv's next timer is due, or -1 if none. */
int ph_loop_tick(ph_loop_t *loop);

/* Call after starting or changing a watcher from outside a tick (e.g. from app code): makes
 * sure a tick follows. Cheap when a tick is already running or asked for. */
void ph_loop_touch(ph_loop_t *loop);

/* Queues d to run in the next tick (once, however often it is queued). */
void ph_loop_defer(ph_loop_t *loop, ph_defer_t *d);

/* Removes d from the queue if it is there (before its owner is freed). */
void ph_loop_cancel(ph_loop_t *loop, ph_defer_t *d);

int ph_loop_fd(ph_loop_t *loop);

/* Closes every handle still open and runs the loop until they are gone; 0 or a libuv error. */
int ph_loop_close(ph_loop_t *loop);

#endif
