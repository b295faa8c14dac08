//! The kernel as the independent judge of software offloads: frames this
//! crate segments (TSO4/TSO6/USO) or checksums are sent through a veth
//! pair into the kernel's IP stack, which must accept every one of them.
//!
//! Each case runs on its own thread in a fresh network namespace
//! (`unshare(CLONE_NEWNET)` affects only that thread), so names are fixed
//! and everything (veth pair, VLAN devices, sockets) disappears with the
//! thread, also when it fails. Needs root and `ip`; prints SKIP otherwise.
//!
//! Checks: UDP datagrams arrive with the expected payloads and the UDP
//! checksum error counters stay 0; TCP segments to a closed port each draw
//! a RST (the kernel answers only segments whose checksum it verified) and
//! the TCP checksum error counter stays 0; the IP header error counter
//! stays 0.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use vduse_net::net::features as f;
use vduse_net::net::offload::{csum, validate, Delivery, OffloadCaps, SegCsum, Segmenter, Sender};
use vduse_net::net::wire::build::{CsumFill, FrameSpec, DST_MAC};

const ALL_TX: u64 = f::CSUM | f::HOST_TSO4 | f::HOST_TSO6 | f::HOST_ECN | f::HOST_USO;
const MSS: u16 = 1360;
const PORT: u16 = 5201;

