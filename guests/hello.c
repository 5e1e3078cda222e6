/* hello: the smallest multiboot guest; a banner on COM1, port 0xE9 and the VGA text screen. */
#include <stdint.h>
#include "io.h"
#include "multiboot.h"
#include "serial.h"

#define DEBUGCON	0xE9		/* Bochs/QEMU debug console */
#define VGA_TEXT	((volatile uint16_t *)0xB8000)
#define VGA_COLUMNS	80
#define VGA_ATTR	0x1F		/* white on blue */

static const char banner[] = "Hello from webhyve!";

static void say(const char *s)
{
	for (; *s; s++) {
		serial_putc(*s);
		outb(DEBUGCON, (uint8_t)*s);
	}
}

static void vga_line(int row, const char *s)
{
	volatile uint16_t *cell = VGA_TEXT + row * VGA_COLUMNS;

	for (int col = 0; col < VGA_COLUMNS; col++) {
		char c = *s ? *s++ : ' ';
		cell[col] = (uint16_t)(VGA_ATTR << 8 | (uint8_t)c);
	}
}

void kmain(uint32_t magic, uint32_t mbi)
{
	const char *magic_line = magic == MULTIBOOT_BOOTLOADER_MAGIC ?
		"multiboot magic ok" : "bad magic";

	(void)mbi;
	serial_init();
	say(banner);
	say("\r\n");
	say(magic_line);
	say("\r\n");
	vga_line(0, banner);
	vga_line(1, magic_line);
	halt();
}
