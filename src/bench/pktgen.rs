//! The traffic generator: one generator thread per queue pair owns that
//! pair's driver queues, sends numbered frames, and checks every frame
//! that comes back.
//!
//! Modes: `loopback` (the device reflects each frame, MACs swapped),
//! `txonly` (the device consumes and drops: a [`Sink`] port) and `rxonly`
//! (the device delivers numbered frames from a [`Source`] port). Frames sent
//! or received during the warm-up are checked but left out of the rates.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;
use serde::Serialize;

use super::cpu::{self, ThreadCpu};
use super::frame::{self, Check};
use super::testbed::{BenchError, Testbed, DEVICE_MAC, PEER_MAC};
use super::tso::{TsoOptions, TsoStream};
use crate::backend::loopback::Loopback;
use crate::backend::sink::Sink;
use crate::backend::source::Source;
use crate::backend::Port;
use crate::dataplane::cycles;
use crate::dataplane::device::DeviceStats;
use crate::driver::net::QueuePair;

/// Frame sizes to cycle through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sizes(pub Vec<usize>);

impl Sizes {
    /// `64`, `64,1518` or `imix` (7:4:1 of 64/570/1518).
    pub fn parse(s: &str) -> Result<Sizes, String> {
        if s == "imix" {
            let mut v = vec![64; 7];
            v.extend([570; 4]);
            v.push(1518);
            return Ok(Sizes(v));
        }
        let v: Result<Vec<usize>, _> = s.split(',').map(|x| x.trim().parse::<usize>()).collect();
        let v = v.map_err(|_| format!("--size {s:?}: expected 64, 64,1518 or imix"))?;
        if v.is_empty() || v.iter().any(|&n| !(frame::MIN_FRAME..=1518).contains(&n)) {
            return Err(format!("--size {s:?}: sizes must be in {}..=1518", frame::MIN_FRAME));
        }
        Ok(Sizes(v))
    }

    /// Size of frame `seq`.
    #[inline]
    pub fn of(&self, seq: u64) -> usize {
        self.0[(seq % self.0.len() as u64) as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Loopback,
    TxOnly,
    RxOnly,
    /// testpmd's io forwarding on the driver side: a fixed set of frames
    /// goes round (the device reflects them, the generator sends each one
    /// back out of the buffer it arrived in, reading only its header).
    Fwd,
}

impl Mode {
    /// The device-side port for pair `pair` in this mode.
    pub fn port(self, pair: u16, sizes: &Sizes) -> Box<dyn Port> {
        match self {
            Mode::Loopback | Mode::Fwd => Box::new(Loopback::new(1024, true)),
            Mode::TxOnly => Box::new(Sink::new()),
            Mode::RxOnly => {
                let sizes = sizes.clone();
                Box::new(Source::new(
                    None,
                    Box::new(move |seq, buf| frame::build(buf, sizes.of(seq), DEVICE_MAC, PEER_MAC, pair, seq)),
                ))
            }
        }
    }
}

/// How much of each received frame the generator checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    /// Header and whole payload of every frame (the default, and what every
    /// test uses).
    #[default]
    Full,
    /// Sequence number, pair and length of every frame; the payload of every
    /// [`frame::SAMPLE`]-th only. Frames that are not sampled are sent with
    /// their header written over the buffer's old bytes. For rate runs where
    /// the generator must not be the bottleneck.
    Seq,
    /// `--mode fwd` only: every [`frame::SAMPLE`]-th frame to arrive is
    /// checked in full, the others are not read at all (testpmd's `io`
    /// reads none). Loss is still counted exactly (every frame must come
    /// back once after the end); order is not checked.
    Sample,
}

impl CheckMode {
    pub fn parse(s: &str) -> Result<CheckMode, String> {
        match s {
            "full" => Ok(CheckMode::Full),
            "seq" => Ok(CheckMode::Seq),
            "sample" => Ok(CheckMode::Sample),
            _ => Err(format!("--check {s:?}: expected full, seq or sample")),
        }
    }
}

/// What each generator thread does.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub mode: Mode,
    pub sizes: Sizes,
    pub burst: usize,
    /// Frames per second per queue pair; 0 = as fast as possible.
    pub rate_pps: f64,
    /// Frames per queue pair (sent, or received in rxonly).
    pub frames: Option<u64>,
    /// Measured time after the warm-up.
    pub duration: Option<Duration>,
    pub warmup: Duration,
    /// Spin when idle (else yield now and then).
    pub busy: bool,
    /// No progress for this long ends a queue's run.
    pub stall: Duration,
    /// A device restart is expected mid-run (`--ride-through`): while
    /// sending, wait this long without progress (the drain at the end still
    /// gives up after `stall`).
    pub ride_through: Option<Duration>,
    pub check: CheckMode,
    /// With MRG_RXBUF negotiated: RX buffers of this many bytes, frames
    /// reassembled from several of them (`--mrg-rxbuf`).
    pub rx_buffer_len: Option<usize>,
    /// Loopback only: send TCP GSO frames for the device to segment, and
    /// check every segment (`--tso SIZE`, see [`super::tso`]).
    pub tso: Option<TsoOptions>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            mode: Mode::Loopback,
            sizes: Sizes(vec![64]),
            burst: 32,
            rate_pps: 0.0,
            frames: Some(10_000),
            duration: None,
            warmup: Duration::ZERO,
            busy: false,
            stall: Duration::from_secs(2),
            ride_through: None,
            check: CheckMode::Full,
            rx_buffer_len: None,
            tso: None,
        }
    }
}

