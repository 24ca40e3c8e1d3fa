//! The log: one append-only stream of records laid over numbered segment files, with in-memory
//! append lanes and a single background writer that writes and fsyncs for everyone.
//!
//! An append reserves its bytes by moving the tail (`segment_id << 32 | offset`, one atomic
//! compare-and-swap; a record that does not fit the tail segment beside its seal goes to the
//! start of the next) and copies them into its thread's lane ([`Lane`]), holding the lane's lock
//! from before the reservation until the copy is done. No lock is shared by every append: on
//! several cores, appends share only the tail's cache line. The writer takes all lanes' records
//! at once (all lanes locked, then the tail read): everything below that tail was reserved and
//! copied, so the records it merges in location order follow each other with no gap, as one
//! lock's buffer would have laid them.
//!
//! **Chunks.** Even that line, moved between cores by every insert, cost a tenth of two threads'
//! time. So a lane that finds another lane's reservation between two of its own reserves room
//! for several single-key inserts at once (a chunk, [`OpenChunk`]) and places inserts in it
//! ([`Log::append_fenced`]); one thread alone never does. A chunk may then lie below records
//! other lanes placed since it was reserved, so an insert goes into it only at or after its
//! shard's *fence* (where the shard's latest insert ends, kept in the shard's table) and after
//! `direct_end` (where the latest record placed outside a chunk ends); every record of a key is
//! made under its shard's lock, so the insert lands after all of them. Otherwise, and when the
//! insert does not fit, the chunk is closed: its unused end becomes a Padding record (format 4)
//! and the insert goes to the tail. Anything else a lane appends closes its chunk first (a
//! lane's records stay in location order), and so do the writer's take and a checkpoint's
//! reading of the tail (every byte below the tail is then placed, and nothing is placed below
//! it later). `Sync` mode does not chunk: every commit would pad every open chunk. A lane
//! whose chunks the takes keep closing mostly unused (it appends rarely) pauses reserving
//! ahead for a number of inserts that doubles each time, so rare appenders pad next to nothing.
//!
//! Callers waiting for durability sleep in the commit queue (`commit`), each woken only once the
//! fsync covering its records returned. A batch's records are reserved as one piece where they
//! fit in the tail segment, a group's (a transaction's) always (`append_many`, `append_group`).
//!
//! A record's *location* is `segment_id << 32 | byte_offset`. Locations only grow, so "everything
//! before location L" is well defined across segments.
//!
//! Invariants:
//! - `durable <= written <= tail`: every byte before `written` is in the file (the OS has it),
//!   every byte before `durable` was covered by a completed fsync.
//! - Per key, location order is operation order: callers append a key's record while they hold
//!   its index shard's lock, and it lands after every earlier record of the shard (a later
//!   reservation gets a later location; a chunk takes an insert only past the shard's fence and
//!   `direct_end`).
//! - An open chunk's unused end (`end - next`) is 0 or at least a padding record long, and a
//!   closed chunk has none: everything below the tail that the writer takes is a record.
//! - A location handed out by [`Log::append`] is readable at once (from its lane, the buffer
//!   being written, or the file) and never changes meaning. The written hint (a copy of
//!   `written` for checks without the state lock) is published after the write it stands for,
//!   so a read below it goes to the file without the state lock; above it, the state lock
//!   decides where the record is.
//! - A segment is fsynced before the log moves on to the next one, so only the newest segment can
//!   hold bytes that a crash may tear.
//! - After a failed write or fsync the log is poisoned: `durable` never moves again, every waiter
//!   and every later append gets [`Error::Poisoned`] (an append racing with the poisoning may
//!   still be placed; it is never written, and no `Sync` caller is told it is durable).
//! - Lock order: a shard's lock, then the state lock, then lanes in index order; an append holds
//!   only its lane (under its shard's lock).

mod commit;
mod prepare;
pub(crate) mod segment;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64 as CounterU64, AtomicUsize as CounterUsize, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicBool, AtomicU64, Condvar, Mutex, MutexGuard, RwLock};

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::io::Storage;
use crate::record::{self, Record, SEAL_RECORD_LEN, SEGMENT_HEADER_LEN};
use segment::SegmentFile;

pub(crate) use writer::{spawn_writer, WriterHandle};

#[cfg(not(loom))]
thread_local! {
    /// Each appending thread's scratch buffer for one encoded record (reused: no allocation per
    /// append).
    static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's buffer for [`with_encoded`]: not `ENCODED`, which appends inside `then`
    /// (a sliding duplicate's new record) borrow.
    static PREPARED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Which of this thread's scratch buffers to encode into (see the two thread-locals above).
#[derive(Clone, Copy)]
enum Scratch {
    Append,
    Prepared,
}

/// Runs `work` with one of this thread's scratch buffers, reused across calls (no allocation
/// per record). Under loom, whose threads are coroutines of one OS thread, a fresh vector.
#[inline]
fn with_scratch<T>(scratch: Scratch, work: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    #[cfg(not(loom))]
    {
        let buffer = match scratch {
            Scratch::Append => &ENCODED,
            Scratch::Prepared => &PREPARED,
        };
        buffer.with(|buffer| work(&mut buffer.borrow_mut()))
    }
    #[cfg(loom)]
    {
        let _ = scratch;
        work(&mut Vec::new())
    }
}

/// Runs `then` with `record` encoded (header, checksum and all) in a scratch buffer of this
/// thread's, for [`Log::append_encoded`]: the single-key path encodes while the key's index
/// slot is on its way from memory. `then` must not call `with_encoded` again (it may append).
#[inline]
pub(crate) fn with_encoded<T>(record: &Record<'_>, then: impl FnOnce(&[u8]) -> T) -> T {
    with_scratch(Scratch::Prepared, |encoded| {
        encoded.clear();
        record::encode_into(encoded, record);
        then(encoded)
    })
}

/// Where a record starts: `segment_id << 32 | offset`. Zero is never a record's location.
pub(crate) type Location = u64;

pub(crate) fn location(segment_id: u32, offset: u32) -> Location {
    (u64::from(segment_id) << 32) | u64::from(offset)
}

pub(crate) fn segment_of(location: Location) -> u32 {
    (location >> 32) as u32
}

pub(crate) fn offset_of(location: Location) -> u32 {
    location as u32
}

/// A run of appended bytes bound for one segment, contiguous from `start_offset`.
#[derive(Debug)]
struct Chunk {
    segment_id: u32,
    start_offset: u32,
    bytes: Vec<u8>,
    /// The writer must create this segment (after fsyncing the previous one) before writing.
    opens_segment: bool,
}

impl Chunk {
    fn holds(&self, segment_id: u32, offset: u32) -> bool {
        self.segment_id == segment_id
            && offset >= self.start_offset
            && ((offset - self.start_offset) as usize) < self.bytes.len()
    }
}

/// What the log knows about one segment's contents, for reclamation decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentStats {
    /// Records in the segment (inserts, claims and removals).
    pub(crate) records: u64,
    /// Removal records in the segment, and their bytes. Compaction counts them as kept (it
    /// copies a tombstone forward while it may still hide something), so a segment of
    /// tombstones is not compacted over and over; it is deleted whole once they all expired.
    pub(crate) tombstones: u64,
    pub(crate) tombstone_bytes: u64,
    /// Bytes of the segment file (header and records; 0 while unknown).
    pub(crate) bytes: u64,
    /// Index entries, state entries and positions that point into the segment.
    pub(crate) live: u64,
    /// The state entries and positions among `live`.
    pub(crate) state_live: u64,
    /// The latest deadline of any record in it, rounded up to whole seconds: once the clock
    /// passes it, nothing in the segment can be live or needed.
    pub(crate) max_deadline_secs: u32,
    /// The latest deadline of any record in it but state entries and positions (which have
    /// none: `live` says when they stop being needed), rounded up to whole seconds: once the
    /// clock passes it and `state_live` is 0, nothing in the segment is needed. Not kept in
    /// checkpoints: a segment loaded from one has `max_deadline_secs` here.
    pub(crate) max_deadline_but_state_secs: u32,
    /// The earliest deadline of any record in it (whole seconds; `u32::MAX` while empty).
    pub(crate) min_deadline_secs: u32,
}

impl Default for SegmentStats {
    fn default() -> Self {
        SegmentStats {
            records: 0,
            tombstones: 0,
            tombstone_bytes: 0,
            bytes: 0,
            live: 0,
            state_live: 0,
            max_deadline_secs: 0,
            max_deadline_but_state_secs: 0,
            min_deadline_secs: u32::MAX,
        }
    }
}

impl SegmentStats {
    pub(crate) fn add_record(&mut self, record: &Record<'_>) {
        if matches!(
            record.kind,
            record::RecordKind::Seal | record::RecordKind::Padding
        ) {
            return;
        }
        self.records += 1;
        if matches!(
            record.kind,
            record::RecordKind::Remove | record::RecordKind::StateRemove
        ) {
            self.tombstones += 1;
            self.tombstone_bytes += record.encoded_len() as u64;
        }
        if record.kind == record::RecordKind::Group {
            // Needed by nothing once written: no deadline to keep the segment for.
            return;
        }
        let deadline = record::deadline_secs(record.expires_at_millis);
        self.max_deadline_secs = self.max_deadline_secs.max(deadline);
        self.min_deadline_secs = self.min_deadline_secs.min(deadline);
        if !is_state_entry(record.kind) {
            self.max_deadline_but_state_secs = self.max_deadline_but_state_secs.max(deadline);
        }
    }

    /// Adds the stats of more records of the segment (a lane's, see `Lane::stats`).
    fn absorb(&mut self, more: &SegmentStats) {
        self.records += more.records;
        self.tombstones += more.tombstones;
        self.tombstone_bytes += more.tombstone_bytes;
        self.bytes = self.bytes.max(more.bytes);
        self.live += more.live;
        self.state_live += more.state_live;
        self.max_deadline_secs = self.max_deadline_secs.max(more.max_deadline_secs);
        self.max_deadline_but_state_secs = self
            .max_deadline_but_state_secs
            .max(more.max_deadline_but_state_secs);
        self.min_deadline_secs = self.min_deadline_secs.min(more.min_deadline_secs);
    }

    /// Counts a record just appended: as [`SegmentStats::add_record`], and live too if it is
    /// one the caller puts into the index (an insert, claim or failure, under its shard lock) or
    /// into the state tables (a state entry or position).
    pub(crate) fn add_appended(&mut self, record: &Record<'_>) {
        self.add_record(record);
        if matches!(
            record.kind,
            record::RecordKind::Insert
                | record::RecordKind::Claim
                | record::RecordKind::Failure
                | record::RecordKind::StatePut
                | record::RecordKind::Position
        ) {
            self.live += 1;
        }
        if is_state_entry(record.kind) {
            self.state_live += 1;
        }
    }

    /// Whether nothing in the segment is needed any more: every record in it has expired, or
    /// every record but state entries and positions has, and no state entry or position points
    /// into it (the records that replaced them must then be durable before it goes).
    pub(crate) fn unneeded(&self, now_millis: u64) -> bool {
        let passed = |secs: u32| u64::from(secs) * 1000 <= now_millis;
        passed(self.max_deadline_secs)
            || (self.state_live == 0 && passed(self.max_deadline_but_state_secs))
    }

