//! A poll thread without its thread, for the fuzz target `rx_steer`
//! (tests/fuzz): the real [`PollThread`] built from a [`PollSetup`],
//! started by [`FuzzPair::start`] and run one RX pass at a time by
//! [`FuzzPair::step`], on the caller's thread and QSBR reader, so a fuzz
//! input is deterministic. Not an API: nothing else uses it.
//!
//! The loop's own methods (`handle`, `poll_once`) are private to
//! `thread.rs`; `start` and `step` mirror the parts of them that the RX
//! path depends on (keep them in step) and call the RX path itself
//! (`process_rx`, `forward_port`) unchanged.

use std::sync::Arc;

use super::{PollSetup, PollThread};
use crate::mem::{AddressSpace, ReadGuard};
use crate::virtq::{QueueConfig, SplitQueue};

/// The largest frame one poll thread hands another: a port frame beyond
/// it stays on the pair it arrived on (counted `rx_unsteered`).
pub use super::offload::MAX_FRAME as HANDOFF_MAX_FRAME;

/// One pair's poll thread, stepped by hand.
pub struct FuzzPair(PollThread);

impl FuzzPair {
    /// The thread `PollThread::spawn` would run (unpinned; `setup.reader`,
    /// `core` and `idle` are not used: the caller steps it).
    pub fn new(setup: PollSetup) -> Self {
        FuzzPair(PollThread::new(setup).0)
    }

    /// What the `Start` command does for the RX side (DRIVER_OK):
    /// the RX queue `rx` (split ring; none: no RX queue), the address
    /// space, whether the driver uses the pair, the negotiated features.
    pub fn start(&mut self, rx: Option<QueueConfig>, space: Arc<AddressSpace>, active: bool, features: u64) {
        self.0.start(rx, None, space, active, features);
    }

    /// One RX pass of the loop (`run` -> `poll_rings`, without TX, the
    /// reflector and the idle wait): an active pair takes what its port
    /// and the other pairs handed over into its RX ring; a started pair
    /// the driver does not use passes its port's frames on. Returns the
    /// frames handled.
    pub fn step(&mut self, g: &ReadGuard<'_>) -> usize {
        let t = &mut self.0;
        if t.crashed || t.suspended || !t.started {
            return 0;
        }
        if !t.pair_active {
            return if t.handoff.enabled() { t.forward_port() } else { 0 };
        }
        t.sync_guest_offloads();
        t.port.rx_fill();
        if t.rx.runnable() && (t.port.rx_pending() > 0 || t.handoff.pending()) {
            t.process_rx::<SplitQueue>(g)
        } else {
            0
        }
    }

    /// Device reset: forget the frames other pairs handed over (as `Stop`
    /// does); returns how many there were.
    pub fn drain_handoff(&mut self) -> usize {
        self.0.handoff.drain()
    }

    pub fn port(&mut self) -> &mut dyn crate::backend::Port {
        &mut *self.0.port
    }
}
