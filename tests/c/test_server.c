/* What a supervised worker's server does beyond serving: the heartbeat page (beats, counts,
 * the last request), accept balancing between workers on one shared listening socket, and a
 * drain that first takes the connections already waiting in the backlog. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "conn.h"
#include "stream.h"

#define NSLOTS 4
#define SLOT 1024 /* a ph_beat_t with its counters fits (metrics.SLOT_SIZE) */

static _Alignas(8) char page[NSLOTS * SLOT];

static ph_beat_t *slot(int i)
{
    return (ph_beat_t *)(page + i * SLOT);
}

static void p_read(ph_conn_t *c)
{
    ph_conn_consume(c, c->rlen - c->rstart);
}
static void p_eof(ph_conn_t *c, int err)
{
    (void)err;
    ph_conn_close(c, 0);
}
static void p_nop(ph_conn_t *c)
{
    (void)c;
}
static const ph_conn_proto_t stub = {
    .on_read = p_read,
    .on_eof = p_eof,
    .on_drain = p_nop,
    .on_timeout = p_nop,
    .on_close = p_nop,
    .on_free = p_nop,
    .drain = p_nop, /* idle connections stay: the test counts them */
};

static int on_conn(ph_server_t *s, ph_conn_t *c)
{
    (void)s;
    c->proto = &stub;
    return 0;
}

static int streams_seen;
static void on_stream(ph_server_t *s, ph_stream_t *st)
{
    (void)s;
    (void)st;
    streams_seen++;
}

typedef struct {
    ph_loop_t loop;
    ph_server_t server;
} worker_t;

static void worker_init(worker_t *w, int fd, int index)
{
    ph_loop_init(&w->loop);
    ph_server_init(&w->server, &w->loop);
    w->server.on_conn = on_conn;
    w->server.on_stream = on_stream;
    w->server.beat = slot(index);
    w->server.beat_ms = 10;
    w->server.peers = page;
    w->server.npeers = NSLOTS;
    w->server.peer_size = SLOT;
    w->server.retire_fd = -1;
    CHECK(ph_server_add_listener(&w->server, dup(fd), 0, 128) == 0);
    CHECK(ph_server_start(&w->server) == 0);
}

static void worker_free(worker_t *w)
{
    ph_server_close(&w->server);
    ph_loop_close(&w->loop);
    ph_server_free(&w->server);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Ticks both workers as their hosts would, for ms. */
static void run_both(worker_t *a, worker_t *b, double ms)
{
    double end = now_ms() + ms;
    do {
        ph_loop_tick(&a->loop);
        ph_loop_tick(&b->loop);
        struct pollfd p[2] = {{ph_loop_fd(&a->loop), POLLIN, 0}, {ph_loop_fd(&b->loop), POLLIN, 0}};
        poll(p, 2, 1);
    } while (now_ms() < end);
}

static int listening_socket(struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)addr, sizeof(*addr));
    socklen_t len = sizeof(*addr);
    getsockname(fd, (struct sockaddr *)addr, &len);
    listen(fd, 128);
    return fd;
}

static int connect_to(const struct sockaddr_in *addr)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) == 0);
    return fd;
}

/* Two workers on one listening socket, each with its slot of the page. */
typedef struct {
    struct sockaddr_in addr;
    int lfd;
    worker_t a, b;
} pair_t;

static void pair_init(pair_t *p)
{
    memset(page, 0, sizeof(page));
    p->lfd = listening_socket(&p->addr);
    worker_init(&p->a, p->lfd, 0);
    worker_init(&p->b, p->lfd, 1);
}

static void pair_free(pair_t *p)
{
    worker_free(&p->a);
    worker_free(&p->b);
    close(p->lfd);
}

static void test_over_share(void)
{
    memset(page, 0, sizeof(page));
    ph_loop_t loop;
    ph_server_t s;
    ph_loop_init(&loop);
    ph_server_init(&s, &loop);
    s.beat = slot(0);
    CHECK(!ph_server_over_share(&s)); /* no peers: never */
    s.peers = page;
    s.npeers = NSLOTS;
    s.peer_size = SLOT;
    s.nconns = 10;
    slot(0)->accepting = 1;
    CHECK(!ph_server_over_share(&s)); /* only itself accepts */
    slot(2)->conns = 3;               /* a peer that does not accept (draining, or gone) */
    CHECK(!ph_server_over_share(&s));
    slot(1)->accepting = 1;
    slot(1)->conns = 9;
    CHECK(!ph_server_over_share(&s)); /* one above the least loaded: within the slack */
    slot(1)->conns = 8;
    CHECK(ph_server_over_share(&s));
    slot(3)->accepting = 1;
    slot(3)->conns = 20;
    CHECK(ph_server_over_share(&s)); /* the least loaded counts */
    ph_loop_close(&loop);
    ph_server_free(&s);
}

