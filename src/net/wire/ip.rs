//! IPv4 (with options) and IPv6 (with extension headers).

use super::eth::{Eth, ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use super::{be16, bytes, Layer, WireError};

pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const PROTO_HOPOPTS: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ROUTING: u8 = 43;
pub const PROTO_FRAGMENT: u8 = 44;
pub const PROTO_AH: u8 = 51;
pub const PROTO_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up.
pub const MAX_EXT_HEADERS: usize = 8;
/// IPv6 destination option "Home Address" (RFC 6275 §6.3).
const OPT_HOME_ADDRESS: u8 = 0xc9;

// Field offsets inside the IP headers.
pub const IPV4_TOTAL_LEN: usize = 2;
pub const IPV4_ID: usize = 4;
pub const IPV4_FRAG: usize = 6;
pub const IPV4_CSUM: usize = 10;
pub const IPV4_SRC: usize = 12;
pub const IPV4_DST: usize = 16;
pub const IPV6_PAYLOAD_LEN: usize = 4;
pub const IPV6_SRC: usize = 8;
pub const IPV6_DST: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// Fragmentation state of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more to come): the L4 header is here, the
    /// L4 data is not all here.
    First,
    /// Offset above 0: no L4 header in this packet.
    Later,
}

/// The IP header of a frame. All offsets are from the frame start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ip {
    pub version: IpVersion,
    pub off: usize,
    /// Offset of the upper-layer header: after IPv4 options or after the
    /// IPv6 extension headers walked.
    pub l4_off: usize,
    /// Upper-layer protocol (IPv6: the last next-header value walked to).
    pub proto: u8,
    /// End of the IP packet per its length field (`<= frame.len()`).
    pub end: usize,
    pub fragment: Fragment,
    /// IPv6: extension headers were present.
    pub ext: bool,
    /// IPv6: offset of the Home Address option's address (RFC 6275), used by
    /// the RSS `_EX` hash types.
    pub home_addr: Option<usize>,
    /// IPv6: offset of the address in a type 2 routing header (RFC 6275).
    pub rh2_addr: Option<usize>,
    /// IPv6: a routing header still has segments left, so the destination
    /// field is not the final destination the L4 pseudo-header uses.
    pub rh_pending: bool,
}

impl Ip {
    /// Source and destination address bytes (4 or 16 each); `None` only if
    /// `frame` is not the frame this was parsed from.
    #[inline]
    pub fn addrs<'a>(&self, frame: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let (s, d, n) = match self.version {
            IpVersion::V4 => (IPV4_SRC, IPV4_DST, 4),
            IpVersion::V6 => (IPV6_SRC, IPV6_DST, 16),
        };
        Some((frame.get(self.off + s..self.off + s + n)?, frame.get(self.off + d..self.off + d + n)?))
    }
}

/// Parses the IP header after `eth`; the ethertype must be IPv4 or IPv6.
/// Guarantees `off <= l4_off <= end <= frame.len()`.
pub fn parse(frame: &[u8], eth: &Eth) -> Result<Ip, WireError> {
    match eth.ethertype {
        ETHERTYPE_IPV4 => parse_v4(frame, eth.l3_off),
        ETHERTYPE_IPV6 => parse_v6(frame, eth.l3_off),
        t => Err(WireError::NotIp(t)),
    }
}

fn parse_v4(frame: &[u8], off: usize) -> Result<Ip, WireError> {
    let l = Layer::Ipv4;
    let [vihl] = bytes::<1>(frame, off, l)?;
    if vihl >> 4 != 4 {
        return Err(WireError::IpVersion { layer: l, got: vihl >> 4 });
    }
    let ihl = vihl & 0x0f;
    if ihl < 5 {
        return Err(WireError::Ipv4HeaderLength(ihl));
    }
    let hlen = 4 * ihl as usize;
    // The whole header, options included, must be present.
    if frame.len() < off + hlen {
        return Err(WireError::Truncated { layer: l, need: off + hlen, len: frame.len() });
    }
    let total = be16(frame, off + IPV4_TOTAL_LEN, l)? as usize;
    let end = off + total;
    if total < hlen || end > frame.len() {
        return Err(WireError::IpLength { layer: l, end, len: frame.len() });
    }
    let frag = be16(frame, off + IPV4_FRAG, l)?;
    let fragment = match (frag & 0x1fff, frag & 0x2000 != 0) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let [proto] = bytes::<1>(frame, off + 9, l)?;
    Ok(Ip {
        version: IpVersion::V4,
        off,
        l4_off: off + hlen,
        proto,
        end,
        fragment,
        ext: false,
        home_addr: None,
        rh2_addr: None,
        rh_pending: false,
    })
}

