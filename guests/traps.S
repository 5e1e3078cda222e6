/* Exception entry stubs for vectors 0-31 and the fault-tolerant rdmsr/wrmsr used by the shell. */

/* Vectors where the CPU pushes an error code (SDM vol. 3 §6.13); the others get a dummy 0. */
.macro TRAP_NOERR vector
trap\vector:
	pushl $0
	pushl $\vector
	jmp trap_common
.endm

.macro TRAP_ERR vector
trap\vector:
	pushl $\vector
	jmp trap_common
.endm

	.section .text
.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
	TRAP_NOERR \v
.endr
.irp v, 8,10,11,12,13,14,17,21,29,30
	TRAP_ERR \v
.endr

/* Stack on entry: vector, error code, EIP, CS, EFLAGS. trap_dispatch may rewrite the saved EIP. */
trap_common:
	pushal
	pushl %esp
	call trap_dispatch
	addl $4, %esp
	popal
	addl $8, %esp
	iret

/* int rdmsr_safe(uint32_t msr, uint64_t *value): 0, or -1 if rdmsr raised #GP. */
	.globl rdmsr_safe
rdmsr_safe:
	movl 4(%esp), %ecx
	movl $msr_faulted, trap_recovery
	rdmsr
	movl $0, trap_recovery
	movl 8(%esp), %ecx
	movl %eax, 0(%ecx)
	movl %edx, 4(%ecx)
	xorl %eax, %eax
	ret

/* int wrmsr_safe(uint32_t msr, uint32_t low, uint32_t high): 0, or -1 if wrmsr raised #GP. */
	.globl wrmsr_safe
wrmsr_safe:
	movl 4(%esp), %ecx
	movl 8(%esp), %eax
	movl 12(%esp), %edx
	movl $msr_faulted, trap_recovery
	wrmsr
	movl $0, trap_recovery
	xorl %eax, %eax
	ret

/* The #GP handler resumes here, with the stack as it was at the faulting instruction. */
msr_faulted:
	movl $-1, %eax
	ret

	.section .rodata
	.align 4
	.globl trap_stubs
trap_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long trap\v
.endr
