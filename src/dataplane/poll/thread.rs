//! The poll thread's life: spawn and pin, the main loop, mailbox commands,
//! adaptive idle (re-enable notifications, sleep on the kick eventfds), and
//! supervision.
//!
//! Supervision: the loop runs under `catch_unwind`, inside the thread, so a
//! panic (a bug; the driver's input is never a reason to panic) costs the
//! pair, not the process. The thread keeps its port and mailbox: it logs
//! the panic, counts it (`panics`), shows the pair as failed (`failed` = 1
//! in the pair's stats), asks the driver for a reset (NEEDS_RESET), forgets
//! its queues and goes on answering mailbox commands, so the slow path
//! keeps answering control messages. The next Stop (device reset) clears
//! the failure; the next Start runs the pair again.

use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam::channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::super::cycles::{self, BusyClock};
use super::super::mailbox::{Ack, Command};
use super::super::stats::bump;
use super::super::{rx_vq, tx_vq, IdlePolicy, IDLE_SLEEP};
use super::burst::{fail_queue, IRQ_DECIDE_EVERY};
use super::{PollSetup, PollThread, Queue};
use crate::mem::{AddressSpace, ReadGuard, Reader};
use crate::virtq::{PackedQueue, QueueConfig, Ring, RingFormat, SplitQueue, VirtQueue};

enum Flow {
    Continue,
    Exit,
}

