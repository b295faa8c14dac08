//! `vduse-net stats`: read a running process's stats socket; and the
//! `--stats-socket`/`--metrics` flags every device-serving command shares.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use vduse_net::ops::http::MetricsServer;
use vduse_net::ops::sample::{DeviceSample, PairSample, Sample};
use vduse_net::ops::socket::{StatsClient, StatsServer};
use vduse_net::ops::{paths, prom, Registry};

use super::{CliError, CliResult};

/// Where this process serves its stats.
#[derive(Args, Clone, Debug, Default)]
pub struct StatsArgs {
    /// Serve stats on this Unix socket [default: $RUNTIME_DIRECTORY/NAME.sock, else /run/vduse-net/NAME.sock].
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<PathBuf>,
    /// Serve no stats socket.
    #[arg(long, conflicts_with = "stats_socket")]
    pub no_stats_socket: bool,
    /// Serve Prometheus metrics over HTTP at ADDR (e.g. 127.0.0.1:9477), path /metrics.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen_addr)]
    pub metrics: Option<String>,
}

fn parse_listen_addr(s: &str) -> Result<String, String> {
    s.parse::<std::net::SocketAddr>()
        .map(|_| s.to_string())
        .map_err(|e| format!("{s:?} is not an address:port ({e}); e.g. 127.0.0.1:9477 or [::1]:9477"))
}

/// The servers of one process; dropping them closes the socket (and removes
/// its file) and the HTTP listener.
#[derive(Default)]
pub struct OpsServers {
    pub socket: Option<StatsServer>,
    pub metrics: Option<MetricsServer>,
}

impl StatsArgs {
    pub fn socket_path(&self, instance: &str) -> Option<PathBuf> {
        if self.no_stats_socket {
            return None;
        }
        Some(self.stats_socket.clone().unwrap_or_else(|| paths::socket_for(instance)))
    }

    /// Start what these flags ask for. An explicit `--stats-socket` that
    /// cannot be bound is an error; the default path is best effort (a
    /// benchmark run as a user without /run/vduse-net still runs).
    pub fn start(&self, registry: &Arc<Registry>, instance: &str) -> Result<OpsServers, CliError> {
        let mut s = OpsServers::default();
        if let Some(path) = self.socket_path(instance) {
            match StatsServer::start(&path, registry.clone()) {
                Ok(srv) => s.socket = Some(srv),
                Err(e) if self.stats_socket.is_none() => {
                    log::warn!("no stats socket: {e} (choose one with --stats-socket PATH, or --no-stats-socket)")
                }
                Err(e) => return Err(CliError(e.to_string())),
            }
        }
        if let Some(addr) = &self.metrics {
            s.metrics = Some(MetricsServer::start(addr, registry.clone()).map_err(|e| CliError(e.to_string()))?);
        }
        Ok(s)
    }
}

#[derive(Args)]
pub struct StatsCmdArgs {
    /// An instance (the NAME of /run/vduse-net/NAME.sock) or a device name; default: the only socket there.
    name: Option<String>,
    /// The stats socket to read.
    #[arg(long, value_name = "PATH", conflicts_with = "name")]
    socket: Option<PathBuf>,
    /// One JSON object per sample (schema: README, "Operating vduse-net").
    #[arg(long, conflicts_with = "prometheus")]
    json: bool,
    /// Prometheus text format (for node-exporter's textfile collector).
    #[arg(long, conflicts_with = "watch")]
    prometheus: bool,
    /// With --prometheus: write to FILE atomically (temporary file + rename).
    #[arg(long, value_name = "FILE", requires = "prometheus")]
    output: Option<PathBuf>,
    /// Sample every SECS seconds and show rates per second (Ctrl-C stops).
    #[arg(long, value_name = "SECS")]
    watch: Option<f64>,
    /// With --watch: stop after N samples.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
    /// Only this device (may repeat).
    #[arg(long = "device", value_name = "NAME")]
    devices: Vec<String>,
}

/// Which socket, and which devices on it.
fn resolve(a: &StatsCmdArgs) -> Result<(PathBuf, Vec<String>), CliError> {
    resolve_socket(a.name.as_ref(), a.socket.as_ref(), a.devices.clone())
}

