//! Export and import of a store's live window ([`Store::export`], [`Store::import`]): every
//! live entry and open claim, with its absolute deadline, fingerprint and claim id, and every
//! state entry and input position of transactions, in a versioned, checksummed file (spec:
//! "Export file" in `engine/FORMAT.md`).
//!
//! Invariants:
//! - An export holds each key that was live at the time of its walk exactly once, as the index
//!   had it (read under the key's shard lock), and only records the log had made durable when
//!   the export began or appended after; it ends with an end record that counts the entries, so
//!   a truncated file is refused, never half-imported.
//! - An import validates the whole file and checks every key against the store before it
//!   writes anything: a damaged file, an unknown kind or a conflict (a key the store holds live
//!   with another value, fingerprint or claim) is an error and nothing is written. Keys the
//!   store already holds identically are skipped, so importing a file twice changes nothing.
//! - Imported records go through the normal append path with their original absolute
//!   deadlines (expired ones are skipped); imported claims become claims in doubt with their
//!   original ids, and the store's fencing tokens are moved past the largest of them before any
//!   is written, so every later claim's token is larger. The import is durable (flushed, in any
//!   durability mode) before it returns.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::claim::registry::ClaimToken;
use crate::error::{Error, Result};
use crate::index::{Probe, Slot};
use crate::record::{
    self, Record, RecordKind, MAX_FINGERPRINT_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
use crate::shared::Shared;
use crate::store::Store;

const MAGIC: [u8; 8] = *b"IDEMEXPT";
/// The export file version this build writes and reads.
pub const EXPORT_VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 28;
const ENTRY_HEADER_LEN: usize = 28;

/// What an export file entry is (the kind byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A live key with its value.
    Entry = 1,
    /// An open claim with its id.
    Claim = 2,
    /// A state entry of transactions (no deadline).
    State = 3,
    /// An input position: the source is the key, the position the claim-id field.
    Position = 4,
    /// The last entry: counts those before it.
    End = 255,
}
// A reader refuses any kind it does not know rather than drop answers silently.

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Claim),
            3 => Some(Kind::State),
            4 => Some(Kind::Position),
            255 => Some(Kind::End),
            _ => None,
        }
    }

    /// State entries and positions have no deadline and live apart from the dedup keys.
    fn is_state(self) -> bool {
        matches!(self, Kind::State | Kind::Position)
    }
}

/// What [`Store::export`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    /// Live entries (keys with a recorded value) written.
    pub entries: u64,
    /// Open claims written.
    pub claims: u64,
    /// State entries written.
    pub state_entries: u64,
    /// Positions written.
    pub positions: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// What [`Store::import`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Entries written into the store.
    pub entries: u64,
    /// Claims written into the store (now in doubt: see [`Store::in_doubt`]).
    pub claims: u64,
    /// State entries written into the store.
    pub state_entries: u64,
    /// Positions written into the store.
    pub positions: u64,
    /// Entries, claims, state entries and positions the store already held identically
    /// (skipped).
    pub already_present: u64,
    /// Entries and claims whose deadline had passed (skipped).
    pub expired: u64,
}

/// Live keys and open claims, counted by [`Store::count_live`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LiveCount {
    /// Keys with a recorded value whose deadline has not passed.
    pub entries: u64,
    /// Keys held by a claim whose lease has not ended.
    pub claims: u64,
}

