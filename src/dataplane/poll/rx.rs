//! Port -> driver RX: a port frame, behind the virtio-net header, copied
//! into one RX chain's writable buffers, or with MRG_RXBUF into as many
//! chains as it needs (`num_buffers` in the first header).
//!
//! Offloads (issue 11): a frame whose metadata asks for nothing goes as it
//! is (DATA_VALID passed on to a driver with GUEST_CSUM). One with a
//! partial checksum or GSO is validated against what the port may hand us
//! and delivered only in a form the driver accepts now (the negotiated
//! GUEST_* bits as CTRL_GUEST_OFFLOADS_SET left them): with its header,
//! checksum completed, or segmented here. A frame being segmented stays in
//! the port until its last segment is delivered, so running out of RX
//! buffers half way loses nothing.

use super::burst::Burst;
use super::handoff::{Handoff, Inbox, Steer};
use super::offload::{rx_plain_hdr, Offloads, MAX_MERGE};
use super::PollThread;
use crate::backend::{Port, PortFrame};
use crate::mem::{AddressSpace, ReadGuard};
use crate::net::hdr::{NetHdr, HDR_LEN};
use crate::net::offload::{csum, validate, Delivery, Segmenter};
use crate::net::rss::RxHash;
use crate::virtq::{Chain, Direction, Ring};

/// What became of one frame offered to the RX ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placed {
    Delivered {
        buffers: usize,
    },
    /// No RX buffer (or not enough with MRG_RXBUF): the frame stays in the
    /// port. Chains taken for it (`returned`) went back to the ring, not to
    /// the driver: the next pass takes them again.
    NoBuffer {
        returned: usize,
    },
    /// Larger than the buffers the driver offers: dropped.
    TooSmall,
    /// The driver broke the queue.
    Broken,
}

/// The chains one RX pass refills for every frame (no piece list is
/// copied per frame): the first of a frame, which gets `num_buffers` last,
/// and the one being filled after it with MRG_RXBUF.
pub(super) struct RxChains<'g> {
    first: Chain<'g>,
    more: Chain<'g>,
    /// The hash the header reports (HASH_REPORT; zero: none).
    pub(super) hash: RxHash,
    /// The chains of the merged frame being placed (the thread's, lent for
    /// the burst: see [`MergeList`]).
    merge: MergeList,
}

impl RxChains<'_> {
    pub(super) fn new(merge: MergeList) -> Self {
        RxChains { first: Chain::empty(), more: Chain::empty(), hash: RxHash::default(), merge }
    }

    /// End of the burst: the list goes back to the thread.
    pub(super) fn into_merge(self) -> MergeList {
        self.merge
    }
}

/// Heads and lengths of the chains one merged frame takes (MRG_RXBUF),
/// kept until the whole frame is written. Reserved once per thread for
/// [`MAX_MERGE`] chains: a merged frame costs a push per chain, not a
/// 256-entry array filled per frame.
#[derive(Debug, Default)]
pub struct MergeList {
    heads: Vec<crate::virtq::Head>,
    lens: Vec<u32>,
}

impl MergeList {
    pub fn new() -> Self {
        MergeList { heads: Vec::with_capacity(MAX_MERGE), lens: Vec::with_capacity(MAX_MERGE) }
    }
}

