//! Descriptor chains as lists of guest memory pieces (virtio 1.3 §2.7.5,
//! §2.7.7, §2.8.6-2.8.8), and the only code that copies to or from guest
//! memory.
//!
//! [`SplitQueue::read_chain_into`] and [`PackedQueue::pop_chain_into`] walk
//! a chain once, into a [`Chain`] the caller reuses: each descriptor is read once into a local and checked, then its
//! buffer is translated in the queue's current address space with the
//! access the descriptor allows (device-readable -> [`Access::Read`],
//! device-writable -> [`Access::Write`]). Both walkers apply the same rules
//! through one [`Builder`] (direction, readable-before-writable, chain
//! length, indirect tables, length overflow, translation), so a rule lives
//! in one place whatever the ring format. The result is a [`Chain`]: a
//! small on-stack list of [`Piece`]s, readable ones first, then writable
//! ones, tied by lifetime to the QSBR read guard the translation was done
//! under, so no piece can outlive the mapping it points into.
//!
//! Copies go through [`ChainReader`] (gather into a slot, read a prefix
//! into a local, chain to chain with [`ChainReader::copy_to`]) and
//! [`ChainWriter`] (scatter from a local or a slot). They use
//! `ptr::copy` (memmove), because a driver may point several descriptors,
//! or a TX and an RX buffer, at the same memory; and they never form a
//! Rust reference (`&[u8]`) over guest memory, which the driver may change
//! at any time. Every guest byte a path needs is copied once into a local
//! and decided on there.
//!
//! A chain with more pieces than the list holds ([`MAX_PIECES`]) is legal
//! virtio: it is still walked and validated to its end (so a malformed tail
//! still fails the queue), but only the first pieces are kept and
//! [`Chain::readable_complete`] / [`Chain::writable_complete`] say so. The
//! readable part keeps at most [`MAX_READABLE_PIECES`] so a command chain
//! always has room for its writable ack. Paths decide what an incomplete
//! part means: TX and the reflector drop the frame and count it
//! (`chain_overflow`), RX fills what it kept, the control queue answers
//! ERR. Never a queue failure, never a crash.
//!
//! Reuse: the chain, its pieces and the cursors know nothing of the ring
//! layout: the packed ring produces the same [`Chain`] from its own walker
//! ([`super::packed`]), and MRG_RXBUF fills several chains with one frame
//! (a writer per chain, then [`Chain::write_at`] for `num_buffers` in the
//! first).

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use super::split::{from_le, Head, SplitQueue};
use super::{Malformed, QueueError};
use crate::mem::{Access, AddressSpace, ReadGuard, XlateError};
use crate::uapi::virtio::{VringDesc, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

#[cfg(doc)]
use super::packed::PackedQueue;

/// Upper bound on an indirect table, in bytes (one queue's worth at most).
pub const MAX_INDIRECT_LEN: u32 = 16 * 32768;

/// Pieces one [`Chain`] keeps. One per descriptor, or more when a buffer
/// spans adjacent regions. Linux sends at most MAX_SKB_FRAGS + 2 = 19
/// descriptors per TX frame; its RX buffers are one or two.
pub const MAX_PIECES: usize = 32;
/// Pieces the readable part may take, leaving room for writable ones.
pub const MAX_READABLE_PIECES: usize = MAX_PIECES - 4;

/// Which buffers a queue's chains may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device reads only (TX, control-queue command parts).
    DeviceReads,
    /// Device writes only (RX).
    DeviceWrites,
    /// Readable then writable (control queue: command, then ack).
    Both,
}

/// A run of guest memory, translated and checked: `len` bytes at a host
/// address inside one mapping of the queue's current address space,
/// allowed for the access of its part (readable or writable). Only the
/// chain walker makes pieces.
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    ptr: *mut u8,
    len: u32,
}

