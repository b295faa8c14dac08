//! Ports: where a queue pair's packets go.
//!
//! A [`Port`] is owned by exactly one poll thread. The TX path copies a
//! frame straight from the driver's descriptors into a port slot; the RX
//! path copies from a port slot into the driver's descriptors. Ports own
//! their slots (no allocation per packet) and apply back-pressure: a full
//! port leaves TX chains on the ring, an empty RX ring leaves frames in the
//! port. Every frame carries its [`FrameMeta`] (the virtio-net header's
//! offload fields) beside its bytes.
//!
//! In-process ports:
//! - [`loopback`]: TX of a pair comes back on RX of the same pair (same
//!   thread, no crossing), optionally with the MAC addresses swapped.
//! - [`patch`]: a wire between two devices: frames cross threads through
//!   single-producer/single-consumer slot rings.
//! - [`sink`]: drops every TX frame (TX-only benchmarks).
//! - [`source`]: generated frames for RX (RX-only benchmarks).
//!
//! Ports onto a host interface ([`host`] opens them by name):
//! - [`tap`]: one multi-queue tap queue per pair (IFF_VNET_HDR).
//! - [`af_packet`]: one packet socket per pair with mmapped TPACKET_V3
//!   rings, spread over the pairs with PACKET_FANOUT.
//! - [`af_xdp`]: one AF_XDP socket per pair on the NIC queue of the same
//!   index, fed by a small XDP program.
//!
//! [`link`] lets the device's link state follow the interface.

pub mod af_packet;
pub mod af_xdp;
mod bufq;
pub mod host;
pub mod iface;
pub mod link;
pub mod loopback;
pub mod meta;
mod packet_ring;
pub mod patch;
mod rtnl;
pub mod sink;
pub mod slots;
pub mod source;
mod sys;
pub mod tap;

use std::os::fd::BorrowedFd;

use nix::poll::PollFlags;

pub use meta::FrameMeta;

use crate::net::offload::OffloadCaps;

/// Largest frame a port slot holds (Ethernet with one VLAN tag, 1500 MTU,
/// plus headroom for jumbo-ish test frames).
pub const SLOT_SIZE: usize = 2048;

/// A frame waiting in a port for the driver's RX queue.
#[derive(Clone, Copy, Debug)]
pub struct PortFrame<'a> {
    pub bytes: &'a [u8],
    pub meta: FrameMeta,
}

/// What an idle poll thread sleeps on for its port, beside its kick fds.
pub struct PortWake<'a> {
    pub fd: BorrowedFd<'a>,
    pub events: PollFlags,
}

pub trait Port: Send {
    /// A slot to write one TX frame into, or `None` when the port is full
    /// (the chain stays on the driver's ring).
    fn tx_slot(&mut self) -> Option<&mut [u8]>;
    /// The frame in the slot from `tx_slot` is `len` bytes with `meta`:
    /// send it. `meta` is offloaded only if [`Port::offloads`] said yes.
    fn tx_commit(&mut self, len: usize, meta: FrameMeta);
    /// End of a TX burst: make committed frames visible to the consumer
    /// (for a host port: hand them to the kernel).
    fn tx_flush(&mut self);
    /// Before a poll pass: take frames from the port's far side (a host
    /// port's kernel queue) into the port; at most one syscall, none if the
    /// port already holds frames. In-process ports need nothing.
    fn rx_fill(&mut self) {}
    /// The next frame for the driver's RX queue, left in the port until
    /// `rx_consume`.
    fn rx_peek(&mut self) -> Option<PortFrame<'_>>;
    /// Drop the frame returned by `rx_peek` (delivered or filtered).
    fn rx_consume(&mut self);
    /// End of an RX burst: hand consumed slots back to the producer.
    fn rx_flush(&mut self);
    /// Frames waiting for RX in the port (no I/O; see `rx_fill`).
    fn rx_pending(&self) -> usize;
    /// Whether the port takes frames whose metadata asks for checksum or
    /// segmentation work (passing it to a kernel that does it). A port that
    /// says no never gets such a frame.
    fn offloads(&self) -> bool {
        false
    }
    /// The device's MTU needs frames of `max_frame` bytes (MTU, Ethernet
    /// header and a VLAN tag): size the port's buffers for them. Called
    /// once, before the port moves to its poll thread. False when the port
    /// cannot carry them (fixed [`SLOT_SIZE`] slots); the device then
    /// refuses to start rather than advertise an MTU whose frames it drops.
    fn reserve_frames(&mut self, max_frame: usize) -> bool {
        max_frame <= SLOT_SIZE
    }
    /// The driver's receive offloads changed (DRIVER_OK, or
    /// CTRL_GUEST_OFFLOADS_SET): `accept` is what it takes now, `gso` whether
    /// the device carries GSO frames (up to 64 KiB) at all. A port whose far
    /// side can hand it offloaded frames asks for at most `accept` (a tap:
    /// `TUNSETOFFLOAD`) and sizes its buffers for them, and returns what it
    /// may now hand the device (while a change is on its way, the old
    /// offloads too); a port that only ever gives plain frames returns
    /// [`OffloadCaps::NONE`]. Cold: never per packet. Never blocks on the
    /// RTNL lock (a guest's probe holds it while the slow path waits for
    /// the poll thread that calls this): a tap applies the flags from a
    /// thread of its own.
    fn set_offloads(&mut self, accept: OffloadCaps, gso: bool) -> OffloadCaps {
        let _ = (accept, gso);
        OffloadCaps::NONE
    }
    /// A reflector (TX of this pair comes back on its RX, in the same
    /// thread) may let the poll thread copy a frame straight from the TX
    /// chain into an RX chain, skipping the port's slot. `Some(mac_swap)`
    /// when that is allowed. Only used while the port holds no frames, so
    /// order is kept.
    fn reflect(&self) -> Option<bool> {
        None
    }
    /// The port's frames belong to its own pair's RX queue (a benchmark
    /// source that numbers its frames per pair): while the driver does not
    /// use the pair they wait, rather than go to the pairs it uses as a
    /// real port's frames do.
    fn pair_bound(&self) -> bool {
        false
    }
    /// What to sleep on in adaptive idle mode, after `arm_rx_wakeup`
    /// returned `false`: an eventfd another thread signals, or a host
    /// port's fd (readable when frames arrive, writable again after
    /// back-pressure). `None` for same-thread ports.
    fn wake(&self) -> Option<PortWake<'_>> {
        None
    }
    /// About to sleep: ask the producer to signal the wake fd. Returns
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
