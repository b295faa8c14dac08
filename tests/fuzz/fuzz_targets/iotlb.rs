//! IOTLB translation over random region sets: `AddressSpace::translate` and
//! `for_each_piece` (with miss resolution) and the table-level versions,
//! against the regions the "kernel" holds, while regions are mapped,
//! unmapped and remapped with the invalidations the kernel would send.
//!
//! Oracles: every success points at the right bytes of the right file (the
//! memory holds `pattern(file offset)`), writes land where they should and
//! only through writable regions, every failure is the one the region set
//! calls for, a failed `for_each_piece` visits nothing, and the published
//! table only ever holds regions the kernel currently has (no stale
//! mapping survives its invalidation).

#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use vduse_net::mem::{Access, AddressSpace, Qsbr, ReadGuard, XlateError};
use vduse_net_fuzz::{pattern, PatternMemory, Region, Regions};

const MEM_LEN: u64 = 16 * 4096;

fn memory() -> &'static PatternMemory {
    static M: OnceLock<PatternMemory> = OnceLock::new();
    M.get_or_init(|| PatternMemory::new("fuzz-iotlb", MEM_LEN as usize))
}

struct Run {
    src: Arc<Regions>,
    space: Arc<AddressSpace>,
}

fn region(u: &mut Unstructured<'_>, src: &Regions) -> ArbResult<Region> {
    // IOVAs near each other (adjacent and overlapping candidates), near the
    // top of the address space, or anywhere.
    let start = match u.int_in_range(0u8..=5)? {
        0..=3 => u.int_in_range(0u64..=15)? * 0x1000 + if u.ratio(1, 4)? { u.int_in_range(0..=0xfff)? } else { 0 },
        4 => u64::MAX - u.int_in_range(0u64..=0x2fff)?,
        _ => match src.list().last() {
            Some(r) => r.last.wrapping_add(1),
            None => u.arbitrary()?,
        },
    };
    let len = if u.ratio(3, 4)? { u.int_in_range(1u64..=4)? * 0x1000 } else { u.int_in_range(1u64..=0x5000)? };
    let last = start.saturating_add(len - 1);
    let offset = u.int_in_range(0..=MEM_LEN - 1)?;
    let perm = u.int_in_range(0u8..=3)?;
    Ok(Region { asid: 0, start, last, perm, offset, mem: 0 })
}

fn iova(u: &mut Unstructured<'_>, src: &Regions) -> ArbResult<u64> {
    let list = src.list();
    if !list.is_empty() && u.ratio(3, 4)? {
        let r = &list[u.choose_index(list.len())?];
        let d: u64 = u.int_in_range(0..=0x40)?;
        return Ok(match u.int_in_range(0u8..=3)? {
            0 => r.start.wrapping_add(d),
            1 => r.last.wrapping_sub(d),
            2 => r.last.wrapping_add(1 + d),
            _ => r.start.wrapping_sub(1 + d),
        });
    }
    u.arbitrary()
}

fn len(u: &mut Unstructured<'_>) -> ArbResult<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 => u64::MAX - u.int_in_range(0..=2)?,
        2 => u.int_in_range(0x1000..=0x6000)?,
        _ => u.int_in_range(1..=0x200)?,
    })
}

/// Checks `n` bytes at host `p` are those of `r` from `iova` on.
fn check_bytes(r: &Region, iova: u64, p: *mut u8, n: usize) {
    let base = r.offset + (iova - r.start);
    // SAFETY: the library vouched for n bytes at p (that is what is tested);
    // a wrong pointer shows up as a mismatch or a sanitizer report.
    let got = unsafe { std::slice::from_raw_parts(p, n) };
    for (i, &b) in got.iter().enumerate() {
        assert_eq!(b, pattern(base + i as u64), "iova {:#x} byte {i}: wrong place in the file ({r:?})", iova);
    }
}

