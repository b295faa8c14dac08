//! One VDUSE device inside the model: its state, the message queue between
//! the driver face and the device, and the device face
//! ([`VduseDevice`] for `/dev/vduse/$NAME`).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{lock, LoggedMessage};
use crate::uapi::vduse::{
    REQUEST_SIZE, RESPONSE_SIZE, VDUSE_API_VERSION_1, VDUSE_F_QUEUE_READY, VDUSE_F_SUSPEND, VDUSE_REQ_RESULT_FAILED,
    VDUSE_REQ_RESULT_OK,
};
use crate::uapi::virtio::{feature, status};
use crate::vduse::{DeviceConfig, IotlbRegion, IovaInfo, Request, Result, VduseDevice, VduseError, VqInfo};

/// One IOVA range of an address space: `[start, last]` is `file` from
/// `offset` on. The file is shared by the vhost IOTLB and the VDUSE domain,
/// as the kernel shares its `struct file` references.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub start: u64,
    pub last: u64,
    pub offset: u64,
    pub perm: u8,
    pub file: Arc<OwnedFd>,
}

#[derive(Default)]
struct Vq {
    num_max: u16,
    group: u32,
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
    /// The `vduse_vq_state` union as four u16: split uses `[0]` (avail
    /// index); packed is `{avail_counter, avail_idx, used_counter, used_idx}`.
    state: [u16; 4],
    ready: bool,
    /// A kick arrived while there was no kickfd.
    kicked: bool,
    kickfd: Option<OwnedFd>,
}

/// The interrupt side of the bound vhost-vdpa driver: the call eventfds it
/// would have set with `VHOST_SET_VRING_CALL` / `SET_CONFIG_CALL`. The model
/// keeps them wired for the whole attachment (the trait has no call to set
/// them again after a reset).
pub(crate) struct DriverIrq {
    calls: Vec<EventFd>,
    config: EventFd,
    irqs: Vec<AtomicU64>,
    config_irqs: AtomicU64,
}

impl DriverIrq {
    pub fn new(nvqs: usize) -> std::result::Result<Self, Errno> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let calls = (0..nvqs).map(|_| EventFd::from_flags(flags)).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(DriverIrq {
            calls,
            config: EventFd::from_flags(flags)?,
            irqs: (0..nvqs).map(|_| AtomicU64::new(0)).collect(),
            config_irqs: AtomicU64::new(0),
        })
    }
    fn signal_vq(&self, i: usize) {
        // Relaxed: a statistic; the eventfd write itself orders the wakeup.
        self.irqs[i].fetch_add(1, Ordering::Relaxed);
        // EAGAIN only when the counter is saturated: the driver has an
        // interrupt pending anyway.
        let _ = self.calls[i].write(1);
    }
    fn signal_config(&self) {
        self.config_irqs.fetch_add(1, Ordering::Relaxed);
        let _ = self.config.write(1);
    }
    pub fn irq_count(&self, i: usize) -> u64 {
        self.irqs.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    pub fn config_irq_count(&self) -> u64 {
        self.config_irqs.load(Ordering::Relaxed)
    }
    pub fn call_fd(&self, i: usize) -> Option<BorrowedFd<'_>> {
        self.calls.get(i).map(|e| e.as_fd())
    }
    pub fn config_fd(&self) -> BorrowedFd<'_> {
        self.config.as_fd()
    }
}

struct Pending {
    token: u64,
    /// `None` for a raw test message too short to carry an id.
    id: Option<u32>,
    bytes: Vec<u8>,
    log_idx: Option<usize>,
}

