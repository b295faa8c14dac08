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
//! Lifecycle: [`open`] checks the interface, creates the XSKMAP and the
//! program, binds one socket per pair and puts it in the map, and attaches
//! the program last, so a failure at any step leaves nothing attached. The
//! program stays attached while any of the returned ports lives (they
//! share one [`Attachment`]) and is detached when the last one is dropped,
//! i.e. when the device stops. Because the attachment is a bpf link, the
//! kernel also detaches it when the process dies without cleaning up
//! (SIGKILL, a crash). A program of ours attached the old way, through
//! netlink (it would survive its process), is recognised by name and
//! replaced; anyone else's program is left alone and reported.
//!
//! Everything happens in the calling thread's network namespace.

mod bpf;
mod netdev;
mod port;
mod ring;
mod xsk;

#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

pub use self::bpf::PROG_NAME;
pub use self::netdev::AttachMode;
pub use self::port::{AfXdpCounters, AfXdpPort, AfXdpStats};
use self::xsk::{BindMode, Xsk, XskError, XskGeometry};

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

/// What to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// Interface name, in the calling thread's network namespace.
    pub iface: String,
    /// Queue pairs: pair i uses the interface's queue i.
    pub queues: u16,
    pub mode: XdpMode,
    /// Require zero-copy (fail if the driver cannot); otherwise the kernel
    /// picks zero-copy where it can in native mode, copy elsewhere.
    pub zero_copy: bool,
    /// Entries of each ring (fill, completion, RX, TX); also the frames per
    /// direction in the UMEM.
    pub ring_size: u32,
}

impl AfXdpConfig {
    pub fn new(iface: &str, queues: u16) -> AfXdpConfig {
        AfXdpConfig { iface: iface.to_string(), queues, mode: XdpMode::default(), zero_copy: false, ring_size: 2048 }
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
    iface: String,
    mode: XdpMode,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        drop(self.link.take());
        log::info!("af-xdp {}: XDP program detached ({:?} mode)", self.iface, self.mode);
    }
}

/// What [`open`] did besides returning the ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Id of a stale program of ours that was detached first.
    pub replaced_stale: Option<u32>,
    /// Whether every socket runs in zero-copy mode.
    pub zero_copy: bool,
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

fn socket_error(cfg: &AfXdpConfig, queue: u32, g: &XskGeometry, e: XskError) -> AfXdpError {
    let iface = cfg.iface.clone();
    match (e.step, errno(&e.error)) {
        ("socket(AF_XDP)", libc::EPERM | libc::EACCES) => {
            AfXdpError::Permission { what: "creating an AF_XDP socket", caps: "CAP_NET_RAW" }
        }
        ("socket(AF_XDP)", libc::EAFNOSUPPORT) => AfXdpError::NoAfXdp,
        ("XDP_UMEM_REG", libc::ENOBUFS | libc::ENOMEM | libc::EPERM) => {
            AfXdpError::MemlockLimit { mib: g.umem_len() >> 20 }
        }
        ("bind", libc::EOPNOTSUPP) if cfg.zero_copy => AfXdpError::ZeroCopyUnsupported { iface, source: e.error },
        ("bind", libc::EBUSY) => AfXdpError::QueueBusy { iface, queue },
        ("bind", libc::ENODEV) => AfXdpError::NoInterface(iface),
        (step, _) => AfXdpError::Socket { iface, queue, step, source: e.error },
    }
}

