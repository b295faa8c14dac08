//! `vduse-net run`: serve device(s) on the real kernel until SIGINT/SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use vduse_net::backend::af_xdp::XdpMode;
use vduse_net::backend::host::{self, HostKind, HostOptions, HostPorts};
use vduse_net::backend::link::LinkWatch;
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::patch::patch_pair;
use vduse_net::backend::Port;
use vduse_net::dataplane::{DeviceOptions, NetDevice};
use vduse_net::net::features;
use vduse_net::vduse::kernel::KernelControl;
use vduse_net::vduse::VduseControl;

use super::{parse_cores, parse_mac, CliError, CliResult, Idle};

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
    host: HostArgs,
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
    let spec = a.host.spec(a.backend)?;
    if a.dev.queues == 0 {
        return Err(CliError(format!("--queues {} must be in 1..=256", a.dev.queues)));
    }
    let control: Arc<dyn VduseControl> = Arc::new(KernelControl::open()?);
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let names: Vec<String> =
        if a.devices == 1 { vec![a.name.clone()] } else { (0..a.devices).map(|i| format!("{}{i}", a.name)).collect() };
    let pairs = a.dev.queues as usize;
    let mut ports: Vec<Vec<Box<dyn Port>>> = (0..a.devices).map(|_| Vec::new()).collect();
    let mut links: Vec<Option<Box<dyn LinkWatch>>> = (0..a.devices).map(|_| None).collect();
    let mut ifaces: Vec<Option<String>> = vec![None; a.devices];
    if let (Some(kind), Some(spec)) = (a.backend.host(), spec) {
        for (i, (name, hp)) in a.host.open_all(kind, spec, a.devices, a.dev.queues)?.into_iter().enumerate() {
            ports[i] = hp.ports;
            links[i] = Some(hp.watch);
            ifaces[i] = Some(name);
        }
    }
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
            Backend::Tap | Backend::AfPacket | Backend::AfXdp => {}
        }
    }
    let mut running = Vec::new();
    for (i, ((name, ports), link)) in names.iter().zip(ports).zip(links).enumerate() {
        let mut mac = a.mac;
        mac[5] = mac[5].wrapping_add(i as u8);
        let dev = NetDevice::create(control.clone(), a.dev.options(name, mac))?;
        let l = dev.layout().clone();
        eprintln!(
            "vduse-net: device {} ready: API v{}, {} pair(s){}, {} groups, {} address spaces, vduse features {}{}{}",
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
            },
            match &ifaces[i] {
                Some(n) => format!("; port {} {n}", a.backend.host().map(|k| k.name()).unwrap_or("")),
                None => String::new(),
            }
        );
        running.push(dev.start_with_link(ports, link)?);
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
