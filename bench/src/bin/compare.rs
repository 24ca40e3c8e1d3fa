//! `compare`: idem against its peers on one dedup workload.
//!
//! ```text
//! cargo run --release -p idem-bench --bin compare                 # full run, writes results/
//! cargo run --release -p idem-bench --bin compare -- --quick      # smoke test, writes results/tmp/
//! cargo run --release -p idem-bench --bin compare -- --ops 500000 --peers idem-never-1t,sled
//! cargo run --release -p idem-bench --bin compare -- --list
//! ```
//!
//! The workload (see `idem_bench::Workload`): 16-byte keys = source id ++ sequence number,
//! 16-byte results, 1% re-sent keys, TTL 1 h, seed `idem_bench::SEED`. Every peer answers the same
//! question per operation, "is this key new? if so record it with its result", and every peer
//! runs in its own child process of this binary (`compare --peer NAME`), so one peer's memory
//! does not pollute another's RSS. RSS is read from `/proc/self/status` (VmRSS) after the
//! workload is generated and before the engine is opened, and again after the run (after the
//! engine's flush, before close); disk is the bytes allocated to the data directory after close.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::ReadableTable as _;

use idem_bench::{
    cpu_seconds, cpu_seconds_of, dir_apparent_bytes, dir_disk_bytes, rss_bytes, rss_bytes_of,
    value_for, Histogram, Key, Workload, DUP_PER_10K, RETRY_WINDOW, SEED, SOURCES, TTL,
};

/// Operations per run by default (`--ops`).
const DEFAULT_OPS: usize = 2_000_000;
/// Operations of the `Sync` single-key run from many threads (`--sync-ops`): fsync-bound.
const DEFAULT_SYNC_OPS: usize = 50_000;
/// Keys of the idem RAM check (`--ram-keys`): the RAM target is stated at 10M live keys.
const DEFAULT_RAM_KEYS: usize = 10_000_000;
/// `--quick` sizes: a smoke test of every peer in well under a minute.
const QUICK_OPS: usize = 100_000;
const QUICK_SYNC_OPS: usize = 5_000;
const QUICK_RAM_KEYS: usize = 200_000;
/// Operations per commit (per pipeline for Redis) of the batched peers.
const BATCH: usize = 1000;
/// Threads of the `Sync` single-key group-commit run.
const SYNC_THREADS: usize = 64;
/// Shards of the in-memory HashMap ceiling.
const CEILING_SHARDS: usize = 64;

/// Which durability the peers are compared at (the "group" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Written to the OS (or an engine buffer) without an fsync per operation or batch.
    NoFsync,
    /// Durable when each batch of 1000 returns.
    DurableBatch,
    /// Durable when each single operation returns.
    DurableOp,
    /// Memory only: reference points, not durable at all.
    Memory,
}

impl Group {
    fn code(self) -> &'static str {
        match self {
            Group::NoFsync => "N",
            Group::DurableBatch => "B",
            Group::DurableOp => "S",
            Group::Memory => "M",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Group::NoFsync => "#4878d0",
            Group::DurableBatch => "#ee854a",
            Group::DurableOp => "#d65f5f",
            Group::Memory => "#8c8c8c",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Group::NoFsync => "no fsync per operation: the OS (or the engine's buffer) holds recent writes; power loss can lose them",
            Group::DurableBatch => "durable per batch: the call returns after the batch of 1000 is fsynced",
            Group::DurableOp => "durable per operation: each call returns after its record is fsynced (group commit across threads)",
            Group::Memory => "memory only: not durable at all; reference points",
        }
    }
}

/// One peer configuration: a row of the table.
#[derive(Debug, Clone, Copy)]
struct PeerSpec {
    name: &'static str,
    label: &'static str,
    group: Group,
    threads: usize,
    /// Operations per call/commit; 1 = single-key calls.
    batch: usize,
    /// Which operation count it runs.
    size: Size,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Ops,
    SyncOps,
    RamKeys,
}

const PEERS: &[PeerSpec] = &[
    PeerSpec {
        name: "idem-never-1t",
        label: "idem Never",
        group: Group::NoFsync,
        threads: 1,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "idem-never-2t",
        label: "idem Never",
        group: Group::NoFsync,
        threads: 2,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "idem-never-batch",
        label: "idem Never, batch",
        group: Group::NoFsync,
        threads: 1,
        batch: BATCH,
        size: Size::Ops,
    },
    PeerSpec {
        name: "sled",
        label: "sled 0.34 (default flush)",
        group: Group::NoFsync,
        threads: 1,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "fjall",
        label: "fjall 3 (default)",
        group: Group::NoFsync,
        threads: 1,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "redb-none",
        label: "redb, Durability::None, txn/op",
        group: Group::NoFsync,
        threads: 1,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "redb-none-batch",
        label: "redb, Durability::None, txn/batch",
        group: Group::NoFsync,
        threads: 1,
        batch: BATCH,
        size: Size::Ops,
    },
    PeerSpec {
        name: "idem-sync-batch",
        label: "idem Sync, batch",
        group: Group::DurableBatch,
        threads: 1,
        batch: BATCH,
        size: Size::Ops,
    },
    PeerSpec {
        name: "redb-durable-batch",
        label: "redb, Immediate, txn/batch",
        group: Group::DurableBatch,
        threads: 1,
        batch: BATCH,
        size: Size::Ops,
    },
    PeerSpec {
        name: "idem-sync-64t",
        label: "idem Sync, single-key",
        group: Group::DurableOp,
        threads: SYNC_THREADS,
        batch: 1,
        size: Size::SyncOps,
    },
    PeerSpec {
        name: "idem-ram",
        label: "idem Never (RAM check)",
        group: Group::NoFsync,
        threads: 1,
        batch: 1,
        size: Size::RamKeys,
    },
    PeerSpec {
        name: "moka",
        label: "moka sync::Cache (TTL 1 h)",
        group: Group::Memory,
        threads: 1,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "redis",
        label: "Redis SET NX PX (pipelined)",
        group: Group::Memory,
        threads: 1,
        batch: BATCH,
        size: Size::Ops,
    },
    PeerSpec {
        name: "hashmap-1t",
        label: "sharded HashMap (ceiling)",
        group: Group::Memory,
        threads: 1,
        batch: 1,
        size: Size::Ops,
    },
    PeerSpec {
        name: "hashmap-2t",
        label: "sharded HashMap (ceiling)",
        group: Group::Memory,
        threads: 2,
        batch: 1,
        size: Size::Ops,
    },
];

fn peer(name: &str) -> Option<&'static PeerSpec> {
    PEERS.iter().find(|p| p.name == name)
}

