//! A [`Sample`] in the Prometheus text exposition format (0.0.4), with
//! `prometheus-client`'s encoder. Names are `vduse_net_*`; labels are
//! `device`, `queue` (the pair), `direction` (`rx`/`tx`, the driver's view),
//! `reason`, `state`, `rule`, `type`. Counters end in `_total`.
//!
//! The same text serves `/metrics` and `vduse-net stats --prometheus` (for a
//! node-exporter textfile collector, which reads this format, not OpenMetrics).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::classify::{self, Class};
use super::sample::{DeviceSample, Sample};

/// `Content-Type` of the text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, Debug)]
enum Value {
    Counter(u64),
    Gauge(f64),
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    counter: bool,
    samples: Vec<(Labels, Value)>,
}

/// Metric families in first-seen order (a family's samples must be contiguous).
#[derive(Debug, Default)]
struct Families(Vec<Family>);

impl Families {
    fn push(&mut self, name: &str, help: &str, labels: Labels, v: Value) {
        let counter = matches!(v, Value::Counter(_));
        match self.0.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, v)),
            None => self.0.push(Family { name: name.into(), help: help.into(), counter, samples: vec![(labels, v)] }),
        }
    }
    fn counter(&mut self, name: &str, help: &str, labels: Labels, v: u64) {
        self.push(name, help, labels, Value::Counter(v))
    }
    fn gauge(&mut self, name: &str, help: &str, labels: Labels, v: f64) {
        self.push(name, help, labels, Value::Gauge(v))
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for f in &self.0 {
            let ty = if f.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut me = encoder.encode_descriptor(&f.name, &f.help, None, ty)?;
            for (labels, v) in &f.samples {
                let fam = me.encode_family(labels)?;
                match *v {
                    Value::Counter(c) => ConstCounter::new(c).encode(fam)?,
                    Value::Gauge(g) => ConstGauge::new(g).encode(fam)?,
                }
            }
        }
        Ok(())
    }
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn b(x: bool) -> f64 {
    if x {
        1.0
    } else {
        0.0
    }
}

