//! virtio-net feature bits (virtio spec 1.3 §5.1.3) and the negotiation rules
//! the device enforces at FEATURES_OK (§2.2, §5.1.3.1).
//!
//! Every constant here is a *mask* (`1 << bit`), built from the bit numbers in
//! `virtio_bindings`, so callers can `|` and `&` them directly.

use virtio_bindings::bindings::virtio_config as cfg;
use virtio_bindings::bindings::virtio_net as vn;
use virtio_bindings::bindings::virtio_ring as ring;

const fn bit(n: u32) -> u64 {
    1u64 << n
}

pub const CSUM: u64 = bit(vn::VIRTIO_NET_F_CSUM);
pub const GUEST_CSUM: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
pub const CTRL_GUEST_OFFLOADS: u64 = bit(vn::VIRTIO_NET_F_CTRL_GUEST_OFFLOADS);
pub const MTU: u64 = bit(vn::VIRTIO_NET_F_MTU);
pub const MAC: u64 = bit(vn::VIRTIO_NET_F_MAC);
pub const GUEST_TSO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
pub const GUEST_TSO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
pub const GUEST_ECN: u64 = bit(vn::VIRTIO_NET_F_GUEST_ECN);
pub const GUEST_UFO: u64 = bit(vn::VIRTIO_NET_F_GUEST_UFO);
pub const HOST_TSO4: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
pub const HOST_TSO6: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
pub const HOST_ECN: u64 = bit(vn::VIRTIO_NET_F_HOST_ECN);
pub const HOST_UFO: u64 = bit(vn::VIRTIO_NET_F_HOST_UFO);
pub const MRG_RXBUF: u64 = bit(vn::VIRTIO_NET_F_MRG_RXBUF);
pub const STATUS: u64 = bit(vn::VIRTIO_NET_F_STATUS);
pub const CTRL_VQ: u64 = bit(vn::VIRTIO_NET_F_CTRL_VQ);
pub const CTRL_RX: u64 = bit(vn::VIRTIO_NET_F_CTRL_RX);
pub const CTRL_VLAN: u64 = bit(vn::VIRTIO_NET_F_CTRL_VLAN);
pub const CTRL_RX_EXTRA: u64 = bit(vn::VIRTIO_NET_F_CTRL_RX_EXTRA);
pub const GUEST_ANNOUNCE: u64 = bit(vn::VIRTIO_NET_F_GUEST_ANNOUNCE);
pub const MQ: u64 = bit(vn::VIRTIO_NET_F_MQ);
pub const CTRL_MAC_ADDR: u64 = bit(vn::VIRTIO_NET_F_CTRL_MAC_ADDR);
pub const DEVICE_STATS: u64 = bit(vn::VIRTIO_NET_F_DEVICE_STATS);
pub const VQ_NOTF_COAL: u64 = bit(vn::VIRTIO_NET_F_VQ_NOTF_COAL);
pub const NOTF_COAL: u64 = bit(vn::VIRTIO_NET_F_NOTF_COAL);
pub const GUEST_USO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_USO4);
pub const GUEST_USO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_USO6);
pub const HOST_USO: u64 = bit(vn::VIRTIO_NET_F_HOST_USO);
pub const HASH_REPORT: u64 = bit(vn::VIRTIO_NET_F_HASH_REPORT);
pub const GUEST_HDRLEN: u64 = bit(vn::VIRTIO_NET_F_GUEST_HDRLEN);
pub const RSS: u64 = bit(vn::VIRTIO_NET_F_RSS);
pub const RSC_EXT: u64 = bit(vn::VIRTIO_NET_F_RSC_EXT);
pub const STANDBY: u64 = bit(vn::VIRTIO_NET_F_STANDBY);
pub const SPEED_DUPLEX: u64 = bit(vn::VIRTIO_NET_F_SPEED_DUPLEX);

pub const INDIRECT_DESC: u64 = bit(ring::VIRTIO_RING_F_INDIRECT_DESC);
pub const EVENT_IDX: u64 = bit(ring::VIRTIO_RING_F_EVENT_IDX);
pub const VERSION_1: u64 = bit(cfg::VIRTIO_F_VERSION_1);
pub const ACCESS_PLATFORM: u64 = bit(cfg::VIRTIO_F_ACCESS_PLATFORM);
pub const RING_PACKED: u64 = bit(cfg::VIRTIO_F_RING_PACKED);
pub const IN_ORDER: u64 = bit(cfg::VIRTIO_F_IN_ORDER);

pub const ANY_LAYOUT: u64 = bit(cfg::VIRTIO_F_ANY_LAYOUT);
pub const ORDER_PLATFORM: u64 = bit(cfg::VIRTIO_F_ORDER_PLATFORM);

