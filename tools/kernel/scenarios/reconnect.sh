#!/bin/sh
# kernels: 7.3
# vduse: patched
# needs: vduse-net
# timeout: 420
#
# Reconnect (issue 12) on a real kernel: two vduse-net devices wired together (--backend
# patch, control queue on with the patched module), each bound to virtio_vdpa, their
# interfaces in two namespaces. Before the crash the control queue sets vn1's MAC
# (MAC_ADDR_SET) and leaves promiscuous mode off (RX mode at link up). Then, with a ping
# stream and a 64 MiB TCP transfer (busybox nc) running, the daemon is killed with
# SIGKILL mid-transfer and started again with the same command: it must take both devices
# over from their state logs (/run/vduse-net/NAME.state), the transfer must complete with
# the same sha256, vn1 must still filter frames to a foreign MAC and accept its new MAC,
# and the kernel must log no WARNING. Measured: kill to traffic flowing again, pings lost,
# TCP segments retransmitted. Teardown: unbind, vdpa dev del, SIGINT; exit 0, devices
# destroyed, logs removed.
# Then, in the same boot (tools/kernel/guest/reconnect-vhost.sh): a loopback device bound
# to vhost_vdpa, driven by `vduse-net pktgen --vhost-vdpa --ride-through` (integrity check
# of every frame): kill -9 and restart mid-run, then an upgrade (SIGTERM with
# --keep-device, a copy of the binary at another path takes over) mid-run; pktgen must end
# with 0 integrity and 0 driver errors and frames after the pause, and the control queue's
# group must still be in ASID 1 after the restart (the new process's reattach line and
# stats socket). Measured: pauses seen by the driver, frames lost or seen twice.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh
# shellcheck source=tools/kernel/guest/reconnect.sh
. /lib/reconnect.sh
