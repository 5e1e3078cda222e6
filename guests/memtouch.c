/* memtouch: builds 4-level page tables with 4 KiB pages, enters long mode and touches pages in a pattern.
 * Command line: pages=N (default 1024) pattern=seq|reverse|random (default seq) passes=P (default 1)
 *               base=ADDR (default 16 MiB, where the touched pages start). Prints a checksum. */
#include <stdint.h>
#include "io.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"
#include "str.h"

#define PAGE		4096u
#define PG_P		1u
#define PG_RW		2u
#define MAX_PAGES	(256u * 256u)			/* 256 MiB above the base */
#define MAP_LIMIT	(16u * 1024 * 1024 + MAX_PAGES * PAGE)
#define NPT		(MAP_LIMIT / PAGE / 512)

struct memtouch_args {					/* read by memtouch_long (memtouch.S) */
	uint64_t base, pages, pattern, passes, cr3;
};

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[512] __attribute__((aligned(4096)));
static uint64_t pt[NPT][512] __attribute__((aligned(4096)));

void memtouch_long(struct memtouch_args *args) __attribute__((noreturn));

/* The value after `key` on the command line: decimal, or hex with 0x. */
static uint32_t number(const char *cmdline, const char *key, uint32_t fallback)
{
	const char *arg = str_find(cmdline, key);
	uint64_t wide;
	uint32_t value;

	if (!arg)
		return fallback;
	while (*key++)
		arg++;
	if (arg[0] == '0' && arg[1] == 'x')
		return parse_hex(arg, &wide) ? (uint32_t)wide : fallback;
	return parse_dec(arg, &value) ? value : fallback;
}

/* Identity-map [0, limit) with 4 KiB pages: every access is a full 4-level walk. */
static uint64_t build_tables(uint32_t limit)
{
	uint32_t pages = limit / PAGE;

	pml4[0] = (uint32_t)pdpt | PG_P | PG_RW;
	pdpt[0] = (uint32_t)pd | PG_P | PG_RW;
	for (uint32_t t = 0; t < (pages + 511) / 512; t++)
		pd[t] = (uint32_t)pt[t] | PG_P | PG_RW;
	for (uint32_t p = 0; p < pages; p++)
		pt[p / 512][p % 512] = (uint64_t)p * PAGE | PG_P | PG_RW;
	return (uint32_t)pml4;
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	static struct memtouch_args args;
	const char *cmdline = (mbi->flags & MBI_FLAG_CMDLINE) ? (const char *)mbi->cmdline : "";
	const char *names[] = { "seq", "reverse", "random" };

	(void)magic;
	serial_init();
	args.base = number(cmdline, "base=", 16u * 1024 * 1024) & ~(PAGE - 1);
	args.pages = number(cmdline, "pages=", 1024);
	args.passes = number(cmdline, "passes=", 1);
	args.pattern = str_find(cmdline, "pattern=reverse") ? 1 : str_find(cmdline, "pattern=random") ? 2 : 0;
	if (args.pages == 0 || args.pages > MAX_PAGES || args.base < 4u * 1024 * 1024 ||
	    args.base + args.pages * PAGE > MAP_LIMIT) {
		serial_puts("memtouch: pages must be 1..65536 and base+pages*4096 below 272 MiB\r\n");
		halt();
	}
	args.cr3 = build_tables(args.base + args.pages * PAGE);
	serial_puts("memtouch: pages=");
	print_dec(args.pages);
	serial_puts(" pattern=");
	serial_puts(names[args.pattern]);
	serial_puts(" passes=");
	print_dec(args.passes);
	serial_puts(" base=0x");
	print_hex(args.base);
	memtouch_long(&args);
}
