//! The core state every layer builds on: [`Shared`] holds the index, the log, the clock, the
//! config, the claims registry and the maintenance state, and the primitive steps on them that
//! the public calls compose (probe a key under its shard lock, check-or-insert one key, wait for
//! durability before answering).
//!
//! Layering (one-way): `store` (the public façade), `claim`, `store_with`, `maintenance`,
//! `checkpoint` build on this module; it builds on `index`, `log`, `record` and the state types
//! of `claim::registry` and `maintenance::state`, which import nothing above them.
//!
//! Invariants:
//! - A key's index entry and its record are changed only under the key's shard lock, so per key
//!   the log order is the operation order.
//! - In `Sync` mode no answer is given that rests on a record not yet durable: a duplicate, a
//!   refusal (claim in flight, fingerprint mismatch) or an absence after another caller's removal
//!   waits for that record first ([`Shared::answer_when_durable`]).

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::MutexGuard;

use crate::answer::{Outcome, Value};
use crate::claim::registry::ClaimRegistry;
use crate::clock::Clock;
use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::index::{Index, KeyCheck, KeyHash, Probe, ShardTable, Slot};
use crate::log::{Location, Log};
use crate::maintenance::state::MaintenanceState;
use crate::record::{self, Record, RecordKind};
use crate::state::StateTables;
use crate::validate::check_fingerprint;

/// Released state locations past which a commit settles them even if it must wait for the
/// log's state lock: bounds the list (and how far the live counts lag) when the lock is
/// always busy.
const MAX_UNSETTLED_STATE: usize = 16 << 10;

/// The parts of a store that its background threads share with callers.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) index: Index,
    pub(crate) log: Arc<Log>,
    pub(crate) config: Config,
    pub(crate) maintenance: MaintenanceState,
    /// Claims open in this process or recovered in doubt (see `claim`).
    pub(crate) claims: ClaimRegistry,
    /// State entries and positions of transactions. Lock order: index shards (ascending), then
    /// this, then the log.
    pub(crate) state: parking_lot::Mutex<StateTables>,
}

