//! The virtio-net device configuration space (virtio spec 1.3 §5.1.4).
//!
//! [`NetConfig`] covers the first 12 bytes: `mac` (valid with
//! VIRTIO_NET_F_MAC), `status` (with VIRTIO_NET_F_STATUS),
//! `max_virtqueue_pairs` (with VIRTIO_NET_F_MQ or RSS) and `mtu` (with
//! VIRTIO_NET_F_MTU). [`ConfigExt`] covers the next 12: `speed`, `duplex`
//! and the RSS / hash-report limits, which exist when SPEED_DUPLEX, RSS or
//! HASH_REPORT is offered ([`RSS_CONFIG_LEN`] bytes in all). All
//! multi-byte fields are little endian (VERSION_1).

use virtio_bindings::bindings::virtio_net as vn;

pub const MAC_OFFSET: usize = 0;
pub const STATUS_OFFSET: usize = 6;
pub const MAX_VIRTQUEUE_PAIRS_OFFSET: usize = 8;
pub const MTU_OFFSET: usize = 10;
/// Bytes of config space this device exposes.
pub const CONFIG_LEN: usize = 12;
pub const SPEED_OFFSET: usize = 12;
pub const DUPLEX_OFFSET: usize = 16;
pub const RSS_MAX_KEY_SIZE_OFFSET: usize = 17;
pub const RSS_MAX_INDIRECTION_TABLE_LENGTH_OFFSET: usize = 18;
pub const SUPPORTED_HASH_TYPES_OFFSET: usize = 20;
/// Config space length with the RSS fields (up to `supported_hash_types`).
pub const RSS_CONFIG_LEN: usize = 24;
/// `speed` when unknown.
pub const SPEED_UNKNOWN: u32 = u32::MAX;
/// `duplex` when unknown.
pub const DUPLEX_UNKNOWN: u8 = 0xff;

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
    #[error("RSS limits below the spec's minimum (40-byte key, 128-entry table)")]
    BadRss,
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

/// The config fields after `mtu`: link speed/duplex and what RSS and hash
/// reports support (§5.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigExt {
    /// Mbit/s, or [`SPEED_UNKNOWN`].
    pub speed: u32,
    /// 1 full, 0 half, [`DUPLEX_UNKNOWN`].
    pub duplex: u8,
    pub rss_max_key_size: u8,
    pub rss_max_indirection_table_length: u16,
    pub supported_hash_types: u32,
}

impl ConfigExt {
    /// Speed and duplex unknown; the limits of [`crate::net::rss`] (every
    /// hash type, 40-byte keys, 128-entry tables), which meet §5.1.4.1's
    /// minimums.
    pub const DEFAULT: ConfigExt = ConfigExt {
        speed: SPEED_UNKNOWN,
        duplex: DUPLEX_UNKNOWN,
        rss_max_key_size: crate::net::rss::MAX_KEY_SIZE as u8,
        rss_max_indirection_table_length: crate::net::rss::MAX_INDIRECTION_TABLE_LEN as u16,
        supported_hash_types: crate::net::rss::SUPPORTED_HASH_TYPES,
    };

    /// Bytes 12..24 of config space.
    pub fn to_bytes(&self) -> [u8; RSS_CONFIG_LEN - CONFIG_LEN] {
        let mut b = [0u8; RSS_CONFIG_LEN - CONFIG_LEN];
        let at = |o: usize| o - CONFIG_LEN;
        b[at(SPEED_OFFSET)..at(SPEED_OFFSET) + 4].copy_from_slice(&self.speed.to_le_bytes());
        b[at(DUPLEX_OFFSET)] = self.duplex;
        b[at(RSS_MAX_KEY_SIZE_OFFSET)] = self.rss_max_key_size;
        b[at(RSS_MAX_INDIRECTION_TABLE_LENGTH_OFFSET)..at(RSS_MAX_INDIRECTION_TABLE_LENGTH_OFFSET) + 2]
            .copy_from_slice(&self.rss_max_indirection_table_length.to_le_bytes());
        b[at(SUPPORTED_HASH_TYPES_OFFSET)..at(SUPPORTED_HASH_TYPES_OFFSET) + 4]
            .copy_from_slice(&self.supported_hash_types.to_le_bytes());
        b
    }

