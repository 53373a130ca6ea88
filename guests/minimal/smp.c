/*
 * smp.c: the second vCPU.  The trampoline (entry.S) is copied to AP_BASE in
 * low memory, which nothing else of ours or the VMM's uses; the BSP sends
 * INIT, then two start-up IPIs (as the MP specification has it; KVM needs
 * one) through the local APIC's interrupt command register.
 */
#include "smp.h"
#include "virtio.h"	/* rdtsc */

#define AP_BASE		0x10000
#define APIC_BASE	0xfee00000UL
#define APIC_ICR_LOW	0x300
#define APIC_ICR_HIGH	0x310
#define ICR_INIT	0x00004500	/* INIT, level assert */
#define ICR_STARTUP	0x00004600	/* start-up, vector in the low byte */
#define ICR_BUSY	0x00001000

extern char ap_trampoline[], ap_trampoline_end[];
void ap_main(void);

static void (*volatile ap_fn)(void);
static volatile bool ap_running;

/* Called on the AP by entry.S. */
void ap_main(void)
{
	ap_running = true;
	ap_fn();
}

static void icr_send(u32 low)
{
	volatile u32 *icr = (volatile u32 *)(APIC_BASE + APIC_ICR_LOW);

	*(volatile u32 *)(APIC_BASE + APIC_ICR_HIGH) = 1u << 24;	/* APIC ID 1 */
	*icr = low;
	for (u64 end = rdtsc() + (1ULL << 26); (*icr & ICR_BUSY) && rdtsc() < end;)
		asm volatile("pause");
}

static void wait_ticks(u64 ticks)
{
	for (u64 end = rdtsc() + ticks; rdtsc() < end;)
		asm volatile("pause");
}

bool smp_start_ap(void (*fn)(void))
{
	ap_fn = fn;
	memcpy((void *)AP_BASE, ap_trampoline, (size_t)(ap_trampoline_end - ap_trampoline));
	icr_send(ICR_INIT);
	wait_ticks(1ULL << 24);				/* ~10 ms */
	for (int i = 0; i < 2 && !ap_running; i++) {
		icr_send(ICR_STARTUP | (AP_BASE >> 12));
		wait_ticks(1ULL << 20);			/* ~200 us */
	}
	for (u64 end = rdtsc() + (1ULL << 32); !ap_running && rdtsc() < end;)
		asm volatile("pause");
	return ap_running;
}
