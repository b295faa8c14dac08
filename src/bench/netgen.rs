//! The generator for devices whose ports are real interfaces: frames leave
//! through the kernel and whatever it sends back (a tc reflector, a bridge,
//! a veth to another device) is received and checked.
//!
//! Every generator thread owns one queue pair of one device and sends a
//! stream of numbered frames (stream id = device * pairs + pair, in the
//! frame's `pair` field) to its target device: itself when the kernel
//! reflects, the next device when several are wired together. A frame may
//! come back on any pair of the target (a tap picks the queue by flow, AF_PACKET
//! fanout by hash), so each receiving thread checks order and duplicates per
//! stream among the frames it sees, and the streams are summed at the end:
//! lost = sent - seen anywhere; more seen than sent counts as duplicates.
//! Frames that are not test frames (the kernel's own IPv6 and ARP traffic)
//! are counted as foreign, not as errors.
//!
//! The link: the main thread reads each device's config-space status about
//! every 20 ms as the driver would after a config interrupt; senders pause
//! while their device's link is down (a driver stops its queue on carrier
//! loss), and the run records each change.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cpu::{self, ThreadCpu};
use super::frame::{self, Check};
use super::pktgen::{RxCheck, Sizes, DEVICE_THREADS};
use super::testbed::{BenchError, Testbed};
use crate::backend::{FrameMeta, Port};
use crate::dataplane::device::DeviceStats;
use crate::driver::net::QueuePair;
use crate::driver::DriverTransport;
use crate::net::config::{STATUS_OFFSET, VIRTIO_NET_S_LINK_UP};

/// MAC of device `d` in a network run (locally administered).
pub fn device_mac(d: usize) -> [u8; 6] {
    [0x02, 0x00, 0x00, 0x00, 0x10, d as u8 + 1]
}

#[derive(Clone, Debug)]
pub struct NetGenOptions {
    pub sizes: Sizes,
    pub burst: usize,
    /// Frames per second per sending thread; 0 = as fast as possible.
    pub rate_pps: f64,
    /// Frames per sending thread.
    pub frames: Option<u64>,
    /// Sending time after the warm-up.
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub busy: bool,
    /// After sending: give up waiting for frames in flight after this long
    /// without one arriving.
    pub stall: Duration,
    /// How long to wait for every link to be up before sending.
    pub link_wait: Duration,
}

impl Default for NetGenOptions {
    fn default() -> Self {
        NetGenOptions {
            sizes: Sizes(vec![64]),
            burst: 32,
            rate_pps: 0.0,
            frames: Some(10_000),
            duration: None,
            warmup: Duration::ZERO,
            busy: false,
            stall: Duration::from_secs(2),
            link_wait: Duration::from_secs(5),
        }
    }
}

/// One device of the run.
pub struct NetDevice {
    pub tb: Testbed,
    /// The interface its ports use (for the report).
    pub iface: String,
}

struct Shared {
    stop: Arc<AtomicBool>,
    link_up: Vec<AtomicBool>,
    sent: AtomicU64,
    seen: AtomicU64,
    senders: AtomicUsize,
    /// Nanoseconds since `t0` of the last frame received anywhere.
    last_rx: AtomicU64,
    t0: Instant,
}

/// What one generator thread sent and saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ThreadReport {
    pub device: usize,
    pub pair: u16,
    pub stream: u16,
    pub core: Option<usize>,
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub foreign: u64,
    pub driver_errors: u64,
    pub window_s: f64,
    pub mpps_tx: f64,
    pub mpps_rx: f64,
    pub gbps_tx: f64,
    pub gbps_rx: f64,
    pub cpu: ThreadCpu,
}

