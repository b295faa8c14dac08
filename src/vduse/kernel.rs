//! The real kernel: `/dev/vduse/control` and `/dev/vduse/$NAME`.
//!
//! What the kernel does on its side (drivers/vdpa/vdpa_user/vduse_dev.c):
//! - Every open of the control device has its own state: an API version
//!   ("not asked" at first) and a set of VDUSE features. `GET_API_VERSION`
//!   turns "not asked" into the newest version (1 on 7.2+) and returns what
//!   the fd holds; `CREATE_DEV` turns "not asked" into 0. Each device keeps
//!   the version and features of the control fd that created it, so
//!   [`KernelControl`] mirrors that state to tell [`KernelDevice`] which
//!   version it has.
//! - `CREATE_DEV` copies the fixed 336-byte `vduse_dev_config`, then
//!   `config_size` more bytes right behind it: one buffer. The char device
//!   `/dev/vduse/$NAME` (same major as the control device, minor >= 1) is
//!   made by the driver core, so udev or devtmpfs may show it a moment later.
//! - The device fd has one opener at a time (EBUSY). `read(2)` hands out one
//!   152-byte request per call (EAGAIN when none with O_NONBLOCK); `write(2)`
//!   answers one by request id (ENOENT for an unknown id). Once the device
//!   is broken (an unanswered message timed out) every ioctl gives EPERM.
//! - `IOTLB_GET_FD(2)` returns a new fd (without close-on-exec) for the file
//!   behind the first mapping overlapping `[start, last]`; EINVAL when none.
//!   `GET_FD2` exists only for API >= 1 devices (ENOTTY otherwise).
//! - There is no call that lets a device set NEEDS_RESET in the status the
//!   driver reads.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::{DeviceConfig, IotlbRegion, IovaInfo, Result, VduseControl, VduseDevice, VduseError, VqInfo};
use crate::uapi::vduse::*;

/// Where the vduse module puts its control device.
pub const CONTROL_PATH: &str = "/dev/vduse/control";
/// How long `open_device` waits for `/dev/vduse/$NAME` to appear.
pub const DEVICE_APPEAR_WAIT: Duration = Duration::from_secs(1);
const DEVICE_APPEAR_POLL: Duration = Duration::from_millis(10);
/// The kernel's "version never asked or set" marker on a control fd.
const API_NOT_ASKED: u64 = u64::MAX;
/// `VIRTIO_F_RING_PACKED`: VQ_GET_INFO fills the packed view when negotiated.
const F_RING_PACKED: u64 = 1 << 34;

mod ioctl {
    use crate::uapi::vduse::*;

    nix::ioctl_read_bad!(get_api_version, VDUSE_GET_API_VERSION, u64);
    nix::ioctl_write_ptr_bad!(set_api_version, VDUSE_SET_API_VERSION, u64);
    // Variable length: the fixed config, then `config_size` bytes.
    nix::ioctl_write_ptr_bad!(create_dev, VDUSE_CREATE_DEV, u8);
    nix::ioctl_write_ptr_bad!(destroy_dev, VDUSE_DESTROY_DEV, [u8; VDUSE_NAME_MAX]);
    nix::ioctl_read_bad!(get_features, VDUSE_GET_FEATURES, u64);
    nix::ioctl_write_ptr_bad!(set_features, VDUSE_SET_FEATURES, u64);

    nix::ioctl_readwrite_bad!(iotlb_get_fd, VDUSE_IOTLB_GET_FD, vduse_iotlb_entry);
    nix::ioctl_readwrite_bad!(iotlb_get_fd2, VDUSE_IOTLB_GET_FD2, vduse_iotlb_entry_v2);
    nix::ioctl_readwrite_bad!(iotlb_get_info, VDUSE_IOTLB_GET_INFO, vduse_iova_info);
    nix::ioctl_read_bad!(dev_get_features, VDUSE_DEV_GET_FEATURES, u64);
    // Variable length: `vduse_config_data`, then `length` bytes.
    nix::ioctl_write_ptr_bad!(dev_set_config, VDUSE_DEV_SET_CONFIG, u8);
    nix::ioctl_none_bad!(dev_inject_config_irq, VDUSE_DEV_INJECT_CONFIG_IRQ);
    nix::ioctl_write_ptr_bad!(vq_setup, VDUSE_VQ_SETUP, vduse_vq_config);
    nix::ioctl_readwrite_bad!(vq_get_info, VDUSE_VQ_GET_INFO, vduse_vq_info);
    nix::ioctl_write_ptr_bad!(vq_setup_kickfd, VDUSE_VQ_SETUP_KICKFD, vduse_vq_eventfd);
    nix::ioctl_write_ptr_bad!(vq_inject_irq, VDUSE_VQ_INJECT_IRQ, u32);
}

