//! Frames one poll thread hands to another: RSS steering a port frame to a
//! receive queue of another pair, and a pair the driver does not use
//! passing its port's frames to one it does.
//!
//! A full mesh of single-producer/single-consumer slot rings
//! ([`crate::backend::slots`]): thread `i` owns the producer of ring
//! `i -> j` and thread `j` its consumer, so no ring has two writers and
//! nothing takes a lock. A frame is copied once into the ring's slot (no
//! allocation); a full ring drops the frame and the caller counts it.
//! The mesh costs `pairs * (pairs - 1) * SLOTS` slots of about 2 KiB, so it
//! is built only for `2..=MAX_PAIRS` pairs.
//!
//! Wake-ups: a thread about to sleep sets its `sleeping` flag, then looks
//! at its inboxes once more; a producer publishes its frames, then looks at
//! the flag and writes the sleeper's wake eventfd (one syscall per burst
//! that hands frames to a sleeping thread, none while it polls). Both
//! sides put a SeqCst fence between their store and their load (Dekker),
//! so at least one of them sees the other: no frame waits for the idle
//! timeout.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::eventfd::EventFd;

use crate::backend::slots::{self, Consumer, Producer};
use crate::backend::{FrameMeta, PortFrame, SLOT_SIZE};

/// The most pairs the mesh is built for.
pub const MAX_PAIRS: usize = 16;
/// Slots per ring (a power of two).
pub const SLOTS: usize = 64;

/// Why a frame was not handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The target's ring is full (it is not keeping up): drop and count.
    Full,
    /// No ring to that pair (no mesh, the pair itself, or out of range) or
    /// the frame does not fit a slot: the caller delivers it itself.
    NoRoute,
}

struct Sleeper {
    sleeping: AtomicBool,
    wake: Arc<EventFd>,
}

/// One thread's ends of the mesh: what it sends and what it receives,
/// apart so an RX burst can send a port frame while it reads the inbox.
pub struct Handoff {
    pub(super) out: Outbox,
    pub(super) inbox: Inbox,
}

/// Producers towards the other pairs.
pub struct Outbox {
    /// Producer towards each pair (`None` for this pair; empty: no mesh).
    out: Box<[Option<Producer>]>,
    /// Bit `j`: frames committed towards `j` since the last flush.
    dirty: u32,
    sleepers: Arc<[Sleeper]>,
}

/// Consumers of the rings from the other pairs.
pub struct Inbox {
    pair: u16,
    rings: Box<[Consumer]>,
    sleepers: Arc<[Sleeper]>,
    /// The ring the frame returned by `peek` came from.
    current: usize,
}

