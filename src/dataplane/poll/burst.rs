//! One burst on one queue. Every packet path is built from this and
//! [`Chain`]: take chains with [`Burst::pop_into`], complete them with
//! [`Burst::complete`], count into [`Burst::tally`], and end with
//! [`Burst::finish`], which publishes the used entries once, injects an
//! interrupt only if the driver asked for one, adds the tally to the
//! pair's counters and, if the driver broke the queue, stops it.
//!
//! A burst is generic over the ring format ([`Ring`]): the poll thread
//! picks the format once per iteration and every call below is static.
//!
//! [`Burst::prewalk`] reads the burst's chains ahead (split rings): their
//! descriptors read and buffers translated before the first frame is
//! copied, buffer lines requested [`PREFETCH_AHEAD`] chains ahead of the
//! copy, and `pop_into` then takes them without walking again. Measured in
//! 64 B loopback device cycles per frame (interleaved A/B, medians): 0.88x
//! with every buffer requested at the read-ahead, 0.80x with the distance
//! of 8, against the one-chain-ahead prefetch before it.

use std::sync::atomic::{fence, Ordering};

use super::super::stats::{bump, PairCell, PairStats};
use super::Queue;
use crate::mem::{AddressSpace, ReadGuard};
use crate::persist::fault::Stage;
use crate::vduse::VduseDevice;
use crate::virtq::chain::Lookahead;
use crate::virtq::{Chain, Direction, Head, QueueError, Ring};

/// How many chains ahead of the one being copied a burst's read-ahead
/// requests buffer lines. Measured in 64 B loopback device cycles per
/// frame (interleaved, 5 rounds): 4 ahead 1.06x, 8 ahead 0.91x and 16
/// ahead 0.99x of requesting all 32 at the read-ahead; more in flight than
/// the core's fill buffers only queues them.
const PREFETCH_AHEAD: usize = 8;

pub(super) struct Burst<'a, 'g, R: Ring> {
    ring: &'a mut R,
    /// Chains read ahead by [`Burst::prewalk`], taken first by `pop_into`.
    ahead: Lookahead<'a, 'g>,
    vq: u32,
    failed: &'a mut bool,
    log: &'a crate::persist::PositionSlot,
    /// The first error; no chain is taken after it.
    error: Option<QueueError>,
    /// Counts of this burst, added to the pair's counters in `finish`.
    pub tally: PairStats,
}

impl<'a, 'g, R: Ring> Burst<'a, 'g, R> {
    /// Start a burst on a runnable queue of format `R`: re-derive ring
    /// pointers if the address space changed.
    #[inline]
    pub fn begin(queue: &'a mut Queue, space: &AddressSpace, g: &'g ReadGuard<'_>) -> Burst<'a, 'g, R> {
        let Queue { vq, q, failed, log, ahead, .. } = queue;
        let ring = R::of(q.as_mut().expect("runnable queue")).expect("a queue of the pair's ring format");
        let error = ring.refresh(space, g).err();
        Burst { ring, ahead: Lookahead::new(ahead), vq: *vq, failed, log, error, tally: PairStats::default() }
    }

    /// Chains available now (0 after an error).
    #[inline]
    pub fn pending(&mut self) -> usize {
        if self.error.is_some() {
            return 0;
        }
        match self.ring.pending() {
            Ok(n) => n as usize,
            Err(e) => {
                self.error = Some(e);
                0
            }
        }
    }

