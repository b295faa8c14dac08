//! Driver TX -> port. This is where a TX frame is copied out of guest
//! memory: [`gather_frame`] copies a chain's readable bytes, after the
//! virtio-net header, into a port slot, once.
//!
//! Offloads (issue 11): the header is read once into a local. A frame
//! without offload work takes the path above. One with a partial checksum
//! or GSO is copied into the thread's scratch buffer, validated against
//! what the driver negotiated (a malformed header is a counted drop,
//! `tx_offload_dropped`), and reaches the port as the port takes it: with
//! its header for a port that hands it to a kernel (tap, AF_PACKET), else
//! checksummed or segmented into MTU-sized frames here.

use super::super::stats::PairStats;
use super::burst::Burst;
use super::offload::{drain_tx_segments, tx_plain, Offloads, TxSegmenting};
use super::PollThread;
use crate::backend::{FrameMeta, Port};
use crate::mem::ReadGuard;
use crate::net::hdr::{NetHdr, HDR_LEN};
use crate::net::offload::{csum, validate, Delivery, SegCsum};
use crate::virtq::{Chain, Direction, Ring};

/// Why a TX chain carried no frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxDrop {
    /// Nothing after the header (or not even a whole header).
    Empty,
    /// Larger than a port slot.
    TooBig,
    /// More pieces than a chain keeps (see `virtq::chain`).
    TooManyPieces,
}

/// Copy the frame of a TX chain (its readable bytes after the `hl`-byte
/// header, 12 or with HASH_REPORT 20, which the caller read) into `slot`;
/// returns the frame length.
#[inline]
pub(super) fn gather_frame(chain: &Chain<'_>, slot: &mut [u8], hl: usize) -> Result<usize, TxDrop> {
    let total = chain.readable_len() as usize;
    if total <= hl {
        return Err(TxDrop::Empty);
    }
    let len = total - hl;
    if len > slot.len() {
        return Err(TxDrop::TooBig);
    }
    if !chain.readable_complete() {
        return Err(TxDrop::TooManyPieces);
    }
    let mut r = chain.reader();
    r.skip(hl);
    let got = r.read(&mut slot[..len]);
    debug_assert_eq!(got, len, "a complete readable part holds readable_len bytes");
    Ok(got)
}

/// What became of a TX frame with offload work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TxOffloaded {
    /// Handed to the port (as is, or with its checksum completed).
    Sent {
        len: usize,
    },
    /// Segmentation started: segments follow through `drain_tx_segments`.
    Segmenting,
    /// The header does not describe the frame, or asks for offloads the
    /// driver did not negotiate: counted `tx_offload_dropped`.
    Malformed,
    Dropped(TxDrop),
}

/// A TX chain whose header asks for a partial checksum or segmentation:
/// the frame is copied into `o.scratch` (it may be a 64 KiB GSO frame),
/// validated against what the driver negotiated, and given to the port in
/// a form it takes ([`Offload::deliver`](crate::net::offload::Offload::deliver)
/// with the port's caps). The caller made sure the port has a free slot.
pub(super) fn tx_offloaded(chain: &Chain<'_>, h: &[u8; HDR_LEN], o: &mut Offloads, port: &mut dyn Port) -> TxOffloaded {
    // The negotiated header length: Linux and QEMU send the 20-byte
    // header on TX too once HASH_REPORT is negotiated.
    let hl = o.rx_hdr_len;
    let total = chain.readable_len() as usize;
    if total <= hl {
        return TxOffloaded::Dropped(TxDrop::Empty);
    }
    let len = total - hl;
    if len > o.scratch.len() {
        return TxOffloaded::Dropped(TxDrop::TooBig);
    }
    if !chain.readable_complete() {
        return TxOffloaded::Dropped(TxDrop::TooManyPieces);
    }
    let got = chain.read_at(hl, &mut o.scratch[..len]);
    debug_assert_eq!(got, len);
    let Ok(nh) = NetHdr::parse(h) else { return TxOffloaded::Malformed };
    let Ok(off) = validate(&o.scratch[..len], &nh, &o.host) else { return TxOffloaded::Malformed };
    let mut d = off.deliver(&o.port_tx);
    let room = port.tx_slot().map_or(0, |s| s.len());
    if let (Delivery::AsIs(_), Some(_), true) = (d, off.gso, len > room) {
        // A port that takes GSO but whose slots are smaller than this
        // frame: segment here, leaving the checksums to it.
        let mode = if o.port_tx.csum { SegCsum::Partial } else { SegCsum::Full };
        d = Delivery::Segment { mode, hdr: NetHdr::rx(1) };
    }
    match d {
        Delivery::AsIs(_) | Delivery::CompleteCsum { .. } if len > room => TxOffloaded::Dropped(TxDrop::TooBig),
        Delivery::AsIs(hdr) => {
            let Some(slot) = port.tx_slot() else { return TxOffloaded::Dropped(TxDrop::TooBig) };
            slot[..len].copy_from_slice(&o.scratch[..len]);
            port.tx_commit(len, FrameMeta::from_hdr(&hdr));
            TxOffloaded::Sent { len }
        }
        Delivery::CompleteCsum { start, offset, .. } => {
            let Some(slot) = port.tx_slot() else { return TxOffloaded::Dropped(TxDrop::TooBig) };
            slot[..len].copy_from_slice(&o.scratch[..len]);
            if csum::complete(&mut slot[..len], start, offset).is_err() {
                return TxOffloaded::Malformed;
            }
            port.tx_commit(len, FrameMeta::PLAIN);
            TxOffloaded::Sent { len }
        }
        Delivery::Segment { mode, .. } => match off.gso {
            Some(gso) => {
                o.tx_seg = Some(TxSegmenting { len, gso, mode, next: 0 });
                TxOffloaded::Segmenting
            }
            None => TxOffloaded::Malformed,
        },
    }
}

