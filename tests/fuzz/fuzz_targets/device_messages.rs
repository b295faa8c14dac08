//! Sequences of control messages through the embedded kernel model's device
//! face: a running vduse-net device (slow path, poll threads, loopback
//! ports) gets whatever a vhost-vdpa driver can make the kernel send
//! (status changes, vring setup, IOTLB maps and unmaps in any ASID, group
//! moves, suspend, GET_VQ_STATE, kicks) in any order, plus raw messages of
//! any type and length.
//!
//! Oracles: every message is answered before the model's timeout (a late
//! reply marks the device broken), a raw message gets a reply with its own
//! id and a defined result, a GET_VQ_STATE for a vq that does not exist is
//! FAILED, the device's threads never end on their own (a panic ends them),
//! and the device stops cleanly at the end.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy, NetDevice};
use vduse_net::driver::{DmaMemory, DriverTransport};
use vduse_net::uapi::vduse::{REQUEST_SIZE, VDUSE_GET_VQ_STATE, VDUSE_REQ_RESULT_FAILED, VDUSE_REQ_RESULT_OK};
use vduse_net::uapi::virtio::status;
use vduse_net::vduse::model::{KernelModel, ModelConfig};
use vduse_net::vduse::Request;

const NAME: &str = "fuzz0";
const MEM_LEN: usize = 16 * 4096;
const IOVA: u64 = 0x10_0000;

fn memory() -> &'static Arc<DmaMemory> {
    static M: OnceLock<Arc<DmaMemory>> = OnceLock::new();
    M.get_or_init(|| Arc::new(DmaMemory::new("fuzz-dev", MEM_LEN).expect("memfd")))
}

