//! Recovery on open: read every segment in order, rebuild the index, and cut a torn tail.
//!
//! What recovery does with each kind of damage (also in `engine/FORMAT.md`):
//! - The newest segment may end in a torn write (a crash during an append): replay stops at the
//!   first record that does not decode, and the file is truncated there. Nothing after that point
//!   was acknowledged in `Sync` mode, because the writer fsyncs before acknowledging.
//! - The newest segment shorter than a header, or with a zero-filled header (a crash while it was
//!   being created, before any record went into it) is deleted.
//! - Everything replayed is made durable before the store opens (fsync of the newest segment and
//!   of the directory): an earlier process of this boot may have left bytes only in the cache.
//! - Any damage in an older segment, which was fsynced whole before the log moved on, is an
//!   [`Error::Corrupt`] naming the file and offset: recovery never serves a guess.
//! - A segment-named file without the magic is [`Error::NotASegment`]; a newer format version is
//!   [`Error::UnsupportedVersion`].
//! - Zeros from a record boundary to the end of the newest segment (a prepared segment's unused
//!   space, `log::prepare`) are no damage: they stay, and appends overwrite them.
//! - A group (a transaction) is applied whole or not at all: [`ReplayDecoder`] checks all of it
//!   at its first record, and a group not all there and intact is damage at that record.
//! - A store of an older format (1 or 2) is read as written; its newest segment, unless sealed,
//!   is sealed in its own format and the log goes on in a new segment of the current one.
//!
//! Replay by two threads: a long stretch of a segment (`PARALLEL_REPLAY_MIN_BYTES`) is shared.
//! The checking thread decodes and judges every record (checksums, whole groups, seals, the torn
//! tail, the segment's stats), applies the state records and gathers the index records into
//! chunks; an applier thread applies each chunk, shard by shard, while the checker fills the
//! next (`chunks`). Invariants: no record is applied before the checking thread has judged it; a
//! key's records (one shard) are applied in log order; keys of different shards, and state
//! against index records, never interact in replay; of two errors the one earlier in the log is
//! reported, as a replay in log order would have.
//!
//! A replayed segment is read through a read-only map of the file where the storage maps files
//! (the operating system's does; [`crate::sim::SimStorage`] maps a copy and panics if a mapped
//! file is written or cut; a storage that does not map, or
//! [`crate::Config::map_segments_at_open`] `(false)`, has the segment read into one reused
//! buffer): the checker reads the page cache in place, where a copy of up to a segment ran
//! first on one thread while the other waited. Invariant: a file is never written or cut while
//! it is mapped (a read of cut pages through a map raises SIGBUS): a torn tail or a sealed
//! segment's unused zeros found during replay are cut once the segment's map is dropped, and
//! not at all when that segment's replay finds an error (the open fails, leaving the files as
//! they were). A device's read error under a map is a `SIGBUS`, not an error return:
//! [`crate::Config::map_segments_at_open`] turns the maps off for such a device.

mod chunks;

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Unbounded};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::checkpoint::{self, Checkpoint};
use crate::claim::registry::{claim_of, ClaimToken};
use crate::error::{Error, Result};
use crate::index::{Index, KeyCheck, Probe, ShardTable, Slot};
use crate::io::Storage;
use crate::log::segment::{self, SegmentFile};
use crate::log::{location, offset_of, segment_of, Location, SegmentStats};
use crate::record::{self, HeaderError, Record, RecordKind, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::state::StateTables;
use chunks::{apply_chunk, Applied, Chunk, CHUNK_RECORDS};

/// What recovery found and did, for operators and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments_replayed: u64,
    /// Records decoded and applied (inserts and removals, live or expired).
    pub records_replayed: u64,
    /// Insert records skipped because their deadline had passed.
    pub expired_records_skipped: u64,
    /// Where the newest segment was cut because of a torn write, and how many bytes were cut.
    pub truncated_tail: Option<TruncatedTail>,
    /// A newest segment deleted because it was torn while being created.
    pub removed_empty_segment: Option<PathBuf>,
    /// Index entries loaded from the checkpoint (0 without one).
    pub checkpoint_entries_loaded: u64,
    /// Why a checkpoint present in the directory was not used (the log was replayed instead).
    pub checkpoint_ignored: Option<String>,
    /// Delta checkpoints loaded after the full one (their entries count in
    /// `checkpoint_entries_loaded`).
    pub checkpoint_deltas_loaded: u64,
    /// Why the delta checkpoint after the last one loaded was not used (the log was replayed
    /// from the last one loaded instead).
    pub checkpoint_delta_ignored: Option<String>,
}

/// Whether the bytes after a newest segment's last record are a prepared segment's unused
/// space: all zeros. No record's bytes are (the fifth byte of a record always has the layout
/// mark set), so a torn write, which leaves part of a record, is never taken for it.
pub(crate) fn is_prepared_space(rest: &[u8]) -> bool {
    rest.iter().all(|&b| b == 0)
}

/// Where the records of a segment file end, as far as sizing the index needs to know: its
/// length less a trailing run of zero blocks (a prepared segment's unused space; a sealed
/// segment has none), found by a binary search over 4 KiB blocks: a dozen small reads, not the
/// segment's 64 MiB. A block of zeros amid the records (a long value of zeros) can only make
/// the estimate low, which costs a table doubling, never a wrong answer. 0 if unreadable.
fn records_end(file: &SegmentFile) -> u64 {
    const BLOCK: u64 = 4096;
    let Ok(len) = file.len() else {
        return 0;
    };
    let mut block = [0u8; BLOCK as usize];
    let mut zeros = |from: u64| -> bool {
        match file.read_at(&mut block, from) {
            Ok(read) => block[..read].iter().fold(0u8, |any, &b| any | b) == 0,
            Err(_) => true,
        }
    };
    let blocks = len.div_ceil(BLOCK);
    // A sealed segment ends with its seal: one read says so.
    if blocks == 0 || !zeros((blocks - 1) * BLOCK) {
        return len;
    }
    // The first block from which on every block is zeros, assuming records, then zeros.
    let (mut low, mut high) = (0, blocks - 1);
    while low < high {
        let middle = low + (high - low) / 2;
        if zeros(middle * BLOCK) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    (low * BLOCK).min(len)
}

/// The fewest index records a chunk must hold to size the index from its density (fewer say
/// too little about the rest of the log).
const SIZING_MIN_RECORDS: usize = if CHUNK_RECORDS < 4096 {
    CHUNK_RECORDS
} else {
    4096
};

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The segment file.
    pub path: PathBuf,
    /// The offset of the first record that did not decode; the file now ends here.
    pub offset: u64,
    /// Bytes removed.
    pub bytes_cut: u64,
    /// Why the record there did not decode.
    pub reason: String,
}

/// The recovered log: its segment files (oldest first) and where appends continue.
pub(crate) struct Recovered {
    pub(crate) segments: Vec<SegmentFile>,
    pub(crate) segment_stats: BTreeMap<u32, SegmentStats>,
    pub(crate) tail_offset: u32,
    pub(crate) report: RecoveryReport,
    /// Claims whose key still holds them after replay: their side effect is in doubt.
    pub(crate) in_doubt: Vec<ClaimToken>,
}

/// How [`recover`] replays, from the store's config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayOptions {
    /// Segments with at least this many bytes to replay are shared by two threads.
    pub(crate) parallel_min_bytes: usize,
    /// Whether the shards note their changes for delta checkpoints (deltas are on).
    pub(crate) track_changes: bool,
    /// Whether replayed segments are read through maps where the storage maps files
    /// ([`crate::Config::map_segments_at_open`]).
    pub(crate) map_segments: bool,
}

pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    index: &Index,
    state: &mut StateTables,
    now_millis: u64,
    checkpoint: std::result::Result<Option<Checkpoint>, String>,
    options: ReplayOptions,
) -> Result<Recovered> {
    let ReplayOptions {
        parallel_min_bytes,
        track_changes,
        map_segments,
    } = options;
    let ids = segment::list_segments(storage, dir)?;
    let mut report = RecoveryReport::default();
    let mut opened: BTreeMap<u32, SegmentFile> = BTreeMap::new();
    let mut tail_offset = SEGMENT_HEADER_LEN as u32;
    let mut segment_stats: BTreeMap<u32, SegmentStats> = BTreeMap::new();
    let checkpoint = match checkpoint {
        Ok(Some(checkpoint)) => match usable(&checkpoint, &ids) {
            Ok(()) => Some(checkpoint),
            Err(reason) => {
                report.checkpoint_ignored = Some(reason);
                None
            }
        },
        Ok(None) => None,
        Err(reason) => {
            report.checkpoint_ignored = Some(reason);
            None
        }
    };
    // Replay starts at the checkpoint's location, or at the very beginning.
    // Every segment file's header first: a foreign file is named as such before anything else
    // is judged (a newest file that was torn while being created is dealt with below).
    // Each segment's format version (1: written by an older build).
    let mut versions: BTreeMap<u32, u32> = BTreeMap::new();
    for (position, &id) in ids.iter().enumerate() {
        let file = SegmentFile::open(storage, dir, id)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let got = file.read_at(&mut header, 0)?;
        let newest = position + 1 == ids.len();
        if newest && got == SEGMENT_HEADER_LEN && header.iter().all(|&b| b == 0) {
            continue;
        }
        if newest && got < SEGMENT_HEADER_LEN {
            continue;
        }
        if let HeaderVerdict::Valid { version } = check_header(&file, &header[..got], newest)? {
            versions.insert(id, version);
        }
    }
    // A checkpoint whose replay start lies past the header of a segment without a valid one
    // (the newest, torn while it was being created: no record was ever written into it) does
    // not describe this log: any doubt about a checkpoint means it is ignored.
    let checkpoint = match checkpoint {
        Some(c)
            if offset_of(c.replay_from) != 0
                && !versions.contains_key(&segment_of(c.replay_from)) =>
        {
            report.checkpoint_ignored = Some(format!(
                "its replay start lies in segment {}, which has no valid header",
                segment_of(c.replay_from)
            ));
            None
        }
        other => other,
    };
    if ids.first() == Some(&0) {
        // Ids start at 1: location 0 means "no record" in the index.
        return Err(Error::Corrupt {
            path: dir.join(segment::segment_file_name(0)),
            offset: 0,
            reason: "segment id 0 is not a valid segment id".into(),
        });
    }
    // The checkpoint's entries before anything rests on it: the full checkpoint's are checked
    // as they are put (see `checkpoint::install`, which leaves nothing behind when one is bad),
    // and a bad one ignores the checkpoint, as a failed check on load does.
    // Where the records of each segment replayed end (see below), when a checkpoint's replay
    // start is known before its install.
    let mut records_ends = None;
    let checkpoint = match checkpoint {
        Some(c) => {
            let exists = |id| ids.binary_search(&id).is_ok();
            // Tables laid out at once for the checkpoint's entries and those the replay after
            // it will add: otherwise replay lays them out again before its first big chunk,
            // moving every installed entry (about a sixth of a worst-case reopen at 10 M keys).
            let ends = records_ends_from(storage, dir, &ids, segment_of(c.replay_from));
            let replay_entries =
                estimate_replay_entries(storage, dir, &ends, c.replay_from, now_millis);
            records_ends = Some(ends);
            match checkpoint::install(&c, index, state, exists, replay_entries, now_millis) {
                Ok(installed) => {
                    report.checkpoint_entries_loaded = installed;
                    Some(c)
                }
                Err(reason) => {
                    let path = dir.join(checkpoint::CHECKPOINT_FILE_NAME);
                    report.checkpoint_ignored =
                        Some(format!("{} ignored: {reason}", path.display()));
                    None
                }
            }
        }
        None => None,
    };
    let replay_from = checkpoint.as_ref().map_or(0, |c| c.replay_from);
    let mut claim_keys: Vec<Box<[u8]>> = checkpoint
        .as_ref()
        .map(|c| c.claim_keys.clone())
        .unwrap_or_default();
    let first_replayed = segment_of(replay_from);
    // Where the records of each segment replayed end, to size the index for the whole replay
    // at its start (see `Chunk::size_the_index_for`): already known from the checkpoint's
    // replay start unless the checkpoint was ignored.
    let records_ends: BTreeMap<u32, u64> = match records_ends {
        Some(ends) if checkpoint.is_some() => ends,
        _ => records_ends_from(storage, dir, &ids, first_replayed),
    };
    let mut newest_sealed = false;
    // One buffer for every segment read: fresh memory for each would be page-faulted and
    // cleared by the kernel all over again.
    let mut buffer = Vec::new();
    if let Some(checkpoint) = &checkpoint {
        // Segments before the replay start are summarised by the checkpoint: open them (their
        // headers are checked) but do not read them.
        for &id in ids.iter().filter(|&&id| id < first_replayed) {
            let file = SegmentFile::open(storage, dir, id)?;
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            let got = file.read_at(&mut header, 0)?;
            let HeaderVerdict::Valid { version } = check_header(&file, &header[..got], false)?
            else {
                unreachable!("only the newest segment may be a torn creation");
            };
            check_seal(&file, version)?;
            newest_sealed = true;
            segment_stats.insert(id, checkpoint.segments[&id]);
            opened.insert(id, file);
        }
        if ids.binary_search(&first_replayed).is_ok() {
            segment_stats.insert(first_replayed, checkpoint.segments[&first_replayed]);
        }
        report.checkpoint_deltas_loaded = u64::from(checkpoint.deltas);
        report.checkpoint_delta_ignored = checkpoint.delta_ignored.clone();
        // The next delta extends this chain: from here on every shard notes what it changes
        // of and after what the chain holds (replay puts and drops entries too). Without
        // deltas nothing would read those notes, and replay would pay for them.
        if let Some(chain) = checkpoint.chain().filter(|_| track_changes) {
            for shard in index.shards() {
                shard.lock().changes.start(checkpoint.replay_from, &[]);
            }
            *index.checkpoint_chain.lock() = Some(chain);
        }
    }
    for (position, &id) in ids.iter().enumerate() {
        if id < first_replayed {
            continue;
        }
        let newest = position + 1 == ids.len();
        let file = SegmentFile::open(storage, dir, id)?;
        let start = if id == first_replayed && replay_from != 0 {
            offset_of(replay_from) as usize
        } else {
            0
        };
        // The segment's bytes: mapped where the storage maps files and the config allows it
        // (replay then reads the page cache in place), else read into the one buffer from the replay start on (the zeroed
        // prefix below it is never touched; its header was checked above). The file is not
        // cut while it is mapped: a cut found below waits in `cut_to` until the map is gone.
        let mapped = if map_segments {
            file.map_readonly()
        } else {
            None
        };
        if mapped.is_none() {
            read_from(&file, start, &mut buffer)?;
        }
        let bytes: &[u8] = match &mapped {
            Some(map) => (**map).as_ref(),
            None => &buffer[..],
        };
        let mut cut_to: Option<u64> = None;
        let verdict = if start == 0 {
            check_header(&file, bytes, newest)?
        } else {
            // A newest file whose header is all zeros or short (a torn creation) has no version:
            // a checkpoint that starts replay inside it contradicts the files.
            let version = versions.get(&id).copied().ok_or_else(|| Error::Corrupt {
                path: file.path.clone(),
                offset: 0,
                reason: format!(
                    "the checkpoint's replay starts at offset {start} of a segment with no header"
                ),
            })?;
            HeaderVerdict::Valid { version }
        };
        let version = match verdict {
            HeaderVerdict::Valid { version } => version,
            HeaderVerdict::TornCreation => {
                drop(file);
                let path = dir.join(segment::segment_file_name(id));
                storage.remove(&path).map_err(|e| {
                    Error::io(format!("removing torn segment {}", path.display()), e)
                })?;
                segment::sync_dir(storage, dir)?;
                report.removed_empty_segment = Some(path);
                continue;
            }
        };
        versions.insert(id, version);
        report.segments_replayed += 1;
        let mut offset = start.max(SEGMENT_HEADER_LEN);
        if offset > bytes.len() {
            return Err(Error::Corrupt {
                path: file.path.clone(),
                offset: bytes.len() as u64,
                reason: format!("file ends before the checkpoint's replay start {offset}"),
            });
        }
        let mut sealed = false;
        // This segment's stats (those the checkpoint counted before its replay start, if any),
        // kept at hand rather than looked up in the map for every record.
        let mut stats = segment_stats.remove(&id).unwrap_or_default();
        // Index records are applied by chunks, shard by shard (see `chunks`). A long stretch is
        // shared by two threads: this one checks every record (checksums, groups, seals, the
        // torn tail), keeps the segment's stats, applies the state records and fills chunks of
        // index records; an applier applies each full chunk while this one fills the next.
        let current = Current {
            file: &file,
            start,
            bytes,
        };
        let parallel = bytes.len().saturating_sub(offset) >= parallel_min_bytes;
        // Whether the applier waits for a chunk: the checker then hands its chunks over
        // ungrouped, for the applier to group (see `hand_over`).
        let applier_waits = &AtomicBool::new(false);
        let (checked, applied) = std::thread::scope(|scope| {
            // Two chunks in flight at most: one being applied, one waiting; spent chunks come
            // back to be filled again.
            let (full, to_apply) = std::sync::mpsc::sync_channel::<Chunk>(1);
            let (spent, to_fill) = std::sync::mpsc::channel::<Chunk>();
            let opened = &opened;
            let applier = parallel.then(|| {
                scope.spawn(move || {
                    let mut tables = Tables::lock(index);
                    let mut applied = Applied::default();
                    loop {
                        applier_waits.store(true, Ordering::Relaxed);
                        let Ok(mut chunk) = to_apply.recv() else {
                            break;
                        };
                        applier_waits.store(false, Ordering::Relaxed);
                        apply_chunk(
                            index,
                            &mut tables,
                            &mut chunk,
                            (opened, current),
                            now_millis,
                            &mut applied,
                        );
                        // The checker may have stopped already: then the chunk is not wanted.
                        let _ = spent.send(chunk);
                    }
                    applied
                })
            });
            // Without an applier this thread applies its chunks itself.
            let mut own = (!parallel).then(|| (Tables::lock(index), Applied::default()));
            let mut chunk = Chunk::with_capacity(CHUNK_RECORDS);
            // The first chunk big enough sizes the index for the rest of the replay: this
            // segment's records from it on and the later segments'.
            let records_end = records_ends.get(&id).map_or(0, |&end| end as usize);
            // Excluded, not `id + 1..`: the last possible segment id has no successor.
            let later_bytes: u64 = records_ends
                .range((Excluded(id), Unbounded))
                .fold(0, |sum, (_, &end)| sum.saturating_add(end));
            let mut sized = false;
            let mut size_the_index = |chunk: &mut Chunk| {
                if sized || chunk.len() < SIZING_MIN_RECORDS {
                    return;
                }
                if let Some(first) = chunk.first_offset() {
                    chunk.size_the_index_for(
                        (records_end.saturating_sub(first) as u64).saturating_add(later_bytes),
                    );
                    sized = true;
                }
            };
            let mut hand_over = |chunk: &mut Chunk| match &mut own {
                Some((tables, applied)) => {
                    apply_chunk(index, tables, chunk, (opened, current), now_millis, applied);
                }
                None => {
                    // Grouped by whichever thread has time: here while the applier is busy
                    // (with a large index, where each record it applies is a cache miss, it is
                    // the slower half), there when it waits for this chunk (with a small one,
                    // where checking is the slower half).
                    if !applier_waits.load(Ordering::Relaxed) {
                        chunk.group_by_shard(index, bytes);
                    }
                    let next = to_fill
                        .try_recv()
                        .unwrap_or_else(|_| Chunk::with_capacity(CHUNK_RECORDS));
                    let filled = std::mem::replace(chunk, next);
                    full.send(filled).expect("the applier takes every chunk");
                }
            };
            let checked = (|| -> std::result::Result<(), (usize, Error)> {
                let mut decoder = ReplayDecoder::new(version);
                while offset < bytes.len() {
                    let at_offset = offset;
                    let fail = |error: Error| (at_offset, error);
                    match decoder.decode(bytes, offset) {
                        Ok((record, len)) if record.kind == RecordKind::Seal => {
                            let corrupt = |reason: String| Error::Corrupt {
                                path: file.path.clone(),
                                offset: offset as u64,
                                reason,
                            };
                            if record::seal_length(&record) != Some(offset as u64) {
                                return Err(fail(corrupt(
                                    "a seal that does not vouch for its own offset".into(),
                                )));
                            }
                            if offset + len != bytes.len() {
                                // A prepared segment sealed just before a crash may keep its
                                // unused zeros (the cut before the seal was not durable yet):
                                // cut them now, before a newer segment makes them damage.
                                if !(newest && is_prepared_space(&bytes[offset + len..])) {
                                    return Err(fail(corrupt(
                                        "bytes follow the segment's seal".into(),
                                    )));
                                }
                                cut_to = Some((offset + len) as u64);
                            }
                            sealed = true;
                            break;
                        }
                        // A chunk's unfilled end (format 4): no record's, nothing to apply.
                        Ok((record, len)) if record.kind == RecordKind::Padding => offset += len,
                        Ok((record, len)) => {
                            let at = location(id, offset as u32);
                            stats.add_record(&record);
                            report.records_replayed += 1;
                            match record.kind {
                                RecordKind::StatePut
                                | RecordKind::StateRemove
                                | RecordKind::Position
                                | RecordKind::Group => apply_state(
                                    state,
                                    opened,
                                    current,
                                    (at, at + len as u64),
                                    &record,
                                )
                                .map_err(fail)?,
                                _ => {
                                    chunk.push(bytes, (at, offset), &record);
                                    if chunk.len() == CHUNK_RECORDS {
                                        size_the_index(&mut chunk);
                                        hand_over(&mut chunk);
                                    }
                                }
                            }
                            offset += len;
                        }
                        // The unused zeros of a prepared segment (see `log::prepare`): no
                        // record, no damage. They stay, and the log appends over them.
                        Err(_) if newest && is_prepared_space(&bytes[offset..]) => break,
                        Err(error) if newest => {
                            cut_to = Some(offset as u64);
                            report.truncated_tail = Some(TruncatedTail {
                                path: file.path.clone(),
                                offset: offset as u64,
                                bytes_cut: (bytes.len() - offset) as u64,
                                reason: error.to_string(),
                            });
                            break;
                        }
                        Err(error) => {
                            return Err(fail(Error::Corrupt {
                                path: file.path.clone(),
                                offset: offset as u64,
                                reason: error.to_string(),
                            }))
                        }
                    }
                }
                Ok(())
            })();
            // Whatever happened, the records checked before it are applied: one of them may
            // hold an earlier error, which a replay in log order would have met first.
            size_the_index(&mut chunk);
            hand_over(&mut chunk);
            drop(full);
            let applied = match applier {
                Some(applier) => applier.join().expect("the replay applier panicked"),
                None => own.map(|(_, applied)| applied).unwrap_or_default(),
            };
            (checked, applied)
        });
        report.expired_records_skipped += applied.expired_records_skipped;
        claim_keys.extend(applied.claim_keys);
        // The first error in log order wins, as a replay in log order would have found it.
        let mut first_error: Option<(usize, Error)> = checked.err();
        if let Some((at, error)) = applied.error {
            if first_error.as_ref().is_none_or(|(first, _)| at < *first) {
                first_error = Some((at, error));
            }
        }
        if let Some((_, error)) = first_error {
            return Err(error);
        }
        if !newest && !sealed {
            return Err(Error::Corrupt {
                path: file.path.clone(),
                offset: bytes.len() as u64,
                reason: "an older segment ends without its seal: it was cut short".into(),
            });
        }
        // A torn tail, or the unused zeros after a seal, go now that nothing reads the map.
        drop(mapped);
        if let Some(len) = cut_to {
            file.truncate(len)?;
        }
        // The last segment opened decides whether the log can go on in it.
        newest_sealed = sealed;
        tail_offset = offset as u32;
        segment_stats.insert(id, stats);
        opened.insert(id, file);
    }
    // A store written by an older build goes on in a segment of the current format: its newest
    // segment is sealed in its own format (as the writer seals a full one) and left alone.
    if let Some((&id, file)) = opened.iter().next_back() {
        let version = versions.get(&id).copied();
        if !newest_sealed && version.is_some_and(|v| v != record::FORMAT_VERSION) {
            // Zeros after its records (prepared space, or zero-filled pages a crash left) go
            // first: the seal must end the file.
            if file.len()? > u64::from(tail_offset) {
                file.truncate(u64::from(tail_offset))?;
            }
            let seal = if version == Some(record::FORMAT_VERSION_1) {
                record::encode_seal_v1(u64::from(tail_offset))
            } else {
                // Format 2's seal is format 3's.
                record::encode_seal(u64::from(tail_offset))
            };
            file.write_at(&seal, u64::from(tail_offset))?;
            file.sync()?;
            newest_sealed = true;
        }
    }
    count_live_entries(index, state, &mut segment_stats, parallel_min_bytes);
    for (id, file) in &opened {
        if let Some(stats) = segment_stats.get_mut(id) {
            stats.bytes = file.len()?;
        }
    }
    let in_doubt = claims_still_open(index, &opened, claim_keys, now_millis)?;
    // What was read may include bytes that are only in the OS cache: written by an earlier
    // process of this boot whose fsync failed or never ran. The log starts out declaring all of
    // it durable, so make it so (older segments were fsynced before the log moved past them).
    if let Some(newest) = opened.values().next_back() {
        newest.sync()?;
        segment::sync_dir(storage, dir)?;
    }
    // No segment, or the newest was sealed but its successor never made it to disk: the log
    // continues in a new segment.
    if opened.is_empty() || newest_sealed {
        let id = match ids.last() {
            None => 1,
            Some(&last) => last.checked_add(1).ok_or_else(|| Error::Corrupt {
                path: dir.join(segment::segment_file_name(last)),
                offset: 0,
                reason: "the last possible segment id is taken: the log cannot go on".into(),
            })?,
        };
        opened.insert(id, SegmentFile::create(storage, dir, id)?);
        tail_offset = SEGMENT_HEADER_LEN as u32;
    }
    segment_stats
        .entry(opened.keys().next_back().copied().unwrap_or(1))
        .or_default();
    Ok(Recovered {
        segments: opened.into_values().collect(),
        segment_stats,
        tail_offset,
        report,
        in_doubt,
    })
}

