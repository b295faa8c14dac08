//! `vduse-net latency`: round trips of timestamped frames through a
//! loopback device, one probe in flight, optionally under background load.

use std::time::Duration;

use clap::Args;
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::bench::cpu;
use vduse_net::bench::latency::{run_pingpong, LatencyOptions};
use vduse_net::bench::pktgen::DEVICE_THREADS;

use super::pktgen::{stop_flag, BenchArgs};
use super::{CliError, CliResult};

#[derive(Args)]
pub struct LatencyArgs {
    /// Round trips to record (default 100000 when --duration is not given); with both, whichever comes first.
    #[arg(long)]
    samples: Option<u64>,
    /// Background frames per second on the same queue pair while probing; 0 = plain ping-pong.
    #[arg(long, default_value_t = 0.0)]
    load: f64,
    /// pingpong: each probe is built, timestamped and checked in full;
    /// fwd: testpmd's ping-pong, one frame goes round and is sent back out
    /// from the buffer it arrived in without being read (every 64th is
    /// checked), a round trip being the time between two arrivals.
    #[arg(long, value_enum, default_value_t = LatencyMode::Pingpong)]
    mode: LatencyMode,
    /// Write HdrHistogram's percentile distribution (.hgrm, values in microseconds).
    #[arg(long, value_name = "FILE")]
    hgrm: Option<String>,
    /// Write an SVG plot of the percentile distribution.
    #[arg(long, value_name = "FILE")]
    plot: Option<String>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LatencyMode {
    Pingpong,
    Fwd,
}

pub fn run(a: LatencyArgs) -> CliResult {
    let b = &a.bench;
    let sizes = b.sizes()?;
    let duration = b.duration()?;
    let warmup = b.warmup()?;
    if a.samples == Some(0) {
        return Err(CliError("--samples must be at least 1".into()));
    }
    if !(a.load.is_finite() && a.load >= 0.0) {
        return Err(CliError(format!("--load {} must be a number of frames per second >= 0", a.load)));
    }
    let forward = a.mode == LatencyMode::Fwd;
    if forward && a.load > 0.0 {
        return Err(CliError("--mode fwd keeps one frame in flight: it takes no --load".into()));
    }
    if forward && sizes.0.len() != 1 {
        return Err(CliError(format!("--mode fwd sends one frame round: give one --size, not {}", b.size)));
    }
    let samples = match (a.samples, duration) {
        (None, None) => Some(100_000),
        (s, _) => s,
    };
    let o = LatencyOptions {
        sizes,
        samples,
        duration,
        warmup,
        load_pps: a.load,
        burst: b.dev.burst,
        probe_timeout: Duration::from_millis(200),
        forward,
    };
    // Open the output files first: a bad path should not cost a whole run.
    let mut hgrm = a.hgrm.as_deref().map(create).transpose()?;
    let mut plot = a.plot.as_deref().map(create).transpose()?;

    let mut tb = b.testbed("latency0", &mut |_| Box::new(Loopback::new(1024, true)) as Box<dyn Port>)?;
    let ring = b.ring_format(&tb).unwrap_or_default();
    let (_reg, _servers) = b.serve_stats(&tb, "latency")?;
    let mut pairs = tb.take_pairs();
    if pairs.is_empty() {
        return Err(CliError("the device has no queue pair".into()));
    }
    // Probes use pair 0; the others stay idle.
    let q = pairs.swap_remove(0);
    drop(pairs);
    let stop = stop_flag()?;
    let core = b.gen_cores.as_ref().and_then(|c| c.first().copied());
    let o2 = o.clone();
    let h = std::thread::Builder::new()
        .name("latency-0".into())
        .spawn(move || {
            if let Some(c) = core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                    log::warn!("latency: could not pin to core {c}");
                }
            }
            run_pingpong(q, &o2, &stop)
        })
        .map_err(|e| CliError(format!("starting the latency thread: {e}")))?;
    let (mut rep, rec) = h.join().map_err(|_| CliError("the latency thread panicked".into()))?;
    if tb.device_stats().is_some() {
        rep.threads.extend(cpu::threads_named(DEVICE_THREADS));
    }
    let dev = tb.finish().map_err(|e| CliError(format!("tearing down: {e}")))?;
    if let Some(p) = dev.as_ref().and_then(|d| d.pairs.first()) {
        use vduse_net::dataplane::cycles;
        rep.device_cycles_per_frame = cycles::per_frame(p.busy_cycles, p.busy_frames);
        rep.device_cycles_per_frame_excl_long =
            cycles::per_frame_excl_long(p.busy_cycles, p.busy_frames, p.busy_long_cycles, p.busy_long_frames);
    }

    if let Some((path, f)) = hgrm.as_mut() {
        rec.write_hgrm(f, 1000.0).map_err(|e| CliError(format!("writing {path}: {e}")))?;
    }
    if let Some((path, f)) = plot.as_mut() {
        let title = format!(
            "vduse-net round trip, {} B{}",
            b.size,
            if a.load > 0.0 { format!(", load {:.0} pps", a.load) } else { String::new() }
        );
        rec.write_svg(f, &title).map_err(|e| CliError(format!("writing {path}: {e}")))?;
    }
    if b.json {
        let mut v = serde_json::to_value(&rep).map_err(|e| CliError(e.to_string()))?;
        if let Some(m) = v.as_object_mut() {
            m.insert("ring".into(), ring.name().into());
        }
        println!("{v}");
    } else {
        let s = &rep.summary;
        println!(
            "latency: {} round trips in {:.2} s, size {}, {} rings",
            s.samples,
            rep.duration_s,
            b.size,
            ring.name()
        );
        println!(
            "  min {} ns  p50 {} ns  p90 {} ns  p99 {} ns  p99.9 {} ns  p99.99 {} ns  max {} ns  mean {:.0} ns",
            s.min_ns, s.p50_ns, s.p90_ns, s.p99_ns, s.p999_ns, s.p9999_ns, s.max_ns, s.mean_ns
        );
        if a.load > 0.0 {
            println!(
                "  background load {:.3} Mpps ({} sent, {} back)",
                rep.load_mpps, rep.load_tx_frames, rep.load_rx_frames
            );
        }
        println!("  lost {} (probes {}), integrity errors {}", rep.lost, rep.probes_lost, rep.integrity_errors);
        print_cycles(rep.device_cycles_per_frame, rep.generator_cycles_per_frame, rep.tsc_hz, rep.cycles_unit);
        for t in &rep.threads {
            println!("  cpu {:<16} user {:.3} s, sys {:.3} s", t.thread, t.user_s, t.sys_s);
        }
    }
    if rep.summary.samples == 0 {
        return Err(CliError("no round trip completed".into()));
    }
    if rep.lost > 0 || rep.integrity_errors > 0 || rep.duplicates_or_reordered > 0 {
        return Err(CliError(format!(
            "traffic check failed: lost {}, corrupt {}, dup/reordered {}",
            rep.lost, rep.integrity_errors, rep.duplicates_or_reordered
        )));
    }
    Ok(())
}

/// One line with both sides' busy ticks per frame.
pub fn print_cycles(device: Option<f64>, generator: Option<f64>, hz: f64, unit: &str) {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |c| format!("{c:.0}"));
    println!("  busy {unit} ticks/frame: device {}, generator {} (clock {:.3} GHz)", f(device), f(generator), hz / 1e9);
}

fn create(path: &str) -> Result<(String, std::io::BufWriter<std::fs::File>), CliError> {
    let f = std::fs::File::create(path).map_err(|e| CliError(format!("cannot create {path}: {e}")))?;
    Ok((path.to_string(), std::io::BufWriter::new(f)))
}
