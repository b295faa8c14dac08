//! The device side of a packed virtqueue (virtio 1.3 §2.8).
//!
//! One descriptor ring is shared both ways: the driver makes descriptors
//! available in ring order, the device writes used descriptors back into
//! the slots it consumed. Each side keeps a position and a wrap counter
//! (flipped at every pass over the ring end); a descriptor is available
//! when its AVAIL bit equals the device's avail wrap counter and its USED
//! bit does not, and used when both bits equal the driver's used wrap
//! counter. Two 4-byte event suppression areas replace avail.flags /
//! used_event and used.flags / avail_event.
//!
//! Ring memory is shared with an untrusted driver, as for the split ring:
//! every descriptor is read once into a local (flags first, with Acquire,
//! then the rest), validated through the same [`Builder`] rules as the
//! split walker, and only then used. Positions come from the queue's own
//! counters, never from ring memory, so nothing the driver writes can make
//! the device index outside the ring.
//!
//! Ordering (both sides follow §2.8.21-2.8.22):
//! - The driver writes a chain's descriptors, then the head's flags with
//!   Release; the device loads each descriptor's flags with Acquire before
//!   its other fields, so a head that looks available brings its chain.
//! - Completion writes each used descriptor's id and len, and every flags
//!   field but the batch's first, with plain stores; [`PackedQueue::publish_used`]
//!   then stores the first one's flags with Release. The driver reads used
//!   descriptors in ring order starting at that first one, so it never sees
//!   a half-written batch, and the buffers the device wrote are visible
//!   before any of it.
//! - The interrupt decision and re-enabling kicks each put a SeqCst fence
//!   between our store and the load of the driver's state, mirroring the
//!   driver's fence (§2.8.10), so one side always sees the other's update.

use std::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};

use super::chain::{indirect_entries, prewalk_kind, Builder, Chain, Direction, Lookahead, Single, LOOKAHEAD};
use super::split::{Head, QueueConfig};
use super::{Malformed, QueueError};
use crate::mem::{Access, AddressSpace, Near, ReadGuard, XlateError};
use crate::uapi::virtio::{
    packed_ring_size, vring_need_event, PackedDesc, PACKED_EVENT_SIZE, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED, VRING_PACKED_EVENT_FLAG_DESC,
    VRING_PACKED_EVENT_FLAG_DISABLE, VRING_PACKED_EVENT_FLAG_ENABLE, VRING_PACKED_EVENT_F_WRAP_CTR,
};

/// Most chains one [`PackedQueue::pending`] scan counts ahead. Paths take
/// at most a burst (32 by default) per call; a longer scan only reads
/// descriptors the next burst reads again.
pub const PENDING_SCAN: u16 = 64;

/// A position in the ring and the wrap counter that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPos {
    pub idx: u16,
    pub wrap: bool,
}

impl RingPos {
    /// vhost's encoding (VHOST_GET/SET_VRING_BASE halves, VQ_GET_INFO
    /// folded by the kernel): the slot in bits 0-14, the wrap counter in 15.
    pub fn encode(self) -> u16 {
        (self.idx & 0x7fff) | (self.wrap as u16) << VRING_PACKED_EVENT_F_WRAP_CTR
    }
    pub fn decode(v: u16) -> RingPos {
        RingPos { idx: v & 0x7fff, wrap: v >> VRING_PACKED_EVENT_F_WRAP_CTR != 0 }
    }
    /// Move `n <= size` slots on, flipping the wrap counter at the end.
    #[inline]
    fn advance(&mut self, n: u16, size: u16) {
        let i = self.idx as u32 + n as u32;
        if i >= size as u32 {
            self.idx = (i - size as u32) as u16;
            self.wrap = !self.wrap;
        } else {
            self.idx = i as u16;
        }
    }
    /// Move `n <= size` slots back, flipping the wrap counter at the start.
    #[inline]
    fn retreat(&mut self, n: u16, size: u16) {
        if n > self.idx {
            self.idx = self.idx + size - n;
            self.wrap = !self.wrap;
        } else {
            self.idx -= n;
        }
    }
}

/// The avail/used bits a descriptor carries when the side whose wrap
/// counter is `wrap` marks it available (driver) or used (device with
/// `used = true`).
#[inline]
pub fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        VRING_PACKED_DESC_F_AVAIL
    } else {
        VRING_PACKED_DESC_F_USED
    }
}
#[inline]
pub fn used_bits(wrap: bool) -> u16 {
    if wrap {
        VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED
    } else {
        0
    }
}

