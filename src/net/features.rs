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

/// What this device offers. No checksum/GSO offloads: frames are always
/// complete on both paths, which keeps the dataplane copy-only.
pub const OFFERED: u64 = VERSION_1
    | ACCESS_PLATFORM
    | INDIRECT_DESC
    | EVENT_IDX
    | MAC
    | STATUS
    | MTU
    | MQ
    | CTRL_VQ
    | CTRL_RX
    | CTRL_RX_EXTRA
    | CTRL_VLAN
    | CTRL_MAC_ADDR
    | GUEST_ANNOUNCE
    | CTRL_GUEST_OFFLOADS;

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
    (bit(cfg::VIRTIO_F_ANY_LAYOUT), "ANY_LAYOUT"),
    (INDIRECT_DESC, "RING_INDIRECT_DESC"),
    (EVENT_IDX, "RING_EVENT_IDX"),
    (VERSION_1, "VERSION_1"),
    (ACCESS_PLATFORM, "ACCESS_PLATFORM"),
    (RING_PACKED, "RING_PACKED"),
    (IN_ORDER, "IN_ORDER"),
    (bit(cfg::VIRTIO_F_ORDER_PLATFORM), "ORDER_PLATFORM"),
    (bit(cfg::VIRTIO_F_SR_IOV), "SR_IOV"),
    (bit(cfg::VIRTIO_F_NOTIFICATION_DATA), "NOTIFICATION_DATA"),
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
    fn offered_set_is_self_consistent() {
        // A device must not offer a feature whose dependency it does not offer.
        validate_driver_features(OFFERED, OFFERED).unwrap();
        validate_driver_features(without_ctrl_vq(OFFERED), without_ctrl_vq(OFFERED)).unwrap();
        // No offloads: the dataplane never parses GSO/csum metadata.
        assert_eq!(OFFERED & (CSUM | GUEST_CSUM | MRG_RXBUF | HOST_TSO4 | GUEST_TSO4), 0);
        for f in [VERSION_1, ACCESS_PLATFORM, MAC, STATUS, MTU, MQ, CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA] {
            assert_ne!(OFFERED & f, 0, "{:?}", name(f));
        }
        for f in [CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE, CTRL_GUEST_OFFLOADS, EVENT_IDX, INDIRECT_DESC] {
            assert_ne!(OFFERED & f, 0, "{:?}", name(f));
        }
    }

    #[test]
    fn without_ctrl_vq_strips_all_dependents() {
        let f = without_ctrl_vq(OFFERED);
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
        assert_eq!(validate_driver_features(OFFERED, MAC), Err(FeatureError::MissingVersion1));
    }

    #[test]
    fn validate_checks_ctrl_vq_dependencies() {
        for f in [CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR] {
            let err = validate_driver_features(OFFERED, VERSION_1 | f).unwrap_err();
            assert_eq!(err, FeatureError::MissingDependency { feature: name(f).unwrap(), requires: "CTRL_VQ" });
            validate_driver_features(OFFERED, VERSION_1 | f | CTRL_VQ).unwrap();
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
        assert_eq!(names(OFFERED).len(), OFFERED.count_ones() as usize);
    }
}
