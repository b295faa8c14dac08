//! What the port needs to know about the interface, asked in the calling
//! thread's network namespace: how many queues AF_XDP can bind to (ethtool
//! channels), which XDP programs are attached (rtnetlink), and detaching a
//! netlink-attached program. (Names, indexes and flags: `backend::iface`.)

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::bpf::{XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// Queues that have both an RX and a TX side, which is what an XSK needs:
/// combined channels plus the smaller of the separate RX/TX counts (veth
/// reports only those). `None` when the driver does not report channels.
pub fn channel_queues(name: &str) -> io::Result<Option<u32>> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = &mut ch as *mut EthtoolChannels as *mut libc::c_char;
    // SAFETY: SIOCETHTOOL reads the name and writes one ethtool_channels
    // through ifru_data, which points to `ch` for the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(ch.combined_count + ch.rx_count.min(ch.tx_count)))
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Generic XDP (`xdpgeneric`).
    Skb,
    /// In the driver (`xdpdrv`).
    Driver,
    /// Offloaded to the NIC.
    Hardware,
}

impl AttachMode {
    pub fn flags(self) -> u32 {
        match self {
            AttachMode::Skb => XDP_FLAGS_SKB_MODE,
            AttachMode::Driver => XDP_FLAGS_DRV_MODE,
            AttachMode::Hardware => 1 << 3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Skb => "skb (generic)",
            AttachMode::Driver => "native",
            AttachMode::Hardware => "offloaded",
        }
    }
}

/// What rtnetlink says about a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// Attached XDP programs: (mode, program id).
    pub xdp: Vec<(AttachMode, u32)>,
    pub num_rx_queues: Option<u32>,
    pub num_tx_queues: Option<u32>,
}

// rtnetlink constants (include/uapi/linux/{netlink,rtnetlink,if_link}.h).
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;
const IFLA_XDP: u16 = 43;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;

const NLMSG_HDRLEN: usize = 16;
const IFINFO_LEN: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A request: nlmsghdr + ifinfomsg for `ifindex`, attributes appended.
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, ifindex: u32) -> Msg {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `finish`
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                  // struct ifinfomsg: family, pad, type, index, flags, change
        b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        Msg(b)
    }
    /// Open an attribute; returns its offset for `close`.
    fn open(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        at
    }
    fn close(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self.0.resize(align4(self.0.len()), 0);
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        let at = self.open(ty);
        self.0.extend_from_slice(data);
        self.close(at);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Attributes in `b`: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, payload))
    })
}

