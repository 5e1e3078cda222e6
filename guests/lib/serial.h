/* Polled 16550 UART on COM1 (0x3F8). */
#ifndef SERIAL_H
#define SERIAL_H

void serial_init(void);
void serial_putc(char c);
void serial_puts(const char *s);
char serial_getc(void);

#endif
