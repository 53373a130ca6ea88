/*
 * ci.h: the exit-code contract modes (ci.c).
 */
#ifndef MINIMAL_CI_H
#define MINIMAL_CI_H

#include "lib.h"

/* Runs the word w[0..n) if it is one of them; false if it is not. */
bool run_ci_word(const char *w, size_t n);

#endif
