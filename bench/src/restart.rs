//! The restart measurements the `restart` binary and `compare` share: a store left as a kill
//! just before its next checkpoint was due leaves it (the worst reopen), and a timed reopen.
//!
//! Keys are `i` (u64 LE) followed by 8 zero bytes, values 16 bytes, TTL one day: records of
//! [`RECORD_BYTES`] each, which the checkpoint schedule below is laid out in.

use std::path::Path;
use std::time::{Duration, Instant};

use idem::{Config, Durability, Store};

/// Bytes of one record of this module's stores (16-byte key and value, formats 3 and 4).
pub const RECORD_BYTES: u64 = 47;

/// The configuration a reopen is timed with: `Never`, no background thread, no periodic
/// checkpoint (so the files stay as they were and the next reopen meets the same worst case).
/// `IDEM_REPLAY_THREADS=1` replays with one thread (by default long segments are replayed by
/// two), for an A/B of the shared replay; `IDEM_MAP_SEGMENTS=0` reads the segments instead of
/// mapping them (`Config::map_segments_at_open(false)`).
pub fn reopen_config() -> Config {
    let mut config = Config::default()
        .durability(Durability::Never)
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
        .map_segments_at_open(std::env::var("IDEM_MAP_SEGMENTS").as_deref() != Ok("0"));
    if crate::under_valgrind() {
        // For instruction counts of one reopen, e.g.
        // `valgrind --tool=callgrind target/release/restart open DIR`.
        config = config.clock(idem::SystemClock::precise());
    }
    if std::env::var("IDEM_REPLAY_THREADS").as_deref() == Ok("1") {
        config.parallel_replay_min_bytes_for_testing(usize::MAX)
    } else {
        config
    }
}

/// The key of record `i`.
pub fn key_of(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&i.to_le_bytes());
    key
}

/// The TTL of every key: longer than any run.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// Inserts the keys `keys` (see [`key_of`]), one call each; returns the time the calls took.
pub fn insert_keys(store: &Store, keys: std::ops::Range<u64>) -> Duration {
    let started = Instant::now();
    for i in keys {
        store
            .check_or_insert(&key_of(i), TTL, &[1u8; 16])
            .expect("insert");
    }
    started.elapsed()
}

/// What [`write_worst`] left.
#[derive(Debug, Clone, Copy)]
pub struct Worst {
    /// Records written after the last checkpoint: what a reopen replays.
    pub records_since_checkpoint: u64,
    /// The median time `maintain` took to write a periodic checkpoint.
    pub median_checkpoint_write: Duration,
}

/// Writes into `dir` (which must not exist) the worst case's files: `live` keys written with
/// the checkpoint schedule of `deltas_every_bytes` (`None`: the default configuration, a full
/// checkpoint every [`Config::DEFAULT_CHECKPOINT_EVERY_BYTES`] and no deltas; `Some(b)`: a delta
/// every `b` bytes as well), `maintain` run every few thousand inserts and at every record near
/// a due checkpoint; the last interval's records written without the checkpoint due at their
/// end; the store dropped without `close` (no checkpoint; the log flushed, as a kill after the
/// writer's last write leaves it).
pub fn write_worst(dir: &Path, live: u64, deltas_every_bytes: Option<u64>) -> Worst {
    let interval_bytes = deltas_every_bytes.unwrap_or(Config::DEFAULT_CHECKPOINT_EVERY_BYTES);
    let every_records: u64 = interval_bytes / RECORD_BYTES;
    let since_checkpoint = every_records.min(live);
    // The schedule's phase: a full checkpoint at `first`, so that one falls due (and is written)
    // `since_checkpoint` records before the end, and the next would be due at the end.
    let first = (live - since_checkpoint) % every_records;
    let mut config = Config::default()
        .durability(Durability::Never)
        .background_maintenance(false);
    if let Some(bytes) = deltas_every_bytes {
        config = config.checkpoint_delta_every_bytes(bytes);
    }
    let store = Store::open_with(dir, config).expect("open");
    let mut last = first;
    let mut writes = Vec::new();
    for i in 0..live {
        if i == first && i > 0 {
            store.checkpoint().expect("checkpoint");
        }
        // `maintain` every few thousand records, and at every record near a due checkpoint,
        // so that each is written when due (not a few thousand records late).
        let due = last + every_records;
        let near = i + 64 >= due && i <= due + 64;
        // Up to a little after the last one due (the writes' sizes vary a little).
        let end = live - since_checkpoint + 1024;
        if i > first && i <= end && (i % 4096 == 0 || near) {
            let started = Instant::now();
            if store.maintain().expect("maintain").checkpoint_written {
                writes.push(started.elapsed());
                last = i;
                if std::env::var("IDEM_RESTART_DEBUG").is_ok() {
                    eprintln!("checkpoint at record {i}: {:?}", writes.last());
                }
            }
        }
        store
            .check_or_insert(&key_of(i), TTL, &[1u8; 16])
            .expect("insert");
    }
    store.flush().expect("flush");
    drop(store);
    writes.sort_unstable();
    let median_checkpoint_write = writes.get(writes.len() / 2).copied().unwrap_or_default();
    let records_since_checkpoint = if last == first && first == 0 {
        live
    } else {
        live - last
    };
    Worst {
        records_since_checkpoint,
        median_checkpoint_write,
    }
}

/// One timed reopen of `dir` with [`reopen_config`], dropped without `close` (the files stay
/// as they were).
#[derive(Debug, Clone)]
pub struct Reopen {
    pub took: Duration,
    pub checkpoint_entries_loaded: u64,
    pub records_replayed: u64,
    pub live_keys: u64,
    /// Why the checkpoint was not used, if it was not (the case is then not the one asked for).
    pub checkpoint_ignored: Option<String>,
}

/// Reopens `dir` and times `Store::open`.
pub fn timed_reopen(dir: &Path) -> Reopen {
    let started = Instant::now();
    let store = Store::open_with(dir, reopen_config()).expect("reopen");
    let took = started.elapsed();
    let report = store.recovery_report();
    let reopen = Reopen {
        took,
        checkpoint_entries_loaded: report.checkpoint_entries_loaded,
        records_replayed: report.records_replayed,
        live_keys: store.stats().live_keys,
        checkpoint_ignored: report.checkpoint_ignored.clone(),
    };
    drop(store);
    reopen
}
