/*
 * udpblast: a paced UDP traffic generator for netwarden's capture benchmark.
 *
 * It writes complete Ethernet/IPv4/UDP frames to one interface through an AF_PACKET
 * socket with sendmmsg(2), a batch at a time, paced against CLOCK_MONOTONIC so the
 * average rate is the one asked for (absolute deadlines: a late batch is not made up by
 * sleeping less later, it is just sent at once).  Going below the IP stack is what makes
 * it fast enough on a small VM, and lets every frame carry any 5-tuple: flows differ by
 * source port (then source address), and with --churn the set of active flows slides
 * forward, so a flow table sees flows start and go idle all the time.
 *
 * Output: one JSON object on stdout when done (or on SIGINT/SIGTERM).
 *
 * Build: gcc -O2 -Wall -Wextra -o udpblast udpblast.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define MAX_FRAME 1514
#define MIN_FRAME 42 /* 14 Ethernet + 20 IPv4 + 8 UDP */
#define PORT_BASE 1024
#define PORTS_PER_ADDR 64000

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: udpblast -i IFACE [options]\n"
		"  -i, --iface IFACE     interface to send on (required)\n"
		"  -r, --rate PPS        packets per second to offer (default 100000)\n"
		"  -d, --duration SEC    seconds to send for (default 5)\n"
		"  -s, --size BYTES      Ethernet frame length without FCS, %d-%d (default 60)\n"
		"  -f, --flows N         distinct flows active at a time (default 1000)\n"
		"  -c, --churn N         flows replaced per second (default 0: a fixed set)\n"
		"  -b, --batch N         frames per sendmmsg call, 1-%d (default 32)\n"
		"      --src-mac MAC     (default 02:00:00:00:00:01)\n"
		"      --dst-mac MAC     (default ff:ff:ff:ff:ff:ff)\n"
		"      --src-ip ADDR     first source address (default 10.0.0.1)\n"
		"      --dst-ip ADDR     (default 10.0.0.2)\n"
		"      --dport PORT      UDP destination port (default 9)\n",
		MIN_FRAME, MAX_FRAME, MAX_BATCH);
}

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];
	char extra;
	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
		   &extra) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (b[i] > 255)
			return -1;
		mac[i] = (uint8_t)b[i];
	}
	return 0;
}

static long parse_long(const char *s, const char *what, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi) {
		fprintf(stderr, "udpblast: %s: %s is not in %ld-%ld\n", what, s, lo, hi);
		exit(2);
	}
	return v;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_until(double t)
{
	struct timespec ts;
	ts.tv_sec = (time_t)t;
	ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR &&
	       !stop_requested)
		;
}

