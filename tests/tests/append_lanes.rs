//! Appends through several lanes at once: a lane that sees others reserving between its own
//! reservations reserves space for several single-key inserts ahead (a chunk), so a key's
//! records can come from chunks of different lanes, and other records go to the tail above
//! them. These tests prove that a key's records still replay in the order of its operations
//! (each shard's fence and the end of the direct appends keep a chunk from taking an insert
//! below an earlier record of the shard), and that the padding of chunks closed early replays
//! as nothing. Each reopen comes after a power loss (`SimStorage::crash`), with checkpoints off:
//! the index is rebuilt from the log alone, in location order.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use idem::sim::SimStorage;
use idem::{Clock, Config, Durability, ManualClock, Outcome, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR: &str = "/sim/lanes";

fn config(storage: &SimStorage, clock: &ManualClock) -> Config {
    idem_tests::sim_config(storage, clock, Durability::Never)
        .segment_size_bytes_for_testing(16 << 10)
        .shard_count(4)
}

/// What the model says a key holds now: its value while its deadline is ahead.
fn expected(model: &HashMap<Vec<u8>, (Vec<u8>, u64)>, key: &[u8], now: u64) -> Option<Vec<u8>> {
    model
        .get(key)
        .filter(|(_, deadline)| *deadline > now)
        .map(|(value, _)| value.clone())
}

/// One thread, each append through the next lane in turn (so chunks are open in several lanes
/// at once, as with several threads), inserting, removing and re-inserting a few keys with
/// short and long TTLs while the clock moves: after a flush and a power loss, the reopened
/// store answers every key as the operations left it, also when its clock then stands earlier
/// (an expired record live again must not win over the one that replaced it).
#[test]
fn a_key_s_records_replay_in_operation_order_across_lanes() {
    for seed in 0..80u64 {
        // Removals close every open chunk (a removal goes to the tail): seeds without them keep
        // chunks open across many inserts, where a key re-inserted after it expired may come
        // to an older chunk than its expired record's.
        let removals = seed % 4 >= 2;
        let mut rng = StdRng::seed_from_u64(seed);
        let storage = SimStorage::new(seed);
        let clock = ManualClock::new();
        let store = Store::open_with(
            DIR,
            config(&storage, &clock).rotate_append_lanes_for_testing(true),
        )
        .unwrap();
        let mut model: HashMap<Vec<u8>, (Vec<u8>, u64)> = HashMap::new();
        let keys: Vec<Vec<u8>> = (0..12u8).map(|k| vec![b'k', k]).collect();
        for step in 0..600u32 {
            let key = &keys[rng.gen_range(0..keys.len())];
            let now = clock.now_millis();
            match rng.gen_range(0..10) {
                0..=5 => {
                    let ttl = Duration::from_secs([1, 5, 3600][rng.gen_range(0..3)]);
                    let value = step.to_le_bytes().to_vec();
                    let outcome = store.check_or_insert(key, ttl, &value).unwrap();
                    match expected(&model, key, now) {
                        Some(held) => assert_eq!(
                            outcome,
                            Outcome::Duplicate(held.as_slice().into()),
                            "seed {seed} step {step}"
                        ),
                        None => {
                            assert_eq!(outcome, Outcome::Inserted, "seed {seed} step {step}");
                            let deadline = now + ttl.as_millis() as u64;
                            model.insert(key.clone(), (value, deadline));
                        }
                    }
                }
                6..=8 if removals => {
                    let removed = store.remove(key).unwrap();
                    assert_eq!(
                        removed,
                        expected(&model, key, now).is_some(),
                        "seed {seed} step {step}"
                    );
                    if removed {
                        model.remove(key);
                    }
                }
                _ => clock.advance(Duration::from_millis(rng.gen_range(0..2500))),
            }
        }
        store.flush().unwrap();
        storage.crash();
        drop(store);
        // Half the seeds restart on a clock that stands earlier (a wall clock set back):
        // records that had expired are live again, so a key's replaced record must replay
        // before the record that replaced it, not only be dead by then.
        let clock = if seed % 2 == 0 {
            let started = ManualClock::new().now_millis();
            ManualClock::starting_at(started + (clock.now_millis() - started) / 2)
        } else {
            clock
        };
        let store = Store::open_with(DIR, config(&storage, &clock)).unwrap();
        assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
        let now = clock.now_millis();
        for key in &keys {
            assert_eq!(
                store.get(key).unwrap().map(|v| v.to_vec()),
                expected(&model, key, now),
                "seed {seed}, key {key:?}"
            );
        }
    }
}

/// Four threads take turns on the same keys, phase by phase (a barrier between phases), so
/// that each key's consecutive operations come from different threads and lanes: an insert in
/// even phases, a removal in odd ones. Meanwhile the other threads insert keys of
/// their own, which keeps every lane reserving chunks. After a flush and a power loss, each
/// key holds what its last phase left.
#[test]
fn keys_handed_between_threads_replay_to_their_last_operation() {
    const THREADS: usize = 4;
    const PHASES: usize = 13;
    const SHARED_KEYS: usize = 64;
    const OWN_PER_PHASE: usize = 200;
    let storage = SimStorage::new(7);
    let clock = ManualClock::new();
    let store = Arc::new(Store::open_with(DIR, config(&storage, &clock)).unwrap());
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                for phase in 0..PHASES {
                    for k in 0..SHARED_KEYS {
                        // Key k's turn in this phase goes to thread (k + phase) % THREADS.
                        if (k + phase) % THREADS == t {
                            let key = format!("shared-{k}");
                            if phase % 2 == 1 {
                                assert!(store.remove(key.as_bytes()).unwrap(), "{key} {phase}");
                            } else {
                                let value = format!("{phase}");
                                let outcome = store
                                    .check_or_insert(
                                        key.as_bytes(),
                                        Duration::from_secs(3600),
                                        value.as_bytes(),
                                    )
                                    .unwrap();
                                assert_eq!(outcome, Outcome::Inserted, "{key} {phase}");
                            }
                        }
                        if k % (SHARED_KEYS / 16) == 0 {
                            for i in 0..OWN_PER_PHASE / 16 {
                                let own = format!("own-{t}-{phase}-{k}-{i}");
                                store
                                    .check_or_insert(
                                        own.as_bytes(),
                                        Duration::from_secs(3600),
                                        b"o",
                                    )
                                    .unwrap();
                            }
                        }
                    }
                    barrier.wait();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    store.flush().unwrap();
    storage.crash();
    drop(store);
    let store = Store::open_with(DIR, config(&storage, &clock)).unwrap();
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    let last = PHASES - 1;
    assert_eq!(last % 2, 0, "the last phase inserts");
    for k in 0..SHARED_KEYS {
        let key = format!("shared-{k}");
        assert_eq!(
            store.get(key.as_bytes()).unwrap().map(|v| v.to_vec()),
            Some(format!("{last}").into_bytes()),
            "{key}"
        );
    }
    for t in 0..THREADS {
        for phase in 0..PHASES {
            let own = format!("own-{t}-{phase}-0-0");
            assert!(store.get(own.as_bytes()).unwrap().is_some(), "{own}");
        }
    }
}