struct DevState {
    broken: bool,
    /// `/dev/vduse/$NAME` is open (only one opener at a time).
    open: bool,
    /// A vdpa device exists (`vdpa dev add` done, not yet deleted).
    attached: bool,
    /// The bound vhost-vdpa driver's interrupt side, while its fd is open.
    driver: Option<Arc<DriverIrq>>,
    status: u8,
    driver_features: u64,
    suspended: bool,
    config: Vec<u8>,
    vqs: Vec<Vq>,
    /// Per vq group: its address space.
    group_as: Vec<u32>,
    /// Per address space: the domain IOTLB. `None` until the first
    /// `vdpa dev add` (the kernel creates the domains there).
    domains: Option<Vec<Vec<Arc<Mapping>>>>,
    msg_unique: u32,
    next_token: u64,
    send_list: VecDeque<Pending>,
    recv_list: Vec<Pending>,
    done: HashMap<u64, [u8; RESPONSE_SIZE]>,
    log: Vec<LoggedMessage>,
    /// Write end of the request pipe; dropped when broken so that a poller
    /// wakes with POLLHUP (the kernel reports EPOLLERR).
    req_tx: Option<OwnedFd>,
    /// The pipe holds one byte (iff `send_list` is non-empty).
    req_signalled: bool,
}

pub(crate) struct Dev {
    name: String,
    pub api_version: u64,
    pub vduse_features: u64,
    pub device_id: u32,
    pub device_features: u64,
    pub vq_num: u32,
    /// 1 for API v0 devices, as the kernel sets them.
    pub ngroups: u32,
    pub nas: u32,
    msg_timeout: Duration,
    req_rx: OwnedFd,
    st: Mutex<DevState>,
    cond: Condvar,
    /// The vhost-vdpa side while a driver face is open; locked before `st`.
    pub(crate) vhost: Mutex<Option<super::driver::VhostState>>,
}

fn failed_response(id: u32) -> [u8; RESPONSE_SIZE] {
    let mut b = [0u8; RESPONSE_SIZE];
    b[0..4].copy_from_slice(&id.to_le_bytes());
    b[4..8].copy_from_slice(&VDUSE_REQ_RESULT_FAILED.to_le_bytes());
    b
}

fn signal_eventfd(fd: &OwnedFd) {
    // Errors only when the counter would overflow: a wakeup is pending then.
    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
}

/// `eventfd_ctx_fdget`: EBADF for a bad fd, EINVAL for a non-eventfd.
fn check_eventfd(fd: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD)?;
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) if target.as_os_str() != "anon_inode:[eventfd]" => Err(Errno::EINVAL),
        // Without /proc the kind cannot be checked; accept.
        _ => Ok(()),
    }
}

