//! Guards `Store::check_or_insert_with` (single flight) under contention: per key at most one
//! closure runs at a time and exactly one succeeds; every caller gets `Inserted` (it ran the
//! recorded closure), `Duplicate` of the recorded value, its own closure's error or panic, or
//! `TimedOut`; and a closure blocked on one key does not block another key of the same shard.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Barrier, Once};
use std::time::{Duration, Instant};

use idem::{Config, Durability, Outcome, Store, Value, WithError};
use idem_tests::{seeded_rng, LONG_TTL};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const THREADS: usize = 8;
const ROUNDS: usize = 150;
const KEYS_PER_ROUND: usize = 6;

/// The payload of the panics the test's closures throw on purpose.
struct PlannedPanic;

/// Keeps planned panics out of the test output; every other panic is reported as usual.
fn silence_planned_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<PlannedPanic>() {
                default_hook(info);
            }
        }));
    });
}

fn never_store(dir: &std::path::Path, config: Config) -> Store {
    Store::open_with(dir, config.durability(Durability::Never)).expect("open")
}

/// What one caller's closure will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Succeed,
    Fail,
    Panic,
}

/// How a call ended, as seen by its caller.
#[derive(Debug)]
enum Ended {
    Returned(Result<Outcome, WithError<usize>>),
    Panicked(Box<dyn Any + Send>),
}

/// Counters shared by all the closures of one key.
#[derive(Default)]
struct KeyCounters {
    running: AtomicUsize,
    successes: AtomicUsize,
}

/// One call's record, checked after all threads are done.
struct Call {
    key: usize,
    caller: usize,
    plan: Plan,
    used_timeout: bool,
    ran: bool,
    ended: Ended,
}

fn key_name(key: usize) -> Vec<u8> {
    format!("single-flight/key-{key:05}").into_bytes()
}

fn value_of(key: usize, caller: usize) -> Vec<u8> {
    format!("key-{key}/made-by-{caller}").into_bytes()
}

/// Runs one caller's `check_or_insert_with` for `key`, its closure following `plan`.
fn call(
    store: &Store,
    counters: &KeyCounters,
    key: usize,
    caller: usize,
    plan: Plan,
    wait_timeout: Option<Duration>,
    yields: usize,
) -> Call {
    let ran = AtomicBool::new(false);
    let make_value = || {
        ran.store(true, Ordering::SeqCst);
        let before = counters.running.fetch_add(1, Ordering::SeqCst);
        assert_eq!(before, 0, "two closures of key {key} ran at once");
        for _ in 0..yields {
            std::thread::yield_now();
        }
        counters.running.fetch_sub(1, Ordering::SeqCst);
        match plan {
            Plan::Succeed => {
                counters.successes.fetch_add(1, Ordering::SeqCst);
                Ok(value_of(key, caller))
            }
            Plan::Fail => Err(caller),
            Plan::Panic => panic::panic_any(PlannedPanic),
        }
    };
    let name = key_name(key);
    let ended = panic::catch_unwind(AssertUnwindSafe(|| match wait_timeout {
        None => store.check_or_insert_with(&name, LONG_TTL, make_value),
        Some(timeout) => store.check_or_insert_with_timeout(&name, LONG_TTL, timeout, make_value),
    }));
    Call {
        key,
        caller,
        plan,
        used_timeout: wait_timeout.is_some(),
        ran: ran.load(Ordering::SeqCst),
        ended: match ended {
            Ok(returned) => Ended::Returned(returned),
            Err(payload) => Ended::Panicked(payload),
        },
    }
}

/// Tallies of the outcomes, printed at the end.
#[derive(Debug, Default)]
struct Tally {
    inserted: usize,
    duplicate: usize,
    closure_error: usize,
    panicked: usize,
    timed_out: usize,
}

