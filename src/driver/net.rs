//! A virtio-net driver over any [`DriverTransport`]: the init sequence a
//! vhost-vdpa user (such as QEMU) performs, poll-mode queue pairs for packet
//! generators, and the control queue in its own address space.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_net as vn;

use crate::uapi::vhost_vdpa::{
    VHOST_ACCESS_RW, VHOST_BACKEND_F_IOTLB_ASID, VHOST_BACKEND_F_IOTLB_BATCH, VHOST_BACKEND_F_IOTLB_MSG_V2,
};
use crate::uapi::virtio::{feature, status, VIRTIO_ID_NET};

use super::dma::{DmaError, DmaMemory};
use super::queue::DriverRing;
use super::ring::{RingError, Segment};
use super::transport::{DriverTransport, TransportError};
use crate::virtq::RingFormat;

/// `struct virtio_net_hdr_v1` (VERSION_1 makes it 12 bytes, num_buffers included).
pub const NET_HDR_LEN: usize = 12;
/// Largest `data` of one control command through [`NetDriver::ctrl`].
pub const CTRL_DATA_MAX: usize = 4096 - CTRL_DATA_OFF;

const PAGE: usize = 4096;
const CVQ_SIZE: u16 = 64;
// Command buffer layout (inside one page): class/cmd, ack, data.
const CTRL_HDR_OFF: usize = 0;
const CTRL_ACK_OFF: usize = 8;
const CTRL_DATA_OFF: usize = 16;
/// Upper bound on one wait for an interrupt while polling the control queue,
/// so status (NEEDS_RESET) is re-checked regularly.
const CTRL_POLL_SLICE: Duration = Duration::from_millis(20);

const fn bit(b: u32) -> u64 {
    1u64 << b
}

/// Backend features the driver uses when offered (bit numbers, as vhost has them).
const WANTED_BACKEND: u64 = bit(VHOST_BACKEND_F_IOTLB_MSG_V2 as u32)
    | bit(VHOST_BACKEND_F_IOTLB_BATCH as u32)
    | bit(VHOST_BACKEND_F_IOTLB_ASID as u32);

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("driver memory: {0}")]
    Dma(#[from] DmaError),
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    #[error("device id {0} is not a network device")]
    NotNet(u32),
    #[error("required feature {name} not offered (device offers {offered:#x}, wanted {wanted:#x})")]
    FeatureRefused { name: &'static str, offered: u64, wanted: u64 },
    #[error("device did not accept features {features:#x}: status {status:#x} lacks FEATURES_OK")]
    FeaturesNotAccepted { features: u64, status: u8 },
    #[error("device needs reset (status {status:#x})")]
    NeedsReset { status: u8 },
    #[error("device did not accept status {wanted:#x}: reads back {status:#x}")]
    StatusNotAccepted { wanted: u8, status: u8 },
    #[error("bad device config: {0}")]
    BadConfig(String),
    #[error("bad driver config: {0}")]
    InvalidConfig(String),
    #[error("device has {have} virtqueues, need {need}")]
    TooFewQueues { need: u32, have: u32 },
    #[error("control vq group {group} also holds data vq {vq}; it cannot get its own address space")]
    CvqGroupShared { group: u32, vq: u32 },
    #[error("address space {asid} unavailable for the control vq ({nas} address spaces, IOTLB_ASID {has_asid})")]
    AsidUnavailable { asid: u32, nas: u32, has_asid: bool },
    #[error("no control virtqueue negotiated")]
    NoCtrlVq,
    #[error("an earlier control command is still owned by the device")]
    CtrlBusy,
    #[error("device completed the control command without writing the ack")]
    CtrlNoAck,
    #[error("control command data of {len} bytes does not fit ({max} max)")]
    CtrlTooLong { len: usize, max: usize },
    #[error("control command class {class} cmd {cmd} refused (ack {ack})")]
    CtrlRefused { class: u8, cmd: u8, ack: u8 },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: &'static str, after: Duration },
}

/// When the driver enables its queues (VHOST_VDPA_SET_VRING_ENABLE) relative
/// to DRIVER_OK. The three drivers a vduse-net device meets do it three ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EnableOrder {
    /// Every queue before DRIVER_OK: the kernel's virtio_vdpa.
    #[default]
    VirtioVdpa,
    /// DRIVER_OK first; then the control queue, the device state replayed
    /// through it (MAC_ADDR_SET with CTRL_MAC_ADDR, VQ_PAIRS_SET with MQ),
    /// each reply awaited; then the data queues: QEMU's vhost-vdpa backend.
    Qemu,
    /// Pair 0 and the control queue before DRIVER_OK; the other pairs after
    /// DRIVER_OK, once VQ_PAIRS_SET was answered: DPDK's virtio-user.
    VirtioUser,
}

#[derive(Debug, Clone)]
pub struct NetDriverConfig {
    /// Features to accept when offered. VERSION_1 and ACCESS_PLATFORM are
    /// required. With RING_PACKED (not in the defaults) every queue, the
    /// control queue too, is a packed ring. With IN_ORDER (not in the
    /// defaults either) every queue takes a used entry that returns a run
    /// of chains.
    pub features: u64,
    /// Queue size of data queues (clamped to the device's maximum).
    pub ring_size: u16,
    /// Bytes per packet buffer, virtio-net header included.
    pub buf_size: usize,
    /// IOVA of the data memory (rings + buffers) in ASID 0.
    pub data_iova: u64,
    /// IOVA of the control queue memory in the control queue's ASID.
    pub cvq_iova: u64,
    /// ASID for the control queue; None picks 1 when the device has at least
    /// 2 groups and 2 address spaces (and IOTLB_ASID), else 0.
    pub cvq_asid: Option<u32>,
    /// Queue pairs to set up; None = all the device has.
    pub pairs: Option<u16>,
    /// Overall wait for one control command.
    pub ctrl_timeout: Duration,
    /// After DRIVER_OK, send MQ VQ_PAIRS_SET when more than one pair is used
    /// (with [`EnableOrder::Qemu`], whenever MQ is negotiated). With
    /// [`EnableOrder::VirtioUser`] and `false`, pairs beyond the first stay
    /// disabled (see [`NetDriver::set_pair_enabled`]).
    pub set_mq_pairs: bool,
    /// When queues are enabled relative to DRIVER_OK.
    pub enable_order: EnableOrder,
}

impl NetDriverConfig {
    pub const DEFAULT_FEATURES: u64 = bit(feature::VERSION_1)
        | bit(feature::ACCESS_PLATFORM)
        | bit(feature::EVENT_IDX)
        | bit(vn::VIRTIO_NET_F_MAC)
        | bit(vn::VIRTIO_NET_F_MTU)
        | bit(vn::VIRTIO_NET_F_STATUS)
        | bit(vn::VIRTIO_NET_F_CTRL_VQ)
        | bit(vn::VIRTIO_NET_F_CTRL_RX)
        | bit(vn::VIRTIO_NET_F_CTRL_MAC_ADDR)
        | bit(vn::VIRTIO_NET_F_MQ);
}

impl Default for NetDriverConfig {
    fn default() -> Self {
        NetDriverConfig {
            features: Self::DEFAULT_FEATURES,
            ring_size: 256,
            buf_size: 2048,
            data_iova: 0x1000_0000,
            cvq_iova: 0x8000_0000,
            cvq_asid: None,
            pairs: None,
            ctrl_timeout: Duration::from_secs(2),
            set_mq_pairs: true,
            enable_order: EnableOrder::VirtioVdpa,
        }
    }
}

/// Per-pair counters, owned by the pair's thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_kicks: u64,
    pub tx_errors: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_kicks: u64,
    pub rx_errors: u64,
    pub kick_errors: u64,
}

/// One data queue with one preallocated buffer per slot (one descriptor per
/// packet, so a slot is never shared by two chains).
struct DataQueue {
    vq: u32,
    q: DriverRing,
    /// Offset / IOVA of slot 0's buffer.
    buf_off: usize,
    buf_iova: u64,
    buf_size: usize,
    /// Bytes of each RX buffer offered to the device (up to `buf_size`).
    post_len: usize,
    stride: usize,
    /// Slots owned by the driver (at most the queue size), taken from the
    /// front and given back at the end: with chains completed in order a
    /// slot keeps meeting the same descriptor (the ring's free list is
    /// FIFO too), so the descriptor's contents repeat and are not stored
    /// again (`DriverQueue::store_desc`).
    free: VecDeque<u16>,
}

/// The token bit of a TX chain that carries a forwarded RX buffer
/// ([`QueuePair::fwd_burst`]); the rest of the token is the RX slot.
const FWD_TOKEN: u64 = 1 << 32;

/// RX buffers a burst requests ahead of the one being checked.
const RX_PREFETCH_AHEAD: usize = 8;

/// TX buffers a burst requests ahead of the one being written.
const TX_PREFETCH_AHEAD: usize = 8;

impl DataQueue {
    fn slot_ptr(&self, slot: u16) -> *mut u8 {
        debug_assert!(slot < self.q.size());
        // SAFETY: slot < queue size and probe sized the memory to hold
        // `size * stride` bytes of buffers from buf_off, so this stays inside.
        unsafe { self.q.memory().as_ptr().add(self.buf_off + slot as usize * self.stride) }
    }

    fn slot_iova(&self, slot: u16) -> u64 {
        self.buf_iova + (slot as usize * self.stride) as u64
    }

    /// Give a slot back; tokens that are not ours (raw tests) are refused.
    fn release(&mut self, token: u64) -> bool {
        if token < self.q.size() as u64 && self.free.len() < self.q.size() as usize {
            self.free.push_back(token as u16);
            true
        } else {
            false
        }
    }
}

