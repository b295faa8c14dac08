//! Driver side of a packed virtqueue (virtio 1.3 §2.8) in shared
//! [`DmaMemory`].
//!
//! Layout (one block, 16-aligned): the descriptor ring (16 bytes per
//! slot), then the driver event suppression area (4 bytes, we write it),
//! then the device's (4 bytes, we read it). The device is untrusted: a used
//! descriptor is read once (flags with Acquire, then id and len), its id
//! checked against the chains in flight, and the driver's own record of
//! each chain (its slots, its token) decides what is freed, never the ring.
//!
//! Ordering: a chain's descriptors and the flags of every head but the
//! batch's first are plain stores; `publish` stores the first head's flags
//! last, with Release, so the device sees each batch whole (§2.8.21). Kick
//! and interrupt decisions put a SeqCst fence between our store and the
//! load of the device's state, as the device does on its side.

use std::sync::atomic::{fence, AtomicU16, AtomicU32, Ordering};
use std::sync::Arc;

use super::dma::DmaMemory;
use super::ring::{RingError, Segment};
use crate::uapi::virtio::{
    packed_ring_size, vring_need_event, PackedDesc, PACKED_EVENT_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_PACKED_EVENT_FLAG_DESC, VRING_PACKED_EVENT_FLAG_DISABLE, VRING_PACKED_EVENT_FLAG_ENABLE,
    VRING_PACKED_EVENT_F_WRAP_CTR,
};
use crate::virtq::packed::{avail_bits, is_used};
use crate::virtq::RingPos;

/// Byte layout of one packed ring, relative to the descriptor ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    /// Driver event suppression area (VQ "driver area").
    pub driver: usize,
    /// Device event suppression area (VQ "device area").
    pub device: usize,
    pub total: usize,
}

impl PackedLayout {
    pub const fn new(size: u16) -> Self {
        let driver = packed_ring_size(size);
        PackedLayout { driver, device: driver + PACKED_EVENT_SIZE, total: driver + 2 * PACKED_EVENT_SIZE }
    }
}

/// A driver-owned packed virtqueue.
pub struct PackedDriverQueue {
    mem: Arc<DmaMemory>,
    offset: usize,
    iova: u64,
    size: u16,
    layout: PackedLayout,
    event_idx: bool,
    /// Next slot to fill.
    avail: RingPos,
    /// Next slot to look at for a used descriptor.
    used: RingPos,
    num_free: u16,
    free_ids: Vec<u16>,
    /// Per buffer id: the slots its chain took.
    chain_len: Box<[u16]>,
    /// Per buffer id: `Some(token)` while the device owns the chain.
    tokens: Box<[Option<u64>]>,
    /// Heads added and not yet published: (slot, flags), in ring order.
    /// Capacity `size`, never grows.
    unpublished: Vec<(u16, u16)>,
    /// Slots made available since the last kick decision.
    added: u16,
    /// Chains published, and chains taken back, counted from creation.
    avail_count: u16,
    used_count: u16,
    irq_enabled: bool,
    /// VIRTIO_F_IN_ORDER negotiated: one used descriptor may complete a
    /// run of chains (see [`Self::pop_used`]).
    in_order: bool,
    /// Buffer id per chain number (chains added, counted from creation,
    /// mod size): the order chains were made available in, private.
    order: Box<[u16]>,
    /// Per buffer id: bytes the chain lets the device write (the length of
    /// a chain an IN_ORDER run returns without a descriptor of its own).
    writable_len: Box<[u32]>,
    /// Chains of the current IN_ORDER run not yet taken back, and the
    /// length in the run's descriptor (its last chain's).
    batch_left: u16,
    batch_len: u32,
}

