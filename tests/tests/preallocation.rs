//! Prepared (pre-zeroed) segments in the fsync-bound modes: the next segment is written ahead in
//! the background, the log moves into it, a closed store keeps no zeros, and a crash with a
//! prepared tail loses nothing acknowledged and is not reported as a torn write.

use std::path::Path;
use std::time::{Duration, Instant};

use idem::sim::{SimStorage, Storage};
use idem::{Config, Durability, Store};
use idem_tests::LONG_TTL;

const SEGMENT: u32 = Config::MIN_SEGMENT_SIZE_BYTES;

fn names(dir: &Path) -> Vec<(String, u64)> {
    let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let len = e.metadata().unwrap().len();
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    names.sort();
    names
}

fn prepared(dir: &Path) -> Vec<(String, u64)> {
    names(dir)
        .into_iter()
        .filter(|(name, _)| name.ends_with(".prepared"))
        .collect()
}

fn segments(dir: &Path) -> Vec<(String, u64)> {
    names(dir)
        .into_iter()
        .filter(|(name, _)| name.starts_with("segment-") && name.ends_with(".idem"))
        .collect()
}

/// A `Sync` store on `storage` at `/sim`, with the defaults a caller's storage gets.
fn open_sim_default(storage: &SimStorage) -> Store {
    Store::open_with(
        "/sim",
        Config::default()
            .storage(storage.process())
            .durability(Durability::Sync),
    )
    .unwrap()
}

/// Inserts `count` fresh keys from `first` in `Sync` batches of 1000.
fn insert(store: &Store, first: usize, count: usize) {
    for start in (first..first + count).step_by(1000) {
        let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (start..(start + 1000).min(first + count))
            .map(|i| (format!("key-{i:08}").into_bytes(), LONG_TTL, b"v".to_vec()))
            .collect();
        for outcome in store.check_or_insert_batch(&items).unwrap() {
            assert!(!outcome.is_duplicate());
        }
    }
}

/// The prepared files once one is whole (the preparer writes it in pieces: it exists before it
/// is complete), or what there is after 20 s.
fn wait_for_prepared(dir: &Path) -> Vec<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = prepared(dir);
        let whole = found.iter().any(|(_, len)| *len == u64::from(SEGMENT));
        if whole || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sync_mode_prepares_the_next_segment_moves_into_it_and_trims_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .durability(Durability::Sync)
        .segment_size_bytes(SEGMENT)
        .background_maintenance(false);
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    let ahead = wait_for_prepared(dir.path());
    assert_eq!(ahead.len(), 1, "one segment prepared ahead: {ahead:?}");
    assert_eq!(ahead[0].0, "segment-00000002.idem.prepared");
    assert_eq!(
        ahead[0].1,
        u64::from(SEGMENT),
        "zeros up to the segment size"
    );
    // About 2.5 segments of records: the log moves into prepared segments 2 and 3.
    // About 2.7 segments of 1 MiB at 28 bytes a record.
    let keys = 100_000;
    insert(&store, 0, keys);
    let open_segments = segments(dir.path());
    assert!(open_segments.len() >= 3, "{open_segments:?}");
    // The tail is a prepared file, or (if the preparer lagged behind the writer) gets zeros
    // laid ahead after the writer's next round: either way, allocated to the segment size.
    let deadline = Instant::now() + Duration::from_secs(20);
    while segments(dir.path()).last().unwrap().1 < u64::from(SEGMENT) && Instant::now() < deadline {
        store.check_or_insert(b"one more", LONG_TTL, b"v").unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let tail = segments(dir.path()).last().unwrap().clone();
    assert_eq!(tail.1, u64::from(SEGMENT), "the tail is allocated ahead");
    let open_segments = segments(dir.path());
    // Sealed segments were cut to their records before their seal.
    for (name, len) in &open_segments[..open_segments.len() - 1] {
        assert!(*len < u64::from(SEGMENT), "{name}: {len}");
    }
    drop(store);
    assert!(prepared(dir.path()).is_empty(), "{:?}", names(dir.path()));
    let closed = segments(dir.path());
    assert!(
        closed.last().unwrap().1 < u64::from(SEGMENT),
        "the tail's zeros were cut on close: {closed:?}"
    );
    let store = Store::open_with(dir.path(), config).unwrap();
    assert_eq!(store.recovery_report().truncated_tail, None);
    for i in (0..keys).step_by(97) {
        let key = format!("key-{i:08}");
        assert!(store.get(key.as_bytes()).unwrap().is_some(), "{key}");
    }
}

