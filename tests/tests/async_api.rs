//! The async API (`*_async` calls), through the public API only: the same answers as the blocking
//! calls; a waiting future parks its task, not its thread, and is woken by the writer's commit;
//! thousands of tasks on one runtime thread share fsyncs; a poisoned store fails every pending
//! future; and what a future dropped mid-wait leaves recorded (cancel safety).
//!
//! Durability is held back deterministically by a [`GatedStorage`]: a simulated disk whose
//! fsyncs wait while the test holds its gate closed, so "pending" is a fact, not a race.

use std::future::Future;
use std::path::Path;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use idem::sim::{DirLock, Faults, SimStorage, Storage, StorageFile};
use idem::{Claim, Config, Durability, Error, ManualClock, Outcome, Store, Value};

const TTL: Duration = Duration::from_secs(3600);
const LEASE: Duration = Duration::from_secs(30);
const DIR: &str = "/sim/async";

/// Holds every fsync (file or directory) while closed; counts file fsyncs that went through.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    file_syncs: AtomicU64,
}

impl Gate {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

/// A [`SimStorage`] behind a [`Gate`].
#[derive(Debug, Clone)]
struct GatedStorage {
    inner: SimStorage,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Arc<Gate>,
}

impl StorageFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.gate.pass();
        self.gate.file_syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

impl GatedStorage {
    fn new(seed: u64) -> GatedStorage {
        GatedStorage {
            inner: SimStorage::new(seed),
            gate: Arc::default(),
        }
    }

    fn wrap(&self, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(GatedFile {
            inner: file,
            gate: Arc::clone(&self.gate),
        })
    }
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
        self.inner.create_new(path).map(|file| self.wrap(file))
    }
    fn create_truncate(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.create_truncate(path).map(|file| self.wrap(file))
    }
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.open(path).map(|file| self.wrap(file))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.gate.pass();
        self.inner.sync_dir(dir)
    }
}

fn config(durability: Durability, clock: &ManualClock) -> Config {
    Config::default()
        .durability(durability)
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
}

fn gated_store(durability: Durability, clock: &ManualClock) -> (Store, GatedStorage) {
    let storage = GatedStorage::new(11);
    let store = Store::open_with(DIR, config(durability, clock).storage(storage.clone())).unwrap();
    (store, storage)
}

