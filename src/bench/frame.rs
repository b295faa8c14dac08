//! Test frames: Ethernet header, a local-experimental EtherType, then
//! `pair u16 | seq u64 | len u16` and a payload derived from `seq`, so the
//! receiver can tell lost, duplicated, reordered and corrupted frames apart.

pub const ETHERTYPE: u16 = 0x88b5;
/// Ethernet header + pair + seq + len.
pub const MIN_FRAME: usize = 14 + 2 + 8 + 2;
/// Longest frame `build` writes in full (longer buffers are cut to it).
pub const MAX_FRAME: usize = 2048;

/// Byte j is `j as u8`: the payload of frame `seq` is the slice starting at
/// `seq as u8`, so building and checking are one memcpy / memcmp instead of
/// a byte loop (the byte loop cost ~1 µs per 1518-byte frame).
static PATTERN: [u8; 256 + MAX_FRAME] = {
    let mut t = [0u8; 256 + MAX_FRAME];
    let mut j = 0;
    while j < t.len() {
        t[j] = j as u8;
        j += 1;
    }
    t
};

#[inline]
fn payload(seq: u64, n: usize) -> &'static [u8] {
    let k = seq as u8 as usize;
    &PATTERN[k..k + n]
}

/// Fill `buf[..len]` with frame `seq` of `pair`. Returns `len`.
pub fn build(buf: &mut [u8], len: usize, dst: [u8; 6], src: [u8; 6], pair: u16, seq: u64) -> usize {
    let len = len.clamp(MIN_FRAME, buf.len().min(MAX_FRAME));
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..16].copy_from_slice(&pair.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[24..26].copy_from_slice(&(len as u16).to_le_bytes());
    buf[MIN_FRAME..len].copy_from_slice(payload(seq, len - MIN_FRAME));
    len
}

/// A frame built by [`build`] (its EtherType), damaged or not; anything
/// else on a real network is someone else's traffic.
#[inline]
pub fn is_ours(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == ETHERTYPE.to_be_bytes()
}

/// Fill only the header of frame `seq` (addresses, EtherType, pair, seq,
/// len); the payload bytes stay whatever the buffer held. For `--check seq`
/// frames that are not sampled. Returns the clamped `len`.
pub fn stamp(buf: &mut [u8], len: usize, dst: [u8; 6], src: [u8; 6], pair: u16, seq: u64) -> usize {
    let len = len.clamp(MIN_FRAME, buf.len().min(MAX_FRAME));
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..16].copy_from_slice(&pair.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[24..26].copy_from_slice(&(len as u16).to_le_bytes());
    len
}

/// Under `--check seq`, every `SAMPLE`-th frame (seq a multiple of it) is
/// built and checked in full; the others carry and get checked only their
/// header (sequence number, pair, length).
pub const SAMPLE: u64 = 64;

/// Whether frame `seq` is built and checked in full under `--check seq`.
#[inline]
pub fn sampled(seq: u64) -> bool {
    seq % SAMPLE == 0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Ok { pair: u16, seq: u64 },
    Corrupt,
}

/// Verify a received frame (addresses are not checked: a reflector may
/// have swapped them).
pub fn check(frame: &[u8]) -> Check {
    match check_header(frame) {
        Check::Ok { seq, .. } if frame[MIN_FRAME..] != *payload(seq, frame.len() - MIN_FRAME) => Check::Corrupt,
        c => c,
    }
}

/// Verify the header only (EtherType and length field); the payload is not
/// read.
#[inline]
pub fn check_header(frame: &[u8]) -> Check {
    if frame.len() < MIN_FRAME || frame[12..14] != ETHERTYPE.to_be_bytes() {
        return Check::Corrupt;
    }
    let pair = u16::from_le_bytes([frame[14], frame[15]]);
    let seq = u64::from_le_bytes(frame[16..24].try_into().unwrap());
    let len = u16::from_le_bytes([frame[24], frame[25]]) as usize;
    if len != frame.len() || len > MAX_FRAME {
        return Check::Corrupt;
    }
    Check::Ok { pair, seq }
}

/// `--check seq`: the header of every frame, the payload of sampled ones.
#[inline]
pub fn check_sampled(frame: &[u8]) -> Check {
    match check_header(frame) {
        Check::Ok { seq, .. } if sampled(seq) => check(frame),
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_frame_checks_and_a_flipped_bit_does_not() {
        let mut b = [0u8; 2048];
        let n = build(&mut b, 100, [1; 6], [2; 6], 3, 77);
        assert_eq!(check(&b[..n]), Check::Ok { pair: 3, seq: 77 });
        b[60] ^= 1;
        assert_eq!(check(&b[..n]), Check::Corrupt);
        assert_eq!(check(&b[..n - 1]), Check::Corrupt);
        // The payload still follows seq: byte i of frame 300 is (300 + i) mod 256.
        let n = build(&mut b, 1518, [1; 6], [2; 6], 0, 300);
        assert_eq!(n, 1518);
        assert_eq!(b[MIN_FRAME], 44);
        assert_eq!(b[MIN_FRAME + 300], ((300 + 300) % 256) as u8);
        assert_eq!(check(&b[..n]), Check::Ok { pair: 0, seq: 300 });
        b[n - 1] ^= 0x80;
        assert_eq!(check(&b[..n]), Check::Corrupt);
    }

    #[test]
    fn sampled_checks_read_payloads_of_every_64th_frame_only() {
        let mut b = [0u8; 2048];
        // Frame 128 is sampled: a payload flip is caught.
        let n = build(&mut b, 200, [1; 6], [2; 6], 0, 128);
        assert_eq!(check_sampled(&b[..n]), Check::Ok { pair: 0, seq: 128 });
        b[100] ^= 4;
        assert_eq!(check_sampled(&b[..n]), Check::Corrupt);
        // Frame 129 is not: a stamped header over old bytes passes, a
        // damaged header or length does not.
        let n = stamp(&mut b, 200, [1; 6], [2; 6], 0, 129);
        assert_eq!(check(&b[..n]), Check::Corrupt);
        assert_eq!(check_sampled(&b[..n]), Check::Ok { pair: 0, seq: 129 });
        assert_eq!(check_sampled(&b[..n - 1]), Check::Corrupt);
        b[12] ^= 1;
        assert_eq!(check_sampled(&b[..n]), Check::Corrupt);
    }
}