/// Write `hdr` and `frame` into the next RX chain(s). Without MRG_RXBUF
/// the frame must fit in one chain; with it, chains are taken until it
/// fits (up to [`MAX_MERGE`]) and `num_buffers` goes into the first. Too
/// few chains now: they are given back to the ring (rewound, as vhost-net
/// and DPDK do), never returned empty to the driver, which would count
/// them as length errors.
#[allow(clippy::too_many_arguments)]
pub(super) fn place<'g, R: Ring>(
    b: &mut Burst<'_, 'g, R>,
    avail: &mut usize,
    space: &AddressSpace,
    g: &'g ReadGuard<'_>,
    ch: &mut RxChains<'g>,
    o: &Offloads,
    hdr: &NetHdr,
    frame: &[u8],
) -> Placed {
    let total = o.rx_hdr_len + frame.len();
    if *avail == 0 {
        *avail = b.pending();
        if *avail == 0 {
            return Placed::NoBuffer { returned: 0 };
        }
    }
    ch.first.want_writable(total as u32);
    if !b.pop_into(&mut ch.first, Direction::DeviceWrites, space, g) {
        return Placed::Broken;
    }
    *avail -= 1;
    let mut w = ch.first.writer();
    if w.remaining() >= total || !o.mrg {
        if w.remaining() < total {
            b.complete(ch.first.head(), 0);
            if !ch.first.writable_complete() {
                b.tally.chain_overflow += 1;
            }
            return Placed::TooSmall;
        }
        write_hdr(&mut w, hdr, 1, o.rx_hdr_len, &ch.hash);
        w.write(frame);
        b.complete(ch.first.head(), total as u32);
        return Placed::Delivered { buffers: 1 };
    }
    if w.remaining() < o.rx_hdr_len {
        b.complete(ch.first.head(), 0);
        return Placed::TooSmall;
    }
    // MRG_RXBUF: header and the frame's start into the first chain, the
    // rest across more; nothing is published until it is all written.
    let m = &mut ch.merge;
    m.heads.clear();
    m.lens.clear();
    write_hdr(&mut w, hdr, 0, o.rx_hdr_len, &ch.hash);
    let mut at = w.write(frame);
    m.heads.push(ch.first.head());
    m.lens.push((o.rx_hdr_len + at) as u32);
    while at < frame.len() && m.heads.len() < MAX_MERGE {
        if *avail == 0 {
            *avail = b.pending();
            if *avail == 0 {
                break;
            }
        }
        ch.more.want_writable((frame.len() - at) as u32);
        if !b.pop_into(&mut ch.more, Direction::DeviceWrites, space, g) {
            // The queue failed; what was taken is never published.
            return Placed::Broken;
        }
        *avail -= 1;
        let k = ch.more.writer().write(&frame[at..]);
        m.heads.push(ch.more.head());
        m.lens.push(k as u32);
        at += k;
    }
    let n = m.heads.len();
    if at < frame.len() {
        // The bytes written stay unpublished; the chains go back to the
        // ring. The frame waits for buffers, unless it can never fit: more
        // than MAX_MERGE buffers, or every slot of the ring too few.
        b.rewind(&m.heads);
        *avail += n;
        return if n == MAX_MERGE || n >= b.queue_size() as usize {
            Placed::TooSmall
        } else {
            Placed::NoBuffer { returned: n }
        };
    }
    ch.first.write_at(10, &(n as u16).to_le_bytes());
    for (&head, &len) in m.heads.iter().zip(&m.lens) {
        b.complete(head, len);
    }
    Placed::Delivered { buffers: n }
}

/// The header with `num_buffers`, `len` bytes long: with HASH_REPORT
/// (20 bytes, `virtio_net_hdr_v1_hash`) `hash_value` and `hash_report`
/// follow (zero when no hash was computed).
#[inline]
fn write_hdr(w: &mut crate::virtq::ChainWriter<'_>, hdr: &NetHdr, num_buffers: u16, len: usize, hash: &RxHash) {
    let mut h = [0u8; crate::net::hdr::HASH_HDR_LEN];
    h[..HDR_LEN].copy_from_slice(&NetHdr { num_buffers, ..*hdr }.to_bytes());
    h[HDR_LEN..HDR_LEN + 4].copy_from_slice(&hash.value.to_le_bytes());
    h[HDR_LEN + 4..HDR_LEN + 6].copy_from_slice(&(hash.report as u16).to_le_bytes());
    w.write(&h[..len.min(h.len())]);
}

