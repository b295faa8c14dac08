//! The physical floor for a two-core dataplane: how long one cache line takes
//! to go from one core to another and back.
//!
//! Any virtqueue round trip between a driver core and a device core moves at
//! least one line each way (the descriptor index), so this round trip time is
//! a lower bound that `vduse-net latency` and DPDK can be held against.
//!
//! Two threads, pinned to the two cores, bounce a sequence number through two
//! separate lines: the initiator writes `ping`, the responder waits for it and
//! writes `pong`, the initiator waits for that. The spin loops do not use a
//! pause instruction: the point is the fastest hand-off the hardware allows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Round trips per untimed batch (the batch mean has no clock cost in it).
const BATCH: u64 = 1000;
/// Round trips run before anything is recorded, to fault in and warm the lines.
const WARMUP: u64 = 10_000;
/// How many spins between two looks at the clock while waiting.
const SPINS_PER_CLOCK_CHECK: u32 = 1 << 14;
/// Time limit of [`cacheline_pingpong`].
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FloorError {
    #[error("round_trips must be at least 1")]
    NoRoundTrips,
    #[error("core {core} does not exist (usable cores: {available:?})")]
    NoSuchCore { core: usize, available: Vec<usize> },
    #[error("could not pin a thread to core {0}")]
    PinFailed(usize),
    #[error("a ping-pong thread panicked")]
    ThreadPanicked,
}

/// Round trip times in nanoseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FloorResult {
    pub core_a: usize,
    pub core_b: usize,
    /// Round trips in the histogram (each timed on its own).
    pub round_trips: u64,
    /// From the per-round-trip samples. Each sample includes the cost of one
    /// clock read (`clock_ns`).
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Elapsed time over round trips for the untimed batches: no clock cost.
    pub mean_ns: f64,
    /// The fastest untimed batch's mean round trip.
    pub best_batch_ns: f64,
    /// Cost of one `Instant::now()` on this machine, for reference.
    pub clock_ns: f64,
    /// The time limit cut the run short; the figures cover what was done.
    pub truncated: bool,
}

/// One line each way, padded to 128 bytes so that the adjacent-line
/// prefetcher does not drag the other line along and blur the measurement.
#[repr(align(128))]
struct Line(AtomicU64);

struct Shared {
    ping: Line,
    pong: Line,
    /// Set by the initiator when it gives up (time limit); read by the
    /// responder only every SPINS_PER_CLOCK_CHECK spins.
    stop: Line,
}

/// Measures the cache-line round trip between `core_a` and `core_b` over
/// `round_trips` round trips (half timed one by one, half in untimed batches),
/// giving up after [`DEFAULT_TIME_LIMIT`].
pub fn cacheline_pingpong(core_a: usize, core_b: usize, round_trips: u64) -> Result<FloorResult, FloorError> {
    cacheline_pingpong_limited(core_a, core_b, round_trips, DEFAULT_TIME_LIMIT)
}

/// As [`cacheline_pingpong`], with an explicit time limit. On the same core,
/// or on a machine where the two threads do not both get a CPU, a round trip
/// costs a scheduler time slice; the limit keeps that bounded.
pub fn cacheline_pingpong_limited(
    core_a: usize,
    core_b: usize,
    round_trips: u64,
    limit: Duration,
) -> Result<FloorResult, FloorError> {
    run(core_a, core_b, round_trips, limit).map(|(r, _)| r)
}

