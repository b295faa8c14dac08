//! Ethernet II with up to two VLAN tags.

use super::{be16, Layer, WireError};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q customer tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Tags parsed before giving up (a single or double tagged frame).
pub const MAX_VLAN_TAGS: usize = 2;

/// The Ethernet header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eth {
    /// The ethertype after the VLAN tags.
    pub ethertype: u16,
    /// VLAN tags between the MAC addresses and `ethertype`.
    pub vlans: u8,
    /// Offset of the L3 header: 14 + 4 per tag.
    pub l3_off: usize,
}

#[inline]
fn is_vlan(t: u16) -> bool {
    t == ETHERTYPE_VLAN || t == ETHERTYPE_QINQ
}

/// Parses the MAC header and up to [`MAX_VLAN_TAGS`] tags. Guarantees
/// `l3_off <= frame.len()`.
pub fn parse(frame: &[u8]) -> Result<Eth, WireError> {
    let mut ethertype = be16(frame, 12, Layer::Ethernet)?;
    let mut vlans = 0u8;
    while is_vlan(ethertype) {
        if vlans as usize == MAX_VLAN_TAGS {
            return Err(WireError::TooManyVlans);
        }
        // The tag is TPID (already read), TCI, then the next ethertype.
        ethertype = be16(frame, ETH_HLEN + VLAN_HLEN * vlans as usize + 2, Layer::Vlan)?;
        vlans += 1;
    }
    Ok(Eth { ethertype, vlans, l3_off: ETH_HLEN + VLAN_HLEN * vlans as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(types: &[u16]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for (i, t) in types.iter().enumerate() {
            f.extend_from_slice(&t.to_be_bytes());
            if i + 1 < types.len() {
                f.extend_from_slice(&[0x00, 0x05]); // TCI: vid 5
            }
        }
        f
    }

    #[test]
    fn untagged_single_and_double() {
        let e = parse(&frame(&[ETHERTYPE_IPV4])).unwrap();
        assert_eq!(e, Eth { ethertype: ETHERTYPE_IPV4, vlans: 0, l3_off: 14 });
        let e = parse(&frame(&[ETHERTYPE_VLAN, ETHERTYPE_IPV6])).unwrap();
        assert_eq!(e, Eth { ethertype: ETHERTYPE_IPV6, vlans: 1, l3_off: 18 });
        let e = parse(&frame(&[ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETHERTYPE_IPV4])).unwrap();
        assert_eq!(e, Eth { ethertype: ETHERTYPE_IPV4, vlans: 2, l3_off: 22 });
        // Unknown ethertypes are returned, not refused: the caller decides.
        assert_eq!(parse(&frame(&[0x0806])).unwrap().ethertype, 0x0806);
    }

    #[test]
    fn three_tags_and_truncation() {
        let f = frame(&[ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETHERTYPE_VLAN, ETHERTYPE_IPV4]);
        assert_eq!(parse(&f), Err(WireError::TooManyVlans));
        let f = frame(&[ETHERTYPE_VLAN, ETHERTYPE_IPV4]);
        for cut in 0..f.len() {
            assert!(matches!(parse(&f[..cut]), Err(WireError::Truncated { .. })), "cut {cut}");
        }
    }
}
