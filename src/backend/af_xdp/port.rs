//! [`AfXdpPort`]: one queue pair's XDP socket as a [`Port`].
//!
//! Frames never leave the UMEM on their way through the port: the poll
//! thread copies a driver TX chain straight into a free TX frame
//! (`tx_slot`), and copies a received frame straight out of the UMEM into
//! the driver's RX chain (`rx_peek`). RX frames go back to the fill ring
//! when consumed; TX frames come back through the completion ring.
//!
//! Syscalls: none per frame. `tx_flush` kicks the kernel (one `sendto`
//! per burst) only when the TX ring's need_wakeup flag is set; `rx_flush`
//! kicks (`recvfrom`) only when the fill ring's flag is set; the socket's
//! error is read once before each sleep.
//!
//! Link: while the link watch sees the interface down, TX frames are
//! dropped (counted) as a NIC without carrier drops them. A socket whose
//! interface was deleted fails (logged and counted once, through
//! [`PortLink`]); the watch opens a new socket and program when an
//! interface of that name is back, and the port takes them over on its
//! next pass.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;
use serde::Serialize;

use nix::errno::Errno;
use nix::poll::PollFlags;

use super::ring::XdpDesc;
use super::xsk::Xsk;
use super::Attachment;
use crate::backend::link::PortLink;
use crate::backend::{FrameMeta, Port, PortFrame, PortWake};
use crate::dataplane::stats::bump;

