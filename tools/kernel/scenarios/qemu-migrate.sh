#!/bin/sh
# kernels: 7.3
# boot: qemu-vm
#
# Live migration of the qemu-cvq/qemu-svq VM (tools/kernel/boots/qemu-vm.sh): QEMU A runs it
# on devices va0 (x-svq=off) and vs0 (x-svq=on); QEMU B waits with -incoming on ma0 and ms0
# (other vduse-net devices; their peers are in the same bridges as va0's and vs0's); A
# migrates to B over a unix socket while the VM pings 10.1.0.1 and 10.2.0.1 five times a
# second. Evidence:
#   - QEMU A reports the migration completed (downtime, total time) and B runs the VM;
#   - device 1 (va0) was suspended (VDUSE_F_SUSPEND: QEMU stops it before it reads the ring
#     bases), and every ring base it answered to GET_VQ_STATE is the one QEMU A read
#     (QEMU's vhost_vdpa_get_vring_base trace);
#   - on device 2 (ma0, and ms0) QEMU B replayed the guest's state through the control queue
#     after DRIVER_OK, answered OK: the changed MAC, 2 queue pairs, promiscuous off; ma0
#     started each data queue at the ring position QEMU B set (the migrated one);
#   - the ping sequences went on through device 2 (replies within the last 2 s of each), the
#     losses are reported; ma0 carried frames; the VM still shows its MAC, no PROMISC and 2
#     channels.
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh
# shellcheck source=tools/kernel/guest/qemu-evidence.sh
. /lib/qemu-evidence.sh

S=qemu-migrate
read -r CV SV <"$E/vm-ifnames"
q=$(cat "$E/query-migrate" 2>/dev/null)
status=$(qv_json_str "$q" status)
ev_check $S.completed '[ "$status" = completed ]' "QEMU A's migration ended '$status': $(cat "$E/migrate-why" 2>/dev/null) $q"
vt_info "$S: query-migrate: $q"
down=$(qv_json_num "$q" downtime)
total=$(qv_json_num "$q" total-time)
setup=$(qv_json_num "$q" setup-time)
vt_info "$S: downtime ${down:-?} ms, total ${total:-?} ms, setup ${setup:-?} ms (outer guest $(cat "$E/migrate-start") s -> $(cat "$E/migrate-end") s)"
bs=$(qv_json_str "$(cat "$E/B-status" 2>/dev/null)" status)
ev_check $S.destination-running '[ "$bs" = running ]' "QEMU B is '$bs': $(cat "$E/B-status" 2>/dev/null)"

# --- device 1: suspended, and its GET_VQ_STATE answers are what QEMU read
during=$E/va.during-migration.log
n_before=$(wc -l <"$E/va.before-migration.log")
tail -n +"$((n_before + 1))" "$E/va.log" >"$during"
ev_check $S.source-suspended 'grep -q "va0: request [0-9]*: Suspend" "$during"' \
	"device 1 (va0) saw no SUSPEND during the migration"
trace_before=$(wc -l <"$E/A.before-migration.stderr")
qtrace=$(tail -n +"$((trace_before + 1))" /tmp/qv/A.stderr | grep 'vhost_vdpa_get_vring_base.* svq: 0')
replies=$(sed -n 's/.*va0: request [0-9]*: reply Split { index: \([0-9]*\), avail_index: \([0-9]*\) }.*/\1 \2/p' "$during")
nrep=0 bad=""
while read -r idx avail; do
	[ -n "$idx" ] || continue
	nrep=$((nrep + 1))
	ev_has "$qtrace" "index: $idx num: $avail svq: 0" || bad="$bad vq$idx=$avail"
done <<EOF_R
$replies
EOF_R
vt_info "$S: va0 GET_VQ_STATE answers (vq avail): $(echo "$replies" | tr '\n' ' '); QEMU A read: $(echo "$qtrace" | sed -n 's/.*index: \([0-9]*\) num: \([0-9]*\).*/\1 \2/p' | tr '\n' ' ')"
ev_check $S.vq-state-matches '[ "$nrep" -ge 4 ] && [ -z "$bad" ]' \
	"device 1 answered $nrep GET_VQ_STATE (want >= 4, one per data vq); not what QEMU read:${bad:- none}"

