#!/bin/sh
# kernels: 7.3
# vduse: patched
# needs: vduse-net
# memory: 2048
# bundles: qemu
# vm: inner
# modules: +bridge ?kvm_amd
# cpu: qemu64
# timeout: 600
#
# The shared boot of the QEMU scenarios (qemu-cvq, qemu-svq, qemu-migrate): one outer 7.3
# guest, one inner VM run by Debian trixie's QEMU (10.x) on vduse-net devices, then live
# migration of that VM. Each scenario's evidence is judged by its own file,
# /scenarios/<name>.sh (tools/kernel/scenarios/), from what this driver recorded in $E;
# only the scenarios in VDUSE_TEST_SCENARIOS run (without qemu-migrate: no migration).
#
# Network (vduse-net has no TAP port yet: each VM-side device is patched to a peer device
# that the outer guest's own virtio-net drives through virtio_vdpa):
#
#   inner VM nic0 (x-svq=off)  va0 =patch= va1 -+- br0 10.1.0.1 -+- ma1 =patch= ma0  (after
#   inner VM nic1 (x-svq=on)   vs0 =patch= vs1 -+- br1 10.2.0.1 -+- ms1 =patch= ms0   migration)
#
# va0, vs0, ma0, ms0 are bound to vhost_vdpa (QEMU's vhost-vdpa netdevs); the peers to
# virtio_vdpa, as ports of a bridge in the outer guest. Every device: 2 queue pairs + control
# queue (patched vduse.ko), default features, RUST_LOG=debug (each VDUSE request is logged).
#
# Steps: start the devices and bridges; QEMU A boots the VM (KVM inside the TCG outer guest
# when kvm_amd loads there, else TCG: see /lib/qemu-vm.sh); inside the VM: addresses, pings
# both ways on both NICs, `ethtool -L combined 2`, a MAC change, promiscuous on and off,
# pings again. Then (qemu-migrate) a ping sequence runs in the VM while
# QEMU A migrates it to QEMU B (started with -incoming on ma0 and ms0); the ping is stopped
# through B's console. Finally QEMU and the devices stop (their counters go to the logs).
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh
# shellcheck source=tools/kernel/guest/qemu-vm.sh
. /lib/qemu-vm.sh

B=qemu-vm # marker names of this driver's own steps (they count for every member row)
E=/tmp/ev # evidence for the judges
mkdir -p "$E"
export B E
ip() { /sbin/ip "$@"; }

want() { case " $VDUSE_TEST_SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
# Leave 90 s of the guest time limit for the cleanup, the dumps and the judges: a step that
# would run past DEADLINE stops the run as a FAIL with everything recorded so far.
DEADLINE=$(($(cut -d. -f1 /proc/uptime) + ${VDUSE_TEST_TIMEOUT:-900} - 90))
left() { echo $((DEADLINE - $(cut -d. -f1 /proc/uptime))); }
step() {
	_s="$(cut -d' ' -f1 /proc/uptime)"
	echo "$_s $*" >>"$E/steps"
	vt_info "$B: at ${_s}s: $*"
}
# fatal NAME REASON: a step every scenario needs failed; dump what there is and stop.
fatal() {
	vt_fail "$B.$1" "$2"
	cleanup
	exit 0
}

# The devices: one process per patched pair, its own MACs and log.
PAIRS="va vs"
want qemu-migrate && PAIRS="va vs ma ms"
mac_of() {
	case $1 in va) echo 02:00:00:0a:00:01 ;; vs) echo 02:00:00:0b:00:01 ;; ma) echo 02:00:00:0c:00:01 ;; ms) echo 02:00:00:0d:00:01 ;; esac
}
bridge_of() { case $1 in va | ma) echo br0 ;; vs | ms) echo br1 ;; esac; }

cleanup() {
	step cleanup
	for q in A B; do [ -e "$QV/$q.pid" ] && qv_quit $q 20; done
	for p in $PAIRS; do
		for d in ${p}0 ${p}1; do
			[ -e /sys/bus/vdpa/devices/$d ] || continue
			for drv in vhost_vdpa virtio_vdpa; do
				[ -e /sys/bus/vdpa/drivers/$drv/$d ] && echo $d >/sys/bus/vdpa/drivers/$drv/unbind
			done
			vdpa dev del $d 2>/dev/null
		done
		pid=$(cat "$E/$p.pid" 2>/dev/null)
		[ -n "$pid" ] || continue
		if vt_stop "$pid" INT 20; then
			echo "$VT_RC" >"$E/$p.rc"
		else
			echo "killed" >"$E/$p.rc"
		fi
	done
	for q in A B; do qv_dump $q; done
	for p in $PAIRS; do
		echo "---- device log $p (warnings, errors, counters) ----"
		grep -E ' (WARN|ERROR) |vduse-net: '"$p"'[01]: \{' "$E/$p.log" | sed "s/^/$p.log| /" | tail -n 60
	done
	CLEANED=1
}

