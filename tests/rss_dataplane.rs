//! RSS and HASH_REPORT on the dataplane (issue 11 item 5), driven through
//! the embedded kernel model by the project's driver. Frames come from one
//! port (a patch whose far end the test holds, like a single-stream host
//! port) and must land on the RX queue the driver's indirection table
//! names, with the hash the driver would compute. The expected queue and
//! hash are computed here, bit by bit from the Toeplitz definition (and
//! checked against the Microsoft verification vectors), not with the
//! device's lookup tables.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use vduse_net::backend::patch::{patch_pair, PatchPort};
use vduse_net::backend::{FrameMeta, Port, PortFrame, PortWake};
use vduse_net::driver::net::{NetDriver, NetDriverConfig, QueuePair};
use vduse_net::net::ctrl::{CtrlCommand, HashConfig, RssConfig};
use vduse_net::net::features as f;
use vduse_net::net::hdr::{F_NEEDS_CSUM, GSO_TCPV4};
use vduse_net::net::offload::OffloadCaps;
use vduse_net::net::rss;
use vduse_net::net::wire::build::{CsumFill, FrameSpec};
use vduse_net::vduse::model::ModelConfig;

/// The key of the Microsoft RSS verification suite.
const MS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b,
    0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac,
    0x01, 0xfa,
];

/// (source, destination, source port, destination port, TCP hash) from
/// "Verifying the RSS Hash Calculation" (Microsoft).
type Vector = ([u8; 4], [u8; 4], u16, u16, u32);
const MS_V4: [Vector; 5] = [
    ([66, 9, 149, 187], [161, 142, 100, 80], 2794, 1766, 0x51ccc178),
    ([199, 92, 111, 2], [65, 69, 140, 83], 14230, 4739, 0xc626b0ea),
    ([24, 19, 198, 95], [12, 22, 207, 184], 12898, 38024, 0x5c2b394a),
    ([38, 27, 205, 30], [209, 142, 163, 6], 48228, 2217, 0xafc7327f),
    ([153, 39, 163, 191], [202, 188, 127, 2], 44251, 1303, 0x10e828a2),
];

/// The Toeplitz hash by its definition: for each set input bit (MSB
/// first), XOR the 32 key bits starting at that bit.
fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let bit = |i: usize| key.get(i / 8).map_or(0, |b| (b >> (7 - i % 8)) & 1) as u32;
    let mut h = 0;
    for i in 0..input.len() * 8 {
        if input[i / 8] & (0x80 >> (i % 8)) != 0 {
            h ^= (0..32).fold(0, |w, k| w << 1 | bit(i + k));
        }
    }
    h
}

/// One TCP/IPv4 flow's frame, addressed to the device.
#[derive(Clone, Copy, Debug)]
struct Flow {
    src: [u8; 4],
    dst: [u8; 4],
    sp: u16,
    dp: u16,
}

impl Flow {
    fn nth(i: u32) -> Flow {
        Flow { src: [10, 0, (i >> 8) as u8, i as u8], dst: [10, 1, 0, 1], sp: 1024 + i as u16 * 7, dp: 80 }
    }

    fn frame(&self, tag: u16) -> Vec<u8> {
        self.frame_with(tag, 32, CsumFill::Full)
    }

    fn frame_with(&self, tag: u16, payload: usize, csum: CsumFill) -> Vec<u8> {
        let spec = FrameSpec { payload, csum, ..FrameSpec::default() };
        let mut fr = spec.build();
        fr[..6].copy_from_slice(&DEV_MAC);
        fr[6..12].copy_from_slice(&PEER_MAC);
        let l3 = spec.l3_off();
        fr[l3 + 12..l3 + 16].copy_from_slice(&self.src);
        fr[l3 + 16..l3 + 20].copy_from_slice(&self.dst);
        let l4 = spec.l4_off();
        fr[l4..l4 + 2].copy_from_slice(&self.sp.to_be_bytes());
        fr[l4 + 2..l4 + 4].copy_from_slice(&self.dp.to_be_bytes());
        // A tag in the payload tells the frames apart.
        let n = fr.len();
        fr[n - 2..].copy_from_slice(&tag.to_be_bytes());
        fr
    }

    /// TCPv4 hash input (§5.1.6.4.3.1): addresses, then ports.
    fn hash(&self, key: &[u8]) -> u32 {
        let mut input = Vec::new();
        input.extend_from_slice(&self.src);
        input.extend_from_slice(&self.dst);
        input.extend_from_slice(&self.sp.to_be_bytes());
        input.extend_from_slice(&self.dp.to_be_bytes());
        toeplitz(key, &input)
    }
}

