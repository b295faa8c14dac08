//! The four AF_XDP rings (fill, completion, RX, TX): single-producer /
//! single-consumer circular buffers in memory shared with the kernel.
//!
//! Layout (from `XDP_MMAP_OFFSETS`): a `u32` producer index, a `u32`
//! consumer index, a `u32` flags word and an array of `size` entries
//! (`u64` frame addresses for fill/completion, [`XdpDesc`] for RX/TX).
//! Indices run freely and wrap at 2^32; entry `i` lives at `i & (size - 1)`.
//!
//! Memory ordering (the kernel's side is documented in
//! net/xdp/xsk_queue.h; these are the user-space halves of the same pairs):
//!
//! ```text
//!   producer (we: fill, TX)             consumer (we: completion, RX)
//!   (A) load  consumer   Acquire        (C) load  producer   Acquire
//!       write entries                       read entries
//!   (B) store producer   Release        (D) store consumer   Release
//! ```
//!
//! (B) pairs with the kernel's acquire of the producer, so the entries we
//! wrote are visible before it sees the new index; (C) pairs with the
//! kernel's release of the producer, so we read complete entries. (D)
//! pairs with the kernel's (A): it overwrites entries only after we have
//! read them; our (A) pairs with the kernel's (D): we overwrite entries
//! only after it has read them. Both sides keep cached copies of the
//! other's index and reload it only when the cache says the ring is
//! empty/full, so a burst costs one shared-line load and one store.
//!
//! The `need_wakeup` flag: after publishing (B), the kernel may already
//! have gone idle and set `XDP_RING_NEED_WAKEUP`. Reading the flag is a
//! load after a store to a different location, which only a full fence
//! orders (store-load), so [`Producer::needs_wakeup`] fences (SeqCst)
//! before its Relaxed load. Missing the flag would leave frames in the
//! ring with nobody to send them; an extra wakeup is only a wasted syscall.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

/// `struct xdp_desc`: a frame in the UMEM (RX and TX rings).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

/// Where a ring's parts are, as raw pointers into its mapping.
#[derive(Clone, Copy, Debug)]
pub struct RingPtrs {
    pub producer: NonNull<AtomicU32>,
    pub consumer: NonNull<AtomicU32>,
    pub flags: NonNull<AtomicU32>,
    pub descs: NonNull<u8>,
    /// Entries; a power of two.
    pub size: u32,
}

/// Our end of a ring we produce into (fill, TX).
pub struct Producer<T: Copy> {
    p: RingPtrs,
    mask: u32,
    /// Next index we write.
    cached_prod: u32,
    /// Last index stored to the shared producer word.
    published: u32,
    /// The kernel's consumer index, as last loaded, plus `size`: entries
    /// below it are free for us.
    cached_limit: u32,
    _t: PhantomData<T>,
}

/// Our end of a ring we consume from (completion, RX).
pub struct Consumer<T: Copy> {
    p: RingPtrs,
    mask: u32,
    /// Next index we read.
    cached_cons: u32,
    /// Last index stored to the shared consumer word.
    released: u32,
    /// The kernel's producer index, as last loaded.
    cached_prod: u32,
    _t: PhantomData<T>,
}

// SAFETY: a ring end is a set of pointers into a mapping that its owner
// (the XSK) keeps alive; it is used by one thread at a time (the poll thread
// that owns the port), and the kernel is the only other party.
unsafe impl<T: Copy> Send for Producer<T> {}
// SAFETY: as for Producer.
unsafe impl<T: Copy> Send for Consumer<T> {}

impl RingPtrs {
    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: the pointer is into a live, aligned ring mapping (see
        // `Producer::new`), and the index is only accessed atomically.
        unsafe { self.producer.as_ref() }
    }
    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as `producer`.
        unsafe { self.consumer.as_ref() }
    }
    #[inline]
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as `producer`.
        unsafe { self.flags.as_ref() }
    }
}

/// Flag the kernel sets when it needs a syscall to make progress.
pub const NEED_WAKEUP: u32 = 1;

impl<T: Copy> Producer<T> {
    /// # Safety
    /// `p` must describe a ring that stays mapped for the life of the
    /// returned value: aligned `u32` indices and flags, and `size` (a power
    /// of two) entries of `T` at `descs`, with no other user-space writer.
    pub unsafe fn new(p: RingPtrs) -> Self {
        debug_assert!(p.size.is_power_of_two());
        let prod = p.producer().load(Ordering::Relaxed);
        let cons = p.consumer().load(Ordering::Acquire);
        Producer {
            p,
            mask: p.size - 1,
            cached_prod: prod,
            published: prod,
            cached_limit: cons.wrapping_add(p.size),
            _t: PhantomData,
        }
    }

    /// Free entries, reloading the kernel's consumer index (A) only when
    /// the cached value shows fewer than `want`.
    #[inline]
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_limit.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        // (A): entries the kernel released are done being read.
        self.cached_limit = self.p.consumer().load(Ordering::Acquire).wrapping_add(self.p.size);
        self.cached_limit.wrapping_sub(self.cached_prod)
    }

    /// Write one entry at the next index. The caller checked `free() > 0`.
    #[inline]
    pub fn push(&mut self, v: T) {
        debug_assert!(self.cached_limit.wrapping_sub(self.cached_prod) > 0, "ring overrun");
        let i = (self.cached_prod & self.mask) as usize;
        // SAFETY: i < size, so the entry is inside the mapping; the kernel
        // does not read it until `submit` publishes it, and it finished
        // reading the old value (free() observed its consumer index).
        unsafe { self.p.descs.cast::<T>().as_ptr().add(i).write_volatile(v) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }

    /// Publish every pushed entry (B). Returns whether there was any.
    #[inline]
    pub fn submit(&mut self) -> bool {
        if self.published == self.cached_prod {
            return false;
        }
        self.p.producer().store(self.cached_prod, Ordering::Release);
        self.published = self.cached_prod;
        true
    }

    /// Entries published but not yet taken by the kernel.
    #[inline]
    pub fn outstanding(&self) -> u32 {
        self.published.wrapping_sub(self.p.consumer().load(Ordering::Acquire))
    }

    /// Whether the kernel asked for a wakeup syscall (see the module doc
    /// for the fence).
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        fence(Ordering::SeqCst);
        self.p.flags().load(Ordering::Relaxed) & NEED_WAKEUP != 0
    }
}

impl<T: Copy> Consumer<T> {
    /// # Safety
    /// As for [`Producer::new`], with no other user-space reader.
    pub unsafe fn new(p: RingPtrs) -> Self {
        debug_assert!(p.size.is_power_of_two());
        let cons = p.consumer().load(Ordering::Relaxed);
        let prod = p.producer().load(Ordering::Acquire);
        Consumer { p, mask: p.size - 1, cached_cons: cons, released: cons, cached_prod: prod, _t: PhantomData }
    }

