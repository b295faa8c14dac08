//! `vduse-net pktgen`: a device on the embedded kernel model with a
//! loopback (MAC-swapping) port, driven by the bundled virtio driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::bench::pktgen::{run_pair, QueueReport, Sizes};
use vduse_net::dataplane::NetDevice;
use vduse_net::driver::net::{NetDriver, NetDriverConfig};
use vduse_net::driver::DriverTransport;
use vduse_net::vduse::model::{KernelModel, ModelConfig};

use super::run::DeviceArgs;
use super::{CliError, CliResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelKind {
    /// 7.3 with the CTRL_VQ refusal removed (control queue, multiqueue).
    #[value(name = "7.3-patched")]
    Patched73,
    #[value(name = "7.3")]
    K73,
    #[value(name = "7.2")]
    K72,
    #[value(name = "6.12")]
    K612,
}

#[derive(Args)]
pub struct PktgenArgs {
    /// Frame size(s): 64, 64,1518 or imix.
    #[arg(long, default_value = "64,570,1518")]
    size: String,
    /// Frames per queue pair.
    #[arg(long, default_value_t = 200_000)]
    frames: u64,
    /// Upper bound on the run, in seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Which kernel the embedded model plays.
    #[arg(long, value_enum, default_value_t = KernelKind::Patched73)]
    kernel_model: KernelKind,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(a: PktgenArgs) -> CliResult {
    let sizes = Sizes::parse(&a.size).map_err(CliError)?;
    if !(a.duration > 0.0 && a.duration < 86400.0) {
        return Err(CliError(format!("--duration {} must be in (0, 86400)", a.duration)));
    }
    if a.frames == 0 {
        return Err(CliError("--frames must be at least 1".into()));
    }
    let cfg = match a.kernel_model {
        KernelKind::Patched73 => ModelConfig::patched_7_3(),
        KernelKind::K73 => ModelConfig::kernel_7_3(),
        KernelKind::K72 => ModelConfig::kernel_7_2(),
        KernelKind::K612 => ModelConfig::kernel_6_12(),
    }
    .with_timeout(Duration::from_secs(5));
    let model = KernelModel::new(cfg);
    let name = "pktgen0";
    let dev = NetDevice::create(model.control(), a.dev.options(name, [0x02, 0, 0, 0, 0, 0x01]))?;
    let pairs = dev.layout().pairs;
    let ports: Vec<Box<dyn Port>> = (0..pairs).map(|_| Box::new(Loopback::new(1024, true)) as Box<dyn Port>).collect();
    let running = dev.start(ports)?;
    let transport: Arc<dyn DriverTransport> = model.attach_vhost_vdpa(name)?;
    let dcfg = NetDriverConfig { ring_size: a.dev.ring_size, ..NetDriverConfig::default() };
    let mut driver = NetDriver::probe(transport, dcfg).map_err(|e| CliError(format!("driver probe: {e}")))?;
    let qps = driver.take_pairs();
    let used = qps.len();
    let limit = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let handles: Vec<_> = qps
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let sizes = sizes.clone();
            let (frames, burst) = (a.frames, a.dev.burst);
            std::thread::spawn(move || run_pair(q, i as u16, frames, &sizes, burst, limit))
        })
        .collect();
    let reports: Vec<QueueReport> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
    let secs = start.elapsed().as_secs_f64();
    drop(driver);
    model.detach(name)?;
    let dstats = running.stop()?;

    let sum = |f: fn(&QueueReport) -> u64| reports.iter().map(f).sum::<u64>();
    let (tx, rx, lost, bad) =
        (sum(|r| r.tx_frames), sum(|r| r.rx_frames), sum(|r| r.lost), sum(|r| r.integrity_errors));
    let dup = sum(|r| r.duplicates_or_reordered);
    let (txb, rxb) = (sum(|r| r.tx_bytes), sum(|r| r.rx_bytes));
    let out = serde_json::json!({
        "tx_frames": tx, "rx_frames": rx, "lost": lost, "integrity_errors": bad,
        "duplicates_or_reordered": dup, "duration_s": secs,
        "mpps_tx": tx as f64 / secs / 1e6, "mpps_rx": rx as f64 / secs / 1e6,
        "gbps_tx": txb as f64 * 8.0 / secs / 1e9, "gbps_rx": rxb as f64 * 8.0 / secs / 1e9,
        "queue_pairs": used, "queues": reports, "device": dstats,
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "pktgen: {used} queue pair(s), sizes {}: tx {tx} rx {rx} frames in {secs:.2} s ({:.3} / {:.3} Mpps, {:.2} / {:.2} Gbit/s)",
            a.size,
            out["mpps_tx"].as_f64().unwrap_or(0.0),
            out["mpps_rx"].as_f64().unwrap_or(0.0),
            out["gbps_tx"].as_f64().unwrap_or(0.0),
            out["gbps_rx"].as_f64().unwrap_or(0.0)
        );
        println!("lost {lost}, integrity errors {bad}, duplicated/reordered {dup}");
    }
    if lost > 0 || bad > 0 || dup > 0 {
        return Err(CliError(format!("traffic check failed: lost {lost}, corrupt {bad}, dup/reordered {dup}")));
    }
    Ok(())
}
