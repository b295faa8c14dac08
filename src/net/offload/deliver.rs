//! The per-frame, per-receiver decision: "no frame ever reaches a receiver
//! in a form it did not negotiate" (issue 11).
//!
//! Given a validated [`Offload`] and what one receiver accepts
//! ([`OffloadCaps::guest`] for a driver's RX queue, the port's caps for a
//! port), [`Offload::deliver`] says whether the frame goes as it is, needs
//! its checksum completed, or must be segmented, and gives the virtio-net
//! header the receiver gets. It allocates nothing and reads no frame bytes.

use super::caps::OffloadCaps;
use super::gso::SegCsum;
use super::validate::{CsumState, Gso, Offload};
use crate::net::hdr::{self, NetHdr};

/// What to do with one frame for one receiver. Every header returned has
/// `num_buffers` 1; the RX path sets it (MRG_RXBUF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Deliver the bytes unchanged with this header.
    AsIs(NetHdr),
    /// Complete the checksum first ([`super::csum::complete`] with `start`,
    /// `offset`), then deliver with `hdr` (no offload flags).
    CompleteCsum { start: usize, offset: usize, hdr: NetHdr },
    /// Segment with [`super::Segmenter`] in `mode`; every segment carries
    /// `hdr` (the same as `Segmenter::hdr`).
    Segment { mode: SegCsum, hdr: NetHdr },
}

impl Delivery {
    /// True when the frame is delivered byte for byte.
    pub fn is_as_is(&self) -> bool {
        matches!(self, Delivery::AsIs(_))
    }
}

/// The header of a frame with nothing to do and nothing known.
fn plain() -> NetHdr {
    NetHdr::rx(1)
}

fn partial(start: usize, offset: usize) -> NetHdr {
    // Offsets come from a validated header: they fit u16.
    NetHdr { flags: hdr::F_NEEDS_CSUM, csum_start: start as u16, csum_offset: offset as u16, ..plain() }
}

/// The header of a GSO frame passed on unsegmented (§5.1.6.4: NEEDS_CSUM,
/// gso_size, hdr_len not less than the headers).
fn gso_hdr(g: &Gso) -> NetHdr {
    NetHdr {
        gso_type: g.kind.gso_type() | if g.ecn { hdr::GSO_ECN } else { 0 },
        hdr_len: g.hdr_len as u16,
        gso_size: g.mss,
        ..partial(g.l4_off, g.csum_offset())
    }
}

/// The header every segment of `g` carries in `mode`.
pub(crate) fn segment_hdr(g: &Gso, mode: SegCsum) -> NetHdr {
    match mode {
        SegCsum::Full => plain(),
        SegCsum::Partial => partial(g.l4_off, g.csum_offset()),
    }
}

