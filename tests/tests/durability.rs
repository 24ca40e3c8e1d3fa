//! Guards what each durability mode costs in fsyncs (counted, never timed): a `Sync` batch shares
//! one commit, concurrent `Sync` callers share fsyncs (group commit), durable duplicates cost
//! none, `Never` fsyncs only when asked, and `Periodic` fsyncs on its own.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use idem::{Config, Durability, Outcome, Store};
use idem_tests::LONG_TTL;

fn open(dir: &std::path::Path, durability: Durability) -> Store {
    Store::open_with(dir, Config::default().durability(durability)).unwrap()
}

fn fsyncs(store: &Store) -> u64 {
    store.stats().fsyncs
}

#[test]
fn a_sync_insert_is_fsynced_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    for i in 0..5 {
        let before = fsyncs(&store);
        let key = format!("single-{i}");
        store
            .check_or_insert(key.as_bytes(), LONG_TTL, b"v")
            .unwrap();
        assert!(
            fsyncs(&store) > before,
            "insert {i} returned before an fsync"
        );
    }
}

/// Inserts a fresh Sync batch of 1000 keys and returns how many fsyncs it cost; then checks that
/// the same batch again, all durable duplicates, costs none.
fn fsyncs_of_a_batch_of_1000() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    // Warm up: the first write of a fresh store may do extra work.
    store.check_or_insert(b"warm-up", LONG_TTL, b"v").unwrap();
    let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..1000)
        .map(|i| {
            (
                format!("batch-{i:04}").into_bytes(),
                LONG_TTL,
                vec![7u8; 32],
            )
        })
        .collect();
    let before = fsyncs(&store);
    let outcomes = store.check_or_insert_batch(&items).unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
    let spent = fsyncs(&store) - before;
    assert!(spent >= 1, "a Sync batch returned before any fsync");

    // The same batch again is all duplicates of durable records: no fsync at all.
    let before = fsyncs(&store);
    let outcomes = store.check_or_insert_batch(&items).unwrap();
    assert!(outcomes.iter().all(Outcome::is_duplicate));
    for item in items.iter().step_by(100) {
        assert!(store.get(&item.0).unwrap().is_some());
    }
    assert_eq!(
        fsyncs(&store) - before,
        0,
        "durable duplicates need no fsync"
    );
    spent
}

/// The documented promise of `check_or_insert_batch`: "many items with one commit (one fsync in
/// `Sync` mode)". Ten rounds, so a timing-dependent extra fsync shows.
#[test]
fn a_sync_batch_of_1000_costs_one_fsync() {
    for round in 0..10 {
        let spent = fsyncs_of_a_batch_of_1000();
        assert!(
            spent == 1,
            "round {round}: a batch of 1000 Sync inserts cost {spent} fsyncs"
        );
    }
}

#[test]
fn concurrent_sync_callers_share_fsyncs() {
    const THREADS: usize = 64;
    const INSERTS_PER_THREAD: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Sync);
    let barrier = Barrier::new(THREADS);
    let before = fsyncs(&store);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (store, barrier) = (&store, &barrier);
            scope.spawn(move || {
                barrier.wait();
                for i in 0..INSERTS_PER_THREAD {
                    let key = format!("t{thread}-{i}");
                    let outcome = store
                        .check_or_insert(key.as_bytes(), LONG_TTL, b"v")
                        .unwrap();
                    assert_eq!(outcome, Outcome::Inserted);
                }
            });
        }
    });
    let inserts = (THREADS * INSERTS_PER_THREAD) as u64;
    let spent = fsyncs(&store) - before;
    eprintln!("{inserts} concurrent Sync inserts took {spent} fsyncs");
    assert!(spent >= 1);
    assert!(
        spent < inserts,
        "{inserts} concurrent Sync inserts took {spent} fsyncs: no group commit"
    );
    assert_eq!(store.stats().live_keys, inserts);
}

#[test]
fn never_mode_fsyncs_only_on_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Never);
    let before = fsyncs(&store);
    for i in 0..500 {
        let key = format!("never-{i}");
        store
            .check_or_insert(key.as_bytes(), LONG_TTL, b"v")
            .unwrap();
    }
    let batch: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..500)
        .map(|i| {
            (
                format!("never-batch-{i}").into_bytes(),
                LONG_TTL,
                b"v".to_vec(),
            )
        })
        .collect();
    store.check_or_insert_batch(&batch).unwrap();
    assert_eq!(
        fsyncs(&store),
        before,
        "Never mode fsynced without being asked"
    );
    store.flush().unwrap();
    let after_flush = fsyncs(&store);
    assert!(after_flush > before, "flush in Never mode did not fsync");
    // A flush with nothing new still leaves everything durable; more data needs a new fsync.
    store.check_or_insert(b"one more", LONG_TTL, b"v").unwrap();
    store.flush().unwrap();
    assert!(fsyncs(&store) > after_flush);
}

#[test]
fn periodic_mode_fsyncs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Durability::Periodic(Duration::from_millis(10)));
    let before = fsyncs(&store);
    store.check_or_insert(b"periodic", LONG_TTL, b"v").unwrap();
    // Not a timing assertion: only that an fsync comes eventually without any call.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fsyncs(&store) == before {
        assert!(
            Instant::now() < deadline,
            "Periodic mode never fsynced on its own"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
