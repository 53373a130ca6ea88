/*
 * cmdline.h: the kernel command line: words separated by spaces.
 */
#ifndef MINIMAL_CMDLINE_H
#define MINIMAL_CMDLINE_H

#include "lib.h"

/*
 * Find the command line where the VMM left it (entry.S passes exactly one of
 * the two pointers, or neither), keep it for cmdline_value() and return it;
 * "" if there is none.
 */
const char *cmdline_init(u64 boot_params, u64 start_info);

/* Is the word w[0..n) exactly s? */
bool word_is(const char *w, size_t n, const char *s);

/* The value of the first word "name..." on the command line, or NULL. */
const char *cmdline_value(const char *name);

#endif
