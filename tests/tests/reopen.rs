//! Guards recovery on reopen: every live key comes back with its exact value across several
//! segments, expired keys stay gone, removed keys stay removed, and `stats().live_keys` agrees.

use std::collections::BTreeMap;
use std::time::Duration;

use idem::{Config, Durability, ManualClock, Outcome, Store};
use idem_tests::seeded_rng;
use rand::Rng;

const SMALL_SEGMENT_BYTES: u32 = 1 << 20;
const SHORT_TTL: Duration = Duration::from_secs(60);
const LONG_TTL: Duration = Duration::from_secs(3600);

/// What the test expects of one key after the clock has passed `SHORT_TTL`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Live(Vec<u8>),
    Expired,
    Removed,
}

fn config(clock: &ManualClock, durability: Durability) -> Config {
    Config::default()
        .durability(durability)
        .clock(clock.clone())
        .segment_size_bytes(SMALL_SEGMENT_BYTES)
}

fn key(i: usize) -> Vec<u8> {
    format!("reopen/key-{i:06}").into_bytes()
}

/// Checks every key of `model` against `store` through `get` only (no writes).
fn assert_matches_model(store: &Store, model: &BTreeMap<Vec<u8>, Expect>, when: &str) {
    for (key, expect) in model {
        let got = store.get(key).expect("get");
        let name = String::from_utf8_lossy(key);
        match expect {
            Expect::Live(value) => {
                assert_eq!(got.as_deref(), Some(&value[..]), "{when}: live key {name}")
            }
            Expect::Expired | Expect::Removed => {
                assert_eq!(got, None, "{when}: key {name} should be gone ({expect:?})")
            }
        }
    }
    let live = model
        .values()
        .filter(|e| matches!(e, Expect::Live(_)))
        .count();
    assert_eq!(store.stats().live_keys, live as u64, "{when}: live_keys");
}

/// How a store is left before it is reopened.
#[derive(Debug, Clone, Copy)]
enum Shutdown {
    /// `close`: flushes and writes a checkpoint, which the next open loads.
    Close,
    /// A plain drop: everything is written but no checkpoint, so the next open replays the log.
    Drop,
}

fn shut(store: Store, how: Shutdown) {
    match how {
        Shutdown::Close => store.close().unwrap(),
        Shutdown::Drop => drop(store),
    }
}

