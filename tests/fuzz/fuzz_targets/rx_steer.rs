//! The RX path of the poll threads end to end: port frames (any bytes,
//! offload metadata, up to 64 KiB) arrive on the ports of 1 to 8 pairs,
//! RSS or hash reports are configured as control-queue commands set them,
//! MRG_RXBUF and HASH_REPORT are on or off, and the driver posts RX chains
//! of any shape (tiny buffers, too few, zero-length, read-only, outside the
//! mapped address space, heads out of range). Each pair is the real
//! `PollThread` (`dataplane::poll::fuzzing::FuzzPair`), stepped by hand:
//! `process_rx` with RSS handoff to the other pairs, `forward_port` for
//! pairs the driver does not use, and the MRG placement.
//!
//! Oracles, computed here from the driver's side (the used rings and the
//! bytes in its buffers):
//! - every used entry answers a chain the driver posted and had not got
//!   back (no head twice), with a length within that chain's buffers;
//! - every delivered frame is an offered frame, byte for byte, on the
//!   receive queue the RSS configuration designates: the Toeplitz hash is
//!   recomputed here bit by bit (checked against Microsoft's RSS
//!   verification vectors) over the fields `rss::hash_input` selects, then
//!   the indirection table / unclassified queue picks the queue; without
//!   RSS the arrival pair, or for a pair the driver does not use
//!   `pair % rx_pairs`. One exception, until frames over a handoff slot
//!   are steered (issue 11, branch steer): such a frame may stay on its
//!   arrival pair, and then it is counted `rx_unsteered`;
//! - each frame is delivered once (deliveries are matched to offered
//!   copies of the same bytes, each copy at most once, on a queue that
//!   copy may go to); `num_buffers` is 1 without MRG_RXBUF and
//!   equals the used entries the frame spans with it; with HASH_REPORT the
//!   header's hash value and report are the expected ones (zero when no
//!   hash is configured);
//! - counters add up: frames delivered == `rx_frames`, per queue; and
//!   offered == delivered + filtered + dropped (too small, offload,
//!   steering that waited past the back-pressure bound) + still waiting in
//!   a port (a frame blocked at a full pair stays there) or a handoff ring
//!   at the end;
//! - no panic, and nothing written outside the mapped buffers (the ring
//!   memory beyond the rings stays zero).
//!
//! The oracle was checked by mutation: RSS steering a frame to the queue
//! after the designated one for half the hashes is found within a minute.
//! `RX_STEER_DEBUG=1` prints what became of each input's frames.

#![no_main]

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use nix::sys::eventfd::{EfdFlags, EventFd};
use vduse_net::backend::{FrameMeta, Port, PortFrame};
use vduse_net::dataplane::poll::fuzzing::{FuzzPair, HANDOFF_MAX_FRAME};
use vduse_net::dataplane::poll::{Handoff, PollSetup};
use vduse_net::dataplane::stats::PairCell;
use vduse_net::dataplane::{rx_vq, IdlePolicy};
use vduse_net::driver::DmaMemory;
use vduse_net::mem::{AddressSpace, Qsbr};
use vduse_net::net::ctrl::{CtrlCommand, CtrlState, HashConfig, RssConfig};
use vduse_net::net::features as f;
use vduse_net::net::filter::{FilterCell, RxFilter};
use vduse_net::net::hdr::{self, HASH_HDR_LEN, HDR_LEN};
use vduse_net::net::offload::OffloadCaps;
use vduse_net::net::rss;
use vduse_net::net::wire::build::{CsumFill, FrameSpec};
use vduse_net::uapi::vduse::{VDUSE_ACCESS_RO, VDUSE_ACCESS_RW};
use vduse_net::vduse::{IotlbRegion, IovaInfo, VduseDevice, VduseError, VqInfo};
use vduse_net::virtq::{QueueConfig, RingFormat};
use vduse_net_fuzz::{desc_bytes, Region, Regions};

const MAX_PAIRS: usize = 8;
/// Per pair: descriptor table, avail ring, used ring (up to 256 entries).
const RING_IOVA: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x2000;
const AVAIL_OFF: u64 = 0x1000;
const USED_OFF: u64 = 0x1400;
const RING_LEN: u64 = RING_STRIDE * MAX_PAIRS as u64;
/// Per pair a window of buffers; descriptor `d` owns slot `d` of it.
const DATA_IOVA: u64 = 0x100_0000;
const WINDOW: u64 = 0x8_0000;
const DATA_LEN: u64 = WINDOW * MAX_PAIRS as u64;
/// Mapped read-only (a device write there must fail the queue).
const RO_IOVA: u64 = 0x4000_0000;
const MAX_FRAME: usize = 65535 + 14 + 8;
/// Largest MRG chain count a frame may take (`poll::offload::MAX_MERGE`).
const MAX_MERGE: usize = 256;