/// The least a segment must still hold past the replay start for its replay to be shared with an
/// applier thread by default: below it, starting the thread costs more than it saves.
pub(crate) const PARALLEL_REPLAY_MIN_BYTES: usize = 256 << 10;

/// Every shard table, locked once for a whole segment rather than once a record: the store is
/// not open yet, so nothing else takes these locks, and one thread at a time applies index
/// records.
struct Tables<'a> {
    guards: Vec<parking_lot::MutexGuard<'a, ShardTable>>,
}

impl<'a> Tables<'a> {
    fn lock(index: &'a Index) -> Tables<'a> {
        Tables {
            guards: index.shards().iter().map(|table| table.lock()).collect(),
        }
    }

    fn len(&self) -> usize {
        self.guards.len()
    }

    fn shard(&mut self, shard: usize) -> &mut ShardTable {
        &mut self.guards[shard]
    }
}

/// The claims that are still their key's live entry after replay, among the keys claimed in the
/// replayed log or listed open by the checkpoint.
fn claims_still_open(
    index: &Index,
    opened: &BTreeMap<u32, SegmentFile>,
    mut claim_keys: Vec<Box<[u8]>>,
    now_millis: u64,
) -> Result<Vec<ClaimToken>> {
    claim_keys.sort_unstable();
    claim_keys.dedup();
    let mut in_doubt = Vec::new();
    let mut buf = Vec::new();
    for key in claim_keys {
        let hash = index.hash(&key);
        let table = index.lock(hash);
        let mut found = None;
        let probe = table.probe(hash.tag, now_millis, |candidate| {
            let record = read_replayed(opened, None, candidate.location, &mut buf)?;
            if record.key != &key[..] {
                return Ok::<_, Error>(KeyCheck::Other);
            }
            if record.expires_at_millis <= now_millis {
                return Ok(KeyCheck::Expired);
            }
            found = claim_of(&record);
            Ok(KeyCheck::Live)
        })?;
        if let (Probe::Found(_), Some(token)) = (probe, found) {
            in_doubt.push(token);
        }
    }
    Ok(in_doubt)
}

/// Checks that a sealed segment that is not replayed still ends with its seal. If it does not,
/// the segment is read to name the first damaged record.
fn check_seal(file: &SegmentFile, version: u32) -> Result<()> {
    let len = file.len()?;
    let seal_len = record::seal_record_len(version);
    let at = len.saturating_sub(seal_len as u64);
    let mut seal = [0u8; record::V1_SEAL_RECORD_LEN];
    let got = file.read_at(&mut seal[..seal_len], at)?;
    let vouched = ReplayDecoder::new(version)
        .decode(&seal[..got.min(seal_len)], 0)
        .ok()
        .and_then(|(record, _)| record::seal_length(&record));
    if vouched == Some(at) && at >= SEGMENT_HEADER_LEN as u64 {
        return Ok(());
    }
    let bytes = read_whole(file)?;
    let mut offset = SEGMENT_HEADER_LEN;
    let mut decoder = ReplayDecoder::new(version);
    while offset < bytes.len() {
        match decoder.decode(&bytes, offset) {
            Ok((_, len)) => offset += len,
            Err(error) => {
                return Err(Error::Corrupt {
                    path: file.path.clone(),
                    offset: offset as u64,
                    reason: error.to_string(),
                })
            }
        }
    }
    Err(Error::Corrupt {
        path: file.path.clone(),
        offset: len,
        reason: "an older segment ends without its seal: it was cut short".into(),
    })
}

/// Whether a checkpoint fits the segments on disk: every segment before its replay start must be
/// one it summarises (segments it lists may have been deleted since).
fn usable(checkpoint: &Checkpoint, ids: &[u32]) -> std::result::Result<(), String> {
    for &id in ids
        .iter()
        .filter(|&&id| id <= segment_of(checkpoint.replay_from))
    {
        if !checkpoint.segments.contains_key(&id) {
            return Err(format!(
                "checkpoint does not list segment {id}, which is on disk"
            ));
        }
    }
    Ok(())
}

/// Gives every index entry its expiry wheel entry (replay and the checkpoint put them
/// unscheduled) and sets each segment's live count to the number of index entries, state
/// entries and positions pointing into it, and its live state count to those of the last two
/// (replay drops and replaces entries freely, so the counts are taken once at the end). Two
/// threads share the shards when the index is large.
fn count_live_entries(
    index: &Index,
    state: &mut StateTables,
    segment_stats: &mut BTreeMap<u32, SegmentStats>,
    parallel_min_bytes: usize,
) {
    // Segment ids on disk form a short range: count in an array, not with a map lookup per
    // entry (10 M entries at open).
    let first = segment_stats.keys().next().copied().unwrap_or(0);
    let last = segment_stats.keys().next_back().copied().unwrap_or(0);
    let shards = index.shards();
    let entries: usize = shards.iter().map(|shard| shard.lock().len()).sum();
    let parallel = shards.len() >= 2
        && entries.saturating_mul(std::mem::size_of::<Slot>()) >= parallel_min_bytes;
    let count_in = |first_shard: usize, step: usize| {
        let mut counts = vec![0u64; (last - first) as usize + 1];
        for shard in shards.iter().skip(first_shard).step_by(step) {
            let mut table = shard.lock();
            table.released.clear();
            table.schedule_all(|slot| {
                let id = segment_of(slot.location);
                debug_assert!(
                    (first..=last).contains(&id),
                    "entry in unknown segment {id}"
                );
                if let Some(count) = id
                    .checked_sub(first)
                    .and_then(|i| counts.get_mut(i as usize))
                {
                    *count += 1;
                }
            });
        }
        counts
    };
    let mut counts = vec![0u64; (last - first) as usize + 1];
    for part in checkpoint::on_shards(parallel, count_in) {
        for (count, more) in counts.iter_mut().zip(part) {
            *count += more;
        }
    }
    state.released.clear();
    let mut state_counts = vec![0u64; counts.len()];
    for location in state.locations() {
        if let Some(i) = segment_of(location)
            .checked_sub(first)
            .filter(|&i| (i as usize) < counts.len())
        {
            counts[i as usize] += 1;
            state_counts[i as usize] += 1;
        }
    }
    for (id, stats) in segment_stats.iter_mut() {
        stats.live = counts[(id - first) as usize];
        stats.state_live = state_counts[(id - first) as usize];
    }
}

pub(crate) enum HeaderVerdict {
    Valid { version: u32 },
    TornCreation,
}

pub(crate) fn check_header(
    file: &SegmentFile,
    bytes: &[u8],
    newest: bool,
) -> Result<HeaderVerdict> {
    let torn_creation = bytes.len() < SEGMENT_HEADER_LEN
        || bytes[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0)
            && bytes[SEGMENT_HEADER_LEN..].iter().all(|&b| b == 0);
    match record::decode_segment_header(bytes) {
        Ok(header) if header.segment_id == u64::from(file.id) => Ok(HeaderVerdict::Valid {
            version: header.version,
        }),
        Ok(SegmentHeader { segment_id: id, .. }) => Err(Error::Corrupt {
            path: file.path.clone(),
            offset: 0,
            reason: format!(
                "header names segment {id}, the file name segment {}",
                file.id
            ),
        }),
        Err(_) if newest && torn_creation => Ok(HeaderVerdict::TornCreation),
        Err(HeaderError::BadMagic) => Err(Error::NotASegment {
            path: file.path.clone(),
        }),
        Err(HeaderError::UnsupportedVersion(found)) => Err(Error::UnsupportedVersion {
            path: file.path.clone(),
            found,
            supported: record::FORMAT_VERSION,
        }),
        Err(HeaderError::Truncated) => Err(Error::Corrupt {
            path: file.path.clone(),
            offset: 0,
            reason: format!(
                "file is {} bytes, shorter than a segment header",
                bytes.len()
            ),
        }),
        Err(HeaderError::BadChecksum) => Err(Error::Corrupt {
            path: file.path.clone(),
            offset: 0,
            reason: "segment header checksum mismatch".into(),
        }),
    }
}

/// The file's bytes from `start` on, at their offsets; the prefix before `start` is zeroes.
/// The buffer is reused from segment to segment and the read overwrites it from `start` on: only
/// the prefix is cleared (clearing all of it again cost as much as a tenth of the read).
fn read_from(file: &SegmentFile, start: usize, bytes: &mut Vec<u8>) -> Result<()> {
    let len = file.len()? as usize;
    if bytes.capacity() < len {
        // A fresh zeroed allocation: the allocator maps zero pages that the kernel materializes
        // on first touch, so the prefix a checkpoint covers costs nothing. Growing the buffer
        // wrote zeros over all of it: at a reopen of 10 M keys the checkpoint's replay starts
        // deep in a 64 MiB segment, and faulting in and clearing the prefix took tens of ms.
        *bytes = vec![0u8; len];
    } else {
        bytes.resize(len, 0);
        bytes[..start.min(len)].fill(0);
    }
    if start < len {
        let got = file.read_at(&mut bytes[start..], start as u64)?;
        bytes.truncate(start + got);
    }
    Ok(())
}

fn read_whole(file: &SegmentFile) -> Result<Vec<u8>> {
    let len = file.len()?;
    let mut bytes = vec![0u8; len as usize];
    let got = file.read_at(&mut bytes, 0)?;
    bytes.truncate(got);
    Ok(bytes)
}

/// Records sampled from the replay's start to estimate how many index entries the replay adds.
const ESTIMATE_SAMPLE_RECORDS: usize = chunks::CHUNK_RECORDS;
/// The bytes read for the sample: room for that many records of up to 64 bytes (a typical
/// dedup record is 47); fewer are sampled where records are longer.
const ESTIMATE_SAMPLE_BYTES: usize = ESTIMATE_SAMPLE_RECORDS * 64;

/// Where the records of each segment from `first` on end (`records_end`).
fn records_ends_from(
    storage: &dyn Storage,
    dir: &Path,
    ids: &[u32],
    first: u32,
) -> BTreeMap<u32, u64> {
    ids.iter()
        .filter(|&&id| id >= first)
        .map(|&id| {
            let end = SegmentFile::open(storage, dir, id).map_or(0, |file| records_end(&file));
            (id, end)
        })
        .collect()
}

/// The index entries a replay from `replay_from` will add, estimated as replay's first big
/// chunk estimates them (see `Chunk::size_the_index_for`): the live inserts, claims and
/// failures among the first records from there, per byte, times the log bytes to replay, nine
/// tenths of it. 0 if nothing can be read there: replay then sizes the tables itself.
fn estimate_replay_entries(
    storage: &dyn Storage,
    dir: &Path,
    ends: &BTreeMap<u32, u64>,
    replay_from: Location,
    now_millis: u64,
) -> u64 {
    let first = segment_of(replay_from);
    let start = (offset_of(replay_from) as usize).max(SEGMENT_HEADER_LEN);
    let left: u64 = ends
        .iter()
        .map(|(&id, &end)| {
            if id == first {
                end.saturating_sub(start as u64)
            } else {
                end
            }
        })
        .sum();
    let Some(&first_end) = ends.get(&first) else {
        return 0;
    };
    let Ok(file) = SegmentFile::open(storage, dir, first) else {
        return 0;
    };
    let sample_len = (first_end as usize)
        .saturating_sub(start)
        .min(ESTIMATE_SAMPLE_BYTES);
    let mut bytes = vec![0u8; sample_len];
    let Ok(got) = file.read_at(&mut bytes, start as u64) else {
        return 0;
    };
    bytes.truncate(got);
    let (mut offset, mut live, mut records) = (0, 0u64, 0);
    while records < ESTIMATE_SAMPLE_RECORDS {
        let Ok((record, len)) = record::decode_sized(&bytes[offset..]) else {
            break;
        };
        if matches!(
            record.kind,
            RecordKind::Insert | RecordKind::Claim | RecordKind::Failure
        ) && record.expires_at_millis > now_millis
        {
            live += 1;
        }
        offset += len;
        records += 1;
    }
    if offset == 0 {
        return 0;
    }
    let expected = u128::from(live) * u128::from(left) / offset as u128;
    // Clamped as `Config::expected_keys` is: a damaged length cannot ask for the moon.
    u64::try_from(expected * 9 / 10)
        .unwrap_or(u64::MAX)
        .min(1 << 30)
}

/// Applies one replayed state record (a state entry, a position, or a group's opening, whose
/// body was checked whole before any of it was applied); index records go through `chunks`.
fn apply_state(
    state: &mut StateTables,
    earlier: &BTreeMap<u32, SegmentFile>,
    current: Current<'_>,
    (at, end): (Location, Location),
    record: &Record<'_>,
) -> Result<()> {
    match record.kind {
        RecordKind::StatePut => state.put(record.key, record.value, at, end),
        RecordKind::StateRemove => state.remove(record.key, record.removes_before(at), end),
        RecordKind::Position => {
            let position = record::position_value(record).ok_or_else(|| {
                corrupt_at(
                    earlier,
                    Some(current),
                    at,
                    "a position record without an 8-byte value",
                )
            })?;
            state.set_position(record.key, position, at, end);
        }
        RecordKind::Group => {}
        _ => unreachable!("index records are applied by chunks"),
    }
    Ok(())
}

/// Decodes a segment's records in order, checking each group whole before its first record is
/// applied, so that a group is applied entirely or not at all: a group cut short or damaged
/// anywhere fails to decode at its first record, like a torn record there.
///
/// A group is a run of records carrying the continuation flag closed by one that does not
/// (format 3), or a Group record followed by the records it announces (format 2). Each format's
/// segments hold only its own kind of group.
pub(crate) struct ReplayDecoder {
    version: u32,
    /// Where the group being replayed ends: the records before it were checked with it.
    group_end: usize,
}

impl ReplayDecoder {
    /// A decoder of the records of a segment of format `version`.
    pub(crate) fn new(version: u32) -> Self {
        ReplayDecoder {
            version,
            group_end: 0,
        }
    }

