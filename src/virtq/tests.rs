//! Device-side ring tests over real shared memory: a memfd-backed address
//! space (as `IOTLB_GET_FD2` hands regions out) with the bundled driver's
//! ring on one side and [`SplitQueue`] on the other.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::driver::ring::{DriverQueue, RingError};
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
    rig_with(size, false)
}

/// A rig with VIRTIO_F_IN_ORDER negotiated on both sides, or not.
fn rig_with(size: u16, in_order: bool) -> Rig {
    let src = Arc::new(MemfdSource::default());
    let mem = Arc::new(DmaMemory::new("virtq-test", MEM).unwrap());
    src.add(0, IOVA, &mem, 0, MEM as u64, VDUSE_ACCESS_RW);
    let iotlb = Iotlb::new(1, src.clone());
    let mut drv = DriverQueue::new(mem.clone(), 0, IOVA, size, false).unwrap();
    drv.set_in_order(in_order);
    let dev = SplitQueue::new(QueueConfig {
        index: 0,
        size,
        desc_addr: drv.desc_iova(),
        avail_addr: drv.avail_iova(),
        used_addr: drv.used_iova(),
        avail_base: 0,
        event_idx: false,
        indirect: true,
        format: RingFormat::Split,
        in_order,
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
        format: RingFormat::Split,
        in_order: false,
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

/// `prefetch_next` is a hint: whatever the next avail entry holds (a good
/// chain, an out-of-range head, an indirect descriptor, an unmapped buffer,
/// nothing published yet) it consumes nothing, and the pops that follow see
/// exactly what they would have seen without it.
#[test]
fn prefetch_next_consumes_nothing_and_changes_no_outcome() {
    let mut r = rig(16);
    r.drv.write_desc(0, VringDesc { addr: buf(0), len: 100, flags: 0, next: 0 }).unwrap();
    r.drv
        .write_desc(1, VringDesc { addr: buf(1), len: 32, flags: crate::uapi::virtio::VRING_DESC_F_INDIRECT, next: 0 })
        .unwrap();
    r.drv.write_desc(2, VringDesc { addr: 0x7000_0000, len: 64, flags: 0, next: 0 }).unwrap();
    for head in [0u16, 1, 2, 40] {
        r.drv.push_avail_raw(head);
    }
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    // Nothing published: nothing read.
    r.dev.prefetch_next(&space, &g);
    assert_eq!(r.dev.pending().unwrap(), 0);
    r.drv.publish();
    assert_eq!(r.dev.pending().unwrap(), 4);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let before = r.dev.last_avail();
        r.dev.prefetch_next(&space, &g);
        r.dev.prefetch_next(&space, &g);
        assert_eq!(r.dev.last_avail(), before, "prefetch consumed an entry");
        let out =
            r.dev.pop_head().map(|h| r.dev.read_chain(h, Direction::DeviceReads, &space, &g).map(|c| c.readable_len()));
        seen.push(format!("{out:?}"));
    }
    assert_eq!(seen[0], "Ok(Ok(100))");
    // The indirect table at buf(1) holds zeroed descriptors: a zero-length
    // buffer is legal, so the chain is empty.
    assert_eq!(seen[1], "Ok(Ok(0))");
    assert!(seen[2].starts_with("Ok(Err("), "{}", seen[2]);
    assert!(seen[3].contains("HeadOutOfRange(40)"), "{}", seen[3]);
    // A refused head is not consumed (the queue fails there), prefetched
    // or not.
    assert_eq!(r.dev.pending().unwrap(), 1);
}

/// An RX walk that wants `n` writable bytes stops translating once it has
/// them: a chain whose third buffer is unmapped holds a 100-byte frame in
/// its first two and is taken; a walk that needs the third (or the whole
/// chain, the default) refuses it. The want is for one walk only.
#[test]
fn a_walk_that_wants_n_bytes_stops_at_them_split() {
    use crate::uapi::virtio::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
    let mut r = rig(16);
    let chain = |r: &mut Rig, first: u16| {
        r.drv.write_desc(first, VringDesc { addr: buf(0), len: 64, flags: WRITE | NEXT, next: first + 1 }).unwrap();
        r.drv.write_desc(first + 1, VringDesc { addr: buf(1), len: 64, flags: WRITE | NEXT, next: first + 2 }).unwrap();
        r.drv
            .write_desc(first + 2, VringDesc { addr: 0x7000_0000, len: 64, flags: WRITE | NEXT, next: first + 3 })
            .unwrap();
        r.drv.write_desc(first + 3, VringDesc { addr: buf(2), len: 64, flags: WRITE, next: 0 }).unwrap();
        r.drv.push_avail_raw(first);
    };
    chain(&mut r, 0);
    chain(&mut r, 4);
    chain(&mut r, 8);
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let mut c = Chain::empty();
    c.want_writable(100);
    let h = r.dev.pop_head().unwrap();
    r.dev.read_chain_into(&mut c, h, Direction::DeviceWrites, &space, &g).unwrap();
    assert_eq!((c.writable_len(), c.descriptors(), c.head().index()), (128, 2, 0));
    assert_eq!(c.writer().write(&[9u8; 100]), 100);
    // 129 bytes need the unmapped third buffer.
    c.want_writable(129);
    let h = r.dev.pop_head().unwrap();
    let e = r.dev.read_chain_into(&mut c, h, Direction::DeviceWrites, &space, &g).unwrap_err();
    assert!(matches!(e, QueueError::Xlate(_)), "{e:?}");
    // The want was used up: the next walk reads the whole chain.
    let h = r.dev.pop_head().unwrap();
    assert!(r.dev.read_chain_into(&mut c, h, Direction::DeviceWrites, &space, &g).is_err());
}

/// A loop is refused even when going round it would gather the bytes a
/// walk wants (found by the rx_steer fuzzer: a two-descriptor loop taken
/// for a 7 KiB frame, its pieces aliasing, the used length past the
/// chain's real 3.8 KiB).
#[test]
fn a_loop_is_refused_even_when_its_laps_would_hold_the_frame() {
    use crate::uapi::virtio::{VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE};
    let mut r = rig(16);
    r.drv.write_desc(0, VringDesc { addr: buf(0), len: 64, flags: WRITE | NEXT, next: 1 }).unwrap();
    r.drv.write_desc(1, VringDesc { addr: buf(1), len: 64, flags: WRITE | NEXT, next: 0 }).unwrap();
    r.drv.push_avail_raw(0);
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let mut c = Chain::empty();
    c.want_writable(200);
    let h = r.dev.pop_head().unwrap();
    let e = r.dev.read_chain_into(&mut c, h, Direction::DeviceWrites, &space, &g).unwrap_err();
    assert!(matches!(e, QueueError::Malformed(Malformed::ChainTooLong)), "{e:?}");
}

/// The packed ring's walk steps over the rest of a chain once the frame
/// fits (its slots are the chain's: the next chain starts after them) but
/// does not translate it.
#[test]
fn a_walk_that_wants_n_bytes_stops_at_them_packed() {
    let mut r = packed_rig(16, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let (w, n) = (VRING_DESC_F_WRITE, VRING_DESC_F_NEXT);
    r.drv.push_raw_chain(&[(buf(0), 64, w | n), (buf(1), 64, w | n), (0x7000_0000, 64, w | n), (buf(2), 64, w)], 3);
    r.drv.push_raw_chain(&[(buf(3), 64, w)], 5);
    r.drv.publish();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let mut c = Chain::empty();
    c.want_writable(100);
    r.dev.pop_chain_into(&mut c, Direction::DeviceWrites, &space, &g).unwrap();
    assert_eq!((c.writable_len(), c.head().index(), c.head().slots()), (128, 3, 4));
    let d = r.dev.pop_chain(Direction::DeviceWrites, &space, &g).unwrap();
    assert_eq!((d.writable_len(), d.head().index(), d.head().slots()), (64, 5, 1));
    // Without a want the same chain is refused at its unmapped buffer.
    let mut r = packed_rig(16, false);
    r.drv.push_raw_chain(&[(buf(0), 64, w | n), (buf(1), 64, w | n), (0x7000_0000, 64, w | n), (buf(2), 64, w)], 3);
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    assert!(r.dev.pop_chain(Direction::DeviceWrites, &space, &g).is_err());
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

/// The fixed-size fast paths take a copy only when the current piece holds
/// all of it, and then do what the piece-by-piece calls do.
#[test]
fn fixed_size_reads_and_writes_stay_inside_one_piece() {
    let mut r = rig(16);
    let pattern: Vec<u8> = (1..=100u8).collect();
    r.mem.write(BUF, &pattern);
    r.mem.write(BUF + 256, &[0u8; 64]);
    r.mem.write(BUF + 2 * 256, &[0u8; 64]);
    r.drv.add_chain(&[(buf(0), 20, false), (buf(1), 16, true), (buf(2), 30, true)], 3).unwrap();
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let head = r.dev.pop_head().unwrap();
    let c = r.dev.read_chain(head, Direction::Both, &space, &g).unwrap();
    let mut rd = c.reader();
    assert_eq!(rd.read_array::<12>(), Some(std::array::from_fn(|i| i as u8 + 1)));
    // 8 bytes left in the only readable piece: 9 do not fit, nothing consumed.
    assert_eq!(rd.read_array::<9>(), None);
    assert_eq!(rd.read_array::<8>(), Some(std::array::from_fn(|i| i as u8 + 13)));
    assert_eq!(rd.read_array::<1>(), None, "the readable part is used up");
    let mut w = c.writer();
    assert!(w.write_array(&[7u8; 10]));
    // 6 bytes left in the first writable piece: 7 do not fit, nothing written.
    assert!(!w.write_array(&[8u8; 7]));
    assert_eq!(w.written(), 10);
    assert!(w.write_array(&[8u8; 6]));
    assert!(w.write_array(&[9u8; 30]), "the second piece, whole");
    assert!(!w.write_array(&[1u8; 1]), "the writable part is used up");
    let mut b = [0u8; 32];
    r.mem.read(BUF + 256, &mut b[..17]);
    assert_eq!(&b[..17], &[[7u8; 10].as_slice(), &[8; 6], &[0]].concat()[..]);
    r.mem.read(BUF + 2 * 256, &mut b[..31]);
    assert_eq!(&b[..31], &[[9u8; 30].as_slice(), &[0]].concat()[..]);
}

/// A chain of one buffer taken from a read-ahead as it is ([`Single`]):
/// reads only from a device-readable buffer, writes only into a
/// device-writable one, each only inside the buffer; the head is the one
/// the walk gives; and a chain filled from it is the walked chain.
#[test]
fn single_buffers_copy_only_inside_and_only_their_way() {
    let mut r = rig(16);
    let pattern: Vec<u8> = (1..=100u8).collect();
    r.mem.write(BUF, &pattern);
    r.mem.write(BUF + 256, &[0u8; 64]);
    // Two of each kind: one chain alone is not read ahead.
    r.drv.add_chain(&[(buf(0), 40, false)], 1).unwrap();
    r.drv.add_chain(&[(buf(2), 10, false)], 2).unwrap();
    r.drv.add_chain(&[(buf(1), 32, true)], 3).unwrap();
    r.drv.add_chain(&[(buf(3), 8, true)], 4).unwrap();
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    assert_eq!(r.dev.pending().unwrap(), 4);
    let mut lb = chain::LookaheadBuf::default();
    let mut la = chain::Lookahead::new(&mut lb);
    r.dev.prewalk(&mut la, 4, Direction::DeviceReads, &space, &g);
    assert_eq!(la.len(), 2, "the read-ahead stops at the first writable chain");
    let t = r.dev.pop_prewalked(&mut la).expect("the first readable chain");
    assert!(r.dev.pop_prewalked(&mut la).is_some());
    assert!(r.dev.pop_prewalked(&mut la).is_none());
    let mut lb2 = chain::LookaheadBuf::default();
    let mut la = chain::Lookahead::new(&mut lb2);
    r.dev.prewalk(&mut la, 4, Direction::DeviceWrites, &space, &g);
    let w = r.dev.pop_prewalked(&mut la).expect("the first writable chain");
    assert_eq!((t.len(), w.len()), (40, 32));
    assert!(t.head().readable_only() && !w.head().readable_only());
    // Reads: a readable buffer that holds them.
    assert_eq!(t.read_array::<40>(), Some(std::array::from_fn(|i| i as u8 + 1)));
    assert_eq!(t.read_array::<41>(), None, "past the buffer");
    assert_eq!(w.read_array::<4>(), None, "a device-writable buffer is not read");
    // Writes: a writable buffer that has room.
    assert!(!t.write_array(&[9u8; 4]), "a device-readable buffer is not written");
    assert!(!w.write_array(&[9u8; 33]), "past the buffer");
    assert!(w.write_array(&[9u8; 4]));
    // Copies: readable to writable, the same offsets, inside both.
    assert!(!t.copy_to(&w, 30, 3), "past the writable buffer");
    assert!(!t.copy_to(&w, 38, 3), "past the readable buffer");
    assert!(!w.copy_to(&t, 4, 4), "the wrong way round");
    assert!(t.copy_to(&w, 4, 28));
    let mut got = [0u8; 33];
    r.mem.read(BUF + 256, &mut got);
    let want: Vec<u8> = [&[9u8; 4][..], &pattern[4..32], &[0]].concat();
    assert_eq!(&got[..], &want[..], "nothing outside the buffer changed");
    // A reader over it reads what a walked chain's reader reads.
    let mut rd = t.reader();
    assert_eq!(rd.remaining(), 40);
    let mut b = [0u8; 40];
    assert_eq!(rd.read(&mut b), 40);
    assert_eq!(&b[..], &pattern[..40]);
    assert_eq!(w.reader().remaining(), 0, "no reader over a writable buffer");
    // Filled into a chain: the walked chain.
    let mut c = Chain::empty();
    c.fill_single(&t);
    assert_eq!((c.readable_len(), c.writable_len(), c.head()), (40, 0, t.head()));
    c.fill_single(&w);
    assert_eq!((c.readable_len(), c.writable_len(), c.head()), (0, 32, w.head()));
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
    ///
    /// With IN_ORDER (`in_order`) runs of readable chains come back with
    /// one used entry, and every chain still comes back once with its
    /// length: 0 for a readable chain, the writable bytes for one with a
    /// writable buffer (the token says which).
    #[test]
    fn each_head_is_completed_once_and_in_flight_stays_bounded(ops in prop::collection::vec(op(), 1..60), in_order in any::<bool>()) {
        let size = 16u16;
        let mut r = rig_with(size, in_order);
        let space = r.iotlb.space(0).unwrap().clone();
        let mut reader = r.iotlb.qsbr().register();
        let mut honest = true;
        let mut failed = false;
        for op in ops {
            match op {
                Op::Add(lens) => {
                    for (k, n) in lens.into_iter().enumerate() {
                        // Chains of 3 end in a writable buffer: the token
                        // is the length the device reports for it.
                        let segs: Vec<_> = (0..n as usize).map(|i| (buf(i + k), 16u32, n == 3 && i == 2)).collect();
                        if r.drv.add_chain(&segs, if n == 3 { 16 } else { 0 }).is_err() {
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
                        Ok(Some((token, len))) => {
                            if honest {
                                prop_assert_eq!(len as u64, token, "the length of each chain");
                            }
                        }
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
                            let c = r.dev.read_chain(head, Direction::Both, &space, &g)?;
                            r.dev.push_used(c.head(), c.writable_len());
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

// ---- packed rings ----

use crate::driver::packed::PackedDriverQueue;
use crate::uapi::virtio::{
    PackedDesc, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE, VRING_PACKED_EVENT_FLAG_ENABLE,
};

struct PackedRig {
    _src: Arc<MemfdSource>,
    iotlb: Iotlb,
    mem: Arc<DmaMemory>,
    drv: PackedDriverQueue,
    dev: PackedQueue,
}

fn packed_cfg(drv: &PackedDriverQueue, event_idx: bool, indirect: bool) -> QueueConfig {
    packed_cfg_with(drv, event_idx, indirect, false)
}

fn packed_cfg_with(drv: &PackedDriverQueue, event_idx: bool, indirect: bool, in_order: bool) -> QueueConfig {
    QueueConfig {
        index: 0,
        size: drv.size(),
        desc_addr: drv.desc_iova(),
        avail_addr: drv.driver_area_iova(),
        used_addr: drv.device_area_iova(),
        avail_base: RingPos { idx: 0, wrap: true }.encode(),
        event_idx,
        indirect,
        format: RingFormat::Packed,
        in_order,
    }
}

fn packed_rig(size: u16, event_idx: bool) -> PackedRig {
    packed_rig_with(size, event_idx, false)
}

/// A packed rig with VIRTIO_F_IN_ORDER negotiated on both sides, or not.
fn packed_rig_with(size: u16, event_idx: bool, in_order: bool) -> PackedRig {
    let src = Arc::new(MemfdSource::default());
    let mem = Arc::new(DmaMemory::new("virtq-packed", MEM).unwrap());
    src.add(0, IOVA, &mem, 0, MEM as u64, VDUSE_ACCESS_RW);
    let iotlb = Iotlb::new(1, src.clone());
    let mut drv = PackedDriverQueue::new(mem.clone(), 0, IOVA, size, event_idx).unwrap();
    drv.set_in_order(in_order);
    let dev = PackedQueue::new(packed_cfg_with(&drv, event_idx, true, in_order));
    PackedRig { _src: src, iotlb, mem, drv, dev }
}

/// Slots from `from` to `to` going forward (at most one lap apart).
fn dist(from: RingPos, to: RingPos, size: u16) -> u32 {
    if from.wrap == to.wrap {
        (to.idx as i32 - from.idx as i32).rem_euclid(1 << 20) as u32
    } else {
        (size - from.idx + to.idx) as u32
    }
}

/// Chains of several pieces, both directions, over many laps; used
/// descriptors carry the id and length; gathering and scattering work as
/// for the split ring (the same `Chain`).
#[test]
fn packed_chains_round_trip_over_many_laps() {
    let mut r = packed_rig(8, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    for round in 0..40u64 {
        r.mem.write(BUF, &[round as u8; 30]);
        r.drv.add_chain(&[(buf(0), 10, false), (buf(0) + 10, 20, false), (buf(1), 40, true)], round).unwrap();
        r.drv.add_chain(&[(buf(2), 64, true)], 1000 + round).unwrap();
        r.drv.publish();
        let g = reader.read();
        r.dev.refresh(&space, &g).unwrap();
        assert_eq!(r.dev.pending().unwrap(), 2);
        let c = r.dev.pop_chain(Direction::Both, &space, &g).unwrap();
        assert_eq!((c.readable_len(), c.writable_len(), c.descriptors(), c.head().slots()), (30, 40, 3, 3));
        let mut got = [0u8; 30];
        assert_eq!(c.reader().read(&mut got), 30);
        assert_eq!(got, [round as u8; 30]);
        assert_eq!(c.writer().write(&[7; 25]), 25);
        let d = r.dev.pop_chain(Direction::DeviceWrites, &space, &g).unwrap();
        assert_eq!(d.head().slots(), 1);
        assert_eq!(r.dev.in_flight(), 4);
        // Completed out of order.
        r.dev.push_used(d.head(), 0);
        r.dev.push_used(c.head(), 25);
        r.dev.publish_used();
        reader.quiescent();
        assert_eq!(r.drv.pop_used().unwrap(), Some((1000 + round, 0)));
        assert_eq!(r.drv.pop_used().unwrap(), Some((round, 25)));
        assert_eq!(r.drv.pop_used().unwrap(), None);
        let mut w = [0u8; 26];
        r.mem.read(BUF + 256, &mut w);
        assert_eq!(&w[..25], &[7; 25]);
        assert_eq!(r.dev.avail_pos(), r.dev.used_pos());
        assert_eq!(r.dev.used_pos(), r.drv.used_pos());
    }
    // 40 rounds of 4 slots on a ring of 8: 20 laps.
    assert_eq!(r.dev.avail_pos(), RingPos { idx: 0, wrap: true });
}

/// The packed ring's `prefetch_next` is a hint too: nothing made available
/// yet, an indirect descriptor, an unmapped buffer: it
/// takes nothing, and the pops that follow see what they would without it.
#[test]
fn packed_prefetch_next_consumes_nothing_and_changes_no_outcome() {
    let mut r = packed_rig(8, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    r.drv.push_raw_chain(&[(buf(0), 100, 0)], 0);
    r.drv.push_raw_chain(&[(buf(1), 32, VRING_DESC_F_INDIRECT)], 1);
    r.drv.push_raw_chain(&[(0x7000_0000, 64, 0)], 2);
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    // Nothing made available: nothing read.
    r.dev.prefetch_next(&space, &g);
    assert_eq!(r.dev.pending().unwrap(), 0);
    r.drv.publish();
    assert_eq!(r.dev.pending_fresh().unwrap(), 3);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let before = r.dev.avail_pos();
        r.dev.prefetch_next(&space, &g);
        r.dev.prefetch_next(&space, &g);
        assert_eq!(r.dev.avail_pos(), before, "prefetch consumed a slot");
        let out = r.dev.pop_chain(Direction::DeviceReads, &space, &g).map(|c| c.readable_len());
        seen.push(format!("{out:?}"));
    }
    assert_eq!(seen[0], "Ok(100)");
    assert_eq!(seen[1], "Ok(0)");
    assert!(seen[2].contains("Unmapped"), "{}", seen[2]);
    // A refused chain is not taken (the queue fails there), prefetched or
    // not.
    assert_eq!(r.dev.pending().unwrap(), 1);
}

/// The batch's first used descriptor is stored last: until `publish_used`
/// the driver sees none of the batch, although the later ones are written.
#[test]
fn packed_batch_becomes_visible_at_once() {
    let mut r = packed_rig(8, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    for t in 0..3 {
        r.drv.add_chain(&[(buf(t), 16, false)], t as u64).unwrap();
    }
    r.drv.publish();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    for _ in 0..3 {
        let c = r.dev.pop_chain(Direction::DeviceReads, &space, &g).unwrap();
        r.dev.push_used(c.head(), 0);
    }
    assert!(!r.drv.used_ready(), "first used descriptor published early");
    assert_eq!(r.drv.pop_used().unwrap(), None);
    // The later two are already marked used in memory.
    let flags = |slot: usize| {
        let mut b = [0u8; 2];
        r.mem.read(16 * slot + 14, &mut b);
        u16::from_le_bytes(b)
    };
    assert!(packed::is_used(flags(1), true) && packed::is_used(flags(2), true));
    assert!(!packed::is_used(flags(0), true));
    r.dev.publish_used();
    for t in 0..3 {
        assert_eq!(r.drv.pop_used().unwrap(), Some((t, 0)));
    }
}

fn packed_error(r: &mut PackedRig, dir: Direction) -> QueueError {
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let before = (r.dev.avail_pos(), r.dev.in_flight());
    let e = r.dev.pop_chain(dir, &space, &g).err().expect("malformed chain accepted");
    assert_eq!((r.dev.avail_pos(), r.dev.in_flight()), before, "a refused chain takes nothing");
    e
}

/// The packed-only rules: a chain's tail with the wrong wrap bits, a buffer
/// id out of range, a head withdrawn after it was seen, a chain running
/// into slots the device holds; and the shared ones through the same
/// builder (indirect rules, direction).
#[test]
fn packed_walker_refuses_malformed_chains() {
    use Malformed::*;
    let err = |e: QueueError| match e {
        QueueError::Malformed(m) => m,
        other => panic!("{other:?}"),
    };
    // Tail marked for the other lap.
    let mut r = packed_rig(8, false);
    let bad = packed::avail_bits(false);
    r.drv.push_raw(&[
        PackedDesc { addr: buf(0), len: 8, id: 0, flags: VRING_DESC_F_NEXT | r.drv.avail_flags_at(0) },
        PackedDesc { addr: buf(1), len: 8, id: 0, flags: bad },
    ]);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), NotAvailable { slot: 1, flags: bad });

    // Buffer id out of range (in the last descriptor).
    let mut r = packed_rig(8, false);
    r.drv.push_raw_chain(&[(buf(0), 8, VRING_DESC_F_NEXT), (buf(1), 8, 0)], 8);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), BufferIdOutOfRange(8));

    // A chain of every slot and more: longer than the ring.
    let mut r = packed_rig(8, false);
    let all: Vec<_> = (0..8).map(|i| (buf(i), 8, VRING_DESC_F_NEXT)).collect();
    r.drv.push_raw_chain(&all, 1);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), ChainTooLong);

    // Direction and order rules, shared with the split walker.
    let mut r = packed_rig(8, false);
    r.drv.push_raw_chain(&[(buf(0), 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT), (buf(1), 8, 0)], 1);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::Both)), ReadableAfterWritable);
    let mut r = packed_rig(8, false);
    r.drv.push_raw_chain(&[(buf(0), 8, VRING_DESC_F_WRITE)], 1);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), UnexpectedWritable);

    // Indirect tables: the same rules as split.
    let table_at = |r: &PackedRig, entries: &[(u64, u32, u16)]| {
        for (i, &(addr, len, flags)) in entries.iter().enumerate() {
            let mut b = [0u8; 16];
            b[0..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[14..16].copy_from_slice(&flags.to_le_bytes());
            r.mem.write(BUF + 0x4000 + 16 * i, &b);
        }
        IOVA + (BUF + 0x4000) as u64
    };
    let mut r = packed_rig(8, false);
    let t = table_at(&r, &[(buf(0), 8, 0), (buf(1), 16, VRING_DESC_F_INDIRECT)]);
    r.drv.push_raw_chain(&[(t, 32, VRING_DESC_F_INDIRECT)], 2);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), NestedIndirect);
    let mut r = packed_rig(8, false);
    let t = table_at(&r, &[(buf(0), 8, 0)]);
    r.drv.push_raw_chain(&[(t, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT), (buf(1), 8, 0)], 2);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), IndirectWithNext);
    let mut r = packed_rig(8, false);
    r.drv.push_raw_chain(&[(t, 24, VRING_DESC_F_INDIRECT)], 2);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), BadIndirectLen(24));
    let mut r = packed_rig(8, false);
    r.dev = PackedQueue::new(packed_cfg(&r.drv, false, false));
    r.drv.push_raw_chain(&[(t, 16, VRING_DESC_F_INDIRECT)], 2);
    r.drv.publish();
    assert_eq!(err(packed_error(&mut r, Direction::DeviceReads)), IndirectNotNegotiated);

    // A valid indirect chain: entries in order, NEXT ignored, WRITE counts.
    let mut r = packed_rig(8, false);
    let t = table_at(&r, &[(buf(0), 8, VRING_DESC_F_NEXT), (buf(1), 12, 0), (buf(2), 20, VRING_DESC_F_WRITE)]);
    r.drv.push_raw_chain(&[(t, 48, VRING_DESC_F_INDIRECT)], 3);
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let c = r.dev.pop_chain(Direction::Both, &space, &g).unwrap();
    assert_eq!((c.readable_len(), c.writable_len(), c.descriptors()), (20, 20, 4));
    assert_eq!((c.head().index(), c.head().slots()), (3, 1));

    // A head that was available at the scan and is gone at the walk.
    let mut r = packed_rig(8, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    r.drv.push_raw_chain(&[(buf(0), 8, 0)], 0);
    r.drv.publish();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    assert_eq!(r.dev.pending().unwrap(), 1);
    r.mem.write(14, &0u16.to_le_bytes());
    assert_eq!(err(r.dev.pop_chain(Direction::DeviceReads, &space, &g).err().unwrap()), Withdrawn(0));
}