#[derive(Debug, Clone)]
struct Args {
    ops: usize,
    sync_ops: usize,
    ram_keys: usize,
    quick: bool,
    peers: Option<Vec<String>>,
    child_peer: Option<String>,
    out_dir: PathBuf,
    scratch: PathBuf,
    keep: bool,
    /// Runs per peer (in rounds over all peers); the fastest run is reported.
    repeat: usize,
}

const USAGE: &str = "\
compare: idem against its peers on one dedup workload

USAGE: compare [--ops N] [--sync-ops N] [--ram-keys N] [--quick] [--peers a,b,..] [--out-dir DIR]
               [--scratch DIR] [--keep] [--repeat N] [--list]

  --ops N        operations per peer run (default 2000000; --quick: 100000)
  --sync-ops N   operations of the idem Sync single-key 64-thread run (default 50000; --quick: 5000)
  --ram-keys N   operations of the idem RAM check (default 10000000; --quick: 200000)
  --quick        smoke-test sizes; writes to results/tmp/ unless --out-dir is given
  --peers LIST   run only these peers (names from --list)
  --out-dir DIR  where compare.md and compare.svg go (default results/, or results/tmp/ with --quick)
  --scratch DIR  where data directories are created (default results/tmp/; must be a real disk:
                 fsync on tmpfs is free and would flatter the durable modes)
  --keep         keep the data directories
  --repeat N     run every peer N times, in N rounds over all peers, and report each peer's
                 fastest run (default 1): other load on the machine only ever slows a run down
  --list         list the peers
