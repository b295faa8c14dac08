//! A racing driver: while the device processes a queue pair, a thread acts
//! as the driver and, between well-formed chains, rewrites descriptors,
//! indirect tables, avail entries (flapping them between valid and invalid
//! heads right where the device reads) and the avail index in the driver's
//! memory. It also reaps the used rings as a driver would.
//!
//! Asserted for every round: no panic (the device threads live and the
//! slow path still answers), nothing reachable only through the other
//! address space changes (a canary page mapped only in ASID 1, pointed at by
//! corrupted descriptors), every used id is a head the device could have
//! taken (< queue size), no head is completed more often than it was put
//! in an avail slot, the used index never runs ahead of the avail entries
//! the device consumed (its reported position), which never runs ahead of
//! what was made available; and at the end the TX queue has either
//! processed everything made available or a queue was failed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vduse_net::bench::frame;
use vduse_net::driver::net::{NetDriverConfig, QueuePair};
use vduse_net::driver::ring::DriverQueue;
use vduse_net::driver::{DmaMemory, DriverTransport};
use vduse_net::net::features;
use vduse_net::uapi::vhost_vdpa::VHOST_ACCESS_RW;
use vduse_net::uapi::virtio::VRING_DESC_F_WRITE;

const CANARY_IOVA: u64 = 0x9000_0000;
/// Rounds 1..=8 mix benign races with rare corruption; the rest add a
/// second thread that flips the newest TX avail entries between their head
/// and an out-of-range one, as fast as it can.
const ROUNDS: u64 = 14;
const ROUND_TIME: Duration = Duration::from_millis(300);
/// Bounds a round well below a 16-bit wrap of the ring indices.
const MAX_POSTS: u64 = 20_000;

/// xorshift64*: reproducible from the round's seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_100k: u64) -> bool {
        self.below(100_000) < per_100k
    }
}

/// Where one driver ring lives in the driver's memory.
#[derive(Clone)]
struct RingView {
    mem: Arc<DmaMemory>,
    desc: usize,
    avail: usize,
    used: usize,
    size: u16,
    vq: u32,
    /// Buffer IOVA of each slot, and whether the device writes it (RX).
    bufs: Vec<u64>,
    buf_len: u32,
    writable: bool,
}

impl RingView {
    fn new(q: &DriverQueue, vq: u32, bufs: Vec<u64>, buf_len: u32, writable: bool) -> RingView {
        let l = q.layout();
        RingView {
            mem: q.memory().clone(),
            desc: q.offset(),
            avail: q.offset() + l.avail,
            used: q.offset() + l.used,
            size: q.size(),
            vq,
            bufs,
            buf_len,
            writable,
        }
    }
    fn atomic(&self, off: usize) -> &AtomicU16 {
        assert!(off % 2 == 0 && off + 2 <= self.mem.len());
        // SAFETY: in bounds (checked), 2-aligned (ring fields are), and the
        // mapping lives as long as `self.mem`; the device accesses these
        // words concurrently, which is what atomics are for.
        unsafe { AtomicU16::from_ptr(self.mem.as_ptr().add(off).cast()) }
    }
    fn write_desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.mem.write(self.desc + 16 * i as usize, &desc_bytes(desc(addr, len, flags, next)));
    }
    fn set_avail_entry(&self, slot: u16, head: u16) {
        self.atomic(self.avail + 4 + 2 * (slot % self.size) as usize).store(head.to_le(), Ordering::Relaxed);
    }
    fn set_avail_idx(&self, idx: u16) {
        // Release: descriptors and entries before the index, as a driver does.
        self.atomic(self.avail + 2).store(idx.to_le(), Ordering::Release);
    }
    fn avail_idx(&self) -> u16 {
        u16::from_le(self.atomic(self.avail + 2).load(Ordering::Relaxed))
    }
    fn used_idx(&self) -> u16 {
        u16::from_le(self.atomic(self.used + 2).load(Ordering::Acquire))
    }
    fn avail_entry(&self, slot: u16) -> u16 {
        u16::from_le(self.atomic(self.avail + 4 + 2 * (slot % self.size) as usize).load(Ordering::Relaxed))
    }
    fn used_id(&self, pos: u16) -> u32 {
        let mut b = [0u8; 4];
        self.mem.read(self.used + 4 + 8 * (pos % self.size) as usize, &mut b);
        u32::from_le_bytes(b)
    }
}

