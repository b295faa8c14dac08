//! The device-side packed ring (virtio 1.3 §2.8) and its chain walker over a
//! memfd-backed address space: a random descriptor ring (AVAIL/USED bits
//! mostly right for the wrap counter, sometimes not), indirect tables, start
//! positions and region sets, with driver rewrites and IOTLB changes between
//! chains.
//!
//! Oracles (independent of the walker):
//! - every piece lies inside one region of ASID 0 with the access its
//!   direction needs and holds the file's bytes there; the canary page
//!   mapped only in ASID 1 is never reached or written;
//! - the direction rules and the totals, as for the split walker;
//! - chains are taken by the walk, or (half the time) through the burst
//!   read-ahead (`prewalk`, `pop_prewalked`), under the same oracles;
//! - a chain the walker accepts is exactly what a plain re-walk of the ring
//!   snapshot finds from the device's position: every slot available for
//!   its wrap counter, NEXT to the end or an indirect descriptor, the buffer
//!   id of the last one (below the ring size), the slot count; the avail
//!   position moves on by that count, flipping the wrap at the ring end;
//! - completing it writes one used descriptor at the device's used
//!   position: that id, that length, AVAIL = USED = the used wrap counter.

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::driver::DmaMemory;
use vduse_net::mem::{Access, AddressSpace, Qsbr, ReadGuard};
use vduse_net::uapi::vduse::VDUSE_ACCESS_RW;
use vduse_net::uapi::virtio::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED,
};
use vduse_net::virtq::packed::{avail_bits, is_avail, used_bits};
use vduse_net::virtq::chain::{Lookahead, LookaheadBuf};
use vduse_net::virtq::{Chain, Direction, PackedQueue, QueueConfig, RingFormat, RingPos};
use vduse_net_fuzz::{PatternMemory, Region, Regions};

/// Ring memory: descriptor ring, the two event areas, indirect tables.
const RING_IOVA: u64 = 0x1_0000;
const RING_LEN: u64 = 2 * 4096;
const DRIVER_EV_OFF: u64 = 1024;
const DEVICE_EV_OFF: u64 = 2048;
const INDIRECT_OFF: u64 = 4096;
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
        ring: Arc::new(DmaMemory::new("fuzz-pring", RING_LEN as usize).expect("memfd")),
        data: PatternMemory::new("fuzz-pdata", DATA_LEN as usize),
        canary: PatternMemory::new("fuzz-pcanary", 4096),
    })
}

#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    id: u16,
    flags: u16,
}

fn read_desc(off: u64) -> Desc {
    let mut b = [0u8; 16];
    mems().ring.read(off as usize, &mut b);
    Desc {
        addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
        id: u16::from_le_bytes(b[12..14].try_into().unwrap()),
        flags: u16::from_le_bytes(b[14..16].try_into().unwrap()),
    }
}

fn write_desc(off: u64, d: Desc) {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.id.to_le_bytes());
    b[14..16].copy_from_slice(&d.flags.to_le_bytes());
    mems().ring.write(off as usize, &b);
}

struct Rig {
    src: Arc<Regions>,
    space: Arc<AddressSpace>,
    size: u16,
    data_regions: Vec<Region>,
}

impl Rig {
    /// A descriptor; `wrap`: the avail wrap counter its slot is usually
    /// made available for.
    fn descriptor(&self, u: &mut Unstructured<'_>, wrap: bool) -> ArbResult<Desc> {
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
        let mut flags: u16 = if u.ratio(15, 16)? { u.int_in_range(0..=7)? } else { u.arbitrary()? };
        flags &= !(VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED);
        flags |= match u.int_in_range(0u8..=7)? {
            0 => used_bits(wrap),
            1 => avail_bits(!wrap),
            2 => u.arbitrary::<u16>()? & (VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED),
            _ => avail_bits(wrap),
        };
        let id: u16 = if u.ratio(7, 8)? { u.int_in_range(0..=self.size - 1)? } else { u.arbitrary()? };
        Ok(Desc { addr, len, id, flags })
    }

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

