//! `include/uapi/linux/vduse.h` as of kernel 7.3 (VDUSE API version 1).

use nix::{request_code_none, request_code_read, request_code_readwrite, request_code_write};

pub const VDUSE_BASE: u8 = 0x81;

/// API version 0: one address space, no vq groups.
pub const VDUSE_API_VERSION_0: u64 = 0;
/// API version 1: vq groups and address spaces (ASIDs).
pub const VDUSE_API_VERSION_1: u64 = 1;

/// VDUSE feature bit: the device wants `VDUSE_SET_VQ_READY` messages.
pub const VDUSE_F_QUEUE_READY: u64 = 0;
/// VDUSE feature bit: the device wants `VDUSE_SUSPEND` messages.
pub const VDUSE_F_SUSPEND: u64 = 1;

pub const VDUSE_NAME_MAX: usize = 256;

pub const VDUSE_ACCESS_RO: u8 = 0x1;
pub const VDUSE_ACCESS_WO: u8 = 0x2;
pub const VDUSE_ACCESS_RW: u8 = 0x3;

pub const VDUSE_EVENTFD_DEASSIGN: i32 = -1;
pub const VDUSE_IOVA_CAP_UMEM: u64 = 1 << 0;

pub const VDUSE_REQ_RESULT_OK: u32 = 0x00;
pub const VDUSE_REQ_RESULT_FAILED: u32 = 0x01;

// enum vduse_req_type
pub const VDUSE_GET_VQ_STATE: u32 = 0;
pub const VDUSE_SET_STATUS: u32 = 1;
pub const VDUSE_UPDATE_IOTLB: u32 = 2;
pub const VDUSE_SET_VQ_GROUP_ASID: u32 = 3;
pub const VDUSE_SET_VQ_READY: u32 = 4;
pub const VDUSE_SUSPEND: u32 = 5;

/// Fixed part of `struct vduse_dev_config`; the config space bytes follow
/// it directly in the ioctl argument (flexible array member).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vduse_dev_config {
    pub name: [u8; VDUSE_NAME_MAX],
    pub vendor_id: u32,
    pub device_id: u32,
    pub features: u64,
    pub vq_num: u32,
    pub vq_align: u32,
    pub ngroups: u32,
    pub nas: u32,
    pub reserved: [u32; 11],
    pub config_size: u32,
}

