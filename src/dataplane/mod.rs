//! The dataplane: poll threads (fast path) and the slow-path thread.
//!
//! - [`device`]: creating a VDUSE virtio-net device and running it.
//! - [`slowpath`]: the thread that answers VDUSE control messages and
//!   serves the control virtqueue ([`ctrlq`]).
//! - [`poll`]: one pinned poll thread per data vq group (a queue pair).
//! - [`mailbox`]: slow path -> poll thread commands, each acknowledged.
//! - [`stats`]: counters; [`cycles`]: the busy-cycle clock behind them.

pub mod ctrlq;
pub mod cycles;
pub mod device;
pub mod mailbox;
pub mod poll;
#[cfg(test)]
mod reconnect_tests;
pub mod slowpath;
pub mod stats;

use std::time::Duration;

pub use device::{DeviceError, DeviceOptions, NetDevice, ReattachError, RunningDevice};

/// What a poll thread does when there is no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Spin forever (benchmarks, NFV on dedicated cores).
    Busy,
    /// Spin `spins` empty polls, then re-enable notifications and sleep on
    /// the kick eventfds (wakes within tens of microseconds).
    Adaptive { spins: u32 },
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy::Adaptive { spins: 2000 }
    }
}

/// Longest sleep of an idle poll thread before it re-checks (a safety net;
/// kicks and mailbox commands wake it at once).
pub const IDLE_SLEEP: Duration = Duration::from_millis(100);

/// vq numbering of virtio-net: pair i is rx 2i, tx 2i+1; the control queue
/// follows the data queues.
pub fn rx_vq(pair: u16) -> u32 {
    2 * pair as u32
}
pub fn tx_vq(pair: u16) -> u32 {
    2 * pair as u32 + 1
}
