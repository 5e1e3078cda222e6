/* IDT setup and exception dispatch for the shell (SDM vol. 3 §6.10-6.12). */
#include "idt.h"
#include "io.h"
#include "print.h"
#include "serial.h"
#include "traps.h"

#define VECTOR_GP	13

struct idt_descriptor {
	uint16_t limit;
	uint32_t base;
} __attribute__((packed));

extern const uint32_t trap_stubs[32];
/* Where a #GP resumes; set by rdmsr_safe/wrmsr_safe around the one instruction that may fault. */
uint32_t trap_recovery;

/* Exceptions 0-31 in the 256-entry IDT of lib/idt.c, which the shell's IRQ gates share. */
void traps_init(void)
{
	for (int v = 0; v < 32; v++)
		idt_set_gate(v, (void (*)(void))trap_stubs[v]);
	idt_load();
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
