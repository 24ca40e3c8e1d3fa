//! Single flight: per key, at most one caller at a time runs the closure that makes a value.
//!
//! This module owns the in-flight table behind [`crate::Store::check_or_insert_with`] and the
//! algorithm that uses it. The algorithm sees the store only through the small [`Recorder`] trait
//! (`get` and `check_or_insert`), so the loom models at the end of this file check the very code
//! the store runs, with an in-memory recorder in place of files and threads.
//!
//! The path of one call: `get` → live: `Duplicate` at once. Else join the key's flight in the
//! [`InFlightTable`]: the first caller becomes the key's *leader*, later ones *wait* for it and
//! then start over. The leader checks `get` again, runs its closure with no lock held, records the
//! value with `check_or_insert`, and only then (by dropping its [`LeaderGuard`]) removes its entry
//! and wakes the waiters, who find the value with `get`. If the closure fails or panics nothing is
//! recorded, so the woken waiters find the key still absent and one of them becomes the next
//! leader and runs its own closure.
//!
//! Invariants:
//! - A key has at most one entry in the table, put there by its leader and removed only by that
//!   leader, in every path (return, error, panic), by the drop of its [`LeaderGuard`].
//! - The leader records the value before it removes its entry; the next leader checks `get` after
//!   it took the entry. Without that second `get` a caller that missed on its first `get` while the
//!   previous leader was still running would run its closure a second time. So a key's closure
//!   succeeds at most once while the key stays live (unless a plain `check_or_insert` bypasses it).
//! - No lost wake-up: a waiter clones the flight under the shard lock while the entry is there,
//!   and reads `finished` under the flight's mutex before it sleeps; the leader sets `finished`
//!   under that mutex and then notifies.
//! - The leader removes its entry before it sets `finished`, so a woken waiter that starts over
//!   never finds the finished flight again (no spinning on a dead entry).
//! - No lock of the table (nor of the store) is held while a closure runs: keys that share a
//!   shard, here or in the store's index, proceed.
//!
//! Under `--cfg loom` the table is built from loom's primitives, which exist only inside
//! `loom::model`: a loom build may open no `Store` outside a model, so run loom with the test
//! filter `single_flight` (see the loom models below for the command).

use std::collections::HashMap;
use std::time::Instant;

use crate::answer::{Outcome, Value};
use crate::error::Error;

use self::sync::{lock, wait, wait_until, Arc, Condvar, Mutex};

/// The synchronisation primitives of this module: loom's under `--cfg loom`, `parking_lot`'s (and
/// std's `Arc`) otherwise. The functions paper over the two lock and wait APIs.
#[cfg(not(loom))]
mod sync {
    pub(super) use parking_lot::{Condvar, Mutex, MutexGuard};
    pub(super) use std::sync::Arc;
    use std::time::Instant;

    pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock()
    }

    pub(super) fn wait<'a, T>(
        condvar: &Condvar,
        mut guard: MutexGuard<'a, T>,
    ) -> MutexGuard<'a, T> {
        condvar.wait(&mut guard);
        guard
    }

    /// Waits for a notification or the deadline; the flag says whether the deadline passed.
    pub(super) fn wait_until<'a, T>(
        condvar: &Condvar,
        mut guard: MutexGuard<'a, T>,
        deadline: Instant,
    ) -> (MutexGuard<'a, T>, bool) {
        let timed_out = condvar.wait_until(&mut guard, deadline).timed_out();
        (guard, timed_out)
    }
}

#[cfg(loom)]
mod sync {
    pub(super) use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::sync::PoisonError;
    use std::time::Instant;

    pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        condvar.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Loom has no time: a timed wait is a plain wait that never times out.
    pub(super) fn wait_until<'a, T>(
        condvar: &Condvar,
        guard: MutexGuard<'a, T>,
        _deadline: Instant,
    ) -> (MutexGuard<'a, T>, bool) {
        (wait(condvar, guard), false)
    }
}

