//! AF_XDP port against the real kernel: a device on the embedded kernel
//! model whose queue pairs are AF_XDP sockets on a veth, the far end of
//! which reflects every frame (tc mirred). Each test makes its own network
//! namespace (removed afterwards, also on failure) and needs root; without
//! root it says SKIP and passes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use vduse_net::backend::af_xdp::{self, AfXdpConfig, AfXdpCounters, XdpMode};
use vduse_net::backend::Port;
use vduse_net::bench::netns::{self, Netns, Reflect};
use vduse_net::bench::pktgen::{self, Control, GenOptions, Mode, PktgenReport, Sizes};
use vduse_net::bench::testbed::Testbed;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy};
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::ModelConfig;

type Counters = Arc<crossbeam::utils::CachePadded<AfXdpCounters>>;

/// Mixed frame sizes, 64..1514 (the veth's MTU).
const MIXED: &str = "64,65,127,128,256,511,512,777,1024,1280,1500,1514";

fn skip() -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("SKIP: {why}");
            true
        }
        None => false,
    }
}

/// A namespace with veth `xa` <-> `xb` and a reflector on `xb`.
fn reflector_ns(queues: u32, how: Reflect) -> Netns {
    let ns = Netns::new("vnx").expect("netns");
    ns.veth("xa", "xb", queues).expect("veth");
    ns.reflector("xb", how).expect("reflector");
    ns
}

fn device_options(name: &str, pairs: u16, idle: IdlePolicy) -> DeviceOptions {
    DeviceOptions { name: name.into(), queue_pairs: pairs, idle, ..DeviceOptions::default() }
}

/// A device on the model whose pairs are AF_XDP ports on `iface` (opened
/// inside `ns`), and the ports' counters.
fn testbed(ns: &Netns, cfg: &AfXdpConfig, idle: IdlePolicy) -> (Testbed, Vec<Counters>) {
    let (ports, _) = {
        let _in = ns.enter().unwrap();
        af_xdp::open(cfg).unwrap_or_else(|e| panic!("opening {}: {e}", cfg.iface))
    };
    let counters: Vec<Counters> = ports.iter().map(|p| p.counters()).collect();
    let mut ports: Vec<Option<Box<dyn Port>>> = ports.into_iter().map(|p| Some(Box::new(p) as Box<dyn Port>)).collect();
    let dcfg = NetDriverConfig { ring_size: 256, pairs: Some(cfg.queues), ..NetDriverConfig::default() };
    let tb = Testbed::model(
        ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)),
        device_options(&format!("ax{}", cfg.iface), cfg.queues, idle),
        &mut |i| ports[i as usize].take().expect("one port per pair"),
        dcfg,
    )
    .expect("device on the model");
    (tb, counters)
}

fn gen(frames: u64, sizes: &str, rate: f64) -> GenOptions {
    GenOptions {
        mode: Mode::Loopback,
        sizes: Sizes::parse(sizes).unwrap(),
        burst: 32,
        rate_pps: rate,
        frames: Some(frames),
        duration: None,
        warmup: Duration::ZERO,
        busy: false,
        stall: Duration::from_secs(3),
    }
}

fn run(tb: Testbed, o: &GenOptions, pairs: usize) -> PktgenReport {
    let ctl = Arc::new(Control::new(pairs, Arc::new(AtomicBool::new(false))));
    pktgen::run_on(tb, o, &[], &ctl, &mut |_, _| {}, None).expect("pktgen run")
}

fn assert_clean(r: &PktgenReport, frames: u64) {
    eprintln!(
        "tx {} rx {} lost {} corrupt {} dup/reordered {} driver errors {}; {:.3} Mpps rx over {:.2} s",
        r.tx_frames,
        r.rx_frames,
        r.lost,
        r.integrity_errors,
        r.duplicates_or_reordered,
        r.driver_errors,
        r.mpps_rx,
        r.duration_s
    );
    assert_eq!(r.tx_frames, frames, "frames sent");
    assert_eq!(r.rx_frames, frames, "frames back, in order and intact");
    assert_eq!((r.lost, r.integrity_errors, r.duplicates_or_reordered, r.driver_errors), (0, 0, 0, 0));
}

#[test]
fn native_mode_reflects_frames_of_mixed_sizes_intact() {
    if skip() {
        return;
    }
    let ns = reflector_ns(1, Reflect::Redirect);
    let cfg = AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("xa", 1) };
    let (tb, counters) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 256 });
    let frames = 200_000;
    let r = run(tb, &gen(frames, MIXED, 0.0), 1);
    let c = counters[0].snapshot();
    eprintln!("port: {c:?}");
    assert_clean(&r, frames);
}

#[test]
fn exp_skb() {
    if skip() {
        return;
    }
    let ns = reflector_ns(1, Reflect::Mirror);
    let cfg = AfXdpConfig { mode: XdpMode::Skb, ..AfXdpConfig::new("xa", 1) };
    let (tb, counters) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 256 });
    let frames = 200_000;
    let r = run(tb, &gen(frames, MIXED, 0.0), 1);
    eprintln!("port: {:?}", counters[0].snapshot());
    assert_clean(&r, frames);
}

#[test]
fn exp_two_queues() {
    if skip() {
        return;
    }
    let ns = reflector_ns(2, Reflect::Redirect);
    let cfg = AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("xa", 2) };
    let (tb, counters) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 256 });
    let frames = 50_000;
    let r = run(tb, &gen(frames, MIXED, 0.0), 2);
    for c in &counters {
        eprintln!("port: {:?}", c.snapshot());
    }
    for q in &r.queues {
        eprintln!("{q:?}");
    }
    assert_clean(&r, frames * 2);
}
