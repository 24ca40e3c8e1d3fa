//! Guards recovery from damaged files: a torn or garbled tail of the newest segment is cut back to
//! a prefix of whole records (never a panic, never an invented key or value), while damage in an
//! older segment or a foreign file named like a segment is refused with a typed error that names
//! the file and the offset, and a damaged checkpoint is ignored in favour of the log.
//!
//! Each scenario runs on a store left as a crash leaves it (dropped, no checkpoint: recovery
//! replays the log) and, where it matters, on a cleanly closed one (whose checkpoint recovery
//! trusts for everything before the newest segment).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use idem::record::SEGMENT_HEADER_LEN;
use idem::{Config, Durability, Error, Outcome, Store};
use idem_tests::{
    copy_dir, newest_segment, parse_segment, seeded_rng, segment_files, ParsedRecord, LONG_TTL,
};
use rand::rngs::StdRng;
use rand::Rng;

const CASES: usize = 60;
const HEADER_LEN: u64 = SEGMENT_HEADER_LEN as u64;

fn config() -> Config {
    // No background maintenance: the files must stay exactly as the test parsed them.
    Config::default()
        .durability(Durability::Never)
        .segment_size_bytes(1 << 20)
        .background_maintenance(false)
}

const CHECKPOINT_FILE_NAME: &str = "checkpoint.idem";

/// A store of two segments (a full older one and a newest of about a hundred KiB), with
/// removals and re-inserts among the inserts, and its records as parsed from the files.
struct Base {
    _scratch: tempfile::TempDir,
    /// The store as a crash leaves it: everything written, no checkpoint.
    dir: PathBuf,
    /// The same store after a clean open and close: with a checkpoint.
    closed_dir: PathBuf,
    /// The records of every segment but the newest, in log order.
    older: Vec<ParsedRecord>,
    /// The records of the newest segment, in order.
    newest: Vec<ParsedRecord>,
}

impl Base {
    fn build(rng: &mut StdRng) -> Base {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("base");
        let store = Store::open_with(&dir, config()).unwrap();
        let mut live: Vec<usize> = Vec::new();
        let mut after_roll = 0;
        let mut i = 0;
        while after_roll < 400 {
            let key = format!("torn/{i}");
            let len = rng.gen_range(0..400);
            let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            assert_eq!(
                store
                    .check_or_insert(key.as_bytes(), LONG_TTL, &value)
                    .unwrap(),
                Outcome::Inserted
            );
            live.push(i);
            if i % 9 == 0 {
                let victim = live.swap_remove(rng.gen_range(0..live.len()));
                let key = format!("torn/{victim}");
                assert!(store.remove(key.as_bytes()).unwrap());
                if rng.gen_bool(0.5) {
                    store
                        .check_or_insert(key.as_bytes(), LONG_TTL, b"second life")
                        .unwrap();
                    live.push(victim);
                }
            }
            // `stats` visits every shard: ask now and then until the log has rolled. By the
            // bytes appended, not `segments`: that counts the files the writer has created,
            // which under load lags the appends by a segment or more (the loop then went on
            // into a third and fourth segment).
            if after_roll > 0 || (i % 32 == 0 && store.stats().bytes_appended >= 1 << 20) {
                after_roll += 1;
            }
            i += 1;
        }
        // Dropped, not closed: the writer writes everything, but no checkpoint is taken.
        drop(store);
        assert!(!dir.join(CHECKPOINT_FILE_NAME).exists());
        let closed_dir = scratch.path().join("closed");
        copy_dir(&dir, &closed_dir);
        Store::open_with(&closed_dir, config())
            .unwrap()
            .close()
            .unwrap();
        assert!(closed_dir.join(CHECKPOINT_FILE_NAME).exists());
        let segments = segment_files(&dir);
        assert_eq!(segments.len(), 2, "the base store has two segments");
        let mut parsed: Vec<Vec<ParsedRecord>> = segments
            .values()
            .map(|path| parse_segment(&std::fs::read(path).unwrap()))
            .collect();
        let newest = parsed.pop().unwrap();
        Base {
            _scratch: scratch,
            dir,
            closed_dir,
            older: parsed.concat(),
            newest,
        }
    }

