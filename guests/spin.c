/* spin: CPU-bound benchmark; an xorshift checksum over N iterations (iters=N on the command line). */
#include <stdint.h>
#include "io.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"
#include "str.h"

#define DEFAULT_ITERATIONS 50000000u

/* Pure register/stack work, no I/O: a benchmark may call this address directly. */
__attribute__((noinline)) uint32_t spin_kernel(uint32_t iterations)
{
	uint32_t x = 0x12345678;

	for (uint32_t i = 0; i < iterations; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		x += i;
	}
	return x;
}

static uint32_t iterations_from(const struct multiboot_info *mbi)
{
	const char *arg;
	uint32_t n;

	if (!(mbi->flags & MBI_FLAG_CMDLINE))
		return DEFAULT_ITERATIONS;
	arg = str_find((const char *)mbi->cmdline, "iters=");
	if (arg && parse_dec(arg + 6, &n))
		return n;
	return DEFAULT_ITERATIONS;
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	uint32_t n, checksum;

	(void)magic;
	serial_init();
	n = iterations_from(mbi);
	checksum = spin_kernel(n);
	serial_puts("spin: iters=");
	print_dec(n);
	serial_puts(" checksum=0x");
	print_hex32(checksum);
	serial_puts("\r\n");
	halt();
}
