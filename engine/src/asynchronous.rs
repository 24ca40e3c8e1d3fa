//! The async API: the store's calls that may wait for durability, as futures that park the task,
//! never the thread, while the group commit runs. Runtime-agnostic (no executor dependency): a
//! waiting future registers its [`Waker`] in the log's commit queue, and the writer thread wakes
//! exactly the tasks its fsync covered, as it wakes blocked threads.
//!
//! Each `*_async` method runs the very procedure of its blocking twin (so the answers and errors
//! are the same by construction) with the procedure's final durability wait *captured* instead
//! of performed (`shared::capturing_durability_wait`), then awaits that location with
//! [`Durable`]. In `Periodic` and `Never` modes nothing is captured and the future is ready at
//! its first poll.
//!
//! Why methods on [`Store`] (`check_or_insert_async` beside `check_or_insert`) rather than an
//! `AsyncStore` wrapper: one store, one set of knobs and one `Arc` to share; a consumer mixes both
//! styles freely (async consumers, a blocking maintenance job), and each async call's docs sit
//! next to its blocking twin's.
//!
//! Invariants:
//! - No answer before durability: a future resolves only once the location its blocking twin
//!   would have waited for is durable, or with [`crate::Error::Poisoned`] if the log was poisoned first
//!   (every pending future is woken by the poison).
//! - Futures are lazy: nothing happens before the first poll. The first poll does the in-memory
//!   part (validation, the shard lock, the append to the write buffer) synchronously and asks
//!   the writer for a commit; later polls only check the durable position.
//!
//! What still holds a thread: the shard lock and the append lane (held for microseconds); reading
//! an older record from its segment file during a probe (a `pread`, normally served from the page
//! cache); the write buffer's back-pressure when 16 MiB or more wait for the writer; and the
//! durable reservation of a block of fencing tokens (an fsync'd file) by the first claim after
//! an open and then once per 2^20 claims. Never the group commit. [`Store::check_or_insert_with`]
//! has no async form: its closure is synchronous and its callers wait for one another's closures.
//!
//! Cancel safety. Dropping a future before its first poll does nothing. Dropping it after (the
//! in-memory part done, waiting for the commit) leaves what the blocking call leaves when its
//! thread dies during the fsync: the record is in the index and the write buffer, other callers
//! see it (after waiting for its durability) and it becomes durable with the next commit unless
//! the store is poisoned or the process crashes first. The caller never saw the answer, exactly
//! as after a crash; so a retry answers from the record:
//! - `check_or_insert_async`, `check_or_insert_batch_async`: the retry answers `Duplicate` of the
//!   value the dropped call wrote (the side effect it guarded may or may not have run).
//! - `claim_async`: the claim was taken and its token is lost: the key answers `InFlight` until
//!   the lease ends (as for a holder that died), then it is free.
//! - `complete_async` / `release_async`: the result or release was recorded; a retry with a clone
//!   of the token fails with [`crate::Error::StaleClaim`] (check with `get`).
//! - `remove_async`: the removal was done.
//!
//! Transactions get the same treatment: `Transaction::commit_async` captures the commit's final
//! wait and awaits it here (a dropped commit future leaves the transaction written, whole, as a
//! crash after a blocking commit would), and `check_or_insert_async` / `get_state_async` await
//! the record their answer rests on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::answer::{Outcome, Value};
use crate::claim::{Claim, ClaimToken};
use crate::error::Result;
use crate::log::{Location, Log};
use crate::shared::capturing_durability_wait;
use crate::store::Store;
use crate::transaction::Transaction;