fn reopen_keeps_live_keys_and_drops_the_rest(durability: Durability, how: Shutdown) {
    let (mut rng, seed) = seeded_rng(&format!("reopen, {durability:?}, {how:?}"));
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut model = BTreeMap::new();

    let store = Store::open_with(dir.path(), config(&clock, durability)).unwrap();
    // About 4 MiB of records over 1 MiB segments, mixing single calls and batches. In Sync mode
    // each single call costs an fsync, so most keys go in batches.
    let key_count = 12_000;
    let single_share = if durability == Durability::Sync {
        0.04
    } else {
        0.5
    };
    let mut batch: Vec<(Vec<u8>, Duration, Vec<u8>)> = Vec::new();
    for i in 0..key_count {
        let len = rng.gen_range(0..600);
        let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let short = rng.gen_bool(0.25);
        let ttl = if short { SHORT_TTL } else { LONG_TTL };
        let expect = if short {
            Expect::Expired
        } else {
            Expect::Live(value.clone())
        };
        model.insert(key(i), expect);
        if rng.gen_bool(single_share) {
            let outcome = store.check_or_insert(&key(i), ttl, &value).unwrap();
            assert_eq!(outcome, Outcome::Inserted, "seed {seed}: key {i}");
        } else {
            batch.push((key(i), ttl, value));
            if batch.len() == 64 {
                let outcomes = store.check_or_insert_batch(&batch).unwrap();
                assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
                batch.clear();
            }
        }
    }
    let outcomes = store.check_or_insert_batch(&batch).unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));

    // Remove some long-lived keys, and re-insert a few of those with a new value.
    for i in (0..key_count).step_by(31) {
        if let Some(Expect::Live(_)) = model.get(&key(i)) {
            assert!(store.remove(&key(i)).unwrap(), "seed {seed}: remove {i}");
            assert!(
                !store.remove(&key(i)).unwrap(),
                "a second remove finds nothing"
            );
            if i % 2 == 0 {
                let value = format!("second life of {i}").into_bytes();
                let outcome = store.check_or_insert(&key(i), LONG_TTL, &value).unwrap();
                assert_eq!(outcome, Outcome::Inserted, "re-insert after remove");
                model.insert(key(i), Expect::Live(value));
            } else {
                model.insert(key(i), Expect::Removed);
            }
        }
    }
    assert_eq!(
        store.stats().live_keys,
        model.values().filter(|e| **e != Expect::Removed).count() as u64,
        "before expiry every key not removed has an entry"
    );
    // In Never mode the writer hands the buffer to the OS in the background: flush so that
    // every segment the log has moved on to exists as a file before counting them.
    store.flush().unwrap();
    assert!(
        store.stats().segments >= 3,
        "the test must span several segments: {:?}",
        store.stats()
    );
    shut(store, how);

    // Past the short TTL: those keys expire while the store is closed.
    clock.advance(SHORT_TTL);
    let store = Store::open_with(dir.path(), config(&clock, durability)).unwrap();
    assert!(store.stats().segments >= 3);
    assert_eq!(store.recovery_report().truncated_tail, None);
    assert_matches_model(&store, &model, &format!("seed {seed}: first reopen"));

    // A live key answers Duplicate with its first value and writes nothing; an expired or
    // removed key is free again.
    let before = store.stats().bytes_appended;
    for (key, expect) in model.iter().step_by(13) {
        if let Expect::Live(value) = expect {
            let outcome = store.check_or_insert(key, LONG_TTL, b"other").unwrap();
            assert_eq!(outcome, Outcome::Duplicate(idem::Value::from(&value[..])));
        }
    }
    assert_eq!(
        store.stats().bytes_appended,
        before,
        "duplicates append nothing"
    );
    let mut reborn = Vec::new();
    for (key, expect) in model.iter_mut().step_by(5) {
        if !matches!(expect, Expect::Live(_)) {
            reborn.push((key.clone(), LONG_TTL, b"reborn".to_vec()));
            *expect = Expect::Live(b"reborn".to_vec());
        }
    }
    assert!(!reborn.is_empty());
    let outcomes = store.check_or_insert_batch(&reborn).unwrap();
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Inserted),
        "seed {seed}: expired and removed keys are free again"
    );
    shut(store, how);

    // A second reopen sees the records appended after the first recovery as well.
    let store = Store::open_with(dir.path(), config(&clock, durability)).unwrap();
    assert_matches_model(&store, &model, &format!("seed {seed}: second reopen"));
    store.close().unwrap();
}

#[test]
fn reopen_keeps_live_keys_and_drops_the_rest_sync_close() {
    reopen_keeps_live_keys_and_drops_the_rest(Durability::Sync, Shutdown::Close);
}

#[test]
fn reopen_keeps_live_keys_and_drops_the_rest_never_drop() {
    reopen_keeps_live_keys_and_drops_the_rest(Durability::Never, Shutdown::Drop);
}

/// A store dropped without `close` still keeps everything: drop flushes too.
#[test]
fn drop_without_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let periodic = || config(&clock, Durability::Periodic(Duration::from_secs(3600)));
    {
        let store = Store::open_with(dir.path(), periodic()).unwrap();
        for i in 0..2_000 {
            let value = format!("value {i}");
            store
                .check_or_insert(&key(i), LONG_TTL, value.as_bytes())
                .unwrap();
        }
    }
    let store = Store::open_with(dir.path(), periodic()).unwrap();
    for i in 0..2_000 {
        let value = format!("value {i}");
        assert_eq!(
            store.get(&key(i)).unwrap().as_deref(),
            Some(value.as_bytes())
        );
    }
    assert_eq!(store.stats().live_keys, 2_000);
}

/// A key removed in an older segment and never touched again stays removed, even when its
/// insert and its removal sit in different segment files.
#[test]
fn removal_in_a_later_segment_hides_an_insert_in_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock, Durability::Never)).unwrap();
    for i in 0..100 {
        store.check_or_insert(&key(i), LONG_TTL, b"early").unwrap();
    }
    let filler = vec![0x5a; 60_000];
    let mut j = 100;
    while store.stats().segments < 3 {
        store.check_or_insert(&key(j), LONG_TTL, &filler).unwrap();
        j += 1;
    }
    for i in 0..100 {
        assert!(store.remove(&key(i)).unwrap());
    }
    store.close().unwrap();
    let store = Store::open_with(dir.path(), config(&clock, Durability::Never)).unwrap();
    for i in 0..100 {
        assert_eq!(store.get(&key(i)).unwrap(), None, "key {i} was removed");
    }
    assert_eq!(store.stats().live_keys, (j - 100) as u64);
}

