//! Criterion benchmarks of idem's public API.
//!
//! ```text
//! cargo bench -p idem-bench --bench store                 # everything (~3-4 min on 2 cores)
//! cargo bench -p idem-bench --bench store -- --quick      # a fast pass
//! cargo bench -p idem-bench --bench store -- 'get/'       # one group (a regex filter)
//! ```
//!
//! Every benchmark reports time per operation (a batch benchmark: per batch, with a throughput of
//! 1000 elements). Two-thread benchmarks run the same total number of operations split over two
//! threads and report wall time, so their "time per operation" is the inverse of the aggregate
//! throughput. Data directories live under Cargo's target tmp dir (a real disk: fsync on tmpfs
//! is free and would flatter `Sync`).
//!
//! Workload constants (also see `idem_bench`'s constants, shared with the `compare` binary):
//! 16-byte keys = source id (u64 BE) ++ sequence number (u64 BE), 16-byte values derived from the
//! key, TTL 1 h except in the expiry-churn group; the RNG seed is [`BENCH_SEED`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use idem::{Config, Durability, ManualClock, Store};
use idem_bench::{make_key, value_for, Key, SplitMix64, TTL};

/// RNG seed of every random choice here (which preloaded key a duplicate or a get hits).
const BENCH_SEED: u64 = idem_bench::SEED;
/// Keys loaded before the duplicate-hit, get and remove benchmarks.
const PRELOAD_KEYS: u64 = 200_000;
/// Items per `check_or_insert_batch` call.
const BATCH: usize = 1000;
/// Thread counts every concurrent benchmark runs at.
const THREADS: [usize; 2] = [1, 2];
/// Expiry churn: each thread cycles over this many keys...
const CHURN_KEYS_PER_THREAD: u64 = 10_000;
/// ...with this TTL...
const CHURN_TTL: Duration = Duration::from_secs(1);
/// ...while each thread advances the shared `ManualClock` by `CHURN_CLOCK_STEP` every
/// `CHURN_OPS_PER_STEP` operations, so a key has expired (10,000 / 64 x 10 ms = 1.56 s > 1 s) by
/// the time its thread comes back to it and is inserted again.
const CHURN_CLOCK_STEP: Duration = Duration::from_millis(10);
const CHURN_OPS_PER_STEP: u64 = 64;
/// Store sizes of the reopen benchmark.
const REOPEN_KEYS: [u64; 2] = [100_000, 1_000_000];
/// `Periodic` durability's interval.
const PERIODIC: Duration = Duration::from_millis(10);

/// Measurement settings: short, so the whole suite runs in a few minutes.
const WARM_UP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(2);
const SAMPLES: usize = 20;
/// `Sync` single-key calls are fsync-bound (~0.3 ms or more each): few, flat samples.
const SYNC_MEASURE: Duration = Duration::from_secs(2);
const SYNC_SAMPLES: usize = 10;

/// Source ids of fresh keys: one per (benchmark, thread), so no two benchmarks share keys.
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(1_000);

fn modes() -> [(&'static str, Durability); 3] {
    [
        ("never", Durability::Never),
        ("periodic_10ms", Durability::Periodic(PERIODIC)),
        ("sync", Durability::Sync),
    ]
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("idem-criterion-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a scratch directory")
}

fn open(dir: &tempfile::TempDir, durability: Durability) -> Store {
    Store::open_with(dir.path(), Config::default().durability(durability)).expect("open")
}

/// Fresh keys for `threads` threads: thread `t` draws sequence numbers from its own source id,
/// so keys never repeat across iterations of a benchmark.
struct Fresh {
    sources: Vec<u64>,
    next_seq: Vec<AtomicU64>,
}

impl Fresh {
    fn new(threads: usize) -> Fresh {
        Fresh {
            sources: (0..threads)
                .map(|_| NEXT_SOURCE.fetch_add(1, Ordering::Relaxed))
                .collect(),
            next_seq: (0..threads).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Reserves `n` keys for `thread`; returns a generator of them.
    fn take(&self, thread: usize, n: u64) -> impl Iterator<Item = Key> + '_ {
        let start = self.next_seq[thread].fetch_add(n, Ordering::Relaxed);
        let source = self.sources[thread];
        (start..start + n).map(move |seq| make_key(source, seq))
    }
}

/// Runs `work(thread, n)` on `threads` threads that share `iters` operations, started together;
/// returns the wall time from the common start to the last finish.
fn timed_threads(threads: usize, iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    if threads == 1 {
        let started = Instant::now();
        work(0, iters);
        return started.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let n = iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
            let (barrier, work) = (&barrier, &work);
            scope.spawn(move || {
                barrier.wait();
                work(t, n);
            });
        }
        barrier.wait();
        let started = Instant::now();
        // The scope joins every thread before returning.
        started
    })
    .elapsed()
}