/// A waker that counts its wake-ups.
#[derive(Debug, Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingWaker {
    fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Waits (bounded: a hang guard, not a timing assertion) until woken `n` times.
    fn await_wakes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.wakes() < n {
            assert!(
                Instant::now() < deadline,
                "woken {} of {n} times",
                self.wakes()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn poll_once<F: Future + ?Sized>(
    future: Pin<&mut F>,
    waker: &Arc<CountingWaker>,
) -> Poll<F::Output> {
    let waker = Waker::from(Arc::clone(waker));
    future.poll(&mut Context::from_waker(&waker))
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Every call, in a script that meets inserts, duplicates, fingerprints, batches, claims in
/// flight, completion, release, removal and bad input: the async forms answer exactly what the
/// blocking forms answer on an identical store.
#[test]
fn async_calls_answer_as_the_blocking_ones() {
    let clock = ManualClock::new();
    let open = |seed| {
        let storage = SimStorage::new(seed);
        Store::open_with(DIR, config(Durability::Sync, &clock).storage(storage)).unwrap()
    };
    let (blocking, asynchronous) = (open(1), open(2));
    let runtime = current_thread();
    let (mut blocking_answers, mut async_answers) = (Vec::new(), Vec::new());
    for (store, answers) in [
        (&blocking, &mut blocking_answers),
        (&asynchronous, &mut async_answers),
    ] {
        let is_async = std::ptr::eq(store, &asynchronous);
        let mut note = |what: &str, answer: String| answers.push(format!("{what}: {answer}"));
        // `call!(what, blocking, async)` notes the answer of the form under test; with `keep`
        // first it also returns it.
        macro_rules! call {
            (keep $what:expr, $blocking:expr, $async:expr) => {{
                let answer = if is_async {
                    runtime.block_on($async)
                } else {
                    $blocking
                };
                note($what, format!("{answer:?}"));
                answer
            }};
            ($what:expr, $blocking:expr, $async:expr) => {{
                drop(call!(keep $what, $blocking, $async));
            }};
        }
        let s = store;
        call!(
            "insert",
            s.check_or_insert(b"a", TTL, b"1"),
            s.check_or_insert_async(b"a", TTL, b"1")
        );
        call!(
            "dup",
            s.check_or_insert(b"a", TTL, b"2"),
            s.check_or_insert_async(b"a", TTL, b"2")
        );
        call!(
            "empty key",
            s.check_or_insert(b"", TTL, b"2"),
            s.check_or_insert_async(b"", TTL, b"2")
        );
        call!(
            "zero ttl",
            s.check_or_insert(b"z", Duration::ZERO, b"2"),
            s.check_or_insert_async(b"z", Duration::ZERO, b"2")
        );
        call!(
            "fp",
            s.check_or_insert_fingerprinted(b"f", TTL, b"v", b"fp1"),
            s.check_or_insert_fingerprinted_async(b"f", TTL, b"v", b"fp1")
        );
        call!(
            "fp mismatch",
            s.check_or_insert_fingerprinted(b"f", TTL, b"v", b"fp2"),
            s.check_or_insert_fingerprinted_async(b"f", TTL, b"v", b"fp2")
        );
        let items: Vec<(&[u8], Duration, &[u8])> =
            vec![(b"a", TTL, b"x"), (b"b", TTL, b"2"), (b"b", TTL, b"3")];
        call!(
            "batch",
            s.check_or_insert_batch(&items),
            s.check_or_insert_batch_async(&items)
        );
        let token = match call!(keep "claim", s.claim(b"c", LEASE), s.claim_async(b"c", LEASE)) {
            Ok(Claim::Acquired(token)) => token,
            other => panic!("{other:?}"),
        };
        call!(
            "claim in flight",
            s.claim(b"c", LEASE),
            s.claim_async(b"c", LEASE)
        );
        call!(
            "insert claimed",
            s.check_or_insert(b"c", TTL, b"v"),
            s.check_or_insert_async(b"c", TTL, b"v")
        );
        let claimed: Vec<(&[u8], Duration, &[u8])> = vec![(b"new", TTL, b"1"), (b"c", TTL, b"2")];
        call!(
            "batch claimed",
            s.check_or_insert_batch(&claimed),
            s.check_or_insert_batch_async(&claimed)
        );
        call!("get claimed", s.get(b"c"), s.get_async(b"c"));
        call!(
            "complete",
            s.complete(token.clone(), TTL, b"done"),
            s.complete_async(token.clone(), TTL, b"done")
        );
        call!(
            "complete again",
            s.complete(token.clone(), TTL, b"again"),
            s.complete_async(token.clone(), TTL, b"again")
        );
        call!(
            "claim done",
            s.claim(b"c", LEASE),
            s.claim_async(b"c", LEASE)
        );
        let token = match call!(
            keep "claim fp",
            s.claim_fingerprinted(b"d", LEASE, b"fp"),
            s.claim_fingerprinted_async(b"d", LEASE, b"fp")
        ) {
            Ok(Claim::Acquired(token)) => token,
            other => panic!("{other:?}"),
        };
        call!(
            "claim fp mismatch",
            s.claim_fingerprinted(b"d", LEASE, b"xx"),
            s.claim_fingerprinted_async(b"d", LEASE, b"xx")
        );
        call!(
            "release",
            s.release(token.clone()),
            s.release_async(token.clone())
        );
        call!(
            "release again",
            s.release(token.clone()),
            s.release_async(token.clone())
        );
        call!("get", s.get(b"a"), s.get_async(b"a"));
        call!("remove", s.remove(b"a"), s.remove_async(b"a"));
        call!("remove absent", s.remove(b"a"), s.remove_async(b"a"));
        call!("get removed", s.get(b"a"), s.get_async(b"a"));
        call!("flush", s.flush(), s.flush_async());
    }
    assert_eq!(blocking_answers, async_answers);
    for error in [
        "FingerprintMismatch",
        "ClaimInFlight",
        "StaleClaim",
        "EmptyKey",
        "ZeroTtl",
    ] {
        assert!(
            blocking_answers.iter().any(|a| a.contains(error)),
            "{error}"
        );
    }
}

/// A pending future parks its task, not its thread: with the commit held back its poll returns
/// `Pending` at once (the blocking call would hang here), and the writer's commit wakes its
/// waker, after which it answers. Durability first: not before the fsync went through.
#[test]
fn a_waiting_future_is_pending_until_the_commit_wakes_it() {
    let clock = ManualClock::new();
    let (store, storage) = gated_store(Durability::Sync, &clock);
    storage.gate.close();
    let waker = Arc::new(CountingWaker::default());
    let mut insert = pin!(store.check_or_insert_async(b"k", TTL, b"v"));
    assert!(poll_once(insert.as_mut(), &waker).is_pending());
    // Polled again with the same waker: still pending, nothing lost.
    assert!(poll_once(insert.as_mut(), &waker).is_pending());
    assert_eq!(waker.wakes(), 0, "woken before any commit");
    let syncs = storage.gate.file_syncs.load(Ordering::SeqCst);
    storage.gate.open();
    waker.await_wakes(1);
    assert!(storage.gate.file_syncs.load(Ordering::SeqCst) > syncs);
    assert!(matches!(
        poll_once(insert.as_mut(), &waker),
        Poll::Ready(Ok(Outcome::Inserted))
    ));
}

/// `Periodic` and `Never` answer at the first poll even with every fsync held back; only
/// `flush_async` waits for the commit.
#[test]
fn periodic_and_never_answer_at_the_first_poll() {
    for durability in [
        Durability::Never,
        Durability::Periodic(Duration::from_millis(5)),
    ] {
        let clock = ManualClock::new();
        let (store, storage) = gated_store(durability, &clock);
        store.claim(b"warm-up", LEASE).unwrap(); // reserves claim ids (fence fsync) before the gate
        storage.gate.close();
        let waker = Arc::new(CountingWaker::default());
        let insert = pin!(store.check_or_insert_async(b"k", TTL, b"v"));
        assert!(matches!(
            poll_once(insert, &waker),
            Poll::Ready(Ok(Outcome::Inserted))
        ));
        let claim = pin!(store.claim_async(b"c", LEASE));
        assert!(matches!(
            poll_once(claim, &waker),
            Poll::Ready(Ok(Claim::Acquired(_)))
        ));
        let mut flush = pin!(store.flush_async());
        assert!(
            poll_once(flush.as_mut(), &waker).is_pending(),
            "{durability:?}"
        );
        storage.gate.open();
        waker.await_wakes(1);
        assert!(matches!(poll_once(flush, &waker), Poll::Ready(Ok(()))));
    }
}

/// Thousands of tasks on a current-thread runtime: each parks while its record is committed, so
/// the others run meanwhile and one fsync covers many of them (a call blocking the thread would
/// cost one fsync each).
#[test]
fn thousands_of_tasks_on_one_thread_share_fsyncs() {
    const TASKS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open_with(dir.path(), Config::default().background_maintenance(false)).unwrap(),
    );
    let before = store.stats().fsyncs;
    let runtime = current_thread();
    let outcomes = runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let key = format!("task-{i}");
                    store.check_or_insert_async(key.as_bytes(), TTL, b"v").await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap().unwrap());
        }
        outcomes
    });
    assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
    let fsyncs = store.stats().fsyncs - before;
    eprintln!("{TASKS} tasks, one runtime thread: {fsyncs} fsyncs");
    assert!(
        fsyncs * 4 <= TASKS,
        "{fsyncs} fsyncs for {TASKS} single-key inserts"
    );
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.stats().live_keys, TASKS);
}

