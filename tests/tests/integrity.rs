//! Regressions of issue #9: a removed key, a completed claim and a durable answer never come back
//! undone. Each test reproduces one bug a review found (it failed before the fix) through the
//! public API: `ManualClock` for time, `SimStorage` for power loss, and small wrappers around it
//! for a gated or panicking fsync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use idem::sim::{DirLock, SimStorage, Storage, StorageFile};
use idem::{
    Claim, ClaimToken, Config, Durability, Error, ManualClock, Outcome, Store, WithError, MAX_TTL,
};

const DIR: &str = "/sim/store";
const HOURS_10: Duration = Duration::from_secs(10 * 3600);
const SECS_30: Duration = Duration::from_secs(30);
const SECS_60: Duration = Duration::from_secs(60);
const SEGMENT_BYTES: u32 = 4096;

/// A config for the process running now (see [`idem_tests::sim_config`]).
fn config(storage: &SimStorage, clock: &ManualClock, durability: Durability) -> Config {
    idem_tests::sim_config(storage, clock, durability).segment_size_bytes_for_testing(SEGMENT_BYTES)
}

/// Writes `count` filler records of 100-byte values with `ttl`: about 30 fill a 4 KiB segment.
fn fill(store: &Store, tag: &str, count: usize, ttl: Duration) {
    for i in 0..count {
        let key = format!("{tag}-{i}");
        store
            .check_or_insert(key.as_bytes(), ttl, &[7u8; 100])
            .unwrap();
    }
}

/// Ends the current segment: a record that fills a segment on its own, so it starts a new one and
/// the record after it starts yet another. Its TTL decides how long its own segment lives.
fn wall(store: &Store, tag: &str, ttl: Duration) {
    use idem::record::{RECORD_HEADER_LEN, SEAL_RECORD_LEN, SEGMENT_HEADER_LEN};
    // A few bytes of slack: less than the smallest record, so nothing fits after it.
    let room = SEGMENT_BYTES as usize - SEGMENT_HEADER_LEN - SEAL_RECORD_LEN;
    let value = vec![9u8; room - RECORD_HEADER_LEN - tag.len() - 8];
    store.check_or_insert(tag.as_bytes(), ttl, &value).unwrap();
}

fn checkpoint_path() -> PathBuf {
    Path::new(DIR).join("checkpoint.idem")
}

/// Opens the store twice after it was dropped: with its checkpoint, then with the checkpoint
/// deleted (full replay), and returns `answer` of each.
fn both_reopens<T: std::fmt::Debug + PartialEq>(
    storage: &SimStorage,
    config: &Config,
    answer: impl Fn(&Store) -> T,
) -> (T, T) {
    let store = Store::open_with(DIR, config.clone()).unwrap();
    let from_checkpoint = answer(&store);
    drop(store);
    let _ = Storage::remove(storage, &checkpoint_path());
    let store = Store::open_with(DIR, config.clone()).unwrap();
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    let full_replay = answer(&store);
    (from_checkpoint, full_replay)
}