/// Compaction must not resurrect removed keys: when the segment holding their tombstones is
/// compacted while the segment holding their inserts lives on, the tombstones must be carried
/// forward, whether the next open loads a checkpoint or replays the log.
#[test]
fn removed_keys_stay_removed_through_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = || config(&clock, Durability::Never).background_maintenance(false);
    let store = Store::open_with(dir.path(), config()).unwrap();
    let big = vec![0xab; 4000];
    let keeper = |i: usize| format!("keeper-{i}").into_bytes();
    // Segment 1: 240 long-lived keys; 100 of them are removed below, so it stays more than half
    // live and is not compacted.
    for i in 0..240 {
        store.check_or_insert(&key(i), LONG_TTL, &big).unwrap();
    }
    let filler = vec![0x11; 60_000];
    let mut f = 0;
    let mut fill_until = |segments: u64| {
        while store.stats().segments < segments {
            let name = format!("filler-{f}");
            store
                .check_or_insert(name.as_bytes(), SHORT_TTL, &filler)
                .unwrap();
            f += 1;
        }
    };
    fill_until(2);
    // The tombstones go into segment 2, among short-lived filler that expires below.
    for i in 0..100 {
        assert!(store.remove(&key(i)).unwrap());
    }
    fill_until(4);
    for i in 0..50 {
        store
            .check_or_insert(&keeper(i), LONG_TTL, b"kept")
            .unwrap();
    }
    // In `Never` mode the writer seals segments behind the appends: the file count that
    // `fill_until` watches lags the log by up to several segments when the appends outrun the
    // writer, and a segment not yet sealed is neither deleted nor compacted.
    store.flush().unwrap();
    clock.advance(SHORT_TTL + Duration::from_secs(1));
    let mut compacted = 0;
    for _ in 0..20 {
        let report = store.maintain().unwrap();
        compacted += report.segments_compacted + report.segments_deleted;
        if report.segments_compacted + report.segments_deleted == 0 {
            break;
        }
    }
    assert!(
        compacted > 0,
        "the test must make maintenance reclaim segments"
    );
    let check = |store: &Store, when: &str| {
        for i in 0..240 {
            let expected = (i >= 100).then_some(&big[..]);
            assert_eq!(
                store.get(&key(i)).unwrap().as_deref(),
                expected,
                "{when}: key {i}"
            );
        }
        for i in 0..50 {
            assert_eq!(
                store.get(&keeper(i)).unwrap().as_deref(),
                Some(&b"kept"[..]),
                "{when}"
            );
        }
        assert_eq!(store.stats().live_keys, 140 + 50, "{when}");
    };
    check(&store, "after maintenance");
    drop(store);
    let store = Store::open_with(dir.path(), config()).unwrap();
    check(&store, "after replaying the log");
    store.close().unwrap();
    let store = Store::open_with(dir.path(), config()).unwrap();
    check(&store, "after loading the checkpoint");
}

/// Batches of every size, landing at every distance from a segment's end, never make a segment
/// larger than its size (a batch whose rest does not fit goes on in the next segment, record by
/// record), and every item answers the same after a reopen.
#[test]
fn batches_near_a_segment_end_stay_within_the_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock, Durability::Never)).unwrap();
    let (mut rng, seed) = seeded_rng("batches near a segment end");
    let mut written = Vec::new();
    while store.stats().bytes_appended < 4 * u64::from(SMALL_SEGMENT_BYTES) {
        let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..rng.gen_range(1..400))
            .map(|_| {
                let i = written.len();
                let value = vec![i as u8; rng.gen_range(0..300)];
                written.push((key(i), value.clone()));
                (key(i), LONG_TTL, value)
            })
            .collect();
        let outcomes = store.check_or_insert_batch(&items).unwrap();
        assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
    }
    store.close().unwrap();
    let mut segments = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("segment-") && name.ends_with(".idem") {
            segments += 1;
            let len = entry.metadata().unwrap().len();
            assert!(
                len <= u64::from(SMALL_SEGMENT_BYTES),
                "{name} is {len} bytes, over the segment size (seed {seed})"
            );
        }
    }
    assert!(segments >= 4, "{segments} segments");
    let store = Store::open_with(dir.path(), config(&clock, Durability::Never)).unwrap();
    for (key, value) in &written {
        assert_eq!(
            store.get(key).unwrap().as_deref(),
            Some(&value[..]),
            "seed {seed}"
        );
    }
}

