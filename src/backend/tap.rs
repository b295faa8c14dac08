//! TAP port: one queue of a multi-queue tap per queue pair.
//!
//! Each queue is its own fd (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
//! IFF_MULTI_QUEUE`, non-blocking) with a 12-byte virtio-net header in front
//! of every frame (`TUNSETVNETHDRSZ`), so offload metadata passes through
//! unchanged. A tap has no batched read or write: the poll thread makes one
//! `write` per TX frame at the end of a burst and one `read` per RX frame
//! (plus one that finds nothing), the same as QEMU's tap backend.
//!
//! Back-pressure: TX frames wait in a small queue of the port until the
//! kernel takes them; when `write` says EAGAIN the queue fills, `tx_slot`
//! returns `None` and the driver's chains stay on its ring; the poll thread
//! then sleeps until the tap is writable again. RX frames the driver has no
//! buffers for stay in the port (and further ones in the tap's queue,
//! which the kernel bounds by the tap's txqueuelen).
//!
//! Lifetime: a tap this process created is not persistent and disappears
//! when the device stops; a tap that existed (e.g. `ip tuntap add ...
//! multi_queue vnet_hdr`) is attached to and stays. A tap moved to another
//! network namespace after the start keeps carrying frames (the queue fds
//! follow it) and its link state is read in that namespace. A tap that is
//! deleted fails its ports (logged once, counted) and sets the device's
//! link down; when a tap of the same name exists again in this process's
//! namespace, the ports attach to it and the link comes back.
//!
//! Offloads: `TUNSETOFFLOAD` (and closing a queue fd) takes the RTNL lock,
//! which a guest's virtio-net probe holds while it waits for DRIVER_OK and
//! its first control commands, which the poll threads must acknowledge. So
//! no poll thread makes that call: the ports of one tap share an
//! [`OffloadApplier`], a thread that applies the latest wanted flags (they
//! are per tap device, so one call serves every queue) and closes dead
//! queue fds, while the ports validate frames against every flag set that
//! may be in force until it is done.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::PollFlags;
use nix::sys::stat::Mode;

use super::bufq::BufQueue;
use super::host::HostPorts;
use super::iface::{self, IfQuery, PortError};
use super::link::{self, Attach, Monitor, PortLink, Probe};
use super::meta::FrameMeta;
use super::{sys, Port, PortFrame, PortWake, SLOT_SIZE};
use crate::net::hdr::HDR_LEN;
use crate::net::offload::OffloadCaps;

/// A tap has at most this many queues (MAX_TAP_QUEUES).
pub const MAX_QUEUES: u16 = 256;
/// Frames a port keeps on each side.
const QUEUE: usize = 256;
/// Frames read from the tap in one pass.
const RX_BATCH: usize = 32;
/// Bytes past a slot in each RX buffer: a read that fills them was longer
/// than a slot (the kernel cuts frames to the buffer).
const RX_SLACK: usize = 64;

const TUN_PATH: &str = "/dev/net/tun";

/// errnos after which a tap queue fd is dead for good.
fn is_gone(e: Errno) -> bool {
    matches!(e, Errno::EBADFD | Errno::ENXIO | Errno::ENODEV | Errno::EPIPE)
}

