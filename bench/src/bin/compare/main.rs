//! `compare`: idem against its peers on one dedup workload.
//!
//! ```text
//! cargo run --release -p idem-bench --bin compare                 # full run, writes results/
//! cargo run --release -p idem-bench --bin compare -- --quick      # smoke test, writes results/tmp/
//! cargo run --release -p idem-bench --bin compare -- --ops 500000 --peers idem-never-1t,sled
//! cargo run --release -p idem-bench --bin compare -- --threads 1,2,4,8,16 --peers scaling
//! cargo run --release -p idem-bench --bin compare -- --list
//! ```
//!
//! The workload (see `idem_bench::Workload`): 16-byte keys = source id ++ sequence number,
//! 16-byte results, 1% re-sent keys, TTL 1 h, seed `idem_bench::SEED`. Every peer answers the same
//! question per operation, "is this key new? if so record it with its result", and every peer
//! runs in its own child process of this binary (`compare --peer NAME`), so one peer's memory
//! does not pollute another's RSS. RSS is read from `/proc/self/status` (VmRSS) after the
//! workload is generated and before the engine is opened, and again after the run (after the
//! engine's flush, before close); disk is the bytes allocated to the data directory after close;
//! CPU time is `getrusage(RUSAGE_SELF)` of the child from before opening to after closing.
//!
//! Layout: `compare/peer.rs` (the `Peer` / `Engine` traits and the timing harness),
//! `compare/peers/` (one module per peer), `compare/rows.rs` (the catalog of rows),
//! `compare/report.rs` (compare.md), `compare/svg.rs` (compare.svg), `compare/facts.rs`
//! (formatting, machine facts), `compare/restart.rs` (the restart targets, measured after the
//! rows). This file: arguments, and the parent/child processes.

mod facts;
mod peer;
mod peers;
mod report;
mod restart;
mod rows;
mod svg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use idem_bench::{Workload, SEED};

use facts::{fmt_int, read_trim};
use report::{best_run, Report, Row};
use rows::{catalog, RowSpec, Size, DEFAULT_THREADS, SCALING};

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

#[derive(Debug, Clone)]
struct Args {
    ops: usize,
    sync_ops: usize,
    ram_keys: usize,
    quick: bool,
    /// Thread counts of the scaling rows (idem `Never` single-key and the ceiling).
    threads: Vec<usize>,
    /// Rows to run (names, or `scaling`), as given.
    peers: Option<Vec<String>>,
    child_peer: Option<String>,
    out_dir: PathBuf,
    scratch: PathBuf,
    keep: bool,
    /// Runs per row (in rounds over all rows); the fastest run is reported.
    repeat: usize,
    /// Child side of the restart measurements: the step, its directory and its key count.
    restart_step: Option<(String, PathBuf, u64)>,
}

const USAGE: &str = "\
compare: idem against its peers on one dedup workload

