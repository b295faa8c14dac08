//! The slow path's side of reconnect: what it writes to the state log on
//! every change, and how a new process takes over from the record an
//! earlier one left.
//!
//! Writing: [`SlowPath::persist`] after each control message is applied
//! and before its reply, after each control-queue command and before its
//! used entry, and before the dataplane starts at DRIVER_OK (write-ahead:
//! the driver never sees a change the log does not hold). The kernel
//! queues unanswered messages again for the next opener, and each is
//! idempotent on the state it produced, so a change logged but not
//! answered is simply applied again.
//!
//! Restoring ([`SlowPath::restore`]): status, features, group -> ASID,
//! config space and control-queue state come from the record (the last
//! replayed as control commands from reset); the kernel is checked for what
//! it can report (negotiated features, each queue's size and addresses in
//! VQ_GET_INFO); each started queue resumes at its position: split rings
//! at the `used.idx` the driver sees in guest memory (the dataplane
//! completes chains in order, so everything before it is done and
//! everything from it on is re-read: a TX frame taken but not completed at
//! the crash may be sent twice, an RX buffer taken is reused, and no used
//! entry is published twice), cross-checked against the logged position;
//! packed rings at the logged position after checking that its descriptor
//! was not completed already. Kick eventfds are registered again and the
//! IOTLB fills lazily on the first miss, as always.

use std::sync::Arc;

use super::{first_error, SlowPath};
use crate::dataplane::mailbox::Command;
use crate::dataplane::{rx_vq, tx_vq};
use crate::net::ctrl::{CtrlCommand, CtrlState, RxMode, MAC_TABLE_CAP};
use crate::net::features;
use crate::persist::{ControlRecord, Position, QueueRecord, StateLog};
use crate::uapi::virtio::status;
use crate::virtq::{QueueConfig, Ring, RingFormat, VirtQueue};

/// What the slow path gets for reconnect.
#[derive(Default)]
pub struct Persist {
    /// Where to log (none: no reconnect for this device).
    pub log: Option<Arc<StateLog>>,
    /// The record to take over from (a reattach).
    pub restore: Option<ControlRecord>,
}

/// Why a device cannot continue from its log.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the log says {what} {logged:#x}, the kernel reports {kernel:#x}")]
    Mismatch { what: &'static str, logged: u64, kernel: u64 },
    #[error("vq {vq}: the log says {what}, the kernel reports otherwise")]
    Queue { vq: u32, what: &'static str },
    #[error(
        "vq {vq}: the driver's used index {driver} is {gap} past the logged position {logged} (queue size {size})"
    )]
    UsedGap { vq: u32, driver: u16, logged: u16, gap: u16, size: u16 },
    #[error("vq {vq}: the logged position lags behind what was published; the queue cannot resume")]
    PackedLag { vq: u32 },
    #[error("vq {vq}: {why}")]
    Ring { vq: u32, why: String },
    #[error("control command in the log refused: {0}")]
    Ctrl(String),
    #[error("{0}")]
    Other(String),
}