impl Handoff {
    /// Ends for `wakes.len()` pairs; each thread's `wake` is the eventfd its
    /// idle wait polls (the mailbox's). Without a mesh every end is empty
    /// and `send` always answers `NoRoute`.
    pub fn mesh(wakes: &[Arc<EventFd>]) -> Vec<Handoff> {
        let n = wakes.len();
        let sleepers: Arc<[Sleeper]> =
            wakes.iter().map(|w| Sleeper { sleeping: AtomicBool::new(false), wake: w.clone() }).collect();
        let build = |pair: usize, out: Vec<Option<Producer>>, rings: Vec<Consumer>| Handoff {
            out: Outbox { out: out.into_boxed_slice(), dirty: 0, sleepers: sleepers.clone() },
            inbox: Inbox { pair: pair as u16, rings: rings.into_boxed_slice(), sleepers: sleepers.clone(), current: 0 },
        };
        if !(2..=MAX_PAIRS).contains(&n) {
            return (0..n).map(|p| build(p, Vec::new(), Vec::new())).collect();
        }
        let mut outs: Vec<Vec<Option<Producer>>> = (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut ins: Vec<Vec<Consumer>> = (0..n).map(|_| Vec::new()).collect();
        for (from, out) in outs.iter_mut().enumerate() {
            for (to, inbox) in ins.iter_mut().enumerate() {
                if from != to {
                    let (p, c) = slots::channel(SLOTS);
                    out[to] = Some(p);
                    inbox.push(c);
                }
            }
        }
        outs.into_iter().zip(ins).enumerate().map(|(pair, (out, rings))| build(pair, out, rings)).collect()
    }

    /// Whether frames can be handed to other pairs at all.
    #[inline]
    pub fn enabled(&self) -> bool {
        !self.out.out.is_empty()
    }

    #[inline]
    pub fn send(&mut self, to: u16, frame: &[u8], meta: FrameMeta) -> Result<(), SendError> {
        self.out.send(to, frame, meta)
    }

    #[inline]
    pub fn flush(&mut self) {
        self.out.flush()
    }

    #[inline]
    pub fn pending(&self) -> bool {
        self.inbox.pending()
    }

    /// About to sleep: ask producers to wake us. `true` when frames are
    /// already waiting (then do not sleep).
    pub fn arm(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        self.inbox.sleepers[self.inbox.pair as usize].sleeping.store(true, Ordering::Relaxed);
        // SeqCst: the flag store comes before the loads of the ring heads
        // (pairs with the fence in `Outbox::flush`).
        fence(Ordering::SeqCst);
        self.pending()
    }

    pub fn disarm(&self) {
        if self.enabled() {
            self.inbox.sleepers[self.inbox.pair as usize].sleeping.store(false, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn peek(&mut self) -> Option<PortFrame<'_>> {
        self.inbox.peek()
    }

    #[inline]
    pub fn consume(&mut self) {
        self.inbox.consume()
    }

    #[inline]
    pub fn release(&mut self) {
        self.inbox.release()
    }

    /// Forget frames in flight (device reset): consume whatever waits.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.peek().is_some() {
            self.consume();
            n += 1;
        }
        self.release();
        n
    }
}

impl Outbox {
    /// Copy `frame` into the ring towards pair `to`; visible there after
    /// [`flush`](Self::flush).
    #[inline]
    pub fn send(&mut self, to: u16, frame: &[u8], meta: FrameMeta) -> Result<(), SendError> {
        if frame.len() > SLOT_SIZE {
            return Err(SendError::NoRoute);
        }
        let Some(Some(p)) = self.out.get_mut(to as usize) else { return Err(SendError::NoRoute) };
        let Some(slot) = p.slot() else { return Err(SendError::Full) };
        slot[..frame.len()].copy_from_slice(frame);
        p.commit(frame.len(), meta);
        self.dirty |= 1 << to;
        Ok(())
    }

    /// Publish what `send` committed and wake targets that sleep.
    #[inline]
    pub fn flush(&mut self) {
        if self.dirty == 0 {
            return;
        }
        let mut d = self.dirty;
        while d != 0 {
            let to = d.trailing_zeros() as usize;
            d &= d - 1;
            if let Some(Some(p)) = self.out.get_mut(to) {
                p.flush();
            }
        }
        // SeqCst: the Release stores of the ring heads above come before
        // the loads of `sleeping` below (pairs with the fence in `arm`).
        fence(Ordering::SeqCst);
        let mut d = self.dirty;
        while d != 0 {
            let to = d.trailing_zeros() as usize;
            d &= d - 1;
            if self.sleepers[to].sleeping.swap(false, Ordering::Relaxed) {
                let _ = self.sleepers[to].wake.write(1);
            }
        }
        self.dirty = 0;
    }
}

impl Inbox {
    /// Frames waiting (Acquire loads of the ring heads).
    #[inline]
    pub fn pending(&self) -> bool {
        self.rings.iter().any(|c| c.pending() > 0)
    }

    /// The next frame, left in its ring until `consume`. The ring of the
    /// last frame is looked at first, so a frame left half done (no RX
    /// buffers) is the one found again.
    #[inline]
    pub fn peek(&mut self) -> Option<PortFrame<'_>> {
        let n = self.rings.len();
        for k in 0..n {
            let i = (self.current + k) % n;
            if self.rings[i].pending() > 0 {
                self.current = i;
                return self.rings[i].peek();
            }
        }
        None
    }

    /// Drop the frame `peek` returned.
    #[inline]
    pub fn consume(&mut self) {
        if let Some(c) = self.rings.get_mut(self.current) {
            c.consume();
        }
    }

