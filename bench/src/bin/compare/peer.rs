//! The interface every peer implements, and the harness that times it.
//!
//! A peer is split in two, so that the timed loop is generic (monomorphised, no dynamic call per
//! operation) while the catalog of rows can still hold different peers side by side:
//!
//! - [`Peer`]: a configured engine (idem with `Durability::Sync`, redb with `Durability::None`,
//!   ...). It opens a fresh [`Engine`] in an empty directory.
//! - [`Engine`]: an open instance. It answers the dedup question for one key
//!   ([`Engine::check_or_insert`], from several threads at once) or for a batch
//!   ([`Engine::check_or_insert_batch`], one call or commit where the engine has one), then is
//!   flushed and closed.
//!
//! [`measure`] is the one place that opens, times, flushes, reads RSS/CPU/disk and closes, for
//! every peer; [`Runnable`] erases the peer's type for the catalog.

use std::path::Path;
use std::time::Instant;

use idem_bench::{
    cpu_seconds_of, dir_apparent_bytes, dir_disk_bytes, process_cpu_seconds, rss_bytes,
    rss_bytes_of, Histogram, Key,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A configured engine under test.
pub trait Peer: Send + Sync {
    /// The open instance.
    type Engine: Engine;

    /// Whether the engine keeps files (the "disk B/key" column); memory-only peers say no.
    fn has_disk(&self) -> bool {
        true
    }

    /// Opens a fresh instance in `dir`, which exists and is empty.
    fn open(&self, dir: &Path) -> Result<Self::Engine, BoxError>;

    /// Opens the peer for a run of `keys` keys: a peer told to size itself for its run (the
    /// "presized" rows) does so; the others open as [`Peer::open`].
    fn open_for(&self, dir: &Path, keys: usize) -> Result<Self::Engine, BoxError> {
        let _ = keys;
        self.open(dir)
    }
}

/// An open instance of a peer.
pub trait Engine: Sync + Sized {
    /// If `key` is new, records it with `idem_bench::value_for(key)` and returns `false`; if it
    /// is already there, returns `true`. Called from every thread of a run at once.
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError>;

    /// [`Engine::check_or_insert`] for every key of `keys`, in one call (one commit, one
    /// pipeline) where the engine has such a call; returns how many were already there.
    fn check_or_insert_batch(&mut self, keys: &[Key]) -> Result<u64, BoxError> {
        let mut duplicates = 0;
        for key in keys {
            duplicates += u64::from(self.check_or_insert(key)?);
        }
        Ok(duplicates)
    }

    /// After the timed run and before RSS is read: makes the run's writes durable (or settles
    /// the engine's background work), as a real user would before shutting down.
    fn flush(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// A server process that holds the data: its RSS is measured instead of this process's, and
    /// its CPU time is added to this process's.
    fn server_pid(&self) -> Option<u32> {
        None
    }

    /// Closes the instance; returns what the notes should say about the run (configuration,
    /// engine statistics). `dir` is the data directory.
    fn close(self, dir: &Path) -> Result<String, BoxError>;
}

/// How a row calls its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Threads, each given a contiguous part of the keys (single-key calls only).
    pub threads: usize,
    /// Keys per call; 1 = [`Engine::check_or_insert`], more = [`Engine::check_or_insert_batch`]
    /// from one thread.
    pub batch: usize,
}

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    pub ops: u64,
    pub secs: f64,
    pub latency: Histogram,
    /// Operations answered "already there".
    pub duplicates: u64,
    /// CPU seconds (user + system, all threads) from before opening to after closing, including
    /// a server's (`Engine::server_pid`).
    pub cpu_secs: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub disk_bytes: u64,
    pub disk_apparent_bytes: u64,
    /// Peers with no files (memory only) report no disk.
    pub has_disk: bool,
    pub note: String,
}

/// A peer with its type erased, for the catalog of rows.
pub trait Runnable: Send + Sync {
    /// Opens the peer in `dir`, runs `keys` through it in `shape`, closes it and measures.
    fn run(&self, dir: &Path, keys: &[Key], shape: Shape) -> Result<Measured, BoxError>;
}

