//! A real tap's link reaches the driver: a device on the embedded kernel
//! model whose port is a tap in a network namespace this test creates and
//! removes (root only; skipped with a message otherwise). `ip link set
//! down` / `up` on the tap must show in config `status` with one config
//! interrupt each.

use std::sync::Arc;
use std::time::Duration;

use vduse_net::backend::host::HostPorts;
use vduse_net::backend::tap;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy, NetDevice};
use vduse_net::driver::net::{NetDriver, NetDriverConfig};
use vduse_net::driver::DriverTransport;
use vduse_net::net::config::{STATUS_OFFSET, VIRTIO_NET_S_LINK_UP};
use vduse_net::vduse::model::{KernelModel, ModelConfig, ModelDriver};

#[path = "common/netns.rs"]
mod netns;
use netns::NetNs;

fn status_word(t: &Arc<ModelDriver>) -> u16 {
    let mut b = [0u8; 2];
    t.read_config(STATUS_OFFSET as u32, &mut b).expect("read config");
    u16::from_le_bytes(b)
}

#[test]
fn tap_carrier_changes_reach_config_status_with_an_interrupt_each() {
    let Some(ns) = NetNs::enter("vnl", "tap") else { return };
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
