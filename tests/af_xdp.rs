//! AF_XDP port against the real kernel: devices on the embedded kernel
//! model whose queue pairs are AF_XDP sockets on a veth, through the CLI
//! (`vduse-net pktgen --backend af-xdp`) and through the library. Each test
//! makes its own network namespace (removed afterwards, also on failure)
//! and needs root; without root it says SKIP and passes.

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use vduse_net::backend::af_xdp::{self, AfXdpCounters, XdpMode, XdpOptions, PROG_NAME};
use vduse_net::backend::Port;
use vduse_net::bench::netgen::{self, NetDevice, NetGenOptions, NetReport};
use vduse_net::bench::netns::{self, Netns, Reflect};
use vduse_net::bench::pktgen::Sizes;
use vduse_net::bench::testbed::Testbed;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy};
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::ModelConfig;

type Counters = Arc<crossbeam::utils::CachePadded<AfXdpCounters>>;

/// Frames per second the loss tests send at: well below what two shared
/// cores move through AF_XDP on a veth (about 150k/s under load here).
const RATE: u32 = 100_000;

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

/// One traffic test at a time: they share two cores, and the rates are
/// chosen for one test alone.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Log lines (info and up), so a test can count what was logged.
struct Capture;
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}", r.level(), r.args());
            eprintln!("{line}");
            LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Capture).expect("one logger");
        log::set_max_level(log::LevelFilter::Info);
    });
}

fn logged(needles: &[&str]) -> usize {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|l| needles.iter().all(|n| l.contains(n))).count()
}

/// A namespace with veth `a` <-> `b` (`queues` each) and a reflector on `b`.
fn reflector_ns(a: &str, b: &str, queues: u32, how: Reflect) -> Netns {
    let ns = Netns::new("vnx").expect("netns");
    ns.veth(a, b, queues).expect("veth");
    ns.reflector(b, how).expect("reflector");
    ns
}

/// How many XDP programs `iface` in `ns` has now.
fn programs(ns: &Netns, iface: &str) -> usize {
    let _in = ns.enter().unwrap();
    af_xdp::attached_programs(iface).expect("query").len()
}

/// `programs` once the ports are gone (other tests fork ip/tc children
/// that briefly hold our bpf link fd).
fn programs_left(ns: &Netns, iface: &str) -> usize {
    let _in = ns.enter().unwrap();
    af_xdp::attached_programs_after(iface, Duration::from_secs(2)).expect("query").len()
}

/// A device on the model whose pairs are AF_XDP ports on `iface` (opened
/// inside `ns`), with its link watch; and the ports' counters.
fn device(
    ns: &Netns,
    index: usize,
    iface: &str,
    pairs: u16,
    opts: XdpOptions,
    idle: IdlePolicy,
) -> (NetDevice, Vec<Counters>) {
    let p = {
        let _in = ns.enter().unwrap();
        af_xdp::open_ports(iface, pairs, &opts).unwrap_or_else(|e| panic!("opening {iface}: {e}"))
    };
    let counters: Vec<Counters> = p.ports.iter().map(|p| p.counters()).collect();
    let ports: Vec<Box<dyn Port>> = p.ports.into_iter().map(|p| Box::new(p) as Box<dyn Port>).collect();
    let opts = DeviceOptions {
        name: format!("ax{iface}"),
        queue_pairs: pairs,
        idle,
        mac: netgen::device_mac(index),
        ..DeviceOptions::default()
    };
    let dcfg = NetDriverConfig { ring_size: 256, pairs: Some(pairs), ..NetDriverConfig::default() };
    let tb = Testbed::model_with_ports(
        ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)),
        opts,
        ports,
        Some(p.watch),
        dcfg,
    )
    .expect("device on the model");
    (NetDevice { tb, iface: iface.to_string() }, counters)
}

fn gen(frames: u64, rate_per_thread: f64) -> NetGenOptions {
    NetGenOptions {
        sizes: Sizes::parse(MIXED).unwrap(),
        rate_pps: rate_per_thread,
        frames: Some(frames),
        stall: Duration::from_secs(3),
        ..NetGenOptions::default()
    }
}

/// Ends a run (sets its stop flag) when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run(devices: Vec<NetDevice>, o: &NetGenOptions) -> NetReport {
    netgen::run_network(devices, o, &[], Arc::new(AtomicBool::new(false))).expect("run")
}

