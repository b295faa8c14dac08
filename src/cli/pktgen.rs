//! `vduse-net pktgen`: the bundled traffic generator. By default a device on
//! the embedded kernel model, with the port the mode needs, driven by the
//! bundled virtio driver; with `--vhost-vdpa` only the driver side, on a
//! device served elsewhere.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use vduse_net::bench::checks;
use vduse_net::bench::netgen::{self, NetDevice, NetGenOptions, NetReport};
use vduse_net::bench::pktgen::{self, CheckMode, Control, GenOptions, Mode, PktgenReport, QueueReport, Sizes};
use vduse_net::bench::testbed::Testbed;
use vduse_net::bench::tso::{self, TsoOptions};
use vduse_net::driver::net::{EnableOrder, NetDriverConfig};
use vduse_net::net::features;
use vduse_net::vduse::model::ModelConfig;
use vduse_net::virtq::RingFormat;

use super::run::{Backend, DeviceArgs, HostArgs};
use super::{parse_cores, CliError, CliResult, Idle};

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

impl KernelKind {
    pub fn config(self) -> ModelConfig {
        match self {
            KernelKind::Patched73 => ModelConfig::patched_7_3(),
            KernelKind::K73 => ModelConfig::kernel_7_3(),
            KernelKind::K72 => ModelConfig::kernel_7_2(),
            KernelKind::K612 => ModelConfig::kernel_6_12(),
        }
        .with_timeout(Duration::from_secs(5))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The device reflects every frame with MACs swapped.
    Loopback,
    /// Driver TX only; the device consumes and drops.
    Txonly,
    /// Driver RX only; the device generates numbered frames.
    Rxonly,
    /// As loopback, but the driver side forwards what it receives back out
    /// of the same buffer (testpmd's io forwarding: zero copy, payload not
    /// written), with half the ring's worth of frames going round.
    Fwd,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Loopback => Mode::Loopback,
            ModeArg::Txonly => Mode::TxOnly,
            ModeArg::Rxonly => Mode::RxOnly,
            ModeArg::Fwd => Mode::Fwd,
        }
    }
}

/// When the bundled driver enables its queues relative to DRIVER_OK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    /// Every queue before DRIVER_OK (the kernel's virtio_vdpa).
    VirtioVdpa,
    /// After DRIVER_OK: the control queue, MAC_ADDR_SET and VQ_PAIRS_SET answered, then the data queues (QEMU).
    Qemu,
    /// Pair 0 and the control queue before DRIVER_OK, the other pairs after VQ_PAIRS_SET (DPDK's virtio-user).
    VirtioUser,
}

impl From<OrderArg> for EnableOrder {
    fn from(o: OrderArg) -> EnableOrder {
        match o {
            OrderArg::VirtioVdpa => EnableOrder::VirtioVdpa,
            OrderArg::Qemu => EnableOrder::Qemu,
            OrderArg::VirtioUser => EnableOrder::VirtioUser,
        }
    }
}

/// Options shared by `pktgen` and `latency`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Frame size(s), Ethernet header included: 64, a list like 64,1518, or imix (7:4:1 of 64/570/1518).
    #[arg(long, default_value = "64,570,1518")]
    pub size: String,
    /// Measured seconds (after the warm-up).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of traffic before measuring (checked, not counted in the rates).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Cores for the generator threads (one per pair, round-robin), e.g. 1 or 2-3.
    #[arg(long = "gen-cores", value_parser = parse_cores)]
    pub gen_cores: Option<::std::vec::Vec<usize>>,
    /// Which kernel the embedded model plays.
    #[arg(long, value_enum, default_value_t = KernelKind::Patched73)]
    pub kernel_model: KernelKind,
    /// Drive /dev/vhost-vdpa-N instead of the model (the device runs in another process, e.g. `vduse-net run`).
    #[arg(long, value_name = "PATH")]
    pub vhost_vdpa: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// When the driver enables its queues relative to DRIVER_OK.
    #[arg(long, value_enum, default_value_t = OrderArg::VirtioVdpa)]
    pub enable_order: OrderArg,
    /// Negotiate VIRTIO_NET_F_MRG_RXBUF and post RX buffers of BYTES bytes
    /// (header included), so larger frames span several buffers.
    #[arg(long = "mrg-rxbuf", value_name = "BYTES")]
    pub mrg_rxbuf: Option<usize>,
    /// Set by `pktgen --tso`: the driver negotiates CSUM and HOST_TSO4 and
    /// its buffers take frames of this size.
    #[arg(skip)]
    pub tso_size: Option<usize>,
    #[command(flatten)]
    pub dev: DeviceArgs,
    #[command(flatten)]
    pub stats: super::stats::StatsArgs,
}