fn parse_v6(frame: &[u8], off: usize) -> Result<Ip, WireError> {
    let l = Layer::Ipv6;
    let fixed = bytes::<IPV6_HLEN>(frame, off, l)?;
    if fixed[0] >> 4 != 6 {
        return Err(WireError::IpVersion { layer: l, got: fixed[0] >> 4 });
    }
    let end = off + IPV6_HLEN + u16::from_be_bytes([fixed[4], fixed[5]]) as usize;
    if end > frame.len() {
        return Err(WireError::IpLength { layer: l, end, len: frame.len() });
    }
    let mut ip = Ip {
        version: IpVersion::V6,
        off,
        l4_off: off + IPV6_HLEN,
        proto: fixed[6],
        end,
        fragment: Fragment::None,
        ext: false,
        home_addr: None,
        rh2_addr: None,
        rh_pending: false,
    };
    // Extension headers live inside the payload length: parse within `end`.
    let pkt = &frame[..end];
    let x = Layer::Ipv6Ext;
    for n in 0..=MAX_EXT_HEADERS {
        let at = ip.l4_off;
        let len = match ip.proto {
            PROTO_HOPOPTS | PROTO_ROUTING | PROTO_DSTOPTS => 8 * (1 + bytes::<2>(pkt, at, x)?[1] as usize),
            PROTO_AH => 4 * (2 + bytes::<2>(pkt, at, x)?[1] as usize),
            PROTO_FRAGMENT => 8,
            _ => return Ok(ip),
        };
        if n == MAX_EXT_HEADERS {
            break;
        }
        let h = pkt.get(at..at + len).ok_or(WireError::Truncated { layer: x, need: at + len, len: pkt.len() })?;
        match ip.proto {
            PROTO_ROUTING => {
                // h[2] routing type, h[3] segments left; type 2 carries one address.
                ip.rh_pending |= h[3] != 0;
                if h[2] == 2 && len == 24 {
                    ip.rh2_addr = Some(at + 8);
                }
            }
            PROTO_DSTOPTS => ip.home_addr = ip.home_addr.or(home_address(h).map(|o| at + o)),
            PROTO_FRAGMENT => {
                let fo = u16::from_be_bytes([h[2], h[3]]);
                ip.fragment = match (fo >> 3, fo & 1 != 0) {
                    (0, false) => ip.fragment,
                    (0, true) => Fragment::First,
                    _ => Fragment::Later,
                };
            }
            _ => {}
        }
        ip.ext = true;
        ip.proto = h[0];
        ip.l4_off = at + len;
        if ip.fragment == Fragment::Later {
            return Ok(ip);
        }
    }
    Err(WireError::TooManyExtHeaders)
}

