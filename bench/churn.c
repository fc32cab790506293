/* Churn generator for the benchmark: connections that pass briefly through
 * CLOSE_WAIT.  The client connects and closes at once (so the peer closes
 * first); the server reads EOF and closes at once.  Two tracepoint events
 * per connection.  Loopback only: the address is fixed to 127.0.0.1.
 *
 *   churn PORT RATE SECONDS   -> prints "DONE <connections> <seconds>"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
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

static void serve(int lfd)
{
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[256];
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, 1000);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == lfd) {
				int c;
				while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
				}
			} else {
				char buf[64];
				if (read(fd, buf, sizeof buf) <= 0)
					close(fd); /* EOF: the peer closed; close at once */
			}
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: churn PORT RATE SECONDS\n");
		return 2;
	}
	int port = atoi(argv[1]);
	double rate = atof(argv[2]), secs = atof(argv[3]);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);

	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(lfd, (void *)&sa, sizeof sa) || listen(lfd, 4096)) {
		perror("listen");
		return 1;
	}
	pid_t server = fork();
	if (server == 0) {
		serve(lfd);
		_exit(0);
	}
	close(lfd);
	printf("READY server=%d\n", server);
	fflush(stdout);

	double start = now(), end = start + secs;
	long made = 0;
	while (now() < end) {
		/* Pace in slices of 1 ms so the rate is smooth. */
		double due = start + made / rate;
		double t = now();
		if (t < due) {
			struct timespec ts = {0, (long)((due - t) * 1e9)};
			nanosleep(&ts, NULL);
			continue;
		}
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (void *)&sa, sizeof sa) < 0) {
			if (c >= 0)
				close(c);
			continue;
		}
		close(c);
		made++;
	}
	double took = now() - start;
	usleep(200000); /* let the server close the last ones */
	kill(server, SIGKILL);
	waitpid(server, NULL, 0);
	printf("DONE %ld %.3f\n", made, took);
	return 0;
}
