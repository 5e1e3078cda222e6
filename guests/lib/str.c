/* String comparison, search and number parsing for the guests. */
#include "str.h"

int str_eq(const char *a, const char *b)
{
	while (*a && *a == *b) {
		a++;
		b++;
	}
	return *a == *b;
}

const char *str_find(const char *haystack, const char *needle)
{
	for (; *haystack; haystack++) {
		const char *h = haystack, *n = needle;

		while (*n && *h == *n) {
			h++;
			n++;
		}
		if (!*n)
			return haystack;
	}
	return 0;
}

const char *skip_spaces(const char *s)
{
	while (*s == ' ')
		s++;
	return s;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

const char *parse_hex(const char *s, uint64_t *value)
{
	const char *start;
	uint64_t v = 0;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	for (start = s; hex_digit(*s) >= 0; s++)
		v = (v << 4) | (uint64_t)hex_digit(*s);
	*value = v;
	return s == start ? 0 : s;
}

const char *parse_dec(const char *s, uint32_t *value)
{
	const char *start = s;
	uint32_t v = 0;

	for (; *s >= '0' && *s <= '9'; s++)
		v = v * 10 + (uint32_t)(*s - '0');
	*value = v;
	return s == start ? 0 : s;
}
