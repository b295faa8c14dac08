# shellcheck shell=bash
# shellcheck disable=SC2034 # variables used by the scripts that source this file
# Shared helpers for the tools/kernel scripts. Source it; do not run it.

VDUSE_NET_CACHE="${VDUSE_NET_CACHE:-$HOME/.cache/vduse-net}"
KERNEL_TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$KERNEL_TOOLS_DIR/../.." && pwd)"

# The kernels the harness knows: short name -> Debian suite. The concrete package
# versions are resolved from the suite's meta packages at run time.
declare -A KERNEL_SUITE=(
	[6.12]=trixie
	[7.2]=sid
	[7.3]=trixie-backports
)
DEFAULT_KERNELS="6.12 7.2 7.3"
KERNEL_FLAVOUR="${VDUSE_NET_KERNEL_FLAVOUR:-cloud-amd64}"

# Modules the initramfs loads, in load order (the unpacked tree has no modules.dep).
# tun and veth: the host ports (scenario ports).
VDUSE_MODULES="vhost_iotlb vdpa vduse virtio_vdpa failover net_failover virtio_net irqbypass vhost vhost_vdpa tun veth"

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ensure_host_pkg CMD PKG: install PKG with apt-get when CMD is missing.
ensure_host_pkg() {
	local cmd=$1 pkg=$2
	command -v "$cmd" >/dev/null 2>&1 && return 0
	log "$cmd not found; installing $pkg"
	[[ $(id -u) -eq 0 ]] || die "$cmd missing and not root: install $pkg"
	if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2; then
		apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2
	fi
	command -v "$cmd" >/dev/null 2>&1 || die "installing $pkg did not provide $cmd"
}

# now: wall clock in seconds with fractions.
now() { printf '%s\n' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
