//! `latency --mode fwd` (testpmd's ping-pong: one frame goes round and is
//! forwarded from the buffer it arrived in): through the real binary, and
//! through the library with a port that drops or damages the frame.

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::Value;
use tamper::{flip_last, Tamper};
use vduse_net::bench::latency::{run_pingpong, LatencyOptions, LatencyReport};
use vduse_net::bench::pktgen::Sizes;
use vduse_net::bench::testbed::Testbed;
use vduse_net::dataplane::DeviceOptions;
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::ModelConfig;

#[path = "common/tamper.rs"]
mod tamper;

const BIN: &str = env!("CARGO_BIN_EXE_vduse-net");

#[test]
fn latency_fwd_records_every_round_trip_and_loses_nothing() {
    let out = Command::new(BIN)
        .args(["latency", "--mode", "fwd", "--size", "64", "--samples", "3000", "--json"])
        .output()
        .expect("run latency");
    assert!(out.status.success(), "latency --mode fwd: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["samples"], 3000);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["probes_lost"], 0);
    assert_eq!(r["integrity_errors"], 0);
    let p50 = r["p50_ns"].as_u64().unwrap();
    let (min, max) = (r["min_ns"].as_u64().unwrap(), r["max_ns"].as_u64().unwrap());
    assert!(min > 0 && min <= p50 && p50 <= max, "{r}");
    // One frame forwarded per round trip, by both sides.
    assert!(r["generator_busy_frames"].as_u64().unwrap() >= 3000, "{r}");
    assert!(r["device_cycles_per_frame"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn latency_fwd_refuses_load_and_several_sizes() {
    for (args, want) in [
        (&["--size", "64", "--load", "1000"][..], "takes no --load"),
        (&["--size", "64,1518"][..], "give one --size"),
        (&[][..], "give one --size"),
    ] {
        let out = Command::new(BIN)
            .args(["latency", "--mode", "fwd", "--samples", "10"])
            .args(args)
            .output()
            .expect("run latency");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

fn run_fwd(name: &str, samples: u64, tamper: impl FnMut(u64, &mut [u8]) -> bool + Send + 'static) -> LatencyReport {
    let opts = DeviceOptions { name: name.into(), ..DeviceOptions::default() };
    let cfg = ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5));
    let mut tamper = Some(tamper);
    let mut tb = Testbed::model(
        cfg,
        opts,
        &mut |_| Tamper::loopback(1024).on_tx(tamper.take().expect("one pair")).boxed(),
        NetDriverConfig::default(),
    )
    .expect("testbed");
    let q = tb.take_pairs().swap_remove(0);
    let o = LatencyOptions {
        sizes: Sizes(vec![64]),
        samples: Some(samples),
        probe_timeout: Duration::from_millis(100),
        forward: true,
        ..LatencyOptions::default()
    };
    let (rep, _) = run_pingpong(q, &o, &AtomicBool::new(false));
    tb.finish().expect("teardown");
    rep
}

#[test]
fn a_frame_lost_on_the_way_ends_the_run_and_counts_once() {
    // The 500th pass through the device never arrives.
    let r = run_fwd("latfwd-drop", 2000, |n, _| n != 500);
    assert_eq!((r.probes_lost, r.lost, r.integrity_errors), (1, 1, 0), "{r:?}");
    // Round trips 1..=500 completed (the first send was number 0).
    assert_eq!(r.summary.samples, 500, "{r:?}");
}

#[test]
fn damage_is_seen_by_the_sampled_checks() {
    // From the 200th pass on, every frame comes back with its last byte
    // flipped: the next sampled arrival (every 64th) is checked in full.
    let r = run_fwd("latfwd-flip", 1000, |n, f| {
        if n >= 200 {
            flip_last(f);
        }
        true
    });
    assert_eq!(r.lost, 0, "{r:?}");
    assert!(r.integrity_errors > 0, "{r:?}");
    // Intact frames pass: the same run without damage is clean.
    let r = run_fwd("latfwd-clean", 1000, |_, _| true);
    assert_eq!((r.lost, r.integrity_errors, r.summary.samples), (0, 0, 1000), "{r:?}");
}
