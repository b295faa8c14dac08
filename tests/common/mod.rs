//! Shared setup for the dataplane integration tests: a device on the
//! embedded kernel model with loopback ports, driven by the bundled
//! virtio-net driver, plus bounded traffic helpers with integrity checks
//! and a log capture so a test can tell which validation rule fired.

#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::bench::frame::{self, Check};
use vduse_net::dataplane::device::DeviceStats;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy, NetDevice, RunningDevice};
use vduse_net::driver::net::{NetDriver, NetDriverConfig, QueuePair};
use vduse_net::driver::queue::DriverRing;
use vduse_net::driver::DriverTransport;
use vduse_net::net::features;
use vduse_net::uapi::virtio::{status, VringDesc};
use vduse_net::vduse::model::{KernelModel, ModelConfig, ModelDriver};
pub use vduse_net::virtq::RingFormat;

/// The device's MAC; test frames carry it as source, so the MAC-swapping
/// loopback returns them addressed to the device.
pub const DEV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination of test frames on the way out (source after the swap).
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub fn device_options(name: &str, pairs: u16) -> DeviceOptions {
    DeviceOptions {
        name: name.into(),
        queue_pairs: pairs,
        mac: DEV_MAC,
        // Small spins: two cores are shared by every test thread.
        idle: IdlePolicy::Adaptive { spins: 256 },
        ..DeviceOptions::default()
    }
}

/// [`device_options`] with the default offer changed by name, as
/// `--features LIST` does (e.g. "+indirect_desc").
pub fn device_offering(name: &str, pairs: u16, list: &str) -> DeviceOptions {
    let mut o = device_options(name, pairs);
    o.features = vduse_net::net::features::select(o.features, list).expect("feature list");
    o
}

pub fn driver_config() -> NetDriverConfig {
    NetDriverConfig { ring_size: 64, ctrl_timeout: Duration::from_secs(2), ..NetDriverConfig::default() }
}

/// [`device_options`] offering packed rings when `fmt` is packed (they are
/// not in the default offer).
pub fn device_options_fmt(name: &str, pairs: u16, fmt: RingFormat) -> DeviceOptions {
    offering_fmt(device_options(name, pairs), fmt)
}

/// `opts` with packed rings added by name, as `--features +ring_packed`
/// does, when `fmt` is packed.
pub fn offering_fmt(mut opts: DeviceOptions, fmt: RingFormat) -> DeviceOptions {
    if fmt == RingFormat::Packed {
        opts.features = features::select(opts.features, "+ring_packed").expect("ring_packed by name");
    }
    opts
}

/// [`driver_config`] asking for packed rings when `fmt` is packed.
pub fn driver_config_fmt(fmt: RingFormat) -> NetDriverConfig {
    let mut c = driver_config();
    if fmt == RingFormat::Packed {
        c.features |= features::RING_PACKED;
    }
    c
}

/// `opts` with VIRTIO_F_IN_ORDER added by name (`--features +in_order`)
/// when `in_order`.
pub fn offering_in_order(mut opts: DeviceOptions, in_order: bool) -> DeviceOptions {
    if in_order {
        opts.features = features::select(opts.features, "+in_order").expect("in_order by name");
    }
    opts
}

/// [`driver_config_fmt`] asking for IN_ORDER too when `in_order`.
pub fn driver_config_in_order(fmt: RingFormat, in_order: bool) -> NetDriverConfig {
    let mut c = driver_config_fmt(fmt);
    if in_order {
        c.features |= features::IN_ORDER;
    }
    c
}

