//! The per-packet `virtio_net_hdr` (virtio spec 1.3 §5.1.6).
//!
//! With VERSION_1 the header is always 12 bytes: `num_buffers` is present
//! whether or not MRG_RXBUF was negotiated (§5.1.6, "struct virtio_net_hdr").
//! Every buffer on both queues starts with it.

use super::features;
use virtio_bindings::bindings::virtio_net as vn;

pub const HDR_LEN: usize = 12;
/// With VIRTIO_NET_F_HASH_REPORT the header is `virtio_net_hdr_v1_hash`:
/// the 12 bytes, then `le32 hash_value`, `le16 hash_report`, `le16
/// padding`. Linux uses this size on both queues, so TX buffers carry it
/// too (the device ignores the hash fields there).
pub const HASH_HDR_LEN: usize = 20;

/// The header length every buffer starts with for `negotiated` features.
pub fn hdr_len(negotiated: u64) -> usize {
    if negotiated & features::HASH_REPORT != 0 {
        HASH_HDR_LEN
    } else {
        HDR_LEN
    }
}

/// Writes `hash_value`, `hash_report` and zero padding to bytes 12..20 of
/// `b`, the hash part of `virtio_net_hdr_v1_hash`.
pub fn encode_hash(b: &mut [u8], value: u32, report: u16) -> Result<(), HdrError> {
    let got = b.len();
    let h = b.get_mut(HDR_LEN..HASH_HDR_LEN).ok_or(HdrError::HashTooShort { got })?;
    h[..4].copy_from_slice(&value.to_le_bytes());
    h[4..6].copy_from_slice(&report.to_le_bytes());
    h[6..].copy_from_slice(&[0, 0]);
    Ok(())
}

/// Reads `(hash_value, hash_report)` from a 20-byte header (driver side).
pub fn parse_hash(b: &[u8]) -> Result<(u32, u16), HdrError> {
    let h = b.get(HDR_LEN..HASH_HDR_LEN).ok_or(HdrError::HashTooShort { got: b.len() })?;
    Ok((u32::from_le_bytes([h[0], h[1], h[2], h[3]]), u16::from_le_bytes([h[4], h[5]])))
}

pub const F_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
pub const F_DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
pub const F_RSC_INFO: u8 = vn::VIRTIO_NET_HDR_F_RSC_INFO as u8;
pub const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
pub const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const GSO_UDP: u8 = vn::VIRTIO_NET_HDR_GSO_UDP as u8;
pub const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;
pub const GSO_UDP_L4: u8 = vn::VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
pub const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    #[error("buffer of {got} bytes is shorter than the {HDR_LEN}-byte virtio-net header")]
    TooShort { got: usize },
    #[error("buffer of {got} bytes is shorter than the {HASH_HDR_LEN}-byte hash-report header")]
    HashTooShort { got: usize },
    #[error("TX header asks for checksum offload, but VIRTIO_NET_F_CSUM was not negotiated")]
    CsumNotNegotiated,
    #[error("TX header has gso_type {0:#x}, but no matching host GSO feature was negotiated")]
    GsoNotNegotiated(u8),
}

