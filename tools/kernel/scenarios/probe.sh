#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs: vduse-net
# timeout: 60
#
# `vduse-net probe --json` prints one JSON line with at least "api_version"; it must be 0
# on 6.12 (API 0 kernels) and 1 on 7.x.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

if ! out=$(/bin/vduse-net probe --json 2>/tmp/probe.err); then
	vt_fail probe.run "vduse-net probe --json failed: $(tail -n 3 /tmp/probe.err)"
	exit 0
fi
vt_info "probe: $out"
line=$(echo "$out" | grep '^{' | tail -n 1)
api=$(echo "$line" | sed -n 's/.*"api_version"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p')
want=$(vt_kernel_api)
if [ -z "$api" ]; then
	vt_fail probe.api-version "no api_version in: $out"
elif [ "$api" = "$want" ]; then
	vt_pass probe.api-version
else
	vt_fail probe.api-version "api_version $api, expected $want on $VDUSE_TEST_KERNEL"
fi
