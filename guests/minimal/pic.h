/*
 * pic.h: the pair of 8259 interrupt controllers, remapped and masked.
 */
#ifndef MINIMAL_PIC_H
#define MINIMAL_PIC_H

#include "lib.h"

/* IRQ n arrives on vector IRQ_BASE + n (0x20-0x2f), where the IDT has stubs. */
#define IRQ_BASE	0x20

/*
 * Remap both PICs on first use (and set the local APIC's virtual wire), then
 * set the master's mask: a 1 bit masks that IRQ.  The slave stays masked.
 */
void pic_setup(u8 master_mask);
/* Every IRQ off: the slave reaches the CPU only through the master's IRQ 2. */
void pic_mask_all(void);
/* Only for IRQs 8-15: the slave's mask (the master's IRQ 2 must be open). */
void pic_set_slave_mask(u8 mask);
/* The master's interrupt request register: which IRQs are pending. */
u8 pic_read_irr(void);
/* End of interrupt for IRQ 0-15: the slave too if it came through it. */
void pic_eoi(unsigned irq);

#endif
