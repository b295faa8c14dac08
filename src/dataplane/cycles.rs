//! A cheap cycle clock for "busy cycles per frame" (testpmd's
//! `--record-core-cycles` figure): the TSC on x86_64, a monotonic clock in
//! nanoseconds elsewhere ([`UNIT`] says which), and [`BusyClock`], the poll
//! thread's counting of bursts that moved something.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::stats::PairCell;

/// What one tick of [`now`] is: `"tsc"` (TSC cycles) or `"ns"` (nanoseconds
/// of a monotonic clock, on architectures without a TSC read here).
#[cfg(target_arch = "x86_64")]
pub const UNIT: &str = "tsc";
#[cfg(not(target_arch = "x86_64"))]
pub const UNIT: &str = "ns";

/// The current tick count. One `rdtsc` on x86_64: not serializing, which is
/// fine for a figure averaged over millions of frames.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: `rdtsc` exists on every x86_64 CPU, reads a register and
    // touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The current tick count: nanoseconds since the first call in this process.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn now() -> u64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Ticks per second of [`now`]: measured once per process against the
/// monotonic clock (over about 20 ms) on x86_64; 1e9 elsewhere.
pub fn hz() -> f64 {
    static HZ: OnceLock<f64> = OnceLock::new();
    *HZ.get_or_init(|| if UNIT == "ns" { 1e9 } else { measure_hz(Duration::from_millis(20)) })
}

/// Ticks of [`now`] per second of `Instant`, over `span` (a busy wait).
pub fn measure_hz(span: Duration) -> f64 {
    let (t0, c0) = (Instant::now(), now());
    while t0.elapsed() < span {
        std::hint::spin_loop();
    }
    let (c1, dt) = (now(), t0.elapsed());
    c1.wrapping_sub(c0) as f64 / dt.as_secs_f64()
}

/// A poll thread's busy-cycle count: ticks of iterations that moved at least
/// one frame, and those frames. Totals are kept here (owned by the thread)
/// and stored into the pair's counters with one Relaxed store each per
/// non-empty iteration; idle iterations cost one `now()` and a branch.
#[derive(Debug, Default)]
pub struct BusyClock {
    cycles: u64,
    frames: u64,
}

impl BusyClock {
    /// Start the totals from what the counters already hold (a restarted
    /// thread, or counters kept across a device reset).
    pub fn resume(stats: &PairCell) -> BusyClock {
        let s = stats.snapshot();
        BusyClock { cycles: s.busy_cycles, frames: s.busy_frames }
    }

    /// End of an iteration that started at tick `t0` and moved `frames`
    /// frames: nothing happens when it moved none.
    #[inline]
    pub fn end(&mut self, t0: u64, frames: u64, stats: &PairCell) {
        if frames == 0 {
            return;
        }
        // A thread moved between cores with unsynchronised TSCs could see
        // time go back: count such an iteration as 0 ticks, not 2^64.
        let dt = now().saturating_sub(t0);
        self.cycles = self.cycles.wrapping_add(dt);
        self.frames = self.frames.wrapping_add(frames);
        self.publish(stats);
    }

    #[inline]
    fn publish(&self, stats: &PairCell) {
        use std::sync::atomic::Ordering::Relaxed;
        // Only this thread writes these two counters: plain stores.
        stats.busy_cycles.store(self.cycles, Relaxed);
        stats.busy_frames.store(self.frames, Relaxed);
    }

    pub fn cycles(&self) -> u64 {
        self.cycles
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }
}

/// Busy ticks per frame, when any frame was counted.
pub fn per_frame(cycles: u64, frames: u64) -> Option<f64> {
    (frames > 0).then(|| cycles as f64 / frames as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iteration_that_moved_nothing_adds_nothing() {
        let cell = PairCell::default();
        let mut c = BusyClock::default();
        let t0 = now();
        std::thread::sleep(Duration::from_millis(2));
        c.end(t0, 0, &cell);
        assert_eq!((c.cycles(), c.frames()), (0, 0));
        let s = cell.snapshot();
        assert_eq!((s.busy_cycles, s.busy_frames), (0, 0));
    }

    #[test]
    fn busy_iterations_count_ticks_and_frames() {
        let cell = PairCell::default();
        let mut c = BusyClock::default();
        let t0 = now();
        std::thread::sleep(Duration::from_millis(1));
        c.end(t0, 32, &cell);
        let first = c.cycles();
        // At least 1 ms passed: far more than 1000 ticks at any clock >= 1 MHz.
        assert!(first > 1000, "{first}");
        let t1 = now();
        c.end(t1, 5, &cell);
        assert_eq!(c.frames(), 37);
        assert!(c.cycles() >= first);
        let s = cell.snapshot();
        assert_eq!((s.busy_cycles, s.busy_frames), (c.cycles(), 37));
        // A clock that went back counts 0 ticks, never a wrapped huge value.
        c.end(now() + (1 << 40), 1, &cell);
        assert_eq!(c.frames(), 38);
        assert!(c.cycles() - first < 1 << 39);
        // Picking up after a restart keeps counting from the stored totals.
        let r = BusyClock::resume(&cell);
        assert_eq!((r.cycles(), r.frames()), (c.cycles(), 38));
    }

    #[test]
    fn the_clock_rate_is_plausible() {
        let hz = hz();
        // A TSC between 100 MHz and 10 GHz, or 1e9 for nanoseconds.
        assert!(hz.is_finite() && (1e8..1e10).contains(&hz), "{hz}");
        assert_eq!(per_frame(300, 0), None);
        assert_eq!(per_frame(300, 2), Some(150.0));
    }
}
