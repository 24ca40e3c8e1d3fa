//! Index checkpoints ("hint files"): a checksummed snapshot of every live index entry, so that
//! reopening reads the checkpoint and only the log written after it instead of all history.
//!
//! Layout (little-endian; spec in `engine/FORMAT.md`): a header with the hash seeds, shard count,
//! hash mask and the log location replay starts from; a table of segments' stats; then one
//! block per shard: entry count, body length, CRC of the body, and the entries (tag, deadline
//! secs, location) in the compact encoding of [`blocks`] (version 4; version 3, the same layout
//! with 32-bit tags, and versions 1 and 2, with 16-byte entries, are still read).
//!
//! Invariants:
//! - A checkpoint taken at log position P holds exactly the entries with location < P, and
//!   every byte before P was durable before the checkpoint was written. Replay starts at P; the
//!   segment table counts exactly the records before P.
//! - The file appears only by rename after it was fsynced, then the directory is fsynced.
//! - A checkpoint is never trusted over the log: any failed check (magic, version, CRC, length,
//!   a shard count or hash mask other than the config's) means it is ignored and the whole log is
//!   replayed. Entries pointing into segments deleted since are dropped on load.
//! - Every block is checked whole (CRC, then every entry decoded) before any entry goes into the
//!   index. Checking and installing split the shards between two threads when the file is large
//!   (a shard is checked and filled by one thread only).

mod blocks;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::{Index, Slot};
use crate::io::{Storage, StorageFile};
use crate::log::segment::sync_dir;
use crate::log::{segment_of, Location, SegmentStats};
use crate::shared::Shared;
use crate::state::StateTables;
use blocks::{EntryLayout, FIXED_ENTRY_LEN};

pub(crate) const CHECKPOINT_FILE_NAME: &str = "checkpoint.idem";
const CHECKPOINT_TMP_FILE_NAME: &str = "checkpoint.idem.tmp";
const CHECKPOINT_MAGIC: [u8; 8] = *b"IDEMCKPT";
/// Version 4 is version 3's layout with the index's 24-bit tags: a build that reads 3 but not 4
/// looks keys up by 32-bit tags, would find none of a version-4 checkpoint's entries, and so
/// must ignore it (it does: an unknown version). Version 3 encodes the shard blocks' entries
/// compactly (about 7 bytes instead of 16); version 2 added the state section (state entries and
/// positions of transactions). Versions 1 to 3 are still read (their 32-bit tags' low 24 bits
/// are the index's tags).
const CHECKPOINT_VERSION: u32 = 4;
const CHECKPOINT_VERSION_1: u32 = 1;
/// The first version with compact entries.
const CHECKPOINT_VERSION_3: u32 = 3;
const STATE_ROW_ENTRY: u8 = 1;
const STATE_ROW_POSITION: u8 = 2;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const SHARD_COUNT_OFFSET: usize = VERSION_OFFSET + 4;
const HASH_MASK_OFFSET: usize = SHARD_COUNT_OFFSET + 4;
const SEEDS_OFFSET: usize = HASH_MASK_OFFSET + 8;
const REPLAY_FROM_OFFSET: usize = SEEDS_OFFSET + 32;
const SEGMENT_COUNT_OFFSET: usize = REPLAY_FROM_OFFSET + 8;
const ENTRY_COUNT_OFFSET: usize = SEGMENT_COUNT_OFFSET + 4;
const HEADER_CRC_OFFSET: usize = ENTRY_COUNT_OFFSET + 8;
const HEADER_LEN: usize = HEADER_CRC_OFFSET + 4;
const _: () = assert!(HEADER_LEN == 80);

/// id u32, min_deadline_secs u32, records u64 (low 32 bits; the high 32 bits count tombstones),
/// max_deadline_secs u32, tombstone_bytes u32 (both 0 in files written before they were counted:
/// such a segment is compacted a little eagerly once).
const SEGMENT_ROW_LEN: usize = 24;
/// Versions 1 and 2: entry count u32, CRC of the entries u32.
const FIXED_BLOCK_HEADER_LEN: usize = 8;
/// Version 3: entry count u32, body length u32, CRC of the body u32.
const SHARD_BLOCK_HEADER_LEN: usize = 12;

/// A compact block's CRC: of its entry count and body length (`counts`), then its body.
fn compact_block_crc(counts: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(counts);
    hasher.update(body);
    hasher.finalize()
}

/// How many entries ahead of its install an entry's home slot is prefetched.
const INSTALL_AHEAD: usize = 16;

/// Where one shard's block lies in the file.
#[derive(Debug, Clone)]
struct Block {
    body: std::ops::Range<usize>,
    entries: usize,
    crc: u32,
    /// The CRC also covers the block's count and length (version 3).
    crc_covers_counts: bool,
}

/// A state entry of the state section: key, value, location.
pub(crate) type StateRow = (Box<[u8]>, Box<[u8]>, Location);
/// A position of the state section: source, position, location.
pub(crate) type PositionRow = (Box<[u8]>, u64, Location);

/// A checkpoint that passed every check.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub(crate) seeds: [u64; 4],
    /// Replay starts at this log location.
    pub(crate) replay_from: Location,
    /// Stats of the segments up to and including `replay_from`'s, counting the records before it.
    pub(crate) segments: BTreeMap<u32, SegmentStats>,
    /// The file's bytes; each shard's entries are a block of it (`shard_blocks`).
    bytes: Vec<u8>,
    layout: EntryLayout,
    shard_blocks: Vec<Block>,
    /// Whether install splits the shards between two threads.
    parallel: bool,
    /// Keys that held an open claim when the checkpoint was taken (to find claims in doubt).
    pub(crate) claim_keys: Vec<Box<[u8]>>,
    /// State entries (key, value, location) and positions (source, position, location).
    pub(crate) state_entries: Vec<StateRow>,
    pub(crate) positions: Vec<PositionRow>,
}

