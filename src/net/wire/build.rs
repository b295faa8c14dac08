//! Builds well-formed TCP/UDP frames over IPv4/IPv6 with optional VLAN
//! tags, IP options / IPv6 extension headers and TCP options: for tests,
//! fuzz targets and the benchmark driver's prebuilt frames (e.g. GSO
//! frames for `pktgen --tso`). Allocates; not for the fast path.

use super::eth::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN};
use super::ip::{PROTO_DSTOPTS, PROTO_HOPOPTS, PROTO_TCP, PROTO_UDP};
use super::l4::{TCP_ACK, TCP_CSUM, TCP_PSH, UDP_CSUM};
use crate::net::hdr::{self, NetHdr};
use crate::net::offload::csum;

/// What the L4 checksum field holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CsumFill {
    /// The complete checksum.
    #[default]
    Full,
    /// The pseudo-header sum, as a driver leaves it with NEEDS_CSUM.
    Partial,
    /// Zero.
    Zero,
}

/// One frame's shape. `Default` is an untagged IPv4/TCP frame of 64
/// payload bytes with a complete checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// 0, 1 or 2 VLAN tags (two: 802.1ad outer, 802.1Q inner).
    pub vlans: usize,
    pub v6: bool,
    pub tcp: bool,
    /// Bytes of IPv4 options (multiple of 4, at most 40).
    pub ipv4_opts: usize,
    /// IPv6: a hop-by-hop and a destination options header (8 bytes each).
    pub ipv6_ext: bool,
    /// Bytes of TCP options (multiple of 4, at most 40).
    pub tcp_opts: usize,
    pub payload: usize,
    /// Varies the payload bytes.
    pub seed: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ip_id: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub csum: CsumFill,
}

impl Default for FrameSpec {
    fn default() -> Self {
        FrameSpec {
            vlans: 0,
            v6: false,
            tcp: true,
            ipv4_opts: 0,
            ipv6_ext: false,
            tcp_opts: 0,
            payload: 64,
            seed: 0,
            tcp_flags: TCP_ACK | TCP_PSH,
            seq: 0x1000_0000,
            ip_id: 0x4242,
            src_port: 40000,
            dst_port: 5201,
            csum: CsumFill::Full,
        }
    }
}

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SRC_V4: [u8; 4] = [10, 0, 0, 1];
pub const DST_V4: [u8; 4] = [10, 0, 0, 2];
pub const SRC_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const DST_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