/// Returns the result and the number of pings the responder answered.
fn run(core_a: usize, core_b: usize, round_trips: u64, limit: Duration) -> Result<(FloorResult, u64), FloorError> {
    if round_trips == 0 {
        return Err(FloorError::NoRoundTrips);
    }
    let available: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    for core in [core_a, core_b] {
        if !available.contains(&core) {
            return Err(FloorError::NoSuchCore { core, available });
        }
    }
    let shared = Shared { ping: Line(AtomicU64::new(0)), pong: Line(AtomicU64::new(0)), stop: Line(AtomicU64::new(0)) };
    let pinned = [AtomicBool::new(false), AtomicBool::new(false)];
    // Both threads pin themselves, then meet here, so neither starts spinning
    // before both are in place, and both know whether pinning worked (the
    // barrier orders the flag stores before the loads after it).
    let start = Barrier::new(2);
    let clock_ns = clock_cost();
    let pin = |i: usize, core: usize| {
        let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core });
        pinned[i].store(ok, Ordering::Relaxed);
        start.wait();
        pinned.iter().all(|p| p.load(Ordering::Relaxed))
    };

    std::thread::scope(|s| {
        let responder = s.spawn(|| pin(1, core_b).then(|| respond(&shared)));
        let initiator = s.spawn(|| {
            let r = pin(0, core_a).then(|| initiate(&shared, round_trips, limit));
            // Release: the responder may stop once it sees this.
            shared.stop.0.store(1, Ordering::Release);
            r
        });
        let init = initiator.join().map_err(|_| FloorError::ThreadPanicked)?;
        let answered = responder.join().map_err(|_| FloorError::ThreadPanicked)?;
        match (init, answered) {
            (Some(mut r), Some(answered)) => {
                r.core_a = core_a;
                r.core_b = core_b;
                r.clock_ns = clock_ns;
                Ok((r, answered))
            }
            _ if !pinned[0].load(Ordering::Relaxed) => Err(FloorError::PinFailed(core_a)),
            _ => Err(FloorError::PinFailed(core_b)),
        }
    })
}

/// Responder: answer every new ping with the same number. Returns the count.
fn respond(sh: &Shared) -> u64 {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let v = loop {
            // Acquire pairs with the initiator's Release store of `ping`; only
            // the value itself is used, the ordering keeps the protocol honest
            // if more data is ever carried along.
            let v = sh.ping.0.load(Ordering::Acquire);
            if v != seen {
                break v;
            }
            spins = spins.wrapping_add(1);
            if spins % SPINS_PER_CLOCK_CHECK == 0 && sh.stop.0.load(Ordering::Acquire) != 0 {
                return seen;
            }
        };
        seen = v;
        // Release: the answer is visible only after we saw the ping.
        sh.pong.0.store(v, Ordering::Release);
    }
}

/// One round trip: send `seq`, wait for it to come back. False on time-out.
#[inline(always)]
fn round_trip(sh: &Shared, seq: u64, deadline: Instant) -> bool {
    // Release pairs with the responder's Acquire load.
    sh.ping.0.store(seq, Ordering::Release);
    let mut spins = 0u32;
    // Acquire pairs with the responder's Release store of `pong`.
    while sh.pong.0.load(Ordering::Acquire) != seq {
        spins = spins.wrapping_add(1);
        if spins % SPINS_PER_CLOCK_CHECK == 0 && Instant::now() >= deadline {
            return false;
        }
    }
    true
}

