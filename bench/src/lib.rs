//! Benchmarks and peer comparisons for idem: the shared workload, a latency histogram and the
//! process/directory measurements used by the Criterion benches (`benches/store.rs`) and by the
//! peer comparison binary (`src/bin/compare/`).
//!
//! The workload is the one idem exists for: a consumer deduplicating messages from many
//! producers. A key is 16 bytes, `source id (u64 BE) ++ sequence number (u64 BE)`; a value is the
//! 16-byte "result" recorded for it. A fixed share of the operations re-send a recent key (a
//! producer retrying), everything else is a new key. All of it comes from a seeded RNG, so two
//! runs (and two peers) see exactly the same operations.

use std::path::Path;
use std::time::Duration;

/// The RNG seed of every workload in this crate (benches and `compare`).
pub const SEED: u64 = 0x1DE7_5EED_0000_2026;
/// Number of producers (source ids) the keys are spread over.
pub const SOURCES: u64 = 64;
/// Share of operations that re-send an earlier key, in units of 1/10,000 (100 = 1%).
pub const DUP_PER_10K: u64 = 100;
/// A re-sent key is drawn uniformly from the last this-many new keys (the retry window).
pub const RETRY_WINDOW: usize = 10_000;
/// The TTL of every entry: one hour, longer than any run, so no entry expires during one.
pub const TTL: Duration = Duration::from_secs(3600);
/// Bytes of a key.
pub const KEY_BYTES: usize = 16;
/// Bytes of a value.
pub const VALUE_BYTES: usize = 16;
/// Log bytes between delta checkpoints where a benchmark turns them on (they are off by
/// default): the interval `Config::checkpoint_delta_every_bytes` documents its measurements at.
pub const DELTA_EVERY_BYTES: u64 = 8 << 20;

pub mod restart;

/// A 16-byte key: source id and sequence number, both big-endian.
pub type Key = [u8; KEY_BYTES];
/// A 16-byte value.
pub type Val = [u8; VALUE_BYTES];

/// SplitMix64: tiny, fast, seedable, and good enough for workload generation.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// A number in `0..bound` (`bound > 0`; the tiny modulo bias does not matter here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

/// The SplitMix64 finaliser: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of message `seq` from producer `source`.
pub fn make_key(source: u64, seq: u64) -> Key {
    let mut key = [0u8; KEY_BYTES];
    key[..8].copy_from_slice(&source.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The result recorded for `key`: a pure function of it, so a re-sent message carries the same
/// result as the first delivery.
pub fn value_for(key: &Key) -> Val {
    let source = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
    let a = mix64(source.rotate_left(32) ^ seq);
    let b = mix64(a ^ 0x5EED);
    let mut value = [0u8; VALUE_BYTES];
    value[..8].copy_from_slice(&a.to_le_bytes());
    value[8..].copy_from_slice(&b.to_le_bytes());
    value
}

/// Generates the dedup workload: new keys from [`SOURCES`] producers, with [`DUP_PER_10K`] of
/// the operations re-sending a key from the last [`RETRY_WINDOW`] new ones.
#[derive(Debug, Clone)]
pub struct Workload {
    rng: SplitMix64,
    next_seq: Vec<u64>,
    recent: Vec<Key>,
    recent_at: usize,
    /// Operations generated so far that re-send an earlier key.
    pub duplicates: u64,
    /// Operations generated so far that send a new key.
    pub new_keys: u64,
}

impl Workload {
    /// A workload seeded with `seed` (use [`SEED`] for the published numbers).
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: SplitMix64::new(seed),
            next_seq: vec![0; SOURCES as usize],
            recent: Vec::with_capacity(RETRY_WINDOW),
            recent_at: 0,
            duplicates: 0,
            new_keys: 0,
        }
    }

    /// A new key that this workload never produced before (no re-send).
    pub fn fresh_key(&mut self) -> Key {
        let source = self.rng.below(SOURCES);
        let seq = self.next_seq[source as usize];
        self.next_seq[source as usize] += 1;
        let key = make_key(source, seq);
        if self.recent.len() < RETRY_WINDOW {
            self.recent.push(key);
        } else {
            self.recent[self.recent_at] = key;
            self.recent_at = (self.recent_at + 1) % RETRY_WINDOW;
        }
        self.new_keys += 1;
        key
    }

    /// The next operation's key: a re-send with probability [`DUP_PER_10K`]/10,000, else new.
    pub fn next_key(&mut self) -> Key {
        let roll = self.rng.below(10_000);
        if roll < DUP_PER_10K && !self.recent.is_empty() {
            self.duplicates += 1;
            let pick = self.rng.below(self.recent.len() as u64) as usize;
            self.recent[pick]
        } else {
            self.fresh_key()
        }
    }

    /// The keys of `n` operations.
    pub fn keys(&mut self, n: usize) -> Vec<Key> {
        (0..n).map(|_| self.next_key()).collect()
    }
}