/// Checks one call against the key's recorded value.
fn check_call(call: &Call, recorded: Option<&Value>, tally: &mut Tally) {
    let Call {
        key, caller, plan, ..
    } = call;
    match &call.ended {
        Ended::Returned(Ok(Outcome::Inserted)) => {
            assert_eq!(*plan, Plan::Succeed, "key {key} caller {caller}");
            assert!(call.ran);
            assert_eq!(
                recorded.map(|v| v.to_vec()),
                Some(value_of(*key, *caller)),
                "key {key}: caller {caller} got Inserted but its value is not the recorded one"
            );
            tally.inserted += 1;
        }
        Ended::Returned(Ok(Outcome::Duplicate(seen))) => {
            assert_eq!(Some(seen), recorded, "key {key} caller {caller}");
            tally.duplicate += 1;
        }
        Ended::Returned(Err(WithError::Closure(who))) => {
            assert_eq!((*plan, *who), (Plan::Fail, *caller), "key {key}");
            assert!(call.ran);
            tally.closure_error += 1;
        }
        Ended::Returned(Err(WithError::TimedOut)) => {
            assert!(call.used_timeout, "key {key} caller {caller}");
            assert!(!call.ran, "a timed-out caller's closure ran");
            tally.timed_out += 1;
        }
        Ended::Returned(Err(other)) => panic!("key {key} caller {caller}: {other:?}"),
        Ended::Panicked(payload) => {
            assert!(payload.is::<PlannedPanic>(), "key {key} caller {caller}");
            assert_eq!(*plan, Plan::Panic);
            assert!(call.ran);
            tally.panicked += 1;
        }
    }
}

#[test]
fn one_success_per_key_under_failures_panics_and_timeouts() {
    silence_planned_panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = never_store(dir.path(), Config::default());
    let (mut rng, _seed) = seeded_rng("single_flight stress");
    let thread_seeds: Vec<u64> = (0..THREADS).map(|_| rng.gen()).collect();
    let keys = ROUNDS * KEYS_PER_ROUND;
    let counters: Vec<KeyCounters> = (0..keys).map(|_| KeyCounters::default()).collect();
    let round_start = Barrier::new(THREADS);

    let calls: Vec<Call> = std::thread::scope(|scope| {
        let workers: Vec<_> = thread_seeds
            .iter()
            .enumerate()
            .map(|(thread, &seed)| {
                let (store, counters, round_start) = (&store, &counters, &round_start);
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut calls = Vec::new();
                    for round in 0..ROUNDS {
                        // Every thread calls every key of the round once, in its own order, all
                        // starting together: the keys are contended while they are new.
                        let mut order: Vec<usize> = (0..KEYS_PER_ROUND).collect();
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.gen_range(0..=i));
                        }
                        round_start.wait();
                        for slot in order {
                            let key = round * KEYS_PER_ROUND + slot;
                            let plan = match rng.gen_range(0..100) {
                                0..=29 => Plan::Fail,
                                30..=44 => Plan::Panic,
                                _ => Plan::Succeed,
                            };
                            let wait_timeout = match rng.gen_range(0..100) {
                                0..=4 => Some(Duration::ZERO),
                                5..=9 => Some(Duration::from_micros(rng.gen_range(1..200))),
                                _ => None,
                            };
                            let yields = rng.gen_range(0..20);
                            calls.push(call(
                                store,
                                &counters[key],
                                key,
                                thread,
                                plan,
                                wait_timeout,
                                yields,
                            ));
                        }
                    }
                    calls
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a worker failed"))
            .collect()
    });

    let mut tally = Tally::default();
    let mut keys_left_unrecorded = 0;
    let recorded: Vec<Option<Value>> = (0..keys)
        .map(|key| store.get(&key_name(key)).expect("get"))
        .collect();
    for call in &calls {
        check_call(call, recorded[call.key].as_ref(), &mut tally);
    }
    for (key, recorded) in recorded.iter().enumerate() {
        let successes = counters[key].successes.load(Ordering::SeqCst);
        let inserted = calls
            .iter()
            .filter(|c| c.key == key && matches!(c.ended, Ended::Returned(Ok(Outcome::Inserted))))
            .count();
        match recorded {
            Some(_) => assert_eq!((successes, inserted), (1, 1), "key {key}"),
            None => {
                // Every caller of this key failed, panicked or gave up: the key is free, and
                // the next caller records it.
                assert_eq!((successes, inserted), (0, 0), "key {key}");
                keys_left_unrecorded += 1;
                let last = call(&store, &counters[key], key, THREADS, Plan::Succeed, None, 0);
                assert!(matches!(last.ended, Ended::Returned(Ok(Outcome::Inserted))));
                assert_eq!(counters[key].successes.load(Ordering::SeqCst), 1);
            }
        }
    }
    assert_eq!(calls.len(), THREADS * keys);
    assert_eq!(tally.inserted + keys_left_unrecorded, keys);
    println!(
        "single_flight stress: {THREADS} threads, {keys} keys, {} calls: {tally:?}, \
         {keys_left_unrecorded} keys with no successful caller",
        calls.len()
    );
}

