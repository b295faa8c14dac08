//! Source: an endless supply of frames for the driver's RX queue (an
//! RX-only benchmark's far end). Frame `n` is written by a generator
//! function into the port's own buffer when first peeked, so a frame the
//! device could not deliver (no RX buffer) is offered again unchanged.

use super::{FrameMeta, Port, PortFrame, SLOT_SIZE};

/// Writes frame `seq` into the buffer and returns its length (0 = none).
pub type FrameFn = Box<dyn FnMut(u64, &mut [u8]) -> usize + Send>;

pub struct Source {
    buf: Box<[u8]>,
    len: usize,
    built: bool,
    seq: u64,
    /// Frames still to produce; `u64::MAX` = endless.
    left: u64,
    make: FrameFn,
}

impl Source {
    /// `limit`: how many frames to produce in all (None = endless).
    pub fn new(limit: Option<u64>, make: FrameFn) -> Source {
        Source {
            buf: vec![0u8; SLOT_SIZE].into_boxed_slice(),
            len: 0,
            built: false,
            seq: 0,
            left: limit.unwrap_or(u64::MAX),
            make,
        }
    }

    /// Frames consumed so far (delivered or filtered by the device).
    pub fn produced(&self) -> u64 {
        self.seq
    }
}

impl Port for Source {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        // A source takes no TX: back-pressure, the chains stay on the ring.
        None
    }
    #[inline]
    fn tx_commit(&mut self, _len: usize, _meta: FrameMeta) {}
    #[inline]
    fn tx_flush(&mut self) {}
    #[inline]
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        if self.left == 0 {
            return None;
        }
        if !self.built {
            self.len = (self.make)(self.seq, &mut self.buf).min(self.buf.len());
            self.built = true;
        }
        if self.len == 0 {
            return None;
        }
        Some(PortFrame { bytes: &self.buf[..self.len], meta: FrameMeta::PLAIN })
    }
    #[inline]
    fn rx_consume(&mut self) {
        if self.built && self.left > 0 {
            self.seq += 1;
            self.left -= 1;
            self.built = false;
        }
    }
    #[inline]
    fn rx_flush(&mut self) {}
    fn rx_pending(&self) -> usize {
        usize::from(self.left > 0)
    }
    /// Frame n of pair k is checked as such by the generator.
    fn pair_bound(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered() -> FrameFn {
        Box::new(|seq, buf| {
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            60
        })
    }

    #[test]
    fn frames_are_numbered_and_repeated_until_consumed() {
        let mut s = Source::new(Some(2), numbered());
        assert_eq!(s.rx_pending(), 1);
        assert_eq!(&s.rx_peek().unwrap().bytes[..8], &0u64.to_le_bytes());
        // Not consumed (no RX buffer): the same frame again.
        assert_eq!(&s.rx_peek().unwrap().bytes[..8], &0u64.to_le_bytes());
        s.rx_consume();
        let f = s.rx_peek().unwrap().bytes;
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..8], &1u64.to_le_bytes());
        s.rx_consume();
        assert!(s.rx_peek().is_none(), "limit reached");
        assert_eq!(s.rx_pending(), 0);
        assert_eq!(s.produced(), 2);
        assert!(s.tx_slot().is_none());
    }
}
