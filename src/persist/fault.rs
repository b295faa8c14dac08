//! Crash injection for the reconnect tests: a device "process" (its slow
//! path and poll threads) dies at a chosen point, the way `kill -9` stops
//! it: no reply sent, no used index published, nothing cleaned up.
//!
//! A thread that reaches an armed point unwinds with [`Crash`] (through
//! `resume_unwind`, so no panic message); the poll thread's supervisor and
//! the slow path's thread end on it without touching the device. Once one
//! thread of a device crashed, every point of that device crashes, so all
//! its threads are gone within one idle sleep. Points are no-ops outside
//! `cfg(test)`.

/// Where a thread can die.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Top of a poll thread's loop.
    PollLoop,
    /// Chains taken and completed, used entries not published.
    BeforePublish,
    /// Used entries published, position not logged yet.
    BeforeLog,
    /// Top of the slow path's loop.
    SlowLoop,
    /// A control message read, nothing done yet.
    MessageRead,
    /// A control message applied (and logged), the reply not written.
    MessageApplied,
    /// A control-queue command applied, its used entry not published.
    CvqApplied,
}

/// The unwind payload of an injected crash.
#[derive(Debug)]
pub struct Crash;

/// Whether a caught unwind is an injected crash.
pub fn is_crash(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<Crash>()
}

#[cfg(test)]
pub use plan::{arm, dead, disarm, fired, point};

#[cfg(test)]
mod plan {
    use std::sync::Mutex;

    use super::{Crash, Stage};

    struct Plan {
        name: String,
        /// `None`: any stage counts.
        stage: Option<Stage>,
        countdown: u64,
        fired: bool,
    }

    static PLANS: Mutex<Vec<Plan>> = Mutex::new(Vec::new());

    fn plans() -> std::sync::MutexGuard<'static, Vec<Plan>> {
        PLANS.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Crash device `name` at the `countdown`-th visit of `stage` (any
    /// stage for `None`), counting from 1.
    pub fn arm(name: &str, stage: Option<Stage>, countdown: u64) {
        let mut p = plans();
        p.retain(|x| x.name != name);
        p.push(Plan { name: name.into(), stage, countdown: countdown.max(1), fired: false });
    }

    /// Forget the plan of `name` (the next process runs unharmed).
    pub fn disarm(name: &str) {
        plans().retain(|x| x.name != name);
    }

    /// Whether the crash of `name` happened.
    pub fn fired(name: &str) -> bool {
        plans().iter().any(|x| x.name == name && x.fired)
    }

    /// Unwind if device `name` crashed already (a step a killed process
    /// would not take, e.g. writing the log after its poll threads died).
    pub fn dead(name: &str) {
        if fired(name) {
            std::panic::resume_unwind(Box::new(Crash));
        }
    }

    pub fn point(name: &str, stage: Stage) {
        let die = {
            let mut p = plans();
            match p.iter_mut().find(|x| x.name == name) {
                None => false,
                Some(x) if x.fired => true,
                Some(x) => {
                    if x.stage.map_or(true, |s| s == stage) {
                        x.countdown -= 1;
                        x.fired = x.countdown == 0;
                    }
                    x.fired
                }
            }
        };
        if die {
            std::panic::resume_unwind(Box::new(Crash));
        }
    }
}
