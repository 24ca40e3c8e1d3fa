//! [`Store::check_or_insert_with`]: check-or-insert whose value is made by a closure that runs at
//! most once at a time per key in this process (single flight).
//!
//! Built only on the public [`Store::get`] and [`Store::check_or_insert`] plus the store's
//! in-flight table; the algorithm and its invariants are in `single_flight`.

use std::time::{Duration, Instant};

use crate::answer::{Outcome, Value};
use crate::error::Result;
use crate::single_flight::{self, Recorder, WithError};
use crate::store::Store;

impl Store {
    /// Returns the live value of `key` as [`Outcome::Duplicate`], or else runs `make_value` and
    /// records its value for `ttl` ([`Outcome::Inserted`]); among the callers of this method in
    /// this process, one closure per key runs at a time.
    ///
    /// This is [`Store::check_or_insert`] for results that are expensive or must not be produced
    /// twice: the closure does the work and its value is the recorded result.
    ///
    /// - Callers that come while another caller's closure for `key` runs wait for it (for ever:
    ///   see [`Store::check_or_insert_with_timeout`] to bound the wait), then get its value as
    ///   `Duplicate` without running their own closure.
    /// - If the closure returns an error, nothing is recorded and the error comes back as
    ///   [`WithError::Closure`] to its own caller only; if it panics, nothing is recorded and the
    ///   panic continues into its caller. In both cases one waiting caller (if any) takes over
    ///   and runs its own closure, and the others wait for that one.
    /// - The closure runs with no lock held: other keys, including those of the same index
    ///   shard, proceed meanwhile.
    /// - Plain [`Store::check_or_insert`] calls do not wait for running closures. If one records
    ///   `key` while the closure runs, this call answers with that `Duplicate` and the closure's
    ///   value is dropped, unrecorded: the first value stays, as always.
    /// - A key held by a claim ([`Store::claim`]) fails with [`crate::Error::ClaimInFlight`] (as
    ///   [`WithError::Store`]) before the closure runs: its side effect is in progress elsewhere;
    ///   a key in a failure's back-off ([`crate::Completion::Failure`]) fails the same way with
    ///   [`crate::Error::RecentFailure`].
    /// - Retention follows the closure's result, as a claim's [`crate::Completion`] does: `Ok`
    ///   is a success, kept for `ttl`; `Err` is a definite failure, never cached (the key is
    ///   free for the next caller at once). An error that must be kept (a permanent refusal
    ///   that retries should see, not redo) is returned by the closure as an `Ok` value that
    ///   encodes it. A side effect whose outcome can be unknown belongs in a claim
    ///   ([`Store::claim`], then [`Store::finish`] with [`crate::Completion::Ambiguous`]), which
    ///   survives a crash in the middle.
    /// - Key and TTL are checked before the closure runs; a value that is too large is only
    ///   found after it ran ([`crate::Error::ValueTooLarge`] as [`WithError::Store`], nothing recorded).
    /// - In [`crate::Durability::Sync`] mode waiters are woken only after the value is durable.
    ///
    /// "At most once" holds while the recorded value lives: after its TTL the key is new again.
    /// It holds within one process; other processes cannot open the same store.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(24 * 3600);
    /// let charge = || -> Result<Vec<u8>, std::io::Error> { Ok(b"charged:tx-9".to_vec()) };
    /// assert_eq!(store.check_or_insert_with(b"payment-42", ttl, charge)?, idem::Outcome::Inserted);
    ///
    /// // A retry of the same payment: the closure does not run, the first result comes back.
    /// let outcome = store.check_or_insert_with(b"payment-42", ttl, || -> Result<Vec<u8>, std::io::Error> {
    ///     unreachable!("payment-42 is live")
    /// })?;
    /// assert_eq!(outcome, idem::Outcome::Duplicate(idem::Value::from(&b"charged:tx-9"[..])));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_or_insert_with<F, V, E>(
        &self,
        key: &[u8],
        ttl: Duration,
        make_value: F,
    ) -> Result<Outcome, WithError<E>>
    where
        F: FnOnce() -> Result<V, E>,
        V: AsRef<[u8]>,
    {
        self.check_or_insert_with_deadline(key, ttl, None, make_value)
    }

    /// [`Store::check_or_insert_with`] that waits at most `wait_timeout` in all for other
    /// callers' closures of `key`, then gives up with [`WithError::TimedOut`] without running its
    /// own closure. The timeout bounds only that waiting, not this caller's own closure or the
    /// store's I/O. A zero timeout never waits: it answers `TimedOut` whenever another closure of
    /// `key` is running.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(60);
    /// let outcome = store.check_or_insert_with_timeout(b"job-7", ttl, Duration::from_secs(5), || {
    ///     Ok::<_, std::convert::Infallible>(b"done".to_vec())
    /// })?;
    /// assert_eq!(outcome, idem::Outcome::Inserted);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_or_insert_with_timeout<F, V, E>(
        &self,
        key: &[u8],
        ttl: Duration,
        wait_timeout: Duration,
        make_value: F,
    ) -> Result<Outcome, WithError<E>>
    where
        F: FnOnce() -> Result<V, E>,
        V: AsRef<[u8]>,
    {
        // A timeout too long to add to now is no timeout.
        let deadline = Instant::now().checked_add(wait_timeout);
        self.check_or_insert_with_deadline(key, ttl, deadline, make_value)
    }

    fn check_or_insert_with_deadline<F, V, E>(
        &self,
        key: &[u8],
        ttl: Duration,
        wait_deadline: Option<Instant>,
        make_value: F,
    ) -> Result<Outcome, WithError<E>>
    where
        F: FnOnce() -> Result<V, E>,
        V: AsRef<[u8]>,
    {
        // The key is checked by the first `get`; the TTL is otherwise checked only by the final
        // `check_or_insert`, after the closure did its work.
        check_ttl(ttl)?;
        let recorder = StoreRecorder { store: self, ttl };
        single_flight::check_or_insert_with(
            &self.in_flight,
            &recorder,
            key,
            wait_deadline,
            make_value,
        )
    }
}

