//! One burst on one queue. Every packet path is built from this and
//! [`Chain`]: take chains with [`Burst::pop_into`], complete them with
//! [`Burst::complete`], count into [`Burst::tally`], and end with
//! [`Burst::finish`], which publishes the used entries once (leaving the
//! interrupt decision to the poll thread, below), adds the tally to the
//! pair's counters and, if the driver broke the queue, stops it.
//!
//! A burst is generic over the ring format ([`Ring`]): the poll thread
//! picks the format once per iteration and every call below is static.
//!
//! [`Burst::prewalk`] reads the burst's chains ahead (split and packed rings): their
//! descriptors read and buffers translated before the first frame is
//! copied, buffer lines requested [`PREFETCH_AHEAD`] chains ahead of the
//! copy, and `pop_into` then takes them without walking again. Measured in
//! 64 B loopback device cycles per frame (interleaved A/B, medians): 0.88x
//! with every buffer requested at the read-ahead, 0.80x with the distance
//! of 8, against the one-chain-ahead prefetch before it.
//!
//! Interrupt decisions are put off. Deciding whether the driver wants an
//! interrupt takes a full fence after the used index store (so that the
//! read of its suppression state cannot pass the store; the driver fences
//! the other way round), and that fence waits for the store to take its
//! line back from the driver's core. So `finish` only publishes and counts
//! the queue as undecided; the poll thread makes the decisions for both
//! queues at once, with one fence, on its next idle iteration, after at
//! most [`IRQ_DECIDE_EVERY`] busy ones, and before it waits or handles a
//! mailbox command (`PollThread::settle_interrupts`). One decision covers
//! every publish since the last (EVENT_IDX compares against the index
//! signalled last), so none is lost: under load an interrupt comes up to
//! that many iterations late, which coalesces interrupts; when traffic
//! stops, one idle poll late.

use super::super::stats::{bump, PairCell, PairStats};
use super::Queue;
use crate::mem::{AddressSpace, ReadGuard};
use crate::persist::fault::Stage;
use crate::vduse::VduseDevice;
use crate::virtq::chain::Lookahead;
use crate::virtq::{Chain, Direction, Head, QueueError, Ring, Single};

/// How many chains ahead of the one being copied a burst's read-ahead
/// requests buffer lines. Measured in 64 B loopback device cycles per
/// frame (interleaved, 5 rounds): 4 ahead 1.06x, 8 ahead 0.91x and 16
/// ahead 0.99x of requesting all 32 at the read-ahead; more in flight than
/// the core's fill buffers only queues them.
const PREFETCH_AHEAD: usize = 8;

/// Busy poll iterations a publish may wait for its interrupt decision
/// (see the module docs).
pub(super) const IRQ_DECIDE_EVERY: u8 = 8;

pub(super) struct Burst<'a, 'g, R: Ring> {
    ring: &'a mut R,
    /// Something was published since the queue's last interrupt decision.
    undecided: &'a mut bool,
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
        let Queue { vq, q, failed, log, ahead, undecided, .. } = queue;
        let ring = R::of(q.as_mut().expect("runnable queue")).expect("a queue of the pair's ring format");
        let error = ring.refresh(space, g).err();
        Burst {
            ring,
            undecided,
            ahead: Lookahead::new(ahead),
            vq: *vq,
            failed,
            log,
            error,
            tally: PairStats::default(),
        }
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

    /// Nothing went wrong so far: a burst that took no chain then has
    /// nothing to publish, log or count, and may be dropped unfinished.
    #[inline]
    pub fn untroubled(&self) -> bool {
        self.error.is_none()
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
        if let Some(s) = self.pop_single() {
            chain.fill_single(&s);
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

    /// Take the next chain as it was read ahead, one buffer (see
    /// [`Single`]), if [`Burst::prewalk`] read it; `None` otherwise, and
    /// then `pop_into` walks it (nothing is taken). The burst asks for the
    /// buffer [`PREFETCH_AHEAD`] chains further on.
    #[inline]
    pub fn pop_single(&mut self) -> Option<Single<'g>> {
        if self.error.is_some() {
            return None;
        }
        let s = self.ring.pop_prewalked(&mut self.ahead)?;
        self.ahead.prefetch(PREFETCH_AHEAD - 1);
        Some(s)
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

    /// End the burst: publish (the interrupt decision is the poll
    /// thread's: see the module docs), count, fail the queue if broken.
    #[inline]
    pub fn finish(mut self, device: &dyn VduseDevice, stats: &PairCell) {
        // Chains completed before an error are still published.
        self.log.fault_point(Stage::BeforePublish);
        self.publish();
        self.published(device, stats);
    }

    /// End two bursts of one pass (the reflector's): `finish` for each.
    /// `first` is published first: the reflector passes its RX burst, whose
    /// used entries the driver waits on, so they leave before the TX
    /// completions.
    #[inline]
    pub fn finish_pair(mut first: Self, mut second: Self, device: &dyn VduseDevice, stats: &PairCell) {
        first.log.fault_point(Stage::BeforePublish);
        second.log.fault_point(Stage::BeforePublish);
        first.publish();
        second.publish();
        first.published(device, stats);
        second.published(device, stats);
    }

    /// Publish the used entries; a publish leaves the queue undecided.
    #[inline]
    fn publish(&mut self) {
        if self.ring.publish_used_store() {
            *self.undecided = true;
        }
    }

    /// After the publish: log the position, count, fail the queue if
    /// broken.
    #[inline]
    fn published(mut self, device: &dyn VduseDevice, stats: &PairCell) {
        // Reconnect: the position after the publish, a store into the
        // mapped state log (see crate::persist for the ordering).
        self.log.fault_point(Stage::BeforeLog);
        self.log.record(self.ring.position());
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

/// The put-off interrupt decision against a driver that re-enables
/// interrupts (virtio's used buffer notification suppression): the device
/// publishes (a Release store of used.idx), may publish again, and decides
/// later, after one SeqCst fence, by reading the driver's flag; the driver
/// sets the flag, fences, and re-reads used.idx, and sleeps if nothing
/// new came. A sleeping driver must always be interrupted. Abstract: two
/// atomics stand for used.idx and the driver's flag (the rings reach them
/// through guest-memory pointers, which loom cannot follow).
#[cfg(all(test, loom))]
mod loom_model {
    use loom::sync::atomic::{fence, AtomicU16, Ordering};
    use loom::sync::Arc;

    fn model(device_fence: bool) {
        loom::model(move || {
            let used = Arc::new(AtomicU16::new(0));
            let wants_irq = Arc::new(AtomicU16::new(0));
            let (u, w) = (used.clone(), wants_irq.clone());
            let device = loom::thread::spawn(move || {
                // Two bursts published; the decision put off past both.
                u.store(1, Ordering::Release);
                u.store(2, Ordering::Release);
                if device_fence {
                    fence(Ordering::SeqCst);
                }
                w.load(Ordering::Relaxed) == 1
            });
            // The driver found nothing, asks for an interrupt, re-checks.
            wants_irq.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let sleeps = used.load(Ordering::Acquire) == 0;
            let irq = device.join().unwrap();
            assert!(!sleeps || irq, "the driver sleeps and no interrupt comes");
        });
    }

    #[test]
    fn a_driver_that_sleeps_is_always_interrupted() {
        model(true);
    }

    /// The model can fail: without the device's fence the store-buffering
    /// interleaving leaves the driver asleep.
    #[test]
    #[should_panic(expected = "no interrupt comes")]
    fn without_the_fence_a_driver_sleeps_for_good() {
        model(false);
    }
}