/// One answer of the plain-race test.
struct Answer {
    key: usize,
    caller: usize,
    /// Whether the caller used `check_or_insert_with` (else plain `check_or_insert`).
    with_closure: bool,
    outcome: Result<Outcome, WithError<usize>>,
}

/// Plain `check_or_insert` callers do not join flights: they may win while a closure runs. Each
/// key still gets exactly one `Inserted`, and every answer agrees with the recorded value.
#[test]
fn plain_callers_racing_closure_callers_agree_on_one_value() {
    silence_planned_panics();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = never_store(dir.path(), Config::default());
    const KEYS: usize = 300;
    let counters: Vec<KeyCounters> = (0..KEYS).map(|_| KeyCounters::default()).collect();
    let start = Barrier::new(THREADS);
    let (mut rng, _seed) = seeded_rng("single_flight plain race");
    let thread_seeds: Vec<u64> = (0..THREADS).map(|_| rng.gen()).collect();
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let workers: Vec<_> = thread_seeds
            .iter()
            .enumerate()
            .map(|(thread, &seed)| {
                let (store, counters, start) = (&store, &counters, &start);
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(seed);
                    start.wait();
                    let mut answers = Vec::new();
                    for key in 0..KEYS {
                        let name = key_name(key);
                        if rng.gen_bool(0.25) {
                            let outcome = store
                                .check_or_insert(&name, LONG_TTL, &value_of(key, thread))
                                .map_err(WithError::Store);
                            answers.push(Answer {
                                key,
                                caller: thread,
                                with_closure: false,
                                outcome,
                            });
                            continue;
                        }
                        let counters = &counters[key];
                        let outcome = store.check_or_insert_with(&name, LONG_TTL, || {
                            assert_eq!(counters.running.fetch_add(1, Ordering::SeqCst), 0);
                            std::thread::yield_now();
                            counters.running.fetch_sub(1, Ordering::SeqCst);
                            counters.successes.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, usize>(value_of(key, thread))
                        });
                        answers.push(Answer {
                            key,
                            caller: thread,
                            with_closure: true,
                            outcome,
                        });
                    }
                    answers
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a worker failed"))
            .collect()
    });
    let mut closure_values_dropped = 0;
    for (key, counters) in counters.iter().enumerate() {
        let recorded = store.get(&key_name(key)).expect("get").expect("recorded");
        let mut inserted = 0;
        for answer in answers.iter().filter(|a| a.key == key) {
            let (caller, with_closure) = (answer.caller, answer.with_closure);
            match &answer.outcome {
                Ok(Outcome::Inserted) => {
                    assert_eq!(recorded.to_vec(), value_of(key, caller), "key {key}");
                    inserted += 1;
                }
                Ok(Outcome::Duplicate(seen)) => assert_eq!(*seen, recorded, "key {key}"),
                Err(error) => {
                    panic!("key {key} caller {caller} (closure: {with_closure}): {error:?}")
                }
            }
        }
        assert_eq!(inserted, 1, "key {key}");
        // A closure succeeds at most once per key (then its flight records or a plain caller
        // had already won and its value is dropped).
        let successes = counters.successes.load(Ordering::SeqCst);
        assert!(successes <= 1, "key {key}: {successes} closures succeeded");
        let closure_inserted = answers
            .iter()
            .any(|a| a.key == key && a.with_closure && matches!(a.outcome, Ok(Outcome::Inserted)));
        closure_values_dropped += successes - usize::from(closure_inserted);
    }
    println!(
        "single_flight plain race: {KEYS} keys, {} calls, {closure_values_dropped} closure values \
         dropped because a plain caller won meanwhile",
        answers.len()
    );
}