/// Bug 1, without a crash: a tombstone dropped by compaction because its key was inserted again
/// let the older insert it hid come back on a full replay once the re-insert expired.
#[test]
fn a_tombstone_outlives_the_reinsert_that_follows_it() {
    let storage = SimStorage::new(1);
    let clock = ManualClock::new();
    let config = config(&storage, &clock, Durability::Never);
    let store = Store::open_with(DIR, config.clone()).unwrap();
    store.check_or_insert(b"K", HOURS_10, b"v1").unwrap();
    fill(&store, "long", 10, HOURS_10); // v1's segment stays mostly live: never compacted
    wall(&store, "wall-1", HOURS_10);
    assert!(store.remove(b"K").unwrap());
    fill(&store, "short", 10, SECS_30); // the tombstone's segment empties out
    wall(&store, "wall-2", SECS_30);
    store.check_or_insert(b"K", SECS_60, b"v2").unwrap(); // v2's segment expires whole
    fill(&store, "medium", 10, SECS_30);
    wall(&store, "wall-3", SECS_30);
    store.checkpoint().unwrap();
    // Time passes: the short fillers expire (the tombstone's segment is compacted), then v2,
    // then every segment holding v2 or a copy of it is deleted whole.
    for _ in 0..10 {
        clock.advance(SECS_30);
        fill(&store, &format!("tail-{}", clock_secs(&clock)), 40, SECS_30);
        store.flush().unwrap();
        while store.maintain().unwrap().segments_compacted > 0 {}
    }
    let stats = store.stats();
    assert!(stats.segments_compacted > 0, "{stats:?}");
    assert!(stats.segments_deleted > 0, "{stats:?}");
    assert_eq!(store.get(b"K").unwrap(), None);
    store.flush().unwrap();
    drop(store);
    let (from_checkpoint, full_replay) = both_reopens(&storage, &config, |s| s.get(b"K").unwrap());
    assert_eq!(from_checkpoint, None);
    assert_eq!(
        full_replay, None,
        "the removed v1 came back on a full replay"
    );
}

fn clock_secs(clock: &ManualClock) -> u64 {
    idem::Clock::now_millis(clock) / 1000
}

/// Bug 1, with power loss: the removal is durable, the re-insert is not; compaction must not
/// delete the tombstone's segment before what it relied on is durable.
#[test]
fn an_acknowledged_removal_survives_compaction_and_power_loss() {
    for seed in 0..16 {
        let storage = SimStorage::new(seed);
        let clock = ManualClock::new();
        let config = config(&storage, &clock, Durability::Never);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        store.check_or_insert(b"K", HOURS_10, b"v1").unwrap();
        fill(&store, "long", 10, HOURS_10); // v1's segment stays mostly live: never compacted
        wall(&store, "wall-1", HOURS_10);
        assert!(store.remove(b"K").unwrap()); // the tombstone's segment: short-lived fillers
        fill(&store, "short", 10, SECS_30);
        wall(&store, "wall-2", SECS_30);
        store.flush().unwrap(); // the removal is acknowledged durable
        clock.advance(SECS_30 + Duration::from_secs(1));
        store.check_or_insert(b"K", HOURS_10, b"v2").unwrap(); // not durable yet
        let mut compacted = 0;
        for _ in 0..8 {
            compacted += store.maintain().unwrap().segments_compacted;
        }
        assert!(compacted > 0, "seed {seed}: nothing was compacted");
        storage.crash();
        drop(store);
        let config = self::config(&storage, &clock, Durability::Never);
        let store = Store::open_with(DIR, config).unwrap();
        let got = store.get(b"K").unwrap();
        assert_ne!(
            got.as_deref(),
            Some(&b"v1"[..]),
            "seed {seed}: an acknowledged removal was undone"
        );
    }
}

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Bug 2: a claim completed with a result TTL shorter than its lease came back after a restart
/// once the result's segment was deleted as fully expired.
#[test]
fn a_completed_claim_never_comes_back() {
    let storage = SimStorage::new(2);
    let clock = ManualClock::new();
    let config = config(&storage, &clock, Durability::Sync);
    let store = Store::open_with(DIR, config.clone()).unwrap();
    let token = acquired(store.claim(b"K", Duration::from_secs(3600)).unwrap());
    fill(&store, "long", 10, HOURS_10); // the Claim record's segment stays
    wall(&store, "wall-1", HOURS_10);
    store.complete(token, SECS_60, b"receipt").unwrap();
    fill(&store, "short", 10, SECS_30); // the completion's segment can expire whole
    wall(&store, "wall-2", SECS_30);
    clock.advance(Duration::from_secs(61));
    fill(&store, "later", 60, HOURS_10);
    for _ in 0..8 {
        store.maintain().unwrap();
    }
    assert!(store.stats().segments_deleted > 0, "{:?}", store.stats());
    // Read-only answers: a claim taken and released here would write a removal that hides the
    // bug from the reopens below.
    let answer = |store: &Store| (store.in_doubt().unwrap(), store.get(b"K").unwrap());
    assert_eq!(answer(&store), (vec![], None));
    drop(store);
    let (from_checkpoint, full_replay) = both_reopens(&storage, &config, answer);
    // The key is free (its result expired), and no completed claim is in doubt.
    assert_eq!(from_checkpoint, (vec![], None), "with the checkpoint");
    assert_eq!(full_replay, (vec![], None), "full replay");
    let store = Store::open_with(DIR, config).unwrap();
    assert!(
        matches!(store.claim(b"K", SECS_30).unwrap(), Claim::Acquired(_)),
        "the completed claim is in flight again"
    );
}