/// A store of `Never` durability preloaded with `PRELOAD_KEYS` keys (source 0), flushed.
fn preloaded(durability: Durability) -> (tempfile::TempDir, Store) {
    let dir = scratch();
    let store = open(&dir, durability);
    let keys: Vec<Key> = (0..PRELOAD_KEYS).map(|seq| make_key(0, seq)).collect();
    for chunk in keys.chunks(BATCH) {
        let items: Vec<(Key, Duration, [u8; 16])> =
            chunk.iter().map(|k| (*k, TTL, value_for(k))).collect();
        store.check_or_insert_batch(&items).expect("preload");
    }
    store.flush().expect("flush");
    (dir, store)
}

fn sync_settings(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(SYNC_SAMPLES)
        .measurement_time(SYNC_MEASURE)
        .sampling_mode(SamplingMode::Flat);
}

fn check_or_insert_new(c: &mut Criterion) {
    for (mode, durability) in modes() {
        let mut group = c.benchmark_group(format!("check_or_insert_new/{mode}"));
        group.throughput(Throughput::Elements(1));
        if durability == Durability::Sync {
            sync_settings(&mut group);
        }
        for threads in THREADS {
            let dir = scratch();
            let store = open(&dir, durability);
            let fresh = Fresh::new(threads);
            group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
                b.iter_custom(|iters| {
                    timed_threads(threads, iters, |t, n| {
                        for key in fresh.take(t, n) {
                            let outcome = store
                                .check_or_insert(&key, TTL, &value_for(&key))
                                .expect("insert");
                            debug_assert!(!outcome.is_duplicate());
                        }
                    })
                })
            });
            drop(store);
        }
        group.finish();
    }
}

/// Issue #11's cost target: a transaction of one `check_or_insert`, one `put_state` and one
/// `set_position` beside a plain `check_or_insert` of a new key, 1 thread, `Never`. Each runs on
/// a store of its own: one shared would give the second the larger index the first left.
fn transaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("transaction/never");
    group.throughput(Throughput::Elements(1));
    let (plain_dir, tx_dir) = (scratch(), scratch());
    let store = open(&plain_dir, Durability::Never);
    let fresh = Fresh::new(2);
    group.bench_function("plain_check_or_insert", |b| {
        b.iter_custom(|iters| {
            timed_threads(1, iters, |_, n| {
                for key in fresh.take(0, n) {
                    store
                        .check_or_insert(&key, TTL, &value_for(&key))
                        .expect("insert");
                }
            })
        })
    });
    drop(store);
    let store = open(&tx_dir, Durability::Never);
    let position = AtomicU64::new(0);
    group.bench_function("dedup_state_position", |b| {
        b.iter_custom(|iters| {
            timed_threads(1, iters, |_, n| {
                for key in fresh.take(1, n) {
                    let value = value_for(&key);
                    let mut tx = store.transaction();
                    tx.check_or_insert(&key, TTL, &value).expect("check");
                    tx.put_state(&key[..8], &value).expect("put_state");
                    let at = position.fetch_add(1, Ordering::Relaxed);
                    tx.set_position(b"input", at).expect("set_position");
                    tx.commit().expect("commit");
                }
            })
        })
    });
    group.finish();
}

fn check_or_insert_duplicate(c: &mut Criterion) {
    for (mode, durability) in [("never", Durability::Never), ("sync", Durability::Sync)] {
        let mut group = c.benchmark_group(format!("check_or_insert_duplicate/{mode}"));
        group.throughput(Throughput::Elements(1));
        let (_dir, store) = preloaded(durability);
        for threads in THREADS {
            group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
                b.iter_custom(|iters| {
                    timed_threads(threads, iters, |t, n| {
                        let mut rng = SplitMix64::new(BENCH_SEED ^ t as u64);
                        for _ in 0..n {
                            let key = make_key(0, rng.below(PRELOAD_KEYS));
                            let outcome = store
                                .check_or_insert(&key, TTL, &value_for(&key))
                                .expect("check");
                            debug_assert!(outcome.is_duplicate());
                        }
                    })
                })
            });
        }
        group.finish();
    }
}

fn check_or_insert_batch(c: &mut Criterion) {
    for (mode, durability) in modes() {
        let mut group = c.benchmark_group(format!("check_or_insert_batch_1000/{mode}"));
        group.throughput(Throughput::Elements(BATCH as u64));
        if durability == Durability::Sync {
            sync_settings(&mut group);
        }
        for threads in THREADS {
            let dir = scratch();
            let store = open(&dir, durability);
            let fresh = Fresh::new(threads);
            group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
                b.iter_custom(|iters| {
                    timed_threads(threads, iters, |t, n| {
                        let mut items: Vec<(Key, Duration, [u8; 16])> = Vec::with_capacity(BATCH);
                        for _ in 0..n {
                            items.clear();
                            items.extend(
                                fresh.take(t, BATCH as u64).map(|k| (k, TTL, value_for(&k))),
                            );
                            let outcomes = store.check_or_insert_batch(&items).expect("batch");
                            debug_assert_eq!(outcomes.len(), BATCH);
                        }
                    })
                })
            });
            drop(store);
        }
        group.finish();
    }
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    let (_dir, store) = preloaded(Durability::Never);
    for threads in THREADS {
        group.bench_function(BenchmarkId::new("hit", format!("{threads}t")), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    let mut rng = SplitMix64::new(BENCH_SEED ^ t as u64);
                    for _ in 0..n {
                        let key = make_key(0, rng.below(PRELOAD_KEYS));
                        let value = store.get(&key).expect("get");
                        debug_assert!(value.is_some());
                    }
                })
            })
        });
        group.bench_function(BenchmarkId::new("miss", format!("{threads}t")), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    let mut rng = SplitMix64::new(BENCH_SEED ^ t as u64);
                    for _ in 0..n {
                        // Source 1 was never inserted.
                        let key = make_key(1, rng.next_u64());
                        let value = store.get(&key).expect("get");
                        debug_assert!(value.is_none());
                    }
                })
            })
        });
    }
    group.finish();
}

