//! Device-side ring tests over real shared memory: a memfd-backed address
//! space (as `IOTLB_GET_FD2` hands regions out) with the bundled driver's
//! ring on one side and [`SplitQueue`] on the other.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::driver::ring::DriverQueue;
use crate::driver::DmaMemory;
use crate::mem::testing::MemfdSource;
use crate::mem::Iotlb;
use crate::uapi::vduse::VDUSE_ACCESS_RW;
use crate::uapi::virtio::VringDesc;

const IOVA: u64 = 0x10_0000;
/// Buffers start here in the test memory (after the ring).
const BUF: usize = 0x8000;
const MEM: usize = 0x2_0000;

struct Rig {
    /// Keeps the regions alive for the rig's life.
    _src: Arc<MemfdSource>,
    iotlb: Iotlb,
    mem: Arc<DmaMemory>,
    drv: DriverQueue,
    dev: SplitQueue,
}

fn rig(size: u16) -> Rig {
    let src = Arc::new(MemfdSource::default());
    let mem = Arc::new(DmaMemory::new("virtq-test", MEM).unwrap());
    src.add(0, IOVA, &mem, 0, MEM as u64, VDUSE_ACCESS_RW);
    let iotlb = Iotlb::new(1, src.clone());
    let drv = DriverQueue::new(mem.clone(), 0, IOVA, size, false).unwrap();
    let dev = SplitQueue::new(QueueConfig {
        index: 0,
        size,
        desc_addr: drv.desc_iova(),
        avail_addr: drv.avail_iova(),
        used_addr: drv.used_iova(),
        avail_base: 0,
        event_idx: false,
        indirect: true,
    });
    Rig { _src: src, iotlb, mem, drv, dev }
}

fn buf(i: usize) -> u64 {
    IOVA + (BUF + 256 * i) as u64
}

/// Regression (issue 8 fix 2): `map_rings` translated the three rings one
/// after the other and tagged them with the id of the table current at the
/// end. A region invalidated in between (here: by the slow path while the
/// avail ring's miss is being resolved) left the descriptor pointer cached
/// against a table that no longer maps it. Now all three come from one
/// table whose id is recorded; here the descriptor region is gone, so the
/// mapping fails instead of keeping a dangling pointer.
#[test]
fn ring_pointers_are_tagged_with_the_table_that_maps_them() {
    let src = Arc::new(MemfdSource::default());
    let mem = Arc::new(DmaMemory::new("virtq-map", 3 * 4096).unwrap());
    // desc, avail and used in three separate regions.
    src.add(0, 0x1000, &mem, 0, 4096, VDUSE_ACCESS_RW);
    src.add(0, 0x2000, &mem, 4096, 4096, VDUSE_ACCESS_RW);
    src.add(0, 0x3000, &mem, 8192, 4096, VDUSE_ACCESS_RW);
    let iotlb = Arc::new(Iotlb::new(1, src.clone()));
    let space = iotlb.space(0).unwrap().clone();
    let mut q = SplitQueue::new(QueueConfig {
        index: 0,
        size: 16,
        desc_addr: 0x1000,
        avail_addr: 0x2000,
        used_addr: 0x3000,
        avail_base: 0,
        event_idx: false,
        indirect: false,
    });
    let mut reader = iotlb.qsbr().register();
    {
        // Only the descriptor region is mapped at first.
        let g = reader.read();
        space.translate(&g, 0x1000, 1, crate::mem::Access::Read).unwrap();
    }
    reader.quiescent();
    // While the avail ring's miss is resolved, the driver drops the
    // descriptor region (UPDATE_IOTLB on the slow path).
    let (s2, src2) = (space.clone(), src.clone());
    let once = std::sync::atomic::AtomicBool::new(true);
    src.set_hook(move |_, iova| {
        if iova == 0x2000 && once.swap(false, std::sync::atomic::Ordering::SeqCst) {
            src2.remove(0, 0x1000, 0x1fff);
            // The grace period cannot end while this reader is inside; the
            // old table is kept for a later reclaim.
            let _ = s2.invalidate(0x1000, 0x1fff);
        }
    });
    let g = reader.read();
    let r = q.refresh(&space, &g);
    src.clear_hook();
    // Whatever refresh returned, a cached pointer must be backed by the
    // current table: the descriptor ring must be mapped there.
    if r.is_ok() {
        assert!(
            space.load(&g).translate(0x1000, 16 * 16, crate::mem::Access::Read).is_ok(),
            "ring pointers cached against a table without the descriptor region"
        );
    } else {
        assert!(matches!(r, Err(QueueError::Xlate(crate::mem::XlateError::Unmapped { iova: 0x1000, .. }))), "{r:?}");
    }
    assert!(!q.is_mapped() || r.is_ok());
}

