//! Tests of the kernel model through its two faces, with a device thread
//! that answers control messages through the `VduseDevice` trait.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::*;
use crate::driver::dma::DmaMemory;
use crate::driver::transport::DriverTransport;
use crate::uapi::vduse::*;
use crate::uapi::virtio::status;
use crate::vduse::request::VqState;
use crate::vduse::{Response, VqInfo};

const T: Duration = Duration::from_millis(200);
const FEAT: u64 = 1 << 32 | 1 << 33;

fn cfg73() -> ModelConfig {
    ModelConfig::kernel_7_3().with_timeout(T)
}

fn net(name: &str) -> DeviceConfig {
    DeviceConfig {
        name: name.into(),
        vendor_id: 0,
        device_id: 1,
        features: FEAT,
        vq_num: 3,
        vq_align: 4096,
        ngroups: 2,
        nas: 2,
        config: (0u8..12).collect(),
    }
}

fn errno<T>(r: std::result::Result<T, VduseError>) -> Errno {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.errno(),
    }
}

fn terrno<T>(r: std::result::Result<T, crate::driver::TransportError>) -> Errno {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.errno().expect("an errno"),
    }
}

/// What the test device answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    Failed,
    Silent,
}

type Policy = Box<dyn FnMut(&dyn VduseDevice, &Request) -> Answer + Send>;

/// A device thread: reads control messages, records them, answers them as
/// the policy says (GET_VQ_STATE with avail index 0x1234 + vq index).
struct Responder {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u32, Request)>>>,
    policy: Arc<Mutex<Policy>>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn spawn(dev: Arc<dyn VduseDevice>) -> Responder {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let policy: Arc<Mutex<Policy>> = Arc::new(Mutex::new(Box::new(|_: &dyn VduseDevice, _: &Request| Answer::Ok)));
        let (s, sn, p) = (stop.clone(), seen.clone(), policy.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; REQUEST_SIZE];
            while !s.load(Ordering::Acquire) {
                let mut fds = [PollFd::new(dev.request_fd(), PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(10u16));
                let n = match dev.read_request(&mut buf) {
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                let (id, req) = match Request::parse(&buf[..n], dev.api_version()) {
                    Ok(x) => x,
                    Err(e) => {
                        if let Some(id) = e.request_id() {
                            let _ = dev.write_response(&Response::failed(id).encode());
                        }
                        continue;
                    }
                };
                sn.lock().unwrap().push((id, req));
                let answer = (p.lock().unwrap())(&*dev, &req);
                let resp = match (answer, req) {
                    (Answer::Silent, _) => continue,
                    (Answer::Failed, _) => Response::failed(id),
                    (Answer::Ok, Request::GetVqState { index }) => {
                        Response::vq_state(id, VqState::Split { index, avail_index: 0x1234 + index as u16 })
                    }
                    (Answer::Ok, _) => Response::ok(id),
                };
                let _ = dev.write_response(&resp.encode());
            }
        });
        Responder { stop, seen, policy, thread: Some(thread) }
    }

    fn set(&self, f: impl FnMut(&dyn VduseDevice, &Request) -> Answer + Send + 'static) {
        *self.policy.lock().unwrap() = Box::new(f);
    }

    fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().iter().map(|(_, r)| *r).collect()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A created and opened device, vqs set up (vq 2 in group 1 on API 1).
fn create(model: &Arc<KernelModel>, dc: DeviceConfig, api: u64, vduse_features: u64) -> Arc<dyn VduseDevice> {
    let ctl = model.control();
    ctl.set_api_version(api).unwrap();
    if vduse_features != 0 {
        ctl.set_vduse_features(vduse_features).unwrap();
    }
    ctl.create_device(&dc).unwrap();
    let dev = ctl.open_device(&dc.name).unwrap();
    for i in 0..dc.vq_num {
        let group = if api >= 1 && i == 2 { 1 } else { 0 };
        dev.setup_vq(i, 256, group).unwrap();
    }
    dev
}

struct Rig {
    model: Arc<KernelModel>,
    dev: Arc<dyn VduseDevice>,
    resp: Responder,
    drv: Arc<ModelDriver>,
}

fn rig_with(cfg: ModelConfig, dc: DeviceConfig, api: u64, vduse_features: u64) -> Rig {
    let model = KernelModel::new(cfg);
    let dev = create(&model, dc.clone(), api, vduse_features);
    let resp = Responder::spawn(dev.clone());
    let drv = model.attach_vhost_vdpa(&dc.name).unwrap();
    resp.clear();
    Rig { model, dev, resp, drv }
}

fn rig() -> Rig {
    rig_with(cfg73(), net("n0"), 1, 3)
}

/// Drive the status to DRIVER_OK with vq 0 (and `ready`) enabled.
fn bring_up(r: &Rig, ready: &[u32]) {
    r.drv.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    r.drv.set_features(FEAT).unwrap();
    r.drv.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
    for &q in ready {
        r.drv.set_vring_num(q, 256).unwrap();
        r.drv.set_vring_addr(q, 0x1000, 0x2000, 0x3000).unwrap();
        r.drv.set_vring_enable(q, true).unwrap();
    }
    r.drv.set_status(0x0f).unwrap();
    assert_eq!(r.drv.status().unwrap(), 0x0f);
}

fn eventfd() -> EventFd {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap()
}

