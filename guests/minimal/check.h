/*
 * check.h: the result lines of the test= modes, which the host tests look for.
 */
#ifndef MINIMAL_CHECK_H
#define MINIMAL_CHECK_H

#include "lib.h"

/*
 * One test result line, "PASS <name>" or "FAIL <name>: <why><value>" (the value
 * in hex if 'why' ends in "0x", else in decimal); failures are counted in
 * check_failures, which each test= mode resets and returns.
 */
void check(const char *name, bool ok, const char *why, long value);
extern int check_failures;

#endif
