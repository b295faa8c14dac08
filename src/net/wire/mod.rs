//! Header parsing for what offloads and RSS need (smoltcp's `wire` idea):
//! pure functions over byte slices, no I/O, no allocation, every access
//! bounds-checked, errors typed.
//!
//! - [`eth`]: Ethernet II with up to two VLAN tags (802.1Q / 802.1ad).
//! - [`ip`]: IPv4 (options) and IPv6 (extension headers: hop-by-hop,
//!   routing, fragment, destination options, AH).
//! - [`l4`]: TCP and UDP header lengths and field offsets.
//! - [`build`]: builds well-formed frames (tests, fuzzing, benchmarks).
//!
//! [`parse`] runs all three and returns the offsets of one frame's headers.
//! Offsets are from the start of the Ethernet frame (the virtio-net header
//! is not part of it).

pub mod build;
pub mod eth;
pub mod ip;
pub mod l4;

pub use eth::Eth;
pub use ip::{Fragment, Ip, IpVersion};
pub use l4::{L4Proto, L4};

/// The protocol layer an error refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    Vlan,
    Ipv4,
    Ipv6,
    Ipv6Ext,
    Tcp,
    Udp,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Vlan => "VLAN",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Ipv6Ext => "IPv6 extension",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{layer} header truncated: needs bytes up to {need}, frame has {len}")]
    Truncated { layer: Layer, need: usize, len: usize },
    #[error("more than {} VLAN tags", eth::MAX_VLAN_TAGS)]
    TooManyVlans,
    #[error("ethertype {0:#06x} is neither IPv4 nor IPv6")]
    NotIp(u16),
    #[error("IP version {got} in a {layer} packet")]
    IpVersion { layer: Layer, got: u8 },
    #[error("IPv4 header length {0} words, below 5")]
    Ipv4HeaderLength(u8),
    #[error("{layer} length field says the packet ends at {end}, frame has {len} bytes")]
    IpLength { layer: Layer, end: usize, len: usize },
    #[error("more than {} IPv6 extension headers", ip::MAX_EXT_HEADERS)]
    TooManyExtHeaders,
    #[error("TCP data offset {0} words, below 5")]
    TcpDataOffset(u8),
}

/// `frame[at..at + N]` as an array, or a truncation error for `layer`.
#[inline]
pub(crate) fn bytes<const N: usize>(frame: &[u8], at: usize, layer: Layer) -> Result<[u8; N], WireError> {
    frame.get(at..at.saturating_add(N)).and_then(|s| s.try_into().ok()).ok_or(WireError::Truncated {
        layer,
        need: at.saturating_add(N),
        len: frame.len(),
    })
}

#[inline]
pub(crate) fn be16(frame: &[u8], at: usize, layer: Layer) -> Result<u16, WireError> {
    bytes::<2>(frame, at, layer).map(u16::from_be_bytes)
}

/// Where the headers of one frame are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub eth: Eth,
    pub ip: Ip,
    /// TCP or UDP header, when the packet carries one that is present in
    /// this frame (not for other protocols or non-first fragments).
    pub l4: Option<L4>,
}

impl Headers {
    /// Offset of the first payload byte after the L4 header, if any.
    pub fn payload_off(&self) -> Option<usize> {
        self.l4.map(|l| l.off + l.hdr_len)
    }
}

/// Parses Ethernet (+VLANs), IP and, for TCP/UDP, the L4 header. IP length
/// fields are checked against the frame; bytes after the IP packet
/// (Ethernet padding) are allowed. Guarantees every offset returned, plus
/// the L4 header, is within `ip.end <= frame.len()`.
pub fn parse(frame: &[u8]) -> Result<Headers, WireError> {
    let eth = eth::parse(frame)?;
    let ip = ip::parse(frame, &eth)?;
    let l4 = match ip.fragment {
        Fragment::Later => None,
        // The L4 header must lie inside the IP packet, not in padding.
        _ => l4::parse(&frame[..ip.end], ip.l4_off, ip.proto)?,
    };
    Ok(Headers { eth, ip, l4 })
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    #[test]
    fn parses_each_kind() {
        for vlans in 0..=2 {
            for v6 in [false, true] {
                for tcp in [false, true] {
                    let spec = FrameSpec { vlans, v6, tcp, payload: 100, ..FrameSpec::default() };
                    let f = spec.build();
                    let h = parse(&f).unwrap();
                    assert_eq!(h.eth.vlans as usize, vlans);
                    assert_eq!(h.eth.l3_off, 14 + 4 * vlans);
                    assert_eq!(h.ip.version, if v6 { IpVersion::V6 } else { IpVersion::V4 });
                    let l4 = h.l4.unwrap();
                    assert_eq!(l4.proto, if tcp { L4Proto::Tcp } else { L4Proto::Udp });
                    assert_eq!(l4.off, h.eth.l3_off + if v6 { 40 } else { 20 });
                    assert_eq!(h.payload_off(), Some(f.len() - 100));
                }
            }
        }
    }

    #[test]
    fn padding_after_the_ip_packet_is_allowed() {
        let mut f = FrameSpec { payload: 2, ..FrameSpec::default() }.build();
        f.resize(f.len() + 6, 0);
        let h = parse(&f).unwrap();
        assert_eq!(h.ip.end, f.len() - 6);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for spec in [
            FrameSpec { vlans: 2, v6: true, tcp: true, ipv6_ext: true, payload: 0, ..FrameSpec::default() },
            FrameSpec {
                vlans: 1,
                v6: false,
                tcp: true,
                ipv4_opts: 8,
                tcp_opts: 12,
                payload: 0,
                ..FrameSpec::default()
            },
            FrameSpec { v6: false, tcp: false, payload: 0, ..FrameSpec::default() },
        ] {
            let f = spec.build();
            parse(&f).unwrap();
            for cut in 0..f.len() {
                assert!(parse(&f[..cut]).is_err(), "{spec:?} cut at {cut}");
            }
        }
    }
}