/// The buffers of the driver's final refills: jumbo frames fit, a 64 KiB
/// one only with MRG_RXBUF.
const REFILL_LEN: u64 = 16 * 1024;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

struct Mems {
    ring: Arc<DmaMemory>,
    data: Arc<DmaMemory>,
    ro: Arc<DmaMemory>,
}

fn mems() -> &'static Mems {
    static M: OnceLock<Mems> = OnceLock::new();
    M.get_or_init(|| {
        check_toeplitz();
        Mems {
            ring: Arc::new(DmaMemory::new("rxs-ring", RING_LEN as usize).expect("memfd")),
            data: Arc::new(DmaMemory::new("rxs-data", DATA_LEN as usize).expect("memfd")),
            ro: Arc::new(DmaMemory::new("rxs-ro", 4096).expect("memfd")),
        }
    })
}

// ------------------------------------------------------- reference Toeplitz

/// Toeplitz, bit by bit (Microsoft's RSS specification), written here so
/// the queue the oracle expects does not come from the code under test.
fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let bit = |i: usize| key.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
    let mut window: u32 = (0..32).fold(0, |w, i| w << 1 | bit(i) as u32);
    let mut h = 0;
    for (n, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                h ^= window;
            }
            window = window << 1 | bit(32 + 8 * n + b) as u32;
        }
    }
    h
}

/// The reference against "Verifying the RSS Hash Calculation" (once).
fn check_toeplitz() {
    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca,
        0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
        0xbe, 0xac, 0x01, 0xfa,
    ];
    let v4: [([u8; 4], [u8; 4], u16, u16, u32, u32); 3] = [
        ([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766, 0x323e8fc2, 0x51ccc178),
        ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, 0xd718262a, 0xc626b0ea),
        ([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303, 0x5d1809c5, 0x10e828a2),
    ];
    for (s, d, sp, dp, ip, tcp) in v4 {
        let mut i = [&s[..], &d[..]].concat();
        assert_eq!(toeplitz(&KEY, &i), ip, "reference Toeplitz, IPv4 vector");
        i.extend_from_slice(&sp.to_be_bytes());
        i.extend_from_slice(&dp.to_be_bytes());
        assert_eq!(toeplitz(&KEY, &i), tcp, "reference Toeplitz, TCPv4 vector");
    }
    let s: std::net::Ipv6Addr = "3ffe:2501:200:1fff::7".parse().unwrap();
    let d: std::net::Ipv6Addr = "3ffe:2501:200:3::1".parse().unwrap();
    let mut i = [&s.octets()[..], &d.octets()[..]].concat();
    assert_eq!(toeplitz(&KEY, &i), 0x2cc18cd5, "reference Toeplitz, IPv6 vector");
    i.extend_from_slice(&[0x0a, 0xea, 0x06, 0xe6]);
    assert_eq!(toeplitz(&KEY, &i), 0x40207d3d, "reference Toeplitz, TCPv6 vector");
}

// ----------------------------------------------------------- device, port

/// The device face the poll threads use on the RX path: interrupts and
/// NEEDS_RESET; nothing else is called.
struct Device {
    fd: EventFd,
}

impl VduseDevice for Device {
    fn name(&self) -> &str {
        "rx-steer"
    }
    fn api_version(&self) -> u64 {
        1
    }
    fn negotiated_features(&self) -> vduse_net::vduse::Result<u64> {
        Ok(0)
    }
    fn set_config(&self, _: u32, _: &[u8]) -> vduse_net::vduse::Result<()> {
        Ok(())
    }
    fn inject_config_irq(&self) -> vduse_net::vduse::Result<()> {
        Ok(())
    }
    fn setup_vq(&self, _: u32, _: u16, _: u32) -> vduse_net::vduse::Result<()> {
        Ok(())
    }
    fn vq_info(&self, index: u32) -> vduse_net::vduse::Result<VqInfo> {
        Ok(VqInfo { index, ..VqInfo::default() })
    }
    fn set_vq_kickfd(&self, _: u32, _: Option<BorrowedFd<'_>>) -> vduse_net::vduse::Result<()> {
        Ok(())
    }
    fn inject_vq_irq(&self, _: u32) -> vduse_net::vduse::Result<()> {
        Ok(())
    }
    fn iotlb_get_fd(&self, _: u32, _: u64, _: u64) -> vduse_net::vduse::Result<IotlbRegion> {
        Err(VduseError::os("IOTLB_GET_FD", nix::errno::Errno::EINVAL))
    }
    fn iotlb_info(&self, _: u32, _: u64, _: u64) -> vduse_net::vduse::Result<IovaInfo> {
        Err(VduseError::os("IOTLB_GET_INFO", nix::errno::Errno::EINVAL))
    }
    fn read_request(&self, _: &mut [u8]) -> vduse_net::vduse::Result<Option<usize>> {
        Ok(None)
    }
    fn write_response(&self, buf: &[u8]) -> vduse_net::vduse::Result<usize> {
        Ok(buf.len())
    }
    fn request_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
    fn signal_needs_reset(&self) -> bool {
        true
    }
}

