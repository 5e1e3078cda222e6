/* Polled 16550 UART driver for COM1: what a minimal OS console does. */
#include "io.h"
#include "serial.h"

#define COM1		0x3F8
#define UART_RBR	(COM1 + 0)	/* receive buffer / transmit holding / divisor low (DLAB) */
#define UART_IER	(COM1 + 1)	/* interrupt enable / divisor high (DLAB) */
#define UART_FCR	(COM1 + 2)
#define UART_LCR	(COM1 + 3)
#define UART_MCR	(COM1 + 4)
#define UART_LSR	(COM1 + 5)

#define LSR_DR		0x01		/* data ready */
#define LSR_THRE	0x20		/* transmit holding register empty */

void serial_init(void)
{
	outb(UART_IER, 0x00);
	outb(UART_LCR, 0x80);		/* DLAB on */
	outb(COM1 + 0, 0x01);		/* divisor 1: 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(UART_LCR, 0x03);		/* 8N1, DLAB off */
	outb(UART_FCR, 0xC7);		/* enable and clear FIFOs */
	outb(UART_MCR, 0x03);		/* DTR, RTS */
}

void serial_putc(char c)
{
	while (!(inb(UART_LSR) & LSR_THRE))
		;
	outb(UART_RBR, (uint8_t)c);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

char serial_getc(void)
{
	while (!(inb(UART_LSR) & LSR_DR))
		;
	return (char)inb(UART_RBR);
}
