//! The driver face: what `/dev/vhost-vdpa-N` offers for a VDUSE device
//! (drivers/vhost/vdpa.c on top of vduse_dev.c's vdpa ops).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::device::{Dev, DriverIrq, Mapping};
use super::lock;
use crate::driver::dma::DmaMemory;
use crate::driver::transport::{DriverTransport, Result, TransportError};
use crate::uapi::vhost_vdpa::{
    VHOST_BACKEND_F_IOTLB_ASID, VHOST_BACKEND_F_IOTLB_BATCH, VHOST_BACKEND_F_IOTLB_MSG_V2, VHOST_BACKEND_F_RESUME,
    VHOST_BACKEND_F_SUSPEND,
};
use crate::uapi::virtio::{feature, status};
use crate::vduse::VduseError;

/// Backend feature bits vhost-vdpa always offers (`VHOST_VDPA_BACKEND_FEATURES`).
const BACKEND_ALWAYS: u64 =
    1 << VHOST_BACKEND_F_IOTLB_MSG_V2 | 1 << VHOST_BACKEND_F_IOTLB_BATCH | 1 << VHOST_BACKEND_F_IOTLB_ASID;
const BACKEND_F_ENABLE_AFTER_DRIVER_OK: u64 = 6;
const BACKEND_F_DESC_ASID: u64 = 7;
const BACKEND_F_IOTLB_PERSIST: u64 = 8;

static NEXT_OPEN: AtomicU64 = AtomicU64::new(1);

/// Per-open vhost-vdpa state (`struct vhost_vdpa` + its vhost_dev).
pub(crate) struct VhostState {
    open_id: u64,
    acked_backend: u64,
    /// `v->suspended`: lets SET_VRING_ADDR/BASE through after DRIVER_OK.
    suspended: bool,
    /// `v->vq_num_max`, taken after each reset.
    vq_num_max: u16,
    /// The vhost IOTLB per address space; `None` until first used.
    iotlb: Vec<Option<Vec<Arc<Mapping>>>>,
}

/// The driver face of one attached model device.
pub struct ModelDriver {
    dev: Arc<Dev>,
    irq: Arc<DriverIrq>,
    open_id: u64,
}

impl std::fmt::Debug for ModelDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDriver").field("device", &self.dev.name()).field("open_id", &self.open_id).finish()
    }
}

fn err(op: &'static str, errno: Errno) -> TransportError {
    TransportError::os(op, errno)
}

impl ModelDriver {
    /// Bind + open: wires the interrupt side, then resets the device as
    /// `vhost_vdpa_open` does; a failed reset fails the open.
    pub(crate) fn open(dev: Arc<Dev>) -> std::result::Result<Arc<ModelDriver>, VduseError> {
        let op = "open vhost-vdpa";
        let irq = Arc::new(DriverIrq::new(dev.vq_num as usize).map_err(|e| VduseError::os(op, e))?);
        let mut vh = lock(&dev.vhost);
        if vh.is_some() {
            return Err(VduseError::os(op, Errno::EBUSY));
        }
        dev.bind_driver(irq.clone());
        dev.reset().map_err(|e| VduseError::os(op, e))?;
        let open_id = NEXT_OPEN.fetch_add(1, Ordering::Relaxed);
        *vh = Some(VhostState {
            open_id,
            acked_backend: 0,
            suspended: false,
            vq_num_max: dev.num_max(),
            iotlb: (0..dev.nas).map(|_| None).collect(),
        });
        drop(vh);
        Ok(Arc::new(ModelDriver { dev, irq, open_id }))
    }

    /// Interrupts delivered to `vq`'s call eventfd so far.
    pub fn irq_count(&self, vq: u32) -> u64 {
        self.irq.irq_count(vq as usize)
    }

    pub fn config_irq_count(&self) -> u64 {
        self.irq.config_irq_count()
    }

    pub fn is_broken(&self) -> bool {
        self.dev.is_broken()
    }

