# Reconnect (issue 12) on a real kernel, shared by the scenarios reconnect (7.3, patched
# module, control queue) and reconnect-api0 (6.12, API 0, no control queue): see
# tools/kernel/scenarios/reconnect.sh for what it checks. Sourced after vduse-test.sh.
# shellcheck shell=sh
T=reconnect
LOG=/tmp/vn1.log
LOG2=/tmp/vn2.log
IP0=10.99.0.1 IP1=10.99.0.2
NEWMAC=02:00:00:00:00:77
FOREIGN=02:00:00:00:00:99
SIZE_MB=64

step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
ip() { /sbin/ip "$@"; }
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
# exec: $! is then vduse-net itself, not a subshell around it (kill -9 must hit the daemon)
start() { RUST_LOG=info exec /bin/vduse-net run --devices 2 --backend patch --name vn --queues 1 "$@" 2>&1; }

step start
start >"$LOG" &
VN=$!
if ! vt_wait 20 grep -q 'device vn1 ready' "$LOG"; then
	vt_fail $T.start "no 'device vn1 ready' within 20 s: $(vt_log_tail)"
	vt_stop "$VN" INT 5
	exit 0
fi
CVQ=0
if grep -q 'device vn1 ready:.*+ control queue' "$LOG"; then
	CVQ=1
	vt_pass $T.ctrl-vq
elif [ "$VDUSE_TEST_VDUSE" = patched ]; then
	vt_fail $T.ctrl-vq "no control queue on the patched module: $(grep 'ready:' "$LOG" | tr '\n' '|')"
else
	vt_info "no control queue (stock module): the MAC and RX-mode checks are skipped"
fi
if [ -e /run/vduse-net/vn0.state ] && [ -e /run/vduse-net/vn1.state ]; then
	vt_pass $T.logs-created
else
	vt_fail $T.logs-created "no state logs in /run/vduse-net: $(ls /run/vduse-net 2>&1)"
fi
for d in vn0 vn1; do
	vdpa dev add name "$d" mgmtdev vduse || vt_fail $T.vdpa-add "vdpa dev add $d"
	echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/bind || vt_fail $T.bind "bind $d"
done
if ! vt_wait 10 vt_vdpa_netdev vn0 || ! vt_wait 10 vt_vdpa_netdev vn1; then
	vt_fail $T.bind "no net interfaces: $(vt_log_tail)"
	vt_stop "$VN" KILL 5
	exit 0
fi
IF0=$(vt_vdpa_netdev vn0)
IF1=$(vt_vdpa_netdev vn1)
ip netns add ns0 && ip link set "$IF0" netns ns0 && ip -n ns0 link set lo up &&
	ip -n ns0 addr add $IP0/24 dev "$IF0" || vt_fail $T.netns "ns0"
ip netns add ns1 && ip link set "$IF1" netns ns1 && ip -n ns1 link set lo up &&
	ip -n ns1 addr add $IP1/24 dev "$IF1" || vt_fail $T.netns "ns1"
# MAC_ADDR_SET over the control queue (where there is one)
[ "$CVQ" = 0 ] || ip -n ns1 link set "$IF1" address $NEWMAC || vt_fail $T.netns "ns1 address"
for n in 0 1; do
	echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null
	ip netns exec ns$n sh -c "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6" 2>/dev/null
done
ip -n ns0 link set "$IF0" up
ip -n ns1 link set "$IF1" up
if [ "$CVQ" = 0 ]; then
	:
elif vt_wait_log 10 "vn1: control command MacAddrSet(\[2, 0, 0, 0, 0, 119\])" &&
	vt_wait_log 10 "vn1: control command Rx { mode: Promisc, on: false }"; then
	vt_pass $T.ctrl-before
else
	vt_fail $T.ctrl-before "MAC_ADDR_SET / RX_PROMISC off not seen on vn1: $(grep 'control command' "$LOG" | tr '\n' '|')"
fi
ip netns exec ns0 arp -i "$IF0" -s 10.99.0.9 $FOREIGN || vt_fail $T.setup "arp -s foreign"
if ip netns exec ns0 ping -c 3 -i 0.2 -w 20 $IP1 >/dev/null 2>&1; then
	vt_pass $T.ping-before
else
	vt_fail $T.ping-before "no ping $IP0 -> $IP1: $(vt_log_tail)"
fi

# rx_packets of IF1 while 5 pings go from ns0 to the foreign MAC: filtered by vn1's device.
rx1() { ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/rx_packets; }
foreign() {
	_a=$(rx1)
	ip netns exec ns0 ping -c 5 -i 0.2 -W 2 10.99.0.9 >/dev/null 2>&1
	sleep 0.3
	echo $(($(rx1) - _a))
}
n=$(foreign)
vt_info "before the crash: $n of 5 frames to $FOREIGN reached $IF1"
[ "$CVQ" = 0 ] || [ "$n" -lt 5 ] || vt_fail $T.filter-before "promiscuous off, yet $n frames to $FOREIGN reached $IF1"

