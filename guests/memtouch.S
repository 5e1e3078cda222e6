/* memtouch's long-mode half: the switch from 32-bit protected mode (SDM vol. 3 §10.8.5), the touch
 * loop (touch_kernel, also run alone on bare Unicorn by bench/), and the checksum printed on COM1. */
#define CR0_PG		(1 << 31)
#define CR4_PAE		(1 << 5)
#define MSR_EFER	0xC0000080
#define EFER_LME	(1 << 8)
#define SEL_CODE64	0x18
#define SEL_DATA	0x10

	.section .text
	.code32
	.globl memtouch_long
/* void memtouch_long(struct memtouch_args *args): args = {base, pages, pattern, passes, cr3}, 8 bytes each. */
memtouch_long:
	movl 4(%esp), %esi
	lgdt gdt_descriptor
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl 32(%esi), %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	orl $CR0_PG, %eax
	movl %eax, %cr0
	ljmp $SEL_CODE64, $1f

	.code64
1:	movl %esi, %r12d
	movq 0(%r12), %rdi
	movq 8(%r12), %rsi
	movq 16(%r12), %rdx
	movq 24(%r12), %rcx
	call touch_kernel
	movq %rax, %r13
	leaq checksum_text(%rip), %rsi
	call serial_puts
	movq %r13, %rax
	call print_hex64
	leaq newline(%rip), %rsi
	call serial_puts
2:	cli
	hlt
	jmp 2b

/* uint64 touch_kernel(base=rdi, pages=rsi, pattern=rdx (0 seq, 1 reverse, 2 random), passes=rcx):
 * for each pass p and i < pages: idx by the pattern, addr = base + idx*4096 + (i*8 & 0xFF8),
 * v = [addr] + i + p, [addr] = v, sum = (sum ^ v) * 0x100000001B3. Returns sum in rax.
 * random: x = x*6364136223846793005 + 1442695040888963407 (x starts at 0x9E3779B97F4A7C15), idx = (x>>33) % pages. */
	.globl touch_kernel
touch_kernel:
	pushq %rbx
	pushq %rbp
	movq %rdx, %r8			/* pattern */
	movq %rcx, %r9			/* passes */
	xorl %r10d, %r10d		/* p */
	xorl %r11d, %r11d		/* sum */
	movabsq $0x9E3779B97F4A7C15, %rbp	/* x */
3:	cmpq %r9, %r10
	jae 9f
	xorl %ecx, %ecx			/* i */
4:	cmpq %rsi, %rcx
	jae 8f
	cmpq $1, %r8
	je 5f
	ja 6f
	movq %rcx, %rax			/* seq */
	jmp 7f
5:	movq %rsi, %rax			/* reverse */
	subq %rcx, %rax
	decq %rax
	jmp 7f
6:	movabsq $6364136223846793005, %rax	/* random */
	imulq %rax, %rbp
	movabsq $1442695040888963407, %rax
	addq %rax, %rbp
	movq %rbp, %rax
	shrq $33, %rax
	xorl %edx, %edx
	divq %rsi
	movq %rdx, %rax
7:	shlq $12, %rax
	addq %rdi, %rax
	movq %rcx, %rdx
	shlq $3, %rdx
	andq $0xFF8, %rdx
	addq %rdx, %rax			/* addr */
	movq (%rax), %rbx
	addq %rcx, %rbx
	addq %r10, %rbx
	movq %rbx, (%rax)
	xorq %rbx, %r11
	movabsq $0x100000001B3, %rax
	imulq %rax, %r11
	incq %rcx
	jmp 4b
8:	incq %r10
	jmp 3b
9:	movq %r11, %rax
	popq %rbp
	popq %rbx
	ret

#include "serial64.inc"
#include "gdt64.inc"

	.section .rodata
checksum_text:
	.asciz " checksum=0x"
newline:
	.asciz "\r\n"