/// A start position outside the ring, or misaligned areas, fail the first
/// refresh instead of indexing out of the ring.
#[test]
fn packed_positions_and_areas_are_checked() {
    let r = packed_rig(8, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    let mut q = PackedQueue::new(QueueConfig { avail_base: 0x8008, ..packed_cfg(&r.drv, false, true) });
    assert_eq!(q.refresh(&space, &g), Err(Malformed::BadRingPosition(0x8008).into()));
    let mut q =
        PackedQueue::new(QueueConfig { avail_addr: r.drv.driver_area_iova() + 2, ..packed_cfg(&r.drv, false, true) });
    assert!(matches!(q.refresh(&space, &g), Err(QueueError::Malformed(Malformed::MisalignedRing(_)))));
    let mut q = PackedQueue::new(QueueConfig { desc_addr: r.drv.desc_iova() + 8, ..packed_cfg(&r.drv, false, true) });
    assert!(matches!(q.refresh(&space, &g), Err(QueueError::Malformed(Malformed::MisalignedRing(_)))));
    // A restored position mid-ring: the device starts there.
    let mut q = PackedQueue::new(QueueConfig { avail_base: 0x0005, ..packed_cfg(&r.drv, false, true) });
    q.refresh(&space, &g).unwrap();
    assert_eq!((q.avail_pos(), q.used_pos()), (RingPos { idx: 5, wrap: false }, RingPos { idx: 5, wrap: false }));
}

/// Event suppression both ways: the device's kick suppression as the
/// driver reads it, and the interrupt decision from the driver's area,
/// with and without EVENT_IDX, across a wrap.
#[test]
fn packed_event_suppression_both_ways() {
    for event_idx in [false, true] {
        let mut r = packed_rig(8, event_idx);
        let space = r.iotlb.space(0).unwrap().clone();
        let mut reader = r.iotlb.qsbr().register();
        let g = reader.read();
        r.dev.refresh(&space, &g).unwrap();
        // Polling: no kicks wanted.
        r.dev.disable_notifications();
        assert_eq!(r.drv.device_event().1, VRING_PACKED_EVENT_FLAG_DISABLE);
        r.drv.add_chain(&[(buf(0), 8, false)], 0).unwrap();
        r.drv.publish();
        assert!(!r.drv.needs_kick());
        // Re-enabled: work is already there, so the device must not sleep.
        assert!(r.dev.enable_notifications().unwrap());
        let want = if event_idx { (0x8000, VRING_PACKED_EVENT_FLAG_DESC) } else { (0, VRING_PACKED_EVENT_FLAG_ENABLE) };
        assert_eq!(r.drv.device_event(), want);
        let c = r.dev.pop_chain(Direction::DeviceReads, &space, &g).unwrap();
        assert!(!r.dev.enable_notifications().unwrap(), "nothing more");
        // The next chain (slot 1) is the one the device asked about.
        r.drv.add_chain(&[(buf(1), 8, false)], 1).unwrap();
        r.drv.publish();
        assert!(r.drv.needs_kick());

        // Interrupts: disabled by the driver -> none.
        r.drv.disable_interrupts();
        r.dev.push_used(c.head(), 0);
        assert!(!r.dev.publish_used());
        r.drv.pop_used().unwrap().unwrap();
        // Enabled -> one for the next completion.
        assert!(!r.drv.enable_interrupts());
        let c = r.dev.pop_chain(Direction::DeviceReads, &space, &g).unwrap();
        r.dev.push_used(c.head(), 0);
        assert!(r.dev.publish_used());
        if event_idx {
            // Taking it back moves the event on: a completion the driver has
            // not reached yet in its event... (the next one) interrupts, one
            // it was told about before does not repeat.
            r.drv.pop_used().unwrap().unwrap();
            assert_eq!(r.drv.driver_event(), (RingPos { idx: 2, wrap: true }.encode(), VRING_PACKED_EVENT_FLAG_DESC));
            // Stale event (slot 2) while the device runs past it twice: only
            // the first crossing interrupts.
            for t in 2..12u64 {
                r.drv.add_chain(&[(buf(0), 8, false)], t).unwrap();
                r.drv.publish();
                let c = r.dev.pop_chain(Direction::DeviceReads, &space, &g).unwrap();
                r.dev.push_used(c.head(), 0);
                let irq = r.dev.publish_used();
                assert_eq!(irq, t == 2, "completion {t}");
                // The driver does not take them back, except the ring must not fill.
                if t >= 8 {
                    assert!(r.drv.pop_used().unwrap().is_some());
                }
            }
        }
    }
}

/// One step of a driver (and the device) in the packed property test.
#[derive(Clone, Debug)]
enum POp {
    Add(Vec<u8>),
    Device(u8),
    Reclaim,
    /// A raw chain whose last descriptor names this buffer id.
    RawId(u16),
    /// A raw two-descriptor chain whose tail carries the other lap's bits.
    WrapMismatch,
    /// A raw chain of this many descriptors (maybe longer than the ring).
    RawLong(u8),
}

fn pop_strategy() -> impl Strategy<Value = POp> {
    prop_oneof![
        4 => prop::collection::vec(1u8..4, 1..6).prop_map(POp::Add),
        4 => (1u8..40).prop_map(POp::Device),
        2 => Just(POp::Reclaim),
        1 => any::<u16>().prop_map(POp::RawId),
        1 => Just(POp::WrapMismatch),
        1 => (1u8..40).prop_map(POp::RawLong),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Packed-ring invariants under any mix of driver steps, honest or not:
    /// every buffer id the device completes is one in flight, completed
    /// once (the driver's `pop_used` refuses anything else); the device
    /// never holds more than the ring (in flight <= size) and never reads
    /// past what the driver published; a malformed chain is an error, never
    /// a panic, and takes nothing.
    ///
    /// With IN_ORDER (`in_order`) runs of readable chains come back with
    /// one used descriptor; every chain still comes back once, with its
    /// length (the token).
    #[test]
    fn packed_ids_are_completed_once_and_in_flight_stays_bounded(ops in prop::collection::vec(pop_strategy(), 1..60), in_order in any::<bool>()) {
        let size = 16u16;
        let mut r = packed_rig_with(size, true, in_order);
        let space = r.iotlb.space(0).unwrap().clone();
        let mut reader = r.iotlb.qsbr().register();
        let mut honest = true;
        let mut failed = false;
        let mut completed = 0u32;
        for op in ops {
            match op {
                POp::Add(lens) => {
                    for (k, n) in lens.into_iter().enumerate() {
                        let segs: Vec<_> = (0..n as usize).map(|i| (buf(i + k), 16u32, n == 3 && i == 2)).collect();
                        if r.drv.add_chain(&segs, if n == 3 { 16 } else { 0 }).is_err() {
                            break;
                        }
                    }
                    r.drv.publish();
                }
                POp::RawId(id) if r.drv.num_free() >= 1 => {
                    honest = false;
                    r.drv.push_raw_chain(&[(buf(0), 16, 0)], id);
                    r.drv.publish();
                }
                POp::WrapMismatch if r.drv.num_free() >= 2 => {
                    honest = false;
                    let wrong = packed::avail_bits(!r.drv.avail_pos().wrap);
                    r.drv.push_raw(&[
                        PackedDesc { addr: buf(0), len: 16, id: 0, flags: VRING_DESC_F_NEXT | r.drv.avail_flags_at(0) },
                        PackedDesc { addr: buf(1), len: 16, id: 0, flags: wrong },
                    ]);
                    r.drv.publish();
                }
                POp::RawLong(n) if r.drv.num_free() as usize >= (n as usize).min(size as usize) => {
                    honest = false;
                    let descs: Vec<_> = (0..n as usize).map(|i| (buf(i % 8), 16u32, VRING_DESC_F_NEXT)).collect();
                    r.drv.push_raw_chain(&descs, 0);
                    r.drv.publish();
                }
                POp::RawId(_) | POp::WrapMismatch | POp::RawLong(_) => {}
                POp::Reclaim => loop {
                    match r.drv.pop_used() {
                        Ok(Some((token, len))) => {
                            if honest {
                                prop_assert_eq!(len as u64, token, "the length of each chain");
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            prop_assert!(!honest, "honest driver got a bad used descriptor: {e}");
                            break;
                        }
                    }
                },
                POp::Device(n) if !failed => {
                    let g = reader.read();
                    let mut step = || -> Result<(), QueueError> {
                        r.dev.refresh(&space, &g)?;
                        let pending = r.dev.pending()?;
                        for _ in 0..(n as u16).min(pending) {
                            let c = r.dev.pop_chain(Direction::Both, &space, &g)?;
                            assert_in_flight_bounded(r.dev.in_flight() <= size);
                            r.dev.push_used(c.head(), c.writable_len());
                            completed += 1;
                        }
                        Ok(())
                    };
                    if step().is_err() {
                        failed = true;
                    }
                    r.dev.publish_used();
                    reader.quiescent();
                }
                POp::Device(_) => {}
            }
            // Invariants after every step.
            prop_assert!(r.dev.in_flight() <= size);
            prop_assert_eq!(r.dev.in_flight(), 0, "the test device completes what it takes");
            // Once the queue failed the device reads nothing more, and a
            // dishonest driver's raw pushes may lap it: positions a ring
            // apart look alike, so the distance says nothing then.
            if !failed {
                let read_ahead = dist(r.dev.avail_pos(), r.drv.avail_pos(), size);
                prop_assert!(read_ahead <= size as u32, "device at {:?} read past the driver at {:?}", r.dev.avail_pos(), r.drv.avail_pos());
            }
            prop_assert_eq!(r.dev.used_pos(), r.dev.avail_pos(), "used follows avail");
            if honest {
                prop_assert!(!failed, "an honest driver never breaks the queue");
            }
        }
        // Everything the device completed, an honest driver takes back.
        if honest {
            let mut back = 0;
            while r.drv.pop_used().unwrap().is_some() {
                back += 1;
            }
            prop_assert_eq!(r.drv.used_count() as u32, completed % 65536, "each completion taken back once ({} now)", back);
        }
    }
}

/// `prop_assert!` inside a closure that returns `QueueError`: a plain assert.
fn assert_in_flight_bounded(ok: bool) {
    assert!(ok, "in flight above the ring size");
}

/// The packet paths refill one [`Chain`] per burst (`read_chain_into`):
/// nothing of a previous chain may leak into the next, whatever its shape
/// (an incomplete one, a failed walk), and a refilled chain equals a fresh
/// one of the same head.
#[test]
fn a_refilled_chain_keeps_nothing_of_the_previous_one() {
    let mut r = rig(128);
    // 1: more pieces than kept, readable then writable.
    let mut segs: Vec<_> = (0..MAX_PIECES + 3).map(|i| (buf(i), 8u32, false)).collect();
    segs.extend((0..4).map(|i| (buf(40 + i), 8u32, true)));
    r.drv.add_chain(&segs, 1).unwrap();
    // 2: a writable-only chain, rejected on a device-reads walk.
    r.drv.add_chain(&[(buf(50), 16, true)], 2).unwrap();
    // 3: one readable and one writable buffer.
    r.drv.add_chain(&[(buf(60), 12, false), (buf(61), 20, true)], 3).unwrap();
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let shape = |c: &Chain<'_>| {
        let ptrs = |ps: &[Piece]| ps.iter().map(|p| (p.as_ptr() as usize, p.len())).collect::<Vec<_>>();
        (
            c.head().index(),
            c.descriptors(),
            c.readable_len(),
            c.writable_len(),
            c.readable_complete(),
            c.writable_complete(),
            ptrs(c.readable()),
            ptrs(c.writable()),
        )
    };
    let mut reused = Chain::empty();
    let h1 = r.dev.pop_head().unwrap();
    r.dev.read_chain_into(&mut reused, h1, Direction::Both, &space, &g).unwrap();
    assert!(!reused.readable_complete());
    assert_eq!(shape(&reused), shape(&r.dev.read_chain(h1, Direction::Both, &space, &g).unwrap()));
    let h2 = r.dev.pop_head().unwrap();
    assert!(r.dev.read_chain_into(&mut reused, h2, Direction::DeviceReads, &space, &g).is_err());
    let h3 = r.dev.pop_head().unwrap();
    r.dev.read_chain_into(&mut reused, h3, Direction::Both, &space, &g).unwrap();
    let fresh = r.dev.read_chain(h3, Direction::Both, &space, &g).unwrap();
    assert_eq!(shape(&reused), shape(&fresh));
    assert_eq!((reused.readable().len(), reused.writable().len()), (1, 1));
    assert!(reused.readable_complete() && reused.writable_complete());
    assert_eq!((reused.readable_len(), reused.writable_len(), reused.descriptors()), (12, 20, 2));
}

/// MRG_RXBUF gives back chains it took for a frame that found too few
/// (`Ring::rewind`): the next pops return the same chains, the position
/// and the pending count are as before, over the ring's end on the packed
/// ring (wrap counter flipped back).
#[test]
fn rewound_chains_are_taken_again() {
    // Split.
    let mut r = rig(8);
    for i in 0..3 {
        r.drv.add_chain(&[(buf(i), 64, true)], i as u64).unwrap();
    }
    r.drv.publish();
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    assert_eq!(r.dev.pending().unwrap(), 3);
    let a = Ring::pop(&mut r.dev, Direction::DeviceWrites, &space, &g).unwrap().head();
    let b = Ring::pop(&mut r.dev, Direction::DeviceWrites, &space, &g).unwrap().head();
    Ring::rewind(&mut r.dev, &[a, b]);
    assert_eq!((r.dev.pending().unwrap(), r.dev.last_avail()), (3, 0));
    assert_eq!(Ring::pop(&mut r.dev, Direction::DeviceWrites, &space, &g).unwrap().head().index(), a.index());
    assert_eq!(Ring::pop(&mut r.dev, Direction::DeviceWrites, &space, &g).unwrap().head().index(), b.index());
    drop(g);

    // Packed, across the end of a 4-slot ring: chains of 2 slots each.
    let mut r = packed_rig(4, false);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    // One lap of 3 slots used and returned, so the next chains straddle the end.
    r.drv.add_chain(&[(buf(0), 8, true), (buf(1), 8, true), (buf(2), 8, true)], 9).unwrap();
    r.drv.publish();
    {
        let g = reader.read();
        r.dev.refresh(&space, &g).unwrap();
        let c = r.dev.pop_chain(Direction::DeviceWrites, &space, &g).unwrap();
        r.dev.push_used(c.head(), 0);
        r.dev.publish_used();
    }
    reader.quiescent();
    assert_eq!(r.drv.pop_used().unwrap(), Some((9, 0)));
    r.drv.add_chain(&[(buf(3), 8, true), (buf(4), 8, true)], 1).unwrap();
    r.drv.publish();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    let before = (r.dev.avail_pos(), r.dev.in_flight(), r.dev.pending().unwrap());
    let c = r.dev.pop_chain(Direction::DeviceWrites, &space, &g).unwrap();
    assert_eq!(c.head().slots(), 2);
    assert_ne!(r.dev.avail_pos().wrap, before.0.wrap, "the chain crossed the ring's end");
    Ring::rewind(&mut r.dev, &[c.head()]);
    assert_eq!((r.dev.avail_pos(), r.dev.in_flight(), r.dev.pending().unwrap()), before);
    let again = r.dev.pop_chain(Direction::DeviceWrites, &space, &g).unwrap();
    assert_eq!((again.head().index(), again.writable_len()), (c.head().index(), 16));
}

// ---- VIRTIO_F_IN_ORDER: one used entry per run of readable chains ----

/// The used element at free-running index `i` of a split rig: (id, len).
fn split_used_elem(r: &Rig, i: u16) -> (u32, u32) {
    let at = r.drv.layout().used + 4 + 8 * (i % r.drv.size()) as usize;
    let mut b = [0u8; 8];
    r.mem.read(at, &mut b);
    (u32::from_le_bytes(b[..4].try_into().unwrap()), u32::from_le_bytes(b[4..].try_into().unwrap()))
}

/// Write a used element and used.idx as a (hostile) device would.
fn split_write_used(r: &Rig, i: u16, id: u32, len: u32, used_idx: u16) {
    let at = r.drv.layout().used + 4 + 8 * (i % r.drv.size()) as usize;
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&id.to_le_bytes());
    b[4..].copy_from_slice(&len.to_le_bytes());
    r.mem.write(at, &b);
    r.mem.write(r.drv.layout().used + 2, &used_idx.to_le_bytes());
}

/// Split ring: TX-like (readable) chains are returned with one used entry
/// per run, at the run's first slot, naming its last chain; a chain with a
/// writable buffer ends the run and keeps its own entry and length; the
/// driver side takes every chain back once, in order, with its length.
#[test]
fn in_order_split_returns_a_run_of_readable_chains_with_one_entry() {
    let mut r = rig_with(16, true);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    // Poison the used ring: slots the device skips keep this.
    for i in 0..16 {
        split_write_used(&r, i, 0xdead, 0xbeef, 0);
    }
    // r0 r1 w2 r3 r4: two runs around a writable chain.
    let mut heads = Vec::new();
    for t in 0..5u64 {
        let writable = t == 2;
        heads.push(r.drv.add_chain(&[(buf(t as usize), 32, writable)], t).unwrap());
    }
    r.drv.publish();
    let g = reader.read();
    r.dev.refresh(&space, &g).unwrap();
    for t in 0..5 {
        let c = r.dev.pop(Direction::Both, &space, &g).unwrap();
        assert_eq!(c.head().readable_only(), t != 2);
        r.dev.push_used(c.head(), if t == 2 { 20 } else { 0 });
    }
    assert_eq!(r.dev.used_idx(), 5, "the used index counts every chain");
    // Nothing visible before the publish; the first run's entry was written
    // when the writable chain ended it.
    assert_eq!(r.drv.used_idx(), 0);
    r.dev.publish_used();
    assert_eq!(r.drv.used_idx(), 5);
    assert_eq!(split_used_elem(&r, 0), (heads[1] as u32, 0), "run r0 r1: one entry naming r1");
    assert_eq!(split_used_elem(&r, 1), (0xdead, 0xbeef), "skipped slot untouched");
    assert_eq!(split_used_elem(&r, 2), (heads[2] as u32, 20), "the writable chain keeps its entry");
    assert_eq!(split_used_elem(&r, 3), (heads[4] as u32, 0), "run r3 r4, written at publish");
    assert_eq!(split_used_elem(&r, 4), (0xdead, 0xbeef));
    reader.quiescent();
    let back: Vec<_> = std::iter::from_fn(|| r.drv.pop_used().unwrap()).collect();
    assert_eq!(back, vec![(0, 0), (1, 0), (2, 20), (3, 0), (4, 0)]);
    assert_eq!(r.drv.num_free(), 16);
    assert_eq!(r.drv.last_used(), 5);

    // Without IN_ORDER the same device writes one entry per chain.
    let mut r = rig_with(16, false);
    r.drv.add_chain(&[(buf(0), 32, false)], 0).unwrap();
    r.drv.add_chain(&[(buf(1), 32, false)], 1).unwrap();
    r.drv.publish();
    let g = reader.read();
    let space = r.iotlb.space(0).unwrap().clone();
    r.dev.refresh(&space, &g).unwrap();
    for _ in 0..2 {
        let c = r.dev.pop(Direction::DeviceReads, &space, &g).unwrap();
        r.dev.push_used(c.head(), 0);
    }
    r.dev.publish_used();
    assert_eq!((split_used_elem(&r, 0).0, split_used_elem(&r, 1).0), (0, 1));
}

/// Split ring, driver side, against a hostile device with IN_ORDER: an
/// entry naming a chain past the used index, one not yet published, or
/// one not in flight is an error, as a bad id is without IN_ORDER; a
/// consistent batched entry after them still works.
#[test]
fn in_order_split_driver_refuses_inconsistent_entries() {
    let mut r = rig_with(8, true);
    let h: Vec<u16> = (0..4u64).map(|t| r.drv.add_chain(&[(buf(t as usize), 16, false)], t).unwrap()).collect();
    r.drv.publish();
    // Not published: a fifth chain.
    let h4 = r.drv.add_chain(&[(buf(4), 16, false)], 4).unwrap();
    // The entry names the third chain, but used.idx says two: past it.
    split_write_used(&r, 0, h[2] as u32, 0, 2);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdOutOfOrder { id: h[2] as u32 }));
    assert_eq!(r.drv.num_free(), 3, "nothing freed");

    let mut r = rig_with(8, true);
    let h: Vec<u16> = (0..3u64).map(|t| r.drv.add_chain(&[(buf(t as usize), 16, false)], t).unwrap()).collect();
    r.drv.publish();
    let h3 = r.drv.add_chain(&[(buf(3), 16, false)], 3).unwrap();
    // In flight but never published: the device cannot have used it.
    split_write_used(&r, 0, h3 as u32, 0, 4);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdOutOfOrder { id: h3 as u32 }));
    // Not in flight at all, and out of range.
    split_write_used(&r, 1, 7, 0, 4);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdNotInFlight { id: 7 }));
    split_write_used(&r, 2, 99, 0, 4);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdOutOfRange { id: 99, size: 8 }));
    let _ = (h, h4);

    // A consistent run: the entry names the second chain, used.idx 2.
    let mut r = rig_with(8, true);
    let h: Vec<u16> = (0..3u64).map(|t| r.drv.add_chain(&[(buf(t as usize), 16, true)], t).unwrap()).collect();
    r.drv.publish();
    split_write_used(&r, 0, h[1] as u32, 5, 2);
    // The skipped chain is "used completely" (its writable length), the
    // last one has the entry's length.
    assert_eq!(r.drv.pop_used(), Ok(Some((0, 16))));
    assert_eq!(r.drv.pop_used(), Ok(Some((1, 5))));
    assert_eq!(r.drv.pop_used(), Ok(None));
    // An entry naming a chain already taken back is not in flight.
    split_write_used(&r, 2, h[0] as u32, 0, 3);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdNotInFlight { id: h[0] as u32 }));
}