/// What the racing driver did and saw on one ring. Indices are relative
/// to `base`, the used index when the race starts (the device's position
/// then: the pair was idle).
#[derive(Default, Debug)]
struct Tally {
    base: u16,
    /// Chains posted (avail index = base + posted after a normal publish),
    /// counting those the regular driver had posted before the race.
    posted: u64,
    /// Largest avail index (relative to base) ever stored.
    max_exposed: u64,
    /// Used entries reaped so far.
    reaped: u64,
    /// Heads put in avail slots, with counts.
    written: HashMap<u16, u64>,
    /// Used ids seen, with counts.
    used: HashMap<u32, u64>,
    violations: Vec<String>,
}

impl Tally {
    fn new(r: &RingView) -> Tally {
        let (a, u) = (r.avail_idx(), r.used_idx());
        let mut t = Tally { base: u, ..Tally::default() };
        // Chains the regular driver posted and the device has not used yet
        // (RX buffers waiting for frames) count as made available.
        t.posted = a.wrapping_sub(u) as u64;
        t.max_exposed = t.posted;
        for k in 0..t.posted {
            *t.written.entry(r.avail_entry(u.wrapping_add(k as u16))).or_default() += 1;
        }
        t
    }
    fn expose(&mut self, r: &RingView, rel: u64) {
        r.set_avail_idx(self.base.wrapping_add(rel as u16));
        self.max_exposed = self.max_exposed.max(rel);
    }
    fn write_head(&mut self, r: &RingView, slot_rel: u64, head: u16) {
        r.set_avail_entry(self.base.wrapping_add(slot_rel as u16), head);
        *self.written.entry(head).or_default() += 1;
    }
    /// Read new used entries (as a driver's pop_used would).
    fn reap(&mut self, r: &RingView) {
        let u = r.used_idx();
        let seen = self.base.wrapping_add(self.reaped as u16);
        let n = u.wrapping_sub(seen) as u64;
        if n > r.size as u64 {
            self.violations.push(format!("vq {}: used index jumped by {n} (> size {})", r.vq, r.size));
            self.reaped += n;
            return;
        }
        for k in 0..n {
            let id = r.used_id(seen.wrapping_add(k as u16));
            if id >= r.size as u32 {
                self.violations.push(format!("vq {}: used id {id} >= size {}", r.vq, r.size));
            }
            *self.used.entry(id).or_default() += 1;
        }
        self.reaped += n;
        if self.reaped > self.max_exposed {
            self.violations.push(format!(
                "vq {}: {} used entries but only {} avail entries were ever made available",
                r.vq, self.reaped, self.max_exposed
            ));
        }
    }
}

struct Racer {
    rng: Rng,
    rings: [RingView; 2],
    tallies: [Tally; 2],
    scratch_iova: u64,
    scratch_off: usize,
    transport: Arc<dyn DriverTransport>,
    /// Per-round rates, in steps per 100 000. Benign races (a valid
    /// descriptor or head swapped for another valid one under the device)
    /// keep the queue alive; the others usually make it fail.
    rewrite_desc: u64,
    swap_head: u64,
    /// Newest TX slot posted, plus one (0: none yet), for the flipper.
    newest_tx: Arc<AtomicU64>,
    corrupt_desc: u64,
    flap_bad_head: u64,
    jitter_idx: u64,
    big_jump: u64,
}