/// A claim completed with a result TTL longer than its lease: the result stays for its TTL.
#[test]
fn a_result_longer_than_its_lease_stays_for_its_ttl() {
    let storage = SimStorage::new(3);
    let clock = ManualClock::new();
    let config = config(&storage, &clock, Durability::Sync);
    let store = Store::open_with(DIR, config.clone()).unwrap();
    let token = acquired(store.claim(b"K", SECS_30).unwrap());
    store.complete(token, HOURS_10, b"receipt").unwrap();
    fill(&store, "short", 60, SECS_30);
    clock.advance(Duration::from_secs(3600));
    for _ in 0..4 {
        store.maintain().unwrap();
    }
    drop(store);
    let (a, b) = both_reopens(&storage, &config, |s| {
        (s.get(b"K").unwrap(), s.in_doubt().unwrap())
    });
    assert_eq!(a, (Some(idem::Value::from(&b"receipt"[..])), vec![]));
    assert_eq!(a, b);
}

/// A storage whose fsyncs, once armed, block until released and then fail: a `Sync` caller's
/// record stays not-durable for as long as the test wants, and is then lost for good.
#[derive(Debug, Clone)]
struct GatedStorage {
    inner: SimStorage,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    armed: AtomicBool,
    waiting: AtomicUsize,
    released: Mutex<bool>,
    opened: Condvar,
    panic_instead: AtomicBool,
}

impl Gate {
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

#[derive(Debug)]
struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn dir_exists(&self, dir: &Path) -> std::io::Result<bool> {
        self.inner.dir_exists(dir)
    }
    fn lock_dir(&self, dir: &Path) -> std::io::Result<Option<DirLock>> {
        self.inner.lock_dir(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        let inner = self.inner.create_new(path)?;
        Ok(Box::new(GatedFile {
            inner,
            gate: Arc::clone(&self.gate),
        }))
    }
    fn create_truncate(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        let inner = self.inner.create_truncate(path)?;
        Ok(Box::new(GatedFile {
            inner,
            gate: Arc::clone(&self.gate),
        }))
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        let inner = Storage::open(&self.inner, path)?;
        Ok(Box::new(GatedFile {
            inner,
            gate: Arc::clone(&self.gate),
        }))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if !self.gate.armed.load(Ordering::SeqCst) {
            return self.inner.sync_data();
        }
        if self.gate.panic_instead.load(Ordering::SeqCst) {
            panic!("a storage bug: sync_data panicked");
        }
        self.gate.waiting.fetch_add(1, Ordering::SeqCst);
        let mut released = self.gate.released.lock().unwrap();
        while !*released {
            released = self.gate.opened.wait(released).unwrap();
        }
        Err(std::io::Error::other("gated fsync failed"))
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

fn gated_store() -> (Store, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let storage = GatedStorage {
        inner: SimStorage::new(9),
        gate: Arc::clone(&gate),
    };
    let config = Config::default()
        .durability(Durability::Sync)
        .storage(storage)
        .background_maintenance(false);
    let store = Store::open_with(DIR, config).unwrap();
    // The first claim reserves a block of fencing tokens (an fsync of its own): before arming.
    let token = acquired(store.claim(b"warm-up", SECS_60).unwrap());
    store.release(token).unwrap();
    (store, gate)
}

/// Runs `first` (which writes a record and waits for its fsync) in a thread, waits until the
/// writer is stuck in that fsync, runs `second` in another thread, gives it time to answer, then
/// fails the fsync. Returns whether `second` answered before the fsync failed, and its answer.
fn answer_during_failing_fsync<T: Send + 'static + std::fmt::Debug>(
    store: Arc<Store>,
    gate: Arc<Gate>,
    first: impl FnOnce(&Store) + Send + 'static,
    second: impl FnOnce(&Store) -> T + Send + 'static,
) -> (bool, T) {
    gate.armed.store(true, Ordering::SeqCst);
    let first_thread = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || first(&store))
    };
    while gate.waiting.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (sender, receiver) = mpsc::channel();
    let second_thread = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || sender.send(second(&store)).unwrap())
    };
    let early = receiver.recv_timeout(Duration::from_millis(300)).ok();
    gate.release();
    first_thread.join().unwrap();
    let answered_early = early.is_some();
    let answer = early.unwrap_or_else(|| receiver.recv().unwrap());
    second_thread.join().unwrap();
    (answered_early, answer)
}

