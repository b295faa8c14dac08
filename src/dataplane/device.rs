//! Creating a VDUSE virtio-net device and running it.
//!
//! Layout: pair i is vqs (2i, 2i+1) in vq group i; the control queue is the
//! last vq, alone in the last group, so a VMM can move it to its own ASID.
//! With API version 0 there are no groups and one address space.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::slowpath::{Persist, SlowPath};
use super::stats::{PairCell, PairStats, SlowPathCounters, SlowPathStats};
use super::IdlePolicy;
use crate::backend::link::{LinkStats, LinkStatsSource, LinkWatch};
use crate::backend::Port;
use crate::net::config::NetConfig;
use crate::net::features;
use crate::uapi::vduse::{VDUSE_API_VERSION_1, VDUSE_F_QUEUE_READY, VDUSE_F_SUSPEND};
use crate::uapi::virtio::VIRTIO_ID_NET;
use crate::vduse::{DeviceConfig, VduseControl, VduseDevice, VduseError};

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Vduse(#[from] VduseError),
    #[error("invalid option: {0}")]
    Options(String),
    #[error("cannot create eventfd: {0}")]
    EventFd(Errno),
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    #[error("slow-path thread panicked")]
    Panicked,
    #[error(transparent)]
    Reattach(#[from] ReattachError),
}

/// Why a device cannot be taken over from its state log.
#[derive(Debug, thiserror::Error)]
pub enum ReattachError {
    #[error("no state log for {name} in {dir} (a device without a log cannot be taken over)")]
    NoLog { name: String, dir: std::path::PathBuf },
    #[error("state log {0} holds no complete control record")]
    NoRecord(std::path::PathBuf),
    #[error(transparent)]
    Log(#[from] crate::persist::LogError),
    #[error("state log {path} is for device {found:?}")]
    OtherDevice { path: std::path::PathBuf, found: String },
    #[error("device {name}: created with VDUSE API {kernel}, the log says {logged}")]
    Api { name: String, kernel: u64, logged: u64 },
}

/// Default largest queue size (VDUSE_VQ_SETUP `max_size`). QEMU programs
/// 1024 on every queue, the control queue included, and falls back to
/// userspace virtio when the device's maximum is smaller; DPDK's virtio-user
/// asks for 256 by default. The kernel's virtio_vdpa makes every ring as
/// large as this maximum: 1024 keeps a virtio_vdpa netdev's RX buffers (and
/// their share of VDUSE's bounce buffer) moderate; README "Queue sizes".
pub const DEFAULT_RING_SIZE: u16 = 1024;
/// Largest split-ring size (virtio 1.3 §2.7). Nothing in the device scales
/// with the queue size, so any power of two up to this is accepted.
pub const MAX_RING_SIZE: u16 = 32768;

/// VDUSE's bounce buffer per device (sysfs `bounce_size`, 1 MiB..1 GiB), split
/// evenly over the address spaces under API 1.
const KERNEL_BOUNCE_DEFAULT: u64 = 64 << 20;
/// Bounce space one mapped buffer takes: the kernel bounces in 4 KiB pages.
const BOUNCE_PAGE: u64 = 4096;

/// A note when a virtio_vdpa netdev on this device could exhaust the bounce
/// buffer of its address space with RX buffers alone. virtio_vdpa makes each
/// ring as large as the device's maximum and virtio-net fills every RX ring
/// of the pairs it uses, one 4 KiB bounce page per buffer; once the region
/// is full every TX mapping fails with ENOMEM (seen on 7.3 with 32768).
pub fn bounce_note(pairs: u16, ring_size: u16, nas: u32, api: u64) -> Option<String> {
    let share =
        if api >= VDUSE_API_VERSION_1 { KERNEL_BOUNCE_DEFAULT / nas.max(1) as u64 } else { KERNEL_BOUNCE_DEFAULT };
    let rx = pairs as u64 * ring_size as u64 * BOUNCE_PAGE;
    (rx * 4 >= share * 3).then(|| {
        format!(
            "bound to virtio_vdpa, {pairs} pair(s) of {ring_size}-entry RX rings pin {} MiB of the {} MiB bounce buffer \
             of address space 0 (kernel default), and TX then fails with ENOMEM: raise \
             /sys/class/vduse/NAME/bounce_size before `vdpa dev add`, or lower --ring-size or --queues \
             (vhost-vdpa users such as QEMU do not use the bounce buffer)",
            rx >> 20,
            share >> 20
        )
    })
}

/// Ethernet header and one 802.1Q tag: what a frame carries beyond the MTU.
const ETH_OVERHEAD: usize = 14 + 4;

/// Largest MTU a port with [`crate::backend::SLOT_SIZE`]-byte slots
/// carries (loopback, patch, AF_PACKET, AF_XDP): MTU + Ethernet header + one
/// VLAN tag in one slot.
pub const SLOT_MTU: u16 = (crate::backend::SLOT_SIZE - ETH_OVERHEAD) as u16;

/// Largest MTU the device accepts (jumbo frames, issue 11). Whether the
/// ports carry it is checked at start ([`crate::backend::Port::reserve_frames`]):
/// a device never advertises an MTU whose frames its ports would drop.
pub const MAX_MTU: u16 = 9216;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    pub name: String,
    pub queue_pairs: u16,
    /// Largest queue size the device accepts (VQ_SETUP max_size).
    pub ring_size: u16,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Virtio features offered (before any refusal by the kernel).
    pub features: u64,
    /// Address spaces requested with API v1.
    pub nas: u32,
    /// Force an API version (default: 1 when the kernel offers it).
    pub api: Option<u64>,
    /// VDUSE features wanted (QUEUE_READY, SUSPEND), where offered.
    pub vduse_features: u64,
    pub burst: usize,
    pub idle: IdlePolicy,
    /// Cores for the poll threads, one per pair, reused round-robin.
    pub cores: Vec<usize>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            name: "vduse-net0".into(),
            queue_pairs: 1,
            ring_size: DEFAULT_RING_SIZE,
            mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            mtu: 1500,
            features: features::DEFAULT_OFFER,
            nas: 2,
            api: None,
            vduse_features: (1 << VDUSE_F_QUEUE_READY) | (1 << VDUSE_F_SUSPEND),
            burst: 32,
            idle: IdlePolicy::default(),
            cores: Vec::new(),
        }
    }
}

