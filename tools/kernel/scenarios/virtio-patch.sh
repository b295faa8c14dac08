#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs: vduse-net
# timeout: 120
#
# Two vduse-net devices wired together (--backend patch), each bound to virtio_vdpa: the
# kernel's own virtio-net driver on both ends. Their interfaces go into two network
# namespaces; ping both ways and a 1 MiB transfer (busybox nc) with a checksum compare.
# Also what the device negotiated: the run log's "API vN" (0 on 6.12, 1 on 7.x), the
# control queue refused by stock kernels, and the vq layout in `vdpa dev show`. Then the
# teardown: unbind, `vdpa dev del`, SIGINT; vduse-net must exit 0 and its
# /dev/vduse/vn0 and vn1 must be gone (the devices were destroyed).
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

LOG=/tmp/vn.log
API=$(vt_kernel_api)
IP0=10.99.0.1 IP1=10.99.0.2

log_tail() { tail -n 5 "$LOG" 2>/dev/null; }
# guest uptime at each step (where the seconds go under TCG)
step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
# iproute2's ip (netns); busybox sh would run its own ip applet for a bare "ip"
ip() { /sbin/ip "$@"; }

# --- start: two devices, two queue pairs each, patched together
step start
/bin/vduse-net run --devices 2 --backend patch --name vn --queues 2 >"$LOG" 2>&1 &
VN=$!
if ! vt_wait 20 grep -q 'device vn1 ready' "$LOG"; then
	vt_fail patch.start "no 'device vn1 ready' within 20 s: $(log_tail)"
	vt_stop "$VN" INT 5
	exit 0
fi
vt_pass patch.start
r0=$(grep 'device vn0 ready' "$LOG")
r1=$(grep 'device vn1 ready' "$LOG")
vt_info "vn0: $r0"
vt_info "vn1: $r1"

# --- what was negotiated (the log line; vhost-vdpa's GET_VRING_GROUP is not reachable
# under virtio_vdpa, so the groups are checked against the log and vdpa dev show)
case $r0$r1 in
*"API v$API, "*"API v$API, "*) vt_pass patch.api-version ;;
*) vt_fail patch.api-version "expected 'API v$API' on $VDUSE_TEST_KERNEL for both devices: $r0 | $r1" ;;
esac
layout_ok=1
for r in "$r0" "$r1"; do
	case $r in *"+ control queue"*)
		# a stock kernel refuses VIRTIO_NET_F_CTRL_VQ at CREATE_DEV (features_is_valid)
		vt_fail patch.no-ctrl-vq "control queue accepted by a stock kernel: $r"
		layout_ok=0
		continue
		;;
	esac
	case $r in *"kernel refused: "*CTRL_VQ*) ;; *)
		vt_fail patch.no-ctrl-vq "the log does not name CTRL_VQ as refused: $r"
		layout_ok=0
		;;
	esac
	# 2 pairs without a control queue = 4 vqs; API 1: one group per pair and 2 address
	# spaces; API 0: no groups (the kernel uses one group, one address space).
	if [ "$API" = 1 ]; then want="2 pair(s), 2 groups, 2 address spaces"; else want="2 pair(s), 0 groups, 1 address spaces"; fi
	case $r in *"$want"*) ;; *)
		vt_fail patch.layout "expected '$want': $r"
		layout_ok=0
		;;
	esac
done
[ "$layout_ok" = 1 ] && vt_pass patch.no-ctrl-vq && vt_pass patch.layout

# --- vdpa dev add, and what vdpa reports about the devices
step vdpa dev add
for d in vn0 vn1; do
	if ! out=$(vdpa dev add name "$d" mgmtdev vduse 2>&1); then
		vt_fail patch.vdpa-add "vdpa dev add $d: $out | $(log_tail)"
		vt_stop "$VN" INT 5
		exit 0
	fi
done
vt_pass patch.vdpa-add
show_ok=1
for d in vn0 vn1; do
	s=$(vdpa dev show "$d" 2>&1)
	vt_info "vdpa dev show $d: $(echo "$s" | tr -s ' \n' ' ')"
	case $s in *"max_vqs 4 "*) ;; *)
		vt_fail patch.vdpa-show "$d: expected max_vqs 4 (2 pairs, no control queue): $s"
		show_ok=0
		;;
	esac
	# the device's default maximum queue size (what QEMU programs), which virtio_vdpa
	# also uses as its ring size
	case $s in *"max_vq_size 1024"*) ;; *)
		vt_fail patch.vdpa-show "$d: expected max_vq_size 1024: $s"
		show_ok=0
		;;
	esac
done
c=$(vdpa dev config show vn1 2>&1)
vt_info "vdpa dev config show vn1: $(echo "$c" | tr -s ' \n' ' ')"
case $c in *"mac 02:00:00:00:00:02 "*"mtu 1500"*) ;; *)
	vt_fail patch.vdpa-show "vn1 config: expected mac 02:00:00:00:00:02 and mtu 1500: $c"
	show_ok=0
	;;
esac
[ "$show_ok" = 1 ] && vt_pass patch.vdpa-show