fn request(u: &mut Unstructured<'_>, vqs: u32) -> ArbResult<Request> {
    let small = |u: &mut Unstructured<'_>, n: u32| -> ArbResult<u32> {
        if u.ratio(7, 8)? {
            u.int_in_range(0..=n)
        } else {
            u.arbitrary()
        }
    };
    Ok(match u.int_in_range(0u8..=5)? {
        0 => Request::GetVqState { index: small(u, vqs)? },
        1 => Request::SetStatus { status: u.arbitrary()? },
        2 => Request::UpdateIotlb { asid: small(u, 2)?, start: u.arbitrary()?, last: u.arbitrary()? },
        3 => Request::SetVqGroupAsid { group: small(u, 3)?, asid: small(u, 2)? },
        4 => Request::SetVqReady { index: small(u, vqs)?, ready: u.arbitrary()? },
        _ => Request::Suspend,
    })
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let cfg = match u.int_in_range(0u8..=3)? {
        0 => ModelConfig::kernel_7_3(),
        1 => ModelConfig::kernel_6_12(),
        _ => ModelConfig::patched_7_3(),
    };
    let model = KernelModel::new(cfg.with_timeout(Duration::from_secs(5)));
    let opts = DeviceOptions {
        name: NAME.into(),
        queue_pairs: u.int_in_range(1..=2)?,
        ring_size: 64,
        idle: IdlePolicy::Adaptive { spins: 16 },
        ..DeviceOptions::default()
    };
    let dev = NetDevice::create(model.control(), opts).expect("create");
    let layout = dev.layout().clone();
    let ports: Vec<Box<dyn Port>> = (0..layout.pairs)
        .map(|_| Box::new(Loopback::new(64, u.arbitrary().unwrap_or(true))) as Box<dyn Port>)
        .collect();
    let running = dev.start(ports).expect("start");
    let drv = model.attach_vhost_vdpa(NAME).expect("attach");
    let vqs = layout.vq_num();
    let mem = memory();
    let api = layout.api;

    let mut ops = 0;
    while !u.is_empty() && ops < 64 {
        ops += 1;
        let vq = if u.ratio(7, 8)? { u.int_in_range(0..=vqs)? } else { u.arbitrary()? };
        let asid = if u.ratio(7, 8)? { u.int_in_range(0..=2)? } else { u.arbitrary()? };
        // Driver-face errors are the kernel refusing the call: expected.
        match u.int_in_range(0u8..=15)? {
            0 | 1 => {
                // Mostly the usual progression, sometimes anything.
                let cur = drv.status().unwrap_or(0);
                let s = if u.ratio(3, 4)? {
                    match u.int_in_range(0u8..=4)? {
                        0 => 0,
                        1 => cur | status::ACKNOWLEDGE,
                        2 => cur | status::ACKNOWLEDGE | status::DRIVER,
                        3 => cur | status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
                        _ => cur | status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
                    }
                } else {
                    u.arbitrary()?
                };
                let _ = drv.set_status(s);
            }
            2 => {
                let offered = drv.device_features().unwrap_or(0);
                let f: u64 = u.arbitrary()?;
                let _ = drv.set_features(if u.ratio(3, 4)? { f & offered } else { f });
            }
            3 => {
                let num = if u.ratio(3, 4)? { 1 << u.int_in_range(0..=7)? } else { u.arbitrary()? };
                let _ = drv.set_vring_num(vq, num);
            }
            4 => {
                let mut addr = || -> ArbResult<u64> {
                    Ok(if u.ratio(3, 4)? {
                        IOVA + u.int_in_range(0..=MEM_LEN as u64 / 64)? * 64
                    } else {
                        u.arbitrary()?
                    })
                };
                let (d, a, us) = (addr()?, addr()?, addr()?);
                let _ = drv.set_vring_addr(vq, d, a, us);
            }
            5 => {
                let _ = drv.set_vring_base(vq, u.arbitrary()?);
            }
            6 => {
                let _ = drv.set_vring_enable(vq, u.arbitrary()?);
            }
            7 | 8 => {
                let off = u.int_in_range(0..=15usize)? * 4096;
                let len = u.int_in_range(1..=(MEM_LEN - off) / 4096)? * 4096;
                let iova = if u.ratio(3, 4)? { IOVA + off as u64 } else { u.arbitrary()? };
                let perm = u.int_in_range(0..=3)?;
                let _ = drv.iotlb_map(asid, iova, mem, off, len, perm);
            }
            9 => {
                let iova = if u.ratio(3, 4)? { IOVA + u.int_in_range(0..=15u64)? * 4096 } else { u.arbitrary()? };
                let _ = drv.iotlb_unmap(asid, iova, u.arbitrary()?);
            }
            10 => {
                let _ = drv.set_group_asid(u.int_in_range(0..=3)?, asid);
            }
            11 => {
                let _ = if u.arbitrary()? { drv.suspend() } else { drv.resume() };
            }
            12 => {
                let _ = drv.vring_base(vq);
            }
            13 => {
                let _ = drv.kick(vq);
            }
            14 => {
                let _ = drv.set_backend_features(u.arbitrary::<u64>()? & 0x1ff);
            }
            _ => {
                // A raw message: structured with random fields, or bytes.
                let (bytes, id) = if u.ratio(1, 2)? {
                    let id: u32 = u.arbitrary()?;
                    (request(&mut u, vqs)?.encode(id, api).to_vec(), id)
                } else {
                    let len = u.int_in_range(8..=REQUEST_SIZE + 8)?;
                    let mut b = u.bytes(len)?.to_vec();
                    if u.ratio(3, 4)? {
                        // Mostly known types, so the payloads get exercised.
                        b[0..4].copy_from_slice(&u.int_in_range(0u32..=6)?.to_le_bytes());
                    }
                    let id = u32::from_le_bytes(b[4..8].try_into().unwrap());
                    (b, id)
                };
                let reply = drv.send_raw_message(&bytes);
                if drv.is_broken() {
                    // Only the model's own kernel messages break it.
                    panic!("device broken after a raw message");
                }
                if let Ok(reply) = reply {
                    let r = reply.expect("the device answered the raw message in time");
                    assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), id, "reply id");
                    let result = u32::from_le_bytes(r[4..8].try_into().unwrap());
                    assert!(result == VDUSE_REQ_RESULT_OK || result == VDUSE_REQ_RESULT_FAILED, "result {result}");
                    let kind = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
                    if bytes.len() >= REQUEST_SIZE && kind == VDUSE_GET_VQ_STATE {
                        let index = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
                        if index >= vqs {
                            assert_eq!(result, VDUSE_REQ_RESULT_FAILED, "GET_VQ_STATE of vq {index} of {vqs}");
                        }
                    }
                    if bytes.len() < REQUEST_SIZE {
                        assert_eq!(result, VDUSE_REQ_RESULT_FAILED, "truncated message accepted");
                    }
                }
            }
        }
        assert!(!drv.is_broken(), "a control message was not answered in time");
        assert!(!running.is_finished(), "device threads ended on their own");
    }
    let _ = model.detach(NAME);
    assert!(!model.message_log(NAME).iter().any(|m| m.result.is_none()), "a message went unanswered");
    running.stop().expect("device stops cleanly");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