/// How the device stands to one feature it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Always offered: VDUSE refuses a device without it.
    Required,
    /// In the default offer; `--features -NAME` removes it.
    Default,
    /// Implemented, offered only with `--features +NAME`.
    Optional,
}

/// One feature the device can offer, for `vduse-net features` and
/// `--features`.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub mask: u64,
    /// Name on the command line: the spec's name without its prefix, lower case.
    pub name: &'static str,
    /// One line for `vduse-net features`.
    pub meaning: &'static str,
    pub support: Support,
}

const fn feat(mask: u64, name: &'static str, support: Support, meaning: &'static str) -> Feature {
    Feature { mask, name, meaning, support }
}

/// Everything this device implements. Feature sets are data: the default
/// offer, the `--features` choices and the QEMU notes are all derived from
/// this table and the QEMU tables below, not written out elsewhere.
///
/// The default offer is one QEMU accepts for shadowing the control queue in
/// its own address space and for `x-svq=on` (live migration): no
/// INDIRECT_DESC, no GUEST_ANNOUNCE, no USO (see [`qemu_shadow_refuses`]).
/// Checksum and TCP segmentation offloads and mergeable RX buffers are in
/// it: the dataplane passes them to ports that take virtio-net headers and
/// finishes the work in software for every other receiver
/// (`dataplane::poll::offload`). So are RSS and hash reports (QEMU replays
/// RSS_CONFIG through its shadow control queue; steering moves frames of
/// any size between the poll threads, `dataplane::poll::handoff`, with
/// back-pressure: a frame for a pair that is full waits in the port, as an
/// unsteered one does, so a burst towards a slow driver is not lost).
pub const CATALOG: &[Feature] = &[
    feat(
        VERSION_1,
        "version_1",
        Support::Required,
        "virtio 1.x device (little endian, 12-byte net header); VDUSE requires it",
    ),
    feat(
        ACCESS_PLATFORM,
        "access_platform",
        Support::Required,
        "buffers are addressed through the IOTLB (IOVAs), as VDUSE requires",
    ),
    feat(EVENT_IDX, "event_idx", Support::Default, "used/avail event indices suppress kicks and interrupts"),
    feat(INDIRECT_DESC, "indirect_desc", Support::Optional, "chains may point at indirect descriptor tables"),
    feat(MAC, "mac", Support::Default, "config space carries the device's MAC address (--mac)"),
    feat(STATUS, "status", Support::Default, "config space carries the link status"),
    feat(MTU, "mtu", Support::Default, "config space advertises the MTU (--mtu)"),
    feat(CSUM, "csum", Support::Default, "the driver may send frames with a partial checksum (NEEDS_CSUM)"),
    feat(GUEST_CSUM, "guest_csum", Support::Default, "received frames may carry a partial checksum or DATA_VALID"),
    feat(HOST_TSO4, "host_tso4", Support::Default, "the driver may send TCP/IPv4 GSO frames up to 64 KiB"),
    feat(HOST_TSO6, "host_tso6", Support::Default, "the driver may send TCP/IPv6 GSO frames up to 64 KiB"),
    feat(HOST_ECN, "host_ecn", Support::Default, "the driver may send TSO frames with ECN (CWR)"),
    feat(HOST_USO, "host_uso", Support::Optional, "the driver may send UDP GSO frames (QEMU's SVQ refuses it)"),
    feat(GUEST_TSO4, "guest_tso4", Support::Default, "received TCP/IPv4 frames may be GSO frames"),
    feat(GUEST_TSO6, "guest_tso6", Support::Default, "received TCP/IPv6 frames may be GSO frames"),
    feat(GUEST_ECN, "guest_ecn", Support::Default, "received GSO frames may carry ECN"),
    feat(
        GUEST_USO4,
        "guest_uso4",
        Support::Optional,
        "received UDP/IPv4 frames may be GSO frames (QEMU's SVQ refuses it)",
    ),
    feat(
        GUEST_USO6,
        "guest_uso6",
        Support::Optional,
        "received UDP/IPv6 frames may be GSO frames (QEMU's SVQ refuses it)",
    ),
    feat(MRG_RXBUF, "mrg_rxbuf", Support::Default, "a received frame may span several RX buffers (num_buffers)"),
    feat(
        CTRL_VQ,
        "ctrl_vq",
        Support::Default,
        "control virtqueue, in its own vq group (a VMM can give it its own address space)",
    ),
    feat(CTRL_RX, "ctrl_rx", Support::Default, "control queue: promiscuous and all-multicast RX modes"),
    feat(
        CTRL_RX_EXTRA,
        "ctrl_rx_extra",
        Support::Default,
        "control queue: all-unicast, no-multicast, no-unicast, no-broadcast",
    ),
    feat(CTRL_VLAN, "ctrl_vlan", Support::Default, "control queue: VLAN filter table"),
    feat(CTRL_MAC_ADDR, "ctrl_mac_addr", Support::Default, "control queue: set the MAC address"),
    feat(
        CTRL_GUEST_OFFLOADS,
        "ctrl_guest_offloads",
        Support::Default,
        "control queue: switch the guest (receive) offloads on and off",
    ),
    feat(MQ, "mq", Support::Default, "several queue pairs (--queues), chosen by the driver with VQ_PAIRS_SET"),
    feat(
        GUEST_ANNOUNCE,
        "guest_announce",
        Support::Optional,
        "the device may ask the driver to announce itself (gratuitous ARP)",
    ),
    feat(
        RSS,
        "rss",
        Support::Default,
        "receive-side scaling: the driver's Toeplitz key and indirection table spread port frames (up to \
         64 KiB) over the RX queues of every pair; a frame for a full pair waits in the port",
    ),
    feat(
        HASH_REPORT,
        "hash_report",
        Support::Default,
        "the RX header (20 bytes both ways) carries the frame's RSS hash and its type",
    ),
    feat(
        RING_PACKED,
        "ring_packed",
        Support::Optional,
        "packed virtqueues (virtio 1.3 §2.8) instead of split ones; `--ring packed` is the same",
    ),
    feat(
        IN_ORDER,
        "in_order",
        Support::Optional,
        "chains are used in the order they were made available; a run of TX chains is returned with one \
         used entry (QEMU's SVQ refuses it)",
    ),
];