/// `struct virtio_net_hdr` in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl NetHdr {
    /// The header the device writes on RX when it offers no offloads: no
    /// flags, no GSO, and `num_buffers` buffers (1 without MRG_RXBUF).
    pub const fn rx(num_buffers: u16) -> Self {
        NetHdr { flags: 0, gso_type: GSO_NONE, hdr_len: 0, gso_size: 0, csum_start: 0, csum_offset: 0, num_buffers }
    }

    /// Reads the header from the start of `b` (which may hold the frame too).
    #[inline]
    pub fn parse(b: &[u8]) -> Result<Self, HdrError> {
        let Some(h) = b.get(..HDR_LEN) else {
            return Err(HdrError::TooShort { got: b.len() });
        };
        let le16 = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
        Ok(NetHdr {
            flags: h[0],
            gso_type: h[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
            num_buffers: le16(10),
        })
    }

    /// Writes the header into the first [`HDR_LEN`] bytes of `b`.
    #[inline]
    pub fn encode(&self, b: &mut [u8]) -> Result<(), HdrError> {
        let got = b.len();
        let Some(h) = b.get_mut(..HDR_LEN) else {
            return Err(HdrError::TooShort { got });
        };
        h.copy_from_slice(&self.to_bytes());
        Ok(())
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut h = [0u8; HDR_LEN];
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        h
    }

    /// Checks a driver-written TX header against what was negotiated
    /// (§5.1.6.2.1): NEEDS_CSUM needs CSUM, a GSO type needs its HOST_*
    /// feature. Other flag bits are ignored as the spec requires.
    pub fn check_tx(&self, negotiated: u64) -> Result<(), HdrError> {
        if self.flags & F_NEEDS_CSUM != 0 && negotiated & features::CSUM == 0 {
            return Err(HdrError::CsumNotNegotiated);
        }
        let needed = match self.gso_type & !GSO_ECN {
            GSO_NONE if self.gso_type & GSO_ECN == 0 => return Ok(()),
            GSO_TCPV4 => features::HOST_TSO4,
            GSO_TCPV6 => features::HOST_TSO6,
            GSO_UDP => features::HOST_UFO,
            GSO_UDP_L4 => features::HOST_USO,
            _ => return Err(HdrError::GsoNotNegotiated(self.gso_type)),
        };
        let ecn_ok = self.gso_type & GSO_ECN == 0 || negotiated & features::HOST_ECN != 0;
        if negotiated & needed == 0 || !ecn_ok {
            return Err(HdrError::GsoNotNegotiated(self.gso_type));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;
    use virtio_bindings::bindings::virtio_net::virtio_net_hdr_mrg_rxbuf;

    #[test]
    fn length_matches_bindings() {
        assert_eq!(size_of::<virtio_net_hdr_mrg_rxbuf>(), HDR_LEN);
    }

    #[test]
    fn parse_and_encode_round_trip() {
        let h = NetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 0x81, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        assert_eq!(NetHdr::parse(&b), Ok(h));
        let mut buf = [0xeeu8; 20];
        h.encode(&mut buf).unwrap();
        assert_eq!(&buf[..HDR_LEN], &b);
        assert_eq!(buf[HDR_LEN..], [0xee; 8], "encode wrote past the header");
        assert_eq!(NetHdr::parse(&buf), Ok(h));
    }

    #[test]
    fn short_buffers_are_errors() {
        assert_eq!(NetHdr::parse(&[0; 11]), Err(HdrError::TooShort { got: 11 }));
        assert_eq!(NetHdr::rx(1).encode(&mut [0; 4]), Err(HdrError::TooShort { got: 4 }));
    }

    #[test]
    fn rx_header_is_plain() {
        let b = NetHdr::rx(1).to_bytes();
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn tx_check_follows_negotiation() {
        let plain = NetHdr::default();
        plain.check_tx(0).unwrap();
        // Unknown flag bits are ignored.
        NetHdr { flags: 0x80, ..plain }.check_tx(0).unwrap();
        let csum = NetHdr { flags: F_NEEDS_CSUM, ..plain };
        assert_eq!(csum.check_tx(0), Err(HdrError::CsumNotNegotiated));
        csum.check_tx(features::CSUM).unwrap();
        let tso = NetHdr { gso_type: GSO_TCPV4, ..plain };
        assert_eq!(tso.check_tx(features::CSUM), Err(HdrError::GsoNotNegotiated(GSO_TCPV4)));
        tso.check_tx(features::CSUM | features::HOST_TSO4).unwrap();
        let ecn = NetHdr { gso_type: GSO_TCPV6 | GSO_ECN, ..plain };
        assert!(ecn.check_tx(features::HOST_TSO6).is_err());
        ecn.check_tx(features::HOST_TSO6 | features::HOST_ECN).unwrap();
        assert!(NetHdr { gso_type: GSO_ECN, ..plain }.check_tx(u64::MAX).is_err());
        assert!(NetHdr { gso_type: 7, ..plain }.check_tx(u64::MAX).is_err());
    }

    #[test]
    fn hash_report_header() {
        use virtio_bindings::bindings::virtio_net::virtio_net_hdr_v1_hash;
        assert_eq!(size_of::<virtio_net_hdr_v1_hash>(), HASH_HDR_LEN);
        assert_eq!(hdr_len(0), HDR_LEN);
        assert_eq!(hdr_len(features::HASH_REPORT), HASH_HDR_LEN);
        let mut b = [0xeeu8; 24];
        NetHdr::rx(1).encode(&mut b).unwrap();
        encode_hash(&mut b, 0x5101_c1cc, 2).unwrap();
        assert_eq!(b[12..20], [0xcc, 0xc1, 0x01, 0x51, 2, 0, 0, 0]);
        assert_eq!(b[20..], [0xee; 4]);
        assert_eq!(parse_hash(&b), Ok((0x5101_c1cc, 2)));
        assert_eq!(encode_hash(&mut [0; 19], 1, 1), Err(HdrError::HashTooShort { got: 19 }));
        assert_eq!(parse_hash(&[0; 12]), Err(HdrError::HashTooShort { got: 12 }));
    }
}