fn tag_of(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[frame.len() - 2], frame[frame.len() - 1]])
}

const HASH_TYPES: u32 = rss::HASH_TYPE_IPV4 | rss::HASH_TYPE_TCPV4 | rss::HASH_TYPE_UDPV4;

fn rss_cmd(table: &[u16], unclassified: u16, max_tx_vq: u16) -> CtrlCommand {
    CtrlCommand::RssConfig(RssConfig {
        hash_types: HASH_TYPES,
        indirection_table: table.to_vec(),
        unclassified_queue: unclassified,
        max_tx_vq,
        key: MS_KEY.to_vec(),
    })
}

/// Send a command; the ack (0 = OK).
fn send_ctrl(d: &mut NetDriver, c: &CtrlCommand) -> u8 {
    let (class, cmd, data) = c.encode();
    d.ctrl(class, cmd, &data).expect("control command answered")
}

/// A device with `pairs` pairs whose ports are patches; the test holds
/// the far ends.
fn rig(name: &str, pairs: u16, offer: &str) -> (Rig, Vec<PatchPort>) {
    rig_fmt(name, pairs, offer, RingFormat::Split)
}

fn rig_fmt(name: &str, pairs: u16, offer: &str, fmt: RingFormat) -> (Rig, Vec<PatchPort>) {
    let mut peers = Vec::new();
    let mut ports: Vec<Box<dyn Port>> = Vec::new();
    for _ in 0..pairs {
        let (a, b) = patch_pair(256).expect("patch");
        ports.push(Box::new(a));
        peers.push(b);
    }
    let opts = if offer.is_empty() { device_options(name, pairs) } else { device_offering(name, pairs, offer) };
    let rig = Rig::with_ports(offering_fmt(opts, fmt), ModelConfig::patched_7_3(), ports);
    (Rig { fmt, ..rig }, peers)
}

fn cfg(extra: u64) -> NetDriverConfig {
    cfg_fmt(extra, RingFormat::Split)
}

fn cfg_fmt(extra: u64, fmt: RingFormat) -> NetDriverConfig {
    let mut c = driver_config_fmt(fmt);
    c.features |= extra;
    c
}