/// Open one port per queue pair on `cfg.iface` and attach the program.
/// On error nothing is left attached.
pub fn open(cfg: &AfXdpConfig) -> Result<(Vec<AfXdpPort>, OpenReport), AfXdpError> {
    if !netdev::valid_name(&cfg.iface) {
        return Err(AfXdpError::BadName(cfg.iface.clone()));
    }
    if cfg.queues == 0 {
        return Err(AfXdpError::NoQueues(cfg.queues));
    }
    if !cfg.ring_size.is_power_of_two() || !(64..=16384).contains(&cfg.ring_size) {
        return Err(AfXdpError::BadRingSize(cfg.ring_size));
    }
    if cfg.zero_copy && cfg.mode == XdpMode::Skb {
        return Err(AfXdpError::ZeroCopyNeedsNative);
    }
    let iface = cfg.iface.as_str();
    let ifindex = netdev::ifindex(iface)
        .map_err(io_err("looking up the interface"))?
        .ok_or_else(|| AfXdpError::NoInterface(cfg.iface.clone()))?;
    let available = usable_queues(iface, ifindex)?;
    if cfg.queues as u32 > available {
        return Err(AfXdpError::TooManyQueues { iface: cfg.iface.clone(), wanted: cfg.queues, available });
    }
    let geometry =
        XskGeometry { ring: cfg.ring_size, frame: FRAME_SIZE, rx_frames: cfg.ring_size, tx_frames: cfg.ring_size };

    // Sockets first (the least privileged step, and the one that checks
    // queues and zero-copy), then the map and program, attach last.
    let copy = match (cfg.mode, cfg.zero_copy) {
        (XdpMode::Skb, _) => BindMode::ForceCopy,
        (XdpMode::Native, true) => BindMode::ZeroCopy,
        (XdpMode::Native, false) => BindMode::Auto,
    };
    let mut socks = Vec::with_capacity(cfg.queues as usize);
    for q in 0..cfg.queues as u32 {
        socks.push(Xsk::open(ifindex, q, geometry, copy).map_err(|e| socket_error(cfg, q, &geometry, e))?);
    }
    let bpf_err = |what: &'static str| {
        move |e: io::Error| match errno(&e) {
            libc::EPERM | libc::EACCES => AfXdpError::Permission { what, caps: "CAP_BPF and CAP_NET_ADMIN" },
            libc::ENOSYS => AfXdpError::NoBpf,
            _ => AfXdpError::Io { what, source: e },
        }
    };
    let map = bpf::create_xskmap(cfg.queues as u32).map_err(bpf_err("creating the XSKMAP"))?;
    for (q, s) in socks.iter().enumerate() {
        bpf::map_set_socket(&map, q as u32, s.fd()).map_err(bpf_err("adding a socket to the XSKMAP"))?;
    }
    let prog =
        bpf::load_xdp(&bpf::redirect_program(map.as_raw_fd()), PROG_NAME).map_err(|e| match errno(&e.error) {
            libc::EPERM => {
                AfXdpError::Permission { what: "loading the XDP program", caps: "CAP_BPF and CAP_NET_ADMIN" }
            }
            _ => AfXdpError::Verifier { source: e.error, log: e.log },
        })?;

    let replaced_stale = inspect(iface, ifindex)?;
    let mode = cfg.mode.attach_mode();
    let link = match bpf::link_xdp(&prog, ifindex, mode.flags()) {
        Ok(l) => l,
        Err(e) => {
            return Err(match errno(&e) {
                libc::EPERM | libc::EACCES => {
                    AfXdpError::Permission { what: "attaching an XDP program", caps: "CAP_NET_ADMIN" }
                }
                libc::EOPNOTSUPP if cfg.mode == XdpMode::Native => {
                    AfXdpError::NativeUnsupported { iface: cfg.iface.clone() }
                }
                // Someone attached a program since we looked.
                libc::EBUSY | libc::EEXIST => match inspect(iface, ifindex) {
                    Err(e) => e,
                    Ok(_) => AfXdpError::Io { what: "attaching the XDP program", source: e },
                },
                libc::EINVAL => AfXdpError::NoXdpLink(e),
                libc::ENODEV => AfXdpError::NoInterface(cfg.iface.clone()),
                _ => AfXdpError::Io { what: "attaching the XDP program", source: e },
            });
        }
    };
    let attachment =
        Arc::new(Attachment { link: Some(link), _prog: prog, _map: map, iface: cfg.iface.clone(), mode: cfg.mode });
    let zero_copy = socks.iter().all(|s| s.zero_copy);
    log::info!(
        "af-xdp {iface}: XDP program attached ({} mode), {} queue(s), {} copy",
        mode.name(),
        cfg.queues,
        if zero_copy { "zero" } else { "kernel" }
    );
    let ports = socks.into_iter().enumerate().map(|(q, s)| AfXdpPort::new(s, q as u32, attachment.clone())).collect();
    Ok((ports, OpenReport { replaced_stale, zero_copy }))
}

/// XDP programs attached to `iface` now: (mode, program id, name).
pub fn attached_programs(iface: &str) -> io::Result<Vec<(AttachMode, u32, String)>> {
    let ifindex = netdev::ifindex(iface)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
    let info = netdev::link_info(ifindex)?;
    Ok(info.xdp.into_iter().map(|(m, id)| (m, id, bpf::prog_name(id).unwrap_or_else(|e| format!("? ({e})")))).collect())
}