impl Racer {
    fn random_addr(&mut self, ring: usize) -> u64 {
        let r = &self.rings[ring];
        match self.rng.below(6) {
            0 | 1 => r.bufs[self.rng.below(r.bufs.len() as u64) as usize] + self.rng.below(64),
            2 => CANARY_IOVA + self.rng.below(4096),
            3 => self.scratch_iova + 16 * self.rng.below(4),
            4 => r.bufs[0].wrapping_sub(self.rng.below(0x10_0000)),
            _ => self.rng.next(),
        }
    }

    fn corrupt_descriptor(&mut self, ring: usize) {
        let size = self.rings[ring].size as u64;
        let i = self.rng.below(size) as u16;
        let addr = self.random_addr(ring);
        let len = match self.rng.below(4) {
            0 => 0,
            1 => 16 * (1 + self.rng.below(4)) as u32,
            2 => self.rng.below(4096) as u32,
            _ => self.rng.next() as u32,
        };
        let flags = self.rng.below(8) as u16;
        let next = self.rng.below(size + 2) as u16;
        self.rings[ring].write_desc(i, addr, len, flags, next);
        // Now and then an indirect table gets rewritten under the device.
        if self.rng.chance(30_000) {
            let e = desc(
                self.random_addr(ring),
                self.rng.below(4096) as u32,
                self.rng.below(8) as u16,
                self.rng.below(5) as u16,
            );
            let k = self.rng.below(4) as usize;
            self.rings[ring].mem.write(self.scratch_off + 16 * k, &desc_bytes(e));
        }
    }

    /// One well-formed chain, like a driver posts it (one descriptor, or an
    /// indirect table with one entry now and then).
    fn post(&mut self, ring: usize) {
        let t = &self.tallies[ring];
        let r = self.rings[ring].clone();
        if t.posted >= MAX_POSTS || t.posted - t.reaped.min(t.posted) >= r.size as u64 {
            return;
        }
        let slot = t.posted;
        let head = (slot % r.size as u64) as u16;
        let buf = r.bufs[head as usize];
        let flags = if r.writable { VRING_DESC_F_WRITE } else { 0 };
        r.write_desc(head, buf, r.buf_len, flags, 0);
        self.tallies[ring].write_head(&r, slot, head);
        self.tallies[ring].posted += 1;
        let rel = self.tallies[ring].posted;
        self.tallies[ring].expose(&r, rel);
        if ring == 0 {
            self.newest_tx.store(rel, Ordering::Relaxed);
        }
        if self.rng.chance(20_000) {
            let _ = self.transport.kick(r.vq);
        }
    }

    /// Rewrite a descriptor with another well-formed buffer of its ring
    /// while the device may be reading it.
    fn rewrite_descriptor(&mut self, ring: usize) {
        let r = self.rings[ring].clone();
        let i = self.rng.below(r.size as u64) as u16;
        let buf = r.bufs[self.rng.below(r.size as u64) as usize];
        r.write_desc(i, buf, r.buf_len, if r.writable { VRING_DESC_F_WRITE } else { 0 }, 0);
    }

    /// Flip the avail entry the device is about to read between its head
    /// and `other` a few times, ending on its head.
    fn flap(&mut self, ring: usize, bad: bool) {
        let r = self.rings[ring].clone();
        let t = &self.tallies[ring];
        if t.posted == 0 {
            return;
        }
        let slot = t.posted - 1 - self.rng.below(t.posted.min(4));
        let good = (slot % r.size as u64) as u16;
        for _ in 0..self.rng.below(8) + 1 {
            let other = if bad { r.size + self.rng.below(4) as u16 } else { self.rng.below(r.size as u64) as u16 };
            self.tallies[ring].write_head(&r, slot, other);
            std::hint::spin_loop();
            self.tallies[ring].write_head(&r, slot, good);
        }
    }