impl DeviceOptions {
    pub fn validate(&self) -> Result<(), DeviceError> {
        let bad = |m: String| Err(DeviceError::Options(m));
        if self.name.is_empty() || self.name.len() >= 256 || self.name.contains('/') {
            return bad(format!("device name {:?} must be 1..255 bytes without '/'", self.name));
        }
        if self.queue_pairs == 0 || self.queue_pairs > 256 {
            return bad(format!("--queues {} must be in 1..=256", self.queue_pairs));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size < 2 || self.ring_size > MAX_RING_SIZE {
            return bad(format!("--ring-size {} must be a power of two in 2..={MAX_RING_SIZE}", self.ring_size));
        }
        if self.burst == 0 || self.burst > 1024 {
            return bad(format!("--burst {} must be in 1..=1024", self.burst));
        }
        if self.nas == 0 || self.nas > 0xffff {
            return bad(format!("address spaces {} must be in 1..=65535", self.nas));
        }
        if self.mtu < 68 {
            return bad(format!("--mtu {} is below 68", self.mtu));
        }
        if self.mtu > MAX_MTU {
            return bad(format!("--mtu {} is above {MAX_MTU}, the largest jumbo frame MTU", self.mtu));
        }
        Ok(())
    }
}

/// What was actually set up, after negotiation with the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: String,
    pub api: u64,
    pub pairs: u16,
    pub has_cvq: bool,
    pub ngroups: u32,
    pub nas: u32,
    /// Features offered to the driver.
    pub features: u64,
    /// VDUSE features in effect (QUEUE_READY, SUSPEND).
    pub vduse_features: u64,
    /// Offered features the kernel refused, for the log.
    pub dropped_features: u64,
    /// Largest queue size each vq accepts (VQ_SETUP max_size).
    pub max_queue_size: u16,
}

impl Layout {
    pub fn vq_num(&self) -> u32 {
        2 * self.pairs as u32 + self.has_cvq as u32
    }
    pub fn cvq(&self) -> Option<u32> {
        self.has_cvq.then(|| 2 * self.pairs as u32)
    }
    /// The vq group of `vq` (0 for everything on API v0).
    pub fn group_of(&self, vq: u32) -> u32 {
        if self.api < VDUSE_API_VERSION_1 {
            0
        } else {
            vq / 2
        }
    }
    pub fn cvq_group(&self) -> Option<u32> {
        self.cvq().map(|v| self.group_of(v))
    }
}

