/*
 * virtio_fs.h: test=virtio-fs (virtio_fs.c), a FUSE client over virtio-fs.
 */
#ifndef MINIMAL_VIRTIO_FS_H
#define MINIMAL_VIRTIO_FS_H

#include "lib.h"

/*
 * The number of failed checks.  What it does besides FUSE_INIT comes from
 * the words fs-file=NAME, fs-create=NAME, fs-ro and fs-hold=SECONDS.
 */
int test_virtio_fs(void);

/* Is w[0..n) one of those words (which only test=virtio-fs reads)? */
bool virtio_fs_word(const char *w, size_t n);

#endif
