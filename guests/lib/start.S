/* Entry for the C guests: load our own flat GDT and stack, then call kmain(magic, mbi). */
#define STACK_SIZE 16384

	.section .text
	.globl _start
_start:
	cli
	lgdt gdt_descriptor
	ljmp $0x08, $reload_segments
reload_segments:
	movw $0x10, %cx
	movw %cx, %ds
	movw %cx, %es
	movw %cx, %fs
	movw %cx, %gs
	movw %cx, %ss
	movl $stack_top, %esp
	pushl %ebx			/* physical address of the multiboot info */
	pushl %eax			/* 0x2BADB002 from a multiboot loader */
	call kmain
	.globl halt_forever
halt_forever:
	cli
	hlt
	jmp halt_forever

	.section .rodata
	.align 8
	/* Accessed bits are preset so loading a selector never writes to this read-only page. */
	.globl gdt
gdt:
	.quad 0
	.quad 0x00CF9B000000FFFF	/* 0x08: 32-bit code, base 0, limit 4 GiB */
	.quad 0x00CF93000000FFFF	/* 0x10: data, base 0, limit 4 GiB */
gdt_end:
gdt_descriptor:
	.word gdt_end - gdt - 1
	.long gdt

	.section .bss
	.align 16
stack:
	.skip STACK_SIZE
stack_top:
