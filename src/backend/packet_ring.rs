//! The mmapped rings of an AF_PACKET socket (Documentation/networking/
//! packet_mmap.rst): a TPACKET_V3 receive ring of blocks that the kernel
//! fills with variable-size frames and hands over a block at a time, and a
//! transmit ring of fixed-size frames handed over one at a time.
//!
//! Ownership of ring memory moves by status words: a block (RX) or frame
//! (TX) belongs to user space only while its status says so. Status loads
//! are Acquire (the kernel writes the contents, then the status after a
//! write barrier); status stores are Release (our writes to a TX frame are
//! visible before the kernel sees SEND_REQUEST; we are done reading an RX
//! block before the kernel may reuse it). Offsets read from the ring are
//! checked against the block before use.

use std::sync::atomic::{AtomicU32, Ordering};

/// `struct tpacket_block_desc`: `hdr.bh1.block_status`, `num_pkts`,
/// `offset_to_first_pkt` (checked against libc's layout in the tests).
const BLK_STATUS: usize = 8;
const BLK_NUM_PKTS: usize = 12;
const BLK_FIRST: usize = 16;
/// `struct tpacket3_hdr` fields.
const H_NEXT: usize = 0;
const H_SNAPLEN: usize = 12;
const H_LEN: usize = 16;
const H_STATUS: usize = 20;
const H_MAC: usize = 24;
const H_VLAN_TCI: usize = 32;
const H_VLAN_TPID: usize = 36;
/// `TPACKET_ALIGN(sizeof(struct tpacket3_hdr))`: where the `sockaddr_ll`
/// follows, and (minus nothing) where a TX frame's data starts.
pub const HDR3_ALIGNED: usize = 48;
/// `sockaddr_ll.sll_pkttype` after the header.
const SLL_PKTTYPE: usize = HDR3_ALIGNED + 10;

#[inline]
fn status_word(p: *mut u8) -> *const AtomicU32 {
    p as *const AtomicU32
}

/// A frame the kernel delivered, as offsets into its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// Start of the frame's `tpacket3_hdr`.
    pub hdr: *mut u8,
    /// Bytes from `hdr` to the end of the block.
    pub room: usize,
}

impl RxFrame {
    #[inline]
    fn u32_at(&self, off: usize) -> u32 {
        // SAFETY: the caller's ring checked room >= HDR3_ALIGNED + 20 (the
        // header and sockaddr_ll) before handing out the frame; the block is
        // user-owned, so the kernel does not write it meanwhile.
        unsafe { std::ptr::read_unaligned(self.hdr.add(off) as *const u32) }
    }
    #[inline]
    fn u16_at(&self, off: usize) -> u16 {
        // SAFETY: as in u32_at.
        unsafe { std::ptr::read_unaligned(self.hdr.add(off) as *const u16) }
    }
    pub fn next_offset(&self) -> u32 {
        self.u32_at(H_NEXT)
    }
    pub fn snaplen(&self) -> u32 {
        self.u32_at(H_SNAPLEN)
    }
    pub fn len(&self) -> u32 {
        self.u32_at(H_LEN)
    }
    pub fn status(&self) -> u32 {
        self.u32_at(H_STATUS)
    }
    pub fn mac(&self) -> u16 {
        self.u16_at(H_MAC)
    }
    pub fn vlan_tci(&self) -> u16 {
        self.u32_at(H_VLAN_TCI) as u16
    }
    pub fn vlan_tpid(&self) -> u16 {
        self.u16_at(H_VLAN_TPID)
    }
    pub fn pkttype(&self) -> u8 {
        // SAFETY: as in u32_at (the sockaddr_ll is inside the checked room).
        unsafe { *self.hdr.add(SLL_PKTTYPE) }
    }
}

/// The receive ring: `block_nr` blocks of `block_size` bytes.
pub struct RxRing {
    base: *mut u8,
    block_size: usize,
    block_nr: usize,
    /// The block we read next (or are reading).
    blk: usize,
    /// Frames left in the current block (0: no block taken).
    left: u32,
    /// Offset of the current frame in the block.
    off: usize,
}

