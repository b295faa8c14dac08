#!/bin/sh
# kernels: 7.3
# needs: vduse-net
# timeout: 150
#
# Operating vduse-net on a real kernel: `run --config` with two devices wired by a
# patch, both bound to virtio_vdpa and put in two network namespaces. While pings flow,
# `vduse-net stats edge --json` (the stats socket in /run/vduse-net) shows frame counters
# that grow; once traffic stops, the device counters equal the kernel interfaces' own
# (tx_packets of one end = the device's TX frames, rx_packets = its RX frames), and
# `--prometheus` holds the same numbers. Also: queue state and group -> ASID in the
# sample, a SIGHUP reload, SIGTERM teardown that removes the socket, and the char major
# the systemd unit's DeviceAllow=char-vduse names.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

LOG=/tmp/vn.log
CFG=/tmp/edge.toml
IP0=10.98.0.1 IP1=10.98.0.2
ip() { /sbin/ip "$@"; }
step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
# the number after "KEY": in a one-line JSON text (first match)
jnum() { echo "$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
# device DEV's totals.frames as "RX TX"
frames() {
	echo "$1" | sed 's/},{"name"/}\n{"name"/g' | grep "^{\"name\":\"$2\"\|\"devices\":\[{\"name\":\"$2\"" |
		sed -n 's/.*"totals":{"frames":{"rx":\([0-9]*\),"tx":\([0-9]*\)}.*/\1 \2/p'
}
stats() { /bin/vduse-net stats edge --json 2>&1; }

if grep -q ' vduse$' /proc/devices; then
	vt_pass ops.char-major
else
	vt_fail ops.char-major "no 'vduse' char major in /proc/devices (the unit's DeviceAllow=char-vduse): $(grep -i vduse /proc/devices)"
fi

cat >"$CFG" <<'EOF'
log-level = "info"

[[device]]
name = "vn0"
backend = "patch"
peer = "vn1"

[[device]]
name = "vn1"
backend = "patch"
peer = "vn0"
EOF
if out=$(/bin/vduse-net check-config "$CFG" 2>&1); then vt_pass ops.check-config; else vt_fail ops.check-config "$out"; fi

step start
/bin/vduse-net run --config "$CFG" >"$LOG" 2>&1 &
VN=$!
if ! vt_wait_log 20 'device vn1 created'; then
	vt_fail ops.start "no 'device vn1 created' within 20 s: $(vt_log_tail)"
	vt_stop "$VN" INT 5
	exit 0
fi
if vt_wait 5 test -S /run/vduse-net/edge.sock; then vt_pass ops.socket; else vt_fail ops.socket "no /run/vduse-net/edge.sock"; fi
s=$(stats)
case $s in *'"instance":"edge"'*'"name":"vn0"'*'"port":"patch <-> vn1"'*'"name":"vn1"'*) vt_pass ops.stats-devices ;;
*) vt_fail ops.stats-devices "stats edge: $s" ;;
esac

step bind
for d in vn0 vn1; do
	vdpa dev add name "$d" mgmtdev vduse 2>&1 && echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/bind
done
if ! vt_wait 10 vt_vdpa_netdev vn0 || ! vt_wait 10 vt_vdpa_netdev vn1; then
	vt_fail ops.bind "no interfaces: $(vt_log_tail)"
	vt_stop "$VN" INT 5
	exit 0
fi
IF0=$(vt_vdpa_netdev vn0)
IF1=$(vt_vdpa_netdev vn1)
for n in 0 1; do
	eval "IF=\$IF$n IP=\$IP$n"
	ip netns add "ns$n"
	ip link set "$IF" netns "ns$n"
	# no IPv6: only our traffic (and ARP) crosses the wire, so counters compare exactly
	ip netns exec "ns$n" sh -c "echo 1 > /proc/sys/net/ipv6/conf/$IF/disable_ipv6" 2>/dev/null
	ip -n "ns$n" addr add "$IP/24" dev "$IF"
	ip -n "ns$n" link set "$IF" up
done
vt_wait 10 sh -c "/bin/vduse-net stats edge --json | grep -q '\"driver_ok\":true.*\"driver_ok\":true'"
s=$(stats)
case $s in *'"driver_ok":true'*'"rx":{"vq":0,"ready":true,"enabled":true,"failed":false'*'"group_asid":[{"group":0,"asid":0'*) vt_pass ops.stats-state ;;
*) vt_fail ops.stats-state "expected DRIVER_OK, vq 0 ready and enabled, group 0 -> asid 0: $s" ;;
esac
grep -q 'vn0: driver bound (DRIVER_OK)' "$LOG" && vt_pass ops.log-driver-bound || vt_fail ops.log-driver-bound "$(vt_log_tail)"

