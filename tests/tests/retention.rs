//! Outcome-aware retention through the public API: how a claim's side effect ended decides how
//! long its key is kept. A success replays for its TTL; a definite failure frees the key at once
//! or after a back-off during which every call sees the recorded failure; an ambiguous outcome
//! stays in doubt (listed, answering `InFlight`) until reconciled. Each survives reopen, with
//! and without a checkpoint, and compaction. Time is a `ManualClock`.

use std::time::Duration;

use idem::{Claim, ClaimToken, Completion, Config, Durability, Error, ManualClock, Outcome, Store};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);
const BACKOFF: Duration = Duration::from_secs(5);

fn open(dir: &std::path::Path, clock: &ManualClock) -> Store {
    let config = Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0);
    Store::open_with(dir, config).unwrap()
}

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn assert_recent_failure<T: std::fmt::Debug>(answer: idem::Result<T>, bytes: &[u8]) {
    match answer {
        Err(Error::RecentFailure { failure, .. }) => assert_eq!(failure, bytes),
        other => panic!("expected RecentFailure, got {other:?}"),
    }
}

#[test]
fn success_replays_its_result_for_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let token = acquired(store.claim(b"k", LEASE).unwrap());
    store
        .finish(
            token,
            Completion::Success {
                ttl: TTL,
                result: b"ok",
            },
        )
        .unwrap();
    assert_eq!(
        store.claim(b"k", LEASE).unwrap(),
        Claim::Duplicate(idem::Value::from(&b"ok"[..]))
    );
    clock.advance(TTL);
    acquired(store.claim(b"k", LEASE).unwrap());
}

#[test]
fn a_failure_without_backoff_frees_the_key_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let token = acquired(store.claim(b"k", LEASE).unwrap());
    store
        .finish(
            token.clone(),
            Completion::Failure {
                backoff: Duration::ZERO,
                failure: b"declined",
            },
        )
        .unwrap();
    assert_eq!(store.get(b"k").unwrap(), None, "a failure is not cached");
    acquired(store.claim(b"k", LEASE).unwrap());
    assert!(matches!(
        store.finish(token, Completion::Ambiguous),
        Err(Error::StaleClaim { .. })
    ));
}

#[test]
fn a_failure_with_backoff_is_seen_until_it_ends_then_the_key_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let token = acquired(store.claim(b"k", LEASE).unwrap());
    store
        .finish(
            token,
            Completion::Failure {
                backoff: BACKOFF,
                failure: b"503 from bank",
            },
        )
        .unwrap();
    assert_recent_failure(store.claim(b"k", LEASE), b"503 from bank");
    assert_recent_failure(store.check_or_insert(b"k", TTL, b"v"), b"503 from bank");
    let items: Vec<(&[u8], Duration, &[u8])> = vec![(b"k", TTL, b"v")];
    assert_recent_failure(store.check_or_insert_batch(&items), b"503 from bank");
    let with = store.check_or_insert_with(b"k", TTL, || -> Result<Vec<u8>, std::io::Error> {
        panic!("the closure must not run during the back-off")
    });
    match with {
        Err(idem::WithError::Store(error)) => {
            assert_recent_failure::<()>(Err(error), b"503 from bank")
        }
        other => panic!("expected RecentFailure, got {other:?}"),
    }
    assert_eq!(store.get(b"k").unwrap(), None, "a failure is no result");
    clock.advance(BACKOFF - Duration::from_millis(1));
    assert_recent_failure(store.claim(b"k", LEASE), b"503 from bank");
    clock.advance(Duration::from_millis(1));
    let retry = acquired(store.claim(b"k", LEASE).unwrap());
    store.complete(retry, TTL, b"paid").unwrap();
    assert_eq!(
        store.check_or_insert(b"k", TTL, b"v").unwrap(),
        Outcome::Duplicate(idem::Value::from(&b"paid"[..]))
    );
}

#[test]
fn a_failure_backoff_survives_reopen_with_and_without_a_checkpoint() {
    for checkpoint in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let token = acquired(store.claim(b"k", LEASE).unwrap());
        store
            .finish(
                token,
                Completion::Failure {
                    backoff: BACKOFF,
                    failure: b"nope",
                },
            )
            .unwrap();
        if checkpoint {
            store.checkpoint().unwrap();
        }
        drop(store);
        let store = open(dir.path(), &clock);
        assert!(
            store.in_doubt().unwrap().is_empty(),
            "a failure is not in doubt"
        );
        assert_recent_failure(store.claim(b"k", LEASE), b"nope");
        clock.advance(BACKOFF);
        drop(store);
        // Past the back-off (longer than nothing, shorter than the lease): the claim record is
        // still in the log, and must not come back.
        let store = open(dir.path(), &clock);
        assert!(store.in_doubt().unwrap().is_empty());
        acquired(store.claim(b"k", LEASE).unwrap());
    }
}