/// Transactions committed from many tasks of one runtime thread share fsyncs too; a poisoned
/// store fails every pending commit.
#[test]
fn transaction_commits_from_many_tasks_share_fsyncs_and_fail_together() {
    const TASKS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open_with(dir.path(), Config::default().background_maintenance(false)).unwrap(),
    );
    let before = store.stats().fsyncs;
    let runtime = current_thread();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let mut tx = store.transaction();
                    let key = format!("event-{i}");
                    let outcome = tx.check_or_insert_async(key.as_bytes(), TTL, b"ok").await?;
                    assert_eq!(outcome, Outcome::Inserted);
                    tx.put_state(format!("balance/{i}").as_bytes(), b"1")?;
                    tx.set_position(format!("source/{i}").as_bytes(), i)?;
                    tx.commit_async().await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    let fsyncs = store.stats().fsyncs - before;
    eprintln!("{TASKS} transactions, one runtime thread: {fsyncs} fsyncs");
    assert!(fsyncs * 4 <= TASKS, "{fsyncs} fsyncs for {TASKS} commits");
    assert_eq!(store.stats().state_entries, TASKS);

    let clock = ManualClock::new();
    let (store, storage) = gated_store(Durability::Sync, &clock);
    storage.gate.close();
    let mut commits: Vec<Pin<Box<dyn Future<Output = idem::Result<()>> + '_>>> = Vec::new();
    for i in 0..20u64 {
        let mut tx = store.transaction();
        tx.put_state(format!("s{i}").as_bytes(), b"v").unwrap();
        commits.push(Box::pin(tx.commit_async()));
    }
    let waker = Arc::new(CountingWaker::default());
    for commit in &mut commits {
        assert!(poll_once(commit.as_mut(), &waker).is_pending());
    }
    storage.inner.set_faults(Faults {
        sync_error_per_million: 1_000_000,
        ..Faults::default()
    });
    storage.gate.open();
    waker.await_wakes(commits.len());
    for commit in &mut commits {
        match poll_once(commit.as_mut(), &waker) {
            Poll::Ready(Err(Error::Poisoned { .. })) => {}
            other => panic!("expected Poisoned, got {other:?}"),
        }
    }
}