";

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("results")
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut ops = None;
    let mut sync_ops = None;
    let mut ram_keys = None;
    let mut quick = false;
    let mut peers = None;
    let mut child_peer = None;
    let mut out_dir = None;
    let mut scratch = None;
    let mut keep = false;
    let mut repeat = 1;
    fn number(v: Option<String>, flag: &str) -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a value"))?;
        let v = v.replace('_', "");
        v.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("{flag}: not a positive number: {v}"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ops" => ops = Some(number(args.next(), "--ops")?),
            "--sync-ops" => sync_ops = Some(number(args.next(), "--sync-ops")?),
            "--ram-keys" => ram_keys = Some(number(args.next(), "--ram-keys")?),
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--repeat" => repeat = number(args.next(), "--repeat")?,
            "--peers" => {
                let list = args.next().ok_or("--peers needs a value")?;
                let names: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
                for n in &names {
                    if peer(n).is_none() {
                        return Err(format!("unknown peer {n:?} (see --list)"));
                    }
                }
                peers = Some(names);
            }
            "--peer" => child_peer = Some(args.next().ok_or("--peer needs a value")?),
            "--out-dir" => {
                out_dir = Some(PathBuf::from(args.next().ok_or("--out-dir needs a value")?))
            }
            "--scratch" => {
                scratch = Some(PathBuf::from(args.next().ok_or("--scratch needs a value")?))
            }
            "--list" => {
                for p in PEERS {
                    println!(
                        "{:<20} {} ({} thread(s), batch {})",
                        p.name, p.label, p.threads, p.batch
                    );
                }
                std::process::exit(0);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes `--bench` to every target it runs.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    let results = results_dir();
    let default_out = if quick {
        results.join("tmp")
    } else {
        results.clone()
    };
    Ok(Args {
        ops: ops.unwrap_or(if quick { QUICK_OPS } else { DEFAULT_OPS }),
        sync_ops: sync_ops.unwrap_or(if quick {
            QUICK_SYNC_OPS
        } else {
            DEFAULT_SYNC_OPS
        }),
        ram_keys: ram_keys.unwrap_or(if quick {
            QUICK_RAM_KEYS
        } else {
            DEFAULT_RAM_KEYS
        }),
        quick,
        peers,
        child_peer,
        out_dir: out_dir.unwrap_or(default_out),
        scratch: scratch.unwrap_or(results.join("tmp")),
        keep,
        repeat,
    })
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("compare: {message}");
            std::process::exit(2);
        }
    };
    let outcome = match &args.child_peer {
        Some(name) => run_child(&args, name),
        None => run_parent(&args),
    };
    if let Err(message) = outcome {
        eprintln!("compare: {message}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------------------------------
// Child side: run one peer, print one RESULT line.
// ------------------------------------------------------------------------------------------

/// What one peer run measured.
#[derive(Debug, Default, Clone)]
struct Measured {
    ops: u64,
    secs: f64,
    latency: Histogram,
    /// Operations answered "already there".
    duplicates: u64,
    rss_before: u64,
    rss_after: u64,
    disk_bytes: u64,
    disk_apparent_bytes: u64,
    /// Peers with no files (memory only) report no disk.
    has_disk: bool,
    /// CPU seconds used outside this process (the Redis server's).
    server_cpu_secs: f64,
    note: String,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type PeerResult = Result<Measured, BoxError>;

fn run_child(args: &Args, name: &str) -> Result<(), String> {
    let spec = peer(name).ok_or(format!("unknown peer {name:?}"))?;
    let ops = match spec.size {
        Size::Ops => args.ops,
        Size::SyncOps => args.sync_ops,
        Size::RamKeys => args.ram_keys,
    };
    let mut workload = Workload::new(SEED);
    let keys = if spec.size == Size::RamKeys {
        // The RAM target is stated per live key: run until exactly `ops` distinct keys exist.
        let mut keys = Vec::with_capacity(ops + ops / 50);
        while workload.new_keys < ops as u64 {
            keys.push(workload.next_key());
        }
        keys
    } else {
        workload.keys(ops)
    };
    let expected_dups = workload.duplicates;
    std::fs::create_dir_all(&args.scratch)
        .map_err(|e| format!("creating {}: {e}", args.scratch.display()))?;
    let dir = args.scratch.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let cpu_before = cpu_seconds().unwrap_or(0.0);
    let result = match spec.name {
        "idem-never-1t" | "idem-never-2t" | "idem-ram" => {
            idem_single(&dir, &keys, idem::Durability::Never, spec.threads)
        }
        "idem-sync-64t" => idem_single(&dir, &keys, idem::Durability::Sync, spec.threads),
        "idem-never-batch" => idem_batch(&dir, &keys, idem::Durability::Never),
        "idem-sync-batch" => idem_batch(&dir, &keys, idem::Durability::Sync),
        "sled" => sled_run(&dir, &keys),
        "fjall" => fjall_run(&dir, &keys),
        "redb-none" => redb_run(&dir, &keys, redb::Durability::None, 1),
        "redb-none-batch" => redb_run(&dir, &keys, redb::Durability::None, BATCH),
        "redb-durable-batch" => redb_run(&dir, &keys, redb::Durability::Immediate, BATCH),
        "moka" => moka_run(&keys),
        "redis" => redis_run(&dir, &keys),
        "hashmap-1t" | "hashmap-2t" => hashmap_run(&keys, spec.threads),
        other => return Err(format!("peer {other} has no runner")),
    };
    let cpu_secs = cpu_seconds().unwrap_or(0.0) - cpu_before;
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let line = match result {
        Ok(m) => {
            if m.ops > 0 && m.duplicates != expected_dups {
                eprintln!(
                    "compare: warning: {name} answered {} duplicates, the workload has {expected_dups}",
                    m.duplicates
                );
            }
            format!(
                "RESULT\tpeer={name}\tops={}\tsecs={:.6}\tcpu={:.2}\tp50={}\tp99={}\tp999={}\tmean={:.0}\tstall_1ms={}\tmax={}\tlat_n={}\tdups={}\texpected_dups={expected_dups}\tlive={}\trss_before={}\trss_after={}\tdisk={}\tdisk_apparent={}\thas_disk={}\tnote={}",
                m.ops,
                m.secs,
                cpu_secs + m.server_cpu_secs,
                m.latency.quantile(0.50),
                m.latency.quantile(0.99),
                m.latency.quantile(0.999),
                m.latency.sum() as f64 / m.latency.count().max(1) as f64,
                m.latency.sum_at_least(1_000_000),
                m.latency.max(),
                m.latency.count(),
                m.duplicates,
                keys.len() as u64 - expected_dups,
                m.rss_before,
                m.rss_after,
                m.disk_bytes,
                m.disk_apparent_bytes,
                u8::from(m.has_disk),
                m.note.replace(['\t', '\n'], " "),
            )
        }
        Err(e) => format!(
            "RESULT\tpeer={name}\tskipped={}",
            e.to_string().replace(['\t', '\n'], " ")
        ),
    };
    println!("{line}");
    Ok(())
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
    let per = keys.len().div_ceil(threads);
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

/// Runs `op` on every batch of [`BATCH`] keys, timing every batch. `op` returns how many keys of
/// the batch were already there.
fn run_batches<F>(keys: &[Key], mut op: F) -> Result<(f64, Histogram, u64), BoxError>
where
    F: FnMut(&[Key]) -> Result<u64, BoxError>,
{
    let mut hist = Histogram::default();
    let mut dups = 0;
    let started = Instant::now();
    let mut last = started;
    for batch in keys.chunks(BATCH) {
        dups += op(batch)?;
        let now = Instant::now();
        hist.record_duration(now - last);
        last = now;
    }
    Ok((started.elapsed().as_secs_f64(), hist, dups))
}

/// Flushes and closes an idem store after a run and gathers its measurements.
fn finish_idem(
    store: idem::Store,
    dir: &Path,
    keys: &[Key],
    (secs, latency, duplicates): (f64, Histogram, u64),
    rss_before: u64,
) -> PeerResult {
    store.flush()?;
    let rss_after = rss();
    let stats = store.stats();
    store.close()?;
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        disk_bytes: dir_disk_bytes(dir),
        disk_apparent_bytes: dir_apparent_bytes(dir),
        has_disk: true,
        server_cpu_secs: 0.0,
        note: format!(
            "stats: live_keys={} index_bytes={} ({:.1} B/key) segments={} fsyncs={}; files: {}",
            stats.live_keys,
            stats.index_bytes,
            stats.index_bytes as f64 / stats.live_keys.max(1) as f64,
            stats.segments,
            stats.fsyncs,
            file_breakdown(dir, stats.live_keys)
        ),
    })
}

fn idem_single(
    dir: &Path,
    keys: &[Key],
    durability: idem::Durability,
    threads: usize,
) -> PeerResult {
    let rss_before = rss();
    let store = idem::Store::open_with(dir, idem::Config::default().durability(durability))?;
    let (secs, latency, duplicates) = run_single_ops(keys, threads, |key| {
        let value = value_for(key);
        Ok(store.check_or_insert(key, TTL, &value)?.is_duplicate())
    })?;
    finish_idem(store, dir, keys, (secs, latency, duplicates), rss_before)
}

fn idem_batch(dir: &Path, keys: &[Key], durability: idem::Durability) -> PeerResult {
    let rss_before = rss();
    let store = idem::Store::open_with(dir, idem::Config::default().durability(durability))?;
    let mut items: Vec<(Key, Duration, [u8; 16])> = Vec::with_capacity(BATCH);
    let (secs, latency, duplicates) = run_batches(keys, |batch| {
        items.clear();
        items.extend(batch.iter().map(|k| (*k, TTL, value_for(k))));
        let outcomes = store.check_or_insert_batch(&items)?;
        Ok(outcomes.iter().filter(|o| o.is_duplicate()).count() as u64)
    })?;
    finish_idem(store, dir, keys, (secs, latency, duplicates), rss_before)
}

/// Bytes per live key of each kind of file in an idem directory (segments, checkpoints, ...).
fn file_breakdown(dir: &Path, live_keys: u64) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut kinds: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = name.split(['-', '.']).next().unwrap_or("?").to_string();
        if let Ok(meta) = entry.metadata() {
            *kinds.entry(kind).or_default() += meta.blocks() * 512;
        }
    }
    kinds
        .iter()
        .filter(|(_, bytes)| **bytes > 0)
        .map(|(kind, bytes)| {
            format!(
                "{kind} {:.1} B/key",
                *bytes as f64 / live_keys.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn sled_run(dir: &Path, keys: &[Key]) -> PeerResult {
    let rss_before = rss();
    let db = sled::Config::new().path(dir).open()?;
    let (secs, latency, duplicates) = run_single_ops(keys, 1, |key| {
        let value = value_for(key);
        let swapped = db.compare_and_swap(key, None::<&[u8]>, Some(&value[..]))?;
        Ok(swapped.is_err())
    })?;
    db.flush()?;
    let rss_after = rss();
    drop(db);
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        disk_bytes: dir_disk_bytes(dir),
        disk_apparent_bytes: dir_apparent_bytes(dir),
        has_disk: true,
        server_cpu_secs: 0.0,
        note: "compare_and_swap(key, None, Some(value)); default config (flush every 500 ms)"
            .into(),
    })
}

fn fjall_run(dir: &Path, keys: &[Key]) -> PeerResult {
    let rss_before = rss();
    let db = fjall::Database::builder(dir).open()?;
    let items = db.keyspace("dedup", fjall::KeyspaceCreateOptions::default)?;
    let (secs, latency, duplicates) = run_single_ops(keys, 1, |key| {
        if items.get(key)?.is_some() {
            return Ok(true);
        }
        items.insert(&key[..], &value_for(key)[..])?;
        Ok(false)
    })?;
    db.persist(fjall::PersistMode::SyncAll)?;
    let rss_after = rss();
    drop(items);
    drop(db);
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        disk_bytes: dir_disk_bytes(dir),
        disk_apparent_bytes: dir_apparent_bytes(dir),
        has_disk: true,
        server_cpu_secs: 0.0,
        note: "get + insert (not atomic across threads; 1 thread here); default config: journal written to the OS per insert, no fsync".into(),
    })
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("dedup");

fn redb_run(dir: &Path, keys: &[Key], durability: redb::Durability, batch: usize) -> PeerResult {
    let rss_before = rss();
    let db = redb::Database::create(dir.join("dedup.redb"))?;
    let commit = |part: &[Key]| -> Result<u64, BoxError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        let mut dups = 0;
        {
            let mut table = txn.open_table(REDB_TABLE)?;
            for key in part {
                if table.get(&key[..])?.is_some() {
                    dups += 1;
                } else {
                    table.insert(&key[..], &value_for(key)[..])?;
                }
            }
        }
        txn.commit()?;
        Ok(dups)
    };
    let (secs, latency, duplicates) = if batch == 1 {
        run_single_ops(keys, 1, |key| Ok(commit(std::slice::from_ref(key))? == 1))?
    } else {
        run_batches(keys, commit)?
    };
    // A durable commit makes the Durability::None commits durable too: the engine's "flush".
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.commit()?;
    let rss_after = rss();
    drop(db);
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        disk_bytes: dir_disk_bytes(dir),
        disk_apparent_bytes: dir_apparent_bytes(dir),
        has_disk: true,
        server_cpu_secs: 0.0,
        note: format!(
            "get + insert in a write transaction of {batch} op(s); {durability:?} commits"
        ),
    })
}

