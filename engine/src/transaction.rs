//! Transactions: a dedup record, the consumer's state changes and its input positions, committed
//! together or not at all ([`Store::transaction`]).
//!
//! A [`Transaction`] writes nothing until [`Transaction::commit`]: it notes what it observed
//! (each dedup key it would insert was absent; each state key it read was at a given record) and
//! what it will write. Commit is optimistic concurrency control:
//! 1. lock the index shards of the dedup keys it inserts (ascending, as batches do), then the
//!    state tables (lock order: shards, state, log);
//! 2. validate: each such dedup key is still absent, each state key read still at the record it
//!    was read from, each position not moved past the new one; otherwise `Error::Conflict` and
//!    nothing is written;
//! 3. append all the records as one group ([`crate::log::Log::append_group`]): a group record
//!    announcing the body, then the records, contiguous in one segment; replay applies the group
//!    only if all of it is there;
//! 4. apply them to the index and the state tables, unlock, and in `Sync` wait for the group.
//!
//! Invariants:
//! - Nothing a transaction does before `commit` is visible to anyone or written anywhere;
//!   dropping it leaves no trace.
//! - Serializable on the keys it touches: a commit validates and applies under the locks of
//!   everything it validated, so no other commit or call changes them in between.
//! - In `Sync`, every answer a transaction gives that rests on another caller's record (a
//!   `Duplicate`, a state value, an absence after a removal) waits until that record is durable,
//!   and `commit` returns once the group is.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::MutexGuard;

use crate::answer::{Outcome, Value};
use crate::error::{Error, Result};
use crate::index::{KeyHash, Probe, ShardTable, Slot};
use crate::log::Location;
use crate::record::{self, Record, RecordKind, NEVER_EXPIRES};
use crate::shared::Shared;
use crate::state::StateTables;
use crate::store::Store;
use crate::validate::{validate_key, validate_ttl, validate_value};

/// The most records one transaction may write (dedup inserts, state writes and positions).
pub const MAX_TRANSACTION_RECORDS: usize = 10_000;
/// The most bytes one transaction may write to the log (less if the segment size is smaller:
/// a transaction's records must fit in one segment).
pub const MAX_TRANSACTION_BYTES: usize = 16 << 20;

/// A dedup key the transaction checked.
#[derive(Debug)]
struct DedupCheck {
    key: Box<[u8]>,
    hash: KeyHash,
    /// `Some((ttl_millis, value))`: absent when checked, to be inserted; `None`: a duplicate.
    insert: Option<(u64, Box<[u8]>)>,
    /// The answer given for it (repeated if the key is checked again in the transaction).
    answer: Outcome,
}

/// A set of changes committed atomically: dedup records ([`Transaction::check_or_insert`]),
/// state entries ([`Transaction::put_state`], [`Transaction::delete_state`]) and input
/// positions ([`Transaction::set_position`]). Made by [`Store::transaction`].
///
/// ```
/// use std::time::Duration;
/// use idem::{Outcome, Store};
/// let dir = tempfile::tempdir()?;
/// let store = Store::open(dir.path())?;
/// let ttl = Duration::from_secs(3600);
/// let mut tx = store.transaction();
/// if tx.check_or_insert(b"acquirer-7:seq-1001", ttl, b"charged:tx-9")? == Outcome::Inserted {
///     let old = tx.get_state(b"balance/cust-42")?.map_or(0, |v| {
///         u64::from_le_bytes(v.as_ref().try_into().unwrap())
///     });
///     tx.put_state(b"balance/cust-42", &(old + 250).to_le_bytes())?;
/// }
/// tx.set_position(b"orders/3", 1_000_457)?;
/// tx.commit()?; // all or nothing; durable on return in Sync
/// assert_eq!(store.position(b"orders/3")?, Some(1_000_457));
/// # Ok::<(), idem::Error>(())
/// ```
///
/// Dropping a transaction without committing writes nothing. A commit that lost a race fails with
/// [`Error::Conflict`] and writes nothing: retry the whole transaction with a new one.
#[must_use = "a transaction writes nothing until it is committed"]
pub struct Transaction<'s> {
    store: &'s Store,
    checks: Vec<DedupCheck>,
    /// State keys read, with the record each was read from (`None`: absent).
    reads: BTreeMap<Box<[u8]>, Option<Location>>,
    /// State writes: a value, or `None` for a deletion.
    writes: BTreeMap<Box<[u8]>, Option<Box<[u8]>>>,
    positions: BTreeMap<Box<[u8]>, u64>,
    /// Log bytes of the records the commit will write.
    bytes: usize,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("dedup_keys", &self.checks.len())
            .field("state_reads", &self.reads.len())
            .field("state_writes", &self.writes.len())
            .field("positions", &self.positions.len())
            .finish()
    }
}

