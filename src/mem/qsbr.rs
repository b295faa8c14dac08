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
//! Grace periods are counted by an epoch: [`Qsbr::synchronize`] bumps the
//! domain's epoch and waits until every online reader has acknowledged it
//! (stored an epoch at least as new in its state) or is offline. A reader
//! acknowledges at its quiescent points, and only when the epoch moved, so
//! a quiescent state between bursts is one plain load of a line that only
//! writers write (rarely): no store and no fence per burst.
//!
//! Ordering, the whole protocol:
//! - writer: publish the new table (Release swap), bump the epoch (SeqCst
//!   RMW), `fence(SeqCst)`, then read each reader's state (Acquire) until
//!   it is offline or has acknowledged the new epoch.
//! - reader, quiescent: load the epoch (Acquire); if it moved, store it in
//!   the state (Release). Reads of the sections before happen-before the
//!   writer's free (Release/Acquire on the state); the table loads of the
//!   sections after come after the Acquire of an epoch that was bumped
//!   after the swap, so they see the new table (or a newer one).
//! - reader, going online: load the epoch (Acquire), store it in the state
//!   with the online bit (Release: a writer may take it as the
//!   acknowledgement, so it must carry the reads before the last offline),
//!   then `fence(SeqCst)`, then load the table. With the writer's fence between
//!   its swap and its read of the state this is the store-buffering
//!   pattern: either the writer sees the reader online (and waits for it)
//!   or the reader's first load sees the new table. Without that fence the
//!   load may be satisfied before the state store is visible, so the writer
//!   can see the reader offline, free the old table, and the reader follow
//!   the pointer it loaded early.
//! - reader, going offline: store the state without the online bit
//!   (Release): its earlier reads happen-before a writer that sees it.
//!
//! The loom model at the end of this file checks this
//! (`RUSTFLAGS="--cfg loom" cargo test --release --lib mem::qsbr`).
//! [`Reader::quiescent`] is called between bursts, never per chain.

// Under loom the readers' mutex is modelled too: a reader that unregisters
// (drops its handle) is ordered before a writer only through it, since its
// quiescent states need not fence.
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::Mutex;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(not(loom))]
use std::sync::Mutex;
use std::time::Duration;
#[cfg(not(loom))]
use std::time::Instant;

use crossbeam::utils::CachePadded;

/// Bit 0 of a reader's state: online (may hold table pointers).
const ONLINE: u64 = 1;

#[derive(Debug)]
struct ReaderState {
    /// `acknowledged epoch << 1 | online`. Written only by the owning
    /// reader; padded so two readers never share a cache line.
    state: CachePadded<AtomicU64>,
}

impl ReaderState {
    fn new() -> Self {
        ReaderState { state: CachePadded::new(AtomicU64::new(0)) }
    }
}

/// The set of registered readers and the grace-period epoch.
#[derive(Debug)]
pub struct Qsbr {
    readers: Mutex<Vec<Arc<ReaderState>>>,
    /// Bumped by every `synchronize`; read by every reader at every
    /// quiescent point, written rarely: its own line.
    epoch: CachePadded<AtomicU64>,
    /// Model control only: readers load the epoch Relaxed, which the loom
    /// model must catch (see `loom_model::a_relaxed_epoch_load_is_caught`).
    #[cfg(loom)]
    weak: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("a reader did not pass a quiescent state within {0:?}")]
pub struct SyncTimeout(pub Duration);

impl Qsbr {
    pub fn new() -> Arc<Self> {
        Arc::new(Qsbr {
            readers: Mutex::new(Vec::new()),
            epoch: CachePadded::new(AtomicU64::new(0)),
            #[cfg(loom)]
            weak: false,
        })
    }

    /// A domain whose readers break the protocol (model control only).
    #[cfg(loom)]
    fn new_weak() -> Arc<Self> {
        Arc::new(Qsbr { readers: Mutex::new(Vec::new()), epoch: CachePadded::new(AtomicU64::new(0)), weak: true })
    }

    /// How readers load the epoch: Acquire (Relaxed only in the model's
    /// control domain).
    #[inline]
    fn epoch_order(&self) -> Ordering {
        #[cfg(loom)]
        if self.weak {
            return Ordering::Relaxed;
        }
        Ordering::Acquire
    }

    /// Register a reader. It starts offline.
    pub fn register(self: &Arc<Self>) -> Reader {
        let state = Arc::new(ReaderState::new());
        self.readers.lock().unwrap_or_else(|e| e.into_inner()).push(state.clone());
        Reader { domain: self.clone(), state, seen: 0, online: false }
    }