impl Store {
    /// Writes the store's live window to a new file at `path` (which must not exist): every
    /// live entry and open claim with its absolute deadline, fingerprint and claim id. The
    /// store stays usable meanwhile; a key changed during the export is written as it was when
    /// the walk reached it. The file is fsynced before this returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    /// let source = idem::Store::open(a.path())?;
    /// source.check_or_insert(b"order-17", Duration::from_secs(3600), b"charged")?;
    /// let file = a.path().join("window.idemx");
    /// assert_eq!(source.export(&file)?.entries, 1);
    /// let target = idem::Store::open(b.path().join("store"))?;
    /// assert_eq!(target.import(&file)?.entries, 1);
    /// assert_eq!(target.get(b"order-17")?.unwrap(), b"charged");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export(&self, path: impl AsRef<Path>) -> Result<ExportReport> {
        let path = path.as_ref();
        let shared = &*self.shared;
        shared.check_live()?;
        // Every exported record is durable in this store before it is copied out.
        shared.log.flush()?;
        let now = shared.clock.now_millis();
        let io = |what: &str| {
            let context = format!("{what} export file {}", path.display());
            move |e| Error::io(context, e)
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("creating"))?;
        let written = write_export(shared, now, &file).and_then(|report| {
            file.sync_all().map_err(io("fsync of"))?;
            sync_parent(path).map_err(io("fsync of the directory of"))?;
            Ok(report)
        });
        if written.is_err() {
            // A partial file must not be mistaken for an export.
            let _ = std::fs::remove_file(path);
        }
        written
    }

    /// Imports an export file's live window into this store (empty or not). Everything is
    /// checked before anything is written: a damaged or truncated file is
    /// [`Error::Corrupt`] naming the offset, another version [`Error::UnsupportedVersion`], and
    /// a key the store holds live with another value, fingerprint or claim
    /// [`Error::ImportConflict`] naming the key. Keys held identically are skipped; entries
    /// whose deadline has passed are skipped. Imported claims are in doubt
    /// ([`Store::in_doubt`]) with their original fencing tokens, and every claim taken later is
    /// fenced above them. Durable before it returns, in any durability mode.
    ///
    /// A key written by another thread of this process between the check and the write is
    /// still refused with [`Error::ImportConflict`], but the entries imported before it stay.
    pub fn import(&self, path: impl AsRef<Path>) -> Result<ImportReport> {
        let path = path.as_ref();
        let shared = &*self.shared;
        shared.check_live()?;
        // Pass 1: the whole file is sound and nothing in it conflicts.
        let now = shared.clock.now_millis();
        let mut seen: HashSet<Box<[u8]>> = HashSet::new();
        let mut max_claim_id = None;
        let mut buf = Vec::new();
        for_each_entry(path, |entry| {
            // One namespace per kind of key: the kind byte before the key.
            let namespace = match entry.kind {
                Kind::State => 1,
                Kind::Position => 2,
                _ => 0,
            };
            let mut named = vec![namespace];
            named.extend_from_slice(&entry.key);
            if !seen.insert(named.into_boxed_slice()) {
                return Err(Error::ImportConflict {
                    key: entry.key.clone(),
                    reason: "appears twice in the export file".into(),
                });
            }
            if entry.kind.is_state() {
                return state_conflict(shared, &entry).map(|_| ());
            }
            if entry.deadline_millis <= now {
                return Ok(());
            }
            if entry.kind == Kind::Claim {
                max_claim_id = max_claim_id.max(Some(entry.claim_id));
            }
            let hash = shared.index.hash(&entry.key);
            let table = shared.index.lock(hash);
            match shared.probe(&table, hash, &entry.key, now, &mut buf)? {
                Probe::Found(_) => {
                    let held = record::decode(&buf).expect("checked during the probe");
                    entry
                        .matches(&held)
                        .map_err(|reason| Error::ImportConflict {
                            key: entry.key.clone(),
                            reason: format!("is live in the store {reason}; nothing was imported"),
                        })
                }
                Probe::Vacant(_) => Ok(()),
            }
        })?;
        drop(seen);
        // Fenced before any imported claim is written: a crash after this leaves ids above them.
        if let Some(id) = max_claim_id {
            shared.claims.advance_claim_ids_past(id)?;
        }
        // Pass 2: write.
        let now = shared.clock.now_millis();
        let mut report = ImportReport::default();
        let mut state = Vec::new();
        for_each_entry(path, |entry| {
            if entry.kind.is_state() {
                state.push(entry);
                return Ok(());
            }
            import_one(shared, &entry, now, &mut buf, &mut report)
        })?;
        self.import_state(&state, &mut report)?;
        shared.log.flush()?;
        Ok(report)
    }

    /// Writes the file's state entries and positions that the store lacks, in transactions as
    /// large as the limits allow.
    fn import_state(&self, entries: &[Entry], report: &mut ImportReport) -> Result<()> {
        let mut pending: Vec<&Entry> = Vec::new();
        for entry in entries {
            if state_conflict(&self.shared, entry)? {
                report.already_present += 1;
                continue;
            }
            pending.push(entry);
        }
        for chunk in pending.chunks(1000) {
            let mut tx = self.transaction();
            for entry in chunk {
                match entry.kind {
                    Kind::State => tx.put_state(&entry.key, &entry.value)?,
                    _ => tx.set_position(&entry.key, entry.claim_id)?,
                }
            }
            tx.commit().map_err(|e| match e {
                Error::Conflict { reason } => Error::ImportConflict {
                    key: chunk[0].key.clone(),
                    reason: format!(
                        "state was written during the import ({reason}); the entries before it were imported"
                    ),
                },
                other => other,
            })?;
            for entry in chunk {
                match entry.kind {
                    Kind::State => report.state_entries += 1,
                    _ => report.positions += 1,
                }
            }
        }
        Ok(())
    }

    /// Counts the live entries and open claims by reading each index entry's record (a walk
    /// of the whole index: for operators, not for a hot path). Unlike [`crate::Stats::live_keys`]
    /// it leaves out entries that expired but are not reclaimed yet.
    pub fn count_live(&self) -> Result<LiveCount> {
        let shared = &*self.shared;
        shared.check_live()?;
        let now = shared.clock.now_millis();
        let mut count = LiveCount::default();
        walk_live(shared, now, |record| {
            match record.kind {
                RecordKind::Claim => count.claims += 1,
                _ => count.entries += 1,
            }
            Ok(())
        })?;
        Ok(count)
    }
}

