//! One queue abstraction for the packet paths.
//!
//! [`Ring`] is what a path needs from a device-side queue: take chains,
//! complete them, publish once per burst, suppress and re-enable kicks,
//! report its position. [`SplitQueue`] and [`PackedQueue`] implement it;
//! the poll thread picks the format once per poll iteration (one `match`
//! in `dataplane::poll::thread`) and runs paths monomorphized for that
//! format, so the split path has no per-chain dispatch. [`VirtQueue`] holds
//! a queue of the negotiated format and implements [`Ring`] by matching on
//! every call: fine for the slow path (control queue, lifecycle), not used
//! per chain on the fast path.

use super::chain::{Chain, Direction, Lookahead, Single};
use super::packed::PackedQueue;
use super::split::{Head, QueueConfig, SplitQueue};
use super::QueueError;
use crate::mem::{AddressSpace, ReadGuard};

/// The ring layout negotiated for a device (VIRTIO_F_RING_PACKED).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RingFormat {
    #[default]
    Split,
    Packed,
}

impl RingFormat {
    pub fn of_features(features: u64) -> RingFormat {
        if features & crate::net::features::RING_PACKED != 0 {
            RingFormat::Packed
        } else {
            RingFormat::Split
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            RingFormat::Split => "split",
            RingFormat::Packed => "packed",
        }
    }
}

/// A device-side queue as the packet paths use it.
pub trait Ring: Send {
    fn config(&self) -> &QueueConfig;
    /// (Re-)derive ring pointers when the address space changed.
    fn refresh(&mut self, space: &AddressSpace, guard: &ReadGuard<'_>) -> Result<(), QueueError>;
    /// Chains available to take (at least 1 when any is; packed rings count
    /// at most [`super::packed::PENDING_SCAN`] ahead).
    fn pending(&mut self) -> Result<u16, QueueError>;
    /// Take the next chain and read its pieces into `chain` (reused by the
    /// caller: no copy of the piece list per chain); the caller checked
    /// `pending() > 0`. An error means the driver broke the queue, and
    /// `chain` must not be used.
    fn pop_into<'g>(
        &mut self,
        chain: &mut Chain<'g>,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError>;
    /// Prefetch the next chain's first buffer (a hint; see
    /// [`SplitQueue::prefetch_next`]).
    fn prefetch_next(&self, space: &AddressSpace, guard: &ReadGuard<'_>);
    /// Ask for the line the driver writes when it makes the next chain
    /// available (split: the next avail entry; a hint, nothing on packed
    /// rings, whose poll reads that line anyway). See
    /// [`SplitQueue::prefetch_avail`].
    #[inline]
    fn prefetch_avail(&self) {}
    /// [`Ring::pop_into`] returning a new chain (slow path, tests).
    fn pop<'g>(
        &mut self,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<Chain<'g>, QueueError> {
        let mut chain = Chain::empty();
        self.pop_into(&mut chain, dir, space, guard)?;
        Ok(chain)
    }
    /// Read ahead up to `max` of the next chains into `la` (see
    /// [`SplitQueue::prewalk`], [`PackedQueue::prewalk`]); a ring without a read-ahead leaves `la`
    /// empty and every chain is walked when taken.
    #[inline]
    fn prewalk<'g>(
        &self,
        la: &mut Lookahead<'_, 'g>,
        _max: usize,
        _dir: Direction,
        _space: &AddressSpace,
        _guard: &'g ReadGuard<'_>,
    ) {
        la.clear();
    }
    /// Take the next chain from `la` if it is this ring's next one (see
    /// [`SplitQueue::pop_prewalked`]).
    #[inline]
    fn pop_prewalked<'g>(&mut self, la: &mut Lookahead<'_, 'g>) -> Option<Single<'g>> {
        la.clear();
        None
    }
    /// Give back the chains taken last (`heads`, most recent pops, none
    /// completed): the next pops take them again. MRG_RXBUF uses it when a
    /// frame finds too few RX buffers, so the driver never sees buffers
    /// returned empty.
    fn rewind(&mut self, heads: &[Head]);
    /// Return a chain with `len` bytes written (visible at `publish_used`).
    /// Chains must be returned in the order they were taken (every path
    /// does): with IN_ORDER negotiated a run of device-readable ones gets
    /// one used entry, written at the end of the run or at `publish_used`.
    fn push_used(&mut self, head: Head, len: u32);
    /// Publish what was pushed, once per burst; whether to interrupt.
    #[inline]
    fn publish_used(&mut self) -> bool {
        if !self.publish_used_store() {
            return false;
        }
        // Order our used index (split) or flags (packed) store before the
        // read of the driver's suppression state (mirrors the driver's
        // fence between writing that state and re-checking the ring).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.interrupt_wanted()
    }
    /// `publish_used` in two halves, so that one fence serves two queues:
    /// the stores (`true`: something was published) ...
    fn publish_used_store(&mut self) -> bool;
    /// ... and, only after that returned `true` and a SeqCst fence
    /// followed it, the interrupt decision.
    fn interrupt_wanted(&mut self) -> bool;
    fn disable_notifications(&mut self);
    /// Re-enable kicks; `true` when work arrived meanwhile.
    fn enable_notifications(&mut self) -> Result<bool, QueueError>;
    fn unmap(&mut self);
    fn is_mapped(&self) -> bool;
    /// (avail, used) positions for GET_VQ_STATE and the mailbox: split, the
    /// next avail index and the used index; packed, slot | wrap << 15 each.
    fn position(&self) -> (u16, u16);
    /// The ring of this type inside `q`, if `q` has this format.
    fn of(q: &mut VirtQueue) -> Option<&mut Self>
    where
        Self: Sized;
}