/// §2.8.1: available for a device whose avail wrap counter is `wrap`.
#[inline]
pub fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & VRING_PACKED_DESC_F_AVAIL != 0) == wrap && (flags & VRING_PACKED_DESC_F_USED != 0) != wrap
}
/// §2.8.1: used, for a driver whose used wrap counter is `wrap`.
#[inline]
pub fn is_used(flags: u16, wrap: bool) -> bool {
    (flags & VRING_PACKED_DESC_F_AVAIL != 0) == wrap && (flags & VRING_PACKED_DESC_F_USED != 0) == wrap
}

/// Host pointers into the ring and event areas, valid for one table id.
#[derive(Clone, Copy)]
struct Ptrs {
    table_id: u64,
    /// The descriptor ring, translated for both reads (available
    /// descriptors) and writes (used descriptors).
    desc: *mut PackedDesc,
    /// Driver event suppression: we read it (interrupt decision).
    driver: *const u8,
    /// Device event suppression: we write it (kick suppression).
    device: *mut u8,
}

/// Device-side state of one packed virtqueue, owned by one thread.
pub struct PackedQueue {
    cfg: QueueConfig,
    ptrs: Option<Ptrs>,
    /// Next slot to read.
    avail: RingPos,
    /// Next slot to write a used descriptor in.
    used: RingPos,
    /// Slots taken and not yet completed.
    in_flight: u16,
    /// Slots completed and not yet published.
    unpublished: u16,
    /// Chains the last scan saw available and we have not taken.
    avail_cache: u16,
    /// The batch's first used descriptor, whose flags `publish_used` stores
    /// last: (slot, flags).
    first: Option<(u16, u16)>,
    /// Slots published since the last interrupt decision.
    since_signal: u32,
    notify_enabled: bool,
    /// IN_ORDER: where the run of completed device-readable chains without
    /// a used descriptor yet starts, and the run's last buffer id.
    batch_start: Option<RingPos>,
    batch_id: u16,
}

// SAFETY: the raw pointers point into mappings kept alive by the address
// space's QSBR protocol; the queue is moved to its poll thread and used from
// that thread only.
unsafe impl Send for PackedQueue {}