# ---------------------------------------------------------------- devices and bridges
step "devices: $PAIRS"
for p in $PAIRS; do
	RUST_LOG=debug /bin/vduse-net run --devices 2 --backend patch --name $p --queues 2 \
		--mac "$(mac_of $p)" >"$E/$p.log" 2>&1 &
	echo $! >"$E/$p.pid"
done
for p in $PAIRS; do
	LOG=$E/$p.log
	vt_wait_log 30 "device ${p}1 ready" || fatal devices "vduse-net run --name $p did not come up: $(vt_log_tail)"
	grep -q "device ${p}0 ready:.*+ control queue" "$LOG" ||
		fatal devices "${p}0 has no control queue (patched vduse.ko?): $(grep "device ${p}0 ready" "$LOG")"
done
vt_info "$B: $(grep 'device va0 ready' "$E/va.log")"
for p in $PAIRS; do
	for d in ${p}0 ${p}1; do
		out=$(vdpa dev add name $d mgmtdev vduse 2>&1) || fatal devices "vdpa dev add $d: $out"
	done
	echo ${p}0 >/sys/bus/vdpa/drivers/vhost_vdpa/bind || fatal devices "bind ${p}0 to vhost_vdpa"
	echo ${p}1 >/sys/bus/vdpa/drivers/virtio_vdpa/bind || fatal devices "bind ${p}1 to virtio_vdpa"