/// Where an RX burst takes its frames: first what other pairs handed over
/// (when any waited at the start), then the port.
struct RxInput<'a> {
    port: &'a mut dyn Port,
    inbox: &'a mut Inbox,
    from_inbox: bool,
    /// The burst began on the inbox (only then are slots given back: no
    /// stores to the rings' lines while nothing is handed over).
    used_inbox: bool,
    /// A port frame was consumed since the loop last looked: the one that
    /// waited for room at another pair (if any) is gone.
    port_taken: bool,
}

impl RxInput<'_> {
    /// The next frame, and whether it came from the inbox.
    #[inline]
    fn peek(&mut self) -> Option<(PortFrame<'_>, bool)> {
        if self.from_inbox && self.inbox.peek().is_none() {
            self.from_inbox = false;
        }
        if self.from_inbox {
            self.inbox.peek().map(|f| (f, true))
        } else {
            self.port.rx_peek().map(|f| (f, false))
        }
    }

    #[inline]
    fn consume(&mut self) {
        if self.from_inbox {
            self.inbox.consume()
        } else {
            self.port_taken = true;
            self.port.rx_consume()
        }
    }

    #[inline]
    fn flush(&mut self) {
        self.port.rx_flush();
        if self.used_inbox {
            self.inbox.release();
        }
    }
}

/// With RSS or hash reports configured: hash `frame` (the hash goes into
/// `hash` for the header when reports are on) and answer the pair RSS gives
/// it when that is not this one. A frame another pair handed over was
/// steered here already.
#[inline]
fn steer_to(
    filter: &crate::net::filter::RxFilter,
    frame: &[u8],
    handed: bool,
    pair: u16,
    hash: &mut RxHash,
) -> Option<u16> {
    let st = filter.steering()?;
    let h = st.hash(frame);
    if filter.hash_report() {
        *hash = h;
    }
    let to = st.queue(&h).filter(|_| filter.rss() && !handed)?;
    (to != pair).then_some(to)
}

impl PollThread {
    /// Take CTRL_GUEST_OFFLOADS_SET from the control-queue snapshot: one
    /// atomic load per poll pass while nothing changed. A snapshot made
    /// under other features (the reset one, before the slow path publishes
    /// after DRIVER_OK) says nothing about this driver.
    #[inline]
    pub(super) fn sync_guest_offloads(&mut self) {
        let PollThread { port, filter, offloads, .. } = self;
        let f = filter.current();
        if f.negotiated() == offloads.negotiated
            && offloads.negotiated != 0
            && f.guest_offloads() != offloads.guest_bits
        {
            offloads.set_guest(f.guest_offloads(), &mut **port);
        }
    }

