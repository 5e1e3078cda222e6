/* The application processors' start-up code: copied to 0x8000 and entered there by the SIPI (vector 0x08)
 * in real mode at CS=0x0800, IP=0. It loads the kernel's GDT, enters protected mode and jumps to
 * ap_start32, which gives each AP its own stack (by APIC ID) and calls ap_main(apic_id). */
#define TRAMPOLINE	0x8000
#define AP_STACK	4096

	.section .text
	.code16
	.globl trampoline_start, trampoline_end
trampoline_start:
	cli
	mov %cs, %ax
	mov %ax, %ds
	lgdtl (trampoline_gdtr - trampoline_start)
	mov %cr0, %eax
	or $1, %eax
	mov %eax, %cr0
	ljmpl $0x08, $ap_start32
	.align 8
trampoline_gdtr:
	.word 23
	.long gdt
trampoline_end:

	.code32
ap_start32:
	mov $0x10, %ax
	mov %ax, %ds
	mov %ax, %es
	mov %ax, %fs
	mov %ax, %gs
	mov %ax, %ss
	mov 0xFEE00020, %eax		/* LAPIC ID register: the ID in bits 31:24 */
	shr $24, %eax
	mov %eax, %ecx
	inc %ecx
	shl $12, %ecx
	lea ap_stacks(%ecx), %esp
	push %eax
	call ap_main
1:	cli
	hlt
	jmp 1b

	.section .bss
	.align 4096
ap_stacks:
	.skip AP_STACK * 17
