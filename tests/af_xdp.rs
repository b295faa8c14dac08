//! AF_XDP port against the real kernel: a device on the embedded kernel
//! model whose queue pairs are AF_XDP sockets on a veth, the far end of
//! which reflects every frame (tc mirred). Each test makes its own network
//! namespace (removed afterwards, also on failure) and needs root; without
//! root it says SKIP and passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use vduse_net::backend::af_xdp::{self, AfXdpConfig, AfXdpCounters, XdpMode};
use vduse_net::backend::Port;
use vduse_net::bench::netns::{self, Netns, Reflect};
use vduse_net::bench::pktgen::{self, Control, GenOptions, Mode, PktgenReport, Sizes};
use vduse_net::bench::testbed::Testbed;
use vduse_net::dataplane::{DeviceOptions, IdlePolicy};
use vduse_net::driver::net::NetDriverConfig;
use vduse_net::vduse::model::ModelConfig;

type Counters = Arc<crossbeam::utils::CachePadded<AfXdpCounters>>;

/// Frames per second the loss tests run at: a rate this 2-core machine
/// holds with every poll thread on adaptive idle.
const RATE: f64 = 100_000.0;

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

/// How many XDP programs `iface` in `ns` has now.
fn af_xdp_programs(ns: &Netns, iface: &str) -> usize {
    let _in = ns.enter().unwrap();
    af_xdp::attached_programs(iface).expect("query").len()
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

/// One traffic test at a time: they share two cores, and a rate that one
/// test holds alone is what the loss check is calibrated for.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Warnings and errors, so a test can count what was logged.
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

fn logged(needle: &str) -> usize {
    LOGS.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_million_frames_of_mixed_sizes_through_the_tc_reflector_native_mode() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = reflector_ns(1, Reflect::Redirect);
    let cfg = AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("xa", 1) };
    let (tb, counters) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 256 });
    let frames = 1_000_000;
    let r = run(tb, &gen(frames, MIXED, RATE), 1);
    let c = counters[0].snapshot();
    eprintln!("port: {c:?}");
    assert_clean(&r, frames);
    assert_eq!((c.tx_frames, c.rx_frames, c.bad_descs, c.failed), (frames, frames, 0, 0));
    assert_eq!(af_xdp_programs(&ns, "xa"), 0, "program left after the device stopped");
}

#[test]
fn skb_mode_reflects_frames_of_mixed_sizes_intact() {
    if skip() {
        return;
    }
    let _one = serial();
    // Generic XDP passes tc-redirected frames to the stack, so the far end
    // mirrors instead (see bench::netns::Reflect).
    let ns = reflector_ns(1, Reflect::Mirror);
    let cfg = AfXdpConfig { mode: XdpMode::Skb, ..AfXdpConfig::new("xa", 1) };
    let (tb, counters) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 256 });
    let frames = 200_000;
    let r = run(tb, &gen(frames, MIXED, RATE), 1);
    eprintln!("port: {:?}", counters[0].snapshot());
    assert_clean(&r, frames);
    assert_eq!(af_xdp_programs(&ns, "xa"), 0);
}

/// Forward every frame device `tb`'s driver receives back out of the same
/// pair, until `stop`.
fn forwarders(tb: &mut Testbed, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<u64>> {
    tb.take_pairs()
        .into_iter()
        .map(|mut q| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stash: Vec<Vec<u8>> = Vec::with_capacity(64);
                let mut forwarded = 0u64;
                q.post_rx();
                while !stop.load(Ordering::Relaxed) {
                    if stash.is_empty() {
                        q.rx_burst(&mut |f| stash.push(f.to_vec()), 32);
                    }
                    if !stash.is_empty() {
                        let mut it = 0;
                        let n = q.tx_burst(
                            &mut |i, buf| {
                                let f = &stash[i];
                                buf[..f.len()].copy_from_slice(f);
                                it = i + 1;
                                f.len()
                            },
                            stash.len(),
                        );
                        stash.drain(..n);
                        forwarded += n as u64;
                    } else {
                        std::thread::yield_now();
                    }
                }
                forwarded
            })
        })
        .collect()
}

