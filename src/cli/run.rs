//! `vduse-net run`: serve device(s) on the real kernel until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use log::LevelFilter;
use vduse_net::backend::af_xdp::XdpMode;
use vduse_net::backend::host::{self, HostKind, HostOptions, HostPorts};
use vduse_net::backend::link::LinkWatch;
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::patch::patch_pair;
use vduse_net::backend::Port;
use vduse_net::dataplane::device::DEFAULT_RING_SIZE;
use vduse_net::dataplane::{DeviceError, DeviceOptions, NetDevice};
use vduse_net::net::features;
use vduse_net::vduse::kernel::KernelControl;
use vduse_net::vduse::model::KernelModel;
use vduse_net::vduse::{VduseControl, VduseError};

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
    /// A tap device per device (--iface), one tap queue per pair; created
    /// if missing.
    Tap,
    /// Packet sockets with mmapped rings on an Ethernet interface (--iface).
    #[value(name = "af-packet")]
    AfPacket,
    /// AF_XDP sockets on a NIC (--iface): pair i on the NIC's queue i, fed
    /// by an XDP program (--xdp-mode, --zero-copy).
    #[value(name = "af-xdp")]
    AfXdp,
}

impl Backend {
    /// The host port kind, for backends on a host interface.
    pub fn host(self) -> Option<HostKind> {
        match self {
            Backend::Loopback | Backend::Patch => None,
            Backend::Tap => Some(HostKind::Tap),
            Backend::AfPacket => Some(HostKind::AfPacket),
            Backend::AfXdp => Some(HostKind::AfXdp),
        }
    }
}

/// Options of the host ports.
#[derive(Args, Clone, Debug)]
pub struct HostArgs {
    /// Interface for --backend tap|af-packet|af-xdp: a name, a list a,b (one
    /// per device) or a pattern like tap%d (%d = device index).
    #[arg(long)]
    pub iface: Option<String>,
    /// af-packet, af-xdp: do not put the interface in promiscuous mode.
    #[arg(long)]
    pub no_promisc: bool,
    /// af-xdp: where the XDP program runs: native (in the driver; the
    /// default) or skb (generic XDP, any interface, always copies).
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpModeArg>,
    /// af-xdp: require zero-copy sockets (native mode, driver support).
    #[arg(long)]
    pub zero_copy: bool,
    /// af-xdp: entries of each AF_XDP ring, and frames per direction in each
    /// pair's UMEM (2 KiB each): what the kernel can buffer while the device
    /// is busy (power of two, 64..=16384; default 2048).
    #[arg(long)]
    pub xdp_ring_size: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Skb,
}

impl HostArgs {
    pub fn options(&self) -> HostOptions {
        let mut o = HostOptions::default();
        o.packet.promisc = !self.no_promisc;
        if self.xdp_mode == Some(XdpModeArg::Skb) {
            o.xdp.mode = XdpMode::Skb;
        }
        o.xdp.zero_copy = self.zero_copy;
        o.xdp.promisc = !self.no_promisc;
        if let Some(n) = self.xdp_ring_size {
            o.xdp.ring_size = n;
        }
        o
    }

    /// Check --iface against the backend; `Some(spec)` for host backends.
    pub fn spec(&self, backend: Backend) -> Result<Option<&str>, CliError> {
        match (backend.host(), self.iface.as_deref()) {
            (Some(k), None) => Err(CliError(format!("--backend {} needs --iface NAME", k.name()))),
            (Some(_), Some(s)) => Ok(Some(s)),
            (None, Some(_)) => Err(CliError("--iface is only for --backend tap, af-packet or af-xdp".into())),
            (None, None) => Ok(None),
        }
        .and_then(|spec| {
            if backend != Backend::AfXdp && (self.xdp_mode.is_some() || self.zero_copy || self.xdp_ring_size.is_some())
            {
                return Err(CliError("--xdp-mode, --zero-copy and --xdp-ring-size are for --backend af-xdp".into()));
            }
            Ok(spec)
        })
    }

    /// Open the ports of `count` devices with `pairs` pairs each, all before
    /// any device exists (a failure leaves nothing behind: taps created
    /// here vanish with their queues, sockets close).
    pub fn open_all(
        &self,
        kind: HostKind,
        spec: &str,
        count: usize,
        pairs: u16,
    ) -> Result<Vec<(String, HostPorts)>, CliError> {
        let mut out = Vec::new();
        for i in 0..count {
            let name = host::iface_for(spec, i, count).map_err(CliError)?;
            if out.iter().any(|(n, _): &(String, HostPorts)| *n == name) {
                return Err(CliError(format!("--iface: {name} is given twice (one interface per device)")));
            }
            let p = host::open(kind, &name, pairs, &self.options())
                .map_err(|e| CliError(format!("--backend {} --iface {name}: {e}", kind.name())))?;
            out.push((name, p));
        }
        Ok(out)
    }
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
    pub host: HostArgs,
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
    /// Take over an existing device from its state log (README "Restarts and upgrades"); an error
    /// when there is no device or no usable log. Without it, a device with a log is taken over
    /// and one without is created.
    #[arg(long)]
    pub reconnect: bool,
    /// On SIGTERM/SIGINT leave the device and its state log for the next process (upgrades)
    /// instead of destroying them.
    #[arg(long)]
    pub keep_device: bool,
    /// Where state logs live [default: $RUNTIME_DIRECTORY, else /run/vduse-net].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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
    // Every device's options (feature lists, MTU, ring size) are checked, and
    // the interfaces opened, before VDUSE is touched: interface errors name
    // their cause first, and a failure leaves no device (and no interface this
    // process created) behind.
    let opts = plan.devices.iter().map(|d| d.args.dev.options(&d.name, d.mac)).collect::<Result<Vec<_>, _>>()?;
    let mut hosts = open_host_ports(&plan)?;
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