/// Regression (issue 8 fix 5): `walk_chain` took a bare `u16` and only
/// debug-asserted it; a head from a larger queue read past the descriptor
/// table. Now a [`Head`] only comes from `pop_head`, and the walk refuses
/// one that does not fit its own queue.
#[test]
fn a_head_from_a_larger_queue_is_refused_not_followed() {
    let mut big = rig(256);
    let small_cfg = QueueConfig { size: 16, ..*big.dev.config() };
    let mut small = SplitQueue::new(small_cfg);
    for i in 0..201u16 {
        big.drv.write_desc(i, VringDesc { addr: buf(0), len: 64, flags: 0, next: 0 }).unwrap();
    }
    for _ in 0..201 {
        big.drv.push_avail_raw(200);
    }
    big.drv.publish();
    let space = big.iotlb.space(0).unwrap().clone();
    let mut reader = big.iotlb.qsbr().register();
    let g = reader.read();
    big.dev.refresh(&space, &g).unwrap();
    small.refresh(&space, &g).unwrap();
    assert!(big.dev.pending().unwrap() > 0);
    let head = big.dev.pop_head().unwrap();
    assert_eq!(head.index(), 200);
    let r = small.read_chain(head, Direction::DeviceReads, &space, &g);
    assert!(matches!(r, Err(QueueError::Malformed(Malformed::HeadOutOfRange(200)))), "{:?}", r.err());
}

/// Chains keep their pieces in order; reading gathers, writing scatters,
/// totals count everything.
#[test]
fn chain_pieces_gather_and_scatter() {
    let mut r = rig(16);
    for i in 0..4 {
        r.mem.write(BUF + 256 * i, &[i as u8 + 1; 100]);
    }
    r.drv.add_chain(&[(buf(0), 10, false), (buf(1), 20, false), (buf(2), 30, true), (buf(3), 40, true)], 7).unwrap();
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    assert_eq!(r.dev.pending().unwrap(), 1);
    let head = r.dev.pop_head().unwrap();
    let c = r.dev.read_chain(head, Direction::Both, &space, &g).unwrap();
    assert_eq!((c.readable_len(), c.writable_len(), c.descriptors()), (30, 70, 4));
    assert_eq!((c.readable().len(), c.writable().len()), (2, 2));
    let mut out = [0u8; 40];
    let mut rd = c.reader();
    assert_eq!(rd.skip(5), 5);
    assert_eq!(rd.read(&mut out), 25, "stops at the end of the readable part");
    assert_eq!(&out[..5], &[1; 5]);
    assert_eq!(&out[5..25], &[2; 20]);
    let mut w = c.writer();
    assert_eq!(w.remaining(), 70);
    assert_eq!(w.write(&[9; 35]), 35);
    assert_eq!(w.written(), 35);
    let mut b = [0u8; 41];
    r.mem.read(BUF + 2 * 256, &mut b[..31]);
    assert_eq!(&b[..31], &[[9u8; 30].as_slice(), &[3]].concat()[..], "first writable buffer filled, no further");
    r.mem.read(BUF + 3 * 256, &mut b);
    assert_eq!(&b[..6], &[9, 9, 9, 9, 9, 4]);
    assert_eq!(c.read_at(28, &mut out[..4]), 2);
    assert_eq!(c.write_at(69, &[5, 5]), 1);
}

/// Regression (issue 8 fix 4): a TX buffer and an RX buffer the driver
/// points at overlapping memory. The chain-to-chain copy is a memmove: the
/// result is what a copy through a bounce buffer gives. (The old code used
/// `copy_nonoverlapping` here: undefined behaviour, and a failed debug
/// precondition check in debug builds.)
#[test]
fn chain_to_chain_copy_is_overlap_safe() {
    let mut r = rig(16);
    let pattern: Vec<u8> = (0..200u8).collect();
    r.mem.write(BUF, &pattern);
    // Source: bytes [0, 150); destination: bytes [7, 157) of the same memory.
    r.drv.add_chain(&[(buf(0), 150, false)], 1).unwrap();
    r.drv.add_chain(&[(buf(0) + 7, 150, true)], 2).unwrap();
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let h1 = r.dev.pop_head().unwrap();
    let src = r.dev.read_chain(h1, Direction::DeviceReads, &space, &g).unwrap();
    let h2 = r.dev.pop_head().unwrap();
    let dst = r.dev.read_chain(h2, Direction::DeviceWrites, &space, &g).unwrap();
    let mut w = dst.writer();
    assert_eq!(src.reader().copy_to(&mut w, 150), 150);
    let mut got = vec![0u8; 157];
    r.mem.read(BUF, &mut got);
    assert_eq!(&got[..7], &pattern[..7]);
    assert_eq!(&got[7..157], &pattern[..150], "memmove semantics");
}

