//! Command-line front ends. Parsing helpers give clear messages for bad
//! input; every subcommand returns an error instead of panicking.

pub mod announce;
pub mod config;
pub mod daemon;
pub mod features;
pub mod floor;
pub mod latency;
pub mod pktgen;
pub mod plan;
pub mod probe;
pub mod run;
pub mod stats;

use std::fmt;

/// Error type of the CLI: a message for the user.
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

pub type CliResult = Result<(), CliError>;

/// `02:00:00:00:00:01`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (expected 6 hex bytes like 02:00:00:00:00:01)"));
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?}: {p:?} is not a hex byte"))?;
    }
    Ok(mac)
}

/// `0,2-4` -> [0, 2, 3, 4], checked against the machine's cores.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.trim().parse().map_err(|_| format!("core list {s:?}: {part:?} is not a number or range"))?;
        let b: usize = b.trim().parse().map_err(|_| format!("core list {s:?}: {part:?} is not a number or range"))?;
        if a > b {
            return Err(format!("core list {s:?}: range {part:?} is backwards"));
        }
        for c in a..=b {
            if c >= ncpu {
                return Err(format!("core {c} does not exist (this machine has {ncpu} cores: 0-{})", ncpu - 1));
            }
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(format!("core list {s:?} is empty"));
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Idle {
    Busy,
    Adaptive,
}

impl From<Idle> for vduse_net::dataplane::IdlePolicy {
    fn from(i: Idle) -> Self {
        match i {
            Idle::Busy => vduse_net::dataplane::IdlePolicy::Busy,
            Idle::Adaptive => vduse_net::dataplane::IdlePolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_core_lists_parse_or_explain() {
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert!(parse_mac("02:00:00").unwrap_err().contains("not a MAC"));
        assert!(parse_mac("zz:00:00:00:00:00").unwrap_err().contains("not a hex byte"));
        assert_eq!(parse_cores("0").unwrap(), vec![0]);
        assert!(parse_cores("1-0").unwrap_err().contains("backwards"));
        assert!(parse_cores("999").unwrap_err().contains("does not exist"));
        assert!(parse_cores("a").unwrap_err().contains("not a number"));
    }
}
