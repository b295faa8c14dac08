//! A real tap's link reaches the driver: a device on the embedded kernel
//! model whose port is a tap in a network namespace this test creates and
//! removes (root only; skipped with a message otherwise). `ip link set
//! down` / `up` on the tap must show in config `status` with one config
//! interrupt each.

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use vduse_net::backend::host::HostPorts;
use vduse_net::backend::tap;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy, NetDevice};
use vduse_net::driver::net::{NetDriver, NetDriverConfig};
use vduse_net::driver::DriverTransport;
use vduse_net::net::config::{STATUS_OFFSET, VIRTIO_NET_S_LINK_UP};
use vduse_net::vduse::model::{KernelModel, ModelConfig, ModelDriver};

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace the calling thread (and the threads it starts) works
/// in until drop, which removes it, taps included, even after a failure.
struct NetNs {
    name: String,
    orig: OwnedFd,
}

impl NetNs {
    fn enter(tag: &str) -> Option<NetNs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || run(&["ip", "-V"]).is_err() {
            eprintln!("skipped: needs root and iproute2");
            return None;
        }
        let name = format!("vnl{}-{tag}", std::process::id());
        run(&["ip", "netns", "add", &name]).expect("ip netns add");
        let orig = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap());
        let ns = NetNs { name, orig };
        let target = std::fs::File::open(format!("/run/netns/{}", ns.name)).expect("netns file");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        Some(ns)
    }

    fn sh(&self, cmd: &str) {
        run(&["ip", "netns", "exec", &self.name, "sh", "-c", cmd]).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = setns(self.orig.as_fd(), CloneFlags::CLONE_NEWNET);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

fn status_word(t: &Arc<ModelDriver>) -> u16 {
    let mut b = [0u8; 2];
    t.read_config(STATUS_OFFSET as u32, &mut b).expect("read config");
    u16::from_le_bytes(b)
}

#[test]
fn tap_carrier_changes_reach_config_status_with_an_interrupt_each() {
    let Some(ns) = NetNs::enter("tap") else { return };
    ns.sh("ip tuntap add vls0 mode tap multi_queue vnet_hdr && ip link set vls0 up");
    let HostPorts { ports, watch } = tap::open("vls0", 1).expect("attach tap");
    assert!(watch.is_up());
    let name = format!("vdn-lt-{}", std::process::id());
    let opts = DeviceOptions {
        name: name.clone(),
        queue_pairs: 1,
        idle: IdlePolicy::Adaptive { spins: 256 },
        ..DeviceOptions::default()
    };
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)));
    let running = NetDevice::create(model.control(), opts).expect("create").start_with_link(ports, Some(watch));
    let running = running.expect("start");
    let t = model.attach_vhost_vdpa(&name).expect("attach");
    let d = NetDriver::probe(t.clone() as Arc<dyn DriverTransport>, NetDriverConfig::default()).expect("probe");
    assert_eq!(status_word(&t), VIRTIO_NET_S_LINK_UP);
    let base = t.config_irq_count();

    ns.sh("ip link set vls0 down");
    assert!(t.wait_config_interrupt(Duration::from_secs(3)).unwrap(), "interrupt for link down");
    assert_eq!(status_word(&t), 0, "link down in config");
    ns.sh("ip link set vls0 up");
    assert!(t.wait_config_interrupt(Duration::from_secs(3)).unwrap(), "interrupt for link up");
    assert_eq!(status_word(&t), VIRTIO_NET_S_LINK_UP);
    assert_eq!(t.config_irq_count(), base + 2);
    let link = running.stats().link.expect("link stats");
    assert!(link.up && link.changes >= 2, "{link:?}");

    drop(d);
    assert!(!running.is_finished());
    model.detach(&name).expect("detach");
    running.stop().expect("stop");
    drop(ns);
}