/// Bug 3: in `Sync` mode, answers derived from another caller's record that is not durable yet
/// (and then lost: its fsync fails) must not be given as if it were.
#[test]
fn sync_answers_about_another_callers_record_wait_for_its_durability() {
    type Answer = Result<String, String>;
    type Call = Box<dyn Fn(&Store) -> Answer + Send + Sync>;
    let describe = |answer: Result<String, Error>| -> Answer {
        answer.map_err(|e| match e {
            Error::Poisoned { .. } => "poisoned".to_string(),
            other => other.to_string(),
        })
    };
    let cases: Vec<(&str, Call)> = vec![
        (
            "claim InFlight",
            Box::new(move |s: &Store| describe(s.claim(b"K", SECS_60).map(|c| format!("{c:?}")))),
        ),
        (
            "check_or_insert ClaimInFlight",
            Box::new(move |s: &Store| {
                describe(
                    s.check_or_insert(b"K", SECS_60, b"x")
                        .map(|o| format!("{o:?}")),
                )
            }),
        ),
        (
            "batch ClaimInFlight",
            Box::new(move |s: &Store| {
                let items: Vec<(&[u8], Duration, &[u8])> =
                    vec![(b"other", SECS_60, b"x"), (b"K", SECS_60, b"x")];
                describe(s.check_or_insert_batch(&items).map(|o| format!("{o:?}")))
            }),
        ),
        (
            "transaction check_or_insert ClaimInFlight",
            Box::new(move |s: &Store| {
                describe(
                    s.transaction()
                        .check_or_insert(b"K", SECS_60, b"x")
                        .map(|o| format!("{o:?}")),
                )
            }),
        ),
        (
            "fingerprint mismatch",
            Box::new(move |s: &Store| {
                describe(
                    s.claim_fingerprinted(b"K", SECS_60, b"other-request")
                        .map(|c| format!("{c:?}")),
                )
            }),
        ),
    ];
    for (name, second) in cases {
        let (store, gate) = gated_store();
        let store = Arc::new(store);
        let (answered_early, answer) = answer_during_failing_fsync(
            store,
            gate,
            |s| {
                let _ = s.claim_fingerprinted(b"K", SECS_60, b"request");
            },
            second,
        );
        assert!(
            !answered_early,
            "{name}: answered {answer:?} before the claim was durable"
        );
        assert_eq!(answer, Err("poisoned".into()), "{name}");
    }
}

/// Bug 3, absences: `get` → `None` and `remove` → `false` after another caller's removal that
/// is not durable yet.
#[test]
fn sync_absence_after_another_callers_removal_waits_for_it() {
    for use_remove in [false, true] {
        let (store, gate) = gated_store();
        store.check_or_insert(b"K", SECS_60, b"v").unwrap();
        let store = Arc::new(store);
        let (answered_early, answer) = answer_during_failing_fsync(
            store,
            gate,
            |s| {
                let _ = s.remove(b"K");
            },
            move |s| {
                if use_remove {
                    s.remove(b"K").map(|removed| format!("{removed}"))
                } else {
                    s.get(b"K").map(|value| format!("{value:?}"))
                }
                .map_err(|e| matches!(e, Error::Poisoned { .. }))
            },
        );
        assert!(
            !answered_early,
            "remove: {use_remove}: answered {answer:?} early"
        );
        assert_eq!(answer, Err(true), "remove: {use_remove}");
    }
}

