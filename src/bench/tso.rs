//! `pktgen --tso SIZE`: the generator sends TCP/IPv4 GSO frames of SIZE
//! bytes (Ethernet header included) with NEEDS_CSUM and GSO_TCPV4, gso_size
//! the MSS of the device's MTU, so the device segments them in software
//! for the loopback port; the receive side checks every segment.
//!
//! Numbering: GSO frame `k` of a pair carries TCP sequence number
//! `k << 16` (a payload is below 64 KiB, so a segment's sequence number is
//! `k << 16 | offset`), source port `BASE_PORT + pair`. A segment is good
//! when its IPv4 and TCP checksums verify (checked independently of the
//! device's code, by [`verify`]), its lengths agree, its offset is a
//! multiple of the MSS inside the frame, its payload length is what
//! segmentation at that offset gives, and every payload byte is the
//! template's byte at that offset. Each good segment counts as number
//! `k * segments_per_frame + offset / mss` in the pair's stream, so the
//! usual [`RxCheck`](super::pktgen::RxCheck) accounting finds losses,
//! duplicates and reordering per segment.
//!
//! The frame is built once per pair (setup); per frame the generator copies
//! it and patches the sequence number (the partial checksum is the
//! pseudo-header's, which does not cover it).

use super::frame::Check;
use super::testbed::{DEVICE_MAC, PEER_MAC};
use crate::driver::net::NET_HDR_LEN;
use crate::net::hdr::{self, NetHdr};
use crate::net::offload::{verify, Verdict};
use crate::net::wire::build::{CsumFill, FrameSpec};

/// Ethernet + IPv4 + TCP, no options or tags.
pub const HEADERS: usize = 14 + 20 + 20;
/// Largest SIZE: the IPv4 total length field's limit plus Ethernet.
pub const MAX_SIZE: usize = 65535 + 14;
/// TCP source port of pair 0's stream.
pub const BASE_PORT: u16 = 40000;
const SEQ_OFF: usize = 14 + 20 + 4;

/// Why a `--tso` setting cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsoError {
    #[error("--tso {0}: the frame size must be in {min}..={MAX_SIZE} bytes (Ethernet, IPv4 and TCP headers included)", min = HEADERS + 2)]
    Size(usize),
    #[error("MTU {0} leaves no room for a TCP segment (needs at least 41)")]
    Mtu(u16),
    #[error(
        "--tso {size}: {payload} payload bytes fit in one segment of the MSS {mss} (MTU {mtu}); give more than {min} \
         bytes so the device has something to segment"
    )]
    OneSegment { size: usize, payload: usize, mss: u16, mtu: u16, min: usize },
}

/// Checks SIZE alone (before the device's MTU is known).
pub fn check_size(size: usize) -> Result<(), TsoError> {
    if !(HEADERS + 2..=MAX_SIZE).contains(&size) {
        return Err(TsoError::Size(size));
    }
    Ok(())
}

/// What the generator threads share: SIZE and the MSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TsoOptions {
    pub size: usize,
    pub mss: u16,
}

impl TsoOptions {
    /// SIZE with the MSS of `mtu` (IPv4 and TCP headers without options).
    pub fn new(size: usize, mtu: u16) -> Result<TsoOptions, TsoError> {
        check_size(size)?;
        if mtu < 41 {
            return Err(TsoError::Mtu(mtu));
        }
        let mss = mtu - 40;
        let payload = size - HEADERS;
        if payload <= mss as usize {
            return Err(TsoError::OneSegment { size, payload, mss, mtu, min: HEADERS + mss as usize });
        }
        Ok(TsoOptions { size, mss })
    }

    pub fn payload(&self) -> usize {
        self.size - HEADERS
    }

    /// Segments the device makes of one frame.
    pub fn segments_per_frame(&self) -> u64 {
        self.payload().div_ceil(self.mss as usize) as u64
    }

    /// Driver buffer size for these frames (header included).
    pub fn buf_size(&self) -> usize {
        (self.size + NET_HDR_LEN).next_multiple_of(64)
    }
}

