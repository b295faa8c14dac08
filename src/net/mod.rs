//! virtio-net device model (virtio spec 1.3 §5.1): wire formats and state,
//! no I/O.
//!
//! - [`features`]: feature bits offered, negotiation checks (§5.1.3).
//! - [`config`]: the device configuration space (§5.1.4).
//! - [`hdr`]: the per-packet `virtio_net_hdr` (§5.1.6).
//! - [`ctrl`]: control-virtqueue commands and the state they change (§5.1.6.5).
//! - [`filter`]: the receive filter snapshot used by the RX fast path, and
//!   the cell that hands it to poll threads.
//! - [`wire`]: Ethernet/IP/TCP/UDP header parsing (pure, bounds-checked).
//! - [`offload`]: checksum and segmentation offloads in software.
//! - [`rss`]: Toeplitz hash, hash types, RSS queue selection, hash reports.

pub mod config;
pub mod ctrl;
pub mod features;
pub mod filter;
pub mod hdr;
pub mod offload;
pub mod rss;
pub mod wire;

pub use config::NetConfig;
pub use ctrl::{CtrlCommand, CtrlEffect, CtrlError, CtrlState};
pub use filter::{FilterCell, FilterReader, RxFilter};
pub use hdr::{NetHdr, HDR_LEN};
