/* ioapic: the 8254's ticks through the I/O APIC (82093AA) instead of the 8259, on one or more CPUs.
 *
 * The BSP masks every 8259 input and LINT0 (so no tick comes as an ExtINT), reads the I/O APIC's version,
 * runs the 8254's counter 0 at `hz` (default 1000) and routes I/O APIC pin 2, where IRQ 0 arrives, through
 * these phases, each `ticks` ticks long (default 50):
 *   1. fixed, edge, physical destination APIC 0: the BSP counts;
 *   2. fixed, level, physical APIC 0: the handler sees the TMR bit and the entry's remote IRR set before its
 *      EOI, which reaches the I/O APIC (without it only one tick would ever come);
 *   3. with cpus=2 or more: physical APIC 1, and only AP 1 counts;
 *   4. fixed, edge, logical destination 0x03 (flat LDRs 0x01 and 0x02): every tick reaches every CPU addressed.
 *      The 8254 runs one-shot (mode 0) here, the next tick armed only once every CPU has counted the last: an
 *      edge that finds its vector still set in a CPU's IRR merges with it, on hardware as in a VM whose vCPU
 *      waits for a host CPU, and a periodic timer would make that a count that depends on the host's load;
 *   5. masked: the 8254 wraps 20 times and no tick arrives.
 * After each mask the BSP takes, with interrupts on, what was raised before it (a tick already in its IRR is
 * still delivered, as the SDM says), so a phase's check counts only what came after.
 * Vectors 0x20-0x2F (the 8259's, were it to deliver) are counted as stray. The last line is "ioapic: ok" or
 * "ioapic: WRONG" after the line that says what differs.
 */
#include <stdint.h>
#include "cmdline.h"
#include "idt.h"
#include "io.h"
#include "lapic.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"

#define IOAPIC_BASE	0xFEC00000u
#define IOREGSEL	0x00
#define IOWIN		0x10
#define IOAPIC_VER	0x01
#define REDTBL(pin)	(0x10 + 2 * (pin))
#define RTE_LOGICAL	(1u << 11)
#define RTE_REMOTE_IRR	(1u << 14)
#define RTE_LEVEL	(1u << 15)
#define RTE_MASKED	(1u << 16)
#define TIMER_PIN	2		/* ISA IRQ 0's I/O APIC pin (the MADT's interrupt source override) */
#define TICK_VECTOR	0x30
#define LEVEL_VECTOR	0x31
#define LAPIC_LDR	0x0D0
#define LAPIC_DFR	0x0E0
#define LAPIC_TMR	0x180
#define LAPIC_LVT_LINT0	0x350
#define PIT_HZ		1193182u
#define STOP_VECTOR	0x40		/* BSP -> AP: look at `done` */
#define ICR_FIXED	0x4000		/* fixed delivery, level assert, physical destination */
#define TRAMPOLINE	0x8000
#define AP_ID		1

extern const char trampoline_start[], trampoline_end[];
volatile uint32_t ticks[2], stray, level_seen, level_bad;
static volatile uint32_t started, done;

void tick_entry(void);
void level_entry(void);
void stray_entry(void);
void stop_entry(void);
void tick_handler(void);
void level_handler(void);

static uint32_t ioapic_read(uint32_t reg)
{
	*(volatile uint32_t *)(IOAPIC_BASE + IOREGSEL) = reg;
	return *(volatile uint32_t *)(IOAPIC_BASE + IOWIN);
}

static void ioapic_write(uint32_t reg, uint32_t value)
{
	*(volatile uint32_t *)(IOAPIC_BASE + IOREGSEL) = reg;
	*(volatile uint32_t *)(IOAPIC_BASE + IOWIN) = value;
}

/* Route the timer pin: destination first, then the low dword that may unmask it. */
static void route(uint32_t low, uint32_t dest)
{
	ioapic_write(REDTBL(TIMER_PIN), RTE_MASKED);
	ioapic_write(REDTBL(TIMER_PIN) + 1, dest << 24);
	ioapic_write(REDTBL(TIMER_PIN), low);
}

/* The handlers save the registers C may use, count on their CPU (by APIC ID), and EOI. */
__asm__(
	".globl tick_entry, level_entry, stray_entry, stop_entry\n"
	"tick_entry:\n"
	"	pusha\n"
	"	call tick_handler\n"
	"	popa\n"
	"	iret\n"
	"level_entry:\n"
	"	pusha\n"
	"	call level_handler\n"
	"	popa\n"
	"	iret\n"
	"stray_entry:\n"
	"	lock incl stray\n"
	"	movl $0, 0xFEE000B0\n"
	"	iret\n"
	"stop_entry:\n"
	"	movl $0, 0xFEE000B0\n"
	"	iret\n");

