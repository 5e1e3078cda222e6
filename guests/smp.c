/* smp: bring up every application processor with INIT-SIPI-SIPI; each prints its APIC ID; then all CPUs
 * add to one shared counter under a spinlock, and the bootstrap processor prints and checks the total.
 *
 * Command line: cpus=N (default 2, the vCPUs the VM has), work=N (increments per CPU, default 200000),
 * rounds=N (private arithmetic between two increments, default 50: small keeps the lock contended).
 * APs are started one at a time, each after the previous one reported, so their lines do not interleave.
 */
#include <stdint.h>
#include "cmdline.h"
#include "io.h"
#include "lapic.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"

#define TRAMPOLINE	0x8000
#define SIPI_VECTOR	(TRAMPOLINE >> 12)

extern const char trampoline_start[], trampoline_end[];
static volatile uint32_t started, go, finished, lock, total_work, rounds;
static volatile uint32_t counter;

static void spin_lock(volatile uint32_t *l)
{
	uint32_t taken;

	for (;;) {
		taken = 1;
		__asm__ volatile("lock xchgl %0, %1" : "+r"(taken), "+m"(*l) : : "memory");
		if (!taken)
			return;
		while (*l)
			__asm__ volatile("pause");
	}
}

/* A locked release: webhyve's bus lock orders LOCK-prefixed instructions against each other, not against
 * plain stores (docs/interrupts.md), so a plain `mov` release could be lost inside another CPU's xchg. */
static void spin_unlock(volatile uint32_t *l)
{
	uint32_t zero = 0;

	__asm__ volatile("lock xchgl %0, %1" : "+r"(zero), "+m"(*l) : : "memory");
}

static void atomic_inc(volatile uint32_t *v)
{
	__asm__ volatile("lock incl %0" : "+m"(*v) : : "memory");
}

/* The CPU-bound part: `work` times, `rounds` steps of private arithmetic, then 1 added to the shared counter. */
static void do_work(uint32_t work)
{
	uint32_t x = 1;

	for (uint32_t i = 0; i < work; i++) {
		for (uint32_t j = 0; j < rounds; j++)
			x = x * 1103515245u + 12345u;
		spin_lock(&lock);
		counter += 1 + (x & 0);
		spin_unlock(&lock);
	}
}

static void delay(uint32_t n)
{
	for (volatile uint32_t i = 0; i < n; i++)
		;
}

void ap_main(uint32_t apic_id)
{
	serial_puts("AP ");
	print_dec(apic_id);
	serial_puts(" up\r\n");
	started++;			/* only one AP runs this far at a time: the BSP waits for each */
	while (!go)
		__asm__ volatile("pause");
	do_work(total_work);
	atomic_inc(&finished);
}

static void start_ap(uint32_t apic_id)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, ICR_INIT);
	delay(10000);
	for (int i = 0; i < 2; i++) {
		lapic_write(LAPIC_ICR_HI, apic_id << 24);
		lapic_write(LAPIC_ICR_LO, ICR_SIPI | SIPI_VECTOR);
		delay(1000);
	}
}

void kmain(uint32_t magic, struct multiboot_info *mbi)
{
	const char *cmdline = 0;
	uint32_t cpus, expected;

	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
		cmdline = (const char *)mbi->cmdline;
	cpus = cmdline_option(cmdline, "cpus=", 2);
	total_work = cmdline_option(cmdline, "work=", 200000);
	rounds = cmdline_option(cmdline, "rounds=", 50);
	serial_init();
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	serial_puts("smp: BSP is APIC ");
	print_dec(lapic_read(LAPIC_ID) >> 24);
	serial_puts(", starting ");
	print_dec(cpus - 1);
	serial_puts(" APs\r\n");
	for (const char *s = trampoline_start; s < trampoline_end; s++)
		((char *)TRAMPOLINE)[s - trampoline_start] = *s;
	for (uint32_t id = 1; id < cpus; id++) {
		start_ap(id);
		while (started < id)
			__asm__ volatile("pause");
	}
	serial_puts("smp: all CPUs up, counting\r\n");
	go = 1;
	do_work(total_work);
	atomic_inc(&finished);
	while (finished < cpus)
		__asm__ volatile("pause");
	expected = cpus * total_work;
	serial_puts("smp: counter ");
	print_dec(counter);
	serial_puts(counter == expected ? " ok\r\n" : " WRONG, expected ");
	if (counter != expected) {
		print_dec(expected);
		serial_puts("\r\n");
	}
	halt();
}