impl Ring for SplitQueue {
    #[inline]
    fn config(&self) -> &QueueConfig {
        SplitQueue::config(self)
    }
    #[inline]
    fn refresh(&mut self, space: &AddressSpace, guard: &ReadGuard<'_>) -> Result<(), QueueError> {
        SplitQueue::refresh(self, space, guard)
    }
    #[inline]
    fn pending(&mut self) -> Result<u16, QueueError> {
        SplitQueue::pending(self)
    }
    #[inline]
    fn pop_into<'g>(
        &mut self,
        chain: &mut Chain<'g>,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        let head = self.pop_head()?;
        self.read_chain_into(chain, head, dir, space, guard)
    }
    #[inline]
    fn prefetch_next(&self, space: &AddressSpace, guard: &ReadGuard<'_>) {
        SplitQueue::prefetch_next(self, space, guard)
    }
    #[inline]
    fn prefetch_avail(&self) {
        SplitQueue::prefetch_avail(self)
    }
    #[inline]
    fn prewalk<'g>(
        &self,
        la: &mut Lookahead<'_, 'g>,
        max: usize,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) {
        SplitQueue::prewalk(self, la, max, dir, space, guard)
    }
    #[inline]
    fn pop_prewalked<'g>(&mut self, la: &mut Lookahead<'_, 'g>) -> Option<Single<'g>> {
        SplitQueue::pop_prewalked(self, la)
    }
    fn rewind(&mut self, heads: &[Head]) {
        SplitQueue::rewind(self, heads.len() as u16)
    }
    #[inline]
    fn push_used(&mut self, head: Head, len: u32) {
        SplitQueue::push_used(self, head, len)
    }
    #[inline]
    fn publish_used_store(&mut self) -> bool {
        SplitQueue::publish_used_store(self)
    }
    #[inline]
    fn interrupt_wanted(&mut self) -> bool {
        SplitQueue::interrupt_wanted(self)
    }
    #[inline]
    fn disable_notifications(&mut self) {
        SplitQueue::disable_notifications(self)
    }
    fn enable_notifications(&mut self) -> Result<bool, QueueError> {
        SplitQueue::enable_notifications(self)
    }
    fn unmap(&mut self) {
        SplitQueue::unmap(self)
    }
    fn is_mapped(&self) -> bool {
        SplitQueue::is_mapped(self)
    }
    fn position(&self) -> (u16, u16) {
        (self.last_avail(), self.used_idx())
    }
    #[inline]
    fn of(q: &mut VirtQueue) -> Option<&mut Self> {
        match q {
            VirtQueue::Split(s) => Some(s),
            VirtQueue::Packed(_) => None,
        }
    }
}