/// Live counters of one generator, read by the progress printer.
#[derive(Debug, Default)]
pub struct Progress {
    pub tx: AtomicU64,
    pub rx: AtomicU64,
    pub errors: AtomicU64,
    pub lost: AtomicU64,
}

/// Shared by the generator threads and whoever watches them.
pub struct Control {
    pub stop: Arc<AtomicBool>,
    pub progress: Vec<CachePadded<Progress>>,
}

impl Control {
    pub fn new(pairs: usize, stop: Arc<AtomicBool>) -> Control {
        Control { stop, progress: (0..pairs).map(|_| CachePadded::new(Progress::default())).collect() }
    }
}

/// Receive-side accounting of one pair's numbered frames.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RxCheck {
    pub pair: u16,
    /// The next sequence number expected.
    pub next: u64,
    /// Good frames in order (or after a gap).
    pub frames: u64,
    pub bytes: u64,
    /// Frames that failed the payload check or belong to another pair.
    pub integrity_errors: u64,
    /// Frames older than one already seen.
    pub duplicates_or_reordered: u64,
    /// Sequence numbers skipped over (frames never seen).
    pub gaps: u64,
    pub mode: CheckMode,
    /// `--mode fwd`: sequence numbers repeat every lap.
    pub laps: Option<Laps>,
    /// Frames that arrived (`--check sample` picks every SAMPLE-th).
    pub arrivals: u64,
}

/// `--mode fwd`: the same `n` frames (sequence numbers 0..n) go round, so
/// a number repeats every lap. [`Laps::running`] maps it to a running count,
/// so [`RxCheck`]'s rules hold (ahead: frames lost; behind: duplicated or
/// reordered). A frame missing from a lap counts as lost once: it is marked
/// dead and later laps skip it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Laps {
    n: u64,
    /// The number expected next (< n).
    next: u64,
    dead: Vec<bool>,
    /// The running count of the next frame.
    count: u64,
}

impl Laps {
    pub fn new(n: u64) -> Laps {
        let n = n.max(1);
        Laps { n, next: 0, dead: vec![false; n as usize], count: 0 }
    }

    /// The running count of a frame numbered `seq`; `None` for a number
    /// behind the expected one (a duplicate or a reordered frame), of a
    /// frame already counted lost, or out of range.
    pub fn running(&mut self, seq: u64) -> Option<u64> {
        if seq >= self.n {
            return None;
        }
        for _ in 0..self.n {
            if !self.dead[self.next as usize] {
                break;
            }
            self.next = (self.next + 1) % self.n;
        }
        let d = (seq + self.n - self.next) % self.n;
        if d > self.n / 2 || self.dead[seq as usize] {
            return None;
        }
        let mut lost = 0;
        for k in 0..d {
            let i = ((self.next + k) % self.n) as usize;
            if !self.dead[i] {
                self.dead[i] = true;
                lost += 1;
            }
        }
        let r = self.count + lost;
        self.count = r + 1;
        self.next = (seq + 1) % self.n;
        Some(r)
    }
}

impl RxCheck {
    pub fn new(pair: u16) -> RxCheck {
        RxCheck { pair, ..Default::default() }
    }

    pub fn with_mode(pair: u16, mode: CheckMode) -> RxCheck {
        RxCheck { pair, mode, ..Default::default() }
    }

    #[inline]
    pub fn frame(&mut self, f: &[u8]) {
        let c = match self.mode {
            CheckMode::Full => frame::check(f),
            CheckMode::Seq => frame::check_sampled(f),
            CheckMode::Sample => return self.sampled(f),
        };
        self.checked(c, f.len());
    }

    /// `--check sample`: a full check of every SAMPLE-th arrival (its
    /// payload, pair and length; not its place in the order), the others
    /// counted unread.
    #[inline]
    fn sampled(&mut self, f: &[u8]) {
        self.arrivals += 1;
        if self.arrivals % frame::SAMPLE == 0 {
            match frame::check(f) {
                Check::Ok { pair, .. } if pair == self.pair => {}
                _ => {
                    self.integrity_errors += 1;
                    return;
                }
            }
        }
        self.frames += 1;
        self.bytes += f.len() as u64;
    }

