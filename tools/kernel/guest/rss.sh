# The body of the rss and rss-tap scenarios (tools/kernel/scenarios/rss*.sh: what they
# check is described there). The scenario sets PORT (af-packet: the device's port is vpr, a
# veth whose peer vpb is in netns B; tap: the device creates tap vpt, which is moved into
# netns B as the peer) and calls rss_main.
# shellcheck shell=sh
PORT=${PORT:-af-packet}
if [ "$PORT" = tap ]; then PORT_IF=vpt PEER=vpt; else PORT_IF=vpr PEER=vpb; fi

ip() { /sbin/ip "$@"; }
et() { ip netns exec A /bin/ethtool "$@"; }
step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
N=vr
Q=4
FLOWS=48
A_IP=10.77.0.1
B_IP=10.77.0.2
LOG=/tmp/$N.log

# Toeplitz (virtio 1.3 §5.1.6.4.3) in awk: -v key=aa:bb:.. tbl="q0 q1 .." src= dst= mode=l4|ip;
# input lines "SPORT DPORT"; output lines "SPORT DPORT HASH QUEUE".
TOEPLITZ='
function hex(s,   i, v) { v = 0; s = tolower(s); for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return v }
function put(b) { IB[NI++] = b }
function toeplitz(   i, j, h) { h = 0; for (i = 0; i < NI; i++) for (j = 0; j < 8; j++) if (and(rshift(IB[i], 7 - j), 1)) h = xor(h, W[i * 8 + j]); return h }
BEGIN {
	n = split(key, kh, ":")
	for (i = 1; i <= n; i++) { v = hex(kh[i]); for (j = 0; j < 8; j++) K[(i - 1) * 8 + j] = and(rshift(v, 7 - j), 1) }
	for (i = 0; i + 32 <= n * 8; i++) { w = 0; for (j = 0; j < 32; j++) w = w * 2 + K[i + j]; W[i] = w }
	nt = split(tbl, T, " ")
}
{
	NI = 0
	split(src, s, "."); split(dst, d, ".")
	for (i = 1; i <= 4; i++) put(s[i] + 0)
	for (i = 1; i <= 4; i++) put(d[i] + 0)
	if (mode == "l4") { put(int($1 / 256)); put($1 % 256); put(int($2 / 256)); put($2 % 256) }
	h = toeplitz()
	printf "%d %d %.0f %d\n", $1, $2, h, T[h % nt + 1]
}'
toeplitz() { awk -v key="$1" -v tbl="$2" -v src="$B_IP" -v dst="$A_IP" -v mode="$3" "$TOEPLITZ"; }

# The Microsoft RSS verification vector (66.9.149.187:2794 -> 161.142.100.80:1766).
MSKEY=6d:5a:56:da:25:5b:0e:c2:41:67:25:3d:43:a3:8f:b0:d0:ca:2b:cb:ae:7b:30:b4:77:cb:2d:a3:80:30:f2:0c:6a:42:b7:3b:be:ac:01:fa
v4=$(echo "2794 1766" | awk -v key=$MSKEY -v tbl=0 -v src=66.9.149.187 -v dst=161.142.100.80 -v mode=l4 "$TOEPLITZ" | cut -d' ' -f3)
v2=$(echo "2794 1766" | awk -v key=$MSKEY -v tbl=0 -v src=66.9.149.187 -v dst=161.142.100.80 -v mode=ip "$TOEPLITZ" | cut -d' ' -f3)
if [ "$v4" = $((0x51ccc178)) ] && [ "$v2" = $((0x323e8fc2)) ]; then
	vt_pass rss.toeplitz-reference
else
	vt_fail rss.toeplitz-reference "awk Toeplitz gives $v4 / $v2, the test vector 0x51ccc178 / 0x323e8fc2"
fi

# guest: "RX_PACKETS IN_SEGS OUT_RSTS" of the guest's interface and TCP in netns A (per-queue
# packet counts left `ethtool -S` for the netdev queue-stats netlink API in 6.10)
guest() {
	echo "$(ip netns exec A cat /sys/class/net/"$IF"/statistics/rx_packets) $(ip netns exec A awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["InSegs"], $c["OutRsts"] }' /proc/net/snmp)"
}

