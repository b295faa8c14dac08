//! Queues enabled and disabled after DRIVER_OK (issue 9, item 1), in the
//! orders the three real drivers use, on the kernels with and without
//! VDUSE_F_QUEUE_READY:
//! - the kernel's virtio_vdpa: every queue ready before DRIVER_OK;
//! - QEMU's vhost-vdpa: DRIVER_OK, then the control queue, the state
//!   replayed through it (MAC_ADDR_SET, VQ_PAIRS_SET) and answered, then the
//!   data queues;
//! - DPDK's virtio-user: pair 0 and the control queue first, the other
//!   pairs after VQ_PAIRS_SET.
//!
//! On 7.3 the device hears of a late queue through SET_VQ_READY; on 7.2 and
//! 6.12 it finds it by polling VQ_GET_INFO. A queue disabled after DRIVER_OK
//! stops where it is (GET_VQ_STATE shows that position) while the other
//! pairs carry traffic, and resumes from there when enabled again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vduse_net::driver::net::{EnableOrder, NetDriver, NetDriverConfig, QueuePair};
use vduse_net::driver::DriverTransport;
use vduse_net::vduse::model::ModelConfig;
use vduse_net::vduse::Request;

const T: Duration = Duration::from_secs(5);

/// 7.2 with the control-queue refusal removed: a control queue, but no
/// VDUSE_F_QUEUE_READY (the device is never told when a queue gets ready).
fn patched_7_2() -> ModelConfig {
    ModelConfig { refused_net_features: 0, ..ModelConfig::kernel_7_2() }
}

fn order(o: EnableOrder) -> NetDriverConfig {
    NetDriverConfig { enable_order: o, ..driver_config() }
}

/// The SET_VQ_READY(true) messages before and after DRIVER_OK, in order.
fn ready_messages(rig: &Rig) -> (Vec<u32>, Vec<u32>) {
    let log: Vec<Request> = rig.model.message_log(&rig.name).into_iter().map(|m| m.request).collect();
    let ok = log.iter().position(|r| *r == Request::SetStatus { status: 0x0f }).expect("DRIVER_OK sent");
    let ready = |r: &[Request]| {
        r.iter()
            .filter_map(|m| if let Request::SetVqReady { index, ready: true } = m { Some(*index) } else { None })
            .collect()
    };
    (ready(&log[..ok]), ready(&log[ok..]))
}

/// Checked traffic on every pair.
fn traffic(pairs: &mut [QueuePair]) {
    for (i, q) in pairs.iter_mut().enumerate() {
        let mut f = Flow::new(i as u16);
        assert!(f.exchange(q, 100, T), "pair {i} carries traffic: {f:?}");
        assert!(f.clean(), "pair {i}: {f:?}");
    }
}

fn run_order(name: &str, kernel: ModelConfig, pairs: u16, o: EnableOrder) -> (Rig, NetDriver, Vec<QueuePair>) {
    let rig = Rig::with(device_options(name, pairs), kernel);
    let mut d = rig.probe(order(o));
    let mut q = d.take_pairs();
    assert_eq!(q.len(), d.pairs() as usize);
    traffic(&mut q);
    assert!(!rig.needs_reset());
    (rig, d, q)
}

#[test]
fn virtio_vdpa_order_every_queue_ready_before_driver_ok() {
    let (rig, d, q) = run_order("qe-vdpa", ModelConfig::patched_7_3(), 2, EnableOrder::VirtioVdpa);
    assert_eq!(ready_messages(&rig), (vec![0, 1, 2, 3, 4], vec![]));
    assert_eq!(rig.stats().slow_path.late_enables, 0);
    drop((q, d));
    rig.finish();
}

#[test]
fn qemu_order_on_7_3_set_vq_ready_after_driver_ok_cvq_first() {
    let (rig, d, q) = run_order("qe-qemu73", ModelConfig::patched_7_3(), 2, EnableOrder::Qemu);
    assert_eq!(d.pairs(), 2);
    // The control queue first, then the data queues, all after DRIVER_OK.
    assert_eq!(ready_messages(&rig), (vec![], vec![4, 0, 1, 2, 3]));
    let sp = rig.stats().slow_path;
    assert_eq!(sp.late_enables, 5);
    // MAC_ADDR_SET and VQ_PAIRS_SET were answered OK (the driver enabled the
    // data queues only after both replies), and the second pair is active.
    assert_eq!((sp.ctrl_ok, sp.ctrl_err, sp.failed_replies), (2, 0, 0));
    assert!(rig.stats().pairs[1].rx_frames >= 100);
    drop((q, d));
    rig.finish();
}

