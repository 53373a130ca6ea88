/*
 * lib.h: the little the minimal guest needs from a C library, plus port I/O,
 * console output and reading a number.
 */
#ifndef MINIMAL_LIB_H
#define MINIMAL_LIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

/* Our page tables map the first 4 GiB; nothing above it can be read. */
#define MAPPED_LIMIT	0x100000000ULL

/* Every port access is an exit to the VMM (~10 us here): count them. */
static inline void outb(u16 port, u8 v)
{
	asm volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outl(u16 port, u32 v)
{
	asm volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline void outw(u16 port, u16 v)
{
	asm volatile("outw %0, %1" : : "a"(v), "Nd"(port));
}

static inline u16 inw(u16 port)
{
	u16 v;
	asm volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u32 inl(u16 port)
{
	u32 v;
	asm volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u8 inb(u16 port)
{
	u8 v;
	asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* gcc may emit calls to the first three itself, so they must exist. */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);

/* Output, all of it to the serial port (serial.c). */
void print(const char *s);
void print_n(const char *s, size_t n);
void print_dec(long v);
void print_hex(u64 v);
/* The decimal number in s[0..n) (at most 10 digits), or -1 if it is not one. */
long parse_decimal(const char *s, size_t n);

#endif
