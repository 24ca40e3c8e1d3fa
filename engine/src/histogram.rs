//! Histograms for [`crate::Store::metrics`]: how long each fsync of the log took and how many
//! bytes it made durable (the group-commit size); with feature `metrics`, how long calls took.
//!
//! The writer thread records ([`CommitHistograms::written`] after each write,
//! [`CommitHistograms::synced`] after each fsync); snapshots read concurrently. Buckets are powers
//! of two of relaxed atomic counters: recording costs a few uncontended adds on the writer
//! thread, which just paid an fsync, and a snapshot is a copy of 64 counters. (A crate such as
//! `hdrhistogram` needs `&mut` to record, so a lock shared with every snapshot, and its type
//! would leak into the public snapshot; 2x resolution is what an operator needs to see fsyncs
//! of 100 µs against 10 ms and group commits of one record against thousands.)
//!
//! Call latencies (feature `metrics` only: timing every call costs two clock reads, which a
//! default build does not pay) are recorded by the calling threads into the same kind of
//! buckets, shared by all of them.
//!
//! Invariants: every byte written is counted in exactly one fsync's group, the first fsync that
//! follows its write (the seal fsync of a segment roll included); bytes written and never
//! fsynced (`Never` mode between flushes) are in no group. A snapshot is not atomic across
//! counters: `count` may lag the buckets by the samples recorded meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 64;

/// A snapshot of a distribution of `u64` samples in power-of-two buckets: bucket 0 holds 0 and
/// 1, bucket `i` (1 ..= 63) the values in `2^i ..= 2^(i+1) - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    count: u64,
    sum: u64,
    buckets: [u64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            count: 0,
            sum: 0,
            buckets: [0; BUCKETS],
        }
    }
}

impl Histogram {
    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the samples.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The mean sample, 0 without samples.
    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }

    /// An upper bound of the `q`-quantile (`q` in 0.0 ..= 1.0; 0.5 the median, 0.99 the 99th
    /// percentile): the top of the bucket holding it, at most twice the true value. 0 without
    /// samples.
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_top(i);
            }
        }
        u64::MAX
    }

    /// The non-empty buckets, as (largest value the bucket holds, samples in it), in order.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (bucket_top(i), n))
    }
}

fn bucket_top(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        (1u64 << (i + 1)) - 1
    }
}

fn bucket_of(value: u64) -> usize {
    (63 - value.max(1).leading_zeros()) as usize
}

/// A histogram recorded into and read by any thread (see the module doc).
#[derive(Debug)]
pub(crate) struct AtomicHistogram {
    count: AtomicU64,
    sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram {
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl AtomicHistogram {
    pub(crate) fn record(&self, value: u64) {
        self.buckets[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }
}

/// Latencies of the timed calls, in nanoseconds (recorded with feature `metrics` only).
#[derive(Debug, Default)]
pub(crate) struct CallHistograms {
    /// `check_or_insert` in its single-key forms and `decide`.
    pub(crate) check_or_insert: AtomicHistogram,
    /// `claim` and `claim_fingerprinted`.
    pub(crate) claim: AtomicHistogram,
}

/// The log writer's commit histograms (kept in the log's counters).
#[derive(Debug, Default)]
pub(crate) struct CommitHistograms {
    /// Bytes written since the last fsync: the next fsync's group.
    unsynced: AtomicU64,
    fsync_micros: AtomicHistogram,
    group_bytes: AtomicHistogram,
    /// The `store` label of the facade's series (feature `metrics`), made at the first fsync.
    #[cfg(feature = "metrics")]
    label: std::sync::OnceLock<metrics::SharedString>,
}

impl CommitHistograms {
    /// The writer wrote `bytes` to a segment file.
    pub(crate) fn written(&self, bytes: usize) {
        self.unsynced.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The writer's fsync of the log in `dir` took `took`; it covered every byte written since
    /// the previous one.
    pub(crate) fn synced(&self, took: Duration, dir: &std::path::Path) {
        let group = self.unsynced.swap(0, Ordering::Relaxed);
        self.fsync_micros.record(took.as_micros() as u64);
        self.group_bytes.record(group);
        #[cfg(feature = "metrics")]
        {
            let store = self
                .label
                .get_or_init(|| dir.display().to_string().into())
                .clone();
            metrics::histogram!("idem_fsync_seconds", "store" => store.clone())
                .record(took.as_secs_f64());
            metrics::histogram!("idem_commit_bytes", "store" => store).record(group as f64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = dir;
    }

    /// Fsync latencies in microseconds, and bytes per fsync.
    pub(crate) fn snapshot(&self) -> (Histogram, Histogram) {
        (self.fsync_micros.snapshot(), self.group_bytes.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_and_quantiles_bound_the_value() {
        let histogram = AtomicHistogram::default();
        for value in [0, 1, 2, 3, 4, 1000, 1000, 1000, 1 << 63] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 9);
        assert_eq!(snapshot.sum(), 3010 + (1 << 63));
        assert_eq!(snapshot.mean(), (3010 + (1 << 63)) / 9);
        let buckets: Vec<(u64, u64)> = snapshot.buckets().collect();
        assert_eq!(
            buckets,
            vec![(1, 2), (3, 2), (7, 1), (1023, 3), (u64::MAX, 1)]
        );
        assert_eq!(snapshot.quantile(0.0), 1);
        assert_eq!(snapshot.quantile(0.5), 7);
        assert_eq!(snapshot.quantile(0.8), 1023);
        assert_eq!(snapshot.quantile(1.0), u64::MAX);
        assert_eq!(Histogram::default().quantile(0.5), 0);
        assert_eq!(Histogram::default().mean(), 0);
    }

    #[test]
    fn each_fsync_takes_the_bytes_written_since_the_previous_one() {
        let commits = CommitHistograms::default();
        let dir = std::path::Path::new("/store");
        commits.written(100);
        commits.written(28);
        commits.synced(Duration::from_micros(150), dir);
        commits.synced(Duration::from_millis(3), dir);
        let (latency, bytes) = commits.snapshot();
        assert_eq!(latency.buckets().collect::<Vec<_>>(), [(255, 1), (4095, 1)]);
        assert_eq!(bytes.buckets().collect::<Vec<_>>(), [(1, 1), (255, 1)]);
        assert_eq!((bytes.count(), bytes.sum()), (2, 128));
    }
}
