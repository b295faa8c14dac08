//! The device-side split ring and chain walker over a memfd-backed address
//! space, with random descriptor tables, indirect tables, avail rings and
//! region sets, and driver rewrites and IOTLB changes between chains.
//!
//! Oracles (independent of the walker's API, which `walk` below adapts):
//! - every piece the walker hands out lies inside one region of the
//!   queue's current address space (ASID 0), with read permission for a
//!   readable piece and write permission for a writable one, and holds the
//!   bytes the file has there; nothing reaches the canary page mapped only
//!   in ASID 1;
//! - the direction rules hold (no writable piece on a device-reads queue,
//!   no readable one on a device-writes queue, none readable after a
//!   writable one); the totals equal the pieces' sums and at most
//!   `size + 1` descriptors are visited;
//! - no head is completed twice: each used entry answers exactly one avail
//!   slot the device consumed, with the head that slot held, and the used
//!   index never runs ahead of the avail entries consumed.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::driver::DmaMemory;
use vduse_net::mem::{Access, AddressSpace, Qsbr, ReadGuard};
use vduse_net::uapi::vduse::VDUSE_ACCESS_RW;
use vduse_net::uapi::virtio::VRING_DESC_F_INDIRECT;
use vduse_net::virtq::{
    Chain, Direction, Head, QueueConfig, QueueError, RingFormat, SplitQueue, MAX_PIECES, MAX_READABLE_PIECES,
};
use vduse_net_fuzz::{desc_bytes, PatternMemory, Region, Regions};

/// Ring memory (descriptor table, avail, used, then indirect tables).
const RING_IOVA: u64 = 0x1_0000;
const RING_LEN: u64 = 2 * 4096;
const AVAIL_OFF: u64 = 1024;
const USED_OFF: u64 = 2048;
const INDIRECT_OFF: u64 = 4096;
/// Data regions are placed on a page grid from here.
const DATA_IOVA: u64 = 0x10_0000;
const DATA_LEN: u64 = 8 * 4096;
/// Mapped in ASID 1 only.
const CANARY_IOVA: u64 = 0x4000_0000;
const MAX_SIZE: u16 = 64;

struct Mems {
    ring: Arc<DmaMemory>,
    data: PatternMemory,
    canary: PatternMemory,
}

fn mems() -> &'static Mems {
    static M: OnceLock<Mems> = OnceLock::new();
    M.get_or_init(|| Mems {
        ring: Arc::new(DmaMemory::new("fuzz-ring", RING_LEN as usize).expect("memfd")),
        data: PatternMemory::new("fuzz-data", DATA_LEN as usize),
        canary: PatternMemory::new("fuzz-canary", 4096),
    })
}

/// One piece as the walker handed it out.
#[derive(Clone, Copy, Debug)]
struct Piece {
    ptr: *const u8,
    len: usize,
    writable: bool,
    /// Byte offset of the piece in its part (readable or writable).
    at: usize,
}

/// What the walker said about a chain, besides its pieces.
#[derive(Debug)]
struct Info {
    head: Head,
    descriptors: u32,
    readable: u32,
    writable: u32,
    /// Every piece of that part was kept (at most MAX_PIECES are).
    readable_complete: bool,
    writable_complete: bool,
}

/// The one call into the chain walker. Adapt this when the walker's API
/// changes; the oracles below only need the pieces and the totals. The
/// device's writes go through the chain's own writer (`write_at`), so
/// `marks` are (offset in the writable part, byte) pairs to write.
#[allow(clippy::too_many_arguments)]
fn walk(
    q: &SplitQueue,
    head: Head,
    dir: Direction,
    want: Option<u32>,
    space: &AddressSpace,
    g: &ReadGuard<'_>,
    pieces: &mut Vec<Piece>,
    marks: impl FnOnce(&[Piece]) -> Vec<(usize, u8)>,
) -> Result<Info, QueueError> {
    let mut c = Chain::empty();
    if let Some(w) = want {
        c.want_writable(w);
    }
    q.read_chain_into(&mut c, head, dir, space, g)?;
    for (part, writable) in [(c.readable(), false), (c.writable(), true)] {
        let mut at = 0;
        for p in part {
            pieces.push(Piece { ptr: p.as_ptr(), len: p.len(), writable, at });
            at += p.len();
        }
    }
    for (off, b) in marks(pieces) {
        assert_eq!(c.write_at(off, &[b]), 1, "write at {off} inside a kept writable piece");
    }
    Ok(Info {
        head: c.head(),
        descriptors: c.descriptors(),
        readable: c.readable_len(),
        writable: c.writable_len(),
        readable_complete: c.readable_complete(),
        writable_complete: c.writable_complete(),
    })
}