/// The error of [`crate::Store::check_or_insert_with`]: why a call recorded nothing.
///
/// Every variant means this call wrote nothing. `Closure` carries this caller's own closure's
/// error (a waiter never sees another caller's error: it takes over instead).
///
/// ```
/// use std::time::Duration;
/// let dir = tempfile::tempdir()?;
/// let store = idem::Store::open(dir.path())?;
/// let ttl = Duration::from_secs(3600);
/// let charge = || -> Result<Vec<u8>, String> { Err("card declined".into()) };
/// match store.check_or_insert_with(b"order-17", ttl, charge) {
///     Ok(outcome) => unreachable!("the closure failed: {outcome:?}"),
///     Err(idem::WithError::Closure(reason)) => assert_eq!(reason, "card declined"),
///     Err(other) => panic!("not the closure's error: {other}"),
/// }
/// assert_eq!(store.get(b"order-17")?, None); // a failed closure records nothing
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum WithError<E> {
    /// The store failed (bad key or TTL, I/O, a poisoned store, or a value from the closure that
    /// is too large). A store error after the closure ran leaves its value unrecorded.
    Store(Error),
    /// This caller's closure returned an error; nothing was recorded, and one waiting caller (if
    /// any) now runs its own closure.
    Closure(E),
    /// Another caller's closure for the key was still running when this caller's wait timeout
    /// passed; this caller's closure did not run.
    TimedOut,
}

impl<E> From<Error> for WithError<E> {
    fn from(error: Error) -> Self {
        WithError::Store(error)
    }
}

impl<E: std::fmt::Display> std::fmt::Display for WithError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WithError::Store(error) => write!(f, "store error: {error}"),
            WithError::Closure(error) => write!(f, "the value's closure failed: {error}"),
            WithError::TimedOut => {
                f.write_str("timed out waiting for another caller's closure for the same key")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for WithError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WithError::Store(error) => Some(error),
            WithError::Closure(error) => Some(error),
            WithError::TimedOut => None,
        }
    }
}

/// What the single-flight algorithm needs of a store: a key's live value, and the atomic
/// check-or-insert (with the TTL already bound).
pub(crate) trait Recorder {
    /// The live value of `key`, if any; an error (such as [`Error::ClaimInFlight`]) if the
    /// closure must not run for another reason. Either way it is called before the closure.
    fn get(&self, key: &[u8]) -> crate::Result<Option<Value>>;
    /// Records `value` for `key` unless a live value exists, which is returned instead.
    fn check_or_insert(&self, key: &[u8], value: &[u8]) -> crate::Result<Outcome>;
}

/// Runs `make_value` for `key` unless `key` is live, at most one caller per key at a time.
///
/// `wait_deadline` bounds the time spent waiting for other callers' closures (`None`: no
/// bound); it does not bound this caller's own closure or the store's calls.
pub(crate) fn check_or_insert_with<R, F, V, E>(
    table: &InFlightTable,
    recorder: &R,
    key: &[u8],
    wait_deadline: Option<Instant>,
    make_value: F,
) -> Result<Outcome, WithError<E>>
where
    R: Recorder + ?Sized,
    F: FnOnce() -> Result<V, E>,
    V: AsRef<[u8]>,
{
    // Held to the end of the function, so that the entry goes only after the value is recorded
    // (or on the error or unwinding path, after nothing was).
    let _leadership = loop {
        if let Some(value) = recorder.get(key)? {
            return Ok(Outcome::Duplicate(value));
        }
        match table.join(key) {
            Role::Leader(guard) => break guard,
            Role::Waiter(waiter) => {
                if !waiter.wait(wait_deadline) {
                    return Err(WithError::TimedOut);
                }
            }
        }
    };
    // The previous leader may have recorded the value between our `get` and our `join`.
    if let Some(value) = recorder.get(key)? {
        return Ok(Outcome::Duplicate(value));
    }
    let value = make_value().map_err(WithError::Closure)?;
    // A plain `check_or_insert` (which does not join flights) may have recorded the key while
    // the closure ran: then this returns its `Duplicate` and the closure's value is dropped.
    Ok(recorder.check_or_insert(key, value.as_ref())?)
}

