//! Queue state as the poll thread sees it, published on each change.
//!
//! A poll thread writes its pair's cell only when a mailbox command changed
//! its queues or when it failed a queue: never per packet. Readers (the stats
//! socket) load the flags with Acquire and may see a state a few
//! microseconds old, never a torn one: each queue's state is one word.

use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam::atomic::AtomicCell;
use serde::{Deserialize, Serialize};

use crate::virtq::QueueError;

const READY: u32 = 1;
const ENABLED: u32 = 2;
const FAILED: u32 = 4;
/// Set once the thread published anything (a pair that never started reads as all-false).
const KNOWN: u32 = 8;

const PAIR_SUSPENDED: u32 = 1;
const PAIR_ACTIVE: u32 = 2;

/// One queue's state as its poll thread last published it.
#[derive(Debug, Default)]
pub struct QueueCell {
    flags: AtomicU32,
    /// The error that failed this queue last (kept across reset, so an
    /// operator still sees which rule fired after the driver reset it).
    last_error: AtomicCell<Option<QueueError>>,
}

/// What the poll thread knows about one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFlags {
    /// Configured by the driver at DRIVER_OK (VQ_GET_INFO said ready).
    pub ready: bool,
    /// Enabled (SET_VQ_READY), served when the pair is active.
    pub enabled: bool,
    /// Stopped after a malformed ring until the next reset.
    pub failed: bool,
}

impl QueueCell {
    fn store(&self, f: QueueFlags) {
        let bits = KNOWN
            | if f.ready { READY } else { 0 }
            | if f.enabled { ENABLED } else { 0 }
            | if f.failed { FAILED } else { 0 };
        // Release: a reader that sees FAILED also sees last_error.
        self.flags.store(bits, Ordering::Release);
    }

    fn fail(&self, e: QueueError) {
        self.last_error.store(Some(e));
        self.flags.fetch_or(KNOWN | FAILED, Ordering::Release);
    }

    pub fn load(&self) -> QueueView {
        let bits = self.flags.load(Ordering::Acquire);
        QueueView {
            ready: bits & READY != 0,
            enabled: bits & ENABLED != 0,
            failed: bits & FAILED != 0,
            last_error: self.last_error.load(),
        }
    }
}

/// A reader's copy of one queue's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueView {
    pub ready: bool,
    pub enabled: bool,
    pub failed: bool,
    pub last_error: Option<QueueError>,
}

/// The state of one queue pair: written by its poll thread only.
#[derive(Debug, Default)]
pub struct PairState {
    pub rx: QueueCell,
    pub tx: QueueCell,
    flags: AtomicU32,
}

impl PairState {
    /// After a mailbox command: the queues and the pair as the thread now has them.
    pub fn publish(&self, rx: QueueFlags, tx: QueueFlags, suspended: bool, active: bool) {
        self.rx.store(rx);
        self.tx.store(tx);
        let bits = if suspended { PAIR_SUSPENDED } else { 0 } | if active { PAIR_ACTIVE } else { 0 };
        self.flags.store(bits, Ordering::Release);
    }

    /// The thread failed queue `vq` (even = RX, odd = TX) with `e`.
    pub fn fail(&self, vq: u32, e: QueueError) {
        if vq % 2 == 0 {
            self.rx.fail(e)
        } else {
            self.tx.fail(e)
        }
    }

    pub fn suspended(&self) -> bool {
        self.flags.load(Ordering::Acquire) & PAIR_SUSPENDED != 0
    }

    pub fn active(&self) -> bool {
        self.flags.load(Ordering::Acquire) & PAIR_ACTIVE != 0
    }
}

/// The rule a queue error stands for, as a stable snake_case id for labels
/// and JSON (`chain_too_long`, `unmapped`, ...). Taken from the innermost
/// variant name, so new error variants get an id without a table here.
pub fn rule_id(e: &QueueError) -> String {
    let dbg = format!("{e:?}");
    let head = dbg.split('{').next().unwrap_or("");
    let variant = head
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .rfind(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .unwrap_or("unknown");
    snake_case(variant)
}

fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The last error of a queue, for the JSON sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFired {
    /// Stable id of the rule (`chain_too_long`, `avail_jump`, `unmapped`, ...).
    pub rule: String,
    /// The full message, as logged.
    pub message: String,
}

impl From<&QueueError> for RuleFired {
    fn from(e: &QueueError) -> Self {
        RuleFired { rule: rule_id(e), message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{Access, XlateError};
    use crate::virtq::Malformed;

    #[test]
    fn rule_ids_come_from_the_innermost_variant() {
        assert_eq!(rule_id(&QueueError::Malformed(Malformed::ChainTooLong)), "chain_too_long");
        assert_eq!(rule_id(&QueueError::Malformed(Malformed::HeadOutOfRange(7))), "head_out_of_range");
        assert_eq!(rule_id(&QueueError::Xlate(XlateError::Unmapped { asid: 1, iova: 0x1000 })), "unmapped");
        assert_eq!(
            rule_id(&QueueError::Xlate(XlateError::Permission { asid: 0, iova: 0, access: Access::Write })),
            "permission"
        );
    }

    #[test]
    fn a_failed_queue_keeps_its_rule_across_reset() {
        let p = PairState::default();
        assert!(!p.rx.load().ready);
        let on = QueueFlags { ready: true, enabled: true, failed: false };
        p.publish(on, on, false, true);
        p.fail(1, QueueError::Malformed(Malformed::AvailJump(300)));
        let tx = p.tx.load();
        assert!(tx.failed && tx.ready && tx.enabled);
        assert_eq!(rule_id(&tx.last_error.unwrap()), "avail_jump");
        assert!(!p.rx.load().failed);
        // Reset: the thread publishes fresh queues; the last rule stays visible.
        p.publish(QueueFlags::default(), QueueFlags::default(), false, true);
        let tx = p.tx.load();
        assert!(!tx.failed && tx.last_error.is_some());
    }
}
