//! Per-ASID IOTLB: IOVA -> host pointer translation for one address space.
//!
//! A [`Table`] is an immutable, sorted list of mapped regions. The current
//! table of an [`AddressSpace`] is published through an atomic pointer and
//! read by poll threads under a QSBR [`ReadGuard`]. Changes (a region
//! resolved after a miss, an invalidation) build a new table, publish it and
//! retire the old one; retired tables are freed only after
//! [`Qsbr::synchronize`], so a mapping is never unmapped while a poll thread
//! may still hold a pointer into it.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};

use super::qsbr::{Qsbr, ReadGuard, SyncTimeout};
use crate::uapi::vduse::{VDUSE_ACCESS_RO, VDUSE_ACCESS_WO};
use crate::vduse::{IotlbRegion, VduseDevice, VduseError};

/// What the device wants to do with guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Device reads (driver-readable buffers, rings it consumes).
    Read,
    /// Device writes (device-writable buffers, the used ring).
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XlateError {
    #[error("IOVA {iova:#x} is not mapped in address space {asid}")]
    Unmapped { asid: u32, iova: u64 },
    #[error("IOVA {iova:#x} in address space {asid} does not allow {access:?}")]
    Permission { asid: u32, iova: u64, access: Access },
    #[error("IOVA range at {iova:#x} of {len} bytes wraps around")]
    Overflow { iova: u64, len: u64 },
    #[error("IOVA range at {iova:#x} of {len} bytes is not contiguous in one region")]
    Discontiguous { iova: u64, len: u64 },
    #[error("address space {asid} is being reset")]
    Retry { asid: u32 },
}

/// Translations of one access in a row under one table (a burst's
/// buffers, which a driver carves from one or a few regions): the region
/// the last one hit is tried first, two compares instead of a search and
/// a permission check (the region allowed this access already). Anything
/// else is [`Table::translate`], with its errors.
pub struct Near<'t> {
    table: &'t Table,
    access: Access,
    last: Option<&'t Mapping>,
}

impl<'t> Near<'t> {
    #[inline]
    pub fn new(table: &'t Table, access: Access) -> Self {
        Near { table, access, last: None }
    }

    /// [`Table::translate`] of `[iova, iova + len)` for this access.
    #[inline]
    pub fn translate(&mut self, iova: u64, len: u64) -> Result<*mut u8, XlateError> {
        if let Some(m) = self.last {
            let end = iova.wrapping_add(len.saturating_sub(1));
            // No wrap (end >= iova) and inside [start, last].
            if iova >= m.start && end >= iova && end <= m.last {
                // SAFETY: start <= iova <= last: the offset lies inside the
                // mapping whose base is `host`, which allows `access`.
                return Ok(unsafe { m.host.add((iova - m.start) as usize) });
            }
        }
        let (p, m) = self.table.translate_in(iova, len, self.access)?;
        self.last = Some(m);
        Ok(p)
    }
}

/// One mmap'd region `[start, last]` of an address space.
pub struct Mapping {
    start: u64,
    last: u64,
    perm: u8,
    /// Host address of IOVA `start`.
    host: *mut u8,
    _map: MmapRaw,
}

