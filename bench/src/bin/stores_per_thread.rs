//! How idem uses more cores today: N threads calling one shared store against N threads each
//! calling a store of its own (a consumer whose threads own disjoint partitions of the input, as
//! Kafka or JetStream partitions give them), and one thread alone, on `compare`'s workload
//! (16-byte keys and values, 1 % re-sends, TTL 1 h, `Never`, the default configuration).
//!
//! ```text
//! cargo run --release -p idem-bench --bin stores_per_thread -- [ops] [threads] [rounds]
//! ```
//!
//! Defaults: 2,000,000 operations, 2 threads, 3 rounds (the three runs alternate within each
//! round; each run's best is reported, as `compare --repeat` does). The operations are split into
//! contiguous parts, one per thread; with a store per thread, a re-send whose first sending fell
//! in another thread's part is new to that thread's store, so its duplicates count a little
//! lower (the count is printed). CPU time is the process's (all threads, background ones too)
//! (`getrusage`) over the run, per operation: less sensitive than wall time to other load on
//! the machine.

use std::time::Instant;

use idem_bench::{process_cpu_seconds, value_for, Key, Workload, SEED, TTL};

/// The three ways of running the same operations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    OneThread,
    SharedStore,
    StorePerThread,
}

impl Layout {
    fn describe(self, threads: usize) -> String {
        match self {
            Layout::OneThread => "1 thread, 1 store".to_string(),
            Layout::SharedStore => format!("{threads} threads, 1 shared store"),
            Layout::StorePerThread => format!("{threads} threads, a store each"),
        }
    }
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Run {
    ops_per_sec: f64,
    cpu_micros_per_op: f64,
    duplicates: u64,
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("usage: stores_per_thread [ops] [threads] [rounds]")
        })
        .collect();
    let ops = args.first().copied().unwrap_or(2_000_000);
    let threads = args.get(1).copied().unwrap_or(2).max(1);
    let rounds = args.get(2).copied().unwrap_or(3).max(1);
    let keys = Workload::new(SEED).keys(ops);
    let layouts = [
        Layout::OneThread,
        Layout::SharedStore,
        Layout::StorePerThread,
    ];
    let mut best = [Run::default(); 3];
    for round in 1..=rounds {
        for (layout, best) in layouts.iter().zip(best.iter_mut()) {
            let run = run(*layout, threads, &keys);
            println!(
                "round {round}: {:<28} {:>10.0} ops/s  {:.2} us CPU/op  {} duplicates",
                layout.describe(threads),
                run.ops_per_sec,
                run.cpu_micros_per_op,
                run.duplicates
            );
            if run.ops_per_sec > best.ops_per_sec {
                *best = run;
            }
        }
    }
    println!("\nbest of {rounds} (ops/s relative to 1 thread, 1 store):");
    for (layout, run) in layouts.iter().zip(&best) {
        println!(
            "{:<28} {:>10.0} ops/s  {:.2} us CPU/op  {:.2}x",
            layout.describe(threads),
            run.ops_per_sec,
            run.cpu_micros_per_op,
            run.ops_per_sec / best[0].ops_per_sec
        );
    }
}

fn run(layout: Layout, threads: usize, keys: &[Key]) -> Run {
    let threads = if layout == Layout::OneThread {
        1
    } else {
        threads
    };
    let stores = if layout == Layout::StorePerThread {
        threads
    } else {
        1
    };
    let dir = tempfile::tempdir().expect("a scratch directory");
    let stores: Vec<idem::Store> = (0..stores)
        .map(|i| {
            let config = idem::Config::default().durability(idem::Durability::Never);
            idem::Store::open_with(dir.path().join(format!("store-{i}")), config).expect("open")
        })
        .collect();
    let per_thread = keys.len().div_ceil(threads);
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let duplicates: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = keys
            .chunks(per_thread)
            .enumerate()
            .map(|(t, part)| {
                let store = &stores[t % stores.len()];
                scope.spawn(move || {
                    let mut duplicates = 0;
                    for key in part {
                        let outcome = store
                            .check_or_insert(key, TTL, &value_for(key))
                            .expect("check_or_insert");
                        duplicates += u64::from(outcome.is_duplicate());
                    }
                    duplicates
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a worker panicked"))
            .sum()
    });
    let elapsed = started.elapsed();
    let cpu = process_cpu_seconds() - cpu_before;
    for store in stores {
        store.close().expect("close");
    }
    Run {
        ops_per_sec: keys.len() as f64 / elapsed.as_secs_f64(),
        cpu_micros_per_op: cpu * 1e6 / keys.len() as f64,
        duplicates,
    }
}
