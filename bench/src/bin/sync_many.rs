//! A focused driver for the `Sync` single-key row of `compare` (`idem-sync-64t`): N OS threads
//! calling `check_or_insert` of new keys on one `Sync` store, repeated, with what explains the
//! figure beside it: operations per fsync (the group-commit size), the fsync latency the log
//! measured, CPU time per operation and context switches per operation (all threads of the
//! process, the writer's included).
//!
//! `cargo run --release -p idem-bench --bin sync_many -- [threads] [seconds] [runs] [scratch]`
//! (defaults: 64 threads, 2 s, 5 runs, `results/tmp/`; the scratch directory must be on a real
//! disk, not tmpfs). A first line gives the floor the disk sets: one thread writing 50 records'
//! worth of bytes and calling `fdatasync`, back to back.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idem_bench::make_key;

use idem::{Durability, Store};

const TTL: Duration = Duration::from_secs(3600);
const VALUE: [u8; 16] = *b"result:ok-000000";

/// CPU seconds (user + system) and context switches (voluntary, involuntary) of this process.
#[allow(unsafe_code, reason = "getrusage(2) has no safe wrapper in std")]
fn usage() -> (f64, i64, i64) {
    // SAFETY: `usage` is a plain C struct for which all-zero bytes are a valid value, and
    // getrusage writes only into the struct it is given a pointer to.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return (0.0, 0, 0);
        }
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_nvcsw,
        usage.ru_nivcsw,
    )
}

/// The disk's floor: back-to-back `fdatasync`s of a few KiB appended to a preallocated file.
fn fsync_floor(scratch: &Path) {
    let path = scratch.join(format!("fsync-floor-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("floor file");
    file.write_all(&vec![0u8; 4 << 20]).expect("preallocate");
    file.sync_all().expect("sync");
    let bytes = vec![7u8; 50 * 47];
    let rounds = 500;
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        file.write_all_at(&bytes, (round * bytes.len()) as u64)
            .expect("write");
        let started = Instant::now();
        file.sync_data().expect("fdatasync");
        latencies.push(started.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    latencies.sort();
    println!(
        "fdatasync floor: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs ({rounds} rounds of {} B)",
        latencies[rounds / 2].as_secs_f64() * 1e6,
        latencies[rounds * 9 / 10].as_secs_f64() * 1e6,
        latencies[rounds * 99 / 100].as_secs_f64() * 1e6,
        bytes.len()
    );
}

fn run(scratch: &Path, threads: u64, seconds: f64, round: usize) {
    let dir = scratch.join(format!("sync-many-{}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = idem::Config::default().durability(Durability::Sync);
    let store = Arc::new(Store::open_with(&dir, config).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let before = store.stats();
    let (cpu0, vol0, invol0) = usage();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..threads {
            let (store, stop, ops) = (&store, &stop, &ops);
            scope.spawn(move || {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let outcome = store.check_or_insert(&make_key(worker, seq), TTL, &VALUE);
                    assert!(outcome.expect("insert") == idem::Outcome::Inserted);
                    seq += 1;
                }
                ops.fetch_add(seq, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, vol1, invol1) = usage();
    let after = store.stats();
    let latency = store.metrics().fsync_latency_micros;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    let ops = ops.load(Ordering::Relaxed) as f64;
    let fsyncs = (after.fsyncs - before.fsyncs) as f64;
    println!(
        "run {round}: {:>8.0} ops/s  {:>6.1} ops/fsync  {:>6.0} fsyncs/s  fsync p50 {:>4} µs p99 {:>5} µs  \
         CPU {:>5.2} µs/op ({:.2} CPUs)  ctx switches/op {:.2} vol {:.2} invol",
        ops / elapsed,
        ops / fsyncs.max(1.0),
        fsyncs / elapsed,
        latency.quantile(0.5),
        latency.quantile(0.99),
        (cpu1 - cpu0) * 1e6 / ops.max(1.0),
        (cpu1 - cpu0) / elapsed,
        (vol1 - vol0) as f64 / ops.max(1.0),
        (invol1 - invol0) as f64 / ops.max(1.0),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let scratch: PathBuf = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("results/tmp"));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    println!("Sync check_or_insert of new 16-byte keys: {threads} threads, {seconds} s x {runs}");
    fsync_floor(&scratch);
    for round in 0..runs {
        run(&scratch, threads, seconds, round);
    }
}