/// Writes a checkpoint of the store's index.
pub(crate) fn write(shared: &Shared) -> Result<()> {
    // Everything before P must be durable before entries pointing there are recorded as facts.
    let (replay_from, segments) = shared.log.tail_and_stats();
    shared.log.wait_durable(replay_from)?;
    let now = shared.clock.now_millis();

    let dir = &shared.dir;
    let tmp_path = dir.join(CHECKPOINT_TMP_FILE_NAME);
    let final_path = dir.join(CHECKPOINT_FILE_NAME);
    let io = |what: &'static str| {
        let path = tmp_path.display().to_string();
        move |e| Error::io(format!("{what} checkpoint {path}"), e)
    };
    let storage = &*shared.log.storage;
    let file = storage.create_truncate(&tmp_path).map_err(io("creating"))?;
    let mut out = Appender {
        file: &*file,
        offset: 0,
        buffer: Vec::with_capacity(Appender::BUFFER_BYTES),
    };

    // The header's entry count is only known at the end: write a placeholder, patch it after.
    let mut header = [0u8; HEADER_LEN];
    header[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&CHECKPOINT_MAGIC);
    put_u32(&mut header, VERSION_OFFSET, CHECKPOINT_VERSION);
    put_u32(
        &mut header,
        SHARD_COUNT_OFFSET,
        shared.index.shards().len() as u32,
    );
    put_u64(&mut header, HASH_MASK_OFFSET, shared.index.hash_mask());
    for (i, seed) in shared.index.seeds().iter().enumerate() {
        put_u64(&mut header, SEEDS_OFFSET + 8 * i, *seed);
    }
    put_u64(&mut header, REPLAY_FROM_OFFSET, replay_from);
    put_u32(&mut header, SEGMENT_COUNT_OFFSET, segments.len() as u32);
    out.write_all(&header).map_err(io("writing"))?;

    let mut table_bytes = Vec::with_capacity(segments.len() * SEGMENT_ROW_LEN + 4);
    for (&id, stats) in &segments {
        let mut row = [0u8; SEGMENT_ROW_LEN];
        put_u32(&mut row, 0, id);
        put_u32(&mut row, 4, stats.min_deadline_secs);
        // A segment (at most 4 GiB of records of at least 20 bytes) has fewer than 2^32 records.
        let tombstones = stats.tombstones.min(u64::from(u32::MAX));
        put_u64(&mut row, 8, stats.records | tombstones << 32);
        put_u32(&mut row, 16, stats.max_deadline_secs);
        put_u32(
            &mut row,
            20,
            u32::try_from(stats.tombstone_bytes).unwrap_or(u32::MAX),
        );
        table_bytes.extend_from_slice(&row);
    }
    let table_crc = crc32fast::hash(&table_bytes);
    table_bytes.extend_from_slice(&table_crc.to_le_bytes());
    out.write_all(&table_bytes).map_err(io("writing"))?;

    // Each shard's block is snapshot under its lock, then sorted and encoded outside it; a
    // helper thread encodes the odd shards while this one encodes the even shards and writes
    // every block in shard order (at most a few blocks wait in the channel).
    let shards = shared.index.shards();
    let encoder = || {
        let (mut kept, mut scratch) = (Vec::new(), Vec::new());
        move |shard: usize| encode_block(&shards[shard], replay_from, now, &mut kept, &mut scratch)
    };
    let mut entry_count: u64 = 0;
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(4);
        let parallel = shards.len() >= 2;
        if parallel {
            scope.spawn(move || {
                let mut encode = encoder();
                for shard in (1..shards.len()).step_by(2) {
                    // The writer stopped on an error: nothing more is wanted.
                    if sender.send(encode(shard)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut encode = encoder();
        for shard in 0..shards.len() {
            let (entries, block) = if parallel && shard % 2 == 1 {
                receiver
                    .recv()
                    .expect("the encoding thread sends every odd shard")
            } else {
                encode(shard)
            };
            entry_count += entries;
            out.write_all(&block).map_err(io("writing"))?;
        }
        Ok::<(), Error>(())
    })?;
    // Open claims: their records may lie before P, where replay will not see them.
    let mut claims = Vec::new();
    let claim_keys = shared.claims.live_keys(now);
    claims.extend_from_slice(&(claim_keys.len() as u32).to_le_bytes());
    for key in &claim_keys {
        claims.extend_from_slice(&(key.len() as u16).to_le_bytes());
        claims.extend_from_slice(key);
    }
    let crc = crc32fast::hash(&claims);
    claims.extend_from_slice(&crc.to_le_bytes());
    out.write_all(&claims).map_err(io("writing"))?;
    out.write_all(&state_section(shared, replay_from))
        .map_err(io("writing"))?;
    out.flush().map_err(io("writing"))?;
    put_u64(&mut header, ENTRY_COUNT_OFFSET, entry_count);
    let crc = crc32fast::hash(&header[..HEADER_CRC_OFFSET]);
    put_u32(&mut header, HEADER_CRC_OFFSET, crc);
    file.write_all_at(&header, 0).map_err(io("writing"))?;
    file.sync_data().map_err(io("fsync of"))?;
    drop(file);
    storage
        .rename(&tmp_path, &final_path)
        .map_err(io("renaming"))?;
    sync_dir(storage, dir)
}

/// One shard's block: its entries with location before `replay_from` not dead at `now`, counted,
/// in the compact encoding, behind the block header.
fn encode_block(
    shard: &parking_lot::Mutex<crate::index::ShardTable>,
    replay_from: Location,
    now: u64,
    kept: &mut Vec<Slot>,
    scratch: &mut Vec<Slot>,
) -> (u64, Vec<u8>) {
    kept.clear();
    kept.extend(
        shard
            .lock()
            .occupied()
            .map(|(_, slot)| slot)
            .filter(|slot| slot.location < replay_from && !slot.is_dead(now)),
    );
    let mut block = vec![0u8; SHARD_BLOCK_HEADER_LEN];
    blocks::encode_compact(kept, scratch, &mut block);
    let body_len = (block.len() - SHARD_BLOCK_HEADER_LEN) as u32;
    put_u32(&mut block, 0, kept.len() as u32);
    put_u32(&mut block, 4, body_len);
    let crc = compact_block_crc(&block[..8], &block[SHARD_BLOCK_HEADER_LEN..]);
    put_u32(&mut block, 8, crc);
    (kept.len() as u64, block)
}

/// The state section: rows of state entries and positions whose records lie before P, then the
/// section's CRC.
fn state_section(shared: &Shared, replay_from: Location) -> Vec<u8> {
    let mut section = vec![0u8; 4];
    let mut rows = 0u32;
    let state = shared.state.lock();
    for (key, entry) in &state.entries {
        if entry.location < replay_from {
            section.push(STATE_ROW_ENTRY);
            section.extend_from_slice(&(key.len() as u16).to_le_bytes());
            section.extend_from_slice(key);
            section.extend_from_slice(&(entry.value.len() as u16).to_le_bytes());
            section.extend_from_slice(&entry.value);
            section.extend_from_slice(&entry.location.to_le_bytes());
            rows += 1;
        }
    }
    for (source, entry) in &state.positions {
        if entry.location < replay_from {
            section.push(STATE_ROW_POSITION);
            section.extend_from_slice(&(source.len() as u16).to_le_bytes());
            section.extend_from_slice(source);
            section.extend_from_slice(&entry.position.to_le_bytes());
            section.extend_from_slice(&entry.location.to_le_bytes());
            rows += 1;
        }
    }
    drop(state);
    put_u32(&mut section, 0, rows);
    let crc = crc32fast::hash(&section);
    section.extend_from_slice(&crc.to_le_bytes());
    section
}

/// Parses the state section starting at `at`; returns its rows and the offset after it.
fn decode_state_section(
    bytes: &[u8],
    mut at: usize,
    replay_from: Location,
) -> std::result::Result<(Vec<StateRow>, Vec<PositionRow>, usize), String> {
    let start = at;
    let truncated = || format!("truncated in the state section (offset {start})");
    let take = |at: &mut usize, len: usize| {
        let got = bytes.get(*at..*at + len).ok_or_else(truncated)?;
        *at += len;
        Ok::<_, String>(got)
    };
    let rows = get_u32(take(&mut at, 4)?, 0);
    let (mut entries, mut positions) = (Vec::new(), Vec::new());
    for _ in 0..rows {
        let kind = take(&mut at, 1)?[0];
        let key_len = u16::from_le_bytes(take(&mut at, 2)?.try_into().expect("2 bytes"));
        let key: Box<[u8]> = take(&mut at, key_len as usize)?.into();
        match kind {
            STATE_ROW_ENTRY => {
                let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().expect("2 bytes"));
                let value: Box<[u8]> = take(&mut at, len as usize)?.into();
                let location = get_u64(take(&mut at, 8)?, 0);
                entries.push((key, value, location));
            }
            STATE_ROW_POSITION => {
                let position = get_u64(take(&mut at, 8)?, 0);
                let location = get_u64(take(&mut at, 8)?, 0);
                positions.push((key, position, location));
            }
            other => {
                return Err(format!(
                    "unknown state row kind {other} in the state section"
                ))
            }
        }
    }
    let crc = get_u32(take(&mut at, 4)?, 0);
    if crc32fast::hash(&bytes[start..at - 4]) != crc {
        return Err(format!("state section checksum mismatch at offset {start}"));
    }
    let outside = |location: Location| location == 0 || location >= replay_from;
    if entries.iter().any(|e| outside(e.2)) || positions.iter().any(|p| outside(p.2)) {
        return Err("the state section has a row outside the checkpointed log".into());
    }
    Ok((entries, positions, at))
}

/// Buffers sequential writes to a file into large positioned writes.
struct Appender<'f> {
    file: &'f dyn StorageFile,
    offset: u64,
    buffer: Vec<u8>,
}

