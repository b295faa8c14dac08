//! `/dev/vhost-vdpa-N` as a [`super::DriverTransport`].
//!
//! What the kernel does on its side (drivers/vhost/vdpa.c, drivers/vhost/vhost.c):
//! - open is exclusive (EBUSY) and resets the device (SET_STATUS 0 to a VDUSE
//!   daemon; if that fails, open fails). Closing resets it again.
//! - `VHOST_SET_OWNER` must come first: the vring ioctls (NUM, ADDR, BASE,
//!   KICK, CALL, ENABLE, GROUP, GROUP_ASID) and IOTLB writes give EPERM
//!   without an owner. The vhost-vdpa ioctls (features, status, config,
//!   counts, suspend/resume, backend features) do not need one.
//! - Features go first, then backend features, in QEMU's order (QEMU sets
//!   them right after `VHOST_SET_FEATURES`). The kernel accepts either
//!   order, but without `IOTLB_ASID` negotiated it silently reads every v2
//!   IOTLB message as asid 0, so [`VhostVdpa`] negotiates the backend
//!   features it knows right after `set_features` unless the caller already
//!   chose them, and refuses a non-zero asid while `IOTLB_ASID` is off.
//! - A VDUSE reset (status 0) drops the vq call callbacks and the config
//!   callback the driver set, so [`VhostVdpa`] sets them again after every
//!   reset. Kick eventfds stay bound (vhost polls them itself).
//! - `VHOST_VDPA_SET_STATUS` returns 0 even when the device refused a bit:
//!   read the status back. Clearing bits without writing 0 is EINVAL.
//! - `VHOST_GET_VRING_BASE` asks the device (VDUSE sends GET_VQ_STATE) and
//!   returns its split avail index; for packed rings the low 16 bits are the
//!   avail slot with its wrap counter in bit 15 and the high 16 bits the used
//!   slot and counter (vhost.c since 6.5; vdpa.c folds GET_VQ_STATE's four
//!   packed fields so). `VHOST_SET_VRING_BASE` takes the same encoding; for
//!   split rings a base above 0xffff is EINVAL.
//! - IOTLB updates are `vhost_msg_v2` writes on the fd; every handler error
//!   comes back as EFAULT. Only shared, file-backed memory (a memfd) is
//!   mapped: anonymous memory is skipped without an error.
//! - `VHOST_VDPA_RESUME` is EOPNOTSUPP for VDUSE once DRIVER_OK is set.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::dma::DmaMemory;
use super::transport::{DriverTransport, Result, TransportError};
use crate::uapi::vhost_vdpa::*;
use crate::vduse::kernel::{not_chrdev_of, VarArg};

/// Backend features used when the device offers them.
pub const WANTED_BACKEND_FEATURES: u64 = (1 << VHOST_BACKEND_F_IOTLB_MSG_V2)
    | (1 << VHOST_BACKEND_F_IOTLB_BATCH)
    | (1 << VHOST_BACKEND_F_IOTLB_ASID)
    | (1 << VHOST_BACKEND_F_SUSPEND)
    | (1 << VHOST_BACKEND_F_RESUME);

/// More queues than any virtio device can have means a confused answer.
const MAX_VQS: u32 = 0x1_0000;

mod ioctl {
    use crate::uapi::vhost_vdpa::*;

    nix::ioctl_none_bad!(set_owner, VHOST_SET_OWNER);
    nix::ioctl_read_bad!(get_features, VHOST_GET_FEATURES, u64);
    nix::ioctl_write_ptr_bad!(set_features, VHOST_SET_FEATURES, u64);
    nix::ioctl_read_bad!(get_backend_features, VHOST_GET_BACKEND_FEATURES, u64);
    nix::ioctl_write_ptr_bad!(set_backend_features, VHOST_SET_BACKEND_FEATURES, u64);
    nix::ioctl_read_bad!(get_device_id, VHOST_VDPA_GET_DEVICE_ID, u32);
    nix::ioctl_read_bad!(get_status, VHOST_VDPA_GET_STATUS, u8);
    nix::ioctl_write_ptr_bad!(set_status, VHOST_VDPA_SET_STATUS, u8);
    // Variable length: `vhost_vdpa_config` in, then `len` bytes out behind it.
    nix::ioctl_read_bad!(get_config, VHOST_VDPA_GET_CONFIG, u8);
    nix::ioctl_read_bad!(get_vqs_count, VHOST_VDPA_GET_VQS_COUNT, u32);
    nix::ioctl_read_bad!(get_vring_num, VHOST_VDPA_GET_VRING_NUM, u16);
    nix::ioctl_write_ptr_bad!(set_vring_num, VHOST_SET_VRING_NUM, vhost_vring_state);
    nix::ioctl_write_ptr_bad!(set_vring_addr, VHOST_SET_VRING_ADDR, vhost_vring_addr);
    nix::ioctl_write_ptr_bad!(set_vring_base, VHOST_SET_VRING_BASE, vhost_vring_state);
    nix::ioctl_readwrite_bad!(get_vring_base, VHOST_GET_VRING_BASE, vhost_vring_state);
    nix::ioctl_write_ptr_bad!(set_vring_kick, VHOST_SET_VRING_KICK, vhost_vring_file);
    nix::ioctl_write_ptr_bad!(set_vring_call, VHOST_SET_VRING_CALL, vhost_vring_file);
    nix::ioctl_write_ptr_bad!(set_vring_enable, VHOST_VDPA_SET_VRING_ENABLE, vhost_vring_state);
    nix::ioctl_write_ptr_bad!(set_config_call, VHOST_VDPA_SET_CONFIG_CALL, i32);
    nix::ioctl_read_bad!(get_group_num, VHOST_VDPA_GET_GROUP_NUM, u32);
    nix::ioctl_read_bad!(get_as_num, VHOST_VDPA_GET_AS_NUM, u32);
    nix::ioctl_readwrite_bad!(get_vring_group, VHOST_VDPA_GET_VRING_GROUP, vhost_vring_state);
    nix::ioctl_write_ptr_bad!(set_group_asid, VHOST_VDPA_SET_GROUP_ASID, vhost_vring_state);
    nix::ioctl_none_bad!(suspend, VHOST_VDPA_SUSPEND);
    nix::ioctl_none_bad!(resume, VHOST_VDPA_RESUME);
}

