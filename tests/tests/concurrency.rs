//! Guards the one atomic primitive under contention: when several threads race on the same keys,
//! each key is inserted exactly once and every duplicate answer carries the winner's value, in
//! every durability mode; and keys whose hashes collide completely are still kept apart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Barrier;
use std::time::Duration;

use idem::{Config, Durability, Outcome, Store};
use idem_tests::{seeded_rng, value_of, LONG_TTL};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const THREADS: usize = 8;
const KEYS: usize = 1_500;
/// How many threads attempt each key.
const ATTEMPTS_PER_KEY: usize = 4;

fn key(i: usize) -> Vec<u8> {
    format!("race/key-{i:05}").into_bytes()
}

/// The value thread `thread` offers for key `i`: it names the thread, so a duplicate answer
/// tells whose insert it saw.
fn offered_value(thread: usize, i: usize) -> Vec<u8> {
    format!("thread {thread} offers key {i}").into_bytes()
}

/// One thread's answers: key index → (whether it was this thread's insert, the value answered).
type Answers = Vec<(usize, Outcome, Vec<u8>)>;

fn race(store: &Store, seed: u64) -> Vec<Answers> {
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed ^ ((thread as u64 + 1) * 0x9e37_79b9));
                    // Key i is attempted by threads i, i+1, …, i+ATTEMPTS_PER_KEY-1 (mod THREADS).
                    let mut mine: Vec<usize> = (0..KEYS)
                        .filter(|i| (thread + THREADS - i % THREADS) % THREADS < ATTEMPTS_PER_KEY)
                        .collect();
                    mine.shuffle(&mut rng);
                    let mut answers = Answers::new();
                    barrier.wait();
                    let mut rest = &mine[..];
                    while !rest.is_empty() {
                        if rng.gen_bool(0.5) {
                            let i = rest[0];
                            let own = offered_value(thread, i);
                            let outcome = store.check_or_insert(&key(i), LONG_TTL, &own).unwrap();
                            answers.push((i, outcome.clone(), value_of(&outcome, &own)));
                            rest = &rest[1..];
                        } else {
                            let take = rng.gen_range(1..=24).min(rest.len());
                            let (batch_keys, tail) = rest.split_at(take);
                            rest = tail;
                            let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = batch_keys
                                .iter()
                                .map(|&i| (key(i), LONG_TTL, offered_value(thread, i)))
                                .collect();
                            let outcomes = store.check_or_insert_batch(&items).unwrap();
                            assert_eq!(outcomes.len(), items.len());
                            for ((&i, item), outcome) in batch_keys.iter().zip(&items).zip(outcomes)
                            {
                                let answered = value_of(&outcome, &item.2);
                                answers.push((i, outcome, answered));
                            }
                        }
                    }
                    answers
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Checks the answers of a race; returns the winner thread of every key.
fn check_answers(all: &[Answers], seed: u64) -> BTreeMap<usize, usize> {
    let mut winners: BTreeMap<usize, usize> = BTreeMap::new();
    for (thread, answers) in all.iter().enumerate() {
        for (i, outcome, _) in answers {
            if *outcome == Outcome::Inserted {
                if let Some(first) = winners.insert(*i, thread) {
                    panic!("seed {seed}: key {i} inserted by thread {first} and thread {thread}");
                }
            }
        }
    }
    assert_eq!(winners.len(), KEYS, "seed {seed}: every key inserted once");
    let mut attempts = vec![0usize; KEYS];
    for (thread, answers) in all.iter().enumerate() {
        for (i, outcome, answered) in answers {
            attempts[*i] += 1;
            let winner = winners[i];
            assert_eq!(
                answered,
                &offered_value(winner, *i),
                "seed {seed}: thread {thread} got {outcome:?} for key {i}, the winner was {winner}"
            );
        }
    }
    assert!(
        attempts.iter().all(|&n| n == ATTEMPTS_PER_KEY),
        "each key attempted by {ATTEMPTS_PER_KEY} threads"
    );
    winners
}

