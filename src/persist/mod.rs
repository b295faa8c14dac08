//! The state log: what a restarted vduse-net needs to take over a device
//! whose previous process died (crash, `kill -9`) or stepped aside
//! (`--keep-device`, an upgrade).
//!
//! One file per device, `DIR/NAME.state`, where DIR is `--state-dir`, else
//! `$RUNTIME_DIRECTORY`, else `/run/vduse-net` ([`state_dir`]). The file is
//! mapped shared into the process, so writing it is a store to memory, never
//! a syscall. An exclusive `flock` keeps two processes off one log (the
//! kernel's one-opener rule on `/dev/vduse/NAME` does the same for the
//! device).
//!
//! Layout (little endian):
//!
//! | offset | what |
//! |---|---|
//! | 0 | magic `VDNETLOG`, format version (u32), vq count (u32), control capacity (u32) |
//! | 64 | one position word per vq, 64 bytes apart ([`positions`]) |
//! | after | two control slots A and B: generation (u64), length (u64), checksum (u64), then the record ([`record`]) |
//!
//! **Torn writes.** The previous process may die between any two stores.
//! - A position word is one aligned 64-bit store: old or new, never half.
//!   It is written after the burst's used entries were published, so it
//!   never claims more than the driver can see. It may lag by the last
//!   burst; for the split ring the restore therefore starts from the
//!   driver-visible `used.idx` in guest memory and only cross-checks the
//!   log (a gap larger than the queue size is a mismatch); for the packed
//!   ring it checks that the descriptor at the logged position was not
//!   completed already (else the log lagged and the queue cannot resume).
//! - The control record alternates between two slots. A write invalidates
//!   the older slot (generation 0), fills it, and sets its generation last;
//!   the checksum covers generation, length and bytes. A crash mid-write
//!   leaves that slot invalid and the other one, one change older, valid;
//!   the change being written is the one whose control message was not
//!   answered yet, and the kernel queues that message again for the next
//!   process, which applies it on top of the restored state (every message
//!   is idempotent on its own result). The record is written before a
//!   change becomes visible to the driver: before the reply, before a
//!   control-queue command's used entry is published, and before the
//!   dataplane starts at DRIVER_OK.
//!
//! **Memory ordering.** Within the writing process, Release stores (the
//! position word; a slot's generation) keep the stores before them from
//! being moved after them, so the log's contents at any instant of a crash
//! are a prefix of program order. The reader is a later process that
//! opened the file after the writer exited (the flock and the device's
//! one-opener rule guarantee it): the writer's stores reached the shared
//! page (a process dying does not lose executed stores to a `MAP_SHARED`
//! mapping), and the kernel's exit and open paths order them before the
//! reader's loads. So Acquire loads in the reader are enough. A machine
//! crash loses the log with the device (the directory is a tmpfs).

pub mod fault;
pub mod positions;
pub mod record;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use memmap2::MmapMut;
use nix::fcntl::{Flock, FlockArg};

pub use positions::{Position, PositionSlot, POSITION_STRIDE};
pub use record::{ControlRecord, DecodeError, QueueRecord};

/// `VDNETLOG`.
pub const MAGIC: [u8; 8] = *b"VDNETLOG";
/// Bumped on any change of the layout or the record encoding.
pub const FORMAT_VERSION: u32 = 1;
/// Room for one control record (far above a real one: a full MAC table
/// and an RSS table are a few KiB).
pub const CONTROL_CAPACITY: usize = 64 << 10;

const HEADER_LEN: usize = 64;
const SLOT_HEADER: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("state log {path}: {op}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("state log {0} is in use by another process")]
    Locked(PathBuf),
    #[error("state log {0} is not a vduse-net state log")]
    BadMagic(PathBuf),
    #[error("state log {path} has format version {found}; this binary reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("state log {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("control record of {0} bytes exceeds the log's capacity")]
    TooLarge(usize),
}

/// Where state logs live by default: `$RUNTIME_DIRECTORY`, else
/// `/run/vduse-net` (as for the stats sockets).
pub fn state_dir() -> PathBuf {
    crate::ops::paths::runtime_dir()
}

/// The log file of device `name` in `dir`.
pub fn path_for(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.state"))
}

struct WriterState {
    /// Generation of the newest valid slot (0: none).
    gen: u64,
    /// The bytes of that slot, to skip unchanged writes.
    last: Vec<u8>,
}

