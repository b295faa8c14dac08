//! A full device lifecycle on the embedded kernel model, driven through its
//! vhost-vdpa driver face: negotiate, map memory in ASID 0 and ASID 1, move
//! the control queue's group to ASID 1, DRIVER_OK, UPDATE_IOTLB, suspend,
//! reset, destroy. Every control message the device saw, and every reply,
//! is checked.

use std::sync::Arc;
use std::time::Duration;

use vduse_net::backend::loopback::Loopback;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy, NetDevice};
use vduse_net::driver::{DmaMemory, DriverTransport};
use vduse_net::net::features;
use vduse_net::uapi::vduse::VDUSE_REQ_RESULT_OK;
use vduse_net::uapi::vhost_vdpa::{
    VHOST_ACCESS_RW, VHOST_BACKEND_F_IOTLB_ASID, VHOST_BACKEND_F_IOTLB_BATCH, VHOST_BACKEND_F_IOTLB_MSG_V2,
};
use vduse_net::uapi::virtio::status;
use vduse_net::vduse::model::{KernelModel, ModelConfig};
use vduse_net::vduse::Request;

const DATA_IOVA: u64 = 0x1000_0000;
const CVQ_IOVA: u64 = 0x8000_0000;

fn options(name: &str) -> DeviceOptions {
    DeviceOptions { name: name.into(), idle: IdlePolicy::Adaptive { spins: 64 }, ..DeviceOptions::default() }
}

#[test]
fn full_lifecycle_messages_and_replies() {
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)));
    let dev = NetDevice::create(model.control(), options("lc0")).expect("create");
    let layout = dev.layout().clone();
    assert_eq!(layout.api, 1);
    assert!(layout.has_cvq, "the patched kernel accepts CTRL_VQ");
    assert_eq!((layout.ngroups, layout.nas, layout.vq_num()), (2, 2, 3));
    let running = dev.start(vec![Box::new(Loopback::new(64, true))]).expect("start");
    let drv = model.attach_vhost_vdpa("lc0").expect("attach");

    // Negotiate as QEMU does.
    drv.set_status(status::ACKNOWLEDGE).unwrap();
    drv.set_status(status::ACKNOWLEDGE | status::DRIVER).unwrap();
    let offered = drv.device_features().unwrap();
    assert_eq!(offered, layout.features);
    let wanted = features::VERSION_1 | features::ACCESS_PLATFORM | features::CTRL_VQ | features::MAC;
    drv.set_features(offered & wanted).unwrap();
    let fok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    drv.set_status(fok).unwrap();
    assert_eq!(drv.status().unwrap(), fok, "device accepted the features");

    // Groups as designed: data pair in group 0, the CVQ alone in group 1.
    assert_eq!((drv.group_num().unwrap(), drv.as_num().unwrap()), (2, 2));
    assert_eq!((drv.vring_group(0).unwrap(), drv.vring_group(1).unwrap(), drv.vring_group(2).unwrap()), (0, 0, 1));

    // Without IOTLB_ASID every IOTLB message lands in ASID 0, as in the
    // kernel; negotiate it as QEMU does.
    let backend = drv.backend_features().unwrap();
    let want =
        (1 << VHOST_BACKEND_F_IOTLB_MSG_V2) | (1 << VHOST_BACKEND_F_IOTLB_BATCH) | (1 << VHOST_BACKEND_F_IOTLB_ASID);
    assert_eq!(backend & want, want);
    drv.set_backend_features(want).unwrap();

    // Memory: data rings in ASID 0, CVQ ring in ASID 1 only.
    let data = Arc::new(DmaMemory::new("lc-data", 1 << 20).unwrap());
    let cvq = Arc::new(DmaMemory::new("lc-cvq", 64 << 10).unwrap());
    drv.iotlb_map(0, DATA_IOVA, &data, 0, data.len(), VHOST_ACCESS_RW).unwrap();
    drv.iotlb_map(1, CVQ_IOVA, &cvq, 0, cvq.len(), VHOST_ACCESS_RW).unwrap();
    drv.set_group_asid(1, 1).unwrap();
    // Bad group / asid are refused by vhost-vdpa without a message.
    assert!(drv.set_group_asid(1, 2).is_err());

    let num = 64u16;
    for vq in 0..3u32 {
        let (mem_base, region) = if vq == 2 { (CVQ_IOVA, 0) } else { (DATA_IOVA, vq as u64 * 0x4000) };
        let desc = mem_base + region;
        drv.set_vring_num(vq, num).unwrap();
        drv.set_vring_addr(vq, desc, desc + 0x1000, desc + 0x2000).unwrap();
        drv.set_vring_base(vq, 0).unwrap();
        drv.set_vring_enable(vq, true).unwrap();
    }
    let ok = fok | status::DRIVER_OK;
    drv.set_status(ok).unwrap();
    assert_eq!(drv.status().unwrap(), ok);
    // Kernels 7.x refuse SET_GROUP_ASID while DRIVER_OK is set.
    assert!(drv.set_group_asid(1, 0).is_err());

    // An invalidation in ASID 0 reaches the device as UPDATE_IOTLB.
    drv.iotlb_unmap(0, DATA_IOVA, data.len() as u64).unwrap();
    assert_eq!(drv.vring_base(0).unwrap(), 0, "GET_VQ_STATE reports the device's avail position");
    drv.suspend().unwrap();
    drv.set_status(0).unwrap();
    assert_eq!(drv.status().unwrap(), 0);
    model.detach("lc0").unwrap();
    let stats = running.stop().expect("stop and destroy");
    assert_eq!(stats.slow_path.failed_replies, 0);

    let log = model.message_log("lc0");
    let seen: Vec<Request> = log.iter().map(|m| m.request).collect();
    let ready = |index| Request::SetVqReady { index, ready: true };
    let expected = vec![
        Request::SetStatus { status: 0 }, // vhost-vdpa open resets
        Request::SetStatus { status: status::ACKNOWLEDGE },
        Request::SetStatus { status: status::ACKNOWLEDGE | status::DRIVER },
        Request::SetStatus { status: fok },
        Request::UpdateIotlb { asid: 0, start: 0, last: u64::MAX },
        Request::UpdateIotlb { asid: 1, start: 0, last: u64::MAX },
        Request::SetVqGroupAsid { group: 1, asid: 1 },
        ready(0),
        ready(1),
        ready(2),
        Request::SetStatus { status: ok },
        Request::UpdateIotlb { asid: 0, start: 0, last: u64::MAX },
        Request::GetVqState { index: 0 },
        Request::Suspend,
        Request::SetStatus { status: 0 },
        Request::SetStatus { status: 0 }, // close of the vhost-vdpa fd resets again
    ];
    assert_eq!(seen, expected, "messages the device saw");
    for m in &log {
        assert_eq!(m.result, Some(VDUSE_REQ_RESULT_OK), "reply to {:?}", m.request);
    }
    // Request ids increase one by one.
    for w in log.windows(2) {
        assert_eq!(w[1].request_id, w[0].request_id + 1);
    }
    // GET_VQ_STATE reply: vq index then split avail index.
    let gvs = log.iter().find(|m| matches!(m.request, Request::GetVqState { .. })).unwrap();
    assert_eq!(u32::from_le_bytes(gvs.reply_payload[0..4].try_into().unwrap()), 0);
    assert_eq!(u16::from_le_bytes(gvs.reply_payload[4..6].try_into().unwrap()), 0);
}