    /// The share of the segment's bytes that compaction would copy: its live entries (at the
    /// average size of its other records) and its tombstones (which it copies while they may
    /// still hide an older record), except in the oldest segment, whose tombstones hide nothing
    /// that could be replayed and are dropped. By bytes, not records: a few small tombstones
    /// among large dead records must not keep a segment from being reclaimed.
    pub(crate) fn kept_share(&self, oldest: bool) -> f64 {
        let others = self.records.saturating_sub(self.tombstones).max(1);
        let bytes = self.bytes.max(self.tombstone_bytes + others);
        let other_bytes = (bytes - self.tombstone_bytes) as f64;
        let live_bytes = other_bytes * self.live.min(others) as f64 / others as f64;
        let tombstone_bytes = if oldest {
            0.0
        } else {
            self.tombstone_bytes as f64
        };
        (live_bytes + tombstone_bytes) / bytes as f64
    }

    /// Whether copying the segment's live records forward beats waiting for them to expire:
    /// not once the clock is past the middle of the span of its deadlines, when its records
    /// expire on their own sooner than they took to arrive (a single-TTL workload then deletes
    /// every segment whole and never copies).
    pub(crate) fn worth_compacting(&self, now_millis: u64) -> bool {
        if self.min_deadline_secs > self.max_deadline_secs {
            return true;
        }
        let max = u64::from(self.max_deadline_secs) * 1000;
        let min = u64::from(self.min_deadline_secs) * 1000;
        max.saturating_sub(now_millis) > (max - min) / 2
    }
}

/// Whether records of `kind` set a state entry or a position: they have no deadline, and live
/// until a later record replaces them.
fn is_state_entry(kind: record::RecordKind) -> bool {
    matches!(
        kind,
        record::RecordKind::StatePut | record::RecordKind::Position
    )
}

/// A sealed segment's stats, as maintenance sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SealedSegment {
    pub(crate) id: u32,
    pub(crate) stats: SegmentStats,
}

#[derive(Debug)]
struct LogState {
    /// Bytes the writer is writing now; readable until `written` passes them.
    in_flight: Option<Arc<Vec<Chunk>>>,
    written: Location,
    durable: Location,
    /// A `flush` asks the writer to make everything before this location durable.
    flush_target: Location,
    poisoned: Option<String>,
    shutting_down: bool,
    spare_buffers: Vec<Vec<u8>>,
    /// Stats of every segment, the lanes' merged in (see [`Lane::stats`]).
    segment_stats: BTreeMap<u32, SegmentStats>,
    /// Bytes appended since the log was opened, the lanes' merged in.
    bytes_appended: u64,
}

/// How far past a lane's last placed byte [`Lane::place`] claims the lines of the next appends
/// (about five single-key records: far enough that the lines are there when they come).
const CLAIM_AHEAD_BYTES: usize = 256;
/// How far past a lane's last run [`Lane::place`] claims the line of the next (one run per
/// append).
const CLAIM_AHEAD_RUNS: usize = 6;
/// The most bytes one append claims ahead (a transaction's group spans several lines; a batch's
/// records, copied in one piece, need none: the copy streams).
const CLAIM_MAX_BYTES: usize = 512;
/// The cache line's size, the unit of a claim.
const LINE_BYTES: usize = 64;

/// One append lane: records appended through it that the writer has not taken yet, in the
/// order of their locations (an append reserves its place at the tail and copies its bytes here
/// under the lane's lock, so a lane's reservations are in order).
///
/// Threads append through a lane of their own (see [`Log::lane`]): appends on different threads
/// share no lock and, but for the tail they reserve from, no cache line. The writer takes every
/// lane's records at once, all lanes locked, so what it takes ends at the tail it read then
/// with no gap: every reservation below it was made, and its bytes copied, under a lane lock.
#[derive(Debug, Default)]
struct Lane {
    runs: Vec<Run>,
    bytes: Vec<u8>,
    /// Emptied buffers for `runs` and `bytes`, swapped in when the writer takes them (so that
    /// the lane's lock is held only for the swap, and its next appends fill memory already
    /// mapped).
    spare_runs: Vec<Run>,
    spare_bytes: Vec<u8>,
    /// The stats of the records appended through the lane since the writer last took them, per
    /// segment (the tail's, and the next after a roll): merged into [`LogState::segment_stats`]
    /// by the writer's take and before any read or release of the stats, every lane visited, so
    /// a release never subtracts from a count that misses its record's append (the append
    /// finished, in some lane, before the record could be released).
    stats: Vec<(u32, SegmentStats)>,
    appended: u64,
    /// Bytes placed since the back-pressure was last checked (see [`Log::lock_lane`]).
    unchecked: usize,
    /// The space the lane reserved ahead for its single-key inserts, filled from its start
    /// ([`Log::append_fenced`]); empty when none is open.
    chunk: OpenChunk,
    /// How many bytes the lane reserves for its next chunk: 0 (each insert reserves its own
    /// bytes) until another lane is seen reserving between two of its reservations, then
    /// between [`MIN_CHUNK_BYTES`] and [`MAX_CHUNK_BYTES`] as its chunks fill or go unused.
    chunk_target: u32,
    /// Where the lane's latest reservation ended: the tail, unless another lane reserved since.
    reserved_end: Location,
    /// Inserts the lane reserves one by one before it may reserve ahead again, after a chunk
    /// that the writer's take (or a checkpoint) closed mostly unused: the lane appends too
    /// rarely for chunks to fill between two takes.
    chunk_cooldown: u32,
    /// The next such pause: doubled by each chunk a take closes mostly unused, halved by each
    /// chunk that fills (between [`MIN_CHUNK_COOLDOWN`] and [`MAX_CHUNK_COOLDOWN`]).
    chunk_backoff: u32,
}

/// A lane's open chunk: `next..end` is reserved and not yet filled. Invariant: `end - next` is 0
/// or at least [`record::MIN_PADDING_LEN`], so that what is left can always be padded.
#[derive(Debug, Default, Clone, Copy)]
struct OpenChunk {
    next: Location,
    end: Location,
    /// Bytes the chunk was reserved with.
    size: u32,
}

/// Why a fenced insert could not go into its lane's open chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkMiss {
    /// No chunk is open.
    None,
    /// The record does not fit what is left (or would leave less than a padding record).
    Full,
    /// The chunk's next place is below the fence: the record must go later in the log.
    Fenced,
}

/// The smallest chunk a lane reserves (about three 16-byte-key inserts).
const MIN_CHUNK_BYTES: u32 = 128;
/// The shortest and longest pause in reserving ahead (in inserts) after a take closed a chunk
/// mostly unused. Two threads each inserting a few hundred keys a second would otherwise
/// reserve a chunk, fill part of it, and pad the rest at the writer's next take, over and over:
/// half the log padding. With the pause doubling, such a lane ends up reserving ahead once in
/// thousands of inserts.
const MIN_CHUNK_COOLDOWN: u32 = 64;
const MAX_CHUNK_COOLDOWN: u32 = 4096;

/// Why a lane's open chunk is closed (see [`Lane::close_chunk`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkClose {
    /// An insert did not fit, or met its fence, or the lane appends outside a chunk.
    Append,
    /// The writer takes the lanes, or a checkpoint reads the tail: a matter of time, not of
    /// the lane's appends.
    Take,
}
/// The largest chunk a lane reserves (about eleven 16-byte-key inserts). Larger chunks met their
/// fence more often than they filled in a model of two to eight threads over 256 shards (a
/// fenced chunk is padded: disk spent for nothing), and the tail they spare is already touched
/// only once per several inserts at this size.
const MAX_CHUNK_BYTES: u32 = 512;

/// Records placed back to back at `at` in the log, held at `start..start + len` of a lane's
/// bytes.
#[derive(Debug, Clone, Copy)]
struct Run {
    at: Location,
    start: usize,
    len: usize,
}

impl Lane {
    /// Copies `bytes` (records back to back) that were reserved at `at`.
    #[inline(always)]
    fn place(&mut self, at: Location, bytes: &[u8]) {
        self.runs.push(Run {
            at,
            start: self.bytes.len(),
            len: bytes.len(),
        });
        self.bytes.extend_from_slice(bytes);
        // The next appends' lines, claimed for writing now (see `hint::prefetch_write`: the
        // buffers were last read by the writer, on the other core), within the capacity (the
        // buffers keep theirs from one fill to the next). Each append claims as many bytes as
        // it placed, `CLAIM_AHEAD_BYTES` on, so appends of one size claim between them every
        // line the later ones fill; a record within a line (a single-key append) claims just
        // the line its end falls in, without the loop.
        let claim_end = (self.bytes.len() + CLAIM_AHEAD_BYTES).min(self.bytes.capacity());
        let base = self.bytes.as_ptr();
        if bytes.len() <= LINE_BYTES {
            if claim_end < self.bytes.capacity() {
                crate::hint::prefetch_write(base.wrapping_add(claim_end));
            }
        } else {
            let claim_from = claim_end.saturating_sub(bytes.len().min(CLAIM_MAX_BYTES));
            // From the start of `claim_from`'s line (by address: the buffer need not be
            // aligned).
            let misaligned = (base as usize).wrapping_add(claim_from) % LINE_BYTES;
            let mut line = claim_from.wrapping_sub(misaligned);
            while line < claim_end {
                crate::hint::prefetch_write(base.wrapping_add(line));
                line = line.wrapping_add(LINE_BYTES);
            }
        }
        let next_run = self.runs.len() + CLAIM_AHEAD_RUNS;
        if next_run < self.runs.capacity() {
            crate::hint::prefetch_write(self.runs.as_ptr().wrapping_add(next_run));
        }
        self.appended += bytes.len() as u64;
        self.unchecked += bytes.len();
    }

    /// Counts `record`, placed at `at..end`, in its segment's stats.
    #[inline]
    fn count(&mut self, record: &Record<'_>, at: Location, end: Location) {
        self.stats_of(at, end).add_appended(record);
    }

    /// Takes `len` bytes from the open chunk for a record that must lie at or after `fence()`
    /// (asked only if a chunk is open: a lane that does not chunk reads no shared line for it).
    #[inline]
    fn take_from_chunk(
        &mut self,
        len: u32,
        fence: impl FnOnce() -> Location,
    ) -> Result<Location, ChunkMiss> {
        let chunk = &mut self.chunk;
        if chunk.next == chunk.end {
            // Filled to its end (and not closed since), or none.
            return Err(if chunk.size > 0 {
                ChunkMiss::Full
            } else {
                ChunkMiss::None
            });
        }
        if chunk.next < fence() {
            return Err(ChunkMiss::Fenced);
        }
        let left = chunk.end - chunk.next;
        let len = u64::from(len);
        if len > left || (len < left && left - len < record::MIN_PADDING_LEN as u64) {
            return Err(ChunkMiss::Full);
        }
        let at = chunk.next;
        chunk.next += len;
        Ok(at)
    }

