//! `idem bench`: a load generator to size idem for a workload.
//!
//! `--threads` threads share one store and together make `--keys` check-or-insert operations:
//! a fraction `--dup-ratio` of them repeat a key the same thread inserted earlier (a retry), the
//! rest are new keys. With `--batch 1` each operation is one `check_or_insert` call, else the
//! operations go in `check_or_insert_batch` calls of `--batch`. Reports operations per second,
//! latency per call, resident memory per live key (VmRSS before and after, from
//! /proc/self/status) and disk bytes per live key.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use idem::{Config, Outcome, Store};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::args::{parse_duration, parse_fraction, DurabilityArg};
use crate::cli_error::{CliError, CliResult, Context};
use crate::fmt;
use crate::hist::Histogram;

pub const LONG_ABOUT: &str = "\
Generate check-or-insert load against a store, to size idem for your own workload.

--threads threads share one store and together make --keys operations. A fraction --dup-ratio of \
them repeat a key inserted earlier (a retried message: answered Duplicate), the rest are new keys. \
With --batch 1 each operation is one check_or_insert call; with --batch N they go in \
check_or_insert_batch calls of N (one commit each).

Prints operations per second, latency per call (p50/p99/p999), resident memory per live key (VmRSS \
from /proc/self/status, before and after) and disk bytes per live key. --json prints one JSON object \
instead, for machines.

In sync durability each call waits for an fsync, shared by the calls in flight (group commit): \
throughput grows with --threads and --batch.";

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Number of check-or-insert operations (new keys plus repeats); set it near your live key
    /// count for a faithful RAM and disk per key.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Bytes of the value stored with each key.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=idem::MAX_VALUE_BYTES as i64))]
    pub value_size: u32,
    /// Bytes of each key (at least 16).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(16..=idem::MAX_KEY_BYTES as i64))]
    pub key_size: u32,
    /// Fraction of operations that repeat an earlier key (0.1 or 10%).
    #[arg(long, default_value = "0.1", value_parser = parse_fraction)]
    pub dup_ratio: f64,
    /// TTL of each key: e.g. 30s, 15m, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Flag keys inserted again within this long after their entry expired as late
    /// duplicates (e.g. 1m; default off). Only counts: it changes no answer.
    #[arg(long, value_parser = parse_duration)]
    pub late_grace: Option<Duration>,
    /// Threads calling the store at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Durability: sync, periodic-MS (e.g. periodic-10) or never.
    #[arg(long, default_value = "sync")]
    pub durability: DurabilityArg,
    /// Operations per call: 1 uses check_or_insert, more uses check_or_insert_batch.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// Store directory (must be empty or absent; kept). Default: a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Seed of the key choices.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The result of a bench run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub args: BenchArgs,
    pub dir: PathBuf,
    pub elapsed: Duration,
    pub inserted: u64,
    pub duplicates: u64,
    pub latency: Histogram,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub stats: idem::Stats,
    pub metrics: idem::Metrics,
}

