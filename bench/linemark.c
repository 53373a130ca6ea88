/*
 * linemark.c: run a command, print when a given line appeared on its stdout and when it exited.
 *
 *   linemark [-t SECONDS] [-o LOG] [-T] MARKER CMD [ARGS...]
 *       ->  "<ns to the MARKER line> <ns to exit> <exit code>" on stdout
 *
 * Times are CLOCK_MONOTONIC from just before fork. The marker time is taken when the read
 * that completed the first line equal to MARKER returned (a trailing \r, as a serial console
 * sends it, is ignored; a whole line, because a guest may also echo the command that prints
 * it); -1 if it never came. The exit time is taken when the child's pidfd says it ended, not
 * at EOF: a child's own children (swiftvmm's teardown helper) may hold the pipe open longer.
 * The child gets /dev/null as stdin and runs in its own process group; after -t SECONDS
 * (default 120) the group is killed and the exit code is 128 + SIGKILL. Its stdout is copied
 * to LOG if given, with -T each line prefixed by the milliseconds at which its first byte was
 * read (a guest's boot timeline on the clock of the machine that runs the VMM); its stderr
 * passes through. Built static (gcc -static -O2), so it runs in any small Linux user space.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0->tv_sec) * 1000000000LL + (t.tv_nsec - t0->tv_nsec);
}

/* Scan state: the current line (longer ones cannot match) and when the marker was seen. */
static const char *marker;
static size_t marker_len, len;
static int overlong;
static char line[4096];
static struct timespec t0;
static long long mark_ns = -1;
static int stamp_lines, at_line_start = 1;

/* One read of the child's stdout: 1 if it got bytes, 0 at EOF, -1 if nothing was there. */
static int take(int fd, int log)
{
	char buf[4096];
	ssize_t got = read(fd, buf, sizeof buf);
	if (got <= 0)
		return got == 0 ? 0 : -1;
	long long now = since(&t0);
	if (log >= 0 && !stamp_lines && write(log, buf, got) != got)
		perror("linemark: log");
	if (log >= 0 && stamp_lines) {
		/* Whole lines between stamps; a stamp goes before a line's first byte. */
		char out[sizeof buf * 2 + 64];
		size_t n = 0;
		for (ssize_t i = 0; i < got; i++) {
			if (at_line_start)
				n += snprintf(out + n, sizeof out - n, "%lld.%03lld ", now / 1000000,
					      now / 1000 % 1000);
			out[n++] = buf[i];
			at_line_start = buf[i] == '\n';
			if (n > sizeof out - 64) {
				if (write(log, out, n) != (ssize_t)n)
					perror("linemark: log");
				n = 0;
			}
		}
		if (n && write(log, out, n) != (ssize_t)n)
			perror("linemark: log");
	}
	for (ssize_t i = 0; i < got && mark_ns < 0; i++) {
		if (buf[i] != '\n') {
			if (len < sizeof line)
				line[len++] = buf[i];
			else
				overlong = 1;
			continue;
		}
		if (len > 0 && line[len - 1] == '\r')
			len--;
		if (!overlong && len == marker_len && memcmp(line, marker, len) == 0)
			mark_ns = now;
		len = 0;
		overlong = 0;
	}
	return 1;
}

int main(int argc, char **argv)
{
	int timeout_s = 120, opt;
	const char *log_path = NULL;
	while ((opt = getopt(argc, argv, "+t:o:T")) != -1) {
		if (opt == 't')
			timeout_s = atoi(optarg);
		else if (opt == 'o')
			log_path = optarg;
		else if (opt == 'T')
			stamp_lines = 1;
		else
			goto usage;
	}
	if (argc - optind < 2 || timeout_s <= 0) {
usage:
		fprintf(stderr, "usage: linemark [-t SECONDS] [-o LOG] [-T] MARKER CMD [ARGS...]\n");
		return 64;
	}
	marker = argv[optind];
	marker_len = strlen(marker);
	char **cmd = argv + optind + 1;
	int log = -1;
	if (log_path && (log = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
		perror(log_path);
		return 70;
	}
	int out[2];
	if (pipe2(out, O_CLOEXEC) < 0) {
		perror("pipe");
		return 70;
	}

	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 70;
	}
	if (pid == 0) {
		setpgid(0, 0);
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		dup2(null, 0);
		dup2(out[1], 1);
		execvp(cmd[0], cmd);
		perror(cmd[0]);
		_exit(127);
	}
	setpgid(pid, pid);   /* both sides, so a kill on timeout never misses the group */
	close(out[1]);
	int pidfd = syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0) {
		perror("pidfd_open");
		kill(pid, SIGKILL);
		return 70;
	}

	int exited = 0, pipe_open = 1, status = 0;
	long long exit_ns = -1, deadline = timeout_s * 1000000000LL;
	while (!exited) {
		struct pollfd fds[2] = { { pidfd, POLLIN, 0 }, { out[0], POLLIN, 0 } };
		long long left = deadline - since(&t0);
		if (left <= 0) {
			kill(-pid, SIGKILL);
			fprintf(stderr, "linemark: %s still running after %d s: killed\n", cmd[0], timeout_s);
			waitpid(pid, &status, 0);
			exit_ns = since(&t0);
			break;
		}
		int n = poll(fds, pipe_open ? 2 : 1, (int)(left / 1000000 + 1));
		if (n < 0 && errno != EINTR) {
			perror("poll");
			kill(-pid, SIGKILL);
			return 70;
		}
		if (n <= 0)
			continue;
		/* Output first, so a marker and the exit seen in one poll keep their order. */
		if (pipe_open && fds[1].revents)
			pipe_open = take(out[0], log) != 0;
		if (fds[0].revents) {
			exit_ns = since(&t0);
			waitpid(pid, &status, 0);
			exited = 1;
			/* What it wrote just before it ended may still be in the pipe: take that,
			 * without waiting for an EOF a grandchild may hold back. */
			fcntl(out[0], F_SETFL, O_NONBLOCK);
			int got;
			while (pipe_open && (got = take(out[0], log)) != -1)
				pipe_open = got != 0;
		}
	}
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	printf("%lld %lld %d\n", mark_ns, exit_ns, code);
	return 0;
}
