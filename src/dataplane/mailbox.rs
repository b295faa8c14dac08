//! Slow path -> poll thread commands. Every command carries a reply
//! channel and is acknowledged once the poll thread applied it at a chain
//! boundary, so the slow path can answer the kernel only after the
//! dataplane really changed.

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{bounded, Receiver, Sender};

use crate::mem::AddressSpace;
use crate::virtq::QueueConfig;

/// Where a queue stands: next avail index to consume, used index published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuePosition {
    pub vq: u32,
    pub last_avail: u16,
    pub used: u16,
}

pub enum Command {
    /// DRIVER_OK: begin serving these queues (`None` = not ready).
    Start {
        rx: Option<QueueConfig>,
        tx: Option<QueueConfig>,
    },
    /// Reset: forget the queues.
    Stop,
    /// Stop at a chain boundary, keep state.
    Suspend,
    Resume,
    /// The group moved to another address space.
    SetAddressSpace(Arc<AddressSpace>),
    /// Queue enable/disable (SET_VQ_READY).
    SetQueueEnabled {
        vq: u32,
        enabled: bool,
    },
    /// A queue made ready after DRIVER_OK (SET_VQ_READY, or seen ready by
    /// polling VQ_GET_INFO): serve it with this configuration, read from
    /// VQ_GET_INFO at that moment. A queue stopped earlier with the same
    /// rings and base resumes where it stopped.
    EnableQueue(QueueConfig),
    /// Pair enable/disable (MQ VQ_PAIRS_SET).
    SetPairActive(bool),
    /// Report positions only.
    Positions,
    Exit,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Ack {
    pub rx: Option<QueuePosition>,
    pub tx: Option<QueuePosition>,
}

pub type Request = (Command, Sender<Ack>);

/// The slow path's end of one poll thread's mailbox.
pub struct MailboxTx {
    tx: Sender<Request>,
    wake: Arc<nix::sys::eventfd::EventFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("poll thread gone")]
    Gone,
    #[error("poll thread did not acknowledge within {0:?}")]
    Timeout(Duration),
}

/// How long the slow path waits for an acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

impl MailboxTx {
    pub fn send(&self, cmd: Command) -> Result<Ack, MailboxError> {
        let (rtx, rrx) = bounded(1);
        self.tx.send((cmd, rtx)).map_err(|_| MailboxError::Gone)?;
        // Wake the thread if it sleeps on its eventfds.
        let _ = self.wake.write(1);
        rrx.recv_timeout(ACK_TIMEOUT).map_err(|e| match e {
            crossbeam::channel::RecvTimeoutError::Timeout => MailboxError::Timeout(ACK_TIMEOUT),
            crossbeam::channel::RecvTimeoutError::Disconnected => MailboxError::Gone,
        })
    }
}

pub fn mailbox(wake: Arc<nix::sys::eventfd::EventFd>) -> (MailboxTx, Receiver<Request>) {
    let (tx, rx) = bounded(16);
    (MailboxTx { tx, wake }, rx)
}