    /// One RX burst. Frames the filter refuses are dropped here; frames
    /// with no RX buffer wait in the port.
    pub(super) fn process_rx<R: Ring>(&mut self, g: &ReadGuard<'_>) -> usize {
        let PollThread { device, space, port, stats, burst, rx, filter, offloads, handoff, pair, .. } = self;
        let filter = filter.current();
        let mut b = Burst::<R>::begin(rx, space, g);
        // Read by `place` when a frame needs a chain: a pass whose frames are
        // all filtered or steered away leaves the avail index (a line the
        // driver writes) alone.
        let mut avail = 0;
        let mut done = 0;
        let mut filtered = 0;
        let mut offload = 0;
        let (mut steered, mut steer_dropped, mut unsteered) = (0u64, 0u64, 0u64);
        let mut chains = RxChains::new(std::mem::take(&mut offloads.rx_merge));
        let Handoff { out, inbox } = handoff;
        // A port frame left half segmented goes first, so the
        // segmentation state stays its own.
        let from_inbox = offloads.rx_seg_next == 0 && inbox.pending();
        let mut input = RxInput { port: &mut **port, inbox, from_inbox, used_inbox: from_inbox, port_taken: false };
        while done < *burst {
            if std::mem::take(&mut input.port_taken) {
                // The port frame that waited for room (if any) was
                // consumed: the next one's wait starts afresh.
                out.unblock();
            }
            let Some((PortFrame { bytes: frame, meta }, handed)) = input.peek() else { break };
            if !filter.accepts(frame) {
                input.consume();
                offloads.rx_seg_next = 0;
                filtered += 1;
                continue;
            }
            // RSS / hash reports (one branch while neither is configured):
            // a frame RSS gives another pair goes to its inbox. Only port
            // frames are steered (`handed`), and a port frame is steered
            // before any of it is placed or segmented here, so a blocked
            // one leaves no half-done state (`rx_seg_*`, MRG chains).
            if let Some(to) = steer_to(filter, frame, handed, *pair, &mut chains.hash) {
                match out.steer(to, frame, meta, crate::dataplane::cycles::now) {
                    // No route (a frame over 64 KiB): delivered here.
                    Steer::NoRoute => unsteered += 1,
                    // Back-pressure: the target (or the pair holding our
                    // arena) is full. The frame stays in the port, and the
                    // frames behind it too (per-flow order), until room is
                    // made or the bound drops it; the pass ends as for a
                    // driver with no RX buffers.
                    Steer::Wait => break,
                    sent => {
                        steered += (sent == Steer::Sent) as u64;
                        steer_dropped += (sent == Steer::Dropped) as u64;
                        input.consume();
                        offloads.rx_seg_next = 0;
                        offloads.rx_seg_len = 0;
                        done += 1;
                        continue;
                    }
                }
            }
            let placed = if !meta.is_offloaded() {
                let h = rx_plain_hdr(meta, offloads.guest.csum, offloads.port_rx.trust_data_valid);
                place(&mut b, &mut avail, space, g, &mut chains, offloads, &h, frame)
            } else {
                let nh = meta.to_hdr(1);
                match validate(frame, &nh, &offloads.port_rx) {
                    Err(_) => {
                        input.consume();
                        offload += 1;
                        continue;
                    }
                    Ok(off) => match off.deliver(&offloads.guest) {
                        Delivery::AsIs(h) => place(&mut b, &mut avail, space, g, &mut chains, offloads, &h, frame),
                        Delivery::CompleteCsum { start, offset, hdr } => {
                            // Completed in a copy: the port's slot is the
                            // port's, and the field may land in any RX buffer.
                            let mut buf = std::mem::take(&mut offloads.rx_buf);
                            let p = match buf.get_mut(..frame.len()) {
                                Some(c) => {
                                    c.copy_from_slice(frame);
                                    match csum::complete(c, start, offset) {
                                        Ok(()) => place(&mut b, &mut avail, space, g, &mut chains, offloads, &hdr, c),
                                        Err(_) => Placed::TooSmall,
                                    }
                                }
                                None => Placed::TooSmall,
                            };
                            offloads.rx_buf = buf;
                            if let Placed::Delivered { .. } = p {
                                b.tally.rx_sw_csum += 1;
                            }
                            p
                        }
                        Delivery::Segment { mode, hdr } => {
                            let Some(gso) = off.gso else {
                                input.consume();
                                offload += 1;
                                continue;
                            };
                            let Ok(seg) = Segmenter::new(frame, &gso, mode) else {
                                input.consume();
                                offload += 1;
                                continue;
                            };
                            let mut p = Placed::Delivered { buffers: 0 };
                            if offloads.rx_seg_len != frame.len() {
                                // Not the frame a previous burst left half done.
                                offloads.rx_seg_next = 0;
                                offloads.rx_seg_len = frame.len();
                            }
                            if offloads.rx_seg_next == 0 {
                                b.tally.rx_sw_gso += 1;
                            }
                            while offloads.rx_seg_next < seg.count() {
                                let i = offloads.rx_seg_next;
                                let Ok(n) = seg.write(i, &mut offloads.rx_buf) else {
                                    p = Placed::TooSmall;
                                    break;
                                };
                                let buf = std::mem::take(&mut offloads.rx_buf);
                                p = place(&mut b, &mut avail, space, g, &mut chains, offloads, &hdr, &buf[..n]);
                                offloads.rx_buf = buf;
                                match p {
                                    Placed::Delivered { buffers } => {
                                        b.tally.rx_sw_segments += 1;
                                        b.tally.rx_frames += 1;
                                        b.tally.rx_bytes += n as u64;
                                        b.tally.rx_merged += (buffers > 1) as u64;
                                        offloads.rx_seg_next += 1;
                                    }
                                    Placed::TooSmall => {
                                        b.tally.rx_dropped_small += 1;
                                        offloads.rx_seg_next += 1;
                                    }
                                    _ => break,
                                }
                            }
                            match p {
                                Placed::NoBuffer { .. } | Placed::Broken => {}
                                _ => {
                                    offloads.rx_seg_next = 0;
                                    offloads.rx_seg_len = 0;
                                    input.consume();
                                }
                            }
                            offloads.rx_short = matches!(p, Placed::NoBuffer { returned } if returned > 0);
                            if let Placed::NoBuffer { .. } = p {
                                b.tally.rx_no_buffer += 1;
                                break;
                            }
                            if p == Placed::Broken {
                                break;
                            }
                            done += 1;
                            continue;
                        }
                    },
                }
            };
            offloads.rx_short = matches!(placed, Placed::NoBuffer { returned } if returned > 0);
            match placed {
                Placed::Delivered { buffers } => {
                    b.tally.rx_frames += 1;
                    b.tally.rx_bytes += frame.len() as u64;
                    b.tally.rx_merged += (buffers > 1) as u64;
                }
                Placed::TooSmall => b.tally.rx_dropped_small += 1,
                Placed::NoBuffer { .. } => {
                    b.tally.rx_no_buffer += 1;
                    break;
                }
                Placed::Broken => break,
            }
            input.consume();
            done += 1;
        }
        b.tally.rx_filtered += filtered as u64;
        b.tally.rx_offload_dropped += offload as u64;
        b.tally.rx_steered += steered;
        b.tally.rx_steer_dropped += steer_dropped;
        b.tally.rx_unsteered += unsteered;
        if input.port_taken {
            out.unblock();
        }
        input.flush();
        out.flush();
        b.finish(&**device, stats);
        offloads.rx_merge = chains.into_merge();
        done + filtered + offload
    }
}

