//! Which raw counter is which metric.
//!
//! The dataplane's counters are flat fields (`rx_filtered`, `tx_backpressure`,
//! ...). This table gives each one its meaning for the JSON sample and the
//! Prometheus names. A counter missing from the table still shows: in the
//! sample's raw `counters` map and as `vduse_net_<name>_total`. A new drop
//! reason or event joins with one line here.

/// Direction of traffic, from the driver's point of view (TX = the driver sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Rx,
    Tx,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Rx => "rx",
            Dir::Tx => "tx",
        }
    }
}

/// The meaning of one per-pair counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Frames(Dir),
    Bytes(Dir),
    /// A frame lost, by reason.
    Drop(Dir, &'static str),
    /// A burst stopped and left work where it was (nothing lost), by reason.
    Backpressure(Dir, &'static str),
    Interrupts,
    Kicks,
    QueueErrors,
    /// Anything else: `vduse_net_<metric>_total` with this help text.
    Event(&'static str, &'static str),
}

/// Per-pair counters (`dataplane::stats::PairCounters`).
pub const PAIR: &[(&str, Class)] = &[
    ("tx_frames", Class::Frames(Dir::Tx)),
    ("tx_bytes", Class::Bytes(Dir::Tx)),
    ("rx_frames", Class::Frames(Dir::Rx)),
    ("rx_bytes", Class::Bytes(Dir::Rx)),
    // A TX chain whose frame is empty or larger than a port slot.
    ("tx_dropped", Class::Drop(Dir::Tx, "bad_length")),
    // Frames the RX filter (MAC, multicast, VLAN, promiscuous off) refused.
    ("rx_filtered", Class::Drop(Dir::Rx, "filtered")),
    // Frames longer than the RX chain the driver offered.
    ("rx_dropped_small", Class::Drop(Dir::Rx, "oversize")),
    // A TX frame asking for checksum/segmentation work the port cannot do.
    ("tx_offload_dropped", Class::Drop(Dir::Tx, "offload")),
    // A port frame still needing offload work the driver did not negotiate.
    ("rx_offload_dropped", Class::Drop(Dir::Rx, "offload")),
    // The port had no room: TX chains stay on the ring until it drains.
    ("tx_backpressure", Class::Backpressure(Dir::Tx, "port_full")),
    // The driver had no RX buffer: frames wait in the port.
    ("rx_no_buffer", Class::Backpressure(Dir::Rx, "no_buffer")),
    ("irqs", Class::Interrupts),
    ("kicks", Class::Kicks),
    ("queue_errors", Class::QueueErrors),
    (
        "reflected",
        Class::Event("reflected_frames", "Frames copied straight from a TX chain to an RX chain (reflector)."),
    ),
    ("tx_sw_gso", Class::Event("tx_sw_gso_frames", "TX GSO frames segmented in software (the port takes no GSO).")),
    ("tx_sw_segments", Class::Event("tx_sw_segments", "Segments made from TX GSO frames in software.")),
    ("tx_sw_csum", Class::Event("tx_sw_csum_frames", "TX frames whose partial checksum was completed in software.")),
    ("rx_sw_gso", Class::Event("rx_sw_gso_frames", "Port GSO frames segmented in software for the driver.")),
    ("rx_sw_segments", Class::Event("rx_sw_segments", "Segments made from port GSO frames in software.")),
    (
        "rx_sw_csum",
        Class::Event("rx_sw_csum_frames", "Port frames whose partial checksum was completed for the driver."),
    ),
    ("rx_merged", Class::Event("rx_merged_frames", "Frames delivered over several RX buffers (MRG_RXBUF).")),
    ("rx_steered", Class::Event("rx_steered_frames", "Port frames handed to another pair's RX queue (RSS).")),
    // The RX queue RSS chose belongs to a pair that made no room for the
    // back-pressure bound (a driver that posts no RX buffers).
    ("rx_steer_dropped", Class::Drop(Dir::Rx, "steer_full")),
    (
        "rx_unsteered",
        Class::Event("rx_unsteered_frames", "Port frames RSS meant for another pair, delivered on their own pair."),
    ),
    ("sleeps", Class::Event("poll_sleeps", "Times the poll thread went to sleep (adaptive idle).")),
    ("wakeups", Class::Event("poll_wakeups", "Times the poll thread woke from sleep.")),
    (
        "busy_cycles",
        Class::Event(
            "busy_cycles",
            "Poll-thread clock ticks (TSC cycles on x86_64, else ns) in iterations that moved frames.",
        ),
    ),
    ("busy_frames", Class::Event("busy_frames", "Frames moved by the iterations counted in busy_cycles.")),
    ("busy_long_cycles", Class::Event("busy_long_cycles", "The part of busy_cycles from iterations over 50 us.")),
    ("busy_long_frames", Class::Event("busy_long_frames", "The part of busy_frames from iterations over 50 us.")),
    (
        "busy_iterations",
        Class::Event(
            "busy_iterations",
            "Poll iterations counted in busy_cycles (busy_frames over this: the mean burst).",
        ),
    ),
];

pub fn pair(name: &str) -> Option<Class> {
    PAIR.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Slow-path counters: control messages by type, and the rest.
pub const MESSAGE_TYPES: &[(&str, &str)] = &[
    ("get_vq_state", "get_vq_state"),
    ("set_status", "set_status"),
    ("update_iotlb", "update_iotlb"),
    ("set_group_asid", "set_vq_group_asid"),
    ("set_vq_ready", "set_vq_ready"),
    ("suspend", "suspend"),
];

/// Device busy cycles per frame, when the dataplane counts them (testpmd's
/// `--record-core-cycles` way: cycles of bursts that moved something, over
/// the frames they moved). The hook for that branch: counters named
/// `busy_cycles` and `busy_frames`.
pub fn cycles_per_frame(counters: &std::collections::BTreeMap<String, u64>) -> Option<f64> {
    let cycles = *counters.get("busy_cycles")?;
    let frames = *counters.get("busy_frames")?;
    (frames > 0).then(|| cycles as f64 / frames as f64)
}
