//! The report: what every child measured, turned into `compare.md` (results, summary against the
//! ceiling, thread scaling, ratios, the issue #10 targets, notes per row).
//!
//! Every ratio involving idem's speed is taken against the hashbrown ceiling measured in the same
//! run (`hashbrown-Nt`), never against a number from another run or machine.

use std::collections::HashMap;

use idem_bench::{DUP_PER_10K, RETRY_WINDOW, SEED, SOURCES, TTL};

use crate::facts::{
    cpu_model, crate_versions, display_path, fmt_bytes, fmt_int, fmt_nanos, fs_type_of, git_commit,
    mem_total, nproc, read_trim, utc_now,
};
use crate::restart::{median_of, RestartResult};
use crate::rows::{names, Group, RowSpec, BATCH, SYNC_THREADS};
use crate::Args;

/// One row: its spec and the fields of its child's RESULT line.
#[derive(Clone)]
pub struct Row {
    pub spec: RowSpec,
    pub fields: HashMap<String, String>,
}

impl Row {
    pub fn skipped(&self) -> Option<&str> {
        self.fields.get("skipped").map(String::as_str)
    }

    pub fn num(&self, key: &str) -> f64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn ops_per_sec(&self) -> Option<f64> {
        if self.skipped().is_some() {
            return None;
        }
        let secs = self.num("secs");
        (secs > 0.0).then(|| self.num("ops") / secs)
    }

    /// CPU seconds (user + system, all threads, including open and close) per operation.
    pub fn cpu_per_op(&self) -> Option<f64> {
        let cpu = self.num("cpu");
        (self.skipped().is_none() && cpu > 0.0).then(|| cpu / self.num("ops").max(1.0))
    }

    pub fn live(&self) -> f64 {
        self.num("live")
    }

    /// Each round's ops/s, in round order (`None` for a round that measured nothing), when the
    /// row ran more than once (see [`best_run`]).
    pub fn round_rates(&self) -> Vec<Option<f64>> {
        self.fields
            .get("round_rates")
            .map_or_else(Vec::new, |rates| {
                rates.split(' ').map(|rate| rate.parse().ok()).collect()
            })
    }

    pub fn rss_per_key(&self) -> Option<f64> {
        let live = self.live();
        (self.skipped().is_none() && live > 0.0)
            .then(|| (self.num("rss_after") - self.num("rss_before")).max(0.0) / live)
    }

    pub fn disk_per_key(&self) -> Option<f64> {
        let live = self.live();
        (self.skipped().is_none() && self.num("has_disk") > 0.0 && live > 0.0)
            .then(|| self.num("disk") / live)
    }
}

/// The fastest of a row's runs, with every run's ops/s noted in field `round_rates` (in round
/// order, `-` for a run that measured nothing; see [`Row::round_rates`]).
pub fn best_run(runs: Vec<Row>) -> Row {
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
        .expect("at least one run per row");
    if runs.len() > 1 {
        let round_rates: Vec<String> = runs
            .iter()
            .map(|run| {
                run.ops_per_sec()
                    .map_or("-".into(), |rate| format!("{rate:.0}"))
            })
            .collect();
        best.fields
            .insert("round_rates".into(), round_rates.join(" "));
    }
    best
}

/// The ratio of `a` to `b` in each round where both measured something: the rounds run every
/// row once in turn, so a round's two runs are minutes apart at most, where the fastest runs of
/// two rows may come from rounds in different phases of a noisy machine.
fn round_ratios(a: &[Option<f64>], b: &[Option<f64>]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(a, b)| Some((*a)? / (*b)?))
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|x, y| x.partial_cmp(y).expect("finite ratios"));
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// How a ratio may also be read by CPU time per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByCpu {
    /// Both sides spend CPU the same way: the CPU-time ratio is shown beside the throughput one.
    Yes,
    /// Thread scaling of one engine, or an fsync-bound row (CPU time does not see the waiting).
    No,
}

/// `a / b` by throughput, named in prose.
struct RatioSpec {
    text: &'static str,
    a: String,
    b: String,
    by_cpu: ByCpu,
}

