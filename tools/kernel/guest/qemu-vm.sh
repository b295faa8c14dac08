# Inner VMs for the QEMU scenarios, installed as /lib/qemu-vm.sh in the outer guest
# (busybox sh). Needs the "# bundles: qemu" and "# vm: inner" scenario headers: trixie's
# QEMU as /bin/qemu-system-x86_64 and the inner kernel and initramfs in /opt/vm.
# shellcheck shell=sh
#
#   qv_start NAME MEM_MIB [QEMU ARGS...]  start QEMU NAME in the background: TCG, the inner
#                                     kernel (PVH) and initramfs, guest RAM as a shared memfd
#                                     (vhost-vdpa maps it), console and QMP monitor on FIFOs;
#                                     KVM when the outer guest has it (see QV_ACCEL), else TCG
#   qv_wait_ready NAME SECS           wait for the inner /init's "VM: READY" line
#   qv_run NAME SECS CMD              run CMD (one line of sh) in the VM through NAME's console;
#                                     QV_RC = its status (or "timeout"), QV_OUT = its output
#   qv_qmp NAME SECS JSON             a QMP command; QV_QMP = the answer line, or empty and
#                                     QV_QMP_WHY = why there is none (QEMU gone, no answer)
#   qv_mon NAME SECS CMD              an HMP command (through QMP); QV_MON = its text
#   qv_shutdown NAME                  the reason of NAME's SHUTDOWN event (guest-reset,
#                                     guest-shutdown, ...); empty while the guest runs
#   qv_down NAME                      true when QEMU NAME exited or its guest shut down
#   qv_why NAME                       one line: why NAME stopped (exit, SHUTDOWN reason, the
#                                     last lines of its stderr and console)
#   qv_regs NAME                      after a guest reset: the vCPU registers (info registers)
#   qv_quit NAME SECS                 "quit" through QMP, then reap QEMU (SIGKILL if late)
#   qv_dump NAME                      print NAME's console, monitor and stderr logs, prefixed
#
# Files in /tmp/qv: NAME.console (all console output), NAME.monitor, NAME.stderr (QEMU's own
# messages and its -trace output), NAME.pid. The console protocol is tools/kernel/vm/init's:
# "RUN <id> <cmd>" in; "VM-OUT <id>: <line>"... and "VM-RC <id> <status>" out. The console
# belongs to whichever QEMU runs the VM: after a migration, talk to the destination.
#
# QMP: one writer (these functions, one command per line, each with its own "id") and one
# reader (a cat that appends everything QEMU says to NAME.monitor); an answer is the line
# that carries its "id", so events ({"event": ...}, no id) interleaved with answers are
# never mistaken for one. A guest reset or power-off pauses QEMU (-action shutdown=pause
# with -no-reboot) instead of ending it: its SHUTDOWN event then says why the guest stopped,
# and its registers can still be read (qv_regs); "quit" still ends QEMU.

QV=/tmp/qv
QV_ID=0
mkdir -p "$QV"

# The inner kernel command line: quiet, no KASLR and no timer checks (nothing to randomize
# or verify in a test VM; both cost seconds under nested TCG), and tsc trusted.
QV_APPEND="console=ttyS0 quiet panic=-1 nokaslr no_timer_check tsc=reliable mitigations=off"

# qv_accel: QV_ACCEL, the inner VM's accelerator. The outer guest runs under TCG on a CPU
# model with SVM, which TCG emulates, so kvm_amd loads there (shadow paging: no nested
# paging): KVM then runs the inner guest's code directly on the outer TCG, where TCG inside
# TCG translates everything twice (the inner kernel took 77-155 s to reach /init that way
# on a quiet machine, over 10 minutes on a loaded one; under KVM about 35-55 s).
# VDUSE_TEST_INNER_ACCEL (from VDUSE_NET_INNER_ACCEL on the host) forces one: kvm or tcg.
qv_accel() {
	[ -n "${QV_ACCEL:-}" ] && return 0
	case ${VDUSE_TEST_INNER_ACCEL:-} in
	kvm) QV_ACCEL=kvm ;;
	tcg) QV_ACCEL=tcg,tb-size=256 ;; # two QEMUs share the outer guest during a migration
	*) if [ -c /dev/kvm ]; then QV_ACCEL=kvm; else QV_ACCEL=tcg,tb-size=256; fi ;;
	esac
}