struct Rig {
    src: Arc<Regions>,
    space: Arc<AddressSpace>,
    size: u16,
    data_regions: Vec<Region>,
}

impl Rig {
    fn descriptor(&self, u: &mut Unstructured<'_>) -> ArbResult<[u8; 16]> {
        let addr = match u.int_in_range(0u8..=9)? {
            0..=4 if !self.data_regions.is_empty() => {
                let r = &self.data_regions[u.choose_index(self.data_regions.len())?];
                r.start + u.int_in_range(0..=(r.last - r.start) + 64)?
            }
            0..=4 | 5 => DATA_IOVA + u.int_in_range(0..=DATA_LEN)?,
            6 => RING_IOVA + INDIRECT_OFF + 16 * u.int_in_range(0..=8)?,
            7 => CANARY_IOVA + u.int_in_range(0..=4096)?,
            8 => RING_IOVA + u.int_in_range(0..=RING_LEN)?,
            _ => u.arbitrary()?,
        };
        let len: u32 = match u.int_in_range(0u8..=7)? {
            0 => 0,
            1 => 16 * u.int_in_range(1..=(MAX_SIZE as u32 + 2))?,
            2 => u.int_in_range(0x1000..=0x3000)?,
            3 => u.arbitrary()?,
            _ => u.int_in_range(1..=256)?,
        };
        let flags: u16 = if u.ratio(15, 16)? { u.int_in_range(0..=7)? } else { u.arbitrary()? };
        let next: u16 = if u.ratio(7, 8)? { u.int_in_range(0..=self.size.saturating_sub(1))? } else { u.arbitrary()? };
        Ok(desc_bytes(addr, len, flags, next))
    }

    /// Every region of the published table, as host intervals.
    fn host_regions(&self, g: &ReadGuard<'_>) -> Vec<(Region, usize, usize)> {
        let t = self.space.load(g);
        let list = self.src.list();
        let mut out = Vec::new();
        for (start, last, perm) in t.regions() {
            let r = list
                .iter()
                .find(|r| r.asid == 0 && (r.start, r.last, r.perm) == (start, last, perm))
                .unwrap_or_else(|| panic!("table region [{start:#x}, {last:#x}] is not one the kernel has"))
                .clone();
            let base = t.translate(start, 0, Access::Read).or_else(|_| t.translate(start, 0, Access::Write));
            if let Ok(base) = base {
                out.push((r, base as usize, (last - start + 1) as usize));
            }
        }
        out
    }

    /// The per-piece oracle. Returns the region's memory index.
    fn check_piece(&self, g: &ReadGuard<'_>, p: &Piece) -> usize {
        assert!(p.len > 0, "empty piece");
        let at = p.ptr as usize;
        let hosts = self.host_regions(g);
        let Some((r, base, _)) = hosts.iter().find(|(_, b, l)| *b <= at && at + p.len <= b + l) else {
            panic!("piece {p:?} lies in no region of ASID 0: {hosts:x?}");
        };
        if p.writable {
            assert!(r.allows_write(), "writable piece in {r:?}");
        } else {
            assert!(r.allows_read(), "readable piece in {r:?}");
        }
        // The bytes are the file's bytes at that offset.
        let m = mems();
        let mem = if r.mem == 0 { &m.ring } else { &m.data.mem };
        let off = (r.offset + (at - base) as u64) as usize;
        let n = p.len.min(512);
        let mut want = vec![0u8; n];
        mem.read(off, &mut want);
        // SAFETY: the walker vouched for p.len bytes at p.ptr (under test).
        let got = unsafe { std::slice::from_raw_parts(p.ptr, n) };
        assert_eq!(got, &want[..], "piece bytes differ from the file at {off:#x}");
        r.mem
    }
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let m = mems();
    m.ring.write(0, &[0u8; RING_LEN as usize]);

