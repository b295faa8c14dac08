#!/bin/sh
# kernels: 7.3
# boot: qemu-vm
#
# Debian trixie's QEMU (10.x) runs a VM on vduse-net with its control queue isolated:
# `-netdev type=vhost-vdpa,vhostdev=/dev/vhost-vdpa-N -device virtio-net-pci,mq=on`
# (device va0: 2 pairs + control queue, default features, patched vduse.ko on 7.3). The VM
# and the traffic are tools/kernel/boots/qemu-vm.sh's (shared with qemu-svq, qemu-migrate);
# this file judges what the device and the VM recorded before the migration:
#   - SET_VQ_GROUP_ASID moved the control queue's group to address space 1, and IOTLB
#     updates arrived in address space 1 (QEMU's shadow control buffers);
#   - after DRIVER_OK and before the data queues were enabled, QEMU replayed the MAC and
#     VQ_PAIRS_SET through its shadow control queue and the device answered both OK;
#   - every data queue was enabled after DRIVER_OK (SET_VQ_READY), and pair 0 carried frames;
#   - inside the VM, `ethtool -L combined 2`, a MAC change and promiscuous on/off reached the
#     device (through QEMU's shadow control queue: the group is in address space 1);
#   - pings both ways, before and after the MAC change; no failed replies, no refused
#     command, the device process exited 0.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh
# shellcheck source=tools/kernel/guest/qemu-evidence.sh
. /lib/qemu-evidence.sh

S=qemu-cvq
D=va0
L=$E/va.before-migration.log
MAC0=02:00:00:0a:00:01 MAC1=52:54:00:00:01:99
read -r CV _ <"$E/vm-ifnames"

vt_info "$S: $(grep "device $D ready" "$E/va.log")"
# The control queue's group is the last one (one group per pair, then the control queue).
ngroups=$(sed -n "s/.*device $D ready:.* \([0-9]*\) groups,.*/\1/p" "$E/va.log")
cvq_group=$((ngroups - 1))
ev_check $S.cvq-asid1 'grep -q "$D: vq group $cvq_group -> address space 1" "$L"' \
	"no SET_VQ_GROUP_ASID moving group $cvq_group to address space 1: $(grep "$D: vq group" "$L" | tr '\n' '|')"
vt_info "$S: $(grep "$D: vq group" "$L" | head -n 2 | tr '\n' '|')"
n1=$(grep -c "$D: request [0-9]*: UpdateIotlb { asid: 1," "$L")
n0=$(grep -c "$D: request [0-9]*: UpdateIotlb { asid: 0," "$L")
ev_check $S.iotlb-asid1 '[ "$n1" -gt 0 ]' "no IOTLB update in address space 1 (address space 0: $n0)"
vt_info "$S: IOTLB updates: $n0 in address space 0, $n1 in address space 1"

# DRIVER_OK, then the replay, then the data queues.
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
	"ethtool -L combined 2 did not reach the device: $(cat "$E/vm-mq-cvq.out" | tr '\n' ' ')"
ev_check $S.guest-mac 'ev_has "$guest" "$D: control command MacAddrSet($(ev_dec $MAC1)) -> MacChanged"' \
	"the MAC change to $MAC1 did not reach the device: $(cat "$E/vm-mac-cvq.out" | tr '\n' ' ')"
ev_check $S.guest-promisc 'ev_has "$guest" "$D: control command Rx { mode: Promisc, on: true } -> " && ev_has "$guest" "$D: control command Rx { mode: Promisc, on: false } -> "' \
	"promiscuous on and off did not both reach the device"
ev_check $S.vm-view 'grep -q "Combined:[[:space:]]*2" "$E/vm-mq-cvq.out" && grep -qx "$MAC1" "$E/vm-mac-cvq.out"' \
	"the VM does not show 2 combined channels and $MAC1: $(cat "$E/vm-mq-cvq.out" "$E/vm-mac-cvq.out" | tr '\n' ' ')"
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
		vm-to-outer) f=$E/vm-ping-cvq-$i.out what="VM -> 10.1.0.1" ;;
		*) f=$E/outer-ping-cvq-$i.out what="outer -> 10.1.0.2" ;;
		esac
		set -- $(ev_ping "$f")
		sent=${1:-?} got=${2:-0}
		vt_info "$S: round $i, $what: $sent sent, $got answered"
		ev_check $S.ping-$dir-$i '[ "$got" -ge 3 ]' "round $i, $what: $sent sent, $got answered: $(tail -n 2 "$f" | tr '\n' ' ')"
	done
done
vt_info "$S: counters after the first round: $(ev_pairs "$E/stats-va-round1.json")"

st=$(ev_stats "$E/va.log" $D)
vt_info "$S: $D counters: $st"
rx=$(ev_pair "$st" 0 rx_frames)
tx=$(ev_pair "$st" 0 tx_frames)
ev_check $S.frames '[ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ]' "pair 0 of $D: rx_frames ${rx:-?} tx_frames ${tx:-?} (counters: ${st:-none})"
fr=$(ev_slow "$st" failed_replies)
ev_check $S.no-failed-replies '[ "$fr" = 0 ]' "$D failed_replies ${fr:-?}"
ev_check $S.device-exit '[ "$(cat "$E/va.rc" 2>/dev/null)" = 0 ]' "vduse-net (va) exited $(cat "$E/va.rc" 2>/dev/null)"
# When anything failed: the device's requests and control commands (no IOTLB lines), for
# the reader of the console log.
if [ -n "${EV_FAILED:-}" ]; then
	echo "---- $D requests before the migration ----"
	grep "$D: " "$L" | grep -v UpdateIotlb | sed 's/^\[[^]]*\] //' | head -n 150 | sed "s/^/$D| /"
fi
