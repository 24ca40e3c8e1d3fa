//! The commit queue: callers waiting for their records to become durable. After each fsync the
//! writer wakes exactly the callers whose records it covered (a caller that arrived during the
//! fsync keeps sleeping until the next one), instead of waking everyone to re-check: with 64
//! `Sync` threads, waking all of them on every commit cost more CPU than the commits.
//!
//! Invariants:
//! - No lost wake-up: a waiter checks `settled` and enqueues itself under the queue's lock; the
//!   writer publishes the new durable position (or the poison) *before* it takes that lock to
//!   wake. So either the waiter saw it, or the writer sees the waiter.
//! - A waiter leaves only after its own signal was set, which happens after it left the queue:
//!   so a thread's signal can be reused for its next wait (one per thread, no allocation).
//! - A waiter is a sleeping thread (its [`Signal`]) or an async task (its [`Waker`], see
//!   [`CommitQueue::register`]); both are woken by the same `wake`, outside the queue's lock. A
//!   task's entry is removed only by a `wake` that also wakes it, so a task that registered and
//!   saw nothing settled is woken at the latest by the wake that covers its end (or the poison).

use std::sync::Arc;
use std::task::Waker;

use super::Location;
use crate::sync::{Condvar, Mutex};

/// One thread's wake-up flag.
#[derive(Debug)]
pub(crate) struct Signal {
    woken: Mutex<bool>,
    wake: Condvar,
}

impl Signal {
    fn new() -> Signal {
        Signal {
            woken: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    fn set(&self) {
        *self.woken.lock() = true;
        self.wake.notify_one();
    }
}

#[cfg(not(loom))]
thread_local! {
    static SIGNAL: Arc<Signal> = Arc::new(Signal::new());
}

/// This thread's signal (under loom, whose threads share one OS thread, a fresh one).
fn own_signal() -> Arc<Signal> {
    #[cfg(not(loom))]
    return SIGNAL.with(Arc::clone);
    #[cfg(loom)]
    Arc::new(Signal::new())
}

/// Who waits: a thread asleep on its signal, or an async task to be woken through its waker.
#[derive(Debug)]
enum Waiter {
    Thread(Arc<Signal>),
    Task(Waker),
}

impl Waiter {
    fn wake(self) {
        match self {
            Waiter::Thread(signal) => signal.set(),
            Waiter::Task(waker) => waker.wake(),
        }
    }
}

#[derive(Debug)]
struct Waiting {
    end: Location,
    waiter: Waiter,
}

#[derive(Debug)]
pub(crate) struct CommitQueue {
    waiting: Mutex<Vec<Waiting>>,
}

impl CommitQueue {
    pub(crate) fn new() -> CommitQueue {
        CommitQueue {
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// Sleeps until [`CommitQueue::wake`] covers `end`, unless `settled()` already holds (checked
    /// under the queue's lock). `settled` must be made true before the `wake` that follows it.
    pub(crate) fn wait(&self, end: Location, settled: impl Fn() -> bool) {
        let signal = own_signal();
        *signal.woken.lock() = false;
        {
            let mut waiting = self.waiting.lock();
            if settled() {
                return;
            }
            waiting.push(Waiting {
                end,
                waiter: Waiter::Thread(Arc::clone(&signal)),
            });
        }
        let mut woken = signal.woken.lock();
        while !*woken {
            signal.wake.wait(&mut woken);
        }
    }

    /// The async counterpart of [`CommitQueue::wait`]: unless `settled()` already holds
    /// (checked under the queue's lock, and then the answer is `true`), enqueues `waker` to be
    /// woken by the [`CommitQueue::wake`] that covers `end`, and answers `false` without
    /// sleeping. The caller polls again when woken; a caller dropped meanwhile leaves an entry
    /// that the covering `wake` drops (waking a waker whose task is gone is harmless).
    pub(crate) fn register(
        &self,
        end: Location,
        waker: &Waker,
        settled: impl Fn() -> bool,
    ) -> bool {
        let mut waiting = self.waiting.lock();
        if settled() {
            return true;
        }
        waiting.push(Waiting {
            end,
            waiter: Waiter::Task(waker.clone()),
        });
        false
    }

    /// Wakes the waiters whose records end at or before `durable`, or every waiter if `all` (the
    /// log was poisoned or shut down).
    pub(crate) fn wake(&self, durable: Location, all: bool) {
        let ready: Vec<Waiter> = {
            let mut waiting = self.waiting.lock();
            if all {
                waiting.drain(..).map(|w| w.waiter).collect()
            } else {
                waiting
                    .extract_if(.., |w| w.end <= durable)
                    .map(|w| w.waiter)
                    .collect()
            }
        };
        // Outside the lock: a waker may run executor code, and woken threads need no lock of ours.
        for waiter in ready {
            waiter.wake();
        }
    }
}

/// loom model of the hand-off (run by `.ci/loom.sh`): each waiter is woken exactly when a wake
/// covers its end, never by one that does not, and none is lost whatever the interleaving of
/// its check-and-enqueue with the writer's publish-and-wake.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn loom_commit_queue_wakes_each_waiter_when_covered() {
        static ITERATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            ITERATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let queue = Arc::new(CommitQueue::new());
            let durable = Arc::new(AtomicU64::new(0));
            let waiters: Vec<_> = [10u64, 20]
                .into_iter()
                .map(|end| {
                    let queue = Arc::clone(&queue);
                    let durable = Arc::clone(&durable);
                    loom::thread::spawn(move || {
                        queue.wait(end, || durable.load(Ordering::Acquire) >= end);
                        assert!(
                            durable.load(Ordering::Acquire) >= end,
                            "woken before its end {end} was durable"
                        );
                    })
                })
                .collect();
            // The writer: publish the durable position, then wake.
            durable.store(10, Ordering::Release);
            queue.wake(10, false);
            durable.store(20, Ordering::Release);
            queue.wake(20, false);
            for waiter in waiters {
                waiter.join().unwrap();
            }
        });
        println!(
            "loom model commit queue: {} interleavings explored",
            ITERATIONS.load(std::sync::atomic::Ordering::SeqCst)
        );
    }

