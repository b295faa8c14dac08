//! Software segmentation (TSO4, TSO6, USO) of a validated GSO frame into
//! caller-provided buffers.
//!
//! Segment `i` is the frame's headers followed by payload bytes
//! `i * mss .. min((i + 1) * mss, payload_len)`, with, as the kernel's GSO
//! does:
//! - IPv4: total length, identification `id + i`, header checksum redone;
//! - IPv6: payload length;
//! - TCP: sequence number `seq + i * mss`; FIN and PSH only on the last
//!   segment, CWR only on the first;
//! - UDP: length;
//! - the L4 checksum: the driver's pseudo-header sum (the field of a
//!   NEEDS_CSUM frame, which covers the whole GSO frame's L4 length) is
//!   adjusted to the segment's length; in [`SegCsum::Full`] the checksum is
//!   then completed, in [`SegCsum::Partial`] it is left for the receiver.
//!
//! VLAN tags, IP options and IPv6 extension headers are copied into every
//! segment. [`Segmenter::write`] is independent per segment (random access,
//! no state), allocates nothing and never panics.

use super::csum::{self, add16, sub16};
use super::deliver::segment_hdr;
use super::validate::Gso;
use crate::net::hdr::NetHdr;
use crate::net::wire::ip::{IPV4_CSUM, IPV4_ID, IPV4_TOTAL_LEN, IPV6_HLEN, IPV6_PAYLOAD_LEN};
use crate::net::wire::l4::{TCP_CWR, TCP_FIN, TCP_FLAGS, TCP_PSH, TCP_SEQ, UDP_LEN};

/// How segments leave their L4 checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegCsum {
    /// Complete checksums, for receivers without checksum offload.
    Full,
    /// Pseudo-header sums with NEEDS_CSUM, for receivers with it (cheaper).
    Partial,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("GSO description does not fit this {len}-byte frame")]
    FrameMismatch { len: usize },
    #[error("segment {index} of {count}")]
    NoSuchSegment { index: usize, count: usize },
    #[error("segment needs {need} bytes, buffer has {got}")]
    BufferTooSmall { need: usize, got: usize },
}

/// Cuts one GSO frame into segments.
#[derive(Clone, Copy, Debug)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    g: Gso,
    mode: SegCsum,
    /// The driver's pseudo-header sum minus the GSO frame's L4 length.
    pseudo_base: u16,
    ipv4_id: u16,
    seq: u32,
}