    /// Piece in one region, with the right permission and the file's bytes.
    fn check_piece(&self, g: &ReadGuard<'_>, ptr: *const u8, len: usize, writable: bool) {
        assert!(len > 0, "empty piece");
        let at = ptr as usize;
        let hosts = self.host_regions(g);
        let Some((r, base, _)) = hosts.iter().find(|(_, b, l)| *b <= at && at + len <= b + l) else {
            panic!("piece {at:#x}+{len} lies in no region of ASID 0: {hosts:x?}");
        };
        if writable {
            assert!(r.allows_write(), "writable piece in {r:?}");
        } else {
            assert!(r.allows_read(), "readable piece in {r:?}");
        }
        let m = mems();
        let mem = if r.mem == 0 { &m.ring } else { &m.data.mem };
        let off = (r.offset + (at - base) as u64) as usize;
        let n = len.min(512);
        let mut want = vec![0u8; n];
        mem.read(off, &mut want);
        // SAFETY: the walker vouched for len bytes at ptr (under test).
        let got = unsafe { std::slice::from_raw_parts(ptr, n) };
        assert_eq!(got, &want[..], "piece bytes differ from the file at {off:#x}");
    }
}

/// The chain at `pos` as a plain reading of the ring finds it, if the
/// walker may accept it: (buffer id, slots).
fn expected_chain(ring: u64, pos: RingPos, size: u16) -> Option<(u16, u16)> {
    let (mut idx, mut wrap) = (pos.idx, pos.wrap);
    for n in 1..=size {
        let d = read_desc(ring + idx as u64 * 16);
        if !is_avail(d.flags, wrap) {
            return None;
        }
        if d.flags & VRING_DESC_F_INDIRECT != 0 || d.flags & VRING_DESC_F_NEXT == 0 {
            return Some((d.id, n));
        }
        idx += 1;
        if idx == size {
            idx = 0;
            wrap = !wrap;
        }
    }
    None
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let m = mems();
    m.ring.write(0, &[0u8; RING_LEN as usize]);

    let src = Regions::new(vec![m.ring.clone(), m.data.mem.clone(), m.canary.mem.clone()]);
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

    // Start position: usually inside the ring, sometimes not (refused).
    let start = if u.ratio(15, 16)? {
        RingPos { idx: u.int_in_range(0..=size - 1)?, wrap: u.arbitrary()? }
    } else {
        RingPos::decode(u.arbitrary()?)
    };
    // Slots from the start to the ring end are made available for the
    // start's wrap counter, the ones before it for the next pass.
    for i in 0..size {
        let wrap = if i >= start.idx { start.wrap } else { !start.wrap };
        write_desc(i as u64 * 16, rig.descriptor(&mut u, wrap)?);
    }
    for i in 0..u.int_in_range(0..=16u64)? {
        let d = rig.descriptor(&mut u, false)?;
        write_desc(INDIRECT_OFF + i * 16, d);
    }
    let ev: u32 = u.arbitrary()?;
    m.ring.write(DRIVER_EV_OFF as usize, &ev.to_le_bytes());

    let mut cfg = QueueConfig {
        index: 0,
        size,
        desc_addr: RING_IOVA,
        avail_addr: RING_IOVA + DRIVER_EV_OFF,
        used_addr: RING_IOVA + DEVICE_EV_OFF,
        avail_base: start.encode(),
        event_idx: u.arbitrary()?,
        indirect: u.arbitrary()?,
        format: RingFormat::Packed,
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

    // Where the descriptor ring lies in the ring memory: the oracles read
    // it there (a moved but still aligned and mapped ring is legal).
    let ring = match cfg.desc_addr.checked_sub(RING_IOVA) {
        Some(off) if off + size as u64 * 16 <= RING_LEN => off,
        _ => 0,
    };
    let mut q = PackedQueue::new(cfg);
    for _round in 0..(2 * size as usize + 4) {
        for _ in 0..8 {
            if u.is_empty() || !u.ratio(1, 4)? {
                break;
            }
            match u.int_in_range(0u8..=3)? {
                0 => {
                    // The driver (re)writes a slot, usually for the wrap
                    // counter the device expects there next.
                    let i = u.int_in_range(0..=size - 1)?;
                    let p = q.avail_pos();
                    let wrap = if i >= p.idx { p.wrap } else { !p.wrap };
                    write_desc(ring + i as u64 * 16, rig.descriptor(&mut u, wrap)?);
                }
                1 if !rig.data_regions.is_empty() => {
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
        reader.quiescent();
        let g = reader.read();
        if q.refresh(&rig.space, &g).is_err() {
            break;
        }
        let n = match q.pending_fresh() {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            break;
        }
        let before = q.avail_pos();
        let expected = expected_chain(ring, before, size);
        // Half the time through the read-ahead the packet paths use: the
        // same oracles hold for a chain it hands out.
        let mut ahead = LookaheadBuf::default();
        let taken = if dir != Direction::Both && u.ratio(1, 2)? {
            let mut la = Lookahead::new(&mut ahead);
            q.prewalk(&mut la, n as usize, dir, &rig.space, &g);
            if let Some(single) = q.pop_prewalked(&mut la) {
                let mut c = Chain::empty();
                c.fill_single(&single);
                Ok(c)
            } else {
                q.pop_chain(dir, &rig.space, &g)
            }
        } else {
            q.pop_chain(dir, &rig.space, &g)
        };
        let c = match taken {
            Ok(c) => c,
            Err(_) => {
                assert_eq!(q.avail_pos(), before, "a refused chain moved the avail position");
                break;
            }
        };
        let (id, slots) = expected.unwrap_or_else(|| panic!("walker accepted a chain at {before:?} the ring lacks"));
        let head = c.head();
        assert!(id < size, "buffer id {id} >= size {size} accepted");
        assert_eq!((head.index(), head.slots()), (id, slots), "chain at {before:?}");
        let mut after = before;
        for _ in 0..slots {
            after.idx += 1;
            if after.idx == size {
                after.idx = 0;
                after.wrap = !after.wrap;
            }
        }
        assert_eq!(q.avail_pos(), after, "avail position after {slots} slots");
        assert!(q.in_flight() <= size, "in flight {} > size {size}", q.in_flight());

        let mut seen_w = false;
        for (part, writable) in [(c.readable(), false), (c.writable(), true)] {
            for p in part {
                rig.check_piece(&g, p.as_ptr(), p.len(), writable);
                match (dir, writable) {
                    (Direction::DeviceReads, true) => panic!("writable piece on a device-reads queue"),
                    (Direction::DeviceWrites, false) => panic!("readable piece on a device-writes queue"),
                    _ => {}
                }
                assert!(writable || !seen_w, "readable piece after a writable one");
                seen_w |= writable;
            }
        }
        let sum = |part: &[vduse_net::virtq::Piece]| part.iter().map(|p| p.len() as u64).sum::<u64>();
        if c.readable_complete() {
            assert_eq!(sum(c.readable()), c.readable_len() as u64, "readable total");
        }
        if c.writable_complete() {
            assert_eq!(sum(c.writable()), c.writable_len() as u64, "writable total");
        }
        let len = c.writable_len();
        drop(c);
        let used = q.used_pos();
        q.push_used(head, len);
        q.publish_used();
        let d = read_desc(ring + used.idx as u64 * 16);
        assert_eq!((d.id, d.len), (head.index(), len), "used descriptor at {used:?}");
        let want = used_bits(used.wrap) | if len > 0 { VRING_DESC_F_WRITE } else { 0 };
        assert_eq!(d.flags, want, "used flags at {used:?}");
    }
    q.publish_used();
    drop(reader);
    assert!(m.canary.intact(), "canary in ASID 1 was written");
    m.data.restore();
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