    /// Closes the open chunk, if any: what is left of it becomes a padding record, so that the
    /// log has no gap. A chunk left at least half unused halves the lane's next one; if a take
    /// closed it, the lane also pauses reserving ahead (see [`MIN_CHUNK_COOLDOWN`]).
    fn close_chunk(&mut self, why: ChunkClose) {
        let chunk = std::mem::take(&mut self.chunk);
        let left = chunk.end - chunk.next;
        if left == 0 {
            return;
        }
        debug_assert!(left >= record::MIN_PADDING_LEN as u64, "{left} bytes left");
        self.runs.push(Run {
            at: chunk.next,
            start: self.bytes.len(),
            len: left as usize,
        });
        record::encode_padding(&mut self.bytes, left as usize);
        self.appended += left;
        self.stats_of(chunk.next, chunk.end);
        if left * 2 >= u64::from(chunk.size) {
            self.chunk_target /= 2;
            if self.chunk_target < MIN_CHUNK_BYTES || why == ChunkClose::Take {
                self.chunk_target = 0;
            }
            if why == ChunkClose::Take {
                self.chunk_backoff =
                    (self.chunk_backoff * 2).clamp(MIN_CHUNK_COOLDOWN, MAX_CHUNK_COOLDOWN);
                self.chunk_cooldown = self.chunk_backoff;
            }
        }
    }

    /// The stats of the segment of records placed at `at..end` (one segment), their bytes
    /// counted, for the caller to count each record.
    #[inline]
    fn stats_of(&mut self, at: Location, end: Location) -> &mut SegmentStats {
        let segment = segment_of(at);
        if self.stats.last().is_none_or(|(id, _)| *id != segment) {
            self.stats.push((segment, SegmentStats::default()));
        }
        let stats = &mut self.stats.last_mut().expect("ensured above").1;
        // Appends through one lane come in location order: the last is the furthest.
        stats.bytes = u64::from(offset_of(end));
        stats
    }

    /// The bytes of the record at `at`, if this lane holds it.
    fn find(&self, at: Location) -> Option<&[u8]> {
        let after = self.runs.partition_point(|run| run.at <= at);
        let run = self.runs.get(after.checked_sub(1)?)?;
        if segment_of(run.at) != segment_of(at) || at - run.at >= run.len as u64 {
            return None;
        }
        let from = run.start + (at - run.at) as usize;
        Some(&self.bytes[from..run.start + run.len])
    }
}

#[cfg(not(loom))]
static NEXT_LANE_TICKET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cfg(not(loom))]
thread_local! {
    /// This thread's lane number (modulo a log's lane count): threads take numbers in turn.
    static LANE_TICKET: usize = NEXT_LANE_TICKET.fetch_add(1, Ordering::Relaxed);
}

/// This thread's lane number, before the modulo.
fn lane_ticket() -> usize {
    #[cfg(not(loom))]
    {
        LANE_TICKET.with(|ticket| *ticket)
    }
    #[cfg(loom)]
    {
        // Each loom thread of a model takes the next number, as threads do outside loom: the
        // models' appenders use different lanes.
        loom::lazy_static! {
            static ref NEXT: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
        }
        loom::thread_local! {
            static TICKET: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        TICKET.with(|ticket| *ticket)
    }
}

/// Counters the log keeps for [`crate::Stats`].
#[derive(Debug, Default)]
pub(crate) struct LogCounters {
    pub(crate) fsyncs: CounterU64,
    pub(crate) writes: CounterU64,
    /// Fsync latencies and group-commit sizes (see `histogram`).
    pub(crate) commits: crate::histogram::CommitHistograms,
}

#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    durability: Durability,
    segment_size_bytes: u32,
    write_buffer_bytes: usize,
    max_pending_bytes: usize,
    /// The writer's side, durability, poison and segment stats. Appends do not take it (they
    /// take a lane and reserve from `tail`); the writer, reads of records not yet written and
    /// the stats take it, and then lanes: lock order state, then lanes in index order.
    state: CachePadded<Mutex<LogState>>,
    /// Where the next record goes (`segment_id << 32 | offset`); appends reserve their bytes by
    /// moving it. Only grows.
    tail: CachePadded<AtomicU64>,
    /// Where the latest record appended other than by [`Log::append_fenced`] ends (the largest
    /// such end): no fenced insert goes into a chunk below it (see the module doc). Written
    /// only when chunks are on.
    direct_end: CachePadded<AtomicU64>,
    /// Whether lanes reserve chunks for fenced inserts: in every mode but `Sync`, where each
    /// commit would pad every open chunk (and in tests that rotate the lanes).
    chunked: bool,
    /// The next lane an append takes when lanes rotate (tests); `None`: each thread its own.
    next_lane: Option<CounterUsize>,
    /// The append lanes (a power of two of them; see [`Lane`]).
    lanes: Box<[CachePadded<Mutex<Lane>>]>,
    /// A copy of `state.written`, for the appenders' back-pressure check without the lock.
    written_hint: CachePadded<AtomicU64>,
    /// The writer sleeps on this until there is work.
    work_ready: Condvar,
    /// Appenders held back by a full buffer sleep on this (with `state`) until the writer
    /// drained it.
    drained: Condvar,
    /// Callers waiting for durability, each woken when its own records are covered.
    commits: commit::CommitQueue,
    segments: RwLock<BTreeMap<u32, Arc<SegmentFile>>>,
    /// A copy of `state.durable`, stored after it, for the lock-free fast path of `is_durable`.
    durable_hint: CachePadded<AtomicU64>,
    /// Set once the log is poisoned, for a lock-free check on every call.
    poisoned_hint: CachePadded<AtomicBool>,
    pub(crate) counters: LogCounters,
    /// The next segment's preparer, in `Sync` and `Periodic` mode when preallocation is on.
    preparer: Option<Arc<prepare::Preparer>>,
}

/// Options the log takes from the store's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogOptions {
    pub(crate) durability: Durability,
    pub(crate) segment_size_bytes: u32,
    pub(crate) write_buffer_bytes: usize,
    /// Keep the next segment prepared (pre-zeroed) in the fsync-bound modes (see `prepare`).
    pub(crate) preallocate: bool,
    /// How many append lanes (rounded up to a power of two; 0: the default, [`lane_count`]).
    /// The loom models of the commit queue use one, which keeps their state space to the
    /// hand-off they check; the lanes' own model uses two.
    pub(crate) lanes: usize,
    /// Each append takes the next lane in turn, and lanes reserve chunks in every mode (see
    /// [`crate::Config::rotate_append_lanes_for_testing`]).
    pub(crate) rotate_lanes: bool,
}