/// Packed ring: a run of readable chains gets one used descriptor over the
/// run's first slot with the run's last buffer id, the other slots keep
/// what the driver wrote; a writable chain keeps its own; the driver takes
/// every chain back in order and lands where the device's used position is,
/// over many laps.
#[test]
fn in_order_packed_returns_a_run_of_readable_chains_with_one_descriptor() {
    let mut r = packed_rig_with(8, false, true);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let flags = |r: &PackedRig, slot: usize| {
        let mut b = [0u8; 16];
        r.mem.read(16 * slot, &mut b);
        (u16::from_le_bytes([b[12], b[13]]), u16::from_le_bytes([b[14], b[15]]))
    };
    for round in 0..20u64 {
        let start = r.dev.used_pos();
        // r (2 slots), r, w, r: runs [r r] [w] [r].
        let ids = [
            r.drv.add_chain(&[(buf(0), 8, false), (buf(1), 8, false)], 10 * round).unwrap(),
            r.drv.add_chain(&[(buf(2), 8, false)], 10 * round + 1).unwrap(),
            r.drv.add_chain(&[(buf(3), 8, true)], 10 * round + 2).unwrap(),
            r.drv.add_chain(&[(buf(4), 8, false)], 10 * round + 3).unwrap(),
        ];
        r.drv.publish();
        let g = reader.read();
        r.dev.refresh(&space, &g).unwrap();
        for t in 0..4 {
            let c = r.dev.pop_chain(Direction::Both, &space, &g).unwrap();
            r.dev.push_used(c.head(), if t == 2 { 6 } else { 0 });
        }
        r.dev.publish_used();
        reader.quiescent();
        // Slot by slot from the start: [id of chain 1 | skipped | skipped]
        // [id of chain 2, WRITE] [id of chain 3].
        let slot = |k: u16| ((start.idx + k) % 8) as usize;
        let wrap_at = |k: u16| if start.idx + k >= 8 { !start.wrap } else { start.wrap };
        let (id0, f0) = flags(&r, slot(0));
        assert!(packed::is_used(f0, wrap_at(0)) && id0 == ids[1], "round {round}: run [r r] named by its last");
        assert!(!packed::is_used(flags(&r, slot(1)).1, wrap_at(1)), "round {round}: skipped slot not marked used");
        assert!(!packed::is_used(flags(&r, slot(2)).1, wrap_at(2)), "round {round}: skipped slot not marked used");
        let (id3, f3) = flags(&r, slot(3));
        assert!(packed::is_used(f3, wrap_at(3)) && id3 == ids[2] && f3 & VRING_DESC_F_WRITE != 0);
        let (id4, f4) = flags(&r, slot(4));
        assert!(packed::is_used(f4, wrap_at(4)) && id4 == ids[3]);
        assert!(r.drv.used_ready());
        assert_eq!(r.drv.peek_used(), (r.dev.used_pos(), 4), "peek sees through the runs");
        let back: Vec<_> = std::iter::from_fn(|| r.drv.pop_used().unwrap()).collect();
        let t = 10 * round;
        assert_eq!(back, vec![(t, 0), (t + 1, 0), (t + 2, 6), (t + 3, 0)]);
        assert_eq!(r.drv.used_pos(), r.dev.used_pos());
        assert_eq!(r.drv.num_free(), 8);
    }
}

