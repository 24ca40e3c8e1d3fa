//! How a store is opened: durability mode, clock, sizes.
//!
//! A `Config` is a plain value built with chained setters; `Store::open_with` checks it.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::io::{FileSystem, Storage};
use crate::refresh::Refresh;

/// When an acknowledged record is on stable storage, and so what a crash can lose.
///
/// | mode | a call returns | a crash (kill -9, power loss) can lose |
/// |---|---|---|
/// | `Sync` (default) | after its record is fsynced (shared by concurrent callers: group commit) | nothing acknowledged |
/// | `Periodic(d)` | at once; a background fsync runs at least every `d` | acknowledged records of about the last `d` (power loss); after kill -9 of the process only the last few milliseconds that were still in idem's buffer |
/// | `Never` | at once; idem writes to the OS in the background, fsyncs only on `flush`, segment roll and close | power loss: everything since the last `flush`; kill -9: the last few milliseconds still in idem's buffer |
///
/// A lost dedup record does not lose a message: it lets one duplicate slip through once (the
/// retried message is seen as new). Choose `Sync` when a duplicate costs money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every call returns only after its record is on stable storage. In this mode idem also never
    /// answers `Duplicate` for a record that is not yet durable: it waits for that record's commit.
    #[default]
    Sync,
    /// Calls return at once; the log is fsynced at least every given interval.
    Periodic(Duration),
    /// Calls return at once; fsync happens only on [`crate::Store::flush`], segment roll and close.
    Never,
}

/// Options for [`crate::Store::open_with`].
///
/// ```
/// use std::time::Duration;
/// let config = idem::Config::default()
///     .durability(idem::Durability::Periodic(Duration::from_millis(10)))
///     .clock(idem::ManualClock::new());
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) durability: Durability,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) segment_size_bytes: u32,
    pub(crate) shard_count: usize,
    pub(crate) hash_mask_for_testing: u64,
    pub(crate) write_buffer_bytes: usize,
    pub(crate) expiry_tick: Duration,
    pub(crate) compaction_live_ratio: f64,
    pub(crate) checkpoint_every_bytes: u64,
    pub(crate) checkpoint_delta_every_bytes: u64,
    pub(crate) background_maintenance: bool,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) late_duplicate_grace: Duration,
    pub(crate) late_duplicate_capacity: usize,
    pub(crate) preallocate_segments: bool,
    pub(crate) map_segments_at_open: bool,
    pub(crate) refresh: Refresh,
    pub(crate) parallel_replay_min_bytes: usize,
    pub(crate) rotate_append_lanes: bool,
    pub(crate) expected_keys: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            durability: Durability::Sync,
            clock: Arc::new(SystemClock::default()),
            segment_size_bytes: 64 << 20,
            shard_count: 256,
            hash_mask_for_testing: u64::MAX,
            write_buffer_bytes: 1 << 20,
            expiry_tick: Duration::from_secs(1),
            compaction_live_ratio: 0.5,
            checkpoint_every_bytes: Self::DEFAULT_CHECKPOINT_EVERY_BYTES,
            checkpoint_delta_every_bytes: 0,
            background_maintenance: true,
            storage: Arc::new(FileSystem),
            late_duplicate_grace: Duration::ZERO,
            late_duplicate_capacity: 1 << 18,
            expected_keys: 0,
            preallocate_segments: true,
            map_segments_at_open: true,
            refresh: Refresh::Keep,
            parallel_replay_min_bytes: crate::recovery::PARALLEL_REPLAY_MIN_BYTES,
            rotate_append_lanes: false,
        }
    }
}

impl Config {
    /// The smallest segment size accepted: it must hold the largest record.
    pub const MIN_SEGMENT_SIZE_BYTES: u32 = 1 << 20;

    /// Sets the durability mode (default [`Durability::Sync`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the clock that decides expiry (default: the system clock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the size at which the log rolls to a new segment file (default 64 MiB, at least
    /// [`Config::MIN_SEGMENT_SIZE_BYTES`], at most 4 GiB - 1).
    pub fn segment_size_bytes(mut self, bytes: u32) -> Self {
        self.segment_size_bytes = bytes.max(Self::MIN_SEGMENT_SIZE_BYTES);
        self
    }

    /// The smallest segment size [`Config::segment_size_bytes_for_testing`] accepts.
    #[doc(hidden)]
    pub const MIN_TEST_SEGMENT_SIZE_BYTES: u32 = 4096;