/// Put `frames` into the port behind `peer` (the device's RX side).
fn inject(peer: &mut PatchPort, frames: &[Vec<u8>]) {
    let end = Instant::now() + Duration::from_secs(5);
    for fr in frames {
        loop {
            if let Some(slot) = peer.tx_slot() {
                slot[..fr.len()].copy_from_slice(fr);
                peer.tx_commit(fr.len(), FrameMeta::PLAIN);
                break;
            }
            peer.tx_flush();
            assert!(Instant::now() < end, "patch stayed full");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    peer.tx_flush();
}

/// A received frame: tag -> (queue, hash value, hash report, frame).
type Got = BTreeMap<u16, (usize, u32, u16, Vec<u8>)>;

/// Receive on every queue until `want` frames arrived (bounded), then a
/// short quiet period; a tag seen twice fails.
fn receive_all(qs: &mut [QueuePair], want: usize) -> Got {
    let mut got = Got::new();
    let end = Instant::now() + Duration::from_secs(10);
    let mut quiet_until = None;
    loop {
        let mut n = 0;
        for (i, q) in qs.iter_mut().enumerate() {
            q.post_rx();
            n += q.rx_burst_hashed(
                &mut |_, (v, r), b| {
                    let old = got.insert(tag_of(b), (i, v, r, b.to_vec()));
                    assert!(old.is_none(), "frame {} delivered twice", tag_of(b));
                },
                64,
            );
        }
        if got.len() >= want && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(100));
        }
        if quiet_until.is_some_and(|t| Instant::now() > t) || Instant::now() > end {
            break;
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

#[test]
fn the_hash_of_this_file_matches_the_microsoft_vectors() {
    for (s, d, sp, dp, want) in MS_V4 {
        assert_eq!(Flow { src: s, dst: d, sp, dp }.hash(&MS_KEY), want);
    }
}

/// Frames of many flows from one port spread over the queues as the table
/// says, each with the hash the driver computes; then a new table
/// mid-traffic moves them.
fn rss_spreads_one_ports_flows_by_the_table_and_reports_the_hash(fmt: RingFormat) {
    let name = format!("rss-spread-{fmt:?}");
    let (rig, mut peers) = rig_fmt(&name, 4, "+rss,+hash_report", fmt);
    let mut d = rig.probe(cfg_fmt(f::RSS | f::HASH_REPORT, fmt));
    assert_eq!(d.features() & (f::RSS | f::HASH_REPORT), f::RSS | f::HASH_REPORT);
    let mut qs = d.take_pairs();
    assert_eq!(qs.len(), 4);
    assert!(qs.iter().all(|q| q.hdr_len() == 20));
    let table: Vec<u16> = vec![0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2, 2, 3, 3, 0, 0];
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&table, 0, 4)), 0);
    let mut flows: Vec<Flow> = MS_V4.iter().map(|&(src, dst, sp, dp, _)| Flow { src, dst, sp, dp }).collect();
    flows.extend((0..59).map(Flow::nth));
    let frames: Vec<Vec<u8>> = flows.iter().enumerate().map(|(i, fl)| fl.frame(i as u16)).collect();
    inject(&mut peers[0], &frames);
    let got = receive_all(&mut qs, frames.len());
    assert_eq!(got.len(), frames.len(), "every frame delivered once");
    let mut per_queue = [0usize; 4];
    for (i, fl) in flows.iter().enumerate() {
        let (q, v, r, b) = &got[&(i as u16)];
        let h = fl.hash(&MS_KEY);
        if i < MS_V4.len() {
            assert_eq!(h, MS_V4[i].4);
        }
        assert_eq!(*v, h, "flow {i}: hash_value");
        assert_eq!(*r, rss::HashReport::Tcpv4 as u16, "flow {i}: hash_report");
        assert_eq!(*q, table[h as usize % table.len()] as usize, "flow {i}: queue");
        assert_eq!(b, &frames[i], "flow {i}: bytes");
        per_queue[*q] += 1;
    }
    assert!(per_queue.iter().all(|&n| n > 0), "every queue got frames: {per_queue:?}");
    let st = rig.stats();
    assert_eq!(st.pairs[0].rx_steered, (frames.len() - per_queue[0]) as u64);
    assert_eq!(st.pairs[0].rx_steer_dropped, 0);

    // A new table while frames flow: the first half goes by the old
    // table (or the new one, if it raced ahead), the rest by the new one.
    let first: Vec<Vec<u8>> = flows.iter().enumerate().map(|(i, fl)| fl.frame(1000 + i as u16)).collect();
    inject(&mut peers[0], &first);
    let all3 = vec![3u16; 8];
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&all3, 3, 4)), 0);
    let second: Vec<Vec<u8>> = flows.iter().enumerate().map(|(i, fl)| fl.frame(2000 + i as u16)).collect();
    inject(&mut peers[0], &second);
    let got = receive_all(&mut qs, first.len() + second.len());
    assert_eq!(got.len(), first.len() + second.len(), "no frame lost over the table change");
    for (i, fl) in flows.iter().enumerate() {
        let old = table[fl.hash(&MS_KEY) as usize % table.len()] as usize;
        let q1 = got[&(1000 + i as u16)].0;
        assert!(q1 == old || q1 == 3, "flow {i}: queue {q1} is neither table's");
        assert_eq!(got[&(2000 + i as u16)].0, 3, "flow {i} after the change");
    }
    // TX with the 20-byte header: the frame reaches the port intact.
    let fr = flows[0].frame(7);
    assert_eq!(
        qs[1].tx_burst(
            &mut |_, buf| {
                buf[..fr.len()].copy_from_slice(&fr);
                fr.len()
            },
            1
        ),
        1
    );
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(p) = peers[1].rx_peek() {
            assert_eq!(p.bytes, &fr[..], "TX frame after a 20-byte header");
            peers[1].rx_consume();
            break;
        }
        assert!(Instant::now() < end, "TX frame never reached the port");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(qs);
    rig.finish();
}

/// Non-IP frames go to the unclassified queue with no hash.
#[test]
fn frames_without_a_hash_go_to_the_unclassified_queue() {
    let (rig, mut peers) = rig("rss-uncl", 2, "+rss,+hash_report");
    let mut d = rig.probe(cfg(f::RSS | f::HASH_REPORT));
    let mut qs = d.take_pairs();
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&[0, 0], 1, 2)), 0);
    let frames: Vec<Vec<u8>> = (0..10u16)
        .map(|i| {
            let mut fr = Flow::nth(0).frame(i);
            fr[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
            fr
        })
        .collect();
    inject(&mut peers[0], &frames);
    let got = receive_all(&mut qs, frames.len());
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|(q, v, r, _)| (*q, *v, *r) == (1, 0, 0)), "{:?}", got.values().next());
    drop(qs);
    rig.finish();
}

