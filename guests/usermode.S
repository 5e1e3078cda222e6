/* usermode's 64-bit half: long mode with Linux's GDT layout, a TSS and an IDT, SYSCALL through IA32_LSTAR with
 * SWAPGS and a per-CPU block, and a ring-3 program at 0x40000000 that provokes one exception of each kind, makes
 * system calls and takes demand-paging faults. The kernel prints what it counted, then leaves through QEMU's
 * isa-debug-exit port (0xF4; nothing there under webhyve) and halts. */
#define CR0_PE		(1 << 0)
#define CR0_WP		(1 << 16)
#define CR0_PG		(1 << 31)
#define CR4_PAE		(1 << 5)
#define MSR_EFER	0xC0000080
#define MSR_STAR	0xC0000081
#define MSR_LSTAR	0xC0000082
#define MSR_FMASK	0xC0000084
#define MSR_GS_BASE	0xC0000101
#define MSR_KERNEL_GS_BASE 0xC0000102
#define EFER_SCE	(1 << 0)
#define EFER_LME	(1 << 8)
#define FMASK		0x47700		/* Linux's: TF, DF, IF, IOPL, NT, AC */
#define PG_P		1
#define PG_RW		2
#define PG_US		4
#define PG_PS		0x80

#define KERNEL_CS	0x10		/* STAR[47:32]: SYSCALL loads CS 0x10, SS 0x18 */
#define KERNEL_DS	0x18
#define USER32_CS	0x23		/* STAR[63:48]: SYSRETQ loads CS 0x33, SS 0x2B */
#define USER_DS		0x2B
#define USER_CS		0x33
#define TSS_SEL		0x38

#define USER_BASE	0x40000000	/* the program's code: read-only, executable, user */
#define USER_STACK_TOP	0x40400000
#define DEMAND_BASE	0x40400000	/* up to 512 pages the #PF handler maps on demand */
#define DEMAND_FRAMES	0x800000	/* the physical pages behind them */
#define LOG_MAX		16

#define SYS_ADD		1		/* RAX = 3 * RDI + 1 */
#define SYS_UNMAP	2		/* unmap the demand pages (the next touch faults again) */
#define SYS_EXIT	60		/* RDI: the program's checksum, RSI: the errors it saw */
#define ENOSYS		38

/* The per-CPU block KERNEL_GS_BASE points at */
#define PC_KSTACK	0
#define PC_USER_RSP	8
#define PC_CALLS	16
#define PC_SUM		24
#define PC_ERRORS	32

	.section .text
	.code32
	.globl enter_long_mode
/* From multiboot's protected mode: page tables, PAE, EFER.LME and SCE, paging with WP, then 64-bit code. */
enter_long_mode:
	cli
	movb $0xFF, %al			/* mask both 8259s: a BIOS leaves IRQ 0 on vector 8, #DF's */
	outb %al, $0x21
	outb %al, $0xA1
	cld
	movl $tables, %edi
	movl $(tables_end - tables) / 4, %ecx
	xorl %eax, %eax
	rep stosl
	movl $pdpt + PG_P + PG_RW + PG_US, pml4
	movl $pd_kernel + PG_P + PG_RW, pdpt			/* the first GiB: the kernel's, 2 MiB pages */
	movl $pd_user + PG_P + PG_RW + PG_US, pdpt + 8		/* the second: the program's */
	xorl %ecx, %ecx
1:	movl %ecx, %eax
	shll $21, %eax
	orl $PG_P + PG_RW + PG_PS, %eax
	movl %eax, pd_kernel(, %ecx, 8)
	incl %ecx
	cmpl $512, %ecx
	jb 1b
	movl $pt_code + PG_P + PG_RW + PG_US, pd_user
	movl $pt_stack + PG_P + PG_RW + PG_US, pd_user + 8
	movl $pt_demand + PG_P + PG_RW + PG_US, pd_user + 16
	movl $user_start + PG_P + PG_US, pt_code
	movl $user_start + 4096 + PG_P + PG_US, pt_code + 8
	movl $user_stack + PG_P + PG_RW + PG_US, pt_stack + 510 * 8
	movl $user_stack + 4096 + PG_P + PG_RW + PG_US, pt_stack + 511 * 8
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME + EFER_SCE, %eax
	wrmsr
	lgdt gdt_descriptor
	movl %cr0, %eax
	orl $CR0_PG + CR0_WP + CR0_PE, %eax
	movl %eax, %cr0
	ljmp $KERNEL_CS, $long_entry

	.code64
