//! Control messages the device must survive and refuse, API v0 devices,
//! and the control-queue fallback on kernels that refuse CTRL_VQ.

use std::time::Duration;

use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy, NetDevice, RunningDevice};
use vduse_net::driver::{DmaMemory, DriverTransport};
use vduse_net::net::features;
use vduse_net::uapi::vduse::{VDUSE_API_VERSION_0, VDUSE_REQ_RESULT_FAILED, VDUSE_REQ_RESULT_OK};
use vduse_net::uapi::vhost_vdpa::VHOST_ACCESS_RW;
use vduse_net::uapi::virtio::status;
use vduse_net::vduse::model::{KernelModel, ModelConfig, ModelDriver};
use vduse_net::vduse::Request;

fn start(model: &std::sync::Arc<KernelModel>, name: &str) -> (RunningDevice, std::sync::Arc<ModelDriver>) {
    let opts =
        DeviceOptions { name: name.into(), idle: IdlePolicy::Adaptive { spins: 64 }, ..DeviceOptions::default() };
    let dev = NetDevice::create(model.control(), opts).expect("create");
    let pairs = dev.layout().pairs as usize;
    let ports: Vec<Box<dyn Port>> = (0..pairs).map(|_| Box::new(Loopback::new(64, true)) as Box<dyn Port>).collect();
    let running = dev.start(ports).expect("start");
    let drv = model.attach_vhost_vdpa(name).expect("attach");
    (running, drv)
}

fn result_of(reply: Option<Vec<u8>>) -> u32 {
    let r = reply.expect("device replied");
    u32::from_le_bytes(r[4..8].try_into().unwrap())
}

#[test]
fn malformed_control_messages_get_failed_replies_and_the_device_lives() {
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)));
    let (running, drv) = start(&model, "bad0");
    let api = 1;
    // Unknown request type.
    let mut unknown = Request::Suspend.encode(0, api);
    unknown[0..4].copy_from_slice(&77u32.to_le_bytes());
    assert_eq!(result_of(drv.send_raw_message(&unknown).unwrap()), VDUSE_REQ_RESULT_FAILED);
    // Out-of-range vq, group and asid.
    for bad in [
        Request::GetVqState { index: 99 },
        Request::SetVqReady { index: 99, ready: true },
        Request::SetVqGroupAsid { group: 9, asid: 0 },
        Request::SetVqGroupAsid { group: 0, asid: 9 },
        Request::UpdateIotlb { asid: 7, start: 0, last: u64::MAX },
    ] {
        let reply = drv.send_raw_message(&bad.encode(0, api)).unwrap();
        assert_eq!(result_of(reply), VDUSE_REQ_RESULT_FAILED, "{bad:?}");
    }
    // Truncated: the id is there, the payload is not.
    let truncated = Request::SetStatus { status: 1 }.encode(0, api);
    assert_eq!(result_of(drv.send_raw_message(&truncated[..20]).unwrap()), VDUSE_REQ_RESULT_FAILED);
    // Features the device never offered are refused at FEATURES_OK, and the
    // status does not take.
    drv.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    drv.set_features(features::VERSION_1 | features::ACCESS_PLATFORM | (1 << 63)).unwrap();
    drv.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
    assert_eq!(drv.status().unwrap() & status::FEATURES_OK, 0);
    // Still answering: a good message gets OK.
    let ok = drv.send_raw_message(&Request::GetVqState { index: 0 }.encode(0, api)).unwrap();
    assert_eq!(result_of(ok), VDUSE_REQ_RESULT_OK);
    assert!(!drv.is_broken());
    model.detach("bad0").unwrap();
    let stats = running.stop().unwrap();
    assert!(stats.slow_path.failed_replies >= 8, "{:?}", stats.slow_path);
}

#[test]
fn api_v0_kernel_gets_one_address_space_and_v0_messages() {
    let model = KernelModel::new(ModelConfig::kernel_6_12().with_timeout(Duration::from_secs(5)));
    let (running, drv) = start(&model, "v0dev");
    let layout = running.layout().clone();
    assert_eq!(layout.api, VDUSE_API_VERSION_0);
    assert_eq!((layout.ngroups, layout.nas), (0, 1));
    assert!(!layout.has_cvq, "6.12 refuses CTRL_VQ too");
    assert_eq!((drv.group_num().unwrap(), drv.as_num().unwrap()), (1, 1));
    drv.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    let f = drv.device_features().unwrap() & (features::VERSION_1 | features::ACCESS_PLATFORM);
    drv.set_features(f).unwrap();
    drv.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK).unwrap();
    let mem = DmaMemory::new("v0", 1 << 16).unwrap();
    drv.iotlb_map(0, 0x10_0000, &mem, 0, mem.len(), VHOST_ACCESS_RW).unwrap();
    // Only ASID 0 exists: group moves are refused.
    assert!(drv.set_group_asid(0, 1).is_err());
    model.detach("v0dev").unwrap();
    running.stop().unwrap();
    let log = model.message_log("v0dev");
    assert!(log.iter().any(|m| m.request == Request::UpdateIotlb { asid: 0, start: 0, last: u64::MAX }));
    assert!(!log.iter().any(|m| matches!(m.request, Request::SetVqGroupAsid { .. })));
    assert!(log.iter().all(|m| m.result == Some(VDUSE_REQ_RESULT_OK)), "{log:?}");
}

#[test]
fn kernel_refusing_ctrl_vq_gets_a_device_without_it() {
    let model = KernelModel::new(ModelConfig::kernel_7_3());
    let opts = DeviceOptions { name: "nocvq".into(), queue_pairs: 2, ..DeviceOptions::default() };
    let dev = NetDevice::create(model.control(), opts).expect("fallback create");
    let l = dev.layout();
    assert!(!l.has_cvq);
    assert_eq!(l.features & features::CTRL_VQ, 0);
    assert_ne!(l.dropped_features & features::CTRL_VQ, 0);
    assert_ne!(l.dropped_features & features::MQ, 0, "MQ needs the control queue");
    assert_eq!((l.vq_num(), l.ngroups), (4, 2));
    assert!(l.vduse_features != 0, "7.3 offers QUEUE_READY and SUSPEND");
    drop(dev);
    model.control().destroy_device("nocvq").unwrap();
}
