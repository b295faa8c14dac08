//! AF_XDP port: each queue pair owns one XDP socket (XSK) bound to the
//! interface queue of the same index, with its own UMEM and four rings,
//! and a small XDP program redirects each received frame to the socket of
//! its queue.
//!
//! Everything is done with raw syscalls, no C library: the rings are
//! mapped from the socket ([`ring`], [`xsk`]), the program is six
//! hand-assembled instructions loaded with `bpf(2)` and attached through a
//! bpf link ([`bpf`]), and the interface is inspected with ethtool and
//! rtnetlink ([`netdev`]).
//!
//! Lifecycle: [`open_ports`] checks the interface, binds one socket per
//! pair, creates the XSKMAP and the program, puts the sockets in the map
//! and attaches the program last, so a failure at any step leaves nothing
//! attached. The program stays attached while any of the returned ports
//! lives (they share one [`Attachment`]) and is detached when the last one
//! is dropped, i.e. when the device stops. Because the attachment is a bpf
//! link, the kernel also detaches it when the process dies without
//! cleaning up (SIGKILL, a crash). A program of ours attached the old way,
//! through netlink (it would survive its process), is recognised by name
//! and replaced; anyone else's program is left alone and reported.
//!
//! Link: the ports come with a [`LinkWatch`] (see [`crate::backend::link`]):
//! the device's link follows the interface, a deleted interface fails the
//! ports, and when one of that name is back the watch opens new sockets
//! and a new program on it (in the namespace the ports were opened in).
//!
//! Everything happens in the calling thread's network namespace.

mod bpf;
pub mod ceiling;
mod netdev;
mod port;
mod ring;
mod xsk;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;

pub use self::bpf::PROG_NAME;
pub use self::netdev::AttachMode;
pub use self::port::{AfXdpCounters, AfXdpPort, AfXdpStats, XskSide};
use self::xsk::{BindMode, Xsk, XskError, XskGeometry};
use super::host::HostPorts;
use super::iface::{self, IfQuery, PortError};
use super::link::{self, Attach, LinkWatch, Monitor, Probe};
use super::Port;

/// Where the XDP program runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`xdpdrv`): fast, needs driver support. Zero-copy is
    /// possible only here.
    #[default]
    Native,
    /// Generic XDP (`xdpgeneric`) on the kernel's skb path: works on any
    /// interface, always copies.
    Skb,
}

impl XdpMode {
    fn attach_mode(self) -> AttachMode {
        match self {
            XdpMode::Native => AttachMode::Driver,
            XdpMode::Skb => AttachMode::Skb,
        }
    }
}

/// How to open the ports of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpOptions {
    pub mode: XdpMode,
    /// Require zero-copy (fail if the driver cannot); otherwise the kernel
    /// picks zero-copy where it can in native mode, copy elsewhere.
    pub zero_copy: bool,
    /// Entries of each ring (fill, completion, RX, TX); also the frames per
    /// direction in the UMEM.
    pub ring_size: u32,
    /// Promiscuous membership on the interface while the ports live (the
    /// driver's MAC is not the NIC's; the NIC would filter its frames out).
    pub promisc: bool,
}

impl Default for XdpOptions {
    fn default() -> Self {
        XdpOptions { mode: XdpMode::default(), zero_copy: false, ring_size: 2048, promisc: true }
    }
}

/// UMEM frame size: one Ethernet frame up to 1792 bytes (2048 less the
/// kernel's 256-byte XDP headroom) per frame.
pub const FRAME_SIZE: u32 = 2048;