/// Calls `visit` with the record of every live index entry (an Insert or a Claim; failures in
/// their back-off are left out), under its shard's lock.
fn walk_live(
    shared: &Shared,
    now: u64,
    mut visit: impl FnMut(&Record<'_>) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    for shard in shared.index.shards() {
        let table = shard.lock();
        for (_, slot) in table.occupied() {
            if slot.is_dead(now) {
                continue;
            }
            // A reclaimed segment held only dead entries (see `Shared::probe`).
            let Some(record) = shared.log.read(slot.location, &mut buf)? else {
                continue;
            };
            if record.expires_at_millis <= now {
                continue;
            }
            match record.kind {
                RecordKind::Insert | RecordKind::Claim => visit(&record)?,
                // A failure's back-off is a passing guard, not a result: not exported.
                RecordKind::Failure => {}
                _ => {
                    return Err(Error::Corrupt {
                        path: shared.dir.clone(),
                        offset: slot.location,
                        reason: format!("index entry points at a {:?} record", record.kind),
                    })
                }
            }
        }
    }
    Ok(())
}

fn write_export(shared: &Shared, now: u64, file: &File) -> Result<ExportReport> {
    let mut out = BufWriter::new(file);
    let mut report = ExportReport::default();
    let mut header = [0u8; FILE_HEADER_LEN];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&EXPORT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&now.to_le_bytes());
    let crc = crc32fast::hash(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&header);
    let mut count = 0u64;
    walk_live(shared, now, |record| {
        let entry = match record.kind {
            RecordKind::Claim => {
                let token = ClaimToken::from_record(record).ok_or_else(|| Error::Corrupt {
                    path: shared.dir.clone(),
                    offset: 0,
                    reason: "a claim record without an 8-byte claim id".into(),
                })?;
                report.claims += 1;
                EntryRef {
                    kind: Kind::Claim,
                    key: record.key,
                    value: &[],
                    deadline_millis: record.expires_at_millis,
                    claim_id: token.claim_id,
                    fingerprint: record.fingerprint,
                }
            }
            _ => {
                report.entries += 1;
                EntryRef {
                    kind: Kind::Entry,
                    key: record.key,
                    value: record.value,
                    deadline_millis: record.expires_at_millis,
                    claim_id: 0,
                    fingerprint: record.fingerprint,
                }
            }
        };
        entry.encode_into(&mut bytes);
        count += 1;
        if bytes.len() >= 1 << 20 {
            out.write_all(&bytes)
                .map_err(|e| Error::io("writing the export file", e))?;
            bytes.clear();
        }
        Ok(())
    })?;
    {
        let state = shared.state.lock();
        for (key, entry) in &state.entries {
            EntryRef {
                kind: Kind::State,
                key,
                value: &entry.value,
                deadline_millis: 0,
                claim_id: 0,
                fingerprint: &[],
            }
            .encode_into(&mut bytes);
            report.state_entries += 1;
            count += 1;
        }
        for (source, entry) in &state.positions {
            EntryRef {
                kind: Kind::Position,
                key: source,
                value: &[],
                deadline_millis: 0,
                claim_id: entry.position,
                fingerprint: &[],
            }
            .encode_into(&mut bytes);
            report.positions += 1;
            count += 1;
        }
    }
    EntryRef {
        kind: Kind::End,
        key: &[],
        value: &[],
        deadline_millis: 0,
        claim_id: count,
        fingerprint: &[],
    }
    .encode_into(&mut bytes);
    out.write_all(&bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("writing the export file", e))?;
    drop(out);
    report.bytes = file
        .metadata()
        .map_err(|e| Error::io("stat of the export file", e))?
        .len();
    Ok(report)
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// For a state entry or position of an import file: `Ok(true)` if the store holds it already,
/// `Ok(false)` if it lacks it, a conflict if it holds another value or position.
fn state_conflict(shared: &Shared, entry: &Entry) -> Result<bool> {
    let state = shared.state.lock();
    let held = match entry.kind {
        Kind::State => state
            .entries
            .get(entry.key.as_slice())
            .map(|held| (*held.value == *entry.value, "with a different value")),
        _ => state
            .positions
            .get(entry.key.as_slice())
            .map(|held| (held.position == entry.claim_id, "at a different position")),
    };
    match held {
        None => Ok(false),
        Some((true, _)) => Ok(true),
        Some((false, how)) => Err(Error::ImportConflict {
            key: entry.key.clone(),
            reason: format!("is held by the store's state {how}; nothing was imported"),
        }),
    }
}