const fn fold(support: Support) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < CATALOG.len() {
        if CATALOG[i].support as u8 == support as u8 {
            m |= CATALOG[i].mask;
        }
        i += 1;
    }
    m
}

/// Offered whatever the user asks.
pub const REQUIRED: u64 = fold(Support::Required);
/// What the device offers without `--features`.
pub const DEFAULT_OFFER: u64 = REQUIRED | fold(Support::Default);
/// Everything the device can offer.
pub const SUPPORTED: u64 = DEFAULT_OFFER | fold(Support::Optional);

/// Device feature bits QEMU's shadow virtqueues accept
/// (`vdpa_svq_device_features` in QEMU 10.0's net/vhost-vdpa.c). QEMU shadows
/// the control queue in its own address space, and runs `x-svq=on` (its
/// live-migration path), only when every negotiated device feature is here.
pub const QEMU_SVQ_DEVICE: u64 = CSUM
    | GUEST_CSUM
    | CTRL_GUEST_OFFLOADS
    | MTU
    | MAC
    | GUEST_TSO4
    | GUEST_TSO6
    | GUEST_ECN
    | GUEST_UFO
    | HOST_TSO4
    | HOST_TSO6
    | HOST_ECN
    | HOST_UFO
    | MRG_RXBUF
    | STATUS
    | CTRL_VQ
    | CTRL_RX
    | CTRL_VLAN
    | CTRL_RX_EXTRA
    | MQ
    | ANY_LAYOUT
    | CTRL_MAC_ADDR
    | HASH_REPORT
    | RSS
    | RSC_EXT
    | STANDBY
    | SPEED_DUPLEX;

/// Transport bits (28..=41) a shadow virtqueue accepts
/// (`vhost_svq_valid_features` in QEMU 10.0): INDIRECT_DESC, RING_PACKED,
/// IN_ORDER and the rest make QEMU refuse to shadow (newer QEMU development
/// trees accept INDIRECT_DESC too).
pub const QEMU_SVQ_TRANSPORT: u64 = EVENT_IDX | VERSION_1 | ACCESS_PLATFORM | ORDER_PLATFORM;

const TRANSPORT_BITS: u64 =
    ((1u64 << (cfg::VIRTIO_TRANSPORT_F_END + 1)) - 1) & !((1u64 << cfg::VIRTIO_TRANSPORT_F_START) - 1);

/// The bits of `features` that stop QEMU from shadowing virtqueues: with any
/// of them negotiated QEMU passes the control queue through unshadowed (no
/// address-space isolation), refuses `x-svq=on`, and cannot migrate the VM.
pub fn qemu_shadow_refuses(features: u64) -> u64 {
    (features & TRANSPORT_BITS & !QEMU_SVQ_TRANSPORT) | (features & !TRANSPORT_BITS & !QEMU_SVQ_DEVICE)
}

