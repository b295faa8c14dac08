//! Kernel ABI only: `#[repr(C)]` mirrors of the uAPI headers, ioctl numbers
//! and constants. No behaviour lives here.
//!
//! The expected sizes, offsets and ioctl numbers in the tests were computed
//! once with a C program against the kernel 7.3 headers (Debian
//! `linux-libc-dev` 7.3.4) and written in by hand.

pub mod vduse;
pub mod vhost_vdpa;
pub mod virtio;
