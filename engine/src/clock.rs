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
///
/// By default ([`SystemClock::default`], what [`crate::Config`] uses) it reads the kernel's
/// *coarse* real-time clock where there is one (Linux `CLOCK_REALTIME_COARSE`, read from the
/// vDSO without a system call): the time of the latest scheduler tick, a few nanoseconds to read
/// instead of tens, which every call pays. It lags the precise clock by up to one tick
/// (1-10 ms; [`SystemClock::resolution_millis`] says how long a tick is here), and by a few
/// more when the kernel's ticks are late (a busy virtual machine: 6 ms was seen here with 4 ms
/// ticks). Every deadline is computed from, and judged by, the same lagging clock, so an entry
/// still lives its whole TTL by it; by the precise clock a deadline can fall that lag earlier
/// than `now + ttl`. A store whose TTLs are shorter than a few ticks should use
/// [`SystemClock::precise`]. Where the coarse clock
/// is missing or coarser than [`SystemClock::MAX_COARSE_RESOLUTION_MILLIS`], the default reads
/// the precise clock.
///
/// ```
/// use idem::{Clock, SystemClock};
/// let coarse = SystemClock::default();
/// let precise = SystemClock::precise();
/// let (a, b) = (coarse.now_millis(), precise.now_millis());
/// // Never ahead; behind by a tick or a few (the bound here is only a sanity check).
/// assert!(a <= b && b - a < 1_000);
/// ```
#[derive(Debug)]
pub struct SystemClock {
    latest_millis: AtomicU64,
    coarse: bool,
}

impl SystemClock {
    /// The coarsest tick the default clock accepts from the coarse source; above it, the
    /// default reads the precise clock.
    pub const MAX_COARSE_RESOLUTION_MILLIS: u64 = 10;

    /// A clock that reads the precise real-time clock on every call (tens of nanoseconds each).
    pub fn precise() -> SystemClock {
        SystemClock {
            latest_millis: AtomicU64::new(0),
            coarse: false,
        }
    }

    /// How far behind the precise clock this clock may be, in milliseconds (0: it is precise).
    pub fn resolution_millis(&self) -> u64 {
        if self.coarse {
            coarse::resolution_millis().unwrap_or(0)
        } else {
            0
        }
    }

    fn read_millis(&self) -> u64 {
        if self.coarse {
            if let Some(millis) = coarse::now_millis() {
                return millis;
            }
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            // Not `as_millis`: its u128 arithmetic is a noticeable share of a clock read.
            .map(|d| d.as_secs() * 1000 + u64::from(d.subsec_millis()))
            .unwrap_or(0)
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            latest_millis: AtomicU64::new(0),
            coarse: coarse::resolution_millis()
                .is_some_and(|tick| tick <= Self::MAX_COARSE_RESOLUTION_MILLIS),
        }
    }
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        let system = self.read_millis();
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

/// The coarse real-time clock, where the platform has one.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod coarse {
    use rustix::time::{clock_getres, clock_gettime, ClockId};

    pub(super) fn now_millis() -> Option<u64> {
        let now = clock_gettime(ClockId::RealtimeCoarse);
        let secs = u64::try_from(now.tv_sec).ok()?;
        Some(secs * 1000 + now.tv_nsec as u64 / 1_000_000)
    }

    pub(super) fn resolution_millis() -> Option<u64> {
        let tick = clock_getres(ClockId::RealtimeCoarse);
        let nanos = u64::try_from(tick.tv_sec).ok()? * 1_000_000_000 + tick.tv_nsec as u64;
        (nanos > 0).then(|| nanos.div_ceil(1_000_000))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod coarse {
    pub(super) fn now_millis() -> Option<u64> {
        None
    }

    pub(super) fn resolution_millis() -> Option<u64> {
        None
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_default_clock_is_never_ahead_of_the_precise_one_and_follows_it() {
        let coarse = SystemClock::default();
        let precise = SystemClock::precise();
        assert_eq!(precise.resolution_millis(), 0);
        assert!(coarse.resolution_millis() <= SystemClock::MAX_COARSE_RESOLUTION_MILLIS);
        for _ in 0..1000 {
            let before = precise.now_millis();
            let read = coarse.now_millis();
            let after = precise.now_millis();
            // The coarse clock is the latest tick: never ahead of the precise time read after
            // it. How far behind depends on how late the kernel's ticks are (a tick, or a few
            // under load): only a bound that catches a clock that does not follow at all.
            assert!(read <= after, "coarse {read} ahead of precise {after}");
            assert!(
                read + 1_000 >= before,
                "coarse {read} far behind precise {before}"
            );
        }
    }

    #[test]
    fn the_system_clock_never_runs_backwards() {
        let clock = SystemClock::default();
        let mut last = clock.now_millis();
        let started = std::time::Instant::now();
        // Long enough for the coarse clock to tick several times.
        while started.elapsed() < Duration::from_millis(30) {
            let now = clock.now_millis();
            assert!(now >= last);
            last = now;
        }
        assert!(last > 0);
    }
}
