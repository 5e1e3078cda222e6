/* The 8259A pair as a PC wires it: master at 0x20, slave at 0xA0 on the master's IRQ 2. */
#ifndef PIC_H
#define PIC_H

#include <stdint.h>

#define PIC_MASTER_BASE	0x20		/* IRQ 0-7 become vectors 0x20-0x27 */
#define PIC_SLAVE_BASE	0x28		/* IRQ 8-15 become 0x28-0x2F */

/* ICW1-4 on both chips: remap the IRQs above the CPU's exceptions, every IRQ masked. */
void pic_init(void);
void pic_unmask(int irq);
/* Non-specific EOI for `irq` (to the slave as well for IRQ 8-15). */
void pic_eoi(int irq);

#endif
