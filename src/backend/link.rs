//! Link state: the device's `VIRTIO_NET_S_LINK_UP` follows the interface
//! its ports use.
//!
//! Three parties:
//! - each port (on its poll thread) notices run-time failures of its own
//!   kernel side (the interface was deleted under it), marks itself failed
//!   in its [`PortHealth`], logs once, drops frames (counted) and wakes the
//!   slow path; it never makes a syscall for this on the fast path;
//! - a watch thread per device ([`Monitor`], for any port kind that
//!   implements [`Attach`]) looks at the interface about every 100 ms (or
//!   at once when a port failed); when an interface that was gone is back,
//!   it opens the ports' kernel side again and hands it over through a
//!   [`Handover`];
//! - the slow path polls the watch's [`LinkWatch`] handle (an atomic and an
//!   eventfd, never a probe) and turns a change into the config-space
//!   status and a config interrupt.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use serde::Serialize;

use super::iface::PortError;

/// How often the watch looks at the interface when nothing woke it.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How often it retries reopening ports after a failed attempt.
pub const REOPEN_RETRY: Duration = Duration::from_secs(1);

fn eventfd() -> std::io::Result<EventFd> {
    Ok(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?)
}

/// One port's counters and failure flag. Written by the port's thread
/// only (plain load + store), read by anyone.
#[derive(Debug, Default)]
pub struct PortHealth {
    failed: AtomicBool,
    /// Run-time failures (interface gone under the port).
    pub failures: AtomicU64,
    /// New kernel sides taken over after the interface came back.
    pub reattached: AtomicU64,
    /// TX frames dropped because the link was down or the port failed.
    pub tx_link_dropped: AtomicU64,
    /// TX frames the kernel refused (other errors than link loss).
    pub tx_errors: AtomicU64,
    /// Received frames dropped: longer than a slot, truncated by the kernel,
    /// or needing offload work nobody can do.
    pub rx_dropped: AtomicU64,
}

#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Snapshot of a [`PortHealth`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortHealthStats {
    pub failed: bool,
    pub failures: u64,
    pub reattached: u64,
    pub tx_link_dropped: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
}

impl PortHealth {
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> PortHealthStats {
        PortHealthStats {
            failed: self.is_failed(),
            failures: self.failures.load(Ordering::Relaxed),
            reattached: self.reattached.load(Ordering::Relaxed),
            tx_link_dropped: self.tx_link_dropped.load(Ordering::Relaxed),
            tx_errors: self.tx_errors.load(Ordering::Relaxed),
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
        }
    }
}

/// New kernel resources for one port (a tap queue fd, a packet socket),
/// from the slow path to the port's poll thread. The port checks `gen`
/// (one Acquire load per poll pass) and takes the slot only when it moved.
pub struct Handover<T> {
    gen: AtomicU32,
    slot: Mutex<Option<T>>,
    /// Signalled after a handover, so a failed port asleep on it wakes.
    wake: EventFd,
}

impl<T> Handover<T> {
    pub fn new() -> std::io::Result<Handover<T>> {
        Ok(Handover { gen: AtomicU32::new(0), slot: Mutex::new(None), wake: eventfd()? })
    }

    /// A resource was given and not taken yet.
    fn pending(&self) -> bool {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    #[cfg(test)]
    pub fn wake_fd_for_test(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.wake)
    }

    /// Slow path: replace what the port will take next.
    pub fn give(&self, r: T) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        // Release: the slot is filled before the port can see the new gen.
        self.gen.fetch_add(1, Ordering::Release);
        let _ = self.wake.write(1);
    }
}

/// Shared between a port and its watch.
pub struct PortShared<T> {
    pub health: CachePadded<PortHealth>,
    pub handover: Handover<T>,
    /// Set by the watch while the link is down: TX frames are dropped
    /// (as a NIC without link does) instead of queued to the kernel.
    down: AtomicBool,
    /// The watch's wake-up: a port that fails signals it.
    notify: Arc<EventFd>,
}

/// The port's end: owned by the port, used on its poll thread.
pub struct PortLink<T> {
    shared: Arc<PortShared<T>>,
    seen: u32,
    pair: u16,
    what: String,
}