/// The default number of shards of an [`InFlightTable`]: enough that threads working on
/// different keys rarely meet on a shard lock, which is held only to add or remove an entry.
const IN_FLIGHT_SHARD_COUNT: usize = 64;

type FlightMap = HashMap<Box<[u8]>, Arc<Flight>, ahash::RandomState>;

/// The keys whose closure is running now, each with the [`Flight`] its waiters sleep on.
pub(crate) struct InFlightTable {
    /// A power-of-two count of maps; a key's hash picks one.
    shards: Box<[Mutex<FlightMap>]>,
    hasher: ahash::RandomState,
}

/// One leader's run: waiters sleep on `done` until `finished` is set.
struct Flight {
    finished: Mutex<bool>,
    done: Condvar,
}

/// What [`InFlightTable::join`] made of the caller.
pub(crate) enum Role<'a> {
    /// The caller owns the key's entry until it drops the guard.
    Leader(LeaderGuard<'a>),
    /// Another caller leads; wait for it, then start over.
    Waiter(Waiter),
}

/// Proof of leadership for one key. Dropping it (on any path, unwinding included) removes the
/// key's entry and wakes every waiter.
pub(crate) struct LeaderGuard<'a> {
    table: &'a InFlightTable,
    shard: usize,
    key: &'a [u8],
    flight: Arc<Flight>,
}

/// A caller waiting for the leader of a key.
pub(crate) struct Waiter {
    flight: Arc<Flight>,
}

impl std::fmt::Debug for InFlightTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightTable")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Default for InFlightTable {
    fn default() -> Self {
        Self::with_shard_count(IN_FLIGHT_SHARD_COUNT)
    }
}

impl InFlightTable {
    /// An empty table of `shard_count` shards (rounded up to a power of two, at least one).
    pub(crate) fn with_shard_count(shard_count: usize) -> Self {
        let shard_count = shard_count.max(1).next_power_of_two();
        let hasher = ahash::RandomState::new();
        InFlightTable {
            shards: (0..shard_count)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
        }
    }

    /// Makes the caller the leader of `key` if nobody leads it, else a waiter on its leader.
    pub(crate) fn join<'a>(&'a self, key: &'a [u8]) -> Role<'a> {
        let shard = self.shard_of(key);
        let mut flights = lock(&self.shards[shard]);
        if let Some(flight) = flights.get(key) {
            // Cloned under the shard lock, so the leader has not yet removed it, so it has not
            // yet set `finished`: the wake-up cannot have happened before this waiter exists.
            return Role::Waiter(Waiter {
                flight: Arc::clone(flight),
            });
        }
        let flight = Arc::new(Flight {
            finished: Mutex::new(false),
            done: Condvar::new(),
        });
        flights.insert(key.into(), Arc::clone(&flight));
        Role::Leader(LeaderGuard {
            table: self,
            shard,
            key,
            flight,
        })
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        // The low bits: ahash mixes all of them, and the maps use the same hasher's full value.
        self.hasher.hash_one(key) as usize & (self.shards.len() - 1)
    }

    /// Number of keys whose closure is running now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).len()).sum()
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        // First out of the table, so that a woken waiter that starts over cannot find this
        // finished flight again; then wake.
        let removed = lock(&self.table.shards[self.shard]).remove(self.key);
        assert!(
            removed.is_some_and(|flight| Arc::ptr_eq(&flight, &self.flight)),
            "only a key's leader removes the key's in-flight entry"
        );
        let mut finished = lock(&self.flight.finished);
        *finished = true;
        self.flight.done.notify_all();
    }
}

