/* The reactor: a libuv loop driven in steps by a host event loop (asyncio) instead of uv_run's
 * own blocking wait. The host watches ph_loop_fd() for readability and calls ph_loop_tick() when
 * it is readable, when ph_loop_t.kick asks for a tick, and when the timer that
 * ph_loop_t.set_timer asked for is due (then after ph_loop_timer_fired()). */
#ifndef PH_LOOP_H
#define PH_LOOP_H

#include <stdint.h>

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
    uint64_t host_deadline; /* loop time the host's timer fires at; UINT64_MAX when none */
    ph_defer_t *defer_head, *defer_tail;
    /* Set by the host. kick: call ph_loop_tick() soon (at most once until the next tick
     * starts). set_timer: call ph_loop_timer_fired() and ph_loop_tick() in ms milliseconds,
     * replacing the timer asked for before (only ever moved earlier). */
    void (*kick)(ph_loop_t *loop);
    void (*set_timer)(ph_loop_t *loop, uint64_t ms);
    void *host;
};

/* 0 or a negative libuv error. */
int ph_loop_init(ph_loop_t *loop);

/* Runs libuv without blocking until no watcher change or pending callback is left (libuv only
 * applies watcher changes at the start of its next poll), then the deferred work; then makes
 * sure the host's timer is at or before libuv's next timer. */
void ph_loop_tick(ph_loop_t *loop);

/* The host's timer fired (it is gone now); call before ph_loop_tick(). */
void ph_loop_timer_fired(ph_loop_t *loop);

/* Call after starting or changing a watcher or a timer from outside a tick (e.g. from app
 * code): a tick follows if libuv has work, and the host's timer follows a timer that is now
 * due earlier. Cheap when a tick is running or nothing moved. */
void ph_loop_touch(ph_loop_t *loop);

/* Queues d to run in the next tick (once, however often it is queued). */
void ph_loop_defer(ph_loop_t *loop, ph_defer_t *d);

/* Removes d from the queue if it is there (before its owner is freed). */
void ph_loop_cancel(ph_loop_t *loop, ph_defer_t *d);

int ph_loop_fd(ph_loop_t *loop);

/* For a reactor on a thread of its own (no host loop; kick and set_timer stay NULL): waits in
 * libuv until something happens (not at all when deferred work is queued), handles it, then runs
 * the deferred work. The caller loops on it until it decides to stop. */
void ph_loop_run_once(ph_loop_t *loop);

/* Closes every handle still open and runs the loop until they are gone; 0 or a libuv error. */
int ph_loop_close(ph_loop_t *loop);

#endif
