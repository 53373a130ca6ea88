/*
 * bench.c: the work the benchmark harness (scripts/bench) times, identical
 * under swiftvmm and QEMU.  Each mode does N of one thing and nothing else;
 * the harness runs N and 0 and divides the difference, so boot and exit
 * costs cancel out.
 *
 *   bench=pio:N        N one-byte writes to port 0x80 (an exit each, nobody home)
 *   bench=hypercall:N  N no-op hypercalls (swiftvmm only)
 *   bench=serial:N     N bytes to COM1, polled as a 16550A driver does it
 *
 * The virtio modes (bench=blk-read:..., blk-write, net-tx, net-rx) are in
 * bench_virtio.c.
 */
#include "bench.h"
#include "exit.h"
#include "hypercall.h"
#include "lib.h"
#include "serial.h"

static void bench_pio(long n)
{
	while (n--)
		outb(0x80, 0);
}

static void bench_hypercall(long n)
{
	while (n--)
		hc_noop();
}

/* 64-byte lines of text, so a terminal or log shows something sensible. */
static void bench_serial(long n)
{
	static const char line[64] =
		"swiftvmm serial benchmark: 0123456789abcdefghijklmnopqrstuvwxyz\n";

	while (n > 0) {
		size_t chunk = n < 64 ? (size_t)n : 64;

		serial_write(line, chunk);
		n -= (long)chunk;
	}
}

bool run_bench_word(const char *w, size_t n)
{
	static const struct {
		const char *prefix;
		void (*run)(long);
	} modes[] = {
		{ "bench=pio:", bench_pio },
		{ "bench=hypercall:", bench_hypercall },
		{ "bench=serial:", bench_serial },
	};
	size_t i, p;
	long count;

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		p = strlen(modes[i].prefix);
		if (n <= p || memcmp(w, modes[i].prefix, p) != 0)
			continue;
		count = parse_decimal(w + p, n - p);
		if (count < 0)
			return false;
		if (modes[i].run == bench_hypercall && !have_hypercalls) {
			print("bench: no hypercall page\n");
			guest_exit(2);
		}
		modes[i].run(count);
		return true;
	}
	return false;
}
