//! A loopback port with test hooks, shared by the tests that inject faults
//! into the path the device sends through (include it with
//! `#[path = "common/tamper.rs"] mod tamper;`):
//! - `on_tx(n, frame)` sees every TX frame (numbered from 0, in the order
//!   the device committed them) in the port's slot before it goes on, may
//!   change its bytes, and returns `false` to drop it (the frame is not
//!   committed: the slot is reused and the frame never arrives);
//! - `on_poll` runs where the poll thread asks the port whether it reflects
//!   (once per poll of an active pair): a place to panic in that thread;
//! - `on_idle` runs where the thread is about to block (idle or stopped):
//!   a place to hold it there.
//!
//! Frames go through the port's slots, where `on_tx` sees them: the
//! reflector's direct path (TX chain to RX chain, no slot) is offered only
//! after [`Tamper::reflecting`]. Everything else is the wrapped
//! [`Loopback`]'s.

#![allow(dead_code)]

use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::{FrameMeta, Port, PortFrame, PortWake};

type TxHook = Box<dyn FnMut(u64, &mut [u8]) -> bool + Send>;
type Hook = Box<dyn Fn() + Send>;

pub struct Tamper {
    inner: Loopback,
    sent: u64,
    on_tx: Option<TxHook>,
    on_poll: Option<Hook>,
    on_idle: Option<Hook>,
    reflects: bool,
}

impl Tamper {
    /// A loopback of `slots` slots that swaps MAC addresses (what the
    /// generator's loopback mode expects), with no hooks yet.
    pub fn loopback(slots: usize) -> Self {
        Tamper {
            inner: Loopback::new(slots, true),
            sent: 0,
            on_tx: None,
            on_poll: None,
            on_idle: None,
            reflects: false,
        }
    }

    pub fn on_tx(mut self, f: impl FnMut(u64, &mut [u8]) -> bool + Send + 'static) -> Self {
        self.on_tx = Some(Box::new(f));
        self
    }

    pub fn on_poll(mut self, f: impl Fn() + Send + 'static) -> Self {
        self.on_poll = Some(Box::new(f));
        self
    }

    pub fn on_idle(mut self, f: impl Fn() + Send + 'static) -> Self {
        self.on_idle = Some(Box::new(f));
        self
    }

    /// Offer the loopback's direct path (`on_tx` then sees no frame while
    /// the device takes it).
    pub fn reflecting(mut self) -> Self {
        self.reflects = true;
        self
    }

    pub fn boxed(self) -> Box<dyn Port> {
        Box::new(self)
    }
}

/// Flip bits of the last byte (the payload's end in every test frame).
pub fn flip_last(frame: &mut [u8]) {
    if let Some(b) = frame.last_mut() {
        *b ^= 0x5a;
    }
}

impl Port for Tamper {
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        self.inner.tx_slot()
    }
    fn tx_commit(&mut self, len: usize, meta: FrameMeta) {
        let n = self.sent;
        self.sent += 1;
        if let (Some(f), Some(slot)) = (self.on_tx.as_mut(), self.inner.tx_slot()) {
            if !f(n, &mut slot[..len]) {
                return;
            }
        }
        self.inner.tx_commit(len, meta);
    }
    fn tx_flush(&mut self) {
        self.inner.tx_flush()
    }
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        self.inner.rx_peek()
    }
    fn rx_consume(&mut self) {
        self.inner.rx_consume()
    }
    fn rx_flush(&mut self) {
        self.inner.rx_flush()
    }
    fn rx_pending(&self) -> usize {
        self.inner.rx_pending()
    }
    fn reflect(&self) -> Option<bool> {
        if let Some(f) = &self.on_poll {
            f();
        }
        self.inner.reflect().filter(|_| self.reflects)
    }
    fn wake(&self) -> Option<PortWake<'_>> {
        if let Some(f) = &self.on_idle {
            f();
        }
        None
    }
}
