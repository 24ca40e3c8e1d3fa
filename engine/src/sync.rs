//! The synchronisation primitives of the log: `parking_lot`'s and `std`'s in normal builds,
//! loom's under `--cfg loom`, behind one API (parking_lot's), so the loom models in `log` check
//! the very group-commit code that runs in production.
//!
//! loom primitives exist only inside `loom::model`: a loom build may open no store outside a
//! model, so loom runs use a test filter (see `.ci/loom.sh`).

#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex, RwLock};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64};

#[cfg(loom)]
pub(crate) use loom_shim::{AtomicBool, AtomicU64, Condvar, Mutex, RwLock};

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
