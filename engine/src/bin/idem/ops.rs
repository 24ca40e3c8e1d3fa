//! The operator commands: `idem stats`, `idem verify`, `idem get`, `idem export` and
//! `idem import`, each on a store directory that no process has open (otherwise idem's
//! `Locked` error). Human output by default, one JSON object with `--json`.
//!
//! `stats`, `get`, `export` and `import` open the store as an application would (recovery runs
//! and may cut a torn tail; what it did is printed); `verify` opens nothing and changes nothing.
//! Every command writes its report to the writer it is given, so tests read it back.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use idem::{Config, RecoveryReport, Store};
use serde_json::{json, Value as Json};

use crate::cli_error::{CliError, CliResult, Context};
use crate::fmt;

/// Exit status of `get` for a key with no value, and of `verify` for a damaged store.
const EXIT_NOT_FOUND_OR_DAMAGED: u8 = 1;
/// Exit status of `get` and `verify` when they could not run (the store is locked, a file
/// could not be read): distinct from "absent" and "damaged".
const EXIT_COULD_NOT_RUN: u8 = 2;

pub const STATS_ABOUT: &str = "Show what a store holds: live keys, claims in doubt, segments \
and bytes, the last checkpoint, the format version.

Opens the store as an application would (it must not be open elsewhere: otherwise the store's \
Locked error): recovery runs and may cut a torn tail of the newest segment, which is reported. \
Nothing else is written.

Examples:
  idem stats /var/lib/payments/dedup
  idem stats /var/lib/payments/dedup --json";

pub const VERIFY_ABOUT: &str = "Check every segment, every record, the checkpoint (with its delta \
checkpoints) and the fence file of a store without changing anything, and report each damage \
with its file and byte offset.

A torn write at the end of the newest segment is reported apart: it is not damage (a crash \
during an append leaves it, nothing acknowledged in Sync mode lies there) and the next open \
cuts it.

Exit status: 0 clean, 1 damage found, 2 could not verify (the store is open elsewhere, a \
file could not be read).

Examples:
  idem verify /var/lib/payments/dedup
  idem verify /var/lib/payments/dedup --json | jq .damage";

pub const GET_ABOUT: &str = "Print the value recorded for a key.

KEY is text, or hex bytes written 0x... (use --text for a text key that starts with 0x). \
Opens the store as an application would (recovery runs).

Exit status: 0 the key has a value, 1 it has none (absent, expired, or claimed without a \
result yet), 2 the store could not be read.

Examples:
  idem get /var/lib/payments/dedup acquirer-7:seq-1001
  idem get /var/lib/payments/dedup 0x00ff10 --json";

pub const EXPORT_ABOUT: &str = "Write the store's live window to FILE: every live entry with \
its value, absolute deadline and fingerprint, and every open claim with its id and lease end, in \
a versioned, checksummed file (spec: engine/FORMAT.md, \"Export file\"). FILE must not exist.

Examples:
  idem export /var/lib/payments/dedup window.idemx
  idem export /var/lib/payments/dedup window.idemx --json";

pub const IMPORT_ABOUT: &str = "Import an export file into a store (new, empty or not).

The whole file is checked first: a damaged or truncated file, or a key the store holds live with \
another value, fingerprint or claim, is refused with an error naming the offset or the key, and \
nothing is written. Keys held identically are skipped (importing twice changes nothing); expired \
entries are skipped. Imported claims are in doubt, with their fencing tokens; later claims are \
fenced above them.

Examples:
  idem import /var/lib/payments/dedup-new window.idemx
  idem import /var/lib/payments/dedup-new window.idemx --json";

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// The key: text, or 0x followed by hex digits.
    pub key: String,
    /// Take KEY as text even if it starts with 0x.
    #[arg(long)]
    pub text: bool,
    /// Print one JSON object instead of the value.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The store directory.
    pub dir: PathBuf,
    /// The export file to create (must not exist).
    pub file: PathBuf,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The store directory (created if missing).
    pub dir: PathBuf,
    /// The export file to read.
    pub file: PathBuf,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

/// Opens an existing store for an operator command, with no background maintenance (nothing is
/// reclaimed or compacted behind the operator's back) and its segments read, not mapped: an
/// operator looking into a suspect device gets its read errors reported, naming the file, not a
/// `SIGBUS` (see `Config::map_segments_at_open`).
fn open_existing(dir: &Path) -> CliResult<Store> {
    if !dir.is_dir() {
        return Err(CliError::new(format!(
            "no store directory {}",
            dir.display()
        )));
    }
    open(dir)
}

fn open(dir: &Path) -> CliResult<Store> {
    let config = Config::default()
        .background_maintenance(false)
        .map_segments_at_open(false);
    Store::open_with(dir, config).context(format!("opening the store {}", dir.display()))
}

pub fn stats(args: &StatsArgs, out: &mut dyn Write) -> CliResult<ExitCode> {
    let store = open_existing(&args.dir)?;
    let stats = store.stats();
    let live = store.count_live()?;
    let in_doubt = store.in_doubt()?.len() as u64;
    let checkpoint = std::fs::metadata(args.dir.join("checkpoint.idem")).ok();
    let checkpoint_millis = checkpoint
        .as_ref()
        .and_then(|m| m.modified().ok())
        .map(unix_millis);
    let recovery = store.recovery_report().clone();
    drop(store);
    if args.json {
        let report = json!({
            "dir": args.dir.display().to_string(),
            "format_version": idem::record::FORMAT_VERSION,
            "live_keys": live.entries,
            "claims": live.claims,
            "claims_in_doubt": in_doubt,
            "state_entries": stats.state_entries,
            "positions": stats.positions,
            "segments": stats.segments,
            "segment_bytes": stats.disk_bytes,
            "index_entries": stats.live_keys,
            "index_bytes": stats.index_bytes,
            "last_checkpoint": checkpoint.as_ref().map(|m| json!({
                "bytes": m.len(),
                "modified_unix_ms": checkpoint_millis,
            })),
            "recovery": recovery_json(&recovery),
        });
        writeln!(out, "{report}")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "store {}", args.dir.display())?;
    let rows = [
        (
            "format version",
            format!(
                "{} (the segment format this build writes; it reads 1 and 2)",
                idem::record::FORMAT_VERSION
            ),
        ),
        ("live keys", fmt::count(live.entries)),
        (
            "open claims",
            format!("{} ({} in doubt)", fmt::count(live.claims), in_doubt),
        ),
        ("state entries", fmt::count(stats.state_entries)),
        ("positions", fmt::count(stats.positions)),
        (
            "segments",
            format!(
                "{}, {}",
                fmt::count(stats.segments),
                fmt::bytes(stats.disk_bytes as f64)
            ),
        ),
        (
            "index",
            format!(
                "{} entries (live plus expired not yet reclaimed), {}",
                fmt::count(stats.live_keys),
                fmt::bytes(stats.index_bytes as f64)
            ),
        ),
        (
            "last checkpoint",
            match (&checkpoint, checkpoint_millis) {
                (Some(meta), Some(millis)) => {
                    format!("{}, {}", utc(millis), fmt::bytes(meta.len() as f64))
                }
                (Some(meta), None) => fmt::bytes(meta.len() as f64),
                _ => "none".into(),
            },
        ),
    ];
    for (name, value) in rows {
        writeln!(out, "  {name:<16} {value}")?;
    }
    write_recovery(out, &recovery)?;
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: &VerifyArgs, out: &mut dyn Write) -> CliResult<ExitCode> {
    let report = match idem::verify(&args.dir) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("idem: error: verifying {}: {error}", args.dir.display());
            return Ok(ExitCode::from(EXIT_COULD_NOT_RUN));
        }
    };
    let code = if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_FOUND_OR_DAMAGED)
    };
    if args.json {
        let damage: Vec<Json> = report
            .damage
            .iter()
            .map(|d| json!({"file": d.path.display().to_string(), "offset": d.offset, "reason": d.reason}))
            .collect();
        let segments: Vec<Json> = report
            .segments
            .iter()
            .map(|s| json!({"file": s.path.display().to_string(), "id": s.id, "bytes": s.bytes, "records": s.records, "padding_records": s.padding.0, "padding_bytes": s.padding.1, "sealed": s.sealed}))
            .collect();
        let json = json!({
            "dir": args.dir.display().to_string(),
            "clean": report.is_clean(),
            "damage": damage,
            "torn_tail": report.torn_tail.as_ref().map(|t| json!({
                "file": t.path.display().to_string(), "offset": t.offset, "bytes": t.bytes, "reason": t.reason,
            })),
            "segments": segments,
            "records": report.records(),
            "segment_bytes": report.segment_bytes(),
            "checkpoint": report.checkpoint.as_ref().map(|c| json!({
                "file": c.path.display().to_string(), "bytes": c.bytes, "entries": c.entries,
                "claims": c.claims, "deltas": c.deltas,
                "replay_from_segment": c.replay_from_segment,
                "replay_from_offset": c.replay_from_offset,
            })),
            "notes": report.notes,
        });
        writeln!(out, "{json}")?;
        return Ok(code);
    }
    writeln!(out, "verifying {}", args.dir.display())?;
    for segment in &report.segments {
        writeln!(
            out,
            "  {}  {} records, {}{}{}",
            file_name(&segment.path),
            fmt::count(segment.records),
            fmt::bytes(segment.bytes as f64),
            if segment.padding.0 > 0 {
                format!(
                    " ({} of them padding)",
                    fmt::bytes(segment.padding.1 as f64)
                )
            } else {
                String::new()
            },
            if segment.sealed { ", sealed" } else { "" }
        )?;
    }
    match &report.checkpoint {
        Some(c) => writeln!(
            out,
            "  {}  {} entries, {} open claims, {}replay from segment {} offset {}",
            file_name(&c.path),
            fmt::count(c.entries),
            c.claims,
            match c.deltas {
                0 => String::new(),
                1 => "1 delta, ".to_string(),
                n => format!("{n} deltas, "),
            },
            c.replay_from_segment,
            c.replay_from_offset
        )?,
        None if report
            .damage
            .iter()
            .any(|d| d.path.ends_with("checkpoint.idem")) =>
        {
            writeln!(
                out,
                "  checkpoint.idem  damaged (see below): open ignores it"
            )?
        }
        None => writeln!(out, "  no checkpoint")?,
    }
    if let Some(tail) = &report.torn_tail {
        writeln!(
            out,
            "torn tail (not damage; the next open cuts it): {} at byte offset {}, {} bytes: {}",
            tail.path.display(),
            tail.offset,
            tail.bytes,
            tail.reason
        )?;
    }
    for note in &report.notes {
        writeln!(out, "note: {note}")?;
    }
    for damage in &report.damage {
        writeln!(out, "DAMAGE: {damage}")?;
    }
    if report.is_clean() {
        writeln!(
            out,
            "clean: {} records in {} segments",
            fmt::count(report.records()),
            report.segments.len()
        )?;
    } else {
        writeln!(out, "{} damaged structures found", report.damage.len())?;
    }
    Ok(code)
}