    /// Sets a segment size below [`Config::MIN_SEGMENT_SIZE_BYTES`] (at least 4 KiB).
    ///
    /// For tests, fuzzing and simulation only: tiny segments make the log roll, seal, compact
    /// and delete segments after a few dozen records, so reclamation meets every other operation
    /// and every crash point. A record larger than the segment gets a segment of its own. Never
    /// use it in production: every roll costs an fsync and a file.
    #[doc(hidden)]
    pub fn segment_size_bytes_for_testing(mut self, bytes: u32) -> Self {
        self.segment_size_bytes = bytes.max(Self::MIN_TEST_SEGMENT_SIZE_BYTES);
        self
    }

    /// Sets the number of index shards (rounded up to a power of two, 1 to 65536; default 256).
    /// More shards mean less lock contention and a finer resize granularity. A shard's table
    /// spreads its keys over at most 2^24 slots (about 12 M keys): stores beyond 12 M keys per
    /// shard want more shards.
    pub fn shard_count(mut self, shards: usize) -> Self {
        self.shard_count = shards.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// The most live keys the store is expected to hold (default 0: no expectation). Each index
    /// shard's table is laid out at open for its share of them, with room for the unevenness
    /// of hashing (four standard deviations), and never shrinks below that: no call waits for a
    /// table to double on the way to that many keys, and a reopen replays into tables of their
    /// final size. Without it a table starts small and doubles as keys arrive; the call that
    /// crosses a shard's load limit rebuilds that shard's table under its lock (at 10 M keys
    /// with 256 shards, about 40 thousand entries at a time).
    ///
    /// The cost is memory held from the start: about 12 bytes per slot, at 1.3 to 2.7 slots per
    /// expected key (tables are powers of two, at most three quarters full), which the pages of
    /// a table take as soon as keys land on them. Clamped to 2^30 keys.
    ///
    /// ```
    /// let config = idem::Config::default().expected_keys(10_000_000);
    /// # let _ = config;
    /// ```
    pub fn expected_keys(mut self, keys: u64) -> Self {
        self.expected_keys = keys.min(Self::MAX_EXPECTED_KEYS);
        self
    }

    /// The largest [`Config::expected_keys`].
    pub const MAX_EXPECTED_KEYS: u64 = 1 << 30;

    /// How many bytes the write buffer gathers before the background writer hands them to the OS
    /// in the non-`Sync` modes (default 1 MiB).
    pub fn write_buffer_bytes(mut self, bytes: usize) -> Self {
        self.write_buffer_bytes = bytes.max(4096);
        self
    }

    /// The expiry wheel's tick (default 1 s, clamped to 100 ms ..= 60 s): an expired entry leaves
    /// the index within one tick of its deadline. (Lookups never serve an expired entry, whatever
    /// the wheel has done yet; the tick only bounds how long its memory is held.)
    pub fn expiry_tick(mut self, tick: Duration) -> Self {
        self.expiry_tick = tick.clamp(Duration::from_millis(100), Duration::from_secs(60));
        self
    }

    /// A sealed segment whose share of live records falls below `ratio` is compacted: its live
    /// records are copied forward and the file deleted (default 0.5; 0 turns compaction off).
    /// Segments whose records have all expired are deleted whole whatever this says.
    pub fn compaction_live_ratio(mut self, ratio: f64) -> Self {
        self.compaction_live_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// The default of [`Config::checkpoint_every_bytes`]: 128 MiB.
    pub const DEFAULT_CHECKPOINT_EVERY_BYTES: u64 = 128 << 20;

    /// Writes an index checkpoint after this many bytes were appended to the log since the last
    /// one (default 128 MiB; 0 turns periodic checkpoints off). A checkpoint is also written on
    /// `close`. Reopening reads the checkpoint and only the log written after it.
    ///
    /// The interval bounds the replay after a crash: a kill just before a checkpoint was due
    /// leaves up to this much log to replay on top of loading the checkpoint. Here, at 10 M
    /// live keys of 16 bytes (47-byte records), a checkpoint entry loads in about 15 ns and a
    /// replayed record in about 60 ns (two threads each): the worst reopen took 0.34-0.50 s at
    /// 128 MiB (2.9 M records replayed; medians of 0.37-0.49 s in seven `compare` runs) and
    /// 0.49-0.67 s at 256 MiB (5.7 M), depending on the machine's phase. Each full
    /// checkpoint encodes every live key on the maintenance thread (about 0.37 s at 10 M keys),
    /// so a shorter interval costs that thread's time more often: on this two-CPU machine, 20 M
    /// single-key inserts on one thread went 7 % slower at 128 MiB than at 256 MiB (three
    /// alternating pairs of `per_op plain 20000000 --maintenance`: 508-527 against 473-493 ns
    /// per operation), the maintenance thread taking CPU the caller would otherwise have had.
    /// Raise it where throughput matters more than the time to restart; delta checkpoints
    /// ([`Config::checkpoint_delta_every_bytes`]) shorten the replay without full checkpoints.
    pub fn checkpoint_every_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_every_bytes = bytes;
        self
    }

    /// Writes a delta checkpoint after this many bytes were appended to the log since the last
    /// checkpoint of either kind (default 0: off). A delta holds only the entries written since
    /// the previous checkpoint and the locations dropped since, so a reopen after a crash
    /// replays at most this much log, while full checkpoints (`checkpoint_every_bytes`) stay
    /// rare. Deltas are off when periodic checkpoints are.
    ///
    /// The trade: at 10 M live keys, deltas every 8 MiB leave a worst reopen after a kill (just
    /// before a checkpoint was due) of 0.31-0.38 s here, against 0.36-0.50 s with full
    /// checkpoints alone every 128 MiB (the default) and 0.49-0.67 s every 256 MiB (the same
    /// files reopened alternately, 2026-12-03); most of it is loading the full checkpoint, so a
    /// shorter interval does little better. While deltas are on, every shard lists each entry
    /// it puts (16 bytes until the next delta: about 2.8 MB per 8 MiB of log at 16-byte keys,
    /// up to twice that with the lists' spare capacity) and each location that leaves it, and
    /// the maintenance thread writes the deltas (it times its rounds for them from the rate the
    /// log grows, so a delta comes close to every interval however busy the store is). At 10 M keys, RSS
    /// per key is 23.2 B with a delta every 8 MiB and 22.2 B without (`rss_breakdown --deltas
    /// N`). On one thread, single-key throughput with and without deltas every 8 MiB differed
    /// by less than this machine's noise (14 alternating pairs of `per_op plain 4000000
    /// --maintenance [--deltas 8]`: ratios 0.77x-1.26x, median 1.03x). On two threads sharing
    /// a store on a two-CPU machine they cost about a sixth (`compare`, 2 M operations, four
    /// alternations: 0.72x-0.82x the in-memory ceiling with them, 0.90x-0.95x without): each
    /// put's entry in its shard's list is a cache line the two cores pass back and forth, and
    /// the maintenance thread is a third busy thread. Turn them on where the time to restart
    /// after a crash matters more than that.
    pub fn checkpoint_delta_every_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_delta_every_bytes = bytes;
        self
    }

