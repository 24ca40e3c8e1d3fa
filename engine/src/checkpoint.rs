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
//!
//! Delta checkpoints (`checkpoint-delta-NNNNNN.idem`, written every
//! `Config::checkpoint_delta_every_bytes` between full ones) extend a full checkpoint in a chain:
//! each holds the entries at locations from its predecessor's replay start to its own, and the
//! locations below the former that left the index since the predecessor's snapshot. Each shard
//! notes what it changes since its last snapshot (`ShardTable::changes`: the entries it puts and
//! the locations that leave it), so a delta is written from those notes without a scan of the
//! tables; a full checkpoint scans them and starts the notes. Invariants of the chain:
//! - A delta names its predecessor (header CRC, replay start, number); the first delta that fails
//!   any check ends the chain, and replay starts at the last file that passed.
//! - The chain in memory (`Index::checkpoint_chain`) is `Some` only while every shard notes its
//!   changes since its last file's snapshot of it (set by a write that completed, or by a load
//!   of a store whose config writes deltas); anything else makes the next checkpoint a full one.
//! - A location names one record for good (the log never reuses one), so a removed location
//!   drops exactly the entry written there, whatever its tag.

mod blocks;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

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
/// Delta checkpoints are named this, then their number (from 1, six digits) and `.idem`.
pub(crate) const DELTA_PREFIX: &str = "checkpoint-delta-";
pub(crate) const DELTA_TMP_FILE_NAME: &str = "checkpoint-delta.idem.tmp";
const DELTA_MAGIC: [u8; 8] = *b"IDEMCKDL";
/// Delta checkpoints have their own versions, from 1.
const DELTA_VERSION: u32 = 1;
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
/// A delta's header: a full checkpoint's up to its CRC (another magic), then the predecessor's
/// replay start (`from`) and header CRC, the delta's number, and the header CRC.
const DELTA_FROM_OFFSET: usize = HEADER_CRC_OFFSET;
const DELTA_PREV_CRC_OFFSET: usize = DELTA_FROM_OFFSET + 8;
const DELTA_SEQ_OFFSET: usize = DELTA_PREV_CRC_OFFSET + 4;
const DELTA_HEADER_CRC_OFFSET: usize = DELTA_SEQ_OFFSET + 4;
const DELTA_HEADER_LEN: usize = DELTA_HEADER_CRC_OFFSET + 4;
const _: () = assert!(DELTA_HEADER_LEN == 96);

/// id u32, min_deadline_secs u32, records u64 (low 32 bits; the high 32 bits count tombstones),
/// max_deadline_secs u32, tombstone_bytes u32 (both 0 in files written before they were counted:
/// such a segment is compacted a little eagerly once).
const SEGMENT_ROW_LEN: usize = 24;
/// Versions 1 and 2: entry count u32, CRC of the entries u32.
const FIXED_BLOCK_HEADER_LEN: usize = 8;
/// Version 3: entry count u32, body length u32, CRC of the body u32.
const SHARD_BLOCK_HEADER_LEN: usize = 12;
/// Deltas: entry count u32, body length u32, removed count u32, removed length u32, CRC u32 (of
/// the four counts, the body and the removed locations).
const DELTA_BLOCK_HEADER_LEN: usize = 20;

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
    /// A delta's removed locations (empty in a full checkpoint).
    removed: std::ops::Range<usize>,
    removed_count: usize,
}

/// One file of a checkpoint chain (the full checkpoint, or a delta): its bytes and where each
/// shard's block lies in them.
#[derive(Debug)]
struct Part {
    bytes: Vec<u8>,
    layout: EntryLayout,
    shard_blocks: Vec<Block>,
    /// Entries lie at or after this location (the predecessor's replay start; 0 for the base).
    from: Location,
    /// Entries lie before this location.
    to: Location,
}

/// A state entry of the state section: key, value, location.
pub(crate) type StateRow = (Box<[u8]>, Box<[u8]>, Location);
/// A position of the state section: source, position, location.
pub(crate) type PositionRow = (Box<[u8]>, u64, Location);

/// A checkpoint that passed every check: the full checkpoint and the deltas that extend it.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub(crate) seeds: [u64; 4],
    /// Replay starts at this log location (the last delta's, or the full checkpoint's).
    pub(crate) replay_from: Location,
    /// Stats of the segments up to and including `replay_from`'s, counting the records before it.
    pub(crate) segments: BTreeMap<u32, SegmentStats>,
    /// The full checkpoint, then each delta in order.
    parts: Vec<Part>,
    /// Whether install splits the shards between two threads.
    parallel: bool,
    /// Keys that held an open claim when the checkpoint was taken (to find claims in doubt).
    pub(crate) claim_keys: Vec<Box<[u8]>>,
    /// State entries (key, value, location) and positions (source, position, location).
    pub(crate) state_entries: Vec<StateRow>,
    pub(crate) positions: Vec<PositionRow>,
    /// The header CRC of the chain's last file (a delta written next names it).
    crc: u32,
    /// Deltas loaded after the full checkpoint.
    pub(crate) deltas: u32,
    /// Why the delta after the last one loaded was not used (`None`: no further delta file).
    pub(crate) delta_ignored: Option<String>,
}

/// The checkpoint files on disk that a delta may extend: the chain's last file. Kept in the
/// index (`Index::checkpoint_chain`) from the checkpoint written or loaded until the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain {
    /// The header CRC of the chain's last file.
    crc: u32,
    /// Its replay start: the next delta holds the entries from here on.
    replay_from: Location,
    /// Its number (0: the full checkpoint).
    seq: u32,
    /// `Log::bytes_appended` when it was written (0 for a chain loaded on open).
    pub(crate) at_bytes: u64,
}

/// What kind of checkpoint file is written.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Every entry before the replay start (`checkpoint.idem`).
    Full,
    /// The entries from the chain's last replay start on, and the locations dropped since
    /// (`checkpoint-delta-NNNNNN.idem`).
    Delta(Chain),
}

/// The file name of the delta checkpoint numbered `seq` (from 1).
fn delta_file_name(seq: u32) -> String {
    format!("{DELTA_PREFIX}{seq:06}.idem")
}

/// Writes a full checkpoint of the store's index, then deletes the deltas of the previous one.
pub(crate) fn write(shared: &Shared) -> Result<()> {
    write_kind(shared, Kind::Full).map(|_| ())
}

/// Writes a delta checkpoint extending the chain on disk; `Ok(false)` if there is none to extend
/// (or a shard gave up noting its changes): the caller writes a full one instead.
pub(crate) fn write_delta(shared: &Shared) -> Result<bool> {
    let Some(chain) = *shared.index.checkpoint_chain.lock() else {
        return Ok(false);
    };
    write_kind(shared, Kind::Delta(chain))
}