    let src = Regions::new(vec![m.ring.clone(), m.data.mem.clone(), m.canary.mem.clone()]);
    // The rings: usually read-write, sometimes not (map_rings must refuse).
    let ring_perm = if u.ratio(15, 16)? { VDUSE_ACCESS_RW } else { u.int_in_range(0..=3)? };
    src.add(Region { asid: 0, start: RING_IOVA, last: RING_IOVA + RING_LEN - 1, perm: ring_perm, offset: 0, mem: 0 });
    src.add(Region { asid: 1, start: CANARY_IOVA, last: CANARY_IOVA + 4095, perm: VDUSE_ACCESS_RW, offset: 0, mem: 2 });
    for _ in 0..u.int_in_range(0..=6)? {
        let page = u.int_in_range(0..=15u64)?;
        let start = DATA_IOVA + page * 0x1000 + if u.ratio(1, 8)? { u.int_in_range(1..=0xfff)? } else { 0 };
        let len = u.int_in_range(1..=3u64)? * 0x1000;
        let offset = u.int_in_range(0..=(DATA_LEN - len) / 4096)? * 4096;
        let perm = if u.ratio(3, 4)? { VDUSE_ACCESS_RW } else { u.int_in_range(0..=3)? };
        src.add(Region { asid: 0, start, last: start + len - 1, perm, offset, mem: 1 });
    }
    let data_regions: Vec<Region> = src.list().into_iter().filter(|r| r.mem == 1).collect();

    let size = 1u16 << u.int_in_range(0..=6)?;
    let qsbr = Qsbr::new();
    let rig = Rig { src: src.clone(), space: AddressSpace::new(0, qsbr.clone(), src.clone()), size, data_regions };
    let mut reader = qsbr.register();

    // Descriptor table, indirect tables, avail ring.
    for i in 0..size as u64 {
        m.ring.write((i * 16) as usize, &rig.descriptor(&mut u)?);
    }
    for i in 0..u.int_in_range(0..=16u64)? {
        m.ring.write((INDIRECT_OFF + i * 16) as usize, &rig.descriptor(&mut u)?);
    }
    let base: u16 = u.arbitrary()?;
    let mut avail_idx = base.wrapping_add(if u.ratio(15, 16)? { u.int_in_range(0..=size)? } else { u.arbitrary()? });
    for slot in 0..size as u64 {
        let head: u16 = if u.ratio(7, 8)? { u.int_in_range(0..=size - 1)? } else { u.arbitrary()? };
        m.ring.write((AVAIL_OFF + 4 + 2 * slot) as usize, &head.to_le_bytes());
    }
    m.ring.write((AVAIL_OFF + 2) as usize, &avail_idx.to_le_bytes());

    let mut cfg = QueueConfig {
        index: 0,
        size,
        desc_addr: RING_IOVA,
        avail_addr: RING_IOVA + AVAIL_OFF,
        used_addr: RING_IOVA + USED_OFF,
        avail_base: base,
        event_idx: u.arbitrary()?,
        indirect: u.arbitrary()?,
        format: RingFormat::Split,
        in_order: false,
    };
    if u.ratio(1, 16)? {
        // Misaligned or unmapped rings.
        cfg.desc_addr = cfg.desc_addr.wrapping_add(u.int_in_range(1..=0x2_0000)?);
        cfg.used_addr = cfg.used_addr.wrapping_add(u.int_in_range(0..=2)?);
    }
    let dir = match u.int_in_range(0u8..=2)? {
        0 => Direction::DeviceReads,
        1 => Direction::DeviceWrites,
        _ => Direction::Both,
    };

