/*
 * trap.c: where every IDT vector ends up (entry.S's stubs call trap()).
 * Interrupts go to their device's handler and are acknowledged; exceptions
 * are reported and end the guest with status 3.
 */
#include "exit.h"
#include "lapic.h"
#include "pic.h"
#include "serial.h"
#include "virtio.h"

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
 * IRQs the guest did not ask for (and the APIC's spurious vector 0x2f) are
 * acknowledged and ignored.  If reporting an exception faults in turn, the
 * second fault exits silently rather than recursing into a triple fault.
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
		pic_eoi(f->vector - IRQ_BASE);
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