fn eventfd_count(e: &EventFd) -> u64 {
    let mut b = [0u8; 8];
    match nix::unistd::read(e.as_fd().as_raw_fd(), &mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

// ---------------------------------------------------------------- control

type Edit = Box<dyn Fn(&mut DeviceConfig)>;

#[test]
fn create_dev_accepts_a_valid_net_device_and_refuses_each_invalid_field() {
    let model = KernelModel::new(cfg73());
    let ctl = model.control();
    ctl.set_api_version(1).unwrap();
    ctl.create_device(&net("ok")).unwrap();

    let bad: Vec<(&str, Edit)> = vec![
        ("empty name", Box::new(|c| c.name.clear())),
        ("name starts with NUL", Box::new(|c| c.name = "\0x".into())),
        ("console device id", Box::new(|c| c.device_id = 3)),
        ("no ACCESS_PLATFORM", Box::new(|c| c.features = 1 << 32)),
        ("net without VERSION_1", Box::new(|c| c.features = 1 << 33)),
        ("net CTRL_VQ", Box::new(|c| c.features |= 1 << 17)),
        ("ngroups 0", Box::new(|c| c.ngroups = 0)),
        ("ngroups > 0xffff", Box::new(|c| c.ngroups = 0x10000)),
        ("nas 0", Box::new(|c| c.nas = 0)),
        ("nas > 0xffff", Box::new(|c| c.nas = 0x10000)),
        ("vq_align 2", Box::new(|c| c.vq_align = 2)),
        ("vq_align not a power of two", Box::new(|c| c.vq_align = 12)),
        ("vq_align above a page", Box::new(|c| c.vq_align = 8192)),
        ("config above a page", Box::new(|c| c.config = vec![0; 4097])),
        ("vq_num > 0xffff", Box::new(|c| c.vq_num = 0x10000)),
    ];
    for (i, (what, f)) in bad.iter().enumerate() {
        let mut c = net(&format!("bad{i}"));
        f(&mut c);
        assert_eq!(errno(ctl.create_device(&c)), Errno::EINVAL, "{what}");
    }

    let good: Vec<(&str, Edit)> = vec![
        ("ngroups/nas at the limit", Box::new(|c| (c.ngroups, c.nas) = (0xffff, 0xffff))),
        ("vq_align 4", Box::new(|c| c.vq_align = 4)),
        ("vq_num 0", Box::new(|c| c.vq_num = 0)),
        ("config of a page", Box::new(|c| c.config = vec![0; 4096])),
        ("other net features", Box::new(|c| c.features |= 1 << 5 | 1 << 15 | 1 << 22 | 1 << 34)),
        ("block without VERSION_1", Box::new(|c| (c.device_id, c.features) = (2, 1 << 33))),
        ("fs on 7.x", Box::new(|c| c.device_id = 26)),
    ];
    for (i, (what, f)) in good.iter().enumerate() {
        let mut c = net(&format!("good{i}"));
        f(&mut c);
        ctl.create_device(&c).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    let mut wce = net("wce");
    (wce.device_id, wce.features) = (2, FEAT | 1 << 11);
    assert_eq!(errno(ctl.create_device(&wce)), Errno::EINVAL, "block CONFIG_WCE");

    // The name is in use, whichever handle asks.
    let e = model.control().create_device(&DeviceConfig { ngroups: 0, nas: 0, ..net("ok") }).unwrap_err();
    assert!(matches!(e, VduseError::NameInUse(ref n) if n == "ok"), "{e:?}");
    // Names end after 255 bytes, as the kernel's buffer does.
    let long = "x".repeat(300);
    ctl.create_device(&net(&long)).unwrap();
    assert!(ctl.open_device(&"x".repeat(255)).is_ok());
}

#[test]
fn kernel_variants_differ_where_the_real_ones_do() {
    let mut c = net("cvq");
    c.features |= 1 << 17;
    for (cfg, ok) in [(ModelConfig::kernel_7_2(), false), (ModelConfig::patched_7_3(), true)] {
        let ctl = KernelModel::new(cfg).control();
        ctl.set_api_version(1).unwrap();
        assert_eq!(ctl.create_device(&c).is_ok(), ok);
    }
    // 6.12: API 0 only; fs is not a VDUSE class there.
    let ctl = KernelModel::new(ModelConfig::kernel_6_12()).control();
    assert_eq!(ctl.api_version().unwrap(), 0);
    assert_eq!(errno(ctl.set_api_version(1)), Errno::EINVAL);
    let v0 = DeviceConfig { ngroups: 0, nas: 0, ..net("a") };
    ctl.create_device(&v0).unwrap();
    assert_eq!(errno(ctl.create_device(&DeviceConfig { device_id: 26, ..v0.clone() })), Errno::EINVAL);
    assert_eq!(ModelConfig::default(), ModelConfig::kernel_7_3());
    assert_eq!(ModelConfig::default().msg_timeout, Duration::from_secs(30));
}

#[test]
fn api_version_is_per_handle_and_defaults_like_the_kernel() {
    let model = KernelModel::new(cfg73());
    // Never asked: CREATE_DEV uses version 0, so groups/ASes are refused.
    let fresh = model.control();
    assert_eq!(errno(fresh.create_device(&net("a"))), Errno::EINVAL);
    fresh.create_device(&DeviceConfig { ngroups: 0, nas: 0, ..net("a") }).unwrap();
    assert_eq!(fresh.open_device("a").unwrap().api_version(), 0);
    // Once asked, the handle uses 1 (the version GET returned).
    let asked = model.control();
    assert_eq!(asked.api_version().unwrap(), 1);
    asked.create_device(&net("b")).unwrap();
    assert_eq!(asked.open_device("b").unwrap().api_version(), 1);
    assert_eq!(errno(asked.set_api_version(2)), Errno::EINVAL);
    // SET first: GET reports what was set.
    let set0 = model.control();
    set0.set_api_version(0).unwrap();
    assert_eq!(set0.api_version().unwrap(), 0);
    assert_eq!(errno(set0.create_device(&net("c"))), Errno::EINVAL);
}

#[test]
fn vduse_features_exist_only_on_7_3_and_apply_to_later_devices() {
    let model = KernelModel::new(cfg73());
    let ctl = model.control();
    ctl.set_api_version(1).unwrap();
    assert_eq!(ctl.vduse_features().unwrap(), 3);
    assert_eq!(errno(ctl.set_vduse_features(4)), Errno::EINVAL);
    ctl.create_device(&net("before")).unwrap();
    ctl.set_vduse_features(1 << VDUSE_F_SUSPEND).unwrap();
    ctl.create_device(&net("after")).unwrap();
    let ctl2 = model.control();
    for (name, suspend) in [("before", false), ("after", true)] {
        let dev = ctl2.open_device(name).unwrap();
        for i in 0..3 {
            dev.setup_vq(i, 64, 0).unwrap();
        }
        let resp = Responder::spawn(dev.clone());
        let drv = model.attach_vhost_vdpa(name).unwrap();
        let f = drv.backend_features().unwrap();
        assert_eq!(f, 0xe | (suspend as u64) << 4, "{name}");
        model.detach(name).unwrap();
        drop(resp);
    }
    // 7.2: the control fd does not know the ioctls (EINVAL, not ENOTTY).
    let ctl = KernelModel::new(ModelConfig::kernel_7_2()).control();
    assert_eq!(errno(ctl.vduse_features()), Errno::EINVAL);
    assert_eq!(errno(ctl.set_vduse_features(0)), Errno::EINVAL);
}

#[test]
fn destroy_and_open_follow_the_kernel_rules() {
    let model = KernelModel::new(cfg73());
    let ctl = model.control();
    ctl.set_api_version(1).unwrap();
    assert_eq!(errno(ctl.destroy_device("none")), Errno::EINVAL);
    ctl.create_device(&net("d")).unwrap();
    let dev = ctl.open_device("d").unwrap();
    assert_eq!(errno(ctl.open_device("d")), Errno::EBUSY);
    assert_eq!(errno(ctl.destroy_device("d")), Errno::EBUSY);
    // vdpa dev add needs VQ_SETUP on every vq.
    assert_eq!(errno(model.attach_vhost_vdpa("d")), Errno::EINVAL);
    for i in 0..3 {
        dev.setup_vq(i, 128, 0).unwrap();
    }
    let resp = Responder::spawn(dev.clone());
    let _drv = model.attach_vhost_vdpa("d").unwrap();
    assert_eq!(errno(model.attach_vhost_vdpa("d")), Errno::EEXIST);
    drop(resp);
    drop(dev);
    assert_eq!(errno(ctl.destroy_device("d")), Errno::EBUSY, "still attached");
    let dev = ctl.open_device("d").unwrap();
    let resp = Responder::spawn(dev.clone());
    model.detach("d").unwrap();
    assert_eq!(model.message_log("d").last().unwrap().request, Request::SetStatus { status: 0 });
    drop(resp);
    drop(dev);
    ctl.destroy_device("d").unwrap();
    assert!(matches!(ctl.open_device("d"), Err(VduseError::NoDevice(_))));
    // The log outlives the device.
    assert_eq!(model.message_log("d").len(), 2);
}

// ---------------------------------------------------------------- messages

#[test]
fn every_request_type_reaches_the_device_in_order_with_increasing_ids() {
    let r = rig();
    // Attach already reset the device (request 0).
    let log = r.model.message_log("n0");
    assert_eq!(log[0].request, Request::SetStatus { status: 0 });
    assert_eq!(log[0].result, Some(VDUSE_REQ_RESULT_OK));

    r.drv.set_backend_features(0xe).unwrap();
    r.drv.set_status(status::ACKNOWLEDGE).unwrap();
    r.drv.set_vring_enable(1, true).unwrap();
    assert_eq!(r.drv.vring_base(2).unwrap(), 0x1236);
    r.drv.set_group_asid(1, 1).unwrap();
    let mem = DmaMemory::new("t", 4096).unwrap();
    r.drv.iotlb_map(1, 0x10000, &mem, 0, 4096, 3).unwrap();
    r.drv.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK).unwrap();
    r.drv.suspend().unwrap();

    let want = [
        Request::SetStatus { status: 1 },
        Request::SetVqReady { index: 1, ready: true },
        Request::GetVqState { index: 2 },
        Request::SetVqGroupAsid { group: 1, asid: 1 },
        Request::UpdateIotlb { asid: 1, start: 0, last: u64::MAX },
        Request::SetStatus { status: 0x0f },
        Request::Suspend,
    ];
    assert_eq!(r.resp.seen(), want);
    let log = r.model.message_log("n0");
    assert_eq!(log.len(), want.len() + 1);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.request_id, i as u32);
        assert_eq!(e.result, Some(VDUSE_REQ_RESULT_OK));
    }
    // The GET_VQ_STATE reply payload is logged as the device wrote it.
    assert_eq!(&log[3].reply_payload[0..6], &[2, 0, 0, 0, 0x36, 0x12]);
}

