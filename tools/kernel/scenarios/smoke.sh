#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs:
# timeout: 60
#
# Smoke test of the harness itself: the VDUSE control node exists, the vdpa tool sees
# the vduse management device, and the kernel says who it is.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

vt_info "uname: $(uname -a)"

if [ -c /dev/vduse/control ]; then
	vt_pass smoke.control-node
else
	vt_fail smoke.control-node "/dev/vduse/control missing or not a char device: $(ls -l /dev/vduse 2>&1)"
fi

if out=$(vdpa mgmtdev show 2>&1); then
	vt_info "vdpa mgmtdev show: $(echo "$out" | tr '\n' ' ')"
	if echo "$out" | grep -q '^vduse'; then
		vt_pass smoke.mgmtdev-vduse
	else
		vt_fail smoke.mgmtdev-vduse "vduse not listed: $out"
	fi
else
	vt_fail smoke.mgmtdev-vduse "vdpa mgmtdev show failed: $out"
fi

rel=$(uname -r)
case $rel in
"$VDUSE_TEST_KERNEL".*) vt_pass smoke.kernel-version ;;
*) vt_fail smoke.kernel-version "running $rel, expected $VDUSE_TEST_KERNEL.*" ;;
esac
echo "kernel version: $rel"
