//! Quiescent-state-based reclamation for the poll threads.
//!
//! Poll threads read translation tables with no lock and no atomic
//! read-modify-write. Between bursts each one announces a quiescent state
//! (a Release store of a counter); before sleeping it goes offline. A
//! writer that retired a table calls [`Qsbr::synchronize`], which returns
//! once every online reader has passed a quiescent state since the call
//! began, i.e. no reader can still hold a pointer into the old table. Only
//! then is the old table (and the mappings only it held) dropped, so a
//! region is never unmapped under a poll thread, and the slow path can
//! reply to UPDATE_IOTLB knowing no thread still uses the old mapping.
//!
//! Ordering, the whole protocol in four lines:
//! - writer: publish the new table (Release swap), `fence(SeqCst)`, then
//!   read each reader's state and wait until it changes.
//! - reader: store its new state (Release), `fence(SeqCst)`, then load the
//!   current table (Acquire) in its next read-side section.
//!
//! The two SeqCst fences make this the store-buffering pattern: either the
//! writer sees the reader's new state (and then waits for the one after,
//! which comes only after the reader's next section ended), or the reader's
//! next load sees the new table. Without the reader's fence, its next load
//! may be satisfied before its state store is visible, so the writer can see
//! the store, free the old table, and the reader still follow the pointer it
//! loaded early. The loom model at the end of this file checks exactly this
//! (`RUSTFLAGS="--cfg loom" cargo test --release --lib mem::qsbr`). One fence
//! per burst: [`Reader::quiescent`] is called between bursts, never per chain.

// Under loom only the atomics and fences are modelled: the mutex guards a
// plain Vec and is never held across an atomic operation, so std's is fine.
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(not(loom))]
use std::time::Instant;

use crossbeam::utils::CachePadded;

/// Bit 0 of a reader's state: online (may hold table pointers).
const ONLINE: u64 = 1;

#[derive(Debug)]
struct ReaderState {
    /// `counter << 1 | online`. Written only by the owning reader; padded so
    /// two readers never share a cache line.
    state: CachePadded<AtomicU64>,
}

impl ReaderState {
    fn new() -> Self {
        ReaderState { state: CachePadded::new(AtomicU64::new(0)) }
    }
}

/// The set of registered readers.
#[derive(Debug)]
pub struct Qsbr {
    readers: Mutex<Vec<Arc<ReaderState>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("a reader did not pass a quiescent state within {0:?}")]
pub struct SyncTimeout(pub Duration);

impl Qsbr {
    pub fn new() -> Arc<Self> {
        Arc::new(Qsbr { readers: Mutex::new(Vec::new()) })
    }

    /// Register a reader. It starts offline.
    pub fn register(self: &Arc<Self>) -> Reader {
        let state = Arc::new(ReaderState::new());
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).push(state.clone());
        Reader { domain: self.clone(), state, counter: 0, online: false }
    }

    /// Wait until every reader that is online now has passed a quiescent
    /// state (or gone offline). The caller must not be inside a read-side
    /// section itself. Bounded by `timeout` so a wedged thread cannot hang
    /// the slow path forever.
    pub fn synchronize(&self, timeout: Duration) -> Result<(), SyncTimeout> {
        // Order the caller's publication of the new pointer before reading
        // reader states: a reader that we see offline, or whose counter we
        // see move, will load the new pointer when it next reads (it fences
        // after going online, see `Reader::online`).
        fence(Ordering::SeqCst);
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        #[cfg(not(loom))]
        let start = Instant::now();
        for r in readers {
            // Acquire pairs with the reader's Release store of its state:
            // once we see it change, its earlier reads are finished.
            let seen = r.state.load(Ordering::Acquire);
            if seen & ONLINE == 0 {
                continue;
            }
            let mut spins = 0u32;
            while r.state.load(Ordering::Acquire) == seen {
                #[cfg(not(loom))]
                if start.elapsed() > timeout {
                    return Err(SyncTimeout(timeout));
                }
                #[cfg(loom)]
                {
                    let _ = (timeout, &mut spins);
                    loom::thread::yield_now();
                }
                #[cfg(not(loom))]
                if spins < 64 {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
        Ok(())
    }

    fn unregister(&self, state: &Arc<ReaderState>) {
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).retain(|r| !Arc::ptr_eq(r, state));
    }
}

/// One reader thread's handle. Table pointers obtained through a
/// [`ReadGuard`] stay valid until the next [`Reader::quiescent`] or
/// [`Reader::offline`], which take `&mut self` so the borrow checker ends
/// the guard first.
#[derive(Debug)]
pub struct Reader {
    domain: Arc<Qsbr>,
    state: Arc<ReaderState>,
    counter: u64,
    online: bool,
}

/// Proof that the reader is online; table references borrow from it.
#[derive(Debug)]
pub struct ReadGuard<'r> {
    _reader: &'r Reader,
}