/// Run the test body `$name(fmt: RingFormat)` once per ring format, as the
/// tests `split::$name` and `packed::$name`.
#[macro_export]
macro_rules! both_formats {
    ($($name:ident),* $(,)?) => {
        mod split {
            $( #[test] fn $name() { super::$name(vduse_net::virtq::RingFormat::Split) } )*
        }
        mod packed {
            $( #[test] fn $name() { super::$name(vduse_net::virtq::RingFormat::Packed) } )*
        }
    };
}

/// A running device on its own model kernel, attached to vhost-vdpa.
pub struct Rig {
    pub model: Arc<KernelModel>,
    pub running: Option<RunningDevice>,
    pub t: Arc<ModelDriver>,
    pub name: String,
    /// The ring format the rig offers (split unless made with `new_fmt`).
    pub fmt: RingFormat,
}

impl Rig {
    /// `pairs` queue pairs, patched 7.3 kernel (control queue, MQ), loopback
    /// ports with MAC swap.
    pub fn new(name: &str, pairs: u16) -> Rig {
        Self::with(device_options(name, pairs), ModelConfig::patched_7_3())
    }

    /// Like [`Rig::new`], offering packed rings when `fmt` is packed.
    pub fn new_fmt(name: &str, pairs: u16, fmt: RingFormat) -> Rig {
        Self::with_fmt(device_options(name, pairs), ModelConfig::patched_7_3(), fmt)
    }

    /// Like [`Rig::with`], offering packed rings too when `fmt` is packed.
    pub fn with_fmt(opts: DeviceOptions, cfg: ModelConfig, fmt: RingFormat) -> Rig {
        Rig { fmt, ..Self::with(offering_fmt(opts, fmt), cfg) }
    }

    pub fn with(opts: DeviceOptions, cfg: ModelConfig) -> Rig {
        let pairs = opts.queue_pairs;
        let ports: Vec<Box<dyn Port>> =
            (0..pairs).map(|_| Box::new(Loopback::new(256, true)) as Box<dyn Port>).collect();
        Self::with_ports(opts, cfg, ports)
    }

    /// Like [`Rig::with`], with the caller's ports (one per pair).
    pub fn with_ports(opts: DeviceOptions, cfg: ModelConfig, ports: Vec<Box<dyn Port>>) -> Rig {
        let model = KernelModel::new(cfg.with_timeout(Duration::from_secs(5)));
        let name = opts.name.clone();
        let dev = NetDevice::create(model.control(), opts).expect("create device");
        let running = dev.start(ports).expect("start device");
        let t = model.attach_vhost_vdpa(&name).expect("attach vhost-vdpa");
        let fmt = RingFormat::Split;
        Rig { model, running: Some(running), t, name, fmt }
    }

    pub fn transport(&self) -> Arc<dyn DriverTransport> {
        self.t.clone()
    }

    /// Probe with `cfg`; on a packed rig, a driver asking for packed rings
    /// must have them (so a packed test cannot pass on split rings).
    pub fn probe(&self, cfg: NetDriverConfig) -> NetDriver {
        let wants_packed = cfg.features & features::RING_PACKED != 0;
        let d = NetDriver::probe(self.transport(), cfg).expect("probe");
        let got = RingFormat::of_features(d.features());
        if self.fmt == RingFormat::Packed && wants_packed {
            assert_eq!(got, RingFormat::Packed, "packed rings negotiated");
        }
        if !wants_packed {
            assert_eq!(got, RingFormat::Split);
        }
        d
    }

    pub fn status(&self) -> u8 {
        self.t.status().expect("status")
    }

    pub fn needs_reset(&self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    pub fn stats(&self) -> DeviceStats {
        self.running.as_ref().expect("running").stats()
    }

    pub fn queue_errors(&self, pair: usize) -> u64 {
        self.stats().pairs[pair].queue_errors
    }

    /// Wait (bounded) until `pair` counted `n` queue errors.
    pub fn wait_queue_errors(&self, pair: usize, n: u64) -> bool {
        wait_for(Duration::from_secs(3), || self.queue_errors(pair) >= n)
    }

    /// Detach the driver face and stop the device; the device threads must
    /// still be alive (nothing panicked) until then.
    pub fn finish(mut self) -> DeviceStats {
        let running = self.running.take().expect("running");
        assert!(!running.is_finished(), "device threads ended on their own");
        self.model.detach(&self.name).expect("detach");
        running.stop().expect("stop")
    }
}

/// Poll `f` every millisecond until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One pair's numbered stream: frames leave with consecutive sequence
/// numbers and must come back in order, intact.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    pub pair: u16,
    pub sizes: Vec<usize>,
    pub next_tx: u64,
    pub next_rx: u64,
    pub rx: u64,
    pub lost: u64,
    pub corrupt: u64,
    pub dup_or_reordered: u64,
    pub wrong_pair: u64,
    /// Frames whose payload contains [`Flow::forbidden`].
    pub forbidden_seen: u64,
    pub forbidden: Option<Vec<u8>>,
}

impl Flow {
    pub fn new(pair: u16) -> Flow {
        Flow { pair, sizes: vec![64, 570, 1518, 100, 1000], ..Default::default() }
    }

    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.corrupt == 0
            && self.dup_or_reordered == 0
            && self.wrong_pair == 0
            && self.forbidden_seen == 0
    }

    pub fn in_flight(&self) -> u64 {
        self.next_tx - self.next_rx
    }

    fn check(&mut self, f: &[u8]) {
        if let Some(pat) = &self.forbidden {
            if f.windows(pat.len()).any(|w| w == &pat[..]) {
                self.forbidden_seen += 1;
            }
        }
        match frame::check(f) {
            Check::Ok { pair, .. } if pair != self.pair => self.wrong_pair += 1,
            Check::Ok { seq, .. } if seq == self.next_rx => {
                self.next_rx += 1;
                self.rx += 1;
            }
            Check::Ok { seq, .. } if seq > self.next_rx => {
                self.lost += seq - self.next_rx;
                self.next_rx = seq + 1;
                self.rx += 1;
            }
            Check::Ok { .. } => self.dup_or_reordered += 1,
            Check::Corrupt => self.corrupt += 1,
        }
        // Frames addressed back to us after the MAC swap.
        if f.len() >= 12 && (f[0..6] != DEV_MAC || f[6..12] != PEER_MAC) {
            self.corrupt += 1;
        }
    }

    /// Send up to `max` frames (fewer when the ring is full).
    pub fn send(&mut self, q: &mut QueuePair, max: usize) -> usize {
        let (pair, sizes) = (self.pair, self.sizes.clone());
        let mut seq = self.next_tx;
        let n = q.tx_burst(
            &mut |_, buf| {
                let len = sizes[(seq % sizes.len() as u64) as usize];
                let n = frame::build(buf, len, PEER_MAC, DEV_MAC, pair, seq);
                seq += 1;
                n
            },
            max,
        );
        self.next_tx += n as u64;
        n
    }

    /// Take what arrived; returns frames seen.
    pub fn receive(&mut self, q: &mut QueuePair) -> usize {
        q.post_rx();
        let mut seen = Vec::new();
        let n = q.rx_burst(&mut |f| seen.push(f.to_vec()), 64);
        for f in &seen {
            self.check(f);
        }
        n
    }

    /// Send `n` more frames and wait for all of them, within `timeout`.
    /// Returns whether everything came back.
    pub fn exchange(&mut self, q: &mut QueuePair, n: u64, timeout: Duration) -> bool {
        let target = self.next_tx + n;
        let end = Instant::now() + timeout;
        while self.next_rx < target {
            let mut progress = 0;
            if self.next_tx < target {
                progress += self.send(q, (target - self.next_tx).min(32) as usize);
            }
            progress += self.receive(q);
            if Instant::now() > end {
                return false;
            }
            if progress == 0 {
                std::thread::yield_now();
            }
        }
        true
    }

    /// Receive until everything sent came back (or `timeout`), sending nothing.
    pub fn drain(&mut self, q: &mut QueuePair, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.next_rx < self.next_tx {
            if self.receive(q) == 0 {
                if Instant::now() > end {
                    return false;
                }
                std::thread::yield_now();
            }
        }
        q.reclaim_tx();
        true
    }

    /// Receive for `dur`, expecting nothing new; returns frames seen.
    pub fn expect_silence(&mut self, q: &mut QueuePair, dur: Duration) -> usize {
        let end = Instant::now() + dur;
        let mut n = 0;
        while Instant::now() < end {
            n += self.receive(q);
            std::thread::sleep(Duration::from_millis(1));
        }
        n
    }
}

// ---- log capture ----

struct Capture;

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
static SERIAL: Mutex<()> = Mutex::new(());

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}", r.level(), r.args());
            LOG.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Serialize the tests of one binary that read the captured log, and start
