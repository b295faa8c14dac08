//! Device-side virtqueues over untrusted ring memory.
//!
//! - [`split`]: the split ring (avail/used access, notification suppression).
//! - [`packed`]: the packed ring (one descriptor ring, wrap counters, event
//!   suppression areas).
//! - [`ring`]: what the packet paths need from a queue of either format
//!   ([`Ring`]), and [`VirtQueue`], a queue of the negotiated format.
//! - [`chain`]: descriptor-chain walking and validation into a [`Chain`] of
//!   guest memory pieces, and the overlap-safe copies in and out of it
//!   ([`ChainReader`], [`ChainWriter`]): the only code besides `src/mem`
//!   that dereferences guest pointers. A burst may read a run of
//!   one-descriptor chains ahead ([`SplitQueue::prewalk`] into a
//!   [`chain::Lookahead`]): the same checks, done before the first frame is
//!   copied, so the buffers' lines can be requested early.
//!
//! Every field the driver wrote is read once into a local, validated, and
//! only then used. Anything malformed is a [`QueueError`]; the caller stops
//! that queue and reports NEEDS_RESET, the rest of the device goes on.

pub mod chain;
pub mod packed;
pub mod ring;
pub mod split;
#[cfg(all(test, not(loom)))]
mod tests;

pub use chain::{
    Chain, ChainReader, ChainWriter, Direction, Piece, Single, MAX_INDIRECT_LEN, MAX_PIECES, MAX_READABLE_PIECES,
};
pub use packed::{PackedQueue, RingPos};
pub use ring::{Ring, RingFormat, VirtQueue};
pub use split::{Head, QueueConfig, SplitQueue};

use crate::mem::XlateError;

/// Ways a driver can break a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("head index {0} out of range")]
    HeadOutOfRange(u16),
    #[error("buffer id {0} out of range")]
    BufferIdOutOfRange(u16),
    #[error("descriptor {slot} of a chain is not marked available (wrap counter mismatch, flags {flags:#06x})")]
    NotAvailable { slot: u16, flags: u16 },
    #[error("descriptor {0} was made available and then withdrawn")]
    Withdrawn(u16),
    #[error("packed ring position {0:#06x} lies outside the ring")]
    BadRingPosition(u16),
    #[error("next index {0} out of range")]
    NextOutOfRange(u16),
    #[error("chain longer than the queue size (loop?)")]
    ChainTooLong,
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    #[error("indirect table length {0} is not a non-zero multiple of 16 within the queue size")]
    BadIndirectLen(u32),
    #[error("indirect descriptors were not negotiated")]
    IndirectNotNegotiated,
    #[error("avail index jumped by {0} (more than the queue size)")]
    AvailJump(u16),
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("a device-writable descriptor where only readable ones belong")]
    UnexpectedWritable,
    #[error("a device-readable descriptor where only writable ones belong")]
    UnexpectedReadable,
    #[error("ring address {0:#x} misaligned")]
    MisalignedRing(u64),
    /// The IOVA is aligned, but its region's file offset is not, so the host
    /// address is: an aligned access there would be undefined behaviour.
    #[error("ring address {0:#x} maps to a misaligned host address")]
    MisalignedHost(u64),
    #[error("chain total length overflows")]
    LengthOverflow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("malformed ring: {0}")]
    Malformed(#[from] Malformed),
    #[error("translation failed: {0}")]
    Xlate(#[from] XlateError),
}
