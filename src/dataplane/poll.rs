//! Poll threads: one per data vq group (a queue pair), pinned to a core.
//!
//! The thread owns its two queues, its port and its counters; nothing here
//! takes a lock or makes a syscall per packet. A burst is: one Acquire load
//! of avail.idx, up to `burst` chains, one Release store of used.idx, and
//! an interrupt only if the driver asked for one. Between bursts the thread
//! announces a QSBR quiescent state, which is what lets the slow path swap
//! translation tables under it.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crossbeam::channel::Receiver;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;

use super::mailbox::{Ack, Command, QueuePosition, Request};
use super::stats::{bump, PairCell};
use super::{rx_vq, tx_vq, IdlePolicy, IDLE_SLEEP};
use crate::backend::Port;
use crate::mem::{AddressSpace, ReadGuard, Reader};
use crate::net::filter::FilterReader;
use crate::net::hdr::HDR_LEN;
use crate::vduse::VduseDevice;
use crate::virtq::{Direction, QueueError, SplitQueue};

/// The header the device puts in front of every received frame: no
/// offloads, one buffer (num_buffers = 1 at byte 10).
const RX_HDR: [u8; HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// One queue of the pair and whether it may run.
struct Queue {
    vq: u32,
    q: Option<SplitQueue>,
    enabled: bool,
    /// Stopped for good after a malformed ring, until reset.
    failed: bool,
}

impl Queue {
    fn new(vq: u32) -> Self {
        Queue { vq, q: None, enabled: false, failed: false }
    }
    fn runnable(&self) -> bool {
        self.enabled && !self.failed && self.q.is_some()
    }
    fn position(&self) -> Option<QueuePosition> {
        self.q.as_ref().map(|q| QueuePosition { vq: self.vq, last_avail: q.last_avail(), used: q.used_idx() })
    }
}

/// Everything a poll thread needs, handed over at spawn.
pub struct PollSetup {
    pub pair: u16,
    pub device: Arc<dyn VduseDevice>,
    pub space: Arc<AddressSpace>,
    pub reader: Reader,
    pub mailbox: Receiver<Request>,
    pub wake: Arc<EventFd>,
    pub kick_rx: Arc<EventFd>,
    pub kick_tx: Arc<EventFd>,
    pub port: Box<dyn Port>,
    pub filter: FilterReader,
    pub stats: Arc<PairCell>,
    pub burst: usize,
    pub idle: IdlePolicy,
    pub core: Option<usize>,
}

pub struct PollThread {
    pair: u16,
    device: Arc<dyn VduseDevice>,
    space: Arc<AddressSpace>,
    mailbox: Receiver<Request>,
    wake: Arc<EventFd>,
    kick_rx: Arc<EventFd>,
    kick_tx: Arc<EventFd>,
    port: Box<dyn Port>,
    filter: FilterReader,
    stats: Arc<PairCell>,
    burst: usize,
    idle: IdlePolicy,
    rx: Queue,
    tx: Queue,
    suspended: bool,
    pair_active: bool,
}

enum Flow {
    Continue,
    Exit,
}

impl PollThread {
    pub fn spawn(setup: PollSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
        let name = format!("vduse-poll-{}", setup.pair);
        std::thread::Builder::new().name(name).spawn(move || {
            if let Some(core) = setup.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn!("pair {}: could not pin to core {core}", setup.pair);
                }
            }
            let reader = setup.reader;
            let t = PollThread {
                pair: setup.pair,
                device: setup.device,
                space: setup.space,
                mailbox: setup.mailbox,
                wake: setup.wake,
                kick_rx: setup.kick_rx,
                kick_tx: setup.kick_tx,
                port: setup.port,
                filter: setup.filter,
                stats: setup.stats,
                burst: setup.burst.max(1),
                idle: setup.idle,
                rx: Queue::new(rx_vq(setup.pair)),
                tx: Queue::new(tx_vq(setup.pair)),
                suspended: false,
                pair_active: true,
            };
            t.run(reader);
        })
    }

    fn active(&self) -> bool {
        !self.suspended && self.pair_active && (self.rx.runnable() || self.tx.runnable())
    }

    fn run(mut self, mut reader: Reader) {
        let mut idle_polls = 0u32;
        loop {
            while let Ok((cmd, reply)) = self.mailbox.try_recv() {
                if let Flow::Exit = self.handle(cmd, &reply, &mut reader) {
                    return;
                }
            }
            if !self.active() {
                reader.offline();
                self.wait(false);
                continue;
            }
            let work = {
                let g = reader.read();
                self.poll_once(&g)
            };
            reader.quiescent();
            if work > 0 {
                idle_polls = 0;
                continue;
            }
            match self.idle {
                IdlePolicy::Busy => std::hint::spin_loop(),
                IdlePolicy::Adaptive { spins } => {
                    idle_polls += 1;
                    if idle_polls >= spins {
                        idle_polls = 0;
                        self.sleep(&mut reader);
                    } else if idle_polls % 64 == 0 {
                        // Share a core politely while spinning.
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command, reply: &crossbeam::channel::Sender<Ack>, reader: &mut Reader) -> Flow {
        let mut flow = Flow::Continue;
        match cmd {
            Command::Start { rx, tx } => {
                self.rx = Queue::new(self.rx.vq);
                self.tx = Queue::new(self.tx.vq);
                self.rx.enabled = rx.is_some();
                self.tx.enabled = tx.is_some();
                self.rx.q = rx.map(SplitQueue::new);
                self.tx.q = tx.map(SplitQueue::new);
                self.suspended = false;
                self.pair_active = true;
                log::debug!("pair {}: started (rx {}, tx {})", self.pair, self.rx.enabled, self.tx.enabled);
                // Poll mode: tell the driver not to kick while we spin.
                let g = reader.read();
                self.with_queues(&g, |q| q.disable_notifications());
            }
            Command::Stop => {
                self.rx = Queue::new(self.rx.vq);
                self.tx = Queue::new(self.tx.vq);
                self.suspended = false;
            }
            Command::Suspend => self.suspended = true,
            Command::Resume => self.suspended = false,
            Command::SetAddressSpace(space) => {
                // The rings are re-translated in the new space on next use.
                self.space = space;
                for q in [&mut self.rx, &mut self.tx] {
                    if let Some(q) = q.q.as_mut() {
                        q.unmap();
                    }
                }
            }
            Command::SetQueueEnabled { vq, enabled } => {
                if vq == self.rx.vq {
                    self.rx.enabled = enabled;
                } else if vq == self.tx.vq {
                    self.tx.enabled = enabled;
                }
            }
            Command::EnableQueue(cfg) => {
                let queue = if cfg.index == self.rx.vq { &mut self.rx } else { &mut self.tx };
                // Same rings and base as the stopped queue: resume at its
                // kept position (what GET_VQ_STATE reported meanwhile); any
                // other configuration is a new queue. A failed queue stays
                // failed until reset.
                if queue.q.as_ref().map(|q| *q.config()) != Some(cfg) {
                    queue.q = Some(SplitQueue::new(cfg));
                }
                queue.enabled = true;
                log::debug!(
                    "pair {}: vq {} enabled (size {}, base {})",
                    self.pair,
                    cfg.index,
                    cfg.size,
                    cfg.avail_base
                );
                let g = reader.read();
                self.with_queues(&g, |q| q.disable_notifications());
            }
            Command::SetPairActive(on) => self.pair_active = on,
            Command::Positions => {}
            Command::Exit => flow = Flow::Exit,
        }
        let _ = reply.send(Ack { rx: self.rx.position(), tx: self.tx.position() });
        flow
    }

    /// Map rings (if needed) and apply `f` to every runnable queue.
    fn with_queues(&mut self, g: &ReadGuard<'_>, mut f: impl FnMut(&mut SplitQueue)) {
        for which in [0, 1] {
            let queue = if which == 0 { &mut self.rx } else { &mut self.tx };
            if !queue.runnable() {
                continue;
            }
            let q = queue.q.as_mut().expect("runnable");
            match q.refresh(&self.space, g) {
                Ok(()) => f(q),
                Err(e) => {
                    let vq = queue.vq;
                    fail_queue(&*self.device, &self.stats, queue, vq, e);
                }
            }
        }
    }

    fn poll_once(&mut self, g: &ReadGuard<'_>) -> usize {
        let mut work = 0;
        let mut tx_via_port = true;
        if let (Some(swap), true, true) = (self.port.reflect(), self.rx.runnable(), self.tx.runnable()) {
            // Reflector: drain what waits in the port first, so the direct
            // path (which needs an empty port to keep order) gets its turn.
            if self.port.rx_pending() > 0 {
                work += self.process_rx(g);
            }
            if self.port.rx_pending() == 0 && self.tx.runnable() && self.rx.runnable() {
                let (n, needs_port) = self.process_reflect(g, swap);
                work += n;
                // Out of RX buffers: leave TX on its ring (the driver's TX
                // ring is the buffer) rather than copying twice via the port.
                tx_via_port = needs_port;
            }
        }
        if self.tx.runnable() && tx_via_port {
            work += self.process_tx(g);
        }
        if self.rx.runnable() && self.port.rx_pending() > 0 {
            work += self.process_rx(g);
        }
        work
    }

    /// Driver TX -> port.
    fn process_tx(&mut self, g: &ReadGuard<'_>) -> usize {
        let PollThread { device, space, port, stats, burst, tx, .. } = self;
        let q = tx.q.as_mut().expect("runnable");
        let r = (|| -> Result<usize, QueueError> {
            q.refresh(space, g)?;
            let n = (q.pending()? as usize).min(*burst);
            let mut done = 0;
            let (mut frames, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
            while done < n {
                let Some(slot) = port.tx_slot() else {
                    bump(&stats.tx_backpressure, 1);
                    break;
                };
                let head = q.pop_head()?;
                let cap = slot.len();
                let dst = slot.as_mut_ptr();
                let mut skip = HDR_LEN;
                let mut len = 0usize;
                let mut oversize = false;
                q.walk_chain(head, Direction::DeviceReads, space, g, |mut p, mut n, _| {
                    if skip > 0 {
                        let s = skip.min(n);
                        skip -= s;
                        // SAFETY: s <= n, so p + s stays within (or one past) the piece.
                        p = unsafe { p.add(s) };
                        n -= s;
                    }
                    if n == 0 || oversize {
                        return;
                    }
                    if len + n > cap {
                        oversize = true;
                        return;
                    }
                    // SAFETY: p is valid for n readable bytes (translated by
                    // walk_chain); dst has cap >= len + n bytes.
                    unsafe { std::ptr::copy_nonoverlapping(p, dst.add(len), n) };
                    len += n;
                })?;
                if oversize || skip > 0 || len == 0 {
                    dropped += 1;
                } else {
                    port.tx_commit(len);
                    frames += 1;
                    bytes += len as u64;
                }
                // Device-readable only: nothing written, used length 0.
                q.push_used(head, 0);
                done += 1;
            }
            bump(&stats.tx_frames, frames);
            bump(&stats.tx_bytes, bytes);
            if dropped > 0 {
                bump(&stats.tx_dropped, dropped);
            }
            if q.publish_used() {
                bump(&stats.irqs, 1);
                let _ = device.inject_vq_irq(tx.vq);
            }
            port.tx_flush();
            Ok(done)
        })();
        match r {
            Ok(n) => n,
            Err(e) => {
                let vq = tx.vq;
                // Chains already consumed are still published.
                if q.publish_used() {
                    let _ = device.inject_vq_irq(vq);
                }
                port.tx_flush();
                fail_queue(&**device, stats, tx, vq, e);
                0
            }
        }
    }

    /// Reflector fast path: each TX chain is copied straight into an RX
    /// chain (one copy instead of two through the port's slot). Stops at
    /// the first frame it cannot place (no RX buffer, a chain of many
    /// pieces): `process_tx` then moves the rest through the port as usual,
    /// and this path waits until the port is empty again, so frames keep
    /// their order.
    fn process_reflect(&mut self, g: &ReadGuard<'_>, swap: bool) -> (usize, bool) {
        let PollThread { device, space, stats, burst, tx, rx, filter, .. } = self;
        let (tq, rq) = (tx.q.as_mut().expect("runnable"), rx.q.as_mut().expect("runnable"));
        let filter = filter.current();
        // Which queue broke, if one did.
        let mut failed: Option<(bool, QueueError)> = None;
        let mut done = 0usize;
        let mut needs_port = false;
        let (mut frames, mut bytes, mut filtered, mut dropped) = (0u64, 0u64, 0u64, 0u64);
        // Frames taken off TX (counted as sent even when RX then fails).
        let (mut sent, mut sent_bytes) = (0u64, 0u64);
        'burst: {
            if let Err(e) = tq.refresh(space, g).and_then(|_| tq.pending().map(|_| ())) {
                failed = Some((true, e));
                break 'burst;
            }
            if let Err(e) = rq.refresh(space, g) {
                failed = Some((false, e));
                break 'burst;
            }
            let n = match tq.pending() {
                Ok(n) => (n as usize).min(*burst),
                Err(e) => {
                    failed = Some((true, e));
                    break 'burst;
                }
            };
            let mut avail = match rq.pending() {
                Ok(a) => a as usize,
                Err(e) => {
                    failed = Some((false, e));
                    break 'burst;
                }
            };
            while done < n && avail > 0 {
                // Gather the TX frame's pieces (after the 12-byte header).
                let mut src = Pieces::default();
                let head = match tq.peek_head() {
                    Ok(h) => h,
                    Err(e) => {
                        failed = Some((true, e));
                        break 'burst;
                    }
                };
                let mut skip = HDR_LEN;
                if let Err(e) = tq.walk_chain(head, Direction::DeviceReads, space, g, |mut p, mut n, _| {
                    if skip > 0 {
                        let s = skip.min(n);
                        skip -= s;
                        // SAFETY: s <= n keeps p inside (or one past) the piece.
                        p = unsafe { p.add(s) };
                        n -= s;
                    }
                    src.push(p, n);
                }) {
                    failed = Some((true, e));
                    break 'burst;
                }
                if src.overflow {
                    // Many-piece chain: leave it for the slot path.
                    needs_port = true;
                    break;
                }
                let _ = tq.pop_head();
                done += 1;
                if skip > 0 || src.total == 0 || src.total > crate::backend::SLOT_SIZE {
                    tq.push_used(head, 0);
                    dropped += 1;
                    continue;
                }
                sent += 1;
                sent_bytes += src.total as u64;
                // The reflected frame's first 12 bytes: addresses, swapped.
                let mut macs = [0u8; 12];
                src.read_prefix(&mut macs);
                if swap {
                    crate::backend::mac_swap(&mut macs);
                }
                let mut ethhdr = [0u8; 18];
                let eth_len = src.total.min(18);
                src.read_prefix(&mut ethhdr[..eth_len]);
                ethhdr[..12].copy_from_slice(&macs);
                if !filter.accepts(&ethhdr[..eth_len]) {
                    tq.push_used(head, 0);
                    filtered += 1;
                    continue;
                }
                let rhead = match rq.pop_head() {
                    Ok(h) => h,
                    Err(e) => {
                        tq.push_used(head, 0);
                        failed = Some((false, e));
                        break 'burst;
                    }
                };
                avail -= 1;
                let total = HDR_LEN + src.total;
                let mut off = 0usize;
                let r = rq.walk_chain(rhead, Direction::DeviceWrites, space, g, |p, n, _| {
                    let mut at = 0;
                    while at < n && off < total {
                        // SAFETY: p is valid for n device-writable bytes and
                        // the copy stays below n; copy_out reads in bounds.
                        let k = unsafe { copy_out(&RX_HDR, &macs, &src, off, p.add(at), n - at) };
                        at += k;
                        off += k;
                    }
                });
                tq.push_used(head, 0);
                match r {
                    Err(e) => {
                        failed = Some((false, e));
                        break 'burst;
                    }
                    Ok(_) if off < total => {
                        rq.push_used(rhead, 0);
                        bump(&stats.rx_dropped_small, 1);
                    }
                    Ok(_) => {
                        rq.push_used(rhead, total as u32);
                        frames += 1;
                        bytes += src.total as u64;
                    }
                }
            }
        }
        bump(&stats.tx_frames, sent);
        bump(&stats.tx_bytes, sent_bytes);
        bump(&stats.rx_frames, frames);
        bump(&stats.rx_bytes, bytes);
        bump(&stats.reflected, frames);
        if filtered > 0 {
            bump(&stats.rx_filtered, filtered);
        }
        if dropped > 0 {
            bump(&stats.tx_dropped, dropped);
        }
        if tq.publish_used() {
            bump(&stats.irqs, 1);
            let _ = device.inject_vq_irq(tx.vq);
        }
        if rq.publish_used() {
            bump(&stats.irqs, 1);
            let _ = device.inject_vq_irq(rx.vq);
        }
        if let Some((is_tx, e)) = failed {
            let queue = if is_tx { &mut *tx } else { &mut *rx };
            let vq = queue.vq;
            fail_queue(&**device, stats, queue, vq, e);
        }
        (done, needs_port)
    }

    /// Port -> driver RX.
    fn process_rx(&mut self, g: &ReadGuard<'_>) -> usize {
        let PollThread { device, space, port, stats, burst, rx, filter, .. } = self;
        let q = rx.q.as_mut().expect("runnable");
        let filter = filter.current();
        let r = (|| -> Result<usize, QueueError> {
            q.refresh(space, g)?;
            let mut avail = q.pending()? as usize;
            let mut done = 0;
            let (mut frames, mut bytes, mut filtered, mut small) = (0u64, 0u64, 0u64, 0u64);
            while done < *burst {
                let Some(frame) = port.rx_peek() else { break };
                if !filter.accepts(frame) {
                    port.rx_consume();
                    filtered += 1;
                    continue;
                }
                if avail == 0 {
                    bump(&stats.rx_no_buffer, 1);
                    break;
                }
                let head = q.pop_head()?;
                avail -= 1;
                let total = HDR_LEN + frame.len();
                let mut off = 0usize;
                let info = q.walk_chain(head, Direction::DeviceWrites, space, g, |p, n, _| {
                    let mut done_here = 0;
                    while done_here < n && off < total {
                        let (src, at) = if off < HDR_LEN { (&RX_HDR[..], off) } else { (frame, off - HDR_LEN) };
                        let k = (src.len() - at).min(n - done_here);
                        // SAFETY: p is valid for n device-writable bytes and
                        // done_here + k <= n; src[at..at + k] is in bounds.
                        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(at), p.add(done_here), k) };
                        done_here += k;
                        off += k;
                    }
                })?;
                let _ = info;
                if off < total {
                    // Buffers too small for the frame: hand them back empty.
                    q.push_used(head, 0);
                    small += 1;
                } else {
                    q.push_used(head, total as u32);
                    frames += 1;
                    bytes += frame.len() as u64;
                }
                port.rx_consume();
                done += 1;
            }
            bump(&stats.rx_frames, frames);
            bump(&stats.rx_bytes, bytes);
            if filtered > 0 {
                bump(&stats.rx_filtered, filtered);
            }
            if small > 0 {
                bump(&stats.rx_dropped_small, small);
            }
            if q.publish_used() {
                bump(&stats.irqs, 1);
                let _ = device.inject_vq_irq(rx.vq);
            }
            port.rx_flush();
            Ok(done + filtered as usize)
        })();
        match r {
            Ok(n) => n,
            Err(e) => {
                let vq = rx.vq;
                if q.publish_used() {
                    let _ = device.inject_vq_irq(vq);
                }
                port.rx_flush();
                fail_queue(&**device, stats, rx, vq, e);
                0
            }
        }
    }

    /// Adaptive idle: re-enable notifications, re-check, and sleep on the
    /// kick eventfds, the mailbox wake-up and the port's wake-up.
    fn sleep(&mut self, reader: &mut Reader) {
        // A reflector with an empty port holds TX back until RX buffers
        // arrive, so it wants RX kicks too.
        let reflector = self.port.reflect().is_some() && self.port.rx_pending() == 0;
        let rx_wanted = self.port.rx_pending() > 0 || reflector;
        let (mut tx_more, mut rx_more) = (false, false);
        {
            let g = reader.read();
            let tx_runnable = self.tx.runnable();
            let rx_runnable = self.rx.runnable();
            for (is_tx, wanted) in [(true, tx_runnable), (false, rx_runnable && rx_wanted)] {
                if !wanted {
                    continue;
                }
                let queue = if is_tx { &mut self.tx } else { &mut self.rx };
                let q = queue.q.as_mut().expect("runnable");
                match q.refresh(&self.space, &g).and_then(|_| q.enable_notifications()) {
                    Ok(m) if is_tx => tx_more = m,
                    Ok(m) => rx_more = m,
                    Err(e) => {
                        let vq = queue.vq;
                        fail_queue(&*self.device, &self.stats, queue, vq, e);
                        return;
                    }
                }
            }
        }
        // A reflector has work only when a TX frame and an RX buffer are both
        // there; otherwise any pending side with the port's frames is work.
        let mut more = if reflector && self.rx.runnable() { tx_more && rx_more } else { tx_more || rx_more };
        if self.port.arm_rx_wakeup() {
            more = true;
        }
        if !more {
            reader.offline();
            bump(&self.stats.sleeps, 1);
            self.wait(rx_wanted);
            bump(&self.stats.wakeups, 1);
        }
        self.port.disarm_rx_wakeup();
        let g = reader.read();
        self.with_queues(&g, |q| q.disable_notifications());
    }

    /// Block until a kick, a mailbox command, a port wake-up or the idle
    /// timeout. The caller is offline (holds no table pointer).
    fn wait(&self, rx_kicks: bool) {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        if self.tx.runnable() {
            fds.push(PollFd::new(self.kick_tx.as_fd(), PollFlags::POLLIN));
        }
        if self.rx.runnable() && rx_kicks {
            fds.push(PollFd::new(self.kick_rx.as_fd(), PollFlags::POLLIN));
        }
        let port_fd: Option<BorrowedFd<'_>> = self.port.rx_wake_fd();
        if let Some(fd) = port_fd {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(IDLE_SLEEP.as_millis() as u16));
        // Drain whatever fired; eventfds are non-blocking.
        let _ = self.wake.read();
        let _ = self.kick_tx.read();
        let _ = self.kick_rx.read();
    }
}

/// Up to a few host pieces of one TX frame, for the reflector path.
const MAX_PIECES: usize = 8;

#[derive(Default)]
struct Pieces {
    p: [(usize, usize); MAX_PIECES],
    n: usize,
    total: usize,
    overflow: bool,
}

impl Pieces {
    #[inline]
    fn push(&mut self, p: *mut u8, n: usize) {
        if n == 0 {
            return;
        }
        if self.n == MAX_PIECES {
            self.overflow = true;
            return;
        }
        self.p[self.n] = (p as usize, n);
        self.n += 1;
        self.total += n;
    }

    /// Copy the first `out.len()` bytes (callers ask for at most `total`).
    fn read_prefix(&self, out: &mut [u8]) {
        let mut got = 0;
        for &(p, n) in &self.p[..self.n] {
            if got == out.len() {
                break;
            }
            let k = n.min(out.len() - got);
            // SAFETY: each piece was translated for n readable bytes under
            // the guard the caller still holds; k <= n.
            unsafe { std::ptr::copy_nonoverlapping(p as *const u8, out.as_mut_ptr().add(got), k) };
            got += k;
        }
    }
}

/// Copy bytes of the virtual stream `[hdr | macs | frame[12..]]` from
/// offset `off` to `dst`, at most `room` bytes and at most to the end of
/// the current part. Returns the bytes copied.
///
/// # Safety
/// `dst` must be valid for `room` writes; the pieces of `src` valid for reads.
#[inline]
unsafe fn copy_out(hdr: &[u8; HDR_LEN], macs: &[u8; 12], src: &Pieces, off: usize, dst: *mut u8, room: usize) -> usize {
    let copy = |from: *const u8, avail: usize| {
        let k = avail.min(room);
        // SAFETY: the caller's contract: dst valid for room >= k bytes.
        unsafe { std::ptr::copy_nonoverlapping(from, dst, k) };
        k
    };
    if off < HDR_LEN {
        return copy(hdr.as_ptr().add(off), HDR_LEN - off);
    }
    let f = off - HDR_LEN;
    if f < 12 {
        return copy(macs.as_ptr().add(f), 12 - f);
    }
    // Find the piece holding frame byte f.
    let mut base = 0;
    for &(p, n) in &src.p[..src.n] {
        if f < base + n {
            return copy((p as *const u8).add(f - base), n - (f - base));
        }
        base += n;
    }
    0
}

/// Stop one queue after the driver broke it, and tell the driver.
#[cold]
fn fail_queue(device: &dyn VduseDevice, stats: &PairCell, queue: &mut Queue, vq: u32, e: QueueError) {
    queue.failed = true;
    bump(&stats.queue_errors, 1);
    let shown = device.signal_needs_reset();
    log::error!(
        "vq {vq}: {e}; queue stopped{}",
        if shown { ", device needs reset" } else { " (this kernel cannot show NEEDS_RESET; reset the device)" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_header_says_one_buffer() {
        assert_eq!(u16::from_le_bytes([RX_HDR[10], RX_HDR[11]]), 1);
        assert_eq!(RX_HDR.len(), 12);
    }
}
