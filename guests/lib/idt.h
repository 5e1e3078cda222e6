/* A 256-entry IDT of 32-bit interrupt gates for the interrupt-driven guests (SDM vol. 3 §6.11). */
#ifndef IDT_H
#define IDT_H

#include <stdint.h>

void idt_set_gate(int vector, void (*handler)(void));
void idt_load(void);

#endif
