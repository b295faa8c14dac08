//! Loopback: TX of a queue pair comes back on RX of the same pair. The
//! poll thread owns both queues and this port, so frames never cross
//! threads; the slot ring is used single-threaded.

use super::slots::{channel, Consumer, Producer};
use super::{mac_swap, FrameMeta, Port, PortFrame};

pub struct Loopback {
    tx: Producer,
    rx: Consumer,
    mac_swap: bool,
}

impl Loopback {
    /// `capacity` frames may wait between TX and RX.
    pub fn new(capacity: usize, mac_swap: bool) -> Loopback {
        let (tx, rx) = channel(capacity);
        Loopback { tx, rx, mac_swap }
    }
}

impl Port for Loopback {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        self.tx.slot()
    }
    #[inline]
    fn tx_commit(&mut self, len: usize, meta: FrameMeta) {
        if self.mac_swap {
            if let Some(s) = self.tx.slot() {
                let n = len.min(s.len());
                mac_swap(&mut s[..n]);
            }
        }
        self.tx.commit(len, meta);
    }
    #[inline]
    fn tx_flush(&mut self) {
        self.tx.flush();
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
    fn reflect(&self) -> Option<bool> {
        Some(self.mac_swap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_back_with_macs_swapped() {
        let mut p = Loopback::new(8, true);
        let s = p.tx_slot().unwrap();
        s[..14].copy_from_slice(&[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 8, 0]);
        p.tx_commit(14, FrameMeta::PLAIN);
        assert!(p.rx_peek().is_none(), "visible before flush");
        p.tx_flush();
        assert_eq!(p.rx_peek().unwrap().bytes, &[2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 8, 0]);
        p.rx_consume();
        p.rx_flush();
        assert_eq!(p.rx_pending(), 0);
    }
}