fn racing_threads_insert_each_key_once(durability: Durability) {
    let (_, seed) = seeded_rng(&format!("racing threads, {durability:?}"));
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().durability(durability);
    let store = Store::open_with(dir.path(), config()).unwrap();
    let answers = race(&store, seed);
    let winners = check_answers(&answers, seed);
    assert_eq!(store.stats().live_keys, KEYS as u64);
    for (i, winner) in &winners {
        assert_eq!(
            store.get(&key(*i)).unwrap().as_deref(),
            Some(&offered_value(*winner, *i)[..]),
            "seed {seed}: key {i}"
        );
    }
    store.close().unwrap();
    let store = Store::open_with(dir.path(), config()).unwrap();
    assert_eq!(store.stats().live_keys, KEYS as u64);
    for (i, winner) in &winners {
        assert_eq!(
            store.get(&key(*i)).unwrap().as_deref(),
            Some(&offered_value(*winner, *i)[..]),
            "seed {seed}: key {i} after reopen"
        );
    }
}

#[test]
fn racing_threads_insert_each_key_once_sync() {
    racing_threads_insert_each_key_once(Durability::Sync);
}

#[test]
fn racing_threads_insert_each_key_once_periodic() {
    racing_threads_insert_each_key_once(Durability::Periodic(Duration::from_millis(2)));
}

#[test]
fn racing_threads_insert_each_key_once_never() {
    racing_threads_insert_each_key_once(Durability::Never);
}

/// Keys that look alike: prefixes of one another, equal but for the last byte, with zero bytes,
/// of every length up to the limit.
fn look_alike_keys() -> Vec<Vec<u8>> {
    let mut keys = BTreeSet::new();
    // With every hash alike each lookup reads every stored key, so the set stays a few hundred.
    for len in 1..=32 {
        keys.insert(vec![b'a'; len]);
        keys.insert(vec![0u8; len]);
    }
    for last in (0..=255u8).step_by(2) {
        keys.insert([b"shared-prefix/".as_slice(), &[last]].concat());
    }
    for i in 0..100 {
        keys.insert(format!("k{i}").into_bytes());
        keys.insert(format!("k{i}\0").into_bytes());
    }
    keys.insert(vec![b'z'; idem::MAX_KEY_BYTES]);
    let mut almost = vec![b'z'; idem::MAX_KEY_BYTES];
    almost[idem::MAX_KEY_BYTES - 1] = b'y';
    keys.insert(almost);
    keys.insert(vec![b'z'; idem::MAX_KEY_BYTES - 1]);
    keys.into_iter().collect()
}

fn distinct_value(i: usize) -> Vec<u8> {
    format!("value of look-alike #{i}").into_bytes()
}

/// With every key hashing to the same shard and tag, only the full-key comparison keeps keys
/// apart: no key may be answered as a duplicate of another, concurrently or after reopen, and
/// removal from the middle of the single probe run must not lose the keys after it.
#[test]
fn fully_colliding_hashes_never_give_a_false_duplicate() {
    let keys = look_alike_keys();
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        Config::default()
            .durability(Durability::Never)
            .hash_mask_for_testing(0)
    };
    let store = Store::open_with(dir.path(), config()).unwrap();
    // Four threads each insert every fourth key, concurrently; all must be new.
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (keys, store) = (&keys, &store);
            scope.spawn(move || {
                for (i, key) in keys.iter().enumerate().skip(thread).step_by(4) {
                    let outcome = store
                        .check_or_insert(key, LONG_TTL, &distinct_value(i))
                        .unwrap();
                    assert_eq!(
                        outcome,
                        Outcome::Inserted,
                        "look-alike #{i} {:?}",
                        String::from_utf8_lossy(key)
                    );
                }
            });
        }
    });
    let check = |store: &Store, removed: &BTreeSet<usize>, when: &str| {
        for (i, key) in keys.iter().enumerate() {
            let expected = (!removed.contains(&i)).then(|| distinct_value(i));
            assert_eq!(
                store.get(key).unwrap().map(idem::Value::into_vec),
                expected,
                "{when}: look-alike #{i} {:?}",
                String::from_utf8_lossy(key)
            );
        }
        assert_eq!(
            store.stats().live_keys,
            (keys.len() - removed.len()) as u64,
            "{when}"
        );
    };
    let mut removed = BTreeSet::new();
    check(&store, &removed, "after the concurrent inserts");
    // A batch offering every key again answers each with its own value.
    let items: Vec<(&[u8], Duration, &[u8])> = keys
        .iter()
        .map(|k| (&k[..], LONG_TTL, &b"impostor"[..]))
        .collect();
    let outcomes = store.check_or_insert_batch(&items).unwrap();
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            *outcome,
            Outcome::Duplicate(idem::Value::from(&distinct_value(i)[..]))
        );
    }
    store.close().unwrap();

    let store = Store::open_with(dir.path(), config()).unwrap();
    check(&store, &removed, "after reopen");
    for i in (0..keys.len()).step_by(3) {
        assert!(store.remove(&keys[i]).unwrap());
        removed.insert(i);
    }
    check(&store, &removed, "after removing every third key");
    store.close().unwrap();
    let store = Store::open_with(dir.path(), config()).unwrap();
    check(&store, &removed, "after removals and reopen");
}

