//! Fast-path soundness regressions (issue 8) on the embedded kernel model:
//! a panicking poll thread is supervised (fix 9); the slow path answers
//! within the kernel's message timeout when poll threads do not (fix 8:
//! reset in parallel, DRIVER_OK rolled back); the reflector reads each
//! avail entry once (fix 3).

mod common;
#[path = "common/tamper.rs"]
mod tamper;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tamper::Tamper;
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::driver::net::NetDriver;
use vduse_net::driver::DriverTransport;
use vduse_net::uapi::vduse::{VDUSE_REQ_RESULT_FAILED, VDUSE_REQ_RESULT_OK};
use vduse_net::uapi::virtio::{status, VringDesc};
use vduse_net::vduse::model::ModelConfig;
use vduse_net::vduse::Request;

const T: Duration = Duration::from_secs(5);

/// What a test can make a [`test_port`] do.
#[derive(Default)]
struct Ctl {
    /// Panic at the next poll (once).
    panic: AtomicBool,
    /// Block the poll thread when it goes to sleep, until cleared.
    wedge: AtomicBool,
    /// Threads blocked by `wedge` right now.
    wedged: AtomicUsize,
}

/// A loopback port the test can make panic or wedge its poll thread.
fn test_port(ctl: &Arc<Ctl>) -> Box<dyn Port> {
    let (p, w) = (ctl.clone(), ctl.clone());
    Tamper::loopback(256)
        .reflecting()
        // Called once per poll of an active pair.
        .on_poll(move || {
            if p.panic.swap(false, Ordering::SeqCst) {
                panic!("test port: injected panic");
            }
        })
        // Called when the thread is about to block (idle or stopped).
        .on_idle(move || {
            if w.wedge.load(Ordering::SeqCst) {
                w.wedged.fetch_add(1, Ordering::SeqCst);
                while w.wedge.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                w.wedged.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .boxed()
}

fn exchange_all(d: &mut NetDriver, what: &str) {
    let mut q = d.take_pairs();
    for (i, p) in q.iter_mut().enumerate() {
        let mut f = Flow::new(i as u16);
        assert!(f.exchange(p, 50, T), "{what}: pair {i} carries traffic: {f:?}");
        assert!(f.clean(), "{what}: {f:?}");
    }
}

/// Fix 9: a poll thread that panics stops its pair (logged, counted,
/// visible in the stats), the device keeps answering control messages and
/// the other pair keeps going, and a reset restarts the pair.
#[test]
fn a_panicking_poll_thread_fails_its_pair_and_a_reset_restarts_it() {
    let _s = serial();
    let ctl = Arc::new(Ctl::default());
    let ports = vec![Box::new(Loopback::new(256, true)) as Box<dyn Port>, test_port(&ctl)];
    let rig = Rig::with_ports(device_options("fp-panic", 2), ModelConfig::patched_7_3(), ports);
    let mut d = rig.probe(driver_config());
    let mut q = d.take_pairs();
    let mut flows = vec![Flow::new(0), Flow::new(1)];
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        assert!(f.exchange(p, 20, T) && f.clean(), "{f:?}");
    }

    ctl.panic.store(true, Ordering::SeqCst);
    flows[1].send(&mut q[1], 1);
    q[1].kick_tx().unwrap();
    assert!(wait_for(T, || rig.stats().pairs[1].panics == 1), "panic counted: {:?}", rig.stats().pairs[1]);
    let st = rig.stats().pairs[1];
    assert_eq!((st.panics, st.failed, st.started), (1, 1, 1), "pair 1 shown failed: {st:?}");
    assert!(wait_logged("pair 1: poll thread panicked (test port: injected panic)"), "{:#?}", logged());
    assert!(wait_for(T, || rig.needs_reset()), "NEEDS_RESET shown");
    // The slow path answers, also for the failed pair's queues.
    assert!(rig.t.vring_base(1).is_ok());
    assert!(rig.t.vring_base(3).is_ok());
    // The other pair goes on.
    assert!(flows[0].exchange(&mut q[0], 200, T) && flows[0].clean(), "{:?}", flows[0]);
    assert_eq!(rig.stats().pairs[0].panics, 0);

    // A reset restarts the failed pair.
    d.reset().unwrap();
    drop(q);
    drop(d);
    assert_eq!(rig.stats().pairs[1].failed, 0, "reset clears the failure");
    let mut d = rig.probe(driver_config());
    exchange_all(&mut d, "after reset");
    drop(d);
    let stats = rig.finish();
    assert_eq!(stats.pairs[1].panics, 1);
}

/// The last reply the device sent to a message matching `f`.
fn last_result(rig: &Rig, f: impl Fn(&Request) -> bool) -> Option<u32> {
    rig.model.message_log(&rig.name).iter().rev().find(|m| f(&m.request)).and_then(|m| m.result)
}

/// Fix 8: a reset stops every pair at once with one shared deadline. Three
/// wedged poll threads used to cost 2 s each, one after the other: past
/// the model's 5 s message timeout (the kernel's is 30 s, and a real device
/// can have many more pairs).
#[test]
fn a_reset_with_wedged_poll_threads_is_answered_in_time() {
    let _s = serial();
    let ctl = Arc::new(Ctl::default());
    let ports = (0..3).map(|_| test_port(&ctl)).collect();
    let rig = Rig::with_ports(device_options("fp-wedge", 3), ModelConfig::patched_7_3(), ports);
    let mut d = rig.probe(driver_config());
    assert_eq!(d.pairs(), 3);
    drop(d.take_pairs());
    ctl.wedge.store(true, Ordering::SeqCst);
    assert!(wait_for(T, || ctl.wedged.load(Ordering::SeqCst) == 3), "all three threads blocked");
    let t0 = Instant::now();
    let r = d.reset();
    let took = t0.elapsed();
    assert!(r.is_ok(), "reset answered: {r:?} after {took:?}");
    assert!(took < Duration::from_millis(4000), "one shared deadline, took {took:?}");
    assert_eq!(last_result(&rig, |r| matches!(r, Request::SetStatus { status: 0 })), Some(VDUSE_REQ_RESULT_OK));
    assert!(wait_logged("reset: stopping pair"), "the late pairs are logged: {:#?}", logged());
    ctl.wedge.store(false, Ordering::SeqCst);
    drop(d);
    // The queued stops are applied once the threads run again; a fresh
    // driver gets a working device.
    let mut d = rig.probe(driver_config());
    exchange_all(&mut d, "after the wedged reset");
    drop(d);
    rig.finish();
}

/// Fix 8: a DRIVER_OK that fails for pair k stops pairs 0..k again before
/// the reply says FAILED (it used to leave them running).
#[test]
fn a_failed_driver_ok_stops_the_pairs_it_started() {
    let _s = serial();
    let ctl = Arc::new(Ctl::default());
    let ports = vec![Box::new(Loopback::new(256, true)) as Box<dyn Port>, test_port(&ctl)];
    let rig = Rig::with_ports(device_options("fp-rollback", 2), ModelConfig::patched_7_3(), ports);
    // Pair 1's thread blocks before DRIVER_OK: its Start is never acked.
    ctl.wedge.store(true, Ordering::SeqCst);
    assert!(wait_for(T, || ctl.wedged.load(Ordering::SeqCst) == 1), "pair 1 blocked");
    let r = NetDriver::probe(rig.transport(), driver_config());
    assert!(r.is_err(), "DRIVER_OK cannot succeed with pair 1 wedged");
    let driver_ok = |r: &Request| matches!(r, Request::SetStatus { status } if status & status::DRIVER_OK != 0);
    assert_eq!(last_result(&rig, driver_ok), Some(VDUSE_REQ_RESULT_FAILED));
    assert_eq!(rig.stats().pairs[0].started, 0, "pair 0 stopped again before the FAILED reply");
    assert!(wait_logged("DRIVER_OK failed at pair 1"), "{:#?}", logged());
    // Once pair 1 runs again, the Stop queued behind its late Start wins.
    ctl.wedge.store(false, Ordering::SeqCst);
    assert!(wait_for(T, || rig.stats().pairs[1].started == 0 && ctl.wedged.load(Ordering::SeqCst) == 0));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.stats().pairs[1].started, 0, "the late Start was undone");
    drop(r);
    let mut d = rig.probe(driver_config());
    exchange_all(&mut d, "after the failed DRIVER_OK");
    drop(d);
    rig.finish();
}

/// Fix 3: the reflector peeked the avail slot, walked the chain, then
/// popped (read the slot again). A driver flipping the slot between a
/// valid head and an out-of-range one got the head completed without the
/// device consuming the entry: a used entry for nothing (used index ahead
/// of the device's position). Now the slot is read once: the device either
/// consumes and completes the head, or fails the queue on the bad value.
/// Racy by nature: on the old code this fails within a few episodes; the
/// new code must keep `used == last_avail` in every one.
#[test]
fn the_reflector_reads_each_avail_entry_once() {
    let _s = serial();
    let rig = Rig::new("fp-refetch", 1);
    let end = Instant::now() + Duration::from_secs(3);
    let mut episodes = 0;
    let mut processed = 0u64;
    while Instant::now() < end && episodes < 40 {
        episodes += 1;
        let mut d = rig.probe(driver_config());
        let mut q = d.take_pairs();
        let p = &mut q[0];
        p.post_rx();
        // Every TX descriptor is a valid one-buffer frame.
        let frame_len = 12 + 60;
        let mem = p.memory().clone();
        let size = p.ring_size();
        for i in 0..size {
            let mut f = vec![0u8; frame_len];
            f[12..18].copy_from_slice(&PEER_MAC);
            f[18..24].copy_from_slice(&DEV_MAC);
            mem.write(p.tx_slot_offset(i), &f);
            let addr = p.tx_slot_iova(i);
            let tx = p.raw_tx().as_split().expect("split ring");
            tx.write_desc(i, VringDesc { addr, len: frame_len as u32, flags: 0, next: 0 }).unwrap();
        }
        let tx = p.raw_tx().as_split().expect("split ring");
        let avail_ring = tx.offset() + tx.layout().avail + 4;
        let stop = Arc::new(AtomicBool::new(false));
        let racer = {
            let (mem, stop) = (mem.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut v = 0u16;
                while !stop.load(Ordering::Relaxed) {
                    // A valid head, then one out of range, in every slot.
                    v = if v == 0 { 0xffff } else { 0 };
                    for s in 0..size as usize {
                        mem.write(avail_ring + 2 * s, &v.to_le_bytes());
                    }
                }
            })
        };
        let base = p.raw_tx().avail_idx();
        let mut published = 0u16;
        let errors_before = rig.queue_errors(0);
        let episode_end = Instant::now() + Duration::from_millis(300);
        while rig.queue_errors(0) == errors_before && Instant::now() < episode_end {
            if published < 4 * size {
                published += 8;
                p.raw_tx().as_split().unwrap().set_avail_idx_raw(base.wrapping_add(published));
                let _ = p.kick_tx();
            }
            // Keep RX buffers coming so the reflector runs.
            p.rx_burst(&mut |_| {}, 64);
            p.post_rx();
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().unwrap();
        // The device's position (GET_VQ_STATE) and what it completed.
        let last_avail = rig.t.vring_base(1).unwrap() as u16;
        let used = p.raw_tx().used_idx();
        processed += used.wrapping_sub(base) as u64;
        assert_eq!(
            used.wrapping_sub(base),
            last_avail.wrapping_sub(base),
            "episode {episodes}: TX used index {used} vs device position {last_avail} (base {base}): \
             a head completed without its avail entry being consumed"
        );
        d.reset().unwrap();
    }
    assert!(processed > 0, "the reflector processed frames");
    rig.finish();
}