/// The socket named by `--socket`, an instance or device `name`, or the
/// only one there; `devices` gains `name` when it names a device.
pub(crate) fn resolve_socket(
    name: Option<&String>,
    socket: Option<&PathBuf>,
    mut devices: Vec<String>,
) -> Result<(PathBuf, Vec<String>), CliError> {
    if let Some(p) = socket {
        return Ok((p.clone(), devices));
    }
    let dir = paths::runtime_dir();
    let all = paths::sockets();
    let Some(name) = name else {
        return match all.as_slice() {
            [one] => Ok((one.clone(), devices)),
            [] => Err(CliError(format!(
                "no stats sockets in {}: is vduse-net running? (or give --socket PATH)",
                dir.display()
            ))),
            many => Err(CliError(format!(
                "several stats sockets in {}: name one of {}",
                dir.display(),
                many.iter().filter_map(|p| p.file_stem()).map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(", ")
            ))),
        };
    };
    let direct = paths::socket_for(name);
    if direct.exists() {
        return Ok((direct, devices));
    }
    // A device name: ask each socket who serves it.
    for p in &all {
        if let Ok(h) = StatsClient::connect(p).and_then(|mut c| c.hello()) {
            if h.devices.iter().any(|d| d == name) {
                if !devices.contains(name) {
                    devices.push(name.clone());
                }
                return Ok((p.clone(), devices));
            }
        }
    }
    Err(CliError(format!(
        "no instance or device {name:?}: no {} and no socket in {} serves a device of that name",
        direct.display(),
        dir.display()
    )))
}

pub fn run(a: StatsCmdArgs) -> CliResult {
    let (path, devices) = resolve(&a)?;
    let mut client = StatsClient::connect(&path).map_err(|e| CliError(e.to_string()))?;
    let mut sample = || client.sample(&devices).map_err(|e| CliError(e.to_string()));
    if a.prometheus {
        let text = prom::render(&sample()?);
        return match &a.output {
            Some(f) => write_atomic(f, &text),
            None => {
                print!("{text}");
                Ok(())
            }
        };
    }
    let Some(secs) = a.watch else {
        let s = sample()?;
        if a.json {
            println!("{}", serde_json::to_string(&s).map_err(|e| CliError(e.to_string()))?);
        } else {
            print!("{}", text(&s, None));
        }
        return Ok(());
    };
    if !(secs.is_finite() && (0.1..=3600.0).contains(&secs)) {
        return Err(CliError(format!("--watch {secs}: give 0.1 to 3600 seconds")));
    }
    let interval = Duration::from_secs_f64(secs);
    let clear = !a.json && std::io::stdout().is_terminal();
    let mut prev: Option<Sample> = None;
    let mut n = 0u64;
    let mut next = Instant::now();
    loop {
        let s = sample()?;
        let mut out = std::io::stdout().lock();
        let r = if a.json {
            writeln!(out, "{}", serde_json::to_string(&s).map_err(|e| CliError(e.to_string()))?)
        } else {
            let body = text(&s, prev.as_ref());
            write!(out, "{}{body}", if clear { "\x1b[2J\x1b[H" } else { "" })
        };
        // A closed pipe (`| head`) ends the watch quietly.
        if r.and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
        drop(out);
        n += 1;
        if a.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        prev = Some(s);
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn write_atomic(path: &Path, text: &str) -> CliResult {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let r = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError(format!("{}: {e}", path.display())));
    }
    Ok(())
}

fn flags(ready: bool, enabled: bool, failed: bool) -> String {
    let mut v = Vec::new();
    v.push(if ready { "ready" } else { "not-ready" });
    v.push(if enabled { "enabled" } else { "disabled" });
    if failed {
        v.push("FAILED");
    }
    v.join(" ")
}

