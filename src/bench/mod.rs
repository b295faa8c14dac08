//! Benchmarks that drive a device as a virtio driver would.
//!
//! - [`frame`]: test frames with sequence numbers and a payload check.
//! - [`testbed`]: the device (on the kernel model) and driver a run uses.
//! - [`pktgen`]: the traffic generator.
//! - [`netgen`]: the generator for devices on real interfaces (TAP,
//!   AF_PACKET): frames through the kernel and back, checked.
//! - [`latency`]: round-trip times (ping-pong, under load), HdrHistogram output.
//! - [`floor`]: the cache-line ping-pong, the physical floor of a round trip.
//! - [`cpu`]: CPU time per thread.
//! - [`netns`]: network namespaces with veths and the tc reflector, for tests.

pub mod checks;
pub mod cpu;
pub mod floor;
pub mod frame;
pub mod latency;
pub mod netgen;
pub mod netns;
pub mod pktgen;
pub mod testbed;
pub mod tso;
