//! The control virtqueue end to end: every command class through the
//! driver's control queue (in ASID 1), the OK/ERR answer, and the effect on
//! the dataplane (RX filter, config space, active pairs), plus malformed
//! commands that must get ERR while the queue keeps working. Every test
//! runs with split and with packed rings (the control queue too).

mod common;

use std::time::Duration;

use common::*;
use vduse_net::driver::net::{NetDriver, NetDriverConfig, QueuePair};
use vduse_net::driver::DriverTransport;
use vduse_net::net::features;
use vduse_net::vduse::model::ModelConfig;
use virtio_bindings::bindings::virtio_net as vn;

const T: Duration = Duration::from_secs(5);
const OK: u8 = 0;
const ERR: u8 = 1;

const RX: u8 = vn::VIRTIO_NET_CTRL_RX as u8;
const MAC: u8 = vn::VIRTIO_NET_CTRL_MAC as u8;
const VLAN: u8 = vn::VIRTIO_NET_CTRL_VLAN as u8;
const ANNOUNCE: u8 = vn::VIRTIO_NET_CTRL_ANNOUNCE as u8;
const MQ: u8 = vn::VIRTIO_NET_CTRL_MQ as u8;
const OFFLOADS: u8 = vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS as u8;

const PROMISC: u8 = vn::VIRTIO_NET_CTRL_RX_PROMISC as u8;
const ALLMULTI: u8 = vn::VIRTIO_NET_CTRL_RX_ALLMULTI as u8;
const ALLUNI: u8 = vn::VIRTIO_NET_CTRL_RX_ALLUNI as u8;
const NOMULTI: u8 = vn::VIRTIO_NET_CTRL_RX_NOMULTI as u8;
const NOUNI: u8 = vn::VIRTIO_NET_CTRL_RX_NOUNI as u8;
const NOBCAST: u8 = vn::VIRTIO_NET_CTRL_RX_NOBCAST as u8;

const OTHER_UNI: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];
const UNI2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x78];
const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 1];
const MCAST2: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 2];
const BCAST: [u8; 6] = [0xff; 6];

fn all_features(fmt: RingFormat) -> NetDriverConfig {
    let base = driver_config_fmt(fmt);
    NetDriverConfig {
        features: base.features
            | features::CTRL_RX_EXTRA
            | features::CTRL_VLAN
            | features::GUEST_ANNOUNCE
            | features::CTRL_GUEST_OFFLOADS,
        ..base
    }
}

struct Ctl {
    rig: Rig,
    d: NetDriver,
    q: Vec<QueuePair>,
}

impl Ctl {
    fn new(name: &str, pairs: u16, fmt: RingFormat, cfg: NetDriverConfig) -> Ctl {
        // GUEST_ANNOUNCE is not in the default offer: ask for it by name.
        let list = if cfg.features & features::GUEST_ANNOUNCE != 0 { "+guest_announce" } else { "-guest_announce" };
        let rig = Rig::with_fmt(device_offering(name, pairs, list), ModelConfig::patched_7_3(), fmt);
        let mut d = rig.probe(cfg);
        let q = d.take_pairs();
        Ctl { rig, d, q }
    }

    fn cmd(&mut self, class: u8, cmd: u8, data: &[u8]) -> u8 {
        self.d.ctrl(class, cmd, data).unwrap_or_else(|e| panic!("ctrl {class}/{cmd}: {e}"))
    }