/// An ioctl argument made of a fixed header followed by a variable tail
/// (`vduse_dev_config` + config, `vduse_config_data` + bytes,
/// `vhost_vdpa_config` + bytes), in one zeroed, 8-byte aligned buffer as the
/// kernel's `copy_from_user` of the header expects.
pub(crate) struct VarArg {
    words: Vec<u64>,
    len: usize,
}

impl VarArg {
    pub(crate) fn zeroed(len: usize) -> Self {
        VarArg { words: vec![0; len.div_ceil(8)], len }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes (len.div_ceil(8)
        // u64s), u8 has no alignment or validity requirements, and the slice
        // borrows self so the Vec cannot be freed or moved meanwhile.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; the unique borrow of self makes this the only
        // view of the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }

    /// Copy `data` in at byte offset `off` (bounds-checked by slicing).
    pub(crate) fn put(&mut self, off: usize, data: &[u8]) {
        self.bytes_mut()[off..off + data.len()].copy_from_slice(data);
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }
}

/// The `CREATE_DEV` argument for `config`: the fixed `vduse_dev_config`
/// (name NUL-terminated, reserved zero) followed by the config bytes.
pub(crate) fn create_dev_arg(config: &DeviceConfig) -> Result<VarArg> {
    let einval = || VduseError::os("VDUSE_CREATE_DEV", Errno::EINVAL);
    let name = config.name.as_bytes();
    // The kernel would cut a long name at 255 bytes and create a device with
    // another name than asked; an inner NUL would do the same.
    if name.is_empty() || name.len() >= VDUSE_NAME_MAX || name.contains(&0) {
        return Err(einval());
    }
    let config_size = u32::try_from(config.config.len()).map_err(|_| einval())?;
    let fixed = std::mem::size_of::<vduse_dev_config>();
    let mut arg = VarArg::zeroed(fixed + config.config.len());
    arg.put(std::mem::offset_of!(vduse_dev_config, name), name);
    arg.put(std::mem::offset_of!(vduse_dev_config, vendor_id), &config.vendor_id.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, device_id), &config.device_id.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, features), &config.features.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, vq_num), &config.vq_num.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, vq_align), &config.vq_align.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, ngroups), &config.ngroups.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, nas), &config.nas.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_dev_config, config_size), &config_size.to_ne_bytes());
    arg.put(fixed, &config.config);
    Ok(arg)
}

/// The `DEV_SET_CONFIG` argument: `vduse_config_data` followed by `data`.
pub(crate) fn set_config_arg(offset: u32, data: &[u8]) -> Result<VarArg> {
    let length = u32::try_from(data.len()).map_err(|_| VduseError::os("VDUSE_DEV_SET_CONFIG", Errno::EINVAL))?;
    let fixed = std::mem::size_of::<vduse_config_data>();
    let mut arg = VarArg::zeroed(fixed + data.len());
    arg.put(std::mem::offset_of!(vduse_config_data, offset), &offset.to_ne_bytes());
    arg.put(std::mem::offset_of!(vduse_config_data, length), &length.to_ne_bytes());
    arg.put(fixed, data);
    Ok(arg)
}

fn name_arg(op: &'static str, name: &str) -> Result<[u8; VDUSE_NAME_MAX]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= VDUSE_NAME_MAX || bytes.contains(&0) {
        return Err(VduseError::os(op, Errno::EINVAL));
    }
    let mut buf = [0u8; VDUSE_NAME_MAX];
    buf[..bytes.len()].copy_from_slice(bytes);
    Ok(buf)
}

/// The major number `/proc/devices` lists for char driver `driver`.
pub(crate) fn chrdev_major(proc_devices: &str, driver: &str) -> Option<u64> {
    proc_devices
        .lines()
        .skip_while(|l| l.trim() != "Character devices:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let major = it.next()?.parse().ok()?;
            (it.next()? == driver).then_some(major)
        })
}

/// Why an opened path is not the char device of `driver`, if it is not.
/// Without a readable `/proc/devices` only the file type is checked.
pub(crate) fn not_chrdev_of(file: &File, driver: &str) -> Option<String> {
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Some(format!("fstat failed: {e}")),
    };
    if !meta.file_type().is_char_device() {
        return Some("not a character device".into());
    }
    let Ok(devices) = std::fs::read_to_string("/proc/devices") else { return None };
    let major = nix::sys::stat::major(meta.rdev());
    match chrdev_major(&devices, driver) {
        None => Some(format!("no {driver} driver registered (major {major} belongs to another driver)")),
        Some(m) if m != major => Some(format!("major {major} is not {driver}'s ({m})")),
        Some(_) => None,
    }
}