# dev: "rx0 rx1 rx2 rx3 steered" from the device's stats socket (Prometheus text)
dev() {
	/bin/vduse-net stats "$N" --prometheus 2>/dev/null | awk -v q="$Q" '
		function qn(   s) { s = $0; sub(/.*queue="/, "", s); sub(/".*/, "", s); return s }
		/^vduse_net_frames_total\{/ && /direction="rx"/ { r[qn()] = $NF }
		/^vduse_net_rx_steered_frames_total\{/ { st += $NF }
		END { for (i = 0; i < q; i++) printf "%d ", r[i] + 0; printf "%d", st }'
}

# rx_total_ge N: the guest's interface received at least N packets
rx_total_ge() { [ "$(guest | cut -d' ' -f1)" -ge "$1" ]; }

# sub2 "a b c" "x y z": element-wise difference
sub2() { awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " "); for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? " " : ""), y[i] - x[i] }'; }

# table: the indirection table of `ethtool -x` (entries in order), and KEY
table() {
	out=$(et -x "$IF") || return 1
	KEY=$(echo "$out" | awk '/^RSS hash key:/ { getline; print; exit }')
	TBL=$(echo "$out" | awk '/^RSS hash key:/ { exit } /^ *[0-9]+:/ { for (i = 2; i <= NF; i++) printf "%s ", $i }')
}

# round NAME BASE MODE: FLOWS flows (ports from BASE), expected queues from the current
# table; checks the guest's and the device's counters
round() {
	r_name=$1 r_base=$2 r_mode=$3
	if ! table; then
		vt_fail "rss.$r_name.table" "ethtool -x failed: $out"
		return 1
	fi
	vt_info "$r_name: table ($(echo "$TBL" | wc -w) entries) $(echo "$TBL" | tr -s ' ' | cut -c1-64)...; key $KEY"
	# ports scattered (not in lockstep: Toeplitz is linear, and sequential ports split
	# into equal counts whatever the key); distinct source ports within a round
	awk -v n="$FLOWS" -v b="$r_base" 'BEGIN { for (i = 0; i < n; i++) print 10000 + (i * 7919 + b) % 50000, 1024 + (i * 104729 + 3 * b) % 30000 }' >/tmp/flows
	toeplitz "$KEY" "$TBL" "$r_mode" </tmp/flows >/tmp/expect
	want=$(awk -v q="$Q" '{ c[$4]++ } END { for (i = 0; i < q; i++) printf "%s%d", (i ? " " : ""), c[i] + 0 }' /tmp/expect)
	g0=$(guest) d0=$(dev)
	# one SYN per flow, answered by a RST; busybox nc has no source port for a connect, so
	# B's ephemeral port range is that one port for each
	ip netns exec B timeout 90 sh -c "while read sp dp; do echo \"\$sp \$sp\" >/proc/sys/net/ipv4/ip_local_port_range; nc -w 2 $A_IP \$dp </dev/null >/dev/null 2>&1; done" </tmp/flows
	# counted when the guest's driver has taken them (the device may still be delivering)
	vt_wait 10 rx_total_ge $(($(echo "$g0" | cut -d' ' -f1) + FLOWS))
	sleep 0.3
	g1=$(guest) d1=$(dev)
	got=$(sub2 "$g0" "$g1")
	dd=$(sub2 "$d0" "$d1")
	drx=$(echo "$dd" | cut -d' ' -f1-$Q)
	steered=$(echo "$dd" | cut -d' ' -f$((Q + 1)))
	vt_info "$r_name: $FLOWS flows; expected per RX queue: $want; device RX frames per pair: $drx, rx_steered +$steered; guest rx_packets, Tcp InSegs, OutRsts: +$got"
	if [ "$got" = "$FLOWS $FLOWS $FLOWS" ]; then
		vt_pass "rss.$r_name.guest-received"
	else
		vt_fail "rss.$r_name.guest-received" "guest rx_packets, InSegs, OutRsts +$got, want $FLOWS each (one SYN per flow, one RST back)"
	fi
	if [ "$drx" = "$want" ]; then
		vt_pass "rss.$r_name.device-pairs"
	else
		vt_fail "rss.$r_name.device-pairs" "device per-pair RX $drx, the table says $want"
	fi
	STEERED=$steered WANT=$want
}