/// A created, not yet running device.
pub struct NetDevice {
    control: Arc<dyn VduseControl>,
    device: Arc<dyn VduseDevice>,
    layout: Layout,
    opts: DeviceOptions,
    /// State log and, for a reattach, the record to resume from.
    persist: Persist,
}

impl NetDevice {
    /// Negotiate the API version, create the device (dropping the control
    /// queue if the kernel refuses it) and set up its vqs and groups.
    pub fn create(control: Arc<dyn VduseControl>, opts: DeviceOptions) -> Result<NetDevice, DeviceError> {
        let _log = crate::ops::log::scope(&opts.name);
        opts.validate()?;
        let offered_api = control.api_version()?;
        let api = match opts.api {
            Some(v) if v > offered_api => {
                return Err(DeviceError::Options(format!("--api {v}: this kernel supports up to {offered_api}")))
            }
            Some(v) => v,
            None => offered_api.min(VDUSE_API_VERSION_1),
        };
        control.set_api_version(api)?;
        let vduse_features = match control.vduse_features() {
            Ok(offered) => {
                let want = offered & opts.vduse_features;
                control.set_vduse_features(want)?;
                want
            }
            // Kernels before 7.3 have no VDUSE_GET_FEATURES; the control fd
            // answers unknown ioctls with EINVAL (ENOTTY elsewhere).
            Err(e) if e.errno() == Errno::ENOTTY || e.errno() == Errno::EINVAL => 0,
            Err(e) => return Err(e.into()),
        };
        let mut features = opts.features | features::VERSION_1 | features::ACCESS_PLATFORM;
        let mut dropped = 0;
        let config = |has_cvq: bool, features: u64| {
            let pairs = opts.queue_pairs;
            let vq_num = 2 * pairs as u32 + has_cvq as u32;
            let (ngroups, nas) = if api >= VDUSE_API_VERSION_1 { ((vq_num + 1) / 2, opts.nas) } else { (0, 0) };
            let cfg_pairs = if features & features::MQ != 0 { pairs } else { 1 };
            DeviceConfig {
                name: opts.name.clone(),
                vendor_id: 0,
                device_id: VIRTIO_ID_NET,
                features,
                vq_num,
                vq_align: 4096,
                ngroups,
                nas,
                config: crate::net::config::space(
                    &NetConfig::new(opts.mac, cfg_pairs, opts.mtu),
                    &crate::net::config::ConfigExt::DEFAULT,
                    features,
                ),
            }
        };
        let mut has_cvq = features & features::CTRL_VQ != 0;
        let mut cfg = config(has_cvq, features);
        if let Err(e) = control.create_device(&cfg) {
            if e.errno() == Errno::EINVAL && has_cvq {
                let without = features::without_ctrl_vq(features);
                dropped = features & !without;
                log::warn!(
                    "kernel refused the control queue at CREATE_DEV ({e}); retrying without it, dropped: {}",
                    features::describe(dropped)
                );
                features = without;
                has_cvq = false;
                cfg = config(has_cvq, features);
                control.create_device(&cfg)?;
            } else {
                return Err(e.into());
            }
        }
        let pairs = opts.queue_pairs;
        let layout = Layout {
            name: opts.name.clone(),
            api,
            pairs,
            has_cvq,
            ngroups: cfg.ngroups,
            nas: cfg.nas.max(1),
            features,
            vduse_features,
            dropped_features: dropped,
            max_queue_size: opts.ring_size,
        };
        let device = match control.open_device(&opts.name) {
            Ok(d) => d,
            Err(e) => {
                let _ = control.destroy_device(&opts.name);
                return Err(e.into());
            }
        };
        for vq in 0..layout.vq_num() {
            if let Err(e) = device.setup_vq(vq, opts.ring_size, layout.group_of(vq)) {
                drop(device);
                let _ = control.destroy_device(&opts.name);
                return Err(e.into());
            }
        }
        if let Some(note) = features::qemu_shadow_note(layout.features) {
            log::warn!("device {}: {note}", layout.name);
        }
        // Without MQ a driver uses one pair, however many the device has.
        let usable = if layout.features & features::MQ != 0 { layout.pairs } else { 1 };
        if let Some(note) = bounce_note(usable, opts.ring_size, layout.nas, layout.api) {
            log::warn!("device {}: {note}", layout.name);
        }
        log::info!(
            "device {}: API v{}, {} queue pair(s){}, {} vq groups, {} address spaces, vduse features {}, features {}",
            layout.name,
            layout.api,
            layout.pairs,
            if layout.has_cvq { " + control queue" } else { ", no control queue" },
            layout.ngroups,
            layout.nas,
            vduse_features_name(layout.vduse_features),
            features::describe(layout.features)
        );
        Ok(NetDevice { control, device, layout, opts, persist: Persist::default() })
    }

