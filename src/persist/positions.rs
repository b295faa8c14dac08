//! Queue positions in the state log: one 64-bit word per vq, written by
//! the thread that serves the queue after every burst.
//!
//! A word is `last_avail | used << 16 | VALID << 32`, stored with one
//! aligned atomic store, so a crash can never leave half of it: a reader
//! sees the old word or the new one. Each word sits in its own 64-byte
//! line so two poll threads never write the same cache line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::StateLog;

/// Bytes between two position words (one cache line each).
pub const POSITION_STRIDE: usize = 64;

const VALID: u64 = 1 << 32;

/// A queue's position as last logged: split, the next avail index and the
/// published used index; packed, slot | wrap << 15 of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub last_avail: u16,
    pub used: u16,
}

impl Position {
    pub fn pack(self) -> u64 {
        self.last_avail as u64 | (self.used as u64) << 16 | VALID
    }
    /// `None` for a word never written (or cleared).
    pub fn unpack(w: u64) -> Option<Position> {
        (w & VALID != 0).then_some(Position { last_avail: w as u16, used: (w >> 16) as u16 })
    }
}

/// The position word of one vq, for the thread serving it. Cloning is
/// cheap (an `Arc`); a slot without a log does nothing.
#[derive(Clone, Default)]
pub struct PositionSlot {
    log: Option<(Arc<StateLog>, u32)>,
}

impl PositionSlot {
    pub fn new(log: Option<&Arc<StateLog>>, vq: u32) -> PositionSlot {
        PositionSlot { log: log.filter(|l| vq < l.nvqs()).map(|l| (l.clone(), vq)) }
    }

    /// Log the queue's position. Called after the burst's used entries were
    /// published (Release store of used.idx / the used descriptors' flags),
    /// so a logged `used` never runs ahead of what the driver can see; the
    /// Release here keeps the compiler and CPU from moving this store
    /// before that publish. No syscall: a store into the mapped file.
    #[inline]
    pub fn record(&self, (last_avail, used): (u16, u16)) {
        if let Some((log, vq)) = &self.log {
            log.word(*vq).store(Position { last_avail, used }.pack(), Ordering::Release);
        }
    }

    /// A crash-injection point (tests only; nothing otherwise).
    #[inline(always)]
    pub fn fault_point(&self, _stage: super::fault::Stage) {
        #[cfg(test)]
        if let Some((log, _)) = &self.log {
            super::fault::point(log.name(), _stage);
        }
    }
}

/// Read the word of `vq` (the previous process is gone: see the module
/// docs of [`super`] for why a plain Acquire load is enough).
pub(super) fn load(word: &AtomicU64) -> Option<Position> {
    Position::unpack(word.load(Ordering::Acquire))
}
