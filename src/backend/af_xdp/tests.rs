//! Tests with real sockets, programs and interfaces (root; each in its own
//! network namespace, removed afterwards).

use std::time::{Duration, Instant};

use super::*;
use crate::backend::iface::{IfQuery, PortError};
use crate::backend::Port;
use crate::bench::netns::{self, Netns, Reflect};

/// The namespace, or why the test cannot run here.
fn rig(queues: u32, how: Reflect) -> Option<Netns> {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIP: {why}");
        return None;
    }
    let ns = Netns::new("vnxu").expect("netns");
    ns.veth("xa", "xb", queues).expect("veth");
    ns.reflector("xb", how).expect("reflector");
    Some(ns)
}

fn cfg(mode: XdpMode) -> XdpOptions {
    XdpOptions { mode, ring_size: 256, ..XdpOptions::default() }
}

/// One port on `xa`, or the error.
fn open(o: XdpOptions) -> Result<(Vec<AfXdpPort>, OpenReport), AfXdpError> {
    open_on("xa", 1, o)
}

fn open_on(name: &str, pairs: u16, o: XdpOptions) -> Result<(Vec<AfXdpPort>, OpenReport), AfXdpError> {
    open_ports(name, pairs, &o).map(|p| (p.ports, p.report))
}

/// The programs still attached to `name` once the ports are gone (other
/// tests fork ip/tc children that briefly hold our bpf link fd).
fn attached_after_drop(name: &str) -> Vec<(AttachMode, u32, String)> {
    attached_programs_after(name, Duration::from_secs(2)).unwrap()
}

/// Send `n` frames through `p` and wait for each to come back unchanged.
fn bounce(ns: &Netns, p: &mut AfXdpPort, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0u32;
    let mut got = 0u32;
    while got < n {
        if Instant::now() > deadline {
            eprintln!("{}", ns.ip(&["-s", "link"]).unwrap());
            eprintln!("{:?} {:?}", p.counters().snapshot(), p.side.xsk.statistics());
            eprintln!("{}", ns.exec(&["tc", "-s", "filter", "show", "dev", "xb", "ingress"]).unwrap());
            panic!("only {got} of {n} frames came back");
        }
        if sent < n && sent - got < 64 {
            let len = 60 + (sent as usize * 37) % 1400;
            let s = p.tx_slot().expect("a free TX frame");
            s[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe, 2, 0, 0, 0, 0, 1]);
            s[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
            s[14..18].copy_from_slice(&sent.to_le_bytes());
            for (i, b) in s[18..len].iter_mut().enumerate() {
                *b = (i as u32 ^ sent) as u8;
            }
            p.tx_commit(len, crate::backend::FrameMeta::PLAIN);
            p.tx_flush();
            sent += 1;
        }
        if let Some(f) = p.rx_peek().map(|f| f.bytes) {
            let seq = u32::from_le_bytes(f[14..18].try_into().unwrap());
            assert_eq!(seq, got, "frames in order");
            assert_eq!(f.len(), 60 + (seq as usize * 37) % 1400);
            assert!(f[18..].iter().enumerate().all(|(i, &b)| b == (i as u32 ^ seq) as u8), "payload of {seq}");
            p.rx_consume();
            p.rx_flush();
            got += 1;
        } else {
            p.tx_flush();
        }
    }
}

#[test]
fn frames_bounce_off_the_reflector_and_the_program_goes_with_the_ports() {
    for (mode, how) in [(XdpMode::Native, Reflect::Redirect), (XdpMode::Skb, Reflect::Mirror)] {
        let Some(ns) = rig(1, how) else { return };
        let _in = ns.enter().unwrap();
        // SIOCGIFFLAGS shows only the user's promiscuous flag; the
        // membership count is IFLA_PROMISCUITY.
        let promisc = || !ns.ip(&["-d", "link", "show", "xa"]).unwrap().contains("promiscuity 0 ");
        assert!(!promisc());
        let (mut ports, rep) = open(cfg(mode)).unwrap();
        assert_eq!(rep.replaced_stale, None);
        let progs = attached_programs("xa").unwrap();
        assert_eq!(progs.len(), 1, "{progs:?}");
        assert_eq!(progs[0].2, PROG_NAME);
        assert_eq!(progs[0].0, mode.attach_mode());
        assert!(promisc(), "promiscuous while the ports live");
        bounce(&ns, &mut ports[0], 3000);
        let c = ports[0].counters().snapshot();
        assert_eq!((c.tx_frames, c.rx_frames, c.bad_descs), (3000, 3000, 0));
        drop(ports);
        assert_eq!(attached_after_drop("xa"), vec![], "program left after the ports were dropped");
        assert!(!promisc(), "promiscuous mode left on");
    }
}

fn ifindex(name: &str) -> u32 {
    IfQuery::new().unwrap().link(name).unwrap().expect("interface exists").index
}

/// Attach `prog` the old way (netlink): it stays after its fds are closed,
/// as a crashed process's program would.
fn attach_netlink(name: &str, prog: std::os::fd::OwnedFd, mode: AttachMode) {
    use std::os::fd::AsRawFd;
    netdev::set_xdp_fd(ifindex(name), prog.as_raw_fd(), mode.flags()).expect("netlink attach");
}

