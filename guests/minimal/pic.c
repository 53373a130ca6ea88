/*
 * pic.c: the 8259 PICs.  Their power-on vectors (8-15 on a PC) collide with
 * CPU exceptions, so before any "sti" we remap them to 0x20-0x2f, where our
 * IDT has IRQ stubs.  ICW1 = 0x11: edge triggered, cascaded, ICW4 follows;
 * ICW2 = vector base; ICW3 = slave on IRQ 2; ICW4 = 8086 mode.
 */
#include "lapic.h"
#include "pic.h"

#define PIC1		0x20
#define PIC2		0xa0
#define PIC_EOI		0x20

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

void pic_eoi(unsigned irq)
{
	if (irq >= 8)
		outb(PIC2, PIC_EOI);
	outb(PIC1, PIC_EOI);
}
