//! Who may send which offloads, and who accepts which.

use crate::net::features as f;

/// Offloads a frame may carry towards one side: what a sender was allowed
/// to use, or what a receiver accepts. Segmentation offloads need `csum`:
/// [`OffloadCaps::normalized`] clears them without it, as tun does for
/// `TUNSETOFFLOAD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCaps {
    /// Partial checksums (NEEDS_CSUM) and DATA_VALID.
    pub csum: bool,
    pub tso4: bool,
    pub tso6: bool,
    /// TSO frames with ECN (the TCP CWR bit set).
    pub tso_ecn: bool,
    /// UDP segmentation (GSO_UDP_L4) over IPv4 / IPv6.
    pub uso4: bool,
    pub uso6: bool,
}

// TUNSETOFFLOAD flags (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_USO4: u32 = 0x20;
pub const TUN_F_USO6: u32 = 0x40;

impl OffloadCaps {
    /// Complete frames only (AF_XDP, a port without virtio-net headers, a
    /// driver that negotiated no offloads).
    pub const NONE: OffloadCaps =
        OffloadCaps { csum: false, tso4: false, tso6: false, tso_ecn: false, uso4: false, uso6: false };
    /// Everything this module knows (AF_PACKET with PACKET_VNET_HDR: the
    /// kernel finishes whatever it gets).
    pub const ALL: OffloadCaps =
        OffloadCaps { csum: true, tso4: true, tso6: true, tso_ecn: true, uso4: true, uso6: true };

    /// Segmentation offloads cleared when `csum` is off.
    pub fn normalized(self) -> Self {
        if self.csum {
            self
        } else {
            OffloadCaps::NONE
        }
    }

    /// What a driver may send on its transmit queues (§5.1.6.2): CSUM,
    /// HOST_TSO4/6, HOST_ECN, HOST_USO (both IP versions).
    pub fn host(negotiated: u64) -> Self {
        let has = |b| negotiated & b != 0;
        OffloadCaps {
            csum: has(f::CSUM),
            tso4: has(f::HOST_TSO4),
            tso6: has(f::HOST_TSO6),
            tso_ecn: has(f::HOST_ECN),
            uso4: has(f::HOST_USO),
            uso6: has(f::HOST_USO),
        }
        .normalized()
    }

    /// What a driver accepts on its receive queues (§5.1.6.4): `enabled` is
    /// the set of guest offloads in force, i.e. `CtrlState::guest_offloads()`
    /// (the negotiated GUEST_* bits, changed by CTRL_GUEST_OFFLOADS_SET).
    pub fn guest(enabled: u64) -> Self {
        let has = |b| enabled & b != 0;
        OffloadCaps {
            csum: has(f::GUEST_CSUM),
            tso4: has(f::GUEST_TSO4),
            tso6: has(f::GUEST_TSO6),
            tso_ecn: has(f::GUEST_ECN),
            uso4: has(f::GUEST_USO4),
            uso6: has(f::GUEST_USO6),
        }
        .normalized()
    }

    /// From `TUNSETOFFLOAD` flags: what a TAP accepts from us, and what it
    /// may hand us.
    pub fn from_tun_flags(flags: u32) -> Self {
        let has = |b| flags & b != 0;
        OffloadCaps {
            csum: has(TUN_F_CSUM),
            tso4: has(TUN_F_TSO4),
            tso6: has(TUN_F_TSO6),
            tso_ecn: has(TUN_F_TSO_ECN),
            uso4: has(TUN_F_USO4),
            uso6: has(TUN_F_USO6),
        }
        .normalized()
    }

    /// The `TUNSETOFFLOAD` argument for these capabilities: a TAP set up
    /// with `OffloadCaps::guest(..).tun_flags()` hands the device only
    /// frames the guest accepts, so they pass through unchanged.
    pub fn tun_flags(&self) -> u32 {
        let c = self.normalized();
        [
            (c.csum, TUN_F_CSUM),
            (c.tso4, TUN_F_TSO4),
            (c.tso6, TUN_F_TSO6),
            (c.tso_ecn, TUN_F_TSO_ECN),
            (c.uso4, TUN_F_USO4),
            (c.uso6, TUN_F_USO6),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, b)| acc | b)
    }
}