/// Whether this store writes delta checkpoints (and so its shards track what they drop of the
/// entries the latest checkpoint holds).
pub(crate) fn deltas_enabled(config: &crate::config::Config) -> bool {
    config.checkpoint_every_bytes > 0 && config.checkpoint_delta_every_bytes > 0
}

/// Whether a delta checkpoint is due: `every` bytes appended since the chain's last file, or
/// since the last full checkpoint (`full_at_bytes`) if there is no chain.
pub(crate) fn delta_due(shared: &Shared, appended: u64, full_at_bytes: u64, every: u64) -> bool {
    every > 0 && appended.saturating_sub(last_checkpoint_bytes(shared, full_at_bytes)) >= every
}

/// `Log::bytes_appended` when the latest checkpoint file (full or delta) was written.
fn last_checkpoint_bytes(shared: &Shared, full_at_bytes: u64) -> u64 {
    shared
        .index
        .checkpoint_chain
        .lock()
        .map_or(full_at_bytes, |chain| chain.at_bytes.max(full_at_bytes))
}

/// Bytes the log may still append before the next checkpoint (full or delta) is due, with
/// `appended` appended so far and the last full one at `full_at_bytes` (0: one is due now);
/// `None` if checkpoints are off.
pub(crate) fn bytes_until_due(shared: &Shared, appended: u64, full_at_bytes: u64) -> Option<u64> {
    let config = &shared.config;
    if config.checkpoint_every_bytes == 0 {
        return None;
    }
    let mut due = full_at_bytes.saturating_add(config.checkpoint_every_bytes);
    if deltas_enabled(config) {
        let delta = last_checkpoint_bytes(shared, full_at_bytes)
            .saturating_add(config.checkpoint_delta_every_bytes);
        due = due.min(delta);
    }
    Some(due.saturating_sub(appended))
}

fn write_kind(shared: &Shared, kind: Kind) -> Result<bool> {
    // Everything before P must be durable before entries pointing there are recorded as facts.
    let appended = shared.log.bytes_appended();
    let (replay_from, segments) = shared.log.tail_and_stats();
    let from = match kind {
        Kind::Full => 0,
        Kind::Delta(chain) => chain.replay_from,
    };
    if replay_from <= from {
        // Nothing was appended since the chain's last file: it is up to date.
        return Ok(true);
    }
    // Until this file is in place the chain in memory no longer describes the shards' tracking:
    // a failure leaves none, and the next checkpoint is a full one.
    *shared.index.checkpoint_chain.lock() = None;
    shared.log.wait_durable(replay_from)?;
    let now = shared.clock.now_millis();

    let dir = &shared.dir;
    let (tmp_name, final_name, header_len, crc_offset) = match kind {
        Kind::Full => (
            CHECKPOINT_TMP_FILE_NAME.to_string(),
            CHECKPOINT_FILE_NAME.to_string(),
            HEADER_LEN,
            HEADER_CRC_OFFSET,
        ),
        Kind::Delta(chain) => (
            DELTA_TMP_FILE_NAME.to_string(),
            delta_file_name(chain.seq + 1),
            DELTA_HEADER_LEN,
            DELTA_HEADER_CRC_OFFSET,
        ),
    };
    let tmp_path = dir.join(&tmp_name);
    let final_path = dir.join(&final_name);
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
    let mut header = vec![0u8; header_len];
    let (magic, version) = match kind {
        Kind::Full => (CHECKPOINT_MAGIC, CHECKPOINT_VERSION),
        Kind::Delta(_) => (DELTA_MAGIC, DELTA_VERSION),
    };
    header[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&magic);
    put_u32(&mut header, VERSION_OFFSET, version);
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
    if let Kind::Delta(chain) = kind {
        put_u64(&mut header, DELTA_FROM_OFFSET, chain.replay_from);
        put_u32(&mut header, DELTA_PREV_CRC_OFFSET, chain.crc);
        put_u32(&mut header, DELTA_SEQ_OFFSET, chain.seq + 1);
    }
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
    let delta = matches!(kind, Kind::Delta(_));
    let track_changes = deltas_enabled(&shared.config);
    let encoder = || {
        let (mut kept, mut scratch) = (Vec::new(), Vec::new());
        move |shard: usize| {
            encode_block(
                &shards[shard],
                from..replay_from,
                delta,
                track_changes,
                now,
                &mut kept,
                &mut scratch,
            )
        }
    };
    let mut entry_count: u64 = 0;
    let complete = std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Option<(u64, Vec<u8>)>>(4);
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
            let block = if parallel && shard % 2 == 1 {
                receiver
                    .recv()
                    .expect("the encoding thread sends every odd shard")
            } else {
                encode(shard)
            };
            // A shard that gave up noting its changes: no delta can be written.
            let Some((entries, block)) = block else {
                return Ok(false);
            };
            entry_count += entries;
            out.write_all(&block).map_err(io("writing"))?;
        }
        Ok::<bool, Error>(true)
    })?;
    if !complete {
        drop(file);
        let _ = storage.remove(&tmp_path);
        return Ok(false);
    }
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
    let crc = crc32fast::hash(&header[..crc_offset]);
    put_u32(&mut header, crc_offset, crc);
    file.write_all_at(&header, 0).map_err(io("writing"))?;
    file.sync_data().map_err(io("fsync of"))?;
    drop(file);
    storage
        .rename(&tmp_path, &final_path)
        .map_err(io("renaming"))?;
    sync_dir(storage, dir)?;
    let seq = match kind {
        Kind::Full => {
            // The deltas of the previous full checkpoint no longer extend anything: a crash
            // before they are gone leaves them, and the load ignores them (they name another
            // predecessor).
            remove_deltas(storage, dir)?;
            0
        }
        Kind::Delta(chain) => chain.seq + 1,
    };
    *shared.index.checkpoint_chain.lock() = Some(Chain {
        crc,
        replay_from,
        seq,
        at_bytes: appended,
    });
    Ok(true)
}

