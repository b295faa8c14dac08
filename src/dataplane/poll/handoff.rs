//! Frames one poll thread hands to another: RSS steering a port frame to a
//! receive queue of another pair, and a pair the driver does not use
//! passing its port's frames to one it does.
//!
//! Layout (issue 11: frames up to 64 KiB, every pair count the device
//! supports, 256): each pair owns
//! - an **arena** it copies the frames it sends into: a ring of [`CHUNK`]
//!   byte chunks, a frame taking as many contiguous chunks as it needs, so
//!   a 60-byte frame costs 256 bytes and a 64 KiB GSO frame 257 chunks, with
//!   no allocation per frame and no slot size to outgrow;
//! - an **inbox**: a bounded multi-producer/single-consumer queue of
//!   descriptors (sender, chunk, length, [`FrameMeta`]) that every other
//!   pair sends into (Vyukov's bounded queue: one compare-and-swap per
//!   frame to claim a cell, a Release store of the cell's sequence to
//!   publish it; never a lock).
//!
//! Why not the full mesh of 2 KiB slot rings this replaces: a mesh needs
//! `pairs * (pairs - 1)` rings, each thread polls `pairs - 1` of them, and
//! slots big enough for GSO frames would cost 64 KiB each: 256 pairs with
//! 64 slots of 64 KiB per ring would be about 270 GB. Here memory is linear in the
//! pairs ([`ARENA_BYTES`] plus the inbox's cells, about 530 KiB a pair,
//! 133 MiB for 256 pairs, zero-filled by the allocator so pages the arena
//! ring has not reached yet are not resident) and a thread polls one inbox.
//!
//! Freeing: the receiver sets the first chunk's `free` flag (Release) when
//! it is done with a frame; the sender moves its arena tail over freed
//! records (Acquire), in order. A receiver that does not keep up holds its
//! frames' chunks and so, once the arena wraps round to them, makes the
//! sender drop (count) frames to every pair: a bounded arena means some
//! receiver's slowness is everyone's, as a shared NIC buffer would be.
//!
//! Wake-ups: a thread about to sleep sets its `sleeping` flag, then looks
//! at its inbox once more; a sender publishes its frames, then (in
//! `flush`, once per burst) looks at the flag and writes the sleeper's wake
//! eventfd (one syscall per burst that hands frames to a sleeping thread,
//! none while it polls). Both sides put a SeqCst fence between their store
//! and their load (Dekker), so at least one of them sees the other: no
//! frame waits for the idle timeout. With several senders each does its own
//! publish-fence-look, so the last to publish wakes the sleeper even when
//! an earlier sender's cell, still being written, hid the later ones. Only
//! the sleeper writes its flag: senders load it (see `Outbox::flush`).
//!
//! Back-pressure (issue 11): a port frame RSS gives another pair does not
//! get dropped because that pair's inbox, or this pair's arena, is full:
//! [`Outbox::steer`] answers [`Steer::Wait`], the poll thread leaves the
//! frame in its port and ends the RX pass (as when its driver has no RX
//! buffers), so the port, and behind it the kernel or the peer, holds the
//! burst. Later port frames wait behind it, which keeps each flow's order.
//! One pair whose driver never posts RX buffers must not stop the others
//! for ever, so the wait is bounded in time ([`STEER_WAIT`], read on the
//! poll thread's cycle clock): a frame still blocked after it is dropped
//! (`rx_steer_dropped`), and the pair it waited on is *given up*: later
//! frames that find it full are dropped at once, without waiting, until a
//! frame reaches it again (its receiver made room). A slow receiver then
//! costs one wait of the bound, not one per frame.
//!
//! Who makes room: a full inbox only its owner (`Inbox::release` gives
//! cells back); a full arena only the receiver of its oldest record (the
//! arena is freed in order). That pair is the *blocker*. A blocked thread
//! about to sleep ([`Handoff::arm_room`]) sets its bit in the blocker's
//! `waiters` mask, then looks for room once more; a receiver that gave
//! something back looks at its mask and writes the eventfd of every thread
//! in it (once per wait, not per frame). A SeqCst fence on each side
//! between store and load (Dekker, as for `sleeping`): the blocked thread
//! either sees the room or is woken.
//!
//! The loom model at the end runs this file's code (atomics from loom under
//! `--cfg loom`): wake-ups with two senders, arena chunks reused only after
//! their reader is done, and a sender blocked at a full inbox or a full
//! arena always woken when room is made.

use std::cell::UnsafeCell;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crossbeam::utils::CachePadded;
use nix::sys::eventfd::EventFd;

use super::offload::MAX_FRAME;
use crate::backend::{FrameMeta, PortFrame};

/// Allocation unit of an arena, in bytes.
pub const CHUNK: usize = 256;
/// Bytes of each pair's arena: what one pair may have in flight to the
/// others (eight 64 KiB GSO frames, 56 of 9 KiB, 340 of 1514 bytes). 256
/// KiB was measured too small: one RX burst of mixed jumbo and GSO frames
/// from a tap-like port (about 350 KiB steered) lost 3 of 24 frames.
pub const ARENA_BYTES: usize = 512 * 1024;
/// Descriptors each inbox holds (a power of two).
pub const INBOX_CELLS: usize = 256;

/// How long a port frame may wait for room at a full target before it is
/// dropped (see the module docs). Five idle sleeps
/// ([`IDLE_SLEEP`](crate::dataplane::IDLE_SLEEP)): a blocked thread that
/// missed its wake-up still retries several times before it drops, and a
/// driver that posts no RX buffer for half a second is not one that is
/// just slower than the port (a NAPI poll refills within a softirq).
pub const STEER_WAIT: Duration = Duration::from_millis(500);

/// Why a frame was not handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The target's inbox or the sender's arena is full (a receiver is not
    /// keeping up): try again once it makes room ([`Outbox::steer`] does).
    Full,
    /// No route to that pair (fewer than two pairs, the pair itself, or out
    /// of range) or the frame is larger than [`MAX_FRAME`]: the caller
    /// delivers it itself.
    NoRoute,
}