#[test]
fn queue_ready_and_suspend_messages_need_the_vduse_features() {
    // Without VDUSE_F_QUEUE_READY: enable is local, no message.
    let r = rig_with(cfg73(), net("n0"), 1, 0);
    r.drv.set_vring_enable(0, true).unwrap();
    assert!(r.dev.vq_info(0).unwrap().ready);
    bring_up(&r, &[]);
    assert_eq!(terrno(r.drv.suspend()), Errno::EOPNOTSUPP);
    assert_eq!(terrno(r.drv.set_backend_features(1 << 4)), Errno::EOPNOTSUPP);
    assert!(r.resp.seen().iter().all(|q| !matches!(q, Request::SetVqReady { .. } | Request::Suspend)));
    // Resume never exists for VDUSE; before DRIVER_OK both are no-ops.
    assert_eq!(terrno(r.drv.resume()), Errno::EOPNOTSUPP);
    r.drv.set_status(0).unwrap();
    r.drv.suspend().unwrap();
    r.drv.resume().unwrap();
}

#[test]
fn a_timeout_marks_the_device_broken() {
    let r = rig();
    r.resp.set(|_, q| if matches!(q, Request::SetStatus { status: 1 }) { Answer::Silent } else { Answer::Ok });
    let start = Instant::now();
    // vhost's SET_STATUS does not report the failure; the status stays.
    r.drv.set_status(status::ACKNOWLEDGE).unwrap();
    assert!(start.elapsed() >= T);
    assert!(r.drv.is_broken());
    assert_eq!(r.drv.status().unwrap(), 0);
    // Later messages fail at once with EIO, without reaching the device.
    let start = Instant::now();
    assert_eq!(terrno(r.drv.vring_base(0)), Errno::EIO);
    assert_eq!(terrno(r.drv.set_status(0)), Errno::EIO);
    assert!(start.elapsed() < T / 2);
    let log = r.model.message_log("n0");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].result, None);
    // Device-face calls are refused.
    assert!(matches!(r.dev.vq_info(0), Err(VduseError::Broken)));
    assert!(matches!(r.dev.set_config(0, &[1]), Err(VduseError::Broken)));
    assert!(matches!(r.dev.iotlb_get_fd(0, 0, 0), Err(VduseError::Broken)));
    assert!(matches!(r.dev.read_request(&mut [0u8; 152]), Err(VduseError::Broken)));
    // The request fd wakes pollers (hang-up) so the device notices.
    let mut fds = [PollFd::new(r.dev.request_fd(), PollFlags::POLLIN)];
    assert_eq!(nix::poll::poll(&mut fds, PollTimeout::from(0u16)).unwrap(), 1);
}

