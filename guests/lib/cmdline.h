/* Options on the Multiboot command line, as name=number. */
#ifndef CMDLINE_H
#define CMDLINE_H

#include <stdint.h>

/* The number after `name` (e.g. "hz=") on the command line, or `fallback` if absent or zero. */
uint32_t cmdline_option(const char *cmdline, const char *name, uint32_t fallback);

#endif