start() {
	RUST_LOG="${RSS_LOG:-warn,vduse_net::dataplane::slowpath=info}" \
		/bin/vduse-net run --name $N --backend $PORT --iface $PORT_IF --queues $Q --features +rss,+hash_report >"$LOG" 2>&1 &
	PID=$!
	if ! vt_wait_log 20 "device $N ready"; then
		vt_fail rss.start "no 'device $N ready' within 20 s: $(vt_log_tail)"
		return 1
	fi
	vt_pass rss.start
	ready=$(grep "device $N ready" "$LOG")
	vt_info "$ready"
	refused=$(echo "$ready" | sed -n 's/.*kernel refused: //p')
	for f in RSS HASH_REPORT CTRL_VQ; do
		case " $refused " in
		*[\ \[]$f[\ \]]*) vt_info "CREATE_DEV on $VDUSE_TEST_KERNEL ($VDUSE_TEST_VDUSE vduse.ko): $f refused" ;;
		*) vt_info "CREATE_DEV on $VDUSE_TEST_KERNEL ($VDUSE_TEST_VDUSE vduse.ko): $f accepted" ;;
		esac
	done
}

bind() {
	if ! out=$(vdpa dev add name $N mgmtdev vduse 2>&1); then
		vt_fail rss.bind "vdpa dev add: $out"
		return 1
	fi
	# in the background: a driver probe that hangs on the control queue must not hang the
	# scenario without the device's side of the story
	(echo $N >/sys/bus/vdpa/drivers/virtio_vdpa/bind) 2>/tmp/bind.err &
	if ! vt_wait 30 vt_vdpa_netdev $N || ! vt_wait 30 sh -c "! kill -0 $! 2>/dev/null"; then
		vt_fail rss.bind "virtio_vdpa bind not done in 30 s: $(cat /tmp/bind.err)"
		tail -n 60 "$LOG" | while read -r l; do vt_info "log: $l"; done
		return 1
	fi
	wait $!
	IF=$(vt_vdpa_netdev $N)
	for d in /sys/bus/vdpa/devices/$N/virtio*; do VDEV=$d; done
	vt_pass rss.bind
}

bit() { cut -c$(($1 + 1)) "$VDEV/features"; }

# IPv6 off everywhere first, so nothing but the test's frames reaches the guest; the two
# namespaces; for AF_PACKET the veth vpr (the device's port, here) - vpb (netns B)
prep() {
	echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 &&
		ip netns add A && ip netns add B &&
		ip netns exec A sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6' &&
		ip netns exec B sh -c 'echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6' || return
	[ "$PORT" = tap ] && return
	ip link add vpr type veth peer name vpb && ip link set vpb netns B && ip -n B link set vpb up &&
		ip link set vpr up
}

# tap: the device's tap into netns B, up (before the driver binds: the link-up path is not
# what these rows test)
tapb() {
	ip link set vpt netns B && ip -n B link set vpt up
}

netns() {
	mac_a=$(cat /sys/class/net/"$IF"/address)
	ip link set "$IF" netns A &&
		mac_b=$(ip netns exec B cat /sys/class/net/$PEER/address) &&
		ip -n A addr add $A_IP/24 dev "$IF" && ip -n B addr add $B_IP/24 dev $PEER &&
		ip -n A neigh add $B_IP lladdr "$mac_b" dev "$IF" nud permanent &&
		ip -n B neigh add $A_IP lladdr "$mac_a" dev $PEER nud permanent &&
		ip -n A link set lo up && ip -n B link set lo up &&
		ip -n A link set "$IF" up &&
		ip netns exec A ping -c 1 -w 20 $B_IP
}

stop() {
	ip netns del A 2>/dev/null
	ip netns del B 2>/dev/null
	ip link del vpr 2>/dev/null
	(echo $N >/sys/bus/vdpa/drivers/virtio_vdpa/unbind) 2>/dev/null
	vdpa dev del $N 2>/dev/null
	if vt_stop "$PID" INT 10 && [ "$VT_RC" = 0 ]; then
		vt_pass rss.exit
	else
		vt_fail rss.exit "vduse-net exit ${VT_RC:-?} after SIGINT: $(tail -n 3 "$LOG" | tr '\n' '|')"
	fi
	grep "^vduse-net: $N: {" "$LOG" | while read -r l; do vt_info "$l"; done
	if grep -qE 'panicked|queue stopped' "$LOG"; then
		vt_fail rss.log "$(grep -E 'panicked|queue stopped' "$LOG" | head -n 3 | tr '\n' '|')"
	fi
}