/// A multi-thread runtime, many tasks racing on few keys: exactly one insert per key, every other
/// task sees that insert's value, as with threads.
#[test]
fn racing_tasks_on_a_multi_thread_runtime_insert_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..1_024u32)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let key = format!("key-{}", i % 64);
                    let value = format!("writer-{i}");
                    let outcome = store
                        .check_or_insert_async(key.as_bytes(), TTL, value.as_bytes())
                        .await
                        .unwrap();
                    (key, value, outcome)
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    for k in 0..64 {
        let key = format!("key-{k}");
        let winners: Vec<&String> = results
            .iter()
            .filter(|(rk, _, o)| *rk == key && *o == Outcome::Inserted)
            .map(|(_, value, _)| value)
            .collect();
        assert_eq!(winners.len(), 1, "{key}: {winners:?}");
        let first = Value::from(winners[0].as_bytes());
        for (_, _, outcome) in results.iter().filter(|(rk, _, _)| *rk == key) {
            assert!(*outcome == Outcome::Inserted || *outcome == Outcome::Duplicate(first.clone()));
        }
    }
}

/// The commit's fsync fails: the store is poisoned, every pending future is woken and resolves
/// with `Poisoned` (none told its record is durable, none left pending), and so does every call
/// after.
#[test]
fn a_poisoned_store_fails_every_pending_future() {
    const FUTURES: usize = 50;
    let clock = ManualClock::new();
    let (store, storage) = gated_store(Durability::Sync, &clock);
    // Reserve the claim ids now: the first claim writes the fence file, whose fsync would wait.
    let Claim::Acquired(token) = store.claim(b"claimed", LEASE).unwrap() else {
        panic!()
    };
    storage.gate.close();
    let keys: Vec<String> = (0..FUTURES).map(|i| format!("k{i}")).collect();
    let mut futures: Vec<Pin<Box<dyn Future<Output = idem::Result<()>> + '_>>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let store = &store;
        futures.push(match i % 4 {
            0 => Box::pin(async move {
                store
                    .check_or_insert_async(key.as_bytes(), TTL, b"v")
                    .await
                    .map(drop)
            }),
            1 => Box::pin(async move {
                let items = [(key.as_bytes(), TTL, &b"v"[..])];
                store.check_or_insert_batch_async(&items).await.map(drop)
            }),
            2 => Box::pin(async move { store.claim_async(key.as_bytes(), LEASE).await.map(drop) }),
            _ => Box::pin(async move {
                store
                    .check_or_insert_async(b"k0", TTL, b"dup")
                    .await
                    .map(drop)
            }),
        });
    }
    futures.push(Box::pin(store.complete_async(token, TTL, b"r")));
    let waker = Arc::new(CountingWaker::default());
    for future in &mut futures {
        assert!(poll_once(future.as_mut(), &waker).is_pending());
    }
    storage.inner.set_faults(Faults {
        sync_error_per_million: 1_000_000,
        ..Faults::default()
    });
    storage.gate.open();
    waker.await_wakes(futures.len());
    for future in &mut futures {
        match poll_once(future.as_mut(), &waker) {
            Poll::Ready(Err(Error::Poisoned { .. })) => {}
            other => panic!("expected Poisoned, got {other:?}"),
        }
    }
    let later = pin!(store.check_or_insert_async(b"later", TTL, b"v"));
    assert!(matches!(
        poll_once(later, &waker),
        Poll::Ready(Err(Error::Poisoned { .. }))
    ));
}

