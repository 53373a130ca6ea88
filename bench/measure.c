/*
 * measure.c: run a command, print its wall time, peak RSS and exit code.
 *
 *   measure CMD [ARGS...]    ->  "<wall ns> <peak RSS KiB> <exit code>" on stdout
 *
 * Why not time it from Python: a process's peak RSS (ru_maxrss) survives execve, so a child
 * that Python forks reports at least Python's own RSS, whatever it runs. This program is
 * small; the child it forks starts from its few hundred KiB. The command's stdout and
 * stdin go to /dev/null, its stderr passes through.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: measure CMD [ARGS...]\n");
		return 64;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 70;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		execvp(argv[1], argv + 1);
		perror(argv[1]);
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0) {
		perror("wait4");
		return 70;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	printf("%lld %ld %d\n", ns, ru.ru_maxrss, code);
	return 0;
}
