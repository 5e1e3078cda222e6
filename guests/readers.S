/* readers: every vCPU reads one shared word (0x400000) forever and stores what it saw at 0x401000 + 8 * its
 * APIC ID; vCPU 0 prints the value on COM1 each time it changes. A flat64 image for the TLB demos: when the
 * host moves that page, the vCPUs see the new one only after the invalidation bhyve's rules call for. */
#define SHARED	0x400000
#define SEEN	0x401000

	.code64
	.section .text
	.globl _start
_start:
	movl $1, %eax
	cpuid
	shrl $24, %ebx
	movq %rbx, %r12			/* the initial APIC ID: which vCPU this is */
	movq %r12, %rax
	shlq $12, %rax
	movq $0x200000, %rsp
	subq %rax, %rsp			/* a stack page each, below the image */
	testq %r12, %r12
	jnz 1f
	call serial_init
	leaq hello(%rip), %rsi
	call serial_puts
1:	movq $-1, %r13			/* the last value printed */
2:	movq SHARED, %rax
	movq %rax, SEEN(, %r12, 8)
	testq %r12, %r12
	jnz 3f
	cmpq %rax, %r13
	je 3f
	movq %rax, %r13
	leaq sees(%rip), %rsi
	call serial_puts
	movq %r13, %rax
	call print_hex64
	leaq newline(%rip), %rsi
	call serial_puts
3:	pause
	jmp 2b

#include "serial64.inc"

	.section .rodata
hello:
	.asciz "readers: every vCPU reads 0x400000\r\n"
sees:
	.asciz "vcpu0 sees 0x"
newline:
	.asciz "\r\n"
