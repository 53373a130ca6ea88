/*
 * serial.c: polled output and interrupt-assisted input on COM1.
 *
 * Each port access is an exit to the VMM, so this file is stingy with them:
 * two writes to set the UART up, and one LSR poll per 16 output bytes.
 */
#include "serial.h"

volatile unsigned serial_irq_count;
volatile u8 serial_irq_iir;

/* Bytes we may still write before the transmit FIFO must be checked again. */
static unsigned fifo_room;

/*
 * Input that arrived before we set the UART up (the host may type before the
 * guest boots).  Switching the FIFOs on makes a 16550 (and QEMU's) drop its
 * receive buffer, so we take what is there first, and we do not ask for an
 * explicit reset either: a VMM that keeps its buffer then loses nothing.
 * Only a byte landing in the few microseconds between the last read and the
 * FCR write can still be lost.
 */
static char early_rx[16];
static unsigned early_len, early_pos;

/*
 * 8N1 with DLAB off, FIFOs on (receive trigger at 1 byte).  We leave the
 * divisor alone: a virtual UART ignores the baud rate, and setting it would
 * cost three more exits.  IER is 0 after reset.
 */
void serial_init(void)
{
	uart_out(UART_LCR, LCR_8N1);
	while (early_len < sizeof(early_rx) && (uart_in(UART_LSR) & LSR_DR))
		early_rx[early_len++] = uart_in(UART_RBR);
	uart_out(UART_FCR, 0x01);
}

/*
 * THRE set means the whole 16-byte transmit FIFO is empty, so after one
 * poll we can write 16 bytes blind.  Lines end in a plain "\n": the host side
 * reads lines, not a terminal.
 */
void serial_write(const char *s, size_t n)
{
	while (n--) {
		if (fifo_room == 0) {
			while (!(uart_in(UART_LSR) & LSR_THRE))
				;
			fifo_room = 16;
		}
		uart_out(UART_THR, *s++);
		fifo_room--;
	}
}

/* Wait (boundedly) until the transmitter is completely idle; returns LSR. */
u8 serial_wait_idle(void)
{
	u8 lsr = 0;

	for (int i = 0; i < 1000; i++) {
		lsr = uart_in(UART_LSR);
		if ((lsr & (LSR_THRE | LSR_TEMT)) == (LSR_THRE | LSR_TEMT))
			break;
	}
	fifo_room = (lsr & LSR_THRE) ? 16 : 0;
	return lsr;
}

/* One received byte, or -1 if there is none. */
int serial_getc(void)
{
	if (early_pos < early_len)
		return (u8)early_rx[early_pos++];
	if (!(uart_in(UART_LSR) & LSR_DR))
		return -1;
	return uart_in(UART_RBR);
}

/* Interrupt sources on or off; OUT2 must be set for the IRQ to reach the PIC. */
void serial_set_ier(u8 ier)
{
	uart_out(UART_MCR, MCR_NORMAL);
	uart_out(UART_IER, ier);
}

/*
 * IRQ 4.  Reading IIR tells us why (and acknowledges a "THR empty"
 * interrupt); received bytes are left for serial_getc(), which clears the
 * "data available" condition by reading them.
 */
void serial_irq(void)
{
	serial_irq_iir = uart_in(UART_IIR);
	serial_irq_count++;
}
