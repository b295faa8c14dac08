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
        if self.tx.runnable() {
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
        let rx_wanted = self.port.rx_pending() > 0;
        let mut more = false;
        {
            let g = reader.read();
            let tx_runnable = self.tx.runnable();
            let rx_runnable = self.rx.runnable();
            for (queue, wanted) in [(&mut self.tx, tx_runnable), (&mut self.rx, rx_runnable && rx_wanted)] {
                if !wanted {
                    continue;
                }
                let q = queue.q.as_mut().expect("runnable");
                match q.refresh(&self.space, &g).and_then(|_| q.enable_notifications()) {
                    Ok(m) => more |= m,
                    Err(e) => {
                        let vq = queue.vq;
                        fail_queue(&*self.device, &self.stats, queue, vq, e);
                        return;
                    }
                }
            }
        }
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