impl<T> PortLink<T> {
    /// A new resource handed over since the last call (one Acquire load
    /// when there is none). Taking it clears the failed state.
    #[inline]
    pub fn take_new(&mut self) -> Option<T> {
        let g = self.shared.handover.gen.load(Ordering::Acquire);
        if g == self.seen {
            return None;
        }
        self.take_slow(g)
    }

    #[cold]
    fn take_slow(&mut self, g: u32) -> Option<T> {
        self.seen = g;
        let _ = self.shared.handover.wake.read();
        let r = self.shared.handover.slot.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        let h = &self.shared.health;
        bump(&h.reattached, 1);
        if h.failed.swap(false, Ordering::AcqRel) {
            log::info!("pair {}: {}: attached again", self.pair, self.what);
        }
        Some(r)
    }

    #[inline]
    pub fn failed(&self) -> bool {
        self.shared.health.failed.load(Ordering::Relaxed)
    }

    /// The watch last saw the link down.
    #[inline]
    pub fn down(&self) -> bool {
        self.shared.down.load(Ordering::Relaxed)
    }

    /// The kernel side failed for good (the interface is gone): stop using
    /// it until a new one is handed over. Logs and counts once per failure.
    #[cold]
    pub fn fail(&mut self, op: &str, e: Errno) {
        let h = &self.shared.health;
        if h.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        bump(&h.failures, 1);
        log::error!(
            "pair {}: {}: {op} failed: {e}; the interface is gone, this pair drops its frames until it is back",
            self.pair,
            self.what
        );
        let _ = self.shared.notify.write(1);
    }

    #[inline]
    pub fn health(&self) -> &PortHealth {
        &self.shared.health
    }

    /// What a failed port sleeps on: the handover's eventfd.
    pub fn handover_fd(&self) -> BorrowedFd<'_> {
        self.shared.handover.wake.as_fd()
    }

    /// The port's counters and link for the stats socket.
    pub fn stats(&self, kind: &'static str) -> Arc<dyn crate::ops::PortStats>
    where
        T: Send + 'static,
    {
        Arc::new(HealthStats { kind, shared: self.shared.clone() })
    }

    #[inline]
    pub fn count(&self, c: impl Fn(&PortHealth) -> &AtomicU64, n: u64) {
        bump(c(&self.shared.health), n);
    }
}

/// The shared state of a device's ports, their ends, and the watch's
/// wake-up.
pub type PortLinks<T> = (Vec<Arc<PortShared<T>>>, Vec<PortLink<T>>, Arc<EventFd>);

/// Create the shared state of `pairs` ports, each with its port end.
pub fn port_links<T>(pairs: u16, what: &str) -> std::io::Result<PortLinks<T>> {
    let notify = Arc::new(eventfd()?);
    let mut shared = Vec::new();
    let mut links = Vec::new();
    for pair in 0..pairs {
        let s = Arc::new(PortShared {
            health: CachePadded::new(PortHealth::default()),
            handover: Handover::new()?,
            down: AtomicBool::new(false),
            notify: notify.clone(),
        });
        links.push(PortLink { shared: s.clone(), seen: 0, pair, what: what.to_string() });
        shared.push(s);
    }
    Ok((shared, links, notify))
}

/// A port's health as the stats socket shows it (`vduse_net_port_*`).
struct HealthStats<T> {
    kind: &'static str,
    shared: Arc<PortShared<T>>,
}

impl<T: Send> crate::ops::PortStats for HealthStats<T> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let h = self.shared.health.snapshot();
        vec![
            ("failures", h.failures),
            ("reattached", h.reattached),
            ("tx_link_dropped", h.tx_link_dropped),
            ("tx_errors", h.tx_errors),
            ("rx_dropped", h.rx_dropped),
        ]
    }

    fn link_up(&self) -> Option<bool> {
        Some(!self.shared.down.load(Ordering::Relaxed) && !self.shared.health.is_failed())
    }
}

/// The device's link, for stats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// The interface the ports use, as given.
    pub iface: String,
    pub up: bool,
    /// Link state changes reported to the driver.
    pub changes: u64,
    /// Times the interface disappeared.
    pub lost: u64,
    /// Times the ports were opened again on an interface that came back.
    pub reopened: u64,
    pub ports: Vec<PortHealthStats>,
}

