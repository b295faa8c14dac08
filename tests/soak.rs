//! Soak: a device with 2 queue pairs on the embedded model carries checked
//! traffic for a long time (VDUSE_NET_SOAK_SECS, default 600) while random
//! control events hit it: whole-ASID IOTLB invalidations in both address
//! spaces, resets with vq-group ASID switches, suspend + GET_VQ_STATE +
//! restore, and queue-pair changes through the control queue.
//!
//! Every frame is checked (sequence and payload); the run fails on any
//! loss, corruption, duplicate or queue error, and on growth of the
//! process's RSS, open fds or memory mappings between the end of the
//! warm-up and the end. Ignored by default (it is long): run `tools/soak`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vduse_net::driver::net::{NetDriver, QueuePair};
use vduse_net::driver::{DmaMemory, DriverTransport};
use vduse_net::uapi::vduse::VDUSE_REQ_RESULT_OK;
use vduse_net::uapi::vhost_vdpa::VHOST_ACCESS_RW;
use vduse_net::uapi::virtio::status;
use virtio_bindings::bindings::virtio_net as vn;

const T: Duration = Duration::from_secs(10);
const EXTRA_IOVA: u64 = 0x7000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resources {
    rss_kib: u64,
    fds: usize,
    maps: usize,
}

fn resources() -> Resources {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("rss");
    let fds = std::fs::read_dir("/proc/self/fd").expect("fd dir").count();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps").lines().count();
    Resources { rss_kib: pages * 4, fds, maps }
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

struct Soak {
    rig: Rig,
    t: Arc<dyn DriverTransport>,
    d: NetDriver,
    q: Vec<QueuePair>,
    flows: Vec<Flow>,
    /// Queue pairs in use (MQ).
    active: usize,
    extra: DmaMemory,
    counts: [u64; 5],
    /// Control messages the device answered, all OK.
    messages: u64,
}

impl Soak {
    fn traffic(&mut self, n: u64) {
        for i in 0..self.active {
            let f = &mut self.flows[i];
            assert!(f.exchange(&mut self.q[i], n, T), "pair {i}: {f:?}");
            assert!(f.clean(), "pair {i}: {f:?}");
        }
    }

    fn drain(&mut self) {
        for i in 0..self.active {
            assert!(self.flows[i].drain(&mut self.q[i], T), "pair {i}: {:?}", self.flows[i]);
        }
    }

    fn restart(&mut self) {
        let st = reinit(&mut self.d, &mut self.q, |_| 0);
        assert_eq!(st & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET), status::DRIVER_OK, "status {st:#x}");
        self.d.set_queue_pairs(2).expect("VQ_PAIRS_SET 2");
        self.active = 2;
        for p in self.q.iter_mut() {
            p.kick_tx().unwrap();
            p.kick_rx().unwrap();
        }
    }

    /// Map and unmap an unrelated page in `asid`: each is an UPDATE_IOTLB
    /// of the whole ASID, so the live mappings are invalidated and must be
    /// resolved again under traffic.
    fn invalidations(&mut self, rng: &mut Rng) {
        for _ in 0..1 + rng.below(8) {
            let asid = rng.below(2) as u32;
            self.t.iotlb_map(asid, EXTRA_IOVA, &self.extra, 0, 4096, VHOST_ACCESS_RW).expect("map");
            self.traffic(16);
            self.t.iotlb_unmap(asid, EXTRA_IOVA, 4096).expect("unmap");
            self.traffic(16);
        }
        // The control queue (ASID 1) works after its mappings were dropped.
        let (class, cmd) = (vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_ALLMULTI as u8);
        assert_eq!(self.d.ctrl(class, cmd, &[rng.below(2) as u8]).expect("ctrl"), 0);
    }

    /// Reset, move each pair's vq group to a random ASID (the data memory
    /// is mapped in both), and start again over the same rings.
    fn reset_and_switch(&mut self, rng: &mut Rng) {
        self.drain();
        self.t.set_status(0).expect("reset");
        for g in 0..2 {
            self.t.set_group_asid(g, rng.below(2) as u32).expect("SET_GROUP_ASID after reset");
        }
        self.restart();
    }

    fn suspend_and_restore(&mut self) {
        self.drain();
        self.t.suspend().expect("suspend");
        for p in self.q.iter_mut() {
            let (rx, tx) = (p.rx_vq(), p.tx_vq());
            assert_eq!(self.t.vring_base(tx).unwrap(), p.raw_tx().device_base(), "TX state");
            assert_eq!(self.t.vring_base(rx).unwrap(), p.raw_rx().device_base(), "RX state");
        }
        self.restart();
    }

    fn pairs_change(&mut self) {
        self.drain();
        self.d.set_queue_pairs(1).expect("VQ_PAIRS_SET 1");
        self.active = 1;
        self.traffic(64);
        self.d.set_queue_pairs(2).expect("VQ_PAIRS_SET 2");
        self.active = 2;
    }

    fn event(&mut self, rng: &mut Rng) {
        let e = rng.below(5) as usize;
        self.counts[e] += 1;
        match e {
            0 | 1 => self.invalidations(rng),
            2 => self.reset_and_switch(rng),
            3 => self.suspend_and_restore(),
            _ => self.pairs_change(),
        }
        self.traffic(64);
        self.check_messages();
    }

    /// Every control message since the last check was answered OK. Taking
    /// the model's log also keeps it from growing for the whole soak.
    fn check_messages(&mut self) {
        let log = self.rig.model.take_message_log(&self.rig.name).expect("no message in flight between events");
        for m in &log {
            assert_eq!(m.result, Some(VDUSE_REQ_RESULT_OK), "{m:?}");
        }
        self.messages += log.len() as u64;
    }
}