step transfer
dd if=/dev/urandom of=/tmp/blob bs=1M count=$SIZE_MB 2>/dev/null
want=$(sha256sum </tmp/blob | cut -d' ' -f1)
retrans() { ip netns exec ns0 awk '/^Tcp: [0-9]/ { print $13 }' /proc/net/snmp; }
re0=$(retrans)
# Background commands call /sbin/ip, not the ip() function: a function runs in a forked
# shell, so $! would be that shell and kill -INT "$PING" would leave ping running until
# its -w deadline (600 s), with `wait` blocking past the scenario's time limit.
mkfifo /tmp/nc.hold
/sbin/ip netns exec ns1 nc -l -p 5001 >/tmp/recv </tmp/nc.hold &
NC=$!
exec 3>/tmp/nc.hold
vt_wait 10 sh -c "/sbin/ip netns exec ns1 netstat -ltn | grep -q ':5001 '" || vt_fail $T.transfer "no listener"
/sbin/ip netns exec ns0 ping -i 0.05 -w 600 $IP1 >/tmp/ping.out 2>&1 &
PING=$!
/sbin/ip netns exec ns0 nc $IP1 5001 </tmp/blob >/dev/null 2>/tmp/nc.err &
SEND=$!
# Kill as soon as data arrives: polled with the shell's own test (no fork per check),
# since an undisturbed transfer is over within seconds.
i=0
while ! [ -s /tmp/recv ] && [ $i -lt 60000 ]; do
	usleep 2000
	i=$((i + 1))
