//! Transactions: a dedup record, the consumer's state changes and its input positions, committed
//! together or not at all ([`Store::transaction`]).
//!
//! A [`Transaction`] writes nothing until [`Transaction::commit`]: it notes what it observed
//! (each dedup key it would insert was absent; each state key it read was absent or at a given
//! version, which every put of the key changes and a compaction copy does not) and what it will
//! write. Commit is optimistic concurrency control:
//! 1. lock the index shards of the dedup keys it inserts (ascending, as batches do), then the
//!    state tables (lock order: shards, state, log);
//! 2. validate: each such dedup key is still absent, each state key read still at the version it
//!    was read at, each position not moved past the new one; otherwise `Error::Conflict` and
//!    nothing is written;
//! 3. append all the records as one group ([`crate::log::Log::append_group`]): contiguous in
//!    one segment, each but the last carrying the continuation flag; replay applies the group
//!    only if all of it is there (a transaction that writes one record writes it alone: one
//!    record is whole or absent by itself);
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

use std::time::Duration;

use parking_lot::MutexGuard;
use smallvec::SmallVec;

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

/// Where a transaction keeps a key or value: a range of its byte arena.
type Span = std::ops::Range<usize>;

/// A dedup key the transaction checked.
#[derive(Debug)]
struct DedupCheck {
    hash: KeyHash,
    /// `Some`: absent when checked, to be inserted; `None`: a duplicate.
    insert: Option<Insert>,
    /// The answer given for it (repeated if the key is checked again in the transaction).
    answer: Outcome,
}

/// A dedup key a transaction found vacant and will insert.
#[derive(Debug)]
struct Insert {
    ttl_millis: u64,
    value: Span,
    /// The shard's count of entry writes ([`ShardTable::writes`]) and the time when the key was
    /// found vacant: if the count is the same at commit (and the clock did not run back), no
    /// entry was written into the shard since, so the key is still vacant without a probe.
    vacant_under: (u64, u64),
    /// The key's expired entry the probe found (see [`ShardTable::expired_entry_at`]): the
    /// commit's put replaces it.
    replacing: Option<Location>,
}

/// Past this many entries a list of the transaction gets a hash index; below it a scan is
/// cheaper than hashing (most transactions touch a handful of keys).
const SCAN_LIMIT: usize = 16;

/// Entries of one kind a transaction keeps without allocating (a typical transaction has one or
/// two of each).
const INLINE_ENTRIES: usize = 2;
/// Arena bytes a transaction keeps without allocating: the keys and values of a typical one.
const INLINE_ARENA: usize = 160;
/// Records (and shards) a commit handles without allocating.
const INLINE_RECORDS: usize = 4;
/// Released state locations a commit leaves for a later one to hand to the log.
const RELEASE_BATCH: usize = 256;

/// The bytes a transaction keeps (keys, values), back to back: inline up to [`INLINE_ARENA`]
/// bytes, then on the heap. A copy into it is one bounds check and a `memcpy` (a `SmallVec`'s
/// `extend_from_slice` cost several times that on the commit path).
struct Arena {
    inline: [u8; INLINE_ARENA],
    len: usize,
    /// Every byte once they outgrow `inline` (empty until then).
    heap: Vec<u8>,
}

impl Default for Arena {
    fn default() -> Self {
        Arena {
            inline: [0; INLINE_ARENA],
            len: 0,
            heap: Vec::new(),
        }
    }
}

impl Arena {
    /// Inlined into each caller (five per typical transaction), the heap path out of line.
    #[inline(always)]
    fn keep(&mut self, bytes: &[u8]) -> Span {
        let (start, end) = (self.len, self.len + bytes.len());
        if end <= INLINE_ARENA {
            self.inline[start..end].copy_from_slice(bytes);
        } else {
            self.keep_on_heap(bytes, start, end);
        }
        self.len = end;
        start..end
    }

    #[cold]
    #[inline(never)]
    fn keep_on_heap(&mut self, bytes: &[u8], start: usize, end: usize) {
        if self.heap.is_empty() {
            self.heap.reserve(end.max(2 * INLINE_ARENA));
            self.heap.extend_from_slice(&self.inline[..start]);
        }
        self.heap.extend_from_slice(bytes);
    }
}

