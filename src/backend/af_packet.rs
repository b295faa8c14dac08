//! AF_PACKET port: one packet socket per queue pair on a host interface,
//! with mmapped rings (PACKET_MMAP): a TPACKET_V3 receive ring the kernel
//! fills a block at a time and a transmit ring of fixed-size frames, both
//! read and written without a syscall per frame (one `send` per TX burst
//! asks the kernel to transmit what was queued).
//!
//! Socket options: `PACKET_VNET_HDR` (a virtio-net header before each frame,
//! so offload metadata passes through), `PACKET_QDISC_BYPASS` (TX straight
//! to the driver: the device is the qdisc), `PACKET_IGNORE_OUTGOING` (the
//! host's own transmissions on the interface are not the device's
//! traffic), `PACKET_LOSS` (a frame the kernel refuses is skipped, not
//! retried forever), `PACKET_FANOUT` with `PACKET_FANOUT_HASH` when there
//! are several pairs (each flow goes to one pair), and a promiscuous
//! membership on the interface while the device runs (the driver's MAC is
//! not the interface's; a NIC would filter its frames out).
//!
//! Receive latency: the kernel hands a V3 block over when it is full or
//! after `RETIRE_TOV_MS` rounded up to a jiffy; at low rates the last frame
//! of a burst waits up to that long (4 ms at HZ=250). That is TPACKET_V3's
//! trade: no per-frame status, batches of frames per block.
//!
//! Frames the kernel hands up with a partial checksum (sent by the host
//! itself, e.g. over a veth) get their checksum finished here, since the
//! device offers no receive offloads yet. Frames larger than a slot (GRO on
//! a NIC, TSO of a veth peer) are dropped and counted, with one log line
//! saying how to turn those off.
//!
//! Lifetime: an interface that is deleted (or moved to another network
//! namespace) takes the sockets' binding with it: the link goes down; when
//! an Ethernet interface of the same name is back in this namespace, new
//! sockets are bound to it and the link comes up.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use memmap2::{MmapOptions, MmapRaw};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{socket, AddressFamily, MsgFlags, SockFlag, SockType};

use super::host::HostPorts;
use super::iface::{self, IfQuery, PortError};
use super::link::{self, Attach, Monitor, PortLink, Probe};
use super::meta::{FrameMeta, VNET_HDR_LEN};
use super::packet_ring::{RxFrame, RxRing, TxRing};
use super::{sys, Port, PortFrame, PortWake, SLOT_SIZE};
use crate::net::hdr::F_DATA_VALID;
use crate::net::offload::OffloadCaps;

/// Receive ring: 64 blocks of 32 KiB (20 full-size or about 220 minimum-size
/// frames each). The kernel hands a block over when the next frame does not
/// fit or when its retire timer fires; small blocks fill (and so move) even
/// when only a ring's worth of frames is in flight.
const RX_BLOCK_SIZE: usize = 32 << 10;
const RX_BLOCKS: usize = 64;
/// A block is handed over after this long even if not full (rounded up to
/// a jiffy: 4 ms at HZ=250).
const RETIRE_TOV_MS: u32 = 1;
/// Transmit ring: 512 frames of one page.
const TX_FRAME_SIZE: usize = 4096;
const TX_FRAMES: usize = 512;
const TX_BLOCK_SIZE: usize = 64 << 10;

const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
const ETH_P_8021Q: u16 = 0x8100;

fn is_gone(e: Errno) -> bool {
    matches!(e, Errno::ENXIO | Errno::ENODEV | Errno::EBADFD)
}

/// One packet socket with its rings.
pub struct PacketSocket {
    rx: RxRing,
    tx: TxRing,
    // Fields drop in order: the rings (raw pointers) above the mapping,
    // the mapping before the socket.
    _map: MmapRaw,
    fd: OwnedFd,
}

fn setopt<T: Copy>(
    fd: BorrowedFd<'_>,
    name: &str,
    opt: libc::c_int,
    what: &'static str,
    v: &T,
) -> Result<(), PortError> {
    sys::setsockopt(fd, libc::SOL_PACKET, opt, v).map_err(|e| PortError::os(what, name, e))
}

/// Options for [`open_sockets`].
#[derive(Clone, Copy, Debug)]
pub struct PacketOptions {
    /// Promiscuous membership on the interface while the sockets live.
    pub promisc: bool,
}