impl Store {
    /// [`Store::check_or_insert`] as a future: in `Sync` mode it resolves once the answer cannot
    /// be undone by a crash, parking the task (not the thread) meanwhile. Same answers and
    /// errors; see the module docs for what a dropped future leaves recorded.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(3600);
    /// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// runtime.block_on(async {
    ///     let first = store.check_or_insert_async(b"order-17", ttl, b"charged").await?;
    ///     assert_eq!(first, idem::Outcome::Inserted);
    ///     assert!(store.check_or_insert_async(b"order-17", ttl, b"again").await?.is_duplicate());
    ///     Ok::<(), idem::Error>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn check_or_insert_async(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
    ) -> Result<Outcome> {
        self.when_durable(|| self.check_or_insert(key, ttl, value))
            .await
    }

    /// [`Store::check_or_insert_fingerprinted`] as a future (see
    /// [`Store::check_or_insert_async`]).
    pub async fn check_or_insert_fingerprinted_async(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
        fingerprint: &[u8],
    ) -> Result<Outcome> {
        self.when_durable(|| self.check_or_insert_fingerprinted(key, ttl, value, fingerprint))
            .await
    }

    /// [`Store::check_or_insert_batch`] as a future: one commit for the whole batch, awaited
    /// without holding a thread. Same all-or-nothing rules and answers.
    pub async fn check_or_insert_batch_async<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, Duration, V)],
    ) -> Result<Vec<Outcome>> {
        self.when_durable(|| self.check_or_insert_batch(items))
            .await
    }

    /// [`Store::get`] as a future: a value whose record is not durable yet is answered once it
    /// is.
    pub async fn get_async(&self, key: &[u8]) -> Result<Option<Value>> {
        self.when_durable(|| self.get(key)).await
    }

    /// [`Store::remove`] as a future: resolves once the removal is durable (in `Sync` mode).
    pub async fn remove_async(&self, key: &[u8]) -> Result<bool> {
        self.when_durable(|| self.remove(key)).await
    }

    /// [`Store::claim`] as a future: in `Sync` mode the claim is durable when it resolves. A
    /// future dropped after its first poll may have taken the claim (and lost the token): the
    /// key then answers `InFlight` until the lease ends.
    pub async fn claim_async(&self, key: &[u8], lease: Duration) -> Result<Claim> {
        self.when_durable(|| self.claim(key, lease)).await
    }

    /// [`Store::claim_fingerprinted`] as a future (see [`Store::claim_async`]).
    pub async fn claim_fingerprinted_async(
        &self,
        key: &[u8],
        lease: Duration,
        fingerprint: &[u8],
    ) -> Result<Claim> {
        self.when_durable(|| self.claim_fingerprinted(key, lease, fingerprint))
            .await
    }

    /// [`Store::complete`] as a future: resolves once the result is durable (in `Sync` mode).
    pub async fn complete_async(
        &self,
        token: ClaimToken,
        ttl: Duration,
        result: &[u8],
    ) -> Result<()> {
        self.when_durable(|| self.complete(token, ttl, result))
            .await
    }

    /// [`Store::release`] as a future: resolves once the release is durable (in `Sync` mode).
    pub async fn release_async(&self, token: ClaimToken) -> Result<()> {
        self.when_durable(|| self.release(token)).await
    }

    /// [`Store::flush`] as a future: everything acknowledged so far is durable when it resolves,
    /// in any mode (in `Periodic` mode, call it after `claim_async` and before the side effect).
    pub async fn flush_async(&self) -> Result<()> {
        let log = &*self.shared.log;
        Durable::new(log, log.tail()).await
    }

    /// [`Store::get_state`] as a future: a state value whose record is not durable yet is
    /// answered once it is.
    pub async fn get_state_async(&self, key: &[u8]) -> Result<Option<Value>> {
        self.when_durable(|| self.get_state(key)).await
    }

    /// [`Store::position`] as a future (see [`Store::get_state_async`]).
    pub async fn position_async(&self, source: &[u8]) -> Result<Option<u64>> {
        self.when_durable(|| self.position(source)).await
    }

    /// Runs `call` now (it is the synchronous part of the first poll) with its durability wait
    /// captured, then awaits that durability before answering, as the blocking call would have.
    async fn when_durable<T>(&self, call: impl FnOnce() -> Result<T>) -> Result<T> {
        let (answer, wait_for) = capturing_durability_wait(call);
        if let Some(end) = wait_for {
            // A failed wait replaces the answer, as in `Shared::answer_when_durable`.
            Durable::new(&self.shared.log, end).await?;
        }
        answer
    }
}

/// Resolves once every byte of the log before `end` is durable, or with [`crate::Error::Poisoned`]
/// if the log is poisoned first. Its first poll asks the writer for a commit; a pending poll
/// leaves its waker in the commit queue, which the writer wakes after the covering fsync.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Durable<'a> {
    log: &'a Log,
    end: Location,
    requested: bool,
    /// The waker of our entry in the commit queue, if we left one. Its entry stays there until
    /// a wake removes it, and that wake wakes it: a later poll with a waker that wakes the same
    /// task needs no second entry.
    registered: Option<Waker>,
}

impl<'a> Durable<'a> {
    pub(crate) fn new(log: &'a Log, end: Location) -> Durable<'a> {
        Durable {
            log,
            end,
            requested: false,
            registered: None,
        }
    }
}

impl Future for Durable<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        if !this.requested {
            this.log.request_durable(this.end);
            this.requested = true;
        }
        if let Some(registered) = &this.registered {
            if registered.will_wake(cx.waker()) {
                return match this.log.durable_answer(this.end) {
                    Some(answer) => Poll::Ready(answer),
                    None => Poll::Pending,
                };
            }
        }
        match this.log.poll_durable(this.end, cx.waker()) {
            Poll::Pending => {
                this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl Transaction<'_> {
    /// [`Transaction::check_or_insert`] as a future: a `Duplicate` resting on a record not
    /// durable yet is answered once it is, the task parked meanwhile.
    pub async fn check_or_insert_async(
        &mut self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
    ) -> Result<Outcome> {
        let store = self.store();
        store
            .when_durable(|| self.check_or_insert(key, ttl, value))
            .await
    }

    /// [`Transaction::get_state`] as a future (see [`Transaction::check_or_insert_async`]).
    pub async fn get_state_async(&mut self, key: &[u8]) -> Result<Option<Value>> {
        let store = self.store();
        store.when_durable(|| self.get_state(key)).await
    }

    /// [`Transaction::commit`] as a future: in `Sync` mode it resolves once the whole
    /// transaction is durable (one fsync shared with other committers), parking the task, not a
    /// thread. Dropped after its first poll, it leaves what a crash during a blocking commit
    /// would: the transaction is written and becomes durable with the next commit, whole.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    /// runtime.block_on(async {
    ///     let mut tx = store.transaction();
    ///     tx.check_or_insert_async(b"event-1", Duration::from_secs(3600), b"ok").await?;
    ///     tx.put_state(b"balance/7", b"250")?;
    ///     tx.set_position(b"orders/3", 1)?;
    ///     tx.commit_async().await?;
    ///     assert_eq!(store.position_async(b"orders/3").await?, Some(1));
    ///     Ok::<(), idem::Error>(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn commit_async(self) -> Result<()> {
        let store = self.store();
        store.when_durable(move || self.commit()).await
    }
}