/// The queue fds of tap `name`: created (not persistent) if there is no
/// interface of that name, attached to otherwise. Returns the fds and
/// whether the tap was created. On error every fd opened is closed, which
/// also removes a tap this call created.
pub fn open_queues(name: &str, pairs: u16) -> Result<(Vec<OwnedFd>, bool), PortError> {
    iface::check_name(name)?;
    if pairs == 0 || pairs > MAX_QUEUES {
        return Err(PortError::TooManyQueues { name: name.into(), pairs, max: MAX_QUEUES });
    }
    let q = IfQuery::new().map_err(|e| PortError::os("socket", name, e))?;
    let found = q.link(name).map_err(|e| PortError::os("RTM_GETLINK", name, e))?;
    let mut multi_queue = true;
    if let Some(l) = &found {
        let Some(t) = l.tun.filter(|t| t.tap) else {
            return Err(PortError::NotATap { name: name.into(), kind: l.describe() });
        };
        if t.queues > 0 {
            // Someone else's queues would take part of our frames.
            return Err(PortError::TapInUse { name: name.into(), queues: t.queues as usize });
        }
        if !t.multi_queue {
            if pairs > 1 {
                return Err(PortError::NotMultiQueue { name: name.into(), pairs });
            }
            multi_queue = false;
        }
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let mut fds = Vec::with_capacity(pairs as usize);
    for _ in 0..pairs {
        fds.push(open_queue(name, flags, found.is_some())?);
    }
    let created = found.is_none();
    if created {
        log::info!("tap {name}: created ({pairs} queue(s)); it goes away when the device stops");
    } else if let Some(l) = found {
        log::info!("tap {name} (ifindex {}): attached {pairs} queue(s)", l.index);
    }
    Ok((fds, created))
}

fn open_queue(name: &str, flags: libc::c_int, existed: bool) -> Result<OwnedFd, PortError> {
    let fd = nix::fcntl::open(TUN_PATH, OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty()).map_err(
        |e| match e {
            Errno::ENOENT | Errno::ENODEV => PortError::NoTun,
            Errno::EACCES | Errno::EPERM => PortError::Permission {
                what: format!("opening {TUN_PATH}"),
                cap: "read-write access to /dev/net/tun, and CAP_NET_ADMIN to create a tap",
            },
            e => PortError::os("open /dev/net/tun", name, e),
        },
    )?;
    // SAFETY: open returned a new fd that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut r = sys::ifreq(name);
    r.ifr_ifru.ifru_flags = flags as libc::c_short;
    sys::ioctl_ifreq(fd.as_fd(), libc::TUNSETIFF, &mut r).map_err(|e| match e {
        Errno::EPERM | Errno::EACCES => PortError::Permission {
            what: format!("{} tap {name}", if existed { "attaching to" } else { "creating" }),
            cap: "CAP_NET_ADMIN (or ownership of a persistent tap)",
        },
        Errno::EBUSY => PortError::TapInUse { name: name.into(), queues: 1 },
        Errno::E2BIG => PortError::TooManyQueues { name: name.into(), pairs: MAX_QUEUES + 1, max: MAX_QUEUES },
        Errno::EINVAL if existed => PortError::NotATap { name: name.into(), kind: "not a tap of this mode".into() },
        e => PortError::os("TUNSETIFF", name, e),
    })?;
    sys::ioctl_set_int(fd.as_fd(), libc::TUNSETVNETHDRSZ, HDR_LEN as libc::c_int)
        .map_err(|e| PortError::os("TUNSETVNETHDRSZ", name, e))?;
    Ok(fd)
}

/// The name a tap queue fd is attached to, or the errno (EBADFD: deleted).
fn attached_name(fd: BorrowedFd<'_>) -> Result<String, Errno> {
    let mut r = sys::ifreq("");
    sys::ioctl_ifreq(fd, libc::TUNGETIFF, &mut r)?;
    Ok(sys::ifreq_name(&r))
}

/// `TUNSETOFFLOAD` on a queue fd of the tap.
fn tun_set_offload(fd: BorrowedFd<'_>, flags: u32) -> Result<(), Errno> {
    sys::ioctl_set_value(fd, libc::TUNSETOFFLOAD, flags as libc::c_ulong)
}

/// What the ports and the applier thread share (under the mutex, which is
/// never held across a syscall).
struct ApplyState {
    /// Flags to apply next (the latest request wins).
    wanted: Option<u32>,
    /// A queue fd of a reopened tap: the applier's from now on.
    new_fd: Option<OwnedFd>,
    /// Queue fds of a dead tap: closing one takes RTNL too.
    graveyard: Vec<OwnedFd>,
    /// Flags in force on the tap (the last that the kernel took).
    applied: u32,
    /// Flags being applied now (0: none): in force any moment.
    in_flight: u32,
    /// Calls made and the last thread they ran on (for tests and logs).
    applies: u64,
    last_thread: Option<std::thread::ThreadId>,
    stop: bool,
}

struct ApplyShared {
    state: Mutex<ApplyState>,
    cv: Condvar,
    name: String,
    /// The call that applies flags (a stand-in in tests).
    apply: fn(BorrowedFd<'_>, u32) -> Result<(), Errno>,
}

impl ApplyShared {
    fn lock(&self) -> MutexGuard<'_, ApplyState> {
        // A panic on the applier thread leaves the state consistent (every
        // update is one assignment): keep going with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The thread that makes a tap's `TUNSETOFFLOAD` calls, shared by its
/// ports (an `Arc` each); the last port's drop stops and joins it.
pub struct OffloadApplier {
    shared: Arc<ApplyShared>,
    join: Option<JoinHandle<()>>,
}

impl OffloadApplier {
    /// An applier for the tap that `fd` (a queue fd the applier keeps) is
    /// attached to.
    fn spawn(fd: OwnedFd, name: &str) -> std::io::Result<Arc<OffloadApplier>> {
        Self::spawn_with(fd, name, tun_set_offload)
    }

    fn spawn_with(
        fd: OwnedFd,
        name: &str,
        apply: fn(BorrowedFd<'_>, u32) -> Result<(), Errno>,
    ) -> std::io::Result<Arc<OffloadApplier>> {
        let shared = Arc::new(ApplyShared {
            state: Mutex::new(ApplyState {
                wanted: None,
                new_fd: None,
                graveyard: Vec::new(),
                applied: 0,
                in_flight: 0,
                applies: 0,
                last_thread: None,
                stop: false,
            }),
            cv: Condvar::new(),
            name: name.into(),
            apply,
        });
        let sh = shared.clone();
        let join = std::thread::Builder::new().name("vduse-tapoff".into()).spawn(move || Self::run(&sh, fd))?;
        Ok(Arc::new(OffloadApplier { shared, join: Some(join) }))
    }

    fn run(sh: &ApplyShared, mut fd: OwnedFd) {
        let mut st = sh.lock();
        loop {
            let dead = std::mem::take(&mut st.graveyard);
            if !dead.is_empty() {
                drop(st);
                drop(dead);
                st = sh.lock();
                continue;
            }
            if let Some(new) = st.new_fd.take() {
                // A new tap starts without offloads.
                st.applied = 0;
                drop(st);
                drop(std::mem::replace(&mut fd, new));
                st = sh.lock();
                continue;
            }
            if let Some(flags) = st.wanted.take() {
                st.in_flight = flags;
                drop(st);
                let r = (sh.apply)(fd.as_fd(), flags);
                st = sh.lock();
                st.in_flight = 0;
                st.applies += 1;
                st.last_thread = Some(std::thread::current().id());
                match r {
                    Ok(()) => st.applied = flags,
                    // The flags in force stay what they were; the ports keep
                    // accepting them and what they asked for (a superset).
                    Err(e) => log::warn!(
                        "tap {}: TUNSETOFFLOAD {flags:#x}: {e}; the tap keeps the offloads it had ({:#x})",
                        sh.name,
                        st.applied
                    ),
                }
                continue;
            }
            if st.stop {
                return;
            }
            st = sh.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Ask for `flags` (never waits for the kernel): returns every flag set
    /// the tap may hand frames with from now on until the next request,
    /// the union of those in force, being applied and `flags`.
    fn request(&self, flags: u32, new_fd: Option<OwnedFd>, dead: Option<OwnedFd>) -> u32 {
        let mut st = self.shared.lock();
        if let Some(fd) = new_fd {
            st.new_fd = Some(fd);
        }
        if let Some(fd) = dead {
            st.graveyard.push(fd);
        }
        st.wanted = Some(flags);
        let may = st.applied | st.in_flight | flags;
        drop(st);
        self.shared.cv.notify_one();
        may
    }
}

impl Drop for OffloadApplier {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_one();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Frames a port keeps on each side once GSO frames (up to 64 KiB) are
/// negotiated: fewer, larger buffers.
const GSO_QUEUE: usize = 64;
/// Largest frame a tap hands over with GSO on: a 64 KiB IP packet behind
/// an Ethernet header and two VLAN tags.
const GSO_ROOM: usize = 65535 + 14 + 8;

/// One tap queue as a port.
pub struct TapPort {
    fd: OwnedFd,
    link: PortLink<OwnedFd>,
    tx: BufQueue,
    rx: BufQueue,
    /// Largest frame an RX buffer holds (a longer read was cut).
    rx_room: usize,
    /// The buffers' size without GSO: the device's MTU frame.
    base_room: usize,
    /// The TUNSETOFFLOAD flags this port asked for last.
    tun_flags: u32,
    /// Makes the TUNSETOFFLOAD calls off this thread.
    applier: Arc<OffloadApplier>,
    /// A write said EAGAIN: wait for POLLOUT.
    tx_blocked: bool,
    /// Where frames go while the port is failed.
    scratch: Box<[u8]>,
}

impl TapPort {
    fn new(fd: OwnedFd, link: PortLink<OwnedFd>, applier: Arc<OffloadApplier>) -> TapPort {
        TapPort {
            fd,
            link,
            tx: BufQueue::with_slots(QUEUE, HDR_LEN),
            rx: BufQueue::new(QUEUE, HDR_LEN, SLOT_SIZE + RX_SLACK),
            rx_room: SLOT_SIZE,
            base_room: SLOT_SIZE,
            tun_flags: 0,
            applier,
            tx_blocked: false,
            scratch: vec![0u8; SLOT_SIZE].into_boxed_slice(),
        }
    }

    /// Buffers for frames of up to `room` bytes (cold: DRIVER_OK). Only
    /// while they are empty: frames held keep their buffers (the dataplane
    /// segments a TX frame that does not fit, and the kernel cuts an RX
    /// frame longer than the old room, counted as dropped).
    fn resize(&mut self, room: usize) {
        let n = if room > 16 * 1024 { GSO_QUEUE } else { QUEUE };
        if room != self.rx_room && self.rx.is_empty() && self.tx.is_empty() {
            self.tx = BufQueue::new(n, HDR_LEN, room);
            self.rx = BufQueue::new(n, HDR_LEN, room + RX_SLACK);
            self.scratch = vec![0u8; room].into_boxed_slice();
            self.rx_room = room;
        }
    }

    #[inline]
    fn take_new(&mut self) {
        if let Some(fd) = self.link.take_new() {
            // The applier applies our flags on the new tap (a new queue fd
            // starts without offloads) and closes the old fd: both take
            // RTNL. A failed dup leaves the applier on the dead fd: logged,
            // the new tap hands complete frames.
            let dup = fd.try_clone().map_err(|e| log::warn!("tap: dup of a reopened queue fd: {e}")).ok();
            let old = std::mem::replace(&mut self.fd, fd);
            self.applier.request(self.tun_flags, dup, Some(old));
            self.tx_blocked = false;
            self.rx.clear();
            // Frames queued for the dead fd are lost with it.
            let n = self.tx.len() as u64;
            self.tx.clear();
            self.link.count(|h| &h.tx_link_dropped, n);
        }
    }

    /// Drop every queued TX frame (link down or port failed).
    fn drop_tx(&mut self) {
        let n = self.tx.len() as u64;
        self.tx.clear();
        self.link.count(|h| &h.tx_link_dropped, n);
    }
}

impl Port for TapPort {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        if self.link.failed() || self.link.down() {
            // Consume and drop, as a NIC without link does.
            return Some(&mut self.scratch);
        }
        self.tx.back_frame()
    }

    #[inline]
    fn tx_commit(&mut self, len: usize, meta: FrameMeta) {
        if self.link.failed() || self.link.down() {
            self.link.count(|h| &h.tx_link_dropped, 1);
            return;
        }
        if let Some(b) = self.tx.back_raw() {
            b[..HDR_LEN].copy_from_slice(&meta.to_bytes12(0));
            let room = b.len() - HDR_LEN;
            self.tx.push(HDR_LEN + len.min(room), meta);
        }
    }

    fn tx_flush(&mut self) {
        self.take_new();
        while let Some((buf, _)) = self.tx.front() {
            match nix::unistd::write(self.fd.as_fd(), buf) {
                Ok(_) => {
                    self.tx_blocked = false;
                    self.tx.pop();
                }
                Err(Errno::EAGAIN) => {
                    // Back-pressure: keep the rest; POLLOUT wakes us.
                    self.tx_blocked = true;
                    return;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EIO) => {
                    // Administratively down: it takes nothing.
                    self.drop_tx();
                    return;
                }
                Err(e) if is_gone(e) => {
                    self.link.fail("write", e);
                    self.drop_tx();
                    return;
                }
                Err(_) => {
                    self.link.count(|h| &h.tx_errors, 1);
                    self.tx.pop();
                }
            }
        }
    }

    fn rx_fill(&mut self) {
        self.take_new();
        if !self.rx.is_empty() || self.link.failed() {
            return;
        }
        for _ in 0..RX_BATCH {
            let Some(buf) = self.rx.back_raw() else { break };
            match nix::unistd::read(self.fd.as_raw_fd(), buf) {
                Ok(n) if n > HDR_LEN && n - HDR_LEN <= self.rx_room => {
                    let mut h = [0u8; super::meta::VNET_HDR_LEN];
                    h.copy_from_slice(&buf[..super::meta::VNET_HDR_LEN]);
                    self.rx.push(n, FrameMeta::parse(&h));
                }
                // Shorter than a header, or longer than a slot (cut).
                Ok(_) => self.link.count(|h| &h.rx_dropped, 1),
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(e) if is_gone(e) => {
                    self.link.fail("read", e);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    #[inline]
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        self.rx.front().map(|(b, meta)| PortFrame { bytes: &b[HDR_LEN..], meta })
    }

    #[inline]
    fn rx_consume(&mut self) {
        self.rx.pop();
    }

    #[inline]
    fn rx_flush(&mut self) {}

    fn rx_pending(&self) -> usize {
        self.rx.len()
    }

    fn offloads(&self) -> bool {
        // The tap's kernel side finishes checksums and segments GSO frames
        // described by the header.
        true
    }

    fn reserve_frames(&mut self, max_frame: usize) -> bool {
        if max_frame > GSO_ROOM {
            return false;
        }
        self.base_room = max_frame.max(SLOT_SIZE);
        self.resize(self.base_room);
        true
    }

    fn set_offloads(&mut self, accept: OffloadCaps, gso: bool) -> OffloadCaps {
        self.resize(if gso { GSO_ROOM } else { self.base_room });
        // The tap hands us only what the driver takes, so frames from it
        // pass through with their headers (no software work per frame).
        // Frames as large as GSO needs only with buffers for them.
        let accept = if self.rx_room >= GSO_ROOM {
            accept
        } else {
            OffloadCaps { tso4: false, tso6: false, tso_ecn: false, uso4: false, uso6: false, ..accept }
        };
        self.tun_flags = accept.tun_flags();
        // Not applied here: see the module comment. Until the tap has the
        // new flags it may hand frames with the old ones, so RX validation
        // accepts both; delivery then fits each frame to what the driver
        // takes (software checksum or segmentation, or a counted drop).
        OffloadCaps::from_tun_flags(self.applier.request(self.tun_flags, None, None))
    }

    fn wake(&self) -> Option<PortWake<'_>> {
        if self.link.failed() {
            return Some(PortWake { fd: self.link.handover_fd(), events: PollFlags::POLLIN });
        }
        let mut events = PollFlags::empty();
        if self.rx.is_empty() {
            events |= PollFlags::POLLIN;
        }
        if self.tx_blocked {
            events |= PollFlags::POLLOUT;
        }
        // Nothing to wait for on the tap (frames held for lack of RX
        // buffers): the RX kick wakes the thread.
        (!events.is_empty()).then(|| PortWake { fd: self.fd.as_fd(), events })
    }

    fn stats(&self) -> Option<std::sync::Arc<dyn crate::ops::PortStats>> {
        Some(self.link.stats("tap"))
    }

    fn arm_rx_wakeup(&mut self) -> bool {
        // The tap fd is level-triggered: nothing to arm, no lost wake-up.
        false
    }
}

/// The link watch's view of a tap.
pub struct TapAttach {
    name: String,
    /// A duplicate of a live queue fd: TUNGETIFF on it fails with EBADFD
    /// once the tap is deleted, wherever it lives.
    probe_fd: Option<OwnedFd>,
    own: IfQuery,
    /// Queries in the tap's namespace when it moved away from ours.
    moved: Option<(u64, IfQuery)>,
    own_ns: u64,
    ns_error_logged: bool,
}

impl TapAttach {
    fn query(&mut self, fd: BorrowedFd<'_>) -> &IfQuery {
        if let Ok(ns) = sys::ioctl_new_fd(fd, libc::TUNGETDEVNETNS) {
            if let Ok(id) = iface::netns_id(ns.as_fd()) {
                if id == self.own_ns {
                    self.moved = None;
                } else if self.moved.as_ref().map(|m| m.0) != Some(id) {
                    match IfQuery::in_netns(ns) {
                        Ok(q) => {
                            log::info!(
                                "tap {}: moved to another network namespace; its state is read there",
                                self.name
                            );
                            self.moved = Some((id, q));
                        }
                        Err(e) if !self.ns_error_logged => {
                            self.ns_error_logged = true;
                            log::warn!("tap {}: cannot look into its new network namespace: {e}", self.name);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        match &self.moved {
            Some((_, q)) => q,
            None => &self.own,
        }
    }
}

impl Attach for TapAttach {
    type Res = OwnedFd;

    fn probe(&mut self) -> Probe {
        let Some(fd) = self.probe_fd.take() else { return Probe::Gone };
        let r = match attached_name(fd.as_fd()) {
            Ok(name) => match self.query(fd.as_fd()).link(&name) {
                Ok(Some(l)) if l.link_up() => Probe::Up,
                _ => Probe::Down,
            },
            Err(e) if is_gone(e) => Probe::Gone,
            Err(_) => Probe::Down,
        };
        if r != Probe::Gone {
            self.probe_fd = Some(fd);
        }
        r
    }

    fn is_back(&mut self) -> bool {
        matches!(self.own.link(&self.name), Ok(Some(l)) if l.tun.is_some_and(|t| t.tap && t.queues == 0))
    }

    fn reopen(&mut self, pairs: usize) -> Result<Vec<OwnedFd>, PortError> {
        let (fds, _) = open_queues(&self.name, pairs as u16)?;
        self.probe_fd = Some(
            fds[0]
                .try_clone()
                .map_err(|e| PortError::os("dup", &self.name, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?,
        );
        self.moved = None;
        Ok(fds)
    }
}

/// Tap `name` with one queue per pair: the ports and the device's link
/// watch.
pub fn open(name: &str, pairs: u16) -> Result<HostPorts, PortError> {
    let (fds, _created) = open_queues(name, pairs)?;
    let oserr = |op: &'static str| {
        move |e: std::io::Error| PortError::os(op, name, Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    };
    let probe_fd = fds[0].try_clone().map_err(oserr("dup"))?;
    let applier = OffloadApplier::spawn(fds[0].try_clone().map_err(oserr("dup"))?, name).map_err(oserr("thread"))?;
    let own = IfQuery::new().map_err(|e| PortError::os("socket", name, e))?;
    let own_ns =
        iface::own_netns().and_then(|f| iface::netns_id(f.as_fd())).map_err(|e| PortError::os("netns", name, e))?;
    let (shared, links, notify) =
        link::port_links::<OwnedFd>(pairs, &format!("tap {name}")).map_err(oserr("eventfd"))?;
    let ports: Vec<Box<dyn Port>> = fds
        .into_iter()
        .zip(links)
        .map(|(fd, l)| Box::new(TapPort::new(fd, l, applier.clone())) as Box<dyn Port>)
        .collect();
    let mut attach =
        TapAttach { name: name.into(), probe_fd: Some(probe_fd), own, moved: None, own_ns, ns_error_logged: false };
    let up = attach.probe() == Probe::Up;
    let watch = Monitor::new(attach, name, shared, notify, up).spawn().map_err(oserr("thread"))?;
    Ok(HostPorts { ports, watch })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::link::port_links;
    use crate::net::hdr::{F_NEEDS_CSUM, GSO_TCPV4};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    /// A tap queue stand-in: one end of a seqpacket socket pair keeps frame
    /// boundaries, says EAGAIN when the other end's queue is full and EPIPE
    /// once it is closed.
    fn port() -> (TapPort, OwnedFd, Vec<std::sync::Arc<link::PortShared<OwnedFd>>>) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (shared, mut links, _notify) = port_links::<OwnedFd>(1, "tap test").unwrap();
        let applier = OffloadApplier::spawn(a.try_clone().unwrap(), "test").unwrap();
        (TapPort::new(a, links.remove(0), applier), b, shared)
    }

    fn send(p: &mut TapPort, byte: u8, len: usize, meta: FrameMeta) -> bool {
        let Some(s) = p.tx_slot() else { return false };
        s[..len].fill(byte);
        p.tx_commit(len, meta);
        true
    }

    #[test]
    fn tx_writes_header_and_frame_and_backs_off_on_eagain() {
        let (mut p, peer, _s) = port();
        let meta = FrameMeta {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert!(send(&mut p, 7, 100, meta));
        p.tx_flush();
        let mut buf = [0u8; 4096];
        let n = nix::unistd::read(peer.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(n, HDR_LEN + 100, "one write: header and frame");
        assert_eq!(&buf[..HDR_LEN], &meta.to_bytes12(0));
        assert!(buf[HDR_LEN..n].iter().all(|&b| b == 7));
        // Fill the peer's queue until the kernel says EAGAIN; the port then
        // keeps what it could not write and refuses new frames when full.
        let mut sent = 0;
        while send(&mut p, 1, 60, FrameMeta::PLAIN) {
            p.tx_flush();
            sent += 1;
            assert!(sent < 100_000, "never back-pressured");
        }
        assert!(p.tx_blocked);
        assert_eq!(p.wake().unwrap().events, PollFlags::POLLIN | PollFlags::POLLOUT);
        // Drain: everything queued goes out, none lost.
        let mut got = 0;
        let mut drain = |got: &mut usize| {
            while let Ok(n) = nix::unistd::read(peer.as_raw_fd(), &mut buf) {
                assert_eq!(n, HDR_LEN + 60);
                *got += 1;
            }
        };
        while !p.tx.is_empty() {
            drain(&mut got);
            p.tx_flush();
        }
        drain(&mut got);
        assert_eq!(got, sent, "every frame written once");
        assert!(!p.tx_blocked);
        assert!(got >= sent - 1, "sent {sent}, got {got}");
        assert!(p.tx_slot().is_some());
    }

    #[test]
    fn rx_reads_frames_with_metadata_and_drops_bad_lengths() {
        let (mut p, peer, s) = port();
        let meta = FrameMeta { flags: crate::net::hdr::F_DATA_VALID, ..FrameMeta::PLAIN };
        let mut f = meta.to_bytes12(1).to_vec();
        f.extend_from_slice(&[9u8; 64]);
        nix::unistd::write(&peer, &f).unwrap();
        nix::unistd::write(&peer, &[0u8; 5]).unwrap(); // shorter than a header
        nix::unistd::write(&peer, &vec![0u8; HDR_LEN + SLOT_SIZE + 1]).unwrap(); // longer than a slot
        f[HDR_LEN] = 8;
        nix::unistd::write(&peer, &f).unwrap();
        p.rx_fill();
        assert_eq!(p.rx_pending(), 2);
        let fr = p.rx_peek().unwrap();
        assert_eq!((fr.bytes.len(), fr.bytes[0], fr.meta), (64, 9, meta));
        p.rx_consume();
        assert_eq!(p.rx_peek().unwrap().bytes[0], 8);
        p.rx_consume();
        assert!(p.rx_peek().is_none());
        assert_eq!(s[0].health.snapshot().rx_dropped, 2);
    }

    #[test]
    fn a_dead_queue_fails_once_drops_and_takes_a_new_one() {
        let (mut p, peer, s) = port();
        drop(peer);
        assert!(send(&mut p, 1, 60, FrameMeta::PLAIN));
        p.tx_flush(); // EPIPE: gone
        assert!(p.link.failed());
        // Frames are consumed and dropped, no syscall, counted.
        for _ in 0..3 {
            assert!(send(&mut p, 1, 60, FrameMeta::PLAIN));
            p.tx_flush();
        }
        let h = s[0].health.snapshot();
        assert_eq!((h.failures, h.tx_link_dropped), (1, 4));
        assert_eq!(p.wake().unwrap().fd.as_raw_fd(), s[0].handover.wake_fd_for_test());
        // The watch hands over a new queue: the port uses it.
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_NONBLOCK).unwrap();
        s[0].handover.give(a);
        p.rx_fill();
        assert!(!p.link.failed());
        assert!(send(&mut p, 5, 60, FrameMeta::PLAIN));
        p.tx_flush();
        let mut buf = [0u8; 256];
        assert_eq!(nix::unistd::read(b.as_raw_fd(), &mut buf).unwrap(), HDR_LEN + 60);
        assert_eq!(s[0].health.snapshot().reattached, 1);
    }

    /// Waits (bounded) until the applier's state satisfies `f`.
    fn wait_state(a: &OffloadApplier, f: impl Fn(&ApplyState) -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if f(&a.shared.lock()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        false
    }

    /// A stand-in for TUNSETOFFLOAD while another thread holds RTNL: it
    /// returns only once the test opens the gate.
    static GATE: Mutex<bool> = Mutex::new(false);
    static GATE_CV: Condvar = Condvar::new();
    fn gated_apply(_: BorrowedFd<'_>, _: u32) -> Result<(), Errno> {
        let mut open = GATE.lock().unwrap();
        while !*open {
            open = GATE_CV.wait(open).unwrap();
        }
        Ok(())
    }

    #[test]
    fn set_offloads_never_waits_for_the_kernel_and_accepts_every_flag_set_in_force() {
        let (a, _peer) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let (_shared, mut links, _notify) = port_links::<OwnedFd>(1, "tap test").unwrap();
        let applier = OffloadApplier::spawn_with(a.try_clone().unwrap(), "test", gated_apply).unwrap();
        let mut p = TapPort::new(a, links.remove(0), applier.clone());
        assert!(p.reserve_frames(SLOT_SIZE));
        let csum = OffloadCaps { csum: true, ..OffloadCaps::NONE };

        // The first request: nothing in force yet, the caps are what was asked.
        let t = std::time::Instant::now();
        assert_eq!(p.set_offloads(OffloadCaps::ALL, true), OffloadCaps::ALL);
        assert!(wait_state(&applier, |s| s.in_flight == OffloadCaps::ALL.tun_flags()), "the applier took the request");
        // While the kernel call blocks: the guest turns offloads off. The
        // call returns at once, and the tap may still hand GSO frames.
        assert_eq!(p.set_offloads(csum, false), OffloadCaps::ALL);
        assert_eq!(p.set_offloads(OffloadCaps::NONE, false), OffloadCaps::ALL);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(applier.shared.lock().applies, 0, "no kernel call has returned: nothing blocked on it here");

        *GATE.lock().unwrap() = true;
        GATE_CV.notify_all();
        // The latest request (NONE) wins; the one in between is skipped.
        assert!(wait_state(&applier, |s| s.applies == 2 && s.wanted.is_none() && s.in_flight == 0));
        let st = applier.shared.lock();
        assert_eq!(st.applied, 0);
        assert_ne!(st.last_thread, Some(std::thread::current().id()));
        drop(st);
        // Now only what is in force and asked for.
        assert_eq!(p.set_offloads(csum, false), csum);
        assert!(wait_state(&applier, |s| s.applies == 3 && s.applied == csum.tun_flags()));
        // The last port's drop stops and joins the thread.
        drop(p);
        let shared = applier.shared.clone();
        drop(applier);
        assert!(shared.lock().stop);
        assert_eq!(Arc::strong_count(&shared), 1, "the applier thread is gone");
    }

    /// A real tap (needs CAP_NET_ADMIN; skipped otherwise): TUNSETOFFLOAD
    /// runs on the applier thread, and a dead queue fd is closed there.
    #[test]
    fn tunsetoffload_runs_on_the_applier_thread() {
        let name = format!("vdoff{}", std::process::id() % 100_000);
        let (mut fds, created) = match open_queues(&name, 2) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped: cannot create tap {name}: {e}");
                return;
            }
        };
        assert!(created);
        let applier = OffloadApplier::spawn(fds[0].try_clone().unwrap(), &name).unwrap();
        let (_shared, mut links, _notify) = port_links::<OwnedFd>(2, "tap test").unwrap();
        let mut p1 = TapPort::new(fds.pop().unwrap(), links.pop().unwrap(), applier.clone());
        let mut p0 = TapPort::new(fds.pop().unwrap(), links.pop().unwrap(), applier.clone());
        assert!(p0.reserve_frames(SLOT_SIZE) && p1.reserve_frames(SLOT_SIZE));
        assert_eq!(p0.set_offloads(OffloadCaps::ALL, true), OffloadCaps::ALL);
        assert!(wait_state(&applier, |s| s.applies >= 1 && s.wanted.is_none() && s.in_flight == 0));
        let st = applier.shared.lock();
        assert_eq!(st.applied, OffloadCaps::ALL.tun_flags(), "the kernel took every offload");
        assert_ne!(st.last_thread, Some(std::thread::current().id()));
        drop(st);
        // Once in force, a port asking for less still accepts what is in force.
        let csum = OffloadCaps { csum: true, ..OffloadCaps::NONE };
        assert_eq!(p1.set_offloads(csum, false), OffloadCaps::ALL);
        assert!(wait_state(&applier, |s| s.applied == csum.tun_flags() && s.wanted.is_none() && s.in_flight == 0));
        assert_eq!(p1.set_offloads(csum, false), csum);
        drop((p0, p1));
        drop(applier);
    }
}
