//! Patch: a wire between two devices in one process. Device A's pair i and
//! device B's pair i each own one end. A's poll thread produces into the
//! A->B slot ring and consumes from the B->A ring; B's does the opposite.
//! So each ring has exactly one producer thread and one consumer thread,
//! and no thread ever writes another device's virtqueue.
//!
//! Wake-ups: a consumer about to sleep sets `armed` and re-checks the ring;
//! a producer that flushed frames and sees `armed` writes the consumer's
//! eventfd. The SeqCst fences on both sides make sure one of them sees the
//! other.

use std::os::fd::AsFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;

use nix::poll::PollFlags;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::slots::{channel, Consumer, Producer};
use super::{FrameMeta, Port, PortFrame, PortWake};

struct Wake {
    armed: AtomicBool,
    fd: EventFd,
}

pub struct PatchPort {
    tx: Producer,
    rx: Consumer,
    /// Our wake-up (the peer signals it).
    own: Arc<Wake>,
    /// The peer's wake-up (we signal it).
    peer: Arc<Wake>,
    flushed_since_signal: bool,
}

fn wake() -> std::io::Result<Arc<Wake>> {
    let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
    Ok(Arc::new(Wake { armed: AtomicBool::new(false), fd }))
}

/// Two connected ends, each with `capacity` slots per direction.
pub fn patch_pair(capacity: usize) -> std::io::Result<(PatchPort, PatchPort)> {
    let (a_tx, b_rx) = channel(capacity);
    let (b_tx, a_rx) = channel(capacity);
    let (wa, wb) = (wake()?, wake()?);
    Ok((
        PatchPort { tx: a_tx, rx: a_rx, own: wa.clone(), peer: wb.clone(), flushed_since_signal: false },
        PatchPort { tx: b_tx, rx: b_rx, own: wb, peer: wa, flushed_since_signal: false },
    ))
}

impl Port for PatchPort {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        self.tx.slot()
    }
    #[inline]
    fn tx_commit(&mut self, len: usize, meta: FrameMeta) {
        self.tx.commit(len, meta);
        self.flushed_since_signal = true;
    }
    #[inline]
    fn tx_flush(&mut self) {
        self.tx.flush();
        if self.flushed_since_signal {
            self.flushed_since_signal = false;
            // Our head store before reading the peer's armed flag.
            fence(Ordering::SeqCst);
            if self.peer.armed.load(Ordering::Relaxed) {
                self.peer.armed.store(false, Ordering::Relaxed);
                let _ = self.peer.fd.write(1);
            }
        }
    }
    #[inline]
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        self.rx.peek()
    }
    #[inline]
    fn rx_consume(&mut self) {
        self.rx.consume();
    }
    #[inline]
    fn rx_flush(&mut self) {
        self.rx.flush();
    }
    fn rx_pending(&self) -> usize {
        self.rx.pending()
    }
    fn wake(&self) -> Option<PortWake<'_>> {
        Some(PortWake { fd: self.own.fd.as_fd(), events: PollFlags::POLLIN })
    }
    fn arm_rx_wakeup(&mut self) -> bool {
        self.own.armed.store(true, Ordering::Relaxed);
        // Armed flag before re-reading the producer's head.
        fence(Ordering::SeqCst);
        self.rx.pending() > 0
    }
    fn disarm_rx_wakeup(&mut self) {
        self.own.armed.store(false, Ordering::Relaxed);
        let _ = self.own.fd.read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_and_an_armed_consumer_is_woken() {
        let (mut a, mut b) = patch_pair(16).unwrap();
        assert!(!b.arm_rx_wakeup());
        a.tx_slot().unwrap()[..3].copy_from_slice(b"abc");
        a.tx_commit(3, FrameMeta { flags: 1, csum_start: 1, ..FrameMeta::PLAIN });
        a.tx_flush();
        let w = b.wake().unwrap();
        let mut fds = [nix::poll::PollFd::new(w.fd, w.events)];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
        assert_eq!(n, 1, "consumer was not woken");
        b.disarm_rx_wakeup();
        let f = b.rx_peek().unwrap();
        assert_eq!(f.bytes, b"abc");
        assert_eq!(
            f.meta,
            FrameMeta { flags: 1, csum_start: 1, ..FrameMeta::PLAIN },
            "metadata crosses with the frame"
        );
        b.rx_consume();
        b.rx_flush();
        assert!(a.rx_peek().is_none());
    }
}