impl Shared {
    pub(crate) fn check_live(&self) -> Result<()> {
        if let Some(cause) = self.log.poisoned() {
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    /// Hands the locations of state records that stopped being live to the log's live counts.
    pub(crate) fn settle_state(&self, state: &mut StateTables) {
        if !state.released.is_empty() {
            self.log.release_state(&state.released);
            state.released.clear();
        }
    }

    /// [`Shared::settle_state`] once `state` holds at least `batch` released locations, unless
    /// the log's state lock is busy (the writer or maintenance holds it) and fewer than
    /// `MAX_UNSETTLED_STATE` wait: a commit does not queue behind them for a count that may lag.
    pub(crate) fn settle_state_when(&self, state: &mut StateTables, batch: usize) {
        let waiting = state.released.len();
        if waiting < batch {
            return;
        }
        if waiting >= MAX_UNSETTLED_STATE {
            self.settle_state(state);
        } else if self.log.try_release_state(&state.released) {
            state.released.clear();
        }
    }

    /// Hands the locations of entries the table dropped to the log's per-segment live counts.
    pub(crate) fn settle(&self, table: &mut ShardTable) {
        if !table.released.is_empty() {
            self.log.release(&table.released);
            table.released.clear();
        }
    }

    /// [`Shared::settle`] after the shard lock is dropped, for maintenance: the table's released
    /// locations are swapped into `spare` (empty; the table keeps its allocation instead) under
    /// the lock, and handed to the log once `table` is unlocked, so the log's state lock (which
    /// the writer holds while it takes the lanes) is not waited for with a shard lock held: a
    /// maintenance thread preempted there kept the shard from its callers (seen in `perf` of
    /// context switches). Counts settled a little later are only ever too high meanwhile,
    /// which delays a compaction or deletion, never makes one wrong.
    pub(crate) fn settle_after_unlock(
        &self,
        mut table: MutexGuard<'_, ShardTable>,
        spare: &mut Vec<Location>,
    ) {
        debug_assert!(spare.is_empty(), "the spare list is handed back empty");
        std::mem::swap(&mut table.released, spare);
        drop(table);
        if !spare.is_empty() {
            self.log.release(spare);
            spare.clear();
        }
    }

    /// Check-or-insert of one key under its shard lock (`table`, the shard of `hash`).
    ///
    /// Returns the answer and the log location that must be durable before the answer may be
    /// given in `Sync` mode: the new record's end on an insert, the found record's end (if not
    /// yet durable) on a duplicate or a refusal; and whether an insert is a late duplicate (see
    /// `Config::late_duplicate_grace`). Counts the decision in the shard. The outer error is an I/O failure; the inner
    /// one a refusal derived from the found record (a claim in flight, a fingerprint mismatch).
    #[allow(clippy::too_many_arguments)] // reason: the hot path passes what it already has
    pub(crate) fn check_or_insert_one(
        &self,
        table: &mut ShardTable,
        hash: KeyHash,
        insert: &Record<'_>,
        encoded: &[u8],
        now: u64,
        buf: &mut Vec<u8>,
        fingerprint: Option<&[u8]>,
    ) -> Result<(Result<Outcome>, Option<Location>, bool)> {
        let expires_at_millis = insert.expires_at_millis;
        match self.probe(table, hash, insert.key, now, buf)? {
            Probe::Found(slot) => {
                let record = record::decode(buf).expect("checked during the probe");
                let end = self.end_of(table, slot, &record);
                let refusal = match check_fingerprint(&record, fingerprint) {
                    Err(mismatch) => Some(mismatch),
                    Ok(()) => crate::retention::refusal(&record),
                };
                if let Some(refusal) = refusal {
                    table.counters.refused(&refusal);
                    return Ok((Err(refusal), end, false));
                }
                table.counters.replays += 1;
                let end = if crate::refresh::slides(&record) {
                    self.slide(table, slot, &record, expires_at_millis, now)?
                        .or(end)
                } else {
                    end
                };
                Ok((
                    Ok(Outcome::Duplicate(Value::from(record.value))),
                    end,
                    false,
                ))
            }
            Probe::Vacant(slot) => {
                let late = table.late_duplicate(hash.tag, now);
                let (at, end) = self
                    .log
                    .append_fenced(insert, encoded, &mut table.insert_fence)?;
                let entry = Slot {
                    tag: hash.tag,
                    expires_at_secs: Slot::deadline_secs(expires_at_millis),
                    location: at,
                };
                table.put(slot, entry, now);
                table.counters.inserted(late);
                self.settle(table);
                Ok((Ok(Outcome::Inserted), Some(end), late))
            }
        }
    }

    /// Removes the live entry of `key` at `slot` (under its shard lock, `table`): logs a removal
    /// whose deadline is the removed entry's (`deadline_millis`), drops the entry, remembers the
    /// removal's end for absences answered in `Sync` mode, and forgets the key's claim. Returns
    /// the removal's end, for the caller to wait on.
    pub(crate) fn remove_entry(
        &self,
        table: &mut ShardTable,
        slot: usize,
        key: &[u8],
        deadline_millis: u64,
    ) -> Result<Location> {
        let tombstone = Record {
            kind: RecordKind::Remove,
            key,
            value: &[],
            expires_at_millis: deadline_millis,
            fingerprint: &[],
            refresh_cap_millis: 0,
        };
        let (_, end) = self.log.append(&tombstone)?;
        table.remove(slot);
        table.last_removal_end = end;
        self.settle(table);
        // Under the shard lock, so a new claim of the key is never forgotten in its place.
        self.claims.forget(key);
        Ok(end)
    }

    /// Finds `key` in its shard; on `Found`, `buf` holds the entry's record.
    pub(crate) fn probe(
        &self,
        table: &ShardTable,
        hash: KeyHash,
        key: &[u8],
        now: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Probe> {
        table.probe(hash.tag, now, |slot| {
            let at = slot.location;
            let Some(record) = self.log.read(at, buf)? else {
                // Its segment was reclaimed, which happens only once every entry still pointing
                // into it is dead (deletion of an expired segment), or after compaction dropped
                // the entries it did not copy. `now` may have been read before the deletion:
                // judge by the clock again.
                if slot.is_dead(self.clock.now_millis()) {
                    return Ok(KeyCheck::Expired);
                }
                return Err(Error::Corrupt {
                    path: self.dir.clone(),
                    offset: at,
                    reason: "a live index entry points into a deleted segment".into(),
                });
            };
            if record.key != key {
                return Ok(KeyCheck::Other);
            }
            if !record.kind.is_entry() {
                // Only inserts, claims and failures are dedup entries: never answer from another record
                // of the same key bytes (a removal, a state record, a position).
                return Err(Error::Corrupt {
                    path: self.dir.clone(),
                    offset: at,
                    reason: format!("index entry points at a {:?} record", record.kind),
                });
            }
            Ok(if record.expires_at_millis <= now {
                KeyCheck::Expired
            } else {
                KeyCheck::Live
            })
        })
    }

    /// The location just past the found record in `slot`, if it is not yet durable: a `Sync`
    /// caller must wait for it before answering (the not-reading-uncommitted-data rule).
    pub(crate) fn end_of(
        &self,
        table: &ShardTable,
        slot: usize,
        record: &Record<'_>,
    ) -> Option<Location> {
        let end = table.slot(slot).location + record.encoded_len() as u64;
        (!self.log.is_durable(end)).then_some(end)
    }

    /// The end of the shard's latest removal if it is not durable yet: an answer of "absent"
    /// may rest on it, so in `Sync` mode it waits for it first.
    pub(crate) fn pending_removal(&self, table: &ShardTable) -> Option<Location> {
        let end = table.last_removal_end;
        (end != 0 && !self.log.is_durable(end)).then_some(end)
    }

    /// Gives `answer` once `end` is durable in `Sync` mode: every answer derived from a record
    /// (a duplicate, a refusal, an absence after a removal) waits until that record can no
    /// longer be lost. A failed wait (the log was poisoned) replaces the answer.
    pub(crate) fn answer_when_durable<T>(
        &self,
        end: Option<Location>,
        answer: Result<T>,
    ) -> Result<T> {
        self.wait_if_sync(end)?;
        answer
    }

    pub(crate) fn wait_if_sync(&self, end: Option<Location>) -> Result<()> {
        match (self.log.durability(), end) {
            (Durability::Sync, Some(end)) if !capture_wait(end) => self.log.wait_durable(end),
            _ => Ok(()),
        }
    }
}

thread_local! {
    /// While [`capturing_durability_wait`] runs on this thread: the furthest end its call would
    /// have waited for (0 for none yet). `None` otherwise.
    static CAPTURED_WAIT: std::cell::Cell<Option<Location>> = const { std::cell::Cell::new(None) };
}

/// Notes `end` as the call's wait if a capture is running on this thread (then the caller must
/// not wait); `false` if none is.
fn capture_wait(end: Location) -> bool {
    CAPTURED_WAIT.with(|captured| match captured.get() {
        Some(furthest) => {
            captured.set(Some(furthest.max(end)));
            true
        }
        None => false,
    })
}

/// Runs `call`, one of the store's procedures, with its `Sync` durability wait captured instead
/// of performed: returns the call's answer and the location it would have waited for (`None` if
/// nothing, or not in `Sync` mode). The async API runs the blocking procedures through this, then
/// awaits the location, so both give the same answers and errors by construction.
///
/// Sound because every procedure waits only as its last step, after which it answers: nothing
/// it does rests on the wait having happened, except the answer, which the caller withholds
/// until the location is durable (and replaces by [`Error::Poisoned`] if it never becomes so,
/// as [`Shared::answer_when_durable`] does). A procedure that must wait *before* a later step
/// (a transaction's commit that then publishes, for instance) must call `log.wait_durable`
/// directly, which is never captured.
pub(crate) fn capturing_durability_wait<R>(call: impl FnOnce() -> R) -> (R, Option<Location>) {
    struct Reset(Option<Location>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CAPTURED_WAIT.with(|captured| captured.set(self.0));
        }
    }
    // A capture inside another one gets its own slot; the outer one's is restored after it,
    // also if `call` panics.
    let reset = Reset(CAPTURED_WAIT.with(|captured| captured.replace(Some(0))));
    let answer = call();
    let furthest = CAPTURED_WAIT.with(|captured| captured.get());
    drop(reset);
    (answer, furthest.filter(|&end| end != 0))
}

/// What [`Store::lookup`] answers for a key held by a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimedKey {
    /// No result yet: `None`.
    Absent,
    /// [`Error::ClaimInFlight`].
    InFlight,
}
