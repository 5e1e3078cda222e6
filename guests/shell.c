/* shell: an interactive multiboot guest on COM1 that pokes at what a hypervisor emulates.
 *
 * Input is interrupt-driven, as in a small OS: the 8259 pair remapped to 0x20-0x2F, COM1's IRQ 4 unmasked,
 * IER asks for received-data interrupts and MCR.OUT2 lets them out; the shell sleeps in sti; hlt between
 * keys (lib/serial_irq.c). Output stays polled. `irqs` shows how many UART interrupts it has taken.
 * Command line: poll=1 keeps the old way, spinning on LSR for input (the vCPU never halts), to compare.
 */
#include <stdint.h>
#include "cmdline.h"
#include "io.h"
#include "multiboot.h"
#include "pic.h"
#include "print.h"
#include "serial.h"
#include "serial_irq.h"
#include "str.h"
#include "traps.h"

#define PROMPT		"webhyve> "
#define LINE_MAX	128
#define CTRL_U		0x15

static const struct multiboot_info *boot_info;
static char (*read_key)(void) = serial_irq_getc;

static void newline(void)
{
	serial_puts("\r\n");
}

/* Line editing: echo, backspace/DEL erase, Ctrl-U kills the line, CR or LF ends it. */
static void read_line(char *line)
{
	static char last;
	int n = 0;

	for (;;) {
		char c = read_key();

		if (c == '\n' && last == '\r') {	/* the LF of a CR LF pair */
			last = c;
			continue;
		}
		last = c;
		if (c == '\r' || c == '\n') {
			newline();
			line[n] = 0;
			return;
		}
		if (c == 0x7F || c == '\b') {
			if (n) {
				n--;
				serial_puts("\b \b");
			}
		} else if (c == CTRL_U) {
			for (; n; n--)
				serial_puts("\b \b");
		} else if (c >= ' ' && c < 0x7F && n < LINE_MAX - 1) {
			line[n++] = c;
			serial_putc(c);
		}
	}
}

/* Split "name args" in place: NUL-terminate the name and return the arguments. */
static char *split_command(char *line)
{
	while (*line && *line != ' ')
		line++;
	if (*line)
		*line++ = 0;
	return (char *)skip_spaces(line);
}

static int parse_hex32(const char **s, uint32_t *value)
{
	uint64_t v;
	const char *end = parse_hex(skip_spaces(*s), &v);

	if (!end)
		return 0;
	*s = end;
	*value = (uint32_t)v;
	return 1;
}

static void cmd_help(const char *args);

static void cmd_echo(const char *args)
{
	serial_puts(args);
	newline();
}

static int printable(const char *bytes, int n)
{
	for (int i = 0; i < n; i++)
		if (bytes[i] < ' ' || bytes[i] >= 0x7F)
			return 0;
	return 1;
}

static void cmd_cpuid(const char *args)
{
	uint32_t leaf, subleaf = 0, r[4];
	char signature[13];

	if (!parse_hex32(&args, &leaf)) {
		serial_puts("usage: cpuid LEAF [SUBLEAF]\r\n");
		return;
	}
	parse_hex32(&args, &subleaf);
	__asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(subleaf));
	serial_puts("eax=");
	print_hex32(r[0]);
	serial_puts(" ebx=");
	print_hex32(r[1]);
	serial_puts(" ecx=");
	print_hex32(r[2]);
	serial_puts(" edx=");
	print_hex32(r[3]);
	newline();
	for (int i = 0; i < 12; i++)
		signature[i] = (char)(r[1 + i / 4] >> (8 * (i % 4)));
	signature[12] = 0;
	if (printable(signature, 12)) {
		serial_puts("signature \"");
		serial_puts(signature);
		serial_puts("\"\r\n");
	}
}

static void print_msr_fault(const char *op, uint32_t msr)
{
	serial_puts(op);
	serial_puts(" 0x");
	print_hex(msr);
	serial_puts(": #GP\r\n");
}

static void cmd_rdmsr(const char *args)
{
	uint32_t msr;
	uint64_t value;

	if (!parse_hex32(&args, &msr)) {
		serial_puts("usage: rdmsr MSR\r\n");
		return;
	}
	if (rdmsr_safe(msr, &value)) {
		print_msr_fault("rdmsr", msr);
		return;
	}
	serial_puts("msr 0x");
	print_hex(msr);
	serial_puts(" = 0x");
	print_hex64(value);
	newline();
}

