#!/bin/sh
# kernels: 7.3
# vduse: patched
# needs: vduse-net
# bundles: dpdk
# modules: +pktgen
# cpu: qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt
# timeout: 200
#
# DPDK as a second, independent driver of vduse-net: Debian's dpdk-testpmd with `--no-huge
# --vdev net_virtio_user0,path=/dev/vhost-vdpa-N,queues=2` drives device dp0 (2 pairs +
# control queue, patched vduse.ko) through vhost-vdpa, forwarding with macswap. dp0 is
# patched to dp1, which the outer kernel's virtio-net drives (virtio_vdpa); the kernel's
# pktgen sends a fixed number of frames (FRAMES, paced, half on each of dp1's TX queues,
# from 32 source addresses so RSS spreads them) to testpmd's MAC, and testpmd sends each
# back on the queue it came in with the addresses swapped.
# Evidence: testpmd received and sent exactly FRAMES with no miss or error (port stats);
# dp1 took FRAMES from the kernel, dp0 gave testpmd FRAMES and took FRAMES back, dp1 gave
# the kernel FRAMES, both pairs carried frames, nothing was dropped (device counters); the
# interface sent and got back FRAMES (its statistics); virtio-user set 2 pairs through the
# device's control queue (VQ_PAIRS_SET 2, or RSS_CONFIG when it negotiated RSS, which the
# device offers by default) and nothing was refused; no error line in
# testpmd's output or the device log; testpmd and vduse-net exit cleanly.
# DPDK is trixie's 24.11 (tools/kernel/bundle dpdk). Bookworm's 22.11
# (VDUSE_NET_DPDK_SUITE=bookworm) cannot drive the device: its virtio-user emulates the
# control queue itself and accepts CTRL_RX, MQ, ... without CTRL_VQ, which the device
# refuses at FEATURES_OK (virtio 1.3 5.1.3.1), so the port never comes up.
# Debian's DPDK needs SSE4.2 (the default qemu64 CPU model lacks it: "Illegal instruction").
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