impl Offload {
    /// Decides how this frame reaches a receiver that accepts `to`:
    /// - GSO frame: as is when the receiver takes this GSO kind (and ECN
    ///   when the frame has it) and partial checksums; otherwise segmented,
    ///   with partial checksums if it takes those, complete ones if not.
    /// - NEEDS_CSUM frame: as is to a receiver with checksum offload;
    ///   completed for one without.
    /// - A verified frame (DATA_VALID from a trusted port): as is, with
    ///   DATA_VALID only for a receiver with checksum offload (§5.1.6.4:
    ///   without GUEST_CSUM the flags must be zero).
    /// - Anything else: as is, no flags.
    pub fn deliver(&self, to: &OffloadCaps) -> Delivery {
        let to = to.normalized();
        if let Some(g) = &self.gso {
            let takes = to.csum && g.kind.accepted_by(&to) && (!g.ecn || to.tso_ecn);
            if takes {
                return Delivery::AsIs(gso_hdr(g));
            }
            let mode = if to.csum { SegCsum::Partial } else { SegCsum::Full };
            return Delivery::Segment { mode, hdr: segment_hdr(g, mode) };
        }
        match self.csum {
            CsumState::Partial { start, offset } if to.csum => Delivery::AsIs(partial(start, offset)),
            CsumState::Partial { start, offset } => Delivery::CompleteCsum { start, offset, hdr: plain() },
            CsumState::Valid if to.csum => Delivery::AsIs(NetHdr { flags: hdr::F_DATA_VALID, ..plain() }),
            CsumState::Valid | CsumState::Unknown => Delivery::AsIs(plain()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::caps::Sender;
    use super::super::validate::validate;
    use super::*;
    use crate::net::wire::build::{CsumFill, FrameSpec};

    fn offload(spec: FrameSpec, mss: Option<u16>) -> Offload {
        let spec = FrameSpec { csum: CsumFill::Partial, ..spec };
        validate(&spec.build(), &spec.offload_hdr(mss), &Sender::port(OffloadCaps::ALL)).unwrap()
    }

    /// Every receiver capability combination (2^6).
    fn all_caps() -> impl Iterator<Item = OffloadCaps> {
        (0..64u32).map(|b| OffloadCaps {
            csum: b & 1 != 0,
            tso4: b & 2 != 0,
            tso6: b & 4 != 0,
            tso_ecn: b & 8 != 0,
            uso4: b & 16 != 0,
            uso6: b & 32 != 0,
        })
    }

    /// What a receiver with `to` may get, checked from the header alone:
    /// the property "no frame in a form it did not negotiate".
    fn allowed(h: &NetHdr, to: &OffloadCaps) -> bool {
        let to = to.normalized();
        let flags_ok = h.flags & (hdr::F_NEEDS_CSUM | hdr::F_DATA_VALID) == 0 || to.csum;
        let gso_ok = match h.gso_type & !hdr::GSO_ECN {
            hdr::GSO_NONE => h.gso_type == 0,
            hdr::GSO_TCPV4 => to.tso4,
            hdr::GSO_TCPV6 => to.tso6,
            hdr::GSO_UDP_L4 => to.uso4 || to.uso6,
            _ => false,
        };
        let ecn_ok = h.gso_type & hdr::GSO_ECN == 0 || to.tso_ecn;
        let gso_has_csum = h.gso_type == 0 || h.flags & hdr::F_NEEDS_CSUM != 0;
        flags_ok && gso_ok && ecn_ok && gso_has_csum && h.num_buffers == 1
    }

    #[test]
    fn never_a_form_the_receiver_did_not_negotiate() {
        let kinds = [(true, false), (true, true), (false, false), (false, true)];
        for (tcp, v6) in kinds {
            for ecn in [false, true] {
                let flags = if ecn && tcp { 0x80 | 0x10 } else { 0x10 };
                let spec = FrameSpec { tcp, v6, tcp_flags: flags, payload: 5000, ..FrameSpec::default() };
                for mss in [None, Some(1000)] {
                    let o = offload(spec, mss);
                    for to in all_caps() {
                        let d = o.deliver(&to);
                        let h = match d {
                            Delivery::AsIs(h)
                            | Delivery::CompleteCsum { hdr: h, .. }
                            | Delivery::Segment { hdr: h, .. } => h,
                        };
                        assert!(allowed(&h, &to), "{spec:?} mss {mss:?} to {to:?}: {d:?}");
                        // A GSO frame is segmented exactly when its kind is not accepted.
                        if let Some(g) = o.gso {
                            let takes = to.csum && g.kind.accepted_by(&to) && (!g.ecn || to.tso_ecn);
                            assert_eq!(d.is_as_is(), takes, "{spec:?} to {to:?}");
                            // UDP GSO to a USO4-only receiver must not pass as v6.
                            if g.kind.is_v6() && !g.kind.is_tcp() && !to.uso6 {
                                assert!(!d.is_as_is());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn checksum_paths() {
        let spec = FrameSpec::default();
        let o = offload(spec, None);
        assert_eq!(
            o.deliver(&OffloadCaps::NONE),
            Delivery::CompleteCsum { start: spec.l4_off(), offset: 16, hdr: NetHdr::rx(1) }
        );
        let d = o.deliver(&OffloadCaps { csum: true, ..OffloadCaps::NONE });
        let want =
            NetHdr { flags: hdr::F_NEEDS_CSUM, csum_start: spec.l4_off() as u16, csum_offset: 16, ..NetHdr::rx(1) };
        assert_eq!(d, Delivery::AsIs(want));
        let valid = Offload { csum: CsumState::Valid, gso: None };
        assert_eq!(valid.deliver(&OffloadCaps::NONE), Delivery::AsIs(NetHdr::rx(1)));
        assert_eq!(
            valid.deliver(&OffloadCaps::ALL),
            Delivery::AsIs(NetHdr { flags: hdr::F_DATA_VALID, ..NetHdr::rx(1) })
        );
        assert_eq!(Offload::PLAIN.deliver(&OffloadCaps::ALL), Delivery::AsIs(NetHdr::rx(1)));
    }

    #[test]
    fn gso_pass_through_header() {
        let spec = FrameSpec { v6: true, vlans: 1, payload: 9000, ..FrameSpec::default() };
        let o = offload(spec, Some(1440));
        let Delivery::AsIs(h) = o.deliver(&OffloadCaps::ALL) else { panic!("not passed through") };
        assert_eq!(h.gso_type, hdr::GSO_TCPV6);
        assert_eq!(h.flags, hdr::F_NEEDS_CSUM);
        assert_eq!(h.gso_size, 1440);
        assert_eq!(h.hdr_len as usize, spec.hdr_len());
        assert_eq!(h.csum_start as usize, spec.l4_off());
        assert_eq!(h.csum_offset, 16);
        let Delivery::Segment { mode, hdr: sh } = o.deliver(&OffloadCaps { tso6: false, ..OffloadCaps::ALL }) else {
            panic!("not segmented")
        };
        assert_eq!(mode, SegCsum::Partial);
        assert_eq!(sh.gso_type, hdr::GSO_NONE);
        assert_eq!(sh.flags, hdr::F_NEEDS_CSUM);
        let Delivery::Segment { mode, hdr: sh } = o.deliver(&OffloadCaps::NONE) else { panic!("not segmented") };
        assert_eq!((mode, sh), (SegCsum::Full, NetHdr::rx(1)));
    }
}