/// A log line for an offer QEMU cannot shadow, or `None` when it can.
pub fn qemu_shadow_note(offer: u64) -> Option<String> {
    let bad = qemu_shadow_refuses(offer);
    (bad != 0).then(|| {
        format!(
            "offering {} (outside what QEMU's shadow virtqueues accept): when the guest accepts them, QEMU \
             will not shadow the control queue in its own address space, x-svq=on fails, and the VM cannot \
             be live-migrated",
            names(bad).join(", ")
        )
    })
}

/// Features that only add control-queue commands or need the control queue
/// to be configured; meaningless (and, where §5.1.3.1 says so, invalid)
/// without CTRL_VQ.
pub const NEEDS_CTRL_VQ: u64 = CTRL_RX
    | CTRL_VLAN
    | CTRL_RX_EXTRA
    | GUEST_ANNOUNCE
    | MQ
    | CTRL_MAC_ADDR
    | CTRL_GUEST_OFFLOADS
    | NOTF_COAL
    | VQ_NOTF_COAL
    | RSS
    | HASH_REPORT
    | DEVICE_STATS;

/// The offloads VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET may toggle (§5.1.6.5.6.1).
pub const GUEST_OFFLOAD_MASK: u64 =
    GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN | GUEST_UFO | GUEST_USO4 | GUEST_USO6;

/// `features` without the control queue and everything that depends on it.
/// Used when the kernel refuses a device with a control queue (VDUSE on
/// 7.2/7.3 rejects CTRL_VQ at CREATE_DEV).
pub fn without_ctrl_vq(features: u64) -> u64 {
    features & !(CTRL_VQ | NEEDS_CTRL_VQ)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    #[error("driver accepted features the device did not offer: {bits:#x}")]
    NotOffered { bits: u64 },
    #[error("driver did not accept VIRTIO_F_VERSION_1 (this device is not transitional)")]
    MissingVersion1,
    #[error("driver accepted {feature} without {requires}")]
    MissingDependency { feature: &'static str, requires: &'static str },
}

/// One rule of §5.1.3.1: `feature` needs at least one bit of `any_of`.
struct Dep {
    feature: u64,
    any_of: u64,
    requires: &'static str,
}

const DEPS: &[Dep] = &[
    Dep { feature: GUEST_TSO4, any_of: GUEST_CSUM, requires: "GUEST_CSUM" },
    Dep { feature: GUEST_TSO6, any_of: GUEST_CSUM, requires: "GUEST_CSUM" },
    Dep { feature: GUEST_ECN, any_of: GUEST_TSO4 | GUEST_TSO6, requires: "GUEST_TSO4 or GUEST_TSO6" },
    Dep { feature: GUEST_UFO, any_of: GUEST_CSUM, requires: "GUEST_CSUM" },
    Dep { feature: GUEST_USO4, any_of: GUEST_CSUM, requires: "GUEST_CSUM" },
    Dep { feature: GUEST_USO6, any_of: GUEST_CSUM, requires: "GUEST_CSUM" },
    Dep { feature: HOST_TSO4, any_of: CSUM, requires: "CSUM" },
    Dep { feature: HOST_TSO6, any_of: CSUM, requires: "CSUM" },
    Dep { feature: HOST_ECN, any_of: HOST_TSO4 | HOST_TSO6, requires: "HOST_TSO4 or HOST_TSO6" },
    Dep { feature: HOST_UFO, any_of: CSUM, requires: "CSUM" },
    Dep { feature: HOST_USO, any_of: CSUM, requires: "CSUM" },
    Dep { feature: CTRL_RX, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: CTRL_VLAN, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: GUEST_ANNOUNCE, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: MQ, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: CTRL_MAC_ADDR, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: NOTF_COAL, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: VQ_NOTF_COAL, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: RSC_EXT, any_of: HOST_TSO4 | HOST_TSO6, requires: "HOST_TSO4 or HOST_TSO6" },
    Dep { feature: RSS, any_of: CTRL_VQ, requires: "CTRL_VQ" },
    Dep { feature: DEVICE_STATS, any_of: CTRL_VQ, requires: "CTRL_VQ" },
];

/// Checks the driver's FEATURES_OK choice: a subset of what was offered,
/// VERSION_1 present, and the dependency rules of §5.1.3.1.
///
/// CTRL_RX_EXTRA and CTRL_GUEST_OFFLOADS without CTRL_VQ are not listed in
/// §5.1.3.1, so they are accepted here (they are merely unusable);
/// [`without_ctrl_vq`] never offers them in that combination anyway.
pub fn validate_driver_features(offered: u64, accepted: u64) -> Result<(), FeatureError> {
    let extra = accepted & !offered;
    if extra != 0 {
        return Err(FeatureError::NotOffered { bits: extra });
    }
    if accepted & VERSION_1 == 0 {
        return Err(FeatureError::MissingVersion1);
    }
    for d in DEPS {
        if accepted & d.feature != 0 && accepted & d.any_of == 0 {
            return Err(FeatureError::MissingDependency {
                feature: name(d.feature).unwrap_or("?"),
                requires: d.requires,
            });
        }
    }
    Ok(())
}