// SAFETY: `host` points into `_map`, which this struct owns; the memory is
// shared with the driver by design and has no thread affinity.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the pointer value.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// mmap an [`IotlbRegion`] returned by `IOTLB_GET_FD(2)`.
    ///
    /// Any size the kernel hands out is mapped whole: a vhost-vdpa region is
    /// a VM's RAM block and may be hundreds of GiB. The mapping only reserves
    /// address space (the file is shared, nothing is copied or committed), so
    /// the limits are the process's address space and `vm.max_map_count`,
    /// both reported by mmap itself. Only a range that cannot be expressed
    /// (`last < start`, or `[0, u64::MAX]`, 2^64 bytes) is refused here.
    pub fn map(region: &IotlbRegion) -> Result<Mapping, MapError> {
        let bad = || MapError::BadRange { start: region.start, last: region.last };
        let len = region.last.checked_sub(region.start).and_then(|d| d.checked_add(1)).ok_or_else(bad)?;
        // mmap needs a page-aligned file offset; keep the remainder as a
        // pointer adjustment.
        let page = 4096u64;
        let skew = region.offset % page;
        let map_len = len.checked_add(skew).and_then(|l| usize::try_from(l).ok()).ok_or_else(bad)?;
        let mut opts = MmapOptions::new();
        opts.offset(region.offset - skew).len(map_len);
        let map = if region.perm & VDUSE_ACCESS_WO != 0 {
            opts.map_raw(&region.fd)
        } else {
            opts.map_raw_read_only(&region.fd)
        }
        .map_err(|e| MapError::Mmap { start: region.start, kind: e.kind() })?;
        // SAFETY: skew < page <= mapping length, so the result stays inside.
        let host = unsafe { map.as_mut_ptr().add(skew as usize) };
        Ok(Mapping { start: region.start, last: region.last, perm: region.perm, host, _map: map })
    }

    pub fn start(&self) -> u64 {
        self.start
    }
    pub fn last(&self) -> u64 {
        self.last
    }
    pub fn perm(&self) -> u8 {
        self.perm
    }

    fn allows(&self, access: Access) -> bool {
        match access {
            Access::Read => self.perm & VDUSE_ACCESS_RO != 0,
            Access::Write => self.perm & VDUSE_ACCESS_WO != 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("region [{start:#x}, {last:#x}] is inverted or larger than the address space")]
    BadRange { start: u64, last: u64 },
    #[error("mmap of region at {start:#x} failed: {kind:?}")]
    Mmap { start: u64, kind: std::io::ErrorKind },
    #[error(transparent)]
    Vduse(#[from] VduseError),
}

static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// An immutable snapshot of one address space.
pub struct Table {
    asid: u32,
    /// Sorted by start, non-overlapping.
    maps: Vec<Arc<Mapping>>,
    /// Unique per table: ring pointers cached against one table are
    /// re-translated when this changes.
    id: u64,
}

impl Table {
    fn new(asid: u32, maps: Vec<Arc<Mapping>>) -> Table {
        Table { asid, maps, id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed) }
    }

    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn asid(&self) -> u32 {
        self.asid
    }
    pub fn len(&self) -> usize {
        self.maps.len()
    }
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    #[inline]
    fn find(&self, iova: u64) -> Option<&Mapping> {
        // Tables hold a handful of regions; a binary search keeps a large
        // one (many vhost-vdpa maps) cheap too.
        let i = self.maps.partition_point(|m| m.last < iova);
        let m = self.maps.get(i)?;
        (m.start <= iova).then_some(&**m)
    }

    /// Translate `[iova, iova + len)` that must lie inside one region.
    /// `len == 0` checks only that `iova` is mapped.
    #[inline]
    pub fn translate(&self, iova: u64, len: u64, access: Access) -> Result<*mut u8, XlateError> {
        self.translate_in(iova, len, access).map(|(p, _)| p)
    }

    /// [`Self::translate`], and the region it lies in.
    #[inline]
    fn translate_in(&self, iova: u64, len: u64, access: Access) -> Result<(*mut u8, &Mapping), XlateError> {
        let end = iova.checked_add(len.saturating_sub(1)).ok_or(XlateError::Overflow { iova, len })?;
        let m = self.find(iova).ok_or(XlateError::Unmapped { asid: self.asid, iova })?;
        if !m.allows(access) {
            return Err(XlateError::Permission { asid: self.asid, iova, access });
        }
        if end > m.last {
            return Err(XlateError::Discontiguous { iova, len });
        }
        // SAFETY: start <= iova <= last, so the offset lies inside the
        // mapping whose base is `host`.
        Ok((unsafe { m.host.add((iova - m.start) as usize) }, m))
    }

    /// Visit the host pieces of `[iova, iova + len)`, which may span several
    /// adjacent regions. Fails without visiting anything past the first gap
    /// or permission mismatch.
    pub fn for_each_piece(
        &self,
        iova: u64,
        len: u64,
        access: Access,
        mut f: impl FnMut(*mut u8, usize),
    ) -> Result<(), XlateError> {
        if len == 0 {
            return Ok(());
        }
        iova.checked_add(len - 1).ok_or(XlateError::Overflow { iova, len })?;
        // Validate the whole range first, so a failure touches nothing.
        let mut at = iova;
        let mut left = len;
        while left > 0 {
            let m = self.find(at).ok_or(XlateError::Unmapped { asid: self.asid, iova: at })?;
            if !m.allows(access) {
                return Err(XlateError::Permission { asid: self.asid, iova: at, access });
            }
            let n = (m.last - at + 1).min(left);
            at = at.wrapping_add(n);
            left -= n;
        }
        let mut at = iova;
        let mut left = len;
        while left > 0 {
            let m = self.find(at).expect("validated above");
            let n = (m.last - at + 1).min(left);
            // SAFETY: [at, at + n) lies inside `m`, validated in the first pass.
            f(unsafe { m.host.add((at - m.start) as usize) }, n as usize);
            at = at.wrapping_add(n);
            left -= n;
        }
        Ok(())
    }

    /// The regions, for logs and tests.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64, u8)> + '_ {
        self.maps.iter().map(|m| (m.start, m.last, m.perm))
    }
}