void tick_handler(void)
{
	uint32_t id = lapic_read(LAPIC_ID) >> 24;

	if (id < 2)
		ticks[id]++;
	lapic_write(LAPIC_EOI, 0);
}

/* Level-triggered: before the EOI, the local APIC's TMR says level and the I/O APIC's entry waits for the EOI. */
void level_handler(void)
{
	uint32_t tmr = lapic_read(LAPIC_TMR + 0x10 * (LEVEL_VECTOR / 32));
	uint32_t entry = ioapic_read(REDTBL(TIMER_PIN));

	if (!(tmr & (1u << (LEVEL_VECTOR % 32))) || !(entry & RTE_REMOTE_IRR))
		level_bad++;
	level_seen++;
	lapic_write(LAPIC_EOI, 0);
}

static void pic_mask_all(void)
{
	static const uint8_t init[][2] = {
		{0x20, 0x11}, {0xA0, 0x11}, {0x21, 0x20}, {0xA1, 0x28}, {0x21, 0x04}, {0xA1, 0x02},
		{0x21, 0x01}, {0xA1, 0x01}, {0x21, 0xFF}, {0xA1, 0xFF},
	};
	for (unsigned i = 0; i < sizeof(init) / sizeof(init[0]); i++)
		outb(init[i][0], init[i][1]);
}

static uint16_t pit_count(void)
{
	uint8_t lo, hi;

	outb(0x43, 0x00);			/* latch counter 0 */
	lo = inb(0x40);
	hi = inb(0x40);
	return lo | hi << 8;
}

/* Wait for `wraps` periods of the 8254 by watching its count reload (guest-visible time, no interrupt). */
static void pit_wait(uint32_t wraps)
{
	uint16_t last = pit_count();

	while (wraps) {
		uint16_t now = pit_count();

		if (now > last)
			wraps--;
		last = now;
	}
}

static void send_ipi(uint32_t apic_id, uint32_t icr_lo)
{
	while (lapic_read(LAPIC_ICR_LO) & ICR_BUSY)
		;
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
}

static void start_ap(void)
{
	for (const char *s = trampoline_start; s < trampoline_end; s++)
		((char *)TRAMPOLINE)[s - trampoline_start] = *s;
	send_ipi(AP_ID, ICR_INIT);
	pit_wait(2);
	for (int i = 0; i < 2; i++) {
		send_ipi(AP_ID, ICR_SIPI | (TRAMPOLINE >> 12));
		pit_wait(1);
	}
	while (!started)
		__asm__ volatile("pause");
}

static void lapic_setup(uint32_t logical)
{
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	lapic_write(LAPIC_LVT_LINT0, LVT_MASKED | 0x700);	/* ExtINT, masked: no 8259 interrupt this way */
	lapic_write(LAPIC_DFR, 0xFFFFFFFF);			/* flat model */
	lapic_write(LAPIC_LDR, logical << 24);
}

void ap_main(uint32_t apic_id)
{
	(void)apic_id;
	idt_load();
	lapic_setup(0x02);
	started = 1;
	while (!done)
		__asm__ volatile("sti; hlt; cli");
	halt();
}

/* Wait with interrupts on until `*count` reaches `n`: in HLT for this CPU's own ticks, else watching the 8254. */
static void wait_ticks(volatile uint32_t *count, uint32_t n)
{
	while (*count < n)
		__asm__ volatile("sti; hlt; cli");
}

static void wait_other(volatile uint32_t *count, uint32_t n)
{
	while (*count < n)
		pit_wait(1);
}

/* Mask the timer pin, then take what reached this CPU before the mask: one period with interrupts on. One write
 * that keeps the trigger mode: through an edge-triggered entry, as route() goes, the remote IRR of a level tick
 * still waiting in this CPU's IRR would be gone when its handler looks. */
static void mask(uint32_t low)
{
	ioapic_write(REDTBL(TIMER_PIN), RTE_MASKED | low);
	__asm__ volatile("sti");
	pit_wait(1);
	__asm__ volatile("cli");
}

static void pit_periodic(uint32_t hz)
{
	outb(0x43, 0x34);					/* counter 0, LSB then MSB, mode 2 */
	outb(0x40, (PIT_HZ / hz) & 0xFF);
	outb(0x40, (PIT_HZ / hz) >> 8);
}

