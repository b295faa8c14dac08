//! The virtio-net device configuration space (virtio spec 1.3 §5.1.4).
//!
//! Only the first 12 bytes are used by this device: `mac` (valid with
//! VIRTIO_NET_F_MAC), `status` (with VIRTIO_NET_F_STATUS),
//! `max_virtqueue_pairs` (with VIRTIO_NET_F_MQ) and `mtu` (with
//! VIRTIO_NET_F_MTU). All multi-byte fields are little endian (VERSION_1).

use virtio_bindings::bindings::virtio_net as vn;

pub const MAC_OFFSET: usize = 0;
pub const STATUS_OFFSET: usize = 6;
pub const MAX_VIRTQUEUE_PAIRS_OFFSET: usize = 8;
pub const MTU_OFFSET: usize = 10;
/// Bytes of config space this device exposes.
pub const CONFIG_LEN: usize = 12;

/// `status`: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = vn::VIRTIO_NET_S_LINK_UP as u16;
/// `status`: the device asks the driver to send gratuitous packets (§5.1.6.5.4).
pub const VIRTIO_NET_S_ANNOUNCE: u16 = vn::VIRTIO_NET_S_ANNOUNCE as u16;

/// Range the spec allows for `max_virtqueue_pairs` (§5.1.4.1).
pub const MIN_PAIRS: u16 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN as u16;
pub const MAX_PAIRS: u16 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX as u16;
/// Lowest `mtu` the device may report (§5.1.4.1).
pub const MIN_MTU: u16 = 68;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config space too short: {got} bytes, need {CONFIG_LEN}")]
    TooShort { got: usize },
    #[error("max_virtqueue_pairs {0} outside {MIN_PAIRS}..={MAX_PAIRS}")]
    BadPairs(u16),
    #[error("mtu {0} below {MIN_MTU}")]
    BadMtu(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}

impl NetConfig {
    /// A config with the link up.
    pub fn new(mac: [u8; 6], max_virtqueue_pairs: u16, mtu: u16) -> Self {
        NetConfig { mac, status: VIRTIO_NET_S_LINK_UP, max_virtqueue_pairs, mtu }
    }

    /// The device-side limits of §5.1.4.1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_PAIRS..=MAX_PAIRS).contains(&self.max_virtqueue_pairs) {
            return Err(ConfigError::BadPairs(self.max_virtqueue_pairs));
        }
        if self.mtu < MIN_MTU {
            return Err(ConfigError::BadMtu(self.mtu));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[MAC_OFFSET..MAC_OFFSET + 6].copy_from_slice(&self.mac);
        b[STATUS_OFFSET..STATUS_OFFSET + 2].copy_from_slice(&self.status.to_le_bytes());
        b[MAX_VIRTQUEUE_PAIRS_OFFSET..MAX_VIRTQUEUE_PAIRS_OFFSET + 2]
            .copy_from_slice(&self.max_virtqueue_pairs.to_le_bytes());
        b[MTU_OFFSET..MTU_OFFSET + 2].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    /// Parses the first [`CONFIG_LEN`] bytes; later fields (speed, duplex,
    /// RSS limits) are ignored.
    pub fn from_bytes(b: &[u8]) -> Result<Self, ConfigError> {
        if b.len() < CONFIG_LEN {
            return Err(ConfigError::TooShort { got: b.len() });
        }
        let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[MAC_OFFSET..MAC_OFFSET + 6]);
        Ok(NetConfig {
            mac,
            status: le16(STATUS_OFFSET),
            max_virtqueue_pairs: le16(MAX_VIRTQUEUE_PAIRS_OFFSET),
            mtu: le16(MTU_OFFSET),
        })
    }

    pub fn link_up(&self) -> bool {
        self.status & VIRTIO_NET_S_LINK_UP != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;
    use virtio_bindings::bindings::virtio_net::virtio_net_config;

    #[test]
    fn offsets_match_bindings() {
        assert_eq!(offset_of!(virtio_net_config, mac), MAC_OFFSET);
        assert_eq!(offset_of!(virtio_net_config, status), STATUS_OFFSET);
        assert_eq!(offset_of!(virtio_net_config, max_virtqueue_pairs), MAX_VIRTQUEUE_PAIRS_OFFSET);
        assert_eq!(offset_of!(virtio_net_config, mtu), MTU_OFFSET);
        assert_eq!(VIRTIO_NET_S_LINK_UP, 1);
        assert_eq!(VIRTIO_NET_S_ANNOUNCE, 2);
    }

    #[test]
    fn bytes_are_little_endian_in_spec_layout() {
        let c = NetConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            status: VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE,
            max_virtqueue_pairs: 0x0102,
            mtu: 1500,
        };
        let b = c.to_bytes();
        assert_eq!(b, [0x52, 0x54, 0, 0x12, 0x34, 0x56, 3, 0, 2, 1, 0xdc, 0x05]);
        assert_eq!(NetConfig::from_bytes(&b), Ok(c));
        // Longer input (e.g. speed/duplex after mtu) parses the same.
        let mut long = b.to_vec();
        long.extend_from_slice(&[0xff; 5]);
        assert_eq!(NetConfig::from_bytes(&long), Ok(c));
    }

    #[test]
    fn short_input_is_an_error() {
        assert_eq!(NetConfig::from_bytes(&[0; 11]), Err(ConfigError::TooShort { got: 11 }));
    }

    #[test]
    fn validate_limits() {
        let mut c = NetConfig::new([2, 0, 0, 0, 0, 1], 4, 1500);
        assert!(c.link_up());
        c.validate().unwrap();
        c.max_virtqueue_pairs = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadPairs(0)));
        c.max_virtqueue_pairs = 0x8001;
        assert_eq!(c.validate(), Err(ConfigError::BadPairs(0x8001)));
        c.max_virtqueue_pairs = 0x8000;
        c.mtu = 67;
        assert_eq!(c.validate(), Err(ConfigError::BadMtu(67)));
    }
}
