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
}
