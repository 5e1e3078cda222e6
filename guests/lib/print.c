/* Hex and decimal printing of 32-bit values (64-bit values in hex, by shifts only). */
#include "print.h"
#include "serial.h"

static const char hex_digits[] = "0123456789abcdef";

void print_hex32(uint32_t value)
{
	for (int shift = 28; shift >= 0; shift -= 4)
		serial_putc(hex_digits[(value >> shift) & 0xF]);
}

void print_hex64(uint64_t value)
{
	print_hex32((uint32_t)(value >> 32));
	print_hex32((uint32_t)value);
}

void print_hex(uint32_t value)
{
	int shift = 28;

	while (shift > 0 && ((value >> shift) & 0xF) == 0)
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		serial_putc(hex_digits[(value >> shift) & 0xF]);
}

void print_dec(uint32_t value)
{
	char digits[10];
	int n = 0;

	do {
		digits[n++] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	while (n)
		serial_putc(digits[--n]);
}
