//! A network namespace for tests that need root: the calling thread (and the
//! threads it starts meanwhile, like poll threads) works in it until drop,
//! which leaves it and removes it, its taps and veths included, even after a
//! failure. Included with `#[path]` by the tests that need it.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

pub struct NetNs {
    pub name: String,
    orig: OwnedFd,
}

/// Run a command; its stderr in the error.
pub fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetNs {
    /// A fresh namespace named `<prefix><pid>-<tag>` with `lo` up and IPv6
    /// off (no router solicitations in the counters); `None` (skipped,
    /// said on stderr) without root or iproute2.
    pub fn enter(prefix: &str, tag: &str) -> Option<NetNs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || run(&["ip", "-V"]).is_err() {
            eprintln!("skipped: needs root and iproute2");
            return None;
        }
        let name = format!("{prefix}{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]).expect("ip netns add");
        let orig = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap());
        let ns = NetNs { name, orig };
        let target = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        ns.sh("ip link set lo up; sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
        Some(ns)
    }

    /// Run a shell command in the namespace; panics on failure.
    pub fn sh(&self, cmd: &str) {
        self.try_sh(cmd).unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn try_sh(&self, cmd: &str) -> Result<(), String> {
        run(&["ip", "netns", "exec", &self.name, "sh", "-c", cmd])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = setns(self.orig.as_fd(), CloneFlags::CLONE_NEWNET);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}
