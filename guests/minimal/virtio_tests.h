/*
 * virtio_tests.h: test=blk, test=blk-ro, test=rng and test=virtio-abuse
 * (virtio_tests.c).
 */
#ifndef MINIMAL_VIRTIO_TESTS_H
#define MINIMAL_VIRTIO_TESTS_H

#include "lib.h"

/* Each returns the number of failed checks. */
int test_blk(void);
int test_blk_ro(void);
int test_rng(void);
int test_virtio_abuse(void);
/* Queue enable on one vCPU racing resets on the other (--cpus 2). */
int test_virtio_race(void);

/* msix=off on the command line: test=blk proves INTx instead of MSI-X. */
extern bool virtio_msix_off;

#endif
