//! One XDP socket with its own UMEM: the socket, the packet buffer area it
//! registers, and the four rings mapped from it.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;

use super::ring::{Consumer, Producer, RingPtrs, XdpDesc};

/// Sizes of one socket's rings and UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskGeometry {
    /// Entries of each ring (power of two).
    pub ring: u32,
    /// Bytes per UMEM frame (power of two, 2048 or 4096).
    pub frame: u32,
    /// Frames for RX (they circulate through the fill ring).
    pub rx_frames: u32,
    /// Frames for TX (they come back through the completion ring).
    pub tx_frames: u32,
}

impl XskGeometry {
    pub fn umem_len(&self) -> usize {
        (self.rx_frames + self.tx_frames) as usize * self.frame as usize
    }
}

/// How to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// XDP_COPY: always copy (generic XDP needs it).
    ForceCopy,
    /// XDP_ZEROCOPY: zero-copy or fail.
    ZeroCopy,
    /// Neither flag: zero-copy if the driver can, else copy.
    Auto,
}

/// Where a step failed, with the kernel's error.
#[derive(Debug)]
pub struct XskError {
    pub step: &'static str,
    pub error: io::Error,
}

fn fail(step: &'static str) -> impl FnOnce(io::Error) -> XskError {
    move |error| XskError { step, error }
}

fn last(step: &'static str) -> XskError {
    XskError { step, error: io::Error::last_os_error() }
}

/// An anonymous mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; who may touch
// it when is up to the owner (one poll thread and the kernel).
unsafe impl Send for Mapping {}

impl Mapping {
    fn map(len: usize, fd: Option<(RawFd, i64)>) -> io::Result<Mapping> {
        let (flags, fd, off) = match fd {
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0),
            Some((fd, off)) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd, off),
        };
        // SAFETY: a fresh mapping at an address the kernel picks; nothing
        // else refers to that range yet.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, off) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: NonNull::new(p as *mut u8).expect("mmap returned null"), len })
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and no reference
        // into the range outlives its owner.
        unsafe { libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len) };
    }
}

/// An XDP socket bound to one queue, with its UMEM and rings.
///
/// Field order is drop order: ring mappings, then the socket (which
/// unbinds and unregisters the UMEM), then the UMEM memory.
pub struct Xsk {
    pub fill: Producer<u64>,
    pub comp: Consumer<u64>,
    pub rx: Consumer<XdpDesc>,
    pub tx: Producer<XdpDesc>,
    _maps: [Mapping; 4],
    fd: OwnedFd,
    pub umem: Mapping,
    pub geometry: XskGeometry,
    pub zero_copy: bool,
}

fn setsockopt<T>(fd: &OwnedFd, opt: i32, v: &T, step: &'static str) -> Result<(), XskError> {
    // SAFETY: v is a live T of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            v as *const T as *const libc::c_void,
            size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(last(step));
    }
    Ok(())
}

fn getsockopt<T: Default>(fd: &OwnedFd, opt: i32, step: &'static str) -> Result<T, XskError> {
    let mut v = T::default();
    let mut len = size_of::<T>() as u32;
    // SAFETY: v is a live T; the kernel writes at most len bytes.
    let r = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_XDP, opt, &mut v as *mut T as *mut libc::c_void, &mut len)
    };
    if r < 0 {
        return Err(last(step));
    }
    Ok(v)
}

#[repr(C)]
#[derive(Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
#[derive(Default)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

/// Map one ring of `entries` entries of `entry` bytes at `pgoff`.
fn map_ring(fd: &OwnedFd, off: &RingOffset, entries: u32, entry: usize, pgoff: i64) -> io::Result<(Mapping, RingPtrs)> {
    let len = off.desc as usize + entries as usize * entry;
    let m = Mapping::map(len, Some((fd.as_raw_fd(), pgoff)))?;
    let at = |o: u64| {
        assert!((o as usize) < len, "ring offset {o} outside a {len}-byte mapping");
        // SAFETY: o is inside the mapping (checked above).
        unsafe { m.as_ptr().add(o as usize) }
    };
    let ptrs = RingPtrs {
        producer: NonNull::new(at(off.producer) as *mut AtomicU32).expect("non-null"),
        consumer: NonNull::new(at(off.consumer) as *mut AtomicU32).expect("non-null"),
        flags: NonNull::new(at(off.flags) as *mut AtomicU32).expect("non-null"),
        descs: NonNull::new(at(off.desc)).expect("non-null"),
        size: entries,
    };
    Ok((m, ptrs))
}

#[repr(C)]
#[derive(Default)]
struct XdpOptions {
    flags: u32,
}

/// `struct xdp_statistics`: frames the kernel dropped for this socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for reasons other than a full ring (e.g. too long).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Dropped because our RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was found empty.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// How long bind() retries EBUSY (see `Xsk::open`).
const BIND_BUSY_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

const XDP_PGOFF_RX_RING: i64 = 0;
const XDP_PGOFF_TX_RING: i64 = 0x8000_0000;
const XDP_UMEM_PGOFF_FILL_RING: i64 = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: i64 = 0x1_8000_0000;
const XDP_OPTIONS_ZEROCOPY: u32 = 1;

