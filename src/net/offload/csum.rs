//! The Internet checksum (RFC 1071): ones' complement sum of 16-bit words.
//!
//! [`Csum`] accumulates bytes in any number of pieces (a frame split over
//! descriptors, a pseudo-header then a payload). It reads 32-bit words in
//! host order into a 64-bit accumulator; the ones' complement sum does not
//! depend on byte order (RFC 1071 §2(B)), so the only conversion is one
//! swap at the end. A piece that starts at an odd offset of the checksummed
//! data has its sum byte-swapped (RFC 1071 §2(B) again), so odd-length
//! pieces may appear anywhere.
//!
//! Values called "network value" are the 16-bit number as it reads in
//! network byte order, i.e. what `u16::from_be_bytes` of the two checksum
//! bytes gives; write them back with `to_be_bytes`.

/// Bytes summed per inner block: 2^30 bytes are 2^28 words below 2^32, so
/// the 64-bit accumulator cannot overflow within a block.
const BLOCK: usize = 1 << 30;

/// A running ones' complement sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Csum {
    /// Sum of host-order 16-bit lanes, not yet folded; kept below 2^33.
    acc: u64,
    /// The bytes added so far have odd length: the next piece starts at an
    /// odd offset.
    odd: bool,
}

/// Folds a 64-bit lane sum to 16 bits with end-around carry.
#[inline]
fn fold64(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    let mut s = (s & 0xffff) as u32 + (s >> 16) as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Sum of `b` as host-order lanes, `b` taken to start at an even offset.
/// The result is below 2^47 for any `b.len() <= BLOCK`.
#[inline]
fn sum_block(b: &[u8]) -> u64 {
    #[inline(always)]
    fn word(w: &[u8]) -> u64 {
        u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
    }
    // Four independent accumulators over 16-byte chunks let the compiler
    // vectorise the loop.
    let mut blocks = b.chunks_exact(16);
    let mut acc = [0u64; 4];
    for c in &mut blocks {
        acc[0] += word(&c[0..4]);
        acc[1] += word(&c[4..8]);
        acc[2] += word(&c[8..12]);
        acc[3] += word(&c[12..16]);
    }
    let mut s = acc.iter().sum::<u64>();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        s += word(w);
    }
    match *words.remainder() {
        [] => {}
        [a] => s += u64::from(u16::from_ne_bytes([a, 0])),
        [a, b] => s += u64::from(u16::from_ne_bytes([a, b])),
        [a, b, c] => s += u64::from(u16::from_ne_bytes([a, b])) + u64::from(u16::from_ne_bytes([c, 0])),
        _ => unreachable!("chunks_exact(4) leaves at most 3 bytes"),
    }
    s
}

impl Csum {
    pub const fn new() -> Self {
        Csum { acc: 0, odd: false }
    }

    /// Adds `bytes`, which follow the bytes added so far.
    #[inline]
    pub fn add(&mut self, bytes: &[u8]) {
        for block in bytes.chunks(BLOCK) {
            let s = u64::from(fold64(sum_block(block)));
            // A piece at an odd offset contributes its sum byte-swapped.
            self.acc += if self.odd { u64::from((s as u16).swap_bytes()) } else { s };
            self.odd ^= block.len() % 2 == 1;
            self.acc = u64::from(fold64(self.acc));
        }
    }

    /// Adds one 16-bit word given as its network value. Only valid at an
    /// even offset (pseudo-header fields are).
    #[inline]
    pub fn add_u16(&mut self, v: u16) {
        debug_assert!(!self.odd, "add_u16 at an odd offset");
        self.acc += u64::from(u16::from_ne_bytes(v.to_be_bytes()));
    }

    /// Adds a 32-bit value as two words (network order), e.g. an IPv6
    /// upper-layer length.
    #[inline]
    pub fn add_u32(&mut self, v: u32) {
        self.add_u16((v >> 16) as u16);
        self.add_u16(v as u16);
    }

    /// Adds another sum computed over bytes at an even offset.
    #[inline]
    pub fn add_sum(&mut self, other: Csum) {
        debug_assert!(!self.odd, "add_sum at an odd offset");
        self.acc += other.acc;
        self.odd = other.odd;
    }

    /// The folded sum as a network value (not complemented).
    #[inline]
    pub fn fold(self) -> u16 {
        u16::from_be(fold64(self.acc))
    }

    /// The checksum field value: the complement of [`Csum::fold`].
    #[inline]
    pub fn finish(self) -> u16 {
        !self.fold()
    }
}

/// Folded ones' complement sum of `b` (network value).
#[inline]
pub fn sum(b: &[u8]) -> u16 {
    let mut c = Csum::new();
    c.add(b);
    c.fold()
}

/// The checksum of `b` (complemented sum). A buffer whose checksum field is
/// correct has `checksum == 0` over the whole covered range.
#[inline]
pub fn checksum(b: &[u8]) -> u16 {
    !sum(b)
}

/// Ones' complement addition of two network values.
#[inline]
pub fn add16(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Ones' complement subtraction `a - b`.
#[inline]
pub fn sub16(a: u16, b: u16) -> u16 {
    add16(a, !b)
}

/// Pseudo-header sum of IPv4 (RFC 793 §3.1 / RFC 768): addresses, zero +
/// protocol, upper-layer length. Not complemented.
pub fn pseudo_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, len: u16) -> Csum {
    let mut c = Csum::new();
    c.add(src);
    c.add(dst);
    c.add_u16(u16::from(proto));
    c.add_u16(len);
    c
}

