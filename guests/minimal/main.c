/*
 * main.c: kmain(), and which command-line word runs what.  The test and
 * benchmark modes live in files of their own; the few words too small for
 * one (hello, exit=, echo, fault=) are here.
 */
#include "bench.h"
#include "bench_virtio.h"
#include "ci.h"
#include "cmdline.h"
#include "exit.h"
#include "hypercall.h"
#include "lib.h"
#include "pic.h"
#include "serial.h"
#include "tests.h"
#include "virtio_fs.h"
#include "virtio_net.h"
#include "virtio_tests.h"

/* The ways to make trouble on purpose (fault=...); trap.c reports them. */
static void fault_ud(void)
{
	asm volatile("ud2");
}

static void fault_pf(void)
{
	/* Canonical, but above the 4 GiB our page tables map. */
	asm volatile("movq (%0), %%rax" : : "r"(0x400000000000ULL) : "rax", "memory");
}

static void fault_gp(void)
{
	/* Bits 63:47 are not all equal: not canonical, so #GP, not #PF. */
	asm volatile("movq (%0), %%rax" : : "r"(0x8000000000000000ULL) : "rax", "memory");
}

/*
 * With an IDT limit of 0 the #UD cannot be delivered, so the CPU raises #GP;
 * that cannot be delivered either, so #DF; when that fails too, the CPU
 * shuts down (a triple fault), which the VMM sees as a shutdown exit.
 */
static __attribute__((noinline)) void fault_triple(void)
{
	static const struct __attribute__((packed)) {
		u16 limit;
		u64 base;
	} empty_idt = { 0, 0 };

	asm volatile("lidt %0; ud2" : : "m"(empty_idt));
}

/*
 * echo: read one line, sleeping in hlt until the UART interrupts.  With
 * interrupts off between the "no data" check and "sti; hlt", a byte that
 * arrives in between leaves its IRQ pending, and the interrupt shadow of
 * sti makes sure it wakes the hlt instead of slipping in before it.
 */
static void cmd_echo(void)
{
	char line[128];
	size_t n = 0;
	int c;

	pic_setup((u8)~(1 << COM1_IRQ));
	serial_set_ier(IER_RDI);
	while (n < sizeof(line)) {
		c = serial_getc();
		if (c < 0) {
			asm volatile("sti; hlt; cli" : : : "memory");
			continue;
		}
		if (c == '\n' || c == '\r')
			break;
		line[n++] = (char)c;
	}
	serial_set_ier(0);
	pic_mask_all();
	print("echo: ");
	print_n(line, n);
	print("\n");
}

/* "exit=N" with N in 0..255, else -1. */
static int parse_status(const char *s, size_t n)
{
	long v = n <= 3 ? parse_decimal(s, n) : -1;

	return v <= 255 ? (int)v : -1;
}

/* The test= modes: each prints its checks and returns how many failed. */
static const struct {
	const char *word;
	int (*run)(void);
} tests[] = {
	{ "test=serial", test_serial },
	{ "test=hypercalls", test_hypercalls },
	{ "test=blk", test_blk },
	{ "test=blk-ro", test_blk_ro },
	{ "test=rng", test_rng },
	{ "test=net", test_net },
	{ "test=net-rx-tiny", test_net_rx_tiny },
	{ "test=virtio-abuse", test_virtio_abuse },
	{ "test=virtio-race", test_virtio_race },
	{ "test=virtio-fs", test_virtio_fs },
};

static bool tests_ran;
static int failures;

static void run_word(const char *w, size_t n)
{
	int status;

	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		if (word_is(w, n, tests[i].word)) {
			tests_ran = true;
			failures += tests[i].run();
			return;
		}
	}
	if (word_is(w, n, "hello")) {
		print("Hello from the minimal guest\n");
	} else if (n > 5 && memcmp(w, "exit=", 5) == 0 &&
		   (status = parse_status(w + 5, n - 5)) >= 0) {
		guest_exit(status);
	} else if (word_is(w, n, "msix=off")) {
		virtio_msix_off = true;
	} else if ((n > 3 && memcmp(w, "ip=", 3) == 0) || (n > 5 && memcmp(w, "peer=", 5) == 0)) {
		;	/* test=net's addresses: it finds them itself */
	} else if (virtio_fs_word(w, n)) {
		;	/* test=virtio-fs's file names and modes: the same */
	} else if (word_is(w, n, "echo")) {
		cmd_echo();
	} else if (word_is(w, n, "fault=ud")) {
		fault_ud();
	} else if (word_is(w, n, "fault=pf")) {
		fault_pf();
	} else if (word_is(w, n, "fault=gp")) {
		fault_gp();
	} else if (word_is(w, n, "fault=triple")) {
		fault_triple();
	} else if (run_ci_word(w, n) || run_bench_word(w, n) || run_bench_virtio_word(w, n)) {
		/* handled in ci.c, bench.c or bench_virtio.c */
	} else {
		/* The VMM may add words of its own, like console=ttyS0. */
		print("minimal: ignoring unknown argument '");
		print_n(w, n);
		print("'\n");
	}
}

/* Called by entry.S with exactly one of the two pointers set (or neither). */
void kmain(u64 boot_params, u64 start_info);
void kmain(u64 boot_params, u64 start_info)
{
	const char *p;

	serial_init();
	p = cmdline_init(boot_params, start_info);
	hypercall_init();

	/* Words separated by spaces, run left to right. */
	while (*p) {
		const char *w;

		while (*p == ' ')
			p++;
		for (w = p; *p && *p != ' '; p++)
			;
		if (p > w)
			run_word(w, p - w);
	}
	guest_exit(tests_ran && failures ? 1 : 0);
}