fn moka_run(keys: &[Key]) -> PeerResult {
    let rss_before = rss();
    let cache: moka::sync::Cache<Key, [u8; 16]> =
        moka::sync::Cache::builder().time_to_live(TTL).build();
    let (secs, latency, duplicates) = run_single_ops(keys, 1, |key| {
        let entry = cache.entry(*key).or_insert(value_for(key));
        Ok(!entry.is_fresh())
    })?;
    cache.run_pending_tasks();
    let rss_after = rss();
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        has_disk: false,
        note: "entry(key).or_insert(value) (atomic); in memory only".into(),
        ..Measured::default()
    })
}

fn hashmap_run(keys: &[Key], threads: usize) -> PeerResult {
    type Shard = parking_lot::Mutex<HashMap<Key, [u8; 16]>>;
    let rss_before = rss();
    let shards: Vec<Shard> = (0..CEILING_SHARDS).map(|_| Shard::default()).collect();
    let hasher = std::hash::RandomState::new();
    let (secs, latency, duplicates) = run_single_ops(keys, threads, |key| {
        use std::hash::BuildHasher;
        let shard = (hasher.hash_one(key) as usize) % CEILING_SHARDS;
        let mut map = shards[shard].lock();
        match map.entry(*key) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(true),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value_for(key));
                Ok(false)
            }
        }
    })?;
    let rss_after = rss();
    drop(shards);
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        has_disk: false,
        note: format!(
            "{CEILING_SHARDS} shards of parking_lot::Mutex<std HashMap<[u8;16],[u8;16]>> (SipHash)"
        ),
        ..Measured::default()
    })
}

