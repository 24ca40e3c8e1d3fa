use std::time::{Duration, Instant};
fn main() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [idem::Durability::Never, idem::Durability::Sync] {
        let sub = dir.path().join(format!("{mode:?}"));
        let store = idem::Store::open_with(&sub, idem::Config::default().durability(mode)).unwrap();
        let n = if mode == idem::Durability::Sync {
            2000
        } else {
            2_000_000u64
        };
        let t = Instant::now();
        for i in 0..n {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&i.to_le_bytes());
            assert_eq!(
                store
                    .check_or_insert(&key, Duration::from_secs(3600), &[7u8; 16])
                    .unwrap(),
                idem::Outcome::Inserted
            );
        }
        let el = t.elapsed();
        println!(
            "{mode:?}: {n} inserts {:.2} M/s  {:?}",
            n as f64 / el.as_secs_f64() / 1e6,
            store.stats()
        );
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&5u64.to_le_bytes());
        assert!(store
            .check_or_insert(&key, Duration::from_secs(3600), b"x")
            .unwrap()
            .is_duplicate());
        drop(store);
        let t = Instant::now();
        let store = idem::Store::open_with(&sub, idem::Config::default().durability(mode)).unwrap();
        println!("reopen {:?} {:?}", t.elapsed(), store.recovery_report());
        assert_eq!(store.stats().live_keys, n);
    }
}
