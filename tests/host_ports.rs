//! Host ports against the real kernel: TAP and AF_PACKET ports on taps and
//! veths in network namespaces each test creates and removes (root only;
//! skipped with a message otherwise).

use std::time::{Duration, Instant};

use vduse_net::backend::af_packet::{self, PacketOptions};
use vduse_net::backend::host::HostPorts;
use vduse_net::backend::iface::PortError;
use vduse_net::backend::link::LinkWatch;
use vduse_net::backend::{tap, FrameMeta, Port};
use vduse_net::net::hdr::{F_NEEDS_CSUM, GSO_TCPV4};

#[path = "common/netns.rs"]
mod netns;
use netns::{run, NetNs};

fn veth(ns: &NetNs) {
    ns.sh("ip link add va type veth peer name vb && ip link set va up && ip link set vb up");
}

fn send(p: &mut dyn Port, frame: &[u8], meta: FrameMeta) {
    let s = p.tx_slot().expect("TX room");
    s[..frame.len()].copy_from_slice(frame);
    p.tx_commit(frame.len(), meta);
    p.tx_flush();
}

/// Frames received within `t` (a V3 block can wait a jiffy or so).
fn recv(p: &mut dyn Port, want: usize, t: Duration) -> Vec<(Vec<u8>, FrameMeta)> {
    let end = Instant::now() + t;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < end {
        p.rx_fill();
        while let Some(f) = p.rx_peek() {
            out.push((f.bytes.to_vec(), f.meta));
            p.rx_consume();
        }
        p.rx_flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

fn eth(dst: u8, src: u8, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![dst; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, src]);
    f[0] = 0x02;
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4/UDP 10.1.0.1:sport -> 10.1.0.2:7 with `len` payload bytes; the UDP
/// checksum field holds the pseudo-header sum (as a stack leaves it for
/// offload) when `partial`, else 0 (no checksum).
fn udp(sport: u16, len: usize, partial: bool) -> Vec<u8> {
    let mut ip = vec![0u8; 20 + 8 + len];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 1, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 1, 0, 2]);
    let mut sum: u32 = ip[..20].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&sport.to_be_bytes());
    ip[22..24].copy_from_slice(&7u16.to_be_bytes());
    ip[24..26].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    for (i, b) in ip[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    if partial {
        let p: u32 = 0x0a01 + 0x0001 + 0x0a01 + 0x0002 + 17 + (8 + len) as u32;
        let p = ((p & 0xffff) + (p >> 16)) as u16;
        ip[26..28].copy_from_slice(&p.to_be_bytes());
    }
    eth(2, 1, 0x0800, &ip)
}

/// IPv4/TCP 10.1.0.1:5000 -> 10.1.0.2:80 with `len` payload bytes and a
/// pseudo-header checksum (as left for offload).
fn tcp(len: usize) -> Vec<u8> {
    let mut ip = vec![0u8; 40 + len];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 1, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 1, 0, 2]);
    let mut sum: u32 = ip[..20].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u32).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&5000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&80u16.to_be_bytes());
    ip[32] = 0x50;
    ip[33] = 0x18;
    ip[34..36].copy_from_slice(&0xffffu16.to_be_bytes());
    let p: u32 = 0x0a01 + 0x0001 + 0x0a01 + 0x0002 + 6 + (20 + len) as u32;
    let p = ((p & 0xffff) + (p >> 16)) as u16;
    ip[36..38].copy_from_slice(&p.to_be_bytes());
    eth(2, 1, 0x0800, &ip)
}