/// Deletes every delta checkpoint file in `dir`.
fn remove_deltas(storage: &dyn Storage, dir: &Path) -> Result<()> {
    let names = storage
        .list(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut removed = false;
    for name in names.iter().filter(|name| name.starts_with(DELTA_PREFIX)) {
        let path = dir.join(name);
        storage
            .remove(&path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        removed = true;
    }
    if removed {
        sync_dir(storage, dir)?;
    }
    Ok(())
}

/// One shard's block: its entries with location in `range` not dead at `now`, counted, in the
/// compact encoding, behind the block header; for a delta, also the locations the shard dropped
/// since the previous checkpoint's snapshot of it. A full block scans the table; a delta's comes
/// from the shard's notes of its changes. Either way the notes restart from this snapshot (if
/// `track_changes`). `None`: the shard gave up its notes (a delta cannot be written).
fn encode_block(
    shard: &parking_lot::Mutex<crate::index::ShardTable>,
    range: std::ops::Range<Location>,
    delta: bool,
    track_changes: bool,
    now: u64,
    kept: &mut Vec<Slot>,
    scratch: &mut Vec<Slot>,
) -> Option<(u64, Vec<u8>)> {
    kept.clear();
    let mut removed = {
        let mut table = shard.lock();
        if delta {
            // From the shard's own lists of what changed since its last snapshot.
            table.changes.take_delta(range.end, now, kept)?
        } else {
            scratch.clear();
            table.collect_live(range.end, now, kept, scratch);
            // Tracked only for a delta to come: without deltas nothing would ever read it.
            let below = if track_changes { range.end } else { 0 };
            table.changes.start(below, scratch);
            Vec::new()
        }
    };
    let header_len = if delta {
        DELTA_BLOCK_HEADER_LEN
    } else {
        SHARD_BLOCK_HEADER_LEN
    };
    let mut block = vec![0u8; header_len];
    blocks::encode_compact(kept, scratch, &mut block);
    let body_len = (block.len() - header_len) as u32;
    put_u32(&mut block, 0, kept.len() as u32);
    put_u32(&mut block, 4, body_len);
    if delta {
        removed.sort_unstable();
        removed.dedup();
        let start = block.len();
        blocks::encode_locations(&removed, &mut block);
        let removed_len = (block.len() - start) as u32;
        put_u32(&mut block, 8, removed.len() as u32);
        put_u32(&mut block, 12, removed_len);
        let crc = compact_block_crc(&block[..16], &block[DELTA_BLOCK_HEADER_LEN..]);
        put_u32(&mut block, 16, crc);
    } else {
        let crc = compact_block_crc(&block[..8], &block[SHARD_BLOCK_HEADER_LEN..]);
        put_u32(&mut block, 8, crc);
    }
    Some((kept.len() as u64, block))
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
    /// Below glibc's initial `mmap` threshold (128 KiB), and never grown past it: freeing an
    /// `mmap`ed buffer raises the threshold to its size, after which the index's shard tables
    /// (up to about 1 MiB each at 10 M keys) come from the main heap, where each growth leaves
    /// the old table's hole. The 1 MiB buffer this replaced (grown to 2 MiB by a block that
    /// crossed it) cost 1.0-1.6 B of RSS per live key at 10 M keys with a delta checkpoint
    /// every 16 MiB of log (`rss_breakdown`: 25.2-25.9 B/key before, 24.1-24.2 after).
    const BUFFER_BYTES: usize = 64 << 10;

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.buffer.len() + bytes.len() > Self::BUFFER_BYTES {
            self.flush()?;
            if bytes.len() > Self::BUFFER_BYTES {
                // Written where it is: copying it would only split it into more writes.
                self.file.write_all_at(bytes, self.offset)?;
                self.offset += bytes.len() as u64;
                return Ok(());
            }
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(&self.buffer, self.offset)?;
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

/// Reads the checkpoint in `dir`, with the deltas that extend it: `Ok(None)` if there is none,
/// `Err(reason)` if it must be ignored, with the reason for the recovery report. A delta that
/// fails a check ends the chain there (`Checkpoint::delta_ignored` says why): replay starts at
/// the replay start of the last file that passed.
pub(crate) fn load(
    storage: &dyn Storage,
    dir: &Path,
    config: &Config,
) -> std::result::Result<Option<Checkpoint>, String> {
    let _ = storage.remove(&dir.join(CHECKPOINT_TMP_FILE_NAME));
    let _ = storage.remove(&dir.join(DELTA_TMP_FILE_NAME));
    let path = dir.join(CHECKPOINT_FILE_NAME);
    let bytes = match storage.open(&path).and_then(read_whole) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    // The full checkpoint's entries are checked as they are installed (`install`), not here
    // too: decoding 10 M entries twice cost about 5 % of an open.
    let mut checkpoint = decode(bytes, config, None, Entries::AtInstall)
        .map_err(|reason| format!("{} ignored: {reason}", path.display()))?;
    if let Some(ignored) = extend_with_deltas(storage, dir, config, &mut checkpoint) {
        checkpoint.delta_ignored = Some(format!("{} ignored: {}", ignored.0.display(), ignored.1));
    }
    let bytes: usize = checkpoint.parts.iter().map(|p| p.bytes.len()).sum();
    checkpoint.parallel = bytes >= config.parallel_replay_min_bytes;
    Ok(Some(checkpoint))
}

/// A checkpoint file's bytes, whole (a short read keeps what was read: the checks catch it).
pub(crate) fn read_whole(file: Box<dyn StorageFile>) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; file.len()? as usize];
    let got = file.read_at(&mut bytes, 0)?;
    bytes.truncate(got);
    Ok(bytes)
}

/// Why a delta was not loaded when it names another chain than the one on disk: a crash after
/// a full checkpoint was renamed into place but before the deltas of the one it replaced were
/// deleted leaves them (the next full checkpoint deletes them; deltas of the new chain replace
/// them by name).
const NOT_IN_CHAIN: &str = "it does not extend the checkpoint before it";

/// Extends a full checkpoint with the deltas 1, 2, ... on disk, until one is missing; returns
/// the first that fails a check (its path and why), which ends the chain. Deltas extend only a
/// full checkpoint of this version (one this build wrote).
fn extend_with_deltas(
    storage: &dyn Storage,
    dir: &Path,
    config: &Config,
    checkpoint: &mut Checkpoint,
) -> Option<(PathBuf, String)> {
    checkpoint.chain()?;
    for seq in 1.. {
        let path = dir.join(delta_file_name(seq));
        let bytes = match storage.open(&path).and_then(read_whole) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some((path, format!("reading it: {e}"))),
        };
        let prev = Prev {
            crc: checkpoint.crc,
            replay_from: checkpoint.replay_from,
            seeds: checkpoint.seeds,
            seq,
        };
        match decode(bytes, config, Some(prev), Entries::Checked) {
            Ok(delta) => checkpoint.extend(delta),
            Err(reason) => return Some((path, reason)),
        }
    }
    unreachable!("the loop returns")
}

impl Checkpoint {
    /// Appends a checked delta: its entries and removed locations, and its replay start,
    /// segment table, claims and state, which supersede the chain's.
    fn extend(&mut self, delta: Checkpoint) {
        self.replay_from = delta.replay_from;
        self.segments = delta.segments;
        self.claim_keys = delta.claim_keys;
        self.state_entries = delta.state_entries;
        self.positions = delta.positions;
        self.crc = delta.crc;
        self.deltas += 1;
        self.parts.extend(delta.parts);
    }

    /// The chain this checkpoint continues, for the next delta (`None` if its full checkpoint
    /// is of an older version, which deltas do not extend).
    pub(crate) fn chain(&self) -> Option<Chain> {
        let base = &self.parts[0];
        (base.layout == EntryLayout::Compact
            && get_u32(&base.bytes, VERSION_OFFSET) == CHECKPOINT_VERSION)
            .then_some(Chain {
                crc: self.crc,
                replay_from: self.replay_from,
                seq: self.deltas,
                at_bytes: 0,
            })
    }
}

/// What a delta must continue: the chain's last file so far.
#[derive(Debug, Clone, Copy)]
struct Prev {
    crc: u32,
    replay_from: Location,
    seeds: [u64; 4],
    seq: u32,
}

/// When the entries of a checkpoint's shard blocks are checked (their CRCs always are on load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entries {
    /// On load, each entry and removed location decoded once (deltas, whose failure ends the
    /// chain at the file before; and `verify`).
    Checked,
    /// By [`install`], which decodes them anyway (a full checkpoint on open): a failure there
    /// ignores the whole checkpoint, as one on load would.
    AtInstall,
}

