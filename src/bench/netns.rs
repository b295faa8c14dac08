//! Network namespaces for tests and benchmarks that need real interfaces:
//! a private namespace with veth pairs and the tc mirred reflector, deleted
//! (with everything in it) when the value is dropped, even after a failed
//! assertion. Uses the `ip` and `tc` commands (iproute2).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a namespace test cannot run here (not root, no iproute2); `None`
/// when it can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, veth, XDP)".into());
    }
    for tool in ["ip", "tc"] {
        let ok = Command::new(tool).arg("-V").output().map(|o| o.status.success()).unwrap_or(false);
        if !ok {
            return Some(format!("needs the {tool} command (iproute2)"));
        }
    }
    None
}

fn run(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the tc reflector sends a frame back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reflect {
    /// `mirred egress redirect`: the frame itself goes back.
    Redirect,
    /// `mirred egress mirror`: a clone goes back (the original goes on to
    /// the far end's stack, which has no use for it). Needed when the
    /// near end runs generic (skb) XDP, which passes frames tc redirected
    /// straight to the stack (net/core/dev.c, netif_receive_generic_xdp:
    /// "Reinjected packets coming from act_mirred or similar should not
    /// get XDP generic processing").
    Mirror,
}

/// A network namespace that lives as long as this value.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace `<prefix><pid>-<n>` with IPv6 off (so the kernel
    /// sends no frames of its own on new interfaces) and `lo` up.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.exec(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; ip link set lo up",
        ])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run a command inside the namespace; its stdout.
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// `ip -n NS ARGS...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A veth pair `a` <-> `b`, both up, with `queues` queues each way.
    pub fn veth(&self, a: &str, b: &str, queues: u32) -> io::Result<()> {
        let q = queues.to_string();
        self.ip(&[
            "link",
            "add",
            a,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        self.ip(&["link", "set", a, "up"])?;
        self.ip(&["link", "set", b, "up"])?;
        Ok(())
    }

    /// Every frame arriving on `dev` is sent back out of `dev` (tc mirred).
    pub fn reflector(&self, dev: &str, how: Reflect) -> io::Result<()> {
        self.exec(&["tc", "qdisc", "add", "dev", dev, "clsact"])?;
        let mut args =
            vec!["tc", "filter", "add", "dev", dev, "ingress", "protocol", "all", "u32", "match", "u32", "0", "0"];
        match how {
            Reflect::Redirect => args.extend(["action", "mirred", "egress", "redirect", "dev", dev]),
            Reflect::Mirror => args.extend(["action", "mirred", "egress", "mirror", "dev", dev]),
        }
        self.exec(&args)?;
        Ok(())
    }

    /// Move the calling thread into the namespace until the guard drops.
    /// Threads it starts meanwhile start in the namespace too.
    pub fn enter(&self) -> io::Result<Entered> {
        let home = File::open("/proc/thread-self/ns/net")?;
        let target = File::open(format!("/var/run/netns/{}", self.name))?;
        setns(&target)?;
        Ok(Entered { home })
    }
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: setns on a namespace fd we hold open; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its interfaces (and their qdiscs
        // and XDP programs) once nothing holds it.
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("netns {}: {e}", self.name);
        }
    }
}

/// The calling thread is in another namespace until this drops.
pub struct Entered {
    home: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.home) {
            eprintln!("could not return to the original network namespace: {e}");
        }
    }
}
