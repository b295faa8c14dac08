#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs: vduse-net
# timeout: 180
#
# Packed virtqueues (VIRTIO_F_RING_PACKED) on a real kernel, with two independent drivers:
#   1. The kernel's own virtio-net through virtio_vdpa: `vduse-net run --devices 2 --backend
#      patch --ring packed`, both ends bound to virtio_vdpa; the kernel's virtio_ring must
#      have negotiated bit 34 (its sysfs `features` string), the device log names
#      RING_PACKED among the accepted features; the interfaces go into two namespaces, ping
#      both ways and a 1 MiB transfer (busybox nc) with a checksum compare.
#   2. vduse-net's own driver through vhost_vdpa: a loopback device with `--features +ring_packed`,
#      `pktgen --vhost-vdpa --ring packed`: every frame back (lost 0, integrity_errors 0),
#      "ring":"packed" in the report; on 7.3 (VDUSE_F_SUSPEND) also `--suspend-check`:
#      after SUSPEND, VHOST_GET_VRING_BASE (GET_VQ_STATE, packed form: avail and used slots
#      with wrap counters) equals the position the driver saw, in both halves.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

T=packed
LOG=/tmp/packed.log
IP0=10.98.0.1 IP1=10.98.0.2

step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
ip() { /sbin/ip "$@"; }
json_num() { echo "$1" | sed -n "s/.*\"$2\":\([0-9][0-9]*\).*/\1/p" | head -n 1; }

# --- 1. the kernel's virtio-net on packed rings --------------------------------------------
step "patch pair with --ring packed"
RUST_LOG=info /bin/vduse-net run --devices 2 --backend patch --name vp --ring packed >"$LOG" 2>&1 &
VP=$!
if ! vt_wait 20 grep -q 'device vp1 ready' "$LOG"; then
	vt_fail $T.start "no 'device vp1 ready' within 20 s: $(vt_log_tail)"
	vt_stop "$VP" INT 5
	exit 0
fi
vt_pass $T.start
for d in vp0 vp1; do
	vt_check $T.vdpa-add-$d vdpa dev add name "$d" mgmtdev vduse
	vt_check $T.bind-$d sh -c "echo $d > /sys/bus/vdpa/drivers/virtio_vdpa/bind"
done
if ! vt_wait 10 vt_vdpa_netdev vp0 || ! vt_wait 10 vt_vdpa_netdev vp1; then
	vt_fail $T.netdev "no net interface for vp0/vp1 under virtio_vdpa: $(vt_log_tail)"
	vt_stop "$VP" INT 5
	exit 0
fi
IF0=$(vt_vdpa_netdev vp0)
IF1=$(vt_vdpa_netdev vp1)
# The driver's features as virtio core shows them: one character per bit, bit 0 first.
feat_ok=1
for d in vp0 vp1; do
	f=$(cat /sys/bus/vdpa/devices/$d/virtio*/features 2>/dev/null)
	vt_info "$d virtio features $f"
	bit34=$(echo "$f" | cut -c35)
	[ "$bit34" = 1 ] || {
		vt_fail $T.kernel-negotiated "$d: the kernel's virtio driver did not take RING_PACKED (features $f)"
		feat_ok=0
	}
done
[ $feat_ok = 1 ] && vt_pass $T.kernel-negotiated
if grep -q "driver accepted features .*RING_PACKED" "$LOG"; then
	vt_pass $T.device-negotiated
	vt_info "$(grep 'driver accepted features' "$LOG" | head -n 1)"
else
	vt_fail $T.device-negotiated "the device log has no RING_PACKED in the accepted features: $(grep 'accepted' "$LOG" | head -n 2)"
fi

setup_ns() {
	ip netns add "$1" 2>&1 &&
		ip link set "$2" netns "$1" 2>&1 &&
		ip -n "$1" link set lo up 2>&1 &&
		ip -n "$1" addr add "$3/24" dev "$2" 2>&1 &&
		ip -n "$1" link set "$2" up 2>&1
}
if out=$(setup_ns pk0 "$IF0" "$IP0") && out=$(setup_ns pk1 "$IF1" "$IP1"); then
	step ping
	if out=$(ip netns exec pk0 ping -c 5 -i 0.2 -w 20 "$IP1" 2>&1); then
		vt_pass $T.ping-0to1
	else
		vt_fail $T.ping-0to1 "$(echo "$out" | tail -n 2) | $(vt_log_tail)"
	fi
	if out=$(ip netns exec pk1 ping -c 5 -i 0.2 -w 20 "$IP0" 2>&1); then
		vt_pass $T.ping-1to0
	else
		vt_fail $T.ping-1to0 "$(echo "$out" | tail -n 2) | $(vt_log_tail)"
	fi
	step transfer
	dd if=/dev/urandom of=/tmp/blob bs=64k count=16 2>/dev/null
	mkfifo /tmp/nc.hold
	ip netns exec pk1 nc -l -p 5001 >/tmp/recv </tmp/nc.hold &
	NC=$!
	exec 3>/tmp/nc.hold
	if ! vt_wait 10 sh -c "/sbin/ip netns exec pk1 netstat -ltn | grep -q ':5001 '"; then
		vt_fail $T.transfer "listener on $IP1:5001 did not come up"
	elif ! out=$(ip netns exec pk0 timeout 30 nc "$IP1" 5001 </tmp/blob 2>&1); then
		vt_fail $T.transfer "sender failed: $out | $(vt_log_tail)"
	fi
	vt_reap "$NC" 30 || vt_fail $T.transfer "the listener did not finish within 30 s"
	exec 3>&-
	want=$(sha256sum </tmp/blob | cut -d' ' -f1)
	got=$(sha256sum </tmp/recv | cut -d' ' -f1)
	vt_info "transfer: sent 1048576 bytes sha256 $want; received $(wc -c </tmp/recv) bytes sha256 $got"
	if [ "$want" = "$got" ]; then vt_pass $T.transfer; else vt_fail $T.transfer "checksum mismatch"; fi
