//! A small FIFO of fixed-size frame buffers owned by one thread: a host
//! port's burst of frames on their way to or from the kernel. Each buffer
//! has `headroom` bytes for a virtio-net header in front of the frame, so a
//! frame and its header go to the kernel in one write.

use super::{FrameMeta, SLOT_SIZE};

pub struct BufQueue {
    data: Box<[u8]>,
    len: Box<[u32]>,
    meta: Box<[FrameMeta]>,
    stride: usize,
    headroom: usize,
    mask: usize,
    head: usize,
    tail: usize,
}

impl BufQueue {
    /// `n` buffers (rounded up to a power of two) of `headroom + room`
    /// bytes each.
    pub fn new(n: usize, headroom: usize, room: usize) -> BufQueue {
        let n = n.max(1).next_power_of_two();
        let stride = headroom + room;
        BufQueue {
            data: vec![0u8; n * stride].into_boxed_slice(),
            len: vec![0u32; n].into_boxed_slice(),
            meta: vec![FrameMeta::PLAIN; n].into_boxed_slice(),
            stride,
            headroom,
            mask: n - 1,
            head: 0,
            tail: 0,
        }
    }

    /// Frames a port normally keeps: a slot of [`SLOT_SIZE`] bytes.
    pub fn with_slots(n: usize, headroom: usize) -> BufQueue {
        Self::new(n, headroom, SLOT_SIZE)
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.head.wrapping_sub(self.tail)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.len() > self.mask
    }

    pub fn clear(&mut self) {
        self.head = 0;
        self.tail = 0;
    }

    #[inline]
    fn buf(&mut self, i: usize) -> &mut [u8] {
        let at = (i & self.mask) * self.stride;
        &mut self.data[at..at + self.stride]
    }

    /// The whole buffer (headroom included) at the back, to fill.
    #[inline]
    pub fn back_raw(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let h = self.head;
        Some(self.buf(h))
    }

    /// The frame area of the back buffer (after the headroom).
    #[inline]
    pub fn back_frame(&mut self) -> Option<&mut [u8]> {
        let hr = self.headroom;
        self.back_raw().map(|b| &mut b[hr..])
    }

    /// The back buffer holds `len` bytes counted from its start (headroom
    /// included) with `meta`: append it.
    #[inline]
    pub fn push(&mut self, len: usize, meta: FrameMeta) {
        debug_assert!(!self.is_full());
        let i = self.head & self.mask;
        self.len[i] = len.min(self.stride) as u32;
        self.meta[i] = meta;
        self.head = self.head.wrapping_add(1);
    }

    /// The front buffer's bytes (headroom included) and metadata.
    #[inline]
    pub fn front(&mut self) -> Option<(&mut [u8], FrameMeta)> {
        if self.is_empty() {
            return None;
        }
        let i = self.tail & self.mask;
        let (len, meta) = (self.len[i] as usize, self.meta[i]);
        let t = self.tail;
        Some((&mut self.buf(t)[..len], meta))
    }

    #[inline]
    pub fn pop(&mut self) {
        if !self.is_empty() {
            self.tail = self.tail.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_keeps_order_length_and_meta_and_refuses_when_full() {
        let mut q = BufQueue::new(3, 12, 100);
        assert_eq!(q.back_frame().unwrap().len(), 100);
        for i in 0..4u8 {
            let b = q.back_raw().unwrap();
            b[12] = i;
            q.push(13 + i as usize, FrameMeta { gso_size: i as u16, ..FrameMeta::PLAIN });
        }
        assert!(q.is_full() && q.back_raw().is_none());
        for i in 0..4u8 {
            let (b, m) = q.front().unwrap();
            assert_eq!((b.len(), b[12], m.gso_size), (13 + i as usize, i, i as u16));
            q.pop();
        }
        assert!(q.is_empty() && q.front().is_none());
    }
}