    /// [`NetDevice::create`], with a fresh state log in `dir` so a later
    /// process can take the device over. A log that cannot be made costs
    /// reconnect, not the device: a warning says so.
    pub fn create_logged(
        control: Arc<dyn VduseControl>,
        opts: DeviceOptions,
        dir: &std::path::Path,
    ) -> Result<NetDevice, DeviceError> {
        let mut dev = Self::create(control, opts)?;
        match crate::persist::StateLog::create(dir, &dev.layout.name, dev.layout.vq_num()) {
            Ok(log) => {
                log::info!("device {}: state log {}", dev.layout.name, log.path().display());
                dev.persist.log = Some(Arc::new(log));
            }
            Err(e) => log::warn!("device {}: {e}; a restarted process cannot take this device over", dev.layout.name),
        }
        Ok(dev)
    }

    /// Take over the existing device `opts.name` from its state log in
    /// `dir`: the layout comes from the log (the kernel fixed it at
    /// CREATE_DEV); `opts` gives the rest (ports, burst, idle, cores).
    pub fn reattach(
        control: Arc<dyn VduseControl>,
        mut opts: DeviceOptions,
        dir: &std::path::Path,
    ) -> Result<NetDevice, DeviceError> {
        let _log = crate::ops::log::scope(&opts.name);
        let name = opts.name.clone();
        let log = crate::persist::StateLog::open(dir, &name)
            .map_err(ReattachError::from)?
            .ok_or_else(|| ReattachError::NoLog { name: name.clone(), dir: dir.to_path_buf() })?;
        let rec = log.read_control().map_err(ReattachError::from)?;
        let rec = rec.ok_or_else(|| ReattachError::NoRecord(log.path().to_path_buf()))?;
        if rec.name != name {
            return Err(ReattachError::OtherDevice { path: log.path().to_path_buf(), found: rec.name }.into());
        }
        let device = control.open_device(&name)?;
        if device.api_version() != rec.api {
            return Err(ReattachError::Api { name, kernel: device.api_version(), logged: rec.api }.into());
        }
        let layout = Layout {
            name: name.clone(),
            api: rec.api,
            pairs: rec.pairs,
            has_cvq: rec.has_cvq,
            ngroups: rec.ngroups,
            nas: rec.nas,
            features: rec.offered,
            vduse_features: rec.vduse_features,
            dropped_features: 0,
            max_queue_size: rec.max_queue_size,
        };
        if opts.queue_pairs != rec.pairs || opts.mac != rec.mac || opts.mtu != rec.mtu {
            log::warn!(
                "device {name}: keeps the layout it was created with ({} pair(s), MAC {}, MTU {}); the options given                  differ and apply only to a new device",
                rec.pairs,
                crate::ops::sample::mac_string(&rec.mac),
                rec.mtu
            );
        }
        (opts.queue_pairs, opts.mac, opts.mtu, opts.ring_size) = (rec.pairs, rec.mac, rec.mtu, rec.max_queue_size);
        log::info!(
            "device {name}: reattaching from {} (driver status {:#x}, features {})",
            log.path().display(),
            rec.status,
            features::describe(rec.negotiated)
        );
        Ok(NetDevice {
            control,
            device,
            layout,
            opts,
            persist: Persist { log: Some(Arc::new(log)), restore: Some(rec) },
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn device(&self) -> &Arc<dyn VduseDevice> {
        &self.device
    }

    /// Start the slow-path thread (which starts one poll thread per pair).
    /// `ports[i]` serves pair i.
    pub fn start(self, ports: Vec<Box<dyn Port>>) -> Result<RunningDevice, DeviceError> {
        self.start_with_link(ports, None)
    }

    /// As `start`, with the device's link state following `link` (ports on
    /// a host interface): its changes set VIRTIO_NET_S_LINK_UP and raise a
    /// config interrupt.
    pub fn start_with_link(
        self,
        ports: Vec<Box<dyn Port>>,
        link: Option<Box<dyn LinkWatch>>,
    ) -> Result<RunningDevice, DeviceError> {
        if ports.len() != self.layout.pairs as usize {
            return Err(DeviceError::Options(format!("{} ports for {} queue pairs", ports.len(), self.layout.pairs)));
        }
        let mut ports = ports;
        let frame = self.opts.mtu as usize + ETH_OVERHEAD;
        if let Some(i) = ports.iter_mut().position(|p| !p.reserve_frames(frame)) {
            return Err(DeviceError::Options(format!(
                "--mtu {} needs {frame}-byte frames, more than port {i} carries (its slots hold {} bytes, an MTU \
                 of {SLOT_MTU}); jumbo frames need --backend tap",
                self.opts.mtu,
                crate::backend::SLOT_SIZE
            )));
        }
        let stop = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(DeviceError::EventFd)?,
        );
        let stopping = Arc::new(AtomicBool::new(false));
        let pair_stats: Vec<Arc<PairCell>> = (0..self.layout.pairs).map(|_| Arc::new(PairCell::default())).collect();
        let slow_stats = Arc::new(SlowPathCounters::default());
        let source = Arc::new(crate::ops::DeviceSource {
            layout: self.layout.clone(),
            info: crate::ops::source::DeviceInfo {
                mac: self.opts.mac,
                mtu: self.opts.mtu,
                ring_size: self.opts.ring_size,
                burst: self.opts.burst,
                idle: crate::ops::source::idle_name(self.opts.idle),
                cores: self.opts.cores.clone(),
            },
            pairs: pair_stats.clone(),
            slow: slow_stats.clone(),
            control: Arc::default(),
            ports: ports.iter().map(|p| p.stats()).collect(),
            started: std::time::Instant::now(),
            stopped: AtomicBool::new(false),
        });
        let link_stats = link.as_ref().map(|l| l.stats());
        let slow = SlowPath::new(
            self.device.clone(),
            self.layout.clone(),
            &self.opts,
            ports,
            pair_stats.clone(),
            slow_stats.clone(),
            stop.clone(),
            stopping.clone(),
            source.control.clone(),
            link,
            Persist { log: self.persist.log.clone(), restore: self.persist.restore },
        )?;
        let name = self.layout.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vduse-slow-{}", self.layout.name))
            .spawn(move || {
                crate::ops::log::set_device(&name);
                slow.run()
            })
            .map_err(DeviceError::Thread)?;
        Ok(RunningDevice {
            log_path: self.persist.log.as_ref().map(|l| l.path().to_path_buf()),
            control: self.control,
            device: Some(self.device),
            layout: self.layout,
            stop,
            stopping,
            thread: Some(thread),
            pair_stats,
            slow_stats,
            source,
            link_stats,
        })
    }
}

/// A device whose threads are running.
pub struct RunningDevice {
    /// The state log's file, removed with the device.
    log_path: Option<std::path::PathBuf>,
    control: Arc<dyn VduseControl>,
    device: Option<Arc<dyn VduseDevice>>,
    layout: Layout,
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pair_stats: Vec<Arc<PairCell>>,
    slow_stats: Arc<SlowPathCounters>,
    source: Arc<crate::ops::DeviceSource>,
    link_stats: Option<Arc<dyn LinkStatsSource>>,
}

/// Counters of a running device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceStats {
    pub pairs: Vec<PairStats>,
    pub slow_path: SlowPathStats,
    /// The link and the ports of a device on a host interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkStats>,
}

impl RunningDevice {
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// What the stats socket and `/metrics` read (stays readable after stop).
    pub fn stats_source(&self) -> Arc<crate::ops::DeviceSource> {
        self.source.clone()
    }

    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            pairs: self.pair_stats.iter().map(|p| p.snapshot()).collect(),
            slow_path: self.slow_stats.snapshot(),
            link: self.link_stats.as_ref().map(|l| l.link_stats()),
        }
    }

    /// Stop the threads, close and destroy the device.
    pub fn stop(mut self) -> Result<DeviceStats, DeviceError> {
        self.shutdown_threads()?;
        let stats = self.stats();
        self.device = None;
        self.control.destroy_device(&self.layout.name)?;
        self.remove_log();
        self.source.stopped.store(true, Ordering::Relaxed);
        Ok(stats)
    }

    /// Stop the threads and close the device, but leave it and its state
    /// log for the next process (`--keep-device`: upgrades). The driver
    /// keeps its device; control messages wait in the kernel meanwhile.
    pub fn keep(mut self) -> Result<DeviceStats, DeviceError> {
        self.shutdown_threads()?;
        let stats = self.stats();
        self.device = None;
        self.log_path = None;
        self.source.stopped.store(true, Ordering::Relaxed);
        log::info!("device {}: left to the next process (kept with its state log)", self.layout.name);
        Ok(stats)
    }

    /// Tests: the threads died at an injected crash point; wait for them
    /// (bounded) and leave device and log as a killed process would.
    #[cfg(test)]
    pub(crate) fn crashed(mut self, deadline: std::time::Instant) -> bool {
        let t = self.thread.take().expect("threads");
        while !t.is_finished() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = t.join();
        self.device = None;
        self.log_path = None;
        true
    }

    fn remove_log(&mut self) {
        if let Some(p) = self.log_path.take() {
            if let Err(e) = std::fs::remove_file(&p) {
                log::warn!("removing state log {}: {e}", p.display());
            }
        }
    }

    fn shutdown_threads(&mut self) -> Result<(), DeviceError> {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| DeviceError::Panicked)?;
        }
        Ok(())
    }

    /// Whether the device's threads have ended (by `stop` or on their own).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for RunningDevice {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.shutdown_threads();
            self.device = None;
            if self.control.destroy_device(&self.layout.name).is_ok() {
                self.remove_log();
            }
        }
    }
}

