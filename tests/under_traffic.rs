//! Control-plane events while frames flow, with integrity checks before
//! and after each: IOTLB updates, reset + group ASID changes + a fresh
//! DRIVER_OK, and suspend + GET_VQ_STATE. Every test runs on both ring
//! formats (`split::NAME`, `packed::NAME`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use vduse_net::driver::net::{NetDriver, NetDriverConfig, QueuePair};
use vduse_net::driver::DmaMemory;
use vduse_net::net::features;
use vduse_net::uapi::vhost_vdpa::VHOST_ACCESS_RW;
use vduse_net::uapi::virtio::status;
use vduse_net::vduse::model::ModelConfig;
use vduse_net::vduse::Request;
use virtio_bindings::bindings::virtio_net as vn;

const T: Duration = Duration::from_secs(5);

/// Traffic on one pair in its own thread until `stop` (or a burst not
/// coming back within `patience`); every frame checked.
fn background(q: QueuePair, f: Flow, stop: Arc<AtomicBool>, patience: Duration) -> JoinHandle<(QueuePair, Flow)> {
    background_counted(q, f, stop, patience, Arc::new(AtomicU64::new(0)))
}

/// [`background`], storing the frames received so far in `got` after each
/// exchange, for a test that must see the flow running before it acts.
fn background_counted(
    mut q: QueuePair,
    mut f: Flow,
    stop: Arc<AtomicBool>,
    patience: Duration,
    got: Arc<AtomicU64>,
) -> JoinHandle<(QueuePair, Flow)> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if !f.exchange(&mut q, 64, patience) {
                break;
            }
            got.store(f.next_rx, Ordering::Relaxed);
        }
        (q, f)
    })
}

/// Map the data memory in ASID 0 as separate regions: each ring, each
/// queue's buffers, the spare page. Done over a reset (no DRIVER_OK), so
/// the device never sees the data memory unmapped while it may use it.
/// Returns the (offset, len) of every region.
fn split_data_mapping(d: &mut NetDriver, q: &mut [QueuePair]) -> Vec<(usize, usize)> {
    let t = d.transport().clone();
    let mem = d.data_mem().clone();
    let iova = d.config().data_iova;
    let mut cuts = vec![0];
    for p in q.iter_mut() {
        let (rx_buf, tx_buf) = (p.rx_slot_offset(0), p.tx_slot_offset(0));
        cuts.extend([p.raw_rx().offset(), rx_buf, p.raw_tx().offset(), tx_buf]);
    }
    cuts.push(d.scratch().0);
    cuts.push(mem.len());
    cuts.sort();
    cuts.dedup();
    t.set_status(0).unwrap();
    t.iotlb_unmap(0, iova, mem.len() as u64).unwrap();
    let regions: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    for &(off, len) in &regions {
        t.iotlb_map(0, iova + off as u64, &mem, off, len, VHOST_ACCESS_RW).unwrap();
    }
    regions
}

