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

fn reopen_keeps_live_keys_and_drops_the_rest(durability: Durability) {
    let (mut rng, seed) = seeded_rng("reopen_keeps_live_keys_and_drops_the_rest");
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut model = BTreeMap::new();

    let store = Store::open_with(dir.path(), config(&clock, durability)).unwrap();
    // About 4 MiB of records over 1 MiB segments, mixing single calls and batches.
    let key_count = 12_000;
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
        if rng.gen_bool(0.5) {
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
    for i in (0..key_count).step_by(7) {
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
    assert!(
        store.stats().segments >= 3,
        "the test must span several segments: {:?}",
        store.stats()
    );
    store.close().unwrap();

    // Past the short TTL: those keys expire while the store is closed.
    clock.advance(SHORT_TTL);
    let store = Store::open_with(dir.path(), config(&clock, durability)).unwrap();
    assert!(store.recovery_report().segments_replayed >= 3);
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
    for (key, expect) in model.iter_mut().step_by(5) {
        if !matches!(expect, Expect::Live(_)) {
            let value = b"reborn".to_vec();
            let outcome = store.check_or_insert(key, LONG_TTL, &value).unwrap();
            assert_eq!(
                outcome,
                Outcome::Inserted,
                "seed {seed}: {expect:?} key is free"
            );
            *expect = Expect::Live(value);
        }
    }
    store.close().unwrap();

    // A second reopen sees the records appended after the first recovery as well.
    let store = Store::open_with(dir.path(), config(&clock, durability)).unwrap();
    assert_matches_model(&store, &model, &format!("seed {seed}: second reopen"));
    store.close().unwrap();
}

#[test]
fn reopen_keeps_live_keys_and_drops_the_rest_sync() {
    reopen_keeps_live_keys_and_drops_the_rest(Durability::Sync);
}

#[test]
fn reopen_keeps_live_keys_and_drops_the_rest_never() {
    reopen_keeps_live_keys_and_drops_the_rest(Durability::Never);
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
