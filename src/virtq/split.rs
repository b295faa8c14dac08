//! The device side of a split virtqueue (virtio 1.3 §2.7).
//!
//! Ring memory is shared with an untrusted driver and may change under us
//! at any time. All accesses are volatile or atomic through raw pointers
//! translated in the queue's address space; the pointers are re-derived
//! whenever the address space publishes a new table.
//!
//! Ordering (both sides follow §2.7.13):
//! - `avail.idx` is loaded with Acquire, so ring entries and descriptors
//!   written before the driver's (Release) store of the index are visible.
//! - `used.idx` is stored with Release, after the used elements and the
//!   buffer contents they describe.
//! - Re-enabling notifications writes the flag/event, then a SeqCst fence,
//!   then re-reads `avail.idx`; the driver does the mirror image, so one of
//!   the two sees the other's update and no kick is lost.

use std::sync::atomic::{fence, AtomicU16, Ordering};

use super::chain::{prewalk_kind, Direction, Lookahead, Single, LOOKAHEAD};
use super::{Malformed, QueueError, RingFormat};
use crate::mem::{prefetch, Access, AddressSpace, Near, ReadGuard, XlateError};
use crate::uapi::virtio::{
    avail_ring_size, desc_table_size, used_ring_size, vring_need_event, VringDesc, VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};

/// Prefetch the first two lines (a small frame and its header) of the
/// buffer a descriptor names, when it is a direct buffer that translates in
/// the current table with the descriptor's access (for writing when the
/// device may write it). A hint only.
#[inline]
pub(super) fn prefetch_buffer(addr: u64, len: u32, flags: u16, space: &AddressSpace, guard: &ReadGuard<'_>) {
    if flags & VRING_DESC_F_INDIRECT != 0 || len == 0 {
        return;
    }
    let write = flags & VRING_DESC_F_WRITE != 0;
    let access = if write { Access::Write } else { Access::Read };
    let len = len.min(128);
    if let Ok(p) = space.load(guard).translate(addr, len as u64, access) {
        prefetch::lines(p, len, write);
    }
}

/// Avail entries whose descriptor lines one `pending_fresh` asks for: a
/// burst's worth.
const DESC_PREFETCH: u16 = 32;

/// A descriptor as read from ring memory (little endian), in host order.
#[inline]
pub(crate) fn from_le(d: VringDesc) -> VringDesc {
    VringDesc {
        addr: u64::from_le(d.addr),
        len: u32::from_le(d.len),
        flags: u16::from_le(d.flags),
        next: u16::from_le(d.next),
    }
}

/// A chain's identity, checked against the queue size: for a split ring the
/// head index taken from the avail ring, for a packed ring the buffer id and
/// the ring slots the chain took. Only the rings make one
/// ([`SplitQueue::pop_head`], the packed walker), so a chain walk or a used
/// element can only name a head the ring handed out; the split walk still
/// re-checks it against its own queue's size (one compare), so a head from
/// another queue cannot index past a descriptor table either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    id: u16,
    /// Ring slots the chain occupied (packed: where the next used
    /// descriptor goes; split: 1, unused).
    slots: u16,
    /// The walk found no device-writable buffer: "used completely" means
    /// 0 bytes written, so with IN_ORDER the chain may be returned without
    /// a used entry of its own (see [`QueueConfig::in_order`]).
    readable_only: bool,
}

impl Head {
    #[inline]
    pub(super) fn new(id: u16, slots: u16) -> Self {
        Head { id, slots, readable_only: false }
    }
    /// The same head, marked by the walk that read its chain.
    #[inline]
    pub(super) fn with_readable_only(self, readable_only: bool) -> Self {
        Head { readable_only, ..self }
    }
    /// Whether the walk found only device-readable buffers.
    #[inline]
    pub fn readable_only(self) -> bool {
        self.readable_only
    }
    /// The head index (split) or buffer id (packed).
    #[inline]
    pub fn index(self) -> u16 {
        self.id
    }
    /// Descriptor-ring slots the chain took (packed rings; 1 for split).
    #[inline]
    pub fn slots(self) -> u16 {
        self.slots
    }
}

