//! Frame metadata: the offload fields of a `virtio_net_hdr` carried beside
//! a frame's bytes through ports and slot rings.
//!
//! A port that speaks virtio-net headers (TAP with IFF_VNET_HDR, AF_PACKET
//! with PACKET_VNET_HDR) passes them to and from the kernel unchanged; other
//! ports only ever see plain frames. `num_buffers` is not part of it: that
//! field describes how the device laid a frame into RX buffers, not the frame.

use crate::net::hdr::{NetHdr, F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, HDR_LEN};

/// The legacy `struct virtio_net_hdr` (no `num_buffers`): what AF_PACKET's
/// PACKET_VNET_HDR reads and writes.
pub const VNET_HDR_LEN: usize = 10;

/// Offload state of one frame, in host byte order (`Copy`, 10 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl FrameMeta {
    /// A fully checksummed frame with no segmentation work: what every port
    /// gives and takes while the device offers no offloads.
    pub const PLAIN: FrameMeta =
        FrameMeta { flags: 0, gso_type: GSO_NONE, hdr_len: 0, gso_size: 0, csum_start: 0, csum_offset: 0 };

    pub fn from_hdr(h: &NetHdr) -> Self {
        FrameMeta {
            flags: h.flags,
            gso_type: h.gso_type,
            hdr_len: h.hdr_len,
            gso_size: h.gso_size,
            csum_start: h.csum_start,
            csum_offset: h.csum_offset,
        }
    }

    /// The header for this frame with `num_buffers`.
    pub fn to_hdr(self, num_buffers: u16) -> NetHdr {
        NetHdr {
            flags: self.flags,
            gso_type: self.gso_type,
            hdr_len: self.hdr_len,
            gso_size: self.gso_size,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
            num_buffers,
        }
    }

    /// From the first [`VNET_HDR_LEN`] bytes of a little-endian header (the
    /// 12-byte form parses the same; its `num_buffers` is ignored).
    #[inline]
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        FrameMeta {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
        }
    }

    /// The legacy 10-byte header, little endian (VERSION_1 / vnet_le).
    #[inline]
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h
    }

    /// The 12-byte header with `num_buffers` (TAP after TUNSETVNETHDRSZ 12).
    #[inline]
    pub fn to_bytes12(self, num_buffers: u16) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[..VNET_HDR_LEN].copy_from_slice(&self.to_bytes());
        h[VNET_HDR_LEN..].copy_from_slice(&num_buffers.to_le_bytes());
        h
    }

    #[inline]
    pub fn needs_csum(self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    #[inline]
    pub fn is_gso(self) -> bool {
        // Any type, ECN alone included, is segmentation work.
        self.gso_type != GSO_NONE
    }

    /// The frame still needs work a receiver without offloads cannot do:
    /// a partial checksum or segmentation. `DATA_VALID` is only a hint and
    /// does not count.
    #[inline]
    pub fn is_offloaded(self) -> bool {
        self.needs_csum() || self.is_gso()
    }

    /// The same frame as a plain receiver may see it: hints dropped.
    /// `None` when it still needs offload work.
    #[inline]
    pub fn plain(self) -> Option<FrameMeta> {
        (!self.is_offloaded()).then_some(FrameMeta::PLAIN)
    }

    /// The checksum is known good (`DATA_VALID`).
    #[inline]
    pub fn data_valid(self) -> bool {
        self.flags & F_DATA_VALID != 0
    }
}

/// Collects the first [`HDR_LEN`] bytes of a TX chain while it is walked
/// piece by piece (the header may be split over descriptors).
#[derive(Clone, Copy, Debug, Default)]
pub struct HdrCapture {
    buf: [u8; HDR_LEN],
    got: usize,
}

impl HdrCapture {
    /// Take up to the rest of the header from `piece`; returns how many
    /// bytes of `piece` belong to the header.
    ///
    /// # Safety
    /// `p` must be valid for `n` reads.
    #[inline]
    pub unsafe fn take(&mut self, p: *const u8, n: usize) -> usize {
        let k = (HDR_LEN - self.got).min(n);
        // SAFETY: the caller's contract covers p[..n], k <= n; the
        // destination has HDR_LEN - got >= k bytes left.
        unsafe { std::ptr::copy_nonoverlapping(p, self.buf.as_mut_ptr().add(self.got), k) };
        self.got += k;
        k
    }

    /// Header bytes still missing.
    #[inline]
    pub fn missing(&self) -> usize {
        HDR_LEN - self.got
    }

    /// The metadata of a complete header (`PLAIN` if it was cut short; the
    /// caller drops such a chain anyway).
    #[inline]
    pub fn meta(&self) -> FrameMeta {
        if self.got < HDR_LEN {
            return FrameMeta::PLAIN;
        }
        let mut h = [0u8; VNET_HDR_LEN];
        h.copy_from_slice(&self.buf[..VNET_HDR_LEN]);
        FrameMeta::parse(&h)
    }
}