/// Finds an executable on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Kills the Redis server this run started, however the run ends.
struct RedisServer(std::process::Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_run(dir: &Path, keys: &[Key]) -> PeerResult {
    let Some(server) = which("redis-server") else {
        return Err("redis-server is not on PATH (the harness installs nothing)".into());
    };
    // An unused port: bind port 0, read the port the OS chose, release it for the server.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new(&server)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server_pid = child.id().to_string();
    let guard = RedisServer(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("redis-server did not accept connections: {e}").into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let version = {
        writer.write_all(b"*1\r\n$4\r\nPING\r\n")?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line != "+PONG\r\n" {
            return Err(format!("unexpected PING reply {line:?}").into());
        }
        writer.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")?;
        let info = read_bulk(&mut reader)?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let rss_before = rss_bytes_of(&server_pid).unwrap_or(0);
    let server_cpu_before = cpu_seconds_of(&server_pid).unwrap_or(0.0);
    let ttl_ms = TTL.as_millis().to_string();
    let ttl_arg = format!("${}\r\n{ttl_ms}\r\n", ttl_ms.len()).into_bytes();
    let mut out = Vec::with_capacity(BATCH * 96);
    let mut line = Vec::with_capacity(64);
    let (secs, latency, duplicates) = run_batches(keys, |batch| {
        out.clear();
        for key in batch {
            out.extend_from_slice(b"*6\r\n$3\r\nSET\r\n$16\r\n");
            out.extend_from_slice(key);
            out.extend_from_slice(b"\r\n$16\r\n");
            out.extend_from_slice(&value_for(key));
            out.extend_from_slice(b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n");
            out.extend_from_slice(&ttl_arg);
        }
        writer.write_all(&out)?;
        let mut dups = 0;
        for _ in batch {
            line.clear();
            reader.read_until(b'\n', &mut line)?;
            match line.as_slice() {
                b"+OK\r\n" => {}
                b"$-1\r\n" | b"_\r\n" => dups += 1,
                other => {
                    return Err(
                        format!("unexpected reply {:?}", String::from_utf8_lossy(other)).into(),
                    )
                }
            }
        }
        Ok(dups)
    })?;
    let rss_after = rss_bytes_of(&server_pid).unwrap_or(0);
    let server_cpu_secs = cpu_seconds_of(&server_pid).unwrap_or(0.0) - server_cpu_before;
    drop(guard);
    Ok(Measured {
        ops: keys.len() as u64,
        secs,
        latency,
        duplicates,
        rss_before,
        rss_after,
        has_disk: false,
        server_cpu_secs,
        note: format!(
            "redis-server {version} on 127.0.0.1, --save '' --appendonly no; 1 connection, pipelines of {BATCH}; RSS is the server's"
        ),
        ..Measured::default()
    })
}

/// Reads one RESP bulk string reply.
fn read_bulk(reader: &mut BufReader<TcpStream>) -> Result<String, BoxError> {
    let mut header = String::new();
    reader.read_line(&mut header)?;
    let len: usize = header
        .strip_prefix('$')
        .and_then(|h| h.trim().parse().ok())
        .ok_or(format!("unexpected bulk header {header:?}"))?;
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body)?;
    body.truncate(len);
    Ok(String::from_utf8_lossy(&body).into_owned())
}

// ------------------------------------------------------------------------------------------
// Parent side: run every peer in a child process, then report.
// ------------------------------------------------------------------------------------------

/// One row: a peer's spec and what its child reported.
#[derive(Debug, Clone)]
struct Row {
    spec: PeerSpec,
    fields: HashMap<String, String>,
}

impl Row {
    fn skipped(&self) -> Option<&str> {
        self.fields.get("skipped").map(String::as_str)
    }

    fn num(&self, key: &str) -> f64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn ops_per_sec(&self) -> Option<f64> {
        if self.skipped().is_some() {
            return None;
        }
        let secs = self.num("secs");
        (secs > 0.0).then(|| self.num("ops") / secs)
    }

    fn live(&self) -> f64 {
        self.num("live")
    }

    fn rss_per_key(&self) -> Option<f64> {
        let live = self.live();
        (self.skipped().is_none() && live > 0.0)
            .then(|| (self.num("rss_after") - self.num("rss_before")).max(0.0) / live)
    }

    fn disk_per_key(&self) -> Option<f64> {
        let live = self.live();
        (self.skipped().is_none() && self.num("has_disk") > 0.0 && live > 0.0)
            .then(|| self.num("disk") / live)
    }

    fn threads_label(&self) -> String {
        self.spec.threads.to_string()
    }
}

fn run_parent(args: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let selected: Vec<&PeerSpec> = match &args.peers {
        Some(names) => names.iter().filter_map(|n| peer(n)).collect(),
        None => PEERS.iter().collect(),
    };
    std::fs::create_dir_all(&args.scratch)
        .map_err(|e| format!("creating {}: {e}", args.scratch.display()))?;
    let load_before = read_trim("/proc/loadavg");
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); selected.len()];
    for round in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("compare: round {round} of {}", args.repeat);
        }
        for (i, spec) in selected.iter().enumerate() {
            runs[i].push(run_peer_child(&exe, args, spec)?);
        }
    }
    let rows: Vec<Row> = runs.into_iter().map(best_run).collect();
    let load = (load_before, read_trim("/proc/loadavg"));
    let report = Report::new(args, rows, load);
    let markdown = report.markdown();
    print!("{markdown}");
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("creating {}: {e}", args.out_dir.display()))?;
    let md_path = args.out_dir.join("compare.md");
    let svg_path = args.out_dir.join("compare.svg");
    std::fs::write(&md_path, &markdown)
        .map_err(|e| format!("writing {}: {e}", md_path.display()))?;
    std::fs::write(&svg_path, report.svg())
        .map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
    eprintln!(
        "compare: wrote {} and {}",
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// Runs one peer in a child process of this executable and parses its RESULT line.
fn run_peer_child(exe: &Path, args: &Args, spec: &PeerSpec) -> Result<Row, String> {
    eprint!("compare: {:<20} ", spec.name);
    let started = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.args(["--peer", spec.name])
        .args(["--ops", &args.ops.to_string()])
        .args(["--sync-ops", &args.sync_ops.to_string()])
        .args(["--ram-keys", &args.ram_keys.to_string()])
        .arg("--scratch")
        .arg(&args.scratch)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if args.keep {
        cmd.arg("--keep");
    }
    let output = cmd
        .output()
        .map_err(|e| format!("running {} --peer {}: {e}", exe.display(), spec.name))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: HashMap<String, String> = match stdout.lines().find(|l| l.starts_with("RESULT\t")) {
        Some(line) => line
            .split('\t')
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        None => HashMap::from([(
            "skipped".to_string(),
            format!("child failed ({})", output.status),
        )]),
    };
    let row = Row {
        spec: *spec,
        fields,
    };
    match (row.skipped(), row.ops_per_sec()) {
        (Some(why), _) => eprintln!("skipped: {why}"),
        (None, Some(rate)) => eprintln!(
            "{:>12} ops/s  ({:.1} s wall)",
            fmt_int(rate),
            started.elapsed().as_secs_f64()
        ),
        (None, None) => eprintln!("no result"),
    }
    Ok(row)
}

/// The fastest of a peer's runs, with every run's ops/s noted in field `runs`.
fn best_run(runs: Vec<Row>) -> Row {
    let rates: Vec<String> = runs
        .iter()
        .filter_map(Row::ops_per_sec)
        .map(fmt_int)
        .collect();
    let mut best = runs
        .iter()
        .filter(|r| r.ops_per_sec().is_some())
        .max_by(|a, b| {
            a.ops_per_sec()
                .partial_cmp(&b.ops_per_sec())
                .expect("finite rates")
        })
        .or(runs.first())
        .cloned()
        .expect("at least one run per peer");
    if runs.len() > 1 {
        best.fields.insert("runs".into(), rates.join(" / "));
    }
    best
}

struct Report<'a> {
    args: &'a Args,
    rows: Vec<Row>,
    /// `/proc/loadavg` before the first peer and after the last.
    load: (String, String),
}

/// One target of the issue and whether it was met.
struct Target {
    text: String,
    measured: String,
    verdict: &'static str,
    /// The same ratio by CPU time per operation, where that comparison means something.
    by_cpu: String,
}

impl<'a> Report<'a> {
    fn new(args: &'a Args, rows: Vec<Row>, load: (String, String)) -> Self {
        Report { args, rows, load }
    }

