//! Packed-ring specifics on the embedded kernel model: the GET_VQ_STATE
//! reply in its packed form (`vduse_vq_state_packed`: avail counter and
//! index, used counter and index) after the ring wrapped, and a device that
//! offers RING_PACKED serving a driver that does not take it on split rings.

mod common;

use std::time::Duration;

use common::*;
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::Request;
use vduse_net::virtq::RingPos;

const T: Duration = Duration::from_secs(5);

#[test]
fn vq_state_reply_carries_the_packed_fields_after_wraps() {
    let rig = Rig::new_fmt("pk-state", 1, RingFormat::Packed);
    let t = rig.transport();
    // A small ring, so the traffic below wraps it several times.
    let mut d = rig.probe(NetDriverConfig { ring_size: 8, ..driver_config_fmt(RingFormat::Packed) });
    let mut q = d.take_pairs();
    let p = &mut q[0];
    let mut f = Flow::new(0);
    // 8 slots per lap, one slot per frame: 29 frames end at slot 5 of the
    // fourth lap (wrap counter 0 again after an odd number of flips).
    assert!(f.exchange(p, 29, T) && f.clean(), "{f:?}");
    p.reclaim_tx();
    assert_eq!(p.tx_free(), 8);
    let tx = p.raw_tx().as_packed().unwrap();
    assert_eq!(tx.used_pos(), RingPos { idx: 5, wrap: false });
    t.suspend().unwrap();
    let base = t.vring_base(p.tx_vq()).unwrap();
    assert_eq!(base, 0x0005_0005, "avail and used halves: slot 5, wrap counter 0");
    assert_eq!(base, p.raw_tx().restart_base());

    // The reply as the device wrote it: vq index, then last_avail_counter,
    // last_avail_idx, last_used_counter, last_used_idx.
    let log = rig.model.message_log(&rig.name);
    let m = log.iter().rev().find(|m| m.request == Request::GetVqState { index: 1 }).expect("GET_VQ_STATE logged");
    let at = |o: usize| u16::from_le_bytes([m.reply_payload[o], m.reply_payload[o + 1]]);
    assert_eq!(u32::from_le_bytes(m.reply_payload[0..4].try_into().unwrap()), 1);
    assert_eq!([at(4), at(6), at(8), at(10)], [0, 5, 0, 5]);

    // RX: every buffer posted is taken back as a frame, so its positions
    // follow the same count.
    let rx_base = t.vring_base(p.rx_vq()).unwrap();
    assert_eq!(rx_base, p.raw_rx().device_base());
    drop(q);
    drop(d);
    rig.finish();
}

#[test]
fn a_device_offering_packed_rings_serves_a_split_driver() {
    let rig = Rig::new_fmt("pk-offer", 1, RingFormat::Packed);
    // The default driver configuration does not ask for RING_PACKED.
    let mut d = rig.probe(driver_config());
    assert_eq!(RingFormat::of_features(d.features()), RingFormat::Split);
    let mut q = d.take_pairs();
    let mut f = Flow::new(0);
    assert!(f.exchange(&mut q[0], 300, T) && f.clean(), "{f:?}");
    assert!(q[0].raw_tx().as_split().is_some());
    drop(q);
    drop(d);
    rig.finish();
}