impl Piece {
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The host address, for oracles that check where a piece points (the
    /// fuzz chain walker, tests); copies go through the cursors.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }
}

/// A validated chain: its head, its pieces, its totals. Valid while the
/// read guard `'g` it was read under lives (the mappings stay alive that
/// long); the borrow checker ends it before the thread's next quiescent
/// state.
pub struct Chain<'g> {
    head: Head,
    pieces: [MaybeUninit<Piece>; MAX_PIECES],
    /// Pieces kept, readable ones first.
    n: u8,
    /// How many of the kept pieces are readable.
    n_readable: u8,
    readable_complete: bool,
    writable_complete: bool,
    /// Totals over the whole chain, including pieces not kept.
    readable: u32,
    writable: u32,
    descriptors: u32,
    /// Writable bytes the next walk needs (see [`Chain::want_writable`]).
    want: u32,
    _guard: PhantomData<&'g ReadGuard<'g>>,
}

impl<'g> Chain<'g> {
    /// A chain with no pieces, to be filled in place by a walker
    /// ([`SplitQueue::read_chain_into`], [`PackedQueue::pop_chain_into`]).
    /// A path keeps one per burst and refills it for every chain: the
    /// pieces array is ~0.5 KiB, and returning it by value cost two copies
    /// per frame (the walker's result, then the burst's Option).
    pub fn empty() -> Self {
        Chain {
            head: Head::new(0, 0),
            pieces: [MaybeUninit::uninit(); MAX_PIECES],
            n: 0,
            n_readable: 0,
            readable_complete: true,
            writable_complete: true,
            readable: 0,
            writable: 0,
            descriptors: 0,
            want: u32::MAX,
            _guard: PhantomData,
        }
    }

    /// The next walk into this chain needs only `bytes` writable bytes
    /// (an RX frame and its header): it stops translating once the kept
    /// writable pieces hold that many, so a long chain (Linux's big-packet
    /// receive buffers, a page per descriptor) costs its first descriptors,
    /// not all.
    /// The rest of the chain is then not read (split) or only stepped over
    /// (packed, whose slots must be counted), so a bad descriptor past the
    /// frame is not refused: the device never touches it. One walk only:
    /// the walk resets it.
    #[inline]
    pub fn want_writable(&mut self, bytes: u32) {
        self.want = bytes;
    }

    pub fn head(&self) -> Head {
        self.head
    }
    /// Bytes in device-readable buffers (the whole chain).
    pub fn readable_len(&self) -> u32 {
        self.readable
    }
    /// Bytes in device-writable buffers (the whole chain).
    pub fn writable_len(&self) -> u32 {
        self.writable
    }
    /// Descriptors visited (an indirect descriptor and its entries count).
    pub fn descriptors(&self) -> u32 {
        self.descriptors
    }
    /// Every readable piece was kept (the readable bytes can be read).
    pub fn readable_complete(&self) -> bool {
        self.readable_complete
    }
    /// Every writable piece was kept.
    pub fn writable_complete(&self) -> bool {
        self.writable_complete
    }

    fn kept(&self) -> &[Piece] {
        // SAFETY: the first `n` entries were written by `push` before `n`
        // was raised past them, and Piece is Copy (no drop).
        unsafe { std::slice::from_raw_parts(self.pieces.as_ptr() as *const Piece, self.n as usize) }
    }
    /// The kept device-readable pieces, in order.
    pub fn readable(&self) -> &[Piece] {
        &self.kept()[..self.n_readable as usize]
    }
    /// The kept device-writable pieces, in order.
    pub fn writable(&self) -> &[Piece] {
        &self.kept()[self.n_readable as usize..]
    }

    /// A cursor over the readable bytes, from the start.
    pub fn reader(&self) -> ChainReader<'_> {
        ChainReader { pieces: self.readable(), at: 0, off: 0 }
    }
    /// A cursor over the writable bytes, from the start.
    pub fn writer(&self) -> ChainWriter<'_> {
        ChainWriter { pieces: self.writable(), at: 0, off: 0, written: 0 }
    }

    /// Copy readable bytes from `offset` into `out`; returns bytes copied
    /// (fewer when the kept readable part ends first).
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> usize {
        let mut r = self.reader();
        if r.skip(offset) < offset {
            return 0;
        }
        r.read(out)
    }
    /// Copy `data` into the writable bytes at `offset`; returns bytes copied.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> usize {
        let mut w = self.writer();
        if w.skip(offset) < offset {
            return 0;
        }
        w.write(data)
    }

    #[inline]
    fn push(&mut self, ptr: *mut u8, len: usize, writable: bool) {
        if len == 0 {
            return;
        }
        let limit = if writable { MAX_PIECES } else { MAX_READABLE_PIECES };
        if self.n as usize >= limit {
            if writable {
                self.writable_complete = false;
            } else {
                self.readable_complete = false;
            }
            return;
        }
        // Readable pieces all come before writable ones (the walker refuses
        // the other order), so the readable count is the kept count so far.
        self.pieces[self.n as usize] = MaybeUninit::new(Piece { ptr, len: len as u32 });
        self.n += 1;
        if !writable {
            self.n_readable = self.n;
        }
    }
}