/// A legal chain with more pieces than a chain keeps is read to its end
/// (validated) but marked incomplete; the ring stays usable.
#[test]
fn a_chain_with_too_many_pieces_is_marked_not_failed() {
    let mut r = rig(128);
    let segs: Vec<_> = (0..MAX_PIECES + 3).map(|i| (buf(i), 8u32, false)).collect();
    r.drv.add_chain(&segs, 1).unwrap();
    let wsegs: Vec<_> = (0..MAX_PIECES + 3).map(|i| (buf(i), 8u32, true)).collect();
    r.drv.add_chain(&wsegs, 2).unwrap();
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let h = r.dev.pop_head().unwrap();
    let c = r.dev.read_chain(h, Direction::DeviceReads, &space, &g).unwrap();
    assert!(!c.readable_complete());
    assert_eq!(c.readable().len(), MAX_READABLE_PIECES);
    assert_eq!(c.readable_len() as usize, 8 * (MAX_PIECES + 3));
    let h = r.dev.pop_head().unwrap();
    let c = r.dev.read_chain(h, Direction::DeviceWrites, &space, &g).unwrap();
    assert!(!c.writable_complete());
    assert_eq!(c.writable().len(), MAX_PIECES);
    assert_eq!(c.writer().remaining(), 8 * MAX_PIECES);
}

/// One step of a driver in the property test.
#[derive(Clone, Debug)]
enum Op {
    /// Add chains of these lengths (descriptors) and publish them.
    Add(Vec<u8>),
    /// The device processes up to n chains.
    Device(u8),
    /// The driver takes back what was used.
    Reclaim,
    /// A driver bug or attack: write a raw avail entry (any value) and publish.
    RawHead(u16),
    /// A driver bug or attack: jump avail.idx by this much.
    Jump(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(1u8..4, 1..6).prop_map(Op::Add),
        4 => (1u8..40).prop_map(Op::Device),
        2 => Just(Op::Reclaim),
        1 => any::<u16>().prop_map(Op::RawHead),
        1 => any::<u16>().prop_map(Op::Jump),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Ring invariants under any mix of driver steps, well-behaved or not:
    /// the device completes each chain it consumed exactly once (the
    /// driver's `pop_used` refuses an id that is not in flight), never
    /// holds more than the queue size in flight (`last_avail - used <=
    /// size`), and never consumes past what the driver published. A
    /// malformed ring is an error, never a panic; the device then stops
    /// the queue as the poll thread does.
    #[test]
    fn each_head_is_completed_once_and_in_flight_stays_bounded(ops in prop::collection::vec(op(), 1..60)) {
        let size = 16u16;
        let mut r = rig(size);
        let space = r.iotlb.space(0).unwrap().clone();
        let mut reader = r.iotlb.qsbr().register();
        let mut honest = true;
        let mut failed = false;
        for op in ops {
            match op {
                Op::Add(lens) => {
                    for (k, n) in lens.into_iter().enumerate() {
                        let segs: Vec<_> = (0..n as usize).map(|i| (buf(i + k), 16u32, false)).collect();
                        if r.drv.add_chain(&segs, k as u64).is_err() {
                            break;
                        }
                    }
                    r.drv.publish();
                }
                Op::RawHead(h) => {
                    honest = false;
                    r.drv.push_avail_raw(h);
                    r.drv.publish();
                }
                Op::Jump(j) => {
                    honest = false;
                    let idx = r.drv.avail_idx().wrapping_add(j);
                    r.drv.set_avail_idx_raw(idx);
                }
                Op::Reclaim => loop {
                    match r.drv.pop_used() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            prop_assert!(!honest, "honest driver got a bad used entry: {e}");
                            break;
                        }
                    }
                },
                Op::Device(n) if !failed => {
                    let g = reader.read();
                    let mut step = || -> Result<(), QueueError> {
                        r.dev.refresh(&space, &g)?;
                        let pending = r.dev.pending()?;
                        for _ in 0..(n as u16).min(pending) {
                            let head = r.dev.pop_head()?;
                            let c = r.dev.read_chain(head, Direction::DeviceReads, &space, &g)?;
                            r.dev.push_used(c.head(), 0);
                        }
                        Ok(())
                    };
                    if step().is_err() {
                        // The poll thread stops the queue here.
                        failed = true;
                    }
                    // Published once per burst, error or not (Burst::finish).
                    r.dev.publish_used();
                    drop(g);
                    reader.quiescent();
                }
                Op::Device(_) => {}
            }
            // Invariants after every step.
            let (la, used) = (r.dev.last_avail(), r.dev.used_idx());
            prop_assert!(la.wrapping_sub(used) <= size, "last_avail {} used {}", la, used);
            // Completed = consumed, except the one chain a failure stopped at.
            prop_assert!(la.wrapping_sub(used) <= failed as u16, "last_avail {} used {}", la, used);
            prop_assert_eq!(r.drv.used_idx(), used, "published once per burst");
            let avail = r.drv.avail_idx();
            if honest {
                prop_assert!(avail.wrapping_sub(la) <= size, "consumed past avail: avail {} last_avail {}", avail, la);
                prop_assert!(!failed, "an honest driver never breaks the queue");
            }
        }
    }
}
