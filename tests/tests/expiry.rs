//! Guards expiry: an entry is served until 1 ms before its exact deadline and never at or after
//! it, through `get`, `check_or_insert` and batches, before and after reopen; an expired key can be
//! inserted again and its new value survives reopen.

use std::collections::BTreeMap;
use std::time::Duration;

use idem::{Clock, Config, Durability, ManualClock, Outcome, Store, Value};
use idem_tests::seeded_rng;
use rand::seq::SliceRandom;
use rand::Rng;

const LONG_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// TTLs around the store's internal whole-second rounding, and a few long ones.
fn ttls() -> Vec<Duration> {
    vec![
        Duration::from_nanos(1), // rounds up to 1 ms
        Duration::from_millis(1),
        Duration::from_millis(2),
        Duration::from_millis(999),
        Duration::from_millis(1000),
        Duration::from_millis(1001),
        Duration::from_nanos(1_000_000_001), // rounds up to 1001 ms
        Duration::from_millis(1999),
        Duration::from_millis(2500),
        Duration::from_secs(59),
        Duration::from_millis(60_001),
        Duration::from_secs(3600),
        Duration::from_secs(7 * 24 * 3600) + Duration::from_millis(3),
    ]
}

fn ttl_millis(ttl: Duration) -> u64 {
    ttl.as_nanos().div_ceil(1_000_000) as u64
}

fn config(clock: &ManualClock) -> Config {
    Config::default().clock(clock.clone())
}

fn value(ttl_index: usize, generation: &str) -> Vec<u8> {
    format!("{generation} value of ttl #{ttl_index}").into_bytes()
}

/// Steps the clock through every deadline: at deadline - 1 ms the key is live (get and
/// check_or_insert see the first value), at the deadline it is gone and check_or_insert
/// inserts the new value. Then the new values survive reopen.
#[test]
fn entries_vanish_exactly_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let start = clock.now_millis();
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    let ttls = ttls();
    let keys: Vec<Vec<u8>> = (0..ttls.len())
        .map(|i| format!("expiry/key-{i}").into_bytes())
        .collect();
    for (i, ttl) in ttls.iter().enumerate() {
        let outcome = store
            .check_or_insert(&keys[i], *ttl, &value(i, "first"))
            .unwrap();
        assert_eq!(outcome, Outcome::Inserted);
    }
    let deadlines: Vec<u64> = ttls.iter().map(|t| start + ttl_millis(*t)).collect();
    // Keys sharing a deadline (1 ns and 1 ms both round to 1 ms) are stepped through together.
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, deadline) in deadlines.iter().enumerate() {
        groups.entry(*deadline).or_default().push(i);
    }
    // The deadline of key i's second life, once it has been re-inserted after it expired.
    let mut reborn: Vec<Option<u64>> = vec![None; ttls.len()];

    let check_all = |store: &Store, reborn: &[Option<u64>], now: u64| {
        for i in 0..ttls.len() {
            let got = store.get(&keys[i]).unwrap();
            let expected = if let Some(second_deadline) = reborn[i] {
                (now < second_deadline).then(|| value(i, "second"))
            } else if now < deadlines[i] {
                Some(value(i, "first"))
            } else {
                None
            };
            assert_eq!(
                got.as_deref(),
                expected.as_deref(),
                "key {i} (ttl {:?}) at {} ms after insert",
                ttls[i],
                now - start
            );
        }
    };

    for (&deadline, group) in &groups {
        clock.set_millis(deadline - 1);
        check_all(&store, &reborn, clock.now_millis());
        for &i in group {
            let outcome = store
                .check_or_insert(&keys[i], LONG_TTL, &value(i, "second"))
                .unwrap();
            assert_eq!(
                outcome,
                Outcome::Duplicate(Value::from(&value(i, "first")[..])),
                "key {i} (ttl {:?}) 1 ms before its deadline",
                ttls[i]
            );
        }
        clock.set_millis(deadline);
        for &i in group {
            assert_eq!(store.get(&keys[i]).unwrap(), None, "key {i} at deadline");
            let outcome = store
                .check_or_insert(&keys[i], LONG_TTL, &value(i, "second"))
                .unwrap();
            assert_eq!(
                outcome,
                Outcome::Inserted,
                "key {i} is free at its deadline"
            );
            reborn[i] = Some(deadline + ttl_millis(LONG_TTL));
        }
        check_all(&store, &reborn, clock.now_millis());
    }
    store.close().unwrap();

    // The second values survive reopen; the first, expired, records do not come back.
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    check_all(&store, &reborn, clock.now_millis());
    // The index keeps deadlines in whole seconds, so an entry that expired less than a second
    // ago may still be counted; a second later, after a maintenance round, none is.
    clock.advance(Duration::from_secs(1));
    store.maintain().unwrap();
    check_all(&store, &reborn, clock.now_millis());
    assert_eq!(store.stats().live_keys, ttls.len() as u64);
    // And they expire in their turn, also after reopen.
    let mut second_deadlines: Vec<u64> = reborn.iter().map(|d| d.unwrap()).collect();
    second_deadlines.sort_unstable();
    second_deadlines.dedup();
    for deadline in second_deadlines {
        if clock.now_millis() < deadline - 1 {
            clock.set_millis(deadline - 1);
            check_all(&store, &reborn, clock.now_millis());
        }
        clock.set_millis(deadline);
        check_all(&store, &reborn, clock.now_millis());
    }
    for key in &keys {
        assert_eq!(store.get(key).unwrap(), None);
    }
}

