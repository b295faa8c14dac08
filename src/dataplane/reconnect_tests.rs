//! Reconnect on the kernel model: a device "process" (slow path and poll
//! threads) dies at an injected point ([`crate::persist::fault`]), without
//! DESTROY_DEV and without answering what it had read; the model keeps the
//! device and queues unanswered messages again, as the kernel does; a new
//! `NetDevice` reattaches from the state log while a driver keeps sending
//! numbered frames and issuing control commands, ASID moves and resets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_net as vn;

use super::device::{DeviceError, ReattachError};
use super::{DeviceOptions, IdlePolicy, NetDevice, RunningDevice};
use crate::backend::loopback::Loopback;
use crate::backend::Port;
use crate::bench::frame::{self, Check};
use crate::driver::net::{NetDriver, NetDriverConfig, QueuePair};
use crate::driver::DriverTransport;
use crate::persist::fault::{self, Stage};
use crate::persist::LogError;
use crate::uapi::virtio::status;
use crate::vduse::model::{KernelModel, ModelConfig};
use crate::vduse::VduseError;

const DEV_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
/// Most frames the driver keeps in flight per pair.
const WINDOW: u64 = 48;

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vduse-net-reconnect-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(name: &str, pairs: u16) -> DeviceOptions {
    DeviceOptions {
        name: name.into(),
        queue_pairs: pairs,
        mac: DEV_MAC,
        ring_size: 256,
        idle: IdlePolicy::Adaptive { spins: 256 },
        ..DeviceOptions::default()
    }
}

fn ports(pairs: u16) -> Vec<Box<dyn Port>> {
    (0..pairs).map(|_| Box::new(Loopback::new(256, true)) as Box<dyn Port>).collect()
}