impl Ring for PackedQueue {
    #[inline]
    fn config(&self) -> &QueueConfig {
        PackedQueue::config(self)
    }
    #[inline]
    fn refresh(&mut self, space: &AddressSpace, guard: &ReadGuard<'_>) -> Result<(), QueueError> {
        PackedQueue::refresh(self, space, guard)
    }
    #[inline]
    fn pending(&mut self) -> Result<u16, QueueError> {
        PackedQueue::pending(self)
    }
    #[inline]
    fn pop_into<'g>(
        &mut self,
        chain: &mut Chain<'g>,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        self.pop_chain_into(chain, dir, space, guard)
    }
    fn rewind(&mut self, heads: &[Head]) {
        let slots = heads.iter().map(|h| h.slots()).fold(0u16, u16::saturating_add);
        PackedQueue::rewind(self, heads.len() as u16, slots)
    }
    #[inline]
    fn push_used(&mut self, head: Head, len: u32) {
        PackedQueue::push_used(self, head, len)
    }
    #[inline]
    fn prefetch_next(&self, space: &AddressSpace, guard: &ReadGuard<'_>) {
        PackedQueue::prefetch_next(self, space, guard)
    }
    #[inline]
    fn prewalk<'g>(
        &self,
        la: &mut Lookahead<'_, 'g>,
        max: usize,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) {
        PackedQueue::prewalk(self, la, max, dir, space, guard)
    }
    #[inline]
    fn pop_prewalked<'g>(&mut self, la: &mut Lookahead<'_, 'g>) -> Option<Single<'g>> {
        PackedQueue::pop_prewalked(self, la)
    }
    #[inline]
    fn publish_used_store(&mut self) -> bool {
        PackedQueue::publish_used_store(self)
    }
    #[inline]
    fn interrupt_wanted(&mut self) -> bool {
        PackedQueue::interrupt_wanted(self)
    }
    #[inline]
    fn disable_notifications(&mut self) {
        PackedQueue::disable_notifications(self)
    }
    fn enable_notifications(&mut self) -> Result<bool, QueueError> {
        PackedQueue::enable_notifications(self)
    }
    fn unmap(&mut self) {
        PackedQueue::unmap(self)
    }
    fn is_mapped(&self) -> bool {
        PackedQueue::is_mapped(self)
    }
    fn position(&self) -> (u16, u16) {
        (self.avail_pos().encode(), self.used_pos().encode())
    }
    #[inline]
    fn of(q: &mut VirtQueue) -> Option<&mut Self> {
        match q {
            VirtQueue::Packed(p) => Some(p),
            VirtQueue::Split(_) => None,
        }
    }
}

/// A queue of the negotiated format.
pub enum VirtQueue {
    Split(SplitQueue),
    Packed(PackedQueue),
}

impl VirtQueue {
    pub fn new(cfg: QueueConfig) -> VirtQueue {
        match cfg.format {
            RingFormat::Split => VirtQueue::Split(SplitQueue::new(cfg)),
            RingFormat::Packed => VirtQueue::Packed(PackedQueue::new(cfg)),
        }
    }
    pub fn format(&self) -> RingFormat {
        match self {
            VirtQueue::Split(_) => RingFormat::Split,
            VirtQueue::Packed(_) => RingFormat::Packed,
        }
    }
}

/// Forward a call to the queue of either format (slow path only).
macro_rules! either {
    ($q:expr, $r:ident => $e:expr) => {
        match $q {
            VirtQueue::Split($r) => $e,
            VirtQueue::Packed($r) => $e,
        }
    };
}

impl Ring for VirtQueue {
    fn config(&self) -> &QueueConfig {
        either!(self, q => Ring::config(q))
    }
    fn refresh(&mut self, space: &AddressSpace, guard: &ReadGuard<'_>) -> Result<(), QueueError> {
        either!(self, q => Ring::refresh(q, space, guard))
    }
    fn pending(&mut self) -> Result<u16, QueueError> {
        either!(self, q => Ring::pending(q))
    }
    fn pop_into<'g>(
        &mut self,
        chain: &mut Chain<'g>,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        either!(self, q => Ring::pop_into(q, chain, dir, space, guard))
    }
    fn prefetch_next(&self, space: &AddressSpace, guard: &ReadGuard<'_>) {
        either!(self, q => Ring::prefetch_next(q, space, guard))
    }
    fn rewind(&mut self, heads: &[Head]) {
        either!(self, q => Ring::rewind(q, heads))
    }
    fn push_used(&mut self, head: Head, len: u32) {
        either!(self, q => Ring::push_used(q, head, len))
    }
    fn publish_used_store(&mut self) -> bool {
        either!(self, q => Ring::publish_used_store(q))
    }
    fn interrupt_wanted(&mut self) -> bool {
        either!(self, q => Ring::interrupt_wanted(q))
    }
    fn disable_notifications(&mut self) {
        either!(self, q => Ring::disable_notifications(q))
    }
    fn enable_notifications(&mut self) -> Result<bool, QueueError> {
        either!(self, q => Ring::enable_notifications(q))
    }
    fn unmap(&mut self) {
        either!(self, q => Ring::unmap(q))
    }
    fn is_mapped(&self) -> bool {
        either!(self, q => Ring::is_mapped(q))
    }
    fn position(&self) -> (u16, u16) {
        either!(self, q => Ring::position(q))
    }
    fn of(q: &mut VirtQueue) -> Option<&mut Self> {
        Some(q)
    }
}
