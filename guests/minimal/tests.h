/*
 * tests.h: test=serial and test=hypercalls (tests.c).
 */
#ifndef MINIMAL_TESTS_H
#define MINIMAL_TESTS_H

/* Both return the number of failed checks. */
int test_serial(void);
int test_hypercalls(void);

#endif