/// The restart: reattach once the old process is gone (its device fd
/// closed and its log unlocked), then run.
fn restart(model: &Arc<KernelModel>, opts: &DeviceOptions, dir: &Dir, deadline: Instant) -> RunningDevice {
    loop {
        match NetDevice::reattach(model.control(), opts.clone(), &dir.0) {
            Ok(d) => {
                fault::disarm(&opts.name);
                return d.start(ports(opts.queue_pairs)).expect("start after reattach");
            }
            Err(DeviceError::Vduse(VduseError::Os { errno: nix::errno::Errno::EBUSY, .. }))
            | Err(DeviceError::Reattach(ReattachError::Log(LogError::Locked(_)))) => {
                assert!(Instant::now() < deadline, "the old process never went away");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("reattach: {e}"),
        }
    }
}

/// One pair's numbered stream. Every sequence number is remembered, so a
/// frame seen twice is a duplicate for certain; one that comes after a
/// later one (after the driver stopped waiting for it) is late.
#[derive(Default)]
struct Flow {
    pair: u16,
    next_tx: u64,
    /// Frames before this are not waited for any more.
    next_rx: u64,
    rx: u64,
    seen: std::collections::HashSet<u64>,
    corrupt: u64,
    dup: u64,
    late: u64,
}

impl Flow {
    fn send(&mut self, q: &mut QueuePair) {
        self.send_upto(q, u64::MAX);
    }

    /// Send while fewer than WINDOW are out and `next_tx < limit`.
    fn send_upto(&mut self, q: &mut QueuePair, limit: u64) {
        let room = (WINDOW - (self.next_tx - self.next_rx)).min(limit.saturating_sub(self.next_tx)) as usize;
        if room == 0 {
            return;
        }
        let (pair, mut seq) = (self.pair, self.next_tx);
        let n = q.tx_burst(
            &mut |_, buf| {
                let len = [64, 300, 1200][(seq % 3) as usize];
                let n = frame::build(buf, len, PEER_MAC, DEV_MAC, pair, seq);
                seq += 1;
                n
            },
            room,
        );
        self.next_tx += n as u64;
    }

    fn receive(&mut self, q: &mut QueuePair) -> usize {
        q.post_rx();
        let mut seen = Vec::new();
        let n = q.rx_burst(&mut |f| seen.push(f.to_vec()), 64);
        for f in seen {
            match frame::check(&f) {
                Check::Ok { pair, seq } if pair == self.pair && seq < self.next_tx => {
                    if !self.seen.insert(seq) {
                        self.dup += 1;
                    } else if seq < self.next_rx {
                        self.late += 1;
                        self.rx += 1;
                    } else {
                        self.next_rx = seq + 1;
                        self.rx += 1;
                    }
                }
                _ => self.corrupt += 1,
            }
            if f[0..6] != DEV_MAC {
                self.corrupt += 1;
            }
        }
        n
    }

    /// Stop waiting for the frames out (nothing arrived for a while).
    fn give_up(&mut self) {
        self.next_rx = self.next_tx;
    }

    /// Frames sent and never received.
    fn lost(&self) -> u64 {
        self.next_tx - self.seen.len() as u64
    }
}

/// The driver side's counters, shared with the test thread.
#[derive(Default)]
struct Shared {
    rx: AtomicU64,
    in_flight: AtomicU64,
    ops: AtomicU64,
    lost: AtomicU64,
}

/// Reset and set the device up again with the queues the driver has (as a
/// VMM does), the control queue's group back in its ASID.
fn reinit(d: &mut NetDriver, pairs: &mut [QueuePair]) {
    let t = d.transport().clone();
    t.set_status(0).expect("reset");
    if let (Some(group), asid) = (d.cvq_group(), d.cvq_asid()) {
        if asid != 0 {
            t.set_group_asid(group, asid).expect("control queue group back to its ASID");
        }
    }
    let mut st = status::ACKNOWLEDGE | status::DRIVER;
    t.set_status(status::ACKNOWLEDGE).unwrap();
    t.set_status(st).unwrap();
    t.set_features(d.features()).unwrap();
    st |= status::FEATURES_OK;
    t.set_status(st).unwrap();
    let setup = |vq: u32, q: &crate::driver::queue::DriverRing| {
        t.set_vring_num(vq, q.size()).unwrap();
        t.set_vring_addr(vq, q.desc_iova(), q.driver_area_iova(), q.device_area_iova()).unwrap();
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
    if pairs.len() > 1 {
        d.set_queue_pairs(pairs.len() as u16).expect("VQ_PAIRS_SET after the reset");
    }
}

/// Traffic on every pair plus, now and then, a control-queue command, an
/// ASID move of the control queue's group, or a reset.
fn drive(
    mut d: NetDriver,
    stop: Arc<AtomicBool>,
    sh: Arc<Shared>,
    seed: u64,
) -> (NetDriver, Vec<Flow>, Vec<QueuePair>) {
    let mut pairs = d.take_pairs();
    let mut flows: Vec<Flow> = (0..pairs.len() as u16).map(|pair| Flow { pair, ..Flow::default() }).collect();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut last_progress = Instant::now();
    let mut iter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        iter += 1;
        let mut got = 0;
        for (f, q) in flows.iter_mut().zip(pairs.iter_mut()) {
            f.send(q);
            got += f.receive(q);
        }
        if got > 0 {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_millis(400) {
            flows.iter_mut().for_each(Flow::give_up);
            last_progress = Instant::now();
        } else {
            std::thread::yield_now();
        }
        sh.rx.store(flows.iter().map(|f| f.rx).sum(), Ordering::Relaxed);
        sh.in_flight.store(flows.iter().map(|f| f.next_tx - f.next_rx).sum(), Ordering::Relaxed);
        sh.lost.store(flows.iter().map(|f| f.next_rx - f.seen.len() as u64).sum(), Ordering::Relaxed);
        if iter % 64 != 0 {
            continue;
        }
        match next() % 8 {
            // Promiscuous on (the state the frames need), or the MAC set to
            // what it is: each a control-queue round trip.
            0 | 1 => {
                let ack = d.ctrl(vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_PROMISC as u8, &[1]);
                assert_eq!(ack.expect("RX_PROMISC"), vn::VIRTIO_NET_OK as u8);
            }
            2 => {
                let ack = d.ctrl(vn::VIRTIO_NET_CTRL_MAC as u8, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8, &DEV_MAC);
                assert_eq!(ack.expect("MAC_ADDR_SET"), vn::VIRTIO_NET_OK as u8);
            }
            // A reset, the control queue's group moved to its ASID again
            // (SET_VQ_GROUP_ASID: vhost-vdpa refuses it after DRIVER_OK), and
            // a new DRIVER_OK, after the frames out came back.
            3 | 4 if std::env::var_os("VDN_NO_RESET").is_none() => {
                let end = Instant::now() + Duration::from_millis(500);
                while flows.iter().any(|f| f.next_tx != f.next_rx) && Instant::now() < end {
                    for (f, q) in flows.iter_mut().zip(pairs.iter_mut()) {
                        f.receive(q);
                    }
                    std::thread::yield_now();
                }
                flows.iter_mut().for_each(Flow::give_up);
                pairs.iter_mut().for_each(|q| {
                    q.reclaim_tx();
                });
                reinit(&mut d, &mut pairs);
                // A reset drops the control-queue state: promiscuous again.
                let ack = d.ctrl(vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_PROMISC as u8, &[1]);
                assert_eq!(ack.expect("RX_PROMISC after reset"), vn::VIRTIO_NET_OK as u8);
            }
            _ => continue,
        }
        sh.ops.fetch_add(1, Ordering::Relaxed);
    }
    (d, flows, pairs)
}

fn probe(t: Arc<dyn DriverTransport>) -> NetDriver {
    let cfg = NetDriverConfig { ring_size: 64, ctrl_timeout: Duration::from_secs(20), ..NetDriverConfig::default() };
    NetDriver::probe(t, cfg).expect("probe")
}

/// A hundred crashes at random points, each followed by a reattach, under
/// traffic, control commands, ASID moves and resets.
#[test]
fn a_reattached_device_carries_traffic_on_across_a_hundred_crashes() {
    let _ = env_logger::builder().is_test(true).try_init();
    let name = format!("vdn-rc-{}", std::process::id());
    let dir = Dir::new("hundred");
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(10)));
    let opts = options(&name, 2);
    let mut running = NetDevice::create_logged(model.control(), opts.clone(), &dir.0).unwrap().start(ports(2)).unwrap();
    let t = model.attach_vhost_vdpa(&name).unwrap();
    let d = probe(t.clone());
    assert_eq!(d.cvq_asid(), 1, "the control queue's group is in ASID 1");
    let stop = Arc::new(AtomicBool::new(false));
    let sh = Arc::new(Shared::default());
    let driver = {
        let (stop, sh) = (stop.clone(), sh.clone());
        std::thread::spawn(move || drive(d, stop, sh, 0x9e37_79b9_7f4a_7c15))
    };
    let test_end = Instant::now() + Duration::from_secs(240);
    let stages = [
        None,
        Some(Stage::PollLoop),
        Some(Stage::BeforePublish),
        Some(Stage::BeforeLog),
        Some(Stage::SlowLoop),
        Some(Stage::MessageRead),
        Some(Stage::MessageApplied),
        Some(Stage::CvqApplied),
    ];
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut restarts = Vec::new();
    let mut by_stage = vec![0u32; stages.len()];
    let mut worst_loss = (0u64, 0u64);
    let crashes = 100;
    for i in 0..crashes {
        assert!(Instant::now() < test_end, "time is up after {i} crashes");
        // Traffic flows before each cut.
        let rx0 = sh.rx.load(Ordering::Relaxed);
        let flowing = Instant::now() + Duration::from_secs(10);
        while sh.rx.load(Ordering::Relaxed) < rx0 + 64 {
            assert!(Instant::now() < flowing, "crash {i}: no traffic before the cut");
            std::thread::sleep(Duration::from_millis(1));
        }
        let s = (next() % stages.len() as u64) as usize;
        let count = match stages[s] {
            Some(Stage::MessageRead | Stage::MessageApplied | Stage::CvqApplied) => 1,
            _ => 1 + next() % 40,
        };
        fault::arm(&name, stages[s], count);
        // A stage the driver does not reach soon (no message pending):
        // any point then.
        let soon = Instant::now() + Duration::from_millis(300);
        while !fault::fired(&name) && Instant::now() < soon {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !fault::fired(&name) {
            fault::arm(&name, None, 1);
        }
        let fired_by = Instant::now() + Duration::from_secs(3);
        while !fault::fired(&name) {
            assert!(Instant::now() < fired_by, "crash {i} never happened");
            std::thread::sleep(Duration::from_millis(1));
        }
        by_stage[s] += 1;
        let cut = Instant::now();
        let in_flight = sh.in_flight.load(Ordering::Relaxed);
        let lost_before = sh.lost.load(Ordering::Relaxed);
        assert!(running.crashed(cut + Duration::from_secs(3)), "crash {i}: the slow path did not end");
        running = restart(&model, &opts, &dir, cut + Duration::from_secs(5));
        let rx1 = sh.rx.load(Ordering::Relaxed);
        let back = Instant::now() + Duration::from_secs(15);
        while sh.rx.load(Ordering::Relaxed) <= rx1 {
            assert!(Instant::now() < back, "crash {i} at {:?}: traffic did not resume", stages[s]);
            std::thread::sleep(Duration::from_millis(1));
        }
        restarts.push(cut.elapsed());
        // Loss of this cut: what the driver gave up on since, measured when
        // the next cut comes (here: after the give-up window).
        std::thread::sleep(Duration::from_millis(5));
        let lost = sh.lost.load(Ordering::Relaxed).saturating_sub(lost_before);
        if lost > worst_loss.0 {
            worst_loss = (lost, in_flight);
        }
        assert!(lost <= 2 * WINDOW, "crash {i}: {lost} frames lost, {in_flight} were in flight");
    }
    stop.store(true, Ordering::Relaxed);
    let (mut d, mut flows, mut pairs) = driver.join().expect("driver thread");
    // Afterwards: a clean exchange, nothing corrupt, duplicated or
    // reordered, no used entry the driver did not have in flight.
    let end = Instant::now() + Duration::from_secs(10);
    for (f, q) in flows.iter_mut().zip(pairs.iter_mut()) {
        f.give_up();
        let target = f.next_tx + 200;
        while f.next_rx < target {
            assert!(Instant::now() < end, "pair {}: final exchange incomplete", f.pair);
            f.send(q);
            f.receive(q);
        }
    }
    let lost: u64 = flows.iter().map(|f| f.lost()).sum();
    let late: u64 = flows.iter().map(|f| f.late).sum();
    let rx: u64 = flows.iter().map(|f| f.rx).sum();
    for (f, q) in flows.iter().zip(pairs.iter()) {
        assert_eq!((f.corrupt, f.dup), (0, 0), "pair {}: integrity (corrupt, duplicated)", f.pair);
        let st = q.stats();
        assert_eq!((st.tx_errors, st.rx_errors), (0, 0), "pair {}: used entries the driver did not expect", f.pair);
    }
    assert_eq!(t.status().unwrap() & status::DEVICE_NEEDS_RESET, 0, "no NEEDS_RESET");
    let mut r = restarts.clone();
    r.sort();
    eprintln!(
        "reconnect: {crashes} crashes (per stage {by_stage:?}), {} control ops; {rx} frames received ({late} late), \
         {lost} lost in all (worst cut: {} lost with {} in flight), 0 corrupt, 0 duplicated; restart to traffic: \
         median {:?}, max {:?}",
        sh.ops.load(Ordering::Relaxed),
        worst_loss.0,
        worst_loss.1,
        r[r.len() / 2],
        r[r.len() - 1]
    );
    drop(pairs);
    d.reset().ok();
    drop(d);
    model.detach(&name).unwrap();
    running.stop().unwrap();
    assert!(!crate::persist::path_for(&dir.0, &name).exists(), "the log goes with the device");
}

/// The MAC and RX mode set over the control queue before a crash are still
/// in force after the reattach: frames to the old MAC stay filtered until
/// the driver sets it back.
#[test]
fn control_queue_state_survives_a_crash() {
    let _ = env_logger::builder().is_test(true).try_init();
    let name = format!("vdn-rcc-{}", std::process::id());
    let dir = Dir::new("ctrl");
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(10)));
    let opts = options(&name, 1);
    let running = NetDevice::create_logged(model.control(), opts.clone(), &dir.0).unwrap().start(ports(1)).unwrap();
    let t = model.attach_vhost_vdpa(&name).unwrap();
    let mut d = probe(t.clone());
    let mut pairs = d.take_pairs();
    let mut f = Flow::default();
    let exchange = |f: &mut Flow, q: &mut QueuePair, n: u64| {
        let target = f.next_tx + n;
        let end = Instant::now() + Duration::from_secs(5);
        while f.next_rx < target && Instant::now() < end {
            f.send_upto(q, target);
            f.receive(q);
        }
        f.next_rx >= target
    };
    assert!(exchange(&mut f, &mut pairs[0], 100));
    let ok = vn::VIRTIO_NET_OK as u8;
    assert_eq!(d.ctrl(vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_PROMISC as u8, &[0]).unwrap(), ok);
    assert_eq!(d.ctrl(vn::VIRTIO_NET_CTRL_MAC as u8, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8, &OTHER_MAC).unwrap(), ok);
    fault::arm(&name, Some(Stage::SlowLoop), 1);
    let start = Instant::now();
    assert!(running.crashed(start + Duration::from_secs(3)));
    let running = restart(&model, &opts, &dir, start + Duration::from_secs(5));
    let mut mac = [0u8; 6];
    t.read_config(0, &mut mac).unwrap();
    assert_eq!(mac, OTHER_MAC, "config space keeps the MAC set before the crash");
    assert!(!exchange(&mut f, &mut pairs[0], 20), "frames to the old MAC must stay filtered");
    assert_eq!(f.rx, 100, "nothing came back after the reattach");
    assert_eq!(d.ctrl(vn::VIRTIO_NET_CTRL_MAC as u8, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8, &DEV_MAC).unwrap(), ok);
    f.give_up();
    assert!(exchange(&mut f, &mut pairs[0], 100), "traffic after the MAC is set back");
    assert_eq!((f.corrupt, f.dup), (0, 0));
    let src = running.stats_source();
    drop(pairs);
    drop(d);
    model.detach(&name).unwrap();
    running.stop().unwrap();
    drop(src);
}