/// The side a frame and its header came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    /// Offloads it may use.
    pub caps: OffloadCaps,
    /// `hdr_len` of a GSO frame must equal the real header length
    /// (VIRTIO_NET_F_GUEST_HDRLEN negotiated); otherwise it is a hint
    /// (§5.1.6.2.2: "the device MUST NOT rely on hdr_len to be correct").
    pub exact_hdr_len: bool,
    /// DATA_VALID from this side means the checksum was verified. Drivers
    /// must not set it (§5.1.6.2.1), so it is ignored from them; the
    /// kernel's tun and packet sockets set it only for verified frames.
    pub trust_data_valid: bool,
}

impl Sender {
    /// A driver transmitting with `negotiated` features.
    pub fn driver(negotiated: u64) -> Self {
        Sender {
            caps: OffloadCaps::host(negotiated),
            exact_hdr_len: negotiated & f::GUEST_HDRLEN != 0,
            trust_data_valid: false,
        }
    }

    /// A port (TAP, AF_PACKET) whose headers come from the kernel, set up
    /// to hand us at most `caps`.
    pub fn port(caps: OffloadCaps) -> Self {
        Sender { caps: caps.normalized(), exact_hdr_len: false, trust_data_valid: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_guest_features() {
        assert_eq!(OffloadCaps::host(0), OffloadCaps::NONE);
        let all_host = f::CSUM | f::HOST_TSO4 | f::HOST_TSO6 | f::HOST_ECN | f::HOST_USO;
        assert_eq!(OffloadCaps::host(all_host), OffloadCaps::ALL);
        // Guest bits do not grant TX offloads and vice versa.
        let all_guest = f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::GUEST_ECN | f::GUEST_USO4 | f::GUEST_USO6;
        assert_eq!(OffloadCaps::host(all_guest), OffloadCaps::NONE);
        assert_eq!(OffloadCaps::guest(all_host), OffloadCaps::NONE);
        assert_eq!(OffloadCaps::guest(all_guest), OffloadCaps::ALL);
        let c = OffloadCaps::guest(f::GUEST_CSUM | f::GUEST_USO6);
        assert_eq!(c, OffloadCaps { csum: true, uso6: true, ..OffloadCaps::NONE });
        // CTRL_GUEST_OFFLOADS can turn GUEST_CSUM off while TSO stays on:
        // without checksum offload no segmentation offload is usable.
        assert_eq!(OffloadCaps::guest(f::GUEST_TSO4 | f::GUEST_TSO6), OffloadCaps::NONE);
        assert_eq!(OffloadCaps::host(f::HOST_TSO4), OffloadCaps::NONE);
    }

    #[test]
    fn tun_flags_round_trip() {
        for bits in 0..128u32 {
            let c = OffloadCaps::from_tun_flags(bits);
            assert_eq!(OffloadCaps::from_tun_flags(c.tun_flags()), c);
            if bits & TUN_F_CSUM == 0 {
                assert_eq!(c.tun_flags(), 0);
            } else {
                // UFO (0x10) is never requested.
                assert_eq!(c.tun_flags(), bits & !0x10, "{bits:#x}");
            }
        }
        assert_eq!(OffloadCaps::ALL.tun_flags(), 0x6f);
    }

    #[test]
    fn senders() {
        let d = Sender::driver(f::CSUM | f::GUEST_HDRLEN);
        assert!(d.caps.csum && d.exact_hdr_len && !d.trust_data_valid);
        let p = Sender::port(OffloadCaps { tso4: true, ..OffloadCaps::NONE });
        assert_eq!(p.caps, OffloadCaps::NONE);
        assert!(p.trust_data_valid && !p.exact_hdr_len);
    }
}