/// Chains one [`Lookahead`] holds: a burst's worth.
pub const LOOKAHEAD: usize = 32;

/// What a read-ahead for `dir` takes: one-descriptor chains whose buffer is
/// writable (`true`, with the access to translate it for) or readable;
/// nothing for command chains (readable, then writable: never one
/// descriptor), which the walk takes.
pub(super) fn prewalk_kind(dir: Direction) -> Option<(bool, Access)> {
    match dir {
        Direction::DeviceReads => Some((false, Access::Read)),
        Direction::DeviceWrites => Some((true, Access::Write)),
        Direction::Both => None,
    }
}

/// A one-descriptor chain read ahead of its turn by a ring's pre-walk
/// (`SplitQueue::prewalk`): its ring position, head, and its one buffer,
/// already checked (direction, head in range, no NEXT or INDIRECT, length
/// non-zero) and translated.
#[derive(Clone, Copy, Debug)]
pub struct Prewalked {
    piece: Piece,
    /// The ring position the chain was read at (split: the avail index).
    at: u16,
    head: u16,
}

/// Storage for a [`Lookahead`], kept with its queue so a burst does not
/// build (or zero) it each time. Entries are only read through the
/// `Lookahead` that wrote them.
pub struct LookaheadBuf([MaybeUninit<Prewalked>; LOOKAHEAD]);

impl Default for LookaheadBuf {
    fn default() -> Self {
        LookaheadBuf([MaybeUninit::uninit(); LOOKAHEAD])
    }
}

// SAFETY: a `Lookahead` starts empty over its buffer and reads only the
// entries it pushed under its own guard; the pointers an older one left
// behind are never read, so moving the storage between threads moves no
// usable pointer.
unsafe impl Send for LookaheadBuf {}

/// The chains a burst read ahead, in ring order: a pre-walk reads the
/// descriptors of a whole burst and translates their buffers before any
/// frame is copied, so the buffers' cache lines (written by the driver's
/// core) are requested together instead of one chain at a time, and each
/// descriptor is read and translated once. Its pieces are valid under the
/// read guard `'g` only, like a [`Chain`]'s.
pub struct Lookahead<'a, 'g> {
    buf: &'a mut LookaheadBuf,
    n: u8,
    next: u8,
    /// The buffers are device-writable (one read-ahead takes one kind).
    writable: bool,
    _guard: PhantomData<&'g ReadGuard<'g>>,
}

impl<'a, 'g> Lookahead<'a, 'g> {
    /// An empty read-ahead over `buf` (what it held before is forgotten).
    #[inline]
    pub fn new(buf: &'a mut LookaheadBuf) -> Self {
        Lookahead { buf, n: 0, next: 0, writable: false, _guard: PhantomData }
    }

    /// Forget every chain not taken yet.
    #[inline]
    pub fn clear(&mut self) {
        self.n = 0;
        self.next = 0;
    }

    /// Start a read-ahead of device-writable buffers (`writable`) or of
    /// device-readable ones: [`Self::clear`], and the kind every `push`
    /// until the next start is of.
    #[inline]
    pub(super) fn start(&mut self, writable: bool) {
        self.clear();
        self.writable = writable;
    }

    /// Chains read ahead and not taken yet.
    #[inline]
    pub fn len(&self) -> usize {
        (self.n - self.next) as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == self.next
    }

