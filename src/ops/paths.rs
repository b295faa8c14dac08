//! Where stats sockets live: `$RUNTIME_DIRECTORY` (systemd's
//! `RuntimeDirectory=vduse-net`), else `/run/vduse-net`.

use std::path::PathBuf;

pub const DEFAULT_RUNTIME_DIR: &str = "/run/vduse-net";

/// The runtime directory (the first entry when systemd lists several).
pub fn runtime_dir() -> PathBuf {
    match std::env::var("RUNTIME_DIRECTORY") {
        Ok(v) if !v.is_empty() => PathBuf::from(v.split(':').next().unwrap_or(DEFAULT_RUNTIME_DIR)),
        _ => PathBuf::from(DEFAULT_RUNTIME_DIR),
    }
}

/// The default socket of instance `name`.
pub fn socket_for(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

/// Every `*.sock` in the runtime directory, sorted.
pub fn sockets() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(runtime_dir())
        .map(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "sock")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