fn ratio(
    text: &'static str,
    a: impl Into<String>,
    b: impl Into<String>,
    by_cpu: ByCpu,
) -> RatioSpec {
    RatioSpec {
        text,
        a: a.into(),
        b: b.into(),
        by_cpu,
    }
}

/// One target of issue #10 and whether it was met.
struct Target {
    text: String,
    measured: String,
    verdict: &'static str,
    /// The same comparison by CPU time per operation, where that means something.
    by_cpu: String,
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

pub struct Report<'a> {
    args: &'a Args,
    rows: Vec<Row>,
    /// The restart measurements, if this run made them.
    restart: Option<RestartResult>,
    /// `/proc/loadavg` before the first row and after the last.
    load: (String, String),
}

impl<'a> Report<'a> {
    pub fn new(
        args: &'a Args,
        rows: Vec<Row>,
        restart: Option<RestartResult>,
        load: (String, String),
    ) -> Self {
        Report {
            args,
            rows,
            restart,
            load,
        }
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
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

    /// How many times less CPU per operation `a` needs than `b` (like `ratio`, bigger is better
    /// for `a`). Independent of other load on the machine, blind to time spent waiting for disk.
    fn cpu_ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.row(b)?.cpu_per_op()? / self.row(a)?.cpu_per_op()?)
    }

    /// `a / b` in each round and their median, for the targets table ("" with one round).
    fn per_round(&self, a: &str, b: &str) -> String {
        let (Some(a), Some(b)) = (self.row(a), self.row(b)) else {
            return String::new();
        };
        let ratios = round_ratios(&a.round_rates(), &b.round_rates());
        match median(&ratios) {
            Some(median) if ratios.len() > 1 => {
                let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
                format!("; by round {}, median **{median:.2}x**", each.join(" / "))
            }
            _ => String::new(),
        }
    }

    /// Thread counts of the scaling rows in this run, ascending.
    fn scaling_threads(&self) -> Vec<usize> {
        let mut threads: Vec<usize> = self
            .rows
            .iter()
            .filter(|r| r.spec.scaling)
            .map(|r| r.spec.shape.threads)
            .collect();
        threads.sort_unstable();
        threads.dedup();
        threads
    }

    fn ratio_specs() -> Vec<RatioSpec> {
        use ByCpu::*;
        let (never1, never2) = (names::idem_never(1), names::idem_never(2));
        let (ceil1, ceil2) = (names::ceiling(1), names::ceiling(2));
        vec![
            ratio(
                "idem Never 1 thread / ceiling 1 thread",
                &never1,
                &ceil1,
                Yes,
            ),
            ratio(
                "idem Never 2 threads / ceiling 2 threads",
                &never2,
                &ceil2,
                Yes,
            ),
            ratio(
                "idem Never batch of 1000 / ceiling 1 thread",
                names::IDEM_NEVER_BATCH,
                &ceil1,
                Yes,
            ),
            ratio(
                "idem Sync batch of 1000 / ceiling 1 thread",
                names::IDEM_SYNC_BATCH,
                &ceil1,
                No,
            ),
            ratio(
                "idem Never 2 threads / idem Never 1 thread",
                &never2,
                &never1,
                No,
            ),
            ratio(
                "idem Never with delta checkpoints / idem Never 1 thread (their cost)",
                names::IDEM_NEVER_DELTAS,
                &never1,
                Yes,
            ),
            ratio(
                "idem Never 1 thread, presized / ceiling 1 thread, presized (neither grows)",
                names::IDEM_NEVER_PRESIZED,
                names::CEILING_PRESIZED,
                Yes,
            ),
            ratio(
                "idem Never batch, presized / ceiling 1 thread, presized (neither grows)",
                names::IDEM_NEVER_BATCH_PRESIZED,
                names::CEILING_PRESIZED,
                Yes,
            ),
            ratio("ceiling 2 threads / ceiling 1 thread", &ceil2, &ceil1, No),
            ratio(
                "ceiling 1 thread / weak (SipHash) ceiling 1 thread",
                &ceil1,
                names::weak_ceiling(1),
                Yes,
            ),
            ratio("idem Never 1 thread / sled", &never1, names::SLED, Yes),
            ratio("idem Never 1 thread / fjall", &never1, names::FJALL, Yes),
            ratio(
                "idem Never 1 thread / redb (None, txn per op)",
                &never1,
                names::REDB_NONE,
                Yes,
            ),
            ratio(
                "idem Never 1 thread / Redis (pipelined)",
                &never1,
                names::REDIS,
                Yes,
            ),
            ratio("idem Never 1 thread / moka", &never1, names::MOKA, Yes),
            ratio(
                "idem Never batch / redb None batch",
                names::IDEM_NEVER_BATCH,
                names::REDB_NONE_BATCH,
                Yes,
            ),
            ratio(
                "idem Sync batch / fjall",
                names::IDEM_SYNC_BATCH,
                names::FJALL,
                Yes,
            ),
            ratio(
                "idem Sync batch / redb Immediate batch",
                names::IDEM_SYNC_BATCH,
                names::REDB_DURABLE_BATCH,
                Yes,
            ),
        ]
    }

    /// The issue #10 targets, each judged against the ceiling measured in this run.
    fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        let (never1, never2) = (names::idem_never(1), names::idem_never(2));
        let (ceil1, ceil2) = (names::ceiling(1), names::ceiling(2));
        let mut ratio_target =
            |text: &str, a: &str, b: &str, want: f64, strict: bool, by_cpu: ByCpu| {
                let meets = |r: f64| if strict { r > want } else { r >= want };
                let (measured, verdict) = match (self.ratio(a, b), self.rate(a), self.rate(b)) {
                    (Some(r), Some(ra), Some(rb)) => (
                        format!(
                            "{r:.2}x ({} vs {} ops/s){}",
                            fmt_int(ra),
                            fmt_int(rb),
                            self.per_round(a, b)
                        ),
                        verdict(meets(r)),
                    ),
                    _ => ("not measured (row skipped or not run)".to_string(), "N/A"),
                };
                let by_cpu = match self.cpu_ratio(a, b) {
                    Some(r) if by_cpu == ByCpu::Yes => format!(
                        "{r:.2}x ({})",
                        if meets(r) { "would pass" } else { "would miss" }
                    ),
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
            "idem Never single-key, 1 thread >= 0.8x ceiling (1 thread)",
            &never1,
            &ceil1,
            0.8,
            false,
            ByCpu::Yes,
        );
        ratio_target(
            "idem Never single-key, 2 threads >= 0.8x ceiling (2 threads)",
            &never2,
            &ceil2,
            0.8,
            false,
            ByCpu::Yes,
        );
        ratio_target(
            "idem Never single-key, 2 threads > 1.2x idem 1 thread",
            &never2,
            &never1,
            1.2,
            true,
            ByCpu::No,
        );
        ratio_target(
            "idem Never batch of 1000 >= 2x ceiling (1 thread)",
            names::IDEM_NEVER_BATCH,
            &ceil1,
            2.0,
            false,
            ByCpu::Yes,
        );
        ratio_target(
            "idem Sync batch of 1000 >= 0.4x ceiling (1 thread)",
            names::IDEM_SYNC_BATCH,
            &ceil1,
            0.4,
            false,
            ByCpu::No,
        );
        ratio_target(
            "(issue #11) idem Never transaction (dedup + state + position) >= 0.5x idem Never single-key (cost <= 2x)",
            names::IDEM_NEVER_TX,
            &never1,
            0.5,
            false,
            ByCpu::Yes,
        );
        // How much two threads can gain on this machine right now: the ceiling's own scaling.
        if let (Some(target), Some(headroom)) = (
            targets
                .iter_mut()
                .find(|t| t.text.contains("> 1.2x idem 1 thread")),
            self.ratio(&ceil2, &ceil1),
        ) {
            target.by_cpu =
                format!("- (the ceiling's own 2-thread gain in this run: {headroom:.2}x)");
        }
        let (measured, verdict_text) = match self.rate(names::IDEM_SYNC_MANY) {
            Some(r) => (format!("{} ops/s", fmt_int(r)), verdict(r >= 150_000.0)),
            None => ("not measured".into(), "N/A"),
        };
        targets.push(Target {
            text: format!("idem Sync single-key, {SYNC_THREADS} threads >= 150,000 ops/s"),
            measured,
            verdict: verdict_text,
            by_cpu: "-".into(),
        });
        let ram = self.row(names::IDEM_RAM);
        let (measured, verdict_text) = match ram.and_then(|r| Some((r, r.rss_per_key()?))) {
            Some((r, b)) => {
                let keys = r.live();
                let note = if keys < 9_000_000.0 {
                    format!(" (at {} keys, not 10M: indicative only)", fmt_int(keys))
                } else {
                    format!(" (at {} live keys)", fmt_int(keys))
                };
                (format!("{b:.1} B/key{note}"), verdict(b <= 24.0))
            }
            None => ("not measured".into(), "N/A"),
        };
        targets.push(Target {
            text: "RSS <= 24 B per live key at 10M keys".into(),
            measured,
            verdict: verdict_text,
            by_cpu: "-".into(),
        });
        let disk = ram.or(self.row(&never1));
        let (measured, verdict_text) = match disk.and_then(|r| Some((r, r.disk_per_key()?))) {
            Some((r, b)) => (
                format!(
                    "{b:.1} B/key ({}, {} live keys)",
                    r.spec.name,
                    fmt_int(r.live())
                ),
                verdict(b <= 56.0),
            ),
            None => ("not measured".into(), "N/A"),
        };
        targets.push(Target {
            text: "disk <= 56 B per live key".into(),
            measured,
            verdict: verdict_text,
            by_cpu: "-".into(),
        });
        if let Some(restart) = &self.restart {
            let worst = median_of(&restart.worst_opens);
            let indicative = if restart.live < 9_000_000 {
                format!(
                    " (at {} keys, not 10M: indicative only)",
                    fmt_int(restart.live as f64)
                )
            } else {
                String::new()
            };
            targets.push(Target {
                text: "restart: reopen after a kill just before a full checkpoint was due, \
                       10M live keys, default configuration <= 0.5 s (median of the reopens)"
                    .into(),
                measured: format!(
                    "median **{:.0} ms** of {} reopens ({}){indicative}",
                    worst * 1e3,
                    restart.worst_opens.len(),
                    ms_list(&restart.worst_opens)
                ),
                verdict: verdict(worst <= 0.5),
                by_cpu: "-".into(),
            });
            let replay = median_of(&restart.replay_opens);
            let rate = restart.insert_secs / replay;
            targets.push(Target {
                text: format!(
                    "restart: replay of {} keys never checkpointed >= 3x the rate they were \
                     inserted at (median of the reopens)",
                    fmt_int(restart.replay_keys as f64)
                ),
                measured: format!(
                    "**{rate:.2}x** (insert {:.0} ms, reopens {})",
                    restart.insert_secs * 1e3,
                    ms_list(&restart.replay_opens)
                ),
                verdict: verdict(rate >= 3.0),
                by_cpu: "-".into(),
            });
        }
        targets
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.results_table(&mut md);
        self.summary(&mut md);
        self.scaling(&mut md);
        self.ratios(&mut md);
        self.restart_section(&mut md);
        self.targets_table(&mut md);
        self.notes(&mut md);
        md
    }

    fn header(&self, md: &mut String) {
        let a = self.args;
        md.push_str("# idem vs peers: the dedup workload\n\n");
        if a.quick {
            md.push_str(
                "**Quick (smoke-test) run: sizes too small for the numbers to mean much.**\n\n",
            );
        }
        md.push_str(&format!(
            "Generated by `cargo run --release -p idem-bench --bin compare{}` on {}.\n\n",
            crate::command_flags(a),
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
             - Each peer runs in a fresh child process (`compare --peer NAME`){}.\n\
             - The ceiling: 64 shards of `parking_lot::Mutex<hashbrown::HashMap<[u8;16],[u8;16]>>` with hashbrown's default hasher (foldhash), run in the same process model; every idem ratio below is taken against it.\n\n",
            DUP_PER_10K as f64 / 100.0,
            fmt_int(RETRY_WINDOW as f64),
            TTL.as_secs(),
            if a.repeat > 1 {
                format!("; each peer ran {} times, in rounds over all peers, and its fastest run is reported", a.repeat)
            } else {
                String::new()
            }
        ));
    }

    fn results_table(&self, md: &mut String) {
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
                    spec.shape.threads,
                    spec.shape.batch,
                    why
                ));
                continue;
            }
            let unit = if spec.shape.batch > 1 {
                format!("batch of {}", spec.shape.batch)
            } else {
                "op".into()
            };
            let dups_ok = row.num("dups") == row.num("expected_dups");
            md.push_str(&format!(
                "| {} (`{}`) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |\n",
                spec.label,
                spec.name,
                spec.group.code(),
                spec.shape.threads,
                spec.shape.batch,
                row.ops_per_sec().map(fmt_int).unwrap_or_default(),
                fmt_cpu_us(row.cpu_per_op()),
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
        for g in Group::ALL {
            md.push_str(&format!("- **{}**: {}.\n", g.code(), g.describe()));
        }
        md.push_str(
            "\nPairings: idem `Never` vs sled (default), fjall (default) and redb `Durability::None` (group N); \
             idem `Sync` batch of 1000 vs redb `Durability::Immediate` batch of 1000 (group B); \
             idem `Sync` single-key has no embedded peer here (group S); moka, Redis and the two sharded maps are in-memory references (group M): \
             the hashbrown one is the ceiling idem is judged against, the std `HashMap` with SipHash is the weak ceiling of earlier reports.\n\n",
        );
        md.push_str(
            "Columns: *ops/s* = operations / wall time of the run (a batch of 1000 counts 1000). \
             *CPU µs/op* = CPU time (user + system, all threads, from `getrusage(RUSAGE_SELF)` in the child, from opening to closing; Redis: server + client) / operations: \
             less sensitive than ops/s to other load on the machine. \
             *p50/p99* = latency of one operation, or of one batch call where *latency of* says so; \
             every operation (batch) is timed. *RSS B/key* = (VmRSS after the run − VmRSS before opening) / live keys \
             (Redis: the server process). *disk B/key* = bytes allocated to the data directory after flush and close / live keys. \
             *dups* = operations answered \"duplicate\" (must equal the workload's re-sends).\n\n",
        );
    }

    /// The headline rows of issue #10, each beside the ceiling at its own thread count (batches:
    /// beside the 1-thread ceiling; the 64-thread `Sync` row has an absolute target instead).
    fn summary(&self, md: &mut String) {
        md.push_str(
            "## Summary against the ceiling\n\n\
             The rows issue #10 sets targets for, each beside the hashbrown ceiling measured in this run: \
             at the same thread count for single-key rows, at 1 thread for batches.\n\n\
             | row | threads | ops/call | ops/s | CPU µs/op | ceiling ops/s | x ceiling | x ceiling by CPU/op |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        // (row, thread count of the ceiling it is set beside; None: not compared with it)
        let summary_rows = [
            (names::idem_never(1), Some(1)),
            (names::idem_never(2), Some(2)),
            (names::IDEM_NEVER_BATCH.to_string(), Some(1)),
            (names::IDEM_SYNC_BATCH.to_string(), Some(1)),
            (names::IDEM_SYNC_MANY.to_string(), None),
            (names::ceiling(1), None),
            (names::ceiling(2), None),
        ];
        for (name, ceiling_threads) in summary_rows {
            let name = name.as_str();
            let Some(row) = self.rows.iter().find(|r| r.spec.name == name) else {
                continue;
            };
            let (ceiling_rate, ratio, by_cpu) = match ceiling_threads {
                Some(t) => {
                    let ceiling = names::ceiling(t);
                    // CPU time does not see the waiting for fsync.
                    let by_cpu = (!name.starts_with("idem-sync"))
                        .then(|| self.cpu_ratio(name, &ceiling))
                        .flatten();
                    (
                        self.rate(&ceiling)
                            .map(|r| format!("{} ({t}t)", fmt_int(r)))
                            .unwrap_or_else(|| "not run".into()),
                        fmt_ratio(self.ratio(name, &ceiling)),
                        fmt_ratio(by_cpu),
                    )
                }
                None => ("-".into(), "-".into(), "-".into()),
            };
            md.push_str(&format!(
                "| {} (`{name}`) | {} | {} | {} | {} | {ceiling_rate} | {ratio} | {by_cpu} |\n",
                row.spec.label,
                row.spec.shape.threads,
                row.spec.shape.batch,
                row.ops_per_sec()
                    .map(fmt_int)
                    .unwrap_or_else(|| "skipped".into()),
                fmt_cpu_us(row.cpu_per_op()),
            ));
        }
        md.push('\n');
    }

    /// ops/s and CPU per operation of idem `Never` single-key and the ceiling at each thread
    /// count of the run (`--threads`).
    fn scaling(&self, md: &mut String) {
        let threads = self.scaling_threads();
        if threads.is_empty() {
            return;
        }
        md.push_str(&format!(
            "## Thread scaling\n\n\
             idem `Never` single-key and the hashbrown ceiling at each thread count of this run (`--threads`); \
             the machine has {} hardware thread(s): above that, threads share cores and ops/s cannot grow, while CPU µs/op shows what each operation costs. \
             *speed-up* = ops/s / ops/s at the smallest thread count.\n\n\
             | threads | idem ops/s | idem CPU µs/op | idem speed-up | ceiling ops/s | ceiling CPU µs/op | ceiling speed-up | idem / ceiling | idem / ceiling by CPU/op |\n\
             |--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
            nproc()
        ));
        let base = threads[0];
        let speedup = |name: String, base_name: String| fmt_ratio(self.ratio(&name, &base_name));
        for &t in &threads {
            let (idem, ceiling) = (names::idem_never(t), names::ceiling(t));
            let cpu = |name: &str| fmt_cpu_us(self.row(name).and_then(Row::cpu_per_op));
            let rate = |name: &str| self.rate(name).map(fmt_int).unwrap_or_else(|| "-".into());
            md.push_str(&format!(
                "| {t} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                rate(&idem),
                cpu(&idem),
                speedup(idem.clone(), names::idem_never(base)),
                rate(&ceiling),
                cpu(&ceiling),
                speedup(ceiling.clone(), names::ceiling(base)),
                fmt_ratio(self.ratio(&idem, &ceiling)),
                fmt_ratio(self.cpu_ratio(&idem, &ceiling)),
            ));
        }
        md.push('\n');
    }

    fn ratios(&self, md: &mut String) {
        md.push_str(
            "## Ratios\n\nBy throughput (ops/s); in parentheses the same ratio by CPU time per operation \
             (which other load on the machine disturbs less, but which does not see time spent waiting for the disk). \
             \"Ceiling\" is the sharded hashbrown map measured in this run.\n\n",
        );
        for spec in Self::ratio_specs() {
            let by_cpu = (spec.by_cpu == ByCpu::Yes)
                .then(|| self.cpu_ratio(&spec.a, &spec.b))
                .flatten();
            md.push_str(&format!(
                "- {}: {}{}\n",
                spec.text,
                self.ratio(&spec.a, &spec.b)
                    .map(|r| format!("**{r:.2}x**"))
                    .unwrap_or_else(|| "n/a (row skipped or not run)".into()),
                by_cpu
                    .map(|r| format!(" (CPU/op: {r:.2}x)"))
                    .unwrap_or_default()
            ));
        }
    }

    fn restart_section(&self, md: &mut String) {
        let Some(restart) = &self.restart else {
            return;
        };
        md.push_str(&format!(
            "\n## Restart\n\n\
             Each reopen is `Store::open` timed in a fresh process, the files in the page cache \
             (they were just written), dropped without `close` so that the next reopen meets the \
             same files. *Worst case*: {} keys written in the default configuration (a full \
             checkpoint every {} MiB of log, no deltas), the store killed (dropped, flushed, no \
             checkpoint) just before its next checkpoint was due: {} entries come from the \
             checkpoint and {} records are replayed. *Replay*: {} keys inserted on one thread \
             into a store that never checkpoints, then reopened: every record is replayed.\n\n\
             | measurement | reopens | median | fastest | slowest |\n|---|---|--:|--:|--:|\n",
            fmt_int(restart.live as f64),
            idem::Config::DEFAULT_CHECKPOINT_EVERY_BYTES >> 20,
            fmt_int(restart.checkpoint_entries as f64),
            fmt_int(restart.replayed as f64),
            fmt_int(restart.replay_keys as f64),
        ));
        let stats = |opens: &[f64]| {
            let fastest = opens.iter().copied().fold(f64::INFINITY, f64::min);
            let slowest = opens.iter().copied().fold(0.0, f64::max);
            format!(
                "{} | {:.0} ms | {:.0} ms | {:.0} ms",
                ms_list(opens),
                median_of(opens) * 1e3,
                fastest * 1e3,
                slowest * 1e3
            )
        };
        md.push_str(&format!(
            "| worst case, {} live keys | {} |\n",
            fmt_int(restart.live as f64),
            stats(&restart.worst_opens)
        ));
        md.push_str(&format!(
            "| replay of {} keys (inserted in {:.0} ms) | {} |\n",
            fmt_int(restart.replay_keys as f64),
            restart.insert_secs * 1e3,
            stats(&restart.replay_opens)
        ));
    }

    fn targets_table(&self, md: &mut String) {
        md.push_str(
            "\n## Targets (issue #10)\n\nEach ratio is against the hashbrown ceiling measured in this run. \
             The verdict is by throughput, fastest run against fastest run; *by round* gives the same ratio within each round \
             (the rounds run every row once in turn, so a round's two runs are closest in time) and their median, which a \
             fast or slow phase of a noisy machine in one round moves less; *by CPU/op* says what the ratio is by CPU time per operation.\n\n\
             | target | measured | verdict | by CPU/op |\n|---|---|:-:|---|\n",
        );
        for t in self.targets() {
            md.push_str(&format!(
                "| {} | {} | **{}** | {} |\n",
                t.text, t.measured, t.verdict, t.by_cpu
            ));
        }
    }

    fn notes(&self, md: &mut String) {
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
            let rates: Vec<String> = row
                .round_rates()
                .into_iter()
                .flatten()
                .map(fmt_int)
                .collect();
            let runs = if rates.is_empty() {
                String::new()
            } else {
                format!(
                    ". Runs (ops/s): {}; the fastest is reported",
                    rates.join(" / ")
                )
            };
            md.push_str(&format!("- `{}`: {}{}\n", row.spec.name, note, runs));
        }
    }
}

