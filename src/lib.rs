//! vduse-net: a userspace virtio-net device for Linux VDUSE.
//!
//! Layers, from the kernel ABI up:
//! - [`uapi`]: kernel ABI only (VDUSE, vhost-vdpa, virtio ring layouts).
//! - [`vduse`]: the device side of the VDUSE boundary: the real kernel and the
//!   embedded kernel model behind one trait.
//! - [`mem`]: per-ASID IOTLB translation and mapping lifetime (RCU-style).
//! - [`virtq`]: device-side split virtqueues over untrusted ring memory.
//! - [`net`]: virtio-net features, config space, header, control queue.
//! - [`dataplane`]: poll threads (fast path) and the slow-path thread.
//! - [`backend`]: ports where packets go (loopback, patch).
//! - [`driver`]: the driver side (transports and a virtio-net driver).
//! - [`bench`]: pktgen and latency.
//! - [`ops`]: operating: stats socket, Prometheus, systemd, logs.
//! - [`persist`]: the state log a restarted process reattaches from.

pub mod backend;
pub mod bench;
pub mod dataplane;
pub mod driver;
pub mod mem;
pub mod net;
pub mod ops;
pub mod persist;
pub mod uapi;
pub mod vduse;
pub mod virtq;