    /// Whether a background thread runs expiry, reclamation, compaction and checkpoints
    /// (default true). Without it, call [`crate::Store::maintain`] yourself.
    pub fn background_maintenance(mut self, enabled: bool) -> Self {
        self.background_maintenance = enabled;
        self
    }

    /// Where the files live (default: the operating system's file system). Tests pass a
    /// [`crate::sim::SimStorage`] to inject faults and simulate crashes.
    pub fn storage(mut self, storage: impl Storage) -> Self {
        self.storage = Arc::new(storage);
        // A storage of the caller's (a simulated disk with counted faults, say) sees no write
        // from a background thread it did not ask for; `preallocate_segments(true)` after this
        // turns preparation back on.
        self.preallocate_segments = false;
        self
    }

    /// Sends each append through the next of the log's append lanes in turn, instead of the
    /// calling thread's own, and lets lanes reserve space ahead for single-key inserts in every
    /// durability mode (`Sync` too): one thread then drives the appends of several, chunks,
    /// padding and fences included (see the `log` module), which a single-threaded simulation
    /// would otherwise never reach. The answers must be the same; only disk use differs.
    #[doc(hidden)]
    pub fn rotate_append_lanes_for_testing(mut self, on: bool) -> Self {
        self.rotate_append_lanes = on;
        self
    }