/// The control commands that take a fresh [`CtrlState::new`]`(mac, ..)`
/// to `c`.
fn ctrl_commands(c: &CtrlState, mac: [u8; 6], negotiated: u64) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let fresh = CtrlState::new(mac, negotiated);
    if c.mac() != mac {
        v.push(CtrlCommand::MacAddrSet(c.mac()));
    }
    let (now, then) = (c.rx_flags(), fresh.rx_flags());
    for (mode, on, was) in [
        (RxMode::Promisc, now.promisc, then.promisc),
        (RxMode::AllMulti, now.allmulti, then.allmulti),
        (RxMode::AllUni, now.alluni, then.alluni),
        (RxMode::NoMulti, now.nomulti, then.nomulti),
        (RxMode::NoUni, now.nouni, then.nouni),
        (RxMode::NoBcast, now.nobcast, then.nobcast),
    ] {
        if on != was {
            v.push(CtrlCommand::Rx { mode, on });
        }
    }
    if !c.unicast().is_empty() || !c.multicast().is_empty() || c.uni_overflow() || c.multi_overflow() {
        // An overflowed table is kept as "too long": one entry more than fits.
        let table =
            |t: &[[u8; 6]], over: bool| if over { vec![[0x02, 0, 0, 0, 0, 0]; MAC_TABLE_CAP + 1] } else { t.to_vec() };
        v.push(CtrlCommand::MacTableSet {
            unicast: table(c.unicast(), c.uni_overflow()),
            multicast: table(c.multicast(), c.multi_overflow()),
        });
    }
    for (w, bits) in c.vlan_bitmap().iter().enumerate() {
        for b in 0..64 {
            if bits & 1 << b != 0 {
                v.push(CtrlCommand::VlanAdd((w * 64 + b) as u16));
            }
        }
    }
    if c.queue_pairs() != fresh.queue_pairs() {
        v.push(CtrlCommand::MqPairsSet(c.queue_pairs()));
    }
    if c.guest_offloads() != fresh.guest_offloads() {
        v.push(CtrlCommand::GuestOffloadsSet(c.guest_offloads()));
    }
    if let Some(r) = c.rss() {
        v.push(CtrlCommand::RssConfig(r.clone()));
    }
    if let Some(h) = c.hash_config() {
        v.push(CtrlCommand::HashConfig(h.clone()));
    }
    v.iter().map(|c| c.encode_message()).collect()
}

impl SlowPath {
    /// The record of the current state.
    fn record(&self) -> ControlRecord {
        let l = &self.layout;
        ControlRecord {
            name: l.name.clone(),
            api: l.api,
            pairs: l.pairs,
            has_cvq: l.has_cvq,
            ngroups: l.ngroups,
            nas: l.nas,
            offered: l.features,
            vduse_features: l.vduse_features,
            max_queue_size: l.max_queue_size,
            mac: self.mac,
            mtu: self.config.mtu,
            status: self.status,
            negotiated: self.features,
            suspended: self.suspended,
            group_asid: self.group_asid.clone(),
            config_mac: self.config.mac,
            config_status: self.config.status,
            queues: self.queue_log.clone(),
            ctrl: ctrl_commands(&self.ctrl, self.mac, self.features),
        }
    }

    /// Write the control record if anything changed (slow path only).
    pub(super) fn persist(&mut self) {
        #[cfg(test)]
        crate::persist::fault::dead(&self.layout.name);
        let Some(log) = &self.log else { return };
        if let Err(e) = log.write_control(&self.record()) {
            if !self.log_failed {
                log::error!("{}: {e}; a restarted process will not find this state", self.layout.name);
                self.log_failed = true;
            }
        } else {
            self.log_failed = false;
        }
    }

    /// The position a queue handed to the dataplane starts from, in the log
    /// (split: last_avail = used = base; packed: both halves the base).
    pub(super) fn log_start(&mut self, cfg: &QueueConfig) {
        #[cfg(test)]
        crate::persist::fault::dead(&self.layout.name);
        if let Some(log) = &self.log {
            log.set_position(cfg.index, Some(Position { last_avail: cfg.avail_base, used: cfg.avail_base }));
        }
        if let Some(q) = self.queue_log.get_mut(cfg.index as usize) {
            *q = QueueRecord {
                started: true,
                size: cfg.size,
                desc: cfg.desc_addr,
                driver: cfg.avail_addr,
                device: cfg.used_addr,
            };
        }
    }

