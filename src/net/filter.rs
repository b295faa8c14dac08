//! Receive filtering (virtio spec 1.3 §5.1.6.5.1 - §5.1.6.5.3) for the RX
//! fast path.
//!
//! [`RxFilter`] is an immutable snapshot of the control-queue state, checked
//! once per frame without allocation or locks. [`FilterCell`] hands new
//! snapshots from the slow path (one writer) to the poll threads: a reader
//! checks an atomic generation once per burst and takes the mutex only when
//! it changed.
//!
//! Decision order: frames shorter than an Ethernet header are dropped;
//! promiscuous mode accepts everything else; with CTRL_VLAN, an 802.1Q-tagged
//! frame passes only if its vid was added (untagged frames always pass);
//! then the destination: broadcast unless NOBCAST; multicast dropped by
//! NOMULTI, else accepted by ALLMULTI / table overflow / a table hit; unicast
//! dropped by NOUNI, else accepted by ALLUNI / table overflow / the device's
//! own MAC / a table hit. Filtering is best effort per the spec, so erring
//! towards acceptance (overflow) is allowed, dropping wanted frames is not.

use super::ctrl::{mac_u64, CtrlState, VLAN_COUNT};
use super::features;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const ETH_HLEN: usize = 14;
const BROADCAST: u64 = 0xffff_ffff_ffff;

/// A snapshot of the receive filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFilter {
    promisc: bool,
    bcast: bool,
    nomulti: bool,
    all_multi: bool,
    nouni: bool,
    all_uni: bool,
    own: u64,
    unicast: Box<[u64]>,
    multicast: Box<[u64]>,
    vlan_filter: bool,
    vlans: [u64; VLAN_COUNT / 64],
    /// The features this snapshot was made under, and the guest offloads
    /// in force (CTRL_GUEST_OFFLOADS_SET): the poll threads take the RX
    /// offloads from here.
    negotiated: u64,
    guest_offloads: u64,
    /// RSS / hash reports as the driver configured them (`None`: neither).
    steering: Option<std::sync::Arc<super::rss::Steering>>,
    /// `steering` picks queues (RSS negotiated and configured).
    rss: bool,
    /// HASH_REPORT negotiated and a hash configured: RX headers carry it.
    hash_report: bool,
    /// Receive queues the driver uses ([`super::rss::Steering::rx_pairs`]).
    rx_pairs: u16,
}

impl RxFilter {
    /// Accepts every frame of at least 14 bytes: the state before the driver
    /// configured anything, or for a device without a control queue.
    pub fn accept_all() -> Self {
        RxFilter {
            promisc: true,
            bcast: true,
            nomulti: false,
            all_multi: true,
            nouni: false,
            all_uni: true,
            own: 0,
            unicast: Box::new([]),
            multicast: Box::new([]),
            vlan_filter: false,
            vlans: [0; VLAN_COUNT / 64],
            negotiated: 0,
            guest_offloads: 0,
            steering: None,
            rss: false,
            hash_report: false,
            rx_pairs: 1,
        }
    }

    /// The filter `state` describes; VLAN filtering applies only when
    /// CTRL_VLAN is in `negotiated` (without it the device does not filter
    /// on VLANs at all).
    pub fn from_state(state: &CtrlState, negotiated: u64) -> Self {
        let rx = state.rx_flags();
        let steering = super::rss::Steering::from_ctrl(state).map(std::sync::Arc::new);
        let rss = negotiated & features::RSS != 0 && steering.as_ref().is_some_and(|s| s.steers());
        let hash_report = negotiated & features::HASH_REPORT != 0 && steering.is_some();
        RxFilter {
            promisc: rx.promisc,
            bcast: !rx.nobcast,
            nomulti: rx.nomulti,
            all_multi: rx.allmulti || state.multi_overflow(),
            nouni: rx.nouni,
            all_uni: rx.alluni || state.uni_overflow(),
            own: mac_u64(&state.mac()),
            unicast: state.unicast().iter().map(mac_u64).collect(),
            multicast: state.multicast().iter().map(mac_u64).collect(),
            vlan_filter: negotiated & features::CTRL_VLAN != 0,
            vlans: *state.vlan_bitmap(),
            negotiated,
            guest_offloads: state.guest_offloads() & negotiated,
            steering: if rss || hash_report { steering } else { None },
            rss,
            hash_report,
            rx_pairs: super::rss::Steering::rx_pairs(state),
        }
    }