/// Where an address space gets a region from after a miss: the device's
/// `IOTLB_GET_FD(2)`.
pub trait RegionSource: Send + Sync {
    fn region(&self, asid: u32, iova: u64) -> Result<IotlbRegion, VduseError>;
}

impl RegionSource for Arc<dyn VduseDevice> {
    fn region(&self, asid: u32, iova: u64) -> Result<IotlbRegion, VduseError> {
        self.iotlb_get_fd(asid, iova, iova)
    }
}

struct WriterState {
    /// Bumped by every invalidation; a miss resolved across a bump is stale.
    generation: u64,
    retired: Vec<Box<Table>>,
}

/// Counters for stats and tests.
#[derive(Debug, Default)]
pub struct IotlbStats {
    pub misses: AtomicU64,
    pub maps: AtomicU64,
    pub invalidations: AtomicU64,
    /// Mappings dropped (munmap'd) so far.
    pub unmaps: Arc<AtomicU64>,
}

/// One address space (ASID) of a device.
pub struct AddressSpace {
    asid: u32,
    current: AtomicPtr<Table>,
    writer: Mutex<WriterState>,
    qsbr: Arc<Qsbr>,
    source: Arc<dyn RegionSource>,
    pub stats: IotlbStats,
}

/// How long a writer waits for poll threads to pass a quiescent state.
pub const SYNC_TIMEOUT: Duration = Duration::from_millis(500);

impl AddressSpace {
    pub fn new(asid: u32, qsbr: Arc<Qsbr>, source: Arc<dyn RegionSource>) -> Arc<AddressSpace> {
        let t = Box::into_raw(Box::new(Table::new(asid, Vec::new())));
        Arc::new(AddressSpace {
            asid,
            current: AtomicPtr::new(t),
            writer: Mutex::new(WriterState { generation: 0, retired: Vec::new() }),
            qsbr,
            source,
            stats: IotlbStats::default(),
        })
    }

    pub fn asid(&self) -> u32 {
        self.asid
    }