#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error("{0:?} is not a valid interface name")]
    BadName(String),
    #[error("interface {0} does not exist (in this network namespace)")]
    NoInterface(String),
    #[error("--queues {0} must be at least 1")]
    NoQueues(u16),
    #[error("{0}")]
    Interface(PortError),
    #[error("AF_XDP ring size {0} must be a power of two in 64..=16384")]
    BadRingSize(u32),
    #[error("--zero-copy needs --xdp-mode native (generic XDP always copies)")]
    ZeroCopyNeedsNative,
    #[error("{iface} has {available} queue(s) AF_XDP can use, but --queues {wanted} needs one per queue pair")]
    TooManyQueues { iface: String, wanted: u16, available: u32 },
    #[error("{what} needs {caps} (run as root)")]
    Permission { what: &'static str, caps: &'static str },
    #[error("this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)")]
    NoAfXdp,
    #[error("this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)")]
    NoBpf,
    #[error(
        "registering {mib} MiB of AF_XDP buffers per queue exceeds the locked-memory limit: raise it (ulimit -l) \
         or grant CAP_IPC_LOCK"
    )]
    MemlockLimit { mib: usize },
    #[error("{iface}: its driver has no native XDP support; use --xdp-mode skb (generic XDP)")]
    NativeUnsupported { iface: String },
    #[error("{iface}: its driver does not support AF_XDP zero-copy ({source}); drop --zero-copy to use copy mode")]
    ZeroCopyUnsupported { iface: String, source: io::Error },
    #[error("{iface} queue {queue} is already bound to another AF_XDP socket")]
    QueueBusy { iface: String, queue: u32 },
    #[error(
        "{iface} already has an XDP program that vduse-net did not load ({name}, id {id}, {} mode); \
         remove it first (ip link set dev {iface} xdp off)", mode.name()
    )]
    ForeignProgram { iface: String, name: String, id: u32, mode: AttachMode },
    #[error("{iface} is in use by another running vduse-net (its XDP program id {id} is held by a live bpf link)")]
    Busy { iface: String, id: u32 },
    #[error("the kernel rejected the XDP program: {source}; verifier log: {log}")]
    Verifier { source: io::Error, log: String },
    #[error("this kernel cannot attach XDP through a bpf link (needs Linux 5.9 or later): {0}")]
    NoXdpLink(io::Error),
    #[error("{iface} queue {queue}: {step}: {source}")]
    Socket { iface: String, queue: u32, step: &'static str, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> AfXdpError {
    move |source| AfXdpError::Io { what, source }
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// The attached program: shared by the ports of one interface, detached
/// when the last of them is dropped. Fields drop in order: the link first
/// (that is the detach), then the program and its map.
pub struct Attachment {
    link: Option<OwnedFd>,
    _prog: OwnedFd,
    _map: OwnedFd,
    _promisc: Option<OwnedFd>,
    iface: String,
    mode: XdpMode,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        drop(self.link.take());
        log::info!("af-xdp {}: XDP program detached ({:?} mode)", self.iface, self.mode);
    }
}

/// Promiscuous membership on `ifindex` for as long as the returned socket
/// lives: a packet socket of protocol 0 (it receives nothing) holding
/// PACKET_MR_PROMISC. The kernel drops the membership when the socket
/// closes, also when the process dies, so the NIC never stays promiscuous.
fn promisc(ifindex: u32) -> Result<OwnedFd, AfXdpError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, None).map_err(|e| match e {
        Errno::EPERM | Errno::EACCES => {
            AfXdpError::Permission { what: "promiscuous membership (a packet socket)", caps: "CAP_NET_RAW" }
        }
        e => AfXdpError::Io { what: "socket(AF_PACKET)", source: e.into() },
    })?;
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex as libc::c_int,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    super::sys::setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
        .map_err(|e| AfXdpError::Io { what: "PACKET_ADD_MEMBERSHIP (promiscuous)", source: e.into() })?;
    Ok(fd)
}

/// What opening did besides making the sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Id of a stale program of ours that was detached first.
    pub replaced_stale: Option<u32>,
    /// Whether every socket runs in zero-copy mode.
    pub zero_copy: bool,
    /// The interface's index when it was opened.
    pub ifindex: u32,
}