static uint16_t ip_checksum(const uint8_t *h)
{
	uint32_t sum = 0;
	for (int i = 0; i < 20; i += 2)
		sum += (uint32_t)(h[i] << 8 | h[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

/* Fill the fixed parts of a frame once; per packet only ports, addresses, id, sums change. */
static void frame_template(uint8_t *f, int size, const uint8_t src_mac[6],
			   const uint8_t dst_mac[6], uint32_t dst_ip, uint16_t dport)
{
	memset(f, 0, (size_t)size);
	memcpy(f, dst_mac, 6);
	memcpy(f + 6, src_mac, 6);
	put16(f + 12, ETHERTYPE_IP);
	uint8_t *ip = f + 14;
	ip[0] = 0x45;
	put16(ip + 2, (uint16_t)(size - 14));
	put16(ip + 6, 0x4000); /* DF */
	ip[8] = 64;
	ip[9] = IPPROTO_UDP;
	put32(ip + 16, dst_ip);
	uint8_t *udp = ip + 20;
	put16(udp + 2, dport);
	put16(udp + 4, (uint16_t)(size - 34));
	/* UDP checksum 0: "none", valid for IPv4.  Payload: a recognisable pattern. */
	for (int i = 42; i < size; i++)
		f[i] = (uint8_t)('a' + (i - 42) % 26);
}

/* Flow number k → source address and port; packet number n → IP id. */
static void frame_set(uint8_t *f, uint64_t k, uint64_t n, uint32_t src_ip)
{
	uint8_t *ip = f + 14;
	put16(ip + 4, (uint16_t)n);
	put32(ip + 12, src_ip + (uint32_t)(k / PORTS_PER_ADDR));
	put16(ip + 10, 0);
	put16(ip + 10, ip_checksum(ip));
	put16(ip + 20, (uint16_t)(PORT_BASE + k % PORTS_PER_ADDR));
}

int main(int argc, char **argv)
{
	const char *iface = NULL;
	long rate = 100000, size = 60, flows = 1000, churn = 0, batch = 32;
	double duration = 5.0;
	uint8_t src_mac[6] = {0x02, 0, 0, 0, 0, 0x01};
	uint8_t dst_mac[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	struct in_addr src_in = {htonl(0x0a000001)}, dst_in = {htonl(0x0a000002)};
	long dport = 9;

	enum { OPT_SRC_MAC = 256, OPT_DST_MAC, OPT_SRC_IP, OPT_DST_IP, OPT_DPORT };
	static const struct option opts[] = {
		{"iface", required_argument, NULL, 'i'},
		{"rate", required_argument, NULL, 'r'},
		{"duration", required_argument, NULL, 'd'},
		{"size", required_argument, NULL, 's'},
		{"flows", required_argument, NULL, 'f'},
		{"churn", required_argument, NULL, 'c'},
		{"batch", required_argument, NULL, 'b'},
		{"src-mac", required_argument, NULL, OPT_SRC_MAC},
		{"dst-mac", required_argument, NULL, OPT_DST_MAC},
		{"src-ip", required_argument, NULL, OPT_SRC_IP},
		{"dst-ip", required_argument, NULL, OPT_DST_IP},
		{"dport", required_argument, NULL, OPT_DPORT},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;
	char *end;
	while ((c = getopt_long(argc, argv, "i:r:d:s:f:c:b:h", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			iface = optarg;
			break;
		case 'r':
			rate = parse_long(optarg, "--rate", 1, 100000000);
			break;
		case 'd':
			duration = strtod(optarg, &end);
			if (*end || end == optarg || duration <= 0 || duration > 86400) {
				fprintf(stderr, "udpblast: --duration: %s is not in (0, 86400]\n",
					optarg);
				return 2;
			}
			break;
		case 's':
			size = parse_long(optarg, "--size", MIN_FRAME, MAX_FRAME);
			break;
		case 'f':
			flows = parse_long(optarg, "--flows", 1, 1L << 30);
			break;
		case 'c':
			churn = parse_long(optarg, "--churn", 0, 100000000);
			break;
		case 'b':
			batch = parse_long(optarg, "--batch", 1, MAX_BATCH);
			break;
		case OPT_SRC_MAC:
		case OPT_DST_MAC:
			if (parse_mac(optarg, c == OPT_SRC_MAC ? src_mac : dst_mac)) {
				fprintf(stderr, "udpblast: not a MAC address: %s\n", optarg);
				return 2;
			}
			break;
		case OPT_SRC_IP:
		case OPT_DST_IP:
			if (!inet_pton(AF_INET, optarg, c == OPT_SRC_IP ? &src_in : &dst_in)) {
				fprintf(stderr, "udpblast: not an IPv4 address: %s\n", optarg);
				return 2;
			}
			break;
		case OPT_DPORT:
			dport = parse_long(optarg, "--dport", 1, 65535);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!iface || optind != argc) {
		usage(stderr);
		return 2;
	}

	unsigned int ifindex = if_nametoindex(iface);
	if (!ifindex) {
		fprintf(stderr, "udpblast: no interface %s: %s\n", iface, strerror(errno));
		return 1;
	}
	/* Protocol 0: this socket sends only, the kernel queues nothing to it. */
	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		fprintf(stderr, "udpblast: AF_PACKET socket: %s (needs CAP_NET_RAW)\n",
			strerror(errno));
		return 1;
	}
	struct sockaddr_ll sll = {0};
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = (int)ifindex;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
		fprintf(stderr, "udpblast: bind to %s: %s\n", iface, strerror(errno));
		return 1;
	}
	int one = 1;
	int qdisc_bypass = setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) == 0;
	int sndbuf = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

	static uint8_t frames[MAX_BATCH][MAX_FRAME];
	static struct iovec iov[MAX_BATCH];
	static struct mmsghdr msgs[MAX_BATCH];
	uint32_t src_ip = ntohl(src_in.s_addr), dst_ip = ntohl(dst_in.s_addr);
	for (long j = 0; j < batch; j++) {
		frame_template(frames[j], (int)size, src_mac, dst_mac, dst_ip, (uint16_t)dport);
		iov[j].iov_base = frames[j];
		iov[j].iov_len = (size_t)size;
		msgs[j].msg_hdr.msg_iov = &iov[j];
		msgs[j].msg_hdr.msg_iovlen = 1;
	}

	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	/* The default 50 µs timer slack is half a batch period at 300k pps: ask for none. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

	const uint64_t total = (uint64_t)((double)rate * duration + 0.5);
	uint64_t sent = 0, failed = 0, calls = 0, late_batches = 0;
	uint64_t flow_max = 0;
	double max_late = 0.0;
	int last_errno = 0;
	const double t0 = now_s();
	double t = t0;
	while (sent + failed < total && !stop_requested) {
		uint64_t n = sent + failed;
		double due = t0 + (double)n / (double)rate;
		if (t < due) {
			sleep_until(due);
			t = now_s();
		} else {
			if (t - due > max_late)
				max_late = t - due;
			if (t - due > 0.001)
				late_batches++;
		}
		/* The window of active flows slides forward by `churn` flows per second. */
		uint64_t offset = (uint64_t)((t - t0) * (double)churn);
		long m = batch;
		if ((uint64_t)m > total - n)
			m = (long)(total - n);
		for (long j = 0; j < m; j++) {
			uint64_t k = offset + (n + (uint64_t)j) % (uint64_t)flows;
			if (k > flow_max)
				flow_max = k;
			frame_set(frames[j], k, n + (uint64_t)j, src_ip);
		}
		int r = sendmmsg(fd, msgs, (unsigned int)m, 0);
		calls++;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			last_errno = errno;
			if (errno != ENOBUFS && errno != EAGAIN) {
				fprintf(stderr, "udpblast: sendmmsg: %s\n", strerror(errno));
				break;
			}
			failed += (uint64_t)m;
		} else {
			sent += (uint64_t)r;
			if (r < m) /* the rest of the batch was refused (ring/queue full) */
				failed += (uint64_t)(m - r);
		}
		t = now_s();
	}
	double elapsed = now_s() - t0;

	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"iface\": \"%s\", \"rate\": %ld, \"duration\": %.3f, \"size\": %ld, "
	       "\"flows\": %ld, \"churn\": %ld, \"batch\": %ld, \"qdisc_bypass\": %s, "
	       "\"sent\": %llu, \"failed\": %llu, \"calls\": %llu, \"late_batches\": %llu, "
	       "\"max_late_us\": %.0f, \"flows_used\": %llu, \"elapsed\": %.6f, \"pps\": %.1f, "
	       "\"cpu_user\": %.6f, \"cpu_sys\": %.6f, \"last_errno\": %d, "
	       "\"interrupted\": %s}\n",
	       iface, rate, duration, size, flows, churn, batch, qdisc_bypass ? "true" : "false",
	       (unsigned long long)sent, (unsigned long long)failed, (unsigned long long)calls,
	       (unsigned long long)late_batches, max_late * 1e6, (unsigned long long)(flow_max + 1),
	       elapsed,
	       elapsed > 0 ? (double)sent / elapsed : 0.0,
	       (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6,
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6, last_errno,
	       stop_requested ? "true" : "false");
	close(fd);
	return 0;
}
