//! The control virtqueue protocol (virtio spec 1.3 §5.1.6.5).
//!
//! A control request is `u8 class, u8 command, command-specific data` in
//! device-readable buffers followed by one device-writable `u8 ack`
//! ([`VIRTIO_NET_OK`] / [`VIRTIO_NET_ERR`]). The bytes come from the driver and
//! are untrusted: [`CtrlCommand::parse`] checks exact lengths and ranges and
//! never allocates more than the input's size.
//!
//! Classes handled (each gated by its feature, checked in [`CtrlState::apply`]):
//! - RX (§5.1.6.5.1): PROMISC, ALLMULTI need CTRL_RX; ALLUNI, NOMULTI, NOUNI,
//!   NOBCAST need CTRL_RX_EXTRA. Data: one byte, 0 = off, non-zero = on.
//! - MAC (§5.1.6.5.2): TABLE_SET (needs CTRL_RX; two `le32 entries` +
//!   `entries * 6` byte tables, unicast then multicast), ADDR_SET (needs
//!   CTRL_MAC_ADDR; 6 bytes).
//! - VLAN (§5.1.6.5.3): ADD / DEL, `le16` vid below 4096; needs CTRL_VLAN.
//! - ANNOUNCE (§5.1.6.5.4): ACK, no data; needs GUEST_ANNOUNCE.
//! - MQ (§5.1.6.5.5): VQ_PAIRS_SET, `le16` in `1..=max_virtqueue_pairs`; needs MQ.
//!   RSS_CONFIG (§5.1.6.5.7.1, `struct virtio_net_rss_config`; needs RSS)
//!   and HASH_CONFIG (§5.1.6.5.6.4, `struct virtio_net_hash_config`; needs
//!   HASH_REPORT). As in QEMU, each MQ command replaces the multiqueue mode:
//!   VQ_PAIRS_SET clears RSS and hash configuration, RSS_CONFIG clears the
//!   hash configuration (and sets the queue pairs to `max_tx_vq`),
//!   HASH_CONFIG clears RSS.
//! - GUEST_OFFLOADS (§5.1.6.5.6): SET, `le64` mask of negotiated GUEST_*
//!   offloads; needs CTRL_GUEST_OFFLOADS.
//!
//! Spec-defined commands of features this device never offers (notification
//! coalescing, statistics) are [`CtrlError::Unsupported`].

use super::features as f;
use super::rss;
use virtio_bindings::bindings::virtio_net as vn;

pub const VIRTIO_NET_OK: u8 = vn::VIRTIO_NET_OK as u8;
pub const VIRTIO_NET_ERR: u8 = vn::VIRTIO_NET_ERR as u8;

pub const CLASS_RX: u8 = vn::VIRTIO_NET_CTRL_RX as u8;
pub const CLASS_MAC: u8 = vn::VIRTIO_NET_CTRL_MAC as u8;
pub const CLASS_VLAN: u8 = vn::VIRTIO_NET_CTRL_VLAN as u8;
pub const CLASS_ANNOUNCE: u8 = vn::VIRTIO_NET_CTRL_ANNOUNCE as u8;
pub const CLASS_MQ: u8 = vn::VIRTIO_NET_CTRL_MQ as u8;
pub const CLASS_GUEST_OFFLOADS: u8 = vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS as u8;
pub const CLASS_NOTF_COAL: u8 = vn::VIRTIO_NET_CTRL_NOTF_COAL as u8;
pub const CLASS_STATS: u8 = vn::VIRTIO_NET_CTRL_STATS as u8;

pub const CMD_MAC_TABLE_SET: u8 = vn::VIRTIO_NET_CTRL_MAC_TABLE_SET as u8;
pub const CMD_MAC_ADDR_SET: u8 = vn::VIRTIO_NET_CTRL_MAC_ADDR_SET as u8;
pub const CMD_VLAN_ADD: u8 = vn::VIRTIO_NET_CTRL_VLAN_ADD as u8;
pub const CMD_VLAN_DEL: u8 = vn::VIRTIO_NET_CTRL_VLAN_DEL as u8;
pub const CMD_ANNOUNCE_ACK: u8 = vn::VIRTIO_NET_CTRL_ANNOUNCE_ACK as u8;
pub const CMD_MQ_VQ_PAIRS_SET: u8 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
pub const CMD_MQ_RSS_CONFIG: u8 = vn::VIRTIO_NET_CTRL_MQ_RSS_CONFIG as u8;
pub const CMD_MQ_HASH_CONFIG: u8 = vn::VIRTIO_NET_CTRL_MQ_HASH_CONFIG as u8;
pub const CMD_GUEST_OFFLOADS_SET: u8 = vn::VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET as u8;

/// `class` + `command` bytes in front of the data.
pub const CTRL_HDR_LEN: usize = 2;
/// Entries kept per MAC table. A longer table is not refused: that table goes
/// into overflow and the filter accepts every address of its kind, since
/// filtering is best effort (§5.1.6.5.1) while dropping wanted frames is not.
pub const MAC_TABLE_CAP: usize = 64;
/// VLAN ids are 12 bits.
pub const VLAN_COUNT: usize = 4096;

const PAIRS_MIN: u16 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN as u16;
const PAIRS_MAX: u16 = vn::VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX as u16;

pub type Mac = [u8; 6];

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CtrlError {
    #[error("unknown control class {class}")]
    UnknownClass { class: u8 },
    #[error("unknown command {cmd} in control class {class}")]
    UnknownCommand { class: u8, cmd: u8 },
    #[error("control command {class}/{cmd} belongs to a feature this device does not offer")]
    Unsupported { class: u8, cmd: u8 },
    #[error("{command}: expected {expected} bytes, got {got}")]
    BadLength { command: &'static str, expected: u64, got: usize },
    #[error("{command}: value {value:#x} out of range")]
    OutOfRange { command: &'static str, value: u64 },
    #[error("{command} needs feature {feature}, which was not negotiated")]
    NotNegotiated { command: &'static str, feature: &'static str },
}

/// The six receive-mode switches of the RX class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxMode {
    Promisc,
    AllMulti,
    AllUni,
    NoMulti,
    NoUni,
    NoBcast,
}

impl RxMode {
    const ALL: [RxMode; 6] =
        [RxMode::Promisc, RxMode::AllMulti, RxMode::AllUni, RxMode::NoMulti, RxMode::NoUni, RxMode::NoBcast];

    fn cmd(self) -> u8 {
        (match self {
            RxMode::Promisc => vn::VIRTIO_NET_CTRL_RX_PROMISC,
            RxMode::AllMulti => vn::VIRTIO_NET_CTRL_RX_ALLMULTI,
            RxMode::AllUni => vn::VIRTIO_NET_CTRL_RX_ALLUNI,
            RxMode::NoMulti => vn::VIRTIO_NET_CTRL_RX_NOMULTI,
            RxMode::NoUni => vn::VIRTIO_NET_CTRL_RX_NOUNI,
            RxMode::NoBcast => vn::VIRTIO_NET_CTRL_RX_NOBCAST,
        }) as u8
    }

    fn from_cmd(cmd: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.cmd() == cmd)
    }

    fn name(self) -> &'static str {
        match self {
            RxMode::Promisc => "RX_PROMISC",
            RxMode::AllMulti => "RX_ALLMULTI",
            RxMode::AllUni => "RX_ALLUNI",
            RxMode::NoMulti => "RX_NOMULTI",
            RxMode::NoUni => "RX_NOUNI",
            RxMode::NoBcast => "RX_NOBCAST",
        }
    }
}

/// One parsed control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtrlCommand {
    Rx { mode: RxMode, on: bool },
    MacTableSet { unicast: Vec<Mac>, multicast: Vec<Mac> },
    MacAddrSet(Mac),
    VlanAdd(u16),
    VlanDel(u16),
    AnnounceAck,
    MqPairsSet(u16),
    RssConfig(RssConfig),
    HashConfig(HashConfig),
    GuestOffloadsSet(u64),
}