fn summary(r: &NetReport) -> String {
    format!(
        "tx {} rx {} lost {} corrupt {} dup/reordered {} foreign {} driver errors {}; {:.3} Mpps rx over {:.2} s",
        r.tx_frames,
        r.rx_frames,
        r.lost,
        r.integrity_errors,
        r.duplicates_or_reordered,
        r.foreign_frames,
        r.driver_errors,
        r.mpps_rx,
        r.duration_s
    )
}

fn assert_clean(r: &NetReport, frames: u64) {
    eprintln!("{}", summary(r));
    assert_eq!(r.tx_frames, frames, "frames sent");
    assert_eq!(r.rx_frames, frames, "frames back, in order and intact");
    assert_eq!((r.lost, r.integrity_errors, r.duplicates_or_reordered, r.driver_errors), (0, 0, 0, 0));
}

/// `ip netns exec NS vduse-net ARGS...`.
fn cli(ns: &Netns, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns.name(), env!("CARGO_BIN_EXE_vduse-net")]).args(args);
    c
}

#[test]
fn pktgen_moves_a_million_mixed_frames_through_the_tc_reflector() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = reflector_ns("xa", "xb", 1, Reflect::Redirect);
    let rate = RATE.to_string();
    // No backpressure reaches the sender from the receiving side (veth's
    // native XDP path copies the frame and frees the sender's buffer first),
    // so what arrives while the device's threads are starved of CPU waits in
    // the UMEM: the largest one (16384 frames, 160 ms at this rate) rides
    // out a loaded machine.
    let out = cli(
        &ns,
        &[
            "pktgen",
            "--backend",
            "af-xdp",
            "--iface",
            "xa",
            "--xdp-ring-size",
            "16384",
            "--frames",
            "1000000",
            "--size",
            MIXED,
            "--rate",
            &rate,
            "--json",
        ],
    )
    .stderr(Stdio::inherit())
    .output()
    .unwrap();
    assert!(out.status.success(), "pktgen failed: {:?}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    eprintln!(
        "tx {} rx {} lost {} corrupt {} dup {} foreign {}; {:.3} Mpps, {:.2} s",
        v["tx_frames"],
        v["rx_frames"],
        v["lost"],
        v["integrity_errors"],
        v["duplicates_or_reordered"],
        v["foreign_frames"],
        v["mpps_rx"],
        v["duration_s"]
    );
    assert_eq!(v["tx_frames"], 1_000_000);
    assert_eq!(v["rx_frames"], 1_000_000);
    for k in ["lost", "integrity_errors", "duplicates_or_reordered", "driver_errors"] {
        assert_eq!(v[k], 0, "{k}");
    }
    assert_eq!(programs_left(&ns, "xa"), 0, "program left after pktgen ended");
}

#[test]
fn skb_mode_reflects_frames_of_mixed_sizes_intact() {
    if skip() {
        return;
    }
    let _one = serial();
    // Generic XDP passes tc-redirected frames to the stack, so the far end
    // mirrors instead (see bench::netns::Reflect).
    let ns = reflector_ns("xa", "xb", 1, Reflect::Mirror);
    // A mirrored clone returns while the original is freed at the far end,
    // so a sender's TX frames complete before their copies are received:
    // nothing holds the sender back when the receiving side is starved of
    // CPU (as on a real wire), and what it sends meanwhile waits in the
    // UMEM. The largest one (16384 frames) and a slower rate keep a few
    // hundred milliseconds of starvation from dropping frames.
    let opts = XdpOptions { mode: XdpMode::Skb, ring_size: 16384, ..XdpOptions::default() };
    let (dev, counters) = device(&ns, 0, "xa", 1, opts, IdlePolicy::Adaptive { spins: 256 });
    let frames = 200_000;
    let r = run(vec![dev], &gen(frames, RATE as f64 / 2.0));
    eprintln!("port: {:?}", counters[0].snapshot());
    assert_clean(&r, frames);
    assert_eq!(programs_left(&ns, "xa"), 0);
}