    fn row(&self, name: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.spec.name == name && r.skipped().is_none())
    }

    fn rate(&self, name: &str) -> Option<f64> {
        self.row(name).and_then(Row::ops_per_sec)
    }

    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.rate(a)? / self.rate(b)?)
    }

    /// CPU seconds per operation of a peer.
    fn cpu_per_op(&self, name: &str) -> Option<f64> {
        let row = self.row(name)?;
        let cpu = row.num("cpu");
        (cpu > 0.0).then(|| cpu / row.num("ops").max(1.0))
    }

    /// How many times less CPU per operation `a` needs than `b` (like `ratio`, bigger is better
    /// for `a`). Independent of other load on the machine, blind to time spent waiting for disk.
    fn cpu_ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.cpu_per_op(b)? / self.cpu_per_op(a)?)
    }

    fn ratios(&self) -> Vec<(String, Option<f64>, Option<f64>)> {
        [
            ("idem Never 1 thread / sled", "idem-never-1t", "sled"),
            ("idem Never 1 thread / fjall", "idem-never-1t", "fjall"),
            (
                "idem Never 1 thread / redb (None, txn per op)",
                "idem-never-1t",
                "redb-none",
            ),
            (
                "idem Never 1 thread / Redis (pipelined)",
                "idem-never-1t",
                "redis",
            ),
            ("idem Never 1 thread / moka", "idem-never-1t", "moka"),
            (
                "idem Never 1 thread / HashMap ceiling 1 thread",
                "idem-never-1t",
                "hashmap-1t",
            ),
            (
                "idem Never 2 threads / 1 thread",
                "idem-never-2t",
                "idem-never-1t",
            ),
            (
                "HashMap ceiling 2 threads / 1 thread",
                "hashmap-2t",
                "hashmap-1t",
            ),
            ("idem Sync batch / fjall", "idem-sync-batch", "fjall"),
            (
                "idem Sync batch / redb Immediate batch",
                "idem-sync-batch",
                "redb-durable-batch",
            ),
            (
                "idem Never batch / redb None batch",
                "idem-never-batch",
                "redb-none-batch",
            ),
        ]
        .into_iter()
        .map(|(text, a, b)| {
            // Thread scaling of one engine is not a CPU-time comparison.
            let cpu = (!text.contains("threads /"))
                .then(|| self.cpu_ratio(a, b))
                .flatten();
            (text.to_string(), self.ratio(a, b), cpu)
        })
        .collect()
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let mut ratio_target = |text: &str, a: &str, b: &str, want: f64| {
            let (measured, verdict) = match self.ratio(a, b) {
                Some(r) => (format!("{r:.2}x"), if r >= want { "PASS" } else { "MISS" }),
                None => ("not measured (peer skipped)".to_string(), "N/A"),
            };
            // Same-engine thread scaling and fsync-bound rows are not comparable by CPU time.
            let cpu_comparable = !a.starts_with("idem-sync") && !b.starts_with("idem");
            let by_cpu = match self.cpu_ratio(a, b) {
                Some(r) if cpu_comparable => {
                    format!(
                        "{r:.2}x ({})",
                        if r >= want {
                            "would pass"
                        } else {
                            "would miss"
                        }
                    )
                }
                _ => "-".to_string(),
            };
            targets.push(Target {
                text: text.to_string(),
                measured,
                verdict,
                by_cpu,
            });
        };
        ratio_target(
            "idem Never 1 thread >= 20x sled",
            "idem-never-1t",
            "sled",
            20.0,
        );
        ratio_target(
            "idem Never 1 thread >= 10x fjall",
            "idem-never-1t",
            "fjall",
            10.0,
        );
        ratio_target(
            "idem Never 1 thread >= 10x Redis",
            "idem-never-1t",
            "redis",
            10.0,
        );
        ratio_target(
            "idem Never 1 thread >= 0.6x the HashMap ceiling",
            "idem-never-1t",
            "hashmap-1t",
            0.6,
        );
        ratio_target(
            "idem Never 2 threads >= 1.5x 1 thread",
            "idem-never-2t",
            "idem-never-1t",
            1.5,
        );
        ratio_target(
            "idem Sync batch-of-1000 >= 5x fjall",
            "idem-sync-batch",
            "fjall",
            5.0,
        );
        // How much two threads can gain on this machine right now: the ceiling's own scaling.
        if let (Some(target), Some(headroom)) = (
            targets
                .iter_mut()
                .find(|t| t.text.starts_with("idem Never 2 threads")),
            self.ratio("hashmap-2t", "hashmap-1t"),
        ) {
            target.by_cpu =
                format!("- (the HashMap ceiling's own 2-thread gain in this run: {headroom:.2}x)");
        }
        let (measured, verdict) = match self.rate("idem-sync-64t") {
            Some(r) => (
                format!("{} ops/s", fmt_int(r)),
                if r >= 50_000.0 { "PASS" } else { "MISS" },
            ),
            None => ("not measured".into(), "N/A"),
        };
        targets.push(Target {
            text: format!("idem Sync single-key, {SYNC_THREADS} threads >= 50,000 ops/s"),
            measured,
            verdict,
            by_cpu: "-".into(),
        });
        let ram = self.row("idem-ram");
        let (measured, verdict) = match ram.and_then(|r| Some((r, r.rss_per_key()?))) {
            Some((r, b)) => {
                let keys = r.live();
                let note = if keys < 9_000_000.0 {
                    format!(" (at {} keys, not 10M: indicative only)", fmt_int(keys))
                } else {
                    format!(" (at {} live keys)", fmt_int(keys))
                };
                (
                    format!("{b:.1} B/key{note}"),
                    if b <= 32.0 { "PASS" } else { "MISS" },
                )
            }
            None => ("not measured".into(), "N/A"),
        };
        targets.push(Target {
            text: "RAM <= 32 B per live key at 10M keys".into(),
            measured,
            verdict,
            by_cpu: "-".into(),
        });
        let disk = self.row("idem-ram").or(self.row("idem-never-1t"));
        let (measured, verdict) = match disk.and_then(|r| Some((r, r.disk_per_key()?))) {
            Some((r, b)) => (
                format!(
                    "{b:.1} B/key ({}, {} live keys)",
                    r.spec.name,
                    fmt_int(r.live())
                ),
                if b <= 64.0 { "PASS" } else { "MISS" },
            ),
            None => ("not measured".into(), "N/A"),
        };
        targets.push(Target {
            text: "disk <= 64 B per live key".into(),
            measured,
            verdict,
            by_cpu: "-".into(),
        });
        targets
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let a = self.args;
        md.push_str("# idem vs peers: the dedup workload\n\n");
        if a.quick {
            md.push_str(
                "**Quick (smoke-test) run: sizes too small for the numbers to mean much.**\n\n",
            );
        }
        md.push_str(&format!(
            "Generated by `cargo run --release -p idem-bench --bin compare{}` on {}.\n\n",
            self.command_flags(),
            utc_now()
        ));
        md.push_str("## Machine\n\n");
        md.push_str(&format!("- CPU: {} x {}\n", nproc(), cpu_model()));
        md.push_str(&format!("- Memory: {}\n", mem_total()));
        md.push_str(&format!(
            "- Kernel: Linux {}\n",
            read_trim("/proc/sys/kernel/osrelease")
        ));
        md.push_str(&format!(
            "- Data directories: `{}` on {}\n",
            display_path(&a.scratch),
            fs_type_of(&a.scratch)
        ));
        md.push_str(&format!(
            "- Load average (`/proc/loadavg`) before the first peer: `{}`; after the last: `{}` (other work on the machine makes numbers noisier)\n",
            self.load.0, self.load.1
        ));
        md.push_str(&format!("- idem commit: {}\n", git_commit()));
        md.push_str(&format!("- Crates: {}\n\n", crate_versions()));
        md.push_str("## Workload\n\n");
        md.push_str(&format!(
            "- {} operations per peer ({} for the `Sync` single-key {SYNC_THREADS}-thread run, {} for the idem RAM check)\n",
            fmt_int(a.ops as f64),
            fmt_int(a.sync_ops as f64),
            fmt_int(a.ram_keys as f64)
        ));
        md.push_str(&format!(
            "- 16-byte keys = source id (u64 BE, {SOURCES} sources) ++ sequence number (u64 BE); 16-byte values (the recorded result)\n\
             - {:.0}% of operations re-send a key drawn from the last {} new keys; TTL {} s; RNG seed `{SEED:#x}` (SplitMix64)\n\
             - Each operation: \"if the key is new, record it with its result; else report the duplicate\". Multi-threaded runs split the operations into contiguous parts.\n\
             - Each peer runs in a fresh child process (`compare --peer NAME`){}.\n\n",
            DUP_PER_10K as f64 / 100.0,
            fmt_int(RETRY_WINDOW as f64),
            TTL.as_secs(),
            if a.repeat > 1 {
                format!("; each peer ran {} times, in rounds over all peers, and its fastest run is reported", a.repeat)
            } else {
                String::new()
            }
        ));
        md.push_str("## Results\n\n");
        md.push_str("| peer | group | threads | ops/call | ops/s | CPU µs/op | p50 | p99 | latency of | live keys | RSS B/key | disk B/key | dups |\n");
        md.push_str("|---|:-:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|\n");
        for row in &self.rows {
            let spec = &row.spec;
            if let Some(why) = row.skipped() {
                md.push_str(&format!(
                    "| {} (`{}`) | {} | {} | {} | skipped: {} | | | | | | | | |\n",
                    spec.label,
                    spec.name,
                    spec.group.code(),
                    row.threads_label(),
                    spec.batch,
                    why
                ));
                continue;
            }
            let unit = if spec.batch > 1 {
                format!("batch of {}", spec.batch)
            } else {
                "op".into()
            };
            let dups_ok = row.num("dups") == row.num("expected_dups");
            md.push_str(&format!(
                "| {} (`{}`) | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {}{} |\n",
                spec.label,
                spec.name,
                spec.group.code(),
                row.threads_label(),
                spec.batch,
                row.ops_per_sec().map(fmt_int).unwrap_or_default(),
                row.num("cpu") * 1e6 / row.num("ops").max(1.0),
                fmt_nanos(row.num("p50")),
                fmt_nanos(row.num("p99")),
                unit,
                fmt_int(row.live()),
                row.rss_per_key()
                    .map(|b| format!("{b:.1}"))
                    .unwrap_or_default(),
                row.disk_per_key()
                    .map(|b| format!("{b:.1}"))
                    .unwrap_or_else(|| "-".into()),
                fmt_int(row.num("dups")),
                if dups_ok { "" } else { " (expected differs!)" },
            ));
        }
        md.push_str("\nGroups (compare rows within a group; durability fairness):\n\n");
        for g in [
            Group::NoFsync,
            Group::DurableBatch,
            Group::DurableOp,
            Group::Memory,
        ] {
            md.push_str(&format!("- **{}**: {}.\n", g.code(), g.describe()));
        }
        md.push_str(
            "\nPairings: idem `Never` vs sled (default), fjall (default) and redb `Durability::None` (group N); \
             idem `Sync` batch of 1000 vs redb `Durability::Immediate` batch of 1000 (group B); \
             idem `Sync` single-key has no embedded peer here (group S); moka, Redis and the HashMap are in-memory references (group M).\n\n",
        );
        md.push_str(
            "Columns: *ops/s* = operations / wall time of the run (a batch of 1000 counts 1000). \
             *CPU µs/op* = CPU time (user + system, all threads, including open and close; Redis: server + client) / operations: \
             less sensitive than ops/s to other load on the machine. \
             *p50/p99* = latency of one operation, or of one batch call where *latency of* says so; \
             every operation (batch) is timed. *RSS B/key* = (VmRSS after the run − VmRSS before opening) / live keys \
             (Redis: the server process). *disk B/key* = bytes allocated to the data directory after flush and close / live keys. \
             *dups* = operations answered \"duplicate\" (must equal the workload's re-sends).\n\n",
        );
        md.push_str(
            "## Ratios\n\nBy throughput (ops/s); in parentheses the same ratio by CPU time per operation \
             (which other load on the machine disturbs less, but which does not see time spent waiting for the disk).\n\n",
        );
        for (text, ratio, cpu) in self.ratios() {
            md.push_str(&format!(
                "- {text}: {}{}\n",
                ratio
                    .map(|r| format!("**{r:.2}x**"))
                    .unwrap_or_else(|| "n/a (peer skipped)".into()),
                cpu.map(|r| format!(" (CPU/op: {r:.2}x)"))
                    .unwrap_or_default()
            ));
        }
        md.push_str(
            "\n## Targets\n\nThe verdict is by throughput; *by CPU/op* says what the same ratio is by CPU time per operation.\n\n\
             | target | measured | verdict | by CPU/op |\n|---|---|:-:|---|\n",
        );
        for t in self.targets() {
            md.push_str(&format!(
                "| {} | {} | **{}** | {} |\n",
                t.text, t.measured, t.verdict, t.by_cpu
            ));
        }
        md.push_str("\n## Notes per peer\n\n");
        for row in &self.rows {
            let note = match row.skipped() {
                Some(why) => format!("skipped: {why}"),
                None => format!(
                    "{}; wall {:.2} s, CPU {:.2} s; latency mean {}, p99 {}, p99.9 {}, max {}; {:.0}% of the time in calls of 1 ms or more; RSS {} -> {}; disk {} allocated, {} apparent",
                    row.fields.get("note").map(String::as_str).unwrap_or(""),
                    row.num("secs"),
                    row.num("cpu"),
                    fmt_nanos(row.num("mean")),
                    fmt_nanos(row.num("p99")),
                    fmt_nanos(row.num("p999")),
                    fmt_nanos(row.num("max")),
                    (100.0 * row.num("stall_1ms") / (row.num("mean") * row.num("lat_n")).max(1.0))
                        .min(100.0),
                    fmt_bytes(row.num("rss_before")),
                    fmt_bytes(row.num("rss_after")),
                    fmt_bytes(row.num("disk")),
                    fmt_bytes(row.num("disk_apparent")),
                ),
            };
            let runs = row
                .fields
                .get("runs")
                .map(|r| format!(". Runs (ops/s): {r}; the fastest is reported"))
                .unwrap_or_default();
            md.push_str(&format!("- `{}`: {}{}\n", row.spec.name, note, runs));
        }
        md
    }

    fn command_flags(&self) -> String {
        let a = self.args;
        let mut flags = String::new();
        if a.quick {
            flags.push_str(" --quick");
        }
        let (ops, sync_ops, ram) = if a.quick {
            (QUICK_OPS, QUICK_SYNC_OPS, QUICK_RAM_KEYS)
        } else {
            (DEFAULT_OPS, DEFAULT_SYNC_OPS, DEFAULT_RAM_KEYS)
        };
        if a.ops != ops {
            flags.push_str(&format!(" --ops {}", a.ops));
        }
        if a.sync_ops != sync_ops {
            flags.push_str(&format!(" --sync-ops {}", a.sync_ops));
        }
        if a.ram_keys != ram {
            flags.push_str(&format!(" --ram-keys {}", a.ram_keys));
        }
        if a.repeat > 1 {
            flags.push_str(&format!(" --repeat {}", a.repeat));
        }
        if let Some(peers) = &a.peers {
            flags.push_str(&format!(" --peers {}", peers.join(",")));
        }
        if flags.is_empty() {
            flags
        } else {
            format!(" --{flags}")
        }
    }

    /// A horizontal bar chart of ops/s on a log scale, one bar per row, coloured by group.
    fn svg(&self) -> String {
        let bars: Vec<(String, Option<f64>, Group)> = self
            .rows
            .iter()
            .map(|r| {
                let threads = if r.spec.threads == 1 {
                    "1 thread".to_string()
                } else {
                    format!("{} threads", r.spec.threads)
                };
                let batch = if r.spec.batch > 1 {
                    format!(", {}/call", r.spec.batch)
                } else {
                    String::new()
                };
                (
                    format!("{} ({threads}{batch})", r.spec.label),
                    r.ops_per_sec(),
                    r.spec.group,
                )
            })
            .collect();
        let max = bars.iter().filter_map(|b| b.1).fold(1.0f64, f64::max);
        let min = bars.iter().filter_map(|b| b.1).fold(max, f64::min);
        let lo = 10f64.powf(min.max(1.0).log10().floor());
        let hi = 10f64.powf(max.log10().ceil()).max(lo * 10.0);
        let (label_w, plot_w, value_w, row_h, top) = (400.0, 480.0, 110.0, 24.0, 58.0);
        let width = label_w + plot_w + value_w + 20.0;
        let legend_y = top + bars.len() as f64 * row_h + 34.0;
        let height = legend_y + 4.0 * 18.0 + 16.0;
        let x_of = |v: f64| {
            label_w + plot_w * ((v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()))
        };
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{:.0}\" y=\"22\" font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">idem vs peers: dedup operations per second (log scale)</text>\n\
             <text x=\"{:.0}\" y=\"40\" font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">{} ops, 16-byte keys and values, 1% re-sends, TTL 1 h; {} x {}; {}</text>\n",
            width / 2.0,
            width / 2.0,
            fmt_int(self.args.ops as f64),
            nproc(),
            xml_escape(&cpu_model()),
            utc_now().split(' ').next().unwrap_or("")
        );
        // Decade grid lines.
        let mut decade = lo;
        while decade <= hi * 1.0001 {
            let x = x_of(decade);
            svg.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{}</text>\n",
                top - 6.0,
                top + bars.len() as f64 * row_h,
                top + bars.len() as f64 * row_h + 14.0,
                fmt_si(decade)
            ));
            decade *= 10.0;
        }
        for (i, (label, rate, group)) in bars.iter().enumerate() {
            let y = top + i as f64 * row_h;
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                label_w - 8.0,
                y + row_h * 0.65,
                xml_escape(label)
            ));
            match rate {
                Some(rate) => {
                    let x = x_of(*rate);
                    svg.push_str(&format!(
                        "<rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {} ops/s</title></rect>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
                        y + 3.0,
                        (x - label_w).max(1.0),
                        row_h - 6.0,
                        group.color(),
                        xml_escape(label),
                        fmt_int(*rate),
                        x + 5.0,
                        y + row_h * 0.65,
                        fmt_int(*rate)
                    ));
                }
                None => svg.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#999\">skipped</text>\n",
                    label_w + 5.0,
                    y + row_h * 0.65
                )),
            }
        }
        for (i, g) in [
            Group::NoFsync,
            Group::DurableBatch,
            Group::DurableOp,
            Group::Memory,
        ]
        .iter()
        .enumerate()
        {
            let y = legend_y + i as f64 * 18.0;
            svg.push_str(&format!(
                "<rect x=\"20\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"38\" y=\"{:.1}\" font-size=\"11\">{}: {}</text>\n",
                y - 10.0,
                g.color(),
                y,
                g.code(),
                xml_escape(g.describe())
            ));
        }
        svg.push_str("</svg>\n");
        svg
    }
}

