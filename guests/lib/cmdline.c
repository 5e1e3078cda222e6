/* name=number options from the Multiboot command line. */
#include "cmdline.h"
#include "str.h"

uint32_t cmdline_option(const char *cmdline, const char *name, uint32_t fallback)
{
	const char *at = cmdline ? str_find(cmdline, name) : 0;
	uint32_t value;

	if (!at)
		return fallback;
	while (*name++)
		at++;
	if (!parse_dec(at, &value) || value == 0)
		return fallback;
	return value;
}
