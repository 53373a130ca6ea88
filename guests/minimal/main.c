/*
 * main.c: boot information, the command line, interrupts and faults, exit.
 */
#include "hypercall.h"
#include "lib.h"
#include "main.h"
#include "serial.h"
#include "virtio.h"

bool have_hypercalls;

/*
 * Leaving the VM.  Under swiftvmm, the exit hypercall.  Elsewhere (QEMU),
 * isa-debug-exit: a 32-bit write of the status to port 0xf4 makes QEMU exit
 * with (status << 1) | 1.  If neither works, stop here for good.
 */
_Noreturn void guest_exit(int status)
{
	if (have_hypercalls)
		hc_exit(status);
	outl(0xf4, status);
	for (;;)
		asm volatile("cli; hlt");
}

/*
 * The 8259 PICs.  Their power-on vectors (8-15 on a PC) collide with CPU
 * exceptions, so before any "sti" we remap them to 0x20-0x2f, where our IDT
 * has IRQ stubs.  ICW1 = 0x11: edge triggered, cascaded, ICW4 follows;
 * ICW2 = vector base; ICW3 = slave on IRQ 2; ICW4 = 8086 mode.
 */
#define PIC1		0x20
#define PIC2		0xa0
#define PIC_EOI		0x20
#define IRQ_BASE	0x20

void pic_setup(u8 master_mask)
{
	static bool remapped;

	if (!remapped) {
		lapic_virtual_wire();
		outb(PIC1, 0x11);
		outb(PIC2, 0x11);
		outb(PIC1 + 1, IRQ_BASE);
		outb(PIC2 + 1, IRQ_BASE + 8);
		outb(PIC1 + 1, 0x04);
		outb(PIC2 + 1, 0x02);
		outb(PIC1 + 1, 0x01);
		outb(PIC2 + 1, 0x01);
		outb(PIC2 + 1, 0xff);
		remapped = true;
	}
	outb(PIC1 + 1, master_mask);
}

void pic_mask_all(void)
{
	outb(PIC1 + 1, 0xff);
}

/* Only for IRQs 8-15: the slave's mask (the master's IRQ 2 must be open). */
void pic_set_slave_mask(u8 mask)
{
	outb(PIC2 + 1, mask);
}

/* OCW3 0x0a selects the interrupt request register for the next read. */
u8 pic_read_irr(void)
{
	outb(PIC1, 0x0a);
	return inb(PIC1);
}

/*
 * A local APIC that is enabled (as VMMs and firmware leave it) passes the
 * PIC's output on only if LINT0 is programmed as ExtINT ("virtual wire");
 * after reset LINT0 is masked and PIC interrupts simply vanish.  So: software-
 * enable the APIC (spurious vector 0x2f, an IRQ stub that just EOIs) and make
 * LINT0 ExtINT, through MMIO or, in x2APIC mode, MSRs.  These are handled
 * inside KVM, not by the VMM.
 */
#define MSR_APIC_BASE	0x1b
#define APIC_ENABLE	(1 << 11)
#define APIC_X2APIC	(1 << 10)
#define APIC_SVR	0xf0
#define APIC_LVT0	0x350
#define SVR_VALUE	(0x100 | 0x2f)
#define LVT_EXTINT	0x700

static u64 rdmsr(u32 msr)
{
	u32 lo, hi;

	asm volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return (u64)hi << 32 | lo;
}