/// An XDP program on the interface: ours (by name) or someone else's.
fn inspect(iface: &str, ifindex: u32) -> Result<Option<u32>, AfXdpError> {
    let info = netdev::link_info(ifindex).map_err(io_err("reading the interface's XDP state (rtnetlink)"))?;
    let mut replaced = None;
    for (mode, id) in info.xdp {
        let name = match bpf::prog_name(id) {
            Ok(n) => n,
            Err(e) if errno(&e) == libc::EPERM => "unknown: no permission to look".into(),
            Err(e) => format!("unknown: {e}"),
        };
        if name != PROG_NAME {
            return Err(AfXdpError::ForeignProgram { iface: iface.into(), name, id, mode });
        }
        // Ours. A live bpf link refuses a netlink detach (EBUSY): another
        // running vduse-net. Otherwise it is a netlink-attached leftover.
        match netdev::set_xdp_fd(ifindex, -1, mode.flags()) {
            Ok(()) => {
                log::warn!("af-xdp {iface}: detached a stale vduse-net XDP program (id {id}, {} mode)", mode.name());
                replaced = Some(id);
            }
            Err(e) if errno(&e) == libc::EBUSY => return Err(AfXdpError::Busy { iface: iface.into(), id }),
            Err(e) if errno(&e) == libc::EPERM => {
                return Err(AfXdpError::Permission { what: "replacing a stale XDP program", caps: "CAP_NET_ADMIN" })
            }
            Err(source) => return Err(AfXdpError::Io { what: "detaching a stale XDP program", source }),
        }
    }
    Ok(replaced)
}

/// How many queue pairs the interface can serve.
fn usable_queues(iface: &str, ifindex: u32) -> Result<u32, AfXdpError> {
    if let Some(n) = netdev::channel_queues(iface).map_err(io_err("reading the interface's channels (ethtool)"))? {
        if n > 0 {
            return Ok(n);
        }
    }
    let info = netdev::link_info(ifindex).map_err(io_err("reading the interface's queues (rtnetlink)"))?;
    Ok(match (info.num_rx_queues, info.num_tx_queues) {
        (Some(r), Some(t)) => r.min(t),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => 1,
    })
}

fn socket_error(name: &str, opts: &XdpOptions, queue: u32, g: &XskGeometry, e: XskError) -> AfXdpError {
    let iface = name.to_string();
    match (e.step, errno(&e.error)) {
        ("socket(AF_XDP)", libc::EPERM | libc::EACCES) => {
            AfXdpError::Permission { what: "creating an AF_XDP socket", caps: "CAP_NET_RAW" }
        }
        ("socket(AF_XDP)", libc::EAFNOSUPPORT) => AfXdpError::NoAfXdp,
        ("XDP_UMEM_REG", libc::ENOBUFS | libc::ENOMEM | libc::EPERM) => {
            AfXdpError::MemlockLimit { mib: g.umem_len() >> 20 }
        }
        ("bind", libc::EOPNOTSUPP) if opts.zero_copy => AfXdpError::ZeroCopyUnsupported { iface, source: e.error },
        ("bind", libc::EBUSY) => AfXdpError::QueueBusy { iface, queue },
        ("bind", libc::ENODEV) => AfXdpError::NoInterface(iface),
        (step, _) => AfXdpError::Socket { iface, queue, step, source: e.error },
    }
}

