#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs: vduse-net
# timeout: 60
#
# vduse-net without privileges must stop at once with a clear message and a non-zero
# exit, and leave no device behind:
#  - as user nobody: /dev/vduse/control (root, 0600) cannot be opened (EACCES);
#  - as root inside a user namespace (unshare -r): the control node opens (uid 0 maps to
#    root), but CREATE_DEV of a net device needs CAP_NET_ADMIN in the initial namespace,
#    and the kernel answers EPERM.
# Both must say "needs root or CAP_NET_ADMIN".
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

WANT="needs root or CAP_NET_ADMIN"

# expect_denied NAME CMD...: CMD must exit non-zero within 10 s and print $WANT.
expect_denied() {
	_n=$1
	shift
	out=$(timeout 10 "$@" 2>&1)
	rc=$?
	vt_info "$_n: exit $rc: $(echo "$out" | tail -n 2)"
	if [ "$rc" = 0 ]; then
		vt_fail "$_n" "exited 0 without privileges"
	elif [ "$rc" = 124 ] || [ "$rc" = 143 ]; then
		vt_fail "$_n" "still running after 10 s (it should have failed at once)"
	elif ! echo "$out" | grep -q "$WANT"; then
		vt_fail "$_n" "exit $rc, but no '$WANT' in: $(echo "$out" | tail -n 2)"
	else
		vt_pass "$_n"
	fi
	if [ -e /dev/vduse/vu ]; then
		vt_fail "$_n.no-device" "/dev/vduse/vu exists after a refused run"
	fi
}

vt_info "control node: $(ls -l /dev/vduse/control)"
expect_denied unpriv.nobody-run su -s /bin/sh nobody -c '/bin/vduse-net run --name vu'
expect_denied unpriv.nobody-probe su -s /bin/sh nobody -c '/bin/vduse-net probe'
expect_denied unpriv.userns-run unshare -r /bin/vduse-net run --name vu