/// `struct virtio_net_rss_config` (§5.1.6.5.7.1). Parsing guarantees: the
/// table has a power-of-two length in `1..=rss::MAX_INDIRECTION_TABLE_LEN`,
/// no queue id has the reserved bit 15 set, the key has at most
/// `rss::MAX_KEY_SIZE` bytes. Queue ids are receive queue numbers (0 =
/// receiveq1), the spec's `vq_index_1_16`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssConfig {
    pub hash_types: u32,
    pub indirection_table: Vec<u16>,
    pub unclassified_queue: u16,
    pub max_tx_vq: u16,
    pub key: Vec<u8>,
}

/// `struct virtio_net_hash_config` (§5.1.6.5.6.4). `reserved` is kept as
/// sent: the spec asks drivers for zeroes, but Linux fills the bytes that
/// overlay `virtio_net_rss_config` (max_tx_vq), and QEMU ignores them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashConfig {
    pub hash_types: u32,
    pub reserved: [u8; 8],
    pub key: Vec<u8>,
}

const RSS_CMD: &str = "MQ_RSS_CONFIG";
const HASH_CMD: &str = "MQ_HASH_CONFIG";
/// Reserved bit of `struct rss_rq_id`.
const RQ_ID_RESERVED: u16 = 0x8000;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Parses `virtio_net_rss_config`: lengths are checked from the fields
/// present before anything is allocated.
fn parse_rss(data: &[u8]) -> Result<RssConfig, CtrlError> {
    let short = |expected: usize| CtrlError::BadLength { command: RSS_CMD, expected: expected as u64, got: data.len() };
    // hash_types, indirection_table_mask, unclassified_queue, then at least
    // one table entry, max_tx_vq and hash_key_length.
    if data.len() < 8 + 2 + 3 {
        return Err(short(8 + 2 + 3));
    }
    let hash_types = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let mask = le16(data, 4);
    let entries = mask as usize + 1;
    if !entries.is_power_of_two() || entries > rss::MAX_INDIRECTION_TABLE_LEN {
        return Err(CtrlError::OutOfRange { command: RSS_CMD, value: mask.into() });
    }
    let unclassified_queue = le16(data, 6);
    let tail = 8 + 2 * entries;
    if data.len() < tail + 3 {
        return Err(short(tail + 3));
    }
    let key_len = data[tail + 2] as usize;
    if key_len > rss::MAX_KEY_SIZE {
        return Err(CtrlError::OutOfRange { command: RSS_CMD, value: key_len as u64 });
    }
    // Bytes after the key are ignored, as QEMU's virtio-net does: Linux
    // (6.14 on) sends `sizeof(struct virtio_net_rss_config_trailer)` (4,
    // padded) plus the key, one byte more than the fields.
    if data.len() < tail + 3 + key_len {
        return Err(short(tail + 3 + key_len));
    }
    let indirection_table: Vec<u16> = data[8..tail].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    if let Some(&q) = indirection_table.iter().chain([&unclassified_queue]).find(|&&q| q & RQ_ID_RESERVED != 0) {
        return Err(CtrlError::OutOfRange { command: RSS_CMD, value: q.into() });
    }
    Ok(RssConfig {
        hash_types,
        indirection_table,
        unclassified_queue,
        max_tx_vq: le16(data, tail),
        key: data[tail + 3..tail + 3 + key_len].to_vec(),
    })
}

fn parse_hash(data: &[u8]) -> Result<HashConfig, CtrlError> {
    let short =
        |expected: usize| CtrlError::BadLength { command: HASH_CMD, expected: expected as u64, got: data.len() };
    if data.len() < 13 {
        return Err(short(13));
    }
    let key_len = data[12] as usize;
    if key_len > rss::MAX_KEY_SIZE {
        return Err(CtrlError::OutOfRange { command: HASH_CMD, value: key_len as u64 });
    }
    // Trailing bytes ignored, as for RSS_CONFIG (Linux sends this command
    // in the RSS layout: one table entry, padded trailer).
    if data.len() < 13 + key_len {
        return Err(short(13 + key_len));
    }
    let mut reserved = [0u8; 8];
    reserved.copy_from_slice(&data[4..12]);
    Ok(HashConfig {
        hash_types: u32::from_le_bytes([data[0], data[1], data[2], data[3]]),
        reserved,
        key: data[13..13 + key_len].to_vec(),
    })
}

fn exact<const N: usize>(command: &'static str, data: &[u8]) -> Result<[u8; N], CtrlError> {
    data.try_into().map_err(|_| CtrlError::BadLength { command, expected: N as u64, got: data.len() })
}

/// Parses one `le32 entries; u8 macs[entries][6]` table from the front of
/// `data`, returning it and the rest. The count is checked against the bytes
/// present before anything is allocated.
fn parse_mac_table(data: &[u8], min_after: u64) -> Result<(Vec<Mac>, &[u8]), CtrlError> {
    const CMD: &str = "MAC_TABLE_SET";
    let Some((count, rest)) = data.split_first_chunk::<4>() else {
        return Err(CtrlError::BadLength { command: CMD, expected: 4 + min_after, got: data.len() });
    };
    let count = u32::from_le_bytes(*count) as u64;
    // u64 arithmetic: count <= u32::MAX, so count * 6 + small cannot overflow.
    let need = count * 6;
    if need + min_after > rest.len() as u64 {
        return Err(CtrlError::BadLength { command: CMD, expected: 4 + need + min_after, got: data.len() });
    }
    let (macs, rest) = rest.split_at(need as usize);
    let table = macs.chunks_exact(6).map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]]).collect();
    Ok((table, rest))
}

impl CtrlCommand {
    /// Parses `data` as the payload of command `cmd` in class `class`.
    pub fn parse(class: u8, cmd: u8, data: &[u8]) -> Result<Self, CtrlError> {
        let unknown = CtrlError::UnknownCommand { class, cmd };
        match class {
            CLASS_RX => {
                let mode = RxMode::from_cmd(cmd).ok_or(unknown)?;
                let [v] = exact::<1>(mode.name(), data)?;
                // The spec's drivers send 0 or 1; the Linux uAPI header documents
                // any non-zero value as "on", so accept that too.
                Ok(CtrlCommand::Rx { mode, on: v != 0 })
            }
            CLASS_MAC => match cmd {
                CMD_MAC_TABLE_SET => {
                    let (unicast, rest) = parse_mac_table(data, 4)?;
                    let (multicast, rest) = parse_mac_table(rest, 0)?;
                    if !rest.is_empty() {
                        return Err(CtrlError::BadLength {
                            command: "MAC_TABLE_SET",
                            expected: (data.len() - rest.len()) as u64,
                            got: data.len(),
                        });
                    }
                    Ok(CtrlCommand::MacTableSet { unicast, multicast })
                }
                CMD_MAC_ADDR_SET => Ok(CtrlCommand::MacAddrSet(exact::<6>("MAC_ADDR_SET", data)?)),
                _ => Err(unknown),
            },
            CLASS_VLAN => {
                let (name, add) = match cmd {
                    CMD_VLAN_ADD => ("VLAN_ADD", true),
                    CMD_VLAN_DEL => ("VLAN_DEL", false),
                    _ => return Err(unknown),
                };
                let vid = u16::from_le_bytes(exact::<2>(name, data)?);
                if vid as usize >= VLAN_COUNT {
                    return Err(CtrlError::OutOfRange { command: name, value: vid.into() });
                }
                Ok(if add { CtrlCommand::VlanAdd(vid) } else { CtrlCommand::VlanDel(vid) })
            }
            CLASS_ANNOUNCE => match cmd {
                CMD_ANNOUNCE_ACK => {
                    exact::<0>("ANNOUNCE_ACK", data)?;
                    Ok(CtrlCommand::AnnounceAck)
                }
                _ => Err(unknown),
            },
            CLASS_MQ => match cmd {
                CMD_MQ_VQ_PAIRS_SET => {
                    let n = u16::from_le_bytes(exact::<2>("MQ_VQ_PAIRS_SET", data)?);
                    if !(PAIRS_MIN..=PAIRS_MAX).contains(&n) {
                        return Err(CtrlError::OutOfRange { command: "MQ_VQ_PAIRS_SET", value: n.into() });
                    }
                    Ok(CtrlCommand::MqPairsSet(n))
                }
                CMD_MQ_RSS_CONFIG => Ok(CtrlCommand::RssConfig(parse_rss(data)?)),
                CMD_MQ_HASH_CONFIG => Ok(CtrlCommand::HashConfig(parse_hash(data)?)),
                _ => Err(unknown),
            },
            CLASS_GUEST_OFFLOADS => match cmd {
                CMD_GUEST_OFFLOADS_SET => {
                    Ok(CtrlCommand::GuestOffloadsSet(u64::from_le_bytes(exact::<8>("GUEST_OFFLOADS_SET", data)?)))
                }
                _ => Err(unknown),
            },
            CLASS_NOTF_COAL | CLASS_STATS => Err(CtrlError::Unsupported { class, cmd }),
            _ => Err(CtrlError::UnknownClass { class }),
        }
    }

