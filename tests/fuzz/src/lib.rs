//! Helpers shared by the fuzz targets: a reference model of the
//! control-queue state, structured command generation, and a memfd-backed
//! IOTLB region source whose bytes are a known function of their file
//! offset (so a translation to the wrong place is visible in the bytes).

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use vduse_net::driver::DmaMemory;
use vduse_net::mem::RegionSource;
use vduse_net::net::ctrl::{CtrlCommand, CtrlEffect, HashConfig, Mac, RssConfig, RxMode, MAC_TABLE_CAP};
use vduse_net::net::features as f;
use vduse_net::net::rss;
use vduse_net::uapi::vduse::{VDUSE_ACCESS_RO, VDUSE_ACCESS_WO};
use vduse_net::vduse::{IotlbRegion, VduseError};

// ---------------------------------------------------------------- ctrl model

/// The control-queue state as the spec describes it, written independently
/// of `CtrlState` (sets and plain fields, no bitmaps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtrlModel {
    pub promisc: bool,
    pub allmulti: bool,
    pub alluni: bool,
    pub nomulti: bool,
    pub nouni: bool,
    pub nobcast: bool,
    pub mac: Mac,
    pub unicast: Vec<Mac>,
    pub uni_overflow: bool,
    pub multicast: Vec<Mac>,
    pub multi_overflow: bool,
    pub vlans: BTreeSet<u16>,
    pub pairs: u16,
    pub offloads: u64,
    pub announce: bool,
    /// RSS and hash reporting: at most one of them in force, the last MQ
    /// command's (§5.1.6.5.6.4, §5.1.6.5.7).
    pub rss: Option<RssConfig>,
    pub hash: Option<HashConfig>,
}

impl CtrlModel {
    pub fn new(mac: Mac, negotiated: u64) -> Self {
        CtrlModel {
            promisc: true,
            allmulti: false,
            alluni: false,
            nomulti: false,
            nouni: false,
            nobcast: false,
            mac,
            unicast: Vec::new(),
            uni_overflow: false,
            multicast: Vec::new(),
            multi_overflow: false,
            vlans: BTreeSet::new(),
            pairs: 1,
            offloads: negotiated & f::GUEST_OFFLOAD_MASK,
            announce: false,
            rss: None,
            hash: None,
        }
    }