qv_start() {
	_qv_n=$1 _qv_mem=$2
	shift 2
	rm -f "$QV/$_qv_n".*
	mkfifo "$QV/$_qv_n.con.in" "$QV/$_qv_n.con.out" "$QV/$_qv_n.mon.in" "$QV/$_qv_n.mon.out"
	# A holder keeps each input FIFO open read-write: a line written before QEMU opens it
	# (qmp_capabilities) stays in the pipe instead of vanishing with the last open file,
	# and a write never waits for a reader, even when QEMU has died.
	for _qv_f in con.in mon.in; do
		sleep 1000000 <>"$QV/$_qv_n.$_qv_f" >/dev/null 2>&1 &
		_qv_h=$!
		echo $_qv_h >>"$QV/$_qv_n.holders"
		# the holder opens the FIFO in its own time: a line written before that would
		# still vanish (QEMU B once never saw its qmp_capabilities)
		_qv_end=$(($(_qv_now) + 10))
		while [ "$(readlink "/proc/$_qv_h/fd/0" 2>/dev/null)" != "$QV/$_qv_n.$_qv_f" ] && [ "$(_qv_now)" -lt "$_qv_end" ]; do
			sleep 0.05
		done
	done
	# readers first, so QEMU's output never waits for one
	cat "$QV/$_qv_n.con.out" >"$QV/$_qv_n.console" &
	cat "$QV/$_qv_n.mon.out" >"$QV/$_qv_n.monitor" &
	qv_accel
	/bin/qemu-system-x86_64 -M pc -accel "$QV_ACCEL" -smp 1 -m "$_qv_mem" \
		-object memory-backend-memfd,id=mem0,size="${_qv_mem}M",share=on -machine memory-backend=mem0 \
		-nodefaults -no-user-config -display none -no-reboot -action shutdown=pause \
		-kernel /opt/vm/vmlinux -initrd /opt/vm/initrd -append "$QV_APPEND" \
		-chardev pipe,id=con0,path="$QV/$_qv_n.con" -serial chardev:con0 \
		-chardev pipe,id=mon0,path="$QV/$_qv_n.mon" -mon chardev=mon0,mode=control \
		"$@" </dev/null >"$QV/$_qv_n.stderr" 2>&1 &
	echo $! >"$QV/$_qv_n.pid"
	# QMP: leave capabilities negotiation first (QEMU reads it after its greeting)
	printf '{"execute": "qmp_capabilities"}\n' 1<>"$QV/$_qv_n.mon.in"
}

qv_pid() { cat "$QV/$1.pid" 2>/dev/null; }
# seconds of uptime: the waits below are bounded by the clock, not by counting sleeps (each
# round of a loop takes far longer than its sleep on a loaded TCG guest)
_qv_now() { cut -d. -f1 /proc/uptime; }

qv_alive() {
	_qv_p=$(qv_pid "$1")
	[ -n "$_qv_p" ] && vt_running "$_qv_p"
}

# qv_shutdown NAME: the reason in NAME's first SHUTDOWN event, if any.
qv_shutdown() {
	sed -n 's/.*"event": "SHUTDOWN".*"reason": "\([^"]*\)".*/\1/p' "$QV/$1.monitor" 2>/dev/null | head -n 1
}

# qv_down NAME: QEMU NAME exited, or its guest reset or powered off (QEMU paused).
qv_down() {
	qv_alive "$1" || return 0
	[ -n "$(qv_shutdown "$1")" ]
}

# qv_why NAME: why NAME is down, on one line, for a FAIL reason.
qv_why() {
	_qv_r=$(qv_shutdown "$1")
	if qv_alive "$1"; then _qv_w="QEMU $1 runs"; else _qv_w="QEMU $1 exited"; fi
	if [ -n "$_qv_r" ]; then
		_qv_t=$(sed -n 's/.*"seconds": \([0-9]*\).*"event": "SHUTDOWN".*/\1/p' "$QV/$1.monitor" | head -n 1)
		_qv_w="$_qv_w; its guest stopped: SHUTDOWN $_qv_r at $(date -u -d "@$_qv_t" +%T 2>/dev/null)"
	fi
	printf '%s; stderr: %s; console: %s\n' "$_qv_w" \
		"$(grep -v '^vhost_vdpa_' "$QV/$1.stderr" 2>/dev/null | tail -n 3 | tr '\n' '|')" \
		"$(tr -d '\r' <"$QV/$1.console" 2>/dev/null | grep -v '^VM-OUT \|^VM-RC ' | tail -n 3 | tr '\n' '|')"
}

# qv_regs NAME: the vCPU state of a QEMU whose guest stopped (paused by -action
# shutdown=pause), for the console log: where a guest that reset without a word was.
qv_regs() {
	qv_alive "$1" || return 0
	qv_mon "$1" 10 "info registers" && printf '%s\n' "$QV_MON" | sed "s/^/$1.regs| /"
}

# qv_wait_ready NAME SECS
qv_wait_ready() {
	_qv_end=$(($(_qv_now) + $2))
	while ! grep -q 'VM: READY' "$QV/$1.console" 2>/dev/null; do
		qv_down "$1" && return 1
		[ "$(_qv_now)" -lt "$_qv_end" ] || return 1
		sleep 0.2
	done
}