/// With one index shard every key shares a shard lock: a closure blocked on key A must not stop
/// keys B (which also fill every in-flight shard) from completing. A deadlock here is reported
/// by the watchdog instead of hanging the test run.
#[test]
fn a_blocked_closure_does_not_block_other_keys_of_its_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = never_store(dir.path(), Config::default().shard_count(1));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (others_done_tx, others_done_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let store = &store;
        let blocked = scope.spawn(move || {
            store.check_or_insert_with(b"key-a", LONG_TTL, move || {
                started_tx.send(()).expect("send");
                release_rx.recv().expect("released");
                Ok::<_, ()>(b"A".to_vec())
            })
        });
        started_rx.recv().expect("A's closure started");
        scope.spawn(move || {
            for i in 0..200 {
                let key = format!("key-b-{i}").into_bytes();
                let outcome = store.check_or_insert_with(&key, LONG_TTL, || Ok::<_, ()>(b"B"));
                assert_eq!(outcome.expect("B"), Outcome::Inserted);
                let plain = format!("key-c-{i}").into_bytes();
                assert_eq!(
                    store.check_or_insert(&plain, LONG_TTL, b"C").expect("C"),
                    Outcome::Inserted
                );
            }
            // A is still in flight: it is absent, and a zero-timeout caller gives up at once.
            assert_eq!(store.get(b"key-a").expect("get"), None);
            let gave_up = store.check_or_insert_with_timeout(
                b"key-a",
                LONG_TTL,
                Duration::ZERO,
                || -> Result<Vec<u8>, ()> { unreachable!("A is in flight") },
            );
            assert!(matches!(gave_up, Err(WithError::TimedOut)));
            others_done_tx.send(()).expect("send");
        });
        let finished = others_done_rx.recv_timeout(Duration::from_secs(120));
        release_tx.send(()).expect("release A");
        finished.expect("keys B and C completed while A's closure was blocked");
        assert_eq!(blocked.join().expect("A").expect("A"), Outcome::Inserted);
    });
    assert_eq!(
        store.get(b"key-a").expect("get"),
        Some(Value::from(&b"A"[..]))
    );
}

/// Not a test: the cost of `check_or_insert_with` against `check_or_insert`, printed, not
/// asserted. Run with
/// `cargo test --release -p idem-tests --test single_flight -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it in release mode on a quiet machine"]
fn measure_cost_against_check_or_insert() {
    const KEY_COUNT: usize = 1_000_000;
    let keys: Vec<Vec<u8>> = (0..KEY_COUNT)
        .map(|i| format!("measure/key-{i:09}").into_bytes())
        .collect();
    let value = b"result-of-the-work";
    let time = |what: &str, run: &dyn Fn(&Store, &[u8])| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = never_store(dir.path(), Config::default());
        let started = Instant::now();
        for key in &keys {
            run(&store, key);
        }
        let new_keys = started.elapsed();
        let started = Instant::now();
        for key in &keys {
            run(&store, key);
        }
        let duplicates = started.elapsed();
        let per_op = |d: Duration| d.as_nanos() as f64 / KEY_COUNT as f64;
        println!(
            "{what:<22} new keys {:7.0} ns/op, duplicates {:7.0} ns/op",
            per_op(new_keys),
            per_op(duplicates)
        );
        store.close().expect("close");
        (per_op(new_keys), per_op(duplicates))
    };
    let plain = time("check_or_insert", &|store, key| {
        store.check_or_insert(key, LONG_TTL, value).expect("plain");
    });
    let with = time("check_or_insert_with", &|store, key| {
        store
            .check_or_insert_with(key, LONG_TTL, || Ok::<_, ()>(value))
            .expect("with");
    });
    println!(
        "ratio with/plain: new keys {:.2}x, duplicates {:.2}x ({KEY_COUNT} keys, Never mode, one thread)",
        with.0 / plain.0,
        with.1 / plain.1
    );
}
