//! Replay's index records, applied a chunk at a time and shard by shard.
//!
//! The checking thread of replay (see [`super::recover`]) judges every record (checksum, group,
//! seal, torn tail) and reduces each index record (insert, removal, claim, failure) to a
//! [`Pending`] entry in a [`Chunk`]; state records it applies itself. A full chunk is applied by
//! an applier thread while the checker fills the next one (or by the checker itself when the
//! segment is short). The chunk's records are grouped by shard (by the checker before it hands
//! the chunk over while the applier is busy, by the applier when it was waiting for the chunk:
//! whichever has time), so that consecutive records land in
//! one shard's table: its pages stay in the TLB and its lines in cache, where records in
//! log order would miss both once each (replay was bound by that miss). Before the first big
//! chunk of each segment is applied, every table is laid out for the live entries the rest of
//! the replay will put (that chunk's density of live entries per byte, times the bytes left),
//! so tables do not double on the way to their final size. (After a checkpoint the tables were
//! already laid out by its install for its entries and the same estimate, made from the first
//! records to replay, and the first chunk finds them large enough.)
//!
//! Invariants:
//! - A chunk holds records in log order, all judged intact by the checker before it is handed
//!   over; grouping by shard is stable, so a key's records (one shard) are applied in log order,
//!   and keys of different shards never interact in replay.
//! - Of the errors applying a chunk can meet (an earlier record of a candidate key that does not
//!   decode), the one reported is the first in log order: each shard stops at its first error,
//!   and the lowest offset of those wins, as a replay in log order would have found it. No later
//!   chunk is applied after an error.
//! - Sizing changes only table sizes, never an answer: it aims at nine tenths of the estimate,
//!   so a table is never laid out larger than growth entry by entry would have made it unless
//!   the first chunk is denser in live entries than the rest of the log.

use std::collections::BTreeMap;

use super::{read_replayed, Current, Tables};
use crate::error::Error;
use crate::index::{Index, KeyCheck, Probe, Slot};
use crate::log::segment::SegmentFile;
use crate::log::{location, Location};
use crate::record::{Record, RecordKind};

/// Records per chunk: enough that each of the default 256 shards gets a few hundred of them
/// (its table's pages are then walked once per chunk, not once per record), few enough that a
/// chunk (1.5 MiB) stays in the caches between being filled and being applied.
#[cfg(not(test))]
pub(super) const CHUNK_RECORDS: usize = 64 << 10;
/// Small in unit tests, so that their short segments span many chunks.
#[cfg(test)]
pub(super) const CHUNK_RECORDS: usize = 37;

/// How many records of a shard ahead of its apply a record's home slot is prefetched.
const PREFETCH_AHEAD: usize = 16;

/// An index record of the segment being replayed, reduced to what applying it needs (24 bytes:
/// a chunk's records are written and read twice, and a smaller entry lets a chunk hold more).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    /// The record's offset in its segment.
    offset: u32,
    tag: u32,
    shard: u32,
    key_len: u16,
    /// Where the key starts, from the record's offset (the header's length).
    key_from_offset: u8,
    kind: RecordKind,
    /// For a removal: the entries located before this are removed (see
    /// [`Record::removes_before`]); for the other kinds: the deadline, in milliseconds.
    bound: u64,
}
const _: () = assert!(std::mem::size_of::<Pending>() == 24);

impl Pending {
    fn key<'b>(&self, bytes: &'b [u8]) -> &'b [u8] {
        &bytes[self.offset as usize + usize::from(self.key_from_offset)..][..self.key_len as usize]
    }
}

/// Index records in log order, and the scratch space to group them by shard.
#[derive(Default)]
pub(super) struct Chunk {
    records: Vec<Pending>,
    by_shard: Vec<Pending>,
    /// Per shard, where its records start in `by_shard` (one more entry: the end).
    starts: Vec<usize>,
    /// Set on the chunk that sizes the index (see [`Chunk::size_the_index_for`]): the bytes of
    /// log the replay has left from this chunk's first record on, this one's included.
    sizes_for_bytes: Option<u64>,
    /// Whether `by_shard` and `starts` hold `records` grouped ([`Chunk::group_by_shard`]).
    grouped: bool,
}

