//! Address-space isolation between the data queues (ASID 0) and the
//! control queue, whose group the driver moved to ASID 1: each group reads
//! and writes only through its current ASID, even where an IOVA is mapped
//! in the other one. Both tests run on both ring formats.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vduse_net::driver::net::{DriverError, NetDriverConfig};
use vduse_net::driver::{DmaMemory, DriverTransport};
use vduse_net::uapi::vhost_vdpa::VHOST_ACCESS_RW;
use vduse_net::uapi::virtio::{status, VRING_DESC_F_WRITE};
use virtio_bindings::bindings::virtio_net as vn;

const T: Duration = Duration::from_secs(5);
const CANARY_IOVA: u64 = 0x9000_0000;
const CANARY: &[u8; 16] = b"CANARY-IN-ASID-1";

fn canary_memory() -> Arc<DmaMemory> {
    let m = Arc::new(DmaMemory::new("canary", 8192).unwrap());
    for off in (0..4096).step_by(16) {
        m.write(off, CANARY);
    }
    m
}

fn canary_intact(m: &DmaMemory) -> bool {
    let mut b = vec![0u8; 4096];
    m.read(0, &mut b);
    b.chunks(16).all(|c| c == CANARY)
}

fn data_queues_cannot_reach_the_control_queue_address_space(fmt: RingFormat) {
    let _s = serial();
    let rig = Rig::new_fmt("asid-data", 2, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    assert_eq!((d.cvq_asid(), d.cvq_group()), (1, Some(2)));
    let mut q = d.take_pairs();
    let mut flows = vec![Flow::new(0), Flow::new(1)];
    for f in flows.iter_mut() {
        f.forbidden = Some(CANARY.to_vec());
    }
    assert!(flows[0].exchange(&mut q[0], 100, T) && flows[0].clean());

    // The canary lives in ASID 1 only.
    let canary = canary_memory();
    rig.t.iotlb_map(1, CANARY_IOVA, &canary, 0, canary.len(), VHOST_ACCESS_RW).unwrap();
    // The control queue, in ASID 1, does reach it: a command whose buffers
    // lie in the second page of that memory is served.
    let (class, cmd) = (vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_ALLMULTI as u8);
    let ack = d.ctrl_with_buffer_iova(class, cmd, &[1], &canary, 4096, CANARY_IOVA + 4096).unwrap();
    assert_eq!(ack, 0, "control command with buffers in ASID 1 served");

    // 1. An RX buffer of pair 1 pointing at the canary: writing a frame
    //    there must fail, not overwrite the canary.
    let rx = q[1].raw_rx();
    rx.push_raw_chain(0, &[(CANARY_IOVA, 2048, VRING_DESC_F_WRITE)], 0).unwrap();
    rx.publish();
    q[1].kick_rx().unwrap();
    assert_eq!(flows[1].send(&mut q[1], 1), 1);
    assert!(rig.wait_queue_errors(1, 1), "pair 1 RX stopped");
    assert!(wait_logged(&format!("vq 2: translation failed: IOVA {CANARY_IOVA:#x} is not mapped in address space 0")));
    assert!(wait_for(T, || rig.needs_reset()));
    assert_eq!(q[1].raw_rx().used_idx(), 0, "the RX chain was never completed");
    assert!(canary_intact(&canary), "canary overwritten through a data queue");

    // 2. A TX chain of pair 1 reading the canary: the queue stops and no
    //    byte of it goes out.
    let head = 10;
    let tx = q[1].raw_tx();
    tx.push_raw_chain(head, &[(CANARY_IOVA, 12 + 64, 0)], head).unwrap();
    tx.publish();
    q[1].kick_tx().unwrap();
    assert!(rig.wait_queue_errors(1, 2), "pair 1 TX stopped");
    assert!(wait_logged(&format!("vq 3: translation failed: IOVA {CANARY_IOVA:#x} is not mapped in address space 0")));
    let before = rig.stats().pairs[1].tx_frames;
    assert_eq!(before, 1, "only the valid frame left pair 1");

    // Pair 0 goes on; nothing it receives carries the canary, nor does
    // anything still arriving on pair 1.
    assert!(flows[0].exchange(&mut q[0], 1000, T), "{:?}", flows[0]);
    assert_eq!(flows[1].expect_silence(&mut q[1], Duration::from_millis(50)), 0);
    for f in &flows {
        assert_eq!(f.forbidden_seen, 0, "canary leaked into pair {}", f.pair);
    }
    assert!(flows[0].clean(), "{:?}", flows[0]);
    assert!(canary_intact(&canary));
    assert_eq!(rig.queue_errors(0), 0);
    drop(q);
    drop(d);
    let stats = rig.finish();
    assert_eq!(stats.pairs[1].queue_errors, 2);
}

fn control_buffer_in_data_address_space_is_refused(fmt: RingFormat) {
    let _s = serial();
    let rig = Rig::new_fmt("asid-cvq", 1, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    assert_eq!(d.cvq_asid(), 1);
    let mut q = d.take_pairs();
    let (class, cmd) = (vn::VIRTIO_NET_CTRL_MAC as u8, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8);
    let first = [0x02, 0, 0, 0, 0, 0x33];
    assert_eq!(d.ctrl(class, cmd, &first).unwrap(), 0, "a normal command works");
    let mut mac = [0u8; 6];
    rig.t.read_config(0, &mut mac).unwrap();
    assert_eq!(mac, first);
    let ok_before = rig.stats().slow_path.ctrl_ok;

    // Same command class, buffers in the data memory: mapped in ASID 0 only.
    let (off, iova, _) = d.scratch();
    let mem = d.data_mem().clone();
    let r = d.ctrl_with_buffer_iova(class, cmd, &[0x02, 0, 0, 0, 0, 0x44], &mem, off, iova);
    // Documented: the CVQ translates only in its group's ASID, and a chain
    // it cannot translate stops the queue like a malformed data ring
    // (NEEDS_RESET), rather than being answered ERR through memory it
    // must not touch.
    assert!(matches!(r, Err(DriverError::NeedsReset { .. })), "{r:?}");
    assert!(wait_logged(&format!("IOVA {iova:#x} is not mapped in address space 1")), "{:#?}", logged());
    assert!(logged().iter().any(|l| l.contains("control queue (vq 2, asid 1)")));
    assert_ne!(rig.status() & status::DEVICE_NEEDS_RESET, 0);
    let s = rig.stats().slow_path;
    assert_eq!((s.needs_reset, s.ctrl_ok), (1, ok_before), "refused, not applied");
    let mut ack = [0u8];
    mem.read(off + 8, &mut ack);
    assert_eq!(ack[0], 0xff, "the ack byte in ASID 0 was not written");
    rig.t.read_config(0, &mut mac).unwrap();
    assert_eq!(mac, first, "the MAC did not change");

    // The control queue stays stopped; data goes on. The RX filter still
    // holds the MAC set before, so frames must be addressed to it now.
    // The refused chain is never handed back, so the driver sees its
    // control queue busy.
    assert!(matches!(d.ctrl(class, cmd, &first), Err(DriverError::CtrlBusy)));
    assert_eq!(d.raw_cvq().unwrap().used_idx(), 1, "only the first command was used");
    assert_eq!(rig.stats().slow_path.ctrl_ok, ok_before);
    let p = &mut q[0];
    let mut seq = 0u64;
    let sent = p.tx_burst(
        &mut |_, buf| {
            let n = vduse_net::bench::frame::build(buf, 200, PEER_MAC, first, 0, seq);
            seq += 1;
            n
        },
        20,
    );
    assert_eq!(sent, 20);
    let mut got = 0;
    assert!(wait_for(T, || {
        p.post_rx();
        got += p.rx_burst(&mut |f| assert_eq!(&f[0..6], &first), 32);
        got == 20
    }));
    assert_eq!(rig.queue_errors(0), 0);
    drop(q);
    drop(d);
    rig.finish();
}

/// QEMU's live-migration restart: the control queue's group was in ASID 1;
/// after a reset QEMU sets the device up again with every queue shadowed in
/// ASID 0 and never moves the group back. A 7.3 kernel keeps its own
/// group -> ASID table and sends nothing, so the device must put every
/// group back in ASID 0 at the reset, or the control queue in ASID 0 cannot
/// be translated (seen with QEMU 10.0: "IOVA 0x23000 is not mapped in
/// address space 1", and the migration hung).
#[test]
fn reset_puts_the_control_queue_group_back_in_asid_0() {
    let _s = serial();
    let rig = Rig::new("asid-reset", 1);
    let (class, cmd) = (vn::VIRTIO_NET_CTRL_MAC as u8, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8);
    let mut d = rig.probe(driver_config());
    assert_eq!(d.cvq_asid(), 1);
    assert_eq!(d.ctrl(class, cmd, &[0x02, 0, 0, 0, 0, 0x51]).unwrap(), 0);
    drop(d); // SET_STATUS 0 and unmaps, as QEMU's stop

    let mut d = rig.probe(NetDriverConfig { cvq_asid: Some(0), ..driver_config() });
    assert_eq!(d.cvq_asid(), 0, "no SET_VQ_GROUP_ASID this time");
    let mac = [0x02, 0, 0, 0, 0, 0x52];
    assert_eq!(d.ctrl(class, cmd, &mac).unwrap(), 0, "the control queue is served from ASID 0");
    let mut got = [0u8; 6];
    rig.t.read_config(0, &mut got).unwrap();
    assert_eq!(got, mac);
    assert_eq!(rig.stats().slow_path.needs_reset, 0);
    drop(d);
    rig.finish();
}

both_formats!(
    data_queues_cannot_reach_the_control_queue_address_space,
    control_buffer_in_data_address_space_is_refused
);
