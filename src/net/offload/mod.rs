//! Checksum and segmentation offloads, done in software where a receiver
//! did not negotiate them (virtio 1.3 §5.1.6.2, §5.1.6.4; issue 11).
//!
//! Pure code over byte slices: no I/O, no threads, no guest memory, no
//! allocation. The dataplane uses it per frame:
//!
//! 1. [`validate`] the frame's virtio-net header against the frame and the
//!    sender's permissions ([`Sender::driver`] for a TX queue,
//!    [`Sender::port`] for a port) -> an [`Offload`] or an
//!    [`OffloadError`] (a counted drop, [`OffloadError::code`]).
//! 2. For each receiver, [`Offload::deliver`] with what it accepts
//!    ([`OffloadCaps::guest`], or a port's caps) -> a [`Delivery`]: as is,
//!    complete the checksum ([`csum::complete`]), or segment
//!    ([`Segmenter`]), with the header that receiver gets.
//!
//! - [`csum`]: Internet checksum, pseudo-headers, NEEDS_CSUM completion.
//! - [`caps`]: what senders may send and receivers accept; TUN flags.
//! - [`validate`](mod@validate): header validation.
//! - [`deliver`](mod@deliver): the per-receiver decision.
//! - [`gso`]: TSO4/TSO6/USO segmentation into caller buffers.
//! - [`verify`](mod@verify): checksum verification (DATA_VALID decisions).

pub mod caps;
pub mod csum;
pub mod deliver;
pub mod gso;
pub mod validate;
pub mod verify;

pub use caps::{OffloadCaps, Sender};
pub use deliver::Delivery;
pub use gso::{GsoError, SegCsum, Segmenter};
pub use validate::{validate, CsumState, ErrorCode, Gso, GsoKind, Offload, OffloadError};
pub use verify::{verify, Verdict};

#[cfg(test)]
mod tests;
