# Helpers for scenarios, installed as /lib/vduse-test.sh in the guest (busybox sh).
# shellcheck shell=sh
# A scenario does ". /lib/vduse-test.sh" and reports with these; /init prints DONE.
#
#   vt_pass NAME                  -> "VDUSE-TEST: PASS NAME"
#   vt_fail NAME REASON...        -> "VDUSE-TEST: FAIL NAME REASON"
#   vt_check NAME CMD [ARG...]    -> PASS if CMD exits 0, else FAIL with its output tail
#   vt_info TEXT...               -> "VDUSE-TEST: INFO TEXT" (shown, not judged)
#   vt_kernel_api                 -> prints the VDUSE API version expected for this kernel
#   vt_wait SECS CMD...           -> poll CMD every 0.1 s until it succeeds (1: timed out)
#   vt_reap PID SECS              -> wait for a background child, reap it: VT_RC = status
#   vt_stop PID SIG SECS          -> signal a background child, then vt_reap it
#   vt_vdpa_netdev DEV            -> interface name of vdpa device DEV under virtio_vdpa
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

# vt_wait SECS CMD [ARG...]: run CMD (quietly) every 0.1 s until it succeeds; returns 1
# if it still fails after SECS seconds.
vt_wait() {
	_vt_left=$(($1 * 10))
	shift
	while ! "$@" >/dev/null 2>&1; do
		[ "$_vt_left" -gt 0 ] || return 1
		_vt_left=$((_vt_left - 1))
		sleep 0.1
	done
}

# vt_running PID: true while PID exists and is not a zombie.
vt_running() {
	_vt_st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
	[ -n "$_vt_st" ] && [ "$_vt_st" != Z ]
}

# vt_reap PID SECS: wait up to SECS for a background child of this shell to exit, then
# reap it; VT_RC is its exit status. Returns 1 if it had to be killed (SIGKILL).
vt_reap() {
	_vt_left=$(($2 * 10))
	while vt_running "$1" && [ "$_vt_left" -gt 0 ]; do
		_vt_left=$((_vt_left - 1))
		sleep 0.1
	done
	_vt_late=0
	if vt_running "$1"; then
		kill -KILL "$1" 2>/dev/null
		_vt_late=1
	fi
	wait "$1"
	# shellcheck disable=SC2034 # read by scenarios
	VT_RC=$?
	[ "$_vt_late" = 0 ]
}

# vt_stop PID SIGNAL SECS: signal a background child, then vt_reap it.
vt_stop() {
	kill -"$2" "$1" 2>/dev/null
	vt_reap "$1" "$3"
}

# vt_vdpa_netdev DEV: the network interface of vdpa device DEV bound to virtio_vdpa.
vt_vdpa_netdev() {
	for _vt_d in /sys/bus/vdpa/devices/"$1"/virtio*/net/*; do
		[ -e "$_vt_d" ] && {
			echo "${_vt_d##*/}"
			return 0
		}
	done
	return 1
}

# vt_wait_log SECS PATTERN: wait until the device log "$LOG" has a line matching PATTERN.
vt_wait_log() {
	_n=$(($1 * 10))
	while [ "$_n" -gt 0 ]; do
		grep -q "$2" "$LOG" 2>/dev/null && return 0
		sleep 0.1
		_n=$((_n - 1))
	done
	return 1
}

# vt_log_tail: the last lines of the device log "$LOG", on one line (for FAIL reasons).
vt_log_tail() { tail -n 5 "$LOG" | tr '\n' '|'; }
