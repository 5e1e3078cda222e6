/* IDT setup and exception dispatch for the shell (SDM vol. 3 §6.10-6.12). */
#include "io.h"
#include "print.h"
#include "serial.h"
#include "traps.h"

#define VECTOR_GP	13
#define SEL_CODE	0x08
#define GATE_INTERRUPT	0x8E	/* present, DPL 0, 32-bit interrupt gate */

struct idt_gate {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t zero;
	uint8_t type;
	uint16_t offset_high;
} __attribute__((packed));

struct idt_descriptor {
	uint16_t limit;
	uint32_t base;
} __attribute__((packed));

extern const uint32_t trap_stubs[32];
/* Where a #GP resumes; set by rdmsr_safe/wrmsr_safe around the one instruction that may fault. */
uint32_t trap_recovery;
static struct idt_gate idt[32];

void traps_init(void)
{
	struct idt_descriptor descriptor = { sizeof(idt) - 1, (uint32_t)idt };

	for (int v = 0; v < 32; v++) {
		idt[v].offset_low = (uint16_t)trap_stubs[v];
		idt[v].selector = SEL_CODE;
		idt[v].zero = 0;
		idt[v].type = GATE_INTERRUPT;
		idt[v].offset_high = (uint16_t)(trap_stubs[v] >> 16);
	}
	__asm__ volatile("lidt %0" : : "m"(descriptor));
}

void trap_dispatch(struct trap_frame *frame)
{
	if (frame->vector == VECTOR_GP && trap_recovery) {
		frame->eip = trap_recovery;
		trap_recovery = 0;
		return;
	}
	serial_puts("\r\nexception ");
	print_dec(frame->vector);
	serial_puts(" at 0x");
	print_hex32(frame->eip);
	serial_puts("\r\n");
	halt();
}

/* With an empty IDT, int3 cannot be delivered, nor can the #GP or #DF that follow: shutdown. */
void triple_fault(void)
{
	struct idt_descriptor empty = { 0, 0 };

	__asm__ volatile("lidt %0; int3" : : "m"(empty));
	halt();
}