const NAMES: &[(u64, &str)] = &[
    (CSUM, "CSUM"),
    (GUEST_CSUM, "GUEST_CSUM"),
    (CTRL_GUEST_OFFLOADS, "CTRL_GUEST_OFFLOADS"),
    (MTU, "MTU"),
    (MAC, "MAC"),
    (bit(vn::VIRTIO_NET_F_GSO), "GSO"),
    (GUEST_TSO4, "GUEST_TSO4"),
    (GUEST_TSO6, "GUEST_TSO6"),
    (GUEST_ECN, "GUEST_ECN"),
    (GUEST_UFO, "GUEST_UFO"),
    (HOST_TSO4, "HOST_TSO4"),
    (HOST_TSO6, "HOST_TSO6"),
    (HOST_ECN, "HOST_ECN"),
    (HOST_UFO, "HOST_UFO"),
    (MRG_RXBUF, "MRG_RXBUF"),
    (STATUS, "STATUS"),
    (CTRL_VQ, "CTRL_VQ"),
    (CTRL_RX, "CTRL_RX"),
    (CTRL_VLAN, "CTRL_VLAN"),
    (CTRL_RX_EXTRA, "CTRL_RX_EXTRA"),
    (GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
    (MQ, "MQ"),
    (CTRL_MAC_ADDR, "CTRL_MAC_ADDR"),
    (bit(cfg::VIRTIO_F_NOTIFY_ON_EMPTY), "NOTIFY_ON_EMPTY"),
    (ANY_LAYOUT, "ANY_LAYOUT"),
    (INDIRECT_DESC, "INDIRECT_DESC"),
    (EVENT_IDX, "EVENT_IDX"),
    (VERSION_1, "VERSION_1"),
    (ACCESS_PLATFORM, "ACCESS_PLATFORM"),
    (RING_PACKED, "RING_PACKED"),
    (IN_ORDER, "IN_ORDER"),
    (ORDER_PLATFORM, "ORDER_PLATFORM"),
    (bit(cfg::VIRTIO_F_SR_IOV), "SR_IOV"),
    (bit(cfg::VIRTIO_F_NOTIFICATION_DATA), "NOTIFICATION_DATA"),
    (bit(cfg::VIRTIO_F_RING_RESET), "RING_RESET"),
    (bit(cfg::VIRTIO_F_ADMIN_VQ), "ADMIN_VQ"),
    (DEVICE_STATS, "DEVICE_STATS"),
    (VQ_NOTF_COAL, "VQ_NOTF_COAL"),
    (NOTF_COAL, "NOTF_COAL"),
    (GUEST_USO4, "GUEST_USO4"),
    (GUEST_USO6, "GUEST_USO6"),
    (HOST_USO, "HOST_USO"),
    (HASH_REPORT, "HASH_REPORT"),
    (GUEST_HDRLEN, "GUEST_HDRLEN"),
    (RSS, "RSS"),
    (RSC_EXT, "RSC_EXT"),
    (STANDBY, "STANDBY"),
    (SPEED_DUPLEX, "SPEED_DUPLEX"),
];

/// The name of a single feature mask, if known.
pub fn name(feature: u64) -> Option<&'static str> {
    NAMES.iter().find(|(m, _)| *m == feature).map(|(_, n)| *n)
}

/// Names of the known bits set in `features`, lowest bit first. Bits without a
/// name are left out; [`describe`] shows them too.
pub fn names(features: u64) -> Vec<&'static str> {
    (0..64).filter_map(|b| if features & bit(b) != 0 { name(bit(b)) } else { None }).collect()
}

/// One log-friendly line: known names, then unknown bits as `bit<N>`.
pub fn describe(features: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    for b in 0..64 {
        if features & bit(b) != 0 {
            parts.push(name(bit(b)).map_or_else(|| format!("bit{b}"), str::to_owned));
        }
    }
    format!("{features:#018x} [{}]", parts.join(" "))
}