    /// Take over from `rec`. On error nothing runs: the caller leaves the
    /// data queues stopped until the driver resets the device.
    pub(super) fn restore(&mut self, rec: &ControlRecord) -> Result<(), RestoreError> {
        let l = &self.layout;
        if rec.group_asid.len() != self.group_asid.len() || rec.queues.len() != l.vq_num() as usize {
            return Err(RestoreError::Other(format!(
                "the log describes {} vq groups and {} vqs, the device has {} and {}",
                rec.group_asid.len(),
                rec.queues.len(),
                self.group_asid.len(),
                l.vq_num()
            )));
        }
        if let Some(&a) = rec.group_asid.iter().find(|&&a| a >= l.nas) {
            return Err(RestoreError::Other(format!("address space {a} in the log, the device has {}", l.nas)));
        }
        if rec.status & status::FEATURES_OK != 0 {
            let kernel = self.dev.negotiated_features().map_err(|e| RestoreError::Other(e.to_string()))?;
            if kernel != rec.negotiated {
                return Err(RestoreError::Mismatch { what: "negotiated features", logged: rec.negotiated, kernel });
            }
        }
        self.status = rec.status;
        self.features = rec.negotiated;
        self.group_asid = rec.group_asid.clone();
        self.suspended = rec.suspended;
        self.config.mac = rec.config_mac;
        self.config.status = rec.config_status;
        let max_pairs = if self.features & features::MQ != 0 { self.layout.pairs } else { 1 };
        let mut ctrl = CtrlState::new(self.mac, self.features);
        for m in &rec.ctrl {
            ctrl.handle_message(m, self.features, max_pairs).map_err(|e| RestoreError::Ctrl(e.to_string()))?;
        }
        self.ctrl = ctrl;
        self.publish_filter();
        if self.status & status::DRIVER_OK == 0 {
            log::info!("{}: reattached before DRIVER_OK (status {:#x})", self.layout.name, self.status);
            return Ok(());
        }
        self.register_kickfds();
        // Every queue checked and positioned before any pair starts.
        let mut cfgs: Vec<Option<QueueConfig>> = Vec::with_capacity(rec.queues.len());
        for (vq, q) in rec.queues.iter().enumerate() {
            cfgs.push(if q.started { Some(self.resume_config(vq as u32, q)?) } else { None });
        }
        // RSS may name more receive queues than `max_tx_vq`.
        let active = crate::net::rss::Steering::rx_pairs(&self.ctrl);
        let mut starts = Vec::with_capacity(self.layout.pairs as usize);
        for pair in 0..self.layout.pairs {
            let asid = self.group_asid[self.layout.group_of(rx_vq(pair)) as usize];
            let space = self.iotlb.space(asid).expect("validated asid").clone();
            starts.push((cfgs[rx_vq(pair) as usize], cfgs[tx_vq(pair) as usize], space));
        }
        for c in cfgs.iter().flatten() {
            self.log_start(c);
            self.vq_started[c.index as usize] = true;
            self.restored_base[c.index as usize] = Some(c.avail_base);
        }
        let mut starts = starts.into_iter();
        let acks = self.to_all(|pair| {
            let (rx, tx, space) = starts.next().expect("one per pair");
            Command::Start { rx, tx, space, active: pair < active, features: self.features }
        });
        if let Some((i, e)) = first_error(&acks) {
            let _ = self.to_all(|_| Command::Stop);
            return Err(RestoreError::Other(format!("starting pair {i}: {e}")));
        }
        if let Some(c) = self.cvq.as_mut() {
            let cfg = cfgs.get(c.vq as usize).copied().flatten();
            c.q = cfg.map(VirtQueue::new);
            c.enabled = cfg.is_some();
            c.failed = false;
        }
        // One interrupt per resumed queue: the old process may have died
        // between publishing used entries and injecting their interrupt,
        // and a driver waiting for that one would otherwise wait for good
        // (the next publish starts its interrupt decision after it). A
        // spurious interrupt only makes the driver look at its used ring.
        for c in cfgs.iter().flatten() {
            let _ = self.dev.inject_vq_irq(c.index);
        }
        if self.suspended {
            let acks = self.to_all(|_| Command::Suspend);
            if let Some((i, e)) = first_error(&acks) {
                return Err(RestoreError::Other(format!("suspending pair {i}: {e}")));
            }
        }
        log::info!(
            "{}: reattached: dataplane resumed (features {}; vq group -> address space: {}; positions {})",
            self.layout.name,
            features::describe(self.features),
            self.group_asid.iter().enumerate().map(|(g, a)| format!("{g}->{a}")).collect::<Vec<_>>().join(" "),
            cfgs.iter().flatten().map(|c| format!("vq{}@{}", c.index, c.avail_base)).collect::<Vec<_>>().join(" ")
        );
        Ok(())
    }