    /// The RSS / hash-report configuration in force, when either applies.
    /// A poll thread tests this once per frame (one predictable branch
    /// while neither is configured).
    #[inline]
    pub fn steering(&self) -> Option<&super::rss::Steering> {
        self.steering.as_deref()
    }

    /// Whether `steering` picks the receive queue (else hash reports only).
    #[inline]
    pub fn rss(&self) -> bool {
        self.rss
    }

    /// Whether RX headers carry the hash (HASH_REPORT).
    #[inline]
    pub fn hash_report(&self) -> bool {
        self.hash_report
    }

    /// Receive queues (pairs) the driver uses.
    #[inline]
    pub fn rx_pairs(&self) -> u16 {
        self.rx_pairs
    }

    /// The features this snapshot belongs to (0 before DRIVER_OK).
    pub fn negotiated(&self) -> u64 {
        self.negotiated
    }

    /// The guest (receive) offloads in force.
    pub fn guest_offloads(&self) -> u64 {
        self.guest_offloads
    }

    pub fn promisc(&self) -> bool {
        self.promisc
    }

    /// Should `frame` (starting at the Ethernet header, no virtio-net header)
    /// be delivered to the driver?
    #[inline]
    pub fn accepts(&self, frame: &[u8]) -> bool {
        let Some(eth) = frame.first_chunk::<ETH_HLEN>() else {
            return false;
        };
        if self.promisc {
            return true;
        }
        if self.vlan_filter && eth[12] == 0x81 && eth[13] == 0x00 {
            let Some(tci) = frame.get(ETH_HLEN..ETH_HLEN + 2) else {
                return false;
            };
            let vid = (u16::from_be_bytes([tci[0], tci[1]]) & 0x0fff) as usize;
            if self.vlans[vid / 64] & (1 << (vid % 64)) == 0 {
                return false;
            }
        }
        let dst = u64::from_be_bytes([0, 0, eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]);
        if eth[0] & 1 != 0 {
            if dst == BROADCAST {
                return self.bcast;
            }
            !self.nomulti && (self.all_multi || self.multicast.contains(&dst))
        } else {
            !self.nouni && (self.all_uni || dst == self.own || self.unicast.contains(&dst))
        }
    }
}

/// Publishes [`RxFilter`] snapshots from the slow path to the poll threads.
#[derive(Debug)]
pub struct FilterCell {
    /// Bumped under `current`'s lock after each publish. Readers compare it
    /// with the generation they hold; it is only a hint, the mutex is what
    /// hands over the snapshot.
    generation: AtomicU64,
    current: Mutex<Arc<RxFilter>>,
}

impl FilterCell {
    pub fn new(initial: RxFilter) -> Arc<Self> {
        Arc::new(FilterCell { generation: AtomicU64::new(0), current: Mutex::new(Arc::new(initial)) })
    }

    /// Replaces the snapshot; readers pick it up at their next
    /// [`FilterReader::current`].
    pub fn publish(&self, filter: RxFilter) {
        let filter = Arc::new(filter);
        let old = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let old = std::mem::replace(&mut *cur, filter);
            // Release: a reader that Acquire-loads the new value and then
            // takes the lock finds this filter (the lock alone guarantees
            // that; the ordering keeps the hint honest for lock-free peeks).
            self.generation.fetch_add(1, Ordering::Release);
            old
        };
        // Dropped outside the lock, so readers never wait on a free.
        drop(old);
    }

    /// How many times [`publish`](Self::publish) ran.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot (slow path, tests).
    pub fn load(&self) -> Arc<RxFilter> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A reader for one poll thread.
    pub fn reader(self: &Arc<Self>) -> FilterReader {
        let (generation, filter) = self.snapshot();
        FilterReader { cell: Arc::clone(self), generation, filter }
    }

    fn snapshot(&self) -> (u64, Arc<RxFilter>) {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock: publish() bumps it under the same lock, so the
        // pair is consistent.
        (self.generation.load(Ordering::Acquire), Arc::clone(&cur))
    }
}

/// A poll thread's handle on a [`FilterCell`].
#[derive(Debug)]
pub struct FilterReader {
    cell: Arc<FilterCell>,
    generation: u64,
    filter: Arc<RxFilter>,
}

