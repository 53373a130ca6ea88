/*
 * lapic.c: the local APIC, through MMIO or, in x2APIC mode, MSRs.  The
 * guest never programs its timer or sends IPIs; it only has to keep the APIC
 * from swallowing the PIC's interrupts and acknowledge MSI-X ones.  Both are
 * handled inside KVM, not by the VMM.
 */
#include "lapic.h"

#define MSR_APIC_BASE	0x1b
#define APIC_ENABLE	(1 << 11)
#define APIC_X2APIC	(1 << 10)
#define APIC_EOI	0xb0
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

/*
 * A local APIC that is enabled (as VMMs and firmware leave it) passes the
 * PIC's output on only if LINT0 is programmed as ExtINT ("virtual wire");
 * after reset LINT0 is masked and PIC interrupts simply vanish.  So: software-
 * enable the APIC (spurious vector 0x2f, an IRQ stub that just EOIs) and make
 * LINT0 ExtINT.
 */
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

/* A write of 0 to the EOI register, at 0xfee000b0 or, in x2APIC mode, MSR 0x80b. */
void lapic_eoi(void)
{
	u64 base = rdmsr(MSR_APIC_BASE);

	if (base & APIC_X2APIC)
		wrmsr(0x800 + (APIC_EOI >> 4), 0);
	else
		*(volatile u32 *)((base & 0xffffff000ULL) + APIC_EOI) = 0;
}
