//! Slow path -> poll thread commands. Every command carries a reply
//! channel and is acknowledged once the poll thread applied it at a chain
//! boundary, so the slow path can answer the kernel only after the
//! dataplane really changed.
//!
//! Nothing here blocks past a deadline: [`MailboxTx::post`] never waits
//! (a full mailbox, i.e. a thread that stopped reading, is an error at
//! once), and acks are awaited until a deadline the caller chooses.
//! [`broadcast`] posts to many threads first and then waits for all of
//! them against one shared deadline, so N wedged threads cost one timeout,
//! not N. To add a command: a variant here, its handling in
//! `poll::thread::PollThread::handle`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, Sender, TrySendError};

use crate::mem::AddressSpace;
use crate::virtq::QueueConfig;

/// Where a queue stands: next avail index to consume, used index published.
/// For a packed ring both are ring slots with the wrap counter in bit 15
/// (vhost's encoding, [`crate::virtq::RingPos::encode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueuePosition {
    pub vq: u32,
    pub last_avail: u16,
    pub used: u16,
}

pub enum Command {
    /// DRIVER_OK: begin serving these queues (`None` = not ready) in
    /// `space`; `active` is false for pairs beyond the first until
    /// VQ_PAIRS_SET.
    Start {
        rx: Option<QueueConfig>,
        tx: Option<QueueConfig>,
        space: Arc<AddressSpace>,
        active: bool,
        /// The negotiated features (offloads, MRG_RXBUF, header size).
        features: u64,
    },
    /// Reset: forget the queues (and clear a failure).
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
    #[error("poll thread's mailbox is full (it stopped reading commands)")]
    Full,
    #[error("poll thread did not acknowledge within {0:?}")]
    Timeout(Duration),
}

/// How long the slow path waits for an acknowledgement (one wait per
/// message phase, shared by every thread of a broadcast).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Commands a thread may have queued before the mailbox counts as full.
pub const MAILBOX_DEPTH: usize = 16;

/// An acknowledgement still to come.
pub struct PendingAck {
    rx: Receiver<Ack>,
    waited: Duration,
}

impl PendingAck {
    /// Wait for the ack until `deadline` (a deadline already past still
    /// takes an ack that is there).
    pub fn wait(self, deadline: Instant) -> Result<Ack, MailboxError> {
        self.rx.recv_deadline(deadline).map_err(|e| match e {
            crossbeam::channel::RecvTimeoutError::Timeout => MailboxError::Timeout(self.waited),
            crossbeam::channel::RecvTimeoutError::Disconnected => MailboxError::Gone,
        })
    }
}

impl MailboxTx {
    /// Queue `cmd` and wake the thread; never blocks.
    pub fn post(&self, cmd: Command) -> Result<PendingAck, MailboxError> {
        let (rtx, rrx) = bounded(1);
        self.tx.try_send((cmd, rtx)).map_err(|e| match e {
            TrySendError::Full(_) => MailboxError::Full,
            TrySendError::Disconnected(_) => MailboxError::Gone,
        })?;
        // Wake the thread if it sleeps on its eventfds.
        let _ = self.wake.write(1);
        Ok(PendingAck { rx: rrx, waited: ACK_TIMEOUT })
    }

    /// Post and wait up to [`ACK_TIMEOUT`].
    pub fn send(&self, cmd: Command) -> Result<Ack, MailboxError> {
        self.post(cmd)?.wait(Instant::now() + ACK_TIMEOUT)
    }
}

/// Post each command to its thread, then wait for every ack until one
/// shared `deadline`. Results in the order given; a thread that is gone,
/// full or late costs nothing more than the deadline.
pub fn broadcast<'a>(
    cmds: impl IntoIterator<Item = (&'a MailboxTx, Command)>,
    deadline: Instant,
) -> Vec<Result<Ack, MailboxError>> {
    let posted: Vec<_> = cmds.into_iter().map(|(m, c)| m.post(c)).collect();
    posted.into_iter().map(|p| p.and_then(|p| p.wait(deadline))).collect()
}

pub fn mailbox(wake: Arc<nix::sys::eventfd::EventFd>) -> (MailboxTx, Receiver<Request>) {
    let (tx, rx) = bounded(MAILBOX_DEPTH);
    (MailboxTx { tx, wake }, rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    fn wake() -> Arc<EventFd> {
        Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap())
    }

    /// Regression (issue 8 fix 8): a send to a thread that stopped reading
    /// blocked on the full channel for ever.
    #[test]
    fn a_full_mailbox_is_an_error_not_a_block() {
        let (tx, rx) = mailbox(wake());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut errors = Vec::new();
            for _ in 0..MAILBOX_DEPTH + 2 {
                // Nobody acks: each send times out after ACK_TIMEOUT at most,
                // so post only, which is what every send starts with.
                errors.push(tx.post(Command::Positions).err());
            }
            done_tx.send(errors).unwrap();
        });
        let errors = done_rx.recv_timeout(Duration::from_secs(2)).expect("posting to a full mailbox blocked");
        t.join().unwrap();
        assert!(errors[..MAILBOX_DEPTH].iter().all(Option::is_none));
        assert!(matches!(errors[MAILBOX_DEPTH], Some(MailboxError::Full)), "{:?}", errors[MAILBOX_DEPTH]);
        drop(rx);
    }

    /// N threads that never answer cost one deadline, not N.
    #[test]
    fn broadcast_waits_once_for_all() {
        let boxes: Vec<_> = (0..4).map(|_| mailbox(wake())).collect();
        let t = Instant::now();
        let deadline = t + Duration::from_millis(200);
        let r = broadcast(boxes.iter().map(|(m, _)| (m, Command::Stop)), deadline);
        assert!(r.iter().all(|r| matches!(r, Err(MailboxError::Timeout(_)))));
        let took = t.elapsed();
        assert!(took < Duration::from_millis(600), "took {took:?}");
        // A thread that is gone fails at once.
        let (m, rx) = mailbox(wake());
        drop(rx);
        assert!(matches!(m.send(Command::Stop), Err(MailboxError::Gone)));
    }
}
