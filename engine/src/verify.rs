//! Read-only verification of a store directory (`idem verify`): every segment file, every
//! record in it, the checkpoint with the delta checkpoints that extend it, and the fence file, judged by the same decoders and checks that
//! recovery uses, with every damage reported by file and byte offset.
//!
//! Invariants:
//! - Nothing in the directory is changed: no torn tail is cut, no torn segment deleted, no
//!   temporary file removed (opening a store does those; verify only reports them). The one
//!   side effect is the `LOCK` file, created if missing, whose lock is held while verifying so
//!   that no store changes the files under the scan.
//! - What FORMAT.md calls a torn tail (a record that does not decode in the newest segment) is
//!   reported as such, not as damage: a crash during an append leaves it, and open cuts it. Not
//!   before the checkpoint's replay start, though: those bytes were durable when it was written,
//!   so a record there that does not decode is damage (open would not cut it, and reading it
//!   fails with `Error::Corrupt`).
//! - Records are decoded only through `record::decode` (and segment headers through
//!   `recovery::check_header`), so a format change is followed here without a second decoder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{self, CHECKPOINT_FILE_NAME};
use crate::error::{Error, Result};
use crate::fence::{FencingTokens, FENCE_FILE_NAME};
use crate::io::{FileSystem, Storage};
use crate::log::segment::{self, SegmentFile};
use crate::log::{offset_of, segment_of};
use crate::record::{self, DecodeError, RecordKind, SEGMENT_HEADER_LEN};
use crate::recovery::{check_header, HeaderVerdict, ReplayDecoder};

/// What [`verify`] found. The store is sound when [`VerifyReport::is_clean`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The segment files read, oldest first.
    pub segments: Vec<SegmentSummary>,
    /// Every damage found: each makes the store fail to open (or a checkpoint be ignored).
    pub damage: Vec<Damage>,
    /// A torn write at the end of the newest segment: not damage (a crash during an append
    /// leaves it, and nothing acknowledged in `Sync` mode lies there); the next open cuts it.
    pub torn_tail: Option<TornTail>,
    /// The checkpoint, if there is one and it passed every check.
    pub checkpoint: Option<CheckpointSummary>,
    /// Conditions that are not damage but that the next open will act on (a segment torn
    /// while being created, a leftover temporary file, a newest segment already sealed).
    pub notes: Vec<String>,
}

impl VerifyReport {
    /// Whether no damage was found (a torn tail and notes are not damage).
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// Records decoded in all segments (seals not counted).
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }

    /// Bytes of all segment files.
    pub fn segment_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
}

/// One segment file as verify read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentSummary {
    /// The file.
    pub path: PathBuf,
    /// Its segment id.
    pub id: u32,
    /// Its length.
    pub bytes: u64,
    /// Records that decoded (seals and padding not counted).
    pub records: u64,
    /// Padding records (format 4: the unused ends of chunks append lanes reserved ahead) and
    /// the bytes they take.
    pub padding: (u64, u64),
    /// Whether it ends with a seal vouching for its own length.
    pub sealed: bool,
    /// The format version its header names (0 if the header did not decode).
    pub version: u32,
}

/// A damaged structure: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The damaged file.
    pub path: PathBuf,
    /// Byte offset of the damaged structure (0 when the file is judged as a whole).
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte offset {}: {}",
            self.path.display(),
            self.offset,
            self.reason
        )
    }
}

/// The torn tail of the newest segment, which the next open cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// The newest segment file.
    pub path: PathBuf,
    /// Where the first record that does not decode starts.
    pub offset: u64,
    /// Bytes from there to the end of the file.
    pub bytes: u64,
    /// Why it does not decode.
    pub reason: String,
}

/// A checkpoint that passed every check of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointSummary {
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub bytes: u64,
    /// Index entries it holds.
    pub entries: u64,
    /// Keys of claims open when it was taken.
    pub claims: u64,
    /// Delta checkpoint files (`checkpoint-delta-NNNNNN.idem`) that extend it and passed every
    /// check, as an open loads them.
    pub deltas: u32,
    /// The segment replay starts in (after the last delta loaded, if any).
    pub replay_from_segment: u32,
    /// The byte offset in that segment replay starts at.
    pub replay_from_offset: u32,
}

/// Verifies the store in `dir` without changing it: reads every segment and each of its
/// records, the checkpoint and the fence file, and reports every damage with file and offset.
///
/// Fails with [`Error::Locked`] if a store has the directory open, and with [`Error::Io`] if
/// the directory does not exist or a file cannot be read. Damage is not an error: it is in the
/// report.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// idem::Store::open(dir.path())?.check_or_insert(b"k", std::time::Duration::from_secs(60), b"v")?;
/// let report = idem::verify(dir.path())?;
/// assert!(report.is_clean());
/// assert_eq!(report.records(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    verify_in(Arc::new(FileSystem), dir.as_ref())
}

