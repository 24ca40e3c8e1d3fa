//! Index checkpoints ("hint files"): a checksummed snapshot of every live index entry, so that
//! reopening reads the checkpoint and only the log written after it instead of all history.
//!
//! Layout (little-endian; spec in `engine/FORMAT.md`): a header with the hash seeds, shard count,
//! hash mask and the log location replay starts from; a table of segments' stats; then one
//! block per shard: entry count, CRC of the entries, and 16-byte entries (tag, deadline secs,
//! location) exactly as the shard's slots hold them.
//!
//! Invariants:
//! - A checkpoint taken at log position P holds exactly the entries with location < P, and
//!   every byte before P was durable before the checkpoint was written. Replay starts at P; the
//!   segment table counts exactly the records before P.
//! - The file appears only by rename after it was fsynced, then the directory is fsynced.
//! - A checkpoint is never trusted over the log: any failed check (magic, version, CRC, length,
//!   a shard count or hash mask other than the config's) means it is ignored and the whole log is
//!   replayed. Entries pointing into segments deleted since are dropped on load.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::{Index, Slot};
use crate::io::{Storage, StorageFile};
use crate::log::segment::sync_dir;
use crate::log::{segment_of, Location, SegmentStats};
use crate::shared::Shared;

pub(crate) const CHECKPOINT_FILE_NAME: &str = "checkpoint.idem";
const CHECKPOINT_TMP_FILE_NAME: &str = "checkpoint.idem.tmp";
const CHECKPOINT_MAGIC: [u8; 8] = *b"IDEMCKPT";
const CHECKPOINT_VERSION: u32 = 1;

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
/// tag u32, expires_at_secs u32, location u64.
const ENTRY_LEN: usize = 16;
/// entry count u32, CRC of the entries u32.
const SHARD_BLOCK_HEADER_LEN: usize = 8;

/// A checkpoint that passed every check.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    pub(crate) seeds: [u64; 4],
    /// Replay starts at this log location.
    pub(crate) replay_from: Location,
    /// Stats of the segments up to and including `replay_from`'s, counting the records before it.
    pub(crate) segments: BTreeMap<u32, SegmentStats>,
    /// The file's bytes; each shard's entries are the range of it in `shard_entries`.
    bytes: Vec<u8>,
    shard_entries: Vec<std::ops::Range<usize>>,
    /// Keys that held an open claim when the checkpoint was taken (to find claims in doubt).
    pub(crate) claim_keys: Vec<Box<[u8]>>,
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

    let mut entry_count: u64 = 0;
    let mut block = Vec::new();
    for shard in shared.index.shards() {
        block.clear();
        block.extend_from_slice(&[0u8; SHARD_BLOCK_HEADER_LEN]);
        {
            let table = shard.lock();
            for (_, slot) in table.occupied() {
                if slot.location < replay_from && !slot.is_dead(now) {
                    block.extend_from_slice(&slot.tag.to_le_bytes());
                    block.extend_from_slice(&slot.expires_at_secs.to_le_bytes());
                    block.extend_from_slice(&slot.location.to_le_bytes());
                }
            }
        }
        let entries = (block.len() - SHARD_BLOCK_HEADER_LEN) / ENTRY_LEN;
        entry_count += entries as u64;
        let crc = crc32fast::hash(&block[SHARD_BLOCK_HEADER_LEN..]);
        put_u32(&mut block, 0, entries as u32);
        put_u32(&mut block, 4, crc);
        out.write_all(&block).map_err(io("writing"))?;
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
    decode(&bytes, config)
        .map(Some)
        .map_err(|reason| format!("{} ignored: {reason}", path.display()))
}

fn decode(bytes: &[u8], config: &Config) -> std::result::Result<Checkpoint, String> {
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
    if version != CHECKPOINT_VERSION {
        return Err(format!(
            "version {version}, this build reads {CHECKPOINT_VERSION}"
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
            max_deadline_secs: get_u32(row, 16),
            min_deadline_secs: get_u32(row, 4),
        };
        segments.insert(id, stats);
    }
    at += table_len + 4;

    let mut shards = Vec::with_capacity(shard_count);
    let mut total: u64 = 0;
    for shard in 0..shard_count {
        if at + SHARD_BLOCK_HEADER_LEN > bytes.len() {
            return Err(format!("truncated at shard {shard} (offset {at})"));
        }
        let entries = get_u32(bytes, at) as usize;
        let crc = get_u32(bytes, at + 4);
        at += SHARD_BLOCK_HEADER_LEN;
        let len = entries
            .checked_mul(ENTRY_LEN)
            .filter(|len| at + len <= bytes.len())
            .ok_or_else(|| format!("shard {shard} runs past the end (offset {at})"))?;
        let body = &bytes[at..at + len];
        if crc32fast::hash(body) != crc {
            return Err(format!("shard {shard} checksum mismatch at offset {at}"));
        }
        if body
            .chunks_exact(ENTRY_LEN)
            .map(entry_slot)
            .any(|slot| slot.location == 0 || slot.location >= replay_from)
        {
            return Err(format!(
                "shard {shard} has an entry outside the checkpointed log"
            ));
        }
        total += entries as u64;
        shards.push(at..at + len);
        at += len;
    }
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
    if at != bytes.len() {
        return Err(format!(
            "{} unexpected bytes after the claims section",
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
        shard_entries: shards,
        claim_keys,
        bytes: bytes.to_vec(),
    })
}

/// Puts a loaded checkpoint's entries into the index, dropping those that are dead at
/// `now_millis` or whose segment no longer exists.
pub(crate) fn install(
    checkpoint: &Checkpoint,
    index: &Index,
    segment_exists: impl Fn(u32) -> bool,
    now_millis: u64,
) -> u64 {
    let mut installed = 0;
    for (shard, range) in index.shards().iter().zip(&checkpoint.shard_entries) {
        let entries = &checkpoint.bytes[range.clone()];
        let mut table = shard.lock();
        // Sized once for all its entries: no table is rebuilt while loading.
        table.reserve(entries.len() / ENTRY_LEN, now_millis);
        for slot in entries.chunks_exact(ENTRY_LEN).map(entry_slot) {
            if !slot.is_dead(now_millis) && segment_exists(segment_of(slot.location)) {
                table.install(slot, now_millis);
                installed += 1;
            }
        }
    }
    installed
}

fn entry_slot(entry: &[u8]) -> Slot {
    Slot {
        tag: get_u32(entry, 0),
        expires_at_secs: get_u32(entry, 4),
        location: get_u64(entry, 8),
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
