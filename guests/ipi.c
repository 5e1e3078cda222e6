/* ipi: IPI round trips between two CPUs. The BSP starts AP 1 (INIT-SIPI-SIPI, smp_ap.S), then `count` times
 * sends it a fixed IPI (vector 0x40) and waits in sti; hlt until the AP's handler answers with a fixed IPI
 * back (vector 0x41). It prints a line before the first and after the last round trip, so a bench can time
 * them from the console, and checks that each side took exactly `count` interrupts.
 *
 * Command line: count=N (default 1000); flag=1 plays the same ping-pong through a word in memory that both
 * CPUs spin on, without interrupts: the baseline the IPI figure is compared with.
 */
#include <stdint.h>
#include "cmdline.h"
#include "idt.h"
#include "io.h"
#include "lapic.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"

#define TRAMPOLINE	0x8000
#define SIPI_VECTOR	(TRAMPOLINE >> 12)
#define PING_VECTOR	0x40		/* BSP -> AP */
#define PONG_VECTOR	0x41		/* AP -> BSP, sent by the AP's handler */
#define STOP_VECTOR	0x42		/* BSP -> AP: look at `done` */
#define ICR_FIXED	0x4000		/* fixed delivery, level assert, physical destination */
#define AP_ID		1

extern const char trampoline_start[], trampoline_end[];
volatile uint32_t pings, pongs;
static volatile uint32_t started, done, use_flag, ball;

void ping_entry(void);
void pong_entry(void);
void stop_entry(void);

/* The handlers keep every register. The AP answers from inside its handler: wait for the ICR to be idle, send
 * the pong to APIC 0, then EOI. */
__asm__(
	".globl ping_entry, pong_entry, stop_entry\n"
	"ping_entry:\n"
	"	incl pings\n"
	"1:	testl $0x1000, 0xFEE00300\n"
	"	jnz 1b\n"
	"	movl $0, 0xFEE00310\n"
	"	movl $0x4041, 0xFEE00300\n"
	"	movl $0, 0xFEE000B0\n"
	"	iret\n"
	"pong_entry:\n"
	"	incl pongs\n"
	"	movl $0, 0xFEE000B0\n"
	"	iret\n"
	"stop_entry:\n"
	"	movl $0, 0xFEE000B0\n"
	"	iret\n");

static void send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
	while (lapic_read(LAPIC_ICR_LO) & ICR_BUSY)
		;
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
}

static void delay(uint32_t n)
{
	for (volatile uint32_t i = 0; i < n; i++)
		;
}

static void start_ap(uint32_t apic_id)
{
	for (const char *s = trampoline_start; s < trampoline_end; s++)
		((char *)TRAMPOLINE)[s - trampoline_start] = *s;
	send_ipi(apic_id, ICR_INIT);
	delay(10000);
	for (int i = 0; i < 2; i++) {
		send_ipi(apic_id, ICR_SIPI | SIPI_VECTOR);
		delay(1000);
	}
}

/* The AP (smp_ap.S calls this): the BSP's IDT, its APIC enabled, then it sleeps until pinged or stopped. */
void ap_main(uint32_t apic_id)
{
	(void)apic_id;
	idt_load();
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	started = 1;
	if (use_flag) {
		while (!done) {
			uint32_t b = ball;

			if (b & 1) {
				pings++;
				ball = b + 1;
			}
			__asm__ volatile("pause");
		}
	}
	while (!done)
		__asm__ volatile("sti; hlt; cli");
	halt();
}

/* One round trip by interrupts: ping, then sleep until the pong handler has counted. */
static void round_trip_ipi(void)
{
	uint32_t before = pongs;

	__asm__ volatile("cli");
	send_ipi(AP_ID, ICR_FIXED | PING_VECTOR);
	while (pongs == before)
		__asm__ volatile("sti; hlt; cli");
	__asm__ volatile("sti");
}

/* One round trip through memory: the ball goes odd for the AP, the AP makes it even again. */
static void round_trip_flag(void)
{
	uint32_t b = ball + 1;

	ball = b;
	while (ball == b)
		__asm__ volatile("pause");
	pongs++;
}

void kmain(uint32_t magic, struct multiboot_info *mbi)
{
	const char *cmdline = 0;
	uint32_t count;

	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
		cmdline = (const char *)mbi->cmdline;
	count = cmdline_option(cmdline, "count=", 1000);
	use_flag = cmdline_option(cmdline, "flag=", 0);
	serial_init();
	idt_set_gate(PING_VECTOR, ping_entry);
	idt_set_gate(PONG_VECTOR, pong_entry);
	idt_set_gate(STOP_VECTOR, stop_entry);
	idt_load();
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	serial_puts("ipi: starting AP 1\r\n");
	start_ap(AP_ID);
	while (!started)
		__asm__ volatile("pause");
	serial_puts(use_flag ? "ipi: ponging through memory, " : "ipi: pinging AP 1 by IPI, ");
	print_dec(count);
	serial_puts(" round trips\r\n");
	for (uint32_t i = 0; i < count; i++) {
		if (use_flag)
			round_trip_flag();
		else
			round_trip_ipi();
	}
	serial_puts("ipi: done, ");
	print_dec(count);
	serial_puts(" round trips, AP took ");
	print_dec(pings);
	serial_puts(", BSP took ");
	print_dec(pongs);
	serial_puts(pings == count && pongs == count ? " ok\r\n" : " WRONG\r\n");
	done = 1;
	if (!use_flag)
		send_ipi(AP_ID, ICR_FIXED | STOP_VECTOR);
	halt();
}