/// Bind one socket per pair on `name` and attach the program feeding
/// them. On error nothing is left attached.
pub fn open_sides(name: &str, pairs: u16, opts: &XdpOptions) -> Result<(Vec<XskSide>, OpenReport), AfXdpError> {
    iface::check_name(name).map_err(AfXdpError::Interface)?;
    if pairs == 0 {
        return Err(AfXdpError::NoQueues(pairs));
    }
    if !opts.ring_size.is_power_of_two() || !(64..=16384).contains(&opts.ring_size) {
        return Err(AfXdpError::BadRingSize(opts.ring_size));
    }
    if opts.zero_copy && opts.mode == XdpMode::Skb {
        return Err(AfXdpError::ZeroCopyNeedsNative);
    }
    let q = IfQuery::new().map_err(|e| AfXdpError::Io { what: "socket", source: e.into() })?;
    let ifindex = q
        .link(name)
        .map(|l| l.map(|l| l.index))
        .map_err(|e| AfXdpError::Io { what: "looking up the interface", source: e.into() })?
        .ok_or_else(|| AfXdpError::NoInterface(name.to_string()))?;
    let available = usable_queues(name, ifindex)?;
    if pairs as u32 > available {
        return Err(AfXdpError::TooManyQueues { iface: name.to_string(), wanted: pairs, available });
    }
    let geometry =
        XskGeometry { ring: opts.ring_size, frame: FRAME_SIZE, rx_frames: opts.ring_size, tx_frames: opts.ring_size };

    // Sockets first (the least privileged step, and the one that checks
    // queues and zero-copy), then the map and program, attach last.
    let bind = match (opts.mode, opts.zero_copy) {
        (XdpMode::Skb, _) => BindMode::ForceCopy,
        (XdpMode::Native, true) => BindMode::ZeroCopy,
        (XdpMode::Native, false) => BindMode::Auto,
    };
    let mut socks = Vec::with_capacity(pairs as usize);
    for i in 0..pairs as u32 {
        socks.push(Xsk::open(ifindex, i, geometry, bind).map_err(|e| socket_error(name, opts, i, &geometry, e))?);
    }
    let bpf_err = |what: &'static str| {
        move |e: io::Error| match errno(&e) {
            libc::EPERM | libc::EACCES => AfXdpError::Permission { what, caps: "CAP_BPF and CAP_NET_ADMIN" },
            libc::ENOSYS => AfXdpError::NoBpf,
            _ => AfXdpError::Io { what, source: e },
        }
    };
    let map = bpf::create_xskmap(pairs as u32).map_err(bpf_err("creating the XSKMAP"))?;
    for (i, s) in socks.iter().enumerate() {
        bpf::map_set_socket(&map, i as u32, s.fd()).map_err(bpf_err("adding a socket to the XSKMAP"))?;
    }
    let prog =
        bpf::load_xdp(&bpf::redirect_program(map.as_raw_fd()), PROG_NAME).map_err(|e| match errno(&e.error) {
            libc::EPERM => {
                AfXdpError::Permission { what: "loading the XDP program", caps: "CAP_BPF and CAP_NET_ADMIN" }
            }
            _ => AfXdpError::Verifier { source: e.error, log: e.log },
        })?;

    let promisc = if opts.promisc { Some(promisc(ifindex)?) } else { None };
    let replaced_stale = inspect(name, ifindex)?;
    let mode = opts.mode.attach_mode();
    let link = bpf::link_xdp(&prog, ifindex, mode.flags()).map_err(|e| match errno(&e) {
        libc::EPERM | libc::EACCES => {
            AfXdpError::Permission { what: "attaching an XDP program", caps: "CAP_NET_ADMIN" }
        }
        libc::EOPNOTSUPP if opts.mode == XdpMode::Native => AfXdpError::NativeUnsupported { iface: name.to_string() },
        // Someone attached a program since we looked.
        libc::EBUSY | libc::EEXIST => match inspect(name, ifindex) {
            Err(e) => e,
            Ok(_) => AfXdpError::Io { what: "attaching the XDP program", source: e },
        },
        libc::EINVAL => AfXdpError::NoXdpLink(e),
        libc::ENODEV => AfXdpError::NoInterface(name.to_string()),
        _ => AfXdpError::Io { what: "attaching the XDP program", source: e },
    })?;
    let attachment = Arc::new(Attachment {
        link: Some(link),
        _prog: prog,
        _map: map,
        _promisc: promisc,
        iface: name.to_string(),
        mode: opts.mode,
    });
    let zero_copy = socks.iter().all(|s| s.zero_copy);
    log::info!(
        "af-xdp {name} (ifindex {ifindex}): XDP program attached ({} mode), {pairs} socket(s), {}",
        mode.name(),
        if zero_copy { "zero-copy" } else { "copy mode" }
    );
    let sides = socks.into_iter().map(|xsk| XskSide { xsk, attachment: attachment.clone() }).collect();
    Ok((sides, OpenReport { replaced_stale, zero_copy, ifindex }))
}

/// The ports of one interface, their link watch, and what opening did.
pub struct AfXdpPorts {
    pub ports: Vec<AfXdpPort>,
    pub watch: Box<dyn LinkWatch>,
    pub report: OpenReport,
}

