//! `vduse-net announce`: ask the drivers of a running vduse-net to announce
//! themselves (VIRTIO_NET_S_ANNOUNCE and a config interrupt; the driver
//! sends gratuitous ARP / unsolicited NA and acks), e.g. after the network
//! behind the port moved. Needs GUEST_ANNOUNCE (`--features
//! +guest_announce`) negotiated by the driver.

use std::path::PathBuf;

use clap::Args;
use vduse_net::ops::socket::StatsClient;

use super::stats::resolve_socket;
use super::{CliError, CliResult};

#[derive(Args)]
pub struct AnnounceArgs {
    /// An instance (the NAME of /run/vduse-net/NAME.sock) or a device name; default: the only socket there.
    name: Option<String>,
    /// The stats socket of the process serving the device.
    #[arg(long, value_name = "PATH", conflicts_with = "name")]
    socket: Option<PathBuf>,
    /// Only this device (may repeat); default: every device whose driver negotiated GUEST_ANNOUNCE.
    #[arg(long = "device", value_name = "NAME")]
    devices: Vec<String>,
}

pub fn run(a: AnnounceArgs) -> CliResult {
    let (path, devices) = resolve_socket(a.name.as_ref(), a.socket.as_ref(), a.devices)?;
    let mut client = StatsClient::connect(&path).map_err(|e| CliError(e.to_string()))?;
    let asked = client.announce(&devices).map_err(|e| CliError(e.to_string()))?;
    println!("announce requested: {}", asked.join(" "));
    Ok(())
}