USAGE: compare [--ops N] [--sync-ops N] [--ram-keys N] [--threads LIST] [--quick] [--peers a,b,..]
               [--out-dir DIR] [--scratch DIR] [--keep] [--repeat N] [--list]

  --ops N         operations per peer run (default 2000000; --quick: 100000)
  --sync-ops N    operations of the idem Sync single-key 64-thread run (default 50000; --quick: 5000)
  --ram-keys N    operations of the idem RAM check (default 10000000; --quick: 200000)
  --threads LIST  thread counts of the scaling rows, idem Never single-key and the hashbrown
                  ceiling, e.g. 1,2,4,8,16 (default 1,2; the targets need 1 and 2); the report's
                  \"Thread scaling\" table gives ops/s and CPU time per op at each
  --quick         smoke-test sizes; writes to results/tmp/ unless --out-dir is given
  --peers LIST    run only these rows (names from --list; `scaling` = every scaling row;
                  `restart` = the restart measurements, run after the rows)
  --out-dir DIR   where compare.md and compare.svg go (default results/, or results/tmp/ with --quick)
  --scratch DIR   where data directories are created (default results/tmp/; must be a real disk:
                  fsync on tmpfs is free and would flatter the durable modes)
  --keep          keep the data directories
  --repeat N      run every row N times, in N rounds over all rows, and report each row's
                  fastest run (default 1): other load on the machine only ever slows a run down
  --list          list the rows (with the thread counts of --threads, if given first)
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
    let mut threads = DEFAULT_THREADS.to_vec();
    let mut peers: Option<Vec<String>> = None;
    let mut child_peer = None;
    let mut out_dir = None;
    let mut scratch = None;
    let mut keep = false;
    let mut repeat = 1;
    let mut restart_step = None;
    fn number(v: Option<String>, flag: &str) -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a value"))?;
        let v = v.replace('_', "");
        v.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or(format!("{flag}: not a positive number: {v}"))
    }
    fn list(v: Option<String>, flag: &str) -> Result<Vec<String>, String> {
        let v = v.ok_or(format!("{flag} needs a value"))?;
        Ok(v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect())
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ops" => ops = Some(number(args.next(), "--ops")?),
            "--sync-ops" => sync_ops = Some(number(args.next(), "--sync-ops")?),
            "--ram-keys" => ram_keys = Some(number(args.next(), "--ram-keys")?),
            "--threads" => {
                threads = list(args.next(), "--threads")?
                    .into_iter()
                    .map(|t| number(Some(t), "--threads"))
                    .collect::<Result<_, _>>()?;
                threads.sort_unstable();
                threads.dedup();
            }
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--repeat" => repeat = number(args.next(), "--repeat")?,
            "--peers" => peers = Some(list(args.next(), "--peers")?),
            "--peer" => child_peer = Some(args.next().ok_or("--peer needs a value")?),
            "--restart-step" => {
                let missing = "--restart-step needs STEP DIR N";
                let step = args.next().ok_or(missing)?;
                let dir = PathBuf::from(args.next().ok_or(missing)?);
                let n = args.next().and_then(|n| n.parse().ok()).ok_or(missing)?;
                restart_step = Some((step, dir, n));
            }
            "--out-dir" => {
                out_dir = Some(PathBuf::from(args.next().ok_or("--out-dir needs a value")?))
            }
            "--scratch" => {
                scratch = Some(PathBuf::from(args.next().ok_or("--scratch needs a value")?))
            }
            "--list" => {
                for row in catalog(&threads) {
                    println!(
                        "{:<20} {} ({} thread(s), {} op(s) per call){}",
                        row.name,
                        row.label,
                        row.shape.threads,
                        row.shape.batch,
                        if row.scaling { " [scaling]" } else { "" }
                    );
                }
                println!(
                    "{:<20} the worst reopen after a kill at --ram-keys live keys, and replay \
                     against insert at --ops keys (run after the rows)",
                    restart::RESTART
                );
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
    if let Some(names) = &peers {
        let rows = catalog(&threads);
        for n in names {
            if n != SCALING && n != restart::RESTART && !rows.iter().any(|r| &r.name == n) {
                return Err(format!(
                    "unknown peer {n:?} (see --list; scaling rows exist at the --threads counts)"
                ));
            }
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
        threads,
        peers,
        child_peer,
        out_dir: out_dir.unwrap_or(default_out),
        scratch: scratch.unwrap_or(results.join("tmp")),
        keep,
        repeat,
        restart_step,
    })
}

/// The flags of this run that differ from the defaults, as they would be typed.
fn command_flags(a: &Args) -> String {
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
    if a.threads != DEFAULT_THREADS {
        let threads: Vec<String> = a.threads.iter().map(usize::to_string).collect();
        flags.push_str(&format!(" --threads {}", threads.join(",")));
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

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("compare: {message}");
            std::process::exit(2);
        }
    };
    let outcome = match (&args.child_peer, &args.restart_step) {
        (_, Some((step, dir, n))) => restart::run_step(step, dir, *n),
        (Some(name), None) => run_child(&args, name),
        (None, None) => run_parent(&args),
    };
    if let Err(message) = outcome {
        eprintln!("compare: {message}");
        std::process::exit(1);
    }
}

// ------------------------------------------------------------------------------------------
// Child side: run one row, print one RESULT line.
// ------------------------------------------------------------------------------------------

