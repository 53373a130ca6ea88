/*
 * tests.c: test=serial and test=hypercalls.  Each check prints one line,
 * "PASS <name>" or "FAIL <name>: <why>", which the host tests look for.
 */
#include "check.h"
#include "hypercall.h"
#include "lib.h"
#include "pic.h"
#include "serial.h"
#include "tests.h"

/*
 * The UART checks.  Nothing is printed while DLAB or loopback is on (the
 * bytes would land in the divisor latch or loop back to us), so each check
 * first collects its readings and reports afterwards.
 */
static void test_registers(void)
{
	u8 a, b, dll, dlm, ier, lsr;

	/* Scratch: plain storage, two patterns. */
	uart_out(UART_SCR, 0xa5);
	a = uart_in(UART_SCR);
	uart_out(UART_SCR, 0x5a);
	b = uart_in(UART_SCR);
	check("serial-scratch", a == 0xa5 && b == 0x5a, "read back 0x", a << 8 | b);

	/* DLAB=1 maps the divisor latch over RBR/IER; DLAB=0 brings IER back. */
	uart_out(UART_LCR, LCR_DLAB | LCR_8N1);
	uart_out(UART_DLL, 0x0c);
	uart_out(UART_DLM, 0x01);
	dll = uart_in(UART_DLL);
	dlm = uart_in(UART_DLM);
	uart_out(UART_LCR, LCR_8N1);
	ier = uart_in(UART_IER);		/* 0 since reset, whatever DLM is */
	uart_out(UART_LCR, LCR_DLAB | LCR_8N1);
	uart_out(UART_DLL, 0x01);		/* back to 115200 baud */
	uart_out(UART_DLM, 0x00);
	uart_out(UART_LCR, LCR_8N1);
	check("serial-dlab", dll == 0x0c && dlm == 0x01 && ier == 0,
	      "DLL, DLM, IER read 0x", dll << 16 | dlm << 8 | ier);

	/* Only the low 4 IER bits exist.  0xf5 enables no source that can fire
	 * right now (no data received, no line errors). */
	uart_out(UART_IER, 0xf5);
	ier = uart_in(UART_IER);
	uart_out(UART_IER, 0);
	check("serial-ier", ier == 0x05, "wrote 0xf5, read 0x", ier);

	/* FIFOs on (serial_init) and no interrupt: bits 7:6 = 11, bit 0 = 1. */
	a = uart_in(UART_IIR);
	check("serial-iir", (a & 0xc1) == 0xc1, "IIR 0x", a);

	lsr = serial_wait_idle();
	check("serial-lsr", (lsr & (LSR_THRE | LSR_TEMT)) == (LSR_THRE | LSR_TEMT),
	      "LSR never idle: 0x", lsr);
}

/*
 * Loopback (MCR bit 4): the transmitter feeds the receiver, and the modem
 * status inputs follow the modem control outputs.  The VMM must not send the
 * looped byte ('Z') to the host.
 */
static void test_loopback(void)
{
	static const u8 mcr[4] = { MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2 };
	static const u8 msr[4] = { 0x20, 0x10, 0x40, 0x80 };	/* DSR CTS RI DCD */
	u8 lsr1 = 0, lsr2, rbr, got[4];
	int i;

	serial_wait_idle();	/* in loopback, queued output would loop too */
	uart_out(UART_MCR, MCR_LOOP);
	for (i = 0; i < 32 && (uart_in(UART_LSR) & LSR_DR); i++)
		uart_in(UART_RBR);		/* drop stale input */
	uart_out(UART_THR, 'Z');
	for (i = 0; i < 100 && !(lsr1 & LSR_DR); i++)
		lsr1 = uart_in(UART_LSR);
	rbr = uart_in(UART_RBR);
	lsr2 = uart_in(UART_LSR);
	for (i = 0; i < 4; i++) {
		uart_out(UART_MCR, MCR_LOOP | mcr[i]);
		got[i] = uart_in(UART_MSR) & 0xf0;
	}
	uart_out(UART_MCR, MCR_NORMAL);
	serial_wait_idle();

	check("serial-loopback", (lsr1 & LSR_DR) && rbr == 'Z' && !(lsr2 & LSR_DR),
	      "LSR before, RBR, LSR after read 0x", lsr1 << 16 | rbr << 8 | lsr2);
	for (i = 0; i < 4 && got[i] == msr[i]; i++)
		;
	check("serial-msr", i == 4, "MSR high nibbles (DTR RTS OUT1 OUT2) 0x",
	      got[0] << 24 | got[1] << 16 | got[2] << 8 | got[3]);
}

/* PIT channel 0, mode 0 (interrupt on terminal count): one IRQ 0 after 'count' ticks. */
static void pit_oneshot(u16 count)
{
	outb(0x43, 0x30);
	outb(0x40, count & 0xff);
	outb(0x40, count >> 8);
}

/*
 * The THR-empty interrupt: with the PIC remapped and only IRQ 4 unmasked,
 * enabling IER.THRI while the transmitter is idle must raise IRQ 4 at once,
 * and it must arrive on vector 0x24, where serial_irq() records IIR.
 * We do not wait in hlt: if the interrupt never comes, nothing would wake
 * us.  Instead we open a one-instruction interrupt window ("sti; nop; cli")
 * a bounded number of times; an interrupt that is pending is taken in the
 * first window.
 */
