//! Driver TX -> port. This is where a TX frame is copied out of guest
//! memory: [`gather_frame`] copies a chain's readable bytes, after the
//! virtio-net header, into a port slot, once.

use super::burst::Burst;
use super::PollThread;
use crate::backend::meta::VNET_HDR_LEN;
use crate::backend::FrameMeta;
use crate::mem::ReadGuard;
use crate::net::hdr::HDR_LEN;
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

/// Copy the frame of a TX chain (its readable bytes after the 12-byte
/// header) into `slot`; returns the frame length and the header's offload
/// fields (read once, into a local).
#[inline]
pub(super) fn gather_frame(chain: &Chain<'_>, slot: &mut [u8]) -> Result<(usize, FrameMeta), TxDrop> {
    let total = chain.readable_len() as usize;
    if total <= HDR_LEN {
        return Err(TxDrop::Empty);
    }
    let len = total - HDR_LEN;
    if len > slot.len() {
        return Err(TxDrop::TooBig);
    }
    if !chain.readable_complete() {
        return Err(TxDrop::TooManyPieces);
    }
    let mut r = chain.reader();
    let mut hdr = [0u8; HDR_LEN];
    r.read(&mut hdr);
    let mut v = [0u8; VNET_HDR_LEN];
    v.copy_from_slice(&hdr[..VNET_HDR_LEN]);
    let got = r.read(&mut slot[..len]);
    debug_assert_eq!(got, len, "a complete readable part holds readable_len bytes");
    Ok((got, FrameMeta::parse(&v)))
}

impl PollThread {
    /// One TX burst: chains -> port slots. A full port leaves the rest on
    /// the ring (back-pressure).
    pub(super) fn process_tx<R: Ring>(&mut self, g: &ReadGuard<'_>) -> usize {
        let PollThread { device, space, port, stats, burst, tx, .. } = self;
        let mut b = Burst::<R>::begin(tx, space, g);
        let n = b.pending().min(*burst);
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
            match gather_frame(&chain, slot) {
                Ok((_, meta)) if meta.is_offloaded() && !port.offloads() => {
                    // The port cannot finish checksum/segmentation work.
                    b.tally.tx_offload_dropped += 1;
                }
                Ok((len, meta)) => {
                    port.tx_commit(len, meta);
                    b.tally.tx_frames += 1;
                    b.tally.tx_bytes += len as u64;
                }
                Err(why) => {
                    b.tally.tx_dropped += 1;
                    if why == TxDrop::TooManyPieces {
                        b.tally.chain_overflow += 1;
                    }
                }
            }
            // Device-readable only: nothing written, used length 0.
            b.complete(chain.head(), 0);
            done += 1;
        }
        port.tx_flush();
        b.finish(&**device, stats);
        done
    }
}
