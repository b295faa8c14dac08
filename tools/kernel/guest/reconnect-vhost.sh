# Reconnect, second phase (same boot as reconnect.sh, which sources this at its end): a
# loopback device bound to vhost_vdpa, driven by `vduse-net pktgen --vhost-vdpa` with
# integrity checks on every frame and --ride-through (a restart is expected mid-run).
#  1. kill -9 of the daemon mid-run, restart with the same command: pktgen keeps running;
#     0 integrity errors, 0 driver errors (a used entry for an id not in flight, i.e.
#     published twice, is one); frames lost or seen twice at the cut are reported. With
#     the patched module the control queue's group (pktgen moved it to ASID 1) must still
#     be in ASID 1 after the restart: read from the new process (its reattach log line and
#     its stats socket), not assumed.
#  2. Upgrade: the restarted daemon runs with --keep-device; SIGTERM stops it leaving the
#     device and its log, and a copy of the binary at another path (/tmp/vduse-net-next:
#     the same build, so "new" means a new file and a new process, not new code) takes the
#     device over while a second pktgen run keeps going.
# shellcheck shell=sh
T=reconnect.vhost
VDEV=vl
LOG=/tmp/vl1.log
# pktgen: frames per second (a steady load that leaves the guest's 2 CPUs room for the
# restart), run length (long enough for an 8 s outage, seen on a loaded machine, to end
# inside the run; and the ASID check reads the device while the first pktgen still holds
# it: its exit resets the device, which puts every group back in ASID 0), how long it
# waits without progress while sending.
PG_RATE=100000
PG_SECS=20
PG_SECS_KILL=20
PG_RIDE=20

vjson() { echo "$1" | sed -n "s/.*\"$2\":\([0-9.][0-9.]*\).*/\1/p" | head -n 1; }
vstart() {
	_bin=$1
	shift
	RUST_LOG=info exec "$_bin" run --name $VDEV --queues 1 "$@" 2>&1
}

# pg_start OUT SECS: pktgen over the node in the background ($PG is its pid).
pg_start() {
	/bin/vduse-net pktgen --vhost-vdpa "/dev/$node" --queues 1 --rate $PG_RATE --duration "$2" \
		--ride-through $PG_RIDE --json >"$1.out" 2>"$1.err" &
	PG=$!
}

# pg_judge NAME OUT: wait for pktgen, then judge its report.
pg_judge() {
	if ! vt_reap "$PG" $((PG_SECS_KILL + PG_RIDE + 30)); then
		vt_fail "$T.$1" "pktgen did not finish in time: $(tail -n 3 "$2.err" | tr '\n' '|')"
		return 1
	fi
	_rc=$VT_RC
	_out=$(grep '^{' "$2.out" | tail -n 1)
	_rt=$(echo "$_out" | grep -o '"ride_through":{[^}]*}')
	vt_info "$1: pktgen exit $_rc: tx $(vjson "$_out" tx_frames) rx $(vjson "$_out" rx_frames) integrity_errors $(vjson "$_out" integrity_errors) driver_errors $(vjson "$_out" driver_errors); $_rt"
	_pause=$(vjson "$_rt" longest_pause_s)
	_after=$(vjson "$_rt" rx_after_pause)
	if [ "$_rc" != 0 ] || [ -z "$_out" ]; then
		vt_fail "$T.$1" "pktgen exit $_rc: $(tail -n 3 "$2.err" | tr '\n' '|')"
	elif [ "$(vjson "$_out" integrity_errors)" != 0 ] || [ "$(vjson "$_out" driver_errors)" != 0 ]; then
		vt_fail "$T.$1" "integrity or driver errors: $_out"
	# The restart must be inside the run: a pause of at least 0.1 s, frames after it.
	elif ! awk "BEGIN { exit !($_pause >= 0.1) }" || [ "${_after:-0}" -lt 1000 ]; then
		vt_fail "$T.$1" "no restart seen inside the run (longest pause $_pause s, $_after frames after it)"
	else
		vt_pass "$T.$1"
	fi
}

step "vhost phase"
vstart /bin/vduse-net >"$LOG" &
VN=$!
if ! vt_wait_log 20 "device $VDEV ready"; then
	vt_fail $T.start "no 'device $VDEV ready' within 20 s: $(vt_log_tail)"
	vt_stop "$VN" INT 5
	return 0