/// An entry closed while live and reopened after its deadline is gone; one reopened just before
/// its deadline is live until the deadline.
#[test]
fn expiry_is_decided_by_the_deadline_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let ttl = Duration::from_millis(1500);
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    store.check_or_insert(b"a", ttl, b"va").unwrap();
    store.close().unwrap();

    clock.advance(Duration::from_millis(1499));
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"va"[..]));
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(
        store.check_or_insert(b"a", ttl, b"va2").unwrap(),
        Outcome::Inserted
    );
    store.close().unwrap();

    // Reopen at the new deadline: the second record is gone too.
    clock.advance(Duration::from_millis(1500));
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    assert_eq!(store.get(b"a").unwrap(), None);
    assert_eq!(store.stats().live_keys, 0);
}

/// Batches see expiry like single calls: an expired key in a batch is inserted again, a live one
/// is a duplicate, and a key expired and repeated in the same batch is inserted once.
#[test]
fn batches_respect_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    let short = Duration::from_millis(10);
    let items: Vec<(&[u8], Duration, &[u8])> =
        vec![(b"short", short, b"s1"), (b"long", LONG_TTL, b"l1")];
    assert_eq!(
        store.check_or_insert_batch(&items).unwrap(),
        vec![Outcome::Inserted, Outcome::Inserted]
    );
    clock.advance(short);
    let items: Vec<(&[u8], Duration, &[u8])> = vec![
        (b"short", LONG_TTL, b"s2"),
        (b"long", LONG_TTL, b"l2"),
        (b"short", LONG_TTL, b"s3"),
    ];
    assert_eq!(
        store.check_or_insert_batch(&items).unwrap(),
        vec![
            Outcome::Inserted,
            Outcome::Duplicate(Value::from(&b"l1"[..])),
            Outcome::Duplicate(Value::from(&b"s2"[..])),
        ]
    );
}

/// A random model check of insert, get, remove and clock moves, with all keys hashing alike
/// (one shard, one probe run, dead slots reused) and with the normal hash, reopening now and
/// then. The model knows each key's value and exact deadline.
#[test]
fn random_operations_match_a_model_with_expiry() {
    for mask in [0, u64::MAX] {
        let (mut rng, seed) = seeded_rng(&format!("expiry model, hash mask {mask:#x}"));
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let open = || {
            Store::open_with(
                dir.path(),
                config(&clock)
                    .durability(Durability::Never)
                    .hash_mask_for_testing(mask),
            )
            .unwrap()
        };
        let mut store = open();
        // key → (value, deadline in ms)
        let mut model: BTreeMap<u32, (Vec<u8>, u64)> = BTreeMap::new();
        // The deadline of every record ever inserted (superseded ones included).
        let mut all_deadlines: Vec<u64> = Vec::new();
        let ttl_choices = [1u64, 5, 999, 1000, 1001, 3000, 60_000];
        for step in 0..4_000 {
            let now = clock.now_millis();
            let key_id: u32 = rng.gen_range(0..120);
            let key = format!("model/{key_id}").into_bytes();
            let live = model
                .get(&key_id)
                .filter(|(_, deadline)| *deadline > now)
                .cloned();
            let context = format!("seed {seed}, mask {mask:#x}, step {step}, key {key_id}");
            match rng.gen_range(0..100) {
                0..=44 => {
                    let ttl = *ttl_choices.choose(&mut rng).unwrap();
                    let value = format!("v{step}").into_bytes();
                    let outcome = store
                        .check_or_insert(&key, Duration::from_millis(ttl), &value)
                        .unwrap();
                    match live {
                        Some((old, _)) => {
                            assert_eq!(
                                outcome,
                                Outcome::Duplicate(Value::from(&old[..])),
                                "{context}"
                            )
                        }
                        None => {
                            assert_eq!(outcome, Outcome::Inserted, "{context}");
                            model.insert(key_id, (value, now + ttl));
                            all_deadlines.push(now + ttl);
                        }
                    }
                }
                45..=74 => {
                    let got = store.get(&key).unwrap();
                    assert_eq!(
                        got.as_deref(),
                        live.as_ref().map(|(v, _)| &v[..]),
                        "{context}"
                    );
                }
                75..=84 => {
                    let removed = store.remove(&key).unwrap();
                    assert_eq!(removed, live.is_some(), "{context}: remove");
                    model.remove(&key_id);
                }
                85..=98 => clock.advance(Duration::from_millis(rng.gen_range(0..1500))),
                // Reopening costs fsyncs (flush, checkpoint): now and then only.
                _ if rng.gen_bool(0.75) => {}
                _ => {
                    store.close().unwrap();
                    store = open();
                    // `live_keys` counts index entries, which may include entries expired so
                    // recently that the index (which keeps deadlines in whole seconds) has not
                    // shed them: at most one per record whose deadline passed less than 1 s ago
                    // (a key inserted again may still have its old entry too).
                    let now = clock.now_millis();
                    let live = model.values().filter(|(_, d)| *d > now).count() as u64;
                    let recently_expired = all_deadlines
                        .iter()
                        .filter(|d| **d <= now && **d + 1000 > now)
                        .count() as u64;
                    let counted = store.stats().live_keys;
                    assert!(
                        (live..=live + recently_expired).contains(&counted),
                        "{context}: reopen: live_keys {counted}, {live} live, \
                         {recently_expired} recently expired"
                    );
                }
            }
        }
        let now = clock.now_millis();
        for key_id in 0..120u32 {
            let key = format!("model/{key_id}").into_bytes();
            let expected = model
                .get(&key_id)
                .filter(|(_, deadline)| *deadline > now)
                .map(|(v, _)| v.clone());
            assert_eq!(
                store.get(&key).unwrap().map(Value::into_vec),
                expected,
                "seed {seed}, final key {key_id}"
            );
        }
    }
}