    /// Add a chain whose buffer `ptr` (of the kind `start` named) was
    /// translated under the guard `'g` (the caller adds at most
    /// [`LOOKAHEAD`] after `start`).
    #[inline]
    pub(super) fn push(&mut self, at: u16, head: u16, ptr: *mut u8, len: u32) {
        self.buf.0[self.n as usize] = MaybeUninit::new(Prewalked { at, head, piece: Piece { ptr, len } });
        self.n += 1;
    }

    /// The chain `d` places after the next one, if read ahead.
    #[inline]
    fn get(&self, d: usize) -> Option<&Prewalked> {
        let i = self.next as usize + d;
        // SAFETY: entries below `n` were written by this Lookahead's `push`
        // (`new` and `start` start at 0).
        (i < self.n as usize).then(|| unsafe { self.buf.0[i].assume_init_ref() })
    }

    /// Take the next chain if it was read at ring position `at` (the ring's
    /// next): `None` when none is left, and, emptied, when it is stale (the
    /// ring moved without it).
    #[inline]
    pub(super) fn pop_at(&mut self, at: u16) -> Option<Single<'g>> {
        let p = *self.get(0)?;
        if p.at != at {
            self.clear();
            return None;
        }
        self.next += 1;
        Some(Single::new(&p, self.writable))
    }

    /// Ask for the first lines of the buffer of the chain `d` places after
    /// the next one (if read ahead): for writing when the device writes it.
    #[inline]
    pub fn prefetch(&self, d: usize) {
        if let Some(p) = self.get(d) {
            crate::mem::prefetch::lines(p.piece.ptr, p.piece.len, self.writable);
        }
    }
}

impl<'g> Chain<'g> {
    /// Fill this chain from a chain of one buffer taken from a read-ahead:
    /// the same chain the walk would have made of it (one piece, totals,
    /// the head). The want, if any, is consumed as a walk would.
    #[inline]
    pub fn fill_single(&mut self, s: &Single<'g>) {
        self.pieces[0] = MaybeUninit::new(s.piece);
        self.n = 1;
        self.n_readable = !s.writable as u8;
        self.readable_complete = true;
        self.writable_complete = true;
        (self.readable, self.writable) = if s.writable { (0, s.piece.len) } else { (s.piece.len, 0) };
        self.descriptors = 1;
        self.want = u32::MAX;
        self.head = s.head;
    }
}

/// A chain of one buffer (one descriptor, neither chained nor indirect),
/// taken from a read-ahead as it is: what a driver posts for nearly every
/// frame. A path that finds one copies straight from or into its buffer,
/// without filling a [`Chain`] and its cursors. Its buffer was translated
/// and checked for the access of its kind (device-readable or
/// device-writable) like a chain's pieces, and is valid while the read
/// guard `'g` lives.
#[derive(Clone, Copy)]
pub struct Single<'g> {
    head: Head,
    piece: Piece,
    writable: bool,
    _guard: PhantomData<&'g ReadGuard<'g>>,
}

impl<'g> Single<'g> {
    /// The chain of `p`, read ahead under the guard `'g`, of one
    /// descriptor.
    #[inline]
    fn new(p: &Prewalked, writable: bool) -> Self {
        let head = Head::new(p.head, 1).with_readable_only(!writable);
        Single { head, piece: p.piece, writable, _guard: PhantomData }
    }

    /// The head to complete the chain with.
    #[inline]
    pub fn head(&self) -> Head {
        self.head
    }

    /// Bytes in the buffer: the chain's readable total for a
    /// device-readable one, its writable total otherwise.
    #[inline]
    pub fn len(&self) -> usize {
        self.piece.len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.piece.is_empty()
    }

    /// The first `N` bytes of a device-readable buffer that holds them,
    /// as a local; `None` otherwise.
    #[inline]
    pub fn read_array<const N: usize>(&self) -> Option<[u8; N]> {
        if self.writable || self.piece.len() < N {
            return None;
        }
        let mut out = [0u8; N];
        // SAFETY: the piece is valid for `len` readable bytes while the
        // guard `'g` lives (a translation checked for reading), and N <=
        // len. memmove into a local, no reference over guest memory.
        unsafe { std::ptr::copy(self.piece.ptr, out.as_mut_ptr(), N) };
        Some(out)
    }