/// One pair's stream: the template and what the checker needs.
pub struct TsoStream {
    o: TsoOptions,
    template: Vec<u8>,
    hdr: NetHdr,
    pair: u16,
    spf: u64,
}

impl TsoStream {
    pub fn new(o: TsoOptions, pair: u16) -> TsoStream {
        let spec = FrameSpec {
            payload: o.payload(),
            seed: pair as u8,
            src_port: BASE_PORT.wrapping_add(pair),
            seq: 0,
            csum: CsumFill::Partial,
            ..FrameSpec::default()
        };
        let mut template = spec.build();
        // Addressed like the other pktgen frames (the loopback swaps them).
        template[..6].copy_from_slice(&PEER_MAC);
        template[6..12].copy_from_slice(&DEVICE_MAC);
        let hdr = spec.offload_hdr(Some(o.mss));
        debug_assert_eq!(hdr.gso_type, hdr::GSO_TCPV4);
        TsoStream { o, template, hdr, pair, spf: o.segments_per_frame() }
    }

    pub fn segments_per_frame(&self) -> u64 {
        self.spf
    }

    /// Write GSO frame `k` with its virtio-net header into `buf` (a TX
    /// buffer, header first); returns the frame's length without the
    /// header, 0 when the buffer is too small.
    pub fn write(&self, buf: &mut [u8], k: u64) -> usize {
        let n = self.template.len();
        if buf.len() < NET_HDR_LEN + n || self.hdr.encode(buf).is_err() {
            return 0;
        }
        let f = &mut buf[NET_HDR_LEN..NET_HDR_LEN + n];
        f.copy_from_slice(&self.template);
        f[SEQ_OFF..SEQ_OFF + 4].copy_from_slice(&((k as u32) << 16).to_be_bytes());
        n
    }

