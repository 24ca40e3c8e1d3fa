//! Fills a store with N 16-byte keys and closes it (writing a checkpoint).
//! `cargo run --release -p idem --example fill -- <dir> <keys>`
fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: fill <dir> <keys>");
    let keys: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a key count");
    let config = idem::Config::default()
        .durability(idem::Durability::Never)
        .background_maintenance(false)
        .checkpoint_every_bytes(0);
    let store = idem::Store::open_with(&dir, config).expect("open");
    let started = std::time::Instant::now();
    for i in 0..keys {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        store
            .check_or_insert(&key, std::time::Duration::from_secs(86_400), &[1u8; 16])
            .expect("insert");
    }
    println!("{keys} inserts in {:?}", started.elapsed());
    store.close().expect("close");
}