    /// Write `data` at the start of a device-writable buffer that has room
    /// for it; `false`, nothing written, otherwise.
    #[inline]
    pub fn write_array<const N: usize>(&self, data: &[u8; N]) -> bool {
        if !self.writable || self.piece.len() < N {
            return false;
        }
        // SAFETY: the piece is valid for `len` device-writable bytes while
        // the guard lives, and N <= len; `data` is a local.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.piece.ptr, N) };
        true
    }

    /// Copy bytes `[at, at + n)` of this device-readable buffer to the same
    /// offsets of the device-writable `to`; `false`, nothing copied, when
    /// either does not hold them or is of the other kind.
    #[inline]
    pub fn copy_to(&self, to: &Single<'_>, at: usize, n: usize) -> bool {
        let end = at.saturating_add(n);
        if self.writable || !to.writable || end > self.piece.len() || end > to.piece.len() {
            return false;
        }
        // SAFETY: both pieces are valid for their `len` bytes (readable,
        // writable) while their guards live, and at + n <= both. The driver
        // may point both at the same memory: ptr::copy is memmove.
        unsafe { std::ptr::copy(self.piece.ptr.add(at), to.piece.ptr.add(at), n) };
        true
    }

    /// A cursor over a device-readable buffer (empty for a writable one),
    /// to copy into a [`Chain`].
    #[inline]
    pub fn reader(&self) -> ChainReader<'_> {
        let pieces = if self.writable { &[][..] } else { std::slice::from_ref(&self.piece) };
        ChainReader { pieces, at: 0, off: 0 }
    }
}

/// Reads the readable part of a chain front to back.
pub struct ChainReader<'c> {
    pieces: &'c [Piece],
    /// Current piece and offset in it.
    at: usize,
    off: usize,
}

impl ChainReader<'_> {
    /// Bytes left in the kept pieces.
    pub fn remaining(&self) -> usize {
        self.pieces[self.at.min(self.pieces.len())..].iter().map(Piece::len).sum::<usize>() - self.off
    }

    /// Advance by up to `n` bytes without reading them; returns the advance.
    pub fn skip(&mut self, n: usize) -> usize {
        let mut left = n;
        while left > 0 && self.at < self.pieces.len() {
            let k = (self.pieces[self.at].len() - self.off).min(left);
            self.advance(k);
            left -= k;
        }
        n - left
    }

    #[inline]
    fn advance(&mut self, k: usize) {
        self.off += k;
        if self.off == self.pieces[self.at].len() {
            self.at += 1;
            self.off = 0;
        }
    }

    /// Copy the next bytes into `out` (a slot or a local); returns bytes
    /// copied, fewer than `out.len()` when the kept pieces end.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() && self.at < self.pieces.len() {
            let p = self.pieces[self.at];
            let k = (p.len() - self.off).min(out.len() - done);
            // SAFETY: `p` is valid for `p.len` readable bytes while the
            // chain's guard lives (the reader borrows the chain), and
            // off + k <= p.len; `out[done..done + k]` is in bounds. memmove,
            // no reference over guest memory (see the module docs).
            unsafe { std::ptr::copy(p.ptr.add(self.off), out.as_mut_ptr().add(done), k) };
            done += k;
            self.advance(k);
        }
        done
    }

    /// The next `N` bytes as a local, when the current piece holds them all
    /// (a fixed-size copy the compiler inlines); `None`, nothing consumed,
    /// otherwise (then [`Self::read`]).
    #[inline]
    pub fn read_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let p = *self.pieces.get(self.at)?;
        if p.len() - self.off < N {
            return None;
        }
        let mut out = [0u8; N];
        // SAFETY: as in `read`: `p` is valid for `p.len` readable bytes
        // while the chain's guard lives, and off + N <= p.len. memmove, no
        // reference over guest memory.
        unsafe { std::ptr::copy(p.ptr.add(self.off), out.as_mut_ptr(), N) };
        self.advance(N);
        Some(out)
    }

    /// Copy up to `n` bytes from this chain's readable part into `to`'s
    /// writable part (chain to chain, overlap-safe); returns bytes copied.
    pub fn copy_to(&mut self, to: &mut ChainWriter<'_>, n: usize) -> usize {
        let mut done = 0;
        while done < n && self.at < self.pieces.len() && to.at < to.pieces.len() {
            let (s, d) = (self.pieces[self.at], to.pieces[to.at]);
            let k = (s.len() - self.off).min(d.len() - to.off).min(n - done);
            // SAFETY: `s` is valid for s.len readable bytes and `d` for
            // d.len writable bytes while both chains' guards live (the
            // cursors borrow the chains); the offsets plus k stay within
            // each. The two may overlap when the driver points them at the
            // same memory: ptr::copy is memmove.
            unsafe { std::ptr::copy(s.ptr.add(self.off), d.ptr.add(to.off), k) };
            done += k;
            self.advance(k);
            to.advance(k);
        }
        done
    }
}

