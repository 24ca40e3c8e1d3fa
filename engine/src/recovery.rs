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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::claim::registry::{claim_of, ClaimToken};
use crate::error::{Error, Result};
use crate::index::{Index, KeyCheck, Probe, Slot};
use crate::io::Storage;
use crate::log::segment::{self, SegmentFile};
use crate::log::{location, offset_of, segment_of, Location, SegmentStats};
use crate::record::{self, HeaderError, Record, RecordKind, SEGMENT_HEADER_LEN};

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
}

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

pub(crate) fn recover(
    storage: &dyn Storage,
    dir: &Path,
    index: &Index,
    now_millis: u64,
    checkpoint: std::result::Result<Option<Checkpoint>, String>,
) -> Result<Recovered> {
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
        check_header(&file, &header[..got], newest)?;
    }
    if ids.first() == Some(&0) {
        // Ids start at 1: location 0 means "no record" in the index.
        return Err(Error::Corrupt {
            path: dir.join(segment::segment_file_name(0)),
            offset: 0,
            reason: "segment id 0 is not a valid segment id".into(),
        });
    }
    let replay_from = checkpoint.as_ref().map_or(0, |c| c.replay_from);
    let mut claim_keys: Vec<Box<[u8]>> = checkpoint
        .as_ref()
        .map(|c| c.claim_keys.clone())
        .unwrap_or_default();
    let first_replayed = segment_of(replay_from);
    let mut newest_sealed = false;
    if let Some(checkpoint) = &checkpoint {
        // Segments before the replay start are summarised by the checkpoint: open them (their
        // headers are checked) but do not read them.
        for &id in ids.iter().filter(|&&id| id < first_replayed) {
            let file = SegmentFile::open(storage, dir, id)?;
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            let got = file.read_at(&mut header, 0)?;
            if let HeaderVerdict::TornCreation = check_header(&file, &header[..got], false)? {
                unreachable!("only the newest segment may be a torn creation");
            }
            check_seal(&file)?;
            newest_sealed = true;
            segment_stats.insert(id, checkpoint.segments[&id]);
            opened.insert(id, file);
        }
        if ids.binary_search(&first_replayed).is_ok() {
            segment_stats.insert(first_replayed, checkpoint.segments[&first_replayed]);
        }
        report.checkpoint_entries_loaded = checkpoint::install(
            checkpoint,
            index,
            |id| ids.binary_search(&id).is_ok(),
            now_millis,
        );
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
        // Only the bytes from the replay start on are read; the zeroed prefix below it is
        // never touched (its header was checked above).
        let bytes = read_from(&file, start)?;
        let verdict = if start == 0 {
            check_header(&file, &bytes, newest)?
        } else {
            HeaderVerdict::Valid
        };
        match verdict {
            HeaderVerdict::Valid => {}
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
        }
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
        while offset < bytes.len() {
            match record::decode(&bytes[offset..]) {
                Ok(record) if record.kind == RecordKind::Seal => {
                    let corrupt = |reason: String| Error::Corrupt {
                        path: file.path.clone(),
                        offset: offset as u64,
                        reason,
                    };
                    if record::seal_length(&record) != Some(offset as u64) {
                        return Err(corrupt(
                            "a seal that does not vouch for its own offset".into(),
                        ));
                    }
                    if offset + record.encoded_len() != bytes.len() {
                        return Err(corrupt("bytes follow the segment's seal".into()));
                    }
                    sealed = true;
                    break;
                }
                Ok(record) => {
                    let at = location(id, offset as u32);
                    segment_stats.entry(id).or_default().add_record(&record);
                    apply(
                        index,
                        &opened,
                        Some(Current {
                            file: &file,
                            start,
                            bytes: &bytes,
                        }),
                        at,
                        &record,
                        now_millis,
                        (&mut report, &mut claim_keys),
                    )?;
                    offset += record.encoded_len();
                }
                Err(error) if newest => {
                    file.truncate(offset as u64)?;
                    report.truncated_tail = Some(TruncatedTail {
                        path: file.path.clone(),
                        offset: offset as u64,
                        bytes_cut: (bytes.len() - offset) as u64,
                        reason: error.to_string(),
                    });
                    break;
                }
                Err(error) => {
                    return Err(Error::Corrupt {
                        path: file.path.clone(),
                        offset: offset as u64,
                        reason: error.to_string(),
                    })
                }
            }
        }
        if !newest && !sealed {
            return Err(Error::Corrupt {
                path: file.path.clone(),
                offset: bytes.len() as u64,
                reason: "an older segment ends without its seal: it was cut short".into(),
            });
        }
        // The last segment opened decides whether the log can go on in it.
        newest_sealed = sealed;
        tail_offset = offset as u32;
        segment_stats.entry(id).or_default();
        opened.insert(id, file);
    }
    count_live_entries(index, &mut segment_stats);
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
fn check_seal(file: &SegmentFile) -> Result<()> {
    let len = file.len()?;
    let at = len.saturating_sub(record::SEAL_RECORD_LEN as u64);
    let mut seal = [0u8; record::SEAL_RECORD_LEN];
    let got = file.read_at(&mut seal, at)?;
    let vouched = record::decode(&seal[..got])
        .ok()
        .as_ref()
        .and_then(record::seal_length);
    if vouched == Some(at) && at >= SEGMENT_HEADER_LEN as u64 {
        return Ok(());
    }
    let bytes = read_whole(file)?;
    let mut offset = SEGMENT_HEADER_LEN;
    while offset < bytes.len() {
        match record::decode(&bytes[offset..]) {
            Ok(record) => offset += record.encoded_len(),
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

/// Sets each segment's live count to the number of index entries pointing into it (replay drops
/// and replaces entries freely, so the counts are taken once at the end).
fn count_live_entries(index: &Index, segment_stats: &mut BTreeMap<u32, SegmentStats>) {
    // Segment ids on disk form a short range: count in an array, not with a map lookup per
    // entry (10 M entries at open).
    let first = segment_stats.keys().next().copied().unwrap_or(0);
    let last = segment_stats.keys().next_back().copied().unwrap_or(0);
    let mut counts = vec![0u64; (last - first) as usize + 1];
    for shard in index.shards() {
        let mut table = shard.lock();
        table.released.clear();
        for (_, slot) in table.occupied() {
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
        }
    }
    for (id, stats) in segment_stats.iter_mut() {
        stats.live = counts[(id - first) as usize];
    }
}

enum HeaderVerdict {
    Valid,
    TornCreation,
}

fn check_header(file: &SegmentFile, bytes: &[u8], newest: bool) -> Result<HeaderVerdict> {
    let torn_creation = bytes.len() < SEGMENT_HEADER_LEN
        || bytes[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0)
            && bytes[SEGMENT_HEADER_LEN..].iter().all(|&b| b == 0);
    match record::decode_segment_header(bytes) {
        Ok(id) if id == u64::from(file.id) => Ok(HeaderVerdict::Valid),
        Ok(id) => Err(Error::Corrupt {
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

/// The file's bytes from `start` on, at their offsets; the prefix before `start` is zeroes that
/// were never written (the allocation leaves those pages untouched).
fn read_from(file: &SegmentFile, start: usize) -> Result<Vec<u8>> {
    let len = file.len()? as usize;
    let mut bytes = vec![0u8; len];
    if start < len {
        let got = file.read_at(&mut bytes[start..], start as u64)?;
        bytes.truncate(start + got);
    }
    Ok(bytes)
}

fn read_whole(file: &SegmentFile) -> Result<Vec<u8>> {
    let len = file.len()?;
    let mut bytes = vec![0u8; len as usize];
    let got = file.read_at(&mut bytes, 0)?;
    bytes.truncate(got);
    Ok(bytes)
}

/// Applies one replayed record to the index: the log order is the per-key operation order, so
/// the last insert or removal of a key wins.
fn apply(
    index: &Index,
    earlier: &BTreeMap<u32, SegmentFile>,
    current: Option<Current<'_>>,
    at: Location,
    record: &Record<'_>,
    now_millis: u64,
    (report, claim_keys): (&mut RecoveryReport, &mut Vec<Box<[u8]>>),
) -> Result<()> {
    report.records_replayed += 1;
    let hash = index.hash(record.key);
    let mut table = index.lock(hash);
    let mut buf = Vec::new();
    let probe = table.probe(hash.tag, now_millis, |candidate| {
        let other = read_replayed(earlier, current, candidate.location, &mut buf)?;
        Ok::<_, Error>(if other.key != record.key {
            KeyCheck::Other
        } else if other.expires_at_millis <= now_millis {
            KeyCheck::Expired
        } else {
            KeyCheck::Live
        })
    })?;
    let live = record.expires_at_millis > now_millis;
    if record.kind == RecordKind::Claim && live {
        claim_keys.push(record.key.into());
    }
    let kind = match record.kind {
        // A claim occupies its key like an insert until its lease ends.
        RecordKind::Claim => RecordKind::Insert,
        kind => kind,
    };
    match (kind, probe) {
        (RecordKind::Insert, Probe::Found(slot) | Probe::Vacant(slot)) if live => {
            let entry = Slot {
                tag: hash.tag,
                expires_at_secs: Slot::deadline_secs(record.expires_at_millis),
                location: at,
            };
            table.put(slot, entry, now_millis);
        }
        (RecordKind::Insert, Probe::Found(slot)) => table.remove(slot),
        // A removal hides only what was written before the removal it stands for (a copy or a
        // completion's shadow may come after a newer record of the key).
        (RecordKind::Remove, Probe::Found(slot)) => {
            if table.slot(slot).location < record.removes_before(at) {
                table.remove(slot);
            }
        }
        (RecordKind::Insert, Probe::Vacant(_)) => report.expired_records_skipped += 1,
        (RecordKind::Remove, Probe::Vacant(_)) => {}
        (RecordKind::Claim | RecordKind::Seal, _) => {
            unreachable!("claims are applied as inserts; seals are not applied")
        }
    }
    Ok(())
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