/// Writes one byte through `p` (IOVA `iova` of `r`) and finds it in the file.
fn check_write(r: &Region, iova: u64, p: *mut u8) {
    let off = (r.offset + (iova - r.start)) as usize;
    let mem = &memory().mem;
    let v = pattern(off as u64) ^ 0x5a;
    // SAFETY: translated for write access, at least one byte.
    unsafe { std::ptr::write_volatile(p, v) };
    let mut b = [0u8];
    mem.read(off, &mut b);
    assert_eq!(b[0], v, "write through iova {iova:#x} did not land at file offset {off:#x}");
    mem.write(off, &[pattern(off as u64)]);
}

fn allows(r: &Region, access: Access) -> bool {
    match access {
        Access::Read => r.allows_read(),
        Access::Write => r.allows_write(),
    }
}

impl Run {
    /// The published table holds only regions the kernel has now, sorted
    /// and disjoint.
    fn check_table(&self, g: &ReadGuard<'_>) {
        let t = self.space.load(g);
        let list = self.src.list();
        let mut prev: Option<u64> = None;
        for (start, last, perm) in t.regions() {
            assert!(start <= last);
            if let Some(p) = prev {
                assert!(start > p, "table regions overlap or are unsorted");
            }
            prev = Some(last);
            assert!(
                list.iter().any(|r| (r.start, r.last, r.perm) == (start, last, perm)),
                "stale mapping [{start:#x}, {last:#x}] perm {perm} survived its invalidation; kernel has {list:?}"
            );
        }
    }

