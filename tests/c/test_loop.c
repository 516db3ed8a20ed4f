/* The reactor's deferred work: what a callback cancels or queues while the queue runs. */
#include "check.h"
#include "loop.h"

static ph_loop_t loop;
static ph_defer_t a, b, c;
static int ran_a, ran_b, ran_c;

static void on_a(ph_defer_t *d)
{
    (void)d;
    ran_a++;
    ph_loop_cancel(&loop, &b); /* b's owner goes away while b waits behind us */
}

static void on_b(ph_defer_t *d)
{
    (void)d;
    ran_b++;
}

static void on_c(ph_defer_t *d)
{
    (void)d;
    ran_c++;
    if (ran_c < 3)
        ph_loop_defer(&loop, &c); /* again: in a later round, not forever in this one */
}

int main(void)
{
    CHECK(ph_loop_init(&loop) == 0);
    a.cb = on_a;
    b.cb = on_b;
    c.cb = on_c;
    ph_loop_defer(&loop, &a);
    ph_loop_defer(&loop, &b);
    ph_loop_defer(&loop, &c);
    ph_loop_tick(&loop);
    CHECK(ran_a == 1);
    CHECK(ran_b == 0);
    CHECK(ran_c == 3); /* the cancel in on_a did not cut c off the queue */
    CHECK(!a.queued && !b.queued && !c.queued);
    CHECK(ph_loop_close(&loop) == 0);
    return CHECK_REPORT();
}