/// The `VHOST_VDPA_GET_CONFIG` argument: `vhost_vdpa_config {off, len}`
/// followed by `len` zeroed bytes for the kernel to fill.
pub(crate) fn get_config_arg(off: u32, len: usize) -> Result<VarArg> {
    let len32 = u32::try_from(len).map_err(|_| TransportError::os("VHOST_VDPA_GET_CONFIG", Errno::EINVAL))?;
    let fixed = std::mem::size_of::<vhost_vdpa_config>();
    let mut arg = VarArg::zeroed(fixed + len);
    arg.put(std::mem::offset_of!(vhost_vdpa_config, off), &off.to_ne_bytes());
    arg.put(std::mem::offset_of!(vhost_vdpa_config, len), &len32.to_ne_bytes());
    Ok(arg)
}

/// The bytes of one `vhost_msg_v2` IOTLB message, written field by field so
/// that the struct's padding is zero rather than whatever was there.
pub(crate) fn iotlb_msg_bytes(asid: u32, kind: u8, iova: u64, size: u64, uaddr: u64, perm: u8) -> [u8; 72] {
    use std::mem::offset_of;
    let mut b = [0u8; std::mem::size_of::<vhost_msg_v2>()];
    let mut put = |off: usize, data: &[u8]| b[off..off + data.len()].copy_from_slice(data);
    let m = offset_of!(vhost_msg_v2, iotlb);
    put(offset_of!(vhost_msg_v2, r#type), &VHOST_IOTLB_MSG_V2.to_ne_bytes());
    put(offset_of!(vhost_msg_v2, asid), &asid.to_ne_bytes());
    put(m + offset_of!(vhost_iotlb_msg, iova), &iova.to_ne_bytes());
    put(m + offset_of!(vhost_iotlb_msg, size), &size.to_ne_bytes());
    put(m + offset_of!(vhost_iotlb_msg, uaddr), &uaddr.to_ne_bytes());
    put(m + offset_of!(vhost_iotlb_msg, perm), &[perm]);
    put(m + offset_of!(vhost_iotlb_msg, r#type), &[kind]);
    b
}

/// `vhost_vring_addr` for the trait's (desc, avail, used) order; the struct
/// has used before avail.
pub(crate) fn vring_addr(vq: u32, desc: u64, avail: u64, used: u64) -> vhost_vring_addr {
    vhost_vring_addr {
        index: vq,
        flags: 0,
        desc_user_addr: desc,
        used_user_addr: used,
        avail_user_addr: avail,
        log_guest_addr: 0,
    }
}

/// The poll(2) timeout for what is left of a wait, rounded up to whole
/// milliseconds so that a short wait does not become a busy loop.
fn poll_timeout(left: Duration) -> PollTimeout {
    let ms = left.as_nanos().div_ceil(1_000_000);
    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
}

/// Wait up to `timeout` for `ev` to be signalled and consume the count.
fn wait_eventfd(ev: &EventFd, timeout: Duration, op: &'static str) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [PollFd::new(ev.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(left)) {
            Ok(0) => return Ok(false),
            Ok(_) => match ev.read() {
                Ok(_) => return Ok(true),
                // Someone else consumed it between poll and read.
                Err(Errno::EAGAIN) if !left.is_zero() => continue,
                Err(Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(TransportError::os(op, e)),
            },
            Err(Errno::EINTR) if !left.is_zero() => continue,
            Err(Errno::EINTR) => return Ok(false),
            Err(e) => return Err(TransportError::os(op, e)),
        }
    }
}

fn new_eventfd() -> nix::Result<EventFd> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
}

/// One vDPA device through `/dev/vhost-vdpa-N`.
pub struct VhostVdpa {
    fd: OwnedFd,
    path: String,
    nvqs: u32,
    kick: Vec<EventFd>,
    call: Vec<EventFd>,
    config_call: EventFd,
    /// Backend features set on the fd (vhost keeps them across resets).
    acked_backend: AtomicU64,
    /// Whether backend features were chosen (by the caller or by us).
    backend_chosen: AtomicBool,
}

impl VhostVdpa {
    /// Open `path`, take ownership, and bind one kick and one call eventfd
    /// per vq and a config call eventfd.
    pub fn open(path: &str) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| TransportError::Open {
            path: path.to_owned(),
            errno: e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO),
        })?;
        if let Some(why) = not_chrdev_of(&file, "vhost-vdpa") {
            return Err(TransportError::Other(format!("{path} is not a vhost-vdpa device: {why}")));
        }
        let fd: OwnedFd = file.into();

        // SAFETY: the fd is open and the request takes no argument.
        unsafe { ioctl::set_owner(fd.as_raw_fd()) }.map_err(|e| TransportError::os("VHOST_SET_OWNER", e))?;

        let mut nvqs = 0u32;
        // SAFETY: the fd is open; `nvqs` is a live u32, the size the request encodes.
        unsafe { ioctl::get_vqs_count(fd.as_raw_fd(), &mut nvqs) }
            .map_err(|e| TransportError::os("VHOST_VDPA_GET_VQS_COUNT", e))?;
        if nvqs > MAX_VQS {
            return Err(TransportError::Other(format!("{path}: the kernel reports {nvqs} vqs")));
        }

        let mut kick = Vec::with_capacity(nvqs as usize);
        let mut call = Vec::with_capacity(nvqs as usize);
        for vq in 0..nvqs {
            let k = new_eventfd().map_err(|e| TransportError::os("eventfd", e))?;
            let f = vhost_vring_file { index: vq, fd: k.as_raw_fd() };
            // SAFETY: the fd is open; `f` is a live vhost_vring_file naming an
            // eventfd we own, which vhost takes its own reference to.
            unsafe { ioctl::set_vring_kick(fd.as_raw_fd(), &f) }
                .map_err(|e| TransportError::os("VHOST_SET_VRING_KICK", e))?;
            kick.push(k);
            call.push(new_eventfd().map_err(|e| TransportError::os("eventfd", e))?);
        }
        let config_call = new_eventfd().map_err(|e| TransportError::os("eventfd", e))?;
        let dev = VhostVdpa {
            fd,
            path: path.to_owned(),
            nvqs,
            kick,
            call,
            config_call,
            acked_backend: AtomicU64::new(0),
            backend_chosen: AtomicBool::new(false),
        };
        dev.bind_interrupts()?;
        log::debug!("opened {path}: {nvqs} vqs");
        Ok(dev)
    }

    /// The path this transport was opened on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The backend features set on the fd so far.
    pub fn acked_backend_features(&self) -> u64 {
        self.acked_backend.load(Ordering::Relaxed)
    }

    /// Set the offered subset of [`WANTED_BACKEND_FEATURES`]; returns it.
    pub fn negotiate_backend_features(&self) -> Result<u64> {
        let chosen = self.backend_features()? & WANTED_BACKEND_FEATURES;
        self.set_backend_features(chosen)?;
        log::debug!("{}: backend features {chosen:#x}", self.path);
        Ok(chosen)
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// (Re)bind the call eventfds; a VDUSE reset forgets them.
    fn bind_interrupts(&self) -> Result<()> {
        for (vq, ev) in self.call.iter().enumerate() {
            let f = vhost_vring_file { index: vq as u32, fd: ev.as_raw_fd() };
            // SAFETY: the fd is open; `f` names an eventfd we own for as long
            // as self, and vhost takes its own reference.
            unsafe { ioctl::set_vring_call(self.raw(), &f) }
                .map_err(|e| TransportError::os("VHOST_SET_VRING_CALL", e))?;
        }
        let cfd: i32 = self.config_call.as_raw_fd();
        // SAFETY: the fd is open; `cfd` is a live i32 naming our eventfd.
        unsafe { ioctl::set_config_call(self.raw(), &cfd) }
            .map_err(|e| TransportError::os("VHOST_VDPA_SET_CONFIG_CALL", e))?;
        Ok(())
    }

    fn check_vq(&self, vq: u32, op: &'static str) -> Result<usize> {
        // The kernel's answer to an out-of-range vq on the vring ioctls.
        if vq >= self.nvqs {
            return Err(TransportError::os(op, Errno::ENOBUFS));
        }
        Ok(vq as usize)
    }

    fn vring_state_set(
        &self,
        op: &'static str,
        f: unsafe fn(i32, *const vhost_vring_state) -> nix::Result<i32>,
        index: u32,
        num: u32,
    ) -> Result<()> {
        let s = vhost_vring_state { index, num };
        // SAFETY: the fd is open; `f` is one of the ioctl wrappers above whose
        // request takes a vhost_vring_state, and `s` is live and only read.
        unsafe { f(self.raw(), &s) }.map_err(|e| TransportError::os(op, e))?;
        Ok(())
    }

    fn vring_state_get(
        &self,
        op: &'static str,
        f: unsafe fn(i32, *mut vhost_vring_state) -> nix::Result<i32>,
        index: u32,
    ) -> Result<u32> {
        let mut s = vhost_vring_state { index, num: 0 };
        // SAFETY: the fd is open; `f` is one of the read-write wrappers above
        // whose request takes a vhost_vring_state, and `s` is live.
        unsafe { f(self.raw(), &mut s) }.map_err(|e| TransportError::os(op, e))?;
        Ok(s.num)
    }

    fn write_iotlb(&self, op: &'static str, msg: &[u8; 72]) -> Result<()> {
        match nix::unistd::write(&self.fd, msg) {
            Ok(n) if n == msg.len() => Ok(()),
            Ok(n) => Err(TransportError::Other(format!("{op}: short write ({n} of {} bytes)", msg.len()))),
            Err(e) => Err(TransportError::os(op, e)),
        }
    }

    fn check_asid(&self, asid: u32, op: &'static str) -> Result<()> {
        // Without IOTLB_ASID the kernel would apply the message to asid 0.
        if asid != 0 && self.acked_backend_features() & (1 << VHOST_BACKEND_F_IOTLB_ASID) == 0 {
            log::error!("{}: {op} for asid {asid} needs VHOST_BACKEND_F_IOTLB_ASID negotiated", self.path);
            return Err(TransportError::os(op, Errno::EINVAL));
        }
        Ok(())
    }
}