impl FrameSpec {
    pub fn l3_off(&self) -> usize {
        14 + 4 * self.vlans
    }
    fn l3_len(&self) -> usize {
        if self.v6 {
            40 + if self.ipv6_ext { 16 } else { 0 }
        } else {
            20 + self.ipv4_opts
        }
    }
    pub fn l4_off(&self) -> usize {
        self.l3_off() + self.l3_len()
    }
    pub fn l4_hdr_len(&self) -> usize {
        if self.tcp {
            20 + self.tcp_opts
        } else {
            8
        }
    }
    /// Every header byte: the offset of the first payload byte.
    pub fn hdr_len(&self) -> usize {
        self.l4_off() + self.l4_hdr_len()
    }
    pub fn len(&self) -> usize {
        self.hdr_len() + self.payload
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Payload byte `i`: a pattern that differs per position and seed, so a
    /// reassembly with bytes in the wrong place shows.
    pub fn payload_byte(&self, i: usize) -> u8 {
        (i as u8).wrapping_mul(7).wrapping_add(self.seed) ^ (i >> 8) as u8 ^ (i >> 16) as u8
    }

    /// The frame. Panics on a shape it cannot build (more than two tags,
    /// options not multiples of 4 or above 40, an IP packet above 64 KiB):
    /// the spec is the caller's, not the network's.
    pub fn build(&self) -> Vec<u8> {
        assert!(self.vlans <= 2, "at most two VLAN tags");
        assert!(self.ipv4_opts % 4 == 0 && self.ipv4_opts <= 40, "IPv4 options");
        assert!(self.tcp_opts % 4 == 0 && self.tcp_opts <= 40, "TCP options");
        let l4_len = self.l4_hdr_len() + self.payload;
        // IPv6 payload length (extensions + L4) or IPv4 total length.
        let ip_payload = self.l3_len() - if self.v6 { 40 } else { 0 } + l4_len;
        assert!(ip_payload <= 0xffff, "IP packet too long");

        let mut f = Vec::with_capacity(self.len());
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        let tpids: &[u16] = match self.vlans {
            0 => &[],
            1 => &[ETHERTYPE_VLAN],
            _ => &[ETHERTYPE_QINQ, ETHERTYPE_VLAN],
        };
        for (i, t) in tpids.iter().enumerate() {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        let proto = if self.tcp { PROTO_TCP } else { PROTO_UDP };
        if self.v6 {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(ip_payload as u16).to_be_bytes());
            f.push(if self.ipv6_ext { PROTO_HOPOPTS } else { proto });
            f.push(64);
            f.extend_from_slice(&SRC_V6);
            f.extend_from_slice(&DST_V6);
            if self.ipv6_ext {
                // Hop-by-hop then destination options, each 8 bytes of PadN.
                f.extend_from_slice(&[PROTO_DSTOPTS, 0, 1, 4, 0, 0, 0, 0]);
                f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
            }
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let ip = f.len();
            f.push(0x40 | (self.l3_len() / 4) as u8);
            f.push(0);
            f.extend_from_slice(&(ip_payload as u16).to_be_bytes());
            f.extend_from_slice(&self.ip_id.to_be_bytes());
            f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF
            f.extend_from_slice(&[64, proto, 0, 0]);
            f.extend_from_slice(&SRC_V4);
            f.extend_from_slice(&DST_V4);
            f.resize(f.len() + self.ipv4_opts, 1); // NOP options
            let c = csum::checksum(&f[ip..]);
            f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = f.len();
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        if self.tcp {
            f.extend_from_slice(&self.seq.to_be_bytes());
            f.extend_from_slice(&0x0102_0304u32.to_be_bytes());
            f.push(((self.l4_hdr_len() / 4) as u8) << 4);
            f.push(self.tcp_flags);
            f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            f.resize(f.len() + self.tcp_opts, 1); // NOP options
        } else {
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend((0..self.payload).map(|i| self.payload_byte(i)));

        let field = l4 + if self.tcp { TCP_CSUM } else { UDP_CSUM };
        let pseudo = self.pseudo(l4_len);
        match self.csum {
            CsumFill::Zero => {}
            CsumFill::Partial => f[field..field + 2].copy_from_slice(&pseudo.to_be_bytes()),
            CsumFill::Full => {
                let mut c = csum::Csum::new();
                c.add_u16(pseudo);
                c.add(&f[l4..]);
                let v = c.finish();
                let v = if v == 0 && !self.tcp { 0xffff } else { v };
                f[field..field + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        f
    }

    /// Folded pseudo-header sum for an L4 length of `l4_len`.
    pub fn pseudo(&self, l4_len: usize) -> u16 {
        let proto = if self.tcp { PROTO_TCP } else { PROTO_UDP };
        if self.v6 {
            csum::pseudo_v6(&SRC_V6, &DST_V6, proto, l4_len as u32).fold()
        } else {
            csum::pseudo_v4(&SRC_V4, &DST_V4, proto, l4_len as u16).fold()
        }
    }

    /// The virtio-net header a driver sends with this frame built with
    /// [`CsumFill::Partial`]: NEEDS_CSUM, and GSO with `mss` if `Some`.
    pub fn offload_hdr(&self, mss: Option<u16>) -> NetHdr {
        let gso_type = match (mss, self.tcp, self.v6) {
            (None, _, _) => hdr::GSO_NONE,
            (Some(_), true, false) => hdr::GSO_TCPV4,
            (Some(_), true, true) => hdr::GSO_TCPV6,
            (Some(_), false, _) => hdr::GSO_UDP_L4,
        };
        NetHdr {
            flags: hdr::F_NEEDS_CSUM,
            gso_type,
            hdr_len: self.hdr_len() as u16,
            gso_size: mss.unwrap_or(0),
            csum_start: self.l4_off() as u16,
            csum_offset: if self.tcp { TCP_CSUM } else { UDP_CSUM } as u16,
            num_buffers: 0,
        }
    }
}
