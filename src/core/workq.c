#include "workq.h"

#include "util.h"

int ph_workq_init(ph_workq_t *q)
{
    q->head = q->tail = NULL;
    q->len = 0;
    q->busy = q->idle = q->waking = 0;
    q->taken = q->taken_at_nudge = 0;
    q->closed = 0;
    int rv = uv_mutex_init(&q->mu);
    if (rv < 0)
        return rv;
    rv = uv_cond_init(&q->cond);
    if (rv < 0)
        uv_mutex_destroy(&q->mu);
    return rv;
}

void ph_workq_destroy(ph_workq_t *q)
{
    uv_cond_destroy(&q->cond);
    uv_mutex_destroy(&q->mu);
}

int ph_workq_push(ph_workq_t *q, ph_work_t *w)
{
    uv_mutex_lock(&q->mu);
    if (q->closed) {
        uv_mutex_unlock(&q->mu);
        return PH_ECLOSED;
    }
    w->next = NULL;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    q->len++;
    /* A consumer already woken (and not yet running) takes this one too: waking one per
     * item of a burst would wake every idle consumer for work one of them does. */
    int left = q->busy > 0 || q->waking > 0;
    if (!left && q->idle > 0) {
        uv_cond_signal(&q->cond);
        q->waking++;
    }
    uv_mutex_unlock(&q->mu);
    return left;
}

void ph_workq_join(ph_workq_t *q)
{
    uv_mutex_lock(&q->mu);
    q->busy++;
    uv_mutex_unlock(&q->mu);
}

static ph_work_t *take(ph_workq_t *q)
{
    ph_work_t *w = q->head;
    if (w) {
        q->head = w->next;
        if (q->head == NULL)
            q->tail = NULL;
        w->next = NULL;
        q->len--;
        q->taken++;
    }
    return w;
}

ph_work_t *ph_workq_pop(ph_workq_t *q)
{
    uv_mutex_lock(&q->mu);
    if (q->busy > 0)
        q->busy--;
    q->idle++;
    while (q->head == NULL && !q->closed) {
        uv_cond_wait(&q->cond, &q->mu);
        if (q->waking > 0)
            q->waking--;
    }
    q->idle--;
    if (q->waking > q->idle) /* (a wake-up that found nothing, or a spurious one) */
        q->waking = q->idle;
    ph_work_t *w = take(q);
    if (w)
        q->busy++;
    uv_mutex_unlock(&q->mu);
    return w;
}

ph_work_t *ph_workq_try_pop(ph_workq_t *q)
{
    uv_mutex_lock(&q->mu);
    ph_work_t *w = take(q);
    uv_mutex_unlock(&q->mu);
    return w;
}

int ph_workq_nudge(ph_workq_t *q)
{
    uv_mutex_lock(&q->mu);
    int waiting = q->len > 0;
    size_t can = q->idle - q->waking; /* idle and not yet signalled */
    if (waiting && q->taken == q->taken_at_nudge && can > 0) {
        /* Nothing taken for a while: whoever is busy is stuck (blocked in an app); one idle
         * consumer per waiting item, as far as there are idle ones. */
        size_t n = q->len < can ? q->len : can;
        q->waking += n;
        while (n-- > 0)
            uv_cond_signal(&q->cond);
    }
    q->taken_at_nudge = q->taken;
    uv_mutex_unlock(&q->mu);
    return waiting;
}

void ph_workq_close(ph_workq_t *q)
{
    uv_mutex_lock(&q->mu);
    q->closed = 1;
    uv_cond_broadcast(&q->cond);
    uv_mutex_unlock(&q->mu);
}

size_t ph_workq_len(ph_workq_t *q)
{
    uv_mutex_lock(&q->mu);
    size_t n = q->len;
    uv_mutex_unlock(&q->mu);
    return n;
}

/* ---- mailbox ---- */

static void on_async(uv_async_t *a)
{
    ph_mailbox_t *mb = a->data;
    uv_mutex_lock(&mb->mu);
    ph_work_t *w = mb->head;
    mb->head = mb->tail = NULL;
    uv_mutex_unlock(&mb->mu);
    while (w) {
        /* Each item stays marked posted until its turn: a post meanwhile must not relink it
         * while this list still runs through it. */
        uv_mutex_lock(&mb->mu);
        ph_work_t *next = w->next;
        w->next = NULL;
        w->posted = 0;
        uv_mutex_unlock(&mb->mu);
        mb->on_mail(mb, w);
        w = next;
    }
}

int ph_mailbox_init(ph_mailbox_t *mb, uv_loop_t *loop,
                    void (*on_mail)(ph_mailbox_t *mb, ph_work_t *w))
{
    mb->head = mb->tail = NULL;
    mb->closed = 0;
    mb->on_mail = on_mail;
    int rv = uv_mutex_init(&mb->mu);
    if (rv < 0)
        return rv;
    rv = uv_async_init(loop, &mb->async, on_async);
    if (rv < 0) {
        uv_mutex_destroy(&mb->mu);
        return rv;
    }
    mb->async.data = mb;
    return 0;
}

int ph_mailbox_post(ph_mailbox_t *mb, ph_work_t *w)
{
    uv_mutex_lock(&mb->mu);
    if (mb->closed) {
        uv_mutex_unlock(&mb->mu);
        return PH_ECLOSED;
    }
    if (w->posted) {
        uv_mutex_unlock(&mb->mu);
        return 0;
    }
    w->posted = 1;
    w->next = NULL;
    if (mb->tail)
        mb->tail->next = w;
    else
        mb->head = w;
    mb->tail = w;
    /* Under the lock: once closed, the handle may be gone. */
    uv_async_send(&mb->async);
    uv_mutex_unlock(&mb->mu);
    return 1;
}

ph_work_t *ph_mailbox_close(ph_mailbox_t *mb)
{
    uv_mutex_lock(&mb->mu);
    mb->closed = 1;
    ph_work_t *w = mb->head;
    mb->head = mb->tail = NULL;
    for (ph_work_t *x = w; x; x = x->next)
        x->posted = 0;
    uv_mutex_unlock(&mb->mu);
    return w;
}
