#!/bin/sh
# kernels: 7.3
# boot: qemu-vm
#
# The same VM's second NIC, `-netdev type=vhost-vdpa,...,x-svq=on` on device vs0: QEMU
# shadows every virtqueue (its migration path), all of them in address space 0. Judged from
# what the device and the VM recorded before the migration (tools/kernel/boots/qemu-vm.sh):
#   - no group was moved to address space 1 and every IOTLB update was in address space 0;
#   - after DRIVER_OK and before the data queues were enabled, QEMU replayed the MAC and
#     VQ_PAIRS_SET and the device answered both OK; the data queues were enabled after
#     DRIVER_OK and pair 0 carried frames;
#   - the VM's control commands (`ethtool -L combined 2`, a MAC change, promiscuous on/off)
#     reached the device through the shadowed control queue;
#   - pings both ways, before and after the MAC change; no failed replies or refused commands.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh
# shellcheck source=tools/kernel/guest/qemu-evidence.sh
. /lib/qemu-evidence.sh

S=qemu-svq
D=vs0
L=$E/vs.before-migration.log
MAC0=02:00:00:0b:00:01 MAC1=52:54:00:00:02:99
read -r _ SV <"$E/vm-ifnames"

vt_info "$S: $(grep "device $D ready" "$E/vs.log")"
moved=$(grep "$D: vq group [0-9]* -> address space [1-9]" "$L" | head -n 2)
ev_check $S.all-in-asid0 '[ -z "$moved" ]' "x-svq=on should leave every group in address space 0: $moved"
n1=$(grep -c "$D: request [0-9]*: UpdateIotlb { asid: [1-9]" "$L")
n0=$(grep -c "$D: request [0-9]*: UpdateIotlb { asid: 0," "$L")
ev_check $S.iotlb-asid0 '[ "$n0" -gt 0 ] && [ "$n1" = 0 ]' "IOTLB updates: $n0 in address space 0, $n1 elsewhere (want some, none)"
vt_info "$S: IOTLB updates: $n0 in address space 0, $n1 elsewhere"

# DRIVER_OK as the device logs it (QEMU writes FEATURES_OK|DRIVER_OK = 12 after its resets)
after_ok=$(ev_from "$L" "$D: driver bound (DRIVER_OK)")
replay=$(printf '%s\n' "$after_ok" | awk '/SetVqReady \{ index: [0-3], ready: true \}/ { exit } { print }')
ev_check $S.replay-mac 'ev_has "$replay" "$D: control command MacAddrSet($(ev_dec $MAC0)) -> "' \
	"no MAC_ADDR_SET $MAC0 answered OK between DRIVER_OK and the data queues: $(printf '%s\n' "$replay" | grep 'control command' | tr '\n' '|')"
ev_check $S.replay-mq 'ev_has "$replay" "$D: control command MqPairsSet([0-9]*) -> PairsChanged"' \
	"no VQ_PAIRS_SET answered OK between DRIVER_OK and the data queues"
vt_info "$S: replayed: $(printf '%s\n' "$replay" | grep -o 'control command .*' | tr '\n' '|')"
missing=""
for q in 0 1 2 3; do
	ev_has "$after_ok" "$D: request [0-9]*: SetVqReady { index: $q, ready: true }" &&
		ev_has "$after_ok" "$D: vq $q enabled after DRIVER_OK" || missing="$missing $q"
done
ev_check $S.data-vqs-after-driver-ok '[ -z "$missing" ]' "data vq(s)$missing not made ready (SET_VQ_READY) and started after DRIVER_OK"
vt_info "$S: $(printf '%s\n' "$after_ok" | grep -o "$D: vq [0-9]* .*enabled after DRIVER_OK.*" | tr '\n' '|')"

guest=$(printf '%s\n' "$after_ok" | awk 'f { print } /SetVqReady \{ index: [0-3], ready: true \}/ { f = 1 }')
ev_check $S.guest-mq2 'ev_has "$guest" "$D: control command MqPairsSet(2) -> PairsChanged(2)"' \
	"ethtool -L combined 2 did not reach the device: $(cat "$E/vm-mq-svq.out" | tr '\n' ' ')"
ev_check $S.guest-mac 'ev_has "$guest" "$D: control command MacAddrSet($(ev_dec $MAC1)) -> MacChanged"' \
	"the MAC change to $MAC1 did not reach the device: $(cat "$E/vm-mac-svq.out" | tr '\n' ' ')"
ev_check $S.guest-promisc 'ev_has "$guest" "$D: control command Rx { mode: Promisc, on: true } -> " && ev_has "$guest" "$D: control command Rx { mode: Promisc, on: false } -> "' \
	"promiscuous on and off did not both reach the device"
refused=$(grep "$D: .*refused\|control command refused" "$L" | head -n 3)
ev_check $S.no-refused '[ -z "$refused" ]' "$refused"

# Pings both ways, 3 each, none lost: the first round right after the VM's links came up
# (with 1 queue pair), the second after the control commands (2 pairs, the new MAC). The
# counters after the first round show which pairs carried it: the VM drives pair 0 only,
# and the outer transmits on its queue 0 (the boot pins it: an echo it sent on queue 1
# waited in the VM's inactive pair 1 and was lost, 0-2 of 3 answered, before that).
for i in 1 2; do
	for dir in vm-to-outer outer-to-vm; do
		case $dir in
		vm-to-outer) f=$E/vm-ping-svq-$i.out what="VM -> 10.2.0.1" ;;
		*) f=$E/outer-ping-svq-$i.out what="outer -> 10.2.0.2" ;;
		esac
		set -- $(ev_ping "$f")
		sent=${1:-?} got=${2:-0}
		vt_info "$S: round $i, $what: $sent sent, $got answered"
		ev_check $S.ping-$dir-$i '[ "$got" -ge 3 ]' "round $i, $what: $sent sent, $got answered: $(tail -n 2 "$f" | tr '\n' ' ')"
	done
done
vt_info "$S: counters after the first round: $(ev_pairs "$E/stats-vs-round1.json")"

st=$(ev_stats "$E/vs.log" $D)
vt_info "$S: $D counters: $st"
rx=$(ev_pair "$st" 0 rx_frames)
tx=$(ev_pair "$st" 0 tx_frames)
ev_check $S.frames '[ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ]' "pair 0 of $D: rx_frames ${rx:-?} tx_frames ${tx:-?} (counters: ${st:-none})"
fr=$(ev_slow "$st" failed_replies)
ev_check $S.no-failed-replies '[ "$fr" = 0 ]' "$D failed_replies ${fr:-?}"
ev_check $S.device-exit '[ "$(cat "$E/vs.rc" 2>/dev/null)" = 0 ]' "vduse-net (vs) exited $(cat "$E/vs.rc" 2>/dev/null)"
# When anything failed: the device's requests and control commands (no IOTLB lines), for
# the reader of the console log.
if [ -n "${EV_FAILED:-}" ]; then
	echo "---- $D requests before the migration ----"
	grep "$D: " "$L" | grep -v UpdateIotlb | sed 's/^\[[^]]*\] //' | head -n 150 | sed "s/^/$D| /"
fi