/// An open, locked, mapped state log.
pub struct StateLog {
    path: PathBuf,
    name: String,
    nvqs: u32,
    ctrl_cap: usize,
    /// Start of the mapping (from `map.as_mut_ptr()`); every access after
    /// setup goes through it.
    base: *mut u8,
    len: usize,
    _map: MmapMut,
    writer: Mutex<WriterState>,
    _lock: Flock<File>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io { op, path: path.to_path_buf(), source }
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn file_len(nvqs: u32, cap: usize) -> usize {
    HEADER_LEN + nvqs as usize * POSITION_STRIDE + 2 * slot_len(cap)
}

fn slot_len(cap: usize) -> usize {
    (SLOT_HEADER + cap).next_multiple_of(64)
}

impl StateLog {
    /// Start a fresh log for a device with `nvqs` queues (replacing any
    /// old file of that name).
    pub fn create(dir: &Path, name: &str, nvqs: u32) -> Result<StateLog, LogError> {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let path = path_for(dir, name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("create", &path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| LogError::Locked(path.clone()))?;
        let len = file_len(nvqs, CONTROL_CAPACITY);
        // Truncate to zero first, so no byte of an older log survives.
        lock.set_len(0).map_err(io("truncate", &path))?;
        lock.set_len(len as u64).map_err(io("resize", &path))?;
        // SAFETY: the file is ours (0600, locked against other vduse-net
        // processes) and keeps its length while mapped; see `map_file`.
        let mut map = unsafe { map_file(&lock, &path)? };
        map[..8].copy_from_slice(&MAGIC);
        map[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        map[12..16].copy_from_slice(&nvqs.to_le_bytes());
        map[16..20].copy_from_slice(&(CONTROL_CAPACITY as u32).to_le_bytes());
        Ok(StateLog {
            path,
            name: name.into(),
            nvqs,
            ctrl_cap: CONTROL_CAPACITY,
            base: map.as_mut_ptr(),
            len: map.len(),
            _map: map,
            writer: Mutex::new(WriterState { gen: 0, last: Vec::new() }),
            _lock: lock,
        })
    }

    /// Open the log an earlier process left. `Ok(None)` when there is none.
    pub fn open(dir: &Path, name: &str) -> Result<Option<StateLog>, LogError> {
        let path = path_for(dir, name);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| LogError::Locked(path.clone()))?;
        let size = lock.metadata().map_err(io("stat", &path))?.len();
        if size < HEADER_LEN as u64 {
            return Err(LogError::BadMagic(path));
        }
        // SAFETY: as in `create`.
        let mut map = unsafe { map_file(&lock, &path)? };
        if map[..8] != MAGIC {
            return Err(LogError::BadMagic(path));
        }
        let le32 = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes"));
        let found = le32(8);
        if found != FORMAT_VERSION {
            return Err(LogError::Version { path, found });
        }
        let (nvqs, cap) = (le32(12), le32(16) as usize);
        if nvqs as usize > 1024 || cap > 16 << 20 || file_len(nvqs, cap) as u64 != size {
            let why = format!("{nvqs} vqs and capacity {cap} do not match the file size {size}");
            return Err(LogError::Corrupt { path, why });
        }
        let log = StateLog {
            path,
            name: name.into(),
            nvqs,
            ctrl_cap: cap,
            base: map.as_mut_ptr(),
            len: map.len(),
            _map: map,
            writer: Mutex::new(WriterState { gen: 0, last: Vec::new() }),
            _lock: lock,
        };
        if let Some((gen, bytes)) = log.newest_slot() {
            *crate::vduse::model::lock(&log.writer) = WriterState { gen, last: bytes };
        }
        Ok(Some(log))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nvqs(&self) -> u32 {
        self.nvqs
    }

    fn slot_base(&self, i: usize) -> usize {
        HEADER_LEN + self.nvqs as usize * POSITION_STRIDE + i * slot_len(self.ctrl_cap)
    }

    /// The atomic word at byte `off` of the mapping.
    fn atomic(&self, off: usize) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= self.len, "log word {off} outside the mapping");
        // SAFETY: in bounds and 8-aligned (checked; the mapping is
        // page-aligned); the mapping lives as long as `self`; AtomicU64 has
        // u64's layout; in this process the word is only accessed
        // atomically, and no other process writes it while we hold the lock.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    pub(crate) fn word(&self, vq: u32) -> &AtomicU64 {
        self.atomic(HEADER_LEN + vq as usize * POSITION_STRIDE)
    }

    /// The logged position of `vq`, if any.
    pub fn position(&self, vq: u32) -> Option<Position> {
        (vq < self.nvqs).then(|| positions::load(self.word(vq))).flatten()
    }

    /// Set the position of a queue no thread serves yet (slow path, before
    /// it hands the queue over).
    pub fn set_position(&self, vq: u32, pos: Option<Position>) {
        if vq < self.nvqs {
            self.word(vq).store(pos.map_or(0, Position::pack), Ordering::Release);
        }
    }