/// `QUEUE_READY|SUSPEND`, or `none`.
pub fn vduse_features_name(f: u64) -> String {
    let mut v = Vec::new();
    if f & (1 << VDUSE_F_QUEUE_READY) != 0 {
        v.push("QUEUE_READY");
    }
    if f & (1 << VDUSE_F_SUSPEND) != 0 {
        v.push("SUSPEND");
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jumbo MTUs up to 9216 are accepted here; whether the ports carry
    /// them is checked at start (tests/mtu_limit.rs).
    #[test]
    fn mtus_above_the_jumbo_limit_are_refused() {
        let with = |mtu| DeviceOptions { mtu, ..DeviceOptions::default() };
        assert_eq!(SLOT_MTU as usize, crate::backend::SLOT_SIZE - 18);
        for mtu in [1500, SLOT_MTU, 9000, MAX_MTU] {
            with(mtu).validate().unwrap();
        }
        for mtu in [MAX_MTU + 1, u16::MAX] {
            let e = with(mtu).validate().unwrap_err().to_string();
            assert!(e.contains(&format!("--mtu {mtu} is above {MAX_MTU}")), "{e}");
        }
        assert!(with(67).validate().is_err());
    }

    /// The arithmetic behind the warning, against what 7.3 showed: two
    /// devices, one pair each, 32768-entry rings, API 1 with 2 address
    /// spaces: TX failed with ENOMEM; 4096 and 1024 worked.
    #[test]
    fn the_bounce_note_fires_where_the_kernel_ran_out() {
        assert!(bounce_note(1, 32768, 2, 1).is_some_and(|n| n.contains("128 MiB of the 32 MiB")));
        assert!(bounce_note(1, 4096, 2, 1).is_none());
        assert!(bounce_note(1, DEFAULT_RING_SIZE, 2, 1).is_none());
        assert!(bounce_note(6, DEFAULT_RING_SIZE, 2, 1).is_some(), "24 of 32 MiB leaves too little for TX");
        assert!(bounce_note(4, DEFAULT_RING_SIZE, 2, 1).is_none());
        // API 0: the whole 64 MiB in one address space.
        assert!(bounce_note(8, DEFAULT_RING_SIZE, 2, 0).is_none());
    }
}