#[test]
#[ignore = "long: run tools/soak"]
fn soak() {
    let _s = serial();
    let secs: u64 = std::env::var("VDUSE_NET_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let seed: u64 = std::env::var("VDUSE_NET_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let rig = Rig::new("soak", 2);
    let t = rig.transport();
    let mut d = rig.probe(driver_config());
    assert_eq!((d.pairs(), d.cvq_asid()), (2, 1));
    // The data memory in ASID 1 too (its IOVAs do not meet the control
    // queue's), so a pair's group can move there.
    let (mem, iova) = (d.data_mem().clone(), d.config().data_iova);
    t.iotlb_map(1, iova, &mem, 0, mem.len(), VHOST_ACCESS_RW).expect("data in ASID 1");
    let q = d.take_pairs();
    let mut s = Soak {
        rig,
        t,
        d,
        q,
        flows: vec![Flow::new(0), Flow::new(1)],
        active: 2,
        extra: DmaMemory::new("soak-extra", 4096).unwrap(),
        counts: [0; 5],
        messages: 0,
    };
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    // Warm-up: every kind of event once, so lazily created resources exist.
    s.traffic(200);
    s.invalidations(&mut rng);
    s.reset_and_switch(&mut rng);
    s.suspend_and_restore();
    s.pairs_change();
    s.traffic(200);
    s.check_messages();
    let first = resources();
    eprintln!("soak: {secs} s, seed {seed}; after warm-up: {first:?}");
    let mut next_report = Instant::now() + Duration::from_secs(60);
    let mut events = 0u64;
    while Instant::now() < deadline {
        s.traffic(128 + rng.below(512));
        s.event(&mut rng);
        events += 1;
        assert_eq!((s.rig.queue_errors(0), s.rig.queue_errors(1)), (0, 0), "queue errors after {events} events");
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(60);
            let frames: u64 = s.flows.iter().map(|f| f.rx).sum();
            eprintln!(
                "soak: {:>4} s, {events} events, {frames} frames checked, {:?}",
                start.elapsed().as_secs(),
                resources()
            );
        }
    }
    s.drain();
    let last = resources();
    let frames: u64 = s.flows.iter().map(|f| f.rx).sum();
    let integrity: u64 = s.flows.iter().map(|f| f.lost + f.corrupt + f.dup_or_reordered + f.wrong_pair).sum();
    eprintln!(
        "soak: done after {} s: {events} events (invalidation bursts {}, reset+ASID switches {}, suspend+restore {}, \
         pair changes {}), {frames} frames checked, {integrity} integrity errors",
        start.elapsed().as_secs(),
        s.counts[0] + s.counts[1],
        s.counts[2],
        s.counts[3],
        s.counts[4]
    );
    eprintln!(
        "soak: resources start -> end: RSS {} -> {} KiB, fds {} -> {}, mappings {} -> {}",
        first.rss_kib, last.rss_kib, first.fds, last.fds, first.maps, last.maps
    );
    eprintln!("soak: {} control messages, all answered OK", s.messages);
    let warnings = logged();
    assert!(warnings.is_empty(), "warnings or errors logged: {warnings:#?}");
    assert_eq!(integrity, 0, "{:?}", s.flows);
    for f in &s.flows {
        assert!(f.clean(), "{f:?}");
    }
    assert!(frames > 0);
    // Flat: fds and mappings back where they were (a little slack for a
    // mapping resolved but not yet reclaimed), RSS within 16 MiB.
    assert!(last.fds <= first.fds + 2, "fds grew: {first:?} -> {last:?}");
    assert!(last.maps <= first.maps + 8, "mappings grew: {first:?} -> {last:?}");
    assert!(last.rss_kib <= first.rss_kib + 16 * 1024, "RSS grew: {first:?} -> {last:?}");
    let stats = s.rig.stats();
    assert_eq!(stats.slow_path.failed_replies, 0, "{:?}", stats.slow_path);
    drop(s.q);
    drop(s.d);
    s.rig.finish();
}
