/* longmode: from multiboot's 32-bit protected mode into 64-bit long mode (SDM vol. 3 §10.8.5), then hlt. */
#define CR0_PE		(1 << 0)
#define CR0_PG		(1 << 31)
#define CR4_PAE		(1 << 5)
#define MSR_EFER	0xC0000080
#define EFER_LME	(1 << 8)
#define PG_PRESENT	(1 << 0)
#define PG_WRITABLE	(1 << 1)
#define PG_LARGE	(1 << 7)	/* PS in a PD entry: a 2 MiB page */

#define SEL_CODE32	0x08
#define SEL_DATA	0x10
#define SEL_CODE64	0x18

	.section .text
	.code32
	.globl _start
_start:
	cli
	movl $stack_top, %esp
	lgdt gdt_descriptor
	ljmp $SEL_CODE32, $1f
1:	movw $SEL_DATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %fs
	movw %ax, %gs
	movw %ax, %ss

	/* Zero the three tables, then PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> i * 2 MiB (1 GiB). */
	cld
	movl $pml4, %edi
	movl $3 * 4096 / 4, %ecx
	xorl %eax, %eax
	rep stosl
	movl $pdpt + PG_PRESENT + PG_WRITABLE, pml4
	movl $pd + PG_PRESENT + PG_WRITABLE, pdpt
	xorl %ecx, %ecx
2:	movl %ecx, %eax
	shll $21, %eax
	orl $PG_PRESENT + PG_WRITABLE + PG_LARGE, %eax
	movl %eax, pd(, %ecx, 8)
	incl %ecx
	cmpl $512, %ecx
	jb 2b

	/* PAE, CR3, EFER.LME, then paging: the CPU is in IA-32e mode once CR0.PG is set. */
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $CR0_PG + CR0_PE, %eax
	movl %eax, %cr0
	ljmp $SEL_CODE64, $long_entry

	.code64
long_entry:
	call serial_init
	leaq message(%rip), %rsi
	call serial_puts
	movabsq $0x1122334455667788, %rax
	movabsq $0x8877665544332211, %rbx
	movabsq $0xDEADBEEFCAFEF00D, %r8
	movabsq $0x0123456789ABCDEF, %r15
3:	hlt
	jmp 3b

#include "serial64.inc"
#include "gdt64.inc"

	.section .rodata
message:
	.asciz "long mode ok\r\n"


	.section .bss
	.align 4096
pml4:	.skip 4096
pdpt:	.skip 4096
pd:	.skip 4096
	.skip 4096
stack_top:
