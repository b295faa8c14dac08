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

/// Busy iterations longer than this are also counted apart ("long"): a
/// burst of 32 frames of 1518 B takes a few microseconds, so on a shared
/// machine such an iteration almost always had its thread preempted.
pub const LONG_ITERATION: Duration = Duration::from_micros(50);

/// Ticks of [`LONG_ITERATION`].
pub fn long_ticks() -> u64 {
    (hz() * LONG_ITERATION.as_secs_f64()) as u64
}

/// `Instant`s from [`now`] ticks: a loop that already reads the tick clock
/// gets its wall time without a `clock_gettime` per iteration (in a VM the
/// vDSO call cost a generator about 8% of its core). Anchored once; the
/// rate is [`hz`], calibrated over 20 ms, so the drift is a few
/// microseconds per second at worst.
#[derive(Clone, Copy, Debug)]
pub struct TickClock {
    at: Instant,
    tick: u64,
    ns_per_tick: f64,
}

impl TickClock {
    pub fn start() -> TickClock {
        let ns_per_tick = 1e9 / hz();
        TickClock { at: Instant::now(), tick: now(), ns_per_tick }
    }

    /// The `Instant` of tick `t` (one read after [`TickClock::start`]; a
    /// tick from before it, another core's unsynchronised TSC, reads as the
    /// anchor).
    #[inline]
    pub fn instant(&self, t: u64) -> Instant {
        self.at + Duration::from_nanos((t.saturating_sub(self.tick) as f64 * self.ns_per_tick) as u64)
    }
}

/// A poll thread's busy-cycle count: ticks of iterations that moved at least
/// one frame, and those frames. Totals are kept here (owned by the thread)
/// and stored into the pair's counters with one Relaxed store each per
/// non-empty iteration; idle iterations cost one `now()` and a branch.
/// Iterations over [`LONG_ITERATION`] are in the totals too (testpmd's
/// definition) and also in `long_*`, so a reader can take them out.
#[derive(Debug, Default)]
pub struct BusyClock {
    cycles: u64,
    frames: u64,
    long_cycles: u64,
    long_frames: u64,
    iterations: u64,
    /// Ticks above which an iteration is long (0: none is).
    long: u64,
}

impl BusyClock {
    /// Start the totals from what the counters already hold (a restarted
    /// thread, or counters kept across a device reset).
    pub fn resume(stats: &PairCell) -> BusyClock {
        let s = stats.snapshot();
        BusyClock {
            cycles: s.busy_cycles,
            frames: s.busy_frames,
            long_cycles: s.busy_long_cycles,
            long_frames: s.busy_long_frames,
            iterations: s.busy_iterations,
            long: long_ticks(),
        }
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
        self.iterations = self.iterations.wrapping_add(1);
        if self.long != 0 && dt > self.long {
            self.long_iteration(dt, frames, stats);
        }
        self.publish(stats);
    }

    #[cold]
    fn long_iteration(&mut self, dt: u64, frames: u64, stats: &PairCell) {
        use std::sync::atomic::Ordering::Relaxed;
        self.long_cycles = self.long_cycles.wrapping_add(dt);
        self.long_frames = self.long_frames.wrapping_add(frames);
        stats.busy_long_cycles.store(self.long_cycles, Relaxed);
        stats.busy_long_frames.store(self.long_frames, Relaxed);
    }

    #[inline]
    fn publish(&self, stats: &PairCell) {
        use std::sync::atomic::Ordering::Relaxed;
        // Only this thread writes these counters: plain stores.
        stats.busy_cycles.store(self.cycles, Relaxed);
        stats.busy_frames.store(self.frames, Relaxed);
        stats.busy_iterations.store(self.iterations, Relaxed);
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

/// Busy ticks per frame without the long iterations.
pub fn per_frame_excl_long(cycles: u64, frames: u64, long_cycles: u64, long_frames: u64) -> Option<f64> {
    per_frame(cycles.saturating_sub(long_cycles), frames.saturating_sub(long_frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_clock_follows_the_monotonic_clock() {
        let c = TickClock::start();
        let (i0, t0) = (Instant::now(), now());
        std::thread::sleep(Duration::from_millis(30));
        let (i1, t1) = (Instant::now(), now());
        let d = c.instant(t1).saturating_duration_since(c.instant(t0));
        let real = i1 - i0;
        // The two reads of each pair are a few hundred ns apart at most,
        // unless the thread was preempted between them: 2 ms of slack.
        let off = d.abs_diff(real);
        assert!(off < Duration::from_millis(2), "tick clock {d:?} vs monotonic {real:?}");
        // A tick from before the anchor reads as the anchor.
        assert_eq!(c.instant(0), c.instant(c.tick));
    }

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
    fn long_iterations_are_also_counted_apart() {
        let cell = PairCell::default();
        let mut c = BusyClock { long: 1_000_000_000_000, ..BusyClock::default() };
        c.end(now(), 4, &cell);
        assert_eq!(cell.snapshot().busy_long_frames, 0);
        c.long = 1;
        let t0 = now();
        std::thread::sleep(Duration::from_millis(1));
        c.end(t0, 3, &cell);
        let s = cell.snapshot();
        assert_eq!((s.busy_frames, s.busy_long_frames), (7, 3));
        assert!(s.busy_long_cycles > 1000 && s.busy_long_cycles <= s.busy_cycles);
        let short = per_frame_excl_long(s.busy_cycles, s.busy_frames, s.busy_long_cycles, s.busy_long_frames);
        assert_eq!(short, per_frame(s.busy_cycles - s.busy_long_cycles, 4));
        assert!(long_ticks() > 0);
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