/// Bug 4: a batch that fails records nothing, even while claims come and go on one of its keys.
#[test]
fn a_failed_batch_records_nothing_under_concurrent_claims() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Config::default()
            .durability(Durability::Never)
            .shard_count(4),
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Claim::Acquired(token)) = store.claim(b"contested", SECS_60) {
                    store.release(token).unwrap();
                }
            }
        });
        // Stops the claimer however this thread leaves (a failed assertion must not hang).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let mut failed = 0;
        // Until both outcomes were seen often enough (a loaded machine may starve the claimer
        // for a while), or a minute has passed.
        let started = std::time::Instant::now();
        let mut succeeded = 0;
        let mut round = 0u32;
        while (failed < 50 || succeeded < 50) && started.elapsed() < Duration::from_secs(60) {
            round += 1;
            let own: Vec<Vec<u8>> = (0..20)
                .map(|i| format!("{round}-{i}").into_bytes())
                .collect();
            let mut items: Vec<(&[u8], Duration, &[u8])> =
                own.iter().map(|k| (&k[..], SECS_60, &b"v"[..])).collect();
            items.insert(10, (b"contested", SECS_60, b"v"));
            match store.check_or_insert_batch(&items) {
                Ok(_) => {
                    succeeded += 1;
                    assert!(store.remove(b"contested").unwrap());
                }
                Err(Error::ClaimInFlight { .. }) => {
                    failed += 1;
                    for key in &own {
                        assert_eq!(
                            store.get(key).unwrap(),
                            None,
                            "round {round}: a prefix stayed"
                        );
                    }
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert!(
            failed > 0 && succeeded > 0,
            "in {round} rounds: {failed} batches met a claim, {succeeded} did not"
        );
    });
}

/// Bug 5: a panic in the log writer poisons the store instead of hanging every caller.
#[test]
fn a_panicking_writer_poisons_instead_of_hanging() {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let (store, gate) = gated_store();
        gate.panic_instead.store(true, Ordering::SeqCst);
        gate.armed.store(true, Ordering::SeqCst);
        let answer = store.check_or_insert(b"K", SECS_60, b"v");
        let later = store.get(b"other");
        drop(store);
        sender
            .send((format!("{answer:?}"), format!("{later:?}")))
            .unwrap();
    });
    let (answer, later) = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("the store hung after its writer panicked");
    assert!(
        answer.contains("Poisoned") && answer.contains("panicked"),
        "{answer}"
    );
    assert!(later.contains("Poisoned"), "{later}");
}

/// Bug 6: a deadline beyond the expiry wheel's reach (the clock jumped) is no panic.
#[test]
fn a_far_future_deadline_after_a_clock_jump_is_no_panic() {
    let clock = ManualClock::starting_at(0);
    let storage = SimStorage::new(6);
    let config =
        config(&storage, &clock, Durability::Never).expiry_tick(Duration::from_millis(100));
    let store = Store::open_with(DIR, config).unwrap();
    clock.set_millis(ManualClock::DEFAULT_START_MILLIS);
    assert_eq!(
        store.check_or_insert(b"K", MAX_TTL, b"v").unwrap(),
        Outcome::Inserted
    );
    clock.advance(Duration::from_secs(3600));
    store.maintain().unwrap();
    assert_eq!(store.get(b"K").unwrap().unwrap(), b"v");
    clock.advance(MAX_TTL);
    store.maintain().unwrap();
    assert_eq!(store.get(b"K").unwrap(), None);
    assert_eq!(store.stats().live_keys, 0, "the entry was reaped");
}