# --- device 2: the guest's state replayed through the control queue after DRIVER_OK
for dev in "ma0 $E/ma.log 52:54:00:00:01:99" "ms0 $E/ms.log 52:54:00:00:02:99"; do
	set -- $dev
	d=$1 log=$2 mac=$3
	after_ok=$(ev_from "$log" "$d: driver bound (DRIVER_OK)")
	vt_info "$S: $d after DRIVER_OK: $(printf '%s\n' "$after_ok" | grep -o "control command .*\|vq group .*" | tr '\n' '|')"
	ev_check $S.replay-mac-$d 'ev_has "$after_ok" "$d: control command MacAddrSet($(ev_dec $mac)) -> MacChanged"' \
		"device 2 ($d) was not given the guest's MAC $mac"
	ev_check $S.replay-mq-$d 'ev_has "$after_ok" "$d: control command MqPairsSet(2) -> PairsChanged(2)"' \
		"device 2 ($d) was not given 2 queue pairs"
	# the guest left promiscuous mode off: QEMU replays that (a device starts promiscuous)
	ev_check $S.replay-rx-$d 'ev_has "$after_ok" "$d: control command Rx { mode: Promisc, on: false } -> "' \
		"device 2 ($d) was not given promiscuous off"
	refused=$(grep "$d: .*refused\|control command refused" "$log" | head -n 3)
	ev_check $S.no-refused-$d '[ -z "$refused" ]' "$refused"
done
# device 2 starts each data queue where QEMU B put it: the migrated ring position
bases=$(sed -n 's/.*ma0: vq \([0-3]\) enabled after DRIVER_OK: size [0-9]*, avail base \([0-9]*\).*/\1 \2/p' "$E/ma.log")
btrace=$(grep 'vhost_vdpa_set_dev_vring_base.* svq: 0' /tmp/qv/B.stderr)
nb=0 bad="" moved=0
while read -r idx base; do
	[ -n "$idx" ] || continue
	nb=$((nb + 1))
	[ "$base" -gt 0 ] && moved=1
	ev_has "$btrace" "index: $idx num: $base svq: 0" || bad="$bad vq$idx=$base"
done <<EOF_B
$bases
EOF_B
vt_info "$S: ma0 started its data queues at (vq base): $(echo "$bases" | tr '\n' ' '); QEMU B set: $(echo "$btrace" | sed -n 's/.*index: \([0-9]*\) num: \([0-9]*\).*/\1 \2/p' | tr '\n' ' ')"
ev_check $S.destination-bases '[ "$nb" -ge 4 ] && [ -z "$bad" ] && [ "$moved" = 1 ]' \
	"device 2 started $nb data queues (want 4), not where QEMU B set them:${bad:- none}; a nonzero base: $moved"
st=$(ev_stats "$E/ma.log" ma0)
vt_info "$S: ma0 counters: $st"
rx=$(ev_pair "$st" 0 rx_frames)
tx=$(ev_pair "$st" 0 tx_frames)
ev_check $S.destination-frames '[ "${rx:-0}" -gt 0 ] && [ "${tx:-0}" -gt 0 ]' "device 2 (ma0) pair 0: rx ${rx:-?} tx ${tx:-?}"

# --- the ping sequences: replies late in each, losses reported
out=$E/vm-ping-stop.out
for nic in CVQ SVQ; do
	seq_log=$(awk -v s="$nic" '$0 == s { f = 1; next } /^(CVQ|SVQ)$/ { f = 0 } f' "$out")
	sent=$(printf '%s\n' "$seq_log" | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1/p')
	got=$(printf '%s\n' "$seq_log" | sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\2/p')
	seqs=$(printf '%s\n' "$seq_log" | sed -n 's/^SEQ //p' | tr ' ' '\n' | sed '/^$/d')
	last=$(printf '%s\n' "$seqs" | tail -n 1)
	gaps=$(printf '%s\n' "$seqs" | awk 'NR > 1 && $1 != p + 1 { printf "%d-%d ", p + 1, $1 - 1 } { p = $1 }')
	vt_info "$S: ping over $nic path: ${sent:-?} sent, ${got:-?} answered, lost $((${sent:-0} - ${got:-0})) (sequence numbers missing: ${gaps:-none}); last answered seq ${last:-none}"
	# 5 a second for 4+ s after the migration: the last 10 must not all be lost
	ev_check $S.ping-continues-$nic '[ -n "$sent" ] && [ -n "$last" ] && [ "$last" -ge $((sent - 10)) ]' \
		"the $nic-path ping did not go on after the migration: sent ${sent:-?}, last answer seq ${last:-none}: $(printf '%s\n' "$seq_log" | tail -n 3 | tr '\n' ' ')"
done
ev_check $S.vm-state 'grep -q "52:54:00:00:01:99" "$E/vm-after.out" && ! grep -q "PROMISC" "$E/vm-after.out" && grep -q "Combined:[[:space:]]*2" "$E/vm-after.out"' \
	"after the migration the VM shows: $(tr '\n' ' ' <"$E/vm-after.out" 2>/dev/null)"
for p in ma ms; do
	ev_check $S.device-exit-$p '[ "$(cat "$E/$p.rc" 2>/dev/null)" = 0 ]' "vduse-net ($p) exited $(cat "$E/$p.rc" 2>/dev/null)"
done