#[test]
fn failed_replies_do_not_apply_state() {
    let r = rig();
    r.drv.set_backend_features(0xe).unwrap();
    r.resp.set(|_, _| Answer::Failed);
    // SET_STATUS refused: vhost returns 0, the status is unchanged.
    r.drv.set_status(status::ACKNOWLEDGE).unwrap();
    assert_eq!(r.drv.status().unwrap(), 0);
    // SET_VQ_GROUP_ASID refused: EIO, the group keeps its AS.
    assert_eq!(terrno(r.drv.set_group_asid(1, 1)), Errno::EIO);
    let dev = r.model.find("n0").unwrap();
    assert_eq!(dev.group_asid(1), Some(0));
    // UPDATE_IOTLB refused: the write fails, and the domain is empty.
    let mem = DmaMemory::new("t", 4096).unwrap();
    assert_eq!(terrno(r.drv.iotlb_map(0, 0x1000, &mem, 0, 4096, 3)), Errno::EFAULT);
    r.resp.set(|_, _| Answer::Ok);
    assert_eq!(errno(r.dev.iotlb_get_fd(0, 0x1000, 0x1000)), Errno::EINVAL);
    // ...and not in the vhost IOTLB either: mapping it again works.
    r.drv.iotlb_map(0, 0x1000, &mem, 0, 4096, 3).unwrap();
    assert!(r.dev.iotlb_get_fd(0, 0x1000, 0x1000).is_ok());
    // GET_VQ_STATE refused: EIO.
    r.resp.set(|_, _| Answer::Failed);
    assert_eq!(terrno(r.drv.vring_base(0)), Errno::EIO);
    assert!(!r.drv.is_broken());
    // SET_VQ_READY refused: the kernel breaks the device; ready unchanged.
    r.drv.set_vring_enable(0, true).unwrap();
    assert!(r.drv.is_broken());
    assert!(!dev.vq_ready(0));
}

#[test]
fn failed_suspend_and_reset() {
    let r = rig();
    bring_up(&r, &[0]);
    r.resp.set(|_, _| Answer::Failed);
    assert_eq!(terrno(r.drv.suspend()), Errno::EIO);
    let dev = r.model.find("n0").unwrap();
    assert!(!dev.is_suspended());
    // A refused reset still resets locally, and reports EIO.
    assert_eq!(terrno(r.drv.set_status(0)), Errno::EIO);
    assert_eq!(r.drv.status().unwrap(), 0);
    assert!(!r.dev.vq_info(0).unwrap().ready);
    // The failed reset leaves vhost's vq_num_max at 0: SET_VRING_NUM fails.
    assert_eq!(terrno(r.drv.set_vring_num(0, 64)), Errno::EINVAL);
}

#[test]
fn set_group_asid_rules() {
    let r = rig();
    r.drv.set_backend_features(0xe).unwrap();
    assert_eq!(terrno(r.drv.set_group_asid(3, 0)), Errno::ENOBUFS, "group >= nvqs");
    assert_eq!(terrno(r.drv.set_group_asid(2, 0)), Errno::EINVAL, "group >= ngroups");
    assert_eq!(terrno(r.drv.set_group_asid(1, 2)), Errno::EINVAL, "asid >= nas");
    assert!(r.resp.seen().is_empty());
    assert_eq!(r.drv.group_num().unwrap(), 2);
    assert_eq!(r.drv.as_num().unwrap(), 2);
    assert_eq!([0, 1, 2].map(|q| r.drv.vring_group(q).unwrap()), [0, 0, 1]);
    bring_up(&r, &[0]);
    r.resp.clear();
    assert_eq!(terrno(r.drv.set_group_asid(1, 1)), Errno::EBUSY);
    assert!(r.resp.seen().is_empty());
    // VQ_SETUP is refused under DRIVER_OK on API 1 too.
    assert_eq!(errno(r.dev.setup_vq(0, 64, 0)), Errno::EINVAL);
}

// ---------------------------------------------------------------- IOTLB

#[test]
fn get_fd2_sees_only_the_asked_address_space() {
    let r = rig();
    r.drv.set_backend_features(0xe).unwrap();
    let mem = DmaMemory::new("t", 8192).unwrap();
    mem.write(4096, b"asid one");
    // The device looks the mapping up while handling UPDATE_IOTLB.
    let found = Arc::new(Mutex::new(None));
    let f = found.clone();
    r.resp.set(move |dev, q| {
        if let Request::UpdateIotlb { asid: 1, .. } = q {
            *f.lock().unwrap() = dev.iotlb_get_fd(1, 0x100000, 0x100fff).ok().map(|g| (g.start, g.last, g.offset));
        }
        Answer::Ok
    });
    r.drv.iotlb_map(1, 0x100000, &mem, 4096, 4096, 3).unwrap();
    assert_eq!(*found.lock().unwrap(), Some((0x100000, 0x100fff, 4096)));

    let reg = r.dev.iotlb_get_fd(1, 0x100800, 0x100800).unwrap();
    assert_eq!((reg.start, reg.last, reg.offset, reg.perm), (0x100000, 0x100fff, 4096, 3));
    // The fd is the driver's memory.
    let mut b = [0u8; 8];
    nix::sys::uio::pread(&reg.fd, &mut b, reg.offset as i64).unwrap();
    assert_eq!(&b, b"asid one");
    assert_eq!(errno(r.dev.iotlb_get_fd(0, 0x100000, 0x100fff)), Errno::EINVAL);
    assert_eq!(errno(r.dev.iotlb_get_fd(2, 0x100000, 0x100fff)), Errno::EINVAL, "asid >= nas");
    assert_eq!(errno(r.dev.iotlb_get_fd(1, 0x2000, 0x1000)), Errno::EINVAL, "start > last");
    let info = r.dev.iotlb_info(1, 0, u64::MAX).unwrap();
    assert_eq!((info.start, info.last, info.asid), (0x100000, 0x100fff, 1));
    assert_eq!(errno(r.dev.iotlb_info(2, 0, 1)), Errno::EFAULT);
    assert_eq!(r.resp.seen().last(), Some(&Request::UpdateIotlb { asid: 1, start: 0, last: u64::MAX }));

    // Overlaps and bad sizes are refused by vhost.
    assert_eq!(terrno(r.drv.iotlb_map(1, 0x100800, &mem, 0, 4096, 3)), Errno::EFAULT);
    assert_eq!(terrno(r.drv.iotlb_map(1, 0, &mem, 0, 0, 3)), Errno::EINVAL);
    assert_eq!(terrno(r.drv.iotlb_map(1, 0, &mem, 4096, 8192, 3)), Errno::EFAULT);
    assert_eq!(terrno(r.drv.iotlb_map(2, 0, &mem, 0, 4096, 3)), Errno::EFAULT);
    // The lowest overlapping region is returned.
    r.drv.iotlb_map(1, 0x10000, &mem, 0, 4096, 1).unwrap();
    assert_eq!(r.dev.iotlb_get_fd(1, 0, u64::MAX).unwrap().start, 0x10000);

    r.drv.iotlb_unmap(1, 0x100000, 4096).unwrap();
    assert_eq!(errno(r.dev.iotlb_get_fd(1, 0x100000, 0x100fff)), Errno::EINVAL);
    assert!(r.dev.iotlb_get_fd(1, 0x10000, 0x10000).is_ok());
    assert_eq!(terrno(r.drv.iotlb_unmap(0, 0, 4096)), Errno::EFAULT, "asid 0 never used");
}