    /// Decodes the record at `offset` of `bytes` (a segment's bytes from any start, decoded in
    /// order from it), with its length.
    // Inlined (with `decode_one` and `record::decode_sized`) into the checking loop: moving the
    // record through returned values stalled store forwarding twice a record, a fifth of the
    // checker's time (`perf annotate` of a reopen of 2 M keys).
    #[inline(always)]
    pub(crate) fn decode<'b>(
        &mut self,
        bytes: &'b [u8],
        offset: usize,
    ) -> std::result::Result<(Record<'b>, usize), String> {
        let (record, len) = self.decode_one(&bytes[offset..])?;
        let continues = record::continues_group(&bytes[offset..]);
        if self.version == record::FORMAT_VERSION_2 {
            if record.kind == RecordKind::Group {
                check_v2_group(&bytes[offset..], len, &record)?;
            }
        } else if continues && offset >= self.group_end {
            self.group_end = self.group_end_from(bytes, offset, len)?;
        }
        Ok((record, len))
    }

    /// A record on its own: intact, of the segment's layout, with what its format allows.
    #[inline(always)]
    fn decode_one<'b>(&self, bytes: &'b [u8]) -> std::result::Result<(Record<'b>, usize), String> {
        let (record, len) = record::decode_sized(bytes).map_err(|e| e.to_string())?;
        let layout = record::layout_of(bytes).expect("a record was decoded");
        if layout != record::layout_of_format(self.version) {
            return Err(format!(
                "a record of layout {layout} in a segment of format {}",
                self.version
            ));
        }
        if self.version != record::FORMAT_VERSION_2 && record.kind == RecordKind::Group {
            return Err(format!(
                "a group record in a segment of format {}",
                self.version
            ));
        }
        if self.version < record::FORMAT_VERSION_3 && record::continues_group(bytes) {
            return Err(format!(
                "the continuation flag in a segment of format {}",
                self.version
            ));
        }
        if self.version < record::FORMAT_VERSION && record.kind == RecordKind::Padding {
            return Err(format!(
                "a padding record in a segment of format {}",
                self.version
            ));
        }
        Ok((record, len))
    }

    /// Where the format-3 group whose first record (of `len` bytes) is at `start` ends: every
    /// record up to and including the first without the continuation flag must be there and
    /// intact, and none may be a seal.
    fn group_end_from(
        &self,
        bytes: &[u8],
        start: usize,
        len: usize,
    ) -> std::result::Result<usize, String> {
        let mut offset = start + len;
        loop {
            if offset >= bytes.len() {
                return Err(format!(
                    "a group cut short: it ends past its segment's end ({} bytes on)",
                    offset - start
                ));
            }
            let (inner, inner_len) = self.decode_one(&bytes[offset..]).map_err(|e| {
                format!(
                    "a group whose record at +{} is damaged: {e}",
                    offset - start
                )
            })?;
            if inner.kind == RecordKind::Seal {
                return Err(format!(
                    "a group cut short by a seal at +{}",
                    offset - start
                ));
            }
            if inner.kind == RecordKind::Padding {
                return Err(format!("a group holding padding at +{}", offset - start));
            }
            let continues = record::continues_group(&bytes[offset..]);
            offset += inner_len;
            if !continues {
                return Ok(offset);
            }
        }
    }
}

/// Checks that a format-2 Group record (`len` bytes at the start of `bytes`) is followed by its
/// whole body: every record intact, as many as it announces.
fn check_v2_group(
    bytes: &[u8],
    len: usize,
    record: &Record<'_>,
) -> std::result::Result<(), String> {
    let (body_len, count) = record::group_extent(record).ok_or("a malformed group record")?;
    let body = bytes
        .get(len..len + body_len as usize)
        .ok_or("a group cut short: its body is not all there")?;
    let mut offset = 0;
    let mut found = 0u32;
    while offset < body.len() {
        let (inner, inner_len) = record::decode_sized(&body[offset..])
            .map_err(|e| format!("a group whose record at +{offset} is damaged: {e}"))?;
        if record::layout_of(&body[offset..])
            != Some(record::layout_of_format(record::FORMAT_VERSION_2))
            || record::continues_group(&body[offset..])
        {
            return Err(format!(
                "a group whose record at +{offset} has another format"
            ));
        }
        if matches!(inner.kind, RecordKind::Group | RecordKind::Seal) {
            return Err("a group containing a group or a seal".into());
        }
        offset += inner_len;
        found += 1;
    }
    if found != count {
        return Err(format!("a group announcing {count} records holds {found}"));
    }
    Ok(())
}

fn corrupt_at(
    earlier: &BTreeMap<u32, SegmentFile>,
    current: Option<Current<'_>>,
    at: Location,
    reason: &str,
) -> Error {
    let id = segment_of(at);
    let path = match current.filter(|c| c.file.id == id) {
        Some(current) => current.file.path.clone(),
        None => earlier.get(&id).map_or_else(
            || PathBuf::from(segment::segment_file_name(id)),
            |f| f.path.clone(),
        ),
    };
    Error::Corrupt {
        path,
        offset: u64::from(offset_of(at)),
        reason: reason.into(),
    }
}

/// Reads an already-replayed record: from the segment being replayed, or an earlier one.
/// The segment being replayed: its file, and its bytes from `start` on (those before `start`
/// were not read: a checkpoint covers them).
#[derive(Clone, Copy)]
struct Current<'a> {
    file: &'a SegmentFile,
    start: usize,
    bytes: &'a [u8],
}

fn read_replayed<'b>(
    earlier: &BTreeMap<u32, SegmentFile>,
    current: Option<Current<'b>>,
    at: Location,
    buf: &'b mut Vec<u8>,
) -> Result<Record<'b>> {
    let (id, offset) = (segment_of(at), offset_of(at));
    let corrupt = |path: PathBuf, reason: String| Error::Corrupt {
        path,
        offset: u64::from(offset),
        reason,
    };
    if let Some(current) = current.filter(|current| current.file.id == id) {
        if offset as usize >= current.start {
            return record::decode(&current.bytes[offset as usize..])
                .map_err(|e| corrupt(current.file.path.clone(), e.to_string()));
        }
        current.file.read_record(u64::from(offset), buf)?;
        return record::decode(buf).map_err(|e| corrupt(current.file.path.clone(), e.to_string()));
    }
    let file = earlier.get(&id).ok_or_else(|| {
        corrupt(
            PathBuf::from(segment::segment_file_name(id)),
            "segment missing".into(),
        )
    })?;
    file.read_record(u64::from(offset), buf)?;
    record::decode(buf).map_err(|e| corrupt(file.path.clone(), e.to_string()))
}

#[cfg(test)]
mod tests {
    //! Recovery's damage handling, one rule of the module doc (and `engine/FORMAT.md`) per test.
    //! Segment files are damaged or written by hand on the simulated disk, then the store opened.

    use super::*;
    use crate::record::{
        encode_into, encode_seal, encode_segment_header, RECORD_HEADER_LEN, SEAL_RECORD_LEN,
    };
    use crate::sim::SimStorage;
    use crate::{Claim, Config, ManualClock, Store};
    use std::sync::Arc;
    use std::time::Duration;

    const DIR: &str = "/recovery";
    const TTL: Duration = Duration::from_secs(3600);
    /// An hour after `ManualClock::new()`'s time.
    const FAR: u64 = ManualClock::DEFAULT_START_MILLIS + 3_600_000;
    /// Bytes of an Insert of an 8-byte key with an 8-byte value (the keys of `populated`).
    const RECORD_LEN: usize = record::RECORD_HEADER_LEN + 16;

