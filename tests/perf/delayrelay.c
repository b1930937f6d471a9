/* delayrelay: a TCP relay that holds every chunk it forwards for a fixed time, each way.
 *
 *   delayrelay LISTEN_ADDR LISTEN_PORT UPSTREAM_ADDR UPSTREAM_PORT DELAY_US
 *
 * P10's stand-in for `tc netem delay` on a kernel built without netem (tests/perf/netns.py
 * uses it only then). Every chunk read from one side is written to the other DELAY_US
 * microseconds after it was read, in order; chunks in flight overlap (a pipeline, like a
 * link with latency, not a stop-and-wait). One thread, epoll, a timerfd with nanosecond
 * deadlines (epoll_wait's own timeout is in milliseconds, too coarse for 0.5 ms). IPv4 only,
 * no options: it lives inside the bench's own network namespace, in front of its Postgres.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
#define MAX_EVENTS 256

typedef struct chunk {
    struct chunk *next;
    uint64_t due_ns;
    size_t len, off;
    char data[];
} chunk;

typedef struct conn conn;

typedef struct {
    chunk *head, *tail;
    int from, to;   /* fds */
    int eof;        /* `from` said EOF */
    int shut;       /* `to` was shut down for writing */
    int blocked;    /* `to` answered EAGAIN: wait for EPOLLOUT */
} flow;

typedef struct {
    conn *c;
    int side;       /* 0: client, 1: upstream */
} tag;

struct conn {
    int fd[2];
    flow f[2];      /* f[0]: client -> upstream, f[1]: upstream -> client */
    tag t[2];
    int dead;
    conn *next;
};

static conn *conns = NULL;
static uint64_t delay_ns;
static int ep, tfd, lfd;
static struct sockaddr_in upstream;
static tag listen_tag, timer_tag;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void kill_conn(conn *c) {
    if (c->dead) return;
    c->dead = 1;
    for (int i = 0; i < 2; i++) {
        close(c->fd[i]);
        chunk *k = c->f[i].head;
        while (k) {
            chunk *n = k->next;
            free(k);
            k = n;
        }
        c->f[i].head = c->f[i].tail = NULL;
    }
}

static void flush(conn *c, flow *f, uint64_t now) {
    while (!c->dead && f->head && f->head->due_ns <= now) {
        chunk *k = f->head;
        ssize_t w = write(f->to, k->data + k->off, k->len - k->off);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                f->blocked = 1;
                return;
            }
            if (errno == EINTR) continue;
            kill_conn(c);
            return;
        }
        k->off += (size_t)w;
        if (k->off == k->len) {
            f->head = k->next;
            if (!f->head) f->tail = NULL;
            free(k);
        }
    }
    if (!c->dead && !f->head && f->eof && !f->shut) {
        shutdown(f->to, SHUT_WR);
        f->shut = 1;
        if (c->f[0].shut && c->f[1].shut) kill_conn(c);
    }
}

static void read_side(conn *c, int side, uint64_t now) {
    flow *f = &c->f[side];
    for (;;) {
        if (c->dead || f->eof) return;
        chunk *k = malloc(sizeof(chunk) + BUF);
        if (!k) {
            kill_conn(c);
            return;
        }
        ssize_t n = read(f->from, k->data, BUF);
        if (n <= 0) {
            free(k);
            if (n == 0) {
                f->eof = 1;
                flush(c, f, now);
                return;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            kill_conn(c);
            return;
        }
        if ((size_t)n < BUF) {
            chunk *small = realloc(k, sizeof(chunk) + (size_t)n);
            if (small) k = small;
        }
        k->next = NULL;
        k->len = (size_t)n;
        k->off = 0;
        k->due_ns = now + delay_ns;
        if (f->tail) f->tail->next = k; else f->head = k;
        f->tail = k;
    }
}

static void accept_all(void) {
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (cfd < 0) return;
        int ufd = socket(AF_INET, SOCK_STREAM, 0);
        if (ufd < 0 || connect(ufd, (struct sockaddr *)&upstream, sizeof upstream) < 0) {
            if (ufd >= 0) close(ufd);
            close(cfd);
            continue;
        }
        nonblock(ufd);
        nodelay(cfd);
        nodelay(ufd);
        conn *c = calloc(1, sizeof(conn));
        if (!c) {
            close(cfd);
            close(ufd);
            continue;
        }
        c->fd[0] = cfd;
        c->fd[1] = ufd;
        c->f[0].from = cfd;
        c->f[0].to = ufd;
        c->f[1].from = ufd;
        c->f[1].to = cfd;
        for (int i = 0; i < 2; i++) {
            c->t[i].c = c;
            c->t[i].side = i;
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &c->t[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd[i], &ev);
        }
        c->next = conns;
        conns = c;
    }
}

static void arm_timer(void) {
    uint64_t next = 0;
    for (conn *c = conns; c; c = c->next)
        for (int i = 0; i < 2; i++) {
            flow *f = &c->f[i];
            if (!c->dead && f->head && !f->blocked && (!next || f->head->due_ns < next)) next = f->head->due_ns;
        }
    struct itimerspec its = {0};
    if (next) {
        its.it_value.tv_sec = (time_t)(next / 1000000000ull);
        its.it_value.tv_nsec = (long)(next % 1000000000ull);
    }
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s LISTEN_ADDR LISTEN_PORT UPSTREAM_ADDR UPSTREAM_PORT DELAY_US\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    delay_ns = strtoull(argv[5], NULL, 10) * 1000ull;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    upstream.sin_family = AF_INET;
    upstream.sin_port = htons((uint16_t)atoi(argv[4]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || inet_pton(AF_INET, argv[3], &upstream.sin_addr) != 1) {
        fprintf(stderr, "delayrelay: IPv4 addresses only\n");
        return 2;
    }
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 512) < 0) {
        perror("delayrelay: bind/listen");
        return 1;
    }
    ep = epoll_create1(0);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &timer_tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);
    printf("delayrelay %s:%s -> %s:%s, %s us each way\n", argv[1], argv[2], argv[3], argv[4], argv[5]);
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0 && errno != EINTR) return 1;
        uint64_t now = now_ns();
        for (int i = 0; i < n; i++) {
            tag *t = events[i].data.ptr;
            if (t == &listen_tag) {
                accept_all();
            } else if (t == &timer_tag) {
                uint64_t expirations;
                while (read(tfd, &expirations, sizeof expirations) > 0) {
                }
            } else {
                conn *c = t->c;
                if (c->dead) continue;
                if (events[i].events & EPOLLOUT) c->f[1 - t->side].blocked = 0; /* the flow writing to this side */
                if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) read_side(c, t->side, now);
            }
        }
        now = now_ns();
        conn **link = &conns;
        while (*link) {
            conn *c = *link;
            for (int i = 0; i < 2; i++)
                if (!c->f[i].blocked) flush(c, &c->f[i], now);
            if (c->dead) {
                *link = c->next;
                free(c);
            } else {
                link = &c->next;
            }
        }
        arm_timer();
    }
}
