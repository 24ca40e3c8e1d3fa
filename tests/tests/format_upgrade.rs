//! Stores written in older on-disk formats open with every answer they gave, take new writes in
//! the current format, and keep every answer across reopens, from the checkpoint and by a full
//! replay, and across compaction: version 1 (`tests/fixtures/v1-store`, made by idem 0.1),
//! version 2 (`tests/fixtures/v2-store`, whose transactions open with a Group record) and
//! version 3 (`tests/fixtures/v3-store`, which holds no Padding record).

use std::path::{Path, PathBuf};
use std::time::Duration;

use idem::{Claim, Config, Durability, Error, ManualClock, Outcome, Store};
use idem_tests::{copy_dir, segment_files};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v1-store")
}

fn fixture_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v2-store")
}

fn fixture_v3() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v3-store")
}

/// The fixture was written at `ManualClock::new()`; open it at the same time.
fn config(clock: &ManualClock) -> Config {
    Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .segment_size_bytes_for_testing(4096)
        .background_maintenance(false)
}

fn segment_version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// A copy of `fixture` in a scratch directory (kept while the first value lives): its three
/// segments, each of format `version`.
fn copy_of(fixture: PathBuf, version: u32) -> (tempfile::TempDir, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    copy_dir(&fixture, &dir);
    let before: Vec<u32> = segment_files(&dir).keys().copied().collect();
    assert_eq!(before, vec![1, 2, 3]);
    for path in segment_files(&dir).values() {
        assert_eq!(segment_version(path), version, "{}", path.display());
    }
    (scratch, dir)
}

/// Every answer the v1 store gave when it was written.
fn assert_v1_answers(store: &Store) {
    let hour = Duration::from_secs(3600);
    for i in 0..200u32 {
        let key = format!("v1-key-{i:04}");
        let expected = if i == 10 {
            Some(b"again".to_vec())
        } else if i < 150 && i % 10 == 0 {
            None
        } else {
            Some(format!("result-{i}").into_bytes())
        };
        let got = store.get(key.as_bytes()).unwrap();
        assert_eq!(got.as_deref(), expected.as_deref(), "{key}");
    }
    match store
        .check_or_insert(b"v1-key-0001", hour, b"other")
        .unwrap()
    {
        Outcome::Duplicate(v) => assert_eq!(v.as_ref(), b"result-1"),
        other => panic!("v1-key-0001: {other:?}"),
    }
    assert_eq!(
        store.get(b"v1-completed").unwrap().as_deref(),
        Some(&b"completed-result"[..])
    );
    assert_eq!(
        store.get(b"v1-short").unwrap().as_deref(),
        Some(&b"short"[..])
    );
    let err = store
        .check_or_insert_fingerprinted(b"v1-fp", hour, b"x", b"fingerprint-B")
        .unwrap_err();
    assert!(
        matches!(err, Error::FingerprintMismatch { .. }),
        "v1-fp: {err:?}"
    );
    let in_doubt = store.in_doubt().unwrap();
    assert_eq!(in_doubt.len(), 1);
    assert_eq!(in_doubt[0].key(), b"v1-claimed");
    assert!(matches!(
        store.claim(b"v1-claimed", hour).unwrap(),
        Claim::InFlight { .. }
    ));
}