    fn translate(&self, g: &ReadGuard<'_>, iova: u64, len: u64, access: Access, resolve: bool) {
        let got = if resolve {
            self.space.translate(g, iova, len, access)
        } else {
            self.space.load(g).translate(iova, len, access)
        };
        let Some(end) = iova.checked_add(len.saturating_sub(1)) else {
            assert!(matches!(got, Err(XlateError::Overflow { .. })), "{got:?}");
            return;
        };
        // Without resolution only what the table holds counts.
        let in_table = |x: u64| {
            let t = self.space.load(g);
            t.regions().any(|(s, l, _)| s <= x && x <= l)
        };
        let r = self.src.find(0, iova).filter(|_| resolve || in_table(iova));
        match got {
            Ok(p) => {
                let r = r.expect("translated an IOVA the kernel does not map");
                assert!(allows(&r, access), "{access:?} allowed through {r:?}");
                assert!(end <= r.last, "range [{iova:#x}, {end:#x}] runs past {r:?}");
                if len > 0 {
                    check_bytes(&r, iova, p, len as usize);
                    if access == Access::Write {
                        check_write(&r, iova, p);
                    }
                }
            }
            Err(XlateError::Unmapped { iova: x, .. }) => {
                assert!(iova <= x && x <= end, "unmapped {x:#x} outside the range");
                if resolve {
                    assert!(self.src.find(0, x).is_none(), "{x:#x} is mapped by the kernel");
                } else {
                    assert!(!in_table(x));
                }
            }
            Err(XlateError::Permission { iova: x, access: a, .. }) => {
                assert_eq!((x, a), (iova, access));
                let r = r.expect("permission error on an unmapped IOVA");
                assert!(!allows(&r, access));
            }
            Err(XlateError::Discontiguous { .. }) => {
                let r = r.expect("discontiguous at an unmapped IOVA");
                assert!(end > r.last, "range fits in {r:?}");
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    fn pieces(&self, g: &ReadGuard<'_>, iova: u64, len: u64, access: Access, resolve: bool) {
        let mut seen: Vec<(*mut u8, usize)> = Vec::new();
        let got = if resolve {
            self.space.for_each_piece(g, iova, len, access, |p, n| seen.push((p, n)))
        } else {
            self.space.load(g).for_each_piece(iova, len, access, |p, n| seen.push((p, n)))
        };
        if got.is_err() {
            assert!(seen.is_empty(), "a failed for_each_piece visited {} pieces", seen.len());
        }
        if len == 0 {
            assert_eq!(got, Ok(()));
            return;
        }
        let Some(end) = iova.checked_add(len - 1) else {
            assert!(matches!(got, Err(XlateError::Overflow { .. })), "{got:?}");
            return;
        };
        // Walk the kernel's regions over the range: the first region without
        // the permission or the first gap decides.
        let table: Vec<(u64, u64)> = self.space.load(g).regions().map(|(s, l, _)| (s, l)).collect();
        let visible = |x: u64| resolve || table.iter().any(|&(s, l)| s <= x && x <= l);
        let mut at = iova;
        let mut regions = 0;
        let want = loop {
            let Some(r) = self.src.find(0, at).filter(|_| visible(at)) else {
                break Err(XlateError::Unmapped { asid: 0, iova: at });
            };
            regions += 1;
            if !allows(&r, access) {
                break Err(XlateError::Permission { asid: 0, iova: at, access });
            }
            if r.last >= end {
                break Ok(());
            }
            at = r.last + 1;
        };
        match (&got, &want) {
            // One miss is resolved per round, eight rounds at most.
            (Err(XlateError::Unmapped { iova: x, .. }), Ok(()) | Err(XlateError::Permission { .. }))
                if resolve && *x == iova && regions > 7 => {}
            _ => assert_eq!(got, want, "for_each_piece({iova:#x}, {len:#x}, {access:?})"),
        }
        if got.is_ok() {
            let mut at = iova;
            for (p, n) in seen {
                let r = self.src.find(0, at).expect("piece over unmapped IOVA");
                assert!(n >= 1 && at.checked_add(n as u64 - 1).is_some_and(|e| e <= r.last), "piece crosses {r:?}");
                check_bytes(&r, at, p, n.min(4096));
                if access == Access::Write {
                    check_write(&r, at, p);
                }
                // The last piece may end at u64::MAX.
                at = at.wrapping_add(n as u64);
            }
            assert_eq!(at.wrapping_sub(iova), len, "pieces cover the range exactly");
        }
    }
}

fn run(data: &[u8]) -> ArbResult<()> {
    let mut u = Unstructured::new(data);
    let src = Regions::new(vec![memory().mem.clone()]);
    let qsbr = Qsbr::new();
    let space = AddressSpace::new(0, qsbr.clone(), src.clone());
    let run = Run { src: src.clone(), space: space.clone() };
    let mut reader = qsbr.register();
    for _ in 0..u.int_in_range(0..=6)? {
        src.add(region(&mut u, &src)?);
    }
    while !u.is_empty() {
        let op = u.int_in_range(0u8..=9)?;
        let access = if u.arbitrary()? { Access::Read } else { Access::Write };
        match op {
            0..=5 => {
                let (i, l) = (iova(&mut u, &src)?, len(&mut u)?);
                let g = reader.read();
                match op {
                    0 | 1 => run.translate(&g, i, l, access, true),
                    2 => run.translate(&g, i, l, access, false),
                    3 | 4 => run.pieces(&g, i, l, access, true),
                    _ => run.pieces(&g, i, l, access, false),
                }
                run.check_table(&g);
            }
            _ => {
                // Writers run with the reader offline (a poll thread between
                // bursts or asleep), so the grace period ends at once.
                reader.offline();
                match op {
                    6 => {
                        // Map: the kernel adds the region, then UPDATE_IOTLB.
                        let r = region(&mut u, &src)?;
                        let (s, l) = (r.start, r.last);
                        if src.add(r) {
                            space.invalidate(s, l).expect("no reader online");
                        }
                    }
                    7 => {
                        // Unmap a range (maybe several regions, maybe none).
                        let s = iova(&mut u, &src)?;
                        let l = s.saturating_add(len(&mut u)?);
                        src.remove(0, s, l);
                        space.invalidate(s, l).expect("no reader online");
                    }
                    8 => {
                        // Remap in place: same IOVAs, other file offset/perm.
                        let list = src.list();
                        if !list.is_empty() {
                            let mut r = list[u.choose_index(list.len())?].clone();
                            src.remove(0, r.start, r.last);
                            r.offset = u.int_in_range(0..=MEM_LEN - 1)?;
                            r.perm = u.int_in_range(0u8..=3)?;
                            src.add(r.clone());
                            space.invalidate(r.start, r.last).expect("no reader online");
                        }
                    }
                    _ => space.reclaim().expect("no reader online"),
                }
                let g = reader.read();
                run.check_table(&g);
            }
        }
    }
    drop(reader);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
