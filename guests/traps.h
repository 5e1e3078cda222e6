/* The shell's exception gates 0-31, with #GP recovery for rdmsr/wrmsr. */
#ifndef TRAPS_H
#define TRAPS_H

#include <stdint.h>

/* What trap_common leaves on the stack: pushal, then vector, error code and the CPU's frame. */
struct trap_frame {
	uint32_t edi, esi, ebp, esp, ebx, edx, ecx, eax;
	uint32_t vector, error_code;
	uint32_t eip, cs, eflags;
};

void traps_init(void);
void __attribute__((noreturn)) triple_fault(void);
int rdmsr_safe(uint32_t msr, uint64_t *value);
int wrmsr_safe(uint32_t msr, uint32_t low, uint32_t high);

#endif
