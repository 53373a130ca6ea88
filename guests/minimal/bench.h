/*
 * bench.h: the benchmark modes bench=pio, bench=hypercall, bench=serial (bench.c).
 */
#ifndef MINIMAL_BENCH_H
#define MINIMAL_BENCH_H

#include "lib.h"

/* Runs the word w[0..n) if it is one of them; false if it is not. */
bool run_bench_word(const char *w, size_t n);

#endif