/// Writes one entry into the store (pass 2 of an import).
fn import_one(
    shared: &Shared,
    entry: &Entry,
    now: u64,
    buf: &mut Vec<u8>,
    report: &mut ImportReport,
) -> Result<()> {
    if entry.deadline_millis <= now {
        report.expired += 1;
        return Ok(());
    }
    let hash = shared.index.hash(&entry.key);
    let mut table = shared.index.lock(hash);
    let slot = match shared.probe(&table, hash, &entry.key, now, buf)? {
        Probe::Found(_) => {
            let held = record::decode(buf).expect("checked during the probe");
            return match entry.matches(&held) {
                Ok(()) => {
                    report.already_present += 1;
                    Ok(())
                }
                Err(reason) => Err(Error::ImportConflict {
                    key: entry.key.clone(),
                    reason: format!(
                        "was written during the import {reason}; the entries before it were imported"
                    ),
                }),
            };
        }
        Probe::Vacant(slot) => slot,
    };
    let claim_id = entry.claim_id.to_le_bytes();
    let record = Record {
        kind: match entry.kind {
            Kind::Claim => RecordKind::Claim,
            _ => RecordKind::Insert,
        },
        key: &entry.key,
        value: match entry.kind {
            Kind::Claim => &claim_id,
            _ => &entry.value,
        },
        expires_at_millis: entry.deadline_millis,
        fingerprint: &entry.fingerprint,
        refresh_cap_millis: 0,
    };
    let (at, _) = shared.log.append(&record)?;
    let indexed = Slot {
        tag: hash.tag,
        expires_at_secs: Slot::deadline_secs(entry.deadline_millis),
        location: at,
    };
    table.put(slot, indexed, now);
    shared.settle(&mut table);
    if entry.kind == Kind::Claim {
        let token = ClaimToken::from_record(&record).expect("an 8-byte claim id");
        // Under the shard lock, as every claim enters the registry.
        shared.claims.remember_in_doubt(&token);
        report.claims += 1;
    } else {
        report.entries += 1;
    }
    Ok(())
}

/// One entry of an export file, borrowed for encoding.
struct EntryRef<'a> {
    kind: Kind,
    key: &'a [u8],
    value: &'a [u8],
    deadline_millis: u64,
    /// The claim id of a claim; the entry count of the end record; 0 otherwise.
    claim_id: u64,
    fingerprint: &'a [u8],
}