/// A log-linear latency histogram in nanoseconds (64 sub-buckets per power of two: values are
/// kept to within 1.6%). Fixed size, no allocation while recording.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; HIST_BUCKETS]>,
    total: u64,
    max: u64,
    sum: u128,
}

const SUB_BITS: u32 = 6;
const HIST_BUCKETS: usize = ((64 - SUB_BITS as usize) << SUB_BITS) + 64;

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; HIST_BUCKETS]),
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < (1 << (SUB_BITS + 1)) {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - SUB_BITS;
    (((shift as usize) << SUB_BITS) + ((v >> shift) as usize & ((1 << SUB_BITS) - 1))) + 64
}

/// The largest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    if b < (1 << (SUB_BITS + 1)) {
        return b as u64;
    }
    let shift = ((b - 64) >> SUB_BITS) as u32;
    let sub = ((b - 64) & ((1 << SUB_BITS) - 1)) as u64;
    let low = (64 + sub) << shift;
    low + ((1u64 << shift) - 1)
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, nanos: u64) {
        self.counts[bucket_of(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
        self.sum += u128::from(nanos);
    }

    /// Records a duration.
    pub fn record_duration(&mut self, d: Duration) {
        self.record(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), as the upper edge of its bucket; 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(b).min(self.max);
            }
        }
        self.max
    }

    /// The sum of all values recorded, in nanoseconds.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// About how much of the recorded time was spent in values of at least `threshold` (the
    /// bucket upper edges of those values, capped at the maximum): where the stalls went.
    pub fn sum_at_least(&self, threshold: u64) -> u128 {
        let first = bucket_of(threshold);
        self.counts[first..]
            .iter()
            .enumerate()
            .map(|(i, &c)| u128::from(c) * u128::from(bucket_high(first + i).min(self.max)))
            .sum()
    }

    /// The largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Whether this process runs under valgrind, whose tools do not support the vDSO call of the
/// store's default (coarse) clock: a bench run for instruction counts must then give the store
/// `idem::SystemClock::precise()`.
pub fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD").is_some_and(|p| p.to_string_lossy().contains("valgrind"))
}

/// A process's resident set size in bytes (`VmRSS` of `/proc/<pid>/status`); `None` if it
/// cannot be read (not Linux, or the process is gone).
pub fn rss_bytes_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// This process's resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    rss_bytes_of("self")
}

/// CPU time (user + system, all threads) a process has used so far, in seconds, from
/// `/proc/<pid>/stat` (resolution: one clock tick, 10 ms); `None` if it cannot be read.
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters here.
    Some((utime + stime) / 100.0)
}

/// This process's CPU time in seconds (see [`cpu_seconds_of`]).
pub fn cpu_seconds() -> Option<f64> {
    cpu_seconds_of("self")
}

/// Bytes of disk a directory tree occupies: the blocks allocated to its files (like `du`), so
/// sparse or preallocated-but-unused space is not counted.
pub fn dir_disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += dir_disk_bytes(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// Bytes of the files of a directory tree by their length (like `du --apparent-size`).
pub fn dir_apparent_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += dir_apparent_bytes(&entry.path());
        } else {
            total += meta.len();
        }
    }
    total
}

/// CPU time (user + system, all threads) this process has used so far, from `getrusage(2)`
/// (microsecond resolution, unlike the 10 ms ticks of `/proc/self/stat`).
#[allow(unsafe_code, reason = "getrusage(2) has no safe wrapper in std")]
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: `usage` is a plain C struct for which all-zero bytes are a valid value, and
    // getrusage writes only into the struct it is given a pointer to.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_deterministic_with_one_percent_resends() {
        let a = Workload::new(SEED).keys(200_000);
        let mut w = Workload::new(SEED);
        let b = w.keys(200_000);
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len() as u64, w.new_keys);
        assert_eq!(w.new_keys + w.duplicates, 200_000);
        let share = w.duplicates as f64 / 200_000.0;
        assert!((0.008..0.012).contains(&share), "{share}");
    }

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000.0), (0.99, 99_000.0), (1.0, 100_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        for v in [0u64, 1, 127, 128, 255, 256, 1 << 40, u64::MAX] {
            let b = bucket_of(v);
            assert!(b < HIST_BUCKETS);
            assert!(bucket_high(b) >= v, "{v}");
        }
    }
}