/// What [`QueuePair::rx_burst_hashed`] calls per frame: the header's first
/// 12 bytes, (`hash_value`, `hash_report`), the frame.
pub type RxHashedFn<'a> = dyn FnMut(&[u8; NET_HDR_LEN], (u32, u16), &[u8]) + 'a;

/// The RX and TX queue of one pair, for a single owning thread.
pub struct QueuePair {
    index: u16,
    transport: Arc<dyn DriverTransport>,
    rx: DataQueue,
    tx: DataQueue,
    stats: PairStats,
    /// MRG_RXBUF reassembly: the frame being collected, its header, and
    /// the buffers still to come.
    merge: Vec<u8>,
    merge_hdr: [u8; NET_HDR_LEN],
    merge_left: u16,
    /// The virtio-net header length both ways: 12, or 20 with HASH_REPORT
    /// (`virtio_net_hdr_v1_hash`, as Linux uses it on RX and TX).
    hdr_len: usize,
    /// The hash part (bytes 12..20) of the last frame's header.
    merge_hash: [u8; 8],
}

impl QueuePair {
    pub fn index(&self) -> u16 {
        self.index
    }
    pub fn rx_vq(&self) -> u32 {
        self.rx.vq
    }
    pub fn tx_vq(&self) -> u32 {
        self.tx.vq
    }
    pub fn ring_size(&self) -> u16 {
        self.tx.q.size()
    }
    pub fn buf_size(&self) -> usize {
        self.tx.buf_size
    }
    /// The negotiated virtio-net header length (12, or 20 with HASH_REPORT).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }
    pub fn stats(&self) -> &PairStats {
        &self.stats
    }
    /// Free TX slots (not owned by the device).
    pub fn tx_free(&self) -> usize {
        self.tx.free.len()
    }

    fn kick(&mut self, vq: u32) -> bool {
        match self.transport.kick(vq) {
            Ok(()) => true,
            Err(e) => {
                self.stats.kick_errors += 1;
                log::debug!("kick vq {vq}: {e}");
                false
            }
        }
    }

    /// Fill up to `max` free TX slots. `frames(n, buf)` writes frame `n` of
    /// this burst into `buf` (after a zeroed virtio-net header) and returns
    /// its length; 0 ends the burst early. One publish, one kick at most.
    pub fn tx_burst(&mut self, frames: &mut dyn FnMut(usize, &mut [u8]) -> usize, max: usize) -> usize {
        self.tx_burst_inner(frames, max, false)
    }

    /// [`tx_burst`](Self::tx_burst) where `frames(n, buf)` writes the
    /// virtio-net header too (offloads: NEEDS_CSUM, GSO) and returns the
    /// frame's length without it.
    pub fn tx_burst_hdr(&mut self, frames: &mut dyn FnMut(usize, &mut [u8]) -> usize, max: usize) -> usize {
        self.tx_burst_inner(frames, max, true)
    }

    /// Offer RX buffers of `len` bytes (at most the configured buffer
    /// size) from now on: small buffers with MRG_RXBUF. Buffers already
    /// posted keep their length.
    pub fn set_rx_buffer_len(&mut self, len: usize) {
        self.rx.post_len = len.clamp(self.hdr_len + 1, self.rx.buf_size);
    }

    fn tx_burst_inner(&mut self, frames: &mut dyn FnMut(usize, &mut [u8]) -> usize, max: usize, hdr: bool) -> usize {
        if self.tx.free.len() < max {
            self.reclaim_tx();
        }
        let hl = self.hdr_len;
        let room = self.tx.buf_size - hl;
        // The lines this burst writes were the device's last: request them
        // for writing up front (descriptors, avail slots) and the buffers
        // a few frames ahead, so the stores do not wait one line at a time.
        self.tx.q.prefetch_adds(max);
        self.prefetch_tx(0..TX_PREFETCH_AHEAD);
        let mut n = 0;
        while n < max {
            let Some(slot) = self.tx.free.pop_front() else { break };
            self.prefetch_tx(TX_PREFETCH_AHEAD - 1..TX_PREFETCH_AHEAD);
            // SAFETY: the slot is on the free list, so the device does not own
            // it (a device writing it anyway only corrupts bytes it was never
            // handed); the buffer is buf_size bytes inside the mapping.
            let buf = unsafe { std::slice::from_raw_parts_mut(self.tx.slot_ptr(slot), self.tx.buf_size) };
            buf[..hl].fill(0);
            let len = if hdr { frames(n, buf) } else { frames(n, &mut buf[hl..]) }.min(room);
            if hdr && hl > NET_HDR_LEN && len > 0 {
                // The caller wrote the 12-byte header and the frame after
                // it: make room for the (zero) hash fields.
                buf.copy_within(NET_HDR_LEN..NET_HDR_LEN + len, hl);
                buf[NET_HDR_LEN..hl].fill(0);
            }
            if len == 0 {
                self.tx.free.push_front(slot);
                break;
            }
            let seg = [(self.tx.slot_iova(slot), (hl + len) as u32, false)];
            if self.tx.q.add_chain(&seg, slot as u64).is_err() {
                // Cannot happen while slots and descriptors match one to one.
                self.tx.free.push_front(slot);
                self.stats.tx_errors += 1;
                break;
            }
            self.stats.tx_packets += 1;
            self.stats.tx_bytes += len as u64;
            n += 1;
        }
        if n > 0 {
            self.tx.q.publish();
            if self.tx.q.needs_kick() && self.kick(self.tx.vq) {
                self.stats.tx_kicks += 1;
            }
        }
        n
    }

    /// Take back TX slots the device has finished with.
    pub fn reclaim_tx(&mut self) -> usize {
        self.take_back_tx().0
    }

    /// Post every free RX slot as a device-writable buffer.
    pub fn post_rx(&mut self) -> usize {
        let mut n = 0;
        while let Some(slot) = self.rx.free.pop_front() {
            if !self.post_rx_slot(slot) {
                break;
            }
            n += 1;
        }
        self.publish_rx(n > 0);
        n
    }

    fn post_rx_slot(&mut self, slot: u16) -> bool {
        let seg = [(self.rx.slot_iova(slot), self.rx.post_len as u32, true)];
        if self.rx.q.add_chain(&seg, slot as u64).is_err() {
            self.rx.free.push_front(slot);
            self.stats.rx_errors += 1;
            return false;
        }
        true
    }

    fn publish_rx(&mut self, any: bool) {
        if any {
            self.rx.q.publish();
            if self.rx.q.needs_kick() && self.kick(self.rx.vq) {
                self.stats.rx_kicks += 1;
            }
        }
    }

    /// Hand up to `max` received frames (without the virtio-net header) to
    /// `f`, reposting each buffer. Used entries with a length below the
    /// header or above the buffer are counted in `rx_errors` and skipped.
    pub fn rx_burst(&mut self, f: &mut dyn FnMut(&[u8]), max: usize) -> usize {
        let (delivered, _, reposted) = self.receive(f, max, false, true);
        self.publish_rx(reposted);
        delivered
    }

    /// testpmd's io forwarding, for `pktgen --mode fwd`: hand up to `max`
    /// received frames to `f` and, with `forward`, send each one back out
    /// from the buffer it arrived in, header and all (zero copy: only what
    /// `f` reads of a frame is touched here). A forwarded buffer returns
    /// to the RX ring when its TX chain completes; without `forward`, or
    /// when the TX ring has no room, it is reposted at once. TX chains of
    /// [`Self::tx_burst`] are taken back as usual. Returns (frames
    /// received, frames forwarded). `reads`: `f` reads every frame (their
    /// first lines are then prefetched; otherwise no frame is touched here,
    /// so its lines stay with the device that wrote them).
    pub fn fwd_burst(&mut self, f: &mut dyn FnMut(&[u8]), max: usize, forward: bool, reads: bool) -> (usize, usize) {
        let back = self.take_back_tx().1;
        let (got, sent, reposted) = self.receive(f, max, forward, reads);
        if sent > 0 {
            self.tx.q.publish();
            if self.tx.q.needs_kick() && self.kick(self.tx.vq) {
                self.stats.tx_kicks += 1;
            }
        }
        self.publish_rx(back || reposted);
        (got, sent)
    }

    /// The receive loop of [`Self::rx_burst`] and [`Self::fwd_burst`]: up
    /// to `max` used RX entries, each good frame handed to `f`, then sent
    /// back out from its buffer (`forward`, room in the TX ring) or its
    /// buffer reposted. Entries with a length below the header or above
    /// the buffer count in `rx_errors` (their buffers reposted), foreign
    /// tokens too. With `reads`, the first lines of the buffers 8 entries
    /// ahead are prefetched. Publishes nothing. Returns (frames handed
    /// over, frames forwarded, whether a buffer was reposted).
    fn receive(&mut self, f: &mut dyn FnMut(&[u8]), max: usize, forward: bool, reads: bool) -> (usize, usize, bool) {
        let (mut got, mut sent, mut reposted) = (0, 0, false);
        let hl = self.hdr_len;
        let ahead = if reads { RX_PREFETCH_AHEAD as u16 } else { 0 };
        self.prefetch_rx(0..ahead);
        for _ in 0..max {
            self.prefetch_rx(ahead..ahead + reads as u16);
            let (slot, len) = match self.rx.q.pop_used() {
                Ok(None) => break,
                Err(e) => {
                    self.stats.rx_errors += 1;
                    log::debug!("rx vq {}: {e}", self.rx.vq);
                    break;
                }
                Ok(Some((token, len))) => (token, len as usize),
            };
            if slot >= self.rx.q.size() as u64 {
                // Not one of our slots (raw test chain).
                self.stats.rx_errors += 1;
                continue;
            }
            let slot = slot as u16;
            if len < hl || len > self.rx.buf_size {
                self.stats.rx_errors += 1;
                reposted |= self.post_rx_slot(slot);
                continue;
            }
            // SAFETY: the device returned this slot, so the driver owns it
            // again; len <= buf_size keeps it in the buffer.
            let buf = unsafe { std::slice::from_raw_parts(self.rx.slot_ptr(slot), len) };
            f(&buf[hl..]);
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += (len - hl) as u64;
            got += 1;
            // The device's RX header goes out as the TX header: no offload
            // flags, and num_buffers means nothing on transmit.
            let seg = [(self.rx.slot_iova(slot), len as u32, false)];
            if forward && self.tx.q.add_chain(&seg, FWD_TOKEN | slot as u64).is_ok() {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += (len - hl) as u64;
                sent += 1;
            } else {
                reposted |= self.post_rx_slot(slot);
            }
        }
        (got, sent, reposted)
    }

