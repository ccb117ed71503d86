/* The cheapest NFQUEUE consumer there is: accept every packet, from C (bench/inline.py, mode (d)).
 *
 *     accept_all QUEUE BATCH
 *
 * Binds QUEUE with fwemu's queue settings (fwemu/adapters/nfqueue.py): copy range 128, queue length
 * 8192, an 8 MiB receive buffer (the kernel grants twice), NETLINK_NO_ENOBUFS, F_GSO and
 * F_FAIL_OPEN. Verdicts go as fwemu's do: one NFQNL_MSG_VERDICT_BATCH for every run of BATCH
 * packets at most (Suricata's cap is 255), sent when the run is full or the next recv would block,
 * never held across a blocking recv; BATCH 1 gives each packet its own verdict. Prints "bound"
 * once serving and, on SIGTERM or SIGINT, "accepted N packets"; dies with its parent.
 *
 * Compiled by the bench at run time (cc -O2 ... -lnetfilter_queue), never committed as a binary.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define COPY_RANGE 128
#define MAX_LEN 8192
#define SOCK_LEN (MAX_LEN * 1024)
#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef NETLINK_NO_ENOBUFS
#define NETLINK_NO_ENOBUFS 5
#endif

static volatile sig_atomic_t stop;
static unsigned long long accepted;
static unsigned int held, batch; /* packets accepted but not yet told to the kernel; the cap */
static uint32_t last_id;

static void on_stop(int signum) { (void)signum; stop = 1; }

static void flush(struct nfq_q_handle *qh)
{
    if (held) {
        nfq_set_verdict_batch(qh, last_id, NF_ACCEPT);
        held = 0;
    }
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data)
{
    (void)msg;
    (void)data;
    uint32_t id = ntohl(nfq_get_msg_packet_hdr(nfa)->packet_id);
    accepted++;
    if (batch == 1)
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    last_id = id;
    if (++held >= batch)
        flush(qh);
    return 0;
}

static int fail(const char *what)
{
    fprintf(stderr, "accept_all: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (batch = (unsigned int)atoi(argv[2])) < 1 || batch > 255) {
        fprintf(stderr, "usage: accept_all QUEUE BATCH (1-255)\n");
        return 2;
    }
    /* Die with the bench's wrapper (bench/inline.py, role _c-accept-all): never left holding the
     * queue. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() == 1)
        return fail("prctl");
    struct nfq_handle *h = nfq_open();
    if (!h)
        return fail("nfq_open");
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)atoi(argv[1]), on_packet, NULL);
    if (!qh)
        return fail("nfq_create_queue (queue held by another program, or not root?)");
    uint32_t flags = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN;
    if (nfq_set_mode(qh, NFQNL_COPY_PACKET, COPY_RANGE) < 0 ||
        nfq_set_queue_maxlen(qh, MAX_LEN) < 0 || nfq_set_queue_flags(qh, flags, flags) < 0)
        return fail("configuring the queue");
    int fd = nfq_fd(h), on = 1, size = SOCK_LEN;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0 ||
        setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &on, sizeof on) < 0)
        return fail("setsockopt");

    struct sigaction action = {.sa_handler = on_stop}; /* no SA_RESTART: recv returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    printf("bound\n");
    fflush(stdout);

    static char buf[65536];
    while (!stop) {
        ssize_t n = recv(fd, buf, sizeof buf, held ? MSG_DONTWAIT : 0);
        if (n >= 0) {
            nfq_handle_packet(h, buf, (int)n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            flush(qh); /* the burst is over: tell the kernel before blocking */
        } else if (errno != EINTR && errno != ENOBUFS) {
            flush(qh);
            return fail("recv");
        }
    }
    flush(qh);
    printf("accepted %llu packets\n", accepted);
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}
