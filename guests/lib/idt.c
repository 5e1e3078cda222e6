/* The IDT itself: gates to code selector 0x08, DPL 0, interrupt type (IF cleared on entry). */
#include "idt.h"

#define GATE_INTERRUPT	0x8E

struct gate {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t zero;
	uint8_t type;
	uint16_t offset_high;
} __attribute__((packed));

struct idtr {
	uint16_t limit;
	uint32_t base;
} __attribute__((packed));

static struct gate idt[256];

void idt_set_gate(int vector, void (*handler)(void))
{
	uint32_t offset = (uint32_t)handler;

	idt[vector].offset_low = (uint16_t)offset;
	idt[vector].selector = 0x08;
	idt[vector].zero = 0;
	idt[vector].type = GATE_INTERRUPT;
	idt[vector].offset_high = (uint16_t)(offset >> 16);
}

void idt_load(void)
{
	struct idtr idtr = { sizeof(idt) - 1, (uint32_t)idt };

	__asm__ volatile("lidt %0" : : "m"(idtr));
}
