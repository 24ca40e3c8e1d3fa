//! Outcome-aware retention through the public API: how a claim's side effect ended decides how
//! long its key is kept. A success replays for its TTL; a definite failure frees the key at once
//! or after a back-off during which every call sees the recorded failure; an ambiguous outcome
//! stays in doubt (listed, answering `InFlight`) until reconciled. Each survives reopen, with
//! and without a checkpoint, and compaction. Time is a `ManualClock`.

use std::time::Duration;

use idem::{
    Claim, ClaimToken, Completion, Config, Durability, Error, ManualClock, Outcome, Refresh, Store,
};

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

/// The default refresh policy (`Refresh::Keep`): a duplicate leaves the deadline as it is. A key
/// answered as a duplicate just before its deadline still expires on time.
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

const SLIDE_TTL: Duration = Duration::from_secs(10);
const CAP: Duration = Duration::from_secs(25);
const SLIDING: Refresh = Refresh::Sliding { cap: CAP };
const MS: Duration = Duration::from_millis(1);

fn sliding_config(clock: &ManualClock) -> Config {
    Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
        .refresh(SLIDING)
}

/// Whether `key` is live, asked without touching its deadline (`get` never slides).
fn live(store: &Store, key: &[u8]) -> bool {
    store.get(key).unwrap().is_some()
}

/// The sliding policy: each duplicate keeps the key `ttl` past itself, never past the cap from
/// the first insertion; a duplicate that cannot move the deadline writes nothing.
#[test]
fn sliding_duplicates_extend_the_deadline_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
    assert_eq!(
        store.check_or_insert(b"k", SLIDE_TTL, b"v").unwrap(),
        Outcome::Inserted
    );
    clock.advance(Duration::from_secs(8)); // t = 8 s: the deadline moves from 10 s to 18 s
    assert!(store
        .check_or_insert(b"k", SLIDE_TTL, b"w")
        .unwrap()
        .is_duplicate());
    clock.advance(Duration::from_secs(9)); // t = 17 s: past the first deadline, still live
    assert!(live(&store, b"k"));
    // A duplicate now would move it to 27 s: the cap (25 s from the insertion) holds it there.
    assert_eq!(
        store.check_or_insert(b"k", SLIDE_TTL, b"w").unwrap(),
        Outcome::Duplicate(idem::Value::from(&b"v"[..]))
    );
    assert_eq!(store.metrics().decisions.refreshes, 2);
    clock.advance(Duration::from_secs(8) - MS); // t = 25 s - 1 ms
    let appended = store.stats().bytes_appended;
    assert!(store
        .check_or_insert(b"k", SLIDE_TTL, b"w")
        .unwrap()
        .is_duplicate());
    assert_eq!(
        store.stats().bytes_appended,
        appended,
        "at the cap a duplicate writes nothing"
    );
    assert_eq!(store.metrics().decisions.refreshes, 2);
    clock.advance(MS); // t = 25 s: the cap
    assert!(!live(&store, b"k"));
    assert_eq!(
        store.check_or_insert(b"k", SLIDE_TTL, b"new").unwrap(),
        Outcome::Inserted
    );
}

/// An extended deadline survives reopen, by full replay and by checkpoint alike, and expires at
/// the same millisecond either way.
#[test]
fn an_extended_deadline_survives_reopen_by_replay_and_by_checkpoint() {
    for checkpoint in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
        store.check_or_insert(b"k", SLIDE_TTL, b"v").unwrap();
        store.check_or_insert(b"kept", SLIDE_TTL, b"v").unwrap();
        clock.advance(Duration::from_secs(5));
        store.check_or_insert(b"k", SLIDE_TTL, b"v").unwrap(); // deadline 15 s
        if checkpoint {
            store.checkpoint().unwrap();
        }
        drop(store);
        let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
        assert_eq!(
            store.recovery_report().checkpoint_entries_loaded > 0,
            checkpoint,
            "{:?}",
            store.recovery_report()
        );
        clock.advance(Duration::from_secs(5)); // t = 10 s: the first deadline
        assert!(!live(&store, b"kept"), "a key with no duplicate expired");
        assert!(
            live(&store, b"k"),
            "checkpoint {checkpoint}: the extension is kept"
        );
        clock.advance(Duration::from_secs(5) - MS);
        assert!(live(&store, b"k"));
        drop(store);
        let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
        assert!(live(&store, b"k"));
        clock.advance(MS); // t = 15 s
        assert!(!live(&store, b"k"), "checkpoint {checkpoint}");
        drop(store);
        let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
        assert!(!live(&store, b"k"), "nothing older comes back at replay");
    }
}