impl Default for PacketOptions {
    fn default() -> Self {
        PacketOptions { promisc: true }
    }
}

/// Look `name` up and check it can carry the device's frames.
fn find(q: &IfQuery, name: &str) -> Result<u32, PortError> {
    iface::check_name(name)?;
    let l = q
        .link(name)
        .map_err(|e| PortError::os("RTM_GETLINK", name, e))?
        .ok_or_else(|| PortError::NoSuchInterface(name.into()))?;
    if l.hw_type != libc::ARPHRD_ETHER {
        return Err(PortError::NotEthernet { name: name.into(), kind: l.hw_type });
    }
    Ok(l.index)
}

fn open_socket(name: &str, ifindex: u32, opts: PacketOptions) -> Result<PacketSocket, PortError> {
    // Protocol 0: nothing is received until bind, after the rings exist.
    let fd = socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| match e {
            Errno::EPERM | Errno::EACCES => {
                PortError::Permission { what: format!("opening a packet socket for {name}"), cap: "CAP_NET_RAW" }
            }
            e => PortError::os("socket(AF_PACKET)", name, e),
        })?;
    let s = fd.as_fd();
    setopt(s, name, libc::PACKET_VERSION, "PACKET_VERSION", &(libc::tpacket_versions::TPACKET_V3 as libc::c_int))?;
    setopt(s, name, libc::PACKET_VNET_HDR, "PACKET_VNET_HDR", &1 as &libc::c_int)?;
    setopt(s, name, libc::PACKET_LOSS, "PACKET_LOSS", &1 as &libc::c_int)?;
    setopt(s, name, libc::PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS", &1 as &libc::c_int)?;
    if let Err(e) = sys::setsockopt(s, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &(1 as libc::c_int)) {
        // Before 4.20: outgoing frames are filtered by their packet type.
        log::debug!("{name}: PACKET_IGNORE_OUTGOING: {e}");
    }
    let rx_req = libc::tpacket_req3 {
        tp_block_size: RX_BLOCK_SIZE as u32,
        tp_block_nr: RX_BLOCKS as u32,
        tp_frame_size: 2048,
        tp_frame_nr: (RX_BLOCK_SIZE / 2048 * RX_BLOCKS) as u32,
        tp_retire_blk_tov: RETIRE_TOV_MS,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    setopt(s, name, libc::PACKET_RX_RING, "PACKET_RX_RING", &rx_req)?;
    let tx_req = libc::tpacket_req3 {
        tp_block_size: TX_BLOCK_SIZE as u32,
        tp_block_nr: (TX_FRAMES * TX_FRAME_SIZE / TX_BLOCK_SIZE) as u32,
        tp_frame_size: TX_FRAME_SIZE as u32,
        tp_frame_nr: TX_FRAMES as u32,
        tp_retire_blk_tov: 0,
        tp_sizeof_priv: 0,
        tp_feature_req_word: 0,
    };
    setopt(s, name, libc::PACKET_TX_RING, "PACKET_TX_RING", &tx_req)?;
    let rx_len = RX_BLOCK_SIZE * RX_BLOCKS;
    let tx_len = TX_FRAME_SIZE * TX_FRAMES;
    // One mapping: the receive ring, then the transmit ring.
    let map = MmapOptions::new()
        .len(rx_len + tx_len)
        .map_raw(&fd)
        .map_err(|e| PortError::os("mmap", name, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    let base = map.as_mut_ptr();
    // SAFETY: the mapping holds rx_len + tx_len bytes laid out as the two
    // rings just configured; it lives in the same PacketSocket as the
    // rings and is dropped after them; only this socket's port uses it.
    let (rx, tx) = unsafe {
        (RxRing::new(base, RX_BLOCK_SIZE, RX_BLOCKS), TxRing::new(base.add(rx_len), TX_FRAME_SIZE, TX_FRAMES))
    };
    sys::bind_packet(s, ifindex, ETH_P_ALL_BE).map_err(|e| match e {
        Errno::ENODEV | Errno::ENXIO => PortError::NoSuchInterface(name.into()),
        e => PortError::os("bind", name, e),
    })?;
    if opts.promisc {
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setopt(s, name, libc::PACKET_ADD_MEMBERSHIP, "PACKET_ADD_MEMBERSHIP", &mreq)?;
    }
    Ok(PacketSocket { rx, tx, _map: map, fd })
}

/// One socket per pair on `name`, spread by PACKET_FANOUT (hash) when
/// there are several. All or nothing: on error every socket is closed.
pub fn open_sockets(name: &str, pairs: u16, opts: PacketOptions) -> Result<(Vec<PacketSocket>, u32), PortError> {
    let q = IfQuery::new().map_err(|e| PortError::os("socket", name, e))?;
    let ifindex = find(&q, name)?;
    let mut socks = Vec::with_capacity(pairs as usize);
    let mut group = 0u32;
    for i in 0..pairs {
        // Promiscuous membership once; the kernel counts it per socket.
        let s = open_socket(name, ifindex, PacketOptions { promisc: opts.promisc && i == 0 })?;
        if pairs > 1 {
            let arg = if i == 0 {
                // The kernel picks a group id no one else uses.
                (libc::PACKET_FANOUT_HASH | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16
            } else {
                group | (libc::PACKET_FANOUT_HASH << 16)
            };
            setopt(s.fd.as_fd(), name, libc::PACKET_FANOUT, "PACKET_FANOUT", &arg)?;
            if i == 0 {
                let v = sys::getsockopt_int(s.fd.as_fd(), libc::SOL_PACKET, libc::PACKET_FANOUT)
                    .map_err(|e| PortError::os("getsockopt(PACKET_FANOUT)", name, e))?;
                group = v as u32 & 0xffff;
            }
        }
        socks.push(s);
    }
    log::info!(
        "af-packet {name} (ifindex {ifindex}): {pairs} socket(s){}",
        if pairs > 1 { format!(", fanout group {group}") } else { String::new() }
    );
    Ok((socks, ifindex))
}

/// The frame `rx_peek` returns: where it is in the ring and what it needs.
#[derive(Clone, Copy)]
struct Ready {
    frame: RxFrame,
    data: *const u8,
    len: usize,
    meta: FrameMeta,
}

pub struct PacketPort {
    sock: PacketSocket,
    link: PortLink<PacketSocket>,
    cur: Option<Ready>,
    /// Frames queued in the TX ring since the last `send`.
    unsent: usize,
    /// `send` said EAGAIN/ENOBUFS: retry, and wake on POLLOUT.
    tx_blocked: bool,
    scratch: Box<[u8]>,
    name: String,
    oversize_logged: bool,
}

// SAFETY: `cur` points into the port's own ring; the port moves to its poll
// thread as a whole and is used there only.
unsafe impl Send for PacketPort {}

impl PacketPort {
    fn new(sock: PacketSocket, link: PortLink<PacketSocket>, name: &str) -> PacketPort {
        PacketPort {
            sock,
            link,
            cur: None,
            unsent: 0,
            tx_blocked: false,
            scratch: vec![0u8; SLOT_SIZE].into_boxed_slice(),
            name: name.into(),
            oversize_logged: false,
        }
    }

    #[inline]
    fn take_new(&mut self) {
        if let Some(s) = self.link.take_new() {
            self.cur = None;
            self.unsent = 0;
            self.tx_blocked = false;
            self.sock = s;
        }
    }

    /// Check the ring's next frame and make it ready for `rx_peek`,
    /// dropping (and counting) frames the driver cannot take.
    fn prepare(&mut self) {
        while self.cur.is_none() {
            let Some(f) = self.sock.rx.current() else { return };
            match self.check(f) {
                Some(r) => self.cur = Some(r),
                None => {
                    self.link.count(|h| &h.rx_dropped, 1);
                    self.sock.rx.advance(f);
                }
            }
        }
    }

    /// What frame `f` is, or `None` to drop it.
    fn check(&mut self, f: RxFrame) -> Option<Ready> {
        if f.pkttype() == libc::PACKET_OUTGOING {
            return None;
        }
        let (mac, snap, len) = (f.mac() as usize, f.snaplen() as usize, f.len() as usize);
        // The virtio-net header sits right before the frame; all of it
        // must lie in the block.
        if mac < super::packet_ring::HDR3_ALIGNED + 20 + VNET_HDR_LEN + 4 || mac + snap > f.room {
            return None;
        }
        if snap != len || len < 14 || len + 4 > SLOT_SIZE {
            if len > SLOT_SIZE && !self.oversize_logged {
                self.oversize_logged = true;
                log::warn!(
                    "af-packet {}: dropped a {len}-byte frame (larger than {SLOT_SIZE}): the interface hands up \
                     merged frames; turn that off (a NIC: ethtool -K {} gro off lro off; a veth: ethtool -K PEER tso off gso off)",
                    self.name,
                    self.name
                );
            }
            return None;
        }
        let mut h = [0u8; VNET_HDR_LEN];
        // SAFETY: [mac - 10, mac + snap) lies inside the user-owned block
        // (checked above); nothing else references it.
        unsafe { std::ptr::copy_nonoverlapping(f.hdr.add(mac - VNET_HDR_LEN), h.as_mut_ptr(), VNET_HDR_LEN) };
        let mut meta = FrameMeta::parse(&h);
        let (mut start, mut n) = (mac, len);
        if f.status() & libc::TP_STATUS_VLAN_VALID != 0 {
            // The kernel took the 802.1Q tag out: put it back in front of
            // the EtherType, moving the addresses 4 bytes down over the
            // virtio-net header (already copied).
            let tpid = if f.status() & libc::TP_STATUS_VLAN_TPID_VALID != 0 { f.vlan_tpid() } else { ETH_P_8021Q };
            // SAFETY: [mac - 4, mac + 12) is inside the block (mac >= 4 +
            // header sizes, checked); copy handles the overlap.
            unsafe {
                let p = f.hdr.add(mac);
                std::ptr::copy(p, p.sub(4), 12);
                std::ptr::copy_nonoverlapping(tpid.to_be_bytes().as_ptr(), p.add(8), 2);
                std::ptr::copy_nonoverlapping(f.vlan_tci().to_be_bytes().as_ptr(), p.add(10), 2);
            }
            start -= 4;
            n += 4;
            if meta.needs_csum() {
                meta.csum_start = meta.csum_start.wrapping_add(4);
            }
        }
        if meta.is_gso() {
            return None;
        }
        if meta.needs_csum() {
            // SAFETY: [start, start + n) is inside the user-owned block.
            let bytes = unsafe { std::slice::from_raw_parts_mut(f.hdr.add(start), n) };
            if crate::net::offload::csum::complete(bytes, meta.csum_start as usize, meta.csum_offset as usize).is_err()
            {
                return None;
            }
            meta = FrameMeta { flags: F_DATA_VALID, ..FrameMeta::PLAIN };
        }
        // SAFETY: inside the block (checked).
        let data = unsafe { f.hdr.add(start) } as *const u8;
        Some(Ready { frame: f, data, len: n, meta })
    }

    fn send(&mut self) {
        match nix::sys::socket::send(self.sock.fd.as_raw_fd(), &[], MsgFlags::MSG_DONTWAIT) {
            Ok(_) => {
                self.unsent = 0;
                self.tx_blocked = false;
            }
            Err(Errno::EAGAIN) | Err(Errno::ENOBUFS) | Err(Errno::EINTR) => self.tx_blocked = true,
            Err(Errno::ENETDOWN) => {
                // Down: the requests stay queued; they go when it is up.
                self.unsent = 0;
            }
            Err(e) if is_gone(e) => {
                self.unsent = 0;
                self.link.fail("send", e);
            }
            Err(_) => {
                self.unsent = 0;
                self.link.count(|h| &h.tx_errors, 1);
            }
        }
    }
}

impl Port for PacketPort {
    #[inline]
    fn tx_slot(&mut self) -> Option<&mut [u8]> {
        if self.link.failed() || self.link.down() {
            return Some(&mut self.scratch);
        }
        self.sock.tx.slot().map(|s| &mut s[VNET_HDR_LEN..VNET_HDR_LEN + SLOT_SIZE])
    }

    #[inline]
    fn tx_commit(&mut self, len: usize, meta: FrameMeta) {
        if self.link.failed() || self.link.down() {
            self.link.count(|h| &h.tx_link_dropped, 1);
            return;
        }
        if let Some(s) = self.sock.tx.slot() {
            s[..VNET_HDR_LEN].copy_from_slice(&meta.to_bytes());
            self.sock.tx.commit(VNET_HDR_LEN + len.min(SLOT_SIZE));
            self.unsent += 1;
        }
    }

    fn tx_flush(&mut self) {
        self.take_new();
        if self.unsent > 0 || self.tx_blocked {
            self.send();
        }
    }

    fn rx_fill(&mut self) {
        self.take_new();
        self.prepare();
    }

    #[inline]
    fn rx_peek(&mut self) -> Option<PortFrame<'_>> {
        self.prepare();
        let r = self.cur?;
        // SAFETY: the frame lies in a block the kernel handed over and that
        // is released only after rx_consume; &mut self keeps it borrowed.
        let bytes = unsafe { std::slice::from_raw_parts(r.data, r.len) };
        Some(PortFrame { bytes, meta: r.meta })
    }

    #[inline]
    fn rx_consume(&mut self) {
        if let Some(r) = self.cur.take() {
            self.sock.rx.advance(r.frame);
        }
    }

    #[inline]
    fn rx_flush(&mut self) {}

    fn rx_pending(&self) -> usize {
        if self.cur.is_some() {
            self.sock.rx.left().max(1) as usize
        } else {
            0
        }
    }

    fn offloads(&self) -> bool {
        // PACKET_VNET_HDR: the kernel finishes checksums and segments.
        true
    }

    fn set_offloads(&mut self, _accept: OffloadCaps, _gso: bool) -> OffloadCaps {
        // A packet socket cannot be told what to hand over: it gives partial
        // checksums (frames sent on this host) and whatever GSO fits a ring
        // frame. The dataplane finishes what the driver does not take.
        OffloadCaps::ALL
    }

    fn wake(&self) -> Option<PortWake<'_>> {
        if self.link.failed() {
            return Some(PortWake { fd: self.link.handover_fd(), events: PollFlags::POLLIN });
        }
        let mut events = PollFlags::empty();
        if self.cur.is_none() {
            events |= PollFlags::POLLIN;
        }
        if self.tx_blocked {
            events |= PollFlags::POLLOUT;
        }
        (!events.is_empty()).then(|| PortWake { fd: self.sock.fd.as_fd(), events })
    }

    fn stats(&self) -> Option<std::sync::Arc<dyn crate::ops::PortStats>> {
        Some(self.link.stats("af-packet"))
    }

    fn arm_rx_wakeup(&mut self) -> bool {
        // Level-triggered socket: nothing to arm.
        false
    }

    fn disarm_rx_wakeup(&mut self) {
        // A socket error (the interface went down or away) makes poll()
        // return at once until it is read; read it so an idle thread can
        // sleep. One syscall per wake-up, none per frame.
        let _ = sys::getsockopt_int(self.sock.fd.as_fd(), libc::SOL_SOCKET, libc::SO_ERROR);
    }
}

/// The link watch's view of the interface.
pub struct PacketAttach {
    name: String,
    ifindex: u32,
    q: IfQuery,
    opts: PacketOptions,
}

impl Attach for PacketAttach {
    type Res = PacketSocket;

    fn probe(&mut self) -> Probe {
        match self.q.link_of(self.ifindex) {
            Ok(Some(l)) if l.link_up() => Probe::Up,
            Ok(Some(_)) => Probe::Down,
            Ok(None) => Probe::Gone,
            Err(_) => Probe::Down,
        }
    }

    fn is_back(&mut self) -> bool {
        find(&self.q, &self.name).is_ok()
    }

    fn reopen(&mut self, pairs: usize) -> Result<Vec<PacketSocket>, PortError> {
        let (socks, idx) = open_sockets(&self.name, pairs as u16, self.opts)?;
        self.ifindex = idx;
        Ok(socks)
    }
}

/// `pairs` ports on interface `name` and the device's link watch.
pub fn open(name: &str, pairs: u16, opts: PacketOptions) -> Result<HostPorts, PortError> {
    let (socks, ifindex) = open_sockets(name, pairs, opts)?;
    let q = IfQuery::new().map_err(|e| PortError::os("socket", name, e))?;
    let (shared, links, notify) = link::port_links::<PacketSocket>(pairs, &format!("af-packet {name}"))
        .map_err(|e| PortError::os("eventfd", name, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    let ports: Vec<Box<dyn Port>> =
        socks.into_iter().zip(links).map(|(s, l)| Box::new(PacketPort::new(s, l, name)) as Box<dyn Port>).collect();
    let mut attach = PacketAttach { name: name.into(), ifindex, q, opts };
    let up = attach.probe() == Probe::Up;
    let watch = Monitor::new(attach, name, shared, notify, up)
        .spawn()
        .map_err(|e| PortError::os("thread", name, Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    Ok(HostPorts { ports, watch })
}