pub fn get(args: &GetArgs, out: &mut dyn Write) -> CliResult<ExitCode> {
    let key = if args.text {
        args.key.clone().into_bytes()
    } else {
        parse_key(&args.key).map_err(CliError::new)?
    };
    let found = open_existing(&args.dir).and_then(|store| {
        let value = store.get(&key)?;
        let claim = store.in_doubt()?.into_iter().find(|t| t.key() == key);
        Ok((value, claim, store.recovery_report().clone()))
    });
    let (value, claim, recovery) = match found {
        Ok(found) => found,
        Err(error) => {
            eprintln!("idem: error: {error}");
            return Ok(ExitCode::from(EXIT_COULD_NOT_RUN));
        }
    };
    let code = if value.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_FOUND_OR_DAMAGED)
    };
    if args.json {
        let json = json!({
            "key_hex": hex(&key),
            "found": value.is_some(),
            "value": value.as_ref().and_then(|v| std::str::from_utf8(v.as_ref()).ok().map(str::to_owned)),
            "value_hex": value.as_ref().map(|v| hex(v.as_ref())),
            "claim": claim.as_ref().map(|t| json!({
                "in_doubt": true,
                "fencing_token": t.fencing_token(),
                "lease_until_unix_ms": unix_millis(t.lease_until()),
            })),
            "recovery": recovery_json(&recovery),
        });
        writeln!(out, "{json}")?;
        return Ok(code);
    }
    write_recovery_if_notable(&recovery)?;
    match (&value, &claim) {
        (Some(value), _) => writeln!(out, "{}", printable(value.as_ref()))?,
        (None, Some(token)) => eprintln!(
            "claimed, no result yet: in doubt until {} (fencing token {})",
            utc(unix_millis(token.lease_until())),
            token.fencing_token()
        ),
        (None, None) => eprintln!("absent (or expired)"),
    }
    Ok(code)
}

