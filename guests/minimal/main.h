#ifndef MINIMAL_MAIN_H
#define MINIMAL_MAIN_H
#include "lib.h"

bool word_is(const char *w, size_t n, const char *s);
/* ci.c: the exit-code contract modes; true if the word was one of them. */
bool run_ci_word(const char *w, size_t n);
/* bench.c: the benchmark modes (bench=...); true if the word was one of them. */
bool run_bench_word(const char *w, size_t n);
/* bench_virtio.c: the blk-* and net-* modes */
bool run_bench_virtio_word(const char *w, size_t n);
#endif
