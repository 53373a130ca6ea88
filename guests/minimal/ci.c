/*
 * ci.c: modes that make the minimal guest end in each way swiftvmm's exit-code
 * contract covers (README, "Exit status"), so the host tests can produce every
 * row: debug-exit writes, the boot-complete marker, reboot and power-off, panics on the console,
 * oopses with a call trace (and a flood of them), hangs for the timeout, and an instruction KVM
 * cannot emulate.
 */
#include "ci.h"
#include "cmdline.h"
#include "lib.h"

#define DEBUG_EXIT_PORT	0xf4
#define BOOT_MARKER_PORT 0x3f0
#define BOOT_MARKER	123

/* "name=value" words: the value if w starts with prefix, else NULL. */
static const char *value_of(const char *w, size_t n, const char *prefix, size_t *len)
{
	size_t p = strlen(prefix);

	if (n < p || memcmp(w, prefix, p) != 0)
		return NULL;
	*len = n - p;
	return w + p;
}

/* Hang the way a stuck kernel does: spinning, or halted with interrupts off
 * (which only a VMM that can kick a vCPU out of KVM_RUN survives). */
static _Noreturn void hang(bool halt)
{
	for (;;) {
		if (halt)
			asm volatile("cli; hlt");
		else
			asm volatile("pause");
	}
}

/*
 * Write to COM1 forever, a page per exit (rep outsb: KVM hands the VMM the whole
 * string at once), faster than any terminal or pipe takes it: the host's
 * console backlog fills and the vCPU has to wait for room.  How a run that is
 * ended then (a timeout, a signal) still ends at once is what this tests.
 */
static _Noreturn void flood(void)
{
	static char page[4096];

	for (unsigned i = 0; i < sizeof(page); i++)
		page[i] = (i % 64 == 63) ? '\n' : 'x';
	for (;;) {
		const char *p = page;
		unsigned long count = sizeof(page);

		asm volatile("rep outsb" : "+S"(p), "+c"(count) : "d"(0x3f8) : "memory");
	}
}

/*
 * An oops in Linux's format, naming our own functions, so the host can
 * resolve the frames to file:line through this ELF's DWARF.  Offsets are
 * real (return addresses minus function starts); the sizes after the '/'
 * are not known at run time and are printed as 0.
 */
static void print_frame(const char *prefix, const char *name, u64 fn, u64 pc)
{
	print(prefix);
	print(name);
	print("+0x");
	print_hex(pc - fn);
	print("/0x0\n");
}

void oops_inner(u64 middle_ra) __attribute__((noinline));
void oops_middle(void) __attribute__((noinline));
void oops_outer(void) __attribute__((noinline));

void oops_inner(u64 middle_ra)
{
	u64 here;

	asm volatile("lea 0(%%rip), %0" : "=r"(here));
	print("BUG: minimal guest oops on request\n");
	print_frame("RIP: 0010:", "oops_inner", (u64)oops_inner, here);
	print("Call Trace:\n <TASK>\n");
	print_frame(" ", "oops_middle", (u64)oops_middle, (u64)__builtin_return_address(0));
	print_frame(" ", "oops_outer", (u64)oops_outer, middle_ra);
	print(" </TASK>\n");
}

void oops_middle(void)
{
	oops_inner((u64)__builtin_return_address(0));
	asm volatile("" ::: "memory");	/* keep the call a call, not a jump */
}

void oops_outer(void)
{
	oops_middle();
	asm volatile("" ::: "memory");
}

/*
 * A console flood of oops-shaped lines, as a hostile or broken guest may print them:
 * 20 oopses of 200 frames each, offsets that overflow 64 bits when added to any symbol,
 * names that are our own functions and names that are nothing.  The host keeps a bounded
 * number of frames of the last oops, resolves what it can and goes on to the next word.
 */
static void oops_flood(void)
{
	static const char *const names[] = { "oops_outer", "kmain", "no_such_function", "run_ci_word" };

	for (int oops = 0; oops < 20; oops++) {
		print("BUG: minimal guest oops flood ");
		print_dec(oops);
		print("\nRIP: 0010:oops_inner+0xffffffffffffffff/0x0\nCall Trace:\n <TASK>\n");
		for (int f = 0; f < 200; f++) {
			print(f % 3 ? " " : " ? ");
			print(names[f % 4]);
			print(f % 2 ? "+0xfffffffffffffff0/0xffffffffffffffff\n" : "+0x10/0x0\n");
		}
		print(" </TASK>\n");
	}
}

void panic_on_request(bool cut) __attribute__((noinline));

/*
 * What Linux's panic() prints: the line that decides, then the stack, then its last line.
 * swiftvmm decides the run at the first and keeps the console going until the last, so the
 * stack makes it into the report.  `cut` stops after the first line, as a console cut short.
 */
void panic_on_request(bool cut)
{
	u64 here;

	asm volatile("lea 0(%%rip), %0" : "=r"(here));
	print("Kernel panic - not syncing: minimal guest panics on request\n");
	if (cut)
		return;
	print("Call Trace:\n <TASK>\n");
	print_frame(" ", "panic_on_request", (u64)panic_on_request, here);
	print_frame(" ", "run_ci_word", (u64)run_ci_word, (u64)__builtin_return_address(0));
	print(" </TASK>\n---[ end Kernel panic - not syncing: minimal guest panics on request ]---\n");
}

/*
 * popcnt with a memory operand in the PCI hole, where there is no RAM: the
 * access is MMIO, so KVM must emulate the instruction, and its emulator has
 * no popcnt.  The vCPU exits with an emulation failure on any KVM host.
 */
static void emulation_failure(void)
{
	u64 r;

	asm volatile("popcnt (%1), %0" : "=r"(r) : "r"(0xd0000000ULL) : "memory");
}

bool run_ci_word(const char *w, size_t n)
{
	const char *v;
	size_t len;
	long x;

	if ((v = value_of(w, n, "debugexit=", &len)) && (x = parse_decimal(v, len)) >= 0) {
		outl(DEBUG_EXIT_PORT, (u32)x);	/* returns only without the device */
	} else if ((v = value_of(w, n, "say=", &len))) {
		print_n(v, len);
		print("\n");
	} else if (word_is(w, n, "bootdone")) {
		outb(BOOT_MARKER_PORT, BOOT_MARKER);
	} else if (word_is(w, n, "reboot")) {
		/* The keyboard controller's reset line, as Linux's reboot=k does it. */
		outb(0x64, 0xfe);
		print("minimal: still here after the reset command\n");
	} else if (word_is(w, n, "poweroff")) {
		/* Linux's last words on a PC without ACPI, then a halt nothing wakes. */
		print("reboot: Power down\n");
		hang(true);
	} else if (word_is(w, n, "panic")) {
		panic_on_request(false);
		asm volatile("" ::: "memory");	/* keep the call a call */
		hang(false);
	} else if (word_is(w, n, "panic=cut")) {
		panic_on_request(true);		/* and on to the next word */
	} else if (word_is(w, n, "oops")) {
		oops_outer();
	} else if (word_is(w, n, "oops-flood")) {
		oops_flood();
	} else if (word_is(w, n, "flood")) {
		flood();
	} else if (word_is(w, n, "hang=spin")) {
		hang(false);
	} else if (word_is(w, n, "hang=hlt")) {
		hang(true);
	} else if (word_is(w, n, "fault=emulation")) {
		emulation_failure();
	} else {
		return false;
	}
	return true;
}