    /// Take the next chain and read its pieces into `chain` (one chain per
    /// path, refilled: no copy of the piece list per frame). `false` when
    /// the driver broke the queue (the burst ends, `finish` stops the
    /// queue; `chain` is not to be used). The caller checked `pending`.
    #[inline]
    pub fn pop_into(
        &mut self,
        chain: &mut Chain<'g>,
        dir: Direction,
        space: &AddressSpace,
        g: &'g ReadGuard<'_>,
    ) -> bool {
        if self.error.is_some() {
            return false;
        }
        if self.ring.pop_prewalked(&mut self.ahead, chain) {
            self.ahead.prefetch(PREFETCH_AHEAD - 1);
            return true;
        }
        match self.ring.pop_into(chain, dir, space, g) {
            Ok(()) => true,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// Read ahead up to `max` of the chains the burst will take (see
    /// [`Ring::prewalk`]): their descriptors read and buffers translated
    /// now. The first [`PREFETCH_AHEAD`] buffers are requested here, and
    /// each chain `pop_into` takes from the read-ahead requests the one
    /// that many places later, so a buffer's lines are on their way while
    /// the frames before it are copied, at no translation cost.
    #[inline]
    pub fn prewalk(&mut self, max: usize, dir: Direction, space: &AddressSpace, g: &'g ReadGuard<'_>) {
        if self.error.is_none() {
            self.ring.prewalk(&mut self.ahead, max, dir, space, g);
            for d in 0..PREFETCH_AHEAD {
                self.ahead.prefetch(d);
            }
        }
    }

    /// Prefetch the next chain's first buffer (a hint, see
    /// [`Ring::prefetch_next`]); nothing after an error, nor while chains
    /// read ahead remain (their lines were requested already).
    #[inline]
    pub fn prefetch_next(&self, space: &AddressSpace, g: &ReadGuard<'_>) {
        if self.error.is_none() && self.ahead.is_empty() {
            self.ring.prefetch_next(space, g);
        }
    }

    /// Ask for the line of the next avail entry (see [`Ring::prefetch_avail`]).
    #[inline]
    pub fn prefetch_avail(&self) {
        if self.error.is_none() {
            self.ring.prefetch_avail();
        }
    }

    /// The queue's size (slots in the ring).
    #[inline]
    pub fn queue_size(&self) -> u16 {
        self.ring.config().size
    }

    /// Give back the chains popped last, none completed (see
    /// [`Ring::rewind`]).
    #[inline]
    pub fn rewind(&mut self, heads: &[Head]) {
        self.ahead.clear();
        self.ring.rewind(heads);
    }

    /// Return a chain to the driver with `len` bytes written (visible at
    /// `finish`).
    #[inline]
    pub fn complete(&mut self, head: Head, len: u32) {
        self.ring.push_used(head, len);
    }

    /// End the burst: publish, interrupt, count, fail the queue if broken.
    #[inline]
    pub fn finish(self, device: &dyn VduseDevice, stats: &PairCell) {
        // Chains completed before an error are still published.
        self.log.fault_point(Stage::BeforePublish);
        let irq = self.ring.publish_used();
        self.published(irq, device, stats);
    }

    /// End two bursts of one pass (the reflector's): `finish` for each,
    /// with one fence for both. `first` is published first: the reflector
    /// passes its RX burst, whose used entries the driver waits on, so
    /// they leave before the TX completions, and neither waits for the
    /// other's store to drain. Measured on `latency --mode fwd`: see the
    /// README's Performance section.
    #[inline]
    pub fn finish_pair(first: Self, second: Self, device: &dyn VduseDevice, stats: &PairCell) {
        first.log.fault_point(Stage::BeforePublish);
        second.log.fault_point(Stage::BeforePublish);
        let a = first.ring.publish_used_store();
        let b = second.ring.publish_used_store();
        if a || b {
            // Both used stores before either read of the driver's
            // suppression state (what `Ring::publish_used` fences for one).
            fence(Ordering::SeqCst);
        }
        let irq_a = a && first.ring.interrupt_wanted();
        let irq_b = b && second.ring.interrupt_wanted();
        first.published(irq_a, device, stats);
        second.published(irq_b, device, stats);
    }

    /// After the publish: log the position, interrupt, count, fail the
    /// queue if broken.
    #[inline]
    fn published(mut self, irq: bool, device: &dyn VduseDevice, stats: &PairCell) {
        // Reconnect: the position after the publish, a store into the
        // mapped state log (see crate::persist for the ordering).
        self.log.fault_point(Stage::BeforeLog);
        self.log.record(self.ring.position());
        if irq {
            self.tally.irqs += 1;
            let _ = device.inject_vq_irq(self.vq);
        }
        stats.add(&self.tally);
        if let Some(e) = self.error.take() {
            fail(device, stats, self.vq, self.failed, e);
        }
    }
}

/// Stop one queue after the driver broke it, and tell the driver.
#[cold]
pub(super) fn fail_queue(device: &dyn VduseDevice, stats: &PairCell, queue: &mut Queue, e: QueueError) {
    fail(device, stats, queue.vq, &mut queue.failed, e)
}

#[cold]
fn fail(device: &dyn VduseDevice, stats: &PairCell, vq: u32, failed: &mut bool, e: QueueError) {
    *failed = true;
    bump(&stats.queue_errors, 1);
    stats.state.fail(vq, e);
    let shown = device.signal_needs_reset();
    log::error!(
        "vq {vq}: {e}; queue stopped{}",
        if shown { ", device needs reset" } else { " (this kernel cannot show NEEDS_RESET; reset the device)" }
    );
}
