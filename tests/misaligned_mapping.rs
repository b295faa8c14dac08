//! Regression tests for a chain_walker fuzz finding: an aligned IOVA can map
//! to a misaligned host address when its region's file offset is not
//! aligned like its IOVA (the kernel hands out what the VMM registered).
//! The device then did an aligned volatile read of a descriptor (or an
//! atomic access to a ring index) through a misaligned pointer: undefined
//! behaviour. Now such a ring or indirect table is malformed and fails the
//! queue, split or packed.

use std::os::fd::AsFd;
use std::sync::Arc;

use vduse_net::driver::DmaMemory;
use vduse_net::mem::{AddressSpace, Qsbr, RegionSource};
use vduse_net::uapi::vduse::VDUSE_ACCESS_RW;
use vduse_net::uapi::virtio::VRING_DESC_F_INDIRECT;
use vduse_net::vduse::{IotlbRegion, VduseError};
use vduse_net::virtq::packed::avail_bits;
use vduse_net::virtq::{Direction, Malformed, PackedQueue, QueueConfig, QueueError, RingFormat, RingPos, SplitQueue};

const RING_IOVA: u64 = 0x1_0000;
/// Page-aligned IOVA whose region starts 4 bytes into its file.
const SKEWED_IOVA: u64 = 0x2_0000;
const SKEW: u64 = 4;
/// Page-aligned IOVA whose region starts 2 bytes into its file: not even
/// 4-aligned in the host (a packed ring's event areas are u32 words).
const SKEWED2_IOVA: u64 = 0x3_0000;

/// Two regions of one memfd: the rings (aligned) and a skewed one.
struct Source(Arc<DmaMemory>);

impl RegionSource for Source {
    fn region(&self, _asid: u32, iova: u64) -> Result<IotlbRegion, VduseError> {
        let (start, offset) = match iova {
            RING_IOVA..=0x1_0fff => (RING_IOVA, 0),
            SKEWED_IOVA..=0x2_0fff => (SKEWED_IOVA, 4096 + SKEW),
            SKEWED2_IOVA..=0x3_0fff => (SKEWED2_IOVA, 2 * 4096 + 2),
            _ => return Err(VduseError::os("IOTLB_GET_FD2", nix::errno::Errno::EINVAL)),
        };
        Ok(IotlbRegion {
            fd: self.0.fd().as_fd().try_clone_to_owned().unwrap(),
            offset,
            start,
            last: start + 4095,
            perm: VDUSE_ACCESS_RW,
        })
    }
}

fn setup() -> (Arc<DmaMemory>, Arc<AddressSpace>, Arc<Qsbr>) {
    let mem = Arc::new(DmaMemory::new("misaligned", 4 * 4096).unwrap());
    let qsbr = Qsbr::new();
    let space = AddressSpace::new(0, qsbr.clone(), Arc::new(Source(mem.clone())));
    (mem, space, qsbr)
}

fn config(desc: u64) -> QueueConfig {
    config_fmt(desc, RingFormat::Split)
}

/// Packed: the driver event area at RING_IOVA + 1024, the device's at
/// RING_IOVA + 2048, both counters starting at slot 0 with wrap 1.
fn config_fmt(desc: u64, format: RingFormat) -> QueueConfig {
    let avail_base = match format {
        RingFormat::Split => 0,
        RingFormat::Packed => RingPos { idx: 0, wrap: true }.encode(),
    };
    QueueConfig {
        index: 0,
        size: 8,
        desc_addr: desc,
        avail_addr: RING_IOVA + 1024,
        used_addr: RING_IOVA + 2048,
        avail_base,
        event_idx: false,
        indirect: true,
        format,
        in_order: false,
    }
}

