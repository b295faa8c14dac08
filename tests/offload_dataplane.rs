//! Offloads on the dataplane (issue 11), driven through the embedded kernel
//! model by the project's driver: TX checksum/TSO/USO finished in software
//! for a port that takes only complete frames (every resulting frame
//! checked by `offload::verify`, an independent checksum verifier, and its
//! payload compared with the original), malformed headers counted and
//! dropped, MRG_RXBUF spreading frames over small buffers, and RX frames
//! with offload metadata delivered only in forms the driver accepts, also
//! after CTRL_GUEST_OFFLOADS_SET.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vduse_net::backend::{FrameMeta, Port, PortFrame};
use vduse_net::driver::net::{NetDriverConfig, QueuePair, NET_HDR_LEN};
use vduse_net::net::ctrl::CLASS_GUEST_OFFLOADS;
use vduse_net::net::features as f;
use vduse_net::net::hdr::{self, NetHdr};
use vduse_net::net::offload::{validate, verify, OffloadCaps, Sender, Verdict};
use vduse_net::net::wire::build::{CsumFill, FrameSpec};
use vduse_net::vduse::model::ModelConfig;

const TX_OFFLOADS: u64 = f::CSUM | f::HOST_TSO4 | f::HOST_TSO6 | f::HOST_ECN;
/// Big enough for a 64 KiB GSO frame and its header.
const BIG_BUF: usize = 66 * 1024;

fn cfg(extra: u64, fmt: RingFormat) -> NetDriverConfig {
    let mut c = driver_config_fmt(fmt);
    c.features |= extra;
    c.buf_size = BIG_BUF;
    c.ring_size = 64;
    c
}

fn send(q: &mut QueuePair, frame: &[u8], h: &NetHdr) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let n = q.tx_burst_hdr(
            &mut |_, buf| {
                h.encode(buf).unwrap();
                buf[NET_HDR_LEN..NET_HDR_LEN + frame.len()].copy_from_slice(frame);
                frame.len()
            },
            1,
        );
        if n == 1 {
            return;
        }
        assert!(Instant::now() < end, "TX ring stayed full");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Exactly `want` frames (header, bytes), then nothing more for a moment.
fn receive(q: &mut QueuePair, want: usize) -> Vec<([u8; NET_HDR_LEN], Vec<u8>)> {
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while out.len() < want && Instant::now() < end {
        q.post_rx();
        q.reclaim_tx();
        if q.rx_burst_merged(&mut |h, b| out.push((*h, b.to_vec())), 64) == 0 {
            let _ = q.wait_rx(Duration::from_millis(20));
        }
    }
    let quiet = Instant::now() + Duration::from_millis(100);
    while Instant::now() < quiet {
        q.rx_burst_merged(&mut |h, b| out.push((*h, b.to_vec())), 64);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(out.len(), want, "frames received");
    out
}

fn specs(with_udp: bool) -> Vec<FrameSpec> {
    let mut v = Vec::new();
    for tcp in [true, false] {
        if !tcp && !with_udp {
            continue;
        }
        for v6 in [false, true] {
            for vlans in [0, 1, 2] {
                v.push(FrameSpec { tcp, v6, vlans, csum: CsumFill::Partial, ..FrameSpec::default() });
            }
        }
    }
    v
}

/// `f` as the MAC-swapping loopback returns it.
fn swapped(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    let (dst, rest) = v.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
    v
}

/// The payload of a frame built from `spec` (everything after its headers).
fn payload<'a>(spec: &FrameSpec, f: &'a [u8]) -> &'a [u8] {
    &f[spec.hdr_len()..]
}

