//! Offloads on the dataplane (issue 11): what the driver negotiated, what
//! the port takes and gives, and the per-thread buffers software
//! checksum/segmentation works in.
//!
//! The decisions themselves are [`crate::net::offload`]'s (validate, then
//! [`Offload::deliver`](crate::net::offload::Offload::deliver) per
//! receiver); this file holds the state one poll thread needs for them and
//! the TX side's pending segmentation. Everything here is set up cold (at
//! DRIVER_OK, on CTRL_GUEST_OFFLOADS_SET); per frame nothing allocates.

use crate::backend::{FrameMeta, Port};
use crate::net::features as f;
use crate::net::hdr::{self, NetHdr, HDR_LEN};
use crate::net::offload::{Gso, OffloadCaps, SegCsum, Segmenter, Sender};

/// Largest frame inside the device: a 64 KiB GSO frame (the IP length
/// field's limit) behind an Ethernet header and two VLAN tags.
pub const MAX_FRAME: usize = 65535 + 14 + 8;

/// Most RX buffers one frame may take with MRG_RXBUF. A frame that needs
/// more is dropped (counted `rx_dropped_small`): a driver posting buffers
/// this small for a 64 KiB frame cannot take it anyway.
pub const MAX_MERGE: usize = 256;

/// A TX GSO frame, copied into the scratch buffer, whose segments are
/// going to the port; they go first in the next burst when the port filled
/// up half way (the frame's chain was already returned).
#[derive(Clone, Copy, Debug)]
pub(super) struct TxSegmenting {
    pub len: usize,
    pub gso: Gso,
    pub mode: SegCsum,
    pub next: usize,
}

/// One poll thread's offload state.
pub(super) struct Offloads {
    /// Features of the running driver (0 when stopped).
    pub negotiated: u64,
    /// What the driver may send (validation of its TX headers).
    pub host: Sender,
    /// Guest offloads in force (negotiated GUEST_* bits, as
    /// CTRL_GUEST_OFFLOADS_SET left them) and what they allow on RX.
    pub guest_bits: u64,
    pub guest: OffloadCaps,
    /// MRG_RXBUF: a frame may span several RX chains.
    pub mrg: bool,
    /// The virtio-net header length on RX and TX (12, or 20 with
    /// HASH_REPORT: Linux and QEMU use `virtio_net_hdr_v1_hash` both ways).
    pub rx_hdr_len: usize,
    /// What the port takes on TX (all of it for a port that hands frames
    /// and headers to a kernel; nothing for the others).
    pub port_tx: OffloadCaps,
    /// Who the port's RX frames come from.
    pub port_rx: Sender,
    /// The TX frame with offload work being handled (MAX_FRAME bytes from
    /// the first start on).
    pub scratch: Box<[u8]>,
    pub tx_seg: Option<TxSegmenting>,
    /// The next segment of the port frame at the RX head that is being
    /// segmented for the driver (0 when none), and that frame's length (a
    /// different frame at the head starts again at 0).
    pub rx_seg_next: usize,
    pub rx_seg_len: usize,
    /// One RX segment being built.
    pub rx_buf: Box<[u8]>,
    /// The frame at the RX head found too few MRG buffers and gave them
    /// back: the chains available now are not work, only a kick (more
    /// buffers) is, so adaptive idle may sleep.
    pub rx_short: bool,
    /// The chains of a merged RX frame (lent to each RX burst).
    pub rx_merge: super::rx::MergeList,
}

impl Offloads {
    /// A stopped thread: nothing negotiated.
    pub fn new() -> Self {
        Offloads {
            negotiated: 0,
            host: Sender::driver(0),
            guest_bits: 0,
            guest: OffloadCaps::NONE,
            mrg: false,
            rx_hdr_len: HDR_LEN,
            port_tx: OffloadCaps::NONE,
            port_rx: Sender::port(OffloadCaps::NONE),
            scratch: Box::new([]),
            tx_seg: None,
            rx_seg_next: 0,
            rx_seg_len: 0,
            rx_short: false,
            rx_buf: Box::new([]),
            rx_merge: super::rx::MergeList::new(),
        }
    }

    /// DRIVER_OK with `negotiated` (cold). The guest offloads start as all
    /// negotiated ones (§5.1.6.5.6.1).
    pub fn start(&mut self, negotiated: u64, port: &mut dyn Port) {
        self.negotiated = negotiated;
        self.host = Sender::driver(negotiated);
        self.mrg = negotiated & f::MRG_RXBUF != 0;
        self.rx_hdr_len = hdr::hdr_len(negotiated);
        self.port_tx = if port.offloads() { OffloadCaps::ALL } else { OffloadCaps::NONE };
        self.tx_seg = None;
        self.rx_seg_next = 0;
        if self.rx_buf.len() < MAX_FRAME {
            // Once per thread, at its first start, whatever was negotiated:
            // a port may hand partial checksums to a driver without
            // offloads, and a driver without them may still send offload
            // headers, which must be validated (and refused) like any.
            self.rx_buf = vec![0u8; MAX_FRAME].into_boxed_slice();
            self.scratch = vec![0u8; MAX_FRAME].into_boxed_slice();
        }
        self.set_guest(negotiated & f::GUEST_OFFLOAD_MASK, port);
    }