main() {
	if ! out=$(prep 2>&1); then
		vt_fail rss.veth "$out"
		return
	fi
	start || return
	if [ "$PORT" = tap ] && ! out=$(tapb 2>&1); then
		vt_fail rss.tap "$out"
		return
	fi
	bind || return
	f=$(cat "$VDEV/features")
	vt_info "negotiated $f (rss $(bit 60) hash_report $(bit 57) mq $(bit 22) ctrl_vq $(bit 17))"
	if [ "$(bit 60)$(bit 22)$(bit 17)" = 111 ]; then vt_pass rss.negotiated; else vt_fail rss.negotiated "rss/mq/ctrl_vq bits $(bit 60)$(bit 22)$(bit 17): $f"; fi
	HR=$(bit 57)
	if [ "$HR" = 1 ]; then vt_pass rss.hash-report-negotiated; else vt_fail rss.hash-report-negotiated "HASH_REPORT not negotiated: $f"; fi
	if ! out=$(netns 2>&1); then
		vt_fail rss.netns "$out | carrier $(ip netns exec A cat /sys/class/net/"$IF"/carrier 2>&1) | $(dev)"
		tail -n 30 "$LOG" | while read -r l; do vt_info "log: $l"; done
		return
	fi
	vt_pass rss.netns
	if out=$(et -L "$IF" combined $Q 2>&1); then vt_pass rss.combined; else vt_fail rss.combined "ethtool -L combined $Q: $out"; fi
	grep -E 'control command|refused' "$LOG" | while read -r l; do vt_info "log: $l"; done
	vt_info "ethtool -l: $(et -l "$IF" | tr -s ' \t\n' ' ')"
	vt_info "ethtool -n rx-flow-hash tcp4: $(et -n "$IF" rx-flow-hash tcp4 2>&1 | tr -s ' \t\n' ' ')"

	if [ "$HR" = 1 ]; then
		if out=$(et -K "$IF" rxhash on 2>&1); then vt_pass rss.rxhash-on; else vt_fail rss.rxhash-on "ethtool -K rxhash on: $out"; fi
		vt_info "ethtool -k: $(et -k "$IF" | grep -E 'receive-hashing' | tr -s ' \t\n' ' ')"
	fi

	step default table
	round default 20000 l4
	used=$(echo "$WANT" | awk '{ for (i = 1; i <= NF; i++) n += ($i > 0) } END { print n + 0 }')
	if [ "$used" -ge 2 ]; then vt_pass rss.default.spread; else vt_fail rss.default.spread "the default table put $FLOWS flows on $used queue(s): $WANT"; fi

	step weight 1 0 0 0
	if out=$(et -X "$IF" weight 1 0 0 0 2>&1); then vt_pass rss.weight.set; else vt_fail rss.weight.set "$out"; fi
	round weight 22000 l4
	if [ "$WANT" = "$FLOWS 0 0 0" ]; then vt_pass rss.weight.table; else vt_fail rss.weight.table "the table after weight 1 0 0 0 puts flows at $WANT"; fi
	if [ "$STEERED" -gt 0 ]; then vt_pass rss.weight.steered; else vt_fail rss.weight.steered "no frame moved between pairs (rx_steered +0): the port fed pair 0 only?"; fi

	step equal 2
	if out=$(et -X "$IF" equal 2 2>&1); then vt_pass rss.equal2.set; else vt_fail rss.equal2.set "$out"; fi
	round equal2 24000 l4
	if echo "$WANT" | awk '{ exit !($1 > 0 && $2 > 0 && $3 == 0 && $4 == 0) }'; then
		vt_pass rss.equal2.table
	else
		vt_fail rss.equal2.table "equal 2 should use queues 0 and 1, both, and no other: $WANT"
	fi

	step equal 4, rx-flow-hash tcp4 sd
	if out=$(et -X "$IF" equal $Q 2>&1) && out=$(et -N "$IF" rx-flow-hash tcp4 sd 2>&1); then
		vt_pass rss.flow-hash.set
		vt_info "ethtool -n rx-flow-hash tcp4: $(et -n "$IF" rx-flow-hash tcp4 2>&1 | tr -s ' \t\n' ' ')"
		round flow-hash 26000 ip
		used=$(echo "$WANT" | awk '{ for (i = 1; i <= NF; i++) n += ($i > 0) } END { print n + 0 }')
		if [ "$used" = 1 ]; then vt_pass rss.flow-hash.one-queue; else vt_fail rss.flow-hash.one-queue "addresses only, yet $WANT"; fi
	else
		vt_fail rss.flow-hash.set "$out"
	fi
}


rss_main() {
	step start
	main
	stop
	step end
}