impl PollThread {
    /// A pair the driver does not use (its port still gets frames, e.g. a
    /// patch whose far side uses more pairs): hand each port frame to a
    /// pair that is used, chosen by RSS when configured, else by pair
    /// number. No guest memory is touched. Returns the frames handled.
    pub(super) fn forward_port(&mut self) -> usize {
        let PollThread { port, stats, burst, filter, handoff, pair, .. } = self;
        let filter = filter.current();
        let used = filter.rx_pairs().max(1);
        port.rx_fill();
        let mut t = crate::dataplane::stats::PairStats::default();
        let mut done = 0;
        while done < *burst {
            let Some(PortFrame { bytes: frame, meta }) = port.rx_peek() else { break };
            done += 1;
            if !filter.accepts(frame) {
                port.rx_consume();
                // If it waited for room, it waits no more.
                handoff.unblock();
                t.rx_filtered += 1;
                continue;
            }
            let chosen = match (filter.rss(), filter.steering()) {
                (true, Some(st)) => st.queue(&st.hash(frame)).unwrap_or(0),
                _ => *pair % used,
            };
            // Every queue RSS names is used (`rx_pairs`); keep it so.
            let to = chosen % used;
            match handoff.steer(to, frame, meta) {
                Steer::Sent => t.rx_steered += 1,
                // Back-pressure, as in `process_rx`: wait in the port.
                Steer::Wait => {
                    done -= 1;
                    break;
                }
                // Waited too long, or no route (over 64 KiB): nowhere to go.
                Steer::Dropped | Steer::NoRoute => t.rx_steer_dropped += 1,
            }
            port.rx_consume();
        }
        port.rx_flush();
        handoff.flush();
        stats.add(&t);
        done
    }
}