    /// Entries ready to read, reloading the kernel's producer index (C)
    /// only when the cached value shows none.
    #[inline]
    pub fn available(&mut self) -> u32 {
        if self.cached_prod == self.cached_cons {
            self.cached_prod = self.p.producer().load(Ordering::Acquire);
        }
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Entries ready, from the shared index (for `&self` callers).
    #[inline]
    pub fn peek_available(&self) -> u32 {
        self.p.producer().load(Ordering::Acquire).wrapping_sub(self.cached_cons)
    }

    /// Read the `n`-th ready entry (0 = oldest). The caller checked
    /// `available() > n`.
    #[inline]
    pub fn get(&self, n: u32) -> T {
        debug_assert!(self.cached_prod.wrapping_sub(self.cached_cons) > n, "read past the producer");
        let i = (self.cached_cons.wrapping_add(n) & self.mask) as usize;
        // SAFETY: i < size, inside the mapping; the kernel published this
        // entry before the producer index we loaded with Acquire (C) and
        // does not touch it until we release it.
        unsafe { self.p.descs.cast::<T>().as_ptr().add(i).read_volatile() }
    }

    /// Mark `n` entries read (locally; `release` hands them back).
    #[inline]
    pub fn advance(&mut self, n: u32) {
        debug_assert!(self.cached_prod.wrapping_sub(self.cached_cons) >= n);
        self.cached_cons = self.cached_cons.wrapping_add(n);
    }

    /// Give read entries back to the kernel (D).
    #[inline]
    pub fn release(&mut self) {
        if self.released != self.cached_cons {
            self.p.consumer().store(self.cached_cons, Ordering::Release);
            self.released = self.cached_cons;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ring laid out like the kernel's, in ordinary memory, so both ends
    /// can be exercised without a socket. Index words on their own lines.
    #[repr(C, align(64))]
    pub struct FakeRing<const N: usize> {
        pub producer: AtomicU32,
        _p0: [u8; 60],
        pub consumer: AtomicU32,
        _p1: [u8; 60],
        pub flags: AtomicU32,
        _p2: [u8; 60],
        pub descs: [u64; N],
    }

    impl<const N: usize> FakeRing<N> {
        pub fn new(start: u32) -> Box<Self> {
            Box::new(FakeRing {
                producer: AtomicU32::new(start),
                _p0: [0; 60],
                consumer: AtomicU32::new(start),
                _p1: [0; 60],
                flags: AtomicU32::new(0),
                _p2: [0; 60],
                descs: [0; N],
            })
        }
        pub fn ptrs(&mut self) -> RingPtrs {
            RingPtrs {
                producer: NonNull::from(&self.producer),
                consumer: NonNull::from(&self.consumer),
                flags: NonNull::from(&self.flags),
                descs: NonNull::new(self.descs.as_mut_ptr().cast()).unwrap(),
                size: N as u32,
            }
        }
    }

    #[test]
    fn producer_fills_then_waits_for_the_consumer_across_the_u32_wrap() {
        // Start 3 below the wrap so the indices overflow mid-test.
        let mut r = FakeRing::<8>::new(u32::MAX - 2);
        // SAFETY: the boxed ring outlives both ends (dropped at the end).
        let (mut p, mut c) = unsafe { (Producer::<u64>::new(r.ptrs()), Consumer::<u64>::new(r.ptrs())) };
        assert_eq!(p.free(1), 8);
        for v in 0..8 {
            p.push(100 + v);
        }
        assert_eq!(p.free(1), 0, "full ring has no room");
        assert_eq!(c.available(), 0, "nothing visible before submit");
        assert!(p.submit());
        assert!(!p.submit(), "second submit has nothing new");
        assert_eq!(p.outstanding(), 8);
        assert_eq!(c.available(), 8);
        for n in 0..3 {
            assert_eq!(c.get(n), 100 + n as u64);
        }
        c.advance(3);
        assert_eq!(p.free(1), 0, "not released yet");
        c.release();
        assert_eq!(p.free(1), 3);
        for v in 8..11 {
            p.push(100 + v);
        }
        p.submit();
        let mut seen = Vec::new();
        while c.available() > 0 {
            seen.push(c.get(0));
            c.advance(1);
        }
        c.release();
        assert_eq!(seen, (103..111).collect::<Vec<u64>>());
        assert_eq!(p.outstanding(), 0);
        assert!(r.producer.load(Ordering::Relaxed) < 16, "indices wrapped");
    }

    #[test]
    fn needs_wakeup_follows_the_flag() {
        let mut r = FakeRing::<4>::new(0);
        // SAFETY: the ring outlives the producer.
        let p = unsafe { Producer::<u64>::new(r.ptrs()) };
        assert!(!p.needs_wakeup());
        r.flags.store(NEED_WAKEUP, Ordering::Relaxed);
        assert!(p.needs_wakeup());
    }

    #[test]
    fn two_threads_pass_a_million_entries_in_order() {
        const N: u64 = 1_000_000;
        let mut r = FakeRing::<64>::new(u32::MAX - 1000);
        let ptrs = r.ptrs();
        struct SendPtrs(RingPtrs);
        // SAFETY: the pointers are used by one thread each; the ring lives
        // until both threads are joined.
        unsafe impl Send for SendPtrs {}
        let sp = SendPtrs(ptrs);
        let prod = std::thread::spawn(move || {
            let sp = sp;
            // SAFETY: the ring outlives the thread (joined below).
            let mut p = unsafe { Producer::<u64>::new(sp.0) };
            let mut v = 0u64;
            while v < N {
                let n = p.free(1).min(16);
                for _ in 0..n.min((N - v) as u32) {
                    p.push(v * 7 + 1);
                    v += 1;
                }
                p.submit();
                if n == 0 {
                    std::thread::yield_now();
                }
            }
        });
        // SAFETY: as above.
        let mut c = unsafe { Consumer::<u64>::new(ptrs) };
        let mut next = 0u64;
        while next < N {
            let n = c.available();
            for i in 0..n {
                assert_eq!(c.get(i), next * 7 + 1, "entry {next}");
                next += 1;
            }
            c.advance(n);
            c.release();
            if n == 0 {
                std::thread::yield_now();
            }
        }
        prod.join().unwrap();
        drop(r);
    }
}