    /// Request, for writing, the header and first frame bytes of the free
    /// TX buffers `ks` places from the front (the next ones a burst fills).
    /// A hint only.
    #[inline]
    fn prefetch_tx(&self, ks: std::ops::Range<usize>) {
        for k in ks {
            let Some(&s) = self.tx.free.get(k) else { break };
            crate::mem::prefetch::lines(self.tx.slot_ptr(s), (self.hdr_len + 64) as u32, true);
        }
    }

    /// Request the first line (header, sequence number) of the RX buffers
    /// the device should return `ks` places from now: the device wrote
    /// them, so each is a miss, and asked for a few frames ahead they
    /// arrive while the frames before them are checked. A hint only.
    #[inline]
    fn prefetch_rx(&self, ks: std::ops::Range<u16>) {
        for k in ks {
            match self.rx.q.token_ahead(k) {
                Some(t) if t < self.rx.q.size() as u64 => crate::mem::prefetch::line(self.rx.slot_ptr(t as u16)),
                _ => break,
            }
        }
    }

    /// Take back completed TX chains: TX slots are freed, forwarded RX
    /// buffers ([`Self::fwd_burst`]) reposted. Returns (TX slots freed,
    /// whether an RX buffer was reposted).
    fn take_back_tx(&mut self) -> (usize, bool) {
        let (mut freed, mut reposted) = (0, false);
        // Bounded: each pop consumes one used entry and at most `size` can be pending.
        for _ in 0..self.tx.q.size() {
            match self.tx.q.pop_used() {
                Ok(Some((token, _))) if token & FWD_TOKEN != 0 => {
                    let slot = token & !FWD_TOKEN;
                    if slot < self.rx.q.size() as u64 {
                        reposted |= self.post_rx_slot(slot as u16);
                    } else {
                        self.stats.tx_errors += 1;
                    }
                }
                Ok(Some((token, _))) => {
                    if self.tx.release(token) {
                        freed += 1;
                    } else {
                        self.stats.tx_errors += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.stats.tx_errors += 1;
                    log::debug!("tx vq {}: {e}", self.tx.vq);
                    break;
                }
            }
        }
        (freed, reposted)
    }

    /// With MRG_RXBUF: hand up to `max` received frames to `f` with their
    /// virtio-net header; a frame spanning several buffers (`num_buffers`
    /// in its first header) is reassembled first. Buffers are reposted.
    /// Returns the frames handed over.
    pub fn rx_burst_merged(&mut self, f: &mut dyn FnMut(&[u8; NET_HDR_LEN], &[u8]), max: usize) -> usize {
        self.rx_burst_hashed(&mut |h, _, b| f(h, b), max)
    }

    /// [`rx_burst_merged`](Self::rx_burst_merged) that also hands over the
    /// header's (`hash_value`, `hash_report`) (zeros without HASH_REPORT).
    pub fn rx_burst_hashed(&mut self, f: &mut RxHashedFn<'_>, max: usize) -> usize {
        let mut delivered = 0;
        let mut reposted = false;
        for _ in 0..max * 8 {
            if delivered == max {
                break;
            }
            let (token, len) = match self.rx.q.pop_used() {
                Ok(None) => break,
                Err(e) => {
                    self.stats.rx_errors += 1;
                    log::debug!("rx vq {}: {e}", self.rx.vq);
                    break;
                }
                Ok(Some(u)) => u,
            };
            if token >= self.rx.q.size() as u64 {
                self.stats.rx_errors += 1;
                continue;
            }
            let slot = token as u16;
            let len = len as usize;
            let first = self.merge_left == 0;
            let hl = self.hdr_len;
            if len > self.rx.buf_size || (first && len < hl) {
                self.stats.rx_errors += 1;
                self.merge_left = 0;
                reposted |= self.post_rx_slot(slot);
                continue;
            }
            // SAFETY: the device returned this slot, so the driver owns it
            // again; len <= buf_size keeps it in the buffer.
            let buf = unsafe { std::slice::from_raw_parts(self.rx.slot_ptr(slot), len) };
            if first {
                self.merge_hdr.copy_from_slice(&buf[..NET_HDR_LEN]);
                self.merge_hash = [0; 8];
                self.merge_hash[..hl - NET_HDR_LEN].copy_from_slice(&buf[NET_HDR_LEN..hl]);
                let n = u16::from_le_bytes([buf[10], buf[11]]);
                self.merge.clear();
                self.merge.extend_from_slice(&buf[hl..]);
                self.merge_left = n.max(1);
            } else {
                self.merge.extend_from_slice(buf);
            }
            self.merge_left -= 1;
            reposted |= self.post_rx_slot(slot);
            if self.merge_left == 0 {
                let h = &self.merge_hash;
                let hash = (u32::from_le_bytes([h[0], h[1], h[2], h[3]]), u16::from_le_bytes([h[4], h[5]]));
                f(&self.merge_hdr, hash, &self.merge);
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += self.merge.len() as u64;
                delivered += 1;
            }
        }
        self.publish_rx(reposted);
        delivered
    }

    /// Sleep until the RX queue has used entries or `timeout` passes.
    pub fn wait_rx(&mut self, timeout: Duration) -> Result<bool, TransportError> {
        let pending = self.rx.q.enable_interrupts();
        let got = if pending { true } else { self.transport.wait_interrupt(self.rx.vq, timeout)? };
        self.rx.q.disable_interrupts();
        Ok(got || self.rx.q.used_ready())
    }

    /// Force a notification, e.g. after raw ring edits.
    pub fn kick_tx(&self) -> Result<(), TransportError> {
        self.transport.kick(self.tx.vq)
    }
    pub fn kick_rx(&self) -> Result<(), TransportError> {
        self.transport.kick(self.rx.vq)
    }

    /// The TX ring itself, for tests that build malformed chains.
    pub fn raw_tx(&mut self) -> &mut DriverRing {
        &mut self.tx.q
    }
    pub fn raw_rx(&mut self) -> &mut DriverRing {
        &mut self.rx.q
    }
    /// Memory holding all data rings and buffers (mapped in ASID 0).
    pub fn memory(&self) -> &Arc<DmaMemory> {
        self.tx.q.memory()
    }
    pub fn tx_slot_iova(&self, slot: u16) -> u64 {
        self.tx.slot_iova(slot)
    }
    pub fn rx_slot_iova(&self, slot: u16) -> u64 {
        self.rx.slot_iova(slot)
    }
    /// Offset of a slot's buffer in [`Self::memory`].
    pub fn tx_slot_offset(&self, slot: u16) -> usize {
        self.tx.buf_off + slot as usize * self.tx.stride
    }
    pub fn rx_slot_offset(&self, slot: u16) -> usize {
        self.rx.buf_off + slot as usize * self.rx.stride
    }
}

struct Cvq {
    vq: u32,
    group: u32,
    q: DriverRing,
    mem: Arc<DmaMemory>,
    cmd_off: usize,
    cmd_iova: u64,
}

/// One IOTLB mapping this driver made: (asid, iova, len).
type Mapping = (u32, u64, u64);

/// A probed virtio-net device. Dropping it resets the device and removes
/// its IOTLB mappings.
pub struct NetDriver {
    transport: Arc<dyn DriverTransport>,
    cfg: NetDriverConfig,
    features: u64,
    backend_features: u64,
    mac: [u8; 6],
    mtu: Option<u16>,
    max_pairs: u16,
    npairs: u16,
    ring_size: u16,
    data_mem: Arc<DmaMemory>,
    pairs: Vec<QueuePair>,
    cvq: Option<Cvq>,
    cvq_asid: u32,
    scratch_off: usize,
    ctrl_seq: u64,
    maps: Vec<Mapping>,
}

impl NetDriver {
    /// Run the virtio init sequence and set up every used queue.
    pub fn probe(transport: Arc<dyn DriverTransport>, cfg: NetDriverConfig) -> Result<NetDriver, DriverError> {
        let mut maps = Vec::new();
        match Self::probe_inner(&transport, &cfg, &mut maps) {
            Ok(mut d) => {
                d.maps = maps;
                // Drop (reset + unmap) runs if this fails.
                d.after_driver_ok()?;
                Ok(d)
            }
            Err(e) => {
                log::warn!("virtio-net probe failed: {e}");
                // Best effort: FAILED keeps the bits already set (vhost-vdpa
                // refuses clearing bits other than by a reset).
                if let Ok(st) = transport.status() {
                    let _ = transport.set_status(st | status::FAILED);
                }
                for (asid, iova, len) in maps {
                    let _ = transport.iotlb_unmap(asid, iova, len);
                }
                Err(e)
            }
        }
    }

