/* The hand-off between the reactor and the app threads, under load from many threads at once:
 * every item pushed is popped once, every posting is delivered on the loop's thread, an item
 * posted again before its delivery is delivered once, and closing wakes every waiter. Built
 * with ThreadSanitizer by `make test-tsan`. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util.h"
#include "workq.h"

#define PRODUCERS 3
#define CONSUMERS 4
#define PER_PRODUCER 20000
#define TOTAL (PRODUCERS * PER_PRODUCER)

typedef struct {
    ph_work_t work, mail;
    int value;
    int popped;    /* by the consumer that took it */
    int delivered; /* on the loop's thread only */
} item_t;

static ph_workq_t q;
static ph_mailbox_t mb;
static item_t *items;
static atomic_int pushed_sum, popped_count;
static atomic_int thread_failures; /* CHECK's counters are not for threads */
#define TCHECK(cond) ((cond) ? (void)0 : (void)atomic_fetch_add(&thread_failures, 1))
static int delivered_count, delivered_sum;

static void producer(void *arg)
{
    int base = (int)(intptr_t)arg * PER_PRODUCER;
    for (int i = 0; i < PER_PRODUCER; i++) {
        item_t *it = &items[base + i];
        it->value = base + i;
        atomic_fetch_add(&pushed_sum, it->value);
        TCHECK(ph_workq_push(&q, &it->work) >= 0);
    }
}

static void consumer(void *arg)
{
    (void)arg;
    ph_work_t *w;
    while ((w = ph_workq_pop(&q)) != NULL) {
        item_t *it = (item_t *)((char *)w - offsetof(item_t, work));
        it->popped++;
        atomic_fetch_add(&popped_count, 1);
        /* twice in a row: the second finds it waiting (0), or delivered already (1) */
        int first = ph_mailbox_post(&mb, &it->mail);
        int second = ph_mailbox_post(&mb, &it->mail);
        TCHECK(first == 1 || first == 0);
        TCHECK(second == 0 || second == 1);
    }
}

static void on_mail(ph_mailbox_t *m, ph_work_t *w)
{
    item_t *it = (item_t *)((char *)w - offsetof(item_t, mail));
    if (it->delivered++ == 0) {
        delivered_count++;
        delivered_sum += it->value;
    }
    if (delivered_count == TOTAL)
        uv_stop(m->async.loop);
}

static uv_mutex_t stuck_mu;
static uv_cond_t stuck_cond;
static int stuck_release;
static ph_workq_t q3;
static atomic_int q3_taken;

/* Joins, takes one item and then blocks (an app blocked in I/O) until released. */
static void stuck_consumer(void *arg)
{
    (void)arg;
    ph_workq_join(&q3);
    TCHECK(ph_workq_pop(&q3) != NULL);
    atomic_fetch_add(&q3_taken, 1);
    uv_mutex_lock(&stuck_mu);
    while (!stuck_release)
        uv_cond_wait(&stuck_cond, &stuck_mu);
    uv_mutex_unlock(&stuck_mu);
    while (ph_workq_pop(&q3) != NULL)
        atomic_fetch_add(&q3_taken, 1);
}

static void idle_consumer(void *arg)
{
    (void)arg;
    ph_workq_join(&q3);
    while (ph_workq_pop(&q3) != NULL)
        atomic_fetch_add(&q3_taken, 1);
}

static size_t idle_count(ph_workq_t *wq)
{
    uv_mutex_lock(&wq->mu);
    size_t n = wq->idle;
    uv_mutex_unlock(&wq->mu);
    return n;
}

static void waiter(void *arg)
{
    TCHECK(ph_workq_pop(arg) == NULL); /* woken by close, with nothing to take */
}