    /// Check one received frame (with its virtio-net header); `next` is the
    /// segment number the pair's accounting expects next (to widen the 16
    /// bits of frame number a segment carries).
    pub fn check(&self, h: &[u8; NET_HDR_LEN], f: &[u8], next: u64) -> Check {
        // The driver took no receive offloads: complete segments only.
        match NetHdr::parse(h) {
            Ok(nh) if nh.gso_type == hdr::GSO_NONE && nh.flags & hdr::F_NEEDS_CSUM == 0 => {}
            _ => return Check::Corrupt,
        }
        if f.len() <= HEADERS || f.len() > HEADERS + self.o.mss as usize {
            return Check::Corrupt;
        }
        // Swapped by the loopback: from the peer's side back to the device.
        if f[..6] != DEVICE_MAC || f[6..12] != PEER_MAC || f[12..14] != [0x08, 0x00] {
            return Check::Corrupt;
        }
        // Fixed layout: IPv4 without options, TCP without options.
        if f[14] != 0x45 || f[23] != 6 || f[14 + 20 + 12] >> 4 != 5 {
            return Check::Corrupt;
        }
        if u16::from_be_bytes([f[16], f[17]]) as usize != f.len() - 14 || verify(f) != Verdict::Good {
            return Check::Corrupt;
        }
        let port = u16::from_be_bytes([f[34], f[35]]);
        let pair = port.wrapping_sub(BASE_PORT);
        if pair != self.pair {
            // Another pair's segment: the accounting counts it as misdelivered.
            return Check::Ok { pair, seq: u64::MAX };
        }
        let seq = u32::from_be_bytes(f[SEQ_OFF..SEQ_OFF + 4].try_into().expect("4 bytes"));
        let (k16, off) = ((seq >> 16) as u64, (seq & 0xffff) as usize);
        let mss = self.o.mss as usize;
        let len = f.len() - HEADERS;
        if off % mss != 0 || off >= self.o.payload() || len != (self.o.payload() - off).min(mss) {
            return Check::Corrupt;
        }
        // The template holds the pattern (`FrameSpec::payload_byte`) at each
        // offset: one compare per segment.
        if f[HEADERS..] != self.template[HEADERS + off..HEADERS + off + len] {
            return Check::Corrupt;
        }
        // The frame number nearest the expected one with these low 16 bits.
        let expect_k = next / self.spf;
        let k = (expect_k & !0xffff) | k16;
        let k = [k.wrapping_sub(0x10000), k, k + 0x10000]
            .into_iter()
            .filter(|&c| c < 1 << 48)
            .min_by_key(|&c| c.abs_diff(expect_k))
            .unwrap_or(k);
        Check::Ok { pair, seq: k * self.spf + (off / mss) as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::offload::{validate, SegCsum, Segmenter, Sender};

    fn segments(s: &TsoStream, k: u64) -> Vec<Vec<u8>> {
        let mut buf = vec![0u8; s.o.buf_size()];
        let n = s.write(&mut buf, k);
        assert_eq!(n, s.o.size);
        let nh = NetHdr::parse(&buf).unwrap();
        assert_eq!((nh.gso_type, nh.gso_size, nh.flags), (hdr::GSO_TCPV4, s.o.mss, hdr::F_NEEDS_CSUM));
        let frame = &buf[NET_HDR_LEN..NET_HDR_LEN + n];
        let from = Sender::driver(crate::net::features::CSUM | crate::net::features::HOST_TSO4);
        let gso = validate(frame, &nh, &from).expect("valid offload header").gso.expect("gso");
        let seg = Segmenter::new(frame, &gso, SegCsum::Full).expect("segmenter");
        let mut out = Vec::new();
        let mut b = vec![0u8; 2048];
        for i in 0..seg.count() {
            let len = seg.write(i, &mut b).expect("segment");
            let mut f = b[..len].to_vec();
            // As the MAC-swapping loopback returns it.
            let (dst, rest) = f.split_at_mut(6);
            dst.swap_with_slice(&mut rest[..6]);
            out.push(f);
        }
        out
    }

    #[test]
    fn segments_of_a_tso_frame_check_out_and_damage_is_caught() {
        let o = TsoOptions::new(10_000, 1500).unwrap();
        assert_eq!((o.mss, o.segments_per_frame()), (1460, 7));
        let s = TsoStream::new(o, 1);
        let h = NetHdr::rx(1).to_bytes();
        for k in [0u64, 5, 0x1_0003] {
            let segs = segments(&s, k);
            assert_eq!(segs.len(), 7);
            for (i, f) in segs.iter().enumerate() {
                let want = Check::Ok { pair: 1, seq: k * 7 + i as u64 };
                assert_eq!(s.check(&h, f, k * 7), want, "frame {k} segment {i}");
                let mut bad = f.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert_eq!(s.check(&h, &bad, k * 7), Check::Corrupt, "payload flip");
                assert_eq!(s.check(&h, &f[..f.len() - 1], k * 7), Check::Corrupt, "truncated");
            }
        }
        // A GSO header on receive was not negotiated.
        let segs = segments(&s, 0);
        let gso = NetHdr { gso_type: hdr::GSO_TCPV4, gso_size: 1460, ..NetHdr::rx(1) }.to_bytes();
        assert_eq!(s.check(&gso, &segs[0], 0), Check::Corrupt);
        // Pair 0's checker sees pair 1's segment as misdelivered.
        assert!(matches!(TsoStream::new(o, 0).check(&h, &segs[0], 0), Check::Ok { pair: 1, .. }));
    }

    #[test]
    fn bad_sizes_are_refused_with_reasons() {
        assert_eq!(check_size(54), Err(TsoError::Size(54)));
        assert_eq!(check_size(MAX_SIZE + 1), Err(TsoError::Size(MAX_SIZE + 1)));
        assert!(check_size(MAX_SIZE).is_ok());
        assert!(matches!(TsoOptions::new(1514, 1500), Err(TsoError::OneSegment { mss: 1460, .. })));
        assert_eq!(TsoOptions::new(1515, 1500).map(|o| o.segments_per_frame()), Ok(2));
        assert_eq!(TsoOptions::new(9000, 40), Err(TsoError::Mtu(40)));
    }
}