#[test]
fn qemu_order_on_7_2_queues_found_by_polling_vq_get_info() {
    let (rig, d, q) = run_order("qe-qemu72", patched_7_2(), 2, EnableOrder::Qemu);
    assert_eq!(d.pairs(), 2);
    // No message ever tells the device; it starts the queues it sees ready.
    assert_eq!(ready_messages(&rig), (vec![], vec![]));
    let sp = rig.stats().slow_path;
    assert_eq!((sp.set_vq_ready, sp.late_enables), (0, 5));
    assert_eq!((sp.ctrl_ok, sp.ctrl_err, sp.failed_replies), (2, 0, 0));
    drop((q, d));
    rig.finish();
}

#[test]
fn qemu_order_on_6_12_api_0_without_control_queue() {
    let (rig, d, q) = run_order("qe-qemu612", ModelConfig::kernel_6_12(), 1, EnableOrder::Qemu);
    assert!(d.cvq_index().is_none(), "6.12 refuses the control queue");
    let sp = rig.stats().slow_path;
    assert_eq!((sp.set_vq_ready, sp.late_enables), (0, 2));
    drop((q, d));
    rig.finish();
}

#[test]
fn virtio_user_order_pairs_after_vq_pairs_set() {
    for (name, kernel, messages) in [("qe-vu73", ModelConfig::patched_7_3(), true), ("qe-vu72", patched_7_2(), false)] {
        let (rig, d, q) = run_order(name, kernel, 3, EnableOrder::VirtioUser);
        assert_eq!(d.pairs(), 3);
        let want = if messages { (vec![0, 1, 6], vec![2, 3, 4, 5]) } else { (vec![], vec![]) };
        assert_eq!(ready_messages(&rig), want, "{name}");
        let sp = rig.stats().slow_path;
        assert_eq!((sp.late_enables, sp.ctrl_ok, sp.failed_replies), (4, 1, 0), "{name}");
        drop((q, d));
        rig.finish();
    }
}

/// Pair 0 exchanges checked frames in its own thread until told to stop.
struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Flow, QueuePair)>>,
}

