/* flat64: a flat 64-bit image at 0x200000, entered in long mode with paging and RSP set by the loader. */
	.code64
	.section .text
	.globl _start
_start:
	call serial_init
	leaq message(%rip), %rsi
	call serial_puts
	movq $0x64, %rax
1:	hlt
	jmp 1b

#include "serial64.inc"

	.section .rodata
message:
	.asciz "flat64 ok\r\n"