#[test]
fn a_version_1_store_opens_with_every_answer_and_upgrades_as_it_writes() {
    let (_scratch, dir) = copy_of(fixture(), 1);

    let clock = ManualClock::new();
    let hour = Duration::from_secs(3600);
    {
        let store = Store::open_with(&dir, config(&clock)).unwrap();
        assert_v1_answers(&store);
        // New writes of every kind, after the v1 records.
        for i in 0..100u32 {
            let key = format!("v2-key-{i:04}");
            assert_eq!(
                store
                    .check_or_insert(key.as_bytes(), hour, format!("v2-{i}").as_bytes())
                    .unwrap(),
                Outcome::Inserted
            );
        }
        assert!(store.remove(b"v1-key-0001").unwrap());
        store.close().unwrap();
    }
    // The v1 segments are untouched; everything new went into segments of the current version.
    let after = segment_files(&dir);
    for (id, path) in &after {
        let expected = if *id <= 3 {
            1
        } else {
            idem::record::FORMAT_VERSION
        };
        assert_eq!(segment_version(path), expected, "{}", path.display());
    }
    assert!(after.len() > 3, "new segments were written");

    let check = |store: &Store| {
        assert_eq!(store.get(b"v1-key-0001").unwrap(), None);
        assert_eq!(
            store.get(b"v1-key-0002").unwrap().as_deref(),
            Some(&b"result-2"[..])
        );
        assert_eq!(
            store.get(b"v1-key-0010").unwrap().as_deref(),
            Some(&b"again"[..])
        );
        assert_eq!(store.get(b"v1-key-0020").unwrap(), None);
        for i in 0..100u32 {
            let key = format!("v2-key-{i:04}");
            assert_eq!(
                store.get(key.as_bytes()).unwrap().as_deref(),
                Some(format!("v2-{i}").as_bytes()),
                "{key}"
            );
        }
        assert_eq!(store.in_doubt().unwrap().len(), 1);
    };
    {
        let store = Store::open_with(&dir, config(&clock)).unwrap();
        check(&store);
    }
    // A full replay of v1 and v2 segments together gives the same answers.
    std::fs::remove_file(dir.join("checkpoint.idem")).unwrap();
    let store = Store::open_with(&dir, config(&clock)).unwrap();
    check(&store);
}

/// Opens a copy of `fixture` without its checkpoint (a full replay of its segments) and checks
/// it with `answers`.
fn replays_without_its_checkpoint(fixture: &Path, answers: fn(&Store)) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    copy_dir(fixture, &dir);
    std::fs::remove_file(dir.join("checkpoint.idem")).unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(&dir, config(&clock)).unwrap();
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    answers(&store);
}

#[test]
fn a_version_1_store_replays_without_its_checkpoint() {
    replays_without_its_checkpoint(&fixture(), assert_v1_answers);
}

/// Compaction copies the live records of version-1 segments into segments of the current format,
/// encoded again (a segment holds records of its own format only, and replay refuses a record of
/// another: version-1 bytes copied as they are would fail the reopen), and every answer holds
/// after, from the checkpoint and by a full replay.
#[test]
fn compacting_version_1_segments_encodes_their_records_in_the_current_format() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    copy_dir(&fixture(), &dir);
    let clock = ManualClock::new();
    let compacting = || config(&clock).compaction_live_ratio(1.0);
    {
        let store = Store::open_with(&dir, compacting()).unwrap();
        let mut compacted = 0;
        for _ in 0..8 {
            compacted += store.maintain().unwrap().segments_compacted;
        }
        assert!(compacted >= 1, "{:?}", store.stats());
        assert_v1_answers(&store);
        store.close().unwrap();
    }
    let after = segment_files(&dir);
    assert!(
        after.keys().any(|id| *id > 3) && (1..=3).any(|id| !after.contains_key(&id)),
        "a version-1 segment was compacted away: {:?}",
        after.keys().collect::<Vec<_>>()
    );
    for (id, path) in &after {
        if *id > 3 {
            assert_eq!(
                segment_version(path),
                idem::record::FORMAT_VERSION,
                "{}",
                path.display()
            );
        }
    }
    assert!(idem::verify(&dir).unwrap().is_clean());
    {
        let store = Store::open_with(&dir, config(&clock)).unwrap();
        assert_v1_answers(&store);
    }
    std::fs::remove_file(dir.join("checkpoint.idem")).unwrap();
    let store = Store::open_with(&dir, config(&clock)).unwrap();
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    assert_v1_answers(&store);
}

/// Every answer the v2 store gave when it was written (see `tests/fixtures/README.md`).
fn assert_v2_answers(store: &Store) {
    assert_answers_of(store, "v2");
}

/// Every answer the v3 store gave when it was written: the v2 store's program, its keys named
/// `v3-` (see `tests/fixtures/README.md`).
fn assert_v3_answers(store: &Store) {
    assert_answers_of(store, "v3");
}

