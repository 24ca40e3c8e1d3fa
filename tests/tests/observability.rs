//! Every decision visible: `Store::decide` answers each case in one value, the late-duplicate
//! signal fires for a key seen again shortly after its entry expired (and, within its measured
//! false-positive rate, only then), and `Store::metrics` counts what was decided. Time is a
//! `ManualClock`.

use std::time::Duration;

use idem::{
    Claim, ClaimToken, Completion, Config, Decision, Durability, ManualClock, Outcome, Store,
};

const TTL: Duration = Duration::from_secs(10);
const GRACE: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

fn config(clock: &ManualClock) -> Config {
    Config::default()
        .durability(Durability::Never)
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
        .shard_count(16)
}

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[test]
fn decide_answers_every_case_in_one_value() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock).durability(Durability::Sync)).unwrap();
    assert_eq!(store.decide(b"a", TTL, b"1").unwrap(), Decision::First);
    let replay = store.decide(b"a", TTL, b"2").unwrap();
    assert_eq!(replay, Decision::Replay(idem::Value::from(&b"1"[..])));
    assert_eq!(
        replay.outcome(),
        Some(Outcome::Duplicate(idem::Value::from(&b"1"[..])))
    );
    assert!(!replay.is_inserted());

    let token = acquired(store.claim(b"c", LEASE).unwrap());
    assert!(matches!(
        store.decide(b"c", TTL, b"x").unwrap(),
        Decision::InFlight { until } if until == token.lease_until()
    ));
    store
        .finish(
            token,
            Completion::Failure {
                backoff: Duration::from_secs(5),
                failure: b"busy",
            },
        )
        .unwrap();
    match store.decide(b"c", TTL, b"x").unwrap() {
        Decision::Failed { failure, .. } => assert_eq!(failure, b"busy"),
        other => panic!("expected Failed, got {other:?}"),
    }

    store
        .decide_fingerprinted(b"f", TTL, b"1", b"amount=5")
        .unwrap();
    assert_eq!(
        store
            .decide_fingerprinted(b"f", TTL, b"1", b"amount=6")
            .unwrap(),
        Decision::FingerprintMismatch
    );
    // Bad input is still an error, and writes nothing.
    assert!(matches!(
        store.decide(b"", TTL, b"1"),
        Err(idem::Error::EmptyKey)
    ));
}

#[test]
fn late_duplicates_are_flagged_within_the_grace_and_only_signal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock).late_duplicate_grace(GRACE)).unwrap();
    for key in [&b"unreaped"[..], b"reaped", b"late-in-batch", b"too-late"] {
        assert_eq!(store.decide(key, TTL, b"v").unwrap(), Decision::First);
    }
    clock.advance(TTL + Duration::from_secs(1));
    // Still in the table (not reaped yet): found by the probe run.
    assert_eq!(
        store.decide(b"unreaped", TTL, b"v2").unwrap(),
        Decision::LateDuplicate
    );
    // Inserted all the same: now a replay of the new value.
    assert_eq!(
        store.decide(b"unreaped", TTL, b"v3").unwrap(),
        Decision::Replay(idem::Value::from(&b"v2"[..]))
    );
    // Reaped by maintenance: found by the memory of expired tags.
    store.maintain().unwrap();
    assert!(store.stats().entries_expired >= 3);
    assert_eq!(
        store.decide(b"reaped", TTL, b"v2").unwrap(),
        Decision::LateDuplicate
    );
    // Plain check_or_insert and batches insert as usual and count it.
    let items: Vec<(&[u8], Duration, &[u8])> = vec![(b"late-in-batch", TTL, b"v2")];
    assert_eq!(
        store.check_or_insert_batch(&items).unwrap(),
        vec![Outcome::Inserted]
    );
    assert_eq!(store.metrics().decisions.late_duplicates, 3);
    // Past the grace (and the one-epoch slack): a first time again.
    clock.advance(GRACE + GRACE / 2);
    assert_eq!(
        store.decide(b"too-late", TTL, b"v2").unwrap(),
        Decision::First
    );
    // Never seen: first time.
    assert_eq!(
        store.decide(b"never-seen", TTL, b"v").unwrap(),
        Decision::First
    );
}

#[test]
fn without_a_grace_there_are_no_late_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    store.decide(b"k", TTL, b"v").unwrap();
    clock.advance(TTL);
    assert_eq!(store.decide(b"k", TTL, b"v").unwrap(), Decision::First);
    assert_eq!(store.metrics().decisions.late_duplicates, 0);
}

