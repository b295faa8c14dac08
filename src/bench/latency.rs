//! Round-trip latency through a loopback device: one timestamped probe in
//! flight at a time (ping-pong), optionally with background frames at a
//! given rate on the same queue pair, so the probe queues behind them.
//!
//! The driver side polls the used ring (no interrupts) so the figure is the
//! dataplane's, not the scheduler's wake-up time. Times come from
//! `Instant` (vDSO clock), both ends on the generator thread.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::cpu::{self, ThreadCpu};
use super::frame::{self, Check};
use super::pktgen::{RxCheck, Sizes};
use super::testbed::{DEVICE_MAC, PEER_MAC};
use crate::driver::net::QueuePair;

/// Pair id written into probe frames (load frames carry the real pair).
pub const PROBE_PAIR: u16 = 0xffff;
/// Longest recordable round trip.
const MAX_NS: u64 = 10_000_000_000;
const SIGFIG: u8 = 3;

/// Round-trip times in nanoseconds.
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub samples: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub p9999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    pub stdev_ns: f64,
}

impl Recorder {
    pub fn new() -> Recorder {
        // Bounds are constants that the crate accepts.
        Recorder { hist: Histogram::new_with_bounds(1, MAX_NS, SIGFIG).expect("valid histogram bounds") }
    }

    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    pub fn summary(&self) -> Summary {
        let h = &self.hist;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            samples: h.len(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            p9999_ns: h.value_at_quantile(0.9999),
            max_ns: h.max(),
            mean_ns: h.mean(),
            stdev_ns: h.stdev(),
        }
    }