fn ip(args: &str) -> Result<(), String> {
    let out = Command::new("ip").args(args.split_whitespace()).output().map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// A kernel built without 802.1Q support cannot take tagged frames: the
/// case is skipped, loudly (VLAN header handling is covered by the unit
/// tests' reference checks; checksums do not cover L2).
fn skip_without_vlan(e: String) -> String {
    if e.contains("Unknown device type") {
        format!("SKIP: this kernel has no VLAN devices ({e})")
    } else {
        e
    }
}

/// A veth pair `va`/`vb` in the current (new) namespace; the receiving
/// addresses sit on `vb` or on VLAN devices stacked on it for `vlans` tags
/// (802.1ad outer id 100, 802.1Q inner id 101, as `FrameSpec` builds them).
fn setup(vlans: usize) -> Result<(), String> {
    let mac = DST_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ip("link set lo up")?;
    ip("link add va type veth peer name vb")?;
    ip(&format!("link set vb address {mac}"))?;
    ip("link set va up")?;
    ip("link set vb up")?;
    let dev = match vlans {
        0 => "vb".to_string(),
        1 => {
            ip("link add link vb name vb.100 type vlan id 100").map_err(skip_without_vlan)?;
            "vb.100".to_string()
        }
        _ => {
            ip("link add link vb name vb.s100 type vlan proto 802.1ad id 100").map_err(skip_without_vlan)?;
            ip("link set vb.s100 up")?;
            ip("link add link vb.s100 name vb.q101 type vlan id 101")?;
            "vb.q101".to_string()
        }
    };
    ip(&format!("link set {dev} up"))?;
    ip(&format!("addr add 10.0.0.2/24 dev {dev}"))?;
    ip(&format!("-6 addr add 2001:db8::2/64 dev {dev} nodad"))?;
    wait_for("va", &["link", "show", "va"], |l| l.contains("LOWER_UP") && !l.contains("qdisc noop"))?;
    wait_for(&dev, &["link", "show", &dev], |l| l.contains("LOWER_UP"))?;
    // An address added before the link was ready stays tentative (frames
    // to it are not local) until addrconf sees the link come up.
    wait_for(&dev, &["-6", "addr", "show", "dev", &dev], |l| l.contains("2001:db8::2") && !l.contains("tentative"))
}

/// Polls `ip -o ARGS` until `ready` holds for its output. Until the link
/// watcher has activated a device (carrier up, the real qdisc attached),
/// frames sent on it are silently dropped by the noop qdisc.
fn wait_for(what: &str, args: &[&str], ready: impl Fn(&str) -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("ip").arg("-o").args(args).output().map_err(|e| format!("ip: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if ready(&text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not ready after 20 s: {}", text.trim()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `name -> value` from /proc/thread-self/net/snmp ("Tcp: ..." header and
/// value lines) and snmp6 ("Udp6InCsumErrors 0").
fn counters() -> HashMap<String, i64> {
    let mut m = HashMap::new();
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.chunks(2) {
        if let [names, values] = pair {
            let (Some((proto, names)), Some((_, values))) = (names.split_once(':'), values.split_once(':')) else {
                continue;
            };
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                m.insert(format!("{proto}{n}"), v.parse().unwrap_or(0));
            }
        }
    }
    let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap_or_default();
    for l in snmp6.lines() {
        if let Some((n, v)) = l.split_once(char::is_whitespace) {
            m.insert(n.to_string(), v.trim().parse().unwrap_or(0));
        }
    }
    m
}

/// An AF_PACKET socket sending on `va`.
struct PacketTx {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl PacketTx {
    fn new() -> Result<Self, String> {
        // SAFETY: plain socket(2) call; the returned fd is checked and owned.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(format!("AF_PACKET socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the name is a NUL-terminated string literal.
        let ifindex = unsafe { libc::if_nametoindex(c"va".as_ptr()) };
        if ifindex == 0 {
            return Err("no interface va".into());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&DST_MAC);
        Ok(PacketTx { fd, addr })
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: frame and addr are valid for the lengths given for the
        // duration of the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    }
}

/// The frames a receiver without any offload gets for `spec` sent as a
/// NEEDS_CSUM (+ GSO when `gso`) frame: segments or a completed frame.
fn software_offload(spec: &FrameSpec, gso: bool) -> Vec<Vec<u8>> {
    let spec = FrameSpec { csum: CsumFill::Partial, ..*spec };
    let mut frame = spec.build();
    let hdr = spec.offload_hdr(gso.then_some(MSS));
    let o = validate(&frame, &hdr, &Sender::driver(ALL_TX)).expect("valid offload header");
    match o.deliver(&OffloadCaps::NONE) {
        Delivery::Segment { mode, .. } => {
            assert_eq!(mode, SegCsum::Full);
            let s = Segmenter::new(&frame, o.gso.as_ref().unwrap(), mode).unwrap();
            let mut buf = vec![0u8; s.max_len()];
            (0..s.count())
                .map(|i| {
                    let n = s.write(i, &mut buf).unwrap();
                    buf[..n].to_vec()
                })
                .collect()
        }
        Delivery::CompleteCsum { start, offset, .. } => {
            csum::complete(&mut frame, start, offset).unwrap();
            vec![frame]
        }
        d => panic!("unexpected delivery {d:?}"),
    }
}

fn specs(vlans: usize) -> Vec<(FrameSpec, bool)> {
    let mut v = Vec::new();
    for v6 in [false, true] {
        for tcp in [false, true] {
            for opts in [false, true] {
                let spec = FrameSpec {
                    vlans,
                    v6,
                    tcp,
                    ipv4_opts: if opts && !v6 { 8 } else { 0 },
                    ipv6_ext: opts && v6,
                    tcp_opts: if opts { 12 } else { 0 },
                    dst_port: PORT,
                    seed: v.len() as u8,
                    ..FrameSpec::default()
                };
                v.push((FrameSpec { payload: 30 * MSS as usize + 77, ..spec }, true));
                v.push((FrameSpec { payload: 1000, ..spec }, false));
                v.push((FrameSpec { payload: 3, ..spec }, false));
            }
        }
    }
    v
}

fn run_case(vlans: usize) -> Result<(), String> {
    // SAFETY: unshare(2) on this thread only; no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!("SKIP unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error()));
    }
    setup(vlans)?;
    let u4 = UdpSocket::bind(("10.0.0.2", PORT)).map_err(|e| format!("bind v4: {e}"))?;
    let u6 = UdpSocket::bind(("2001:db8::2", PORT)).map_err(|e| format!("bind v6: {e}"))?;
    for s in [&u4, &u6] {
        s.set_nonblocking(true).unwrap();
    }
    let tx = PacketTx::new()?;
    let before = counters();
    let (mut tcp_sent, mut udp_want) = (0i64, Vec::new());
    for (spec, gso) in specs(vlans) {
        let frames = software_offload(&spec, gso);
        for fr in &frames {
            tx.send(fr);
            if !spec.tcp {
                udp_want.push((spec.v6, fr[spec.hdr_len()..].to_vec()));
            }
        }
        if spec.tcp {
            tcp_sent += frames.len() as i64;
        }
    }
    // Collect datagrams until all arrived or a deadline passes.
    let mut got: Vec<(bool, Vec<u8>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    while got.len() < udp_want.len() && Instant::now() < deadline {
        let mut idle = true;
        for (v6, s) in [(false, &u4), (true, &u6)] {
            if let Ok(n) = s.recv(&mut buf) {
                got.push((v6, buf[..n].to_vec()));
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // RSTs are counted synchronously on receive; let softirq processing finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    let delta = loop {
        let now = counters();
        let d = |k: &str| now.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
        let delta: HashMap<&str, i64> = [
            "TcpInSegs",
            "TcpOutRsts",
            "TcpInCsumErrors",
            "TcpInErrs",
            "UdpInDatagrams",
            "Udp6InDatagrams",
            "UdpInCsumErrors",
            "Udp6InCsumErrors",
            "IpInReceives",
            "IpInHdrErrors",
            "Ip6InReceives",
            "Ip6InHdrErrors",
        ]
        .into_iter()
        .map(|k| (k, d(k)))
        .collect();
        if delta["TcpOutRsts"] >= tcp_sent || Instant::now() > deadline {
            break delta;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let now = counters();
    let mut changed: Vec<String> = now
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| format!("{k}+{d}"))
        })
        .collect();
    changed.sort();
    let ctx = format!("{vlans} VLAN tag(s) [counters: {}]", changed.join(" "));
    for k in ["TcpInCsumErrors", "UdpInCsumErrors", "Udp6InCsumErrors", "IpInHdrErrors", "Ip6InHdrErrors"] {
        if delta[k] != 0 {
            return Err(format!("{ctx}: {k} rose by {}", delta[k]));
        }
    }
    if delta["TcpOutRsts"] != tcp_sent {
        return Err(format!(
            "{ctx}: {tcp_sent} TCP segments sent, kernel answered {} with RST ({delta:?})",
            delta["TcpOutRsts"]
        ));
    }
    // The same datagrams per socket (the sending thread may move between
    // CPUs, whose backlogs can reorder them).
    for v6 in [false, true] {
        let mut want: Vec<&Vec<u8>> = udp_want.iter().filter(|w| w.0 == v6).map(|w| &w.1).collect();
        let mut have: Vec<&Vec<u8>> = got.iter().filter(|g| g.0 == v6).map(|g| &g.1).collect();
        want.sort();
        have.sort();
        if want != have {
            return Err(format!(
                "{ctx}: UDP{} payloads: sent {}, received {}",
                if v6 { "v6" } else { "v4" },
                want.len(),
                have.len()
            ));
        }
    }
    eprintln!("{ctx}: kernel accepted {tcp_sent} TCP segments and {} UDP datagrams", udp_want.len());
    Ok(())
}

#[test]
fn kernel_accepts_software_segments_and_checksums() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("SKIP kernel_accepts_software_segments_and_checksums: needs root and iproute2");
        return;
    }
    let results: Vec<Result<(), String>> = (0..=2)
        .map(|vlans| std::thread::spawn(move || run_case(vlans)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| Err("case thread panicked".into())))
        .collect();
    for r in results {
        match r {
            Err(e) if e.starts_with("SKIP") => eprintln!("{e}"),
            r => r.unwrap(),
        }
    }
}