static void wrmsr(u32 msr, u64 v)
{
	asm volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

void lapic_virtual_wire(void)
{
	u64 base = rdmsr(MSR_APIC_BASE);
	u64 mmio = base & 0xffffff000ULL;

	if (!(base & APIC_ENABLE))
		return;		/* no APIC in the way: the PIC talks to the CPU */
	if (base & APIC_X2APIC) {
		wrmsr(0x800 + (APIC_SVR >> 4), SVR_VALUE);
		wrmsr(0x800 + (APIC_LVT0 >> 4), LVT_EXTINT);
	} else if (mmio < MAPPED_LIMIT) {
		*(volatile u32 *)(mmio + APIC_SVR) = SVR_VALUE;
		*(volatile u32 *)(mmio + APIC_LVT0) = LVT_EXTINT;
	}
}

/*
 * End of interrupt for a vector the local APIC delivered (MSI-X): a write
 * of 0 to the EOI register, at 0xfee000b0 or, in x2APIC mode, MSR 0x80b.
 */
#define APIC_EOI	0xb0

static void lapic_eoi(void)
{
	u64 base = rdmsr(MSR_APIC_BASE);

	if (base & APIC_X2APIC)
		wrmsr(0x800 + (APIC_EOI >> 4), 0);
	else
		*(volatile u32 *)((base & 0xffffff000ULL) + APIC_EOI) = 0;
}

/* The stack as entry.S's isr_common leaves it for trap(). */
struct trap_frame {
	u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;	/* pushed by the CPU */
};

static const char *const exception_names[32] = {
	"DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM",
	"DF", "CSO", "TS", "NP", "SS", "GP", "PF", "RES15",
	"MF", "AC", "MC", "XM", "VE", "CP", "RES22", "RES23",
	"RES24", "RES25", "RES26", "RES27", "HV", "VC", "SX", "RES31",
};

/*
 * Called by entry.S for every vector.  IRQs are acknowledged and return.
 * Exceptions are reported and end the guest with status 3.  If reporting
 * faults in turn, the second fault exits silently rather than recursing
 * into a triple fault.
 */
void trap(struct trap_frame *f);
void trap(struct trap_frame *f)
{
	static bool in_fault;
	u64 cr2;

	if (f->vector == VIRTIO_MSIX_VECTOR) {
		virtio_msix_count++;
		lapic_eoi();
		return;
	}
	if (f->vector >= IRQ_BASE) {
		if (f->vector == IRQ_BASE + COM1_IRQ)
			serial_irq();
		else if (f->vector == virtio_intx_vector)
			virtio_intx_irq();
		if (f->vector >= IRQ_BASE + 8)
			outb(PIC2, PIC_EOI);
		outb(PIC1, PIC_EOI);
		return;
	}

	if (in_fault)
		guest_exit(3);
	in_fault = true;
	asm volatile("mov %%cr2, %0" : "=r"(cr2));

	/* The fault may have hit in the middle of a UART test: make sure the
	 * next bytes really leave through the transmitter. */
	uart_out(UART_LCR, LCR_8N1);
	uart_out(UART_MCR, MCR_NORMAL);

	print("FAULT: #");
	print(exception_names[f->vector]);
	print(" (vector ");
	print_dec(f->vector);
	print(") at rip=0x");
	print_hex(f->rip);
	print(" error=0x");
	print_hex(f->error);
	print(" cr2=0x");
	print_hex(cr2);
	print("\n");
	guest_exit(3);
}

/* The ways to make trouble on purpose (fault=...). */
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

/* Where the VMM left the command line, or "" if it did not. */
#define BP_EXT_CMD_LINE_PTR	0x0c8
#define BP_CMD_LINE_PTR		0x228
#define HVM_START_MAGIC		0x336ec578

struct hvm_start_info {
	u32 magic, version, flags, nr_modules;
	u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	u32 memmap_entries, reserved;
};

static const char *find_cmdline(u64 boot_params, u64 start_info)
{
	u64 addr = 0;

	if (boot_params && boot_params < MAPPED_LIMIT) {
		addr = *(const u32 *)(boot_params + BP_CMD_LINE_PTR) |
		       (u64)*(const u32 *)(boot_params + BP_EXT_CMD_LINE_PTR) << 32;
	} else if (start_info) {
		const struct hvm_start_info *si = (const void *)start_info;

		if (si->magic == HVM_START_MAGIC) {
			addr = si->cmdline_paddr;
		} else {
			print("minimal: bad hvm_start_info magic 0x");
			print_hex(si->magic);
			print("\n");
		}
	}
	if (addr >= MAPPED_LIMIT) {
		print("minimal: command line above 4 GiB ignored\n");
		addr = 0;
	}
	return addr ? (const char *)addr : "";
}

bool word_is(const char *w, size_t n, const char *s)
{
	return strlen(s) == n && memcmp(w, s, n) == 0;
}

/* "exit=N" with N in 0..255, else -1. */
static int parse_status(const char *s, size_t n)
{
	long v = n <= 3 ? parse_decimal(s, n) : -1;

	return v <= 255 ? (int)v : -1;
}

static bool tests_ran;
static int failures;
static const char *cmdline;

static void run_word(const char *w, size_t n)
{
	int status;

	if (word_is(w, n, "hello")) {
		print("Hello from the minimal guest\n");
	} else if (n > 5 && memcmp(w, "exit=", 5) == 0 &&
		   (status = parse_status(w + 5, n - 5)) >= 0) {
		guest_exit(status);
	} else if (word_is(w, n, "test=serial")) {
		tests_ran = true;
		failures += test_serial();
	} else if (word_is(w, n, "test=hypercalls")) {
		tests_ran = true;
		failures += test_hypercalls();
	} else if (word_is(w, n, "test=blk")) {
		tests_ran = true;
		failures += test_blk();
	} else if (word_is(w, n, "test=blk-ro")) {
		tests_ran = true;
		failures += test_blk_ro();
	} else if (word_is(w, n, "test=rng")) {
		tests_ran = true;
		failures += test_rng();
	} else if (word_is(w, n, "test=net")) {
		tests_ran = true;
		failures += test_net(cmdline);
	} else if (word_is(w, n, "test=virtio-abuse")) {
		tests_ran = true;
		failures += test_virtio_abuse();
	} else if (word_is(w, n, "msix=off")) {
		virtio_msix_off = true;
	} else if ((n > 3 && memcmp(w, "ip=", 3) == 0) || (n > 5 && memcmp(w, "peer=", 5) == 0)) {
		;	/* test=net's addresses: it finds them itself */
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
	} else if (run_ci_word(w, n)) {
		/* handled in ci.c */
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
	p = cmdline = find_cmdline(boot_params, start_info);
	have_hypercalls = memcmp((const void *)hypercall_info.magic, "SWIFTVMM", 8) == 0;

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