/// Packed ring, driver side, against a hostile device with IN_ORDER: a
/// used descriptor naming an unpublished chain, or one not in flight, is
/// an error and is not consumed; the rest of a run, once started, is taken
/// back even when asked one at a time.
#[test]
fn in_order_packed_driver_refuses_inconsistent_descriptors() {
    let mut r = packed_rig_with(8, false, true);
    let a = r.drv.add_chain(&[(buf(0), 8, false)], 0).unwrap();
    let b = r.drv.add_chain(&[(buf(1), 8, true)], 1).unwrap();
    r.drv.publish();
    let c = r.drv.add_chain(&[(buf(2), 8, false)], 2).unwrap();
    let write_used = |r: &PackedRig, slot: usize, id: u16, len: u32, wrap: bool| {
        let mut d = [0u8; 16];
        r.mem.read(16 * slot, &mut d);
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&id.to_le_bytes());
        d[14..16].copy_from_slice(&packed::used_bits(wrap).to_le_bytes());
        r.mem.write(16 * slot, &d);
    };
    // Unpublished chain c.
    write_used(&r, 0, c, 0, true);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdOutOfOrder { id: c as u32 }));
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdOutOfOrder { id: c as u32 }), "not consumed");
    // An id not in flight.
    let free = (0..8).find(|i| ![a, b, c].contains(i)).unwrap();
    write_used(&r, 0, free, 0, true);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdNotInFlight { id: free as u32 }));
    assert_eq!(r.drv.peek_used().1, 0, "peek stops at it too");
    // Out of range.
    write_used(&r, 0, 8, 0, true);
    assert_eq!(r.drv.pop_used(), Err(RingError::UsedIdOutOfRange { id: 8, size: 8 }));
    // A consistent one: b's id over a's slot returns a then b.
    write_used(&r, 0, b, 3, true);
    assert_eq!(r.drv.peek_used().1, 2);
    assert_eq!(r.drv.pop_used(), Ok(Some((0, 0))));
    assert!(r.drv.used_ready(), "the run's rest is ready");
    assert_eq!(r.drv.pop_used(), Ok(Some((1, 3))));
    assert_eq!(r.drv.pop_used(), Ok(None));
    assert_eq!(r.drv.used_pos(), RingPos { idx: 2, wrap: true });
}