/// `pairs` ports on `name` (pair i on the interface's queue i) and the
/// device's link watch.
pub fn open_ports(name: &str, pairs: u16, opts: &XdpOptions) -> Result<AfXdpPorts, AfXdpError> {
    let (sides, report) = open_sides(name, pairs, opts)?;
    let q = IfQuery::new().map_err(|e| AfXdpError::Io { what: "socket", source: e.into() })?;
    let netns =
        iface::own_netns().map_err(|e| AfXdpError::Io { what: "reading the network namespace", source: e.into() })?;
    let (shared, links, notify) =
        link::port_links::<XskSide>(pairs, &format!("af-xdp {name}")).map_err(io_err("eventfd"))?;
    let ports = sides.into_iter().zip(links).enumerate().map(|(i, (s, l))| AfXdpPort::new(s, i as u32, l)).collect();
    let mut attach = XdpAttach { name: name.to_string(), ifindex: report.ifindex, q, netns, opts: *opts };
    let up = attach.probe() == Probe::Up;
    let watch = Monitor::new(attach, name, shared, notify, up).spawn().map_err(io_err("thread"))?;
    Ok(AfXdpPorts { ports, watch, report })
}

/// Boxed ports and their watch, as every host port kind opens them.
pub fn open(name: &str, pairs: u16, opts: &XdpOptions) -> Result<HostPorts, PortError> {
    let p = open_ports(name, pairs, opts)?;
    Ok(HostPorts { ports: p.ports.into_iter().map(|p| Box::new(p) as Box<dyn Port>).collect(), watch: p.watch })
}

/// The link watch's view of the interface.
struct XdpAttach {
    name: String,
    ifindex: u32,
    /// A socket in the ports' namespace, for the ioctl probes.
    q: IfQuery,
    /// The ports' namespace: a reopen binds and attaches there.
    netns: OwnedFd,
    opts: XdpOptions,
}

impl Attach for XdpAttach {
    type Res = XskSide;

    fn probe(&mut self) -> Probe {
        match self.q.link_of(self.ifindex) {
            Ok(Some(f)) if f.link_up() => Probe::Up,
            Ok(Some(_)) => Probe::Down,
            Ok(None) => Probe::Gone,
            Err(_) => Probe::Down,
        }
    }

    fn is_back(&mut self) -> bool {
        matches!(self.q.link(&self.name), Ok(Some(_)))
    }

    fn reopen(&mut self, pairs: usize) -> Result<Vec<XskSide>, PortError> {
        let (name, opts) = (self.name.as_str(), &self.opts);
        let open = || open_sides(name, pairs as u16, opts);
        let here = iface::own_netns().and_then(|h| iface::netns_id(h.as_fd()));
        let (sides, rep) = if here.ok() == iface::netns_id(self.netns.as_fd()).ok() {
            open()?
        } else {
            // The watch thread may run in another namespace than the one
            // the ports were opened in: open from a short-lived thread there.
            let ns = self.netns.as_fd();
            std::thread::scope(|s| {
                s.spawn(|| {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| AfXdpError::Io { what: "entering the interface's namespace", source: e.into() })?;
                    open()
                })
                .join()
                .unwrap_or_else(|_| Err(AfXdpError::Io { what: "reopen thread", source: Errno::EIO.into() }))
            })?
        };
        self.ifindex = rep.ifindex;
        Ok(sides)
    }
}

/// XDP programs attached to `iface` now: (mode, program id, name).
pub fn attached_programs(iface: &str) -> io::Result<Vec<(AttachMode, u32, String)>> {
    let q = IfQuery::new()?;
    let ifindex = q.link(iface)?.map(|l| l.index).ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
    let info = netdev::link_info(ifindex)?;
    Ok(info.xdp.into_iter().map(|(m, id)| (m, id, bpf::prog_name(id).unwrap_or_else(|e| format!("? ({e})")))).collect())
}

/// [`attached_programs`] once they are gone, or what is left after
/// `within`. The kernel detaches when the last reference to our bpf link
/// goes; a child forked by another thread holds a copy of the fd until its
/// exec closes it, so right after the ports are dropped the program may
/// still be there for a moment.
pub fn attached_programs_after(iface: &str, within: std::time::Duration) -> io::Result<Vec<(AttachMode, u32, String)>> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let now = attached_programs(iface)?;
        if now.is_empty() || std::time::Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
