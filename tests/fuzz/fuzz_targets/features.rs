//! Driver feature validation at FEATURES_OK against the spec's rules
//! (virtio 1.3 §2.2 and §5.1.3.1) written out independently here, plus the
//! helpers the logs and the CTRL_VQ fallback use.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vduse_net::net::features::FeatureError;
use vduse_net::net::features::{self as f, describe, name, names, validate_driver_features, without_ctrl_vq};

/// (feature bit, bits of which at least one must be accepted with it).
const RULES: &[(u32, &[u32])] = &[
    (7, &[1]),       // GUEST_TSO4 -> GUEST_CSUM
    (8, &[1]),       // GUEST_TSO6 -> GUEST_CSUM
    (9, &[7, 8]),    // GUEST_ECN -> GUEST_TSO4 | GUEST_TSO6
    (10, &[1]),      // GUEST_UFO -> GUEST_CSUM
    (54, &[1]),      // GUEST_USO4 -> GUEST_CSUM
    (55, &[1]),      // GUEST_USO6 -> GUEST_CSUM
    (11, &[0]),      // HOST_TSO4 -> CSUM
    (12, &[0]),      // HOST_TSO6 -> CSUM
    (13, &[11, 12]), // HOST_ECN -> HOST_TSO4 | HOST_TSO6
    (14, &[0]),      // HOST_UFO -> CSUM
    (56, &[0]),      // HOST_USO -> CSUM
    (18, &[17]),     // CTRL_RX -> CTRL_VQ
    (19, &[17]),     // CTRL_VLAN -> CTRL_VQ
    (21, &[17]),     // GUEST_ANNOUNCE -> CTRL_VQ
    (22, &[17]),     // MQ -> CTRL_VQ
    (23, &[17]),     // CTRL_MAC_ADDR -> CTRL_VQ
    (53, &[17]),     // NOTF_COAL -> CTRL_VQ
    (52, &[17]),     // VQ_NOTF_COAL -> CTRL_VQ
    (61, &[11, 12]), // RSC_EXT -> HOST_TSO4 | HOST_TSO6
    (60, &[17]),     // RSS -> CTRL_VQ
    (50, &[17]),     // DEVICE_STATS -> CTRL_VQ
];

const VERSION_1: u64 = 1 << 32;

fn has(x: u64, bit: u32) -> bool {
    x & (1u64 << bit) != 0
}

fn run(offered: u64, accepted: u64) {
    let got = validate_driver_features(offered, accepted);
    let not_offered = accepted & !offered;
    let broken_rule = RULES.iter().find(|(b, any)| has(accepted, *b) && !any.iter().any(|r| has(accepted, *r)));
    match got {
        Ok(()) => {
            assert_eq!(not_offered, 0);
            assert_ne!(accepted & VERSION_1, 0);
            assert!(broken_rule.is_none(), "{accepted:#x} accepted though it breaks {broken_rule:?}");
        }
        Err(FeatureError::NotOffered { bits }) => assert_eq!(bits, not_offered),
        Err(FeatureError::MissingVersion1) => {
            assert_eq!(not_offered, 0);
            assert_eq!(accepted & VERSION_1, 0);
        }
        Err(FeatureError::MissingDependency { feature, .. }) => {
            assert_eq!(not_offered, 0);
            assert_ne!(accepted & VERSION_1, 0);
            let (bit, _) = broken_rule.expect("a rule is broken");
            // Some rule is broken, and the named feature is one that breaks a rule.
            let named = RULES
                .iter()
                .filter(|(b, any)| has(accepted, *b) && !any.iter().any(|r| has(accepted, *r)))
                .any(|(b, _)| name(1u64 << b) == Some(feature));
            assert!(named, "{feature} named, first broken rule is bit {bit}");
        }
    }
    // The fallback without the control queue is valid whenever the full set
    // is, and keeps nothing that needs CTRL_VQ.
    let w = without_ctrl_vq(accepted);
    assert_eq!(w & !accepted, 0);
    assert_eq!(w & (f::CTRL_VQ | f::NEEDS_CTRL_VQ), 0);
    if validate_driver_features(offered, accepted).is_ok() {
        assert!(validate_driver_features(without_ctrl_vq(offered), w).is_ok(), "{accepted:#x} -> {w:#x}");
    }
    // Logging helpers cover every bit without panicking.
    let d = describe(accepted);
    if accepted != 0 {
        // "0x... [A B bit49]": one word per set bit after the number.
        assert_eq!(d.split(' ').count(), accepted.count_ones() as usize + 1, "{d}");
    }
    assert!(names(accepted).len() <= accepted.count_ones() as usize);
}

fuzz_target!(|data: [u64; 2]| {
    let [offered, accepted] = data;
    // Mostly the device's real offers (default or everything it can);
    // sometimes anything.
    let offered = match offered & 7 {
        0 | 1 => f::DEFAULT_OFFER,
        2 => f::SUPPORTED,
        3 => without_ctrl_vq(f::DEFAULT_OFFER),
        4 => without_ctrl_vq(f::SUPPORTED),
        5 => offered | f::SUPPORTED,
        _ => offered,
    };
    run(offered, accepted);
    run(offered, accepted & offered);
});
