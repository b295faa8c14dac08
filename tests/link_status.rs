//! VIRTIO_NET_F_STATUS and GUEST_ANNOUNCE (issue 11, item 4), driven
//! through the embedded kernel model by the project's driver: the link of
//! the port (a hand-driven link watch here; a real tap in
//! `link_tap.rs`) reaches config `status` and raises one config
//! interrupt per change, only when STATUS was negotiated; ANNOUNCE is set
//! on an operator request and after a reattach, and the driver's
//! ANNOUNCE_ACK clears it.

mod common;

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::eventfd::{EfdFlags, EventFd};
use vduse_net::backend::link::{LinkStats, LinkStatsSource, LinkWatch};
use vduse_net::backend::loopback::Loopback;
use vduse_net::backend::Port;
use vduse_net::dataplane::{DeviceOptions, NetDevice, RunningDevice};
use vduse_net::driver::net::{NetDriver, NetDriverConfig};
use vduse_net::driver::DriverTransport;
use vduse_net::net::config::{STATUS_OFFSET, VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP};
use vduse_net::net::ctrl::{CLASS_ANNOUNCE, CMD_ANNOUNCE_ACK};
use vduse_net::net::features as f;
use vduse_net::ops::Registry;
use vduse_net::vduse::model::{KernelModel, ModelConfig, ModelDriver};

/// A link the test sets; the slow path sees it as it sees a port's watch.
struct TestLink {
    up: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    reported: bool,
}

struct NoStats;
impl LinkStatsSource for NoStats {
    fn link_stats(&self) -> LinkStats {
        LinkStats::default()
    }
}

impl LinkWatch for TestLink {
    fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
    fn poll(&mut self, _now: Instant) -> Option<bool> {
        let _ = self.wake.read();
        let up = self.up.load(Ordering::Acquire);
        (up != self.reported).then(|| {
            self.reported = up;
            up
        })
    }
    fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    fn stats(&self) -> Arc<dyn LinkStatsSource> {
        Arc::new(NoStats)
    }
}

/// The test's end of a [`TestLink`].
#[derive(Clone)]
struct LinkSwitch {
    up: Arc<AtomicBool>,
    wake: Arc<EventFd>,
}

impl LinkSwitch {
    fn new(up: bool) -> (LinkSwitch, Box<dyn LinkWatch>) {
        let wake = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).unwrap());
        let up = Arc::new(AtomicBool::new(up));
        let w = TestLink { up: up.clone(), wake: wake.clone(), reported: up.load(Ordering::Relaxed) };
        (LinkSwitch { up, wake }, Box::new(w))
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        let _ = self.wake.write(1);
    }
}

struct Dev {
    model: Arc<KernelModel>,
    running: Option<RunningDevice>,
    t: Arc<ModelDriver>,
    name: String,
}

impl Dev {
    fn start(opts: DeviceOptions, link: Option<Box<dyn LinkWatch>>) -> Dev {
        let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)));
        let name = opts.name.clone();
        let dev = NetDevice::create(model.control(), opts).expect("create");
        let ports: Vec<Box<dyn Port>> = vec![Box::new(Loopback::new(64, true))];
        let running = dev.start_with_link(ports, link).expect("start");
        let t = model.attach_vhost_vdpa(&name).expect("attach");
        Dev { model, running: Some(running), t, name }
    }

    fn probe(&self, features: u64) -> NetDriver {
        let cfg = NetDriverConfig { features, ..driver_config() };
        NetDriver::probe(self.t.clone() as Arc<dyn DriverTransport>, cfg).expect("probe")
    }

    fn finish(mut self) {
        let r = self.running.take().unwrap();
        assert!(!r.is_finished(), "device threads ended on their own");
        self.model.detach(&self.name).expect("detach");
        r.stop().expect("stop");
    }
}

fn status_word(t: &Arc<ModelDriver>) -> u16 {
    let mut b = [0u8; 2];
    t.read_config(STATUS_OFFSET as u32, &mut b).expect("read config");
    u16::from_le_bytes(b)
}

/// The next config interrupt (bounded), then the status word.
fn next_irq_status(t: &Arc<ModelDriver>) -> Option<u16> {
    t.wait_config_interrupt(Duration::from_secs(3)).expect("wait").then(|| status_word(t))
}

fn name(tag: &str) -> String {
    format!("vdn-st-{tag}-{}", std::process::id())
}