impl BenchArgs {
    pub fn sizes(&self) -> Result<Sizes, CliError> {
        Sizes::parse(&self.size).map_err(CliError)
    }

    pub fn duration(&self) -> Result<Option<Duration>, CliError> {
        match self.duration {
            None => Ok(None),
            Some(d) if d > 0.0 && d < 86400.0 => Ok(Some(Duration::from_secs_f64(d))),
            Some(d) => Err(CliError(format!("--duration {d} must be in (0, 86400) seconds"))),
        }
    }

    pub fn warmup(&self) -> Result<Duration, CliError> {
        if self.warmup >= 0.0 && self.warmup < 3600.0 {
            Ok(Duration::from_secs_f64(self.warmup))
        } else {
            Err(CliError(format!("--warmup {} must be in [0, 3600) seconds", self.warmup)))
        }
    }

    /// The device (on the model, `port(i)` for pair i) or the vhost-vdpa driver.
    pub fn testbed(
        &self,
        name: &str,
        port: &mut dyn FnMut(u16) -> Box<dyn vduse_net::backend::Port>,
    ) -> Result<Testbed, CliError> {
        let opts = self.dev.options(name, vduse_net::bench::testbed::DEVICE_MAC)?;
        // One switch for both ends: the driver asks for packed rings exactly
        // when the offer holds RING_PACKED (`--features +ring_packed` or its
        // shorthand `--ring packed`).
        let packed = opts.features & features::RING_PACKED != 0;
        let mut dcfg = NetDriverConfig {
            ring_size: self.dev.ring_size,
            pairs: Some(self.dev.queues),
            enable_order: self.enable_order.into(),
            ..NetDriverConfig::default()
        };
        if packed {
            dcfg.features |= features::RING_PACKED;
        }
        // Likewise IN_ORDER (`--features +in_order`): the driver side takes
        // a used entry that returns a run of chains.
        dcfg.features |= opts.features & features::IN_ORDER;
        if let Some(n) = self.mrg_rxbuf {
            if !(64..=65536).contains(&n) {
                return Err(CliError(format!("--mrg-rxbuf {n} must be in 64..=65536 bytes")));
            }
            dcfg.features |= features::MRG_RXBUF;
        }
        if let Some(size) = self.tso_size {
            dcfg.features |= features::CSUM | features::HOST_TSO4;
            dcfg.buf_size = dcfg.buf_size.max((size + vduse_net::driver::net::NET_HDR_LEN).next_multiple_of(64));
        }
        let tb = match &self.vhost_vdpa {
            Some(path) => Testbed::vhost_vdpa(path, dcfg),
            None => Testbed::model(self.kernel_model.config(), opts, port, dcfg),
        };
        let tb = tb.map_err(|e| CliError(format!("setting up the device: {e}")))?;
        let got = self.ring_format(&tb);
        if packed && got != Some(RingFormat::Packed) {
            return Err(CliError(
                "packed rings asked for (--ring packed / +ring_packed), but the device does not offer \
                 VIRTIO_F_RING_PACKED (serve it with `vduse-net run --ring packed`)"
                    .into(),
            ));
        }
        Ok(tb)
    }

    /// The ring layout the driver negotiated.
    pub fn ring_format(&self, tb: &Testbed) -> Option<RingFormat> {
        tb.driver().map(|d| RingFormat::of_features(d.features()))
    }

    /// The stats socket (and `/metrics`) for the model device, when there is one.
    pub fn serve_stats(
        &self,
        tb: &Testbed,
        command: &str,
    ) -> Result<(Arc<vduse_net::ops::Registry>, super::stats::OpsServers), CliError> {
        let name = format!("{command}0");
        let reg = vduse_net::ops::Registry::new(command, &name);
        let Some(src) = tb.stats_source() else {
            return Ok((reg, super::stats::OpsServers::default()));
        };
        reg.add(src, &format!("{command} model device"));
        let servers = self.stats.start(&reg, &name)?;
        reg.set_state("running");
        Ok((reg, servers))
    }
}