/// The driver uses fewer pairs than the device has: frames arriving on
/// the port of an unused pair still reach the driver (they used to stay
/// in that port).
fn frames_on_an_unused_pairs_port_reach_a_used_queue(fmt: RingFormat) {
    let name = format!("rss-fewer-{fmt:?}");
    let (rig, mut peers) = rig_fmt(&name, 4, "", fmt);
    let mut c = cfg_fmt(0, fmt);
    c.pairs = Some(4);
    let mut d = rig.probe(c);
    let mut qs = d.take_pairs();
    d.set_queue_pairs(2).expect("VQ_PAIRS_SET 2");
    let frames: Vec<Vec<u8>> = (0..40u16).map(|i| Flow::nth(i as u32).frame(i)).collect();
    inject(&mut peers[3], &frames[..20]);
    inject(&mut peers[2], &frames[20..]);
    let got = receive_all(&mut qs, frames.len());
    assert_eq!(got.len(), 40, "no frame stranded on an unused pair");
    for (tag, (q, _, _, b)) in &got {
        assert_eq!(b, &frames[*tag as usize]);
        // Pair 3 -> 3 % 2, pair 2 -> 2 % 2.
        assert_eq!(*q, if *tag < 20 { 1 } else { 0 }, "frame {tag}");
        assert!(qs[*q].hdr_len() == 12);
    }
    let st = rig.stats();
    assert_eq!(st.pairs[3].rx_steered, 20);
    assert_eq!(st.pairs[2].rx_steered, 20);
    drop(qs);
    rig.finish();
}

/// Malformed RSS commands are refused with an error ack and change
/// nothing; traffic goes on by the last good table.
#[test]
fn malformed_rss_commands_are_refused_and_change_nothing() {
    let (rig, mut peers) = rig("rss-bad", 2, "+rss");
    let mut d = rig.probe(cfg(f::RSS));
    let mut qs = d.take_pairs();
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&[1], 1, 2)), 0);
    let (class, cmd, good) = rss_cmd(&[1, 1], 1, 2).encode();
    let bad: Vec<Vec<u8>> = vec![Vec::new(), good[..5].to_vec(), good[..good.len() - 1].to_vec(), {
        // Three entries (not a power of two).
        let mut b = good.clone();
        b[4..6].copy_from_slice(&2u16.to_le_bytes());
        b
    }];
    for data in &bad {
        assert_ne!(d.ctrl(class, cmd, data).expect("answered"), 0, "{data:?}");
    }
    for c in [
        rss_cmd(&[0, 5], 0, 2),    // a queue the device lacks
        rss_cmd(&[0, 1], 9, 2),    // unclassified queue out of range
        rss_cmd(&[0, 1], 0, 3),    // max_tx_vq out of range
        rss_cmd(&[0, 1, 0], 0, 2), // not a power of two
    ] {
        assert_ne!(send_ctrl(&mut d, &c), 0, "{c:?}");
    }
    let too_long = CtrlCommand::RssConfig(RssConfig {
        hash_types: HASH_TYPES,
        indirection_table: vec![0],
        unclassified_queue: 0,
        max_tx_vq: 1,
        key: vec![1; 41],
    });
    assert_ne!(send_ctrl(&mut d, &too_long), 0);
    let frames: Vec<Vec<u8>> = (0..20u16).map(|i| Flow::nth(i as u32).frame(i)).collect();
    inject(&mut peers[0], &frames);
    let got = receive_all(&mut qs, frames.len());
    assert_eq!(got.len(), 20);
    assert!(got.values().all(|(q, v, r, _)| (*q, *v, *r) == (1, 0, 0)), "table [1], no HASH_REPORT");
    assert!(rig.stats().slow_path.ctrl_err >= 9);
    drop(qs);
    rig.finish();
}

/// RSS and HASH_REPORT negotiated off: the commands are refused, the
/// header is 12 bytes, frames stay on the pair they arrived on.
#[test]
fn without_rss_frames_stay_on_their_pair() {
    let (rig, mut peers) = rig("rss-off", 2, "+rss,+hash_report");
    let mut d = rig.probe(cfg(0));
    assert_eq!(d.features() & (f::RSS | f::HASH_REPORT), 0);
    let mut qs = d.take_pairs();
    assert!(qs.iter().all(|q| q.hdr_len() == 12));
    assert_ne!(send_ctrl(&mut d, &rss_cmd(&[1], 1, 2)), 0);
    let frames: Vec<Vec<u8>> = (0..20u16).map(|i| Flow::nth(i as u32).frame(i)).collect();
    inject(&mut peers[0], &frames[..10]);
    inject(&mut peers[1], &frames[10..]);
    let got = receive_all(&mut qs, frames.len());
    assert_eq!(got.len(), 20);
    for (tag, (q, v, r, b)) in &got {
        assert_eq!((*q, *v, *r), (usize::from(*tag >= 10), 0, 0), "frame {tag}");
        assert_eq!(b, &frames[*tag as usize]);
    }
    assert_eq!(rig.stats().pairs[0].rx_steered, 0);
    drop(qs);
    rig.finish();
}

