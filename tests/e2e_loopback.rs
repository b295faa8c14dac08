//! The end-to-end run: two queue pairs on the embedded kernel model with
//! MAC-swapping loopback ports, over a million numbered frames of mixed
//! sizes, every one checked: none lost, duplicated, reordered within its
//! queue, or corrupted. Every test runs on both ring formats
//! (`split::NAME`, `packed::NAME`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vduse_net::bench::pktgen::{run_queue, Control, GenOptions, Mode, Sizes};
use vduse_net::driver::net::NetDriverConfig;

const FRAMES_PER_PAIR: u64 = 500_000;

fn a_million_mixed_frames_through_two_pairs(fmt: RingFormat) {
    let rig = Rig::new_fmt("e2e0", 2, fmt);
    let mut d = rig.probe(NetDriverConfig { ring_size: 256, ..driver_config_fmt(fmt) });
    assert_eq!(d.pairs(), 2, "both pairs enabled through VQ_PAIRS_SET");
    let sizes = Sizes(vec![64, 1518, 65, 128, 570, 1514, 256, 1000, 511, 1499, 100, 1024, 777]);
    let o = GenOptions {
        mode: Mode::Loopback,
        sizes: sizes.clone(),
        burst: 32,
        rate_pps: 0.0,
        frames: Some(FRAMES_PER_PAIR),
        duration: Some(Duration::from_secs(50)),
        warmup: Duration::ZERO,
        busy: false,
        stall: Duration::from_secs(5),
        ride_through: None,
        ..GenOptions::default()
    };
    let ctl = Arc::new(Control::new(2, Arc::new(AtomicBool::new(false))));
    let start = Instant::now();
    let handles: Vec<_> = d
        .take_pairs()
        .into_iter()
        .enumerate()
        .map(|(i, mut q)| {
            let (o, ctl) = (o.clone(), ctl.clone());
            std::thread::spawn(move || run_queue(&mut q, i as u16, &o, &ctl))
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().expect("generator thread")).collect();
    let secs = start.elapsed().as_secs_f64();
    let total: u64 = reports.iter().map(|r| r.rx_frames).sum();
    eprintln!("e2e ({}): {total} frames in {secs:.2} s ({:.2} Mpps)", fmt.name(), total as f64 / secs / 1e6);
    for r in &reports {
        assert_eq!(r.tx_frames, FRAMES_PER_PAIR, "pair {}: {r:?}", r.pair);
        assert_eq!(r.rx_frames, FRAMES_PER_PAIR, "pair {}: {r:?}", r.pair);
        assert_eq!((r.lost, r.integrity_errors, r.duplicates_or_reordered), (0, 0, 0), "pair {}: {r:?}", r.pair);
        // Every size of the mix went through (bytes = sum over the cycle).
        let cycle: u64 = sizes.0.iter().map(|&s| s as u64).sum();
        let n = sizes.0.len() as u64;
        let expect: u64 = cycle * (FRAMES_PER_PAIR / n)
            + sizes.0[..(FRAMES_PER_PAIR % n) as usize].iter().map(|&s| s as u64).sum::<u64>();
        assert_eq!(r.rx_bytes, expect, "pair {}", r.pair);
    }
    assert!(total >= 1_000_000);
    let stats = rig.stats();
    for (i, p) in stats.pairs.iter().enumerate() {
        assert_eq!((p.tx_frames, p.rx_frames), (FRAMES_PER_PAIR, FRAMES_PER_PAIR), "device pair {i}: {p:?}");
        assert_eq!((p.queue_errors, p.tx_dropped, p.rx_filtered, p.rx_dropped_small), (0, 0, 0, 0), "pair {i}");
    }
    assert!(!rig.needs_reset());
    drop(d);
    rig.finish();
}

/// An idle device sleeps on its kick eventfds; each kick must wake it at
/// once, across the resets vhost-vdpa does at open and probe (the kernel
/// drops kick eventfds on reset). Without a working kick every round trip
/// would wait for the idle timeout (100 ms).
fn an_idle_device_wakes_on_each_kick(fmt: RingFormat) {
    let rig = Rig::new_fmt("e2e-kick", 1, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut q = d.take_pairs();
    let mut f = Flow::new(0);
    assert!(f.exchange(&mut q[0], 1, Duration::from_secs(5)));
    let mut waited = Duration::ZERO;
    for _ in 0..20 {
        // Long enough for the poll thread to spin out and sleep.
        assert!(wait_for(Duration::from_secs(2), || rig.stats().pairs[0].sleeps > 0));
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        assert!(f.exchange(&mut q[0], 1, Duration::from_secs(5)));
        waited += t0.elapsed();
    }
    assert!(f.clean(), "{f:?}");
    let s = rig.stats().pairs[0];
    assert!(s.wakeups >= 10, "the device slept between frames: {s:?}");
    assert!(waited < Duration::from_millis(1000), "20 round trips took {waited:?}: kicks lost");
    drop(q);
    drop(d);
    rig.finish();
}

/// The loopback reflector copies a frame straight from the TX chain into an
/// RX chain (one copy). A frame split over many pieces (12 here; a chain
/// keeps up to `virtq::MAX_READABLE_PIECES` = 28 readable ones, more than
/// Linux's 19 per frame) must come back whole, with the stream in order
/// around it. (Before the chain abstraction the direct path gathered only
/// 8 pieces and sent this frame through the port's slot ring.)
fn frames_in_many_pieces_come_back_whole_and_in_order(fmt: RingFormat) {
    use vduse_net::bench::frame;
    use vduse_net::uapi::virtio::VRING_DESC_F_NEXT;

    let rig = Rig::new_fmt("e2e-pieces", 1, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut qs = d.take_pairs();
    let q = &mut qs[0];
    let mut f = Flow::new(0);
    assert!(f.exchange(q, 10, Duration::from_secs(5)));
    // Every TX chain back, so the raw chain's buffer id (packed) is free.
    q.reclaim_tx();
    assert_eq!(q.tx_free(), q.ring_size() as usize);
    let mem = q.memory().clone();
    // Frame seq 10 of pair 0, after a zeroed 12-byte header, in the last slot's buffer.
    let mut bytes = vec![0u8; 12 + 300];
    let n = frame::build(&mut bytes[12..], 300, [0x02, 0, 0, 0, 0, 0xfe], [0x02, 0, 0, 0, 0, 1], 0, 10);
    assert_eq!(n, 300);
    let last = q.ring_size() - 1;
    let (off, iova) = (q.tx_slot_offset(last), q.tx_slot_iova(last));
    mem.write(off, &bytes);
    // 12 descriptors of 26 bytes each (the header spans the first), chained
    // (split: descriptors 40.., head 40; packed: buffer id 40).
    let pieces = 12u16;
    let base = 40u16;
    let per = (bytes.len() / pieces as usize) as u32;
    let descs: Vec<(u64, u32, u16)> = (0..pieces)
        .map(|i| {
            let last = i + 1 == pieces;
            let len = if last { bytes.len() as u32 - per * (pieces as u32 - 1) } else { per };
            (iova + (per * i as u32) as u64, len, if last { 0 } else { VRING_DESC_F_NEXT })
        })
        .collect();
    q.raw_tx().push_raw_chain(base, &descs, base).unwrap();
    q.raw_tx().publish();
    q.kick_tx().unwrap();
    f.next_tx = 11;
    // Nothing else is in flight, so the driver hands out none of these
    // descriptors before the device has returned the chain.
    assert!(f.drain(q, Duration::from_secs(5)), "the many-piece frame came back: {f:?}");
    // Ordinary frames after it still flow, in order.
    assert!(f.exchange(q, 50, Duration::from_secs(5)), "{f:?}");
    assert!(f.clean(), "the many-piece frame and its neighbours arrive whole and in order: {f:?}");
    let s = rig.stats().pairs[0];
    assert!(s.reflected > 0, "the direct path carried frames: {s:?}");
    assert_eq!(s.rx_frames, s.reflected, "the many-piece frame took the direct path too: {s:?}");
    assert_eq!((s.chain_overflow, s.tx_dropped), (0, 0), "{s:?}");
    drop(qs);
    drop(d);
    rig.finish();
}

/// The reflector publishes RX before TX and leaves the interrupt
/// decisions to the poll thread, which makes them for both queues with one
/// fence (`burst` module docs): each queue is interrupted when its driver
/// asked and is waiting, never for the other queue, and a polling driver
/// never. (A driver that takes the entry back before the decision moves
/// its event on and rightly gets none, so each frame is awaited before it
/// is taken back.)
fn reflected_frames_interrupt_only_the_queue_that_asked(fmt: RingFormat) {
    let t = Duration::from_secs(5);
    let rig = Rig::new_fmt("e2e-irq", 1, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut qs = d.take_pairs();
    let q = &mut qs[0];
    let (rx, tx) = (q.rx_vq(), q.tx_vq());
    let irqs = || (rig.t.irq_count(rx), rig.t.irq_count(tx));
    let mut f = Flow::new(0);
    // Polled (the driver's default): no interrupt at all.
    let (rx0, tx0) = irqs();
    assert!(f.exchange(q, 20, t));
    assert!(f.drain(q, t));
    assert_eq!(irqs(), (rx0, tx0), "a polling driver was interrupted");
    // RX interrupts on: each frame delivered interrupts RX once.
    assert!(!q.raw_rx().enable_interrupts(), "nothing pending");
    for i in 1..=10 {
        assert_eq!(f.send(q, 1), 1);
        assert!(wait_for(t, || irqs().0 >= rx0 + i), "frame {i}: {:?}", irqs());
        assert!(f.drain(q, t), "frame {i} came back");
        assert_eq!(irqs().0, rx0 + i, "frame {i}: one interrupt");
    }
    assert_eq!(irqs().1, tx0, "TX asked for nothing");
    q.raw_rx().disable_interrupts();
    // TX interrupts on instead: each completion interrupts TX only.
    assert!(!q.raw_tx().enable_interrupts(), "nothing pending");
    for i in 1..=10 {
        assert_eq!(f.send(q, 1), 1);
        assert!(wait_for(t, || irqs().1 >= tx0 + i), "frame {i}: {:?}", irqs());
        assert!(f.drain(q, t), "frame {i} came back");
        assert_eq!(irqs().1, tx0 + i, "frame {i}: one interrupt");
    }
    assert_eq!(irqs().0, rx0 + 10, "RX asked for nothing more");
    assert!(f.clean(), "{f:?}");
    let s = rig.stats().pairs[0];
    assert_eq!(s.rx_frames, s.reflected, "every frame took the reflector's path: {s:?}");
    assert_eq!(s.irqs, 20, "{s:?}");
    drop(qs);
    drop(d);
    rig.finish();
}

/// The reflector copies chains of one buffer on both sides straight from
/// buffer to buffer and walks every other shape (`reflect` module docs).
/// Each way a frame can go: RX buffers too small for it (counted, the
/// frame is lost and nothing else), one RX buffer left and not read ahead
/// (a TX buffer into a walked RX chain), frames shorter than the header
/// and filter prefix in single TX buffers (walked; one too short for an
/// Ethernet header is filtered), and ordinary ones around them.
fn every_chain_shape_takes_its_path(fmt: RingFormat) {
    use vduse_net::bench::frame::{self, Check};

    let t = Duration::from_secs(5);
    let rig = Rig::new_fmt("e2e-shapes", 1, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut qs = d.take_pairs();
    let q = &mut qs[0];
    let hl = q.hdr_len();
    let size = q.ring_size();
    let stats = || rig.stats().pairs[0];

    // 1. RX buffers of 64 bytes from now on; a lap of small frames
    // replaces every posted buffer with one.
    q.set_rx_buffer_len(hl + 64);
    let mut f = Flow::new(0);
    f.sizes = vec![40];
    assert!(f.exchange(q, size as u64 + 10, t), "{f:?}");
    // Two frames too long for them: dropped and counted, and only they.
    let before = stats();
    f.sizes = vec![100];
    assert_eq!(f.send(q, 2), 2);
    assert!(wait_for(t, || stats().rx_dropped_small == before.rx_dropped_small + 2), "{:?}", stats());
    f.sizes = vec![40];
    assert!(f.exchange(q, 10, t), "{f:?}");
    assert_eq!((f.lost, f.corrupt, f.dup_or_reordered), (2, 0, 0), "{f:?}");

    // 2. One RX buffer left: take every used RX entry but one without
    // reposting, then send three frames at once. The TX buffers are read
    // ahead, the one RX buffer is not (one chain is never read ahead): the
    // first frame goes from its TX buffer into the walked RX chain, the
    // other two wait for buffers.
    let fill = size as usize - 1;
    let (mut sent, mut taken) = (0, 0);
    let end = Instant::now() + t;
    while taken < fill {
        assert!(Instant::now() < end, "the device used {taken} RX buffers");
        if sent < fill {
            sent += f.send(q, (fill - sent).min(32));
        }
        while let Ok(Some(_)) = q.raw_rx().pop_used() {
            taken += 1;
        }
    }
    assert_eq!(taken, fill, "no more than the frames sent");
    let before = stats();
    let seq = f.next_tx;
    q.reclaim_tx();
    assert_eq!(f.send(q, 3), 3);
    let got = (|| {
        let end = Instant::now() + t;
        loop {
            if let Ok(Some(u)) = q.raw_rx().pop_used() {
                return u;
            }
            assert!(Instant::now() < end, "the frame for the last RX buffer came back");
            std::thread::yield_now();
        }
    })();
    let (slot, len) = (got.0 as u16, got.1 as usize);
    let mut buf = vec![0u8; len];
    q.memory().read(q.rx_slot_offset(slot), &mut buf);
    match frame::check(&buf[hl..]) {
        Check::Ok { seq: s, pair: 0 } => assert_eq!(s, seq, "the first of the three"),
        other => panic!("the frame in the walked RX chain: {other:?}"),
    }
    assert_eq!((&buf[hl..hl + 6], &buf[hl + 6..hl + 12]), (&DEV_MAC[..], &PEER_MAC[..]), "MACs swapped");
    assert!(wait_for(t, || stats().reflected == before.reflected + 1), "{:?}", stats());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(stats().reflected, before.reflected + 1, "the other two wait for RX buffers");
    drop(qs);
    drop(d);
    let s = rig.finish().pairs[0];
    assert_eq!((s.queue_errors, s.tx_dropped, s.chain_overflow), (0, 0, 0), "{s:?}");
}

/// Frames shorter than the header and the filter's prefix, in single TX
/// buffers read ahead with an ordinary frame: walked, each delivered whole
/// with its MACs swapped, one too short for an Ethernet header filtered.
fn frames_shorter_than_the_prefix_come_back_whole(fmt: RingFormat) {
    let t = Duration::from_secs(5);
    let rig = Rig::new_fmt("e2e-short", 1, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut qs = d.take_pairs();
    let q = &mut qs[0];
    let hl = q.hdr_len();
    let mut f = Flow::new(0);
    assert!(f.exchange(q, 10, t));
    // Every TX chain back, so the raw chains' buffer ids (packed) are free.
    q.reclaim_tx();
    assert_eq!(q.tx_free(), q.ring_size() as usize);
    let eth = |tail: &[u8]| [&PEER_MAC[..], &DEV_MAC[..], tail].concat();
    let frames: Vec<Vec<u8>> = vec![
        eth(&[0x08, 0x00]),                  // an Ethernet header alone (14)
        eth(&[0x88, 0xb5, 1, 2, 3]),         // 17: one short of the prefix
        vec![1, 2, 3, 4, 5],                 // no Ethernet header: filtered
        eth(&(0..46u8).collect::<Vec<_>>()), // an ordinary 58-byte frame
    ];
    let mem = q.memory().clone();
    let base = 40u16;
    for (i, fr) in frames.iter().enumerate() {
        let slot = q.ring_size() - 1 - i as u16;
        let mut bytes = vec![0u8; hl];
        bytes.extend_from_slice(fr);
        mem.write(q.tx_slot_offset(slot), &bytes);
        let (id, iova) = (base + i as u16, q.tx_slot_iova(slot));
        q.raw_tx().push_raw_chain(id, &[(iova, bytes.len() as u32, 0)], id).unwrap();
    }
    let before = rig.stats().pairs[0];
    q.raw_tx().publish();
    q.kick_tx().unwrap();
    let mut got = Vec::new();
    let end = Instant::now() + t;
    while got.len() < 3 && Instant::now() < end {
        q.post_rx();
        q.rx_burst(&mut |fr| got.push(fr.to_vec()), 8);
    }
    let swapped = |fr: &[u8]| [&fr[6..12], &fr[..6], &fr[12..]].concat();
    assert_eq!(got, vec![swapped(&frames[0]), swapped(&frames[1]), swapped(&frames[3])]);
    let s = rig.stats().pairs[0];
    assert_eq!(s.reflected - before.reflected, 3, "{s:?}");
    assert_eq!(s.rx_filtered - before.rx_filtered, 1, "{s:?}");
    drop(qs);
    drop(d);
    let s = rig.finish().pairs[0];
    assert_eq!((s.queue_errors, s.tx_dropped, s.chain_overflow), (0, 0, 0), "{s:?}");
}

both_formats!(
    a_million_mixed_frames_through_two_pairs,
    an_idle_device_wakes_on_each_kick,
    frames_in_many_pieces_come_back_whole_and_in_order,
    reflected_frames_interrupt_only_the_queue_that_asked,
    every_chain_shape_takes_its_path,
    frames_shorter_than_the_prefix_come_back_whole,
);