/// Counters of a watch, readable from any thread.
#[derive(Debug, Default)]
pub struct LinkCounters {
    up: AtomicBool,
    changes: AtomicU64,
    lost: AtomicU64,
    reopened: AtomicU64,
}

/// Readable from any thread: the watch's counters and the ports' health.
pub trait LinkStatsSource: Send + Sync {
    fn link_stats(&self) -> LinkStats;
}

struct StatsView<T> {
    iface: String,
    counters: Arc<LinkCounters>,
    ports: Vec<Arc<PortShared<T>>>,
}

impl<T: Send> LinkStatsSource for StatsView<T> {
    fn link_stats(&self) -> LinkStats {
        LinkStats {
            iface: self.iface.clone(),
            up: self.counters.up.load(Ordering::Relaxed),
            changes: self.counters.changes.load(Ordering::Relaxed),
            lost: self.counters.lost.load(Ordering::Relaxed),
            reopened: self.counters.reopened.load(Ordering::Relaxed),
            ports: self.ports.iter().map(|p| p.health.snapshot()).collect(),
        }
    }
}

/// The slow path's side of a device's link.
pub trait LinkWatch: Send {
    /// Readable when the link state may have changed.
    fn wake_fd(&self) -> BorrowedFd<'_>;
    /// The new link state when it changed since the last call (cheap: no
    /// probing here, the watch thread does that).
    fn poll(&mut self, now: Instant) -> Option<bool>;
    /// The link state now.
    fn is_up(&self) -> bool;
    /// Counters, for the device's stats.
    fn stats(&self) -> Arc<dyn LinkStatsSource>;
}

/// What a probe of the interface found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Up,
    Down,
    /// The interface the ports are attached to no longer exists.
    Gone,
}

/// The port-kind-specific part of a watch.
pub trait Attach: Send {
    /// What a port takes over when the interface is back.
    type Res: Send;
    /// Look at the interface the ports are attached to.
    fn probe(&mut self) -> Probe;
    /// Gone earlier: is an interface with the configured name there now?
    fn is_back(&mut self) -> bool;
    /// Open one resource per pair on the interface (all or nothing).
    fn reopen(&mut self, pairs: usize) -> Result<Vec<Self::Res>, PortError>;
}

/// A [`LinkWatch`] over an [`Attach`].
pub struct Monitor<A: Attach> {
    attach: A,
    iface: String,
    ports: Vec<Arc<PortShared<A::Res>>>,
    notify: Arc<EventFd>,
    counters: Arc<LinkCounters>,
    up: bool,
    gone: bool,
    next_probe: Instant,
    next_reopen: Instant,
    reopen_error_logged: bool,
}

impl<A: Attach> Monitor<A>
where
    A::Res: 'static,
{
    /// `up`: the state found when the ports were opened.
    pub fn new(attach: A, iface: &str, ports: Vec<Arc<PortShared<A::Res>>>, notify: Arc<EventFd>, up: bool) -> Self {
        let counters = Arc::new(LinkCounters::default());
        counters.up.store(up, Ordering::Relaxed);
        for p in &ports {
            p.down.store(!up, Ordering::Relaxed);
        }
        let now = Instant::now();
        Monitor {
            attach,
            iface: iface.to_string(),
            ports,
            notify,
            counters,
            up,
            gone: false,
            next_probe: now,
            next_reopen: now,
            reopen_error_logged: false,
        }
    }

    /// A port failed and has no replacement waiting for it.
    fn any_failed(&self) -> bool {
        self.ports.iter().any(|p| p.health.is_failed() && !p.handover.pending())
    }

    fn reopen(&mut self, now: Instant) -> bool {
        if now < self.next_reopen {
            return false;
        }
        self.next_reopen = now + REOPEN_RETRY;
        match self.attach.reopen(self.ports.len()) {
            Ok(res) => {
                for (p, r) in self.ports.iter().zip(res) {
                    p.handover.give(r);
                }
                bump(&self.counters.reopened, 1);
                self.reopen_error_logged = false;
                log::info!("{}: interface is back; ports opened again", self.iface);
                true
            }
            Err(e) => {
                if !self.reopen_error_logged {
                    self.reopen_error_logged = true;
                    log::warn!(
                        "{}: cannot open the ports again yet: {e} (retrying every {REOPEN_RETRY:?})",
                        self.iface
                    );
                }
                false
            }
        }
    }
}