fn reasons(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

fn rate(now: u64, before: u64, dt: f64) -> f64 {
    if dt > 0.0 {
        now.saturating_sub(before) as f64 / dt
    } else {
        0.0
    }
}

fn pair_text(out: &mut String, p: &PairSample, prev: Option<&PairSample>, dt: f64) {
    use std::fmt::Write as _;
    let core = p.core.map(|c| format!("core {c}, ")).unwrap_or_default();
    let _ = writeln!(
        out,
        "  pair {} ({core}group {}, asid {}{}{}): rx {} | tx {}",
        p.pair,
        p.group,
        p.asid,
        if p.active { "" } else { ", inactive" },
        if p.suspended { ", suspended" } else { "" },
        flags(p.rx.ready, p.rx.enabled, p.rx.failed),
        flags(p.tx.ready, p.tx.enabled, p.tx.failed)
    );
    let drops = |d: &std::collections::BTreeMap<String, u64>| d.values().sum::<u64>();
    let _ = writeln!(
        out,
        "    RX-packets: {:<12} RX-bytes: {:<14} RX-dropped: {} ({})  RX-nobuf: {}",
        p.frames.rx,
        p.bytes.rx,
        drops(&p.drops.rx),
        reasons(&p.drops.rx),
        p.backpressure.rx.values().sum::<u64>()
    );
    let _ = writeln!(
        out,
        "    TX-packets: {:<12} TX-bytes: {:<14} TX-dropped: {} ({})  TX-portfull: {}",
        p.frames.tx,
        p.bytes.tx,
        drops(&p.drops.tx),
        reasons(&p.drops.tx),
        p.backpressure.tx.values().sum::<u64>()
    );
    let _ = write!(
        out,
        "    interrupts: {}  kicks: {}  queue errors: {}",
        p.interrupts,
        p.kicks.map_or("-".into(), |k| k.to_string()),
        p.queue_errors
    );
    if let Some(c) = p.cycles_per_frame {
        let _ = write!(out, "  cycles/frame: {c:.1}");
    }
    let _ = writeln!(out);
    for (dir, q) in [("rx", &p.rx), ("tx", &p.tx)] {
        if let Some(e) = &q.last_error {
            let _ = writeln!(
                out,
                "    {dir} vq {} {} by rule {}: {}",
                q.vq,
                if q.failed { "STOPPED" } else { "was stopped" },
                e.rule,
                e.message
            );
        }
    }
    if let Some(port) = &p.port {
        let _ = writeln!(
            out,
            "    port {}{}: {}",
            port.kind,
            port.link.as_ref().map(|l| format!(" (link {l})")).unwrap_or_default(),
            reasons(&port.counters)
        );
    }
    if let Some(q) = prev {
        let _ = writeln!(
            out,
            "    Rx-pps: {:>12.0}  Rx-bps: {:>14.0}   Tx-pps: {:>12.0}  Tx-bps: {:>14.0}",
            rate(p.frames.rx, q.frames.rx, dt),
            8.0 * rate(p.bytes.rx, q.bytes.rx, dt),
            rate(p.frames.tx, q.frames.tx, dt),
            8.0 * rate(p.bytes.tx, q.bytes.tx, dt)
        );
    }
}

fn device_text(out: &mut String, d: &DeviceSample, prev: Option<&DeviceSample>, dt: f64) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "######## device {}: port {}, API v{}, {} queue pair(s) ({} active){}, link {}{}",
        d.name,
        d.port,
        d.api,
        d.queue_pairs,
        d.active_queue_pairs,
        if d.control_queue { " + control queue" } else { "" },
        d.link,
        if d.stopped { ", STOPPED" } else { "" }
    );
    let _ = writeln!(
        out,
        "  status: {}{}  mac {}  mtu {}  ring {}  idle {}",
        if d.status.names.is_empty() { "0 (no driver)".to_string() } else { d.status.names.join("|") },
        if d.suspended { " (suspended)" } else { "" },
        d.mac,
        d.mtu,
        d.ring_size,
        d.idle
    );
    let _ = writeln!(
        out,
        "  features negotiated: {}",
        if d.features.negotiated_names.is_empty() { "-".into() } else { d.features.negotiated_names.join(" ") }
    );
    if !d.features.refused_by_kernel.is_empty() {
        let _ = writeln!(out, "  refused by the kernel: {}", d.features.refused_by_kernel.join(" "));
    }
    let _ = writeln!(
        out,
        "  vq group -> asid: {}{}",
        d.group_asid.iter().map(|g| format!("{}->{}", g.group, g.asid)).collect::<Vec<_>>().join(" "),
        d.control_queue_state
            .map(|c| format!(
                "  (control queue vq {}: {}{})",
                c.vq,
                if c.ready { "ready" } else { "not ready" },
                if c.failed { ", FAILED" } else { "" }
            ))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "  slow path: {}", reasons(&d.slow_path));
    for p in &d.queues {
        let before = prev.and_then(|x| x.queues.iter().find(|q| q.pair == p.pair));
        pair_text(out, p, before, dt);
    }
}

/// The text view of a sample; with `prev`, rates per second since it.
pub fn text(s: &Sample, prev: Option<&Sample>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let dt = prev.map(|p| s.uptime_ns.saturating_sub(p.uptime_ns) as f64 / 1e9).unwrap_or(0.0);
    let _ = writeln!(
        out,
        "vduse-net {} {:?} (pid {}, {}, up {:.1} s)",
        s.process.command,
        s.process.instance,
        s.process.pid,
        s.process.state,
        s.uptime_ns as f64 / 1e9
    );
    for d in &s.devices {
        let before = prev.and_then(|p| p.devices.iter().find(|x| x.name == d.name));
        device_text(&mut out, d, before, dt);
    }
    out
}
