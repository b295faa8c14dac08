//! The few raw calls the host ports need that nix does not wrap: ioctls
//! with a `struct ifreq` or an int, socket options with plain-old-data
//! values, `bind` with a `sockaddr_ll`. Every unsafe block of the host
//! ports' setup is here; the fast path uses nix's read/write/send.

use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// Longest interface name (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// A `struct ifreq` naming `name` (checked by the caller: 1..=15 bytes).
pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes().take(IFNAME_MAX)) {
        *d = s as libc::c_char;
    }
    r
}

/// The name in an ifreq the kernel filled in.
pub fn ifreq_name(r: &libc::ifreq) -> String {
    let bytes: Vec<u8> = r.ifr_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `ioctl(fd, req, &mut ifreq)`.
pub fn ioctl_ifreq(fd: BorrowedFd<'_>, req: libc::Ioctl, r: &mut libc::ifreq) -> Result<(), Errno> {
    // SAFETY: every request used with this helper (SIOCGIF*, TUNSETIFF,
    // TUNGETIFF) reads and/or writes one struct ifreq at the pointer,
    // which is valid and exclusively borrowed for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, r as *mut libc::ifreq) };
    Errno::result(rc).map(drop)
}

/// `ioctl(fd, req, &value)` for requests that read one int.
pub fn ioctl_set_int(fd: BorrowedFd<'_>, req: libc::Ioctl, value: libc::c_int) -> Result<(), Errno> {
    // SAFETY: the request (TUNSETVNETHDRSZ, TUNSETSNDBUF) reads one int
    // from the pointer, which stays valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, &value as *const libc::c_int) };
    Errno::result(rc).map(drop)
}

/// `ioctl(fd, req, value)` for requests that take their argument by value
/// (TUNSETOFFLOAD).
pub fn ioctl_set_value(fd: BorrowedFd<'_>, req: libc::Ioctl, value: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: the request (TUNSETOFFLOAD) reads its argument as an integer,
    // not as a pointer; no memory is accessed through it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, value) };
    Errno::result(rc).map(drop)
}

/// `ioctl(fd, req)` that returns a new fd (TUNGETDEVNETNS).
pub fn ioctl_new_fd(fd: BorrowedFd<'_>, req: libc::Ioctl) -> Result<OwnedFd, Errno> {
    // SAFETY: the request takes no argument and returns a new fd or -1.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req) };
    let raw = Errno::result(rc)?;
    // SAFETY: on success the kernel returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `setsockopt` with a plain-old-data value.
pub fn setsockopt<T: Copy>(fd: BorrowedFd<'_>, level: libc::c_int, opt: libc::c_int, value: &T) -> Result<(), Errno> {
    // SAFETY: `value` points to size_of::<T>() readable bytes for the call;
    // the options used (SOL_PACKET ints and request structs) are plain data.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            value as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

/// `getsockopt` of an int.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: libc::c_int, opt: libc::c_int) -> Result<libc::c_int, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of their sizes for the call.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, opt, &mut v as *mut _ as *mut libc::c_void, &mut len) };
    Errno::result(rc).map(|_| v)
}

/// Bind a packet socket to `ifindex` for `protocol` (network byte order).
pub fn bind_packet(fd: BorrowedFd<'_>, ifindex: u32, protocol_be: u16) -> Result<(), Errno> {
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol_be;
    sa.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: sa is a valid sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_names_round_trip_and_are_cut_at_15_bytes() {
        assert_eq!(ifreq_name(&ifreq("tap0")), "tap0");
        assert_eq!(ifreq_name(&ifreq("abcdefghijklmnopq")), "abcdefghijklmno");
    }
}