/// Why a `--features` list was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("unknown feature {0:?} (`vduse-net features` lists them)")]
    Unknown(String),
    #[error("feature {0} is known but this device does not implement it")]
    NotImplemented(String),
    #[error("feature {0} cannot be removed: VDUSE requires it")]
    Required(&'static str),
    #[error("feature list {0:?} has an empty item (expected +NAME or -NAME, comma separated)")]
    Empty(String),
    #[error("feature {feature} needs {requires}, which the list removes")]
    MissingDependency { feature: &'static str, requires: &'static str },
}

/// The catalog entry called `name`: the spec's name with or without its
/// `VIRTIO_NET_F_`/`VIRTIO_F_`/`VIRTIO_RING_F_` prefix, any case.
pub fn lookup(name: &str) -> Result<&'static Feature, SelectError> {
    let up = name.trim().to_ascii_uppercase();
    let bare = ["VIRTIO_NET_F_", "VIRTIO_RING_F_", "VIRTIO_F_"].iter().find_map(|p| up.strip_prefix(p)).unwrap_or(&up);
    if let Some(f) = CATALOG.iter().find(|f| f.name.eq_ignore_ascii_case(bare)) {
        return Ok(f);
    }
    if NAMES.iter().any(|(_, n)| *n == bare) {
        return Err(SelectError::NotImplemented(bare.to_ascii_lowercase()));
    }
    Err(SelectError::Unknown(name.trim().to_string()))
}

