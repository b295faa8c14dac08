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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::device::Layout;
    use crate::ops::source::DeviceInfo;

    fn source(name: &str) -> Arc<DeviceSource> {
        Arc::new(DeviceSource {
            layout: Layout {
                name: name.into(),
                api: 1,
                pairs: 1,
                has_cvq: false,
                ngroups: 1,
                nas: 2,
                features: 0,
                vduse_features: 0,
                dropped_features: 0,
                max_queue_size: 1024,
            },
            info: DeviceInfo::default(),
            pairs: Vec::new(),
            slow: Arc::default(),
            control: Arc::default(),
            ports: Vec::new(),
            started: Instant::now(),
            stopped: Default::default(),
        })
    }

    #[test]
    fn a_slow_path_that_stops_beating_is_reported_stuck() {
        let (a, b) = (source("a"), source("b"));
        let all = [a.clone(), b.clone()];
        let mut l = Liveness::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert!(l.check(&all, t0).is_empty());
        // a keeps beating, b does not.
        for s in 1..=3 {
            a.control.beat();
            let stuck = l.check(&all, t0 + Duration::from_secs(s));
            if s < 2 {
                assert!(stuck.is_empty(), "{s}: {stuck:?}");
            } else {
                assert_eq!(stuck, vec!["b".to_string()], "{s}");
            }
        }
        // b recovers.
        b.control.beat();
        assert!(l.check(&all, t0 + Duration::from_secs(4)).is_empty());
    }
}