#[test]
fn bad_input_is_refused_with_the_cause_and_leaves_nothing_attached() {
    let Some(ns) = rig(1, Reflect::Redirect) else { return };
    let _in = ns.enter().unwrap();
    let err = |name: &str, pairs: u16, o: XdpOptions| open_on(name, pairs, o).err().expect("must fail");
    let e = err("vnx-nosuch", 1, cfg(XdpMode::Skb));
    assert!(matches!(e, AfXdpError::NoInterface(_)), "{e}");
    assert!(e.to_string().contains("vnx-nosuch does not exist"), "{e}");
    let e = err("a/b", 1, cfg(XdpMode::Skb));
    assert!(matches!(e, AfXdpError::Interface(PortError::BadName(_))), "{e}");
    let e = err("xa", 2, cfg(XdpMode::Skb));
    assert!(matches!(e, AfXdpError::TooManyQueues { available: 1, wanted: 2, .. }), "{e}");
    assert!(e.to_string().contains("xa has 1 queue(s)"), "{e}");
    let e = err("xa", 1, XdpOptions { zero_copy: true, ..cfg(XdpMode::Skb) });
    assert!(matches!(e, AfXdpError::ZeroCopyNeedsNative), "{e}");
    let e = err("xa", 1, XdpOptions { ring_size: 100, ..cfg(XdpMode::Skb) });
    assert!(matches!(e, AfXdpError::BadRingSize(100)), "{e}");
    // veth has native XDP but no AF_XDP zero-copy.
    let e = err("xa", 1, XdpOptions { zero_copy: true, ..cfg(XdpMode::Native) });
    assert!(matches!(e, AfXdpError::ZeroCopyUnsupported { .. }), "{e}");
    assert!(e.to_string().contains("does not support AF_XDP zero-copy"), "{e}");
    // lo has no native XDP.
    let e = err("lo", 1, cfg(XdpMode::Native));
    assert!(matches!(e, AfXdpError::NativeUnsupported { .. }), "{e}");
    for i in ["xa", "lo"] {
        assert_eq!(attached_programs(i).unwrap(), vec![], "{i}: a failed open left a program");
    }
    // The failed opens left no socket on the queue either.
    let (ports, _) = open(cfg(XdpMode::Skb)).expect("queue 0 free again");
    drop(ports);
}

#[test]
fn a_stale_program_of_ours_is_replaced() {
    let Some(ns) = rig(1, Reflect::Mirror) else { return };
    let _in = ns.enter().unwrap();
    // What a crashed netlink-attaching run would leave: our program, its map
    // empty (the sockets died with the process).
    let map = bpf::create_xskmap(1).unwrap();
    use std::os::fd::AsRawFd;
    let prog = bpf::load_xdp(&bpf::redirect_program(map.as_raw_fd()), PROG_NAME).unwrap();
    attach_netlink("xa", prog, AttachMode::Skb);
    drop(map);
    let before = attached_programs("xa").unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!((before[0].0, before[0].2.as_str()), (AttachMode::Skb, PROG_NAME));

    let (mut ports, rep) = open(cfg(XdpMode::Skb)).expect("open over a stale program");
    assert_eq!(rep.replaced_stale, Some(before[0].1));
    let now = attached_programs("xa").unwrap();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].1, before[0].1, "a new program");
    bounce(&ns, &mut ports[0], 500);
    drop(ports);
    assert_eq!(attached_after_drop("xa"), vec![]);
}

#[test]
fn someone_elses_program_is_left_alone_and_a_live_one_of_ours_is_busy() {
    let Some(ns) = rig(1, Reflect::Redirect) else { return };
    let _in = ns.enter().unwrap();
    let other = bpf::load_xdp(&bpf::pass_program(), "not_ours").unwrap();
    attach_netlink("xa", other, AttachMode::Driver);
    let e = open(cfg(XdpMode::Native)).err().expect("refused");
    assert!(
        matches!(e, AfXdpError::ForeignProgram { ref name, mode: AttachMode::Driver, .. } if name == "not_ours"),
        "{e}"
    );
    assert!(e.to_string().contains("vduse-net did not load (not_ours"), "{e}");
    let left = attached_programs("xa").unwrap();
    assert_eq!(left.len(), 1, "still there");
    assert_eq!(left[0].2, "not_ours");
    netdev::set_xdp_fd(ifindex("xa"), -1, AttachMode::Driver.flags()).unwrap();

    // Ours, held by a live link (another running vduse-net): not touched.
    let (ports, _) = open(cfg(XdpMode::Native)).unwrap();
    let e = inspect("xa", ifindex("xa")).expect_err("busy");
    assert!(matches!(e, AfXdpError::Busy { .. }), "{e}");
    let e = open(cfg(XdpMode::Native)).err().expect("queue taken");
    assert!(matches!(e, AfXdpError::QueueBusy { queue: 0, .. }), "{e}");
    assert_eq!(attached_programs("xa").unwrap().len(), 1, "the live program stays");
    drop(ports);
    assert_eq!(attached_after_drop("xa"), vec![]);
}