/// Split ring, driver side with IN_ORDER: descriptors are used in table
/// order (§2.7.5.1: `next` is x + 1, 0 after the last slot), lap after lap,
/// with chains of several descriptors crossing the table's end.
#[test]
fn in_order_split_driver_uses_descriptors_in_table_order() {
    let mut r = rig_with(8, true);
    let space = r.iotlb.space(0).unwrap().clone();
    let mut reader = r.iotlb.qsbr().register();
    let mut expect_head = 0u16;
    for round in 0..12u64 {
        // Chains of 3 and 2 descriptors: 5 of the 8 slots, so they wrap.
        let a = r.drv.add_chain(&[(buf(0), 8, false), (buf(1), 8, false), (buf(2), 8, false)], 2 * round).unwrap();
        let b = r.drv.add_chain(&[(buf(3), 8, false), (buf(4), 8, true)], 2 * round + 1).unwrap();
        assert_eq!((a, b), (expect_head, (expect_head + 3) % 8), "round {round}");
        for (head, n) in [(a, 3u16), (b, 2)] {
            for k in 0..n - 1 {
                let x = (head + k) % 8;
                let mut d = [0u8; 16];
                r.mem.read(16 * x as usize, &mut d);
                let next = u16::from_le_bytes([d[14], d[15]]);
                assert_eq!(next, (x + 1) % 8, "round {round}: descriptor {x}");
            }
        }
        expect_head = (expect_head + 5) % 8;
        r.drv.publish();
        let g = reader.read();
        r.dev.refresh(&space, &g).unwrap();
        for len in [0, 8] {
            let c = r.dev.pop(Direction::Both, &space, &g).unwrap();
            r.dev.push_used(c.head(), len);
        }
        r.dev.publish_used();
        reader.quiescent();
        assert_eq!(r.drv.pop_used().unwrap(), Some((2 * round, 0)));
        assert_eq!(r.drv.pop_used().unwrap(), Some((2 * round + 1, 8)));
        assert_eq!(r.drv.num_free(), 8);
    }
}

