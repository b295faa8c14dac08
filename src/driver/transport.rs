//! What a vDPA bus driver does to a device, as vhost-vdpa offers it.
//!
//! Implemented by the embedded kernel model's driver face
//! ([`crate::vduse::model`]) and by `/dev/vhost-vdpa-N`
//! ([`super::vhost_vdpa`]), so the driver, pktgen and the tests drive both
//! with the same code.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::errno::Errno;

use super::dma::DmaMemory;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{op} failed: {errno}")]
    Os { op: &'static str, errno: Errno },
    #[error("cannot open {path}: {errno}")]
    Open { path: String, errno: Errno },
    #[error("{0}")]
    Other(String),
}

impl TransportError {
    pub fn os(op: &'static str, errno: Errno) -> Self {
        TransportError::Os { op, errno }
    }
    pub fn errno(&self) -> Option<Errno> {
        match self {
            TransportError::Os { errno, .. } | TransportError::Open { errno, .. } => Some(*errno),
            TransportError::Other(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, TransportError>;

/// The driver side of one vDPA device (vhost-vdpa semantics).
pub trait DriverTransport: Send + Sync {
    /// `VHOST_VDPA_GET_DEVICE_ID`.
    fn device_id(&self) -> Result<u32>;
    /// `VHOST_GET_FEATURES`: what the device offers.
    fn device_features(&self) -> Result<u64>;
    /// `VHOST_SET_FEATURES`.
    fn set_features(&self, features: u64) -> Result<()>;
    /// `VHOST_GET_BACKEND_FEATURES` (bit numbers `VHOST_BACKEND_F_*`).
    fn backend_features(&self) -> Result<u64>;
    /// `VHOST_SET_BACKEND_FEATURES`.
    fn set_backend_features(&self, features: u64) -> Result<()>;
    /// `VHOST_VDPA_GET_STATUS`.
    fn status(&self) -> Result<u8>;
    /// `VHOST_VDPA_SET_STATUS`. 0 resets the device.
    fn set_status(&self, status: u8) -> Result<()>;
    /// `VHOST_VDPA_GET_CONFIG`.
    fn read_config(&self, offset: u32, buf: &mut [u8]) -> Result<()>;
    /// `VHOST_VDPA_GET_VQS_COUNT`.
    fn vq_count(&self) -> Result<u32>;
    /// `VHOST_VDPA_GET_VRING_NUM`: the largest queue size.
    fn max_vring_num(&self) -> Result<u16>;
    /// `VHOST_SET_VRING_NUM`.
    fn set_vring_num(&self, vq: u32, num: u16) -> Result<()>;
    /// `VHOST_SET_VRING_ADDR` with IOVAs.
    fn set_vring_addr(&self, vq: u32, desc: u64, avail: u64, used: u64) -> Result<()>;
    /// `VHOST_SET_VRING_BASE`. Split rings: the avail index (at most
    /// 0xffff). Packed rings: `avail | used << 16`, each half a ring slot
    /// with its wrap counter in bit 15 (a fresh ring: `0x8000_8000`).
    fn set_vring_base(&self, vq: u32, base: u32) -> Result<()>;
    /// `VHOST_GET_VRING_BASE`: the device's position (GET_VQ_STATE on
    /// VDUSE), encoded as for `set_vring_base`.
    fn vring_base(&self, vq: u32) -> Result<u32>;
    /// `VHOST_VDPA_SET_VRING_ENABLE`.
    fn set_vring_enable(&self, vq: u32, enable: bool) -> Result<()>;
    /// `VHOST_VDPA_GET_GROUP_NUM`.
    fn group_num(&self) -> Result<u32>;
    /// `VHOST_VDPA_GET_AS_NUM`.
    fn as_num(&self) -> Result<u32>;
    /// `VHOST_VDPA_GET_VRING_GROUP`.
    fn vring_group(&self, vq: u32) -> Result<u32>;
    /// `VHOST_VDPA_SET_GROUP_ASID`. EBUSY while DRIVER_OK is set.
    fn set_group_asid(&self, group: u32, asid: u32) -> Result<()>;
    /// IOTLB update (v2 message) in `asid`: `[iova, iova + len)` maps
    /// `mem[offset..offset + len]` with `perm` (`VHOST_ACCESS_*`).
    fn iotlb_map(&self, asid: u32, iova: u64, mem: &DmaMemory, offset: usize, len: usize, perm: u8) -> Result<()>;
    /// IOTLB invalidate (v2 message) in `asid`.
    fn iotlb_unmap(&self, asid: u32, iova: u64, len: u64) -> Result<()>;
    /// `VHOST_VDPA_SUSPEND`; ENOTSUP/EOPNOTSUPP when not offered.
    fn suspend(&self) -> Result<()>;
    /// `VHOST_VDPA_RESUME`.
    fn resume(&self) -> Result<()>;
    /// Notify the device that `vq` has new buffers (write its kick eventfd).
    fn kick(&self, vq: u32) -> Result<()>;
    /// The call eventfd of `vq` (readable after an interrupt), for poll(2).
    fn call_fd(&self, vq: u32) -> Result<BorrowedFd<'_>>;
    /// Wait up to `timeout` for an interrupt on `vq`; consumes it. Returns
    /// whether one came.
    fn wait_interrupt(&self, vq: u32, timeout: Duration) -> Result<bool>;
    /// Wait up to `timeout` for a config interrupt; consumes it.
    fn wait_config_interrupt(&self, timeout: Duration) -> Result<bool>;
}