/// The bytes of a group: its records.
fn group_body_len(records: &[Record<'_>]) -> usize {
    records.iter().map(Record::encoded_len).sum()
}

/// How many bytes a lane places between two back-pressure checks (see [`Log::lock_lane`]): the
/// limit may be overrun by this much per lane.
const BACK_PRESSURE_CHECK_BYTES: usize = 64 << 10;

/// How many lanes a log has: a power of two, twice the cores (few threads share one).
fn lane_count() -> usize {
    #[cfg(not(loom))]
    let cores = std::thread::available_parallelism().map_or(4, std::num::NonZeroUsize::get);
    #[cfg(loom)]
    let cores: usize = 1;
    (2 * cores).clamp(2, 256).next_power_of_two()
}

/// About how many bytes lie between locations `from` and `to`: exact within a segment; across
/// a boundary, the older segment's remainder counts as if it ended at the configured size (a
/// segment overfilled by a record larger than that counts short). 0 if `to <= from`.
fn bytes_between(from: Location, to: Location, segment_size: u32) -> usize {
    if to <= from {
        return 0;
    }
    let segments = u64::from(segment_of(to) - segment_of(from));
    let bytes = (segments * u64::from(segment_size) + u64::from(offset_of(to)))
        .saturating_sub(u64::from(offset_of(from)));
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Moves a lane's stats and appended bytes into the state's.
fn merge_lane_stats(state: &mut LogState, lane: &mut Lane) {
    for (segment, stats) in lane.stats.drain(..) {
        state
            .segment_stats
            .entry(segment)
            .or_default()
            .absorb(&stats);
    }
    state.bytes_appended += std::mem::take(&mut lane.appended);
}

impl Log {
    /// A log over already-recovered segments; appends continue in `tail` at `tail_offset`.
    ///
    /// Everything in `segments` up to the tail is durable (recovery read it from the files).
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        dir: &Path,
        options: LogOptions,
        segments: Vec<SegmentFile>,
        mut segment_stats: BTreeMap<u32, SegmentStats>,
        tail_offset: u32,
    ) -> Log {
        let tail_segment = segments.last().expect("recovery leaves a tail segment").id;
        assert!(tail_offset as usize >= SEGMENT_HEADER_LEN);
        let tail = location(tail_segment, tail_offset);
        let preparer =
            (options.preallocate && options.durability != Durability::Never).then(|| {
                Arc::new(prepare::Preparer::new(
                    Arc::clone(&storage),
                    dir.to_path_buf(),
                    u64::from(options.segment_size_bytes),
                ))
            });
        Log {
            dir: dir.to_path_buf(),
            storage,
            durability: options.durability,
            segment_size_bytes: options.segment_size_bytes,
            write_buffer_bytes: options.write_buffer_bytes,
            max_pending_bytes: (options.write_buffer_bytes * 16).max(16 << 20),
            state: CachePadded::new(Mutex::new(LogState {
                in_flight: None,
                written: tail,
                durable: tail,
                flush_target: 0,
                poisoned: None,
                shutting_down: false,
                spare_buffers: Vec::new(),
                segment_stats: {
                    segment_stats.entry(tail_segment).or_default();
                    segment_stats
                },
                bytes_appended: 0,
            })),
            tail: CachePadded::new(AtomicU64::new(tail)),
            direct_end: CachePadded::new(AtomicU64::new(tail)),
            chunked: options.durability != Durability::Sync || options.rotate_lanes,
            next_lane: options.rotate_lanes.then(|| CounterUsize::new(0)),
            lanes: (0..match options.lanes {
                0 => lane_count(),
                lanes => lanes.next_power_of_two(),
            })
                .map(|_| CachePadded::new(Mutex::new(Lane::default())))
                .collect(),
            written_hint: CachePadded::new(AtomicU64::new(tail)),
            work_ready: Condvar::new(),
            drained: Condvar::new(),
            commits: commit::CommitQueue::new(),
            segments: RwLock::new(segments.into_iter().map(|s| (s.id, Arc::new(s))).collect()),
            durable_hint: CachePadded::new(AtomicU64::new(tail)),
            poisoned_hint: CachePadded::new(AtomicBool::new(false)),
            counters: LogCounters::default(),
            preparer,
        }
    }

    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    /// Appends `record`; returns its location and the location just past it.
    ///
    /// Does no I/O: the bytes go to the write buffer, which the writer drains. Waits only when
    /// the buffer is over its limit (back-pressure) .
    pub(crate) fn append(&self, record: &Record<'_>) -> Result<(Location, Location)> {
        // Encoding and the checksum do not depend on where the record goes: do them before
        // taking the lane, so that it covers only the reservation and a copy.
        with_scratch(Scratch::Append, |encoded| {
            encoded.clear();
            record::encode_into(encoded, record);
            self.append_encoded(record, encoded)
        })
    }

    /// [`Log::append`] of `record` already encoded (by [`with_encoded`]) as `encoded`.
    pub(crate) fn append_encoded(
        &self,
        record: &Record<'_>,
        encoded: &[u8],
    ) -> Result<(Location, Location)> {
        debug_assert_eq!(encoded.len(), record.encoded_len());
        let len = encoded.len() as u32;
        let mut lane = self.lock_lane_direct()?;
        let at = self.reserve(len, len)?;
        let end = at + u64::from(len);
        lane.place(at, encoded);
        lane.count(record, at, end);
        self.appended_directly(&mut lane, end);
        drop(lane);
        self.wake_writer_if_full(end);
        Ok((at, end))
    }

    /// Appends a key's new entry record (a single-key insert, already encoded as `encoded`) under
    /// the lock of its index shard, whose `fence` (where the shard's latest fenced insert ended)
    /// it moves past the record. As [`Log::append_encoded`], but when other lanes reserve in
    /// between this lane's reservations (several threads appending), the lane reserves space
    /// for several inserts at a time and places them in it: at or after the fence, and after
    /// every record appended otherwise, so that per key the log's order is still the
    /// operations' (see the module doc).
    pub(crate) fn append_fenced(
        &self,
        record: &Record<'_>,
        encoded: &[u8],
        fence: &mut Location,
    ) -> Result<(Location, Location)> {
        if !self.chunked {
            let (at, end) = self.append_encoded(record, encoded)?;
            *fence = end;
            return Ok((at, end));
        }
        debug_assert_eq!(encoded.len(), record.encoded_len());
        let len = encoded.len() as u32;
        let mut lane = self.lock_lane()?;
        // Every record of the shard (its fenced inserts, and the others, which all end by
        // `direct_end`: they were appended under the shard's lock, held now) must come first.
        let floor = || (*fence).max(self.direct_end.load(Ordering::Acquire));
        let at = match lane.take_from_chunk(len, floor) {
            Ok(at) => at,
            Err(miss) => {
                if miss == ChunkMiss::Full {
                    // The lane appends often enough to fill its chunks.
                    lane.chunk_target =
                        (lane.chunk_target * 2).clamp(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES);
                    lane.chunk_backoff = (lane.chunk_backoff / 2).max(MIN_CHUNK_COOLDOWN);
                }
                lane.close_chunk(ChunkClose::Append);
                self.reserve_for_insert(&mut lane, len)?
            }
        };
        debug_assert!(at >= *fence, "a fenced insert at {at:#x}, below its fence");
        let end = at + u64::from(len);
        lane.place(at, encoded);
        lane.count(record, at, end);
        drop(lane);
        *fence = end;
        self.wake_writer_if_full(end);
        Ok((at, end))
    }

    /// Reserves at the tail for a fenced insert of `len` bytes: a chunk, with the insert at its
    /// start, if the lane reserves ahead (and the chunk holds the insert and a padding record),
    /// else the insert's bytes alone. A lane that does not yet reserve ahead starts to when it
    /// finds that another lane reserved since its own latest reservation.
    fn reserve_for_insert(&self, lane: &mut Lane, len: u32) -> Result<Location> {
        // A whole number of records of this one's length: inserts of one size (the common
        // case) fill the chunk to its end, with no padding.
        let chunk = lane.chunk_target / len * len;
        let (at, reserved) = if chunk >= 2 * len {
            let at = self.reserve(chunk, chunk)?;
            lane.chunk = OpenChunk {
                next: at + u64::from(len),
                end: at + u64::from(chunk),
                size: chunk,
            };
            (at, chunk)
        } else {
            (self.reserve(len, len)?, len)
        };
        // (A move to the next segment is no sign of another lane.)
        if lane.chunk_target == 0
            && at != lane.reserved_end
            && segment_of(at) == segment_of(lane.reserved_end)
        {
            if lane.chunk_cooldown > 0 {
                lane.chunk_cooldown -= 1;
            } else {
                lane.chunk_target = MIN_CHUNK_BYTES;
            }
        }
        lane.reserved_end = at + u64::from(reserved);
        Ok(at)
    }

    /// Locks this thread's lane for appends reserved at the tail, not in a chunk (everything but
    /// a fenced insert): the lane's open chunk is padded first, so that the lane's records stay
    /// in location order (a chunk below this append is then never filled any more).
    fn lock_lane_direct(&self) -> Result<MutexGuard<'_, Lane>> {
        let mut lane = self.lock_lane()?;
        lane.close_chunk(ChunkClose::Append);
        Ok(lane)
    }

    /// Notes that records reserved at the tail (not in a chunk) end at `end`: no fenced insert
    /// may go into a chunk below it any more. Called before the caller's shard lock is dropped.
    fn appended_directly(&self, lane: &mut Lane, end: Location) {
        lane.reserved_end = end;
        if self.chunked {
            self.direct_end.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// Appends many records (a batch's), putting each one's location into `locations` and
    /// returning the end of the last. All or nothing: an error before the first record appends
    /// nothing; one after it poisons the log, so the records already placed are never written
    /// and nothing more is acknowledged.
    pub(crate) fn append_many(
        &self,
        records: &[Record<'_>],
        locations: &mut Vec<Location>,
    ) -> Result<Option<Location>> {
        locations.clear();
        if records.is_empty() {
            return Ok(None);
        }
        with_scratch(Scratch::Append, |encoded| {
            // Encoded (and checksummed) before any lock, back to back; `locations` holds each
            // record's end offset in `encoded` until the records get their places in the log.
            encoded.clear();
            for record in records {
                record::encode_into(encoded, record);
                locations.push(encoded.len() as u64);
            }
            let end = self.place_many_encoded(records, encoded, locations)?;
            if let Some(end) = end {
                self.wake_writer_if_full(end);
            }
            Ok(end)
        })
    }

    /// The largest group [`Log::append_group`] takes: its records must fit in one segment beside
    /// the header and the seal.
    pub(crate) fn max_group_bytes(&self) -> usize {
        self.segment_size_bytes as usize - SEGMENT_HEADER_LEN - SEAL_RECORD_LEN
    }

    /// Appends `records` as one group (a transaction): contiguous in one segment, reserved as one
    /// piece, every record but the last carrying the continuation flag; replay applies all of
    /// them or none. A single record is appended alone, without the flag (one record is whole or
    /// absent by itself). `locations[i]` gets the location of `records[i]`; returns the end of
    /// the last. Fails with nothing appended if the group exceeds
    /// [`Log::max_group_bytes`].
    pub(crate) fn append_group(
        &self,
        records: &[Record<'_>],
        locations: &mut [Location],
    ) -> Result<Location> {
        let body = group_body_len(records);
        if body > self.max_group_bytes() || records.len() > u32::MAX as usize {
            return Err(Error::TransactionTooLarge {
                records: records.len(),
                bytes: body,
                max_bytes: self.max_group_bytes(),
            });
        }
        self.append_group_with_body(records, locations, body)
    }

    /// [`Log::append_group`] without its size limit, for the engine's own small groups (a
    /// completion and its shadow): like a single record larger than a segment, a group larger
    /// than one goes into a segment of its own, which it overfills. Replay reads a segment to its
    /// end whatever its configured size, so such a group is applied whole or not at all like any
    /// other.
    pub(crate) fn append_group_of_any_size(
        &self,
        records: &[Record<'_>],
        locations: &mut [Location],
    ) -> Result<Location> {
        self.append_group_with_body(records, locations, group_body_len(records))
    }

    /// The two above once the group's length (`body`, its records' bytes) is known: encodes (and
    /// checksums) the records before any lock, then reserves and places them as one piece.
    fn append_group_with_body(
        &self,
        records: &[Record<'_>],
        locations: &mut [Location],
        body: usize,
    ) -> Result<Location> {
        assert_eq!(locations.len(), records.len(), "a location per record");
        assert!(
            u32::try_from(body).is_ok() && u32::try_from(records.len()).is_ok(),
            "a group's length and record count fit in 32 bits"
        );
        if let ([record], [location]) = (records, &mut *locations) {
            // One record is whole or absent by itself (a torn record is cut like any torn
            // tail): it needs no continuation flag.
            let (at, end) = self.append(record)?;
            *location = at;
            return Ok(end);
        }
        with_scratch(Scratch::Append, |encoded| {
            encoded.clear();
            let last = records.len() - 1;
            for (i, (record, end)) in records.iter().zip(locations.iter_mut()).enumerate() {
                // Every record but the last says the group goes on after it.
                record::encode_group_member(encoded, record, i < last);
                // The record's end in `encoded` until the group gets its place.
                *end = encoded.len() as u64;
            }
            debug_assert_eq!(encoded.len(), body, "the group's length was announced");
            let whole = encoded.len() as u32;
            let mut lane = self.lock_lane_direct()?;
            let at = self.reserve(whole, whole)?;
            lane.place(at, encoded);
            self.appended_directly(&mut lane, at + u64::from(whole));
            // One segment holds the whole group: its stats are looked up once.
            let stats = lane.stats_of(at, at + u64::from(whole));
            let mut start = at;
            for (record, location) in records.iter().zip(locations.iter_mut()) {
                stats.add_appended(record);
                let next = at + *location;
                *location = start;
                start = next;
            }
            drop(lane);
            let end = at + u64::from(whole);
            self.wake_writer_if_full(end);
            Ok(end)
        })
    }

    /// Appends records already encoded in the current format, their bytes taken as they are
    /// (compaction's copies of records it read and checked: a record's checksum does not cover
    /// its location, so its bytes are valid anywhere). `encoded` holds `records` back to back
    /// and `locations` each one's end offset in it; each becomes the record's location. As
    /// [`Log::append_many`] otherwise, except that it does not wake the writer: compaction
    /// appends with a shard lock or the state lock held, and calls
    /// [`Log::wake_writer_if_full`] once it has dropped it (a woken writer that preempts the
    /// waker on a busy machine would otherwise keep that lock from the callers meanwhile).
    pub(crate) fn append_many_preencoded(
        &self,
        records: &[Record<'_>],
        encoded: &[u8],
        locations: &mut [Location],
    ) -> Result<Option<Location>> {
        debug_assert_eq!(records.len(), locations.len(), "an end per record");
        if records.is_empty() {
            return Ok(None);
        }
        self.place_many_encoded(records, encoded, locations)
    }

    /// Places `records`, encoded back to back in `encoded` with their end offsets in
    /// `locations`, through this thread's lane: as many as fit in the tail segment as one piece,
    /// the record that does not fit opening the next segment, and so on. Each end offset becomes
    /// the record's location; returns the end of the last. The caller wakes the writer.
    fn place_many_encoded(
        &self,
        records: &[Record<'_>],
        encoded: &[u8],
        locations: &mut [Location],
    ) -> Result<Option<Location>> {
        let mut lane = self.lock_lane_direct()?;
        let mut start = 0usize;
        let mut n = 0;
        let mut end = 0;
        while n < records.len() {
            let rest = &encoded[start..];
            let reserved = match self.reserve_in_tail_segment(rest.len() as u32) {
                Some(at) => Ok((at, records.len())),
                // The next record alone, in the next segment if it does not fit this one.
                None => {
                    let len = (locations[n] as usize - start) as u32;
                    self.reserve(len, len).map(|at| (at, n + 1))
                }
            };
            let (at, upto) = match reserved {
                Ok(reserved) => reserved,
                Err(error) => {
                    if n > 0 {
                        // Part of the batch is placed: it must never be written (nor anything
                        // after it acknowledged), so the batch stays all or nothing.
                        drop(lane);
                        let mut state = self.state.lock();
                        self.poison(&mut state, format!("a batch append failed midway: {error}"));
                        drop(state);
                        self.announce_progress();
                    }
                    return Err(error);
                }
            };
            let stop = locations[upto - 1] as usize;
            lane.place(at, &encoded[start..stop]);
            let mut record_start = at;
            for (record, location) in records[n..upto].iter().zip(&mut locations[n..upto]) {
                let next = at + (*location - start as u64);
                lane.count(record, record_start, next);
                *location = record_start;
                record_start = next;
            }
            end = record_start;
            start = stop;
            n = upto;
        }
        self.appended_directly(&mut lane, end);
        drop(lane);
        Ok(Some(end))
    }

    /// This thread's append lane.
    fn lane(&self) -> &Mutex<Lane> {
        let ticket = match &self.next_lane {
            None => lane_ticket(),
            Some(next) => next.fetch_add(1, Ordering::Relaxed),
        };
        &self.lanes[ticket & (self.lanes.len() - 1)]
    }

    /// Locks this thread's lane for an append, after the back-pressure check (which waits while
    /// too much is unwritten) if the lane placed [`BACK_PRESSURE_CHECK_BYTES`] since its last
    /// one, or if the log is poisoned (which fails). Checking every append would read the tail,
    /// which the other appenders' reservations keep moving, once more per record.
    fn lock_lane(&self) -> Result<MutexGuard<'_, Lane>> {
        let lane = self.lane().lock();
        if lane.unchecked < BACK_PRESSURE_CHECK_BYTES && !self.poisoned_hint.load(Ordering::Relaxed)
        {
            return Ok(lane);
        }
        drop(lane);
        self.hold_back_while_full()?;
        let mut lane = self.lane().lock();
        lane.unchecked = 0;
        Ok(lane)
    }

    /// Reserves `len` bytes at the tail: in the tail segment if `room` bytes (the record's, or a
    /// whole group's) fit there beside the seal that will end it, else at the start of the next
    /// segment (the writer seals the old one when it gets there). Returns where they start.
    /// The caller holds its lane's lock and places the bytes before it lets go.
    fn reserve(&self, len: u32, room: u32) -> Result<Location> {
        // No poison check here: it would take the state lock under the lane's (see
        // `hold_back_while_full`, which every append calls first).
        let mut current = self.tail.load(Ordering::Relaxed);
        loop {
            let (segment, offset) = (segment_of(current), offset_of(current));
            let fits = u64::from(offset) + u64::from(room) + SEAL_RECORD_LEN as u64
                <= u64::from(self.segment_size_bytes);
            let at = if fits {
                current
            } else {
                let Some(next) = segment.checked_add(1) else {
                    return Err(self.corrupt(
                        segment,
                        offset,
                        "the last possible segment id is full: the log cannot go on",
                    ));
                };
                location(next, SEGMENT_HEADER_LEN as u32)
            };
            match self.tail.compare_exchange_weak(
                current,
                at + u64::from(len),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(at),
                Err(actual) => current = actual,
            }
        }
    }

    /// [`Log::reserve`] of `len` bytes only if they fit in the tail segment; `None` otherwise.
    fn reserve_in_tail_segment(&self, len: u32) -> Option<Location> {
        let mut current = self.tail.load(Ordering::Relaxed);
        loop {
            let fits = u64::from(offset_of(current)) + u64::from(len) + SEAL_RECORD_LEN as u64
                <= u64::from(self.segment_size_bytes);
            if !fits {
                return None;
            }
            match self.tail.compare_exchange_weak(
                current,
                current + u64::from(len),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(current),
                Err(actual) => current = actual,
            }
        }
    }

    /// Bytes appended but not yet written, about (across a segment boundary it counts the
    /// older segment's remainder as if full).
    fn pending_bytes(&self) -> usize {
        let tail = self.tail.load(Ordering::Acquire);
        let written = self.written_hint.load(Ordering::Acquire);
        bytes_between(written, tail, self.segment_size_bytes)
    }

    /// Back-pressure: waits while the bytes not yet written are over their limit. Fails if
    /// the log is poisoned.
    fn hold_back_while_full(&self) -> Result<()> {
        if self.pending_bytes() > self.max_pending_bytes {
            let mut state = self.state.lock();
            while self.pending_bytes() > self.max_pending_bytes && state.poisoned.is_none() {
                self.work_ready.notify_one();
                self.drained.wait(&mut state);
            }
        }
        if self.poisoned_hint.load(Ordering::Acquire) {
            return Err(Error::Poisoned {
                cause: self.poisoned().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Wakes the writer once a write buffer's worth is pending. In `Sync` mode the caller wakes
    /// it when it starts to wait (`wait_durable`), so that a batch appended record by record is
    /// committed by one fsync, not several.
    pub(crate) fn wake_writer_if_full(&self, end: Location) {
        let written = self.written_hint.load(Ordering::Acquire);
        if bytes_between(written, end, self.segment_size_bytes) >= self.write_buffer_bytes {
            self.work_ready.notify_one();
        }
    }

    /// Takes every record appended so far out of the lanes (all locked at once, so that the
    /// records end at the tail read meanwhile, with no gap), merges their stats, and returns
    /// them as chunks in location order with the tail they end at. Called by the writer with
    /// the state lock held.
    fn take_appended(&self, state: &mut LogState) -> (Vec<Chunk>, Location) {
        let mut taken: Vec<(Vec<Run>, Vec<u8>)> = Vec::with_capacity(self.lanes.len());
        let tail = {
            let mut lanes: Vec<_> = self.lanes.iter().map(|lane| lane.lock()).collect();
            // Open chunks are padded: every byte up to the tail is then placed.
            for lane in &mut lanes {
                lane.close_chunk(ChunkClose::Take);
            }
            let tail = self.tail.load(Ordering::Acquire);
            for lane in &mut lanes {
                merge_lane_stats(state, lane);
                let lane = &mut **lane;
                let runs = std::mem::replace(&mut lane.runs, std::mem::take(&mut lane.spare_runs));
                let bytes =
                    std::mem::replace(&mut lane.bytes, std::mem::take(&mut lane.spare_bytes));
                taken.push((runs, bytes));
            }
            tail
        };
        // Each lane's runs are in location order: merge them, a streak at a time (the runs of
        // the lane with the lowest next run, up to the next run of any other lane), copying
        // each streak's records that follow each other in one piece. With one appending thread
        // there is one streak per segment.
        let mut next = vec![0usize; taken.len()];
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut previous_end = state.written;
        loop {
            let mut lowest: Option<(Location, usize)> = None;
            let mut second = Location::MAX;
            for (index, (runs, _)) in taken.iter().enumerate() {
                if let Some(run) = runs.get(next[index]) {
                    match lowest {
                        Some((at, _)) if at <= run.at => second = second.min(run.at),
                        _ => {
                            if let Some((at, _)) = lowest {
                                second = second.min(at);
                            }
                            lowest = Some((run.at, index));
                        }
                    }
                }
            }
            let Some((_, index)) = lowest else {
                break;
            };
            let (runs, bytes) = &taken[index];
            while let Some(&run) = runs.get(next[index]).filter(|run| run.at < second) {
                // This run and those right after it in the lane and in the log: one copy.
                let mut streak_end = next[index] + 1;
                let mut end = run.at + run.len as u64;
                while let Some(more) = runs.get(streak_end).filter(|more| more.at == end) {
                    if more.at >= second {
                        break;
                    }
                    end += more.len as u64;
                    streak_end += 1;
                }
                let last = runs[streak_end - 1];
                let piece = &bytes[run.start..last.start + last.len];
                debug_assert_eq!(piece.len() as u64, end - run.at);
                let (segment_id, offset) = (segment_of(run.at), offset_of(run.at));
                let follows = run.at == previous_end;
                let opens_segment = !follows && segment_id == segment_of(previous_end) + 1;
                assert!(
                    follows || (opens_segment && offset as usize == SEGMENT_HEADER_LEN),
                    "appended records must follow each other: {:#x} after {previous_end:#x}",
                    run.at
                );
                match chunks.last_mut() {
                    Some(chunk) if follows => chunk.bytes.extend_from_slice(piece),
                    _ => {
                        let mut buffer = state
                            .spare_buffers
                            .pop()
                            .unwrap_or_else(|| Vec::with_capacity(self.write_buffer_bytes));
                        buffer.extend_from_slice(piece);
                        chunks.push(Chunk {
                            segment_id,
                            start_offset: offset,
                            bytes: buffer,
                            opens_segment,
                        });
                    }
                }
                previous_end = end;
                next[index] = streak_end;
            }
        }
        assert_eq!(
            previous_end, tail,
            "the lanes hold everything up to the tail"
        );
        // The emptied buffers go back as the lanes' spares, cut back to the write buffer's size:
        // a burst (the writer held up by a checkpoint or a slow write) grows a lane's buffer to
        // megabytes, which it would otherwise keep for the store's life (with the writer's
        // chunk buffers, about 1.4 B of RSS per live key at 10 M keys: `rss_breakdown`).
        for (lane, (mut runs, mut bytes)) in self.lanes.iter().zip(taken) {
            runs.clear();
            bytes.clear();
            bytes.shrink_to(self.write_buffer_bytes);
            runs.shrink_to(self.write_buffer_bytes / 32);
            let mut lane = lane.lock();
            if lane.spare_bytes.capacity() == 0 {
                lane.spare_runs = runs;
                lane.spare_bytes = bytes;
            }
        }
        (chunks, tail)
    }

    /// Merges every lane's stats into the state's, one lane at a time: every append finished
    /// before this call is in a lane it visits (see [`Lane::stats`]).
    fn merge_stats(&self, state: &mut LogState) {
        for lane in self.lanes.iter() {
            merge_lane_stats(state, &mut lane.lock());
        }
    }

    /// Bytes appended since the log was opened.
    pub(crate) fn bytes_appended(&self) -> u64 {
        let state = self.state.lock();
        state.bytes_appended
            + self
                .lanes
                .iter()
                .map(|lane| lane.lock().appended)
                .sum::<u64>()
    }

    /// Whether every byte before `end` is durable.
    pub(crate) fn is_durable(&self, end: Location) -> bool {
        self.durable_hint.load(Ordering::Acquire) >= end
    }

    /// Records that everything before `durable` is durable (the writer calls it after an fsync).
    fn set_durable(&self, state: &mut LogState, durable: Location) {
        debug_assert!(durable >= state.durable, "durable position only grows");
        state.durable = durable;
        self.durable_hint.store(durable, Ordering::Release);
    }

    /// Waits until every byte before `end` is durable (in any mode this forces an fsync).
    pub(crate) fn wait_durable(&self, end: Location) -> Result<()> {
        if self.is_durable(end) {
            return Ok(());
        }
        {
            let mut state = self.state.lock();
            if state.flush_target < end {
                state.flush_target = end;
            }
        }
        self.work_ready.notify_one();
        loop {
            if self.is_durable(end) {
                return Ok(());
            }
            if self.poisoned_hint.load(Ordering::Acquire) {
                let cause = self.poisoned().unwrap_or_default();
                return Err(Error::Poisoned { cause });
            }
            // The writer publishes `durable_hint` (or the poison) before it wakes the queue.
            self.commits.wait(end, || {
                self.is_durable(end) || self.poisoned_hint.load(Ordering::Acquire)
            });
        }
    }

    /// Asks the writer to make every byte before `end` durable (what [`Log::wait_durable`] does
    /// before it sleeps; an async waiter does it once, before its first registration).
    pub(crate) fn request_durable(&self, end: Location) {
        if self.is_durable(end) {
            return;
        }
        {
            let mut state = self.state.lock();
            if state.flush_target < end {
                state.flush_target = end;
            }
        }
        self.work_ready.notify_one();
    }

    /// The async counterpart of [`Log::wait_durable`], for a waiter that already called
    /// [`Log::request_durable`]: ready once every byte before `end` is durable (or the log is
    /// poisoned); otherwise `waker` is registered in the commit queue and woken by the writer's
    /// wake that covers `end`.
    pub(crate) fn poll_durable(
        &self,
        end: Location,
        waker: &std::task::Waker,
    ) -> std::task::Poll<Result<()>> {
        let settled = || self.is_durable(end) || self.poisoned_hint.load(Ordering::Acquire);
        if !settled() && !self.commits.register(end, waker, settled) {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(self.durable_answer(end).expect("settled"))
    }

    /// What a waiter for `end` is told if it stops waiting now: `Ok` once `end` is durable (even
    /// if a later failure poisoned the log: the record is on disk), the poison otherwise, and
    /// `None` while neither holds.
    pub(crate) fn durable_answer(&self, end: Location) -> Option<Result<()>> {
        if self.is_durable(end) {
            return Some(Ok(()));
        }
        if self.poisoned_hint.load(Ordering::Acquire) {
            let cause = self.poisoned().unwrap_or_default();
            return Some(Err(Error::Poisoned { cause }));
        }
        None
    }

    /// The location just past the last appended record.
    pub(crate) fn tail(&self) -> Location {
        self.tail.load(Ordering::Acquire)
    }

    /// Wakes every caller waiting for durability (after `durable` moved or the log was
    /// poisoned), and appenders waiting for buffer space.
    fn announce_progress(&self) {
        self.drained.notify_all();
        let durable = self.durable_hint.load(Ordering::Acquire);
        let poisoned = self.poisoned_hint.load(Ordering::Acquire);
        self.commits.wake(durable, poisoned);
    }

    /// Makes everything appended so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        self.wait_durable(self.tail())
    }

    /// Reads and checks the record at `at` into `buf`, returning it decoded, or `None` if its
    /// sealed segment is gone (reclaimed: the caller judges whether its entry could still
    /// need it). Segments are numbered without gaps when created, so a missing id below the
    /// first open segment, or a missing sealed one, was deleted by reclamation.
    pub(crate) fn read<'b>(
        &self,
        at: Location,
        buf: &'b mut Vec<u8>,
    ) -> Result<Option<Record<'b>>> {
        let (segment_id, offset) = (segment_of(at), offset_of(at));
        buf.clear();
        // A record below the written hint is in its file (the writer publishes the hint after
        // the write, and `written` only grows): read it without the state lock, which the
        // writer holds while it takes the lanes and which a preempted writer would hold for
        // milliseconds.
        let in_memory = at >= self.written_hint.load(Ordering::Acquire) && {
            // The writer moves records from the lanes to `in_flight` and on to the file under
            // the state lock: held, a record not yet written is in one of the two.
            let state = self.state.lock();
            if at >= state.written {
                let copied = |buf: &mut Vec<u8>, bytes: &[u8]| {
                    let len = record::peek_len(bytes)
                        .map_err(|e| self.corrupt(segment_id, offset, &e.to_string()))?;
                    buf.extend_from_slice(&bytes[..len.min(bytes.len())]);
                    Ok::<(), Error>(())
                };
                let in_flight = state
                    .in_flight
                    .iter()
                    .flat_map(|chunks| chunks.iter())
                    .find(|chunk| chunk.holds(segment_id, offset));
                let mut found = false;
                if let Some(chunk) = in_flight {
                    copied(buf, &chunk.bytes[(offset - chunk.start_offset) as usize..])?;
                    found = true;
                } else {
                    for lane in self.lanes.iter() {
                        let lane = lane.lock();
                        if let Some(bytes) = lane.find(at) {
                            copied(buf, bytes)?;
                            found = true;
                            break;
                        }
                    }
                }
                if !found {
                    return Err(self.corrupt(segment_id, offset, "location is past the log's end"));
                }
                true
            } else {
                false
            }
        };
        if !in_memory {
            let file = self.segments.read().get(&segment_id).cloned();
            let Some(file) = file else {
                // `at < written`, so the segment was created: it is missing only if retired.
                return Ok(None);
            };
            file.read_record(u64::from(offset), buf)?;
        }
        record::decode(buf)
            .map(Some)
            .map_err(|e| self.corrupt(segment_id, offset, &e.to_string()))
    }

    /// Lowers the live counts of the segments holding these (dropped) index entries.
    pub(crate) fn release(&self, locations: &[Location]) {
        self.release_counts(locations, false);
    }

    /// Lowers the live counts (and live state counts) of the segments holding these state
    /// entries' and positions' records (replaced or removed).
    pub(crate) fn release_state(&self, locations: &[Location]) {
        self.release_counts(locations, true);
    }

    /// As [`Log::release_state`] if the log's state lock is free now; if the writer or
    /// maintenance holds it, nothing, and `false`: the caller keeps the locations for a later
    /// try (a count that lags is only ever too high, see `SegmentStats::live`).
    pub(crate) fn try_release_state(&self, locations: &[Location]) -> bool {
        match self.state.try_lock() {
            Some(mut state) => {
                self.release_counts_locked(&mut state, locations, true);
                true
            }
            None => false,
        }
    }

    fn release_counts(&self, locations: &[Location], state_entries: bool) {
        if locations.is_empty() {
            return;
        }
        self.release_counts_locked(&mut self.state.lock(), locations, state_entries);
    }

    fn release_counts_locked(
        &self,
        state: &mut LogState,
        locations: &[Location],
        state_entries: bool,
    ) {
        // The records' own counts first: each was appended before it was released.
        self.merge_stats(state);
        // Released locations come mostly in runs of one segment: look each run's stats up once.
        let mut current: Option<(u32, Option<&mut SegmentStats>)> = None;
        for &at in locations {
            let segment = segment_of(at);
            if current.as_ref().is_none_or(|(id, _)| *id != segment) {
                current = Some((segment, state.segment_stats.get_mut(&segment)));
            }
            if let Some((_, Some(stats))) = current.as_mut() {
                debug_assert!(
                    stats.live > 0,
                    "live count of segment {} underflows",
                    segment_of(at)
                );
                stats.live = stats.live.saturating_sub(1);
                if state_entries {
                    debug_assert!(stats.state_live > 0, "live state count underflows");
                    stats.state_live = stats.state_live.saturating_sub(1);
                }
            }
        }
    }

    /// Segments that are complete on disk (fsynced whole, never written again), oldest first.
    pub(crate) fn sealed_segments(&self) -> Vec<SealedSegment> {
        let mut state = self.state.lock();
        self.merge_stats(&mut state);
        let first_open = segment_of(state.written);
        state
            .segment_stats
            .range(..first_open)
            .map(|(&id, &stats)| SealedSegment { id, stats })
            .collect()
    }

    /// The tail location and every segment's stats, taken together: the stats count exactly the
    /// records before the tail (for checkpoints).
    pub(crate) fn tail_and_stats(&self) -> (Location, BTreeMap<u32, SegmentStats>) {
        let mut state = self.state.lock();
        // All lanes held: no record is reserved meanwhile, so the tail and the stats agree.
        let mut lanes: Vec<_> = self.lanes.iter().map(|lane| lane.lock()).collect();
        // Open chunks are padded, so that no record appended after this goes below the tail
        // (a checkpoint replays the log from it).
        for lane in &mut lanes {
            lane.close_chunk(ChunkClose::Take);
        }
        let tail = self.tail.load(Ordering::Acquire);
        for lane in &mut lanes {
            merge_lane_stats(&mut state, lane);
        }
        drop(lanes);
        let mut stats = state.segment_stats.clone();
        stats.entry(segment_of(tail)).or_default();
        (tail, stats)
    }

    /// The id of the oldest segment file.
    pub(crate) fn oldest_segment_id(&self) -> Option<u32> {
        self.segments.read().keys().next().copied()
    }

    /// The open segment file `id`, if it exists.
    pub(crate) fn segment_file(&self, id: u32) -> Option<Arc<SegmentFile>> {
        self.segments.read().get(&id).cloned()
    }

    /// Deletes sealed segment `id`: no index entry may need it any more (all its records expired,
    /// or were copied forward and the copies are durable).
    pub(crate) fn retire(&self, id: u32) -> Result<()> {
        {
            let mut state = self.state.lock();
            assert!(
                id < segment_of(state.written),
                "retiring segment {id}, which is not sealed"
            );
            state.segment_stats.remove(&id);
        }
        let removed = self.segments.write().remove(&id);
        let path = match &removed {
            Some(file) => file.path.clone(),
            None => self.dir.join(segment::segment_file_name(id)),
        };
        drop(removed);
        self.storage
            .remove(&path)
            .map_err(|e| Error::io(format!("deleting segment {}", path.display()), e))?;
        segment::sync_dir(&*self.storage, &self.dir)
    }

    fn corrupt(&self, segment_id: u32, offset: u32, reason: &str) -> Error {
        Error::Corrupt {
            path: self.dir.join(segment::segment_file_name(segment_id)),
            offset: u64::from(offset),
            reason: reason.to_string(),
        }
    }

    /// Total bytes of all segment files, and how many there are.
    pub(crate) fn disk_usage(&self) -> (u64, u64) {
        let segments = self.segments.read();
        let (tail_segment, tail_offset) = {
            let tail = self.tail();
            (segment_of(tail), offset_of(tail))
        };
        // File lengths (a prepared tail's zeros take disk space too); the tail at least as far
        // as it is appended (its pending bytes may still go past the file's end).
        let older: u64 = segments
            .range(..tail_segment)
            .filter_map(|(_, s)| s.len().ok())
            .sum();
        let tail = segments
            .get(&tail_segment)
            .and_then(|s| s.len().ok())
            .unwrap_or(0)
            .max(u64::from(tail_offset));
        (older + tail, segments.len() as u64)
    }

    /// Ends the writer after it has written and fsynced everything appended.
    pub(crate) fn begin_shutdown(&self) {
        self.state.lock().shutting_down = true;
        self.work_ready.notify_all();
    }

    /// Poisons the log with `cause` (used by the writer on a failed write or fsync).
    fn poison(&self, state: &mut LogState, cause: String) {
        if state.poisoned.is_none() {
            // Traced where it happens, whether or not a maintenance thread is there to notice.
            crate::trace::event!(error, dir = %self.dir.display(), cause = %cause, "store poisoned: nothing more is acknowledged");
            state.poisoned = Some(cause);
        }
        self.poisoned_hint.store(true, Ordering::Release);
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        if !self.poisoned_hint.load(Ordering::Acquire) {
            return None;
        }
        self.state.lock().poisoned.clone()
    }
}

/// A log of one empty segment over simulated storage (1 MiB segments, a 4 KiB write buffer, no
/// preallocation), for the unit tests and the loom models; no writer is started.
#[cfg(test)]
fn open_test_log(
    storage: &crate::sim::SimStorage,
    durability: Durability,
    lanes: usize,
) -> Arc<Log> {
    open_test_log_with(storage, durability, lanes, false)
}

/// [`open_test_log`], the lanes rotating per append if `rotate_lanes`.
#[cfg(test)]
fn open_test_log_with(
    storage: &crate::sim::SimStorage,
    durability: Durability,
    lanes: usize,
    rotate_lanes: bool,
) -> Arc<Log> {
    let dir = Path::new("/log");
    storage.create_dir_all(dir).unwrap();
    let segment = SegmentFile::create(storage, dir, 1).unwrap();
    let options = LogOptions {
        durability,
        segment_size_bytes: 1 << 20,
        write_buffer_bytes: 4096,
        preallocate: false,
        lanes,
        rotate_lanes,
    };
    let stats = BTreeMap::from([(1, SegmentStats::default())]);
    let storage: Arc<dyn Storage> = Arc::new(storage.clone());
    Arc::new(Log::new(
        storage,
        dir,
        options,
        vec![segment],
        stats,
        SEGMENT_HEADER_LEN as u32,
    ))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use crate::sim::SimStorage;

    /// A commit's non-blocking release does nothing while the log's state lock is held (and
    /// says so, so the caller keeps the locations), and lowers the live counts of the records'
    /// segment, appended through a lane and not yet merged, once it is free.
    #[test]
    fn try_release_state_waits_for_nothing_and_counts_when_the_lock_is_free() {
        let storage = SimStorage::new(3);
        // Never syncs: nothing here waits for the writer (none is started).
        let log = open_test_log(&storage, Durability::Never, 2);
        let put = |key: &'static [u8]| Record {
            kind: RecordKind::StatePut,
            key,
            value: b"balance",
            expires_at_millis: crate::record::NEVER_EXPIRES,
            fingerprint: &[],
            refresh_cap_millis: 0,
        };
        let (first, _) = log.append(&put(b"a")).unwrap();
        log.append(&put(b"b")).unwrap();
        let live = |log: &Log| {
            let (_, stats) = log.tail_and_stats();
            (stats[&1].live, stats[&1].state_live)
        };
        assert_eq!(live(&log), (2, 2));
        // On another thread, so that a release that waited for the lock fails the test instead
        // of hanging it (the failed assertion drops the guard, then the scope joins).
        let (sent, answer) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let busy = log.state.lock();
            scope.spawn(|| sent.send(log.try_release_state(&[first])).unwrap());
            let released = answer.recv_timeout(std::time::Duration::from_secs(10));
            assert_eq!(released, Ok(false), "the lock is held: no wait, no release");
            drop(busy);
        });
        assert_eq!(live(&log), (2, 2), "a refused release changes nothing");
        assert!(log.try_release_state(&[first]));
        assert_eq!(live(&log), (1, 1));
    }

    /// Lanes reserving chunks (rotated per append, as several threads' would interleave):
    /// inserts under one fence lie in the order they were made, every other append lies after
    /// every insert made before it, and the writer's file holds every record at its location
    /// with padding, each at least a padding record long, filling the chunks' unused ends, and
    /// no gap.
    #[test]
    fn fenced_inserts_keep_their_fence_s_order_and_chunks_are_padded_without_gaps() {
        let storage = SimStorage::new(5);
        let log = open_test_log_with(&storage, Durability::Never, 4, true);
        let writer = spawn_writer(Arc::clone(&log)).unwrap();
        let mut fences = [0 as Location; 64];
        let mut placed: Vec<(Vec<u8>, Location, Location)> = Vec::new();
        let mut last_direct_end = 0;
        for i in 0..600u32 {
            let key = format!("key-{i}").into_bytes();
            let record = Record {
                kind: if i % 17 == 5 {
                    RecordKind::Remove
                } else {
                    RecordKind::Insert
                },
                key: &key,
                value: &[3u8; 16],
                expires_at_millis: 1 << 40,
                fingerprint: &[],
                refresh_cap_millis: 0,
            };
            let (at, end) = if record.kind == RecordKind::Remove {
                let (at, end) = log.append(&record).unwrap();
                assert!(
                    placed.iter().all(|&(_, _, earlier)| earlier <= at),
                    "a direct append below an earlier record"
                );
                last_direct_end = end;
                (at, end)
            } else {
                let fence = &mut fences[i as usize % fences.len()];
                let before = *fence;
                let (at, end) = with_encoded(&record, |encoded| {
                    log.append_fenced(&record, encoded, fence).unwrap()
                });
                assert!(at >= before, "an insert below its fence");
                assert!(
                    at >= last_direct_end,
                    "an insert below a direct append before it"
                );
                assert_eq!(*fence, end);
                (at, end)
            };
            placed.push((key, at, end));
            if i % 150 == 149 {
                // The writer's take pads the open chunks.
                log.flush().unwrap();
            }
        }
        log.flush().unwrap();
        let in_order = placed.windows(2).filter(|w| w[0].1 < w[1].1).count();
        assert!(in_order < placed.len() - 1, "no chunk ever reserved ahead");
        log.begin_shutdown();
        writer.join().unwrap();

        let file = log.segment_file(1).unwrap();
        let mut bytes = vec![0; file.len().unwrap() as usize];
        file.read_at(&mut bytes, 0).unwrap();
        let mut found = BTreeMap::new();
        let (mut offset, mut padding) = (SEGMENT_HEADER_LEN, 0);
        while offset < bytes.len() {
            let (record, len) = record::decode_sized(&bytes[offset..]).unwrap();
            if record.kind == RecordKind::Padding {
                assert!(len >= record::MIN_PADDING_LEN);
                padding += 1;
            } else {
                found.insert(location(1, offset as u32), record.key.to_vec());
            }
            offset += len;
        }
        assert!(padding > 0, "no chunk was closed early");
        assert_eq!(found.len(), placed.len());
        for (key, at, _) in placed {
            assert_eq!(found[&at], key);
        }
    }

    /// Lanes that append rarely between the writer's takes (two threads each inserting now and
    /// then) stop reserving ahead after a few chunks the takes closed mostly unused, instead of
    /// padding half of every chunk for ever; lanes appending fast between takes keep their
    /// chunks.
    #[test]
    fn lanes_appending_rarely_between_takes_stop_reserving_ahead() {
        let storage = SimStorage::new(6);
        let log = open_test_log_with(&storage, Durability::Never, 2, true);
        let start = log.tail();
        let insert = |i: u32, fence: &mut Location| {
            let key = format!("key-{i:05}").into_bytes();
            let record = Record {
                kind: RecordKind::Insert,
                key: &key,
                value: &[3u8; 16],
                expires_at_millis: 1 << 40,
                fingerprint: &[],
                refresh_cap_millis: 0,
            };
            let (at, end) = with_encoded(&record, |encoded| {
                log.append_fenced(&record, encoded, fence)
            })
            .unwrap();
            (at, end - at)
        };
        let mut fences = [0 as Location; 64];
        // Fast: no take for a thousand inserts; the lanes chunk.
        let mut placed = Vec::new();
        for i in 0..1000u32 {
            placed.push(insert(i, &mut fences[i as usize % 64]).0);
        }
        assert!(
            placed.windows(2).any(|w| w[1] < w[0]),
            "no lane reserved ahead"
        );
        // Slow: a take after every three inserts.
        let slow_start = log.tail_and_stats().0;
        let mut slow_records = 0;
        for i in 1000..7000u32 {
            slow_records += insert(i, &mut fences[i as usize % 64]).1;
            if i % 3 == 0 {
                log.tail_and_stats();
            }
        }
        let tail = log.tail_and_stats().0;
        let slow_padding = u64::from(offset_of(tail) - offset_of(slow_start)) - slow_records;
        assert!(
            slow_padding * 50 < slow_records,
            "{slow_padding} bytes of padding for {slow_records} of records"
        );
        assert_eq!(segment_of(tail), segment_of(start));
    }

    /// A burst grows a lane's buffer past the write buffer's size; once the writer took it, the
    /// lane keeps it as its spare cut back to that size (not at the burst's size for the store's
    /// life), and the take still holds every byte of the burst.
    #[test]
    fn a_lane_keeps_its_spare_buffers_at_the_write_buffer_size_after_a_burst() {
        let storage = SimStorage::new(4);
        let log = open_test_log(&storage, Durability::Never, 1);
        let key = [7u8; 16];
        let record = Record {
            kind: RecordKind::Insert,
            key: &key,
            value: &[1u8; 200],
            expires_at_millis: 1 << 40,
            fingerprint: &[],
            refresh_cap_millis: 0,
        };
        let mut end = 0;
        for _ in 0..400 {
            end = log.append(&record).unwrap().1;
        }
        let burst = {
            let lane = log.lanes[0].lock();
            (lane.bytes.capacity(), lane.runs.capacity())
        };
        assert!(burst.0 > 16 * log.write_buffer_bytes, "a burst: {burst:?}");
        let (chunks, tail) = log.take_appended(&mut log.state.lock());
        assert_eq!(tail, end);
        let taken: usize = chunks.iter().map(|chunk| chunk.bytes.len()).sum();
        assert_eq!(
            taken as u64,
            u64::from(offset_of(end)) - SEGMENT_HEADER_LEN as u64
        );
        let lane = log.lanes[0].lock();
        assert!(
            lane.spare_bytes.capacity() > 0,
            "the emptied buffer is kept as the spare"
        );
        assert!(lane.spare_bytes.capacity() <= log.write_buffer_bytes);
        assert!(lane.spare_runs.capacity() <= log.write_buffer_bytes / 32);
    }

    #[test]
    fn bytes_between_counts_within_and_across_segments_and_past_an_overfilled_one() {
        let size = 4096;
        assert_eq!(bytes_between(location(3, 100), location(3, 400), size), 300);
        assert_eq!(bytes_between(location(3, 400), location(3, 100), size), 0);
        assert_eq!(
            bytes_between(location(3, 4000), location(4, 132), size),
            228
        );
        // A record larger than the segment overfilled segment 3 past its configured size.
        assert_eq!(bytes_between(location(3, 70_000), location(4, 32), size), 0);
        assert_eq!(bytes_between(location(3, 70_000), location(5, 32), size), 0);
        assert_eq!(
            bytes_between(location(3, 70_000), location(30, 32), size),
            40_624
        );
    }
}

/// loom models of the group-commit hand-off between callers and the writer, run with
/// `RUSTFLAGS="--cfg loom" cargo test -p idem --lib --release loom_group_commit -- --nocapture`
/// (see `.ci/loom.sh`). They drive the real `Log` and writer thread over the simulated disk.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use crate::record::RecordKind;
    use crate::sim::{Faults, SimStorage};
    use std::sync::atomic::AtomicUsize;

    fn open_log(storage: &SimStorage) -> Arc<Log> {
        open_log_with_lanes(storage, 1)
    }

    fn open_log_with_lanes(storage: &SimStorage, lanes: usize) -> Arc<Log> {
        open_test_log(storage, Durability::Sync, lanes)
    }

    fn record(key: &[u8]) -> Record<'_> {
        Record {
            kind: RecordKind::Insert,
            key,
            value: b"v",
            expires_at_millis: u64::MAX,
            fingerprint: &[],
            refresh_cap_millis: 0,
        }
    }

    /// Explores `model` with up to three preemptions.
    fn explore(name: &str, model: impl Fn() + Sync + Send + 'static) {
        explore_bounded(name, 3, model);
    }

    /// Explores `model` with up to `preemptions` preemptions. The models with two appending
    /// callers and the writer use two: since appends reserve from the tail and copy into a lane
    /// (more steps each than one lock's hold), three made them explore over a million
    /// interleavings and take minutes of CI; two still cover a preemption inside each of two
    /// threads' critical steps (a caller between its reservation and its copy, the writer
    /// between its take and its fsync).
    fn explore_bounded(name: &str, preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
        static ITERATIONS: AtomicUsize = AtomicUsize::new(0);
        ITERATIONS.store(0, Ordering::SeqCst);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(preemptions);
        builder.check(move || {
            ITERATIONS.fetch_add(1, Ordering::SeqCst);
            model();
        });
        println!(
            "loom model {name}: {} interleavings explored",
            ITERATIONS.load(Ordering::SeqCst)
        );
    }

    /// Two callers append and wait for durability while the writer commits: each returns (no
    /// lost wake-up, no deadlock), its record is durable and readable when it does, and the
    /// writer then shuts down cleanly.
    #[test]
    fn loom_group_commit_callers_are_all_woken_durable() {
        explore_bounded("group commit, two callers", 2, || {
            let storage = SimStorage::new(7);
            let log = open_log(&storage);
            let writer = spawn_writer(Arc::clone(&log)).unwrap();
            let callers: Vec<_> = [&b"a"[..], &b"b"[..]]
                .into_iter()
                .map(|key| {
                    let log = Arc::clone(&log);
                    loom::thread::spawn(move || {
                        let (at, end) = log.append(&record(key)).unwrap();
                        log.wait_durable(end).unwrap();
                        assert!(log.is_durable(end), "woken before its record was durable");
                        let mut buf = Vec::new();
                        let read = log.read(at, &mut buf).unwrap().unwrap();
                        assert_eq!(read.key, key);
                    })
                })
                .collect();
            for caller in callers {
                caller.join().unwrap();
            }
            log.begin_shutdown();
            writer.join().unwrap();
        });
    }

    /// A log of two lanes (rotating per append if `rotate`) whose lanes reserve chunks from
    /// their first insert, and a shard: its fence, and each record placed under its lock (the
    /// key's first byte and the record's location), in the order the lock was taken.
    #[allow(clippy::type_complexity)] // reason: a model's shared state, used in two models
    fn chunking_log_and_shard(
        storage: &SimStorage,
        durability: Durability,
        rotate: bool,
    ) -> (Arc<Log>, Arc<Mutex<(Location, Vec<(u8, Location)>)>>) {
        let log = open_test_log_with(storage, durability, 2, rotate);
        for lane in log.lanes.iter() {
            lane.lock().chunk_target = MAX_CHUNK_BYTES;
        }
        (log, Arc::new(Mutex::new((0, Vec::new()))))
    }

    /// Two threads append under one shard's lock through lanes that reserve chunks (each lane
    /// has one open from the start): one makes two fenced inserts, the other a direct append
    /// (a removal's) between or around them. Whatever the interleaving, the three records lie
    /// in the order the lock was taken, and once the lanes are taken (their chunks padded) the
    /// log holds them with no gap up to the tail.
    #[test]
    fn loom_fenced_inserts_and_a_direct_append_keep_the_lock_s_order() {
        explore_bounded("fenced inserts across lanes", 2, || {
            let storage = SimStorage::new(7);
            let (log, shard) = chunking_log_and_shard(&storage, Durability::Never, false);
            let inserter = {
                let (log, shard) = (Arc::clone(&log), Arc::clone(&shard));
                loom::thread::spawn(move || {
                    for key in [&b"a"[..], &b"c"[..]] {
                        let mut shard = shard.lock();
                        let record = record(key);
                        let (at, _) = with_encoded(&record, |encoded| {
                            log.append_fenced(&record, encoded, &mut shard.0).unwrap()
                        });
                        shard.1.push((key[0], at));
                    }
                })
            };
            {
                let mut shard = shard.lock();
                let (at, _) = log.append(&record(b"b")).unwrap();
                shard.1.push((b'b', at));
            }
            inserter.join().unwrap();
            let order = shard.lock().1.clone();
            assert!(
                order.windows(2).all(|w| w[0].1 < w[1].1),
                "records out of the lock's order: {order:?}"
            );
            let mut state = log.state.lock();
            let (chunks, tail) = log.take_appended(&mut state);
            let bytes: usize = chunks.iter().map(|chunk| chunk.bytes.len()).sum();
            assert_eq!(
                SEGMENT_HEADER_LEN + bytes,
                offset_of(tail) as usize,
                "a gap before the tail"
            );
        });
    }

    /// As above, with the writer running (`Sync`, the lanes rotating so that chunks are on):
    /// each caller then waits for its records to be durable, so the writer's take (the other
    /// caller's commit) may close the inserter's chunk between its two inserts, or not. The
    /// file then holds the three records in the lock's order, with padding and no gap between
    /// them.
    #[test]
    fn loom_fenced_inserts_keep_the_lock_s_order_while_the_writer_takes() {
        explore_bounded("fenced inserts across lanes, with the writer", 2, || {
            let storage = SimStorage::new(7);
            let (log, shard) = chunking_log_and_shard(&storage, Durability::Sync, true);
            let writer = spawn_writer(Arc::clone(&log)).unwrap();
            let inserter = {
                let (log, shard) = (Arc::clone(&log), Arc::clone(&shard));
                loom::thread::spawn(move || {
                    let mut end = 0;
                    for key in [&b"a"[..], &b"c"[..]] {
                        let mut shard = shard.lock();
                        let record = record(key);
                        let at;
                        (at, end) = with_encoded(&record, |encoded| {
                            log.append_fenced(&record, encoded, &mut shard.0).unwrap()
                        });
                        shard.1.push((key[0], at));
                    }
                    log.wait_durable(end).unwrap();
                })
            };
            let end = {
                let mut shard = shard.lock();
                let (at, end) = log.append(&record(b"b")).unwrap();
                shard.1.push((b'b', at));
                end
            };
            log.wait_durable(end).unwrap();
            inserter.join().unwrap();
            log.flush().unwrap();
            log.begin_shutdown();
            writer.join().unwrap();
            let order = shard.lock().1.clone();
            assert!(
                order.windows(2).all(|w| w[0].1 < w[1].1),
                "records out of the lock's order: {order:?}"
            );
            let file = log.segment_file(1).unwrap();
            let mut bytes = vec![0; file.len().unwrap() as usize];
            file.read_at(&mut bytes, 0).unwrap();
            let mut offset = SEGMENT_HEADER_LEN;
            let mut keys = Vec::new();
            while offset < bytes.len() {
                let (record, len) = record::decode_sized(&bytes[offset..]).unwrap();
                if record.kind != RecordKind::Padding {
                    keys.push((record.key[0], location(1, offset as u32)));
                }
                offset += len;
            }
            assert_eq!(
                keys, order,
                "the file holds the records where they were placed"
            );
        });
    }

    /// Two threads append through different lanes and each flushes, so the writer takes the
    /// lanes while the other may be appending: every record reaches the segment file whole, in location order,
    /// with no gap between them, and reads back from the log as what was appended.
    #[test]
    fn loom_group_commit_lanes_reach_the_file_in_order_without_gaps() {
        explore_bounded("append lanes, two appenders and the writer", 2, || {
            let storage = SimStorage::new(7);
            let log = open_log_with_lanes(&storage, 2);
            let writer = spawn_writer(Arc::clone(&log)).unwrap();
            let appenders: Vec<_> = [&b"a"[..], &b"bb"[..]]
                .into_iter()
                .map(|key| {
                    let log = Arc::clone(&log);
                    loom::thread::spawn(move || {
                        let placed = log.append(&record(key)).unwrap();
                        // The writer takes the lanes while the other may be appending.
                        log.flush().unwrap();
                        (key, placed)
                    })
                })
                .collect();
            let appended: Vec<_> = appenders.into_iter().map(|a| a.join().unwrap()).collect();
            log.flush().unwrap();
            log.begin_shutdown();
            writer.join().unwrap();
            let mut ends: Vec<(Location, Location)> =
                appended.iter().map(|&(_, placed)| placed).collect();
            ends.sort_unstable();
            assert_eq!(ends[0].0, location(1, SEGMENT_HEADER_LEN as u32));
            assert_eq!(ends[0].1, ends[1].0, "a gap between the two records");
            let file = log.segment_file(1).unwrap();
            for (key, (at, _)) in appended {
                let mut buf = Vec::new();
                file.read_record(u64::from(offset_of(at)), &mut buf)
                    .unwrap();
                assert_eq!(record::decode(&buf).unwrap().key, key);
                let read = log.read(at, &mut buf).unwrap().unwrap();
                assert_eq!(read.key, key);
            }
        });
    }

    /// An async caller (the store's `Durable` future under loom's `block_on`, which reports a
    /// deadlock if the waker is never woken) and a blocking caller wait side by side: both
    /// return with their records durable.
    #[test]
    fn loom_group_commit_async_caller_is_woken_durable() {
        explore_bounded("group commit, async and blocking callers", 2, || {
            let storage = SimStorage::new(7);
            let log = open_log(&storage);
            let writer = spawn_writer(Arc::clone(&log)).unwrap();
            let task = {
                let log = Arc::clone(&log);
                loom::thread::spawn(move || {
                    let (_, end) = log.append(&record(b"a")).unwrap();
                    loom::future::block_on(crate::asynchronous::Durable::new(&log, end)).unwrap();
                    assert!(
                        log.is_durable(end),
                        "resolved before its record was durable"
                    );
                })
            };
            let (_, end) = log.append(&record(b"b")).unwrap();
            log.wait_durable(end).unwrap();
            assert!(log.is_durable(end));
            task.join().unwrap();
            log.begin_shutdown();
            writer.join().unwrap();
        });
    }

    /// The writer's fsync fails while an async caller waits: its future resolves with
    /// `Poisoned` instead of pending for ever.
    #[test]
    fn loom_group_commit_failure_reaches_an_async_waiter() {
        explore("group commit, failed fsync, async waiter", || {
            let storage = SimStorage::new(7);
            let log = open_log(&storage);
            storage.set_faults(Faults {
                sync_error_per_million: 1_000_000,
                ..Faults::default()
            });
            let writer = spawn_writer(Arc::clone(&log)).unwrap();
            let (_, end) = log.append(&record(b"a")).unwrap();
            let outcome = loom::future::block_on(crate::asynchronous::Durable::new(&log, end));
            assert!(
                matches!(outcome, Err(Error::Poisoned { .. })),
                "{outcome:?}"
            );
            assert!(!log.is_durable(end));
            log.begin_shutdown();
            writer.join().unwrap();
        });
    }

    /// The writer's fsync fails: a waiting caller gets `Poisoned` instead of hanging or being
    /// told its record is durable, and so does every later append.
    #[test]
    fn loom_group_commit_failure_reaches_every_waiter() {
        explore("group commit, failed fsync", || {
            let storage = SimStorage::new(7);
            let log = open_log(&storage);
            storage.set_faults(Faults {
                sync_error_per_million: 1_000_000,
                ..Faults::default()
            });
            let writer = spawn_writer(Arc::clone(&log)).unwrap();
            let waiter = {
                let log = Arc::clone(&log);
                loom::thread::spawn(move || {
                    let (_, end) = log.append(&record(b"a")).unwrap();
                    let outcome = log.wait_durable(end);
                    assert!(
                        matches!(outcome, Err(Error::Poisoned { .. })),
                        "{outcome:?}"
                    );
                    assert!(!log.is_durable(end));
                })
            };
            waiter.join().unwrap();
            assert!(matches!(
                log.append(&record(b"b")),
                Err(Error::Poisoned { .. })
            ));
            log.begin_shutdown();
            writer.join().unwrap();
        });
    }
}
