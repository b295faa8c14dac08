//! The device side of the VDUSE boundary.
//!
//! [`VduseControl`] is what `/dev/vduse/control` offers, [`VduseDevice`] what
//! `/dev/vduse/$NAME` offers. Two implementations stand behind them: the
//! real kernel ([`kernel`]) and the embedded kernel model ([`model`]), so the
//! same device code runs on a real kernel and in CI.

pub mod kernel;
pub mod model;
pub mod request;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;

pub use request::{Request, RequestError, Response};

/// Errors at the VDUSE boundary. Both implementations report the errno the
/// kernel would give, so callers can react the same way to either.
#[derive(Debug, thiserror::Error)]
pub enum VduseError {
    #[error("/dev/vduse/control not found: module vduse not loaded (try: modprobe vduse)")]
    NoModule,
    #[error("permission denied opening {0}: needs root or CAP_NET_ADMIN")]
    PermissionDenied(String),
    #[error("device name {0:?} is already in use")]
    NameInUse(String),
    #[error("no VDUSE device named {0:?}")]
    NoDevice(String),
    #[error("device is broken: a control message was not answered in time")]
    Broken,
    #[error("{op} failed: {errno}")]
    Os { op: &'static str, errno: Errno },
}

impl VduseError {
    pub fn os(op: &'static str, errno: Errno) -> Self {
        VduseError::Os { op, errno }
    }

    /// The errno this error stands for, as the kernel would return it.
    pub fn errno(&self) -> Errno {
        match self {
            VduseError::NoModule => Errno::ENOENT,
            VduseError::PermissionDenied(_) => Errno::EPERM,
            VduseError::NameInUse(_) => Errno::EEXIST,
            VduseError::NoDevice(_) => Errno::ENOENT,
            VduseError::Broken => Errno::EIO,
            VduseError::Os { errno, .. } => *errno,
        }
    }
}

pub type Result<T> = std::result::Result<T, VduseError>;

/// What `VDUSE_CREATE_DEV` takes, in Rust form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    pub name: String,
    pub vendor_id: u32,
    pub device_id: u32,
    pub features: u64,
    pub vq_num: u32,
    pub vq_align: u32,
    /// Number of vq groups (API v1; must be 0 with API v0).
    pub ngroups: u32,
    /// Number of address spaces (API v1; must be 0 with API v0).
    pub nas: u32,
    /// Initial config space.
    pub config: Vec<u8>,
}

/// `VDUSE_VQ_GET_INFO`, in Rust form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VqInfo {
    pub index: u32,
    pub num: u32,
    pub desc_addr: u64,
    pub driver_addr: u64,
    pub device_addr: u64,
    /// Where the device starts: split, the avail index; packed, the avail
    /// slot with its wrap counter in bit 15 (the kernel's packed view,
    /// `last_avail_idx | last_avail_counter << 15`).
    pub avail_index: u16,
    pub ready: bool,
}

/// One IOVA region as `VDUSE_IOTLB_GET_FD(2)` returns it: map `fd` at
/// `offset` for `last - start + 1` bytes to see `[start, last]`.
#[derive(Debug)]
pub struct IotlbRegion {
    pub fd: OwnedFd,
    pub offset: u64,
    pub start: u64,
    pub last: u64,
    pub perm: u8,
}

/// `VDUSE_IOTLB_GET_INFO`, in Rust form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaInfo {
    pub start: u64,
    pub last: u64,
    pub capability: u64,
    pub asid: u32,
}

/// `/dev/vduse/control`.
pub trait VduseControl: Send + Sync {
    /// `VDUSE_GET_API_VERSION`: the highest version the kernel supports.
    fn api_version(&self) -> Result<u64>;
    /// `VDUSE_SET_API_VERSION`: the version devices created on this handle use.
    fn set_api_version(&self, version: u64) -> Result<()>;
    /// `VDUSE_GET_FEATURES` (kernel 7.3+; ENOTTY before).
    fn vduse_features(&self) -> Result<u64>;
    /// `VDUSE_SET_FEATURES`: opt in to `VDUSE_F_QUEUE_READY` / `VDUSE_F_SUSPEND`.
    fn set_vduse_features(&self, features: u64) -> Result<()>;
    /// `VDUSE_CREATE_DEV`.
    fn create_device(&self, config: &DeviceConfig) -> Result<()>;
    /// Open `/dev/vduse/$NAME`.
    fn open_device(&self, name: &str) -> Result<Arc<dyn VduseDevice>>;
    /// `VDUSE_DESTROY_DEV`. EBUSY while the device is open or bound.
    fn destroy_device(&self, name: &str) -> Result<()>;
}

/// `/dev/vduse/$NAME`. Shared by the slow path and the poll threads, so the
/// calls take `&self` (the kernel serializes what needs it).
pub trait VduseDevice: Send + Sync {
    fn name(&self) -> &str;
    /// The API version the device was created with.
    fn api_version(&self) -> u64;
    /// `VDUSE_DEV_GET_FEATURES`: features the driver accepted.
    fn negotiated_features(&self) -> Result<u64>;
    /// `VDUSE_DEV_SET_CONFIG`.
    fn set_config(&self, offset: u32, data: &[u8]) -> Result<()>;
    /// `VDUSE_DEV_INJECT_CONFIG_IRQ`.
    fn inject_config_irq(&self) -> Result<()>;
    /// `VDUSE_VQ_SETUP`.
    fn setup_vq(&self, index: u32, max_size: u16, group: u32) -> Result<()>;
    /// `VDUSE_VQ_GET_INFO`.
    fn vq_info(&self, index: u32) -> Result<VqInfo>;
    /// `VDUSE_VQ_SETUP_KICKFD`; `None` de-assigns.
    fn set_vq_kickfd(&self, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<()>;
    /// `VDUSE_VQ_INJECT_IRQ`.
    fn inject_vq_irq(&self, index: u32) -> Result<()>;
    /// `VDUSE_IOTLB_GET_FD2` (API v1) or `VDUSE_IOTLB_GET_FD` (API v0, asid 0
    /// only): the first region of `asid` overlapping `[start, last]`.
    fn iotlb_get_fd(&self, asid: u32, start: u64, last: u64) -> Result<IotlbRegion>;
    /// `VDUSE_IOTLB_GET_INFO`.
    fn iotlb_info(&self, asid: u32, start: u64, last: u64) -> Result<IovaInfo>;
    /// read(2) of one control message. `Ok(None)` when none is pending.
    fn read_request(&self, buf: &mut [u8]) -> Result<Option<usize>>;
    /// write(2) of one response.
    fn write_response(&self, buf: &[u8]) -> Result<usize>;
    /// Readable when a control message is pending.
    fn request_fd(&self) -> BorrowedFd<'_>;
    /// Tell the driver the device needs a reset. A real kernel offers no way
    /// to do this (status is written only by the driver), so it returns
    /// `false` there; the model sets `DEVICE_NEEDS_RESET` and raises a config
    /// interrupt.
    fn signal_needs_reset(&self) -> bool;
}
