//! Descriptor-chain walking and validation (virtio 1.3 §2.7.5, §2.7.7).
//!
//! A chain is walked once; each descriptor is read once into a local and
//! checked before its buffer is touched. Buffers are translated in the
//! queue's address space with the access the descriptor allows, so a
//! device-readable buffer is never written and nothing outside the address
//! space is ever reached.

use super::split::{from_le, SplitQueue};
use super::{Malformed, QueueError};
use crate::mem::{Access, AddressSpace, ReadGuard, XlateError};
use crate::uapi::virtio::{VringDesc, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// Upper bound on an indirect table, in bytes (one queue's worth at most).
pub const MAX_INDIRECT_LEN: u32 = 16 * 32768;

/// Totals of one walked chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainInfo {
    pub head: u16,
    /// Bytes in device-readable buffers.
    pub readable: u32,
    /// Bytes in device-writable buffers.
    pub writable: u32,
    /// Descriptors visited (an indirect descriptor and its entries count).
    pub descriptors: u32,
}

/// Which buffers a queue's chains may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Device reads only (TX, control-queue command parts).
    DeviceReads,
    /// Device writes only (RX).
    DeviceWrites,
    /// Readable then writable (control queue: command, then ack).
    Both,
}

impl SplitQueue {
    /// Walk the chain starting at `head`, calling `f(host_ptr, len,
    /// writable)` for every host piece of every buffer, in order. On error
    /// nothing past the failing descriptor is visited, and the queue must be
    /// stopped by the caller.
    #[inline]
    pub fn walk_chain<F>(
        &self,
        head: u16,
        dir: Direction,
        space: &AddressSpace,
        guard: &ReadGuard<'_>,
        mut f: F,
    ) -> Result<ChainInfo, QueueError>
    where
        F: FnMut(*mut u8, usize, bool),
    {
        let size = self.size();
        let mut info = ChainInfo { head, ..Default::default() };
        let mut seen_writable = false;
        // (host pointer, entries) of the indirect table once we entered one.
        let mut table: Option<(*const VringDesc, u16)> = None;
        let mut d = self.desc(head);
        loop {
            info.descriptors += 1;
            if info.descriptors > size as u32 + 1 {
                // size buffers plus one indirect descriptor at most.
                return Err(Malformed::ChainTooLong.into());
            }
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                if table.is_some() {
                    return Err(Malformed::NestedIndirect.into());
                }
                if !self.config().indirect {
                    return Err(Malformed::IndirectNotNegotiated.into());
                }
                if d.flags & VRING_DESC_F_NEXT != 0 {
                    return Err(Malformed::IndirectWithNext.into());
                }
                if d.len == 0 || d.len % 16 != 0 || d.len / 16 > size as u32 {
                    return Err(Malformed::BadIndirectLen(d.len).into());
                }
                if d.addr % 8 != 0 {
                    return Err(Malformed::MisalignedRing(d.addr).into());
                }
                let p = space.translate(guard, d.addr, d.len as u64, Access::Read)?;
                if p as usize % std::mem::align_of::<VringDesc>() != 0 {
                    return Err(Malformed::MisalignedHost(d.addr).into());
                }
                let n = (d.len / 16) as u16;
                table = Some((p as *const VringDesc, n));
                d = read_indirect(p as *const VringDesc, 0);
                continue;
            }

            let writable = d.flags & VRING_DESC_F_WRITE != 0;
            match (dir, writable) {
                (Direction::DeviceReads, true) => return Err(Malformed::UnexpectedWritable.into()),
                (Direction::DeviceWrites, false) => return Err(Malformed::UnexpectedReadable.into()),
                _ => {}
            }
            if !writable && seen_writable {
                return Err(Malformed::ReadableAfterWritable.into());
            }
            seen_writable |= writable;
            if d.len > 0 {
                let access = if writable { Access::Write } else { Access::Read };
                visit_buffer(space, guard, d.addr, d.len, access, writable, &mut f)?;
                let total = if writable { &mut info.writable } else { &mut info.readable };
                *total = total.checked_add(d.len).ok_or(Malformed::LengthOverflow)?;
            }
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(info);
            }
            d = match table {
                Some((p, n)) => {
                    if d.next >= n {
                        return Err(Malformed::NextOutOfRange(d.next).into());
                    }
                    read_indirect(p, d.next)
                }
                None => {
                    if d.next >= size {
                        return Err(Malformed::NextOutOfRange(d.next).into());
                    }
                    self.desc(d.next)
                }
            };
        }
    }
}

#[inline]
fn read_indirect(table: *const VringDesc, i: u16) -> VringDesc {
    // SAFETY: callers pass i < entries of a table translated for
    // entries * 16 bytes with read access and checked 8-byte alignment.
    from_le(unsafe { std::ptr::read_volatile(table.add(i as usize)) })
}

/// Hand the host pieces of one buffer to `f`. The common case, one region,
/// costs one table search; spanning or missing regions take the slow path.
#[inline]
fn visit_buffer<F: FnMut(*mut u8, usize, bool)>(
    space: &AddressSpace,
    guard: &ReadGuard<'_>,
    addr: u64,
    len: u32,
    access: Access,
    writable: bool,
    f: &mut F,
) -> Result<(), QueueError> {
    match space.load(guard).translate(addr, len as u64, access) {
        Ok(p) => {
            f(p, len as usize, writable);
            Ok(())
        }
        Err(XlateError::Unmapped { .. }) | Err(XlateError::Discontiguous { .. }) => {
            space.for_each_piece(guard, addr, len as u64, access, |p, n| f(p, n, writable))?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
