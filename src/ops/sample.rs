//! One sample of a process's devices: the schema of `vduse-net stats --json`
//! and of the stats socket's `stats` reply (documented in the README,
//! "Operating vduse-net"). Fields are only ever added; a reader ignores what
//! it does not know, and `version` changes when a field changes meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::classify::{self, Class};
use super::source::DeviceSource;
use super::state::{QueueView, RuleFired};
use crate::dataplane::{rx_vq, tx_vq};
use crate::net::config::{VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP};
use crate::net::features;
use crate::uapi::virtio::status;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub version: u32,
    /// Wall clock of the sample, Unix milliseconds.
    pub time_ms: u64,
    /// Monotonic nanoseconds since the process started serving stats
    /// (rates are computed from this, not from `time_ms`).
    pub uptime_ns: u64,
    pub process: ProcessInfo,
    pub devices: Vec<DeviceSample>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub command: String,
    pub instance: String,
    pub state: String,
    pub config: Option<String>,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSample {
    pub name: String,
    pub port: String,
    pub api: u64,
    pub queue_pairs: u16,
    pub active_queue_pairs: u16,
    pub control_queue: bool,
    pub vq_groups: u32,
    pub address_spaces: u32,
    pub mac: String,
    pub mtu: u16,
    pub ring_size: u16,
    pub burst: usize,
    pub idle: String,
    pub cores: Vec<usize>,
    /// Seconds since the device started.
    pub uptime_s: f64,
    /// The device was stopped and destroyed (its last counters stay).
    pub stopped: bool,
    pub status: StatusView,
    pub features: FeaturesView,
    pub link: String,
    pub announce_pending: bool,
    pub suspended: bool,
    pub group_asid: Vec<GroupAsid>,
    pub control_queue_state: Option<super::control::CvqState>,
    /// Slow-path counters (control messages by type, replies, CVQ commands).
    pub slow_path: BTreeMap<String, u64>,
    pub queues: Vec<PairSample>,
    pub totals: Totals,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    pub raw: u8,
    pub names: Vec<String>,
    pub driver_ok: bool,
    pub needs_reset: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeaturesView {
    /// Hex strings: JSON numbers lose bits above 2^53 in many readers.
    pub offered: String,
    pub offered_names: Vec<String>,
    pub negotiated: String,
    pub negotiated_names: Vec<String>,
    /// Offered features the kernel refused at CREATE_DEV.
    pub refused_by_kernel: Vec<String>,
    /// VDUSE features in effect (QUEUE_READY, SUSPEND).
    pub vduse: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupAsid {
    pub group: u32,
    pub asid: u32,
    pub vqs: Vec<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirCount {
    pub rx: u64,
    pub tx: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirReasons {
    pub rx: BTreeMap<String, u64>,
    pub tx: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueSample {
    pub vq: u32,
    pub ready: bool,
    pub enabled: bool,
    pub failed: bool,
    /// The rule that failed this queue last (kept across reset).
    pub last_error: Option<RuleFired>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortSample {
    pub kind: String,
    pub link: Option<String>,
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairSample {
    pub pair: u16,
    pub group: u32,
    pub asid: u32,
    pub core: Option<usize>,
    /// In use (VQ_PAIRS_SET) as the poll thread sees it.
    pub active: bool,
    pub suspended: bool,
    pub rx: QueueSample,
    pub tx: QueueSample,
    pub frames: DirCount,
    pub bytes: DirCount,
    /// Frames lost, by direction and reason.
    pub drops: DirReasons,
    /// Bursts that stopped with work left in place (nothing lost), by reason.
    pub backpressure: DirReasons,
    pub interrupts: u64,
    /// Kicks the poll thread woke on, when the dataplane counts them.
    pub kicks: Option<u64>,
    pub queue_errors: u64,
    /// Device busy cycles per frame, when the dataplane counts them.
    pub cycles_per_frame: Option<f64>,
    /// Every raw counter of the pair, by its dataplane name.
    pub counters: BTreeMap<String, u64>,
    pub port: Option<PortSample>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub frames: DirCount,
    pub bytes: DirCount,
    pub drops: u64,
    pub backpressure: u64,
    pub interrupts: u64,
    pub queue_errors: u64,
}

/// Field name -> value of a serializable counter snapshot.
pub fn counter_map<T: Serialize>(snap: &T) -> BTreeMap<String, u64> {
    match serde_json::to_value(snap) {
        Ok(serde_json::Value::Object(m)) => m.into_iter().filter_map(|(k, v)| v.as_u64().map(|v| (k, v))).collect(),
        _ => BTreeMap::new(),
    }
}

pub fn mac_string(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

pub fn status_names(s: u8) -> Vec<String> {
    let names = [
        (status::ACKNOWLEDGE, "ACKNOWLEDGE"),
        (status::DRIVER, "DRIVER"),
        (status::FEATURES_OK, "FEATURES_OK"),
        (status::DRIVER_OK, "DRIVER_OK"),
        (status::DEVICE_NEEDS_RESET, "NEEDS_RESET"),
        (status::FAILED, "FAILED"),
    ];
    names.iter().filter(|(b, _)| s & b != 0).map(|(_, n)| n.to_string()).collect()
}

fn feature_names(f: u64) -> Vec<String> {
    features::describe(f)
        .split_once('[')
        .map(|(_, rest)| rest.trim_end_matches(']').split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn queue(vq: u32, v: QueueView) -> QueueSample {
    QueueSample {
        vq,
        ready: v.ready,
        enabled: v.enabled,
        failed: v.failed,
        last_error: v.last_error.as_ref().map(RuleFired::from),
    }
}

/// Build the sample of one device from its cells.
pub fn device(s: &DeviceSource, port: &str) -> DeviceSample {
    let l = &s.layout;
    let ctl = s.control.load();
    let asid_of = |group: u32| ctl.group_asid.get(group as usize).copied().unwrap_or(0);
    let mut totals = Totals::default();
    let queues: Vec<PairSample> = s
        .pairs
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let pair = i as u16;
            let counters = counter_map(&cell.snapshot());
            let mut p = PairSample {
                pair,
                group: l.group_of(rx_vq(pair)),
                asid: asid_of(l.group_of(rx_vq(pair))),
                core: (!s.info.cores.is_empty()).then(|| s.info.cores[i % s.info.cores.len()]),
                active: cell.state.active(),
                suspended: cell.state.suspended(),
                rx: queue(rx_vq(pair), cell.state.rx.load()),
                tx: queue(tx_vq(pair), cell.state.tx.load()),
                frames: DirCount::default(),
                bytes: DirCount::default(),
                drops: DirReasons::default(),
                backpressure: DirReasons::default(),
                interrupts: 0,
                kicks: None,
                queue_errors: 0,
                cycles_per_frame: classify::cycles_per_frame(&counters),
                counters: BTreeMap::new(),
                port: s.ports.get(i).and_then(|p| p.as_ref()).map(|p| PortSample {
                    kind: p.kind().into(),
                    link: p.link_up().map(|u| if u { "up" } else { "down" }.into()),
                    counters: p.counters().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                }),
            };
            for (name, &v) in &counters {
                let dir_count = |d: &mut DirCount, dir: classify::Dir| match dir {
                    classify::Dir::Rx => d.rx += v,
                    classify::Dir::Tx => d.tx += v,
                };
                let reasons = |r: &mut DirReasons, dir: classify::Dir, why: &str| {
                    let m = if dir == classify::Dir::Rx { &mut r.rx } else { &mut r.tx };
                    *m.entry(why.to_string()).or_default() += v;
                };
                match classify::pair(name) {
                    Some(Class::Frames(d)) => dir_count(&mut p.frames, d),
                    Some(Class::Bytes(d)) => dir_count(&mut p.bytes, d),
                    Some(Class::Drop(d, why)) => reasons(&mut p.drops, d, why),
                    Some(Class::Backpressure(d, why)) => reasons(&mut p.backpressure, d, why),
                    Some(Class::Interrupts) => p.interrupts += v,
                    Some(Class::Kicks) => p.kicks = Some(p.kicks.unwrap_or(0) + v),
                    Some(Class::QueueErrors) => p.queue_errors += v,
                    Some(Class::Event(..)) | None => {}
                }
            }
            p.counters = counters;
            totals.frames.rx += p.frames.rx;
            totals.frames.tx += p.frames.tx;
            totals.bytes.rx += p.bytes.rx;
            totals.bytes.tx += p.bytes.tx;
            totals.drops += p.drops.rx.values().chain(p.drops.tx.values()).sum::<u64>();
            totals.backpressure += p.backpressure.rx.values().chain(p.backpressure.tx.values()).sum::<u64>();
            totals.interrupts += p.interrupts;
            totals.queue_errors += p.queue_errors;
            p
        })
        .collect();
    let ngroups = l.ngroups.max(1);
    let group_asid = (0..ngroups)
        .map(|g| GroupAsid {
            group: g,
            asid: asid_of(g),
            vqs: (0..l.vq_num()).filter(|&vq| l.group_of(vq) == g).collect(),
        })
        .collect();
    let mac = if ctl.mac == [0; 6] { s.info.mac } else { ctl.mac };
    DeviceSample {
        name: l.name.clone(),
        port: port.into(),
        api: l.api,
        queue_pairs: l.pairs,
        active_queue_pairs: ctl.active_pairs,
        control_queue: l.has_cvq,
        vq_groups: l.ngroups,
        address_spaces: l.nas,
        mac: mac_string(&mac),
        mtu: s.info.mtu,
        ring_size: s.info.ring_size,
        burst: s.info.burst,
        idle: s.info.idle.clone(),
        cores: s.info.cores.clone(),
        uptime_s: s.started.elapsed().as_secs_f64(),
        stopped: s.stopped.load(std::sync::atomic::Ordering::Relaxed),
        status: StatusView {
            raw: ctl.status,
            names: status_names(ctl.status),
            driver_ok: ctl.status & status::DRIVER_OK != 0,
            needs_reset: ctl.status & status::DEVICE_NEEDS_RESET != 0,
        },
        features: FeaturesView {
            offered: format!("{:#x}", l.features),
            offered_names: feature_names(l.features),
            negotiated: format!("{:#x}", ctl.features),
            negotiated_names: feature_names(ctl.features),
            refused_by_kernel: feature_names(l.dropped_features),
            vduse: crate::dataplane::device::vduse_features_name(l.vduse_features)
                .split('|')
                .filter(|n| *n != "none")
                .map(str::to_owned)
                .collect(),
        },
        link: if ctl.link_status & VIRTIO_NET_S_LINK_UP != 0 { "up" } else { "down" }.into(),
        announce_pending: ctl.link_status & VIRTIO_NET_S_ANNOUNCE != 0,
        suspended: ctl.suspended,
        group_asid,
        control_queue_state: ctl.cvq,
        slow_path: counter_map(&s.slow.snapshot()),
        queues,
        totals,
    }
}