impl BenchReport {
    pub fn ops(&self) -> u64 {
        self.inserted + self.duplicates
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Resident memory grown per live key, in bytes, if /proc told us.
    pub fn rss_per_key(&self) -> Option<f64> {
        let (before, after) = (self.rss_before?, self.rss_after?);
        per_key(after as f64 - before as f64, self.stats.live_keys)
    }

    pub fn disk_per_key(&self) -> Option<f64> {
        per_key(self.stats.disk_bytes as f64, self.stats.live_keys)
    }

    pub fn index_per_key(&self) -> Option<f64> {
        per_key(self.stats.index_bytes as f64, self.stats.live_keys)
    }
}

fn per_key(bytes: f64, keys: u64) -> Option<f64> {
    (keys > 0).then(|| bytes / keys as f64)
}

/// VmRSS of this process in bytes, from /proc/self/status (None where there is no /proc).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Writes the key of the `index`-th new key of `thread` into `key`: 16 hex digits of a unique
/// id, then padding up to `size`.
fn make_key(key: &mut Vec<u8>, thread: u32, index: u64, size: usize) {
    use std::io::Write as _;
    key.clear();
    let id = (u64::from(thread) << 40) | index;
    let _ = write!(key, "{id:016x}");
    key.resize(size.max(16), b'.');
}

/// Splits `total` operations over `threads` as evenly as possible.
fn share(total: u64, threads: u32, thread: u32) -> u64 {
    let threads = u64::from(threads);
    total / threads + u64::from(u64::from(thread) < total % threads)
}

/// Picks the keys of one call: each a repeat (with probability `dup_ratio`, once a key exists)
/// or the next new key. Returns the key indices; `fresh` counts new keys so far.
fn pick_keys(rng: &mut StdRng, dup_ratio: f64, n: usize, fresh: &mut u64, out: &mut Vec<u64>) {
    out.clear();
    for _ in 0..n {
        if *fresh > 0 && rng.gen_bool(dup_ratio) {
            out.push(rng.gen_range(0..*fresh));
        } else {
            out.push(*fresh);
            *fresh += 1;
        }
    }
}

struct ThreadResult {
    inserted: u64,
    duplicates: u64,
    latency: Histogram,
}

fn worker(
    store: &Store,
    args: &BenchArgs,
    thread: u32,
    mut latency: Histogram,
    bar: &ProgressBar,
) -> CliResult<ThreadResult> {
    let ops = share(args.keys, args.threads, thread);
    let batch = args.batch as usize;
    let key_size = args.key_size as usize;
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(u64::from(thread)));
    let mut value = vec![0u8; args.value_size as usize];
    rng.fill_bytes(&mut value);
    let mut keys: Vec<Vec<u8>> = (0..batch).map(|_| Vec::with_capacity(key_size)).collect();
    let mut picks = Vec::with_capacity(batch);
    let (mut fresh, mut done) = (0u64, 0u64);
    let (mut inserted, mut duplicates) = (0u64, 0u64);
    let mut unreported = 0u64;
    while done < ops {
        let n = batch.min((ops - done) as usize);
        pick_keys(&mut rng, args.dup_ratio, n, &mut fresh, &mut picks);
        for (key, &index) in keys.iter_mut().zip(&picks) {
            make_key(key, thread, index, key_size);
        }
        let started = Instant::now();
        if n == 1 && batch == 1 {
            let outcome = store.check_or_insert(&keys[0], args.ttl, &value)?;
            latency.record(started.elapsed().as_nanos() as u64);
            match outcome {
                Outcome::Inserted => inserted += 1,
                Outcome::Duplicate(_) => duplicates += 1,
            }
        } else {
            let items: Vec<(&[u8], Duration, &[u8])> = keys[..n]
                .iter()
                .map(|k| (k.as_slice(), args.ttl, value.as_slice()))
                .collect();
            let outcomes = store.check_or_insert_batch(&items)?;
            latency.record(started.elapsed().as_nanos() as u64);
            let dups = outcomes.iter().filter(|o| o.is_duplicate()).count() as u64;
            duplicates += dups;
            inserted += n as u64 - dups;
        }
        done += n as u64;
        unreported += n as u64;
        if unreported >= 4096 {
            bar.inc(unreported);
            unreported = 0;
        }
    }
    bar.inc(unreported);
    Ok(ThreadResult {
        inserted,
        duplicates,
        latency,
    })
}