impl Store {
    /// Starts a transaction: see [`Transaction`].
    pub fn transaction(&self) -> Transaction<'_> {
        Transaction {
            store: self,
            checks: Vec::new(),
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            positions: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// The value of state entry `key`, as the last committed transaction that wrote it left it.
    /// State entries are a namespace of their own: a dedup key of the same bytes is another entry.
    ///
    /// In `Sync` mode it waits until the record it answers from is durable.
    pub fn get_state(&self, key: &[u8]) -> Result<Option<Value>> {
        validate_key(key)?;
        let shared = &*self.shared;
        shared.check_live()?;
        let (value, end) = read_state(shared, &shared.state.lock(), key);
        shared.answer_when_durable(end, Ok(value.map(|(value, _)| value)))
    }

    /// The input position last committed for `source`, if any.
    pub fn position(&self, source: &[u8]) -> Result<Option<u64>> {
        validate_key(source)?;
        let shared = &*self.shared;
        shared.check_live()?;
        let state = shared.state.lock();
        let entry = state.positions.get(source).copied();
        drop(state);
        let end = entry.and_then(|e| (!shared.log.is_durable(e.end)).then_some(e.end));
        shared.answer_when_durable(end, Ok(entry.map(|e| e.position)))
    }

    /// Every source with a committed position, and its position, ordered by source.
    pub fn positions(&self) -> Result<Vec<(Vec<u8>, u64)>> {
        let shared = &*self.shared;
        shared.check_live()?;
        let state = shared.state.lock();
        let all: Vec<(Vec<u8>, u64)> = state
            .positions
            .iter()
            .map(|(source, entry)| (source.to_vec(), entry.position))
            .collect();
        let end = state.positions.values().map(|e| e.end).max();
        drop(state);
        let end = end.filter(|&end| !shared.log.is_durable(end));
        shared.answer_when_durable(end, Ok(all))
    }
}

/// Reads state entry `key` under the state lock: its value and location, and the end of the
/// record the answer rests on if that is not durable yet (the entry's, or for an absence the
/// latest state removal's).
#[allow(clippy::type_complexity)] // reason: the answer and what it waits for, used at once
fn read_state(
    shared: &Shared,
    state: &StateTables,
    key: &[u8],
) -> (Option<(Value, Location)>, Option<Location>) {
    match state.entries.get(key) {
        Some(entry) => {
            let end = (!shared.log.is_durable(entry.end)).then_some(entry.end);
            (Some((Value::from(&*entry.value), entry.location)), end)
        }
        None => {
            let removal = state.last_removal_end;
            let end = (removal != 0 && !shared.log.is_durable(removal)).then_some(removal);
            (None, end)
        }
    }
}

impl Transaction<'_> {
    /// Checks `key` like [`Store::check_or_insert`]: `Duplicate` with the recorded value if a
    /// live entry exists (nothing will be written for it), else `Inserted`, and the commit will
    /// record it with `value` for `ttl` (from the commit's time). Until the commit, `Inserted`
    /// is provisional: if another caller records the key first, the commit fails with
    /// [`Error::Conflict`]. A key held by a claim fails with [`Error::ClaimInFlight`].
    pub fn check_or_insert(&mut self, key: &[u8], ttl: Duration, value: &[u8]) -> Result<Outcome> {
        validate_key(key)?;
        validate_value(value)?;
        let ttl_millis = validate_ttl(ttl)?;
        if let Some(check) = self.checks.iter().find(|c| &*c.key == key) {
            return Ok(check.answer.clone());
        }
        let shared = &*self.store.shared;
        shared.check_live()?;
        let hash = shared.index.hash(key);
        let now = shared.clock.now_millis();
        let mut buf = Vec::new();
        let table = shared.index.lock(hash);
        match shared.probe(&table, hash, key, now, &mut buf)? {
            Probe::Found(slot) => {
                let found = record::decode(&buf).expect("checked during the probe");
                let end = shared.end_of(&table, slot, &found);
                drop(table);
                if found.kind == RecordKind::Claim {
                    let in_flight = Error::ClaimInFlight {
                        until: crate::claim::system_time(found.expires_at_millis),
                    };
                    return shared.answer_when_durable(end, Err(in_flight));
                }
                let answer = Outcome::Duplicate(Value::from(found.value));
                shared.wait_if_sync(end)?;
                self.checks.push(DedupCheck {
                    key: key.into(),
                    hash,
                    insert: None,
                    answer: answer.clone(),
                });
                Ok(answer)
            }
            Probe::Vacant(_) => {
                drop(table);
                self.grow(record::encoded_len(key.len(), value.len(), 0))?;
                self.checks.push(DedupCheck {
                    key: key.into(),
                    hash,
                    insert: Some((ttl_millis, value.into())),
                    answer: Outcome::Inserted,
                });
                Ok(Outcome::Inserted)
            }
        }
    }