impl PackedQueue {
    /// A queue starting at `cfg.avail_base` (slot | wrap << 15), with its
    /// used position there too: a device stops at a chain boundary with
    /// every chain it took completed, so the two agree (as DPDK's vhost
    /// assumes for SET_VRING_BASE). A position outside the ring fails the
    /// first `refresh`.
    pub fn new(cfg: QueueConfig) -> Self {
        let start = RingPos::decode(cfg.avail_base);
        PackedQueue {
            cfg,
            ptrs: None,
            avail: start,
            used: start,
            in_flight: 0,
            unpublished: 0,
            avail_cache: 0,
            first: None,
            since_signal: 0,
            notify_enabled: true,
            batch_start: None,
            batch_id: 0,
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub fn size(&self) -> u16 {
        self.cfg.size
    }

    /// The next slot to read (GET_VQ_STATE's avail half).
    pub fn avail_pos(&self) -> RingPos {
        self.avail
    }

    /// The next slot for a used descriptor (GET_VQ_STATE's used half).
    pub fn used_pos(&self) -> RingPos {
        self.used
    }

    /// Slots taken and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Reconnect check: whether the descriptor at the queue's start position
    /// was already completed by the device in this lap (used bit equal to
    /// the wrap counter: used and not yet re-posted, or re-posted for the
    /// next lap). Then a logged position lagged behind what was published,
    /// and resuming there would stall the queue. Needs `refresh` first.
    pub fn start_slot_completed(&self) -> bool {
        let flags = u16::from_le(self.flags_atomic(self.used.idx).load(Ordering::Acquire));
        (flags & VRING_PACKED_DESC_F_USED != 0) == self.used.wrap
    }

    /// (Re-)derive ring pointers when the address space changed. Cheap when
    /// nothing changed: one compare.
    #[inline]
    pub fn refresh(&mut self, space: &AddressSpace, guard: &ReadGuard<'_>) -> Result<(), QueueError> {
        let table_id = space.load(guard).id();
        if let Some(p) = &self.ptrs {
            if p.table_id == table_id {
                return Ok(());
            }
        }
        self.map_rings(space, guard)
    }

    #[cold]
    fn map_rings(&mut self, space: &AddressSpace, guard: &ReadGuard<'_>) -> Result<(), QueueError> {
        self.ptrs = None;
        let c = &self.cfg;
        let n = c.size;
        if self.avail.idx >= n {
            return Err(Malformed::BadRingPosition(c.avail_base).into());
        }
        if c.desc_addr % 16 != 0 {
            return Err(Malformed::MisalignedRing(c.desc_addr).into());
        }
        // The event areas are read and written as one 32-bit word each, as
        // Linux's driver reads the device's (no torn off_wrap/flags pair).
        for a in [c.avail_addr, c.used_addr] {
            if a % 4 != 0 {
                return Err(Malformed::MisalignedRing(a).into());
            }
        }
        let ring = packed_ring_size(n) as u64;
        let ev = PACKED_EVENT_SIZE as u64;
        let areas = [
            (c.desc_addr, ring, Access::Read),
            (c.desc_addr, ring, Access::Write),
            (c.avail_addr, ev, Access::Read),
            (c.used_addr, ev, Access::Write),
        ];
        // All from one table, tagged with its id (see SplitQueue::map_rings):
        // a miss resolves one region and starts over with the new table.
        for _ in 0..8 {
            let table = space.load(guard);
            let mut ptrs = [std::ptr::null_mut(); 4];
            let mut missing = None;
            for (i, &(addr, len, access)) in areas.iter().enumerate() {
                match table.translate(addr, len, access) {
                    Ok(p) => ptrs[i] = p,
                    Err(XlateError::Unmapped { iova, .. }) => {
                        missing = Some(iova);
                        break;
                    }
                    Err(XlateError::Discontiguous { .. }) => {
                        missing = Some(addr + len - 1);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(iova) = missing else {
                // One table maps one IOVA to one host address, whatever the
                // access checked.
                debug_assert_eq!(ptrs[0], ptrs[1]);
                // Aligned IOVAs can still map to misaligned host addresses
                // (a region whose file offset is not aligned like its IOVA),
                // as in SplitQueue::map_rings: descriptors are read whole and
                // the event areas as u32 words, so fail instead.
                let aligns = [std::mem::align_of::<PackedDesc>(), std::mem::align_of::<PackedDesc>(), 4, 4];
                for ((p, &(addr, ..)), align) in ptrs.iter().zip(&areas).zip(aligns) {
                    if *p as usize % align != 0 {
                        return Err(Malformed::MisalignedHost(addr).into());
                    }
                }
                self.ptrs = Some(Ptrs {
                    table_id: table.id(),
                    desc: ptrs[1] as *mut PackedDesc,
                    driver: ptrs[2],
                    device: ptrs[3],
                });
                return Ok(());
            };
            if space.resolve(iova).is_err() {
                return Err(XlateError::Unmapped { asid: space.asid(), iova }.into());
            }
        }
        Err(XlateError::Retry { asid: space.asid() }.into())
    }

    #[inline]
    fn ptrs(&self) -> &Ptrs {
        self.ptrs.as_ref().expect("refresh() before ring access")
    }

    #[inline]
    fn desc_ptr(&self, slot: u16) -> *mut PackedDesc {
        debug_assert!(slot < self.cfg.size);
        // SAFETY: every caller passes a slot from the queue's own positions,
        // which stay below size (checked in map_rings, kept by advance); the
        // ring was translated for size descriptors.
        unsafe { self.ptrs().desc.add(slot as usize) }
    }

    #[inline]
    fn flags_atomic(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: the flags field lies inside descriptor `slot` of the
        // translated ring, at offset 14 of a descriptor whose host address is
        // 8-aligned (checked in map_rings), so it is 2-aligned; AtomicU16 has u16's layout. The driver writes it
        // concurrently, which is what an atomic allows.
        unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.desc_ptr(slot)).flags)) }
    }

    /// Read descriptor `slot` once: the flags with Acquire (so a head that
    /// is available brings the chain written before it), then the rest.
    #[inline]
    fn read_desc(&self, slot: u16) -> PackedDesc {
        let flags = u16::from_le(self.flags_atomic(slot).load(Ordering::Acquire));
        let p = self.desc_ptr(slot);
        // SAFETY: `p` is descriptor `slot` of the translated ring, its host
        // address 8-aligned (checked in map_rings); volatile, because the driver may write it at any time.
        unsafe {
            PackedDesc {
                addr: u64::from_le(std::ptr::read_volatile(std::ptr::addr_of!((*p).addr))),
                len: u32::from_le(std::ptr::read_volatile(std::ptr::addr_of!((*p).len))),
                id: u16::from_le(std::ptr::read_volatile(std::ptr::addr_of!((*p).id))),
                flags,
            }
        }
    }

    /// Slots the device may read ahead: those it neither holds (taken, or
    /// completed and unpublished) nor has given back.
    #[inline]
    fn room(&self) -> u16 {
        self.cfg.size - self.in_flight - self.unpublished
    }

    /// Chains the driver made available and we have not taken (at most
    /// [`PENDING_SCAN`]). Scans only when the chains seen last time are
    /// taken; counts heads, skipping their tails by NEXT (the walker
    /// validates the tails).
    #[inline]
    pub fn pending(&mut self) -> Result<u16, QueueError> {
        if self.avail_cache > 0 {
            return Ok(self.avail_cache);
        }
        self.pending_fresh()
    }

    /// Like `pending`, but always scans.
    pub fn pending_fresh(&mut self) -> Result<u16, QueueError> {
        let size = self.cfg.size;
        let room = self.room();
        let mut pos = self.avail;
        let (mut chains, mut slots) = (0u16, 0u16);
        while slots < room && chains < PENDING_SCAN {
            let f = u16::from_le(self.flags_atomic(pos.idx).load(Ordering::Acquire));
            if !is_avail(f, pos.wrap) {
                break;
            }
            chains += 1;
            let mut flags = f;
            loop {
                slots += 1;
                pos.advance(1, size);
                if flags & VRING_DESC_F_NEXT == 0 || slots >= room {
                    break;
                }
                flags = u16::from_le(self.flags_atomic(pos.idx).load(Ordering::Acquire));
            }
        }
        self.avail_cache = chains;
        Ok(chains)
    }

    /// Prefetch the start of the next chain's first buffer (see
    /// [`crate::virtq::SplitQueue::prefetch_next`]): its descriptor was read
    /// by the `pending` scan, so only the buffer's lines are a miss. A hint
    /// only: the descriptor is read again and checked when taken, and only
    /// one the driver made available (flags loaded with Acquire) is used.
    #[inline]
    pub fn prefetch_next(&self, space: &AddressSpace, guard: &ReadGuard<'_>) {
        if self.avail_cache == 0 {
            return;
        }
        let d = self.read_desc(self.avail.idx);
        if is_avail(d.flags, self.avail.wrap) {
            super::split::prefetch_buffer(d.addr, d.len, d.flags, space, guard);
        }
    }

    /// Take the next chain: walk it in ring order, each descriptor read once
    /// and checked (available with the expected wrap counter, the shared
    /// [`Builder`] rules), its buffer id (in the last descriptor, or the
    /// indirect one) checked against the queue size. On error nothing is
    /// taken and the caller must stop the queue.
    pub fn pop_chain<'g>(
        &mut self,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<Chain<'g>, QueueError> {
        super::Ring::pop(self, dir, space, guard)
    }

