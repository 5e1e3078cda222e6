/* timer: a periodic local APIC timer; the guest counts its interrupts and prints a line each second.
 *
 * Command line: hz=N (default 100), seconds=N (default 3). The timer runs at the core crystal clock that
 * CPUID leaf 0x15 reports in ECX (SDM 10.5.4), divided by 1, so a period is crystal/hz counts; a CPU that
 * reports none is taken to count at bhyve's 2^27 Hz. The main loop waits with sti;hlt, or with spin=1 keeps
 * running (sti;nop;cli): every interrupt then arrives while the vCPU is in the guest (the posted-interrupts demo).
 */
#include <stdint.h>
#include "idt.h"
#include "io.h"
#include "lapic.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"
#include "cmdline.h"

#define TIMER_VECTOR	0x20
#define BHYVE_BUS_HZ	(1u << 27)

volatile uint32_t ticks;
void timer_entry(void);

/* The handler: count, EOI, return. Written in assembly so that it keeps every register. */
__asm__(
	".globl timer_entry\n"
	"timer_entry:\n"
	"	incl ticks\n"
	"	movl $0, 0xFEE000B0\n"
	"	iret\n");

/* CPUID.15H:ECX, the core crystal clock in Hz: what the LAPIC timer counts. */
static uint32_t timer_input_hz(void)
{
	uint32_t a, b, c, d;

	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
	if (a < 0x15)
		return BHYVE_BUS_HZ;
	__asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0x15), "c"(0));
	return c ? c : BHYVE_BUS_HZ;
}

void kmain(uint32_t magic, struct multiboot_info *mbi)
{
	const char *cmdline = 0;
	uint32_t hz, seconds, spin, second = 0;

	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
		cmdline = (const char *)mbi->cmdline;
	hz = cmdline_option(cmdline, "hz=", 100);
	seconds = cmdline_option(cmdline, "seconds=", 3);
	spin = cmdline_option(cmdline, "spin=", 0);
	serial_init();
	idt_set_gate(TIMER_VECTOR, timer_entry);
	idt_load();
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	lapic_write(LAPIC_TIMER_DCR, 0xB);			/* divide by 1 */
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | TIMER_VECTOR);
	lapic_write(LAPIC_TIMER_ICR, timer_input_hz() / hz);
	serial_puts("timer: periodic LAPIC timer at ");
	print_dec(hz);
	serial_puts(" Hz\r\n");
	while (second < seconds) {
		if (spin)
			__asm__ volatile("sti; nop; cli");
		else
			__asm__ volatile("sti; hlt; cli");
		if (ticks >= (second + 1) * hz) {
			second++;
			serial_puts("second ");
			print_dec(second);
			serial_puts(": ");
			print_dec(ticks);
			serial_puts(" ticks\r\n");
		}
	}
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | TIMER_VECTOR);
	serial_puts("timer: done, ");
	print_dec(ticks);
	serial_puts(" ticks\r\n");
	halt();
}