#[test]
fn two_devices_on_the_two_ends_of_a_veth_with_two_queue_pairs() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = Netns::new("vnx").expect("netns");
    ns.veth("ya", "yb", 2).expect("veth");
    // A sends to B and B to A (netgen's ring of devices), every frame
    // checked by its receiver.
    let idle = IdlePolicy::Adaptive { spins: 256 };
    // Nothing holds a sender back when the receiving device falls behind
    // (as on a real wire): the receiver's UMEM buffers 16384 frames per pair,
    // which a paced stream does not fill unless the receiving threads are
    // starved for most of a second.
    let opts = XdpOptions { ring_size: 16384, ..XdpOptions::default() };
    let (a, ca) = device(&ns, 0, "ya", 2, opts, idle);
    let (b, cb) = device(&ns, 1, "yb", 2, opts, idle);
    let frames = 20_000;
    let r = run(vec![a, b], &gen(frames, RATE as f64 / 10.0));
    for (i, c) in ca.iter().chain(&cb).enumerate() {
        eprintln!("port {i}: {:?}", c.snapshot());
    }
    assert_clean(&r, 4 * frames);
    for s in &r.streams {
        assert_eq!((s.sent, s.received, s.lost), (frames, frames, 0), "stream {s:?}");
    }
    // Native mode on both ends: veth hands a frame sent on queue q to the
    // peer's queue q, so each pair only ever talked to its counterpart.
    for (i, c) in ca.iter().chain(&cb).enumerate() {
        assert_eq!(c.snapshot().rx_frames, frames, "port {i}");
    }
    assert_eq!((programs_left(&ns, "ya"), programs_left(&ns, "yb")), (0, 0));
}

#[test]
fn an_idle_poll_thread_sleeps_on_the_xdp_socket_and_wakes_for_frames() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = reflector_ns("xa", "xb", 1, Reflect::Redirect);
    let (mut dev, _) = device(&ns, 0, "xa", 1, XdpOptions::default(), IdlePolicy::Adaptive { spins: 64 });
    let mut q = dev.tb.take_pairs().pop().unwrap();
    q.post_rx();
    use vduse_net::bench::frame::{build, check, Check};
    let mut rtts = Vec::new();
    for seq in 0..40u64 {
        // Let the poll thread go to sleep between round trips.
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        assert_eq!(q.tx_burst(&mut |_, buf| build(buf, 64, [2; 6], [4; 6], 0, seq), 1), 1);
        let mut back = false;
        while !back {
            q.rx_burst(&mut |f| back |= check(f) == Check::Ok { pair: 0, seq }, 1);
            assert!(t0.elapsed() < Duration::from_secs(2), "frame {seq} did not come back");
            std::thread::yield_now();
        }
        rtts.push(t0.elapsed());
    }
    drop(q);
    let stats = dev.tb.finish().unwrap().unwrap();
    rtts.sort();
    let p50 = rtts[rtts.len() / 2];
    let (sleeps, wakeups) = (stats.pairs[0].sleeps, stats.pairs[0].wakeups);
    eprintln!("round trips: p50 {p50:?}, max {:?}; sleeps {sleeps} wakeups {wakeups}", rtts.last().unwrap());
    assert!(sleeps >= 20, "the poll thread slept between frames: {sleeps}");
    // Without the socket in its sleep set, the thread would see a returning
    // frame only at its 100 ms idle timeout.
    assert!(p50 < Duration::from_millis(20), "p50 round trip {p50:?}");
}