/// A random model check of batches: large batches that grow the index from empty while they
/// put, keys repeated within a batch, re-sent live and after their records expired (within and
/// past their slot's rounded-up second), removals, clock moves and `maintain`, with all keys
/// hashing alike (one shard, one probe run: every planned key of a batch finds the same
/// vacancy) and with the normal hash. After every batch each key it named answers as the model
/// says, and now and then every key the model holds is looked up. A batch that put a new entry
/// where its probe found a vacancy after the table was laid out anew, or after an earlier item
/// of the batch took that slot, would lose a key here.
#[test]
fn random_batches_match_a_model_across_index_growth() {
    for (mask, key_space) in [(0, 300u32), (u64::MAX, 40_000)] {
        let (mut rng, seed) = seeded_rng(&format!("batch model, hash mask {mask:#x}"));
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = Store::open_with(
            dir.path(),
            config(&clock)
                .durability(Durability::Never)
                .hash_mask_for_testing(mask),
        )
        .unwrap();
        // key → (value, deadline in ms)
        let mut model: BTreeMap<u32, (Vec<u8>, u64)> = BTreeMap::new();
        let ttl_choices = [1u64, 400, 999, 1000, 1500, 60_000, 3_600_000];
        let key_of = |id: u32| format!("batch/{id}").into_bytes();
        for step in 0..60 {
            let now = clock.now_millis();
            let size = if mask == 0 {
                rng.gen_range(1..200)
            } else {
                rng.gen_range(1..3_000)
            };
            let items: Vec<(Vec<u8>, Duration, Vec<u8>, u32)> = (0..size)
                .map(|n| {
                    let id = rng.gen_range(0..key_space);
                    let ttl = *ttl_choices.choose(&mut rng).unwrap();
                    let value = format!("v{step}.{n}").into_bytes();
                    (key_of(id), Duration::from_millis(ttl), value, id)
                })
                .collect();
            let call: Vec<(&[u8], Duration, &[u8])> = items
                .iter()
                .map(|(key, ttl, value, _)| (&key[..], *ttl, &value[..]))
                .collect();
            let outcomes = store.check_or_insert_batch(&call).unwrap();
            for ((_, ttl, value, id), outcome) in items.iter().zip(outcomes) {
                let context = format!("seed {seed}, mask {mask:#x}, step {step}, key {id}");
                match model.get(id).filter(|(_, deadline)| *deadline > now) {
                    Some((old, _)) => assert_eq!(
                        outcome,
                        Outcome::Duplicate(Value::from(&old[..])),
                        "{context}"
                    ),
                    None => {
                        assert_eq!(outcome, Outcome::Inserted, "{context}");
                        model.insert(*id, (value.clone(), now + ttl.as_millis() as u64));
                    }
                }
            }
            for _ in 0..rng.gen_range(0..20) {
                let id = rng.gen_range(0..key_space);
                let live = model.get(&id).is_some_and(|(_, deadline)| *deadline > now);
                assert_eq!(store.remove(&key_of(id)).unwrap(), live, "seed {seed}");
                model.remove(&id);
            }
            clock.advance(Duration::from_millis(rng.gen_range(0..1_200)));
            if rng.gen_bool(0.3) {
                store.maintain().unwrap();
            }
            if step % 10 == 9 {
                let now = clock.now_millis();
                for (id, (value, deadline)) in &model {
                    let expected = (*deadline > now).then_some(&value[..]);
                    assert_eq!(
                        store.get(&key_of(*id)).unwrap().as_deref(),
                        expected,
                        "seed {seed}, mask {mask:#x}, step {step}, lookup of key {id}"
                    );
                }
            }
        }
        assert!(
            store.stats().live_keys > u64::from(key_space) / 4,
            "the index grew"
        );
    }
}