/// Checks a checkpoint file's bytes whole (a full one, or with `prev` a delta extending it); the
/// shard blocks are checked by two threads when they take at least
/// `config.parallel_replay_min_bytes`.
fn decode(
    file: Vec<u8>,
    config: &Config,
    prev: Option<Prev>,
    entries: Entries,
) -> std::result::Result<Checkpoint, String> {
    debug_assert!(prev.is_none() || entries == Entries::Checked);
    let parallel_min_bytes = config.parallel_replay_min_bytes;
    let bytes = &file[..];
    let (magic, header_len, crc_offset) = match prev {
        None => (CHECKPOINT_MAGIC, HEADER_LEN, HEADER_CRC_OFFSET),
        Some(_) => (DELTA_MAGIC, DELTA_HEADER_LEN, DELTA_HEADER_CRC_OFFSET),
    };
    if bytes.len() < header_len {
        return Err(format!("{} bytes, shorter than the header", bytes.len()));
    }
    if bytes[MAGIC_OFFSET..VERSION_OFFSET] != magic {
        return Err("bad magic".into());
    }
    let crc = get_u32(bytes, crc_offset);
    if crc != crc32fast::hash(&bytes[..crc_offset]) {
        return Err("header checksum mismatch".into());
    }
    let version = get_u32(bytes, VERSION_OFFSET);
    match prev {
        None if !(CHECKPOINT_VERSION_1..=CHECKPOINT_VERSION).contains(&version) => {
            return Err(format!(
                "version {version}, this build reads {CHECKPOINT_VERSION_1} to {CHECKPOINT_VERSION}"
            ));
        }
        Some(_) if version != DELTA_VERSION => {
            return Err(format!(
                "delta version {version}, this build reads {DELTA_VERSION}"
            ));
        }
        _ => {}
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
    let from = match prev {
        None => 0,
        Some(prev) => {
            if get_u32(bytes, DELTA_PREV_CRC_OFFSET) != prev.crc
                || get_u64(bytes, DELTA_FROM_OFFSET) != prev.replay_from
                || get_u32(bytes, DELTA_SEQ_OFFSET) != prev.seq
            {
                return Err(NOT_IN_CHAIN.into());
            }
            if seeds != prev.seeds {
                return Err("its hash seeds differ from the checkpoint's".into());
            }
            if replay_from <= prev.replay_from {
                return Err("its replay start is not after its predecessor's".into());
            }
            prev.replay_from
        }
    };

    let mut at = header_len;
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

    let layout = if version >= CHECKPOINT_VERSION_3 || prev.is_some() {
        EntryLayout::Compact
    } else {
        EntryLayout::Fixed
    };
    let block_header_len = match (layout, prev) {
        (_, Some(_)) => DELTA_BLOCK_HEADER_LEN,
        (EntryLayout::Compact, None) => SHARD_BLOCK_HEADER_LEN,
        (EntryLayout::Fixed, None) => FIXED_BLOCK_HEADER_LEN,
    };
    let mut shard_blocks = Vec::with_capacity(shard_count);
    let mut total: u64 = 0;
    for shard in 0..shard_count {
        if at + block_header_len > bytes.len() {
            return Err(format!("truncated at shard {shard} (offset {at})"));
        }
        let entries = get_u32(bytes, at) as usize;
        let (len, crc, removed_count, removed_len) = match (layout, prev) {
            (_, Some(_)) => (
                Some(get_u32(bytes, at + 4) as usize),
                get_u32(bytes, at + 16),
                get_u32(bytes, at + 8) as usize,
                get_u32(bytes, at + 12) as usize,
            ),
            (EntryLayout::Compact, None) => (
                Some(get_u32(bytes, at + 4) as usize),
                get_u32(bytes, at + 8),
                0,
                0,
            ),
            (EntryLayout::Fixed, None) => (
                entries.checked_mul(FIXED_ENTRY_LEN),
                get_u32(bytes, at + 4),
                0,
                0,
            ),
        };
        at += block_header_len;
        // Install sizes a table for the count before decoding the entries: a count the body
        // cannot hold would ask for memory the file does not justify.
        if layout == EntryLayout::Compact
            && len.is_some_and(|len| entries.saturating_mul(blocks::MIN_COMPACT_ENTRY_LEN) > len)
        {
            return Err(format!(
                "shard {shard} announces {entries} entries, more than its body holds (offset {at})"
            ));
        }
        let len = len
            .and_then(|len| len.checked_add(removed_len))
            .filter(|len| at + len <= bytes.len())
            .ok_or_else(|| format!("shard {shard} runs past the end (offset {at})"))?;
        total += entries as u64;
        shard_blocks.push(Block {
            body: at..at + len - removed_len,
            entries,
            crc,
            crc_covers_counts: layout == EntryLayout::Compact,
            removed: at + len - removed_len..at + len,
            removed_count,
        });
        at += len;
    }
    let parallel = at - header_len >= parallel_min_bytes;
    check_blocks(
        bytes,
        layout,
        &shard_blocks,
        from..replay_from,
        parallel,
        entries,
    )?;
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
    let (state_entries, positions) = if version == CHECKPOINT_VERSION_1 && prev.is_none() {
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
        parts: vec![Part {
            bytes: file,
            layout,
            shard_blocks,
            from,
            to: replay_from,
        }],
        parallel,
        claim_keys,
        state_entries,
        positions,
        crc,
        deltas: 0,
        delta_ignored: None,
    })
}

