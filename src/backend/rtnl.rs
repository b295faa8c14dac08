//! A minimal rtnetlink client: `RTM_GETLINK` for one interface, by index or
//! by name, answered with what the ports need to know: flags (admin up,
//! carrier), link type, kind, and for a tun/tap its mode, multi-queue flag
//! and attached queue count. Netlink acts in the namespace the socket was
//! created in, so the answer is right even when sysfs shows another one.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFLA_TUN_NUM_QUEUES: u16 = 8;
/// NLA_F_NESTED | NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `IFF_TAP` as IFLA_TUN_TYPE reports it.
const TUN_TYPE_TAP: u8 = 2;

/// A tun/tap device's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunInfo {
    pub tap: bool,
    pub multi_queue: bool,
    pub persist: bool,
    /// Queues attached now.
    pub queues: u32,
}

/// What RTM_GETLINK says about one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `dev_get_flags`: IFF_UP, IFF_RUNNING, IFF_LOWER_UP (carrier), ...
    pub flags: u32,
    /// ARPHRD_*.
    pub hw_type: u16,
    /// IFLA_INFO_KIND: "tun", "veth", "bridge", ... (none for a NIC).
    pub kind: Option<String>,
    pub tun: Option<TunInfo>,
}

impl LinkInfo {
    /// Administratively up with carrier: frames move.
    pub fn link_up(&self) -> bool {
        self.flags & libc::IFF_UP as u32 != 0 && self.flags & libc::IFF_LOWER_UP as u32 != 0
    }

    /// "tap", "tun", "veth", ... or "interface".
    pub fn describe(&self) -> String {
        match (&self.tun, &self.kind) {
            (Some(t), _) => if t.tap { "tap" } else { "tun" }.into(),
            (None, Some(k)) => k.clone(),
            (None, None) => "interface".into(),
        }
    }
}

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
        let v = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, v))
    })
}

fn cstr(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or(&[])).into_owned()
}

