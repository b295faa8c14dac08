//! The embedded kernel model: plays the kernel's VDUSE module where there is
//! no `/dev/vduse`.
//!
//! [`KernelModel`] is one "kernel": [`KernelModel::control`] opens its
//! `/dev/vduse/control` (device face, [`crate::vduse::VduseControl`] and
//! [`crate::vduse::VduseDevice`]), and [`KernelModel::attach_vhost_vdpa`]
//! does `vdpa dev add` + bind to vhost_vdpa + open of `/dev/vhost-vdpa-N`
//! (driver face, [`ModelDriver`], a [`crate::driver::DriverTransport`]).
//!
//! The rules follow the kernel 7.3 sources (drivers/vdpa/vdpa_user/
//! vduse_dev.c and drivers/vhost/vdpa.c); see /work/research/kernel-facts.md.
//! Where the model differs on purpose it says so next to the code (the
//! project's "broken" rule: device-face calls fail with
//! [`VduseError::Broken`] once a message timed out).

mod device;
mod driver;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;

use super::{DeviceConfig, Request, Result, VduseControl, VduseDevice, VduseError};
use crate::uapi::vduse::{VDUSE_F_QUEUE_READY, VDUSE_F_SUSPEND};
use device::{Dev, DeviceHandle};
pub use driver::ModelDriver;

/// `VDUSE_MSG_DEFAULT_TIMEOUT`: the kernel waits 30 s for a reply.
pub const KERNEL_MSG_TIMEOUT: Duration = Duration::from_secs(30);

/// `VIRTIO_NET_F_CTRL_VQ`, refused at CREATE_DEV by stock 6.12..7.3.
pub const NET_F_CTRL_VQ: u64 = 1 << 17;

/// Which kernel the model plays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// Highest VDUSE API version: 1 for kernel 7.x, 0 for 6.12.
    pub max_api_version: u64,
    /// What `VDUSE_GET_FEATURES` returns; `None` for kernels without that
    /// ioctl (7.2, 6.12), where the control fd answers EINVAL to it.
    pub vduse_features: Option<u64>,
    /// Net feature bits refused at CREATE_DEV (`features_is_valid`).
    pub refused_net_features: u64,
    /// How long a control message waits for its reply before the device is
    /// marked broken. `Duration::ZERO` waits forever, as the kernel does for
    /// `msg_timeout` 0.
    pub msg_timeout: Duration,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::kernel_7_3()
    }
}

impl ModelConfig {
    pub fn kernel_6_12() -> Self {
        ModelConfig {
            max_api_version: 0,
            vduse_features: None,
            refused_net_features: NET_F_CTRL_VQ,
            msg_timeout: KERNEL_MSG_TIMEOUT,
        }
    }
    pub fn kernel_7_2() -> Self {
        ModelConfig { max_api_version: 1, ..Self::kernel_6_12() }
    }
    pub fn kernel_7_3() -> Self {
        ModelConfig { vduse_features: Some(1 << VDUSE_F_QUEUE_READY | 1 << VDUSE_F_SUSPEND), ..Self::kernel_7_2() }
    }
    /// 7.3 with the vduse.ko that has the CTRL_VQ check removed.
    pub fn patched_7_3() -> Self {
        ModelConfig { refused_net_features: 0, ..Self::kernel_7_3() }
    }
    /// Same kernel, another reply timeout (tests use ~200 ms).
    pub fn with_timeout(self, msg_timeout: Duration) -> Self {
        ModelConfig { msg_timeout, ..self }
    }
}

/// One control message as the device saw it, with its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedMessage {
    pub request: Request,
    pub request_id: u32,
    /// The reply's `result` (`VDUSE_REQ_RESULT_*`); `None` when the message
    /// timed out.
    pub result: Option<u32>,
    pub reply_payload: [u8; 128],
}

struct Registry {
    devices: HashMap<String, Arc<Dev>>,
    /// Logs of destroyed devices, so tests can read them afterwards.
    retired_logs: HashMap<String, Vec<LoggedMessage>>,
}