impl Appender<'_> {
    const BUFFER_BYTES: usize = 1 << 20;

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= Self::BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all_at(&self.buffer, self.offset)?;
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

/// Reads the checkpoint in `dir`: `Ok(None)` if there is none, `Err(reason)` if it must be
/// ignored, with the reason for the recovery report.
pub(crate) fn load(
    storage: &dyn Storage,
    dir: &Path,
    config: &Config,
) -> std::result::Result<Option<Checkpoint>, String> {
    let _ = storage.remove(&dir.join(CHECKPOINT_TMP_FILE_NAME));
    let path = dir.join(CHECKPOINT_FILE_NAME);
    let read = |file: Box<dyn StorageFile>| {
        let mut bytes = vec![0u8; file.len()? as usize];
        let got = file.read_at(&mut bytes, 0)?;
        bytes.truncate(got);
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = match storage.open(&path).and_then(read) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    decode(bytes, config)
        .map(Some)
        .map_err(|reason| format!("{} ignored: {reason}", path.display()))
}

/// Checks a checkpoint file's bytes whole; the shard blocks are checked by two threads when
/// they take at least `config.parallel_replay_min_bytes`.
fn decode(file: Vec<u8>, config: &Config) -> std::result::Result<Checkpoint, String> {
    let parallel_min_bytes = config.parallel_replay_min_bytes;
    let bytes = &file[..];
    if bytes.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if bytes[MAGIC_OFFSET..VERSION_OFFSET] != CHECKPOINT_MAGIC {
        return Err("bad magic".into());
    }
    if get_u32(bytes, HEADER_CRC_OFFSET) != crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]) {
        return Err("header checksum mismatch".into());
    }
    let version = get_u32(bytes, VERSION_OFFSET);
    if !(CHECKPOINT_VERSION_1..=CHECKPOINT_VERSION).contains(&version) {
        return Err(format!(
            "version {version}, this build reads {CHECKPOINT_VERSION_1} to {CHECKPOINT_VERSION}"
        ));
    }
    let shard_count = get_u32(bytes, SHARD_COUNT_OFFSET) as usize;
    if shard_count != config.shard_count {
        return Err(format!(
            "{shard_count} shards, the config has {}",
            config.shard_count
        ));
    }
    if get_u64(bytes, HASH_MASK_OFFSET) != config.hash_mask_for_testing {
        return Err("hash mask differs from the config's".into());
    }
    let seeds = [0, 1, 2, 3].map(|i| get_u64(bytes, SEEDS_OFFSET + 8 * i));
    let replay_from = get_u64(bytes, REPLAY_FROM_OFFSET);
    let segment_count = get_u32(bytes, SEGMENT_COUNT_OFFSET) as usize;
    let entry_count = get_u64(bytes, ENTRY_COUNT_OFFSET);

    let mut at = HEADER_LEN;
    let table_len = segment_count
        .checked_mul(SEGMENT_ROW_LEN)
        .filter(|len| at + len + 4 <= bytes.len())
        .ok_or("segment table runs past the end")?;
    let table = &bytes[at..at + table_len];
    if get_u32(bytes, at + table_len) != crc32fast::hash(table) {
        return Err(format!("segment table checksum mismatch at offset {at}"));
    }
    let mut segments = BTreeMap::new();
    for row in table.chunks_exact(SEGMENT_ROW_LEN) {
        let id = get_u32(row, 0);
        if id > segment_of(replay_from) {
            return Err(format!(
                "segment {id} is listed but lies after the replay start"
            ));
        }
        let stats = SegmentStats {
            records: get_u64(row, 8) & u64::from(u32::MAX),
            tombstones: get_u64(row, 8) >> 32,
            tombstone_bytes: u64::from(get_u32(row, 20)),
            bytes: 0,
            live: 0,
            state_live: 0,
            max_deadline_secs: get_u32(row, 16),
            // Not in the row: the latest deadline of all, which is never earlier.
            max_deadline_but_state_secs: get_u32(row, 16),
            min_deadline_secs: get_u32(row, 4),
        };
        segments.insert(id, stats);
    }
    at += table_len + 4;

    let layout = if version >= CHECKPOINT_VERSION_3 {
        EntryLayout::Compact
    } else {
        EntryLayout::Fixed
    };
    let block_header_len = match layout {
        EntryLayout::Compact => SHARD_BLOCK_HEADER_LEN,
        EntryLayout::Fixed => FIXED_BLOCK_HEADER_LEN,
    };
    let mut shard_blocks = Vec::with_capacity(shard_count);
    let mut total: u64 = 0;
    for shard in 0..shard_count {
        if at + block_header_len > bytes.len() {
            return Err(format!("truncated at shard {shard} (offset {at})"));
        }
        let entries = get_u32(bytes, at) as usize;
        let (len, crc) = match layout {
            EntryLayout::Compact => (
                Some(get_u32(bytes, at + 4) as usize),
                get_u32(bytes, at + 8),
            ),
            EntryLayout::Fixed => (entries.checked_mul(FIXED_ENTRY_LEN), get_u32(bytes, at + 4)),
        };
        at += block_header_len;
        let len = len
            .filter(|len| at + len <= bytes.len())
            .ok_or_else(|| format!("shard {shard} runs past the end (offset {at})"))?;
        total += entries as u64;
        shard_blocks.push(Block {
            body: at..at + len,
            entries,
            crc,
            crc_covers_counts: layout == EntryLayout::Compact,
        });
        at += len;
    }
    let parallel = at - HEADER_LEN >= parallel_min_bytes;
    check_blocks(bytes, layout, &shard_blocks, replay_from, parallel)?;
    let claims_start = at;
    let claim_count = bytes
        .get(at..at + 4)
        .map(|count| get_u32(count, 0))
        .ok_or("truncated before the claims section")?;
    at += 4;
    let mut claim_keys = Vec::new();
    for _ in 0..claim_count {
        let len = bytes
            .get(at..at + 2)
            .map(|len| u16::from_le_bytes([len[0], len[1]]) as usize)
            .ok_or("truncated in the claims section")?;
        let key = bytes
            .get(at + 2..at + 2 + len)
            .ok_or("truncated in the claims section")?;
        claim_keys.push(key.into());
        at += 2 + len;
    }
    let stored_crc = bytes
        .get(at..at + 4)
        .map(|crc| get_u32(crc, 0))
        .ok_or("truncated in the claims section")?;
    if crc32fast::hash(&bytes[claims_start..at]) != stored_crc {
        return Err(format!(
            "claims section checksum mismatch at offset {claims_start}"
        ));
    }
    at += 4;
    let (state_entries, positions) = if version == CHECKPOINT_VERSION_1 {
        (Vec::new(), Vec::new())
    } else {
        let (entries, positions, end) = decode_state_section(bytes, at, replay_from)?;
        at = end;
        (entries, positions)
    };
    if at != bytes.len() {
        return Err(format!(
            "{} unexpected bytes after the last section",
            bytes.len() - at
        ));
    }
    if total != entry_count {
        return Err(format!("{total} entries, the header says {entry_count}"));
    }
    if !segments.contains_key(&segment_of(replay_from)) {
        return Err("the replay start's segment is not listed".into());
    }
    Ok(Checkpoint {
        seeds,
        replay_from,
        segments,
        layout,
        shard_blocks,
        parallel,
        claim_keys,
        state_entries,
        positions,
        bytes: file,
    })
}