/// Measures the late-duplicate memory's rates with a full grace period of expired keys: every
/// expired key that comes back is flagged (no false negatives under capacity), and fresh keys
/// are flagged at most at the documented rate (about 0.25% per full epoch in the window).
#[test]
fn late_duplicate_rates_are_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let expired = 20_000u32;
    let store = Store::open_with(
        dir.path(),
        config(&clock)
            .late_duplicate_grace(GRACE)
            .late_duplicate_capacity(expired as usize),
    )
    .unwrap();
    for i in 0..expired {
        store
            .check_or_insert(format!("old-{i}").as_bytes(), TTL, b"v")
            .unwrap();
    }
    clock.advance(TTL);
    store.maintain().unwrap();
    assert_eq!(store.stats().entries_expired, u64::from(expired));
    let fresh = 100_000u32;
    let mut false_positives = 0;
    for i in 0..fresh {
        if store
            .decide(format!("new-{i}").as_bytes(), TTL, b"v")
            .unwrap()
            == Decision::LateDuplicate
        {
            false_positives += 1;
        }
    }
    let mut found = 0;
    for i in 0..expired {
        if store
            .decide(format!("old-{i}").as_bytes(), TTL, b"v")
            .unwrap()
            == Decision::LateDuplicate
        {
            found += 1;
        }
    }
    let rate = f64::from(false_positives) / f64::from(fresh);
    eprintln!(
        "late-duplicate memory: {found}/{expired} expired keys flagged, false-positive rate {:.4}% ({false_positives}/{fresh}), {} overflowed",
        rate * 100.0,
        store.metrics().late_memory_overflowed
    );
    assert_eq!(found, expired, "no false negatives under capacity");
    assert!(rate < 0.005, "false-positive rate {rate}");
    assert_eq!(store.metrics().late_memory_overflowed, 0);
}

#[test]
fn metrics_count_decisions_and_claim_ends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock).durability(Durability::Sync)).unwrap();
    store.check_or_insert(b"a", TTL, b"1").unwrap(); // inserted
    store.check_or_insert(b"a", TTL, b"1").unwrap(); // replay
    let items: Vec<(&[u8], Duration, &[u8])> =
        vec![(b"a", TTL, b"1"), (b"b", TTL, b"2"), (b"b", TTL, b"2")];
    store.check_or_insert_batch(&items).unwrap(); // replay, inserted, replay
    store
        .check_or_insert_fingerprinted(b"fp", TTL, b"1", b"x")
        .unwrap(); // inserted
    assert!(store
        .check_or_insert_fingerprinted(b"fp", TTL, b"1", b"y")
        .is_err()); // mismatch

    let completed = acquired(store.claim(b"c1", LEASE).unwrap());
    assert!(store.check_or_insert(b"c1", TTL, b"x").is_err()); // in flight
    assert!(matches!(
        store.claim(b"c1", LEASE).unwrap(),
        Claim::InFlight { .. }
    )); // in flight
    store.complete(completed.clone(), TTL, b"ok").unwrap();
    assert!(store.claim(b"c1", LEASE).unwrap() == Claim::Duplicate(idem::Value::from(&b"ok"[..]))); // replay
    assert!(store.complete(completed, TTL, b"again").is_err()); // fenced
    let failed = acquired(store.claim(b"c2", LEASE).unwrap());
    store
        .finish(
            failed,
            Completion::Failure {
                backoff: Duration::from_secs(1),
                failure: b"",
            },
        )
        .unwrap();
    assert!(store.claim(b"c2", LEASE).is_err()); // failure
    let released = acquired(store.claim(b"c3", LEASE).unwrap());
    store.release(released).unwrap();
    let doubtful = acquired(store.claim(b"c4", LEASE).unwrap());
    store.finish(doubtful, Completion::Ambiguous).unwrap();

    let metrics = store.metrics();
    let d = metrics.decisions;
    assert_eq!((d.inserted, d.late_duplicates, d.replays), (3, 0, 4));
    assert_eq!(
        (d.in_flight, d.failures, d.fingerprint_mismatches),
        (2, 1, 1)
    );
    let c = metrics.claims;
    assert_eq!(
        (
            c.acquired,
            c.completed,
            c.failed,
            c.released,
            c.in_doubt,
            c.fenced
        ),
        (4, 1, 1, 1, 1, 1)
    );
    assert!(metrics.stats.fsyncs > 0 && metrics.bytes_per_fsync > 0);
    assert_eq!(metrics.stats.bytes_appended, store.stats().bytes_appended);

    drop(store);
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    let metrics = store.metrics();
    assert!(metrics.records_replayed > 0);
    assert_eq!(
        metrics.decisions,
        idem::DecisionCounts::default(),
        "counts start at open"
    );
}

