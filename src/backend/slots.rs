//! A bounded single-producer/single-consumer ring of fixed-size frame
//! slots, each with its frame's [`FrameMeta`]. The producer writes a slot in place and publishes it with a
//! Release store of `head`; the consumer reads it after an Acquire load of
//! `head` and returns it with a Release store of `tail`. Each index is
//! written by one side only and lives on its own cache line.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::utils::CachePadded;

use super::{FrameMeta, PortFrame, SLOT_SIZE};

struct Slot {
    len: usize,
    meta: FrameMeta,
    data: [u8; SLOT_SIZE],
}

pub struct SlotRing {
    slots: Box<[UnsafeCell<Slot>]>,
    mask: usize,
    /// Next slot the producer publishes (written by the producer only).
    head: CachePadded<AtomicUsize>,
    /// Next slot the consumer frees (written by the consumer only).
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: a slot is accessed by the producer only between `tail` and
// `head + capacity` and by the consumer only between `tail` and `head`; the
// Acquire/Release pairs on head/tail hand each slot over exclusively.
unsafe impl Sync for SlotRing {}
// SAFETY: the ring owns plain bytes.
unsafe impl Send for SlotRing {}

impl SlotRing {
    /// `capacity` is rounded up to a power of two.
    pub fn new(capacity: usize) -> Arc<SlotRing> {
        let cap = capacity.max(2).next_power_of_two();
        let slots =
            (0..cap).map(|_| UnsafeCell::new(Slot { len: 0, meta: FrameMeta::PLAIN, data: [0; SLOT_SIZE] })).collect();
        Arc::new(SlotRing {
            slots,
            mask: cap - 1,
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
        })
    }

    pub fn capacity(&self) -> usize {
        self.mask + 1
    }
}

/// The producer side. Writes go to the slot at `local_head`; `flush`
/// publishes everything committed since the last flush.
pub struct Producer {
    ring: Arc<SlotRing>,
    local_head: usize,
    /// Cached consumer position, refreshed only when the ring looks full.
    cached_tail: usize,
}

/// The consumer side.
pub struct Consumer {
    ring: Arc<SlotRing>,
    local_tail: usize,
    /// Cached producer position, refreshed only when the ring looks empty.
    cached_head: usize,
}

pub fn channel(capacity: usize) -> (Producer, Consumer) {
    let ring = SlotRing::new(capacity);
    (Producer { ring: ring.clone(), local_head: 0, cached_tail: 0 }, Consumer { ring, local_tail: 0, cached_head: 0 })
}

impl Producer {
    #[inline]
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        if self.local_head.wrapping_sub(self.cached_tail) > self.ring.mask {
            // Acquire: the consumer finished reading the slots it freed.
            self.cached_tail = self.ring.tail.load(Ordering::Acquire);
            if self.local_head.wrapping_sub(self.cached_tail) > self.ring.mask {
                return None;
            }
        }
        let cell = &self.ring.slots[self.local_head & self.ring.mask];
        // SAFETY: the slot is between tail and head + capacity, so the
        // consumer does not access it until we publish it.
        Some(unsafe { &mut (&mut *cell.get()).data[..] })
    }

    #[inline]
    pub fn commit(&mut self, len: usize, meta: FrameMeta) {
        let cell = &self.ring.slots[self.local_head & self.ring.mask];
        // SAFETY: as in `slot`; still unpublished.
        unsafe {
            let slot = &mut *cell.get();
            slot.len = len.min(SLOT_SIZE);
            slot.meta = meta;
        }
        self.local_head = self.local_head.wrapping_add(1);
    }

    #[inline]
    pub fn flush(&mut self) {
        // Release: the slot contents are written before the consumer can
        // see the new head.
        self.ring.head.store(self.local_head, Ordering::Release);
    }

    pub fn ring(&self) -> &Arc<SlotRing> {
        &self.ring
    }
}

impl Consumer {
    #[inline]
    pub fn pending(&self) -> usize {
        self.ring.head.load(Ordering::Acquire).wrapping_sub(self.local_tail)
    }

    #[inline]
    pub fn peek(&mut self) -> Option<PortFrame<'_>> {
        self.peek_mut().map(|(bytes, meta)| PortFrame { bytes, meta })
    }

    /// The next frame, writable (a reflector swaps addresses in place).
    #[inline]
    pub fn peek_mut(&mut self) -> Option<(&mut [u8], FrameMeta)> {
        if self.local_tail == self.cached_head {
            // Acquire: pairs with the producer's Release in `flush`.
            self.cached_head = self.ring.head.load(Ordering::Acquire);
            if self.local_tail == self.cached_head {
                return None;
            }
        }
        let cell = &self.ring.slots[self.local_tail & self.ring.mask];
        // SAFETY: the slot is published (below head) and not yet freed, so
        // the producer does not touch it.
        let slot = unsafe { &mut *cell.get() };
        Some((&mut slot.data[..slot.len], slot.meta))
    }

    #[inline]
    pub fn consume(&mut self) {
        self.local_tail = self.local_tail.wrapping_add(1);
    }

    #[inline]
    pub fn flush(&mut self) {
        // Release: we are done reading the freed slots.
        self.ring.tail.store(self.local_tail, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_threads_in_order_without_loss() {
        let (mut p, mut c) = channel(64);
        // Miri interprets every access: fewer frames, same wrap-arounds.
        const N: u32 = if cfg!(miri) { 300 } else { 100_000 };
        let t = std::thread::spawn(move || {
            let mut sent = 0u32;
            while sent < N {
                while sent < N {
                    let Some(s) = p.slot() else { break };
                    s[..4].copy_from_slice(&sent.to_le_bytes());
                    p.commit(4 + (sent as usize % 100), FrameMeta { gso_size: sent as u16, ..FrameMeta::PLAIN });
                    sent += 1;
                }
                p.flush();
                std::thread::yield_now();
            }
        });
        let mut expect = 0u32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while expect < N {
            assert!(std::time::Instant::now() < deadline, "stalled at {expect}");
            while let Some(f) = c.peek() {
                assert_eq!(f.bytes.len(), 4 + (expect as usize % 100));
                assert_eq!(u32::from_le_bytes(f.bytes[..4].try_into().unwrap()), expect);
                assert_eq!(f.meta.gso_size, expect as u16, "metadata travels with its frame");
                c.consume();
                expect += 1;
            }
            c.flush();
            std::thread::yield_now();
        }
        t.join().unwrap();
    }

    #[test]
    fn a_full_ring_refuses_until_the_consumer_frees() {
        let (mut p, mut c) = channel(4);
        for _ in 0..4 {
            assert!(p.slot().is_some());
            p.commit(1, FrameMeta::PLAIN);
        }
        assert!(p.slot().is_none());
        p.flush();
        assert!(c.peek().is_some());
        c.consume();
        assert!(p.slot().is_none(), "slot reused before the consumer flushed");
        c.flush();
        assert!(p.slot().is_some());
    }
}