/// What `verify` learns from a checkpoint that passed every check of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointSummary {
    pub(crate) replay_from: Location,
    pub(crate) entries: u64,
    pub(crate) claims: u64,
}

/// Checks a checkpoint file's bytes on their own, against the shard count and hash mask the
/// file names itself (`verify` has no config to compare with): `Err` says what is wrong.
pub(crate) fn check_bytes(bytes: &[u8]) -> std::result::Result<CheckpointSummary, String> {
    let mut config = Config::default();
    if bytes.len() >= HEADER_LEN {
        config.shard_count = get_u32(bytes, SHARD_COUNT_OFFSET) as usize;
        config.hash_mask_for_testing = get_u64(bytes, HASH_MASK_OFFSET);
    }
    let checkpoint = decode(bytes.to_vec(), &config)?;
    Ok(CheckpointSummary {
        replay_from: checkpoint.replay_from,
        entries: get_u64(bytes, ENTRY_COUNT_OFFSET),
        claims: checkpoint.claim_keys.len() as u64,
    })
}

/// Puts a loaded checkpoint's entries into the index, dropping those that are dead at
/// `now_millis` or whose segment no longer exists.
pub(crate) fn install(
    checkpoint: &Checkpoint,
    index: &Index,
    state: &mut StateTables,
    segment_exists: impl Fn(u32) -> bool + Sync,
    now_millis: u64,
) -> u64 {
    let mut installed = 0;
    // State records never expire; those in deleted segments were copied after P.
    for (key, value, location) in &checkpoint.state_entries {
        if segment_exists(segment_of(*location)) {
            state.put(key, value, *location, *location);
            installed += 1;
        }
    }
    for (source, position, location) in &checkpoint.positions {
        if segment_exists(segment_of(*location)) {
            state.set_position(source, *position, *location, *location);
            installed += 1;
        }
    }
    let shards = index.shards();
    let (layout, replay_from) = (checkpoint.layout, checkpoint.replay_from);
    let installed_in = |first: usize, step: usize| {
        let mut installed = 0u64;
        for (shard, block) in shards
            .iter()
            .zip(&checkpoint.shard_blocks)
            .skip(first)
            .step_by(step)
        {
            let body = &checkpoint.bytes[block.body.clone()];
            let mut table = shard.lock();
            // Sized once for all its entries: no table is rebuilt while loading.
            table.reserve(block.entries, now_millis);
            // Entries come in location order, so each lands at a random slot: its home slot is
            // prefetched a few entries before it is installed (the table, sized above, does
            // not move meanwhile).
            let mut ahead: VecDeque<Slot> = VecDeque::with_capacity(INSTALL_AHEAD);
            // Neighbours in location order mostly share a segment: ask once per run.
            let mut segment = (0, false);
            let mut exists = |id: u32| {
                if segment.0 != id {
                    segment = (id, segment_exists(id));
                }
                segment.1
            };
            blocks::decode_entries(layout, body, block.entries, replay_from, |slot| {
                if !slot.is_dead(now_millis) && exists(segment_of(slot.location)) {
                    table.prefetch(slot.tag);
                    if ahead.len() == INSTALL_AHEAD {
                        let due = ahead.pop_front().expect("a full queue");
                        table.install_unscheduled(due, now_millis);
                    }
                    ahead.push_back(slot);
                    installed += 1;
                }
            })
            .expect("every block was checked on load");
            for slot in ahead {
                table.install_unscheduled(slot, now_millis);
            }
        }
        installed
    };
    installed
        + on_shards(checkpoint.parallel, installed_in)
            .into_iter()
            .sum::<u64>()
}

/// Runs `work(first, step)` over the shards: `(0, 1)` on this thread, or `(0, 2)` here and
/// `(1, 2)` on a helper thread (the even and the odd shards).
pub(crate) fn on_shards<T: Send>(
    parallel: bool,
    work: impl Fn(usize, usize) -> T + Sync,
) -> Vec<T> {
    if !parallel {
        return vec![work(0, 1)];
    }
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| work(1, 2));
        let mine = work(0, 2);
        vec![mine, helper.join().expect("a checkpoint thread panicked")]
    })
}