/// Maintenance keeps the extended deadline: the wheel does not reap the entry at its first
/// deadline, deleting the first record's segment and compacting do not lose it, and a reopen
/// after them still has it until the extended deadline, then never again.
#[test]
fn maintenance_keeps_the_extended_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = sliding_config(&clock)
        .segment_size_bytes_for_testing(4096)
        .compaction_live_ratio(0.9)
        .expiry_tick(Duration::from_millis(100));
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    let long = Refresh::Sliding {
        cap: Duration::from_secs(3600),
    };
    store
        .check_or_insert_refreshing(b"k", SLIDE_TTL, b"v", long)
        .unwrap();
    // Short-lived fillers, so the segment of the first record is soon all dead.
    let fill = |round: u32| {
        for i in 0..200u32 {
            store
                .check_or_insert_refreshing(
                    format!("filler-{round}-{i}").as_bytes(),
                    Duration::from_secs(1),
                    &[7; 32],
                    Refresh::Keep,
                )
                .unwrap();
        }
    };
    fill(0);
    // Slide it three times (at 8, 16 and 24 s), and maintain each time past the deadline it had
    // before (at 12, 20 and 28 s): the wheel fires on the old deadlines.
    for round in 1..=3u32 {
        clock.advance(Duration::from_secs(if round == 1 { 8 } else { 4 }));
        assert!(store
            .check_or_insert(b"k", SLIDE_TTL, b"v")
            .unwrap()
            .is_duplicate());
        fill(round);
        clock.advance(Duration::from_secs(4));
        store.maintain().unwrap();
        assert!(live(&store, b"k"), "round {round}");
    }
    let stats = store.stats();
    assert!(
        stats.entries_expired >= 600 && stats.segments_deleted + stats.segments_compacted >= 1,
        "maintenance expired entries and reclaimed segments: {stats:?}"
    );
    // t = 28 s; the last duplicate, at 24 s, moved the deadline to 34 s.
    drop(store);
    let store = Store::open_with(dir.path(), config.clone()).unwrap();
    assert!(live(&store, b"k"));
    clock.advance(Duration::from_secs(6) - MS);
    store.maintain().unwrap();
    assert!(live(&store, b"k"));
    clock.advance(MS);
    store.maintain().unwrap();
    assert!(!live(&store, b"k"));
    drop(store);
    let store = Store::open_with(dir.path(), config).unwrap();
    assert!(!live(&store, b"k"));
}

/// The policy is the key's, chosen by the call that records it: per call with
/// `check_or_insert_refreshing` against the store's default, in both directions.
#[test]
fn the_refresh_policy_is_chosen_per_call_by_the_inserting_call() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let keep_store = Config::default()
        .clock(clock.clone())
        .background_maintenance(false);
    let store = Store::open_with(dir.path(), keep_store).unwrap();
    store.check_or_insert(b"plain", SLIDE_TTL, b"v").unwrap();
    store
        .check_or_insert_refreshing(b"sliding", SLIDE_TTL, b"v", SLIDING)
        .unwrap();
    clock.advance(Duration::from_secs(5));
    for key in [&b"plain"[..], b"sliding"] {
        // A plain call's duplicate slides a sliding key; a sliding call's leaves a plain one.
        store.check_or_insert(key, SLIDE_TTL, b"v").unwrap();
        store
            .check_or_insert_refreshing(key, SLIDE_TTL, b"v", SLIDING)
            .unwrap();
    }
    clock.advance(Duration::from_secs(5));
    assert!(!live(&store, b"plain"));
    assert!(live(&store, b"sliding"));
    drop(store);

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
    store
        .check_or_insert_refreshing(b"kept", SLIDE_TTL, b"v", Refresh::Keep)
        .unwrap();
    clock.advance(Duration::from_secs(5));
    store.check_or_insert(b"kept", SLIDE_TTL, b"v").unwrap();
    clock.advance(Duration::from_secs(5));
    assert!(!live(&store, b"kept"));
}

