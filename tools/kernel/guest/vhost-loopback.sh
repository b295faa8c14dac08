# The body of the vhost-loopback and ctrlvq-vhost scenarios (sourced after the
# scenario sets CTRLVQ=0 or 1); see tools/kernel/scenarios/vhost-loopback.sh.
# shellcheck shell=sh disable=SC2154
DEV=vl
LOG=/tmp/device.log
FRAMES=${VHOST_FRAMES:-5000}
T=${VDUSE_TEST_SCENARIO:-vhost-loopback}

json_num() { echo "$1" | sed -n "s/.*\"$2\":\([0-9][0-9]*\).*/\1/p" | head -n 1; }

RUST_LOG=info /bin/vduse-net run --name $DEV --queues 2 >"$LOG" 2>&1 &
pid=$!
if ! vt_wait_log 15 "device $DEV ready"; then
	vt_fail "$T.device" "vduse-net run did not come up: $(vt_log_tail)"
	kill "$pid" 2>/dev/null
	exit 0
fi
vt_info "$(grep "device $DEV ready" "$LOG")"
has_cvq=0
grep -q "device $DEV ready:.*+ control queue" "$LOG" && has_cvq=1
if [ "$CTRLVQ" = 1 ]; then
	if [ $has_cvq = 1 ]; then vt_pass "$T.ctrlvq-negotiated"; else vt_fail "$T.ctrlvq-negotiated" "no control queue on the patched module"; fi
fi