/// Bug 7: a damaged sealed segment is reported once and set aside; maintenance (checkpoints
/// included) goes on.
#[test]
fn a_damaged_segment_does_not_stop_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = Config::default()
        .durability(Durability::Never)
        .clock(clock.clone())
        .background_maintenance(false)
        .segment_size_bytes_for_testing(SEGMENT_BYTES)
        .checkpoint_every_bytes(1);
    let store = Store::open_with(dir.path(), config).unwrap();
    for i in 0..200 {
        store
            .check_or_insert(format!("k{i}").as_bytes(), HOURS_10, &[1u8; 100])
            .unwrap();
    }
    for i in 0..200 {
        if i % 10 != 0 {
            store.remove(format!("k{i}").as_bytes()).unwrap();
        }
    }
    store.flush().unwrap();
    // Damage the oldest segment's second record.
    let oldest = idem_tests::segment_files(dir.path())
        .into_values()
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&oldest).unwrap();
    bytes[32 + 150] ^= 0xff;
    std::fs::write(&oldest, &bytes).unwrap();
    let mut damage = Vec::new();
    for round in 0..30 {
        match store.maintain() {
            Ok(_) => {}
            Err(Error::Corrupt { path, .. }) => damage.push(path),
            Err(other) => panic!("{other}"),
        }
        let key = format!("more-{round}");
        store
            .check_or_insert(key.as_bytes(), HOURS_10, b"x")
            .unwrap();
    }
    assert_eq!(damage, vec![oldest], "reported once, naming the file");
    assert_eq!(store.stats().segments_damaged, 1);
    assert!(
        store.stats().segments_compacted > 0,
        "other segments were still compacted"
    );
    let checkpoints = store.stats().checkpoints_written;
    assert!(checkpoints >= 29, "checkpoints went on: {checkpoints}");
}

/// Bug 9: fencing tokens grow across claims, reopens and power loss.
#[test]
fn fencing_tokens_grow_across_reopens_and_power_loss() {
    let storage = SimStorage::new(10);
    let clock = ManualClock::new();
    let mut last = 0;
    for round in 0..6u32 {
        let config = config(&storage, &clock, Durability::Sync);
        let store = Store::open_with(DIR, config).unwrap();
        for i in 0..5 {
            let key = format!("{round}-{i}");
            let token = acquired(store.claim(key.as_bytes(), SECS_60).unwrap());
            assert!(token.fencing_token() > last, "round {round}");
            last = token.fencing_token();
        }
        match round % 3 {
            0 => storage.crash(),
            1 => store.close().unwrap(),
            _ => {}
        }
    }
    // And on a real directory, across a close.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = acquired(store.claim(b"a", SECS_60).unwrap()).fencing_token();
    store.close().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(acquired(store.claim(b"b", SECS_60).unwrap()).fencing_token() > first);
}

/// Bug 10: the entry of a newly created store directory in its parent is made durable.
#[test]
fn a_new_store_directory_survives_power_loss() {
    let storage = SimStorage::new(11);
    let clock = ManualClock::new();
    let config = config(&storage, &clock, Durability::Sync);
    let dir = "/sim/deep/new/store";
    let store = Store::open_with(dir, config.clone()).unwrap();
    store.check_or_insert(b"K", HOURS_10, b"v").unwrap();
    storage.crash();
    drop(store);
    let config = self::config(&storage, &clock, Durability::Sync);
    let store = Store::open_with(dir, config).unwrap();
    assert_eq!(store.get(b"K").unwrap().unwrap(), b"v");
}