    /// Test hook: deliver raw bytes as one control message (e.g. truncated
    /// or of an unknown type) and wait up to the message timeout for the
    /// reply bytes. The id the device must answer is `bytes[4..8]`. A
    /// timeout gives `Ok(None)` and, unlike kernel messages, does not break
    /// the device. Raw messages are not in the message log.
    pub fn send_raw_message(&self, bytes: &[u8]) -> std::result::Result<Option<Vec<u8>>, VduseError> {
        self.dev.send_raw(bytes)
    }

    /// The vhost state of this open; EBADF once detached (the fd is closed).
    fn vhost(&self, op: &'static str) -> Result<MutexGuard<'_, Option<VhostState>>> {
        let g = lock(&self.dev.vhost);
        match &*g {
            Some(v) if v.open_id == self.open_id => Ok(g),
            _ => Err(err(op, Errno::EBADF)),
        }
    }

    fn check_open(&self, op: &'static str) -> Result<()> {
        self.vhost(op).map(drop)
    }

    fn with_vhost<T>(&self, op: &'static str, f: impl FnOnce(&mut VhostState) -> Result<T>) -> Result<T> {
        let mut g = self.vhost(op)?;
        match g.as_mut() {
            Some(v) => f(v),
            None => Err(err(op, Errno::EBADF)),
        }
    }

    /// Index check shared by the vring ioctls.
    fn vq_index(&self, op: &'static str, vq: u32) -> Result<usize> {
        if vq >= self.dev.vq_num {
            return Err(err(op, Errno::ENOBUFS));
        }
        Ok(vq as usize)
    }

    /// `vhost_vdpa_reset` as SET_STATUS 0 and close do it.
    fn reset(&self, v: &mut VhostState) -> std::result::Result<(), Errno> {
        v.suspended = false;
        v.vq_num_max = 0;
        let r = self.dev.reset();
        if r.is_ok() {
            v.vq_num_max = self.dev.num_max();
        }
        r
    }

    /// What an IOTLB message's asid becomes: without IOTLB_ASID acked the
    /// kernel skips the field and uses 0.
    fn effective_asid(v: &VhostState, asid: u32) -> u32 {
        if v.acked_backend & 1 << VHOST_BACKEND_F_IOTLB_ASID != 0 {
            asid
        } else {
            0
        }
    }

    fn ready_irq(&self, vq: u32, op: &'static str) -> Result<BorrowedFd<'_>> {
        self.irq.call_fd(vq as usize).ok_or(err(op, Errno::EINVAL))
    }
}

impl Dev {
    /// Close of the vhost-vdpa fd, unbind, `vdpa dev del`.
    pub(crate) fn detach_driver(&self) -> std::result::Result<(), VduseError> {
        let mut vh = lock(&self.vhost);
        let Some(mut v) = vh.take() else {
            return Err(VduseError::os("vdpa dev del", Errno::ENODEV));
        };
        // vhost_vdpa_release: reset (errors ignored); the vhost address
        // spaces go away without a set_map, so the VDUSE domains keep
        // their (stale) entries.
        v.suspended = false;
        let _ = self.reset();
        drop(v);
        self.vdpa_del();
        Ok(())
    }
}

/// Wait for `fd` to become readable, then consume its eventfd counter.
fn wait_eventfd(fd: BorrowedFd<'_>, timeout: Duration, op: &'static str) -> Result<bool> {
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let t = PollTimeout::try_from(ms).map_err(|_| err(op, Errno::EINVAL))?;
    let n = loop {
        match nix::poll::poll(&mut fds, t) {
            // A signal cut the wait short: wait again (signals are rare).
            Err(Errno::EINTR) => continue,
            r => break r.map_err(|e| err(op, e))?,
        }
    };
    if n == 0 {
        return Ok(false);
    }
    let mut b = [0u8; 8];
    match nix::unistd::read(fd.as_raw_fd(), &mut b) {
        Ok(8) => Ok(true),
        Ok(_) | Err(Errno::EAGAIN) => Ok(false),
        Err(e) => Err(err(op, e)),
    }
}

impl DriverTransport for ModelDriver {
    fn device_id(&self) -> Result<u32> {
        self.check_open("VHOST_VDPA_GET_DEVICE_ID")?;
        Ok(self.dev.device_id)
    }

    fn device_features(&self) -> Result<u64> {
        self.check_open("VHOST_GET_FEATURES")?;
        Ok(self.dev.device_features)
    }

    fn set_features(&self, features: u64) -> Result<()> {
        let op = "VHOST_SET_FEATURES";
        self.with_vhost(op, |_| {
            if self.dev.status() & status::FEATURES_OK != 0 {
                return Err(err(op, Errno::EBUSY));
            }
            // Stored unmasked: the device refuses bad features by failing
            // SET_STATUS(FEATURES_OK).
            self.dev.set_driver_features(features);
            Ok(())
        })
    }

    fn backend_features(&self) -> Result<u64> {
        self.check_open("VHOST_GET_BACKEND_FEATURES")?;
        let mut f = BACKEND_ALWAYS;
        if self.dev.can_suspend() {
            f |= 1 << VHOST_BACKEND_F_SUSPEND;
        }
        Ok(f)
    }

    fn set_backend_features(&self, features: u64) -> Result<()> {
        let op = "VHOST_SET_BACKEND_FEATURES";
        self.with_vhost(op, |v| {
            let known = BACKEND_ALWAYS
                | 1 << BACKEND_F_DESC_ASID
                | 1 << BACKEND_F_IOTLB_PERSIST
                | 1 << VHOST_BACKEND_F_SUSPEND
                | 1 << VHOST_BACKEND_F_RESUME
                | 1 << BACKEND_F_ENABLE_AFTER_DRIVER_OK;
            if features & !known != 0 {
                return Err(err(op, Errno::EOPNOTSUPP));
            }
            if features & 1 << VHOST_BACKEND_F_SUSPEND != 0 && !self.dev.can_suspend() {
                return Err(err(op, Errno::EOPNOTSUPP));
            }
            // VDUSE never has resume.
            if features & 1 << VHOST_BACKEND_F_RESUME != 0 {
                return Err(err(op, Errno::EOPNOTSUPP));
            }
            if features & 1 << BACKEND_F_DESC_ASID != 0 {
                if features & 1 << VHOST_BACKEND_F_IOTLB_ASID == 0 {
                    return Err(err(op, Errno::EINVAL));
                }
                return Err(err(op, Errno::EOPNOTSUPP));
            }
            if features & 1 << BACKEND_F_IOTLB_PERSIST != 0 {
                return Err(err(op, Errno::EOPNOTSUPP));
            }
            // ENABLE_AFTER_DRIVER_OK is accepted though never offered.
            v.acked_backend = features;
            Ok(())
        })
    }

    fn status(&self) -> Result<u8> {
        self.check_open("VHOST_VDPA_GET_STATUS")?;
        Ok(self.dev.status())
    }

    fn set_status(&self, s: u8) -> Result<()> {
        let op = "VHOST_VDPA_SET_STATUS";
        self.with_vhost(op, |v| {
            let old = self.dev.status();
            // Bits are cleared only through a reset.
            if s != 0 && old & !s != 0 {
                return Err(err(op, Errno::EINVAL));
            }
            if s == 0 {
                return self.reset(v).map_err(|e| err(op, e));
            }
            // A refused status is not an error here: re-read it.
            self.dev.set_status(s);
            Ok(())
        })
    }

    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()> {
        let op = "VHOST_VDPA_GET_CONFIG";
        self.check_open(op)?;
        let size = self.dev.config_size();
        let off = offset as usize;
        if buf.is_empty() || off > size {
            return Err(err(op, Errno::EINVAL));
        }
        if buf.len() > size - off {
            return Err(err(op, Errno::E2BIG));
        }
        self.dev.read_config(off, buf);
        Ok(())
    }

    fn vq_count(&self) -> Result<u32> {
        self.check_open("VHOST_VDPA_GET_VQS_COUNT")?;
        Ok(self.dev.vq_num)
    }

    fn max_vring_num(&self) -> Result<u16> {
        self.check_open("VHOST_VDPA_GET_VRING_NUM")?;
        Ok(self.dev.num_max())
    }

    fn set_vring_num(&self, vq: u32, num: u16) -> Result<()> {
        let op = "VHOST_SET_VRING_NUM";
        self.with_vhost(op, |v| {
            let i = self.vq_index(op, vq)?;
            if num == 0 || !num.is_power_of_two() || num > v.vq_num_max {
                return Err(err(op, Errno::EINVAL));
            }
            self.dev.set_vq_num(i, num as u32);
            Ok(())
        })
    }

    fn set_vring_addr(&self, vq: u32, desc: u64, avail: u64, used: u64) -> Result<()> {
        let op = "VHOST_SET_VRING_ADDR";
        self.with_vhost(op, |v| {
            let i = self.vq_index(op, vq)?;
            if avail & 1 != 0 || used & 3 != 0 {
                return Err(err(op, Errno::EINVAL));
            }
            if self.dev.status() & status::DRIVER_OK != 0 && !v.suspended {
                return Err(err(op, Errno::EINVAL));
            }
            self.dev.set_vq_address(i, desc, avail, used);
            Ok(())
        })
    }

    fn set_vring_base(&self, vq: u32, base: u32) -> Result<()> {
        let op = "VHOST_SET_VRING_BASE";
        self.with_vhost(op, |v| {
            let i = self.vq_index(op, vq)?;
            if self.dev.status() & status::DRIVER_OK != 0 && !v.suspended {
                return Err(err(op, Errno::EINVAL));
            }
            // vhost.c: a split base is a 16-bit avail index.
            if self.dev.driver_features() & 1 << feature::RING_PACKED == 0 && base > 0xffff {
                return Err(err(op, Errno::EINVAL));
            }
            self.dev.set_vq_state(i, base);
            Ok(())
        })
    }

    fn vring_base(&self, vq: u32) -> Result<u32> {
        let op = "VHOST_GET_VRING_BASE";
        self.with_vhost(op, |_| {
            let i = self.vq_index(op, vq)?;
            self.dev.get_vq_state(i).map_err(|e| err(op, e))
        })
    }

    fn set_vring_enable(&self, vq: u32, enable: bool) -> Result<()> {
        let op = "VHOST_VDPA_SET_VRING_ENABLE";
        self.with_vhost(op, |_| {
            let i = self.vq_index(op, vq)?;
            // Always 0, even when the device refused and is now broken.
            self.dev.set_vq_ready(i, enable);
            Ok(())
        })
    }

    fn group_num(&self) -> Result<u32> {
        self.check_open("VHOST_VDPA_GET_GROUP_NUM")?;
        Ok(self.dev.ngroups)
    }

    fn as_num(&self) -> Result<u32> {
        self.check_open("VHOST_VDPA_GET_AS_NUM")?;
        Ok(self.dev.nas)
    }

    fn vring_group(&self, vq: u32) -> Result<u32> {
        let op = "VHOST_VDPA_GET_VRING_GROUP";
        self.with_vhost(op, |_| {
            let i = self.vq_index(op, vq)?;
            let g = self.dev.vq_group(i);
            if g >= self.dev.ngroups {
                return Err(err(op, Errno::EIO));
            }
            Ok(g)
        })
    }

    fn set_group_asid(&self, group: u32, asid: u32) -> Result<()> {
        let op = "VHOST_VDPA_SET_GROUP_ASID";
        self.with_vhost(op, |_| {
            // The group travels in the vring index, checked against nvqs first.
            self.vq_index(op, group)?;
            if group >= self.dev.ngroups || asid >= self.dev.nas {
                return Err(err(op, Errno::EINVAL));
            }
            if self.dev.status() & status::DRIVER_OK != 0 {
                return Err(err(op, Errno::EBUSY));
            }
            self.dev.set_group_asid(group, asid).map_err(|e| err(op, e))
        })
    }

    fn iotlb_map(&self, asid: u32, iova: u64, mem: &DmaMemory, offset: usize, len: usize, perm: u8) -> Result<()> {
        let op = "IOTLB update";
        self.with_vhost(op, |v| {
            if len == 0 {
                return Err(err(op, Errno::EINVAL));
            }
            // Handler errors come back from write(2) as EFAULT.
            let asid = Self::effective_asid(v, asid);
            let size = len as u64;
            if asid >= self.dev.nas || iova > u64::MAX - size + 1 {
                return Err(err(op, Errno::EFAULT));
            }
            let last = iova + (size - 1);
            // Outside the memfd there is no VMA to map.
            if offset.checked_add(len).map_or(true, |end| end > mem.len()) {
                return Err(err(op, Errno::EFAULT));
            }
            let tlb = v.iotlb[asid as usize].get_or_insert_with(Vec::new);
            if tlb.iter().any(|m| m.start <= last && m.last >= iova) {
                return Err(err(op, Errno::EFAULT)); // EEXIST inside
            }
            let file: OwnedFd = mem.fd().try_clone_to_owned().map_err(|_| err(op, Errno::EFAULT))?;
            let m = Arc::new(Mapping { start: iova, last, offset: offset as u64, perm, file: Arc::new(file) });
            tlb.push(m.clone());
            let snapshot = tlb.clone();
            if self.dev.set_map(asid, &snapshot).is_err() {
                let tlb = v.iotlb[asid as usize].get_or_insert_with(Vec::new);
                tlb.retain(|x| !Arc::ptr_eq(x, &m));
                return Err(err(op, Errno::EFAULT));
            }
            Ok(())
        })
    }

    fn iotlb_unmap(&self, asid: u32, iova: u64, len: u64) -> Result<()> {
        let op = "IOTLB invalidate";
        self.with_vhost(op, |v| {
            let asid = Self::effective_asid(v, asid);
            let Some(tlb) = v.iotlb.get_mut(asid as usize).and_then(|t| t.as_mut()) else {
                return Err(err(op, Errno::EFAULT));
            };
            if len > 0 {
                let last = iova.saturating_add(len - 1);
                tlb.retain(|m| !(m.start <= last && m.last >= iova));
            }
            let snapshot = tlb.clone();
            // set_map's error is ignored on invalidation.
            let _ = self.dev.set_map(asid, &snapshot);
            Ok(())
        })
    }

    fn suspend(&self) -> Result<()> {
        let op = "VHOST_VDPA_SUSPEND";
        self.with_vhost(op, |v| {
            if self.dev.status() & status::DRIVER_OK == 0 {
                return Ok(());
            }
            if !self.dev.can_suspend() {
                return Err(err(op, Errno::EOPNOTSUPP));
            }
            self.dev.suspend().map_err(|e| err(op, e))?;
            v.suspended = true;
            Ok(())
        })
    }

    fn resume(&self) -> Result<()> {
        let op = "VHOST_VDPA_RESUME";
        self.with_vhost(op, |_| {
            // VDUSE has no resume op; only a reset ends a suspend.
            if self.dev.status() & status::DRIVER_OK == 0 {
                return Ok(());
            }
            Err(err(op, Errno::EOPNOTSUPP))
        })
    }

    fn kick(&self, vq: u32) -> Result<()> {
        if vq >= self.dev.vq_num {
            return Err(err("kick", Errno::EINVAL));
        }
        if !self.dev.is_bound(&self.irq) {
            return Err(err("kick", Errno::EBADF));
        }
        self.dev.kick(vq as usize);
        Ok(())
    }

    fn call_fd(&self, vq: u32) -> Result<BorrowedFd<'_>> {
        self.ready_irq(vq, "call_fd")
    }

    fn wait_interrupt(&self, vq: u32, timeout: Duration) -> Result<bool> {
        let fd = self.ready_irq(vq, "wait_interrupt")?;
        wait_eventfd(fd, timeout, "wait_interrupt")
    }

    fn wait_config_interrupt(&self, timeout: Duration) -> Result<bool> {
        wait_eventfd(self.irq.config_fd(), timeout, "wait_config_interrupt")
    }
}
