#include "loop.h"

#include <stddef.h>

int ph_loop_init(ph_loop_t *loop)
{
    loop->in_tick = 0;
    loop->kick_pending = 0;
    loop->host_deadline = UINT64_MAX;
    loop->defer_head = loop->defer_tail = NULL;
    loop->kick = NULL;
    loop->set_timer = NULL;
    loop->host = NULL;
    return uv_loop_init(&loop->uv);
}

/* libuv queues watcher changes on loop->watcher_queue and applies them only at its next poll.
 * The queue head is the first member of that field in every libuv 1.x (void*[2] before 1.45,
 * struct uv__queue after), so an empty queue points at itself. */
static int watchers_dirty(uv_loop_t *uv)
{
    void **q = (void **)&uv->watcher_queue;
    return q[0] != (void *)q;
}

static int needs_run(ph_loop_t *loop)
{
    if (!uv_loop_alive(&loop->uv))
        return 0;
    return watchers_dirty(&loop->uv) || uv_backend_timeout(&loop->uv) == 0;
}

/* Runs as many entries as were queued when it started, each taken off the live queue just
 * before it runs: a callback may cancel one still waiting (its owner going away) or queue
 * more (they run in the caller's next round), and the queue stays whole. */
static void run_deferred(ph_loop_t *loop)
{
    size_t n = 0;
    for (ph_defer_t *d = loop->defer_head; d; d = d->next)
        n++;
    while (n-- > 0 && loop->defer_head) {
        ph_defer_t *d = loop->defer_head;
        loop->defer_head = d->next;
        if (loop->defer_head == NULL)
            loop->defer_tail = NULL;
        d->next = NULL;
        d->queued = 0;
        d->cb(d);
    }
}

static void kick(ph_loop_t *loop)
{
    if (loop->kick_pending || !loop->kick)
        return;
    loop->kick_pending = 1;
    loop->kick(loop);
}

/* The host's timer must not be later than libuv's next timer: a timer armed earlier than the
 * one the host waits for (a keep-alive after an async response) would otherwise fire late. */
static void sync_host_timer(ph_loop_t *loop)
{
    if (!loop->set_timer || !uv_loop_alive(&loop->uv))
        return;
    if (!loop->in_tick)
        uv_update_time(&loop->uv); /* from app code: the loop's clock may be stale */
    int ms = uv_backend_timeout(&loop->uv);
    if (ms < 0)
        return;
    if (ms == 0) {
        kick(loop);
        return;
    }
    uint64_t deadline = uv_now(&loop->uv) + (uint64_t)ms;
    if (deadline >= loop->host_deadline)
        return;
    loop->host_deadline = deadline;
    loop->set_timer(loop, (uint64_t)ms);
}

void ph_loop_timer_fired(ph_loop_t *loop)
{
    loop->host_deadline = UINT64_MAX;
}

void ph_loop_tick(ph_loop_t *loop)
{
    loop->in_tick = 1;
    loop->kick_pending = 0;
    /* Bounded: a loop that keeps itself busy is resumed through the host instead of starving
     * the host's other work. */
    for (int i = 0; i < 16; i++) {
        uv_run(&loop->uv, UV_RUN_NOWAIT);
        if (loop->defer_head)
            run_deferred(loop);
        if (!needs_run(loop) && !loop->defer_head)
            break;
    }
    if (needs_run(loop) || loop->defer_head)
        kick(loop);
    sync_host_timer(loop);
    loop->in_tick = 0;
}

void ph_loop_touch(ph_loop_t *loop)
{
    if (loop->in_tick)
        return; /* the tick syncs the host when it ends */
    if (needs_run(loop) || loop->defer_head)
        kick(loop);
    else
        sync_host_timer(loop);
}

void ph_loop_defer(ph_loop_t *loop, ph_defer_t *d)
{
    if (d->queued)
        return;
    d->queued = 1;
    d->next = NULL;
    if (loop->defer_tail)
        loop->defer_tail->next = d;
    else
        loop->defer_head = d;
    loop->defer_tail = d;
    if (!loop->in_tick)
        kick(loop);
}

void ph_loop_cancel(ph_loop_t *loop, ph_defer_t *d)
{
    if (!d->queued)
        return;
    ph_defer_t **pp = &loop->defer_head, *prev = NULL;
    while (*pp) {
        if (*pp == d) {
            *pp = d->next;
            if (loop->defer_tail == d)
                loop->defer_tail = prev;
            break;
        }
        prev = *pp;
        pp = &(*pp)->next;
    }
    d->queued = 0;
    d->next = NULL;
}

void ph_loop_run_once(ph_loop_t *loop)
{
    loop->in_tick = 1;
    uv_run(&loop->uv, loop->defer_head ? UV_RUN_NOWAIT : UV_RUN_ONCE);
    if (loop->defer_head)
        run_deferred(loop);
    loop->in_tick = 0;
}

int ph_loop_fd(ph_loop_t *loop)
{
    return uv_backend_fd(&loop->uv);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int ph_loop_close(ph_loop_t *loop)
{
    uv_walk(&loop->uv, close_walk, NULL);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    return uv_loop_close(&loop->uv);
}