/// One store's answers as a reopen left them: every key's `get` (or the error a held key
/// gives), state entries, positions, live counts, and the recovery report with the store's
/// directory taken out of its paths.
fn recovered(store: &Store, keys: &[Vec<u8>], state_keys: &[Vec<u8>]) -> Vec<String> {
    let dir = store.path().display().to_string();
    let mut seen = vec![format!("{:?}", store.recovery_report()).replace(&dir, "DIR")];
    seen.extend(keys.iter().map(|key| format!("{:?}", store.get(key))));
    seen.extend(
        state_keys
            .iter()
            .map(|key| format!("{:?}", store.get_state(key))),
    );
    seen.push(format!("{:?}", store.positions()));
    seen.push(format!("{:?}", store.count_live()));
    seen.push(format!("{:?}", store.in_doubt()));
    seen.push(format!("{}", store.stats().live_keys));
    seen
}

/// Every file of a store directory with its bytes, by name.
fn files_of(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect()
}

/// Replay reads a segment through a map of the file where the storage maps files (the
/// operating system's file system), and into a buffer where it cannot (here: every map fails,
/// which must not fail the open): the two must recover
/// the same store and cut the same torn tail. Copies of one store (several segments; inserts,
/// removals and re-inserts with other TTLs, open, completed and failed claims, transactions
/// with state and positions) are opened both ways, from a full replay and from a checkpoint
/// with records after it, with the newest segment ending in prepared zeros or in a torn tail.
#[test]
fn a_replay_through_file_maps_and_one_through_reads_recover_the_same_store() {
    use idem::{Claim, Completion};
    let (mut rng, seed) = seeded_rng("replay through maps and through reads");
    for (checkpoint, torn) in [(false, false), (false, true), (true, false), (true, true)] {
        let scratch = tempfile::tempdir().unwrap();
        let base = scratch.path().join("base");
        let clock = ManualClock::new();
        // Written with the default storage, which prepares segments in this mode: the newest
        // ends in zeros (the opens compared below set a storage, which turns preparation off).
        let config = || {
            Config::default()
                .durability(Durability::Periodic(Duration::from_millis(20)))
                .clock(clock.clone())
                .segment_size_bytes(SMALL_SEGMENT_BYTES)
                .background_maintenance(false)
        };
        let mut store = Store::open_with(&base, config()).unwrap();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let state_keys: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("balance/{i}").into_bytes())
            .collect();
        let rounds = 8_000;
        for i in 0..rounds {
            if checkpoint && i == rounds / 2 {
                // Reopened from the checkpoint `close` writes, the rest is replayed after it.
                store.close().unwrap();
                store = Store::open_with(&base, config()).unwrap();
            }
            let key = format!("mapped/{}", rng.gen_range(0..4_000)).into_bytes();
            let ttl = [SHORT_TTL, LONG_TTL][rng.gen_range(0..2)];
            let value: Vec<u8> = (0..rng.gen_range(1..1_000)).map(|_| rng.gen()).collect();
            match rng.gen_range(0..10) {
                0 => {
                    store.remove(&key).unwrap();
                }
                1 => {
                    let lease = Duration::from_secs(rng.gen_range(1..120));
                    if let Ok(Claim::Acquired(token)) = store.claim(&key, lease) {
                        match rng.gen_range(0..3) {
                            0 => store.complete(token, ttl, &value).unwrap(),
                            1 => {
                                let backoff = Duration::from_secs(rng.gen_range(0..90));
                                let failure = Completion::Failure {
                                    backoff,
                                    failure: b"declined",
                                };
                                store.finish(token, failure).unwrap();
                            }
                            _ => {} // left open
                        }
                    }
                }
                2 => {
                    let mut tx = store.transaction();
                    if let Ok(outcome) = tx.check_or_insert(&key, ttl, &value) {
                        if !outcome.is_duplicate() {
                            let account = &state_keys[rng.gen_range(0..state_keys.len())];
                            tx.put_state(account, &value).unwrap();
                        }
                        tx.set_position(b"input", i as u64).unwrap();
                        tx.commit().unwrap();
                    }
                }
                _ => {
                    let _ = store.check_or_insert(&key, ttl, &value);
                }
            }
            keys.push(key);
            if i % 500 == 0 {
                clock.advance(Duration::from_secs(7));
            }
        }
        store.flush().unwrap();
        assert!(store.stats().segments >= 3, "{:?}", store.stats());
        // As a crash leaves it: no checkpoint for what came after the reopen (or at all).
        drop(store);
        if torn {
            let newest = idem_tests::newest_segment(&base);
            let mut bytes = std::fs::read(&newest).unwrap();
            let tail = bytes.len() - rng.gen_range(1..4096).min(bytes.len() - 100);
            bytes.truncate(tail);
            bytes.extend((0..rng.gen_range(1..64)).map(|_| rng.gen::<u8>() | 1));
            std::fs::write(&newest, &bytes).unwrap();
        }
        clock.advance(SHORT_TTL);
        keys.sort();
        keys.dedup();

        let (mapped_dir, read_dir) = (scratch.path().join("mapped"), scratch.path().join("read"));
        idem_tests::copy_dir(&base, &mapped_dir);
        idem_tests::copy_dir(&base, &read_dir);
        let mapped =
            Store::open_with(&mapped_dir, config().storage(idem::sim::FileSystem)).unwrap();
        let read = Store::open_with(
            &read_dir,
            config().storage(idem_tests::UnmappedFileSystem::default()),
        )
        .unwrap();
        let case = format!("seed {seed}, checkpoint {checkpoint}, torn {torn}");
        assert!(mapped.recovery_report().records_replayed > 1_000, "{case}");
        assert_eq!(
            mapped.recovery_report().truncated_tail.is_some(),
            torn,
            "{case}: {:?}",
            mapped.recovery_report()
        );
        assert_eq!(
            recovered(&mapped, &keys, &state_keys),
            recovered(&read, &keys, &state_keys),
            "{case}"
        );
        assert!(
            files_of(&mapped_dir) == files_of(&read_dir),
            "{case}: the two opens left different files"
        );
    }
}

