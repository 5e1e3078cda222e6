/* The local APIC at its default address (paging off: physical = linear), as SDM vol. 3 ch. 10 lays it out. */
#ifndef LAPIC_H
#define LAPIC_H

#include <stdint.h>

#define LAPIC_BASE	0xFEE00000u
#define LAPIC_ID	0x020
#define LAPIC_EOI	0x0B0
#define LAPIC_SVR	0x0F0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_TIMER_ICR	0x380
#define LAPIC_TIMER_CCR	0x390
#define LAPIC_TIMER_DCR	0x3E0

#define SVR_ENABLE	0x100
#define LVT_PERIODIC	0x20000
#define LVT_MASKED	0x10000
#define ICR_INIT	0x4500		/* INIT, level assert */
#define ICR_SIPI	0x4600		/* start-up, vector in bits 7:0 */
#define ICR_BUSY	0x1000		/* delivery status */

static inline uint32_t lapic_read(uint32_t reg)
{
	return *(volatile uint32_t *)(LAPIC_BASE + reg);
}

static inline void lapic_write(uint32_t reg, uint32_t value)
{
	*(volatile uint32_t *)(LAPIC_BASE + reg) = value;
}

#endif
