//! Checksum verification of a complete frame: the IPv4 header checksum
//! and the TCP/UDP checksum over the pseudo-header computed from the
//! addresses. Used to decide whether DATA_VALID may be set for a frame from
//! a port that gives no checksum information, and by tests as the
//! independent check of frames this module produced.

use super::csum;
use crate::net::wire::{self, Fragment, IpVersion, L4Proto};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// IPv4 header (if any) and L4 checksums are correct.
    Good,
    /// A checksum is wrong.
    Bad,
    /// Cannot tell: not TCP/UDP over IP, a fragment, unparsable headers, a
    /// routing header with segments left (the pseudo-header's destination
    /// is elsewhere), or an IPv4 UDP datagram without checksum.
    Unknown,
}

/// Verifies the checksums of `frame` (an Ethernet frame).
pub fn verify(frame: &[u8]) -> Verdict {
    let Ok(h) = wire::parse(frame) else {
        return Verdict::Unknown;
    };
    let ip = &h.ip;
    // wire::parse guarantees off <= l4_off <= end <= frame.len().
    if ip.version == IpVersion::V4 && csum::checksum(&frame[ip.off..ip.l4_off]) != 0 {
        return Verdict::Bad;
    }
    let Some(l4) = h.l4 else {
        return Verdict::Unknown;
    };
    if ip.fragment != Fragment::None || ip.rh_pending {
        return Verdict::Unknown;
    }
    let data = &frame[l4.off..ip.end];
    let field = l4.proto.csum_off();
    if l4.proto == L4Proto::Udp && data[field..field + 2] == [0, 0] {
        // IPv4: no checksum sent. IPv6: zero is not allowed (RFC 8200 §8.1).
        return if ip.version == IpVersion::V4 { Verdict::Unknown } else { Verdict::Bad };
    }
    let Some((src, dst)) = ip.addrs(frame) else {
        return Verdict::Unknown;
    };
    let proto = l4.proto.number();
    let mut c = match ip.version {
        IpVersion::V4 => match (<[u8; 4]>::try_from(src), <[u8; 4]>::try_from(dst)) {
            (Ok(s), Ok(d)) => csum::pseudo_v4(&s, &d, proto, data.len() as u16),
            _ => return Verdict::Unknown,
        },
        IpVersion::V6 => match (<[u8; 16]>::try_from(src), <[u8; 16]>::try_from(dst)) {
            (Ok(s), Ok(d)) => csum::pseudo_v6(&s, &d, proto, data.len() as u32),
            _ => return Verdict::Unknown,
        },
    };
    c.add(data);
    if c.fold() == 0xffff {
        Verdict::Good
    } else {
        Verdict::Bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::build::{CsumFill, FrameSpec};

    #[test]
    fn good_bad_unknown() {
        for v6 in [false, true] {
            for tcp in [false, true] {
                for ext in [false, true] {
                    let spec = FrameSpec {
                        v6,
                        tcp,
                        ipv6_ext: ext && v6,
                        ipv4_opts: if ext { 12 } else { 0 },
                        payload: 301,
                        ..FrameSpec::default()
                    };
                    let mut f = spec.build();
                    assert_eq!(verify(&f), Verdict::Good, "{spec:?}");
                    let last = f.len() - 1;
                    f[last] ^= 1;
                    assert_eq!(verify(&f), Verdict::Bad, "{spec:?}");
                    let f = FrameSpec { csum: CsumFill::Partial, ..spec }.build();
                    assert_eq!(verify(&f), Verdict::Bad, "{spec:?}");
                }
            }
        }
        // Broken IPv4 header checksum.
        let spec = FrameSpec::default();
        let mut f = spec.build();
        f[spec.l3_off() + 8] -= 1; // TTL
        assert_eq!(verify(&f), Verdict::Bad);
        // UDP without checksum.
        let u4 = FrameSpec { tcp: false, csum: CsumFill::Zero, ..FrameSpec::default() };
        assert_eq!(verify(&u4.build()), Verdict::Unknown);
        assert_eq!(verify(&FrameSpec { v6: true, ..u4 }.build()), Verdict::Bad);
        assert_eq!(verify(&[0u8; 10]), Verdict::Unknown);
        // Ethernet padding after the packet is not summed.
        let mut f = FrameSpec { payload: 1, ..FrameSpec::default() }.build();
        f.extend_from_slice(&[0x55; 5]);
        assert_eq!(verify(&f), Verdict::Good);
    }
}