fn u32_of(p: &[u8]) -> Option<u32> {
    p.get(..4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
}

/// Parse an RTM_NEWLINK payload (after the nlmsghdr).
fn parse_link(payload: &[u8]) -> LinkInfo {
    let mut info = LinkInfo::default();
    let Some(rest) = payload.get(IFINFO_LEN..) else { return info };
    for (ty, p) in attrs(rest) {
        match ty {
            IFLA_NUM_RX_QUEUES => info.num_rx_queues = u32_of(p),
            IFLA_NUM_TX_QUEUES => info.num_tx_queues = u32_of(p),
            IFLA_XDP => {
                for (xt, xp) in attrs(p) {
                    let mode = match xt {
                        IFLA_XDP_SKB_PROG_ID => AttachMode::Skb,
                        IFLA_XDP_DRV_PROG_ID => AttachMode::Driver,
                        IFLA_XDP_HW_PROG_ID => AttachMode::Hardware,
                        _ => continue,
                    };
                    if let Some(id) = u32_of(xp).filter(|&id| id != 0) {
                        info.xdp.push((mode, id));
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// One request, one answer (a link, or an ack/error).
fn transact(req: Vec<u8>, seq: u32) -> io::Result<Option<LinkInfo>> {
    let sock = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: setsockopt with a timeval of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            size_of::<libc::timeval>() as u32,
        )
    };
    // SAFETY: sockaddr_nl is plain data; zero = the kernel, no groups.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: req and sa are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut result = None;
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut b = &buf[..n as usize];
        while b.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            if len < NLMSG_HDRLEN || len > b.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
            }
            let payload = &b[NLMSG_HDRLEN..len];
            b = &b[align4(len).min(b.len())..];
            if mseq != seq {
                continue;
            }
            match ty {
                NLMSG_ERROR => {
                    let code = payload.get(..4).map(|x| i32::from_ne_bytes([x[0], x[1], x[2], x[3]])).unwrap_or(0);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(result);
                }
                NLMSG_DONE => return Ok(result),
                RTM_NEWLINK => {
                    result = Some(parse_link(payload));
                    // A plain GETLINK (no ACK asked) ends with this message.
                    return Ok(result);
                }
                _ => {}
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no netlink answer"));
        }
    }
}

fn next_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The link's attached XDP programs and queue counts.
pub fn link_info(ifindex: u32) -> io::Result<LinkInfo> {
    let seq = next_seq();
    let req = Msg::new(RTM_GETLINK, NLM_F_REQUEST, seq, ifindex).finish();
    transact(req, seq)?.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no RTM_NEWLINK answer"))
}

/// Set the netlink-attached XDP program of `mode` (`fd` -1: detach). The
/// kernel refuses (EBUSY) when a bpf link holds that mode.
pub fn set_xdp_fd(ifindex: u32, fd: i32, flags: u32) -> io::Result<()> {
    let seq = next_seq();
    let mut m = Msg::new(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifindex);
    let x = m.open(IFLA_XDP | NLA_F_NESTED);
    m.attr(IFLA_XDP_FD, &fd.to_ne_bytes());
    m.attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    m.close(x);
    transact(m.finish(), seq).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setlink_request_nests_fd_and_flags() {
        let mut m = Msg::new(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, 9, 5);
        let x = m.open(IFLA_XDP | NLA_F_NESTED);
        m.attr(IFLA_XDP_FD, &(-1i32).to_ne_bytes());
        m.attr(IFLA_XDP_FLAGS, &2u32.to_ne_bytes());
        m.close(x);
        let b = m.finish();
        assert_eq!(b.len(), 16 + 16 + 4 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize, b.len());
        assert_eq!(i32::from_ne_bytes(b[20..24].try_into().unwrap()), 5, "ifindex");
        let outer: Vec<_> = attrs(&b[32..]).collect();
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].0, IFLA_XDP);
        let inner: Vec<_> = attrs(outer[0].1).collect();
        assert_eq!(inner, vec![(IFLA_XDP_FD, &(-1i32).to_ne_bytes()[..]), (IFLA_XDP_FLAGS, &2u32.to_ne_bytes()[..])]);
    }

    #[test]
    fn link_answers_parse_and_bad_lengths_stop_the_parse() {
        // ifinfomsg, then NUM_RX_QUEUES=4 and IFLA_XDP{ATTACHED=2, SKB_PROG_ID=77}.
        let mut p = vec![0u8; IFINFO_LEN];
        let mut m = Msg(Vec::new());
        m.attr(IFLA_NUM_RX_QUEUES, &4u32.to_ne_bytes());
        let x = m.open(IFLA_XDP | NLA_F_NESTED);
        m.attr(2, &[2u8]);
        m.attr(IFLA_XDP_SKB_PROG_ID, &77u32.to_ne_bytes());
        m.close(x);
        p.extend_from_slice(&m.0);
        let info = parse_link(&p);
        assert_eq!(info.num_rx_queues, Some(4));
        assert_eq!(info.xdp, vec![(AttachMode::Skb, 77)]);
        // A length past the end ends the walk instead of reading out of bounds.
        let mut bad = vec![0u8; IFINFO_LEN];
        bad.extend_from_slice(&200u16.to_ne_bytes());
        bad.extend_from_slice(&IFLA_XDP.to_ne_bytes());
        assert_eq!(parse_link(&bad), LinkInfo::default());
        assert_eq!(parse_link(&[1, 2, 3]), LinkInfo::default());
    }
}