    /// What the driver does between DRIVER_OK and having traffic, in its
    /// [`EnableOrder`].
    fn after_driver_ok(&mut self) -> Result<(), DriverError> {
        let mq = self.cvq.is_some() && self.has(vn::VIRTIO_NET_F_MQ) && self.cfg.set_mq_pairs;
        let t = self.transport.clone();
        match self.cfg.enable_order {
            EnableOrder::VirtioVdpa => {
                if mq && self.npairs > 1 {
                    self.set_queue_pairs(self.npairs)?;
                }
            }
            EnableOrder::Qemu => {
                if let Some(vq) = self.cvq_index() {
                    t.set_vring_enable(vq, true)?;
                    if self.has(vn::VIRTIO_NET_F_CTRL_MAC_ADDR) {
                        let (class, cmd) = (vn::VIRTIO_NET_CTRL_MAC as u8, vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8);
                        match self.ctrl(class, cmd, &self.mac.clone())? {
                            0 => {}
                            ack => return Err(DriverError::CtrlRefused { class, cmd, ack }),
                        }
                    }
                    if mq {
                        self.set_queue_pairs(self.npairs)?;
                    }
                }
                for vq in 0..2 * self.npairs as u32 {
                    t.set_vring_enable(vq, true)?;
                }
            }
            EnableOrder::VirtioUser => {
                if mq && self.npairs > 1 {
                    self.set_queue_pairs(self.npairs)?;
                    for pair in 1..self.npairs {
                        self.set_pair_enabled(pair, true)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Enable or disable both queues of `pair` (VHOST_VDPA_SET_VRING_ENABLE),
    /// as DPDK's virtio-user does after DRIVER_OK (VQ_PAIRS_SET, memory
    /// hotplug). The device stops a disabled queue where it is.
    pub fn set_pair_enabled(&self, pair: u16, on: bool) -> Result<(), DriverError> {
        if pair >= self.npairs {
            return Err(DriverError::InvalidConfig(format!("pair {pair} of {}", self.npairs)));
        }
        self.transport.set_vring_enable(2 * pair as u32, on)?;
        self.transport.set_vring_enable(2 * pair as u32 + 1, on)?;
        Ok(())
    }

    fn probe_inner(
        t: &Arc<dyn DriverTransport>,
        cfg: &NetDriverConfig,
        maps: &mut Vec<Mapping>,
    ) -> Result<NetDriver, DriverError> {
        if cfg.buf_size < NET_HDR_LEN + 64 || cfg.buf_size > u32::MAX as usize {
            return Err(DriverError::InvalidConfig(format!("buf_size {} out of range", cfg.buf_size)));
        }
        let id = t.device_id()?;
        if id != VIRTIO_ID_NET {
            return Err(DriverError::NotNet(id));
        }
        t.set_status(0)?;
        let mut st = status::ACKNOWLEDGE;
        t.set_status(st)?;
        st |= status::DRIVER;
        t.set_status(st)?;

        let offered = t.device_features()?;
        let features = cfg.features & offered;
        for (b, name) in [(feature::VERSION_1, "VERSION_1"), (feature::ACCESS_PLATFORM, "ACCESS_PLATFORM")] {
            if features & bit(b) == 0 {
                return Err(DriverError::FeatureRefused { name, offered, wanted: cfg.features });
            }
        }
        t.set_features(features)?;
        st |= status::FEATURES_OK;
        t.set_status(st)?;
        // vhost-vdpa returns success even when the device refused: re-read.
        let got = t.status()?;
        if got & status::DEVICE_NEEDS_RESET != 0 {
            return Err(DriverError::NeedsReset { status: got });
        }
        if got & status::FEATURES_OK == 0 {
            return Err(DriverError::FeaturesNotAccepted { features, status: got });
        }
        let has = |b: u32| features & bit(b) != 0;

        let mut mac = [0u8; 6];
        if has(vn::VIRTIO_NET_F_MAC) {
            t.read_config(0, &mut mac)?;
        }
        let mut max_pairs = 1u16;
        if has(vn::VIRTIO_NET_F_MQ) {
            let mut b = [0u8; 2];
            t.read_config(8, &mut b)?;
            max_pairs = u16::from_le_bytes(b);
            if !(1..=0x8000).contains(&max_pairs) {
                return Err(DriverError::BadConfig(format!("max_virtqueue_pairs {max_pairs}")));
            }
        }
        let mut mtu = None;
        if has(vn::VIRTIO_NET_F_MTU) {
            let mut b = [0u8; 2];
            t.read_config(10, &mut b)?;
            mtu = Some(u16::from_le_bytes(b));
        }

        let backend_features = t.backend_features()? & WANTED_BACKEND;
        if backend_features != 0 {
            t.set_backend_features(backend_features)?;
        }
        let has_asid = backend_features & bit(VHOST_BACKEND_F_IOTLB_ASID as u32) != 0;

        let ctrl = has(vn::VIRTIO_NET_F_CTRL_VQ);
        let npairs = cfg.pairs.unwrap_or(max_pairs).clamp(1, max_pairs);
        let cvq_index = 2 * max_pairs as u32;
        let need = cvq_index + ctrl as u32;
        let have = t.vq_count()?;
        if have < need {
            return Err(DriverError::TooFewQueues { need, have });
        }
        let max_num = t.max_vring_num()?;
        let ring_size = pow2_floor(cfg.ring_size.min(max_num));
        if ring_size == 0 {
            return Err(DriverError::InvalidConfig(format!("ring size {} (device max {max_num})", cfg.ring_size)));
        }
        let event_idx = has(feature::EVENT_IDX);
        let in_order = has(feature::IN_ORDER);
        let format = RingFormat::of_features(features);

        // The control queue's group moves to its own address space before
        // DRIVER_OK (the device refuses it afterwards), as QEMU does to
        // shadow the control queue.
        let mut cvq_asid = 0;
        let mut cvq_group = 0;
        if ctrl {
            let ngroups = t.group_num()?;
            let nas = t.as_num()?;
            let auto = if ngroups >= 2 && nas >= 2 && has_asid { 1 } else { 0 };
            cvq_asid = cfg.cvq_asid.unwrap_or(auto);
            cvq_group = t.vring_group(cvq_index)?;
            if cvq_asid != 0 {
                if !has_asid || cvq_asid >= nas {
                    return Err(DriverError::AsidUnavailable { asid: cvq_asid, nas, has_asid });
                }
                for vq in 0..cvq_index {
                    if t.vring_group(vq)? == cvq_group {
                        return Err(DriverError::CvqGroupShared { group: cvq_group, vq });
                    }
                }
                t.set_group_asid(cvq_group, cvq_asid)?;
            }
        }

        // Data memory: per vq a page-rounded ring, then its buffers; one
        // spare page at the end for tests.
        let ring_bytes = DriverRing::bytes(format, ring_size).next_multiple_of(PAGE);
        let stride = cfg.buf_size.next_multiple_of(64);
        let vq_bytes = (ring_bytes + ring_size as usize * stride).next_multiple_of(PAGE);
        let nvq = 2 * npairs as usize;
        let scratch_off = nvq * vq_bytes;
        let data_len = scratch_off + PAGE;
        let data_mem = Arc::new(DmaMemory::new("vduse-net-data", data_len)?);
        let data_len = data_mem.len();

        let cvq_ring_bytes = DriverRing::bytes(format, CVQ_SIZE.min(max_num)).next_multiple_of(PAGE);
        let cvq_mem = if ctrl { Some(Arc::new(DmaMemory::new("vduse-net-cvq", cvq_ring_bytes + PAGE)?)) } else { None };
        if let Some(m) = &cvq_mem {
            let overlap =
                cfg.cvq_iova < cfg.data_iova + data_len as u64 && cfg.data_iova < cfg.cvq_iova + m.len() as u64;
            if cvq_asid == 0 && overlap {
                return Err(DriverError::InvalidConfig("data and control IOVA ranges overlap in ASID 0".into()));
            }
        }

        t.iotlb_map(0, cfg.data_iova, &data_mem, 0, data_len, VHOST_ACCESS_RW)?;
        maps.push((0, cfg.data_iova, data_len as u64));
        if let Some(m) = &cvq_mem {
            t.iotlb_map(cvq_asid, cfg.cvq_iova, m, 0, m.len(), VHOST_ACCESS_RW)?;
            maps.push((cvq_asid, cfg.cvq_iova, m.len() as u64));
        }

        // Which queues are enabled before DRIVER_OK; the others follow in
        // `after_driver_ok`.
        let enable_now = |vq: u32| match cfg.enable_order {
            EnableOrder::VirtioVdpa => true,
            EnableOrder::Qemu => false,
            EnableOrder::VirtioUser => vq < 2 || vq == cvq_index,
        };
        let setup = |vq: u32, q: &DriverRing| -> Result<(), DriverError> {
            t.set_vring_num(vq, q.size())?;
            t.set_vring_addr(vq, q.desc_iova(), q.driver_area_iova(), q.device_area_iova())?;
            t.set_vring_base(vq, q.initial_base())?;
            if enable_now(vq) {
                t.set_vring_enable(vq, true)?;
            }
            Ok(())
        };
        let mut pairs = Vec::with_capacity(npairs as usize);
        for i in 0..npairs {
            let mk = |vq: u32| -> Result<DataQueue, DriverError> {
                let off = vq as usize * vq_bytes;
                let iova = cfg.data_iova + off as u64;
                let mut q = DriverRing::new(format, data_mem.clone(), off, iova, ring_size, event_idx)?;
                q.set_in_order(in_order);
                // Data queues are polled; wait_rx turns interrupts on when sleeping.
                q.disable_interrupts();
                setup(vq, &q)?;
                let free: VecDeque<u16> = (0..ring_size).collect();
                Ok(DataQueue {
                    vq,
                    q,
                    buf_off: off + ring_bytes,
                    buf_iova: iova + ring_bytes as u64,
                    buf_size: cfg.buf_size,
                    post_len: cfg.buf_size,
                    stride,
                    free,
                })
            };
            let rx = mk(2 * i as u32)?;
            let tx = mk(2 * i as u32 + 1)?;
            pairs.push(QueuePair {
                index: i,
                transport: t.clone(),
                rx,
                tx,
                stats: PairStats::default(),
                merge: Vec::new(),
                merge_hdr: [0; NET_HDR_LEN],
                merge_left: 0,
                hdr_len: crate::net::hdr::hdr_len(features),
                merge_hash: [0; 8],
            });
        }
        let cvq = match cvq_mem {
            Some(mem) => {
                let size = pow2_floor(CVQ_SIZE.min(max_num));
                let mut q = DriverRing::new(format, mem.clone(), 0, cfg.cvq_iova, size, event_idx)?;
                q.set_in_order(in_order);
                setup(cvq_index, &q)?;
                Some(Cvq {
                    vq: cvq_index,
                    group: cvq_group,
                    q,
                    mem,
                    cmd_off: cvq_ring_bytes,
                    cmd_iova: cfg.cvq_iova + cvq_ring_bytes as u64,
                })
            }
            None => None,
        };

        st |= status::DRIVER_OK;
        t.set_status(st)?;
        let got = t.status()?;
        if got & status::DEVICE_NEEDS_RESET != 0 {
            return Err(DriverError::NeedsReset { status: got });
        }
        if got & status::DRIVER_OK == 0 || got & status::FAILED != 0 {
            return Err(DriverError::StatusNotAccepted { wanted: st, status: got });
        }
        log::info!(
            "virtio-net up: features {features:#x}, backend {backend_features:#x}, {npairs}/{max_pairs} {} pairs of \
             {ring_size}, cvq {}",
            format.name(),
            if ctrl { format!("vq {cvq_index} group {cvq_group} asid {cvq_asid}") } else { "none".into() }
        );
        Ok(NetDriver {
            transport: t.clone(),
            cfg: cfg.clone(),
            features,
            backend_features,
            mac,
            mtu,
            max_pairs,
            npairs,
            ring_size,
            data_mem,
            pairs,
            cvq,
            cvq_asid,
            scratch_off,
            ctrl_seq: 0,
            maps: Vec::new(),
        })
    }

    fn has(&self, b: u32) -> bool {
        self.features & bit(b) != 0
    }

    /// Reset the device (status 0). Queues are dead afterwards; probe again.
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.transport.set_status(0)?;
        Ok(())
    }

    /// Read the status; NEEDS_RESET is an error.
    pub fn check_status(&self) -> Result<u8, DriverError> {
        let st = self.transport.status()?;
        if st & status::DEVICE_NEEDS_RESET != 0 {
            return Err(DriverError::NeedsReset { status: st });
        }
        Ok(st)
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }
    /// Config-space MAC (zero without VIRTIO_NET_F_MAC).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }
    /// Pairs the device has (1 without MQ).
    pub fn max_pairs(&self) -> u16 {
        self.max_pairs
    }
    /// Pairs set up by this driver.
    pub fn pairs(&self) -> u16 {
        self.npairs
    }
    pub fn ring_size(&self) -> u16 {
        self.ring_size
    }
    pub fn config(&self) -> &NetDriverConfig {
        &self.cfg
    }
    pub fn cvq_asid(&self) -> u32 {
        self.cvq_asid
    }
    pub fn cvq_index(&self) -> Option<u32> {
        self.cvq.as_ref().map(|c| c.vq)
    }
    pub fn cvq_group(&self) -> Option<u32> {
        self.cvq.as_ref().map(|c| c.group)
    }
    pub fn transport(&self) -> &Arc<dyn DriverTransport> {
        &self.transport
    }
    /// Data rings and buffers, mapped in ASID 0 at `config().data_iova`.
    pub fn data_mem(&self) -> &Arc<DmaMemory> {
        &self.data_mem
    }
    /// A spare page of data memory (ASID 0) no queue uses: (offset, iova, len).
    pub fn scratch(&self) -> (usize, u64, usize) {
        (self.scratch_off, self.cfg.data_iova + self.scratch_off as u64, self.data_mem.len() - self.scratch_off)
    }
    /// Control queue memory, mapped in `cvq_asid()` at `config().cvq_iova`.
    pub fn cvq_mem(&self) -> Option<&Arc<DmaMemory>> {
        self.cvq.as_ref().map(|c| &c.mem)
    }
    /// The control ring itself, for malformed-ring tests.
    pub fn raw_cvq(&mut self) -> Option<&mut DriverRing> {
        self.cvq.as_mut().map(|c| &mut c.q)
    }

    /// Hand out the queue pairs (once); each can move to its own thread.
    pub fn take_pairs(&mut self) -> Vec<QueuePair> {
        std::mem::take(&mut self.pairs)
    }

    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    pub fn set_queue_pairs(&mut self, pairs: u16) -> Result<(), DriverError> {
        let (class, cmd) = (vn::VIRTIO_NET_CTRL_MQ as u8, vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8);
        match self.ctrl(class, cmd, &pairs.to_le_bytes())? {
            0 => Ok(()),
            ack => Err(DriverError::CtrlRefused { class, cmd, ack }),
        }
    }

    /// Send one control command; returns the ack byte (0 = VIRTIO_NET_OK).
    pub fn ctrl(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<u8, DriverError> {
        let cvq = self.cvq.as_ref().ok_or(DriverError::NoCtrlVq)?;
        let (mem, off, iova) = (cvq.mem.clone(), cvq.cmd_off, cvq.cmd_iova);
        self.ctrl_with_buffer_iova(class, cmd, data, &mem, off, iova)
    }

    /// Like [`Self::ctrl`], but the command buffers live at `mem[offset..]`,
    /// which the caller says the device sees at `iova` (in whatever ASID) —
    /// e.g. [`Self::scratch`], mapped only in ASID 0, to check that the
    /// device refuses control buffers outside the control queue's ASID.
    pub fn ctrl_with_buffer_iova(
        &mut self,
        class: u8,
        cmd: u8,
        data: &[u8],
        mem: &DmaMemory,
        offset: usize,
        iova: u64,
    ) -> Result<u8, DriverError> {
        if data.len() > CTRL_DATA_MAX {
            return Err(DriverError::CtrlTooLong { len: data.len(), max: CTRL_DATA_MAX });
        }
        if offset.checked_add(CTRL_DATA_OFF + data.len()).map_or(true, |end| end > mem.len()) {
            return Err(DriverError::InvalidConfig(format!("command buffer at {offset:#x} outside memory")));
        }
        mem.write(offset + CTRL_HDR_OFF, &[class, cmd]);
        // A value no device writes for OK/ERR, so a missing write shows.
        mem.write(offset + CTRL_ACK_OFF, &[0xff]);
        mem.write(offset + CTRL_DATA_OFF, data);
        let hdr = (iova + CTRL_HDR_OFF as u64, 2, false);
        let ack = (iova + CTRL_ACK_OFF as u64, 1, true);
        let body = (iova + CTRL_DATA_OFF as u64, data.len() as u32, false);
        let used_len =
            if data.is_empty() { self.ctrl_submit_raw(&[hdr, ack])? } else { self.ctrl_submit_raw(&[hdr, body, ack])? };
        if used_len < 1 {
            return Err(DriverError::CtrlNoAck);
        }
        let mut b = [0u8];
        mem.read(offset + CTRL_ACK_OFF, &mut b);
        Ok(b[0])
    }

    /// Put an arbitrary chain on the control queue, kick, and wait (up to
    /// `config().ctrl_timeout`) for it to be used. Returns the used length.
    pub fn ctrl_submit_raw(&mut self, segments: &[Segment]) -> Result<u32, DriverError> {
        let timeout = self.cfg.ctrl_timeout;
        let transport = self.transport.clone();
        let cvq = self.cvq.as_mut().ok_or(DriverError::NoCtrlVq)?;
        // Completions of commands that timed out earlier.
        while cvq.q.pop_used()?.is_some() {}
        if cvq.q.num_free() != cvq.q.size() {
            return Err(DriverError::CtrlBusy);
        }
        self.ctrl_seq += 1;
        let seq = self.ctrl_seq;
        cvq.q.add_chain(segments, seq)?;
        cvq.q.publish();
        // The control path is slow: always notify rather than trust suppression.
        transport.kick(cvq.vq)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((token, len)) = cvq.q.pop_used()? {
                if token == seq {
                    return Ok(len);
                }
                continue;
            }
            let st = transport.status()?;
            if st & status::DEVICE_NEEDS_RESET != 0 {
                return Err(DriverError::NeedsReset { status: st });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DriverError::Timeout { what: "control command completion", after: timeout });
            }
            if cvq.q.enable_interrupts() {
                continue;
            }
            transport.wait_interrupt(cvq.vq, (deadline - now).min(CTRL_POLL_SLICE))?;
        }
    }
}

impl Drop for NetDriver {
    fn drop(&mut self) {
        let _ = self.transport.set_status(0);
        for &(asid, iova, len) in &self.maps {
            if let Err(e) = self.transport.iotlb_unmap(asid, iova, len) {
                log::warn!("unmap asid {asid} [{iova:#x}, +{len:#x}): {e}");
            }
        }
    }
}

fn pow2_floor(n: u16) -> u16 {
    if n == 0 {
        0
    } else {
        1 << (15 - n.leading_zeros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::vhost_vdpa::VHOST_BACKEND_F_SUSPEND;
    use crate::uapi::virtio::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use memmap2::{MmapOptions, MmapRaw};
    use std::os::fd::BorrowedFd;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        SetStatus(u8),
        SetFeatures(u64),
        SetBackendFeatures(u64),
        SetVringNum(u32, u16),
        SetVringAddr(u32, u64, u64, u64),
        SetVringBase(u32, u32),
        SetVringEnable(u32, bool),
        SetGroupAsid(u32, u32),
        Map(u32, u64, usize, u8),
        Unmap(u32, u64, u64),
        Kick(u32),
    }

    #[derive(Default, Clone, Copy)]
    struct Vring {
        num: u16,
        desc: u64,
        avail: u64,
        used: u64,
        last_avail: u16,
        used_idx: u16,
    }

    struct Fake {
        calls: Vec<Call>,
        status: u8,
        offered: u64,
        features: u64,
        backend: u64,
        config: [u8; 12],
        nvqs: u32,
        max_num: u16,
        groups: Vec<u32>,
        ngroups: u32,
        nas: u32,
        group_asid: Vec<u32>,
        vrings: Vec<Vring>,
        maps: Vec<(u32, u64, usize, MmapRaw)>,
        refuse_features_ok: bool,
        /// Ack written for control commands; None: never complete them.
        cvq_ack: Option<u8>,
        ctrl_cmds: Vec<(u8, u8, Vec<u8>)>,
        /// Used length reported for RX completions, overriding the real one.
        rx_len_override: Option<u32>,
    }

    /// A minimal device behind the transport trait: it translates IOVAs per
    /// ASID through its own mappings of the driver's memfds, answers control
    /// commands and loops TX frames back to RX of the same pair.
    struct FakeTransport(Mutex<Fake>);

    impl FakeTransport {
        /// `pairs` pairs, MQ + CTRL_VQ, the control vq alone in group 1.
        fn new(pairs: u16, ngroups: u32, nas: u32) -> Arc<Self> {
            let nvqs = 2 * pairs as u32 + 1;
            let mut config = [0u8; 12];
            config[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
            config[8..10].copy_from_slice(&pairs.to_le_bytes());
            config[10..12].copy_from_slice(&1500u16.to_le_bytes());
            let groups = (0..nvqs).map(|vq| if vq == nvqs - 1 && ngroups > 1 { 1 } else { 0 }).collect();
            Arc::new(FakeTransport(Mutex::new(Fake {
                calls: vec![],
                status: 0,
                offered: NetDriverConfig::DEFAULT_FEATURES | bit(feature::RING_PACKED) | bit(feature::INDIRECT_DESC),
                features: 0,
                backend: 0x1e,
                config,
                nvqs,
                max_num: 1024,
                groups,
                ngroups,
                nas,
                group_asid: vec![0; ngroups as usize],
                vrings: vec![Vring::default(); nvqs as usize],
                maps: vec![],
                refuse_features_ok: false,
                cvq_ack: Some(0),
                ctrl_cmds: vec![],
                rx_len_override: None,
            })))
        }
        fn calls(&self) -> Vec<Call> {
            self.0.lock().unwrap().calls.clone()
        }
        fn with<R>(&self, f: impl FnOnce(&mut Fake) -> R) -> R {
            f(&mut self.0.lock().unwrap())
        }
    }

    impl Fake {
        fn record(&mut self, c: Call) -> super::super::transport::Result<()> {
            self.calls.push(c);
            Ok(())
        }
        fn ptr(&self, asid: u32, iova: u64, len: usize) -> Option<*mut u8> {
            self.maps.iter().find_map(|(a, base, mlen, map)| {
                let off = iova.checked_sub(*base)? as usize;
                (*a == asid && off.checked_add(len)? <= *mlen).then(|| {
                    // SAFETY: off + len lies inside this mapping (checked above).
                    unsafe { map.as_mut_ptr().add(off) }
                })
            })
        }
        fn read(&self, asid: u32, iova: u64, out: &mut [u8]) -> bool {
            let Some(p) = self.ptr(asid, iova, out.len()) else { return false };
            // SAFETY: ptr() checked the range; the test is single-threaded.
            unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
            true
        }
        fn write(&self, asid: u32, iova: u64, data: &[u8]) -> bool {
            let Some(p) = self.ptr(asid, iova, data.len()) else { return false };
            // SAFETY: as in read.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
            true
        }
        fn r16(&self, asid: u32, iova: u64) -> u16 {
            let mut b = [0u8; 2];
            assert!(self.read(asid, iova, &mut b), "ring not mapped");
            u16::from_le_bytes(b)
        }
        fn asid_of(&self, vq: u32) -> u32 {
            self.group_asid[self.groups[vq as usize] as usize]
        }
        /// Next avail chain of `vq` as (head, [(addr, len, writable)]).
        fn pop_avail(&mut self, vq: u32) -> Option<(u16, Vec<Segment>)> {
            let asid = self.asid_of(vq);
            let r = self.vrings[vq as usize];
            if self.r16(asid, r.avail + 2) == r.last_avail {
                return None;
            }
            let head = self.r16(asid, r.avail + 4 + 2 * (r.last_avail % r.num) as u64);
            self.vrings[vq as usize].last_avail = r.last_avail.wrapping_add(1);
            let mut chain = vec![];
            let mut i = head;
            for _ in 0..r.num {
                let mut d = [0u8; 16];
                assert!(self.read(asid, r.desc + 16 * i as u64, &mut d));
                let flags = u16::from_le_bytes([d[12], d[13]]);
                let addr = u64::from_le_bytes(d[..8].try_into().unwrap());
                let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
                chain.push((addr, len, flags & VRING_DESC_F_WRITE != 0));
                if flags & VRING_DESC_F_NEXT == 0 {
                    break;
                }
                i = u16::from_le_bytes([d[14], d[15]]);
            }
            if self.features & bit(feature::EVENT_IDX) != 0 {
                let la = self.vrings[vq as usize].last_avail;
                assert!(self.write(asid, r.used + 4 + 8 * r.num as u64, &la.to_le_bytes()));
            }
            Some((head, chain))
        }
        fn push_used(&mut self, vq: u32, id: u16, len: u32) {
            let asid = self.asid_of(vq);
            let r = self.vrings[vq as usize];
            let e = r.used + 4 + 8 * (r.used_idx % r.num) as u64;
            assert!(self.write(asid, e, &(id as u32).to_le_bytes()));
            assert!(self.write(asid, e + 4, &len.to_le_bytes()));
            let idx = r.used_idx.wrapping_add(1);
            self.vrings[vq as usize].used_idx = idx;
            assert!(self.write(asid, r.used + 2, &idx.to_le_bytes()));
        }
        fn process(&mut self, vq: u32) {
            let asid = self.asid_of(vq);
            if vq == self.nvqs - 1 {
                while let Some((head, chain)) = self.pop_avail(vq) {
                    let Some(ack) = self.cvq_ack else { continue };
                    let mut hdr = [0u8; 2];
                    let (last_addr, _, _) = *chain.last().unwrap();
                    let mut data = vec![];
                    for &(a, l, _) in &chain[1..chain.len() - 1] {
                        let mut b = vec![0u8; l as usize];
                        self.read(asid, a, &mut b);
                        data.extend(b);
                    }
                    // Buffers outside this group's ASID: complete with nothing written.
                    if !self.read(asid, chain[0].0, &mut hdr) || !self.write(asid, last_addr, &[ack]) {
                        self.push_used(vq, head, 0);
                        continue;
                    }
                    self.ctrl_cmds.push((hdr[0], hdr[1], data));
                    self.push_used(vq, head, 1);
                }
            } else if vq % 2 == 1 {
                while let Some((head, chain)) = self.pop_avail(vq) {
                    let (a, l, _) = chain[0];
                    let mut frame = vec![0u8; l as usize];
                    assert!(self.read(asid, a, &mut frame));
                    self.push_used(vq, head, 0);
                    if let Some((rhead, rchain)) = self.pop_avail(vq - 1) {
                        let (ra, rl, w) = rchain[0];
                        assert!(w && rl as usize >= frame.len());
                        assert!(self.write(asid, ra, &frame));
                        let len = self.rx_len_override.unwrap_or(frame.len() as u32);
                        self.push_used(vq - 1, rhead, len);
                    }
                }
            }
        }
    }

    type TResult<T> = super::super::transport::Result<T>;

    impl DriverTransport for FakeTransport {
        fn device_id(&self) -> TResult<u32> {
            Ok(VIRTIO_ID_NET)
        }
        fn device_features(&self) -> TResult<u64> {
            Ok(self.with(|f| f.offered))
        }
        fn set_features(&self, features: u64) -> TResult<()> {
            self.with(|f| {
                f.features = features;
                f.record(Call::SetFeatures(features))
            })
        }
        fn backend_features(&self) -> TResult<u64> {
            Ok(self.with(|f| f.backend))
        }
        fn set_backend_features(&self, features: u64) -> TResult<()> {
            self.with(|f| f.record(Call::SetBackendFeatures(features)))
        }
        fn status(&self) -> TResult<u8> {
            Ok(self.with(|f| f.status))
        }
        fn set_status(&self, status: u8) -> TResult<()> {
            self.with(|f| {
                let refused = f.refuse_features_ok && status & status::FEATURES_OK != 0;
                f.status = if refused { status & !status::FEATURES_OK } else { status };
                f.record(Call::SetStatus(status))
            })
        }
        fn read_config(&self, offset: u32, buf: &mut [u8]) -> TResult<()> {
            self.with(|f| {
                let o = offset as usize;
                buf.copy_from_slice(&f.config[o..o + buf.len()]);
                Ok(())
            })
        }
        fn vq_count(&self) -> TResult<u32> {
            Ok(self.with(|f| f.nvqs))
        }
        fn max_vring_num(&self) -> TResult<u16> {
            Ok(self.with(|f| f.max_num))
        }
        fn set_vring_num(&self, vq: u32, num: u16) -> TResult<()> {
            self.with(|f| {
                f.vrings[vq as usize].num = num;
                f.record(Call::SetVringNum(vq, num))
            })
        }
        fn set_vring_addr(&self, vq: u32, desc: u64, avail: u64, used: u64) -> TResult<()> {
            self.with(|f| {
                let r = &mut f.vrings[vq as usize];
                (r.desc, r.avail, r.used) = (desc, avail, used);
                f.record(Call::SetVringAddr(vq, desc, avail, used))
            })
        }
        fn set_vring_base(&self, vq: u32, base: u32) -> TResult<()> {
            self.with(|f| {
                // A split-only fake: the avail index.
                f.vrings[vq as usize].last_avail = base as u16;
                f.vrings[vq as usize].used_idx = base as u16;
                f.record(Call::SetVringBase(vq, base))
            })
        }
        fn vring_base(&self, vq: u32) -> TResult<u32> {
            Ok(self.with(|f| f.vrings[vq as usize].last_avail as u32))
        }
        fn set_vring_enable(&self, vq: u32, enable: bool) -> TResult<()> {
            self.with(|f| f.record(Call::SetVringEnable(vq, enable)))
        }
        fn group_num(&self) -> TResult<u32> {
            Ok(self.with(|f| f.ngroups))
        }
        fn as_num(&self) -> TResult<u32> {
            Ok(self.with(|f| f.nas))
        }
        fn vring_group(&self, vq: u32) -> TResult<u32> {
            Ok(self.with(|f| f.groups[vq as usize]))
        }
        fn set_group_asid(&self, group: u32, asid: u32) -> TResult<()> {
            self.with(|f| {
                if f.status & status::DRIVER_OK != 0 || asid >= f.nas || group >= f.ngroups {
                    return Err(TransportError::os("set_group_asid", nix::errno::Errno::EINVAL));
                }
                f.group_asid[group as usize] = asid;
                f.record(Call::SetGroupAsid(group, asid))
            })
        }
        fn iotlb_map(&self, asid: u32, iova: u64, mem: &DmaMemory, offset: usize, len: usize, perm: u8) -> TResult<()> {
            let fd = mem.fd().try_clone_to_owned().unwrap();
            let map = MmapOptions::new().offset(offset as u64).len(len).map_raw(&fd).unwrap();
            self.with(|f| {
                f.maps.push((asid, iova, len, map));
                f.record(Call::Map(asid, iova, len, perm))
            })
        }
        fn iotlb_unmap(&self, asid: u32, iova: u64, len: u64) -> TResult<()> {
            self.with(|f| {
                f.maps.retain(|m| !(m.0 == asid && m.1 == iova));
                f.record(Call::Unmap(asid, iova, len))
            })
        }
        fn suspend(&self) -> TResult<()> {
            Ok(())
        }
        fn resume(&self) -> TResult<()> {
            Ok(())
        }
        fn kick(&self, vq: u32) -> TResult<()> {
            self.with(|f| {
                f.calls.push(Call::Kick(vq));
                f.process(vq);
                Ok(())
            })
        }
        fn call_fd(&self, _vq: u32) -> TResult<BorrowedFd<'_>> {
            Err(TransportError::Other("no call fds in the fake".into()))
        }
        fn wait_interrupt(&self, _vq: u32, timeout: Duration) -> TResult<bool> {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            Ok(false)
        }
        fn wait_config_interrupt(&self, timeout: Duration) -> TResult<bool> {
            std::thread::sleep(timeout.min(Duration::from_millis(1)));
            Ok(false)
        }
    }

    fn small_cfg() -> NetDriverConfig {
        NetDriverConfig { ring_size: 16, ctrl_timeout: Duration::from_millis(200), ..Default::default() }
    }

    fn probe(fake: &Arc<FakeTransport>, cfg: NetDriverConfig) -> Result<NetDriver, DriverError> {
        NetDriver::probe(fake.clone(), cfg)
    }

    fn pos(calls: &[Call], c: &Call) -> usize {
        calls.iter().position(|x| x == c).unwrap_or_else(|| panic!("{c:?} not in {calls:?}"))
    }

    #[test]
    fn probe_follows_the_vhost_vdpa_init_sequence() {
        let fake = FakeTransport::new(2, 2, 2);
        let d = probe(&fake, small_cfg()).unwrap();
        let calls = fake.calls();
        let statuses: Vec<u8> =
            calls.iter().filter_map(|c| if let Call::SetStatus(s) = c { Some(*s) } else { None }).collect();
        assert_eq!(statuses, vec![0, 1, 3, 0xb, 0xf]);
        // Only wanted and offered bits; never RING_PACKED, never INDIRECT (not wanted).
        assert_eq!(d.features(), NetDriverConfig::DEFAULT_FEATURES);
        assert!(calls.contains(&Call::SetFeatures(NetDriverConfig::DEFAULT_FEATURES)));
        assert!(pos(&calls, &Call::SetFeatures(d.features())) < pos(&calls, &Call::SetStatus(0xb)));
        // SUSPEND (0x10) is offered but not asked for.
        assert!(calls.contains(&Call::SetBackendFeatures(0xe)));
        assert_eq!(d.backend_features() & bit(VHOST_BACKEND_F_SUSPEND as u32), 0);
        assert_eq!(d.mac(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!((d.max_pairs(), d.pairs(), d.mtu()), (2, 2, Some(1500)));
        // The control vq (4) is in group 1, moved to ASID 1 before DRIVER_OK.
        assert_eq!((d.cvq_index(), d.cvq_group(), d.cvq_asid()), (Some(4), Some(1), 1));
        let moved = pos(&calls, &Call::SetGroupAsid(1, 1));
        assert!(moved > pos(&calls, &Call::SetStatus(0xb)) && moved < pos(&calls, &Call::SetStatus(0xf)));
        // Data memory in ASID 0, control memory in ASID 1, both RW, before any vring setup.
        let maps: Vec<_> = calls.iter().filter(|c| matches!(c, Call::Map(..))).cloned().collect();
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0], Call::Map(0, 0x1000_0000, d.data_mem().len(), VHOST_ACCESS_RW));
        assert_eq!(maps[1], Call::Map(1, 0x8000_0000, d.cvq_mem().unwrap().len(), VHOST_ACCESS_RW));
        for vq in 0..5u32 {
            let num = if vq == 4 { CVQ_SIZE } else { 16 };
            let i = pos(&calls, &Call::SetVringNum(vq, num));
            let Call::SetVringAddr(v, desc, avail, used) = &calls[i + 1] else { panic!("{:?}", calls[i + 1]) };
            assert_eq!(*v, vq);
            assert_eq!(desc % 16, 0);
            assert_eq!(avail % 2, 0);
            assert_eq!(used % 4, 0);
            let l = crate::driver::ring::RingLayout::new(num);
            assert_eq!((avail - desc, used - desc), (l.avail as u64, l.used as u64));
            let base = if vq == 4 { 0x8000_0000 } else { 0x1000_0000 };
            let mlen = if vq == 4 { d.cvq_mem().unwrap().len() } else { d.data_mem().len() } as u64;
            assert!(*desc >= base && used + l.total as u64 - l.used as u64 <= base + mlen);
            assert_eq!(calls[i + 2], Call::SetVringBase(vq, 0));
            assert_eq!(calls[i + 3], Call::SetVringEnable(vq, true));
            assert!(i > pos(&calls, &maps[1]) && i < pos(&calls, &Call::SetStatus(0xf)));
        }
        // Two pairs in use: the device is told through the control queue.
        assert_eq!(fake.with(|f| f.ctrl_cmds.clone()), vec![(4, 0, vec![2, 0])]);
    }

    /// Where each SET_VRING_ENABLE(true) lies relative to DRIVER_OK.
    fn enables(calls: &[Call]) -> (Vec<u32>, Vec<u32>) {
        let ok = pos(calls, &Call::SetStatus(0xf));
        let on = |r: &[Call]| {
            r.iter().filter_map(|c| if let Call::SetVringEnable(vq, true) = c { Some(*vq) } else { None }).collect()
        };
        (on(&calls[..ok]), on(&calls[ok..]))
    }

    #[test]
    fn qemu_order_enables_everything_after_driver_ok_cvq_first_with_the_state_replayed() {
        let fake = FakeTransport::new(2, 2, 2);
        let d = probe(&fake, NetDriverConfig { enable_order: EnableOrder::Qemu, ..small_cfg() }).unwrap();
        let calls = fake.calls();
        let (before, after) = enables(&calls);
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(after, vec![4, 0, 1, 2, 3]);
        // MAC_ADDR_SET with the config MAC, then VQ_PAIRS_SET 2, both before any data queue.
        let mac = d.mac().to_vec();
        assert_eq!(fake.with(|f| f.ctrl_cmds.clone()), vec![(1, 1, mac), (4, 0, vec![2, 0])]);
        let kicks: Vec<usize> =
            calls.iter().enumerate().filter(|(_, c)| **c == Call::Kick(4)).map(|(i, _)| i).collect();
        assert_eq!(kicks.len(), 2);
        assert!(pos(&calls, &Call::SetVringEnable(4, true)) < kicks[0]);
        assert!(kicks[1] < pos(&calls, &Call::SetVringEnable(0, true)));
    }

    #[test]
    fn virtio_user_order_enables_pair_0_and_the_cvq_first_and_the_rest_after_vq_pairs_set() {
        let fake = FakeTransport::new(3, 2, 2);
        probe(&fake, NetDriverConfig { enable_order: EnableOrder::VirtioUser, ..small_cfg() }).unwrap();
        let calls = fake.calls();
        let (before, after) = enables(&calls);
        assert_eq!(before, vec![0, 1, 6]);
        assert_eq!(after, vec![2, 3, 4, 5]);
        assert_eq!(fake.with(|f| f.ctrl_cmds.clone()), vec![(4, 0, vec![3, 0])]);
        assert!(pos(&calls, &Call::Kick(6)) < pos(&calls, &Call::SetVringEnable(2, true)));
        // Without VQ_PAIRS_SET the other pairs stay disabled.
        let fake = FakeTransport::new(2, 2, 2);
        let d =
            probe(&fake, NetDriverConfig { enable_order: EnableOrder::VirtioUser, set_mq_pairs: false, ..small_cfg() })
                .unwrap();
        assert_eq!(enables(&fake.calls()), (vec![0, 1, 4], vec![]));
        d.set_pair_enabled(1, true).unwrap();
        d.set_pair_enabled(1, false).unwrap();
        let tail: Vec<Call> = fake.calls().into_iter().rev().take(4).collect();
        assert_eq!(
            tail,
            vec![
                Call::SetVringEnable(3, false),
                Call::SetVringEnable(2, false),
                Call::SetVringEnable(3, true),
                Call::SetVringEnable(2, true)
            ]
        );
        assert!(matches!(d.set_pair_enabled(2, true), Err(DriverError::InvalidConfig(_))));
    }

    #[test]
    fn single_address_space_keeps_the_control_queue_in_asid_0() {
        let fake = FakeTransport::new(1, 1, 1);
        let d = probe(&fake, small_cfg()).unwrap();
        assert_eq!(d.cvq_asid(), 0);
        let calls = fake.calls();
        assert!(!calls.iter().any(|c| matches!(c, Call::SetGroupAsid(..))));
        assert!(calls.contains(&Call::Map(0, 0x8000_0000, d.cvq_mem().unwrap().len(), VHOST_ACCESS_RW)));
        // One pair: no MQ command.
        assert!(fake.with(|f| f.ctrl_cmds.is_empty()));
    }

    #[test]
    fn refused_features_fail_the_probe_cleanly() {
        let fake = FakeTransport::new(1, 2, 2);
        fake.with(|f| f.refuse_features_ok = true);
        let e = probe(&fake, small_cfg()).err().unwrap();
        assert!(matches!(e, DriverError::FeaturesNotAccepted { status: 3, .. }), "{e}");
        assert_eq!(fake.calls().last(), Some(&Call::SetStatus(3 | status::FAILED)));

        let fake = FakeTransport::new(1, 2, 2);
        fake.with(|f| f.offered &= !bit(feature::ACCESS_PLATFORM));
        let e = probe(&fake, small_cfg()).err().unwrap();
        assert!(matches!(e, DriverError::FeatureRefused { name: "ACCESS_PLATFORM", .. }), "{e}");
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::SetFeatures(_))));
    }

    #[test]
    fn control_group_shared_with_data_cannot_move() {
        let fake = FakeTransport::new(1, 2, 2);
        fake.with(|f| f.groups = vec![0, 1, 1]);
        let e = probe(&fake, NetDriverConfig { cvq_asid: Some(1), ..small_cfg() }).err().unwrap();
        assert!(matches!(e, DriverError::CvqGroupShared { group: 1, vq: 1 }), "{e}");
        // Nothing left mapped, no ASID moved.
        assert!(fake.with(|f| f.maps.is_empty()));
        assert!(!fake.calls().iter().any(|c| matches!(c, Call::SetGroupAsid(..))));
    }

    #[test]
    fn drop_resets_and_unmaps() {
        let fake = FakeTransport::new(1, 2, 2);
        let d = probe(&fake, small_cfg()).unwrap();
        let cvq_len = d.cvq_mem().unwrap().len() as u64;
        let data_len = d.data_mem().len() as u64;
        drop(d);
        let calls = fake.calls();
        let n = calls.len();
        assert_eq!(
            calls[n - 3..],
            [Call::SetStatus(0), Call::Unmap(0, 0x1000_0000, data_len), Call::Unmap(1, 0x8000_0000, cvq_len)]
        );
    }

    #[test]
    fn frames_loop_back_through_a_pair() {
        let fake = FakeTransport::new(2, 2, 2);
        let mut d = probe(&fake, small_cfg()).unwrap();
        let mut pairs = d.take_pairs();
        assert_eq!(pairs.len(), 2);
        assert!(d.take_pairs().is_empty());
        let p = &mut pairs[1];
        assert_eq!((p.rx_vq(), p.tx_vq()), (2, 3));
        assert_eq!(p.post_rx(), 16);
        let sent = p.tx_burst(
            &mut |n, buf| {
                buf[..4].copy_from_slice(&(n as u32 + 100).to_be_bytes());
                60 + n
            },
            5,
        );
        assert_eq!(sent, 5);
        let mut got = vec![];
        assert_eq!(p.rx_burst(&mut |f| got.push((f.len(), f[..4].to_vec())), 32), 5);
        let want: Vec<_> = (0..5).map(|n| (60 + n, (n as u32 + 100).to_be_bytes().to_vec())).collect();
        assert_eq!(got, want);
        assert_eq!(p.tx_free(), 11);
        assert_eq!(p.reclaim_tx(), 5);
        assert_eq!(p.tx_free(), 16);
        let s = *p.stats();
        assert_eq!((s.tx_packets, s.rx_packets, s.rx_bytes, s.rx_errors), (5, 5, 60 + 61 + 62 + 63 + 64, 0));
        // EVENT_IDX: the fake asks for a kick on every new entry, so one per burst.
        assert_eq!(s.tx_kicks, 1);
        // A device reporting less than a header is an error, not a frame.
        fake.with(|f| f.rx_len_override = Some(5));
        p.tx_burst(&mut |_, _| 60, 1);
        assert_eq!(p.rx_burst(&mut |_| panic!("short frame delivered"), 32), 0);
        assert_eq!(p.stats().rx_errors, 1);
        // The buffer went back to the device anyway.
        assert_eq!(p.raw_rx().num_free(), 0);
        // A slot's IOVA and offset agree with the data mapping.
        assert_eq!(p.tx_slot_iova(3) - 0x1000_0000, p.tx_slot_offset(3) as u64);
    }

    #[test]
    fn ctrl_round_trip_and_timeout() {
        let fake = FakeTransport::new(1, 2, 2);
        let mut d = probe(&fake, small_cfg()).unwrap();
        let (class, cmd) = (vn::VIRTIO_NET_CTRL_RX as u8, vn::VIRTIO_NET_CTRL_RX_PROMISC as u8);
        assert_eq!(d.ctrl(class, cmd, &[1]).unwrap(), 0);
        fake.with(|f| f.cvq_ack = Some(1));
        assert_eq!(d.ctrl(class, cmd, &[0]).unwrap(), 1);
        assert_eq!(fake.with(|f| f.ctrl_cmds.clone()), vec![(0, 0, vec![1]), (0, 0, vec![0])]);
        // Buffers in the data memory (ASID 0 only) are invisible to the
        // control queue's ASID: the fake completes without an ack.
        let (off, iova, _) = d.scratch();
        let mem = d.data_mem().clone();
        assert!(matches!(d.ctrl_with_buffer_iova(class, cmd, &[1], &mem, off, iova), Err(DriverError::CtrlNoAck)));
        // A device that never answers: bounded wait, then the queue stays busy.
        fake.with(|f| f.cvq_ack = None);
        let t0 = Instant::now();
        assert!(matches!(d.ctrl(class, cmd, &[]), Err(DriverError::Timeout { .. })));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(d.ctrl(class, cmd, &[]), Err(DriverError::CtrlBusy)));
        assert!(matches!(d.ctrl(class, cmd, &[0; CTRL_DATA_MAX + 1]), Err(DriverError::CtrlTooLong { .. })));
    }

    #[test]
    fn ctrl_sees_needs_reset() {
        let fake = FakeTransport::new(1, 2, 2);
        let mut d = probe(&fake, small_cfg()).unwrap();
        fake.with(|f| {
            f.cvq_ack = None;
            f.status |= status::DEVICE_NEEDS_RESET;
        });
        assert!(matches!(d.ctrl(0, 0, &[1]), Err(DriverError::NeedsReset { .. })));
    }

    #[test]
    fn pairs_and_driver_can_move_to_threads() {
        fn send<T: Send>() {}
        send::<QueuePair>();
        send::<NetDriver>();
    }

    #[test]
    fn pow2_floor_rounds_down() {
        assert_eq!([0, 1, 3, 256, 1000, 65535].map(pow2_floor), [0, 1, 2, 256, 512, 32768]);
    }
}