    /// Forget every position (reset: the next DRIVER_OK starts afresh).
    pub fn clear_positions(&self) {
        (0..self.nvqs).for_each(|vq| self.set_position(vq, None));
    }

    /// The valid slot with the highest generation: (generation, bytes).
    fn newest_slot(&self) -> Option<(u64, Vec<u8>)> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        for i in 0..2 {
            let base = self.slot_base(i);
            let gen = self.atomic(base).load(Ordering::Acquire);
            let len = self.atomic(base + 8).load(Ordering::Relaxed);
            let sum = self.atomic(base + 16).load(Ordering::Relaxed);
            if gen == 0 || len > self.ctrl_cap as u64 {
                continue;
            }
            let start = base + SLOT_HEADER;
            // SAFETY: len <= ctrl_cap (checked), so the range lies in this
            // slot; slot bytes are written only under the writer lock, which
            // every caller of this function holds (or is `open`, before the
            // log is shared), so nothing writes them while the slice lives.
            let bytes = unsafe { std::slice::from_raw_parts(self.base.add(start), len as usize) };
            if fnv1a(&[&gen.to_le_bytes(), &len.to_le_bytes(), bytes]) != sum {
                continue;
            }
            if best.as_ref().map_or(true, |(g, _)| gen > *g) {
                best = Some((gen, bytes.to_vec()));
            }
        }
        best
    }

    /// The newest control record. `Ok(None)`: none was written (or both
    /// slots are torn, which one crash cannot do).
    pub fn read_control(&self) -> Result<Option<ControlRecord>, LogError> {
        let _w = crate::vduse::model::lock(&self.writer);
        match self.newest_slot() {
            None => Ok(None),
            Some((_, b)) => ControlRecord::decode(&b)
                .map(Some)
                .map_err(|e| LogError::Corrupt { path: self.path.clone(), why: e.to_string() }),
        }
    }

    /// Write `rec` as the newest record (nothing when unchanged). On
    /// `TooLarge` both slots are invalidated: no record is better than a
    /// stale one.
    pub fn write_control(&self, rec: &ControlRecord) -> Result<(), LogError> {
        let bytes = rec.encode();
        let mut w = crate::vduse::model::lock(&self.writer);
        if w.gen != 0 && w.last == bytes {
            return Ok(());
        }
        if bytes.len() > self.ctrl_cap {
            for i in 0..2 {
                self.atomic(self.slot_base(i)).store(0, Ordering::Release);
            }
            w.gen = 0;
            return Err(LogError::TooLarge(bytes.len()));
        }
        let gen = w.gen + 1;
        let base = self.slot_base((gen % 2) as usize);
        let genw = self.atomic(base);
        // Invalidate first: from here until the generation store below the
        // slot reads as empty, and the other slot holds the previous record.
        genw.store(0, Ordering::Release);
        let len = bytes.len() as u64;
        self.atomic(base + 8).store(len, Ordering::Relaxed);
        self.atomic(base + 16).store(fnv1a(&[&gen.to_le_bytes(), &len.to_le_bytes(), &bytes]), Ordering::Relaxed);
        // SAFETY: [base + SLOT_HEADER, + len) lies inside this slot (len <=
        // ctrl_cap, checked above) and so inside the mapping; only this
        // thread writes control slots (the writer lock is held) and no
        // reference to these bytes exists meanwhile (readers copy under the
        // same lock).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(base + SLOT_HEADER), bytes.len());
        }
        // Release: the bytes, length and checksum above are in place before
        // the slot becomes valid.
        genw.store(gen, Ordering::Release);
        *w = WriterState { gen, last: bytes };
        Ok(())
    }

    /// Delete the file (the device was destroyed: nothing to come back to).
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("removing state log {}: {e}", self.path.display());
        }
    }
}

// SAFETY: `base` points into `_map`, owned by the log and alive as long as
// it; shared access goes through atomics (positions, slot headers) or under
// the writer lock (slot bytes).
unsafe impl Send for StateLog {}
// SAFETY: as for Send.
unsafe impl Sync for StateLog {}

/// Map the whole file shared.
///
/// # Safety
/// The file must not shrink while mapped (a store past its end would
/// fault): it is ours, mode 0600 in a root-owned directory, and locked
/// against other vduse-net processes.
unsafe fn map_file(file: &File, path: &Path) -> Result<MmapMut, LogError> {
    // SAFETY: the caller's contract above.
    unsafe { MmapMut::map_mut(file) }.map_err(io("mmap", path))
}