/// What the driver configured for one queue (VQ_GET_INFO + features). For
/// a packed ring `avail_addr` is the driver event suppression area and
/// `used_addr` the device's (VQ_GET_INFO's driver and device areas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub index: u32,
    pub size: u16,
    pub desc_addr: u64,
    pub avail_addr: u64,
    pub used_addr: u64,
    /// Where the device starts consuming (set_vring_base): split, the avail
    /// index; packed, the ring slot with the wrap counter in bit 15 (vhost's
    /// encoding). A packed device also starts its used position there.
    pub avail_base: u16,
    pub event_idx: bool,
    pub indirect: bool,
    /// Split or packed (VIRTIO_F_RING_PACKED negotiated).
    pub format: RingFormat,
    /// VIRTIO_F_IN_ORDER negotiated: the device uses chains in the order it
    /// took them (it always does), and a run of completed device-readable
    /// chains is returned with one used entry naming the run's last chain
    /// (virtio 1.3 "In-order use of descriptors", §2.7.9 for split rings
    /// and its packed counterpart in §2.8), written when the run ends: at a
    /// chain with a length the driver needs, or at `publish_used`.
    pub in_order: bool,
}

/// Host pointers into the rings, valid for one table id.
#[derive(Clone, Copy)]
struct RingPtrs {
    table_id: u64,
    desc: *const VringDesc,
    /// Points at `avail.flags`; idx at +2, ring at +4, used_event after it.
    avail: *const u8,
    /// Points at `used.flags`; idx at +2, ring at +4, avail_event after it.
    used: *mut u8,
}

/// Device-side state of one split virtqueue, owned by one thread.
pub struct SplitQueue {
    cfg: QueueConfig,
    ptrs: Option<RingPtrs>,
    /// Next avail ring slot to consume.
    last_avail: u16,
    /// avail.idx at its last read (entries below it are known published).
    avail_cache: u16,
    /// Shadow of used.idx: entries written but not yet published count too.
    used_idx: u16,
    /// used.idx value last made visible to the driver.
    published_used: u16,
    /// used.idx when we last decided about an interrupt (event-idx "old").
    signalled_used: u16,
    notify_enabled: bool,
    /// IN_ORDER: completed device-readable chains not yet given a used
    /// entry (counted in `used_idx` already), and the last one's id.
    batch: u16,
    batch_id: u16,
    /// `size - 1` when the size is a power of two (always, for a queue the
    /// slow path accepted: it refuses other sizes, and the split format
    /// requires one, virtio 1.3 §2.7); 0 otherwise, and ring slots are then
    /// taken `% size`. A mask instead of a division per avail and used slot.
    mask: u16,
}

// SAFETY: the raw pointers point into mappings kept alive by the address
// space's QSBR protocol; the queue is moved to its poll thread and used from
// that thread only.
unsafe impl Send for SplitQueue {}

impl SplitQueue {
    pub fn new(cfg: QueueConfig) -> Self {
        SplitQueue {
            cfg,
            ptrs: None,
            last_avail: cfg.avail_base,
            avail_cache: cfg.avail_base,
            used_idx: cfg.avail_base,
            published_used: cfg.avail_base,
            signalled_used: cfg.avail_base,
            notify_enabled: true,
            batch: 0,
            batch_id: 0,
            mask: if cfg.size.is_power_of_two() { cfg.size - 1 } else { 0 },
        }
    }

    /// The ring slot of free-running index `idx`: always `< size`.
    #[inline]
    fn slot(&self, idx: u16) -> usize {
        if self.mask != 0 {
            (idx & self.mask) as usize
        } else {
            // Size 1 (mask 0) and sizes the slow path refuses; size 0 panics
            // here as before (a bug: no such queue is ever made).
            (idx % self.cfg.size) as usize
        }
    }

    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    pub fn size(&self) -> u16 {
        self.cfg.size
    }

