//! Restart time: how long `Store::open` takes for a store with N live keys, with a checkpoint
//! (written by `close`) and without one (full log replay), and how the replay rate compares with
//! the rate at which the same keys were inserted (issue #10 asks for replay at 3x or more); how
//! long writing the checkpoint of N keys takes; and the worst reopen after a crash: the store
//! dropped without `close` (as a kill leaves it, everything flushed) just before its next
//! checkpoint was due, so that the checkpoint holds the keys written before the last
//! `checkpoint_every_bytes` (the default) and the records since are replayed (issue #10 asks
//! for 0.5 s at 10 M keys).
//!
//! `cargo run --release -p idem-bench --bin restart -- [live_keys ...]` (default: 1,000,000 and
//! 10,000,000). 16-byte keys and values, `Never` mode while loading, page cache warm (the
//! figures are CPU + memory bound; a cold cache adds the read time of the files).

use std::time::{Duration, Instant};

use idem::{Config, Durability, Store};

/// `IDEM_REPLAY_THREADS=1` replays with one thread (by default long segments are replayed by two),
/// for an A/B of the shared replay on the same machine.
fn config() -> Config {
    let mut config = Config::default()
        .durability(Durability::Never)
        .background_maintenance(false)
        .checkpoint_every_bytes(0);
    if idem_bench::under_valgrind() {
        // For instruction counts of one reopen (`open`), e.g.
        // `valgrind --tool=callgrind target/release/restart open DIR`.
        config = config.clock(idem::SystemClock::precise());
    }
    if std::env::var("IDEM_REPLAY_THREADS").as_deref() == Ok("1") {
        config.parallel_replay_min_bytes_for_testing(usize::MAX)
    } else {
        config
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // For profiling one reopen at a time: `prepare-worst <dir> <keys>` leaves the worst case's
    // files in `dir`; `open <dir> [times]` reopens them (dropped without `close` each time, so
    // the files stay as they were).
    match args.first().map(String::as_str) {
        Some("prepare-worst") => {
            let dir = std::path::Path::new(&args[1]);
            let live: u64 = args[2].parse().expect("a key count");
            let _ = std::fs::remove_dir_all(dir);
            write_worst(dir, live);
            return;
        }
        Some("close") => {
            // Reopens and closes: `close` writes a checkpoint of everything.
            let store = Store::open_with(&args[1], config()).expect("open");
            store.close().expect("close");
            return;
        }
        Some("open") => {
            let dir = std::path::Path::new(&args[1]);
            let times: u32 = args.get(2).map_or(1, |t| t.parse().expect("a count"));
            for _ in 0..times {
                let started = Instant::now();
                let store = Store::open_with(dir, config()).expect("open");
                let took = started.elapsed();
                let report = store.recovery_report();
                println!(
                    "open {:.0} ms: {} checkpoint entries, {} records replayed, ignored: {:?}",
                    took.as_secs_f64() * 1e3,
                    report.checkpoint_entries_loaded,
                    report.records_replayed,
                    report.checkpoint_ignored
                );
                drop(store);
            }
            return;
        }
        _ => {}
    }
    let sizes: Vec<u64> = {
        let given: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if given.is_empty() {
            vec![1_000_000, 10_000_000]
        } else {
            given
        }
    };
    println!(
        "{:>11} {:>12} {:>14} {:>13} {:>16} {:>14} {:>10} {:>13} {:>13} {:>15} {:>14}",
        "live_keys",
        "log_bytes",
        "checkpoint_B",
        "open_ckpt_ms",
        "open_replay_ms",
        "entries_loaded",
        "insert_ms",
        "replay/insert",
        "ckpt_write_ms",
        "open_worst_ms",
        "delta_write_ms"
    );
    for live in sizes {
        let insert_time: Duration;
        let checkpoint_time: Duration;
        let dir = std::env::temp_dir().join(format!("idem-restart-{}-{live}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open_with(&dir, config()).expect("open");
            let inserting = Instant::now();
            for i in 0..live {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&i.to_le_bytes());
                store
                    .check_or_insert(&key, Duration::from_secs(24 * 3600), &[1u8; 16])
                    .expect("insert");
            }
            insert_time = inserting.elapsed();
            let writing = Instant::now();
            store.checkpoint().expect("checkpoint");
            checkpoint_time = writing.elapsed();
            store.close().expect("close writes a checkpoint");
        }
        let checkpoint_bytes =
            std::fs::metadata(dir.join("checkpoint.idem")).map_or(0, |m| m.len());
        let log_bytes: u64 = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let started = Instant::now();
        let store = Store::open_with(&dir, config()).expect("open with checkpoint");
        let with_checkpoint = started.elapsed();
        let loaded = store.recovery_report().checkpoint_entries_loaded;
        assert_eq!(store.stats().live_keys, live);
        drop(store);
        std::fs::remove_file(dir.join("checkpoint.idem")).expect("remove checkpoint");
        let started = Instant::now();
        let store = Store::open_with(&dir, config()).expect("open by replay");
        let by_replay = started.elapsed();
        assert_eq!(store.stats().live_keys, live);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        let (worst, periodic_write) = worst_reopen(&dir, live);
        println!(
            "{:>11} {:>12} {:>14} {:>13.0} {:>16.0} {:>14} {:>10.0} {:>12.2}x {:>13.0} {:>15.0} {:>14.0}",
            live,
            log_bytes,
            checkpoint_bytes,
            with_checkpoint.as_secs_f64() * 1e3,
            by_replay.as_secs_f64() * 1e3,
            loaded,
            insert_time.as_secs_f64() * 1e3,
            // The replay rate over the insert rate, for the same records.
            insert_time.as_secs_f64() / by_replay.as_secs_f64(),
            checkpoint_time.as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3,
            periodic_write.as_secs_f64() * 1e3
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The reopen after a crash just before a checkpoint was due: `live` keys written with the
/// default checkpoint schedule plus deltas (a full checkpoint every `checkpoint_every_bytes`, a
/// delta every 8 MiB or `IDEM_DELTA_MIB`, run by `maintain` every few thousand inserts), the last
/// `checkpoint_delta_every_bytes` of records written without `maintain` (as if the delta due
/// next was never written), the store dropped without `close` (no checkpoint; the log flushed,
/// as a kill after the writer's last write leaves it).
fn worst_reopen(dir: &std::path::Path, live: u64) -> (Duration, Duration) {
    let (since_checkpoint, periodic_write) = write_worst(dir, live);
    let started = Instant::now();
    let store = Store::open_with(dir, config()).expect("open after the crash");
    let took = started.elapsed();
    assert_eq!(store.stats().live_keys, live);
    assert_eq!(store.recovery_report().records_replayed, since_checkpoint);
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    (took, periodic_write)
}

/// Writes the worst case's files into `dir` (see `worst_reopen`); returns the records written
/// after the last checkpoint, and the median time `maintain` took to write a periodic
/// checkpoint (most are deltas).
fn write_worst(dir: &std::path::Path, live: u64) -> (u64, Duration) {
    // A delta every `IDEM_DELTA_MIB` MiB (default `idem_bench::DELTA_EVERY_BYTES`), in
    // records of 47 bytes (16-byte keys and values, format 3).
    let delta_every_bytes: u64 = std::env::var("IDEM_DELTA_MIB")
        .map_or(idem_bench::DELTA_EVERY_BYTES, |mib| {
            mib.parse::<u64>().expect("IDEM_DELTA_MIB: a number of MiB") << 20
        });
    let delta_every_records: u64 = delta_every_bytes / 47;
    let since_checkpoint = delta_every_records.min(live);
    // The schedule's phase: a full checkpoint at `first`, so that one falls due (and is written)
    // `since_checkpoint` records before the end, and the next would be due at the end.
    let first = (live - since_checkpoint) % delta_every_records;
    {
        // Deltas are off by default; this bench measures the worst case with them on.
        let config = Config::default()
            .durability(Durability::Never)
            .background_maintenance(false)
            .checkpoint_delta_every_bytes(delta_every_bytes);
        let store = Store::open_with(dir, config).expect("open");
        let mut last = first;
        let mut writes = Vec::new();
        for i in 0..live {
            if i == first && i > 0 {
                store.checkpoint().expect("checkpoint");
            }
            // `maintain` every few thousand records, and at every record near a due
            // checkpoint, so that each is written when due (not a few thousand records late).
            let due = last + delta_every_records;
            let near = i + 64 >= due && i <= due + 64;
            // Up to a little after the last one due (the writes' sizes vary a little).
            let end = live - since_checkpoint + 1024;
            if i > first && i <= end && (i % 4096 == 0 || near) {
                let started = Instant::now();
                if store.maintain().expect("maintain").checkpoint_written {
                    writes.push(started.elapsed());
                    last = i;
                    if std::env::var("IDEM_RESTART_DEBUG").is_ok() {
                        eprintln!("checkpoint at record {i}: {:?}", writes.last());
                    }
                }
            }
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&i.to_le_bytes());
            store
                .check_or_insert(&key, Duration::from_secs(24 * 3600), &[1u8; 16])
                .expect("insert");
        }
        store.flush().expect("flush");
        // Most periodic checkpoints are deltas: the median is a delta's write.
        writes.sort_unstable();
        let median = writes.get(writes.len() / 2).copied().unwrap_or_default();
        if last == first && first == 0 {
            return (live, median);
        }
        (live - last, median)
    }
}
