//! Issue 8, fix 7: the device advertises only an MTU its ports carry. At the
//! largest MTU a slot port carries a full frame (MTU + Ethernet header +
//! VLAN tag) makes the round trip intact; one byte more is dropped and
//! counted, which is why a larger MTU is refused at start on such ports
//! (jumbo MTUs are for ports that size their buffers, e.g. a tap).

mod common;

use std::time::Duration;

use common::*;
use vduse_net::bench::frame;
use vduse_net::dataplane::device::SLOT_MTU as MAX_MTU;
use vduse_net::dataplane::NetDevice;
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::{KernelModel, ModelConfig};

const T: Duration = Duration::from_secs(5);

#[test]
fn an_mtu_above_the_slot_size_is_refused_at_start_on_slot_ports() {
    let model = KernelModel::new(ModelConfig::patched_7_3());
    let opts = vduse_net::dataplane::DeviceOptions { mtu: 9000, ..device_options("mtu-big", 1) };
    let dev = NetDevice::create(model.control(), opts).expect("a jumbo MTU is a valid option");
    let port: Box<dyn vduse_net::backend::Port> = Box::new(vduse_net::backend::loopback::Loopback::new(64, true));
    let e = dev.start(vec![port]).err().expect("mtu 9000 refused on a loopback port").to_string();
    assert!(e.contains("--mtu 9000 needs 9018-byte frames"), "{e}");
}

#[test]
fn the_largest_accepted_mtu_is_carried_and_one_byte_more_is_not() {
    let opts = vduse_net::dataplane::DeviceOptions { mtu: MAX_MTU, ..device_options("mtu-max", 1) };
    let rig = Rig::with(opts, ModelConfig::patched_7_3());
    let mut d = rig.probe(NetDriverConfig { buf_size: 4096, ..driver_config() });
    assert_eq!(d.mtu(), Some(MAX_MTU), "the config space advertises the largest MTU");
    let mut q = d.take_pairs().remove(0);
    let full = MAX_MTU as usize + 18;
    assert_eq!(full, frame::MAX_FRAME, "frame::build writes frames of this size in full");
    let mut flow = Flow { sizes: vec![full], ..Flow::new(0) };
    assert!(flow.exchange(&mut q, 20, T), "{full}-byte frames came back: {flow:?}");
    assert!(flow.clean(), "{flow:?}");

    // One byte more than a slot: built by hand (frame::build stops at MAX_FRAME).
    let before = rig.stats().pairs[0];
    let sent = q.tx_burst(
        &mut |_, buf| {
            buf[..full + 1].fill(0xab);
            buf[0..6].copy_from_slice(&PEER_MAC);
            buf[6..12].copy_from_slice(&DEV_MAC);
            full + 1
        },
        1,
    );
    assert_eq!(sent, 1);
    assert!(wait_for(T, || rig.stats().pairs[0].tx_dropped > before.tx_dropped), "oversized frame dropped and counted");
    assert_eq!(flow.expect_silence(&mut q, Duration::from_millis(100)), 0, "nothing came back");
    assert!(flow.exchange(&mut q, 5, T), "the queue still works: {flow:?}");
    assert!(flow.clean(), "{flow:?}");
    drop(q);
    drop(d);
    let st = rig.finish();
    assert_eq!(st.pairs[0].queue_errors, 0);
}