fn run_child(args: &Args, name: &str) -> Result<(), String> {
    let spec = catalog(&args.threads)
        .into_iter()
        .find(|r| r.name == name)
        .ok_or(format!("unknown peer {name:?}"))?;
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
    let result = spec.peer.run(&dir, &keys, spec.shape);
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
                "RESULT\tpeer={name}\tops={}\tsecs={:.6}\tcpu={:.6}\tp50={}\tp99={}\tp999={}\tmean={:.0}\tstall_1ms={}\tmax={}\tlat_n={}\tdups={}\texpected_dups={expected_dups}\tlive={}\trss_before={}\trss_after={}\tdisk={}\tdisk_apparent={}\thas_disk={}\tnote={}",
                m.ops,
                m.secs,
                m.cpu_secs,
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

// ------------------------------------------------------------------------------------------
// Parent side: run every row in a child process, then report.
// ------------------------------------------------------------------------------------------

/// The rows `--peers` selects (all by default), in catalog order.
fn selected_rows(args: &Args) -> Vec<RowSpec> {
    catalog(&args.threads)
        .into_iter()
        .filter(|row| match &args.peers {
            None => true,
            Some(names) => names
                .iter()
                .any(|n| *n == row.name || (n == SCALING && row.scaling)),
        })
        .collect()
}

fn run_parent(args: &Args) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let selected = selected_rows(args);
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
    let restarted = match &args.peers {
        Some(names) if !names.iter().any(|n| n == restart::RESTART) => None,
        _ => Some(restart::measure(
            &exe,
            &args.scratch,
            args.ram_keys as u64,
            args.ops as u64,
            args.keep,
        )?),
    };
    let load = (load_before, read_trim("/proc/loadavg"));
    let report = Report::new(args, rows, restarted, load);
    let markdown = report.markdown();
    print!("{markdown}");
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("creating {}: {e}", args.out_dir.display()))?;
    let md_path = args.out_dir.join("compare.md");
    let svg_path = args.out_dir.join("compare.svg");
    std::fs::write(&md_path, &markdown)
        .map_err(|e| format!("writing {}: {e}", md_path.display()))?;
    std::fs::write(&svg_path, svg::chart(report.rows(), args.ops))
        .map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
    eprintln!(
        "compare: wrote {} and {}",
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// Runs one row in a child process of this executable and parses its RESULT line.
fn run_peer_child(exe: &Path, args: &Args, spec: &RowSpec) -> Result<Row, String> {
    eprint!("compare: {:<20} ", spec.name);
    let started = Instant::now();
    let threads: Vec<String> = args.threads.iter().map(usize::to_string).collect();
    let mut cmd = Command::new(exe);
    cmd.args(["--peer", &spec.name])
        .args(["--ops", &args.ops.to_string()])
        .args(["--sync-ops", &args.sync_ops.to_string()])
        .args(["--ram-keys", &args.ram_keys.to_string()])
        .args(["--threads", &threads.join(",")])
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
    let fields: HashMap<String, String> = match result_fields(&stdout, "RESULT") {
        Some(fields) => fields,
        None => HashMap::from([(
            "skipped".to_string(),
            format!("child failed ({})", output.status),
        )]),
    };
    let row = Row {
        spec: spec.clone(),
        fields,
    };
    match (row.skipped(), row.ops_per_sec()) {
        (Some(why), _) => eprintln!("skipped: {why}"),
        (None, Some(rate)) => eprintln!(
            "{:>12} ops/s  {:>8} µs CPU/op  ({:.1} s wall)",
            fmt_int(rate),
            row.cpu_per_op()
                .map(|s| format!("{:.3}", s * 1e6))
                .unwrap_or_else(|| "-".into()),
            started.elapsed().as_secs_f64()
        ),
        (None, None) => eprintln!("no result"),
    }
    Ok(row)
}

/// The `key=value` fields of a child's output line that starts with `tag` and a tab.
fn result_fields(stdout: &str, tag: &str) -> Option<HashMap<String, String>> {
    let line = stdout.lines().find(|l| {
        l.strip_prefix(tag)
            .is_some_and(|rest| rest.starts_with('\t'))
    })?;
    Some(
        line.split('\t')
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}