#[derive(Args)]
pub struct PktgenArgs {
    /// loopback (MAC-swap reflector), txonly (device drops) or rxonly (device generates).
    #[arg(long, value_enum, default_value_t = ModeArg::Loopback)]
    mode: ModeArg,
    /// Frames per queue pair (default 200000 when --duration is not given); with both, whichever comes first.
    #[arg(long)]
    frames: Option<u64>,
    /// Total frames per second over all pairs (token bucket per pair); 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// After traffic: map a canary page only in ASID 1, point a TX descriptor of
    /// pair 0 at it, and report whether the device refused it ("foreign_iova").
    #[arg(long)]
    foreign_iova_check: bool,
    /// After traffic: suspend the device and compare GET_VRING_BASE of every data
    /// vq with the driver's view ("suspend").
    #[arg(long)]
    suspend_check: bool,
    /// Ports on a host interface (tap, af-packet, af-xdp; needs --iface): frames go
    /// through the real kernel, which sends them back (e.g. a tc reflector)
    /// or, with --iface a,b, on to the next device (one device per interface).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    #[command(flatten)]
    host: HostArgs,
    /// With --backend: the link is expected to go down and come back during
    /// the run (the interface deleted and made again); loss is then reported
    /// but not a failure; the run fails unless both changes were seen and
    /// frames came back after the link did.
    #[arg(long)]
    link_flap_check: bool,
    /// With --backend: drive the ports directly, without a device (no
    /// virtio, no poll thread): the same frames and checks, so the rate is
    /// the ceiling of the port and its kernel path.
    #[arg(long)]
    port_only: bool,
    /// With --backend: seconds to wait for the link to be up before sending.
    #[arg(long, default_value_t = 5.0)]
    link_wait: f64,
    /// After traffic, keep the device and its stats socket for up to SECS seconds
    /// (SIGINT/SIGTERM end the wait) so a reader sees the final counters.
    #[arg(long, value_name = "SECS")]
    linger: Option<f64>,
    /// Receive-side checks: full (header and payload of every frame, the
    /// default), seq (sequence numbers of every frame, payload of every
    /// 64th; for rate runs where the generator must not be the bottleneck)
    /// or sample (--mode fwd only: every 64th frame in full, the others not
    /// read, as testpmd's io forwarding reads none; loss is still counted
    /// exactly, order is not checked).
    #[arg(long, default_value = "full", value_name = "full|seq|sample")]
    check: String,
    /// Loopback: send TCP/IPv4 GSO frames of SIZE bytes (Ethernet header
    /// included; gso_size = the MSS of the device's MTU) so the device
    /// segments them in software; every segment returned is checked
    /// (checksums, lengths, offsets, payload). Replaces --size.
    #[arg(long, value_name = "SIZE")]
    tso: Option<usize>,
    /// The device's daemon is expected to restart during the run (killed and
    /// started again, or upgraded; `vduse-net run` takes the device over):
    /// while frames are still to send, wait up to SECS without progress
    /// instead of 2 s. Frames lost or seen twice at the cut (TX chains the old
    /// process had taken are sent again) are reported, not failures, up to
    /// two rings' worth per pair; integrity errors and driver errors (a used
    /// entry for an id not in flight: published twice) still fail the run,
    /// and so does a pair that received nothing after its longest pause.
    #[arg(long, value_name = "SECS")]
    ride_through: Option<f64>,
    #[command(flatten)]
    bench: BenchArgs,
}

/// SIGINT/SIGTERM end the run early (with the usual report).
pub fn stop_flag() -> Result<Arc<AtomicBool>, CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    Ok(stop)
}