/// What `verify` learns from a checkpoint that passed every check of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointSummary {
    pub(crate) replay_from: Location,
    pub(crate) entries: u64,
    pub(crate) claims: u64,
}

/// What `verify` learns of the delta files after a full checkpoint that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeltaSummary {
    /// Deltas that passed every check, in chain order.
    pub(crate) loaded: u32,
    /// The replay start of the chain's last file (the full checkpoint's if no delta loaded).
    pub(crate) replay_from: Location,
    /// The first delta that failed, and why: an open ignores it and every delta after it.
    pub(crate) failed: Option<DeltaFailure>,
}

/// A delta file an open would ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeltaFailure {
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
    /// It is sound but names another chain: one a crash left behind (not damage).
    pub(crate) stale: bool,
}

/// Checks a checkpoint file's bytes on their own, against the shard count and hash mask the
/// file names itself (`verify` has no config to compare with), then the delta files in `dir`
/// that extend it, as an open would load them: `Err` says what is wrong with the full one.
pub(crate) fn check_bytes(
    storage: &dyn Storage,
    dir: &Path,
    bytes: &[u8],
) -> std::result::Result<(CheckpointSummary, DeltaSummary), String> {
    let mut config = Config::default();
    if bytes.len() >= HEADER_LEN {
        config.shard_count = get_u32(bytes, SHARD_COUNT_OFFSET) as usize;
        config.hash_mask_for_testing = get_u64(bytes, HASH_MASK_OFFSET);
    }
    let mut checkpoint = decode(bytes.to_vec(), &config, None, Entries::Checked)?;
    let summary = CheckpointSummary {
        replay_from: checkpoint.replay_from,
        entries: get_u64(bytes, ENTRY_COUNT_OFFSET),
        claims: checkpoint.claim_keys.len() as u64,
    };
    let failed =
        extend_with_deltas(storage, dir, &config, &mut checkpoint).map(|(path, reason)| {
            DeltaFailure {
                stale: reason == NOT_IN_CHAIN,
                path,
                reason,
            }
        });
    let deltas = DeltaSummary {
        loaded: checkpoint.deltas,
        replay_from: checkpoint.replay_from,
        failed,
    };
    Ok((summary, deltas))
}