/// A newest segment file that a crash left empty, short of a header, or all zeros (a torn
/// creation, just after the log sealed the segment before it) is removed on disk as on the
/// simulated one: mapping an empty or short file must not fail the open.
#[test]
fn a_torn_creation_of_the_newest_segment_file_is_removed() {
    for content in [&[][..], &[0u8; 10][..], &[0u8; 4096][..]] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let config = || config(&clock, Durability::Never).background_maintenance(false);
        let store = Store::open_with(dir.path(), config()).unwrap();
        let mut i = 0;
        while store.stats().segments < 2 {
            store
                .check_or_insert(&key(i), LONG_TTL, &[7; 1000])
                .unwrap();
            store.flush().unwrap();
            i += 1;
        }
        // As a crash leaves it: the newest segment created (the one before it sealed), no
        // checkpoint; then the crash is moved back to the newest file's creation.
        drop(store);
        let newest = idem_tests::newest_segment(dir.path());
        std::fs::write(&newest, content).unwrap();
        let store = Store::open_with(dir.path(), config()).unwrap();
        let removed = store.recovery_report().removed_empty_segment.clone();
        assert_eq!(
            removed.as_deref(),
            Some(newest.as_path()),
            "{} bytes",
            content.len()
        );
        assert!(!newest.exists());
        assert_eq!(store.get(&key(0)).unwrap().as_deref(), Some(&[7; 1000][..]));
    }
}

/// `Config::map_segments_at_open(false)` replays every segment through reads (no map is asked
/// of any file: a device's read error is then an error, not a `SIGBUS`), and recovers the same
/// keys as the default, which asks a map of each replayed segment.
#[test]
fn an_open_told_not_to_map_segments_reads_them_and_recovers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock, Durability::Never)).unwrap();
    for i in 0..3_000 {
        store.check_or_insert(&key(i), LONG_TTL, &[3; 400]).unwrap();
    }
    for i in (0..3_000).step_by(7) {
        store.remove(&key(i)).unwrap();
    }
    store.flush().unwrap();
    // Dropped without close: no checkpoint, every segment is replayed.
    drop(store);
    for map in [false, true] {
        let storage = idem_tests::UnmappedFileSystem::default();
        let config = config(&clock, Durability::Never)
            .background_maintenance(false)
            .storage(storage.clone())
            .map_segments_at_open(map);
        let store = Store::open_with(dir.path(), config).unwrap();
        assert!(store.recovery_report().records_replayed >= 3_000);
        assert!(
            store.stats().segments >= 2,
            "the case needs several segments"
        );
        let asked = storage.maps_asked();
        if map {
            assert!(asked >= 2, "maps asked: {asked}");
        } else {
            assert_eq!(asked, 0, "an open told not to map asked for a map");
        }
        for i in 0..3_000 {
            let expected = (i % 7 != 0).then_some(&[3u8; 400][..]);
            assert_eq!(store.get(&key(i)).unwrap().as_deref(), expected, "key {i}");
        }
        drop(store);
    }
}