static void test_open_stream_notes_the_request(void)
{
    memset(page, 0, sizeof(page));
    ph_loop_t loop;
    ph_server_t s;
    ph_loop_init(&loop);
    ph_server_init(&s, &loop);
    s.on_stream = on_stream;
    s.beat = slot(0);
    s.retire_fd = -1;
    int fds[2];
    CHECK(pipe(fds) == 0);
    ph_stream_t st;
    memset(&st, 0, sizeof(st));
    st.req.method = (ph_slice_t){"GET", 3};
    st.req.target = (ph_slice_t){"/a?b=1", 6};
    streams_seen = 0;
    ph_server_open_stream(&s, &st);
    CHECK(streams_seen == 1);
    CHECK(strcmp(slot(0)->last, "GET /a?b=1") == 0);
    CHECK(slot(0)->requests == 1 && slot(0)->streams == 1);
    /* a long target is cut, never past the field */
    char longer[300];
    memset(longer, 'x', sizeof(longer));
    st.req.target = (ph_slice_t){longer, sizeof(longer)};
    ph_server_open_stream(&s, &st);
    CHECK(strlen(slot(0)->last) == sizeof(slot(0)->last) - 1);
    CHECK(strncmp(slot(0)->last, "GET xxx", 7) == 0);
    /* --max-requests: one byte to the supervisor, exactly when the limit is reached */
    s.max_requests = 3;
    s.retire_fd = fds[1];
    ph_server_open_stream(&s, &st);
    ph_server_open_stream(&s, &st);
    close(fds[1]);
    char buf[8];
    CHECK(read(fds[0], buf, sizeof(buf)) == 1 && buf[0] == 'M');
    close(fds[0]);
    CHECK(slot(0)->requests == 4);
    ph_loop_close(&loop);
    ph_server_free(&s);
}

static void test_heartbeat_beats_until_closed(void)
{
    pair_t p;
    pair_init(&p);
    uint64_t first = slot(0)->beat_ns;
    CHECK(first != 0 && slot(0)->accepting == 1);
    run_both(&p.a, &p.b, 40);
    CHECK(slot(0)->beat_ns > first);
    uint64_t last = slot(0)->beat_ns;
    /* a loop nobody runs does not beat: that is what --worker-timeout sees */
    usleep(40 * 1000);
    CHECK(slot(0)->beat_ns == last);
    pair_free(&p);
}

static void test_two_workers_share_a_burst_of_connections(void)
{
    pair_t p;
    pair_init(&p);
    enum { N = 40 };
    int clients[N];
    for (int i = 0; i < N; i++)
        clients[i] = connect_to(&p.addr); /* all waiting in the backlog before anyone accepts */
    /* a takes its share first: alone, it would have taken all of them */
    ph_loop_tick(&p.a.loop);
    CHECK(p.a.server.nconns <= 3);
    run_both(&p.a, &p.b, 100);
    CHECK(p.a.server.nconns + p.b.server.nconns == N);
    size_t diff = p.a.server.nconns > p.b.server.nconns ? p.a.server.nconns - p.b.server.nconns
                                                        : p.b.server.nconns - p.a.server.nconns;
    CHECK(diff <= 2 * PH_ACCEPT_SLACK + 2);
    CHECK(slot(0)->conns == p.a.server.nconns && slot(1)->conns == p.b.server.nconns);
    for (int i = 0; i < N; i++)
        close(clients[i]);
    pair_free(&p);
}

static void test_drain_takes_the_backlog_first(void)
{
    pair_t p;
    pair_init(&p);
    slot(1)->accepting = 0; /* b is not there for a's balance: a takes all */
    p.b.server.draining = 1;
    int c1 = connect_to(&p.addr), c2 = connect_to(&p.addr);
    ph_server_drain(&p.a.server);
    CHECK(!p.a.server.draining && p.a.server.drain_queued); /* not before the next poll */
    ph_loop_tick(&p.a.loop);
    CHECK(p.a.server.draining && !p.a.server.drain_queued);
    CHECK(p.a.server.nconns == 2); /* what waited was taken before the listener closed */
    CHECK(slot(0)->accepting == 0);
    /* a new connection now waits for b (the socket stays open in b): a takes no more */
    int c3 = connect_to(&p.addr);
    ph_loop_tick(&p.a.loop);
    CHECK(p.a.server.nconns == 2);
    close(c1);
    close(c2);
    close(c3);
    pair_free(&p);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_over_share();
    test_open_stream_notes_the_request();
    test_heartbeat_beats_until_closed();
    test_two_workers_share_a_burst_of_connections();
    test_drain_takes_the_backlog_first();
    return CHECK_REPORT();
}
