//! Poll threads: one per data vq group (a queue pair), pinned to a core.
//!
//! The thread owns its two queues, its port and its counters; nothing here
//! takes a lock or makes a syscall per packet. A burst is: one Acquire load
//! of avail.idx, up to `burst` chains, one Release store of used.idx, and
//! (every few bursts, or at the next idle poll) an interrupt if the driver
//! asked for one. Between bursts the thread
//! announces a QSBR quiescent state, which is what lets the slow path swap
//! translation tables under it.
//!
//! Where things are:
//! - [`thread`](self::thread): the thread's life: spawn, the loop, mailbox
//!   commands, adaptive idle (sleep on kicks), and supervision (a panic
//!   stops the pair, not the process; a reset restarts it).
//! - `burst`: one burst on one queue: taking chains, completing them,
//!   publishing used entries once, the interrupt decision (put off for a
//!   few bursts, made on idle polls), counters, and failing the queue when
//!   the driver broke it.
//! - `tx`: driver TX -> port. **Where a TX frame is copied out of guest
//!   memory** (into a port slot).
//! - `rx`: port -> driver RX (a port frame copied into guest memory).
//! - `reflect`: the reflector's one-copy path, TX chain -> RX chain.
//! - `offload`: what the driver negotiated and the port takes (checksum,
//!   GSO, MRG_RXBUF), and the buffers software offloads work in.
//!
//! Guest memory itself is touched only through [`crate::virtq::Chain`] and
//! its cursors; these files hold no `unsafe`.
//!
//! Ring formats: the paths are generic over [`crate::virtq::Ring`] and the
//! thread chooses split or packed once per poll iteration
//! (`PollThread::poll_once`), so each format gets its own compiled copy of
//! the paths and the split path carries no per-chain dispatch.

mod burst;
#[doc(hidden)]
pub mod fuzzing;
mod handoff;
mod offload;
mod reflect;
mod rx;
mod thread;
mod tx;

use std::sync::Arc;

pub use handoff::Handoff;

use crossbeam::channel::Receiver;
use nix::sys::eventfd::EventFd;

use super::mailbox::{QueuePosition, Request};
use super::stats::PairCell;
use super::IdlePolicy;
use crate::backend::Port;
use crate::mem::{AddressSpace, Reader};
use crate::net::filter::FilterReader;
use crate::net::hdr::HDR_LEN;
use crate::vduse::VduseDevice;
use crate::virtq::{Ring, RingFormat, VirtQueue};

/// The header the device puts in front of every received frame: no
/// offloads, one buffer (num_buffers = 1 at byte 10).
const RX_HDR: [u8; HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// One queue of the pair and whether it may run.
struct Queue {
    vq: u32,
    q: Option<VirtQueue>,
    enabled: bool,
    /// Stopped for good after a malformed ring, until reset.
    failed: bool,
    /// Where bursts log the queue's position (reconnect).
    log: crate::persist::PositionSlot,
    /// Where a burst reads chains ahead (see [`crate::virtq::chain::Lookahead`]).
    ahead: crate::virtq::chain::LookaheadBuf,
    /// Something was published since the last interrupt decision (see
    /// `burst`).
    undecided: bool,
}

impl Queue {
    fn new(vq: u32) -> Self {
        Queue {
            vq,
            q: None,
            enabled: false,
            failed: false,
            log: Default::default(),
            ahead: Default::default(),
            undecided: false,
        }
    }
    fn with_log(vq: u32, log: Option<&Arc<crate::persist::StateLog>>) -> Self {
        Queue { log: crate::persist::PositionSlot::new(log, vq), ..Queue::new(vq) }
    }
    /// The same queue, stopped and forgotten (its log slot kept).
    fn cleared(&self) -> Self {
        Queue { log: self.log.clone(), ..Queue::new(self.vq) }
    }
    fn runnable(&self) -> bool {
        self.enabled && !self.failed && self.q.is_some()
    }
    fn position(&self) -> Option<QueuePosition> {
        self.q.as_ref().map(|q| {
            let (last_avail, used) = q.position();
            QueuePosition { vq: self.vq, last_avail, used }
        })
    }
}

/// Everything a poll thread needs, handed over at spawn.
pub struct PollSetup {
    pub pair: u16,
    pub device: Arc<dyn VduseDevice>,
    pub space: Arc<AddressSpace>,
    pub reader: Reader,
    pub mailbox: Receiver<Request>,
    pub wake: Arc<EventFd>,
    pub kick_rx: Arc<EventFd>,
    pub kick_tx: Arc<EventFd>,
    pub port: Box<dyn Port>,
    pub filter: FilterReader,
    pub stats: Arc<PairCell>,
    pub burst: usize,
    pub idle: IdlePolicy,
    pub core: Option<usize>,
    /// The device's state log, for the queue positions.
    pub log: Option<Arc<crate::persist::StateLog>>,
    /// This pair's ends of the frame handoff mesh (RSS, unused pairs).
    pub handoff: Handoff,
}

pub struct PollThread {
    pair: u16,
    device: Arc<dyn VduseDevice>,
    space: Arc<AddressSpace>,
    mailbox: Receiver<Request>,
    wake: Arc<EventFd>,
    kick_rx: Arc<EventFd>,
    kick_tx: Arc<EventFd>,
    port: Box<dyn Port>,
    filter: FilterReader,
    stats: Arc<PairCell>,
    burst: usize,
    idle: IdlePolicy,
    rx: Queue,
    tx: Queue,
    /// The ring format of both queues (set at Start).
    format: RingFormat,
    suspended: bool,
    pair_active: bool,
    /// The thread panicked: the pair stays stopped until a reset.
    crashed: bool,
    /// Busy cycles and frames (iterations that moved something).
    busy: super::cycles::BusyClock,
    /// Negotiated offloads and the buffers software offloads use.
    offloads: offload::Offloads,
    /// Frames to and from other pairs' threads (RSS steering, and the
    /// port frames of a pair the driver does not use).
    handoff: Handoff,
    /// Between Start and Stop (the pair may be inactive meanwhile).
    started: bool,
    /// Busy iterations since a queue was left with an interrupt decision
    /// to make (see `burst`).
    undecided_polls: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_header_says_one_buffer() {
        assert_eq!(u16::from_le_bytes([RX_HDR[10], RX_HDR[11]]), 1);
        assert_eq!(RX_HDR.len(), 12);
    }
}
