#!/usr/bin/env bash
# AF_XDP port benchmark: frames of each size through a vduse-net device
# whose port is an AF_XDP socket on a veth, the far end of which reflects
# every frame (tc mirred), against the ceiling of the same veth and
# reflector: a bare XDP socket doing the same without the device
# (examples/afxdp_ceiling.rs). Rounds alternate the two. One JSON line per
# run on stdout, a table on stderr.
#
#   perf/afxdp.sh [--duration S] [--rounds K] [--sizes 64,1518] [--mode native|skb]
#                 [--device-core N] [--gen-core N] [--no-build]
#
# Needs root (network namespace, XDP). The namespace is removed on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
duration=5
rounds=1
sizes=64,1518
mode=native
device_core=0
gen_core=1
build=1

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --sizes) sizes=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --device-core) device_core=$2; shift 2 ;;
        --gen-core) gen_core=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "perf/afxdp.sh: unknown argument $1" >&2; usage ;;
    esac
done
[[ $mode == native || $mode == skb ]] || { echo "perf/afxdp.sh: --mode native or skb" >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "perf/afxdp.sh: --rounds must be a positive integer" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "perf/afxdp.sh: needs root (network namespace, XDP)" >&2; exit 2; }
log() { echo "perf/afxdp.sh: $*" >&2; }

target=${CARGO_TARGET_DIR:-$root/target}/release
if [[ $build == 1 ]]; then
    log "building vduse-net and examples/afxdp_ceiling (release)"
    (cd "$root" && cargo build --release --bin vduse-net --example afxdp_ceiling >&2)
fi
bin=$target/vduse-net
ceiling=$target/examples/afxdp_ceiling
[[ -x $bin && -x $ceiling ]] || { log "missing $bin or $ceiling (build without --no-build)"; exit 1; }

ns=vnperf$$
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6'
ip -n "$ns" link add xa type veth peer name xb
ip -n "$ns" link set xa up
ip -n "$ns" link set xb up
ip netns exec "$ns" tc qdisc add dev xb clsact
# Generic XDP skips frames tc redirected (netif_receive_generic_xdp), so in
# skb mode the reflector sends back a clone instead.
if [[ $mode == native ]]; then action=redirect; else action=mirror; fi
ip netns exec "$ns" tc filter add dev xb ingress protocol all u32 match u32 0 0 action mirred egress $action dev xb
log "namespace $ns: veth xa <-> xb, tc mirred $action on xb, XDP $mode mode, load $(cut -d' ' -f1-3 /proc/loadavg)"

results=$(mktemp)
trap 'cleanup; rm -f "$results"' EXIT
IFS=, read -r -a list <<<"$sizes"
for ((r = 1; r <= rounds; r++)); do
    for s in "${list[@]}"; do
        log "round $r: ${s} B vduse-net"
        if out=$(timeout -k 5 $((${duration%.*} + 60)) ip netns exec "$ns" "$bin" pktgen --backend af-xdp --iface xa \
            --xdp-mode "$mode" --size "$s" --duration "$duration" --warmup 1 --idle busy \
            --device-cores "$device_core" --gen-cores "$gen_core" --json); then
            echo "$out" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps({"round": int(sys.argv[1]), "size": int(sys.argv[2]), "impl": "vduse-net", "mpps_rx": d["mpps_rx"], "gbps_rx": d["gbps_rx"], "lost": d["lost"], "integrity_errors": d["integrity_errors"], "threads": d.get("cpu")}))' "$r" "$s" | tee -a "$results"
        else
            echo "{\"round\": $r, \"size\": $s, \"impl\": \"vduse-net\", \"error\": \"pktgen failed\"}" | tee -a "$results"
        fi
        log "round $r: ${s} B ceiling (bare XDP socket)"
        if out=$(timeout -k 5 $((${duration%.*} + 60)) ip netns exec "$ns" taskset -c "$device_core" "$ceiling" xa "$s" "$duration" "$mode"); then
            echo "$out" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d.update({"round": int(sys.argv[1]), "impl": "ceiling"}); print(json.dumps(d))' "$r" | tee -a "$results"
        else
            echo "{\"round\": $r, \"size\": $s, \"impl\": \"ceiling\", \"error\": \"afxdp_ceiling failed\"}" | tee -a "$results"
        fi
    done
done

python3 - "$results" <<'EOF' >&2
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{'size':>6}  {'vduse-net Mpps':>15}  {'Gbit/s':>7}  {'ceiling Mpps':>13}  {'Gbit/s':>7}  {'share':>6}  lost/corrupt")
for size in sorted({r["size"] for r in rows}):
    v = [r for r in rows if r["size"] == size and r["impl"] == "vduse-net" and "error" not in r]
    c = [r for r in rows if r["size"] == size and r["impl"] == "ceiling" and "error" not in r]
    if not v or not c:
        print(f"{size:>6}  (failed run: see the JSON lines)")
        continue
    vm, cm = statistics.median(r["mpps_rx"] for r in v), statistics.median(r["mpps_rx"] for r in c)
    vg, cg = statistics.median(r["gbps_rx"] for r in v), statistics.median(r["gbps_rx"] for r in c)
    bad = sum(r["lost"] + r["integrity_errors"] for r in v)
    print(f"{size:>6}  {vm:>15.3f}  {vg:>7.2f}  {cm:>13.3f}  {cg:>7.2f}  {vm / cm if cm else 0:>6.0%}  {bad}")
EOF