/// Finish a partial checksum in software (what `NEEDS_CSUM` asks for): the
/// 16-bit ones' complement sum of `frame[start..]` (whose checksum field
/// holds the pseudo-header sum) is folded and stored at `start + offset`.
/// Returns `false` (frame untouched) when the offsets do not fit the frame.
pub fn finish_checksum(frame: &mut [u8], meta: FrameMeta) -> bool {
    let (start, at) = (meta.csum_start as usize, meta.csum_start as usize + meta.csum_offset as usize);
    if start >= frame.len() || at + 2 > frame.len() {
        return false;
    }
    let mut sum = 0u64;
    let mut chunks = frame[start..].chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::hdr::{GSO_ECN, GSO_TCPV4, GSO_UDP_L4};

    #[test]
    fn header_bytes_round_trip_and_match_nethdr() {
        let m = FrameMeta {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = m.to_bytes();
        assert_eq!(FrameMeta::parse(&b), m);
        let h = m.to_hdr(1);
        assert_eq!(h.to_bytes(), m.to_bytes12(1));
        assert_eq!(FrameMeta::from_hdr(&NetHdr::parse(&h.to_bytes()).unwrap()), m);
    }

    #[test]
    fn offloaded_means_csum_or_gso_not_hints() {
        assert!(!FrameMeta::PLAIN.is_offloaded());
        let valid = FrameMeta { flags: F_DATA_VALID, ..FrameMeta::PLAIN };
        assert!(!valid.is_offloaded());
        assert_eq!(valid.plain(), Some(FrameMeta::PLAIN));
        assert!(FrameMeta { flags: F_NEEDS_CSUM, ..FrameMeta::PLAIN }.is_offloaded());
        assert!(FrameMeta { gso_type: GSO_UDP_L4, ..FrameMeta::PLAIN }.is_offloaded());
        assert!(FrameMeta { gso_type: GSO_ECN, ..FrameMeta::PLAIN }.is_offloaded());
        assert_eq!(FrameMeta { gso_type: GSO_TCPV4, ..FrameMeta::PLAIN }.plain(), None);
    }

    #[test]
    fn capture_collects_a_header_split_over_pieces() {
        let m =
            FrameMeta { flags: F_NEEDS_CSUM, gso_type: 0, hdr_len: 0, gso_size: 0, csum_start: 0x1234, csum_offset: 6 };
        let mut stream = m.to_bytes12(0).to_vec();
        stream.extend_from_slice(b"frame");
        let mut c = HdrCapture::default();
        // Pieces of 5, 4 and 8 bytes: 12 header bytes, then 5 of frame.
        let mut used = 0;
        for piece in [&stream[..5], &stream[5..9], &stream[9..]] {
            // SAFETY: piece is a live slice.
            used += unsafe { c.take(piece.as_ptr(), piece.len()) };
        }
        assert_eq!(used, HDR_LEN);
        assert_eq!(c.missing(), 0);
        assert_eq!(c.meta(), m);
        let mut short = HdrCapture::default();
        // SAFETY: as above.
        unsafe { short.take(stream.as_ptr(), 7) };
        assert_eq!(short.missing(), 5);
        assert_eq!(short.meta(), FrameMeta::PLAIN);
    }

    #[test]
    fn software_checksum_matches_a_known_udp_packet() {
        // IPv4/UDP 10.0.0.1:1000 -> 10.0.0.2:2000, payload "hi", checksum
        // field primed with the pseudo-header sum as the kernel leaves it.
        let mut f = vec![0u8; 14 + 20 + 8 + 2];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = 14;
        f[ip] = 0x45;
        f[ip + 9] = 17;
        f[ip + 12..ip + 16].copy_from_slice(&[10, 0, 0, 1]);
        f[ip + 16..ip + 20].copy_from_slice(&[10, 0, 0, 2]);
        let udp = ip + 20;
        f[udp..udp + 2].copy_from_slice(&1000u16.to_be_bytes());
        f[udp + 2..udp + 4].copy_from_slice(&2000u16.to_be_bytes());
        f[udp + 4..udp + 6].copy_from_slice(&10u16.to_be_bytes());
        f[udp + 8..].copy_from_slice(b"hi");
        // Pseudo header: src + dst + proto + udp length (not complemented).
        let pseudo: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 10;
        let folded = ((pseudo & 0xffff) + (pseudo >> 16)) as u16;
        f[udp + 6..udp + 8].copy_from_slice(&folded.to_be_bytes());
        let m = FrameMeta { flags: F_NEEDS_CSUM, csum_start: udp as u16, csum_offset: 6, ..FrameMeta::PLAIN };
        assert!(finish_checksum(&mut f, m));
        // A receiver's check: pseudo header + segment sums to 0xffff.
        let mut sum: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 10;
        for c in f[udp..].chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        // Offsets outside the frame leave it alone.
        let before = f.clone();
        assert!(!finish_checksum(&mut f, FrameMeta { csum_start: 40, csum_offset: 6, ..m }));
        assert_eq!(f, before);
    }
}
