#!/bin/sh
# kernels: 7.3
# vduse: patched
# needs: vduse-net
# bundles: ethtool
# timeout: 300
#
# rss.sh with `--backend tap --iface vpt` instead of AF_PACKET on a veth: the device creates
# tap vpt (not persistent), which is moved into netns B (10.77.0.2) as the peer; the guest's
# netdev is in netns A (10.77.0.1). Everything else is rss.sh's (see there). This is the
# regression row for the deadlock the tapfix branch fixed: virtnet_probe holds RTNL across
# DRIVER_OK and its first control commands, and the poll threads used to issue TUNSETOFFLOAD
# (tun's ioctl takes RTNL) while the slow path waited for them; the device rolled back
# DRIVER_OK ("poll thread did not acknowledge within 2s") and the guest spun in
# virtnet_send_command_reply. The tap's own queue choice (its flow hash) spreads the flows
# over the pairs, so RSS has to move frames here too (rx_steered).
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

PORT=tap
# shellcheck source=tools/kernel/guest/rss.sh
. /lib/rss.sh
rss_main