/// A log from another format version, or one for another device: a clear
/// error naming the problem, and the device is not opened.
#[test]
fn an_unusable_log_is_refused_with_a_reason() {
    let name = format!("vdn-rcv-{}", std::process::id());
    let dir = Dir::new("version");
    let model = KernelModel::new(ModelConfig::patched_7_3());
    let opts = options(&name, 1);
    let running = NetDevice::create_logged(model.control(), opts.clone(), &dir.0).unwrap().start(ports(1)).unwrap();
    let path = crate::persist::path_for(&dir.0, &name);
    running.keep().unwrap();
    // Another version.
    let mut b = std::fs::read(&path).unwrap();
    let saved = b.clone();
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = NetDevice::reattach(model.control(), opts.clone(), &dir.0).err().expect("refused");
    assert!(e.to_string().contains("format version 99; this binary reads version 1"), "{e}");
    // No log at all.
    std::fs::remove_file(&path).unwrap();
    let e = NetDevice::reattach(model.control(), opts.clone(), &dir.0).err().expect("refused");
    assert!(e.to_string().contains("no state log"), "{e}");
    // The right log: reattach, then stop for good (destroyed, log gone).
    std::fs::write(&path, &saved).unwrap();
    let running = NetDevice::reattach(model.control(), opts, &dir.0).unwrap().start(ports(1)).unwrap();
    running.stop().unwrap();
    assert!(!path.exists());
}