long_entry:
	movw $KERNEL_DS, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	xorl %eax, %eax
	movw %ax, %fs
	movw %ax, %gs
	leaq kstack_top(%rip), %rsp
	/* The TSS: its base into the descriptor, RSP0 for exceptions from ring 3, IST1 for #DF */
	leaq tss(%rip), %rax
	leaq gdt(%rip), %rdi
	movw %ax, TSS_SEL + 2(%rdi)
	shrq $16, %rax
	movb %al, TSS_SEL + 4(%rdi)
	movb %ah, TSS_SEL + 7(%rdi)
	shrq $16, %rax
	movl %eax, TSS_SEL + 8(%rdi)
	leaq kstack_top(%rip), %rax
	movq %rax, tss + 4(%rip)
	leaq dfstack_top(%rip), %rax
	movq %rax, tss + 36(%rip)
	movw $TSS_SEL, %ax
	ltr %ax
	/* The IDT: exceptions 0-31 (#BP with DPL 3 for INT3, #DF on IST1), and 0x81 with DPL 0 */
	leaq idt(%rip), %rdi
	leaq trap_stubs(%rip), %rsi
	xorl %ecx, %ecx
2:	movl (%rsi, %rcx, 4), %eax
	movl $0x8E00, %edx
	cmpl $3, %ecx
	jne 3f
	movl $0xEE00, %edx
3:	cmpl $8, %ecx
	jne 4f
	orl $1, %edx
4:	call set_gate
	incl %ecx
	cmpl $32, %ecx
	jb 2b
	movl $0x81, %ecx
	leaq unexpected_int(%rip), %rax
	movl $0x8E00, %edx
	call set_gate
	lidt idt_descriptor(%rip)
	/* SYSCALL: STAR, LSTAR, FMASK; SWAPGS: the per-CPU block in KERNEL_GS_BASE, the program's GS base 0 */
	movl $MSR_STAR, %ecx
	xorl %eax, %eax
	movl $(USER32_CS << 16) | KERNEL_CS, %edx
	wrmsr
	movl $MSR_LSTAR, %ecx
	leaq syscall_entry(%rip), %rax
	movq %rax, %rdx
	shrq $32, %rdx
	wrmsr
	movl $MSR_FMASK, %ecx
	movl $FMASK, %eax
	xorl %edx, %edx
	wrmsr
	movl $MSR_KERNEL_GS_BASE, %ecx
	leaq percpu(%rip), %rax
	movq %rax, %rdx
	shrq $32, %rdx
	wrmsr
	movl $MSR_GS_BASE, %ecx
	xorl %eax, %eax
	xorl %edx, %edx
	wrmsr
	leaq sstack_top(%rip), %rax
	movq %rax, percpu + PC_KSTACK(%rip)
	/* Into ring 3 with SYSRETQ: RCX the program's entry, R11 its RFLAGS (IF), RSP its stack */
	movl um_syscalls(%rip), %edi
	movl um_rounds(%rip), %esi
	movl um_pages(%rip), %edx
	movq $USER_BASE + (user_main - user_start), %rcx
	movl $0x202, %r11d
	movq $USER_STACK_TOP, %rsp
	sysretq

/* IDT entry ECX: a 64-bit gate to RAX in the kernel's code segment, EDX the type, DPL and IST word. */
set_gate:
	movq %rcx, %r8
	shlq $4, %r8
	addq %rdi, %r8
	movw %ax, (%r8)
	movw $KERNEL_CS, 2(%r8)
	movw %dx, 4(%r8)
	movq %rax, %r9
	shrq $16, %r9
	movw %r9w, 6(%r8)
	shrq $16, %r9
	movl %r9d, 8(%r8)
	movl $0, 12(%r8)
	ret

