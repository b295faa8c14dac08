#!/bin/sh
# kernels: 6.12 7.3
# needs: vduse-net tc
# modules: +sch_ingress +cls_u32 +act_mirred
# timeout: 600
# memory: 2048
#
# Offloads end to end (issue 11): the kernel's virtio-net over virtio_vdpa on a device
# with `--backend tap`, its netdev in netns A (10.79.0.1), the tap in netns B (10.79.0.2).
#   - the driver negotiated CSUM, GUEST_CSUM, HOST_TSO4/6, GUEST_TSO4/6 and MRG_RXBUF (the
#     virtio device's `features` bit string in sysfs);
#   - 64 MiB over TCP A -> B and B -> A (busybox nc), sha256 equal both ways, timed;
#   - the same with a second device offering none of the offloads (`--features -csum,...`):
#     the timed transfer with offloads off, for the ratio;
#   - the device's counters after each run (offloaded frames passed to the tap, software
#     work, drops) from its exit line.
#   - a third device with `--mtu 9000`: both ends at MTU 9000, 8972-byte pings (9000-byte
#     IP packets) both ways with no IP fragmentation on either side (the Ip FragCreates and
#     ReasmReqds counters of /proc/net/snmp stay put) and DF set: a tc u32 filter on each
#     receiving side counts the 9000-byte IPv4 packets with the DF bit that arrive (busybox
#     ping has no -M do, but Linux sends with DF whenever the packet fits the path MTU,
#     IP_PMTUDISC_WANT), and 16 MiB A -> B with equal sha256.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

ip() { /sbin/ip "$@"; }
step() { vt_info "at $(cut -d' ' -f1 /proc/uptime)s: $*"; }
MIB=64
OFF=-csum,-guest_csum,-host_tso4,-host_tso6,-host_ecn,-guest_tso4,-guest_tso6,-guest_ecn,-mrg_rxbuf

# start NAME LOG ARGS...: vduse-net run in the background; sets PID
start() {
	ps_name=$1 ps_log=$2
	shift 2
	RUST_LOG="warn,vduse_net::dataplane::slowpath=info" \
		/bin/vduse-net run --name "$ps_name" "$@" >"$ps_log" 2>&1 &
	PID=$!
	LOG=$ps_log
	if ! vt_wait_log 20 "device $ps_name ready"; then
		vt_fail "offload.$ps_name.start" "no 'device $ps_name ready' within 20 s: $(vt_log_tail)"
		return 1
	fi
	vt_pass "offload.$ps_name.start"
}

# bind NAME: vdpa dev add + virtio_vdpa; sets IF and VDEV (the virtio device)
bind() {
	if ! out=$(vdpa dev add name "$1" mgmtdev vduse 2>&1); then
		vt_fail "offload.$1.bind" "vdpa dev add: $out"
		return 1
	fi
	if ! out=$( (echo "$1" >/sys/bus/vdpa/drivers/virtio_vdpa/bind) 2>&1); then
		vt_fail "offload.$1.bind" "bind: $out"
		return 1
	fi
	if ! vt_wait 10 vt_vdpa_netdev "$1"; then
		vt_fail "offload.$1.bind" "no netdev under /sys/bus/vdpa/devices/$1"
		return 1
	fi
	IF=$(vt_vdpa_netdev "$1")
	for d in /sys/bus/vdpa/devices/"$1"/virtio*; do VDEV=$d; done
	vt_pass "offload.$1.bind"
}

# bit N: bit N of the negotiated features (virtio's sysfs `features`: one 0/1 per bit)
bit() { cut -c$(($1 + 1)) "$VDEV/features"; }

# features NAME WANT: CSUM(0) GUEST_CSUM(1) GUEST_TSO4(7) GUEST_TSO6(8) HOST_TSO4(11)
# HOST_TSO6(12) MRG_RXBUF(15) all WANT (1 or 0)
features() {
	got="$(bit 0)$(bit 1)$(bit 7)$(bit 8)$(bit 11)$(bit 12)$(bit 15)"
	vt_info "$1: negotiated $(cat "$VDEV/features") (csum guest_csum guest_tso4 guest_tso6 host_tso4 host_tso6 mrg_rxbuf: $got)"
	if [ "$got" = "$2$2$2$2$2$2$2" ]; then
		vt_pass "offload.$1.features"
	else
		vt_fail "offload.$1.features" "offload bits $got, want all $2"
	fi
}