#[test]
fn never_mode_and_a_callers_storage_prepare_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Config::default()
            .durability(Durability::Never)
            .segment_size_bytes(SEGMENT),
    )
    .unwrap();
    insert(&store, 0, 50_000);
    store.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(prepared(dir.path()).is_empty(), "{:?}", names(dir.path()));
    drop(store);
    // A storage of the caller's: no background writes unless asked for.
    let storage = SimStorage::new(3);
    let store = open_sim_default(&storage);
    std::thread::sleep(Duration::from_millis(50));
    let listed = storage.list(Path::new("/sim")).unwrap();
    assert!(
        !listed.iter().any(|name| name.ends_with(".prepared")),
        "{listed:?}"
    );
    drop(store);
}

#[test]
fn a_power_loss_with_a_prepared_tail_keeps_every_acknowledged_key_and_cuts_nothing() {
    let mut prepared_tails = 0;
    for seed in 0..8 {
        let storage = SimStorage::new(seed);
        let config = Config::default()
            .storage(storage.process())
            .preallocate_segments(true)
            .durability(Durability::Sync)
            .background_maintenance(false)
            .segment_size_bytes_for_testing(16 << 10);
        let store = Store::open_with("/sim", config.clone()).unwrap();
        let mut acknowledged = 0;
        for i in 0..(2_000 + seed as usize * 97) {
            let key = format!("key-{i:08}");
            store
                .check_or_insert(key.as_bytes(), LONG_TTL, b"v")
                .unwrap();
            acknowledged = i + 1;
        }
        storage.crash();
        drop(store);
        let mut ids = storage.list(Path::new("/sim")).unwrap();
        ids.retain(|name| name.starts_with("segment-") && name.ends_with(".idem"));
        ids.sort();
        let newest = storage
            .open(&Path::new("/sim").join(ids.last().unwrap()))
            .unwrap();
        // (The writer lays zeros ahead after a round: a crash right after the last insert's
        // round may come before it, so not every seed leaves a prepared tail.)
        prepared_tails += usize::from(newest.len().unwrap() == 16 << 10);
        drop(newest);
        let store = Store::open_with("/sim", config.storage(storage.process())).unwrap();
        for i in 0..acknowledged {
            let key = format!("key-{i:08}");
            assert!(
                store.get(key.as_bytes()).unwrap().is_some(),
                "seed {seed}: acknowledged {key} lost"
            );
        }
        // A crash leaves the tail's unused zeros; they are no torn write.
        assert_eq!(store.recovery_report().truncated_tail, None, "seed {seed}");
        store.check_or_insert(b"after", LONG_TTL, b"x").unwrap();
        storage.crash();
        drop(store);
        let store = open_sim_default(&storage);
        assert_eq!(store.get(b"after").unwrap().unwrap(), b"x", "seed {seed}");
    }
    assert!(
        prepared_tails >= 4,
        "{prepared_tails} of 8 crashes left a prepared tail"
    );
}

#[test]
fn an_unprepared_segment_gets_zeros_ahead_of_its_records_cut_on_close() {
    // A new store's first segment (and a reopened store's tail) was not prepared: the writer
    // lays zeros ahead of its records, a MiB at a time, fsynced once.
    let dir = tempfile::tempdir().unwrap();
    let config = Config::default()
        .durability(Durability::Sync)
        .segment_size_bytes(4 * SEGMENT);
    for round in 0..2 {
        let store = Store::open_with(dir.path(), config.clone()).unwrap();
        store
            .check_or_insert(format!("first-{round}").as_bytes(), LONG_TTL, b"v")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let tail = loop {
            let tail = segments(dir.path()).last().unwrap().clone();
            if tail.1 >= 1 << 20 || Instant::now() > deadline {
                break tail;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(tail.1 >= 1 << 20, "round {round}: no runway: {tail:?}");
        insert(&store, round * 100_000, 60_000);
        let grown = segments(dir.path()).last().unwrap().1;
        assert!(grown > 1 << 20, "round {round}: the runway grew: {grown}");
        drop(store);
        let closed = segments(dir.path()).last().unwrap().1;
        assert!(
            closed < grown,
            "round {round}: cut on close: {closed} of {grown}"
        );
    }
    let store = Store::open_with(dir.path(), config).unwrap();
    assert_eq!(store.recovery_report().truncated_tail, None);
    assert!(store.get(b"first-0").unwrap().is_some());
    assert!(store.get(b"first-1").unwrap().is_some());
}