step traffic
ip netns exec ns0 ping -c 400 -i 0.01 -s 1000 -w 60 "$IP1" >/tmp/ping.out 2>&1 &
PING=$!
seen="" grew=0 prev=""
i=0
while [ $i -lt 40 ] && vt_running "$PING"; do
	t=$(frames "$(stats)" vn0 | cut -d' ' -f2)
	seen="$seen ${t:-?}"
	[ -n "$prev" ] && [ -n "$t" ] && [ "$t" -gt "$prev" ] && grew=1
	prev=$t
	sleep 0.3
	i=$((i + 1))
done
vt_reap "$PING" 60 || vt_fail ops.ping "ping did not finish"
vt_info "vn0 tx frames while pinging:$seen; ping: $(tail -n 2 /tmp/ping.out | tr '\n' ' ')"
if [ "$grew" = 1 ]; then vt_pass ops.counters-grow; else vt_fail ops.counters-grow "vn0 TX frames did not grow between samples:$seen"; fi

# Quiet now: device counters against the interfaces' (retry while an ARP may cross).
step compare
ok=0
for _ in 1 2 3 4 5 6 7 8 9 10; do
	sleep 0.5
	s=$(stats)
	set -- $(frames "$s" vn0) $(frames "$s" vn1)
	d0rx=$1 d0tx=$2 d1rx=$3 d1tx=$4
	k0tx=$(ip netns exec ns0 cat /sys/class/net/"$IF0"/statistics/tx_packets)
	k0rx=$(ip netns exec ns0 cat /sys/class/net/"$IF0"/statistics/rx_packets)
	k1tx=$(ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/tx_packets)
	k1rx=$(ip netns exec ns1 cat /sys/class/net/"$IF1"/statistics/rx_packets)
	line="vn0 device rx/tx $d0rx/$d0tx kernel $k0rx/$k0tx; vn1 device rx/tx $d1rx/$d1tx kernel $k1rx/$k1tx"
	if [ "$d0tx" = "$k0tx" ] && [ "$d0rx" = "$k0rx" ] && [ "$d1tx" = "$k1tx" ] && [ "$d1rx" = "$k1rx" ] && [ "${d0tx:-0}" -ge 400 ]; then
		ok=1
		break
	fi
done
vt_info "$line"
if [ "$ok" = 1 ]; then vt_pass ops.counters-match; else vt_fail ops.counters-match "$line"; fi
p=$(/bin/vduse-net stats edge --prometheus 2>&1)
if echo "$p" | grep -q "^vduse_net_frames_total{device=\"vn0\",queue=\"0\",direction=\"tx\"} $d0tx\$" &&
	echo "$p" | grep -q "^vduse_net_frames_total{device=\"vn1\",queue=\"0\",direction=\"rx\"} $d1rx\$"; then
	vt_pass ops.prometheus
else
	vt_fail ops.prometheus "expected vn0 tx $d0tx, vn1 rx $d1rx: $(echo "$p" | grep '^vduse_net_frames_total' | tr '\n' ' ')"
fi
case $s in *'"queue_errors":0'*) ;; *) vt_fail ops.no-queue-errors "$s" ;; esac

step reload
sed -i 's/log-level = "info"/log-level = "debug"/' "$CFG"
kill -HUP "$VN"
if vt_wait_log 10 'reload done: applied log level DEBUG'; then vt_pass ops.reload; else vt_fail ops.reload "$(vt_log_tail)"; fi

step teardown
for d in vn0 vn1; do echo "$d" >/sys/bus/vdpa/drivers/virtio_vdpa/unbind; done
ip netns del ns0
ip netns del ns1
for d in vn0 vn1; do vdpa dev del "$d"; done
if vt_stop "$VN" TERM 10 && [ "$VT_RC" = 0 ]; then vt_pass ops.sigterm-exit; else vt_fail ops.sigterm-exit "rc ${VT_RC:-?}: $(vt_log_tail)"; fi
if [ -e /run/vduse-net/edge.sock ]; then vt_fail ops.socket-removed "edge.sock left behind"; else vt_pass ops.socket-removed; fi
grep -q 'device vn1 destroyed' "$LOG" && vt_pass ops.log-destroyed || vt_fail ops.log-destroyed "$(vt_log_tail)"
if grep -qE ' (ERROR|WARN) ' "$LOG"; then
	vt_info "vduse-net log: $(grep -E ' (ERROR|WARN) ' "$LOG" | tail -n 5)"
fi
step end