impl Default for vduse_dev_config {
    fn default() -> Self {
        Self {
            name: [0; VDUSE_NAME_MAX],
            vendor_id: 0,
            device_id: 0,
            features: 0,
            vq_num: 0,
            vq_align: 0,
            ngroups: 0,
            nas: 0,
            reserved: [0; 11],
            config_size: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_iotlb_entry {
    pub offset: u64,
    pub start: u64,
    pub last: u64,
    pub perm: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_iotlb_entry_v2 {
    pub offset: u64,
    pub start: u64,
    pub last: u64,
    pub perm: u8,
    pub padding: [u8; 7],
    pub asid: u32,
    pub reserved: [u32; 11],
}

/// Fixed part of `struct vduse_config_data`; `length` bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct vduse_config_data {
    pub offset: u32,
    pub length: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_vq_config {
    pub index: u32,
    pub max_size: u16,
    pub reserved1: u16,
    pub group: u32,
    pub reserved2: [u16; 10],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_vq_state_split {
    pub avail_index: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_vq_state_packed {
    pub last_avail_counter: u16,
    pub last_avail_idx: u16,
    pub last_used_counter: u16,
    pub last_used_idx: u16,
}

/// The split/packed union: both views share the first bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub union vduse_vq_state_union {
    pub split: vduse_vq_state_split,
    pub packed: vduse_vq_state_packed,
}

impl Default for vduse_vq_state_union {
    fn default() -> Self {
        Self { packed: vduse_vq_state_packed::default() }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_vq_group_asid {
    pub group: u32,
    pub asid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct vduse_vq_info {
    pub index: u32,
    pub num: u32,
    pub desc_addr: u64,
    pub driver_addr: u64,
    pub device_addr: u64,
    pub state: vduse_vq_state_union,
    pub ready: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_vq_eventfd {
    pub index: u32,
    pub fd: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_iova_umem {
    pub uaddr: u64,
    pub iova: u64,
    pub size: u64,
    pub asid: u32,
    pub reserved: [u32; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_iova_info {
    pub start: u64,
    pub last: u64,
    pub capability: u64,
    pub asid: u32,
    pub reserved: [u32; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct vduse_vq_state {
    pub index: u32,
    pub state: vduse_vq_state_union,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_dev_status {
    pub status: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_iova_range {
    pub start: u64,
    pub last: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_iova_range_v2 {
    pub start: u64,
    pub last: u64,
    pub asid: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct vduse_vq_ready {
    pub num: u32,
    pub ready: u32,
}

/// Payload union of `struct vduse_dev_request`.
#[repr(C)]
#[derive(Clone, Copy)]
pub union vduse_dev_request_payload {
    pub vq_state: vduse_vq_state,
    pub s: vduse_dev_status,
    pub iova: vduse_iova_range,
    pub iova_v2: vduse_iova_range_v2,
    pub vq_group_asid: vduse_vq_group_asid,
    pub vq_ready: vduse_vq_ready,
    pub padding: [u32; 32],
}

/// Read from `/dev/vduse/$NAME`: one control message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vduse_dev_request {
    pub r#type: u32,
    pub request_id: u32,
    pub reserved: [u32; 4],
    pub payload: vduse_dev_request_payload,
}

impl Default for vduse_dev_request {
    fn default() -> Self {
        Self { r#type: 0, request_id: 0, reserved: [0; 4], payload: vduse_dev_request_payload { padding: [0; 32] } }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union vduse_dev_response_payload {
    pub vq_state: vduse_vq_state,
    pub padding: [u32; 32],
}

/// Written to `/dev/vduse/$NAME`: the answer to one request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct vduse_dev_response {
    pub request_id: u32,
    pub result: u32,
    pub reserved: [u32; 4],
    pub payload: vduse_dev_response_payload,
}

impl Default for vduse_dev_response {
    fn default() -> Self {
        Self { request_id: 0, result: 0, reserved: [0; 4], payload: vduse_dev_response_payload { padding: [0; 32] } }
    }
}

pub const REQUEST_SIZE: usize = std::mem::size_of::<vduse_dev_request>();
pub const RESPONSE_SIZE: usize = std::mem::size_of::<vduse_dev_response>();

macro_rules! ioc {
    (none, $nr:expr) => {
        request_code_none!(VDUSE_BASE, $nr) as u64
    };
    (r, $nr:expr, $t:ty) => {
        request_code_read!(VDUSE_BASE, $nr, std::mem::size_of::<$t>()) as u64
    };
    (w, $nr:expr, $t:ty) => {
        request_code_write!(VDUSE_BASE, $nr, std::mem::size_of::<$t>()) as u64
    };
    (rw, $nr:expr, $t:ty) => {
        request_code_readwrite!(VDUSE_BASE, $nr, std::mem::size_of::<$t>()) as u64
    };
}

// Control device (/dev/vduse/control).
pub const VDUSE_GET_API_VERSION: u64 = ioc!(r, 0x00, u64);
pub const VDUSE_SET_API_VERSION: u64 = ioc!(w, 0x01, u64);
pub const VDUSE_CREATE_DEV: u64 = ioc!(w, 0x02, vduse_dev_config);
pub const VDUSE_DESTROY_DEV: u64 = ioc!(w, 0x03, [u8; VDUSE_NAME_MAX]);
pub const VDUSE_GET_FEATURES: u64 = ioc!(r, 0x04, u64);
pub const VDUSE_SET_FEATURES: u64 = ioc!(w, 0x05, u64);
// Device (/dev/vduse/$NAME).
pub const VDUSE_IOTLB_GET_FD: u64 = ioc!(rw, 0x10, vduse_iotlb_entry);
pub const VDUSE_DEV_GET_FEATURES: u64 = ioc!(r, 0x11, u64);
pub const VDUSE_DEV_SET_CONFIG: u64 = ioc!(w, 0x12, vduse_config_data);
pub const VDUSE_DEV_INJECT_CONFIG_IRQ: u64 = ioc!(none, 0x13);
pub const VDUSE_VQ_SETUP: u64 = ioc!(w, 0x14, vduse_vq_config);
pub const VDUSE_VQ_GET_INFO: u64 = ioc!(rw, 0x15, vduse_vq_info);
pub const VDUSE_VQ_SETUP_KICKFD: u64 = ioc!(w, 0x16, vduse_vq_eventfd);
pub const VDUSE_VQ_INJECT_IRQ: u64 = ioc!(w, 0x17, u32);
pub const VDUSE_IOTLB_REG_UMEM: u64 = ioc!(w, 0x18, vduse_iova_umem);
pub const VDUSE_IOTLB_DEREG_UMEM: u64 = ioc!(w, 0x19, vduse_iova_umem);
pub const VDUSE_IOTLB_GET_INFO: u64 = ioc!(rw, 0x1a, vduse_iova_info);
pub const VDUSE_IOTLB_GET_FD2: u64 = ioc!(rw, 0x1b, vduse_iotlb_entry_v2);

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn struct_sizes_and_alignment_match_kernel_7_3() {
        // (size, align) from the C program over linux-libc-dev 7.3.4.
        assert_eq!((size_of::<vduse_dev_config>(), align_of::<vduse_dev_config>()), (336, 8));
        assert_eq!((size_of::<vduse_iotlb_entry>(), align_of::<vduse_iotlb_entry>()), (32, 8));
        assert_eq!((size_of::<vduse_iotlb_entry_v2>(), align_of::<vduse_iotlb_entry_v2>()), (80, 8));
        assert_eq!((size_of::<vduse_config_data>(), align_of::<vduse_config_data>()), (8, 4));
        assert_eq!((size_of::<vduse_vq_config>(), align_of::<vduse_vq_config>()), (32, 4));
        assert_eq!((size_of::<vduse_vq_state_split>(), align_of::<vduse_vq_state_split>()), (2, 2));
        assert_eq!((size_of::<vduse_vq_state_packed>(), align_of::<vduse_vq_state_packed>()), (8, 2));
        assert_eq!((size_of::<vduse_vq_group_asid>(), align_of::<vduse_vq_group_asid>()), (8, 4));
        assert_eq!((size_of::<vduse_vq_info>(), align_of::<vduse_vq_info>()), (48, 8));
        assert_eq!((size_of::<vduse_vq_eventfd>(), align_of::<vduse_vq_eventfd>()), (8, 4));
        assert_eq!((size_of::<vduse_iova_umem>(), align_of::<vduse_iova_umem>()), (48, 8));
        assert_eq!((size_of::<vduse_iova_info>(), align_of::<vduse_iova_info>()), (48, 8));
        assert_eq!((size_of::<vduse_vq_state>(), align_of::<vduse_vq_state>()), (12, 4));
        assert_eq!((size_of::<vduse_dev_status>(), align_of::<vduse_dev_status>()), (1, 1));
        assert_eq!((size_of::<vduse_iova_range>(), align_of::<vduse_iova_range>()), (16, 8));
        assert_eq!((size_of::<vduse_iova_range_v2>(), align_of::<vduse_iova_range_v2>()), (24, 8));
        assert_eq!((size_of::<vduse_vq_ready>(), align_of::<vduse_vq_ready>()), (8, 4));
        assert_eq!((size_of::<vduse_dev_request>(), align_of::<vduse_dev_request>()), (152, 8));
        assert_eq!((size_of::<vduse_dev_response>(), align_of::<vduse_dev_response>()), (152, 4));
    }

    #[test]
    fn field_offsets_match_kernel_7_3() {
        assert_eq!(offset_of!(vduse_dev_config, vendor_id), 256);
        assert_eq!(offset_of!(vduse_dev_config, device_id), 260);
        assert_eq!(offset_of!(vduse_dev_config, features), 264);
        assert_eq!(offset_of!(vduse_dev_config, vq_num), 272);
        assert_eq!(offset_of!(vduse_dev_config, vq_align), 276);
        assert_eq!(offset_of!(vduse_dev_config, ngroups), 280);
        assert_eq!(offset_of!(vduse_dev_config, nas), 284);
        assert_eq!(offset_of!(vduse_dev_config, reserved), 288);
        assert_eq!(offset_of!(vduse_dev_config, config_size), 332);

        assert_eq!(offset_of!(vduse_iotlb_entry, offset), 0);
        assert_eq!(offset_of!(vduse_iotlb_entry, start), 8);
        assert_eq!(offset_of!(vduse_iotlb_entry, last), 16);
        assert_eq!(offset_of!(vduse_iotlb_entry, perm), 24);

        assert_eq!(offset_of!(vduse_iotlb_entry_v2, perm), 24);
        assert_eq!(offset_of!(vduse_iotlb_entry_v2, padding), 25);
        assert_eq!(offset_of!(vduse_iotlb_entry_v2, asid), 32);
        assert_eq!(offset_of!(vduse_iotlb_entry_v2, reserved), 36);

        assert_eq!(offset_of!(vduse_config_data, length), 4);

        assert_eq!(offset_of!(vduse_vq_config, max_size), 4);
        assert_eq!(offset_of!(vduse_vq_config, reserved1), 6);
        assert_eq!(offset_of!(vduse_vq_config, group), 8);
        assert_eq!(offset_of!(vduse_vq_config, reserved2), 12);

        assert_eq!(offset_of!(vduse_vq_state_packed, last_avail_idx), 2);
        assert_eq!(offset_of!(vduse_vq_state_packed, last_used_counter), 4);
        assert_eq!(offset_of!(vduse_vq_state_packed, last_used_idx), 6);

        assert_eq!(offset_of!(vduse_vq_group_asid, asid), 4);

        assert_eq!(offset_of!(vduse_vq_info, num), 4);
        assert_eq!(offset_of!(vduse_vq_info, desc_addr), 8);
        assert_eq!(offset_of!(vduse_vq_info, driver_addr), 16);
        assert_eq!(offset_of!(vduse_vq_info, device_addr), 24);
        assert_eq!(offset_of!(vduse_vq_info, state), 32);
        assert_eq!(offset_of!(vduse_vq_info, ready), 40);

        assert_eq!(offset_of!(vduse_vq_eventfd, fd), 4);

        assert_eq!(offset_of!(vduse_iova_umem, iova), 8);
        assert_eq!(offset_of!(vduse_iova_umem, size), 16);
        assert_eq!(offset_of!(vduse_iova_umem, asid), 24);
        assert_eq!(offset_of!(vduse_iova_umem, reserved), 28);

        assert_eq!(offset_of!(vduse_iova_info, capability), 16);
        assert_eq!(offset_of!(vduse_iova_info, asid), 24);
        assert_eq!(offset_of!(vduse_iova_info, reserved), 28);

        assert_eq!(offset_of!(vduse_vq_state, state), 4);
        assert_eq!(offset_of!(vduse_iova_range_v2, asid), 16);
        assert_eq!(offset_of!(vduse_iova_range_v2, padding), 20);
        assert_eq!(offset_of!(vduse_vq_ready, ready), 4);

        assert_eq!(offset_of!(vduse_dev_request, request_id), 4);
        assert_eq!(offset_of!(vduse_dev_request, reserved), 8);
        assert_eq!(offset_of!(vduse_dev_request, payload), 24);
        assert_eq!(offset_of!(vduse_dev_response, result), 4);
        assert_eq!(offset_of!(vduse_dev_response, reserved), 8);
        assert_eq!(offset_of!(vduse_dev_response, payload), 24);
    }

    #[test]
    fn ioctl_numbers_match_kernel_7_3() {
        assert_eq!(VDUSE_GET_API_VERSION, 0x8008_8100);
        assert_eq!(VDUSE_SET_API_VERSION, 0x4008_8101);
        assert_eq!(VDUSE_CREATE_DEV, 0x4150_8102);
        assert_eq!(VDUSE_DESTROY_DEV, 0x4100_8103);
        assert_eq!(VDUSE_GET_FEATURES, 0x8008_8104);
        assert_eq!(VDUSE_SET_FEATURES, 0x4008_8105);
        assert_eq!(VDUSE_IOTLB_GET_FD, 0xc020_8110);
        assert_eq!(VDUSE_DEV_GET_FEATURES, 0x8008_8111);
        assert_eq!(VDUSE_DEV_SET_CONFIG, 0x4008_8112);
        assert_eq!(VDUSE_DEV_INJECT_CONFIG_IRQ, 0x8113);
        assert_eq!(VDUSE_VQ_SETUP, 0x4020_8114);
        assert_eq!(VDUSE_VQ_GET_INFO, 0xc030_8115);
        assert_eq!(VDUSE_VQ_SETUP_KICKFD, 0x4008_8116);
        assert_eq!(VDUSE_VQ_INJECT_IRQ, 0x4004_8117);
        assert_eq!(VDUSE_IOTLB_REG_UMEM, 0x4030_8118);
        assert_eq!(VDUSE_IOTLB_DEREG_UMEM, 0x4030_8119);
        assert_eq!(VDUSE_IOTLB_GET_INFO, 0xc030_811a);
        assert_eq!(VDUSE_IOTLB_GET_FD2, 0xc050_811b);
    }
}
