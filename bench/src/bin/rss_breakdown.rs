//! Where idem's RAM goes at N keys (default 10 M): the `idem-ram` row's workload (16-byte keys
//! and values, 1 % re-sends, TTL 1 h, `Never`), then RSS against the index's own sizes and
//! glibc's heap figures. Run:
//! `cargo run --release -p idem-bench --bin rss_breakdown -- [N] [--deltas MIB]`
//! (`--deltas`: a delta checkpoint every MIB MiB of log, `Config::checkpoint_delta_every_bytes`).
use std::time::Duration;

#[allow(unsafe_code)]
fn mallinfo() -> (u64, u64, u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (
        m.arena as u64,
        m.uordblks as u64,
        m.fordblks as u64,
        m.hblkhd as u64,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .map_or(10_000_000, |s| s.parse().expect("a key count"));
    let deltas_mib: Option<u64> = args.iter().position(|a| a == "--deltas").map(|i| {
        let mib = args.get(i + 1).expect("--deltas MIB: a number of MiB");
        mib.parse().expect("--deltas MIB: a number of MiB")
    });
    let keys = idem_bench::Workload::new(idem_bench::SEED).keys(n);
    let dir = tempfile_dir();
    let before = idem_bench::rss_bytes().unwrap();
    let m0 = mallinfo();
    let mut config = idem::Config::default().durability(idem::Durability::Never);
    if let Some(mib) = deltas_mib {
        config = config.checkpoint_delta_every_bytes(mib << 20);
    }
    let store = idem::Store::open_with(&dir, config).unwrap();
    let ttl = Duration::from_secs(3600);
    for key in &keys {
        let value = idem_bench::value_for(key);
        store.check_or_insert(key, ttl, &value).unwrap();
    }
    store.flush().unwrap();
    let after = idem_bench::rss_bytes().unwrap();
    let m1 = mallinfo();
    let stats = store.stats();
    let live = stats.live_keys as f64;
    let per = |b: f64| b / live;
    println!("live keys {}", stats.live_keys);
    println!(
        "RSS delta {:.0} B = {:.2} B/key",
        (after - before) as f64,
        per((after - before) as f64)
    );
    println!(
        "index_bytes {} = {:.2} B/key",
        stats.index_bytes,
        per(stats.index_bytes as f64)
    );
    println!(
        "wheel_entries {} ({:.3}/key)",
        stats.wheel_entries,
        stats.wheel_entries as f64 / live
    );
    println!(
        "malloc arena(brk) {:+} in-use {:+} free-in-heap {:+} mmapped {:+} (B/key: {:.2} {:.2} {:.2} {:.2})",
        m1.0 as i64 - m0.0 as i64,
        m1.1 as i64 - m0.1 as i64,
        m1.2 as i64 - m0.2 as i64,
        m1.3 as i64 - m0.3 as i64,
        per(m1.0 as f64 - m0.0 as f64),
        per(m1.1 as f64 - m0.1 as f64),
        per(m1.2 as f64 - m0.2 as f64),
        per(m1.3 as f64 - m0.3 as f64)
    );
    println!("{stats:?}");
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wt5-rss-breakdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