/// Seconds as a list of whole milliseconds: "512 / 498 / 530 ms".
fn ms_list(secs: &[f64]) -> String {
    let each: Vec<String> = secs.iter().map(|s| format!("{:.0}", s * 1e3)).collect();
    format!("{} ms", each.join(" / "))
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

fn fmt_cpu_us(secs_per_op: Option<f64>) -> String {
    secs_per_op
        .map(|s| format!("{:.2}", s * 1e6))
        .unwrap_or_else(|| "-".into())
}

/// `BATCH` is named in the group descriptions; keep them in step.
const _: () = assert!(BATCH == 1000);

#[cfg(test)]
mod tests {
    use super::{median, round_ratios};

    #[test]
    fn round_ratios_pair_the_rounds_and_skip_one_that_measured_nothing() {
        let a = [Some(2.0), None, Some(3.0), Some(1.0)];
        let b = [Some(4.0), Some(1.0), Some(2.0), None];
        assert_eq!(round_ratios(&a, &b), vec![0.5, 1.5]);
        assert!(round_ratios(&[], &b).is_empty());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[0.9, 0.5, 0.7]), Some(0.7));
        let even = median(&[0.8, 0.5, 0.7, 0.6]).expect("four values");
        assert!((even - 0.65).abs() < 1e-12, "{even}");
        assert_eq!(median(&[]), None);
    }
}
