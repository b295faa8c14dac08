#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs: vduse-net
# modules: -vduse
# timeout: 60
#
# A kernel without the vduse module loaded (the other vDPA modules are there): vduse-net
# must say "module vduse not loaded" and exit non-zero, for run and for probe.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

WANT="module vduse not loaded"

if [ -e /dev/vduse/control ] || grep -qw vduse /proc/modules; then
	vt_fail nomod.setup "vduse is loaded although the header left it out"
	exit 0
fi
vt_pass nomod.setup

for sub in run probe; do
	out=$(timeout 10 /bin/vduse-net "$sub" 2>&1)
	rc=$?
	vt_info "vduse-net $sub: exit $rc: $(echo "$out" | tail -n 2)"
	if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 143 ]; then
		vt_fail "nomod.$sub" "exit $rc: expected a quick non-zero exit"
	elif ! echo "$out" | grep -q "$WANT"; then
		vt_fail "nomod.$sub" "exit $rc, but no '$WANT' in: $(echo "$out" | tail -n 2)"
	else
		vt_pass "nomod.$sub"
	fi
done