/// each with an empty log.
pub fn serial() -> MutexGuard<'static, ()> {
    let _ = log::set_logger(&CAPTURE).map(|_| log::set_max_level(log::LevelFilter::Warn));
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    LOG.lock().unwrap_or_else(|e| e.into_inner()).clear();
    g
}

/// Captured warnings and errors so far.
pub fn logged() -> Vec<String> {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Wait (bounded) for a log line containing `needle`.
pub fn wait_logged(needle: &str) -> bool {
    wait_for(Duration::from_secs(3), || logged().iter().any(|l| l.contains(needle)))
}

// ---- raw rings ----

/// A descriptor as it sits in memory (for indirect tables).
pub fn desc_bytes(d: VringDesc) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&d.addr.to_le_bytes());
    b[8..12].copy_from_slice(&d.len.to_le_bytes());
    b[12..14].copy_from_slice(&d.flags.to_le_bytes());
    b[14..16].copy_from_slice(&d.next.to_le_bytes());
    b
}

/// A packed descriptor as it sits in memory (addr, len, id, flags).
pub fn packed_desc_bytes(addr: u64, len: u32, id: u16, flags: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&id.to_le_bytes());
    b[14..16].copy_from_slice(&flags.to_le_bytes());
    b
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> VringDesc {
    VringDesc { addr, len, flags, next }
}

