#!/bin/sh
# kernels: 7.3
# vduse: patched
# needs: vduse-net
# timeout: 120
#
# The control queue on a real kernel (vduse.ko rebuilt without the CTRL_VQ refusal), driven
# by the kernel's own virtio-net under virtio_vdpa. A 2-pair device with a non-swapping
# loopback (every frame comes back unchanged, so its destination is whatever the guest
# sent to): each control command the kernel sends must reach the device's slow path
# ("control command ... -> ..." at info level), be answered (the kernel would log an error
# and the ip command would fail otherwise), and change what the dataplane lets through:
#   - MQ: VQ_PAIRS_SET 2 at probe, or, when the driver negotiated RSS (in the device's
#     default offer), RSS_CONFIG with max_tx_vq 2 instead (Linux's virtnet_set_queues sends
#     RSS_CONFIG then, never VQ_PAIRS_SET): which one the kernel must send follows from the
#     features it accepted (the device's "driver accepted features" line);
#   - RX mode at link up (promisc off): a frame to a foreign unicast MAC is filtered;
#   - `ip link set IF promisc on`: the same frames now reach the kernel;
#   - `ip link set IF address M`: MAC_ADDR_SET; frames to M now pass with promisc off;
#   - multicast joins (enabling IPv6 joins ff02::1): MAC_TABLE_SET carries 33:33:00:00:00:01,
#     and frames to that group pass while frames to a group nobody joined do not;
#   - the device's counters at exit show rx_filtered > 0.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

DEV=cv
LOG=/tmp/device.log
NEWMAC=02:00:00:00:00:77
FOREIGN=02:00:00:00:00:99


RUST_LOG=info /bin/vduse-net run --name $DEV --queues 2 --no-macswap >"$LOG" 2>&1 &
pid=$!
if ! vt_wait_log 15 "device $DEV ready"; then
	vt_fail ctrlvq.device "vduse-net run did not come up: $(vt_log_tail)"
	kill "$pid" 2>/dev/null
	exit 0
fi
if grep -q "device $DEV ready:.*+ control queue" "$LOG"; then
	vt_pass ctrlvq.negotiated
else
	vt_fail ctrlvq.negotiated "no control queue on the patched module: $(grep 'ready:\|refused' "$LOG" | tr '\n' '|')"
fi
vt_info "$(grep "device $DEV ready" "$LOG")"

vt_check ctrlvq.vdpa-add vdpa dev add name $DEV mgmtdev vduse
vt_check ctrlvq.bind sh -c "echo $DEV > /sys/bus/vdpa/drivers/virtio_vdpa/bind"
IF=""
for i in $(seq 50); do
	for n in /sys/bus/vdpa/devices/"$DEV"/virtio*/net/*; do [ -e "$n" ] && IF=${n##*/}; done
	[ -n "$IF" ] && break
	sleep 0.1
done
if [ -z "$IF" ]; then
	vt_fail ctrlvq.netdev "no net interface under /sys/bus/vdpa/devices/$DEV"
	kill "$pid"
	exit 0
fi
vt_info "interface $IF"

# MQ at probe: VQ_PAIRS_SET 2, or RSS_CONFIG for 2 pairs when the kernel took RSS.
if grep "$DEV: driver accepted features" "$LOG" | tail -n 1 | grep -qi ' rss[] ]'; then
	vt_info "RSS negotiated: the pairs come with RSS_CONFIG"
	want="control command RssConfig(.*max_tx_vq: 2.*) -> RssChanged(2)" what="RSS_CONFIG (max_tx_vq 2)"
else
	want="control command MqPairsSet(2) -> PairsChanged(2)" what="VQ_PAIRS_SET 2"
fi
if vt_wait_log 10 "$want"; then
	vt_pass ctrlvq.mq-pairs
else
	vt_fail ctrlvq.mq-pairs "no $what at probe: $(grep 'control command\|accepted features' "$LOG" | tr '\n' '|')"
fi

echo 1 >/proc/sys/net/ipv6/conf/"$IF"/disable_ipv6 2>/dev/null # no autoconf chatter
ip addr add 10.0.0.1/24 dev "$IF"
ip link set "$IF" up
# Static neighbours (busybox ip has no "neigh add"): no ARP, every ping is one frame.
arp -i "$IF" -s 10.0.0.2 $FOREIGN || vt_fail ctrlvq.setup "arp -s 10.0.0.2 failed"
arp -i "$IF" -s 10.0.0.3 $NEWMAC || vt_fail ctrlvq.setup "arp -s 10.0.0.3 failed"
if vt_wait_log 10 "control command Rx { mode: Promisc, on: false }"; then
	vt_pass ctrlvq.rx-mode-at-open
else
	vt_fail ctrlvq.rx-mode-at-open "no RX_PROMISC off at link up: $(grep 'control command' "$LOG" | tr '\n' '|')"
fi

rxp() { cat /sys/class/net/"$IF"/statistics/rx_packets; }
txp() { cat /sys/class/net/"$IF"/statistics/tx_packets; }
# sent [-6] DST: 5 pings (ping gives up 2 s after the last one; nothing answers them);
# prints how many frames came back to the kernel. The counts of every window go to the
# console as INFO lines.
sent() {
	_f=""
	if [ "$1" = -6 ]; then
		_f="-6 -I $IF"
		shift
	fi
	_a=$(rxp)
	_t=$(txp)
	# shellcheck disable=SC2086
	ping $_f -c 5 -i 0.2 -W 2 "$1" >/dev/null 2>&1
	sleep 0.5
	_n=$(($(rxp) - _a))
	vt_info "window $1: tx $(($(txp) - _t)), rx $_n" >&2
	echo "$_n"
}
n=$(sent 10.0.0.2)
if [ "$n" -lt 5 ]; then
	vt_pass ctrlvq.filter-foreign-unicast