#[test]
fn without_iotlb_asid_acked_every_message_goes_to_asid_0() {
    let r = rig();
    let mem = DmaMemory::new("t", 4096).unwrap();
    r.drv.iotlb_map(1, 0x4000, &mem, 0, 4096, 3).unwrap();
    assert!(r.dev.iotlb_get_fd(0, 0x4000, 0x4000).is_ok());
    assert_eq!(errno(r.dev.iotlb_get_fd(1, 0x4000, 0x4000)), Errno::EINVAL);
    assert_eq!(r.resp.seen(), [Request::UpdateIotlb { asid: 0, start: 0, last: u64::MAX }]);
}

#[test]
fn api_v0_device_has_one_address_space_and_v0_messages() {
    let r = rig_with(cfg73(), DeviceConfig { ngroups: 0, nas: 0, ..net("v0") }, 0, 0);
    r.drv.set_backend_features(0xe).unwrap();
    assert_eq!((r.drv.group_num().unwrap(), r.drv.as_num().unwrap()), (1, 1));
    assert_eq!(r.drv.vring_group(2).unwrap(), 0);
    assert_eq!(errno(r.dev.setup_vq(0, 64, 1)), Errno::EINVAL);
    // The kernel refuses SET_GROUP_ASID on API 0 even for group 0 / asid 0.
    assert_eq!(terrno(r.drv.set_group_asid(0, 0)), Errno::EINVAL);
    assert_eq!(terrno(r.drv.set_group_asid(0, 1)), Errno::EINVAL);
    let mem = DmaMemory::new("t", 4096).unwrap();
    r.drv.iotlb_map(0, 0x8000, &mem, 0, 4096, 3).unwrap();
    assert_eq!(r.resp.seen(), [Request::UpdateIotlb { asid: 0, start: 0, last: u64::MAX }]);
    assert!(r.dev.iotlb_get_fd(0, 0x8000, 0x8fff).is_ok());
    assert_eq!(errno(r.dev.iotlb_get_fd(1, 0x8000, 0x8fff)), Errno::EINVAL);
    assert_eq!(errno(r.dev.iotlb_info(1, 0, 1)), Errno::EFAULT);
    // The v0 wire form has no asid field: bytes 40..44 stay zero.
    let bytes = Request::UpdateIotlb { asid: 7, start: 0, last: u64::MAX }.encode(0, 0);
    assert_eq!(&bytes[40..44], &[0; 4]);
}

// ---------------------------------------------------------------- vqs, kicks, interrupts

#[test]
fn vq_info_shows_what_the_driver_set() {
    let r = rig();
    assert_eq!(r.drv.max_vring_num().unwrap(), 256);
    assert_eq!(r.drv.vq_count().unwrap(), 3);
    assert_eq!(terrno(r.drv.set_vring_num(0, 100)), Errno::EINVAL, "not a power of two");
    assert_eq!(terrno(r.drv.set_vring_num(0, 512)), Errno::EINVAL, "above num_max");
    assert_eq!(terrno(r.drv.set_vring_num(5, 64)), Errno::ENOBUFS);
    assert_eq!(terrno(r.drv.set_vring_addr(0, 0, 0x2001, 0x3000)), Errno::EINVAL, "avail alignment");
    assert_eq!(terrno(r.drv.set_vring_addr(0, 0, 0x2000, 0x3002)), Errno::EINVAL, "used alignment");
    r.drv.set_vring_num(1, 128).unwrap();
    r.drv.set_vring_addr(1, 0x1000, 0x2000, 0x3000).unwrap();
    r.drv.set_vring_base(1, 77).unwrap();
    r.drv.set_vring_enable(1, true).unwrap();
    let info = r.dev.vq_info(1).unwrap();
    assert_eq!(
        info,
        VqInfo {
            index: 1,
            num: 128,
            desc_addr: 0x1000,
            driver_addr: 0x2000,
            device_addr: 0x3000,
            avail_index: 77,
            ready: true
        }
    );
    assert_eq!(errno(r.dev.vq_info(3)), Errno::EINVAL);
    // Under DRIVER_OK (not suspended) addresses and bases are frozen.
    bring_up(&r, &[]);
    assert_eq!(terrno(r.drv.set_vring_addr(1, 0, 0, 0)), Errno::EINVAL);
    assert_eq!(terrno(r.drv.set_vring_base(1, 1)), Errno::EINVAL);
    r.drv.suspend().unwrap();
    r.drv.set_vring_base(1, 5).unwrap();
    assert_eq!(r.dev.vq_info(1).unwrap().avail_index, 5);
}