    /// The key → value map after replaying the older segments and the first `kept` records of
    /// the newest one.
    fn state_after(&self, kept: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.live_records_after(kept)
            .into_iter()
            .map(|(key, record)| (key, record.value.clone()))
            .collect()
    }

    /// The record holding each live key's entry after replaying the older segments and the
    /// first `kept` records of the newest one.
    fn live_records_after(&self, kept: usize) -> BTreeMap<Vec<u8>, &ParsedRecord> {
        let mut state = BTreeMap::new();
        for record in self.older.iter().chain(&self.newest[..kept]) {
            if record.insert {
                state.insert(record.key.clone(), record);
            } else {
                state.remove(&record.key);
            }
        }
        state
    }

    /// The store directory to damage: crash-like (no checkpoint) or cleanly closed.
    fn source(&self, checkpoint: bool) -> &Path {
        if checkpoint {
            &self.closed_dir
        } else {
            &self.dir
        }
    }

    /// Insert records of the older segment(s) that hold their key's live entry (no later record
    /// names the key), so reading the key reads that very record.
    fn live_older_inserts(&self) -> Vec<&ParsedRecord> {
        let mut last_of_key: BTreeMap<&[u8], u64> = BTreeMap::new();
        for (i, record) in self.older.iter().chain(&self.newest).enumerate() {
            last_of_key.insert(&record.key, i as u64);
        }
        self.older
            .iter()
            .enumerate()
            .filter(|(i, r)| r.insert && last_of_key[&r.key[..]] == *i as u64)
            .map(|(_, r)| r)
            .collect()
    }