/// HASH_CONFIG (hash reports without RSS): the hash is reported, the
/// queue is the one the frame arrived on.
#[test]
fn hash_config_reports_without_steering() {
    let (rig, mut peers) = rig("rss-hash", 2, "+hash_report");
    let mut d = rig.probe(cfg(f::HASH_REPORT));
    let mut qs = d.take_pairs();
    let hc = CtrlCommand::HashConfig(HashConfig { hash_types: HASH_TYPES, reserved: [0; 8], key: MS_KEY.to_vec() });
    assert_eq!(send_ctrl(&mut d, &hc), 0);
    let flows: Vec<Flow> = (0..16).map(Flow::nth).collect();
    let frames: Vec<Vec<u8>> = flows.iter().enumerate().map(|(i, fl)| fl.frame(i as u16)).collect();
    inject(&mut peers[1], &frames);
    let got = receive_all(&mut qs, frames.len());
    assert_eq!(got.len(), 16);
    for (i, fl) in flows.iter().enumerate() {
        let (q, v, r, _) = &got[&(i as u16)];
        assert_eq!((*q, *v, *r), (1, fl.hash(&MS_KEY), rss::HashReport::Tcpv4 as u16), "flow {i}");
    }
    drop(qs);
    rig.finish();
}

both_formats!(
    rss_spreads_one_ports_flows_by_the_table_and_reports_the_hash,
    frames_on_an_unused_pairs_port_reach_a_used_queue
);

/// A port the test feeds frames of any size (with their metadata) into:
/// the patch's 2 KiB slots cannot carry jumbo or GSO frames. Its TX side
/// drops what it is given.
type FeedQueue = Arc<Mutex<VecDeque<(Vec<u8>, FrameMeta)>>>;

struct FeedPort {
    rx: FeedQueue,
    wake: Arc<nix::sys::eventfd::EventFd>,
    cur: Option<(Vec<u8>, FrameMeta)>,
    tx: Vec<u8>,
}

#[derive(Clone)]
struct Feed {
    rx: FeedQueue,
    wake: Arc<nix::sys::eventfd::EventFd>,
}

impl Feed {
    fn push(&self, frames: &[(Vec<u8>, FrameMeta)]) {
        self.rx.lock().unwrap().extend(frames.iter().cloned());
        self.wake.write(1).expect("eventfd");
    }
}

fn feed_port() -> (FeedPort, Feed) {
    let wake =
        Arc::new(nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_NONBLOCK).expect("eventfd"));
    let rx = Arc::new(Mutex::new(VecDeque::new()));
    (FeedPort { rx: rx.clone(), wake: wake.clone(), cur: None, tx: vec![0; 70_000] }, Feed { rx, wake })
}

impl Port for FeedPort {
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.tx)
    }
    fn tx_commit(&mut self, _len: usize, _meta: FrameMeta) {}
    fn tx_flush(&mut self) {}
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        if self.cur.is_none() {
            self.cur = self.rx.lock().unwrap().pop_front();
        }
        self.cur.as_ref().map(|(b, meta)| PortFrame { bytes: b, meta: *meta })
    }
    fn rx_consume(&mut self) {
        self.cur = None;
    }
    fn rx_flush(&mut self) {}
    fn rx_pending(&self) -> usize {
        self.cur.is_some() as usize + self.rx.lock().unwrap().len()
    }
    fn offloads(&self) -> bool {
        true
    }
    fn reserve_frames(&mut self, _max_frame: usize) -> bool {
        true
    }
    fn set_offloads(&mut self, accept: OffloadCaps, _gso: bool) -> OffloadCaps {
        accept
    }
    fn wake(&self) -> Option<PortWake<'_>> {
        Some(PortWake { fd: self.wake.as_fd(), events: nix::poll::PollFlags::POLLIN })
    }
    fn disarm_rx_wakeup(&mut self) {
        let _ = self.wake.read();
    }
}