impl PollThread {
    /// Segments of a TX GSO frame still waiting for port slots go first:
    /// returns the segments written and false while some remain (the port
    /// is full).
    fn drain_tx(&mut self, tally: &mut PairStats) -> (usize, bool) {
        let o = &mut self.offloads;
        let Some(t) = o.tx_seg.as_mut() else { return (0, true) };
        let (n, done) = drain_tx_segments(&o.scratch, t, &mut *self.port, &mut tally.tx_dropped);
        tally.tx_sw_segments += n as u64;
        tally.tx_frames += n as u64;
        if done {
            o.tx_seg = None;
        } else {
            tally.tx_backpressure += 1;
        }
        (n, done)
    }

    /// One TX burst: chains -> port slots. A full port leaves the rest on
    /// the ring (back-pressure).
    pub(super) fn process_tx<R: Ring>(&mut self, g: &ReadGuard<'_>) -> usize {
        let mut tally = PairStats::default();
        let (drained, done) = self.drain_tx(&mut tally);
        if !done {
            self.port.tx_flush();
            self.stats.add(&tally);
            return drained;
        }
        let PollThread { device, space, port, stats, burst, tx, offloads, .. } = self;
        let mut b = Burst::<R>::begin(tx, space, g);
        b.tally = tally;
        let n = b.pending().min(*burst);
        b.prewalk(n, Direction::DeviceReads, space, g);
        let mut done = 0;
        let mut chain = Chain::empty();
        while done < n {
            let Some(slot) = port.tx_slot() else {
                b.tally.tx_backpressure += 1;
                break;
            };
            if !b.pop_into(&mut chain, Direction::DeviceReads, space, g) {
                break;
            }
            b.prefetch_next(space, g);
            let mut h = [0u8; HDR_LEN];
            chain.read_at(0, &mut h);
            let out = if tx_plain(&h) {
                // The fast path: no offload work, straight into the slot.
                match gather_frame(&chain, slot, offloads.rx_hdr_len) {
                    Ok(len) => {
                        port.tx_commit(len, FrameMeta::PLAIN);
                        TxOffloaded::Sent { len }
                    }
                    Err(why) => TxOffloaded::Dropped(why),
                }
            } else {
                tx_offloaded(&chain, &h, offloads, &mut **port)
            };
            match out {
                TxOffloaded::Sent { len } => {
                    if !tx_plain(&h) && !offloads.port_tx.csum {
                        b.tally.tx_sw_csum += 1;
                    }
                    b.tally.tx_frames += 1;
                    b.tally.tx_bytes += len as u64;
                }
                TxOffloaded::Segmenting => {
                    let t = offloads.tx_seg.as_mut().expect("set by tx_offloaded");
                    b.tally.tx_bytes += t.len as u64;
                    b.tally.tx_sw_gso += 1;
                    let (k, fin) = drain_tx_segments(&offloads.scratch, t, &mut **port, &mut b.tally.tx_dropped);
                    b.tally.tx_sw_segments += k as u64;
                    b.tally.tx_frames += k as u64;
                    if fin {
                        offloads.tx_seg = None;
                    }
                }
                TxOffloaded::Malformed => b.tally.tx_offload_dropped += 1,
                TxOffloaded::Dropped(why) => {
                    b.tally.tx_dropped += 1;
                    if why == TxDrop::TooManyPieces {
                        b.tally.chain_overflow += 1;
                    }
                }
            }
            // Device-readable only: nothing written, used length 0.
            b.complete(chain.head(), 0);
            done += 1;
            if offloads.tx_seg.is_some() {
                // The port filled up half way through a GSO frame: its
                // remaining segments go first next time.
                b.tally.tx_backpressure += 1;
                break;
            }
        }
        port.tx_flush();
        b.finish(&**device, stats);
        done + drained
    }
}