/// Every form of check-or-insert slides: fingerprinted, `decide`, batches (a key repeated in a
/// batch once, to the latest deadline), `check_or_insert_with` (whose closure does not run); a
/// completed claim's result slides under the store's policy; `get` and a claim's replay do not
/// move the deadline.
#[test]
fn every_check_or_insert_form_slides_and_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), sliding_config(&clock)).unwrap();
    let keys: [&[u8]; 6] = [b"fp", b"decide", b"batch", b"with", b"claimed", b"read"];
    for key in keys {
        if key == b"claimed" {
            let token = acquired(store.claim(key, LEASE).unwrap());
            store.complete(token, SLIDE_TTL, b"v").unwrap();
        } else if key == b"fp" {
            store
                .check_or_insert_fingerprinted(key, SLIDE_TTL, b"v", b"f")
                .unwrap();
        } else {
            store.check_or_insert(key, SLIDE_TTL, b"v").unwrap();
        }
    }
    clock.advance(Duration::from_secs(5));
    store
        .check_or_insert_fingerprinted(b"fp", SLIDE_TTL, b"v", b"f")
        .unwrap();
    assert!(matches!(
        store.decide(b"decide", SLIDE_TTL, b"v").unwrap(),
        idem::Decision::Replay(_)
    ));
    let items: Vec<(&[u8], Duration, &[u8])> = vec![
        (b"batch", Duration::from_secs(2), b"v"),
        (b"batch", SLIDE_TTL, b"v"),
        (b"batch", Duration::from_secs(3), b"v"),
    ];
    assert!(store
        .check_or_insert_batch(&items)
        .unwrap()
        .iter()
        .all(Outcome::is_duplicate));
    let with = store
        .check_or_insert_with(b"with", SLIDE_TTL, || -> Result<Vec<u8>, std::io::Error> {
            panic!("a duplicate: the closure must not run")
        })
        .unwrap();
    assert!(with.is_duplicate());
    store.check_or_insert(b"claimed", SLIDE_TTL, b"v").unwrap();
    assert!(matches!(
        store.claim(b"read", LEASE).unwrap(),
        Claim::Duplicate(_)
    ));
    assert!(live(&store, b"read"));
    assert_eq!(store.metrics().decisions.refreshes, 5);
    clock.advance(Duration::from_secs(5)); // t = 10 s: the first deadline of all
    assert!(
        !live(&store, b"read"),
        "get and a claim's replay do not slide"
    );
    for key in &keys[..5] {
        assert!(live(&store, key), "{}", String::from_utf8_lossy(key));
    }
    clock.advance(Duration::from_secs(5) - MS);
    assert!(
        live(&store, b"batch"),
        "the batch slid to its latest item's deadline"
    );
    clock.advance(MS);
    for key in keys {
        assert!(!live(&store, key), "{}", String::from_utf8_lossy(key));
    }
}

/// In `Sync` mode a sliding duplicate answers only once its extension is durable: a power loss
/// right after the answer keeps the extended deadline. (In `Never` mode the same loss may drop
/// it: the test can tell the two apart.)
#[test]
fn a_sync_extension_is_durable_when_the_duplicate_is_answered() {
    for durability in [Durability::Sync, Durability::Never] {
        let storage = idem::sim::SimStorage::new(7);
        let clock = ManualClock::new();
        let config = sliding_config(&clock)
            .durability(durability)
            .storage(storage.process());
        let dir = std::path::Path::new("/sim/store");
        let store = Store::open_with(dir, config.clone()).unwrap();
        store.check_or_insert(b"k", SLIDE_TTL, b"v").unwrap();
        store.flush().unwrap();
        clock.advance(Duration::from_secs(5));
        assert!(store
            .check_or_insert(b"k", SLIDE_TTL, b"v")
            .unwrap()
            .is_duplicate());
        storage.crash();
        drop(store);
        let store = Store::open_with(dir, config.storage(storage.process())).unwrap();
        clock.advance(Duration::from_secs(5));
        if durability == Durability::Sync {
            assert!(live(&store, b"k"), "the acknowledged extension survived");
        } else {
            assert!(
                !live(&store, b"k"),
                "an unflushed extension is lost in Never mode"
            );
        }
    }
}