#[test]
fn kicks_are_delivered_latched_or_dropped_as_in_the_kernel() {
    let r = rig();
    let kick = eventfd();
    // Not ready: dropped, even once a kickfd exists.
    r.drv.kick(0).unwrap();
    r.dev.set_vq_kickfd(0, Some(kick.as_fd())).unwrap();
    assert_eq!(eventfd_count(&kick), 0);
    r.drv.set_vring_enable(0, true).unwrap();
    r.drv.kick(0).unwrap();
    assert_eq!(eventfd_count(&kick), 1);
    // Ready without a kickfd: remembered, delivered when one is set.
    r.dev.set_vq_kickfd(0, None).unwrap();
    r.drv.kick(0).unwrap();
    r.drv.kick(0).unwrap();
    r.dev.set_vq_kickfd(0, Some(kick.as_fd())).unwrap();
    assert_eq!(eventfd_count(&kick), 1);
    // Not an eventfd / bad index.
    let (p, _w) = nix::unistd::pipe().unwrap();
    assert_eq!(errno(r.dev.set_vq_kickfd(0, Some(p.as_fd()))), Errno::EINVAL);
    assert_eq!(errno(r.dev.set_vq_kickfd(3, None)), Errno::EINVAL);
    // Suspended: dropped.
    bring_up(&r, &[]);
    r.drv.suspend().unwrap();
    r.drv.kick(0).unwrap();
    assert_eq!(eventfd_count(&kick), 0);
}

#[test]
fn interrupts_reach_the_driver_only_when_the_kernel_would_deliver_them() {
    let r = rig();
    // Nothing ready, no DRIVER_OK: the work path refuses.
    assert_eq!(errno(r.dev.inject_vq_irq(0)), Errno::EINVAL);
    assert_eq!(errno(r.dev.inject_config_irq()), Errno::EINVAL);
    assert_eq!(errno(r.dev.inject_vq_irq(3)), Errno::EINVAL);
    // A ready vq is signalled directly, before DRIVER_OK too.
    r.drv.set_vring_enable(0, true).unwrap();
    r.dev.inject_vq_irq(0).unwrap();
    assert_eq!(r.drv.irq_count(0), 1);
    assert!(r.drv.wait_interrupt(0, Duration::ZERO).unwrap());
    assert!(!r.drv.wait_interrupt(0, Duration::from_millis(5)).unwrap(), "consumed");
    bring_up(&r, &[0]);
    // Not ready under DRIVER_OK: accepted and dropped.
    r.dev.inject_vq_irq(1).unwrap();
    assert_eq!(r.drv.irq_count(1), 0);
    assert!(!r.drv.wait_interrupt(1, Duration::ZERO).unwrap());
    // Config interrupts need DRIVER_OK.
    r.dev.inject_config_irq().unwrap();
    assert_eq!(r.drv.config_irq_count(), 1);
    assert!(r.drv.wait_config_interrupt(Duration::ZERO).unwrap());
    // Another thread's interrupt wakes a waiter.
    let dev = r.dev.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        dev.inject_vq_irq(0).unwrap();
    });
    assert!(r.drv.wait_interrupt(0, Duration::from_millis(500)).unwrap());
    t.join().unwrap();
    // Suspended: refused.
    r.drv.suspend().unwrap();
    assert_eq!(errno(r.dev.inject_vq_irq(0)), Errno::EINVAL);
    assert_eq!(errno(r.dev.inject_config_irq()), Errno::EINVAL);
}

#[test]
fn needs_reset_is_visible_to_the_driver_with_a_config_interrupt() {
    let r = rig();
    bring_up(&r, &[0]);
    assert!(r.dev.signal_needs_reset());
    assert_eq!(r.drv.status().unwrap(), 0x0f | status::DEVICE_NEEDS_RESET);
    assert!(r.drv.wait_config_interrupt(Duration::ZERO).unwrap());
    r.drv.set_status(0).unwrap();
    assert_eq!(r.drv.status().unwrap(), 0);
}

#[test]
fn config_space_and_features() {
    let r = rig();
    let mut b = [0u8; 4];
    r.drv.read_config(8, &mut b).unwrap();
    assert_eq!(b, [8, 9, 10, 11]);
    assert_eq!(terrno(r.drv.read_config(10, &mut b)), Errno::E2BIG);
    assert_eq!(terrno(r.drv.read_config(13, &mut b)), Errno::EINVAL);
    assert_eq!(terrno(r.drv.read_config(0, &mut [])), Errno::EINVAL);
    r.dev.set_config(10, &[0xaa, 0xbb]).unwrap();
    r.drv.read_config(8, &mut b).unwrap();
    assert_eq!(b, [8, 9, 0xaa, 0xbb]);
    assert_eq!(errno(r.dev.set_config(11, &[1, 2])), Errno::EINVAL);
    assert_eq!(errno(r.dev.set_config(12, &[])), Errno::EINVAL);
    assert_eq!(errno(r.dev.set_config(13, &[1])), Errno::EINVAL);

    assert_eq!(r.drv.device_id().unwrap(), 1);
    assert_eq!(r.drv.device_features().unwrap(), FEAT);
    // Stored unmasked; the device sees exactly what the driver wrote.
    r.drv.set_features(FEAT | 1 << 5).unwrap();
    assert_eq!(r.dev.negotiated_features().unwrap(), FEAT | 1 << 5);
    r.drv.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
    assert_eq!(terrno(r.drv.set_features(FEAT)), Errno::EBUSY);
    // Clearing bits without a reset is refused.
    assert_eq!(terrno(r.drv.set_status(status::ACKNOWLEDGE)), Errno::EINVAL);
}

