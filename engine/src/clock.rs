//! Where the store gets the time from.
//!
//! Expiry is an absolute wall-clock deadline in milliseconds since the Unix epoch, stored in each
//! record, so it holds across restarts. Production code never reads the wall clock directly: it
//! asks the store's [`Clock`], which tests replace with a [`ManualClock`].

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time in milliseconds since 1970-01-01 UTC.
    fn now_millis(&self) -> u64;
}

/// The operating system's wall clock, made monotone: it never reports a time earlier than one it
/// reported before, so an entry never comes back to life when NTP steps the clock back.
#[derive(Debug, Default)]
pub struct SystemClock {
    latest_millis: AtomicU64,
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            // Not `as_millis`: its u128 arithmetic is a noticeable share of a clock read, and
            // every call and transaction reads the clock.
            .map(|d| d.as_secs() * 1000 + u64::from(d.subsec_millis()))
            .unwrap_or(0);
        // A plain load on the hot path; the shared line is written only when the
        // millisecond ticks, not on every call from every thread.
        let previous = self.latest_millis.load(Ordering::Relaxed);
        if system <= previous {
            return previous;
        }
        self.latest_millis
            .fetch_max(system, Ordering::Relaxed)
            .max(system)
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// Clones share one time, so a test keeps a clone and advances it while the store runs.
///
/// ```
/// use std::time::Duration;
/// let clock = idem::ManualClock::new();
/// let before = idem::Clock::now_millis(&clock);
/// clock.advance(Duration::from_secs(61));
/// assert_eq!(idem::Clock::now_millis(&clock), before + 61_000);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// The fixed starting time of [`ManualClock::new`]: 2026-01-01T00:00:00Z.
    pub const DEFAULT_START_MILLIS: u64 = 1_767_225_600_000;

    /// A clock at [`ManualClock::DEFAULT_START_MILLIS`].
    pub fn new() -> Self {
        Self::starting_at(Self::DEFAULT_START_MILLIS)
    }

    /// A clock at `millis` since the Unix epoch.
    pub fn starting_at(millis: u64) -> Self {
        ManualClock {
            now_millis: Arc::new(AtomicU64::new(millis)),
        }
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now_millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the time to `millis`; it may not go backwards.
    ///
    /// # Panics
    /// If `millis` is earlier than the current time: stores rely on time never running backwards.
    pub fn set_millis(&self, millis: u64) {
        let previous = self.now_millis.swap(millis, Ordering::SeqCst);
        assert!(millis >= previous, "ManualClock may not run backwards");
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.now_millis.load(Ordering::SeqCst)
    }
}
