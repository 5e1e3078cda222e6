/* kickstress: each loop iteration does an APIC write, an OUT, a WRMSR, a CPUID and memory increments, each
 * counted in guest memory, while the host kicks the vCPUs out of the guest at random moments. A kick that
 * replayed an instruction shows as a count too high (a self-IPI sent twice, an `incl` done twice), one that
 * skipped an instruction as a value read back wrong (the port, the MSR, CPUID's answer).
 *
 * Command line: cpus=N (default 1), iters=N (per CPU, default 100000), host_stop=1 (instead of iters: loop
 * until the host sets kick_stop).
 * Every CPU prints one line "cpu A iters I ipis P incs N msr S cpuid C errors E", then the bootstrap
 * processor "shared T" and "done".
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
#define SELF_VECTOR	0x41
#define ICR_SELF	0x40000		/* destination shorthand: self; fixed delivery */
#define MSR_SCRATCH	0x8B		/* IA32_BIOS_SIGN_ID: a modeled MSR a write stores */
#define POST_PORT	0x80		/* reads back the last value written */
#define CPUID0_EBX	0x756e6547	/* "Genu" */

struct percpu {
	volatile uint32_t ipis, incs, msr_sum, cpuid_sum, errors, iters;
	uint32_t pad[10];		/* one 64-byte line each */
};

extern const char trampoline_start[], trampoline_end[];
struct percpu percpu[16] __attribute__((aligned(64)));
static volatile uint32_t started, go, finished, iters, host_stop, shared, print_lock;
volatile uint32_t kick_stop;		/* set by the host (tests/engine/test_kicks.py) under host_stop=1 */
void self_ipi_entry(void);

/* The self-IPI handler: count it for this CPU (APIC ID from the LAPIC), EOI, return; keeps every register. */
__asm__(
	".globl self_ipi_entry\n"
	"self_ipi_entry:\n"
	"	pushl %eax\n"
	"	movl 0xFEE00020, %eax\n"
	"	shrl $24, %eax\n"
	"	shll $6, %eax\n"
	"	incl percpu(%eax)\n"
	"	movl $0, 0xFEE000B0\n"
	"	popl %eax\n"
	"	iret\n");

static void stress(struct percpu *me)
{
	for (uint32_t i = 0; host_stop ? !kick_stop : i < iters; i++) {
		uint32_t lo, hi, ebx = 0, eax = 0, ecx = 0, edx = 0;

		lapic_write(LAPIC_ICR_LO, ICR_SELF | SELF_VECTOR);		/* APIC write: one IPI */
		outb(POST_PORT, (uint8_t)i);					/* OUT */
		if (inb(POST_PORT) != (uint8_t)i)
			me->errors++;
		__asm__ volatile("wrmsr" : : "c"(MSR_SCRATCH), "a"(i), "d"(~i));	/* WRMSR */
		__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(MSR_SCRATCH));
		if (lo != i || hi != ~i)
			me->errors++;
		me->msr_sum += lo;
		__asm__ volatile("cpuid" : "+a"(eax), "+b"(ebx), "+c"(ecx), "+d"(edx));	/* CPUID */
		me->cpuid_sum += ebx;
		__asm__ volatile("incl %0" : "+m"(me->incs));			/* a plain read-modify-write */
		__asm__ volatile("lock incl %0" : "+m"(shared));		/* a locked one, shared */
		me->iters = i + 1;
	}
}

static void report(uint32_t id)
{
	struct percpu *me = &percpu[id];
	uint32_t taken;

	do {
		taken = 1;
		__asm__ volatile("lock xchgl %0, %1" : "+r"(taken), "+m"(print_lock) : : "memory");
	} while (taken);
	serial_puts("cpu ");
	print_dec(id);
	serial_puts(" iters ");
	print_dec(me->iters);
	serial_puts(" ipis ");
	print_dec(me->ipis);
	serial_puts(" incs ");
	print_dec(me->incs);
	serial_puts(" msr ");
	print_dec(me->msr_sum);
	serial_puts(" cpuid ");
	print_dec(me->cpuid_sum);
	serial_puts(" errors ");
	print_dec(me->errors);
	serial_puts("\r\n");
	taken = 0;
	__asm__ volatile("lock xchgl %0, %1" : "+r"(taken), "+m"(print_lock) : : "memory");
}

static void run(uint32_t id)
{
	idt_load();
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	__asm__ volatile("sti");
	stress(&percpu[id]);
	__asm__ volatile("cli");
	report(id);
	__asm__ volatile("lock incl %0" : "+m"(finished));
}

void ap_main(uint32_t apic_id)
{
	__asm__ volatile("lock incl %0" : "+m"(started));
	while (!go)
		__asm__ volatile("pause");
	run(apic_id);
}

static void start_ap(uint32_t apic_id)
{
	lapic_write(LAPIC_ICR_HI, apic_id << 24);
	lapic_write(LAPIC_ICR_LO, ICR_INIT);
	for (volatile int d = 0; d < 10000; d++)
		;
	for (int i = 0; i < 2; i++) {
		lapic_write(LAPIC_ICR_HI, apic_id << 24);
		lapic_write(LAPIC_ICR_LO, ICR_SIPI | SIPI_VECTOR);
		for (volatile int d = 0; d < 1000; d++)
			;
	}
}

void kmain(uint32_t magic, struct multiboot_info *mbi)
{
	const char *cmdline = 0;
	uint32_t cpus;

	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE))
		cmdline = (const char *)mbi->cmdline;
	cpus = cmdline_option(cmdline, "cpus=", 1);
	iters = cmdline_option(cmdline, "iters=", 100000);
	host_stop = cmdline_option(cmdline, "host_stop=", 0);
	serial_init();
	idt_set_gate(SELF_VECTOR, self_ipi_entry);
	lapic_write(LAPIC_SVR, SVR_ENABLE | 0xFF);
	for (const char *s = trampoline_start; s < trampoline_end; s++)
		((char *)TRAMPOLINE)[s - trampoline_start] = *s;
	for (uint32_t id = 1; id < cpus && id < 16; id++) {
		start_ap(id);
		while (started < id)
			__asm__ volatile("pause");
	}
	serial_puts("kickstress: go\r\n");
	go = 1;
	run(0);
	while (finished < cpus)
		__asm__ volatile("pause");
	serial_puts("shared ");
	print_dec(shared);
	serial_puts("\r\ndone\r\n");
	halt();
}