#[test]
fn reset_clears_queue_state_and_keeps_groups_maps_and_config() {
    let r = rig();
    r.drv.set_backend_features(0xe).unwrap();
    r.drv.set_group_asid(1, 1).unwrap();
    let mem = DmaMemory::new("t", 4096).unwrap();
    r.drv.iotlb_map(1, 0x1000, &mem, 0, 4096, 3).unwrap();
    let kick = eventfd();
    r.dev.set_vq_kickfd(0, Some(kick.as_fd())).unwrap();
    bring_up(&r, &[0]);
    r.dev.set_config(0, &[0x55]).unwrap();
    r.drv.suspend().unwrap();

    r.drv.set_status(0).unwrap();
    assert_eq!(r.resp.seen().last(), Some(&Request::SetStatus { status: 0 }));
    let dev = r.model.find("n0").unwrap();
    assert_eq!(r.drv.status().unwrap(), 0);
    assert_eq!(r.dev.negotiated_features().unwrap(), 0);
    assert_eq!(dev.driver_features(), 0);
    assert!(!dev.is_suspended());
    assert_eq!(r.dev.vq_info(0).unwrap(), VqInfo { index: 0, ..Default::default() });
    // The kickfd is released: a kick is latched, not signalled.
    r.drv.set_vring_enable(0, true).unwrap();
    r.drv.kick(0).unwrap();
    assert_eq!(eventfd_count(&kick), 0);
    // Kept: group -> AS, mappings, config, num_max, vq groups.
    assert_eq!(dev.group_asid(1), Some(1));
    assert!(r.dev.iotlb_get_fd(1, 0x1000, 0x1000).is_ok());
    let mut b = [0u8; 1];
    r.drv.read_config(0, &mut b).unwrap();
    assert_eq!(b, [0x55]);
    assert_eq!(r.drv.max_vring_num().unwrap(), 256);
    assert_eq!(r.drv.vring_group(2).unwrap(), 1);
}

#[test]
fn detach_resets_and_closes_the_driver_face() {
    let r = rig();
    bring_up(&r, &[0]);
    r.resp.clear();
    r.model.detach("n0").unwrap();
    assert_eq!(r.resp.seen(), [Request::SetStatus { status: 0 }]);
    assert_eq!(terrno(r.drv.status()), Errno::EBADF);
    assert_eq!(terrno(r.drv.kick(0)), Errno::EBADF);
    assert_eq!(errno(r.model.detach("n0")), Errno::ENODEV);
    // A new attachment is a fresh driver face.
    let d2 = r.model.attach_vhost_vdpa("n0").unwrap();
    assert_eq!(d2.status().unwrap(), 0);
    assert_eq!(terrno(r.drv.status()), Errno::EBADF);
}

// ---------------------------------------------------------------- the message channel

#[test]
fn read_and_write_follow_the_kernel_rules() {
    let model = KernelModel::new(cfg73());
    let dev = create(&model, net("n0"), 1, 0);
    let mut small = [0u8; 100];
    assert_eq!(errno(dev.read_request(&mut small)), Errno::EINVAL);
    assert_eq!(dev.read_request(&mut [0u8; 152]).unwrap(), None);
    assert_eq!(errno(dev.write_response(&Response::ok(0).encode()[..100])), Errno::EINVAL);
    assert_eq!(errno(dev.write_response(&Response::ok(0).encode())), Errno::ENOENT);

    // Answer the attach-time reset by hand.
    let m2 = model.clone();
    let t = std::thread::spawn(move || m2.attach_vhost_vdpa("n0").map(|_| ()));
    let mut fds = [PollFd::new(dev.request_fd(), PollFlags::POLLIN)];
    assert_eq!(nix::poll::poll(&mut fds, PollTimeout::from(1000u16)).unwrap(), 1);
    let mut buf = [0u8; 200];
    assert_eq!(dev.read_request(&mut buf).unwrap(), Some(152));
    let (id, req) = Request::parse(&buf, 1).unwrap();
    assert_eq!(req, Request::SetStatus { status: 0 });
    // The fd is no longer readable once the message was read.
    let mut fds = [PollFd::new(dev.request_fd(), PollFlags::POLLIN)];
    assert_eq!(nix::poll::poll(&mut fds, PollTimeout::from(0u16)).unwrap(), 0);
    let mut resp = Response::ok(id).encode();
    resp[8] = 1;
    assert_eq!(errno(dev.write_response(&resp)), Errno::EINVAL, "reserved not zero");
    assert_eq!(errno(dev.write_response(&Response::ok(id + 1).encode())), Errno::ENOENT);
    assert_eq!(dev.write_response(&Response::ok(id).encode()).unwrap(), 152);
    t.join().unwrap().unwrap();
    assert_eq!(errno(dev.write_response(&Response::ok(id).encode())), Errno::ENOENT, "already answered");
}

#[test]
fn closing_the_device_requeues_unanswered_messages() {
    let model = KernelModel::new(cfg73());
    let ctl = model.control();
    let dev = create(&model, net("n0"), 1, 0);
    let m2 = model.clone();
    let t = std::thread::spawn(move || m2.attach_vhost_vdpa("n0").map(|_| ()));
    let mut fds = [PollFd::new(dev.request_fd(), PollFlags::POLLIN)];
    assert_eq!(nix::poll::poll(&mut fds, PollTimeout::from(1000u16)).unwrap(), 1);
    let mut buf = [0u8; 152];
    dev.read_request(&mut buf).unwrap().unwrap();
    let (id, _) = Request::parse(&buf, 1).unwrap();
    drop(dev);
    let dev = ctl.open_device("n0").unwrap();
    let mut again = [0u8; 152];
    assert_eq!(dev.read_request(&mut again).unwrap(), Some(152));
    assert_eq!(Request::parse(&again, 1).unwrap().0, id);
    dev.write_response(&Response::ok(id).encode()).unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn raw_messages_reach_the_device_and_do_not_break_it() {
    let r = rig();
    let mut unknown = Request::Suspend.encode(4242, 1);
    unknown[0..4].copy_from_slice(&77u32.to_le_bytes());
    let reply = r.drv.send_raw_message(&unknown).unwrap().unwrap();
    let (id, result, _) = Response::parse(&reply).unwrap();
    assert_eq!((id, result), (4242, VDUSE_REQ_RESULT_FAILED));
    // Truncated: the device cannot answer; the hook times out, no break.
    assert_eq!(r.drv.send_raw_message(&[1, 0, 0]).unwrap(), None);
    assert!(!r.drv.is_broken());
    r.drv.set_status(status::ACKNOWLEDGE).unwrap();
    assert_eq!(r.drv.status().unwrap(), 1);
}

#[test]
fn attach_fails_when_nobody_answers_the_reset() {
    let model = KernelModel::new(cfg73());
    let _dev = create(&model, net("n0"), 1, 0);
    assert_eq!(errno(model.attach_vhost_vdpa("n0")), Errno::EIO);
    let log = model.message_log("n0");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].result, None);
    assert_eq!(errno(model.attach_vhost_vdpa("n0")), Errno::EIO, "broken: the reset fails at once");
}