type Frames = Arc<Mutex<VecDeque<(Vec<u8>, FrameMeta)>>>;

/// A port whose far side is the fuzzer: `rx_fill` takes what it queued.
/// It hands over whatever offloads the driver accepts (a tap after
/// TUNSETOFFLOAD), so a valid offloaded frame reaches the driver as it is.
struct FuzzPort {
    far: Frames,
    here: VecDeque<(Vec<u8>, FrameMeta)>,
}

impl Port for FuzzPort {
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        None
    }
    fn tx_commit(&mut self, _: usize, _: FrameMeta) {
        unreachable!("no TX queue")
    }
    fn tx_flush(&mut self) {}
    fn rx_fill(&mut self) {
        self.here.extend(self.far.lock().unwrap().drain(..));
    }
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        self.here.front().map(|(b, m)| PortFrame { bytes: b, meta: *m })
    }
    fn rx_consume(&mut self) {
        self.here.pop_front();
    }
    fn rx_flush(&mut self) {}
    fn rx_pending(&self) -> usize {
        self.here.len()
    }
    fn offloads(&self) -> bool {
        true
    }
    fn set_offloads(&mut self, accept: OffloadCaps, _gso: bool) -> OffloadCaps {
        accept
    }
}

// ---------------------------------------------------------- driver model

fn le16(m: &DmaMemory, off: u64) -> u16 {
    let mut b = [0u8; 2];
    m.read(off as usize, &mut b);
    u16::from_le_bytes(b)
}

/// A chain the driver posted: its descriptors and the buffers the device
/// may write (data-window offsets and lengths; none for hostile ones).
#[derive(Clone, Debug)]
struct Posted {
    descs: Vec<u16>,
    bufs: Vec<(u64, u32)>,
}

/// The driver's side of one RX queue.
struct DriverQ {
    base: u64,
    size: u16,
    free: Vec<u16>,
    /// By head descriptor.
    out: Vec<Option<Posted>>,
    avail_idx: u16,
    used_seen: u16,
    /// A frame whose first buffer came, waiting for `num_buffers - 1` more.
    partial: Option<(usize, Vec<u8>, Vec<u8>)>,
}

impl DriverQ {
    fn slot(&self) -> u64 {
        WINDOW / self.size as u64
    }

    /// Post `k` chains of one whole-slot buffer each (a driver refilling
    /// its ring); fewer when descriptors run out.
    fn refill(&mut self, k: usize, pair: usize) {
        let m = mems();
        for _ in 0..k {
            let Some(d) = self.free.pop() else { return };
            let own = pair as u64 * WINDOW + d as u64 * self.slot();
            let len = self.slot().min(REFILL_LEN) as u32;
            m.ring
                .write((self.base + 16 * d as u64) as usize, &desc_bytes(DATA_IOVA + own, len, VRING_DESC_F_WRITE, 0));
            m.data.write(own as usize, &vec![0u8; len as usize]);
            let at = self.base + AVAIL_OFF + 4 + 2 * (self.avail_idx % self.size) as u64;
            m.ring.write(at as usize, &d.to_le_bytes());
            self.avail_idx = self.avail_idx.wrapping_add(1);
            m.ring.write((self.base + AVAIL_OFF + 2) as usize, &self.avail_idx.to_le_bytes());
            self.out[d as usize] = Some(Posted { descs: vec![d], bufs: vec![(own, len)] });
        }
    }