    /// Polls like `Log::poll_durable`: ready once `durable` covers `end`, else registered.
    struct AsyncWaiter {
        queue: Arc<CommitQueue>,
        durable: Arc<loom::sync::atomic::AtomicU64>,
        end: Location,
    }

    impl std::future::Future for AsyncWaiter {
        type Output = ();

        fn poll(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            let settled = || self.durable.load(Ordering::Acquire) >= self.end;
            if settled() || self.queue.register(self.end, cx.waker(), settled) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }
    }

    /// A thread and an async task wait side by side: the task (driven by loom's `block_on`,
    /// which reports a deadlock if its waker is never woken) resolves exactly when a wake
    /// covers its end, whatever the interleaving of its registration with the writer's
    /// publish-and-wake; the thread is woken as before.
    #[test]
    fn loom_commit_queue_wakes_an_async_waiter_when_covered() {
        static ITERATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            ITERATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let queue = Arc::new(CommitQueue::new());
            let durable = Arc::new(AtomicU64::new(0));
            let thread = {
                let queue = Arc::clone(&queue);
                let durable = Arc::clone(&durable);
                loom::thread::spawn(move || {
                    queue.wait(10, || durable.load(Ordering::Acquire) >= 10);
                    assert!(durable.load(Ordering::Acquire) >= 10);
                })
            };
            let task = {
                let waiter = AsyncWaiter {
                    queue: Arc::clone(&queue),
                    durable: Arc::clone(&durable),
                    end: 20,
                };
                let durable = Arc::clone(&durable);
                loom::thread::spawn(move || {
                    loom::future::block_on(waiter);
                    assert!(
                        durable.load(Ordering::Acquire) >= 20,
                        "the task resolved before its end was durable"
                    );
                })
            };
            durable.store(10, Ordering::Release);
            queue.wake(10, false);
            durable.store(20, Ordering::Release);
            queue.wake(20, false);
            thread.join().unwrap();
            task.join().unwrap();
        });
        println!(
            "loom model commit queue, async waiter: {} interleavings explored",
            ITERATIONS.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
}
