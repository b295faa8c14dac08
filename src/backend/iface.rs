//! Host interfaces: names, the errors of opening a port on one, and the
//! queries a link watch makes (index, name, flags) in the network namespace
//! the interface lives in.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use super::sys;

/// Why a port on a host interface could not be opened (or reopened).
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("interface name {0:?} is not valid: 1 to 15 bytes, no '/', ':', '%' or whitespace")]
    BadName(String),
    #[error("no interface named {0:?} in this network namespace (create it first, or run vduse-net in the namespace that has it: ip netns exec NS vduse-net ...)")]
    NoSuchInterface(String),
    #[error("{what}: permission denied: needs {cap} (run as root or grant the capability)")]
    Permission { what: String, cap: &'static str },
    #[error("/dev/net/tun not found: module tun not loaded (try: modprobe tun)")]
    NoTun,
    #[error("{name:?} exists and is not a tap device ({kind}): pick another name or delete it")]
    NotATap { name: String, kind: String },
    #[error("tap {name:?} exists without multi_queue, but {pairs} queue pairs need one tap queue each: recreate it with `ip tuntap add {name} mode tap multi_queue vnet_hdr`, or use --queues 1")]
    NotMultiQueue { name: String, pairs: u16 },
    #[error("tap {name:?} is in use by another process ({queues} queue(s) attached): its frames would be split between the two")]
    TapInUse { name: String, queues: usize },
    #[error("{pairs} queue pairs on tap {name:?}: a tap has at most {max} queues")]
    TooManyQueues { name: String, pairs: u16, max: u16 },
    #[error("{name:?} is not an Ethernet interface (link type {kind}): AF_PACKET ports carry Ethernet frames")]
    NotEthernet { name: String, kind: u16 },
    #[error("{op} on {name:?}: {errno}")]
    Os { op: &'static str, name: String, errno: Errno },
    #[error(transparent)]
    AfXdp(Box<super::af_xdp::AfXdpError>),
}

impl From<super::af_xdp::AfXdpError> for PortError {
    fn from(e: super::af_xdp::AfXdpError) -> Self {
        match e {
            super::af_xdp::AfXdpError::Interface(p) => p,
            e => PortError::AfXdp(Box::new(e)),
        }
    }
}

impl PortError {
    pub fn os(op: &'static str, name: &str, errno: Errno) -> Self {
        PortError::Os { op, name: name.to_string(), errno }
    }
}

/// Checks a name the way the kernel does (dev_valid_name), plus ':' and
/// '%' which `ip` would misread.
pub fn check_name(name: &str) -> Result<(), PortError> {
    let ok = !name.is_empty()
        && name.len() <= sys::IFNAME_MAX
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == b'%' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(PortError::BadName(name.to_string()))
    }
}

/// An interface's admin and operational state (`SIOCGIFFLAGS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfFlags(pub u32);

impl IfFlags {
    /// Administratively up and running (carrier present): frames move.
    pub fn link_up(self) -> bool {
        let f = self.0 as libc::c_int;
        f & libc::IFF_UP != 0 && f & libc::IFF_RUNNING != 0
    }
}

/// Interface queries in one network namespace: a datagram socket created
/// there (socket ioctls act in the socket's namespace, not the caller's).
pub struct IfQuery {
    sock: OwnedFd,
}

impl IfQuery {
    /// In the calling thread's network namespace.
    pub fn new() -> Result<IfQuery, Errno> {
        let sock = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        Ok(IfQuery { sock })
    }