/// The rule "never answer Duplicate for a record that could still be lost": in `Sync` mode, a
/// caller that finds another caller's not-yet-durable record waits for its fsync before it
/// answers (and so does `get`). Observed through the fsync counter, which counts an fsync once it
/// has completed: when a Duplicate (or a found value) is returned, an fsync must have completed
/// since the round began, before which the key did not exist.
#[test]
fn sync_duplicates_are_answered_only_once_durable() {
    const ROUNDS: usize = 100;
    const RACERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let store =
        Store::open_with(dir.path(), Config::default().durability(Durability::Sync)).unwrap();
    let all_done = Barrier::new(RACERS);
    let go = Barrier::new(RACERS);
    let fsyncs_at_start = std::sync::atomic::AtomicU64::new(0);
    let early = std::sync::atomic::AtomicUsize::new(0);
    let duplicates = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for racer in 0..RACERS {
            let (store, all_done, go) = (&store, &all_done, &go);
            let (fsyncs_at_start, early, duplicates) = (&fsyncs_at_start, &early, &duplicates);
            scope.spawn(move || {
                use std::sync::atomic::Ordering::SeqCst;
                for round in 0..ROUNDS {
                    // Quiet point: every earlier record is durable and no fsync is running.
                    all_done.wait();
                    if racer == 0 {
                        fsyncs_at_start.store(store.stats().fsyncs, SeqCst);
                    }
                    go.wait();
                    let key = format!("durable-race-{round}");
                    let before = fsyncs_at_start.load(SeqCst);
                    if racer % 2 == 1 {
                        if let Some(value) = store.get(key.as_bytes()).unwrap() {
                            if store.stats().fsyncs == before {
                                early.fetch_add(1, SeqCst);
                                eprintln!("round {round}: get returned {value:?} before an fsync");
                            }
                        }
                    }
                    let outcome = store
                        .check_or_insert(key.as_bytes(), LONG_TTL, b"v")
                        .unwrap();
                    if outcome.is_duplicate() {
                        duplicates.fetch_add(1, SeqCst);
                        if store.stats().fsyncs == before {
                            early.fetch_add(1, SeqCst);
                            eprintln!("round {round}: Duplicate answered before an fsync");
                        }
                    }
                }
            });
        }
    });
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(duplicates.load(SeqCst), ROUNDS * (RACERS - 1));
    assert_eq!(
        early.load(SeqCst),
        0,
        "answers were given for records not yet durable"
    );
}