    /// Replays with two threads every segment stretch of at least `bytes` (default 256 KiB;
    /// 0: every one). For tests and fuzzing, which would otherwise never see the shared replay
    /// on their small segments; the answer is the same either way, only the time differs.
    #[doc(hidden)]
    pub fn parallel_replay_min_bytes_for_testing(mut self, bytes: usize) -> Self {
        self.parallel_replay_min_bytes = bytes;
        self
    }

    /// Whether, in the fsync-bound modes (`Sync`, `Periodic`), the next segment file is written
    /// ahead in the background (its header and zeros up to the segment size) so that the
    /// writer's fsyncs overwrite allocated space instead of growing the file (default `true`,
    /// and `false` once [`Config::storage`] sets a storage of the caller's). An fsync of an
    /// appended block costs the file system a metadata commit too: on this project's ext4 test
    /// machine 0.43 ms against 0.25 ms for an overwrite. The cost: one segment of zeros written
    /// per segment of records, and up to one segment of disk held ahead. The newest segment's
    /// unused zeros are cut off when the store closes (and skipped by recovery after a crash,
    /// see `engine/FORMAT.md`). `Never` mode never prepares: it does not fsync per write.
    pub fn preallocate_segments(mut self, preallocate: bool) -> Self {
        self.preallocate_segments = preallocate;
        self
    }

    /// Whether recovery reads the segments it replays through read-only maps of the files
    /// (default: true), or copies them into a buffer with reads. Maps are faster (the replay
    /// reads the page cache in place; reopens of 10 M keys replaying 5.7 M records took
    /// 0.41-0.44 s mapped against 0.46-0.49 s read, page cache warm), but a read error of the
    /// device under a mapped page is a `SIGBUS`, which ends the process, where a read returns
    /// [`crate::Error::Io`] naming the file. On a device that reports read errors, open with
    /// `false` to get the error. (`idem`'s operator commands open with `false`.)
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open_with(dir.path(), idem::Config::default().map_segments_at_open(false))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_segments_at_open(mut self, map: bool) -> Self {
        self.map_segments_at_open = map;
        self
    }

    /// Remembers, for `grace` after their deadline, the keys whose entries expired (default:
    /// zero, off), so that an insert of such a key is reported as a late duplicate
    /// ([`crate::Decision::LateDuplicate`], [`crate::DecisionCounts::late_duplicates`]): its TTL was
    /// shorter than the real retry window. It only signals; the key is inserted as usual.
    ///
    /// The memory is a ring of Bloom filters per shard, 2 bytes per remembered key, bounded by
    /// [`Config::late_duplicate_capacity`]; it starts empty at open. A key never seen is
    /// flagged with a probability of about 0.24% per full filter in the window, less while they
    /// are partly full (see README "Observability"); a key may be flagged up to a third of
    /// `grace` after the grace ends.
    pub fn late_duplicate_grace(mut self, grace: Duration) -> Self {
        self.late_duplicate_grace = grace;
        self
    }

    /// How many keys expiring within a third of the grace period the late-duplicate memory
    /// holds, over the whole store (default 2^18). Each shard gets its share plus a quarter, at
    /// 2 bytes per key, in each of 4 filters sized up to a power of two: 4 MiB by default with
    /// 256 shards (counted in [`crate::Stats::index_bytes`]).
    /// Keys expiring beyond it are not remembered ([`crate::Metrics::late_memory_overflowed`]).
    pub fn late_duplicate_capacity(mut self, keys: usize) -> Self {
        self.late_duplicate_capacity = keys;
        self
    }

    /// What a duplicate does to its key's deadline (default [`Refresh::Keep`]: nothing). With
    /// [`Refresh::Sliding`] every key recorded by this store (by a check-or-insert in any form, or
    /// a claim's completion) is kept `ttl` past its latest duplicate, up to `cap` after it was
    /// recorded. The policy is recorded with each key: keys recorded before a reopen with
    /// another policy keep theirs. Per call: [`crate::Store::check_or_insert_refreshing`].
    pub fn refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = refresh;
        self
    }

    /// Keeps only the bits of `mask` of every key hash, so that distinct keys collide.
    ///
    /// For tests and fuzzing only: it proves that keys sharing a hash are kept apart. A mask of
    /// `0` makes every key hash alike. Never use it in production: lookups become linear scans.
    #[doc(hidden)]
    pub fn hash_mask_for_testing(mut self, mask: u64) -> Self {
        self.hash_mask_for_testing = mask;
        self
    }
}