/// Offset inside destination options header `h` of the Home Address
/// option's 16-byte address, if present and well-formed.
fn home_address(h: &[u8]) -> Option<usize> {
    let mut i = 2;
    while i < h.len() {
        match h[i] {
            0 => i += 1, // Pad1
            t => {
                let len = *h.get(i + 1)? as usize;
                if t == OPT_HOME_ADDRESS && len == 16 && i + 2 + 16 <= h.len() {
                    return Some(i + 2);
                }
                i += 2 + len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::eth;
    use super::*;

    fn eth4() -> Eth {
        Eth { ethertype: eth::ETHERTYPE_IPV4, vlans: 0, l3_off: 0 }
    }
    fn eth6() -> Eth {
        Eth { ethertype: eth::ETHERTYPE_IPV6, vlans: 0, l3_off: 0 }
    }

    fn v4(ihl: u8, total: u16, frag: u16, proto: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x40 | ihl;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[9] = proto;
        p
    }

    #[test]
    fn ipv4_options_fragments_and_lengths() {
        let ip = parse(&v4(5, 40, 0x4000, 6, 40), &eth4()).unwrap();
        assert_eq!((ip.l4_off, ip.end, ip.proto, ip.fragment), (20, 40, 6, Fragment::None));
        let ip = parse(&v4(15, 60, 0, 17, 64), &eth4()).unwrap();
        assert_eq!((ip.l4_off, ip.end), (60, 60));
        assert_eq!(parse(&v4(5, 40, 0x2000, 6, 40), &eth4()).unwrap().fragment, Fragment::First);
        assert_eq!(parse(&v4(5, 40, 0x0001, 6, 40), &eth4()).unwrap().fragment, Fragment::Later);
        assert_eq!(parse(&v4(4, 40, 0, 6, 40), &eth4()), Err(WireError::Ipv4HeaderLength(4)));
        assert!(matches!(parse(&v4(5, 41, 0, 6, 40), &eth4()), Err(WireError::IpLength { .. })));
        assert!(matches!(parse(&v4(6, 20, 0, 6, 40), &eth4()), Err(WireError::IpLength { .. })));
        assert!(matches!(parse(&v4(15, 60, 0, 6, 59), &eth4()), Err(WireError::Truncated { .. })));
        let mut p = v4(5, 40, 0, 6, 40);
        p[0] = 0x65;
        assert_eq!(parse(&p, &eth4()), Err(WireError::IpVersion { layer: Layer::Ipv4, got: 6 }));
        assert_eq!(parse(&p, &Eth { ethertype: 0x0806, vlans: 0, l3_off: 0 }), Err(WireError::NotIp(0x0806)));
    }

    /// IPv6 header with `exts` = (next-header value of the ext, its bytes).
    fn v6(first: u8, exts: &[(u8, Vec<u8>)], tail: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = first;
        for (_, e) in exts {
            p.extend_from_slice(e);
        }
        p.resize(p.len() + tail, 0);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    fn ext(next: u8, len8: usize) -> Vec<u8> {
        let mut e = vec![0u8; len8 * 8];
        e[0] = next;
        e[1] = (len8 - 1) as u8;
        e
    }

    #[test]
    fn ipv6_extension_walk() {
        let ip = parse(&v6(6, &[], 20), &eth6()).unwrap();
        assert_eq!((ip.l4_off, ip.proto, ip.ext), (40, 6, false));
        let p = v6(0, &[(0, ext(60, 1)), (60, ext(17, 2))], 8);
        let ip = parse(&p, &eth6()).unwrap();
        assert_eq!((ip.l4_off, ip.proto, ip.ext), (40 + 8 + 16, 17, true));
        // Fragment header, first fragment.
        let mut fr = vec![6, 0, 0, 1, 0, 0, 0, 1];
        let ip = parse(&v6(44, &[(44, fr.clone())], 20), &eth6()).unwrap();
        assert_eq!((ip.l4_off, ip.proto, ip.fragment), (48, 6, Fragment::First));
        fr[2] = 1; // offset 32
        let ip = parse(&v6(44, &[(44, fr)], 20), &eth6()).unwrap();
        assert_eq!(ip.fragment, Fragment::Later);
        // AH uses 4-byte units + 2.
        let mut ah = vec![0u8; 12];
        ah[0] = 6;
        ah[1] = 1;
        assert_eq!(parse(&v6(51, &[(51, ah)], 20), &eth6()).unwrap().l4_off, 52);
    }

    #[test]
    fn ipv6_home_address_and_routing_type_2() {
        let mut dst = ext(43, 3);
        dst[2] = 0; // Pad1
        dst[3] = 1; // PadN, 1 byte
        dst[4] = 1;
        dst[5] = 0;
        dst[6] = OPT_HOME_ADDRESS;
        dst[7] = 16;
        let mut rh = ext(6, 3);
        rh[2] = 2;
        rh[3] = 1;
        let p = v6(60, &[(60, dst), (43, rh)], 20);
        let ip = parse(&p, &eth6()).unwrap();
        assert_eq!(ip.home_addr, Some(40 + 8));
        assert_eq!(ip.rh2_addr, Some(40 + 24 + 8));
        assert!(ip.rh_pending);
        assert_eq!(ip.l4_off, 40 + 24 + 24);
    }

    #[test]
    fn ipv6_errors() {
        // Extension header running past the payload length.
        let mut p = v6(0, &[(0, ext(6, 2))], 0);
        p[5] -= 1;
        assert!(matches!(parse(&p, &eth6()), Err(WireError::Truncated { .. })));
        // Payload length beyond the frame.
        let mut p = v6(6, &[], 10);
        p[5] += 1;
        assert!(matches!(parse(&p, &eth6()), Err(WireError::IpLength { .. })));
        // A chain of hop-by-hop headers longer than the limit.
        let exts: Vec<(u8, Vec<u8>)> = (0..=MAX_EXT_HEADERS).map(|_| (60, ext(60, 1))).collect();
        assert_eq!(parse(&v6(60, &exts, 8), &eth6()), Err(WireError::TooManyExtHeaders));
        let exts: Vec<(u8, Vec<u8>)> = (0..MAX_EXT_HEADERS).map(|_| (60, ext(60, 1))).collect();
        let mut p = v6(60, &exts, 8);
        p[40 + 8 * (MAX_EXT_HEADERS - 1)] = 6;
        assert_eq!(parse(&p, &eth6()).unwrap().proto, 6);
        let mut p = v6(6, &[], 0);
        p[0] = 0x40;
        assert_eq!(parse(&p, &eth6()), Err(WireError::IpVersion { layer: Layer::Ipv6, got: 4 }));
    }
}