#[test]
fn two_devices_on_the_two_ends_of_a_veth_with_two_queue_pairs() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = Netns::new("vnx").expect("netns");
    ns.veth("ya", "yb", 2).expect("veth");
    // Native mode on both ends: veth then delivers a frame sent on queue q
    // to the peer's queue q (its per-queue NAPI), so each pair talks to the
    // same pair of the other device.
    let idle = IdlePolicy::Adaptive { spins: 256 };
    let (tb_a, ca) = testbed(&ns, &AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("ya", 2) }, idle);
    let (mut tb_b, cb) = testbed(&ns, &AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("yb", 2) }, idle);
    let stop = Arc::new(AtomicBool::new(false));
    let fwd = forwarders(&mut tb_b, &stop);
    let frames = 50_000;
    // A's generator checks what comes back: A -> veth -> B -> B's driver
    // (forwards) -> B -> veth -> A.
    let r = run(tb_a, &gen(frames, MIXED, RATE / 2.0), 2);
    stop.store(true, Ordering::Relaxed);
    let forwarded: u64 = fwd.into_iter().map(|h| h.join().unwrap()).sum();
    let b = tb_b.finish().unwrap().unwrap();
    for (i, c) in ca.iter().chain(&cb).enumerate() {
        eprintln!("port {i}: {:?}", c.snapshot());
    }
    assert_clean(&r, 2 * frames);
    assert_eq!(forwarded, 2 * frames);
    for p in 0..2 {
        assert_eq!(cb[p].snapshot().rx_frames, frames, "B pair {p} got exactly A pair {p}'s frames");
        assert_eq!(b.pairs[p].rx_frames, frames);
    }
    assert_eq!((af_xdp_programs(&ns, "ya"), af_xdp_programs(&ns, "yb")), (0, 0));
}

#[test]
fn an_idle_poll_thread_sleeps_on_the_xdp_socket_and_wakes_for_frames() {
    if skip() {
        return;
    }
    let _one = serial();
    let ns = reflector_ns(1, Reflect::Redirect);
    let cfg = AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("xa", 1) };
    let (mut tb, _) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 64 });
    let mut q = tb.take_pairs().pop().unwrap();
    q.post_rx();
    let mut rtts = Vec::new();
    for seq in 0..40u64 {
        // Let the poll thread go to sleep between round trips.
        std::thread::sleep(Duration::from_millis(5));
        let t0 = Instant::now();
        let sent = q.tx_burst(&mut |_, buf| vduse_net::bench::frame::build(buf, 64, [2; 6], [4; 6], 0, seq), 1);
        assert_eq!(sent, 1);
        let mut back = false;
        while !back {
            q.rx_burst(
                &mut |f| {
                    back = vduse_net::bench::frame::check(f) == vduse_net::bench::frame::Check::Ok { pair: 0, seq }
                },
                1,
            );
            assert!(t0.elapsed() < Duration::from_secs(2), "frame {seq} did not come back");
            std::thread::yield_now();
        }
        rtts.push(t0.elapsed());
    }
    drop(q);
    let stats = tb.finish().unwrap().unwrap();
    rtts.sort();
    let p50 = rtts[rtts.len() / 2];
    eprintln!(
        "round trips: p50 {p50:?}, max {:?}; sleeps {} wakeups {}",
        rtts.last().unwrap(),
        stats.pairs[0].sleeps,
        stats.pairs[0].wakeups
    );
    assert!(stats.pairs[0].sleeps >= 20, "the poll thread slept between frames: {}", stats.pairs[0].sleeps);
    // Without the socket in its sleep set, the thread would see a returning
    // frame only at its 100 ms idle timeout.
    assert!(p50 < Duration::from_millis(20), "p50 round trip {p50:?}");
}

#[test]
fn deleting_the_interface_under_traffic_fails_the_port_once_and_the_device_lives_on() {
    if skip() {
        return;
    }
    capture_logs();
    let _one = serial();
    let ns = Netns::new("vnx").expect("netns");
    ns.veth("xl", "xlb", 1).expect("veth");
    ns.reflector("xlb", Reflect::Redirect).expect("reflector");
    let cfg = AfXdpConfig { mode: XdpMode::Native, ..AfXdpConfig::new("xl", 1) };
    let (tb, counters) = testbed(&ns, &cfg, IdlePolicy::Adaptive { spins: 256 });
    let ns_name = ns.name().to_string();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        let out = std::process::Command::new("ip").args(["-n", &ns_name, "link", "del", "xl"]).output().unwrap();
        assert!(out.status.success(), "ip link del: {}", String::from_utf8_lossy(&out.stderr));
    });
    let o = GenOptions {
        duration: Some(Duration::from_millis(1500)),
        frames: None,
        stall: Duration::from_secs(1),
        ..gen(0, MIXED, 20_000.0)
    };
    let r = run(tb, &o, 1);
    killer.join().unwrap();
    let c = counters[0].snapshot();
    eprintln!("port: {c:?}; tx {} rx {} lost {}", r.tx_frames, r.rx_frames, r.lost);
    assert_eq!(c.failed, 1, "the port failed once");
    assert_eq!(logged("af-xdp xl queue 0: the socket is no longer bound"), 1, "logged once");
    assert!(r.rx_frames > 1000, "traffic flowed before the delete: {}", r.rx_frames);
    assert!(c.tx_dropped_failed > 0, "the device went on taking the driver's frames");
    let d = r.device.expect("device stats");
    assert_eq!(d.pairs[0].queue_errors, 0, "no queue was failed");
    assert_eq!(r.integrity_errors + r.duplicates_or_reordered, 0);
}