S=dpdk-virtio-user
LOG=/tmp/dp.log
FRAMES=${DPDK_FRAMES:-5000}
TP_OUT=/tmp/testpmd.out
ip() { /sbin/ip "$@"; }
step() { vt_info "$S: at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
stats_of() { grep "vduse-net: $1: {" "$LOG" | tail -n 1 | sed "s/^.*vduse-net: $1: //"; }
# sum_pairs JSON FIELD: FIELD summed over the pairs
sum_pairs() {
	printf '%s\n' "$1" | sed 's/"slow_path".*//' | grep -o "\"$2\":[0-9]*" | cut -d: -f2 | awk '{ s += $1 } END { print s + 0 }'
}
slow() { printf '%s\n' "$1" | sed 's/.*"slow_path"://' | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
TP=""
dump() {
	echo "---- testpmd output ----"
	sed 's/^/testpmd| /' "$TP_OUT" 2>/dev/null | tail -n 80
	echo "---- device log (requests and control commands) ----"
	grep -vE 'UpdateIotlb' "$LOG" | sed 's/^/dp.log| /' | tail -n 80
}
finish() {
	[ -n "$TP" ] && vt_running "$TP" && vt_stop "$TP" KILL 5
	[ -e /sys/bus/vdpa/drivers/vhost_vdpa/dp0 ] && echo dp0 >/sys/bus/vdpa/drivers/vhost_vdpa/unbind
	[ -e /sys/bus/vdpa/drivers/virtio_vdpa/dp1 ] && echo dp1 >/sys/bus/vdpa/drivers/virtio_vdpa/unbind
	vdpa dev del dp0 2>/dev/null
	vdpa dev del dp1 2>/dev/null
	vt_stop "$VN" INT 20
}

step start
RUST_LOG=debug /bin/vduse-net run --devices 2 --backend patch --name dp --queues 2 \
	--mac 02:00:00:0e:00:01 >"$LOG" 2>&1 &
VN=$!
if ! vt_wait_log 30 "device dp1 ready"; then
	vt_fail $S.device "vduse-net did not come up: $(vt_log_tail)"
	vt_stop "$VN" INT 5
	exit 0
fi
vt_info "$S: $(grep 'device dp0 ready' "$LOG")"
for d in dp0 dp1; do vdpa dev add name $d mgmtdev vduse || vt_fail $S.device "vdpa dev add $d"; done
echo dp0 >/sys/bus/vdpa/drivers/vhost_vdpa/bind
echo dp1 >/sys/bus/vdpa/drivers/virtio_vdpa/bind
node=""
for _ in $(seq 50); do
	for n in /sys/bus/vdpa/devices/dp0/vhost-vdpa-*; do [ -e "$n" ] && node=${n##*/}; done
	[ -n "$node" ] && [ -c "/dev/$node" ] && break
	sleep 0.1
done
if [ -z "$node" ] || ! vt_wait 10 vt_vdpa_netdev dp1; then
	vt_fail $S.device "no /dev/vhost-vdpa node for dp0 ($node) or no interface for dp1"
	finish
	exit 0
fi
IF=$(vt_vdpa_netdev dp1)
sysctl -qw "net.ipv6.conf.$IF.disable_ipv6=1"
ip link set "$IF" up
vt_pass $S.device

# --- testpmd, interactive, commands through a FIFO held open on its stdin
step "testpmd on /dev/$node"
mkdir -p /var/run # EAL keeps its runtime files in /var/run/dpdk
chmod 0755 / # EAL refuses plugins under a world-writable directory (the rootfs root is 0777)
mkfifo /tmp/tp.in
sleep 100000 >/tmp/tp.in &
HOLD=$!
/bin/dpdk-testpmd -v -l 0-1 -n 1 --no-huge -m 256 --no-pci --iova-mode=va --file-prefix=vt \
	-d /opt/dpdk/pmds --vdev "net_virtio_user0,path=/dev/$node,queues=2" -- \
	-i --rxq=2 --txq=2 --nb-cores=1 --total-num-mbufs=4096 --forward-mode=macswap \
	</tmp/tp.in >"$TP_OUT" 2>&1 &
TP=$!
# tp CMD: one testpmd command; waits for the prompt that follows it
tp() {
	_n=$(grep -o 'testpmd> ' "$TP_OUT" | wc -l)
	echo "$1" >/tmp/tp.in
	_left=300
	while [ "$(grep -o 'testpmd> ' "$TP_OUT" | wc -l)" -le "$_n" ] && [ $_left -gt 0 ] && vt_running "$TP"; do
		sleep 0.1
		_left=$((_left - 1))
	done
}
ok=0
for _ in $(seq 900); do
	grep -q 'testpmd> ' "$TP_OUT" && ok=1 && break
	vt_running "$TP" || break
	sleep 0.1
done
if [ $ok = 0 ]; then
	if vt_running "$TP"; then why="no prompt within 90 s"; else
		wait "$TP"
		why="testpmd exited $?"
	fi
	vt_fail $S.testpmd-start "$why: $(tail -n 8 "$TP_OUT" | tr '\n' '|')"
	kill $HOLD
	finish
	dump
	exit 0
fi
vt_pass $S.testpmd-start
# testpmd's stdout is a file, so its printf output is block-buffered: what "show port info"
# prints arrives only later (at the latest when testpmd quits). The frames go to the MAC
# virtio-user should have read from the device's config space; the port info is checked
# once testpmd has quit.
DEVMAC=02:00:00:0e:00:01
tp "show port info 0"
# Without retry testpmd drops a burst its TX ring cannot take at once; on a 2-vCPU TCG guest
# the device's poll thread can be descheduled long enough for 256 slots to fill (29 of 5000
# dropped by testpmd, not the device, in one CI run). Retry up to 200 x 1 ms, as a lossless
# NFV setup would configure it.
tp "set fwd macswap retry"
tp "set burst tx delay 1000 retry 200"
tp "start"

# --- the frames: pktgen, FRAMES in all, half on each TX queue of the interface (one pktgen
# thread per queue), paced 50 us apart, from 32 IPv4 source addresses in turn: with RSS
# (negotiated by virtio-user and the kernel; testpmd hashes IP addresses only) one address
# would put every frame on one queue of dp0, and the row wants both pairs to carry frames
step "pktgen: $FRAMES frames to $DEVMAC"
tx0=$(cat "/sys/class/net/$IF/statistics/tx_packets")
rx0=$(cat "/sys/class/net/$IF/statistics/rx_packets")
pg() { echo "$2" >"/proc/net/pktgen/$1"; }
for q in 0 1; do
	pg kpktgend_$q "rem_device_all"
	pg kpktgend_$q "add_device $IF@$q"
	pg "$IF@$q" "count $((FRAMES / 2))"
	pg "$IF@$q" "pkt_size 60"
	pg "$IF@$q" "delay 50000"
	pg "$IF@$q" "queue_map_min $q"
	pg "$IF@$q" "queue_map_max $q"
	pg "$IF@$q" "dst 10.98.0.2"
	pg "$IF@$q" "src_min 10.98.1.1"
	pg "$IF@$q" "src_max 10.98.1.32"
	pg "$IF@$q" "dst_mac $DEVMAC"
done
# "start" returns when every frame is out; a queue that never drains would block it for
# good: stop pktgen after 60 s
echo start >/proc/net/pktgen/pgctrl &
PG=$!
pg_done() { ! vt_running "$PG"; }
if ! vt_wait 60 pg_done; then
	echo stop >/proc/net/pktgen/pgctrl
	vt_fail $S.pktgen "pktgen had not sent $FRAMES frames after 60 s (a TX queue of $IF stalled)"
fi
vt_reap "$PG" 10
for q in 0 1; do
	vt_info "$S: pktgen queue $q: $(grep -E 'Result|pkts-sofar' "/proc/net/pktgen/$IF@$q" | tr -s ' \n' ' ')"
done
# the last frames come back through testpmd: wait until the interface has them all
vt_wait 30 sh -c "[ \$(( \$(cat /sys/class/net/$IF/statistics/rx_packets) - $rx0 )) -ge $FRAMES ]"
sleep 1
tx=$(($(cat "/sys/class/net/$IF/statistics/tx_packets") - tx0))
rx=$(($(cat "/sys/class/net/$IF/statistics/rx_packets") - rx0))
tp "stop"
tp "show port stats 0"
tp "quit"
kill $HOLD 2>/dev/null
vt_reap "$TP" 30 || vt_fail $S.testpmd-exit "testpmd did not quit (killed)"
tp_rc=$VT_RC
TP=""
TPMAC=$(sed -n 's/.*MAC address: \([0-9A-Fa-f:]*\).*/\1/p' "$TP_OUT" | tail -n 1 | tr 'A-F' 'a-f')
vt_info "$S: $(grep -o "RTE Version: .*" "$TP_OUT" | head -n 1); port 0 MAC ${TPMAC:-?}; $(grep -E 'Max possible number of RXQs|Current number of RX queues' "$TP_OUT" | tr '\n' ' ')"
if [ "$TPMAC" = "$DEVMAC" ]; then
	vt_pass $S.config-mac
else
	vt_fail $S.config-mac "testpmd's port 0 has MAC ${TPMAC:-?}, not the device's $DEVMAC (config space not read?)"
fi
tp_rx=$(sed -n 's/.*RX-packets: *\([0-9]*\).*/\1/p' "$TP_OUT" | tail -n 1)
tp_tx=$(sed -n 's/.*TX-packets: *\([0-9]*\).*/\1/p' "$TP_OUT" | tail -n 1)
tp_rxerr=$(sed -n 's/.*RX-errors: *\([0-9]*\).*/\1/p' "$TP_OUT" | tail -n 1)
tp_miss=$(sed -n 's/.*RX-missed: *\([0-9]*\).*/\1/p' "$TP_OUT" | tail -n 1)
tp_txerr=$(sed -n 's/.*TX-errors: *\([0-9]*\).*/\1/p' "$TP_OUT" | tail -n 1)
vt_info "$S: testpmd port 0: RX ${tp_rx:-?} (missed ${tp_miss:-?}, errors ${tp_rxerr:-?}) TX ${tp_tx:-?} (errors ${tp_txerr:-?}); interface $IF: sent $tx, received $rx"
finish
st0=$(stats_of dp0)
st1=$(stats_of dp1)
vt_info "$S: dp0 counters: $st0"
vt_info "$S: dp1 counters: $st1"

if [ "$tx" = "$FRAMES" ] && [ "$rx" = "$FRAMES" ]; then
	vt_pass $S.kernel-side
else
	vt_fail $S.kernel-side "interface $IF sent $tx and received $rx (want $FRAMES each)"
fi
if [ "${tp_rx:-x}" = "$FRAMES" ] && [ "${tp_tx:-x}" = "$FRAMES" ] && [ "${tp_miss:-x}" = 0 ] &&
	[ "${tp_rxerr:-x}" = 0 ] && [ "${tp_txerr:-x}" = 0 ]; then
	vt_pass $S.testpmd-counters
else
	vt_fail $S.testpmd-counters "testpmd RX ${tp_rx:-?} TX ${tp_tx:-?} missed ${tp_miss:-?} errors ${tp_rxerr:-?}/${tp_txerr:-?} (want $FRAMES, $FRAMES, 0, 0/0)"
fi
d0rx=$(sum_pairs "$st0" rx_frames) d0tx=$(sum_pairs "$st0" tx_frames)
d1rx=$(sum_pairs "$st1" rx_frames) d1tx=$(sum_pairs "$st1" tx_frames)
# rx_no_buffer counts waits for a free RX buffer (the frame stays queued), not losses
drops=$(($(sum_pairs "$st0" tx_dropped) + $(sum_pairs "$st1" tx_dropped) + $(sum_pairs "$st0" queue_errors) + $(sum_pairs "$st1" queue_errors) + $(sum_pairs "$st0" rx_steer_dropped) + $(sum_pairs "$st1" rx_steer_dropped)))
p1=$(printf '%s\n' "$st0" | sed 's/.*"pairs":\[{[^}]*},//' | sed -n 's/^{"tx_frames":\([0-9]*\).*/\1/p')
if [ "$d1tx" = "$FRAMES" ] && [ "$d0rx" = "$FRAMES" ] && [ "$d0tx" = "$FRAMES" ] && [ "$d1rx" = "$FRAMES" ] && [ "$drops" = 0 ]; then
	vt_pass $S.device-counters
else
	vt_fail $S.device-counters "dp1 took $d1tx from the kernel, dp0 gave testpmd $d0rx and took $d0tx back, dp1 gave the kernel $d1rx; drops/errors $drops (want $FRAMES x4, 0)"
fi
if [ "${p1:-0}" -gt 0 ] && [ "${p1:-0}" -lt "$FRAMES" ]; then
	vt_pass $S.both-pairs
else
	vt_fail $S.both-pairs "dp0 pair 1 took ${p1:-?} of $FRAMES frames from testpmd (want some on each pair)"
fi
vt_info "$S: waits for an RX buffer (rx_no_buffer, not losses): dp0 $(sum_pairs "$st0" rx_no_buffer), dp1 $(sum_pairs "$st1" rx_no_buffer)"
# queues=2: virtio-user asks for 2 pairs on the device's own control queue; with RSS
# negotiated (DPDK's virtio_set_multiple_queues_rss) that is RSS_CONFIG, not VQ_PAIRS_SET.
if grep "dp0: driver accepted features" "$LOG" | tail -n 1 | grep -qi ' rss[] ]'; then
	want="dp0: control command RssConfig(.*max_tx_vq: 2.*) -> RssChanged(2)" what="RSS_CONFIG (max_tx_vq 2)"
else
	want="dp0: control command MqPairsSet(2) -> PairsChanged(2)" what="VQ_PAIRS_SET 2"
fi
if grep -q "$want" "$LOG"; then
	vt_pass $S.mq-pairs
else
	vt_fail $S.mq-pairs "no $what from virtio-user: $(grep 'dp0: control command\|dp0: driver accepted' "$LOG" | tr '\n' '|')"
fi
steered=$(($(sum_pairs "$st0" rx_steered) + $(sum_pairs "$st1" rx_steered)))
sdropped=$(($(sum_pairs "$st0" rx_steer_dropped) + $(sum_pairs "$st1" rx_steer_dropped)))
vt_info "$S: RSS steering: $steered frames handed to another pair, $sdropped dropped (rx_steer_dropped)"
# Error lines, less the counters' names and two informational lines: the error-handling
# mode testpmd reports for every port, and EAL's notice that a virtual device has no
# interrupt file descriptor to (un)register a callback on.
errs=$(grep -iE 'error|fail|cannot|invalid|unable' "$TP_OUT" | grep -vE 'RX-errors|TX-errors|RX-error|errors: |Device error handling mode: none|EAL: (Un)?[Rr]egistering with invalid input parameter' | head -n 5)
if [ -z "$errs" ] && [ "$tp_rc" = 0 ]; then
	vt_pass $S.testpmd-clean
else
	vt_fail $S.testpmd-clean "testpmd exit $tp_rc; error lines: $(echo "$errs" | tr '\n' '|')"
fi
derrs=$(grep -E ' (WARN|ERROR) |refused' "$LOG" | head -n 5)
fr=$(slow "$st0" failed_replies)
if [ -z "$derrs" ] && [ "$fr" = 0 ] && [ "$VT_RC" = 0 ]; then
	vt_pass $S.device-clean
else
	vt_fail $S.device-clean "vduse-net exit $VT_RC, failed replies ${fr:-?}, log: $(echo "$derrs" | tr '\n' '|')"
fi
dump