/// What became of a frame offered to [`Outbox::steer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// Handed over.
    Sent,
    /// No room now: leave the frame in the port, end the RX pass, try
    /// again (the thread sleeps through [`Handoff::arm_room`]).
    Wait,
    /// Blocked longer than [`STEER_WAIT`], or at a pair given up on: drop
    /// the frame and count it (`rx_steer_dropped`).
    Dropped,
    /// No route ([`SendError::NoRoute`]): deliver it here.
    NoRoute,
}

/// The port frame at the head of this pair's port waits for room.
#[derive(Clone, Copy, Debug)]
struct Blocked {
    /// Cycle clock when it first found no room.
    since: u64,
    to: usize,
    /// Its chunks.
    need: usize,
}

struct Sleeper {
    sleeping: AtomicBool,
    wake: Arc<EventFd>,
}

/// One inbox descriptor: which arena, where, how long, and the frame's
/// offload metadata (the virtio-net header fields travel with the frame).
#[derive(Clone, Copy)]
struct Entry {
    from: u16,
    chunk: u32,
    len: u32,
    meta: FrameMeta,
}

const EMPTY: Entry = Entry { from: 0, chunk: 0, len: 0, meta: FrameMeta::PLAIN };

/// The descriptor of one cell: written by the sender that claimed the cell,
/// read by the inbox owner after the cell's sequence says so.
struct EntryCell(#[cfg(not(loom))] UnsafeCell<Entry>, #[cfg(loom)] loom::cell::UnsafeCell<Entry>);

impl EntryCell {
    fn new() -> Self {
        #[cfg(not(loom))]
        return EntryCell(UnsafeCell::new(EMPTY));
        #[cfg(loom)]
        return EntryCell(loom::cell::UnsafeCell::new(EMPTY));
    }

    /// SAFETY (caller): no other thread writes the cell now (see `Cell`).
    #[inline]
    unsafe fn get(&self) -> Entry {
        #[cfg(not(loom))]
        return *self.0.get();
        #[cfg(loom)]
        return self.0.with(|p| *p);
    }

    /// SAFETY (caller): this thread owns the cell now (see `Cell`).
    #[inline]
    unsafe fn set(&self, e: Entry) {
        #[cfg(not(loom))]
        {
            *self.0.get() = e;
        }
        #[cfg(loom)]
        self.0.with_mut(|p| *p = e);
    }
}

/// An inbox cell. `seq == pos`: free for the sender that claims position
/// `pos`; `seq == pos + 1`: published, the owner may read it;
/// `seq == pos + cells`: read and given back, free for position
/// `pos + cells`. Only the claimant writes the entry, and only between its
/// claim and its publish; only the owner reads it, between publish and
/// give-back.
struct Cell {
    seq: AtomicUsize,
    entry: EntryCell,
}

/// A pair's inbox (bounded MPSC queue of descriptors).
struct Queue {
    /// Next position a sender claims (compare-and-swap by the senders).
    tail: CachePadded<AtomicUsize>,
    cells: Box<[Cell]>,
    mask: usize,
    /// Bit `p`: pair `p` is blocked until this inbox's owner gives
    /// something back (set by the blocked pair, cleared by the owner when
    /// it wakes it; see the module docs).
    waiters: CachePadded<Box<[AtomicU64]>>,
}

impl Queue {
    fn new(cells: usize, pairs: usize) -> Self {
        let cells = cells.max(2).next_power_of_two();
        Queue {
            tail: CachePadded::new(AtomicUsize::new(0)),
            cells: (0..cells).map(|i| Cell { seq: AtomicUsize::new(i), entry: EntryCell::new() }).collect(),
            mask: cells - 1,
            waiters: CachePadded::new((0..pairs.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    /// No cell free for the next sender (what `claim` would answer, without
    /// claiming): checked before a frame is copied into the arena, so a
    /// blocked thread that retries does not copy it every time.
    #[inline]
    fn looks_full(&self) -> bool {
        let pos = self.tail.load(Ordering::Relaxed);
        // Acquire: as in `claim`.
        let seq = self.cells[pos & self.mask].seq.load(Ordering::Acquire);
        (seq.wrapping_sub(pos) as isize) < 0
    }

    /// Claim the next cell, or `None` when the queue is full.
    #[inline]
    fn claim(&self) -> Option<usize> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            // Acquire: pairs with the owner's Release give-back, so its read
            // of the entry is done before we write it.
            let seq = self.cells[pos & self.mask].seq.load(Ordering::Acquire);
            let dif = seq.wrapping_sub(pos) as isize;
            if dif == 0 {
                // Relaxed: the cell's ownership is handed over by `seq`, the
                // tail only decides which sender gets it.
                match self.tail.compare_exchange_weak(pos, pos.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return Some(pos),
                    Err(now) => pos = now,
                }
            } else if dif < 0 {
                return None;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    #[inline]
    fn publish(&self, pos: usize, e: Entry) {
        let cell = &self.cells[pos & self.mask];
        // SAFETY: `claim` gave us position `pos`: no other sender has it and
        // the owner does not read the cell until the store below.
        unsafe { cell.entry.set(e) };
        // Release: the entry and the frame's bytes are written before the
        // owner can see the cell published.
        cell.seq.store(pos.wrapping_add(1), Ordering::Release);
    }
}

/// A pair's arena: the bytes of the frames it sent that their receivers
/// have not freed yet.
struct Arena {
    bytes: Box<[UnsafeCell<u8>]>,
    /// Per chunk: the record starting there was freed by its receiver.
    free: Box<[AtomicBool]>,
    /// Under loom: one tracked cell per chunk, touched where the bytes are
    /// written and read, so loom checks their hand-over like the entries'.
    #[cfg(loom)]
    guards: Box<[loom::cell::UnsafeCell<()>]>,
}

impl Arena {
    fn new(chunks: usize) -> Self {
        let zeroed = vec![0u8; chunks * CHUNK].into_boxed_slice();
        // SAFETY: UnsafeCell<u8> is repr(transparent) over u8, so the slice
        // layouts are the same; zero-filled memory from the allocator keeps
        // pages nobody writes from becoming resident.
        let bytes = unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut [UnsafeCell<u8>]) };
        Arena {
            bytes,
            free: (0..chunks).map(|_| AtomicBool::new(false)).collect(),
            #[cfg(loom)]
            guards: (0..chunks).map(|_| loom::cell::UnsafeCell::new(())).collect(),
        }
    }

    /// The address of chunk `c`; `c * CHUNK + len` must stay in the arena.
    #[inline]
    fn at(&self, c: usize) -> *mut u8 {
        UnsafeCell::raw_get(self.bytes[c * CHUNK..].as_ptr())
    }
}

/// What every pair shares: the inboxes, the arenas, the sleep flags.
struct Shared {
    inboxes: Box<[Queue]>,
    arenas: Box<[Arena]>,
    sleepers: Box<[Sleeper]>,
}

// SAFETY: the arenas' bytes are written only by their sender, in chunks no
// published and unfreed descriptor names, and read only by the receiver of
// such a descriptor (free flags: Release/Acquire); entries are handed over
// by the cells' sequences (see `Cell`).
unsafe impl Sync for Shared {}
// SAFETY: as above; everything else is atomics and eventfds.
unsafe impl Send for Shared {}

/// One thread's ends: what it sends and what it receives, apart so an RX
/// burst can send a port frame while it reads the inbox.
pub struct Handoff {
    pub(super) out: Outbox,
    pub(super) inbox: Inbox,
}

/// The sending side: this pair's arena and the other pairs' inboxes.
pub struct Outbox {
    pair: usize,
    shared: Arc<Shared>,
    /// Arena positions, in chunks since the start (position % chunks is
    /// the chunk): the next free one and the oldest not yet freed.
    head: usize,
    tail: usize,
    /// Chunks of the record starting at each chunk (this side only).
    rec: Box<[u32]>,
    /// The pair the record starting at each chunk went to: the one that
    /// frees it, so the blocker when the arena is full.
    rec_to: Box<[u16]>,
    /// The port frame this pair could not hand over yet (back-pressure).
    blocked: Option<Blocked>,
    /// Bit `p`: a frame waited [`STEER_WAIT`] for pair `p` and was dropped;
    /// frames that find `p` full are dropped at once until `p` frees one of
    /// ours or a frame reaches it.
    given_up: Box<[u64]>,
    /// [`STEER_WAIT`] in cycle-clock ticks (0: not measured yet).
    wait_ticks: u64,
    /// Bit `j`: frames published towards `j` since the last flush.
    dirty: Box<[u64]>,
    any_dirty: bool,
}

/// The receiving side: this pair's inbox.
pub struct Inbox {
    pair: usize,
    shared: Arc<Shared>,
    /// Next position to read.
    head: usize,
    /// Positions before this are given back.
    released: usize,
}

impl Handoff {
    /// Ends for `wakes.len()` pairs; each thread's `wake` is the eventfd its
    /// idle wait polls (the mailbox's). With fewer than two pairs there is
    /// nowhere to send and `send` always answers `NoRoute`.
    pub fn mesh(wakes: &[Arc<EventFd>]) -> Vec<Handoff> {
        Self::sized(wakes, ARENA_BYTES / CHUNK, INBOX_CELLS)
    }

    /// [`mesh`](Self::mesh) with other arena and inbox sizes (tests, loom).
    fn sized(wakes: &[Arc<EventFd>], chunks: usize, cells: usize) -> Vec<Handoff> {
        let n = wakes.len();
        let routed = if n >= 2 { n } else { 0 };
        let chunks = chunks.max(2);
        let shared = Arc::new(Shared {
            inboxes: (0..routed).map(|_| Queue::new(cells, n)).collect(),
            arenas: (0..routed).map(|_| Arena::new(chunks)).collect(),
            sleepers: wakes.iter().map(|w| Sleeper { sleeping: AtomicBool::new(false), wake: w.clone() }).collect(),
        });
        (0..n)
            .map(|pair| Handoff {
                out: Outbox {
                    pair,
                    shared: shared.clone(),
                    head: 0,
                    tail: 0,
                    rec: vec![0; if routed > 0 { chunks } else { 0 }].into_boxed_slice(),
                    rec_to: vec![0; if routed > 0 { chunks } else { 0 }].into_boxed_slice(),
                    blocked: None,
                    given_up: vec![0; n.div_ceil(64)].into_boxed_slice(),
                    wait_ticks: 0,
                    dirty: vec![0; n.div_ceil(64)].into_boxed_slice(),
                    any_dirty: false,
                },
                inbox: Inbox { pair, shared: shared.clone(), head: 0, released: 0 },
            })
            .collect()
    }

    /// Whether frames can be handed to other pairs at all.
    #[inline]
    pub fn enabled(&self) -> bool {
        !self.out.shared.inboxes.is_empty()
    }

    #[inline]
    pub fn send(&mut self, to: u16, frame: &[u8], meta: FrameMeta) -> Result<(), SendError> {
        self.out.send(to, frame, meta)
    }

    /// Hand a port frame over with back-pressure ([`Outbox::steer`]).
    #[inline]
    pub fn steer(&mut self, to: u16, frame: &[u8], meta: FrameMeta) -> Steer {
        self.out.steer(to, frame, meta, super::super::cycles::now)
    }

    /// The port frame that waited is gone (consumed for another reason).
    #[inline]
    pub fn unblock(&mut self) {
        self.out.unblock()
    }

    /// A port frame waits for room at another pair.
    #[inline]
    pub fn steer_blocked(&self) -> bool {
        self.out.blocked.is_some()
    }

    /// About to sleep with a port frame blocked: ask the pair that can make
    /// room to wake us, then look once more. `None`: nothing blocked;
    /// `Some(true)`: room now (do not sleep, retry); `Some(false)`: the
    /// blocker will write our eventfd when it gives something back.
    pub fn arm_room(&mut self) -> Option<bool> {
        self.out.arm_room()
    }

    #[inline]
    pub fn flush(&mut self) {
        self.out.flush()
    }

    #[inline]
    pub fn pending(&self) -> bool {
        self.inbox.pending()
    }

    /// About to sleep: ask senders to wake us. `true` when frames are
    /// already waiting (then do not sleep).
    pub fn arm(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        self.inbox.shared.sleepers[self.inbox.pair].sleeping.store(true, Ordering::Relaxed);
        // SeqCst: the flag store comes before the load of the inbox's next
        // cell (pairs with the fence in `Outbox::flush`).
        dekker_fence();
        self.pending()
    }

    pub fn disarm(&self) {
        if self.enabled() {
            self.inbox.shared.sleepers[self.inbox.pair].sleeping.store(false, Ordering::Relaxed);
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

    /// Forget frames in flight (device reset): consume whatever waits, and
    /// the port frame's wait (a new driver, a fresh bound).
    pub fn drain(&mut self) -> usize {
        self.out.blocked = None;
        self.out.given_up.fill(0);
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
    /// Copy `frame` into this pair's arena and publish it in pair `to`'s
    /// inbox (visible there at once; the wake-up comes with
    /// [`flush`](Self::flush)).
    #[inline]
    pub fn send(&mut self, to: u16, frame: &[u8], meta: FrameMeta) -> Result<(), SendError> {
        let to = to as usize;
        if to == self.pair || to >= self.shared.inboxes.len() || frame.len() > MAX_FRAME {
            return Err(SendError::NoRoute);
        }
        let need = frame.len().div_ceil(CHUNK).max(1);
        if need > self.rec.len() {
            return Err(SendError::NoRoute);
        }
        let Some((at, pad)) = self.room(need) else { return Err(SendError::Full) };
        let shared = &*self.shared;
        let q = &shared.inboxes[to];
        if q.looks_full() {
            return Err(SendError::Full);
        }
        let arena = &shared.arenas[self.pair];
        #[cfg(loom)]
        arena.guards[at].with_mut(|_| ());
        // SAFETY: chunks `at..at + need` lie between the arena's head and
        // tail + chunks (`room`): no descriptor that is published and not
        // freed names them, so no receiver reads them, and only this
        // thread writes this arena.
        unsafe { std::ptr::copy_nonoverlapping(frame.as_ptr(), arena.at(at), frame.len()) };
        let Some(pos) = q.claim() else { return Err(SendError::Full) };
        // Commit the chunks (and the padding skipped to wrap round); the
        // padding frees itself.
        let chunks = self.rec.len();
        if pad > 0 {
            let p = self.head % chunks;
            self.rec[p] = pad as u32;
            self.rec_to[p] = to as u16;
            arena.free[p].store(true, Ordering::Relaxed);
            self.head = self.head.wrapping_add(pad);
        }
        self.rec[at] = need as u32;
        self.rec_to[at] = to as u16;
        self.head = self.head.wrapping_add(need);
        q.publish(pos, Entry { from: self.pair as u16, chunk: at as u32, len: frame.len() as u32, meta });
        self.dirty[to / 64] |= 1 << (to % 64);
        self.any_dirty = true;
        Ok(())
    }

    /// Where `need` contiguous chunks fit: the chunk, and the padding to
    /// skip first when the arena's end is too near. Frees what receivers
    /// gave back if it does not fit at once.
    #[inline]
    fn room(&mut self, need: usize) -> Option<(usize, usize)> {
        let chunks = self.rec.len();
        for pass in 0..2 {
            let at = self.head % chunks;
            let pad = if at + need > chunks { chunks - at } else { 0 };
            if self.head.wrapping_sub(self.tail) + pad + need <= chunks {
                return Some((if pad > 0 { 0 } else { at }, pad));
            }
            if pass == 0 {
                self.reclaim();
            }
        }
        None
    }

    /// Move the tail over the records receivers freed, oldest first.
    fn reclaim(&mut self) {
        let chunks = self.rec.len();
        let arena = &self.shared.arenas[self.pair];
        while self.tail != self.head {
            let t = self.tail % chunks;
            // Acquire: pairs with the receiver's Release in `Inbox::release`:
            // its reads of the record are done before we write it again.
            if !arena.free[t].load(Ordering::Acquire) {
                break;
            }
            arena.free[t].store(false, Ordering::Relaxed);
            // Its receiver is making room again: not given up any more.
            let r = self.rec_to[t] as usize;
            self.given_up[r / 64] &= !(1 << (r % 64));
            self.tail = self.tail.wrapping_add(self.rec[t] as usize);
        }
    }

    /// [`send`](Self::send) with back-pressure, for a port frame: `Wait`
    /// while there is no room (the caller leaves the frame in the port),
    /// `Dropped` once it waited [`STEER_WAIT`] (by `now`, the poll thread's
    /// cycle clock, read only when there is no room) or when the pair that
    /// must make room was given up. The frame waiting is the port's head
    /// until the caller consumes it, then [`Handoff::unblock`].
    #[inline]
    pub fn steer(&mut self, to: u16, frame: &[u8], meta: FrameMeta, now: impl FnOnce() -> u64) -> Steer {
        match self.send(to, frame, meta) {
            Ok(()) => {
                self.blocked = None;
                let t = to as usize;
                self.given_up[t / 64] &= !(1 << (t % 64));
                Steer::Sent
            }
            Err(SendError::NoRoute) => {
                self.blocked = None;
                Steer::NoRoute
            }
            Err(SendError::Full) => self.no_room(to as usize, frame.len().div_ceil(CHUNK).max(1), now),
        }
    }

    #[cold]
    fn no_room(&mut self, to: usize, need: usize, now: impl FnOnce() -> u64) -> Steer {
        let b = self.blocker(to, need).unwrap_or(to);
        if self.given_up[b / 64] & (1 << (b % 64)) != 0 {
            self.blocked = None;
            return Steer::Dropped;
        }
        let now = now();
        let bound = self.wait_ticks();
        match self.blocked {
            Some(w) if now.wrapping_sub(w.since) >= bound => {
                self.given_up[b / 64] |= 1 << (b % 64);
                self.blocked = None;
                Steer::Dropped
            }
            Some(ref mut w) => {
                (w.to, w.need) = (to, need);
                Steer::Wait
            }
            None => {
                self.blocked = Some(Blocked { since: now, to, need });
                Steer::Wait
            }
        }
    }

    /// The port frame that waited is gone (consumed for another reason).
    #[inline]
    pub fn unblock(&mut self) {
        self.blocked = None;
    }

    fn wait_ticks(&mut self) -> u64 {
        if self.wait_ticks == 0 {
            self.wait_ticks = (super::super::cycles::hz() * STEER_WAIT.as_secs_f64()).max(1.0) as u64;
        }
        self.wait_ticks
    }

    /// Which pair must give something back before `need` chunks can go to
    /// `to`: `None` when there is room now. The arena first (its oldest
    /// record's receiver frees in order), then `to`'s inbox.
    fn blocker(&mut self, to: usize, need: usize) -> Option<usize> {
        if self.room(need).is_none() {
            let chunks = self.rec.len();
            return Some(self.rec_to[self.tail % chunks] as usize);
        }
        self.shared.inboxes[to].looks_full().then_some(to)
    }

    /// See [`Handoff::arm_room`].
    fn arm_room(&mut self) -> Option<bool> {
        let w = self.blocked?;
        let bit = 1u64 << (self.pair % 64);
        let Some(mut b) = self.blocker(w.to, w.need) else { return Some(true) };
        // The blocker may change under us (the arena's oldest record freed,
        // the next one another pair's): register with each until stable.
        for _ in 0..4 {
            // Relaxed: ordered before the room check by the fence.
            self.shared.inboxes[b].waiters[self.pair / 64].fetch_or(bit, Ordering::Relaxed);
            // SeqCst: our bit is stored before we look for room (pairs with
            // the fence in `Inbox::release`, after it gave room back).
            dekker_fence();
            match self.blocker(w.to, w.need) {
                None => return Some(true),
                Some(now) if now == b => return Some(false),
                Some(now) => b = now,
            }
        }
        // Still moving: room is being made; retry rather than sleep.
        Some(true)
    }

    /// Wake the targets that sleep (after the frames `send` published) and
    /// take back what receivers freed. Once per burst.
    #[inline]
    pub fn flush(&mut self) {
        if !self.any_dirty {
            return;
        }
        self.any_dirty = false;
        // SeqCst: the Release stores publishing the cells come before the
        // loads of `sleeping` below (pairs with the fence in `arm`).
        dekker_fence();
        let sleepers = &self.shared.sleepers;
        for (w, word) in self.dirty.iter_mut().enumerate() {
            let mut d = std::mem::take(word);
            while d != 0 {
                let to = w * 64 + d.trailing_zeros() as usize;
                d &= d - 1;
                // A load, not a swap(false): with two senders, loom found an
                // execution where the first sender's swap (seeing the flag
                // still clear) was ordered between the second's and the
                // sleeper's store, and neither woke it. Only the sleeper
                // writes its flag (`arm`, `disarm`); every sender that sees
                // it set writes the eventfd (a second write only bumps the
                // counter).
                if sleepers[to].sleeping.load(Ordering::Relaxed) {
                    let _ = sleepers[to].wake.write(1);
                }
            }
        }
        self.reclaim();
    }
}

impl Inbox {
    /// A frame waits (Acquire load of the next cell's sequence).
    #[inline]
    pub fn pending(&self) -> bool {
        self.shared
            .inboxes
            .get(self.pair)
            .is_some_and(|q| q.cells[self.head & q.mask].seq.load(Ordering::Acquire) == self.head.wrapping_add(1))
    }

    /// The next frame, left in the inbox until `consume` (so a frame left
    /// half done, no RX buffers, is the one found again).
    #[inline]
    pub fn peek(&mut self) -> Option<PortFrame<'_>> {
        let q = self.shared.inboxes.get(self.pair)?;
        let cell = &q.cells[self.head & q.mask];
        // Acquire: pairs with the sender's Release in `Queue::publish`.
        if cell.seq.load(Ordering::Acquire) != self.head.wrapping_add(1) {
            return None;
        }
        // SAFETY: the cell is published for our position and not given
        // back: its sender is done with it and no other may claim it.
        let e = unsafe { cell.entry.get() };
        let arena = &self.shared.arenas[e.from as usize];
        #[cfg(loom)]
        arena.guards[e.chunk as usize].with(|_| ());
        // SAFETY: the descriptor names bytes its sender wrote before
        // publishing it (the Acquire above) and will not write again until
        // we set the record's free flag in `release`, which needs `&mut
        // self` and so ends this borrow first.
        let bytes = unsafe { std::slice::from_raw_parts(arena.at(e.chunk as usize), e.len as usize) };
        Some(PortFrame { bytes, meta: e.meta })
    }

    /// Drop the frame `peek` returned.
    #[inline]
    pub fn consume(&mut self) {
        if self.pending() {
            self.head = self.head.wrapping_add(1);
        }
    }

    /// End of a burst: free the consumed frames' chunks and give their
    /// cells back to the senders.
    #[inline]
    pub fn release(&mut self) {
        let Some(q) = self.shared.inboxes.get(self.pair) else { return };
        let mut gave = false;
        while self.released != self.head {
            let cell = &q.cells[self.released & q.mask];
            // SAFETY: consumed and not yet given back: still ours.
            let e = unsafe { cell.entry.get() };
            // Release: our reads of the frame are done before its sender
            // can see the chunks free (its Acquire in `Outbox::reclaim`).
            self.shared.arenas[e.from as usize].free[e.chunk as usize].store(true, Ordering::Release);
            // Release: our read of the entry is done before a sender can
            // claim the cell again (its Acquire in `Queue::claim`).
            cell.seq.store(self.released.wrapping_add(q.cells.len()), Ordering::Release);
            self.released = self.released.wrapping_add(1);
            gave = true;
        }
        if gave {
            self.wake_waiters(q);
        }
    }

    /// Room was given back: wake the pairs blocked on us (a fence and a
    /// load per word of the mask once per release; a syscall only for a
    /// pair that registered, once per wait).
    #[inline]
    fn wake_waiters(&self, q: &Queue) {
        // SeqCst: the Release stores above (cells given back, chunks freed)
        // come before the loads of the mask (pairs with `arm_room`).
        dekker_fence();
        for (w, word) in q.waiters.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::Relaxed);
            while bits != 0 {
                let p = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(s) = self.shared.sleepers.get(p) {
                    let _ = s.wake.write(1);
                }
            }
        }
    }
}

/// The SeqCst fence of the wake-up protocol (`arm` / `flush`).
#[inline]
fn dekker_fence() {
    #[cfg(all(test, loom))]
    if loom_model::FENCES_OFF.with(|f| f.get()) {
        return;
    }
    fence(Ordering::SeqCst);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn wakes(n: usize) -> Vec<Arc<EventFd>> {
        (0..n)
            .map(|_| {
                Arc::new(EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK).expect("eventfd"))
            })
            .collect()
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn frames_reach_their_pair_in_order() {
        let w = wakes(3);
        let mut m = Handoff::mesh(&w);
        for i in 0..20u8 {
            m[0].send(1 + (i % 2) as u16, &[i; 60], FrameMeta::PLAIN).unwrap();
        }
        assert_eq!(m[0].send(0, &[0; 60], FrameMeta::PLAIN), Err(SendError::NoRoute), "no route to itself");
        assert_eq!(m[0].send(3, &[0; 60], FrameMeta::PLAIN), Err(SendError::NoRoute));
        assert_eq!(m[0].send(1, &vec![0; MAX_FRAME + 1], FrameMeta::PLAIN), Err(SendError::NoRoute));
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

    /// Issue 11: jumbo and GSO-sized frames cross intact, with their
    /// metadata, and the arena wraps round many times without loss.
    #[test]
    fn frames_of_every_size_up_to_64k_cross_intact() {
        let w = wakes(2);
        let mut m = Handoff::mesh(&w);
        let sizes = [60usize, 255, 256, 257, 1514, 2048, 2049, 9216, 9234, 32768, 65535, MAX_FRAME];
        let mut sent = 0usize;
        for round in 0..40u16 {
            for (i, &len) in sizes.iter().enumerate() {
                let meta = FrameMeta { gso_size: round * 100 + i as u16, hdr_len: len as u16, ..FrameMeta::PLAIN };
                m[1].send(0, &frame(len, (round as u8).wrapping_add(i as u8)), meta).unwrap();
                m[1].flush();
                let f = m[0].peek().expect("published");
                assert_eq!(f.bytes.len(), len);
                assert!(f.bytes == &frame(len, (round as u8).wrapping_add(i as u8))[..], "{len}-byte frame changed");
                assert_eq!(f.meta, meta, "metadata travels with its frame");
                m[0].consume();
                m[0].release();
                sent += len;
            }
        }
        assert!(sent > 10 * ARENA_BYTES, "the arena wrapped round: {sent} bytes");
    }

    #[test]
    fn a_full_inbox_or_arena_refuses_and_a_sleeper_is_woken() {
        let w = wakes(2);
        let mut m = Handoff::mesh(&w);
        assert!(!m[1].arm());
        for _ in 0..INBOX_CELLS {
            m[0].send(1, &[1; 64], FrameMeta::PLAIN).unwrap();
        }
        assert_eq!(m[0].send(1, &[1; 64], FrameMeta::PLAIN), Err(SendError::Full), "inbox full");
        m[0].flush();
        assert_eq!(w[1].read().expect("woken"), 1);
        assert!(w[0].read().is_err(), "the sender's own fd untouched");
        m[1].disarm();
        assert_eq!(m[1].drain(), INBOX_CELLS);
        assert!(m[0].send(1, &[1; 64], FrameMeta::PLAIN).is_ok(), "room again after release");
        // Not sleeping: no syscall.
        m[0].flush();
        assert!(w[1].read().is_err());
        assert_eq!(m[1].drain(), 1);
        // The arena (a fresh one): 65535-byte frames take 256 chunks each;
        // when it is full even a small frame waits until one is freed.
        let mut m = Handoff::mesh(&w);
        let big = vec![7u8; 65535];
        let fit = ARENA_BYTES / (256 * CHUNK);
        for _ in 0..fit {
            m[0].send(1, &big, FrameMeta::PLAIN).unwrap();
        }
        assert_eq!(m[0].send(1, &big, FrameMeta::PLAIN), Err(SendError::Full), "arena full");
        assert_eq!(m[0].send(1, &[1; 60], FrameMeta::PLAIN), Err(SendError::Full), "not even a small frame");
        m[0].flush();
        assert_eq!(m[1].drain(), fit);
        assert!(m[0].send(1, &big, FrameMeta::PLAIN).is_ok(), "chunks freed");
    }

    /// Back-pressure: a full inbox answers `Wait` (nothing dropped) until
    /// its owner gives cells back; a sender that armed is woken by that
    /// release; then every frame arrives, in order.
    #[test]
    fn a_full_target_makes_the_sender_wait_and_wakes_it() {
        let w = wakes(2);
        let mut m = Handoff::sized(&w, 64, 4);
        m[0].out.wait_ticks = 1000;
        let f = |k: u8| [k; 60];
        let mut k = 0u8;
        let mut next = 0u8;
        let mut waits = 0;
        let mut t = 0u64;
        while k < 12 {
            t += 10;
            match m[0].out.steer(1, &f(k), FrameMeta::PLAIN, || t) {
                Steer::Sent => k += 1,
                Steer::Wait => {
                    waits += 1;
                    assert!(m[0].steer_blocked());
                    assert_eq!(m[0].arm_room(), Some(false), "no room yet: sleep");
                    assert!(w[0].read().is_err(), "not woken before room is made");
                    // The receiver takes two frames and gives them back.
                    for _ in 0..2 {
                        assert_eq!(m[1].peek().expect("published").bytes, &f(next)[..], "in order");
                        m[1].consume();
                        next += 1;
                    }
                    m[1].release();
                    assert_eq!(w[0].read().expect("woken by the release"), 1);
                }
                s => panic!("{s:?}"),
            }
        }
        assert!(waits >= 4, "{waits} waits");
        assert!(!m[0].steer_blocked());
        assert_eq!(m[0].arm_room(), None, "nothing blocked: nothing to arm");
        let mut rest = Vec::new();
        while let Some(f) = m[1].peek() {
            rest.push(f.bytes[0]);
            m[1].consume();
        }
        assert_eq!((next, rest), (8, (8..12).collect::<Vec<_>>()), "the last four, in order");
    }

    /// The bound: a frame blocked longer than the wait bound is dropped,
    /// its blocker given up (the next frame finding it full drops at
    /// once), until the blocker takes a frame again; then frames wait
    /// again.
    #[test]
    fn a_stuck_target_costs_one_wait_then_drops_at_once() {
        let w = wakes(3);
        let mut m = Handoff::sized(&w, 64, 2);
        m[0].out.wait_ticks = 1000;
        let s = |m: &mut Vec<Handoff>, to: u16, t: u64| m[0].out.steer(to, &[to as u8; 60], FrameMeta::PLAIN, || t);
        assert_eq!(s(&mut m, 1, 0), Steer::Sent);
        assert_eq!(s(&mut m, 1, 0), Steer::Sent);
        assert_eq!(s(&mut m, 1, 100), Steer::Wait);
        assert_eq!(s(&mut m, 1, 500), Steer::Wait);
        assert_eq!(s(&mut m, 1, 1099), Steer::Wait, "within the bound");
        assert_eq!(s(&mut m, 1, 1100), Steer::Dropped, "bound passed");
        assert!(!m[0].steer_blocked());
        assert_eq!(s(&mut m, 1, 1101), Steer::Dropped, "given up: no second wait");
        // Other pairs are not affected.
        assert_eq!(s(&mut m, 2, 1102), Steer::Sent);
        assert_eq!(m[2].drain(), 1);
        // Pair 1 takes its frames: no longer given up.
        assert_eq!(m[1].drain(), 2);
        assert_eq!(s(&mut m, 1, 2000), Steer::Sent);
        assert_eq!(s(&mut m, 1, 2000), Steer::Sent);
        assert_eq!(s(&mut m, 1, 2001), Steer::Wait, "waits again");
        // A reset forgets the wait.
        m[0].drain();
        assert!(!m[0].steer_blocked());
    }

    /// A full arena: the pair to wait for is the receiver of the oldest
    /// record, whatever the frame's target; its release wakes us.
    #[test]
    fn a_full_arena_waits_for_the_oldest_records_receiver() {
        let w = wakes(3);
        // Eight chunks: two 900-byte frames (four chunks each) fill it.
        let mut m = Handoff::sized(&w, 8, 16);
        m[0].out.wait_ticks = 1000;
        assert_eq!(m[0].out.steer(1, &[1; 900], FrameMeta::PLAIN, || 0), Steer::Sent);
        assert_eq!(m[0].out.steer(2, &[2; 900], FrameMeta::PLAIN, || 0), Steer::Sent);
        assert_eq!(m[0].out.steer(2, &[3; 60], FrameMeta::PLAIN, || 1), Steer::Wait);
        assert_eq!(m[0].arm_room(), Some(false));
        // Pair 2 frees its record: not the oldest, no room, no wake-up.
        assert_eq!(m[2].peek().unwrap().bytes[0], 2);
        m[2].consume();
        m[2].release();
        assert!(w[0].read().is_err(), "pair 2 was not the blocker");
        assert_eq!(m[0].arm_room(), Some(false), "still full: pair 1 holds the oldest record");
        assert_eq!(m[1].drain(), 1);
        assert_eq!(w[0].read().expect("woken by pair 1"), 1);
        assert_eq!(m[0].arm_room(), Some(true), "room now");
        assert_eq!(m[0].out.steer(2, &[3; 60], FrameMeta::PLAIN, || 2), Steer::Sent);
    }

    #[test]
    fn no_route_for_one_pair() {
        let mut m = Handoff::mesh(&wakes(1));
        assert!(!m[0].enabled());
        assert_eq!(m[0].send(0, &[0; 60], FrameMeta::PLAIN), Err(SendError::NoRoute));
        assert!(m[0].peek().is_none());
        assert!(!m[0].arm());
    }

    /// Issue 11: steering for every pair count the device takes (256):
    /// every pair reaches every other, memory stays linear.
    #[test]
    fn every_pair_reaches_every_other_with_256_pairs() {
        let n = 256;
        let mut m = Handoff::mesh(&wakes(n));
        for (from, h) in m.iter_mut().enumerate() {
            for k in 1..4 {
                let to = (from + k * 37) % n;
                let mut f = frame(100 + k * 3000, from as u8);
                f[..2].copy_from_slice(&(from as u16).to_le_bytes());
                h.send(to as u16, &f, FrameMeta { csum_start: k as u16, ..FrameMeta::PLAIN }).unwrap();
            }
            h.flush();
        }
        let mut got = 0;
        for (to, h) in m.iter_mut().enumerate() {
            while let Some(f) = h.peek() {
                let from = u16::from_le_bytes([f.bytes[0], f.bytes[1]]) as usize;
                let k = f.meta.csum_start as usize;
                assert_eq!((from + k * 37) % n, to);
                assert_eq!(&f.bytes[2..], &frame(100 + k * 3000, from as u8)[2..]);
                h.consume();
                got += 1;
            }
            h.release();
        }
        assert_eq!(got, n * 3);
    }

    /// Senders on their own threads into one inbox: every frame arrives
    /// once, intact, in each sender's order.
    #[test]
    fn concurrent_senders_into_one_inbox() {
        let n = 4;
        let per = 3000u32;
        let mut m = Handoff::sized(&wakes(n), 64, 16);
        let mut rx = m.remove(0);
        let senders: Vec<_> = m
            .into_iter()
            .enumerate()
            .map(|(i, mut h)| {
                std::thread::spawn(move || {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    let mut k = 0u32;
                    while k < per {
                        assert!(std::time::Instant::now() < deadline, "sender {i} stalled at {k}");
                        let mut f = frame(60 + (k as usize * 97) % 3000, k as u8);
                        f[..4].copy_from_slice(&k.to_le_bytes());
                        f[4] = i as u8;
                        match h.send(0, &f, FrameMeta::PLAIN) {
                            Ok(()) => k += 1,
                            Err(SendError::Full) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                        h.flush();
                    }
                })
            })
            .collect();
        let mut next = vec![0u32; n - 1];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while next.iter().any(|&k| k < per) {
            assert!(std::time::Instant::now() < deadline, "receiver stalled at {next:?}");
            while let Some(f) = rx.peek() {
                let k = u32::from_le_bytes(f.bytes[..4].try_into().unwrap());
                let i = f.bytes[4] as usize;
                assert_eq!(k, next[i], "sender {i} out of order");
                assert_eq!(f.bytes.len(), 60 + (k as usize * 97) % 3000);
                assert_eq!(&f.bytes[5..], &frame(f.bytes.len(), k as u8)[5..]);
                next[i] += 1;
                rx.consume();
            }
            rx.release();
            std::thread::yield_now();
        }
        for s in senders {
            s.join().unwrap();
        }
    }
}

/// Loom model of this file's protocols, run on the code above (its atomics
/// and entry cells are loom's under `--cfg loom`; the arena's chunks are
/// tracked through a loom cell each):
/// - wake-ups: two senders publish into one inbox while its owner arms;
///   an owner that saw no frame, and so sleeps, is always woken, and then
///   finds both frames intact;
/// - reuse: a sender whose arena holds one frame at a time sends twice;
///   loom checks the second frame's bytes are written only after the
///   receiver freed the first (no data race) and the receiver sees each
///   intact.
///
/// The eventfds are real (outside loom); each model iteration makes its own.
/// (`RUSTFLAGS="--cfg loom" cargo test --release --lib dataplane::poll::handoff`)
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use std::cell::Cell as StdCell;

    std::thread_local! {
        /// The control: the model without the Dekker fences (this test
        /// thread only: loom runs a model's threads on its test thread).
        pub(super) static FENCES_OFF: StdCell<bool> = const { StdCell::new(false) };
    }

    fn wakes(n: usize) -> Vec<Arc<EventFd>> {
        (0..n)
            .map(|_| {
                Arc::new(EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK).expect("eventfd"))
            })
            .collect()
    }

    fn wake_model(senders: usize) {
        loom::model(move || {
            let w = wakes(senders + 1);
            let mut m = Handoff::sized(&w, 4, 2);
            let mut threads = Vec::new();
            for (i, mut h) in m.drain(1..).enumerate() {
                threads.push(loom::thread::spawn(move || {
                    h.send(0, &[i as u8 + 1; 40], FrameMeta::PLAIN).unwrap();
                    h.flush();
                }));
            }
            let mut rx = m.pop().unwrap();
            let saw_frame = rx.arm();
            for s in threads {
                s.join().unwrap();
            }
            if !saw_frame {
                assert!(w[0].read().is_ok(), "slept with a frame waiting and no wake-up");
            }
            rx.disarm();
            let mut got = Vec::new();
            while let Some(f) = rx.peek() {
                assert!(f.bytes.len() == 40 && f.bytes.iter().all(|&b| b == f.bytes[0]));
                got.push(f.bytes[0]);
                rx.consume();
            }
            got.sort();
            assert_eq!(got, (1..=senders as u8).collect::<Vec<_>>());
        });
    }

    #[test]
    fn a_receiver_that_sleeps_is_always_woken() {
        wake_model(2);
    }

    #[test]
    fn a_receiver_that_sleeps_is_always_woken_by_its_one_sender() {
        wake_model(1);
    }

    /// The model can fail: without the fences the store-buffering
    /// interleaving leaves a frame behind a sleeping receiver.
    #[test]
    #[should_panic(expected = "no wake-up")]
    fn without_the_fences_a_frame_can_wait_for_the_timeout() {
        FENCES_OFF.with(|f| f.set(true));
        wake_model(1);
    }

    /// A sender blocked at a full inbox (two cells) or a full arena (one
    /// 600-byte frame in four chunks) registers with the blocker and looks
    /// again; the receiver consumes and releases concurrently. If the
    /// sender saw no room (and so sleeps), the release must have woken it;
    /// either way the frame then goes.
    fn room_model(arena: bool) {
        loom::model(move || {
            let w = wakes(2);
            // Arena: four chunks, 600-byte frames (three chunks), room in
            // the inbox; inbox: two cells, 40-byte frames.
            let (len, fill, cells) = if arena { (600, 1, 4) } else { (40, 2, 2) };
            let mut m = Handoff::sized(&w, 4, cells);
            let mut rx = m.pop().unwrap();
            let mut tx = m.pop().unwrap();
            tx.out.wait_ticks = u64::MAX;
            let big = vec![9u8; len];
            for _ in 0..fill {
                assert_eq!(tx.out.steer(1, &big, FrameMeta::PLAIN, || 0), Steer::Sent);
            }
            assert_eq!(tx.out.steer(1, &big, FrameMeta::PLAIN, || 0), Steer::Wait);
            let receiver = loom::thread::spawn(move || {
                while rx.peek().is_some() {
                    rx.consume();
                }
                rx.release();
                rx
            });
            let room = tx.arm_room();
            let mut rx = receiver.join().unwrap();
            if room == Some(false) {
                assert!(w[0].read().is_ok(), "blocked and asleep with room made and no wake-up");
            }
            assert_eq!(tx.out.steer(1, &big, FrameMeta::PLAIN, || 0), Steer::Sent);
            let f = rx.peek().expect("the blocked frame went");
            assert!(f.bytes.len() == len && f.bytes.iter().all(|&b| b == 9));
        });
    }

    #[test]
    fn a_sender_blocked_at_a_full_inbox_is_always_woken() {
        room_model(false);
    }

    #[test]
    fn a_sender_blocked_at_a_full_arena_is_always_woken() {
        room_model(true);
    }

    /// The control: without the fences a blocked sender can sleep through
    /// the release that made room.
    #[test]
    #[should_panic(expected = "no wake-up")]
    fn without_the_fences_a_blocked_sender_can_miss_its_wake_up() {
        FENCES_OFF.with(|f| f.set(true));
        room_model(false);
    }

    #[test]
    fn arena_chunks_are_reused_only_after_their_reader_is_done() {
        loom::model(|| {
            // Four chunks, 600-byte frames (three chunks): one at a time,
            // the second after padding to the arena's end.
            let mut m = Handoff::sized(&wakes(2), 4, 2);
            let mut tx = m.pop().unwrap();
            let mut rx = m.pop().unwrap();
            let sender = loom::thread::spawn(move || {
                for k in 1..=2u8 {
                    while tx.send(0, &[k; 600], FrameMeta::PLAIN) == Err(SendError::Full) {
                        tx.flush();
                        loom::thread::yield_now();
                    }
                    tx.flush();
                }
            });
            for k in 1..=2u8 {
                loop {
                    if let Some(f) = rx.peek() {
                        assert!(f.bytes.len() == 600 && f.bytes.iter().all(|&b| b == k), "frame {k} changed");
                        rx.consume();
                        rx.release();
                        break;
                    }
                    loom::thread::yield_now();
                }
            }
            sender.join().unwrap();
        });
    }
}
