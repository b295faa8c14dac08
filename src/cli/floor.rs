//! `vduse-net floor`: the cache-line round trip between two cores, the
//! physical lower bound of any round trip through shared memory.

use clap::Args;
use vduse_net::bench::floor::cacheline_pingpong;

use super::{parse_cores, CliError, CliResult};

#[derive(Args)]
pub struct FloorArgs {
    /// The two cores, e.g. 0,1 (the device core and the generator core).
    #[arg(long, value_parser = parse_cores, default_value = "0,1")]
    cores: ::std::vec::Vec<usize>,
    /// Round trips (half timed one by one, half in untimed batches).
    #[arg(long, default_value_t = 200_000)]
    round_trips: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: FloorArgs) -> CliResult {
    let [ca, cb] = a.cores[..] else {
        return Err(CliError(format!("--cores needs exactly two cores, got {:?}", a.cores)));
    };
    let r = cacheline_pingpong(ca, cb, a.round_trips).map_err(|e| CliError(e.to_string()))?;
    if a.json {
        println!("{}", serde_json::to_string(&r).map_err(|e| CliError(e.to_string()))?);
    } else {
        println!(
            "floor: cores {} <-> {}: {} timed round trips, min {} ns, p50 {} ns, p99 {} ns, max {} ns; untimed mean {:.1} ns (best batch {:.1} ns); clock read {:.1} ns{}",
            r.core_a,
            r.core_b,
            r.round_trips,
            r.min_ns,
            r.p50_ns,
            r.p99_ns,
            r.max_ns,
            r.mean_ns,
            r.best_batch_ns,
            r.clock_ns,
            if r.truncated { " (cut short by the time limit)" } else { "" }
        );
    }
    Ok(())
}