impl PackedDriverQueue {
    /// Lay out a queue of `size` entries at `offset` in `mem`, which the
    /// device sees at `iova`. The ring is zeroed, so every slot starts
    /// unavailable (a zero flags word is neither available nor used for
    /// wrap counters that start at 1).
    pub fn new(mem: Arc<DmaMemory>, offset: usize, iova: u64, size: u16, event_idx: bool) -> Result<Self, RingError> {
        // vhost-vdpa takes power-of-two sizes only, for both formats.
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(RingError::BadSize(size));
        }
        if offset % 16 != 0 || iova % 16 != 0 {
            return Err(RingError::Misaligned(offset));
        }
        let layout = PackedLayout::new(size);
        if offset.checked_add(layout.total).map_or(true, |end| end > mem.len()) {
            return Err(RingError::NoRoom { offset, need: layout.total, have: mem.len() });
        }
        mem.write(offset, &vec![0u8; layout.total]);
        let n = size as usize;
        let start = RingPos { idx: 0, wrap: true };
        Ok(PackedDriverQueue {
            mem,
            offset,
            iova,
            size,
            layout,
            event_idx,
            avail: start,
            used: start,
            num_free: size,
            free_ids: (0..size).rev().collect(),
            chain_len: vec![0; n].into_boxed_slice(),
            tokens: vec![None; n].into_boxed_slice(),
            unpublished: Vec::with_capacity(n),
            added: 0,
            avail_count: 0,
            used_count: 0,
            irq_enabled: true,
            in_order: false,
            order: vec![0; n].into_boxed_slice(),
            writable_len: vec![0; n].into_boxed_slice(),
            batch_left: 0,
            batch_len: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    pub fn layout(&self) -> PackedLayout {
        self.layout
    }
    pub fn desc_iova(&self) -> u64 {
        self.iova
    }
    /// The driver event suppression area (VHOST_SET_VRING_ADDR's "avail").
    pub fn driver_area_iova(&self) -> u64 {
        self.iova + self.layout.driver as u64
    }
    /// The device event suppression area (VHOST_SET_VRING_ADDR's "used").
    pub fn device_area_iova(&self) -> u64 {
        self.iova + self.layout.device as u64
    }
    pub fn num_free(&self) -> u16 {
        self.num_free
    }
    pub fn memory(&self) -> &Arc<DmaMemory> {
        &self.mem
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// The next slot to fill.
    pub fn avail_pos(&self) -> RingPos {
        self.avail
    }
    /// The next slot to read a used descriptor from.
    pub fn used_pos(&self) -> RingPos {
        self.used
    }
    /// VIRTIO_F_IN_ORDER was negotiated: accept a used descriptor that
    /// returns a run of chains (set before the first chain is added).
    pub fn set_in_order(&mut self, on: bool) {
        self.in_order = on;
    }

    /// Chains published so far (mod 2^16).
    pub fn avail_count(&self) -> u16 {
        self.avail_count
    }
    /// Chains taken back so far (mod 2^16).
    pub fn used_count(&self) -> u16 {
        self.used_count
    }

    #[inline]
    fn ptr(&self, rel: usize) -> *mut u8 {
        debug_assert!(rel < self.layout.total);
        // SAFETY: `new` checked offset + layout.total <= mem.len(), and every
        // caller passes rel < layout.total.
        unsafe { self.mem.as_ptr().add(self.offset + rel) }
    }

    #[inline]
    fn desc_ptr(&self, slot: u16) -> *mut PackedDesc {
        debug_assert!(slot < self.size);
        self.ptr(16 * slot as usize).cast()
    }

    #[inline]
    fn flags(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: the flags field of descriptor `slot` (< size) lies in the
        // ring, 2-aligned (16-aligned ring in a page-aligned mapping); the
        // mapping outlives &self. The device writes it concurrently, which
        // an atomic allows.
        unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*self.desc_ptr(slot)).flags)) }
    }

    #[inline]
    fn event(&self, rel: usize) -> &AtomicU32 {
        // SAFETY: `rel` is one of the two event areas, 4 bytes inside the
        // ring block and 4-aligned (16 * size and 16 * size + 4 from a
        // 16-aligned base).
        unsafe { AtomicU32::from_ptr(self.ptr(rel).cast()) }
    }

    fn write_driver_event(&self, off_wrap: u16, flags: u16) {
        // One word, as the device reads it. Relaxed: ordered by the fence
        // of whoever re-checks after it (enable_interrupts, or the device's
        // own fence before its interrupt decision).
        let w = off_wrap as u32 | (flags as u32) << 16;
        self.event(self.layout.driver).store(w.to_le(), Ordering::Relaxed);
    }

    /// Store a descriptor's addr, len and id (not its flags).
    fn store_body(&self, slot: u16, addr: u64, len: u32, id: u16) {
        let p = self.desc_ptr(slot);
        // SAFETY: descriptor `slot` lies in the ring; the slot belongs to
        // the driver (not yet made available), and the device reads it only
        // after the Release store of a head flag that follows.
        unsafe {
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).addr), addr.to_le());
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).len), len.to_le());
            std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).id), id.to_le());
        }
    }

    /// The avail/used bits of slot `next_avail + i` when made available.
    pub fn avail_flags_at(&self, i: u16) -> u16 {
        let mut p = self.avail;
        advance(&mut p, i % self.size, self.size);
        avail_bits(p.wrap)
    }

    /// Queue a chain; visible to the device only after [`Self::publish`].
    /// Returns the buffer id.
    pub fn add_chain(&mut self, segments: &[Segment], token: u64) -> Result<u16, RingError> {
        if segments.is_empty() {
            return Err(RingError::EmptyChain);
        }
        if segments.len() > self.num_free as usize {
            return Err(RingError::Full { need: segments.len(), free: self.num_free });
        }
        // Each chain in flight holds one id and at least one slot, so a free
        // slot means a free id.
        let id = self.free_ids.pop().expect("a free slot implies a free id");
        let descs = segments.iter().enumerate().map(|(k, &(addr, len, writable))| {
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < segments.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            (addr, len, flags)
        });
        self.write_chain(descs, id);
        self.chain_len[id as usize] = segments.len() as u16;
        self.writable_len[id as usize] = segments.iter().filter(|s| s.2).fold(0u32, |a, s| a.saturating_add(s.1));
        self.tokens[id as usize] = Some(token);
        self.num_free -= segments.len() as u16;
        Ok(id)
    }

    /// Write a chain at the avail position (every descriptor with `id` and
    /// the avail bits of its slot, as Linux does), deferring the head's
    /// flags to `publish`.
    fn write_chain(&mut self, descs: impl Iterator<Item = (u64, u32, u16)>, id: u16) {
        let mut head = None;
        for (addr, len, flags) in descs {
            let slot = self.avail.idx;
            let flags = flags | avail_bits(self.avail.wrap);
            self.store_body(slot, addr, len, id);
            if head.is_none() {
                head = Some((slot, flags));
            } else {
                // Relaxed: published by the head's Release store in publish.
                self.flags(slot).store(flags.to_le(), Ordering::Relaxed);
            }
            advance(&mut self.avail, 1, self.size);
            self.added = self.added.saturating_add(1);
        }
        if let Some(h) = head {
            self.note_order(id);
            self.unpublished.push(h);
        }
    }

    /// Record the buffer id of the chain being added (before it joins
    /// `unpublished`).
    fn note_order(&mut self, id: u16) {
        let n = self.avail_count.wrapping_add(self.unpublished.len() as u16);
        self.order[(n % self.size) as usize] = id;
    }

    /// Make every chain added so far visible to the device.
    pub fn publish(&mut self) {
        let Some(&(first, first_flags)) = self.unpublished.first() else { return };
        // Later heads first: the device reaches them only through the first
        // chain, whose head is stored last.
        for &(slot, flags) in &self.unpublished[1..] {
            self.flags(slot).store(flags.to_le(), Ordering::Relaxed);
        }
        // Release: every descriptor written above is visible before the
        // device's Acquire load of this flag can see it available.
        self.flags(first).store(first_flags.to_le(), Ordering::Release);
        self.avail_count = self.avail_count.wrapping_add(self.unpublished.len() as u16);
        self.unpublished.clear();
    }

    /// Does the device want a notification for what was published since
    /// the last call? Honours the device event area (§2.8.10).
    pub fn needs_kick(&mut self) -> bool {
        // Full fence: our flag stores before the device's event area (the
        // device writes it, fences, then re-checks the ring).
        fence(Ordering::SeqCst);
        let n = std::mem::take(&mut self.added);
        if n == 0 {
            return false;
        }
        let w = u32::from_le(self.event(self.layout.device).load(Ordering::Relaxed));
        let (off_wrap, flags) = (w as u16, (w >> 16) as u16);
        match flags {
            VRING_PACKED_EVENT_FLAG_DISABLE => false,
            VRING_PACKED_EVENT_FLAG_DESC if self.event_idx => {
                if n >= self.size {
                    return true;
                }
                let new = self.avail.idx;
                let old = new.wrapping_sub(n);
                let mut event = off_wrap & 0x7fff;
                if (off_wrap >> VRING_PACKED_EVENT_F_WRAP_CTR != 0) != self.avail.wrap {
                    event = event.wrapping_sub(self.size);
                }
                vring_need_event(event, new, old)
            }
            _ => true,
        }
    }

    /// Read the used descriptor at `pos` once: (flags, id, len).
    fn read_used(&self, slot: u16) -> (u16, u16, u32) {
        // Acquire: the id/len and the buffers written before the device's
        // Release store of this flag are visible once we see it used.
        let flags = u16::from_le(self.flags(slot).load(Ordering::Acquire));
        let p = self.desc_ptr(slot);
        // SAFETY: descriptor `slot` lies in the ring; volatile because the
        // device may write it.
        let (id, len) = unsafe {
            (
                u16::from_le(std::ptr::read_volatile(std::ptr::addr_of!((*p).id))),
                u32::from_le(std::ptr::read_volatile(std::ptr::addr_of!((*p).len))),
            )
        };
        (flags, id, len)
    }

    /// Take the next used chain back: `(token, len written by the device)`.
    /// A used descriptor naming an id that is not in flight is an error and
    /// is not consumed: without its chain length the ring cannot be read
    /// on (the queue is broken for this driver).
    ///
    /// With IN_ORDER one used descriptor may stand for a run of chains: it
    /// lies over the run's first slot and names the run's last buffer id;
    /// every published chain made available up to that one and not yet
    /// taken back is returned, in order, each with its whole writable
    /// length (the last with the descriptor's), and the used position moves
    /// past the slots they took. An id in flight but not published yet is
    /// an error ([`RingError::UsedIdOutOfOrder`]), not consumed either.
    pub fn pop_used(&mut self) -> Result<Option<(u64, u32)>, RingError> {
        if self.batch_left > 0 {
            return self.pop_batched().map(Some);
        }
        let (flags, id, len) = self.read_used(self.used.idx);
        if !is_used(flags, self.used.wrap) {
            return Ok(None);
        }
        if id >= self.size {
            return Err(RingError::UsedIdOutOfRange { id: id as u32, size: self.size });
        }
        if self.in_order {
            let Some(run) = self.run_to(self.used_count, id) else {
                return Err(if self.tokens[id as usize].is_none() {
                    RingError::UsedIdNotInFlight { id: id as u32 }
                } else {
                    RingError::UsedIdOutOfOrder { id: id as u32 }
                });
            };
            self.batch_left = run;
            self.batch_len = len;
            return self.pop_batched().map(Some);
        }
        let Some(token) = self.tokens[id as usize].take() else {
            return Err(RingError::UsedIdNotInFlight { id: id as u32 });
        };
        let n = self.chain_len[id as usize];
        self.take_back(id, n);
        Ok(Some((token, len)))
    }

    /// IN_ORDER: how many chains, from chain number `from` on, a used
    /// descriptor naming `id` returns: up to and including `id`'s chain,
    /// among those published and not taken back. `None` when `id` is not
    /// one of them.
    fn run_to(&self, from: u16, id: u16) -> Option<u16> {
        if self.tokens.get(id as usize).map_or(true, Option::is_none) {
            return None;
        }
        let window = self.avail_count.wrapping_sub(from).min(self.size);
        (0..window).find(|&i| self.order[(from.wrapping_add(i) % self.size) as usize] == id).map(|i| i + 1)
    }

    /// The next chain of an IN_ORDER run: the oldest one not taken back.
    fn pop_batched(&mut self) -> Result<(u64, u32), RingError> {
        let id = self.order[(self.used_count % self.size) as usize];
        self.batch_left -= 1;
        // Only a raw test chain (push_raw with an id it could not record)
        // can sit in the run unrecorded: an error, and the run ends there.
        let Some(token) = self.tokens.get_mut(id as usize).and_then(Option::take) else {
            self.batch_left = 0;
            return Err(RingError::UsedIdNotInFlight { id: id as u32 });
        };
        let len = if self.batch_left == 0 { self.batch_len } else { self.writable_len[id as usize] };
        let n = self.chain_len[id as usize];
        self.take_back(id, n);
        Ok((token, len))
    }

    /// Free chain `id` of `n` slots and move the used position past it.
    fn take_back(&mut self, id: u16, n: u16) {
        advance(&mut self.used, n, self.size);
        self.num_free += n;
        self.free_ids.push(id);
        self.used_count = self.used_count.wrapping_add(1);
        if self.event_idx && self.irq_enabled {
            self.write_driver_event(self.used.encode(), VRING_PACKED_EVENT_FLAG_DESC);
        }
    }

    /// Ask the device for interrupts again. Returns true when a used
    /// descriptor is already there, so the caller must poll before sleeping.
    pub fn enable_interrupts(&mut self) -> bool {
        self.irq_enabled = true;
        if self.event_idx {
            self.write_driver_event(self.used.encode(), VRING_PACKED_EVENT_FLAG_DESC);
        } else {
            self.write_driver_event(0, VRING_PACKED_EVENT_FLAG_ENABLE);
        }
        // Full fence: the device must see the re-enabled state before we
        // re-check the ring, or a completion in between would not interrupt.
        fence(Ordering::SeqCst);
        self.used_ready()
    }

    /// Tell the device not to interrupt (best effort, as the spec allows).
    pub fn disable_interrupts(&mut self) {
        self.irq_enabled = false;
        self.write_driver_event(0, VRING_PACKED_EVENT_FLAG_DISABLE);
    }

    /// A used descriptor waits at the used position (or the rest of an
    /// IN_ORDER run is still to be taken back).
    pub fn used_ready(&self) -> bool {
        self.batch_left > 0 || is_used(self.read_used(self.used.idx).0, self.used.wrap)
    }

    /// Look ahead without consuming: the position after every used
    /// descriptor the device has published, and how many chains that is.
    /// Stops at a descriptor naming an id not in flight.
    pub fn peek_used(&self) -> (RingPos, u16) {
        let mut pos = self.used;
        let mut n = 0u16;
        let mut seen = 0u32;
        // The rest of an IN_ORDER run being taken back.
        let mut run = self.batch_left;
        while seen < self.size as u32 {
            if run > 0 {
                let id = self.order[(self.used_count.wrapping_add(n) % self.size) as usize];
                if self.tokens.get(id as usize).map_or(true, Option::is_none) {
                    break;
                }
                let len = self.chain_len[id as usize].max(1);
                advance(&mut pos, len, self.size);
                seen += len as u32;
                n += 1;
                run -= 1;
                continue;
            }
            let (flags, id, _) = self.read_used(pos.idx);
            if !is_used(flags, pos.wrap) || id >= self.size || self.tokens[id as usize].is_none() {
                break;
            }
            if self.in_order {
                match self.run_to(self.used_count.wrapping_add(n), id) {
                    Some(k) => run = k,
                    None => break,
                }
                continue;
            }
            let len = self.chain_len[id as usize].max(1);
            advance(&mut pos, len, self.size);
            seen += len as u32;
            n += 1;
        }
        (pos, n)
    }

    /// The device event area as last written: (off_wrap, flags).
    pub fn device_event(&self) -> (u16, u16) {
        let w = u32::from_le(self.event(self.layout.device).load(Ordering::Relaxed));
        (w as u16, (w >> 16) as u16)
    }

    /// The driver event area as we wrote it: (off_wrap, flags).
    pub fn driver_event(&self) -> (u16, u16) {
        let w = u32::from_le(self.event(self.layout.driver).load(Ordering::Relaxed));
        (w as u16, (w >> 16) as u16)
    }

    // Raw access for tests that build malformed rings on purpose.

    /// Write `descs` at the avail position exactly as given (flags include
    /// whatever avail/used bits the caller chose; see
    /// [`Self::avail_flags_at`]); the first one's flags wait for
    /// [`Self::publish`]. When the last descriptor's id is free and in
    /// range, the chain is recorded under it (token `u64::MAX`), so a
    /// device that completes it does not desynchronise the ring; otherwise
    /// its slots are lost to the driver (the queue is broken anyway).
    pub fn push_raw(&mut self, descs: &[PackedDesc]) {
        if descs.is_empty() {
            return;
        }
        let id = descs[descs.len() - 1].id;
        let n = (descs.len() as u16).min(self.size);
        // In the private order whether recorded or not: a run reaching an
        // unrecorded chain is an error (see pop_batched).
        self.note_order(id);
        if id < self.size && self.tokens[id as usize].is_none() && n <= self.num_free {
            if let Some(i) = self.free_ids.iter().position(|&f| f == id) {
                self.free_ids.swap_remove(i);
                self.tokens[id as usize] = Some(u64::MAX);
                self.chain_len[id as usize] = n;
                self.writable_len[id as usize] = descs[..n as usize]
                    .iter()
                    .filter(|d| d.flags & VRING_DESC_F_WRITE != 0)
                    .fold(0u32, |a, d| a.saturating_add(d.len));
            }
        }
        // The slots are the device's now, recorded or not: the driver never
        // writes past what it has handed out.
        self.num_free = self.num_free.saturating_sub(n);
        let mut head = None;
        for d in &descs[..n as usize] {
            let slot = self.avail.idx;
            self.store_body(slot, d.addr, d.len, d.id);
            if head.is_none() {
                head = Some((slot, d.flags));
            } else {
                self.flags(slot).store(d.flags.to_le(), Ordering::Relaxed);
            }
            advance(&mut self.avail, 1, self.size);
            self.added = self.added.saturating_add(1);
        }
        if let Some(h) = head {
            self.unpublished.push(h);
        }
    }

    /// A chain of `(addr, len, flags)` with the right avail bits on every
    /// descriptor and buffer id `id` on each, unpublished.
    pub fn push_raw_chain(&mut self, descs: &[(u64, u32, u16)], id: u16) {
        let v: Vec<PackedDesc> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| PackedDesc { addr, len, id, flags: flags | self.avail_flags_at(i as u16) })
            .collect();
        self.push_raw(&v);
    }
}