static void cmd_wrmsr(const char *args)
{
	uint32_t msr;
	uint64_t value;
	const char *end;

	if (!parse_hex32(&args, &msr) || !(end = parse_hex(skip_spaces(args), &value))) {
		serial_puts("usage: wrmsr MSR VALUE\r\n");
		return;
	}
	if (wrmsr_safe(msr, (uint32_t)value, (uint32_t)(value >> 32)))
		print_msr_fault("wrmsr", msr);
	else
		serial_puts("ok\r\n");
}

static void cmd_ticks(const char *args)
{
	uint32_t low, high;

	(void)args;
	__asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
	serial_puts("tsc=0x");
	print_hex32(high);
	print_hex32(low);
	newline();
}

static void print_mmap(const struct multiboot_info *mbi)
{
	uint32_t at = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;

	while (at < end) {
		const struct multiboot_mmap_entry *e = (const void *)at;

		serial_puts("mmap base=0x");
		print_hex64(e->base);
		serial_puts(" len=0x");
		print_hex64(e->length);
		serial_puts(" type=");
		print_dec(e->type);
		newline();
		at += e->size + 4;
	}
}

static void cmd_mbinfo(const char *args)
{
	const struct multiboot_info *mbi = boot_info;

	(void)args;
	serial_puts("flags=0x");
	print_hex32(mbi->flags);
	newline();
	if (mbi->flags & MBI_FLAG_MEM) {
		serial_puts("mem_lower=");
		print_dec(mbi->mem_lower);
		serial_puts("\r\nmem_upper=");
		print_dec(mbi->mem_upper);
		newline();
	}
	if (mbi->flags & MBI_FLAG_CMDLINE) {
		serial_puts("cmdline=");
		serial_puts((const char *)mbi->cmdline);
		newline();
	}
	if (mbi->flags & MBI_FLAG_LOADER_NAME) {
		serial_puts("loader=");
		serial_puts((const char *)mbi->boot_loader_name);
		newline();
	}
	if (mbi->flags & MBI_FLAG_MMAP)
		print_mmap(mbi);
}

static void cmd_peek(const char *args)
{
	uint32_t addr;

	if (!parse_hex32(&args, &addr)) {
		serial_puts("usage: peek ADDR\r\n");
		return;
	}
	serial_puts("[0x");
	print_hex32(addr);
	serial_puts("] = 0x");
	print_hex32(*(volatile const uint32_t *)addr);
	newline();
}

static void cmd_irqs(const char *args)
{
	(void)args;
	serial_puts("uart irqs=");
	print_dec(serial_irq_count());
	serial_puts(" bytes=");
	print_dec(serial_irq_bytes());
	serial_puts(read_key == serial_getc ? " (polling: poll=1)\r\n" : "\r\n");
}

/* The RTC (MC146818 at 0x70/0x71): wait while an update is in progress, then read the time and date. */
static uint8_t cmos_read(uint8_t index)
{
	outb(0x70, index);
	return inb(0x71);
}

static void print_2digits(unsigned value)
{
	serial_putc((char)('0' + value / 10 % 10));
	serial_putc((char)('0' + value % 10));
}

static void cmd_date(const char *args)
{
	static const uint8_t index[] = { 0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00 };
	static const char sep[] = "?-- ::";
	unsigned field[7];
	uint8_t reg_b, pm = 0;

	(void)args;
	while (cmos_read(0x0A) & 0x80)
		;
	reg_b = cmos_read(0x0B);
	for (int i = 0; i < 7; i++) {
		uint8_t v = cmos_read(index[i]);

		if (i == 4 && !(reg_b & 0x02)) {	/* 12-hour mode: bit 7 is PM */
			pm = v & 0x80;
			v &= 0x7F;
		}
		field[i] = (reg_b & 0x04) ? v : (unsigned)(v >> 4) * 10 + (v & 0xF);
	}
	if (!(reg_b & 0x02))
		field[4] = field[4] % 12 + (pm ? 12 : 0);
	for (int i = 0; i < 7; i++) {
		if (i > 1)
			serial_putc(sep[i - 1]);
		print_2digits(field[i]);
	}
	serial_puts(" UTC\r\n");
}