fn tso_and_uso_are_segmented_for_a_plain_port(fmt: RingFormat) {
    let rig = Rig::with_fmt(device_offering("offl-gso", 1, "+host_uso"), ModelConfig::patched_7_3(), fmt);
    let mut d = rig.probe(cfg(TX_OFFLOADS | f::HOST_USO, fmt));
    assert_eq!(d.features() & (TX_OFFLOADS | f::HOST_USO), TX_OFFLOADS | f::HOST_USO);
    let mut q = d.take_pairs().remove(0);
    q.post_rx();
    let (mut frames, mut segments) = (0u64, 0u64);
    for spec in specs(true) {
        for (payload_len, mss) in [(5000usize, 1000u16), (2900, 1448), (1, 500), (60_000, 1400)] {
            let spec = FrameSpec { payload: payload_len, seed: payload_len as u8, ..spec };
            let frame = spec.build();
            send(&mut q, &frame, &spec.offload_hdr(Some(mss)));
            let count = payload_len.div_ceil(mss as usize);
            let got = receive(&mut q, count);
            let mut joined = Vec::new();
            for (i, (h, seg)) in got.iter().enumerate() {
                let h = NetHdr::parse(h).unwrap();
                // The driver took no receive offloads: complete frames only.
                assert_eq!((h.flags, h.gso_type), (0, hdr::GSO_NONE), "{spec:?} segment {i}");
                assert_eq!(verify(seg), Verdict::Good, "{spec:?} mss {mss} segment {i}");
                let want = (payload_len - i * mss as usize).min(mss as usize);
                assert_eq!(seg.len(), spec.hdr_len() + want, "{spec:?} segment {i}");
                joined.extend_from_slice(payload(&spec, seg));
            }
            assert_eq!(joined, payload(&spec, &frame), "{spec:?}: payload reassembled");
            frames += 1;
            segments += count as u64;
        }
    }
    let s = rig.stats();
    let p = &s.pairs[0];
    eprintln!("software GSO: {frames} frames -> {segments} segments, every one verified");
    assert_eq!((p.tx_sw_gso, p.tx_sw_segments), (frames, segments));
    assert_eq!((p.tx_offload_dropped, p.tx_dropped, p.queue_errors), (0, 0, 0));
    drop(q);
    drop(d);
    rig.finish();
}

fn partial_checksums_are_completed(fmt: RingFormat) {
    let rig = Rig::new_fmt("offl-csum", 1, fmt);
    let mut d = rig.probe(cfg(f::CSUM | f::GUEST_CSUM, fmt));
    let mut q = d.take_pairs().remove(0);
    q.post_rx();
    let n = specs(true).len() as u64;
    for spec in specs(true) {
        let spec = FrameSpec { payload: 777, ..spec };
        let frame = spec.build();
        assert_ne!(verify(&frame), Verdict::Good, "a partial checksum is not a valid one");
        send(&mut q, &frame, &spec.offload_hdr(None));
        let got = receive(&mut q, 1);
        let h = NetHdr::parse(&got[0].0).unwrap();
        // Completed by the device: no NEEDS_CSUM (DATA_VALID is allowed).
        assert_eq!(h.flags & hdr::F_NEEDS_CSUM, 0);
        assert_eq!(verify(&got[0].1), Verdict::Good, "{spec:?}");
        assert_eq!(payload(&spec, &got[0].1), payload(&spec, &frame));
    }
    let s = rig.stats();
    assert_eq!(s.pairs[0].tx_sw_csum, n);
    drop(q);
    drop(d);
    rig.finish();
}

fn malformed_offload_headers_are_counted_drops(fmt: RingFormat) {
    let rig = Rig::new_fmt("offl-bad", 1, fmt);
    let mut d = rig.probe(cfg(TX_OFFLOADS, fmt));
    let mut q = d.take_pairs().remove(0);
    q.post_rx();
    let spec = FrameSpec { payload: 3000, csum: CsumFill::Partial, ..FrameSpec::default() };
    let frame = spec.build();
    let good = spec.offload_hdr(Some(1000));
    let len = frame.len() as u16;
    let bad = [
        ("csum_start beyond the frame", NetHdr { gso_type: 0, gso_size: 0, csum_start: len + 10, ..good }),
        ("csum field past the end", NetHdr { gso_type: 0, gso_size: 0, csum_start: len - 1, ..good }),
        ("gso_size 0", NetHdr { gso_size: 0, ..good }),
        ("hdr_len beyond the frame", NetHdr { hdr_len: len + 100, ..good }),
        ("GSO without NEEDS_CSUM", NetHdr { flags: 0, ..good }),
        ("UDP GSO not negotiated", NetHdr { gso_type: hdr::GSO_UDP_L4, ..good }),
        ("unknown gso_type", NetHdr { gso_type: 7, ..good }),
        ("UFO", NetHdr { gso_type: hdr::GSO_UDP, ..good }),
        ("checksum not at L4", NetHdr { csum_offset: 2, ..good }),
    ];
    for (what, h) in &bad {
        // The pure validator agrees these are malformed...
        assert!(validate(&frame, h, &Sender::driver(TX_OFFLOADS)).is_err(), "{what}");
        // ... and the device drops them without harm.
        send(&mut q, &frame, h);
    }
    // Still working: the good header right after.
    send(&mut q, &frame, &good);
    let got = receive(&mut q, 3);
    assert!(got.iter().all(|(_, seg)| verify(seg) == Verdict::Good));
    let s = rig.stats();
    let p = &s.pairs[0];
    eprintln!("malformed offload headers: {} dropped and counted", p.tx_offload_dropped);
    assert_eq!(p.tx_offload_dropped, bad.len() as u64);
    assert_eq!((p.queue_errors, p.tx_sw_gso), (0, 1));
    assert!(!rig.needs_reset());
    drop(q);
    drop(d);
    rig.finish();
}