    /// Parses the fields from a whole config space of at least
    /// [`RSS_CONFIG_LEN`] bytes (driver side).
    pub fn from_config(b: &[u8]) -> Result<Self, ConfigError> {
        if b.len() < RSS_CONFIG_LEN {
            return Err(ConfigError::TooShort { got: b.len() });
        }
        let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let le32 = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        Ok(ConfigExt {
            speed: le32(SPEED_OFFSET),
            duplex: b[DUPLEX_OFFSET],
            rss_max_key_size: b[RSS_MAX_KEY_SIZE_OFFSET],
            rss_max_indirection_table_length: le16(RSS_MAX_INDIRECTION_TABLE_LENGTH_OFFSET),
            supported_hash_types: le32(SUPPORTED_HASH_TYPES_OFFSET),
        })
    }

    /// §5.1.4.1: with RSS or HASH_REPORT offered, keys of at least 40 bytes;
    /// with RSS, tables of at least 128 entries.
    pub fn validate(&self, offered: u64) -> Result<(), ConfigError> {
        use crate::net::features as f;
        if offered & (f::RSS | f::HASH_REPORT) != 0 && self.rss_max_key_size < 40 {
            return Err(ConfigError::BadRss);
        }
        if offered & f::RSS != 0 && self.rss_max_indirection_table_length < 128 {
            return Err(ConfigError::BadRss);
        }
        Ok(())
    }
}

/// The config space the device exposes at CREATE_DEV for `features`: the
/// first 12 bytes, and with SPEED_DUPLEX, RSS or HASH_REPORT offered the
/// fields up to `supported_hash_types` too ([`RSS_CONFIG_LEN`]). Without
/// them a driver reads zero limits past the end: Linux then sends an
/// RSS_CONFIG with no table and no key.
pub fn space(net: &NetConfig, ext: &ConfigExt, features: u64) -> Vec<u8> {
    use crate::net::features as f;
    let mut b = net.to_bytes().to_vec();
    if features & (f::SPEED_DUPLEX | f::RSS | f::HASH_REPORT) != 0 {
        b.extend_from_slice(&ext.to_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;
    use virtio_bindings::bindings::virtio_net::virtio_net_config;

    #[test]
    fn the_rss_limits_are_in_config_space_when_offered() {
        use crate::net::features as f;
        let net = NetConfig::new([2, 0, 0, 0, 0, 1], 4, 1500);
        assert_eq!(space(&net, &ConfigExt::DEFAULT, f::DEFAULT_OFFER & !(f::RSS | f::HASH_REPORT)).len(), CONFIG_LEN);
        for feat in [f::RSS, f::HASH_REPORT, f::DEFAULT_OFFER] {
            let b = space(&net, &ConfigExt::DEFAULT, feat);
            assert_eq!(b.len(), RSS_CONFIG_LEN);
            let ext = ConfigExt::from_config(&b).unwrap();
            assert_eq!(ext, ConfigExt::DEFAULT);
            ext.validate(feat).unwrap();
            assert_eq!(NetConfig::from_bytes(&b).unwrap(), net);
        }
    }

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

    #[test]
    fn ext_fields_match_bindings() {
        assert_eq!(offset_of!(virtio_net_config, speed), SPEED_OFFSET);
        assert_eq!(offset_of!(virtio_net_config, duplex), DUPLEX_OFFSET);
        assert_eq!(offset_of!(virtio_net_config, rss_max_key_size), RSS_MAX_KEY_SIZE_OFFSET);
        assert_eq!(
            offset_of!(virtio_net_config, rss_max_indirection_table_length),
            RSS_MAX_INDIRECTION_TABLE_LENGTH_OFFSET
        );
        assert_eq!(offset_of!(virtio_net_config, supported_hash_types), SUPPORTED_HASH_TYPES_OFFSET);
        let e = ConfigExt::DEFAULT;
        let mut full = NetConfig::new([2, 0, 0, 0, 0, 1], 4, 1500).to_bytes().to_vec();
        full.extend_from_slice(&e.to_bytes());
        assert_eq!(full.len(), RSS_CONFIG_LEN);
        assert_eq!(full[12..], [0xff, 0xff, 0xff, 0xff, 0xff, 40, 128, 0, 0xff, 0x01, 0, 0]);
        assert_eq!(ConfigExt::from_config(&full), Ok(e));
        assert_eq!(ConfigExt::from_config(&full[..23]), Err(ConfigError::TooShort { got: 23 }));
        use crate::net::features as f;
        e.validate(f::RSS | f::HASH_REPORT).unwrap();
        let small = ConfigExt { rss_max_key_size: 39, ..e };
        assert_eq!(small.validate(f::HASH_REPORT), Err(ConfigError::BadRss));
        small.validate(0).unwrap();
        let short_table = ConfigExt { rss_max_indirection_table_length: 64, ..e };
        assert_eq!(short_table.validate(f::RSS), Err(ConfigError::BadRss));
        short_table.validate(f::HASH_REPORT).unwrap();
    }
}