/// A device of `pairs` feed ports with MTU `mtu`.
fn feed_rig(name: &str, pairs: u16, mtu: u16) -> (Rig, Vec<Feed>) {
    let (ports, feeds): (Vec<Box<dyn Port>>, Vec<Feed>) = (0..pairs)
        .map(|_| {
            let (p, f) = feed_port();
            (Box::new(p) as Box<dyn Port>, f)
        })
        .unzip();
    let mut opts = device_options(name, pairs);
    opts.mtu = mtu;
    (Rig::with_ports(opts, ModelConfig::patched_7_3(), ports), feeds)
}

/// Tag -> (queue, hash value, header, frame).
type GotHdr = BTreeMap<u16, (usize, u32, [u8; 12], Vec<u8>)>;

fn receive_with_headers(qs: &mut [QueuePair], want: usize) -> GotHdr {
    let mut got = GotHdr::new();
    let end = Instant::now() + Duration::from_secs(20);
    while got.len() < want && Instant::now() < end {
        let mut n = 0;
        for (i, q) in qs.iter_mut().enumerate() {
            q.post_rx();
            n += q.rx_burst_hashed(
                &mut |h, (v, _), b| {
                    let old = got.insert(tag_of(b), (i, v, *h, b.to_vec()));
                    assert!(old.is_none(), "frame {} delivered twice", tag_of(b));
                },
                64,
            );
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// Issue 11: frames over 2 KiB (jumbo frames up to MTU 9216, a 64 KiB GSO
/// frame with its offload header) are steered like small ones: each lands
/// on the queue the table names, intact, with its hash and, for the GSO
/// frame, the header fields the port gave it. Nothing stays unsteered.
#[test]
fn jumbo_and_gso_frames_are_steered_intact() {
    let (rig, feeds) = feed_rig("rss-jumbo", 4, 9216);
    let mut c = cfg(f::RSS | f::HASH_REPORT | f::MRG_RXBUF | f::GUEST_CSUM | f::GUEST_TSO4);
    c.ring_size = 256;
    let mut d = rig.probe(c);
    let want = f::RSS | f::HASH_REPORT | f::MRG_RXBUF | f::GUEST_TSO4;
    assert_eq!(d.features() & want, want, "default offer holds RSS and HASH_REPORT");
    let mut qs = d.take_pairs();
    let table: Vec<u16> = vec![1, 2, 3, 0, 3, 2, 1, 1];
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&table, 0, 4)), 0);
    let gso = FrameMeta {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    // Ethernet frame lengths: 1514, 2 KiB + 1, MTU 9000 and 9216 frames,
    // and GSO frames up to the 64 KiB IPv4 limit.
    let mut frames = Vec::new();
    let mut flows = Vec::new();
    for i in 0..24u16 {
        let fl = Flow::nth(i as u32);
        let (fr, meta) = match i % 6 {
            0 => (fl.frame_with(i, 1514 - 54, CsumFill::Full), FrameMeta::PLAIN),
            1 => (fl.frame_with(i, 2049 - 54, CsumFill::Full), FrameMeta::PLAIN),
            2 => (fl.frame_with(i, 9014 - 54, CsumFill::Full), FrameMeta::PLAIN),
            3 => (fl.frame_with(i, 9230 - 54, CsumFill::Full), FrameMeta::PLAIN),
            4 => (fl.frame_with(i, 30000, CsumFill::Partial), gso),
            _ => (fl.frame_with(i, 65535 - 40, CsumFill::Partial), gso),
        };
        frames.push((fr, meta));
        flows.push(fl);
    }
    feeds[0].push(&frames);
    let got = receive_with_headers(&mut qs, frames.len());
    let missing: Vec<(u16, usize)> =
        (0..frames.len() as u16).filter(|t| !got.contains_key(t)).map(|t| (t, frames[t as usize].0.len())).collect();
    assert_eq!(got.len(), frames.len(), "every frame delivered once; missing {missing:?}: {:?}", rig.stats().pairs);
    let mut steered = 0;
    for (i, fl) in flows.iter().enumerate() {
        let (q, v, h, b) = &got[&(i as u16)];
        let hash = fl.hash(&MS_KEY);
        assert_eq!(*q, table[hash as usize % table.len()] as usize, "frame {i} ({} bytes): queue", b.len());
        assert_eq!(*v, hash, "frame {i}: hash");
        assert!(b == &frames[i].0, "frame {i} ({} bytes) changed", frames[i].0.len());
        let meta = frames[i].1;
        if meta.gso_size != 0 {
            assert_eq!(h[1], GSO_TCPV4, "frame {i}: gso_type");
            assert_eq!(u16::from_le_bytes([h[4], h[5]]), 1448, "frame {i}: gso_size");
            assert_eq!(h[0] & F_NEEDS_CSUM, F_NEEDS_CSUM, "frame {i}: NEEDS_CSUM");
            assert_eq!(u16::from_le_bytes([h[6], h[7]]), 34, "frame {i}: csum_start");
        }
        steered += (*q != 0) as u64;
    }
    let st = rig.stats();
    assert!(steered > 0 && steered < frames.len() as u64, "{steered} of {} steered", frames.len());
    assert_eq!(st.pairs[0].rx_steered, steered);
    assert_eq!((st.pairs[0].rx_unsteered, st.pairs[0].rx_steer_dropped), (0, 0));
    drop(qs);
    rig.finish();
}

/// Issue 11: steering works with the most pairs the device takes (256,
/// beyond the old 16-pair mesh): frames arriving on pair 0 and pair 200
/// land on queues 128..=255 as a 128-entry table says.
#[test]
fn steering_works_with_the_most_pairs() {
    let pairs = 256u16;
    let (rig, feeds) = feed_rig("rss-256", pairs, 1500);
    let mut c = cfg(f::RSS | f::HASH_REPORT);
    c.ring_size = 64;
    c.pairs = Some(pairs);
    let mut d = rig.probe(c);
    let mut qs = d.take_pairs();
    assert_eq!(qs.len(), pairs as usize);
    let table: Vec<u16> = (0..128).map(|i| 255 - i).collect();
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&table, 0, pairs)), 0);
    let flows: Vec<Flow> = (0..64).map(Flow::nth).collect();
    let frames: Vec<(Vec<u8>, FrameMeta)> =
        flows.iter().enumerate().map(|(i, fl)| (fl.frame(i as u16), FrameMeta::PLAIN)).collect();
    feeds[0].push(&frames[..32]);
    feeds[200].push(&frames[32..]);
    let got = receive_with_headers(&mut qs, frames.len());
    assert_eq!(got.len(), frames.len(), "every frame delivered once");
    for (i, fl) in flows.iter().enumerate() {
        let (q, v, _, b) = &got[&(i as u16)];
        let hash = fl.hash(&MS_KEY);
        assert_eq!(*q, table[hash as usize % table.len()] as usize, "frame {i}: queue");
        assert_eq!((*v, b), (hash, &frames[i].0), "frame {i}");
    }
    // Every frame whose queue is not the pair it arrived on was steered.
    let expect = flows
        .iter()
        .enumerate()
        .filter(|&(i, fl)| table[fl.hash(&MS_KEY) as usize % table.len()] != if i < 32 { 0 } else { 200 })
        .count() as u64;
    let st = rig.stats();
    let steered: u64 = st.pairs.iter().map(|p| p.rx_steered).sum();
    let unsteered: u64 = st.pairs.iter().map(|p| p.rx_unsteered + p.rx_steer_dropped).sum();
    assert_eq!((steered, unsteered), (expect, 0));
    drop(qs);
    rig.finish();
}