// SAFETY: the ring is owned by one port, used by one thread at a time; the
// memory it points to lives as long as the port's mapping.
unsafe impl Send for RxRing {}

impl RxRing {
    /// # Safety
    /// `base` must point to `block_size * block_nr` bytes of a TPACKET_V3
    /// receive ring that stay mapped for the life of the `RxRing`, and no
    /// one else in this process may touch them.
    pub unsafe fn new(base: *mut u8, block_size: usize, block_nr: usize) -> RxRing {
        RxRing { base, block_size, block_nr, blk: 0, left: 0, off: 0 }
    }

    fn block(&self, i: usize) -> *mut u8 {
        // SAFETY: i < block_nr, so the block lies inside the ring.
        unsafe { self.base.add(i * self.block_size) }
    }

    /// The frame to read now: the current one, or the first of the next
    /// block if the kernel has handed it over. Frames whose offsets do not
    /// fit the block end the block early (counted by the caller as the
    /// block's remaining frames, which it cannot see).
    pub fn current(&mut self) -> Option<RxFrame> {
        if self.left == 0 {
            let b = self.block(self.blk);
            // SAFETY: the status word is the u32 at BLK_STATUS of the block
            // descriptor, 4-byte aligned in a page-aligned block.
            let st = unsafe { (*status_word(b.add(BLK_STATUS))).load(Ordering::Acquire) };
            if st & libc::TP_STATUS_USER == 0 {
                return None;
            }
            // SAFETY: the block is ours (status USER, loaded Acquire).
            let (n, first) = unsafe {
                (
                    std::ptr::read(b.add(BLK_NUM_PKTS) as *const u32),
                    std::ptr::read(b.add(BLK_FIRST) as *const u32) as usize,
                )
            };
            if n == 0 {
                self.release();
                return self.current_after_release();
            }
            self.left = n;
            self.off = first;
        }
        if self.off + HDR3_ALIGNED + 20 > self.block_size {
            self.release();
            return self.current_after_release();
        }
        // SAFETY: off + header fits the block (checked above).
        let hdr = unsafe { self.block(self.blk).add(self.off) };
        Some(RxFrame { hdr, room: self.block_size - self.off })
    }

    fn current_after_release(&mut self) -> Option<RxFrame> {
        // One more block at most per call: callers loop.
        let b = self.block(self.blk);
        // SAFETY: as in `current`.
        let st = unsafe { (*status_word(b.add(BLK_STATUS))).load(Ordering::Acquire) };
        if st & libc::TP_STATUS_USER == 0 {
            None
        } else {
            self.current()
        }
    }

    /// Done with the current frame.
    pub fn advance(&mut self, f: RxFrame) {
        self.left = self.left.saturating_sub(1);
        let next = f.next_offset() as usize;
        if self.left == 0 || next == 0 {
            self.release();
        } else {
            self.off += next;
        }
    }

    /// Give the current block back to the kernel.
    fn release(&mut self) {
        let b = self.block(self.blk);
        // SAFETY: as in `current`; Release: our reads of the block are done
        // before the kernel can see it as its own again.
        unsafe { (*status_word(b.add(BLK_STATUS))).store(libc::TP_STATUS_KERNEL, Ordering::Release) };
        self.left = 0;
        self.off = 0;
        self.blk = (self.blk + 1) % self.block_nr;
    }

    /// Frames left in the block being read.
    pub fn left(&self) -> u32 {
        self.left
    }
}

/// The transmit ring: `frame_nr` frames of `frame_size` bytes.
pub struct TxRing {
    base: *mut u8,
    frame_size: usize,
    frame_nr: usize,
    head: usize,
}

// SAFETY: as for RxRing.
unsafe impl Send for TxRing {}

/// Where a TX frame's data (virtio-net header first) starts in its slot:
/// `TPACKET3_HDRLEN - sizeof(struct sockaddr_ll)`.
pub const TX_DATA: usize = HDR3_ALIGNED;

