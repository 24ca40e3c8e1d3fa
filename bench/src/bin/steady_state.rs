//! Steady state under constant load: inserts at a constant rate R with one TTL T flow through a
//! live window of R x T keys; prints disk bytes, live bytes, RSS and index RAM per live key as it
//! goes, to show that disk and memory track the live set, not the history.
//!
//! `cargo run --release -p idem-bench --bin steady_state -- [total_inserts] [live_window]`
//! (defaults: 20,000,000 inserts through a 2,000,000-key window). Time is a `ManualClock`
//! advanced one simulated second per batch of R inserts; maintenance runs once per simulated
//! second (what the background thread does every quarter tick). 16-byte keys and values.

use std::time::{Duration, Instant};

use idem::{Config, Durability, ManualClock, Store};

const KEY_AND_VALUE_BYTES: u64 = 16;
/// Bytes of one insert record on disk: 20-byte header + key + value.
const RECORD_BYTES: u64 = 20 + 2 * KEY_AND_VALUE_BYTES;
const INSERTS_PER_SIMULATED_SECOND: u64 = 100_000;

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let window: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let ttl = Duration::from_secs(window / INSERTS_PER_SIMULATED_SECOND);
    let dir = std::env::temp_dir().join(format!("idem-steady-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let clock = ManualClock::new();
    let config = Config::default()
        .durability(Durability::Never)
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0);
    let store = Store::open_with(&dir, config).expect("open");
    let rss_start = rss_bytes();
    println!(
        "steady state: {total} inserts, {INSERTS_PER_SIMULATED_SECOND}/simulated s, TTL {} s, live window {window} keys, {RECORD_BYTES}-byte records",
        ttl.as_secs()
    );
    println!(
        "{:>11} {:>10} {:>8} {:>13} {:>13} {:>9} {:>12} {:>12} {:>8}",
        "inserts",
        "live_keys",
        "segments",
        "disk_bytes",
        "live_bytes",
        "disk/live",
        "index_B/key",
        "rss_B/key",
        "wall_s"
    );
    let started = Instant::now();
    let value = [7u8; KEY_AND_VALUE_BYTES as usize];
    let mut worst_ratio_after_warmup: f64 = 0.0;
    let mut inserted = 0u64;
    while inserted < total {
        for _ in 0..INSERTS_PER_SIMULATED_SECOND {
            let mut key = [0u8; KEY_AND_VALUE_BYTES as usize];
            key[..8].copy_from_slice(&inserted.to_le_bytes());
            key[8..].copy_from_slice(&0xC0FFEEu64.to_le_bytes());
            store.check_or_insert(&key, ttl, &value).expect("insert");
            inserted += 1;
        }
        clock.advance(Duration::from_secs(1));
        store.maintain().expect("maintain");
        if inserted.is_multiple_of(1_000_000) {
            store.flush().expect("flush");
            let stats = store.stats();
            let live_bytes = stats.live_keys * RECORD_BYTES;
            let ratio = stats.disk_bytes as f64 / live_bytes.max(1) as f64;
            if inserted > 2 * window {
                worst_ratio_after_warmup = worst_ratio_after_warmup.max(ratio);
            }
            let rss = rss_bytes().saturating_sub(rss_start);
            println!(
                "{:>11} {:>10} {:>8} {:>13} {:>13} {:>9.2} {:>12.1} {:>12.1} {:>8.1}",
                inserted,
                stats.live_keys,
                stats.segments,
                stats.disk_bytes,
                live_bytes,
                ratio,
                stats.index_bytes as f64 / stats.live_keys.max(1) as f64,
                rss as f64 / stats.live_keys.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let stats = store.stats();
    println!(
        "worst disk/live after warm-up: {worst_ratio_after_warmup:.2}; entries expired {}; segments deleted {}; segments compacted {}",
        stats.entries_expired, stats.segments_deleted, stats.segments_compacted
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
