//! The generator's and latency meter's accounting, end to end on the
//! embedded kernel model: injected loss and corruption must show up.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::source::Source;
use vduse_net::backend::Port;
use vduse_net::bench::frame;
use vduse_net::bench::latency::{run_pingpong, LatencyOptions};
use vduse_net::bench::pktgen::{self, Control, GenOptions, Mode, PktgenReport, Sizes};
use vduse_net::bench::testbed::{Testbed, DEVICE_MAC, PEER_MAC};
use vduse_net::dataplane::DeviceOptions;
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::ModelConfig;

#[path = "common/tamper.rs"]
mod tamper;
use tamper::{flip_last, Tamper};

/// A loopback that drops every `drop_every`-th frame and flips one payload
/// byte in every `flip_every`-th (counted from 1).
fn faulty(drop_every: u64, flip_every: u64) -> Box<dyn Port> {
    Tamper::loopback(1024)
        .on_tx(move |n, frame| {
            let k = n + 1;
            if k % drop_every == 0 {
                return false;
            }
            if k % flip_every == 0 {
                flip_last(frame);
            }
            true
        })
        .boxed()
}

fn testbed(name: &str, port: &mut dyn FnMut(u16) -> Box<dyn Port>) -> Testbed {
    let opts = DeviceOptions { name: name.into(), ..DeviceOptions::default() };
    let cfg = ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5));
    Testbed::model(cfg, opts, port, NetDriverConfig::default()).expect("testbed")
}

fn run(tb: Testbed, o: &GenOptions) -> PktgenReport {
    let ctl = Arc::new(Control::new(1, Arc::new(AtomicBool::new(false))));
    pktgen::run_on(tb, o, &[], &ctl, &mut |_, _| {}, None).expect("run")
}

fn opts(mode: Mode, frames: u64) -> GenOptions {
    GenOptions {
        mode,
        sizes: Sizes(vec![64, 300]),
        frames: Some(frames),
        stall: Duration::from_millis(300),
        ride_through: None,
        ..GenOptions::default()
    }
}

#[test]
fn clean_loopback_counts_every_frame() {
    let tb = testbed("acct-clean", &mut |_| Box::new(Loopback::new(1024, true)));
    let r = run(tb, &opts(Mode::Loopback, 3000));
    assert_eq!((r.tx_frames, r.rx_frames), (3000, 3000));
    assert!(!r.failed(), "{r:?}");
    assert_eq!(r.device_consumed, Some(3000));
    assert!(r.mpps_tx > 0.0 && r.gbps_rx > 0.0);
    assert!(r.threads.iter().any(|t| t.thread == "pktgen-0"));
    assert!(r.threads.iter().any(|t| t.thread.starts_with("vduse-poll-")), "{:?}", r.threads);
}

#[test]
fn injected_loss_and_corruption_are_reported() {
    let tb = testbed("acct-faulty", &mut |_| faulty(1000, 777));
    let r = run(tb, &opts(Mode::Loopback, 5000));
    assert_eq!(r.tx_frames, 5000);
    assert_eq!(r.lost, 5, "{r:?}");
    // 777, 1554, 2331, 3108, 3885, 4662.
    assert_eq!(r.integrity_errors, 6, "{r:?}");
    assert_eq!(r.rx_frames, 5000 - 5 - 6);
    assert_eq!(r.duplicates_or_reordered, 0);
    assert!(r.failed());
}

#[test]
fn rxonly_sees_a_gap_in_the_source() {
    // The source skips sequence number 500 and repeats 900.
    let mut port = |pair: u16| -> Box<dyn Port> {
        Box::new(Source::new(
            None,
            Box::new(move |seq, buf| {
                let s = match seq {
                    0..500 => seq,
                    500..=900 => seq + 1,
                    _ => seq,
                };
                frame::build(buf, 64, DEVICE_MAC, PEER_MAC, pair, s)
            }),
        ))
    };
    let tb = testbed("acct-rxonly", &mut port);
    let r = run(tb, &opts(Mode::RxOnly, 2000));
    assert!(r.rx_frames >= 1990, "{r:?}");
    assert_eq!(r.lost, 1, "{r:?}");
    assert!(r.duplicates_or_reordered >= 1, "{r:?}");
    assert_eq!(r.integrity_errors, 0);
}

#[test]
fn txonly_counts_what_the_device_consumed() {
    let tb = testbed("acct-txonly", &mut |i| Mode::TxOnly.port(i, &Sizes(vec![64])));
    let r = run(tb, &opts(Mode::TxOnly, 4000));
    assert_eq!(r.tx_frames, 4000);
    assert_eq!(r.device_consumed, Some(4000));
    assert_eq!(r.rx_frames, 0);
    assert!(!r.failed(), "{r:?}");
}

#[test]
fn pingpong_records_every_round_trip() {
    let mut tb = testbed("acct-latency", &mut |_| Box::new(Loopback::new(1024, true)));
    let q = tb.take_pairs().remove(0);
    // The test is about accounting, not latency: a probe held up by a loaded
    // 2-core machine must not count as lost, so the timeout is generous.
    let o = LatencyOptions {
        samples: Some(500),
        load_pps: 20_000.0,
        probe_timeout: std::time::Duration::from_secs(5),
        ..LatencyOptions::default()
    };
    let (rep, rec) = run_pingpong(q, &o, &AtomicBool::new(false));
    tb.finish().unwrap();
    assert_eq!(rep.summary.samples, 500);
    assert_eq!(rec.histogram().len(), 500);
    let s = &rep.summary;
    assert!(s.min_ns > 0 && s.min_ns <= s.p50_ns && s.p50_ns <= s.p99_ns && s.p99_ns <= s.max_ns, "{s:?}");
    assert_eq!((rep.lost, rep.integrity_errors), (0, 0), "{rep:?}");
    assert_eq!(rep.load_tx_frames, rep.load_rx_frames);
}
