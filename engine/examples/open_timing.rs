//! Opens an existing store and prints how long it took and what recovery did.
//! `cargo run --release -p idem --example open_timing -- <dir>`
fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: open_timing <store dir>");
    let config = idem::Config::default()
        .durability(idem::Durability::Never)
        .background_maintenance(false)
        .checkpoint_every_bytes(0);
    let started = std::time::Instant::now();
    let store = idem::Store::open_with(&dir, config).expect("open");
    println!(
        "open took {:?}; {} keys; {:?}",
        started.elapsed(),
        store.stats().live_keys,
        store.recovery_report()
    );
}