impl<A: Attach + 'static> Monitor<A>
where
    A::Res: 'static,
{
    /// Run the watch on its own thread ("vduse-link"), so a slow probe
    /// (netlink, entering another namespace, reopening ports) never delays
    /// the slow path's answers to the kernel. The returned handle is what
    /// the slow path polls; dropping it stops the thread.
    pub fn spawn(self) -> std::io::Result<Box<dyn LinkWatch>> {
        let shared =
            Arc::new(WatchShared { up: AtomicBool::new(self.up), changed: eventfd()?, stop: AtomicBool::new(false) });
        let stats = self.stats_view();
        let notify = self.notify.clone();
        let up = self.up;
        let sh = shared.clone();
        let join = std::thread::Builder::new().name("vduse-link".into()).spawn(move || self.run(&sh))?;
        Ok(Box::new(Watcher { shared, notify, reported: up, join: Some(join), stats }))
    }

    fn run(mut self, sh: &WatchShared) {
        while !sh.stop.load(Ordering::Acquire) {
            let mut fds = [nix::poll::PollFd::new(self.notify.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(PROBE_INTERVAL.as_millis() as u16));
            if sh.stop.load(Ordering::Acquire) {
                break;
            }
            let t = Instant::now();
            if let Some(up) = self.step(t) {
                sh.up.store(up, Ordering::Release);
                let _ = sh.changed.write(1);
            }
            if t.elapsed() > Duration::from_secs(1) {
                log::warn!("{}: looking at the interface took {:?}", self.iface, t.elapsed());
            }
        }
    }

    fn stats_view(&self) -> Arc<dyn LinkStatsSource> {
        Arc::new(StatsView { iface: self.iface.clone(), counters: self.counters.clone(), ports: self.ports.clone() })
    }

    /// One look at the interface if it is time (or a port woke us);
    /// returns the new link state when it changed.
    pub fn step(&mut self, now: Instant) -> Option<bool> {
        let woken = self.notify.read().is_ok();
        if !woken && now < self.next_probe {
            return None;
        }
        self.next_probe = now + PROBE_INTERVAL;
        let probe = if self.gone {
            if self.attach.is_back() && self.reopen(now) {
                self.gone = false;
                self.attach.probe()
            } else {
                Probe::Gone
            }
        } else {
            self.attach.probe()
        };
        if probe == Probe::Gone && !self.gone {
            self.gone = true;
            bump(&self.counters.lost, 1);
            log::warn!("{}: interface is gone; link down until one of that name is back", self.iface);
        }
        let mut up = probe == Probe::Up && !self.any_failed();
        if probe == Probe::Up && !up && self.reopen(now) {
            // A port failed while the interface is there (deleted and made
            // again between two probes): the ports get a fresh kernel side,
            // which they take on their next pass.
            up = !self.any_failed();
        }
        if up == self.up {
            return None;
        }
        self.up = up;
        self.counters.up.store(up, Ordering::Relaxed);
        for p in &self.ports {
            p.down.store(!up, Ordering::Relaxed);
        }
        bump(&self.counters.changes, 1);
        if up {
            log::warn!("{}: link up", self.iface);
        } else {
            log::warn!("{}: link down", self.iface);
        }
        Some(up)
    }

    pub fn is_up(&self) -> bool {
        self.up
    }
}

struct WatchShared {
    up: AtomicBool,
    /// Written by the watch thread on each change.
    changed: EventFd,
    stop: AtomicBool,
}

/// The slow path's handle on a watch thread.
struct Watcher {
    shared: Arc<WatchShared>,
    /// The watch thread's wake-up (to stop it).
    notify: Arc<EventFd>,
    reported: bool,
    join: Option<std::thread::JoinHandle<()>>,
    stats: Arc<dyn LinkStatsSource>,
}

impl LinkWatch for Watcher {
    fn wake_fd(&self) -> BorrowedFd<'_> {
        self.shared.changed.as_fd()
    }

    fn poll(&mut self, _now: Instant) -> Option<bool> {
        let _ = self.shared.changed.read();
        // Acquire: pairs with the watch thread's Release store.
        let up = self.shared.up.load(Ordering::Acquire);
        if up == self.reported {
            return None;
        }
        self.reported = up;
        Some(up)
    }

    fn is_up(&self) -> bool {
        self.reported
    }

    fn stats(&self) -> Arc<dyn LinkStatsSource> {
        self.stats.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.notify.write(1);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted interface: what probe/is_back return, and reopen results.
    struct Script {
        probe: Arc<Mutex<Probe>>,
        back: Arc<AtomicBool>,
        reopened: Arc<AtomicU64>,
    }

    impl Attach for Script {
        type Res = u32;
        fn probe(&mut self) -> Probe {
            *self.probe.lock().unwrap()
        }
        fn is_back(&mut self) -> bool {
            self.back.load(Ordering::Relaxed)
        }
        fn reopen(&mut self, pairs: usize) -> Result<Vec<u32>, PortError> {
            let n = self.reopened.fetch_add(1, Ordering::Relaxed) as u32 + 1;
            Ok(vec![n; pairs])
        }
    }

    #[test]
    fn link_follows_probe_failures_and_reattach() {
        let probe = Arc::new(Mutex::new(Probe::Up));
        let back = Arc::new(AtomicBool::new(false));
        let reopened = Arc::new(AtomicU64::new(0));
        let (shared, mut links, notify) = port_links::<u32>(2, "test0").unwrap();
        let script = Script { probe: probe.clone(), back: back.clone(), reopened: reopened.clone() };
        let mut m = Monitor::new(script, "test0", shared, notify, true);
        let mut t = Instant::now();
        let mut tick = |m: &mut Monitor<Script>| {
            t += PROBE_INTERVAL * 11;
            m.step(t)
        };
        // The watch's clock is the test's: each tick is 1.1 s later.
        assert_eq!(tick(&mut m), None, "no change while up");
        *probe.lock().unwrap() = Probe::Down;
        assert_eq!(tick(&mut m), Some(false));
        *probe.lock().unwrap() = Probe::Up;
        assert_eq!(tick(&mut m), Some(true));

        // A port fails (interface deleted): the watch is woken and probes
        // at once, even before the interval.
        links[0].fail("write", Errno::EBADFD);
        links[0].fail("write", Errno::EBADFD);
        assert_eq!(links[0].health().failures.load(Ordering::Relaxed), 1, "counted once");
        *probe.lock().unwrap() = Probe::Gone;
        assert_eq!(m.step(Instant::now()), Some(false));
        assert!(m.gone);
        assert_eq!(tick(&mut m), None, "still gone");
        assert_eq!(reopened.load(Ordering::Relaxed), 0);

        // Back: reopened once, every port gets its new resource waiting
        // for it (the link is up: each pair takes it on its next pass).
        back.store(true, Ordering::Relaxed);
        *probe.lock().unwrap() = Probe::Up;
        assert_eq!(tick(&mut m), Some(true));
        assert_eq!(reopened.load(Ordering::Relaxed), 1);
        assert!(links[0].failed(), "still failed until it takes the new side");
        assert_eq!(links[0].take_new(), Some(1));
        assert!(!links[0].failed());
        assert_eq!(links[0].take_new(), None, "taken once");
        assert_eq!(links[1].take_new(), Some(1));
        assert_eq!(tick(&mut m), None);

        // A port fails while the interface is there (deleted and recreated
        // between two probes): the link goes down and the ports get a new
        // side at once (not more than once a second).
        links[1].fail("read", Errno::EBADFD);
        assert_eq!(tick(&mut m), None, "reopened in the same pass: still up");
        assert_eq!(reopened.load(Ordering::Relaxed), 2);
        assert_eq!(links[1].take_new(), Some(2));
        links[1].fail("read", Errno::EBADFD);
        // Woken at once, 0.1 s after the reopen: not again so soon.
        let soon = m.next_reopen - REOPEN_RETRY + PROBE_INTERVAL;
        assert_eq!(m.step(soon), Some(false), "no second reopen within REOPEN_RETRY");
        assert_eq!(reopened.load(Ordering::Relaxed), 2);

        let s = m.stats_view().link_stats();
        assert_eq!((s.up, s.changes, s.lost, s.reopened), (false, 5, 1, 2));
        assert_eq!(s.ports[0].failures, 1);
        assert_eq!(s.ports[0].reattached, 1);
        assert_eq!(s.ports[1].failures, 2);
    }
}