    /// Post one chain of `shape` buffers; false when descriptors ran out.
    fn post(&mut self, u: &mut Unstructured<'_>, pair: usize) -> ArbResult<bool> {
        let m = mems();
        let n = if u.ratio(7, 8)? { u.int_in_range(1..=4)? } else { u.int_in_range(1..=40)? };
        if n > self.free.len() {
            return Ok(false);
        }
        let descs: Vec<u16> = (0..n).map(|_| self.free.pop().unwrap()).collect();
        let slot = self.slot();
        let mut bufs = Vec::new();
        for (i, &d) in descs.iter().enumerate() {
            let own = pair as u64 * WINDOW + d as u64 * slot;
            let (mut addr, mut len, mut flags) = (DATA_IOVA + own, slot as u32, VRING_DESC_F_WRITE);
            let mut usable = true;
            // Mostly usable buffers of every size; a hostile one now and
            // then (a queue with one fails, and stays failed).
            match u.int_in_range(0u8..=255)? {
                // 0 (also what an exhausted input gives): a whole slot.
                0 | 81..=249 => {}
                1 => len = 0,
                2..=8 => len = u.int_in_range(1..=32)?,
                9..=40 => len = u.int_in_range(33..=600)?,
                41..=80 => len = u.int_in_range(1400..=2100.min(slot as u32))?,
                250 => {
                    // Outside every mapping, or straddling the data's end.
                    let inside: u32 = u.int_in_range(1..=64)?;
                    addr = if u.arbitrary()? {
                        1 << 63 | u.arbitrary::<u64>()?
                    } else {
                        DATA_IOVA + DATA_LEN - inside as u64
                    };
                    len = inside + u.int_in_range(1..=4096)?;
                    usable = false;
                }
                251 => {
                    addr = RO_IOVA + u.int_in_range(0..=64)?;
                    len = u.int_in_range(1..=64)?;
                    usable = false;
                }
                252 => {
                    flags = 0; // device-readable: not for an RX queue
                    usable = false;
                }
                _ => {
                    len = u.arbitrary()?; // longer than its slot: never used
                    usable = len as u64 <= slot;
                    if !usable {
                        addr = RO_IOVA;
                    }
                }
            }
            let next = if i + 1 < n {
                flags |= VRING_DESC_F_NEXT;
                descs[i + 1]
            } else {
                0
            };
            let next = if i + 1 == n && u.ratio(1u16, 512)? {
                // A loop back to the chain's head.
                flags |= VRING_DESC_F_NEXT;
                descs[0]
            } else {
                next
            };
            m.ring.write((self.base + 16 * d as u64) as usize, &desc_bytes(addr, len, flags, next));
            if usable && len > 0 {
                // Zeroed, so what the device did not write reads as zero.
                m.data.write(own as usize, &vec![0u8; len as usize]);
                bufs.push((own, len));
            }
        }
        let head = if u.ratio(1u16, 512)? { u.int_in_range(self.size..=u16::MAX)? } else { descs[0] };
        let at = self.base + AVAIL_OFF + 4 + 2 * (self.avail_idx % self.size) as u64;
        m.ring.write(at as usize, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.ring.write((self.base + AVAIL_OFF + 2) as usize, &self.avail_idx.to_le_bytes());
        let first = descs[0] as usize;
        self.out[first] = Some(Posted { descs, bufs });
        Ok(true)
    }
}

// ---------------------------------------------------------------- oracle

/// Where a frame given to a port may be delivered.
#[derive(Clone, Copy, Debug)]
struct Dest {
    /// The receive queue RSS (or the arrival pair) designates.
    to: u16,
    /// Also acceptable: the arrival pair, for a frame larger than the
    /// handoff carries (the documented `rx_unsteered` case).
    alt: Option<u16>,
}

impl Dest {
    fn allows(&self, q: u16) -> bool {
        self.to == q || self.alt == Some(q)
    }
}

/// Frames by their bytes (the fuzzer often offers the same bytes again):
/// where each copy may go, and the queues copies arrived on.
#[derive(Default)]
struct Ledger {
    offered: usize,
    frames: HashMap<Vec<u8>, (Vec<Dest>, Vec<u16>)>,
}

impl Ledger {
    /// Every delivery is matched to its own offered copy that allows its
    /// queue (a bipartite matching, Kuhn's augmenting paths: a greedy
    /// choice could give a copy that may only go to `to` the delivery on
    /// `alt`).
    fn check(&self) {
        for (bytes, (dests, got)) in &self.frames {
            let mut owner: Vec<Option<usize>> = vec![None; dests.len()];
            fn augment(d: usize, got: &[u16], dests: &[Dest], seen: &mut [bool], owner: &mut [Option<usize>]) -> bool {
                for f in 0..dests.len() {
                    if dests[f].allows(got[d]) && !seen[f] {
                        seen[f] = true;
                        if owner[f].is_none_or(|o| augment(o, got, dests, seen, owner)) {
                            owner[f] = Some(d);
                            return true;
                        }
                    }
                }
                false
            }
            for d in 0..got.len() {
                let mut seen = vec![false; dests.len()];
                assert!(
                    augment(d, got, dests, &mut seen, &mut owner),
                    "a {}-byte frame delivered more often than offered for its queues: on {got:?}, offered for {dests:?}",
                    bytes.len()
                );
            }
        }
    }

    /// Deliveries on a queue that no copy of their bytes was meant for
    /// but may take (the `rx_unsteered` exception).
    fn on_alt(&self) -> usize {
        self.frames.values().map(|(dests, got)| got.iter().filter(|&&q| dests.iter().all(|d| d.to != q)).count()).sum()
    }
}

struct Expect {
    rss: Option<RssConfig>,
    /// Hash type and key for reports (RSS's or HASH_CONFIG's).
    hashing: Option<(u32, Vec<u8>)>,
    hash_report: bool,
    rx_pairs: u16,
}

impl Expect {
    fn hash(&self, frame: &[u8]) -> rss::RxHash {
        let Some((types, key)) = &self.hashing else { return rss::RxHash::default() };
        match rss::hash_input(frame, *types) {
            Some(i) => rss::RxHash { value: toeplitz(key, i.bytes()), report: i.report },
            None => rss::RxHash::default(),
        }
    }

