#!/bin/sh
# kernels: 7.3
# needs: vduse-net target/release/vduse-net-lib-tests
# timeout: 150
#
# 7.3's opt-in VDUSE features, VDUSE_F_QUEUE_READY and VDUSE_F_SUSPEND, on a real kernel.
#   1. `vduse-net run` (RUST_LOG=debug logs every request) bound to virtio_vdpa: the kernel
#      sends SET_VQ_READY for each queue (only with QUEUE_READY negotiated), the device
#      answers them all OK (the kernel marks the device broken otherwise, and the interface
#      would not come up), and its counters show them.
#   2. The same device rebound to vhost_vdpa: `vduse-net pktgen --vhost-vdpa --suspend-check`
#      runs traffic, suspends through VHOST_VDPA_SUSPEND (offered only with
#      VDUSE_F_SUSPEND), then reads every vq's base with VHOST_GET_VRING_BASE (a
#      GET_VQ_STATE message to the device) and reports "suspend":{...,"match":true} when
#      each equals the avail index the driver published.
#   3. The library's real-kernel test (driver::vhost_vdpa real_kernel_end_to_end, #[ignore]
#      elsewhere) with its own device thread: SUSPEND message, RESUME refused, vring base
#      from GET_VQ_STATE, ASID 1 IOTLB, interrupts after reset. The binary is the lib test
#      executable: `cargo test --release --lib --no-run`, copied to
#      target/release/vduse-net-lib-tests (see tools/README.md).
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

DEV=vs
LOG=/tmp/device.log
T=vhost-suspend


# --- 1. SET_VQ_READY under virtio_vdpa ----------------------------------------------------
RUST_LOG=debug /bin/vduse-net run --name $DEV --queues 2 >"$LOG" 2>&1 &
pid=$!
if ! vt_wait_log 15 "device $DEV ready"; then
	vt_fail $T.device "vduse-net run did not come up: $(vt_log_tail)"
	kill "$pid" 2>/dev/null
	exit 0
fi
vt_info "$(grep "device $DEV ready" "$LOG")"
vt_check $T.vdpa-add vdpa dev add name $DEV mgmtdev vduse
vt_check $T.bind-virtio sh -c "echo $DEV > /sys/bus/vdpa/drivers/virtio_vdpa/bind"
if vt_wait_log 10 "DRIVER_OK"; then
	vt_pass $T.driver-ok
else
	vt_fail $T.driver-ok "no DRIVER_OK under virtio_vdpa: $(vt_log_tail)"
fi
sleep 0.5
# The pair virtio-net uses (the stock module refuses CTRL_VQ, so MQ goes too: one pair).
missing=""
for q in 0 1; do
	grep -q "SetVqReady { index: $q, ready: true }" "$LOG" || missing="$missing $q"
done
if [ -z "$missing" ]; then
	vt_pass $T.set-vq-ready-seen
else
	vt_fail $T.set-vq-ready-seen "no SET_VQ_READY(ready) for vq$missing: $(grep -c SetVqReady "$LOG") seen"
fi
vt_info "$(grep -c 'SetVqReady' "$LOG") SET_VQ_READY requests logged"
if grep -qi 'queue_ready' "$LOG" && grep -qi 'suspend' "$LOG"; then
	vt_info "$(grep -i 'queue_ready' "$LOG" | head -n 1)"
fi
echo $DEV >/sys/bus/vdpa/drivers/virtio_vdpa/unbind

# --- 2. suspend + GET_VQ_STATE through vhost-vdpa, against vduse-net's own device ---------
vt_check $T.bind-vhost sh -c "echo $DEV > /sys/bus/vdpa/drivers/vhost_vdpa/bind"
node=""
for i in $(seq 50); do
	for n in /sys/bus/vdpa/devices/"$DEV"/vhost-vdpa-*; do [ -e "$n" ] && node=${n##*/}; done
	[ -n "$node" ] && [ -c "/dev/$node" ] && break
	sleep 0.1
done
if [ -n "$node" ]; then
	/bin/vduse-net pktgen --vhost-vdpa "/dev/$node" --queues 2 --frames 2000 --duration 60 \
		--suspend-check --json >/tmp/pktgen.out 2>/tmp/pktgen.err
	rc=$?
	out=$(grep '^{' /tmp/pktgen.out | tail -n 1)
	vt_info "pktgen exit $rc: $(echo "$out" | grep -o '"suspend":{.*}' | head -c 600)"
	if echo "$out" | grep -q '"suspend":{.*"match":true'; then
		vt_pass $T.suspend-vq-state
	else
		vt_fail $T.suspend-vq-state "pktgen --suspend-check reported no matching vq state (exit $rc): $(tail -n 2 /tmp/pktgen.err)"
	fi
	if grep -q 'request [0-9]*: Suspend' "$LOG" && grep -q 'request [0-9]*: GetVqState' "$LOG"; then
		vt_pass $T.suspend-messages
	else
		vt_fail $T.suspend-messages "the device saw no SUSPEND and GET_VQ_STATE messages"
	fi
	echo $DEV >/sys/bus/vdpa/drivers/vhost_vdpa/unbind
else
	vt_fail $T.bind-vhost "no vhost-vdpa node for $DEV"
fi
vdpa dev del $DEV
kill -INT "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
if kill -0 "$pid" 2>/dev/null; then
	vt_fail $T.stop "vduse-net did not exit on SIGINT"
	kill -9 "$pid"
else
	wait "$pid"
	rc=$?
	[ "$rc" = 0 ] || vt_fail $T.stop "vduse-net exited $rc: $(vt_log_tail)"
fi
stats=$(grep "vduse-net: $DEV: {" "$LOG")
vt_info "device stats: $(echo "$stats" | grep -o '"slow_path":{[^}]*}')"
if echo "$stats" | grep -q '"set_vq_ready":[1-9]' && echo "$stats" | grep -q '"failed_replies":0[,}]'; then
	vt_pass $T.set-vq-ready-answered
else
	vt_fail $T.set-vq-ready-answered "counters: $(echo "$stats" | grep -o '"slow_path":{[^}]*}')"
fi
grep ' ERROR \| WARN ' "$LOG" | sed 's/^/    /'

# --- 3. the library's real-kernel test ----------------------------------------------------
if /bin/vduse-net-lib-tests --ignored --exact driver::vhost_vdpa::tests::real_kernel_end_to_end \
	--nocapture --test-threads 1 >/tmp/libtest.out 2>&1; then
	vt_pass $T.lib-real-kernel-end-to-end
	vt_info "$(grep 'real_kernel_end_to_end:' /tmp/libtest.out)"
else
	vt_fail $T.lib-real-kernel-end-to-end "$(grep -v '^$' /tmp/libtest.out | tail -n 6)"
fi
grep -q '1 passed' /tmp/libtest.out || vt_fail $T.lib-real-kernel-end-to-end "the test did not run: $(tail -n 2 /tmp/libtest.out)"
