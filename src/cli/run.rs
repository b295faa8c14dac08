//! `vduse-net run`: serve device(s) on the real kernel until SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::patch::patch_pair;
use vduse_net::backend::Port;
use vduse_net::dataplane::{DeviceOptions, NetDevice};
use vduse_net::net::features;
use vduse_net::vduse::kernel::KernelControl;
use vduse_net::vduse::VduseControl;

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
    /// Largest queue size the device accepts.
    #[arg(long, default_value_t = 256)]
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
    /// Virtqueue layout. packed: the device also offers VIRTIO_F_RING_PACKED
    /// (not in the default offer: QEMU's shadow virtqueues refuse it), and
    /// pktgen/latency's driver asks for it.
    #[arg(long, value_enum, default_value_t = RingArg::Split)]
    pub ring: RingArg,
}

impl DeviceArgs {
    pub fn options(&self, name: &str, mac: [u8; 6]) -> DeviceOptions {
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
        if self.no_ctrl_vq {
            o.features = features::without_ctrl_vq(o.features);
        }
        if self.ring == RingArg::Packed {
            // With feature selection by name this is `+ring_packed`.
            o.features |= features::RING_PACKED;
        }
        o
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// Device name (/dev/vduse/NAME); with --devices N, NAME0..NAME{N-1}.
    #[arg(long, default_value = "vduse-net")]
    name: String,
    /// Number of devices served by this process.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    #[arg(long, value_enum, default_value_t = Backend::Loopback)]
    backend: Backend,
    /// MAC address of the (first) device; later devices count up.
    #[arg(long, value_parser = parse_mac, default_value = "02:00:00:00:00:01")]
    mac: [u8; 6],
    /// Loopback: return frames unchanged instead of swapping MAC addresses.
    #[arg(long)]
    no_macswap: bool,
    #[command(flatten)]
    dev: DeviceArgs,
}

pub fn run(a: RunArgs) -> CliResult {
    if a.devices == 0 || a.devices > 64 {
        return Err(CliError(format!("--devices {} must be in 1..=64", a.devices)));
    }
    if a.backend == Backend::Patch && a.devices != 2 {
        return Err(CliError("--backend patch wires two devices: use --devices 2".into()));
    }
    let control: Arc<dyn VduseControl> = Arc::new(KernelControl::open()?);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let names: Vec<String> =
        if a.devices == 1 { vec![a.name.clone()] } else { (0..a.devices).map(|i| format!("{}{i}", a.name)).collect() };
    let pairs = a.dev.queues as usize;
    let mut ports: Vec<Vec<Box<dyn Port>>> = (0..a.devices).map(|_| Vec::new()).collect();
    for _ in 0..pairs {
        match a.backend {
            Backend::Loopback => {
                for p in ports.iter_mut() {
                    p.push(Box::new(Loopback::new(1024, !a.no_macswap)));
                }
            }
            Backend::Patch => {
                let (x, y) = patch_pair(1024)?;
                ports[0].push(Box::new(x));
                ports[1].push(Box::new(y));
            }
        }
    }
    let mut running = Vec::new();
    for (i, (name, ports)) in names.iter().zip(ports).enumerate() {
        let mut mac = a.mac;
        mac[5] = mac[5].wrapping_add(i as u8);
        let dev = NetDevice::create(control.clone(), a.dev.options(name, mac))?;
        let l = dev.layout().clone();
        eprintln!(
            "vduse-net: device {} ready: API v{}, {} pair(s){}, {} groups, {} address spaces, vduse features {}{}",
            l.name,
            l.api,
            l.pairs,
            if l.has_cvq { " + control queue" } else { "" },
            l.ngroups,
            l.nas,
            vduse_net::dataplane::device::vduse_features_name(l.vduse_features),
            if l.dropped_features != 0 {
                format!("; kernel refused: {}", features::describe(l.dropped_features))
            } else {
                String::new()
            }
        );
        running.push(dev.start(ports)?);
    }
    eprintln!("vduse-net: add with `vdpa dev add name NAME mgmtdev vduse`; stop with Ctrl-C");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("vduse-net: stopping");
    let mut result = Ok(());
    for r in running {
        let name = r.layout().name.clone();
        match r.stop() {
            Ok(stats) => eprintln!("vduse-net: {name}: {}", serde_json::to_string(&stats).unwrap_or_default()),
            Err(e) => {
                eprintln!("vduse-net: {name}: {e}");
                result = Err(CliError(format!("destroying {name}: {e}")));
            }
        }
    }
    result
}