impl FilterReader {
    /// The newest snapshot. Costs one atomic load when nothing was published
    /// since the last call; call it once per burst, not per frame.
    #[inline]
    pub fn current(&mut self) -> &RxFilter {
        // Acquire pairs with publish()'s Release increment.
        if self.cell.generation.load(Ordering::Acquire) != self.generation {
            self.refresh();
        }
        &self.filter
    }

    #[cold]
    fn refresh(&mut self) {
        let (generation, filter) = self.cell.snapshot();
        self.generation = generation;
        // The old snapshot may be freed here if the writer already let go;
        // that happens once per publish, not per packet.
        self.filter = filter;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ctrl::{CtrlCommand, Mac, RxMode, MAC_TABLE_CAP};
    use std::sync::mpsc;
    use std::time::Duration;

    const OWN: Mac = [0x02, 0, 0, 0, 0, 1];
    const OTHER: Mac = [0x02, 0, 0, 0, 0, 2];
    const BCAST: Mac = [0xff; 6];
    const MCAST: Mac = [0x01, 0, 0x5e, 0, 0, 1];
    const MCAST2: Mac = [0x33, 0x33, 0, 0, 0, 1];
    const NEG: u64 = features::SUPPORTED;

    /// The snapshot says whether RSS steers and HASH_REPORT reports only
    /// for what was negotiated and configured, and which queues are used.
    #[test]
    fn steering_follows_the_negotiated_features_and_the_last_command() {
        use crate::net::ctrl::{HashConfig, RssConfig};
        use crate::net::rss::HASH_TYPE_IPV4;
        let rss = RssConfig {
            hash_types: HASH_TYPE_IPV4,
            indirection_table: vec![0, 3],
            unclassified_queue: 0,
            max_tx_vq: 2,
            key: vec![7; 40],
        };
        let mut s = CtrlState::new(OWN, NEG);
        let f = RxFilter::from_state(&s, NEG);
        assert!(f.steering().is_none() && !f.rss() && !f.hash_report());
        assert_eq!(f.rx_pairs(), 1);
        s.apply(CtrlCommand::RssConfig(rss), NEG, 4).unwrap();
        let f = RxFilter::from_state(&s, NEG);
        assert!(f.steering().is_some() && f.rss() && f.hash_report());
        assert_eq!(f.rx_pairs(), 4, "the table names queue 3");
        let no_report = NEG & !features::HASH_REPORT;
        let f = RxFilter::from_state(&s, no_report);
        assert!(f.rss() && !f.hash_report());
        let h = HashConfig { hash_types: HASH_TYPE_IPV4, reserved: [0; 8], key: vec![7; 40] };
        s.apply(CtrlCommand::HashConfig(h), NEG, 4).unwrap();
        let f = RxFilter::from_state(&s, NEG);
        assert!(f.steering().is_some() && !f.rss() && f.hash_report());
        assert_eq!(f.rx_pairs(), 2, "max_tx_vq stays");
        let f = RxFilter::from_state(&s, no_report);
        assert!(f.steering().is_none(), "hash reports not negotiated: nothing to do per frame");
    }

    fn frame(dst: Mac) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    fn tagged(dst: Mac, vid: u16) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x81, 0x00]);
        // PCP 5 set too, to check that only the low 12 bits are the vid.
        f.extend_from_slice(&((5 << 13) | vid).to_be_bytes());
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0u8; 46]);
        f
    }

    fn state(cmds: &[CtrlCommand]) -> CtrlState {
        let mut s = CtrlState::new(OWN, NEG);
        for c in cmds {
            s.apply(c.clone(), NEG, 1).unwrap();
        }
        s
    }

    fn rx(mode: RxMode, on: bool) -> CtrlCommand {
        CtrlCommand::Rx { mode, on }
    }

    fn filter(cmds: &[CtrlCommand]) -> RxFilter {
        RxFilter::from_state(&state(cmds), NEG)
    }

    #[test]
    fn reset_state_accepts_everything() {
        let f = filter(&[]);
        assert!(f.promisc());
        for dst in [OWN, OTHER, BCAST, MCAST] {
            assert!(f.accepts(&frame(dst)));
            assert!(f.accepts(&tagged(dst, 7)), "promisc overrides VLAN filtering");
        }
        assert!(RxFilter::accept_all().accepts(&frame(OTHER)));
    }

    #[test]
    fn runts_are_dropped_even_when_promiscuous() {
        for f in [filter(&[]), RxFilter::accept_all(), filter(&[rx(RxMode::Promisc, false)])] {
            assert!(!f.accepts(&[]));
            assert!(!f.accepts(&frame(OWN)[..13]));
            assert!(f.accepts(&frame(OWN)[..14]));
        }
    }

    #[test]
    fn default_non_promiscuous_mode() {
        let f = filter(&[rx(RxMode::Promisc, false)]);
        assert!(f.accepts(&frame(OWN)));
        assert!(!f.accepts(&frame(OTHER)));
        assert!(f.accepts(&frame(BCAST)));
        assert!(!f.accepts(&frame(MCAST)));
    }

    #[test]
    fn allmulti_and_nomulti() {
        let f = filter(&[rx(RxMode::Promisc, false), rx(RxMode::AllMulti, true)]);
        assert!(f.accepts(&frame(MCAST)) && f.accepts(&frame(MCAST2)));
        assert!(!f.accepts(&frame(OTHER)));
        // NOMULTI wins over ALLMULTI and over a table hit, but not broadcast.
        let table = CtrlCommand::MacTableSet { unicast: vec![], multicast: vec![MCAST] };
        let f = filter(&[rx(RxMode::Promisc, false), rx(RxMode::AllMulti, true), table, rx(RxMode::NoMulti, true)]);
        assert!(!f.accepts(&frame(MCAST)));
        assert!(f.accepts(&frame(BCAST)));
        assert!(f.accepts(&frame(OWN)));
    }

    #[test]
    fn alluni_and_nouni() {
        let f = filter(&[rx(RxMode::Promisc, false), rx(RxMode::AllUni, true)]);
        assert!(f.accepts(&frame(OTHER)));
        assert!(!f.accepts(&frame(MCAST)), "ALLUNI must not open multicast");
        let f = filter(&[rx(RxMode::Promisc, false), rx(RxMode::AllUni, true), rx(RxMode::NoUni, true)]);
        assert!(!f.accepts(&frame(OTHER)));
        assert!(!f.accepts(&frame(OWN)), "NOUNI drops even the device's own address");
        assert!(f.accepts(&frame(BCAST)));
    }

    #[test]
    fn nobcast() {
        let f = filter(&[rx(RxMode::Promisc, false), rx(RxMode::NoBcast, true), rx(RxMode::AllMulti, true)]);
        assert!(!f.accepts(&frame(BCAST)), "ALLMULTI does not bring broadcast back");
        assert!(f.accepts(&frame(MCAST)));
        assert!(f.accepts(&frame(OWN)));
    }

    #[test]
    fn mac_table_hits_and_misses() {
        let table = CtrlCommand::MacTableSet { unicast: vec![OTHER], multicast: vec![MCAST] };
        let f = filter(&[rx(RxMode::Promisc, false), table]);
        assert!(f.accepts(&frame(OWN)));
        assert!(f.accepts(&frame(OTHER)));
        assert!(!f.accepts(&frame([0x02, 0, 0, 0, 0, 3])));
        assert!(f.accepts(&frame(MCAST)));
        assert!(!f.accepts(&frame(MCAST2)));
        // A multicast address in the unicast table never opens multicast.
        let odd = CtrlCommand::MacTableSet { unicast: vec![MCAST2], multicast: vec![] };
        assert!(!filter(&[rx(RxMode::Promisc, false), odd]).accepts(&frame(MCAST2)));
    }

    #[test]
    fn overflowing_table_accepts_its_kind() {
        let many: Vec<Mac> = (0..=MAC_TABLE_CAP as u8).map(|i| [0x02, 1, 0, 0, 0, i]).collect();
        let table = CtrlCommand::MacTableSet { unicast: many, multicast: vec![MCAST] };
        let f = filter(&[rx(RxMode::Promisc, false), table]);
        assert!(f.accepts(&frame([0x02, 9, 9, 9, 9, 9])));
        assert!(f.accepts(&frame(MCAST)));
        assert!(!f.accepts(&frame(MCAST2)), "only the overflowing table opens up");
    }

    #[test]
    fn mac_change_moves_the_own_address() {
        let f = filter(&[rx(RxMode::Promisc, false), CtrlCommand::MacAddrSet(OTHER)]);
        assert!(f.accepts(&frame(OTHER)));
        assert!(!f.accepts(&frame(OWN)));
    }

    #[test]
    fn vlan_filtering_with_ctrl_vlan() {
        let off = rx(RxMode::Promisc, false);
        let f = filter(std::slice::from_ref(&off));
        assert!(!f.accepts(&tagged(OWN, 5)), "empty VLAN table drops tagged frames");
        assert!(f.accepts(&frame(OWN)), "untagged frames always pass");
        let f = filter(&[off.clone(), CtrlCommand::VlanAdd(5)]);
        assert!(f.accepts(&tagged(OWN, 5)));
        assert!(f.accepts(&tagged(BCAST, 5)));
        assert!(!f.accepts(&tagged(OWN, 6)));
        assert!(!f.accepts(&tagged(OTHER, 5)), "a VLAN hit does not bypass the MAC check");
        let f = filter(&[off.clone(), CtrlCommand::VlanAdd(5), CtrlCommand::VlanDel(5)]);
        assert!(!f.accepts(&tagged(OWN, 5)));
        let f = filter(&[off, CtrlCommand::VlanAdd(4095)]);
        assert!(f.accepts(&tagged(OWN, 4095)));
        // Tagged but cut before the TCI.
        assert!(!f.accepts(&tagged(OWN, 4095)[..15]));
    }

    #[test]
    fn no_vlan_filtering_without_ctrl_vlan() {
        let neg = NEG & !features::CTRL_VLAN;
        let mut s = CtrlState::new(OWN, neg);
        s.apply(rx(RxMode::Promisc, false), neg, 1).unwrap();
        let f = RxFilter::from_state(&s, neg);
        assert!(f.accepts(&tagged(OWN, 5)));
        assert!(f.accepts(&tagged(OWN, 5)[..15]), "no TCI needed when VLANs are not filtered");
        assert!(!f.accepts(&tagged(OTHER, 5)));
    }

    #[test]
    fn reader_sees_publish() {
        let cell = FilterCell::new(RxFilter::accept_all());
        let mut r = cell.reader();
        assert!(r.current().accepts(&frame(OTHER)));
        cell.publish(filter(&[rx(RxMode::Promisc, false)]));
        assert_eq!(cell.generation(), 1);
        assert!(!r.current().accepts(&frame(OTHER)));
        assert!(r.current().accepts(&frame(OWN)));
        // A reader created after the publish starts with the new filter.
        assert!(!cell.reader().current().accepts(&frame(OTHER)));
        assert_eq!(*cell.load(), filter(&[rx(RxMode::Promisc, false)]));
    }

    #[test]
    fn reader_takes_no_lock_without_a_publish() {
        let cell = FilterCell::new(RxFilter::accept_all());
        let mut r = cell.reader();
        let (tx, rx_) = mpsc::channel();
        let guard = cell.current.lock().unwrap();
        let t = std::thread::spawn(move || {
            let ok = r.current().promisc();
            tx.send(ok).unwrap();
            r
        });
        // Blocks (and times out) if current() tries the held mutex.
        let got = rx_.recv_timeout(Duration::from_secs(5));
        drop(guard);
        let mut r = t.join().unwrap();
        assert_eq!(got, Ok(true));
        cell.publish(filter(&[rx(RxMode::Promisc, false)]));
        assert!(!r.current().promisc());
    }

    #[test]
    fn concurrent_publish_is_seen_in_order() {
        // Each published filter accepts exactly one own address [2,0,0,0,0,i];
        // the reader must only move forward and end on the last one.
        const N: u8 = 50;
        let mk = |i: u8| {
            let mut s = CtrlState::new([2, 0, 0, 0, 0, i], NEG);
            s.apply(rx(RxMode::Promisc, false), NEG, 1).unwrap();
            RxFilter::from_state(&s, NEG)
        };
        let cell = FilterCell::new(mk(0));
        let mut r = cell.reader();
        let w = {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || (1..=N).for_each(|i| cell.publish(mk(i))))
        };
        let which = |f: &RxFilter| (0..=N).find(|&i| f.accepts(&frame([2, 0, 0, 0, 0, i])));
        let mut last = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while last != N {
            assert!(std::time::Instant::now() < deadline, "reader stuck at {last}");
            let now = which(r.current()).expect("every snapshot accepts one address");
            assert!(now >= last, "went back from {last} to {now}");
            last = now;
            std::thread::yield_now();
        }
        w.join().unwrap();
        assert_eq!(cell.generation(), N as u64);
    }
}
