//! Test frames: Ethernet header, a local-experimental EtherType, then
//! `pair u16 | seq u64 | len u16` and a payload derived from `seq`, so the
//! receiver can tell lost, duplicated, reordered and corrupted frames apart.

pub const ETHERTYPE: u16 = 0x88b5;
/// Ethernet header + pair + seq + len.
pub const MIN_FRAME: usize = 14 + 2 + 8 + 2;

/// Fill `buf[..len]` with frame `seq` of `pair`. Returns `len`.
pub fn build(buf: &mut [u8], len: usize, dst: [u8; 6], src: [u8; 6], pair: u16, seq: u64) -> usize {
    let len = len.clamp(MIN_FRAME, buf.len());
    buf[0..6].copy_from_slice(&dst);
    buf[6..12].copy_from_slice(&src);
    buf[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[14..16].copy_from_slice(&pair.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[24..26].copy_from_slice(&(len as u16).to_le_bytes());
    let k = seq as u8;
    for (i, b) in buf[MIN_FRAME..len].iter_mut().enumerate() {
        *b = k.wrapping_add(i as u8);
    }
    len
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Ok { pair: u16, seq: u64 },
    Corrupt,
}

/// Verify a received frame (addresses are not checked: a reflector may
/// have swapped them).
pub fn check(frame: &[u8]) -> Check {
    if frame.len() < MIN_FRAME || frame[12..14] != ETHERTYPE.to_be_bytes() {
        return Check::Corrupt;
    }
    let pair = u16::from_le_bytes([frame[14], frame[15]]);
    let seq = u64::from_le_bytes(frame[16..24].try_into().unwrap());
    let len = u16::from_le_bytes([frame[24], frame[25]]) as usize;
    if len != frame.len() {
        return Check::Corrupt;
    }
    let k = seq as u8;
    if frame[MIN_FRAME..].iter().enumerate().any(|(i, b)| *b != k.wrapping_add(i as u8)) {
        return Check::Corrupt;
    }
    Check::Ok { pair, seq }
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
    }
}