impl TxRing {
    /// # Safety
    /// As for [`RxRing::new`], for a transmit ring of `frame_nr` frames of
    /// `frame_size` bytes (each > TX_DATA).
    pub unsafe fn new(base: *mut u8, frame_size: usize, frame_nr: usize) -> TxRing {
        TxRing { base, frame_size, frame_nr, head: 0 }
    }

    fn frame(&self, i: usize) -> *mut u8 {
        // SAFETY: i < frame_nr: inside the ring.
        unsafe { self.base.add(i * self.frame_size) }
    }

    fn status(&self, i: usize) -> u32 {
        // SAFETY: tp_status is the aligned u32 at H_STATUS of the frame.
        unsafe { (*status_word(self.frame(i).add(H_STATUS))).load(Ordering::Acquire) }
    }

    /// The data area of the next free frame (`frame_size - TX_DATA` bytes),
    /// `None` while the kernel still owns it (ring full).
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let st = self.status(self.head);
        if st != libc::TP_STATUS_AVAILABLE && st & libc::TP_STATUS_WRONG_FORMAT == 0 {
            return None;
        }
        // SAFETY: the frame is ours (AVAILABLE, loaded Acquire) and the
        // data area lies inside it; &mut self keeps the borrow unique.
        Some(unsafe { std::slice::from_raw_parts_mut(self.frame(self.head).add(TX_DATA), self.frame_size - TX_DATA) })
    }

    /// The slot from `slot` holds `len` bytes: hand it to the kernel.
    pub fn commit(&mut self, len: usize) {
        let f = self.frame(self.head);
        // SAFETY: the frame is still ours; tp_len is the u32 at H_LEN.
        unsafe {
            std::ptr::write_unaligned(f.add(H_LEN) as *mut u32, len.min(self.frame_size - TX_DATA) as u32);
            // Release: data and tp_len before the kernel sees the request.
            (*status_word(f.add(H_STATUS))).store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        }
        self.head = (self.head + 1) % self.frame_nr;
    }

    /// Frames the kernel has not finished with (requests and in flight).
    #[cfg(test)]
    pub fn busy(&self) -> usize {
        (0..self.frame_nr).filter(|&i| self.status(i) != libc::TP_STATUS_AVAILABLE).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn offsets_match_the_kernel_structs() {
        assert_eq!(
            offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status),
            BLK_STATUS
        );
        assert_eq!(
            offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, num_pkts),
            BLK_NUM_PKTS
        );
        assert_eq!(
            offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
            BLK_FIRST
        );
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_next_offset), H_NEXT);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_snaplen), H_SNAPLEN);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_len), H_LEN);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_status), H_STATUS);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_mac), H_MAC);
        assert_eq!(
            offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci),
            H_VLAN_TCI
        );
        assert_eq!(
            offset_of!(libc::tpacket3_hdr, hv1) + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid),
            H_VLAN_TPID
        );
        assert_eq!(libc::TPACKET3_HDRLEN - std::mem::size_of::<libc::sockaddr_ll>(), HDR3_ALIGNED);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_pkttype), SLL_PKTTYPE - HDR3_ALIGNED);
    }

    /// A fake ring in heap memory: block 0 holds two frames, block 1 one.
    struct Fake {
        mem: Vec<u64>,
    }

    const BS: usize = 4096;

    impl Fake {
        fn base(&mut self) -> *mut u8 {
            self.mem.as_mut_ptr() as *mut u8
        }
        fn bytes(&mut self) -> &mut [u8] {
            let n = self.mem.len() * 8;
            // SAFETY: the Vec<u64> owns n bytes.
            unsafe { std::slice::from_raw_parts_mut(self.base(), n) }
        }
        fn put32(&mut self, at: usize, v: u32) {
            self.bytes()[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        }
        fn put16(&mut self, at: usize, v: u16) {
            self.bytes()[at..at + 2].copy_from_slice(&v.to_ne_bytes());
        }
        fn frame(&mut self, at: usize, next: u32, len: u32, byte: u8) {
            self.put32(at + H_NEXT, next);
            self.put32(at + H_SNAPLEN, len);
            self.put32(at + H_LEN, len);
            self.put16(at + H_MAC, 80);
            for b in &mut self.bytes()[at + 80..at + 80 + len as usize] {
                *b = byte;
            }
        }
        fn block(&mut self, i: usize, n: u32, status: u32) {
            let b = i * BS;
            self.put32(b + BLK_NUM_PKTS, n);
            self.put32(b + BLK_FIRST, 48);
            self.put32(b + BLK_STATUS, status);
        }
    }

    #[test]
    fn rx_ring_walks_frames_and_returns_blocks() {
        let mut f = Fake { mem: vec![0u64; 3 * BS / 8] };
        f.frame(48, 256, 60, 1);
        f.frame(48 + 256, 0, 61, 2);
        f.frame(BS + 48, 0, 62, 3);
        f.block(0, 2, libc::TP_STATUS_USER);
        f.block(1, 1, libc::TP_STATUS_KERNEL);
        // SAFETY: the fake ring outlives `r`, nothing else touches it.
        let mut r = unsafe { RxRing::new(f.base(), BS, 3) };
        let a = r.current().unwrap();
        assert_eq!((a.len(), a.mac()), (60, 80));
        r.advance(a);
        let b = r.current().unwrap();
        assert_eq!(b.len(), 61);
        r.advance(b);
        assert_eq!(
            u32::from_ne_bytes(f.bytes()[BLK_STATUS..BLK_STATUS + 4].try_into().unwrap()),
            libc::TP_STATUS_KERNEL
        );
        assert!(r.current().is_none(), "block 1 still the kernel's");
        f.put32(BS + BLK_STATUS, libc::TP_STATUS_USER);
        let c = r.current().unwrap();
        assert_eq!(c.len(), 62);
        r.advance(c);
        // Block 2 is user-owned but empty: released and skipped.
        f.block(2, 0, libc::TP_STATUS_USER);
        assert!(r.current().is_none());
        assert_eq!(
            u32::from_ne_bytes(f.bytes()[2 * BS + BLK_STATUS..2 * BS + BLK_STATUS + 4].try_into().unwrap()),
            libc::TP_STATUS_KERNEL
        );
    }

    #[test]
    fn rx_ring_stops_at_an_offset_outside_the_block() {
        let mut f = Fake { mem: vec![0u64; BS / 8] };
        f.block(0, 5, libc::TP_STATUS_USER);
        f.put32(BLK_FIRST, (BS - 10) as u32);
        // SAFETY: as above.
        let mut r = unsafe { RxRing::new(f.base(), BS, 1) };
        assert!(r.current().is_none());
        assert_eq!(
            u32::from_ne_bytes(f.bytes()[BLK_STATUS..BLK_STATUS + 4].try_into().unwrap()),
            libc::TP_STATUS_KERNEL
        );
    }

    #[test]
    fn tx_ring_hands_frames_over_and_refuses_when_full() {
        let mut f = Fake { mem: vec![0u64; 2 * 512 / 8] };
        // SAFETY: as above.
        let mut t = unsafe { TxRing::new(f.base(), 512, 2) };
        for n in [100usize, 200] {
            let s = t.slot().unwrap();
            assert_eq!(s.len(), 512 - TX_DATA);
            s[0] = n as u8;
            t.commit(n);
        }
        assert!(t.slot().is_none(), "both frames requested");
        assert_eq!(t.busy(), 2);
        let b = f.bytes();
        assert_eq!(u32::from_ne_bytes(b[H_STATUS..H_STATUS + 4].try_into().unwrap()), libc::TP_STATUS_SEND_REQUEST);
        assert_eq!(u32::from_ne_bytes(b[H_LEN..H_LEN + 4].try_into().unwrap()), 100);
        assert_eq!(b[TX_DATA], 100);
        // The kernel sent frame 0.
        f.put32(H_STATUS, libc::TP_STATUS_AVAILABLE);
        assert!(t.slot().is_some());
    }
}