    /// [`PackedQueue::pop_chain`] into a chain the caller reuses (the
    /// packet paths). On error `chain` holds a partial walk that must not
    /// be used.
    #[inline]
    pub fn pop_chain_into<'g>(
        &mut self,
        chain: &mut Chain<'g>,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        let size = self.cfg.size;
        let room = self.room();
        let mut b = Builder::new(chain, dir, size);
        let mut pos = self.avail;
        let mut slots = 0u16;
        let id = loop {
            if slots == room {
                // The chain runs into slots the device holds: longer than
                // what the ring can hold now.
                return Err(Malformed::ChainTooLong.into());
            }
            let d = self.read_desc(pos.idx);
            if !is_avail(d.flags, pos.wrap) {
                return Err(if slots == 0 {
                    Malformed::Withdrawn(pos.idx)
                } else {
                    Malformed::NotAvailable { slot: pos.idx, flags: d.flags }
                }
                .into());
            }
            slots += 1;
            pos.advance(1, size);
            b.visit()?;
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                let n =
                    indirect_entries(false, self.cfg.indirect, d.flags & VRING_DESC_F_NEXT != 0, d.addr, d.len, size)?;
                let table = space.translate(guard, d.addr, d.len as u64, Access::Read)? as *const PackedDesc;
                // An aligned IOVA can map to a misaligned host address.
                if table as usize % std::mem::align_of::<PackedDesc>() != 0 {
                    return Err(Malformed::MisalignedHost(d.addr).into());
                }
                // The table's entries follow one another; WRITE is the only
                // flag that counts in them (§2.8.8), INDIRECT is refused.
                for i in 0..n {
                    if b.enough() {
                        // The frame fits: the table's other entries are not
                        // read (the indirect descriptor took one slot).
                        break;
                    }
                    // SAFETY: i < n entries of a table translated for n * 16
                    // bytes with read access, its IOVA and host address
                    // 8-byte aligned (both checked).
                    let e = unsafe { std::ptr::read_volatile(table.add(i as usize)) };
                    let (flags, addr, len) = (u16::from_le(e.flags), u64::from_le(e.addr), u32::from_le(e.len));
                    b.visit()?;
                    if flags & VRING_DESC_F_INDIRECT != 0 {
                        return Err(Malformed::NestedIndirect.into());
                    }
                    b.buffer(flags & VRING_DESC_F_WRITE != 0, addr, len, space, guard)?;
                }
                break d.id;
            }
            // Once the frame fits, the rest is only stepped over: its slots
            // are the chain's, but its buffers are not translated.
            if !b.enough() {
                b.buffer(d.flags & VRING_DESC_F_WRITE != 0, d.addr, d.len, space, guard)?;
            }
            if d.flags & VRING_DESC_F_NEXT == 0 {
                break d.id;
            }
        };
        if id >= size {
            return Err(Malformed::BufferIdOutOfRange(id).into());
        }
        self.avail = pos;
        self.in_flight += slots;
        self.avail_cache = self.avail_cache.saturating_sub(1);
        b.finish(Head::new(id, slots));
        Ok(())
    }

    /// Read ahead the next chains, up to `max` and [`LOOKAHEAD`], into
    /// `la` (what [`crate::virtq::SplitQueue::prewalk`] does for split
    /// rings): as long as each is one descriptor the walk would accept for
    /// `dir` (available with the expected wrap counter, no NEXT or
    /// INDIRECT, the right direction, non-empty, a buffer id in range, one
    /// region of the current table, a slot the device does not hold). The
    /// first other chain ends the read-ahead; it and those after it are
    /// walked when taken, so every rule and every error stays the walk's.
    /// Nothing is consumed: [`Self::pop_prewalked`] takes them in order.
    /// Each descriptor is read once, its flags with Acquire first.
    #[inline]
    pub fn prewalk<'g>(
        &self,
        la: &mut Lookahead<'_, 'g>,
        max: usize,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) {
        la.clear();
        let Some((want_write, access)) = prewalk_kind(dir) else { return };
        la.start(want_write);
        let n = (self.avail_cache as usize).min(max).min(LOOKAHEAD).min(self.room() as usize);
        if n < 2 || self.ptrs.is_none() {
            // One chain gains nothing from being read ahead.
            return;
        }
        let size = self.cfg.size;
        let mut near = Near::new(space.load(guard), access);
        let mut pos = self.avail;
        for _ in 0..n {
            let d = self.read_desc(pos.idx);
            let writable = d.flags & VRING_DESC_F_WRITE != 0;
            if !is_avail(d.flags, pos.wrap)
                || d.flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT) != 0
                || writable != want_write
                || d.len == 0
                || d.id >= size
            {
                break;
            }
            let Ok(p) = near.translate(d.addr, d.len as u64) else { break };
            la.push(pos.encode(), d.id, p, d.len);
            pos.advance(1, size);
        }
    }

    /// Take the next chain from `la` if it was read ahead at the ring's
    /// current position (one slot, its buffer id); a read-ahead that no
    /// longer starts there (a rewind) is dropped and the walk takes over.
    #[inline]
    pub fn pop_prewalked<'g>(&mut self, la: &mut Lookahead<'_, 'g>) -> Option<Single<'g>> {
        let s = la.pop_at(self.avail.encode())?;
        self.avail.advance(1, self.cfg.size);
        self.in_flight += 1;
        self.avail_cache = self.avail_cache.saturating_sub(1);
        Some(s)
    }

    /// Give back the last `chains` chains taken, `slots` slots in all, none
    /// of them completed: the next pops read them again from the ring.
    pub fn rewind(&mut self, chains: u16, slots: u16) {
        let slots = slots.min(self.in_flight);
        self.avail.retreat(slots, self.cfg.size);
        self.in_flight -= slots;
        self.avail_cache = self.avail_cache.saturating_add(chains);
    }

    /// Write a used descriptor for `head` (not yet visible: see
    /// `publish_used`). The used position moves on by the slots the chain
    /// took, as the driver's does when it reads this descriptor. With
    /// IN_ORDER a device-readable chain gets no descriptor of its own: it
    /// joins the run that [`Self::flush_batch`] returns with one.
    #[inline]
    pub fn push_used(&mut self, head: Head, len: u32) {
        let size = self.cfg.size;
        // A head from this queue took 1..=in_flight slots; clamp anything
        // else so the positions stay consistent (memory safety does not
        // depend on it: every slot is taken modulo the ring).
        let slots = head.slots().clamp(1, self.in_flight.max(1));
        if self.cfg.in_order && head.readable_only() {
            // "Used completely" is "0 bytes written" for such a chain, so
            // skipping its descriptor loses nothing (IN_ORDER, §2.8).
            self.batch_start.get_or_insert(self.used);
            self.batch_id = head.index();
        } else {
            self.flush_batch();
            self.write_used(self.used, head.index(), len);
        }
        self.used.advance(slots, size);
        self.in_flight = self.in_flight.saturating_sub(slots);
        self.unpublished = (self.unpublished + slots).min(size);
    }

    /// Write the one used descriptor for the run of device-readable chains
    /// completed since the last descriptor (IN_ORDER): over the run's first
    /// slot, with the run's last buffer id; the used position already moved
    /// past the whole run, and the driver skips the same slots by the
    /// chains it knows it made available there.
    #[inline]
    fn flush_batch(&mut self) {
        if let Some(at) = self.batch_start.take() {
            self.write_used(at, self.batch_id, 0);
        }
    }

    /// Write a used descriptor at `at`: id and len now; the flags now, or,
    /// for the publish batch's first descriptor, in `publish_used`.
    #[inline]
    fn write_used(&mut self, at: RingPos, id: u16, len: u32) {
        let slot = at.idx;
        let mut flags = used_bits(at.wrap);
        if len > 0 {
            flags |= VRING_DESC_F_WRITE;
        }
        let p = self.desc_ptr(slot);
        // SAFETY: `p` is descriptor `slot` of the ring, translated with
        // write access; the slot was read by the device before (it lies in
        // the taken range), so the driver no longer writes it.
        unsafe {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).id), id.to_le());
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).len), len.to_le());
        }
        match self.first {
            None => self.first = Some((slot, flags)),
            // Relaxed: the driver reads this only after it has seen the
            // batch's first descriptor used, which publish_used stores with
            // Release after this.
            Some(_) => self.flags_atomic(slot).store(flags.to_le(), Ordering::Relaxed),
        }
    }

    /// Make the batch visible, once per burst. Returns whether the driver
    /// asked to be interrupted for it.
    /// (`publish_used_store`, a SeqCst fence, `interrupt_wanted`).
    #[inline]
    pub fn publish_used(&mut self) -> bool {
        super::Ring::publish_used(self)
    }

    /// The store half of [`Self::publish_used`]: `true` when a batch was
    /// published, in which case the caller must issue a SeqCst fence and
    /// then ask [`Self::interrupt_wanted`].
    #[inline]
    pub fn publish_used_store(&mut self) -> bool {
        self.flush_batch();
        let Some((slot, flags)) = self.first.take() else {
            return false;
        };
        // Release: the batch's ids and lengths, the later descriptors'
        // flags and the buffer contents are visible before this flag.
        self.flags_atomic(slot).store(flags.to_le(), Ordering::Release);
        self.since_signal += self.unpublished as u32;
        self.unpublished = 0;
        true
    }

    #[inline]
    fn event_atomic(&self, p: *const u8) -> &AtomicU32 {
        // SAFETY: `p` is one of the event areas, translated for 4 bytes, its
        // IOVA and host address 4-aligned (both checked in map_rings);
        // AtomicU32 has u32's layout.
        unsafe { AtomicU32::from_ptr(p as *mut u32) }
    }

    /// (off_wrap, flags) of an event suppression area, read as one word.
    #[inline]
    fn read_event(&self, p: *const u8) -> (u16, u16) {
        let w = u32::from_le(self.event_atomic(p).load(Ordering::Relaxed));
        (w as u16, (w >> 16) as u16)
    }

    /// Whether the driver asked to be interrupted for what was published
    /// since the last answer. Only after [`Self::publish_used_store`]
    /// returned `true` and a SeqCst fence after it (see the module docs).
    pub fn interrupt_wanted(&mut self) -> bool {
        let (off_wrap, flags) = self.read_event(self.ptrs().driver);
        let n = std::mem::take(&mut self.since_signal);
        match flags {
            VRING_PACKED_EVENT_FLAG_DISABLE => false,
            VRING_PACKED_EVENT_FLAG_DESC if self.cfg.event_idx => {
                let size = self.cfg.size;
                if n >= size as u32 {
                    // A whole lap since the last decision passed any event.
                    return true;
                }
                // In one frame where the current lap is [0, size): the new
                // used position, the old one n slots back (maybe in the
                // previous lap), and the driver's event, moved back a lap
                // when its wrap counter is not ours.
                let new = self.used.idx;
                let old = new.wrapping_sub(n as u16);
                let mut event = off_wrap & 0x7fff;
                if (off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR != 0) != self.used.wrap {
                    event = event.wrapping_sub(size);
                }
                vring_need_event(event, new, old)
            }
            // ENABLE, DESC without EVENT_IDX, or a reserved value.
            _ => true,
        }
    }

    /// Write the device event area as one word (Linux's driver reads it so).
    #[inline]
    fn write_device_event(&self, off_wrap: u16, flags: u16) {
        let w = off_wrap as u32 | (flags as u32) << 16;
        // Relaxed: ordered against the re-check by the fence in
        // enable_notifications; a late DISABLE costs a kick at most.
        self.event_atomic(self.ptrs().device).store(w.to_le(), Ordering::Relaxed);
    }

    /// Stop asking for kicks while we poll.
    #[inline]
    pub fn disable_notifications(&mut self) {
        if !self.notify_enabled {
            return;
        }
        self.notify_enabled = false;
        self.write_device_event(0, VRING_PACKED_EVENT_FLAG_DISABLE);
    }

    /// Ask for a kick when the next slot becomes available. Returns `true`
    /// if work arrived meanwhile, in which case the caller must not sleep.
    pub fn enable_notifications(&mut self) -> Result<bool, QueueError> {
        self.notify_enabled = true;
        if self.cfg.event_idx {
            self.write_device_event(self.avail.encode(), VRING_PACKED_EVENT_FLAG_DESC);
        } else {
            self.write_device_event(0, VRING_PACKED_EVENT_FLAG_ENABLE);
        }
        // The event write must be visible before we look at the ring again.
        fence(Ordering::SeqCst);
        Ok(self.pending_fresh()? > 0)
    }

    /// Forget ring pointers (e.g. after the queue was stopped).
    pub fn unmap(&mut self) {
        self.ptrs = None;
    }

    pub fn is_mapped(&self) -> bool {
        self.ptrs.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_encode_as_vhost_does() {
        assert_eq!(RingPos { idx: 5, wrap: true }.encode(), 0x8005);
        assert_eq!(RingPos::decode(0x8005), RingPos { idx: 5, wrap: true });
        assert_eq!(RingPos::decode(0x0007), RingPos { idx: 7, wrap: false });
        let mut p = RingPos { idx: 6, wrap: true };
        p.advance(2, 8);
        assert_eq!(p, RingPos { idx: 0, wrap: false });
        p.advance(8, 8);
        assert_eq!(p, RingPos { idx: 0, wrap: true });
    }

    #[test]
    fn avail_and_used_bits_follow_the_wrap_counters() {
        for w in [false, true] {
            assert!(is_avail(avail_bits(w), w));
            assert!(!is_avail(avail_bits(!w), w));
            assert!(!is_avail(used_bits(w), w));
            assert!(is_used(used_bits(w), w));
            assert!(!is_used(avail_bits(w), w));
            assert!(!is_used(used_bits(!w), w));
        }
    }
}
