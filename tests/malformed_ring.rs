//! Malformed rings, one test per validation rule of the device-side
//! virtqueues. Each builds the bad chain by hand on pair 1 of a two-pair
//! device and asserts: the rule that fired (from the device's log), that
//! queue stopped (its error counter, and a valid chain after it is never
//! used), NEEDS_RESET visible to the driver, the process and the slow path
//! alive, and pair 0 still carrying checked traffic.
//!
//! Rules that apply to both ring formats run on both (`split::NAME` and
//! `packed::NAME`, from one body taking the format); rules of one layout
//! only (split: next indices, descriptor loops, avail index jumps; packed:
//! wrap counters) run on that one.

mod common;

use std::time::Duration;

use common::*;
use vduse_net::driver::net::{NetDriver, NetDriverConfig, QueuePair};
use vduse_net::driver::DriverTransport;
use vduse_net::net::features;
use vduse_net::uapi::virtio::{
    PackedDesc, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL,
};
use vduse_net::vduse::model::ModelConfig;
use vduse_net::virtq::packed::avail_bits;

const T: Duration = Duration::from_secs(5);

struct Case {
    rig: Rig,
    d: NetDriver,
    q: Vec<QueuePair>,
    flows: Vec<Flow>,
}

/// Two pairs, both shown to carry traffic first.
fn case(name: &str, fmt: RingFormat, cfg: NetDriverConfig) -> Case {
    // Indirect descriptors are not in the default offer: ask for them by name.
    let list = if cfg.features & features::INDIRECT_DESC != 0 { "+indirect_desc" } else { "-indirect_desc" };
    let rig = Rig::with_fmt(device_offering(name, 2, list), ModelConfig::patched_7_3(), fmt);
    let mut d = rig.probe(cfg);
    assert_eq!(d.pairs(), 2);
    let mut q = d.take_pairs();
    let mut flows = vec![Flow::new(0), Flow::new(1)];
    for (f, p) in flows.iter_mut().zip(q.iter_mut()) {
        assert!(f.exchange(p, 40, T), "pair {} carries traffic before", f.pair);
        assert!(f.clean(), "{f:?}");
        assert!(f.drain(p, T));
    }
    assert_eq!(q[1].tx_free(), q[1].ring_size() as usize, "pair 1 TX fully reclaimed");
    assert!(!rig.needs_reset());
    Case { rig, d, q, flows }
}

fn with_indirect(fmt: RingFormat) -> NetDriverConfig {
    let c = driver_config_fmt(fmt);
    NetDriverConfig { features: c.features | features::INDIRECT_DESC, ..c }
}

impl Case {
    /// Publish the raw TX chain(s) of pair 1 and kick.
    fn publish_tx(&mut self) {
        let tx = self.q[1].raw_tx();
        tx.publish();
        self.q[1].kick_tx().unwrap();
    }

    /// One raw TX chain headed at `head` (split).
    fn tx_chain(&mut self, head: u16) {
        self.q[1].raw_tx().as_split().expect("split ring").push_avail_raw(head);
        self.publish_tx();
    }

    /// One raw TX chain of `(addr, len, flags)` in the ring's own layout
    /// (split: at descriptor 0 on, head 0; packed: at the avail position,
    /// buffer id 0), published and kicked.
    fn raw_tx_chain(&mut self, descs: &[(u64, u32, u16)]) {
        self.q[1].raw_tx().push_raw_chain(0, descs, 0).unwrap();
        self.publish_tx();
    }

    /// An IOVA of a real TX buffer of pair 1 (mapped, ASID 0).
    fn buf(&self) -> u64 {
        self.q[1].tx_slot_iova(0)
    }

    /// Write an indirect table into the scratch page, in the ring's layout
    /// (packed entries keep `flags` at offset 14; `next` has no place
    /// there); returns its IOVA.
    fn table(&mut self, entries: &[vduse_net::uapi::virtio::VringDesc]) -> u64 {
        let packed = self.q[1].raw_tx().format() == RingFormat::Packed;
        let (off, iova, _) = self.d.scratch();
        for (i, e) in entries.iter().enumerate() {
            let b = if packed { packed_desc_bytes(e.addr, e.len, 0, e.flags) } else { desc_bytes(*e) };
            self.d.data_mem().write(off + 16 * i, &b);
        }
        iova
    }