    /// Send `n` frames on pair 0 that come back (after the loopback's MAC
    /// swap) addressed to `dst`, optionally VLAN-tagged; returns how many
    /// the device delivered, checking its counters account for all.
    fn deliver(&mut self, dst: [u8; 6], vlan: Option<u16>, n: usize) -> usize {
        let before = self.rig.stats().pairs[0];
        let sent = self.q[0].tx_burst(
            &mut |_, buf| {
                buf[0..6].copy_from_slice(&PEER_MAC);
                buf[6..12].copy_from_slice(&dst);
                let mut at = 12;
                if let Some(v) = vlan {
                    buf[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
                    buf[14..16].copy_from_slice(&v.to_be_bytes());
                    at = 16;
                }
                buf[at..at + 2].copy_from_slice(&0x88b5u16.to_be_bytes());
                buf[at + 2..64].fill(0xab);
                64
            },
            n,
        );
        assert_eq!(sent, n);
        let q = &mut self.q[0];
        q.post_rx();
        let rig = &self.rig;
        assert!(
            wait_for(T, || {
                let s = rig.stats().pairs[0];
                s.rx_frames + s.rx_filtered == before.rx_frames + before.rx_filtered + n as u64
            }),
            "device saw all {n} frames"
        );
        let after = self.rig.stats().pairs[0];
        let delivered = (after.rx_frames - before.rx_frames) as usize;
        let mut got = 0;
        assert!(wait_for(T, || {
            got += q.rx_burst(
                &mut |f| {
                    assert_eq!(&f[0..6], &dst, "delivered frame addressed as sent");
                    assert_eq!(f.len(), 64);
                },
                64,
            );
            q.reclaim_tx();
            got == delivered
        }));
        delivered
    }

    fn finish(self) {
        assert!(!self.rig.needs_reset());
        assert_eq!(self.rig.queue_errors(0), 0);
        drop(self.q);
        drop(self.d);
        self.rig.finish();
    }
}

fn rx_mode_commands_switch_the_filter(fmt: RingFormat) {
    let mut c = Ctl::new("cq-rx", 1, fmt, all_features(fmt));
    // Promiscuous by default (as QEMU): anything is delivered.
    assert_eq!(c.deliver(OTHER_UNI, None, 4), 4);
    assert_eq!(c.cmd(RX, PROMISC, &[0]), OK);
    assert_eq!(c.deliver(OTHER_UNI, None, 4), 0, "other unicast filtered without promisc");
    assert_eq!(c.deliver(DEV_MAC, None, 4), 4, "own MAC delivered");
    assert!(c.rig.stats().pairs[0].rx_filtered >= 4);

    assert_eq!(c.cmd(RX, ALLUNI, &[1]), OK);
    assert_eq!(c.deliver(OTHER_UNI, None, 3), 3);
    assert_eq!(c.cmd(RX, ALLUNI, &[0]), OK);
    assert_eq!(c.deliver(OTHER_UNI, None, 3), 0);

    assert_eq!(c.cmd(RX, NOUNI, &[1]), OK);
    assert_eq!(c.deliver(DEV_MAC, None, 3), 0, "NOUNI drops even our own MAC");
    assert_eq!(c.cmd(RX, NOUNI, &[0]), OK);
    assert_eq!(c.deliver(DEV_MAC, None, 3), 3);

    assert_eq!(c.deliver(BCAST, None, 2), 2, "broadcast on by default");
    assert_eq!(c.cmd(RX, NOBCAST, &[1]), OK);
    assert_eq!(c.deliver(BCAST, None, 2), 0);
    assert_eq!(c.cmd(RX, NOBCAST, &[0]), OK);
    assert_eq!(c.deliver(BCAST, None, 2), 2);

    assert_eq!(c.deliver(MCAST, None, 2), 0, "multicast not in the table");
    assert_eq!(c.cmd(RX, ALLMULTI, &[1]), OK);
    assert_eq!(c.deliver(MCAST, None, 2), 2);
    assert_eq!(c.cmd(RX, NOMULTI, &[1]), OK);
    assert_eq!(c.deliver(MCAST, None, 2), 0, "NOMULTI wins over ALLMULTI");
    assert_eq!(c.cmd(RX, NOMULTI, &[0]), OK);
    assert_eq!(c.deliver(MCAST, None, 2), 2);

    assert_eq!(c.cmd(RX, PROMISC, &[1]), OK);
    assert_eq!(c.deliver(UNI2, None, 2), 2);
    // Wrong data length: ERR, nothing changes.
    assert_eq!(c.cmd(RX, PROMISC, &[0, 0]), ERR);
    assert_eq!(c.cmd(RX, PROMISC, &[]), ERR);
    assert_eq!(c.deliver(UNI2, None, 2), 2, "still promiscuous");
    let s = c.rig.stats().slow_path;
    assert_eq!((s.ctrl_ok, s.ctrl_err), (11, 2));
    c.finish();
}

fn mac_table(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
    let mut v = Vec::new();
    for t in [uni, multi] {
        v.extend_from_slice(&(t.len() as u32).to_le_bytes());
        for m in t {
            v.extend_from_slice(m);
        }
    }
    v
}

fn mac_table_set_filters_unicast_and_multicast(fmt: RingFormat) {
    let mut c = Ctl::new("cq-table", 1, fmt, all_features(fmt));
    assert_eq!(c.cmd(RX, PROMISC, &[0]), OK);
    let set = vn::VIRTIO_NET_CTRL_MAC_TABLE_SET as u8;
    assert_eq!(c.cmd(MAC, set, &mac_table(&[OTHER_UNI], &[MCAST])), OK);
    assert_eq!(c.deliver(OTHER_UNI, None, 3), 3);
    assert_eq!(c.deliver(UNI2, None, 3), 0);
    assert_eq!(c.deliver(MCAST, None, 3), 3);
    assert_eq!(c.deliver(MCAST2, None, 3), 0);
    assert_eq!(c.deliver(DEV_MAC, None, 1), 1, "own MAC always");
    // Malformed tables: count beyond the data, truncated second table.
    let mut bad = mac_table(&[UNI2], &[MCAST2]);
    bad[0] = 5;
    assert_eq!(c.cmd(MAC, set, &bad), ERR);
    let mut short = mac_table(&[UNI2], &[MCAST2]);
    short.truncate(short.len() - 1);
    assert_eq!(c.cmd(MAC, set, &short), ERR);
    assert_eq!(c.cmd(MAC, set, &[1, 0]), ERR);
    // The old table is still in force.
    assert_eq!(c.deliver(OTHER_UNI, None, 2), 2);
    assert_eq!(c.deliver(UNI2, None, 2), 0);
    // An empty table drops both again.
    assert_eq!(c.cmd(MAC, set, &mac_table(&[], &[])), OK);
    assert_eq!(c.deliver(OTHER_UNI, None, 2), 0);
    assert_eq!(c.deliver(MCAST, None, 2), 0);
    c.finish();
}

fn mac_addr_set_changes_config_space_and_filter(fmt: RingFormat) {
    let mut c = Ctl::new("cq-mac", 1, fmt, all_features(fmt));
    let read_mac = |c: &Ctl| {
        let mut m = [0u8; 6];
        c.rig.t.read_config(0, &mut m).unwrap();
        m
    };
    assert_eq!(read_mac(&c), DEV_MAC);
    assert_eq!(c.cmd(RX, PROMISC, &[0]), OK);
    let set = vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8;
    assert_eq!(c.cmd(MAC, set, &OTHER_UNI), OK);
    assert_eq!(read_mac(&c), OTHER_UNI, "config space follows");
    assert_eq!(c.deliver(OTHER_UNI, None, 3), 3);
    assert_eq!(c.deliver(DEV_MAC, None, 3), 0, "the old address no longer matches");
    // Group address, wrong lengths: ERR, config unchanged.
    assert_eq!(c.cmd(MAC, set, &MCAST), ERR);
    assert_eq!(c.cmd(MAC, set, &OTHER_UNI[..5]), ERR);
    assert_eq!(c.cmd(MAC, set, &[0x02, 0, 0, 0, 0, 1, 0]), ERR);
    assert_eq!(read_mac(&c), OTHER_UNI);
    assert_eq!(c.cmd(MAC, set, &DEV_MAC), OK);
    assert_eq!(read_mac(&c), DEV_MAC);
    assert_eq!(c.deliver(DEV_MAC, None, 2), 2);
    c.finish();
}

fn vlan_add_and_del(fmt: RingFormat) {
    let mut c = Ctl::new("cq-vlan", 1, fmt, all_features(fmt));
    assert_eq!(c.cmd(RX, PROMISC, &[0]), OK);
    let (add, del) = (vn::VIRTIO_NET_CTRL_VLAN_ADD as u8, vn::VIRTIO_NET_CTRL_VLAN_DEL as u8);
    assert_eq!(c.deliver(DEV_MAC, Some(100), 3), 0, "VLAN 100 not in the table");
    assert_eq!(c.cmd(VLAN, add, &100u16.to_le_bytes()), OK);
    assert_eq!(c.deliver(DEV_MAC, Some(100), 3), 3);
    assert_eq!(c.deliver(DEV_MAC, Some(101), 3), 0);
    assert_eq!(c.deliver(DEV_MAC, None, 2), 2, "untagged unaffected");
    assert_eq!(c.cmd(VLAN, del, &100u16.to_le_bytes()), OK);
    assert_eq!(c.deliver(DEV_MAC, Some(100), 3), 0);
    // Out of range and bad length.
    assert_eq!(c.cmd(VLAN, add, &4096u16.to_le_bytes()), ERR);
    assert_eq!(c.cmd(VLAN, add, &[100]), ERR);
    assert_eq!(c.cmd(VLAN, del, &0xffffu16.to_le_bytes()), ERR);
    c.finish();
}

fn mq_pairs_set_enables_and_disables_pairs(fmt: RingFormat) {
    let mut c = Ctl::new("cq-mq", 2, fmt, all_features(fmt));
    let mut f1 = Flow::new(1);
    assert!(f1.exchange(&mut c.q[1], 50, T) && f1.clean(), "pair 1 runs after VQ_PAIRS_SET 2 in probe");
    assert!(f1.drain(&mut c.q[1], T));
    let set = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
    assert_eq!(c.cmd(MQ, set, &1u16.to_le_bytes()), OK);
    // Pair 1 is off: its TX chains stay on the ring.
    let used = c.q[1].raw_tx().used_idx();
    assert_eq!(f1.send(&mut c.q[1], 5), 5);
    c.q[1].kick_tx().unwrap();
    assert_eq!(f1.expect_silence(&mut c.q[1], Duration::from_millis(100)), 0);
    assert_eq!(c.q[1].raw_tx().used_idx(), used, "disabled pair consumed TX");
    // Pair 0 is unaffected.
    let mut f0 = Flow::new(0);
    assert!(f0.exchange(&mut c.q[0], 50, T) && f0.clean());
    // Out of range, bad length: ERR, pair 1 stays off.
    assert_eq!(c.cmd(MQ, set, &0u16.to_le_bytes()), ERR);
    assert_eq!(c.cmd(MQ, set, &3u16.to_le_bytes()), ERR);
    assert_eq!(c.cmd(MQ, set, &[2]), ERR);
    assert_eq!(c.q[1].raw_tx().used_idx(), used);
    // Back to 2: the waiting frames go through, in order, then more.
    assert_eq!(c.cmd(MQ, set, &2u16.to_le_bytes()), OK);
    c.q[1].kick_tx().unwrap();
    assert!(f1.drain(&mut c.q[1], T), "{f1:?}");
    assert!(f1.exchange(&mut c.q[1], 50, T) && f1.clean(), "{f1:?}");
    c.finish();
}

fn announce_ack_and_guest_offloads(fmt: RingFormat) {
    let mut c = Ctl::new("cq-misc", 1, fmt, all_features(fmt));
    let ack = vn::VIRTIO_NET_CTRL_ANNOUNCE_ACK as u8;
    assert_eq!(c.cmd(ANNOUNCE, ack, &[]), OK);
    assert_eq!(c.cmd(ANNOUNCE, ack, &[0]), ERR, "ACK carries no data");
    let mut st = [0u8; 2];
    c.rig.t.read_config(6, &mut st).unwrap();
    assert_eq!(u16::from_le_bytes(st) & vn::VIRTIO_NET_S_ANNOUNCE as u16, 0, "no announce pending");
    let set = vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET as u8;
    // No guest offload negotiated: only 0 is valid.
    assert_eq!(c.cmd(OFFLOADS, set, &0u64.to_le_bytes()), OK);
    assert_eq!(c.cmd(OFFLOADS, set, &features::GUEST_CSUM.to_le_bytes()), ERR);
    assert_eq!(c.cmd(OFFLOADS, set, &[0; 4]), ERR);
    let s = c.rig.stats().slow_path;
    assert_eq!((s.ctrl_ok, s.ctrl_err), (2, 3));
    c.finish();
}

fn malformed_commands_get_err_and_the_queue_goes_on(fmt: RingFormat) {
    // Without CTRL_RX_EXTRA, CTRL_VLAN, GUEST_ANNOUNCE, CTRL_GUEST_OFFLOADS.
    let mut c = Ctl::new("cq-bad", 1, fmt, driver_config_fmt(fmt));
    assert_eq!(c.d.features() & (features::CTRL_VLAN | features::CTRL_RX_EXTRA), 0);
    let bad: &[(u8, u8, &[u8])] = &[
        (99, 0, &[]),                                                    // unknown class
        (RX, 9, &[1]),                                                   // unknown command
        (MQ, vn::VIRTIO_NET_CTRL_MQ_RSS_CONFIG as u8, &[0; 8]),          // too short, RSS not negotiated
        (RX, ALLUNI, &[1]),                                              // needs CTRL_RX_EXTRA
        (VLAN, vn::VIRTIO_NET_CTRL_VLAN_ADD as u8, &5u16.to_le_bytes()), // needs CTRL_VLAN
        (ANNOUNCE, vn::VIRTIO_NET_CTRL_ANNOUNCE_ACK as u8, &[]),         // needs GUEST_ANNOUNCE
        (OFFLOADS, 0, &0u64.to_le_bytes()),                              // needs CTRL_GUEST_OFFLOADS
        (RX, PROMISC, &[]),                                              // bad length
        (MAC, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8, &[2; 7]),          // bad length
    ];
    for (i, &(class, cmd, data)) in bad.iter().enumerate() {
        assert_eq!(c.cmd(class, cmd, data), ERR, "bad command {i}: {class}/{cmd}");
        // The queue keeps working after each.
        assert_eq!(c.cmd(RX, PROMISC, &[1]), OK, "after bad command {i}");
    }
    // A command longer than the device accepts: ERR too.
    assert_eq!(c.cmd(RX, PROMISC, &[0; 4000]), ERR);
    assert_eq!(c.cmd(RX, ALLMULTI, &[1]), OK);
    let s = c.rig.stats().slow_path;
    assert_eq!((s.ctrl_ok, s.ctrl_err, s.needs_reset), (bad.len() as u64 + 1, bad.len() as u64 + 1, 0));
    let mut f = Flow::new(0);
    assert!(f.exchange(&mut c.q[0], 100, T) && f.clean());
    c.finish();
}

both_formats!(
    rx_mode_commands_switch_the_filter,
    mac_table_set_filters_unicast_and_multicast,
    mac_addr_set_changes_config_space_and_filter,
    vlan_add_and_del,
    mq_pairs_set_enables_and_disables_pairs,
    announce_ack_and_guest_offloads,
    malformed_commands_get_err_and_the_queue_goes_on,
);