    /// Wait until every reader that is online now has passed a quiescent
    /// state (or gone offline). The caller must not be inside a read-side
    /// section itself. Bounded by `timeout` so a wedged thread cannot hang
    /// the slow path forever.
    pub fn synchronize(&self, timeout: Duration) -> Result<(), SyncTimeout> {
        // SeqCst RMW (Release at least): the caller's publication of the new
        // pointer happens-before any reader's Acquire load that sees this
        // epoch, so a reader that acknowledges it loads the new pointer next.
        let target = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        // Order the publication before reading reader states: a reader that
        // we see offline will load the new pointer when it next reads (it
        // fences after going online, see `Reader::online`).
        fence(Ordering::SeqCst);
        let readers = self.readers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        #[cfg(not(loom))]
        let start = Instant::now();
        for r in readers {
            let mut spins = 0u32;
            // Acquire pairs with the reader's Release store of its state:
            // once we see it offline or acknowledging `target`, its reads
            // of the old table are finished.
            loop {
                let s = r.state.load(Ordering::Acquire);
                if s & ONLINE == 0 || s >> 1 >= target {
                    break;
                }
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
    /// The epoch last stored in `state`.
    seen: u64,
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
        // Acquire: as in `quiescent`. The state says online with the epoch
        // of now: a writer that bumped before this load need not wait for us
        // (our first table load, after the fence, sees its table).
        self.seen = self.domain.epoch.load(self.domain.epoch_order());
        // Release, not Relaxed: a writer that sees this store as the
        // acknowledgement of its epoch frees the old table on it, so the
        // reads of our sections before the last offline must happen-before
        // (a Relaxed store does not continue the offline store's release;
        // the loom model's sleep case fails with it).
        self.state.state.store((self.seen << 1) | ONLINE, Ordering::Release);
        // Make the online state visible before any table load, so a writer
        // either waits for us or we see its new pointer (store-buffering
        // with the fence in `synchronize`; see the module docs).
        fence(Ordering::SeqCst);
    }

    /// Leave the read side before blocking.
    pub fn offline(&mut self) {
        if !self.online {
            return;
        }
        self.online = false;
        // Release: our reads of old tables happen-before a writer's Acquire
        // load that observes this store.
        self.state.state.store(self.seen << 1, Ordering::Release);
    }

    /// Announce that no table pointer is held (between bursts): one Acquire
    /// load of the domain's epoch; only when a writer bumped it since, one
    /// Release store to a cache line only this thread writes. No fence: the
    /// table loads after this point follow the Acquire of the bumped epoch,
    /// which the writer bumped after publishing its table (module docs).
    #[inline]
    pub fn quiescent(&mut self) {
        if !self.online {
            self.online();
            return;
        }
        let e = self.domain.epoch.load(self.domain.epoch_order());
        if e != self.seen {
            self.acknowledge(e);
        }
    }

    #[cold]
    fn acknowledge(&mut self, e: u64) {
        self.seen = e;
        // Release: the reads of the sections before this point
        // happen-before the writer's Acquire load that sees this store.
        self.state.state.store((e << 1) | ONLINE, Ordering::Release);
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

/// Model check of the reader/writer protocol with loom: one reader going
/// online and doing read-side sections separated by quiescent states (the
/// poll loop, or a burst followed by the sleep path's `refresh`), or by an
/// offline/online round trip (an adaptive sleep), one writer swapping the
/// table and freeing the old one after `synchronize`. A "free" is a write
/// to the table's loom cell; loom reports it if it is not ordered after
/// every read of that table. The control (`a_relaxed_epoch_load_is_caught`)
/// runs readers that load the epoch Relaxed and must fail.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicPtr;

    struct Table {
        value: UnsafeCell<u64>,
    }

    fn run(b: loom::model::Builder, reader_sections: usize, swaps: usize) {
        run_with(b, reader_sections, swaps, false, Qsbr::new)
    }

    fn run_with(
        b: loom::model::Builder,
        reader_sections: usize,
        swaps: usize,
        sleep_between: bool,
        domain: fn() -> Arc<Qsbr>,
    ) {
        b.check(move || {
            let q = domain();
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
                    if sleep_between {
                        reader.offline();
                        reader.online();
                    }
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

    #[test]
    fn a_reader_back_from_a_sleep_never_reads_a_freed_table() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        run_with(b, 2, 2, true, Qsbr::new);
    }

    /// The control: without the Acquire on the epoch, a reader may
    /// acknowledge a grace period and still load the old table afterwards.
    #[test]
    #[should_panic]
    fn a_relaxed_epoch_load_is_caught() {
        run_with(loom::model::Builder::new(), 2, 1, false, Qsbr::new_weak);
    }
}
