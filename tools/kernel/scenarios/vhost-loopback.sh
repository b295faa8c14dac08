#!/bin/sh
# kernels: 7.2 7.3
# needs: vduse-net
# timeout: 150
#
# vduse-net's own driver through a real /dev/vhost-vdpa-N: `vduse-net run` serves a
# 2-pair loopback device, it is bound to vhost_vdpa, and `vduse-net pktgen --vhost-vdpa`
# drives it. Checks:
#   - traffic with integrity checks: every frame back, lost 0, integrity_errors 0;
#   - ASIDs: where the device has a control queue (the patched module; stock 7.2/7.3 refuse
#     CTRL_VQ), its group moves to address space 1 ("vq group N -> address space 1");
#   - a data descriptor pointing at an IOVA mapped only in ASID 1 is refused by the device:
#     `pktgen --foreign-iova-check` maps a canary page only in ASID 1, posts a TX
#     descriptor to it on a data queue, and reports "foreign_iova":{...,"refused":true}
#     when the device did not complete it as a frame (nothing came back carrying the
#     canary); the device must also count a queue error and log it.
# ctrlvq-vhost.sh runs the same body (tools/kernel/guest/vhost-loopback.sh) with CTRLVQ=1, on the patched
# module: it also requires the control queue and VQ_PAIRS_SET through ASID 1.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

CTRLVQ=0
# shellcheck source=tools/kernel/guest/vhost-loopback.sh
. /lib/vhost-loopback.sh
