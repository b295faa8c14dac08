//! Ports: where a queue pair's packets go.
//!
//! A [`Port`] is owned by exactly one poll thread. The TX path copies a
//! frame straight from the driver's descriptors into a port slot; the RX
//! path copies from a port slot into the driver's descriptors. Ports own
//! their slots (no allocation per packet) and apply back-pressure: a full
//! port leaves TX chains on the ring, an empty RX ring leaves frames in the
//! port.
//!
//! - [`loopback`]: TX of a pair comes back on RX of the same pair (same
//!   thread, no crossing), optionally with the MAC addresses swapped.
//! - [`patch`]: a wire between two devices: frames cross threads through
//!   single-producer/single-consumer slot rings.
//! - [`sink`]: drops every TX frame (TX-only benchmarks).
//! - [`source`]: generated frames for RX (RX-only benchmarks).

pub mod loopback;
pub mod patch;
pub mod sink;
pub mod slots;
pub mod source;

use std::os::fd::BorrowedFd;

/// Largest frame a port slot holds (Ethernet with one VLAN tag, 1500 MTU,
/// plus headroom for jumbo-ish test frames).
pub const SLOT_SIZE: usize = 2048;

pub trait Port: Send {
    /// A slot to write one TX frame into, or `None` when the port is full.
    fn tx_slot(&mut self) -> Option<&mut [u8]>;
    /// The frame in the slot from `tx_slot` is `len` bytes: send it.
    fn tx_commit(&mut self, len: usize);
    /// End of a TX burst: make committed frames visible to the consumer.
    fn tx_flush(&mut self);
    /// The next frame for the driver's RX queue, left in the port until
    /// `rx_consume`.
    fn rx_peek(&mut self) -> Option<&[u8]>;
    /// Drop the frame returned by `rx_peek` (delivered or filtered).
    fn rx_consume(&mut self);
    /// End of an RX burst: hand consumed slots back to the producer.
    fn rx_flush(&mut self);
    /// Frames waiting for RX.
    fn rx_pending(&self) -> usize;
    /// A reflector (TX of this pair comes back on its RX, in the same
    /// thread) may let the poll thread copy a frame straight from the TX
    /// chain into an RX chain, skipping the port's slot. `Some(mac_swap)`
    /// when that is allowed. Only used while the port holds no frames, so
    /// order is kept.
    fn reflect(&self) -> Option<bool> {
        None
    }
    /// An fd that becomes readable when frames arrive from another thread,
    /// after `arm_rx_wakeup` returned `false`. `None` for same-thread ports.
    fn rx_wake_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// About to sleep: ask the producer to signal `rx_wake_fd`. Returns
    /// `true` if frames are already waiting (then do not sleep).
    fn arm_rx_wakeup(&mut self) -> bool {
        self.rx_pending() > 0
    }
    /// Woke up (or decided not to sleep).
    fn disarm_rx_wakeup(&mut self) {}
    /// The port's own counters for the stats socket, taken once before the
    /// port moves to its poll thread.
    fn stats(&self) -> Option<std::sync::Arc<dyn crate::ops::PortStats>> {
        None
    }
}

/// Swap destination and source MAC addresses (testpmd's macswap).
#[inline]
pub fn mac_swap(frame: &mut [u8]) {
    if frame.len() >= 12 {
        let (dst, rest) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
    }
}