    /// Reset: forget the driver (frames in flight are dropped with it).
    pub fn stop(&mut self) {
        let (scratch, rx_buf) = (std::mem::take(&mut self.scratch), std::mem::take(&mut self.rx_buf));
        *self = Offloads { scratch, rx_buf, ..Offloads::new() };
    }

    /// The guest offloads in force changed (cold).
    pub fn set_guest(&mut self, bits: u64, port: &mut dyn Port) {
        self.guest_bits = bits;
        self.guest = OffloadCaps::guest(bits);
        let gso = self.negotiated & (f::HOST_TSO4 | f::HOST_TSO6 | f::HOST_USO) != 0
            || self.guest.tso4
            || self.guest.tso6
            || self.guest.uso4
            || self.guest.uso6;
        let caps = port.set_offloads(self.guest, gso);
        self.port_rx = Sender::port(caps);
        // A segment index belongs to a delivery decision made under the
        // old caps; restart that frame's segmentation.
        self.rx_seg_next = 0;
    }

    /// Any TX offload negotiated: the reflector's direct path (plain frames
    /// only, one RX buffer each) is off.
    pub fn blocks_reflect(&self) -> bool {
        self.negotiated & (f::CSUM | f::MRG_RXBUF) != 0 || self.rx_hdr_len != HDR_LEN
    }
}

/// The first `len` bytes of a TX header are those of a frame with no
/// offload work: the common case, decided from the local copy. DATA_VALID
/// from a driver means nothing (§5.1.6.2.1) and is not looked at.
#[inline]
pub(super) fn tx_plain(h: &[u8; HDR_LEN]) -> bool {
    h[0] & hdr::F_NEEDS_CSUM == 0 && h[1] == hdr::GSO_NONE
}

/// Write segments `tx.next..` of the frame in `scratch` into port slots
/// until the port fills up. Returns the segments written and whether the
/// frame is done.
pub(super) fn drain_tx_segments(
    scratch: &[u8],
    tx: &mut TxSegmenting,
    port: &mut dyn Port,
    dropped: &mut u64,
) -> (usize, bool) {
    let Ok(seg) = Segmenter::new(&scratch[..tx.len], &tx.gso, tx.mode) else {
        // Validated before; cannot happen, but never panic on it.
        *dropped += 1;
        return (0, true);
    };
    let meta = FrameMeta::from_hdr(&seg.hdr());
    let mut n = 0;
    while tx.next < seg.count() {
        let Some(slot) = port.tx_slot() else { return (n, false) };
        match seg.write(tx.next, slot) {
            Ok(len) => {
                port.tx_commit(len, meta);
                n += 1;
            }
            // A segment larger than a slot: only with an MSS above the
            // port's frame size. Dropped, as an oversized frame is.
            Err(_) => *dropped += 1,
        }
        tx.next += 1;
    }
    (n, true)
}

/// The header a plain port frame reaches the driver with: DATA_VALID kept
/// for a driver with checksum offload when the port is trusted (a kernel
/// verified it), no flags otherwise.
#[inline]
pub(super) fn rx_plain_hdr(meta: FrameMeta, guest_csum: bool, trusted: bool) -> NetHdr {
    if meta.data_valid() && guest_csum && trusted {
        NetHdr { flags: hdr::F_DATA_VALID, ..NetHdr::rx(1) }
    } else {
        NetHdr::rx(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tx_headers() {
        let mut h = [0u8; HDR_LEN];
        assert!(tx_plain(&h));
        h[0] = hdr::F_DATA_VALID;
        assert!(tx_plain(&h), "DATA_VALID from a driver is no offload work");
        h[0] = hdr::F_NEEDS_CSUM;
        assert!(!tx_plain(&h));
        h[0] = 0;
        h[1] = hdr::GSO_ECN;
        assert!(!tx_plain(&h), "any gso_type, ECN alone included, is checked");
    }

    #[test]
    fn data_valid_only_when_negotiated_and_trusted() {
        let valid = FrameMeta { flags: hdr::F_DATA_VALID, ..FrameMeta::PLAIN };
        assert_eq!(rx_plain_hdr(valid, true, true).flags, hdr::F_DATA_VALID);
        assert_eq!(rx_plain_hdr(valid, false, true).flags, 0);
        assert_eq!(rx_plain_hdr(valid, true, false).flags, 0);
        assert_eq!(rx_plain_hdr(FrameMeta::PLAIN, true, true), NetHdr::rx(1));
    }
}
