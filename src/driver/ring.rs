//! Driver side of a split virtqueue (virtio 1.3 §2.7) in shared [`DmaMemory`].
//!
//! The device is untrusted: everything it writes (used ring, suppression
//! fields) is read once, validated, and never used to index memory unchecked.
//! The driver keeps its own copy of every chain it built (links, lengths,
//! tokens), so a device that scribbles over the descriptor table cannot make
//! the driver free the wrong descriptors.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use crate::uapi::virtio::{
    avail_ring_size, desc_table_size, used_ring_size, vring_need_event, VringDesc, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

use super::dma::DmaMemory;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("queue size {0} is not a power of two in 1..=32768")]
    BadSize(u16),
    #[error("ring offset {0:#x} is not 16-byte aligned")]
    Misaligned(usize),
    #[error("ring needs {need} bytes at offset {offset:#x}, memory has {have}")]
    NoRoom { offset: usize, need: usize, have: usize },
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("need {need} free descriptors, {free} free")]
    Full { need: usize, free: u16 },
    #[error("descriptor index {index} out of range (size {size})")]
    DescIndex { index: u16, size: u16 },
    #[error("device returned used id {id} >= queue size {size}")]
    UsedIdOutOfRange { id: u32, size: u16 },
    #[error("device returned used id {id}, which is not in flight")]
    UsedIdNotInFlight { id: u32 },
    /// IN_ORDER: the id is in flight, but not among the chains the entry
    /// may complete (made available after chains the device has not
    /// returned, past the used index, or not yet published).
    #[error("device returned used id {id} out of order (IN_ORDER)")]
    UsedIdOutOfOrder { id: u32 },
    #[error("used idx {used} is {ahead} entries ahead of last seen {last} (queue size {size})")]
    UsedIdxJump { used: u16, last: u16, ahead: u16, size: u16 },
}

/// One buffer of a chain: `(iova, len, device_writable)`.
pub type Segment = (u64, u32, bool);

/// Byte layout of one split ring, relative to the descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    pub avail: usize,
    pub used: usize,
    pub total: usize,
}

impl RingLayout {
    /// Descriptor table (16-aligned) first, avail ring right after it (2-aligned
    /// since the table is a multiple of 16), used ring rounded up to 4.
    pub const fn new(size: u16) -> Self {
        let avail = desc_table_size(size);
        let used = (avail + avail_ring_size(size)).next_multiple_of(4);
        RingLayout { avail, used, total: used + used_ring_size(size) }
    }
}

/// A driver-owned split virtqueue.
pub struct DriverQueue {
    mem: Arc<DmaMemory>,
    /// Byte offset of the descriptor table inside `mem`.
    offset: usize,
    iova: u64,
    size: u16,
    layout: RingLayout,
    event_idx: bool,
    free_head: u16,
    /// The free list's last entry: freed chains join at the tail (FIFO),
    /// so descriptors cycle in a fixed order, as the avail slots do.
    free_tail: u16,
    num_free: u16,
    /// Driver-private links: the free list, and the links of chains in flight.
    next: Box<[u16]>,
    chain_len: Box<[u16]>,
    /// `Some(token)` while the chain headed here is owned by the device.
    tokens: Box<[Option<u64>]>,
    /// Next avail slot to fill (ahead of `published` until `publish`).
    avail_shadow: u16,
    published: u16,
    /// avail idx at the last `needs_kick`.
    kick_old: u16,
    last_used: u16,
    /// used.idx at its last read; entries below it need no new load.
    used_cache: u16,
    irq_enabled: bool,
    /// VIRTIO_F_IN_ORDER negotiated: one used entry may complete a run of
    /// chains (see [`Self::pop_used`]).
    in_order: bool,
    /// Driver-private copy of the avail ring (head per avail index mod
    /// size): the order chains were made available in, which the device
    /// cannot rewrite.
    avail_heads: Box<[u16]>,
    /// Per head: bytes the chain lets the device write, the length of a
    /// chain an IN_ORDER run returns without an entry of its own ("used
    /// completely").
    writable_len: Box<[u32]>,
    /// Chains of the current IN_ORDER run not yet taken back, and the
    /// length in the run's entry (its last chain's).
    batch_left: u16,
    batch_len: u32,
}