    /// The current table, valid while the guard lives.
    #[inline]
    pub fn load<'a>(&'a self, _guard: &'a ReadGuard<'_>) -> &'a Table {
        // Acquire pairs with the Release in `publish`: the table's contents
        // are visible before we follow the pointer.
        let p = self.current.load(Ordering::Acquire);
        // SAFETY: `p` was published by `publish` and is freed only after a
        // `synchronize` that waits for every online reader to pass a
        // quiescent state; the guard proves this reader is online and has
        // not passed one since it loaded `p`.
        unsafe { &*p }
    }

    /// Translate with miss resolution: on `Unmapped`, ask the device for the
    /// region (GET_FD2 + mmap), publish a table with it, and retry once.
    pub fn translate<'a>(
        &'a self,
        guard: &'a ReadGuard<'_>,
        iova: u64,
        len: u64,
        access: Access,
    ) -> Result<*mut u8, XlateError> {
        match self.load(guard).translate(iova, len, access) {
            Err(XlateError::Unmapped { iova: missing, .. }) | Err(XlateError::Discontiguous { iova: missing, .. }) => {
                let missing = if missing == iova { self.first_unmapped(guard, iova, len) } else { missing };
                self.resolve(missing).map_err(|_| XlateError::Unmapped { asid: self.asid, iova: missing })?;
                self.load(guard).translate(iova, len, access)
            }
            other => other,
        }
    }

    /// Like [`Table::for_each_piece`] with miss resolution.
    pub fn for_each_piece<'a>(
        &'a self,
        guard: &'a ReadGuard<'_>,
        iova: u64,
        len: u64,
        access: Access,
        mut f: impl FnMut(*mut u8, usize),
    ) -> Result<(), XlateError> {
        // A chain of misses resolves one region per round; bound the rounds.
        for _ in 0..8 {
            match self.load(guard).for_each_piece(iova, len, access, &mut f) {
                Err(XlateError::Unmapped { iova: missing, .. }) => {
                    self.resolve(missing).map_err(|_| XlateError::Unmapped { asid: self.asid, iova: missing })?;
                }
                other => return other,
            }
        }
        Err(XlateError::Unmapped { asid: self.asid, iova })
    }

    fn first_unmapped(&self, guard: &ReadGuard<'_>, iova: u64, len: u64) -> u64 {
        let t = self.load(guard);
        let mut at = iova;
        let end = iova.saturating_add(len.saturating_sub(1));
        while let Some(m) = t.find(at) {
            if m.last >= end {
                break;
            }
            at = m.last + 1;
        }
        at
    }

    /// Fetch the region holding `iova` from the device and publish it. Called
    /// on a miss, by a poll thread or the slow path. Not a fast-path
    /// operation: one ioctl and one mmap per region.
    pub fn resolve(&self, iova: u64) -> Result<(), MapError> {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Each retry means an invalidation raced with our GET_FD2; those are
        // rare control events, so a storm long enough to exhaust this bound
        // is not a live mapping we failed to resolve.
        for attempt in 0..64 {
            if attempt > 0 {
                std::thread::yield_now();
            }
            let generation = self.lock().generation;
            let region = self.source.region(self.asid, iova)?;
            let mapping = Arc::new(Mapping::map(&region)?);
            let mut w = self.lock();
            if w.generation != generation {
                // An invalidation ran while we asked: the region may be stale.
                continue;
            }
            // SAFETY: writers are serialized by the lock we hold, so the
            // current table cannot be retired or freed under us.
            let cur = unsafe { &*self.current.load(Ordering::Acquire) };
            let mut maps: Vec<Arc<Mapping>> =
                cur.maps.iter().filter(|m| m.last < mapping.start || m.start > mapping.last).cloned().collect();
            let at = maps.partition_point(|m| m.last < mapping.start);
            maps.insert(at, mapping);
            self.publish(&mut w, Table::new(self.asid, maps));
            self.stats.maps.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        Err(MapError::Vduse(VduseError::os("IOTLB_GET_FD2", nix::errno::Errno::EAGAIN)))
    }

    /// Drop every mapping overlapping `[start, last]` and wait until no poll
    /// thread can still use them. When this returns the old mappings are
    /// unmapped (unless another table still shares them) and the slow path
    /// may reply to UPDATE_IOTLB.
    pub fn invalidate(&self, start: u64, last: u64) -> Result<(), SyncTimeout> {
        let retired = self.unpublish(start, last);
        let r = self.qsbr.synchronize(SYNC_TIMEOUT);
        self.settle(retired, r.is_ok());
        r
    }

    /// First half of an invalidation: publish a table without the mappings
    /// overlapping `[start, last]`; returns the retired tables, to be freed
    /// by [`Self::settle`] after a grace period.
    fn unpublish(&self, start: u64, last: u64) -> Vec<Box<Table>> {
        let mut w = self.lock();
        w.generation += 1;
        // SAFETY: as in `resolve`, the writer lock keeps the table alive.
        let cur = unsafe { &*self.current.load(Ordering::Acquire) };
        let maps: Vec<Arc<Mapping>> = cur.maps.iter().filter(|m| m.last < start || m.start > last).cloned().collect();
        self.publish(&mut w, Table::new(self.asid, maps));
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        std::mem::take(&mut w.retired)
    }

    /// Second half: free `retired` if the grace period passed, else keep
    /// them for a later [`Self::reclaim`] (freeing under a reader would be a
    /// use-after-unmap).
    fn settle(&self, retired: Vec<Box<Table>>, grace_passed: bool) {
        if !grace_passed {
            self.lock().retired.extend(retired);
            return;
        }
        for t in retired {
            self.count_unmaps(&t);
        }
    }

    /// Free tables retired by miss resolution, once readers moved on.
    pub fn reclaim(&self) -> Result<(), SyncTimeout> {
        let retired = std::mem::take(&mut self.lock().retired);
        if retired.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.qsbr.synchronize(SYNC_TIMEOUT) {
            self.lock().retired.extend(retired);
            return Err(e);
        }
        for t in retired {
            self.count_unmaps(&t);
        }
        Ok(())
    }

    fn count_unmaps(&self, t: &Table) {
        let n = t.maps.iter().filter(|m| Arc::strong_count(m) == 1).count();
        self.stats.unmaps.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn publish(&self, w: &mut WriterState, t: Table) {
        let new = Box::into_raw(Box::new(t));
        // Release: the table is fully built before readers can see it.
        let old = self.current.swap(new, Ordering::AcqRel);
        // SAFETY: `old` came from Box::into_raw in `new` or an earlier
        // publish and is owned by no one else now; freeing waits for readers.
        w.retired.push(unsafe { Box::from_raw(old) });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Regions currently mapped (slow path and tests; takes the writer lock).
    pub fn snapshot(&self) -> Vec<(u64, u64, u8)> {
        let _w = self.lock();
        // SAFETY: the writer lock keeps the current table alive.
        let cur = unsafe { &*self.current.load(Ordering::Acquire) };
        cur.regions().collect()
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        let p = self.current.swap(ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: no reader can hold `&self` any more (we are being
            // dropped), so no guard-bound reference to the table remains.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// All address spaces of one device, sharing one QSBR domain.
pub struct Iotlb {
    spaces: Vec<Arc<AddressSpace>>,
    qsbr: Arc<Qsbr>,
}

impl Iotlb {
    pub fn new(nas: u32, source: Arc<dyn RegionSource>) -> Iotlb {
        let qsbr = Qsbr::new();
        let spaces = (0..nas.max(1)).map(|asid| AddressSpace::new(asid, qsbr.clone(), source.clone())).collect();
        Iotlb { spaces, qsbr }
    }

    pub fn space(&self, asid: u32) -> Option<&Arc<AddressSpace>> {
        self.spaces.get(asid as usize)
    }

    pub fn spaces(&self) -> &[Arc<AddressSpace>] {
        &self.spaces
    }

    pub fn qsbr(&self) -> &Arc<Qsbr> {
        &self.qsbr
    }

    /// Drop every mapping of every address space (device reset). Every
    /// space gets its empty table first, then one grace period covers them
    /// all, so the wait is bounded by one [`SYNC_TIMEOUT`] whatever the
    /// number of spaces, and a reader that does not pass a quiescent state
    /// leaves no stale mapping visible anywhere: on timeout the old tables
    /// are kept for [`AddressSpace::reclaim`] and the error is returned.
    pub fn clear(&self) -> Result<(), SyncTimeout> {
        let retired: Vec<_> = self.spaces.iter().map(|s| s.unpublish(0, u64::MAX)).collect();
        let r = self.qsbr.synchronize(SYNC_TIMEOUT);
        for (s, t) in self.spaces.iter().zip(retired) {
            s.settle(t, r.is_ok());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::DmaMemory;
    use crate::uapi::vduse::VDUSE_ACCESS_RW;
    use nix::errno::Errno;
    use std::os::fd::AsFd;

    /// Regions per ASID, backed by driver memfds, as the kernel hands them out.
    #[derive(Default)]
    struct FakeSource {
        regions: Mutex<Vec<(u32, u64, u64, u8, Arc<DmaMemory>, u64)>>,
        calls: AtomicU64,
    }

    impl FakeSource {
        fn add(&self, asid: u32, start: u64, mem: &Arc<DmaMemory>, offset: u64, len: u64, perm: u8) {
            self.regions.lock().unwrap().push((asid, start, start + len - 1, perm, mem.clone(), offset));
        }
        fn remove_all(&self) {
            self.regions.lock().unwrap().clear();
        }
    }

    impl RegionSource for FakeSource {
        fn region(&self, asid: u32, iova: u64) -> Result<IotlbRegion, VduseError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let r = self.regions.lock().unwrap();
            let (_, start, last, perm, mem, offset) = r
                .iter()
                .find(|(a, s, l, ..)| *a == asid && *s <= iova && iova <= *l)
                .ok_or(VduseError::os("IOTLB_GET_FD2", Errno::EINVAL))?;
            Ok(IotlbRegion {
                fd: mem.fd().as_fd().try_clone_to_owned().unwrap(),
                offset: *offset,
                start: *start,
                last: *last,
                perm: *perm,
            })
        }
    }

    fn setup() -> (Arc<FakeSource>, Iotlb, Arc<DmaMemory>) {
        let src = Arc::new(FakeSource::default());
        let iotlb = Iotlb::new(2, src.clone());
        let mem = Arc::new(DmaMemory::new("iotlb-test", 4 * 4096).unwrap());
        (src, iotlb, mem)
    }

    #[test]
    fn lookup_resolves_a_miss_and_reads_the_drivers_bytes() {
        let (src, iotlb, mem) = setup();
        mem.write(4096 + 100, b"canary");
        src.add(0, 0x10_0000, &mem, 4096, 4096, VDUSE_ACCESS_RW);
        let space = iotlb.space(0).unwrap();
        let mut reader = iotlb.qsbr().register();
        let g = reader.read();
        let p = space.translate(&g, 0x10_0000 + 100, 6, Access::Read).unwrap();
        // SAFETY: translate checked 6 bytes at p lie in a mapped region.
        assert_eq!(unsafe { std::slice::from_raw_parts(p, 6) }, b"canary");
        // A second lookup is a hit: no new GET_FD call.
        let calls = src.calls.load(Ordering::Relaxed);
        space.translate(&g, 0x10_0000 + 200, 8, Access::Write).unwrap();
        assert_eq!(src.calls.load(Ordering::Relaxed), calls);
    }

    #[test]
    fn ranges_spanning_adjacent_regions_are_split_and_gaps_refused() {
        let (src, iotlb, mem) = setup();
        // Two adjacent IOVA regions backed by non-adjacent file pages.
        src.add(0, 0x2000, &mem, 3 * 4096, 4096, VDUSE_ACCESS_RW);
        src.add(0, 0x3000, &mem, 0, 4096, VDUSE_ACCESS_RW);
        mem.write(3 * 4096 + 4090, b"abcdef");
        mem.write(0, b"ghij");
        let space = iotlb.space(0).unwrap();
        let mut reader = iotlb.qsbr().register();
        let g = reader.read();
        let mut got = Vec::new();
        space
            .for_each_piece(&g, 0x2000 + 4090, 10, Access::Read, |p, n| {
                // SAFETY: each piece is a validated, mapped host range of n bytes.
                got.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) })
            })
            .unwrap();
        assert_eq!(got, b"abcdefghij");
        // A contiguous-only translate of the same range is refused.
        assert!(matches!(
            space.load(&g).translate(0x2000 + 4090, 10, Access::Read),
            Err(XlateError::Discontiguous { .. })
        ));
        // A range running into unmapped space fails and visits nothing.
        let mut visited = 0;
        let e = space.for_each_piece(&g, 0x3000 + 4000, 200, Access::Read, |_, _| visited += 1);
        assert_eq!(e, Err(XlateError::Unmapped { asid: 0, iova: 0x4000 }));
        assert_eq!(visited, 0);
    }

    #[test]
    fn permissions_are_enforced() {
        let (src, iotlb, mem) = setup();
        src.add(0, 0x1000, &mem, 0, 4096, VDUSE_ACCESS_RO);
        src.add(0, 0x2000, &mem, 4096, 4096, VDUSE_ACCESS_WO);
        let space = iotlb.space(0).unwrap();
        let mut reader = iotlb.qsbr().register();
        let g = reader.read();
        assert!(space.translate(&g, 0x1000, 64, Access::Read).is_ok());
        assert_eq!(
            space.translate(&g, 0x1000, 64, Access::Write),
            Err(XlateError::Permission { asid: 0, iova: 0x1000, access: Access::Write })
        );
        assert!(space.translate(&g, 0x2000, 64, Access::Write).is_ok());
        assert!(matches!(space.translate(&g, 0x2000, 64, Access::Read), Err(XlateError::Permission { .. })));
    }

    #[test]
    fn an_iova_mapped_in_another_asid_is_unmapped_here() {
        let (src, iotlb, mem) = setup();
        src.add(1, 0x8000, &mem, 0, 4096, VDUSE_ACCESS_RW);
        let mut reader = iotlb.qsbr().register();
        let g = reader.read();
        assert!(iotlb.space(1).unwrap().translate(&g, 0x8000, 16, Access::Read).is_ok());
        assert_eq!(
            iotlb.space(0).unwrap().translate(&g, 0x8000, 16, Access::Read),
            Err(XlateError::Unmapped { asid: 0, iova: 0x8000 })
        );
        assert!(matches!(
            iotlb.space(0).unwrap().translate(&g, u64::MAX - 4, 16, Access::Read),
            Err(XlateError::Overflow { .. })
        ));
    }

    #[test]
    fn invalidate_waits_for_a_reader_and_unmaps_only_after_it_leaves() {
        let (src, iotlb, mem) = setup();
        src.add(0, 0x1000, &mem, 0, 4096, VDUSE_ACCESS_RW);
        let space = iotlb.space(0).unwrap().clone();
        let qsbr = iotlb.qsbr().clone();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let sp = space.clone();
        let reader_thread = std::thread::spawn(move || {
            let mut reader = qsbr.register();
            {
                let g = reader.read();
                let p = sp.translate(&g, 0x1000, 8, Access::Read).unwrap();
                held_tx.send(()).unwrap();
                go_rx.recv_timeout(Duration::from_secs(5)).unwrap();
                // Still inside the read-side section: the mapping must be alive.
                // SAFETY: the guard keeps the table (and its mapping) alive.
                let _ = unsafe { std::ptr::read_volatile(p) };
            }
            // Stay online without passing a quiescent state, then pass one.
            std::thread::sleep(Duration::from_millis(50));
            reader.quiescent();
            reader
        });
        held_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        src.remove_all();
        let sp2 = space.clone();
        let inval = std::thread::spawn(move || sp2.invalidate(0, u64::MAX));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(space.stats.unmaps.load(Ordering::Relaxed), 0, "unmapped while a reader held it");
        assert!(!inval.is_finished(), "invalidate returned while a reader was inside");
        go_tx.send(()).unwrap();
        let reader = reader_thread.join().unwrap();
        inval.join().unwrap().unwrap();
        assert_eq!(space.stats.unmaps.load(Ordering::Relaxed), 1);
        assert!(space.snapshot().is_empty());
        drop(reader);
    }

    /// One file region handed out whole, like a VM's RAM block through
    /// vhost-vdpa.
    struct OneRegion {
        fd: std::os::fd::OwnedFd,
        start: u64,
        last: u64,
    }

    impl RegionSource for OneRegion {
        fn region(&self, _asid: u32, iova: u64) -> Result<IotlbRegion, VduseError> {
            if iova < self.start || iova > self.last {
                return Err(VduseError::os("IOTLB_GET_FD2", Errno::EINVAL));
            }
            let fd = self.fd.try_clone().map_err(|_| VduseError::os("IOTLB_GET_FD2", Errno::EBADF))?;
            Ok(IotlbRegion { fd, offset: 0, start: self.start, last: self.last, perm: VDUSE_ACCESS_RW })
        }
    }

    /// Issue 8, fix 6: a region larger than 64 GiB used to be refused
    /// (`BadRange`), which failed every queue of a VM with that much RAM.
    /// The memfd is sparse: only the pages written here take memory.
    #[test]
    fn a_region_larger_than_64_gib_is_mapped_and_used_at_its_far_end() {
        use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
        const LEN: u64 = 80 << 30;
        const START: u64 = 1 << 32;
        let fd = memfd_create(c"iotlb-80g", MemFdCreateFlag::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, LEN as i64).unwrap();
        let far = LEN - 4096 + 100;
        assert_eq!(nix::sys::uio::pwrite(&fd, b"far end", far as i64).unwrap(), 7);
        let src = Arc::new(OneRegion { fd, start: START, last: START + LEN - 1 });
        let iotlb = Iotlb::new(1, src.clone());
        let space = iotlb.space(0).unwrap();
        let mut reader = iotlb.qsbr().register();
        let g = reader.read();
        let p = space.translate(&g, START + far, 7, Access::Read).unwrap();
        // SAFETY: translate checked that 7 bytes at p lie in a mapped region.
        assert_eq!(unsafe { std::slice::from_raw_parts(p, 7) }, b"far end");
        let w = space.translate(&g, START + 70 * (1 << 30), 5, Access::Write).unwrap();
        // SAFETY: translate checked 5 writable bytes at w.
        unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), w, 5) };
        let mut back = [0u8; 5];
        nix::sys::uio::pread(&src.fd, &mut back, 70 * (1 << 30)).unwrap();
        assert_eq!(&back, b"hello", "written through the shared mapping");
        assert_eq!(space.snapshot(), vec![(START, START + LEN - 1, VDUSE_ACCESS_RW)], "one mapping, whole");
    }

    #[test]
    fn ranges_that_cannot_be_mapped_are_refused_cleanly() {
        let mem = DmaMemory::new("iotlb-bad", 4096).unwrap();
        let region = |start: u64, last: u64, offset: u64| IotlbRegion {
            fd: mem.fd().as_fd().try_clone_to_owned().unwrap(),
            offset,
            start,
            last,
            perm: VDUSE_ACCESS_RW,
        };
        // 2^64 bytes cannot be expressed, let alone mapped.
        assert!(matches!(Mapping::map(&region(0, u64::MAX, 0)), Err(MapError::BadRange { .. })));
        assert!(matches!(Mapping::map(&region(0x2000, 0x1fff, 0)), Err(MapError::BadRange { .. })));
        // Larger than the address space: mmap says no, nothing panics.
        assert!(Mapping::map(&region(0, u64::MAX - 1, 0)).is_err());
        assert!(Mapping::map(&region(0x1000, 0x1fff, 0)).is_ok());
    }

    /// Regression (issue 8 fix 8): `clear` used to stop at the first space
    /// whose grace period timed out, leaving the other spaces' mappings in
    /// place after a reset.
    #[test]
    fn clear_empties_every_space_even_when_a_reader_is_stuck() {
        let (src, iotlb, mem) = setup();
        src.add(0, 0x1000, &mem, 0, 4096, VDUSE_ACCESS_RW);
        src.add(1, 0x1000, &mem, 4096, 4096, VDUSE_ACCESS_RW);
        let mut stuck = iotlb.qsbr().register();
        {
            let g = stuck.read();
            iotlb.space(0).unwrap().translate(&g, 0x1000, 1, Access::Read).unwrap();
            iotlb.space(1).unwrap().translate(&g, 0x1000, 1, Access::Read).unwrap();
        }
        // Online and never passing a quiescent state: every grace period times out.
        let t = std::time::Instant::now();
        assert!(iotlb.clear().is_err(), "the stuck reader makes the grace period time out");
        assert!(t.elapsed() < SYNC_TIMEOUT * 2, "one grace period for all spaces, took {:?}", t.elapsed());
        for s in iotlb.spaces() {
            assert!(s.snapshot().is_empty(), "asid {} still maps {:?}", s.asid(), s.snapshot());
            assert_eq!(s.stats.unmaps.load(Ordering::Relaxed), 0, "nothing unmapped under the reader");
        }
        stuck.offline();
        for s in iotlb.spaces() {
            s.reclaim().unwrap();
            assert_eq!(s.stats.unmaps.load(Ordering::Relaxed), 1, "freed once the reader moved on");
        }
    }

    #[test]
    fn invalidate_of_a_subrange_keeps_other_regions() {
        let (src, iotlb, mem) = setup();
        src.add(0, 0x1000, &mem, 0, 4096, VDUSE_ACCESS_RW);
        src.add(0, 0x5000, &mem, 4096, 4096, VDUSE_ACCESS_RW);
        let space = iotlb.space(0).unwrap();
        {
            let mut reader = iotlb.qsbr().register();
            let g = reader.read();
            space.translate(&g, 0x1000, 1, Access::Read).unwrap();
            space.translate(&g, 0x5000, 1, Access::Read).unwrap();
        }
        space.invalidate(0x5000, 0x5fff).unwrap();
        assert_eq!(space.snapshot(), vec![(0x1000, 0x1fff, VDUSE_ACCESS_RW)]);
    }
}