/// Reset the device and bring it up again by hand over the rings the
/// driver already laid out (as a VMM does after a reset), with
/// `desc_shift(vq)` added to each descriptor table address. Each queue
/// restarts where the driver has taken completions back
/// ([`DriverRing::restart_base`]), so RX buffers that were posted but not
/// used are offered again. The control queue's group keeps its ASID
/// (the kernel keeps group -> ASID across a reset). Returns the status
/// after DRIVER_OK.
pub fn reinit(d: &mut NetDriver, pairs: &mut [QueuePair], desc_shift: impl Fn(u32) -> u64) -> u8 {
    let t = d.transport().clone();
    t.set_status(0).expect("reset");
    // A reset puts every vq group back in address space 0 (vduse-net does so even on a
    // 7.3 kernel, which keeps its own table): move the control queue's group again, as
    // QEMU does at each start that isolates it.
    if let (Some(group), asid) = (d.cvq_group(), d.cvq_asid()) {
        if asid != 0 {
            t.set_group_asid(group, asid).expect("control queue group back to its ASID");
        }
    }
    let mut st = status::ACKNOWLEDGE;
    t.set_status(st).unwrap();
    st |= status::DRIVER;
    t.set_status(st).unwrap();
    t.set_features(d.features()).unwrap();
    st |= status::FEATURES_OK;
    t.set_status(st).unwrap();
    let setup = |vq: u32, q: &DriverRing| {
        t.set_vring_num(vq, q.size()).unwrap();
        t.set_vring_addr(vq, q.desc_iova() + desc_shift(vq), q.driver_area_iova(), q.device_area_iova()).unwrap();
        t.set_vring_base(vq, q.restart_base()).unwrap();
        t.set_vring_enable(vq, true).unwrap();
    };
    for p in pairs.iter_mut() {
        let (rx, tx) = (p.rx_vq(), p.tx_vq());
        setup(rx, p.raw_rx());
        setup(tx, p.raw_tx());
    }
    if let Some(vq) = d.cvq_index() {
        setup(vq, d.raw_cvq().unwrap());
    }
    t.set_status(st | status::DRIVER_OK).unwrap();
    t.status().unwrap()
}