impl DriverTransport for VhostVdpa {
    fn device_id(&self) -> Result<u32> {
        let mut id = 0u32;
        // SAFETY: the fd is open; `id` is a live u32, the size the request encodes.
        unsafe { ioctl::get_device_id(self.raw(), &mut id) }
            .map_err(|e| TransportError::os("VHOST_VDPA_GET_DEVICE_ID", e))?;
        Ok(id)
    }

    fn device_features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: the fd is open; `f` is a live u64, the size the request encodes.
        unsafe { ioctl::get_features(self.raw(), &mut f) }.map_err(|e| TransportError::os("VHOST_GET_FEATURES", e))?;
        Ok(f)
    }

    fn set_features(&self, features: u64) -> Result<()> {
        // SAFETY: the fd is open; `features` is a live u64 the kernel only reads.
        unsafe { ioctl::set_features(self.raw(), &features) }
            .map_err(|e| TransportError::os("VHOST_SET_FEATURES", e))?;
        if !self.backend_chosen.load(Ordering::Relaxed) {
            self.negotiate_backend_features()?;
        }
        Ok(())
    }

    fn backend_features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: the fd is open; `f` is a live u64, the size the request encodes.
        unsafe { ioctl::get_backend_features(self.raw(), &mut f) }
            .map_err(|e| TransportError::os("VHOST_GET_BACKEND_FEATURES", e))?;
        Ok(f)
    }

    fn set_backend_features(&self, features: u64) -> Result<()> {
        // SAFETY: the fd is open; `features` is a live u64 the kernel only reads.
        unsafe { ioctl::set_backend_features(self.raw(), &features) }
            .map_err(|e| TransportError::os("VHOST_SET_BACKEND_FEATURES", e))?;
        self.acked_backend.store(features, Ordering::Relaxed);
        self.backend_chosen.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn status(&self) -> Result<u8> {
        let mut s = 0u8;
        // SAFETY: the fd is open; `s` is a live u8, the size the request encodes.
        unsafe { ioctl::get_status(self.raw(), &mut s) }.map_err(|e| TransportError::os("VHOST_VDPA_GET_STATUS", e))?;
        Ok(s)
    }

    fn set_status(&self, status: u8) -> Result<()> {
        // SAFETY: the fd is open; `status` is a live u8 the kernel only reads.
        unsafe { ioctl::set_status(self.raw(), &status) }
            .map_err(|e| TransportError::os("VHOST_VDPA_SET_STATUS", e))?;
        if status == 0 {
            self.bind_interrupts()?;
        }
        Ok(())
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()> {
        let mut arg = get_config_arg(offset, buf.len())?;
        // SAFETY: the fd is open; `arg` is an aligned buffer of the
        // vhost_vdpa_config header plus exactly `len` bytes, and the kernel
        // writes at most `len` bytes behind the header.
        unsafe { ioctl::get_config(self.raw(), arg.as_mut_ptr()) }
            .map_err(|e| TransportError::os("VHOST_VDPA_GET_CONFIG", e))?;
        let fixed = std::mem::size_of::<vhost_vdpa_config>();
        buf.copy_from_slice(&arg.bytes()[fixed..fixed + buf.len()]);
        Ok(())
    }

    fn vq_count(&self) -> Result<u32> {
        // Fixed for the life of the vhost-vdpa device.
        Ok(self.nvqs)
    }

    fn max_vring_num(&self) -> Result<u16> {
        let mut n = 0u16;
        // SAFETY: the fd is open; `n` is a live u16, the size the request encodes.
        unsafe { ioctl::get_vring_num(self.raw(), &mut n) }
            .map_err(|e| TransportError::os("VHOST_VDPA_GET_VRING_NUM", e))?;
        Ok(n)
    }

    fn set_vring_num(&self, vq: u32, num: u16) -> Result<()> {
        self.vring_state_set("VHOST_SET_VRING_NUM", ioctl::set_vring_num, vq, num.into())
    }

    fn set_vring_addr(&self, vq: u32, desc: u64, avail: u64, used: u64) -> Result<()> {
        let a = vring_addr(vq, desc, avail, used);
        // SAFETY: the fd is open; `a` is a live vhost_vring_addr, the size the
        // request encodes, only read by the kernel.
        unsafe { ioctl::set_vring_addr(self.raw(), &a) }.map_err(|e| TransportError::os("VHOST_SET_VRING_ADDR", e))?;
        Ok(())
    }

    fn set_vring_base(&self, vq: u32, base: u32) -> Result<()> {
        self.vring_state_set("VHOST_SET_VRING_BASE", ioctl::set_vring_base, vq, base)
    }

    fn vring_base(&self, vq: u32) -> Result<u32> {
        // Split: the avail index. Packed: avail slot | wrap << 15, and the
        // used half in the upper 16 bits.
        self.vring_state_get("VHOST_GET_VRING_BASE", ioctl::get_vring_base, vq)
    }

    fn set_vring_enable(&self, vq: u32, enable: bool) -> Result<()> {
        self.vring_state_set("VHOST_VDPA_SET_VRING_ENABLE", ioctl::set_vring_enable, vq, enable.into())
    }

    fn group_num(&self) -> Result<u32> {
        let mut n = 0u32;
        // SAFETY: the fd is open; `n` is a live u32, the size the request encodes.
        unsafe { ioctl::get_group_num(self.raw(), &mut n) }
            .map_err(|e| TransportError::os("VHOST_VDPA_GET_GROUP_NUM", e))?;
        Ok(n)
    }

    fn as_num(&self) -> Result<u32> {
        let mut n = 0u32;
        // SAFETY: the fd is open; `n` is a live u32, the size the request encodes.
        unsafe { ioctl::get_as_num(self.raw(), &mut n) }.map_err(|e| TransportError::os("VHOST_VDPA_GET_AS_NUM", e))?;
        Ok(n)
    }

    fn vring_group(&self, vq: u32) -> Result<u32> {
        self.vring_state_get("VHOST_VDPA_GET_VRING_GROUP", ioctl::get_vring_group, vq)
    }

    fn set_group_asid(&self, group: u32, asid: u32) -> Result<()> {
        self.vring_state_set("VHOST_VDPA_SET_GROUP_ASID", ioctl::set_group_asid, group, asid)
    }

    fn iotlb_map(&self, asid: u32, iova: u64, mem: &DmaMemory, offset: usize, len: usize, perm: u8) -> Result<()> {
        const OP: &str = "IOTLB update";
        self.check_asid(asid, OP)?;
        if len == 0 || offset.checked_add(len).map_or(true, |end| end > mem.len()) {
            return Err(TransportError::os(OP, Errno::EINVAL));
        }
        // vhost-vdpa takes the process address and pins the pages behind it.
        let uaddr = mem.as_ptr() as u64 + offset as u64;
        let msg = iotlb_msg_bytes(asid, VHOST_IOTLB_UPDATE, iova, len as u64, uaddr, perm);
        self.write_iotlb(OP, &msg)
    }

    fn iotlb_unmap(&self, asid: u32, iova: u64, len: u64) -> Result<()> {
        const OP: &str = "IOTLB invalidate";
        self.check_asid(asid, OP)?;
        let msg = iotlb_msg_bytes(asid, VHOST_IOTLB_INVALIDATE, iova, len, 0, 0);
        self.write_iotlb(OP, &msg)
    }

    fn suspend(&self) -> Result<()> {
        // SAFETY: the fd is open and the request takes no argument.
        unsafe { ioctl::suspend(self.raw()) }.map_err(|e| TransportError::os("VHOST_VDPA_SUSPEND", e))?;
        Ok(())
    }

    fn resume(&self) -> Result<()> {
        // SAFETY: the fd is open and the request takes no argument.
        unsafe { ioctl::resume(self.raw()) }.map_err(|e| TransportError::os("VHOST_VDPA_RESUME", e))?;
        Ok(())
    }

    fn kick(&self, vq: u32) -> Result<()> {
        let i = self.check_vq(vq, "kick")?;
        match self.kick[i].write(1) {
            // EAGAIN: the counter is saturated, so a kick is already pending.
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(TransportError::os("kick", e)),
        }
    }

    fn call_fd(&self, vq: u32) -> Result<BorrowedFd<'_>> {
        let i = self.check_vq(vq, "call_fd")?;
        Ok(self.call[i].as_fd())
    }

    fn wait_interrupt(&self, vq: u32, timeout: Duration) -> Result<bool> {
        let i = self.check_vq(vq, "wait_interrupt")?;
        wait_eventfd(&self.call[i], timeout, "wait_interrupt")
    }

    fn wait_config_interrupt(&self, timeout: Duration) -> Result<bool> {
        wait_eventfd(&self.config_call, timeout, "wait_config_interrupt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport over `fd` with fresh eventfds and no ioctls, to test what
    /// happens in user space.
    fn detached(fd: OwnedFd, nvqs: u32) -> VhostVdpa {
        VhostVdpa {
            fd,
            path: "test".into(),
            nvqs,
            kick: (0..nvqs).map(|_| new_eventfd().unwrap()).collect(),
            call: (0..nvqs).map(|_| new_eventfd().unwrap()).collect(),
            config_call: new_eventfd().unwrap(),
            acked_backend: AtomicU64::new(0),
            backend_chosen: AtomicBool::new(false),
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn missing_device_is_an_open_error() {
        let path = format!("/tmp/vhost-vdpa-test-missing-{}", std::process::id());
        match VhostVdpa::open(&path) {
            Err(TransportError::Open { path: p, errno }) => {
                assert_eq!(p, path);
                assert_eq!(errno, Errno::ENOENT);
            }
            Err(e) => panic!("wrong error: {e:?}"),
            Ok(_) => panic!("opened a missing path"),
        }
    }

    #[test]
    fn other_files_are_refused_before_any_ioctl() {
        for path in ["/dev/null", "/proc/self/stat"] {
            match VhostVdpa::open(path) {
                Err(TransportError::Other(msg)) => assert!(msg.contains("not a vhost-vdpa device"), "{msg}"),
                Err(e) => panic!("{path}: wrong error {e:?}"),
                Ok(_) => panic!("{path} accepted"),
            }
        }
    }

    #[test]
    fn get_config_argument_has_the_kernel_layout() {
        let arg = get_config_arg(6, 5).unwrap();
        assert_eq!(arg.as_ptr() as usize % 8, 0);
        let b = arg.bytes();
        assert_eq!(b.len(), 8 + 5);
        assert_eq!(u32_at(b, 0), 6, "off");
        assert_eq!(u32_at(b, 4), 5, "len");
        assert!(b[8..].iter().all(|&x| x == 0));
    }

    #[test]
    fn iotlb_update_message_bytes_with_asid_1() {
        let b = iotlb_msg_bytes(1, VHOST_IOTLB_UPDATE, 0x10_0000, 0x2000, 0x7f00_dead_b000, VHOST_ACCESS_RW);
        assert_eq!(b.len(), 72);
        assert_eq!(u32_at(&b, 0), 2, "VHOST_IOTLB_MSG_V2");
        assert_eq!(u32_at(&b, 4), 1, "asid");
        assert_eq!(u64_at(&b, 8), 0x10_0000, "iova");
        assert_eq!(u64_at(&b, 16), 0x2000, "size");
        assert_eq!(u64_at(&b, 24), 0x7f00_dead_b000, "uaddr");
        assert_eq!(b[32], 3, "perm");
        assert_eq!(b[33], 2, "VHOST_IOTLB_UPDATE");
        assert!(b[34..].iter().all(|&x| x == 0), "padding is zero");
    }

    #[test]
    fn iotlb_invalidate_message_bytes_with_asid_1() {
        let b = iotlb_msg_bytes(1, VHOST_IOTLB_INVALIDATE, 0x10_0000, 0x2000, 0, 0);
        assert_eq!(u32_at(&b, 0), 2);
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u64_at(&b, 8), 0x10_0000);
        assert_eq!(u64_at(&b, 16), 0x2000);
        assert_eq!(u64_at(&b, 24), 0);
        assert_eq!(b[32], 0);
        assert_eq!(b[33], 3, "VHOST_IOTLB_INVALIDATE");
        assert!(b[34..].iter().all(|&x| x == 0));
    }

    #[test]
    fn iotlb_map_writes_the_user_address_of_the_memory() {
        let (r, w) = pipe();
        let t = detached(w, 2);
        t.acked_backend.store(WANTED_BACKEND_FEATURES, Ordering::Relaxed);
        let mem = DmaMemory::new("t", 3 * 4096).unwrap();
        t.iotlb_map(1, 0x20_0000, &mem, 4096, 8192, VHOST_ACCESS_RO).unwrap();
        let mut b = [0u8; 80];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut b).unwrap(), 72, "one whole message per write");
        assert_eq!(u32_at(&b, 4), 1);
        assert_eq!(u64_at(&b, 8), 0x20_0000);
        assert_eq!(u64_at(&b, 16), 8192);
        assert_eq!(u64_at(&b, 24), mem.as_ptr() as u64 + 4096);
        assert_eq!((b[32], b[33]), (VHOST_ACCESS_RO, VHOST_IOTLB_UPDATE));

        t.iotlb_unmap(1, 0x20_0000, 8192).unwrap();
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut b).unwrap(), 72);
        assert_eq!(b[33], VHOST_IOTLB_INVALIDATE);
    }

    #[test]
    fn iotlb_map_refuses_bad_ranges_and_unnegotiated_asids_without_writing() {
        let (r, w) = pipe();
        let t = detached(w, 1);
        let mem = DmaMemory::new("t", 4096).unwrap();
        let e = t.iotlb_map(1, 0, &mem, 0, 4096, VHOST_ACCESS_RW).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EINVAL), "asid 1 without IOTLB_ASID");
        assert_eq!(t.iotlb_unmap(1, 0, 4096).unwrap_err().errno(), Some(Errno::EINVAL));
        t.acked_backend.store(1 << VHOST_BACKEND_F_IOTLB_ASID, Ordering::Relaxed);
        assert!(t.iotlb_map(1, 0, &mem, 1, 4096, VHOST_ACCESS_RW).is_err(), "past the end");
        assert!(t.iotlb_map(1, 0, &mem, usize::MAX, 2, VHOST_ACCESS_RW).is_err(), "overflow");
        assert!(t.iotlb_map(1, 0, &mem, 0, 0, VHOST_ACCESS_RW).is_err(), "empty");
        let mut b = [0u8; 8];
        assert_eq!(nix::unistd::read(r.as_raw_fd(), &mut b), Err(Errno::EAGAIN), "nothing was written");
    }

    #[test]
    fn vring_addr_puts_avail_and_used_in_the_kernel_fields() {
        let a = vring_addr(2, 0x1000, 0x2000, 0x3000);
        assert_eq!((a.index, a.flags, a.log_guest_addr), (2, 0, 0));
        assert_eq!(a.desc_user_addr, 0x1000);
        assert_eq!(a.avail_user_addr, 0x2000);
        assert_eq!(a.used_user_addr, 0x3000);
    }

    #[test]
    fn kick_and_interrupt_eventfds() {
        let (_r, w) = pipe();
        let t = detached(w, 2);
        t.kick(1).unwrap();
        t.kick(1).unwrap();
        assert_eq!(t.kick[1].read().unwrap(), 2, "each kick adds 1");
        assert_eq!(t.kick(2).unwrap_err().errno(), Some(Errno::ENOBUFS));

        let short = Duration::from_millis(20);
        assert!(!t.wait_interrupt(0, short).unwrap());
        t.call[0].write(1).unwrap();
        assert!(t.wait_interrupt(0, short).unwrap());
        assert!(!t.wait_interrupt(0, Duration::ZERO).unwrap(), "the interrupt was consumed");
        assert_eq!(t.call_fd(1).unwrap().as_raw_fd(), t.call[1].as_raw_fd());
        assert!(t.call_fd(2).is_err());

        assert!(!t.wait_config_interrupt(short).unwrap());
        t.config_call.write(1).unwrap();
        assert!(t.wait_config_interrupt(short).unwrap());
    }

    #[test]
    fn waits_are_bounded() {
        let (_r, w) = pipe();
        let t = detached(w, 1);
        let start = Instant::now();
        assert!(!t.wait_interrupt(0, Duration::from_millis(30)).unwrap());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(30) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(poll_timeout(Duration::from_micros(1)), PollTimeout::try_from(1).unwrap());
        assert_eq!(poll_timeout(Duration::from_secs(1 << 40)), PollTimeout::MAX);
    }

    #[test]
    fn wanted_backend_features_are_those_vduse_can_offer() {
        // What 7.3 offers a VDUSE device with VDUSE_F_SUSPEND: 0x1e.
        assert_eq!(0x1e & WANTED_BACKEND_FEATURES, 0x1e);
        // DESC_ASID, IOTLB_PERSIST and ENABLE_AFTER_DRIVER_OK stay off.
        assert_eq!(0x1ff & WANTED_BACKEND_FEATURES, 0x3e);
    }

    fn sh(cmd: &str, args: &[&str]) {
        let out = std::process::Command::new(cmd).args(args).output().expect("run helper command");
        assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Both real-kernel implementations against each other: a VDUSE device
    /// answered by a thread here, bound to vhost_vdpa, driven through
    /// /dev/vhost-vdpa-N. Needs root, the vduse and vhost_vdpa modules, the
    /// `vdpa` tool and vdpa autoprobe off; run it inside the kernel harness
    /// with `--ignored real_kernel_end_to_end`.
    #[test]
    #[ignore = "needs a kernel with vduse and vhost_vdpa (run in the qemu harness)"]
    fn real_kernel_end_to_end() {
        use crate::vduse::kernel::KernelControl;
        use crate::vduse::request::VqState;
        use crate::vduse::{DeviceConfig, Request, Response, VduseControl};
        use std::sync::{Arc, Mutex};

        let name = "kio0";
        let ctl = KernelControl::open().expect("open /dev/vduse/control");
        let api = ctl.api_version().unwrap().min(1);
        ctl.set_api_version(api).unwrap();
        let v1 = api == 1;
        let _ = ctl.destroy_device(name);
        // VDUSE features exist from 7.3 on; older kernels answer ENOTTY.
        let vduse_suspend = match ctl.vduse_features() {
            Ok(f) => {
                assert_eq!(f & 0x3, 0x3, "7.3 offers QUEUE_READY and SUSPEND");
                ctl.set_vduse_features(1 << crate::uapi::vduse::VDUSE_F_SUSPEND).unwrap();
                true
            }
            Err(e) => {
                assert_eq!(e.errno(), Errno::ENOTTY, "{e}");
                false
            }
        };
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let mut config = vec![0u8; 12];
        config[..6].copy_from_slice(&mac);
        let features = (1u64 << 32) | (1 << 33) | (1 << 5);
        let (ngroups, nas) = if v1 { (2, 2) } else { (0, 0) };
        let cfg = DeviceConfig {
            name: name.into(),
            vendor_id: 0,
            device_id: 1,
            features,
            vq_num: 3,
            vq_align: 4096,
            ngroups,
            nas,
            config,
        };
        ctl.create_device(&cfg).unwrap();
        assert!(matches!(ctl.create_device(&cfg), Err(crate::vduse::VduseError::NameInUse(_))));
        let dev = ctl.open_device(name).unwrap();
        assert_eq!(dev.api_version(), api);
        for vq in 0..3 {
            dev.setup_vq(vq, 256, u32::from(v1 && vq == 2)).unwrap();
        }

        // The device's slow path: answer everything OK, GET_VQ_STATE with 7.
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let daemon = {
            let (dev, stop, seen) = (dev.clone(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    let mut fds = [PollFd::new(dev.request_fd(), PollFlags::POLLIN)];
                    if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
                        continue;
                    }
                    let Some(n) = dev.read_request(&mut buf).unwrap() else { continue };
                    let (id, req) = Request::parse(&buf[..n], dev.api_version()).unwrap();
                    let resp = match req {
                        Request::GetVqState { index } => {
                            Response::vq_state(id, VqState::Split { index, avail_index: 7 })
                        }
                        _ => Response::ok(id),
                    };
                    // Recorded before the reply: the test checks `seen` as
                    // soon as its ioctl returns, which the reply allows.
                    seen.lock().unwrap().push(req);
                    dev.write_response(&resp.encode()).unwrap();
                }
            })
        };
        let saw = |want: &dyn Fn(&Request) -> bool| seen.lock().unwrap().iter().any(want);

        sh("vdpa", &["dev", "add", "name", name, "mgmtdev", "vduse"]);
        std::fs::write("/sys/bus/vdpa/drivers/vhost_vdpa/bind", name).unwrap();
        let node = std::fs::read_dir(format!("/sys/bus/vdpa/devices/{name}"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with("vhost-vdpa-"))
            .expect("a vhost-vdpa node");
        let t = VhostVdpa::open(&format!("/dev/{node}")).unwrap();

        assert_eq!(t.device_id().unwrap(), 1);
        assert_eq!(t.vq_count().unwrap(), 3);
        assert_eq!(t.max_vring_num().unwrap(), 256);
        assert_eq!(t.device_features().unwrap(), features);
        let mut m = [0u8; 6];
        t.read_config(0, &mut m).unwrap();
        assert_eq!(m, mac);
        if v1 {
            assert_eq!((t.group_num().unwrap(), t.as_num().unwrap()), (2, 2));
            assert_eq!((t.vring_group(0).unwrap(), t.vring_group(2).unwrap()), (0, 1));
        }
        t.set_status(0x3).unwrap();
        t.set_features(features).unwrap();
        assert_eq!(dev.negotiated_features().unwrap(), features);
        let offered = t.backend_features().unwrap();
        assert_eq!(t.acked_backend_features(), offered & WANTED_BACKEND_FEATURES);
        t.set_status(0xb).unwrap();
        assert_eq!(t.status().unwrap(), 0xb);
        assert!(saw(&|r| *r == Request::SetStatus { status: 0xb }));

        let asid = u32::from(v1);
        if v1 {
            t.set_group_asid(1, 1).unwrap();
            assert!(saw(&|r| *r == Request::SetVqGroupAsid { group: 1, asid: 1 }));
        }
        let mem = DmaMemory::new("kio", 3 * 4096).unwrap();
        mem.write(4096, b"hello vduse");
        t.iotlb_map(asid, 0x10_0000, &mem, 4096, 4096, VHOST_ACCESS_RW).unwrap();
        assert!(saw(&|r| matches!(r, Request::UpdateIotlb { asid: a, .. } if *a == asid)));
        let region = dev.iotlb_get_fd(asid, 0x10_0000, 0x10_0000).unwrap();
        assert_eq!((region.start, region.last, region.perm), (0x10_0000, 0x10_0fff, 3));
        // SAFETY: a read-only view of one page of the memfd the kernel handed
        // out; it is dropped before the memory goes away.
        let view = unsafe { memmap2::MmapOptions::new().offset(region.offset).len(4096).map(&region.fd) }.unwrap();
        assert_eq!(&view[..11], b"hello vduse");
        drop(view);
        if v1 {
            assert!(dev.iotlb_get_fd(0, 0x10_0000, 0x10_0000).is_err(), "mapped in asid 1 only");
        }

        t.set_vring_num(0, 256).unwrap();
        t.set_vring_addr(0, 0x10_0000, 0x10_1000, 0x10_2000).unwrap();
        t.set_vring_base(0, 0).unwrap();
        t.set_vring_enable(0, true).unwrap();
        let devkick = new_eventfd().unwrap();
        dev.set_vq_kickfd(0, Some(devkick.as_fd())).unwrap();
        t.set_status(0xf).unwrap();
        assert_eq!(t.status().unwrap(), 0xf);
        let info = dev.vq_info(0).unwrap();
        assert_eq!(
            (info.num, info.desc_addr, info.driver_addr, info.device_addr),
            (256, 0x10_0000, 0x10_1000, 0x10_2000)
        );
        assert!(info.ready);

        t.kick(0).unwrap();
        assert!(wait_eventfd(&devkick, Duration::from_secs(5), "device kick").unwrap(), "kick reached the device");
        dev.inject_vq_irq(0).unwrap();
        assert!(t.wait_interrupt(0, Duration::from_secs(5)).unwrap(), "vq interrupt reached the driver");
        dev.set_config(5, &[0x99]).unwrap();
        dev.inject_config_irq().unwrap();
        assert!(t.wait_config_interrupt(Duration::from_secs(5)).unwrap(), "config interrupt reached the driver");
        t.read_config(0, &mut m).unwrap();
        assert_eq!(m[5], 0x99);
        assert_eq!(t.vring_base(0).unwrap(), 7, "GET_VRING_BASE asks the device");

        if vduse_suspend {
            assert_ne!(offered & (1 << VHOST_BACKEND_F_SUSPEND), 0);
            t.suspend().unwrap();
            assert!(saw(&|r| *r == Request::Suspend));
            assert_eq!(t.resume().unwrap_err().errno(), Some(Errno::EOPNOTSUPP), "vduse has no resume");
        }

        // A reset drops the call callbacks in VDUSE: interrupts must still
        // arrive after the next start.
        t.set_status(0).unwrap();
        assert_eq!(t.status().unwrap(), 0);
        t.set_status(0x3).unwrap();
        t.set_features(features).unwrap();
        t.set_status(0xb).unwrap();
        t.set_vring_num(0, 256).unwrap();
        t.set_vring_addr(0, 0x10_0000, 0x10_1000, 0x10_2000).unwrap();
        t.set_vring_enable(0, true).unwrap();
        dev.set_vq_kickfd(0, Some(devkick.as_fd())).unwrap();
        t.set_status(0xf).unwrap();
        while t.wait_interrupt(0, Duration::ZERO).unwrap() {}
        dev.inject_vq_irq(0).unwrap();
        assert!(t.wait_interrupt(0, Duration::from_secs(5)).unwrap(), "vq interrupt after a reset");
        dev.inject_config_irq().unwrap();
        assert!(t.wait_config_interrupt(Duration::from_secs(5)).unwrap(), "config interrupt after a reset");

        t.iotlb_unmap(asid, 0x10_0000, 4096).unwrap();
        assert!(dev.iotlb_get_fd(asid, 0x10_0000, 0x10_0000).is_err(), "gone after invalidate");
        t.set_status(0).unwrap();
        assert_eq!(t.status().unwrap(), 0);

        drop(t);
        std::fs::write("/sys/bus/vdpa/drivers/vhost_vdpa/unbind", name).unwrap();
        sh("vdpa", &["dev", "del", name]);
        stop.store(true, Ordering::Relaxed);
        daemon.join().unwrap();
        drop(dev);
        ctl.destroy_device(name).unwrap();
        eprintln!("real_kernel_end_to_end: api {api}, backend features offered {offered:#x}");
    }
}
