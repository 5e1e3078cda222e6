/* The few string helpers the guests need: compare, search, parse numbers. */
#ifndef STR_H
#define STR_H

#include <stdint.h>

int str_eq(const char *a, const char *b);
const char *str_find(const char *haystack, const char *needle);
const char *skip_spaces(const char *s);
/* Parse hex (optional 0x) or decimal; return the end, or 0 if no digit was read. */
const char *parse_hex(const char *s, uint64_t *value);
const char *parse_dec(const char *s, uint32_t *value);

#endif