pub(crate) fn verify_in(shared_storage: Arc<dyn Storage>, dir: &Path) -> Result<VerifyReport> {
    let storage = &*shared_storage;
    let exists = storage
        .dir_exists(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    if !exists {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        return Err(Error::io(
            format!("no store directory {}", dir.display()),
            missing,
        ));
    }
    let _lock = match storage.lock_dir(dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Err(Error::Locked {
                dir: dir.to_path_buf(),
                // The name `Store::open` locks (see io.rs).
                lock_file: dir.join("LOCK"),
            });
        }
        Err(e) => return Err(Error::io(format!("locking {}", dir.display()), e)),
    };
    let mut report = VerifyReport::default();
    verify_checkpoint(storage, dir, &mut report)?;
    // A checkpoint is written only once the log before its replay start is durable: a record
    // there that does not decode is damage even in the newest segment, never a torn write.
    let durable_below = report
        .checkpoint
        .as_ref()
        .map(|c| (c.replay_from_segment, u64::from(c.replay_from_offset)));
    let ids = segment::list_segments(storage, dir)?;
    for (position, &id) in ids.iter().enumerate() {
        let newest = position + 1 == ids.len();
        let durable_len = match durable_below {
            Some((segment, offset)) if segment == id => offset,
            _ => 0,
        };
        verify_segment(storage, dir, id, (newest, durable_len), &mut report)?;
    }
    match FencingTokens::open(Arc::clone(&shared_storage), dir) {
        Ok(_) => {}
        Err(Error::Io { context, source }) => return Err(Error::Io { context, source }),
        Err(error) => report
            .damage
            .push(damage_of(error, dir.join(FENCE_FILE_NAME))),
    }
    for leftover in [
        "checkpoint.idem.tmp",
        checkpoint::DELTA_TMP_FILE_NAME,
        "fence.idem.tmp",
    ] {
        if storage
            .list(dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .iter()
            .any(|name| name == leftover)
        {
            report.notes.push(format!(
                "{leftover}: a write interrupted by a crash; ignored (open removes it)"
            ));
        }
    }
    Ok(report)
}

/// Reads segment `id`; `newest` says whether a torn tail is possible in it, `durable_len` up to
/// where it is known durable all the same (the checkpoint's replay start).
fn verify_segment(
    storage: &dyn Storage,
    dir: &Path,
    id: u32,
    (newest, durable_len): (bool, u64),
    report: &mut VerifyReport,
) -> Result<()> {
    let file = SegmentFile::open(storage, dir, id)?;
    let len = file.len()?;
    let mut bytes = vec![0u8; len as usize];
    let got = file.read_at(&mut bytes, 0)?;
    bytes.truncate(got);
    let mut summary = SegmentSummary {
        path: file.path.clone(),
        id,
        bytes: bytes.len() as u64,
        records: 0,
        padding: (0, 0),
        sealed: false,
        version: 0,
    };
    let damage_at = |offset: usize, reason: String| Damage {
        path: file.path.clone(),
        offset: offset as u64,
        reason,
    };
    if id == 0 {
        report.damage.push(damage_at(
            0,
            "segment id 0 is not a valid segment id".into(),
        ));
    }
    match check_header(&file, &bytes, newest) {
        Ok(HeaderVerdict::Valid { version }) => summary.version = version,
        Ok(HeaderVerdict::TornCreation) => {
            report.notes.push(format!(
                "{}: the newest segment was torn while being created (no record in it); open deletes it",
                file.path.display()
            ));
            report.segments.push(summary);
            return Ok(());
        }
        Err(Error::Io { context, source }) => return Err(Error::Io { context, source }),
        Err(error) => {
            report.damage.push(damage_of(error, file.path.clone()));
            report.segments.push(summary);
            return Ok(());
        }
    }
    let mut offset = SEGMENT_HEADER_LEN;
    let mut damaged = false;
    let mut decoder = ReplayDecoder::new(summary.version);
    while offset < bytes.len() {
        match decoder.decode(&bytes, offset) {
            Ok((found, len)) if found.kind == RecordKind::Seal => {
                if record::seal_length(&found) != Some(offset as u64) {
                    damaged = true;
                    report.damage.push(damage_at(
                        offset,
                        "a seal that does not vouch for its own offset".into(),
                    ));
                } else if offset + len != bytes.len()
                    && !(newest && crate::recovery::is_prepared_space(&bytes[offset + len..]))
                {
                    damaged = true;
                    report.damage.push(damage_at(
                        offset + len,
                        "bytes follow the segment's seal".into(),
                    ));
                } else {
                    summary.sealed = true;
                }
                break;
            }
            Ok((found, len)) => {
                if found.kind == RecordKind::Padding {
                    summary.padding.0 += 1;
                    summary.padding.1 += len as u64;
                } else {
                    summary.records += 1;
                }
                offset += len;
            }
            // A prepared segment's unused zeros (see FORMAT.md): neither damage nor a torn tail.
            Err(_)
                if newest
                    && (offset as u64) >= durable_len
                    && crate::recovery::is_prepared_space(&bytes[offset..]) =>
            {
                break;
            }
            Err(error) if newest && (offset as u64) >= durable_len => {
                report.torn_tail = Some(TornTail {
                    path: file.path.clone(),
                    offset: offset as u64,
                    bytes: (bytes.len() - offset) as u64,
                    reason: error.to_string(),
                });
                break;
            }
            Err(error) => {
                damaged = true;
                let reason = if newest {
                    format!("{error} (before the checkpoint's replay start {durable_len}: durable, so not a torn write)")
                } else {
                    error.to_string()
                };
                report.damage.push(damage_at(offset, reason));
                // A bad checksum under a sound header still says where the next record starts:
                // go on, so that every damaged record of the file is named.
                match (
                    record::decode_sized(&bytes[offset..]),
                    record::peek_len(&bytes[offset..]),
                ) {
                    (Err(DecodeError::BadChecksum { .. }), Ok(len)) => offset += len,
                    _ => break,
                }
            }
        }
    }
    if !newest && !summary.sealed && !damaged {
        report.damage.push(damage_at(
            bytes.len(),
            "an older segment ends without its seal: it was cut short".into(),
        ));
    }
    if newest && (bytes.len() as u64) < durable_len && !damaged {
        report.damage.push(damage_at(
            bytes.len(),
            format!("the file ends before the checkpoint's replay start {durable_len}"),
        ));
    }
    if newest && summary.sealed {
        report.notes.push(format!(
            "{}: the newest segment is sealed (its successor was never created); open starts one",
            file.path.display()
        ));
    }
    report.segments.push(summary);
    Ok(())
}

fn verify_checkpoint(storage: &dyn Storage, dir: &Path, report: &mut VerifyReport) -> Result<()> {
    let path = dir.join(CHECKPOINT_FILE_NAME);
    let file = match storage.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let bytes = checkpoint::read_whole(file)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    match checkpoint::check_bytes(storage, dir, &bytes) {
        Ok((found, deltas)) => {
            if let Some(failed) = deltas.failed {
                if failed.stale {
                    report.notes.push(format!(
                        "{} and any delta after it are left from an earlier checkpoint ({}): \
                         open ignores them, the next full checkpoint deletes them",
                        failed.path.display(),
                        failed.reason
                    ));
                } else {
                    // Open ignores it and every delta after it, and replays the log from the
                    // chain's last sound file: nothing is lost, but the file is damaged.
                    report.damage.push(Damage {
                        offset: offset_named_in(&failed.reason),
                        path: failed.path,
                        reason: format!(
                            "delta checkpoint: {} (open ignores it and any delta after it)",
                            failed.reason
                        ),
                    });
                }
            }
            report.checkpoint = Some(CheckpointSummary {
                path,
                bytes: bytes.len() as u64,
                entries: found.entries,
                claims: found.claims,
                deltas: deltas.loaded,
                replay_from_segment: segment_of(deltas.replay_from),
                replay_from_offset: offset_of(deltas.replay_from),
            })
        }
        Err(reason) => report.damage.push(Damage {
            offset: offset_named_in(&reason),
            path,
            reason,
        }),
    }
    Ok(())
}

/// The damage an engine error describes (`Corrupt`, `NotASegment`, `UnsupportedVersion`);
/// `path` names the file for any other error.
fn damage_of(error: Error, path: PathBuf) -> Damage {
    match error {
        Error::Corrupt {
            path,
            offset,
            reason,
        } => Damage {
            path,
            offset,
            reason,
        },
        Error::NotASegment { path } => Damage {
            path,
            offset: 0,
            reason: "not an idem segment file (bad magic)".into(),
        },
        Error::UnsupportedVersion {
            path,
            found,
            supported,
        } => Damage {
            path,
            offset: 0,
            reason: format!("format version {found}, this build reads version {supported}"),
        },
        other => Damage {
            path,
            offset: 0,
            reason: other.to_string(),
        },
    }
}

/// The checkpoint decoder names the offset of the structure it rejects in its reason ("...
/// at offset N", "(offset N)"); a reason without one judges the file as a whole (offset 0).
fn offset_named_in(reason: &str) -> u64 {
    reason
        .split("offset ")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .and_then(|digits: String| digits.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_read_from_checkpoint_reasons() {
        assert_eq!(
            offset_named_in("shard 3 checksum mismatch at offset 312"),
            312
        );
        assert_eq!(offset_named_in("truncated at shard 0 (offset 80)"), 80);
        assert_eq!(offset_named_in("header checksum mismatch"), 0);
    }
}
