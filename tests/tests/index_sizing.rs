//! `Config::expected_keys`: the index is laid out at open for the expected keys, holds them
//! without growing, keeps that size across a reopen, and answers exactly as a store left to
//! grow. Observed through `Stats::index_bytes` (the tables' slots and the expiry wheels).

use std::time::Duration;

use idem::{Config, Durability, Outcome, Store};

const KEYS: u64 = 200_000;
const TTL: Duration = Duration::from_secs(3600);
/// A table slot's bytes: the least an expected key can take in a table laid out for it.
const SLOT_BYTES: u64 = 12;

fn config(expected: u64) -> Config {
    Config::default()
        .durability(Durability::Never)
        .background_maintenance(false)
        .expected_keys(expected)
}

fn key(i: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&i.to_le_bytes());
    key[8..].copy_from_slice(&(i ^ 0x5a5a_5a5a).to_le_bytes());
    key
}

/// Inserts `KEYS` keys; returns the index bytes right after open and after the inserts.
fn fill(store: &Store) -> (u64, u64) {
    let before = store.stats().index_bytes;
    for i in 0..KEYS {
        assert_eq!(
            store
                .check_or_insert(&key(i), TTL, &i.to_le_bytes())
                .unwrap(),
            Outcome::Inserted
        );
    }
    (before, store.stats().index_bytes)
}

#[test]
fn expected_keys_lay_the_index_out_at_open_and_it_does_not_grow_to_them() {
    let (presized_dir, growing_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let presized = Store::open_with(presized_dir.path(), config(KEYS)).unwrap();
    let growing = Store::open_with(growing_dir.path(), config(0)).unwrap();
    let (presized_before, presized_after) = fill(&presized);
    let (growing_before, growing_after) = fill(&growing);

    // Both hold the same fixed part (the expiry wheels, the smallest tables) at open.
    let laid_out = presized_before - growing_before;
    let (presized_growth, growing_growth) = (
        presized_after - presized_before,
        growing_after - growing_before,
    );
    eprintln!(
        "index bytes: presized {presized_before} -> {presized_after}, growing {growing_before} \
         -> {growing_after}"
    );
    assert!(
        laid_out >= KEYS * SLOT_BYTES,
        "laid out at open: {laid_out} bytes more for {KEYS} expected keys"
    );
    assert!(
        growing_growth >= KEYS * SLOT_BYTES,
        "a store without an expectation grows its tables: {growing_growth} bytes"
    );
    // Only what grows with the keys besides the tables (the wheels' bits) grows here.
    assert!(
        presized_growth < growing_growth / 4,
        "the presized index grew by {presized_growth} bytes (the other by {growing_growth})"
    );

    // Same answers either way.
    for i in (0..KEYS).step_by(997) {
        let expected = Outcome::Duplicate(idem::Value::from(&i.to_le_bytes()[..]));
        assert_eq!(
            presized.check_or_insert(&key(i), TTL, b"x").unwrap(),
            expected
        );
        assert_eq!(
            growing.check_or_insert(&key(i), TTL, b"x").unwrap(),
            expected
        );
    }
    assert_eq!(presized.stats().live_keys, KEYS);
    growing.close().unwrap();

    // A reopen lays the tables out before it replays into them: same size, same keys.
    presized.close().unwrap();
    let reopened = Store::open_with(presized_dir.path(), config(KEYS)).unwrap();
    assert_eq!(reopened.stats().live_keys, KEYS);
    let reopened_bytes = reopened.stats().index_bytes;
    assert!(
        reopened_bytes.abs_diff(presized_after) < presized_after / 10,
        "reopened at {reopened_bytes} bytes, {presized_after} before"
    );
    assert_eq!(
        reopened.check_or_insert(&key(KEYS - 1), TTL, b"x").unwrap(),
        Outcome::Duplicate(idem::Value::from(&(KEYS - 1).to_le_bytes()[..]))
    );
}