/// The answers of the v2 and v3 fixtures, whose keys start with `prefix`.
fn assert_answers_of(store: &Store, prefix: &str) {
    for i in 0..160u32 {
        let key = format!("{prefix}-key-{i:04}");
        let expected = if i == 10 {
            Some(b"again".to_vec())
        } else if i < 120 && i % 10 == 0 {
            None
        } else {
            Some(format!("result-{i}").into_bytes())
        };
        let got = store.get(key.as_bytes()).unwrap();
        assert_eq!(got.as_deref(), expected.as_deref(), "{key}");
        let tx_key = format!("{prefix}-tx-{i:04}");
        let expected = (i < 120 && i % 4 == 0).then_some(&b"tx-result"[..]);
        assert_eq!(
            store.get(tx_key.as_bytes()).unwrap().as_deref(),
            expected,
            "{tx_key}"
        );
    }
    assert_eq!(store.get_state(b"balance/cust-1").unwrap(), None);
    assert_eq!(
        store.get_state(b"balance/cust-2").unwrap().as_deref(),
        Some(&77u64.to_le_bytes()[..])
    );
    assert_eq!(store.position(b"orders/0").unwrap(), Some(1000));
    assert_eq!(
        store
            .get(format!("{prefix}-completed").as_bytes())
            .unwrap()
            .as_deref(),
        Some(&b"completed-result"[..])
    );
    let in_doubt = store.in_doubt().unwrap();
    assert_eq!(in_doubt.len(), 1);
    assert_eq!(in_doubt[0].key(), format!("{prefix}-claimed").as_bytes());
}

/// A transaction of the current format on top of the v2 store: a dedup record, a state write
/// and a position, one group.
fn commit_v3_transaction(store: &Store, i: u32) {
    let hour = Duration::from_secs(3600);
    let mut tx = store.transaction();
    let key = format!("v3-tx-{i:04}");
    assert_eq!(
        tx.check_or_insert(key.as_bytes(), hour, b"v3").unwrap(),
        Outcome::Inserted
    );
    tx.put_state(b"balance/cust-3", &u64::from(i).to_le_bytes())
        .unwrap();
    tx.set_position(b"orders/1", u64::from(i)).unwrap();
    tx.commit().unwrap();
}

fn assert_v3_transactions(store: &Store, count: u32) {
    for i in 0..count {
        let key = format!("v3-tx-{i:04}");
        assert_eq!(
            store.get(key.as_bytes()).unwrap().as_deref(),
            Some(&b"v3"[..]),
            "{key}"
        );
    }
    assert_eq!(
        store.get_state(b"balance/cust-3").unwrap().as_deref(),
        Some(&u64::from(count - 1).to_le_bytes()[..])
    );
    assert_eq!(
        store.position(b"orders/1").unwrap(),
        Some(u64::from(count - 1))
    );
}

/// The v2 store's segments stay version 2 (the newest one sealed in place), new transactions go
/// into version-3 segments, and compaction of both (version-3 records that say their group goes
/// on are copied without the flag) keeps every answer, from the checkpoint and by a full replay.
#[test]
fn a_version_2_store_opens_with_every_answer_and_goes_on_in_version_3() {
    let (_scratch, dir) = copy_of(fixture_v2(), 2);
    let clock = ManualClock::new();
    const TRANSACTIONS: u32 = 200;
    {
        let store = Store::open_with(&dir, config(&clock)).unwrap();
        assert_v2_answers(&store);
        for i in 0..TRANSACTIONS {
            commit_v3_transaction(&store, i);
        }
        store.close().unwrap();
    }
    let after = segment_files(&dir);
    assert!(after.len() > 4, "transactions filled new segments");
    for (id, path) in &after {
        let expected = if *id <= 3 {
            2
        } else {
            idem::record::FORMAT_VERSION
        };
        assert_eq!(segment_version(path), expected, "{}", path.display());
    }
    assert!(idem::verify(&dir).unwrap().is_clean());
    let check = |store: &Store| {
        assert_v2_answers(store);
        assert_v3_transactions(store, TRANSACTIONS);
    };
    {
        let store = Store::open_with(&dir, config(&clock)).unwrap();
        check(&store);
    }
    compacts_the_fixture_away(&dir, || config(&clock), check, 4);
}