fn initiate(sh: &Shared, round_trips: u64, limit: Duration) -> FloorResult {
    let begin = Instant::now();
    let deadline = begin + limit;
    let mut seq = 0u64;
    let mut truncated = false;

    // Warm-up.
    for _ in 0..WARMUP.min(round_trips) {
        seq += 1;
        if !round_trip(sh, seq, deadline) {
            truncated = true;
            break;
        }
    }

    // Untimed batches: mean without clock cost.
    let untimed = round_trips / 2;
    let batch = BATCH.min(untimed.max(1));
    let mut batched = 0u64;
    let mut batched_time = Duration::ZERO;
    let mut best_batch_ns = f64::INFINITY;
    while !truncated && batched + batch <= untimed {
        let t0 = Instant::now();
        for _ in 0..batch {
            seq += 1;
            if !round_trip(sh, seq, deadline) {
                truncated = true;
                break;
            }
        }
        if truncated {
            break;
        }
        let dt = t0.elapsed();
        batched += batch;
        batched_time += dt;
        best_batch_ns = best_batch_ns.min(dt.as_nanos() as f64 / batch as f64);
        if Instant::now() >= deadline {
            truncated = true;
        }
    }

    // Timed round trips: one clock read per round trip, the sample is the
    // time between consecutive reads. The histogram is allocated up front.
    let timed = round_trips - untimed;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid");
    let mut prev = Instant::now();
    let mut done = 0u64;
    while !truncated && done < timed {
        seq += 1;
        if !round_trip(sh, seq, deadline) {
            truncated = true;
            break;
        }
        let now = Instant::now();
        hist.saturating_record(((now - prev).as_nanos() as u64).max(1));
        prev = now;
        done += 1;
        if done % BATCH == 0 && now >= deadline {
            truncated = true;
        }
    }

    let mean_ns = if batched > 0 { batched_time.as_nanos() as f64 / batched as f64 } else { f64::NAN };
    let empty = hist.is_empty();
    FloorResult {
        core_a: 0,
        core_b: 0,
        round_trips: done,
        min_ns: if empty { 0 } else { hist.min() },
        p50_ns: hist.value_at_quantile(0.5),
        p99_ns: hist.value_at_quantile(0.99),
        max_ns: hist.max(),
        mean_ns,
        best_batch_ns: if best_batch_ns.is_finite() { best_batch_ns } else { f64::NAN },
        clock_ns: 0.0,
        truncated,
    }
}

/// Average cost of one `Instant::now()`.
fn clock_cost() -> f64 {
    const N: u32 = 10_000;
    let t0 = Instant::now();
    let mut last = t0;
    for _ in 0..N {
        last = std::hint::black_box(Instant::now());
    }
    (last - t0).as_nanos() as f64 / N as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_cores() -> (usize, usize) {
        let ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
        match ids.as_slice() {
            [a, b, ..] => (*a, *b),
            [a] => (*a, *a),
            [] => panic!("no usable core"),
        }
    }

    #[test]
    fn small_run_is_consistent() {
        let (a, b) = two_cores();
        let n = 4000;
        let (r, answered) = run(a, b, n, Duration::from_secs(20)).unwrap();
        assert!(!r.truncated, "{r:?}");
        // Every round trip (warm-up, batches, timed) was answered exactly once.
        assert_eq!(answered, WARMUP.min(n) + n / 2 + r.round_trips);
        assert_eq!(r.round_trips, n - n / 2);
        assert!(r.min_ns >= 1 && r.min_ns <= r.p50_ns && r.p50_ns <= r.p99_ns && r.p99_ns <= r.max_ns, "{r:?}");
        assert!(r.mean_ns > 0.0 && r.best_batch_ns > 0.0 && r.best_batch_ns <= r.mean_ns * 1.0001, "{r:?}");
        assert!(r.clock_ns > 0.0);
        assert_eq!((r.core_a, r.core_b), (a, b));
    }

    #[test]
    fn tiny_count_still_gives_figures() {
        let (a, b) = two_cores();
        let r = cacheline_pingpong_limited(a, b, 3, Duration::from_secs(20)).unwrap();
        assert_eq!(r.round_trips, 2);
        assert!(r.min_ns >= 1 && r.mean_ns > 0.0);
    }

    #[test]
    fn time_limit_bounds_the_run() {
        // Same core: each round trip needs a context switch, so a billion of
        // them cannot finish; the limit must cut the run short.
        let (a, _) = two_cores();
        let t0 = Instant::now();
        let r = cacheline_pingpong_limited(a, a, 1_000_000_000, Duration::from_millis(100)).unwrap();
        assert!(r.truncated);
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(cacheline_pingpong(0, 0, 0), Err(FloorError::NoRoundTrips));
        match cacheline_pingpong(0, 100_000, 10) {
            Err(FloorError::NoSuchCore { core: 100_000, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