    /// Parses a whole request: `class`, `command`, then data.
    pub fn parse_message(msg: &[u8]) -> Result<Self, CtrlError> {
        match msg {
            [class, cmd, data @ ..] => Self::parse(*class, *cmd, data),
            _ => Err(CtrlError::BadLength { command: "control header", expected: 2, got: msg.len() }),
        }
    }

    /// `(class, command, data)` as a driver sends it.
    pub fn encode(&self) -> (u8, u8, Vec<u8>) {
        match self {
            CtrlCommand::Rx { mode, on } => (CLASS_RX, mode.cmd(), vec![u8::from(*on)]),
            CtrlCommand::MacTableSet { unicast, multicast } => {
                let mut d = Vec::with_capacity(8 + 6 * (unicast.len() + multicast.len()));
                for table in [unicast, multicast] {
                    d.extend_from_slice(&(table.len() as u32).to_le_bytes());
                    table.iter().for_each(|m| d.extend_from_slice(m));
                }
                (CLASS_MAC, CMD_MAC_TABLE_SET, d)
            }
            CtrlCommand::MacAddrSet(m) => (CLASS_MAC, CMD_MAC_ADDR_SET, m.to_vec()),
            CtrlCommand::VlanAdd(v) => (CLASS_VLAN, CMD_VLAN_ADD, v.to_le_bytes().to_vec()),
            CtrlCommand::VlanDel(v) => (CLASS_VLAN, CMD_VLAN_DEL, v.to_le_bytes().to_vec()),
            CtrlCommand::AnnounceAck => (CLASS_ANNOUNCE, CMD_ANNOUNCE_ACK, Vec::new()),
            CtrlCommand::MqPairsSet(n) => (CLASS_MQ, CMD_MQ_VQ_PAIRS_SET, n.to_le_bytes().to_vec()),
            CtrlCommand::RssConfig(r) => {
                // A hand-built table of a length parse() refuses still
                // encodes its real length - 1 as the mask (saturated).
                let mask = r.indirection_table.len().saturating_sub(1).min(u16::MAX as usize) as u16;
                let mut d = Vec::with_capacity(11 + 2 * r.indirection_table.len() + r.key.len());
                d.extend_from_slice(&r.hash_types.to_le_bytes());
                d.extend_from_slice(&mask.to_le_bytes());
                d.extend_from_slice(&r.unclassified_queue.to_le_bytes());
                r.indirection_table.iter().for_each(|q| d.extend_from_slice(&q.to_le_bytes()));
                d.extend_from_slice(&r.max_tx_vq.to_le_bytes());
                d.push(r.key.len().min(u8::MAX as usize) as u8);
                d.extend_from_slice(&r.key);
                (CLASS_MQ, CMD_MQ_RSS_CONFIG, d)
            }
            CtrlCommand::HashConfig(h) => {
                let mut d = Vec::with_capacity(13 + h.key.len());
                d.extend_from_slice(&h.hash_types.to_le_bytes());
                d.extend_from_slice(&h.reserved);
                d.push(h.key.len().min(u8::MAX as usize) as u8);
                d.extend_from_slice(&h.key);
                (CLASS_MQ, CMD_MQ_HASH_CONFIG, d)
            }
            CtrlCommand::GuestOffloadsSet(o) => {
                (CLASS_GUEST_OFFLOADS, CMD_GUEST_OFFLOADS_SET, o.to_le_bytes().to_vec())
            }
        }
    }

    /// The whole request as one buffer (header then data).
    pub fn encode_message(&self) -> Vec<u8> {
        let (class, cmd, data) = self.encode();
        let mut m = Vec::with_capacity(CTRL_HDR_LEN + data.len());
        m.extend_from_slice(&[class, cmd]);
        m.extend_from_slice(&data);
        m
    }

    pub fn name(&self) -> &'static str {
        match self {
            CtrlCommand::Rx { mode, .. } => mode.name(),
            CtrlCommand::MacTableSet { .. } => "MAC_TABLE_SET",
            CtrlCommand::MacAddrSet(_) => "MAC_ADDR_SET",
            CtrlCommand::VlanAdd(_) => "VLAN_ADD",
            CtrlCommand::VlanDel(_) => "VLAN_DEL",
            CtrlCommand::AnnounceAck => "ANNOUNCE_ACK",
            CtrlCommand::MqPairsSet(_) => "MQ_VQ_PAIRS_SET",
            CtrlCommand::RssConfig(_) => RSS_CMD,
            CtrlCommand::HashConfig(_) => HASH_CMD,
            CtrlCommand::GuestOffloadsSet(_) => "GUEST_OFFLOADS_SET",
        }
    }

    /// The feature (mask) that must be negotiated for this command
    /// (driver requirements of §5.1.6.5.1 through §5.1.6.5.6).
    pub fn required_feature(&self) -> u64 {
        match self {
            CtrlCommand::Rx { mode: RxMode::Promisc | RxMode::AllMulti, .. } => f::CTRL_RX,
            CtrlCommand::Rx { .. } => f::CTRL_RX_EXTRA,
            // "If VIRTIO_NET_F_CTRL_RX has not been negotiated, the driver MUST
            // NOT issue VIRTIO_NET_CTRL_MAC class commands"; ADDR_SET has its own bit.
            CtrlCommand::MacTableSet { .. } => f::CTRL_RX,
            CtrlCommand::MacAddrSet(_) => f::CTRL_MAC_ADDR,
            CtrlCommand::VlanAdd(_) | CtrlCommand::VlanDel(_) => f::CTRL_VLAN,
            CtrlCommand::AnnounceAck => f::GUEST_ANNOUNCE,
            CtrlCommand::MqPairsSet(_) => f::MQ,
            CtrlCommand::RssConfig(_) => f::RSS,
            CtrlCommand::HashConfig(_) => f::HASH_REPORT,
            CtrlCommand::GuestOffloadsSet(_) => f::CTRL_GUEST_OFFLOADS,
        }
    }

    pub fn check_negotiated(&self, negotiated: u64) -> Result<(), CtrlError> {
        let need = self.required_feature();
        if negotiated & need == 0 {
            return Err(CtrlError::NotNegotiated { command: self.name(), feature: f::name(need).unwrap_or("?") });
        }
        Ok(())
    }
}