    /// Account a frame of `len` bytes already checked as `c`.
    #[inline]
    pub fn checked(&mut self, c: Check, len: usize) {
        match c {
            Check::Ok { pair, seq } if pair == self.pair => {
                let seq = match self.laps.as_mut().map(|l| l.running(seq)) {
                    None => seq,
                    Some(Some(r)) => r,
                    Some(None) => {
                        self.duplicates_or_reordered += 1;
                        return;
                    }
                };
                if seq >= self.next {
                    self.gaps += seq - self.next;
                    self.next = seq + 1;
                    self.frames += 1;
                    self.bytes += len as u64;
                } else {
                    self.duplicates_or_reordered += 1;
                }
            }
            // Delivered to the wrong pair, or damaged.
            Check::Ok { .. } | Check::Corrupt => self.integrity_errors += 1,
        }
    }

    /// Frames that arrived at all, good or bad.
    pub fn seen(&self) -> u64 {
        self.frames + self.integrity_errors + self.duplicates_or_reordered
    }
}

/// Frames per second, refilled from the clock once per burst.
struct TokenBucket {
    rate: f64,
    cap: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: usize, now: Instant) -> TokenBucket {
        let cap = burst.max(1) as f64;
        TokenBucket { rate, cap, tokens: if rate > 0.0 { 1.0 } else { cap }, last: now }
    }

    /// How many frames may go now (at most `want`).
    #[inline]
    fn allow(&mut self, now: Instant, want: usize) -> usize {
        if self.rate <= 0.0 {
            return want;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        (self.tokens as usize).min(want)
    }

    #[inline]
    fn take(&mut self, n: usize) {
        if self.rate > 0.0 {
            self.tokens -= n as f64;
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    tx: u64,
    tx_bytes: u64,
    rx: u64,
    rx_bytes: u64,
}

/// What one generator thread did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueReport {
    pub pair: u16,
    pub core: Option<usize>,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub lost: u64,
    pub integrity_errors: u64,
    pub duplicates_or_reordered: u64,
    /// Errors the driver saw (bad used entries, failed kicks).
    pub driver_errors: u64,
    /// Measured window (after the warm-up) and the rates in it.
    pub window_s: f64,
    pub mpps_tx: f64,
    pub mpps_rx: f64,
    pub gbps_tx: f64,
    pub gbps_rx: f64,
    pub cpu: ThreadCpu,
    /// Generator clock ticks ([`cycles::UNIT`]) in loop iterations that moved
    /// frames, and the frames they moved (sent; received in rxonly).
    pub generator_busy_cycles: u64,
    pub generator_busy_frames: u64,
    pub generator_cycles_per_frame: Option<f64>,
    /// The device poll thread's busy ticks per frame for this pair (from its
    /// `busy_cycles` / `busy_frames`), when the device runs in this process.
    pub device_cycles_per_frame: Option<f64>,
    /// Both figures without iterations longer than `cycles::LONG_ITERATION`
    /// (on a shared machine mostly preemption; not testpmd's definition).
    pub device_cycles_per_frame_excl_long: Option<f64>,
    pub generator_cycles_per_frame_excl_long: Option<f64>,
    pub generator_long_cycles: u64,
    pub generator_long_frames: u64,
    /// Seconds from the generator's start to its end (warm-up included).
    pub run_s: f64,
    /// Busy ticks over `run_s`, per side.
    pub generator_busy_fraction: f64,
    pub device_busy_fraction: Option<f64>,
    /// Frames per device iteration that moved any (the mean burst).
    pub device_frames_per_burst: Option<f64>,
    /// The longest time without progress (a device restart shows here), when
    /// it ended (seconds from the start), and the frames received after it.
    pub longest_pause_s: f64,
    pub pause_end_s: f64,
    pub rx_after_pause: u64,
}

/// Run one queue pair until its frame count, its duration, a stall or the
/// stop flag. Loopback drains the frames still in flight before returning.
pub fn run_queue(q: &mut QueuePair, pair: u16, o: &GenOptions, ctl: &Control) -> QueueReport {
    let mut r = QueueReport { pair, ..Default::default() };
    let prog = &ctl.progress[pair as usize];
    let burst = o.burst.max(1);
    let start = Instant::now();
    let warm_end = start + o.warmup;
    let deadline = o.duration.map(|d| warm_end + d);
    let limit = o.frames.unwrap_or(u64::MAX);
    let mut chk = RxCheck::with_mode(pair, o.check);
    let seq_mode = o.check == CheckMode::Seq;
    let (mut busy_cycles, mut busy_frames) = (0u64, 0u64);
    let (mut long_cycles, mut long_frames, long) = (0u64, 0u64, cycles::long_ticks());
    let mut tx = Counts::default();
    let mut win_start: Option<(Instant, Counts)> = None;
    let mut win_end: Option<(Instant, Counts)> = None;
    let mut tb = TokenBucket::new(o.rate_pps, burst, start);
    // Built once; each GSO frame counts as this many segments on receive.
    let tso = o.tso.map(|t| TsoStream::new(t, pair));
    let per_frame = tso.as_ref().map_or(1, |t| t.segments_per_frame());
    let mut last_work = start;
    // (length, end, frames received before its end)
    let mut pause = (Duration::ZERO, start, 0u64);
    let mut idle = 0u32;
    // --mode fwd: the frames that go round (half the ring: with every RX
    // buffer forwarded and waiting on TX, the reflector would have none
    // left to deliver into); those sent so far, and those that came back
    // after forwarding stopped (each surviving frame comes back once more).
    let fwd_frames = (q.ring_size() as u64 / 2).max(1).min(limit);
    let (mut generated, mut drained) = (0u64, 0u64);
    if o.mode == Mode::Fwd {
        chk.laps = Some(Laps::new(fwd_frames));
    }
    if o.mode != Mode::TxOnly {
        if let Some(len) = o.rx_buffer_len {
            q.set_rx_buffer_len(len);
        }
        q.post_rx();
    }
    let clock = cycles::TickClock::start();
    loop {
        let t0 = cycles::now();
        let now = clock.instant(t0);
        let counts = Counts { rx: chk.frames, rx_bytes: chk.bytes, ..tx };
        if win_start.is_none() && now >= warm_end {
            win_start = Some((now, counts));
        }
        let over = ctl.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d);
        if over && win_end.is_none() {
            win_end = Some((now, counts));
        }
        let sending = win_end.is_none() && tx.tx < limit;
        let mut work = 0;
        // fwd: after its first frames the generator only forwards.
        let generating = o.mode != Mode::Fwd || generated < fwd_frames;
        if o.mode != Mode::RxOnly && generating {
            if sending {
                let mut want = tb.allow(now, burst.min((limit - tx.tx) as usize));
                if o.mode == Mode::Fwd {
                    want = want.min((fwd_frames - generated) as usize);
                }
                if want > 0 {
                    let (mut seq, mut bytes) = (tx.tx, 0u64);
                    let n = if let Some(t) = &tso {
                        q.tx_burst_hdr(
                            &mut |_, buf| {
                                let n = t.write(buf, seq);
                                seq += 1;
                                bytes += n as u64;
                                n
                            },
                            want,
                        )
                    } else {
                        q.tx_burst(
                            &mut |_, buf| {
                                let size = o.sizes.of(seq);
                                let n = if seq_mode && !frame::sampled(seq) {
                                    frame::stamp(buf, size, PEER_MAC, DEVICE_MAC, pair, seq)
                                } else {
                                    frame::build(buf, size, PEER_MAC, DEVICE_MAC, pair, seq)
                                };
                                seq += 1;
                                bytes += n as u64;
                                n
                            },
                            want,
                        )
                    };
                    tb.take(n);
                    generated += n as u64;
                    tx.tx += n as u64;
                    tx.tx_bytes += bytes;
                    work += n;
                }
            } else if o.mode == Mode::TxOnly {
                work += q.reclaim_tx();
            }
        }
        let mut moved = work as u64;
        // fwd: nothing is received until every frame that goes round was
        // sent, so they go round in the order of their numbers.
        if o.mode != Mode::TxOnly && !(o.mode == Mode::Fwd && generating && sending) {
            let got = if o.mode == Mode::Fwd {
                let before = q.stats().tx_bytes;
                let reads = o.check != CheckMode::Sample;
                let (got, sent) = q.fwd_burst(&mut |f| chk.frame(f), burst, sending, reads);
                // Each frame counts once, as sent (like loopback's).
                moved += sent as u64;
                tx.tx += sent as u64;
                tx.tx_bytes += q.stats().tx_bytes - before;
                if !sending {
                    drained += got as u64;
                }
                got
            } else if let Some(t) = &tso {
                q.rx_burst_merged(
                    &mut |h, f| {
                        let c = t.check(h, f, chk.next);
                        chk.checked(c, f.len())
                    },
                    burst,
                )
            } else if o.rx_buffer_len.is_some() {
                q.rx_burst_merged(&mut |_, f| chk.frame(f), burst)
            } else {
                q.rx_burst(&mut |f| chk.frame(f), burst)
            };
            work += got;
            if o.mode == Mode::RxOnly {
                moved = got as u64;
            }
        }
        prog.tx.store(tx.tx, Ordering::Relaxed);
        prog.rx.store(chk.frames, Ordering::Relaxed);
        prog.errors.store(chk.integrity_errors + chk.duplicates_or_reordered, Ordering::Relaxed);
        prog.lost.store(chk.gaps, Ordering::Relaxed);

        let done = match o.mode {
            // Everything sent has come back (or was accounted as bad).
            Mode::Loopback => !sending && chk.seen() >= tx.tx * per_frame,
            Mode::TxOnly => !sending && q.tx_free() >= q.ring_size() as usize,
            Mode::RxOnly => win_end.is_some() || chk.seen() >= limit,
            // Every frame that went round came back once after the end.
            Mode::Fwd => !sending && drained >= generated,
        };
        if work > 0 {
            // Busy ticks as testpmd counts them: iterations that did work.
            // `moved` counts each frame once (sent, or received in rxonly).
            let dt = cycles::now().saturating_sub(t0);
            busy_cycles += dt;
            busy_frames += moved;
            if dt > long {
                long_cycles += dt;
                long_frames += moved;
            }
        }
        if done {
            break;
        }
        // Riding through a restart: a longer wait while frames are still to send.
        let stall = match o.ride_through {
            Some(r) if sending => r.max(o.stall),
            _ => o.stall,
        };
        if work > 0 {
            let gap = now.duration_since(last_work);
            if gap > pause.0 {
                pause = (gap, now, counts.rx);
            }
            last_work = now;
            idle = 0;
        } else if now.duration_since(last_work) > stall {
            log::warn!("pair {pair}: no progress for {stall:?}, giving up");
            break;
        } else if o.busy {
            std::hint::spin_loop();
        } else {
            idle += 1;
            if idle % 64 == 0 {
                std::thread::yield_now();
            }
        }
    }
    let end_counts = Counts { rx: chk.frames, rx_bytes: chk.bytes, ..tx };
    // A run that ended by count (or stall) closes its window at the last work.
    let (t1, c1) = win_end.unwrap_or((last_work, end_counts));
    if let Some((t0, c0)) = win_start {
        let s = t1.saturating_duration_since(t0).as_secs_f64();
        if s > 0.0 {
            r.window_s = s;
            r.mpps_tx = (c1.tx - c0.tx) as f64 / s / 1e6;
            r.mpps_rx = (c1.rx - c0.rx) as f64 / s / 1e6;
            r.gbps_tx = (c1.tx_bytes - c0.tx_bytes) as f64 * 8.0 / s / 1e9;
            r.gbps_rx = (c1.rx_bytes - c0.rx_bytes) as f64 * 8.0 / s / 1e9;
        }
    }
    r.longest_pause_s = pause.0.as_secs_f64();
    r.pause_end_s = pause.1.saturating_duration_since(start).as_secs_f64();
    r.rx_after_pause = chk.frames - pause.2;
    r.tx_frames = tx.tx;
    r.tx_bytes = tx.tx_bytes;
    r.rx_frames = chk.frames;
    r.rx_bytes = chk.bytes;
    r.integrity_errors = chk.integrity_errors;
    r.duplicates_or_reordered = chk.duplicates_or_reordered;
    r.lost = match o.mode {
        Mode::Loopback => (tx.tx * per_frame).saturating_sub(chk.seen()),
        // Set from the device's counters by the caller.
        Mode::TxOnly => 0,
        Mode::RxOnly => chk.gaps,
        // A frame lost on the way does not come back after the end.
        Mode::Fwd => generated.saturating_sub(drained),
    };
    let s = q.stats();
    r.driver_errors = s.tx_errors + s.rx_errors + s.kick_errors;
    r.cpu = cpu::current_thread(&format!("pktgen-{pair}"));
    r.generator_busy_cycles = busy_cycles;
    r.generator_busy_frames = busy_frames;
    r.generator_cycles_per_frame = cycles::per_frame(busy_cycles, busy_frames);
    r.generator_long_cycles = long_cycles;
    r.generator_long_frames = long_frames;
    r.generator_cycles_per_frame_excl_long =
        cycles::per_frame_excl_long(busy_cycles, busy_frames, long_cycles, long_frames);
    r.run_s = start.elapsed().as_secs_f64();
    if r.run_s > 0.0 {
        r.generator_busy_fraction = busy_cycles as f64 / cycles::hz() / r.run_s;
    }
    r
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct PktgenReport {
    pub mode: Mode,
    pub queue_pairs: usize,
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub lost: u64,
    pub integrity_errors: u64,
    pub duplicates_or_reordered: u64,
    pub driver_errors: u64,
    /// Longest measured window of the queues.
    pub duration_s: f64,
    pub mpps_tx: f64,
    pub mpps_rx: f64,
    pub gbps_tx: f64,
    pub gbps_rx: f64,
    /// Frames the device took off its TX queues (all pairs), when it runs here.
    pub device_consumed: Option<u64>,
    pub queues: Vec<QueueReport>,
    /// CPU time of the generator threads and of the device's threads.
    pub threads: Vec<ThreadCpu>,
    /// `--check` mode of the receive side.
    pub check: CheckMode,
    /// Device poll threads' busy ticks per frame, all pairs (testpmd's
    /// `--record-core-cycles` definition: only iterations that moved frames).
    /// None when the device runs elsewhere (`--vhost-vdpa`).
    pub device_cycles_per_frame: Option<f64>,
    /// Generator threads' busy ticks per frame, all pairs.
    pub generator_cycles_per_frame: Option<f64>,
    /// Both without iterations longer than `long_iteration_us` (on a shared
    /// machine mostly preemption; not testpmd's definition).
    pub device_cycles_per_frame_excl_long: Option<f64>,
    pub generator_cycles_per_frame_excl_long: Option<f64>,
    pub long_iteration_us: u64,
    /// Which side spent more ticks per frame: "device" or "generator".
    pub busier: Option<&'static str>,
    /// Ticks per second used for the busy fractions, measured once against
    /// the monotonic clock; `cycles_unit` says what a tick is ("tsc" cycles
    /// on x86_64, "ns" elsewhere).
    pub tsc_hz: f64,
    pub cycles_unit: &'static str,
    pub device: Option<DeviceStats>,
    /// Results of post-traffic checks (`foreign_iova`, `suspend`), flattened
    /// into the JSON object.
    #[serde(flatten)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// Runs after traffic, before teardown, with the queue pairs back.
pub type PostCheck<'a> =
    &'a mut dyn FnMut(&mut Testbed, &mut [QueuePair]) -> Result<serde_json::Map<String, serde_json::Value>, BenchError>;

impl PktgenReport {
    /// Loss, corruption, duplicates, reordering or driver errors.
    pub fn failed(&self) -> bool {
        self.lost > 0 || self.integrity_errors > 0 || self.duplicates_or_reordered > 0 || self.driver_errors > 0
    }
}

/// Start one generator thread per pair (pinned to `cores[i % len]`), wait
/// for them while `tick` runs about once a second, and sum up.
pub fn run_all(
    pairs: Vec<QueuePair>,
    o: &GenOptions,
    cores: &[usize],
    ctl: &Arc<Control>,
    tick: &mut dyn FnMut(&Control, f64),
) -> Result<(Vec<QueueReport>, Vec<QueuePair>), BenchError> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, q) in pairs.into_iter().enumerate() {
        let o = o.clone();
        let shared = ctl.clone();
        let core = if cores.is_empty() { None } else { Some(cores[i % cores.len()]) };
        let h = std::thread::Builder::new()
            .name(format!("pktgen-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        log::warn!("pktgen-{i}: could not pin to core {c}");
                    }
                }
                let mut q = q;
                let mut r = run_queue(&mut q, i as u16, &o, &shared);
                r.core = core;
                (r, q)
            })
            .map_err(BenchError::Thread);
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                ctl.stop.store(true, Ordering::Relaxed);
                for h in handles {
                    let _ = h.join();
                }
                return Err(e);
            }
        }
    }
    let mut next = Duration::from_secs(1);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if start.elapsed() >= next {
            tick(ctl, start.elapsed().as_secs_f64());
            next += Duration::from_secs(1);
        }
    }
    let mut out = Vec::new();
    let mut back = Vec::new();
    for h in handles {
        let (r, q) = h.join().map_err(|_| BenchError::ThreadPanicked)?;
        out.push(r);
        back.push(q);
    }
    Ok((out, back))
}