/// Frames one queue pair received, in arrival order: (queue, tag).
fn receive_in_order(qs: &mut [QueuePair], on: &[usize], into: &mut Vec<(usize, u16)>) -> usize {
    let mut n = 0;
    for &i in on {
        qs[i].post_rx();
        n += qs[i].rx_burst_hashed(&mut |_, _, b| into.push((i, tag_of(b))), 64);
    }
    n
}

/// `frames` frames of 64 flows, tagged by their index; the queue each
/// goes to by `table`.
fn tagged_frames(n: usize, table: &[u16]) -> (Vec<(Vec<u8>, FrameMeta)>, Vec<usize>) {
    let flows: Vec<Flow> = (0..64).map(Flow::nth).collect();
    (0..n)
        .map(|k| {
            let fl = flows[k % flows.len()];
            ((fl.frame(k as u16), FrameMeta::PLAIN), table[fl.hash(&MS_KEY) as usize % table.len()] as usize)
        })
        .unzip()
}

/// Issue 11, back-pressure: a burst of 1000 frames from one port towards a
/// queue whose driver posts no RX buffers yet fills the target's inbox
/// (256 frames); the rest wait in the port instead of being dropped, and
/// once the driver posts buffers every frame arrives, in order. (Before
/// back-pressure, 744 of them were counted `rx_steer_dropped`.)
#[test]
fn a_burst_towards_a_slow_queue_waits_in_the_port_and_arrives_in_order() {
    let (rig, feeds) = feed_rig("rss-slow", 2, 1500);
    let mut d = rig.probe(cfg(f::RSS | f::HASH_REPORT));
    let mut qs = d.take_pairs();
    let table = vec![1u16; 8];
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&table, 1, 2)), 0);
    let (frames, _) = tagged_frames(1000, &table);
    feeds[0].push(&frames);
    // Queue 1 posts nothing for a while (well within the wait bound): its
    // inbox fills and pair 0 holds the rest in its port.
    assert!(
        wait_for(Duration::from_secs(5), || rig.stats().pairs[0].rx_steered == 256),
        "inbox filled: {:?}",
        rig.stats().pairs[0]
    );
    let before = rig.stats().pairs[0].sleeps;
    std::thread::sleep(Duration::from_millis(100));
    let st = rig.stats().pairs[0];
    assert_eq!((st.rx_steered, st.rx_steer_dropped), (256, 0), "the rest waits: {st:?}");
    // Blocked, the thread sleeps (adaptive idle) rather than spinning on
    // the frame in its port.
    assert!(st.sleeps > before, "pair 0 never slept while blocked: {st:?}");
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while got.len() < frames.len() && Instant::now() < end {
        if receive_in_order(&mut qs, &[0, 1], &mut got) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let want: Vec<(usize, u16)> = (0..frames.len()).map(|k| (1, k as u16)).collect();
    assert_eq!(got, want, "every frame on queue 1, in order");
    let st = rig.stats().pairs[0];
    assert_eq!((st.rx_steered, st.rx_steer_dropped), (1000, 0), "{st:?}");
    drop(qs);
    rig.finish();
}