fi
VCVQ=0
grep -q "device $VDEV ready:.*+ control queue" "$LOG" && VCVQ=1
vdpa dev add name $VDEV mgmtdev vduse || vt_fail $T.vdpa-add "vdpa dev add $VDEV"
echo $VDEV >/sys/bus/vdpa/drivers/vhost_vdpa/bind || vt_fail $T.bind "bind $VDEV to vhost_vdpa"
node=""
for _i in $(seq 50); do
	for n in /sys/bus/vdpa/devices/$VDEV/vhost-vdpa-*; do [ -e "$n" ] && node=${n##*/}; done
	[ -n "$node" ] && [ -c "/dev/$node" ] && break
	sleep 0.1
done
if [ -z "$node" ]; then
	vt_fail $T.node "no vhost-vdpa node for $VDEV"
	vt_stop "$VN" INT 5
	return 0
fi

# --- 1. kill -9 mid-run
pg_start /tmp/pg1 $PG_SECS_KILL
# Traffic first: the device's first IOTLB map and its queues started (pktgen is up).
sleep 3
t0=$(now_ms)
kill -KILL "$VN"
wait "$VN" 2>/dev/null
LOG=/tmp/vl2.log
vstart /bin/vduse-net --keep-device >"$LOG" &
VN=$!
if vt_wait_log 20 "$VDEV: reattached: dataplane resumed"; then
	vt_pass $T.reattached
else
	vt_fail $T.reattached "no 'reattached': $(grep -i 'reattach\|error' "$LOG" | tr '\n' '|')"
fi
vt_info "kill -9: kill to reattached $(($(now_ms) - t0)) ms; $(grep "$VDEV: reattached: dataplane" "$LOG")"
# The control queue's group after the restart, from the new process while pktgen (which
# put it in ASID 1) still drives the device: its reattach line and its stats socket.
if [ "$VCVQ" = 1 ]; then
	# The stats socket comes up just after the devices ("N device(s) up"), a moment
	# after the reattach line.
	vt_wait_log 10 "device(s) up" || vt_info "no 'device(s) up' in the log"
	vt_wait 10 sh -c "/bin/vduse-net stats $VDEV --json | grep -q group_asid"
	st=$(/bin/vduse-net stats $VDEV --json 2>&1 | tr -d ' \n')
	ga=$(echo "$st" | grep -o '"group_asid":.\{0,100\}' | head -n 1)
	vt_info "after the restart, the device's stats: $ga"
	# 1 pair: vq 2 is the control queue, alone in group 1
	if ! vt_running "$PG"; then
		vt_fail $T.cvq-asid1-kept "pktgen had ended before the stats were read (its exit resets the groups to ASID 0): no evidence either way; stats: $ga"
	elif grep "$VDEV: reattached" "$LOG" | grep -q 'address space: 0->0 1->1;' &&
		echo "$st" | grep -q '"group":1,"asid":1,"vqs":\[2\]'; then
		vt_pass $T.cvq-asid1-kept
	else
		vt_fail $T.cvq-asid1-kept "the control queue's group is not in ASID 1 after the restart: $(grep "$VDEV: reattached" "$LOG"); stats: $ga ($(echo "$st" | head -c 300))"
	fi
else
	vt_info "no control queue on this module: no group in ASID 1 to check"
fi
pg_judge kill9 /tmp/pg1

# --- 2. upgrade: SIGTERM with --keep-device, a new binary file takes over
cp /bin/vduse-net /tmp/vduse-net-next
pg_start /tmp/pg2 $PG_SECS
sleep 3
t0=$(now_ms)
if vt_stop "$VN" TERM 10 && [ "$VT_RC" = 0 ]; then
	vt_pass $T.keep-stop
else
	vt_fail $T.keep-stop "--keep-device SIGTERM: exit ${VT_RC:-?}: $(vt_log_tail)"
fi
t_stop=$(now_ms)
if [ -e /dev/vduse/$VDEV ] && [ -e /run/vduse-net/$VDEV.state ]; then
	vt_pass $T.keep-kept
else
	vt_fail $T.keep-kept "--keep-device left: $(ls /dev/vduse /run/vduse-net 2>&1 | tr '\n' ' ')"
fi
LOG=/tmp/vl3.log
vstart /tmp/vduse-net-next >"$LOG" &
VN=$!
if vt_wait_log 20 "$VDEV: reattached: dataplane resumed"; then
	vt_pass $T.upgrade-reattached
else
	vt_fail $T.upgrade-reattached "the new binary did not take over: $(grep -i 'reattach\|error' "$LOG" | tr '\n' '|')"
fi
vt_info "upgrade: SIGTERM to exit $((t_stop - t0)) ms, to reattached by /tmp/vduse-net-next $(($(now_ms) - t0)) ms"
pg_judge upgrade /tmp/pg2

if dmesg | grep -q 'WARNING:'; then
	vt_fail $T.kernel-warn "$(dmesg | grep -A3 'WARNING:' | head -n 8 | tr '\n' '|')"
else
	vt_pass $T.kernel-warn
fi
echo $VDEV >/sys/bus/vdpa/drivers/vhost_vdpa/unbind
vdpa dev del $VDEV || vt_fail $T.vdpa-del $VDEV
if vt_stop "$VN" INT 10 && [ "$VT_RC" = 0 ]; then vt_pass $T.stop; else vt_fail $T.stop "exit ${VT_RC:-?}: $(vt_log_tail)"; fi
if [ -e /dev/vduse/$VDEV ] || [ -e /run/vduse-net/$VDEV.state ]; then
	vt_fail $T.destroyed "left behind: $(ls /dev/vduse /run/vduse-net 2>&1 | tr '\n' ' ')"
else
	vt_pass $T.destroyed
fi
grep "^vduse-net: $VDEV: {" "$LOG" | while read -r l; do vt_info "$l"; done
grep -E ' (ERROR|WARN) ' /tmp/vl1.log /tmp/vl2.log /tmp/vl3.log | head -n 8 | while read -r l; do vt_info "log: $l"; done