int main(void)
{
    uv_loop_t loop;
    CHECK(uv_loop_init(&loop) == 0);
    CHECK(ph_workq_init(&q) == 0);
    CHECK(ph_mailbox_init(&mb, &loop, on_mail) == 0);
    items = calloc(TOTAL, sizeof(item_t));
    CHECK(items != NULL);

    uv_thread_t prod[PRODUCERS], cons[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++)
        CHECK(uv_thread_create(&cons[i], consumer, NULL) == 0);
    for (int i = 0; i < PRODUCERS; i++)
        CHECK(uv_thread_create(&prod[i], producer, (void *)(intptr_t)i) == 0);
    uv_run(&loop, UV_RUN_DEFAULT); /* until every item was delivered */
    for (int i = 0; i < PRODUCERS; i++)
        uv_thread_join(&prod[i]);
    ph_workq_close(&q);
    for (int i = 0; i < CONSUMERS; i++)
        uv_thread_join(&cons[i]);
    /* A consumer's second post can land after the loop delivered its first one (and after
     * the loop stopped): that item waits in the mailbox again. Deliver it, so the mailbox is
     * empty for the close check below. */
    for (int i = 0; i < 1000 && mb.head != NULL; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(mb.head == NULL);

    CHECK(atomic_load(&thread_failures) == 0);
    CHECK(atomic_load(&popped_count) == TOTAL);
    CHECK(delivered_count == TOTAL);
    CHECK(delivered_sum == atomic_load(&pushed_sum));
    int once = 1;
    for (int i = 0; i < TOTAL; i++)
        once &= items[i].popped == 1;
    CHECK(once);
    CHECK(ph_workq_push(&q, &items[0].work) == PH_ECLOSED);
    CHECK(ph_workq_pop(&q) == NULL);

    /* Waiters on an empty queue all wake when it closes. */
    ph_workq_t q2;
    CHECK(ph_workq_init(&q2) == 0);
    uv_thread_t w[3];
    for (int i = 0; i < 3; i++)
        CHECK(uv_thread_create(&w[i], waiter, &q2) == 0);
    ph_workq_close(&q2);
    for (int i = 0; i < 3; i++)
        uv_thread_join(&w[i]);
    CHECK(ph_workq_len(&q2) == 0);
    ph_workq_destroy(&q2);

    /* A push with a consumer busy leaves the item to it; when that consumer is stuck, nudges
     * (with no item taken in between) wake an idle one. */
    item_t j[3];
    memset(j, 0, sizeof(j));
    CHECK(uv_mutex_init(&stuck_mu) == 0 && uv_cond_init(&stuck_cond) == 0);
    CHECK(ph_workq_init(&q3) == 0);
    uv_thread_t stuck, idle;
    CHECK(uv_thread_create(&stuck, stuck_consumer, NULL) == 0);
    while (idle_count(&q3) < 1) /* the consumer waits for work */
        uv_sleep(1);
    CHECK(ph_workq_push(&q3, &j[0].work) == 0); /* nobody busy: a consumer is woken */
    while (atomic_load(&q3_taken) < 1)
        uv_sleep(1);
    CHECK(uv_thread_create(&idle, idle_consumer, NULL) == 0);
    while (idle_count(&q3) < 1)
        uv_sleep(1);
    CHECK(ph_workq_push(&q3, &j[1].work) == 1); /* one busy: left to it */
    uv_sleep(20);
    CHECK(atomic_load(&q3_taken) == 1); /* nobody was woken for it */
    int rounds = 0;
    while (atomic_load(&q3_taken) < 2 && rounds++ < 1000) {
        ph_workq_nudge(&q3);
        uv_sleep(1);
    }
    CHECK(atomic_load(&q3_taken) == 2); /* the idle consumer took it */
    CHECK(ph_workq_nudge(&q3) == 0);    /* nothing waits: the producer may stop nudging */
    uv_mutex_lock(&stuck_mu);
    stuck_release = 1;
    uv_cond_signal(&stuck_cond);
    uv_mutex_unlock(&stuck_mu);
    CHECK(ph_workq_push(&q3, &j[2].work) >= 0);
    while (atomic_load(&q3_taken) < 3)
        uv_sleep(1);
    ph_workq_close(&q3);
    uv_thread_join(&stuck);
    uv_thread_join(&idle);
    ph_workq_destroy(&q3);
    uv_cond_destroy(&stuck_cond);
    uv_mutex_destroy(&stuck_mu);

    /* Closing the mailbox hands back what was never delivered; later posts are refused. */
    item_t a = {0}, b = {0};
    CHECK(ph_mailbox_post(&mb, &a.mail) == 1);
    CHECK(ph_mailbox_post(&mb, &b.mail) == 1);
    ph_work_t *left = ph_mailbox_close(&mb);
    CHECK(left == &a.mail && left->next == &b.mail && b.mail.next == NULL);
    CHECK(!a.mail.posted && !b.mail.posted);
    CHECK(ph_mailbox_post(&mb, &a.mail) == PH_ECLOSED);
    uv_close((uv_handle_t *)&mb.async, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&loop) == 0);
    CHECK(atomic_load(&thread_failures) == 0);
    ph_workq_destroy(&q);
    free(items);
    return CHECK_REPORT();
}
