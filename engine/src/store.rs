//! The public [`Store`]: open, check-or-insert (single and batch), get, remove, flush, stats.
//!
//! The path of one `check_or_insert`: validate → hash → lock the key's shard → probe, comparing
//! the full key of each tag match from the log → on a miss append the record to the log buffer
//! and put its entry in the shard → unlock → in `Sync` mode wait for the group commit.
//!
//! Invariants:
//! - Bad input is rejected before any lock is taken or byte appended.
//! - In `Sync` mode no call answers `Duplicate` (or `get` → `Some`) for a record that is not yet
//!   durable: it waits for that record's commit first. Otherwise a second consumer could skip its
//!   work for a record that a crash then loses, and nobody would do the work.
//! - A live key's first value is never overwritten by a later `check_or_insert`.
//! - Expiry is decided at every read from the record's exact deadline and the store's clock.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::answer::{Outcome, Value};
use crate::checkpoint;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::{Index, Probe};
use crate::log::{self, Log, LogOptions};
use crate::maintenance::state::MaintenanceState;
use crate::maintenance::{self, MaintenanceReport};
use crate::record::{self, RecordKind};
use crate::recovery::{self, RecoveryReport};
use crate::shared::{ClaimedKey, Shared};
use crate::validate::{validate_fingerprint, validate_key, validate_ttl, validate_value};

const LOCK_FILE_NAME: &str = "LOCK";

/// Counters and sizes, read with [`Store::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Index entries: live keys plus expired ones not yet reclaimed (expired entries are never
    /// served; they are dropped when their slot is reused or the shard is rebuilt).
    pub live_keys: u64,
    /// Bytes of all segment files (a prepared segment's zeros included: they hold the disk),
    /// plus bytes buffered for them.
    pub disk_bytes: u64,
    /// Number of segment files (in the non-`Sync` modes the writer creates a segment's file a
    /// few milliseconds after the log moved on to it; `flush` makes the count exact).
    pub segments: u64,
    /// Bytes of RAM held by the index: slots and expiry wheels.
    pub index_bytes: u64,
    /// Completed fsyncs of the log since open that made records durable (commits and segment
    /// seals); those of preallocation (zeros laid ahead, see [`Config::preallocate_segments`])
    /// commit no record and are not counted.
    pub fsyncs: u64,
    /// Write calls the log writer made since open.
    pub log_writes: u64,
    /// Bytes appended to the log since open.
    pub bytes_appended: u64,
    /// Expiry schedules waiting in the wheels (stale ones included): one per entry put. The
    /// wheels hold a bit per block of 128 index slots per bucket in use, not memory per entry
    /// (in `index_bytes`).
    pub wheel_entries: u64,
    /// Expired entries the wheels removed from the index since open.
    pub entries_expired: u64,
    /// Segments deleted whole because every record in them had expired, since open.
    pub segments_deleted: u64,
    /// Segments compacted (live records copied forward, file deleted) since open.
    pub segments_compacted: u64,
    /// Index checkpoints written since open.
    pub checkpoints_written: u64,
    /// Sealed segments in which maintenance found damage since open (each is reported once by
    /// [`Store::maintain`] and then left alone: no more compaction of it).
    pub segments_damaged: u64,
    /// State entries of transactions ([`Store::get_state`]).
    pub state_entries: u64,
    /// Sources with an input position ([`Store::position`]).
    pub positions: u64,
}

/// An open dedup store. `Send + Sync`: share it by reference or `Arc` across threads.
///
/// ```
/// use std::time::Duration;
/// let dir = tempfile::tempdir()?;
/// let store = idem::Store::open(dir.path())?;
/// let ttl = Duration::from_secs(3600);
/// assert_eq!(store.check_or_insert(b"order-17", ttl, b"charged 5 EUR")?, idem::Outcome::Inserted);
/// match store.check_or_insert(b"order-17", ttl, b"charged again?")? {
///     idem::Outcome::Duplicate(first) => assert_eq!(first.as_ref(), b"charged 5 EUR"),
///     idem::Outcome::Inserted => unreachable!("the key is live"),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    writer: Option<log::WriterHandle>,
    maintainer: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
    /// Keys whose `check_or_insert_with` closure is running (see `single_flight`).
    pub(crate) in_flight: crate::single_flight::InFlightTable,
    /// How long open took (recovery included), for [`Store::metrics`].
    pub(crate) open_duration: std::time::Duration,
    /// Call latencies for [`Store::metrics`] (recorded with feature `metrics` only).
    pub(crate) calls: crate::histogram::CallHistograms,
    /// Held for the store's life: the exclusive lock on the directory.
    _lock: crate::io::DirLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.dir)
            .field("durability", &self.shared.log.durability())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` with the default [`Config`]: `Sync`
    /// durability and the system clock.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(dir, Config::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Fails with [`Error::Locked`] if another process or another `Store` of this process has
    /// it open, and with [`Error::Corrupt`], [`Error::NotASegment`] or
    /// [`Error::UnsupportedVersion`] on damaged files; a torn tail of the newest segment is
    /// cut off instead (see [`Store::recovery_report`]).
    pub fn open_with(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let opening = std::time::Instant::now();
        let dir = dir.as_ref().to_path_buf();
        let storage = Arc::clone(&config.storage);
        crate::io::create_dir_durably(&*storage, &dir)
            .map_err(|e| Error::io(format!("creating store directory {}", dir.display()), e))?;
        let lock = match storage.lock_dir(&dir) {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                return Err(Error::Locked {
                    lock_file: dir.join(LOCK_FILE_NAME),
                    dir,
                })
            }
            Err(e) => return Err(Error::io(format!("locking {}", dir.display()), e)),
        };
        crate::log::segment::remove_prepared(&*storage, &dir)?;
        let now = config.clock.now_millis();
        let tick_millis = config.expiry_tick.as_millis() as u64;
        let checkpoint = checkpoint::load(&*storage, &dir, &config);
        let seeds = match &checkpoint {
            Ok(Some(checkpoint)) => checkpoint.seeds,
            _ => Index::random_seeds(),
        };
        let index = Index::new(
            config.shard_count,
            config.hash_mask_for_testing,
            seeds,
            tick_millis,
            now,
        );
        // Before recovery: replay and the checkpoint's entries go into tables of their size.
        index.expect_keys(config.expected_keys, now);
        let mut state = crate::state::StateTables::default();
        let recovered = recovery::recover(
            &*storage,
            &dir,
            &index,
            &mut state,
            now,
            checkpoint,
            recovery::ReplayOptions {
                parallel_min_bytes: config.parallel_replay_min_bytes,
                track_changes: crate::checkpoint::deltas_enabled(&config),
                map_segments: config.map_segments_at_open,
            },
        )?;
        index.remember_expired(
            config.late_duplicate_grace.as_millis() as u64,
            config.late_duplicate_capacity,
        );
        let options = LogOptions {
            durability: config.durability,
            segment_size_bytes: config.segment_size_bytes,
            write_buffer_bytes: config.write_buffer_bytes,
            preallocate: config.preallocate_segments,
            lanes: 0,
            rotate_lanes: config.rotate_append_lanes,
        };
        let log = Arc::new(Log::new(
            storage,
            &dir,
            options,
            recovered.segments,
            recovered.segment_stats,
            recovered.tail_offset,
        ));
        let fencing_tokens = crate::fence::FencingTokens::open(Arc::clone(&log.storage), &dir)?;
        let writer = log::spawn_writer(Arc::clone(&log))?;
        let shared = Arc::new(Shared {
            dir,
            clock: Arc::clone(&config.clock),
            index,
            log,
            maintenance: MaintenanceState::default(),
            claims: crate::claim::registry::ClaimRegistry::recovered(
                recovered.in_doubt,
                fencing_tokens,
            ),
            state: parking_lot::Mutex::new(state),
            config,
        });
        let maintainer = if shared.config.background_maintenance {
            Some(maintenance::spawn(Arc::clone(&shared))?)
        } else {
            None
        };
        let open_duration = opening.elapsed();
        let report = &recovered.report;
        crate::trace::event!(
            info,
            dir = %shared.dir.display(),
            millis = open_duration.as_millis() as u64,
            segments_replayed = report.segments_replayed,
            records_replayed = report.records_replayed,
            checkpoint_entries = report.checkpoint_entries_loaded,
            "store opened"
        );
        if let Some(_tail) = &report.truncated_tail {
            crate::trace::event!(
                warn,
                path = %_tail.path.display(),
                offset = _tail.offset,
                bytes_cut = _tail.bytes_cut,
                reason = %_tail.reason,
                "torn tail cut at open"
            );
        }
        if let Some(_why) = &report.checkpoint_ignored {
            crate::trace::event!(warn, reason = %_why, "checkpoint ignored: the log was replayed");
        }
        let _ = report;
        Ok(Store {
            shared,
            writer: Some(writer),
            maintainer,
            recovery: recovered.report,
            open_duration,
            calls: Default::default(),
            in_flight: crate::single_flight::InFlightTable::default(),
            _lock: lock,
        })
    }

    /// Records `key` with `value` for `ttl` unless a live entry for `key` exists, in which case
    /// that entry's value is returned and nothing is written.
    ///
    /// In [`crate::Durability::Sync`] mode it returns only once the answer cannot be undone by a crash.
    pub fn check_or_insert(&self, key: &[u8], ttl: Duration, value: &[u8]) -> Result<Outcome> {
        self.check_or_insert_inner(key, ttl, value, None)
            .map(|(outcome, _)| outcome)
    }

    /// [`Store::check_or_insert`] that also records a fingerprint of the request (for example a
    /// digest of its parameters, at most [`crate::record::MAX_FINGERPRINT_BYTES`] bytes). A later
    /// call with the same key but another fingerprint fails with
    /// [`Error::FingerprintMismatch`] instead of returning another request's result, as Stripe's
    /// idempotency keys do. (A plain `check_or_insert` of the key ignores fingerprints.)
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(60);
    /// store.check_or_insert_fingerprinted(b"req-1", ttl, b"ok", b"amount=5")?;
    /// assert!(store.check_or_insert_fingerprinted(b"req-1", ttl, b"ok", b"amount=5")?.is_duplicate());
    /// assert!(matches!(
    ///     store.check_or_insert_fingerprinted(b"req-1", ttl, b"ok", b"amount=500"),
    ///     Err(idem::Error::FingerprintMismatch { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_or_insert_fingerprinted(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
        fingerprint: &[u8],
    ) -> Result<Outcome> {
        validate_fingerprint(fingerprint)?;
        self.check_or_insert_inner(key, ttl, value, Some(fingerprint))
            .map(|(outcome, _)| outcome)
    }

    /// The check-or-insert behind the public forms: the outcome, and whether an insert is a
    /// late duplicate. Refusals are errors (see `Decision` for their mapping).
    pub(crate) fn check_or_insert_inner(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
        fingerprint: Option<&[u8]>,
    ) -> Result<(Outcome, bool)> {
        let refresh = self.shared.config.refresh;
        self.check_or_insert_policy(key, ttl, value, fingerprint, refresh)
    }

    /// [`Store::check_or_insert_inner`] with the refresh policy an insert records.
    #[inline]
    pub(crate) fn check_or_insert_policy(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
        fingerprint: Option<&[u8]>,
        refresh: crate::refresh::Refresh,
    ) -> Result<(Outcome, bool)> {
        #[cfg(feature = "metrics")]
        let _timer =
            crate::metrics::CallTimer::start("check_or_insert", &self.calls.check_or_insert);
        validate_key(key)?;
        validate_value(value)?;
        let ttl_millis = validate_ttl(ttl)?;
        let shared = &*self.shared;
        shared.check_live()?;
        let now = shared.clock.now_millis();
        let mut buf = Vec::new();
        let hash = shared.index.hash(key);
        let insert = crate::record::Record {
            kind: crate::record::RecordKind::Insert,
            key,
            value,
            expires_at_millis: now + ttl_millis,
            fingerprint: fingerprint.unwrap_or(&[]),
            refresh_cap_millis: refresh.cap_at(now),
        };
        let mut table = shared.index.lock(hash);
        // The key's home slot is the call's one cache miss: start it, and encode the insert's
        // record (most calls insert; a duplicate wastes the encoding) while it is on its way.
        table.prefetch(hash.tag);
        let (answer, wait_for, late) = crate::log::with_encoded(&insert, |encoded| {
            shared.check_or_insert_one(
                &mut table,
                hash,
                &insert,
                encoded,
                now,
                &mut buf,
                fingerprint,
            )
        })?;
        drop(table);
        shared.answer_when_durable(wait_for, answer.map(|outcome| (outcome, late)))
    }

    /// [`Store::check_or_insert`] for many items with one commit (one fsync in `Sync` mode).
    ///
    /// The answers come back in order. A key repeated inside the batch is a `Duplicate` of its
    /// first occurrence.
    ///
    /// All or nothing in the process: every item is validated, and checked for claims in flight
    /// ([`Error::ClaimInFlight`]) with the shard locks of all the batch's keys held, before
    /// anything is written; so a batch that returns an error recorded none of its items (and no
    /// other call saw any of them). After [`Error::Poisoned`] nothing more is acknowledged at
    /// all. Like any write that was not acknowledged, a crash before the call returns may keep
    /// any subset of the batch's records on disk, as it may of separate calls in flight.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(60);
    /// let items: Vec<(&[u8], Duration, &[u8])> = vec![(b"a", ttl, b"1"), (b"b", ttl, b"2"), (b"a", ttl, b"3")];
    /// let results = store.check_or_insert_batch(&items)?;
    /// assert_eq!(results[0], idem::Outcome::Inserted);
    /// assert_eq!(results[2], idem::Outcome::Duplicate(idem::Value::from(&b"1"[..])));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_or_insert_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, Duration, V)],
    ) -> Result<Vec<Outcome>> {
        let mut ttls = Vec::with_capacity(items.len());
        for (key, ttl, value) in items {
            validate_key(key.as_ref())?;
            validate_value(value.as_ref())?;
            ttls.push(validate_ttl(*ttl)?);
        }
        let shared = &*self.shared;
        shared.check_live()?;
        crate::batch::check_or_insert_batch(shared, items, &ttls)
    }

    /// The value recorded with `key`, or `None` if it is absent or expired. A key held by a
    /// claim has no result yet: `None`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.lookup(key, ClaimedKey::Absent, None)
    }

    /// [`Store::get`], or with `ClaimedKey::InFlight` an [`Error::ClaimInFlight`] for a key held
    /// by a claim (single flight must not run its closure on such a key). With `slide_ttl`
    /// (milliseconds; single flight's duplicate) a value found slides as a check-or-insert's
    /// duplicate would (see `refresh`).
    pub(crate) fn lookup(
        &self,
        key: &[u8],
        claimed: ClaimedKey,
        slide_ttl: Option<u64>,
    ) -> Result<Option<Value>> {
        validate_key(key)?;
        let shared = &*self.shared;
        shared.check_live()?;
        let now = shared.clock.now_millis();
        let hash = shared.index.hash(key);
        let mut buf = Vec::new();
        let mut table = shared.index.lock(hash);
        let (answer, wait_for) = match shared.probe(&table, hash, key, now, &mut buf)? {
            Probe::Found(slot) => {
                let record = record::decode(&buf).expect("checked during the probe");
                let end = shared.end_of(&table, slot, &record);
                match (record.kind, claimed) {
                    (RecordKind::Claim | RecordKind::Failure, ClaimedKey::Absent) => {
                        (Ok(None), None)
                    }
                    (RecordKind::Claim | RecordKind::Failure, ClaimedKey::InFlight) => {
                        let refusal = crate::retention::refusal(&record);
                        (Err(refusal.expect("a claim or a failure")), end)
                    }
                    _ => match slide_ttl {
                        Some(ttl) if crate::refresh::slides(&record) => {
                            let slid = shared.slide(&mut table, slot, &record, now + ttl, now)?;
                            (Ok(Some(Value::from(record.value))), slid.or(end))
                        }
                        _ => (Ok(Some(Value::from(record.value))), end),
                    },
                }
            }
            // "Absent" may rest on another caller's removal that a crash could still undo.
            Probe::Vacant(_) => (Ok(None), shared.pending_removal(&table)),
        };
        drop(table);
        shared.answer_when_durable(wait_for, answer)
    }

    /// Removes the live entry for `key`; returns whether there was one. The removal is logged
    /// and as durable as an insert.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        validate_key(key)?;
        let shared = &*self.shared;
        shared.check_live()?;
        let now = shared.clock.now_millis();
        let hash = shared.index.hash(key);
        let mut buf = Vec::new();
        let mut table = shared.index.lock(hash);
        let Probe::Found(slot) = shared.probe(&table, hash, key, now, &mut buf)? else {
            let removal = shared.pending_removal(&table);
            drop(table);
            return shared.answer_when_durable(removal, Ok(false));
        };
        let removed = record::decode(&buf).expect("checked during the probe");
        let end = shared.remove_entry(&mut table, slot, key, removed.expires_at_millis)?;
        drop(table);
        shared.wait_if_sync(Some(end))?;
        Ok(true)
    }

    /// Makes everything acknowledged so far durable, in any mode.
    pub fn flush(&self) -> Result<()> {
        self.shared.log.flush()
    }

    /// Runs one round of maintenance now, in this thread: fires the expiry wheels up to the
    /// clock's time, deletes segments whose records all expired, compacts sparse segments, and
    /// writes a checkpoint if one is due. The background thread does the same every fraction of
    /// a tick; call this yourself when it is turned off, or in tests with a [`crate::ManualClock`].
    pub fn maintain(&self) -> Result<MaintenanceReport> {
        maintenance::run_once(&self.shared)
    }

    /// Writes an index checkpoint now, so the next open reads it instead of replaying the log.
    pub fn checkpoint(&self) -> Result<()> {
        maintenance::write_checkpoint(&self.shared)
    }

    /// Current counters and sizes.
    pub fn stats(&self) -> Stats {
        let usage = self.shared.index.usage();
        let (disk_bytes, segments) = self.shared.log.disk_usage();
        let counters = &self.shared.log.counters;
        let maintenance = &self.shared.maintenance.totals;
        let (state_entries, positions) = {
            let state = self.shared.state.lock();
            (state.entries.len() as u64, state.positions.len() as u64)
        };
        Stats {
            state_entries,
            positions,
            live_keys: usage.entries,
            disk_bytes,
            segments,
            index_bytes: usage.heap_bytes,
            wheel_entries: usage.wheel_entries,
            fsyncs: counters.fsyncs.load(Ordering::Relaxed),
            log_writes: counters.writes.load(Ordering::Relaxed),
            bytes_appended: self.shared.log.bytes_appended(),
            entries_expired: maintenance.entries_expired.load(Ordering::Relaxed),
            segments_deleted: maintenance.segments_deleted.load(Ordering::Relaxed),
            segments_compacted: maintenance.segments_compacted.load(Ordering::Relaxed),
            checkpoints_written: maintenance.checkpoints_written.load(Ordering::Relaxed),
            segments_damaged: maintenance.segments_damaged.load(Ordering::Relaxed),
        }
    }

    /// What recovery found when this store was opened (torn tail cut, records replayed).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// Flushes, writes a checkpoint, stops the background threads and releases the directory,
    /// reporting any error that a plain drop would have to swallow.
    pub fn close(mut self) -> Result<()> {
        self.stop_maintainer();
        let flushed = self.shared.log.flush();
        let checkpointed = match flushed {
            Ok(()) => maintenance::write_checkpoint(&self.shared),
            Err(_) => Ok(()),
        };
        self.stop_writer();
        flushed?;
        checkpointed?;
        match self.shared.log.poisoned() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }

    fn stop_maintainer(&mut self) {
        self.shared.maintenance.stop();
        if let Some(maintainer) = self.maintainer.take() {
            let _ = maintainer.join();
        }
    }

    fn stop_writer(&mut self) {
        self.shared.log.begin_shutdown();
        if let Some(writer) = self.writer.take() {
            // A panic in the writer poisons nothing more: the log was already marked.
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_maintainer();
        self.stop_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Sync` batch is committed by one fsync: appends do not wake the writer, the wait does.
    #[test]
    fn a_sync_batch_costs_about_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open_with(dir.path(), Config::default().background_maintenance(false)).unwrap();
        let ttl = Duration::from_secs(60);
        for round in 0..5u32 {
            let keys: Vec<Vec<u8>> = (0..1000u32)
                .map(|i| format!("{round}-{i}").into_bytes())
                .collect();
            let items: Vec<(&[u8], Duration, &[u8])> =
                keys.iter().map(|k| (&k[..], ttl, &b"v"[..])).collect();
            let before = store.stats().fsyncs;
            store.check_or_insert_batch(&items).unwrap();
            let fsyncs = store.stats().fsyncs - before;
            // One, or two if the writer's idle timer fired in the middle of the batch.
            assert!(
                (1..=2).contains(&fsyncs),
                "round {round}: {fsyncs} fsyncs for one batch"
            );
        }
    }
}