/* SYSCALL from ring 3: the kernel's stack through SWAPGS, checks that the CPU entered as the SDM says (CS 0x10,
 * SS 0x18, IF clear), the call, then SYSRETQ. */
syscall_entry:
	swapgs
	movq %rsp, %gs:PC_USER_RSP
	movq %gs:PC_KSTACK, %rsp
	pushq %rcx
	pushq %r11
	pushq %rdx
	incq %gs:PC_CALLS
	movw %cs, %dx
	cmpw $KERNEL_CS, %dx
	jne 9f
	movw %ss, %dx
	cmpw $KERNEL_DS, %dx
	jne 9f
	pushfq
	popq %rdx
	testl $0x200, %edx
	jz 8f
9:	incq %gs:PC_ERRORS
8:	cmpq $SYS_ADD, %rax
	jne 1f
	addq %rdi, %gs:PC_SUM
	leaq 1(%rdi, %rdi, 2), %rax
	jmp 3f
1:	cmpq $SYS_UNMAP, %rax
	jne 2f
	leaq pt_demand(%rip), %rdi
	movl um_pages(%rip), %ecx
	xorl %eax, %eax
	rep stosq
	movq %cr3, %rax
	movq %rax, %cr3
	xorl %eax, %eax
	jmp 3f
2:	cmpq $SYS_EXIT, %rax
	je sys_exit
	movq $-ENOSYS, %rax
3:	popq %rdx
	popq %r11
	popq %rcx
	movq %gs:PC_USER_RSP, %rsp
	swapgs
	sysretq

/* The exceptions: a stub pushes the vector (and 0 where the CPU pushes no error code). */
.macro TRAP_NOERR vector
trap\vector:
	pushq $0
	pushq $\vector
	jmp exception
.endm
.macro TRAP_ERR vector
trap\vector:
	pushq $\vector
	jmp exception
.endm
.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
	TRAP_NOERR \v
.endr
.irp v, 8,10,11,12,13,14,17,21,29,30
	TRAP_ERR \v
.endr

/* Stack: RSI RDX RCX RAX, vector, error code, RIP, CS, RFLAGS, RSP, SS. A #PF in the demand pages maps the page;
 * any other exception from ring 3 is one the program provoked: logged with its vector, error code, CR2 and
 * where RIP was (1: on the instruction at the program's RBP, a fault; 2: after it, at RBX, a trap), and the
 * program resumes at RBX. The kernel itself never faults. */
exception:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	movq 56(%rsp), %rax
	testb $3, %al
	jz fatal
	movq 32(%rsp), %rax
	cmpq $14, %rax
	jne probe
	movq %cr2, %rdx
	subq $DEMAND_BASE, %rdx
	movl um_pages(%rip), %esi
	shlq $12, %rsi
	cmpq %rsi, %rdx
	jae probe
	shrq $12, %rdx
	movq %rdx, %rsi
	shlq $12, %rsi
	addq $DEMAND_FRAMES + PG_P + PG_RW + PG_US, %rsi
	leaq pt_demand(%rip), %rcx
	movq %rsi, (%rcx, %rdx, 8)
	incq pf_count(%rip)
	movq 40(%rsp), %rax
	cmpq $4, %rax
	je 1f
	cmpq $6, %rax
	jne fatal
	incq pf_write(%rip)
	jmp done
1:	incq pf_read(%rip)
	jmp done
probe:
	movq log_count(%rip), %rcx
	cmpq $LOG_MAX, %rcx
	jae fatal
	shlq $5, %rcx
	leaq fault_log(%rip), %rsi
	addq %rcx, %rsi
	movq %rax, (%rsi)
	movq 40(%rsp), %rdx
	movq %rdx, 8(%rsi)
	xorl %edx, %edx
	cmpq $14, %rax
	jne 2f
	movq %cr2, %rdx
2:	movq %rdx, 16(%rsi)
	movq 48(%rsp), %rdx
	xorl %ecx, %ecx
	cmpq %rbp, %rdx
	jne 3f
	movl $1, %ecx
3:	cmpq %rbx, %rdx
	jne 4f
	movl $2, %ecx
4:	movq %rcx, 24(%rsi)
	incq log_count(%rip)
	movq %rbx, 48(%rsp)