else
	vt_fail $T.netns "$out"
fi
for d in vp0 vp1; do
	echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/unbind
	vdpa dev del "$d"
done
ip netns del pk0 2>/dev/null
ip netns del pk1 2>/dev/null
if vt_stop "$VP" INT 10 && [ "$VT_RC" = 0 ]; then
	vt_pass $T.patch-stop
else
	vt_fail $T.patch-stop "vduse-net (patch) exited ${VT_RC:-?}: $(vt_log_tail)"
fi
st=$(grep '^vduse-net: vp0: {' "$LOG")
vt_info "vp0 stats: $(echo "$st" | cut -c1-400)"
case $st in *'"queue_errors":'[1-9]* | *'"failed_replies":'[1-9]*) vt_fail $T.patch-errors "$st" ;; esac
grep ' ERROR \| WARN ' "$LOG" | grep -v 'refused the control queue' | sed 's/^/    /'

# --- 2. vduse-net's own driver on packed rings through vhost_vdpa ---------------------------
step "loopback with --features +ring_packed, vhost_vdpa"
LOG=/tmp/packed-vhost.log
RUST_LOG=info /bin/vduse-net run --name vl --queues 2 --features +ring_packed >"$LOG" 2>&1 &
VL=$!
if ! vt_wait_log 15 "device vl ready"; then
	vt_fail $T.vhost-start "vduse-net run did not come up: $(vt_log_tail)"
	vt_stop "$VL" INT 5
	exit 0
fi
vt_check $T.vhost-add vdpa dev add name vl mgmtdev vduse
vt_check $T.vhost-bind sh -c "echo vl > /sys/bus/vdpa/drivers/vhost_vdpa/bind"
node=""
for i in $(seq 50); do
	for n in /sys/bus/vdpa/devices/vl/vhost-vdpa-*; do [ -e "$n" ] && node=${n##*/}; done
	[ -n "$node" ] && [ -c "/dev/$node" ] && break
	sleep 0.1
done
if [ -z "$node" ]; then
	vt_fail $T.vhost-node "no vhost-vdpa node for vl"
else
	check=""
	[ "$VDUSE_TEST_KERNEL" = 7.3 ] && check=--suspend-check
	/bin/vduse-net pktgen --vhost-vdpa "/dev/$node" --ring packed --queues 2 --frames 5000 --duration 60 \
		$check --json >/tmp/pktgen.out 2>/tmp/pktgen.err
	rc=$?
	out=$(grep '^{' /tmp/pktgen.out | tail -n 1)
	vt_info "pktgen exit $rc: $(echo "$out" | cut -c1-300)"
	tx=$(json_num "$out" tx_frames)
	rx=$(json_num "$out" rx_frames)
	lost=$(json_num "$out" lost)
	bad=$(json_num "$out" integrity_errors)
	if [ -n "$tx" ] && [ "$tx" -ge 5000 ] && [ "$rx" = "$tx" ] && [ "$lost" = 0 ] && [ "$bad" = 0 ] &&
		echo "$out" | grep -q '"ring":"packed"'; then
		vt_pass $T.vhost-traffic
	else
		vt_fail $T.vhost-traffic "rc $rc tx $tx rx $rx lost $lost integrity_errors $bad, ring packed? $(tail -n 2 /tmp/pktgen.err)"
	fi
	if [ -n "$check" ]; then
		vt_info "suspend: $(echo "$out" | grep -o '"suspend":{.*}' | head -c 600)"
		if echo "$out" | grep -q '"suspend":{.*"match":true'; then
			vt_pass $T.vhost-suspend-vq-state
		else
			vt_fail $T.vhost-suspend-vq-state "GET_VRING_BASE after SUSPEND differs from the driver's view"
		fi
	fi
	echo vl >/sys/bus/vdpa/drivers/vhost_vdpa/unbind
fi
vdpa dev del vl
if vt_stop "$VL" INT 10 && [ "$VT_RC" = 0 ]; then
	vt_pass $T.vhost-stop
else
	vt_fail $T.vhost-stop "vduse-net (loopback) exited ${VT_RC:-?}: $(vt_log_tail)"
fi
st=$(grep '^vduse-net: vl: {' "$LOG")
case $st in *'"queue_errors":'[1-9]* | *'"failed_replies":'[1-9]*) vt_fail $T.vhost-errors "$(echo "$st" | cut -c1-400)" ;; esac
grep ' ERROR \| WARN ' "$LOG" | grep -v 'refused the control queue' | sed 's/^/    /'
step end
