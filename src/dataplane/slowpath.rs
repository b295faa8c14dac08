//! The slow-path thread: VDUSE control messages, the control virtqueue,
//! IOTLB upkeep, and the poll threads' lifecycle.
//!
//! It never blocks on the fast path for long: poll threads acknowledge
//! mailbox commands at their next chain boundary (microseconds), and QSBR
//! grace periods are bounded, so messages are answered within milliseconds
//! even under full load.
//!
//! And when a poll thread does not answer (wedged, or gone), every wait is
//! still bounded, so a reply stays far below the kernel's 30 s message
//! timeout: commands to several threads go out at once and share one
//! deadline ([`mailbox::broadcast`], [`ACK_TIMEOUT`]), an address-space
//! clear is one grace period ([`crate::mem::iotlb::SYNC_TIMEOUT`]) for all
//! spaces, and a message waits for at most two such phases (DRIVER_OK:
//! start, then roll back on failure; reset: stop, then clear), about 5 s in
//! the worst case. Every clean-up step runs even when an earlier one
//! failed.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::ctrlq;
use super::device::{DeviceError, DeviceOptions, Layout};
use super::mailbox::{self, broadcast, mailbox, Command, MailboxTx, ACK_TIMEOUT};
use super::poll::{PollSetup, PollThread};
use super::stats::{bump, PairCell, SlowPathCounters};
use super::{rx_vq, tx_vq};
use crate::backend::link::LinkWatch;
use crate::backend::Port;
use crate::mem::{Iotlb, Reader, RegionSource};
use crate::net::config::{NetConfig, MAC_OFFSET, STATUS_OFFSET, VIRTIO_NET_S_LINK_UP};
use crate::net::ctrl::{CtrlEffect, CtrlState};
use crate::net::features;
use crate::net::filter::{FilterCell, RxFilter};
use crate::uapi::vduse::{REQUEST_SIZE, VDUSE_F_QUEUE_READY};
use crate::uapi::virtio::status;
use crate::vduse::request::VqState;
use crate::vduse::{Request, Response, VduseDevice};
use crate::virtq::{QueueConfig, Ring, RingFormat, RingPos, VirtQueue};

mod config_status;
mod reattach;
pub use reattach::{Persist, RestoreError};

struct PollHandle {
    mailbox: MailboxTx,
    join: JoinHandle<()>,
}

/// The control queue's state on the slow path.
struct Cvq {
    vq: u32,
    group: u32,
    q: Option<VirtQueue>,
    /// Served (ready). A queue disabled after DRIVER_OK keeps `q`, so its
    /// position survives for GET_VQ_STATE and a later re-enable.
    enabled: bool,
    failed: bool,
    reader: Option<Reader>,
    kick: Arc<EventFd>,
}

pub struct SlowPath {
    dev: Arc<dyn VduseDevice>,
    layout: Layout,
    iotlb: Arc<Iotlb>,
    status: u8,
    features: u64,
    /// Current ASID of each vq group. The kernel keeps these across reset.
    group_asid: Vec<u32>,
    threads: Vec<PollHandle>,
    /// Kick eventfd per vq, registered with VQ_SETUP_KICKFD.
    kicks: Vec<Arc<EventFd>>,
    /// Per vq: handed to the dataplane since DRIVER_OK (ready then, or
    /// enabled later). Kernels without VDUSE_F_QUEUE_READY send no message
    /// when a queue becomes ready after DRIVER_OK; the others are polled.
    vq_started: Vec<bool>,
    last_ready_poll: Instant,
    cvq: Option<Cvq>,
    ctrl: CtrlState,
    mac: [u8; 6],
    filter: Arc<FilterCell>,
    config: NetConfig,
    suspended: bool,
    stats: Arc<SlowPathCounters>,
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    cmd_buf: Vec<u8>,
    /// What the stats reader sees of this thread's state.
    ops: crate::ops::control::ControlPublisher,
    /// The link of the host interface the ports use, if any.
    link: Option<Box<dyn LinkWatch>>,
    /// The link as the status word shows it (always up without a watch).
    link_up: bool,
    /// Where operator announce requests arrive, and the count acted on.
    ops_cell: Arc<crate::ops::control::ControlCell>,
    announce_seen: u64,
    /// The state log (reconnect), and whether its last write failed.
    log: Option<Arc<crate::persist::StateLog>>,
    log_failed: bool,
    /// Per vq, the configuration handed to the dataplane, for the log.
    queue_log: Vec<crate::persist::QueueRecord>,
    /// Per vq, the start of a queue resumed from the log, until reset.
    restored_base: Vec<Option<u16>>,
}

