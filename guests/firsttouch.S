/* firsttouch: all vCPUs first-touch pages of one window at the same time, so that they fault on the same EPT
 * tables (and, shared, on the same pages) together; then each reads back what its neighbour wrote and counts
 * the pages that do not hold it. vCPU i's k-th page is k * STRIDE + i * SPREAD: interleaved (STRIDE = n,
 * SPREAD = 1) every page has one writer and neighbours share tables; shared (STRIDE = 1, SPREAD = 0) every
 * vCPU writes every page. vCPU i writes qword i of its pages: round << 40 | page << 4 | i.
 * A flat64 image started on all vCPUs. The host drives it through a control block at CTRL (qwords):
 *   ROUND  the round to run, set by the host (every vCPU runs each new value once; -1 stops them)
 *   PAGES  pages each vCPU touches     BASE  guest-physical start of the window     NCPU  vCPUs taking part
 *   ARRIVE barrier counter             LOST  pages found wrong, all rounds          DONE  last round verified
 *   BAD    the guest-physical address of the last wrong qword                STRIDE, SPREAD  see above
 * Once every vCPU is up vCPU 0 prints "firsttouch: ready"; after each round it prints "round R lost L" (hex,
 * L cumulative). The host unmaps the window before the next round so that every round is a first touch again. */
#define CTRL	0x3FF000
#define ROUND	(CTRL + 0)
#define PAGES	(CTRL + 8)
#define BASE	(CTRL + 16)
#define NCPU	(CTRL + 24)
#define ARRIVE	(CTRL + 32)
#define LOST	(CTRL + 40)
#define DONE	(CTRL + 48)
#define BAD	(CTRL + 56)
#define STRIDE	(CTRL + 64)
#define SPREAD	(CTRL + 72)

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
	xorq %r13, %r13			/* the round this vCPU ran last */
	xorq %r15, %r15			/* ARRIVE value that ends the next barrier */
	call barrier			/* every vCPU is up (and has its stack page) before "ready" */
	testq %r12, %r12
	jnz wait
	call serial_init
	leaq hello(%rip), %rsi
	call serial_puts
wait:	movq ROUND, %rax
	cmpq %r13, %rax
	jne 2f
	pause
	jmp wait
2:	movq %rax, %r13
	cmpq $-1, %rax
	je stop
	movq %r12, %rdi			/* this vCPU's pages */
	call touch
	call barrier
	movq %r12, %rdi			/* check the next vCPU's pages: another CPU's writes */
	incq %rdi
	cmpq NCPU, %rdi
	jb 3f
	xorl %edi, %edi
3:	call verify
	lock addq %r11, LOST
	call barrier
	testq %r12, %r12
	jnz wait
	leaq round(%rip), %rsi
	call serial_puts
	movq %r13, %rax
	call print_hex64
	leaq lost(%rip), %rsi
	call serial_puts
	movq LOST, %rax
	call print_hex64
	leaq newline(%rip), %rsi
	call serial_puts
	movq %r13, DONE
	jmp wait
stop:	cli
	hlt
	jmp stop

/* RDX = the first page of vCPU RDI, RBX = the value it writes there, RAX = its address; R8 = STRIDE. */
first:	movq SPREAD, %rdx
	imulq %rdi, %rdx
	movq STRIDE, %r8
	movq %r13, %r10
	shlq $40, %r10
next:	movq %rdx, %rbx
	shlq $4, %rbx
	orq %r10, %rbx
	orq %rdi, %rbx
	movq %rdx, %rax
	shlq $12, %rax
	addq BASE, %rax
	leaq (%rax, %rdi, 8), %rax
	ret

/* vCPU RDI's pages (PAGES of them): write each one's value. */
touch:	movq PAGES, %rcx
	call first
4:	movq %rbx, (%rax)
	addq %r8, %rdx
	call next
	decq %rcx
	jnz 4b
	ret

/* vCPU RDI's pages read back: R11 = how many do not hold what touch wrote. */
verify:	movq PAGES, %rcx
	xorq %r11, %r11
	call first
5:	cmpq %rbx, (%rax)
	je 6f
	incq %r11
	movq %rax, BAD
6:	addq %r8, %rdx
	call next
	decq %rcx
	jnz 5b
	ret

/* Wait until every vCPU has arrived here as often as this one. */
barrier:
	addq NCPU, %r15
	lock incq ARRIVE
7:	cmpq ARRIVE, %r15
	jbe 8f
	pause
	jmp 7b
8:	ret

#include "serial64.inc"

	.section .rodata
hello:
	.asciz "firsttouch: ready\r\n"
round:
	.asciz "round "
lost:
	.asciz " lost "
newline:
	.asciz "\r\n"