/// Compacts every segment of the store in `dir` (the fixture's three and those written since):
/// at least `at_least` go, the fixture's among them, and every answer (`check`) holds, then
/// from the checkpoint and by a full replay.
fn compacts_the_fixture_away(
    dir: &Path,
    config: impl Fn() -> Config,
    check: impl Fn(&Store),
    at_least: u64,
) {
    {
        let store = Store::open_with(dir, config().compaction_live_ratio(1.0)).unwrap();
        let mut compacted = 0;
        for _ in 0..16 {
            compacted += store.maintain().unwrap().segments_compacted;
        }
        assert!(compacted >= at_least, "{compacted} segments compacted");
        check(&store);
        store.close().unwrap();
    }
    let compacted = segment_files(dir);
    assert!(
        (1..=3).all(|id| !compacted.contains_key(&id)),
        "the fixture's segments were compacted away: {:?}",
        compacted.keys().collect::<Vec<_>>()
    );
    let report = idem::verify(dir).unwrap();
    assert!(report.is_clean(), "{report:?}");
    {
        let store = Store::open_with(dir, config()).unwrap();
        check(&store);
    }
    std::fs::remove_file(dir.join("checkpoint.idem")).unwrap();
    let store = Store::open_with(dir, config()).unwrap();
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    check(&store);
}

#[test]
fn a_version_2_store_replays_without_its_checkpoint() {
    replays_without_its_checkpoint(&fixture_v2(), assert_v2_answers);
}

#[test]
fn a_version_3_store_replays_without_its_checkpoint() {
    replays_without_its_checkpoint(&fixture_v3(), assert_v3_answers);
}

/// Whether any segment of `dir` of the current format holds a Padding record.
fn holds_padding(dir: &Path) -> bool {
    segment_files(dir).values().any(|path| {
        let bytes = std::fs::read(path).unwrap();
        if segment_version(path) != idem::record::FORMAT_VERSION {
            return false;
        }
        let mut offset = idem::record::SEGMENT_HEADER_LEN;
        while let Ok((record, len)) = idem::record::decode_sized(&bytes[offset..]) {
            if record.kind == idem::record::RecordKind::Padding {
                return true;
            }
            offset += len;
        }
        false
    })
}

/// The v3 store's segments stay version 3 (the newest one sealed in place); new writes go into
/// version-4 segments, where inserts through lanes that reserve ahead leave Padding records;
/// compaction of both keeps every answer, from the checkpoint and by a full replay.
#[test]
fn a_version_3_store_opens_with_every_answer_and_goes_on_in_version_4() {
    let (_scratch, dir) = copy_of(fixture_v3(), 3);
    let clock = ManualClock::new();
    // One thread driving the lanes in turn, as several threads would: chunks, padding.
    let config = || config(&clock).rotate_append_lanes_for_testing(true);
    const INSERTS: u32 = 400;
    let check = |store: &Store| {
        assert_v3_answers(store);
        for i in 0..INSERTS {
            let key = format!("v4-key-{i:04}");
            let expected = format!("v4-{i}");
            assert_eq!(
                store.get(key.as_bytes()).unwrap().as_deref(),
                Some(expected.as_bytes()),
                "{key}"
            );
        }
    };
    {
        let store = Store::open_with(&dir, config()).unwrap();
        assert_v3_answers(&store);
        for i in 0..INSERTS {
            let key = format!("v4-key-{i:04}");
            let outcome = store
                .check_or_insert(
                    key.as_bytes(),
                    Duration::from_secs(3600),
                    format!("v4-{i}").as_bytes(),
                )
                .unwrap();
            assert_eq!(outcome, Outcome::Inserted, "{key}");
        }
        store.close().unwrap();
    }
    let after = segment_files(&dir);
    assert!(after.len() > 4, "the inserts filled new segments");
    for (id, path) in &after {
        let expected = if *id <= 3 {
            3
        } else {
            idem::record::FORMAT_VERSION
        };
        assert_eq!(segment_version(path), expected, "{}", path.display());
    }
    assert!(holds_padding(&dir), "no chunk was padded");
    assert!(idem::verify(&dir).unwrap().is_clean());
    {
        let store = Store::open_with(&dir, config()).unwrap();
        check(&store);
    }
    compacts_the_fixture_away(&dir, config, check, 3);
}