    /// Every key any record names.
    fn all_keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .older
            .iter()
            .chain(&self.newest)
            .map(|r| r.key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Asserts that `store` holds exactly `expected` among `keys`, and nothing else.
fn assert_holds(
    store: &Store,
    keys: &[Vec<u8>],
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    context: &str,
) {
    assert_holds_or_reports(store, keys, expected, &Damaged::default(), context);
}

/// Records whose damage recovery did not look at (a checkpoint vouched for them), which reading
/// may therefore report: their file and, per key, the offset of the key's damaged record.
#[derive(Debug, Default)]
struct Damaged {
    path: PathBuf,
    record_start_of_key: BTreeMap<Vec<u8>, u64>,
}

/// Like [`assert_holds`], but a key whose record is in `damaged` may instead answer
/// `Error::Corrupt` naming that file and the record's offset. Never a wrong value.
fn assert_holds_or_reports(
    store: &Store,
    keys: &[Vec<u8>],
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    damaged: &Damaged,
    context: &str,
) {
    for key in keys {
        let name = String::from_utf8_lossy(key);
        let got = match store.get(key) {
            Ok(got) => got.map(idem::Value::into_vec),
            Err(Error::Corrupt { path, offset, .. })
                if same_file(&path, &damaged.path)
                    && damaged.record_start_of_key.get(key) == Some(&offset) =>
            {
                continue;
            }
            Err(error) => panic!("{context}: get {name}: {error}"),
        };
        assert_eq!(
            got.as_ref(),
            expected.get(key),
            "{context}: key {}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(store.stats().live_keys, expected.len() as u64, "{context}");
}

/// How a case damages the newest segment.
#[derive(Debug)]
struct Damage {
    /// The file is cut to this length.
    cut_to: Option<u64>,
    /// Bytes appended after the (possibly cut) end: zeros, as a file system may leave after a
    /// crash, or garbage.
    appended: Vec<u8>,
    /// Offsets whose byte is XORed with a nonzero mask, within the last 4 KiB.
    flips: Vec<(u64, u8)>,
}

impl Damage {
    fn random(rng: &mut StdRng, len: u64) -> Damage {
        let mut damage = Damage {
            cut_to: None,
            appended: Vec::new(),
            flips: Vec::new(),
        };
        match rng.gen_range(0..5) {
            0 => damage.cut_to = Some(rng.gen_range(0..=len)),
            1 => damage.cut_to = Some(rng.gen_range(len.saturating_sub(4096)..=len)),
            2 => {}
            3 => damage.appended = vec![0; rng.gen_range(1..4096)],
            _ => damage.appended = (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect(),
        }
        let end = damage.cut_to.unwrap_or(len);
        if damage.appended.is_empty() && (damage.cut_to.is_none() || rng.gen_bool(0.5)) {
            for _ in 0..rng.gen_range(1..=8) {
                if end == 0 {
                    break;
                }
                let at = rng.gen_range(end.saturating_sub(4096)..end);
                damage.flips.push((at, rng.gen_range(1..=255)));
            }
        }
        damage
    }

    fn apply(&self, bytes: &mut Vec<u8>) {
        if let Some(cut) = self.cut_to {
            bytes.truncate(cut as usize);
        }
        bytes.extend_from_slice(&self.appended);
        for &(at, mask) in &self.flips {
            bytes[at as usize] ^= mask;
        }
    }

    /// The first byte offset that differs from the intact file (or its end, if only cut).
    fn first_damaged_offset(&self, len: u64) -> u64 {
        let end = self.cut_to.unwrap_or(len);
        self.flips.iter().map(|&(at, _)| at).fold(end, u64::min)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a.file_name() == b.file_name()
}

/// Many random damages of the newest segment: open succeeds with a prefix of its records that
/// includes every record before the first damaged byte, or fails with a typed damage error
/// (without a checkpoint, only when the segment header itself was hit).
fn damaged_newest_segment_cases(checkpoint: bool) {
    let (mut rng, seed) = seeded_rng(&format!("damaged newest segment, checkpoint {checkpoint}"));
    let base = Base::build(&mut rng);
    let source = base.source(checkpoint);
    let keys = base.all_keys();
    // Reading every key is slow in a debug build; most cases read the keys the newest segment
    // names and a tenth of the others (`live_keys` still counts them all).
    let newest_keys: std::collections::BTreeSet<&Vec<u8>> =
        base.newest.iter().map(|r| &r.key).collect();
    let some_keys: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .filter(|(i, key)| i % 10 == 0 || newest_keys.contains(key))
        .map(|(_, key)| key.clone())
        .collect();
    let base_newest = newest_segment(source);
    let original = std::fs::read(&base_newest).unwrap();
    let len = original.len() as u64;
    let scratch = tempfile::tempdir().unwrap();
    let mut outcomes = BTreeMap::<&str, usize>::new();

    for case in 0..CASES {
        let damage = Damage::random(&mut rng, len);
        let context = format!("seed {seed}, checkpoint {checkpoint}, case {case}, {damage:?}");
        let dir = scratch.path().join(format!("case-{case}"));
        copy_dir(source, &dir);
        let newest = newest_segment(&dir);
        let mut bytes = original.clone();
        damage.apply(&mut bytes);
        std::fs::write(&newest, &bytes).unwrap();

        let first_damaged = damage.first_damaged_offset(len);
        // Records wholly before the first damaged byte must survive; records cut off must not.
        let kept_min = base
            .newest
            .iter()
            .filter(|r| r.end <= first_damaged)
            .count();
        let kept_max = match damage.cut_to {
            Some(cut) => base.newest.iter().filter(|r| r.end <= cut).count(),
            None => base.newest.len(),
        };

        let opened = catch_unwind(AssertUnwindSafe(|| Store::open_with(&dir, config())))
            .unwrap_or_else(|_| panic!("{context}: open panicked"));
        let store = match opened {
            Ok(store) => store,
            Err(error) => {
                // Bytes a checkpoint vouched for are gone: refusing to open is fair. Without a
                // checkpoint, a torn tail must always be cut, so only a bad header refuses.
                assert!(
                    checkpoint || first_damaged < HEADER_LEN,
                    "{context}: only a damaged header may refuse to open, got {error}"
                );
                match &error {
                    Error::Corrupt { path, .. }
                    | Error::NotASegment { path }
                    | Error::UnsupportedVersion { path, .. } => {
                        assert!(same_file(path, &newest), "{context}: {error}")
                    }
                    other => panic!("{context}: unexpected error {other:?}"),
                }
                *outcomes.entry("refused").or_default() += 1;
                std::fs::remove_dir_all(&dir).unwrap();
                continue;
            }
        };
        let report = store.recovery_report().clone();
        let kept = if let Some(removed) = &report.removed_empty_segment {
            assert!(same_file(removed, &newest), "{context}: {report:?}");
            assert!(first_damaged < HEADER_LEN, "{context}: {report:?}");
            *outcomes.entry("segment removed").or_default() += 1;
            0
        } else if let Some(tail) = &report.truncated_tail {
            assert!(same_file(&tail.path, &newest), "{context}: {report:?}");
            assert_eq!(
                tail.bytes_cut,
                bytes.len() as u64 - tail.offset,
                "{context}"
            );
            assert!(!tail.reason.is_empty());
            assert_eq!(
                std::fs::metadata(&newest).unwrap().len(),
                tail.offset,
                "{context}: the file ends where the tail was cut"
            );
            *outcomes.entry("tail cut").or_default() += 1;
            if tail.offset == HEADER_LEN {
                0
            } else {
                1 + base
                    .newest
                    .iter()
                    .position(|r| r.end == tail.offset)
                    .unwrap_or_else(|| {
                        panic!(
                            "{context}: tail cut at {}, not a record boundary",
                            tail.offset
                        )
                    })
            }
        } else {
            *outcomes.entry("nothing cut").or_default() += 1;
            kept_max
        };
        assert!(
            (kept_min..=kept_max).contains(&kept),
            "{context}: kept {kept} records of the newest segment, expected {kept_min}..={kept_max}"
        );
        let mut expected = base.state_after(kept);
        let checked = if case % 10 == 0 { &keys } else { &some_keys };
        // Recovery replays the newest segment only from where the checkpoint was taken, so
        // damage before that point (which a crash cannot cause: those bytes were fsynced) is
        // found when the record is read instead.
        let damaged = Damaged {
            path: newest.clone(),
            record_start_of_key: if checkpoint {
                base.live_records_after(kept)
                    .into_iter()
                    .filter(|(_, r)| {
                        base.newest.as_ptr_range().contains(&std::ptr::from_ref(*r))
                            && r.end > first_damaged
                    })
                    .map(|(key, r)| (key, r.start))
                    .collect()
            } else {
                BTreeMap::new()
            },
        };
        assert_holds_or_reports(&store, checked, &expected, &damaged, &context);

        // The recovered store goes on: a new key lands after the cut and survives reopen.
        if case % 6 == 0 {
            let key = format!("after-recovery/{case}").into_bytes();
            assert_eq!(
                store.check_or_insert(&key, LONG_TTL, b"new").unwrap(),
                Outcome::Inserted
            );
            expected.insert(key.clone(), b"new".to_vec());
            store.close().unwrap();
            let store = Store::open_with(&dir, config()).unwrap();
            assert_eq!(store.recovery_report().truncated_tail, None, "{context}");
            let mut checked = checked.clone();
            checked.push(key);
            let context = format!("{context}, reopened");
            assert_holds_or_reports(&store, &checked, &expected, &damaged, &context);
        } else {
            drop(store);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!("outcomes over {CASES} cases: {outcomes:?}");
}

#[test]
fn a_torn_newest_segment_recovers_a_prefix() {
    damaged_newest_segment_cases(false);
}

/// The same damage after a clean close, whose checkpoint lists entries in the newest segment:
/// recovery must not keep entries for records it cuts off (it may refuse to open instead), and a
/// damaged record it did not replay must be reported as corrupt when read, never served.
#[test]
fn a_torn_newest_segment_under_a_checkpoint_recovers_a_prefix_or_fails_cleanly() {
    damaged_newest_segment_cases(true);
}

/// Damage to the middle of an older segment (which was fsynced whole before the log moved on)
/// is corruption, reported with the file and the offset of the damaged record: at open when
/// recovery replays that segment, or, when a checkpoint spares recovery from reading it, at the
/// latest when the damaged record is read. Never a wrong value.
#[test]
fn damage_in_an_older_segment_is_corrupt_with_file_and_offset() {
    let (mut rng, seed) = seeded_rng("damage_in_an_older_segment_is_corrupt");
    let base = Base::build(&mut rng);
    let older_name = segment_files(&base.dir).into_values().next().unwrap();
    let original = std::fs::read(&older_name).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    // A record holding its key's live entry, not the first, with 512 bytes after its start.
    let candidates: Vec<&ParsedRecord> = base
        .live_older_inserts()
        .into_iter()
        .filter(|r| r.start > HEADER_LEN && r.start + 512 < original.len() as u64)
        .collect();
    let victim = candidates[rng.gen_range(0..candidates.len())];
    let flip_at = rng.gen_range(victim.start..victim.end);
    let cut_at = rng.gen_range(victim.start + 1..victim.end);
    type Damage<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
    // (what, how to damage, expected offset in the error)
    let cases: Vec<(&str, Damage, u64)> = vec![
        (
            "a flipped byte in a record",
            Box::new(|b: &mut Vec<u8>| b[flip_at as usize] ^= 0x40),
            victim.start,
        ),
        (
            "a cut inside a record",
            Box::new(|b: &mut Vec<u8>| b.truncate(cut_at as usize)),
            victim.start,
        ),
        (
            "a zeroed run from a record on",
            Box::new(|b: &mut Vec<u8>| {
                b[victim.start as usize..victim.start as usize + 512].fill(0)
            }),
            victim.start,
        ),
        (
            "a flipped byte in the header",
            Box::new(|b: &mut Vec<u8>| b[20] ^= 0x01),
            0,
        ),
    ];
    for (case, (what, damage, expected_offset)) in cases.into_iter().enumerate() {
        for checkpoint in [false, true] {
            let context = format!("seed {seed}, checkpoint {checkpoint}: {what}");
            let dir = scratch.path().join(format!("case-{case}-{checkpoint}"));
            copy_dir(base.source(checkpoint), &dir);
            let target = segment_files(&dir).into_values().next().unwrap();
            let mut bytes = original.clone();
            damage(&mut bytes);
            std::fs::write(&target, &bytes).unwrap();
            let newest_before = std::fs::read(newest_segment(&dir)).unwrap();

            let error = match Store::open_with(&dir, config()) {
                Err(error) => error,
                Ok(store) if checkpoint && expected_offset != 0 => {
                    // The checkpoint spared recovery from reading the segment; the read must
                    // find the damage.
                    match store.get(&victim.key) {
                        Err(error) => error,
                        Ok(value) => panic!("{context}: damaged record read as {value:?}"),
                    }
                }
                Ok(_) => panic!("{context}: opened a store with a damaged older segment"),
            };
            match &error {
                Error::Corrupt {
                    path,
                    offset,
                    reason,
                } => {
                    assert!(same_file(path, &older_name), "{context}: {error}");
                    assert_eq!(*offset, expected_offset, "{context}: {error}");
                    assert!(!reason.is_empty());
                }
                other => panic!("{context}: expected Corrupt, got {other:?}"),
            }
            let message = error.to_string();
            let name = older_name.file_name().unwrap().to_str().unwrap();
            assert!(message.contains(name), "{context}: {message}");
            assert!(
                message.contains(&expected_offset.to_string()),
                "{context}: {message}"
            );
            // No file is "repaired" by cutting it, and the newest segment is untouched.
            assert_eq!(std::fs::read(&target).unwrap(), bytes, "{context}");
            assert_eq!(
                std::fs::read(newest_segment(&dir)).unwrap(),
                newest_before,
                "{context}"
            );
        }
    }
}

/// A sealed (older) segment cut exactly at a record boundary loses its last records; recovery
/// (replaying the log, no checkpoint) should notice that a sealed segment is short.
#[test]
fn an_older_segment_cut_at_a_record_boundary_is_corrupt() {
    let (mut rng, _) = seeded_rng("an_older_segment_cut_at_a_record_boundary");
    let base = Base::build(&mut rng);
    let older_path = segment_files(&base.dir).into_values().next().unwrap();
    let mut bytes = std::fs::read(&older_path).unwrap();
    let cut = base.older[base.older.len() - 10].start;
    assert!(!base.dir.join(CHECKPOINT_FILE_NAME).exists());
    bytes.truncate(cut as usize);
    std::fs::write(&older_path, &bytes).unwrap();
    match Store::open_with(&base.dir, config()) {
        Err(Error::Corrupt { path, .. }) => assert!(same_file(&path, &older_path)),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("opened a store whose sealed segment lost its last records"),
    }
}

/// A file named like a segment that is not one is refused as `NotASegment`, whether it sorts
/// before, among or after the real segments, and it is not deleted.
#[test]
fn a_foreign_file_named_like_a_segment_is_not_a_segment() {
    let (mut rng, seed) = seeded_rng("a_foreign_file_named_like_a_segment");
    let garbage: Vec<u8> = (0..4096).map(|_| rng.gen()).collect();
    let mut text = b"these are not the records you are looking for\n".repeat(40);
    text.truncate(1000);

    // Alone in a fresh directory.
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("segment-00000001.idem");
    std::fs::write(&foreign, &garbage).unwrap();
    let error = Store::open_with(dir.path(), config()).expect_err("garbage segment");
    match &error {
        Error::NotASegment { path } => assert!(same_file(path, &foreign), "{error}"),
        other => panic!("seed {seed}: expected NotASegment, got {other:?}"),
    }
    assert!(
        error.to_string().contains("segment-00000001.idem"),
        "{error}"
    );
    assert_eq!(std::fs::read(&foreign).unwrap(), garbage, "left as it was");

    // Beside a real store, as the oldest and as the newest file.
    let base = Base::build(&mut rng);
    let scratch = tempfile::tempdir().unwrap();
    for (case, (name, content)) in [
        ("segment-00000000.idem", &garbage),
        ("segment-00000009.idem", &garbage),
        ("segment-00000009.idem", &text),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = scratch.path().join(format!("case-{case}"));
        copy_dir(&base.dir, &dir);
        let foreign = dir.join(name);
        std::fs::write(&foreign, content).unwrap();
        match Store::open_with(&dir, config()) {
            Err(Error::NotASegment { path }) => assert!(same_file(&path, &foreign)),
            Err(other) => panic!("seed {seed}, {name}: expected NotASegment, got {other:?}"),
            Ok(_) => panic!("seed {seed}, {name}: opened with a foreign segment file"),
        }
        assert_eq!(&std::fs::read(&foreign).unwrap(), content, "{name} kept");
    }
}

/// A record cut in half at the end of the newest segment (as a crash during a write leaves it) is
/// cut off and reported; the next open finds a clean log.
#[test]
fn a_truncated_tail_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), config()).unwrap();
    for i in 0..100 {
        let value = format!("value {i}").repeat(5);
        store
            .check_or_insert(format!("key {i}").as_bytes(), LONG_TTL, value.as_bytes())
            .unwrap();
    }
    // Dropped as a crash would leave it: no checkpoint, recovery replays the log.
    drop(store);
    let newest = newest_segment(dir.path());
    let bytes = std::fs::read(&newest).unwrap();
    let records = parse_segment(&bytes);
    let last = records.last().unwrap().clone();
    assert_eq!(last.key, b"key 99");
    let cut = last.start + (last.end - last.start) / 2;
    std::fs::write(&newest, &bytes[..cut as usize]).unwrap();

    let store = Store::open_with(dir.path(), config()).unwrap();
    let tail = store
        .recovery_report()
        .truncated_tail
        .clone()
        .expect("a truncated tail is reported");
    assert!(same_file(&tail.path, &newest), "{tail:?}");
    assert_eq!(tail.offset, last.start);
    assert_eq!(tail.bytes_cut, cut - last.start);
    assert!(!tail.reason.is_empty());
    assert_eq!(
        store.get(b"key 99").unwrap(),
        None,
        "the torn record is gone"
    );
    assert_eq!(
        store.get(b"key 98").unwrap().as_deref(),
        Some("value 98".repeat(5).as_bytes())
    );
    assert_eq!(store.stats().live_keys, 99);
    assert_eq!(store.recovery_report().records_replayed, 99);
    // The key can be inserted again, and the log is clean from now on.
    assert_eq!(
        store
            .check_or_insert(b"key 99", Duration::from_secs(60), b"again")
            .unwrap(),
        Outcome::Inserted
    );
    store.close().unwrap();
    let store = Store::open_with(dir.path(), config()).unwrap();
    assert_eq!(store.recovery_report().truncated_tail, None);
    assert_eq!(
        store.get(b"key 99").unwrap().as_deref(),
        Some(&b"again"[..])
    );
    assert_eq!(store.stats().live_keys, 100);
}

/// A damaged or cut checkpoint is never trusted: it is ignored (with the reason reported) and
/// the whole log is replayed, giving the same keys.
#[test]
fn a_damaged_checkpoint_is_ignored_and_the_log_replayed() {
    let (mut rng, seed) = seeded_rng("a_damaged_checkpoint_is_ignored");
    let base = Base::build(&mut rng);
    let keys = base.all_keys();
    let expected = base.state_after(base.newest.len());
    let original = std::fs::read(base.closed_dir.join(CHECKPOINT_FILE_NAME)).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("cut in half", original[..original.len() / 2].to_vec()),
        ("one byte short", original[..original.len() - 1].to_vec()),
        ("a flipped byte", {
            let mut bytes = original.clone();
            let at = rng.gen_range(0..bytes.len());
            bytes[at] ^= 0x10;
            bytes
        }),
        ("garbage", (0..original.len()).map(|_| rng.gen()).collect()),
    ];
    for (case, (what, bytes)) in cases.into_iter().enumerate() {
        let context = format!("seed {seed}: checkpoint {what}");
        let dir = scratch.path().join(format!("case-{case}"));
        copy_dir(&base.closed_dir, &dir);
        std::fs::write(dir.join(CHECKPOINT_FILE_NAME), &bytes).unwrap();
        let store = Store::open_with(&dir, config()).unwrap_or_else(|e| panic!("{context}: {e}"));
        let report = store.recovery_report();
        assert!(report.checkpoint_ignored.is_some(), "{context}: {report:?}");
        assert_eq!(report.checkpoint_entries_loaded, 0, "{context}");
        assert_holds(&store, &keys, &expected, &context);
    }
    // The intact checkpoint is used, and gives the same keys.
    let store = Store::open_with(&base.closed_dir, config()).unwrap();
    assert_eq!(store.recovery_report().checkpoint_ignored, None);
    assert!(store.recovery_report().checkpoint_entries_loaded > 0);
    assert_holds(
        &store,
        &keys,
        &expected,
        &format!("seed {seed}: intact checkpoint"),
    );
}