    /// Everything the rules promise after a malformed `vq` of pair 1.
    fn assert_stopped(mut self, vq_is_tx: bool, why: &str) {
        assert!(self.rig.wait_queue_errors(1, 1), "pair 1 counted a queue error");
        assert!(wait_logged(why), "rule {why:?} fired; log: {:#?}", logged());
        assert!(wait_for(T, || self.rig.needs_reset()), "NEEDS_RESET visible, status {:#x}", self.rig.status());
        assert_eq!(self.rig.queue_errors(1), 1, "exactly one error");
        assert_eq!(self.rig.queue_errors(0), 0, "pair 0 untouched");

        // The stopped queue stays stopped: a valid chain after it is never used.
        let p = &mut self.q[1];
        if vq_is_tx {
            let used = p.raw_tx().used_idx();
            self.flows[1].send(p, 1);
            p.kick_tx().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(p.raw_tx().used_idx(), used, "stopped TX queue used a chain");
        } else {
            let used = p.raw_rx().used_idx();
            self.flows[1].send(p, 1);
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(p.raw_rx().used_idx(), used, "stopped RX queue used a chain");
        }

        // The other pair goes on, integrity checked.
        let f = &mut self.flows[0];
        assert!(f.exchange(&mut self.q[0], 500, T), "pair 0 still carries traffic: {f:?}");
        assert!(f.clean(), "{f:?}");
        // The slow path still answers control messages (GET_VQ_STATE): pair
        // 0's TX took and completed everything published.
        assert_eq!(self.rig.t.vring_base(1).unwrap(), self.q[0].raw_tx().published_base());
        let log = logged();
        assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
        drop(self.q);
        drop(self.d);
        let stats = self.rig.finish();
        assert_eq!(stats.pairs[0].queue_errors, 0);
    }
}

fn chain_longer_than_queue_size(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-long", fmt, driver_config_fmt(fmt));
    let n = c.q[1].ring_size();
    let buf = c.buf();
    // Every descriptor chained to the next: split links the last back to
    // the first (a loop); packed runs over the whole ring. Either walk
    // passes the queue size and must stop.
    let all: Vec<_> = (0..n).map(|_| (buf, 64, VRING_DESC_F_NEXT)).collect();
    c.raw_tx_chain(&all);
    c.assert_stopped(true, "chain longer than the queue size");
}

#[test]
fn descriptor_loop() {
    let _s = serial();
    let mut c = case("mr-loop", RingFormat::Split, driver_config());
    let buf = c.buf();
    let tx = c.q[1].raw_tx().as_split().unwrap();
    tx.write_desc(5, desc(buf, 64, VRING_DESC_F_NEXT, 6)).unwrap();
    tx.write_desc(6, desc(buf, 64, VRING_DESC_F_NEXT, 5)).unwrap();
    c.tx_chain(5);
    c.assert_stopped(true, "chain longer than the queue size");
}

fn nested_indirect(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-nest", fmt, with_indirect(fmt));
    let buf = c.buf();
    let (_, scratch, _) = c.d.scratch();
    // Entry 0 chains to entry 1 (packed tables are sequential anyway),
    // which is itself indirect.
    let table = c.table(&[desc(buf, 64, VRING_DESC_F_NEXT, 1), desc(scratch + 512, 16, VRING_DESC_F_INDIRECT, 0)]);
    c.raw_tx_chain(&[(table, 32, VRING_DESC_F_INDIRECT)]);
    c.assert_stopped(true, "indirect descriptor inside an indirect table");
}

fn indirect_without_the_feature(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-noind", fmt, driver_config_fmt(fmt));
    assert_eq!(c.d.features() & features::INDIRECT_DESC, 0);
    let buf = c.buf();
    let table = c.table(&[desc(buf, 64, 0, 0)]);
    c.raw_tx_chain(&[(table, 16, VRING_DESC_F_INDIRECT)]);
    c.assert_stopped(true, "indirect descriptors were not negotiated");
}