vt_check "$T.vdpa-add" vdpa dev add name $DEV mgmtdev vduse
vt_check "$T.bind" sh -c "echo $DEV > /sys/bus/vdpa/drivers/vhost_vdpa/bind"
node=""
for i in $(seq 50); do
	for n in /sys/bus/vdpa/devices/"$DEV"/vhost-vdpa-*; do [ -e "$n" ] && node=${n##*/}; done
	[ -n "$node" ] && [ -c "/dev/$node" ] && break
	sleep 0.1
done
if [ -z "$node" ]; then
	vt_fail "$T.node" "no vhost-vdpa node for $DEV"
	kill "$pid"
	exit 0
fi
vt_info "driver node /dev/$node"

/bin/vduse-net pktgen --vhost-vdpa "/dev/$node" --queues 2 --frames "$FRAMES" --duration 60 \
	--foreign-iova-check --json >/tmp/pktgen.out 2>/tmp/pktgen.err
rc=$?
out=$(grep '^{' /tmp/pktgen.out | tail -n 1)
vt_info "pktgen exit $rc: $out"
if [ -z "$out" ]; then
	vt_fail "$T.pktgen" "pktgen --vhost-vdpa produced no JSON (exit $rc): $(tail -n 3 /tmp/pktgen.err)"
else
	tx=$(json_num "$out" tx_frames)
	rx=$(json_num "$out" rx_frames)
	lost=$(json_num "$out" lost)
	bad=$(json_num "$out" integrity_errors)
	if [ -n "$tx" ] && [ "$tx" -ge "$FRAMES" ] && [ "$rx" = "$tx" ] && [ "$lost" = 0 ] && [ "$bad" = 0 ]; then
		vt_pass "$T.traffic"
	else
		vt_fail "$T.traffic" "tx $tx rx $rx lost $lost integrity_errors $bad (want tx >= $FRAMES, rx = tx, 0 lost/corrupt)"
	fi
	if echo "$out" | grep -q '"foreign_iova":{[^}]*"refused":true'; then
		vt_pass "$T.foreign-iova-refused"
	else
		vt_fail "$T.foreign-iova-refused" "pktgen reported no refused foreign-ASID descriptor: $(echo "$out" | grep -o '"foreign_iova":{[^}]*}')"
	fi
fi

# --- QEMU's order: DRIVER_OK first, then the queues, the control queue first with its
# state replayed through it (MAC_ADDR_SET, VQ_PAIRS_SET) and answered. 7.3 tells the device
# with SET_VQ_READY messages; 7.2 does not, and the device finds the queues by polling
# VQ_GET_INFO. Each queue the device started late logs "vq N ... enabled after DRIVER_OK".
late0=$(grep -c "enabled after DRIVER_OK" "$LOG")
/bin/vduse-net pktgen --vhost-vdpa "/dev/$node" --queues 2 --frames 2000 --duration 60 --enable-order qemu \
	--json >/tmp/pktgen-qemu.out 2>/tmp/pktgen-qemu.err
rc=$?
out=$(grep '^{' /tmp/pktgen-qemu.out | tail -n 1)
tx=$(json_num "$out" tx_frames)
rx=$(json_num "$out" rx_frames)
lost=$(json_num "$out" lost)
bad=$(json_num "$out" integrity_errors)
vt_info "pktgen --enable-order qemu exit $rc: tx $tx rx $rx lost $lost integrity_errors $bad"
if [ -n "$tx" ] && [ "$tx" -ge 2000 ] && [ "$rx" = "$tx" ] && [ "$lost" = 0 ] && [ "$bad" = 0 ]; then
	vt_pass "$T.qemu-order-traffic"
else
	vt_fail "$T.qemu-order-traffic" "exit $rc, tx $tx rx $rx lost $lost integrity_errors $bad: $(tail -n 3 /tmp/pktgen-qemu.err)"
fi
late=$(($(grep -c "enabled after DRIVER_OK" "$LOG") - late0))
# both pairs and the control queue; without the control queue (stock modules) there is no
# MQ, and the driver uses one pair
if [ $has_cvq = 1 ]; then want=5; else want=2; fi
grep "enabled after DRIVER_OK" "$LOG" | tail -n "$want" | while read -r l; do vt_info "$l"; done
if [ "$late" -ge "$want" ]; then
	vt_pass "$T.qemu-order-late-enables"
else
	vt_fail "$T.qemu-order-late-enables" "$late queues started after DRIVER_OK, want $want"
fi
if [ "$CTRLVQ" = 1 ]; then
	if grep -q "control command MacAddrSet" "$LOG"; then
		vt_pass "$T.qemu-order-replay"
	else
		vt_fail "$T.qemu-order-replay" "no MAC_ADDR_SET replayed through the control queue: $(grep 'control command' "$LOG" | tr '\n' '|')"
	fi
fi

if [ $has_cvq = 1 ]; then
	if grep -q "vq group [0-9]* -> address space 1" "$LOG"; then
		vt_pass "$T.cvq-asid1"
		vt_info "$(grep 'vq group [0-9]* -> address space' "$LOG" | tail -n 1)"
	else
		vt_fail "$T.cvq-asid1" "the device never saw SET_VQ_GROUP_ASID to 1: $(vt_log_tail)"
	fi
else
	vt_info "no control queue on this module (kernel refused CTRL_VQ): no group to move to ASID 1"
fi
if [ "$CTRLVQ" = 1 ]; then
	if grep -q "control command MqPairsSet(2) -> PairsChanged(2)" "$LOG"; then
		vt_pass "$T.cvq-mq-pairs"
	else
		vt_fail "$T.cvq-mq-pairs" "no VQ_PAIRS_SET 2 through the control queue: $(grep 'control command' "$LOG" | tr '\n' '|')"
	fi
	if grep -q "control queue.*asid 1" "$LOG"; then
		vt_fail "$T.cvq-errors" "$(grep 'control queue.*asid 1' "$LOG" | head -n 1)"
	fi
fi

echo $DEV >/sys/bus/vdpa/drivers/vhost_vdpa/unbind
vdpa dev del $DEV
kill -INT "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
if kill -0 "$pid" 2>/dev/null; then
	vt_fail "$T.stop" "vduse-net did not exit on SIGINT"
	kill -9 "$pid"
	exit 0
fi
wait "$pid"
rc=$?
stats=$(grep "vduse-net: $DEV: {" "$LOG")
vt_info "device stats: $stats"
[ "$rc" = 0 ] || vt_fail "$T.stop" "vduse-net exited $rc: $(vt_log_tail)"
# The foreign-ASID descriptor must have been caught by the device, not just unanswered.
if echo "$stats" | grep -q '"queue_errors":[1-9]'; then
	vt_pass "$T.foreign-iova-counted"
else
	vt_fail "$T.foreign-iova-counted" "the device counted no queue error for the foreign-ASID descriptor"
fi
grep ' ERROR \| WARN ' "$LOG" | sed 's/^/    /'