    /// The value of state entry `key` as this transaction sees it: its own write if it made one,
    /// else the committed value. The commit fails with [`Error::Conflict`] if another commit
    /// changes the entry in between.
    pub fn get_state(&mut self, key: &[u8]) -> Result<Option<Value>> {
        validate_key(key)?;
        if let Some(write) = self.writes.get(key) {
            return Ok(write.as_deref().map(Value::from));
        }
        let shared = &*self.store.shared;
        shared.check_live()?;
        let (found, end) = read_state(shared, &shared.state.lock(), key);
        shared.wait_if_sync(end)?;
        let observed = found.as_ref().map(|(_, location)| *location);
        // The first read is what the commit validates; a later one saw the same or a conflict.
        self.reads.entry(key.into()).or_insert(observed);
        Ok(found.map(|(value, _)| value))
    }

    /// Sets state entry `key` to `value` at commit. State entries have no TTL.
    pub fn put_state(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        validate_key(key)?;
        validate_value(value)?;
        self.write_state(key, Some(value.into()))
    }

    /// Deletes state entry `key` at commit (nothing if it does not exist then).
    pub fn delete_state(&mut self, key: &[u8]) -> Result<()> {
        validate_key(key)?;
        self.write_state(key, None)
    }

    fn write_state(&mut self, key: &[u8], value: Option<Box<[u8]>>) -> Result<()> {
        let len = record::encoded_len(key.len(), value.as_ref().map_or(0, |v| v.len()), 0);
        let previous = self
            .writes
            .get(key)
            .map(|old| record::encoded_len(key.len(), old.as_ref().map_or(0, |v| v.len()), 0));
        match previous {
            Some(previous) if previous >= len => {}
            Some(previous) => self.grow_bytes(len - previous)?,
            None => self.grow(len)?,
        }
        self.writes.insert(key.into(), value);
        Ok(())
    }

    /// Sets the input position of `source` at commit. Positions only move forward: a position
    /// below the stored one (or below one this transaction set) fails with
    /// [`Error::PositionRegressed`]; if another commit moves it past this one first, this
    /// commit fails with [`Error::Conflict`].
    pub fn set_position(&mut self, source: &[u8], position: u64) -> Result<()> {
        validate_key(source)?;
        let shared = &*self.store.shared;
        let stored = shared
            .state
            .lock()
            .positions
            .get(source)
            .map(|e| e.position);
        let own = self.positions.get(source).copied();
        if let Some(stored) = stored.max(own).filter(|&stored| stored > position) {
            return Err(Error::PositionRegressed {
                source_len: source.len(),
                stored,
                requested: position,
            });
        }
        if own.is_none() {
            self.grow(record::encoded_len(source.len(), 8, 0))?;
        }
        self.positions.insert(source.into(), position);
        Ok(())
    }

    /// Room for one more record of `len` bytes, within the limits.
    fn grow(&mut self, len: usize) -> Result<()> {
        let records = self.records() + 1;
        if records > MAX_TRANSACTION_RECORDS {
            return Err(self.too_large(records, self.bytes + len));
        }
        self.grow_bytes(len)
    }

    fn grow_bytes(&mut self, len: usize) -> Result<()> {
        if self.bytes + len > self.max_bytes() {
            return Err(self.too_large(self.records() + 1, self.bytes + len));
        }
        self.bytes += len;
        Ok(())
    }

    fn max_bytes(&self) -> usize {
        MAX_TRANSACTION_BYTES.min(self.store.shared.log.max_group_bytes())
    }

    fn records(&self) -> usize {
        self.checks.iter().filter(|c| c.insert.is_some()).count()
            + self.writes.len()
            + self.positions.len()
    }

    fn too_large(&self, records: usize, bytes: usize) -> Error {
        Error::TransactionTooLarge {
            records,
            bytes,
            max_bytes: self.max_bytes(),
        }
    }