impl Reader {
    /// Enter the read side (after start-up or a sleep).
    pub fn online(&mut self) {
        if self.online {
            return;
        }
        self.online = true;
        self.state.state.store((self.counter << 1) | ONLINE, Ordering::Relaxed);
        // Make the online state visible before any table load, so a writer
        // either waits for us or we see its new pointer.
        fence(Ordering::SeqCst);
    }

    /// Leave the read side before blocking.
    pub fn offline(&mut self) {
        if !self.online {
            return;
        }
        self.online = false;
        self.counter += 1;
        // Release: our reads of old tables happen-before a writer's Acquire
        // load that observes this store.
        self.state.state.store(self.counter << 1, Ordering::Release);
    }

    /// Announce that no table pointer is held (between bursts): one Release
    /// store to a cache line only this thread writes, then one SeqCst fence.
    #[inline]
    pub fn quiescent(&mut self) {
        if !self.online {
            self.online();
            return;
        }
        self.counter += 1;
        self.state.state.store((self.counter << 1) | ONLINE, Ordering::Release);
        // Store->load ordering: the next table load (next burst, or the
        // sleep path's refresh) must not be satisfied before this store is
        // visible to a writer; see the module docs. Not optional on x86
        // either: TSO lets a load pass an earlier store in the store buffer.
        fence(Ordering::SeqCst);
    }

    /// Borrow a guard for table reads. Goes online if needed.
    #[inline]
    pub fn read(&mut self) -> ReadGuard<'_> {
        if !self.online {
            self.online();
        }
        ReadGuard { _reader: self }
    }

    pub fn is_online(&self) -> bool {
        self.online
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.offline();
        self.domain.unregister(&self.state);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn synchronize_skips_offline_readers() {
        let q = Qsbr::new();
        let _r = q.register();
        q.synchronize(Duration::from_millis(50)).unwrap();
    }

    #[test]
    fn synchronize_waits_for_an_online_reader_to_pass_a_quiescent_state() {
        let q = Qsbr::new();
        let mut r = q.register();
        r.online();
        // The reader is online and never announces: synchronize must time out.
        assert!(q.synchronize(Duration::from_millis(20)).is_err());

        let released = Arc::new(AtomicBool::new(false));
        let rel = released.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            rel.store(true, Ordering::SeqCst);
            r.quiescent();
            r
        });
        q.synchronize(Duration::from_secs(5)).unwrap();
        assert!(released.load(Ordering::SeqCst), "synchronize returned before the reader was quiescent");
        drop(t.join().unwrap());
    }
}

/// Model check of the reader/writer protocol with loom: one reader doing
/// two read-side sections separated by a quiescent state (the poll loop, or
/// a burst followed by the sleep path's `refresh`), one writer swapping the
/// table and freeing the old one after `synchronize`. A "free" is a write
/// to the table's loom cell; loom reports it if it is not ordered after
/// every read of that table. Remove the fence in `Reader::quiescent` and
/// this fails ("Causality violation").
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicPtr;

    struct Table {
        value: UnsafeCell<u64>,
    }

    fn run(b: loom::model::Builder, reader_sections: usize, swaps: usize) {
        b.check(move || {
            let q = Qsbr::new();
            let first = Box::into_raw(Box::new(Table { value: UnsafeCell::new(1) }));
            let current = loom::sync::Arc::new(AtomicPtr::new(first));
            let mut reader = q.register();
            let cur = current.clone();
            let t = loom::thread::spawn(move || {
                reader.online();
                for _ in 0..reader_sections {
                    {
                        let _g = reader.read();
                        let p = cur.load(Ordering::Acquire);
                        // SAFETY: the guard keeps `p` alive (what the model checks).
                        let v = unsafe { (*p).value.with(|v| *v) };
                        assert_ne!(v, 0, "read a freed table");
                    }
                    reader.quiescent();
                }
                reader.offline();
                drop(reader);
            });
            for i in 0..swaps {
                let new = Box::into_raw(Box::new(Table { value: UnsafeCell::new(2 + i as u64) }));
                let old = current.swap(new, Ordering::AcqRel);
                q.synchronize(Duration::from_secs(1)).unwrap();
                // SAFETY: `old` is unreachable for readers after synchronize.
                unsafe {
                    (*old).value.with_mut(|v| *v = 0);
                    drop(Box::from_raw(old));
                }
            }
            t.join().unwrap();
            let last = current.load(Ordering::Acquire);
            // SAFETY: both threads are done.
            drop(unsafe { Box::from_raw(last) });
        });
    }

    #[test]
    fn a_table_is_never_freed_under_a_reader() {
        run(loom::model::Builder::new(), 2, 1);
    }

    #[test]
    fn two_swaps_against_three_sections() {
        // Bounded so the model runs in seconds; two preemptions are enough
        // to reach the store-buffering interleaving.
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        run(b, 3, 2);
    }
}