impl Chunk {
    pub(super) fn with_capacity(records: usize) -> Chunk {
        Chunk {
            records: Vec::with_capacity(records),
            ..Chunk::default()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// The offset in its segment of the chunk's first record, if it has one.
    pub(super) fn first_offset(&self) -> Option<usize> {
        self.records.first().map(|record| record.offset as usize)
    }

    /// Makes applying this chunk lay the tables out first for the live entries the rest of the
    /// replay will put, `bytes` of log from this chunk's first record on, at this chunk's
    /// density of live entries per byte. Replay into tables of their final size skips every
    /// doubling on the way (a tenth of a full replay's time, and the largest doubling is the
    /// last), and a worst-case reopen does not double tables already laid out for the
    /// checkpoint's entries.
    pub(super) fn size_the_index_for(&mut self, bytes: u64) {
        self.sizes_for_bytes = Some(bytes);
    }

    /// The live entries the replay will add, estimated from this chunk (see
    /// [`Chunk::size_the_index_for`]); 0 when the chunk does not size the index.
    fn expected_new_entries(&mut self, now_millis: u64) -> u64 {
        let Some(bytes) = self.sizes_for_bytes.take() else {
            return 0;
        };
        let (Some(first), Some(last)) = (self.records.first(), self.records.last()) else {
            return 0;
        };
        let span = u64::from(last.offset - first.offset);
        if span == 0 {
            return 0;
        }
        // An insert (or claim, or failure) whose deadline has not passed takes an entry; a
        // removal or an expired insert does not. A key inserted twice is counted twice, which
        // only overestimates a log of re-inserts.
        let live = self
            .records
            .iter()
            .filter(|r| r.kind != RecordKind::Remove && r.bound > now_millis)
            .count() as u64;
        let expected = u128::from(live) * u128::from(bytes) / u128::from(span);
        // Nine tenths: an estimate a little high near a power of two would double every table
        // for nothing (a table of n entries is sized as one that grew to n); a little low
        // costs the shards above the mean one doubling at the end.
        u64::try_from(expected * 9 / 10).unwrap_or(u64::MAX)
    }

    /// Adds `record`, found at log location `at` (offset `offset` of the segment whose bytes
    /// are `bytes`: the record's key is a slice of them). Its key is hashed when the chunk is
    /// grouped by shard ([`Chunk::group_by_shard`]).
    pub(super) fn push(
        &mut self,
        bytes: &[u8],
        (at, offset): (Location, usize),
        record: &Record<'_>,
    ) {
        let key_start = record.key.as_ptr() as usize - bytes.as_ptr() as usize;
        self.records.push(Pending {
            offset: offset as u32,
            tag: 0,
            shard: 0,
            key_len: record.key.len() as u16,
            key_from_offset: u8::try_from(key_start - offset).expect("a header is short"),
            kind: record.kind,
            bound: if record.kind == RecordKind::Remove {
                record.removes_before(at)
            } else {
                record.expires_at_millis
            },
        });
    }

    /// Hashes the records' keys (their bytes are `bytes`) and orders the records by shard,
    /// keeping log order within each shard (a counting sort). A replay shared by two threads
    /// does this on the checking thread before it hands the chunk over while the applier is
    /// busy (with a large index, applying is the slower half: a cache miss per record), and
    /// leaves it to the applier when the applier waits for the chunk (with a small index,
    /// checking is the slower half).
    pub(super) fn group_by_shard(&mut self, index: &Index, bytes: &[u8]) {
        self.grouped = true;
        let shards = index.shards().len();
        self.starts.clear();
        self.starts.resize(shards + 1, 0);
        for record in &mut self.records {
            let hash = index.hash(record.key(bytes));
            (record.tag, record.shard) = (hash.tag, hash.shard as u32);
            self.starts[hash.shard + 1] += 1;
        }
        for shard in 0..shards {
            self.starts[shard + 1] += self.starts[shard];
        }
        let mut next = self.starts.clone();
        // Every place is written below; the copy only sizes the vector.
        self.by_shard.clear();
        self.by_shard.extend_from_slice(&self.records);
        for record in &self.records {
            let slot = &mut next[record.shard as usize];
            self.by_shard[*slot] = *record;
            *slot += 1;
        }
    }
}

/// What applying chunks found: expired inserts skipped, keys of claims replayed, and the first
/// error (by offset).
#[derive(Default)]
pub(super) struct Applied {
    pub(super) expired_records_skipped: u64,
    pub(super) claim_keys: Vec<Box<[u8]>>,
    pub(super) error: Option<(usize, Error)>,
}

/// Applies a chunk's records of the segment `current` to the index, shard by shard, and empties
/// the chunk. Does nothing once `applied` holds an error (see the module doc).
pub(super) fn apply_chunk(
    index: &Index,
    tables: &mut Tables<'_>,
    chunk: &mut Chunk,
    (earlier, current): (&BTreeMap<u32, SegmentFile>, Current<'_>),
    now_millis: u64,
    applied: &mut Applied,
) {
    if applied.error.is_some() || chunk.records.is_empty() {
        chunk.records.clear();
        chunk.grouped = false;
        return;
    }
    let shards = tables.len();
    // Clamped as `Config::expected_keys` is: a damaged length cannot ask for the moon.
    let expected = chunk.expected_new_entries(now_millis).min(1 << 30);
    if expected > 0 {
        let per_shard = usize::try_from(expected / shards as u64).unwrap_or(usize::MAX);
        for shard in 0..shards {
            tables.shard(shard).reserve(per_shard, now_millis);
        }
    }
    if !chunk.grouped {
        chunk.group_by_shard(index, current.bytes);
    }
    let mut buf = Vec::new();
    for shard in 0..shards {
        let run = &chunk.by_shard[chunk.starts[shard]..chunk.starts[shard + 1]];
        if run.is_empty() {
            continue;
        }
        let table = tables.shard(shard);
        for pending in run.iter().take(PREFETCH_AHEAD) {
            table.prefetch(pending.tag);
        }
        for (i, pending) in run.iter().enumerate() {
            if let Some(ahead) = run.get(i + PREFETCH_AHEAD) {
                table.prefetch(ahead.tag);
            }
            if let Err(error) = apply_one(table, pending, earlier, current, now_millis, &mut buf)
                .map(|claimed| match claimed {
                    Outcome::Claimed => {
                        applied.claim_keys.push(pending.key(current.bytes).into());
                    }
                    Outcome::Skipped => applied.expired_records_skipped += 1,
                    Outcome::Applied => {}
                })
            {
                let at = pending.offset as usize;
                if applied.error.as_ref().is_none_or(|(first, _)| at < *first) {
                    applied.error = Some((at, error));
                }
                break;
            }
        }
    }
    chunk.records.clear();
    chunk.grouped = false;
}

/// What one record did besides changing the index.
enum Outcome {
    Applied,
    /// A live claim: its key may be in doubt.
    Claimed,
    /// An insert whose deadline had passed, for a key with no live entry.
    Skipped,
}

/// Applies one index record: the log order is the per-key operation order, so the last insert
/// or removal of a key wins.
fn apply_one(
    table: &mut crate::index::ShardTable,
    pending: &Pending,
    earlier: &BTreeMap<u32, SegmentFile>,
    current: Current<'_>,
    now_millis: u64,
    buf: &mut Vec<u8>,
) -> crate::error::Result<Outcome> {
    let key = pending.key(current.bytes);
    let at = location(current.file.id, pending.offset);
    let probe = table.probe(pending.tag, now_millis, |candidate| {
        let other = read_replayed(earlier, Some(current), candidate.location, buf)?;
        Ok::<_, Error>(if other.key != key {
            KeyCheck::Other
        } else if other.expires_at_millis <= now_millis {
            KeyCheck::Expired
        } else {
            KeyCheck::Live
        })
    })?;
    // (Meaningless for a removal, which does not look at it.)
    let live = pending.bound > now_millis;
    let mut outcome = Outcome::Applied;
    if pending.kind == RecordKind::Claim && live {
        outcome = Outcome::Claimed;
    }
    let kind = match pending.kind {
        // A claim occupies its key like an insert until its lease ends, a failure until its
        // back-off ends.
        RecordKind::Claim | RecordKind::Failure => RecordKind::Insert,
        kind => kind,
    };
    match (kind, probe) {
        (RecordKind::Insert, Probe::Found(slot) | Probe::Vacant(slot)) if live => {
            let entry = Slot {
                tag: pending.tag,
                expires_at_secs: Slot::deadline_secs(pending.bound),
                location: at,
            };
            table.put_unscheduled(slot, entry, now_millis);
        }
        (RecordKind::Insert, Probe::Found(slot)) => table.remove(slot),
        // A removal hides only what was written before the removal it stands for (a copy or a
        // completion's shadow may come after a newer record of the key).
        (RecordKind::Remove, Probe::Found(slot)) => {
            if table.slot(slot).location < pending.bound {
                table.remove(slot);
            }
        }
        (RecordKind::Insert, Probe::Vacant(_)) => outcome = Outcome::Skipped,
        (RecordKind::Remove, Probe::Vacant(_)) => {}
        (_, _) => unreachable!("only index records are pending; claims are applied as inserts"),
    }
    Ok(outcome)
}
