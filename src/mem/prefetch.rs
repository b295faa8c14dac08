//! Cache-line prefetch hints, for the device's rings and buffers and for
//! the bundled driver's. A prefetch never faults and changes no memory, so
//! any address may be passed; callers pass addresses they are about to use.

/// Ask for the line at `p` for reading.
#[inline(always)]
pub fn line(p: *const u8) {
    hint(p, false);
}

/// Ask for the first two lines of a buffer of `len` bytes at `p` (a small
/// frame and its header; the second only when the buffer reaches it): for
/// writing (`prefetchw`: the line comes exclusive, so a store does not take
/// it shared first and then again to own it) when `write`.
#[inline(always)]
pub fn lines(p: *const u8, len: u32, write: bool) {
    hint(p, write);
    if len > 64 {
        hint(p.wrapping_add(64), write);
    }
}

#[inline(always)]
fn hint(p: *const u8, write: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint that does not access memory
        // architecturally (no fault, whatever the address); SSE is part of
        // x86_64, and a CPU without PREFETCHW runs it as a no-op.
        unsafe {
            if write {
                _mm_prefetch::<_MM_HINT_ET0>(p as *const i8)
            } else {
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, write);
}
