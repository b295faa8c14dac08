//! The AF_XDP ceiling of an interface (perf/afxdp.sh): a bare XDP socket
//! sends frames out of IFACE and counts what a reflector on the far end
//! sends back, without a vduse-net device in the way. Prints one JSON line.
//!
//!   afxdp_ceiling IFACE SIZE SECONDS [native|skb]

use std::time::Duration;

use vduse_net::backend::af_xdp::ceiling::reflect_ceiling;
use vduse_net::backend::af_xdp::{XdpMode, XdpOptions};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: afxdp_ceiling IFACE SIZE SECONDS [native|skb]");
        std::process::exit(2);
    }
    let size: usize = a[2].parse().unwrap_or_else(|_| panic!("SIZE {:?} is not a number", a[2]));
    let secs: f64 = a[3].parse().unwrap_or_else(|_| panic!("SECONDS {:?} is not a number", a[3]));
    let mode = match a.get(4).map(String::as_str) {
        None | Some("native") => XdpMode::Native,
        Some("skb") => XdpMode::Skb,
        Some(m) => panic!("mode {m:?}: native or skb"),
    };
    let opts = XdpOptions { mode, ..XdpOptions::default() };
    match reflect_ceiling(&a[1], &opts, size, Duration::from_millis(500), Duration::from_secs_f64(secs)) {
        Ok(c) => println!("{}", serde_json::to_string(&c).expect("json")),
        Err(e) => {
            eprintln!("afxdp_ceiling: {e}");
            std::process::exit(1);
        }
    }
}