/// Cancel safety: what a dropped future leaves recorded.
///
/// - Dropped before its first poll: nothing happened.
/// - Dropped while waiting for the commit: the record was appended and indexed; others see it
///   only once it is durable, then it is the key's first value, exactly as if the caller had
///   crashed after the call wrote it. A claim dropped so is held (token lost) until its lease
///   ends.
#[test]
fn a_dropped_future_leaves_what_a_crash_during_the_call_would() {
    let clock = ManualClock::new();
    let (store, storage) = gated_store(Durability::Sync, &clock);
    store.claim(b"warm-up", LEASE).unwrap(); // reserves claim ids (fence fsync) before the gate
    let waker = Arc::new(CountingWaker::default());

    // Never polled: nothing appended, nothing indexed.
    let appended = store.stats().bytes_appended;
    drop(store.check_or_insert_async(b"unpolled", TTL, b"v"));
    assert_eq!(store.stats().bytes_appended, appended);
    assert_eq!(store.get(b"unpolled").unwrap(), None);

    // Dropped mid-wait.
    storage.gate.close();
    {
        let mut insert = pin!(store.check_or_insert_async(b"dropped", TTL, b"first"));
        assert!(poll_once(insert.as_mut(), &waker).is_pending());
        let mut claim = pin!(store.claim_async(b"dropped-claim", LEASE));
        assert!(poll_once(claim.as_mut(), &waker).is_pending());
    }
    assert!(
        store.stats().bytes_appended > appended,
        "the records were appended"
    );
    // A reader must not answer from the record before it is durable.
    let read = {
        let mut read = pin!(store.get_async(b"dropped"));
        assert!(poll_once(read.as_mut(), &waker).is_pending());
        storage.gate.open();
        loop {
            if let Poll::Ready(read) = poll_once(read.as_mut(), &waker) {
                break read;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    assert_eq!(read.unwrap(), Some(Value::from(&b"first"[..])));
    assert_eq!(
        store.check_or_insert(b"dropped", TTL, b"retry").unwrap(),
        Outcome::Duplicate(Value::from(&b"first"[..])),
        "the retry answers from the dropped call's record"
    );
    assert!(matches!(
        store.claim(b"dropped-claim", LEASE).unwrap(),
        Claim::InFlight { .. }
    ));
    clock.advance(LEASE);
    assert!(matches!(
        store.claim(b"dropped-claim", LEASE).unwrap(),
        Claim::Acquired(_)
    ));
    // And it survives a reopen: it was committed although nobody saw the answer.
    drop(store);
    let store = Store::open_with(
        DIR,
        config(Durability::Sync, &clock).storage(storage.clone()),
    )
    .unwrap();
    assert_eq!(
        store.get(b"dropped").unwrap(),
        Some(Value::from(&b"first"[..]))
    );
}

/// Every future is `Send` (spawnable on a multi-thread runtime); checked at compile time.
#[test]
fn every_future_is_send() {
    fn send<T: Send>(_: T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let Claim::Acquired(token) = store.claim(b"c", LEASE).unwrap() else {
        panic!()
    };
    let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = vec![(b"k".to_vec(), TTL, b"v".to_vec())];
    send(store.check_or_insert_async(b"k", TTL, b"v"));
    send(store.check_or_insert_fingerprinted_async(b"k", TTL, b"v", b"fp"));
    send(store.check_or_insert_batch_async(&items));
    send(store.get_async(b"k"));
    send(store.remove_async(b"k"));
    send(store.claim_async(b"k", LEASE));
    send(store.claim_fingerprinted_async(b"k", LEASE, b"fp"));
    send(store.complete_async(token.clone(), TTL, b"r"));
    send(store.release_async(token));
    send(store.flush_async());
}
