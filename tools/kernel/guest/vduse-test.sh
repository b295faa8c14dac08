# Helpers for scenarios, installed as /lib/vduse-test.sh in the guest (busybox sh).
# A scenario does ". /lib/vduse-test.sh" and reports with these; /init prints DONE.
#
#   vt_pass NAME                  -> "VDUSE-TEST: PASS NAME"
#   vt_fail NAME REASON...        -> "VDUSE-TEST: FAIL NAME REASON"
#   vt_check NAME CMD [ARG...]    -> PASS if CMD exits 0, else FAIL with its output tail
#   vt_info TEXT...               -> "VDUSE-TEST: INFO TEXT" (shown, not judged)
#   vt_kernel_api                 -> prints the VDUSE API version expected for this kernel
#
# Environment from /etc/vduse-test.env: VDUSE_TEST_KERNEL (6.12, 7.2, ...),
# VDUSE_TEST_SCENARIO, VDUSE_TEST_TIMEOUT.

vt_pass() { echo "VDUSE-TEST: PASS $1"; }

vt_fail() {
	_vt_n=$1
	shift
	# one line: newlines in the reason become " | "
	echo "VDUSE-TEST: FAIL $_vt_n $(echo "$*" | tr '\n' '|' | sed 's/|$//; s/|/ | /g')"
	# shellcheck disable=SC2034 # for scenarios: set once anything failed
	VT_FAILED=1
}

vt_info() { echo "VDUSE-TEST: INFO $*"; }

vt_check() {
	_vt_n=$1
	shift
	if _vt_out=$("$@" 2>&1); then
		vt_pass "$_vt_n"
	else
		_vt_rc=$?
		vt_fail "$_vt_n" "'$*' exited $_vt_rc: $(echo "$_vt_out" | tail -n 3)"
	fi
}

vt_kernel_api() {
	case $VDUSE_TEST_KERNEL in
	6.*) echo 0 ;;
	*) echo 1 ;;
	esac
}
