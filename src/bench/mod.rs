//! Benchmarks that drive a device as a virtio driver would.
//!
//! - [`frame`]: test frames with sequence numbers and a payload check.
//! - [`pktgen`]: the traffic generator.
//! - [`floor`]: the cache-line ping-pong, the physical floor of a round trip.

pub mod floor;
pub mod frame;
pub mod pktgen;
