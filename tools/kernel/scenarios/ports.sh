#!/bin/sh
# kernels: 6.12 7.3
# needs: vduse-net
# timeout: 420
#
# Real networks on a real kernel, one boot for both host ports:
#   TAP: `vduse-net run --backend tap --iface tapb` (the tap is created by vduse-net),
#        the device bound to virtio_vdpa with its netdev in netns A (10.77.0.1), the tap
#        moved into netns B (10.77.0.2) after the device started. Ping both ways, 10 MiB
#        A -> B over TCP (busybox nc) with equal sha256, and the link state: the tap set
#        down in B turns the carrier of A's netdev off (VIRTIO_NET_S_LINK_UP cleared and a
#        config interrupt), up again turns it on.
#   AF_PACKET: a veth vpa (init netns) <-> vpb (netns B2, 10.78.0.2);
#        `vduse-net run --backend af-packet --iface vpa`, the device's netdev in netns A2
#        (10.78.0.1). Ping both ways and 10 MiB A2 -> B2 with equal sha256 (B2's TCP
#        acknowledgements come with partial checksums over the veth: the port finishes
#        them).
# Then unbind, vdpa dev del, SIGINT: both processes exit 0.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

ip() { /sbin/ip "$@"; }
step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
MIB=10

# start NAME LOG ARGS...: vduse-net run in the background; sets PID
# (names with a prefix: the guest library's helpers use _n, _l and friends)
start() {
	ps_name=$1 ps_log=$2
	shift 2
	RUST_LOG="warn,vduse_net::dataplane::slowpath=debug,vduse_net::backend=info" \
		/bin/vduse-net run --name "$ps_name" "$@" >"$ps_log" 2>&1 &
	PID=$!
	LOG=$ps_log
	if ! vt_wait_log 20 "device $ps_name ready"; then
		vt_fail "ports.$ps_name.start" "no 'device $ps_name ready' within 20 s: $(vt_log_tail)"
		return 1
	fi
	vt_info "$ps_name: $(grep "device $ps_name ready" "$ps_log")"
	vt_pass "ports.$ps_name.start"
}

# bind NAME: vdpa dev add + virtio_vdpa; sets IF
bind() {
	if ! out=$(vdpa dev add name "$1" mgmtdev vduse 2>&1); then
		vt_fail "ports.$1.bind" "vdpa dev add: $out"
		return 1
	fi
	if ! out=$( (echo "$1" >/sys/bus/vdpa/drivers/virtio_vdpa/bind) 2>&1); then
		vt_fail "ports.$1.bind" "bind: $out"
		return 1
	fi
	if ! vt_wait 10 vt_vdpa_netdev "$1"; then
		vt_fail "ports.$1.bind" "no netdev under /sys/bus/vdpa/devices/$1"
		return 1
	fi
	IF=$(vt_vdpa_netdev "$1")
	vt_pass "ports.$1.bind"
}

# ns_if NS IF ADDR: move IF into NS with ADDR/24, up
ns_if() {
	ip netns add "$1" 2>/dev/null
	ip -n "$1" link set lo up &&
		ip link set "$2" netns "$1" &&
		ip -n "$1" addr add "$3/24" dev "$2" &&
		ip -n "$1" link set "$2" up
}

carrier() { ip netns exec "$1" cat "/sys/class/net/$2/carrier" 2>/dev/null; }

# wait_carrier NS IF WANT: up to 10 s for IF's carrier to be WANT (one netns exec: each
# costs a second or two under TCG).
wait_carrier() {
	# shellcheck disable=SC2016 # expanded by the inner shell
	ip netns exec "$1" sh -c 'n=0; while [ $n -lt 100 ]; do [ "$(cat /sys/class/net/$0/carrier 2>/dev/null)" = "$1" ] && exit 0; sleep 0.1; n=$((n + 1)); done; exit 1' "$2" "$3"
}

# dump LOG: the device log on the console (after a failure)
dump() { tail -n 60 "$1" | while read -r l; do vt_info "log: $l"; done; }

# ping_both NAME NSA ADDRA NSB ADDRB
ping_both() {
	if out=$(ip netns exec "$2" ping -c 3 -i 0.2 -w 30 "$5" 2>&1); then
		vt_info "$1 ping a->b: $(echo "$out" | grep -E 'round-trip' | tr '\n' ' ')"
		vt_pass "ports.$1.ping-a-to-b"
	else
		vt_fail "ports.$1.ping-a-to-b" "$(echo "$out" | tail -n 2) | $(vt_log_tail)"
	fi
	if out=$(ip netns exec "$4" ping -c 3 -i 0.2 -w 30 "$3" 2>&1); then
		vt_info "$1 ping b->a: $(echo "$out" | grep -E 'round-trip' | tr '\n' ' ')"
		vt_pass "ports.$1.ping-b-to-a"
	else
		vt_fail "ports.$1.ping-b-to-a" "$(echo "$out" | tail -n 2) | $(vt_log_tail)"
	fi
}

