//! The stats socket under traffic: `vduse-net stats` against a running
//! `vduse-net pktgen` (its device on the embedded kernel model) shows frame
//! counters that grow while traffic flows, and at the end match pktgen's own
//! totals; `--prometheus` parses with an independent parser and holds the
//! same numbers.

#[path = "common/ops.rs"]
mod ops_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use ops_common::*;
use serde_json::Value;

fn total(sample: &Value, dir: &str) -> u64 {
    sample["devices"][0]["queues"].as_array().expect("queues").iter().map(|q| q["frames"][dir].as_u64().unwrap()).sum()
}

#[test]
fn stats_follow_pktgen_and_end_at_its_totals() {
    let dir = Scratch::new("stats");
    let env = [("RUNTIME_DIRECTORY", dir.0.as_path())];
    // Two pairs, 20000 frames each at 20000 frames/s: about 2 s of traffic.
    let mut gen = Proc(Some(
        Command::new(BIN)
            .args(["pktgen", "--queues", "2", "--frames", "20000", "--rate", "20000", "--size", "64,570"])
            .args(["--linger", "60", "--json"])
            .env("RUNTIME_DIRECTORY", &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pktgen"),
    ));
    // Its default socket: $RUNTIME_DIRECTORY/pktgen0.sock.
    let sock = dir.path("pktgen0.sock");
    assert!(wait_for(Duration::from_secs(30), || sock.exists().then_some(())).is_some(), "no {}", sock.display());

    // While traffic flows: samples by instance name, frame counters growing.
    let mut running = Vec::new();
    let last = wait_for(Duration::from_secs(120), || {
        let s = stats_json(&["pktgen0"], &env)?;
        if s["process"]["state"] == "running" {
            running.push(total(&s, "tx"));
        }
        (s["process"]["state"] == "finished").then_some(s)
    })
    .expect("pktgen never reported its traffic finished");
    assert!(
        running.windows(2).any(|w| w[1] > w[0]),
        "tx frames did not grow between samples taken during traffic: {running:?}"
    );
    assert!(running.windows(2).all(|w| w[1] >= w[0]), "a counter went backwards: {running:?}");

    // The same device by its device name; JSON and Prometheus agree.
    let by_device = stats_json(&["pktgen0"], &env).expect("stats by device name");
    assert_eq!(by_device["devices"][0]["name"], "pktgen0");
    let prom = vduse_net(&["stats", "pktgen0", "--prometheus"], &env);
    assert!(prom.status.success(), "{}", String::from_utf8_lossy(&prom.stderr));
    let samples = prometheus(&String::from_utf8_lossy(&prom.stdout));
    let dev = &last["devices"][0];
    assert_eq!(dev["status"]["driver_ok"], true);
    assert_eq!(dev["link"], "up");
    for q in dev["queues"].as_array().unwrap() {
        let pair = q["pair"].to_string();
        for dir in ["rx", "tx"] {
            let labels = [("device", "pktgen0"), ("queue", pair.as_str()), ("direction", dir)];
            assert_eq!(
                metric(&samples, "vduse_net_frames_total", &labels),
                Some(q["frames"][dir].as_u64().unwrap() as f64),
                "pair {pair} {dir} frames"
            );
            assert_eq!(
                metric(&samples, "vduse_net_bytes_total", &labels),
                Some(q["bytes"][dir].as_u64().unwrap() as f64)
            );
            assert_eq!(
                metric(&samples, "vduse_net_queue_state", &[labels[0], labels[1], labels[2], ("state", "ready")]),
                Some(1.0)
            );
        }
        assert!(q["rx"]["ready"].as_bool().unwrap() && q["tx"]["enabled"].as_bool().unwrap());
        assert_eq!(q["queue_errors"], 0);
        // Kicks are counted (a number, not null) and /metrics agrees; that
        // they count real kicks is `kicks_wake_a_sleeping_poll_thread`.
        let kicks = q["kicks"].as_u64().unwrap_or_else(|| panic!("pair {pair}: kicks {}", q["kicks"]));
        assert_eq!(
            metric(&samples, "vduse_net_kicks_total", &[("device", "pktgen0"), ("queue", pair.as_str())]),
            Some(kicks as f64),
            "pair {pair} kicks in /metrics"
        );
    }
    assert_eq!(metric(&samples, "vduse_net_driver_ok", &[("device", "pktgen0")]), Some(1.0));

    // End the linger; pktgen prints its report.
    gen.signal(Signal::SIGTERM);
    let child = gen.0.take().unwrap();
    let out = child.wait_with_output().expect("pktgen output");
    assert!(out.status.success(), "pktgen failed: {}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).expect("pktgen --json report");
    assert_eq!(rep["lost"], 0);
    assert_eq!(rep["tx_frames"].as_u64().unwrap(), 40_000);
    // The driver's totals are what the device counted.
    assert_eq!(total(&last, "tx"), rep["tx_frames"].as_u64().unwrap(), "device TX frames vs pktgen's sent");
    assert_eq!(total(&last, "rx"), rep["rx_frames"].as_u64().unwrap(), "device RX frames vs pktgen's received");
    // And the device's own final counters (taken at teardown) equal the last sample.
    for (i, p) in rep["device"]["pairs"].as_array().unwrap().iter().enumerate() {
        let q = &last["devices"][0]["queues"][i];
        for k in ["tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "irqs", "queue_errors"] {
            assert_eq!(q["counters"][k], p[k], "pair {i} {k}");
        }
        // Busy cycles per frame reach the stats sample (and so `stats` and /metrics).
        let cpf = q["cycles_per_frame"].as_f64().unwrap_or(f64::NAN);
        assert!(cpf.is_finite() && cpf > 0.0, "pair {i} cycles_per_frame {cpf}");
        assert_eq!(q["counters"]["busy_frames"], p["busy_frames"], "pair {i} busy_frames");
    }
    // The socket is gone with the process.
    assert!(!sock.exists(), "{} left behind", sock.display());
}

/// At 50 frames/s an adaptive-idle poll thread goes to sleep between
/// frames (its 2000 spins last far less than 20 ms, even with the other
/// tests of this binary running: at 200 frames/s, 5 ms apart, a loaded
/// machine once stretched them past the gap and the thread never slept),
/// so the driver's kicks wake it: the pair counts about one kick per frame.
#[test]
fn kicks_wake_a_sleeping_poll_thread() {
    let out = Command::new(BIN)
        .args(["pktgen", "--frames", "100", "--rate", "50", "--size", "64", "--idle", "adaptive"])
        .args(["--no-stats-socket", "--json"])
        .output()
        .expect("pktgen");
    assert!(out.status.success(), "pktgen: {}", String::from_utf8_lossy(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).expect("pktgen --json report");
    assert_eq!(rep["lost"], 0);
    let p = &rep["device"]["pairs"][0];
    let kicks = p["kicks"].as_u64().unwrap_or_else(|| panic!("no kicks counter in {p}"));
    assert!(p["sleeps"].as_u64().unwrap() > 0, "the poll thread never slept: {p}");
    assert!(kicks > 0, "100 frames 20 ms apart and no kick counted: {p}");
}

/// `stats --watch` prints rates per second (testpmd's `show port stats`):
/// with pktgen paced at 10000 frames/s, the Tx-pps of the samples after the
/// first lie near that pace, far below the running totals, and `--json
/// --watch` gives one sample per line with a growing uptime.
#[test]
fn watch_shows_rates_per_second() {
    let dir = Scratch::new("watch");
    let env = [("RUNTIME_DIRECTORY", dir.0.as_path())];
    let _gen = Proc(Some(
        Command::new(BIN)
            .args(["pktgen", "--frames", "100000", "--rate", "10000", "--size", "64", "--linger", "30"])
            .env("RUNTIME_DIRECTORY", &dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pktgen"),
    ));
    let sock = dir.path("pktgen0.sock");
    assert!(wait_for(Duration::from_secs(30), || sock.exists().then_some(())).is_some(), "no {}", sock.display());
    // Traffic flowing, and the totals already above any rate the checks
    // below accept (so totals shown as rates would fail them); 100000
    // frames at 10000/s leave several seconds of traffic after this.
    let t0 = wait_for(Duration::from_secs(60), || {
        let s = stats_json(&["pktgen0"], &env)?;
        (total(&s, "tx") > 35000).then(|| total(&s, "tx"))
    })
    .expect("traffic never reached 35000 frames");

    let out = vduse_net(&["stats", "pktgen0", "--watch", "0.5", "--count", "4"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let pps: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("Tx-pps:").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    // Four samples: rates from the second on, one pair.
    assert_eq!(pps.len(), 3, "{text}");
    // The pace is 10000/s; a preempted generator catches up in bursts,
    // so allow 3x, still below the totals (over 35000 before the watch).
    assert!(pps.iter().all(|&r| r <= 30000.0), "a rate above 3x the pace: {pps:?} (totals were {t0}+)\n{text}");
    assert!(pps.iter().any(|&r| r >= 1000.0), "rates near zero under traffic: {pps:?}\n{text}");

    let out = vduse_net(&["stats", "pktgen0", "--watch", "0.2", "--count", "3", "--json"], &env);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let samples: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(samples.len(), 3);
    let up: Vec<u64> = samples.iter().map(|s| s["uptime_ns"].as_u64().unwrap()).collect();
    assert!(up.windows(2).all(|w| w[1] > w[0]), "uptime_ns not growing: {up:?}");
}

#[test]
fn stats_reports_clear_errors() {
    let dir = Scratch::new("stats-err");
    let env = [("RUNTIME_DIRECTORY", dir.0.as_path())];
    let out = vduse_net(&["stats"], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stats sockets in"), "{out:?}");
    let out = vduse_net(&["stats", "nosuch"], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no instance or device \"nosuch\""), "{out:?}");
    let missing = dir.path("missing.sock");
    let out = vduse_net(&["stats", "--socket", missing.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    // A regular file is never replaced by a server.
    let file = dir.path("file.sock");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(BIN)
        .args(["pktgen", "--frames", "10", "--stats-socket", file.to_str().unwrap()])
        .output()
        .expect("pktgen");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
}