#[test]
fn an_ambiguous_outcome_stays_in_doubt_past_its_lease_until_reconciled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let token = acquired(store.claim(b"k", LEASE).unwrap());
    store.finish(token.clone(), Completion::Ambiguous).unwrap();
    let listed = store.in_doubt().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key(), b"k");
    assert_eq!(listed[0].fencing_token(), token.fencing_token());
    // Long past the lease: never silently retried.
    clock.advance(LEASE * 100);
    assert!(matches!(
        store.claim(b"k", LEASE).unwrap(),
        Claim::InFlight { .. }
    ));
    assert!(matches!(
        store.check_or_insert(b"k", TTL, b"v"),
        Err(Error::ClaimInFlight { .. })
    ));
    drop(store);
    let store = open(dir.path(), &clock);
    let listed = store.in_doubt().unwrap();
    assert_eq!(listed.len(), 1, "still in doubt after reopen");
    // Reconciled with the original token: the side effect did happen.
    store.complete(token, TTL, b"reconciled").unwrap();
    assert!(store.in_doubt().unwrap().is_empty());
    assert_eq!(store.get(b"k").unwrap().unwrap(), b"reconciled");
    drop(store);
    let store = open(dir.path(), &clock);
    assert!(
        store.in_doubt().unwrap().is_empty(),
        "the reconciliation is durable"
    );
    assert_eq!(store.get(b"k").unwrap().unwrap(), b"reconciled");
    clock.advance(TTL);
    drop(store);
    // Past the result's TTL, the in-doubt claim (far longer) must not come back on replay.
    let store = open(dir.path(), &clock);
    assert!(store.in_doubt().unwrap().is_empty());
    acquired(store.claim(b"k", LEASE).unwrap());
}

#[test]
fn an_ambiguous_claim_released_by_its_listed_token_frees_the_key_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let token = acquired(store.claim(b"k", LEASE).unwrap());
    store.finish(token, Completion::Ambiguous).unwrap();
    clock.advance(LEASE * 2);
    let listed = store.in_doubt().unwrap().remove(0);
    // Reconciled: the side effect did not happen.
    store.release(listed).unwrap();
    acquired(store.claim(b"k", LEASE).unwrap());
    drop(store);
    let store = open(dir.path(), &clock);
    assert!(
        store.in_doubt().unwrap().len() == 1,
        "the new claim, in doubt after reopen"
    );
    assert_ne!(
        store.in_doubt().unwrap()[0].lease_until(),
        std::time::UNIX_EPOCH
    );
}

#[test]
fn retention_outcomes_survive_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
        .segment_size_bytes_for_testing(4096)
        .compaction_live_ratio(0.9);
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    let failed = acquired(store.claim(b"failed", LEASE).unwrap());
    store
        .finish(
            failed,
            Completion::Failure {
                backoff: Duration::from_secs(600),
                failure: b"down",
            },
        )
        .unwrap();
    let doubtful = acquired(store.claim(b"doubtful", LEASE).unwrap());
    store.finish(doubtful, Completion::Ambiguous).unwrap();
    // Fill segments with short-lived entries, so the first ones are mostly dead and compacted.
    for i in 0..400u32 {
        store
            .check_or_insert(
                format!("filler-{i}").as_bytes(),
                Duration::from_secs(1),
                &[7; 32],
            )
            .unwrap();
    }
    clock.advance(Duration::from_secs(2));
    store.maintain().unwrap();
    assert!(
        store.stats().segments_compacted >= 1,
        "the segment holding the failure and the in-doubt claim was compacted: {:?}",
        store.stats()
    );
    assert_recent_failure(store.claim(b"failed", LEASE), b"down");
    assert!(matches!(
        store.claim(b"doubtful", LEASE).unwrap(),
        Claim::InFlight { .. }
    ));
    drop(store);
    let store = Store::open_with(dir.path(), config).unwrap();
    assert_recent_failure(store.claim(b"failed", LEASE), b"down");
    assert_eq!(store.in_doubt().unwrap().len(), 1);
}

#[test]
fn bad_input_to_finish_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    let token = acquired(store.claim(b"k", LEASE).unwrap());
    let huge = vec![0u8; idem::MAX_VALUE_BYTES + 1];
    assert!(matches!(
        store.finish(
            token.clone(),
            Completion::Failure {
                backoff: BACKOFF,
                failure: &huge
            }
        ),
        Err(Error::ValueTooLarge { .. })
    ));
    assert!(store
        .finish(
            token.clone(),
            Completion::Failure {
                backoff: idem::MAX_TTL * 2,
                failure: b""
            }
        )
        .is_err());
    assert!(matches!(
        store.claim(b"k", LEASE).unwrap(),
        Claim::InFlight { .. }
    ));
    store.release(token).unwrap();
}

/// The refresh policy: a duplicate leaves the deadline as it is (a sliding window is not
/// offered). A key answered as a duplicate just before its deadline still expires on time.
#[test]
fn a_duplicate_leaves_the_deadline_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    assert_eq!(
        store.check_or_insert(b"k", TTL, b"v").unwrap(),
        Outcome::Inserted
    );
    clock.advance(TTL - Duration::from_millis(1));
    assert!(store
        .check_or_insert(b"k", TTL, b"w")
        .unwrap()
        .is_duplicate());
    let token = acquired(store.claim(b"c", LEASE).unwrap());
    store.complete(token, TTL, b"r").unwrap();
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.check_or_insert(b"k", TTL, b"x").unwrap(),
        Outcome::Inserted
    );
    assert_eq!(store.get(b"k").unwrap().unwrap(), b"x");
    // The claim's result, replayed by a claim, keeps its own deadline too.
    clock.advance(TTL - Duration::from_millis(2));
    assert!(matches!(
        store.claim(b"c", LEASE).unwrap(),
        Claim::Duplicate(_)
    ));
    clock.advance(Duration::from_millis(1));
    acquired(store.claim(b"c", LEASE).unwrap());
}