#[test]
fn link_down_and_up_reach_config_status_with_one_interrupt_each() {
    let (sw, watch) = LinkSwitch::new(true);
    let dev = Dev::start(device_options(&name("link"), 1), Some(watch));
    let d = dev.probe(NetDriverConfig::DEFAULT_FEATURES);
    assert_ne!(d.features() & f::STATUS, 0);
    assert_eq!(status_word(&dev.t), VIRTIO_NET_S_LINK_UP);
    let base = dev.t.config_irq_count();

    sw.set(false);
    assert_eq!(next_irq_status(&dev.t), Some(0), "link down: interrupt, then status 0");
    assert_eq!(dev.t.config_irq_count(), base + 1);
    sw.set(true);
    assert_eq!(next_irq_status(&dev.t), Some(VIRTIO_NET_S_LINK_UP), "link up: interrupt, then LINK_UP");
    assert_eq!(dev.t.config_irq_count(), base + 2);
    // Nothing more without a change.
    assert!(!dev.t.wait_config_interrupt(Duration::from_millis(300)).unwrap());
    let st = dev.running.as_ref().unwrap().stats();
    assert_eq!(st.slow_path.config_irqs, 2);
    drop(d);
    dev.finish();
}

#[test]
fn a_link_down_at_start_is_in_config_before_the_driver_reads_it() {
    let (sw, watch) = LinkSwitch::new(false);
    let dev = Dev::start(device_options(&name("down0"), 1), Some(watch));
    let d = dev.probe(NetDriverConfig::DEFAULT_FEATURES);
    assert_eq!(status_word(&dev.t), 0);
    sw.set(true);
    assert_eq!(next_irq_status(&dev.t), Some(VIRTIO_NET_S_LINK_UP));
    drop(d);
    dev.finish();
}

#[test]
fn without_status_negotiated_a_link_change_raises_no_interrupt() {
    let (sw, watch) = LinkSwitch::new(true);
    let dev = Dev::start(device_options(&name("nostat"), 1), Some(watch));
    let d = dev.probe(NetDriverConfig::DEFAULT_FEATURES & !f::STATUS);
    assert_eq!(d.features() & f::STATUS, 0);
    let base = dev.t.config_irq_count();
    sw.set(false);
    // The word still follows the link (a later driver with STATUS reads it)...
    assert!(wait_for(Duration::from_secs(3), || status_word(&dev.t) == 0), "status follows the link");
    sw.set(true);
    assert!(wait_for(Duration::from_secs(3), || status_word(&dev.t) == VIRTIO_NET_S_LINK_UP));
    // ...but this driver is never interrupted for it.
    assert!(!dev.t.wait_config_interrupt(Duration::from_millis(300)).unwrap());
    assert_eq!(dev.t.config_irq_count(), base);
    drop(d);
    dev.finish();
}

/// A registry serving the device, as `run` has; returns it.
fn registry(dev: &Dev) -> Arc<Registry> {
    let reg = Registry::new("run", &dev.name);
    reg.add(dev.running.as_ref().unwrap().stats_source(), "loopback");
    reg
}

/// Wait until the published state shows DRIVER_OK handled (the operator
/// request is refused before).
fn wait_bound(dev: &Dev) {
    let src = dev.running.as_ref().unwrap().stats_source();
    let bound = || src.control.load().status & vduse_net::uapi::virtio::status::DRIVER_OK != 0;
    assert!(wait_for(Duration::from_secs(3), bound), "DRIVER_OK published");
}

