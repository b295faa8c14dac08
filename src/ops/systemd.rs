//! systemd integration: `sd_notify` messages and the watchdog.
//!
//! The watchdog is fed only while every device's slow path is making
//! progress: the slow path beats once per loop (at least every 100 ms, see
//! `ControlCell::beat`), and [`Liveness`] stops feeding once one of them
//! has not beaten for `stuck_after`, so systemd restarts a process whose
//! slow path hangs (and whose devices the kernel would soon mark broken).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use super::source::DeviceSource;

/// Talks to systemd when started by it (`$NOTIFY_SOCKET` set); otherwise every call is a no-op.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_status: String,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
        Notifier { enabled, watchdog, last_status: String::new() }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// `WatchdogSec=` as systemd passed it, when the watchdog is on.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                log::warn!("sd_notify: {e}");
            }
        }
    }

    pub fn ready(&mut self, status: &str) {
        self.last_status = status.into();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A `STATUS=` line, sent only when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.into();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    pub fn reloading(&self) {
        self.send(&[NotifyState::Reloading]);
    }

    pub fn reloaded(&mut self, status: &str) {
        self.last_status = status.into();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn feed(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// Which slow paths still make progress.
pub struct Liveness {
    stuck_after: Duration,
    seen: Vec<(Arc<DeviceSource>, u64, Instant)>,
    reported: Vec<String>,
}

impl Liveness {
    pub fn new(stuck_after: Duration) -> Liveness {
        Liveness { stuck_after, seen: Vec::new(), reported: Vec::new() }
    }

    /// Look at every device's heartbeat now; returns the names of devices
    /// whose slow path has not moved for `stuck_after` (empty = all alive).
    pub fn check(&mut self, devices: &[Arc<DeviceSource>], now: Instant) -> Vec<String> {
        let mut stuck = Vec::new();
        let mut next = Vec::with_capacity(devices.len());
        for d in devices {
            let beats = d.control.beats();
            let since = match self.seen.iter().find(|(s, _, _)| Arc::ptr_eq(s, d)) {
                Some((_, b, t)) if *b == beats => *t,
                _ => now,
            };
            if now.duration_since(since) >= self.stuck_after {
                stuck.push(d.name().to_string());
            }
            next.push((d.clone(), beats, since));
        }
        self.seen = next;
        for name in &stuck {
            if !self.reported.contains(name) {
                log::error!(
                    "{name}: slow path has not made progress for {:.1} s; no longer feeding the systemd watchdog",
                    self.stuck_after.as_secs_f64()
                );
            }
        }
        for name in &self.reported {
            if !stuck.contains(name) {
                log::warn!("{name}: slow path is making progress again");
            }
        }
        self.reported = stuck.clone();
        stuck
    }
}
