//! The synchronisation primitives of the log: `parking_lot`'s and `std`'s in normal builds,
//! loom's under `--cfg loom`, behind one API (parking_lot's), so the loom models in `log` check
//! the very group-commit code that runs in production.
//!
//! loom primitives exist only inside `loom::model`: a loom build may open no store outside a
//! model, so loom runs use a test filter (see `.ci/loom.sh`).
//!
//! [`Futex`] is a word that threads sleep on with a bit mask and that one call wakes by mask: a
//! Linux futex (`FUTEX_WAIT_BITSET`/`FUTEX_WAKE_BITSET`, through rustix's safe wrappers) in
//! normal builds, and a mutex, a condition variable and per-bit wake counters under loom and on
//! other systems, with the same contract.

#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};

#[cfg(loom)]
pub(crate) use loom_shim::{AtomicBool, AtomicU64, Condvar, Mutex, MutexGuard, RwLock};

/// Spawns a named background thread (a loom thread under `--cfg loom`).
#[cfg(not(loom))]
pub(crate) fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
}

#[cfg(loom)]
pub(crate) use loom_shim::{spawn, JoinHandle};

#[cfg(any(loom, not(any(target_os = "linux", target_os = "android"))))]
pub(crate) use futex_emulated::Futex;
#[cfg(all(not(loom), any(target_os = "linux", target_os = "android")))]
pub(crate) use futex_linux::Futex;

/// The bit of `Futex` masks that stands for `n` (any `n`: taken modulo 32).
pub(crate) fn futex_bit(n: u64) -> u32 {
    1 << (n % 32)
}

/// A Linux futex word. Contract (shared with the emulation): [`Futex::wait`] returns at once if
/// the word no longer holds `expected` (checked atomically with going to sleep), else sleeps
/// until a [`Futex::wake`] whose mask shares a bit with its own, or spuriously: callers re-check
/// their condition in a loop. A waker changes the word (`bump`) before it wakes, so a waiter
/// that read the old value either sees the change or is asleep when the wake comes.
#[cfg(all(not(loom), any(target_os = "linux", target_os = "android")))]
mod futex_linux {
    use rustix::thread::futex;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Default)]
    pub(crate) struct Futex(AtomicU32);

    impl Futex {
        pub(crate) fn new() -> Futex {
            Futex(AtomicU32::new(0))
        }

        pub(crate) fn value(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }

        pub(crate) fn bump(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }

        pub(crate) fn wait(&self, expected: u32, mask: u32) {
            let Some(mask) = NonZeroU32::new(mask) else {
                return;
            };
            // EAGAIN (the word moved) and EINTR are both "re-check": nothing to report.
            let _ = futex::wait_bitset(&self.0, futex::Flags::PRIVATE, expected, None, mask);
        }

        pub(crate) fn wake(&self, mask: u32) {
            if let Some(mask) = NonZeroU32::new(mask) {
                let _ = futex::wake_bitset(&self.0, futex::Flags::PRIVATE, i32::MAX as u32, mask);
            }
        }
    }
}

/// The same contract as the Linux futex, over a mutex and a condition variable: each bit counts
/// the wakes that named it, and a sleeper returns once a count of one of its bits moved.
#[cfg(any(loom, not(any(target_os = "linux", target_os = "android"))))]
mod futex_emulated {
    use super::{Condvar, Mutex};
    #[cfg(loom)]
    use loom::sync::atomic::AtomicU32;
    #[cfg(not(loom))]
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;

    #[derive(Debug)]
    pub(crate) struct Futex {
        word: AtomicU32,
        wakes: Mutex<[u32; 32]>,
        woken: Condvar,
    }

    impl Futex {
        pub(crate) fn new() -> Futex {
            Futex {
                word: AtomicU32::new(0),
                wakes: Mutex::new([0; 32]),
                woken: Condvar::new(),
            }
        }

        pub(crate) fn value(&self) -> u32 {
            self.word.load(Ordering::SeqCst)
        }

        pub(crate) fn bump(&self) {
            self.word.fetch_add(1, Ordering::SeqCst);
        }

        pub(crate) fn wait(&self, expected: u32, mask: u32) {
            let mut wakes = self.wakes.lock();
            if self.word.load(Ordering::SeqCst) != expected {
                return;
            }
            let before = *wakes;
            let named = |wakes: &[u32; 32]| {
                (0..32).any(|bit| mask & (1 << bit) != 0 && wakes[bit] != before[bit])
            };
            while !named(&wakes) {
                self.woken.wait(&mut wakes);
            }
        }

        pub(crate) fn wake(&self, mask: u32) {
            let mut wakes = self.wakes.lock();
            for (bit, count) in wakes.iter_mut().enumerate() {
                if mask & (1 << bit) != 0 {
                    *count = count.wrapping_add(1);
                }
            }
            drop(wakes);
            self.woken.notify_all();
        }
    }
}

#[cfg(loom)]
mod loom_shim {
    use std::fmt;
    use std::ops::{Deref, DerefMut};
    use std::time::Duration;

    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64};

    /// A handle that joins like `std::thread::JoinHandle`.
    pub(crate) struct JoinHandle(loom::thread::JoinHandle<()>);

    impl JoinHandle {
        pub(crate) fn join(self) -> std::thread::Result<()> {
            self.0.join()
        }
    }

    impl fmt::Debug for JoinHandle {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JoinHandle")
        }
    }

    pub(crate) fn spawn(
        _name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<JoinHandle> {
        Ok(JoinHandle(loom::thread::spawn(body)))
    }

    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().expect("loom mutex poisoned")))
        }

        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            match self.0.try_lock() {
                Ok(guard) => Some(MutexGuard(Some(guard))),
                Err(std::sync::TryLockError::WouldBlock) => None,
                Err(std::sync::TryLockError::Poisoned(_)) => panic!("loom mutex poisoned"),
            }
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex")
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard present")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard present")
        }
    }

    #[derive(Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("guard present");
            guard.0 = Some(self.0.wait(inner).expect("loom mutex poisoned"));
        }

        /// loom ignores the duration: a model must progress on notifications alone.
        pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) {
            let inner = guard.0.take().expect("guard present");
            let (inner, _) = self
                .0
                .wait_timeout(inner, timeout)
                .expect("loom mutex poisoned");
            guard.0 = Some(inner);
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    impl fmt::Debug for Condvar {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Condvar")
        }
    }

    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            RwLock(loom::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
            self.0.read().expect("loom rwlock poisoned")
        }

        pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
            self.0.write().expect("loom rwlock poisoned")
        }
    }

    impl<T> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("RwLock")
        }
    }
}