fn indirect_with_next(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-indnext", fmt, with_indirect(fmt));
    assert_ne!(c.d.features() & features::INDIRECT_DESC, 0);
    let buf = c.buf();
    let table = c.table(&[desc(buf, 64, 0, 0)]);
    c.raw_tx_chain(&[(table, 16, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT), (buf, 64, 0)]);
    c.assert_stopped(true, "indirect descriptor with NEXT set");
}

fn indirect_bad_length(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-indlen", fmt, with_indirect(fmt));
    let buf = c.buf();
    let table = c.table(&[desc(buf, 64, 0, 0), desc(buf, 64, 0, 0)]);
    // 24 bytes: not a whole number of descriptors.
    c.raw_tx_chain(&[(table, 24, VRING_DESC_F_INDIRECT)]);
    c.assert_stopped(true, "indirect table length 24");
}

fn indirect_longer_than_queue(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-indbig", fmt, with_indirect(fmt));
    let n = c.q[1].ring_size() as u32;
    let (_, scratch, len) = c.d.scratch();
    assert!(len >= 16 * (n as usize + 1));
    // One entry more than the queue size.
    c.raw_tx_chain(&[(scratch, 16 * (n + 1), VRING_DESC_F_INDIRECT)]);
    c.assert_stopped(true, &format!("indirect table length {}", 16 * (n + 1)));
}

/// Split: the avail entry names a head past the table. Packed: the buffer
/// id in the chain's last descriptor is past the ring.
fn head_index_out_of_range(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-head", fmt, driver_config_fmt(fmt));
    let n = c.q[1].ring_size();
    let buf = c.buf();
    c.q[1].raw_tx().push_raw_chain(0, &[(buf, 64, VRING_DESC_F_NEXT), (buf, 64, 0)], n + 5).unwrap();
    c.publish_tx();
    let why = match fmt {
        RingFormat::Split => format!("head index {} out of range", n + 5),
        RingFormat::Packed => format!("buffer id {} out of range", n + 5),
    };
    c.assert_stopped(true, &why);
}

#[test]
fn next_index_out_of_range() {
    let _s = serial();
    let mut c = case("mr-next", RingFormat::Split, driver_config());
    let n = c.q[1].ring_size();
    let buf = c.buf();
    c.q[1].raw_tx().as_split().unwrap().write_desc(3, desc(buf, 64, VRING_DESC_F_NEXT, n + 1)).unwrap();
    c.tx_chain(3);
    c.assert_stopped(true, &format!("next index {} out of range", n + 1));
}

#[test]
fn next_index_out_of_range_in_indirect_table() {
    let _s = serial();
    let mut c = case("mr-indnxt", RingFormat::Split, with_indirect(RingFormat::Split));
    let buf = c.buf();
    // Two entries; entry 0 points at entry 7.
    let table = c.table(&[desc(buf, 64, VRING_DESC_F_NEXT, 7), desc(buf, 64, 0, 0)]);
    c.q[1].raw_tx().as_split().unwrap().write_desc(0, desc(table, 32, VRING_DESC_F_INDIRECT, 0)).unwrap();
    c.tx_chain(0);
    c.assert_stopped(true, "next index 7 out of range");
}

#[test]
fn avail_index_jump() {
    let _s = serial();
    let mut c = case("mr-jump", RingFormat::Split, driver_config());
    let n = c.q[1].ring_size();
    let tx = c.q[1].raw_tx().as_split().unwrap();
    let idx = tx.avail_idx();
    tx.set_avail_idx_raw(idx.wrapping_add(n + 1));
    c.q[1].kick_tx().unwrap();
    c.assert_stopped(true, &format!("avail index jumped by {}", n + 1));
}