impl std::ops::Deref for Arena {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.len <= INLINE_ARENA {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

impl std::ops::DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.len <= INLINE_ARENA {
            &mut self.inline[..self.len]
        } else {
            &mut self.heap
        }
    }
}

/// Where each key of an [`Entries`] list is, once the list outgrows [`SCAN_LIMIT`].
type KeyIndex = std::collections::HashMap<Box<[u8]>, usize, ahash::RandomState>;

/// A transaction's entries of one kind, keyed by byte strings kept in the transaction's arena:
/// no allocation per key (none at all for a few), and a lookup scans until the list outgrows
/// [`SCAN_LIMIT`].
#[derive(Debug)]
struct Entries<T> {
    items: SmallVec<[(Span, T); INLINE_ENTRIES]>,
    /// Boxed: a transaction is moved into `commit`, and most never need the index.
    index: Option<Box<KeyIndex>>,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries {
            items: SmallVec::new(),
            index: None,
        }
    }
}

impl<T> Entries<T> {
    fn find(&self, arena: &[u8], key: &[u8]) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self
                .items
                .iter()
                .position(|(k, _)| &arena[k.clone()] == key),
        }
    }

    fn get(&self, arena: &[u8], key: &[u8]) -> Option<&T> {
        self.find(arena, key).map(|i| &self.items[i].1)
    }

    fn push(&mut self, arena: &[u8], key: Span, value: T) {
        let at = self.items.len();
        if let Some(index) = &mut self.index {
            index.insert(arena[key.clone()].into(), at);
        }
        self.items.push((key, value));
        if self.index.is_none() && self.items.len() > SCAN_LIMIT {
            self.index = Some(Box::new(
                self.items
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (arena[k.clone()].into(), i))
                    .collect(),
            ));
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
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
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Dropping a transaction without committing writes nothing. A commit that lost a race fails with
/// [`Error::Conflict`] and writes nothing: retry the whole transaction with a new one.
#[must_use = "a transaction writes nothing until it is committed"]
pub struct Transaction<'s> {
    store: &'s Store,
    /// Every key and value the transaction holds, back to back. Inline: a transaction of a few
    /// small records allocates nothing (the cost target of issue #11 is a few hundred
    /// nanoseconds, of which each allocation and free is a noticeable share).
    arena: Arena,
    checks: Entries<DedupCheck>,
    /// State keys read, with the version of the entry each was read from (`None`: absent).
    reads: Entries<Option<u64>>,
    /// State writes: a value, or `None` for a deletion.
    writes: Entries<Option<Span>>,
    /// Positions: the position's little-endian bytes (the record's value) in the arena.
    positions: Entries<Span>,
    /// Log bytes of the records the commit will write.
    bytes: usize,
    /// Records the commit will write (dedup inserts, state writes, positions): counted as
    /// they are added, so the limit check does not walk the lists (quadratic in a large
    /// transaction).
    records: usize,
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
            arena: Arena::default(),
            checks: Entries::default(),
            reads: Entries::default(),
            writes: Entries::default(),
            positions: Entries::default(),
            bytes: 0,
            records: 0,
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

/// Reads state entry `key` under the state lock: its value and version, and the end of the
/// record the answer rests on if that is not durable yet (the entry's, or for an absence the
/// latest state removal's).
#[allow(clippy::type_complexity)] // reason: the answer and what it waits for, used at once
fn read_state(
    shared: &Shared,
    state: &StateTables,
    key: &[u8],
) -> (Option<(Value, u64)>, Option<Location>) {
    match state.entries.get(key) {
        Some(entry) => {
            let end = (!shared.log.is_durable(entry.end)).then_some(entry.end);
            (Some((Value::from(&*entry.value), entry.version)), end)
        }
        None => {
            let removal = state.last_removal_end;
            let end = (removal != 0 && !shared.log.is_durable(removal)).then_some(removal);
            (None, end)
        }
    }
}

impl<'s> Transaction<'s> {
    /// The store the transaction belongs to.
    pub(crate) fn store(&self) -> &'s Store {
        self.store
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
        if let Some(check) = self.checks.get(&self.arena[..], key) {
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
                if let Some(refusal) = crate::retention::refusal(&found) {
                    return shared.answer_when_durable(end, Err(refusal));
                }
                let answer = Outcome::Duplicate(Value::from(found.value));
                shared.wait_if_sync(end)?;
                let key = self.keep(key);
                let check = DedupCheck {
                    hash,
                    insert: None,
                    answer: answer.clone(),
                };
                self.checks.push(&self.arena[..], key, check);
                Ok(answer)
            }
            Probe::Vacant(slot) => {
                let vacant_under = (table.writes(), now);
                let replacing = table.expired_entry_at(slot, now);
                drop(table);
                self.grow(record::encoded_len(key.len(), value.len(), 0))?;
                let (key, value) = (self.keep(key), self.keep(value));
                let check = DedupCheck {
                    hash,
                    insert: Some(Insert {
                        ttl_millis,
                        value,
                        vacant_under,
                        replacing,
                    }),
                    answer: Outcome::Inserted,
                };
                self.checks.push(&self.arena[..], key, check);
                Ok(Outcome::Inserted)
            }
        }
    }

    /// The value of state entry `key` as this transaction sees it: its own write if it made one,
    /// else the committed value. The commit fails with [`Error::Conflict`] if another commit
    /// changes the entry in between.
    pub fn get_state(&mut self, key: &[u8]) -> Result<Option<Value>> {
        validate_key(key)?;
        if let Some(write) = self.writes.get(&self.arena[..], key) {
            return Ok(write.clone().map(|value| Value::from(&self.arena[value])));
        }
        let shared = &*self.store.shared;
        shared.check_live()?;
        let (found, end) = read_state(shared, &shared.state.lock(), key);
        shared.wait_if_sync(end)?;
        let observed = found.as_ref().map(|(_, version)| *version);
        // The first read is what the commit validates; a later one saw the same or a conflict.
        if self.reads.find(&self.arena[..], key).is_none() {
            let key = self.keep(key);
            self.reads.push(&self.arena[..], key, observed);
        }
        Ok(found.map(|(value, _)| value))
    }

    /// Sets state entry `key` to `value` at commit. State entries have no TTL.
    pub fn put_state(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        validate_key(key)?;
        validate_value(value)?;
        self.write_state(key, Some(value))
    }

    /// Deletes state entry `key` at commit (nothing if it does not exist then).
    pub fn delete_state(&mut self, key: &[u8]) -> Result<()> {
        validate_key(key)?;
        self.write_state(key, None)
    }

    fn write_state(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let len = record::encoded_len(key.len(), value.map_or(0, <[u8]>::len), 0);
        let found = self.writes.find(&self.arena[..], key);
        let previous = found.map(|i| {
            let old = self.writes.items[i].1.as_ref().map_or(0, |v| v.len());
            record::encoded_len(key.len(), old, 0)
        });
        match previous {
            Some(previous) if previous >= len => {}
            Some(previous) => self.grow_bytes(len - previous)?,
            None => self.grow(len)?,
        }
        let value = value.map(|value| self.keep(value));
        match found {
            Some(i) => self.writes.items[i].1 = value,
            None => {
                let key = self.keep(key);
                self.writes.push(&self.arena[..], key, value);
            }
        }
        Ok(())
    }

    /// Copies `bytes` into the arena.
    #[inline]
    fn keep(&mut self, bytes: &[u8]) -> Span {
        self.arena.keep(bytes)
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
            .map(|e| (e.position, e.end));
        // A refusal resting on another caller's position waits until that record is durable.
        let (stored, stored_end) = (stored.map(|(p, _)| p), stored.map(|(_, end)| end));
        let found = self.positions.find(&self.arena[..], source);
        let own = found.map(|i| self.position_at(i));
        if let Some(stored) = stored.max(own).filter(|&stored| stored > position) {
            if own.is_none_or(|own| own <= position) {
                let end = stored_end.filter(|&end| !shared.log.is_durable(end));
                shared.wait_if_sync(end)?;
            }
            return Err(Error::PositionRegressed {
                source_len: source.len(),
                stored,
                requested: position,
            });
        }
        match found {
            Some(i) => {
                let bytes = self.positions.items[i].1.clone();
                self.arena[bytes].copy_from_slice(&position.to_le_bytes());
            }
            None => {
                self.grow(record::encoded_len(source.len(), 8, 0))?;
                let source = self.keep(source);
                let bytes = self.keep(&position.to_le_bytes());
                self.positions.push(&self.arena[..], source, bytes);
            }
        }
        Ok(())
    }

    fn position_at(&self, i: usize) -> u64 {
        le_u64(&self.arena[self.positions.items[i].1.clone()])
    }

    /// Room for one more record of `len` bytes, within the limits.
    fn grow(&mut self, len: usize) -> Result<()> {
        let records = self.records + 1;
        if records > MAX_TRANSACTION_RECORDS {
            return Err(self.too_large(records, self.bytes + len));
        }
        self.grow_bytes(len)?;
        self.records = records;
        Ok(())
    }

    fn grow_bytes(&mut self, len: usize) -> Result<()> {
        if self.bytes + len > self.max_bytes() {
            return Err(self.too_large(self.records + 1, self.bytes + len));
        }
        self.bytes += len;
        Ok(())
    }

    fn max_bytes(&self) -> usize {
        MAX_TRANSACTION_BYTES.min(self.store.shared.log.max_group_bytes())
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
    #[inline]
    pub fn commit(self) -> Result<()> {
        // Inlined, so the caller's transaction (about 1 KiB: its inline lists and arena) is not
        // copied into the call: the commit works on it where it is.
        self.commit_in_place()
    }

    fn commit_in_place(&self) -> Result<()> {
        let shared = &*self.store.shared;
        shared.check_live()?;
        let arena = &self.arena[..];
        // Each list's slice taken once: a `SmallVec` checks where its items are on every access.
        let (checks, reads) = (&self.checks.items[..], &self.reads.items[..]);
        let (writes, positions) = (&self.writes.items[..], &self.positions.items[..]);
        let inserts = || {
            checks.iter().filter_map(|(key, check)| {
                Some((&arena[key.clone()], check, check.insert.as_ref()?))
            })
        };
        debug_assert_eq!(
            self.records,
            inserts().count() + writes.len() + positions.len(),
            "the record count follows the lists"
        );
        if inserts().next().is_none() && writes.is_empty() && positions.is_empty() {
            // Read-only: its answers were given (and waited for) as it went.
            return Ok(());
        }
        let now = shared.clock.now_millis();

        // 1. Locks: the inserted keys' shards (ascending), then the state tables.
        // Pushed, not collected: `SmallVec`'s `extend` costs more than the rest of this for the
        // usual one or two keys.
        let mut shard_ids: SmallVec<[usize; INLINE_RECORDS]> = SmallVec::new();
        for (_, check, _) in inserts() {
            shard_ids.push(check.hash.shard);
        }
        if shard_ids.len() > 1 {
            shard_ids.sort_unstable();
            shard_ids.dedup();
        }
        let mut guards: SmallVec<[MutexGuard<'_, ShardTable>; INLINE_RECORDS]> = SmallVec::new();
        for &shard in &shard_ids {
            guards.push(shared.index.shards()[shard].lock());
        }
        let guard_of = |hash: &KeyHash| match shard_ids.len() {
            1 => 0,
            _ => shard_ids
                .binary_search(&hash.shard)
                .expect("every shard of the transaction is locked"),
        };
        let mut state = shared.state.lock();

        // 2. Validate.
        let mut buf = Vec::new();
        // Each insert's expired entry to replace, as of now.
        let mut replacing: SmallVec<[Option<Location>; INLINE_RECORDS]> = SmallVec::new();
        for (key, check, insert) in inserts() {
            let table = &guards[guard_of(&check.hash)];
            let (writes, checked_at) = insert.vacant_under;
            if table.writes() == writes && now >= checked_at {
                replacing.push(insert.replacing);
                continue;
            }
            match shared.probe(table, check.hash, key, now, &mut buf)? {
                Probe::Found(_) => {
                    return Err(conflict(format!(
                        "dedup key ({} bytes) was recorded or claimed by another caller first",
                        key.len()
                    )))
                }
                Probe::Vacant(slot) => replacing.push(table.expired_entry_at(slot, now)),
            }
        }
        for (key, observed) in reads {
            let key = &arena[key.clone()];
            if state.entries.get(key).map(|e| e.version) != *observed {
                return Err(conflict(format!(
                    "state key ({} bytes) was changed by another commit since it was read",
                    key.len()
                )));
            }
        }
        for (source, position) in positions {
            let (source, position) = (&arena[source.clone()], le_u64(&arena[position.clone()]));
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

        // 3. The group: inserts first, then state writes, then positions.
        let mut records: SmallVec<[Record<'_>; INLINE_RECORDS]> = SmallVec::new();
        for (key, _, insert) in inserts() {
            records.push(Record {
                kind: RecordKind::Insert,
                key,
                value: &arena[insert.value.clone()],
                expires_at_millis: now + insert.ttl_millis,
                fingerprint: &[],
                refresh_cap_millis: 0,
            });
        }
        let inserted = records.len();
        for (key, write) in writes {
            let key = &arena[key.clone()];
            match write {
                Some(value) => records.push(state_record(
                    RecordKind::StatePut,
                    key,
                    &arena[value.clone()],
                )),
                // Deleting what does not exist writes nothing (no tombstone to carry around).
                None if !state.entries.contains_key(key) => {}
                None => records.push(state_record(RecordKind::StateRemove, key, &[])),
            }
        }
        for (source, position) in positions {
            records.push(state_record(
                RecordKind::Position,
                &arena[source.clone()],
                &arena[position.clone()],
            ));
        }
        if records.is_empty() {
            // Only deletions of entries that do not exist: nothing to write.
            return Ok(());
        }
        let mut locations: SmallVec<[Location; INLINE_RECORDS]> =
            SmallVec::from_elem(0, records.len());
        let end = shared.log.append_group(&records, &mut locations)?;

        // 4. Apply.
        for (record, &at) in records[inserted..].iter().zip(&locations[inserted..]) {
            let record_end = at + record.encoded_len() as u64;
            match record.kind {
                RecordKind::StatePut => state.put(record.key, record.value, at, record_end),
                RecordKind::StateRemove => state.remove(record.key, at, record_end),
                _ => {
                    let position = record::position_value(record).expect("8 bytes");
                    state.set_position(record.key, position, at, record_end);
                }
            }
        }
        // Two keys of one shard may have probed the same vacant slot: each entry finds its
        // own place.
        for (((_, check, _), (record, &at)), &replacing) in inserts()
            .zip(records.iter().zip(&locations))
            .zip(&replacing)
        {
            let entry = Slot {
                tag: check.hash.tag,
                expires_at_secs: Slot::deadline_secs(record.expires_at_millis),
                location: at,
            };
            guards[guard_of(&check.hash)].put_new(entry, replacing, now);
        }
        // Handing released locations to the log's live counts takes the log's state lock (and
        // its lanes, whose counts it merges first), which the writer and maintenance contend
        // for: once per batch of commits, not per commit, and not while they hold it (waiting
        // for it cost about 4 % of a transaction's time in calls of a millisecond or more).
        // Counts that lag by a few records only make compaction a little later, and
        // maintenance settles them before it reads them.
        shared.settle_state_when(&mut state, RELEASE_BATCH);
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
        refresh_cap_millis: 0,
    }
}

/// A position kept in the arena (its record's value: 8 bytes, little-endian).
fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

fn conflict(reason: String) -> Error {
    Error::Conflict { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans stay valid and bytes unchanged when the arena moves from inline to the heap, and
    /// writes through a span land there.
    #[test]
    fn arena_keeps_bytes_across_the_inline_limit() {
        let mut arena = Arena::default();
        let pieces: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize % 13]).collect();
        let spans: Vec<Span> = pieces.iter().map(|piece| arena.keep(piece)).collect();
        assert!(arena.len() > INLINE_ARENA);
        for (piece, span) in pieces.iter().zip(&spans) {
            assert_eq!(&arena[span.clone()], &piece[..]);
        }
        arena[spans[3].clone()].fill(0xee);
        assert!(arena[spans[3].clone()].iter().all(|&b| b == 0xee));
        assert_eq!(&arena[spans[4].clone()], &pieces[4][..]);
    }
}