impl Xsk {
    /// Create a socket with a fresh UMEM, bind it to `ifindex`/`queue`.
    /// Nothing is redirected to it until its fd is put in an XSKMAP.
    pub fn open(ifindex: u32, queue: u32, g: XskGeometry, mode: BindMode) -> Result<Xsk, XskError> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(last("socket(AF_XDP)"));
        }
        // SAFETY: fd is fresh and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let umem = Mapping::map(g.umem_len(), None).map_err(fail("mmap UMEM"))?;
        let reg =
            UmemReg { addr: umem.as_ptr() as u64, len: umem.len() as u64, chunk_size: g.frame, ..Default::default() };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg, "XDP_UMEM_REG")?;
        let n = g.ring as i32;
        setsockopt(&fd, libc::XDP_UMEM_FILL_RING, &n, "XDP_UMEM_FILL_RING")?;
        setsockopt(&fd, libc::XDP_UMEM_COMPLETION_RING, &n, "XDP_UMEM_COMPLETION_RING")?;
        setsockopt(&fd, libc::XDP_RX_RING, &n, "XDP_RX_RING")?;
        setsockopt(&fd, libc::XDP_TX_RING, &n, "XDP_TX_RING")?;
        let off: MmapOffsets = getsockopt(&fd, libc::XDP_MMAP_OFFSETS, "XDP_MMAP_OFFSETS")?;
        let d = size_of::<XdpDesc>();
        let (fm, fp) = map_ring(&fd, &off.fr, g.ring, 8, XDP_UMEM_PGOFF_FILL_RING).map_err(fail("mmap fill ring"))?;
        let (cm, cp) =
            map_ring(&fd, &off.cr, g.ring, 8, XDP_UMEM_PGOFF_COMPLETION_RING).map_err(fail("mmap completion ring"))?;
        let (rm, rp) = map_ring(&fd, &off.rx, g.ring, d, XDP_PGOFF_RX_RING).map_err(fail("mmap RX ring"))?;
        let (tm, tp) = map_ring(&fd, &off.tx, g.ring, d, XDP_PGOFF_TX_RING).map_err(fail("mmap TX ring"))?;
        // SAFETY: each RingPtrs points into its mapping, which lives in
        // `_maps` as long as the ring ends (same struct, dropped after them);
        // this socket is the only user-space party on these rings.
        let (fill, comp, rx, tx) =
            unsafe { (Producer::new(fp), Consumer::new(cp), Consumer::new(rp), Producer::new(tp)) };
        let mut xsk = Xsk { fill, comp, rx, tx, _maps: [fm, cm, rm, tm], fd, umem, geometry: g, zero_copy: false };
        // Every RX frame starts in the fill ring (before bind, so the
        // kernel has buffers from the first frame on).
        debug_assert!(g.rx_frames <= g.ring);
        for i in 0..g.rx_frames {
            xsk.fill.push(i as u64 * g.frame as u64);
        }
        xsk.fill.submit();
        let flags = libc::XDP_USE_NEED_WAKEUP
            | match mode {
                BindMode::ForceCopy => libc::XDP_COPY,
                BindMode::ZeroCopy => libc::XDP_ZEROCOPY,
                BindMode::Auto => 0,
            };
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // A socket closed a moment ago releases its queue from a kernel work
        // item, so EBUSY right after a restart is retried for a while; a
        // queue held by a live socket stays busy and fails after that.
        let deadline = std::time::Instant::now() + BIND_BUSY_WAIT;
        loop {
            // SAFETY: sa is a valid sockaddr_xdp of the size given.
            let r = unsafe {
                libc::bind(
                    xsk.fd.as_raw_fd(),
                    &sa as *const libc::sockaddr_xdp as *const libc::sockaddr,
                    size_of::<libc::sockaddr_xdp>() as u32,
                )
            };
            if r == 0 {
                break;
            }
            let e = last("bind");
            if e.error.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() > deadline {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let opts: XdpOptions = getsockopt(&xsk.fd, libc::XDP_OPTIONS, "XDP_OPTIONS")?;
        xsk.zero_copy = opts.flags & XDP_OPTIONS_ZEROCOPY != 0;
        Ok(xsk)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn owned_fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Kick TX (copy mode sends here, up to the socket's TX budget; zero-
    /// copy asks the driver to run).
    #[inline]
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length, non-blocking sendto on our socket.
        let r =
            unsafe { libc::sendto(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Kick RX (the driver wants to be told the fill ring has buffers).
    #[inline]
    pub fn kick_rx(&self) -> io::Result<()> {
        // SAFETY: a zero-length, non-blocking recvfrom on our socket.
        let r = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The socket's pending error (SO_ERROR), cleared by reading it; the
    /// kernel sets ENETDOWN when the interface is unregistered.
    pub fn take_error(&self) -> Option<io::Error> {
        let mut e: i32 = 0;
        let mut len = size_of::<i32>() as u32;
        // SAFETY: e is a live i32 of the size given.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut e as *mut i32 as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            Some(io::Error::last_os_error())
        } else if e != 0 {
            Some(io::Error::from_raw_os_error(e))
        } else {
            None
        }
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> Option<XdpStatistics> {
        getsockopt(&self.fd, libc::XDP_STATISTICS, "XDP_STATISTICS").ok()
    }
}