# qv_run NAME SECS CMD: CMD must be one line; its output comes back prefixed by the id.
qv_run() {
	_qv_n=$1 _qv_s=$2
	shift 2
	QV_ID=$((QV_ID + 1))
	printf 'RUN %s %s\n' "$QV_ID" "$*" 1<>"$QV/$_qv_n.con.in"
	_qv_end=$(($(_qv_now) + _qv_s))
	QV_RC=timeout
	while [ "$(_qv_now)" -lt "$_qv_end" ]; do
		_qv_l=$(grep "^VM-RC $QV_ID " "$QV/$_qv_n.console" 2>/dev/null | tr -d '\r')
		if [ -n "$_qv_l" ]; then
			QV_RC=${_qv_l##* }
			break
		fi
		qv_down "$_qv_n" && break
		sleep 0.1
	done
	QV_OUT=$(tr -d '\r' <"$QV/$_qv_n.console" | sed -n "s/^VM-OUT $QV_ID: //p")
	[ "$QV_RC" = 0 ]
}

# qv_qmp NAME SECS JSON: one QMP command (JSON without the "id" member, e.g.
# '"execute":"query-migrate"'); QV_QMP = QEMU's answer line (with "return" or "error"),
# matched by its id. No answer: QV_QMP is empty and QV_QMP_WHY says why (QEMU exited, or
# nothing within SECS). Returns 0 only for a "return".
qv_qmp() {
	_qv_n=$1 _qv_s=$2
	QV_ID=$((QV_ID + 1))
	printf '{%s, "id": %s}\n' "$3" "$QV_ID" 1<>"$QV/$_qv_n.mon.in"
	_qv_end=$(($(_qv_now) + _qv_s))
	QV_QMP="" QV_QMP_WHY=""
	while :; do
		# the answer is one line that ends with its id: a line with the id is complete
		QV_QMP=$(grep "\"id\": $QV_ID[,}]" "$QV/$_qv_n.monitor" 2>/dev/null | tr -d '\r')
		[ -n "$QV_QMP" ] && break
		if ! qv_alive "$_qv_n"; then
			QV_QMP_WHY="no answer to id $QV_ID: $(qv_why "$_qv_n")"
			break
		fi
		if [ "$(_qv_now)" -ge "$_qv_end" ]; then
			QV_QMP_WHY="no answer to id $QV_ID within $_qv_s s (QEMU $_qv_n runs)"
			break
		fi
		sleep 0.1
	done
	case $QV_QMP in *'"return"'*) return 0 ;; esac
	return 1
}

# qv_mon NAME SECS CMD: an HMP command through QMP (human-monitor-command); QV_MON = its
# text output.
qv_mon() {
	_qv_c=$(printf '%s' "$3" | sed 's/["\\]/\\&/g')
	qv_qmp "$1" "$2" "\"execute\": \"human-monitor-command\", \"arguments\": {\"command-line\": \"$_qv_c\"}"
	_qv_rc=$?
	QV_MON=$(printf '%s\n' "$QV_QMP" | sed -E -n 's/.*"return": "(([^"\\]|\\.)*)".*/\1/p' |
		awk '{ gsub(/\\r\\n/, "\n"); gsub(/\\n/, "\n"); gsub(/\\t/, "\t"); gsub(/\\"/, "\""); print }')
	return $_qv_rc
}

# qv_json_num JSON KEY: the number after "KEY": in JSON (first match).
qv_json_num() { printf '%s\n' "$1" | sed -n "s/.*\"$2\": *\([0-9][0-9]*\).*/\1/p" | head -n 1; }
# qv_json_str JSON KEY: the string after "KEY": in JSON (first match).
qv_json_str() { printf '%s\n' "$1" | sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" | head -n 1; }

qv_quit() {
	_qv_p=$(qv_pid "$1")
	[ -n "$_qv_p" ] || return 0
	if vt_running "$_qv_p"; then
		printf '{"execute": "quit"}\n' 1<>"$QV/$1.mon.in" 2>/dev/null
	fi
	vt_reap "$_qv_p" "$2"
	_qv_rc=$?
	for _qv_h in $(cat "$QV/$1.holders" 2>/dev/null); do
		kill "$_qv_h" 2>/dev/null
		wait "$_qv_h" 2>/dev/null
	done
	rm -f "$QV/$1.holders"
	return $_qv_rc
}

# qv_dump NAME: the logs, prefixed, for the serial console of the outer guest (and so for
# tools/kernel/boot, which fails the run on kernel warnings in them).
qv_dump() {
	for _qv_f in console monitor stderr; do
		[ -s "$QV/$1.$_qv_f" ] || continue
		echo "---- $1 $_qv_f ----"
		tr -d '\r' <"$QV/$1.$_qv_f" | grep -v '^VM-OUT ' | sed "s/^/$1.$_qv_f| /" | tail -n 200
	done
}