done
[ $i -lt 60000 ] || vt_fail $T.transfer "nothing arrived ($(stat -c %s /tmp/recv) bytes): $(vt_log_tail)"
got0=$(stat -c %s /tmp/recv)
step "kill -9 at $got0 bytes received"
t0=$(now_ms)
kill -KILL "$VN"
wait "$VN" 2>/dev/null
t_dead=$(now_ms)
[ -e /run/vduse-net/vn0.state ] && [ -e /run/vduse-net/vn1.state ] || vt_fail $T.logs-kept "the logs went with the process"
start >"$LOG2" &
VN=$!
LOG=$LOG2
# A monitor at the highest priority (it runs even if the scenario's shell starves):
# every 10 s for 60 s, what the guest's CPUs do after the restart, the per-thread CPU
# time of the new daemon, the device's and the interfaces' counters.
monitor() {
	read -r _me _ </proc/self/stat
	renice -n -20 -p "$_me" >/dev/null 2>&1
	for _m in 1 2 3 4 5 6; do
		sleep 10
		vt_info "monitor $_m at $(cut -d' ' -f1 /proc/uptime)s: recv $(stat -c %s /tmp/recv) bytes; load $(cat /proc/loadavg); $(head -n 1 /proc/stat)"
		top -b -n 1 2>/dev/null | head -n 14 | while read -r l; do vt_info "monitor top: $l"; done
		for t in /proc/"$VN"/task/*; do
			[ -r "$t/stat" ] && vt_info "monitor thread $(cut -d' ' -f2,3,14,15 "$t/stat")"
		done
		vt_info "monitor softirqs: $(grep -E 'NET_RX|NET_TX' /proc/softirqs | tr -s ' ' | tr '\n' '|')"
		vt_info "monitor ns0 dev: $(ip netns exec ns0 grep "$IF0" /proc/net/dev | tr -s ' '); ns1 dev: $(ip netns exec ns1 grep "$IF1" /proc/net/dev | tr -s ' ')"
		vt_info "monitor stats: $(/bin/vduse-net stats --json 2>&1 | tr -d ' \n' | head -c 2500)"
	done
}
monitor &
MON=$!
if vt_wait_log 20 "vn1: reattached: dataplane resumed" && vt_wait_log 5 "vn0: reattached: dataplane resumed"; then
	vt_pass $T.reattached
else
	vt_fail $T.reattached "no 'reattached' for both devices: $(grep -i 'reattach\|error' "$LOG2" | tr '\n' '|')"
fi
t_up=$(now_ms)
# Traffic again: the receiver's byte count moves (or every byte is already there: a fast
# restart can let the transfer finish before this first look).
full=$((SIZE_MB * 1048576))
b=$(stat -c %s /tmp/recv)
if vt_wait 60 sh -c "s=\$(stat -c %s /tmp/recv); [ \$s -gt $b ] || [ \$s -ge $full ]"; then
	t_flow=$(now_ms)
	vt_pass $T.traffic-resumed
else
	t_flow=$(now_ms)
	vt_fail $T.traffic-resumed "no byte arrived in 60 s after the restart: $(vt_log_tail)"
fi
vt_info "restart: kill to exit $((t_dead - t0)) ms, to both devices reattached $((t_up - t0)) ms, to TCP data flowing again $((t_flow - t0)) ms"

# Progress every 2 s until every byte arrived, or 20 s without a new byte (a stall), or
# 240 s. Nothing here waits on a process that may be stuck.
k=0
last=-1
still=0
while [ "$(stat -c %s /tmp/recv)" -lt $full ] && [ $k -lt 120 ] && [ $still -lt 10 ]; do
	sleep 2
	k=$((k + 1))
	cur=$(stat -c %s /tmp/recv)
	[ $((k % 5)) = 0 ] && vt_info "progress at $(cut -d' ' -f1 /proc/uptime)s: $cur bytes"
	if [ "$cur" = "$last" ]; then still=$((still + 1)); else still=0; fi
	last=$cur
done
if [ "$(stat -c %s /tmp/recv)" -lt $full ]; then
	vt_info "device stats: $(/bin/vduse-net stats --json 2>&1 | tr -d ' \n' | head -c 3000)"
	vt_info "ns0 $IF0 tx/rx packets: $(ip netns exec ns0 cat /sys/class/net/"$IF0"/statistics/tx_packets) $(ip netns exec ns0 cat /sys/class/net/"$IF0"/statistics/rx_packets); ns1 $IF1: $(ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/tx_packets) $(ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/rx_packets)"
	vt_info "ns0 snmp: $(ip netns exec ns0 grep '^Tcp:' /proc/net/snmp | tail -n 1)"
	vt_fail $T.transfer "$(stat -c %s /tmp/recv) of $full bytes arrived (stalled $((still * 2)) s): $(grep -E 'ERROR|WARN' "$LOG2" | tail -n 4 | tr '\n' '|')"
fi
sleep 1
kill "$MON" 2>/dev/null
kill -KILL "$SEND" "$NC" 2>/dev/null
exec 3>&-
kill -INT "$PING" 2>/dev/null
vt_wait 5 sh -c "! kill -0 $PING" || kill -KILL "$PING" 2>/dev/null
wait "$PING" 2>/dev/null
got=$(sha256sum </tmp/recv | cut -d' ' -f1)
size=$(stat -c %s /tmp/recv)
vt_info "transfer: sent $((SIZE_MB * 1048576)) bytes sha256 $want; received $size bytes sha256 $got; TCP segments retransmitted: $(($(retrans) - re0))"
vt_info "ping: $(grep -E 'packets transmitted' /tmp/ping.out)"
if [ "$want" = "$got" ]; then vt_pass $T.transfer-sha256; else vt_fail $T.transfer-sha256 "received $size bytes, checksum differs: $(cat /tmp/nc.err)"; fi

# The control-queue state set before the crash: MAC (frames to it pass: the transfer did)
# and RX mode (frames to a foreign MAC are still filtered).
n=$(foreign)
vt_info "after the restart: $n of 5 frames to $FOREIGN reached $IF1"
if [ "$CVQ" = 0 ]; then
	:
elif [ "$n" -lt 5 ]; then
	vt_pass $T.filter-after
else
	vt_fail $T.filter-after "promiscuous mode lost: $n of 5 frames to $FOREIGN came through"
fi
if ip netns exec ns0 ping -c 3 -i 0.2 -w 20 $IP1 >/dev/null 2>&1; then vt_pass $T.ping-after; else vt_fail $T.ping-after "no ping after the restart"; fi
c=$(vdpa dev config show vn1 2>&1)
if [ "$CVQ" = 1 ]; then
	case $c in *"mac $NEWMAC"*) vt_pass $T.mac-after ;; *) vt_fail $T.mac-after "vn1 config: $c" ;; esac
fi

if dmesg | grep -q 'WARNING:'; then
	vt_fail $T.kernel-warn "$(dmesg | grep -A3 'WARNING:' | head -n 8 | tr '\n' '|')"
else
	vt_pass $T.kernel-warn
fi

step teardown
for d in vn0 vn1; do echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/unbind; done
ip netns del ns0 2>/dev/null
ip netns del ns1 2>/dev/null
for d in vn0 vn1; do vdpa dev del "$d" || vt_fail $T.vdpa-del "$d"; done
if vt_stop "$VN" INT 10 && [ "$VT_RC" = 0 ]; then vt_pass $T.stop; else vt_fail $T.stop "exit ${VT_RC:-?}: $(vt_log_tail)"; fi
if [ -e /dev/vduse/vn0 ] || [ -e /dev/vduse/vn1 ] || [ -e /run/vduse-net/vn0.state ]; then
	vt_fail $T.destroyed "left behind: $(ls /dev/vduse /run/vduse-net 2>&1 | tr '\n' ' ')"
else
	vt_pass $T.destroyed
fi
grep '^vduse-net: vn[01]: {' "$LOG2" | while read -r l; do vt_info "$l"; done
grep -E ' (ERROR|WARN) ' "$LOG2" | head -n 5 | while read -r l; do vt_info "log: $l"; done
# The vhost_vdpa half and the upgrade, in the same boot.
# shellcheck source=tools/kernel/guest/reconnect-vhost.sh
. /lib/reconnect-vhost.sh
step end