/// Writes the writable part of a chain front to back.
pub struct ChainWriter<'c> {
    pieces: &'c [Piece],
    at: usize,
    off: usize,
    written: usize,
}

impl ChainWriter<'_> {
    /// Room left in the kept pieces.
    pub fn remaining(&self) -> usize {
        self.pieces[self.at.min(self.pieces.len())..].iter().map(Piece::len).sum::<usize>() - self.off
    }

    /// Bytes written (or skipped) so far: the used length to report.
    pub fn written(&self) -> usize {
        self.written
    }

    #[inline]
    fn advance(&mut self, k: usize) {
        self.off += k;
        self.written += k;
        if self.off == self.pieces[self.at].len() {
            self.at += 1;
            self.off = 0;
        }
    }

    /// Advance by up to `n` bytes, leaving them as they are.
    pub fn skip(&mut self, n: usize) -> usize {
        let mut left = n;
        while left > 0 && self.at < self.pieces.len() {
            let k = (self.pieces[self.at].len() - self.off).min(left);
            self.advance(k);
            left -= k;
        }
        n - left
    }

    /// [`Self::write`] of a fixed-size local when the current piece has
    /// room for all of it (one copy the compiler inlines, not a memmove
    /// call per piece); `false`, nothing written, otherwise.
    #[inline]
    pub fn write_array<const N: usize>(&mut self, data: &[u8; N]) -> bool {
        let Some(&p) = self.pieces.get(self.at) else { return false };
        if p.len() - self.off < N {
            return false;
        }
        // SAFETY: as in `write`: `p` is valid for `p.len` device-writable
        // bytes while the chain's guard lives, and off + N <= p.len; `data`
        // is a local.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.ptr.add(self.off), N) };
        self.advance(N);
        true
    }

    /// Copy `data` (a local or a port slot, never guest memory: no
    /// reference over guest memory exists) into the next writable bytes;
    /// returns bytes copied, fewer when the kept pieces end.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() && self.at < self.pieces.len() {
            let p = self.pieces[self.at];
            let k = (p.len() - self.off).min(data.len() - done);
            // SAFETY: `p` is valid for `p.len` device-writable bytes while
            // the chain's guard lives and off + k <= p.len; data[done..done
            // + k] is in bounds.
            unsafe { std::ptr::copy(data.as_ptr().add(done), p.ptr.add(self.off), k) };
            done += k;
            self.advance(k);
        }
        done
    }
}

/// One chain under construction, in the caller's [`Chain`]: the rules both
/// walkers share. A walker reads each descriptor once into a local, then
/// hands its fields here.
pub(super) struct Builder<'c, 'g> {
    chain: &'c mut Chain<'g>,
    dir: Direction,
    seen_writable: bool,
    /// Most descriptors a chain may visit (buffers plus one indirect one).
    limit: u32,
    /// Writable bytes the caller needs (`u32::MAX`: the whole chain).
    want: u32,
}

impl<'c, 'g> Builder<'c, 'g> {
    /// Empty `chain` and build into it. `size`: the queue size, which
    /// bounds the chain (size buffers plus one indirect descriptor).
    #[inline]
    pub(super) fn new(chain: &'c mut Chain<'g>, dir: Direction, size: u16) -> Self {
        // Only the counters are reset: pieces past `n` are never read. The
        // head is not known yet for a packed chain (its buffer id is in the
        // last descriptor); `finish` sets it.
        chain.n = 0;
        chain.n_readable = 0;
        chain.readable_complete = true;
        chain.writable_complete = true;
        chain.readable = 0;
        chain.writable = 0;
        chain.descriptors = 0;
        let want = std::mem::replace(&mut chain.want, u32::MAX);
        Builder { chain, dir, seen_writable: false, limit: size as u32 + 1, want }
    }