impl EntryRef<'_> {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.push(self.kind as u8);
        out.push(self.fingerprint.len() as u8);
        out.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.deadline_millis.to_le_bytes());
        out.extend_from_slice(&self.claim_id.to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
        out.extend_from_slice(self.fingerprint);
        let crc = crc32fast::hash(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// One decoded entry of an export file.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) kind: Kind,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Vec<u8>,
    pub(crate) deadline_millis: u64,
    pub(crate) claim_id: u64,
    fingerprint: Vec<u8>,
}

impl Entry {
    /// Whether the store's live record of the key gives the same answers as this entry; if
    /// not, how they differ.
    fn matches(&self, held: &Record<'_>) -> std::result::Result<(), String> {
        match (self.kind, held.kind) {
            (Kind::Claim, RecordKind::Claim) => {
                let held_id = ClaimToken::from_record(held).map(|t| t.claim_id);
                if held_id != Some(self.claim_id) {
                    return Err("as another claim (another claim id)".into());
                }
            }
            (Kind::Claim, _) => return Err("with a value, the file has a claim".into()),
            (_, RecordKind::Claim) => return Err("as a claim, the file has a value".into()),
            _ if held.value != self.value.as_slice() => return Err("with a different value".into()),
            _ => {}
        }
        if held.fingerprint != self.fingerprint.as_slice() {
            return Err("with a different fingerprint".into());
        }
        Ok(())
    }
}

/// Reads and checks the export file at `path`, calling `visit` with each entry; the whole file
/// is read (up to its end record) even if nothing is imported.
pub(crate) fn for_each_entry(
    path: &Path,
    mut visit: impl FnMut(Entry) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let corrupt = |offset: u64, reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut header = [0u8; FILE_HEADER_LEN];
    let got = read_full(&mut input, &mut header, path)?;
    if got < FILE_HEADER_LEN || header[0..8] != MAGIC {
        return Err(corrupt(0, "not an idem export file (bad magic)".into()));
    }
    if u32_at(&header, 24) != crc32fast::hash(&header[..24]) {
        return Err(corrupt(0, "export file header checksum mismatch".into()));
    }
    let version = u32_at(&header, 8);
    if version != EXPORT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: EXPORT_VERSION,
        });
    }
    let mut offset = FILE_HEADER_LEN as u64;
    let mut count = 0u64;
    let mut bytes = Vec::new();
    loop {
        let mut head = [0u8; ENTRY_HEADER_LEN];
        let got = read_full(&mut input, &mut head, path)?;
        if got < ENTRY_HEADER_LEN {
            return Err(corrupt(
                offset,
                "the file ends before its end record: it was cut short".into(),
            ));
        }
        let kind = Kind::from_byte(head[4])
            .ok_or_else(|| corrupt(offset, format!("unknown entry kind {}", head[4])))?;
        let fingerprint_len = head[5] as usize;
        let key_len = u16::from_le_bytes([head[6], head[7]]) as usize;
        let value_len = u32_at(&head, 8) as usize;
        let deadline_millis = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
        let claim_id = u64::from_le_bytes(head[20..28].try_into().expect("8 bytes"));
        let max_value = if matches!(kind, Kind::Claim | Kind::Position) {
            0
        } else {
            MAX_VALUE_BYTES
        };
        let lengths_ok = match kind {
            Kind::End => key_len == 0 && value_len == 0 && fingerprint_len == 0,
            Kind::State | Kind::Position => {
                (1..=MAX_KEY_BYTES).contains(&key_len)
                    && value_len <= max_value
                    && fingerprint_len == 0
                    && deadline_millis == 0
            }
            _ => {
                (1..=MAX_KEY_BYTES).contains(&key_len)
                    && value_len <= max_value
                    && fingerprint_len <= MAX_FINGERPRINT_BYTES
            }
        };
        if !lengths_ok {
            return Err(corrupt(offset, "an entry length is out of range".into()));
        }
        bytes.clear();
        bytes.extend_from_slice(&head);
        bytes.resize(ENTRY_HEADER_LEN + key_len + value_len + fingerprint_len, 0);
        let got = read_full(&mut input, &mut bytes[ENTRY_HEADER_LEN..], path)?;
        if ENTRY_HEADER_LEN + got < bytes.len() {
            return Err(corrupt(
                offset,
                "entry truncated: the file was cut short".into(),
            ));
        }
        if u32_at(&bytes, 0) != crc32fast::hash(&bytes[4..]) {
            return Err(corrupt(offset, "entry checksum mismatch".into()));
        }
        if kind == Kind::End {
            if claim_id != count {
                return Err(corrupt(
                    offset,
                    format!("the end record counts {claim_id} entries, the file has {count}"),
                ));
            }
            let mut rest = [0u8; 1];
            if read_full(&mut input, &mut rest, path)? != 0 {
                return Err(corrupt(
                    offset + bytes.len() as u64,
                    "bytes follow the end record".into(),
                ));
            }
            return Ok(());
        }
        if record::deadline_secs(deadline_millis) == u32::MAX {
            return Err(corrupt(offset, "a deadline past the year 2106".into()));
        }
        let body = &bytes[ENTRY_HEADER_LEN..];
        let (key, rest) = body.split_at(key_len);
        let (value, fingerprint) = rest.split_at(value_len);
        visit(Entry {
            kind,
            key: key.to_vec(),
            value: value.to_vec(),
            deadline_millis,
            claim_id,
            fingerprint: fingerprint.to_vec(),
        })?;
        count += 1;
        offset += bytes.len() as u64;
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    Ok(filled)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A key as people read it: the text if it is printable UTF-8, else `0x` and hex.
pub(crate) fn printable_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.is_empty() && !text.chars().any(char::is_control) => {
            format!("{text:?}")
        }
        _ => {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}