/// Move `n <= size` slots on, flipping the wrap counter at the end.
fn advance(p: &mut RingPos, n: u16, size: u16) {
    let i = p.idx as u32 + n as u32;
    if i >= size as u32 {
        p.idx = (i - size as u32) as u16;
        p.wrap = !p.wrap;
    } else {
        p.idx = i as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtq::packed::used_bits;

    /// A device that walks the same memory synchronously.
    struct TestDevice {
        mem: Arc<DmaMemory>,
        off: usize,
        size: u16,
        lay: PackedLayout,
        avail: RingPos,
        used: RingPos,
    }

    impl TestDevice {
        fn new(q: &PackedDriverQueue) -> Self {
            let start = RingPos { idx: 0, wrap: true };
            TestDevice {
                mem: q.memory().clone(),
                off: q.offset(),
                size: q.size(),
                lay: q.layout(),
                avail: start,
                used: start,
            }
        }
        fn desc(&self, slot: u16) -> PackedDesc {
            let mut b = [0u8; 16];
            self.mem.read(self.off + 16 * slot as usize, &mut b);
            PackedDesc {
                addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
                id: u16::from_le_bytes(b[12..14].try_into().unwrap()),
                flags: u16::from_le_bytes(b[14..16].try_into().unwrap()),
            }
        }
        /// Next available chain: (id, slots, descriptors).
        fn take(&mut self) -> Option<(u16, u16, Vec<PackedDesc>)> {
            let mut v = vec![];
            let mut pos = self.avail;
            loop {
                let d = self.desc(pos.idx);
                if !crate::virtq::packed::is_avail(d.flags, pos.wrap) {
                    assert!(v.is_empty(), "tail not available");
                    return None;
                }
                v.push(d);
                advance(&mut pos, 1, self.size);
                if d.flags & VRING_DESC_F_NEXT == 0 {
                    break;
                }
            }
            self.avail = pos;
            let id = v.last().unwrap().id;
            Some((id, v.len() as u16, v))
        }
        fn put_used(&mut self, id: u16, slots: u16, len: u32) {
            let at = self.off + 16 * self.used.idx as usize;
            self.mem.write(at + 8, &len.to_le_bytes());
            self.mem.write(at + 12, &id.to_le_bytes());
            self.mem.write(at + 14, &used_bits(self.used.wrap).to_le_bytes());
            advance(&mut self.used, slots, self.size);
        }
        fn set_event(&self, off_wrap: u16, flags: u16) {
            let w = off_wrap as u32 | (flags as u32) << 16;
            self.mem.write(self.off + self.lay.device, &w.to_le_bytes());
        }
        fn driver_event(&self) -> (u16, u16) {
            let mut b = [0u8; 4];
            self.mem.read(self.off + self.lay.driver, &mut b);
            let w = u32::from_le_bytes(b);
            (w as u16, (w >> 16) as u16)
        }
    }

    fn queue(size: u16, event_idx: bool) -> PackedDriverQueue {
        let mem = Arc::new(DmaMemory::new("packed-test", 64 * 1024).unwrap());
        PackedDriverQueue::new(mem, 0x100, 0x4000_0100, size, event_idx).unwrap()
    }

    #[test]
    fn layout_and_iovas() {
        let l = PackedLayout::new(256);
        assert_eq!((l.driver, l.device, l.total), (4096, 4100, 4104));
        let q = queue(8, false);
        assert_eq!(q.desc_iova(), 0x4000_0100);
        assert_eq!(q.driver_area_iova(), 0x4000_0100 + 128);
        assert_eq!(q.device_area_iova(), 0x4000_0100 + 132);
        assert_eq!(q.device_area_iova() % 4, 0);
    }

    #[test]
    fn chains_round_trip_out_of_order_and_across_wraps() {
        let mut q = queue(4, false);
        let mut dev = TestDevice::new(&q);
        for round in 0..50u64 {
            let a = q.add_chain(&[(0x1000, 12, false), (0x2000, 100, false), (0x3000, 1, true)], 2 * round).unwrap();
            assert!(dev.take().is_none(), "not visible before publish");
            let b = q.add_chain(&[(0x5000, 64, true)], 2 * round + 1).unwrap();
            assert_eq!(q.num_free(), 0);
            assert!(q.add_chain(&[(0, 1, false)], 9).is_err());
            q.publish();
            let (ida, na, da) = dev.take().unwrap();
            assert_eq!((ida, na), (a, 3));
            assert_eq!(da.iter().map(|d| d.addr).collect::<Vec<_>>(), vec![0x1000, 0x2000, 0x3000]);
            assert_eq!(da[2].flags & VRING_DESC_F_WRITE, VRING_DESC_F_WRITE);
            let (idb, nb, _) = dev.take().unwrap();
            assert_eq!((idb, nb), (b, 1));
            assert!(dev.take().is_none());
            // Completed in the other order.
            dev.put_used(idb, nb, 64);
            dev.put_used(ida, na, 1);
            assert_eq!(q.peek_used().1, 2);
            assert_eq!(q.pop_used().unwrap(), Some((2 * round + 1, 64)));
            assert_eq!(q.pop_used().unwrap(), Some((2 * round, 1)));
            assert_eq!(q.pop_used().unwrap(), None);
            assert_eq!(q.num_free(), 4);
        }
        assert_eq!((q.avail_count(), q.used_count()), (100, 100));
        assert_eq!(q.avail_pos(), q.used_pos());
    }

    #[test]
    fn bad_used_descriptors_are_errors_and_not_consumed() {
        let mut q = queue(8, false);
        let mut dev = TestDevice::new(&q);
        let id = q.add_chain(&[(0, 1, true)], 9).unwrap();
        q.publish();
        dev.take().unwrap();
        dev.put_used(8, 1, 0);
        assert_eq!(q.pop_used(), Err(RingError::UsedIdOutOfRange { id: 8, size: 8 }));
        assert_eq!(q.pop_used(), Err(RingError::UsedIdOutOfRange { id: 8, size: 8 }), "stays there");
        let mut dev = TestDevice::new(&q);
        dev.put_used(id + 1, 1, 0);
        assert_eq!(q.pop_used(), Err(RingError::UsedIdNotInFlight { id: id as u32 + 1 }));
        let mut dev = TestDevice::new(&q);
        dev.put_used(id, 1, 3);
        assert_eq!(q.pop_used(), Ok(Some((9, 3))));
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn kick_decisions_follow_the_device_event_area() {
        let mut q = queue(8, true);
        let mut dev = TestDevice::new(&q);
        // ENABLE: every publish kicks.
        q.add_chain(&[(0, 1, false)], 0).unwrap();
        q.publish();
        assert!(q.needs_kick());
        assert!(!q.needs_kick(), "nothing new");
        dev.take();
        // DISABLE: never.
        dev.set_event(0, VRING_PACKED_EVENT_FLAG_DISABLE);
        q.add_chain(&[(0, 1, false)], 1).unwrap();
        q.publish();
        assert!(!q.needs_kick());
        dev.take();
        // DESC: when slot 4 (wrap 1) becomes available.
        dev.set_event(4 | 0x8000, VRING_PACKED_EVENT_FLAG_DESC);
        q.add_chain(&[(0, 1, false)], 2).unwrap(); // slot 2
        q.publish();
        assert!(!q.needs_kick());
        q.add_chain(&[(0, 1, false)], 3).unwrap(); // slot 3
        q.add_chain(&[(0, 1, false)], 4).unwrap(); // slot 4
        q.publish();
        assert!(q.needs_kick());
        // An event on the next lap (wrap 0, slot 1): slots 5..7 do not reach it.
        dev.set_event(1, VRING_PACKED_EVENT_FLAG_DESC);
        for t in 5..8 {
            while dev.take().is_some() {}
            q.add_chain(&[(0, 1, false)], t).unwrap();
        }
        q.publish();
        assert!(!q.needs_kick(), "slots 5-7 are before the event");
    }

    #[test]
    fn interrupt_suppression_area() {
        let mut q = queue(8, true);
        let mut dev = TestDevice::new(&q);
        q.add_chain(&[(0, 1, true)], 0).unwrap();
        q.publish();
        let (id, n, _) = dev.take().unwrap();
        dev.put_used(id, n, 1);
        q.disable_interrupts();
        assert_eq!(dev.driver_event().1, VRING_PACKED_EVENT_FLAG_DISABLE);
        assert!(q.enable_interrupts(), "a used descriptor is pending");
        assert_eq!(dev.driver_event(), (0x8000, VRING_PACKED_EVENT_FLAG_DESC));
        q.pop_used().unwrap().unwrap();
        assert_eq!(dev.driver_event(), (0x8001, VRING_PACKED_EVENT_FLAG_DESC), "follows consumption");
        assert!(!q.enable_interrupts());
        let mut q = queue(8, false);
        q.enable_interrupts();
        assert_eq!(q.driver_event().1, VRING_PACKED_EVENT_FLAG_ENABLE);
    }

    #[test]
    fn raw_chains_are_recorded_under_their_id() {
        let mut q = queue(8, false);
        let mut dev = TestDevice::new(&q);
        q.push_raw_chain(&[(0x10, 4, VRING_DESC_F_NEXT), (0x20, 4, 0)], 5);
        q.publish();
        let (id, n, d) = dev.take().unwrap();
        assert_eq!((id, n, d[0].id), (5, 2, 5));
        dev.put_used(id, n, 0);
        assert_eq!(q.pop_used(), Ok(Some((u64::MAX, 0))));
        // Wrong bits on the tail: the device sees the head only.
        q.push_raw(&[
            PackedDesc { addr: 0, len: 1, id: 1, flags: VRING_DESC_F_NEXT | q.avail_flags_at(0) },
            PackedDesc { addr: 0, len: 1, id: 1, flags: avail_bits(!q.avail_pos().wrap) },
        ]);
        q.publish();
        assert_eq!(dev.desc(2).flags & 0x8080, avail_bits(true));
        assert_eq!(dev.desc(3).flags & 0x8080, avail_bits(false));
    }
}