/// A reattached device resumes its rings where the driver's used index
/// says, even when the logged position lagged (a cut between publish and
/// log), and a gap beyond the queue size is a mismatch that stops the data
/// queues with NEEDS_RESET instead of resuming somewhere wrong.
#[test]
fn a_position_far_from_the_drivers_used_index_is_a_mismatch() {
    let name = format!("vdn-rcm-{}", std::process::id());
    let dir = Dir::new("mismatch");
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(10)));
    let opts = options(&name, 1);
    let running = NetDevice::create_logged(model.control(), opts.clone(), &dir.0).unwrap().start(ports(1)).unwrap();
    let t = model.attach_vhost_vdpa(&name).unwrap();
    let mut d = probe(t.clone());
    let mut pairs = d.take_pairs();
    let mut f = Flow::default();
    let end = Instant::now() + Duration::from_secs(5);
    while f.rx < 500 && Instant::now() < end {
        f.send(&mut pairs[0]);
        f.receive(&mut pairs[0]);
    }
    assert!(f.rx >= 500);
    running.keep().unwrap();
    // What the old process completed before it stopped is the driver's to
    // read; only frames after the reattach would show a queue running.
    while f.receive(&mut pairs[0]) > 0 {}
    // Move the logged TX position far from what the driver sees.
    {
        let log = crate::persist::StateLog::open(&dir.0, &name).unwrap().unwrap();
        let p = log.position(1).expect("tx position logged");
        log.set_position(
            1,
            Some(crate::persist::Position { last_avail: p.used.wrapping_sub(1000), used: p.used.wrapping_sub(1000) }),
        );
    }
    let running = NetDevice::reattach(model.control(), opts, &dir.0).unwrap().start(ports(1)).unwrap();
    assert!(t.status().unwrap() & status::DEVICE_NEEDS_RESET != 0, "the driver is told to reset");
    f.give_up();
    let rx = f.rx;
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        f.send(&mut pairs[0]);
        f.receive(&mut pairs[0]);
    }
    assert_eq!(f.rx, rx, "no queue runs from a mismatched log");
    drop(pairs);
    drop(d);
    model.detach(&name).unwrap();
    running.stop().unwrap();
}