#[test]
fn indirect_table_at_a_misaligned_host_address_fails_the_chain() {
    let (mem, space, qsbr) = setup();
    // Descriptor 0: an indirect table of one entry at an 8-aligned IOVA
    // that lands 4 bytes off alignment in the host mapping.
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&SKEWED_IOVA.to_le_bytes());
    d[8..12].copy_from_slice(&16u32.to_le_bytes());
    d[12..14].copy_from_slice(&VRING_DESC_F_INDIRECT.to_le_bytes());
    mem.write(0, &d);
    // avail: idx 1, ring[0] = head 0.
    mem.write(1024 + 2, &1u16.to_le_bytes());
    let mut q = SplitQueue::new(config(RING_IOVA));
    let mut reader = qsbr.register();
    let g = reader.read();
    q.refresh(&space, &g).expect("rings are aligned");
    assert_eq!(q.pending().unwrap(), 1);
    let head = q.pop_head().unwrap();
    match q.read_chain(head, Direction::DeviceReads, &space, &g) {
        Err(e) => assert_eq!(e, QueueError::Malformed(Malformed::MisalignedHost(SKEWED_IOVA))),
        Ok(c) => panic!("chain read through a misaligned table: {} descriptors", c.descriptors()),
    }
}

#[test]
fn rings_at_a_misaligned_host_address_are_refused() {
    let (_mem, space, qsbr) = setup();
    let mut reader = qsbr.register();
    let g = reader.read();
    // The descriptor table's IOVA is 16-aligned; its host address is not
    // even 8-aligned.
    let mut q = SplitQueue::new(config(SKEWED_IOVA));
    assert_eq!(q.refresh(&space, &g), Err(QueueError::Malformed(Malformed::MisalignedHost(SKEWED_IOVA))));
    assert!(!q.is_mapped());
    // The same rings from an aligned mapping are fine.
    let mut q = SplitQueue::new(config(RING_IOVA));
    assert_eq!(q.refresh(&space, &g), Ok(()));
}

#[test]
fn packed_indirect_table_at_a_misaligned_host_address_fails_the_chain() {
    let (mem, space, qsbr) = setup();
    // Slot 0, available for wrap 1: an indirect table of one entry at an
    // 8-aligned IOVA that lands 4 bytes off alignment in the host mapping.
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&SKEWED_IOVA.to_le_bytes());
    d[8..12].copy_from_slice(&16u32.to_le_bytes());
    d[14..16].copy_from_slice(&(VRING_DESC_F_INDIRECT | avail_bits(true)).to_le_bytes());
    mem.write(0, &d);
    let mut q = PackedQueue::new(config_fmt(RING_IOVA, RingFormat::Packed));
    let mut reader = qsbr.register();
    let g = reader.read();
    q.refresh(&space, &g).expect("rings are aligned");
    assert_eq!(q.pending().unwrap(), 1);
    let before = q.avail_pos();
    match q.pop_chain(Direction::DeviceReads, &space, &g) {
        Err(e) => assert_eq!(e, QueueError::Malformed(Malformed::MisalignedHost(SKEWED_IOVA))),
        Ok(c) => panic!("chain read through a misaligned table: {} descriptors", c.descriptors()),
    }
    assert_eq!(q.avail_pos(), before, "nothing taken");
}

#[test]
fn packed_rings_at_a_misaligned_host_address_are_refused() {
    let (_mem, space, qsbr) = setup();
    let mut reader = qsbr.register();
    let g = reader.read();
    // The descriptor ring's IOVA is 16-aligned; its host address is not
    // even 8-aligned.
    let mut q = PackedQueue::new(config_fmt(SKEWED_IOVA, RingFormat::Packed));
    assert_eq!(q.refresh(&space, &g), Err(QueueError::Malformed(Malformed::MisalignedHost(SKEWED_IOVA))));
    assert!(!q.is_mapped());
    // An event area (a u32 word) 4-aligned as an IOVA, 2 bytes off in the
    // host: the driver's, then the device's.
    for driver in [true, false] {
        let mut cfg = config_fmt(RING_IOVA, RingFormat::Packed);
        if driver {
            cfg.avail_addr = SKEWED2_IOVA;
        } else {
            cfg.used_addr = SKEWED2_IOVA;
        }
        let mut q = PackedQueue::new(cfg);
        assert_eq!(
            q.refresh(&space, &g),
            Err(QueueError::Malformed(Malformed::MisalignedHost(SKEWED2_IOVA))),
            "driver area: {driver}"
        );
        assert!(!q.is_mapped());
    }
    // The same rings from an aligned mapping are fine.
    let mut q = PackedQueue::new(config_fmt(RING_IOVA, RingFormat::Packed));
    assert_eq!(q.refresh(&space, &g), Ok(()));
}
