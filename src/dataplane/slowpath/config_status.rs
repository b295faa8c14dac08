//! The config-space `status` word (virtio 1.3 §5.1.4): LINK_UP follows the
//! port's link, ANNOUNCE asks the driver to announce itself
//! (§5.1.6.5.4). Both live only on the slow path: the link watch is polled
//! there (an atomic and an eventfd, never a probe), so the fast path pays
//! nothing for either.
//!
//! The word is always rebuilt from its two sources ([`SlowPath::link_up`]
//! and [`CtrlState::announce_pending`]) and written whole with one
//! SET_CONFIG, so a driver's read never sees a mix of old and new bits.
//! A config interrupt tells the driver about a change only when it can
//! care: STATUS negotiated, DRIVER_OK, not suspended (a suspended device
//! must not interrupt; the driver reads the config when it resumes).
//!
//! [`CtrlState::announce_pending`]: crate::net::ctrl::CtrlState::announce_pending

use super::SlowPath;
use crate::net::config::STATUS_OFFSET;
use crate::net::features;
use crate::uapi::virtio::status;

/// Why the device asked for an announce (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceReason {
    /// A new process took the device over from the state log.
    Reattach,
    /// The operator asked (stats socket `announce`, `vduse-net announce`).
    Operator,
}

impl SlowPath {
    /// Write the status word for the current link and announce state; with
    /// `notify`, raise a config interrupt when the driver should look.
    pub(super) fn write_status(&mut self, notify: bool) {
        self.config.status = self.ctrl.config_status(self.link_up);
        if let Err(e) = self.dev.set_config(STATUS_OFFSET as u32, &self.config.status.to_le_bytes()) {
            log::warn!("{}: status {:#x} to config space: {e}", self.layout.name, self.config.status);
            return;
        }
        if notify && self.config_irq_allowed() {
            if let Err(e) = self.dev.inject_config_irq() {
                log::warn!("{}: config interrupt: {e}", self.layout.name);
            } else {
                crate::dataplane::stats::bump(&self.stats.config_irqs, 1);
            }
        }
    }

    /// Whether the driver wants config interrupts for `status` now: it
    /// negotiated STATUS (without it the field is not there and the link is
    /// always up, §5.1.4), it is bound and the device is not suspended.
    fn config_irq_allowed(&self) -> bool {
        self.features & features::STATUS != 0 && self.status & status::DRIVER_OK != 0 && !self.suspended
    }

    /// The link went up or down.
    pub(super) fn set_link(&mut self, up: bool) {
        if up == self.link_up {
            return;
        }
        self.link_up = up;
        log::info!("{}: link {}", self.layout.name, if up { "up" } else { "down" });
        self.write_status(true);
        self.persist();
    }

    /// Ask the driver to announce itself: set ANNOUNCE and interrupt. Only
    /// with GUEST_ANNOUNCE and STATUS negotiated and the driver bound;
    /// returns whether it was asked. Already pending: asked again (the
    /// driver acks once and announces once per interrupt it handles).
    pub(super) fn announce(&mut self, why: AnnounceReason) -> bool {
        let negotiated = self.features;
        if negotiated & features::STATUS == 0 || self.status & status::DRIVER_OK == 0 {
            log::info!("{}: announce ({why:?}) not asked: STATUS not negotiated or driver not bound", self.layout.name);
            return false;
        }
        if !self.ctrl.request_announce(negotiated) {
            log::info!(
                "{}: announce ({why:?}) not asked: the driver did not negotiate GUEST_ANNOUNCE",
                self.layout.name
            );
            return false;
        }
        log::info!("{}: asking the driver to announce itself ({why:?})", self.layout.name);
        crate::dataplane::stats::bump(&self.stats.announces, 1);
        self.write_status(true);
        self.persist();
        true
    }

    /// After a successful take-over from the state log: the status word is
    /// rebuilt from the link as it is now (it may have changed while no
    /// process served the device) and, once the driver is bound, it is asked
    /// to announce itself, since the port behind it may have moved.
    pub(super) fn after_reattach(&mut self) {
        let logged = self.config.status;
        if self.status & status::DRIVER_OK != 0 && self.announce(AnnounceReason::Reattach) {
            return;
        }
        // Not asked: the word still follows the link now (and drops an
        // ANNOUNCE the log holds, which no one here will see acked).
        let changed = self.ctrl.config_status(self.link_up) != logged;
        self.write_status(changed);
    }

    /// Operator requests (stats socket `announce`) since the last look.
    pub(super) fn poll_announce_requests(&mut self) {
        let n = self.ops_cell.announce_requests();
        if n != self.announce_seen {
            self.announce_seen = n;
            self.announce(AnnounceReason::Operator);
        }
    }
}