else
	vt_fail ctrlvq.filter-foreign-unicast "promisc off, yet $n frames to $FOREIGN came back"
fi
vt_info "promisc off: $n of 5 frames to $FOREIGN delivered"

if ip link set "$IF" promisc on && vt_wait_log 5 "control command Rx { mode: Promisc, on: true }"; then
	vt_pass ctrlvq.promisc-command
else
	vt_fail ctrlvq.promisc-command "RX_PROMISC on not seen: $(grep 'control command' "$LOG" | tail -n 3 | tr '\n' '|')"
fi
n=$(sent 10.0.0.2)
if [ "$n" -ge 5 ]; then
	vt_pass ctrlvq.promisc-delivers
else
	vt_fail ctrlvq.promisc-delivers "promisc on, only $n of 5 frames to $FOREIGN came back"
fi
ip link set "$IF" promisc off
vt_wait_log 5 "control command Rx { mode: Promisc, on: false }" >/dev/null

n=$(sent 10.0.0.3)
vt_info "before the MAC change: $n of 5 frames to $NEWMAC delivered"
if [ "$n" -ge 5 ]; then
	vt_fail ctrlvq.mac-before "frames to $NEWMAC passed before the MAC change (promisc still on?)"
fi
if ip link set "$IF" address $NEWMAC 2>/tmp/ipmac.err; then
	if vt_wait_log 5 "control command MacAddrSet(.*) -> MacChanged"; then
		vt_pass ctrlvq.mac-command
	else
		vt_fail ctrlvq.mac-command "MAC_ADDR_SET not seen: $(grep 'control command' "$LOG" | tail -n 3 | tr '\n' '|')"
	fi
else
	vt_fail ctrlvq.mac-command "ip link set address: $(cat /tmp/ipmac.err)"
fi
# A MAC change flushes the neighbour table, static entries included.
arp -i "$IF" -s 10.0.0.3 $NEWMAC || vt_fail ctrlvq.setup "arp -s 10.0.0.3 failed"
got=$(cat /sys/class/net/"$IF"/address)
[ "$got" = "$NEWMAC" ] || vt_fail ctrlvq.mac-command "interface address is $got"
n=$(sent 10.0.0.3)
if [ "$n" -ge 5 ]; then
	vt_pass ctrlvq.mac-delivers
else
	vt_fail ctrlvq.mac-delivers "after MAC_ADDR_SET $NEWMAC, only $n of 5 frames to it came back"
fi

# Multicast joins: enabling IPv6 joins ff02::1 (33:33:00:00:00:01) and the solicited-node
# group, which the kernel pushes down with MAC_TABLE_SET; frames to a joined group then pass
# with promisc off, frames to a group nobody joined (ff02::1:2) do not.
echo 0 >/proc/sys/net/ipv6/conf/"$IF"/accept_dad 2>/dev/null
if echo 0 >/proc/sys/net/ipv6/conf/"$IF"/disable_ipv6 2>/dev/null; then
	if vt_wait_log 5 "control command MacTableSet .*multicast: \[.*\[51, 51, 0, 0, 0, 1\]"; then
		vt_pass ctrlvq.mac-table
	else
		vt_fail ctrlvq.mac-table "no MAC_TABLE_SET with 33:33:00:00:00:01 after enabling IPv6: $(grep 'control command' "$LOG" | tail -n 3 | tr '\n' '|')"
	fi
	sleep 0.5
	n=$(sent -6 ff02::1)
	m=$(sent -6 ff02::1:2)
	vt_info "multicast: $n of 5 frames to the joined ff02::1, $m of 5 to ff02::1:2 delivered"
	if [ "$n" -ge 5 ] && [ "$m" -lt 5 ]; then
		vt_pass ctrlvq.mac-table-filters
	else
		vt_fail ctrlvq.mac-table-filters "joined group: $n of 5 back (want 5), other group: $m of 5 (want fewer)"
	fi
else
	vt_info "no IPv6 in this kernel: multicast join not checked"
fi

grep 'control command' "$LOG" | sed 's/^/    /'
if grep -q ' ERROR \|refused' "$LOG"; then
	vt_fail ctrlvq.device-log "device log has errors: $(grep ' ERROR \|refused' "$LOG" | head -n 3 | tr '\n' '|')"
fi
grep ' WARN ' "$LOG" | sed 's/^/    /'

ip link set "$IF" down
echo $DEV >/sys/bus/vdpa/drivers/virtio_vdpa/unbind
vdpa dev del $DEV
kill -INT "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
if kill -0 "$pid" 2>/dev/null; then
	vt_fail ctrlvq.stop "vduse-net did not exit on SIGINT"
	kill -9 "$pid"
	exit 0
fi
wait "$pid"
rc=$?
stats=$(grep "vduse-net: $DEV: {" "$LOG")
vt_info "device stats: $stats"
[ "$rc" = 0 ] || vt_fail ctrlvq.stop "vduse-net exited $rc: $(vt_log_tail)"
if echo "$stats" | grep -q '"rx_filtered":[1-9]'; then
	vt_pass ctrlvq.rx-filtered-counted
else
	vt_fail ctrlvq.rx-filtered-counted "no rx_filtered > 0 in the device stats"
fi