    fn jitter(&mut self, ring: usize) {
        let r = self.rings[ring].clone();
        let posted = self.tallies[ring].posted;
        // Never more than `size` ahead of what was reaped, so a correct
        // device cannot overwrite used entries not yet read.
        let room = (self.tallies[ring].reaped + r.size as u64).saturating_sub(posted).min(4) as i64;
        let delta = self.rng.below(5 + room as u64) as i64 - 4;
        let rel = (posted as i64 + delta).max(0) as u64;
        self.tallies[ring].expose(&r, rel);
        std::hint::spin_loop();
        self.tallies[ring].expose(&r, posted);
    }

    fn step(&mut self) {
        let ring = self.rng.below(2) as usize;
        if self.rng.chance(self.rewrite_desc) {
            self.rewrite_descriptor(ring);
        }
        if self.rng.chance(self.swap_head) {
            self.flap(ring, false);
        }
        if self.rng.chance(self.corrupt_desc) {
            self.corrupt_descriptor(ring);
        }
        if self.rng.chance(self.flap_bad_head) {
            self.flap(ring, true);
        }
        if self.rng.chance(self.jitter_idx) {
            self.jitter(ring);
        }
        if self.rng.chance(self.big_jump) {
            let r = self.rings[ring].clone();
            let rel = self.tallies[ring].posted + r.size as u64 + 1 + self.rng.below(100);
            self.tallies[ring].expose(&r, rel);
        }
        self.post(ring);
        for (t, r) in self.tallies.iter_mut().zip(self.rings.iter()) {
            t.reap(r);
        }
    }
}

fn canary() -> Arc<DmaMemory> {
    let m = Arc::new(DmaMemory::new("race-canary", 4096).unwrap());
    m.write(0, &[0xc5; 4096]);
    m
}

fn canary_intact(m: &DmaMemory) -> bool {
    let mut b = vec![0u8; 4096];
    m.read(0, &mut b);
    b.iter().all(|&x| x == 0xc5)
}

/// TX buffers hold valid frames addressed so the MAC-swapping loopback
/// sends them back to the device's own address.
fn fill_tx_buffers(p: &QueuePair) {
    for slot in 0..p.ring_size() {
        let mut buf = vec![0u8; p.buf_size()];
        let n = frame::build(&mut buf[12..], 200, PEER_MAC, DEV_MAC, 0, slot as u64);
        p.memory().write(p.tx_slot_offset(slot), &buf[..12 + n]);
    }
}

