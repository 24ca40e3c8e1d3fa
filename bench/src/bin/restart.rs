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
//! figures are CPU + memory bound; a cold cache adds the read time of the files). The worst
//! case is written in the default configuration (a full checkpoint every 128 MiB of log, no
//! deltas); `IDEM_DELTA_MIB=N` writes it with a delta checkpoint every N MiB instead.
//! `compare` measures the same worst case (see `idem_bench::restart`).

use std::time::{Duration, Instant};

use idem::Store;
use idem_bench::restart::{insert_keys, reopen_config, timed_reopen, write_worst};

/// The delta checkpoints of the worst case: `IDEM_DELTA_MIB=N`, a delta every N MiB; unset, the
/// default configuration (none).
fn deltas_every_bytes() -> Option<u64> {
    std::env::var("IDEM_DELTA_MIB")
        .ok()
        .map(|mib| mib.parse::<u64>().expect("IDEM_DELTA_MIB: a number of MiB") << 20)
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
            write_worst(dir, live, deltas_every_bytes());
            return;
        }
        Some("close") => {
            // Reopens and closes: `close` writes a checkpoint of everything.
            let store = Store::open_with(&args[1], reopen_config()).expect("open");
            store.close().expect("close");
            return;
        }
        Some("open") => {
            let dir = std::path::Path::new(&args[1]);
            let times: u32 = args.get(2).map_or(1, |t| t.parse().expect("a count"));
            for _ in 0..times {
                let reopen = timed_reopen(dir);
                println!(
                    "open {:.0} ms: {} checkpoint entries, {} records replayed, ignored: {:?}",
                    reopen.took.as_secs_f64() * 1e3,
                    reopen.checkpoint_entries_loaded,
                    reopen.records_replayed,
                    reopen.checkpoint_ignored,
                );
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
        "periodic_ckpt_ms"
    );
    for live in sizes {
        let insert_time: Duration;
        let checkpoint_time: Duration;
        let dir = std::env::temp_dir().join(format!("idem-restart-{}-{live}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open_with(&dir, reopen_config()).expect("open");
            insert_time = insert_keys(&store, 0..live);
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
        let store = Store::open_with(&dir, reopen_config()).expect("open with checkpoint");
        let with_checkpoint = started.elapsed();
        let loaded = store.recovery_report().checkpoint_entries_loaded;
        assert_eq!(store.stats().live_keys, live);
        drop(store);
        std::fs::remove_file(dir.join("checkpoint.idem")).expect("remove checkpoint");
        let started = Instant::now();
        let store = Store::open_with(&dir, reopen_config()).expect("open by replay");
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

/// The reopen after a crash just before a checkpoint was due (see
/// `idem_bench::restart::write_worst`); returns its time and the median periodic checkpoint's.
fn worst_reopen(dir: &std::path::Path, live: u64) -> (Duration, Duration) {
    let worst = write_worst(dir, live, deltas_every_bytes());
    let reopen = timed_reopen(dir);
    assert_eq!(reopen.live_keys, live);
    assert_eq!(reopen.records_replayed, worst.records_since_checkpoint);
    let _ = std::fs::remove_dir_all(dir);
    (reopen.took, worst.median_checkpoint_write)
}
