//! `vduse-net run --config` as systemd runs it, on the embedded kernel model
//! (no VDUSE needed): READY=1 once both devices exist, STATUS= lines,
//! WATCHDOG=1 pings, the stats socket in $RUNTIME_DIRECTORY, /metrics over
//! HTTP, SIGHUP reloads (applied, refused, broken file) and a clean stop.

#[path = "common/ops.rs"]
mod ops_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ops_common::*;

const CONFIG: &str = r#"
log-level = "info"
metrics = "127.0.0.1:0"

[defaults]
queues = 1
idle = "adaptive"

[[device]]
name = "opsa"
backend = "patch"
peer = "opsb"

[[device]]
name = "opsb"
backend = "patch"
peer = "opsa"
"#;

/// Notify messages until one contains `want` (or `limit` passes).
fn notify_until(sock: &UnixDatagram, seen: &mut Vec<String>, want: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            seen.push(m.clone());
            if m.contains(want) {
                return true;
            }
        }
    }
    false
}

fn log_until(path: &std::path::Path, want: &str, limit: Duration) -> Option<String> {
    wait_for(limit, || {
        let s = std::fs::read_to_string(path).ok()?;
        s.contains(want).then_some(s)
    })
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn run_from_config_notifies_serves_stats_reloads_and_stops() {
    let dir = Scratch::new("daemon");
    let cfg = dir.path("edge.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let notify = UnixDatagram::bind(dir.path("notify")).unwrap();
    notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let log = dir.path("run.log");
    // WATCHDOG_PID must be the service's pid: the shell execs into vduse-net.
    let mut run = Proc(Some(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "WATCHDOG_PID=$$ exec {BIN} run --config {} --kernel-model 7.3 2>{}",
                cfg.display(),
                log.display()
            ))
            .env("NOTIFY_SOCKET", dir.path("notify"))
            .env("WATCHDOG_USEC", "2000000")
            .env("RUNTIME_DIRECTORY", &dir.0)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn run"),
    ));
    let mut seen = Vec::new();
    assert!(notify_until(&notify, &mut seen, "READY=1", Duration::from_secs(60)), "no READY=1: {seen:?}");
    let ready = seen.last().unwrap().clone();
    assert!(
        ready.contains("STATUS=serving 2 device(s): opsa waiting for a driver; opsb waiting for a driver"),
        "{ready}"
    );
    // Watchdog at 2 s: pings every 0.5 s while both slow paths loop.
    let t = Instant::now();
    assert!(notify_until(&notify, &mut seen, "WATCHDOG=1", Duration::from_secs(10)), "{seen:?}");
    assert!(notify_until(&notify, &mut seen, "WATCHDOG=1", Duration::from_secs(10)), "{seen:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "watchdog pings too slow: {:?}", t.elapsed());

    // Stats: instance "edge" from the file name, both devices, patch wiring.
    let env = [("RUNTIME_DIRECTORY", dir.0.as_path())];
    let s = stats_json(&["edge"], &env).expect("stats edge");
    assert_eq!(s["process"]["command"], "run");
    assert_eq!(s["process"]["instance"], "edge");
    assert_eq!(s["process"]["config"], cfg.display().to_string());
    let names: Vec<&str> = s["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["opsa", "opsb"]);
    assert_eq!(s["devices"][0]["port"], "patch <-> opsb");
    assert_eq!(s["devices"][0]["status"]["raw"], 0);
    assert_eq!(s["devices"][1]["mac"], "02:00:00:00:00:02");
    let only_b = stats_json(&["opsb"], &env).expect("stats by device name");
    assert_eq!(only_b["devices"].as_array().unwrap().len(), 1);
    assert_eq!(only_b["devices"][0]["name"], "opsb");

    // /metrics on the port the log names.
    let text = log_until(&log, "/metrics", Duration::from_secs(10)).expect("metrics address in the log");
    let addr = text.split("metrics on http://").nth(1).and_then(|r| r.split('/').next()).expect("address").to_string();
    let resp = http_get(&addr, "/metrics");
    assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let samples = prometheus(body);
    assert_eq!(metric(&samples, "vduse_net_queue_pairs", &[("device", "opsa")]), Some(1.0));
    assert_eq!(metric(&samples, "vduse_net_driver_ok", &[("device", "opsb")]), Some(0.0));
    assert!(http_get(&addr, "/nope").contains(" 404 "));
    // Every line so far that a device thread wrote names its device.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("device opsa created: port patch <-> opsb"), "{text}");

    // Reload: the log level applies, a device change is refused with a reason.
    std::fs::write(
        &cfg,
        CONFIG.replace("log-level = \"info\"", "log-level = \"debug\"").replace("queues = 1", "queues = 2"),
    )
    .unwrap();
    run.signal(Signal::SIGHUP);
    assert!(notify_until(&notify, &mut seen, "RELOADING=1", Duration::from_secs(10)), "{seen:?}");
    assert!(notify_until(&notify, &mut seen, "READY=1", Duration::from_secs(10)), "{seen:?}");
    let text = log_until(&log, "reload done", Duration::from_secs(10)).expect("reload logged");
    assert!(
        text.contains("reload: device opsa: `queues` 1 -> 2: needs a restart (systemctl restart vduse-net@edge)"),
        "{text}"
    );
    assert!(text.contains("applied log level DEBUG"), "{text}");
    // A broken file keeps the running configuration.
    std::fs::write(&cfg, "[[device]]\nname = 3\n").unwrap();
    run.signal(Signal::SIGHUP);
    let text =
        log_until(&log, "keeping the running configuration", Duration::from_secs(10)).expect("broken reload logged");
    assert!(text.contains(&format!("{}:2: device #1: `name` must be a string", cfg.display())), "{text}");
    assert!(run.running(), "a broken reload must not stop the process");
    assert!(stats_json(&["edge"], &env).is_some(), "stats socket still served after reloads");

    // Stop: STOPPING=1, exit 0, devices destroyed, socket removed.
    run.signal(Signal::SIGTERM);
    assert!(notify_until(&notify, &mut seen, "STOPPING=1", Duration::from_secs(10)), "{seen:?}");
    let st = run.wait(Duration::from_secs(30)).expect("run did not exit after SIGTERM");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(st.success(), "exit {st:?}: {text}");
    assert!(text.contains("device opsa destroyed") && text.contains("device opsb destroyed"), "{text}");
    assert!(!dir.path("edge.sock").exists(), "stats socket left behind");
}

#[test]
fn a_second_process_on_the_same_socket_is_refused() {
    let dir = Scratch::new("daemon-dup");
    let sock = dir.path("x.sock");
    let mut first = Proc(Some(
        Command::new(BIN)
            .args(["run", "--kernel-model", "7.3", "--name", "dupa", "--stats-socket", sock.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    assert!(wait_for(Duration::from_secs(30), || sock.exists().then_some(())).is_some());
    let out =
        vduse_net(&["run", "--kernel-model", "7.3", "--name", "dupb", "--stats-socket", sock.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&format!("is in use by a running process (pid {})", first.pid())), "{e}");
    first.signal(Signal::SIGINT);
    assert!(first.wait(Duration::from_secs(30)).is_some_and(|s| s.success()));
    assert!(!sock.exists());
}
