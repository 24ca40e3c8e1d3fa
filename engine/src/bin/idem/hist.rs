//! A fixed-size latency histogram (log-linear buckets, at most 1/64 relative error), so that
//! recording a million latencies costs no memory growth (which would blur `idem bench`'s RSS
//! per key) and percentiles are one walk over 3,776 counters.

/// Sub-buckets per power of two: 2^6 = 64, so a bucket spans at most 1/64 of its value.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below 64 have a bucket each; then 58 powers of two (2^6 ..= 2^63) of 64 buckets.
const BUCKETS: usize = SUB * (64 - SUB_BITS as usize + 1);

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < SUB as u64 {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    let sub = ((value >> shift) as usize) - SUB;
    ((shift as usize + 1) << SUB_BITS) + sub
}

/// The largest value that falls in `bucket`.
fn bucket_high(bucket: usize) -> u64 {
    let group = bucket >> SUB_BITS;
    let sub = (bucket & (SUB - 1)) as u64;
    if group == 0 {
        return sub;
    }
    let shift = (group - 1) as u32;
    let low = (SUB as u64 + sub) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0..=1): the smallest recorded value such that at least
    /// `q * count` values are at or below it, up to the bucket's 1/64 width. 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(bucket).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for value in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = bucket_of(value);
            assert!(bucket < BUCKETS);
            assert!(bucket >= last, "bucket order at {value}");
            last = bucket;
            let high = bucket_high(bucket);
            assert!(high >= value, "{value} above its bucket's top {high}");
            assert!(
                (high - value) as f64 <= value as f64 / 64.0 + 1.0,
                "{value}: {high}"
            );
        }
        for value in 0..64 {
            assert_eq!(
                bucket_high(bucket_of(value)),
                value,
                "small values are exact"
            );
        }
    }

    #[test]
    fn quantiles_of_a_uniform_run() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 10_000);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 / 64.0;
        assert!(close(h.quantile(0.5), 5_000_000), "{}", h.quantile(0.5));
        assert!(close(h.quantile(0.99), 9_900_000), "{}", h.quantile(0.99));
        assert!(close(h.quantile(0.999), 9_990_000), "{}", h.quantile(0.999));
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert!(close(h.quantile(0.0), 1000), "{}", h.quantile(0.0));
        assert!((h.mean() - 5_000_500.0).abs() < 1.0);
    }

    #[test]
    fn merge_and_empty() {
        let empty = Histogram::default();
        assert_eq!(empty.quantile(0.99), 0);
        assert_eq!(empty.mean(), 0.0);
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(20);
        b.record(30);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(0.5), 20);
        assert_eq!(a.max(), 30);
        a.merge(&empty);
        assert_eq!(a.quantile(0.0), 10);
    }
}