# netns NAME: IF into A (10.79.0.1), tapo into B (10.79.0.2)
netns() {
	ip netns add A && ip -n A link set lo up && ip link set "$IF" netns A &&
		ip -n A addr add 10.79.0.1/24 dev "$IF" && ip -n A link set "$IF" up &&
		ip netns add B && ip -n B link set lo up && ip link set tapo netns B &&
		ip -n B addr add 10.79.0.2/24 dev tapo && ip -n B link set tapo up &&
		ip netns exec A ping -c 1 -w 20 10.79.0.2
}

# transfer NAME FROM_NS TO_NS TO_ADDR PORT: $MIB MiB over TCP, sha256 compared; sets SECS
transfer() {
	dd if=/dev/urandom of=/tmp/blob bs=1M count=$MIB 2>/dev/null
	rm -f /tmp/recv /tmp/nc.hold
	mkfifo /tmp/nc.hold
	ip netns exec "$3" nc -l -p "$5" >/tmp/recv </tmp/nc.hold &
	ps_nc=$!
	exec 3>/tmp/nc.hold
	if ! vt_wait 10 sh -c "/sbin/ip netns exec $3 netstat -ltn | grep -q ':$5 '"; then
		vt_fail "offload.$1.transfer" "listener on $4:$5 did not come up"
	fi
	ps_t0=$(cut -d' ' -f1 /proc/uptime)
	if ! out=$(ip netns exec "$2" timeout 240 nc "$4" "$5" </tmp/blob 2>&1); then
		vt_fail "offload.$1.transfer" "sender failed: $out | $(vt_log_tail)"
	fi
	vt_reap "$ps_nc" 60 || vt_fail "offload.$1.transfer" "the listener did not finish within 60 s"
	exec 3>&-
	ps_t1=$(cut -d' ' -f1 /proc/uptime)
	SECS=$(awk -v a="$ps_t0" -v b="$ps_t1" 'BEGIN { printf "%.1f", b - a }')
	want=$(sha256sum </tmp/blob | cut -d' ' -f1)
	got=$(sha256sum </tmp/recv | cut -d' ' -f1)
	size=$(wc -c </tmp/recv)
	vt_info "$1 transfer $2 -> $3: $size of $((MIB * 1048576)) bytes in $SECS s; sha256 sent $want received $got"
	if [ "$want" = "$got" ]; then
		vt_pass "offload.$1.transfer"
	else
		vt_fail "offload.$1.transfer" "checksum mismatch: received $size bytes"
	fi
	rm -f /tmp/blob /tmp/recv
}

# stop NAME PID LOG: unbind, vdpa dev del, SIGINT; exit 0
stop() {
	( echo "$1" >/sys/bus/vdpa/drivers/virtio_vdpa/unbind ) 2>/dev/null
	vdpa dev del "$1" 2>/dev/null
	if vt_stop "$2" INT 10 && [ "$VT_RC" = 0 ]; then
		vt_pass "offload.$1.exit"
	else
		vt_fail "offload.$1.exit" "vduse-net exit ${VT_RC:-?} after SIGINT: $(tail -n 3 "$3" | tr '\n' '|')"
	fi
	grep "^vduse-net: $1: {" "$3" | while read -r l; do vt_info "$l"; done
	if grep -qE 'panicked|queue stopped' "$3"; then
		vt_fail "offload.$1.log" "$(grep -E 'panicked|queue stopped' "$3" | head -n 3 | tr '\n' '|')"
	fi
}

# run NAME WANT [ARGS...]: one device, both transfers; sets T_AB, T_BA
run() {
	ps_n=$1 ps_want=$2
	shift 2
	T_AB= T_BA=
	if start "$ps_n" "/tmp/$ps_n.log" --backend tap --iface tapo "$@" && bind "$ps_n"; then
		features "$ps_n" "$ps_want"
		if out=$(netns 2>&1); then
			vt_pass "offload.$ps_n.netns"
			step "$ps_n A -> B"
			transfer "$ps_n.a-to-b" A B 10.79.0.2 5001
			T_AB=$SECS
			step "$ps_n B -> A"
			transfer "$ps_n.b-to-a" B A 10.79.0.1 5002
			T_BA=$SECS
		else
			vt_fail "offload.$ps_n.netns" "$out"
		fi
		ip netns del A 2>/dev/null
		ip netns del B 2>/dev/null
	fi
	[ -n "${PID:-}" ] && stop "$ps_n" "$PID" "/tmp/$ps_n.log"
	PID=
}