fn udp_checksum_ok(f: &[u8]) -> bool {
    let udp = &f[34..];
    let mut sum: u32 = 0x0a01 + 0x0001 + 0x0a01 + 0x0002 + 17 + udp.len() as u32;
    for c in udp.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn af_packet_frames_cross_a_veth_as_sent() {
    let Some(ns) = NetNs::enter("vnt", "afp") else { return };
    veth(&ns);
    let HostPorts { ports: mut a, watch: _wa } = af_packet::open("va", 1, PacketOptions::default()).expect("open va");
    let HostPorts { ports: mut b, watch: _wb } = af_packet::open("vb", 1, PacketOptions::default()).expect("open vb");
    let (a, b) = (&mut *a[0], &mut *b[0]);
    assert!(a.offloads(), "PACKET_VNET_HDR passes offload metadata");

    // Plain frames of several sizes arrive byte for byte.
    let frames: Vec<Vec<u8>> =
        [60usize, 100, 1514].iter().map(|&n| eth(2, 1, 0x88b5, &vec![n as u8; n - 14])).collect();
    for f in &frames {
        send(a, f, FrameMeta::PLAIN);
    }
    let got = recv(b, 3, Duration::from_secs(2));
    assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), frames);
    assert!(got.iter().all(|g| !g.1.is_offloaded()));

    // An 802.1Q-tagged frame: the kernel takes the tag out on receive, the
    // port puts it back.
    let mut tagged = eth(2, 1, 0x8100, &[0x20, 0x05, 0x88, 0xb5]);
    tagged.extend_from_slice(&[0xab; 60]);
    send(a, &tagged, FrameMeta::PLAIN);
    let got = recv(b, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, tagged, "VLAN tag restored in place");

    // A frame with a partial checksum (as the host's own stack sends over
    // a veth): the port finishes it, the device gets a plain frame.
    let f = udp(1000, 99, true);
    send(a, &f, FrameMeta { flags: F_NEEDS_CSUM, csum_start: 34, csum_offset: 6, ..FrameMeta::PLAIN });
    let got = recv(b, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert!(!got[0].1.is_offloaded());
    assert_eq!(got[0].0[..40], f[..40], "headers unchanged but the checksum");
    assert!(udp_checksum_ok(&got[0].0), "checksum finished");
}

#[test]
fn af_packet_drops_frames_it_cannot_deliver_and_counts_them() {
    let Some(ns) = NetNs::enter("vnt", "afd") else { return };
    veth(&ns);
    let HostPorts { ports: mut a, watch: _wa } = af_packet::open("va", 1, PacketOptions::default()).expect("open va");
    let HostPorts { ports: mut b, watch: wb } = af_packet::open("vb", 1, PacketOptions::default()).expect("open vb");
    let (a, b) = (&mut *a[0], &mut *b[0]);
    // A GSO frame: three TCP segments' worth in one (segmentation is the
    // offloads work; today the device cannot take it).
    let big = tcp(1200);
    send(
        a,
        &big,
        FrameMeta {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 400,
            csum_start: 34,
            csum_offset: 16,
        },
    );
    // Then a plain frame: it must still arrive.
    let plain = eth(2, 1, 0x88b5, &[7; 50]);
    send(a, &plain, FrameMeta::PLAIN);
    let got = recv(b, 1, Duration::from_secs(2));
    assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), vec![plain]);
    let st = wb.stats().link_stats();
    assert_eq!(st.ports[0].rx_dropped, 1, "the GSO frame is counted: {st:?}");
}

