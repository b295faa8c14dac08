//! `vduse-net run`: serve device(s) on the real kernel until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use log::LevelFilter;
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::patch::patch_pair;
use vduse_net::backend::Port;
use vduse_net::dataplane::device::DEFAULT_RING_SIZE;
use vduse_net::dataplane::{DeviceOptions, NetDevice};
use vduse_net::net::features;
use vduse_net::vduse::kernel::KernelControl;
use vduse_net::vduse::model::KernelModel;
use vduse_net::vduse::VduseControl;

use super::pktgen::KernelKind;
use super::plan::RunPlan;
use super::stats::StatsArgs;
use super::{parse_cores, parse_mac, CliError, CliResult, Idle};

/// The virtqueue layout (`--ring`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RingArg {
    /// Split rings (descriptor table, avail and used rings).
    #[default]
    Split,
    /// Packed rings (VIRTIO_F_RING_PACKED).
    Packed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// TX of each pair comes back on its RX (a reflector).
    Loopback,
    /// Two devices wired together (needs --devices 2).
    Patch,
}

/// Device options shared by `run` and the benchmarks.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Queue pairs per device (each its own vq group and poll thread).
    #[arg(long = "queues", default_value_t = 1)]
    pub queues: u16,
    /// Largest queue size the device accepts (a power of two up to 32768). The
    /// kernel's virtio_vdpa sizes its rings to it; QEMU programs 1024.
    #[arg(long, default_value_t = DEFAULT_RING_SIZE)]
    pub ring_size: u16,
    /// Chains per burst.
    #[arg(long, default_value_t = 32)]
    pub burst: usize,
    /// Idle policy of the poll threads.
    #[arg(long, value_enum, default_value_t = Idle::Adaptive)]
    pub idle: Idle,
    /// Cores for the poll threads, e.g. 2,3 or 2-5 (one per pair, round-robin).
    #[arg(long = "device-cores", alias = "cores", value_parser = parse_cores)]
    pub device_cores: Option<::std::vec::Vec<usize>>,
    /// VDUSE API version to use (default: the highest the kernel offers, up to 1).
    #[arg(long)]
    pub api: Option<u64>,
    /// Address spaces to declare (API 1).
    #[arg(long, default_value_t = 2)]
    pub nas: u32,
    /// MTU advertised in config space.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u16,
    /// Do not offer the control queue (and the features that need it).
    #[arg(long)]
    pub no_ctrl_vq: bool,
    /// Change the offered features by name, e.g. +indirect_desc,-mq (`vduse-net features` lists them).
    #[arg(long, value_name = "LIST", allow_hyphen_values = true)]
    pub features: Option<String>,
    /// Virtqueue layout. packed: shorthand for `--features +ring_packed` (not in
    /// the default offer: QEMU's shadow virtqueues refuse it); pktgen/latency's
    /// driver asks for packed rings whenever the offer holds it.
    #[arg(long, value_enum, default_value_t = RingArg::Split)]
    pub ring: RingArg,
}

impl DeviceArgs {
    /// The device options, validated: bad values (a feature list, an MTU the
    /// ports cannot carry, ...) are refused before anything is opened.
    pub fn options(&self, name: &str, mac: [u8; 6]) -> Result<DeviceOptions, CliError> {
        let mut o = DeviceOptions {
            name: name.to_string(),
            queue_pairs: self.queues,
            ring_size: self.ring_size,
            burst: self.burst,
            idle: self.idle.into(),
            cores: self.device_cores.clone().unwrap_or_default(),
            api: self.api,
            nas: self.nas,
            mtu: self.mtu,
            mac,
            ..DeviceOptions::default()
        };
        if let Some(list) = &self.features {
            o.features = features::select(o.features, list).map_err(|e| CliError(format!("--features {list}: {e}")))?;
        }
        if self.no_ctrl_vq {
            o.features = features::without_ctrl_vq(o.features);
        }
        if self.ring == RingArg::Packed {
            // The same selection as `--features +ring_packed`, after the list;
            // a list that removes it contradicts the flag.
            if self.features.as_deref().is_some_and(|l| {
                features::select(features::DEFAULT_OFFER | features::RING_PACKED, l)
                    .is_ok_and(|f| f & features::RING_PACKED == 0)
            }) {
                return Err(CliError("--ring packed contradicts --features -ring_packed".into()));
            }
            o.features =
                features::select(o.features, "+ring_packed").map_err(|e| CliError(format!("--ring packed: {e}")))?;
        }
        o.validate()?;
        Ok(o)
    }
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Device name (/dev/vduse/NAME); with --devices N, NAME0..NAME{N-1}.
    #[arg(long, default_value = "vduse-net")]
    pub name: String,
    /// Number of devices served by this process.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    #[arg(long, value_enum, default_value_t = Backend::Loopback)]
    pub backend: Backend,
    /// MAC address of the (first) device; later devices count up.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:00:01")]
    pub mac: [u8; 6],
    /// Loopback: return frames unchanged instead of swapping MAC addresses.
    #[arg(long)]
    pub no_macswap: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Devices and settings from a TOML file (README, "Operating vduse-net"); SIGHUP re-reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// error, warn, info (the default of run), debug, trace or off; RUST_LOG, when set, decides instead.
    #[arg(long, value_name = "LEVEL", value_parser = vduse_net::ops::log::parse_level)]
    pub log_level: Option<LevelFilter>,
    #[command(flatten)]
    pub stats: StatsArgs,
    /// Create the devices on the embedded kernel model instead of /dev/vduse: the daemon's
    /// plumbing (stats, systemd, reload) without VDUSE. No driver ever attaches.
    #[arg(long, value_enum, hide = true)]
    pub kernel_model: Option<KernelKind>,
}

