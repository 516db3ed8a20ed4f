/* The hand-off between the reactor and the app threads, under load from many threads at once:
 * every item pushed is popped once, every posting is delivered on the loop's thread, an item
 * posted again before its delivery is delivered once, and closing wakes every waiter. Built
 * with ThreadSanitizer by `make test-tsan`. */
#include <stdatomic.h>
#include <stdlib.h>

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
        TCHECK(ph_workq_push(&q, &it->work) == 0);
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