#[test]
fn deleting_the_interface_under_traffic_fails_the_ports_once_and_recreating_it_restores_traffic() {
    if skip() {
        return;
    }
    capture_logs();
    let _one = serial();
    let ns = reflector_ns("xl", "xlb", 1, Reflect::Redirect);
    let (dev, counters) = device(&ns, 0, "xl", 1, XdpOptions::default(), IdlePolicy::Adaptive { spins: 256 });
    let ns_name = ns.name().to_string();
    // The run ends 2.5 s after the interface is back and set up, however
    // long the `ip`/`tc` commands took on a loaded machine (a fixed 4 s run
    // once ended before a slow `ip link set up`).
    let stop = Arc::new(AtomicBool::new(false));
    let stop_run = stop.clone();
    let flapper = std::thread::spawn(move || {
        // Set on every way out, a failed `ip` command included.
        let _end = StopOnDrop(stop);
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(["-n", &ns_name]).args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        std::thread::sleep(Duration::from_millis(700));
        ip(&["link", "del", "xl"]);
        std::thread::sleep(Duration::from_millis(700));
        ip(&["link", "add", "xl", "type", "veth", "peer", "name", "xlb"]);
        ip(&["link", "set", "xl", "up"]);
        ip(&["link", "set", "xlb", "up"]);
        let tc = |args: &[&str]| {
            let out = Command::new("ip").args(["netns", "exec", &ns_name, "tc"]).args(args).output().unwrap();
            assert!(out.status.success(), "tc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        tc(&["qdisc", "add", "dev", "xlb", "clsact"]);
        tc(&[
            "filter", "add", "dev", "xlb", "ingress", "protocol", "all", "u32", "match", "u32", "0", "0", "action",
            "mirred", "egress", "redirect", "dev", "xlb",
        ]);
        std::thread::sleep(Duration::from_millis(2500));
    });
    let o = NetGenOptions { duration: None, frames: None, ..gen(0, 20_000.0) };
    let r = netgen::run_network(vec![dev], &o, &[], stop_run).expect("run");
    flapper.join().unwrap();
    eprintln!("{}; link events {:?}; port {:?}", summary(&r), r.link_events, counters[0].snapshot());
    let link = r.devices[0].as_ref().expect("device stats").link.clone().expect("link stats");
    eprintln!("link: {link:?}");
    assert_eq!(link.ports[0].failures, 1, "the port failed once");
    assert_eq!(logged(&["af-xdp xl", "the interface is gone"]), 1, "logged once");
    assert_eq!(link.ports[0].reattached, 1, "took the new socket once");
    assert!(link.lost >= 1 && link.reopened >= 1, "{link:?}");
    let down = r.link_events.iter().position(|e| !e.up).expect("the driver saw the link go down");
    assert!(r.link_events[down..].iter().any(|e| e.up), "and come back: {:?}", r.link_events);
    assert!(r.rx_after_link_up > 1000, "traffic after the link came back: {}", r.rx_after_link_up);
    assert_eq!(r.integrity_errors + r.duplicates_or_reordered + r.driver_errors, 0);
    let d = r.devices[0].as_ref().unwrap();
    assert_eq!(d.pairs[0].queue_errors, 0, "no queue was failed");
    assert_eq!(programs_left(&ns, "xl"), 0, "program left on the new interface");
}

/// Start `pktgen --backend af-xdp` for a long run and wait until its
/// program is attached.
fn start_pktgen(ns: &Netns, iface: &str) -> std::process::Child {
    let child = cli(ns, &["pktgen", "--backend", "af-xdp", "--iface", iface, "--duration", "60", "--rate", "2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while programs(ns, iface) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "pktgen never attached its program");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_exit(c: &mut std::process::Child) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = c.kill();
            panic!("pktgen did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_program_goes_away_on_sigterm_and_even_on_sigkill() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = reflector_ns("xa", "xb", 1, Reflect::Redirect);
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let mut c = start_pktgen(&ns, "xa");
        {
            let _in = ns.enter().unwrap();
            let p = af_xdp::attached_programs("xa").unwrap();
            assert_eq!((p.len(), p[0].2.as_str()), (1, PROG_NAME));
        }
        std::thread::sleep(Duration::from_millis(300));
        // `ip netns exec` execs the binary: the child's pid is pktgen's.
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(c.id() as i32, sig) }, 0);
        let st = wait_exit(&mut c);
        if sig == libc::SIGTERM {
            assert!(st.success(), "SIGTERM: a clean stop, exit 0: {st:?}");
        }
        // A bpf link dies with its process: nothing is left even after
        // SIGKILL, and the next start finds the interface free.
        let t0 = Instant::now();
        while programs(&ns, "xa") != 0 {
            assert!(t0.elapsed() < Duration::from_secs(2), "program left after signal {sig}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn without_privileges_the_cli_names_the_missing_capability() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = reflector_ns("xa", "xb", 1, Reflect::Redirect);
    let bin = env!("CARGO_BIN_EXE_vduse-net");
    let run = |caps: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name(), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
        if !caps.is_empty() {
            c.args([&format!("--inh-caps={caps}"), &format!("--ambient-caps={caps}")]);
        }
        let out = c.args([bin, "pktgen", "--backend", "af-xdp", "--iface", "xa", "--frames", "10"]).output().unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (st, err) = run("");
    assert!(!st.success());
    assert!(err.contains("creating an AF_XDP socket needs CAP_NET_RAW"), "{err}");
    let (st, err) = run("+net_raw");
    assert!(!st.success());
    assert!(err.contains("needs CAP_BPF and CAP_NET_ADMIN"), "{err}");
    assert_eq!(programs_left(&ns, "xa"), 0);
}
