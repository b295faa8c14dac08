//! `vduse-net pktgen --tso SIZE` through the real binary (its device on the
//! embedded kernel model): the driver sends TCP GSO frames, the device
//! segments them in software for the loopback port, and every segment that
//! comes back is checked (checksums verified independently, lengths,
//! offsets, payload bytes). Bad values are clear errors.

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tamper::{flip_last, Tamper};
use vduse_net::bench::pktgen::{self, Control, GenOptions, Mode};
use vduse_net::bench::testbed::Testbed;
use vduse_net::bench::tso::TsoOptions;
use vduse_net::dataplane::DeviceOptions;
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::net::features as f;
use vduse_net::vduse::model::ModelConfig;

#[path = "common/tamper.rs"]
mod tamper;

const BIN: &str = env!("CARGO_BIN_EXE_vduse-net");

fn pktgen(args: &[&str]) -> std::process::Output {
    let mut a = vec!["pktgen", "--no-stats-socket"];
    a.extend_from_slice(args);
    Command::new(BIN).args(&a).output().expect("run pktgen")
}

fn run_ok(args: &[&str]) -> Value {
    let out = pktgen(args);
    assert!(out.status.success(), "pktgen {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"))
}

/// Every segment of every frame came back intact, and the device says it
/// made them.
fn check_clean(r: &Value, frames: u64, pairs: u64, size: u64, mss: u64) {
    let spf = (size - 54).div_ceil(mss);
    let t = &r["tso"];
    assert_eq!((n(t, "size"), n(t, "mss"), n(t, "segments_per_frame")), (size, mss, spf), "{t}");
    assert_eq!(n(r, "tx_frames"), frames * pairs);
    assert_eq!(n(t, "segments_expected"), frames * pairs * spf);
    assert_eq!(n(r, "rx_frames"), frames * pairs * spf, "every segment back: {r}");
    assert_eq!((n(r, "lost"), n(r, "integrity_errors"), n(r, "duplicates_or_reordered")), (0, 0, 0), "{r}");
    assert_eq!(n(r, "driver_errors"), 0);
    assert_eq!(n(t, "device_sw_gso_frames"), frames * pairs, "segmented in software: {t}");
    assert_eq!(n(t, "device_sw_segments"), frames * pairs * spf);
    for p in r["device"]["pairs"].as_array().unwrap() {
        assert_eq!((n(p, "tx_offload_dropped"), n(p, "tx_dropped"), n(p, "queue_errors")), (0, 0, 0), "{p}");
    }
}

#[test]
fn tso_frames_are_segmented_and_every_segment_checks_out() {
    let r = run_ok(&["--tso", "20000", "--frames", "400", "--queues", "2", "--json"]);
    check_clean(&r, 400, 2, 20000, 1460);
}

#[test]
fn tso_with_mergeable_buffers_packed_rings_and_the_largest_frame() {
    let r = run_ok(&["--tso", "65549", "--frames", "60", "--mrg-rxbuf", "512", "--json"]);
    check_clean(&r, 60, 1, 65549, 1460);
    let r = run_ok(&["--tso", "3000", "--frames", "300", "--ring", "packed", "--json"]);
    check_clean(&r, 300, 1, 3000, 1460);
    // Another MTU, another MSS (the loopback's slots carry up to 2030).
    let r = run_ok(&["--tso", "30000", "--frames", "100", "--mtu", "2000", "--json"]);
    check_clean(&r, 100, 1, 30000, 1960);
}

#[test]
fn tso_text_report_names_the_segments() {
    let out = pktgen(&["--tso", "5000", "--frames", "50"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tso: 50 GSO frames of 5000 bytes, mss 1460 -> 4 segments each; 200 segments checked"),
        "{text}"
    );
}

#[test]
fn bad_tso_values_are_clear_errors() {
    for (args, want) in [
        (&["--tso", "10"][..], "--tso 10: the frame size must be in 56..=65549"),
        (&["--tso", "70000"], "--tso 70000: the frame size must be in"),
        (&["--tso", "big"], "invalid value 'big'"),
        (&["--tso", "1500"], "fit in one segment of the MSS 1460"),
        (&["--tso", "5000", "--mode", "txonly"], "--tso runs in --mode loopback"),
    ] {
        let mut a = args.to_vec();
        a.extend(["--frames", "10"]);
        let out = pktgen(&a);
        assert!(!out.status.success(), "{a:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{a:?}: {err}");
    }
    // A device without TSO: the driver cannot send GSO frames.
    let out = pktgen(&["--tso", "5000", "--frames", "10", "--features", "-host_tso4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HOST_TSO4"), "{err}");
}

/// The segments the loopback damages, after the device segmented them:
/// the check must see both.
const FLIP_AT: u64 = 100;
const DROP_AT: u64 = 200;

#[test]
fn a_damaged_and_a_lost_segment_are_caught() {
    let t = TsoOptions::new(10_000, 1500).unwrap();
    let opts = DeviceOptions { name: format!("tso-tamper-{}", std::process::id()), ..DeviceOptions::default() };
    let dcfg = NetDriverConfig {
        features: NetDriverConfig::DEFAULT_FEATURES | f::CSUM | f::HOST_TSO4,
        buf_size: t.buf_size(),
        ..NetDriverConfig::default()
    };
    let tb = Testbed::model(
        ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)),
        opts,
        &mut |_| {
            Tamper::loopback(1024)
                .on_tx(|n, frame| match n {
                    DROP_AT => false,
                    FLIP_AT => {
                        flip_last(frame);
                        true
                    }
                    _ => true,
                })
                .boxed()
        },
        dcfg,
    )
    .expect("testbed");
    let o = GenOptions {
        mode: Mode::Loopback,
        frames: Some(100),
        stall: Duration::from_millis(500),
        tso: Some(t),
        ..GenOptions::default()
    };
    let ctl = Arc::new(Control::new(1, Arc::new(AtomicBool::new(false))));
    let r = pktgen::run_on(tb, &o, &[], &ctl, &mut |_, _| {}, None).expect("run");
    assert_eq!(r.tx_frames, 100);
    assert_eq!(r.rx_frames, 700 - 2, "{r:?}");
    assert_eq!((r.integrity_errors, r.lost, r.duplicates_or_reordered), (1, 1, 0), "{r:?}");
    assert!(r.failed());
}
