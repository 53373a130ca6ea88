/*
 * virtio_net.h: test=net (virtio_net.c).
 */
#ifndef MINIMAL_VIRTIO_NET_H
#define MINIMAL_VIRTIO_NET_H

/* The number of failed checks; ip= and peer= come from the command line. */
int test_net(void);

#endif
