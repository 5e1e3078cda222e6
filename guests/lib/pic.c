/* Programming the 8259A pair: the initialization sequence, the mask register, end of interrupt. */
#include "io.h"
#include "pic.h"

#define MASTER_CMD	0x20
#define MASTER_DATA	0x21
#define SLAVE_CMD	0xA0
#define SLAVE_DATA	0xA1

#define ICW1_INIT_ICW4	0x11		/* edge triggered, cascaded, ICW4 follows */
#define ICW4_8086	0x01
#define OCW2_EOI	0x20
#define CASCADE_IRQ	2

void pic_init(void)
{
	outb(MASTER_CMD, ICW1_INIT_ICW4);
	outb(SLAVE_CMD, ICW1_INIT_ICW4);
	outb(MASTER_DATA, PIC_MASTER_BASE);		/* ICW2: vector base */
	outb(SLAVE_DATA, PIC_SLAVE_BASE);
	outb(MASTER_DATA, 1 << CASCADE_IRQ);		/* ICW3: the slave sits on IRQ 2 */
	outb(SLAVE_DATA, CASCADE_IRQ);			/* ...and knows its cascade identity */
	outb(MASTER_DATA, ICW4_8086);
	outb(SLAVE_DATA, ICW4_8086);
	outb(MASTER_DATA, 0xFF);			/* OCW1: everything masked */
	outb(SLAVE_DATA, 0xFF);
}

void pic_unmask(int irq)
{
	uint16_t port = irq < 8 ? MASTER_DATA : SLAVE_DATA;

	if (irq >= 8)
		pic_unmask(CASCADE_IRQ);
	outb(port, inb(port) & ~(1 << (irq & 7)));
}

void pic_eoi(int irq)
{
	if (irq >= 8)
		outb(SLAVE_CMD, OCW2_EOI);
	outb(MASTER_CMD, OCW2_EOI);
}