/// (a) UPDATE_IOTLB under traffic.
///
/// Every IOTLB update of an ASID reaches the device as UPDATE_IOTLB for
/// that whole ASID, so mapping and unmapping an unrelated region invalidates
/// the live data mapping too: the poll threads must re-resolve it under
/// full traffic without losing or corrupting a frame. Unmapping memory the
/// device is using is different: the rings are read continuously and posted
/// buffers may be written at any time, so a driver may only take away
/// memory the device does not own. The test therefore maps rings and
/// buffers separately, quiesces pair 1 (everything sent came back, so the
/// device holds no TX chain and gets no frame for RX), invalidates and
/// re-maps pair 1's buffers while pair 0 keeps running, and resumes pair 1.
/// Finally a TX chain pointing into an unmapped buffer region must stop the
/// queue instead of reading it.
fn iotlb_invalidate_and_remap_under_traffic(fmt: RingFormat) {
    let rig = Rig::new_fmt("ut-iotlb", 2, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut q = d.take_pairs();
    let regions = split_data_mapping(&mut d, &mut q);
    assert!(regions.len() >= 9);
    let st = reinit(&mut d, &mut q, |_| 0);
    assert_eq!(st & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET), status::DRIVER_OK);
    d.set_queue_pairs(2).unwrap();
    let t = rig.transport();
    let iova = d.config().data_iova;
    let mem = d.data_mem().clone();
    let mut q1 = q.pop().unwrap();
    let q0 = q.pop().unwrap();
    let mut f1 = Flow::new(1);
    assert!(f1.exchange(&mut q1, 200, T) && f1.clean(), "{f1:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let bg = background(q0, Flow::new(0), stop.clone(), T);
    let before = rig.stats().slow_path.update_iotlb;

    // Whole-ASID invalidations while both pairs run.
    let extra = DmaMemory::new("ut-extra", 4096).unwrap();
    for _ in 0..20 {
        t.iotlb_map(0, 0x7000_0000, &extra, 0, 4096, VHOST_ACCESS_RW).unwrap();
        assert!(f1.exchange(&mut q1, 32, T), "{f1:?}");
        t.iotlb_unmap(0, 0x7000_0000, 4096).unwrap();
        assert!(f1.exchange(&mut q1, 32, T), "{f1:?}");
    }
    assert!(rig.stats().slow_path.update_iotlb >= before + 40);

    // Pair 1's buffers: quiesce, invalidate, re-map the same memory, resume.
    let bufs: Vec<(usize, usize)> = regions
        .iter()
        .copied()
        .filter(|&(off, _)| off == q1.rx_slot_offset(0) || off == q1.tx_slot_offset(0))
        .collect();
    assert_eq!(bufs.len(), 2);
    for round in 0..5 {
        assert!(f1.drain(&mut q1, T), "round {round}: {f1:?}");
        for &(off, len) in &bufs {
            t.iotlb_unmap(0, iova + off as u64, len as u64).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
        for &(off, len) in &bufs {
            t.iotlb_map(0, iova + off as u64, &mem, off, len, VHOST_ACCESS_RW).unwrap();
        }
        assert!(f1.exchange(&mut q1, 300, T), "round {round}: {f1:?}");
        assert!(f1.clean(), "round {round}: {f1:?}");
    }
    assert_eq!((rig.queue_errors(0), rig.queue_errors(1)), (0, 0));
    assert!(!rig.needs_reset());

    // A chain into unmapped buffers: stopped, never read.
    assert!(f1.drain(&mut q1, T));
    let (off, len) = bufs.iter().copied().find(|&(o, _)| o == q1.tx_slot_offset(0)).unwrap();
    t.iotlb_unmap(0, iova + off as u64, len as u64).unwrap();
    assert_eq!(f1.send(&mut q1, 1), 1);
    assert!(rig.wait_queue_errors(1, 1), "TX from unmapped memory stopped the queue");
    assert!(wait_for(T, || rig.needs_reset()));
    assert_eq!(f1.expect_silence(&mut q1, Duration::from_millis(50)), 0);

    stop.store(true, Ordering::Relaxed);
    let (q0, f0) = bg.join().unwrap();
    assert!(f0.next_rx > 1000, "pair 0 ran throughout: {f0:?}");
    assert!(f0.clean(), "{f0:?}");
    assert_eq!(rig.queue_errors(0), 0);
    assert_eq!(rig.stats().slow_path.failed_replies, 0);
    drop((q0, q1));
    drop(d);
    rig.finish();
}

/// (b) A reset while frames flow, then group ASID changes (refused while
/// DRIVER_OK is set, accepted after the reset) and a fresh DRIVER_OK by a
/// new driver instance; the control queue works in its new ASID and data
/// flows cleanly again.
fn reset_then_asid_changes_and_fresh_driver_ok(fmt: RingFormat) {
    let rig = Rig::new_fmt("ut-reset", 2, fmt);
    let t = rig.transport();
    let mut d = rig.probe(driver_config_fmt(fmt));
    assert_eq!(d.cvq_asid(), 1);
    // Refused while DRIVER_OK is set (kernels 7.x; the model too).
    let e = t.set_group_asid(2, 0).unwrap_err();
    assert_eq!(e.errno(), Some(nix::errno::Errno::EBUSY));
    let mut q = d.take_pairs();
    let stop = Arc::new(AtomicBool::new(false));
    let q1 = q.pop().unwrap();
    // Frames lost to the reset end the loop quickly.
    let got = Arc::new(AtomicU64::new(0));
    let bg = background_counted(q1, Flow::new(1), stop.clone(), Duration::from_millis(200), got.clone());
    let mut f0 = Flow::new(0);
    assert!(f0.exchange(&mut q[0], 500, T) && f0.clean());
    // The reset must come while pair 1 runs too: on a loaded machine its
    // thread once had not received a frame by the end of pair 0's 500.
    assert!(wait_for(T, || got.load(Ordering::Relaxed) > 0), "pair 1's flow never ran");
    // Reset under traffic.
    d.reset().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (q1, f1) = bg.join().unwrap();
    // Frames in flight at the reset may be lost; none may be damaged,
    // duplicated or reordered.
    assert_eq!((f1.corrupt, f1.dup_or_reordered, f1.wrong_pair, f1.forbidden_seen), (0, 0, 0, 0), "{f1:?}");
    assert!(f1.next_rx > 0);
    drop((q, q1));
    drop(d);
    assert_eq!(rig.status(), 0);

    // After the reset: the control group back to ASID 0, the data group
    // to ASID 1 and back, as a VMM re-plans its address spaces.
    let log_start = rig.model.message_log(&rig.name).len();
    t.set_group_asid(2, 0).unwrap();
    t.set_group_asid(0, 1).unwrap();
    t.set_group_asid(0, 0).unwrap();
    let seen: Vec<Request> = rig.model.message_log(&rig.name)[log_start..].iter().map(|m| m.request).collect();
    assert_eq!(
        seen,
        vec![
            Request::SetVqGroupAsid { group: 2, asid: 0 },
            Request::SetVqGroupAsid { group: 0, asid: 1 },
            Request::SetVqGroupAsid { group: 0, asid: 0 },
        ]
    );

    // A fresh driver keeps the control queue in ASID 0 with the data.
    let mut d = rig.probe(NetDriverConfig { cvq_asid: Some(0), ..driver_config_fmt(fmt) });
    assert_eq!(d.cvq_asid(), 0);
    assert_eq!(d.pairs(), 2, "VQ_PAIRS_SET through the CVQ in ASID 0");
    assert!(t.set_group_asid(2, 1).is_err(), "refused while DRIVER_OK");
    let (rx, allmulti) = (vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_ALLMULTI as u8);
    assert_eq!(d.ctrl(rx, allmulti, &[1]).unwrap(), 0);
    let mut q = d.take_pairs();
    for (i, p) in q.iter_mut().enumerate() {
        let mut f = Flow::new(i as u16);
        assert!(f.exchange(p, 500, T) && f.clean(), "{f:?}");
    }
    drop(q);
    drop(d);

    // And once more with the default plan: control queue in ASID 1.
    let mut d = rig.probe(driver_config_fmt(fmt));
    assert_eq!(d.cvq_asid(), 1);
    assert_eq!(d.ctrl(rx, allmulti, &[0]).unwrap(), 0);
    let mut q = d.take_pairs();
    for (i, p) in q.iter_mut().enumerate() {
        let mut f = Flow::new(i as u16);
        assert!(f.exchange(p, 500, T) && f.clean(), "{f:?}");
    }
    assert!(!rig.needs_reset());
    assert_eq!((rig.queue_errors(0), rig.queue_errors(1)), (0, 0));
    assert_eq!(rig.stats().slow_path.failed_replies, 0);
    drop(q);
    drop(d);
    rig.finish();
}

/// (c) SUSPEND while frames flow: processing stops at a chain boundary,
/// GET_VQ_STATE reports exactly where each queue stopped (the used index
/// the device published; packed: the avail and used positions with their
/// wrap counters, both at the last used descriptor published), nothing
/// moves while suspended, and a reset plus re-initialisation from those
/// positions (what a VMM does after a migration) continues every stream
/// without loss, duplicates or damage.
fn suspend_and_vq_state_under_traffic(fmt: RingFormat) {
    suspend_and_vq_state(fmt, false)
}

/// The same with VIRTIO_F_IN_ORDER: TX runs come back with one used entry
/// per burst, and the positions still agree on both sides.
fn suspend_and_vq_state_in_order(fmt: RingFormat) {
    suspend_and_vq_state(fmt, true)
}

fn suspend_and_vq_state(fmt: RingFormat, in_order: bool) {
    let name = if in_order { "ut-susp-io" } else { "ut-susp" };
    let rig = Rig::with_fmt(offering_in_order(device_options(name, 2), in_order), ModelConfig::patched_7_3(), fmt);
    let t = rig.transport();
    let mut d = rig.probe(driver_config_in_order(fmt, in_order));
    assert_eq!(d.features() & features::IN_ORDER != 0, in_order, "IN_ORDER negotiated as asked");
    let mut q = d.take_pairs();
    let mut flows = vec![Flow::new(0), Flow::new(1)];
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        assert!(f.exchange(p, 300, T) && f.clean());
    }
    // Frames in flight on both pairs, then suspend.
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        f.send(p, 48);
    }
    t.suspend().unwrap();
    for p in q.iter_mut() {
        let (rx, tx) = (p.rx_vq(), p.tx_vq());
        let (rx_base, tx_base) = (p.raw_rx().device_base(), p.raw_tx().device_base());
        assert_eq!(t.vring_base(tx).unwrap(), tx_base, "TX vq {tx}: state = chains consumed and published");
        assert_eq!(t.vring_base(rx).unwrap(), rx_base, "RX vq {rx}");
        let tx_used = p.raw_tx().used_idx();
        assert!(tx_used <= p.raw_tx().avail_idx());
        if fmt == RingFormat::Packed {
            // Both halves agree: the device completed every chain it took.
            let b = t.vring_base(tx).unwrap();
            assert_eq!(b & 0xffff, b >> 16);
        }
    }
    // Nothing moves while suspended (kicks are dropped, threads parked).
    let used: Vec<(u16, u16)> = q.iter_mut().map(|p| (p.raw_rx().used_idx(), p.raw_tx().used_idx())).collect();
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        f.send(p, 4);
        p.kick_tx().unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let now: Vec<(u16, u16)> = q.iter_mut().map(|p| (p.raw_rx().used_idx(), p.raw_tx().used_idx())).collect();
    assert_eq!(now, used);
    // Take what was delivered before the suspend; then the driver's view
    // (last_used) equals the device's state.
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        while f.receive(p) > 0 {}
        p.reclaim_tx();
        assert_eq!(t.vring_base(p.rx_vq()).unwrap(), p.raw_rx().restart_base());
        assert_eq!(t.vring_base(p.tx_vq()).unwrap(), p.raw_tx().restart_base());
        assert!(f.clean(), "{f:?}");
    }
    // Restore from those positions and carry on.
    let st = reinit(&mut d, &mut q, |_| 0);
    assert_eq!(st & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET), status::DRIVER_OK);
    d.set_queue_pairs(2).unwrap();
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        p.kick_tx().unwrap();
        assert!(f.drain(p, T), "{f:?}");
        assert!(f.exchange(p, 300, T), "{f:?}");
        assert!(f.clean(), "pair {}: {f:?}", f.pair);
    }
    assert_eq!(rig.stats().slow_path.suspend, 1);
    drop(q);
    drop(d);
    rig.finish();
}

both_formats!(
    iotlb_invalidate_and_remap_under_traffic,
    reset_then_asid_changes_and_fresh_driver_ok,
    suspend_and_vq_state_under_traffic,
    suspend_and_vq_state_in_order,
);