fn a_driver_without_offloads_gets_plain_frames(fmt: RingFormat) {
    let rig = Rig::new_fmt("offl-none", 1, fmt);
    let mut d = rig.probe(cfg(0, fmt));
    assert_eq!(d.features() & (TX_OFFLOADS | f::GUEST_CSUM | f::MRG_RXBUF), 0, "test driver asks for none");
    let mut q = d.take_pairs().remove(0);
    q.post_rx();
    let spec = FrameSpec { payload: 500, csum: CsumFill::Partial, ..FrameSpec::default() };
    let frame = spec.build();
    // NEEDS_CSUM without CSUM, TSO without HOST_TSO4: dropped, counted.
    send(&mut q, &frame, &spec.offload_hdr(None));
    send(&mut q, &frame, &spec.offload_hdr(Some(100)));
    let full = FrameSpec { csum: CsumFill::Full, ..spec }.build();
    send(&mut q, &full, &NetHdr { flags: hdr::F_DATA_VALID, ..NetHdr::default() });
    let got = receive(&mut q, 1);
    assert_eq!(got[0].0, NetHdr::rx(1).to_bytes(), "no flags for a driver without GUEST_CSUM");
    assert_eq!(got[0].1, swapped(&full));
    let s = rig.stats();
    assert_eq!(s.pairs[0].tx_offload_dropped, 2);
    drop(q);
    drop(d);
    rig.finish();
}

fn mrg_rxbuf_spreads_frames_over_small_buffers(fmt: RingFormat) {
    let rig = Rig::new_fmt("offl-mrg", 1, fmt);
    let mut d = rig.probe(cfg(f::MRG_RXBUF | TX_OFFLOADS, fmt));
    assert_ne!(d.features() & f::MRG_RXBUF, 0);
    let mut q = d.take_pairs().remove(0);
    const BUF: usize = 256;
    q.set_rx_buffer_len(BUF);
    q.post_rx();
    let mut merged = 0;
    // Up to what a loopback slot (2048 bytes) holds.
    for len in [1500usize, 60, 244, 245, 700, 1990] {
        let spec = FrameSpec { payload: len, csum: CsumFill::Full, seed: len as u8, ..FrameSpec::default() };
        let frame = spec.build();
        send(&mut q, &frame, &NetHdr::default());
        let got = receive(&mut q, 1);
        let h = NetHdr::parse(&got[0].0).unwrap();
        let buffers = (NET_HDR_LEN + frame.len()).div_ceil(BUF);
        assert_eq!(h.num_buffers as usize, buffers, "{len}-byte payload");
        assert_eq!(got[0].1, swapped(&frame), "{len}-byte payload reassembled");
        merged += (buffers > 1) as u64;
    }
    // A 20000-byte TSO frame: 14 segments, each over several buffers.
    let spec = FrameSpec { payload: 20_000, csum: CsumFill::Partial, ..FrameSpec::default() };
    send(&mut q, &spec.build(), &spec.offload_hdr(Some(1448)));
    let got = receive(&mut q, 14);
    for (h, seg) in &got {
        assert_eq!(verify(seg), Verdict::Good);
        let n = NetHdr::parse(h).unwrap().num_buffers as usize;
        assert_eq!(n, (NET_HDR_LEN + seg.len()).div_ceil(BUF));
        merged += (n > 1) as u64;
    }
    let s = rig.stats();
    assert_eq!(s.pairs[0].rx_merged, merged);
    assert_eq!((s.pairs[0].rx_dropped_small, s.pairs[0].queue_errors), (0, 0));
    drop(q);
    drop(d);
    rig.finish();
}

/// A port that hands scripted frames with metadata (what a tap set up with
/// TUNSETOFFLOAD would give), `released` at a time.
struct Scripted {
    frames: Vec<(Vec<u8>, FrameMeta)>,
    next: usize,
    released: Arc<AtomicUsize>,
    /// What `set_offloads` was last told the driver accepts.
    told: Arc<std::sync::Mutex<Vec<OffloadCaps>>>,
    sink: Vec<u8>,
}

