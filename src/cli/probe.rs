//! `vduse-net probe`: what does this kernel's VDUSE offer?

use clap::Args;
use nix::errno::Errno;
use vduse_net::vduse::kernel::KernelControl;
use vduse_net::vduse::VduseControl;

use super::CliResult;

#[derive(Args)]
pub struct ProbeArgs {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ProbeArgs) -> CliResult {
    let control = KernelControl::open()?;
    let api = control.api_version()?;
    let vduse_features = match control.vduse_features() {
        Ok(f) => Some(f),
        Err(e) if e.errno() == Errno::ENOTTY || e.errno() == Errno::EINVAL => None,
        Err(e) => return Err(e.into()),
    };
    if a.json {
        println!("{}", serde_json::json!({ "api_version": api, "vduse_features": vduse_features }));
    } else {
        println!("VDUSE API version: {api}");
        match vduse_features {
            Some(f) => println!("VDUSE features: {f:#x} (QUEUE_READY: {}, SUSPEND: {})", f & 1 != 0, f & 2 != 0),
            None => println!("VDUSE features: none (VDUSE_GET_FEATURES not supported)"),
        }
    }
    Ok(())
}
