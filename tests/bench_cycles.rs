//! Busy cycles per frame and `--check seq`, through the real `vduse-net
//! pktgen` binary (its device on the embedded kernel model) and through the
//! generator library with injected faults.

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tamper::{flip_last, Tamper};
use vduse_net::bench::pktgen::{self, CheckMode, Control, GenOptions, Mode, PktgenReport, Sizes};
use vduse_net::bench::testbed::Testbed;
use vduse_net::dataplane::DeviceOptions;
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::ModelConfig;

#[path = "common/tamper.rs"]
mod tamper;

const BIN: &str = env!("CARGO_BIN_EXE_vduse-net");

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn pktgen_json_reports_both_sides_cycles_per_frame() {
    for check in ["full", "seq"] {
        let out = Command::new(BIN)
            .args(["pktgen", "--frames", "20000", "--size", "64,1518", "--json", "--check", check])
            .output()
            .expect("run pktgen");
        assert!(out.status.success(), "pktgen --check {check}: {}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        assert_eq!(r["lost"], 0);
        assert_eq!(r["integrity_errors"], 0);
        assert_eq!(r["check"], check);
        let dev = positive(&r["device_cycles_per_frame"], "device_cycles_per_frame");
        let gen = positive(&r["generator_cycles_per_frame"], "generator_cycles_per_frame");
        positive(&r["tsc_hz"], "tsc_hz");
        positive(&r["queues"][0]["device_cycles_per_frame"], "queues[0].device_cycles_per_frame");
        positive(&r["queues"][0]["generator_busy_fraction"], "queues[0].generator_busy_fraction");
        positive(&r["device_cycles_per_frame_excl_long"], "device_cycles_per_frame_excl_long");
        // Long iterations are a part of the busy ones.
        let pair = &r["device"]["pairs"][0];
        let n = |k: &str| pair[k].as_u64().unwrap_or_else(|| panic!("{k}: {pair}"));
        assert!(n("busy_long_frames") <= n("busy_frames") && n("busy_long_cycles") <= n("busy_cycles"), "{pair}");
        positive(&r["generator_cycles_per_frame_excl_long"], "generator_cycles_per_frame_excl_long");
        let busier = if dev >= gen { "device" } else { "generator" };
        assert_eq!(r["busier"], busier);
        // The device counted each reflected frame once.
        assert_eq!(r["device"]["pairs"][0]["busy_frames"], 20000);
        assert!(["tsc", "ns"].contains(&r["cycles_unit"].as_str().unwrap()));
    }
}

#[test]
fn a_bad_check_mode_is_a_clear_error() {
    let out = Command::new(BIN).args(["pktgen", "--frames", "10", "--check", "some"]).output().expect("run pktgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--check") && err.contains("full, seq or sample"), "{err}");
    // Reading only some frames counts loss exactly in fwd mode only.
    let out = Command::new(BIN).args(["pktgen", "--frames", "10", "--check", "sample"]).output().expect("run pktgen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--check sample needs --mode fwd"), "{err}");
}

/// Sequence numbers as sent; `SEQ_AT` comes back as `SEQ_AT + 5`.
const SEQ_AT: u64 = 1000;
/// A sampled frame (a multiple of 64) and one that is not.
const FLIP_SAMPLED: u64 = 640;
const FLIP_UNSAMPLED: u64 = 641;

/// What the loopback (through its slots, not the reflector path) does: it
/// rewrites the sequence number of one frame and flips a payload byte in
/// two others.
fn tamper(seq: u64, frame: &mut [u8]) -> bool {
    match seq {
        SEQ_AT => frame[16..24].copy_from_slice(&(SEQ_AT + 5).to_le_bytes()),
        FLIP_SAMPLED | FLIP_UNSAMPLED => flip_last(frame),
        _ => {}
    }
    true
}

fn run_tampered(name: &str, check: CheckMode) -> PktgenReport {
    let opts = DeviceOptions { name: name.into(), ..DeviceOptions::default() };
    let cfg = ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5));
    let tb =
        Testbed::model(cfg, opts, &mut |_| Tamper::loopback(1024).on_tx(tamper).boxed(), NetDriverConfig::default())
            .expect("testbed");
    let o = GenOptions {
        mode: Mode::Loopback,
        sizes: Sizes(vec![64, 300]),
        frames: Some(3000),
        stall: Duration::from_millis(300),
        ride_through: None,
        check,
        ..GenOptions::default()
    };
    let ctl = Arc::new(Control::new(1, Arc::new(AtomicBool::new(false))));
    pktgen::run_on(tb, &o, &[], &ctl, &mut |_, _| {}, None).expect("run")
}