/// A once-a-second progress line on stderr when it is a terminal.
pub fn progress_printer() -> impl FnMut(&Control, f64) {
    let tty = std::io::stderr().is_terminal();
    let mut last = (0u64, 0u64, 0.0f64);
    move |ctl, t| {
        if !tty {
            return;
        }
        let sum =
            |f: fn(&Progress) -> &AtomicU64| ctl.progress.iter().map(|p| f(p).load(Ordering::Relaxed)).sum::<u64>();
        let (tx, rx, err, lost) = (sum(|p| &p.tx), sum(|p| &p.rx), sum(|p| &p.errors), sum(|p| &p.lost));
        let dt = (t - last.2).max(1e-3);
        eprintln!(
            "[{t:5.1}s] tx {:.3} Mpps  rx {:.3} Mpps  drops {lost}  errors {err}",
            (tx - last.0) as f64 / dt / 1e6,
            (rx - last.1) as f64 / dt / 1e6
        );
        last = (tx, rx, t);
    }
}

/// Sum per-queue reports and fill in what only the device knows.
pub fn summarize(
    mode: Mode,
    mut queues: Vec<QueueReport>,
    device: Option<DeviceStats>,
    device_threads: Vec<ThreadCpu>,
) -> PktgenReport {
    if let (Mode::TxOnly, Some(d)) = (mode, &device) {
        for q in queues.iter_mut() {
            if let Some(p) = d.pairs.get(q.pair as usize) {
                q.lost = q.tx_frames.saturating_sub(p.tx_frames);
            }
        }
    }
    let hz = cycles::hz();
    let (mut dev_c, mut dev_f, mut dev_lc, mut dev_lf) = (0u64, 0u64, 0u64, 0u64);
    for q in queues.iter_mut() {
        if let Some(p) = device.as_ref().and_then(|d| d.pairs.get(q.pair as usize)) {
            q.device_cycles_per_frame = cycles::per_frame(p.busy_cycles, p.busy_frames);
            if q.run_s > 0.0 {
                q.device_busy_fraction = Some(p.busy_cycles as f64 / hz / q.run_s);
            }
            q.device_frames_per_burst = cycles::per_frame(p.busy_frames, p.busy_iterations);
            q.device_cycles_per_frame_excl_long =
                cycles::per_frame_excl_long(p.busy_cycles, p.busy_frames, p.busy_long_cycles, p.busy_long_frames);
            dev_c += p.busy_cycles;
            dev_f += p.busy_frames;
            dev_lc += p.busy_long_cycles;
            dev_lf += p.busy_long_frames;
        }
    }
    let sum_u = |f: fn(&QueueReport) -> u64| queues.iter().map(f).sum::<u64>();
    let sum_f = |f: fn(&QueueReport) -> f64| queues.iter().map(f).sum::<f64>();
    let mut threads: Vec<ThreadCpu> = queues.iter().map(|q| q.cpu.clone()).collect();
    threads.extend(device_threads);
    let device_cpf = cycles::per_frame(dev_c, dev_f);
    let gen_cpf = cycles::per_frame(sum_u(|q| q.generator_busy_cycles), sum_u(|q| q.generator_busy_frames));
    let gen_excl = cycles::per_frame_excl_long(
        sum_u(|q| q.generator_busy_cycles),
        sum_u(|q| q.generator_busy_frames),
        sum_u(|q| q.generator_long_cycles),
        sum_u(|q| q.generator_long_frames),
    );
    let busier = match (device_cpf, gen_cpf) {
        (Some(d), Some(g)) => Some(if d >= g { "device" } else { "generator" }),
        _ => None,
    };
    PktgenReport {
        mode,
        queue_pairs: queues.len(),
        tx_frames: sum_u(|q| q.tx_frames),
        rx_frames: sum_u(|q| q.rx_frames),
        lost: sum_u(|q| q.lost),
        integrity_errors: sum_u(|q| q.integrity_errors),
        duplicates_or_reordered: sum_u(|q| q.duplicates_or_reordered),
        driver_errors: sum_u(|q| q.driver_errors),
        duration_s: queues.iter().map(|q| q.window_s).fold(0.0, f64::max),
        mpps_tx: sum_f(|q| q.mpps_tx),
        mpps_rx: sum_f(|q| q.mpps_rx),
        gbps_tx: sum_f(|q| q.gbps_tx),
        gbps_rx: sum_f(|q| q.gbps_rx),
        device_consumed: device.as_ref().map(|d| d.pairs.iter().map(|p| p.tx_frames).sum()),
        queues,
        threads,
        device,
        checks: serde_json::Map::new(),
        check: CheckMode::Full,
        device_cycles_per_frame: device_cpf,
        generator_cycles_per_frame: gen_cpf,
        device_cycles_per_frame_excl_long: cycles::per_frame_excl_long(dev_c, dev_f, dev_lc, dev_lf),
        generator_cycles_per_frame_excl_long: gen_excl,
        long_iteration_us: cycles::LONG_ITERATION.as_micros() as u64,
        busier,
        tsc_hz: hz,
        cycles_unit: cycles::UNIT,
    }
}