// ------------------------------------------------------------------------------------------
// Formatting and machine facts.
// ------------------------------------------------------------------------------------------

fn fmt_int(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", v / 1e9),
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

fn fmt_nanos(ns: f64) -> String {
    match ns {
        ns if ns >= 1e9 => format!("{:.2} s", ns / 1e9),
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.1} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

fn fmt_bytes(b: f64) -> String {
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{b:.0} B"),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kb / (1024.0 * 1024.0)))
        })
        .unwrap_or_else(|| "?".into())
}

/// The file system type of the mount holding `path` (longest mount-point prefix).
fn fs_type_of(path: &Path) -> String {
    let Ok(path) = path.canonicalize() else {
        return "?".into();
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (device, point, fs) = (parts.next()?, parts.next()?, parts.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{fs} ({device})")))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
        .unwrap_or_else(|| "?".into())
}

fn display_path(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn git_commit() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => {
            let dirty =
                run(&["status", "--porcelain", "--", "engine"]).is_some_and(|s| !s.is_empty());
            format!(
                "`{head}`{}",
                if dirty {
                    " (engine/ has uncommitted changes)"
                } else {
                    ""
                }
            )
        }
        None => "unknown".into(),
    }
}

/// The locked versions of the peers, read from the workspace's `Cargo.lock`.
fn crate_versions() -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let version_of = |name: &str| {
        let needle = format!("name = \"{name}\"\nversion = \"");
        text.find(&needle)
            .map(|at| {
                let rest = &text[at + needle.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    ["idem", "sled", "fjall", "redb", "moka", "criterion"]
        .iter()
        .map(|c| format!("{c} {}", version_of(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no date crate needed).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