// ---- read-ahead (split) ----

/// A descriptor kind for the read-ahead oracle: chains the pre-walk takes
/// (one direct buffer of the right direction) and every kind it must leave
/// to the walk.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Readable,
    Writable,
    Empty,
    Next,
    Indirect,
    Unmapped,
    HeadOutOfRange,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => Just(Kind::Readable),
        6 => Just(Kind::Writable),
        1 => Just(Kind::Empty),
        1 => Just(Kind::Next),
        1 => Just(Kind::Indirect),
        1 => Just(Kind::Unmapped),
        1 => Just(Kind::HeadOutOfRange),
    ]
}

/// What one take gave: the chain as its pieces (offsets from `base`, where
/// the rig's memory is mapped) and totals, or the error.
fn taken(r: Result<&Chain<'_>, QueueError>, base: *const u8) -> String {
    match r {
        Ok(c) => {
            let p = |s: &[Piece]| {
                s.iter()
                    .map(|p| (p.as_ptr() as usize).wrapping_sub(base as usize))
                    .zip(s.iter().map(Piece::len))
                    .collect::<Vec<_>>()
            };
            format!(
                "{:?} r{} w{} d{} {:?} {:?} {} {}",
                c.head(),
                c.readable_len(),
                c.writable_len(),
                c.descriptors(),
                p(c.readable()),
                p(c.writable()),
                c.readable_complete(),
                c.writable_complete()
            )
        }
        Err(e) => format!("{e:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Chains read ahead are the chains the walk makes, whatever the ring
    /// holds: the same heads, pieces, totals and errors, in the same
    /// order, and the ring ends at the same position. The read-ahead stops
    /// at the first chain it does not take (several descriptors, indirect,
    /// empty, wrong direction, unmapped, a bad head), and that chain and
    /// every later one are the walk's, errors included. A rewind or a stale
    /// read-ahead (the ring moved without it) falls back to the walk.
    #[test]
    fn chains_read_ahead_are_the_chains_the_walk_makes(
        kinds in prop::collection::vec(kind(), 1..24),
        dir_writes in any::<bool>(),
        max in 0usize..40,
        rewind_at in prop::option::of(0usize..24),
    ) {
        let dir = if dir_writes { Direction::DeviceWrites } else { Direction::DeviceReads };
        let size = 32u16;
        let mut a = rig(size);
        let mut b = rig(size);
        for r in [&mut a, &mut b] {
            for (i, k) in kinds.iter().enumerate() {
                let i = i as u16;
                let (head, d) = match k {
                    Kind::Readable => (i, VringDesc { addr: buf(i as usize), len: 76, flags: 0, next: 0 }),
                    Kind::Writable => (i, VringDesc { addr: buf(i as usize), len: 200, flags: VRING_DESC_F_WRITE, next: 0 }),
                    Kind::Empty => (i, VringDesc { addr: buf(i as usize), len: 0, flags: 0, next: 0 }),
                    // Into descriptor 31, a writable buffer.
                    Kind::Next => (i, VringDesc { addr: buf(i as usize), len: 64, flags: VRING_DESC_F_NEXT, next: 31 }),
                    Kind::Indirect => (i, VringDesc { addr: buf(i as usize), len: 32, flags: VRING_DESC_F_INDIRECT, next: 0 }),
                    Kind::Unmapped => (i, VringDesc { addr: 0x7000_0000, len: 64, flags: 0, next: 0 }),
                    Kind::HeadOutOfRange => (size + i, VringDesc { addr: 0, len: 0, flags: 0, next: 0 }),
                };
                if head < size {
                    r.drv.write_desc(head, d).unwrap();
                }
                r.drv.push_avail_raw(head);
            }
            r.drv.write_desc(31, VringDesc { addr: buf(31), len: 64, flags: VRING_DESC_F_WRITE, next: 0 }).unwrap();
            r.drv.publish();
        }
        let (sa, sb) = (a.iotlb.space(0).unwrap().clone(), b.iotlb.space(0).unwrap().clone());
        let (mut ra, mut rb) = (a.iotlb.qsbr().register(), b.iotlb.qsbr().register());
        let (ga, gb) = (ra.read(), rb.read());
        a.dev.refresh(&sa, &ga).unwrap();
        b.dev.refresh(&sb, &gb).unwrap();
        let n = a.dev.pending().unwrap() as usize;
        prop_assert_eq!(b.dev.pending().unwrap() as usize, n);
        let mut buf_b = chain::LookaheadBuf::default();
        let mut la = chain::Lookahead::new(&mut buf_b);
        b.dev.prewalk(&mut la, max, dir, &sb, &gb);
        prop_assert!(la.len() <= max.min(n));
        let (mut ca, mut cb) = (Chain::empty(), Chain::empty());
        // Pieces are compared as offsets from where each rig's one region
        // (all of the test memory, from IOVA) is mapped.
        let base = |s: &crate::mem::AddressSpace, g: &crate::mem::ReadGuard<'_>| {
            s.translate(g, IOVA, 1, crate::mem::Access::Read).unwrap() as *const u8
        };
        let (base_a, base_b) = (base(&sa, &ga), base(&sb, &gb));
        for k in 0..n {
            if rewind_at == Some(k) && k > 0 {
                // Give back the last chain taken, on both (what a burst's
                // rewind does: the read-ahead is forgotten).
                a.dev.rewind(1);
                b.dev.rewind(1);
                la.clear();
            }
            let ta = a.dev.pop_head().and_then(|h| a.dev.read_chain_into(&mut ca, h, dir, &sa, &ga).map(|_| &ca));
            let ta = taken(ta, base_a);
            let tb = if let Some(single) = b.dev.pop_prewalked(&mut la) {
                cb.fill_single(&single);
                taken(Ok(&cb), base_b)
            } else {
                taken(b.dev.pop_head().and_then(|h| b.dev.read_chain_into(&mut cb, h, dir, &sb, &gb).map(|_| &cb)), base_b)
            };
            prop_assert_eq!(&ta, &tb, "chain {} of {:?}", k, kinds);
            prop_assert_eq!(a.dev.last_avail(), b.dev.last_avail());
            if ta.contains("Malformed") || ta.contains("Xlate") {
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The packed ring's read-ahead against its walk, as
    /// `chains_read_ahead_are_the_chains_the_walk_makes` for split: the
    /// same heads (buffer id and slots), pieces, totals and errors, and the
    /// same ring position, whatever the ring holds (a head out of range
    /// here is a buffer id; a withdrawn head has the other lap's bits),
    /// from a position partway round so the read-ahead wraps.
    #[test]
    fn packed_chains_read_ahead_are_the_chains_the_walk_makes(
        kinds in prop::collection::vec(kind(), 1..24),
        withdrawn_at in prop::option::of(0usize..24),
        dir_writes in any::<bool>(),
        max in 0usize..40,
        start in 0u16..32,
        rewind_at in prop::option::of(0usize..24),
    ) {
        let dir = if dir_writes { Direction::DeviceWrites } else { Direction::DeviceReads };
        let size = 32u16;
        let mut a = packed_rig(size, false);
        let mut b = packed_rig(size, false);
        let mut chains = 0usize;
        for r in [&mut a, &mut b] {
            let space = r.iotlb.space(0).unwrap().clone();
            let mut reader = r.iotlb.qsbr().register();
            let g = reader.read();
            r.dev.refresh(&space, &g).unwrap();
            // Go partway round first: `start` chains made available, taken
            // and given back.
            for t in 0..start {
                r.drv.add_chain(&[(buf(0), 8, false)], t as u64).unwrap();
                r.drv.publish();
                let c = r.dev.pop_chain(Direction::DeviceReads, &space, &g).unwrap();
                r.dev.push_used(c.head(), 0);
                r.dev.publish_used();
                r.drv.pop_used().unwrap().unwrap();
            }
            let mut slots = 0u16;
            chains = 0;
            for (i, k) in kinds.iter().enumerate() {
                let id = i as u16;
                let at = |n: u16| r.drv.avail_flags_at(n);
                let descs = match k {
                    Kind::Readable => vec![PackedDesc { addr: buf(i), len: 76, id, flags: at(0) }],
                    Kind::Writable => vec![PackedDesc { addr: buf(i), len: 200, id, flags: VRING_DESC_F_WRITE | at(0) }],
                    Kind::Empty => vec![PackedDesc { addr: buf(i), len: 0, id, flags: at(0) }],
                    Kind::Next => vec![
                        PackedDesc { addr: buf(i), len: 64, id, flags: VRING_DESC_F_NEXT | at(0) },
                        PackedDesc { addr: buf(31), len: 64, id, flags: VRING_DESC_F_WRITE | at(1) },
                    ],
                    Kind::Indirect => vec![PackedDesc { addr: buf(i), len: 32, id, flags: VRING_DESC_F_INDIRECT | at(0) }],
                    Kind::Unmapped => vec![PackedDesc { addr: 0x7000_0000, len: 64, id, flags: at(0) }],
                    Kind::HeadOutOfRange => vec![PackedDesc { addr: buf(i), len: 76, id: size + id, flags: at(0) }],
                };
                if slots + descs.len() as u16 > size {
                    break;
                }
                let mut descs = descs;
                if withdrawn_at == Some(i) {
                    // The other lap's bits: not available (yet).
                    descs[0].flags ^= at(0) ^ packed::avail_bits(!packed::is_avail(at(0), true));
                }
                slots += descs.len() as u16;
                r.drv.push_raw(&descs);
                chains += 1;
            }
            r.drv.publish();
        }
        let (sa, sb) = (a.iotlb.space(0).unwrap().clone(), b.iotlb.space(0).unwrap().clone());
        let (mut ra, mut rb) = (a.iotlb.qsbr().register(), b.iotlb.qsbr().register());
        let (ga, gb) = (ra.read(), rb.read());
        let n = a.dev.pending().unwrap() as usize;
        prop_assert_eq!(b.dev.pending().unwrap() as usize, n);
        let mut buf_b = chain::LookaheadBuf::default();
        let mut la = chain::Lookahead::new(&mut buf_b);
        b.dev.prewalk(&mut la, max, dir, &sb, &gb);
        prop_assert!(la.len() <= max.min(n));
        let (mut ca, mut cb) = (Chain::empty(), Chain::empty());
        let base = |s: &crate::mem::AddressSpace, g: &crate::mem::ReadGuard<'_>| {
            s.translate(g, IOVA, 1, crate::mem::Access::Read).unwrap() as *const u8
        };
        let (base_a, base_b) = (base(&sa, &ga), base(&sb, &gb));
        let mut last_slots = None;
        for k in 0..chains {
            if let (Some(r), Some(s)) = (rewind_at, last_slots) {
                if r == k {
                    // Give back the last chain taken, on both (a burst's
                    // rewind: the read-ahead is forgotten).
                    a.dev.rewind(1, s);
                    b.dev.rewind(1, s);
                    la.clear();
                }
            }
            let ta = taken(a.dev.pop_chain_into(&mut ca, dir, &sa, &ga).map(|_| &ca), base_a);
            let tb = if let Some(single) = b.dev.pop_prewalked(&mut la) {
                cb.fill_single(&single);
                taken(Ok(&cb), base_b)
            } else {
                taken(b.dev.pop_chain_into(&mut cb, dir, &sb, &gb).map(|_| &cb), base_b)
            };
            prop_assert_eq!(&ta, &tb, "chain {} of {:?} (withdrawn {:?}, start {})", k, kinds, withdrawn_at, start);
            prop_assert_eq!((a.dev.avail_pos(), a.dev.in_flight()), (b.dev.avail_pos(), b.dev.in_flight()));
            if ta.contains("Malformed") || ta.contains("Xlate") || ta.contains("Withdrawn") {
                break;
            }
            last_slots = Some(ca.head().slots());
        }
    }
}