done:
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp
	iretq

fatal:
	leaq msg_fatal(%rip), %rsi
	call serial_puts
	movq 32(%rsp), %rax
	call print_hex64
	leaq msg_space(%rip), %rsi
	call serial_puts
	movq 40(%rsp), %rax
	call print_hex64
	leaq msg_space(%rip), %rsi
	call serial_puts
	movq 48(%rsp), %rax
	call print_hex64
	leaq msg_newline(%rip), %rsi
	call serial_puts
	jmp finish

unexpected_int:
	leaq msg_unexpected(%rip), %rsi
	call serial_puts
	jmp finish

/* SYS_EXIT: print the counts, the program's checksum and errors, and the exceptions it provoked. */
sys_exit:
	movq %rdi, %r12
	movq %rsi, %r13
	leaq msg_calls(%rip), %rsi
	movq %gs:PC_CALLS, %rax
	call field
	leaq msg_sum(%rip), %rsi
	movq %gs:PC_SUM, %rax
	call field
	leaq msg_checksum(%rip), %rsi
	movq %r12, %rax
	call field
	leaq msg_errors(%rip), %rsi
	movq %r13, %rax
	addq %gs:PC_ERRORS, %rax
	call field
	leaq msg_faults(%rip), %rsi
	movq pf_count(%rip), %rax
	call field
	leaq msg_reads(%rip), %rsi
	movq pf_read(%rip), %rax
	call field
	leaq msg_writes(%rip), %rsi
	movq pf_write(%rip), %rax
	call field
	leaq msg_newline(%rip), %rsi
	call serial_puts
	xorl %r12d, %r12d
5:	cmpq log_count(%rip), %r12
	jae 6f
	movq %r12, %r13
	shlq $5, %r13
	leaq fault_log(%rip), %rax
	addq %rax, %r13
	leaq msg_probe(%rip), %rsi
	movq (%r13), %rax
	call field
	leaq msg_space(%rip), %rsi
	movq 8(%r13), %rax
	call field
	leaq msg_space(%rip), %rsi
	movq 16(%r13), %rax
	call field
	leaq msg_space(%rip), %rsi
	movq 24(%r13), %rax
	call field
	leaq msg_newline(%rip), %rsi
	call serial_puts
	incq %r12
	jmp 5b
6:	leaq msg_done(%rip), %rsi
	call serial_puts
finish:
	movw $0xF4, %dx
	xorl %eax, %eax
	outb %al, %dx
7:	cli
	hlt
	jmp 7b

/* Print the string at RSI, then RAX in hex. */
field:
	pushq %rax
	call serial_puts
	popq %rax
	jmp print_hex64

#include "serial64.inc"

/* The ring-3 program, mapped at USER_BASE: RDI SYSCALLs, RSI rounds of RDX demand pages. R15 sums what SYS_ADD
 * returns, R10 counts what was not as expected. Probes: RBP on the instruction, RBX where to go on. */
	.section .user, "ax"
	.balign 4096
user_start:
user_main:
	movq %rdi, %r12
	movq %rsi, %r13
	movq %rdx, %r14
	xorl %r15d, %r15d
	xorl %r10d, %r10d
	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	ud2					/* #UD */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	cli					/* IOPL 0: #GP(0) */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
	xorl %edx, %edx
	movl $1, %eax
	xorl %ecx, %ecx
1:	divl %ecx				/* #DE */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	int3					/* #BP through a DPL-3 gate: a trap */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	int $0x81				/* a DPL-0 gate: #GP(0x81 * 8 + 2) */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	movq 0x100010, %rax			/* the kernel's page: #PF(P|U), CR2 to the byte */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	movb $0, USER_BASE + 0x11		/* its own code, read-only: #PF(P|W|U) */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
	movabsq $0x0000800000000000, %rax
1:	movq (%rax), %rax			/* non-canonical: #GP(0) */
2:	leaq 1f(%rip), %rbp
	leaq 2f(%rip), %rbx
1:	swapgs					/* at CPL 3: #GP(0) */
2:	movl $999, %eax
	syscall					/* no such call */
	cmpq $-ENOSYS, %rax
	je 3f
	incq %r10
