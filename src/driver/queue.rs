//! A driver-side queue of either ring format, so the virtio-net driver,
//! pktgen and the tests drive split and packed devices with the same code.
//! Counts are format-neutral: chains published, completed and taken back
//! (mod 2^16), whatever ring slots they took; bases are in vhost's
//! encoding for the format (`VHOST_SET/GET_VRING_BASE`).

use std::sync::Arc;

use super::dma::DmaMemory;
use super::packed::{PackedDriverQueue, PackedLayout};
use super::ring::{DriverQueue, RingError, RingLayout, Segment};
use crate::uapi::virtio::{VringDesc, VRING_DESC_F_NEXT};
use crate::virtq::{RingFormat, RingPos};

pub enum DriverRing {
    Split(DriverQueue),
    Packed(PackedDriverQueue),
}

macro_rules! either {
    ($q:expr, $r:ident => $e:expr) => {
        match $q {
            DriverRing::Split($r) => $e,
            DriverRing::Packed($r) => $e,
        }
    };
}

/// A packed base: the same position in both halves.
fn both_halves(p: RingPos) -> u32 {
    p.encode() as u32 | (p.encode() as u32) << 16
}

impl DriverRing {
    /// A zeroed queue of `size` entries at `offset` in `mem` (seen at `iova`).
    pub fn new(
        format: RingFormat,
        mem: Arc<DmaMemory>,
        offset: usize,
        iova: u64,
        size: u16,
        event_idx: bool,
    ) -> Result<Self, RingError> {
        Ok(match format {
            RingFormat::Split => DriverRing::Split(DriverQueue::new(mem, offset, iova, size, event_idx)?),
            RingFormat::Packed => DriverRing::Packed(PackedDriverQueue::new(mem, offset, iova, size, event_idx)?),
        })
    }

    /// Bytes a ring of `size` entries takes.
    pub const fn bytes(format: RingFormat, size: u16) -> usize {
        match format {
            RingFormat::Split => RingLayout::new(size).total,
            RingFormat::Packed => PackedLayout::new(size).total,
        }
    }

    /// VIRTIO_F_IN_ORDER was negotiated: a used entry may return a run of
    /// chains (set before the first chain is added).
    pub fn set_in_order(&mut self, on: bool) {
        either!(self, q => q.set_in_order(on))
    }

    pub fn format(&self) -> RingFormat {
        match self {
            DriverRing::Split(_) => RingFormat::Split,
            DriverRing::Packed(_) => RingFormat::Packed,
        }
    }
    pub fn size(&self) -> u16 {
        either!(self, q => q.size())
    }
    pub fn num_free(&self) -> u16 {
        either!(self, q => q.num_free())
    }
    pub fn memory(&self) -> &Arc<DmaMemory> {
        either!(self, q => q.memory())
    }
    /// Byte offset of the ring in [`Self::memory`].
    pub fn offset(&self) -> usize {
        either!(self, q => q.offset())
    }
    pub fn desc_iova(&self) -> u64 {
        either!(self, q => q.desc_iova())
    }
    /// The driver area: split avail ring, packed driver event suppression.
    pub fn driver_area_iova(&self) -> u64 {
        match self {
            DriverRing::Split(q) => q.avail_iova(),
            DriverRing::Packed(q) => q.driver_area_iova(),
        }
    }
    /// The device area: split used ring, packed device event suppression.
    pub fn device_area_iova(&self) -> u64 {
        match self {
            DriverRing::Split(q) => q.used_iova(),
            DriverRing::Packed(q) => q.device_area_iova(),
        }
    }