done
for p in $PAIRS; do
	node=""
	for _ in $(seq 50); do
		for n in /sys/bus/vdpa/devices/${p}0/vhost-vdpa-*; do [ -e "$n" ] && node=${n##*/}; done
		[ -n "$node" ] && [ -c "/dev/$node" ] && break
		sleep 0.1
	done
	[ -n "$node" ] || fatal devices "no vhost-vdpa node for ${p}0"
	echo "/dev/$node" >"$E/${p}0.node"
	vt_wait 10 vt_vdpa_netdev ${p}1 || fatal devices "no interface for ${p}1 under virtio_vdpa"
	vt_vdpa_netdev ${p}1 >"$E/${p}1.if"
done
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
for br in br0 br1; do
	out=$(ip link add $br type bridge forward_delay 0 2>&1) || fatal bridge "ip link add $br: $out"
done
# The patch wire joins pair i of a peer to pair i of its VM-side device, and a pair the
# VM's driver has not enabled (the VM boots with 1 pair of 2: it has 1 vCPU) takes no
# frames: what the outer's virtio-net sent on its second TX queue waited there until the
# VM enabled 2 pairs (the first ping round lost 1-3 of 3 echoes the outer sent, by which CPU
# its ping ran on: virtio-net maps CPU N to TX queue N by XPS). So the outer transmits on
# queue 0 only, the pair the VM always has; the VM's second pair still carries its own TX
# (and the outer's RX) once it enables it.
ALL_CPUS=$(printf '%x' $(((1 << $(grep -c '^processor' /proc/cpuinfo)) - 1)))
for p in $PAIRS; do
	ifc=$(cat "$E/${p}1.if")
	out=$( (ip link set "$ifc" master "$(bridge_of $p)" && ip link set "$ifc" up) 2>&1) ||
		fatal bridge "$ifc into $(bridge_of $p): $out"
	for q in /sys/class/net/"$ifc"/queues/tx-*; do
		m=0
		[ "${q##*/}" = tx-0 ] && m=$ALL_CPUS
		echo "$m" >"$q/xps_cpus" || fatal bridge "XPS of $ifc ${q##*/} to $m"
	done
done
out=$( (ip addr add 10.1.0.1/24 dev br0 && ip link set br0 up && ip addr add 10.2.0.1/24 dev br1 && ip link set br1 up) 2>&1) ||
	fatal bridge "bridge addresses: $out"
vt_pass $B.devices
vt_info "$B: nodes va0=$(cat $E/va0.node) vs0=$(cat $E/vs0.node); peers $(for p in $PAIRS; do printf '%s=%s ' ${p}1 "$(cat $E/${p}1.if)"; done)"

# ---------------------------------------------------------------- QEMU A boots the VM
VM_MEM=192
# The NICs' MACs are the devices' (va0's and vs0's), given to QEMU as mac= too: the guest
# sees the device's config space MAC, but QEMU replays its own NIC model's MAC through the
# control queue (MAC_ADDR_SET) at every start; without mac= that is QEMU's default
# 52:54:00:12:34:56, the device then filters out the guest's unicast frames until the guest
# sets a MAC itself. QEMU cannot write a VDUSE device's config space, so mac= must equal it.
NIC0_MAC=$(mac_of va) NIC1_MAC=$(mac_of vs)
NIC0_NEW=52:54:00:00:01:99 NIC1_NEW=52:54:00:00:02:99
# qemu_net DEV_CVQ DEV_SVQ: the two vhost-vdpa netdevs and their NICs. mq=on with vectors for
# 2 pairs + control queue; romfile= (no iPXE option ROM: nothing boots from the network).
qemu_net() {
	echo "-netdev type=vhost-vdpa,vhostdev=$1,id=hn0 -device virtio-net-pci,netdev=hn0,id=nic0,mac=$NIC0_MAC,mq=on,vectors=6,romfile=" \
		"-netdev type=vhost-vdpa,vhostdev=$2,id=hn1,x-svq=on -device virtio-net-pci,netdev=hn1,id=nic1,mac=$NIC1_MAC,mq=on,vectors=6,romfile="
}
# QEMU's view of the vhost-vdpa calls (its "log" trace backend, to stderr): ring bases read
# and set, suspends, DMA maps with their address space.
TRACE="-trace enable=vhost_vdpa_get_vring_base -trace enable=vhost_vdpa_set_dev_vring_base -trace enable=vhost_vdpa_suspend -trace enable=vhost_vdpa_dma_map"
step "QEMU A: starting the VM"
t_boot=$(cut -d' ' -f1 /proc/uptime)
# shellcheck disable=SC2046,SC2086 # word splitting of the option lists is intended
qv_start A $VM_MEM $(qemu_net "$(cat $E/va0.node)" "$(cat $E/vs0.node)") $TRACE
echo "$QV_ACCEL" >"$E/accel"
if ! qv_wait_ready A "$(left)"; then
	qv_down A && qv_regs A
	fatal vm-boot "the VM did not reach its /init ($QV_ACCEL, $(left) s left): $(qv_why A) console: $(tail -c 400 $QV/A.console | tr -d '\r' | tr '\n' '|')"
fi
t_ready=$(cut -d' ' -f1 /proc/uptime)
ready=$(grep 'VM: READY' "$QV/A.console" | tr -d '\r')
echo "$t_boot $t_ready" >"$E/boot-times"
vt_info "$B: VM ready after $(awk -v a="$t_boot" -v b="$t_ready" 'BEGIN { printf "%.1f", b - a }') s (accel $QV_ACCEL): $ready"
vt_pass $B.vm-boot

# vm NAME CMD: run CMD in the VM (via the console of the QEMU now running it, $VMQ); the
# output is kept as $E/vm-NAME.out, the status as $E/vm-NAME.rc.
VMQ=A
vm() {
	_t=$(left)
	[ "$_t" -gt 0 ] || fatal time "out of time before '$1' in the VM"
	[ "$_t" -lt 120 ] || _t=120
	qv_run $VMQ "$_t" "$2"
	printf '%s\n' "$QV_OUT" >"$E/vm-$1.out"
	echo "$QV_RC" >"$E/vm-$1.rc"
	[ "$QV_RC" = 0 ]
}
# outer NAME CMD...: the same for a command in the outer guest.
outer() {
	_n=$1
	shift
	"$@" >"$E/outer-$_n.out" 2>&1
	echo $? >"$E/outer-$_n.rc"
}

vm ifaces 'for i in /sys/class/net/eth*; do echo ${i##*/} $(cat $i/address); done' ||
	fatal vm-net "listing the VM's interfaces: $(cat $E/vm-ifaces.out)"
CV=$(awk -v m="$NIC0_MAC" '$2 == m { print $1 }' "$E/vm-ifaces.out")
SV=$(awk -v m="$NIC1_MAC" '$2 == m { print $1 }' "$E/vm-ifaces.out")
[ -n "$CV" ] && [ -n "$SV" ] || fatal vm-net "the VM has no NICs with $NIC0_MAC and $NIC1_MAC: $(cat $E/vm-ifaces.out | tr '\n' ' ')"
echo "$CV $SV" >"$E/vm-ifnames"
vm setup "sysctl -qw net.ipv4.conf.all.arp_notify=1 && ip addr add 10.1.0.2/24 dev $CV && ip link set $CV up && ip addr add 10.2.0.2/24 dev $SV && ip link set $SV up && ethtool -l $CV" ||
	fatal vm-net "configuring $CV and $SV: $(cat $E/vm-setup.out | tr '\n' ' ')"
# Ready for traffic: both VM NICs report their link up (the device's STATUS), and the
# outer's bridge ports forward.
vm link-up "t=0; while [ \$t -lt 100 ]; do [ \$(cat /sys/class/net/$CV/operstate) = up ] && [ \$(cat /sys/class/net/$SV/operstate) = up ] && break; sleep 0.1; t=\$((t + 1)); done; cat /sys/class/net/$CV/operstate /sys/class/net/$SV/operstate" ||
	fatal vm-net "the VM's links did not come up: $(tr '\n' ' ' <"$E/vm-link-up.out")"
for br in br0 br1; do
	vt_wait 10 sh -c "! grep -qv '^3\$' /sys/class/net/$br/brif/*/state" ||
		fatal bridge "$br ports not forwarding: $(cat /sys/class/net/$br/brif/*/state | tr '\n' ' ')"
done
vt_pass $B.vm-net

step "traffic before the control commands"
vm ping-cvq-1 'ping -c 3 -w 30 10.1.0.1'
vm ping-svq-1 'ping -c 3 -w 30 10.2.0.1'
outer ping-cvq-1 ping -c 3 -w 30 10.1.0.2
outer ping-svq-1 ping -c 3 -w 30 10.2.0.2
# per-pair counters after the first round (where a lost echo went)
for p in va vs; do /bin/vduse-net stats $p --json >"$E/stats-$p-round1.json" 2>&1; done

step "control commands from the VM"
for pair in "cvq $CV $NIC0_NEW" "svq $SV $NIC1_NEW"; do
	# shellcheck disable=SC2086
	set -- $pair
	vm "mq-$1" "ethtool -L $2 combined 2 && ethtool -l $2"
	vm "mac-$1" "ip link set $2 address $3 && cat /sys/class/net/$2/address"
	vm "promisc-on-$1" "ip link set $2 promisc on"
	vm "promisc-off-$1" "ip link set $2 promisc off"
done

step "traffic after the control commands"
vm ping-cvq-2 'ping -c 3 -w 30 10.1.0.1'
vm ping-svq-2 'ping -c 3 -w 30 10.2.0.1'
outer ping-cvq-2 ping -c 3 -w 30 10.1.0.2
outer ping-svq-2 ping -c 3 -w 30 10.2.0.2
vm counters "for i in $CV $SV; do echo \$i rx \$(cat /sys/class/net/\$i/statistics/rx_packets) tx \$(cat /sys/class/net/\$i/statistics/tx_packets); done"
for p in va vs; do cp "$E/$p.log" "$E/$p.before-migration.log"; done
cp "$QV/A.stderr" "$E/A.before-migration.stderr"
step "phase 1 done"

# ---------------------------------------------------------------- live migration A -> B
if want qemu-migrate; then
	step "migration: ping sequences in the VM"
	# 5 pings a second on each NIC until stopped; the log shows every reply's sequence number
	vm ping-start "ping -i 0.2 10.1.0.1 >/tmp/mig-cvq.log 2>&1 & echo \$! >/tmp/mig-cvq.pid; ping -i 0.2 10.2.0.1 >/tmp/mig-svq.log 2>&1 & echo \$! >/tmp/mig-svq.pid; sleep 2; grep -c 'bytes from' /tmp/mig-cvq.log"
	step "QEMU B: waiting for the migration on ma0 and ms0"
	# shellcheck disable=SC2046,SC2086
	qv_start B $VM_MEM $(qemu_net "$(cat $E/ma0.node)" "$(cat $E/ms0.node)") $TRACE -incoming "unix:$QV/mig.sock"
	ok=0 t_end=$(($(cut -d. -f1 /proc/uptime) + 60))
	while [ "$(cut -d. -f1 /proc/uptime)" -lt $t_end ] && ! qv_down B; do
		if qv_qmp B 10 '"execute": "query-status"' && [ "$(qv_json_str "$QV_QMP" status)" = inmigrate ]; then
			ok=1
			break
		fi
		sleep 0.5
	done
	# A failed migration fails the qemu-migrate row only (its judge finds no evidence); the
	# other rows are judged on what phase 1 recorded. Why it failed goes to $E/migrate-why.
	if [ $ok = 1 ]; then
		# MIGRATION events (setup, active, device, completed...) in A's monitor log: the
		# timeline, next to any SHUTDOWN or STOP event
		qv_qmp A 20 '"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "events", "state": true}]}' ||
			vt_info "$B: migration events not enabled: ${QV_QMP:-$QV_QMP_WHY}"
		step "migrate A -> B"
		echo "$(cut -d' ' -f1 /proc/uptime)" >"$E/migrate-start"
		if ! qv_qmp A 20 "\"execute\": \"migrate\", \"arguments\": {\"uri\": \"unix:$QV/mig.sock\"}"; then
			echo "QEMU A refused to migrate: ${QV_QMP:-$QV_QMP_WHY}" >"$E/migrate-why"
			ok=0
		fi
	else
		echo "QEMU B never waited for the migration: ${QV_QMP:-$QV_QMP_WHY}; $(qv_why B)" >"$E/migrate-why"
	fi
fi
if want qemu-migrate && [ $ok = 1 ]; then
	# query-migrate until the migration ends (completed, failed, cancelled). It took 3-40 s
	# here (downtime 0.2-1.3 s), the longest on a loaded 2-core host; MIG_SECS leaves room.
	# QEMU A exiting or its guest stopping ends the wait at once, with the reason.
	MIG_SECS=240
	status="" why="" t_0=$(cut -d. -f1 /proc/uptime) limit="MIG_SECS"
	t_end=$((t_0 + MIG_SECS))
	[ $t_end -lt $DEADLINE ] || { t_end=$DEADLINE; limit="the boot's deadline"; }
	while :; do
		if qv_down A; then
			why="during the migration: $(qv_why A)"
			break
		fi
		# 30 s: the monitor waits while the migration thread holds the big lock (the
		# devices' stop and the last RAM pass)
		if qv_qmp A 30 '"execute": "query-migrate"'; then
			echo "$QV_QMP" >"$E/query-migrate"
			status=$(qv_json_str "$QV_QMP" status)
			case $status in completed | failed | cancelled) break ;; esac
		else
			why="query-migrate: ${QV_QMP:-$QV_QMP_WHY}"
		fi
		if [ "$(cut -d. -f1 /proc/uptime)" -ge $t_end ]; then
			why="still '$status' after $(($(cut -d. -f1 /proc/uptime) - t_0)) s ($limit) ($why)"
			break
		fi
		sleep 0.5
	done
	echo "$(cut -d' ' -f1 /proc/uptime)" >"$E/migrate-end"
	case $status in
	completed) why="" ;;
	failed) why="QEMU A: failed: $(qv_json_str "$QV_QMP" error-desc)" ;;
	esac
	if [ "$status" != completed ] && ! qv_down A; then
		vt_info "$B: migration '$status': cancelling"
		qv_qmp A 10 '"execute": "migrate_cancel"'
	fi
	[ -n "$why" ] && echo "$why" >"$E/migrate-why"
	step "migration ${status:-not answered}${why:+: $why}"
	if [ "$status" != completed ]; then
		# a guest that reset: where its vCPU was (QEMU paused it)
		[ -n "$(qv_shutdown A)" ] && qv_regs A
		# what the devices were asked during the migration: the judges cannot explain a
		# failure without it
		n=$(wc -l <"$E/va.before-migration.log")
		echo "---- va0 requests during the migration ----"
		tail -n +"$((n + 1))" "$E/va.log" | grep -v ' TRACE ' | tail -n 80 | sed 's/^/va.log| /'
		for p in ma ms; do
			echo "---- $p requests ----"
			grep -v ' TRACE ' "$E/$p.log" | tail -n 60 | sed "s/^/$p.log| /"
		done
	fi
	qv_qmp B 10 '"execute": "query-status"'
	echo "${QV_QMP:-$QV_QMP_WHY}" >"$E/B-status"
	if [ "$status" = completed ]; then
		VMQ=B
		# let the sequences run on the destination, then stop them (through B's console)
		sleep 4
		# per NIC: the summary and the answered sequence numbers on one line (a line per
		# reply costs seconds each on the nested serial console)
		vm ping-stop "kill -INT \$(cat /tmp/mig-cvq.pid) \$(cat /tmp/mig-svq.pid); sleep 1; for n in cvq svq; do echo \$n | tr a-z A-Z; tail -n 2 /tmp/mig-\$n.log; echo SEQ \$(sed -n 's/.* seq=\\([0-9]*\\) .*/\\1/p' /tmp/mig-\$n.log); done"
		vm after "ip link show $CV; ethtool -l $CV; ip link show $SV; ethtool -l $SV"
	fi
	step "migration phase done"
fi

cleanup
step "judging: $VDUSE_TEST_SCENARIOS"
for s in $VDUSE_TEST_SCENARIOS; do
	if [ -r "/scenarios/$s.sh" ]; then
		# each judge in its own shell: its variables stay its own
		(. "/scenarios/$s.sh")
	else
		vt_fail "$s" "no judge /scenarios/$s.sh in the image"
	fi
done
step done