/// Pseudo-header sum of IPv6 (RFC 8200 §8.1): addresses, 32-bit
/// upper-layer length, next header.
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> Csum {
    let mut c = Csum::new();
    c.add(src);
    c.add(dst);
    c.add_u32(len);
    c.add_u16(u16::from(proto));
    c
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsumError {
    #[error("checksum field at {start}+{offset} (2 bytes) is outside the {len}-byte frame")]
    OutOfFrame { start: usize, offset: usize, len: usize },
}

/// Completes a `VIRTIO_NET_HDR_F_NEEDS_CSUM` frame (virtio 1.3 §5.1.6.2):
/// the ones' complement checksum of `frame[start..]`, whose field at
/// `start + offset` holds the pseudo-header sum, is stored at that field.
/// A zero result is stored as 0xffff, as the kernel does (`CSUM_MANGLED_0`),
/// which keeps UDP's "no checksum" value out and is equivalent for TCP.
/// On error the frame is unchanged.
pub fn complete(frame: &mut [u8], start: usize, offset: usize) -> Result<(), CsumError> {
    let len = frame.len();
    let field = start.checked_add(offset).filter(|f| f.checked_add(2).is_some_and(|e| e <= len));
    let Some(field) = field else {
        return Err(CsumError::OutOfFrame { start, offset, len });
    };
    let c = checksum(&frame[start..]);
    let c = if c == 0 { 0xffff } else { c };
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// RFC 1071 done the slow way: big-endian words, carries folded at the end.
    pub(crate) fn naive_sum(b: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for c in b.chunks(2) {
            s += u64::from(c[0]) << 8 | c.get(1).map_or(0, |&x| u64::from(x));
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8).collect()
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&b), 0xddf2);
        assert_eq!(checksum(&b), !0xddf2);
    }

    #[test]
    fn matches_naive_for_all_small_lengths_and_offsets() {
        let data = bytes(600, 7);
        for start in 0..8 {
            for end in start..data.len() {
                assert_eq!(sum(&data[start..end]), naive_sum(&data[start..end]), "{start}..{end}");
            }
        }
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0xff; 4096]), 0xffff);
    }

    #[test]
    fn pieces_at_any_split_equal_the_whole() {
        let data = bytes(301, 99);
        let whole = sum(&data);
        for a in 0..data.len() {
            for b in (a..data.len()).step_by(7) {
                let mut c = Csum::new();
                c.add(&data[..a]);
                c.add(&data[a..b]);
                c.add(&data[b..]);
                assert_eq!(c.fold(), whole, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn words_and_arithmetic() {
        let mut c = Csum::new();
        c.add_u16(0x1234);
        c.add_u32(0xabcd_0001);
        assert_eq!(c.fold(), naive_sum(&[0x12, 0x34, 0xab, 0xcd, 0, 1]));
        assert_eq!(add16(0xffff, 1), 1);
        assert_eq!(add16(0x8000, 0x8000), 1);
        assert_eq!(sub16(add16(0x1234, 0x4321), 0x4321), 0x1234);
    }

    #[test]
    fn pseudo_headers_match_naive() {
        let (s4, d4) = ([10, 0, 0, 1], [192, 168, 1, 200]);
        let mut raw = Vec::new();
        raw.extend_from_slice(&s4);
        raw.extend_from_slice(&d4);
        raw.extend_from_slice(&[0, 6, 0x05, 0xdc]);
        assert_eq!(pseudo_v4(&s4, &d4, 6, 1500).fold(), naive_sum(&raw));
        let (s6, d6) = ([0x20; 16], [0xfe; 16]);
        let mut raw = Vec::new();
        raw.extend_from_slice(&s6);
        raw.extend_from_slice(&d6);
        raw.extend_from_slice(&[0, 1, 0x23, 0x45, 0, 0, 0, 17]);
        assert_eq!(pseudo_v6(&s6, &d6, 17, 0x12345).fold(), naive_sum(&raw));
    }

    #[test]
    fn complete_fills_the_field() {
        for len in 8..80 {
            let mut f = bytes(len, len as u8);
            let (start, offset) = (4, 2);
            // Any starting value is folded in: here the "pseudo-header" 0x1234.
            f[6..8].copy_from_slice(&0x1234u16.to_be_bytes());
            complete(&mut f, start, offset).unwrap();
            // As a receiver verifies: the covered bytes (field included)
            // plus the pseudo-header sum give 0xffff.
            assert_eq!(add16(naive_sum(&f[start..]), 0x1234), 0xffff, "len {len}");
        }
    }

    #[test]
    fn complete_maps_zero_to_ffff() {
        // Data summing to 0xffff makes the checksum 0, stored as 0xffff.
        let mut f = [0xff, 0xff, 0, 0];
        complete(&mut f, 0, 2).unwrap();
        assert_eq!(f, [0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn complete_bounds() {
        let mut f = [0u8; 10];
        for (s, o) in [(9, 0), (8, 1), (0, 9), (10, 0), (usize::MAX, 1), (1, usize::MAX), (usize::MAX - 1, 1)] {
            assert_eq!(complete(&mut f, s, o), Err(CsumError::OutOfFrame { start: s, offset: o, len: 10 }));
            assert_eq!(f, [0; 10]);
        }
        complete(&mut f, 8, 0).unwrap();
        complete(&mut f, 0, 8).unwrap();
    }
}