impl Dev {
    pub fn new(
        name: &str,
        c: &DeviceConfig,
        api: u64,
        vduse_features: u64,
        msg_timeout: Duration,
    ) -> std::result::Result<Dev, Errno> {
        let (req_rx, req_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let (ngroups, nas) = if api < VDUSE_API_VERSION_1 { (1, 1) } else { (c.ngroups, c.nas) };
        Ok(Dev {
            name: name.to_string(),
            api_version: api,
            vduse_features,
            device_id: c.device_id,
            device_features: c.features,
            vq_num: c.vq_num,
            ngroups,
            nas,
            msg_timeout,
            req_rx,
            st: Mutex::new(DevState {
                broken: false,
                open: false,
                attached: false,
                driver: None,
                status: 0,
                driver_features: 0,
                suspended: false,
                config: c.config.clone(),
                vqs: (0..c.vq_num).map(|_| Vq::default()).collect(),
                group_as: vec![0; ngroups as usize],
                domains: None,
                msg_unique: 0,
                next_token: 0,
                send_list: VecDeque::new(),
                recv_list: Vec::new(),
                done: HashMap::new(),
                log: Vec::new(),
                req_tx: Some(req_tx),
                req_signalled: false,
            }),
            cond: Condvar::new(),
            vhost: Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> Vec<LoggedMessage> {
        lock(&self.st).log.clone()
    }

    /// Take the log and start a new one; `None` while a message is queued
    /// or unanswered (its entry is still to be filled in).
    pub fn take_log(&self) -> Option<Vec<LoggedMessage>> {
        let mut st = lock(&self.st);
        if !st.send_list.is_empty() || !st.recv_list.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut st.log))
    }

    pub fn busy(&self) -> bool {
        let st = lock(&self.st);
        st.open || st.attached
    }

    pub fn is_broken(&self) -> bool {
        lock(&self.st).broken
    }

    pub fn open(&self) -> Result<()> {
        let mut st = lock(&self.st);
        if st.open {
            return Err(VduseError::os("open /dev/vduse", Errno::EBUSY));
        }
        st.open = true;
        Ok(())
    }

    /// Closing the device fd: messages read but not answered go back to
    /// the head of the queue, so the next opener gets them again.
    fn release(&self) {
        let mut st = lock(&self.st);
        st.open = false;
        let recv = std::mem::take(&mut st.recv_list);
        for p in recv.into_iter().rev() {
            st.send_list.push_front(p);
        }
        self.sync_pipe(&mut st);
    }

    /// Keep one byte in the request pipe exactly while a message waits.
    fn sync_pipe(&self, st: &mut DevState) {
        let want = !st.send_list.is_empty();
        if want && !st.req_signalled {
            if let Some(tx) = &st.req_tx {
                let _ = nix::unistd::write(tx, &[1u8]);
            }
            st.req_signalled = true;
        } else if !want && st.req_signalled {
            let mut b = [0u8; 1];
            let _ = nix::unistd::read(self.req_rx.as_raw_fd(), &mut b);
            st.req_signalled = false;
        }
    }

    /// `vduse_dev_broken`: fail every pending message, refuse later ones.
    fn mark_broken(&self, st: &mut DevState) {
        if st.broken {
            return;
        }
        let recv = std::mem::take(&mut st.recv_list);
        let send = std::mem::take(&mut st.send_list);
        for p in recv.into_iter().chain(send) {
            let resp = failed_response(p.id.unwrap_or(0));
            if let Some(i) = p.log_idx {
                st.log[i].result = Some(VDUSE_REQ_RESULT_FAILED);
            }
            st.done.insert(p.token, resp);
        }
        st.broken = true;
        self.sync_pipe(st);
        st.req_tx = None;
        log::warn!("vduse model: device {} is broken (a control message timed out)", self.name);
        self.cond.notify_all();
    }

    fn enqueue(&self, st: &mut DevState, bytes: Vec<u8>, id: Option<u32>, log_idx: Option<usize>) -> u64 {
        let token = st.next_token;
        st.next_token += 1;
        st.send_list.push_back(Pending { token, id, bytes, log_idx });
        self.sync_pipe(st);
        token
    }

    /// Wait for the reply to `token`. On timeout the message is withdrawn
    /// and, for kernel messages, the device marked broken.
    fn wait_reply<'a>(
        &'a self,
        mut st: MutexGuard<'a, DevState>,
        token: u64,
        breaks: bool,
    ) -> (MutexGuard<'a, DevState>, Option<[u8; RESPONSE_SIZE]>) {
        let deadline = (!self.msg_timeout.is_zero()).then(|| Instant::now() + self.msg_timeout);
        loop {
            if let Some(r) = st.done.remove(&token) {
                return (st, Some(r));
            }
            match deadline {
                None => st = self.cond.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    st = self.cond.wait_timeout(st, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        st.send_list.retain(|p| p.token != token);
        st.recv_list.retain(|p| p.token != token);
        self.sync_pipe(&mut st);
        if breaks {
            self.mark_broken(&mut st);
        }
        (st, None)
    }

    /// `vduse_dev_msg_sync`: send one message and wait for the reply.
    /// Returns the reply payload, or EIO (broken, FAILED, or timed out).
    pub fn msg_sync(&self, req: Request) -> std::result::Result<[u8; 128], Errno> {
        let mut st = lock(&self.st);
        if st.broken {
            return Err(Errno::EIO);
        }
        let id = st.msg_unique;
        st.msg_unique = st.msg_unique.wrapping_add(1);
        let bytes = req.encode(id, self.api_version).to_vec();
        st.log.push(LoggedMessage { request: req, request_id: id, result: None, reply_payload: [0; 128] });
        let log_idx = st.log.len() - 1;
        let token = self.enqueue(&mut st, bytes, Some(id), Some(log_idx));
        let (_st, reply) = self.wait_reply(st, token, true);
        let reply = reply.ok_or(Errno::EIO)?;
        let result = u32::from_le_bytes(reply[4..8].try_into().unwrap_or_default());
        if result != VDUSE_REQ_RESULT_OK {
            return Err(Errno::EIO);
        }
        let mut payload = [0u8; 128];
        payload.copy_from_slice(&reply[24..152]);
        Ok(payload)
    }

    /// Test hook: queue `bytes` as they are and wait for the reply. A
    /// timeout returns `None` and does not break the device.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut st = lock(&self.st);
        if st.broken {
            return Err(VduseError::Broken);
        }
        let id = bytes.get(4..8).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        let token = self.enqueue(&mut st, bytes.to_vec(), id, None);
        let (_st, reply) = self.wait_reply(st, token, false);
        Ok(reply.map(|r| r.to_vec()))
    }

    // ---- the vdpa side: what vduse_dev.c's vdpa_config_ops do ----

    /// `vdpa_dev_add`: every vq needs a VQ_SETUP first; fresh domains.
    pub fn vdpa_add(&self) -> Result<()> {
        let mut st = lock(&self.st);
        if st.vqs.iter().any(|vq| vq.num_max == 0) {
            return Err(VduseError::os("vdpa dev add", Errno::EINVAL));
        }
        if st.attached {
            return Err(VduseError::os("vdpa dev add", Errno::EEXIST));
        }
        st.attached = true;
        st.domains = Some((0..self.nas).map(|_| Vec::new()).collect());
        Ok(())
    }

    /// `vdpa dev del`. The domains (and stale entries) stay until destroy.
    pub fn vdpa_del(&self) {
        let mut st = lock(&self.st);
        st.attached = false;
        st.driver = None;
    }

    pub fn bind_driver(&self, irq: Arc<DriverIrq>) {
        lock(&self.st).driver = Some(irq);
    }

    /// Whether `irq` is the interrupt side of the currently bound driver.
    pub fn is_bound(&self, irq: &Arc<DriverIrq>) -> bool {
        lock(&self.st).driver.as_ref().is_some_and(|d| Arc::ptr_eq(d, irq))
    }

    pub fn status(&self) -> u8 {
        lock(&self.st).status
    }

    /// `vduse_vdpa_set_status`: message first; the status is latched only
    /// when the device answered OK. A NEEDS_RESET the device raised while it
    /// handled the message (e.g. a ring it could not map at DRIVER_OK) is
    /// kept: only a reset clears it.
    pub fn set_status(&self, s: u8) {
        if self.msg_sync(Request::SetStatus { status: s }).is_ok() {
            let mut st = lock(&self.st);
            st.status = s | (st.status & status::DEVICE_NEEDS_RESET);
        }
    }

    /// `vduse_vdpa_reset`: SET_STATUS 0, then the local reset whatever the
    /// answer; returns the message's error.
    pub fn reset(&self) -> std::result::Result<(), Errno> {
        let r = self.msg_sync(Request::SetStatus { status: 0 }).map(|_| ());
        let mut st = lock(&self.st);
        // Kept: group -> AS, vq group and num_max, config, domains, broken.
        st.suspended = false;
        st.status = 0;
        st.driver_features = 0;
        for vq in st.vqs.iter_mut() {
            vq.ready = false;
            vq.desc = 0;
            vq.driver = 0;
            vq.device = 0;
            vq.num = 0;
            vq.state = [0; 4];
            vq.kicked = false;
            vq.kickfd = None;
        }
        r
    }

    /// Features the driver set (vhost's acked features).
    pub fn driver_features(&self) -> u64 {
        lock(&self.st).driver_features
    }

    pub fn set_driver_features(&self, f: u64) {
        lock(&self.st).driver_features = f;
    }

    pub fn config_size(&self) -> usize {
        lock(&self.st).config.len()
    }

    pub fn read_config(&self, off: usize, buf: &mut [u8]) {
        let st = lock(&self.st);
        let end = off.saturating_add(buf.len()).min(st.config.len());
        let n = end.saturating_sub(off);
        buf[..n].copy_from_slice(&st.config[off.min(end)..end]);
        buf[n..].fill(0);
    }

    pub fn num_max(&self) -> u16 {
        lock(&self.st).vqs.iter().map(|vq| vq.num_max).max().unwrap_or(0)
    }

    pub fn set_vq_num(&self, i: usize, num: u32) {
        lock(&self.st).vqs[i].num = num;
    }

    pub fn set_vq_address(&self, i: usize, desc: u64, driver: u64, device: u64) {
        let mut st = lock(&self.st);
        let vq = &mut st.vqs[i];
        (vq.desc, vq.driver, vq.device) = (desc, driver, device);
    }

    fn packed(st: &DevState) -> bool {
        st.driver_features & 1 << feature::RING_PACKED != 0
    }

    /// `vduse_vdpa_set_vq_state` as vhost's SET_VRING_BASE calls it: split
    /// stores the avail index; packed splits each 16-bit half of vhost's
    /// base (avail low, used high) into counter (bit 15) and index.
    pub fn set_vq_state(&self, i: usize, base: u32) {
        let mut st = lock(&self.st);
        let packed = Self::packed(&st);
        let vq = &mut st.vqs[i];
        let (avail, used) = (base as u16, (base >> 16) as u16);
        vq.state = if packed { [avail >> 15, avail & 0x7fff, used >> 15, used & 0x7fff] } else { [avail, 0, 0, 0] };
    }

    /// GET_VQ_STATE message; returns what vhost's GET_VRING_BASE reports
    /// (split: avail index; packed: `avail_idx | avail_counter << 15` in the
    /// low half and the used pair likewise in the high half, after
    /// vduse_dev.c masks the device's reply).
    pub fn get_vq_state(&self, i: usize) -> std::result::Result<u32, Errno> {
        let packed = Self::packed(&lock(&self.st));
        let p = self.msg_sync(Request::GetVqState { index: i as u32 })?;
        let at = |o: usize| u16::from_le_bytes([p[o], p[o + 1]]);
        Ok(if packed {
            let avail = (at(6) & 0x7fff) | (at(4) & 1) << 15;
            let used = (at(10) & 0x7fff) | (at(8) & 1) << 15;
            avail as u32 | (used as u32) << 16
        } else {
            at(4) as u32
        })
    }

    /// `vduse_vdpa_set_vq_ready`: with VDUSE_F_QUEUE_READY a message, and a
    /// refusal breaks the device (the kernel can do nothing better).
    pub fn set_vq_ready(&self, i: usize, ready: bool) {
        let gated = self.vduse_features & 1 << VDUSE_F_QUEUE_READY != 0;
        if gated && self.msg_sync(Request::SetVqReady { index: i as u32, ready }).is_err() {
            let mut st = lock(&self.st);
            self.mark_broken(&mut st);
            return;
        }
        lock(&self.st).vqs[i].ready = ready;
    }

    pub fn vq_group(&self, i: usize) -> u32 {
        if self.api_version < VDUSE_API_VERSION_1 {
            return 0;
        }
        lock(&self.st).vqs[i].group
    }

    /// `vduse_set_group_asid`: API v0 -> EINVAL; message first, apply on OK.
    pub fn set_group_asid(&self, group: u32, asid: u32) -> std::result::Result<(), Errno> {
        if self.api_version < VDUSE_API_VERSION_1 {
            return Err(Errno::EINVAL);
        }
        self.msg_sync(Request::SetVqGroupAsid { group, asid })?;
        lock(&self.st).group_as[group as usize] = asid;
        Ok(())
    }

    /// `vduse_vdpa_set_map`: replace the domain of `asid` with `maps`, then
    /// tell the device (whole range); on failure the domain is left empty.
    pub fn set_map(&self, asid: u32, maps: &[Arc<Mapping>]) -> std::result::Result<(), Errno> {
        {
            let mut st = lock(&self.st);
            if let Some(d) = st.domains.as_mut().and_then(|d| d.get_mut(asid as usize)) {
                *d = maps.to_vec();
            }
        }
        let r = self.msg_sync(Request::UpdateIotlb { asid, start: 0, last: u64::MAX });
        if r.is_err() {
            let mut st = lock(&self.st);
            if let Some(d) = st.domains.as_mut().and_then(|d| d.get_mut(asid as usize)) {
                d.clear();
            }
        }
        r.map(|_| ())
    }

    pub fn can_suspend(&self) -> bool {
        self.vduse_features & 1 << VDUSE_F_SUSPEND != 0
    }

    /// `vduse_vdpa_suspend`: SUSPEND message; OK -> suspended.
    pub fn suspend(&self) -> std::result::Result<(), Errno> {
        self.msg_sync(Request::Suspend)?;
        lock(&self.st).suspended = true;
        Ok(())
    }

    /// `vduse_vq_kick`: dropped while suspended or not ready; latched when
    /// there is no kickfd yet.
    pub fn kick(&self, i: usize) {
        let mut st = lock(&self.st);
        if st.suspended {
            return;
        }
        let vq = &mut st.vqs[i];
        if !vq.ready {
            return;
        }
        match &vq.kickfd {
            Some(fd) => signal_eventfd(fd),
            None => vq.kicked = true,
        }
    }

    #[cfg(test)]
    pub fn group_asid(&self, group: usize) -> Option<u32> {
        lock(&self.st).group_as.get(group).copied()
    }

    #[cfg(test)]
    pub fn is_suspended(&self) -> bool {
        lock(&self.st).suspended
    }

    #[cfg(test)]
    pub fn vq_ready(&self, i: usize) -> bool {
        lock(&self.st).vqs.get(i).is_some_and(|vq| vq.ready)
    }

    // ---- the device face ----

    fn ioctl(&self) -> Result<MutexGuard<'_, DevState>> {
        let st = lock(&self.st);
        if st.broken {
            // The kernel answers EPERM here; the project wants Broken.
            return Err(VduseError::Broken);
        }
        Ok(st)
    }
}

/// `/dev/vduse/$NAME`, opened. Dropping it closes the fd.
pub(crate) struct DeviceHandle {
    dev: Arc<Dev>,
}

impl DeviceHandle {
    pub fn new(dev: Arc<Dev>) -> Self {
        DeviceHandle { dev }
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        self.dev.release();
    }
}

fn einval(op: &'static str) -> VduseError {
    VduseError::os(op, Errno::EINVAL)
}

impl VduseDevice for DeviceHandle {
    fn name(&self) -> &str {
        &self.dev.name
    }

    fn api_version(&self) -> u64 {
        self.dev.api_version
    }

    fn negotiated_features(&self) -> Result<u64> {
        // Mirrors what the driver wrote, unmasked, at any time.
        Ok(self.dev.ioctl()?.driver_features)
    }

    fn set_config(&self, offset: u32, data: &[u8]) -> Result<()> {
        let mut st = self.dev.ioctl()?;
        let size = st.config.len();
        let (off, len) = (offset as usize, data.len());
        if off > size || len == 0 || len > size - off {
            return Err(einval("VDUSE_DEV_SET_CONFIG"));
        }
        st.config[off..off + len].copy_from_slice(data);
        Ok(())
    }

    fn inject_config_irq(&self) -> Result<()> {
        let st = self.dev.ioctl()?;
        if st.suspended || st.status & status::DRIVER_OK == 0 {
            return Err(einval("VDUSE_DEV_INJECT_CONFIG_IRQ"));
        }
        if let Some(d) = &st.driver {
            d.signal_config();
        }
        Ok(())
    }

    fn setup_vq(&self, index: u32, max_size: u16, group: u32) -> Result<()> {
        let mut st = self.dev.ioctl()?;
        if index >= self.dev.vq_num {
            return Err(einval("VDUSE_VQ_SETUP"));
        }
        if self.dev.api_version < VDUSE_API_VERSION_1 {
            if group != 0 {
                return Err(einval("VDUSE_VQ_SETUP"));
            }
        } else if group >= self.dev.ngroups || st.status & status::DRIVER_OK != 0 {
            return Err(einval("VDUSE_VQ_SETUP"));
        }
        // max_size is not validated by the kernel (0 is accepted).
        let vq = &mut st.vqs[index as usize];
        vq.num_max = max_size;
        vq.group = group;
        Ok(())
    }

    fn vq_info(&self, index: u32) -> Result<VqInfo> {
        let st = self.dev.ioctl()?;
        let vq = st.vqs.get(index as usize).ok_or(einval("VDUSE_VQ_GET_INFO"))?;
        Ok(VqInfo {
            index,
            num: vq.num,
            desc_addr: vq.desc,
            driver_addr: vq.driver,
            device_addr: vq.device,
            // The state union as the kernel's VQ_GET_INFO fills it, folded
            // as KernelDevice::vq_info does: split, the avail index; packed,
            // last_avail_idx | last_avail_counter << 15.
            avail_index: if Dev::packed(&st) { (vq.state[1] & 0x7fff) | (vq.state[0] & 1) << 15 } else { vq.state[0] },
            ready: vq.ready,
        })
    }

    fn set_vq_kickfd(&self, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let op = "VDUSE_VQ_SETUP_KICKFD";
        let mut st = self.dev.ioctl()?;
        if index >= self.dev.vq_num {
            return Err(einval(op));
        }
        let new = match fd {
            Some(fd) => {
                check_eventfd(fd).map_err(|e| VduseError::os(op, e))?;
                Some(
                    fd.try_clone_to_owned()
                        .map_err(|e| VduseError::os(op, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?,
                )
            }
            None => None,
        };
        let vq = &mut st.vqs[index as usize];
        vq.kickfd = new;
        // A kick that came while there was no kickfd is delivered now.
        if vq.ready && vq.kicked {
            if let Some(fd) = &vq.kickfd {
                signal_eventfd(fd);
                vq.kicked = false;
            }
        }
        Ok(())
    }

    fn inject_vq_irq(&self, index: u32) -> Result<()> {
        let st = self.dev.ioctl()?;
        let vq = st.vqs.get(index as usize).ok_or(einval("VDUSE_VQ_INJECT_IRQ"))?;
        // Direct path: the vhost call eventfd, without a DRIVER_OK check.
        if !st.suspended && vq.ready {
            if let Some(d) = &st.driver {
                d.signal_vq(index as usize);
                return Ok(());
            }
        }
        // Work path: refused unless DRIVER_OK and not suspended; the work
        // then drops the interrupt (the vq is not ready or has no callback).
        if st.suspended || st.status & status::DRIVER_OK == 0 {
            return Err(einval("VDUSE_VQ_INJECT_IRQ"));
        }
        Ok(())
    }

    fn iotlb_get_fd(&self, asid: u32, start: u64, last: u64) -> Result<IotlbRegion> {
        let op = if self.dev.api_version < VDUSE_API_VERSION_1 { "VDUSE_IOTLB_GET_FD" } else { "VDUSE_IOTLB_GET_FD2" };
        let st = self.dev.ioctl()?;
        // GET_FD carries no asid: only address space 0 is reachable.
        if start > last || asid >= self.dev.nas {
            return Err(einval(op));
        }
        let domain = st.domains.as_ref().and_then(|d| d.get(asid as usize)).ok_or(einval(op))?;
        let m =
            domain.iter().filter(|m| m.start <= last && m.last >= start).min_by_key(|m| m.start).ok_or(einval(op))?;
        let fd = m.file.try_clone().map_err(|e| VduseError::os(op, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        Ok(IotlbRegion { fd, offset: m.offset, start: m.start, last: m.last, perm: m.perm })
    }

    fn iotlb_info(&self, asid: u32, start: u64, last: u64) -> Result<IovaInfo> {
        let op = "VDUSE_IOTLB_GET_INFO";
        let st = self.dev.ioctl()?;
        // A bad asid is EFAULT here (the kernel breaks out with ret still
        // -EFAULT), unlike GET_FD2.
        if asid >= self.dev.nas {
            return Err(VduseError::os(op, Errno::EFAULT));
        }
        if start > last {
            return Err(einval(op));
        }
        let domain = st.domains.as_ref().and_then(|d| d.get(asid as usize)).ok_or(einval(op))?;
        let m =
            domain.iter().filter(|m| m.start <= last && m.last >= start).min_by_key(|m| m.start).ok_or(einval(op))?;
        // No bounce map in vhost-vdpa mode, so never VDUSE_IOVA_CAP_UMEM.
        Ok(IovaInfo { start: m.start, last: m.last, capability: 0, asid })
    }

    fn read_request(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        let mut st = lock(&self.dev.st);
        if st.broken {
            // The kernel's read would block forever; say why instead.
            return Err(VduseError::Broken);
        }
        if buf.len() < REQUEST_SIZE {
            return Err(einval("read /dev/vduse"));
        }
        let Some(p) = st.send_list.pop_front() else {
            return Ok(None);
        };
        let n = p.bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&p.bytes[..n]);
        st.recv_list.push(p);
        self.dev.sync_pipe(&mut st);
        Ok(Some(n))
    }

    fn write_response(&self, buf: &[u8]) -> Result<usize> {
        let op = "write /dev/vduse";
        let mut st = lock(&self.dev.st);
        if st.broken {
            return Err(VduseError::Broken);
        }
        if buf.len() < RESPONSE_SIZE {
            return Err(einval(op));
        }
        if buf[8..24].iter().any(|&b| b != 0) {
            return Err(einval(op));
        }
        let id = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default());
        let pos = st.recv_list.iter().position(|p| p.id == Some(id)).ok_or(VduseError::os(op, Errno::ENOENT))?;
        let p = st.recv_list.remove(pos);
        let mut resp = [0u8; RESPONSE_SIZE];
        resp.copy_from_slice(&buf[..RESPONSE_SIZE]);
        if let Some(i) = p.log_idx {
            let e = &mut st.log[i];
            e.result = Some(u32::from_le_bytes(resp[4..8].try_into().unwrap_or_default()));
            e.reply_payload.copy_from_slice(&resp[24..152]);
        }
        st.done.insert(p.token, resp);
        self.dev.cond.notify_all();
        Ok(RESPONSE_SIZE)
    }

    fn request_fd(&self) -> BorrowedFd<'_> {
        self.dev.req_rx.as_fd()
    }

    fn signal_needs_reset(&self) -> bool {
        let mut st = lock(&self.dev.st);
        st.status |= status::DEVICE_NEEDS_RESET;
        if let Some(d) = &st.driver {
            d.signal_config();
        }
        true
    }
}
