/*
 * virtio_net.h: test=net and test=net-rx-tiny (virtio_net.c).
 */
#ifndef MINIMAL_VIRTIO_NET_H
#define MINIMAL_VIRTIO_NET_H

/* The number of failed checks; ip= and peer= come from the command line. */
int test_net(void);

/* Receive buffers too small for the frames a sender floods the tap with (MRG_RXBUF). */
int test_net_rx_tiny(void);

#endif
