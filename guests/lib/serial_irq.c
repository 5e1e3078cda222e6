/* COM1's receive interrupt: the handler drains RBR into a ring buffer and sends EOI; readers sleep in HLT.
 *
 * When the ring is full the handler clears IER's receive bit (the UART keeps the rest, the line drops);
 * the reader sets it again once half the ring is free, which raises the line anew if bytes wait.
 */
#include "idt.h"
#include "io.h"
#include "pic.h"
#include "serial_irq.h"

#define COM1		0x3F8
#define UART_RBR	(COM1 + 0)
#define UART_IER	(COM1 + 1)
#define UART_MCR	(COM1 + 4)
#define UART_LSR	(COM1 + 5)

#define IER_ERXRDY	0x01		/* received data available */
#define MCR_DTR_RTS	0x03
#define MCR_OUT2	0x08		/* gates the UART's interrupt onto the ISA IRQ line */
#define LSR_DR		0x01

#define RING_SIZE	256		/* a power of two: head and tail run free and wrap */

static volatile char ring[RING_SIZE];
static volatile uint32_t head, tail, throttled, irqs, bytes;

void serial_irq_entry(void);
void serial_irq_spurious(void);

/* Entry stubs: keep every register for the C handler; a spurious IRQ 7 gets no EOI (nothing is in service). */
__asm__(
	".globl serial_irq_entry, serial_irq_spurious\n"
	"serial_irq_entry:\n"
	"	pushal\n"
	"	cld\n"
	"	call serial_irq_handler\n"
	"	popal\n"
	"	iret\n"
	"serial_irq_spurious:\n"
	"	iret\n");

void serial_irq_handler(void)
{
	irqs++;
	while (inb(UART_LSR) & LSR_DR) {
		if (head - tail == RING_SIZE) {
			throttled = 1;
			outb(UART_IER, 0);
			break;
		}
		ring[head % RING_SIZE] = (char)inb(UART_RBR);
		head++;
		bytes++;
	}
	pic_eoi(SERIAL_IRQ);
}

void serial_irq_init(void)
{
	idt_set_gate(PIC_MASTER_BASE + SERIAL_IRQ, serial_irq_entry);
	idt_set_gate(PIC_MASTER_BASE + 7, serial_irq_spurious);
	pic_unmask(SERIAL_IRQ);
	outb(UART_MCR, MCR_DTR_RTS | MCR_OUT2);
	outb(UART_IER, IER_ERXRDY);
}

char serial_irq_getc(void)
{
	for (;;) {
		__asm__ volatile("cli" : : : "memory");
		if (head != tail) {
			char c = ring[tail % RING_SIZE];

			tail++;
			if (throttled && head - tail <= RING_SIZE / 2) {
				throttled = 0;
				outb(UART_IER, IER_ERXRDY);
			}
			__asm__ volatile("sti" : : : "memory");
			return c;
		}
		/* The STI shadow covers HLT: an interrupt that arrives after the check still ends the HLT. */
		__asm__ volatile("sti; hlt" : : : "memory");
	}
}

uint32_t serial_irq_count(void)
{
	return irqs;
}

uint32_t serial_irq_bytes(void)
{
	return bytes;
}
