//! The end-to-end run: two queue pairs on the embedded kernel model with
//! MAC-swapping loopback ports, over a million numbered frames of mixed
//! sizes, every one checked: none lost, duplicated, reordered within its
//! queue, or corrupted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vduse_net::bench::pktgen::{run_pair, Sizes};
use vduse_net::driver::net::NetDriverConfig;

const FRAMES_PER_PAIR: u64 = 500_000;

#[test]
fn a_million_mixed_frames_through_two_pairs() {
    let rig = Rig::new("e2e0", 2);
    let mut d = rig.probe(NetDriverConfig { ring_size: 256, ..driver_config() });
    assert_eq!(d.pairs(), 2, "both pairs enabled through VQ_PAIRS_SET");
    let sizes = Sizes(vec![64, 1518, 65, 128, 570, 1514, 256, 1000, 511, 1499, 100, 1024, 777]);
    let start = Instant::now();
    let handles: Vec<_> = d
        .take_pairs()
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let sizes = sizes.clone();
            std::thread::spawn(move || run_pair(q, i as u16, FRAMES_PER_PAIR, &sizes, 32, Duration::from_secs(50)))
        })
        .collect();
    let reports: Vec<_> = handles.into_iter().map(|h| h.join().expect("generator thread")).collect();
    let secs = start.elapsed().as_secs_f64();
    let total: u64 = reports.iter().map(|r| r.rx_frames).sum();
    eprintln!("e2e: {total} frames in {secs:.2} s ({:.2} Mpps)", total as f64 / secs / 1e6);
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