    #[inline]
    pub fn add_chain(&mut self, segments: &[Segment], token: u64) -> Result<u16, RingError> {
        either!(self, q => q.add_chain(segments, token))
    }
    /// See [`DriverQueue::token_ahead`] (split rings; `None` for packed).
    #[inline]
    pub fn token_ahead(&self, k: u16) -> Option<u64> {
        match self {
            DriverRing::Split(q) => q.token_ahead(k),
            DriverRing::Packed(_) => None,
        }
    }
    /// Request the lines the next `n` adds write (split rings; a hint).
    #[inline]
    pub fn prefetch_adds(&self, n: usize) {
        if let DriverRing::Split(q) = self {
            q.prefetch_adds(n);
        }
    }
    #[inline]
    pub fn publish(&mut self) {
        either!(self, q => q.publish())
    }
    #[inline]
    pub fn needs_kick(&mut self) -> bool {
        either!(self, q => q.needs_kick())
    }
    #[inline]
    pub fn pop_used(&mut self) -> Result<Option<(u64, u32)>, RingError> {
        either!(self, q => q.pop_used())
    }
    pub fn enable_interrupts(&mut self) -> bool {
        either!(self, q => q.enable_interrupts())
    }
    pub fn disable_interrupts(&mut self) {
        either!(self, q => q.disable_interrupts())
    }
    /// The device has completed a chain the driver has not taken back.
    pub fn used_ready(&self) -> bool {
        match self {
            DriverRing::Split(q) => q.used_idx() != q.last_used(),
            DriverRing::Packed(q) => q.used_ready(),
        }
    }

    /// Chains the device has completed and published (mod 2^16): the split
    /// used index; for packed, those taken back plus those waiting.
    pub fn used_idx(&self) -> u16 {
        match self {
            DriverRing::Split(q) => q.used_idx(),
            DriverRing::Packed(q) => q.used_count().wrapping_add(q.peek_used().1),
        }
    }
    /// Chains published to the device (mod 2^16).
    pub fn avail_idx(&self) -> u16 {
        match self {
            DriverRing::Split(q) => q.avail_idx(),
            DriverRing::Packed(q) => q.avail_count(),
        }
    }
    /// Chains taken back (mod 2^16).
    pub fn last_used(&self) -> u16 {
        match self {
            DriverRing::Split(q) => q.last_used(),
            DriverRing::Packed(q) => q.used_count(),
        }
    }

    /// `VHOST_SET_VRING_BASE` for a fresh ring: split 0; packed slot 0 with
    /// both wrap counters 1.
    pub fn initial_base(&self) -> u32 {
        match self {
            DriverRing::Split(_) => 0,
            DriverRing::Packed(_) => both_halves(RingPos { idx: 0, wrap: true }),
        }
    }
    /// The base to restart a device from where this driver has taken every
    /// completion back: chains posted and not used are offered again.
    pub fn restart_base(&self) -> u32 {
        match self {
            DriverRing::Split(q) => q.last_used() as u32,
            DriverRing::Packed(q) => both_halves(q.used_pos()),
        }
    }
    /// What `VHOST_GET_VRING_BASE` reports once the device has taken and
    /// completed every chain published.
    pub fn published_base(&self) -> u32 {
        match self {
            DriverRing::Split(q) => q.avail_idx() as u32,
            DriverRing::Packed(q) => both_halves(q.avail_pos()),
        }
    }
    /// What `VHOST_GET_VRING_BASE` reports when every chain the device took
    /// it also completed: the position after the completions it published.
    pub fn device_base(&self) -> u32 {
        match self {
            DriverRing::Split(q) => q.used_idx() as u32,
            DriverRing::Packed(q) => both_halves(q.peek_used().0),
        }
    }

    /// Test hook: one raw chain of `(addr, len, flags)`, unpublished. Split:
    /// descriptors at slots `base..` (NEXT linking each to the following
    /// slot, mod size) and `head` in the next avail entry. Packed: at the
    /// avail position with the right avail bits, buffer id `head`.
    pub fn push_raw_chain(&mut self, base: u16, descs: &[(u64, u32, u16)], head: u16) -> Result<(), RingError> {
        match self {
            DriverRing::Split(q) => {
                let n = q.size();
                for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                    let at = ((base as usize + i) % n as usize) as u16;
                    let next = if flags & VRING_DESC_F_NEXT != 0 { (at + 1) % n } else { 0 };
                    q.write_desc(at, VringDesc { addr, len, flags, next })?;
                }
                q.push_avail_raw(head);
            }
            DriverRing::Packed(q) => q.push_raw_chain(descs, head),
        }
        Ok(())
    }

    pub fn as_split(&mut self) -> Option<&mut DriverQueue> {
        match self {
            DriverRing::Split(q) => Some(q),
            DriverRing::Packed(_) => None,
        }
    }
    pub fn as_packed(&mut self) -> Option<&mut PackedDriverQueue> {
        match self {
            DriverRing::Packed(q) => Some(q),
            DriverRing::Split(_) => None,
        }
    }
}
