//! `vduse-net run` and reconnect, on the embedded kernel model: the flags'
//! errors, and what `--keep-device` and a plain stop leave behind.

#[path = "common/ops.rs"]
mod ops_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use ops_common::*;

fn run(args: &[&str], state: &std::path::Path) -> Proc {
    let mut c = Command::new(BIN);
    c.args(["run", "--kernel-model", "7.3", "--no-stats-socket", "--state-dir"]).arg(state).args(args);
    Proc(Some(c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn run")))
}

#[test]
fn reconnect_without_a_device_or_log_is_a_clear_error() {
    let s = Scratch::new("rc-cli-none");
    let dir = s.path("state");
    let out = vduse_net(
        &["run", "--kernel-model", "7.3", "--no-stats-socket", "--name", "rcnone", "--reconnect", "--state-dir"],
        &[],
    );
    // clap: --state-dir needs a value.
    assert!(!out.status.success());
    let out = Command::new(BIN)
        .args(["run", "--kernel-model", "7.3", "--no-stats-socket", "--name", "rcnone", "--reconnect", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--reconnect rcnone: no state log for rcnone"), "{err}");
    // A state directory that is a file.
    std::fs::write(s.path("file"), b"x").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--kernel-model", "7.3", "--no-stats-socket", "--name", "rcfile", "--state-dir"])
        .arg(s.path("file"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--state-dir"), "{err}");
}

#[test]
fn keep_device_leaves_the_log_and_a_plain_stop_removes_it() {
    let s = Scratch::new("rc-cli-keep");
    let dir = s.path("state");
    let log = dir.join("rckeep.state");
    let mut p = run(&["--name", "rckeep", "--keep-device"], &dir);
    assert!(wait_for(Duration::from_secs(20), || log.exists().then_some(())).is_some(), "the log appears");
    p.signal(Signal::SIGTERM);
    assert!(p.wait(Duration::from_secs(20)).is_some_and(|st| st.success()));
    assert!(log.exists(), "--keep-device leaves the log");
    // A new process (a new model kernel: the device is gone) finds a log
    // without a device and starts afresh; a plain stop removes the log.
    let mut p = run(&["--name", "rckeep"], &dir);
    std::thread::sleep(Duration::from_millis(500));
    assert!(wait_for(Duration::from_secs(20), || log.exists().then_some(())).is_some());
    assert!(p.running(), "the second process runs");
    p.signal(Signal::SIGTERM);
    assert!(p.wait(Duration::from_secs(20)).is_some_and(|st| st.success()));
    assert!(!log.exists(), "destroying the device removes its log");
}