    fn feature_for(cmd: &CtrlCommand) -> u64 {
        match cmd {
            CtrlCommand::Rx { mode: RxMode::Promisc | RxMode::AllMulti, .. } => f::CTRL_RX,
            CtrlCommand::Rx { .. } => f::CTRL_RX_EXTRA,
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

    /// `Err(())` = the device must answer ERR and change nothing.
    pub fn apply(&mut self, cmd: &CtrlCommand, negotiated: u64, max_pairs: u16) -> Result<CtrlEffect, ()> {
        if negotiated & Self::feature_for(cmd) == 0 {
            return Err(());
        }
        Ok(match cmd {
            CtrlCommand::Rx { mode, on } => {
                *match mode {
                    RxMode::Promisc => &mut self.promisc,
                    RxMode::AllMulti => &mut self.allmulti,
                    RxMode::AllUni => &mut self.alluni,
                    RxMode::NoMulti => &mut self.nomulti,
                    RxMode::NoUni => &mut self.nouni,
                    RxMode::NoBcast => &mut self.nobcast,
                } = *on;
                CtrlEffect::FilterChanged
            }
            CtrlCommand::MacTableSet { unicast, multicast } => {
                self.uni_overflow = unicast.len() > MAC_TABLE_CAP;
                self.multi_overflow = multicast.len() > MAC_TABLE_CAP;
                self.unicast = if self.uni_overflow { vec![] } else { unicast.clone() };
                self.multicast = if self.multi_overflow { vec![] } else { multicast.clone() };
                CtrlEffect::FilterChanged
            }
            CtrlCommand::MacAddrSet(m) => {
                if m[0] & 1 != 0 {
                    return Err(());
                }
                self.mac = *m;
                CtrlEffect::MacChanged(*m)
            }
            CtrlCommand::VlanAdd(v) | CtrlCommand::VlanDel(v) => {
                if *v >= 4096 {
                    return Err(());
                }
                if matches!(cmd, CtrlCommand::VlanAdd(_)) {
                    self.vlans.insert(*v);
                } else {
                    self.vlans.remove(v);
                }
                CtrlEffect::FilterChanged
            }
            CtrlCommand::AnnounceAck => {
                if std::mem::take(&mut self.announce) {
                    CtrlEffect::AnnounceAcked
                } else {
                    CtrlEffect::None
                }
            }
            CtrlCommand::MqPairsSet(n) => {
                if *n == 0 || *n > max_pairs {
                    return Err(());
                }
                self.pairs = *n;
                // A plain pairs command leaves automatic steering.
                self.rss = None;
                self.hash = None;
                CtrlEffect::PairsChanged(*n)
            }
            CtrlCommand::RssConfig(r) => {
                let table = &r.indirection_table;
                let ok = r.hash_types & !rss::SUPPORTED_HASH_TYPES == 0
                    && (1..=max_pairs).contains(&r.max_tx_vq)
                    && table.len().is_power_of_two()
                    && table.len() <= rss::MAX_INDIRECTION_TABLE_LEN
                    && r.key.len() <= rss::MAX_KEY_SIZE
                    && table.iter().all(|&q| q < max_pairs)
                    && r.unclassified_queue < max_pairs;
                if !ok {
                    return Err(());
                }
                // max_tx_vq sets the pairs in use.
                self.pairs = r.max_tx_vq;
                self.rss = Some(r.clone());
                self.hash = None;
                CtrlEffect::RssChanged(r.max_tx_vq)
            }
            CtrlCommand::HashConfig(h) => {
                if h.hash_types & !rss::SUPPORTED_HASH_TYPES != 0 || h.key.len() > rss::MAX_KEY_SIZE {
                    return Err(());
                }
                self.hash = Some(h.clone());
                self.rss = None;
                CtrlEffect::HashChanged
            }
            CtrlCommand::GuestOffloadsSet(o) => {
                if o & !(negotiated & f::GUEST_OFFLOAD_MASK) != 0 {
                    return Err(());
                }
                self.offloads = *o;
                CtrlEffect::OffloadsChanged(*o)
            }
        })
    }

    /// Asserts that `s` holds exactly this state.
    pub fn check(&self, s: &vduse_net::net::ctrl::CtrlState) {
        let rx = s.rx_flags();
        assert_eq!(
            [rx.promisc, rx.allmulti, rx.alluni, rx.nomulti, rx.nouni, rx.nobcast],
            [self.promisc, self.allmulti, self.alluni, self.nomulti, self.nouni, self.nobcast],
            "rx flags"
        );
        assert_eq!(s.mac(), self.mac, "mac");
        assert_eq!(s.unicast(), &self.unicast[..], "unicast table");
        assert_eq!(s.multicast(), &self.multicast[..], "multicast table");
        assert_eq!((s.uni_overflow(), s.multi_overflow()), (self.uni_overflow, self.multi_overflow), "overflow");
        for v in 0..4096u16 {
            assert_eq!(s.vlan_added(v), self.vlans.contains(&v), "vlan {v}");
        }
        assert!(!s.vlan_added(4096) && !s.vlan_added(u16::MAX));
        assert_eq!(s.queue_pairs(), self.pairs, "queue pairs");
        assert_eq!(s.guest_offloads(), self.offloads, "guest offloads");
        assert_eq!(s.announce_pending(), self.announce, "announce");
        assert_eq!(s.rss(), self.rss.as_ref(), "rss config");
        assert_eq!(s.hash_config(), self.hash.as_ref(), "hash config");
    }
}

/// A MAC from a small pool (so tables and frames hit each other) or any.
pub fn mac(u: &mut Unstructured<'_>) -> ArbResult<Mac> {
    const POOL: [Mac; 6] = [
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        [0xff; 6],
        [0x01, 0, 0x5e, 0, 0, 1],
        [0x33, 0x33, 0, 0, 0, 1],
        [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    ];
    if u.ratio(3, 4)? {
        Ok(POOL[u.choose_index(POOL.len())?])
    } else {
        u.arbitrary()
    }
}

/// A command built directly (it may be one `parse` would refuse, e.g. a vid
/// of 5000: `apply` must refuse it too, never index out of bounds).
pub fn command(u: &mut Unstructured<'_>) -> ArbResult<CtrlCommand> {
    const MODES: [RxMode; 6] =
        [RxMode::Promisc, RxMode::AllMulti, RxMode::AllUni, RxMode::NoMulti, RxMode::NoUni, RxMode::NoBcast];
    let table = |u: &mut Unstructured<'_>| -> ArbResult<Vec<Mac>> {
        // Around the cap on purpose.
        let n = if u.ratio(1, 8)? { u.int_in_range(60..=70)? } else { u.int_in_range(0..=4)? };
        (0..n).map(|_| mac(u)).collect()
    };
    // Queue ids mostly small (valid for small max_pairs), sometimes any.
    let queue = |u: &mut Unstructured<'_>| -> ArbResult<u16> {
        if u.ratio(7, 8)? {
            u.int_in_range(0..=9)
        } else {
            u.arbitrary()
        }
    };
    let hash_types = |u: &mut Unstructured<'_>| -> ArbResult<u32> {
        let t: u32 = u.arbitrary()?;
        Ok(if u.ratio(7, 8)? { t & rss::SUPPORTED_HASH_TYPES } else { t })
    };
    let key = |u: &mut Unstructured<'_>| -> ArbResult<Vec<u8>> {
        let n = if u.ratio(7, 8)? { u.int_in_range(0..=rss::MAX_KEY_SIZE)? } else { u.int_in_range(0..=255)? };
        u.bytes(n).map(<[u8]>::to_vec)
    };
    Ok(match u.int_in_range(0u8..=9)? {
        0 => CtrlCommand::Rx { mode: MODES[u.choose_index(6)?], on: u.arbitrary()? },
        1 => CtrlCommand::MacTableSet { unicast: table(u)?, multicast: table(u)? },
        2 => CtrlCommand::MacAddrSet(mac(u)?),
        3 => CtrlCommand::VlanAdd(if u.ratio(7, 8)? { u.int_in_range(0..=9)? } else { u.arbitrary()? }),
        4 => CtrlCommand::VlanDel(if u.ratio(7, 8)? { u.int_in_range(0..=9)? } else { u.arbitrary()? }),
        5 => CtrlCommand::AnnounceAck,
        6 => CtrlCommand::MqPairsSet(u.arbitrary()?),
        7 => {
            // Power-of-two lengths up to the limit, sometimes not.
            let n = if u.ratio(7, 8)? { 1 << u.int_in_range(0..=7)? } else { u.int_in_range(0..=300)? };
            CtrlCommand::RssConfig(RssConfig {
                hash_types: hash_types(u)?,
                indirection_table: (0..n).map(|_| queue(u)).collect::<ArbResult<_>>()?,
                unclassified_queue: queue(u)?,
                max_tx_vq: queue(u)?,
                key: key(u)?,
            })
        }
        8 => CtrlCommand::HashConfig(HashConfig { hash_types: hash_types(u)?, reserved: u.arbitrary()?, key: key(u)? }),
        _ => CtrlCommand::GuestOffloadsSet(u.arbitrary::<u64>()? & (f::GUEST_OFFLOAD_MASK | f::MAC)),
    })
}

