//! A store written in on-disk format version 1 (`tests/fixtures/v1-store`, made by idem 0.1) opens
//! with every answer it gave, takes new writes in the current format, and keeps every answer across
//! reopens, from the checkpoint and by a full replay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idem::{Claim, Config, Durability, Error, ManualClock, Outcome, Store};
use idem_tests::{copy_dir, segment_files};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v1-store")
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
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    copy_dir(&fixture(), &dir);
    let before: Vec<u32> = segment_files(&dir).keys().copied().collect();
    assert_eq!(before, vec![1, 2, 3]);
    for path in segment_files(&dir).values() {
        assert_eq!(segment_version(path), 1, "{}", path.display());
    }

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

#[test]
fn a_version_1_store_replays_without_its_checkpoint() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("store");
    copy_dir(&fixture(), &dir);
    std::fs::remove_file(dir.join("checkpoint.idem")).unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(&dir, config(&clock)).unwrap();
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    assert_v1_answers(&store);
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