impl Port for Scripted {
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.sink)
    }
    fn tx_commit(&mut self, _len: usize, _meta: FrameMeta) {}
    fn tx_flush(&mut self) {}
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        (self.rx_pending() > 0).then(|| {
            let (b, meta) = &self.frames[self.next];
            PortFrame { bytes: b, meta: *meta }
        })
    }
    fn rx_consume(&mut self) {
        self.next += 1;
    }
    fn rx_flush(&mut self) {}
    fn rx_pending(&self) -> usize {
        self.released.load(Ordering::Acquire).min(self.frames.len()).saturating_sub(self.next)
    }
    fn set_offloads(&mut self, accept: OffloadCaps, _gso: bool) -> OffloadCaps {
        self.told.lock().unwrap().push(accept);
        OffloadCaps::ALL
    }
}

fn rx_offloads_follow_what_the_driver_accepts(fmt: RingFormat) {
    let gso = FrameSpec { payload: 4000, csum: CsumFill::Partial, ..FrameSpec::default() };
    let csum = FrameSpec { payload: 300, csum: CsumFill::Partial, ..FrameSpec::default() };
    let meta = |s: &FrameSpec, mss| FrameMeta::from_hdr(&s.offload_hdr(mss));
    let one = [(gso.build(), meta(&gso, Some(1000))), (csum.build(), meta(&csum, None))];
    // The same two frames, before and after GUEST_OFFLOADS_SET(0).
    let frames: Vec<_> = one.iter().chain(one.iter()).cloned().collect();
    let released = Arc::new(AtomicUsize::new(0));
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = Scripted { frames, next: 0, released: released.clone(), told: told.clone(), sink: vec![0; 2048] };
    let rig = Rig::with_ports(
        offering_fmt(device_options("offl-rx", 1), fmt),
        ModelConfig::patched_7_3(),
        vec![Box::new(port)],
    );
    let guest = f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::CTRL_GUEST_OFFLOADS | f::CTRL_VQ;
    let mut d = rig.probe(cfg(guest, fmt));
    assert_eq!(d.features() & guest, guest);
    let mut q = d.take_pairs().remove(0);
    q.post_rx();
    released.store(2, Ordering::Release);
    let got = receive(&mut q, 2);
    let h = NetHdr::parse(&got[0].0).unwrap();
    assert_eq!((h.gso_type, h.gso_size, h.flags), (hdr::GSO_TCPV4, 1000, hdr::F_NEEDS_CSUM), "GSO passed up");
    assert_eq!(got[0].1, gso.build());
    let h = NetHdr::parse(&got[1].0).unwrap();
    assert_eq!(h.flags, hdr::F_NEEDS_CSUM, "partial checksum passed up");
    // The driver switches its receive offloads off.
    assert_eq!(d.ctrl(CLASS_GUEST_OFFLOADS, 0, &0u64.to_le_bytes()).unwrap(), 0, "GUEST_OFFLOADS_SET acked");
    let end = Instant::now() + Duration::from_secs(5);
    while told.lock().unwrap().last() != Some(&OffloadCaps::NONE) {
        // The poll thread takes the change at its next RX burst.
        assert!(Instant::now() < end, "port never told: {:?}", told.lock().unwrap());
        q.post_rx();
        std::thread::sleep(Duration::from_millis(5));
    }
    released.store(4, Ordering::Release);
    let got = receive(&mut q, 5);
    for (h, seg) in &got {
        assert_eq!(NetHdr::parse(h).unwrap().flags, 0);
        assert_eq!(NetHdr::parse(h).unwrap().gso_type, 0);
        assert_eq!(verify(seg), Verdict::Good);
    }
    let s = rig.stats();
    assert_eq!((s.pairs[0].rx_sw_gso, s.pairs[0].rx_sw_segments, s.pairs[0].rx_sw_csum), (1, 4, 1));
    assert_eq!(told.lock().unwrap()[0], OffloadCaps { tso_ecn: false, uso4: false, uso6: false, ..OffloadCaps::ALL });
    drop(q);
    drop(d);
    rig.finish();
}

both_formats!(
    tso_and_uso_are_segmented_for_a_plain_port,
    partial_checksums_are_completed,
    malformed_offload_headers_are_counted_drops,
    a_driver_without_offloads_gets_plain_frames,
    mrg_rxbuf_spreads_frames_over_small_buffers,
    rx_offloads_follow_what_the_driver_accepts,
);