/// Packed only: a chain whose head is available but whose tail carries the
/// avail/used bits of the other lap (a wrap-counter mismatch).
#[test]
fn packed_tail_with_the_other_wrap_counter() {
    let _s = serial();
    let mut c = case("mr-wrap", RingFormat::Packed, driver_config_fmt(RingFormat::Packed));
    let buf = c.buf();
    let tx = c.q[1].raw_tx().as_packed().unwrap();
    let tail_slot = (tx.avail_pos().idx + 1) % tx.size();
    let tail_wrap = tx.avail_flags_at(1) & VRING_PACKED_DESC_F_AVAIL != 0;
    let wrong = avail_bits(!tail_wrap);
    tx.push_raw(&[
        PackedDesc { addr: buf, len: 12, id: 0, flags: VRING_DESC_F_NEXT | tx.avail_flags_at(0) },
        PackedDesc { addr: buf + 12, len: 64, id: 0, flags: wrong },
    ]);
    c.publish_tx();
    c.assert_stopped(
        true,
        &format!("descriptor {tail_slot} of a chain is not marked available (wrap counter mismatch"),
    );
}

fn iova_not_mapped(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-unmapped", fmt, driver_config_fmt(fmt));
    // Mapped in no address space at all.
    c.raw_tx_chain(&[(0x4000_0000, 64, 0)]);
    c.assert_stopped(true, "IOVA 0x40000000 is not mapped in address space 0");
}

fn writable_descriptor_in_tx_chain(fmt: RingFormat) {
    let _s = serial();
    let mut c = case("mr-txw", fmt, driver_config_fmt(fmt));
    let buf = c.buf();
    c.raw_tx_chain(&[(buf, 12, VRING_DESC_F_NEXT), (buf + 64, 64, VRING_DESC_F_WRITE)]);
    c.assert_stopped(true, "a device-writable descriptor where only readable ones belong");
}

fn readable_descriptor_in_rx_chain(fmt: RingFormat) {
    let _s = serial();
    // Pair 1's RX must not have buffers posted before the raw one, so no
    // traffic on pair 1 first (pair 0 shows the device works).
    let rig = Rig::new_fmt("mr-rxr", 2, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut q = d.take_pairs();
    let mut flows = vec![Flow::new(0), Flow::new(1)];
    assert!(flows[0].exchange(&mut q[0], 40, T));
    let buf = q[1].rx_slot_iova(0);
    let rx = q[1].raw_rx();
    rx.push_raw_chain(0, &[(buf, 2048, 0)], 0).unwrap();
    rx.publish();
    q[1].kick_rx().unwrap();
    // A frame for that RX queue makes the device walk the chain.
    assert_eq!(flows[1].send(&mut q[1], 1), 1);
    let mut c = Case { rig, d, q, flows };
    assert!(c.rig.wait_queue_errors(1, 1));
    // TX of the same pair is not affected: it keeps consuming frames.
    let p = &mut c.q[1];
    assert!(wait_for(T, || p.reclaim_tx() == 1 || p.tx_free() == p.ring_size() as usize));
    let used = p.raw_tx().used_idx();
    c.flows[1].send(p, 3);
    assert!(wait_for(T, || p.raw_tx().used_idx() == used.wrapping_add(3)), "pair 1 TX still runs");
    c.assert_stopped(false, "a device-readable descriptor where only writable ones belong");
}

fn misaligned_ring(fmt: RingFormat) {
    let _s = serial();
    let rig = Rig::new_fmt("mr-align", 2, fmt);
    let mut d = rig.probe(driver_config_fmt(fmt));
    let mut q = d.take_pairs();
    // Bring the device up again with pair 1's TX descriptor ring 8 bytes
    // off its 16-byte alignment (vhost-vdpa checks only the other areas).
    let st = reinit(&mut d, &mut q, |vq| if vq == 3 { 8 } else { 0 });
    assert_ne!(st & vduse_net::uapi::virtio::status::DRIVER_OK, 0);
    let flows = vec![Flow::new(0), Flow::new(1)];
    let mut c = Case { rig, d, q, flows };
    let addr = c.q[1].raw_tx().desc_iova() + 8;
    c.assert_stopped(true, &format!("ring address {addr:#x} misaligned"));
}

both_formats!(
    chain_longer_than_queue_size,
    nested_indirect,
    indirect_without_the_feature,
    indirect_with_next,
    indirect_bad_length,
    indirect_longer_than_queue,
    head_index_out_of_range,
    iova_not_mapped,
    writable_descriptor_in_tx_chain,
    readable_descriptor_in_rx_chain,
    misaligned_ring,
);