/// A length as ones' complement words (IPv6 pseudo-header lengths are 32
/// bits; a valid frame's fit in 16).
fn len16(n: usize) -> u16 {
    let n = n as u32;
    add16((n >> 16) as u16, n as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl<'a> Segmenter<'a> {
    /// `g` must come from [`super::validate`] on this `frame`; a description
    /// that does not fit it is refused.
    pub fn new(frame: &'a [u8], g: &Gso, mode: SegCsum) -> Result<Self, GsoError> {
        let ip_min = if g.kind.is_v6() { IPV6_HLEN } else { 20 };
        let l4_min = if g.kind.is_tcp() { 20 } else { 8 };
        let fits = g.mss > 0
            && g.l3_off + ip_min <= g.l4_off
            && g.l4_off + l4_min <= g.hdr_len
            && g.hdr_len <= g.end
            && g.end <= frame.len();
        if !fits {
            return Err(GsoError::FrameMismatch { len: frame.len() });
        }
        let pseudo = be16(frame, g.l4_off + g.csum_offset());
        Ok(Segmenter {
            frame,
            g: *g,
            mode,
            pseudo_base: sub16(pseudo, len16(g.end - g.l4_off)),
            ipv4_id: be16(frame, g.l3_off + IPV4_ID),
            seq: u32::from_be_bytes(frame[g.l4_off + TCP_SEQ..g.l4_off + TCP_SEQ + 4].try_into().unwrap_or([0; 4])),
        })
    }

    pub fn count(&self) -> usize {
        self.g.segments()
    }

    /// Length of segment `i`, headers included.
    pub fn len_of(&self, i: usize) -> Option<usize> {
        let mss = self.g.mss as usize;
        let start = i.checked_mul(mss)?;
        let payload = self.g.payload_len();
        (i < self.count()).then(|| self.g.hdr_len + mss.min(payload - start.min(payload)))
    }

    /// The longest segment (the first).
    pub fn max_len(&self) -> usize {
        self.g.hdr_len + (self.g.mss as usize).min(self.g.payload_len())
    }

    /// The virtio-net header each segment carries.
    pub fn hdr(&self) -> NetHdr {
        segment_hdr(&self.g, self.mode)
    }

    /// Writes segment `i` to the start of `out` and returns its length.
    /// On error `out` is unchanged.
    pub fn write(&self, i: usize, out: &mut [u8]) -> Result<usize, GsoError> {
        let count = self.count();
        let len = self.len_of(i).ok_or(GsoError::NoSuchSegment { index: i, count })?;
        let got = out.len();
        let out = out.get_mut(..len).ok_or(GsoError::BufferTooSmall { need: len, got })?;
        let g = &self.g;
        let (hl, l3, l4) = (g.hdr_len, g.l3_off, g.l4_off);
        let start = hl + i * g.mss as usize;
        out[..hl].copy_from_slice(&self.frame[..hl]);
        out[hl..].copy_from_slice(&self.frame[start..start + len - hl]);

        if g.kind.is_v6() {
            let plen = (len - l3 - IPV6_HLEN) as u16;
            out[l3 + IPV6_PAYLOAD_LEN..][..2].copy_from_slice(&plen.to_be_bytes());
        } else {
            out[l3 + IPV4_TOTAL_LEN..][..2].copy_from_slice(&((len - l3) as u16).to_be_bytes());
            out[l3 + IPV4_ID..][..2].copy_from_slice(&self.ipv4_id.wrapping_add(i as u16).to_be_bytes());
            out[l3 + IPV4_CSUM..][..2].copy_from_slice(&[0, 0]);
            let c = csum::checksum(&out[l3..l4]);
            out[l3 + IPV4_CSUM..][..2].copy_from_slice(&c.to_be_bytes());
        }

        let l4_len = len - l4;
        if g.kind.is_tcp() {
            let seq = self.seq.wrapping_add((i * g.mss as usize) as u32);
            out[l4 + TCP_SEQ..][..4].copy_from_slice(&seq.to_be_bytes());
            let mut flags = out[l4 + TCP_FLAGS];
            if i + 1 < count {
                flags &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                flags &= !TCP_CWR;
            }
            out[l4 + TCP_FLAGS] = flags;
        } else {
            out[l4 + UDP_LEN..][..2].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }

        let field = l4 + g.csum_offset();
        let pseudo = add16(self.pseudo_base, len16(l4_len));
        out[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        if self.mode == SegCsum::Full {
            let c = csum::checksum(&out[l4..]);
            // 0 would mean "no checksum" for UDP; 0xffff is equal in ones' complement.
            let c = if c == 0 { 0xffff } else { c };
            out[field..field + 2].copy_from_slice(&c.to_be_bytes());
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::caps::{OffloadCaps, Sender};
    use super::super::validate::validate;
    use super::*;
    use crate::net::wire::build::{CsumFill, FrameSpec};

    fn gso(spec: &FrameSpec, mss: u16) -> (Vec<u8>, Gso) {
        let f = spec.build();
        let o = validate(&f, &spec.offload_hdr(Some(mss)), &Sender::port(OffloadCaps::ALL)).unwrap();
        (f, o.gso.unwrap())
    }

    #[test]
    fn lengths_and_bounds() {
        let spec = FrameSpec { csum: CsumFill::Partial, payload: 2500, ..FrameSpec::default() };
        let (f, g) = gso(&spec, 1000);
        let s = Segmenter::new(&f, &g, SegCsum::Full).unwrap();
        assert_eq!(s.count(), 3);
        let hl = spec.hdr_len();
        assert_eq!(
            [s.len_of(0), s.len_of(1), s.len_of(2), s.len_of(3)],
            [Some(hl + 1000), Some(hl + 1000), Some(hl + 500), None]
        );
        assert_eq!(s.len_of(usize::MAX), None);
        assert_eq!(s.max_len(), hl + 1000);
        let mut out = vec![0xaau8; hl + 999];
        assert_eq!(s.write(0, &mut out), Err(GsoError::BufferTooSmall { need: hl + 1000, got: hl + 999 }));
        assert!(out.iter().all(|&b| b == 0xaa), "failed write touched the buffer");
        assert_eq!(s.write(2, &mut out), Ok(hl + 500));
        assert_eq!(s.write(3, &mut out), Err(GsoError::NoSuchSegment { index: 3, count: 3 }));
        // A description for another frame is refused.
        assert!(Segmenter::new(&f[..f.len() - 1], &g, SegCsum::Full).is_err());
        assert!(Segmenter::new(&f, &Gso { mss: 0, ..g }, SegCsum::Full).is_err());
        assert!(Segmenter::new(&f, &Gso { l4_off: g.l3_off + 8, ..g }, SegCsum::Full).is_err());
    }

    #[test]
    fn empty_payload_is_one_segment() {
        let spec = FrameSpec { csum: CsumFill::Partial, payload: 0, ..FrameSpec::default() };
        let (f, g) = gso(&spec, 1000);
        let s = Segmenter::new(&f, &g, SegCsum::Full).unwrap();
        assert_eq!(s.count(), 1);
        let mut out = vec![0u8; 100];
        assert_eq!(s.write(0, &mut out), Ok(spec.hdr_len()));
        assert_eq!(crate::net::offload::verify(&out[..spec.hdr_len()]), crate::net::offload::Verdict::Good);
    }
}
