//! The parts of `include/uapi/linux/vhost.h` and `vhost_types.h` that a
//! vhost-vdpa driver needs.

use nix::{request_code_none, request_code_read, request_code_readwrite, request_code_write};

pub const VHOST_VIRTIO: u8 = 0xAF;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vhost_vring_state {
    pub index: u32,
    pub num: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vhost_vring_file {
    pub index: u32,
    pub fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vhost_vring_addr {
    pub index: u32,
    pub flags: u32,
    pub desc_user_addr: u64,
    pub used_user_addr: u64,
    pub avail_user_addr: u64,
    pub log_guest_addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vhost_iotlb_msg {
    pub iova: u64,
    pub size: u64,
    pub uaddr: u64,
    pub perm: u8,
    pub r#type: u8,
}

/// Written to the vhost-vdpa fd; `asid` is honoured with
/// `VHOST_BACKEND_F_IOTLB_ASID`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vhost_msg_v2 {
    pub r#type: u32,
    pub asid: u32,
    pub iotlb: vhost_iotlb_msg,
    /// The kernel's union pads the message to 64 bytes of payload.
    pub padding: [u8; 32],
}

/// Fixed part of `struct vhost_vdpa_config`; `len` bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vhost_vdpa_config {
    pub off: u32,
    pub len: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vhost_vdpa_iova_range {
    pub first: u64,
    pub last: u64,
}

pub const VHOST_IOTLB_MSG_V2: u32 = 0x2;
pub const VHOST_IOTLB_MISS: u8 = 1;
pub const VHOST_IOTLB_UPDATE: u8 = 2;
pub const VHOST_IOTLB_INVALIDATE: u8 = 3;
pub const VHOST_IOTLB_ACCESS_FAIL: u8 = 4;
pub const VHOST_IOTLB_BATCH_BEGIN: u8 = 5;
pub const VHOST_IOTLB_BATCH_END: u8 = 6;

pub const VHOST_ACCESS_RO: u8 = 0x1;
pub const VHOST_ACCESS_WO: u8 = 0x2;
pub const VHOST_ACCESS_RW: u8 = 0x3;

// Backend feature bit numbers.
pub const VHOST_BACKEND_F_IOTLB_MSG_V2: u64 = 0x1;
pub const VHOST_BACKEND_F_IOTLB_BATCH: u64 = 0x2;
pub const VHOST_BACKEND_F_IOTLB_ASID: u64 = 0x3;
pub const VHOST_BACKEND_F_SUSPEND: u64 = 0x4;
pub const VHOST_BACKEND_F_RESUME: u64 = 0x5;

macro_rules! ioc {
    (none, $nr:expr) => {
        request_code_none!(VHOST_VIRTIO, $nr) as u64
    };
    (r, $nr:expr, $t:ty) => {
        request_code_read!(VHOST_VIRTIO, $nr, std::mem::size_of::<$t>()) as u64
    };
    (w, $nr:expr, $t:ty) => {
        request_code_write!(VHOST_VIRTIO, $nr, std::mem::size_of::<$t>()) as u64
    };
    (rw, $nr:expr, $t:ty) => {
        request_code_readwrite!(VHOST_VIRTIO, $nr, std::mem::size_of::<$t>()) as u64
    };
}

pub const VHOST_GET_FEATURES: u64 = ioc!(r, 0x00, u64);
pub const VHOST_SET_FEATURES: u64 = ioc!(w, 0x00, u64);
pub const VHOST_SET_OWNER: u64 = ioc!(none, 0x01);
pub const VHOST_RESET_OWNER: u64 = ioc!(none, 0x02);
pub const VHOST_SET_VRING_NUM: u64 = ioc!(w, 0x10, vhost_vring_state);
pub const VHOST_SET_VRING_ADDR: u64 = ioc!(w, 0x11, vhost_vring_addr);
pub const VHOST_SET_VRING_BASE: u64 = ioc!(w, 0x12, vhost_vring_state);
pub const VHOST_GET_VRING_BASE: u64 = ioc!(rw, 0x12, vhost_vring_state);
pub const VHOST_SET_VRING_KICK: u64 = ioc!(w, 0x20, vhost_vring_file);
pub const VHOST_SET_VRING_CALL: u64 = ioc!(w, 0x21, vhost_vring_file);
pub const VHOST_SET_BACKEND_FEATURES: u64 = ioc!(w, 0x25, u64);
pub const VHOST_GET_BACKEND_FEATURES: u64 = ioc!(r, 0x26, u64);
pub const VHOST_VDPA_GET_DEVICE_ID: u64 = ioc!(r, 0x70, u32);
pub const VHOST_VDPA_GET_STATUS: u64 = ioc!(r, 0x71, u8);
pub const VHOST_VDPA_SET_STATUS: u64 = ioc!(w, 0x72, u8);
pub const VHOST_VDPA_GET_CONFIG: u64 = ioc!(r, 0x73, vhost_vdpa_config);
pub const VHOST_VDPA_SET_CONFIG: u64 = ioc!(w, 0x74, vhost_vdpa_config);
pub const VHOST_VDPA_SET_VRING_ENABLE: u64 = ioc!(w, 0x75, vhost_vring_state);
pub const VHOST_VDPA_GET_VRING_NUM: u64 = ioc!(r, 0x76, u16);
pub const VHOST_VDPA_SET_CONFIG_CALL: u64 = ioc!(w, 0x77, i32);
pub const VHOST_VDPA_GET_IOVA_RANGE: u64 = ioc!(r, 0x78, vhost_vdpa_iova_range);
pub const VHOST_VDPA_GET_CONFIG_SIZE: u64 = ioc!(r, 0x79, u32);
pub const VHOST_VDPA_GET_AS_NUM: u64 = ioc!(r, 0x7A, u32);
pub const VHOST_VDPA_GET_VRING_GROUP: u64 = ioc!(rw, 0x7B, vhost_vring_state);
pub const VHOST_VDPA_SET_GROUP_ASID: u64 = ioc!(w, 0x7C, vhost_vring_state);
pub const VHOST_VDPA_SUSPEND: u64 = ioc!(none, 0x7D);
pub const VHOST_VDPA_RESUME: u64 = ioc!(none, 0x7E);
pub const VHOST_VDPA_GET_VQS_COUNT: u64 = ioc!(r, 0x80, u32);
pub const VHOST_VDPA_GET_GROUP_NUM: u64 = ioc!(r, 0x81, u32);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_kernel_7_3() {
        assert_eq!((size_of::<vhost_vring_state>(), align_of::<vhost_vring_state>()), (8, 4));
        assert_eq!((size_of::<vhost_vring_file>(), align_of::<vhost_vring_file>()), (8, 4));
        assert_eq!((size_of::<vhost_vring_addr>(), align_of::<vhost_vring_addr>()), (40, 8));
        assert_eq!(offset_of!(vhost_vring_addr, flags), 4);
        assert_eq!(offset_of!(vhost_vring_addr, desc_user_addr), 8);
        assert_eq!(offset_of!(vhost_vring_addr, used_user_addr), 16);
        assert_eq!(offset_of!(vhost_vring_addr, avail_user_addr), 24);
        assert_eq!(offset_of!(vhost_vring_addr, log_guest_addr), 32);
        assert_eq!((size_of::<vhost_iotlb_msg>(), align_of::<vhost_iotlb_msg>()), (32, 8));
        assert_eq!(offset_of!(vhost_iotlb_msg, size), 8);
        assert_eq!(offset_of!(vhost_iotlb_msg, uaddr), 16);
        assert_eq!(offset_of!(vhost_iotlb_msg, perm), 24);
        assert_eq!(offset_of!(vhost_iotlb_msg, r#type), 25);
        assert_eq!((size_of::<vhost_msg_v2>(), align_of::<vhost_msg_v2>()), (72, 8));
        assert_eq!(offset_of!(vhost_msg_v2, asid), 4);
        assert_eq!(offset_of!(vhost_msg_v2, iotlb), 8);
        assert_eq!((size_of::<vhost_vdpa_config>(), align_of::<vhost_vdpa_config>()), (8, 4));
        assert_eq!(size_of::<vhost_vdpa_iova_range>(), 16);
    }

    #[test]
    fn ioctl_numbers_match_kernel_7_3() {
        assert_eq!(VHOST_GET_FEATURES, 0x8008_af00);
        assert_eq!(VHOST_SET_FEATURES, 0x4008_af00);
        assert_eq!(VHOST_SET_OWNER, 0xaf01);
        assert_eq!(VHOST_RESET_OWNER, 0xaf02);
        assert_eq!(VHOST_SET_VRING_NUM, 0x4008_af10);
        assert_eq!(VHOST_SET_VRING_ADDR, 0x4028_af11);
        assert_eq!(VHOST_SET_VRING_BASE, 0x4008_af12);
        assert_eq!(VHOST_GET_VRING_BASE, 0xc008_af12);
        assert_eq!(VHOST_SET_VRING_KICK, 0x4008_af20);
        assert_eq!(VHOST_SET_VRING_CALL, 0x4008_af21);
        assert_eq!(VHOST_SET_BACKEND_FEATURES, 0x4008_af25);
        assert_eq!(VHOST_GET_BACKEND_FEATURES, 0x8008_af26);
        assert_eq!(VHOST_VDPA_GET_DEVICE_ID, 0x8004_af70);
        assert_eq!(VHOST_VDPA_GET_STATUS, 0x8001_af71);
        assert_eq!(VHOST_VDPA_SET_STATUS, 0x4001_af72);
        assert_eq!(VHOST_VDPA_GET_CONFIG, 0x8008_af73);
        assert_eq!(VHOST_VDPA_SET_CONFIG, 0x4008_af74);
        assert_eq!(VHOST_VDPA_SET_VRING_ENABLE, 0x4008_af75);
        assert_eq!(VHOST_VDPA_GET_VRING_NUM, 0x8002_af76);
        assert_eq!(VHOST_VDPA_SET_CONFIG_CALL, 0x4004_af77);
        assert_eq!(VHOST_VDPA_GET_IOVA_RANGE, 0x8010_af78);
        assert_eq!(VHOST_VDPA_GET_CONFIG_SIZE, 0x8004_af79);
        assert_eq!(VHOST_VDPA_GET_AS_NUM, 0x8004_af7a);
        assert_eq!(VHOST_VDPA_GET_VRING_GROUP, 0xc008_af7b);
        assert_eq!(VHOST_VDPA_SET_GROUP_ASID, 0x4008_af7c);
        assert_eq!(VHOST_VDPA_SUSPEND, 0xaf7d);
        assert_eq!(VHOST_VDPA_RESUME, 0xaf7e);
        assert_eq!(VHOST_VDPA_GET_VQS_COUNT, 0x8004_af80);
        assert_eq!(VHOST_VDPA_GET_GROUP_NUM, 0x8004_af81);
    }
}
