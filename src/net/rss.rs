//! Receive-side scaling and hash reports (virtio 1.3 §5.1.6.4.3,
//! §5.1.6.5.7): the Toeplitz hash, which fields of a frame it covers for
//! each enabled hash type, and queue selection through the indirection
//! table. Pure: the slow path builds a [`Steering`] from the control-queue
//! state (allocating its lookup tables once); poll threads call
//! [`Steering::hash`] and [`Steering::queue`] per frame without allocating.

use crate::net::ctrl::{CtrlState, HashConfig, RssConfig};
use crate::net::wire::{eth, ip, l4, Fragment, IpVersion};
use virtio_bindings::bindings::virtio_net as vn;

pub const HASH_TYPE_IPV4: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_IPv4;
pub const HASH_TYPE_TCPV4: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_TCPv4;
pub const HASH_TYPE_UDPV4: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_UDPv4;
pub const HASH_TYPE_IPV6: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_IPv6;
pub const HASH_TYPE_TCPV6: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_TCPv6;
pub const HASH_TYPE_UDPV6: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_UDPv6;
pub const HASH_TYPE_IP_EX: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_IP_EX;
pub const HASH_TYPE_TCP_EX: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_TCP_EX;
pub const HASH_TYPE_UDP_EX: u32 = vn::VIRTIO_NET_RSS_HASH_TYPE_UDP_EX;

/// Every hash type of the spec; all are implemented.
pub const SUPPORTED_HASH_TYPES: u32 = HASH_TYPE_IPV4
    | HASH_TYPE_TCPV4
    | HASH_TYPE_UDPV4
    | HASH_TYPE_IPV6
    | HASH_TYPE_TCPV6
    | HASH_TYPE_UDPV6
    | HASH_TYPE_IP_EX
    | HASH_TYPE_TCP_EX
    | HASH_TYPE_UDP_EX;

/// `rss_max_key_size`: the spec's minimum, which is also the most Linux
/// accepts, and enough for the longest input (36 bytes + 4).
pub const MAX_KEY_SIZE: usize = 40;
/// `rss_max_indirection_table_length`: the spec's minimum (as QEMU).
pub const MAX_INDIRECTION_TABLE_LEN: usize = 128;
/// The longest hash input: two IPv6 addresses and two ports.
pub const MAX_INPUT: usize = 36;

/// `hash_report` values (§5.1.6.4.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum HashReport {
    #[default]
    None = 0,
    Ipv4 = 1,
    Tcpv4 = 2,
    Udpv4 = 3,
    Ipv6 = 4,
    Tcpv6 = 5,
    Udpv6 = 6,
    Ipv6Ex = 7,
    Tcpv6Ex = 8,
    Udpv6Ex = 9,
}

impl HashReport {
    /// The hash type that produces this report (`1 << (report - 1)`).
    pub fn hash_type(self) -> u32 {
        match self {
            HashReport::None => 0,
            r => 1 << (r as u16 - 1),
        }
    }
}

/// The Toeplitz hash with a fixed key, as per-byte lookup tables
/// (`MAX_INPUT` x 256 words, 36 KiB): one XOR per input byte.
#[derive(Clone, PartialEq, Eq)]
pub struct Toeplitz {
    tables: Box<[[u32; 256]; MAX_INPUT]>,
}

impl std::fmt::Debug for Toeplitz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Toeplitz { .. }")
    }
}

/// The 32 key bits starting at bit `pos` (MSB first); bits past the key
/// are zero.
fn key_window(key: &[u8], pos: usize) -> u32 {
    let byte = |i: usize| u64::from(key.get(i).copied().unwrap_or(0));
    let (i, s) = (pos / 8, pos % 8);
    let w = (0..5).fold(0u64, |acc, k| acc << 8 | byte(i + k));
    (w >> (8 - s)) as u32
}

impl Toeplitz {
    /// Builds the tables for `key`. A key shorter than input + 4 bytes acts
    /// as if padded with zeros; bytes past [`MAX_KEY_SIZE`] are unused.
    pub fn new(key: &[u8]) -> Self {
        let mut tables = Box::new([[0u32; 256]; MAX_INPUT]);
        for (i, t) in tables.iter_mut().enumerate() {
            let w: [u32; 8] = std::array::from_fn(|b| key_window(key, 8 * i + b));
            for (v, slot) in t.iter_mut().enumerate() {
                // Bit b of the byte, counted from the MSB, selects window b.
                *slot = (0..8).filter(|b| v & (0x80 >> b) != 0).fold(0, |h, b| h ^ w[b]);
            }
        }
        Toeplitz { tables }
    }

