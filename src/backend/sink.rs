//! Sink: the device consumes every TX frame and drops it (a TX-only
//! benchmark's far end). Nothing ever arrives for RX.

use super::{FrameMeta, Port, PortFrame, SLOT_SIZE};

pub struct Sink {
    /// One scratch slot, overwritten by every frame.
    slot: Box<[u8]>,
}

impl Sink {
    pub fn new() -> Sink {
        Sink { slot: vec![0u8; SLOT_SIZE].into_boxed_slice() }
    }
}

impl Default for Sink {
    fn default() -> Self {
        Sink::new()
    }
}

impl Port for Sink {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.slot)
    }
    // The poll thread counts consumed frames in its own stats.
    #[inline]
    fn tx_commit(&mut self, _len: usize, _meta: FrameMeta) {}
    #[inline]
    fn tx_flush(&mut self) {}
    #[inline]
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        None
    }
    #[inline]
    fn rx_consume(&mut self) {}
    #[inline]
    fn rx_flush(&mut self) {}
    fn rx_pending(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn always_has_room_and_never_delivers() {
        let mut s = Sink::new();
        for _ in 0..3 {
            let slot = s.tx_slot().unwrap();
            assert_eq!(slot.len(), SLOT_SIZE);
            slot[0] = 1;
            s.tx_commit(64, FrameMeta::PLAIN);
            s.tx_flush();
        }
        assert!(s.rx_peek().is_none());
        assert_eq!(s.rx_pending(), 0);
    }
}