# snmp NS FIELD: the Ip counter FIELD of /proc/net/snmp in NS
snmp() {
	ip netns exec "$1" awk -v f="$2" '/^Ip:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c[f] }' /proc/net/snmp
}

# df_watch NS DEV: count the 9000-byte IPv4 packets with DF set that DEV in NS receives
# (u32 on the clsact ingress hook; the mirror to lo is only there to have action counters)
df_watch() {
	ip netns exec "$1" tc qdisc add dev "$2" clsact &&
		ip netns exec "$1" tc filter add dev "$2" ingress pref 1 protocol ip u32 \
			match u16 9000 0xffff at 2 match u16 0x4000 0x4000 at 6 action mirred egress mirror dev lo
}

# df_seen NS DEV: packets df_watch counted
df_seen() {
	ip netns exec "$1" tc -s filter show dev "$2" ingress | awk '/Sent/ { print $4; exit }'
}

# jumbo: MTU 9000 end to end on a device started with --mtu 9000
jumbo() {
	if start vj /tmp/vj.log --backend tap --iface tapo --mtu 9000 && bind vj; then
		if out=$(netns 2>&1) && out=$(ip -n A link set "$IF" mtu 9000 && ip -n B link set tapo mtu 9000 2>&1); then
			vt_pass offload.vj.mtu
			if ! out=$(df_watch B tapo 2>&1 && df_watch A "$IF" 2>&1); then
				vt_fail offload.vj.df "tc: $out"
			fi
			fa=$(snmp A FragCreates) rb=$(snmp B ReasmReqds)
			if out=$(ip netns exec A ping -c 3 -s 8972 -w 30 10.79.0.2 2>&1) &&
				out2=$(ip netns exec B ping -c 3 -s 8972 -w 30 10.79.0.1 2>&1); then
				fa2=$(snmp A FragCreates) rb2=$(snmp B ReasmReqds)
				vt_info "vj: 8972-byte pings both ways: $(echo "$out" | grep -E 'received') / $(echo "$out2" | grep -E 'received'); FragCreates in A $fa -> $fa2, ReasmReqds in B $rb -> $rb2"
				if [ "$fa" = "$fa2" ] && [ "$rb" = "$rb2" ]; then
					vt_pass offload.vj.ping-9000
				else
					vt_fail offload.vj.ping-9000 "IP fragmentation seen: FragCreates $fa -> $fa2, ReasmReqds $rb -> $rb2"
				fi
				# Each side's three echo requests arrive whole, DF set (the replies
				# are sent without DF, as Linux's ICMP socket does).
				db=$(df_seen B tapo) da=$(df_seen A "$IF")
				vt_info "vj: 9000-byte IPv4 packets with DF received: B (from A) ${db:-?}, A (from B) ${da:-?}"
				if [ "${db:-0}" -ge 3 ] && [ "${da:-0}" -ge 3 ]; then
					vt_pass offload.vj.df
				else
					vt_fail offload.vj.df "9000-byte DF packets seen: B ${db:-?}, A ${da:-?} (want 3 each)"
				fi
			else
				vt_fail offload.vj.ping-9000 "$(echo "$out $out2" | tail -n 2) | $(vt_log_tail)"
			fi
			ps_mib=$MIB
			MIB=16
			transfer vj.a-to-b A B 10.79.0.2 5003
			MIB=$ps_mib
		else
			vt_fail offload.vj.mtu "$out"
		fi
		ip netns del A 2>/dev/null
		ip netns del B 2>/dev/null
	fi
	[ -n "${PID:-}" ] && stop vj "$PID" /tmp/vj.log
	PID=
}

step offloads on
run von 1
ON_AB=$T_AB ON_BA=$T_BA
step offloads off
run voff 0 --features "$OFF"
vt_info "64 MiB TCP, offloads on: A->B ${ON_AB:-?} s, B->A ${ON_BA:-?} s; off: A->B ${T_AB:-?} s, B->A ${T_BA:-?} s"
if [ -n "$ON_AB" ] && [ -n "$T_AB" ]; then
	vt_info "offload speed-up (off/on time): A->B $(awk -v a="$ON_AB" -v b="$T_AB" 'BEGIN { if (a > 0) printf "%.2f", b / a }'), B->A $(awk -v a="$ON_BA" -v b="$T_BA" 'BEGIN { if (a > 0) printf "%.2f", b / a }')"
fi
step mtu 9000
jumbo
step end