    fn offer(&self, pair: u16, bytes: &[u8]) -> Dest {
        let hash = self.hash(bytes);
        let active = pair < self.rx_pairs;
        let to = match &self.rss {
            Some(r) if hash.report == rss::HashReport::None => r.unclassified_queue,
            Some(r) => r.indirection_table[hash.value as usize & (r.indirection_table.len() - 1)],
            None if active => pair,
            None => pair % self.rx_pairs,
        };
        // Only a frame too big for any handoff (over 64 KiB plus headers)
        // stays on its arrival pair.
        let alt = (active && to != pair && bytes.len() > HANDOFF_MAX_FRAME).then_some(pair);
        Dest { to, alt }
    }

    /// The hash the header reports (zero without HASH_REPORT in force).
    fn report(&self, frame: &[u8]) -> rss::RxHash {
        if self.hash_report {
            self.hash(frame)
        } else {
            rss::RxHash::default()
        }
    }
}

/// The key Linux uses by default (Microsoft's verification key).
const MS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// Bytes of configuration before the events.
const CFG_LEN: usize = 28;

/// The MQ command the driver sends (none, RSS, hash reports only, or a
/// plain pair count), decoded from the configuration bytes: a table of up
/// to 128 entries round robin as Linux sets it or a pattern of 8 repeated,
/// the key Linux's or built from a few bytes.
fn mq_command(cfg: &[u8; CFG_LEN], pairs: u16) -> Option<CtrlCommand> {
    let q = |b: u8, raw: bool| if raw { b as u16 * 0x0101 } else { b as u16 % pairs };
    let raw = cfg[4] & 0x20 != 0 && cfg[4] & 0x40 != 0;
    let types = if cfg[10] & 1 == 0 {
        rss::SUPPORTED_HASH_TYPES
    } else {
        u32::from_le_bytes([cfg[6], cfg[7], cfg[8], cfg[9]]) & rss::SUPPORTED_HASH_TYPES
    };
    let key = if cfg[10] & 2 == 0 {
        MS_KEY.to_vec()
    } else {
        (0..(cfg[10] >> 2) as usize % (rss::MAX_KEY_SIZE + 1)).map(|i| cfg[11 + i % 5] ^ i as u8).collect()
    };
    Some(match cfg[2] {
        0..=191 => {
            let len = 1usize << (cfg[4] % 8);
            let used = 1 + cfg[3] as u16 % pairs;
            let table = if cfg[4] & 0x08 == 0 {
                (0..len).map(|i| (i % used as usize) as u16).collect()
            } else {
                (0..len).map(|i| q(cfg[16 + i % 8], raw)).collect()
            };
            CtrlCommand::RssConfig(RssConfig {
                hash_types: types,
                indirection_table: table,
                unclassified_queue: q(cfg[5], raw),
                max_tx_vq: used,
                key,
            })
        }
        192..=223 => CtrlCommand::HashConfig(HashConfig { hash_types: types, reserved: [0; 8], key }),
        224..=247 => CtrlCommand::MqPairsSet(1 + cfg[3] as u16 % pairs),
        _ => return None,
    })
}

/// A frame: a well-formed one (any VLANs, IPv4/6, TCP/UDP, extension
/// headers, up to 64 KiB, with offload metadata that may be valid) or
/// arbitrary bytes with arbitrary metadata.
fn frame(u: &mut Unstructured<'_>) -> ArbResult<(Vec<u8>, FrameMeta)> {
    if u.ratio(3, 4)? {
        let tcp: bool = u.arbitrary()?;
        let payload = match u.int_in_range(0u8..=7)? {
            0 => u.int_in_range(1900..=2100)?,
            1 => u.int_in_range(2100..=9000)?,
            2 => u.int_in_range(9000..=65535 - 80)?,
            _ => u.int_in_range(0..=1500)?,
        };
        let s = FrameSpec {
            vlans: u.int_in_range(0..=2)?,
            v6: u.arbitrary()?,
            tcp,
            ipv6_ext: u.arbitrary()?,
            payload,
            seed: u.arbitrary()?,
            src_port: u.arbitrary()?,
            dst_port: u.arbitrary()?,
            csum: if u.arbitrary()? { CsumFill::Partial } else { CsumFill::Full },
            ..FrameSpec::default()
        };
        let mut b = s.build();
        b.truncate(MAX_FRAME);
        if u.ratio(1, 4)? {
            let i = u.choose_index(b.len())?;
            b[i] = u.arbitrary()?;
        }
        let meta = match u.int_in_range(0u8..=7)? {
            6 => FrameMeta::from_hdr(&s.offload_hdr(None)),
            7 => FrameMeta::from_hdr(&s.offload_hdr(Some(u.int_in_range(0..=9000)?))),
            _ => FrameMeta::PLAIN,
        };
        Ok((b, meta))
    } else {
        let len = u.int_in_range(0..=u.len().min(200))?;
        let b = u.bytes(len)?.to_vec();
        let meta = if u.ratio(3, 4)? {
            FrameMeta::PLAIN
        } else {
            let mut h = [0u8; hdr::HDR_LEN];
            u.fill_buffer(&mut h)?;
            FrameMeta::from_hdr(&hdr::NetHdr::parse(&h).unwrap())
        };
        Ok((b, meta))
    }
}

/// Read the device's writes for the used entries published since the last
/// look, and check each completed frame.
fn collect(
    q: &mut DriverQ,
    queue: u16,
    mrg: bool,
    hdr_len: usize,
    expect: &Expect,
    ledger: &mut Ledger,
    delivered: &mut [u64],
) {
    let m = mems();
    let used_idx = le16(&m.ring, q.base + USED_OFF + 2);
    while q.used_seen != used_idx {
        let e = q.base + USED_OFF + 4 + 8 * (q.used_seen % q.size) as u64;
        q.used_seen = q.used_seen.wrapping_add(1);
        let mut b = [0u8; 8];
        m.ring.read(e as usize, &mut b);
        let id = u32::from_le_bytes(b[..4].try_into().unwrap());
        let len = u32::from_le_bytes(b[4..].try_into().unwrap());
        let posted = q
            .out
            .get_mut(id as usize)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("queue {queue}: used id {id} is no chain the driver has out"));
        q.free.extend(&posted.descs);
        let cap: u64 = posted.bufs.iter().map(|b| b.1 as u64).sum();
        assert!(len as u64 <= cap, "queue {queue}: used len {len} > the chain's {cap} writable bytes ({posted:?})");
        let mut bytes = Vec::with_capacity(len as usize);
        let mut left = len as usize;
        for &(off, blen) in &posted.bufs {
            let k = left.min(blen as usize);
            let at = bytes.len();
            bytes.resize(at + k, 0);
            m.data.read(off as usize, &mut bytes[at..]);
            left -= k;
        }
        let (want, hdr, mut payload) = match q.partial.take() {
            Some((want, hdr, mut payload)) => {
                payload.extend_from_slice(&bytes);
                (want - 1, hdr, payload)
            }
            None if len == 0 => continue, // too small for the frame: dropped
            None => {
                assert!(bytes.len() >= hdr_len, "queue {queue}: first buffer of {len} bytes < header {hdr_len}");
                let n = u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
                if mrg {
                    assert!((1..=MAX_MERGE).contains(&n), "queue {queue}: num_buffers {n}");
                } else {
                    assert_eq!(n, 1, "queue {queue}: num_buffers without MRG_RXBUF");
                }
                (n - 1, bytes[..hdr_len].to_vec(), bytes[hdr_len..].to_vec())
            }
        };
        if want > 0 {
            q.partial = Some((want, hdr, std::mem::take(&mut payload)));
            continue;
        }
        let Some((dests, got)) = ledger.frames.get_mut(&payload).filter(|(d, _)| d.iter().any(|d| d.allows(queue)))
        else {
            let like = ledger.frames.get(&payload).map(|f| &f.0);
            panic!(
                "queue {queue}: a {}-byte frame no port offered for this queue (same bytes offered for: {like:?})",
                payload.len()
            );
        };
        got.push(queue);
        if std::env::var_os("RX_STEER_DEBUG").is_some() {
            eprintln!("frame of {} bytes on queue {queue}, offered for {dests:?}", payload.len());
        }
        delivered[queue as usize] += 1;
        if hdr_len == HASH_HDR_LEN {
            let value = u32::from_le_bytes(hdr[HDR_LEN..HDR_LEN + 4].try_into().unwrap());
            let report = u16::from_le_bytes([hdr[HDR_LEN + 4], hdr[HDR_LEN + 5]]);
            let want = expect.report(&payload);
            assert_eq!((value, report), (want.value, want.report as u16), "queue {queue}: hash report");
        }
    }
}