    /// The kept writable pieces hold what the caller wants: the walk may
    /// stop translating (see [`Chain::want_writable`]).
    #[inline]
    pub(super) fn enough(&self) -> bool {
        self.chain.writable >= self.want && self.chain.writable_complete
    }

    /// Count one visited descriptor; a chain past the limit is a loop or
    /// longer than the queue.
    #[inline]
    pub(super) fn visit(&mut self) -> Result<(), Malformed> {
        self.chain.descriptors += 1;
        if self.chain.descriptors > self.limit {
            return Err(Malformed::ChainTooLong);
        }
        Ok(())
    }

    /// One buffer descriptor: the direction rules, the totals, then the
    /// translation with the access the descriptor allows.
    #[inline]
    pub(super) fn buffer(
        &mut self,
        writable: bool,
        addr: u64,
        len: u32,
        space: &AddressSpace,
        guard: &ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        match (self.dir, writable) {
            (Direction::DeviceReads, true) => return Err(Malformed::UnexpectedWritable.into()),
            (Direction::DeviceWrites, false) => return Err(Malformed::UnexpectedReadable.into()),
            _ => {}
        }
        if !writable && self.seen_writable {
            return Err(Malformed::ReadableAfterWritable.into());
        }
        self.seen_writable |= writable;
        if len > 0 {
            let access = if writable { Access::Write } else { Access::Read };
            let total = if writable { &mut self.chain.writable } else { &mut self.chain.readable };
            *total = total.checked_add(len).ok_or(Malformed::LengthOverflow)?;
            add_buffer(self.chain, space, guard, addr, len, access, writable)?;
        }
        Ok(())
    }

    /// The chain is complete; its head is known now.
    #[inline]
    pub(super) fn finish(self, head: Head) {
        self.chain.head = head.with_readable_only(!self.seen_writable);
    }
}

/// The rules for an indirect descriptor, the same for both formats: only
/// when negotiated, never inside a table, never with NEXT, a length that is
/// a non-zero multiple of 16 of at most `size` entries, an 8-byte aligned
/// table. Returns the number of entries.
#[inline]
pub(super) fn indirect_entries(
    nested: bool,
    negotiated: bool,
    has_next: bool,
    addr: u64,
    len: u32,
    size: u16,
) -> Result<u16, Malformed> {
    if nested {
        return Err(Malformed::NestedIndirect);
    }
    if !negotiated {
        return Err(Malformed::IndirectNotNegotiated);
    }
    if has_next {
        return Err(Malformed::IndirectWithNext);
    }
    if len == 0 || len % 16 != 0 || len / 16 > size as u32 {
        return Err(Malformed::BadIndirectLen(len));
    }
    if addr % 8 != 0 {
        return Err(Malformed::MisalignedRing(addr));
    }
    Ok((len / 16) as u16)
}