    /// The hash of `input`; bytes past [`MAX_INPUT`] are ignored.
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        input.iter().zip(self.tables.iter()).fold(0, |h, (&b, t)| h ^ t[b as usize])
    }
}

/// The Toeplitz hash computed bit by bit, as the Microsoft RSS
/// specification describes it: for every set input bit (MSB first), XOR
/// the 32 key bits starting at that bit position.
pub fn toeplitz_reference(key: &[u8], input: &[u8]) -> u32 {
    let mut h = 0;
    for (i, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                h ^= key_window(key, 8 * i + b);
            }
        }
    }
    h
}

/// The bytes the hash covers for one frame, and the type it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashInput {
    buf: [u8; MAX_INPUT],
    len: u8,
    pub report: HashReport,
}

impl HashInput {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    fn new(report: HashReport, parts: &[&[u8]]) -> Self {
        let mut h = HashInput { buf: [0; MAX_INPUT], len: 0, report };
        for p in parts {
            let at = h.len as usize;
            // Callers pass addresses (4 or 16) and ports (2 + 2): at most 36.
            h.buf[at..at + p.len()].copy_from_slice(p);
            h.len += p.len() as u8;
        }
        h
    }
}

/// Selects the hash fields of `frame` for the enabled `types`
/// (§5.1.6.4.3.1-3): `None` when no enabled type applies (the frame goes
/// to the unclassified queue and reports `HashReport::None`). Fragments
/// hash on addresses only; an L4 header cut short counts as absent.
pub fn hash_input(frame: &[u8], types: u32) -> Option<HashInput> {
    let e = eth::parse(frame).ok()?;
    let ip = ip::parse(frame, &e).ok()?;
    let (src, dst) = ip.addrs(frame)?;
    let l4 = match ip.fragment {
        Fragment::None => l4::parse(&frame[..ip.end], ip.l4_off, ip.proto).ok().flatten(),
        _ => None,
    };
    let ports = l4.and_then(|l| l.ports(frame));
    let (tcp, udp) = match l4.map(|l| l.proto) {
        Some(l4::L4Proto::Tcp) => (ports, None),
        Some(l4::L4Proto::Udp) => (None, ports),
        None => (None, None),
    };
    let on = |t: u32| types & t != 0;
    use HashReport as R;
    match ip.version {
        IpVersion::V4 => {
            if let (Some(p), true) = (tcp, on(HASH_TYPE_TCPV4)) {
                Some(HashInput::new(R::Tcpv4, &[src, dst, &p]))
            } else if let (Some(p), true) = (udp, on(HASH_TYPE_UDPV4)) {
                Some(HashInput::new(R::Udpv4, &[src, dst, &p]))
            } else if on(HASH_TYPE_IPV4) {
                Some(HashInput::new(R::Ipv4, &[src, dst]))
            } else {
                None
            }
        }
        IpVersion::V6 => {
            if ip.ext {
                // Home address option / type 2 routing header replace the
                // addresses when present (§5.1.6.4.3.3).
                let xs = ip.home_addr.and_then(|o| frame.get(o..o + 16)).unwrap_or(src);
                let xd = ip.rh2_addr.and_then(|o| frame.get(o..o + 16)).unwrap_or(dst);
                if let (Some(p), true) = (tcp, on(HASH_TYPE_TCP_EX)) {
                    return Some(HashInput::new(R::Tcpv6Ex, &[xs, xd, &p]));
                } else if let (Some(p), true) = (udp, on(HASH_TYPE_UDP_EX)) {
                    return Some(HashInput::new(R::Udpv6Ex, &[xs, xd, &p]));
                } else if on(HASH_TYPE_IP_EX) {
                    return Some(HashInput::new(R::Ipv6Ex, &[xs, xd]));
                }
            }
            if let (Some(p), true) = (tcp, on(HASH_TYPE_TCPV6)) {
                Some(HashInput::new(R::Tcpv6, &[src, dst, &p]))
            } else if let (Some(p), true) = (udp, on(HASH_TYPE_UDPV6)) {
                Some(HashInput::new(R::Udpv6, &[src, dst, &p]))
            } else if on(HASH_TYPE_IPV6) {
                Some(HashInput::new(R::Ipv6, &[src, dst]))
            } else {
                None
            }
        }
    }
}

