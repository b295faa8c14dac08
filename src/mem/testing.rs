//! Test support: address spaces backed by memfds, with regions the test
//! adds and removes, as `IOTLB_GET_FD2` hands them out. Test builds only.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::iotlb::RegionSource;
use crate::driver::DmaMemory;
use crate::vduse::{IotlbRegion, VduseError};

type Hook = Box<dyn Fn(u32, u64) + Send + Sync>;

/// Regions per ASID: (asid, start, last, perm, memory, offset in memory).
#[derive(Default)]
pub(crate) struct MemfdSource {
    regions: Mutex<Vec<(u32, u64, u64, u8, Arc<DmaMemory>, u64)>>,
    /// Called on every lookup before it is answered (tests that race a
    /// change against a miss).
    hook: Mutex<Option<Arc<Hook>>>,
    pub calls: AtomicU64,
}

impl MemfdSource {
    pub fn add(&self, asid: u32, start: u64, mem: &Arc<DmaMemory>, offset: u64, len: u64, perm: u8) {
        self.regions.lock().unwrap().push((asid, start, start + len - 1, perm, mem.clone(), offset));
    }

    /// Forget every region overlapping `[start, last]` of `asid`.
    pub fn remove(&self, asid: u32, start: u64, last: u64) {
        self.regions.lock().unwrap().retain(|(a, s, l, ..)| !(*a == asid && *s <= last && start <= *l));
    }

    pub fn set_hook(&self, f: impl Fn(u32, u64) + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Some(Arc::new(Box::new(f)));
    }

    pub fn clear_hook(&self) {
        *self.hook.lock().unwrap() = None;
    }
}

impl RegionSource for MemfdSource {
    fn region(&self, asid: u32, iova: u64) -> Result<IotlbRegion, VduseError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let hook = self.hook.lock().unwrap().clone();
        if let Some(h) = hook {
            h(asid, iova);
        }
        let r = self.regions.lock().unwrap();
        let (_, start, last, perm, mem, offset) = r
            .iter()
            .find(|(a, s, l, ..)| *a == asid && *s <= iova && iova <= *l)
            .ok_or(VduseError::os("IOTLB_GET_FD2", nix::errno::Errno::EINVAL))?;
        Ok(IotlbRegion {
            fd: mem.fd().as_fd().try_clone_to_owned().expect("dup memfd"),
            offset: *offset,
            start: *start,
            last: *last,
            perm: *perm,
        })
    }
}