    /// End of a burst: give consumed slots back to their producers.
    #[inline]
    pub fn release(&mut self) {
        for c in self.rings.iter_mut() {
            c.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wakes(n: usize) -> Vec<Arc<EventFd>> {
        (0..n)
            .map(|_| {
                Arc::new(EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK).expect("eventfd"))
            })
            .collect()
    }

    #[test]
    fn frames_reach_their_pair_in_order() {
        let w = wakes(3);
        let mut m = Handoff::mesh(&w);
        for i in 0..20u8 {
            m[0].send(1 + (i % 2) as u16, &[i; 60], FrameMeta::PLAIN).unwrap();
        }
        assert_eq!(m[0].send(0, &[0; 60], FrameMeta::PLAIN), Err(SendError::NoRoute), "no ring to itself");
        assert_eq!(m[0].send(3, &[0; 60], FrameMeta::PLAIN), Err(SendError::NoRoute));
        assert_eq!(m[0].send(1, &[0; SLOT_SIZE + 1], FrameMeta::PLAIN), Err(SendError::NoRoute));
        assert!(!m[1].pending(), "nothing visible before flush");
        m[0].flush();
        for (p, first) in [(1usize, 0u8), (2, 1)] {
            let mut want = first;
            while let Some(f) = m[p].peek() {
                assert_eq!(f.bytes, &[want; 60][..]);
                m[p].consume();
                want += 2;
            }
            assert_eq!(want, first + 20);
            m[p].release();
        }
    }

    #[test]
    fn a_full_ring_refuses_and_a_sleeper_is_woken() {
        let w = wakes(2);
        let mut m = Handoff::mesh(&w);
        assert!(!m[1].arm());
        for _ in 0..SLOTS {
            m[0].send(1, &[1; 64], FrameMeta::PLAIN).unwrap();
        }
        assert_eq!(m[0].send(1, &[1; 64], FrameMeta::PLAIN), Err(SendError::Full));
        m[0].flush();
        assert_eq!(w[1].read().expect("woken"), 1);
        assert!(w[0].read().is_err(), "the producer's own fd untouched");
        m[1].disarm();
        assert_eq!(m[1].drain(), SLOTS);
        assert!(m[0].send(1, &[1; 64], FrameMeta::PLAIN).is_ok(), "room again after release");
        // Not sleeping: no syscall.
        m[0].flush();
        assert!(w[1].read().is_err());
    }

    #[test]
    fn no_mesh_for_one_pair_or_too_many() {
        for n in [1, MAX_PAIRS + 1] {
            let mut m = Handoff::mesh(&wakes(n));
            assert_eq!(m.len(), n);
            assert!(!m[0].enabled());
            assert_eq!(m[0].send(0, &[0; 60], FrameMeta::PLAIN), Err(SendError::NoRoute));
            assert!(m[0].peek().is_none());
        }
    }
}

/// Loom model of the wake-up protocol between [`Handoff::arm`] and
/// [`Outbox::flush`], with their orderings: the producer publishes the ring
/// head (Release, the slot ring's flush), fences, then swaps the target's
/// `sleeping` flag; the consumer stores its flag, fences, then loads the
/// head (Acquire, the slot ring's `pending`). Checked: a consumer that saw
/// no frame after arming, and so sleeps, is always woken. The ring and the
/// eventfd are outside loom, so the model mirrors those lines rather than
/// calling them; keep the two in step.
/// (`RUSTFLAGS="--cfg loom" cargo test --release --lib dataplane::poll::handoff`)
#[cfg(all(test, loom))]
mod loom_model {
    use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;

    fn run(fenced: bool) {
        loom::model(move || {
            let head = Arc::new(AtomicUsize::new(0));
            let sleeping = Arc::new(AtomicBool::new(false));
            let woken = Arc::new(AtomicBool::new(false));
            let (h, s, w) = (head.clone(), sleeping.clone(), woken.clone());
            let producer = loom::thread::spawn(move || {
                // Outbox::send + flush.
                h.store(1, Ordering::Release);
                if fenced {
                    fence(Ordering::SeqCst);
                }
                if s.swap(false, Ordering::Relaxed) {
                    w.store(true, Ordering::Relaxed); // the eventfd write
                }
            });
            // Handoff::arm.
            sleeping.store(true, Ordering::Relaxed);
            if fenced {
                fence(Ordering::SeqCst);
            }
            let saw_frame = head.load(Ordering::Acquire) > 0;
            producer.join().unwrap();
            if !saw_frame {
                assert!(woken.load(Ordering::Relaxed), "slept with a frame waiting and no wake-up");
            }
        });
    }

    #[test]
    fn a_consumer_that_sleeps_is_always_woken() {
        run(true);
    }

    /// The model can fail: without the fences the store-buffering
    /// interleaving leaves a frame behind a sleeping consumer.
    #[test]
    #[should_panic(expected = "no wake-up")]
    fn without_the_fences_a_frame_can_wait_for_the_timeout() {
        run(false);
    }
}