/// Thread-name prefixes of the device's threads (poll and slow path).
pub const DEVICE_THREADS: &[&str] = &["vduse-poll-", "vduse-slow-"];

/// Run the generator on `tb` and tear it down. The device threads' CPU
/// time is read before the device stops (their threads end with it).
pub fn run_on(
    mut tb: Testbed,
    o: &GenOptions,
    gen_cores: &[usize],
    ctl: &Arc<Control>,
    tick: &mut dyn FnMut(&Control, f64),
    post: Option<PostCheck<'_>>,
) -> Result<PktgenReport, BenchError> {
    let pairs = tb.take_pairs();
    if pairs.len() > ctl.progress.len() {
        return Err(BenchError::Options(format!("{} pairs but progress for {}", pairs.len(), ctl.progress.len())));
    }
    let (queues, mut pairs) = run_all(pairs, o, gen_cores, ctl, tick)?;
    let mut extra = serde_json::Map::new();
    if let Some(post) = post {
        extra = post(&mut tb, &mut pairs)?;
    }
    drop(pairs);
    let dev_threads = if tb.device_stats().is_some() { cpu::threads_named(DEVICE_THREADS) } else { Vec::new() };
    let device = tb.finish()?;
    let mut rep = summarize(o.mode, queues, device, dev_threads);
    rep.checks = extra;
    rep.check = o.check;
    if let Some(t) = o.tso {
        // rx_frames counts segments; what the device did, when it runs here.
        let dev = rep.device.as_ref();
        let sum = |f: fn(&crate::dataplane::stats::PairStats) -> u64| dev.map(|d| d.pairs.iter().map(f).sum::<u64>());
        rep.checks.insert(
            "tso".into(),
            serde_json::json!({
                "size": t.size,
                "mss": t.mss,
                "segments_per_frame": t.segments_per_frame(),
                "segments_expected": rep.tx_frames * t.segments_per_frame(),
                "device_sw_gso_frames": sum(|p| p.tx_sw_gso),
                "device_sw_segments": sum(|p| p.tx_sw_segments),
            }),
        );
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {

    #[test]
    fn laps_count_frames_going_round_and_a_lost_one_once() {
        let mut l = Laps::new(16);
        // Two laps in order: a running count.
        let got: Vec<_> = (0..32).map(|k| l.running(k % 16)).collect();
        assert_eq!(got, (0..32).map(Some).collect::<Vec<_>>());
        // Frame 1 goes missing: 2 comes after 0 and the running count skips
        // one; on later laps 1 is not missed again.
        assert_eq!(l.running(0), Some(32));
        assert_eq!(l.running(2), Some(34));
        for k in 3..16 {
            assert_eq!(l.running(k), Some(32 + k));
        }
        assert_eq!(l.running(0), Some(48));
        assert_eq!(l.running(2), Some(49));
        // A number behind the expected one (a duplicate), the lost one
        // coming back, or one out of range: not counted.
        assert_eq!(l.running(0), None);
        assert_eq!(l.running(1), None);
        assert_eq!(l.running(16), None);
        assert_eq!(l.running(3), Some(50));
    }

    #[test]
    fn rx_check_with_laps_reports_a_missing_frame_as_one_gap() {
        let mut c = RxCheck::with_mode(0, CheckMode::Seq);
        c.laps = Some(Laps::new(8));
        // Five laps; frame 5 is lost in the second and so never comes back.
        for k in (0..40u64).filter(|&k| k < 13 || k % 8 != 5) {
            c.checked(Check::Ok { pair: 0, seq: k % 8 }, 64);
        }
        assert_eq!((c.frames, c.gaps, c.duplicates_or_reordered), (36, 1, 0));
        // It coming back after all is a duplicate, not a frame.
        c.checked(Check::Ok { pair: 0, seq: 5 }, 64);
        assert_eq!((c.frames, c.duplicates_or_reordered), (36, 1));
    }
    use super::*;

    fn frame_of(pair: u16, seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        let n = frame::build(&mut b, 64, PEER_MAC, DEVICE_MAC, pair, seq);
        b.truncate(n);
        b
    }

    #[test]
    fn sizes_parse_lists_and_imix() {
        assert_eq!(Sizes::parse("64").unwrap(), Sizes(vec![64]));
        assert_eq!(Sizes::parse("64,1518").unwrap().of(1), 1518);
        let imix = Sizes::parse("imix").unwrap();
        assert_eq!(imix.0.len(), 12);
        assert_eq!(imix.0.iter().filter(|&&s| s == 570).count(), 4);
        assert!(Sizes::parse("9000").is_err());
        assert!(Sizes::parse("big").is_err());
        assert!(Sizes::parse("").is_err());
    }

    #[test]
    fn checker_counts_gaps_duplicates_and_corruption() {
        let mut c = RxCheck::new(3);
        for seq in [0, 1, 2] {
            c.frame(&frame_of(3, seq));
        }
        assert_eq!((c.frames, c.gaps), (3, 0));
        // Injected gap: 3 and 4 never arrive.
        c.frame(&frame_of(3, 5));
        assert_eq!((c.frames, c.gaps, c.next), (4, 2, 6));
        // Duplicate and a late (reordered) frame.
        c.frame(&frame_of(3, 5));
        c.frame(&frame_of(3, 4));
        assert_eq!(c.duplicates_or_reordered, 2);
        // A flipped byte and a frame of another pair.
        let mut bad = frame_of(3, 6);
        bad[40] ^= 0x10;
        c.frame(&bad);
        c.frame(&frame_of(1, 6));
        assert_eq!(c.integrity_errors, 2);
        assert_eq!(c.frames, 4);
        assert_eq!(c.seen(), 8);
        c.frame(&frame_of(3, 6));
        assert_eq!((c.frames, c.gaps, c.next), (5, 2, 7));
    }

    #[test]
    fn token_bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut tb = TokenBucket::new(1000.0, 32, t0);
        let mut sent = 0;
        // 100 ms of simulated time in 1 ms steps: ~100 frames, never a burst above the cap.
        for ms in 1..=100u64 {
            let n = tb.allow(t0 + Duration::from_millis(ms), 32);
            assert!(n <= 32);
            tb.take(n);
            sent += n;
        }
        assert!((99..=101).contains(&sent), "{sent}");
        let mut max = TokenBucket::new(0.0, 32, t0);
        assert_eq!(max.allow(t0, 17), 17);
    }

    #[test]
    fn txonly_loss_comes_from_device_counters() {
        let q = QueueReport { pair: 0, tx_frames: 100, ..Default::default() };
        let mut stats = DeviceStats { pairs: vec![Default::default()], slow_path: Default::default(), link: None };
        stats.pairs[0].tx_frames = 97;
        let r = summarize(Mode::TxOnly, vec![q], Some(stats), Vec::new());
        assert_eq!(r.lost, 3);
        assert_eq!(r.device_consumed, Some(97));
        assert!(r.failed());
    }
}