/* Mode 0: OUT goes low as the count is written and rises once, at terminal count: one edge on IRQ 0. */
static void pit_one_shot(uint32_t hz)
{
	outb(0x40, (PIT_HZ / hz) & 0xFF);
	outb(0x40, (PIT_HZ / hz) >> 8);
}

static int check(const char *what, uint32_t got, uint32_t want)
{
	serial_puts("ioapic: ");
	serial_puts(what);
	serial_puts(" ");
	print_dec(got);
	if (got == want) {
		serial_puts("\r\n");
		return 1;
	}
	serial_puts(", expected ");
	print_dec(want);
	serial_puts("\r\n");
	return 0;
}

void kmain(uint32_t magic, struct multiboot_info *mbi)
{
	const char *cmdline = 0;
	uint32_t hz, n, cpus, ok = 1, before, version;

	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
		cmdline = (const char *)mbi->cmdline;
	hz = cmdline_option(cmdline, "hz=", 1000);
	n = cmdline_option(cmdline, "ticks=", 50);
	cpus = cmdline_option(cmdline, "cpus=", 1);
	serial_init();
	for (int v = 0x20; v < 0x30; v++)
		idt_set_gate(v, stray_entry);
	idt_set_gate(TICK_VECTOR, tick_entry);
	idt_set_gate(LEVEL_VECTOR, level_entry);
	idt_set_gate(STOP_VECTOR, stop_entry);
	idt_load();
	pic_mask_all();
	lapic_setup(0x01);
	version = ioapic_read(IOAPIC_VER);
	serial_puts("ioapic: version ");
	print_hex(version);
	serial_puts("\r\n");
	ok &= version == 0x00170011;
	pit_periodic(hz);
	if (cpus > 1)
		start_ap();

	route(TICK_VECTOR, 0);					/* 1: edge, physical APIC 0 */
	wait_ticks(&ticks[0], n);
	mask(TICK_VECTOR);
	ok &= check("ticks on cpu1 while routed to cpu0", ticks[1], 0);

	route(RTE_LEVEL | LEVEL_VECTOR, 0);			/* 2: level, physical APIC 0 */
	wait_ticks(&level_seen, n);
	mask(RTE_LEVEL | LEVEL_VECTOR);
	ok &= check("level ticks without their EOI seen", level_bad, 0);
	ok &= check("remote IRR after the last EOI", ioapic_read(REDTBL(TIMER_PIN)) & RTE_REMOTE_IRR, 0);

	if (cpus > 1) {						/* 3: physical APIC 1 */
		before = ticks[0];
		route(TICK_VECTOR, AP_ID);
		wait_other(&ticks[1], n);
		mask(TICK_VECTOR);
		ok &= check("ticks on cpu0 while routed to cpu1", ticks[0] - before, 0);
	}

	ticks[0] = ticks[1] = 0;				/* 4: logical, every CPU addressed */
	outb(0x43, 0x30);					/* counter 0, LSB then MSB, mode 0 */
	route(RTE_LOGICAL | TICK_VECTOR, cpus > 1 ? 0x03 : 0x01);
	for (uint32_t i = 1; i <= n; i++) {
		pit_one_shot(hz);
		wait_ticks(&ticks[0], i);
		while (cpus > 1 && ticks[1] < i)		/* a tick lost on cpu1 hangs here: the host's deadline */
			__asm__ volatile("pause");
	}
	route(RTE_MASKED | RTE_LOGICAL | TICK_VECTOR, 0x03);
	pit_periodic(hz);
	if (cpus > 1)
		ok &= check("logical ticks, cpu1 minus cpu0", ticks[1] - ticks[0], 0);

	before = ticks[0];					/* 5: masked */
	__asm__ volatile("sti");
	pit_wait(20);
	__asm__ volatile("cli");
	ok &= check("ticks while masked", ticks[0] - before, 0);
	ok &= check("8259 interrupts", stray, 0);
	serial_puts("ioapic: cpu0 ");
	print_dec(ticks[0]);
	serial_puts(" logical ticks, cpu1 ");
	print_dec(ticks[1]);
	serial_puts(ok ? "\r\nioapic: ok\r\n" : "\r\nioapic: WRONG\r\n");
	done = 1;
	if (cpus > 1)
		send_ipi(AP_ID, ICR_FIXED | STOP_VECTOR);
	halt();
}