fn remove(c: &mut Criterion) {
    for (mode, durability) in [("never", Durability::Never), ("sync", Durability::Sync)] {
        let mut group = c.benchmark_group(format!("remove/{mode}"));
        group.throughput(Throughput::Elements(1));
        if durability == Durability::Sync {
            sync_settings(&mut group);
        }
        for threads in THREADS {
            let dir = scratch();
            let store = open(&dir, durability);
            group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
                b.iter_custom(|iters| {
                    // Untimed: insert the keys this sample will remove, in batches.
                    let fresh = Fresh::new(threads);
                    for t in 0..threads {
                        let n =
                            iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
                        let keys: Vec<Key> = fresh.take(t, n).collect();
                        for chunk in keys.chunks(BATCH) {
                            let items: Vec<(Key, Duration, [u8; 16])> =
                                chunk.iter().map(|k| (*k, TTL, value_for(k))).collect();
                            store.check_or_insert_batch(&items).expect("load");
                        }
                    }
                    store.flush().expect("flush");
                    let replay = Fresh {
                        sources: fresh.sources.clone(),
                        next_seq: (0..threads).map(|_| AtomicU64::new(0)).collect(),
                    };
                    timed_threads(threads, iters, |t, n| {
                        for key in replay.take(t, n) {
                            let removed = store.remove(&key).expect("remove");
                            debug_assert!(removed);
                        }
                    })
                })
            });
            drop(store);
        }
        group.finish();
    }
}

fn expiry_churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("expiry_churn/never");
    group.throughput(Throughput::Elements(1));
    for threads in THREADS {
        let dir = scratch();
        let clock = ManualClock::new();
        let store = Store::open_with(
            dir.path(),
            Config::default()
                .durability(Durability::Never)
                .clock(clock.clone()),
        )
        .expect("open");
        let sources: Vec<u64> = (0..threads)
            .map(|_| NEXT_SOURCE.fetch_add(1, Ordering::Relaxed))
            .collect();
        let positions: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
        group.bench_function(BenchmarkId::from_parameter(format!("{threads}t")), |b| {
            b.iter_custom(|iters| {
                timed_threads(threads, iters, |t, n| {
                    let start = positions[t].fetch_add(n, Ordering::Relaxed);
                    for pos in start..start + n {
                        if pos % CHURN_OPS_PER_STEP == 0 {
                            clock.advance(CHURN_CLOCK_STEP);
                        }
                        let key = make_key(sources[t], pos % CHURN_KEYS_PER_THREAD);
                        store
                            .check_or_insert(&key, CHURN_TTL, &value_for(&key))
                            .expect("churn");
                    }
                })
            })
        });
        drop(store);
    }
    group.finish();
}

fn reopen(c: &mut Criterion) {
    let mut group = c.benchmark_group("reopen");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    for keys in REOPEN_KEYS {
        let dir = scratch();
        {
            let store = open(&dir, Durability::Never);
            let mut rng = SplitMix64::new(BENCH_SEED);
            let mut items: Vec<(Key, Duration, [u8; 16])> = Vec::with_capacity(BATCH);
            let mut seq = 0;
            while seq < keys {
                items.clear();
                for _ in 0..BATCH.min((keys - seq) as usize) {
                    let key = make_key(rng.below(64), seq);
                    items.push((key, TTL, value_for(&key)));
                    seq += 1;
                }
                store.check_or_insert_batch(&items).expect("load");
            }
            store.close().expect("close");
        }
        group.throughput(Throughput::Elements(keys));
        group.bench_function(
            BenchmarkId::from_parameter(format!("{}k_keys", keys / 1000)),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        let store = open(&dir, Durability::Never);
                        total += started.elapsed();
                        assert!(store.stats().live_keys >= keys, "reopen lost keys");
                        store.close().expect("close");
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASURE)
        .sample_size(SAMPLES);
    targets = check_or_insert_new, check_or_insert_duplicate, check_or_insert_batch, transaction,
        get, remove, expiry_churn, reopen
}
criterion_main!(benches);
