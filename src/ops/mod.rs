//! Operating vduse-net: what a running process shows about itself and how it
//! is deployed.
//!
//! - [`state`]: queue state a poll thread publishes on each change (cold path).
//! - [`control`]: the slow path's view (status, features, group -> ASID, link),
//!   published as a snapshot on change; the slow path never waits for a reader.
//! - [`source`]: everything the stats reader may look at for one device, and
//!   the process-wide [`source::Registry`] of devices.
//! - [`sample`]: one sample of every counter and state (the JSON schema).
//! - [`classify`]: which raw counter is which metric (direction, drop reason).
//! - [`prom`]: a sample in the Prometheus text exposition format.
//! - [`proto`], [`socket`]: the stats socket (versioned JSON lines) and its client.
//! - [`http`]: `/metrics` over HTTP.
//! - [`systemd`]: `sd_notify` (READY, STATUS, WATCHDOG) and slow-path liveness.
//! - [`log`]: the log format (device name on every line) and the level knob.
//!
//! Readers never disturb the fast path: counters are loaded with Relaxed
//! loads from cells each written by one poll thread, and state is read from
//! snapshots that writers replace without waiting for readers.

pub mod classify;
pub mod control;
pub mod http;
pub mod log;
pub mod paths;
pub mod prom;
pub mod proto;
pub mod sample;
pub mod socket;
pub mod source;
pub mod state;
pub mod systemd;

pub use source::{DeviceSource, PortStats, Registry};

/// Errors of the operating side (sockets, HTTP, files).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("stats socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("stats socket {path} is in use by a running process{}; pick another with --stats-socket", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    SocketInUse { path: String, pid: Option<u32> },
    #[error("metrics endpoint {addr}: {msg}")]
    Metrics { addr: String, msg: String },
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    #[error("stats reply: {0}")]
    Protocol(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}