    // Where the walker reads the descriptor table (the loop oracle reads it
    // back from the same place).
    let desc_off = cfg.desc_addr.wrapping_sub(RING_IOVA);
    let mut q = SplitQueue::new(cfg);
    // The head of every completed chain, and of every consumed avail slot.
    let mut completed: Vec<u16> = Vec::new();
    let mut consumed: Vec<u16> = Vec::new();
    let mut pieces = Vec::new();
    let mut failed = false;
    for _round in 0..(2 * size as usize + 4) {
        // Driver and IOTLB changes between chains.
        for _ in 0..8 {
            if u.is_empty() || !u.ratio(1, 4)? {
                break;
            }
            match u.int_in_range(0u8..=4)? {
                0 => {
                    let i = u.int_in_range(0..=size as u64 - 1)?;
                    m.ring.write((i * 16) as usize, &rig.descriptor(&mut u)?);
                }
                1 => {
                    let slot = u.int_in_range(0..=size as u64 - 1)?;
                    let head: u16 = u.int_in_range(0..=size)?;
                    m.ring.write((AVAIL_OFF + 4 + 2 * slot) as usize, &head.to_le_bytes());
                }
                2 => {
                    avail_idx = avail_idx.wrapping_add(u.int_in_range(0..=size)?);
                    m.ring.write((AVAIL_OFF + 2) as usize, &avail_idx.to_le_bytes());
                }
                3 if !rig.data_regions.is_empty() => {
                    // Unmap a data region: UPDATE_IOTLB with the reader offline.
                    let r = &rig.data_regions[u.choose_index(rig.data_regions.len())?];
                    src.remove(0, r.start, r.last);
                    reader.offline();
                    rig.space.invalidate(r.start, r.last).expect("no reader online");
                }
                _ => {
                    reader.offline();
                    rig.space.reclaim().expect("no reader online");
                }
            }
        }
        if failed {
            break;
        }
        reader.quiescent();
        let g = reader.read();
        if q.refresh(&rig.space, &g).is_err() {
            break;
        }
        let n = match q.pending() {
            Ok(n) => n,
            Err(_) => break,
        };
        assert!(n <= size, "pending {n} > size {size}");
        if n == 0 {
            continue;
        }
        let last_avail = q.last_avail();
        let slot_val = {
            let mut b = [0u8; 2];
            m.ring.read((AVAIL_OFF + 4 + 2 * (last_avail % size) as u64) as usize, &mut b);
            u16::from_le_bytes(b)
        };
        let head = match q.pop_head() {
            Ok(h) => h,
            Err(_) => {
                assert!(slot_val >= size, "head {slot_val} refused");
                assert_eq!(q.last_avail(), last_avail, "a refused head consumed its slot");
                break;
            }
        };
        assert_eq!(head.index(), slot_val, "head differs from the avail slot");
        assert_eq!(q.last_avail(), last_avail.wrapping_add(1));
        consumed.push(head.index());
        pieces.clear();
        // The per-piece oracles run on the pieces before the device writes;
        // the device then writes what it may: the first and last byte of
        // every writable data piece (not into the rings, which the checks
        // below read back).
        let check = |pieces: &[Piece]| {
            let mut marks = Vec::new();
            let mut seen_w = false;
            for p in pieces {
                let mem = rig.check_piece(&g, p);
                match (dir, p.writable) {
                    (Direction::DeviceReads, true) => panic!("writable piece on a device-reads queue"),
                    (Direction::DeviceWrites, false) => panic!("readable piece on a device-writes queue"),
                    _ => {}
                }
                assert!(p.writable || !seen_w, "readable piece after a writable one");
                seen_w |= p.writable;
                if mem == 1 && p.writable {
                    marks.push((p.at, 0xa5));
                    marks.push((p.at + p.len - 1, 0x5a));
                }
            }
            marks
        };
        // An RX walk may stop once it holds what the frame needs.
        let want = if dir == Direction::DeviceWrites && u.ratio(1, 2)? { Some(u.int_in_range(1..=0x1_0000)?) } else { None };
        let walked = walk(&q, head, dir, want, &rig.space, &g, &mut pieces, check);
        if let Ok(info) = &walked {
            // Whatever the walk kept, it never went round a loop: the
            // direct descriptors it visited (read back here from the table)
            // are distinct. Chains through an indirect table are left to
            // the walker's own counting.
            let mut seen = Vec::new();
            let mut i = head.index();
            for _ in 0..info.descriptors {
                let at = desc_off.wrapping_add(i as u64 * 16);
                if at + 16 > RING_LEN {
                    break;
                }
                let mut d = [0u8; 16];
                m.ring.read(at as usize, &mut d);
                let flags = u16::from_le_bytes([d[12], d[13]]);
                if flags & VRING_DESC_F_INDIRECT != 0 || i >= size {
                    break;
                }
                assert!(!seen.contains(&i), "descriptor {i} walked twice: a loop was taken ({info:?}, want {want:?})");
                seen.push(i);
                i = u16::from_le_bytes([d[14], d[15]]);
            }
        }
        match walked {
            Ok(info) => {
                // The chain's head is the one taken (the walk adds whether
                // it holds writable buffers, for IN_ORDER).
                assert_eq!((info.head.index(), info.head.slots()), (head.index(), head.slots()));
                assert!(!info.head.readable_only() || info.writable == 0, "readable-only with writable bytes: {info:?}");
                assert!(info.descriptors >= 1 && info.descriptors <= size as u32 + 1, "{info:?}");
                let sum = |w: bool| pieces.iter().filter(|p| p.writable == w).map(|p| p.len as u64).sum::<u64>();
                let (rd, wr) = (sum(false), sum(true));
                // All pieces kept: the totals are their sums; some dropped
                // (more than MAX_PIECES): the kept ones are a prefix.
                let n_rd = pieces.iter().filter(|p| !p.writable).count();
                let n_wr = pieces.len() - n_rd;
                if info.readable_complete {
                    assert_eq!(rd, info.readable as u64, "readable total vs pieces");
                } else {
                    assert!(rd < info.readable as u64 && n_rd == MAX_READABLE_PIECES, "{info:?}, {n_rd} kept");
                }
                if info.writable_complete {
                    assert_eq!(wr, info.writable as u64, "writable total vs pieces");
                } else {
                    assert!(wr < info.writable as u64 && pieces.len() == MAX_PIECES, "{info:?}, {n_wr} kept");
                }
                q.push_used(head, info.writable);
                completed.push(head.index());
                q.publish_used();
                // The entry and the index, as the driver sees them now.
                let slot = (q.used_idx().wrapping_sub(1) % size) as u64;
                let mut e = [0u8; 8];
                m.ring.read((USED_OFF + 4 + 8 * slot) as usize, &mut e);
                assert_eq!(u32::from_le_bytes(e[..4].try_into().unwrap()), head.index() as u32, "used id");
                assert_eq!(u32::from_le_bytes(e[4..].try_into().unwrap()), info.writable, "used len");
                let mut b = [0u8; 2];
                m.ring.read((USED_OFF + 2) as usize, &mut b);
                assert_eq!(u16::from_le_bytes(b).wrapping_sub(base) as usize, completed.len(), "used idx");
            }
            Err(_) => {
                // The queue fails: chains completed so far are published.
                failed = true;
            }
        }
        q.publish_used();
    }
    q.publish_used();
    drop(reader);

    // One used entry per consumed avail entry at most, each head answered
    // once per time it was made available, and the index never ahead.
    let mut b = [0u8; 2];
    m.ring.read((USED_OFF + 2) as usize, &mut b);
    let used_idx = u16::from_le_bytes(b);
    if completed.is_empty() {
        assert_eq!(used_idx, 0, "used index written without a completed chain");
    } else {
        assert_eq!(used_idx.wrapping_sub(base) as usize, completed.len());
    }
    assert!(completed.len() <= q.last_avail().wrapping_sub(base) as usize, "used ahead of avail");
    assert_eq!(consumed.len(), q.last_avail().wrapping_sub(base) as usize, "one slot per head taken");
    assert!(m.canary.intact(), "canary in ASID 1 was written");
    m.data.restore();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