pub fn run(a: RunArgs, m: &clap::ArgMatches) -> CliResult {
    let (plan, warnings) = match &a.config {
        Some(path) => super::config::plan_for_run(path, &a, m)?,
        None => (RunPlan::from_args(&a)?, Vec::new()),
    };
    vduse_net::ops::log::set_level(plan.process.log_level.unwrap_or(LevelFilter::Info));
    for w in &warnings {
        log::warn!("{w}");
    }
    // Every device's options (feature lists, MTU, ring size) are checked
    // before anything is opened.
    let opts = plan.devices.iter().map(|d| d.args.dev.options(&d.name, d.mac)).collect::<Result<Vec<_>, _>>()?;
    let model = plan.process.kernel_model.map(|k| KernelModel::new(k.config()));
    let control: Arc<dyn VduseControl> = match &model {
        Some(m) => m.control(),
        None => Arc::new(KernelControl::open()?),
    };
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    let ports = make_ports(&plan)?;
    let mut running = Vec::new();
    for ((d, ports), opts) in plan.devices.iter().zip(ports).zip(opts) {
        let dev = NetDevice::create(control.clone(), opts)?;
        let l = dev.layout().clone();
        eprintln!(
            "vduse-net: device {} ready: API v{}, {} pair(s){}, {} groups, {} address spaces, max queue size {}, vduse features {}{}",
            l.name,
            l.api,
            l.pairs,
            if l.has_cvq { " + control queue" } else { "" },
            l.ngroups,
            l.nas,
            l.max_queue_size,
            vduse_net::dataplane::device::vduse_features_name(l.vduse_features),
            if l.dropped_features != 0 {
                format!("; kernel refused: {}", features::describe(l.dropped_features))
            } else {
                String::new()
            }
        );
        eprintln!("vduse-net: device {} offers {}", l.name, features::describe(l.features));
        running.push(dev.start(ports)?);
        log::info!("device {} created: port {}", l.name, d.port_description(&plan.devices));
    }
    eprintln!("vduse-net: add with `vdpa dev add name NAME mgmtdev vduse`; stop with Ctrl-C");
    super::daemon::serve(running, plan, &a, m, stop, hup)
}

/// Each device's ports, one per queue pair. A `patch` pair is built once,
/// when its first device comes up.
fn make_ports(plan: &RunPlan) -> Result<Vec<Vec<Box<dyn Port>>>, CliError> {
    let mut ports: Vec<Vec<Box<dyn Port>>> = plan.devices.iter().map(|_| Vec::new()).collect();
    for (i, d) in plan.devices.iter().enumerate() {
        match d.args.backend {
            Backend::Loopback => {
                for _ in 0..d.args.dev.queues {
                    ports[i].push(Box::new(Loopback::new(1024, !d.args.no_macswap)));
                }
            }
            Backend::Patch => {
                let j = d.peer.ok_or_else(|| CliError(format!("{}: patch without a peer", d.name)))?;
                if j < i {
                    continue;
                }
                for _ in 0..d.args.dev.queues {
                    let (x, y) = patch_pair(1024)?;
                    ports[i].push(Box::new(x));
                    ports[j].push(Box::new(y));
                }
            }
        }
    }
    Ok(ports)
}
