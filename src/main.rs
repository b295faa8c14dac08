//! `vduse-net`: run a VDUSE virtio-net device, or drive one with the
//! bundled generator and latency meter.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "vduse-net",
    version,
    about = "Userspace virtio-net device for Linux VDUSE, with a poll-mode dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create device(s) on the real kernel (/dev/vduse) and serve them until SIGINT/SIGTERM.
    Run(cli::run::RunArgs),
    /// List the virtio features the device can offer, by the names --features takes.
    Features(cli::features::FeaturesArgs),
    /// Report what the VDUSE kernel side offers (API version, VDUSE features).
    Probe(cli::probe::ProbeArgs),
    /// Traffic generator: drive a device as a virtio driver would (embedded kernel model by default).
    Pktgen(cli::pktgen::PktgenArgs),
    /// Round-trip latency through a loopback device (ping-pong, optionally under load).
    Latency(cli::latency::LatencyArgs),
    /// Cache-line round trip between two cores: the floor for any round trip.
    Floor(cli::floor::FloorArgs),
    /// Live counters and state of a running vduse-net (run, pktgen, latency) from its stats socket.
    Stats(cli::stats::StatsCmdArgs),
    /// Check a config file for `run --config` without creating anything.
    CheckConfig(cli::config::CheckConfigArgs),
    /// Ask the drivers of a running vduse-net to announce themselves (needs GUEST_ANNOUNCE).
    Announce(cli::announce::AnnounceArgs),
}

fn main() -> ExitCode {
    vduse_net::ops::log::init(log::LevelFilter::Warn);
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let r = match cli.command {
        Command::Run(a) => cli::run::run(a, matches.subcommand_matches("run").expect("run was parsed")),
        Command::Features(a) => cli::features::run(a),
        Command::Probe(a) => cli::probe::run(a),
        Command::Pktgen(a) => cli::pktgen::run(a),
        Command::Latency(a) => cli::latency::run(a),
        Command::Floor(a) => cli::floor::run(a),
        Command::Stats(a) => cli::stats::run(a),
        Command::CheckConfig(a) => cli::config::check(a),
        Command::Announce(a) => cli::announce::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vduse-net: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_parse_as_one_value() {
        let c = Cli::try_parse_from([
            "vduse-net",
            "pktgen",
            "--device-cores",
            "0",
            "--gen-cores",
            "0-0",
            "--mode",
            "txonly",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let Command::Pktgen(_) = c.command else { panic!("not pktgen") };
        assert!(Cli::try_parse_from(["vduse-net", "floor", "--cores", "0,0"]).is_ok());
        assert!(Cli::try_parse_from(["vduse-net", "latency", "--gen-cores", "0", "--load", "1000"]).is_ok());
        assert!(Cli::try_parse_from(["vduse-net", "pktgen", "--mode", "sideways"]).is_err());
        assert!(Cli::try_parse_from(["vduse-net", "pktgen", "--gen-cores", "x"]).is_err());
        // A leading '-' in the list is a value, not a flag.
        let c = Cli::try_parse_from(["vduse-net", "run", "--features", "-mq,+indirect_desc"])
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Run(_) = c.command else { panic!("not run") };
        assert!(Cli::try_parse_from(["vduse-net", "features"]).is_ok());
    }
}