/// One kernel with its VDUSE module and vhost-vdpa. Shared as `Arc`.
pub struct KernelModel {
    cfg: ModelConfig,
    registry: Mutex<Registry>,
}

/// Lock ignoring poison: the state stays consistent at every unlock, and a
/// panicking test thread must not take the whole model down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelModel {
    pub fn new(cfg: ModelConfig) -> Arc<KernelModel> {
        Arc::new(KernelModel {
            cfg,
            registry: Mutex::new(Registry { devices: HashMap::new(), retired_logs: HashMap::new() }),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Like `open("/dev/vduse/control")`: the handle has its own API version
    /// (unset until asked or set, as in the kernel) and VDUSE features.
    pub fn control(self: &Arc<Self>) -> Arc<dyn VduseControl> {
        Arc::new(ControlHandle { model: self.clone(), st: Mutex::new(ControlState { api: None, features: 0 }) })
    }

    fn find(&self, name: &str) -> Option<Arc<Dev>> {
        lock(&self.registry).devices.get(name).cloned()
    }

    /// `vdpa dev add name NAME mgmtdev vduse`, bind to vhost_vdpa, and open
    /// `/dev/vhost-vdpa-N`. The open resets the device (a SET_STATUS 0
    /// message), so the device must be answering messages already; if the
    /// reset fails the attach is undone and the error returned.
    pub fn attach_vhost_vdpa(self: &Arc<Self>, name: &str) -> Result<Arc<ModelDriver>> {
        let dev = {
            let reg = lock(&self.registry);
            // vdpa_dev_add: an unknown name or a vq without VQ_SETUP -> EINVAL.
            let dev = reg.devices.get(name).cloned().ok_or(VduseError::os("vdpa dev add", Errno::EINVAL))?;
            dev.vdpa_add()?;
            dev
        };
        match ModelDriver::open(dev.clone()) {
            Ok(d) => Ok(d),
            Err(e) => {
                dev.vdpa_del();
                Err(e)
            }
        }
    }

    /// Close the vhost-vdpa fd (which resets the device: SET_STATUS 0),
    /// unbind, and `vdpa dev del`. The driver face stops working (EBADF).
    pub fn detach(&self, name: &str) -> Result<()> {
        let dev = self.find(name).ok_or_else(|| VduseError::NoDevice(name.to_string()))?;
        dev.detach_driver()
    }

    /// The messages logged for `name` so far, forgetting them (a soak would
    /// otherwise keep every message it ever sent). `None` for an unknown
    /// device or while a message is in flight.
    pub fn take_message_log(&self, name: &str) -> Option<Vec<LoggedMessage>> {
        self.find(name)?.take_log()
    }

    /// Every control message sent to the device, in order, with its reply.
    pub fn message_log(&self, name: &str) -> Vec<LoggedMessage> {
        let reg = lock(&self.registry);
        match reg.devices.get(name) {
            Some(dev) => dev.log(),
            None => reg.retired_logs.get(name).cloned().unwrap_or_default(),
        }
    }
}

struct ControlState {
    /// `None` = `VDUSE_API_VERSION_NOT_ASKED`.
    api: Option<u64>,
    features: u64,
}

struct ControlHandle {
    model: Arc<KernelModel>,
    st: Mutex<ControlState>,
}

impl ControlHandle {
    fn validate(&self, c: &DeviceConfig, api: u64) -> bool {
        let cfg = &self.model.cfg;
        if api < 1 {
            if c.ngroups != 0 || c.nas != 0 {
                return false;
            }
        } else if c.ngroups == 0 || c.ngroups > 0xffff || c.nas == 0 || c.nas > 0xffff {
            return false;
        }
        // VRING_USED_ALIGN_SIZE (4) ..= PAGE_SIZE, a power of two.
        if c.vq_align < 4 || !c.vq_align.is_power_of_two() || c.vq_align > 4096 {
            return false;
        }
        if c.config.len() > 4096 || c.vq_num > 0xffff {
            return false;
        }
        if !matches!(c.name.as_bytes().first(), Some(&b) if b != 0) {
            return false;
        }
        // allowed_device_id: block, net, and (7.x) fs.
        let allowed = match c.device_id {
            1 | 2 => true,
            26 => cfg.max_api_version >= 1,
            _ => false,
        };
        if !allowed {
            return false;
        }
        // features_is_valid.
        let f = c.features;
        if f & 1 << 33 == 0 {
            return false;
        }
        if c.device_id == 2 && f & 1 << 11 != 0 {
            return false; // VIRTIO_BLK_F_CONFIG_WCE: config space is read-only
        }
        if c.device_id == 1 && (f & cfg.refused_net_features != 0 || f & 1 << 32 == 0) {
            return false;
        }
        true
    }
}

/// The kernel copies the name into a 256-byte buffer and forces the last
/// byte to NUL: the name ends at the first NUL or after 255 bytes.
fn kernel_name(name: &str) -> String {
    let mut end = name.find('\0').unwrap_or(name.len()).min(255);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

impl VduseControl for ControlHandle {
    fn api_version(&self) -> Result<u64> {
        let mut st = lock(&self.st);
        Ok(*st.api.get_or_insert(self.model.cfg.max_api_version))
    }

    fn set_api_version(&self, version: u64) -> Result<()> {
        if version > self.model.cfg.max_api_version {
            return Err(VduseError::os("VDUSE_SET_API_VERSION", Errno::EINVAL));
        }
        lock(&self.st).api = Some(version);
        Ok(())
    }

    fn vduse_features(&self) -> Result<u64> {
        // Unknown ioctls on the control fd are EINVAL (vduse_ioctl default).
        self.model.cfg.vduse_features.ok_or(VduseError::os("VDUSE_GET_FEATURES", Errno::EINVAL))
    }

    fn set_vduse_features(&self, features: u64) -> Result<()> {
        let Some(supported) = self.model.cfg.vduse_features else {
            return Err(VduseError::os("VDUSE_SET_FEATURES", Errno::EINVAL));
        };
        if features & !supported != 0 {
            return Err(VduseError::os("VDUSE_SET_FEATURES", Errno::EINVAL));
        }
        lock(&self.st).features = features;
        Ok(())
    }

    fn create_device(&self, config: &DeviceConfig) -> Result<()> {
        let (api, features) = {
            let mut st = lock(&self.st);
            // Never asked or set: CREATE_DEV picks the legacy version 0.
            (*st.api.get_or_insert(0), st.features)
        };
        if !self.validate(config, api) {
            return Err(VduseError::os("VDUSE_CREATE_DEV", Errno::EINVAL));
        }
        let name = kernel_name(&config.name);
        let mut reg = lock(&self.model.registry);
        if reg.devices.contains_key(&name) {
            return Err(VduseError::NameInUse(name));
        }
        let dev = Dev::new(&name, config, api, features, self.model.cfg.msg_timeout)
            .map_err(|e| VduseError::os("VDUSE_CREATE_DEV", e))?;
        reg.retired_logs.remove(&name);
        reg.devices.insert(name, Arc::new(dev));
        Ok(())
    }

    fn open_device(&self, name: &str) -> Result<Arc<dyn VduseDevice>> {
        // Under the registry lock, so a concurrent DESTROY_DEV cannot slip in.
        let reg = lock(&self.model.registry);
        let dev = reg.devices.get(name).cloned().ok_or_else(|| VduseError::NoDevice(name.to_string()))?;
        dev.open()?;
        Ok(Arc::new(DeviceHandle::new(dev)))
    }

    fn destroy_device(&self, name: &str) -> Result<()> {
        let mut reg = lock(&self.model.registry);
        let dev =
            reg.devices.get(&kernel_name(name)).cloned().ok_or(VduseError::os("VDUSE_DESTROY_DEV", Errno::EINVAL))?;
        if dev.busy() {
            return Err(VduseError::os("VDUSE_DESTROY_DEV", Errno::EBUSY));
        }
        reg.devices.remove(dev.name());
        reg.retired_logs.insert(dev.name().to_string(), dev.log());
        Ok(())
    }
}