/// How often queues not ready at DRIVER_OK are looked at on kernels that do
/// not announce them (no VDUSE_F_QUEUE_READY).
const READY_POLL: Duration = Duration::from_millis(100);

fn eventfd() -> Result<Arc<EventFd>, DeviceError> {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map(Arc::new).map_err(DeviceError::EventFd)
}

impl SlowPath {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dev: Arc<dyn VduseDevice>,
        layout: Layout,
        opts: &DeviceOptions,
        ports: Vec<Box<dyn Port>>,
        pair_stats: Vec<Arc<PairCell>>,
        stats: Arc<SlowPathCounters>,
        stop: Arc<EventFd>,
        stopping: Arc<AtomicBool>,
        control: Arc<crate::ops::control::ControlCell>,
        link: Option<Box<dyn LinkWatch>>,
        persist: Persist,
    ) -> Result<SlowPath, DeviceError> {
        let source: Arc<dyn RegionSource> = Arc::new(dev.clone());
        let iotlb = Arc::new(Iotlb::new(layout.nas, source));
        let kicks = (0..layout.vq_num()).map(|_| eventfd()).collect::<Result<Vec<_>, _>>()?;
        let ctrl = CtrlState::new(opts.mac, 0);
        let filter = FilterCell::new(RxFilter::from_state(&ctrl, 0));
        let mut threads = Vec::new();
        let wakes = ports.iter().map(|_| eventfd()).collect::<Result<Vec<_>, _>>()?;
        // RSS and unused pairs hand frames to other pairs' threads.
        let handoffs = crate::dataplane::poll::Handoff::mesh(&wakes);
        for ((pair, port), (wake, handoff)) in ports.into_iter().enumerate().zip(wakes.into_iter().zip(handoffs)) {
            let pair = pair as u16;
            let (tx, rx) = mailbox(wake.clone());
            let setup = PollSetup {
                pair,
                device: dev.clone(),
                space: iotlb.space(0).expect("asid 0 exists").clone(),
                reader: iotlb.qsbr().register(),
                mailbox: rx,
                wake,
                kick_rx: kicks[rx_vq(pair) as usize].clone(),
                kick_tx: kicks[tx_vq(pair) as usize].clone(),
                port,
                filter: filter.reader(),
                stats: pair_stats[pair as usize].clone(),
                burst: opts.burst,
                idle: opts.idle,
                core: (!opts.cores.is_empty()).then(|| opts.cores[pair as usize % opts.cores.len()]),
                log: persist.log.clone(),
                handoff,
            };
            let join = PollThread::spawn(setup).map_err(DeviceError::Thread)?;
            threads.push(PollHandle { mailbox: tx, join });
        }
        let cvq = match layout.cvq() {
            Some(vq) => Some(Cvq {
                vq,
                group: layout.group_of(vq),
                q: None,
                enabled: false,
                failed: false,
                reader: Some(iotlb.qsbr().register()),
                kick: kicks[vq as usize].clone(),
            }),
            None => None,
        };
        let cfg_pairs = if layout.features & features::MQ != 0 { layout.pairs } else { 1 };
        let mut config = NetConfig::new(opts.mac, cfg_pairs, opts.mtu);
        config.status = VIRTIO_NET_S_LINK_UP;
        let link_up = !link.as_ref().is_some_and(|l| !l.is_up());
        if !link_up {
            config.status &= !VIRTIO_NET_S_LINK_UP;
            if let Err(e) = dev.set_config(STATUS_OFFSET as u32, &config.status.to_le_bytes()) {
                log::warn!("setting the link down in config space: {e}");
            }
            log::warn!("{}: the interface is down: link down", layout.name);
        }
        let announce_seen = control.announce_requests();
        let nvqs = kicks.len();
        let mut sp = SlowPath {
            group_asid: vec![0; layout.ngroups.max(1) as usize],
            dev,
            layout,
            iotlb,
            status: 0,
            features: 0,
            threads,
            vq_started: vec![false; kicks.len()],
            last_ready_poll: Instant::now(),
            kicks,
            cvq,
            ctrl,
            mac: opts.mac,
            filter,
            config,
            suspended: false,
            stats,
            stop,
            stopping,
            cmd_buf: Vec::with_capacity(ctrlq::MAX_COMMAND),
            ops: crate::ops::control::ControlPublisher::new(control.clone()),
            link,
            link_up,
            ops_cell: control,
            announce_seen,
            log: persist.log,
            log_failed: false,
            queue_log: vec![Default::default(); nvqs],
            restored_base: vec![None; nvqs],
        };
        sp.register_kickfds();
        if let Some(rec) = persist.restore {
            match sp.restore(&rec) {
                Ok(()) => sp.after_reattach(),
                Err(e) => sp.restore_failed(&e),
            }
        }
        sp.persist();
        Ok(sp)
    }

    /// The kernel drops kick eventfds on every reset, after the device
    /// replied to SET_STATUS 0 (`vduse_vdpa_reset`: message, then the local
    /// reset releases each kickfd). So they are registered again at
    /// DRIVER_OK, not while handling the reset; a kick latched meanwhile
    /// is signalled by the kernel on registration.
    fn register_kickfds(&self) {
        for (vq, k) in self.kicks.iter().enumerate() {
            if let Err(e) = self.dev.set_vq_kickfd(vq as u32, Some(k.as_fd())) {
                log::warn!("vq {vq}: VQ_SETUP_KICKFD failed: {e}");
            }
        }
    }

    pub fn run(mut self) {
        let mut buf = [0u8; REQUEST_SIZE];
        let mut last_reclaim = Instant::now();
        let mut read_error_logged = false;
        while !self.stopping.load(Ordering::Acquire) {
            #[cfg(test)]
            crate::persist::fault::point(&self.layout.name, crate::persist::fault::Stage::SlowLoop);
            let mut err = false;
            {
                let mut fds = vec![
                    PollFd::new(self.dev.request_fd(), PollFlags::POLLIN),
                    PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(c) = &self.cvq {
                    fds.push(PollFd::new(c.kick.as_fd(), PollFlags::POLLIN));
                }
                if let Some(l) = &self.link {
                    fds.push(PollFd::new(l.wake_fd(), PollFlags::POLLIN));
                }
                if nix::poll::poll(&mut fds, PollTimeout::from(100u16)).is_ok() {
                    let rev = fds[0].revents().unwrap_or(PollFlags::empty());
                    err = rev.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL);
                }
            }
            let _ = self.stop.read();
            loop {
                match self.dev.read_request(&mut buf) {
                    Ok(Some(n)) => {
                        read_error_logged = false;
                        #[cfg(test)]
                        crate::persist::fault::point(&self.layout.name, crate::persist::fault::Stage::MessageRead);
                        let resp = self.handle_message(&buf[..n]);
                        // Logged before the driver hears of it (module docs
                        // of crate::persist).
                        self.persist();
                        #[cfg(test)]
                        crate::persist::fault::point(&self.layout.name, crate::persist::fault::Stage::MessageApplied);
                        if let Some(resp) = resp {
                            if let Err(e) = self.dev.write_response(&resp.encode()) {
                                log::error!("writing reply to request {}: {e}", resp.request_id);
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if !read_error_logged {
                            log::error!("reading control messages: {e}");
                            read_error_logged = true;
                        }
                        err = true;
                        break;
                    }
                }
            }
            let cvq_kicked = self.cvq.as_ref().is_some_and(|c| c.kick.read().is_ok());
            // A kick on a control queue not started yet may be the first
            // sign that it became ready: look now rather than at the tick.
            if self.awaits_ready() && (cvq_kicked || self.last_ready_poll.elapsed() >= READY_POLL) {
                self.last_ready_poll = Instant::now();
                self.poll_ready();
            }
            self.serve_cvq();
            self.poll_link();
            self.poll_announce_requests();
            if last_reclaim.elapsed() > Duration::from_millis(200) {
                last_reclaim = Instant::now();
                for s in self.iotlb.spaces() {
                    let _ = s.reclaim();
                }
            }
            self.publish_ops();
            if err {
                // A broken device reports POLLERR forever; don't spin on it.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let acks = broadcast(self.threads.iter().map(|t| (&t.mailbox, Command::Exit)), Instant::now() + ACK_TIMEOUT);
        for (i, (t, ack)) in self.threads.drain(..).zip(acks).enumerate() {
            match ack {
                Ok(_) | Err(mailbox::MailboxError::Gone) => {
                    let _ = t.join.join();
                }
                // A wedged thread is left behind rather than hanging the exit.
                Err(e) => log::error!("pair {i}: not stopped at exit: {e}"),
            }
        }
    }

    /// Let the link state follow the port's interface: on a change, the
    /// status in config space and a config interrupt (virtio 1.3 §5.1.4).
    /// The interrupt only with STATUS negotiated (module `config_status`); before
    /// DRIVER_OK the driver reads the config space anyway when it starts.
    fn poll_link(&mut self) {
        let Some(up) = self.link.as_mut().and_then(|l| l.poll(Instant::now())) else { return };
        self.set_link(up);
    }

    /// Decode, apply and build the reply for one message.
    fn handle_message(&mut self, bytes: &[u8]) -> Option<Response> {
        bump(&self.stats.requests, 1);
        let (id, req) = match Request::parse(bytes, self.dev.api_version()) {
            Ok(x) => x,
            Err(e) => {
                bump(&self.stats.failed_replies, 1);
                // A truncated message still has an id if 8 bytes arrived.
                let id = e
                    .request_id()
                    .or_else(|| (bytes.len() >= 8).then(|| u32::from_le_bytes(bytes[4..8].try_into().unwrap())));
                log::warn!("control message refused: {e}{}", if id.is_some() { "; replying FAILED" } else { "" });
                return id.map(Response::failed);
            }
        };
        log::debug!("{}: request {id}: {req:?}", self.layout.name);
        let resp = match self.apply(req) {
            Ok(Some(state)) => {
                // What the driver is told (QEMU resumes a migrated queue from it).
                log::debug!("{}: request {id}: reply {state:?}", self.layout.name);
                Response::vq_state(id, state)
            }
            Ok(None) => Response::ok(id),
            Err(why) => {
                bump(&self.stats.failed_replies, 1);
                log::warn!("request {id} {req:?} failed: {why}");
                Response::failed(id)
            }
        };
        Some(resp)
    }

    fn apply(&mut self, req: Request) -> Result<Option<VqState>, String> {
        match req {
            Request::GetVqState { index } => {
                bump(&self.stats.get_vq_state, 1);
                self.vq_state(index).map(Some)
            }
            Request::SetStatus { status } => {
                bump(&self.stats.set_status, 1);
                self.set_status(status).map(|_| None)
            }
            Request::UpdateIotlb { asid, start, last } => {
                bump(&self.stats.update_iotlb, 1);
                let space = self.iotlb.space(asid).ok_or(format!("asid {asid} >= {}", self.layout.nas))?;
                space.invalidate(start, last).map_err(|e| e.to_string())?;
                Ok(None)
            }
            Request::SetVqGroupAsid { group, asid } => {
                bump(&self.stats.set_group_asid, 1);
                self.set_group_asid(group, asid).map(|_| None)
            }
            Request::SetVqReady { index, ready } => {
                bump(&self.stats.set_vq_ready, 1);
                self.set_vq_ready(index, ready).map(|_| None)
            }
            Request::Suspend => {
                bump(&self.stats.suspend, 1);
                let acks = self.to_all(|_| Command::Suspend);
                if let Some((i, e)) = first_error(&acks) {
                    return Err(format!("suspending pair {i}: {e}"));
                }
                self.suspended = true;
                Ok(None)
            }
        }
    }

    fn vq_state(&mut self, index: u32) -> Result<VqState, String> {
        if index >= self.layout.vq_num() {
            return Err(format!("vq {index} out of range"));
        }
        // (avail, used) in the format's encoding (packed: slot | wrap << 15).
        let pos = if self.cvq.as_ref().is_some_and(|c| c.vq == index) {
            self.cvq.as_ref().and_then(|c| c.q.as_ref()).map(|q| q.position())
        } else {
            let pair = (index / 2) as usize;
            let ack = self.threads[pair].mailbox.send(Command::Positions).map_err(|e| e.to_string())?;
            if index % 2 == 0 { ack.rx } else { ack.tx }.map(|p| (p.last_avail, p.used))
        };
        let (avail, used) = match pos {
            Some(p) => p,
            // Not started: the position is what the driver set (a packed
            // device starts its used position there too).
            None => {
                let a = self.dev.vq_info(index).map_err(|e| e.to_string())?.avail_index;
                (a, a)
            }
        };
        Ok(match RingFormat::of_features(self.negotiated()) {
            RingFormat::Split => VqState::Split { index, avail_index: avail },
            RingFormat::Packed => {
                let (a, u) = (RingPos::decode(avail), RingPos::decode(used));
                VqState::Packed { index, state: [a.wrap as u16, a.idx, u.wrap as u16, u.idx] }
            }
        })
    }

    /// The features the driver accepted: the latched value once
    /// FEATURES_OK was handled, else what the kernel reports now.
    fn negotiated(&self) -> u64 {
        if self.features != 0 {
            self.features
        } else {
            self.dev.negotiated_features().unwrap_or(0)
        }
    }

    fn set_status(&mut self, new: u8) -> Result<(), String> {
        if new == 0 {
            self.reset();
            return Ok(());
        }
        let old = self.status;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let f = self.dev.negotiated_features().map_err(|e| e.to_string())?;
            features::validate_driver_features(self.layout.features, f).map_err(|e| e.to_string())?;
            self.features = f;
            log::info!("{}: driver accepted features {}", self.layout.name, features::describe(f));
        }
        if new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            self.start_dataplane()?;
        }
        self.status = new;
        Ok(())
    }

    /// The queue as VQ_GET_INFO shows it, if it is ready.
    fn queue_config(&self, vq: u32) -> Result<Option<QueueConfig>, String> {
        let info = self.dev.vq_info(vq).map_err(|e| e.to_string())?;
        if !info.ready || info.num == 0 {
            return Ok(None);
        }
        self.config_of(&info).map(Some)
    }

    /// A queue's configuration from VQ_GET_INFO, whatever its ready flag
    /// (during a SET_VQ_READY message the kernel still shows the old one).
    fn config_of(&self, info: &crate::vduse::VqInfo) -> Result<QueueConfig, String> {
        let vq = info.index;
        if info.num == 0 || info.num > 32768 || !info.num.is_power_of_two() {
            return Err(format!("vq {vq}: size {} is not a power of two in 1..=32768", info.num));
        }
        Ok(QueueConfig {
            index: vq,
            size: info.num as u16,
            desc_addr: info.desc_addr,
            avail_addr: info.driver_addr,
            used_addr: info.device_addr,
            avail_base: info.avail_index,
            event_idx: self.features & features::EVENT_IDX != 0,
            indirect: self.features & features::INDIRECT_DESC != 0,
            format: RingFormat::of_features(self.features),
            in_order: self.features & features::IN_ORDER != 0,
        })
    }

    /// One command per poll thread, all at once, one shared deadline.
    fn to_all(&self, mut cmd: impl FnMut(u16) -> Command) -> Vec<Result<mailbox::Ack, mailbox::MailboxError>> {
        broadcast(
            self.threads.iter().enumerate().map(|(i, t)| (&t.mailbox, cmd(i as u16))),
            Instant::now() + ACK_TIMEOUT,
        )
    }

    fn start_dataplane(&mut self) -> Result<(), String> {
        if self.features == 0 {
            self.features = self.dev.negotiated_features().map_err(|e| e.to_string())?;
        }
        self.register_kickfds();
        // Everything that can fail on the driver's configuration is checked
        // before any pair starts.
        let mut configs = Vec::with_capacity(self.layout.pairs as usize);
        for pair in 0..self.layout.pairs {
            let asid = self.group_asid[self.layout.group_of(rx_vq(pair)) as usize];
            let space = self.iotlb.space(asid).expect("validated asid").clone();
            configs.push((self.queue_config(rx_vq(pair))?, self.queue_config(tx_vq(pair))?, space));
        }
        let cvq_negotiated = self.features & features::CTRL_VQ != 0;
        let cvq_cfg = match &self.cvq {
            Some(c) if cvq_negotiated => self.queue_config(c.vq)?,
            _ => None,
        };
        for (pair, (rx, tx, _)) in configs.iter().enumerate() {
            self.vq_started[rx_vq(pair as u16) as usize] = rx.is_some();
            self.vq_started[tx_vq(pair as u16) as usize] = tx.is_some();
        }
        // Write-ahead: a process that dies once a pair may have run must
        // find DRIVER_OK and the queues in the log (the kernel will deliver
        // this DRIVER_OK again, and it must not restart the rings at base).
        for c in
            configs.iter().flat_map(|(rx, tx, _)| [rx, tx]).chain([&cvq_cfg]).flatten().copied().collect::<Vec<_>>()
        {
            self.log_start(&c);
        }
        let saved = self.status;
        self.status |= status::DRIVER_OK;
        self.persist();
        self.status = saved;
        // Multiqueue starts with one pair until VQ_PAIRS_SET (spec 5.1.6.5.5).
        let mut configs = configs.into_iter();
        let acks = self.to_all(|pair| {
            let (rx, tx, space) = configs.next().expect("one config per pair");
            Command::Start { rx, tx, space, active: pair == 0, features: self.features }
        });
        if let Some((i, e)) = first_error(&acks) {
            // Roll back: no pair may keep running while the reply says
            // FAILED. A Start that timed out is still queued; the Stop
            // queued behind it undoes it.
            let stops = self.to_all(|_| Command::Stop);
            if let Some((j, e)) = first_error(&stops) {
                log::error!("rolling back DRIVER_OK: pair {j} did not stop: {e}");
            }
            log::warn!("{}: DRIVER_OK failed at pair {i} ({e}); every pair stopped again", self.layout.name);
            return Err(format!("starting pair {i}: {e}"));
        }
        self.ctrl = CtrlState::new(self.mac, self.features);
        if let Some(c) = self.cvq.as_mut() {
            c.q = cvq_cfg.map(VirtQueue::new);
            c.enabled = cvq_cfg.is_some();
            c.failed = false;
            self.vq_started[c.vq as usize] = cvq_cfg.is_some();
        }
        self.publish_filter();
        self.suspended = false;
        log::info!(
            "{}: driver bound (DRIVER_OK), dataplane started: features {}; vq group -> address space: {}",
            self.layout.name,
            features::describe(self.features),
            self.group_asid.iter().enumerate().map(|(g, a)| format!("{g}->{a}")).collect::<Vec<_>>().join(" ")
        );
        Ok(())
    }

    fn reset(&mut self) {
        // All pairs at once, one deadline; then every other step runs
        // whatever the pairs answered.
        let acks = self.to_all(|_| Command::Stop);
        if let Some((i, e)) = first_error(&acks) {
            log::error!("reset: stopping pair {i}: {e}");
        }
        if let Some(c) = self.cvq.as_mut() {
            c.q = None;
            c.enabled = false;
            c.failed = false;
        }
        self.vq_started.fill(false);
        self.restored_base.fill(None);
        self.queue_log.fill(Default::default());
        if let Some(log) = &self.log {
            log.clear_positions();
        }
        // A reset puts every group back in address space 0, as vDPA devices
        // do (and VDUSE itself after 7.3). A 7.3 kernel keeps its own table
        // and sends nothing, but QEMU relies on it: when it restarts the
        // device with every queue shadowed (live migration, x-svq) it maps
        // the control queue in ASID 0 without moving the group back.
        if self.group_asid.iter().any(|&a| a != 0) {
            log::info!("{}: reset: every vq group back to address space 0", self.layout.name);
            self.group_asid.fill(0);
        }
        if let Err(e) = self.iotlb.clear() {
            log::error!("reset: {e}; old mappings freed once the readers move on");
        }
        self.ctrl = CtrlState::new(self.mac, 0);
        self.publish_filter();
        self.status = 0;
        self.features = 0;
        self.suspended = false;
        // A pending announce ends with the driver that was asked.
        self.write_status(false);
        log::info!("{}: reset", self.layout.name);
    }

    fn set_group_asid(&mut self, group: u32, asid: u32) -> Result<(), String> {
        if group as usize >= self.group_asid.len() || group >= self.layout.ngroups.max(1) {
            return Err(format!("group {group} out of range"));
        }
        let space = self.iotlb.space(asid).ok_or(format!("asid {asid} >= {}", self.layout.nas))?.clone();
        if self.cvq.as_ref().is_some_and(|c| c.group == group) {
            // The CVQ is served on this thread: the next command uses it.
            if let Some(q) = self.cvq.as_mut().and_then(|c| c.q.as_mut()) {
                q.unmap();
            }
        } else {
            let deadline = Instant::now() + ACK_TIMEOUT;
            let layout = &self.layout;
            let members = self.threads.iter().enumerate().filter(|(p, _)| layout.group_of(rx_vq(*p as u16)) == group);
            let acks = broadcast(members.map(|(_, t)| (&t.mailbox, Command::SetAddressSpace(space.clone()))), deadline);
            if let Some((_, e)) = first_error(&acks) {
                return Err(format!("group {group}: {e}"));
            }
        }
        self.group_asid[group as usize] = asid;
        log::info!("{}: vq group {group} -> address space {asid}", self.layout.name);
        Ok(())
    }

    fn set_vq_ready(&mut self, index: u32, ready: bool) -> Result<(), String> {
        if index >= self.layout.vq_num() {
            return Err(format!("vq {index} out of range"));
        }
        if self.status & status::DRIVER_OK == 0 {
            // Applied at DRIVER_OK from VQ_GET_INFO.
            return Ok(());
        }
        if ready {
            // The kernel sets the queue's ready flag only after this reply,
            // so VQ_GET_INFO still says "not ready": take the rest from it.
            let info = self.dev.vq_info(index).map_err(|e| e.to_string())?;
            self.enable_queue(&info)
        } else {
            self.disable_queue(index)
        }
    }

    /// Start a queue made ready after DRIVER_OK (QEMU enables every queue
    /// then, DPDK's virtio-user the pairs beyond the first): a data queue on
    /// its poll thread, the control queue here. A queue stopped earlier
    /// with the same rings and base resumes where it stopped.
    fn enable_queue(&mut self, info: &crate::vduse::VqInfo) -> Result<(), String> {
        let vq = info.index;
        let cfg = match self.config_of(info) {
            // A queue resumed from the log keeps its start, so a SET_VQ_READY
            // the kernel delivers again finds it running, not restarted.
            Ok(c) if self.restored_base[vq as usize].is_some() => {
                QueueConfig { avail_base: self.restored_base[vq as usize].expect("checked"), ..c }
            }
            Ok(c) => c,
            Err(why) => {
                // Replying FAILED would break the whole device (the kernel
                // can do nothing else); a queue the driver set up wrong is
                // left stopped instead, and the driver told.
                bump(&self.stats.needs_reset, 1);
                let shown = self.dev.signal_needs_reset();
                log::error!("{why}; queue not started{}", if shown { ", device needs reset" } else { "" });
                return Ok(());
            }
        };
        let is_cvq = self.cvq.as_ref().is_some_and(|c| c.vq == vq);
        if is_cvq && self.features & features::CTRL_VQ == 0 {
            return Ok(());
        }
        // Counted before the queue can run: a driver that sees its traffic
        // flow must also see the enable in the stats.
        bump(&self.stats.late_enables, 1);
        if is_cvq {
            let c = self.cvq.as_mut().expect("checked");
            if c.q.as_ref().map(|q| *q.config()) != Some(cfg) {
                c.q = Some(VirtQueue::new(cfg));
            }
            c.enabled = true;
        } else {
            let t = &self.threads[(vq / 2) as usize];
            t.mailbox.send(Command::EnableQueue(cfg)).map_err(|e| e.to_string())?;
        }
        if self.restored_base[vq as usize].is_none() {
            self.log_start(&cfg);
        }
        self.vq_started[vq as usize] = true;
        log::info!(
            "{}: vq {vq}{} enabled after DRIVER_OK: size {}, avail base {}",
            self.layout.name,
            if is_cvq { " (control queue)" } else { "" },
            cfg.size,
            cfg.avail_base
        );
        Ok(())
    }

    /// Stop a queue at a chain boundary, keeping its position.
    fn disable_queue(&mut self, vq: u32) -> Result<(), String> {
        match self.cvq.as_mut() {
            Some(c) if c.vq == vq => c.enabled = false,
            _ => {
                let t = &self.threads[(vq / 2) as usize];
                t.mailbox.send(Command::SetQueueEnabled { vq, enabled: false }).map_err(|e| e.to_string())?;
            }
        }
        self.vq_started[vq as usize] = false;
        if let Some(q) = self.queue_log.get_mut(vq as usize) {
            q.started = false;
        }
        log::info!("{}: vq {vq} disabled", self.layout.name);
        Ok(())
    }

    /// Whether queues may still become ready without telling us: after
    /// DRIVER_OK, on a kernel without VDUSE_F_QUEUE_READY, with a used queue
    /// not started yet.
    fn awaits_ready(&self) -> bool {
        self.status & status::DRIVER_OK != 0
            && self.layout.vduse_features & (1 << VDUSE_F_QUEUE_READY) == 0
            && self.unstarted().next().is_some()
    }

    /// Queues the driver may still enable: the data queues and, when
    /// negotiated, the control queue, not handed to the dataplane yet.
    fn unstarted(&self) -> impl Iterator<Item = u32> + '_ {
        let cvq = self.cvq.as_ref().map(|c| c.vq);
        let ctrl = self.features & features::CTRL_VQ != 0;
        (0..self.layout.vq_num()).filter(move |&vq| Some(vq) != cvq || ctrl).filter(|&vq| !self.vq_started[vq as usize])
    }

    /// What DPDK's VDUSE device does on such kernels: look at VQ_GET_INFO
    /// for the queues not started and start those now ready.
    fn poll_ready(&mut self) {
        let pending: Vec<u32> = self.unstarted().collect();
        for vq in pending {
            match self.dev.vq_info(vq) {
                Ok(info) if info.ready => {
                    log::info!(
                        "{}: vq {vq} became ready after DRIVER_OK (seen in VQ_GET_INFO; this kernel sends no \
                         SET_VQ_READY)",
                        self.layout.name
                    );
                    if let Err(e) = self.enable_queue(&info) {
                        log::error!("vq {vq}: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("vq {vq}: VQ_GET_INFO: {e}"),
            }
        }
    }

    /// Heartbeat, and the state the stats reader shows, when it changed.
    /// Never waits for a reader (see `ops::control`).
    fn publish_ops(&mut self) {
        let s = crate::ops::control::ControlState {
            status: self.status,
            features: self.features,
            group_asid: self.group_asid.clone(),
            suspended: self.suspended,
            link_status: self.config.status,
            mac: self.config.mac,
            active_pairs: self.ctrl.queue_pairs().max(1),
            cvq: self.cvq.as_ref().map(|c| crate::ops::control::CvqState {
                vq: c.vq,
                group: c.group,
                ready: c.enabled && c.q.is_some(),
                failed: c.failed,
            }),
        };
        self.ops.update(s);
    }

    fn publish_filter(&self) {
        self.filter.publish(RxFilter::from_state(&self.ctrl, self.features));
    }

    /// Serve every pending control command.
    fn serve_cvq(&mut self) {
        if self.suspended || self.status & status::DRIVER_OK == 0 {
            return;
        }
        let Some(mut cvq) = self.cvq.take() else { return };
        if cvq.failed || !cvq.enabled || cvq.q.is_none() {
            self.cvq = Some(cvq);
            return;
        }
        let asid = self.group_asid[cvq.group as usize];
        let space = self.iotlb.space(asid).expect("validated asid").clone();
        let mut reader = cvq.reader.take().expect("reader present");
        {
            let q = cvq.q.as_mut().expect("checked");
            let g = reader.read();
            let mut served = 0;
            loop {
                match ctrlq::next_command(q, &space, &g, self.features, &mut self.cmd_buf) {
                    Ok(None) => break,
                    Ok(Some(cmd)) => {
                        let ok = match &cmd.command {
                            Ok(c) => self.apply_ctrl(c),
                            Err(e) => {
                                log::warn!("control command refused: {e}");
                                false
                            }
                        };
                        // Logged before the driver sees the ack.
                        self.persist();
                        #[cfg(test)]
                        crate::persist::fault::point(&self.layout.name, crate::persist::fault::Stage::CvqApplied);
                        bump(if ok { &self.stats.ctrl_ok } else { &self.stats.ctrl_err }, 1);
                        ctrlq::complete(q, cmd, ok);
                        served += 1;
                    }
                    Err((_, e)) => {
                        cvq.failed = true;
                        bump(&self.stats.needs_reset, 1);
                        let shown = self.dev.signal_needs_reset();
                        log::error!(
                            "control queue (vq {}, asid {asid}): {e}; queue stopped{}",
                            cvq.vq,
                            if shown { ", device needs reset" } else { "" }
                        );
                        break;
                    }
                }
                if served >= 64 {
                    break;
                }
            }
            if q.is_mapped() {
                let irq = q.publish_used();
                if let Some(log) = &self.log {
                    let (last_avail, used) = q.position();
                    log.set_position(cvq.vq, Some(crate::persist::Position { last_avail, used }));
                }
                if irq {
                    let _ = self.dev.inject_vq_irq(cvq.vq);
                }
            }
        }
        reader.offline();
        cvq.reader = Some(reader);
        self.cvq = Some(cvq);
    }

    /// Apply one validated command; `true` = OK.
    fn apply_ctrl(&mut self, cmd: &crate::net::ctrl::CtrlCommand) -> bool {
        let max_pairs = if self.features & features::MQ != 0 { self.layout.pairs } else { 1 };
        let effect = match self.ctrl.apply(cmd.clone(), self.features, max_pairs) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("control command {cmd:?} refused: {e}");
                return false;
            }
        };
        log::info!("{}: control command {cmd:?} -> {effect:?}", self.layout.name);
        match effect {
            CtrlEffect::PairsChanged(_) | CtrlEffect::RssChanged(_) => {
                // RSS may name more receive queues than `max_tx_vq`.
                let n = crate::net::rss::Steering::rx_pairs(&self.ctrl);
                let acks = self.to_all(|i| Command::SetPairActive(i < n));
                // Steering cleared (VQ_PAIRS_SET) or set (RSS_CONFIG).
                self.publish_filter();
                if let Some((i, e)) = first_error(&acks) {
                    log::error!("pair {i}: {e}");
                    return false;
                }
            }
            CtrlEffect::HashChanged => self.publish_filter(),
            CtrlEffect::MacChanged(mac) => {
                self.config.mac = mac;
                if let Err(e) = self.dev.set_config(MAC_OFFSET as u32, &mac) {
                    log::warn!("updating config mac: {e}");
                }
                self.publish_filter();
            }
            // Cleared without an interrupt: the driver just acted on it.
            CtrlEffect::AnnounceAcked => self.write_status(false),
            // The poll threads take the guest offloads from the snapshot.
            CtrlEffect::FilterChanged | CtrlEffect::OffloadsChanged(_) => self.publish_filter(),
            _ => {}
        }
        true
    }
}

/// The first failed ack, with its pair.
fn first_error(acks: &[Result<mailbox::Ack, mailbox::MailboxError>]) -> Option<(usize, &mailbox::MailboxError)> {
    acks.iter().enumerate().find_map(|(i, a)| a.as_ref().err().map(|e| (i, e)))
}
