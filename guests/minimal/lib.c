/*
 * lib.c: string helpers, and printing and parsing numbers.
 *
 * The loops are plain on purpose.  The Makefile passes
 * -fno-tree-loop-distribute-patterns, otherwise gcc would happily turn the
 * body of memset() into a call to memset().
 */
#include "lib.h"
#include "serial.h"

void *memset(void *dst, int c, size_t n)
{
	u8 *d = dst;

	while (n--)
		*d++ = (u8)c;
	return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	u8 *d = dst;
	const u8 *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;

	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x - *y;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (u8)*a - (u8)*b;
		if (!*a)
			break;
	}
	return 0;
}

void print_n(const char *s, size_t n)
{
	serial_write(s, n);
}

void print(const char *s)
{
	serial_write(s, strlen(s));
}

/* Digits are produced backwards into the end of a small buffer. */
void print_dec(long v)
{
	char buf[21];
	char *p = buf + sizeof(buf);
	u64 u = v < 0 ? -(u64)v : (u64)v;

	do
		*--p = '0' + u % 10;
	while (u /= 10);
	if (v < 0)
		*--p = '-';
	print_n(p, buf + sizeof(buf) - p);
}

/* Lower case, no leading zeros: the caller prints the "0x". */
void print_hex(u64 v)
{
	char buf[16];
	char *p = buf + sizeof(buf);

	do
		*--p = "0123456789abcdef"[v & 15];
	while (v >>= 4);
	print_n(p, buf + sizeof(buf) - p);
}

long parse_decimal(const char *s, size_t n)
{
	long v = 0;

	if (n == 0 || n > 10)
		return -1;
	for (; n; n--, s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (*s - '0');
	}
	return v;
}
