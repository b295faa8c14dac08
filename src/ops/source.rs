//! What the stats reader may look at, per device and per process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::control::ControlCell;
use super::sample::{self, Sample};
use crate::dataplane::device::Layout;
use crate::dataplane::stats::{PairCell, SlowPathCounters};

/// Counters a port keeps for itself (a TAP's, AF_PACKET's or AF_XDP's own
/// drops, link state). Written by the port's poll thread, read here with
/// Relaxed loads. A port offers one through `Port::stats`.
pub trait PortStats: Send + Sync {
    /// `tap`, `af-packet`, `af-xdp`, ...
    fn kind(&self) -> &'static str;
    /// Name/value pairs; names are snake_case and stable (they become
    /// `vduse_net_port_<name>_total`).
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Link state of the port's far end, when it has one.
    fn link_up(&self) -> Option<bool> {
        None
    }
}

/// `busy` or `adaptive (N spins)`.
pub fn idle_name(i: crate::dataplane::IdlePolicy) -> String {
    match i {
        crate::dataplane::IdlePolicy::Busy => "busy".into(),
        crate::dataplane::IdlePolicy::Adaptive { spins } => format!("adaptive ({spins} spins)"),
    }
}

/// Static facts about the device that the layout does not carry.
#[derive(Clone, Debug, Default)]
pub struct DeviceInfo {
    pub mac: [u8; 6],
    pub mtu: u16,
    pub ring_size: u16,
    pub burst: usize,
    pub idle: String,
    pub cores: Vec<usize>,
}

/// One device's cells: counters, queue state and the slow path's snapshot.
/// Created when the device starts; holding it keeps the last values
/// readable after the device stopped.
pub struct DeviceSource {
    pub layout: Layout,
    pub info: DeviceInfo,
    pub pairs: Vec<Arc<PairCell>>,
    pub slow: Arc<SlowPathCounters>,
    pub control: Arc<ControlCell>,
    pub ports: Vec<Option<Arc<dyn PortStats>>>,
    pub started: Instant,
    /// Set once the device was stopped and destroyed.
    pub stopped: AtomicBool,
}

impl DeviceSource {
    pub fn name(&self) -> &str {
        &self.layout.name
    }
}

struct Entry {
    source: Arc<DeviceSource>,
    /// How the device's port is described (`loopback`, `patch <-> vn1`, ...).
    port: String,
}

/// The devices of this process, for the stats socket and `/metrics`.
pub struct Registry {
    devices: Mutex<Vec<Entry>>,
    /// `run`, `pktgen`, `latency`.
    command: String,
    /// Instance name (the socket's NAME).
    instance: String,
    config: Mutex<Option<String>>,
    state: Mutex<String>,
    started: Instant,
}

impl Registry {
    pub fn new(command: &str, instance: &str) -> Arc<Registry> {
        Arc::new(Registry {
            devices: Mutex::new(Vec::new()),
            command: command.into(),
            instance: instance.into(),
            config: Mutex::new(None),
            state: Mutex::new("starting".into()),
            started: Instant::now(),
        })
    }

    pub fn add(&self, source: Arc<DeviceSource>, port: &str) {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.retain(|e| e.source.name() != source.name());
        d.push(Entry { source, port: port.into() });
    }

    pub fn remove(&self, name: &str) {
        self.devices.lock().unwrap_or_else(|p| p.into_inner()).retain(|e| e.source.name() != name);
    }

    /// `starting`, `running`, `reloading`, `finished` (pktgen after its
    /// traffic), `stopping`.
    pub fn set_state(&self, s: &str) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s.into();
    }

    pub fn set_config(&self, path: Option<String>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = path;
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    pub fn device_names(&self) -> Vec<String> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|e| e.source.name().to_string()).collect()
    }

    /// The sources, for the watchdog.
    pub fn sources(&self) -> Vec<Arc<DeviceSource>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|e| e.source.clone()).collect()
    }

    /// One sample of every device (or those named in `only`).
    pub fn sample(&self, only: &[String]) -> Sample {
        // Copy the list out so no lock is held while reading counters.
        let entries: Vec<(Arc<DeviceSource>, String)> = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| only.is_empty() || only.iter().any(|n| n == e.source.name()))
            .map(|e| (e.source.clone(), e.port.clone()))
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Sample {
            version: sample::SCHEMA_VERSION,
            time_ms: now.as_millis() as u64,
            uptime_ns: self.started.elapsed().as_nanos() as u64,
            process: sample::ProcessInfo {
                pid: std::process::id(),
                command: self.command.clone(),
                instance: self.instance.clone(),
                state: self.state.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                config: self.config.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            devices: entries.iter().map(|(s, port)| sample::device(s, port)).collect(),
        }
    }

    /// Operator announce (stats socket `announce`): ask each device named in
    /// `only` (all when empty) to set VIRTIO_NET_S_ANNOUNCE. A device whose
    /// driver is not bound or did not negotiate STATUS and GUEST_ANNOUNCE
    /// cannot: named, that is an error and nothing is asked of any device;
    /// not named, it is skipped. Returns the devices asked.
    pub fn announce(&self, only: &[String]) -> Result<Vec<String>, String> {
        use crate::net::features as f;
        let entries: Vec<Arc<DeviceSource>> = self
            .devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| only.is_empty() || only.iter().any(|n| n == e.source.name()))
            .map(|e| e.source.clone())
            .collect();
        let mut able = Vec::new();
        let mut unable = Vec::new();
        for src in entries {
            let c = src.control.load();
            let bound = c.status & crate::uapi::virtio::status::DRIVER_OK != 0;
            let negotiated = c.features & (f::STATUS | f::GUEST_ANNOUNCE) == f::STATUS | f::GUEST_ANNOUNCE;
            if bound && negotiated && !src.stopped.load(Ordering::Relaxed) {
                able.push(src);
            } else {
                let why =
                    if !bound { "no driver bound" } else { "the driver did not negotiate STATUS and GUEST_ANNOUNCE" };
                unable.push(format!("{}: {why}", src.name()));
            }
        }
        if (!only.is_empty() && !unable.is_empty()) || able.is_empty() {
            if unable.is_empty() {
                return Err("no devices".into());
            }
            return Err(format!("cannot announce: {}", unable.join("; ")));
        }
        for s in &able {
            s.control.request_announce();
        }
        Ok(able.iter().map(|s| s.name().to_string()).collect())
    }

    /// Whether the process was marked stopped for `name` (for tests and logs).
    pub fn is_stopped(&self, name: &str) -> Option<bool> {
        self.devices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|e| e.source.name() == name)
            .map(|e| e.source.stopped.load(Ordering::Relaxed))
    }
}
