//! The reflector's fast path: each TX chain is copied straight into an RX
//! chain (one copy instead of two through a port slot). Every guest value
//! is read once: the avail slots by `Burst::pop_into`, the Ethernet header into
//! a local (the MAC swap and the RX filter decide on that local, and the
//! local is what is delivered), the rest chain to chain.

use super::burst::Burst;
use super::{PollThread, RX_HDR};
use crate::backend::meta::VNET_HDR_LEN;
use crate::backend::{mac_swap, FrameMeta, SLOT_SIZE};
use crate::mem::ReadGuard;
use crate::net::hdr::HDR_LEN;
use crate::virtq::{Chain, Direction, Ring};

/// Bytes of a frame the filter may look at: Ethernet header + a VLAN TCI.
const FILTER_PREFIX: usize = 18;

impl PollThread {
    /// Runs only while the port holds no frames (so order is kept) and both
    /// queues run. Stops when RX buffers run out: the TX chains then wait
    /// on their ring (the driver's ring is the buffer).
    pub(super) fn process_reflect<R: Ring>(&mut self, g: &ReadGuard<'_>, swap: bool) -> usize {
        let PollThread { device, space, stats, burst, tx, rx, filter, .. } = self;
        let filter = filter.current();
        let mut tb = Burst::<R>::begin(tx, space, g);
        let mut rb = Burst::<R>::begin(rx, space, g);
        let n = tb.pending().min(*burst);
        // The avail entries the driver writes next, TX's and RX's (it
        // reposts RX buffers as it sends): asked for on every poll, so a
        // frame that arrives finds them on their way with the TX index
        // instead of one miss after it, then another for RX.
        tb.prefetch_avail();
        rb.prefetch_avail();
        // Nothing to send: the RX avail index (a line the driver writes) is
        // not read.
        let mut avail = if n > 0 { rb.pending() } else { 0 };
        if n > 0 && avail > 0 {
            tb.prewalk(n, Direction::DeviceReads, space, g);
            rb.prewalk(n.min(avail), Direction::DeviceWrites, space, g);
        }
        let mut done = 0;
        let (mut tchain, mut rchain) = (Chain::empty(), Chain::empty());
        while done < n && avail > 0 {
            if !tb.pop_into(&mut tchain, Direction::DeviceReads, space, g) {
                break;
            }
            // The next TX frame's lines travel while this one is copied.
            tb.prefetch_next(space, g);
            done += 1;
            let total = tchain.readable_len() as usize;
            if total <= HDR_LEN || total - HDR_LEN > SLOT_SIZE || !tchain.readable_complete() {
                // What the port path would drop too.
                tb.tally.tx_dropped += 1;
                tb.tally.chain_overflow += !tchain.readable_complete() as u64;
                tb.complete(tchain.head(), 0);
                continue;
            }
            let len = total - HDR_LEN;
            tb.tally.tx_frames += 1;
            tb.tally.tx_bytes += len as u64;
            let mut src = tchain.reader();
            // Header and filter prefix in one fixed-size copy when the first
            // buffer holds both (the common case: one inlined copy instead of
            // two calls; the kept pieces hold exactly the chain's readable
            // bytes, so it then holds a whole prefix); piece by piece
            // otherwise.
            let mut hdr = [0u8; HDR_LEN];
            let mut eth = [0u8; FILTER_PREFIX];
            let k = match src.read_array::<{ HDR_LEN + FILTER_PREFIX }>() {
                Some(b) => {
                    hdr.copy_from_slice(&b[..HDR_LEN]);
                    eth.copy_from_slice(&b[HDR_LEN..]);
                    FILTER_PREFIX
                }
                None => {
                    src.read(&mut hdr);
                    src.read(&mut eth[..len.min(FILTER_PREFIX)])
                }
            };
            let mut v = [0u8; VNET_HDR_LEN];
            v.copy_from_slice(&hdr[..VNET_HDR_LEN]);
            if FrameMeta::parse(&v).is_offloaded() {
                // A reflector's RX side takes plain frames only.
                tb.tally.tx_offload_dropped += 1;
                tb.complete(tchain.head(), 0);
                continue;
            }
            if swap {
                mac_swap(&mut eth[..k]);
            }
            if !filter.accepts(&eth[..k]) {
                rb.tally.rx_filtered += 1;
                tb.complete(tchain.head(), 0);
                continue;
            }
            rchain.want_writable((HDR_LEN + len) as u32);
            if !rb.pop_into(&mut rchain, Direction::DeviceWrites, space, g) {
                tb.complete(tchain.head(), 0);
                break;
            }
            rb.prefetch_next(space, g);
            avail -= 1;
            let mut dst = rchain.writer();
            let out = HDR_LEN + len;
            if dst.remaining() < out {
                rb.complete(rchain.head(), 0);
                rb.tally.rx_dropped_small += 1;
            } else {
                // Header and prefix in one fixed-size copy when both are
                // whole and the first RX buffer holds them.
                let mut head = [0u8; HDR_LEN + FILTER_PREFIX];
                head[..HDR_LEN].copy_from_slice(&RX_HDR);
                head[HDR_LEN..].copy_from_slice(&eth);
                if k < FILTER_PREFIX || !dst.write_array(&head) {
                    dst.write(&RX_HDR);
                    dst.write(&eth[..k]);
                }
                src.copy_to(&mut dst, len - k);
                rb.complete(rchain.head(), out as u32);
                rb.tally.rx_frames += 1;
                rb.tally.rx_bytes += len as u64;
                rb.tally.reflected += 1;
            }
            tb.complete(tchain.head(), 0);
        }
        // RX first: the driver waits on those used entries.
        Burst::finish_pair(rb, tb, &**device, stats);
        done
    }
}