impl Waiter {
    /// Sleeps until the leader is done; `false` if `deadline` passed first.
    pub(crate) fn wait(self, deadline: Option<Instant>) -> bool {
        let mut finished = lock(&self.flight.finished);
        while !*finished {
            match deadline {
                None => finished = wait(&self.flight.done, finished),
                Some(deadline) => {
                    let (guard, timed_out) = wait_until(&self.flight.done, finished, deadline);
                    finished = guard;
                    if timed_out && !*finished {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// An in-memory [`Recorder`] for the unit tests and loom models, built on this module's shims.
#[cfg(test)]
mod memory {
    use super::sync::{lock, Mutex};
    use super::{Outcome, Recorder, Value};
    use std::collections::HashMap;

    #[derive(Default)]
    pub(super) struct MemoryRecorder {
        values: Mutex<HashMap<Vec<u8>, Value>>,
    }

    impl MemoryRecorder {
        pub(super) fn value(&self, key: &[u8]) -> Option<Value> {
            lock(&self.values).get(key).cloned()
        }
    }

    impl Recorder for MemoryRecorder {
        fn get(&self, key: &[u8]) -> crate::Result<Option<Value>> {
            Ok(self.value(key))
        }

        fn check_or_insert(&self, key: &[u8], value: &[u8]) -> crate::Result<Outcome> {
            let mut values = lock(&self.values);
            if let Some(first) = values.get(key) {
                return Ok(Outcome::Duplicate(first.clone()));
            }
            values.insert(key.to_vec(), Value::from(value));
            Ok(Outcome::Inserted)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::memory::MemoryRecorder;
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn value(bytes: &[u8]) -> Value {
        Value::from(bytes)
    }

    #[test]
    fn first_caller_leads_later_ones_wait_other_keys_lead() {
        let table = InFlightTable::with_shard_count(1);
        let Role::Leader(leader) = table.join(b"a") else {
            panic!("an empty table has no leader for a");
        };
        let Role::Waiter(waiter) = table.join(b"a") else {
            panic!("a is led");
        };
        // Same shard, other key: not blocked by a's flight.
        let Role::Leader(other) = table.join(b"b") else {
            panic!("b is not led");
        };
        assert_eq!(table.len(), 2);
        drop(leader);
        assert!(
            waiter.wait(None),
            "a finished flight lets its waiter go at once"
        );
        assert_eq!(table.len(), 1);
        drop(other);
        assert_eq!(table.len(), 0);
        assert!(matches!(table.join(b"a"), Role::Leader(_)));
    }

    #[test]
    fn waiter_times_out_while_the_leader_runs() {
        let table = InFlightTable::default();
        let _leader = table.join(b"k");
        let Role::Waiter(waiter) = table.join(b"k") else {
            panic!("k is led");
        };
        assert!(!waiter.wait(Some(Instant::now())));
    }

    #[test]
    fn a_sleeping_waiter_is_woken_by_the_leader() {
        let table = InFlightTable::default();
        std::thread::scope(|scope| {
            let Role::Leader(leader) = table.join(b"k") else {
                panic!("k is not led");
            };
            let (joined_tx, joined_rx) = mpsc::channel();
            let table = &table;
            let waiter = scope.spawn(move || {
                let Role::Waiter(waiter) = table.join(b"k") else {
                    panic!("k is led");
                };
                joined_tx.send(()).unwrap();
                waiter.wait(None)
            });
            joined_rx.recv().unwrap();
            drop(leader);
            assert!(waiter.join().unwrap());
        });
    }

    #[test]
    fn a_live_key_answers_duplicate_without_running_the_closure() {
        let table = InFlightTable::default();
        let recorder = MemoryRecorder::default();
        recorder.check_or_insert(b"k", b"first").unwrap();
        let outcome =
            check_or_insert_with(&table, &recorder, b"k", None, || -> Result<Vec<u8>, ()> {
                panic!("the closure of a live key must not run")
            });
        assert_eq!(outcome.unwrap(), Outcome::Duplicate(value(b"first")));
    }

    #[test]
    fn success_records_the_value_and_frees_the_key() {
        let table = InFlightTable::default();
        let recorder = MemoryRecorder::default();
        let outcome = check_or_insert_with(&table, &recorder, b"k", None, || {
            Ok::<_, ()>(b"made".to_vec())
        });
        assert_eq!(outcome.unwrap(), Outcome::Inserted);
        assert_eq!(recorder.value(b"k"), Some(value(b"made")));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn closure_error_records_nothing_and_reaches_its_caller() {
        let table = InFlightTable::default();
        let recorder = MemoryRecorder::default();
        let outcome =
            check_or_insert_with(&table, &recorder, b"k", None, || Err::<Vec<u8>, _>("no"));
        assert!(matches!(outcome, Err(WithError::Closure("no"))));
        assert_eq!(recorder.value(b"k"), None);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn closure_panic_propagates_and_frees_the_key() {
        let table = InFlightTable::default();
        let recorder = MemoryRecorder::default();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_or_insert_with(&table, &recorder, b"k", None, || -> Result<Vec<u8>, ()> {
                std::panic::panic_any("closure panic")
            })
        }));
        let payload = caught.expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"closure panic"));
        assert_eq!(table.len(), 0);
        assert_eq!(recorder.value(b"k"), None);
        let outcome = check_or_insert_with(&table, &recorder, b"k", None, || {
            Ok::<_, ()>(b"next".to_vec())
        });
        assert_eq!(outcome.unwrap(), Outcome::Inserted);
    }

    /// A recorder whose key is recorded by a plain `check_or_insert` while the closure runs.
    struct RacedRecorder {
        inner: MemoryRecorder,
    }

    impl Recorder for RacedRecorder {
        fn get(&self, _key: &[u8]) -> crate::Result<Option<Value>> {
            Ok(None)
        }
        fn check_or_insert(&self, key: &[u8], value: &[u8]) -> crate::Result<Outcome> {
            self.inner.check_or_insert(key, value)
        }
    }

    #[test]
    fn a_plain_insert_during_the_closure_wins_and_the_closure_value_is_dropped() {
        let table = InFlightTable::default();
        let recorder = RacedRecorder {
            inner: MemoryRecorder::default(),
        };
        let outcome = check_or_insert_with(&table, &recorder, b"k", None, || {
            recorder.inner.check_or_insert(b"k", b"plain").unwrap();
            Ok::<_, ()>(b"closure".to_vec())
        });
        assert_eq!(outcome.unwrap(), Outcome::Duplicate(value(b"plain")));
        assert_eq!(recorder.inner.value(b"k"), Some(value(b"plain")));
    }

    #[test]
    fn waiters_get_the_leaders_value_or_take_over_after_its_failure() {
        let table = InFlightTable::with_shard_count(1);
        let recorder = MemoryRecorder::default();
        let runs = AtomicUsize::new(0);
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<bool>();
        std::thread::scope(|scope| {
            let (table_ref, recorder_ref, runs_ref) = (&table, &recorder, &runs);
            let leader = scope.spawn(move || {
                check_or_insert_with(table_ref, recorder_ref, b"k", None, || {
                    runs_ref.fetch_add(1, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    if release_rx.recv().unwrap() {
                        Ok(b"leader".to_vec())
                    } else {
                        Err("leader failed")
                    }
                })
            });
            started_rx.recv().unwrap();
            let waiters: Vec<_> = (0..3)
                .map(|i| {
                    let (table, recorder, runs) = (&table, &recorder, &runs);
                    scope.spawn(move || {
                        check_or_insert_with(table, recorder, b"k", None, || {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, &str>(format!("waiter-{i}").into_bytes())
                        })
                    })
                })
                .collect();
            // The waiters may or may not be asleep yet: either way they must end well.
            release_tx.send(false).unwrap();
            assert!(matches!(
                leader.join().unwrap(),
                Err(WithError::Closure("leader failed"))
            ));
            let outcomes: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
            let recorded = recorder.value(b"k").expect("one waiter took over");
            let inserted = outcomes
                .iter()
                .filter(|o| matches!(o, Ok(Outcome::Inserted)))
                .count();
            assert_eq!(inserted, 1, "{outcomes:?}");
            for outcome in &outcomes {
                match outcome {
                    Ok(Outcome::Inserted) => {}
                    Ok(Outcome::Duplicate(seen)) => assert_eq!(*seen, recorded),
                    Err(error) => panic!("a waiter failed: {error:?}"),
                }
            }
            // The failed leader plus exactly one successful waiter.
            assert_eq!(runs.load(Ordering::SeqCst), 2);
        });
    }
}

/// Loom models of the leader/waiter handoff. Run them with
/// `RUSTFLAGS="--cfg loom" cargo test -p idem --lib --release single_flight -- --nocapture`;
/// each prints how many interleavings it explored.
#[cfg(all(test, loom))]
mod loom_models {
    use super::memory::MemoryRecorder;
    use super::*;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    /// What one caller's closure does, and the shared counters it updates.
    #[derive(Clone, Copy)]
    enum Plan {
        Succeed,
        Fail,
    }

    /// Counters that every model checks at the end of each interleaving.
    #[derive(Default)]
    struct Counters {
        /// Closures of the key running right now; must never exceed one.
        running: AtomicUsize,
        successes: AtomicUsize,
        failures: AtomicUsize,
    }

    struct World {
        table: InFlightTable,
        recorder: MemoryRecorder,
        counters: Counters,
    }

    fn call(
        world: &World,
        key: &'static [u8],
        name: u8,
        plan: Plan,
    ) -> Result<Outcome, WithError<u8>> {
        check_or_insert_with(&world.table, &world.recorder, key, None, || {
            let before = world.counters.running.fetch_add(1, Ordering::SeqCst);
            assert_eq!(before, 0, "two closures of one key ran at once");
            // A scheduling point inside the closure, where other callers may join or wait.
            thread::yield_now();
            world.counters.running.fetch_sub(1, Ordering::SeqCst);
            match plan {
                Plan::Succeed => {
                    world.counters.successes.fetch_add(1, Ordering::SeqCst);
                    Ok(vec![name])
                }
                Plan::Fail => {
                    world.counters.failures.fetch_add(1, Ordering::SeqCst);
                    Err(name)
                }
            }
        })
    }

    /// Runs `plans` (one caller per plan, the last on the model's main thread) on one key and
    /// checks: exactly one success if any caller plans one, every `Inserted` is the recorded
    /// value's maker, every `Duplicate` carries the recorded value, every error is its caller's
    /// own, and the table is empty at the end. A lost wake-up or a deadlock fails the model.
    ///
    /// `preemption_bound` bounds models too large to explore exhaustively (`None`: explore every
    /// interleaving); `LOOM_MAX_PREEMPTIONS` overrides it.
    fn handoff_model(name: &'static str, plans: &'static [Plan], preemption_bound: Option<usize>) {
        let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&iterations);
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = preemption_bound;
        }
        builder.check(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let world = Arc::new(World {
                table: InFlightTable::with_shard_count(1),
                recorder: MemoryRecorder::default(),
                counters: Counters::default(),
            });
            let (last, others) = plans.split_last().expect("at least one caller");
            let handles: Vec<_> = others
                .iter()
                .enumerate()
                .map(|(i, &plan)| {
                    let world = Arc::clone(&world);
                    thread::spawn(move || call(&world, b"k", i as u8, plan))
                })
                .collect();
            // The main thread's call runs while the spawned callers run; it is the last caller.
            let own = call(&world, b"k", others.len() as u8, *last);
            let mut outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            outcomes.push(own);

            let recorded = world.recorder.value(b"k");
            let any_success_planned = plans.iter().any(|p| matches!(p, Plan::Succeed));
            let successes = world.counters.successes.load(Ordering::SeqCst);
            assert_eq!(
                successes,
                usize::from(any_success_planned),
                "successful runs"
            );
            assert_eq!(recorded.is_some(), any_success_planned);
            for (i, (outcome, plan)) in outcomes.iter().zip(plans).enumerate() {
                match (outcome, plan) {
                    (Ok(Outcome::Inserted), Plan::Succeed) => {
                        assert_eq!(recorded.as_deref(), Some(&[i as u8][..]));
                    }
                    (Ok(Outcome::Duplicate(seen)), _) => {
                        assert_eq!(Some(seen), recorded.as_ref());
                    }
                    (Err(WithError::Closure(who)), Plan::Fail) => assert_eq!(*who as usize, i),
                    (other, _) => panic!("caller {i} got {other:?}"),
                }
            }
            let closure_errors = outcomes
                .iter()
                .filter(|o| matches!(o, Err(WithError::Closure(_))))
                .count();
            assert_eq!(
                world.counters.failures.load(Ordering::SeqCst),
                closure_errors
            );
            assert_eq!(world.table.len(), 0, "an in-flight entry was left behind");
        });
        println!(
            "loom model {name}: {} interleavings explored",
            iterations.load(std::sync::atomic::Ordering::SeqCst)
        );
    }

    #[test]
    fn single_flight_two_callers_leader_succeeds() {
        handoff_model(
            "two callers, both succeed",
            &[Plan::Succeed, Plan::Succeed],
            None,
        );
    }

    #[test]
    fn single_flight_two_callers_leader_fails_waiter_takes_over() {
        handoff_model("two callers, one fails", &[Plan::Fail, Plan::Succeed], None);
        handoff_model(
            "two callers, other order",
            &[Plan::Succeed, Plan::Fail],
            None,
        );
    }

    #[test]
    fn single_flight_two_callers_both_fail() {
        handoff_model("two callers, both fail", &[Plan::Fail, Plan::Fail], None);
    }

    #[test]
    fn single_flight_three_callers_failure_handoff() {
        handoff_model(
            "three callers, fail/succeed/succeed",
            &[Plan::Fail, Plan::Succeed, Plan::Succeed],
            Some(3),
        );
        handoff_model(
            "three callers, fail/fail/succeed",
            &[Plan::Fail, Plan::Fail, Plan::Succeed],
            Some(3),
        );
    }

    /// A closure for key `a` that cannot finish until key `b` (same shard) has been recorded by
    /// another thread: if the closure ran under a shard lock, loom would report a deadlock.
    #[test]
    fn single_flight_other_key_of_the_same_shard_proceeds_during_a_closure() {
        static ITERATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        loom::model(|| {
            ITERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let world = Arc::new(World {
                table: InFlightTable::with_shard_count(1),
                recorder: MemoryRecorder::default(),
                counters: Counters::default(),
            });
            let b_done = Arc::new((Mutex::new(false), Condvar::new()));
            let other = {
                let (world, b_done) = (Arc::clone(&world), Arc::clone(&b_done));
                thread::spawn(move || {
                    let outcome =
                        check_or_insert_with(&world.table, &world.recorder, b"b", None, || {
                            Ok::<_, ()>(b"B".to_vec())
                        });
                    *lock(&b_done.0) = true;
                    b_done.1.notify_all();
                    outcome
                })
            };
            let outcome = check_or_insert_with(&world.table, &world.recorder, b"a", None, || {
                let mut done = lock(&b_done.0);
                while !*done {
                    done = wait(&b_done.1, done);
                }
                Ok::<_, ()>(b"A".to_vec())
            });
            assert_eq!(outcome.unwrap(), Outcome::Inserted);
            assert_eq!(other.join().unwrap().unwrap(), Outcome::Inserted);
            assert_eq!(world.table.len(), 0);
        });
        println!(
            "loom model two keys of one shard: {} interleavings explored",
            ITERATIONS.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
}
