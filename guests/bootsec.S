/* bootsec: a real-mode boot sector (loaded at 0000:7C00) that exercises only BIOS services. */
#define BUFFER_CHS	0x8000
#define BUFFER_LBA	0x9000

	.code16
	.section .text
	.globl _start
_start:
	cli
	xorw %ax, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw $0x7C00, %sp
	ljmp $0, $start			/* normalise CS:IP to 0000:7Cxx */
start:
	sti
	cld
	movb %dl, boot_drive

	movw $msg_hello, %si
	call puts

	int $0x12			/* AX = KiB of conventional memory */
	pushw %ax
	movw $msg_mem, %si
	call puts
	popw %ax
	call print_dec
	movw $msg_k, %si
	call puts

	/* INT 13h AH=02h: cylinder 0, head 0, sector 2 (sectors count from 1), one sector. */
	movw $0x0201, %ax
	movw $0x0002, %cx
	xorb %dh, %dh
	movb boot_drive, %dl
	movw $BUFFER_CHS, %bx
	int $0x13
	jc disk_error
	movw $BUFFER_CHS, %si
	call puts
	call crlf

	/* INT 13h AH=42h: the same sector by LBA 1, through the disk address packet. */
	movb $0x42, %ah
	movb boot_drive, %dl
	movw $dap, %si
	int $0x13
	jc disk_error
	movw $BUFFER_CHS, %si
	movw $BUFFER_LBA, %di
	movw $512, %cx
	repe cmpsb
	movw $msg_lba_ok, %si
	je 1f
	movw $msg_lba_bad, %si
1:	call puts

	xorb %ah, %ah			/* INT 1Ah AH=00h: CX:DX = ticks since midnight */
	int $0x1A
	movw $msg_ticks, %si
	call puts

	movb $0x03, %ah			/* remember where the text goes on */
	xorb %bh, %bh
	int $0x10
	movw %dx, saved_cursor
	movb $0x02, %ah			/* set cursor: page 0, row 10, column 0 */
	movw $0x0A00, %dx
	int $0x10
	movw $0x0958, %ax		/* write 'X' three times, yellow on red, cursor stays */
	movw $0x004E, %bx
	movw $3, %cx
	int $0x10
	movb $0x03, %ah			/* read cursor: DH = row, DL = column */
	xorb %bh, %bh
	int $0x10
	pushw %dx
	movb $0x02, %ah			/* back below the earlier lines, leaving the X's alone */
	movw saved_cursor, %dx
	int $0x10
	movw $msg_cursor, %si
	call puts
	popw %dx
	pushw %dx
	movzbw %dh, %ax
	call print_dec
	movb $',', %al
	call putc
	popw %dx
	movzbw %dl, %ax
	call print_dec
	call crlf

	movw $msg_press, %si
	call puts
key_loop:
	xorb %ah, %ah			/* INT 16h AH=00h: AL = ASCII of the next key */
	int $0x16
	cmpb $'\r', %al
	je 2f
	pushw %ax
	call putc
	popw %ax
	cmpb $'q', %al
	jne key_loop
	movw $msg_bye, %si
	call puts
	jmp stop
2:	call crlf
	jmp key_loop

disk_error:
	movw $msg_disk_error, %si
	call puts
stop:
	cli
	hlt
	jmp stop

/* Teletype the character in AL (INT 10h AH=0Eh, page 0). */
putc:
	movb $0x0E, %ah
	xorw %bx, %bx
	int $0x10
	ret

crlf:
	movb $'\r', %al
	call putc
	movb $'\n', %al
	jmp putc

/* Teletype the NUL-terminated string at DS:SI. */
puts:
	lodsb
	testb %al, %al
	jz 1f
	call putc
	jmp puts
1:	ret

/* Print AX in decimal. */
print_dec:
	movw $10, %bx
	xorw %cx, %cx
1:	xorw %dx, %dx
	divw %bx
	pushw %dx
	incw %cx
	testw %ax, %ax
	jnz 1b
2:	popw %ax
	addb $'0', %al
	pushw %cx
	call putc
	popw %cx
	loop 2b
	ret

	.align 4
dap:					/* INT 13h extensions disk address packet */
	.byte 0x10, 0			/* packet size, reserved */
	.word 1				/* sectors */
	.word BUFFER_LBA, 0		/* buffer offset, segment */
	.quad 1				/* LBA */

boot_drive:	.byte 0
	.align 2
saved_cursor:	.word 0
msg_hello:	.asciz "bootsec: hello\r\n"
msg_mem:	.asciz "mem="
msg_k:		.asciz "K\r\n"
msg_lba_ok:	.asciz "lba ok\r\n"
msg_lba_bad:	.asciz "lba mismatch\r\n"
msg_ticks:	.asciz "ticks ok\r\n"
msg_cursor:	.asciz "cursor="
msg_press:	.asciz "press a key\r\n"
msg_bye:	.asciz "\r\nbye\r\n"
msg_disk_error:	.asciz "disk error\r\n"

	.org 510
	.byte 0x55, 0xAA

/* Sector 2 (LBA 1): what the boot sector reads back. */
	.asciz "sector 2 says hi"
	.org 1024
