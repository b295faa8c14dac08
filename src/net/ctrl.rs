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
//!   NOBCAST need CTRL_RX_EXTRA. Data: one byte, 0 = off, 1 = on.
//! - MAC (§5.1.6.5.2): TABLE_SET (needs CTRL_RX; two `le32 entries` +
//!   `entries * 6` byte tables, unicast then multicast), ADDR_SET (needs
//!   CTRL_MAC_ADDR; 6 bytes).
//! - VLAN (§5.1.6.5.3): ADD / DEL, `le16` vid below 4096; needs CTRL_VLAN.
//! - ANNOUNCE (§5.1.6.5.4): ACK, no data; needs GUEST_ANNOUNCE.
//! - MQ (§5.1.6.5.5): VQ_PAIRS_SET, `le16` in `1..=max_virtqueue_pairs`; needs MQ.
//! - GUEST_OFFLOADS (§5.1.6.5.6): SET, `le64` mask of negotiated GUEST_*
//!   offloads; needs CTRL_GUEST_OFFLOADS.
//!
//! Spec-defined commands of features this device never offers (RSS, hash
//! config, notification coalescing, statistics) are [`CtrlError::Unsupported`].

use super::features as f;
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
    GuestOffloadsSet(u64),
}

fn exact<const N: usize>(command: &'static str, data: &[u8]) -> Result<[u8; N], CtrlError> {
    data.try_into().map_err(|_| CtrlError::BadLength { command, expected: N as u64, got: data.len() })
}

/// Parses one `le32 entries; u8 macs[entries][6]` table from the front of
/// `data`, returning it and the rest. The count is checked against the bytes
/// present before anything is allocated.
fn parse_mac_table<'a>(data: &'a [u8], min_after: u64) -> Result<(Vec<Mac>, &'a [u8]), CtrlError> {
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
    let table = macs.chunks_exact(6).map(|c| <Mac>::try_from(c).expect("chunks_exact(6)")).collect();
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
                if v > 1 {
                    return Err(CtrlError::OutOfRange { command: mode.name(), value: v.into() });
                }
                Ok(CtrlCommand::Rx { mode, on: v == 1 })
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
                CMD_MQ_RSS_CONFIG | CMD_MQ_HASH_CONFIG => Err(CtrlError::Unsupported { class, cmd }),
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
    PairsChanged(u16),
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
}

impl CtrlState {
    /// The state after reset, for a driver that negotiated `negotiated`:
    /// promiscuous (so a driver without CTRL_RX sees every frame, as with
    /// QEMU's virtio-net), empty MAC tables (§5.1.6.5.2.1), empty VLAN table
    /// (only consulted with CTRL_VLAN), one queue pair (§5.1.6.5.5), and every
    /// negotiated guest offload enabled (§5.1.6.5.6).
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
                CtrlEffect::PairsChanged(n)
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

/// A MAC address as a number, for compact comparisons and error values.
#[inline]
pub fn mac_u64(m: &Mac) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}