/// One stream (a sender) as all receivers saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamReport {
    pub stream: u16,
    pub device: usize,
    pub pair: u16,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub integrity_errors: u64,
    pub duplicates_or_reordered: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkEvent {
    pub t_s: f64,
    pub device: usize,
    pub up: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetReport {
    pub mode: &'static str,
    pub ifaces: Vec<String>,
    pub queue_pairs: usize,
    pub tx_frames: u64,
    pub rx_frames: u64,
    pub lost: u64,
    pub integrity_errors: u64,
    pub duplicates_or_reordered: u64,
    pub foreign_frames: u64,
    pub driver_errors: u64,
    pub duration_s: f64,
    pub mpps_tx: f64,
    pub mpps_rx: f64,
    pub gbps_tx: f64,
    pub gbps_rx: f64,
    /// Link changes the drivers saw, and their config interrupts.
    pub link_events: Vec<LinkEvent>,
    pub config_irqs: Vec<u64>,
    /// Good frames received after the last link-up event (all frames when
    /// the link never changed).
    pub rx_after_link_up: u64,
    pub streams: Vec<StreamReport>,
    pub threads: Vec<ThreadReport>,
    pub cpu: Vec<ThreadCpu>,
    pub devices: Vec<Option<DeviceStats>>,
}

impl NetReport {
    /// Corruption, duplicates or driver errors; and loss unless allowed.
    pub fn failed(&self, allow_loss: bool) -> bool {
        (self.lost > 0 && !allow_loss)
            || self.integrity_errors > 0
            || self.duplicates_or_reordered > 0
            || self.driver_errors > 0
    }
}

fn link_of(t: &dyn DriverTransport) -> Option<bool> {
    let mut b = [0u8; 2];
    t.read_config(STATUS_OFFSET as u32, &mut b).ok()?;
    Some(u16::from_le_bytes(b) & VIRTIO_NET_S_LINK_UP != 0)
}

struct Per {
    checks: Vec<RxCheck>,
    r: ThreadReport,
}

/// What a generator thread drives: a driver's queue pair (frames through a
/// device), or a port directly (the port's own ceiling, no device).
pub trait Endpoint: Send + 'static {
    fn pair(&self) -> u16;
    /// Before the first frame.
    fn start(&mut self) {}
    /// Send up to `max` frames built by `build(buf) -> len`; returns how many.
    fn send(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize, max: usize) -> usize;
    /// Hand up to `max` received frames to `f`; returns how many.
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]), max: usize) -> usize;
    /// Nothing to send: finish what is in flight.
    fn idle(&mut self) {}
    /// Errors the driver saw.
    fn errors(&self) -> u64 {
        0
    }
}

impl Endpoint for QueuePair {
    fn pair(&self) -> u16 {
        self.index()
    }
    fn start(&mut self) {
        self.post_rx();
    }
    fn send(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize, max: usize) -> usize {
        self.tx_burst(&mut |_, buf| build(buf), max)
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]), max: usize) -> usize {
        self.rx_burst(f, max)
    }
    fn idle(&mut self) {
        self.reclaim_tx();
    }
    fn errors(&self) -> u64 {
        let st = self.stats();
        st.tx_errors + st.rx_errors + st.kick_errors
    }
}

/// A host port driven directly, without a device: the same frames and
/// checks, so the rate is the port and the kernel path alone.
pub struct PortEnd {
    pub port: Box<dyn Port>,
    pub pair: u16,
}

impl Endpoint for PortEnd {
    fn pair(&self) -> u16 {
        self.pair
    }
    fn send(&mut self, build: &mut dyn FnMut(&mut [u8]) -> usize, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(slot) = self.port.tx_slot() else { break };
            let len = build(slot);
            self.port.tx_commit(len, FrameMeta::PLAIN);
            n += 1;
        }
        self.port.tx_flush();
        n
    }
    fn recv(&mut self, f: &mut dyn FnMut(&[u8]), max: usize) -> usize {
        self.port.rx_fill();
        let mut n = 0;
        while n < max {
            let Some(fr) = self.port.rx_peek() else { break };
            f(fr.bytes);
            self.port.rx_consume();
            n += 1;
        }
        self.port.rx_flush();
        n
    }
    fn idle(&mut self) {
        self.port.tx_flush();
    }
}