/// Checks every shard block (CRC, then each entry); the first failing shard is named.
fn check_blocks(
    bytes: &[u8],
    layout: EntryLayout,
    shard_blocks: &[Block],
    replay_from: Location,
    parallel: bool,
) -> std::result::Result<(), String> {
    let first_failure = |first: usize, step: usize| {
        for (shard, block) in shard_blocks.iter().enumerate().skip(first).step_by(step) {
            let body = &bytes[block.body.clone()];
            let crc = if block.crc_covers_counts {
                let start = block.body.start - SHARD_BLOCK_HEADER_LEN;
                compact_block_crc(&bytes[start..start + 8], body)
            } else {
                crc32fast::hash(body)
            };
            if crc != block.crc {
                let at = block.body.start;
                return Some((
                    shard,
                    format!("shard {shard} checksum mismatch at offset {at}"),
                ));
            }
            if let Err(why) =
                blocks::decode_entries(layout, body, block.entries, replay_from, |_| {})
            {
                return Some((shard, format!("shard {shard} {why}")));
            }
        }
        None
    };
    // Of a failure on each thread, the one in the lower shard is the first in file order.
    match on_shards(parallel, first_failure)
        .into_iter()
        .flatten()
        .min_by_key(|f| f.0)
    {
        Some((_, reason)) => Err(reason),
        None => Ok(()),
    }
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    //! The checkpoint's invariants (module doc, `engine/FORMAT.md`): a faithful round trip,
    //! every failed check ignored with a reason and the log replayed, entries of deleted
    //! segments dropped, and a crash at any step leaving the old or the new checkpoint.

    use super::*;
    use crate::sim::SimStorage;
    use crate::{Claim, ManualClock, Store};
    use std::io;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const DIR: &str = "/checkpoint";
    const TTL: Duration = Duration::from_secs(3600);
    const SHARDS: usize = 4;

    fn dir() -> &'static Path {
        Path::new(DIR)
    }

    fn config(storage: impl Storage, clock: &ManualClock) -> Config {
        Config::default()
            .storage(storage)
            .clock(clock.clone())
            .background_maintenance(false)
            .checkpoint_every_bytes(0)
            .segment_size_bytes_for_testing(4096)
            .shard_count(SHARDS)
    }

    fn key(i: usize) -> Vec<u8> {
        format!("key-{i:04}").into_bytes()
    }

    fn file(storage: &SimStorage, name: &str) -> Option<Vec<u8>> {
        let file = storage.open(&dir().join(name)).ok()?;
        let mut bytes = vec![0; file.len().unwrap() as usize];
        file.read_at(&mut bytes, 0).unwrap();
        Some(bytes)
    }

    fn put_file(storage: &SimStorage, name: &str, bytes: &[u8]) {
        let file = storage.create_truncate(&dir().join(name)).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file.sync_data().unwrap();
        storage.sync_dir(dir()).unwrap();
    }

    /// Every index entry, sorted.
    /// An index entry as the tests compare them: tag, deadline and location.
    type Entry = (u32, u32, Location);

    fn entries(index: &Index) -> Vec<Entry> {
        let mut all: Vec<_> = index
            .shards()
            .iter()
            .flat_map(|shard| {
                let table = shard.lock();
                table
                    .occupied()
                    .map(|(_, s)| (s.tag, s.expires_at_secs, s.location))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_unstable();
        all
    }

    /// Keys 0..300 over several segments, 40 of them removed (tombstones), one claim open,
    /// then a checkpoint; the store is returned open.
    fn checkpointed(storage: &SimStorage, clock: &ManualClock) -> (Store, Vec<Vec<u8>>) {
        let store = Store::open_with(DIR, config(storage.clone(), clock)).unwrap();
        let keys: Vec<Vec<u8>> = (0..300).map(key).collect();
        for k in &keys {
            store.check_or_insert(k, TTL, k).unwrap();
        }
        for k in keys.iter().step_by(7).take(40) {
            assert!(store.remove(k).unwrap());
        }
        assert!(matches!(
            store.claim(b"claimed", Duration::from_secs(60)).unwrap(),
            Claim::Acquired(_)
        ));
        store.checkpoint().unwrap();
        (store, keys)
    }

    fn expected(keys: &[Vec<u8>], i: usize) -> Option<&[u8]> {
        (!i.is_multiple_of(7) || i / 7 >= 40).then_some(&keys[i][..])
    }

    /// A store checkpointed by [`checkpointed`], then closed: its keys, the index entries it
    /// held, and its checkpoint file's bytes.
    fn closed_with_checkpoint(
        storage: &SimStorage,
        clock: &ManualClock,
    ) -> (Vec<Vec<u8>>, Vec<Entry>, Vec<u8>) {
        let (store, keys) = checkpointed(storage, clock);
        let written = entries(&store.shared.index);
        drop(store);
        let bytes = file(storage, CHECKPOINT_FILE_NAME).unwrap();
        (keys, written, bytes)
    }

    /// Opens the store and requires it to have loaded all `entries` from its checkpoint and
    /// replayed nothing, and to answer every key as [`checkpointed`] wrote it.
    fn open_from_checkpoint_alone(
        storage: &SimStorage,
        clock: &ManualClock,
        keys: &[Vec<u8>],
        entries: usize,
    ) -> Store {
        let store = Store::open_with(DIR, config(storage.clone(), clock)).unwrap();
        let report = store.recovery_report();
        assert_eq!(report.checkpoint_ignored, None);
        assert_eq!(report.checkpoint_entries_loaded, entries as u64);
        assert_eq!(report.records_replayed, 0);
        assert_answers(&store, keys);
        store
    }

    fn assert_answers(store: &Store, keys: &[Vec<u8>]) {
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                store.get(k).unwrap().as_deref(),
                expected(keys, i),
                "key {i}"
            );
        }
    }

    #[test]
    fn round_trip_of_entries_segment_stats_seeds_and_claims() {
        let storage = SimStorage::new(1);
        let clock = ManualClock::new();
        let (store, _) = checkpointed(&storage, &clock);
        let (tail, stats) = store.shared.log.tail_and_stats();
        let written = entries(&store.shared.index);
        let seeds = store.shared.index.seeds();
        drop(store);
        assert!(stats.len() >= 3, "{stats:?}");

        let loaded = load(&storage, dir(), &config(storage.clone(), &clock))
            .unwrap()
            .expect("a checkpoint");
        assert_eq!(loaded.replay_from, tail);
        assert_eq!(loaded.seeds, seeds);
        assert_eq!(loaded.claim_keys, [Box::<[u8]>::from(&b"claimed"[..])]);
        // Live counts are recounted on load, and bytes taken from the files.
        let strip_live = |s: &SegmentStats| SegmentStats {
            live: 0,
            bytes: 0,
            ..*s
        };
        let expected_stats: BTreeMap<u32, SegmentStats> =
            stats.iter().map(|(&id, s)| (id, strip_live(s))).collect();
        assert_eq!(loaded.segments, expected_stats);
        let tombstones: u64 = loaded.segments.values().map(|s| s.tombstones).sum();
        assert_eq!(tombstones, 40, "the removals");
        // Where FORMAT.md's row puts them: the count in the high half of `records`, their bytes
        // in the former reserved u32.
        let bytes = file(&storage, CHECKPOINT_FILE_NAME).unwrap();
        let rows = &bytes[HEADER_LEN..HEADER_LEN + stats.len() * SEGMENT_ROW_LEN];
        let row_tombstones: u64 = rows
            .chunks_exact(SEGMENT_ROW_LEN)
            .map(|row| get_u64(row, 8) >> 32)
            .sum();
        assert_eq!(row_tombstones, 40);
        let row_tombstone_bytes: u64 = rows
            .chunks_exact(SEGMENT_ROW_LEN)
            .map(|row| u64::from(get_u32(row, 20)))
            .sum();
        let expected_bytes: u64 = stats.values().map(|s| s.tombstone_bytes).sum();
        assert_eq!(row_tombstone_bytes, expected_bytes);
        assert!(expected_bytes >= 40 * crate::record::RECORD_HEADER_LEN as u64);

        let index = Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0);
        let installed = install(
            &loaded,
            &index,
            &mut StateTables::default(),
            |_| true,
            crate::Clock::now_millis(&clock),
        );
        assert_eq!(installed as usize, written.len());
        assert_eq!(entries(&index), written);
        assert_eq!(written.len(), 300 - 40 + 1, "live keys and the claim");
    }

    /// A mutation of a valid checkpoint file, the reason it must be ignored for, and the config
    /// to open with.
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;

    struct Case {
        what: &'static str,
        damage: Damage,
        reason: &'static str,
        config: fn(Config) -> Config,
    }

    fn reseal_header(bytes: &mut [u8]) {
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        put_u32(bytes, HEADER_CRC_OFFSET, crc);
    }

    /// Offsets of the segment table and of each shard block.
    fn blocks(bytes: &[u8]) -> (usize, Vec<usize>) {
        let rows = get_u32(bytes, SEGMENT_COUNT_OFFSET) as usize;
        let mut at = HEADER_LEN + rows * SEGMENT_ROW_LEN + 4;
        let mut starts = Vec::new();
        for _ in 0..get_u32(bytes, SHARD_COUNT_OFFSET) {
            starts.push(at);
            at += SHARD_BLOCK_HEADER_LEN + get_u32(bytes, at + 4) as usize;
        }
        (rows, starts)
    }

    /// Replaces the first non-empty shard block: `change` gets its entries (in block order)
    /// and body, and either edits the entries (`None`: they are encoded again) or returns a
    /// count and body of its own. The block's length and CRC are made to match, so only the
    /// entries' own checks can find the damage.
    fn rewrite_first_block(
        bytes: &mut Vec<u8>,
        change: impl FnOnce(&mut Vec<Slot>, &[u8]) -> Option<(usize, Vec<u8>)>,
    ) {
        let (block, entry) = first_entry(bytes);
        let (count, len) = (
            get_u32(bytes, block) as usize,
            get_u32(bytes, block + 4) as usize,
        );
        let body = bytes[entry..entry + len].to_vec();
        let mut slots = Vec::new();
        blocks::decode_entries(EntryLayout::Compact, &body, count, u64::MAX, |s| {
            slots.push(s)
        })
        .unwrap();
        let (count, new_body) = change(&mut slots, &body).unwrap_or_else(|| {
            let mut new_body = Vec::new();
            blocks::encode_compact(&mut slots, &mut Vec::new(), &mut new_body);
            (slots.len(), new_body)
        });
        bytes.splice(entry..entry + len, new_body.iter().copied());
        put_u32(bytes, block, count as u32);
        put_u32(bytes, block + 4, new_body.len() as u32);
        let crc = compact_block_crc(&bytes[block..block + 8], &new_body);
        put_u32(bytes, block + 8, crc);
    }

    /// The same checkpoint in version 2 (16-byte entries in fixed blocks), as builds before
    /// version 3 wrote it.
    fn as_version_2(bytes: &[u8]) -> Vec<u8> {
        let (_, starts) = blocks(bytes);
        let mut out = bytes[..starts[0]].to_vec();
        let mut end = starts[0];
        for &block in &starts {
            let (count, len) = (
                get_u32(bytes, block) as usize,
                get_u32(bytes, block + 4) as usize,
            );
            let body = &bytes[block + SHARD_BLOCK_HEADER_LEN..][..len];
            let mut fixed = Vec::new();
            blocks::decode_entries(EntryLayout::Compact, body, count, u64::MAX, |s| {
                fixed.extend_from_slice(&s.tag.to_le_bytes());
                fixed.extend_from_slice(&s.expires_at_secs.to_le_bytes());
                fixed.extend_from_slice(&s.location.to_le_bytes());
            })
            .unwrap();
            out.extend_from_slice(&(count as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&fixed).to_le_bytes());
            out.extend_from_slice(&fixed);
            end = block + SHARD_BLOCK_HEADER_LEN + len;
        }
        out.extend_from_slice(&bytes[end..]);
        put_u32(&mut out, VERSION_OFFSET, 2);
        reseal_header(&mut out);
        out
    }

    #[test]
    fn a_version_2_checkpoint_is_still_read() {
        let storage = SimStorage::new(7);
        let clock = ManualClock::new();
        let (keys, written, v3) = closed_with_checkpoint(&storage, &clock);
        let v2 = as_version_2(&v3);
        assert_eq!(get_u32(&v2, VERSION_OFFSET), 2);
        assert!(
            v2.len() > v3.len() + (written.len() * 8),
            "16-byte entries: {} against {} bytes",
            v2.len(),
            v3.len()
        );
        put_file(&storage, CHECKPOINT_FILE_NAME, &v2);
        let loaded = load(&storage, dir(), &config(storage.clone(), &clock))
            .unwrap()
            .expect("a version 2 checkpoint");
        assert_eq!(loaded.layout, EntryLayout::Fixed);
        let index = Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0);
        let now = crate::Clock::now_millis(&clock);
        install(&loaded, &index, &mut StateTables::default(), |_| true, now);
        assert_eq!(entries(&index), written);
        let store = open_from_checkpoint_alone(&storage, &clock, &keys, written.len());
        // The next checkpoint is written in the current version.
        store.checkpoint().unwrap();
        drop(store);
        let rewritten = file(&storage, CHECKPOINT_FILE_NAME).unwrap();
        assert_eq!(get_u32(&rewritten, VERSION_OFFSET), CHECKPOINT_VERSION);
    }

    /// A version-3 checkpoint, as builds with 32-bit tags wrote it, is still read: the low 24
    /// bits of its tags are the index's tags, and every key is found without a replay.
    #[test]
    fn a_version_3_checkpoint_with_32_bit_tags_is_still_read() {
        let storage = SimStorage::new(7);
        let clock = ManualClock::new();
        let (keys, written, mut v3) = closed_with_checkpoint(&storage, &clock);
        assert_eq!(get_u32(&v3, VERSION_OFFSET), CHECKPOINT_VERSION);
        rewrite_first_block(&mut v3, |slots, _| {
            for slot in slots.iter_mut() {
                assert!(slot.tag < 1 << 24, "tags are written in 24 bits");
                slot.tag |= 0xAB00_0000;
            }
            None
        });
        put_u32(&mut v3, VERSION_OFFSET, 3);
        reseal_header(&mut v3);
        put_file(&storage, CHECKPOINT_FILE_NAME, &v3);
        let store = open_from_checkpoint_alone(&storage, &clock, &keys, written.len());
        assert_eq!(entries(&store.shared.index), written);
    }

    fn first_entry(bytes: &[u8]) -> (usize, usize) {
        let block = blocks(bytes)
            .1
            .into_iter()
            .find(|&b| get_u32(bytes, b) > 0)
            .unwrap();
        (block, block + SHARD_BLOCK_HEADER_LEN)
    }

    fn cases() -> Vec<Case> {
        let same = |c: Config| c;
        vec![
            Case {
                what: "magic",
                damage: Box::new(|b| b[0] ^= 1),
                reason: "bad magic",
                config: same,
            },
            Case {
                what: "version",
                damage: Box::new(|b| {
                    put_u32(b, VERSION_OFFSET, 5);
                    reseal_header(b);
                }),
                reason: "version 5",
                config: same,
            },
            Case {
                what: "header CRC",
                damage: Box::new(|b| b[SEEDS_OFFSET + 3] ^= 1),
                reason: "header checksum",
                config: same,
            },
            Case {
                what: "table CRC",
                damage: Box::new(|b| b[HEADER_LEN + 9] ^= 1),
                reason: "segment table checksum",
                config: same,
            },
            Case {
                what: "shard block CRC",
                damage: Box::new(|b| {
                    let (_, entry) = first_entry(b);
                    b[entry + 1] ^= 1;
                }),
                reason: "checksum mismatch at offset",
                config: same,
            },
            Case {
                what: "claims CRC",
                // Its last byte lies before the state section (8 bytes when it has no rows).
                damage: Box::new(|b| {
                    let at = b.len() - 9;
                    b[at] ^= 1
                }),
                reason: "claims section checksum",
                config: same,
            },
            Case {
                what: "state CRC",
                damage: Box::new(|b| *b.last_mut().unwrap() ^= 1),
                reason: "state section checksum",
                config: same,
            },
            Case {
                what: "truncated inside the header",
                damage: Box::new(|b| b.truncate(50)),
                reason: "shorter than the header",
                config: same,
            },
            Case {
                what: "truncated inside the table",
                damage: Box::new(|b| b.truncate(HEADER_LEN + 30)),
                reason: "runs past the end",
                config: same,
            },
            Case {
                what: "truncated inside a shard block",
                damage: Box::new(|b| {
                    let (_, entry) = first_entry(b);
                    b.truncate(entry + 5);
                }),
                reason: "past the end",
                config: same,
            },
            Case {
                what: "truncated by one byte",
                damage: Box::new(|b| {
                    b.pop();
                }),
                reason: "truncated in the state section",
                config: same,
            },
            Case {
                what: "a byte too many",
                damage: Box::new(|b| b.push(0)),
                reason: "unexpected bytes",
                config: same,
            },
            Case {
                what: "entry count",
                damage: Box::new(|b| {
                    let count = get_u64(b, ENTRY_COUNT_OFFSET);
                    put_u64(b, ENTRY_COUNT_OFFSET, count + 1);
                    reseal_header(b);
                }),
                reason: "the header says",
                config: same,
            },
            Case {
                what: "an entry at the replay start",
                damage: Box::new(|b| {
                    let replay_from = get_u64(b, REPLAY_FROM_OFFSET);
                    rewrite_first_block(b, |slots, _| {
                        slots.last_mut().unwrap().location = replay_from;
                        None
                    });
                }),
                reason: "outside the checkpointed log",
                config: same,
            },
            Case {
                what: "a compact block out of location order, its CRC valid",
                damage: Box::new(|b| {
                    rewrite_first_block(b, |slots, _| {
                        // Two entries at one location: the second's step is 0.
                        let mut body = Vec::new();
                        let mut two = vec![slots[0], slots[0]];
                        blocks::encode_compact(&mut two, &mut Vec::new(), &mut body);
                        Some((2, body))
                    });
                }),
                reason: "out of location order",
                config: same,
            },
            Case {
                what: "a compact block with a byte after its entries, its CRC valid",
                damage: Box::new(|b| {
                    rewrite_first_block(b, |slots, body| {
                        let mut longer = body.to_vec();
                        longer.push(0);
                        Some((slots.len(), longer))
                    });
                }),
                reason: "has bytes after its last entry",
                config: same,
            },
            Case {
                what: "a compact block announcing one entry more, its CRC valid",
                damage: Box::new(|b| {
                    rewrite_first_block(b, |slots, body| Some((slots.len() + 1, body.to_vec())));
                }),
                reason: "malformed compact entry",
                config: same,
            },
            Case {
                what: "a segment listed past the replay start",
                damage: Box::new(|b| {
                    let rows = blocks(b).0;
                    let replay_from = get_u64(b, REPLAY_FROM_OFFSET);
                    put_u32(b, HEADER_LEN, segment_of(replay_from) + 1);
                    let end = HEADER_LEN + rows * SEGMENT_ROW_LEN;
                    let crc = crc32fast::hash(&b[HEADER_LEN..end]);
                    put_u32(b, end, crc);
                }),
                reason: "lies after the replay start",
                config: same,
            },
            Case {
                what: "shard count",
                damage: Box::new(|_| {}),
                reason: "4 shards, the config has 8",
                config: |c| c.shard_count(SHARDS * 2),
            },
            Case {
                what: "hash mask",
                damage: Box::new(|_| {}),
                reason: "hash mask differs",
                config: |c| c.hash_mask_for_testing(0xFFFF),
            },
        ]
    }

    #[test]
    fn every_failed_check_ignores_the_checkpoint_with_a_reason_and_replays_the_log() {
        let storage = SimStorage::new(2);
        let clock = ManualClock::new();
        let (store, keys) = checkpointed(&storage, &clock);
        // Records after the checkpoint, so that the replay from it differs from a full one.
        for k in keys.iter().step_by(7).take(10) {
            store.check_or_insert(k, TTL, k).unwrap();
        }
        let records = store.shared.log.tail_and_stats().1;
        let records: u64 = records.values().map(|s| s.records).sum();
        drop(store);
        let valid = file(&storage, CHECKPOINT_FILE_NAME).unwrap();
        let answers = |store: &Store| {
            for (i, k) in keys.iter().enumerate() {
                let want = if i % 7 == 0 && i / 7 < 10 {
                    Some(&k[..])
                } else {
                    expected(&keys, i)
                };
                assert_eq!(store.get(k).unwrap().as_deref(), want, "key {i}");
            }
            assert_eq!(store.in_doubt().unwrap().len(), 1);
        };
        // The valid file is used.
        let store = Store::open_with(DIR, config(storage.clone(), &clock)).unwrap();
        let report = store.recovery_report().clone();
        assert_eq!(report.checkpoint_ignored, None);
        assert_eq!(report.checkpoint_entries_loaded, 300 - 40 + 1);
        assert_eq!(report.records_replayed, 10);
        answers(&store);
        drop(store);
        for case in cases() {
            let mut bytes = valid.clone();
            (case.damage)(&mut bytes);
            put_file(&storage, CHECKPOINT_FILE_NAME, &bytes);
            let config = (case.config)(config(storage.clone(), &clock));
            let reason = load(&storage, dir(), &config).expect_err(case.what);
            assert!(
                reason.contains(case.reason) && reason.contains(CHECKPOINT_FILE_NAME),
                "{}: {reason:?} lacks {:?}",
                case.what,
                case.reason
            );
            let store = Store::open_with(DIR, config).unwrap();
            let report = store.recovery_report();
            assert_eq!(
                report.checkpoint_ignored.as_ref(),
                Some(&reason),
                "{}",
                case.what
            );
            assert_eq!(report.checkpoint_entries_loaded, 0, "{}", case.what);
            assert_eq!(
                report.records_replayed, records,
                "{}: full replay",
                case.what
            );
            answers(&store);
            drop(store);
        }
    }

    #[test]
    fn entries_pointing_into_deleted_segments_are_dropped_on_load() {
        let storage = SimStorage::new(3);
        let clock = ManualClock::new();
        let (store, keys) = checkpointed(&storage, &clock);
        drop(store);
        let loaded = load(&storage, dir(), &config(storage.clone(), &clock))
            .unwrap()
            .unwrap();
        let now = crate::Clock::now_millis(&clock);
        let all = install(
            &loaded,
            &Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0),
            &mut StateTables::default(),
            |_| true,
            now,
        );
        let index = Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0);
        let without_first = install(
            &loaded,
            &index,
            &mut StateTables::default(),
            |id| id != 1,
            now,
        );
        let in_first = entries(&index);
        assert!(in_first.iter().all(|&(_, _, at)| segment_of(at) != 1));
        assert!(
            without_first > 0 && without_first < all,
            "{without_first} of {all}"
        );
        assert_eq!(in_first.len() as u64, without_first);

        // For real: compaction copies segment 1's survivors past the checkpoint and deletes it.
        let config = config(storage.clone(), &clock).compaction_live_ratio(0.95);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        for k in keys.iter().take(100) {
            store.remove(k).unwrap();
        }
        store.check_or_insert(&key(3), TTL, b"kept").unwrap();
        store.checkpoint().unwrap();
        let loaded = load(&storage, dir(), &config).unwrap().unwrap();
        for _ in 0..10 {
            if store.shared.log.segment_file(1).is_none() {
                break;
            }
            store.maintain().unwrap();
        }
        assert!(
            store.shared.log.segment_file(1).is_none(),
            "segment 1 compacted"
        );
        assert!(store.stats().segments_compacted >= 1);
        let on_disk: Vec<u32> = crate::log::segment::list_segments(&storage, dir()).unwrap();
        let surviving = install(
            &loaded,
            &Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0),
            &mut StateTables::default(),
            |id| on_disk.contains(&id),
            now,
        );
        drop(store);
        let store = Store::open_with(DIR, config).unwrap();
        let report = store.recovery_report();
        assert_eq!(report.checkpoint_ignored, None);
        assert_eq!(report.checkpoint_entries_loaded, surviving);
        for (i, k) in keys.iter().enumerate() {
            let want = match i {
                3 => Some(&b"kept"[..]),
                0..100 => None,
                _ => expected(&keys, i),
            };
            assert_eq!(store.get(k).unwrap().as_deref(), want, "key {i}");
        }
    }

    #[test]
    fn a_leftover_tmp_file_is_removed_on_open_and_never_read() {
        let storage = SimStorage::new(4);
        let clock = ManualClock::new();
        let (store, keys) = checkpointed(&storage, &clock);
        drop(store);
        put_file(&storage, CHECKPOINT_TMP_FILE_NAME, b"half a checkpoint");
        let store = Store::open_with(DIR, config(storage.clone(), &clock)).unwrap();
        assert_eq!(store.recovery_report().checkpoint_ignored, None);
        assert_eq!(file(&storage, CHECKPOINT_TMP_FILE_NAME), None);
        assert_answers(&store, &keys);
    }

    /// A storage that records mutating operations and, once its budget of them is spent, loses
    /// power: the simulated disk crashes and every later operation fails.
    #[derive(Debug, Clone)]
    struct PowerCut {
        sim: SimStorage,
        budget: Arc<AtomicI64>,
        trace: Arc<parking_lot::Mutex<Vec<String>>>,
    }

    impl PowerCut {
        fn new(sim: &SimStorage) -> Self {
            PowerCut {
                sim: sim.clone(),
                budget: Arc::new(AtomicI64::new(i64::MAX)),
                trace: Arc::default(),
            }
        }

        fn step(&self, op: &str, path: &Path) -> io::Result<()> {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            self.trace.lock().push(format!("{op} {name}"));
            match self.budget.fetch_sub(1, Ordering::SeqCst) {
                left if left > 0 => Ok(()),
                0 => {
                    self.sim.crash();
                    Err(io::Error::other("power cut"))
                }
                _ => Err(io::Error::other("power cut")),
            }
        }

        fn alive(&self) -> io::Result<()> {
            if self.budget.load(Ordering::SeqCst) < 0 {
                return Err(io::Error::other("power cut"));
            }
            Ok(())
        }

        fn wrap(&self, path: &Path, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
            Box::new(PowerCutFile {
                storage: self.clone(),
                path: path.to_path_buf(),
                file,
            })
        }
    }

    impl Storage for PowerCut {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.step("mkdir", dir)?;
            self.sim.create_dir_all(dir)
        }
        fn dir_exists(&self, dir: &Path) -> io::Result<bool> {
            self.alive()?;
            self.sim.dir_exists(dir)
        }
        fn lock_dir(&self, dir: &Path) -> io::Result<Option<crate::io::DirLock>> {
            self.sim.lock_dir(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.alive()?;
            self.sim.list(dir)
        }
        fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            self.step("create", path)?;
            Ok(self.wrap(path, self.sim.create_new(path)?))
        }
        fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            self.step("create", path)?;
            Ok(self.wrap(path, self.sim.create_truncate(path)?))
        }
        fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            self.alive()?;
            Ok(self.wrap(path, self.sim.open(path)?))
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.step("remove", path)?;
            self.sim.remove(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let to_name = to.file_name().unwrap_or_default().to_string_lossy();
            self.step(&format!("rename-to-{to_name}"), from)?;
            self.sim.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.step("sync-dir", dir)?;
            self.sim.sync_dir(dir)
        }
    }

    #[derive(Debug)]
    struct PowerCutFile {
        storage: PowerCut,
        path: PathBuf,
        file: Box<dyn StorageFile>,
    }

    impl StorageFile for PowerCutFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.storage.alive()?;
            self.file.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.storage.step("write", &self.path)?;
            self.file.write_all_at(buf, offset)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.storage.step("sync", &self.path)?;
            self.file.sync_data()
        }
        fn len(&self) -> io::Result<u64> {
            self.storage.alive()?;
            self.file.len()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.storage.step("set-len", &self.path)?;
            self.file.set_len(len)
        }
    }

    #[test]
    fn the_tmp_file_replaces_the_checkpoint_only_after_its_fsync() {
        let sim = SimStorage::new(5);
        let clock = ManualClock::new();
        let storage = PowerCut::new(&sim);
        let store = Store::open_with(DIR, config(storage.clone(), &clock)).unwrap();
        store.check_or_insert(b"k", TTL, b"v").unwrap();
        storage.trace.lock().clear();
        store.checkpoint().unwrap();
        let trace = storage.trace.lock().clone();
        let tmp = CHECKPOINT_TMP_FILE_NAME;
        let rename = format!("rename-to-{CHECKPOINT_FILE_NAME} {tmp}");
        let expected_tail = [
            format!("sync {tmp}"),
            rename.clone(),
            "sync-dir checkpoint".to_string(),
        ];
        assert_eq!(trace.first(), Some(&format!("create {tmp}")), "{trace:?}");
        assert!(trace.ends_with(&expected_tail), "{trace:?}");
        assert!(
            trace[1..trace.len() - 3]
                .iter()
                .all(|op| op == &format!("write {tmp}")),
            "only writes to the tmp file before its fsync: {trace:?}"
        );
    }

    #[test]
    fn a_power_cut_at_any_step_of_a_checkpoint_leaves_the_old_or_the_new_one() {
        let mut outcomes = Vec::new();
        for budget in 0.. {
            let sim = SimStorage::new(6 + budget as u64);
            let clock = ManualClock::new();
            let storage = PowerCut::new(&sim);
            let store = Store::open_with(DIR, config(storage.clone(), &clock)).unwrap();
            let keys: Vec<Vec<u8>> = (0..200).map(key).collect();
            for k in &keys[..100] {
                store.check_or_insert(k, TTL, k).unwrap();
            }
            store.checkpoint().unwrap();
            for k in &keys[100..] {
                store.check_or_insert(k, TTL, k).unwrap();
            }
            storage.budget.store(budget, Ordering::SeqCst);
            let written = store.checkpoint();
            drop(store);
            let store = Store::open_with(DIR, config(sim.clone(), &clock)).unwrap();
            let report = store.recovery_report();
            assert_eq!(
                report.checkpoint_ignored, None,
                "power cut after {budget} steps"
            );
            let loaded = report.checkpoint_entries_loaded;
            if written.is_ok() {
                assert_eq!(loaded, 200);
            } else {
                assert!(loaded == 100 || loaded == 200, "{budget}: {loaded} entries");
            }
            for k in &keys {
                assert_eq!(store.get(k).unwrap().as_deref(), Some(&k[..]), "{budget}");
            }
            outcomes.push(loaded);
            if written.is_ok() {
                break;
            }
        }
        // The new checkpoint counts only once its rename is durable: the last step.
        let (last, before) = outcomes.split_last().unwrap();
        assert_eq!(*last, 200);
        assert!(
            before.len() >= 4 && before.iter().all(|&n| n == 100),
            "{outcomes:?}"
        );
    }
}