#[test]
fn a_refused_iotlb_update_empties_the_whole_domain_until_the_next_one() {
    let r = rig();
    let mem = DmaMemory::new("t", 8192).unwrap();
    r.drv.iotlb_map(0, 0x1000, &mem, 0, 4096, 3).unwrap();
    r.resp.set(|_, _| Answer::Failed);
    assert_eq!(terrno(r.drv.iotlb_map(0, 0x8000, &mem, 4096, 4096, 3)), Errno::EFAULT);
    // vduse_domain_clear_map drops every entry of the new map, old ones too.
    assert_eq!(errno(r.dev.iotlb_get_fd(0, 0x1000, 0x1000)), Errno::EINVAL);
    r.resp.set(|_, _| Answer::Ok);
    r.drv.iotlb_map(0, 0x20000, &mem, 0, 4096, 1).unwrap();
    // The next update carries vhost's whole IOTLB again (without the refused range).
    assert_eq!(r.dev.iotlb_get_fd(0, 0x1000, 0x1000).unwrap().perm, 3);
    assert_eq!(r.dev.iotlb_get_fd(0, 0x20000, 0x20000).unwrap().perm, 1);
    assert_eq!(errno(r.dev.iotlb_get_fd(0, 0x8000, 0x8000)), Errno::EINVAL);
}

#[test]
fn packed_rings_use_the_packed_vq_state() {
    let r = rig();
    r.drv.set_features(FEAT | 1 << 34).unwrap();
    // vhost's packed base: avail slot 5, counter 1; used slot 3, counter 0.
    r.drv.set_vring_base(0, 0x0003_8005).unwrap();
    // VQ_GET_INFO's packed view, folded as KernelDevice folds it.
    assert_eq!(r.dev.vq_info(0).unwrap().avail_index, 0x8005);
    // Answer GET_VQ_STATE by hand with packed fields.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    r.resp.set(move |_, _| {
        let _ = tx.lock().unwrap().send(());
        Answer::Silent
    });
    let drv = r.drv.clone();
    let t = std::thread::spawn(move || drv.vring_base(0));
    rx.recv_timeout(Duration::from_secs(1)).unwrap();
    let id = r.resp.seen.lock().unwrap()[0].0;
    // Bits outside each field are masked as vduse_dev.c does.
    let resp = Response::vq_state(id, VqState::Packed { index: 0, state: [0xff01, 0xfff3, 2, 9] });
    r.dev.write_response(&resp.encode()).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), (0x8000 | 0x7ff3) | 9 << 16);
    // A split base is 16 bits (vhost.c refuses more).
    r.drv.set_features(FEAT).unwrap();
    assert_eq!(terrno(r.drv.set_vring_base(0, 0x1_0000)), Errno::EINVAL);
}

/// The driver face enables queues after DRIVER_OK as a 7.3 kernel does
/// (QEMU's order): with VDUSE_F_QUEUE_READY a SET_VQ_READY message after the
/// DRIVER_OK one, answered before the queue counts as ready, so VQ_GET_INFO
/// still says "not ready" while the device handles it; without the feature
/// nothing reaches the device and only VQ_GET_INFO shows the change.
#[test]
fn queues_enabled_after_driver_ok_as_the_kernel_does() {
    for (features, messages) in [(3u64, true), (0, false)] {
        let r = rig_with(cfg73(), net("late"), 1, features);
        let seen_ready = Arc::new(Mutex::new(Vec::new()));
        let s = seen_ready.clone();
        r.resp.set(move |dev, q| {
            if let Request::SetVqReady { index, .. } = q {
                s.lock().unwrap().push(dev.vq_info(*index).unwrap().ready);
            }
            Answer::Ok
        });
        let kick = eventfd();
        r.dev.set_vq_kickfd(2, Some(kick.as_fd())).unwrap();
        r.drv.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
        r.drv.set_features(FEAT).unwrap();
        r.drv.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
        for q in [2, 0] {
            r.drv.set_vring_num(q, 256).unwrap();
            r.drv.set_vring_addr(q, 0x1000, 0x2000, 0x3000).unwrap();
        }
        r.drv.set_status(0x0f).unwrap();
        // A kick on a queue not enabled yet is dropped.
        r.drv.kick(2).unwrap();
        assert_eq!(eventfd_count(&kick), 0);
        r.drv.set_vring_enable(2, true).unwrap();
        r.drv.set_vring_enable(0, true).unwrap();
        assert!(r.dev.vq_info(2).unwrap().ready && r.dev.vq_info(0).unwrap().ready);
        r.drv.kick(2).unwrap();
        assert_eq!(eventfd_count(&kick), 1, "kicks reach an enabled queue");
        let seen = r.resp.seen();
        let ok = seen.iter().position(|q| *q == Request::SetStatus { status: 0x0f }).expect("DRIVER_OK");
        let ready: Vec<Request> =
            seen[ok..].iter().filter(|q| matches!(q, Request::SetVqReady { .. })).copied().collect();
        if messages {
            assert_eq!(
                ready,
                vec![Request::SetVqReady { index: 2, ready: true }, Request::SetVqReady { index: 0, ready: true }]
            );
            assert_eq!(*seen_ready.lock().unwrap(), vec![false, false], "ready only after the reply");
        } else {
            assert!(ready.is_empty() && seen.iter().all(|q| !matches!(q, Request::SetVqReady { .. })), "{seen:?}");
        }
        // Disabling after DRIVER_OK: the same, and kicks are dropped again.
        r.drv.set_vring_enable(2, false).unwrap();
        assert!(!r.dev.vq_info(2).unwrap().ready);
        r.drv.kick(2).unwrap();
        assert_eq!(eventfd_count(&kick), 0);
        assert_eq!(r.resp.seen().last() == Some(&Request::SetVqReady { index: 2, ready: false }), messages);
    }
}