/// What the dataplane has to do after a command was applied. The value is
/// the new state, which may equal the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlEffect {
    /// Accepted; nothing changed (e.g. ANNOUNCE_ACK with no announce pending).
    None,
    /// RX mode, MAC tables or VLAN table changed: publish a new `RxFilter`.
    FilterChanged,
    /// The default MAC changed: publish a new `RxFilter`, and write `mac` to
    /// config space when VIRTIO_NET_F_MAC was negotiated (§5.1.6.5.2.1).
    MacChanged(Mac),
    /// Only the first `n` queue pairs may be used from now on (§5.1.6.5.5).
    /// RSS and hash-report configuration were cleared: publish a new
    /// `rss::Steering::from_ctrl` (now `None`).
    PairsChanged(u16),
    /// RSS configuration set (`CtrlState::rss`): publish a new
    /// `rss::Steering`; the transmit queues in use are now the first `n`
    /// (`max_tx_vq`).
    RssChanged(u16),
    /// Hash-report configuration set (`CtrlState::hash_config`), RSS off:
    /// publish a new `rss::Steering`.
    HashChanged,
    /// Clear VIRTIO_NET_S_ANNOUNCE in config space (§5.1.6.5.4).
    AnnounceAcked,
    /// The enabled guest offloads are now this mask.
    OffloadsChanged(u64),
}

/// The ack byte for a request's outcome.
pub fn ack(result: &Result<CtrlEffect, CtrlError>) -> u8 {
    if result.is_ok() {
        VIRTIO_NET_OK
    } else {
        VIRTIO_NET_ERR
    }
}

/// Receive-mode switches as the device holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxFlags {
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
}

/// Device state owned by the control queue. Reset (driver status 0) means
/// building a new one with [`CtrlState::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlState {
    rx: RxFlags,
    mac: Mac,
    unicast: Vec<Mac>,
    uni_overflow: bool,
    multicast: Vec<Mac>,
    multi_overflow: bool,
    vlans: Box<[u64; VLAN_COUNT / 64]>,
    queue_pairs: u16,
    guest_offloads: u64,
    announce_pending: bool,
    rss: Option<RssConfig>,
    hash: Option<HashConfig>,
}

impl CtrlState {
    /// The state after reset, for a driver that negotiated `negotiated`:
    /// promiscuous (so a driver without CTRL_RX sees every frame, as with
    /// QEMU's virtio-net), empty MAC tables (§5.1.6.5.2.1), empty VLAN table
    /// (only consulted with CTRL_VLAN), one queue pair (§5.1.6.5.5), every
    /// negotiated guest offload enabled (§5.1.6.5.6), and no RSS or hash
    /// calculation (§5.1.6.5.6.4: "initially ... all hash types disabled").
    pub fn new(mac: Mac, negotiated: u64) -> Self {
        CtrlState {
            rx: RxFlags { promisc: true, ..RxFlags::default() },
            mac,
            unicast: Vec::new(),
            uni_overflow: false,
            multicast: Vec::new(),
            multi_overflow: false,
            vlans: Box::new([0; VLAN_COUNT / 64]),
            queue_pairs: 1,
            guest_offloads: negotiated & f::GUEST_OFFLOAD_MASK,
            announce_pending: false,
            rss: None,
            hash: None,
        }
    }

    pub fn rx_flags(&self) -> RxFlags {
        self.rx
    }
    pub fn mac(&self) -> Mac {
        self.mac
    }
    pub fn unicast(&self) -> &[Mac] {
        &self.unicast
    }
    pub fn multicast(&self) -> &[Mac] {
        &self.multicast
    }
    /// The last unicast table was longer than [`MAC_TABLE_CAP`].
    pub fn uni_overflow(&self) -> bool {
        self.uni_overflow
    }
    /// The last multicast table was longer than [`MAC_TABLE_CAP`].
    pub fn multi_overflow(&self) -> bool {
        self.multi_overflow
    }
    /// 4096 bits, bit `vid` set when the VLAN was added.
    pub fn vlan_bitmap(&self) -> &[u64; VLAN_COUNT / 64] {
        &self.vlans
    }
    pub fn vlan_added(&self, vid: u16) -> bool {
        self.vlans.get(vid as usize / 64).is_some_and(|w| w & (1 << (vid % 64)) != 0)
    }
    pub fn queue_pairs(&self) -> u16 {
        self.queue_pairs
    }
    pub fn guest_offloads(&self) -> u64 {
        self.guest_offloads
    }
    pub fn announce_pending(&self) -> bool {
        self.announce_pending
    }
    /// The RSS configuration in force (last MQ command was RSS_CONFIG).
    pub fn rss(&self) -> Option<&RssConfig> {
        self.rss.as_ref()
    }
    /// The hash-report configuration in force (last MQ command was
    /// HASH_CONFIG).
    pub fn hash_config(&self) -> Option<&HashConfig> {
        self.hash.as_ref()
    }

    /// The device wants the driver to announce itself (e.g. after the backend
    /// moved). Only possible with GUEST_ANNOUNCE; returns whether it was set,
    /// in which case the caller sets VIRTIO_NET_S_ANNOUNCE and signals a
    /// config change.
    pub fn request_announce(&mut self, negotiated: u64) -> bool {
        if negotiated & f::GUEST_ANNOUNCE == 0 {
            return false;
        }
        self.announce_pending = true;
        true
    }

    /// The config-space `status` word for this state.
    pub fn config_status(&self, link_up: bool) -> u16 {
        let mut s = 0;
        if link_up {
            s |= super::config::VIRTIO_NET_S_LINK_UP;
        }
        if self.announce_pending {
            s |= super::config::VIRTIO_NET_S_ANNOUNCE;
        }
        s
    }