    /// In the namespace `ns` (an fd of /proc/PID/ns/net, or from
    /// TUNGETDEVNETNS). A short-lived thread enters it, so the caller's
    /// own namespace never changes.
    pub fn in_netns(ns: OwnedFd) -> Result<IfQuery, Errno> {
        std::thread::Builder::new()
            .name("vduse-netns".into())
            .spawn(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                IfQuery::new()
            })
            .map_err(|_| Errno::EAGAIN)?
            .join()
            .map_err(|_| Errno::EIO)?
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// The index of `name`, `None` if there is no such interface.
    pub fn index(&self, name: &str) -> Result<Option<u32>, Errno> {
        let mut r = sys::ifreq(name);
        match sys::ioctl_ifreq(self.fd(), libc::SIOCGIFINDEX, &mut r) {
            // SAFETY (union read): SIOCGIFINDEX filled ifru_ifindex.
            Ok(()) => Ok(Some(unsafe { r.ifr_ifru.ifru_ifindex } as u32)),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The name of interface `index`, `None` if it is gone.
    pub fn name(&self, index: u32) -> Result<Option<String>, Errno> {
        let mut r = sys::ifreq("");
        r.ifr_ifru.ifru_ifindex = index as libc::c_int;
        match sys::ioctl_ifreq(self.fd(), libc::SIOCGIFNAME, &mut r) {
            Ok(()) => Ok(Some(sys::ifreq_name(&r))),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The flags of `name`, `None` if there is no such interface.
    pub fn flags(&self, name: &str) -> Result<Option<IfFlags>, Errno> {
        let mut r = sys::ifreq(name);
        match sys::ioctl_ifreq(self.fd(), libc::SIOCGIFFLAGS, &mut r) {
            // SAFETY (union read): SIOCGIFFLAGS filled ifru_flags.
            Ok(()) => Ok(Some(IfFlags(unsafe { r.ifr_ifru.ifru_flags } as u16 as u32))),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The flags of interface `index`, `None` if it is gone.
    pub fn flags_of(&self, index: u32) -> Result<Option<IfFlags>, Errno> {
        match self.name(index)? {
            Some(n) => self.flags(&n),
            None => Ok(None),
        }
    }

    /// Hardware type (ARPHRD_*) of `name`.
    pub fn hw_type(&self, name: &str) -> Result<Option<u16>, Errno> {
        let mut r = sys::ifreq(name);
        match sys::ioctl_ifreq(self.fd(), libc::SIOCGIFHWADDR, &mut r) {
            // SAFETY (union read): SIOCGIFHWADDR filled ifru_hwaddr.
            Ok(()) => Ok(Some(unsafe { r.ifr_ifru.ifru_hwaddr.sa_family })),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The inode of a network namespace fd: equal inodes, same namespace.
pub fn netns_id(ns: BorrowedFd<'_>) -> Result<u64, Errno> {
    Ok(nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&ns))?.st_ino)
}

/// The calling thread's network namespace.
pub fn own_netns() -> Result<OwnedFd, Errno> {
    let f =
        std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    Ok(OwnedFd::from(f))
}

/// What sysfs says an interface is, for error messages: "tap", "tun",
/// "veth", "bridge", ... or "interface" when it cannot tell. Reads the
/// sysfs mounted in this mount namespace (which `ip netns exec` remounts).
pub fn describe_kind(name: &str) -> String {
    let base = Path::new("/sys/class/net").join(name);
    if let Ok(f) = std::fs::read_to_string(base.join("tun_flags")) {
        let flags = u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).unwrap_or(0);
        return if flags & libc::IFF_TAP as u32 != 0 { "tap".into() } else { "tun".into() };
    }
    if base.join("bridge").exists() {
        return "bridge".into();
    }
    if let Ok(u) = std::fs::read_to_string(base.join("uevent")) {
        if let Some(t) = u.lines().find_map(|l| l.strip_prefix("DEVTYPE=")) {
            return t.to_string();
        }
    }
    "interface".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernel_rules() {
        for ok in ["tap0", "eth0.100", "a", "abcdefghijklmno", "veth-x_1"] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", ".", "..", "abcdefghijklmnop", "a/b", "a b", "tap%d", "eth0:1", "a\tb"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn loopback_is_found_by_name_and_index() {
        let q = IfQuery::new().unwrap();
        let idx = q.index("lo").unwrap().expect("lo exists in every namespace");
        assert_eq!(q.name(idx).unwrap().as_deref(), Some("lo"));
        assert!(q.flags("lo").unwrap().is_some());
        assert_eq!(q.hw_type("lo").unwrap(), Some(libc::ARPHRD_LOOPBACK));
        assert_eq!(q.index("no-such-if0").unwrap(), None);
        assert_eq!(q.flags("no-such-if0").unwrap(), None);
    }

    #[test]
    fn own_namespace_has_an_id() {
        let ns = own_netns().unwrap();
        assert!(netns_id(ns.as_fd()).unwrap() > 0);
    }
}