/// How an `open(2)` of the control device fails, in [`VduseError`] terms.
pub(crate) fn control_open_error(errno: Errno, path: &Path) -> VduseError {
    match errno {
        // ENXIO/ENODEV: a static node whose driver is not there.
        Errno::ENOENT | Errno::ENXIO | Errno::ENODEV => VduseError::NoModule,
        Errno::EACCES | Errno::EPERM => VduseError::PermissionDenied(path.display().to_string()),
        e => VduseError::os("open /dev/vduse/control", e),
    }
}

/// How an `open(2)` of `/dev/vduse/$NAME` fails, in [`VduseError`] terms.
pub(crate) fn device_open_error(errno: Errno, path: &Path, name: &str) -> VduseError {
    match errno {
        // ENODEV: the node is there but its minor no longer has a device.
        Errno::ENOENT | Errno::ENODEV | Errno::ENXIO => VduseError::NoDevice(name.to_owned()),
        Errno::EACCES | Errno::EPERM => VduseError::PermissionDenied(path.display().to_string()),
        e => VduseError::os("open /dev/vduse/$NAME", e),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// An ioctl error on the device fd. Once the kernel marks the device broken
/// (a message timed out) every ioctl there fails with EPERM, and nothing else
/// on the device fd gives EPERM.
fn dev_err(op: &'static str, errno: Errno) -> VduseError {
    match errno {
        Errno::EPERM => VduseError::Broken,
        e => VduseError::os(op, e),
    }
}

/// Retry a syscall that a signal interrupted.
fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

struct ControlState {
    /// What the kernel holds for this control fd (`API_NOT_ASKED` at first).
    api_version: u64,
    /// The version each device created through this handle got.
    created: HashMap<String, u64>,
}

/// `/dev/vduse/control` on a real kernel.
pub struct KernelControl {
    fd: OwnedFd,
    dev_dir: PathBuf,
    state: Mutex<ControlState>,
}

impl KernelControl {
    /// Open [`CONTROL_PATH`].
    pub fn open() -> Result<Self> {
        Self::open_at(CONTROL_PATH)
    }

    /// Open the control device at `path`; devices are looked for in the same
    /// directory.
    pub fn open_at(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| control_open_error(io_errno(&e), path))?;
        if let Some(why) = not_chrdev_of(&file, "vduse") {
            log::error!("{} is not the VDUSE control device: {why}", path.display());
            return Err(VduseError::os("opening the VDUSE control device (the path is another file)", Errno::ENODEV));
        }
        let dev_dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Ok(KernelControl {
            fd: file.into(),
            dev_dir,
            state: Mutex::new(ControlState { api_version: API_NOT_ASKED, created: HashMap::new() }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // A panic elsewhere cannot leave ControlState half-updated in a way
        // that matters more than refusing all further calls would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Open `/dev/vduse/$name`, waiting up to `wait` for it to appear.
    pub fn open_device_wait(&self, name: &str, wait: Duration) -> Result<Arc<KernelDevice>> {
        let known = self.state().created.get(name).copied();
        let path = device_path(&self.dev_dir, name)?;
        let file = open_device_file(&path, name, wait)?;
        let api_version = match known {
            Some(v) => v,
            None => {
                let v = probe_api_version(&file);
                log::info!("VDUSE device {name} was not created by this handle; probed API version {v}");
                v
            }
        };
        Ok(Arc::new(KernelDevice::from_fd(file.into(), name, api_version)))
    }
}

fn device_path(dir: &Path, name: &str) -> Result<PathBuf> {
    // The name becomes a path component: refuse anything that would leave
    // the directory or reach the control node.
    if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." || name == "control"
    {
        return Err(VduseError::NoDevice(name.to_owned()));
    }
    Ok(dir.join(name))
}

fn open_device_file(path: &Path, name: &str, wait: Duration) -> Result<File> {
    let deadline = Instant::now() + wait;
    let file = loop {
        match OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path) {
            Ok(f) => break f,
            Err(e) if io_errno(&e) == Errno::ENOENT && Instant::now() < deadline => {
                std::thread::sleep(DEVICE_APPEAR_POLL);
            }
            Err(e) => return Err(device_open_error(io_errno(&e), path, name)),
        }
    };
    if let Some(why) = not_chrdev_of(&file, "vduse") {
        log::error!("{} is not a VDUSE device: {why}", path.display());
        return Err(VduseError::os("opening a VDUSE device (the path is another file)", Errno::ENODEV));
    }
    Ok(file)
}

/// The API version of a device not created through this handle: `GET_FD2`
/// with `start > last` is EINVAL on an API-1 device and ENOTTY on an API-0
/// one (or a kernel without it), and changes nothing either way.
fn probe_api_version(file: &File) -> u64 {
    let mut entry = vduse_iotlb_entry_v2 { start: 1, last: 0, ..Default::default() };
    // SAFETY: the fd is open; `entry` is a live vduse_iotlb_entry_v2, the size
    // the request number encodes, and nothing keeps a pointer to it.
    let r = unsafe { ioctl::iotlb_get_fd2(file.as_raw_fd(), &mut entry) };
    match r {
        Err(Errno::ENOTTY) => VDUSE_API_VERSION_0,
        Err(Errno::EINVAL) => VDUSE_API_VERSION_1,
        Ok(fd) => {
            // Not expected for an empty range; do not leak what came back.
            // SAFETY: a successful GET_FD2 returns a new fd that we own.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
            VDUSE_API_VERSION_1
        }
        Err(e) => {
            log::warn!("cannot probe the VDUSE API version ({e}); assuming 0");
            VDUSE_API_VERSION_0
        }
    }
}

impl VduseControl for KernelControl {
    fn api_version(&self) -> Result<u64> {
        let mut st = self.state();
        let mut v = 0u64;
        // SAFETY: the fd is open; `v` is a live u64, the size the request encodes.
        unsafe { ioctl::get_api_version(self.raw(), &mut v) }
            .map_err(|e| VduseError::os("VDUSE_GET_API_VERSION", e))?;
        // The kernel now holds `v` for this fd (it fixed "not asked" to it).
        st.api_version = v;
        Ok(v)
    }

    fn set_api_version(&self, version: u64) -> Result<()> {
        let mut st = self.state();
        // SAFETY: the fd is open; `version` is a live u64 the kernel only reads.
        unsafe { ioctl::set_api_version(self.raw(), &version) }
            .map_err(|e| VduseError::os("VDUSE_SET_API_VERSION", e))?;
        st.api_version = version;
        Ok(())
    }

    fn vduse_features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: the fd is open; `f` is a live u64, the size the request encodes.
        match unsafe { ioctl::get_features(self.raw(), &mut f) } {
            Ok(_) => Ok(f),
            // The control fd answers EINVAL to ioctls it does not know (before
            // 7.3) and GET_FEATURES has no other EINVAL: report ENOTTY as a
            // device fd would.
            Err(Errno::EINVAL) => Err(VduseError::os("VDUSE_GET_FEATURES", Errno::ENOTTY)),
            Err(e) => Err(VduseError::os("VDUSE_GET_FEATURES", e)),
        }
    }

    fn set_vduse_features(&self, features: u64) -> Result<()> {
        // SAFETY: the fd is open; `features` is a live u64 the kernel only reads.
        unsafe { ioctl::set_features(self.raw(), &features) }.map_err(|e| VduseError::os("VDUSE_SET_FEATURES", e))?;
        Ok(())
    }

    fn create_device(&self, config: &DeviceConfig) -> Result<()> {
        let arg = create_dev_arg(config)?;
        let mut st = self.state();
        // SAFETY: the fd is open; `arg` is a live buffer of the fixed
        // vduse_dev_config plus exactly config_size bytes, 8-byte aligned, and
        // the kernel only reads it during the call.
        let r = unsafe { ioctl::create_dev(self.raw(), arg.as_ptr()) };
        // The kernel fixes "not asked" to 0 before it validates anything.
        if st.api_version == API_NOT_ASKED && r != Err(Errno::EFAULT) {
            st.api_version = VDUSE_API_VERSION_0;
        }
        match r {
            Ok(_) => {
                let v = st.api_version;
                st.created.insert(config.name.clone(), v);
                log::debug!("created VDUSE device {} with API version {v}", config.name);
                Ok(())
            }
            Err(Errno::EEXIST) => Err(VduseError::NameInUse(config.name.clone())),
            // A net device needs CAP_NET_ADMIN in the initial user namespace.
            Err(Errno::EPERM) => {
                Err(VduseError::PermissionDenied(format!("{CONTROL_PATH} (VDUSE_CREATE_DEV of {:?})", config.name)))
            }
            Err(e) => Err(VduseError::os("VDUSE_CREATE_DEV", e)),
        }
    }

    fn open_device(&self, name: &str) -> Result<Arc<dyn VduseDevice>> {
        let dev: Arc<dyn VduseDevice> = self.open_device_wait(name, DEVICE_APPEAR_WAIT)?;
        Ok(dev)
    }

    fn destroy_device(&self, name: &str) -> Result<()> {
        let buf = name_arg("VDUSE_DESTROY_DEV", name)?;
        let mut st = self.state();
        // SAFETY: the fd is open; `buf` is a live NUL-terminated 256-byte
        // array, the size the request encodes, only read by the kernel.
        unsafe { ioctl::destroy_dev(self.raw(), &buf) }.map_err(|e| VduseError::os("VDUSE_DESTROY_DEV", e))?;
        st.created.remove(name);
        Ok(())
    }
}

/// `/dev/vduse/$NAME` on a real kernel, opened O_RDWR | O_NONBLOCK | O_CLOEXEC.
pub struct KernelDevice {
    fd: OwnedFd,
    name: String,
    api_version: u64,
    warned_needs_reset: AtomicBool,
}

impl KernelDevice {
    /// Open `path` as the device `name` created with `api_version`, waiting
    /// up to `wait` for the node to appear.
    pub fn open_at(path: impl AsRef<Path>, name: &str, api_version: u64, wait: Duration) -> Result<Self> {
        let file = open_device_file(path.as_ref(), name, wait)?;
        Ok(Self::from_fd(file.into(), name, api_version))
    }

    fn from_fd(fd: OwnedFd, name: &str, api_version: u64) -> Self {
        KernelDevice { fd, name: name.to_owned(), api_version, warned_needs_reset: AtomicBool::new(false) }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wrap the fd GET_FD(2) returned; the kernel does not set close-on-exec.
    fn adopt_fd(&self, op: &'static str, raw: RawFd) -> Result<OwnedFd> {
        if raw < 0 {
            return Err(VduseError::os(op, Errno::EBADF));
        }
        // SAFETY: a successful GET_FD(2) returns a fresh fd installed for this
        // process that nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| VduseError::os(op, e))?;
        Ok(fd)
    }
}

impl VduseDevice for KernelDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn api_version(&self) -> u64 {
        self.api_version
    }

    fn negotiated_features(&self) -> Result<u64> {
        let mut f = 0u64;
        // SAFETY: the fd is open; `f` is a live u64, the size the request encodes.
        unsafe { ioctl::dev_get_features(self.raw(), &mut f) }.map_err(|e| dev_err("VDUSE_DEV_GET_FEATURES", e))?;
        Ok(f)
    }

    fn set_config(&self, offset: u32, data: &[u8]) -> Result<()> {
        let arg = set_config_arg(offset, data)?;
        // SAFETY: the fd is open; `arg` holds vduse_config_data followed by
        // exactly `length` bytes, aligned, and is only read during the call.
        unsafe { ioctl::dev_set_config(self.raw(), arg.as_ptr()) }.map_err(|e| dev_err("VDUSE_DEV_SET_CONFIG", e))?;
        Ok(())
    }

    fn inject_config_irq(&self) -> Result<()> {
        // SAFETY: the fd is open and the request takes no argument.
        unsafe { ioctl::dev_inject_config_irq(self.raw()) }.map_err(|e| dev_err("VDUSE_DEV_INJECT_CONFIG_IRQ", e))?;
        Ok(())
    }

    fn setup_vq(&self, index: u32, max_size: u16, group: u32) -> Result<()> {
        let cfg = vduse_vq_config { index, max_size, group, ..Default::default() };
        // SAFETY: the fd is open; `cfg` is a live vduse_vq_config (reserved
        // fields zero), the size the request encodes, only read by the kernel.
        unsafe { ioctl::vq_setup(self.raw(), &cfg) }.map_err(|e| dev_err("VDUSE_VQ_SETUP", e))?;
        Ok(())
    }

    fn vq_info(&self, index: u32) -> Result<VqInfo> {
        let mut info = vduse_vq_info { index, ..Default::default() };
        // SAFETY: the fd is open; `info` is a live vduse_vq_info, the size the
        // request encodes, and the kernel writes only within it.
        unsafe { ioctl::vq_get_info(self.raw(), &mut info) }.map_err(|e| dev_err("VDUSE_VQ_GET_INFO", e))?;
        // The kernel fills the packed view when RING_PACKED was negotiated and
        // the split view otherwise.
        let packed = self.negotiated_features()? & F_RING_PACKED != 0;
        // SAFETY: both union views are plain integers and the whole union was
        // zero-initialized by Default, so either view is initialized.
        let (split, pk) = unsafe { (info.state.split, info.state.packed) };
        let avail_index = if packed {
            // vhost's encoding: the wrap counter in bit 15.
            (pk.last_avail_idx & 0x7fff) | ((pk.last_avail_counter & 1) << 15)
        } else {
            split.avail_index
        };
        Ok(VqInfo {
            index: info.index,
            num: info.num,
            desc_addr: info.desc_addr,
            driver_addr: info.driver_addr,
            device_addr: info.device_addr,
            avail_index,
            ready: info.ready != 0,
        })
    }

    fn set_vq_kickfd(&self, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let ev = vduse_vq_eventfd { index, fd: fd.map_or(VDUSE_EVENTFD_DEASSIGN, |f| f.as_raw_fd()) };
        // SAFETY: the fd is open; `ev` is a live vduse_vq_eventfd, only read by
        // the kernel; the eventfd it names is borrowed for the call.
        unsafe { ioctl::vq_setup_kickfd(self.raw(), &ev) }.map_err(|e| dev_err("VDUSE_VQ_SETUP_KICKFD", e))?;
        Ok(())
    }

    fn inject_vq_irq(&self, index: u32) -> Result<()> {
        // SAFETY: the fd is open; `index` is a live u32 the kernel only reads.
        unsafe { ioctl::vq_inject_irq(self.raw(), &index) }.map_err(|e| dev_err("VDUSE_VQ_INJECT_IRQ", e))?;
        Ok(())
    }

    fn iotlb_get_fd(&self, asid: u32, start: u64, last: u64) -> Result<IotlbRegion> {
        if self.api_version >= VDUSE_API_VERSION_1 {
            let mut e = vduse_iotlb_entry_v2 { start, last, asid, ..Default::default() };
            // SAFETY: the fd is open; `e` is a live vduse_iotlb_entry_v2 with
            // zero reserved fields, the size the request encodes.
            let raw = unsafe { ioctl::iotlb_get_fd2(self.raw(), &mut e) }
                .map_err(|err| dev_err("VDUSE_IOTLB_GET_FD2", err))?;
            let fd = self.adopt_fd("VDUSE_IOTLB_GET_FD2", raw)?;
            Ok(IotlbRegion { fd, offset: e.offset, start: e.start, last: e.last, perm: e.perm })
        } else {
            // One address space only: any other asid has no regions.
            if asid != 0 {
                return Err(VduseError::os("VDUSE_IOTLB_GET_FD", Errno::EINVAL));
            }
            let mut e = vduse_iotlb_entry { start, last, ..Default::default() };
            // SAFETY: the fd is open; `e` is a live vduse_iotlb_entry, the size
            // the request encodes.
            let raw =
                unsafe { ioctl::iotlb_get_fd(self.raw(), &mut e) }.map_err(|err| dev_err("VDUSE_IOTLB_GET_FD", err))?;
            let fd = self.adopt_fd("VDUSE_IOTLB_GET_FD", raw)?;
            Ok(IotlbRegion { fd, offset: e.offset, start: e.start, last: e.last, perm: e.perm })
        }
    }

    fn iotlb_info(&self, asid: u32, start: u64, last: u64) -> Result<IovaInfo> {
        if self.api_version < VDUSE_API_VERSION_1 && asid != 0 {
            return Err(VduseError::os("VDUSE_IOTLB_GET_INFO", Errno::EINVAL));
        }
        let mut info = vduse_iova_info { start, last, asid, ..Default::default() };
        // SAFETY: the fd is open; `info` is a live vduse_iova_info with zero
        // reserved fields, the size the request encodes.
        match unsafe { ioctl::iotlb_get_info(self.raw(), &mut info) } {
            Ok(_) => Ok(IovaInfo { start: info.start, last: info.last, capability: info.capability, asid: info.asid }),
            // Our buffer is valid, so EFAULT is the kernel's answer to a bad
            // asid on this ioctl: report it as the other IOTLB calls do.
            Err(Errno::EFAULT) => Err(VduseError::os("VDUSE_IOTLB_GET_INFO", Errno::EINVAL)),
            Err(e) => Err(dev_err("VDUSE_IOTLB_GET_INFO", e)),
        }
    }

    fn read_request(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        match retry_eintr(|| nix::unistd::read(self.raw(), buf)) {
            Ok(n) => Ok(Some(n)),
            Err(Errno::EAGAIN) => Ok(None),
            Err(e) => Err(VduseError::os("read VDUSE request", e)),
        }
    }

    fn write_response(&self, buf: &[u8]) -> Result<usize> {
        retry_eintr(|| nix::unistd::write(&self.fd, buf)).map_err(|e| VduseError::os("write VDUSE response", e))
    }

    fn request_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn signal_needs_reset(&self) -> bool {
        if !self.warned_needs_reset.swap(true, Ordering::Relaxed) {
            log::warn!(
                "VDUSE device {}: the kernel offers no way to set NEEDS_RESET; the queue is stopped instead",
                self.name
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vduse-kernel-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn missing_control_path_means_no_module() {
        let d = tmpdir("nomod");
        let err = KernelControl::open_at(d.join("control")).err().expect("opening a missing path must fail");
        assert!(matches!(err, VduseError::NoModule), "{err:?}");
        assert!(err.to_string().contains("module vduse not loaded"), "{err}");
        assert_eq!(err.errno(), Errno::ENOENT);
    }

    #[test]
    fn a_regular_file_is_not_the_control_device() {
        let d = tmpdir("regular");
        let p = d.join("control");
        std::fs::write(&p, b"x").unwrap();
        let err = KernelControl::open_at(&p).err().expect("a regular file is not vduse");
        assert!(matches!(err, VduseError::Os { errno: Errno::ENODEV, .. }), "{err:?}");
        assert!(err.to_string().contains("VDUSE control device"), "{err}");
    }

    #[test]
    fn another_char_device_is_not_the_control_device() {
        // /dev/null is a char device of the "mem" driver, never vduse.
        let err = KernelControl::open_at("/dev/null").err().expect("/dev/null is not vduse");
        assert!(matches!(err, VduseError::Os { errno: Errno::ENODEV, .. }), "{err:?}");
    }

    #[test]
    fn open_errors_map_to_vduse_errors() {
        let p = Path::new("/dev/vduse/control");
        assert!(matches!(control_open_error(Errno::ENOENT, p), VduseError::NoModule));
        assert!(matches!(control_open_error(Errno::ENXIO, p), VduseError::NoModule));
        match control_open_error(Errno::EACCES, p) {
            VduseError::PermissionDenied(s) => assert_eq!(s, "/dev/vduse/control"),
            e => panic!("{e:?}"),
        }
        assert!(matches!(control_open_error(Errno::EPERM, p), VduseError::PermissionDenied(_)));
        assert!(matches!(control_open_error(Errno::EMFILE, p), VduseError::Os { errno: Errno::EMFILE, .. }));

        let d = Path::new("/dev/vduse/vnet0");
        assert!(matches!(device_open_error(Errno::ENOENT, d, "vnet0"), VduseError::NoDevice(n) if n == "vnet0"));
        assert!(matches!(device_open_error(Errno::EACCES, d, "vnet0"), VduseError::PermissionDenied(_)));
        assert!(matches!(device_open_error(Errno::EBUSY, d, "vnet0"), VduseError::Os { errno: Errno::EBUSY, .. }));
    }

    #[test]
    fn eperm_on_a_device_ioctl_means_broken() {
        assert!(matches!(dev_err("VDUSE_VQ_SETUP", Errno::EPERM), VduseError::Broken));
        assert!(matches!(dev_err("VDUSE_VQ_SETUP", Errno::EINVAL), VduseError::Os { op: "VDUSE_VQ_SETUP", .. }));
    }

    #[test]
    fn missing_device_node_is_no_device_after_a_bounded_wait() {
        let d = tmpdir("nodev");
        let t = Instant::now();
        let err = KernelDevice::open_at(d.join("vnet0"), "vnet0", 1, Duration::from_millis(50)).err().unwrap();
        assert!(matches!(err, VduseError::NoDevice(ref n) if n == "vnet0"), "{err:?}");
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn device_names_cannot_escape_the_directory() {
        let dir = Path::new("/dev/vduse");
        for bad in ["", "..", ".", "a/b", "control"] {
            assert!(matches!(device_path(dir, bad), Err(VduseError::NoDevice(_))), "{bad:?}");
        }
        assert_eq!(device_path(dir, "vnet0").unwrap(), Path::new("/dev/vduse/vnet0"));
    }

    #[test]
    fn proc_devices_parsing_finds_char_majors_only() {
        let text = "Character devices:\n  1 mem\n 10 misc\n237 vduse\n\nBlock devices:\n  8 sd\n240 vduse\n";
        assert_eq!(chrdev_major(text, "vduse"), Some(237));
        assert_eq!(chrdev_major(text, "misc"), Some(10));
        assert_eq!(chrdev_major(text, "sd"), None);
        assert_eq!(chrdev_major(text, "vhost-vdpa"), None);
    }

    #[test]
    fn create_dev_argument_has_the_kernel_layout() {
        let config = DeviceConfig {
            name: "vnet0".into(),
            vendor_id: 0x1af4,
            device_id: 1,
            features: (1 << 32) | (1 << 33) | (1 << 5),
            vq_num: 3,
            vq_align: 4096,
            ngroups: 2,
            nas: 2,
            config: (1..=12).collect(),
        };
        let arg = create_dev_arg(&config).unwrap();
        assert_eq!(arg.as_ptr() as usize % 8, 0, "the header must be 8-byte aligned");
        assert_eq!(arg.bytes().len(), 336 + 12);
        let b = arg.bytes();
        assert_eq!(&b[..5], b"vnet0");
        assert!(b[5..256].iter().all(|&x| x == 0), "name is NUL-padded");
        assert_eq!(u32_at(b, 256), 0x1af4);
        assert_eq!(u32_at(b, 260), 1);
        assert_eq!(u64_at(b, 264), (1 << 32) | (1 << 33) | (1 << 5));
        assert_eq!(u32_at(b, 272), 3);
        assert_eq!(u32_at(b, 276), 4096);
        assert_eq!(u32_at(b, 280), 2);
        assert_eq!(u32_at(b, 284), 2);
        assert!(b[288..332].iter().all(|&x| x == 0), "reserved must be zero");
        assert_eq!(u32_at(b, 332), 12);
        assert_eq!(&b[336..348], &(1..=12).collect::<Vec<u8>>()[..]);
    }

    #[test]
    fn create_dev_argument_refuses_names_the_kernel_would_change() {
        let long = DeviceConfig { name: "x".repeat(256), ..Default::default() };
        assert!(matches!(create_dev_arg(&long), Err(VduseError::Os { errno: Errno::EINVAL, .. })));
        let nul = DeviceConfig { name: "a\0b".into(), ..Default::default() };
        assert!(matches!(create_dev_arg(&nul), Err(VduseError::Os { errno: Errno::EINVAL, .. })));
        let max = DeviceConfig { name: "y".repeat(255), ..Default::default() };
        let arg = create_dev_arg(&max).unwrap();
        assert_eq!(arg.bytes()[254], b'y');
        assert_eq!(arg.bytes()[255], 0);
        assert_eq!(arg.bytes().len(), 336, "no config bytes means just the fixed part");
    }

    #[test]
    fn set_config_argument_has_the_kernel_layout() {
        let arg = set_config_arg(6, &[0xaa, 0xbb, 0xcc]).unwrap();
        assert_eq!(arg.as_ptr() as usize % 8, 0);
        let b = arg.bytes();
        assert_eq!(b.len(), 11);
        assert_eq!(u32_at(b, 0), 6);
        assert_eq!(u32_at(b, 4), 3);
        assert_eq!(&b[8..11], &[0xaa, 0xbb, 0xcc]);
    }

    fn pipe_device(api: u64) -> (KernelDevice, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (KernelDevice::from_fd(r, "t", api), w)
    }

    #[test]
    fn read_request_reports_nothing_pending_as_none() {
        let (dev, w) = pipe_device(1);
        let mut buf = [0u8; REQUEST_SIZE];
        assert_eq!(dev.read_request(&mut buf).unwrap(), None);
        nix::unistd::write(&w, &[7u8; REQUEST_SIZE]).unwrap();
        assert_eq!(dev.read_request(&mut buf).unwrap(), Some(REQUEST_SIZE));
        assert_eq!(buf[0], 7);
        assert_eq!(dev.request_fd().as_raw_fd(), dev.fd.as_raw_fd());
    }

    #[test]
    fn api0_device_refuses_other_asids_without_a_syscall() {
        // The fd is a pipe: a syscall would give ENOTTY, not EINVAL.
        let (dev, _w) = pipe_device(0);
        assert_eq!(dev.api_version(), 0);
        let err = dev.iotlb_get_fd(1, 0, 4095).unwrap_err();
        assert!(matches!(err, VduseError::Os { op: "VDUSE_IOTLB_GET_FD", errno: Errno::EINVAL }), "{err:?}");
        // asid 0 does reach the kernel, which knows nothing of this ioctl.
        let err = dev.iotlb_get_fd(0, 0, 4095).unwrap_err();
        assert!(matches!(err, VduseError::Os { op: "VDUSE_IOTLB_GET_FD", errno: Errno::ENOTTY }), "{err:?}");
        let (dev1, _w1) = pipe_device(1);
        let err = dev1.iotlb_get_fd(1, 0, 4095).unwrap_err();
        assert!(matches!(err, VduseError::Os { op: "VDUSE_IOTLB_GET_FD2", .. }), "{err:?}");
    }

    #[test]
    fn probe_on_a_non_vduse_fd_falls_back_to_api_0() {
        let f = File::open("/dev/null").unwrap();
        assert_eq!(probe_api_version(&f), 0);
    }

    #[test]
    fn needs_reset_is_not_available_on_a_real_kernel() {
        let (dev, _w) = pipe_device(1);
        assert!(!dev.signal_needs_reset());
        assert!(!dev.signal_needs_reset());
        assert!(dev.warned_needs_reset.load(Ordering::Relaxed));
    }
}
