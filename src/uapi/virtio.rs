//! Virtio 1.x constants and ring layouts: split (virtio spec 1.3 §2.7) and
//! packed (§2.8).

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Transport-independent feature bit numbers (§6).
pub mod feature {
    pub const INDIRECT_DESC: u32 = 28;
    pub const EVENT_IDX: u32 = 29;
    pub const VERSION_1: u32 = 32;
    pub const ACCESS_PLATFORM: u32 = 33;
    pub const RING_PACKED: u32 = 34;
    pub const IN_ORDER: u32 = 35;
}

pub const VIRTIO_ID_NET: u32 = 1;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// avail.flags: the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: the device does not want kicks.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One split-ring descriptor (16 bytes, little endian in memory).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// One used-ring element.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringUsedElem {
    pub id: u32,
    pub len: u32,
}

/// Bytes of the descriptor table for a queue of `num` entries.
pub const fn desc_table_size(num: u16) -> usize {
    16 * num as usize
}
/// Bytes of the avail ring (flags, idx, ring[num], used_event).
pub const fn avail_ring_size(num: u16) -> usize {
    6 + 2 * num as usize
}
/// Bytes of the used ring (flags, idx, ring[num], avail_event).
pub const fn used_ring_size(num: u16) -> usize {
    6 + 8 * num as usize
}

/// Packed ring (§2.8.1): the descriptor's avail and used bits, compared
/// with the wrap counters.
pub const VRING_PACKED_DESC_F_AVAIL: u16 = 1 << 7;
pub const VRING_PACKED_DESC_F_USED: u16 = 1 << 15;

/// Packed ring event suppression (§2.8.10) `flags` values.
pub const VRING_PACKED_EVENT_FLAG_ENABLE: u16 = 0;
pub const VRING_PACKED_EVENT_FLAG_DISABLE: u16 = 1;
/// Only with EVENT_IDX: notify when the ring passes `off_wrap`.
pub const VRING_PACKED_EVENT_FLAG_DESC: u16 = 2;
/// Bit of `off_wrap` (and of vhost's packed ring bases) holding the wrap counter.
pub const VRING_PACKED_EVENT_F_WRAP_CTR: u16 = 15;

/// One packed-ring descriptor (16 bytes, little endian in memory). Used
/// descriptors have the same layout: `id` and `len` are the device's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedDesc {
    pub addr: u64,
    pub len: u32,
    pub id: u16,
    pub flags: u16,
}

/// Bytes of a packed descriptor ring of `num` entries.
pub const fn packed_ring_size(num: u16) -> usize {
    16 * num as usize
}
/// Bytes of one event suppression structure (`off_wrap`, `flags`).
pub const PACKED_EVENT_SIZE: usize = 4;

/// The event-index test of §2.7.7.2: should a notification be sent when the
/// index moved from `old` to `new` and the other side asked for `event`?
#[inline]
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_config as cfg;
    use virtio_bindings::bindings::virtio_ring as ring;

    #[test]
    fn constants_agree_with_virtio_bindings() {
        assert_eq!(status::DRIVER_OK as u32, cfg::VIRTIO_CONFIG_S_DRIVER_OK);
        assert_eq!(status::FEATURES_OK as u32, cfg::VIRTIO_CONFIG_S_FEATURES_OK);
        assert_eq!(status::DEVICE_NEEDS_RESET as u32, cfg::VIRTIO_CONFIG_S_NEEDS_RESET);
        assert_eq!(feature::VERSION_1, cfg::VIRTIO_F_VERSION_1);
        assert_eq!(feature::ACCESS_PLATFORM, cfg::VIRTIO_F_ACCESS_PLATFORM);
        assert_eq!(feature::RING_PACKED, cfg::VIRTIO_F_RING_PACKED);
        assert_eq!(feature::INDIRECT_DESC, ring::VIRTIO_RING_F_INDIRECT_DESC);
        assert_eq!(feature::EVENT_IDX, ring::VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(VRING_DESC_F_NEXT as u32, ring::VRING_DESC_F_NEXT);
        assert_eq!(VRING_DESC_F_WRITE as u32, ring::VRING_DESC_F_WRITE);
        assert_eq!(VRING_DESC_F_INDIRECT as u32, ring::VRING_DESC_F_INDIRECT);
        assert_eq!(std::mem::size_of::<VringDesc>(), 16);
        assert_eq!(std::mem::size_of::<VringUsedElem>(), 8);
        assert_eq!(VRING_PACKED_DESC_F_AVAIL, 1 << ring::VRING_PACKED_DESC_F_AVAIL);
        assert_eq!(VRING_PACKED_DESC_F_USED, 1 << ring::VRING_PACKED_DESC_F_USED);
        assert_eq!(VRING_PACKED_EVENT_FLAG_ENABLE as u32, ring::VRING_PACKED_EVENT_FLAG_ENABLE);
        assert_eq!(VRING_PACKED_EVENT_FLAG_DISABLE as u32, ring::VRING_PACKED_EVENT_FLAG_DISABLE);
        assert_eq!(VRING_PACKED_EVENT_FLAG_DESC as u32, ring::VRING_PACKED_EVENT_FLAG_DESC);
        assert_eq!(VRING_PACKED_EVENT_F_WRAP_CTR as u32, ring::VRING_PACKED_EVENT_F_WRAP_CTR);
        assert_eq!(std::mem::size_of::<PackedDesc>(), std::mem::size_of::<ring::vring_packed_desc>());
        assert_eq!(std::mem::offset_of!(PackedDesc, id), std::mem::offset_of!(ring::vring_packed_desc, id));
        assert_eq!(std::mem::offset_of!(PackedDesc, flags), std::mem::offset_of!(ring::vring_packed_desc, flags));
        assert_eq!(PACKED_EVENT_SIZE, std::mem::size_of::<ring::vring_packed_desc_event>());
    }

    #[test]
    fn need_event_matches_spec_examples() {
        // Driver asked to be told once idx passes 5.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(5, 10, 0));
        assert!(!vring_need_event(5, 5, 0));
        assert!(!vring_need_event(10, 6, 5));
        // Wrap-around.
        assert!(vring_need_event(0xffff, 1, 0xfffe));
    }
}