/// The hash of one received frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxHash {
    pub value: u32,
    pub report: HashReport,
}

/// Hash calculation and queue selection as the driver configured them,
/// built on the slow path and shared read-only with poll threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    types: u32,
    toeplitz: Toeplitz,
    /// Receive queue numbers (0 = receiveq1); empty when only hash reports
    /// were configured (VIRTIO_NET_CTRL_MQ_HASH_CONFIG).
    table: Box<[u16]>,
    unclassified: u16,
}

impl Steering {
    /// RSS: hash, then queue from the indirection table.
    pub fn rss(cfg: &RssConfig) -> Self {
        Steering {
            types: cfg.hash_types,
            toeplitz: Toeplitz::new(&cfg.key),
            table: cfg.indirection_table.clone().into_boxed_slice(),
            unclassified: cfg.unclassified_queue,
        }
    }

    /// Hash reports only; queues are chosen elsewhere.
    pub fn hash_only(cfg: &HashConfig) -> Self {
        Steering { types: cfg.hash_types, toeplitz: Toeplitz::new(&cfg.key), table: Box::new([]), unclassified: 0 }
    }

    /// What `state` configured, or `None` when no hash is to be computed
    /// (after reset and after VQ_PAIRS_SET).
    pub fn from_ctrl(state: &CtrlState) -> Option<Self> {
        match (state.rss(), state.hash_config()) {
            (Some(r), _) => Some(Self::rss(r)),
            (None, Some(h)) => Some(Self::hash_only(h)),
            (None, None) => None,
        }
    }

    /// How many receive queues the driver uses (§5.1.6.5.5, §5.1.6.5.7):
    /// the pairs VQ_PAIRS_SET or RSS's `max_tx_vq` set, and with RSS at
    /// least every queue the indirection table or the unclassified queue
    /// names (Linux sets `max_tx_vq` and the table to the same pairs; a
    /// driver may name more RX queues than TX queues).
    pub fn rx_pairs(state: &CtrlState) -> u16 {
        let named = state.rss().map_or(0, |r| {
            r.indirection_table.iter().chain([&r.unclassified_queue]).map(|&q| q + 1).max().unwrap_or(0)
        });
        state.queue_pairs().max(named).max(1)
    }

    /// Whether this steers frames to queues (RSS) or only reports hashes.
    pub fn steers(&self) -> bool {
        !self.table.is_empty()
    }

    /// The hash of `frame` (`HashReport::None` and value 0 when no enabled
    /// type applies).
    #[inline]
    pub fn hash(&self, frame: &[u8]) -> RxHash {
        match hash_input(frame, self.types) {
            Some(i) => RxHash { value: self.toeplitz.hash(i.bytes()), report: i.report },
            None => RxHash::default(),
        }
    }

