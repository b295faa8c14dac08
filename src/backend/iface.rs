//! Host interfaces: names, the errors of opening a port on one, and the
//! queries a link watch makes (index, name, flags) in the network namespace
//! the interface lives in.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::rtnl::Rtnl;
pub use super::rtnl::{LinkInfo, TunInfo};
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

/// Interface queries in one network namespace: a netlink socket created
/// there (netlink answers for its socket's namespace, not the caller's).
pub struct IfQuery {
    rtnl: RefCell<Rtnl>,
}

impl IfQuery {
    /// In the calling thread's network namespace.
    pub fn new() -> Result<IfQuery, Errno> {
        Ok(IfQuery { rtnl: RefCell::new(Rtnl::new()?) })
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

    /// Interface `name`, `None` if there is none.
    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>, Errno> {
        self.rtnl.borrow_mut().get(0, name)
    }

    /// Interface `index`, `None` if it is gone.
    pub fn link_of(&self, index: u32) -> Result<Option<LinkInfo>, Errno> {
        self.rtnl.borrow_mut().get(index, "")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

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
        let lo = q.link("lo").unwrap().expect("lo exists in every namespace");
        assert_eq!(q.link_of(lo.index).unwrap().map(|l| l.name), Some("lo".into()));
        assert_eq!(lo.hw_type, libc::ARPHRD_LOOPBACK);
        assert_eq!(q.link("no-such-if0").unwrap(), None);
    }

    #[test]
    fn own_namespace_has_an_id() {
        let ns = own_netns().unwrap();
        assert!(netns_id(ns.as_fd()).unwrap() > 0);
    }
}