#[test]
fn operator_announce_is_set_and_the_drivers_ack_clears_it() {
    let opts = device_offering(&name("ann"), 1, "+guest_announce");
    let dev = Dev::start(opts, None);
    let mut d = dev.probe(NetDriverConfig::DEFAULT_FEATURES | f::GUEST_ANNOUNCE);
    assert_ne!(d.features() & f::GUEST_ANNOUNCE, 0);
    let reg = registry(&dev);
    wait_bound(&dev);
    assert_eq!(status_word(&dev.t), VIRTIO_NET_S_LINK_UP);

    for round in 0..2 {
        if round == 0 {
            let asked = reg.announce(&[]).expect("announce");
            assert_eq!(asked, vec![dev.name.clone()]);
        } else {
            // As `vduse-net announce` sends it over the stats socket.
            let line = format!(r#"{{"version":1,"command":"announce","devices":["{}"]}}"#, dev.name);
            let r = vduse_net::ops::socket::answer(&line, &reg);
            assert!(r.ok, "{:?}", r.error);
            assert_eq!(r.text.as_deref(), Some(dev.name.as_str()));
        }
        assert_eq!(
            next_irq_status(&dev.t),
            Some(VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE),
            "round {round}: interrupt, then ANNOUNCE"
        );
        // The driver announces, then acks over the control queue.
        assert_eq!(d.ctrl(CLASS_ANNOUNCE, CMD_ANNOUNCE_ACK, &[]).expect("ack"), 0, "ANNOUNCE_ACK accepted");
        assert_eq!(status_word(&dev.t), VIRTIO_NET_S_LINK_UP, "round {round}: ack cleared ANNOUNCE");
        // The ack clears without another interrupt.
        assert!(!dev.t.wait_config_interrupt(Duration::from_millis(200)).unwrap());
    }
    let st = dev.running.as_ref().unwrap().stats();
    assert_eq!((st.slow_path.announces, st.slow_path.config_irqs), (2, 2));
    // A reset forgets a pending announce.
    reg.announce(std::slice::from_ref(&dev.name)).expect("announce");
    assert_eq!(next_irq_status(&dev.t), Some(VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE));
    d.reset().expect("reset");
    assert!(wait_for(Duration::from_secs(3), || status_word(&dev.t) == VIRTIO_NET_S_LINK_UP), "reset cleared it");
    drop(d);
    dev.finish();
}

#[test]
fn announce_is_refused_when_the_driver_did_not_negotiate_it() {
    // Offered, not taken.
    let dev = Dev::start(device_offering(&name("noann"), 1, "+guest_announce"), None);
    let d = dev.probe(NetDriverConfig::DEFAULT_FEATURES);
    assert_eq!(d.features() & f::GUEST_ANNOUNCE, 0);
    let reg = registry(&dev);
    wait_bound(&dev);
    let e = reg.announce(std::slice::from_ref(&dev.name)).unwrap_err();
    assert!(e.contains("GUEST_ANNOUNCE"), "{e}");
    let r = vduse_net::ops::socket::answer(r#"{"version":1,"command":"announce"}"#, &reg);
    assert!(!r.ok && r.error.as_deref().unwrap_or("").contains("GUEST_ANNOUNCE"), "{r:?}");
    assert!(!dev.t.wait_config_interrupt(Duration::from_millis(300)).unwrap());
    assert_eq!(status_word(&dev.t), VIRTIO_NET_S_LINK_UP);
    // An ANNOUNCE_ACK without the feature is refused by the control queue.
    let mut d = d;
    assert_ne!(d.ctrl(CLASS_ANNOUNCE, CMD_ANNOUNCE_ACK, &[]).expect("ctrl"), 0);
    drop(d);
    dev.finish();
}

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_reattached_device_asks_the_driver_to_announce() {
    let nm = name("reatt");
    let dir = Dir(std::env::temp_dir().join(format!("{nm}-log")));
    let _ = std::fs::remove_dir_all(&dir.0);
    let opts = device_offering(&nm, 1, "+guest_announce");
    let model = KernelModel::new(ModelConfig::patched_7_3().with_timeout(Duration::from_secs(5)));
    let ports = || vec![Box::new(Loopback::new(64, true)) as Box<dyn Port>];
    let dev = NetDevice::create_logged(model.control(), opts.clone(), &dir.0).expect("create");
    let running = dev.start(ports()).expect("start");
    let t = model.attach_vhost_vdpa(&nm).expect("attach");
    let cfg = NetDriverConfig { features: NetDriverConfig::DEFAULT_FEATURES | f::GUEST_ANNOUNCE, ..driver_config() };
    let mut d = NetDriver::probe(t.clone() as Arc<dyn DriverTransport>, cfg).expect("probe");
    assert_eq!(status_word(&t), VIRTIO_NET_S_LINK_UP);
    // The process goes away leaving device and log (an upgrade).
    running.keep().expect("keep");
    let base = t.config_irq_count();
    let running = NetDevice::reattach(model.control(), opts, &dir.0).expect("reattach").start(ports()).expect("start");
    assert_eq!(next_irq_status(&t), Some(VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE), "announce after reattach");
    assert_eq!(t.config_irq_count(), base + 1);
    assert_eq!(d.ctrl(CLASS_ANNOUNCE, CMD_ANNOUNCE_ACK, &[]).expect("ack"), 0);
    assert_eq!(status_word(&t), VIRTIO_NET_S_LINK_UP);
    // Traffic still flows on the resumed queues.
    let mut q = d.take_pairs().remove(0);
    let mut flow = Flow::new(0);
    assert!(flow.exchange(&mut q, 200, Duration::from_secs(10)), "traffic after reattach");
    assert!(flow.clean());
    drop(q);
    drop(d);
    assert!(!running.is_finished());
    model.detach(&nm).expect("detach");
    running.stop().expect("stop");
}
