#!/bin/sh
# kernels: 6.12 7.3
# vduse: patched
# needs: vduse-net
# bundles: ethtool
# timeout: 300
#
# RSS and hash reports with the kernel's own virtio-net (issue 11, item 5): a device with
# `--backend af-packet --iface vpr --queues 4 --features +rss,+hash_report` (the patched
# vduse.ko: RSS needs the control queue) bound to virtio_vdpa, its netdev in netns A
# (10.77.0.1); vpr is one end of a veth whose other end is in netns B (10.77.0.2). The port
# is AF_PACKET; rss-tap.sh is the same with a TAP port (the probe deadlock with a tap and
# the control queue, TUNSETOFFLOAD on the poll threads under the probe's RTNL). AF_PACKET's
# fanout spreads the flows over the pairs' sockets by its own hash, so RSS has to move most
# frames (rx_steered). Static neighbours and IPv6 off, so the only frames the guest receives
# are the test's: each flow is one TCP SYN from B to a closed port of A (busybox nc; its
# source port is B's one-port ephemeral range), answered by a RST.
#   - CREATE_DEV: what the kernel refused (the device retries without refused features and
#     logs them); the driver negotiated RSS (bit 60), HASH_REPORT (bit 57) and MQ;
#   - `ethtool -L combined 4`, then for each table: `ethtool -x` gives the Toeplitz key and
#     indirection table, the expected RX queue of every flow is computed here (Toeplitz over
#     src/dst address and ports, as the spec's TCPv4 hash type says; the awk code is checked
#     against the Microsoft test vector first), and the device's per-pair RX frames
#     (`vduse-net stats --prometheus`: what it put in the guest's RX queue N) must grow by
#     exactly those numbers; the guest's rx_packets, Tcp InSegs and OutRsts by one per flow
#     (since 6.10 `ethtool -S` has no per-queue packet counts: they moved to the netdev
#     queue-stats netlink API, for which the guest has no tool);
#   - tables: the driver's default (spread over 4), `ethtool -X weight 1 0 0 0` (all on
#     queue 0, rx_steered > 0), `ethtool -X equal 2` (queues 0 and 1 only), and `equal 4`
#     with `ethtool -N rx-flow-hash tcp4 sd` (addresses only: every flow on one queue);
#   - hash reports: negotiated, `ethtool -K rxhash on` accepted; the hash values themselves
#     are not observed in the guest (the 20-byte header is in use: every frame arrives).
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

PORT=af-packet
# shellcheck source=tools/kernel/guest/rss.sh
. /lib/rss.sh
rss_main
