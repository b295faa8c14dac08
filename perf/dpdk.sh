#!/usr/bin/env bash
# DPDK reference figures: testpmd over vhost-user (device side, one core) and
# testpmd over virtio-user (driver side, the other core), no hugepages.
# Prints one JSON object per scenario on stdout; progress goes to stderr.
#
#   perf/dpdk.sh [--duration S] [--warmup S] [--scenarios a,b,..]
#                [--vhost-core N] [--virtio-core N] [--bursts N]
#                [--queue-size N] [--logdir DIR] [--no-install] [--packed]
#                [--burst-stats]
#
# Scenarios: loopback64 loopback1518 txonly rxonly pingpong (see perf/README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
duration=5
warmup=1
scenarios=loopback64,loopback1518,txonly,rxonly,pingpong
vhost_core=0
virtio_core=1
bursts=8
queue_size=256
logdir=
install=1
packed=0
burst_stats=0

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --scenarios) scenarios=$2; shift 2 ;;
        --vhost-core) vhost_core=$2; shift 2 ;;
        --virtio-core) virtio_core=$2; shift 2 ;;
        --bursts) bursts=$2; shift 2 ;;
        --queue-size) queue_size=$2; shift 2 ;;
        --logdir) logdir=$2; shift 2 ;;
        --no-install) install=0; shift ;;
        --packed) packed=1; shift ;;
        --burst-stats) burst_stats=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "dpdk.sh: unknown argument $1" >&2; usage ;;
    esac
done

log() { echo "dpdk.sh: $*" >&2; }

# On Debian 12 the `dpdk` package holds only the runtime scripts; testpmd is
# in `dpdk-dev`.
if ! command -v dpdk-testpmd >/dev/null; then
    if [[ $install == 1 ]]; then
        log "installing dpdk-dev (provides dpdk-testpmd)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y dpdk dpdk-dev >&2
    fi
    command -v dpdk-testpmd >/dev/null || { log "dpdk-testpmd not found"; exit 1; }
fi
[[ $(id -u) == 0 ]] || log "warning: not root; EAL may fail to create /var/run/dpdk"

# The one child we have at any time; stopped on any exit. The Python runner
# puts each testpmd in its own session, kills them when it ends, and they die
# with it (PR_SET_PDEATHSIG) if it is killed outright.
child=
cleanup() {
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$child" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Hard bound per scenario: EAL start-up (~2 s each without hugepages), the
# run itself, and the shutdown.
limit=$(python3 -c "print(int($duration + $warmup + 90))")
status=0
n=0
IFS=, read -r -a list <<<"$scenarios"
for s in "${list[@]}"; do
    log "scenario $s (${duration}s)"
    args=("$s" --duration "$duration" --warmup "$warmup" --vhost-core "$vhost_core"
          --virtio-core "$virtio_core" --bursts "$bursts" --queue-size "$queue_size")
    [[ -n $logdir ]] && args+=(--logdir "$logdir")
    [[ $packed == 1 ]] && args+=(--packed)
    [[ $burst_stats == 1 ]] && args+=(--burst-stats)
    n=$((n + 1))
    tag="perf$$x$n"
    args+=(--tag "$tag")
    timeout -k 5 "$limit" python3 "$here/testpmd_pair.py" "${args[@]}" &
    child=$!
    rc=0
    wait "$child" || rc=$?
    if [[ $rc != 0 ]]; then
        status=1
        log "scenario $s failed (exit $rc)"
        # The runner prints its own JSON on errors it catches; not when killed.
        if [[ $rc == 124 || $rc == 137 ]]; then
            echo "{\"impl\": \"dpdk-testpmd\", \"scenario\": \"$s\", \"error\": \"timed out after ${limit}s\"}"
        fi
    fi
    child=
    # EAL runtime dirs; the runner removes them unless it was killed.
    rm -rf "/var/run/dpdk/vh$tag" "/var/run/dpdk/vu$tag"
done
exit "$status"