pub fn export(args: &ExportArgs, out: &mut dyn Write) -> CliResult<ExitCode> {
    let store = open_existing(&args.dir)?;
    let report = store
        .export(&args.file)
        .context(format!("exporting to {}", args.file.display()))?;
    let json = json!({
        "file": args.file.display().to_string(),
        "entries": report.entries,
        "claims": report.claims,
        "bytes": report.bytes,
    });
    let human = format!(
        "exported {} entries and {} open claims to {} ({})",
        fmt::count(report.entries),
        fmt::count(report.claims),
        args.file.display(),
        fmt::bytes(report.bytes as f64)
    );
    finish(out, args.json, json, &human, store)
}

pub fn import(args: &ImportArgs, out: &mut dyn Write) -> CliResult<ExitCode> {
    let store = open(&args.dir)?;
    let report = store
        .import(&args.file)
        .context(format!("importing {}", args.file.display()))?;
    let json = json!({
        "file": args.file.display().to_string(),
        "entries": report.entries,
        "claims": report.claims,
        "already_present": report.already_present,
        "expired": report.expired,
    });
    let human = format!(
        "imported {} entries and {} claims (now in doubt) into {}; {} already present, {} expired (skipped)",
        fmt::count(report.entries),
        fmt::count(report.claims),
        args.dir.display(),
        fmt::count(report.already_present),
        fmt::count(report.expired)
    );
    finish(out, args.json, json, &human, store)
}