    /// Applies one command. On error the state is unchanged and the request
    /// is answered with [`VIRTIO_NET_ERR`].
    pub fn apply(&mut self, cmd: CtrlCommand, negotiated: u64, max_pairs: u16) -> Result<CtrlEffect, CtrlError> {
        cmd.check_negotiated(negotiated)?;
        Ok(match cmd {
            CtrlCommand::Rx { mode, on } => {
                let r = &mut self.rx;
                let flag = match mode {
                    RxMode::Promisc => &mut r.promisc,
                    RxMode::AllMulti => &mut r.allmulti,
                    RxMode::AllUni => &mut r.alluni,
                    RxMode::NoMulti => &mut r.nomulti,
                    RxMode::NoUni => &mut r.nouni,
                    RxMode::NoBcast => &mut r.nobcast,
                };
                *flag = on;
                CtrlEffect::FilterChanged
            }
            CtrlCommand::MacTableSet { unicast, multicast } => {
                self.uni_overflow = unicast.len() > MAC_TABLE_CAP;
                self.multi_overflow = multicast.len() > MAC_TABLE_CAP;
                if self.uni_overflow || self.multi_overflow {
                    log::info!(
                        "MAC table of {} unicast / {} multicast entries exceeds {MAC_TABLE_CAP}: \
                         accepting all addresses of the overflowing kind",
                        unicast.len(),
                        multicast.len()
                    );
                }
                self.unicast = if self.uni_overflow { Vec::new() } else { unicast };
                self.multicast = if self.multi_overflow { Vec::new() } else { multicast };
                CtrlEffect::FilterChanged
            }
            CtrlCommand::MacAddrSet(mac) => {
                // A group address as the station address would never match
                // the unicast path of the filter.
                if mac[0] & 1 != 0 {
                    return Err(CtrlError::OutOfRange { command: "MAC_ADDR_SET", value: mac_u64(&mac) });
                }
                self.mac = mac;
                CtrlEffect::MacChanged(mac)
            }
            CtrlCommand::VlanAdd(vid) => {
                self.set_vlan("VLAN_ADD", vid, true)?;
                CtrlEffect::FilterChanged
            }
            CtrlCommand::VlanDel(vid) => {
                self.set_vlan("VLAN_DEL", vid, false)?;
                CtrlEffect::FilterChanged
            }
            CtrlCommand::AnnounceAck => {
                if self.announce_pending {
                    self.announce_pending = false;
                    CtrlEffect::AnnounceAcked
                } else {
                    CtrlEffect::None
                }
            }
            CtrlCommand::MqPairsSet(n) => {
                if n < PAIRS_MIN || n > max_pairs {
                    return Err(CtrlError::OutOfRange { command: "MQ_VQ_PAIRS_SET", value: n.into() });
                }
                self.queue_pairs = n;
                self.rss = None;
                self.hash = None;
                CtrlEffect::PairsChanged(n)
            }
            CtrlCommand::RssConfig(r) => {
                check_hash_types(RSS_CMD, r.hash_types)?;
                let oor = |v: u16| CtrlError::OutOfRange { command: RSS_CMD, value: v.into() };
                if r.max_tx_vq < PAIRS_MIN || r.max_tx_vq > max_pairs {
                    return Err(oor(r.max_tx_vq));
                }
                // Hand-built commands bypass parse(): recheck its guarantees.
                let n = r.indirection_table.len();
                if !n.is_power_of_two() || n > rss::MAX_INDIRECTION_TABLE_LEN || r.key.len() > rss::MAX_KEY_SIZE {
                    return Err(CtrlError::OutOfRange { command: RSS_CMD, value: n as u64 });
                }
                // Every queue named must exist (a queue not yet enabled by
                // the driver drops what is steered to it, §5.1.6.5.7.2).
                if let Some(&q) = r.indirection_table.iter().chain([&r.unclassified_queue]).find(|&&q| q >= max_pairs) {
                    return Err(oor(q));
                }
                let pairs = r.max_tx_vq;
                self.queue_pairs = pairs;
                self.rss = Some(r);
                self.hash = None;
                CtrlEffect::RssChanged(pairs)
            }
            CtrlCommand::HashConfig(h) => {
                check_hash_types(HASH_CMD, h.hash_types)?;
                if h.key.len() > rss::MAX_KEY_SIZE {
                    return Err(CtrlError::OutOfRange { command: HASH_CMD, value: h.key.len() as u64 });
                }
                self.hash = Some(h);
                self.rss = None;
                CtrlEffect::HashChanged
            }
            CtrlCommand::GuestOffloadsSet(o) => {
                // §5.1.6.5.6.2: only offloads whose feature was negotiated.
                if o & !(negotiated & f::GUEST_OFFLOAD_MASK) != 0 {
                    return Err(CtrlError::OutOfRange { command: "GUEST_OFFLOADS_SET", value: o });
                }
                self.guest_offloads = o;
                CtrlEffect::OffloadsChanged(o)
            }
        })
    }

    fn set_vlan(&mut self, command: &'static str, vid: u16, on: bool) -> Result<(), CtrlError> {
        // A command built by hand can skip parse()'s range check: refuse
        // rather than index out of bounds.
        let Some(word) = self.vlans.get_mut(vid as usize / 64) else {
            return Err(CtrlError::OutOfRange { command, value: vid.into() });
        };
        let b = 1u64 << (vid % 64);
        if on {
            *word |= b;
        } else {
            *word &= !b;
        }
        Ok(())
    }

    /// Parses and applies one whole request (`class`, `command`, data); the
    /// ack byte is [`ack`] of the result.
    pub fn handle_message(&mut self, msg: &[u8], negotiated: u64, max_pairs: u16) -> Result<CtrlEffect, CtrlError> {
        let r = CtrlCommand::parse_message(msg).and_then(|c| self.apply(c, negotiated, max_pairs));
        if let Err(e) = &r {
            log::debug!("control request refused: {e}");
        }
        r
    }
}

/// "A driver MUST NOT set any VIRTIO_NET_HASH_TYPE_ flags that are not
/// supported by a device" (§5.1.6.5.7.1): refuse them.
fn check_hash_types(command: &'static str, types: u32) -> Result<(), CtrlError> {
    if types & !rss::SUPPORTED_HASH_TYPES != 0 {
        return Err(CtrlError::OutOfRange { command, value: types.into() });
    }
    Ok(())
}

