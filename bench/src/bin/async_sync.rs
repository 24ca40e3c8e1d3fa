//! `Sync` single-key inserts from async tasks versus blocking threads: ops/s and operations per
//! fsync (how many callers one group commit serves).
//!
//! `cargo run --release -p idem-bench --bin async_sync -- [seconds] [scratch dir]` (defaults: 5 s
//! per row, `results/tmp/`; the scratch directory must be on a real disk, not tmpfs, for the
//! fsyncs to mean anything). Rows, each on a fresh store with the default config (`Sync`):
//!
//! - `async-2t`: 10 000 tasks on a 2-worker tokio runtime awaiting `check_or_insert_async`; no
//!   blocking pool.
//! - `async-1t`: the same 10 000 tasks on a current-thread runtime.
//! - `blocking-64t`: 64 OS threads calling `check_or_insert` (the blocking figure of
//!   `results/compare.md`).
//! - `tokio-blocking-2t`: the anti-pattern the async API replaces: 1 000 tasks on a 2-worker
//!   runtime calling the blocking `check_or_insert` directly (each call blocks a worker).
//! - `spawn-blocking-512`: 1 000 tasks handing the blocking call to `spawn_blocking`, with 512
//!   blocking threads.
//!
//! Every task or thread inserts new 16-byte keys (its id, then a sequence number) with 16-byte
//! values until the time is up; the figures are the operations completed in that time, the
//! fsyncs of the log (`Stats::fsyncs`) in that time, and the process's CPU time per operation
//! (`getrusage`, all threads: the writer's fsync loop included).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_bench::{make_key, process_cpu_seconds};

use idem::Store;

const TTL: Duration = Duration::from_secs(3600);
const VALUE: [u8; 16] = *b"result:ok-000000";

struct Row {
    name: &'static str,
    callers: String,
    ops: u64,
    fsyncs: u64,
    elapsed: Duration,
    cpu_seconds: f64,
}

impl Row {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// A fresh store in `scratch`, the stop flag, and the counters; runs `drive` and measures.
fn measure(
    name: &'static str,
    callers: String,
    scratch: &Path,
    seconds: u64,
    drive: impl FnOnce(Arc<Store>, Arc<AtomicBool>, Arc<AtomicU64>),
) -> Row {
    let dir = scratch.join(format!("async-sync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::open(&dir).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let fsyncs_before = store.stats().fsyncs;
    let timer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(seconds));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let (start, cpu_start) = (Instant::now(), process_cpu_seconds());
    drive(Arc::clone(&store), Arc::clone(&stop), Arc::clone(&ops));
    let (elapsed, cpu_seconds) = (start.elapsed(), process_cpu_seconds() - cpu_start);
    timer.join().expect("timer");
    let row = Row {
        name,
        callers,
        ops: ops.load(Ordering::Relaxed),
        fsyncs: store.stats().fsyncs - fsyncs_before,
        elapsed,
        cpu_seconds,
    };
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{:<20} {:<50} {:>10.0} {:>8} {:>10.1} {:>10.2}",
        row.name,
        row.callers,
        row.ops_per_sec(),
        row.fsyncs,
        row.ops as f64 / row.fsyncs.max(1) as f64,
        row.cpu_seconds * 1e6 / row.ops.max(1) as f64
    );
    row
}

/// `tasks` tasks on `runtime`, each running `call` in a loop until `stop`.
fn run_tasks<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    tasks: u64,
    store: &Arc<Store>,
    stop: &Arc<AtomicBool>,
    ops: &Arc<AtomicU64>,
    call: F,
) where
    F: Fn(Arc<Store>, [u8; 16]) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    runtime.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let (store, stop, ops, call) = (
                    Arc::clone(store),
                    Arc::clone(stop),
                    Arc::clone(ops),
                    call.clone(),
                );
                tokio::spawn(async move {
                    let mut seq = 0;
                    while !stop.load(Ordering::Relaxed) {
                        call(Arc::clone(&store), make_key(task, seq)).await;
                        seq += 1;
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
    });
}

async fn insert_async(store: Arc<Store>, key: [u8; 16]) {
    let outcome = store.check_or_insert_async(&key, TTL, &VALUE).await;
    assert!(outcome.expect("insert") == idem::Outcome::Inserted);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let scratch: PathBuf = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("results/tmp"));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    println!(
        "Sync single-key check_or_insert of new 16-byte keys, {seconds} s per row, scratch {}",
        scratch.display()
    );
    println!(
        "{:<20} {:<50} {:>10} {:>8} {:>10} {:>10}",
        "row", "callers", "ops/s", "fsyncs", "ops/fsync", "CPU µs/op"
    );
    let multi_thread = |workers: usize, blocking: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(blocking)
            .build()
            .expect("runtime")
    };
    measure(
        "async-2t",
        "10 000 tasks, 2-worker tokio, no blocking pool".into(),
        &scratch,
        seconds,
        |store, stop, ops| {
            let runtime = multi_thread(2, 1);
            run_tasks(&runtime, 10_000, &store, &stop, &ops, insert_async);
        },
    );
    measure(
        "async-1t",
        "10 000 tasks, current-thread tokio".into(),
        &scratch,
        seconds,
        |store, stop, ops| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            run_tasks(&runtime, 10_000, &store, &stop, &ops, insert_async);
        },
    );
    measure(
        "blocking-64t",
        "64 OS threads, blocking check_or_insert".into(),
        &scratch,
        seconds,
        |store, stop, ops| {
            std::thread::scope(|scope| {
                for thread in 0..64 {
                    let (store, stop, ops) = (&store, &stop, &ops);
                    scope.spawn(move || {
                        let mut seq = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let outcome =
                                store.check_or_insert(&make_key(thread, seq), TTL, &VALUE);
                            assert!(outcome.expect("insert") == idem::Outcome::Inserted);
                            seq += 1;
                            ops.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
        },
    );
    measure(
        "tokio-blocking-2t",
        "1 000 tasks, 2-worker tokio, blocking call".into(),
        &scratch,
        seconds,
        |store, stop, ops| {
            let runtime = multi_thread(2, 1);
            run_tasks(
                &runtime,
                1_000,
                &store,
                &stop,
                &ops,
                |store, key| async move {
                    let outcome = store.check_or_insert(&key, TTL, &VALUE);
                    assert!(outcome.expect("insert") == idem::Outcome::Inserted);
                },
            );
        },
    );
    measure(
        "spawn-blocking-512",
        "1 000 tasks, 2-worker tokio, spawn_blocking x512".into(),
        &scratch,
        seconds,
        |store, stop, ops| {
            let runtime = multi_thread(2, 512);
            run_tasks(
                &runtime,
                1_000,
                &store,
                &stop,
                &ops,
                |store, key| async move {
                    let outcome = tokio::task::spawn_blocking(move || {
                        store.check_or_insert(&key, TTL, &VALUE)
                    })
                    .await
                    .expect("blocking task");
                    assert!(outcome.expect("insert") == idem::Outcome::Inserted);
                },
            );
        },
    );
}
