//! Counters. Each block is written by one thread only (Relaxed stores of
//! values it alone updates) and read by anyone; blocks are cache-line
//! padded so threads never share a line.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use serde::Serialize;

macro_rules! counters {
    ($name:ident, $snap:ident { $($field:ident),* $(,)? }) => {
        #[derive(Debug, Default)]
        pub struct $name { $(pub $field: AtomicU64,)* }

        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct $snap { $(pub $field: u64,)* }

        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
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
        reflected,
        irqs,
        queue_errors,
        sleeps,
        wakeups,
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
    }
);

/// Per-pair counters, padded to their own cache lines.
pub type PairCell = CachePadded<PairCounters>;

/// Add to a counter that only the calling thread writes: a plain load and
/// store, no locked read-modify-write on the fast path.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}