/// Negotiated features: mostly a subset of what the device can offer plus
/// the guest offloads and RSS/hash reporting (pure code, not offered yet),
/// sometimes anything.
pub fn negotiated(u: &mut Unstructured<'_>) -> ArbResult<u64> {
    let raw: u64 = u.arbitrary()?;
    let likely = f::SUPPORTED | f::GUEST_OFFLOAD_MASK | f::RSS | f::HASH_REPORT;
    Ok(if u.ratio(3, 4)? { (raw & likely) | f::VERSION_1 } else { raw })
}

// ------------------------------------------------------------ split rings

/// One split-ring descriptor (`struct vring_desc`, little endian).
pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    b
}

// ------------------------------------------------------------ memfd regions

/// The byte at file offset `o` of every [`PatternMemory`].
#[inline]
pub fn pattern(o: u64) -> u8 {
    (o.wrapping_mul(0x9E37_79B1) >> 13) as u8
}

/// A memfd whose bytes are `pattern(offset)`, shared by the runs of one
/// target process (built once: memfd + mmap per run would dominate).
pub struct PatternMemory {
    pub mem: Arc<DmaMemory>,
    /// The pattern, computed once (the coverage-instrumented loop is slow).
    bytes: Vec<u8>,
}

impl PatternMemory {
    pub fn new(name: &str, len: usize) -> Self {
        let mem = Arc::new(DmaMemory::new(name, len).expect("memfd"));
        let bytes = (0..mem.len() as u64).map(pattern).collect();
        let me = PatternMemory { mem, bytes };
        me.restore();
        me
    }
    pub fn len(&self) -> u64 {
        self.mem.len() as u64
    }
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }
    /// Put the pattern back (a run may have written into the memory).
    pub fn restore(&self) {
        self.mem.write(0, &self.bytes);
    }
    pub fn intact(&self) -> bool {
        let mut b = vec![0u8; self.mem.len()];
        self.mem.read(0, &mut b);
        b == self.bytes
    }
}

