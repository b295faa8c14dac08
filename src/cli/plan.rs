//! What `vduse-net run` will serve, from its flags or from a config file:
//! the devices (each with the full set of `run` flags that apply to it, so a
//! flag added to `run` reaches every device without a change here) and the
//! process-wide settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use log::LevelFilter;

use super::pktgen::KernelKind;
use super::run::{Backend, RunArgs};
use super::stats::StatsArgs;
use super::CliError;

/// One device to create.
#[derive(Clone, Debug)]
pub struct DevicePlan {
    pub name: String,
    pub mac: [u8; 6],
    /// The `run` flags as they apply to this device (`args.dev`, `args.backend`, ...).
    pub args: RunArgs,
    /// The other end of a `patch` wire (index into `RunPlan::devices`).
    pub peer: Option<usize>,
    /// Config-file settings as written (key -> value), for reload diffs.
    pub keys: BTreeMap<String, String>,
    /// Line of the device's table in the config file.
    pub line: Option<usize>,
}

impl DevicePlan {
    /// How `stats` describes the port.
    pub fn port_description(&self, all: &[DevicePlan]) -> String {
        match (self.args.backend, self.peer) {
            (Backend::Patch, Some(p)) => format!("patch <-> {}", all[p].name),
            (Backend::Loopback, _) if self.args.no_macswap => "loopback".into(),
            (Backend::Loopback, _) => "loopback (macswap)".into(),
            (Backend::Tap | Backend::AfPacket | Backend::AfXdp, _) => format!(
                "{} {}",
                self.args.backend.host().map(|k| k.name()).unwrap_or_default(),
                self.args.host.iface.as_deref().unwrap_or("?")
            ),
            (b, _) => format!("{b:?}").to_lowercase(),
        }
    }
}

/// Process-wide settings.
#[derive(Clone, Debug)]
pub struct ProcessPlan {
    /// NAME of `/run/vduse-net/NAME.sock`: the config file's stem, or `--name`.
    pub instance: String,
    pub stats: StatsArgs,
    pub log_level: Option<LevelFilter>,
    pub kernel_model: Option<KernelKind>,
    pub config: Option<PathBuf>,
    pub keys: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct RunPlan {
    pub devices: Vec<DevicePlan>,
    pub process: ProcessPlan,
}

impl RunPlan {
    /// The plan of `run` without a config file: `--devices N` devices named
    /// NAME0..NAME{N-1} (or NAME for one), MACs counting up, `patch` wiring
    /// device 0 to device 1.
    pub fn from_args(a: &RunArgs) -> Result<RunPlan, CliError> {
        if a.devices == 0 || a.devices > 64 {
            return Err(CliError(format!("--devices {} must be in 1..=64", a.devices)));
        }
        if a.backend == Backend::Patch && a.devices != 2 {
            return Err(CliError("--backend patch wires two devices: use --devices 2".into()));
        }
        let names: Vec<String> = if a.devices == 1 {
            vec![a.name.clone()]
        } else {
            (0..a.devices).map(|i| format!("{}{i}", a.name)).collect()
        };
        // --iface a,b or tap%d: one interface per device, resolved here so
        // each device's plan names its own (as a config file's would).
        let spec = a.host.spec(a.backend)?;
        let mut ifaces = Vec::new();
        for i in 0..names.len() {
            ifaces.push(match spec {
                Some(s) => Some(vduse_net::backend::host::iface_for(s, i, names.len()).map_err(CliError)?),
                None => None,
            });
        }
        let devices = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut mac = a.mac;
                mac[5] = mac[5].wrapping_add(i as u8);
                let mut args = a.clone();
                args.host.iface = ifaces[i].clone();
                DevicePlan {
                    name: name.clone(),
                    mac,
                    args,
                    peer: (a.backend == Backend::Patch).then_some(1 - i),
                    keys: BTreeMap::new(),
                    line: None,
                }
            })
            .collect();
        Ok(RunPlan { devices, process: ProcessPlan::from_args(a, a.name.clone(), None) })
    }
}

impl ProcessPlan {
    pub fn from_args(a: &RunArgs, instance: String, config: Option<PathBuf>) -> ProcessPlan {
        ProcessPlan {
            instance,
            stats: a.stats.clone(),
            log_level: a.log_level,
            kernel_model: a.kernel_model,
            config,
            keys: BTreeMap::new(),
        }
    }
}