impl Background {
    fn start(mut q: QueuePair) -> Background {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut f = Flow::new(0);
            while !s.load(Ordering::Relaxed) {
                assert!(f.exchange(&mut q, 16, T), "pair 0 stalled: {f:?}");
            }
            (f, q)
        });
        Background { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> (Flow, QueuePair) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("pair 0 traffic")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the device reports with GET_VQ_STATE (VHOST_GET_VRING_BASE): on
/// these split rings the avail index, in the low 16 bits.
fn base(t: &Arc<dyn DriverTransport>, vq: u32) -> u16 {
    t.vring_base(vq).expect("GET_VQ_STATE") as u16
}

#[test]
fn disable_and_reenable_under_traffic_keeps_the_position() {
    let rig = Rig::new("qe-toggle", 2);
    let mut d = rig.probe(driver_config());
    let t = d.transport().clone();
    let mut q = d.take_pairs();
    let mut p1 = q.pop().unwrap();
    let bg = Background::start(q.pop().unwrap());
    let mut f = Flow::new(1);
    assert!(f.exchange(&mut p1, 50, T), "{f:?}");
    let before = rig.stats().pairs[0].rx_frames;

    for round in 0..4u64 {
        // Frames in flight when the queues stop: some are through, some not.
        let sent = f.send(&mut p1, 24);
        assert!(sent > 0);
        d.set_pair_enabled(1, false).unwrap();
        // Stopped at a chain boundary: the position stands still...
        let (rx0, tx0) = (base(&t, 2), base(&t, 3));
        p1.post_rx();
        f.send(&mut p1, 8);
        p1.kick_tx().unwrap();
        let quiet_from = rig.stats().pairs[0].rx_frames;
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!((base(&t, 2), base(&t, 3)), (rx0, tx0), "round {round}: a disabled queue moved");
        // ...and it is exactly what the driver saw used (every chain the
        // device took before stopping was returned).
        f.receive(&mut p1);
        p1.reclaim_tx();
        assert_eq!(p1.raw_tx().last_used(), tx0, "round {round}: TX used vs GET_VQ_STATE");
        assert_eq!(p1.raw_rx().last_used(), rx0, "round {round}: RX used vs GET_VQ_STATE");
        assert!(f.next_rx < f.next_tx, "round {round}: frames wait in the disabled pair");
        // Pair 0 kept moving while pair 1 was off.
        assert!(wait_for(T, || rig.stats().pairs[0].rx_frames > quiet_from + 16), "round {round}: pair 0 stalled");
        d.set_pair_enabled(1, true).unwrap();
        // Everything posted meanwhile arrives once, in order.
        assert!(f.drain(&mut p1, T), "round {round}: {f:?}");
        assert!(f.clean(), "round {round}: {f:?}");
        assert!(f.exchange(&mut p1, 20, T), "round {round}: {f:?}");
    }
    let (f0, p0) = bg.finish();
    assert!(f0.clean(), "pair 0: {f0:?}");
    assert!(rig.stats().pairs[0].rx_frames > before + 100, "pair 0 carried traffic throughout");
    assert!(f.clean(), "{f:?}");
    let st = rig.stats();
    assert_eq!(st.pairs[1].queue_errors + st.pairs[0].queue_errors, 0);
    // 4 rounds x 2 queues disabled and enabled again.
    assert_eq!((st.slow_path.set_vq_ready, st.slow_path.late_enables, st.slow_path.failed_replies), (16 + 5, 8, 0));
    drop((p0, p1, d));
    rig.finish();
}

#[test]
fn the_control_queue_disabled_and_reenabled_keeps_its_position() {
    let rig = Rig::new("qe-cvq", 1);
    let mut d = rig.probe(NetDriverConfig { ctrl_timeout: Duration::from_millis(300), ..driver_config() });
    let t = d.transport().clone();
    let cvq = d.cvq_index().unwrap();
    let set_mac = |d: &mut NetDriver, last: u8| d.ctrl(1, 1, &[0x02, 0, 0, 0, 0, last]);
    let config_mac = || {
        let mut m = [0u8; 6];
        t.read_config(0, &mut m).unwrap();
        m[5]
    };
    assert_eq!(set_mac(&mut d, 0x42).unwrap(), 0);
    assert_eq!(base(&t, cvq), 1);
    t.set_vring_enable(cvq, false).unwrap();
    assert_eq!(base(&t, cvq), 1, "position kept while disabled");
    // A command posted now is not served...
    let e = set_mac(&mut d, 0x43).unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!((base(&t, cvq), config_mac()), (1, 0x42));
    // ...until the queue is enabled again: it resumes where it stopped, so
    // the waiting command is served once, then the next one.
    t.set_vring_enable(cvq, true).unwrap();
    // The device applies a command (the config MAC) before it publishes the
    // completion: wait for both, or the next command finds the queue busy.
    assert!(
        wait_for(T, || config_mac() == 0x43 && d.raw_cvq().unwrap().used_ready()),
        "the waiting command was served"
    );
    assert_eq!(set_mac(&mut d, 0x44).unwrap(), 0);
    assert_eq!((base(&t, cvq), config_mac()), (3, 0x44));
    let st = rig.stats().slow_path;
    assert_eq!((st.ctrl_ok, st.ctrl_err, st.failed_replies, st.late_enables), (3, 0, 0, 1));
    drop(d);
    rig.finish();
}

#[test]
fn a_pair_enabled_late_joins_while_another_carries_traffic() {
    for (name, kernel) in [("qe-late73", ModelConfig::patched_7_3()), ("qe-late72", patched_7_2())] {
        let rig = Rig::with(device_options(name, 2), kernel);
        let mut d = rig.probe(NetDriverConfig { set_mq_pairs: false, ..order(EnableOrder::VirtioUser) });
        let mut q = d.take_pairs();
        let mut p1 = q.pop().unwrap();
        let bg = Background::start(q.pop().unwrap());
        // Pair 1 is not enabled: frames wait on its ring.
        let mut f = Flow::new(1);
        f.send(&mut p1, 16);
        assert_eq!(f.expect_silence(&mut p1, Duration::from_millis(150)), 0, "{name}");
        d.set_queue_pairs(2).unwrap();
        d.set_pair_enabled(1, true).unwrap();
        assert!(f.drain(&mut p1, T), "{name}: {f:?}");
        assert!(f.exchange(&mut p1, 100, T) && f.clean(), "{name}: {f:?}");
        let (f0, p0) = bg.finish();
        assert!(f0.clean() && f0.rx > 0, "{name}: pair 0 {f0:?}");
        assert_eq!(rig.stats().slow_path.late_enables, 2, "{name}");
        drop((p0, p1, d));
        rig.finish();
    }
}