#[allow(clippy::too_many_arguments)]
fn run_thread<E: Endpoint>(
    q: &mut E,
    device: usize,
    target: usize,
    streams: usize,
    pairs: usize,
    o: &NetGenOptions,
    sh: &Shared,
    macs: &[[u8; 6]],
) -> Per {
    let pair = q.pair();
    let stream = (device * pairs + pair as usize) as u16;
    let mut r = ThreadReport { device, pair, stream, ..Default::default() };
    let mut checks: Vec<RxCheck> = (0..streams).map(|s| RxCheck::new(s as u16)).collect();
    let burst = o.burst.max(1);
    let start = Instant::now();
    let warm_end = start + o.warmup;
    let deadline = o.duration.map(|d| warm_end + d);
    let limit = o.frames.unwrap_or(u64::MAX);
    let (src, dst) = (macs[device], macs[target]);
    // Pacing: frames are due at `rate` from `next`; a thread that was
    // descheduled (or paused for the link) catches up at most MAX_LAG's
    // worth, so it does not flood the kernel's queues afterwards.
    const MAX_LAG: Duration = Duration::from_millis(2);
    let mut next = start;
    let mut sending = true;
    let mut win0: Option<(Instant, [u64; 4])> = None;
    let mut win1: Option<(Instant, [u64; 4])> = None;
    let (mut rx, mut rx_bytes) = (0u64, 0u64);
    let mut idle = 0u32;
    q.start();
    loop {
        let now = Instant::now();
        let counts = [r.sent, r.sent_bytes, rx, rx_bytes];
        if win0.is_none() && now >= warm_end {
            win0 = Some((now, counts));
        }
        let stop = sh.stop.load(Ordering::Relaxed);
        if sending && (stop || r.sent >= limit || deadline.is_some_and(|d| now >= d)) {
            sending = false;
            win1 = Some((now, counts));
            sh.senders.fetch_sub(1, Ordering::AcqRel);
        }
        let mut work = 0;
        if sending && sh.link_up[device].load(Ordering::Relaxed) {
            let due = if o.rate_pps > 0.0 {
                if now > next + MAX_LAG {
                    next = now - MAX_LAG;
                }
                match now.checked_duration_since(next) {
                    Some(d) => (d.as_secs_f64() * o.rate_pps) as u64 + 1,
                    None => 0,
                }
            } else {
                u64::MAX
            };
            let want = (burst as u64).min(limit - r.sent).min(due) as usize;
            if want > 0 {
                let (mut seq, mut bytes) = (r.sent, 0u64);
                let n = q.send(
                    &mut |buf| {
                        let n = frame::build(buf, o.sizes.of(seq), dst, src, stream, seq);
                        seq += 1;
                        bytes += n as u64;
                        n
                    },
                    want,
                );
                if o.rate_pps > 0.0 {
                    next += Duration::from_secs_f64(n as f64 / o.rate_pps);
                }
                r.sent += n as u64;
                r.sent_bytes += bytes;
                sh.sent.fetch_add(n as u64, Ordering::Relaxed);
                work += n;
            }
        } else if !sending {
            q.idle();
        }
        let mut got = 0u64;
        let n = q.recv(
            &mut |f| {
                if !frame::is_ours(f) {
                    r.foreign += 1;
                    return;
                }
                got += 1;
                match frame::check(f) {
                    Check::Ok { pair: s, seq } if (s as usize) < streams => {
                        let c = &mut checks[s as usize];
                        let good = c.frames;
                        c.checked(Check::Ok { pair: s, seq }, f.len());
                        if c.frames > good {
                            rx += 1;
                            rx_bytes += f.len() as u64;
                        }
                    }
                    // Damaged (or naming a stream that does not exist):
                    // charged to this thread's own stream.
                    _ => checks[stream as usize].integrity_errors += 1,
                }
            },
            burst,
        );
        if got > 0 {
            sh.seen.fetch_add(got, Ordering::Relaxed);
            sh.last_rx.store(sh.t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        work += n;
        if !sending {
            // A stop request (SIGINT/SIGTERM) ends sending, not receiving:
            // frames already in flight are drained like at a natural end,
            // bounded by `stall`, or they would be reported lost.
            let all_sent = sh.senders.load(Ordering::Acquire) == 0;
            if all_sent && sh.seen.load(Ordering::Relaxed) >= sh.sent.load(Ordering::Relaxed) {
                break;
            }
            let last = sh.t0 + Duration::from_nanos(sh.last_rx.load(Ordering::Relaxed));
            let quiet_since = last.max(win1.map(|w| w.0).unwrap_or(now));
            if all_sent && now.saturating_duration_since(quiet_since) > o.stall {
                break;
            }
        }
        if work > 0 {
            idle = 0;
        } else if o.busy {
            std::hint::spin_loop();
        } else {
            idle += 1;
            if idle % 64 == 0 {
                std::thread::yield_now();
            }
        }
    }
    let end = [r.sent, r.sent_bytes, rx, rx_bytes];
    let (t1, c1) = win1.unwrap_or((Instant::now(), end));
    if let Some((t0, c0)) = win0 {
        let s = t1.saturating_duration_since(t0).as_secs_f64();
        if s > 0.0 {
            r.window_s = s;
            r.mpps_tx = (c1[0] - c0[0]) as f64 / s / 1e6;
            r.gbps_tx = (c1[1] - c0[1]) as f64 * 8.0 / s / 1e9;
            r.mpps_rx = (c1[2] - c0[2]) as f64 / s / 1e6;
            r.gbps_rx = (c1[3] - c0[3]) as f64 * 8.0 / s / 1e9;
        }
    }
    r.received = rx;
    r.received_bytes = rx_bytes;
    r.driver_errors = q.errors();
    r.cpu = cpu::current_thread(&format!("netgen-{device}-{pair}"));
    Per { checks, r }
}

/// Run the generator over `devices` (one: frames come back to it; several:
/// device d sends to device d+1, the last to the first) and tear them down.
pub fn run_network(
    mut devices: Vec<NetDevice>,
    o: &NetGenOptions,
    cores: &[usize],
    stop: Arc<AtomicBool>,
) -> Result<NetReport, BenchError> {
    let nd = devices.len();
    if nd == 0 {
        return Err(BenchError::Options("no device".into()));
    }
    let transports: Vec<Arc<dyn DriverTransport>> = devices
        .iter()
        .map(|d| d.tb.driver().map(|x| x.transport().clone()).ok_or_else(|| BenchError::Options("no driver".into())))
        .collect::<Result<_, _>>()?;
    let pairs: Vec<Vec<QueuePair>> = devices.iter_mut().map(|d| d.tb.take_pairs()).collect();
    // The links must be up before anything is sent.
    let t_wait = Instant::now();
    loop {
        let down: Vec<usize> = (0..nd).filter(|&d| link_of(&*transports[d]) != Some(true)).collect();
        if down.is_empty() {
            break;
        }
        if t_wait.elapsed() > o.link_wait || stop.load(Ordering::Relaxed) {
            let names: Vec<&str> = down.iter().map(|&d| devices[d].iface.as_str()).collect();
            return Err(BenchError::Options(format!(
                "link down on {} after {:?}: the interface must exist and be up (ip link set NAME up)",
                names.join(", "),
                o.link_wait
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in &transports {
        // Interrupts raised during setup are not part of the run.
        while t.wait_config_interrupt(Duration::ZERO).unwrap_or(false) {}
    }
    let (mut rep, pairs) = run_core(pairs, &transports, o, cores, stop)?;
    drop(pairs);
    rep.cpu.extend(cpu::threads_named(DEVICE_THREADS));
    for d in devices {
        rep.ifaces.push(d.iface);
        rep.devices.push(d.tb.finish()?);
    }
    Ok(rep)
}

/// The generator threads over `ends[d]` (the pairs of device d), watching
/// the devices' links through `transports` (none for bare ports). Returns
/// the report (without interfaces and device stats) and the endpoints.
fn run_core<E: Endpoint>(
    ends: Vec<Vec<E>>,
    transports: &[Arc<dyn DriverTransport>],
    o: &NetGenOptions,
    cores: &[usize],
    stop: Arc<AtomicBool>,
) -> Result<(NetReport, Vec<E>), BenchError> {
    let nd = ends.len();
    let per_dev = ends.iter().map(|p| p.len()).max().unwrap_or(0);
    if nd == 0 || per_dev == 0 || ends.iter().any(|p| p.len() != per_dev) {
        return Err(BenchError::Options("every device needs the same number of queue pairs".into()));
    }
    let streams = nd * per_dev;
    if streams > u16::MAX as usize {
        return Err(BenchError::Options("too many streams".into()));
    }
    let macs: Vec<[u8; 6]> = (0..nd).map(device_mac).collect();
    let pairs = ends;
    let sh = Arc::new(Shared {
        stop: stop.clone(),
        link_up: (0..nd).map(|_| AtomicBool::new(true)).collect(),
        sent: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        senders: AtomicUsize::new(streams),
        last_rx: AtomicU64::new(0),
        t0: Instant::now(),
    });
    let macs = Arc::new(macs);
    let mut handles = Vec::new();
    let mut i = 0usize;
    for (d, ps) in pairs.into_iter().enumerate() {
        let target = (d + 1) % nd;
        for mut q in ps {
            let (o, sh, macs) = (o.clone(), sh.clone(), macs.clone());
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            i += 1;
            let h = std::thread::Builder::new()
                .name(format!("netgen-{d}-{}", q.pair()))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                            log::warn!("netgen: could not pin to core {c}");
                        }
                    }
                    let mut per = run_thread(&mut q, d, target, streams, per_dev, &o, &sh, &macs);
                    per.r.core = core;
                    (per, q)
                })
                .map_err(BenchError::Thread);
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
    }
    // Watch the links while the threads run.
    let mut events = Vec::new();
    let mut irqs = vec![0u64; nd];
    let mut state = vec![true; nd];
    let mut seen_at_up = 0u64;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        for d in 0..transports.len() {
            while transports[d].wait_config_interrupt(Duration::ZERO).unwrap_or(false) {
                irqs[d] += 1;
            }
            if let Some(up) = link_of(&*transports[d]) {
                if up != state[d] {
                    state[d] = up;
                    sh.link_up[d].store(up, Ordering::Relaxed);
                    events.push(LinkEvent { t_s: sh.t0.elapsed().as_secs_f64(), device: d, up });
                    if up {
                        seen_at_up = sh.seen.load(Ordering::Relaxed);
                    }
                }
            }
        }
    }
    let mut pers = Vec::new();
    let mut back = Vec::new();
    for h in handles {
        let (p, q) = h.join().map_err(|_| BenchError::ThreadPanicked)?;
        pers.push(p);
        back.push(q);
    }
    // Merge the receivers' view of each stream.
    let mut srep: Vec<StreamReport> = (0..streams)
        .map(|s| StreamReport {
            stream: s as u16,
            device: s / per_dev,
            pair: (s % per_dev) as u16,
            ..Default::default()
        })
        .collect();
    for p in &pers {
        srep[p.r.stream as usize].sent = p.r.sent;
        for (s, c) in p.checks.iter().enumerate() {
            srep[s].received += c.frames;
            srep[s].integrity_errors += c.integrity_errors;
            srep[s].duplicates_or_reordered += c.duplicates_or_reordered;
        }
    }
    for s in &mut srep {
        let seen = s.received + s.duplicates_or_reordered;
        s.lost = s.sent.saturating_sub(s.received);
        // A frame seen on two queues passes both checkers.
        s.duplicates_or_reordered += seen.saturating_sub(s.sent);
        if s.received > s.sent {
            s.received = s.sent;
        }
    }
    let threads: Vec<ThreadReport> = pers.into_iter().map(|p| p.r).collect();
    let sum_u = |f: fn(&StreamReport) -> u64| srep.iter().map(f).sum::<u64>();
    let sum_f = |f: fn(&ThreadReport) -> f64| threads.iter().map(f).sum::<f64>();
    let cpu_all: Vec<ThreadCpu> = threads.iter().map(|t| t.cpu.clone()).collect();
    let rx_total = sum_u(|s| s.received);
    let rep = NetReport {
        mode: if nd == 1 { "reflect" } else { "cross" },
        ifaces: Vec::new(),
        queue_pairs: per_dev,
        tx_frames: sum_u(|s| s.sent),
        rx_frames: rx_total,
        // A damaged frame cannot say which stream it was: it is an
        // integrity error, not also a loss.
        lost: sum_u(|s| s.sent).saturating_sub(rx_total + sum_u(|s| s.integrity_errors)),
        integrity_errors: sum_u(|s| s.integrity_errors),
        duplicates_or_reordered: sum_u(|s| s.duplicates_or_reordered),
        foreign_frames: threads.iter().map(|t| t.foreign).sum(),
        driver_errors: threads.iter().map(|t| t.driver_errors).sum(),
        duration_s: threads.iter().map(|t| t.window_s).fold(0.0, f64::max),
        mpps_tx: sum_f(|t| t.mpps_tx),
        mpps_rx: sum_f(|t| t.mpps_rx),
        gbps_tx: sum_f(|t| t.gbps_tx),
        gbps_rx: sum_f(|t| t.gbps_rx),
        rx_after_link_up: sh.seen.load(Ordering::Relaxed).saturating_sub(seen_at_up),
        link_events: events,
        config_irqs: irqs,
        streams: srep,
        threads,
        cpu: cpu_all,
        devices: Vec::new(),
    };
    Ok((rep, back))
}

/// The same run on bare ports (`ports[d]` = one interface's pairs): no
/// device, no virtio, no link watch; the rate is the ceiling of the port
/// and the kernel path it uses.
pub fn run_ports(
    ports: Vec<(String, Vec<Box<dyn Port>>)>,
    o: &NetGenOptions,
    cores: &[usize],
    stop: Arc<AtomicBool>,
) -> Result<NetReport, BenchError> {
    let mut ifaces = Vec::new();
    let mut ends = Vec::new();
    for (name, ps) in ports {
        ifaces.push(name);
        ends.push(ps.into_iter().enumerate().map(|(i, port)| PortEnd { port, pair: i as u16 }).collect::<Vec<_>>());
    }
    let (mut rep, back) = run_core(ends, &[], o, cores, stop)?;
    drop(back);
    rep.mode = if ifaces.len() == 1 { "reflect-port-only" } else { "cross-port-only" };
    rep.ifaces = ifaces;
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PortFrame;
    use std::collections::VecDeque;

    /// A reflector that gives each frame back only `delay` after it was
    /// sent: frames are always in flight when a stop request comes.
    struct SlowMirror {
        delay: Duration,
        slot: Vec<u8>,
        held: VecDeque<(Instant, Vec<u8>)>,
    }

    impl Port for SlowMirror {
        fn tx_slot(&mut self) -> Option<&mut [u8]> {
            Some(&mut self.slot)
        }
        fn tx_commit(&mut self, len: usize, _: FrameMeta) {
            self.held.push_back((Instant::now() + self.delay, self.slot[..len].to_vec()));
        }
        fn tx_flush(&mut self) {}
        fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
            match self.held.front() {
                Some((due, f)) if Instant::now() >= *due => Some(PortFrame { bytes: f, meta: FrameMeta::PLAIN }),
                _ => None,
            }
        }
        fn rx_consume(&mut self) {
            self.held.pop_front();
        }
        fn rx_flush(&mut self) {}
        fn rx_pending(&self) -> usize {
            self.held.len()
        }
    }

    #[test]
    fn a_stop_request_drains_the_frames_in_flight() {
        let port = SlowMirror { delay: Duration::from_millis(200), slot: vec![0; 2048], held: VecDeque::new() };
        let stop = Arc::new(AtomicBool::new(false));
        let o = NetGenOptions {
            rate_pps: 20_000.0,
            frames: None,
            duration: None,
            stall: Duration::from_secs(2),
            ..NetGenOptions::default()
        };
        let s = stop.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            s.store(true, Ordering::Relaxed);
        });
        let t0 = Instant::now();
        let rep = run_ports(vec![("mirror".into(), vec![Box::new(port) as Box<dyn Port>])], &o, &[], stop).unwrap();
        stopper.join().unwrap();
        // About 200 ms of frames were held by the port at the stop.
        assert!(rep.tx_frames > 1000, "sent {}", rep.tx_frames);
        assert_eq!((rep.lost, rep.rx_frames), (0, rep.tx_frames), "every frame in flight at the stop came back");
        assert!(t0.elapsed() < Duration::from_secs(2), "the drain ended when the last frame was back");
    }
}