/// Threads appending every way at once (single records, batches, transactions with state and a
/// position, records of several sizes) through a log of 16 KiB segments, so that appends from
/// different threads meet at every roll: the log they leave reads back clean record by record,
/// holds every record, and a reopen serves what each thread wrote.
fn threads_appending_every_way_leave_a_whole_log(durability: Durability, per_thread: usize) {
    const APPENDERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        Config::default()
            .durability(durability)
            .segment_size_bytes_for_testing(16 << 10)
            .background_maintenance(false)
    };
    let key = |thread: usize, i: usize| format!("lanes/{thread}/{i:06}").into_bytes();
    let value = |thread: usize, i: usize| {
        // 16 to 300 bytes: records of many sizes, so that rolls fall at many offsets.
        vec![b'a' + (thread as u8); 16 + (i * 37) % 285]
    };
    let store = Store::open_with(dir.path(), config()).unwrap();
    let start = Barrier::new(APPENDERS);
    let mut last_txs = Vec::new();
    let records: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..APPENDERS)
            .map(|thread| {
                let (store, start) = (&store, &start);
                scope.spawn(move || {
                    start.wait();
                    let mut records = 0u64;
                    let mut last_tx = None;
                    let (mut i, mut op) = (0, 0);
                    while i < per_thread {
                        op += 1;
                        match op % 4 {
                            0 | 3 => {
                                let outcome = store
                                    .check_or_insert(&key(thread, i), LONG_TTL, &value(thread, i))
                                    .unwrap();
                                assert_eq!(outcome, Outcome::Inserted);
                                records += 1;
                                i += 1;
                            }
                            1 => {
                                let batch: Vec<_> = (i..(i + 8).min(per_thread))
                                    .map(|j| (key(thread, j), LONG_TTL, value(thread, j)))
                                    .collect();
                                let outcomes = store.check_or_insert_batch(&batch).unwrap();
                                assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
                                records += batch.len() as u64;
                                i += batch.len();
                            }
                            _ => {
                                let mut tx = store.transaction();
                                let outcome = tx
                                    .check_or_insert(&key(thread, i), LONG_TTL, &value(thread, i))
                                    .unwrap();
                                assert_eq!(outcome, Outcome::Inserted);
                                let state_key = format!("lanes/state/{thread}").into_bytes();
                                tx.put_state(&state_key, &(i as u64).to_le_bytes()).unwrap();
                                let source = format!("lanes/source/{thread}").into_bytes();
                                tx.set_position(&source, i as u64).unwrap();
                                tx.commit().unwrap();
                                // The insert, the state entry, the position (the first two
                                // carrying the continuation flag).
                                records += 3;
                                last_tx = Some(i);
                                i += 1;
                            }
                        }
                    }
                    (records, last_tx.expect("a transaction per four operations"))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .collect::<Vec<_>>()
    })
    .into_iter()
    .fold(0, |sum, (records, last_tx)| {
        last_txs.push(last_tx);
        sum + records
    });
    // Counted once closed: until then the writer may not have reached the newest segments.
    store.close().unwrap();
    let segments = idem_tests::segment_files(dir.path()).len();
    assert!(
        segments > 10,
        "the appends rolled the log many times: {segments} segments"
    );
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records(), records, "every record is in the log once");
    let store = Store::open_with(dir.path(), config()).unwrap();
    assert_eq!(store.stats().live_keys, (APPENDERS * per_thread) as u64);
    assert_eq!(last_txs.len(), APPENDERS);
    for (thread, &last_tx) in last_txs.iter().enumerate() {
        for i in 0..per_thread {
            assert_eq!(
                store.get(&key(thread, i)).unwrap().as_deref(),
                Some(&value(thread, i)[..]),
                "thread {thread}, key {i} after reopen"
            );
        }
        let source = format!("lanes/source/{thread}").into_bytes();
        let last_tx = last_tx as u64;
        assert_eq!(store.position(&source).unwrap(), Some(last_tx));
        let state_key = format!("lanes/state/{thread}").into_bytes();
        assert_eq!(
            store.get_state(&state_key).unwrap().as_deref(),
            Some(&last_tx.to_le_bytes()[..])
        );
    }
}

#[test]
fn threads_appending_every_way_leave_a_whole_log_never() {
    threads_appending_every_way_leave_a_whole_log(Durability::Never, 4_000);
}

#[test]
fn threads_appending_every_way_leave_a_whole_log_sync() {
    threads_appending_every_way_leave_a_whole_log(Durability::Sync, 400);
}