fn run(data: &[u8]) -> ArbResult<()> {
    // The configuration is decoded from a fixed prefix (zeros when short:
    // 3 pairs, RSS over all of them), so a mutation of one byte changes one
    // setting; the events follow.
    let mut cfg = [0u8; CFG_LEN];
    let n = data.len().min(CFG_LEN);
    cfg[..n].copy_from_slice(&data[..n]);
    let mut u = Unstructured::new(&data[n..]);
    let m = mems();
    m.ring.write(0, &vec![0u8; RING_LEN as usize]);

    let pairs = if cfg[0] < 224 { 2 + (cfg[0] as u16 + 1) % 3 } else { 1 + cfg[0] as u16 % MAX_PAIRS as u16 };
    let mut neg = f::VERSION_1 | f::CTRL_VQ | f::MQ;
    for (bit, feature) in
        [f::RSS, f::HASH_REPORT, f::MRG_RXBUF, f::GUEST_CSUM, f::GUEST_TSO4, f::GUEST_TSO6, f::GUEST_ECN]
            .into_iter()
            .enumerate()
    {
        // RSS on unless asked off; the others off unless asked on.
        if (cfg[1] >> bit & 1 == 1) != (bit == 0) {
            neg |= feature;
        }
    }
    if cfg[1] & 0x80 != 0 {
        neg |= f::GUEST_USO4 | f::GUEST_USO6;
    }
    let mut state = CtrlState::new([2, 0, 0, 0, 0, 1], neg);
    if let Some(cmd) = mq_command(&cfg, pairs) {
        let _ = state.apply(cmd, neg, pairs);
    }
    let hashing = match (state.rss(), state.hash_config()) {
        (Some(r), _) => Some((r.hash_types, r.key.clone())),
        (None, Some(h)) => Some((h.hash_types, h.key.clone())),
        _ => None,
    };
    let named = state
        .rss()
        .map_or(0, |r| r.indirection_table.iter().chain([&r.unclassified_queue]).map(|&q| q + 1).max().unwrap_or(0));
    let expect = Expect {
        rss: state.rss().filter(|_| neg & f::RSS != 0).cloned(),
        hash_report: neg & f::HASH_REPORT != 0 && hashing.is_some(),
        hashing,
        rx_pairs: state.queue_pairs().max(named).max(1),
    };
    let mrg = neg & f::MRG_RXBUF != 0;
    let hdr_len = hdr::hdr_len(neg);

    let src = Regions::new(vec![m.ring.clone(), m.data.clone(), m.ro.clone()]);
    src.add(Region {
        asid: 0,
        start: RING_IOVA,
        last: RING_IOVA + RING_LEN - 1,
        perm: VDUSE_ACCESS_RW,
        offset: 0,
        mem: 0,
    });
    src.add(Region {
        asid: 0,
        start: DATA_IOVA,
        last: DATA_IOVA + DATA_LEN - 1,
        perm: VDUSE_ACCESS_RW,
        offset: 0,
        mem: 1,
    });
    src.add(Region { asid: 0, start: RO_IOVA, last: RO_IOVA + 4095, perm: VDUSE_ACCESS_RO, offset: 0, mem: 2 });
    let qsbr = Qsbr::new();
    let space = AddressSpace::new(0, qsbr.clone(), src.clone());
    let mut reader = qsbr.register();

    let device: Arc<dyn VduseDevice> =
        Arc::new(Device { fd: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd") });
    let filter = FilterCell::new(RxFilter::from_state(&state, neg));
    let evfd = || Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd"));
    let wakes: Vec<_> = (0..pairs).map(|_| evfd()).collect();
    let mut mesh = Handoff::mesh(&wakes).into_iter();
    let burst = 1 + cfg[25] as usize % 64;
    let mut far: Vec<Frames> = Vec::new();
    let mut stats: Vec<Arc<PairCell>> = Vec::new();
    let mut threads: Vec<FuzzPair> = Vec::new();
    let mut queues: Vec<DriverQ> = Vec::new();
    for p in 0..pairs {
        let frames: Frames = Default::default();
        let cell = Arc::new(PairCell::default());
        let (_tx, mailbox) = crossbeam::channel::bounded(1);
        let mut t = FuzzPair::new(PollSetup {
            pair: p,
            device: device.clone(),
            space: space.clone(),
            reader: qsbr.register(),
            mailbox,
            wake: wakes[p as usize].clone(),
            kick_rx: evfd(),
            kick_tx: evfd(),
            port: Box::new(FuzzPort { far: frames.clone(), here: VecDeque::new() }),
            filter: filter.reader(),
            stats: cell.clone(),
            burst,
            idle: IdlePolicy::Busy,
            core: None,
            log: None,
            handoff: mesh.next().unwrap(),
        });
        let size = [64u16, 4, 16, 256][(cfg[24] >> (p % 4 * 2) & 3) as usize];
        let base = RING_IOVA + p as u64 * RING_STRIDE;
        let cfg = QueueConfig {
            index: rx_vq(p),
            size,
            desc_addr: base,
            avail_addr: base + AVAIL_OFF,
            used_addr: base + USED_OFF,
            avail_base: 0,
            event_idx: cfg[26] >> (1 + p % 7) & 1 == 1,
            indirect: false,
            format: RingFormat::Split,
            in_order: false,
        };
        t.start(Some(cfg), space.clone(), p < expect.rx_pairs, neg);
        far.push(frames);
        stats.push(cell);
        threads.push(t);
        queues.push(DriverQ {
            base: base - RING_IOVA,
            size,
            free: (0..size).rev().collect(),
            out: vec![None; size as usize],
            avail_idx: 0,
            used_seen: 0,
            partial: None,
        });
    }
    drop(mesh);

    let mut ledger = Ledger::default();
    let mut delivered = vec![0u64; pairs as usize];
    let step_all = |threads: &mut [FuzzPair],
                    queues: &mut [DriverQ],
                    ledger: &mut Ledger,
                    delivered: &mut [u64],
                    reader: &mut vduse_net::mem::Reader,
                    only: Option<usize>| {
        for (p, t) in threads.iter_mut().enumerate() {
            if only.is_some_and(|o| o != p) {
                continue;
            }
            {
                let g = reader.read();
                t.step(&g);
            }
            reader.quiescent();
        }
        for (p, q) in queues.iter_mut().enumerate() {
            collect(q, p as u16, mrg, hdr_len, &expect, ledger, delivered);
        }
    };
    for _round in 0..256 {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=9)? {
            0..=3 => {
                let p = u.int_in_range(0..=pairs - 1)?;
                for _ in 0..u.int_in_range(1..=8)? {
                    let (b, meta) = frame(&mut u)?;
                    let dest = expect.offer(p, &b);
                    ledger.frames.entry(b.clone()).or_default().0.push(dest);
                    ledger.offered += 1;
                    far[p as usize].lock().unwrap().push_back((b, meta));
                }
            }
            4..=6 => {
                let p = u.int_in_range(0..=pairs - 1)? as usize;
                for _ in 0..u.int_in_range(1..=16)? {
                    if !queues[p].post(&mut u, p)? {
                        break;
                    }
                }
            }
            7 => {
                let p = u.int_in_range(0..=pairs - 1)? as usize;
                step_all(&mut threads, &mut queues, &mut ledger, &mut delivered, &mut reader, Some(p));
            }
            _ => step_all(&mut threads, &mut queues, &mut ledger, &mut delivered, &mut reader, None),
        }
    }
    // The driver refills its rings until nothing more arrives (handed-over
    // frames land, small rings drain); then every frame is accounted for.
    let mut idle = 0;
    for _ in 0..64 {
        let before: u64 = delivered.iter().sum();
        for (p, q) in queues.iter_mut().enumerate() {
            q.refill(32, p);
        }
        step_all(&mut threads, &mut queues, &mut ledger, &mut delivered, &mut reader, None);
        idle = if delivered.iter().sum::<u64>() == before { idle + 1 } else { 0 };
        if idle == 2 {
            break;
        }
    }
    for q in &queues {
        assert!(q.partial.is_none(), "a frame published with fewer buffers than its num_buffers");
    }
    let mut waiting = 0;
    let mut dropped = 0;
    let mut unsteered = 0;
    for (p, t) in threads.iter_mut().enumerate() {
        let s = stats[p].snapshot();
        assert_eq!(s.rx_frames, delivered[p], "pair {p}: rx_frames vs frames the driver got: {s:?}");
        dropped += s.rx_filtered + s.rx_dropped_small + s.rx_offload_dropped + s.rx_steer_dropped;
        unsteered += s.rx_unsteered;
        t.port().rx_fill();
        waiting += t.port().rx_pending() as u64 + t.drain_handoff() as u64;
    }
    let got: u64 = delivered.iter().sum();
    assert_eq!(
        got + dropped + waiting,
        ledger.offered as u64,
        "offered {} = delivered {got} + dropped {dropped} + waiting {waiting}",
        ledger.offered
    );
    if std::env::var_os("RX_STEER_DEBUG").is_some() {
        let t =
            |k: fn(&vduse_net::dataplane::stats::PairStats) -> u64| stats.iter().map(|c| k(&c.snapshot())).sum::<u64>();
        eprintln!(
            "pairs {pairs} rx_pairs {} rss {} hash {} mrg {mrg}: offered {} delivered {got} dropped {dropped} waiting {waiting} steered {} unsteered {unsteered} merged {} small {} offload {} queue_errors {}",
            expect.rx_pairs,
            expect.rss.is_some(),
            expect.hash_report,
            ledger.offered,
            t(|s| s.rx_steered),
            t(|s| s.rx_merged),
            t(|s| s.rx_dropped_small),
            t(|s| s.rx_offload_dropped),
            t(|s| s.queue_errors),
        );
    }
    ledger.check();
    let alt_used = ledger.on_alt() as u64;
    assert!(alt_used <= unsteered, "{alt_used} frames on their arrival pair, {unsteered} counted unsteered");
    // Nothing written into the ring memory beyond the rings.
    let mut tail = vec![0u8; (RING_STRIDE - USED_OFF - 4 - 8 * 256 - 2) as usize];
    for p in 0..pairs as u64 {
        m.ring.read((p * RING_STRIDE + USED_OFF + 4 + 8 * 256 + 2) as usize, &mut tail);
        assert!(tail.iter().all(|&b| b == 0), "pair {p}: ring memory past the used ring written");
    }
    drop(reader);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