macro_rules! port_counters {
    ($($(#[$m:meta])* $field:ident),* $(,)?) => {
        /// Counters of one AF_XDP port, written only by the poll thread that
        /// owns it (the kernel's own drop counters are copied in when the
        /// port is dropped).
        #[derive(Debug, Default)]
        pub struct AfXdpCounters { $($(#[$m])* pub $field: AtomicU64,)* }

        /// A snapshot of [`AfXdpCounters`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct AfXdpStats { $($(#[$m])* pub $field: u64,)* }

        impl AfXdpCounters {
            pub fn snapshot(&self) -> AfXdpStats {
                AfXdpStats { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

port_counters!(
    /// Frames handed to the kernel through the TX ring.
    tx_frames,
    /// sendto() calls the TX ring's need_wakeup flag asked for.
    tx_kicks,
    /// Kicks the kernel could not finish (completion ring full, qdisc
    /// busy); retried on the next flush.
    tx_kick_busy,
    /// Frames received through the RX ring and handed to the device.
    rx_frames,
    /// recvfrom() calls the fill ring's need_wakeup flag asked for.
    rx_kicks,
    /// Descriptors from the kernel outside this socket's frames (dropped).
    bad_descs,
    /// Times a kick found the interface down (sendto: ENETDOWN).
    link_down,
    /// Kernel: frames dropped for this socket (not for a full ring).
    kernel_rx_dropped,
    /// Kernel: frames dropped because the RX ring was full.
    kernel_rx_ring_full,
    /// Kernel: times the fill ring was empty when a frame arrived.
    kernel_fill_ring_empty,
    /// Kernel: invalid TX descriptors.
    kernel_tx_invalid,
);

/// While the interface is down, retry the TX kick at most this often.
const DOWN_RETRY: Duration = Duration::from_millis(5);

/// What a port runs on: one socket with its UMEM, and (shared by the
/// ports of one interface) the program that feeds it. The watch hands a
/// new one over when the interface is back after being deleted.
pub struct XskSide {
    pub(super) xsk: Xsk,
    /// Keeps the program attached while any port of the interface uses
    /// it; dropped after the socket (field order).
    pub(super) attachment: Arc<Attachment>,
}

/// One queue pair's AF_XDP socket. Owned by that pair's poll thread.
pub struct AfXdpPort {
    pub(super) side: XskSide,
    link: PortLink<XskSide>,
    queue: u32,
    frame: u64,
    /// RX frames are `[0, rx_end)` of the UMEM, TX frames `[rx_end, len)`.
    rx_end: u64,
    umem_len: u64,
    /// Free TX frames (a stack; capacity = TX frames, never grows).
    tx_free: Vec<u64>,
    /// The free frame `tx_slot` handed out, until `tx_commit`.
    tx_slot: Option<u64>,
    /// Where TX frames go while the link is down or the port failed.
    scratch: Box<[u8]>,
    /// The received frame `rx_peek` returned, until `rx_consume`.
    rx_cur: Option<XdpDesc>,
    /// Frames consumed (and put on the fill ring) since the last flush.
    rx_taken: u32,
    armed: bool,
    /// A kick said ENETDOWN: do not retry before this.
    retry_at: Option<Instant>,
    counters: Arc<CachePadded<AfXdpCounters>>,
}

impl AfXdpPort {
    pub(super) fn new(side: XskSide, queue: u32, link: PortLink<XskSide>) -> AfXdpPort {
        let frame = side.xsk.geometry.frame as u64;
        let mut p = AfXdpPort {
            queue,
            frame,
            rx_end: 0,
            umem_len: 0,
            tx_free: Vec::new(),
            tx_slot: None,
            scratch: vec![0u8; frame as usize].into_boxed_slice(),
            rx_cur: None,
            rx_taken: 0,
            armed: false,
            retry_at: None,
            counters: Arc::new(CachePadded::new(AfXdpCounters::default())),
            link,
            side,
        };
        p.reset();
        p
    }

    /// Frame bookkeeping for the current socket's UMEM. Allocates: only at
    /// setup and when a new socket is taken over.
    fn reset(&mut self) {
        let g = self.side.xsk.geometry;
        self.frame = g.frame as u64;
        self.rx_end = g.rx_frames as u64 * self.frame;
        self.umem_len = self.side.xsk.umem.len() as u64;
        self.tx_free = Vec::with_capacity(g.tx_frames as usize);
        // Popped from the end: hand out the lowest frames first.
        for i in (0..g.tx_frames as u64).rev() {
            self.tx_free.push(self.rx_end + i * self.frame);
        }
        self.tx_slot = None;
        self.rx_cur = None;
        self.rx_taken = 0;
        self.retry_at = None;
    }

    /// Take a new socket the watch opened after the interface came back.
    #[inline]
    fn take_new(&mut self) {
        if let Some(side) = self.link.take_new() {
            self.take_side(side);
        }
    }

    #[cold]
    fn take_side(&mut self, side: XskSide) {
        // The old socket (and its hold on the old program) goes here.
        self.side = side;
        self.reset();
        log::info!("af-xdp {} queue {}: using the new socket", self.iface(), self.queue);
    }

    /// The interface's NIC queue this port is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the kernel runs this socket in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.side.xsk.zero_copy
    }

    /// The port's counters (readable from any thread).
    pub fn counters(&self) -> Arc<CachePadded<AfXdpCounters>> {
        self.counters.clone()
    }

    fn iface(&self) -> &str {
        &self.side.attachment.iface
    }

    /// No frames move: the port failed, or the watch saw the link down.
    #[inline]
    fn blocked(&self) -> bool {
        self.link.failed() || self.link.down()
    }

    /// The socket is unbound (interface deleted): logged and counted once
    /// by the link, which also wakes the watch.
    #[cold]
    fn fail(&mut self, op: &str, e: &io::Error) {
        self.tx_slot = None;
        self.rx_cur = None;
        self.link.fail(op, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
    }

    /// Move completed TX frames back to the free stack.
    #[inline]
    fn reclaim(&mut self) {
        let n = self.side.xsk.comp.available();
        if n == 0 {
            return;
        }
        for i in 0..n {
            let a = self.side.xsk.comp.get(i);
            // Only frames of our TX area, each at most once (the stack
            // cannot hold more than the TX frames, so it never grows).
            if a >= self.rx_end && a < self.umem_len && self.tx_free.len() < self.tx_free.capacity() {
                self.tx_free.push(a & !(self.frame - 1));
            } else {
                bump(&self.counters.bad_descs, 1);
            }
        }
        self.side.xsk.comp.advance(n);
        self.side.xsk.comp.release();
    }

    /// Ask the kernel to send what the TX ring holds, if it wants to be
    /// asked.
    #[inline]
    fn kick_tx(&mut self) {
        if let Some(t) = self.retry_at {
            if Instant::now() < t {
                return;
            }
        }
        if self.side.xsk.tx.outstanding() == 0 || !self.side.xsk.tx.needs_wakeup() {
            return;
        }
        match self.side.xsk.kick_tx() {
            Ok(()) => {
                bump(&self.counters.tx_kicks, 1);
                self.retry_at = None;
            }
            Err(e) => self.kick_error(e),
        }
    }

    #[cold]
    fn kick_error(&mut self, e: io::Error) {
        match e.raw_os_error() {
            // Completion ring full, socket budget spent, qdisc busy: the
            // frames stay in the TX ring and the next flush retries.
            Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                bump(&self.counters.tx_kick_busy, 1)
            }
            // Down: the frames wait in the ring until it is up (the watch
            // will soon see it down, and then new frames are dropped).
            Some(libc::ENETDOWN) => {
                if self.retry_at.is_none() {
                    bump(&self.counters.link_down, 1);
                }
                self.retry_at = Some(Instant::now() + DOWN_RETRY);
            }
            // Not bound any more: the interface was unregistered.
            Some(libc::ENXIO) | Some(libc::ENODEV) => self.fail("sendto", &e),
            // Anything else: counted, retried a little later.
            _ => {
                self.link.count(|h| &h.tx_errors, 1);
                self.retry_at = Some(Instant::now() + DOWN_RETRY);
            }
        }
    }

    /// A received descriptor points inside one of our RX frames.
    #[inline]
    fn valid_rx(&self, d: &XdpDesc) -> bool {
        let base = d.addr & !(self.frame - 1);
        d.len > 0 && base < self.rx_end && (d.addr - base) + d.len as u64 <= self.frame && d.options == 0
    }
}

impl Port for AfXdpPort {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        if self.blocked() {
            return Some(&mut self.scratch);
        }
        if self.tx_slot.is_none() {
            if self.tx_free.is_empty() {
                self.reclaim();
            }
            self.tx_slot = Some(self.tx_free.pop()?);
        }
        let a = self.tx_slot.expect("set above");
        // SAFETY: `a` is a TX frame inside the UMEM mapping (checked when it
        // entered the free stack) that neither the kernel nor any other slot
        // holds: it left the completion ring (or was never sent) and is
        // ours until tx_commit puts it on the TX ring. The borrow ends
        // before any other &mut self call.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.side.xsk.umem.as_ptr().add(a as usize), self.frame as usize)
        })
    }

    #[inline]
    fn tx_commit(&mut self, len: usize, _meta: FrameMeta) {
        // `offloads()` is false: frames come fully checksummed, unsegmented.
        if self.blocked() {
            self.link.count(|h| &h.tx_link_dropped, 1);
            return;
        }
        let Some(a) = self.tx_slot.take() else { return };
        // Frames in the TX ring are a subset of the frames not free, so a
        // free frame means the ring has room; checked anyway (cheap).
        if self.side.xsk.tx.free(1) == 0 {
            self.tx_free.push(a);
            self.link.count(|h| &h.tx_errors, 1);
            return;
        }
        self.side.xsk.tx.push(XdpDesc { addr: a, len: len.min(self.frame as usize) as u32, options: 0 });
        bump(&self.counters.tx_frames, 1);
    }

    #[inline]
    fn tx_flush(&mut self) {
        self.take_new();
        if self.link.failed() {
            return;
        }
        self.side.xsk.tx.submit();
        // Also retries a kick that found the kernel busy last time.
        self.kick_tx();
        self.reclaim();
    }

    #[inline]
    fn rx_fill(&mut self) {
        // The RX ring is shared memory: nothing to read in. Only a new
        // socket to take over, if the watch made one.
        self.take_new();
    }

    #[inline]
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        if self.link.failed() {
            return None;
        }
        while self.rx_cur.is_none() {
            if self.side.xsk.rx.available() == 0 {
                return None;
            }
            let d = self.side.xsk.rx.get(0);
            if self.valid_rx(&d) {
                self.rx_cur = Some(d);
            } else {
                // Not one of our frames: skip it (its frame, if any, is lost
                // to the pool; the kernel never does this).
                bump(&self.counters.bad_descs, 1);
                self.link.count(|h| &h.rx_dropped, 1);
                self.side.xsk.rx.advance(1);
                self.rx_taken += 1;
            }
        }
        let d = self.rx_cur.expect("set above");
        // SAFETY: valid_rx checked that [addr, addr + len) lies in one RX
        // frame of the UMEM mapping. The kernel wrote it before publishing
        // the descriptor (Acquire in `available`) and does not touch the
        // frame again until rx_consume returns it through the fill ring,
        // which cannot happen while this borrow of self lives.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.side.xsk.umem.as_ptr().add(d.addr as usize), d.len as usize) };
        Some(PortFrame { bytes, meta: FrameMeta::PLAIN })
    }

    #[inline]
    fn rx_consume(&mut self) {
        let Some(d) = self.rx_cur.take() else { return };
        self.side.xsk.rx.advance(1);
        self.rx_taken += 1;
        bump(&self.counters.rx_frames, 1);
        // Every RX frame is either in the fill ring, with the kernel, or
        // here, and the fill ring holds all of them: there is room.
        if self.side.xsk.fill.free(1) > 0 {
            self.side.xsk.fill.push(d.addr & !(self.frame - 1));
        } else {
            bump(&self.counters.bad_descs, 1);
        }
    }

    #[inline]
    fn rx_flush(&mut self) {
        if self.rx_taken == 0 || self.link.failed() {
            return;
        }
        self.rx_taken = 0;
        self.side.xsk.rx.release();
        self.side.xsk.fill.submit();
        if self.side.xsk.fill.needs_wakeup() {
            bump(&self.counters.rx_kicks, 1);
            if let Err(e) = self.side.xsk.kick_rx() {
                if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) {
                    self.fail("recvfrom", &e);
                }
            }
        }
    }

    #[inline]
    fn rx_pending(&self) -> usize {
        if self.link.failed() {
            return 0;
        }
        self.side.xsk.rx.peek_available() as usize
    }

    fn wake(&self) -> Option<PortWake<'_>> {
        // Only while armed: a readable XSK stays readable while frames wait
        // (and a handover eventfd until taken), and a poll thread that is
        // not going to take them must not spin on them.
        if !self.armed {
            return None;
        }
        if self.link.failed() {
            return Some(PortWake { fd: self.link.handover_fd(), events: PollFlags::POLLIN });
        }
        Some(PortWake { fd: self.side.xsk.owned_fd().as_fd(), events: PollFlags::POLLIN })
    }

    fn stats(&self) -> Option<std::sync::Arc<dyn crate::ops::PortStats>> {
        Some(self.link.stats("af-xdp"))
    }

    fn arm_rx_wakeup(&mut self) -> bool {
        self.armed = true;
        if self.link.failed() {
            return false;
        }
        // Once per sleep: an unregistered interface leaves ENETDOWN here.
        if let Some(e) = self.side.xsk.take_error() {
            self.fail("the socket", &e);
            return false;
        }
        // Frames still in the TX ring: a kick (poll() would also send them
        // in copy mode, but not in zero-copy mode).
        if !self.link.down() {
            self.kick_tx();
        }
        self.rx_pending() > 0
    }

    fn disarm_rx_wakeup(&mut self) {
        self.armed = false;
    }
}

impl Drop for AfXdpPort {
    fn drop(&mut self) {
        if let Some(s) = self.side.xsk.statistics() {
            let c = &self.counters;
            c.kernel_rx_dropped.store(s.rx_dropped, Ordering::Relaxed);
            c.kernel_rx_ring_full.store(s.rx_ring_full, Ordering::Relaxed);
            c.kernel_fill_ring_empty.store(s.rx_fill_ring_empty_descs, Ordering::Relaxed);
            c.kernel_tx_invalid.store(s.tx_invalid_descs, Ordering::Relaxed);
            let lost = s.rx_dropped + s.rx_ring_full;
            if lost > 0 {
                self.link.count(|h| &h.rx_dropped, lost);
                log::warn!(
                    "af-xdp {} queue {}: the kernel dropped {lost} frame(s) for this socket ({} with the RX ring full, \
                     fill ring found empty {} times)",
                    self.iface(),
                    self.queue,
                    s.rx_ring_full,
                    s.rx_fill_ring_empty_descs
                );
            }
        }
        log::debug!("af-xdp {} queue {}: closed; {:?}", self.iface(), self.queue, self.counters.snapshot());
    }
}