/// Parse one RTM_NEWLINK message (header included). `Err` carries the
/// errno of an NLMSG_ERROR reply.
pub fn parse_reply(msg: &[u8]) -> Result<LinkInfo, Errno> {
    if msg.len() < NLMSG_HDRLEN {
        return Err(Errno::EBADMSG);
    }
    let len = (u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize).min(msg.len());
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty == NLMSG_ERROR {
        let e = msg.get(16..20).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(-libc::EBADMSG);
        return Err(Errno::from_raw(-e));
    }
    if ty != RTM_NEWLINK || len < NLMSG_HDRLEN + IFINFOMSG_LEN {
        return Err(Errno::EBADMSG);
    }
    let ifi = &msg[NLMSG_HDRLEN..NLMSG_HDRLEN + IFINFOMSG_LEN];
    let mut info = LinkInfo {
        hw_type: u16::from_ne_bytes([ifi[2], ifi[3]]),
        index: i32::from_ne_bytes(ifi[4..8].try_into().unwrap()) as u32,
        flags: u32::from_ne_bytes(ifi[8..12].try_into().unwrap()),
        ..LinkInfo::default()
    };
    for (t, v) in attrs(&msg[NLMSG_HDRLEN + IFINFOMSG_LEN..len]) {
        match t {
            IFLA_IFNAME => info.name = cstr(v),
            IFLA_LINKINFO => {
                for (t, v) in attrs(v) {
                    match t {
                        IFLA_INFO_KIND => info.kind = Some(cstr(v)),
                        IFLA_INFO_DATA if info.kind.as_deref() == Some("tun") => {
                            let mut tun = TunInfo::default();
                            for (t, v) in attrs(v) {
                                let b = v.first().copied().unwrap_or(0);
                                match t {
                                    IFLA_TUN_TYPE => tun.tap = b == TUN_TYPE_TAP,
                                    IFLA_TUN_PERSIST => tun.persist = b != 0,
                                    IFLA_TUN_MULTI_QUEUE => tun.multi_queue = b != 0,
                                    IFLA_TUN_NUM_QUEUES if v.len() >= 4 => {
                                        tun.queues = u32::from_ne_bytes(v[..4].try_into().unwrap())
                                    }
                                    _ => {}
                                }
                            }
                            info.tun = Some(tun);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The request for interface `index`, or `name` when `index` is 0.
pub fn request(index: u32, name: &str, seq: u32) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    m[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&(index as i32).to_ne_bytes());
    if index == 0 {
        let alen = 4 + name.len() + 1;
        m.extend_from_slice(&(alen as u16).to_ne_bytes());
        m.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        m.extend_from_slice(name.as_bytes());
        m.push(0);
        while m.len() % 4 != 0 {
            m.push(0);
        }
    }
    let n = m.len() as u32;
    m[0..4].copy_from_slice(&n.to_ne_bytes());
    m
}

/// A NETLINK_ROUTE socket in the namespace it was created in.
pub struct Rtnl {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl Rtnl {
    pub fn new() -> Result<Rtnl, Errno> {
        let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
        Ok(Rtnl { fd, buf: vec![0u8; 64 << 10], seq: 0 })
    }

    /// Interface `index` (or `name` when `index` is 0); `None` if there is
    /// no such interface.
    pub fn get(&mut self, index: u32, name: &str) -> Result<Option<LinkInfo>, Errno> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(index, name, self.seq);
        nix::unistd::write(self.fd.as_fd(), &req)?;
        loop {
            // The kernel answers while handling the write: the reply is
            // queued already (no wait).
            let n =
                nix::sys::socket::recv(self.fd.as_raw_fd(), &mut self.buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT)?;
            let msg = &self.buf[..n];
            if msg.len() >= NLMSG_HDRLEN && u32::from_ne_bytes(msg[8..12].try_into().unwrap()) != self.seq {
                continue; // a stale reply
            }
            return match parse_reply(msg) {
                Ok(i) => Ok(Some(i)),
                Err(Errno::ENODEV) => Ok(None),
                Err(e) => Err(e),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_libc() {
        assert_eq!(RTM_GETLINK, libc::RTM_GETLINK);
        assert_eq!(RTM_NEWLINK, libc::RTM_NEWLINK);
        assert_eq!(NLMSG_ERROR as libc::c_int, libc::NLMSG_ERROR);
        assert_eq!(NLM_F_REQUEST as libc::c_int, libc::NLM_F_REQUEST);
        assert_eq!(IFLA_IFNAME, libc::IFLA_IFNAME);
        assert_eq!(IFLA_LINKINFO, libc::IFLA_LINKINFO);
        assert_eq!(std::mem::size_of::<libc::ifinfomsg>(), IFINFOMSG_LEN);
        assert_eq!(std::mem::size_of::<libc::nlmsghdr>(), NLMSG_HDRLEN);
    }

    fn attr(t: u16, v: &[u8]) -> Vec<u8> {
        let mut a = ((4 + v.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&t.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn a_tap_reply_parses() {
        let tun = [
            attr(IFLA_TUN_TYPE, &[2]),
            attr(IFLA_TUN_MULTI_QUEUE, &[1]),
            attr(IFLA_TUN_NUM_QUEUES, &3u32.to_ne_bytes()),
        ]
        .concat();
        let li = [attr(IFLA_INFO_KIND, b"tun\0"), attr(IFLA_INFO_DATA | 0x8000, &tun)].concat();
        let body = [attr(IFLA_IFNAME, b"tap0\0"), attr(IFLA_LINKINFO | 0x8000, &li)].concat();
        let mut m = request(7, "", 5);
        m[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m[NLMSG_HDRLEN + 2..NLMSG_HDRLEN + 4].copy_from_slice(&1u16.to_ne_bytes());
        let flags = (libc::IFF_UP | libc::IFF_LOWER_UP) as u32;
        m[NLMSG_HDRLEN + 8..NLMSG_HDRLEN + 12].copy_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&body);
        let n = m.len() as u32;
        m[0..4].copy_from_slice(&n.to_ne_bytes());
        let i = parse_reply(&m).unwrap();
        assert_eq!((i.index, i.name.as_str(), i.hw_type), (7, "tap0", 1));
        assert!(i.link_up());
        assert_eq!(i.tun, Some(TunInfo { tap: true, multi_queue: true, persist: false, queues: 3 }));
        assert_eq!(i.describe(), "tap");
        // Truncated or junk attributes end the walk, never panic.
        for cut in 0..m.len() {
            let _ = parse_reply(&m[..cut]);
        }
    }

    #[test]
    fn an_error_reply_gives_its_errno() {
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(parse_reply(&m), Err(Errno::ENODEV));
    }

    #[test]
    fn loopback_by_name_and_index() {
        let mut r = Rtnl::new().unwrap();
        let lo = r.get(0, "lo").unwrap().expect("lo");
        assert_eq!(lo.hw_type, libc::ARPHRD_LOOPBACK);
        assert_eq!(r.get(lo.index, "").unwrap().unwrap().name, "lo");
        assert_eq!(r.get(0, "vnt-nosuch0").unwrap(), None);
    }
}
