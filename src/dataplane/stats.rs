//! Counters. Each block is written by one thread only (Relaxed stores of
//! values it alone updates) and read by anyone; blocks are cache-line
//! padded so threads never share a line.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use serde::Serialize;

macro_rules! counters {
    ($name:ident, $snap:ident { $($(#[doc = $doc:expr])* $field:ident),* $(,)? }) => {
        #[derive(Debug, Default)]
        pub struct $name { $($(#[doc = $doc])* pub $field: AtomicU64,)* }

        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct $snap { $($(#[doc = $doc])* pub $field: u64,)* }

        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
            }

            /// Add a burst's counts (only its writer thread calls this).
            #[inline]
            pub fn add(&self, d: &$snap) {
                $(if d.$field != 0 { bump(&self.$field, d.$field); })*
            }
        }
    };
}

counters!(
    PairCounters,
    PairStats {
        tx_frames,
        tx_bytes,
        tx_dropped,
        tx_backpressure,
        rx_frames,
        rx_bytes,
        rx_filtered,
        rx_no_buffer,
        rx_dropped_small,
        /// TX frames asking for checksum/segmentation a port cannot do.
        tx_offload_dropped,
        /// Port frames still needing offload work the driver did not negotiate.
        rx_offload_dropped,
        /// TX GSO frames segmented in software, and the segments made.
        tx_sw_gso,
        tx_sw_segments,
        /// TX frames whose partial checksum was completed in software.
        tx_sw_csum,
        /// Port frames segmented in software for the driver, and the segments.
        rx_sw_gso,
        rx_sw_segments,
        /// Port frames whose partial checksum was completed for the driver.
        rx_sw_csum,
        /// Frames delivered over more than one RX buffer (MRG_RXBUF).
        rx_merged,
        /// Port frames handed to another pair's RX queue (RSS, or a pair
        /// the driver does not use passing its frames on).
        rx_steered,
        /// Port frames dropped on their way to another pair: the target's
        /// handoff inbox (or this pair's arena) stayed full for longer than
        /// the back-pressure bound (`handoff::STEER_WAIT`, 500 ms), or was
        /// full again after such a wait (a pair whose driver posts no RX
        /// buffers); also frames over 64 KiB from a pair the driver does
        /// not use. A frame that finds its target full waits in the port
        /// and is not counted here.
        rx_steer_dropped,
        /// Port frames RSS meant for another pair, delivered here instead
        /// (larger than 64 KiB, which no port hands over).
        rx_unsteered,
        reflected,
        irqs,
        queue_errors,
        sleeps,
        wakeups,
        /// Driver kicks (notifications) the poll thread took from its kick
        /// eventfds, which it reads only after a wait (an adaptive-idle
        /// sleep, or waiting for its queues to start): a busy-polling
        /// thread counts almost none.
        kicks,
        /// Chains with more pieces than a `virtq::Chain` keeps (dropped).
        chain_overflow,
        /// Panics of the poll thread (each stops the pair until reset).
        panics,
        /// 1 while the pair is stopped after a panic (a state, not a count).
        failed,
        /// 1 while the pair serves queues (between DRIVER_OK and reset).
        started,
        /// Clock ticks (`dataplane::cycles::UNIT`: TSC cycles on x86_64) of
        /// poll iterations that moved at least one frame.
        busy_cycles,
        /// Frames those iterations moved (each frame once: driver TX chains
        /// taken, plus port frames delivered unless the port reflects).
        busy_frames,
        /// The part of `busy_cycles` / `busy_frames` from iterations longer
        /// than `cycles::LONG_ITERATION` (mostly preemption when shared).
        busy_long_cycles,
        busy_long_frames,
        /// The iterations counted in `busy_cycles`: `busy_frames` over this
        /// is the mean burst, which says how much each burst's fixed costs
        /// (ring indexes, publishing, counters) weigh per frame.
        busy_iterations,
    }
);

counters!(
    SlowPathCounters,
    SlowPathStats {
        requests,
        failed_replies,
        get_vq_state,
        set_status,
        update_iotlb,
        set_group_asid,
        set_vq_ready,
        late_enables,
        suspend,
        ctrl_ok,
        ctrl_err,
        needs_reset,
        /// Config interrupts for a status change (link, announce).
        config_irqs,
        /// Announce requests made to the driver (reattach, operator).
        announces,
    }
);

/// Per-pair counters, padded to their own cache lines, and the pair's queue
/// state (written by the poll thread on changes only, on lines of its own).
/// Derefs to the counters, so `cell.tx_frames` reads as before.
#[derive(Debug, Default)]
pub struct PairCell {
    counters: CachePadded<PairCounters>,
    pub state: CachePadded<crate::ops::state::PairState>,
}

impl std::ops::Deref for PairCell {
    type Target = PairCounters;
    fn deref(&self) -> &PairCounters {
        &self.counters
    }
}

/// Add to a counter that only the calling thread writes: a plain load and
/// store, no locked read-modify-write on the fast path.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}