/// Bug 11: `check_or_insert_with` on a key held by a claim fails without running its closure.
#[test]
fn check_or_insert_with_never_runs_its_closure_on_a_claimed_key() {
    let storage = SimStorage::new(12);
    let clock = ManualClock::new();
    let store = Store::open_with(DIR, config(&storage, &clock, Durability::Sync)).unwrap();
    let token = acquired(store.claim(b"K", SECS_60).unwrap());
    let ran = AtomicBool::new(false);
    let outcome = store.check_or_insert_with(b"K", HOURS_10, || {
        ran.store(true, Ordering::SeqCst);
        Ok::<_, ()>(b"side effect".to_vec())
    });
    assert!(
        matches!(outcome, Err(WithError::Store(Error::ClaimInFlight { .. }))),
        "{outcome:?}"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "the closure ran on a claimed key"
    );
    store.complete(token, HOURS_10, b"done").unwrap();
    let outcome = store
        .check_or_insert_with(b"K", HOURS_10, || -> Result<Vec<u8>, ()> { unreachable!() })
        .unwrap();
    assert_eq!(outcome, Outcome::Duplicate(idem::Value::from(&b"done"[..])));
}

/// Carrying tombstones forward must not turn into endless copying: once a segment holds mostly
/// tombstones that are still needed, compaction leaves it until they expire.
#[test]
fn tombstones_are_not_copied_over_and_over() {
    let storage = SimStorage::new(13);
    let clock = ManualClock::new();
    let store = Store::open_with(DIR, config(&storage, &clock, Durability::Never)).unwrap();
    fill(&store, "k", 200, HOURS_10);
    for i in 0..200 {
        if i % 10 != 0 {
            assert!(store.remove(format!("k-{i}").as_bytes()).unwrap());
        }
    }
    store.flush().unwrap();
    let mut copied = 0;
    let mut rounds = 0;
    while rounds < 100 {
        let report = store.maintain().unwrap();
        rounds += 1;
        copied += report.records_copied;
        if report.segments_compacted == 0 {
            break;
        }
    }
    assert!(
        rounds < 100,
        "compaction never settled ({copied} records copied)"
    );
    // 20 live records and 180 tombstones: each copied a few times at most.
    assert!(
        copied <= 3 * 200,
        "{copied} records copied in {rounds} rounds"
    );
    for i in 0..200 {
        let got = store.get(format!("k-{i}").as_bytes()).unwrap();
        assert_eq!(got.is_some(), i % 10 == 0, "key {i}");
    }
}

/// The same rule for what transactions answer and read: a state value, a position, a
/// `Duplicate` inside a transaction, an absence after another transaction's state deletion.
#[test]
fn sync_transaction_answers_wait_for_the_records_they_rest_on() {
    type Call = Box<dyn Fn(&Store) -> Result<String, Error> + Send + Sync>;
    let cases: Vec<(&str, bool, Call)> = vec![
        (
            "get_state",
            false,
            Box::new(|s: &Store| s.get_state(b"S").map(|v| format!("{v:?}"))),
        ),
        (
            "position",
            false,
            Box::new(|s: &Store| s.position(b"src").map(|p| format!("{p:?}"))),
        ),
        (
            "positions",
            false,
            Box::new(|s: &Store| s.positions().map(|p| format!("{p:?}"))),
        ),
        (
            "transaction get_state",
            false,
            Box::new(|s: &Store| s.transaction().get_state(b"S").map(|v| format!("{v:?}"))),
        ),
        (
            "transaction Duplicate",
            false,
            Box::new(|s: &Store| {
                s.transaction()
                    .check_or_insert(b"D", SECS_60, b"x")
                    .map(|o| format!("{o:?}"))
            }),
        ),
        (
            "set_position below another commit's position",
            false,
            Box::new(|s: &Store| {
                s.transaction()
                    .set_position(b"src", 5)
                    .map(|()| "set".to_string())
            }),
        ),
        (
            "get_state absent after a deletion",
            true,
            Box::new(|s: &Store| s.get_state(b"S").map(|v| format!("{v:?}"))),
        ),
    ];
    for (name, deleting, second) in cases {
        let (store, gate) = gated_store();
        if deleting {
            let mut tx = store.transaction();
            tx.put_state(b"S", b"v").unwrap();
            tx.commit().unwrap();
        }
        let store = Arc::new(store);
        let (answered_early, answer) = answer_during_failing_fsync(
            store,
            gate,
            move |s| {
                let mut tx = s.transaction();
                if deleting {
                    tx.delete_state(b"S").unwrap();
                } else {
                    tx.check_or_insert(b"D", SECS_60, b"d").unwrap();
                    tx.put_state(b"S", b"s").unwrap();
                    tx.set_position(b"src", 9).unwrap();
                }
                let _ = tx.commit();
            },
            second,
        );
        assert!(
            !answered_early,
            "{name}: answered {answer:?} before the transaction was durable"
        );
        assert!(
            matches!(answer, Err(Error::Poisoned { .. })),
            "{name}: {answer:?}"
        );
    }
}