fn round(seed: u64) {
    let name = format!("race{seed}");
    let rig = Rig::new(&name, 1);
    let cfg =
        NetDriverConfig { features: NetDriverConfig::DEFAULT_FEATURES | features::INDIRECT_DESC, ..driver_config() };
    let mut d = rig.probe(cfg);
    assert_eq!(d.cvq_asid(), 1, "the control queue has its own ASID");
    let mut pairs = d.take_pairs();
    let p = &mut pairs[0];
    // Show the pair works, then take its rings over.
    let mut flow = Flow::new(0);
    assert!(flow.exchange(p, 20, Duration::from_secs(5)), "{flow:?}");
    assert!(flow.drain(p, Duration::from_secs(5)) && flow.clean(), "{flow:?}");
    let canary = canary();
    rig.t.iotlb_map(1, CANARY_IOVA, &canary, 0, canary.len(), VHOST_ACCESS_RW).unwrap();
    fill_tx_buffers(p);
    let size = p.ring_size();
    let (rx_vq, tx_vq) = (p.rx_vq(), p.tx_vq());
    let rx_bufs = (0..size).map(|s| p.rx_slot_iova(s)).collect();
    let tx_bufs = (0..size).map(|s| p.tx_slot_iova(s)).collect();
    let buf_len = p.buf_size() as u32;
    let tx = RingView::new(p.raw_tx().as_split().expect("split ring"), tx_vq, tx_bufs, 12 + 200, false);
    let rx = RingView::new(p.raw_rx().as_split().expect("split ring"), rx_vq, rx_bufs, buf_len, true);
    let (scratch_off, scratch_iova, _) = d.scratch();

    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut racer = Racer {
        tallies: [Tally::new(&tx), Tally::new(&rx)],
        rings: [tx, rx],
        scratch_iova,
        scratch_off,
        transport: rig.transport(),
        // Even rounds race without breaking anything on purpose, so the
        // device works through many chains under benign races; odd rounds
        // add rare corruption that usually fails the queue.
        rewrite_desc: 2_000 + rng.below(20_000),
        swap_head: 2_000 + rng.below(20_000),
        newest_tx: Arc::new(AtomicU64::new(0)),
        corrupt_desc: if seed % 2 == 1 && seed <= 8 { rng.below(5) } else { 0 },
        flap_bad_head: if seed % 2 == 1 && seed <= 8 { 50_000 } else { 0 },
        jitter_idx: if seed % 2 == 1 && seed <= 8 { rng.below(20) } else { 0 },
        big_jump: if seed % 8 == 7 { 1 } else { 0 },
        rng,
    };
    // Indirect tables in the scratch page start out well formed.
    for k in 0..4 {
        let e = desc(racer.rings[0].bufs[k], 212, 0, 0);
        racer.rings[0].mem.write(scratch_off + 16 * k, &desc_bytes(e));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = (seed > 8).then(|| {
        let (r, base, newest, stop) =
            (racer.rings[0].clone(), racer.tallies[0].base, racer.newest_tx.clone(), stop.clone());
        std::thread::spawn(move || {
            // Heads written, for the per-head check.
            let mut written: HashMap<u16, u64> = HashMap::new();
            let mut rng = Rng(seed | 1);
            while !stop.load(Ordering::Relaxed) {
                let n = newest.load(Ordering::Relaxed);
                if n == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                let rel = n - 1 - rng.below(n.min(3));
                let slot = base.wrapping_add(rel as u16);
                let good = (rel % r.size as u64) as u16;
                r.set_avail_entry(slot, r.size + 1);
                std::hint::spin_loop();
                r.set_avail_entry(slot, good);
                *written.entry(good).or_default() += 1;
            }
            written
        })
    });
    let racer = std::thread::spawn(move || {
        let end = Instant::now() + ROUND_TIME;
        while Instant::now() < end {
            for _ in 0..64 {
                racer.step();
            }
        }
        racer
    });
    let mut racer = racer.join().expect("racing driver thread");
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flipper {
        for (h, n) in f.join().expect("flipper thread") {
            *racer.tallies[0].written.entry(h).or_default() += n;
        }
    }

    // Let the device settle: TX drained, or a queue failed. A driver keeps
    // posting receive buffers meanwhile, so the port can empty.
    let settled = wait_for(Duration::from_secs(5), || {
        racer.post(1);
        for (t, r) in racer.tallies.iter_mut().zip(racer.rings.iter()) {
            t.reap(r);
        }
        let _ = racer.transport.kick(rx_vq);
        let _ = racer.transport.kick(tx_vq);
        let tx_base = racer.tallies[0].base;
        let consumed = rig.t.vring_base(tx_vq).map(|b| (b as u16).wrapping_sub(tx_base) as u64).unwrap_or(0);
        consumed >= racer.tallies[0].posted || rig.queue_errors(0) > 0
    });
    assert!(settled, "seed {seed}: TX neither processed what was made available nor failed: {:?}", racer.tallies[0]);
    std::thread::sleep(Duration::from_millis(20));
    for (t, r) in racer.tallies.iter_mut().zip(racer.rings.iter()) {
        t.reap(r);
    }

    for (t, r) in racer.tallies.iter().zip(racer.rings.iter()) {
        assert!(t.violations.is_empty(), "seed {seed}: {:#?}", t.violations);
        // The device's own position (GET_VQ_STATE through the slow path;
        // split rings: the avail index in the low 16 bits).
        let pos = rig.t.vring_base(r.vq).expect("slow path answers GET_VQ_STATE") as u16;
        let consumed = pos.wrapping_sub(t.base) as u64;
        assert!(
            consumed <= t.max_exposed,
            "seed {seed} vq {}: consumed {consumed} > made available {}",
            r.vq,
            t.max_exposed
        );
        assert!(
            t.reaped <= consumed,
            "seed {seed} vq {}: {} used entries for {consumed} consumed avail entries (a head completed twice)",
            r.vq,
            t.reaped
        );
        for (id, n) in &t.used {
            let w = t.written.get(&(*id as u16)).copied().unwrap_or(0);
            assert!(*n <= w, "seed {seed} vq {}: head {id} completed {n} times, made available {w} times", r.vq);
        }
    }
    assert!(canary_intact(&canary), "seed {seed}: the canary mapped only in ASID 1 changed");
    let log = logged();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:#?}");
    eprintln!(
        "racing driver seed {seed}: tx posted {} used {}, rx posted {} used {}, queue errors {}",
        racer.tallies[0].posted,
        racer.tallies[0].reaped,
        racer.tallies[1].posted,
        racer.tallies[1].reaped,
        rig.queue_errors(0)
    );
    drop(pairs);
    drop(d);
    rig.finish();
}

#[test]
fn racing_driver_cannot_break_the_device() {
    let _s = serial();
    let start = Instant::now();
    for seed in 1..=ROUNDS {
        round(seed);
    }
    assert!(start.elapsed() < Duration::from_secs(120), "took {:?}", start.elapsed());
}

/// A sanity check of the harness itself: without corruption the racing
/// driver's chains all go through and are all accounted for.
#[test]
fn racing_harness_without_corruption_processes_everything() {
    let _s = serial();
    round_clean();
}

fn round_clean() {
    let rig = Rig::new("race-clean", 1);
    let mut d = rig.probe(driver_config());
    let mut pairs = d.take_pairs();
    let p = &mut pairs[0];
    fill_tx_buffers(p);
    let size = p.ring_size();
    let (tx_vq, rx_vq, buf_len) = (p.tx_vq(), p.rx_vq(), p.buf_size() as u32);
    let tx_bufs = (0..size).map(|s| p.tx_slot_iova(s)).collect();
    let rx_bufs = (0..size).map(|s| p.rx_slot_iova(s)).collect();
    let tx = RingView::new(p.raw_tx().as_split().expect("split ring"), tx_vq, tx_bufs, 212, false);
    let rx = RingView::new(p.raw_rx().as_split().expect("split ring"), rx_vq, rx_bufs, buf_len, true);
    let (scratch_off, scratch_iova, _) = d.scratch();
    let mut racer = Racer {
        tallies: [Tally::new(&tx), Tally::new(&rx)],
        rings: [tx, rx],
        scratch_iova,
        scratch_off,
        transport: rig.transport(),
        rewrite_desc: 0,
        swap_head: 0,
        newest_tx: Arc::new(AtomicU64::new(0)),
        corrupt_desc: 0,
        flap_bad_head: 0,
        jitter_idx: 0,
        big_jump: 0,
        rng: Rng(42),
    };
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        racer.step();
    }
    let done = wait_for(Duration::from_secs(5), || {
        racer.post(1);
        for (t, r) in racer.tallies.iter_mut().zip(racer.rings.iter()) {
            t.reap(r);
        }
        let _ = racer.transport.kick(racer.rings[0].vq);
        let _ = racer.transport.kick(racer.rings[1].vq);
        racer.tallies[0].reaped == racer.tallies[0].posted
    });
    assert!(done, "{:?}", racer.tallies[0]);
    assert!(racer.tallies[0].posted > 100, "the harness moved traffic: {:?}", racer.tallies[0].posted);
    for t in &racer.tallies {
        assert!(t.violations.is_empty(), "{:?}", t.violations);
    }
    assert_eq!(rig.queue_errors(0), 0);
    drop(pairs);
    drop(d);
    rig.finish();
}
