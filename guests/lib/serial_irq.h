/* Interrupt-driven receive on COM1: IRQ 4 through the 8259, received bytes in a ring buffer. */
#ifndef SERIAL_IRQ_H
#define SERIAL_IRQ_H

#include <stdint.h>

#define SERIAL_IRQ	4		/* COM1's line on the master 8259 */

/* After serial_init(), pic_init() and an IDT is loaded: install the IRQ 4 gate, unmask it, set IER and OUT2. */
void serial_irq_init(void);
/* The next received byte; waits for it with sti; hlt. Returns with interrupts enabled. */
char serial_irq_getc(void);
/* How many times the IRQ 4 handler has run, and how many bytes it has taken from the UART. */
uint32_t serial_irq_count(void);
uint32_t serial_irq_bytes(void);

#endif