    /// The configuration a logged queue resumes with: the kernel's view
    /// (VQ_GET_INFO) must match the log; the start is checked against the
    /// driver's ring in guest memory.
    fn resume_config(&mut self, vq: u32, q: &QueueRecord) -> Result<QueueConfig, RestoreError> {
        let info = self.dev.vq_info(vq).map_err(|e| RestoreError::Ring { vq, why: e.to_string() })?;
        if info.num != q.size as u32 {
            return Err(RestoreError::Queue { vq, what: "another queue size" });
        }
        if (info.desc_addr, info.driver_addr, info.device_addr) != (q.desc, q.driver, q.device) {
            return Err(RestoreError::Queue { vq, what: "other ring addresses" });
        }
        let mut cfg = self.config_of(&info).map_err(|why| RestoreError::Ring { vq, why })?;
        let logged = self.log.as_ref().and_then(|l| l.position(vq));
        let asid = self.group_asid[self.layout.group_of(vq) as usize];
        let space = self.iotlb.space(asid).expect("validated asid").clone();
        let mut reader = self.iotlb.qsbr().register();
        let result = {
            let g = reader.read();
            match cfg.format {
                RingFormat::Split => {
                    let mut ring = VirtQueue::new(cfg);
                    ring.refresh(&space, &g).map_err(|e| RestoreError::Ring { vq, why: e.to_string() })?;
                    let VirtQueue::Split(s) = &ring else { unreachable!("split config") };
                    let driver = s.driver_used_idx();
                    // The log is written after each publish, so the driver's
                    // index is at or ahead of it, by at most one burst.
                    if let Some(p) = logged {
                        let gap = driver.wrapping_sub(p.used);
                        if gap > cfg.size {
                            return Err(RestoreError::UsedGap { vq, driver, logged: p.used, gap, size: cfg.size });
                        }
                    }
                    cfg.avail_base = driver;
                    Ok(cfg)
                }
                RingFormat::Packed => {
                    let Some(p) = logged else {
                        return Err(RestoreError::Queue { vq, what: "a started packed ring without a position" });
                    };
                    cfg.avail_base = p.used;
                    let mut ring = VirtQueue::new(cfg);
                    ring.refresh(&space, &g).map_err(|e| RestoreError::Ring { vq, why: e.to_string() })?;
                    let VirtQueue::Packed(pk) = &ring else { unreachable!("packed config") };
                    if pk.start_slot_completed() {
                        return Err(RestoreError::PackedLag { vq });
                    }
                    Ok(cfg)
                }
            }
        };
        reader.offline();
        result
    }

    /// After a failed restore: nothing runs, the driver is told (where the
    /// kernel lets it be) and the log forgets the positions.
    pub(super) fn restore_failed(&mut self, e: &RestoreError) {
        let _ = self.to_all(|_| Command::Stop);
        if let Some(c) = self.cvq.as_mut() {
            c.q = None;
            c.enabled = false;
        }
        self.vq_started.fill(false);
        self.restored_base.fill(None);
        if let Some(log) = &self.log {
            log.clear_positions();
        }
        let shown = self.dev.signal_needs_reset();
        log::error!(
            "{}: cannot resume from the state log: {e}. The data queues stay stopped until the driver resets the \
             device{} (virtio_vdpa: unbind and bind the vdpa device; a VM: reboot it or system_reset)",
            self.layout.name,
            if shown { " (NEEDS_RESET set)" } else { "" }
        );
    }
}