/// A claim acquired on a key whose completed result expired shortly before is counted as a late
/// duplicate too (its answer, `Claim::Acquired`, is unchanged).
#[test]
fn claims_on_recently_expired_keys_count_as_late_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock).late_duplicate_grace(GRACE)).unwrap();
    let token = acquired(store.claim(b"charge", LEASE).unwrap());
    store.complete(token, TTL, b"receipt").unwrap();
    assert_eq!(store.metrics().decisions.late_duplicates, 0);
    clock.advance(TTL);
    acquired(store.claim(b"charge", LEASE).unwrap());
    acquired(store.claim(b"never-seen", LEASE).unwrap());
    let metrics = store.metrics();
    assert_eq!(metrics.decisions.late_duplicates, 1);
    assert_eq!(metrics.claims.acquired, 3);
}

/// The commit histograms: one sample per fsync, and every byte appended counted in exactly one
/// fsync's group; a batch is one group of all its records.
#[test]
fn fsync_latency_and_group_commit_size_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock).durability(Durability::Sync)).unwrap();
    let empty = store.metrics();
    assert_eq!(empty.fsync_latency_micros.count(), 0);
    assert_eq!(empty.commit_bytes.quantile(0.5), 0);
    // 16-byte keys and values: 47 bytes a record.
    for i in 0..50u32 {
        store
            .check_or_insert(format!("single-key-{i:05}").as_bytes(), TTL, &[1; 16])
            .unwrap();
    }
    let keys: Vec<Vec<u8>> = (0..1000u32)
        .map(|i| format!("batch-key--{i:05}").into_bytes())
        .collect();
    let items: Vec<(&[u8], Duration, &[u8])> =
        keys.iter().map(|k| (&k[..], TTL, &[2u8; 16][..])).collect();
    store.check_or_insert_batch(&items).unwrap();
    store.flush().unwrap();

    let metrics = store.metrics();
    let (latency, bytes) = (&metrics.fsync_latency_micros, &metrics.commit_bytes);
    assert_eq!(latency.count(), metrics.stats.fsyncs);
    assert_eq!(bytes.count(), metrics.stats.fsyncs);
    assert_eq!(bytes.sum(), metrics.stats.bytes_appended);
    assert_eq!(metrics.stats.bytes_appended, 1050 * 47);
    // Each single call waited for its own fsync: most groups are one record (32..=63 bytes),
    // and the batch's 47,000 bytes went in one (or two, if the writer's idle timer cut it).
    assert!(
        bytes.quantile(0.5) == 63,
        "{:?}",
        bytes.buckets().collect::<Vec<_>>()
    );
    assert!(bytes.quantile(1.0) >= 47_000 / 2, "{bytes:?}");
    assert!(latency.sum() > 0 && latency.quantile(0.99) >= latency.quantile(0.5));
    eprintln!(
        "fsync latency µs: p50 <= {}, p99 <= {}, max <= {}; bytes per fsync: {:?}",
        latency.quantile(0.5),
        latency.quantile(0.99),
        latency.quantile(1.0),
        bytes.buckets().collect::<Vec<_>>()
    );
}

/// Call latencies are in the snapshot with feature `metrics` (one sample per timed call), and
/// absent without it (a default build does not read the clock around calls).
#[test]
fn call_latencies_are_recorded_only_with_the_metrics_feature() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    for i in 0..10u32 {
        store
            .check_or_insert(format!("k{i}").as_bytes(), TTL, b"v")
            .unwrap();
    }
    store.decide(b"k0", TTL, b"v").unwrap();
    acquired(store.claim(b"c", LEASE).unwrap());
    let metrics = store.metrics();
    let (calls, claims) = (
        &metrics.check_or_insert_latency_nanos,
        &metrics.claim_latency_nanos,
    );
    if cfg!(feature = "metrics") {
        assert_eq!((calls.count(), claims.count()), (11, 1));
        assert!(calls.sum() > 0 && calls.quantile(0.5) <= calls.quantile(1.0));
    } else {
        assert_eq!((calls.count(), claims.count()), (0, 0));
    }
}
