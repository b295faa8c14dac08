//! Port -> driver RX: a port frame, behind the virtio-net header, copied
//! into one RX chain's writable buffers.

use super::burst::Burst;
use super::{PollThread, RX_HDR};
use crate::backend::PortFrame;
use crate::mem::ReadGuard;
use crate::net::hdr::HDR_LEN;
use crate::virtq::{Chain, Direction, Ring};

impl PollThread {
    /// One RX burst. Frames the filter refuses are dropped here; frames
    /// with no RX buffer wait in the port.
    pub(super) fn process_rx<R: Ring>(&mut self, g: &ReadGuard<'_>) -> usize {
        let PollThread { device, space, port, stats, burst, rx, filter, .. } = self;
        let filter = filter.current();
        let mut b = Burst::<R>::begin(rx, space, g);
        let mut avail = b.pending();
        let mut done = 0;
        let mut filtered = 0;
        let mut offload = 0;
        let mut chain = Chain::empty();
        while done < *burst {
            let Some(PortFrame { bytes: frame, meta }) = port.rx_peek() else { break };
            if meta.is_offloaded() {
                // The driver negotiated no receive offloads (none are
                // offered): a frame that still needs them cannot go up.
                port.rx_consume();
                offload += 1;
                continue;
            }
            if !filter.accepts(frame) {
                port.rx_consume();
                filtered += 1;
                continue;
            }
            if avail == 0 {
                b.tally.rx_no_buffer += 1;
                break;
            }
            if !b.pop_into(&mut chain, Direction::DeviceWrites, space, g) {
                break;
            }
            avail -= 1;
            let total = HDR_LEN + frame.len();
            let mut w = chain.writer();
            if w.remaining() < total {
                // Buffers too small for the frame: hand them back empty.
                b.complete(chain.head(), 0);
                b.tally.rx_dropped_small += 1;
                if !chain.writable_complete() {
                    b.tally.chain_overflow += 1;
                }
            } else {
                w.write(&RX_HDR);
                w.write(frame);
                b.complete(chain.head(), total as u32);
                b.tally.rx_frames += 1;
                b.tally.rx_bytes += frame.len() as u64;
            }
            port.rx_consume();
            done += 1;
        }
        b.tally.rx_filtered += filtered as u64;
        b.tally.rx_offload_dropped += offload as u64;
        port.rx_flush();
        b.finish(&**device, stats);
        done + filtered + offload
    }
}