impl SplitQueue {
    /// Walk the chain at `head` once and return its pieces (slow path and
    /// tests; the packet paths use [`SplitQueue::read_chain_into`]).
    pub fn read_chain<'g>(
        &self,
        head: Head,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<Chain<'g>, QueueError> {
        let mut chain = Chain::empty();
        self.read_chain_into(&mut chain, head, dir, space, guard)?;
        Ok(chain)
    }

    /// Walk the chain at `head` once into `chain`, replacing what it held.
    /// On error `chain` holds a partial walk that must not be used, and the
    /// caller must stop the queue.
    #[inline]
    pub fn read_chain_into<'g>(
        &self,
        chain: &mut Chain<'g>,
        head: Head,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        // Two copies of the walk: the one for whole chains carries nothing
        // of the early stop.
        if chain.want == u32::MAX {
            self.walk::<false>(chain, head, dir, space, guard)
        } else {
            self.walk::<true>(chain, head, dir, space, guard)
        }
    }

    /// [`SplitQueue::read_chain_into`]; `WANTED`: the chain has a want
    /// ([`Chain::want_writable`]) and may stop early.
    #[inline]
    fn walk<'g, const WANTED: bool>(
        &self,
        chain: &mut Chain<'g>,
        head: Head,
        dir: Direction,
        space: &AddressSpace,
        guard: &'g ReadGuard<'_>,
    ) -> Result<(), QueueError> {
        let size = self.size();
        let mut b = Builder::new(chain, dir, size);
        // (host pointer, entries) of the indirect table once we entered one.
        let mut table: Option<(*const VringDesc, u16)> = None;
        // A head checked against another queue's size is refused here.
        let mut d = self.desc(head.index())?;
        // Index of `d`, and the direct descriptors walked that had a next
        // (see the early stop below; filled only past the first).
        let mut at = head.index();
        let mut walked = [0u16; EARLY_STOP_MAX];
        let mut n_walked = 0usize;
        loop {
            b.visit()?;
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                let n = indirect_entries(
                    table.is_some(),
                    self.config().indirect,
                    d.flags & VRING_DESC_F_NEXT != 0,
                    d.addr,
                    d.len,
                    size,
                )?;
                let p = space.translate(guard, d.addr, d.len as u64, Access::Read)?;
                if p as usize % std::mem::align_of::<VringDesc>() != 0 {
                    return Err(Malformed::MisalignedHost(d.addr).into());
                }
                table = Some((p as *const VringDesc, n));
                d = read_indirect(p as *const VringDesc, 0);
                continue;
            }
            b.buffer(d.flags & VRING_DESC_F_WRITE != 0, d.addr, d.len, space, guard)?;
            if d.flags & VRING_DESC_F_NEXT == 0 {
                b.finish(head);
                return Ok(());
            }
            // The frame fits before the chain's end (the split ring's used
            // entry needs only the head): stop, if the direct descriptors
            // walked were each walked once and are few (a longer frame, or
            // one in an indirect table, walks the whole chain). A loop would
            // otherwise pass as a frame-sized chain whose pieces alias; it
            // is left to the whole walk to refuse. Nothing of this runs for
            // a one-descriptor chain.
            if WANTED && table.is_none() {
                if n_walked < EARLY_STOP_MAX {
                    walked[n_walked] = at;
                }
                n_walked += 1;
                if b.enough() && n_walked <= EARLY_STOP_MAX && distinct(&walked[..n_walked]) {
                    b.finish(head);
                    return Ok(());
                }
                at = d.next;
            }
            d = match table {
                Some((p, n)) => {
                    if d.next >= n {
                        return Err(Malformed::NextOutOfRange(d.next).into());
                    }
                    read_indirect(p, d.next)
                }
                None => self.desc(d.next).map_err(|_| Malformed::NextOutOfRange(d.next))?,
            };
        }
    }
}

/// Most descriptors an RX walk takes before it may stop early (a frame
/// fits in one or two; a longer one walks the whole chain).
const EARLY_STOP_MAX: usize = 8;

/// No index twice (a handful: each compared with those after it).
#[inline]
fn distinct(ids: &[u16]) -> bool {
    ids.iter().enumerate().all(|(k, i)| !ids[k + 1..].contains(i))
}

#[inline]
fn read_indirect(table: *const VringDesc, i: u16) -> VringDesc {
    // SAFETY: callers pass i < entries of a table translated for
    // entries * 16 bytes with read access and checked 8-byte alignment.
    from_le(unsafe { std::ptr::read_volatile(table.add(i as usize)) })
}

/// Translate one buffer into pieces. The common case, one region, costs one
/// table search; spanning or missing regions take the slow path.
#[inline]
fn add_buffer(
    chain: &mut Chain<'_>,
    space: &AddressSpace,
    guard: &ReadGuard<'_>,
    addr: u64,
    len: u32,
    access: Access,
    writable: bool,
) -> Result<(), QueueError> {
    match space.load(guard).translate(addr, len as u64, access) {
        Ok(p) => {
            chain.push(p, len as usize, writable);
            Ok(())
        }
        Err(XlateError::Unmapped { .. }) | Err(XlateError::Discontiguous { .. }) => {
            space.for_each_piece(guard, addr, len as u64, access, |p, n| chain.push(p, n, writable))?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