/// Runs the bench; `dir` is the store directory (fresh).
fn run_in(args: &BenchArgs, dir: &Path) -> CliResult<BenchReport> {
    let config = Config::default()
        .durability(args.durability.0)
        .late_duplicate_grace(args.late_grace.unwrap_or_default());
    let store = Store::open_with(dir, config)
        .context(format_args!("opening idem store {}", dir.display()))?;
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(args.keys), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:36}] {human_pos:>11}/{human_len:11} ops  {per_sec:0}  eta {eta:>3}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix("idem bench");
    let histograms: Vec<Histogram> = (0..args.threads).map(|_| Histogram::default()).collect();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let results: Vec<CliResult<ThreadResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = histograms
            .into_iter()
            .enumerate()
            .map(|(t, h)| {
                let (store, bar) = (&store, &bar);
                scope.spawn(move || worker(store, args, t as u32, h, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(CliError::new("a bench thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let rss_after = rss_bytes();
    let mut latency = Histogram::default();
    let (mut inserted, mut duplicates) = (0, 0);
    for result in results {
        let result = result?;
        inserted += result.inserted;
        duplicates += result.duplicates;
        latency.merge(&result.latency);
    }
    store.flush().context("flushing the store")?;
    let stats = store.stats();
    let metrics = store.metrics();
    store.close().context("closing the store")?;
    Ok(BenchReport {
        args: args.clone(),
        dir: dir.to_path_buf(),
        elapsed,
        inserted,
        duplicates,
        latency,
        rss_before,
        rss_after,
        stats,
        metrics,
    })
}

pub fn run(args: &BenchArgs) -> CliResult<BenchReport> {
    match &args.dir {
        Some(dir) => {
            if let Ok(mut entries) = std::fs::read_dir(dir) {
                if entries.next().is_some() {
                    return Err(CliError::new(format!(
                        "--dir {} is not empty: the bench needs a fresh store directory",
                        dir.display()
                    )));
                }
            }
            run_in(args, dir)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("idem-bench-")
                .tempdir()
                .context("creating a temporary directory")?;
            run_in(args, temp.path())
        }
    }
}

fn ttl_text(ttl: Duration) -> String {
    let secs = ttl.as_secs_f64();
    if secs >= 86_400.0 && secs % 86_400.0 == 0.0 {
        format!("{}d", secs / 86_400.0)
    } else if secs >= 3600.0 && secs % 3600.0 == 0.0 {
        format!("{}h", secs / 3600.0)
    } else if secs >= 60.0 && secs % 60.0 == 0.0 {
        format!("{}m", secs / 60.0)
    } else {
        format!("{secs}s")
    }
}

pub fn render(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let a = &r.args;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "idem bench: {} ops ({:.1}% repeats), {} threads, batch {}, durability {}, key {} B, value {} B, ttl {}",
        fmt::count(a.keys),
        a.dup_ratio * 100.0,
        a.threads,
        fmt::count(u64::from(a.batch)),
        a.durability,
        a.key_size,
        a.value_size,
        ttl_text(a.ttl),
    );
    let _ = writeln!(
        out,
        "  store: {}{}",
        r.dir.display(),
        if a.dir.is_some() {
            " (kept)"
        } else {
            " (removed)"
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  throughput         {} ops/s  ({} in {})",
        fmt::rate(r.ops_per_sec()),
        fmt::count(r.ops()),
        fmt::nanos(r.elapsed.as_nanos() as u64)
    );
    let h = &r.latency;
    let _ = writeln!(
        out,
        "  latency per call   p50 {}  p99 {}  p999 {}  max {}  ({} calls of {} op{})",
        fmt::nanos(h.quantile(0.5)),
        fmt::nanos(h.quantile(0.99)),
        fmt::nanos(h.quantile(0.999)),
        fmt::nanos(h.max()),
        fmt::count(h.count()),
        fmt::count(u64::from(a.batch)),
        if a.batch == 1 { "" } else { "s" },
    );
    let _ = writeln!(
        out,
        "  outcomes           {} inserted, {} duplicates ({:.2}%)",
        fmt::count(r.inserted),
        fmt::count(r.duplicates),
        r.duplicates as f64 * 100.0 / r.ops().max(1) as f64
    );
    let d = &r.metrics.decisions;
    let _ = writeln!(
        out,
        "  decisions          {} inserted ({} late duplicates{}), {} replays, {} in flight, {} failed, {} fingerprint mismatches",
        fmt::count(d.inserted),
        fmt::count(d.late_duplicates),
        if a.late_grace.is_some() { "" } else { " (off: --late-grace)" },
        fmt::count(d.replays),
        fmt::count(d.in_flight),
        fmt::count(d.failures),
        fmt::count(d.fingerprint_mismatches),
    );
    let _ = writeln!(
        out,
        "  live keys          {}",
        fmt::count(r.stats.live_keys)
    );
    match (r.rss_before, r.rss_after, r.rss_per_key()) {
        (Some(before), Some(after), Some(per_key)) => {
            let _ = writeln!(
                out,
                "  memory             {:.1} B/key of RSS  (VmRSS {} -> {}; the index holds {:.1} B/key)",
                per_key,
                fmt::bytes(before as f64),
                fmt::bytes(after as f64),
                r.index_per_key().unwrap_or(0.0),
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  memory             (no /proc/self/status: RSS unknown)"
            );
        }
    }
    if let Some(disk) = r.disk_per_key() {
        let _ = writeln!(
            out,
            "  disk               {:.1} B/key  ({} in {} segment{})",
            disk,
            fmt::bytes(r.stats.disk_bytes as f64),
            r.stats.segments,
            if r.stats.segments == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(
        out,
        "  fsyncs             {}  ({:.1} ops per fsync)",
        fmt::count(r.stats.fsyncs),
        r.ops() as f64 / r.stats.fsyncs.max(1) as f64
    );
    out
}

pub fn to_json(r: &BenchReport) -> serde_json::Value {
    let a = &r.args;
    let h = &r.latency;
    serde_json::json!({
        "ops": r.ops(),
        "threads": a.threads,
        "batch": a.batch,
        "durability": a.durability.to_string(),
        "key_size": a.key_size,
        "value_size": a.value_size,
        "dup_ratio": a.dup_ratio,
        "ttl_secs": a.ttl.as_secs_f64(),
        "seed": a.seed,
        "elapsed_secs": r.elapsed.as_secs_f64(),
        "ops_per_sec": r.ops_per_sec(),
        "latency_ns": {
            "calls": h.count(),
            "mean": h.mean(),
            "p50": h.quantile(0.5),
            "p99": h.quantile(0.99),
            "p999": h.quantile(0.999),
            "max": h.max(),
        },
        "inserted": r.inserted,
        "duplicates": r.duplicates,
        "decisions": {
            "inserted": r.metrics.decisions.inserted,
            "late_duplicates": r.metrics.decisions.late_duplicates,
            "replays": r.metrics.decisions.replays,
            "in_flight": r.metrics.decisions.in_flight,
            "failed": r.metrics.decisions.failures,
            "fingerprint_mismatches": r.metrics.decisions.fingerprint_mismatches,
        },
        "late_grace_secs": a.late_grace.map(|g| g.as_secs_f64()),
        "live_keys": r.stats.live_keys,
        "rss_before_bytes": r.rss_before,
        "rss_after_bytes": r.rss_after,
        "rss_bytes_per_key": r.rss_per_key(),
        "index_bytes": r.stats.index_bytes,
        "index_bytes_per_key": r.index_per_key(),
        "disk_bytes": r.stats.disk_bytes,
        "disk_bytes_per_key": r.disk_per_key(),
        "segments": r.stats.segments,
        "fsyncs": r.stats.fsyncs,
        "dir": r.dir.display().to_string(),
    })
}

pub fn main(args: &BenchArgs) -> CliResult<ExitCode> {
    let report = run(args)?;
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        let argv = ["bench", "--quiet"].iter().chain(extra);
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn shares_add_up() {
        for (total, threads) in [(10, 3), (1, 4), (1_000_000, 7), (5, 5)] {
            let sum: u64 = (0..threads).map(|t| share(total, threads, t)).sum();
            assert_eq!(sum, total);
        }
    }

    #[test]
    fn keys_are_sized_and_distinct() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        make_key(&mut a, 1, 5, 24);
        make_key(&mut b, 0, (1 << 40) + 5, 24);
        assert_eq!(a.len(), 24);
        make_key(&mut b, 1, 6, 24);
        assert_ne!(a, b);
        make_key(&mut b, 2, 5, 24);
        assert_ne!(a, b);
        make_key(&mut b, 1, 5, 100);
        assert_eq!(b.len(), 100);
        assert!(b.starts_with(&a[..16]));
    }

    #[test]
    fn picks_repeat_at_the_ratio() {
        let mut rng = StdRng::seed_from_u64(1);
        let (mut fresh, mut picks, mut repeats) = (0u64, Vec::new(), 0usize);
        for _ in 0..100 {
            let before = fresh;
            pick_keys(&mut rng, 0.25, 1000, &mut fresh, &mut picks);
            repeats += 1000 - (fresh - before) as usize;
            assert!(picks.iter().all(|&k| k < fresh));
        }
        let ratio = repeats as f64 / 100_000.0;
        assert!((ratio - 0.25).abs() < 0.01, "{ratio}");
        let mut fresh = 0;
        pick_keys(&mut rng, 1.0, 3, &mut fresh, &mut picks);
        assert_eq!(picks, [0, 0, 0], "the first key is new, then all repeat it");
    }

    #[test]
    fn vm_rss_parses() {
        let status = "Name:\tidem\nVmPeak:\t  100 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().unwrap() > 0);
        }
    }

    #[test]
    fn small_runs_count_every_op() {
        for extra in [
            &["--keys", "2000", "--threads", "2", "--durability", "never"][..],
            &[
                "--keys",
                "999",
                "--threads",
                "3",
                "--batch",
                "100",
                "--dup-ratio",
                "0.5",
            ],
            &[
                "--keys",
                "300",
                "--threads",
                "2",
                "--durability",
                "sync",
                "--batch",
                "7",
            ],
        ] {
            let a = args(extra);
            let report = run(&a).unwrap();
            assert_eq!(report.ops(), a.keys, "{extra:?}");
            assert_eq!(report.stats.live_keys, report.inserted, "{extra:?}");
            let expected_calls: u64 = (0..a.threads)
                .map(|t| share(a.keys, a.threads, t).div_ceil(u64::from(a.batch)))
                .sum();
            assert_eq!(report.latency.count(), expected_calls, "{extra:?}");
            let d = report.metrics.decisions;
            assert_eq!(d.inserted, report.inserted, "{extra:?}");
            assert_eq!(d.replays, report.duplicates, "{extra:?}");
            let text = render(&report);
            assert!(text.contains("ops/s"), "{text}");
            assert!(text.contains("decisions"), "{text}");
            let json = to_json(&report);
            assert_eq!(json["ops"], a.keys);
            assert_eq!(json["live_keys"], report.inserted);
            assert!(json["disk_bytes_per_key"].as_f64().unwrap() > 0.0);
        }
        let report = run(&args(&[
            "--keys",
            "1000",
            "--dup-ratio",
            "0.3",
            "--durability",
            "never",
        ]))
        .unwrap();
        let share = report.duplicates as f64 / 1000.0;
        assert!((0.2..0.4).contains(&share), "{share}");
    }

    #[test]
    fn ttl_text_is_short() {
        assert_eq!(ttl_text(Duration::from_secs(86_400)), "1d");
        assert_eq!(ttl_text(Duration::from_secs(7200)), "2h");
        assert_eq!(ttl_text(Duration::from_secs(90)), "90s");
        assert_eq!(ttl_text(Duration::from_secs(120)), "2m");
    }
}