impl PollThread {
    /// The thread's state from its setup, and its QSBR reader: what
    /// `spawn` runs (the fuzz entry point steps it by hand instead).
    pub(super) fn new(setup: PollSetup) -> (PollThread, Reader) {
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
            stats: setup.stats.clone(),
            burst: setup.burst.max(1),
            idle: setup.idle,
            rx: Queue::with_log(rx_vq(setup.pair), setup.log.as_ref()),
            tx: Queue::with_log(tx_vq(setup.pair), setup.log.as_ref()),
            format: RingFormat::Split,
            suspended: false,
            pair_active: true,
            crashed: false,
            busy: BusyClock::resume(&setup.stats),
            offloads: super::offload::Offloads::new(),
            handoff: setup.handoff,
            started: false,
            undecided_polls: 0,
        };
        (t, setup.reader)
    }

    pub fn spawn(setup: PollSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
        let name = format!("vduse-poll-{}", setup.pair);
        std::thread::Builder::new().name(name).spawn(move || {
            crate::ops::log::set_device(setup.device.name());
            if let Some(core) = setup.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn!("pair {}: could not pin to core {core}", setup.pair);
                }
            }
            let (t, reader) = PollThread::new(setup);
            t.supervise(reader);
        })
    }

    /// DRIVER_OK: fresh queues on `rx`/`tx` in `space`, the negotiated
    /// features in force (what `Command::Start` does before its checks;
    /// the fuzz entry point calls it too).
    pub(super) fn start(
        &mut self,
        rx: Option<QueueConfig>,
        tx: Option<QueueConfig>,
        space: Arc<AddressSpace>,
        active: bool,
        features: u64,
    ) {
        self.rx = self.rx.cleared();
        self.tx = self.tx.cleared();
        self.rx.enabled = rx.is_some();
        self.tx.enabled = tx.is_some();
        // Both queues of a device share the negotiated format.
        self.format = rx.or(tx).map(|c| c.format).unwrap_or_default();
        self.rx.q = rx.map(VirtQueue::new);
        self.tx.q = tx.map(VirtQueue::new);
        self.space = space;
        self.suspended = false;
        self.pair_active = active;
        self.offloads.start(features, &mut *self.port);
        self.started = true;
    }

    /// Run the loop until `Exit`; a panic stops the pair (see the module
    /// docs) and the loop resumes serving the mailbox only.
    fn supervise(mut self, mut reader: Reader) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.run(&mut reader))) {
                Ok(()) => return,
                // An injected crash (reconnect tests): the thread just ends,
                // like a killed process, touching nothing.
                Err(payload) if crate::persist::fault::is_crash(&*payload) => return,
                Err(payload) => {
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    self.crash(&what, &mut reader);
                }
            }
        }
    }

    #[cold]
    fn crash(&mut self, what: &str, reader: &mut Reader) {
        // The unwound guard held no table any more; leave the read side so
        // no grace period waits for this thread.
        reader.offline();
        self.crashed = true;
        self.rx = self.rx.cleared();
        self.tx = self.tx.cleared();
        bump(&self.stats.panics, 1);
        self.stats.failed.store(1, Ordering::Relaxed);
        let shown = self.device.signal_needs_reset();
        log::error!(
            "pair {}: poll thread panicked ({what}); pair stopped until the device is reset{}",
            self.pair,
            if shown { ", device needs reset" } else { "" }
        );
    }

    /// Started, healthy, but a pair the driver does not use (fewer pairs
    /// than the port has): pass the port's frames on.
    fn forwards(&self) -> bool {
        self.started
            && !self.crashed
            && !self.suspended
            && !self.pair_active
            && self.handoff.enabled()
            && !self.port.pair_bound()
    }

    fn active(&self) -> bool {
        !self.crashed && !self.suspended && self.pair_active && (self.rx.runnable() || self.tx.runnable())
    }

    fn run(&mut self, reader: &mut Reader) {
        let mut idle_polls = 0u32;
        loop {
            #[cfg(test)]
            crate::persist::fault::point(self.device.name(), crate::persist::fault::Stage::PollLoop);
            // `is_empty` is two loads of the channel's head and tail (SeqCst
            // loads: plain loads on x86); an empty `try_recv` issues a SeqCst
            // fence, once per iteration. A command posted after the check is
            // seen at the next iteration, or wakes `wait` through the eventfd
            // that `MailboxTx::post` writes after queueing it.
            if !self.mailbox.is_empty() {
                // Commands may unmap or reset the rings: decide first.
                self.settle_interrupts(reader);
                while let Ok((cmd, reply)) = self.mailbox.try_recv() {
                    if let Flow::Exit = self.handle(cmd, &reply, reader) {
                        return;
                    }
                }
            }
            if !self.active() {
                self.settle_interrupts(reader);
                reader.offline();
                if self.forwards() {
                    // A pair the driver does not use: its port's frames go
                    // to the pairs it does (no guest memory touched).
                    if self.forward_port() > 0 {
                        continue;
                    }
                    // A frame blocked at a full pair (RSS back-pressure):
                    // that pair wakes us when it makes room.
                    let room = self.handoff.arm_room();
                    if room == Some(true) {
                        continue;
                    }
                    if !self.port.arm_rx_wakeup() || room.is_some() {
                        let _ = self.wait(false, true);
                    }
                    self.port.disarm_rx_wakeup();
                } else {
                    let _ = self.wait(false, false);
                }
                continue;
            }
            let t0 = cycles::now();
            let (work, frames) = {
                let g = reader.read();
                self.poll_once(&g)
            };
            // One QSBR quiescent state per burst: one load, no fence (a
            // store only when a writer asked for a grace period).
            reader.quiescent();
            if work > 0 && (self.rx.undecided || self.tx.undecided) {
                // Busy: interrupt decisions wait a few iterations (see
                // `burst`), counted in the busy cycles.
                self.undecided_polls += 1;
                if self.undecided_polls >= IRQ_DECIDE_EVERY {
                    self.settle_interrupts(reader);
                }
            }
            // testpmd's --record-core-cycles: only iterations that moved frames.
            self.busy.end(t0, frames, &self.stats);
            if work > 0 {
                idle_polls = 0;
                continue;
            }
            // Idle: the interrupt decisions the last bursts put off.
            self.settle_interrupts(reader);
            match self.idle {
                IdlePolicy::Busy => std::hint::spin_loop(),
                IdlePolicy::Adaptive { spins } => {
                    idle_polls += 1;
                    if idle_polls >= spins {
                        // A sleep that timed out with nothing to do is followed by one
                        // poll, not another round of spins: an idle device must not
                        // spin for `spins` polls every IDLE_SLEEP (with a few idle
                        // devices that kept a 2-CPU guest busy).
                        idle_polls = if self.sleep(reader) { 0 } else { spins - 1 };
                    } else if idle_polls % 64 == 0 {
                        // Share a core politely while spinning.
                        std::thread::yield_now();
                    }
                }
            }
        }
    }

    /// Make the interrupt decisions that bursts put off (see `burst`): one
    /// fence, then each queue with an undecided publish reads the driver's
    /// suppression state. A queue whose rings no longer map has nothing to
    /// decide (its next burst fails it, or a reset forgets it).
    fn settle_interrupts(&mut self, reader: &mut Reader) {
        if !self.rx.undecided && !self.tx.undecided {
            return;
        }
        self.undecided_polls = 0;
        // Our used index stores before the reads below (see
        // `Ring::publish_used`).
        std::sync::atomic::fence(Ordering::SeqCst);
        let g = reader.read();
        for queue in [&mut self.rx, &mut self.tx] {
            if !std::mem::take(&mut queue.undecided) {
                continue;
            }
            let Some(q) = queue.q.as_mut() else { continue };
            if queue.failed || q.refresh(&self.space, &g).is_err() {
                continue;
            }
            if q.interrupt_wanted() {
                bump(&self.stats.irqs, 1);
                let _ = self.device.inject_vq_irq(queue.vq);
            }
        }
    }

    /// Queue state for the stats reader (cold: after mailbox commands only).
    fn publish_state(&self) {
        let f =
            |q: &Queue| crate::ops::state::QueueFlags { ready: q.q.is_some(), enabled: q.enabled, failed: q.failed };
        self.stats.state.publish(f(&self.rx), f(&self.tx), self.suspended, self.pair_active);
    }

    fn handle(&mut self, cmd: Command, reply: &Sender<Ack>, reader: &mut Reader) -> Flow {
        let mut flow = Flow::Continue;
        match cmd {
            Command::Start { rx, tx, space, active, features } => {
                self.start(rx, tx, space, active, features);
                if self.crashed {
                    log::warn!("pair {}: start refused until the device is reset (the pair failed)", self.pair);
                } else {
                    self.stats.started.store(1, Ordering::Relaxed);
                    log::debug!("pair {}: started (rx {}, tx {})", self.pair, self.rx.enabled, self.tx.enabled);
                    // Poll mode: tell the driver not to kick while we spin.
                    let g = reader.read();
                    self.with_queues(&g, |q| q.disable_notifications());
                }
            }
            Command::Stop => {
                self.rx = self.rx.cleared();
                self.tx = self.tx.cleared();
                self.started = false;
                // Frames other pairs handed over belong to the old driver.
                self.handoff.drain();
                self.offloads.stop();
                self.suspended = false;
                self.stats.started.store(0, Ordering::Relaxed);
                if self.crashed {
                    self.crashed = false;
                    self.stats.failed.store(0, Ordering::Relaxed);
                    log::info!("pair {}: restarted by reset after a failure", self.pair);
                }
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
                    queue.q = Some(VirtQueue::new(cfg));
                }
                queue.enabled = true;
                log::debug!(
                    "pair {}: vq {} enabled (size {}, base {})",
                    self.pair,
                    cfg.index,
                    cfg.size,
                    cfg.avail_base
                );
                if !self.crashed {
                    let g = reader.read();
                    self.with_queues(&g, |q| q.disable_notifications());
                }
            }
            Command::SetPairActive(on) => self.pair_active = on,
            Command::Positions => {}
            Command::Exit => flow = Flow::Exit,
        }
        self.publish_state();
        let _ = reply.send(Ack { rx: self.rx.position(), tx: self.tx.position() });
        flow
    }

    /// Map rings (if needed) and apply `f` to every runnable queue.
    fn with_queues(&mut self, g: &ReadGuard<'_>, mut f: impl FnMut(&mut VirtQueue)) {
        for which in [0, 1] {
            let queue = if which == 0 { &mut self.rx } else { &mut self.tx };
            if !queue.runnable() {
                continue;
            }
            let q = queue.q.as_mut().expect("runnable");
            match q.refresh(&self.space, g) {
                Ok(()) => f(q),
                Err(e) => fail_queue(&*self.device, &self.stats, queue, e),
            }
        }
    }

    /// One pass over the pair: (chains and port frames handled, frames
    /// moved as `busy_frames` counts them: each frame once, so frames a
    /// reflecting port hands back from TX are not counted again on RX).
    /// The one place the ring format is chosen: the paths below are
    /// compiled once per format, so nothing per chain dispatches on it.
    #[inline]
    fn poll_once(&mut self, g: &ReadGuard<'_>) -> (usize, u64) {
        match self.format {
            RingFormat::Split => self.poll_rings::<SplitQueue>(g),
            RingFormat::Packed => self.poll_rings::<PackedQueue>(g),
        }
    }

    /// One iteration on rings of format `R`. Not inlined, so each format's
    /// copy of the paths is one function (and can be checked to hold no
    /// call into the other format's code).
    #[inline(never)]
    fn poll_rings<R: Ring>(&mut self, g: &ReadGuard<'_>) -> (usize, u64) {
        self.sync_guest_offloads();
        self.port.rx_fill();
        let mut work = 0;
        let mut from_port = 0;
        let mut tx_via_port = true;
        // The direct path carries plain frames in one RX buffer each.
        // RSS picks queues per frame: not on the direct path.
        let steers = self.filter.current().rss();
        let reflector = self.port.reflect().filter(|_| !self.offloads.blocks_reflect() && !steers);
        if let (Some(swap), true, true) = (reflector, self.rx.runnable(), self.tx.runnable()) {
            // Reflector: drain what waits in the port first, so the direct
            // path (which needs an empty port to keep order) gets its turn.
            if self.port.rx_pending() > 0 {
                from_port += self.process_rx::<R>(g);
            }
            if self.port.rx_pending() == 0 && self.tx.runnable() && self.rx.runnable() {
                work += self.process_reflect::<R>(g, swap);
                // Out of RX buffers: TX stays on its ring (the driver's TX
                // ring is the buffer) rather than copying twice via the port.
                tx_via_port = false;
            }
        }
        if self.tx.runnable() && tx_via_port {
            work += self.process_tx::<R>(g);
        }
        if self.rx.runnable() && (self.port.rx_pending() > 0 || self.handoff.pending()) {
            from_port += self.process_rx::<R>(g);
        }
        let frames = work as u64 + if reflector.is_some() { 0 } else { from_port as u64 };
        (work + from_port, frames)
    }

    /// Adaptive idle: re-enable notifications, re-check, and sleep on the
    /// kick eventfds, the mailbox wake-up and the port's wake-up. Returns
    /// false only when it slept until the idle timeout and nothing fired.
    fn sleep(&mut self, reader: &mut Reader) -> bool {
        // A reflector with an empty port holds TX back until RX buffers
        // arrive, so it wants RX kicks too.
        let reflector = self.port.reflect().is_some()
            && !self.offloads.blocks_reflect()
            && !self.filter.current().rss()
            && self.port.rx_pending() == 0;
        // Frames other pairs handed over wait for RX buffers like the
        // port's; `arm` also asks those pairs to wake us.
        let inbox = self.handoff.arm();
        // A port frame blocked at a full pair (RSS back-pressure): RX
        // buffers are no work until that pair makes room, and it wakes us
        // then (`arm_room` asked it to); room now is work.
        let room = self.handoff.arm_room();
        let steer_wait = room == Some(false);
        let rx_wanted = self.port.rx_pending() > 0 || reflector || inbox;
        let (mut tx_more, mut rx_more) = (false, false);
        {
            // Right after the loop's quiescent state: a table loaded here
            // follows that state's Acquire of the QSBR epoch (see
            // crate::mem::qsbr), like the next burst's would.
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
                    // Chains too few for the frame waiting (MRG_RXBUF) are
                    // not work; the kick that adds buffers is.
                    Ok(m) => rx_more = m && !self.offloads.rx_short && (!steer_wait || inbox),
                    Err(e) => {
                        fail_queue(&*self.device, &self.stats, queue, e);
                        self.handoff.disarm();
                        return true;
                    }
                }
            }
        }
        // A reflector has work only when a TX frame and an RX buffer are both
        // there; otherwise any pending side with the port's frames is work.
        let mut more = if reflector && self.rx.runnable() { tx_more && rx_more } else { tx_more || rx_more };
        let port_ready = self.port.arm_rx_wakeup();
        if (port_ready && !steer_wait) || room == Some(true) {
            more = true;
        }
        let mut woken = true;
        if !more {
            reader.offline();
            bump(&self.stats.sleeps, 1);
            woken = self.wait(rx_wanted, true);
            bump(&self.stats.wakeups, 1);
        }
        self.port.disarm_rx_wakeup();
        self.handoff.disarm();
        let g = reader.read();
        self.with_queues(&g, |q| q.disable_notifications());
        woken
    }

    /// Block until a kick, a mailbox command, a port wake-up (with
    /// `port_events`) or the idle timeout. The caller is offline (holds no
    /// table pointer). Returns false when the timeout passed with nothing
    /// ready.
    fn wait(&self, rx_kicks: bool, port_events: bool) -> bool {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
        fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
        if self.tx.runnable() {
            fds.push(PollFd::new(self.kick_tx.as_fd(), PollFlags::POLLIN));
        }
        if self.rx.runnable() && rx_kicks {
            fds.push(PollFd::new(self.kick_rx.as_fd(), PollFlags::POLLIN));
        }
        // A stopped pair takes no frames, so a port with frames waiting (a
        // readable socket) would end every wait at once: it waits on the
        // mailbox and the timeout only. The port is still told the thread
        // is about to block.
        let port = self.port.wake();
        if let (Some(w), true) = (port, port_events) {
            fds.push(PollFd::new(w.fd, w.events));
        }
        // Short of MRG buffers, the buffers the driver adds may come without
        // a kick (with EVENT_IDX the event index lies before the rewound
        // chains): look again after 1 ms, not the full idle sleep.
        let ms = if self.offloads.rx_short { 1 } else { IDLE_SLEEP.as_millis() as u16 };
        let fired = nix::poll::poll(&mut fds, PollTimeout::from(ms));
        // Drain whatever fired; eventfds are non-blocking. A kick eventfd
        // holds the number of kicks since it was last read (VDUSE signals it
        // once per kick): the stats' `kicks`.
        let _ = self.wake.read();
        let kicks = self.kick_tx.read().unwrap_or(0) + self.kick_rx.read().unwrap_or(0);
        if kicks > 0 {
            bump(&self.stats.kicks, kicks);
        }
        !matches!(fired, Ok(0))
    }
}