/// The store as the single-flight algorithm sees it, with the call's TTL bound.
struct StoreRecorder<'a> {
    store: &'a Store,
    ttl: Duration,
}

impl Recorder for StoreRecorder<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        // A claimed key is in flight elsewhere: the closure must not run.
        // A duplicate found here slides like one found by `check_or_insert` (see `refresh`).
        let ttl = crate::validate::validate_ttl(self.ttl)?;
        self.store
            .lookup(key, crate::shared::ClaimedKey::InFlight, Some(ttl))
    }

    fn check_or_insert(&self, key: &[u8], value: &[u8]) -> Result<Outcome> {
        self.store.check_or_insert(key, self.ttl, value)
    }
}

/// The TTL rules of [`Store::check_or_insert`], checked before the closure runs.
fn check_ttl(ttl: Duration) -> Result<()> {
    crate::validate::validate_ttl(ttl).map(|_| ())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::validate::MAX_TTL;
    use crate::{Config, Durability};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    const TTL: Duration = Duration::from_secs(3600);

    fn never_store(dir: &std::path::Path) -> Store {
        Store::open_with(dir, Config::default().durability(Durability::Never)).unwrap()
    }

    #[test]
    fn inserts_then_answers_duplicate_without_running_the_closure() {
        let dir = tempfile::tempdir().unwrap();
        let store = never_store(dir.path());
        let runs = AtomicUsize::new(0);
        let make = |bytes: &'static [u8]| {
            let runs = &runs;
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(bytes)
            }
        };
        assert_eq!(
            store.check_or_insert_with(b"k", TTL, make(b"one")).unwrap(),
            Outcome::Inserted
        );
        assert_eq!(
            store.check_or_insert_with(b"k", TTL, make(b"two")).unwrap(),
            Outcome::Duplicate(Value::from(&b"one"[..]))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Plain calls see the closure's value as the key's first value.
        assert_eq!(
            store.check_or_insert(b"k", TTL, b"three").unwrap(),
            Outcome::Duplicate(Value::from(&b"one"[..]))
        );
    }

    #[test]
    fn bad_key_and_ttl_are_rejected_before_the_closure_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = never_store(dir.path());
        let never = || -> std::result::Result<Vec<u8>, ()> { panic!("must not run") };
        assert!(matches!(
            store.check_or_insert_with(b"", TTL, never),
            Err(WithError::Store(Error::EmptyKey))
        ));
        assert!(matches!(
            store.check_or_insert_with(b"k", Duration::ZERO, never),
            Err(WithError::Store(Error::ZeroTtl))
        ));
        assert!(matches!(
            store.check_or_insert_with(b"k", MAX_TTL + Duration::from_secs(1), never),
            Err(WithError::Store(Error::TtlTooLarge { .. }))
        ));
        let long_key = vec![b'k'; crate::MAX_KEY_BYTES + 1];
        assert!(matches!(
            store.check_or_insert_with(&long_key, TTL, never),
            Err(WithError::Store(Error::KeyTooLarge { .. }))
        ));
    }

    #[test]
    fn a_too_large_value_records_nothing_and_frees_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = never_store(dir.path());
        let huge = vec![0u8; crate::MAX_VALUE_BYTES + 1];
        assert!(matches!(
            store.check_or_insert_with(b"k", TTL, || Ok::<_, ()>(huge)),
            Err(WithError::Store(Error::ValueTooLarge { .. }))
        ));
        assert_eq!(store.get(b"k").unwrap(), None);
        assert_eq!(
            store
                .check_or_insert_with(b"k", TTL, || Ok::<_, ()>(b"small"))
                .unwrap(),
            Outcome::Inserted
        );
    }

    #[test]
    fn a_waiter_times_out_while_a_closure_runs_then_sees_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = never_store(dir.path());
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        std::thread::scope(|scope| {
            let store = &store;
            let leader = scope.spawn(move || {
                store.check_or_insert_with(b"k", TTL, || {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok::<_, ()>(b"slow")
                })
            });
            started_rx.recv().unwrap();
            let never = || -> std::result::Result<Vec<u8>, ()> { panic!("must not run") };
            assert!(matches!(
                store.check_or_insert_with_timeout(b"k", TTL, Duration::ZERO, never),
                Err(WithError::TimedOut)
            ));
            assert!(matches!(
                store.check_or_insert_with_timeout(b"k", TTL, Duration::from_millis(20), never),
                Err(WithError::TimedOut)
            ));
            release_tx.send(()).unwrap();
            assert_eq!(leader.join().unwrap().unwrap(), Outcome::Inserted);
            assert_eq!(
                store
                    .check_or_insert_with_timeout(b"k", TTL, Duration::ZERO, never)
                    .unwrap(),
                Outcome::Duplicate(Value::from(&b"slow"[..]))
            );
        });
    }

    #[test]
    fn sync_mode_records_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let outcome = store.check_or_insert_with(b"k", TTL, || Ok::<_, ()>(b"v"));
            assert_eq!(outcome.unwrap(), Outcome::Inserted);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(Value::from(&b"v"[..])));
    }

    #[test]
    fn with_error_displays_and_chains_its_source() {
        let error: WithError<std::io::Error> = WithError::Closure(std::io::Error::other("boom"));
        assert_eq!(error.to_string(), "the value's closure failed: boom");
        assert!(std::error::Error::source(&error).is_some());
        let error: WithError<std::io::Error> = Error::ZeroTtl.into();
        assert!(error.to_string().starts_with("store error: ttl is zero"));
        let error: WithError<std::io::Error> = WithError::TimedOut;
        assert!(std::error::Error::source(&error).is_none());
    }
}