/// Closes the store (its files are complete once this returns) and prints the report, with
/// what recovery did on open.
fn finish(
    out: &mut dyn Write,
    as_json: bool,
    mut json: Json,
    human: &str,
    store: Store,
) -> CliResult<ExitCode> {
    let recovery = store.recovery_report().clone();
    drop(store);
    if as_json {
        json["recovery"] = recovery_json(&recovery);
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{human}")?;
        write_recovery(out, &recovery)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn recovery_json(report: &RecoveryReport) -> Json {
    json!({
        "segments_replayed": report.segments_replayed,
        "records_replayed": report.records_replayed,
        "checkpoint_entries_loaded": report.checkpoint_entries_loaded,
        "checkpoint_ignored": report.checkpoint_ignored,
        "truncated_tail": report.truncated_tail.as_ref().map(|t| json!({
            "file": t.path.display().to_string(), "offset": t.offset, "bytes_cut": t.bytes_cut, "reason": t.reason,
        })),
        "removed_empty_segment": report.removed_empty_segment.as_ref().map(|p| p.display().to_string()),
    })
}

fn write_recovery(out: &mut dyn Write, report: &RecoveryReport) -> std::io::Result<()> {
    writeln!(
        out,
        "  {:<16} {} segments, {} records replayed; {} entries from the checkpoint",
        "recovery on open",
        report.segments_replayed,
        fmt::count(report.records_replayed),
        fmt::count(report.checkpoint_entries_loaded)
    )?;
    for line in recovery_notes(report) {
        writeln!(out, "  {:<16} {line}", "")?;
    }
    Ok(())
}

/// Recovery's actions, on stderr: `get` keeps stdout for the value alone.
fn write_recovery_if_notable(report: &RecoveryReport) -> std::io::Result<()> {
    for line in recovery_notes(report) {
        eprintln!("recovery: {line}");
    }
    Ok(())
}

fn recovery_notes(report: &RecoveryReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(tail) = &report.truncated_tail {
        lines.push(format!(
            "cut a torn tail: {} at byte offset {}, {} bytes ({})",
            tail.path.display(),
            tail.offset,
            tail.bytes_cut,
            tail.reason
        ));
    }
    if let Some(path) = &report.removed_empty_segment {
        lines.push(format!(
            "deleted a segment torn while being created: {}",
            path.display()
        ));
    }
    if let Some(reason) = &report.checkpoint_ignored {
        lines.push(format!("checkpoint not used: {reason}"));
    }
    lines
}

/// A key from the command line: `0x` and an even number of hex digits, or text.
fn parse_key(text: &str) -> Result<Vec<u8>, String> {
    let Some(digits) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) else {
        return Ok(text.as_bytes().to_vec());
    };
    if digits.is_empty() || digits.len() % 2 != 0 {
        return Err(format!(
            "bad hex key {text:?}: expected 0x and an even number of hex digits (use --text for a text key)"
        ));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| {
                format!(
                    "bad hex key {text:?}: {:?} is not a hex byte (use --text for a text key)",
                    &digits[i..i + 2]
                )
            })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes as text if they are printable UTF-8, else `0x` and hex.
fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(|c| c.is_control() && c != '\t') => text.to_owned(),
        _ => format!("0x{}", hex(bytes)),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time, to the second.
fn utc(millis: u64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A closed store of a few sealed segments, with a checkpoint and one open claim.
    fn store_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::default()
            .background_maintenance(false)
            .segment_size_bytes_for_testing(Config::MIN_TEST_SEGMENT_SIZE_BYTES);
        let store = Store::open_with(dir.path(), config).unwrap();
        for i in 0..150u32 {
            let value = format!("value-{i}-{}", "z".repeat(40));
            store
                .check_or_insert(
                    format!("k{i}").as_bytes(),
                    Duration::from_secs(3600),
                    value.as_bytes(),
                )
                .unwrap();
        }
        store
            .check_or_insert(&[0, 0xff], Duration::from_secs(3600), &[1, 2, 3])
            .unwrap();
        let idem::Claim::Acquired(_) = store.claim(b"claimed", Duration::from_secs(600)).unwrap()
        else {
            panic!("not acquired")
        };
        store.close().unwrap();
        dir
    }

    fn json_of(out: &[u8]) -> Json {
        serde_json::from_slice(out).unwrap_or_else(|e| {
            panic!(
                "not one JSON object ({e}): {}",
                String::from_utf8_lossy(out)
            )
        })
    }

    fn oldest_segment(dir: &Path) -> PathBuf {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("segment-")
            })
            .collect();
        names.sort();
        names.remove(0)
    }

    #[test]
    fn verify_exits_0_when_clean_1_on_damage_and_2_when_locked() {
        let _fork = crate::fork_guard();
        let dir = store_dir();
        let args = |json| VerifyArgs {
            dir: dir.path().to_path_buf(),
            json,
        };
        let mut out = Vec::new();
        assert_eq!(verify(&args(true), &mut out).unwrap(), ExitCode::SUCCESS);
        let report = json_of(&out);
        assert_eq!(report["clean"], true);
        assert_eq!(report["records"], 152);
        let mut human = Vec::new();
        verify(&args(false), &mut human).unwrap();
        assert!(String::from_utf8(human)
            .unwrap()
            .contains("clean: 152 records"));

        let oldest = oldest_segment(dir.path());
        let mut bytes = std::fs::read(&oldest).unwrap();
        bytes[100] ^= 0x01;
        std::fs::write(&oldest, &bytes).unwrap();
        let mut out = Vec::new();
        assert_eq!(verify(&args(true), &mut out).unwrap(), ExitCode::from(1));
        let report = json_of(&out);
        assert_eq!(report["clean"], false);
        let damage = &report["damage"][0];
        assert_eq!(damage["file"], oldest.display().to_string());
        assert!(damage["offset"].as_u64().unwrap() <= 100, "{damage}");
        let mut human = Vec::new();
        verify(&args(false), &mut human).unwrap();
        let human = String::from_utf8(human).unwrap();
        assert!(
            human.contains(&format!("DAMAGE: {} at byte offset", oldest.display())),
            "{human}"
        );
        // Verify changed nothing.
        assert_eq!(std::fs::read(&oldest).unwrap(), bytes);

        std::fs::write(&oldest, {
            bytes[100] ^= 0x01;
            &bytes
        })
        .unwrap();
        let _open = Store::open(dir.path()).unwrap();
        let mut out = Vec::new();
        assert_eq!(verify(&args(true), &mut out).unwrap(), ExitCode::from(2));
        assert!(out.is_empty());
    }

    #[test]
    fn stats_and_get_report_what_the_store_holds() {
        let _fork = crate::fork_guard();
        let dir = store_dir();
        let mut out = Vec::new();
        let stats_args = StatsArgs {
            dir: dir.path().to_path_buf(),
            json: true,
        };
        stats(&stats_args, &mut out).unwrap();
        let report = json_of(&out);
        assert_eq!(report["live_keys"], 151);
        assert_eq!(report["claims_in_doubt"], 1);
        assert!(report["segments"].as_u64().unwrap() >= 2);
        assert!(report["last_checkpoint"]["bytes"].as_u64().unwrap() > 0);
        assert_eq!(report["format_version"], idem::record::FORMAT_VERSION);

        let get_args = |key: &str, text| GetArgs {
            dir: dir.path().to_path_buf(),
            key: key.into(),
            text,
            json: false,
        };
        let mut out = Vec::new();
        assert_eq!(
            get(&get_args("k7", false), &mut out).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("value-7-{}\n", "z".repeat(40))
        );
        let mut out = Vec::new();
        assert_eq!(
            get(&get_args("0x00ff", false), &mut out).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(String::from_utf8(out).unwrap(), "0x010203\n");
        let mut out = Vec::new();
        assert_eq!(
            get(&get_args("0x00ff", true), &mut out).unwrap(),
            ExitCode::from(1)
        );
        assert!(out.is_empty());
        let mut out = Vec::new();
        let claimed = GetArgs {
            json: true,
            ..get_args("claimed", false)
        };
        assert_eq!(get(&claimed, &mut out).unwrap(), ExitCode::from(1));
        let report = json_of(&out);
        assert_eq!(report["found"], false);
        assert_eq!(report["claim"]["in_doubt"], true);

        // Open elsewhere: a clear Locked error, and get says it could not run (exit 2).
        let _open = Store::open(dir.path()).unwrap();
        let error = stats(&stats_args, &mut Vec::new()).unwrap_err().to_string();
        assert!(error.contains("already open"), "{error}");
        assert_eq!(
            get(&get_args("k7", false), &mut Vec::new()).unwrap(),
            ExitCode::from(2)
        );
    }

    #[test]
    fn export_then_import_reproduces_the_store_and_refuses_conflicts() {
        let _fork = crate::fork_guard();
        let dir = store_dir();
        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("window.idemx");
        let mut out = Vec::new();
        let export_args = ExportArgs {
            dir: dir.path().to_path_buf(),
            file: file.clone(),
            json: true,
        };
        export(&export_args, &mut out).unwrap();
        let report = json_of(&out);
        assert_eq!(
            (report["entries"].as_u64(), report["claims"].as_u64()),
            (Some(151), Some(1))
        );
        // Never over an existing file.
        assert!(export(&export_args, &mut Vec::new()).is_err());

        let target = work.path().join("target");
        let import_args = ImportArgs {
            dir: target.clone(),
            file: file.clone(),
            json: true,
        };
        let mut out = Vec::new();
        import(&import_args, &mut out).unwrap();
        let report = json_of(&out);
        assert_eq!(
            (report["entries"].as_u64(), report["claims"].as_u64()),
            (Some(151), Some(1))
        );
        let mut out = Vec::new();
        get(
            &GetArgs {
                dir: target.clone(),
                key: "k42".into(),
                text: false,
                json: false,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("value-42-{}\n", "z".repeat(40))
        );

        let conflicted = work.path().join("conflicted");
        let store = Store::open(&conflicted).unwrap();
        store
            .check_or_insert(b"k3", Duration::from_secs(60), b"another value")
            .unwrap();
        drop(store);
        let error = import(
            &ImportArgs {
                dir: conflicted.clone(),
                ..import_args
            },
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("key \"k3\""), "{error}");
        let store = Store::open(&conflicted).unwrap();
        assert_eq!(store.get(b"k4").unwrap(), None, "nothing was imported");
    }

    #[test]
    fn keys_parse_as_text_or_hex() {
        let _fork = crate::fork_guard();
        assert_eq!(parse_key("order-17").unwrap(), b"order-17");
        assert_eq!(parse_key("0x00ff10").unwrap(), vec![0, 0xff, 0x10]);
        assert_eq!(parse_key("0XAB").unwrap(), vec![0xab]);
        for bad in ["0x", "0xabc", "0xzz"] {
            assert!(parse_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_print_as_text_or_hex() {
        let _fork = crate::fork_guard();
        assert_eq!(printable(b"charged 5 EUR"), "charged 5 EUR");
        assert_eq!(printable(&[0, 1, 0xff]), "0x0001ff");
    }

    #[test]
    fn utc_dates() {
        let _fork = crate::fork_guard();
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