/// Issue 11, the bound: a queue whose driver never posts RX buffers does
/// not stop the others for good. Its frames beyond its inbox wait the
/// bound (500 ms), then are dropped and counted; from then on frames that
/// find it full are dropped at once, and the other queue's frames, held
/// behind the first blocked one meanwhile, all arrive in order. The 256 in
/// the stuck queue's inbox arrive once its driver posts buffers.
#[test]
fn a_queue_that_never_posts_buffers_costs_one_bounded_wait() {
    let (rig, feeds) = feed_rig("rss-stuck", 3, 1500);
    let mut d = rig.probe(cfg(f::RSS | f::HASH_REPORT));
    let mut qs = d.take_pairs();
    let table: Vec<u16> = vec![1, 2, 1, 2, 1, 2, 1, 2];
    assert_eq!(send_ctrl(&mut d, &rss_cmd(&table, 1, 3)), 0);
    let (frames, dest) = tagged_frames(1200, &table);
    let to_stuck = dest.iter().filter(|&&q| q == 2).count();
    assert!(to_stuck > 300 && to_stuck < 1000, "{to_stuck} frames for queue 2");
    let t0 = Instant::now();
    feeds[0].push(&frames);
    let mut got = Vec::new();
    let mut first_drop = None;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        // Queues 0 and 1 take everything; queue 2 never posts.
        let n = receive_in_order(&mut qs, &[0, 1], &mut got);
        let st = rig.stats().pairs[0];
        if st.rx_steer_dropped > 0 && first_drop.is_none() {
            first_drop = Some(t0.elapsed());
        }
        if got.len() == frames.len() - to_stuck && st.rx_steer_dropped == (to_stuck - 256) as u64 {
            break;
        }
        assert!(Instant::now() < end, "got {} of {}, {st:?}", got.len(), frames.len() - to_stuck);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let waited = first_drop.expect("dropped");
    assert!(waited >= Duration::from_millis(500), "dropped after {waited:?}, before the bound");
    let want: Vec<(usize, u16)> =
        dest.iter().enumerate().filter(|&(_, &q)| q == 1).map(|(k, &q)| (q, k as u16)).collect();
    assert_eq!(got, want, "queue 1 got all its frames, in order, nothing else");
    let st = rig.stats().pairs[0];
    assert_eq!(st.rx_steered, (frames.len() - to_stuck + 256) as u64, "{st:?}");
    // Queue 2's driver wakes up: the 256 that were handed over arrive, the
    // oldest of its frames, in order.
    let mut late = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while late.len() < 256 && Instant::now() < end {
        if receive_in_order(&mut qs, &[2], &mut late) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let want: Vec<(usize, u16)> =
        dest.iter().enumerate().filter(|&(_, &q)| q == 2).map(|(k, &q)| (q, k as u16)).take(256).collect();
    assert_eq!(late, want);
    drop(qs);
    rig.finish();
}