impl<P: Peer> Runnable for P {
    fn run(&self, dir: &Path, keys: &[Key], shape: Shape) -> Result<Measured, BoxError> {
        measure(self, dir, keys, shape)
    }
}

/// Opens `peer` in `dir`, runs every key through it, flushes, reads RSS, closes, reads disk.
pub fn measure<P: Peer>(
    peer: &P,
    dir: &Path,
    keys: &[Key],
    shape: Shape,
) -> Result<Measured, BoxError> {
    assert!(
        shape.threads >= 1 && shape.batch >= 1,
        "a run needs a thread and a key per call"
    );
    assert!(
        shape.batch == 1 || shape.threads == 1,
        "batches are called from one thread"
    );
    let own_rss_before = rss();
    let cpu_before = process_cpu_seconds();
    let mut engine = peer.open_for(dir, keys.len())?;
    let server = engine.server_pid().map(|pid| pid.to_string());
    let rss_of = |server: &Option<String>| match server {
        Some(pid) => rss_bytes_of(pid).unwrap_or(0),
        None => rss(),
    };
    // A server's baseline is the server just started; ours is before the engine was opened.
    let rss_before = match &server {
        Some(_) => rss_of(&server),
        None => own_rss_before,
    };
    let server_cpu_before = server.as_deref().and_then(cpu_seconds_of).unwrap_or(0.0);
    let (secs, latency, duplicates) = if shape.batch == 1 {
        run_single_ops(keys, shape.threads, |key| engine.check_or_insert(key))?
    } else {
        run_batches(keys, shape.batch, |batch| {
            engine.check_or_insert_batch(batch)
        })?
    };
    engine.flush()?;
    let rss_after = rss_of(&server);
    let server_cpu_secs =
        server.as_deref().and_then(cpu_seconds_of).unwrap_or(0.0) - server_cpu_before;
    let note = engine.close(dir)?;
    let has_disk = peer.has_disk();
    let (disk_bytes, disk_apparent_bytes) = if has_disk {
        (dir_disk_bytes(dir), dir_apparent_bytes(dir))
    } else {
        (0, 0)
    };
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        cpu_secs: process_cpu_seconds() - cpu_before + server_cpu_secs,
        rss_before,
        rss_after,
        disk_bytes,
        disk_apparent_bytes,
        has_disk,
        note,
    })
}

fn rss() -> u64 {
    rss_bytes().unwrap_or(0)
}

/// Runs `op` on every key of `keys` split into `threads` contiguous parts, one thread each,
/// timing every operation. `op` returns whether the key was already there.
fn run_single_ops<F>(keys: &[Key], threads: usize, op: F) -> Result<(f64, Histogram, u64), BoxError>
where
    F: Fn(&Key) -> Result<bool, BoxError> + Sync,
{
    let per = keys.len().div_ceil(threads).max(1);
    let started = Instant::now();
    let parts: Vec<Result<(Histogram, u64), BoxError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(per)
            .map(|part| {
                let op = &op;
                scope.spawn(move || {
                    let mut hist = Histogram::default();
                    let mut dups = 0;
                    let mut last = Instant::now();
                    for key in part {
                        dups += u64::from(op(key)?);
                        let now = Instant::now();
                        hist.record_duration(now - last);
                        last = now;
                    }
                    Ok((hist, dups))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut hist = Histogram::default();
    let mut dups = 0;
    for part in parts {
        let (h, d) = part?;
        hist.merge(&h);
        dups += d;
    }
    Ok((secs, hist, dups))
}

/// Runs `op` on every batch of `batch` keys, timing every batch. `op` returns how many keys of
/// the batch were already there.
fn run_batches<F>(keys: &[Key], batch: usize, mut op: F) -> Result<(f64, Histogram, u64), BoxError>
where
    F: FnMut(&[Key]) -> Result<u64, BoxError>,
{
    let mut hist = Histogram::default();
    let mut dups = 0;
    let started = Instant::now();
    let mut last = started;
    for part in keys.chunks(batch) {
        dups += op(part)?;
        let now = Instant::now();
        hist.record_duration(now - last);
        last = now;
    }
    Ok((started.elapsed().as_secs_f64(), hist, dups))
}