    /// Commits every change of the transaction atomically, or fails with nothing written:
    /// [`Error::Conflict`] if another commit or call changed what it checked or read. In `Sync`
    /// mode it returns once the whole transaction is durable (one fsync, shared with other
    /// committers by group commit); after a crash it is entirely there or not at all.
    pub fn commit(self) -> Result<()> {
        let shared = &*self.store.shared;
        shared.check_live()?;
        let inserts: Vec<&DedupCheck> = self.checks.iter().filter(|c| c.insert.is_some()).collect();
        if inserts.is_empty() && self.writes.is_empty() && self.positions.is_empty() {
            // Read-only: its answers were given (and waited for) as it went.
            return Ok(());
        }
        let now = shared.clock.now_millis();

        // 1. Locks: the inserted keys' shards (ascending), then the state tables.
        let mut shard_ids: Vec<usize> = inserts.iter().map(|c| c.hash.shard).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        let mut guards: Vec<MutexGuard<'_, ShardTable>> = shard_ids
            .iter()
            .map(|&shard| shared.index.shards()[shard].lock())
            .collect();
        let guard_of = |hash: &KeyHash| {
            shard_ids
                .binary_search(&hash.shard)
                .expect("every shard of the transaction is locked")
        };
        let mut state = shared.state.lock();

        // 2. Validate.
        let mut buf = Vec::new();
        for check in &inserts {
            let table = &guards[guard_of(&check.hash)];
            match shared.probe(table, check.hash, &check.key, now, &mut buf)? {
                Probe::Vacant(_) => {}
                Probe::Found(_) => {
                    return Err(conflict(format!(
                        "dedup key ({} bytes) was recorded or claimed by another caller first",
                        check.key.len()
                    )))
                }
            }
        }
        for (key, observed) in &self.reads {
            if state.entries.get(key).map(|e| e.location) != *observed {
                return Err(conflict(format!(
                    "state key ({} bytes) was changed by another commit since it was read",
                    key.len()
                )));
            }
        }
        for (source, &position) in &self.positions {
            if let Some(stored) = state
                .positions
                .get(source)
                .filter(|e| e.position > position)
            {
                return Err(conflict(format!(
                    "position of source ({} bytes) moved to {} past {position}",
                    source.len(),
                    stored.position
                )));
            }
        }

        // 3. The group.
        let position_bytes: Vec<[u8; 8]> =
            self.positions.values().map(|p| p.to_le_bytes()).collect();
        let mut records: Vec<Record<'_>> = Vec::with_capacity(self.records());
        for check in &inserts {
            let (ttl_millis, value) = check.insert.as_ref().expect("inserts only");
            records.push(Record {
                kind: RecordKind::Insert,
                key: &check.key,
                value,
                expires_at_millis: now + ttl_millis,
                fingerprint: &[],
            });
        }
        for (key, write) in &self.writes {
            match write {
                Some(value) => records.push(state_record(RecordKind::StatePut, key, value)),
                // Deleting what does not exist writes nothing (no tombstone to carry around).
                None if !state.entries.contains_key(key) => {}
                None => records.push(state_record(RecordKind::StateRemove, key, &[])),
            }
        }
        for ((source, _), bytes) in self.positions.iter().zip(&position_bytes) {
            records.push(state_record(RecordKind::Position, source, bytes));
        }
        let mut locations = Vec::with_capacity(records.len());
        let end = shared.log.append_group(&records, &mut locations)?;

        // 4. Apply.
        for (record, &at) in records.iter().zip(&locations) {
            let record_end = at + record.encoded_len() as u64;
            match record.kind {
                RecordKind::StatePut => state.put(record.key, record.value, at, record_end),
                RecordKind::StateRemove => state.remove(record.key, at, record_end),
                RecordKind::Position => {
                    let position = record::position_value(record).expect("8 bytes");
                    state.set_position(record.key, position, at, record_end);
                }
                _ => {}
            }
        }
        // The inserts come first in the group. Two keys of one shard may have probed the same
        // vacant slot: each entry finds its own place.
        for (check, (record, &at)) in inserts.iter().zip(records.iter().zip(&locations)) {
            let entry = Slot {
                tag: check.hash.tag,
                expires_at_secs: Slot::deadline_secs(record.expires_at_millis),
                location: at,
            };
            guards[guard_of(&check.hash)].put_new(entry, now);
        }
        shared.settle_state(&mut state);
        drop(state);
        for table in guards.iter_mut() {
            shared.settle(table);
        }
        drop(guards);
        shared.wait_if_sync(Some(end))
    }
}

fn state_record<'a>(kind: RecordKind, key: &'a [u8], value: &'a [u8]) -> Record<'a> {
    Record {
        kind,
        key,
        value,
        expires_at_millis: NEVER_EXPIRES,
        fingerprint: &[],
    }
}

fn conflict(reason: String) -> Error {
    Error::Conflict { reason }
}