fn device(f: &mut Families, d: &DeviceSample) {
    let dev = d.name.as_str();
    let api = d.api.to_string();
    f.gauge(
        "vduse_net_device_info",
        "Static facts about a device (value 1).",
        l(&[("device", dev), ("port", &d.port), ("api", &api), ("mac", &d.mac)]),
        1.0,
    );
    f.gauge("vduse_net_device_status", "Virtio device status byte.", l(&[("device", dev)]), d.status.raw as f64);
    f.gauge(
        "vduse_net_driver_ok",
        "1 while the driver has set DRIVER_OK.",
        l(&[("device", dev)]),
        b(d.status.driver_ok),
    );
    f.gauge("vduse_net_link_up", "1 while the device reports link up.", l(&[("device", dev)]), b(d.link == "up"));
    f.gauge("vduse_net_suspended", "1 while the device is suspended.", l(&[("device", dev)]), b(d.suspended));
    f.gauge("vduse_net_queue_pairs", "Queue pairs of the device.", l(&[("device", dev)]), d.queue_pairs as f64);
    f.gauge(
        "vduse_net_active_queue_pairs",
        "Queue pairs in use (VQ_PAIRS_SET).",
        l(&[("device", dev)]),
        d.active_queue_pairs as f64,
    );
    for g in &d.group_asid {
        f.gauge(
            "vduse_net_group_asid",
            "Address space (ASID) of each vq group.",
            l(&[("device", dev), ("group", &g.group.to_string())]),
            g.asid as f64,
        );
    }
    for n in &d.features.negotiated_names {
        f.gauge(
            "vduse_net_feature_negotiated",
            "1 for each feature the driver accepted.",
            l(&[("device", dev), ("feature", n)]),
            1.0,
        );
    }
    for (name, &v) in &d.slow_path {
        if let Some((_, ty)) = classify::MESSAGE_TYPES.iter().find(|(n, _)| n == name) {
            f.counter(
                "vduse_net_control_messages",
                "VDUSE control messages handled, by type.",
                l(&[("device", dev), ("type", ty)]),
                v,
            );
            continue;
        }
        match name.as_str() {
            "requests" => {
                f.counter("vduse_net_control_requests", "VDUSE control messages read.", l(&[("device", dev)]), v)
            }
            "failed_replies" => f.counter(
                "vduse_net_control_failed_replies",
                "VDUSE control messages answered FAILED.",
                l(&[("device", dev)]),
                v,
            ),
            "ctrl_ok" | "ctrl_err" => f.counter(
                "vduse_net_ctrl_commands",
                "Control-queue commands, by result.",
                l(&[("device", dev), ("result", if name == "ctrl_ok" { "ok" } else { "err" })]),
                v,
            ),
            "needs_reset" => f.counter(
                "vduse_net_control_queue_failures",
                "Times the control queue was stopped (NEEDS_RESET).",
                l(&[("device", dev)]),
                v,
            ),
            other => f.counter(&format!("vduse_net_slow_path_{other}"), "Slow-path counter.", l(&[("device", dev)]), v),
        }
    }
    for p in &d.queues {
        let q = p.pair.to_string();
        let base = |extra: &[(&str, &str)]| {
            let mut v = l(&[("device", dev), ("queue", &q)]);
            v.extend(l(extra));
            v
        };
        for (name, &v) in &p.counters {
            match classify::pair(name) {
                Some(Class::Frames(dir)) => {
                    f.counter("vduse_net_frames", "Frames moved.", base(&[("direction", dir.as_str())]), v)
                }
                Some(Class::Bytes(dir)) => f.counter(
                    "vduse_net_bytes",
                    "Frame bytes moved (no virtio-net header).",
                    base(&[("direction", dir.as_str())]),
                    v,
                ),
                Some(Class::Drop(dir, why)) => f.counter(
                    "vduse_net_drops",
                    "Frames dropped, by reason.",
                    base(&[("direction", dir.as_str()), ("reason", why)]),
                    v,
                ),
                Some(Class::Backpressure(dir, why)) => f.counter(
                    "vduse_net_backpressure",
                    "Bursts stopped with work left in place (nothing lost), by reason.",
                    base(&[("direction", dir.as_str()), ("reason", why)]),
                    v,
                ),
                Some(Class::Interrupts) => {
                    f.counter("vduse_net_interrupts", "Interrupts injected to the driver.", base(&[]), v)
                }
                Some(Class::Kicks) => f.counter("vduse_net_kicks", "Kicks the poll thread woke on.", base(&[]), v),
                Some(Class::QueueErrors) => {
                    f.counter("vduse_net_queue_errors", "Queues stopped after a malformed ring.", base(&[]), v)
                }
                Some(Class::Event(metric, help)) => f.counter(&format!("vduse_net_{metric}"), help, base(&[]), v),
                None => f.counter(&format!("vduse_net_{name}"), "Dataplane counter.", base(&[]), v),
            }
        }
        for (dir, qs) in [("rx", &p.rx), ("tx", &p.tx)] {
            for (state, on) in
                [("ready", qs.ready), ("enabled", qs.enabled), ("failed", qs.failed), ("suspended", p.suspended)]
            {
                f.gauge(
                    "vduse_net_queue_state",
                    "1 when the queue is in this state.",
                    base(&[("direction", dir), ("state", state)]),
                    b(on),
                );
            }
            if let Some(e) = &qs.last_error {
                f.gauge(
                    "vduse_net_queue_last_error",
                    "The rule that stopped the queue last (value 1 while it is stopped).",
                    base(&[("direction", dir), ("rule", &e.rule)]),
                    b(qs.failed),
                );
            }
        }
        if let Some(c) = p.cycles_per_frame {
            f.gauge("vduse_net_cycles_per_frame", "Device busy cycles per frame.", base(&[]), c);
        }
        if let Some(port) = &p.port {
            for (name, &v) in &port.counters {
                f.counter(&format!("vduse_net_port_{name}"), "Port counter.", base(&[("port", &port.kind)]), v);
            }
            if let Some(link) = &port.link {
                f.gauge(
                    "vduse_net_port_link_up",
                    "1 while the port's link is up.",
                    base(&[("port", &port.kind)]),
                    b(link == "up"),
                );
            }
        }
    }
}

/// The whole sample as exposition text.
pub fn render(s: &Sample) -> String {
    let mut f = Families::default();
    f.gauge(
        "vduse_net_process_uptime_seconds",
        "Seconds since the process started serving stats.",
        l(&[("instance_name", &s.process.instance)]),
        s.uptime_ns as f64 / 1e9,
    );
    for d in &s.devices {
        device(&mut f, d);
    }
    let mut reg = Registry::default();
    reg.register_collector(Box::new(f));
    let mut out = String::new();
    // Only fmt::Write into a String: cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg);
    out
}
