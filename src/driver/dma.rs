//! Driver-owned memory that a device can be given: a memfd, mapped shared
//! into this process. The embedded model hands the memfd to the device
//! (GET_FD2); vhost-vdpa is given its user address and pins the pages.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("memfd_create/ftruncate failed: {0}")]
    Create(nix::errno::Errno),
    #[error("mmap of {len} bytes failed: {source}")]
    Map { len: usize, source: std::io::Error },
}

/// A shared, page-aligned block of driver memory backed by a memfd.
pub struct DmaMemory {
    fd: OwnedFd,
    map: MmapRaw,
    len: usize,
}

impl DmaMemory {
    /// `len` is rounded up to whole pages.
    pub fn new(name: &str, len: usize) -> Result<Self, DmaError> {
        let len = len.max(1).next_multiple_of(4096);
        let cname = std::ffi::CString::new(name).unwrap_or_else(|_| c"vduse-net-dma".to_owned());
        let fd = memfd_create(&cname, MemFdCreateFlag::MFD_CLOEXEC).map_err(DmaError::Create)?;
        nix::unistd::ftruncate(&fd, len as i64).map_err(DmaError::Create)?;
        let map = MmapOptions::new().len(len).map_raw(&fd).map_err(|source| DmaError::Map { len, source })?;
        Ok(DmaMemory { fd, map, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Host address of byte 0 (what vhost-vdpa calls `uaddr`).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Copy bytes out, bounds-checked.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset.checked_add(out.len()).is_some_and(|end| end <= self.len), "DmaMemory read out of range");
        // SAFETY: the range was just checked to lie inside the mapping, which
        // lives as long as self. The peer may write concurrently; bytes are
        // plain data, so a torn read is a wrong value, not UB for u8 copies.
        unsafe { std::ptr::copy_nonoverlapping(self.as_ptr().add(offset), out.as_mut_ptr(), out.len()) }
    }

    /// Copy bytes in, bounds-checked.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset.checked_add(data.len()).is_some_and(|end| end <= self.len), "DmaMemory write out of range");
        // SAFETY: as in `read`; the range lies inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(offset), data.len()) }
    }
}

// SAFETY: the mapping is plain shared memory with no thread affinity; all
// access goes through raw pointers whose users state their own invariants.
unsafe impl Send for DmaMemory {}
// SAFETY: as above; `&DmaMemory` only hands out raw pointers and copies.
unsafe impl Sync for DmaMemory {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_shared_through_the_fd() {
        let m = DmaMemory::new("t", 100).unwrap();
        assert_eq!(m.len(), 4096);
        m.write(10, b"hello");
        let other = MmapOptions::new().len(4096).map_raw(&m.fd).unwrap();
        // SAFETY: the second mapping is 4096 bytes long; 10..15 is inside.
        let seen = unsafe { std::slice::from_raw_parts(other.as_ptr().add(10), 5) };
        assert_eq!(seen, b"hello");
    }
}
