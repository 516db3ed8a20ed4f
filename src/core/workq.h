/* Hand-offs between the reactor thread and the threads that run WSGI apps. Plain C (no Python):
 * a queue the app threads wait on for work, and a mailbox that wakes the reactor for what they
 * send back. Neither ever calls into a protocol: what a mailbox delivers is handled on the
 * reactor's own thread, so no stream op runs anywhere else. */
#ifndef PH_WORKQ_H
#define PH_WORKQ_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* An item that can sit in a queue or a mailbox (embedded in the owner's struct). */
typedef struct ph_work_s ph_work_t;
struct ph_work_s {
    ph_work_t *next;
    int posted; /* in a mailbox (guarded by its lock) */
};

/* Many producers, many consumers; consumers block while it is empty.
 *
 * Waking a consumer costs a context switch, and when the consumers share one lock (the GIL)
 * a second one only helps if the first is blocked (in I/O). So a push wakes a consumer only
 * when none is busy; otherwise the busy ones take the item when they come back, and the
 * producer calls ph_workq_nudge() periodically while items wait: when no item was taken
 * since the last nudge, the busy consumers are stuck and idle ones are woken. */
typedef struct {
    uv_mutex_t mu;
    uv_cond_t cond;
    ph_work_t *head, *tail;
    size_t len;
    size_t busy, idle; /* consumers with work / waiting for it */
    size_t waking;     /* idle ones signalled that have not run yet */
    uint64_t taken, taken_at_nudge;
    int closed;
} ph_workq_t;

/* 0 or a negative libuv error. */
int ph_workq_init(ph_workq_t *q);
void ph_workq_destroy(ph_workq_t *q);

/* Appends w; wakes a waiting consumer when none is busy. 1 when the item is left to busy
 * consumers (the caller must nudge while items wait), 0 otherwise, or PH_ECLOSED (w not taken)
 * once closed. */
int ph_workq_push(ph_workq_t *q, ph_work_t *w);

/* A consumer thread starts (it counts as busy until it first waits in ph_workq_pop()). */
void ph_workq_join(ph_workq_t *q);

/* A consumer with nothing to do: the oldest item, waiting for one while the queue is open and
 * empty; NULL once it is closed and empty (the consumer is then gone). */
ph_work_t *ph_workq_pop(ph_workq_t *q);

/* A busy consumer's next item if there is one, without waiting; NULL otherwise. Also what a
 * producer uses to take items back. */
ph_work_t *ph_workq_try_pop(ph_workq_t *q);

/* Called by the producer every millisecond or so while ph_workq_push() said so: wakes idle
 * consumers for waiting items when no item was taken since the last call. 1 while items
 * wait (call again), 0 when the queue is empty. */
int ph_workq_nudge(ph_workq_t *q);

/* No more pushes; every consumer waiting (or coming) gets NULL once the queue is empty. */
void ph_workq_close(ph_workq_t *q);

/* Items waiting (a snapshot). */
size_t ph_workq_len(ph_workq_t *q);

typedef struct ph_mailbox_s ph_mailbox_t;

/* Any thread posts items; the loop's thread receives each once per posting in on_mail, in the
 * order posted. An item posted again before it was delivered is delivered once. */
struct ph_mailbox_s {
    uv_async_t async;
    uv_mutex_t mu;
    ph_work_t *head, *tail;
    int closed;
    void (*on_mail)(ph_mailbox_t *mb, ph_work_t *w);
    void *data; /* the owner's */
};

/* On the loop's thread. 0 or a negative libuv error. */
int ph_mailbox_init(ph_mailbox_t *mb, uv_loop_t *loop,
                    void (*on_mail)(ph_mailbox_t *mb, ph_work_t *w));

/* From any thread: queues w for delivery and wakes the loop. 1 when w was queued now, 0 when it
 * was already waiting, PH_ECLOSED once the mailbox is closed (w not taken). */
int ph_mailbox_post(ph_mailbox_t *mb, ph_work_t *w);

/* On the loop's thread: no more deliveries; returns what was still waiting (a list through
 * ->next, their posted flags cleared) for the owner to release. The handle closes with the
 * loop. */
ph_work_t *ph_mailbox_close(ph_mailbox_t *mb);

#endif