pub fn run(mut a: PktgenArgs) -> CliResult {
    if let Some(size) = a.tso {
        tso::check_size(size).map_err(|e| CliError(e.to_string()))?;
        if a.backend.is_some() || a.mode != ModeArg::Loopback {
            return Err(CliError("--tso runs in --mode loopback on the model device or --vhost-vdpa only".into()));
        }
        a.bench.tso_size = Some(size);
    }
    let b = &a.bench;
    let sizes = b.sizes()?;
    let duration = b.duration()?;
    let warmup = b.warmup()?;
    if a.frames == Some(0) {
        return Err(CliError("--frames must be at least 1".into()));
    }
    if !(a.rate.is_finite() && a.rate >= 0.0) {
        return Err(CliError(format!("--rate {} must be a number of frames per second >= 0", a.rate)));
    }
    let check = CheckMode::parse(&a.check).map_err(CliError)?;
    if check == CheckMode::Sample && a.mode != ModeArg::Fwd {
        return Err(CliError(
            "--check sample needs --mode fwd (the only mode that counts loss without reading every frame)".into(),
        ));
    }
    if let Some(backend) = a.backend {
        return run_host(&a, backend, sizes, duration, warmup);
    }
    if a.link_flap_check || a.port_only || a.host.iface.is_some() {
        return Err(CliError(
            "--iface, --port-only and --link-flap-check need --backend tap, af-packet or af-xdp".into(),
        ));
    }
    let mode: Mode = a.mode.into();
    if b.vhost_vdpa.is_some() && mode != Mode::Loopback {
        return Err(CliError(
            "--vhost-vdpa drives a device served elsewhere: only --mode loopback (the device must reflect frames)"
                .into(),
        ));
    }
    let frames = match (a.frames, duration) {
        (None, None) => Some(200_000),
        (f, _) => f,
    };
    let pairs = b.dev.queues.max(1) as usize;
    let ride_through = match a.ride_through {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(CliError(format!("--ride-through {s} must be in (0, 3600] seconds"))),
    };
    let o = GenOptions {
        mode,
        sizes: sizes.clone(),
        burst: b.dev.burst,
        rate_pps: a.rate / pairs as f64,
        frames,
        duration,
        warmup,
        busy: b.dev.idle == Idle::Busy,
        stall: Duration::from_secs(2),
        ride_through,
        check,
        rx_buffer_len: b.mrg_rxbuf,
        tso: None,
    };
    let linger = match a.linger {
        None => None,
        Some(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(CliError(format!("--linger {s} must be in [0, 3600] seconds"))),
    };
    let tb = b.testbed("pktgen0", &mut |i| mode.port(i, &sizes))?;
    let ring = b.ring_format(&tb).unwrap_or_default();
    let in_order = tb.driver().is_some_and(|d| d.features() & features::IN_ORDER != 0);
    let o = match a.tso {
        None => o,
        Some(size) => {
            let d = tb.driver().ok_or_else(|| CliError("no driver".into()))?;
            let need = features::CSUM | features::HOST_TSO4;
            if d.features() & need != need {
                return Err(CliError(
                    "--tso: the device did not offer CSUM and HOST_TSO4 (serve it with `--features +csum,+host_tso4`)"
                        .into(),
                ));
            }
            let mtu = d.mtu().unwrap_or(1500);
            GenOptions { tso: Some(TsoOptions::new(size, mtu).map_err(|e| CliError(e.to_string()))?), ..o }
        }
    };
    let (reg, _servers) = b.serve_stats(&tb, "pktgen")?;
    let stop = stop_flag()?;
    let ctl = Arc::new(Control::new(pairs, stop.clone()));
    let mut tick = pktgen::progress_printer();
    let cores = b.gen_cores.clone().unwrap_or_default();
    let (fcheck, scheck) = (a.foreign_iova_check, a.suspend_check);
    let mut post = |tb: &mut Testbed, pairs: &mut [vduse_net::driver::net::QueuePair]| {
        let mut m = serde_json::Map::new();
        if fcheck {
            m.extend(checks::foreign_iova(tb, pairs)?);
        }
        if scheck {
            m.extend(checks::suspend(tb, pairs)?);
        }
        if let Some(d) = linger {
            reg.set_state("finished");
            let until = std::time::Instant::now() + d;
            while std::time::Instant::now() < until && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(m)
    };
    let post: Option<pktgen::PostCheck<'_>> = (fcheck || scheck || linger.is_some()).then_some(&mut post);
    let mut rep = pktgen::run_on(tb, &o, &cores, &ctl, &mut tick, post).map_err(|e| CliError(e.to_string()))?;
    rep.checks.insert("ring".into(), ring.name().into());
    // What the driver negotiated (not what was asked for).
    rep.checks.insert("in_order".into(), in_order.into());
    let ride = ride_through.map(|_| ride_through_verdict(&rep.queues, b.dev.ring_size as u64));
    if let Some((v, _)) = &ride {
        rep.checks.insert("ride_through".into(), v.clone());
    }
    if b.json {
        println!("{}", serde_json::to_string(&rep).map_err(|e| CliError(e.to_string()))?);
    } else {
        let what = a.tso.map_or_else(|| format!("sizes {}", b.size), |t| format!("TCP GSO frames of {t} bytes"));
        print_text(&rep, &what);
    }
    if let Some((_, verdict)) = ride {
        return verdict;
    }
    if rep.failed() {
        return Err(CliError(format!(
            "traffic check failed: lost {}, corrupt {}, dup/reordered {}, driver errors {}",
            rep.lost, rep.integrity_errors, rep.duplicates_or_reordered, rep.driver_errors
        )));
    }
    Ok(())
}

/// A run across a device restart (`--ride-through`): what the cut cost, and
/// whether the run passes. Loss and frames seen twice are bounded by what can
/// be in flight (a TX and an RX ring per pair); corruption and driver errors
/// (a used entry for an id not in flight) never pass, nor does a pair that
/// received nothing after its longest pause.
fn ride_through_verdict(queues: &[QueueReport], ring_size: u64) -> (serde_json::Value, CliResult) {
    let sum = |f: fn(&QueueReport) -> u64| queues.iter().map(f).sum::<u64>();
    let (lost, twice) = (sum(|q| q.lost), sum(|q| q.duplicates_or_reordered));
    let (corrupt, driver) = (sum(|q| q.integrity_errors), sum(|q| q.driver_errors));
    let longest = queues.iter().max_by(|a, b| a.longest_pause_s.total_cmp(&b.longest_pause_s));
    let bound = 2 * ring_size * queues.len() as u64;
    let v = serde_json::json!({
        "longest_pause_s": longest.map_or(0.0, |q| q.longest_pause_s),
        "pause_end_s": longest.map_or(0.0, |q| q.pause_end_s),
        "rx_after_pause": queues.iter().map(|q| q.rx_after_pause).min().unwrap_or(0),
        "lost": lost,
        "seen_twice_or_reordered": twice,
        "in_flight_bound": bound,
    });
    let verdict = if corrupt > 0 || driver > 0 {
        Err(CliError(format!(
            "traffic check failed across the restart: corrupt {corrupt}, driver errors (bad or repeated used entries) {driver}"
        )))
    } else if lost > bound || twice > bound {
        Err(CliError(format!(
            "more than could be in flight at the cut: lost {lost}, seen twice or reordered {twice} (bound {bound})"
        )))
    } else if let Some(q) = queues.iter().find(|q| q.rx_after_pause == 0) {
        Err(CliError(format!(
            "pair {}: nothing received after its {:.3} s pause: traffic did not resume",
            q.pair, q.longest_pause_s
        )))
    } else {
        Ok(())
    };
    (v, verdict)
}

/// `pktgen --backend tap|af-packet|af-xdp --iface ...`: model device(s) whose
/// ports are host interfaces.
fn run_host(a: &PktgenArgs, backend: Backend, sizes: Sizes, duration: Option<Duration>, warmup: Duration) -> CliResult {
    let b = &a.bench;
    let Some(kind) = backend.host() else {
        return Err(CliError(format!(
            "pktgen --backend takes a host port (tap, af-packet, af-xdp); for the in-process ports use --mode (loopback, txonly, rxonly), not --backend {backend:?}"
        )));
    };
    let spec = a.host.spec(backend)?.unwrap_or_default();
    if a.mode != ModeArg::Loopback {
        return Err(CliError("with --backend the kernel sends the frames back: --mode does not apply".into()));
    }
    if b.vhost_vdpa.is_some() || a.foreign_iova_check || a.suspend_check {
        return Err(CliError("--backend runs its own model device(s): no --vhost-vdpa or post-traffic checks".into()));
    }
    if spec.contains("%d") {
        return Err(CliError("pktgen --iface takes a name or a list a,b (one device per interface)".into()));
    }
    if !(a.link_wait.is_finite() && a.link_wait >= 0.0 && a.link_wait < 3600.0) {
        return Err(CliError(format!("--link-wait {} must be in [0, 3600) seconds", a.link_wait)));
    }
    let count = spec.split(',').count();
    let pairs = b.dev.queues;
    if pairs == 0 || pairs > 256 {
        return Err(CliError(format!("--queues {pairs} must be in 1..=256")));
    }
    let frames = match (a.frames, duration) {
        (None, None) => Some(200_000),
        (f, _) => f,
    };
    let threads = count * pairs as usize;
    let o = NetGenOptions {
        sizes,
        burst: b.dev.burst,
        rate_pps: a.rate / threads as f64,
        frames,
        duration,
        warmup,
        busy: b.dev.idle == Idle::Busy,
        stall: Duration::from_secs(2),
        link_wait: Duration::from_secs_f64(a.link_wait),
    };
    let mut all_opts = Vec::with_capacity(count);
    for d in 0..count {
        all_opts.push(b.dev.options(&format!("pktgen{d}"), netgen::device_mac(d))?);
    }
    // Every port first: a bad interface leaves nothing behind.
    let opened = a.host.open_all(kind, spec, count, pairs)?;
    let cores = b.gen_cores.clone().unwrap_or_default();
    if a.port_only {
        if a.link_flap_check {
            return Err(CliError("--link-flap-check needs the device (not --port-only)".into()));
        }
        let ports = opened.into_iter().map(|(n, hp)| (n, hp.ports)).collect();
        let rep = netgen::run_ports(ports, &o, &cores, stop_flag()?).map_err(|e| CliError(e.to_string()))?;
        return report_net(&rep, b, false);
    }
    let mut devices = Vec::new();
    for ((iface, hp), opts) in opened.into_iter().zip(all_opts) {
        let dcfg = NetDriverConfig { ring_size: b.dev.ring_size, pairs: Some(pairs), ..NetDriverConfig::default() };
        let tb = Testbed::model_with_ports(b.kernel_model.config(), opts, hp.ports, Some(hp.watch), dcfg)
            .map_err(|e| CliError(format!("setting up the device on {iface}: {e}")))?;
        devices.push(NetDevice { tb, iface });
    }
    let rep = netgen::run_network(devices, &o, &cores, stop_flag()?).map_err(|e| CliError(e.to_string()))?;
    report_net(&rep, b, a.link_flap_check)
}

/// Print a network run and judge it.
fn report_net(rep: &NetReport, b: &BenchArgs, link_flap_check: bool) -> CliResult {
    if b.json {
        println!("{}", serde_json::to_string(&rep).map_err(|e| CliError(e.to_string()))?);
    } else {
        print_net(rep, &b.size);
    }
    if rep.failed(link_flap_check) {
        return Err(CliError(format!(
            "traffic check failed: lost {}, corrupt {}, dup/reordered {}, driver errors {}",
            rep.lost, rep.integrity_errors, rep.duplicates_or_reordered, rep.driver_errors
        )));
    }
    if link_flap_check {
        let down = rep.link_events.iter().position(|e| !e.up);
        let up_after = down.is_some_and(|i| rep.link_events[i..].iter().any(|e| e.up));
        if !up_after {
            return Err(CliError(format!(
                "link flap check: expected the link to go down and come back, saw {:?}",
                rep.link_events
            )));
        }
        if rep.rx_after_link_up == 0 {
            return Err(CliError("link flap check: no frame came back after the link did".into()));
        }
    } else if rep.lost > 0 {
        return Err(CliError(format!("lost {} frames", rep.lost)));
    }
    Ok(())
}

fn print_net(r: &NetReport, size: &str) {
    println!(
        "pktgen {} over {}: {} queue pair(s) per device, sizes {size}, measured {:.2} s",
        r.mode,
        r.ifaces.join(", "),
        r.queue_pairs,
        r.duration_s
    );
    println!(
        "  total: tx {:.3} Mpps {:.2} Gbit/s, rx {:.3} Mpps {:.2} Gbit/s ({} / {} frames)",
        r.mpps_tx, r.gbps_tx, r.mpps_rx, r.gbps_rx, r.tx_frames, r.rx_frames
    );
    for s in &r.streams {
        println!(
            "  device {} pair {}: sent {}, received {}, lost {}, corrupt {}, dup/reordered {}",
            s.device, s.pair, s.sent, s.received, s.lost, s.integrity_errors, s.duplicates_or_reordered
        );
    }
    println!(
        "  lost {}, integrity errors {}, duplicated/reordered {}, driver errors {}, foreign frames {}",
        r.lost, r.integrity_errors, r.duplicates_or_reordered, r.driver_errors, r.foreign_frames
    );
    for e in &r.link_events {
        println!("  link of device {} {} at {:.2} s", e.device, if e.up { "up" } else { "down" }, e.t_s);
    }
    for t in &r.cpu {
        println!("  cpu {:<16} user {:.3} s, sys {:.3} s", t.thread, t.user_s, t.sys_s);
    }
}

fn print_text(r: &PktgenReport, frames: &str) {
    let ring = r.checks.get("ring").and_then(|v| v.as_str()).unwrap_or("split");
    println!(
        "pktgen {:?}: {} queue pair(s), {ring} rings, {frames}, measured {:.2} s",
        r.mode, r.queue_pairs, r.duration_s
    );
    println!(
        "  total: tx {:.3} Mpps {:.2} Gbit/s, rx {:.3} Mpps {:.2} Gbit/s ({} / {} frames)",
        r.mpps_tx, r.gbps_tx, r.mpps_rx, r.gbps_rx, r.tx_frames, r.rx_frames
    );
    for q in &r.queues {
        println!(
            "  pair {}: tx {:.3} Mpps {:.2} Gbit/s, rx {:.3} Mpps {:.2} Gbit/s; lost {}, corrupt {}, dup/reordered {}",
            q.pair, q.mpps_tx, q.gbps_tx, q.mpps_rx, q.gbps_rx, q.lost, q.integrity_errors, q.duplicates_or_reordered
        );
    }
    if let Some(n) = r.device_consumed {
        println!("  device consumed {n} frames from its TX queues");
    }
    if let Some(t) = r.checks.get("tso") {
        println!(
            "  tso: {} GSO frames of {} bytes, mss {} -> {} segments each; {} segments checked of {} expected; device \
             software GSO {} frames -> {} segments",
            r.tx_frames,
            t["size"],
            t["mss"],
            t["segments_per_frame"],
            r.rx_frames,
            t["segments_expected"],
            t["device_sw_gso_frames"],
            t["device_sw_segments"]
        );
    }
    println!(
        "  lost {}, integrity errors {}, duplicated/reordered {}, driver errors {}",
        r.lost, r.integrity_errors, r.duplicates_or_reordered, r.driver_errors
    );
    for t in &r.threads {
        println!("  cpu {:<16} user {:.3} s, sys {:.3} s", t.thread, t.user_s, t.sys_s);
    }
    super::latency::print_cycles(r.device_cycles_per_frame, r.generator_cycles_per_frame, r.tsc_hz, r.cycles_unit);
    if let Some(b) = r.busier {
        println!("  busier side: {b} (check mode {:?})", r.check);
    }
    if let Some(v) = r.checks.get("ride_through") {
        println!("  across the restart: {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pair: u16, lost: u64, twice: u64, after: u64) -> QueueReport {
        QueueReport {
            pair,
            lost,
            duplicates_or_reordered: twice,
            rx_after_pause: after,
            longest_pause_s: 1.5,
            ..Default::default()
        }
    }

    #[test]
    fn ride_through_reports_the_cut_and_bounds_it() {
        let (v, ok) = ride_through_verdict(&[q(0, 3, 2, 100), q(1, 0, 0, 50)], 256);
        assert!(ok.is_ok());
        assert_eq!((v["lost"].as_u64(), v["seen_twice_or_reordered"].as_u64()), (Some(3), Some(2)));
        assert_eq!((v["rx_after_pause"].as_u64(), v["in_flight_bound"].as_u64()), (Some(50), Some(1024)));
        // More than a TX and an RX ring per pair can hold: not a restart's loss.
        assert!(ride_through_verdict(&[q(0, 513, 0, 100)], 256).1.is_err());
        assert!(ride_through_verdict(&[q(0, 0, 513, 100)], 256).1.is_err());
        // Nothing after the pause: traffic did not resume.
        assert!(ride_through_verdict(&[q(0, 0, 0, 100), q(1, 0, 0, 0)], 256).1.is_err());
    }

    #[test]
    fn ride_through_never_accepts_corruption_or_driver_errors() {
        let bad = QueueReport { integrity_errors: 1, ..q(0, 0, 0, 100) };
        assert!(ride_through_verdict(&[bad], 256).1.is_err());
        // A used entry for an id not in flight (published twice) is a driver error.
        let twice = QueueReport { driver_errors: 1, ..q(0, 0, 0, 100) };
        assert!(ride_through_verdict(&[twice], 256).1.is_err());
    }
}
