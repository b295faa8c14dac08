# Helpers for the judges of the QEMU scenarios (tools/kernel/scenarios/qemu-*.sh), installed
# as /lib/qemu-evidence.sh; they read what tools/kernel/boots/qemu-vm.sh recorded in $E.
# shellcheck shell=sh
#
#   ev_dec MAC                 "52:54:00:00:01:01" -> "\[82, 84, 0, 0, 1, 1\]" (the device log's form, as a grep pattern)
#   ev_from FILE TEXT          FILE from the first line containing TEXT (a fixed string) on
#   ev_until FILE TEXT         FILE up to (not including) the first line containing TEXT
#   ev_has TEXT PATTERN        grep -q PATTERN in TEXT
#   ev_stats LOG DEV           DEV's counters as vduse-net printed them when it stopped (JSON)
#   ev_pair JSON N FIELD       FIELD of pair N in those counters
#   ev_slow JSON FIELD         FIELD of the slow path in those counters
#   ev_ping FILE               "T R" = packets transmitted and received in a ping summary
#   ev_pairs FILE              from a `vduse-net stats --json` sample: per device its active
#                              pairs and per pair whether it is active and its frames, one line
#   ev_check NAME COND REASON  vt_pass NAME if the shell test COND (a string for eval) holds,
#                              else vt_fail NAME REASON

ev_dec() {
	echo "$1" | awk -F: '{ printf "\\["; for (i = 1; i <= NF; i++) printf "%s%d", (i > 1 ? ", " : ""), ("0x" $i) + 0; printf "\\]" }'
}

ev_from() { awk -v p="$2" 'f || index($0, p) { f = 1; print }' "$1"; }
ev_until() { awk -v p="$2" 'index($0, p) { exit } { print }' "$1"; }
ev_has() { printf '%s\n' "$1" | grep -q -e "$2"; }

ev_stats() { grep "vduse-net: $2: {" "$1" | tail -n 1 | sed "s/^.*vduse-net: $2: //"; }
ev_pair() {
	printf '%s\n' "$1" | sed 's/.*"pairs":\[//; s/\],"slow_path".*//' | sed 's/},{/}\n{/g' |
		sed -n "$(($2 + 1))p" | sed -n "s/.*\"$3\":\([0-9]*\).*/\1/p"
}
ev_slow() { printf '%s\n' "$1" | sed 's/.*"slow_path"://' | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }

ev_ping() {
	sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1 \2/p' "$1" | tail -n 1
}

ev_pairs() {
	# a "frames" right after a pair's "active" is that pair's; the device's total follows
	grep -o '"name":"[^"]*"\|"active_queue_pairs":[0-9]*\|"pair":[0-9]*\|"active":[a-z]*\|"frames":{[^}]*}' "$1" 2>/dev/null |
		awk -F: '/^"name"/ { gsub(/"/, "", $2); printf "%s%s:", (n++ ? " | " : ""), $2; p = "" }
			/^"active_queue_pairs"/ { printf " %s active pairs", $2 }
			/^"pair"/ { printf "; pair %s", $2 }
			/^"active"/ { printf " %s", ($2 == "true" ? "active" : "inactive"); p = 1; next }
			/^"frames"/ && p { sub(/^"frames":/, ""); printf " frames %s", $0 }
			{ p = "" }'
	echo
}

# COND is eval'd here: it must not use positional parameters ($1...: this function's own).
# EV_FAILED is set after a failed check.
ev_check() {
	if eval "$2"; then vt_pass "$1"; else
		vt_fail "$1" "$3"
		EV_FAILED=1
	fi
}
