//! The driver side: transports and a virtio-net driver over them.

pub mod dma;
pub mod transport;
pub mod vhost_vdpa;

pub use dma::DmaMemory;
pub use transport::{DriverTransport, TransportError};
pub mod net;
pub mod packed;
pub mod queue;
pub mod ring;
