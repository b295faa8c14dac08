//! The slow path's view of a device, for the stats reader.
//!
//! The slow path builds a [`ControlState`] after each message it handled and
//! publishes it when it changed. Publishing swaps an `Arc` under a mutex the
//! slow path only ever *tries* to take: if a reader holds it (for the few
//! nanoseconds of an `Arc` clone), the slow path keeps the snapshot and tries
//! again on its next loop (at most 100 ms later), so a reader can never make
//! it wait. The poll threads never touch any of this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

use serde::{Deserialize, Serialize};

/// What the slow path knows about the device (everything here changes only
/// on control messages or control-queue commands).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// Virtio device status byte (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, ...).
    pub status: u8,
    /// Features the driver accepted (0 before FEATURES_OK).
    pub features: u64,
    /// Address space of each vq group, indexed by group.
    pub group_asid: Vec<u32>,
    /// SUSPEND received and no reset since.
    pub suspended: bool,
    /// virtio-net config `status` (LINK_UP = 1, ANNOUNCE = 2).
    pub link_status: u16,
    /// Current MAC (changed by MAC_ADDR_SET).
    pub mac: [u8; 6],
    /// Queue pairs in use (VQ_PAIRS_SET; 1 without multiqueue).
    pub active_pairs: u16,
    /// The control queue, when the device has one.
    pub cvq: Option<CvqState>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CvqState {
    pub vq: u32,
    pub group: u32,
    /// Configured by the driver and being served.
    pub ready: bool,
    /// Stopped after a malformed ring until reset.
    pub failed: bool,
}

/// The published snapshot and the slow path's heartbeat.
#[derive(Debug, Default)]
pub struct ControlCell {
    current: Mutex<Arc<ControlState>>,
    /// Loops of the slow path; the watchdog feeds systemd only while it moves.
    beats: AtomicU64,
    /// Operator announce requests (stats socket `announce`); the slow path
    /// acts when the count moved since its last look.
    announce: AtomicU64,
}

impl ControlCell {
    /// Slow path: publish `s` unless a reader holds the cell right now.
    /// Returns `false` when it must be tried again later.
    pub fn try_publish(&self, s: &ControlState) -> bool {
        match self.current.try_lock() {
            Ok(mut cur) => {
                *cur = Arc::new(s.clone());
                true
            }
            // A reader that panicked while holding the lock left a valid Arc.
            Err(TryLockError::Poisoned(p)) => {
                *p.into_inner() = Arc::new(s.clone());
                true
            }
            Err(TryLockError::WouldBlock) => false,
        }
    }

    /// Reader: the last published state.
    pub fn load(&self) -> Arc<ControlState> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Slow path: one more loop done (Relaxed: only progress matters).
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Operator: ask the slow path to set VIRTIO_NET_S_ANNOUNCE (it looks
    /// on its next loop, within 100 ms). Relaxed: the count is all it reads.
    pub fn request_announce(&self) {
        self.announce.fetch_add(1, Ordering::Relaxed);
    }

    /// Slow path: requests so far.
    pub fn announce_requests(&self) -> u64 {
        self.announce.load(Ordering::Relaxed)
    }
}

/// The slow path's side: keeps what it published last and retries a
/// publication that found the cell busy.
#[derive(Debug)]
pub struct ControlPublisher {
    cell: Arc<ControlCell>,
    last: Option<ControlState>,
}

impl ControlPublisher {
    pub fn new(cell: Arc<ControlCell>) -> Self {
        ControlPublisher { cell, last: None }
    }

    /// Called once per slow-path loop with the current state: beats, and
    /// publishes when it changed (or when the last try found the cell busy).
    pub fn update(&mut self, s: ControlState) {
        self.cell.beat();
        if self.last.as_ref() == Some(&s) {
            return;
        }
        if self.cell.try_publish(&s) {
            self.last = Some(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_cell_is_published_on_the_next_loop() {
        let cell = Arc::new(ControlCell::default());
        let mut p = ControlPublisher::new(cell.clone());
        let s = ControlState { status: 0xf, ..ControlState::default() };
        {
            let _reader = cell.current.lock().unwrap();
            p.update(s.clone()); // must not block
        }
        assert_eq!(cell.load().status, 0);
        p.update(s.clone());
        assert_eq!(cell.load().status, 0xf);
        assert_eq!(cell.beats(), 2);
    }
}