static void test_interrupt(void)
{
	u8 iir, irr;
	int i;

	serial_wait_idle();
	pic_setup((u8)~(1 << COM1_IRQ));
	serial_irq_count = 0;
	serial_irq_iir = 0;
	serial_set_ier(IER_THRI);
	for (i = 0; i < 1000 && !serial_irq_count; i++)
		asm volatile("sti; nop; cli" : : : "memory");
	/*
	 * Where guest kernel code is emulated (PVM hosts), a busy machine can let
	 * those windows pass before the interrupt is injected.  Then wait in hlt,
	 * with the PIT (IRQ 0) as an alarm clock so a missing interrupt is still a
	 * FAIL and not a hang: up to four one-shots of 65535 ticks (~55 ms each).
	 */
	if (!serial_irq_count) {
		pic_setup((u8)~((1 << COM1_IRQ) | 1));
		for (i = 0; i < 4 && !serial_irq_count; i++) {
			pit_oneshot(0xffff);
			asm volatile("sti; hlt; cli" : : : "memory");
		}
	}
	if (serial_irq_count) {
		serial_set_ier(0);
		pic_mask_all();
		check("serial-thri", (serial_irq_iir & 0x0f) == 0x02,
		      "IIR in the IRQ handler 0x", serial_irq_iir);
		check("serial-irq", true, "", 0);
		return;
	}
	iir = uart_in(UART_IIR);
	irr = pic_read_irr();
	serial_set_ier(0);
	pic_mask_all();
	check("serial-thri", (iir & 0x0f) == 0x02, "IIR 0x", iir);
	check("serial-irq", false, irr & (1 << COM1_IRQ) ?
	      "IRQ 4 pending at the PIC but never delivered, PIC IRR 0x" :
	      "IRQ 4 never reached the PIC, PIC IRR 0x", irr);
}

int test_serial(void)
{
	check_failures = 0;
	test_registers();
	test_loopback();
	test_interrupt();
	return check_failures;
}

static bool all_zero(const u8 *p, size_t n)
{
	while (n--)
		if (*p++)
			return false;
	return true;
}

/* 32-bit FNV-1a: offset basis 2166136261, prime 16777619. */
static u32 fnv1a(const void *buf, size_t len)
{
	const u8 *p = buf;
	u32 h = 2166136261u;

	while (len--)
		h = (h ^ *p++) * 16777619u;
	return h;
}

int test_hypercalls(void)
{
	static const char msg[] = "Hello from console_write\n";
	char ver[64], small[8];
	u8 r1[32], r2[32];
	volatile u8 *page = (volatile u8 *)HYPERCALL_PAGE;
	long r, r_small;
	u64 t1, t2;
	u8 before, after;

	if (!have_hypercalls) {
		print("FAIL hypercalls: no hypercall page\n");
		return 1;
	}
	check_failures = 0;

	check("hypercall-info", hypercall_info.abi_version == 1 && hypercall_info.nr_slots == 127,
	      "ABI version, slots 0x",
	      (long)hypercall_info.abi_version << 32 | hypercall_info.nr_slots);

	r = hc_noop();
	check("hypercall-noop", r == 0, "returned ", r);

	/* Also ask for a truncated copy: "swi" and the NUL, nothing after. */
	memset(ver, 0, sizeof(ver));
	memset(small, 'x', sizeof(small));
	r = hc_version(ver, sizeof(ver) - 1);
	r_small = hc_version(small, 4);
	if (r != 1 || r_small != 1)
		check("hypercall-version", false, "returned ", r != 1 ? r : r_small);
	else
		check("hypercall-version",
		      strncmp(ver, "swiftvmm ", 9) == 0 && memcmp(small, "swi\0xxxx", 8) == 0,
		      "bad string, length ", strlen(ver));

	t1 = hc_time_ns();
	t2 = hc_time_ns();
	if (t1 == 0)
		check("hypercall-time_ns", false, "first reading ", 0);
	else
		check("hypercall-time_ns", t2 >= t1, "went back by ns ", t1 - t2);

	memset(r1, 0, sizeof(r1));
	memset(r2, 0, sizeof(r2));
	r = hc_random(r1, sizeof(r1));
	if (r != sizeof(r1) || (r = hc_random(r2, sizeof(r2))) != sizeof(r2))
		check("hypercall-random", false, "returned ", r);
	else
		check("hypercall-random", !all_zero(r1, 32) && !all_zero(r2, 32) &&
		      memcmp(r1, r2, 32) != 0, "all zero or repeated, first byte 0x", r1[0]);

	r = hc_console_write(msg, sizeof(msg) - 1);
	check("hypercall-console_write", r == sizeof(msg) - 1, "returned ", r);
	r = hc_console_write((const void *)0x7fff00000000ULL, 16);
	check("hypercall-console_write-efault", r == -EFAULT, "returned ", r);
	r = hc_console_write(msg, 2 << 20);
	check("hypercall-console_write-einval", r == -EINVAL, "returned ", r);

	r = hc_call_nr(100);
	check("hypercall-enosys", r == -ENOSYS, "returned ", r);

	/* The worked example from docs/hypercalls.md: the host's FNV-1a of a
	 * buffer must equal ours, and a bad buffer must give EFAULT. */
	r = hc_checksum(msg, sizeof(msg) - 1);
	check("hypercall-checksum", r == (long)fnv1a(msg, sizeof(msg) - 1), "returned 0x", r);
	r = hc_checksum((const void *)0x7fff00000000ULL, 16);
	check("hypercall-checksum-efault", r == -EFAULT, "returned ", r);

	/* The page is a read-only memory slot: the VMM drops our write.  If it
	 * did not, put the byte back before anyone calls slot 0 again. */
	before = page[0];
	page[0] = ~before;
	after = page[0];
	if (after != before)
		page[0] = before;
	check("hypercall-readonly", after == before, "byte at 0x2000 changed to 0x", after);

	return check_failures;
}
