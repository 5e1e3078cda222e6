/* Number printing on the serial console, without 64-bit division (libgcc is not linked). */
#ifndef PRINT_H
#define PRINT_H

#include <stdint.h>

void print_hex32(uint32_t value);	/* 8 digits, no prefix */
void print_hex64(uint64_t value);	/* 16 digits, no prefix */
void print_hex(uint32_t value);		/* no leading zeros, no prefix */
void print_dec(uint32_t value);

#endif
