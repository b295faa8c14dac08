#!/bin/sh
# kernels: 6.12
# needs: vduse-net
# timeout: 420
#
# The reconnect scenario (see reconnect.sh) on 6.12: VDUSE API 0 (one address space, no vq
# groups), the stock module (no control queue, so no MAC / RX-mode checks): kill -9 of the
# daemon mid-transfer, restart, the 64 MiB transfer completes with the same sha256, no
# kernel WARNING.
# Then the vhost_vdpa phase (tools/kernel/guest/reconnect-vhost.sh): pktgen across a
# kill -9 and a --keep-device upgrade; one address space, so no ASID check.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh
# shellcheck source=tools/kernel/guest/reconnect.sh
. /lib/reconnect.sh