/// Puts a loaded checkpoint's entries into the index (the full checkpoint's and each delta's,
/// less the locations a later delta lists as removed), dropping those that are dead at
/// `now_millis` or whose segment no longer exists; returns how many it put.
///
/// The full checkpoint's entries are checked here, as they are decoded (see
/// [`Entries::AtInstall`]). All or nothing: on `Err`, which names the first bad shard, the index
/// and the state tables are emptied of what was put, and the caller ignores the checkpoint.
pub(crate) fn install(
    checkpoint: &Checkpoint,
    index: &Index,
    state: &mut StateTables,
    segment_exists: impl Fn(u32) -> bool + Sync,
    replay_entries: u64,
    now_millis: u64,
) -> std::result::Result<u64, String> {
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
    let replay_per_shard = usize::try_from(replay_entries / shards.len() as u64).unwrap_or(0);
    let installed_in = |first: usize, step: usize| -> std::result::Result<u64, (usize, String)> {
        let mut installed = 0u64;
        let mut removed: Vec<Location> = Vec::new();
        for (shard_index, shard) in shards.iter().enumerate().skip(first).step_by(step) {
            let bad = |why: &str| (shard_index, format!("shard {shard_index} {why}"));
            // The locations removed by the deltas, sorted: entries come in location order
            // (each file's in order, the files in order of their disjoint ranges), so one
            // cursor walks them.
            removed.clear();
            for part in &checkpoint.parts[1..] {
                let block = &part.shard_blocks[shard_index];
                let body = &part.bytes[block.removed.clone()];
                blocks::decode_locations(body, block.removed_count, part.from, |location| {
                    removed.push(location)
                })
                .map_err(bad)?;
            }
            removed.sort_unstable();
            let mut next_removed = 0;
            let mut table = shard.lock();
            let entries: usize = checkpoint
                .parts
                .iter()
                .map(|part| part.shard_blocks[shard_index].entries)
                .sum();
            // Sized once for all its entries and its share of those the replay after the
            // checkpoint is estimated to add: no table is rebuilt while loading, nor laid out
            // again by the replay.
            table.reserve(
                entries.saturating_sub(removed.len()) + replay_per_shard,
                now_millis,
            );
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
            for part in &checkpoint.parts {
                let block = &part.shard_blocks[shard_index];
                let body = &part.bytes[block.body.clone()];
                let range = part.from.max(1)..part.to;
                blocks::decode_entries_in(part.layout, body, block.entries, range, |slot| {
                    if !removed.is_empty() {
                        while next_removed < removed.len() && removed[next_removed] < slot.location
                        {
                            next_removed += 1;
                        }
                        if removed.get(next_removed) == Some(&slot.location) {
                            return;
                        }
                    }
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
                .map_err(bad)?;
            }
            for slot in ahead.drain(..) {
                table.install_unscheduled(slot, now_millis);
            }
        }
        Ok(installed)
    };
    let mut failures = Vec::new();
    for part in on_shards(checkpoint.parallel, installed_in) {
        match part {
            Ok(count) => installed += count,
            Err(failure) => failures.push(failure),
        }
    }
    if let Err(reason) = first_in_file_order(failures) {
        index.clear(now_millis);
        *state = StateTables::default();
        return Err(reason);
    }
    Ok(installed)
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

/// Checks every shard block (CRC, then, if `entries` says so, each entry and removed location);
/// the first failing shard is named.
fn check_blocks(
    bytes: &[u8],
    layout: EntryLayout,
    shard_blocks: &[Block],
    range: std::ops::Range<Location>,
    parallel: bool,
    entries: Entries,
) -> std::result::Result<(), String> {
    let first_failure = |first: usize, step: usize| {
        for (shard, block) in shard_blocks.iter().enumerate().skip(first).step_by(step) {
            let body = &bytes[block.body.clone()];
            let removed = &bytes[block.removed.clone()];
            // A delta's blocks (their entries start after 0): the CRC covers the four counts,
            // the entries and the removed locations.
            let crc = if range.start > 0 {
                let start = block.body.start - DELTA_BLOCK_HEADER_LEN;
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&bytes[start..start + 16]);
                hasher.update(body);
                hasher.update(removed);
                hasher.finalize()
            } else if block.crc_covers_counts {
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
            if entries == Entries::AtInstall {
                continue;
            }
            let entries = blocks::decode_entries_in(
                layout,
                body,
                block.entries,
                range.start.max(1)..range.end,
                |_| {},
            );
            let removed =
                blocks::decode_locations(removed, block.removed_count, range.start, |_| {});
            if let Err(why) = entries.and(removed) {
                return Some((shard, format!("shard {shard} {why}")));
            }
        }
        None
    };
    first_in_file_order(on_shards(parallel, first_failure).into_iter().flatten())
}

/// Of a failure on each thread (the shard and why), the one in the lower shard: the first in
/// file order.
fn first_in_file_order(
    failures: impl IntoIterator<Item = (usize, String)>,
) -> std::result::Result<(), String> {
    match failures.into_iter().min_by_key(|f| f.0) {
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

    /// The checkpoint writer's buffer: small and large writes, in any mix, land back to back,
    /// and the buffer never grows past its size (a larger slice is written where it is).
    #[test]
    fn the_appender_writes_every_slice_in_order_and_keeps_its_buffer_small() {
        let storage = SimStorage::new(5);
        storage.create_dir_all(Path::new("/a")).unwrap();
        let file = storage.create_new(Path::new("/a/f")).unwrap();
        let mut out = Appender {
            file: &*file,
            offset: 0,
            buffer: Vec::with_capacity(Appender::BUFFER_BYTES),
        };
        let mut expected = Vec::new();
        for (i, len) in [
            10,
            Appender::BUFFER_BYTES - 5,
            7,
            3 * Appender::BUFFER_BYTES,
            1,
            0,
            99,
        ]
        .into_iter()
        .enumerate()
        {
            let slice: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
            out.write_all(&slice).unwrap();
            expected.extend_from_slice(&slice);
            assert!(out.buffer.capacity() <= Appender::BUFFER_BYTES);
        }
        out.flush().unwrap();
        assert_eq!(read_whole(file).unwrap(), expected);
    }

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
            0,
            crate::Clock::now_millis(&clock),
        )
        .unwrap();
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
        /// Found while the entries are installed, not on load: damage to a full checkpoint's
        /// entries under a valid CRC (see `Entries::AtInstall`).
        at_install: bool,
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
        // The header's total follows, so that the damage is found in the block itself.
        let total =
            get_u64(bytes, ENTRY_COUNT_OFFSET) + count as u64 - get_u32(bytes, block) as u64;
        put_u64(bytes, ENTRY_COUNT_OFFSET, total);
        reseal_header(bytes);
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
        assert_eq!(loaded.parts[0].layout, EntryLayout::Fixed);
        let index = Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0);
        let now = crate::Clock::now_millis(&clock);
        install(
            &loaded,
            &index,
            &mut StateTables::default(),
            |_| true,
            0,
            now,
        )
        .unwrap();
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
                at_install: false,
            },
            Case {
                what: "version",
                damage: Box::new(|b| {
                    put_u32(b, VERSION_OFFSET, 5);
                    reseal_header(b);
                }),
                reason: "version 5",
                config: same,
                at_install: false,
            },
            Case {
                what: "header CRC",
                damage: Box::new(|b| b[SEEDS_OFFSET + 3] ^= 1),
                reason: "header checksum",
                config: same,
                at_install: false,
            },
            Case {
                what: "table CRC",
                damage: Box::new(|b| b[HEADER_LEN + 9] ^= 1),
                reason: "segment table checksum",
                config: same,
                at_install: false,
            },
            Case {
                what: "shard block CRC",
                damage: Box::new(|b| {
                    let (_, entry) = first_entry(b);
                    b[entry + 1] ^= 1;
                }),
                reason: "checksum mismatch at offset",
                config: same,
                at_install: false,
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
                at_install: false,
            },
            Case {
                what: "state CRC",
                damage: Box::new(|b| *b.last_mut().unwrap() ^= 1),
                reason: "state section checksum",
                config: same,
                at_install: false,
            },
            Case {
                what: "truncated inside the header",
                damage: Box::new(|b| b.truncate(50)),
                reason: "shorter than the header",
                config: same,
                at_install: false,
            },
            Case {
                what: "truncated inside the table",
                damage: Box::new(|b| b.truncate(HEADER_LEN + 30)),
                reason: "runs past the end",
                config: same,
                at_install: false,
            },
            Case {
                what: "truncated inside a shard block",
                damage: Box::new(|b| {
                    let (_, entry) = first_entry(b);
                    b.truncate(entry + 5);
                }),
                reason: "past the end",
                config: same,
                at_install: false,
            },
            Case {
                what: "truncated by one byte",
                damage: Box::new(|b| {
                    b.pop();
                }),
                reason: "truncated in the state section",
                config: same,
                at_install: false,
            },
            Case {
                what: "a byte too many",
                damage: Box::new(|b| b.push(0)),
                reason: "unexpected bytes",
                config: same,
                at_install: false,
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
                at_install: false,
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
                at_install: true,
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
                at_install: true,
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
                at_install: true,
            },
            Case {
                what: "a compact block announcing one entry more, its CRC valid",
                damage: Box::new(|b| {
                    rewrite_first_block(b, |slots, body| Some((slots.len() + 1, body.to_vec())));
                }),
                reason: "malformed compact entry",
                config: same,
                at_install: true,
            },
            Case {
                what: "an entry with another key's tag, then a malformed one, its CRC valid",
                damage: Box::new(|b| {
                    rewrite_first_block(b, |slots, _| {
                        // Installed before the malformed one is found: it must not stay.
                        slots[0].tag ^= 1;
                        let mut body = Vec::new();
                        blocks::encode_compact(slots, &mut Vec::new(), &mut body);
                        Some((slots.len() + 1, body))
                    });
                }),
                reason: "malformed compact entry",
                config: same,
                at_install: true,
            },
            Case {
                what: "a compact block announcing more entries than its body holds, its CRC valid",
                damage: Box::new(|b| {
                    rewrite_first_block(b, |_, body| Some((body.len(), body.to_vec())));
                }),
                reason: "more than its body holds",
                config: same,
                at_install: false,
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
                at_install: false,
            },
            Case {
                what: "shard count",
                damage: Box::new(|_| {}),
                reason: "4 shards, the config has 8",
                config: |c| c.shard_count(SHARDS * 2),
                at_install: false,
            },
            Case {
                what: "hash mask",
                damage: Box::new(|_| {}),
                reason: "hash mask differs",
                config: |c| c.hash_mask_for_testing(0xFFFF),
                at_install: false,
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
        // The records a full replay indexes (each once): what an ignored checkpoint must leave.
        // Not the tags: a checkpoint ignored on load leaves the seeds to chance.
        let records_indexed = |store: &Store| {
            let mut records: Vec<_> = entries(&store.shared.index)
                .into_iter()
                .map(|(_, deadline, at)| (at, deadline))
                .collect();
            records.sort_unstable();
            records
        };
        storage.remove(&dir().join(CHECKPOINT_FILE_NAME)).unwrap();
        let replayed =
            records_indexed(&Store::open_with(DIR, config(storage.clone(), &clock)).unwrap());
        // The valid file is used.
        put_file(&storage, CHECKPOINT_FILE_NAME, &valid);
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
            let store = Store::open_with(DIR, config.clone()).unwrap();
            let report = store.recovery_report();
            let reason = report
                .checkpoint_ignored
                .clone()
                .unwrap_or_else(|| panic!("{}: the checkpoint was used", case.what));
            assert!(
                reason.contains(case.reason) && reason.contains(CHECKPOINT_FILE_NAME),
                "{}: {reason:?} lacks {:?}",
                case.what,
                case.reason
            );
            // The same reason whether found on load or while the entries were installed.
            match load(&storage, dir(), &config) {
                Err(on_load) => {
                    assert!(!case.at_install, "{}: found on load", case.what);
                    assert_eq!(on_load, reason, "{}", case.what);
                }
                Ok(_) => assert!(case.at_install, "{}: loaded", case.what),
            }
            assert_eq!(report.checkpoint_entries_loaded, 0, "{}", case.what);
            assert_eq!(
                report.records_replayed, records,
                "{}: full replay",
                case.what
            );
            answers(&store);
            assert_eq!(records_indexed(&store), replayed, "{}", case.what);
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
            0,
            now,
        )
        .unwrap();
        let index = Index::new(SHARDS, u64::MAX, loaded.seeds, 1000, 0);
        let without_first = install(
            &loaded,
            &index,
            &mut StateTables::default(),
            |id| id != 1,
            0,
            now,
        )
        .unwrap();
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
            0,
            now,
        )
        .unwrap();
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

    /// A config writing a full checkpoint every 48 KiB of log and a delta every 6 KiB (run by
    /// `maintain`), with 4 tags per shard: removals and overwrites meet many entries of the
    /// same tag, so a delta must drop exactly the removed location, never "the key's tag".
    fn delta_config(storage: &SimStorage, clock: &ManualClock) -> Config {
        config(storage.clone(), clock)
            .checkpoint_every_bytes(48 << 10)
            .checkpoint_delta_every_bytes(6 << 10)
            .compaction_live_ratio(0.9)
            .hash_mask_for_testing(u64::MAX << 62 | 3 << 16)
    }

    type Answers = (Vec<Option<Vec<u8>>>, Vec<crate::ClaimToken>);

    fn answers_of(store: &Store, keys: &[Vec<u8>]) -> Answers {
        let values = keys
            .iter()
            .map(|k| store.get(k).unwrap().map(|v| v.to_vec()))
            .collect();
        (values, store.in_doubt().unwrap())
    }

    /// The checkpoint files (full and deltas) in the directory, by name.
    fn checkpoint_files(storage: &SimStorage) -> Vec<(String, Vec<u8>)> {
        let mut names: Vec<String> = storage
            .list(dir())
            .unwrap()
            .into_iter()
            .filter(|n| n == CHECKPOINT_FILE_NAME || n.starts_with(DELTA_PREFIX))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let bytes = file(storage, &n).unwrap();
                (n, bytes)
            })
            .collect()
    }

    /// Opens the store with every checkpoint file set aside: the answers of a full replay. The
    /// files are put back after.
    fn full_replay_answers(storage: &SimStorage, config: &Config, keys: &[Vec<u8>]) -> Answers {
        let files = checkpoint_files(storage);
        for (name, _) in &files {
            storage.remove(&dir().join(name)).unwrap();
        }
        let store = Store::open_with(DIR, config.clone()).unwrap();
        assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
        let answers = answers_of(&store, keys);
        drop(store);
        for (name, bytes) in &files {
            put_file(storage, name, bytes);
        }
        answers
    }

    /// Random inserts, removals, claims (completed or left open), expiry and maintenance
    /// (compaction, deletion, full checkpoints and deltas), dropped without `close` every few
    /// rounds: each reopen from the checkpoint chain answers exactly as a full replay of the same
    /// files, and the store goes on from the chain it loaded.
    #[test]
    fn deltas_reopen_like_a_full_replay_through_removals_expiry_compaction_and_reopens() {
        // Without compaction too: it deletes the segments of most removed entries, which then
        // drop out on load whether or not a delta lists them.
        for (seed, ratio) in [(77, 0.9), (78, 0.0)] {
            deltas_reopen_like_a_full_replay(seed, ratio);
        }
    }

    fn deltas_reopen_like_a_full_replay(seed: u64, compaction_live_ratio: f64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let storage = SimStorage::new(seed);
        let clock = ManualClock::new();
        let config = delta_config(&storage, &clock).compaction_live_ratio(compaction_live_ratio);
        let keys: Vec<Vec<u8>> = (0..240).map(key).collect();
        let mut store = Store::open_with(DIR, config.clone()).unwrap();
        let (mut deltas_loaded, mut removed_in_deltas, mut reclaimed) = (0, false, 0);
        for round in 0..60 {
            for _ in 0..80 {
                let k = &keys[rng.gen_range(0..keys.len())];
                match rng.gen_range(0..10) {
                    0..5 => {
                        let ttl = [5, 60, 3600][rng.gen_range(0..3)];
                        let value = format!("{round}-{}", rng.gen::<u16>()).into_bytes();
                        let outcome = store.check_or_insert(k, Duration::from_secs(ttl), &value);
                        // A key claimed and not completed refuses an insert.
                        assert!(
                            matches!(outcome, Ok(_) | Err(crate::Error::ClaimInFlight { .. })),
                            "{outcome:?}"
                        );
                    }
                    5..8 => {
                        store.remove(k).unwrap();
                    }
                    _ => {
                        if let Claim::Acquired(token) =
                            store.claim(k, Duration::from_secs(30)).unwrap()
                        {
                            if rng.gen_bool(0.5) {
                                store
                                    .complete(token, Duration::from_secs(60), b"done")
                                    .unwrap();
                            }
                        }
                    }
                }
            }
            clock.advance(Duration::from_secs(rng.gen_range(0..8)));
            store.maintain().unwrap();
            if round % 6 == 5 {
                let stats = store.stats();
                reclaimed += stats.segments_deleted + stats.segments_compacted;
                drop(store);
                for (name, bytes) in checkpoint_files(&storage) {
                    if name.starts_with(DELTA_PREFIX) {
                        let delta = decode(bytes, &config, None, Entries::Checked);
                        // Not a full checkpoint; read as a delta below.
                        assert!(delta.is_err());
                    }
                }
                let loaded = load(&storage, dir(), &config).unwrap();
                if let Some(loaded) = &loaded {
                    removed_in_deltas |= loaded.parts[1..].iter().any(|part| {
                        part.shard_blocks
                            .iter()
                            .any(|block| block.removed_count > 0)
                    });
                }
                let full = full_replay_answers(&storage, &config, &keys);
                store = Store::open_with(DIR, config.clone()).unwrap();
                let report = store.recovery_report().clone();
                assert_eq!(report.checkpoint_ignored, None, "round {round}");
                assert_eq!(report.checkpoint_delta_ignored, None, "round {round}");
                deltas_loaded += report.checkpoint_deltas_loaded;
                let with_chain = answers_of(&store, &keys);
                for (i, k) in keys.iter().enumerate() {
                    assert_eq!(
                        with_chain.0[i],
                        full.0[i],
                        "round {round}, {}: chain + replay vs full replay ({report:?})",
                        String::from_utf8_lossy(k)
                    );
                }
                assert_eq!(with_chain.1, full.1, "round {round}: claims in doubt");
            }
        }
        assert!(deltas_loaded >= 5, "{deltas_loaded} deltas loaded");
        assert!(removed_in_deltas, "no delta listed a removed location");
        if compaction_live_ratio > 0.0 {
            assert!(reclaimed > 0, "no segment deleted or compacted");
        }
    }

    /// A store whose chain is a full checkpoint and three deltas, dropped without `close`, with
    /// records after the last delta; returns the keys and the records replayed after each file
    /// of the chain (the full checkpoint, then each delta).
    fn chained(storage: &SimStorage, config: &Config) -> (Vec<Vec<u8>>, Vec<u64>) {
        let store = Store::open_with(DIR, config.clone()).unwrap();
        let keys: Vec<Vec<u8>> = (0..2000).map(key).collect();
        let mut written = Vec::new();
        let mut records = 0u64;
        for (i, k) in keys.iter().enumerate() {
            store.check_or_insert(k, TTL, k).unwrap();
            records += 1;
            if i % 3 == 0 && i > 0 {
                assert!(store.remove(&keys[i - 1]).unwrap());
                records += 1;
            }
            if i % 20 == 0 {
                if store.maintain().unwrap().checkpoint_written {
                    written.push(records);
                }
                if written.len() == 4 {
                    break;
                }
            }
        }
        assert_eq!(written.len(), 4, "a full checkpoint and three deltas");
        for k in keys.iter().skip(1990) {
            store.check_or_insert(k, TTL, k).unwrap();
            records += 1;
        }
        drop(store);
        let names: Vec<String> = checkpoint_files(storage).into_iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            [
                delta_file_name(1),
                delta_file_name(2),
                delta_file_name(3),
                CHECKPOINT_FILE_NAME.to_string(),
            ]
        );
        (keys, written.iter().map(|at| records - at).collect())
    }

    /// A damaged, cut, stale or foreign delta is never trusted: the chain ends before it (with
    /// the reason in the report) and the log is replayed from the last file that passed, with the
    /// answers of a full replay.
    #[test]
    fn a_damaged_delta_ends_the_chain_and_the_log_is_replayed_from_the_file_before() {
        let storage = SimStorage::new(22);
        let clock = ManualClock::new();
        // No compaction: it would delete the segment a delta's replay starts in, and a chain
        // cut before that delta would be ignored whole (a full replay).
        let config = delta_config(&storage, &clock).compaction_live_ratio(0.0);
        let (keys, replayed_after) = chained(&storage, &config);
        let full = full_replay_answers(&storage, &config, &keys);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        let report = store.recovery_report().clone();
        assert_eq!(report.checkpoint_deltas_loaded, 3, "{report:?}");
        assert_eq!(report.checkpoint_delta_ignored, None);
        assert_eq!(report.records_replayed, replayed_after[3]);
        assert_eq!(answers_of(&store, &keys), full);
        drop(store);

        let second = delta_file_name(2);
        let valid = file(&storage, &second).unwrap();
        let first = file(&storage, &delta_file_name(1)).unwrap();
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Damage, &str)> = vec![
            ("cut short", Box::new(|b| b.truncate(b.len() - 5)), ""),
            (
                "a flipped byte in a block",
                Box::new(|b| {
                    let at = DELTA_HEADER_LEN + b.len() / 2 % (b.len() - DELTA_HEADER_LEN);
                    b[at] ^= 0x10;
                }),
                "",
            ),
            (
                "a flipped header byte",
                Box::new(|b| b[REPLAY_FROM_OFFSET] ^= 1),
                "header checksum mismatch",
            ),
            (
                "another delta in its place (a stale one)",
                Box::new(move |b| *b = first.clone()),
                "does not extend the checkpoint before it",
            ),
            (
                "a full checkpoint's magic",
                Box::new(|b| b[..8].copy_from_slice(&CHECKPOINT_MAGIC)),
                "bad magic",
            ),
        ];
        for (what, damage, reason) in cases {
            let mut bytes = valid.clone();
            damage(&mut bytes);
            put_file(&storage, &second, &bytes);
            let store = Store::open_with(DIR, config.clone()).unwrap();
            let report = store.recovery_report().clone();
            assert_eq!(report.checkpoint_ignored, None, "{what}");
            assert_eq!(report.checkpoint_deltas_loaded, 1, "{what}: {report:?}");
            let ignored = report.checkpoint_delta_ignored.clone().unwrap_or_default();
            assert!(
                ignored.contains(&second) && ignored.contains(reason),
                "{what}: {ignored:?}"
            );
            assert_eq!(report.records_replayed, replayed_after[1], "{what}");
            assert_eq!(answers_of(&store, &keys), full, "{what}");
            drop(store);
        }
        put_file(&storage, &second, &valid);
        // A new full checkpoint: the old deltas are deleted, and none is loaded.
        let store = Store::open_with(DIR, config.clone()).unwrap();
        store.checkpoint().unwrap();
        drop(store);
        assert_eq!(checkpoint_files(&storage).len(), 1);
        let store = Store::open_with(DIR, config).unwrap();
        assert_eq!(store.recovery_report().checkpoint_deltas_loaded, 0);
        assert_eq!(store.recovery_report().records_replayed, 0);
        assert_eq!(answers_of(&store, &keys), full);
    }
}