3:	movq %r12, %rbx
4:	movl $SYS_ADD, %eax
	movq %rbx, %rdi
	syscall
	leaq 1(%rbx, %rbx, 2), %rdx
	cmpq %rdx, %rax
	je 5f
	incq %r10
5:	addq %rax, %r15
	decq %rbx
	jnz 4b
	/* Round r writes r * 0x10000 + p to page p (round 0: a write fault, error code 6); later rounds first read
	 * round r - 1's value back (a read fault, error code 4). SYS_UNMAP between rounds. */
	xorl %ebx, %ebx
6:	xorl %ecx, %ecx
	movq $DEMAND_BASE, %rsi
7:	testq %rbx, %rbx
	jz 8f
	movq (%rsi), %rax
	leaq -1(%rbx), %rdx
	shlq $16, %rdx
	addq %rcx, %rdx
	cmpq %rdx, %rax
	je 8f
	incq %r10
8:	movq %rbx, %rdx
	shlq $16, %rdx
	addq %rcx, %rdx
	movq %rdx, (%rsi)
	addq $4096, %rsi
	incq %rcx
	cmpq %r14, %rcx
	jb 7b
	movl $SYS_UNMAP, %eax
	syscall
	incq %rbx
	cmpq %r13, %rbx
	jb 6b
	movl $SYS_EXIT, %eax
	movq %r15, %rdi
	movq %r10, %rsi
	syscall

	.section .rodata
	.align 4
trap_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.long trap\v
.endr
msg_calls:	.asciz "usermode: calls="
msg_sum:	.asciz " sum="
msg_checksum:	.asciz " checksum="
msg_errors:	.asciz " errors="
msg_faults:	.asciz " faults="
msg_reads:	.asciz " reads="
msg_writes:	.asciz " writes="
msg_probe:	.asciz "usermode: probe "
msg_space:	.asciz " "
msg_newline:	.asciz "\r\n"
msg_done:	.asciz "usermode: done\r\n"
msg_fatal:	.asciz "usermode: unexpected exception "
msg_unexpected:	.asciz "usermode: unexpected interrupt\r\n"

	.section .data
	.align 16
	/* Accessed bits preset; the TSS descriptor gets its base at run time (ltr marks it busy) */
gdt:
	.quad 0
	.quad 0x00CF9B000000FFFF	/* 0x08: 32-bit kernel code (the jump from protected mode) */
	.quad 0x00AF9B000000FFFF	/* 0x10: 64-bit kernel code */
	.quad 0x00CF93000000FFFF	/* 0x18: kernel data */
	.quad 0x00CFFB000000FFFF	/* 0x23: 32-bit user code */
	.quad 0x00CFF3000000FFFF	/* 0x2B: user data */
	.quad 0x00AFFB000000FFFF	/* 0x33: 64-bit user code */
	.quad 0x0000890000000067, 0	/* 0x38: the 64-bit TSS */
gdt_end:
gdt_descriptor:
	.word gdt_end - gdt - 1
	.long gdt, 0
idt_descriptor:
	.word 256 * 16 - 1
	.long idt, 0
	.align 16
tss:
	.long 0
	.quad 0, 0, 0			/* RSP0-2 */
	.quad 0
	.quad 0, 0, 0, 0, 0, 0, 0	/* IST1-7 */
	.quad 0
	.word 0, 104			/* no I/O bitmap */
	.align 8
percpu:		.quad 0, 0, 0, 0, 0
pf_count:	.quad 0
pf_read:	.quad 0
pf_write:	.quad 0
log_count:	.quad 0

	.section .bss
	.align 4096
tables:
pml4:		.skip 4096
pdpt:		.skip 4096
pd_kernel:	.skip 4096
pd_user:	.skip 4096
pt_code:	.skip 4096
pt_stack:	.skip 4096
pt_demand:	.skip 4096
tables_end:
user_stack:	.skip 8192
idt:		.skip 4096
fault_log:	.skip 32 * LOG_MAX
	.align 16
kstack:		.skip 16384
kstack_top:
sstack:		.skip 16384
sstack_top:
dfstack:	.skip 4096
dfstack_top:
