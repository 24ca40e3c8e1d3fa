//! What the store decided and did, for [`Store::metrics`]: counts of decisions and claim ends,
//! the log writer's commit histograms (`histogram`), and the maintenance, log and recovery
//! figures the rest of the store already keeps.
//!
//! Invariants: decision and claim counters live in each index shard and are incremented under
//! that shard's lock, which every call already holds when it decides, so counting costs a plain
//! add on a cache line the call owns (no atomics, no contention). A snapshot locks each shard in
//! turn: it is consistent per shard, not across shards.

use std::time::Duration;

use crate::histogram::Histogram;
use crate::store::{Stats, Store};

/// Per-shard counters (see the module doc). Plain integers: written under the shard lock.
/// `repr(C)` with `first` first: every insert writes it, and it shares a cache line with the
/// shard's lock and lengths (see `ShardTable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct ShardCounters {
    pub(crate) first: u64,
    pub(crate) late: u64,
    pub(crate) late_claims: u64,
    pub(crate) replays: u64,
    pub(crate) refreshes: u64,
    pub(crate) in_flight: u64,
    pub(crate) failures: u64,
    pub(crate) mismatches: u64,
    pub(crate) claims_acquired: u64,
    pub(crate) claims_completed: u64,
    pub(crate) claims_failed: u64,
    pub(crate) claims_released: u64,
    pub(crate) claims_ambiguous: u64,
    pub(crate) claims_fenced: u64,
}

impl ShardCounters {
    /// Counts a refusal derived from a found entry.
    #[inline]
    pub(crate) fn refused(&mut self, refusal: &crate::Error) {
        match refusal {
            crate::Error::ClaimInFlight { .. } => self.in_flight += 1,
            crate::Error::RecentFailure { .. } => self.failures += 1,
            crate::Error::FingerprintMismatch { .. } => self.mismatches += 1,
            _ => {}
        }
    }

    /// Counts an insert, late or not.
    #[inline]
    pub(crate) fn inserted(&mut self, late: bool) {
        if late {
            self.late += 1;
        } else {
            self.first += 1;
        }
    }

    fn add(&mut self, other: &ShardCounters) {
        self.first += other.first;
        self.late += other.late;
        self.late_claims += other.late_claims;
        self.replays += other.replays;
        self.refreshes += other.refreshes;
        self.in_flight += other.in_flight;
        self.failures += other.failures;
        self.mismatches += other.mismatches;
        self.claims_acquired += other.claims_acquired;
        self.claims_completed += other.claims_completed;
        self.claims_failed += other.claims_failed;
        self.claims_released += other.claims_released;
        self.claims_ambiguous += other.claims_ambiguous;
        self.claims_fenced += other.claims_fenced;
    }
}

/// How the calls on keys were decided since open, one count per answer (a batch counts each of
/// its items; `get`, `remove` and transactions are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecisionCounts {
    /// Keys recorded for the first time (or again after their entry expired), late duplicates
    /// included.
    pub inserted: u64,
    /// Keys inserted, or claims acquired, whose previous entry expired within the grace
    /// period: late duplicates (see [`crate::Config::late_duplicate_grace`]; 0 while it is
    /// off). A claim has no room to say so in its answer ([`crate::Claim`] is unchanged): it is
    /// only counted here.
    pub late_duplicates: u64,
    /// Answers replaying a recorded result (`Duplicate`, `Claim::Duplicate`).
    pub replays: u64,
    /// Duplicates that moved their key's deadline later (keys recorded with
    /// [`crate::Refresh::Sliding`]); each wrote the entry again.
    pub refreshes: u64,
    /// Answers that the key is claimed by a side effect in progress.
    pub in_flight: u64,
    /// Answers that the key's side effect failed recently (in its back-off).
    pub failures: u64,
    /// Calls refused for a fingerprint mismatch.
    pub fingerprint_mismatches: u64,
}

/// How claims were taken and ended since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClaimCounts {
    /// Claims acquired.
    pub acquired: u64,
    /// Claims completed with a result ([`crate::Completion::Success`]).
    pub completed: u64,
    /// Claims ended as definite failures ([`crate::Completion::Failure`]).
    pub failed: u64,
    /// Claims released.
    pub released: u64,
    /// Claims marked ambiguous: kept in doubt ([`crate::Completion::Ambiguous`]).
    pub in_doubt: u64,
    /// Completions and releases refused because the token no longer held its key
    /// ([`crate::Error::StaleClaim`]).
    pub fenced: u64,
}

/// A snapshot of what the store decided and did since it was opened ([`Store::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Operations by decision.
    pub decisions: DecisionCounts,
    /// Claims by how they ended.
    pub claims: ClaimCounts,
    /// Expired keys the late-duplicate memory could not remember (it was full).
    pub late_memory_overflowed: u64,
    /// Log, index and maintenance figures: entries expired, segments deleted and compacted,
    /// checkpoints, fsyncs, write calls, bytes appended.
    pub stats: Stats,
    /// Bytes appended per fsync on average (the group-commit size), 0 before the first fsync.
    pub bytes_per_fsync: u64,
    /// How long each fsync of the log took, in microseconds (commits and segment rolls).
    pub fsync_latency_micros: Histogram,
    /// Bytes each fsync of the log made durable: the group-commit size (the bytes written since
    /// the previous fsync; records of 16-byte keys and values take 47 bytes each).
    pub commit_bytes: Histogram,
    /// How long `check_or_insert` (single-key forms, `decide`) took, in nanoseconds. Recorded
    /// with feature `metrics` only (timing every call costs two clock reads): empty without it.
    pub check_or_insert_latency_nanos: Histogram,
    /// How long `claim` took, in nanoseconds (feature `metrics` only, as above).
    pub claim_latency_nanos: Histogram,
    /// How long opening took (recovery included).
    pub open_duration: Duration,
    /// Records replayed by recovery at open.
    pub records_replayed: u64,
}

impl Store {
    /// A snapshot of the store's counters: operations by decision, claims by how they ended,
    /// late duplicates, and the log, maintenance and recovery figures of [`Store::stats`].
    /// Cheap enough to poll every second (it locks each shard once, briefly).
    pub fn metrics(&self) -> Metrics {
        let mut counters = ShardCounters::default();
        let mut overflowed = 0;
        for shard in self.shared.index.shards() {
            let table = shard.lock();
            counters.add(&table.counters);
            overflowed += table.late_overflowed();
        }
        let stats = self.stats();
        let bytes_per_fsync = stats.bytes_appended.checked_div(stats.fsyncs).unwrap_or(0);
        let (fsync_latency_micros, commit_bytes) = self.shared.log.counters.commits.snapshot();
        Metrics {
            decisions: DecisionCounts {
                inserted: counters.first + counters.late,
                late_duplicates: counters.late + counters.late_claims,
                replays: counters.replays,
                refreshes: counters.refreshes,
                in_flight: counters.in_flight,
                failures: counters.failures,
                fingerprint_mismatches: counters.mismatches,
            },
            claims: ClaimCounts {
                acquired: counters.claims_acquired,
                completed: counters.claims_completed,
                failed: counters.claims_failed,
                released: counters.claims_released,
                in_doubt: counters.claims_ambiguous,
                fenced: counters.claims_fenced,
            },
            late_memory_overflowed: overflowed,
            stats,
            bytes_per_fsync,
            fsync_latency_micros,
            commit_bytes,
            check_or_insert_latency_nanos: self.calls.check_or_insert.snapshot(),
            claim_latency_nanos: self.calls.claim.snapshot(),
            open_duration: self.open_duration,
            records_replayed: self.recovery_report().records_replayed,
        }
    }
}

/// Publishing through the `metrics` facade (feature `metrics`).
#[cfg(feature = "metrics")]
mod facade {
    use super::*;

    impl Store {
        /// Publishes [`Store::metrics`] through the [`metrics`] facade, for whatever recorder the
        /// application installed (Prometheus, StatsD, ...): counters `idem_decisions_total`
        /// (label `decision`: `inserted`, `late_duplicate` (inserts and claims on a recently
        /// expired key: not a subset of one series), `replay`, `refresh` (duplicates that slid
        /// their key's deadline), `in_flight`, `failed`,
        /// `fingerprint_mismatch`), `idem_claims_total` (label `end`), `idem_entries_expired_total`,
        /// `idem_segments_deleted_total`, `idem_segments_compacted_total`,
        /// `idem_checkpoints_total`, `idem_fsyncs_total`, `idem_log_writes_total`,
        /// `idem_bytes_appended_total`, `idem_late_memory_overflowed_total`; gauges
        /// `idem_live_keys`, `idem_disk_bytes`, `idem_segments`, `idem_index_bytes`,
        /// `idem_bytes_per_fsync`, `idem_open_seconds`, `idem_records_replayed`. Every series
        /// carries the label `store` (the directory). Call it periodically (every scrape or
        /// every few seconds): it costs one [`Store::metrics`].
        ///
        /// With the feature on, `check_or_insert`, `decide` and `claim` also record their
        /// latency in the histogram `idem_call_seconds` (label `call`), and the log writer
        /// records each fsync's latency in `idem_fsync_seconds` and the bytes it made durable
        /// (the group-commit size) in `idem_commit_bytes` (label `store`), as they happen.
        pub fn publish_metrics(&self) {
            let m = self.metrics();
            let store = self.shared.dir.display().to_string();
            let d = &m.decisions;
            for (decision, n) in [
                ("inserted", d.inserted),
                ("late_duplicate", d.late_duplicates),
                ("replay", d.replays),
                ("refresh", d.refreshes),
                ("in_flight", d.in_flight),
                ("failed", d.failures),
                ("fingerprint_mismatch", d.fingerprint_mismatches),
            ] {
                metrics::counter!("idem_decisions_total", "store" => store.clone(), "decision" => decision)
                    .absolute(n);
            }
            let c = &m.claims;
            for (end, n) in [
                ("acquired", c.acquired),
                ("completed", c.completed),
                ("failed", c.failed),
                ("released", c.released),
                ("in_doubt", c.in_doubt),
                ("fenced", c.fenced),
            ] {
                metrics::counter!("idem_claims_total", "store" => store.clone(), "end" => end)
                    .absolute(n);
            }
            let s = &m.stats;
            for (name, n) in [
                ("idem_entries_expired_total", s.entries_expired),
                ("idem_segments_deleted_total", s.segments_deleted),
                ("idem_segments_compacted_total", s.segments_compacted),
                ("idem_checkpoints_total", s.checkpoints_written),
                ("idem_fsyncs_total", s.fsyncs),
                ("idem_log_writes_total", s.log_writes),
                ("idem_bytes_appended_total", s.bytes_appended),
                (
                    "idem_late_memory_overflowed_total",
                    m.late_memory_overflowed,
                ),
            ] {
                metrics::counter!(name, "store" => store.clone()).absolute(n);
            }
            for (name, value) in [
                ("idem_live_keys", s.live_keys as f64),
                ("idem_disk_bytes", s.disk_bytes as f64),
                ("idem_segments", s.segments as f64),
                ("idem_index_bytes", s.index_bytes as f64),
                ("idem_bytes_per_fsync", m.bytes_per_fsync as f64),
                ("idem_open_seconds", m.open_duration.as_secs_f64()),
                ("idem_records_replayed", m.records_replayed as f64),
            ] {
                metrics::gauge!(name, "store" => store.clone()).set(value);
            }
        }
    }
}

/// Times a call into the `idem_call_seconds` histogram and the store's own (for
/// [`Store::metrics`]) when dropped (feature `metrics`).
#[cfg(feature = "metrics")]
pub(crate) struct CallTimer<'a> {
    call: &'static str,
    into: &'a crate::histogram::AtomicHistogram,
    started: std::time::Instant,
}

#[cfg(feature = "metrics")]
impl CallTimer<'_> {
    pub(crate) fn start<'a>(
        call: &'static str,
        into: &'a crate::histogram::AtomicHistogram,
    ) -> CallTimer<'a> {
        CallTimer {
            call,
            into,
            started: std::time::Instant::now(),
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.into.record(took.as_nanos() as u64);
        metrics::histogram!("idem_call_seconds", "call" => self.call).record(took.as_secs_f64());
    }
}
