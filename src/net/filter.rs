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
        }
    }

    /// The filter `state` describes; VLAN filtering applies only when
    /// CTRL_VLAN is in `negotiated` (without it the device does not filter
    /// on VLANs at all).
    pub fn from_state(state: &CtrlState, negotiated: u64) -> Self {
        let rx = state.rx_flags();
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
        }
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
