/* debugme: the GDB stub's test guest; a counter loop to break in, step, watch and change (built with -g). */
#include <stdint.h>
#include "io.h"
#include "serial.h"

#define MAGIC 0xC0FFEEu		/* tick() never returns this by itself: a debugger sets it in EAX */

volatile uint32_t ticks;	/* bumped once per tick(): gdb reads and watches it */
volatile uint32_t shadow;	/* written only when the debugger made tick() return MAGIC */

__attribute__((noinline)) uint32_t tick(uint32_t step)
{
	ticks += step;
	return ticks;
}

void kmain(uint32_t magic, uint32_t mbi)
{
	(void)magic;
	(void)mbi;
	serial_init();
	serial_puts("debugme: counting\r\n");
	for (;;) {
		uint32_t now = tick(1);

		if (now == MAGIC) {
			shadow = now;
			serial_puts("debugme: magic\r\n");
		}
	}
}