/// One region of a [`Regions`] source: `[start, last]` is `mem` from `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub asid: u32,
    pub start: u64,
    pub last: u64,
    pub perm: u8,
    pub offset: u64,
    /// Index into [`Regions::mems`].
    pub mem: usize,
}

impl Region {
    pub fn contains(&self, iova: u64) -> bool {
        self.start <= iova && iova <= self.last
    }
    pub fn allows_read(&self) -> bool {
        self.perm & VDUSE_ACCESS_RO != 0
    }
    pub fn allows_write(&self) -> bool {
        self.perm & VDUSE_ACCESS_WO != 0
    }
}

/// The "kernel" side of the IOTLB: regions per ASID over memfds, as
/// `IOTLB_GET_FD2` hands them out. Regions of one ASID never overlap (the
/// vhost IOTLB refuses overlapping maps).
pub struct Regions {
    pub mems: Vec<Arc<DmaMemory>>,
    pub regions: Mutex<Vec<Region>>,
}

impl Regions {
    pub fn new(mems: Vec<Arc<DmaMemory>>) -> Arc<Self> {
        Arc::new(Regions { mems, regions: Mutex::new(Vec::new()) })
    }
    pub fn list(&self) -> Vec<Region> {
        self.regions.lock().unwrap().clone()
    }
    pub fn find(&self, asid: u32, iova: u64) -> Option<Region> {
        self.regions.lock().unwrap().iter().find(|r| r.asid == asid && r.contains(iova)).cloned()
    }
    /// Adds `r` unless it overlaps a region of its ASID or leaves its memory.
    pub fn add(&self, r: Region) -> bool {
        let Some(mem) = self.mems.get(r.mem) else { return false };
        if r.last < r.start || r.offset.checked_add(r.last - r.start).is_none_or(|end| end >= mem.len() as u64) {
            return false;
        }
        let mut v = self.regions.lock().unwrap();
        if v.iter().any(|o| o.asid == r.asid && o.start <= r.last && r.start <= o.last) {
            return false;
        }
        v.push(r);
        true
    }
    /// Removes every region of `asid` overlapping `[start, last]`.
    pub fn remove(&self, asid: u32, start: u64, last: u64) {
        self.regions.lock().unwrap().retain(|o| !(o.asid == asid && o.start <= last && start <= o.last));
    }
}

impl RegionSource for Regions {
    fn region(&self, asid: u32, iova: u64) -> Result<IotlbRegion, VduseError> {
        let r = self.find(asid, iova).ok_or(VduseError::os("IOTLB_GET_FD2", nix::errno::Errno::EINVAL))?;
        let fd = self.mems[r.mem].fd().as_fd().try_clone_to_owned().expect("dup memfd");
        Ok(IotlbRegion { fd, offset: r.offset, start: r.start, last: r.last, perm: r.perm })
    }
}
