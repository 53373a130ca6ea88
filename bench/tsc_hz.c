/*
 * tsc_hz.c: the host's TSC rate in ticks per second, for scripts/bench.
 * The virtio bench modes time themselves with the guest's TSC, which KVM
 * runs at the host's rate unless a VMM asks it to scale (neither swiftvmm
 * nor QEMU does here).  We count ticks over 200 ms of CLOCK_MONOTONIC.
 */
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <x86intrin.h>

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(void)
{
	double t0 = now(), t1;
	uint64_t c0 = __rdtsc(), c1;
	struct timespec pause = { 0, 200 * 1000 * 1000 };

	nanosleep(&pause, NULL);
	c1 = __rdtsc();
	t1 = now();
	printf("%.0f\n", (c1 - c0) / (t1 - t0));
	return 0;
}