#[test]
fn seq_checks_catch_a_rewritten_sequence_number_and_sampled_corruption() {
    let seq = run_tampered("cyc-seq", CheckMode::Seq);
    assert!(seq.failed(), "{seq:?}");
    // 1000 came back as 1005: 1001..=1005 then look old (reordered or duplicated).
    assert_eq!(seq.duplicates_or_reordered, 5, "{seq:?}");
    // Only the sampled frame's payload is read under --check seq.
    assert_eq!(seq.integrity_errors, 1, "{seq:?}");
    assert_eq!(seq.check, CheckMode::Seq);

    let full = run_tampered("cyc-full", CheckMode::Full);
    assert!(full.failed());
    // Full checks see both payload flips and the rewritten frame (its
    // payload no longer matches its sequence number).
    assert_eq!(full.integrity_errors, 3, "{full:?}");
    assert_eq!(full.duplicates_or_reordered, 0, "{full:?}");
}

#[test]
fn pktgen_fwd_forwards_every_frame_and_counts_it_once() {
    let out = Command::new(BIN)
        .args(["pktgen", "--mode", "fwd", "--frames", "20000", "--size", "64,1518", "--json", "--check", "seq"])
        .output()
        .expect("run pktgen");
    assert!(out.status.success(), "pktgen --mode fwd: {}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(r["mode"], "fwd");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["integrity_errors"], 0);
    assert_eq!(r["duplicates_or_reordered"], 0);
    let tx = r["tx_frames"].as_u64().unwrap();
    // The last burst completes: at most one burst past --frames.
    assert!((20000..=20000 + 32).contains(&tx), "{tx}");
    assert_eq!(r["rx_frames"], tx);
    // The device reflected each frame once; the generator counts each once.
    assert_eq!(r["device"]["pairs"][0]["busy_frames"], tx);
    positive(&r["generator_cycles_per_frame"], "generator_cycles_per_frame");
    positive(&r["device_cycles_per_frame"], "device_cycles_per_frame");
}

fn run_fwd_tampered(
    name: &str,
    check: CheckMode,
    tamper: impl FnMut(u64, &mut [u8]) -> bool + Send + 'static,
) -> PktgenReport {
    let opts = DeviceOptions { name: name.into(), ..DeviceOptions::default() };
    let cfg = ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5));
    let mut tamper = Some(tamper);
    let tb = Testbed::model(
        cfg,
        opts,
        &mut |_| Tamper::loopback(1024).on_tx(tamper.take().expect("one pair")).boxed(),
        NetDriverConfig::default(),
    )
    .expect("testbed");
    let o = GenOptions {
        mode: Mode::Fwd,
        sizes: Sizes(vec![64, 300]),
        frames: Some(5000),
        stall: Duration::from_millis(300),
        check,
        ..GenOptions::default()
    };
    let ctl = Arc::new(Control::new(1, Arc::new(AtomicBool::new(false))));
    pktgen::run_on(tb, &o, &[], &ctl, &mut |_, _| {}, None).expect("run")
}

#[test]
fn fwd_counts_a_frame_lost_on_the_way_once_and_catches_corruption() {
    for check in [CheckMode::Seq, CheckMode::Sample] {
        // The 1000th frame through the device never arrives: it was going
        // round, so one frame is lost (not one per lap), nothing reordered.
        let r = run_fwd_tampered("fwd-drop", check, |n, _| n != 1000);
        assert!(r.failed(), "{r:?}");
        assert_eq!((r.lost, r.duplicates_or_reordered, r.integrity_errors), (1, 0, 0), "{check:?}: {r:?}");
        // Every frame from the 2000th on damaged: the sampled ones (full
        // payload checks) show it.
        let r = run_fwd_tampered("fwd-flip", check, |n, f| {
            if n >= 2000 {
                flip_last(f);
            }
            true
        });
        assert!(r.integrity_errors > 0, "{check:?}: {r:?}");
    }
}