    /// HdrHistogram's percentile distribution text (as its
    /// `outputPercentileDistribution` prints it, 5 ticks per half distance),
    /// values divided by `unit_ns` (1000.0: microseconds).
    pub fn write_hgrm(&self, w: &mut dyn Write, unit_ns: f64) -> io::Result<()> {
        let h = &self.hist;
        writeln!(w, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
        let mut total = 0u64;
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                total += v.count_since_last_iteration();
                let q = v.quantile_iterated_to();
                let value = v.value_iterated_to() as f64 / unit_ns;
                if q < 1.0 {
                    writeln!(w, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q))?;
                } else {
                    writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
                }
            }
        }
        let (mean, sd, max) = if h.is_empty() { (0.0, 0.0, 0.0) } else { (h.mean(), h.stdev(), h.max() as f64) };
        writeln!(w, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", mean / unit_ns, sd / unit_ns)?;
        writeln!(w, "#[Max     = {:12.3}, Total count    = {:12}]", max / unit_ns, h.len())?;
        let sub_buckets = (2 * 10u64.pow(SIGFIG as u32)).next_power_of_two();
        writeln!(w, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets)?;
        Ok(())
    }

    /// An SVG plot of the percentile distribution: latency (µs, log)
    /// against percentile on a log `1/(1-p)` axis.
    pub fn write_svg(&self, w: &mut dyn Write, title: &str) -> io::Result<()> {
        let (width, height) = (800.0, 480.0);
        let (left, right, top, bottom) = (70.0, 50.0, 40.0, 50.0);
        let (pw, ph) = (width - left - right, height - top - bottom);
        let h = &self.hist;
        // Decades on the x axis: enough for the samples we have (at least 90..99.99%).
        let decades = ((h.len().max(1) as f64).log10().ceil() as u32).clamp(2, 7);
        let xmax = decades as f64;
        let mut pts: Vec<(f64, f64)> = Vec::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                let x = if q >= 1.0 { xmax } else { (1.0 / (1.0 - q)).log10().min(xmax) };
                pts.push((x, v.value_iterated_to() as f64 / 1000.0));
            }
        }
        // Log latency axis: tails are often 1000x the median.
        let vmin = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let vmax = pts.iter().map(|p| p.1).fold(0.0, f64::max);
        let (lo, hi) = if pts.is_empty() {
            (-1.0, 1.0)
        } else {
            let lo = vmin.max(1e-3).log10().floor();
            (lo, vmax.max(1e-3).log10().ceil().max(lo + 1.0))
        };
        let sx = |x: f64| left + x / xmax * pw;
        let sy = |v: f64| top + ph - (v.max(1e-3).log10() - lo) / (hi - lo) * ph;

        writeln!(
            w,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        )?;
        writeln!(w, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#)?;
        writeln!(
            w,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            width / 2.0,
            xml_escape(title)
        )?;
        // Grid and labels.
        for d in 0..=decades {
            let x = sx(d as f64);
            let label = if d == 0 { "0%".to_string() } else { percent_label(d) };
            writeln!(w, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##, top + ph)?;
            writeln!(w, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#, top + ph + 18.0)?;
        }
        let few = hi - lo <= 3.0;
        for d in (lo as i32)..=(hi as i32) {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(d);
                if (m != 1.0 && !few) || v.log10() > hi + 1e-9 {
                    continue;
                }
                let py = sy(v);
                let stroke = if m == 1.0 { "#ccc" } else { "#eee" };
                writeln!(
                    w,
                    r#"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="{stroke}"/>"#,
                    left + pw
                )?;
                writeln!(
                    w,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    py + 4.0,
                    fmt_num(v)
                )?;
            }
        }
        writeln!(w, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#)?;
        writeln!(
            w,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
            left + pw / 2.0,
            height - 8.0
        )?;
        writeln!(
            w,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">round trip (µs)</text>"#,
            top + ph / 2.0,
            top + ph / 2.0
        )?;
        if !pts.is_empty() {
            write!(w, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points=""##)?;
            for (i, (x, y)) in pts.iter().enumerate() {
                if i > 0 {
                    write!(w, " ")?;
                }
                write!(w, "{:.1},{:.1}", sx(*x), sy(*y))?;
            }
            writeln!(w, r#""/>"#)?;
        }
        writeln!(w, "</svg>")
    }
}

/// 1 -> 90%, 2 -> 99%, 3 -> 99.9%, ...
fn percent_label(decades: u32) -> String {
    let mut s = String::from("9");
    if decades == 1 {
        return "90%".into();
    }
    s.push('9');
    if decades > 2 {
        s.push('.');
        for _ in 2..decades {
            s.push('9');
        }
    }
    s.push('%');
    s
}

fn fmt_num(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[derive(Clone, Debug)]
pub struct LatencyOptions {
    pub sizes: Sizes,
    /// Probes to record (after the warm-up).
    pub samples: Option<u64>,
    /// Measured time (after the warm-up).
    pub duration: Option<Duration>,
    pub warmup: Duration,
    /// Background frames per second on the same pair; 0 = none.
    pub load_pps: f64,
    pub burst: usize,
    /// A probe not back after this long is counted lost.
    pub probe_timeout: Duration,
    /// testpmd's ping-pong: one frame goes round, sent back out from the
    /// buffer it arrived in ([`run_forward`]). No background load.
    pub forward: bool,
}

impl Default for LatencyOptions {
    fn default() -> Self {
        LatencyOptions {
            sizes: Sizes(vec![64]),
            samples: Some(10_000),
            duration: None,
            warmup: Duration::ZERO,
            load_pps: 0.0,
            burst: 32,
            probe_timeout: Duration::from_millis(200),
            forward: false,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    #[serde(flatten)]
    pub summary: Summary,
    pub duration_s: f64,
    pub probes_lost: u64,
    /// Probes that came back after being counted lost.
    pub probes_late: u64,
    pub load_pps: f64,
    /// Background frames achieved in the measured window, Mpps.
    pub load_mpps: f64,
    pub load_tx_frames: u64,
    pub load_rx_frames: u64,
    /// Background frames lost plus probes lost.
    pub lost: u64,
    pub integrity_errors: u64,
    pub duplicates_or_reordered: u64,
    pub threads: Vec<ThreadCpu>,
    /// The device poll thread's busy ticks per frame (pair 0; set by the
    /// caller from the device's `busy_cycles` / `busy_frames`).
    pub device_cycles_per_frame: Option<f64>,
    /// The same without iterations over `cycles::LONG_ITERATION`.
    pub device_cycles_per_frame_excl_long: Option<f64>,
    /// This thread's ticks in loop iterations that sent or received frames,
    /// over the frames it sent (probes and load).
    pub generator_cycles_per_frame: Option<f64>,
    pub generator_busy_cycles: u64,
    pub generator_busy_frames: u64,
    /// Ticks per second of the cycle clock (measured once against the
    /// monotonic clock) and what a tick is ("tsc" or "ns").
    pub tsc_hz: f64,
    pub cycles_unit: &'static str,
}

impl LatencyReport {
    /// This thread's CPU time and busy cycles, and the cycle clock.
    fn generator_side(&mut self, busy_cycles: u64, busy_frames: u64) {
        self.threads = vec![cpu::current_thread("latency-0")];
        self.generator_busy_cycles = busy_cycles;
        self.generator_busy_frames = busy_frames;
        self.generator_cycles_per_frame = crate::dataplane::cycles::per_frame(busy_cycles, busy_frames);
        self.tsc_hz = crate::dataplane::cycles::hz();
        self.cycles_unit = crate::dataplane::cycles::UNIT;
    }
}

/// Measure round trips on `q` until the sample count, the duration or
/// `stop`. Returns the report and the recorder (for .hgrm and the plot).
pub fn run_pingpong(mut q: QueuePair, o: &LatencyOptions, stop: &AtomicBool) -> (LatencyReport, Recorder) {
    if o.forward {
        return run_forward(q, o, stop);
    }
    let mut rec = Recorder::new();
    let mut rep = LatencyReport { load_pps: o.load_pps, ..Default::default() };
    let pair = q.index();
    let burst = o.burst.max(1);
    let start = Instant::now();
    let warm_end = start + o.warmup;
    let deadline = o.duration.map(|d| warm_end + d);
    let want = o.samples.unwrap_or(u64::MAX);
    let mut load = RxCheck::new(pair);
    let (mut load_tx, mut load_tx_at_window) = (0u64, None::<(Instant, u64)>);
    let mut probe_seq = 0u64;
    let mut in_flight: Option<Instant> = None;
    let (mut bad_probes, mut late_probes) = (0u64, 0u64);
    let mut tokens = 0.0f64;
    let mut last_refill = start;
    let (mut busy_cycles, mut busy_frames) = (0u64, 0u64);
    q.post_rx();
    let end = loop {
        let t0 = crate::dataplane::cycles::now();
        let mut sent = 0u64;
        let now = Instant::now();
        let measuring = now >= warm_end;
        if measuring && load_tx_at_window.is_none() {
            load_tx_at_window = Some((now, load_tx));
        }
        let over = stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) || rep.summary.samples >= want;
        if over {
            break now;
        }
        if let Some(t) = in_flight {
            if now.duration_since(t) > o.probe_timeout {
                rep.probes_lost += 1;
                probe_seq += 1;
                in_flight = None;
            }
        }
        if in_flight.is_none() {
            let seq = probe_seq;
            let size = o.sizes.of(seq);
            let t = Instant::now();
            let n = q.tx_burst(&mut |_, buf| frame::build(buf, size, PEER_MAC, DEVICE_MAC, PROBE_PAIR, seq), 1);
            if n == 1 {
                in_flight = Some(t);
                sent += 1;
            }
        }
        if o.load_pps > 0.0 {
            tokens = (tokens + now.saturating_duration_since(last_refill).as_secs_f64() * o.load_pps).min(burst as f64);
            last_refill = now;
            let k = tokens as usize;
            if k > 0 {
                let mut seq = load_tx;
                let n = q.tx_burst(
                    &mut |_, buf| {
                        let n = frame::build(buf, o.sizes.of(seq), PEER_MAC, DEVICE_MAC, pair, seq);
                        seq += 1;
                        n
                    },
                    k,
                );
                tokens -= n as f64;
                load_tx += n as u64;
                sent += n as u64;
            }
        }
        let expect = probe_seq;
        let mut back = None;
        let got = q.rx_burst(
            // Timed when the frame is seen, before it is checked.
            &mut |f| match (Instant::now(), frame::check(f)) {
                (t, Check::Ok { pair: PROBE_PAIR, seq }) if seq == expect => back = Some(t),
                // Back after its timeout: already counted lost.
                (_, Check::Ok { pair: PROBE_PAIR, seq }) if seq < expect => late_probes += 1,
                (_, Check::Ok { pair: PROBE_PAIR, .. }) => bad_probes += 1,
                (_, c) => load.checked(c, f.len()),
            },
            burst,
        );
        if let (Some(t1), Some(t0)) = (back, in_flight) {
            if measuring {
                rec.record(t1.duration_since(t0).as_nanos() as u64);
                rep.summary.samples += 1;
            }
            probe_seq += 1;
            in_flight = None;
        }
        if sent > 0 || got > 0 {
            busy_cycles += crate::dataplane::cycles::now().saturating_sub(t0);
            busy_frames += sent;
        }
    };
    // Let background frames in flight come back before counting losses.
    let drain_until = Instant::now() + o.probe_timeout;
    while load.seen() < load_tx && Instant::now() < drain_until {
        if q.rx_burst(&mut |f| load.frame(f), burst) == 0 {
            std::hint::spin_loop();
        }
    }
    if let Some((t0, tx0)) = load_tx_at_window {
        let s = end.saturating_duration_since(t0).as_secs_f64();
        rep.duration_s = s;
        if s > 0.0 {
            rep.load_mpps = (load_tx - tx0) as f64 / s / 1e6;
        }
    }
    rep.summary = Summary { samples: rep.summary.samples, ..rec.summary() };
    rep.load_tx_frames = load_tx;
    rep.load_rx_frames = load.frames;
    rep.lost = load_tx.saturating_sub(load.seen()) + rep.probes_lost;
    rep.integrity_errors = load.integrity_errors + bad_probes;
    rep.probes_late = late_probes;
    rep.duplicates_or_reordered = load.duplicates_or_reordered;
    rep.generator_side(busy_cycles, busy_frames);
    (rep, rec)
}

/// Empty polls between two looks at the clock while the frame is out.
const POLLS_PER_CLOCK_CHECK: u32 = 256;

/// `latency --mode fwd`, the driver side of testpmd's ping-pong (`io`
/// forwarding, one frame in flight): a single probe goes round and each
/// arrival is sent back out from the buffer it arrived in, header and all,
/// without being read, so its lines stay with the device that wrote them
/// (testpmd's `io` side never touches a frame either). Every
/// [`frame::SAMPLE`]-th arrival is checked in full. A round trip is the
/// time from one arrival to the next on the cycle clock, read as the used
/// entry is seen, before the frame is touched. A probe not back within the probe
/// timeout is lost and ends the run (a late one would otherwise double the
/// traffic); after the end the probe must come back once more.
fn run_forward(mut q: QueuePair, o: &LatencyOptions, stop: &AtomicBool) -> (LatencyReport, Recorder) {
    let mut rec = Recorder::new();
    let mut rep = LatencyReport::default();
    let start = Instant::now();
    let warm_end = start + o.warmup;
    let deadline = o.duration.map(|d| warm_end + d);
    let want = o.samples.unwrap_or(u64::MAX);
    let (mut busy_cycles, mut busy_frames) = (0u64, 0u64);
    let (mut arrivals, mut bad) = (0u64, 0u64);
    q.post_rx();
    let size = o.sizes.of(0);
    // Round trips on the cycle clock (a few ns to read, against the vDSO
    // clock's tens); Instant for the warm-up, deadline and timeout only.
    let ns_per_tick = 1e9 / crate::dataplane::cycles::hz();
    let mut last_tick = crate::dataplane::cycles::now();
    let sent = q.tx_burst(&mut |_, buf| frame::build(buf, size, PEER_MAC, DEVICE_MAC, PROBE_PAIR, 0), 1);
    let mut out = sent == 1;
    if !out {
        rep.probes_lost += 1;
    }
    let mut window = None::<Instant>;
    let mut idle = 0u32;
    while out {
        let t0 = crate::dataplane::cycles::now();
        let mut at = None;
        let (got, fwd) = q.fwd_burst(
            &mut |f| {
                // Timed before anything reads the frame.
                at = Some(crate::dataplane::cycles::now());
                if arrivals % frame::SAMPLE == 0 && frame::check(f) != (Check::Ok { pair: PROBE_PAIR, seq: 0 }) {
                    bad += 1;
                }
                arrivals += 1;
            },
            1,
            true,
            false,
        );
        if got == 0 {
            idle += 1;
            if idle < POLLS_PER_CLOCK_CHECK {
                continue;
            }
            idle = 0;
            let now = Instant::now();
            let since = crate::dataplane::cycles::now().wrapping_sub(last_tick) as f64 * ns_per_tick;
            if since > o.probe_timeout.as_nanos() as f64 {
                rep.probes_lost += 1;
                out = false;
            }
            if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d) {
                break;
            }
            continue;
        }
        busy_cycles += crate::dataplane::cycles::now().saturating_sub(t0);
        busy_frames += fwd as u64;
        let Some(tick) = at else { continue };
        // After the frame went back out: off the round trip's path.
        let t = Instant::now();
        if t >= warm_end {
            window.get_or_insert(t);
            rec.record((tick.wrapping_sub(last_tick) as f64 * ns_per_tick) as u64);
            rep.summary.samples += 1;
        }
        last_tick = tick;
        // A failed forward reposts the buffer: the probe is gone.
        if fwd == 0 {
            rep.probes_lost += 1;
            out = false;
        }
        if rep.summary.samples >= want || stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| t >= d) {
            break;
        }
    }
    let end = Instant::now();
    // The probe still out must come back once more.
    if out {
        let until = end + o.probe_timeout;
        let mut back = 0;
        while back == 0 && Instant::now() < until {
            back = q
                .fwd_burst(
                    &mut |f| bad += (frame::check(f) != (Check::Ok { pair: PROBE_PAIR, seq: 0 })) as u64,
                    1,
                    false,
                    true,
                )
                .0;
        }
        rep.probes_lost += (back == 0) as u64;
    }
    if let Some(t0) = window {
        rep.duration_s = end.saturating_duration_since(t0).as_secs_f64();
    }
    rep.summary = Summary { samples: rep.summary.samples, ..rec.summary() };
    rep.lost = rep.probes_lost;
    rep.integrity_errors = bad;
    rep.generator_side(busy_cycles, busy_frames);
    (rep, rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1000 samples: 900 at 1 µs, 90 at 5 µs, 9 at 20 µs, 1 at 100 µs.
    fn known() -> Recorder {
        let mut r = Recorder::new();
        for (ns, n) in [(1_000u64, 900), (5_000, 90), (20_000, 9), (100_000, 1)] {
            for _ in 0..n {
                r.record(ns);
            }
        }
        r
    }

    fn close(a: u64, b: u64) -> bool {
        // 3 significant digits: within 0.1%.
        (a as f64 - b as f64).abs() <= b as f64 * 0.001
    }

    #[test]
    fn known_delays_land_in_their_percentiles() {
        let s = known().summary();
        assert_eq!(s.samples, 1000);
        assert_eq!(s.min_ns, 1000);
        assert_eq!(s.p50_ns, 1000);
        assert_eq!(s.p90_ns, 1000);
        assert!(close(s.p99_ns, 5_000), "{s:?}");
        assert!(close(s.p999_ns, 20_000), "{s:?}");
        assert!(close(s.p9999_ns, 100_000), "{s:?}");
        assert!(close(s.max_ns, 100_000), "{s:?}");
        let mean = (900.0 * 1000.0 + 90.0 * 5000.0 + 9.0 * 20000.0 + 100000.0) / 1000.0;
        assert!((s.mean_ns - mean).abs() / mean < 0.002, "{} vs {mean}", s.mean_ns);
        assert_eq!(Recorder::new().summary(), Summary::default());
    }

    #[test]
    fn hgrm_has_the_hdrhistogram_layout() {
        let mut out = Vec::new();
        known().write_hgrm(&mut out, 1000.0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<&str>> =
            lines[2..].iter().take_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 10);
        let (mut last_q, mut last_c) = (-1.0f64, 0u64);
        for r in &rows[..rows.len() - 1] {
            assert_eq!(r.len(), 4, "{r:?}");
            let q: f64 = r[1].parse().unwrap();
            let c: u64 = r[2].parse().unwrap();
            let inv: f64 = r[3].parse().unwrap();
            assert!(q >= last_q && c >= last_c);
            assert!((inv - 1.0 / (1.0 - q)).abs() < 0.01 * inv.max(1.0));
            assert_eq!(r[1].split('.').nth(1).unwrap().len(), 12);
            (last_q, last_c) = (q, c);
        }
        let first = &rows[0];
        assert_eq!(first[0], "1.000");
        assert_eq!(first[1], "0.000000000000");
        let end = rows.last().unwrap();
        assert_eq!(end.len(), 3, "the 100% row has no 1/(1-p)");
        assert_eq!(end[1], "1.000000000000");
        assert_eq!(end[2], "1000");
        assert!(close((end[0].parse::<f64>().unwrap() * 1000.0) as u64, 100_000));
        // Rows between 90% and 99% read 5 µs; the ones past 99% more.
        let p99 = rows.iter().filter(|r| r[1].parse::<f64>().unwrap() <= 0.99).last().unwrap();
        assert!(p99[1].parse::<f64>().unwrap() > 0.98, "{p99:?}");
        assert!(close((p99[0].parse::<f64>().unwrap() * 1000.0) as u64, 5_000), "{p99:?}");
        let foot: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("#[")).collect();
        assert_eq!(foot.len(), 3);
        assert!(foot[0].starts_with("#[Mean    = ") && foot[0].contains(", StdDeviation   = "));
        assert!(foot[1].contains("Total count    =         1000]"), "{}", foot[1]);
        assert!(foot[2].contains("SubBuckets     =         2048]"), "{}", foot[2]);
    }

    /// Tags open and close in order; attributes are quoted.
    fn well_formed(svg: &str) -> Result<usize, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        let mut elements = 0;
        while let Some(i) = rest.find('<') {
            let j = rest[i..].find('>').ok_or("unclosed tag")? + i;
            let tag = &rest[i + 1..j];
            if tag.matches('"').count() % 2 != 0 {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("stray </{name}>"))?;
                if open != name {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
            } else {
                elements += 1;
                if !tag.ends_with('/') {
                    stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
                }
            }
            rest = &rest[j + 1..];
        }
        if stack.is_empty() {
            Ok(elements)
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    #[test]
    fn svg_is_well_formed_and_plots_the_distribution() {
        let mut out = Vec::new();
        known().write_svg(&mut out, "ping-pong <64 B> & more").unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(well_formed(&svg).unwrap() > 10);
        assert!(svg.contains("&lt;64 B&gt; &amp; more"));
        assert!(svg.contains(">99.9%<"));
        let pts = svg.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        let ys: Vec<f64> = pts.split(' ').map(|p| p.split(',').nth(1).unwrap().parse().unwrap()).collect();
        assert!(ys.len() > 10);
        // Latency never falls as the percentile rises (y grows downwards).
        assert!(ys.windows(2).all(|w| w[1] <= w[0]), "{ys:?}");
        // An empty recorder still makes a valid (empty) plot.
        let mut out = Vec::new();
        Recorder::new().write_svg(&mut out, "empty").unwrap();
        well_formed(std::str::from_utf8(&out).unwrap()).unwrap();
        assert!(well_formed("<svg><g></svg>").is_err());
    }

    #[test]
    fn axis_labels() {
        assert_eq!(percent_label(1), "90%");
        assert_eq!(percent_label(2), "99%");
        assert_eq!(percent_label(4), "99.99%");
        assert_eq!(fmt_num(0.5), "0.5");
        assert_eq!(fmt_num(200.0), "200");
    }
}
