//! The one background thread that writes the log buffer to segment files and fsyncs them.
//!
//! Group commit: while the writer is busy with one fsync, appends gather in the pending buffer;
//! the next round writes all of them and covers them with a single fsync, so N concurrent `Sync`
//! callers share fsyncs instead of paying one each.
//!
//! Invariant: `durable` moves only after an fsync that covered every byte before it returned
//! successfully; after any failure the log is poisoned and the writer stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
#[cfg(not(loom))]
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::segment::SegmentFile;
use super::{Chunk, Log};
use crate::config::Durability;
use crate::error::{Error, Result};
use crate::record::{self, SEGMENT_HEADER_LEN};

/// How long buffered records may wait before the writer hands them to the OS in the non-`Sync`
/// modes: bounds what a kill -9 of the process can lose there.
const IDLE_WRITE_INTERVAL: Duration = Duration::from_millis(5);

pub(crate) fn spawn_writer(log: Arc<Log>) -> Result<WriterHandle> {
    #[cfg(not(loom))]
    if let Some(preparer) = &log.preparer {
        let preparer = Arc::clone(preparer);
        crate::sync::spawn("idem-prepare", move || preparer.run())
            .map_err(|e| Error::io("spawning the idem segment preparer thread", e))?;
    }
    crate::sync::spawn("idem-writer", move || {
        // A panic here (a bug, or a panicking `Storage`) must not leave callers waiting for a
        // commit that will never come: poison the log, which wakes every waiter with an error.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&log)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".into());
            let mut state = log.state.lock();
            state.in_flight = None;
            log.poison(
                &mut state,
                format!("the log writer thread panicked: {message}"),
            );
            drop(state);
            log.announce_progress();
        }
        // The writer is gone: nothing will install a prepared segment now.
        if let Some(preparer) = &log.preparer {
            preparer.stop();
        }
    })
    .map_err(|e| Error::io("spawning the idem writer thread", e))
}

/// The writer thread's handle.
#[cfg(not(loom))]
pub(crate) type WriterHandle = JoinHandle<()>;
#[cfg(loom)]
pub(crate) type WriterHandle = crate::sync::JoinHandle;

/// The segment the writer writes into, and what it knows of its file.
struct Active {
    file: Arc<SegmentFile>,
    /// Where its records end: the seal goes there when the log moves on.
    end: u64,
    /// Whether the file extends past its records with zeros (a prepared segment, a runway, or
    /// what a crash left of either): cut before the seal, and when the log closes.
    zero_tail: bool,
    /// How far the file is known to be allocated and fsynced (zeros past `end`): records
    /// written below it overwrite allocated blocks.
    runway_end: u64,
}

impl Active {
    fn new(file: Arc<SegmentFile>, end: u64) -> Active {
        let len = file.len().unwrap_or(end);
        Active {
            file,
            end,
            zero_tail: len > end,
            runway_end: len,
        }
    }

    /// In the fsync-bound modes with preallocation on, a segment the preparer did not prepare
    /// (a new store's first one, the tail of a reopened store, one created while the preparer
    /// lagged) gets zeros ahead of its records, `RUNWAY_STEP_BYTES` at a time, each fsynced
    /// once: then its records' fsyncs commit no file-system metadata either. Done by the
    /// writer itself, between rounds, so nothing else ever writes into the active segment.
    fn extend_runway(&mut self, log: &Log) -> Result<()> {
        let size = u64::from(log.segment_size_bytes);
        if log.preparer.is_none() || self.runway_end >= size {
            return Ok(());
        }
        if self.end + RUNWAY_STEP_BYTES / 2 < self.runway_end {
            return Ok(());
        }
        let from = self.runway_end.max(self.end);
        let to = (from + RUNWAY_STEP_BYTES).min(size);
        super::segment::write_zeros(&self.file, from, to)?;
        // Not counted in `Stats::fsyncs` nor the commit histograms: it commits no record.
        self.file.sync()?;
        self.runway_end = to;
        self.zero_tail = true;
        Ok(())
    }
}

/// How much zeroed runway the writer adds ahead of an unprepared segment's records at a time.
const RUNWAY_STEP_BYTES: u64 = 1 << 20;

fn run(log: &Log) {
    let mut active = {
        let segments = log.segments.read();
        let file = segments
            .values()
            .next_back()
            .cloned()
            .expect("a log always has a tail segment");
        Active::new(file, u64::from(super::offset_of(log.state.lock().written)))
    };
    if let Some(preparer) = &log.preparer {
        if let Some(next) = active.file.id.checked_add(1) {
            preparer.request(next);
        }
    }
    let mut last_sync = Instant::now();
    let mut last_write = Instant::now();
    let mut unsynced_bytes = false;
    loop {
        let mut state = log.state.lock();
        let sync_now = loop {
            if state.poisoned.is_some() {
                return;
            }
            let has_pending = log.tail() > state.written;
            let flush_wanted = state.flush_target > state.durable;
            let buffer_full = log.pending_bytes() >= log.write_buffer_bytes;
            if state.shutting_down {
                if !has_pending && !unsynced_bytes {
                    drop(state);
                    if active.zero_tail {
                        // Best effort: zeros past the records are skipped by recovery anyway.
                        let _ = active.file.truncate(active.end);
                    }
                    return;
                }
                break true;
            }
            let (write, sync, wait) = match log.durability {
                // Only on demand: a caller waiting for durability, or a full buffer. Writing
                // whatever is pending would commit a batch that is still being appended in
                // several pieces, each with its own fsync.
                Durability::Sync => (flush_wanted || buffer_full, true, Duration::from_secs(1)),
                Durability::Periodic(interval) => {
                    let sync_due =
                        (has_pending || unsynced_bytes) && last_sync.elapsed() >= interval;
                    let write_due =
                        has_pending && (buffer_full || last_write.elapsed() >= IDLE_WRITE_INTERVAL);
                    let sync = flush_wanted || sync_due;
                    let wait = interval
                        .saturating_sub(last_sync.elapsed())
                        .min(IDLE_WRITE_INTERVAL)
                        .max(Duration::from_micros(100));
                    (sync || write_due, sync, wait)
                }
                Durability::Never => {
                    let write_due =
                        has_pending && (buffer_full || last_write.elapsed() >= IDLE_WRITE_INTERVAL);
                    (write_due || flush_wanted, flush_wanted, IDLE_WRITE_INTERVAL)
                }
            };
            if write {
                break sync;
            }
            log.work_ready.wait_for(&mut state, wait);
        };
        let (chunks, target) = log.take_appended(&mut state);
        let chunks = Arc::new(chunks);
        state.in_flight = Some(Arc::clone(&chunks));
        // Under the state lock: a caller that appended before this take waits for this round.
        log.commits.round_started(target);
        drop(state);

        let outcome = write_chunks(log, &mut active, &chunks).and_then(|()| {
            if sync_now {
                let started = Instant::now();
                active.file.sync()?;
                log.counters.commits.synced(started.elapsed(), &log.dir);
                log.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        if !chunks.is_empty() {
            last_write = Instant::now();
        }

        let mut state = log.state.lock();
        state.in_flight = None;
        match outcome {
            Ok(()) => {
                state.written = target;
                log.written_hint.store(target, Ordering::Release);
                if sync_now {
                    log.set_durable(&mut state, target);
                    last_sync = Instant::now();
                    unsynced_bytes = false;
                } else if !chunks.is_empty() {
                    unsynced_bytes = true;
                }
                // After `durable` moved: a caller that then finds no round in flight must find
                // its record settled, or know it waits for a later round.
                log.commits.round_ended();
                if let Ok(chunks) = Arc::try_unwrap(chunks) {
                    for mut chunk in chunks {
                        if state.spare_buffers.len() < 4 {
                            chunk.bytes.clear();
                            // A chunk grows past the write buffer's size when a long streak
                            // of records is copied into it: not kept at that size.
                            chunk.bytes.shrink_to(log.write_buffer_bytes);
                            state.spare_buffers.push(chunk.bytes);
                        }
                    }
                }
                drop(state);
                log.announce_progress();
                // After the waiters were woken, so it delays at most the next round.
                if let Err(error) = active.extend_runway(log) {
                    let mut state = log.state.lock();
                    log.poison(&mut state, error.to_string());
                    drop(state);
                    log.announce_progress();
                    return;
                }
            }
            Err(error) => {
                let cause = error.to_string();
                log.poison(&mut state, cause);
                log.commits.round_ended();
                drop(state);
                log.announce_progress();
                return;
            }
        }
    }
}

fn write_chunks(log: &Log, active: &mut Active, chunks: &[Chunk]) -> Result<()> {
    for chunk in chunks {
        if chunk.opens_segment {
            // The old segment is sealed and made durable before the log moves on: recovery
            // treats damage in any segment but the newest, or a missing seal, as corruption,
            // and bytes after a seal too (so a prepared segment's unused zeros go first).
            if active.zero_tail {
                // (An fsync that commits no record: not counted, as the runway's.)
                active.file.truncate(active.end)?;
            }
            active
                .file
                .write_at(&record::encode_seal(active.end), active.end)?;
            let started = Instant::now();
            active.file.sync()?;
            log.counters.commits.synced(started.elapsed(), &log.dir);
            log.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            let prepared = log
                .preparer
                .as_ref()
                .is_some_and(|preparer| preparer.take(chunk.segment_id));
            let created = Arc::new(if prepared {
                SegmentFile::install_prepared(&*log.storage, &log.dir, chunk.segment_id)?
            } else {
                SegmentFile::create(&*log.storage, &log.dir, chunk.segment_id)?
            });
            if let (Some(preparer), Some(next)) = (&log.preparer, chunk.segment_id.checked_add(1)) {
                preparer.request(next);
            }
            log.segments
                .write()
                .insert(chunk.segment_id, Arc::clone(&created));
            *active = Active::new(created, SEGMENT_HEADER_LEN as u64);
        }
        assert_eq!(
            active.file.id, chunk.segment_id,
            "chunks arrive in segment order"
        );
        active
            .file
            .write_at(&chunk.bytes, u64::from(chunk.start_offset))?;
        log.counters.commits.written(chunk.bytes.len());
        active.end = u64::from(chunk.start_offset) + chunk.bytes.len() as u64;
        log.counters.writes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The writer's contract (module doc, `engine/FORMAT.md` "How the log is written"): group
    //! commit, poisoning on any failure or panic, seal-and-fsync before a roll, the timing of
    //! the non-`Sync` modes, and a shutdown that leaves everything durable. The store runs on
    //! the simulated disk behind a hook that can block, fail, panic or cut power at any I/O.

    use crate::io::{DirLock, Storage, StorageFile};
    use crate::record::{self, SEAL_RECORD_LEN, SEGMENT_HEADER_LEN};
    use crate::sim::{Faults, SimStorage};
    use crate::{Config, Durability, Error, ManualClock, Outcome, Store};
    use parking_lot::{Condvar, Mutex};
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const DIR: &str = "/writer";
    const TTL: Duration = Duration::from_secs(3600);

    /// One I/O the hook sees: operation, file name, offset and length of a write.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Op {
        Create(String),
        Write(String, u64, usize),
        Sync(String),
        SyncDir,
    }

    impl Op {
        fn on_segment(&self) -> bool {
            matches!(self, Op::Write(f, ..) | Op::Sync(f) | Op::Create(f) if f.starts_with("segment-"))
        }
    }

    type Hook = dyn Fn(&Op) -> io::Result<()> + Send + Sync;

    #[derive(Clone)]
    struct Hooked {
        /// The disk as the process that made this storage sees it: dead after a crash.
        sim: SimStorage,
        /// The disk itself, for crashing it and for the next process's view.
        root: SimStorage,
        hook: Arc<Mutex<Option<Arc<Hook>>>>,
    }

    impl std::fmt::Debug for Hooked {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Hooked").finish_non_exhaustive()
        }
    }

    impl Hooked {
        fn new(sim: &SimStorage) -> Self {
            Hooked {
                sim: sim.process(),
                root: sim.clone(),
                hook: Arc::default(),
            }
        }

        fn set(&self, hook: impl Fn(&Op) -> io::Result<()> + Send + Sync + 'static) {
            *self.hook.lock() = Some(Arc::new(hook));
        }

        fn call(&self, op: Op) -> io::Result<()> {
            let hook = self.hook.lock().clone();
            hook.map_or(Ok(()), |hook| hook(&op))
        }

        fn wrap(&self, path: &Path, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
            Box::new(HookedFile {
                storage: self.clone(),
                name: name(path),
                file,
            })
        }
    }

    fn name(path: &Path) -> String {
        path.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    impl Storage for Hooked {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.sim.create_dir_all(dir)
        }
        fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
            self.sim.dir_exists(dir)
        }
        fn lock_dir(&self, dir: &Path) -> io::Result<Option<DirLock>> {
            self.sim.lock_dir(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.sim.list(dir)
        }
        fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            self.call(Op::Create(name(path)))?;
            Ok(self.wrap(path, self.sim.create_new(path)?))
        }
        fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            self.call(Op::Create(name(path)))?;
            Ok(self.wrap(path, self.sim.create_truncate(path)?))
        }
        fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            Ok(self.wrap(path, self.sim.open(path)?))
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.sim.remove(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.sim.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.call(Op::SyncDir)?;
            self.sim.sync_dir(dir)
        }
    }

    #[derive(Debug)]
    struct HookedFile {
        storage: Hooked,
        name: String,
        file: Box<dyn StorageFile>,
    }

    impl StorageFile for HookedFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.file.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.storage
                .call(Op::Write(self.name.clone(), offset, buf.len()))?;
            self.file.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.storage.call(Op::Sync(self.name.clone()))?;
            self.file.sync_data()
        }
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.file.set_len(len)
        }
    }

    /// A gate that holds the threads reaching it until opened, counting them.
    #[derive(Default)]
    struct Gate {
        state: Mutex<(bool, usize)>,
        changed: Condvar,
    }

    impl Gate {
        fn pass(&self) {
            let mut state = self.state.lock();
            state.1 += 1;
            self.changed.notify_all();
            while !state.0 {
                self.changed.wait(&mut state);
            }
        }

        fn wait_for_arrivals(&self, n: usize) {
            let mut state = self.state.lock();
            while state.1 < n {
                assert!(!self
                    .changed
                    .wait_for(&mut state, Duration::from_secs(20))
                    .timed_out());
            }
        }

        fn open(&self) {
            self.state.lock().0 = true;
            self.changed.notify_all();
        }
    }

    fn config(storage: impl Storage, durability: Durability) -> Config {
        Config::default()
            .storage(storage)
            .clock(ManualClock::new())
            .durability(durability)
            .background_maintenance(false)
            .checkpoint_every_bytes(0)
            .segment_size_bytes_for_testing(4096)
    }

    fn open(storage: impl Storage, durability: Durability) -> Store {
        Store::open_with(DIR, config(storage, durability)).unwrap()
    }

    fn key(i: usize) -> Vec<u8> {
        format!("key-{i:04}").into_bytes()
    }

    /// Bytes of one record of `key(i)` with an 8-byte value.
    const RECORD_LEN: usize = record::RECORD_HEADER_LEN + 16;

    fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
        start.elapsed()
    }

    /// N callers arriving while an fsync is in progress: the first fsync is held at a gate
    /// until all of them appended; then one more write and one more fsync commit them all.
    fn gathered_callers<T: Send + 'static>(
        n: usize,
        hook_result: impl Fn() -> io::Result<()> + Send + Sync + 'static,
        call: impl Fn(&Store, usize) -> T + Send + Sync + 'static,
    ) -> (Arc<Store>, Hooked, Vec<T>) {
        let sim = SimStorage::new(1);
        let storage = Hooked::new(&sim);
        let store = Arc::new(open(storage.clone(), Durability::Sync));
        let gate = Arc::new(Gate::default());
        let hook_gate = Arc::clone(&gate);
        storage.set(move |op| {
            if matches!(op, Op::Sync(f) if f.starts_with("segment-")) {
                hook_gate.pass();
                return hook_result();
            }
            Ok(())
        });
        let call = Arc::new(call);
        let callers: Vec<_> = (0..n)
            .map(|i| {
                let (store, call) = (Arc::clone(&store), Arc::clone(&call));
                let thread = std::thread::spawn(move || call(&store, i));
                if i == 0 {
                    gate.wait_for_arrivals(1);
                }
                thread
            })
            .collect();
        let appended = (n * RECORD_LEN) as u64;
        wait_until("all callers appended", Duration::from_secs(20), || {
            store.shared.log.bytes_appended() == appended
        });
        gate.open();
        let results = callers.into_iter().map(|t| t.join().unwrap()).collect();
        (store, storage, results)
    }

    #[test]
    fn callers_arriving_during_an_fsync_share_the_next_one() {
        let (store, storage, results) = gathered_callers(
            9,
            || Ok(()),
            |store, i| store.check_or_insert(&key(i), TTL, &key(i)),
        );
        for result in results {
            assert_eq!(result.unwrap(), Outcome::Inserted);
        }
        let stats = store.stats();
        assert_eq!(
            (stats.fsyncs, stats.log_writes),
            (2, 2),
            "one commit for the first caller, one for the eight that queued behind it"
        );
        // Acknowledged means durable.
        storage.root.crash();
        drop(store);
        let store = open(storage.root.process(), Durability::Sync);
        for i in 0..9 {
            assert_eq!(store.get(&key(i)).unwrap().unwrap(), &key(i)[..]);
        }
    }

    #[test]
    fn a_failed_fsync_poisons_wakes_every_waiter_and_is_never_retried() {
        let (store, storage, results) = gathered_callers(
            9,
            || Err(io::Error::other("injected fsync failure")),
            |store, i| store.check_or_insert(&key(i), TTL, &key(i)),
        );
        for result in results {
            match result {
                Err(Error::Poisoned { cause }) => {
                    assert!(cause.contains("injected fsync failure"), "{cause}")
                }
                other => panic!("expected Poisoned, got {other:?}"),
            }
        }
        let syncs = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&syncs);
        storage.set(move |op| {
            if matches!(op, Op::Sync(_) | Op::Write(..)) && op.on_segment() {
                *counted.lock() += 1;
            }
            Ok(())
        });
        assert!(matches!(
            store.check_or_insert(b"later", TTL, b"v"),
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(store.get(&key(0)), Err(Error::Poisoned { .. })));
        assert!(matches!(store.flush(), Err(Error::Poisoned { .. })));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            *syncs.lock(),
            0,
            "nothing written or fsynced after the failure"
        );
        assert_eq!(store.stats().fsyncs, 0);
        let store = Arc::into_inner(store).unwrap();
        assert!(matches!(store.close(), Err(Error::Poisoned { .. })));
    }

    #[test]
    fn a_failed_or_short_write_poisons_and_later_appends_fail() {
        for faults in [
            Faults {
                write_error_per_million: 1_000_000,
                ..Faults::default()
            },
            Faults {
                short_write_per_million: 1_000_000,
                ..Faults::default()
            },
        ] {
            let sim = SimStorage::new(2);
            let store = open(sim.clone(), Durability::Sync);
            for i in 0..10 {
                store.check_or_insert(&key(i), TTL, &key(i)).unwrap();
            }
            sim.set_faults(faults);
            assert!(
                matches!(
                    store.check_or_insert(b"failed", TTL, b"v"),
                    Err(Error::Poisoned { .. })
                ),
                "{faults:?}"
            );
            sim.set_faults(Faults::default());
            assert!(matches!(
                store.check_or_insert(b"later", TTL, b"v"),
                Err(Error::Poisoned { .. })
            ));
            assert!(store.shared.log.poisoned().is_some());
            drop(store);
            // Reopening recovers: whatever part of the failed write is on disk is a torn tail.
            let store = open(sim.clone(), Durability::Sync);
            for i in 0..10 {
                assert_eq!(store.get(&key(i)).unwrap().unwrap(), &key(i)[..]);
            }
            assert_eq!(store.get(b"later").unwrap(), None);
            store.check_or_insert(b"later", TTL, b"v").unwrap();
        }
    }

    /// Inserts of `key(i)` that fit in segment 1 with room for its seal.
    const FITS: usize = (4096 - SEGMENT_HEADER_LEN - SEAL_RECORD_LEN) / RECORD_LEN;

    #[test]
    fn a_roll_seals_and_fsyncs_the_old_segment_before_creating_the_next() {
        let sim = SimStorage::new(3);
        let storage = Hooked::new(&sim);
        let store = open(storage.clone(), Durability::Sync);
        for i in 0..FITS {
            store.check_or_insert(&key(i), TTL, &key(i)).unwrap();
        }
        assert_eq!(store.stats().segments, 1);
        let trace = Arc::new(Mutex::new(Vec::new()));
        let traced = Arc::clone(&trace);
        storage.set(move |op| {
            traced.lock().push(op.clone());
            Ok(())
        });
        store.check_or_insert(&key(FITS), TTL, &key(FITS)).unwrap();
        let (one, two) = ("segment-00000001.idem", "segment-00000002.idem");
        let seal_at = (SEGMENT_HEADER_LEN + FITS * RECORD_LEN) as u64;
        let header = SEGMENT_HEADER_LEN as u64;
        assert_eq!(
            *trace.lock(),
            [
                Op::Write(one.into(), seal_at, SEAL_RECORD_LEN),
                Op::Sync(one.into()),
                Op::Create(two.into()),
                Op::Write(two.into(), 0, SEGMENT_HEADER_LEN),
                Op::Sync(two.into()),
                Op::SyncDir,
                Op::Write(two.into(), header, RECORD_LEN),
                Op::Sync(two.into()),
            ]
        );
        assert_eq!(store.stats().segments, 2);
    }

    #[test]
    fn a_power_cut_at_any_step_of_a_roll_leaves_a_sealed_older_segment() {
        for cut_at in 0..=8 {
            let sim = SimStorage::new(10 + cut_at as u64);
            let storage = Hooked::new(&sim);
            let store = open(storage.clone(), Durability::Sync);
            for i in 0..FITS {
                store.check_or_insert(&key(i), TTL, &key(i)).unwrap();
            }
            let steps = Arc::new(Mutex::new(0));
            let power = sim.clone();
            storage.set(move |_| {
                let mut steps = steps.lock();
                *steps += 1;
                if *steps == cut_at + 1 {
                    power.crash();
                }
                if *steps > cut_at {
                    return Err(io::Error::other("power cut"));
                }
                Ok(())
            });
            let rolled = store.check_or_insert(&key(FITS), TTL, &key(FITS));
            assert_eq!(
                rolled.is_ok(),
                cut_at == 8,
                "cut after {cut_at} steps: {rolled:?}"
            );
            drop(store);
            let store = Store::open_with(DIR, config(sim.clone(), Durability::Sync))
                .unwrap_or_else(|e| panic!("cut after {cut_at} steps: {e}"));
            for i in 0..FITS {
                assert_eq!(
                    store.get(&key(i)).unwrap().unwrap(),
                    &key(i)[..],
                    "{cut_at}"
                );
            }
            if rolled.is_ok() {
                assert!(store.get(&key(FITS)).unwrap().is_some());
            }
            // Recovery refuses an older segment without its seal; check the file too.
            if store.stats().segments > 1 {
                let file = sim
                    .open(&Path::new(DIR).join("segment-00000001.idem"))
                    .unwrap();
                let mut seal = [0u8; SEAL_RECORD_LEN];
                let at = file.len().unwrap() - SEAL_RECORD_LEN as u64;
                file.read_at(&mut seal, at).unwrap();
                let decoded = record::decode(&seal).unwrap();
                assert_eq!(record::seal_length(&decoded), Some(at), "{cut_at}");
            }
        }
    }

    #[test]
    fn never_mode_writes_within_milliseconds_and_fsyncs_only_on_flush() {
        let sim = SimStorage::new(4);
        let store = open(sim.clone(), Durability::Never);
        let segment = Path::new(DIR).join("segment-00000001.idem");
        let len = || sim.open(&segment).unwrap().len().unwrap();
        assert_eq!(len(), SEGMENT_HEADER_LEN as u64);
        store.check_or_insert(b"k", TTL, b"v").unwrap();
        wait_until("the idle write", Duration::from_secs(2), || {
            len() > SEGMENT_HEADER_LEN as u64
        });
        assert_eq!(store.stats().log_writes, 1);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            store.stats().fsyncs,
            0,
            "no fsync in Never mode without a flush"
        );
        store.flush().unwrap();
        assert_eq!(store.stats().fsyncs, 1);
        assert_eq!(store.stats().log_writes, 1, "the flush found it written");
    }

    #[test]
    fn periodic_mode_fsyncs_within_its_interval_and_not_when_idle() {
        let sim = SimStorage::new(5);
        let store = open(sim.clone(), Durability::Periodic(Duration::from_millis(50)));
        store.check_or_insert(b"a", TTL, b"v").unwrap();
        wait_until("the periodic fsync", Duration::from_secs(2), || {
            store.stats().fsyncs == 1
        });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            store.stats().fsyncs,
            1,
            "no fsync while nothing new was written"
        );
        store.check_or_insert(b"b", TTL, b"v").unwrap();
        wait_until("the next fsync", Duration::from_secs(2), || {
            store.stats().fsyncs == 2
        });
        drop(store);
        // An interval far away: the write still happens at once, the fsync does not.
        let store = open(sim.clone(), Durability::Periodic(Duration::from_secs(3600)));
        store.check_or_insert(b"c", TTL, b"v").unwrap();
        wait_until("the idle write", Duration::from_secs(2), || {
            store.stats().log_writes == 1
        });
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(store.stats().fsyncs, 0);
    }

    #[test]
    fn shutdown_writes_and_fsyncs_everything_pending() {
        for durability in [
            Durability::Never,
            Durability::Periodic(Duration::from_secs(3600)),
        ] {
            let sim = SimStorage::new(6);
            let store = open(sim.clone(), durability);
            for i in 0..300 {
                store.check_or_insert(&key(i), TTL, &key(i)).unwrap();
            }
            assert!(
                store.shared.log.bytes_appended() > 2 * 4096,
                "the log rolls"
            );
            drop(store);
            sim.crash();
            let store = open(sim.clone(), durability);
            assert_eq!(
                store.recovery_report().truncated_tail,
                None,
                "{durability:?}"
            );
            for i in 0..300 {
                assert_eq!(
                    store.get(&key(i)).unwrap().unwrap(),
                    &key(i)[..],
                    "{durability:?}"
                );
            }
        }
    }

    #[test]
    fn a_panic_in_the_writer_poisons_instead_of_hanging() {
        for panic_on_sync in [false, true] {
            let sim = SimStorage::new(7);
            let storage = Hooked::new(&sim);
            let store = Arc::new(open(storage.clone(), Durability::Sync));
            store.check_or_insert(b"before", TTL, b"v").unwrap();
            storage.set(move |op| {
                match op {
                    Op::Sync(f) if panic_on_sync && f.starts_with("segment-") => {
                        panic!("disk on fire")
                    }
                    Op::Write(f, ..) if !panic_on_sync && f.starts_with("segment-") => {
                        panic!("disk on fire")
                    }
                    _ => {}
                }
                Ok(())
            });
            let (sender, receiver) = std::sync::mpsc::channel();
            let caller = Arc::clone(&store);
            let thread = std::thread::spawn(move || {
                let _ = sender.send(caller.check_or_insert(b"k", TTL, b"v"));
            });
            let outcome = receiver
                .recv_timeout(Duration::from_secs(20))
                .expect("the caller hangs after a writer panic");
            thread.join().unwrap();
            match outcome {
                Err(Error::Poisoned { cause }) => {
                    assert!(
                        cause.contains("panicked") && cause.contains("disk on fire"),
                        "{cause}"
                    )
                }
                other => panic!("expected Poisoned, got {other:?}"),
            }
            assert!(matches!(
                store.check_or_insert(b"later", TTL, b"v"),
                Err(Error::Poisoned { .. })
            ));
            assert!(matches!(store.flush(), Err(Error::Poisoned { .. })));
            // The panicked writer is joined without hanging or panicking again.
            drop(Arc::into_inner(store).unwrap());
            let store = open(sim.clone(), Durability::Sync);
            assert_eq!(store.get(b"before").unwrap().unwrap(), b"v");
        }
    }
}
