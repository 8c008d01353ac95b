/*
 * connstorm: TCP connections to a local listener at a paced rate, for the attribution
 * benchmark (bench/attribution_bench.py).
 *
 *   connstorm ADDR PORT CONNS RATE WORKERS
 *
 * Starts a listener on ADDR:PORT (a process that accepts and closes), then WORKERS client
 * processes that together make CONNS connections at RATE per second (0: as fast as they
 * can), each paced against absolute CLOCK_MONOTONIC deadlines. A client connects, then
 * closes with an RST (SO_LINGER 0) so that no TIME_WAIT state piles up. Prints one line:
 * "CONNS SECONDS FAILED" once every client is done, and each client's pid on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
	struct timespec ts = {.tv_sec = (time_t)t, .tv_nsec = (long)((t - (time_t)t) * 1e9)};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void serve(int l)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (;;) {
		int a = accept4(l, NULL, NULL, SOCK_CLOEXEC);

		if (a >= 0)
			close(a);
	}
}

static int client(struct sockaddr_in *dst, long n, double rate)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	double t0 = now(), step = rate > 0 ? 1.0 / rate : 0;
	long failed = 0;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (long i = 0; i < n; i++) {
		int s;

		if (step > 0 && (i & 7) == 0)
			sleep_until(t0 + i * step);
		s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0 || connect(s, (struct sockaddr *)dst, sizeof(*dst)) < 0)
			failed++;
		else
			setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		if (s >= 0)
			close(s);
	}
	return failed > 255 ? 255 : (int)failed;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a;
	long conns, failed = 0;
	double rate, t0;
	int workers, l, one = 1;
	pid_t srv;

	if (argc != 6) {
		fprintf(stderr, "usage: %s ADDR PORT CONNS RATE WORKERS\n", argv[0]);
		return 2;
	}
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons(atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1)
		return 2;
	conns = atol(argv[3]);
	rate = atof(argv[4]);
	workers = atoi(argv[5]);
	if (workers < 1)
		workers = 1;

	l = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 4096)) {
		perror("listen");
		return 1;
	}
	srv = fork();
	if (srv == 0)
		serve(l);
	close(l);

	t0 = now();
	for (int w = 0; w < workers; w++) {
		long n = conns / workers + (w < conns % workers);
		pid_t p = fork();

		if (p == 0)
			return client(&a, n, rate / workers);
		fprintf(stderr, "%d\n", p);
	}
	for (int w = 0; w < workers; w++) {
		int st;

		if (wait(&st) > 0 && WIFEXITED(st))
			failed += WEXITSTATUS(st);
	}
	printf("%ld %.3f %ld\n", conns, now() - t0, failed);
	fflush(stdout);
	kill(srv, SIGKILL);
	waitpid(srv, NULL, 0);
	return 0;
}
