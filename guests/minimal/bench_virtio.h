/*
 * bench_virtio.h: the benchmark modes bench=blk-*, bench=net-* (bench_virtio.c).
 */
#ifndef MINIMAL_BENCH_VIRTIO_H
#define MINIMAL_BENCH_VIRTIO_H

#include "lib.h"

/* Runs the word w[0..n) if it is one of them; false if it is not. */
bool run_bench_virtio_word(const char *w, size_t n);

#endif