    fn dir() -> &'static Path {
        Path::new(DIR)
    }

    /// For the process running now: a store opened with it cannot touch the disk after the
    /// next `crash()` (see `SimStorage::process`).
    fn config(storage: &SimStorage, clock: &ManualClock) -> Config {
        Config::default()
            .storage(storage.process())
            .clock(clock.clone())
            .background_maintenance(false)
            .checkpoint_every_bytes(0)
            .segment_size_bytes_for_testing(4096)
    }

    fn open(storage: &SimStorage, clock: &ManualClock) -> Result<Store> {
        Store::open_with(DIR, config(storage, clock))
    }

    fn seg(id: u32) -> PathBuf {
        dir().join(segment::segment_file_name(id))
    }

    fn ids(storage: &SimStorage) -> Vec<u32> {
        segment::list_segments(storage, dir()).unwrap()
    }

    fn read(storage: &SimStorage, path: &Path) -> Vec<u8> {
        let file = storage.open(path).unwrap();
        let mut bytes = vec![0; file.len().unwrap() as usize];
        assert_eq!(file.read_at(&mut bytes, 0).unwrap(), bytes.len());
        bytes
    }

    /// Replaces a file's content, durably (damage as a crash or a bad disk left it).
    fn write(storage: &SimStorage, path: &Path, bytes: &[u8]) {
        storage.create_dir_all(dir()).unwrap();
        storage.sync_dir(Path::new("/")).unwrap();
        let file = storage.create_truncate(path).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file.sync_data().unwrap();
        storage.sync_dir(dir()).unwrap();
    }

    fn insert<'a>(key: &'a [u8], value: &'a [u8]) -> Record<'a> {
        Record {
            kind: RecordKind::Insert,
            key,
            value,
            expires_at_millis: FAR,
            fingerprint: &[],
            refresh_cap_millis: 0,
        }
    }

    fn remove<'a>(key: &'a [u8], value: &'a [u8]) -> Record<'a> {
        Record {
            kind: RecordKind::Remove,
            value,
            ..insert(key, b"")
        }
    }

    /// A segment file's bytes holding `records`, and their locations.
    fn segment_bytes(id: u32, records: &[Record<'_>], sealed: bool) -> (Vec<u8>, Vec<Location>) {
        let mut bytes = encode_segment_header(u64::from(id)).to_vec();
        let mut at = Vec::new();
        for record in records {
            at.push(location(id, bytes.len() as u32));
            encode_into(&mut bytes, record);
        }
        if sealed {
            let len = bytes.len() as u64;
            bytes.extend_from_slice(&encode_seal(len));
        }
        (bytes, at)
    }

    fn key(i: usize) -> Vec<u8> {
        format!("key-{i:04}").into_bytes()
    }

    /// A store holding keys `0..n` (value = key) over several 4 KiB segments, dropped without a
    /// checkpoint.
    fn populated(storage: &SimStorage, clock: &ManualClock, n: usize) -> Vec<Vec<u8>> {
        let store = open(storage, clock).unwrap();
        let keys: Vec<Vec<u8>> = (0..n).map(key).collect();
        for k in &keys {
            assert!(!store.check_or_insert(k, TTL, k).unwrap().is_duplicate());
        }
        drop(store);
        keys
    }

    fn assert_all_present(store: &Store, keys: &[Vec<u8>]) {
        for k in keys {
            let value = store.get(k).unwrap();
            assert_eq!(
                value.as_deref(),
                Some(&k[..]),
                "{}",
                String::from_utf8_lossy(k)
            );
        }
    }

    fn expect_corrupt(outcome: Result<Store>, path: &Path, offset: u64, reason: &str) {
        match outcome {
            Err(Error::Corrupt {
                path: p,
                offset: o,
                reason: r,
            }) => {
                assert_eq!((p.as_path(), o), (path, offset), "reason: {r}");
                assert!(r.contains(reason), "reason {r:?} lacks {reason:?}");
            }
            Err(other) => panic!(
                "expected Corrupt at {}:{offset}, got {other}",
                path.display()
            ),
            Ok(_) => panic!(
                "expected Corrupt at {}:{offset}, the store opened",
                path.display()
            ),
        }
    }

    #[test]
    fn a_damaged_tail_of_the_newest_segment_is_cut_durably_and_reported() {
        let mut torn = Vec::new();
        encode_into(&mut torn, &insert(b"torn-key", b"never acknowledged"));
        // (what is appended or done to the newest segment, bytes cut from its end, the reason)
        type Damage = fn(&mut Vec<u8>, &[u8]);
        let cases: [(&str, Damage, usize, &str); 3] = [
            (
                "half a record",
                |bytes, torn| bytes.extend_from_slice(&torn[..torn.len() / 2]),
                0,
                "truncated",
            ),
            (
                // (Zeros alone are a prepared segment's space: see the next test.)
                "zero-filled pages ending in a stray byte",
                |bytes, _| {
                    bytes.extend_from_slice(&[0; 300]);
                    bytes.push(1);
                },
                0,
                "unknown record kind 0",
            ),
            (
                "a flipped bit in the last record",
                |bytes, _| *bytes.last_mut().unwrap() ^= 0x10,
                RECORD_LEN,
                "checksum",
            ),
        ];
        for (what, damage, lost, reason) in cases {
            let storage = SimStorage::new(1);
            let clock = ManualClock::new();
            let mut keys = populated(&storage, &clock, 400);
            let newest = *ids(&storage).last().unwrap();
            assert!(newest >= 3, "{what}: the keys span several segments");
            let path = seg(newest);
            let mut bytes = read(&storage, &path);
            let intact = bytes.len() - lost;
            let before = bytes.len();
            damage(&mut bytes, &torn);
            write(&storage, &path, &bytes);
            let store = open(&storage, &clock).unwrap();
            let tail = store.recovery_report().truncated_tail.clone();
            let tail = tail.unwrap_or_else(|| panic!("{what}: no tail cut"));
            assert_eq!(tail.path, path, "{what}");
            assert_eq!(tail.offset, intact as u64, "{what}");
            assert_eq!(tail.bytes_cut, (bytes.len() - intact) as u64, "{what}");
            assert!(tail.reason.contains(reason), "{what}: {}", tail.reason);
            if lost > 0 {
                let gone = keys.pop().unwrap();
                assert_eq!(store.get(&gone).unwrap(), None, "{what}");
            } else {
                assert_eq!(intact, before);
            }
            assert_all_present(&store, &keys);
            assert_eq!(store.get(b"torn-key").unwrap(), None, "{what}");
            // The cut was fsynced: a power loss now does not bring the damage back.
            storage.crash();
            drop(store);
            assert_eq!(read(&storage, &path).len(), intact, "{what}");
            let store = open(&storage, &clock).unwrap();
            assert_eq!(store.recovery_report().truncated_tail, None, "{what}");
            assert_all_present(&store, &keys);
            // Appends continue right after the cut.
            store.check_or_insert(b"after", TTL, b"x").unwrap();
            storage.crash();
            drop(store);
            let store = open(&storage, &clock).unwrap();
            assert_eq!(store.recovery_report().truncated_tail, None, "{what}");
            assert_eq!(store.get(b"after").unwrap().unwrap(), b"x");
            assert_all_present(&store, &keys);
        }
    }

    #[test]
    fn zeros_after_the_newest_segments_records_are_prepared_space_not_damage() {
        // A prepared segment (log::prepare) is the header, then zeros up to the segment size;
        // a crash leaves its unused zeros after the last record.
        let storage = SimStorage::new(7);
        let clock = ManualClock::new();
        let keys = populated(&storage, &clock, 400);
        let newest = *ids(&storage).last().unwrap();
        let path = seg(newest);
        let mut bytes = read(&storage, &path);
        let records_end = bytes.len();
        bytes.resize(4096, 0);
        write(&storage, &path, &bytes);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.recovery_report().truncated_tail, None);
        assert_all_present(&store, &keys);
        // Appends go over the zeros, right after the last record, and survive a power loss.
        store.check_or_insert(b"after", TTL, b"x").unwrap();
        storage.crash();
        drop(store);
        let after = read(&storage, &path);
        assert_ne!(
            after[records_end], 0,
            "the next record starts where the records ended"
        );
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.recovery_report().truncated_tail, None);
        assert_eq!(store.get(b"after").unwrap().unwrap(), b"x");
        assert_all_present(&store, &keys);
        drop(store);
        let report = crate::verify::verify_in(Arc::new(storage.clone()), dir()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert!(report.torn_tail.is_none(), "{report:?}");
    }

    #[test]
    fn zeros_after_a_seal_are_cut_in_the_newest_segment_and_damage_in_older_ones() {
        let storage = SimStorage::new(8);
        let clock = ManualClock::new();
        let keys = populated(&storage, &clock, 400);
        let all = ids(&storage);
        assert!(all.len() >= 3);
        let with_zeros = |path: &Path| {
            let mut bytes = read(&storage, path);
            let sealed_len = bytes.len();
            bytes.extend_from_slice(&[0; 512]);
            write(&storage, path, &bytes);
            sealed_len
        };
        // An older segment: its seal must end the file.
        let first = seg(all[0]);
        let sealed_len = with_zeros(&first);
        let seal_offset = (sealed_len - SEAL_RECORD_LEN) as u64;
        expect_corrupt(
            open(&storage, &clock),
            &first,
            seal_offset,
            "bytes follow the segment's seal",
        );
        let report = crate::verify::verify_in(Arc::new(storage.clone()), dir()).unwrap();
        assert!(!report.is_clean(), "{report:?}");
        write(&storage, &first, &read(&storage, &first)[..sealed_len]);
        // The newest segment, sealed before a crash that kept the zeros the writer cut just
        // before its seal: accepted, and the zeros cut durably before a newer segment exists.
        let newest = *all.last().unwrap();
        let report = crate::verify::verify_in(Arc::new(storage.clone()), dir()).unwrap();
        let lost = report.segments.last().unwrap().records as usize;
        assert!(lost > 0);
        storage.remove(&seg(newest)).unwrap();
        storage.sync_dir(dir()).unwrap();
        let sealed_newest = seg(all[all.len() - 2]);
        let sealed_len = with_zeros(&sealed_newest);
        let report = crate::verify::verify_in(Arc::new(storage.clone()), dir()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.recovery_report().truncated_tail, None);
        storage.crash();
        drop(store);
        assert_eq!(read(&storage, &sealed_newest).len(), sealed_len);
        let store = open(&storage, &clock).unwrap();
        let missing = keys
            .iter()
            .filter(|k| store.get(k).unwrap().is_none())
            .count();
        assert_eq!(
            missing, lost,
            "only the removed segment's records are missing"
        );
    }

    #[test]
    fn a_replay_shared_by_two_threads_answers_as_one_thread_does() {
        // Inserts, removals and re-inserts with other TTLs, expired entries, claims open and
        // completed, state and positions in transactions, over many segments; then the same
        // files replayed by one thread and by two (every segment shared) must agree on every
        // answer and every count.
        let storage = SimStorage::new(11);
        let clock = ManualClock::new();
        let config = |parallel_min: usize| {
            config(&storage, &clock)
                .segment_size_bytes_for_testing(16 << 10)
                .shard_count(8)
                .parallel_replay_min_bytes_for_testing(parallel_min)
        };
        let store = Store::open_with(DIR, config(usize::MAX)).unwrap();
        let short = Duration::from_secs(5);
        for i in 0..6000 {
            let ttl = if i % 7 == 0 { short } else { TTL };
            store.check_or_insert(&key(i), ttl, &key(i)).unwrap();
            if i % 5 == 0 {
                assert!(store.remove(&key(i / 2)).unwrap() || i / 2 % 7 == 0);
            }
            if i % 11 == 0 {
                store.check_or_insert(&key(i / 3), TTL, b"again").unwrap();
            }
            if i % 97 == 0 {
                let mut tx = store.transaction();
                tx.put_state(format!("state-{}", i % 13).as_bytes(), &key(i))
                    .unwrap();
                tx.set_position(b"source", i as u64).unwrap();
                tx.commit().unwrap();
            }
        }
        let open_claim = match store.claim(b"claimed", TTL).unwrap() {
            Claim::Acquired(token) => token,
            other => panic!("{other:?}"),
        };
        drop(open_claim);
        clock.advance(Duration::from_secs(10));
        drop(store);
        let answers = |parallel_min: usize| {
            let store = Store::open_with(DIR, config(parallel_min)).unwrap();
            let report = store.recovery_report().clone();
            assert!(report.segments_replayed >= 8, "{report:?}");
            let values: Vec<Option<Vec<u8>>> = (0..6000)
                .map(|i| store.get(&key(i)).unwrap().map(|v| v.to_vec()))
                .collect();
            let state: Vec<Option<Vec<u8>>> = (0..13)
                .map(|i| {
                    let key = format!("state-{i}");
                    store.get_state(key.as_bytes()).unwrap().map(|v| v.to_vec())
                })
                .collect();
            let facts = (
                report.records_replayed,
                report.expired_records_skipped,
                store.stats().live_keys,
                store.in_doubt().unwrap().len(),
                store.position(b"source").unwrap(),
            );
            (values, state, facts)
        };
        let one = answers(usize::MAX);
        let two = answers(0);
        assert_eq!(one.0, two.0);
        assert_eq!(one.1, two.1);
        assert_eq!(one.2, two.2);
        assert!(one.0.iter().any(Option::is_none) && one.0.iter().any(Option::is_some));
        assert_eq!(one.2 .3, 1, "the claim left open is in doubt");
    }

    #[test]
    fn entries_recovered_from_the_checkpoint_and_the_log_are_scheduled_for_expiry_once() {
        // Replay and the checkpoint put entries without wheel entries; the end of recovery
        // schedules each survivor once. Short-lived keys must then leave the index when their
        // deadline passes, by one thread and by two, whether they came from the checkpoint or
        // the log, and superseded records leave no wheel entry behind.
        for parallel_min in [usize::MAX, 0] {
            let storage = SimStorage::new(12);
            let clock = ManualClock::new();
            let config = || {
                config(&storage, &clock)
                    .shard_count(8)
                    .parallel_replay_min_bytes_for_testing(parallel_min)
            };
            let store = Store::open_with(DIR, config()).unwrap();
            let short = Duration::from_secs(30);
            for i in 0..2000 {
                let ttl = if i % 2 == 0 { short } else { TTL };
                store.check_or_insert(&key(i), ttl, b"v").unwrap();
                if i == 999 {
                    store.checkpoint().unwrap();
                }
            }
            // Superseded records: removed and inserted again.
            for i in (1..2000).step_by(10) {
                assert!(store.remove(&key(i)).unwrap());
                store.check_or_insert(&key(i), TTL, b"again").unwrap();
            }
            drop(store);
            let store = Store::open_with(DIR, config()).unwrap();
            let report = store.recovery_report().clone();
            assert_eq!(report.checkpoint_ignored, None);
            assert_eq!(report.checkpoint_entries_loaded, 1000, "{parallel_min}");
            let stats = store.stats();
            assert_eq!(stats.live_keys, 2000);
            assert_eq!(stats.wheel_entries, 2000, "one wheel entry per entry");
            clock.advance(Duration::from_secs(31));
            store.maintain().unwrap();
            let stats = store.stats();
            assert_eq!(
                stats.live_keys, 1000,
                "the short-lived keys left: {parallel_min}"
            );
            assert_eq!(stats.wheel_entries, 1000);
            for i in 0..2000 {
                let want = match i {
                    _ if i % 2 == 0 => None,
                    _ if i % 10 == 1 => Some(&b"again"[..]),
                    _ => Some(&b"v"[..]),
                };
                assert_eq!(store.get(&key(i)).unwrap().as_deref(), want, "key {i}");
            }
        }
    }

    #[test]
    fn replayed_bytes_that_were_only_in_the_cache_are_made_durable_on_open() {
        let storage = SimStorage::new(2);
        let clock = ManualClock::new();
        let keys = populated(&storage, &clock, 20);
        let path = seg(1);
        // A record an earlier process wrote but never fsynced (its fsync failed, or it died).
        let mut late = Vec::new();
        encode_into(&mut late, &insert(b"late", b"cached"));
        let file = storage.open(&path).unwrap();
        file.write_all_at(&late, file.len().unwrap()).unwrap();
        drop(file);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.get(b"late").unwrap().unwrap(), b"cached");
        storage.crash();
        drop(store);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.recovery_report().truncated_tail, None);
        assert_eq!(store.get(b"late").unwrap().unwrap(), b"cached");
        assert_all_present(&store, &keys);
    }

    #[test]
    fn a_newest_segment_torn_while_being_created_is_deleted() {
        let header = encode_segment_header(2);
        let cases: [(&str, Vec<u8>); 4] = [
            ("an empty file", Vec::new()),
            ("part of the header", header[..10].to_vec()),
            ("a zero-filled header", vec![0; SEGMENT_HEADER_LEN]),
            ("a zero-filled header and body", vec![0; 200]),
        ];
        for (what, torn) in cases {
            let storage = SimStorage::new(3);
            let clock = ManualClock::new();
            let (sealed, _) = segment_bytes(1, &[insert(b"a", b"1"), insert(b"b", b"2")], true);
            write(&storage, &seg(1), &sealed);
            write(&storage, &seg(2), &torn);
            let store = open(&storage, &clock).unwrap();
            let report = store.recovery_report();
            assert_eq!(report.removed_empty_segment, Some(seg(2)), "{what}");
            assert_eq!(report.truncated_tail, None, "{what}");
            assert_eq!(store.get(b"a").unwrap().unwrap(), b"1", "{what}");
            assert_eq!(store.get(b"b").unwrap().unwrap(), b"2", "{what}");
            // Segment 1 ends with its seal: the log continues in a new segment, never in 2 again.
            assert_eq!(ids(&storage), [1, 3], "{what}");
            store.check_or_insert(b"c", TTL, b"3").unwrap();
            // The deletion was made durable (directory fsynced).
            storage.crash();
            drop(store);
            assert_eq!(ids(&storage), [1, 3], "{what}");
            let store = open(&storage, &clock).unwrap();
            assert_eq!(store.recovery_report().removed_empty_segment, None);
            assert_eq!(store.get(b"c").unwrap().unwrap(), b"3", "{what}");
        }
    }

    #[test]
    fn a_bad_header_is_corrupt_at_offset_zero_even_in_the_newest_segment() {
        let storage = SimStorage::new(4);
        let clock = ManualClock::new();
        let (sealed, _) = segment_bytes(1, &[insert(b"a", b"1")], true);
        write(&storage, &seg(1), &sealed);
        let (mut newest, _) = segment_bytes(2, &[insert(b"b", b"2")], false);
        newest[HEADER_ID_BYTE] ^= 1;
        write(&storage, &seg(2), &newest);
        expect_corrupt(open(&storage, &clock), &seg(2), 0, "checksum");
        // A valid header naming another segment.
        let (mut newest, _) = segment_bytes(7, &[insert(b"b", b"2")], false);
        newest.truncate(SEGMENT_HEADER_LEN);
        write(&storage, &seg(2), &newest);
        expect_corrupt(open(&storage, &clock), &seg(2), 0, "names segment 7");
        // The same damage in the older segment.
        write(&storage, &seg(2), &segment_bytes(2, &[], false).0);
        let mut older = sealed.clone();
        older[HEADER_ID_BYTE] ^= 1;
        write(&storage, &seg(1), &older);
        expect_corrupt(open(&storage, &clock), &seg(1), 0, "checksum");
        write(&storage, &seg(1), &sealed);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.get(b"a").unwrap().unwrap(), b"1");
    }

    /// A byte inside the segment id field of a segment header.
    const HEADER_ID_BYTE: usize = 16;

    #[test]
    fn damage_in_an_older_segment_is_corrupt_naming_file_and_offset() {
        for damaged in [1, 2] {
            let storage = SimStorage::new(5);
            let clock = ManualClock::new();
            populated(&storage, &clock, 300);
            assert!(ids(&storage).len() >= 3);
            let path = seg(damaged);
            let mut bytes = read(&storage, &path);
            // A byte of the key of the third record.
            let third = SEGMENT_HEADER_LEN + 2 * RECORD_LEN;
            bytes[third + record::RECORD_HEADER_LEN + 2] ^= 0x40;
            write(&storage, &path, &bytes);
            expect_corrupt(open(&storage, &clock), &path, third as u64, "checksum");
            // Nothing was cut or deleted to get past it.
            assert_eq!(read(&storage, &path), bytes);
        }
    }

    #[test]
    fn of_two_damaged_records_met_while_applying_one_chunk_the_first_in_log_order_is_named() {
        // Two keys' inserts in the first segment, which the checkpoint spares from replay (so
        // no checksum of theirs is checked on open); after the checkpoint, removals of both,
        // the key of the higher shard first. Replay applies a chunk shard by shard, so it meets
        // the lower shard's damaged insert first; a replay in log order meets the other first,
        // and that is the one to name.
        let storage = SimStorage::new(9);
        let clock = ManualClock::new();
        let store = open(&storage, &clock).unwrap();
        let keys: Vec<Vec<u8>> = (0..300).map(key).collect();
        for k in &keys {
            store.check_or_insert(k, TTL, k).unwrap();
        }
        store.checkpoint().unwrap();
        // Keys of the first segment (the first 60 records fill less than 4 KiB), in two shards.
        let shard = |k: &[u8]| store.shared.index.hash(k).shard;
        let (low, high) = (0..60)
            .flat_map(|a| (0..60).map(move |b| (a, b)))
            .find(|&(a, b)| shard(&keys[a]) < shard(&keys[b]))
            .expect("keys in two shards");
        assert!(store.remove(&keys[high]).unwrap());
        assert!(store.remove(&keys[low]).unwrap());
        drop(store);
        let path = seg(1);
        let mut bytes = read(&storage, &path);
        let at = |i: usize| SEGMENT_HEADER_LEN + i * RECORD_LEN;
        for i in [low, high] {
            let value = at(i) + record::RECORD_HEADER_LEN + keys[i].len();
            assert_eq!(&bytes[value..value + keys[i].len()], &keys[i][..]);
            bytes[value] ^= 0x40;
        }
        write(&storage, &path, &bytes);
        for parallel_min in [0, usize::MAX] {
            let config =
                config(&storage, &clock).parallel_replay_min_bytes_for_testing(parallel_min);
            let opened = Store::open_with(DIR, config);
            expect_corrupt(opened, &path, at(high) as u64, "checksum");
        }
    }

    #[test]
    fn an_older_segment_cut_short_is_corrupt_also_when_a_checkpoint_spares_it_from_replay() {
        for with_checkpoint in [false, true] {
            let storage = SimStorage::new(6);
            let clock = ManualClock::new();
            populated(&storage, &clock, 300);
            if with_checkpoint {
                let store = open(&storage, &clock).unwrap();
                store.checkpoint().unwrap();
                drop(store);
                let store = open(&storage, &clock).unwrap();
                let report = store.recovery_report();
                assert_eq!(report.checkpoint_ignored, None);
                assert!(report.checkpoint_entries_loaded > 200, "{report:?}");
                assert!(report.segments_replayed <= 1, "{report:?}");
            }
            let path = seg(1);
            let whole = read(&storage, &path);
            let seal_at = whole.len() - SEAL_RECORD_LEN;
            assert_eq!(
                record::decode(&whole[seal_at..])
                    .ok()
                    .as_ref()
                    .and_then(record::seal_length),
                Some(seal_at as u64),
                "segment 1 ends with its seal"
            );
            // Cut at a record boundary: only the seal is missing.
            write(&storage, &path, &whole[..seal_at]);
            expect_corrupt(
                open(&storage, &clock),
                &path,
                seal_at as u64,
                "without its seal",
            );
            // Cut inside the last record.
            write(&storage, &path, &whole[..seal_at - 10]);
            let last = (seal_at - RECORD_LEN) as u64;
            expect_corrupt(open(&storage, &clock), &path, last, "truncated");
            // Undamaged again, it opens.
            write(&storage, &path, &whole);
            assert!(
                open(&storage, &clock).is_ok(),
                "checkpoint: {with_checkpoint}"
            );
        }
    }

    #[test]
    fn a_bad_seal_or_bytes_after_the_seal_are_corrupt() {
        let storage = SimStorage::new(7);
        let clock = ManualClock::new();
        let (whole, _) = segment_bytes(1, &[insert(b"a", b"1"), insert(b"b", b"2")], true);
        write(
            &storage,
            &seg(2),
            &segment_bytes(2, &[insert(b"c", b"3")], false).0,
        );
        let seal_at = (whole.len() - SEAL_RECORD_LEN) as u64;
        let mut extra = whole.clone();
        encode_into(&mut extra, &insert(b"d", b"4"));
        write(&storage, &seg(1), &extra);
        expect_corrupt(open(&storage, &clock), &seg(1), seal_at, "bytes follow");
        let mut lying = whole[..seal_at as usize].to_vec();
        lying.extend_from_slice(&encode_seal(seal_at - 1));
        write(&storage, &seg(1), &lying);
        expect_corrupt(open(&storage, &clock), &seg(1), seal_at, "vouch");
        write(&storage, &seg(1), &whole);
        let store = open(&storage, &clock).unwrap();
        for (k, v) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] {
            assert_eq!(store.get(k).unwrap().unwrap(), v);
        }
    }

    #[test]
    fn a_newest_segment_ending_with_its_seal_gets_a_successor() {
        let storage = SimStorage::new(8);
        let clock = ManualClock::new();
        write(
            &storage,
            &seg(1),
            &segment_bytes(1, &[insert(b"a", b"1")], true).0,
        );
        let store = open(&storage, &clock).unwrap();
        assert_eq!(ids(&storage), [1, 2]);
        let sealed = read(&storage, &seg(1));
        store.check_or_insert(b"b", TTL, b"2").unwrap();
        assert_eq!(
            read(&storage, &seg(1)),
            sealed,
            "nothing is written after a seal"
        );
        assert!(read(&storage, &seg(2)).len() > SEGMENT_HEADER_LEN);
        storage.crash();
        drop(store);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(ids(&storage), [1, 2]);
        assert_eq!(store.get(b"a").unwrap().unwrap(), b"1");
        assert_eq!(store.get(b"b").unwrap().unwrap(), b"2");
    }

    #[test]
    fn a_foreign_file_named_like_a_segment_is_not_a_segment() {
        let junk = vec![b'#'; 64];
        let valid = segment_bytes(1, &[insert(b"a", b"1")], true).0;
        // As the only (newest) segment, and as an older one.
        let storage = SimStorage::new(9);
        let clock = ManualClock::new();
        write(&storage, &seg(1), &junk);
        match open(&storage, &clock) {
            Err(Error::NotASegment { path }) => assert_eq!(path, seg(1)),
            other => panic!("expected NotASegment, got {other:?}"),
        }
        write(&storage, &seg(2), &segment_bytes(2, &[], false).0);
        match open(&storage, &clock) {
            Err(Error::NotASegment { path }) => assert_eq!(path, seg(1)),
            other => panic!("expected NotASegment, got {other:?}"),
        }
        assert_eq!(
            read(&storage, &seg(1)),
            junk,
            "the foreign file is left alone"
        );
        // Files whose names are not segment names are ignored.
        write(&storage, &seg(1), &valid);
        for name in ["notes.txt", "segment-1.idem", "segment-00000003.idem.bak"] {
            write(&storage, &dir().join(name), &junk);
        }
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.get(b"a").unwrap().unwrap(), b"1");
        assert_eq!(ids(&storage), [1, 2]);
    }

    #[test]
    fn another_format_version_is_unsupported() {
        let next = record::FORMAT_VERSION + 1;
        let mut header = encode_segment_header(1);
        header[8..12].copy_from_slice(&next.to_le_bytes());
        let crc = crc32fast::hash(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            record::decode_segment_header(&header),
            Err(HeaderError::UnsupportedVersion(next))
        );
        for with_newer_segment in [false, true] {
            let storage = SimStorage::new(10);
            let clock = ManualClock::new();
            let (mut bytes, _) = segment_bytes(1, &[insert(b"a", b"1")], true);
            bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&header);
            write(&storage, &seg(1), &bytes);
            if with_newer_segment {
                write(&storage, &seg(2), &segment_bytes(2, &[], false).0);
            }
            match open(&storage, &clock) {
                Err(Error::UnsupportedVersion {
                    path,
                    found,
                    supported,
                }) => {
                    assert_eq!(
                        (path, found, supported),
                        (seg(1), next, record::FORMAT_VERSION)
                    )
                }
                other => panic!("expected UnsupportedVersion, got {other:?}"),
            }
        }
    }

    /// Segment 1's bytes (unsealed): an insert of `a`, then a group of three records (insert `b`,
    /// remove `a`, insert `c`) in format 3 (the continuation flag) or 2 (a Group record ahead).
    /// Returns the bytes and the group's offset.
    fn segment_with_group(version: u32) -> (Vec<u8>, usize) {
        let mut bytes = record::encode_segment_header_version(1, version).to_vec();
        encode_into(&mut bytes, &insert(b"a", b"1"));
        let at = bytes.len();
        let records = [insert(b"b", b"2"), remove(b"a", b""), insert(b"c", b"3")];
        let mut body = Vec::new();
        for (i, record) in records.iter().enumerate() {
            if version == record::FORMAT_VERSION {
                record::encode_group_member(&mut body, record, i + 1 < records.len());
            } else {
                encode_into(&mut body, record);
            }
        }
        if version == record::FORMAT_VERSION_2 {
            record::encode_group(&mut bytes, body.len() as u32, records.len() as u32);
        }
        bytes.extend_from_slice(&body);
        (bytes, at)
    }

    #[test]
    fn a_group_is_applied_whole_or_cut_at_its_start_in_either_format() {
        for version in [record::FORMAT_VERSION, record::FORMAT_VERSION_2] {
            let (bytes, at) = segment_with_group(version);
            for keep in at + 1..=bytes.len() {
                let storage = SimStorage::new(10);
                let clock = ManualClock::new();
                write(&storage, &seg(1), &bytes[..keep]);
                let store = open(&storage, &clock).unwrap();
                let whole = keep == bytes.len();
                let what = format!("format {version}, {keep} of {} bytes", bytes.len());
                assert_eq!(store.get(b"a").unwrap().is_none(), whole, "{what}");
                assert_eq!(store.get(b"b").unwrap().is_some(), whole, "{what}");
                assert_eq!(store.get(b"c").unwrap().is_some(), whole, "{what}");
                let cut = store.recovery_report().truncated_tail.clone();
                if whole {
                    assert_eq!(cut, None, "{what}");
                } else {
                    let cut = cut.unwrap_or_else(|| panic!("{what}: no cut"));
                    assert_eq!((cut.offset, cut.bytes_cut), (at as u64, (keep - at) as u64));
                }
                drop(store);
                // An unsealed newest segment of format 2 is sealed and followed by format 3.
                let expected = if version == record::FORMAT_VERSION {
                    vec![1]
                } else {
                    vec![1, 2]
                };
                assert_eq!(ids(&storage), expected, "{what}");
            }
        }
    }

    #[test]
    fn a_group_broken_in_an_older_segment_or_of_the_other_format_is_corrupt_at_its_start() {
        let newer = segment_bytes(2, &[], false).0;
        let seal = |bytes: &mut Vec<u8>| {
            let len = bytes.len() as u64;
            bytes.extend_from_slice(&encode_seal(len));
        };
        // (the bytes of an older segment, where the damage is named, what the reason says)
        let mut cases: Vec<(Vec<u8>, usize, &str)> = Vec::new();
        // Its last record lost: the seal follows a record that says the group goes on.
        let (mut bytes, at) = segment_with_group(record::FORMAT_VERSION);
        bytes.truncate(bytes.len() - (RECORD_HEADER_LEN + 2));
        seal(&mut bytes);
        cases.push((bytes, at, "cut short by a seal"));
        // A flipped bit in its last record.
        let (mut bytes, at) = segment_with_group(record::FORMAT_VERSION);
        *bytes.last_mut().unwrap() ^= 0x01;
        seal(&mut bytes);
        cases.push((bytes, at, "damaged"));
        // A format-2 group record in a format-4 segment.
        let (v2, at) = segment_with_group(record::FORMAT_VERSION_2);
        let mut bytes = encode_segment_header(1).to_vec();
        bytes.extend_from_slice(&v2[SEGMENT_HEADER_LEN..]);
        seal(&mut bytes);
        cases.push((bytes, at, "a group record in a segment of format 4"));
        // The continuation flag in a format-2 segment.
        let (v3, at) = segment_with_group(record::FORMAT_VERSION);
        let mut bytes = record::encode_segment_header_version(1, record::FORMAT_VERSION_2).to_vec();
        bytes.extend_from_slice(&v3[SEGMENT_HEADER_LEN..]);
        seal(&mut bytes);
        cases.push((bytes, at, "continuation flag in a segment of format 2"));
        for (older, at, reason) in cases {
            let storage = SimStorage::new(10);
            let clock = ManualClock::new();
            write(&storage, &seg(1), &older);
            write(&storage, &seg(2), &newer);
            // `verify` names the same damage before open does.
            let report = crate::verify::verify_in(Arc::new(storage.process()), dir()).unwrap();
            let damage = &report.damage[0];
            assert_eq!(
                (&damage.path, damage.offset),
                (&seg(1), at as u64),
                "{reason}"
            );
            assert!(damage.reason.contains(reason), "{damage}");
            expect_corrupt(open(&storage, &clock), &seg(1), at as u64, reason);
        }
    }

    /// Format 4: the padding that closes a chunk a lane did not fill replays as nothing,
    /// between records of a sealed segment and at the end of the newest; in a segment of format
    /// 3, which never holds any, it is damage, named at its offset by `verify` and by open.
    #[test]
    fn padding_replays_as_nothing_in_format_4_and_is_damage_in_format_3() {
        let padded = |version: u32| {
            let mut bytes = record::encode_segment_header_version(1, version).to_vec();
            encode_into(&mut bytes, &insert(b"a", b"1"));
            let at = bytes.len();
            record::encode_padding(&mut bytes, record::MIN_PADDING_LEN);
            encode_into(&mut bytes, &insert(b"b", b"2"));
            record::encode_padding(&mut bytes, 300);
            let len = bytes.len() as u64;
            bytes.extend_from_slice(&encode_seal(len));
            (bytes, at)
        };
        let mut newest = encode_segment_header(2).to_vec();
        encode_into(&mut newest, &insert(b"c", b"3"));
        record::encode_padding(&mut newest, 100);

        let storage = SimStorage::new(12);
        let clock = ManualClock::new();
        write(&storage, &seg(1), &padded(record::FORMAT_VERSION).0);
        write(&storage, &seg(2), &newest);
        assert!(crate::verify::verify_in(Arc::new(storage.process()), dir())
            .unwrap()
            .is_clean());
        let store = open(&storage, &clock).unwrap();
        assert_eq!(
            store.recovery_report().records_replayed,
            3,
            "padding is no record"
        );
        for (key, value) in [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] {
            assert_eq!(store.get(key).unwrap().unwrap(), &value[..]);
        }
        assert_eq!(store.stats().live_keys, 3);
        // The log goes on after the newest segment's padding.
        assert_eq!(
            store
                .check_or_insert(b"d", Duration::from_secs(60), b"4")
                .unwrap(),
            crate::Outcome::Inserted
        );
        drop(store);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(store.get(b"d").unwrap().unwrap(), &b"4"[..]);
        drop(store);

        let storage = SimStorage::new(13);
        let (older, at) = padded(record::FORMAT_VERSION_3);
        write(&storage, &seg(1), &older);
        write(&storage, &seg(2), &newest);
        let reason = "a padding record in a segment of format 3";
        let report = crate::verify::verify_in(Arc::new(storage.process()), dir()).unwrap();
        assert_eq!(
            (&report.damage[0].path, report.damage[0].offset),
            (&seg(1), at as u64)
        );
        assert!(
            report.damage[0].reason.contains(reason),
            "{}",
            report.damage[0]
        );
        expect_corrupt(open(&storage, &clock), &seg(1), at as u64, reason);
    }

    #[test]
    fn a_remove_carrying_an_origin_removes_only_entries_located_before_it() {
        let storage = SimStorage::new(11);
        let clock = ManualClock::new();
        // Segment 1: K is inserted, removed (at B), and inserted again; J, L and M are inserted.
        let (older, at) = segment_bytes(
            1,
            &[
                insert(b"K", b"v1"),
                remove(b"K", b""),
                insert(b"K", b"v2"),
                insert(b"J", b"j"),
                insert(b"L", b"l"),
                insert(b"M", b"m"),
            ],
            true,
        );
        let (b, j, l) = (at[1], at[3], at[4]);
        // Segment 2: a copy of the removal at B (compaction wrote it after the newer insert of
        // K), removals of J and L carrying origins just past J and exactly at L, and a plain
        // removal of M.
        let (newer, _) = segment_bytes(
            2,
            &[
                remove(b"K", &b.to_le_bytes()),
                remove(b"J", &(j + 1).to_le_bytes()),
                remove(b"L", &l.to_le_bytes()),
                remove(b"M", b""),
            ],
            false,
        );
        write(&storage, &seg(1), &older);
        write(&storage, &seg(2), &newer);
        let store = open(&storage, &clock).unwrap();
        assert_eq!(
            store.get(b"K").unwrap().unwrap(),
            b"v2",
            "a copy of a removal hid a record written after the removal it stands for"
        );
        assert_eq!(store.get(b"J").unwrap(), None, "entry before the origin");
        assert_eq!(
            store.get(b"L").unwrap().unwrap(),
            b"l",
            "entry at the origin survives"
        );
        assert_eq!(
            store.get(b"M").unwrap(),
            None,
            "a plain removal hides all before it"
        );
        assert_eq!(store.recovery_report().records_replayed, 10);
        drop(store);
        // The same answers from the records alone, without a store around them.
        let index = Index::new(4, u64::MAX, Index::random_seeds(), 1000, clock_now(&clock));
        let mut state = StateTables::default();
        let recovered = recover(
            &storage,
            dir(),
            &index,
            &mut state,
            clock_now(&clock),
            Ok(None),
            ReplayOptions {
                parallel_min_bytes: PARALLEL_REPLAY_MIN_BYTES,
                track_changes: false,
                map_segments: true,
            },
        )
        .unwrap();
        assert_eq!(recovered.tail_offset as usize, newer.len());
        assert_eq!(recovered.segment_stats[&2].tombstones, 4);
        assert_eq!(recovered.segment_stats[&1].tombstones, 1);
        assert_eq!(recovered.segment_stats[&1].live, 2, "K's v2 and L");
        assert_eq!(recovered.segment_stats[&2].live, 0);
    }

    fn clock_now(clock: &ManualClock) -> u64 {
        crate::Clock::now_millis(clock)
    }

    fn acquired(claim: Claim) -> crate::ClaimToken {
        match claim {
            Claim::Acquired(token) => token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[test]
    fn claims_still_open_after_replay_are_in_doubt_with_or_without_a_checkpoint() {
        const LEASE: Duration = Duration::from_secs(30);
        for with_checkpoint in [false, true] {
            let storage = SimStorage::new(12);
            let clock = ManualClock::new();
            let store = open(&storage, &clock).unwrap();
            let open_claim = acquired(store.claim(b"open", LEASE).unwrap());
            let done = acquired(store.claim(b"done", LEASE).unwrap());
            store.complete(done, TTL, b"result").unwrap();
            let released = acquired(store.claim(b"released", LEASE).unwrap());
            store.release(released).unwrap();
            acquired(store.claim(b"lapsed", Duration::from_secs(1)).unwrap());
            let completed_short = acquired(store.claim(b"short-result", LEASE).unwrap());
            store
                .complete(completed_short, Duration::from_secs(5), b"r")
                .unwrap();
            if with_checkpoint {
                store.checkpoint().unwrap();
            }
            // Records after the checkpoint: replayed, while the claims lie before it.
            for i in 0..150 {
                store.check_or_insert(&key(i), TTL, b"v").unwrap();
            }
            clock.advance(Duration::from_secs(2));
            drop(store);
            let store = open(&storage, &clock).unwrap();
            let report = store.recovery_report();
            assert_eq!(report.checkpoint_ignored, None);
            assert_eq!(
                report.checkpoint_entries_loaded > 0,
                with_checkpoint,
                "{report:?}"
            );
            let in_doubt = store.in_doubt().unwrap();
            assert_eq!(
                in_doubt,
                std::slice::from_ref(&open_claim),
                "checkpoint: {with_checkpoint}"
            );
            assert_eq!(
                in_doubt[0].fencing_token(),
                open_claim.fencing_token(),
                "the claim id survives"
            );
            assert!(matches!(
                store.claim(b"open", LEASE).unwrap(),
                Claim::InFlight { until } if until == open_claim.lease_until()
            ));
            assert!(matches!(
                store.claim(b"done", LEASE).unwrap(),
                Claim::Duplicate(v) if v == b"result"
            ));
            acquired(store.claim(b"released", LEASE).unwrap());
            acquired(store.claim(b"lapsed", LEASE).unwrap());
            assert!(matches!(
                store.claim(b"short-result", LEASE).unwrap(),
                Claim::Duplicate(v) if v == b"r"
            ));
        }
    }

    /// Every key's answer and the claims in doubt.
    fn answers(store: &Store, keys: &[Vec<u8>]) -> (Vec<Option<Vec<u8>>>, Vec<crate::ClaimToken>) {
        let values = keys
            .iter()
            .map(|k| store.get(k).unwrap().map(|v| v.to_vec()))
            .collect();
        (values, store.in_doubt().unwrap())
    }

    #[test]
    fn checkpoint_plus_replay_answers_like_a_full_replay_of_the_same_files() {
        let storage = SimStorage::new(13);
        let clock = ManualClock::new();
        let config = config(&storage, &clock).compaction_live_ratio(0.9);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        let keys: Vec<Vec<u8>> = (0..400).map(key).collect();
        let ttl = |i: usize| Duration::from_secs([20, 90, 600, 3600, 7200][i % 5]);
        let mut in_doubt = Vec::new();
        for round in 0..4 {
            for (i, k) in keys.iter().enumerate().skip(round * 100).take(100) {
                store.check_or_insert(k, ttl(i), &key(i + round)).unwrap();
            }
            for (i, k) in keys.iter().enumerate().take((round + 1) * 100) {
                if (i + round) % 7 == 0 {
                    store.remove(k).unwrap();
                }
                if (i + round) % 14 == 0 {
                    store.check_or_insert(k, ttl(i + 1), b"again").unwrap();
                }
            }
            let claimed = format!("claim-{round}").into_bytes();
            let token = acquired(store.claim(&claimed, Duration::from_secs(60)).unwrap());
            if round % 2 == 0 {
                store
                    .complete(token, Duration::from_secs(10), b"done")
                    .unwrap();
            } else {
                in_doubt.push(token);
            }
            if round == 2 {
                store.checkpoint().unwrap();
            }
            clock.advance(Duration::from_secs(30));
            store.maintain().unwrap();
        }
        let now = std::time::UNIX_EPOCH + Duration::from_millis(clock_now(&clock));
        in_doubt.retain(|token| token.lease_until() > now);
        assert!(!in_doubt.is_empty());
        let stats = store.stats();
        assert!(stats.segments >= 3, "{stats:?}");
        assert!(
            stats.segments_deleted + stats.segments_compacted > 0,
            "{stats:?}"
        );
        drop(store);
        let mut all_keys = keys.clone();
        all_keys.extend((0..4).map(|round| format!("claim-{round}").into_bytes()));

        let store = Store::open_with(DIR, config.clone()).unwrap();
        let report = store.recovery_report().clone();
        assert_eq!(report.checkpoint_ignored, None);
        assert!(report.checkpoint_entries_loaded > 0, "{report:?}");
        let with_checkpoint = answers(&store, &all_keys);
        drop(store);
        storage
            .remove(&dir().join(checkpoint::CHECKPOINT_FILE_NAME))
            .unwrap();
        let store = Store::open_with(DIR, config).unwrap();
        assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
        let full = answers(&store, &all_keys);
        for (i, k) in all_keys.iter().enumerate() {
            assert_eq!(
                with_checkpoint.0[i],
                full.0[i],
                "{}: checkpoint + replay vs full replay",
                String::from_utf8_lossy(k)
            );
        }
        assert_eq!(with_checkpoint.1, full.1, "claims in doubt");
        assert_eq!(full.1, in_doubt);
        assert!(full.0.iter().any(Option::is_some) && full.0.iter().any(Option::is_none));
    }

    /// Where a segment's records end for sizing: its length, less a trailing run of zero
    /// blocks (a prepared segment's unused space), to the next 4 KiB block.
    #[test]
    fn records_end_skips_a_prepared_segments_zeros() {
        let storage = SimStorage::new(31);
        storage.create_dir_all(dir()).unwrap();
        let cases: [(usize, usize, u64); 4] = [
            (10_000, 100_000, 12_288),
            (10_000, 0, 10_000),
            (0, 50_000, 0),
            (4_096, 4_096, 4_096),
        ];
        for (id, (records, zeros, end)) in (1..).zip(cases) {
            let mut bytes = vec![0x5a; records];
            bytes.resize(records + zeros, 0);
            write(&storage, &seg(id), &bytes);
            let file = SegmentFile::open(&storage, dir(), id).unwrap();
            assert_eq!(
                records_end(&file),
                end,
                "{records} bytes then {zeros} zeros"
            );
        }
    }

    /// How many times each shard's table was laid out since open.
    fn relayouts(store: &Store) -> Vec<u64> {
        let shards = store.shared.index.shards();
        shards.iter().map(|shard| shard.lock().relayouts).collect()
    }

    /// A full replay lays each shard's table out once for the entries the whole log will put
    /// (estimated from the first chunk's density and the segments' lengths), not doubling on
    /// the way, and no larger than the table that grew to them entry by entry.
    #[test]
    fn a_full_replay_sizes_the_index_once_and_no_larger_than_growth_made_it() {
        let storage = SimStorage::new(29);
        let clock = ManualClock::new();
        let config = config(&storage, &clock).shard_count(4);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        let keys: Vec<Vec<u8>> = (0..10_000).map(key).collect();
        for k in &keys {
            store.check_or_insert(k, TTL, k).unwrap();
        }
        let grown = store.stats().index_bytes;
        let grown_relayouts: u64 = relayouts(&store).iter().sum();
        assert!(ids(&storage).len() > 20, "the log spans many segments");
        drop(store);
        let _ = storage.remove(&dir().join(checkpoint::CHECKPOINT_FILE_NAME));

        let store = Store::open_with(DIR, config).unwrap();
        assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
        assert_eq!(store.recovery_report().records_replayed, keys.len() as u64);
        let relayouts = relayouts(&store);
        // About 2,500 entries a shard: grown from 64 slots to 4,096, 6 doublings each.
        assert!(grown_relayouts >= 4 * 6, "growth: {grown_relayouts}");
        assert!(
            relayouts.iter().all(|&n| n <= 2),
            "relayouts per shard in replay: {relayouts:?}"
        );
        assert!(
            store.stats().index_bytes <= grown,
            "replayed index {} B, grown {grown} B",
            store.stats().index_bytes
        );
        for k in &keys {
            assert!(store
                .check_or_insert(k, TTL, b"again")
                .unwrap()
                .is_duplicate());
        }
    }

    /// A reopen from a checkpoint lays each shard's table out once, at install, for the
    /// checkpoint's entries and those the replay after it will add (estimated from the first
    /// records to replay), instead of once for the checkpoint's and again when replay starts.
    #[test]
    fn a_reopen_from_a_checkpoint_lays_the_index_out_once_for_the_replay_too() {
        let storage = SimStorage::new(31);
        let clock = ManualClock::new();
        let config = config(&storage, &clock).shard_count(4);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        // About 1,000 entries a shard in the checkpoint and 3,000 more after it: 8,192 slots
        // hold both (under three quarters full), 2,048 only the first.
        let keys: Vec<Vec<u8>> = (0..16_000).map(key).collect();
        for k in &keys[..4_000] {
            store.check_or_insert(k, TTL, k).unwrap();
        }
        store.checkpoint().unwrap();
        for k in &keys[4_000..] {
            store.check_or_insert(k, TTL, k).unwrap();
        }
        drop(store);

        let store = Store::open_with(DIR, config).unwrap();
        let report = store.recovery_report();
        assert_eq!(report.checkpoint_entries_loaded, 4_000);
        assert_eq!(report.records_replayed, 12_000);
        assert_eq!(relayouts(&store), vec![1; 4], "relayouts per shard");
        for k in &keys {
            assert!(store
                .check_or_insert(k, TTL, b"again")
                .unwrap()
                .is_duplicate());
        }
    }

    /// Appends `n` filler keys `{prefix}-{i}` with `ttl`.
    fn fill(store: &Store, prefix: &str, n: usize, ttl: Duration) {
        for i in 0..n {
            let k = format!("{prefix}-{i:04}").into_bytes();
            store.check_or_insert(&k, ttl, b"f").unwrap();
        }
    }

    /// Issue #9's bugs 1 and 2 at the level of replay: after the segments holding a tombstone
    /// or a completion were compacted or deleted, neither the runtime, nor a reopen from the
    /// checkpoint, nor a full replay brings back the removed value or the completed claim.
    #[test]
    fn reclamation_never_lets_replay_resurrect_a_removed_value_or_a_completed_claim() {
        let storage = SimStorage::new(14);
        let clock = ManualClock::new();
        let config = config(&storage, &clock).compaction_live_ratio(0.9);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        let long = Duration::from_secs(10 * 3600);
        let short = Duration::from_secs(1);
        // Segment 1: K = v1 for 10 h among long-lived keys, and the claim C (lease 10 min).
        store.check_or_insert(b"K", long, b"v1").unwrap();
        let claim = acquired(store.claim(b"C", Duration::from_secs(600)).unwrap());
        let mut i = 0;
        while store.stats().segments == 1 {
            store
                .check_or_insert(format!("old-{i:04}").as_bytes(), long, b"f")
                .unwrap();
            i += 1;
        }
        // Segment 2: K removed and inserted again for 60 s, C completed for 60 s, among keys
        // that expire at once.
        assert!(store.remove(b"K").unwrap());
        store
            .check_or_insert(b"K", Duration::from_secs(60), b"v2")
            .unwrap();
        store
            .complete(claim, Duration::from_secs(60), b"done")
            .unwrap();
        fill(&store, "brief", 120, short);
        fill(&store, "new", 240, long);
        let answers = |store: &Store, phase: &str| {
            (
                store.get(b"K").unwrap().map(|v| v.to_vec()),
                store.get(b"C").unwrap().map(|v| v.to_vec()),
                store.in_doubt().unwrap(),
                phase.to_string(),
            )
        };
        clock.advance(Duration::from_secs(2));
        for _ in 0..10 {
            store.maintain().unwrap();
        }
        let on_disk = ids(&storage);
        // Segment 2 was compacted while v2 was live (the tombstone still hides v1 in segment 1).
        assert!(on_disk[0] == 1 && !on_disk.contains(&2), "{on_disk:?}");
        let live = answers(&store, "v2 live");
        assert_eq!(live.0.as_deref(), Some(&b"v2"[..]));
        assert_eq!(live.1.as_deref(), Some(&b"done"[..]));
        assert!(live.2.is_empty());
        clock.advance(Duration::from_secs(60));
        for _ in 0..10 {
            store.maintain().unwrap();
        }
        store.checkpoint().unwrap();
        let stats = store.stats();
        assert!(
            stats.segments_compacted + stats.segments_deleted > 0,
            "{stats:?}"
        );
        assert!(
            !ids(&storage).contains(&2),
            "the segment of the tombstone and the completion was reclaimed: {:?}",
            ids(&storage)
        );
        assert_eq!(answers(&store, "expired").0, None);
        assert_eq!(answers(&store, "expired").1, None);
        drop(store);
        for full_replay in [false, true] {
            if full_replay {
                storage
                    .remove(&dir().join(checkpoint::CHECKPOINT_FILE_NAME))
                    .unwrap();
            }
            let store = Store::open_with(DIR, config.clone()).unwrap();
            let (k, c, in_doubt, _) = answers(&store, "reopened");
            assert_eq!(
                k, None,
                "full replay: {full_replay}: the removed v1 came back"
            );
            assert_eq!(c, None, "full replay: {full_replay}");
            assert!(
                in_doubt.is_empty(),
                "full replay: {full_replay}: {in_doubt:?}"
            );
            let token = acquired(store.claim(b"C", Duration::from_secs(60)).unwrap());
            store.release(token).unwrap();
            drop(store);
        }
    }
}