impl DriverQueue {
    /// Lay out a queue of `size` entries at `offset` in `mem`, which the
    /// device sees at `iova` (the IOVA of byte `offset`). The ring is zeroed.
    pub fn new(mem: Arc<DmaMemory>, offset: usize, iova: u64, size: u16, event_idx: bool) -> Result<Self, RingError> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(RingError::BadSize(size));
        }
        // mmap is page aligned, so an aligned offset is an aligned address;
        // the IOVA must be aligned too for the device's sake.
        if offset % 16 != 0 || iova % 16 != 0 {
            return Err(RingError::Misaligned(offset));
        }
        let layout = RingLayout::new(size);
        if offset.checked_add(layout.total).map_or(true, |end| end > mem.len()) {
            return Err(RingError::NoRoom { offset, need: layout.total, have: mem.len() });
        }
        mem.write(offset, &vec![0u8; layout.total]);
        let n = size as usize;
        let next: Box<[u16]> = (0..n).map(|i| ((i + 1) % n) as u16).collect();
        Ok(DriverQueue {
            mem,
            offset,
            iova,
            size,
            layout,
            event_idx,
            free_head: 0,
            free_tail: size - 1,
            num_free: size,
            next,
            chain_len: vec![0; n].into_boxed_slice(),
            tokens: vec![None; n].into_boxed_slice(),
            avail_shadow: 0,
            published: 0,
            kick_old: 0,
            last_used: 0,
            used_cache: 0,
            irq_enabled: true,
            in_order: false,
            avail_heads: vec![0; n].into_boxed_slice(),
            writable_len: vec![0; n].into_boxed_slice(),
            batch_left: 0,
            batch_len: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn layout(&self) -> RingLayout {
        self.layout
    }
    pub fn desc_iova(&self) -> u64 {
        self.iova
    }
    pub fn avail_iova(&self) -> u64 {
        self.iova + self.layout.avail as u64
    }
    pub fn used_iova(&self) -> u64 {
        self.iova + self.layout.used as u64
    }
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    pub fn memory(&self) -> &Arc<DmaMemory> {
        &self.mem
    }
    /// Byte offset of the descriptor table in [`Self::memory`].
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// VIRTIO_F_IN_ORDER was negotiated: accept a used entry that returns
    /// a run of chains (set before the first chain is added).
    pub fn set_in_order(&mut self, on: bool) {
        self.in_order = on;
    }

    /// The used index this driver has consumed up to.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Pointer to byte `rel` of the ring.
    #[inline]
    fn ptr(&self, rel: usize) -> *mut u8 {
        debug_assert!(rel < self.layout.total);
        // SAFETY: `new` checked offset + layout.total <= mem.len(), and every
        // caller passes rel < layout.total, so the result stays in the mapping.
        unsafe { self.mem.as_ptr().add(self.offset + rel) }
    }

    #[inline]
    fn atomic16(&self, rel: usize) -> &AtomicU16 {
        debug_assert!(rel % 2 == 0);
        // SAFETY: rel is even and the ring base is 16-aligned in a page-aligned
        // mapping, so the pointer is 2-aligned; the mapping outlives &self
        // (we hold an Arc). The device accesses these fields concurrently,
        // which is exactly what atomics allow.
        unsafe { AtomicU16::from_ptr(self.ptr(rel).cast::<u16>()) }
    }

    fn avail_flags(&self) -> &AtomicU16 {
        self.atomic16(self.layout.avail)
    }
    fn avail_idx_field(&self) -> &AtomicU16 {
        self.atomic16(self.layout.avail + 2)
    }
    fn used_event_field(&self) -> &AtomicU16 {
        self.atomic16(self.layout.avail + 4 + 2 * self.size as usize)
    }
    fn used_flags_field(&self) -> &AtomicU16 {
        self.atomic16(self.layout.used)
    }
    fn used_idx_field(&self) -> &AtomicU16 {
        self.atomic16(self.layout.used + 2)
    }
    fn avail_event_field(&self) -> &AtomicU16 {
        self.atomic16(self.layout.used + 4 + 8 * self.size as usize)
    }

    fn store_desc(&self, i: u16, d: VringDesc) {
        let le = VringDesc { addr: d.addr.to_le(), len: d.len.to_le(), flags: d.flags.to_le(), next: d.next.to_le() };
        let p = self.ptr(16 * i as usize).cast::<VringDesc>();
        // SAFETY: i < size (callers check), so the 16 bytes at p lie in the
        // descriptor table, 16-aligned. A descriptor being filled is free:
        // the device has no business with it now.
        if unsafe { std::ptr::read_volatile(p) } == le {
            // What the device will read is there already (written and
            // published before): not storing keeps the line shared.
            return;
        }
        // SAFETY: as above. The device must not read a descriptor before it
        // is published, so a volatile (non-atomic) write suffices; the
        // Release store of avail.idx orders it.
        unsafe { std::ptr::write_volatile(p, le) }
    }

    /// The ring slot of free-running index `i`: the size is a power of two
    /// (`new` refuses others), so a mask, not a division per entry.
    #[inline]
    fn slot(&self, i: u16) -> usize {
        (i & (self.size - 1)) as usize
    }

    fn store_avail_entry(&mut self, slot: u16, head: u16) {
        self.avail_heads[self.slot(slot)] = head;
        let rel = self.layout.avail + 4 + 2 * self.slot(slot);
        // Relaxed: made visible by the Release store of avail.idx in publish.
        // An entry that holds this head already is not stored again (see
        // `store_desc`).
        let entry = self.atomic16(rel);
        if entry.load(Ordering::Relaxed) != head.to_le() {
            entry.store(head.to_le(), Ordering::Relaxed);
        }
    }

    /// Queue a chain; visible to the device only after [`Self::publish`].
    /// `segments` are `(iova, len, device_writable)`. Returns the head.
    #[inline]
    pub fn add_chain(&mut self, segments: &[Segment], token: u64) -> Result<u16, RingError> {
        if let [(addr, len, writable)] = *segments {
            return self.add_one(addr, len, writable, token);
        }
        self.add_walk(segments, token)
    }

    /// [`Self::add_chain`] of several buffers (or none).
    #[inline(never)]
    fn add_walk(&mut self, segments: &[Segment], token: u64) -> Result<u16, RingError> {
        if segments.is_empty() {
            return Err(RingError::EmptyChain);
        }
        if segments.len() > self.num_free as usize {
            return Err(RingError::Full { need: segments.len(), free: self.num_free });
        }
        let head = self.free_head;
        let mut i = head;
        for (k, &(addr, len, writable)) in segments.iter().enumerate() {
            let last = k + 1 == segments.len();
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            let next = self.next[i as usize];
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.store_desc(i, VringDesc { addr, len, flags, next: if last { 0 } else { next } });
            if !last {
                i = next;
            }
        }
        // i is the chain's tail; the free list continues after it.
        let writable = segments.iter().filter(|s| s.2).fold(0u32, |a, s| a.saturating_add(s.1));
        Ok(self.make_available(head, i, segments.len() as u16, writable, token))
    }

    /// [`Self::add_chain`] of one buffer (nearly every chain a driver
    /// makes): the same ring state, without the walk over segments.
    #[inline]
    fn add_one(&mut self, addr: u64, len: u32, writable: bool, token: u64) -> Result<u16, RingError> {
        if self.num_free == 0 {
            return Err(RingError::Full { need: 1, free: 0 });
        }
        let head = self.free_head;
        let flags = if writable { VRING_DESC_F_WRITE } else { 0 };
        self.store_desc(head, VringDesc { addr, len, flags, next: 0 });
        Ok(self.make_available(head, head, 1, if writable { len } else { 0 }, token))
    }

    /// The bookkeeping of both adds, once the chain `head..=tail` of `n`
    /// descriptors is written: the free list goes on after `tail`, the
    /// chain's length, writable bytes and token are kept, and `head` goes
    /// into the next avail slot (unpublished). Returns `head`.
    #[inline]
    fn make_available(&mut self, head: u16, tail: u16, n: u16, writable_len: u32, token: u64) -> u16 {
        self.free_head = self.next[tail as usize];
        self.num_free -= n;
        self.chain_len[head as usize] = n;
        self.writable_len[head as usize] = writable_len;
        self.tokens[head as usize] = Some(token);
        self.store_avail_entry(self.avail_shadow, head);
        self.avail_shadow = self.avail_shadow.wrapping_add(1);
        head
    }

    /// Ask for the lines the next `n` one-descriptor [`Self::add_chain`]s
    /// will write, for writing: their descriptors (the free list's next
    /// entries) and avail slots. The device read them last, so each is on
    /// its core; requested together they arrive together instead of each
    /// store waiting for its own line. A hint only.
    pub fn prefetch_adds(&self, n: usize) {
        let mut i = self.free_head;
        let mut last_line = usize::MAX;
        for _ in 0..n.min(self.num_free as usize) {
            if i >= self.size {
                break;
            }
            let p = self.ptr(16 * i as usize);
            if p as usize >> 6 != last_line {
                last_line = p as usize >> 6;
                crate::mem::prefetch::lines(p, 16, true);
            }
            i = self.next[i as usize];
        }
        let first = self.layout.avail + 4 + 2 * self.slot(self.avail_shadow);
        let last = self.layout.avail + 4 + 2 * self.slot(self.avail_shadow.wrapping_add(n.max(1) as u16 - 1));
        crate::mem::prefetch::lines(self.ptr(first), 2, true);
        crate::mem::prefetch::lines(self.ptr(last), 2, true);
    }

    /// The token of the chain `k` places after the next one to come back,
    /// among those the used index last read says are back, if the device
    /// returns chains in the order they were made available (every device
    /// here does; a hint for prefetching, never trusted). Chains not back
    /// yet are not named: their buffers may be the device's to write now.
    #[inline]
    pub fn token_ahead(&self, k: u16) -> Option<u64> {
        let back = self.used_cache.wrapping_sub(self.last_used).min(self.published.wrapping_sub(self.last_used));
        if k >= back {
            return None;
        }
        let head = self.avail_heads[self.slot(self.last_used.wrapping_add(k))];
        self.tokens.get(head as usize).copied().flatten()
    }

    /// Make every chain added so far visible to the device.
    pub fn publish(&mut self) {
        // Release: descriptors and avail entries written above become visible
        // before the device's Acquire load of avail.idx can see the new value.
        self.avail_idx_field().store(self.avail_shadow.to_le(), Ordering::Release);
        self.published = self.avail_shadow;
    }

    /// Does the device want a notification for what was published since the
    /// last call? Honours EVENT_IDX (avail_event) or VRING_USED_F_NO_NOTIFY.
    pub fn needs_kick(&mut self) -> bool {
        // Full fence: our avail.idx store must be visible before we read the
        // device's suppression field. The device re-enables notifications and
        // then re-reads avail.idx after its own fence; without this fence both
        // sides could miss each other and the queue would stall.
        fence(Ordering::SeqCst);
        let old = self.kick_old;
        let new = self.published;
        self.kick_old = new;
        if old == new {
            return false;
        }
        if self.event_idx {
            let event = u16::from_le(self.avail_event_field().load(Ordering::Relaxed));
            vring_need_event(event, new, old)
        } else {
            u16::from_le(self.used_flags_field().load(Ordering::Relaxed)) & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Take the next used chain back: `(token, len written by the device)`.
    ///
    /// With IN_ORDER one used entry may stand for a run of chains (virtio
    /// 1.3 §2.7.9): the entry at the next used slot names the run's last
    /// chain, and every chain made available before it and not yet taken
    /// back is returned too, in the order they were made available, each
    /// with its whole writable length (the last one with the entry's); the
    /// used index moves on by the run. The id must be one of the chains the
    /// device may complete now (published, in flight, within the used
    /// index), or it is an error, as a bad id is without IN_ORDER.
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<(u64, u32)>, RingError> {
        if self.batch_left > 0 {
            return self.pop_batched().map(Some);
        }
        let mut used = self.used_cache;
        if used == self.last_used {
            // Acquire: the used element written before the device's Release
            // store of used.idx is visible once we see the new index. Loaded
            // only when the entries seen last time are consumed: the line
            // bounces between cores on every read.
            used = u16::from_le(self.used_idx_field().load(Ordering::Acquire));
            self.used_cache = used;
        }
        let ahead = used.wrapping_sub(self.last_used);
        if ahead == 0 {
            // The element the device writes next, mostly in another line
            // than the index: asked for on every empty poll, it travels
            // with the index instead of one miss after it. A hint only.
            let rel = self.layout.used + 4 + 8 * self.slot(self.last_used);
            crate::mem::prefetch::line(self.ptr(rel));
            return Ok(None);
        }
        if ahead > self.size {
            return Err(RingError::UsedIdxJump { used, last: self.last_used, ahead, size: self.size });
        }
        let rel = self.layout.used + 4 + 8 * self.slot(self.last_used);
        // SAFETY: the slot index is reduced mod size, so the 8-byte element is
        // inside the used ring and 4-aligned (used ring is 4-aligned). The
        // element is read once into locals; ordering comes from the Acquire above.
        let (id, len) = unsafe {
            let p = self.ptr(rel).cast::<u32>();
            (u32::from_le(std::ptr::read_volatile(p)), u32::from_le(std::ptr::read_volatile(p.add(1))))
        };
        if self.in_order && id < self.size as u32 {
            if let Some(r) = self.start_run(id, len, ahead) {
                return r.map(Some);
            }
        }
        // The entry is consumed even when bad, so a broken device produces
        // one error per bad entry rather than an endless loop.
        self.last_used = self.last_used.wrapping_add(1);
        self.update_used_event();
        if id >= self.size as u32 {
            return Err(RingError::UsedIdOutOfRange { id, size: self.size });
        }
        let Some(token) = self.tokens[id as usize].take() else {
            return Err(RingError::UsedIdNotInFlight { id });
        };
        if self.in_order {
            // In flight, but not where the entry may complete it: put it
            // back (it is still the device's).
            self.tokens[id as usize] = Some(token);
            return Err(RingError::UsedIdOutOfOrder { id });
        }
        self.free_chain(id as u16);
        Ok(Some((token, len)))
    }

    /// IN_ORDER: the run of chains the used entry `id` may complete
    /// (published, not taken back, and within the used index, in the order
    /// they were made available: the private copy, not the shared ring),
    /// and its first chain; `None` if `id` completes none. Out of line:
    /// `pop_used` stays small enough to inline.
    #[inline(never)]
    fn start_run(&mut self, id: u32, len: u32, ahead: u16) -> Option<Result<(u64, u32), RingError>> {
        let window = ahead.min(self.published.wrapping_sub(self.last_used)).min(self.size);
        let i = (0..window).find(|&i| {
            let at = self.slot(self.last_used.wrapping_add(i));
            self.avail_heads[at] as u32 == id && self.tokens[id as usize].is_some()
        })?;
        self.batch_left = i + 1;
        self.batch_len = len;
        Some(self.pop_batched())
    }

    /// The next chain of an IN_ORDER run: the oldest one not taken back.
    fn pop_batched(&mut self) -> Result<(u64, u32), RingError> {
        let head = self.avail_heads[self.slot(self.last_used)];
        self.last_used = self.last_used.wrapping_add(1);
        self.update_used_event();
        self.batch_left -= 1;
        // Only a raw test chain (push_avail_raw) can sit in the run without
        // being recorded: an error, and the run ends there.
        let token = match self.tokens.get_mut(head as usize).and_then(Option::take) {
            Some(t) => t,
            None => {
                self.batch_left = 0;
                return Err(RingError::UsedIdNotInFlight { id: head as u32 });
            }
        };
        let len = if self.batch_left == 0 { self.batch_len } else { self.writable_len[head as usize] };
        self.free_chain(head);
        Ok((token, len))
    }

    /// Return a chain to the free list, walking the private links only.
    ///
    /// With IN_ORDER chains come back in the order they were taken from
    /// the list, so the oldest in flight always lies right after the free
    /// run: the links stay `x -> x + 1` (mod size), and descriptors are
    /// used in table order as the spec asks of the driver (§2.7.5.1:
    /// `next` is x + 1, 0 after the last).
    #[inline]
    fn free_chain(&mut self, head: u16) {
        let n = self.chain_len[head as usize];
        if self.in_order {
            self.num_free += n;
            return;
        }
        let mut tail = head;
        for _ in 1..n {
            tail = self.next[tail as usize];
        }
        // FIFO: a chain freed joins the tail. With chains completed in the
        // order they were made available (every device here), descriptor d
        // then always fills avail slot d (mod size) with the same buffer,
        // so the unchanged descriptors and avail entries are not written
        // again (see `store_desc`): their lines stay valid in the device's
        // cache instead of moving to this core and back every frame.
        if self.num_free == 0 {
            self.free_head = head;
        } else {
            self.next[self.free_tail as usize] = head;
        }
        self.free_tail = tail;
        self.num_free += n;
    }

    #[inline]
    fn update_used_event(&self) {
        if self.event_idx && self.irq_enabled {
            // Relaxed: the device reads used_event after its own full fence
            // following the used.idx update; a late value costs one interrupt.
            self.used_event_field().store(self.last_used.to_le(), Ordering::Relaxed);
        }
    }

    /// Ask the device for interrupts again. Returns true when used entries
    /// are already pending, so the caller must poll before sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        self.irq_enabled = true;
        if self.event_idx {
            self.used_event_field().store(self.last_used.to_le(), Ordering::Relaxed);
        }
        self.avail_flags().store(0, Ordering::Relaxed);
        // Full fence: the device must see the re-enabled state before we
        // re-check used.idx, or an entry added in between would not interrupt.
        fence(Ordering::SeqCst);
        u16::from_le(self.used_idx_field().load(Ordering::Acquire)) != self.last_used
    }

    /// Tell the device not to interrupt (best effort, as the spec allows).
    pub fn disable_interrupts(&mut self) {
        self.irq_enabled = false;
        if self.event_idx {
            // Half the index space away: with at most 32768 chains in flight
            // the used index cannot pass it before the driver catches up.
            self.used_event_field().store(self.last_used.wrapping_add(0x8000).to_le(), Ordering::Relaxed);
        }
        self.avail_flags().store(VRING_AVAIL_F_NO_INTERRUPT.to_le(), Ordering::Relaxed);
    }

    // Raw access for tests that build malformed rings on purpose.

    /// Overwrite descriptor `i` directly; the free list is not touched.
    pub fn write_desc(&mut self, i: u16, d: VringDesc) -> Result<(), RingError> {
        if i >= self.size {
            return Err(RingError::DescIndex { index: i, size: self.size });
        }
        self.store_desc(i, d);
        Ok(())
    }

    /// Put any `head` (even out of range) in the next avail slot, unpublished.
    pub fn push_avail_raw(&mut self, head: u16) {
        self.store_avail_entry(self.avail_shadow, head);
        self.avail_shadow = self.avail_shadow.wrapping_add(1);
    }

    /// Store avail.idx as given (Release), e.g. to jump past the queue size.
    pub fn set_avail_idx_raw(&mut self, idx: u16) {
        self.avail_shadow = idx;
        self.publish();
    }

    /// The published avail.idx.
    pub fn avail_idx(&self) -> u16 {
        u16::from_le(self.avail_idx_field().load(Ordering::Relaxed))
    }

    /// The device's used.idx (Acquire).
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.used_idx_field().load(Ordering::Acquire))
    }

    /// avail_event as the device last wrote it.
    pub fn avail_event(&self) -> u16 {
        u16::from_le(self.avail_event_field().load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::virtio::VRING_DESC_F_NEXT;

    /// A device that walks the same memory synchronously.
    struct TestDevice {
        mem: Arc<DmaMemory>,
        off: usize,
        size: u16,
        lay: RingLayout,
        last_avail: u16,
        used_idx: u16,
    }

    impl TestDevice {
        fn new(q: &DriverQueue) -> Self {
            TestDevice {
                mem: q.memory().clone(),
                off: q.offset(),
                size: q.size(),
                lay: q.layout(),
                last_avail: 0,
                used_idx: 0,
            }
        }
        fn r16(&self, rel: usize) -> u16 {
            let mut b = [0u8; 2];
            self.mem.read(self.off + rel, &mut b);
            u16::from_le_bytes(b)
        }
        fn w16(&self, rel: usize, v: u16) {
            self.mem.write(self.off + rel, &v.to_le_bytes());
        }
        fn desc(&self, i: u16) -> VringDesc {
            let mut b = [0u8; 16];
            self.mem.read(self.off + 16 * i as usize, &mut b);
            VringDesc {
                addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
                flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
                next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
            }
        }
        /// Next available chain as its descriptors, or None.
        fn take(&mut self) -> Option<(u16, Vec<VringDesc>)> {
            let idx = self.r16(self.lay.avail + 2);
            if idx == self.last_avail {
                return None;
            }
            let head = self.r16(self.lay.avail + 4 + 2 * (self.last_avail % self.size) as usize);
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut chain = vec![];
            let mut i = head;
            loop {
                let d = self.desc(i);
                chain.push(d);
                if d.flags & VRING_DESC_F_NEXT == 0 || chain.len() > self.size as usize {
                    break;
                }
                i = d.next;
            }
            Some((head, chain))
        }
        fn put_used(&mut self, id: u32, len: u32) {
            let rel = self.lay.used + 4 + 8 * (self.used_idx % self.size) as usize;
            self.mem.write(self.off + rel, &id.to_le_bytes());
            self.mem.write(self.off + rel + 4, &len.to_le_bytes());
            self.used_idx = self.used_idx.wrapping_add(1);
            self.w16(self.lay.used + 2, self.used_idx);
        }
        fn set_avail_event(&self, v: u16) {
            self.w16(self.lay.used + 4 + 8 * self.size as usize, v);
        }
        fn used_event(&self) -> u16 {
            self.r16(self.lay.avail + 4 + 2 * self.size as usize)
        }
    }

    fn queue(size: u16, event_idx: bool) -> DriverQueue {
        let mem = Arc::new(DmaMemory::new("ring-test", 64 * 1024).unwrap());
        DriverQueue::new(mem, 0x100, 0x4000_0100, size, event_idx).unwrap()
    }

    #[test]
    fn layout_alignment_and_iovas() {
        let l = RingLayout::new(256);
        assert_eq!(l.avail, 4096);
        assert_eq!(l.used, (4096 + 6 + 512usize).next_multiple_of(4));
        assert_eq!(l.used % 4, 0);
        assert_eq!(l.total, l.used + 6 + 8 * 256);
        // Size 1: avail ring of 8 bytes ends at 24, used at 24.
        let l1 = RingLayout::new(1);
        assert_eq!((l1.avail, l1.used), (16, 24));
        let l2 = RingLayout::new(2);
        // 32 bytes of descriptors + 10 of avail = 42, rounded up to 44.
        assert_eq!(l2.used, 44);
        let q = queue(8, false);
        assert_eq!(q.desc_iova(), 0x4000_0100);
        assert_eq!(q.avail_iova(), 0x4000_0100 + 128);
        assert_eq!(q.used_iova() % 4, 0);
    }

    #[test]
    fn rejects_bad_geometry() {
        let mem = Arc::new(DmaMemory::new("ring-test", 4096).unwrap());
        assert_eq!(DriverQueue::new(mem.clone(), 0, 0, 3, false).err(), Some(RingError::BadSize(3)));
        assert_eq!(DriverQueue::new(mem.clone(), 0, 0, 0, false).err(), Some(RingError::BadSize(0)));
        assert_eq!(DriverQueue::new(mem.clone(), 8, 0, 4, false).err(), Some(RingError::Misaligned(8)));
        assert!(matches!(DriverQueue::new(mem, 0, 0, 256, false), Err(RingError::NoRoom { .. })));
    }

    #[test]
    fn multi_segment_chains_round_trip() {
        let mut q = queue(8, false);
        let mut dev = TestDevice::new(&q);
        let h1 = q.add_chain(&[(0x1000, 12, false), (0x2000, 100, false), (0x3000, 1, true)], 11).unwrap();
        let h2 = q.add_chain(&[(0x5000, 64, true)], 22).unwrap();
        assert_eq!(q.num_free(), 4);
        // Not yet published: the device sees nothing.
        assert!(dev.take().is_none());
        q.publish();
        assert_eq!(q.avail_idx(), 2);
        let (head, chain) = dev.take().unwrap();
        assert_eq!(head, h1);
        assert_eq!(chain.len(), 3);
        assert_eq!((chain[0].addr, chain[0].len, chain[0].flags & VRING_DESC_F_WRITE), (0x1000, 12, 0));
        assert_eq!((chain[1].addr, chain[1].len), (0x2000, 100));
        assert_eq!((chain[2].addr, chain[2].flags), (0x3000, VRING_DESC_F_WRITE));
        let (head2, chain2) = dev.take().unwrap();
        assert_eq!(head2, h2);
        assert_eq!(chain2.len(), 1);
        assert!(dev.take().is_none());
        // Complete out of order.
        dev.put_used(h2 as u32, 64);
        dev.put_used(h1 as u32, 1);
        assert_eq!(q.pop_used().unwrap(), Some((22, 64)));
        assert_eq!(q.pop_used().unwrap(), Some((11, 1)));
        assert_eq!(q.pop_used().unwrap(), None);
        assert_eq!(q.num_free(), 8);
        assert_eq!(q.used_idx(), 2);
    }

    #[test]
    fn full_queue_refuses_and_free_list_is_reused() {
        let mut q = queue(4, false);
        let mut dev = TestDevice::new(&q);
        q.add_chain(&[(0, 1, false), (0, 1, false), (0, 1, false)], 1).unwrap();
        assert_eq!(q.add_chain(&[(0, 1, false), (0, 1, false)], 2), Err(RingError::Full { need: 2, free: 1 }));
        assert_eq!(q.add_chain(&[], 2), Err(RingError::EmptyChain));
        let last = q.add_chain(&[(0, 1, false)], 2).unwrap();
        assert_eq!(q.num_free(), 0);
        q.publish();
        let (h, _) = dev.take().unwrap();
        dev.take().unwrap();
        dev.put_used(h as u32, 0);
        assert_eq!(q.pop_used().unwrap(), Some((1, 0)));
        // The three freed descriptors are usable again, as one chain.
        assert_eq!(q.num_free(), 3);
        let h3 = q.add_chain(&[(7, 1, false), (8, 1, false), (9, 1, false)], 3).unwrap();
        q.publish();
        let (hd, chain) = dev.take().unwrap();
        assert_eq!(hd, h3);
        assert_eq!(chain.iter().map(|d| d.addr).collect::<Vec<_>>(), vec![7, 8, 9]);
        // None of the reused descriptors is the one still in flight.
        assert_ne!(h3, last);
        dev.put_used(last as u32, 0);
        dev.put_used(h3 as u32, 0);
        assert_eq!(q.pop_used().unwrap(), Some((2, 0)));
        assert_eq!(q.pop_used().unwrap(), Some((3, 0)));
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn indices_wrap_past_u16_max() {
        let mut q = queue(4, false);
        let mut dev = TestDevice::new(&q);
        for round in 0..70_000u32 / 3 {
            for k in 0..3u64 {
                q.add_chain(&[(k, 1, true)], round as u64 * 3 + k).unwrap();
            }
            q.publish();
            for _ in 0..3 {
                let (h, _) = dev.take().unwrap();
                dev.put_used(h as u32, 5);
            }
            for k in 0..3u64 {
                assert_eq!(q.pop_used().unwrap(), Some((round as u64 * 3 + k, 5)));
            }
        }
        assert_eq!(q.pop_used().unwrap(), None);
        let total = (70_000u32 / 3 * 3) as u16; // wrapped value
        assert_eq!(q.avail_idx(), total);
        assert_eq!(q.used_idx(), total);
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn event_idx_kick_decisions() {
        let mut q = queue(8, true);
        let mut dev = TestDevice::new(&q);
        // Device wants a kick once avail idx passes 0 (avail_event = 0).
        dev.set_avail_event(0);
        q.add_chain(&[(0, 1, false)], 0).unwrap();
        q.publish();
        assert!(q.needs_kick());
        // Nothing new published: no kick.
        assert!(!q.needs_kick());
        // Device is busy polling: event far behind the next batch.
        dev.take();
        dev.set_avail_event(0x4000);
        q.add_chain(&[(0, 1, false)], 1).unwrap();
        q.add_chain(&[(0, 1, false)], 2).unwrap();
        q.publish();
        assert!(!q.needs_kick());
        // Device asks to be told when entry 4 (idx 4 -> 5) appears.
        dev.set_avail_event(4);
        q.add_chain(&[(0, 1, false)], 3).unwrap(); // idx 3 -> 4: not yet
        q.publish();
        assert!(!q.needs_kick());
        q.add_chain(&[(0, 1, false)], 4).unwrap();
        q.add_chain(&[(0, 1, false)], 5).unwrap(); // 4 -> 6 crosses event 4
        q.publish();
        assert!(q.needs_kick());
    }

    #[test]
    fn no_notify_flag_without_event_idx() {
        let mut q = queue(8, false);
        let dev = TestDevice::new(&q);
        q.add_chain(&[(0, 1, false)], 0).unwrap();
        q.publish();
        assert!(q.needs_kick());
        dev.w16(dev.lay.used, VRING_USED_F_NO_NOTIFY);
        q.add_chain(&[(0, 1, false)], 1).unwrap();
        q.publish();
        assert!(!q.needs_kick());
        dev.w16(dev.lay.used, 0);
        q.add_chain(&[(0, 1, false)], 2).unwrap();
        q.publish();
        assert!(q.needs_kick());
    }

    #[test]
    fn interrupt_suppression_fields() {
        let mut q = queue(8, true);
        let mut dev = TestDevice::new(&q);
        q.add_chain(&[(0, 1, true)], 0).unwrap();
        q.publish();
        let (h, _) = dev.take().unwrap();
        dev.put_used(h as u32, 1);
        q.disable_interrupts();
        assert_eq!(dev.r16(dev.lay.avail), VRING_AVAIL_F_NO_INTERRUPT);
        assert_eq!(dev.used_event(), 0x8000);
        // An entry is pending, so enabling reports it must be polled first.
        assert!(q.enable_interrupts());
        assert_eq!(dev.r16(dev.lay.avail), 0);
        assert_eq!(dev.used_event(), 0);
        q.pop_used().unwrap().unwrap();
        // With interrupts on, used_event follows consumption.
        assert_eq!(dev.used_event(), 1);
        assert!(!q.enable_interrupts());
    }

    #[test]
    fn bad_used_entries_are_errors() {
        let mut q = queue(8, false);
        let mut dev = TestDevice::new(&q);
        let h = q.add_chain(&[(0, 1, true)], 9).unwrap();
        q.publish();
        dev.take().unwrap();
        dev.put_used(8, 0); // out of range
        dev.put_used(h as u32 + 1, 0); // in range, not in flight
        dev.put_used(h as u32, 3); // fine
        dev.put_used(h as u32, 3); // already returned
        assert_eq!(q.pop_used(), Err(RingError::UsedIdOutOfRange { id: 8, size: 8 }));
        assert_eq!(q.pop_used(), Err(RingError::UsedIdNotInFlight { id: h as u32 + 1 }));
        assert_eq!(q.pop_used(), Ok(Some((9, 3))));
        assert_eq!(q.pop_used(), Err(RingError::UsedIdNotInFlight { id: h as u32 }));
        assert_eq!(q.pop_used(), Ok(None));
        assert_eq!(q.num_free(), 8);
        // A used idx far beyond what could be outstanding.
        dev.w16(dev.lay.used + 2, q.last_used().wrapping_add(9));
        assert!(matches!(q.pop_used(), Err(RingError::UsedIdxJump { ahead: 9, .. })));
    }

    #[test]
    fn raw_accessors_write_what_they_are_told() {
        let mut q = queue(8, false);
        let mut dev = TestDevice::new(&q);
        q.write_desc(3, VringDesc { addr: 0xdead, len: 7, flags: VRING_DESC_F_NEXT, next: 3 }).unwrap();
        assert!(q.write_desc(8, VringDesc::default()).is_err());
        q.push_avail_raw(3);
        q.set_avail_idx_raw(1);
        assert_eq!(q.avail_idx(), 1);
        let (h, chain) = dev.take().unwrap();
        assert_eq!(h, 3);
        // The loop is visible to the device (bounded by our test device).
        assert!(chain.len() > 8 && chain.iter().all(|d| d.addr == 0xdead));
        q.set_avail_idx_raw(100);
        assert_eq!(q.avail_idx(), 100);
    }
}