    /// The receive queue (0 = receiveq1) for a frame with hash `h`
    /// (§5.1.6.5.7.2): the unclassified queue when no hash was computed,
    /// else the table entry at `value & (len - 1)`. `None` without RSS.
    #[inline]
    pub fn queue(&self, h: &RxHash) -> Option<u16> {
        if self.table.is_empty() {
            return None;
        }
        if h.report == HashReport::None {
            return Some(self.unclassified);
        }
        // The table length is a power of two (checked when parsed).
        self.table.get(h.value as usize & (self.table.len() - 1)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of the Microsoft RSS verification suite.
    pub(crate) const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
        0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
        0xbe, 0xac, 0x01, 0xfa,
    ];

    /// (source, destination, source port, destination port, IP hash, TCP
    /// hash) from "Verifying the RSS Hash Calculation" (Microsoft).
    type Vector<const N: usize> = ([u8; N], [u8; N], u16, u16, u32, u32);
    const V4: [Vector<4>; 5] = [
        ([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766, 0x323e8fc2, 0x51ccc178),
        ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, 0xd718262a, 0xc626b0ea),
        ([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024, 0xd2d0a5de, 0x5c2b394a),
        ([38, 27, 205, 30], [209, 142, 163, 6], 48228, 2217, 0x82989176, 0xafc7327f),
        ([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303, 0x5d1809c5, 0x10e828a2),
    ];

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    fn v6_vectors() -> [Vector<16>; 3] {
        [
            (v6("3ffe:2501:200:1fff::7"), v6("3ffe:2501:200:3::1"), 2794, 1766, 0x2cc18cd5, 0x40207d3d),
            (v6("3ffe:501:8::260:97ff:fe40:efab"), v6("ff02::1"), 14230, 4739, 0x0f0c461c, 0xdde51bbf),
            (
                v6("3ffe:1900:4545:3:200:f8ff:fe21:67cf"),
                v6("fe80::200:f8ff:fe21:67cf"),
                44251,
                38024,
                0x4b61e985,
                0x02d1feef,
            ),
        ]
    }

    fn input(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn microsoft_verification_suite() {
        let t = Toeplitz::new(&MS_KEY);
        for (s, d, sp, dp, ip, tcp) in V4 {
            let two = input(&[&s, &d]);
            let four = input(&[&s, &d, &sp.to_be_bytes(), &dp.to_be_bytes()]);
            assert_eq!(t.hash(&two), ip, "{s:?} -> {d:?}");
            assert_eq!(t.hash(&four), tcp, "{s:?} -> {d:?}");
            assert_eq!(toeplitz_reference(&MS_KEY, &two), ip);
            assert_eq!(toeplitz_reference(&MS_KEY, &four), tcp);
        }
        for (s, d, sp, dp, ip, tcp) in v6_vectors() {
            let two = input(&[&s, &d]);
            let four = input(&[&s, &d, &sp.to_be_bytes(), &dp.to_be_bytes()]);
            assert_eq!(t.hash(&two), ip);
            assert_eq!(t.hash(&four), tcp);
            assert_eq!(toeplitz_reference(&MS_KEY, &four), tcp);
        }
    }

    #[test]
    fn tables_match_reference_for_any_key_length() {
        let mut seed = 0x1234_5678u32;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for key_len in [0, 1, 4, 12, 39, 40, 52] {
            let key: Vec<u8> = (0..key_len).map(|_| rnd() as u8).collect();
            let t = Toeplitz::new(&key);
            for len in 0..=MAX_INPUT {
                let inp: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                assert_eq!(t.hash(&inp), toeplitz_reference(&key, &inp), "key {key_len} input {len}");
            }
        }
    }

    #[test]
    fn report_and_type_correspond() {
        use HashReport as R;
        let all = [R::Ipv4, R::Tcpv4, R::Udpv4, R::Ipv6, R::Tcpv6, R::Udpv6, R::Ipv6Ex, R::Tcpv6Ex, R::Udpv6Ex];
        let types: u32 = all.iter().map(|r| r.hash_type()).fold(0, |a, t| a | t);
        assert_eq!(types, SUPPORTED_HASH_TYPES);
        assert_eq!(R::Tcpv4.hash_type(), HASH_TYPE_TCPV4);
        assert_eq!(R::Udpv6Ex.hash_type(), HASH_TYPE_UDP_EX);
        assert_eq!(R::None.hash_type(), 0);
        assert_eq!(R::Udpv6Ex as u16, vn::VIRTIO_NET_HASH_REPORT_UDPv6_EX as u16);
    }

    use crate::net::ctrl::{HashConfig, RssConfig};
    use crate::net::wire::build::FrameSpec;

    /// A TCP/UDP frame with the given addresses and ports (checksums are
    /// irrelevant to RSS).
    fn frame(spec: FrameSpec, src: &[u8], dst: &[u8], sp: u16, dp: u16) -> Vec<u8> {
        let mut f = spec.build();
        let l3 = spec.l3_off();
        let (s, d) = if spec.v6 { (l3 + 8, l3 + 24) } else { (l3 + 12, l3 + 16) };
        f[s..s + src.len()].copy_from_slice(src);
        f[d..d + dst.len()].copy_from_slice(dst);
        let l4 = spec.l4_off();
        f[l4..l4 + 2].copy_from_slice(&sp.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&dp.to_be_bytes());
        f
    }

    fn steering(types: u32) -> Steering {
        Steering::hash_only(&HashConfig { hash_types: types, reserved: [0; 8], key: MS_KEY.to_vec() })
    }

    #[test]
    fn ipv4_frames_hash_like_the_vectors() {
        for (s, d, sp, dp, ip_h, tcp_h) in V4 {
            for vlans in 0..=2 {
                let tcp = frame(FrameSpec { vlans, ..FrameSpec::default() }, &s, &d, sp, dp);
                let udp = frame(FrameSpec { vlans, tcp: false, ..FrameSpec::default() }, &s, &d, sp, dp);
                let r = |t, f: &[u8]| steering(t).hash(f);
                assert_eq!(
                    r(HASH_TYPE_TCPV4 | HASH_TYPE_IPV4, &tcp),
                    RxHash { value: tcp_h, report: HashReport::Tcpv4 }
                );
                assert_eq!(r(HASH_TYPE_IPV4, &tcp), RxHash { value: ip_h, report: HashReport::Ipv4 });
                assert_eq!(r(HASH_TYPE_UDPV4 | HASH_TYPE_TCPV6, &tcp), RxHash::default());
                assert_eq!(r(HASH_TYPE_UDPV4, &udp), RxHash { value: tcp_h, report: HashReport::Udpv4 });
                assert_eq!(r(HASH_TYPE_TCPV4 | HASH_TYPE_IPV4, &udp), RxHash { value: ip_h, report: HashReport::Ipv4 });
                // Fragments hash on addresses only.
                let mut frag = tcp.clone();
                frag[14 + 4 * vlans + 6] |= 0x20;
                assert_eq!(r(SUPPORTED_HASH_TYPES, &frag), RxHash { value: ip_h, report: HashReport::Ipv4 });
                // A TCP header cut short counts as absent.
                let cut = &tcp[..14 + 4 * vlans + 20 + 10];
                let mut cut = cut.to_vec();
                cut[14 + 4 * vlans + 3] = 30; // total length 30
                assert_eq!(r(SUPPORTED_HASH_TYPES, &cut), RxHash { value: ip_h, report: HashReport::Ipv4 });
            }
        }
    }

    #[test]
    fn ipv6_frames_hash_like_the_vectors() {
        for (s, d, sp, dp, ip_h, tcp_h) in v6_vectors() {
            let spec = FrameSpec { v6: true, vlans: 1, ..FrameSpec::default() };
            let tcp = frame(spec, &s, &d, sp, dp);
            let r = |t, f: &[u8]| steering(t).hash(f);
            assert_eq!(r(HASH_TYPE_TCPV6 | HASH_TYPE_IPV6, &tcp), RxHash { value: tcp_h, report: HashReport::Tcpv6 });
            assert_eq!(r(HASH_TYPE_IPV6, &tcp), RxHash { value: ip_h, report: HashReport::Ipv6 });
            // No extension headers: the _EX types do not apply.
            assert_eq!(r(HASH_TYPE_TCP_EX | HASH_TYPE_IP_EX, &tcp), RxHash::default());
            assert_eq!(r(HASH_TYPE_TCPV4 | HASH_TYPE_IPV4, &tcp), RxHash::default());
            // With extension headers (no home address / type 2 routing
            // header): _EX hashes the plain addresses, else the non-EX rules.
            let ext = frame(FrameSpec { ipv6_ext: true, ..spec }, &s, &d, sp, dp);
            assert_eq!(r(HASH_TYPE_TCP_EX, &ext), RxHash { value: tcp_h, report: HashReport::Tcpv6Ex });
            assert_eq!(r(HASH_TYPE_IP_EX | HASH_TYPE_TCPV6, &ext), RxHash { value: ip_h, report: HashReport::Ipv6Ex });
            assert_eq!(r(HASH_TYPE_TCPV6, &ext), RxHash { value: tcp_h, report: HashReport::Tcpv6 });
            let udp = frame(FrameSpec { tcp: false, ipv6_ext: true, ..spec }, &s, &d, sp, dp);
            assert_eq!(r(HASH_TYPE_UDP_EX, &udp), RxHash { value: tcp_h, report: HashReport::Udpv6Ex });
            assert_eq!(r(HASH_TYPE_UDPV6, &udp), RxHash { value: tcp_h, report: HashReport::Udpv6 });
        }
    }

    #[test]
    fn ex_types_use_home_address_and_routing_type_2() {
        let (src, dst, home, care) = (v6("2001:db8::1"), v6("2001:db8::2"), v6("2001:db8:1::77"), v6("2001:db8:2::88"));
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        let payload = 24 + 24 + 20;
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, payload as u8, 60, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        // Destination options (24 bytes): PadN, Home Address option, PadN.
        f.extend_from_slice(&[43, 2, 1, 0, 0xc9, 16]);
        f.extend_from_slice(&home);
        f.extend_from_slice(&[1, 0]);
        // Routing header type 2, one segment left.
        f.extend_from_slice(&[6, 2, 2, 1, 0, 0, 0, 0]);
        f.extend_from_slice(&care);
        let mut tcp = [0u8; 20];
        tcp[..4].copy_from_slice(&[0x12, 0x34, 0x00, 0x50]);
        tcp[12] = 5 << 4;
        f.extend_from_slice(&tcp);
        let four = input(&[&home, &care, &[0x12, 0x34, 0, 0x50]]);
        let want = toeplitz_reference(&MS_KEY, &four);
        let h = steering(HASH_TYPE_TCP_EX).hash(&f);
        assert_eq!(h, RxHash { value: want, report: HashReport::Tcpv6Ex });
        let two = input(&[&home, &care]);
        let h = steering(HASH_TYPE_IP_EX).hash(&f);
        assert_eq!(h, RxHash { value: toeplitz_reference(&MS_KEY, &two), report: HashReport::Ipv6Ex });
        let plain = input(&[&src, &dst, &[0x12, 0x34, 0, 0x50]]);
        let h = steering(HASH_TYPE_TCPV6).hash(&f);
        assert_eq!(h, RxHash { value: toeplitz_reference(&MS_KEY, &plain), report: HashReport::Tcpv6 });
    }

    #[test]
    fn queue_selection() {
        let table: Vec<u16> = vec![3, 1, 2, 0, 1, 1, 2, 3];
        let cfg = RssConfig {
            hash_types: SUPPORTED_HASH_TYPES,
            indirection_table: table.clone(),
            unclassified_queue: 5,
            max_tx_vq: 4,
            key: MS_KEY.to_vec(),
        };
        let st = Steering::rss(&cfg);
        assert!(st.steers());
        for (s, d, sp, dp, _, tcp_h) in V4 {
            let f = frame(FrameSpec::default(), &s, &d, sp, dp);
            let h = st.hash(&f);
            assert_eq!(h.value, tcp_h);
            assert_eq!(st.queue(&h), Some(table[tcp_h as usize & 7]));
        }
        // Not IP: no hash, the unclassified queue.
        let mut arp = FrameSpec::default().build();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h = st.hash(&arp);
        assert_eq!(h, RxHash::default());
        assert_eq!(st.queue(&h), Some(5));
        assert_eq!(st.hash(&[0u8; 3]), RxHash::default());
        // Hash reports only: no queue choice.
        let ho = steering(SUPPORTED_HASH_TYPES);
        assert!(!ho.steers());
        assert_eq!(ho.queue(&h), None);
    }

    #[test]
    fn from_ctrl_follows_the_last_mq_command() {
        use crate::net::ctrl::{CtrlCommand, CtrlState};
        use crate::net::features as f;
        let neg = f::SUPPORTED | f::RSS | f::HASH_REPORT;
        let mut s = CtrlState::new([2, 0, 0, 0, 0, 1], neg);
        assert!(Steering::from_ctrl(&s).is_none());
        let r = RssConfig {
            hash_types: HASH_TYPE_IPV4,
            indirection_table: vec![1],
            unclassified_queue: 0,
            max_tx_vq: 2,
            key: MS_KEY.to_vec(),
        };
        s.apply(CtrlCommand::RssConfig(r), neg, 2).unwrap();
        assert!(Steering::from_ctrl(&s).unwrap().steers());
        let h = HashConfig { hash_types: HASH_TYPE_IPV4, reserved: [0; 8], key: MS_KEY.to_vec() };
        s.apply(CtrlCommand::HashConfig(h), neg, 2).unwrap();
        assert!(!Steering::from_ctrl(&s).unwrap().steers());
        s.apply(CtrlCommand::MqPairsSet(1), neg, 2).unwrap();
        assert!(Steering::from_ctrl(&s).is_none());
    }
}