/* PCI configuration mechanism #1: every function on bus 0 that answers. */
static uint32_t pci_read32(unsigned device, unsigned function, unsigned reg)
{
	outl(0xCF8, 0x80000000u | device << 11 | function << 8 | reg);
	return inl(0xCFC);
}

static void print_hex_digits(uint32_t value, int digits)
{
	static const char hex[] = "0123456789abcdef";

	while (digits--)
		serial_putc(hex[(value >> 4 * digits) & 0xF]);
}

static void cmd_lspci(const char *args)
{
	(void)args;
	for (unsigned device = 0; device < 32; device++) {
		for (unsigned function = 0; function < 8; function++) {
			uint32_t id = pci_read32(device, function, 0);

			if ((id & 0xFFFF) == 0xFFFF) {
				if (function == 0)
					break;
				continue;
			}
			serial_puts("00:");
			print_hex_digits(device, 2);
			serial_putc('.');
			print_hex_digits(function, 1);
			serial_putc(' ');
			print_hex_digits(id & 0xFFFF, 4);
			serial_putc(':');
			print_hex_digits(id >> 16, 4);
			serial_puts(" class ");
			print_hex_digits(pci_read32(device, function, 8) >> 8, 6);
			newline();
			if (function == 0 && !(pci_read32(device, 0, 0x0C) & 0x00800000))
				break;		/* header type bit 7 clear: a single-function device */
		}
	}
}

/* The 8042's pulse of its output port bit 0, the CPU's reset line (Linux's reboot=k). */
static void cmd_reboot(const char *args)
{
	(void)args;
	serial_puts("rebooting\r\n");
	while (inb(0x64) & 0x02)
		;
	outb(0x64, 0xFE);
	halt();
}

static void cmd_triple(const char *args)
{
	(void)args;
	triple_fault();
}

static void cmd_halt(const char *args)
{
	(void)args;
	serial_puts("halting\r\n");
	halt();
}

static const struct command {
	const char *name;
	const char *usage;
	void (*run)(const char *args);
} commands[] = {
	{ "help",   "help                 this list",                  cmd_help },
	{ "echo",   "echo TEXT            print TEXT",                 cmd_echo },
	{ "cpuid",  "cpuid LEAF [SUB]     execute cpuid (hex)",        cmd_cpuid },
	{ "rdmsr",  "rdmsr MSR            read an MSR (hex)",          cmd_rdmsr },
	{ "wrmsr",  "wrmsr MSR VALUE      write an MSR (hex)",         cmd_wrmsr },
	{ "ticks",  "ticks                read the TSC",               cmd_ticks },
	{ "mbinfo", "mbinfo               show the multiboot info",    cmd_mbinfo },
	{ "peek",   "peek ADDR            read 32 bits at ADDR (hex)", cmd_peek },
	{ "irqs",   "irqs                 UART interrupts taken",      cmd_irqs },
	{ "date",   "date                 the RTC's date and time",    cmd_date },
	{ "lspci",  "lspci                PCI functions on bus 0",     cmd_lspci },
	{ "reboot", "reboot               reset through the 8042",     cmd_reboot },
	{ "triple", "triple               cause a triple fault",       cmd_triple },
	{ "halt",   "halt                 cli; hlt",                   cmd_halt },
};

#define N_COMMANDS ((int)(sizeof(commands) / sizeof(commands[0])))

static void cmd_help(const char *args)
{
	(void)args;
	for (int i = 0; i < N_COMMANDS; i++) {
		serial_puts(commands[i].usage);
		newline();
	}
}

static void run_command(char *line)
{
	char *name = (char *)skip_spaces(line);
	const char *args = split_command(name);

	if (!*name)
		return;
	for (int i = 0; i < N_COMMANDS; i++) {
		if (str_eq(name, commands[i].name)) {
			commands[i].run(args);
			return;
		}
	}
	serial_puts("unknown command: ");
	serial_puts(name);
	newline();
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	char line[LINE_MAX];

	boot_info = mbi;
	serial_init();
	traps_init();
	if (magic == MULTIBOOT_BOOTLOADER_MAGIC && (mbi->flags & MBI_FLAG_CMDLINE) &&
	    cmdline_option((const char *)mbi->cmdline, "poll=", 0)) {
		read_key = serial_getc;
	} else {
		pic_init();
		serial_irq_init();
	}
	serial_puts("webhyve shell ready\r\n");
	for (;;) {
		serial_puts(PROMPT);
		read_line(line);
		run_command(line);
	}
}
