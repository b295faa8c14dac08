//! Helpers for the tests that run the `vduse-net` binary (stats socket,
//! config files, the daemon): a scratch directory and child processes that
//! are always cleaned up, and the Prometheus text parsed by an independent
//! parser.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_vduse-net");

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("vduse-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed (SIGKILL) and reaped on drop unless it was waited for.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.0.as_ref().expect("running").id() as i32)
    }
    pub fn signal(&self, s: Signal) {
        let _ = kill(self.pid(), s);
    }
    /// Wait up to `limit`; the exit status, or `None` (then it is killed).
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.0 = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 20 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn vduse_net(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run vduse-net")
}

/// `vduse-net stats ... --json`, parsed; `None` when it failed.
pub fn stats_json(args: &[&str], env: &[(&str, &Path)]) -> Option<serde_json::Value> {
    let mut a = vec!["stats", "--json"];
    a.extend_from_slice(args);
    let out = vduse_net(&a, env);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Prometheus text -> (name, labels) -> value, through `prometheus-parse`.
pub fn prometheus(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("exposition text parses");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected value {other:?} for {}", s.metric),
            };
            let labels: HashMap<String, String> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (s.metric, labels, v)
        })
        .collect()
}

/// The value of `name` whose labels include all of `want`.
pub fn metric(samples: &[(String, HashMap<String, String>, f64)], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
}