/// Found by seed 7325274 of the simulator: a key sent again after its record expired, but within
/// its index slot's rounded-up second, could get its new entry at a dead slot earlier in its
/// run, with the expired entry left beside it. A checkpoint then kept both: a reopen held more
/// entries than a full replay, and once the key was removed, the stale entry answered for it in
/// a process whose clock stood earlier (a restart after the clock was stepped back). Each way of
/// inserting (a single call, a batch, a transaction) must replace the expired entry.
#[test]
fn a_key_sent_again_after_its_record_expired_keeps_one_entry() {
    const KEYS: usize = 24;
    let second = ManualClock::DEFAULT_START_MILLIS; // a whole second
    let ms = |n: u64| Duration::from_millis(n);
    type Insert = fn(&Store, &[Vec<u8>], &[u8]);
    let ways: [(&str, Insert); 3] = [
        ("a single call", |store, keys, value| {
            for key in keys {
                assert_eq!(
                    store.check_or_insert(key, HOURS_10, value).unwrap(),
                    Outcome::Inserted
                );
            }
        }),
        ("a batch", |store, keys, value| {
            let items: Vec<_> = keys.iter().map(|k| (k.clone(), HOURS_10, value)).collect();
            let outcomes = store.check_or_insert_batch(&items).unwrap();
            assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
        }),
        ("a transaction", |store, keys, value| {
            let mut tx = store.transaction();
            for key in keys {
                assert_eq!(
                    tx.check_or_insert(key, HOURS_10, value).unwrap(),
                    Outcome::Inserted
                );
            }
            tx.commit().unwrap();
        }),
    ];
    for (way, insert_again) in ways {
        let storage = SimStorage::new(1);
        let clock = ManualClock::starting_at(second);
        // One shard: the keys share one table, dense enough for long runs.
        let config = config(&storage, &clock, Durability::Never).shard_count(1);
        let store = Store::open_with(DIR, config.clone()).unwrap();
        let keys: Vec<Vec<u8>> = (0..KEYS).map(|i| format!("key-{i}").into_bytes()).collect();
        // Entries whose slots are dead from the next second on, spread over the runs.
        for i in 0..KEYS {
            let filler = format!("filler-{i}");
            store
                .check_or_insert(filler.as_bytes(), ms(100), b"f")
                .unwrap();
        }
        // The keys, just before that second: their records expire at +49 ms, their slots (rounded
        // up) a second later; they come after the fillers in any run they share.
        clock.set_millis(second + 999);
        for key in &keys {
            store.check_or_insert(key, ms(50), b"first").unwrap();
        }
        clock.set_millis(second + 1_100);
        insert_again(&store, &keys, b"again");
        for key in &keys {
            assert!(store.remove(key).unwrap(), "{way}");
        }
        store.checkpoint().unwrap();
        drop(store);
        // A later process whose clock stands where the first records were still live.
        let earlier = ManualClock::starting_at(second + 1_010);
        let config = config.clone().clock(earlier);
        let (from_checkpoint, full_replay) = both_reopens(&storage, &config, |s| {
            let answers: Vec<_> = keys.iter().map(|k| s.get(k).unwrap()).collect();
            (answers, s.stats().live_keys)
        });
        assert_eq!(full_replay, (vec![None; KEYS], 0), "{way}");
        assert_eq!(
            from_checkpoint, full_replay,
            "{way}: a removed key came back from a stale entry in the checkpoint"
        );
    }
}
