#!/bin/sh
# kernels: 6.12 7.2 7.3
# needs: vduse-net
# timeout: 60
# optional: a measurement for the README's feature table, not a regression check
#
# What CREATE_DEV on the stock vduse.ko does with RSS and HASH_REPORT: `vduse-net run
# --queues 2 --features +rss,+hash_report` (with the default control queue). The stock
# module refuses CTRL_VQ (EINVAL); the device retries without it and without what needs it
# (RSS and HASH_REPORT among them) and logs what it dropped: the INFO lines carry that.
# (With the patched module both are accepted: the `rss` scenario records it.)
# shellcheck source=tools/kernel/guest/vduse-test.sh
. /lib/vduse-test.sh

LOG=/tmp/vc.log
/bin/vduse-net run --name vc --queues 2 --features +rss,+hash_report >"$LOG" 2>&1 &
PID=$!
if vt_wait_log 20 'device vc ready'; then
	vt_pass createdev.start
else
	vt_fail createdev.start "$(vt_log_tail)"
fi
grep -E 'ready|refused|offers' "$LOG" | while read -r l; do vt_info "$l"; done
refused=$(sed -n 's/.*device vc ready.*kernel refused: //p' "$LOG")
for f in CTRL_VQ RSS HASH_REPORT; do
	case " $refused " in
	*[\ \[]$f[\ \]]*) vt_info "CREATE_DEV on $VDUSE_TEST_KERNEL ($VDUSE_TEST_VDUSE vduse.ko): $f dropped" ;;
	*) vt_info "CREATE_DEV on $VDUSE_TEST_KERNEL ($VDUSE_TEST_VDUSE vduse.ko): $f accepted" ;;
	esac
done
if vt_stop "$PID" INT 10 && [ "$VT_RC" = 0 ]; then vt_pass createdev.exit; else vt_fail createdev.exit "exit ${VT_RC:-?}"; fi
