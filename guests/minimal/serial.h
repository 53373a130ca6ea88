/*
 * serial.h: the 16550A UART at COM1, the guest's console.
 */
#ifndef MINIMAL_SERIAL_H
#define MINIMAL_SERIAL_H

#include "lib.h"

#define COM1		0x3f8
#define COM1_IRQ	4

/* Register offsets from the base port.  DLAB (LCR bit 7) swaps 0 and 1. */
#define UART_RBR	0	/* read: receive buffer */
#define UART_THR	0	/* write: transmit holding */
#define UART_DLL	0	/* DLAB=1: divisor latch, low byte */
#define UART_IER	1	/* interrupt enable */
#define UART_DLM	1	/* DLAB=1: divisor latch, high byte */
#define UART_IIR	2	/* read: interrupt identification */
#define UART_FCR	2	/* write: FIFO control */
#define UART_LCR	3	/* line control */
#define UART_MCR	4	/* modem control */
#define UART_LSR	5	/* line status */
#define UART_MSR	6	/* modem status */
#define UART_SCR	7	/* scratch */

#define IER_RDI		0x01	/* received data available */
#define IER_THRI	0x02	/* transmit holding register empty */
#define LCR_8N1		0x03
#define LCR_DLAB	0x80
#define MCR_DTR		0x01
#define MCR_RTS		0x02
#define MCR_OUT1	0x04
#define MCR_OUT2	0x08	/* on a PC, gates the UART's IRQ line */
#define MCR_LOOP	0x10
#define MCR_NORMAL	(MCR_DTR | MCR_RTS | MCR_OUT2)
#define LSR_DR		0x01
#define LSR_THRE	0x20
#define LSR_TEMT	0x40

static inline u8 uart_in(int reg)
{
	return inb(COM1 + reg);
}

static inline void uart_out(int reg, u8 v)
{
	outb(COM1 + reg, v);
}

void serial_init(void);
void serial_write(const char *s, size_t n);
u8 serial_wait_idle(void);
int serial_getc(void);
void serial_set_ier(u8 ier);
void serial_irq(void);

/* Written by serial_irq(), the vector 0x24 handler. */
extern volatile unsigned serial_irq_count;
extern volatile u8 serial_irq_iir;

#endif