    let ports = make_ports(&plan, &mut hosts)?;
    let mut running = Vec::new();
    for (((d, (ports, link)), host), opts) in plan.devices.iter().zip(ports).zip(&hosts).zip(opts) {
        let dev = open_device(&control, opts, &d.args)?;
        let l = dev.layout().clone();
        eprintln!(
            "vduse-net: device {} ready: API v{}, {} pair(s){}, {} groups, {} address spaces, max queue size {}, vduse features {}{}{}",
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
            },
            match host {
                Some((kind, iface, _)) => format!("; port {} {iface}", kind.name()),
                None => String::new(),
            }
        );
        eprintln!("vduse-net: device {} offers {}", l.name, features::describe(l.features));
        running.push(dev.start_with_link(ports, link)?);
        log::info!("device {} created: port {}", l.name, d.port_description(&plan.devices));
    }
    eprintln!("vduse-net: add with `vdpa dev add name NAME mgmtdev vduse`; stop with Ctrl-C");
    super::daemon::serve(running, plan, &a, m, stop, hup)
}

/// Create the device, or take it over from its state log: with
/// `--reconnect` always (failing when that is impossible); otherwise when
/// a log is there and the kernel still has the device.
fn open_device(control: &Arc<dyn VduseControl>, opts: DeviceOptions, a: &RunArgs) -> Result<NetDevice, CliError> {
    if let Some(d) = &a.state_dir {
        // An explicit directory that cannot hold logs is a bad flag, not a
        // silent loss of reconnect.
        std::fs::create_dir_all(d).map_err(|e| CliError(format!("--state-dir {}: {e}", d.display())))?;
    }
    let dir = a.state_dir.clone().unwrap_or_else(vduse_net::persist::state_dir);
    let name = opts.name.clone();
    let log = vduse_net::persist::path_for(&dir, &name);
    if a.reconnect || log.exists() {
        match NetDevice::reattach(control.clone(), opts.clone(), &dir) {
            Ok(dev) => {
                eprintln!("vduse-net: device {name}: reattached from {}", log.display());
                return Ok(dev);
            }
            Err(e) if a.reconnect => {
                return Err(CliError(format!(
                    "--reconnect {name}: {e}. Without --reconnect a device that cannot be taken over must be                      removed first (vdpa dev del {name}; then it is created afresh)"
                )))
            }
            // The device is gone (a reboot, someone destroyed it): the log
            // describes nothing; start afresh.
            Err(DeviceError::Vduse(VduseError::NoDevice(_))) => {
                eprintln!("vduse-net: device {name}: state log {} without a device; creating it", log.display());
                let _ = std::fs::remove_file(&log);
            }
            Err(e) => {
                return Err(CliError(format!(
                    "device {name} has a state log ({}) but cannot be taken over: {e}. To start afresh remove the                      device (vdpa dev del {name}) and the log",
                    log.display()
                )))
            }
        }
    }
    Ok(NetDevice::create_logged(control.clone(), opts, &dir)?)
}

/// A device's ports on a host interface: the kind, the interface, and the
/// ports with their link watch until the device takes them.
type HostSlot = Option<(HostKind, String, Option<HostPorts>)>;

/// Open the host ports of every device that has them (all or nothing).
fn open_host_ports(plan: &RunPlan) -> Result<Vec<HostSlot>, CliError> {
    let mut out: Vec<HostSlot> = Vec::new();
    for d in &plan.devices {
        let Some(kind) = d.args.backend.host() else {
            out.push(None);
            continue;
        };
        let iface = d.args.host.spec(d.args.backend)?.unwrap_or_default().to_string();
        if out.iter().flatten().any(|(_, n, _)| *n == iface) {
            return Err(CliError(format!(
                "{}: interface {iface} is already another device's (one interface per device)",
                d.name
            )));
        }
        let p = host::open(kind, &iface, d.args.dev.queues, &d.args.host.options())
            .map_err(|e| CliError(format!("{}: --backend {} --iface {iface}: {e}", d.name, kind.name())))?;
        out.push(Some((kind, iface, Some(p))));
    }
    Ok(out)
}

/// A device's ports, one per queue pair, and its link watch (host ports).
type DevicePorts = (Vec<Box<dyn Port>>, Option<Box<dyn LinkWatch>>);

/// Each device's ports and link watch. A `patch` pair is built once, when
/// its first device comes up.
fn make_ports(plan: &RunPlan, hosts: &mut [HostSlot]) -> Result<Vec<DevicePorts>, CliError> {
    let mut ports: Vec<DevicePorts> = plan.devices.iter().map(|_| (Vec::new(), None)).collect();
    for (i, d) in plan.devices.iter().enumerate() {
        if let Some((_, _, hp)) = hosts[i].as_mut() {
            let hp = hp.take().expect("opened once");
            ports[i] = (hp.ports, Some(hp.watch));
            continue;
        }
        match d.args.backend {
            Backend::Loopback => {
                for _ in 0..d.args.dev.queues {
                    ports[i].0.push(Box::new(Loopback::new(1024, !d.args.no_macswap)));
                }
            }
            Backend::Patch => {
                let j = d.peer.ok_or_else(|| CliError(format!("{}: patch without a peer", d.name)))?;
                if j < i {
                    continue;
                }
                for _ in 0..d.args.dev.queues {
                    let (x, y) = patch_pair(1024)?;
                    ports[i].0.push(Box::new(x));
                    ports[j].0.push(Box::new(y));
                }
            }
            Backend::Tap | Backend::AfPacket | Backend::AfXdp => {
                return Err(CliError(format!("{}: the host ports were not opened", d.name)));
            }
        }
    }
    Ok(ports)
}