# --- bind to virtio_vdpa: the kernel's virtio-net driver probes each device
step bind
mem_avail() { sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
avail0=$(mem_avail)
for d in vn0 vn1; do
	if ! out=$( (echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/bind) 2>&1); then
		vt_fail patch.bind "bind $d to virtio_vdpa: $out | $(log_tail)"
		vt_stop "$VN" INT 5
		exit 0
	fi
done
if ! vt_wait 10 vt_vdpa_netdev vn0 || ! vt_wait 10 vt_vdpa_netdev vn1; then
	vt_fail patch.bind "no net interface under /sys/bus/vdpa/devices/vn*/virtio*/net: $(ls -d /sys/bus/vdpa/devices/vn*/virtio* 2>&1) | $(log_tail)"
	vt_stop "$VN" INT 5
	exit 0
fi
IF0=$(vt_vdpa_netdev vn0)
IF1=$(vt_vdpa_netdev vn1)
vt_info "vn0 -> $IF0 ($(cat /sys/class/net/"$IF0"/address)), vn1 -> $IF1 ($(cat /sys/class/net/"$IF1"/address))"
vt_pass patch.bind

# --- one namespace per end
# setup_ns NS IF ADDR
setup_ns() {
	ip netns add "$1" 2>&1 &&
		ip link set "$2" netns "$1" 2>&1 &&
		ip -n "$1" link set lo up 2>&1 &&
		ip -n "$1" addr add "$3/24" dev "$2" 2>&1 &&
		ip -n "$1" link set "$2" up 2>&1
}
ns_ok=1
if ! out=$(setup_ns ns0 "$IF0" "$IP0"); then
	vt_fail patch.netns "ns0 ($IF0, $IP0): $out"
	ns_ok=0
elif ! out=$(setup_ns ns1 "$IF1" "$IP1"); then
	vt_fail patch.netns "ns1 ($IF1, $IP1): $out"
	ns_ok=0
fi
if [ "$ns_ok" = 1 ]; then
	vt_pass patch.netns
	# what two virtio_vdpa netdevs with 2 pairs of 1024-entry rings cost the guest, RX rings
	# filled (virtio-net fills them when the link goes up)
	avail1=$(mem_avail)
	vt_info "MemAvailable: $avail0 kB before bind, $avail1 kB with both interfaces up (-$((avail0 - avail1)) kB)"

	# --- ping both ways (the first one also resolves ARP through the patch)
	step ping
	if out=$(ip netns exec ns0 ping -c 3 -i 0.2 -w 20 "$IP1" 2>&1); then
		vt_info "ping 0to1: $(echo "$out" | grep -E 'bytes from|round-trip' | tr '\n' ';')"
		vt_pass patch.ping-0to1
	else
		vt_fail patch.ping-0to1 "$(echo "$out" | tail -n 2) | $(log_tail)"
	fi
	if out=$(ip netns exec ns1 ping -c 3 -i 0.2 -w 20 "$IP0" 2>&1); then
		vt_info "ping 1to0: $(echo "$out" | grep -E 'bytes from|round-trip' | tr '\n' ';')"
		vt_pass patch.ping-1to0
	else
		vt_fail patch.ping-1to0 "$(echo "$out" | tail -n 2) | $(log_tail)"
	fi

	# --- 1 MiB ns0 -> ns1 with busybox nc; the listener's stdin is a FIFO held open
	# here, because busybox nc quits at EOF on its stdin.
	step transfer
	dd if=/dev/urandom of=/tmp/blob bs=64k count=16 2>/dev/null
	rx0=$(ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/rx_bytes)
	mkfifo /tmp/nc.hold
	ip netns exec ns1 nc -l -p 5001 >/tmp/recv </tmp/nc.hold &
	NC=$!
	exec 3>/tmp/nc.hold
	if ! vt_wait 10 sh -c "/sbin/ip netns exec ns1 netstat -ltn | grep -q ':5001 '"; then
		vt_fail patch.transfer "listener on $IP1:5001 did not come up"
	elif ! out=$(ip netns exec ns0 timeout 30 nc "$IP1" 5001 </tmp/blob 2>&1); then
		vt_fail patch.transfer "sender failed: $out | $(log_tail)"
	fi
	vt_reap "$NC" 30 || vt_fail patch.transfer "the listener did not finish within 30 s"
	exec 3>&-
	want=$(sha256sum </tmp/blob | cut -d' ' -f1)
	got=$(sha256sum </tmp/recv | cut -d' ' -f1)
	size=$(wc -c </tmp/recv)
	rx1=$(ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/rx_bytes)
	vt_info "transfer: sent 1048576 bytes sha256 $want; received $size bytes sha256 $got; $IF1 rx_bytes +$((rx1 - rx0))"
	if [ "$want" = "$got" ]; then
		vt_pass patch.transfer
	else
		vt_fail patch.transfer "checksum mismatch: received $size of 1048576 bytes"
	fi
	# shellcheck disable=SC2016 # expanded by the inner shell
	stats='for f in rx_packets tx_packets rx_bytes tx_bytes rx_dropped tx_dropped rx_errors tx_errors; do
		printf "%s=%s " $f $(cat /sys/class/net/$0/statistics/$f); done'
	vt_info "ns0 $IF0: $(ip netns exec ns0 sh -c "$stats" "$IF0")"
	vt_info "ns1 $IF1: $(ip netns exec ns1 sh -c "$stats" "$IF1")"
fi

# --- teardown: unbind, vdpa dev del, SIGINT; the process must destroy both devices
step teardown
td_ok=1
for d in vn0 vn1; do
	if ! out=$( (echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/unbind) 2>&1); then
		vt_fail patch.unbind "unbind $d: $out"
		td_ok=0
	fi
done
[ "$td_ok" = 1 ] && vt_pass patch.unbind
ip netns del ns0 2>/dev/null
ip netns del ns1 2>/dev/null
for d in vn0 vn1; do
	if ! out=$(vdpa dev del "$d" 2>&1); then
		vt_fail patch.vdpa-del "vdpa dev del $d: $out"
		td_ok=0
	fi
done
[ "$td_ok" = 1 ] && vt_pass patch.vdpa-del
if vt_stop "$VN" INT 10; then
	if [ "$VT_RC" = 0 ]; then
		vt_pass patch.sigint-exit
	else
		vt_fail patch.sigint-exit "vduse-net exited $VT_RC after SIGINT: $(log_tail)"
	fi
else
	vt_fail patch.sigint-exit "vduse-net still running 10 s after SIGINT (killed): $(log_tail)"
fi
grep '^vduse-net: vn[01]: ' "$LOG" | while read -r l; do vt_info "$l"; done

# --- the device's own counters (printed at stop): frames through pair 0, no queue
# errors, every control message answered; SET_VQ_READY only where VDUSE_F_QUEUE_READY
# exists (7.3)
st0=$(grep '^vduse-net: vn0: {' "$LOG")
st1=$(grep '^vduse-net: vn1: {' "$LOG")
num() { echo "$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
# first STATS KEY: KEY of pair 0
first() { echo "$1" | sed -n "s/^[^{]*{\"pairs\":\[{[^}]*\"$2\":\([0-9]*\).*/\1/p"; }
stats_ok=1
if [ -z "$st0" ] || [ -z "$st1" ]; then
	vt_fail patch.device-stats "no stats lines at stop: $(log_tail)"
	stats_ok=0
else
	tx0=$(first "$st0" tx_frames)
	if [ "$ns_ok" = 1 ] && [ "${tx0:-0}" -lt 719 ]; then
		# 1 MiB in 1500-byte frames is at least 719 of them
		vt_fail patch.device-stats "vn0 pair 0 sent ${tx0:-?} frames, expected >= 719"
		stats_ok=0
	fi
	case $st0$st1 in *'"queue_errors":'[1-9]* | *'"failed_replies":'[1-9]*)
		vt_fail patch.device-stats "queue errors or failed replies: $st0 | $st1"
		stats_ok=0
		;;
	esac
	# Kicks must reach the poll threads: the kernel drops every kickfd right after the
	# daemon answers SET_STATUS(0), so a device that registers them only at reset
	# never sees a kick and moves frames only on its idle timeout (100 ms per hop).
	# Checked when the stats carry a per-pair "kicks" counter.
	k0=$(first "$st0" kicks)
	k1=$(first "$st1" kicks)
	if [ -z "$k0" ]; then
		vt_info "no kicks counter in the device stats; kick delivery not checked"
	elif [ "$ns_ok" = 1 ] && { [ "$k0" = 0 ] || [ "${k1:-0}" = 0 ]; }; then
		vt_fail patch.kicks "pair 0 woke on no kick (vn0 kicks=$k0, vn1 kicks=${k1:-?}): kickfds lost?"
		stats_ok=0
	fi
	rdy=$(num "$st0" set_vq_ready)
	case $VDUSE_TEST_KERNEL in
	6.* | 7.2) [ "${rdy:-x}" = 0 ] || {
		vt_fail patch.queue-ready "set_vq_ready=${rdy:-?} on $VDUSE_TEST_KERNEL, which has no VDUSE_F_QUEUE_READY"
		stats_ok=0
	} ;;
	*) if [ "${rdy:-0}" -ge 2 ]; then vt_pass patch.queue-ready; else
		vt_fail patch.queue-ready "set_vq_ready=${rdy:-?}: expected SET_VQ_READY messages for vq 0 and 1"
		stats_ok=0
	fi ;;
	esac
fi
[ "$stats_ok" = 1 ] && vt_pass patch.device-stats
if [ -e /dev/vduse/vn0 ] || [ -e /dev/vduse/vn1 ]; then
	vt_fail patch.destroyed "device nodes left behind: $(ls /dev/vduse)"
else
	vt_pass patch.destroyed
fi
if grep -qE ' (ERROR|WARN) |error:' "$LOG"; then
	vt_info "vduse-net log: $(grep -E ' (ERROR|WARN) |error:' "$LOG" | tail -n 5)"
fi
step end
