/* usermode: a 64-bit kernel and its ring-3 program making system calls and taking page faults (usermode.S). */
#include <stdint.h>
#include "cmdline.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"

#define MAX_PAGES 512			/* one page table of demand-paged memory */

/* Read by the 64-bit kernel: SYSCALLs in the loop, rounds of demand paging, pages per round. */
uint32_t um_syscalls, um_rounds, um_pages;

void enter_long_mode(void) __attribute__((noreturn));

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	const char *cmdline = (mbi->flags & MBI_FLAG_CMDLINE) ? (const char *)mbi->cmdline : 0;

	(void)magic;
	serial_init();
	um_syscalls = cmdline_option(cmdline, "syscalls=", 100000);
	um_rounds = cmdline_option(cmdline, "rounds=", 16);
	um_pages = cmdline_option(cmdline, "pages=", 256);
	if (um_pages > MAX_PAGES)
		um_pages = MAX_PAGES;
	serial_puts("usermode: syscalls=");
	print_dec(um_syscalls);
	serial_puts(" rounds=");
	print_dec(um_rounds);
	serial_puts(" pages=");
	print_dec(um_pages);
	serial_puts("\r\n");
	enter_long_mode();
}