    /// The device's position: the next avail index it will consume
    /// (GET_VQ_STATE for a split ring).
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    pub fn used_idx(&self) -> u16 {
        self.used_idx
    }

    /// The used index the driver sees in ring memory now (reconnect: a
    /// restarted device resumes there). Needs `refresh` first. Acquire: the
    /// used entries published with it are visible too.
    pub fn driver_used_idx(&self) -> u16 {
        self.used_idx_atomic().load(Ordering::Acquire)
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
        let n = self.cfg.size;
        let c = &self.cfg;
        if c.desc_addr % 16 != 0 {
            return Err(Malformed::MisalignedRing(c.desc_addr).into());
        }
        if c.avail_addr % 2 != 0 {
            return Err(Malformed::MisalignedRing(c.avail_addr).into());
        }
        if c.used_addr % 4 != 0 {
            return Err(Malformed::MisalignedRing(c.used_addr).into());
        }
        let rings = [
            (c.desc_addr, desc_table_size(n) as u64, Access::Read),
            (c.avail_addr, avail_ring_size(n) as u64, Access::Read),
            (c.used_addr, used_ring_size(n) as u64, Access::Write),
        ];
        // All three from one table, tagged with that table's id: a table
        // published between two translations (a miss resolved, a region
        // invalidated by the slow path) must not leave a pointer cached
        // against a table that does not hold its mapping. A miss resolves
        // the region and starts over with the then-current table; each
        // round maps one more region, so three rounds plus a few lost races
        // with invalidations are enough.
        for _ in 0..8 {
            let table = space.load(guard);
            let mut ptrs = [std::ptr::null_mut(); 3];
            let mut missing = None;
            for (i, &(addr, len, access)) in rings.iter().enumerate() {
                match table.translate(addr, len, access) {
                    Ok(p) => ptrs[i] = p,
                    Err(XlateError::Unmapped { iova, .. }) => {
                        missing = Some(iova);
                        break;
                    }
                    Err(XlateError::Discontiguous { .. }) => {
                        // Mapped at its start but running past that region:
                        // fetch the region holding the end.
                        missing = Some(addr + len - 1);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let Some(iova) = missing else {
                // Aligned IOVAs can still map to misaligned host addresses
                // (a region whose file offset is not aligned like its IOVA):
                // the rings are read as u16/u32/descriptors, so fail instead.
                let aligns = [std::mem::align_of::<VringDesc>(), 2, 4];
                for ((p, &(addr, ..)), align) in ptrs.iter().zip(&rings).zip(aligns) {
                    if *p as usize % align != 0 {
                        return Err(Malformed::MisalignedHost(addr).into());
                    }
                }
                self.ptrs = Some(RingPtrs {
                    table_id: table.id(),
                    desc: ptrs[0] as *const VringDesc,
                    avail: ptrs[1],
                    used: ptrs[2],
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
    fn ptrs(&self) -> &RingPtrs {
        self.ptrs.as_ref().expect("refresh() before ring access")
    }

    #[inline]
    fn avail_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: avail + 2 lies in the translated avail ring, which is
        // 2-aligned (checked in map_rings); AtomicU16 has u16's layout.
        unsafe { &*(self.ptrs().avail.add(2) as *const AtomicU16) }
    }

    #[inline]
    fn used_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: used + 2 lies in the translated used ring (4-aligned).
        unsafe { &*(self.ptrs().used.add(2) as *const AtomicU16) }
    }

    /// Chains the driver made available and we have not consumed. Reads
    /// `avail.idx` only when the chains seen at the last read are used up:
    /// the line is written by the driver all the time, and every read of it
    /// pulls it across cores.
    #[inline]
    pub fn pending(&mut self) -> Result<u16, QueueError> {
        let n = self.avail_cache.wrapping_sub(self.last_avail);
        if n > 0 {
            return Ok(n);
        }
        self.pending_fresh()
    }

    /// Like `pending`, but always re-reads `avail.idx`.
    #[inline]
    pub fn pending_fresh(&mut self) -> Result<u16, QueueError> {
        // Acquire: see the ring entries and descriptors published with it.
        let idx = self.avail_idx_atomic().load(Ordering::Acquire);
        let n = idx.wrapping_sub(self.last_avail);
        if n > self.cfg.size {
            return Err(Malformed::AvailJump(n).into());
        }
        self.prefetch_descs(self.avail_cache, idx);
        self.avail_cache = idx;
        Ok(n)
    }

    /// The head in avail entry `at` (its slot is `at` modulo the size), read
    /// once; callers read only entries below an avail index they loaded with
    /// Acquire, and check the value before using it as an index.
    #[inline]
    fn avail_entry(&self, at: u16) -> u16 {
        let slot = self.slot(at);
        // SAFETY: slot < size, so 4 + 2*slot lies within the avail ring
        // (translated for avail_ring_size, 2-aligned).
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptrs().avail.add(4 + 2 * slot) as *const u16) })
    }

    /// Ask for the descriptor lines of the avail entries `[from, to)` (those
    /// the Acquire load of avail.idx just made visible), at most
    /// [`DESC_PREFETCH`] of them: the driver's core wrote every one, so each
    /// is a cache miss, and requested together they travel in parallel
    /// instead of one per chain as the chains are taken. A hint only: a
    /// head out of range is skipped here and refused when taken.
    #[inline]
    fn prefetch_descs(&self, from: u16, to: u16) {
        let n = to.wrapping_sub(from).min(DESC_PREFETCH);
        let mut last_line = usize::MAX;
        for k in 0..n {
            let head = self.avail_entry(from.wrapping_add(k));
            if head >= self.cfg.size {
                continue;
            }
            // Only an address for the hint (head < size: inside the table).
            let p = self.ptrs().desc.wrapping_add(head as usize) as *const u8;
            // Consecutive heads share a line (four descriptors each): one
            // request per line.
            let line = p as usize >> 6;
            if line != last_line {
                prefetch::line(p);
                last_line = line;
            }
        }
    }

    /// Take the next head from the avail ring: the slot is read once, the
    /// value checked, and only then is the entry consumed. The caller
    /// checked `pending() > 0`.
    #[inline]
    pub fn pop_head(&mut self) -> Result<Head, QueueError> {
        let head = self.avail_entry(self.last_avail);
        if head >= self.cfg.size {
            return Err(Malformed::HeadOutOfRange(head).into());
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Head::new(head, 1))
    }

    /// Prefetch the start of the first buffer of the next chain (the one
    /// the next `pop_head` takes), so its cache lines, written by the
    /// driver's core, are on their way while the current chain is copied.
    /// A hint only: nothing is consumed, and what is read here is read and
    /// checked again when the chain is taken. Only an entry below the avail
    /// index last loaded (Acquire) is read, and only an address that
    /// translates in the current table with the descriptor's access.
    #[inline]
    pub fn prefetch_next(&self, space: &AddressSpace, guard: &ReadGuard<'_>) {
        if self.avail_cache == self.last_avail {
            return;
        }
        let head = self.avail_entry(self.last_avail);
        let Ok(d) = self.desc(head) else { return };
        prefetch_buffer(d.addr, d.len, d.flags, space, guard);
    }

    /// Ask for the line of the next avail entry, the one the driver writes
    /// with the next chain it makes available (with the one before it,
    /// mostly in the same line). Polling only `avail.idx` finds a new
    /// chain one miss before its entry can be read; a poll that also asks
    /// for this line has both on their way at once. A hint only; nothing
    /// before the rings are mapped.
    #[inline]
    pub fn prefetch_avail(&self) {
        if let Some(p) = &self.ptrs {
            prefetch::line(p.avail.wrapping_add(4 + 2 * self.slot(self.last_avail)));
        }
    }

    /// Read ahead the next chains, up to `max` and [`LOOKAHEAD`], into
    /// `la`: as long as they are one-descriptor chains the walk would
    /// accept for `dir` (a direct buffer, no NEXT, of the right direction,
    /// non-empty, translating into one region of the current table). The
    /// first other chain ends the read-ahead; it and those after it are
    /// walked when taken, so every rule and every error stays the walk's.
    /// Nothing is consumed: [`Self::pop_prewalked`] takes them in order.
    /// Nothing is prefetched here: the burst asks for the buffers' lines a
    /// few chains ahead of its copy (`Lookahead::prefetch`).
    ///
    /// Every avail entry and descriptor is read once, here; only entries
    /// below the avail index last loaded (Acquire) are read.
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
        let n = (self.avail_cache.wrapping_sub(self.last_avail) as usize).min(max).min(LOOKAHEAD);
        if n < 2 || self.ptrs.is_none() {
            // One chain gains nothing from being read ahead.
            return;
        }
        let mut near = Near::new(space.load(guard), access);
        for k in 0..n as u16 {
            let at = self.last_avail.wrapping_add(k);
            let head = self.avail_entry(at);
            let Ok(d) = self.desc(head) else { break };
            let writable = d.flags & VRING_DESC_F_WRITE != 0;
            if d.flags & (VRING_DESC_F_NEXT | VRING_DESC_F_INDIRECT) != 0 || writable != want_write || d.len == 0 {
                break;
            }
            let Ok(p) = near.translate(d.addr, d.len as u64) else { break };
            la.push(at, head, p, d.len);
        }
    }

    /// Take the next chain `la` read ahead, if it is the chain this ring
    /// would pop next; `None` (and `la` emptied) when it holds none or is
    /// stale (the ring moved without it).
    #[inline]
    pub fn pop_prewalked<'g>(&mut self, la: &mut Lookahead<'_, 'g>) -> Option<Single<'g>> {
        let s = la.pop_at(self.last_avail)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Some(s)
    }

    /// Give back the last `chains` heads taken and not completed: the next
    /// pops read their avail slots again.
    pub fn rewind(&mut self, chains: u16) {
        self.last_avail = self.last_avail.wrapping_sub(chains);
    }

    /// Read descriptor `i` of the main table once; `i` is checked against
    /// the queue size (a [`Head`] from another queue, a bad `next`).
    #[inline]
    pub(crate) fn desc(&self, i: u16) -> Result<VringDesc, Malformed> {
        if i >= self.cfg.size {
            return Err(Malformed::HeadOutOfRange(i));
        }
        // SAFETY: i < size and the table spans size descriptors at a host
        // address aligned for VringDesc (checked in map_rings).
        Ok(from_le(unsafe { std::ptr::read_volatile(self.ptrs().desc.add(i as usize)) }))
    }

    /// Return a chain with `len` bytes written (not yet visible: see
    /// `publish_used`). With IN_ORDER a device-readable chain gets no entry
    /// of its own: it joins the run that [`Self::flush_batch`] returns with
    /// one entry.
    #[inline]
    pub fn push_used(&mut self, head: Head, len: u32) {
        if self.cfg.in_order && head.readable_only() {
            // Only a chain without writable buffers: "used completely" is
            // then exactly "0 bytes written" (§2.7.9), so nothing is lost.
            self.batch += 1;
            self.batch_id = head.id;
            self.used_idx = self.used_idx.wrapping_add(1);
            return;
        }
        self.flush_batch();
        self.write_used(self.used_idx, head.id, len);
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Write the used entry for the run of device-readable chains waiting
    /// since the last one (IN_ORDER): at the run's first used slot, naming
    /// its last chain; `used_idx` already counts the whole run, and the
    /// driver skips the slots after the entry (§2.7.9: "the used ring entry
    /// at an offset matching the first available ring entry in the batch").
    #[inline]
    fn flush_batch(&mut self) {
        if self.batch == 0 {
            return;
        }
        let at = self.used_idx.wrapping_sub(self.batch);
        self.write_used(at, self.batch_id, 0);
        self.batch = 0;
    }

    /// Write used element number `idx` (free-running).
    #[inline]
    fn write_used(&mut self, idx: u16, id: u16, len: u32) {
        let slot = self.slot(idx);
        let at = 4 + 8 * slot;
        let used = self.ptrs().used;
        // SAFETY: slot < size, so [at, at + 8) lies within the used ring,
        // which is 4-aligned and writable (translated with Access::Write).
        unsafe {
            std::ptr::write_volatile(used.add(at) as *mut u32, (id as u32).to_le());
            std::ptr::write_volatile(used.add(at + 4) as *mut u32, len.to_le());
        }
    }

    /// Make pushed used elements visible, once per burst. Returns whether
    /// the driver asked to be interrupted for them.
    /// (`publish_used_store`, a SeqCst fence, `interrupt_wanted`).
    #[inline]
    pub fn publish_used(&mut self) -> bool {
        super::Ring::publish_used(self)
    }

    /// The store half of [`Self::publish_used`]: `true` when new used
    /// elements were published, in which case the caller must issue a
    /// SeqCst fence and then ask [`Self::interrupt_wanted`].
    #[inline]
    pub fn publish_used_store(&mut self) -> bool {
        self.flush_batch();
        if self.used_idx == self.published_used {
            return false;
        }
        // Release: used elements and buffer writes before the index.
        self.used_idx_atomic().store(self.used_idx, Ordering::Release);
        self.published_used = self.used_idx;
        true
    }

    /// Whether the driver asked to be interrupted for what was published
    /// since the last answer. Only after [`Self::publish_used_store`]
    /// returned `true` and a SeqCst fence after it: without the fence the
    /// suppression state could be read before our used.idx store is
    /// visible, and a driver re-enabling interrupts would miss both.
    pub fn interrupt_wanted(&mut self) -> bool {
        let old = self.signalled_used;
        let new = self.used_idx;
        self.signalled_used = new;
        if self.cfg.event_idx {
            let off = 4 + 2 * self.cfg.size as usize;
            // SAFETY: used_event sits right after the avail ring entries,
            // inside the translated avail area (avail_ring_size).
            let ev = u16::from_le(unsafe { std::ptr::read_volatile(self.ptrs().avail.add(off) as *const u16) });
            vring_need_event(ev, new, old)
        } else {
            // SAFETY: avail.flags is the first u16 of the avail ring.
            let flags = u16::from_le(unsafe { std::ptr::read_volatile(self.ptrs().avail as *const u16) });
            flags & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Stop asking for kicks while we poll.
    #[inline]
    pub fn disable_notifications(&mut self) {
        if !self.notify_enabled {
            return;
        }
        self.notify_enabled = false;
        if !self.cfg.event_idx {
            // SAFETY: used.flags is the first u16 of the writable used ring.
            unsafe { std::ptr::write_volatile(self.ptrs().used as *mut u16, VRING_USED_F_NO_NOTIFY.to_le()) };
        }
        // With EVENT_IDX, leaving avail_event behind suppresses kicks: the
        // driver only kicks when its index crosses that value again.
    }

    /// Ask for a kick on the next avail update. Returns `true` if work
    /// arrived meanwhile, in which case the caller must not sleep.
    pub fn enable_notifications(&mut self) -> Result<bool, QueueError> {
        self.notify_enabled = true;
        if self.cfg.event_idx {
            let off = 4 + 8 * self.cfg.size as usize;
            // SAFETY: avail_event follows the used elements, inside the
            // translated used area (used_ring_size).
            unsafe { std::ptr::write_volatile(self.ptrs().used.add(off) as *mut u16, self.last_avail.to_le()) };
        } else {
            // SAFETY: as in disable_notifications.
            unsafe { std::ptr::write_volatile(self.ptrs().used as *mut u16, 0) };
        }
        // The flag/event write must be visible before we re-read avail.idx.
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
