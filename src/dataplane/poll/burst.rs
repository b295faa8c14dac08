//! One burst on one queue. Every packet path is built from this and
//! [`Chain`]: take chains with [`Burst::pop`], complete them with
//! [`Burst::complete`], count into [`Burst::tally`], and end with
//! [`Burst::finish`], which publishes the used entries once, injects an
//! interrupt only if the driver asked for one, adds the tally to the
//! pair's counters and, if the driver broke the queue, stops it.

use super::super::stats::{bump, PairCell, PairStats};
use super::Queue;
use crate::mem::{AddressSpace, ReadGuard};
use crate::vduse::VduseDevice;
use crate::virtq::{Chain, Direction, Head, QueueError, SplitQueue};

pub(super) struct Burst<'a> {
    queue: &'a mut Queue,
    /// The first error; no chain is taken after it.
    error: Option<QueueError>,
    /// Counts of this burst, added to the pair's counters in `finish`.
    pub tally: PairStats,
}

impl<'a> Burst<'a> {
    /// Start a burst on a runnable queue: re-derive ring pointers if the
    /// address space changed.
    #[inline]
    pub fn begin(queue: &'a mut Queue, space: &AddressSpace, g: &ReadGuard<'_>) -> Burst<'a> {
        let error = queue.q.as_mut().expect("runnable queue").refresh(space, g).err();
        Burst { queue, error, tally: PairStats::default() }
    }

    #[inline]
    fn q(&mut self) -> &mut SplitQueue {
        self.queue.q.as_mut().expect("runnable queue")
    }

    /// Chains available now (0 after an error).
    #[inline]
    pub fn pending(&mut self) -> usize {
        if self.error.is_some() {
            return 0;
        }
        match self.q().pending() {
            Ok(n) => n as usize,
            Err(e) => {
                self.error = Some(e);
                0
            }
        }
    }

    /// Take the next chain and read its pieces. `None` when the driver broke
    /// the queue (the burst ends, `finish` stops the queue). The caller
    /// checked `pending`.
    #[inline]
    pub fn pop<'g>(&mut self, dir: Direction, space: &AddressSpace, g: &'g ReadGuard<'_>) -> Option<Chain<'g>> {
        if self.error.is_some() {
            return None;
        }
        let q = self.q();
        let r = q.pop_head().and_then(|head| q.read_chain(head, dir, space, g));
        match r {
            Ok(c) => Some(c),
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    /// Return a chain to the driver with `len` bytes written (visible at
    /// `finish`).
    #[inline]
    pub fn complete(&mut self, head: Head, len: u32) {
        self.q().push_used(head, len);
    }

    /// End the burst: publish, interrupt, count, fail the queue if broken.
    #[inline]
    pub fn finish(mut self, device: &dyn VduseDevice, stats: &PairCell) {
        // Chains completed before an error are still published.
        if self.q().publish_used() {
            self.tally.irqs += 1;
            let _ = device.inject_vq_irq(self.queue.vq);
        }
        stats.add(&self.tally);
        if let Some(e) = self.error.take() {
            fail_queue(device, stats, self.queue, e);
        }
    }
}

/// Stop one queue after the driver broke it, and tell the driver.
#[cold]
pub(super) fn fail_queue(device: &dyn VduseDevice, stats: &PairCell, queue: &mut Queue, e: QueueError) {
    queue.failed = true;
    bump(&stats.queue_errors, 1);
    stats.state.fail(queue.vq, e);
    let shown = device.signal_needs_reset();
    log::error!(
        "vq {}: {e}; queue stopped{}",
        queue.vq,
        if shown { ", device needs reset" } else { " (this kernel cannot show NEEDS_RESET; reset the device)" }
    );
}