/// Apply a `--features` list to `base`: comma-separated `+name` (add),
/// `-name` (remove) or `name` (add), left to right. Removing `ctrl_vq`
/// removes the control-queue features that need it, as `--no-ctrl-vq` does;
/// adding one of those back without `ctrl_vq` is refused. The result is a
/// self-consistent offer (every dependency of §5.1.3.1 present).
pub fn select(base: u64, list: &str) -> Result<u64, SelectError> {
    let mut offer = base | REQUIRED;
    for item in list.split(',') {
        let item = item.trim();
        let (add, name) = match item.as_bytes().first() {
            Some(b'+') => (true, &item[1..]),
            Some(b'-') => (false, &item[1..]),
            _ => (true, item),
        };
        if name.trim().is_empty() {
            return Err(SelectError::Empty(list.to_string()));
        }
        let f = lookup(name)?;
        if add {
            offer |= f.mask;
        } else if f.support == Support::Required {
            return Err(SelectError::Required(f.name));
        } else if f.mask == CTRL_VQ {
            offer = without_ctrl_vq(offer);
        } else {
            offer &= !f.mask;
        }
    }
    match validate_driver_features(offer, offer) {
        Ok(()) => Ok(offer),
        Err(FeatureError::MissingDependency { feature, requires }) => {
            Err(SelectError::MissingDependency { feature, requires })
        }
        // `offer` is offered by construction and always holds VERSION_1.
        Err(e) => unreachable!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_have_spec_bit_numbers() {
        assert_eq!(MAC, 1 << 5);
        assert_eq!(STATUS, 1 << 16);
        assert_eq!(CTRL_VQ, 1 << 17);
        assert_eq!(CTRL_RX_EXTRA, 1 << 20);
        assert_eq!(CTRL_MAC_ADDR, 1 << 23);
        assert_eq!(INDIRECT_DESC, 1 << 28);
        assert_eq!(EVENT_IDX, 1 << 29);
        assert_eq!(VERSION_1, 1 << 32);
        assert_eq!(ACCESS_PLATFORM, 1 << 33);
    }

    #[test]
    fn offers_are_self_consistent_and_derived_from_the_catalog() {
        // A device must not offer a feature whose dependency it does not offer.
        for offer in [DEFAULT_OFFER, SUPPORTED, without_ctrl_vq(DEFAULT_OFFER), without_ctrl_vq(SUPPORTED)] {
            validate_driver_features(offer, offer).unwrap();
        }
        // Offloads QEMU's shadow virtqueues accept are in the default offer;
        // USO (which they refuse) only by name.
        let shadowed = CSUM | GUEST_CSUM | MRG_RXBUF | HOST_TSO4 | HOST_TSO6 | HOST_ECN;
        let shadowed = shadowed | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN;
        assert_eq!(DEFAULT_OFFER & shadowed, shadowed);
        assert_eq!(qemu_shadow_refuses(DEFAULT_OFFER), 0);
        assert_eq!(DEFAULT_OFFER & (HOST_USO | GUEST_USO4 | GUEST_USO6), 0);
        for f in [VERSION_1, ACCESS_PLATFORM, MAC, STATUS, MTU, MQ, CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA, EVENT_IDX] {
            assert_ne!(DEFAULT_OFFER & f, 0, "{:?}", name(f));
        }
        for f in [CTRL_VLAN, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS] {
            assert_ne!(DEFAULT_OFFER & f, 0, "{:?}", name(f));
        }
        assert_eq!(REQUIRED, VERSION_1 | ACCESS_PLATFORM);
        assert_eq!(
            SUPPORTED & !DEFAULT_OFFER,
            INDIRECT_DESC | GUEST_ANNOUNCE | RING_PACKED | HOST_USO | GUEST_USO4 | GUEST_USO6 | IN_ORDER
        );
        // Issue 11 item 6: RSS and hash reports joined the default offer
        // (QEMU 10.0's shadow virtqueues accept both) once steering had
        // back-pressure.
        assert_eq!(DEFAULT_OFFER & (RSS | HASH_REPORT), RSS | HASH_REPORT);
        // Every catalog entry has a distinct mask and a spec name.
        for (i, f) in CATALOG.iter().enumerate() {
            assert_eq!(f.mask.count_ones(), 1, "{}", f.name);
            assert!(CATALOG[..i].iter().all(|g| g.mask != f.mask), "{} twice", f.name);
            assert_eq!(name(f.mask).map(str::to_ascii_lowercase).as_deref(), Some(f.name));
        }
    }

    /// The requirement: a VM works out of the box with QEMU's
    /// control-queue isolation and x-svq=on, so the default offer holds
    /// nothing QEMU's shadow virtqueues refuse.
    #[test]
    fn the_default_offer_is_one_qemu_can_shadow() {
        assert_eq!(qemu_shadow_refuses(DEFAULT_OFFER), 0, "{}", describe(qemu_shadow_refuses(DEFAULT_OFFER)));
        assert!(qemu_shadow_note(DEFAULT_OFFER).is_none());
        for f in [INDIRECT_DESC, GUEST_ANNOUNCE, RING_PACKED, IN_ORDER, HOST_USO, GUEST_USO4, GUEST_USO6] {
            assert_eq!(qemu_shadow_refuses(DEFAULT_OFFER | f), f, "{:?}", name(f));
        }
        // What QEMU 10.0 was seen refusing with x-svq=on: "features 0x200000".
        assert_eq!(qemu_shadow_refuses(DEFAULT_OFFER | GUEST_ANNOUNCE), 0x20_0000);
        let note = qemu_shadow_note(DEFAULT_OFFER | INDIRECT_DESC | GUEST_ANNOUNCE).unwrap();
        assert!(note.contains("GUEST_ANNOUNCE, INDIRECT_DESC"), "{note}");
        assert!(note.contains("will not shadow the control queue") && note.contains("live-migrated"), "{note}");
        // Offloads, RSS and hash reports are fine for QEMU (and in the default offer).
        assert_eq!(qemu_shadow_refuses(CSUM | GUEST_CSUM | HOST_TSO4 | RSS | HASH_REPORT | MRG_RXBUF), 0);
    }

    #[test]
    fn feature_lists_add_and_remove_by_name() {
        assert_eq!(select(DEFAULT_OFFER, "+indirect_desc,-mq"), Ok((DEFAULT_OFFER | INDIRECT_DESC) & !MQ));
        assert_eq!(select(DEFAULT_OFFER, "guest_announce"), Ok(DEFAULT_OFFER | GUEST_ANNOUNCE));
        assert_eq!(select(DEFAULT_OFFER, "+ring_packed"), Ok(DEFAULT_OFFER | RING_PACKED));
        assert_eq!(select(DEFAULT_OFFER, "+VIRTIO_F_RING_PACKED,-ring_packed"), Ok(DEFAULT_OFFER));
        // IN_ORDER by name only (QEMU's shadow virtqueues refuse it).
        assert_eq!(DEFAULT_OFFER & IN_ORDER, 0);
        assert_eq!(select(DEFAULT_OFFER, "+in_order"), Ok(DEFAULT_OFFER | IN_ORDER));
        assert_eq!(
            select(DEFAULT_OFFER, "+VIRTIO_F_IN_ORDER,+ring_packed"),
            Ok(DEFAULT_OFFER | IN_ORDER | RING_PACKED)
        );
        // Spec spellings and any case; spaces around items.
        assert_eq!(
            select(DEFAULT_OFFER, " +VIRTIO_RING_F_INDIRECT_DESC , -VIRTIO_NET_F_MQ"),
            select(DEFAULT_OFFER, "+indirect_desc,-mq")
        );
        assert_eq!(select(DEFAULT_OFFER, "-EVENT_IDX"), Ok(DEFAULT_OFFER & !EVENT_IDX));
        // Left to right.
        assert_eq!(select(DEFAULT_OFFER, "-status,+status"), Ok(DEFAULT_OFFER));
        // Removing the control queue takes its dependents along, like --no-ctrl-vq.
        assert_eq!(select(SUPPORTED, "-ctrl_vq"), Ok(without_ctrl_vq(SUPPORTED)));
        assert_eq!(select(DEFAULT_OFFER, "-ctrl_vq,+mac"), Ok(without_ctrl_vq(DEFAULT_OFFER)));
    }

    #[test]
    fn bad_feature_lists_say_why() {
        assert_eq!(select(DEFAULT_OFFER, "+bogus"), Err(SelectError::Unknown("bogus".into())));
        assert_eq!(select(DEFAULT_OFFER, "+guest_ufo"), Err(SelectError::NotImplemented("guest_ufo".into())));
        assert_eq!(select(DEFAULT_OFFER, "+host_uso"), Ok(DEFAULT_OFFER | HOST_USO));
        // Removing checksum offload takes nothing else along silently.
        assert_eq!(
            select(DEFAULT_OFFER, "-csum"),
            Err(SelectError::MissingDependency { feature: "HOST_TSO4", requires: "CSUM" })
        );
        assert_eq!(select(DEFAULT_OFFER, "-version_1"), Err(SelectError::Required("version_1")));
        assert_eq!(select(DEFAULT_OFFER, "-access_platform"), Err(SelectError::Required("access_platform")));
        assert!(matches!(select(DEFAULT_OFFER, "+mq,,-mtu"), Err(SelectError::Empty(_))));
        assert!(matches!(select(DEFAULT_OFFER, ""), Err(SelectError::Empty(_))));
        assert!(matches!(select(DEFAULT_OFFER, "+"), Err(SelectError::Empty(_))));
        assert_eq!(
            select(DEFAULT_OFFER, "-ctrl_vq,+mq"),
            Err(SelectError::MissingDependency { feature: "MQ", requires: "CTRL_VQ" })
        );
        let e = select(DEFAULT_OFFER, "+bogus").unwrap_err().to_string();
        assert!(e.contains("vduse-net features"), "{e}");
    }

    #[test]
    fn without_ctrl_vq_strips_all_dependents() {
        let f = without_ctrl_vq(SUPPORTED);
        for d in [CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS] {
            assert_eq!(f & d, 0, "{:?} kept", name(d));
        }
        for k in [VERSION_1, ACCESS_PLATFORM, MAC, STATUS, MTU, EVENT_IDX, INDIRECT_DESC] {
            assert_ne!(f & k, 0, "{:?} lost", name(k));
        }
        assert_eq!(without_ctrl_vq(RSS | NOTF_COAL | CSUM), CSUM);
    }

    #[test]
    fn validate_rejects_unoffered_bits() {
        let off = VERSION_1 | MAC;
        assert_eq!(validate_driver_features(off, off | STATUS), Err(FeatureError::NotOffered { bits: STATUS }));
        assert_eq!(validate_driver_features(off, VERSION_1), Ok(()));
    }

    #[test]
    fn validate_requires_version_1() {
        assert_eq!(validate_driver_features(SUPPORTED, MAC), Err(FeatureError::MissingVersion1));
    }

    #[test]
    fn validate_checks_ctrl_vq_dependencies() {
        for f in [CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR] {
            let err = validate_driver_features(SUPPORTED, VERSION_1 | f).unwrap_err();
            assert_eq!(err, FeatureError::MissingDependency { feature: name(f).unwrap(), requires: "CTRL_VQ" });
            validate_driver_features(SUPPORTED, VERSION_1 | f | CTRL_VQ).unwrap();
        }
    }

    #[test]
    fn validate_checks_offload_dependencies() {
        let all = u64::MAX;
        assert!(validate_driver_features(all, VERSION_1 | GUEST_TSO4).is_err());
        validate_driver_features(all, VERSION_1 | GUEST_TSO4 | GUEST_CSUM).unwrap();
        assert!(validate_driver_features(all, VERSION_1 | HOST_ECN | CSUM).is_err());
        validate_driver_features(all, VERSION_1 | HOST_ECN | HOST_TSO6 | CSUM).unwrap();
        assert!(validate_driver_features(all, VERSION_1 | RSC_EXT | CSUM).is_err());
    }

    #[test]
    fn names_lists_known_bits_in_order() {
        assert_eq!(names(VERSION_1 | MAC | CTRL_VQ), vec!["MAC", "CTRL_VQ", "VERSION_1"]);
        assert!(names(1 << 49).is_empty());
        let d = describe(MAC | (1 << 49));
        assert!(d.contains("MAC") && d.contains("bit49"), "{d}");
        // Every offered bit has a name, so logs never hide one.
        assert_eq!(names(SUPPORTED).len(), SUPPORTED.count_ones() as usize);
    }
}