#[test]
fn af_packet_fanout_spreads_flows_over_pairs() {
    let Some(ns) = NetNs::enter("vnt", "aff") else { return };
    veth(&ns);
    let HostPorts { ports: mut a, watch: _wa } = af_packet::open("va", 1, PacketOptions::default()).expect("open va");
    let HostPorts { ports: mut b, watch: _wb } =
        af_packet::open("vb", 2, PacketOptions::default()).expect("open vb with 2 pairs");
    const N: usize = 64;
    for i in 0..N {
        send(&mut *a[0], &udp(3000 + i as u16, 40, false), FrameMeta::PLAIN);
    }
    let mut per = [0usize; 2];
    let end = Instant::now() + Duration::from_secs(3);
    while per.iter().sum::<usize>() < N && Instant::now() < end {
        for (i, p) in b.iter_mut().enumerate() {
            p.rx_fill();
            while p.rx_peek().is_some() {
                p.rx_consume();
                per[i] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(per.iter().sum::<usize>(), N, "every frame once: {per:?}");
    assert!(per[0] > 0 && per[1] > 0, "64 flows all hashed to one socket: {per:?}");
}

fn poll_until(w: &mut dyn LinkWatch, want: bool, t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        w.poll(Instant::now());
        if w.is_up() == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn af_packet_link_follows_the_veth_and_survives_its_deletion() {
    let Some(ns) = NetNs::enter("vnt", "afl") else { return };
    veth(&ns);
    let HostPorts { mut ports, watch: mut w } = af_packet::open("va", 1, PacketOptions::default()).expect("open");
    assert!(w.is_up());
    ns.sh("ip link set vb down");
    assert!(poll_until(&mut *w, false, Duration::from_secs(2)), "peer down: no carrier");
    ns.sh("ip link set vb up");
    assert!(poll_until(&mut *w, true, Duration::from_secs(2)));
    ns.sh("ip link del va");
    assert!(poll_until(&mut *w, false, Duration::from_secs(2)), "deleted");
    veth(&ns);
    assert!(poll_until(&mut *w, true, Duration::from_secs(4)), "back with a new ifindex");
    // The port takes its new socket and frames flow again.
    let HostPorts { ports: mut b, watch: _wb } = af_packet::open("vb", 1, PacketOptions::default()).expect("open vb");
    let f = eth(2, 1, 0x88b5, &[3; 46]);
    let p = &mut *ports[0];
    p.rx_fill();
    send(p, &f, FrameMeta::PLAIN);
    assert_eq!(recv(&mut *b[0], 1, Duration::from_secs(2)).len(), 1);
    let st = w.stats().link_stats();
    assert_eq!((st.lost, st.reopened, st.ports[0].reattached), (1, 1, 1), "{st:?}");
}

#[test]
fn tap_create_attach_and_refuse() {
    let Some(ns) = NetNs::enter("vnt", "tap") else { return };
    // Created when missing, gone when its queues close.
    let HostPorts { ports, watch: w } = tap::open("vt0", 2).expect("create");
    assert!(std::path::Path::new("/sys/class/net").exists());
    ns.sh("ip link show vt0 >/dev/null");
    assert!(!w.is_up(), "a new tap is down until someone brings it up");
    // A second user of the same multi-queue tap would split its frames.
    match tap::open("vt0", 1) {
        Err(PortError::TapInUse { queues: 2, .. }) => {}
        other => panic!("expected TapInUse, got {:?}", other.map(|_| ())),
    }
    drop(ports);
    drop(w);
    assert!(ns.try_sh("ip link show vt0 2>/dev/null").is_err(), "a tap we created must vanish");
    // A persistent tap is attached to and stays.
    ns.sh("ip tuntap add vt1 mode tap multi_queue vnet_hdr && ip link set vt1 up");
    let HostPorts { ports, watch: w } = tap::open("vt1", 2).expect("attach");
    assert!(w.is_up());
    drop(ports);
    drop(w);
    ns.sh("ip link show vt1 >/dev/null");
    // Not multi-queue: one pair is fine, two are refused with the fix.
    ns.sh("ip tuntap add vt2 mode tap");
    let e = tap::open("vt2", 2).err().expect("refused");
    assert!(e.to_string().contains("multi_queue"), "{e}");
    drop(tap::open("vt2", 1).expect("one queue"));
    // Not a tap at all.
    ns.sh("ip link add vd0 type veth peer name vd1");
    let e = tap::open("vd0", 1).err().expect("refused");
    assert!(e.to_string().contains("not a tap device (veth)"), "{e}");
    ns.sh("ip link show vd0 >/dev/null");
}

#[test]
fn tap_follows_its_move_to_another_namespace() {
    let Some(ns) = NetNs::enter("vnt", "tmv") else { return };
    let Some(other) = ({
        // The second namespace is created from the first's thread but only
        // used through `ip netns exec`.
        let name = format!("vnt{}-tmv2", std::process::id());
        run(&["ip", "netns", "add", &name]).ok().map(|_| name)
    }) else {
        panic!("second namespace")
    };
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = run(&["ip", "netns", "del", &self.0]);
        }
    }
    let _del = Del(other.clone());
    run(&[
        "ip",
        "netns",
        "exec",
        &other,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ])
    .unwrap();
    ns.sh("ip tuntap add vt0 mode tap multi_queue vnet_hdr && ip link set vt0 up");
    let HostPorts { mut ports, watch: mut w } = tap::open("vt0", 1).expect("attach");
    assert!(w.is_up());
    ns.sh(&format!("ip link set vt0 netns {other}"));
    // Moving takes it down; up again over there, the link follows.
    assert!(poll_until(&mut *w, false, Duration::from_secs(2)));
    run(&["ip", "-n", &other, "link", "set", "vt0", "up"]).unwrap();
    assert!(poll_until(&mut *w, true, Duration::from_secs(2)), "state read in the tap's new namespace");
    // Frames still flow: reflect them over there.
    run(&["ip", "netns", "exec", &other, "sh", "-c", "tc qdisc add dev vt0 clsact && tc filter add dev vt0 ingress protocol all u32 match u32 0 0 action mirred egress redirect dev vt0"]).unwrap();
    let f = eth(2, 1, 0x88b5, &[5; 100]);
    let p = &mut *ports[0];
    send(p, &f, FrameMeta::PLAIN);
    let got = recv(p, 1, Duration::from_secs(2));
    assert!(got.iter().any(|g| g.0 == f), "not reflected in the other namespace: {got:?}");
    run(&["ip", "-n", &other, "link", "set", "vt0", "down"]).unwrap();
    assert!(poll_until(&mut *w, false, Duration::from_secs(2)));
    run(&["ip", "-n", &other, "link", "del", "vt0"]).unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    while w.stats().link_stats().lost == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(w.stats().link_stats().lost, 1, "deleted over there: gone");
}
