//! The cost of one operation on each hot path, measured on the calling thread: a plain
//! `check_or_insert`, a transaction (a dedup check, a state write, a position: issue #11's), or
//! an item of `check_or_insert_batch` (batches of 1000). The same workload as `compare` (16-byte
//! keys and values, 1 % re-sends, TTL 1 h), `Never` mode.
//!
//! ```text
//! cargo run --release -p idem-bench --bin per_op -- <plain|tx|batch> [ops] [--maintenance] [--deltas [MIB]] [--presize]
//! ```
//!
//! `tx-dedup` (a transaction of the dedup check alone) and `tx-dedup-position` (and the
//! position) split a transaction's cost: the transaction's own against a plain call, then each
//! further record.
//!
//! It prints the calling thread's CPU time and run-queue wait per operation (from
//! `/proc/thread-self/schedstat`: time spent runnable but not running, i.e. preempted, the share
//! background threads take on a busy machine), the wall time per operation, and the calls of
//! 0.5 ms or more, then the log bytes appended per operation (compaction's copies included), the
//! segments compacted and the disk bytes per live key. By default the maintenance thread is off, so the figures are the path's
//! own; `--maintenance` turns it on as `compare` runs it, and `--deltas [MIB]` adds delta
//! checkpoints every MIB (default 8) MiB of log (`Config::checkpoint_delta_every_bytes`) to it;
//! `--presize` sets
//! `Config::expected_keys` to the operation count (no table grows during the run).
//!
//! For instruction counts, which unlike times do not depend on what else the machine runs, run
//! it under valgrind: it then reads the precise clock through the standard library (the coarse
//! clock's vDSO call is not supported under valgrind), e.g.
//!
//! ```text
//! valgrind --tool=callgrind target/release/per_op tx 200000
//! ```
//!
//! and subtract a run of fewer operations to remove the open and close.

use std::time::{Duration, Instant};

use idem_bench::{value_for, Workload};

/// Calls this long or longer are counted apart: on this path they are preemptions, not work.
const SLOW: Duration = Duration::from_micros(500);
const TTL: Duration = Duration::from_secs(3600);
const CUSTOMERS: u64 = 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: per_op <plain|tx|tx-dedup|tx-dedup-position|batch> [ops] [--maintenance] \
                 [--deltas [MIB]] [--presize]";
    let mode = args.first().expect(usage).clone();
    let ops: usize = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .map_or(2_000_000, |a| a.parse().expect(usage));
    let maintenance = args.iter().any(|a| a == "--maintenance");
    let deltas_mib: Option<u64> = args.iter().position(|a| a == "--deltas").map(|i| {
        args.get(i + 1)
            .filter(|a| !a.starts_with("--"))
            .map_or(idem_bench::DELTA_EVERY_BYTES >> 20, |mib| {
                mib.parse().expect("--deltas MIB: a number of MiB")
            })
    });
    let presize = args.iter().any(|a| a == "--presize");
    let under_valgrind = idem_bench::under_valgrind();

    let dir = std::env::temp_dir().join(format!("idem-per-op-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = idem::Config::default()
        .durability(idem::Durability::Never)
        .background_maintenance(maintenance);
    if let Some(mib) = deltas_mib {
        config = config.checkpoint_delta_every_bytes(mib << 20);
    }
    if presize {
        config = config.expected_keys(ops as u64);
    }
    if under_valgrind {
        config = config.clock(idem::SystemClock::precise());
    }
    let store = idem::Store::open_with(&dir, config).expect("open");
    let keys = Workload::new(idem_bench::SEED).keys(ops);
    let customers: Vec<Vec<u8>> = (0..CUSTOMERS)
        .map(|c| format!("balance/{c}").into_bytes())
        .collect();

    let (mut slow, mut slow_calls, mut longest) = (Duration::ZERO, 0u64, Duration::ZERO);
    let mut timed = |started: Instant| {
        let took = started.elapsed();
        longest = longest.max(took);
        if took >= SLOW {
            slow += took;
            slow_calls += 1;
        }
    };
    // Built before the clock starts, as `compare` reuses one batch's items: 96 MB of fresh
    // memory at 2 M keys, whose page faults were 7 % of a profile of the timed run.
    let items: Vec<_> = if mode == "batch" {
        keys.iter().map(|k| (*k, TTL, value_for(k))).collect()
    } else {
        Vec::new()
    };
    let (cpu_before, wait_before) = schedstat();
    let started = Instant::now();
    let mut duplicates = 0u64;
    match mode.as_str() {
        "plain" => {
            for key in &keys {
                let call = Instant::now();
                let outcome = store.check_or_insert(key, TTL, &value_for(key)).unwrap();
                duplicates += u64::from(outcome.is_duplicate());
                timed(call);
            }
        }
        "tx" | "tx-dedup" | "tx-dedup-position" => {
            let (state, positions) = (mode == "tx", mode != "tx-dedup");
            for (position, key) in keys.iter().enumerate() {
                let call = Instant::now();
                let value = value_for(key);
                let mut tx = store.transaction();
                let duplicate = tx.check_or_insert(key, TTL, &value).unwrap().is_duplicate();
                if !duplicate && state {
                    let customer = u64::from_le_bytes(key[..8].try_into().unwrap()) % CUSTOMERS;
                    tx.put_state(&customers[customer as usize], &value).unwrap();
                }
                if positions {
                    tx.set_position(b"input", position as u64).unwrap();
                }
                tx.commit().unwrap();
                duplicates += u64::from(duplicate);
                timed(call);
            }
        }
        "batch" => {
            for chunk in items.chunks(1000) {
                let call = Instant::now();
                let outcomes = store.check_or_insert_batch(chunk).unwrap();
                duplicates += outcomes.iter().filter(|o| o.is_duplicate()).count() as u64;
                timed(call);
            }
        }
        _ => panic!("{usage}"),
    }
    let wall = started.elapsed();
    let (cpu_after, wait_after) = schedstat();
    let per_op = |nanos: f64| nanos / ops as f64;
    println!(
        "{mode}: {ops} ops ({duplicates} duplicates), maintenance {}{}{}: wall {:.0} ns/op, \
         calling thread CPU {:.0} ns/op, run-queue wait {:.0} ns/op; \
         {slow_calls} calls of 0.5 ms or more, {:.1} ms in all, the longest {:.2} ms",
        if maintenance { "on" } else { "off" },
        deltas_mib.map_or(String::new(), |mib| format!(", deltas every {mib} MiB")),
        if presize { ", presized" } else { "" },
        per_op(wall.as_nanos() as f64),
        per_op(cpu_after.saturating_sub(cpu_before) as f64),
        per_op(wait_after.saturating_sub(wait_before) as f64),
        slow.as_secs_f64() * 1e3,
        longest.as_secs_f64() * 1e3,
    );
    let stats = store.stats();
    println!(
        "log: {:.1} B appended per op, {} segments compacted, {:.1} B on disk per live key",
        stats.bytes_appended as f64 / ops as f64,
        stats.segments_compacted,
        stats.disk_bytes as f64 / stats.live_keys.max(1) as f64,
    );
    store.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The calling thread's CPU time and run-queue wait so far, in nanoseconds (0 where the kernel
/// does not say).
fn schedstat() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}
