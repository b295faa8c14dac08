//! TCP and UDP headers: lengths and the field offsets offloads rewrite.

use super::ip::{PROTO_TCP, PROTO_UDP};
use super::{bytes, Layer, WireError};

pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// Offset of the checksum inside the TCP header (virtio `csum_offset`).
pub const TCP_CSUM: usize = 16;
/// Offset of the checksum inside the UDP header.
pub const UDP_CSUM: usize = 6;
pub const TCP_SEQ: usize = 4;
pub const TCP_FLAGS: usize = 13;
pub const UDP_LEN: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => PROTO_TCP,
            L4Proto::Udp => PROTO_UDP,
        }
    }
    /// Offset of the checksum field inside the header.
    pub fn csum_off(self) -> usize {
        match self {
            L4Proto::Tcp => TCP_CSUM,
            L4Proto::Udp => UDP_CSUM,
        }
    }
}

/// A TCP or UDP header inside a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    pub proto: L4Proto,
    pub off: usize,
    /// 8 for UDP, the data offset for TCP (options included).
    pub hdr_len: usize,
}

impl L4 {
    /// Source and destination ports; `None` only if `frame` is not the
    /// frame this was parsed from.
    #[inline]
    pub fn ports(&self, frame: &[u8]) -> Option<[u8; 4]> {
        frame.get(self.off..self.off + 4)?.try_into().ok()
    }
}

/// Parses the header of `proto` at `off` if it is TCP or UDP (`Ok(None)`
/// for other protocols). Guarantees `off + hdr_len <= frame.len()`.
pub fn parse(frame: &[u8], off: usize, proto: u8) -> Result<Option<L4>, WireError> {
    match proto {
        PROTO_TCP => {
            let h = bytes::<TCP_MIN_HLEN>(frame, off, Layer::Tcp)?;
            let doff = h[12] >> 4;
            if doff < 5 {
                return Err(WireError::TcpDataOffset(doff));
            }
            let hdr_len = 4 * doff as usize;
            if off + hdr_len > frame.len() {
                return Err(WireError::Truncated { layer: Layer::Tcp, need: off + hdr_len, len: frame.len() });
            }
            Ok(Some(L4 { proto: L4Proto::Tcp, off, hdr_len }))
        }
        PROTO_UDP => {
            bytes::<UDP_HLEN>(frame, off, Layer::Udp)?;
            Ok(Some(L4 { proto: L4Proto::Udp, off, hdr_len: UDP_HLEN }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_data_offset_and_udp() {
        let mut f = vec![0u8; 24];
        f[12] = 5 << 4;
        assert_eq!(parse(&f, 0, 6), Ok(Some(L4 { proto: L4Proto::Tcp, off: 0, hdr_len: 20 })));
        f[12] = 6 << 4;
        assert_eq!(parse(&f, 0, 6).unwrap().unwrap().hdr_len, 24);
        f[12] = 7 << 4;
        assert!(matches!(parse(&f, 0, 6), Err(WireError::Truncated { layer: Layer::Tcp, .. })));
        f[12] = 4 << 4;
        assert_eq!(parse(&f, 0, 6), Err(WireError::TcpDataOffset(4)));
        assert!(matches!(parse(&f[..19], 0, 6), Err(WireError::Truncated { .. })));
        assert_eq!(parse(&f, 16, 17), Ok(Some(L4 { proto: L4Proto::Udp, off: 16, hdr_len: 8 })));
        assert!(parse(&f, 17, 17).is_err());
        assert_eq!(parse(&f, 0, 1), Ok(None));
        assert_eq!(L4 { proto: L4Proto::Udp, off: 2, hdr_len: 8 }.ports(&f[..6]), Some([0, 0, 0, 0]));
        assert_eq!(L4 { proto: L4Proto::Udp, off: 3, hdr_len: 8 }.ports(&f[..6]), None);
    }
}