/// A MAC address as a number, for compact comparisons and error values.
#[inline]
pub fn mac_u64(m: &Mac) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = f::SUPPORTED | f::RSS | f::HASH_REPORT;
    const MAC0: Mac = [0x52, 0x54, 0, 0, 0, 1];

    fn rss_cfg(table: Vec<u16>, max_tx_vq: u16, key_len: usize) -> RssConfig {
        RssConfig {
            hash_types: rss::HASH_TYPE_TCPV4 | rss::HASH_TYPE_IPV6,
            indirection_table: table,
            unclassified_queue: 1,
            max_tx_vq,
            key: (0..key_len as u8).collect(),
        }
    }

    fn hash_cfg(reserved: [u8; 8], key_len: usize) -> HashConfig {
        HashConfig { hash_types: rss::SUPPORTED_HASH_TYPES, reserved, key: vec![0x6d; key_len] }
    }

    fn samples() -> Vec<CtrlCommand> {
        let mut v: Vec<CtrlCommand> = RxMode::ALL
            .into_iter()
            .flat_map(|mode| [CtrlCommand::Rx { mode, on: true }, CtrlCommand::Rx { mode, on: false }])
            .collect();
        v.extend([
            CtrlCommand::MacTableSet { unicast: vec![], multicast: vec![] },
            CtrlCommand::MacTableSet { unicast: vec![[2, 0, 0, 0, 0, 9]], multicast: vec![] },
            CtrlCommand::MacTableSet {
                unicast: vec![[2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 10]],
                multicast: vec![[0x01, 0, 0x5e, 0, 0, 1]],
            },
            CtrlCommand::MacAddrSet(MAC0),
            CtrlCommand::VlanAdd(0),
            CtrlCommand::VlanAdd(4095),
            CtrlCommand::VlanDel(100),
            CtrlCommand::AnnounceAck,
            CtrlCommand::MqPairsSet(1),
            CtrlCommand::MqPairsSet(0x8000),
            CtrlCommand::RssConfig(rss_cfg(vec![0], 1, 0)),
            CtrlCommand::RssConfig(rss_cfg(vec![0, 1, 2, 3], 4, 40)),
            CtrlCommand::RssConfig(rss_cfg((0..128).map(|i| i % 3).collect(), 3, 13)),
            CtrlCommand::HashConfig(hash_cfg([0; 8], 40)),
            CtrlCommand::HashConfig(hash_cfg([0, 0, 0, 0, 0, 0, 4, 0], 0)),
            CtrlCommand::GuestOffloadsSet(0),
            CtrlCommand::GuestOffloadsSet(u64::MAX),
        ]);
        v
    }

    #[test]
    fn every_command_round_trips() {
        for c in samples() {
            let (class, cmd, data) = c.encode();
            assert_eq!(CtrlCommand::parse(class, cmd, &data), Ok(c.clone()), "{c:?}");
            assert_eq!(CtrlCommand::parse_message(&c.encode_message()), Ok(c.clone()), "{c:?}");
        }
    }

    #[test]
    fn wire_bytes_match_spec() {
        assert_eq!(CtrlCommand::Rx { mode: RxMode::Promisc, on: true }.encode_message(), [0, 0, 1]);
        assert_eq!(CtrlCommand::Rx { mode: RxMode::NoBcast, on: false }.encode_message(), [0, 5, 0]);
        assert_eq!(CtrlCommand::VlanAdd(0x0123).encode_message(), [2, 0, 0x23, 0x01]);
        assert_eq!(CtrlCommand::VlanDel(7).encode_message(), [2, 1, 7, 0]);
        assert_eq!(CtrlCommand::AnnounceAck.encode_message(), [3, 0]);
        assert_eq!(CtrlCommand::MqPairsSet(0x0102).encode_message(), [4, 0, 2, 1]);
        assert_eq!(CtrlCommand::GuestOffloadsSet(0x80).encode_message(), [5, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(CtrlCommand::MacAddrSet(MAC0).encode_message(), [1, 1, 0x52, 0x54, 0, 0, 0, 1]);
        let t = CtrlCommand::MacTableSet { unicast: vec![[2, 3, 4, 5, 6, 7]], multicast: vec![] };
        assert_eq!(t.encode_message(), [1, 0, 1, 0, 0, 0, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0]);
        assert_eq!(VIRTIO_NET_OK, 0);
        assert_eq!(VIRTIO_NET_ERR, 1);
    }

    fn is_bad_length(r: Result<CtrlCommand, CtrlError>) -> bool {
        matches!(r, Err(CtrlError::BadLength { .. }))
    }

    #[test]
    fn short_and_long_data_are_errors() {
        for c in samples() {
            let (class, cmd, data) = c.encode();
            let mut long = data.clone();
            long.push(0);
            if matches!(c, CtrlCommand::RssConfig(_) | CtrlCommand::HashConfig(_)) {
                // Bytes after the key are ignored (Linux pads the trailer).
                assert_eq!(CtrlCommand::parse(class, cmd, &long), Ok(c.clone()), "{c:?} + 1 byte");
            } else {
                assert!(is_bad_length(CtrlCommand::parse(class, cmd, &long)), "{c:?} + 1 byte");
            }
            if !data.is_empty() {
                assert!(is_bad_length(CtrlCommand::parse(class, cmd, &data[..data.len() - 1])), "{c:?} - 1 byte");
                assert!(is_bad_length(CtrlCommand::parse(class, cmd, &[])), "{c:?} empty");
            }
        }
        assert!(is_bad_length(CtrlCommand::parse_message(&[])));
        assert!(is_bad_length(CtrlCommand::parse_message(&[0])));
    }

    #[test]
    fn mac_table_counts_are_bounded_by_data() {
        // Huge counts must be refused without allocating or overflowing.
        let mut d = u32::MAX.to_le_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        assert!(is_bad_length(CtrlCommand::parse(CLASS_MAC, CMD_MAC_TABLE_SET, &d)));
        let mut d = 0u32.to_le_bytes().to_vec();
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(is_bad_length(CtrlCommand::parse(CLASS_MAC, CMD_MAC_TABLE_SET, &d)));
        // Unicast count claims two entries, only one present (the 4 bytes of
        // the multicast count would be eaten as the second MAC).
        let mut d = 2u32.to_le_bytes().to_vec();
        d.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        d.extend_from_slice(&0u32.to_le_bytes());
        assert!(is_bad_length(CtrlCommand::parse(CLASS_MAC, CMD_MAC_TABLE_SET, &d)));
        // Multicast count missing entirely.
        let d = 0u32.to_le_bytes();
        assert!(is_bad_length(CtrlCommand::parse(CLASS_MAC, CMD_MAC_TABLE_SET, &d)));
        // Half a MAC of trailing garbage.
        let mut d = [0u8; 8].to_vec();
        d.extend_from_slice(&[1, 2, 3]);
        assert!(is_bad_length(CtrlCommand::parse(CLASS_MAC, CMD_MAC_TABLE_SET, &d)));
    }

    #[test]
    fn out_of_range_values_are_errors() {
        let oor = |class, cmd, d: &[u8]| matches!(CtrlCommand::parse(class, cmd, d), Err(CtrlError::OutOfRange { .. }));
        assert!(oor(CLASS_VLAN, CMD_VLAN_ADD, &4096u16.to_le_bytes()));
        assert!(oor(CLASS_VLAN, CMD_VLAN_DEL, &u16::MAX.to_le_bytes()));
        assert!(oor(CLASS_MQ, CMD_MQ_VQ_PAIRS_SET, &0u16.to_le_bytes()));
        assert!(oor(CLASS_MQ, CMD_MQ_VQ_PAIRS_SET, &0x8001u16.to_le_bytes()));
        // Any non-zero on/off byte means on.
        assert_eq!(CtrlCommand::parse(CLASS_RX, 5, &[0xff]), Ok(CtrlCommand::Rx { mode: RxMode::NoBcast, on: true }));
        assert_eq!(CtrlCommand::parse(CLASS_RX, 0, &[0]), Ok(CtrlCommand::Rx { mode: RxMode::Promisc, on: false }));
    }

    #[test]
    fn unknown_and_unsupported_commands() {
        assert_eq!(CtrlCommand::parse(9, 0, &[]), Err(CtrlError::UnknownClass { class: 9 }));
        assert_eq!(CtrlCommand::parse(7, 0, &[]), Err(CtrlError::UnknownClass { class: 7 }));
        assert_eq!(CtrlCommand::parse(255, 255, &[]), Err(CtrlError::UnknownClass { class: 255 }));
        for (class, cmd) in [(CLASS_RX, 6), (CLASS_MAC, 2), (CLASS_VLAN, 2), (CLASS_ANNOUNCE, 1), (CLASS_MQ, 3)] {
            assert_eq!(CtrlCommand::parse(class, cmd, &[0]), Err(CtrlError::UnknownCommand { class, cmd }));
        }
        assert_eq!(
            CtrlCommand::parse(CLASS_GUEST_OFFLOADS, 1, &[0; 8]),
            Err(CtrlError::UnknownCommand { class: CLASS_GUEST_OFFLOADS, cmd: 1 })
        );
        for (class, cmd) in [(6, 0), (8, 1)] {
            assert_eq!(CtrlCommand::parse(class, cmd, &[]), Err(CtrlError::Unsupported { class, cmd }));
        }
    }

    #[test]
    fn every_command_needs_its_feature() {
        let cases = [
            (CtrlCommand::Rx { mode: RxMode::Promisc, on: false }, f::CTRL_RX),
            (CtrlCommand::Rx { mode: RxMode::AllMulti, on: true }, f::CTRL_RX),
            (CtrlCommand::Rx { mode: RxMode::AllUni, on: true }, f::CTRL_RX_EXTRA),
            (CtrlCommand::Rx { mode: RxMode::NoMulti, on: true }, f::CTRL_RX_EXTRA),
            (CtrlCommand::Rx { mode: RxMode::NoUni, on: true }, f::CTRL_RX_EXTRA),
            (CtrlCommand::Rx { mode: RxMode::NoBcast, on: true }, f::CTRL_RX_EXTRA),
            (CtrlCommand::MacTableSet { unicast: vec![], multicast: vec![] }, f::CTRL_RX),
            (CtrlCommand::MacAddrSet(MAC0), f::CTRL_MAC_ADDR),
            (CtrlCommand::VlanAdd(1), f::CTRL_VLAN),
            (CtrlCommand::VlanDel(1), f::CTRL_VLAN),
            (CtrlCommand::AnnounceAck, f::GUEST_ANNOUNCE),
            (CtrlCommand::MqPairsSet(1), f::MQ),
            (CtrlCommand::RssConfig(rss_cfg(vec![0, 1], 2, 40)), f::RSS),
            (CtrlCommand::HashConfig(hash_cfg([0; 8], 40)), f::HASH_REPORT),
            (CtrlCommand::GuestOffloadsSet(0), f::CTRL_GUEST_OFFLOADS),
        ];
        for (c, feat) in cases {
            let mut s = CtrlState::new(MAC0, ALL);
            let before = s.clone();
            let without = ALL & !feat;
            assert!(
                matches!(s.apply(c.clone(), without, 4), Err(CtrlError::NotNegotiated { .. })),
                "{c:?} accepted without {:?}",
                f::name(feat)
            );
            assert_eq!(s, before, "{c:?}: refused command changed state");
            let minimal = f::VERSION_1 | f::CTRL_VQ | feat;
            assert!(s.apply(c.clone(), minimal, 4).is_ok(), "{c:?} refused with only {:?}", f::name(feat));
        }
    }

    #[test]
    fn reset_state() {
        let s = CtrlState::new(MAC0, (ALL & !f::GUEST_OFFLOAD_MASK) | f::GUEST_CSUM | f::GUEST_TSO4);
        assert_eq!(s.rx_flags(), RxFlags { promisc: true, ..RxFlags::default() });
        assert_eq!(s.mac(), MAC0);
        assert!(s.unicast().is_empty() && s.multicast().is_empty());
        assert!(!s.uni_overflow() && !s.multi_overflow());
        assert!((0..4096).all(|v| !s.vlan_added(v)));
        assert_eq!(s.queue_pairs(), 1);
        assert_eq!(s.guest_offloads(), f::GUEST_CSUM | f::GUEST_TSO4);
        assert!(!s.announce_pending());
    }

    #[test]
    fn rx_commands_set_flags() {
        let mut s = CtrlState::new(MAC0, ALL);
        for mode in RxMode::ALL {
            assert_eq!(s.apply(CtrlCommand::Rx { mode, on: true }, ALL, 1), Ok(CtrlEffect::FilterChanged));
        }
        let all_on = RxFlags { promisc: true, allmulti: true, alluni: true, nomulti: true, nouni: true, nobcast: true };
        assert_eq!(s.rx_flags(), all_on);
        s.apply(CtrlCommand::Rx { mode: RxMode::NoUni, on: false }, ALL, 1).unwrap();
        assert_eq!(s.rx_flags(), RxFlags { nouni: false, ..all_on });
        s.apply(CtrlCommand::Rx { mode: RxMode::Promisc, on: false }, ALL, 1).unwrap();
        assert!(!s.rx_flags().promisc);
    }

    #[test]
    fn mac_table_and_overflow() {
        let mut s = CtrlState::new(MAC0, ALL);
        let uni = vec![[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
        let multi = vec![[1, 0, 0x5e, 0, 0, 1]];
        let c = CtrlCommand::MacTableSet { unicast: uni.clone(), multicast: multi.clone() };
        assert_eq!(s.apply(c, ALL, 1), Ok(CtrlEffect::FilterChanged));
        assert_eq!(s.unicast(), &uni[..]);
        assert_eq!(s.multicast(), &multi[..]);

        // Exactly the cap fits; one more overflows that table only.
        let cap: Vec<Mac> = (0..MAC_TABLE_CAP as u8).map(|i| [2, 0, 0, 0, 1, i]).collect();
        let mut over = cap.clone();
        over.push([2, 0, 0, 0, 2, 0]);
        s.apply(CtrlCommand::MacTableSet { unicast: cap.clone(), multicast: over }, ALL, 1).unwrap();
        assert_eq!(s.unicast().len(), MAC_TABLE_CAP);
        assert!(!s.uni_overflow() && s.multi_overflow());
        assert!(s.multicast().is_empty());

        // A later, smaller table clears the overflow.
        s.apply(CtrlCommand::MacTableSet { unicast: vec![], multicast: multi.clone() }, ALL, 1).unwrap();
        assert!(!s.multi_overflow());
        assert!(s.unicast().is_empty());
        assert_eq!(s.multicast(), &multi[..]);
    }

    #[test]
    fn mac_addr_set() {
        let mut s = CtrlState::new(MAC0, ALL);
        let m = [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        assert_eq!(s.apply(CtrlCommand::MacAddrSet(m), ALL, 1), Ok(CtrlEffect::MacChanged(m)));
        assert_eq!(s.mac(), m);
        // A group address is refused and the old MAC kept.
        let r = s.apply(CtrlCommand::MacAddrSet([0x01, 0, 0x5e, 0, 0, 1]), ALL, 1);
        assert!(matches!(r, Err(CtrlError::OutOfRange { .. })));
        assert_eq!(s.mac(), m);
    }

    #[test]
    fn vlan_add_del() {
        let mut s = CtrlState::new(MAC0, ALL);
        for v in [0, 1, 63, 64, 4095] {
            assert_eq!(s.apply(CtrlCommand::VlanAdd(v), ALL, 1), Ok(CtrlEffect::FilterChanged));
        }
        let added: Vec<u16> = (0..4096).filter(|&v| s.vlan_added(v)).collect();
        assert_eq!(added, [0, 1, 63, 64, 4095]);
        s.apply(CtrlCommand::VlanDel(64), ALL, 1).unwrap();
        s.apply(CtrlCommand::VlanDel(2), ALL, 1).unwrap(); // deleting an absent vid is fine
        let added: Vec<u16> = (0..4096).filter(|&v| s.vlan_added(v)).collect();
        assert_eq!(added, [0, 1, 63, 4095]);
        // Hand-built commands bypass parse(): still no panic.
        assert!(s.apply(CtrlCommand::VlanAdd(4096), ALL, 1).is_err());
        assert!(s.apply(CtrlCommand::VlanDel(u16::MAX), ALL, 1).is_err());
        assert!(!s.vlan_added(4096));
    }

    #[test]
    fn queue_pairs() {
        let mut s = CtrlState::new(MAC0, ALL);
        assert_eq!(s.apply(CtrlCommand::MqPairsSet(4), ALL, 4), Ok(CtrlEffect::PairsChanged(4)));
        assert_eq!(s.queue_pairs(), 4);
        let r = s.apply(CtrlCommand::MqPairsSet(5), ALL, 4);
        assert_eq!(r, Err(CtrlError::OutOfRange { command: "MQ_VQ_PAIRS_SET", value: 5 }));
        assert!(s.apply(CtrlCommand::MqPairsSet(0), ALL, 4).is_err());
        assert_eq!(s.queue_pairs(), 4);
        assert_eq!(s.apply(CtrlCommand::MqPairsSet(1), ALL, 4), Ok(CtrlEffect::PairsChanged(1)));
    }

    #[test]
    fn guest_offloads_only_negotiated_ones() {
        let neg = (ALL & !f::GUEST_OFFLOAD_MASK) | f::GUEST_CSUM | f::GUEST_TSO4;
        let mut s = CtrlState::new(MAC0, neg);
        assert_eq!(s.apply(CtrlCommand::GuestOffloadsSet(0), neg, 1), Ok(CtrlEffect::OffloadsChanged(0)));
        assert_eq!(s.guest_offloads(), 0);
        s.apply(CtrlCommand::GuestOffloadsSet(f::GUEST_CSUM), neg, 1).unwrap();
        assert_eq!(s.guest_offloads(), f::GUEST_CSUM);
        // Known offload, not negotiated.
        assert!(s.apply(CtrlCommand::GuestOffloadsSet(f::GUEST_TSO6), neg, 1).is_err());
        // Not an offload at all, even though negotiated.
        assert!(s.apply(CtrlCommand::GuestOffloadsSet(f::MAC), neg, 1).is_err());
        assert_eq!(s.guest_offloads(), f::GUEST_CSUM);
    }

    #[test]
    fn announce_cycle() {
        let mut s = CtrlState::new(MAC0, ALL);
        assert!(!s.request_announce(ALL & !f::GUEST_ANNOUNCE));
        assert!(!s.announce_pending());
        assert_eq!(s.apply(CtrlCommand::AnnounceAck, ALL, 1), Ok(CtrlEffect::None));
        assert!(s.request_announce(ALL));
        assert_eq!(s.config_status(true), 3);
        assert_eq!(s.apply(CtrlCommand::AnnounceAck, ALL, 1), Ok(CtrlEffect::AnnounceAcked));
        assert!(!s.announce_pending());
        assert_eq!(s.config_status(true), 1);
        assert_eq!(s.config_status(false), 0);
    }

    #[test]
    fn handle_message_and_ack() {
        let mut s = CtrlState::new(MAC0, ALL);
        let r = s.handle_message(&[CLASS_RX, 0, 0], ALL, 1);
        assert_eq!(ack(&r), VIRTIO_NET_OK);
        assert!(!s.rx_flags().promisc);
        for bad in [&[][..], &[CLASS_RX], &[CLASS_RX, 0], &[CLASS_RX, 0, 1, 1], &[42, 0], &[CLASS_MQ, 0, 9, 0]] {
            let before = s.clone();
            let r = s.handle_message(bad, ALL, 8);
            assert_eq!(ack(&r), VIRTIO_NET_ERR, "{bad:?}");
            assert_eq!(s, before, "{bad:?}");
        }
    }

    #[test]
    fn rss_config_wire_layout() {
        // virtio_net_rss_config: le32 hash_types, le16 mask, le16
        // unclassified, le16 table[mask + 1], le16 max_tx_vq, u8 key length, key.
        let c = CtrlCommand::RssConfig(RssConfig {
            hash_types: 0x0102_0304,
            indirection_table: vec![0x0a, 0x0b],
            unclassified_queue: 0x0c,
            max_tx_vq: 0x0d,
            key: vec![0xee, 0xff],
        });
        let want = [4, 1, 4, 3, 2, 1, 1, 0, 0x0c, 0, 0x0a, 0, 0x0b, 0, 0x0d, 0, 2, 0xee, 0xff];
        assert_eq!(c.encode_message(), want);
        assert_eq!(CtrlCommand::parse_message(&want), Ok(c));
        // virtio_net_hash_config: le32 hash_types, le16 reserved[4], u8 key length, key.
        let h = CtrlCommand::HashConfig(HashConfig { hash_types: 0x1ff, reserved: [9; 8], key: vec![7] });
        assert_eq!(h.encode_message(), [4, 2, 0xff, 1, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 1, 7]);
    }

    #[test]
    fn rss_parse_refusals() {
        let oor =
            |d: &[u8]| matches!(CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, d), Err(CtrlError::OutOfRange { .. }));
        let good = CtrlCommand::RssConfig(rss_cfg(vec![0, 1, 2, 3], 4, 40)).encode().2;
        assert!(CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, &good).is_ok());
        // Table lengths that are not powers of two, or above the maximum.
        for mask in [2u16, 4, 126, 255, 0xffff] {
            let mut d = good.clone();
            d[4..6].copy_from_slice(&mask.to_le_bytes());
            assert!(oor(&d), "mask {mask}");
        }
        // A maximum-size table parses; a huge mask is refused before any
        // allocation or length arithmetic.
        let max = CtrlCommand::RssConfig(rss_cfg(vec![0; rss::MAX_INDIRECTION_TABLE_LEN], 1, 40)).encode().2;
        assert!(CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, &max).is_ok());
        // Reserved bit of a queue id, in the table and in unclassified_queue.
        let mut d = good.clone();
        d[9] = 0x80;
        assert!(oor(&d));
        let mut d = good.clone();
        d[7] = 0x80;
        assert!(oor(&d));
        // Key longer than rss_max_key_size.
        let long = CtrlCommand::RssConfig(rss_cfg(vec![0], 1, 41)).encode().2;
        assert!(oor(&long));
        let long = CtrlCommand::HashConfig(hash_cfg([0; 8], 41)).encode().2;
        assert!(matches!(CtrlCommand::parse(CLASS_MQ, CMD_MQ_HASH_CONFIG, &long), Err(CtrlError::OutOfRange { .. })));
        // The key length byte promises more bytes than are present.
        let mut d = good.clone();
        let kl = d.len() - 41;
        d.pop();
        assert!(is_bad_length(CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, &d)));
        d.push(0);
        d[kl] = 39;
        // A shorter key with a byte after it: Linux 6.14+ pads the trailer
        // (`struct_size`), so bytes after the key are ignored, as QEMU does.
        let Ok(CtrlCommand::RssConfig(c)) = CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, &d) else {
            panic!("trailing byte refused")
        };
        assert_eq!(c.key.len(), 39);
        let mut linux = good.clone();
        linux.push(0);
        let Ok(CtrlCommand::RssConfig(c)) = CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, &linux) else {
            panic!("Linux's padded RSS_CONFIG refused")
        };
        assert_eq!(c.key.len(), 40);
        // Every truncation is an error.
        for cut in 0..good.len() {
            assert!(CtrlCommand::parse(CLASS_MQ, CMD_MQ_RSS_CONFIG, &good[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn rss_apply_and_mode_switches() {
        let mut s = CtrlState::new(MAC0, ALL);
        assert!(s.rss().is_none() && s.hash_config().is_none());
        let r = rss_cfg(vec![0, 1, 2, 3], 3, 40);
        assert_eq!(s.apply(CtrlCommand::RssConfig(r.clone()), ALL, 4), Ok(CtrlEffect::RssChanged(3)));
        assert_eq!(s.rss(), Some(&r));
        assert_eq!(s.queue_pairs(), 3);
        // Refusals leave the state as it was.
        let before = s.clone();
        for bad in [
            rss_cfg(vec![0, 1, 2, 4], 3, 40),                               // queue 4 of 4
            RssConfig { unclassified_queue: 4, ..rss_cfg(vec![0], 1, 40) }, // unclassified 4 of 4
            rss_cfg(vec![0], 0, 40),                                        // max_tx_vq 0
            rss_cfg(vec![0], 5, 40),                                        // max_tx_vq 5 of 4
            RssConfig { hash_types: 1 << 9, ..rss_cfg(vec![0], 1, 40) },    // unknown hash type
            rss_cfg(vec![0, 1, 2], 1, 40),                                  // hand-built: not a power of two
            rss_cfg(vec![0], 1, 41),                                        // hand-built: key too long
        ] {
            assert!(
                matches!(s.apply(CtrlCommand::RssConfig(bad.clone()), ALL, 4), Err(CtrlError::OutOfRange { .. })),
                "{bad:?}"
            );
            assert_eq!(s, before, "{bad:?}");
        }
        let bad_hash = HashConfig { hash_types: 1 << 12, ..hash_cfg([0; 8], 4) };
        assert!(s.apply(CtrlCommand::HashConfig(bad_hash), ALL, 4).is_err());
        assert_eq!(s, before);
        // HASH_CONFIG replaces RSS, keeps the queue pairs.
        let h = hash_cfg([0; 8], 40);
        assert_eq!(s.apply(CtrlCommand::HashConfig(h.clone()), ALL, 4), Ok(CtrlEffect::HashChanged));
        assert_eq!((s.rss(), s.hash_config(), s.queue_pairs()), (None, Some(&h), 3));
        // RSS_CONFIG replaces the hash config; VQ_PAIRS_SET clears both.
        s.apply(CtrlCommand::RssConfig(r.clone()), ALL, 4).unwrap();
        assert_eq!((s.rss(), s.hash_config()), (Some(&r), None));
        s.apply(CtrlCommand::HashConfig(h), ALL, 4).unwrap();
        assert_eq!(s.apply(CtrlCommand::MqPairsSet(2), ALL, 4), Ok(CtrlEffect::PairsChanged(2)));
        assert_eq!((s.rss(), s.hash_config()), (None, None));
        s.apply(CtrlCommand::RssConfig(r), ALL, 4).unwrap();
        s.apply(CtrlCommand::MqPairsSet(2), ALL, 4).unwrap();
        assert!(s.rss().is_none());
    }
}
