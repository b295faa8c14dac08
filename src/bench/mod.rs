//! Benchmarks that drive a device as a virtio driver would.
//!
//! - [`frame`]: test frames with sequence numbers and a payload check.
//! - [`pktgen`]: the traffic generator.

pub mod frame;
pub mod pktgen;