# transfer NAME FROM_NS TO_NS TO_ADDR PORT: $MIB MiB over TCP, sha256 compared
transfer() {
	dd if=/dev/urandom of=/tmp/blob bs=1M count=$MIB 2>/dev/null
	rm -f /tmp/recv /tmp/nc.hold
	mkfifo /tmp/nc.hold
	ip netns exec "$3" nc -l -p "$5" >/tmp/recv </tmp/nc.hold &
	ps_nc=$!
	exec 3>/tmp/nc.hold
	ps_t0=$(cut -d' ' -f1 /proc/uptime)
	if ! vt_wait 10 sh -c "/sbin/ip netns exec $3 netstat -ltn | grep -q ':$5 '"; then
		vt_fail "ports.$1.transfer" "listener on $4:$5 did not come up"
	elif ! out=$(ip netns exec "$2" timeout 150 nc "$4" "$5" </tmp/blob 2>&1); then
		vt_fail "ports.$1.transfer" "sender failed: $out | $(vt_log_tail)"
	fi
	vt_reap "$ps_nc" 60 || vt_fail "ports.$1.transfer" "the listener did not finish within 60 s"
	exec 3>&-
	ps_t1=$(cut -d' ' -f1 /proc/uptime)
	want=$(sha256sum </tmp/blob | cut -d' ' -f1)
	got=$(sha256sum </tmp/recv | cut -d' ' -f1)
	size=$(wc -c </tmp/recv)
	vt_info "$1 transfer: $size of $((MIB * 1048576)) bytes in $(awk -v a="$ps_t0" -v b="$ps_t1" 'BEGIN { printf "%.1f", b - a }') s; sha256 sent $want received $got"
	if [ "$want" = "$got" ]; then
		vt_pass "ports.$1.transfer"
	else
		vt_fail "ports.$1.transfer" "checksum mismatch: received $size bytes"
	fi
	rm -f /tmp/blob /tmp/recv
}

# stop NAME PID LOG: unbind, vdpa dev del, SIGINT; exit 0 and the device node gone
stop() {
	( echo "$1" >/sys/bus/vdpa/drivers/virtio_vdpa/unbind ) 2>/dev/null
	vdpa dev del "$1" 2>/dev/null
	if vt_stop "$2" INT 10 && [ "$VT_RC" = 0 ]; then
		vt_pass "ports.$1.exit"
	else
		vt_fail "ports.$1.exit" "vduse-net exit ${VT_RC:-?} after SIGINT: $(tail -n 3 "$3" | tr '\n' '|')"
	fi
	if [ -e "/dev/vduse/$1" ]; then
		vt_fail "ports.$1.destroyed" "/dev/vduse/$1 left behind"
	fi
	grep "^vduse-net: $1: {" "$3" | while read -r l; do vt_info "$l"; done
	if grep -qE 'panicked|queue stopped' "$3"; then
		vt_fail "ports.$1.log" "$(grep -E 'panicked|queue stopped' "$3" | head -n 3 | tr '\n' '|')"
	fi
}

# ---------------------------------------------------------------- TAP
step tap
if start vt /tmp/vt.log --backend tap --iface tapb && bind vt; then
	TAPIF=$IF
	if out=$(ns_if A "$TAPIF" 10.77.0.1 2>&1) &&
		out=$(ip netns add B && ip -n B link set lo up && ip link set tapb netns B &&
			ip -n B addr add 10.77.0.2/24 dev tapb && ip -n B link set tapb up 2>&1); then
		vt_pass ports.vt.netns
		if wait_carrier A "$TAPIF" 1; then
			vt_pass ports.vt.link-up
		else
			vt_fail ports.vt.link-up "carrier of $TAPIF in A is $(carrier A "$TAPIF") with tapb up in B: $(vt_log_tail)"
			dump /tmp/vt.log
		fi
		step tap ping
		ping_both vt A 10.77.0.1 B 10.77.0.2
		step tap transfer
		transfer vt A B 10.77.0.2 5001
		step tap link state
		ip -n B link set tapb down
		if wait_carrier A "$TAPIF" 0; then
			vt_pass ports.vt.link-follows-down
		else
			vt_fail ports.vt.link-follows-down "carrier of $TAPIF still $(carrier A "$TAPIF") after tapb down: $(vt_log_tail)"
		fi
		ip -n B link set tapb up
		if wait_carrier A "$TAPIF" 1 &&
			ip netns exec A ping -c 1 -w 20 10.77.0.2 >/dev/null 2>&1; then
			vt_pass ports.vt.link-follows-up
		else
			vt_fail ports.vt.link-follows-up "carrier $(carrier A "$TAPIF") / no ping after tapb up: $(vt_log_tail)"
		fi
	else
		vt_fail ports.vt.netns "$out"
	fi
	ip netns del A 2>/dev/null
	ip netns del B 2>/dev/null
fi
[ -n "${PID:-}" ] && stop vt "$PID" /tmp/vt.log
PID=

# ---------------------------------------------------------------- AF_PACKET
step af-packet
if ! out=$(ip netns add B2 && ip -n B2 link set lo up && ip link add vpa type veth peer name vpb netns B2 &&
	ip link set vpa up && ip -n B2 addr add 10.78.0.2/24 dev vpb && ip -n B2 link set vpb up 2>&1); then
	vt_fail ports.vp.veth "$out"
elif start vp /tmp/vp.log --backend af-packet --iface vpa && bind vp; then
	if out=$(ns_if A2 "$IF" 10.78.0.1 2>&1); then
		vt_pass ports.vp.netns
		step af-packet ping
		ping_both vp A2 10.78.0.1 B2 10.78.0.2
		step af-packet transfer
		transfer vp A2 B2 10.78.0.2 5002
	else
		vt_fail ports.vp.netns "$out"
	fi
	ip netns del A2 2>/dev/null
fi
[ -n "${PID:-}" ] && stop vp "$PID" /tmp/vp.log
ip netns del B2 2>/dev/null
step end
