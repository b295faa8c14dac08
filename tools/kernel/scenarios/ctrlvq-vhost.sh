#!/bin/sh
# kernels: 7.3
# vduse: patched
# needs: vduse-net
# timeout: 150
#
# vhost-loopback on the vduse.ko rebuilt without the CTRL_VQ refusal: the device has its
# control queue, pktgen's driver moves its group to ASID 1 and maps the control buffers only
# there, and with 2 pairs it sends VQ_PAIRS_SET 2 through that queue at probe (the device
# logs "control command MqPairsSet(2) -> PairsChanged(2)"). Traffic, the foreign-ASID
# descriptor and the rest as in vhost-loopback.sh (shared body: tools/kernel/guest/vhost-loopback.sh).
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

CTRLVQ=1
# shellcheck source=tools/kernel/guest/vhost-loopback.sh
. /lib/vhost-loopback.sh
