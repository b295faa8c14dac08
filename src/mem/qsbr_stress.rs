//! Stress test of QSBR reclamation on real mappings: tables are swapped
//! (and the old mappings munmap'd) while reader threads run the poll
//! thread's pattern, including the adaptive-sleep path that goes from a
//! quiescent state straight into a new read-side section (`sleep()` ->
//! `refresh()`) and the offline/online round trip around a sleep. A reader
//! that followed a freed table would fault on the unmapped region or read
//! a wrong canary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::iotlb::{Access, Iotlb};
use super::testing::MemfdSource;
use crate::driver::DmaMemory;
use crate::uapi::vduse::VDUSE_ACCESS_RW;

const BASE: u64 = 0x10_0000;
const CANARY: u64 = 0x5eed_cafe_f00d_beef;

#[test]
fn tables_swapped_under_readers_with_adaptive_sleep() {
    let src = Arc::new(MemfdSource::default());
    let mem = Arc::new(DmaMemory::new("qsbr-stress", 4096).unwrap());
    for i in 0..512 {
        mem.write(8 * i, &CANARY.to_le_bytes());
    }
    src.add(0, BASE, &mem, 0, 4096, VDUSE_ACCESS_RW);
    let iotlb = Arc::new(Iotlb::new(1, src.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|id| {
            let (iotlb, stop, reads, bad) = (iotlb.clone(), stop.clone(), reads.clone(), bad.clone());
            std::thread::spawn(move || {
                let space = iotlb.space(0).unwrap().clone();
                let mut r = iotlb.qsbr().register();
                let mut n = 0u64;
                let check = |r: &mut super::Reader, n: &mut u64| {
                    let g = r.read();
                    let at = BASE + 8 * (*n % 512);
                    match space.translate(&g, at, 8, Access::Read) {
                        Ok(p) => {
                            // SAFETY: translated for 8 readable bytes; the
                            // guard keeps the mapping alive (what this test
                            // checks).
                            if unsafe { std::ptr::read_volatile(p as *const u64) } != CANARY {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // A miss that lost a race with the next invalidation:
                        // refused, never followed.
                        Err(_) => {}
                    }
                    *n += 1;
                };
                while !stop.load(Ordering::Relaxed) {
                    // A burst, then the quiescent state between bursts.
                    check(&mut r, &mut n);
                    r.quiescent();
                    match n % 64 {
                        // The sleep path: re-enter right after quiescent().
                        k if k % 4 == id => {
                            check(&mut r, &mut n);
                            r.quiescent();
                        }
                        // Going to sleep: offline, block briefly, online.
                        63 => {
                            r.offline();
                            std::thread::sleep(Duration::from_micros(50));
                            r.online();
                        }
                        _ => {}
                    }
                }
                reads.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let space = iotlb.space(0).unwrap().clone();
    let end = Instant::now() + Duration::from_millis(1500);
    let mut swaps = 0u64;
    while Instant::now() < end {
        // Drop the mapping (new table, old one unmapped after a grace
        // period), then map it again (another new table).
        space.invalidate(0, u64::MAX).expect("readers pass quiescent states");
        space.resolve(BASE).unwrap();
        space.reclaim().expect("grace period");
        swaps += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in readers {
        t.join().expect("reader thread");
    }
    let unmaps = space.stats.unmaps.load(Ordering::Relaxed);
    assert!(swaps > 10 && unmaps >= swaps, "tables really swapped: {swaps} swaps, {unmaps} unmaps");
    assert!(reads.load(Ordering::Relaxed) > 1000, "readers ran: {}", reads.load(Ordering::Relaxed));
    assert_eq!(bad.load(Ordering::Relaxed), 0, "a reader saw a wrong or missing mapping");
}
