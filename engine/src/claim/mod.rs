//! Durable claims for side effects outside the store (two-phase: claim, then complete or release).
//!
//! `claim` records, durably in `Sync` mode, that a key's side effect is in progress until a lease
//! ends; `complete` replaces the claim with the result; `release` gives it up. After a crash the
//! claims still open are reported by `in_doubt`: their side effect may or may not have happened,
//! and the application reconciles them (then completes or releases the token it is given).
//!
//! Invariants:
//! - A claim is an index entry like an insert, pointing at a `Claim` record whose deadline is the
//!   lease end and whose value is the claim id; it answers `InFlight` until the lease ends, and
//!   after that the key is absent (claimable again).
//! - Fencing: `complete` and `release` succeed only while the key's current entry is the token's
//!   own live claim (same claim id, lease not ended). A holder whose lease ended, or whose key was
//!   completed, released, removed or claimed again, gets [`Error::StaleClaim`] and writes nothing.
//! - Claim ids are fencing tokens (see `fence`): each is larger than every id handed out
//!   before, across reopens and crashes, so they are unique and a holder can be ordered.
//! - What completes a claim outlives the claim: when the result's deadline is earlier than the
//!   lease end, `complete` also writes a shadow removal (deadline: the lease end) that hides the
//!   Claim record from replay, so the claim cannot come back once the result's segment is gone.
//! - Every claim that is its key's live entry is in the registry (put there under the key's shard
//!   lock), so an empty registry means no key is claimed. Entries leave it when the claim is
//!   completed, released or removed, and when its lease has ended (`prune`).
//! - In `Sync` mode an answer derived from another holder's claim (`InFlight`, a fingerprint
//!   mismatch) waits until that claim is durable, as `Duplicate` does.

pub(crate) mod registry;

use std::time::{Duration, SystemTime};

use crate::answer::Value;
use crate::error::{Error, Result};
use crate::index::{Probe, Slot};
use crate::record::{self, Record, RecordKind};
use crate::retention::Completion;
use crate::store::Store;
use crate::validate::{
    check_fingerprint, validate_fingerprint, validate_key, validate_ttl, validate_value,
};

pub use registry::ClaimToken;
pub(crate) use registry::{claim_of, system_time};

/// The answer of [`Store::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free: it is now claimed by this token until its lease ends. Do the side
    /// effect, then [`Store::complete`] (or [`Store::release`]) the token.
    Acquired(ClaimToken),
    /// The side effect was done before: here is its recorded result.
    Duplicate(Value),
    /// Another holder's side effect is in progress; retry after `until`.
    InFlight {
        /// When that holder's lease ends.
        until: SystemTime,
    },
}

impl Store {
    /// Claims `key` for a side effect outside the store, for `lease` (two-phase idempotency).
    ///
    /// In `Sync` mode the claim is durable before this returns, so a crash during the side
    /// effect leaves it visible: after reopen the key answers `InFlight` until the lease ends
    /// and is listed by [`Store::in_doubt`]. In `Periodic` and `Never` modes it is not: call
    /// [`Store::flush`] after claiming (once for a whole batch of claims) and before the side
    /// effect, or a crash can lose a claim whose side effect happened.
    ///
    /// The lease bounds everything: choose it longer than the side effect plus the longest
    /// restart you expect. When it ends the key is free again, the holder can no longer complete
    /// or release, and a claim left open by a crash is no longer listed in doubt.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// match store.claim(b"charge:order-17", Duration::from_secs(30))? {
    ///     idem::Claim::Acquired(token) => {
    ///         let receipt = b"charged 5 EUR, tx 991"; // ...call the payment provider here...
    ///         store.complete(token, Duration::from_secs(24 * 3600), receipt)?;
    ///     }
    ///     idem::Claim::Duplicate(receipt) => { let _ = receipt; /* done before */ }
    ///     idem::Claim::InFlight { until } => { let _ = until; /* someone is on it */ }
    /// }
    /// assert!(matches!(store.claim(b"charge:order-17", Duration::from_secs(30))?, idem::Claim::Duplicate(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn claim(&self, key: &[u8], lease: Duration) -> Result<Claim> {
        self.claim_inner(key, lease, None)
    }

    /// [`Store::claim`] with a request fingerprint (see
    /// [`Store::check_or_insert_fingerprinted`]): a claim or result of the key made with another
    /// fingerprint fails with [`Error::FingerprintMismatch`]. The result recorded by `complete`
    /// carries the same fingerprint.
    pub fn claim_fingerprinted(
        &self,
        key: &[u8],
        lease: Duration,
        fingerprint: &[u8],
    ) -> Result<Claim> {
        validate_fingerprint(fingerprint)?;
        self.claim_inner(key, lease, Some(fingerprint))
    }

    fn claim_inner(
        &self,
        key: &[u8],
        lease: Duration,
        fingerprint: Option<&[u8]>,
    ) -> Result<Claim> {
        #[cfg(feature = "metrics")]
        let _timer = crate::metrics::CallTimer::start("claim", &self.calls.claim);
        validate_key(key)?;
        let lease_millis = validate_ttl(lease)?;
        let shared = &*self.shared;
        shared.check_live()?;
        let now = shared.clock.now_millis();
        let hash = shared.index.hash(key);
        let mut buf = Vec::new();
        let mut table = shared.index.lock(hash);
        let (answer, wait_for) = match shared.probe(&table, hash, key, now, &mut buf)? {
            Probe::Found(slot) => {
                let record = record::decode(&buf).expect("checked during the probe");
                // Every answer here rests on another caller's record: in `Sync` mode it waits
                // until that record is durable.
                let end = shared.end_of(&table, slot, &record);
                let answer = match check_fingerprint(&record, fingerprint) {
                    Err(mismatch) => Err(mismatch),
                    Ok(()) if record.kind == RecordKind::Claim => Ok(Claim::InFlight {
                        until: system_time(record.expires_at_millis),
                    }),
                    Ok(()) => match crate::retention::refusal(&record) {
                        Some(failure) => Err(failure),
                        None => Ok(Claim::Duplicate(Value::from(record.value))),
                    },
                };
                match &answer {
                    Err(refusal) => table.counters.refused(refusal),
                    Ok(Claim::InFlight { .. }) => table.counters.in_flight += 1,
                    Ok(_) => table.counters.replays += 1,
                }
                (answer, end)
            }
            Probe::Vacant(slot) => {
                let late = table.late_duplicate(hash.tag, now);
                let claim_id = shared.claims.next_claim_id()?;
                let claim_id_bytes = claim_id.to_le_bytes();
                let record = Record {
                    kind: RecordKind::Claim,
                    key,
                    value: &claim_id_bytes,
                    expires_at_millis: now + lease_millis,
                    fingerprint: fingerprint.unwrap_or(&[]),
                    refresh_cap_millis: 0,
                };
                let (at, end) = shared.log.append(&record)?;
                let entry = Slot {
                    tag: hash.tag,
                    expires_at_secs: Slot::deadline_secs(record.expires_at_millis),
                    location: at,
                };
                table.put(slot, entry, now);
                shared.settle(&mut table);
                let token = ClaimToken::from_record(&record).expect("an 8-byte claim id");
                shared.claims.remember(&token);
                table.counters.claims_acquired += 1;
                if late {
                    table.counters.late_claims += 1;
                }
                (Ok(Claim::Acquired(token)), Some(end))
            }
        };
        drop(table);
        shared.answer_when_durable(wait_for, answer)
    }

    /// Records `result` for the claimed key for `ttl`, replacing the claim: later claims and
    /// check-or-inserts of the key answer `Duplicate(result)` until `ttl` from now, after which
    /// the key is free (even when that is before the lease would have ended: the claim never
    /// comes back).
    ///
    /// Fails with [`Error::StaleClaim`], writing nothing, if the token no longer holds the key.
    pub fn complete(&self, token: ClaimToken, ttl: Duration, result: &[u8]) -> Result<()> {
        self.finish(token, Completion::Success { ttl, result })
    }

    /// Ends the claim the way its side effect ended (see [`Completion`]): a success keeps the
    /// result for its TTL (as [`Store::complete`]); a definite failure frees the key, at once or
    /// after a back-off during which calls on the key fail with [`Error::RecentFailure`]; an
    /// ambiguous outcome keeps the key claimed and in doubt ([`Store::in_doubt`]) until it is
    /// reconciled. Each is a logged record, as durable as a completion, and survives a crash.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idem::{Claim, Completion, Error};
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let Claim::Acquired(token) = store.claim(b"charge:1", Duration::from_secs(30))? else { unreachable!() };
    /// // The provider said "card declined": do not cache it, but hold retries off for 5 s.
    /// store.finish(token, Completion::Failure { backoff: Duration::from_secs(5), failure: b"declined" })?;
    /// assert!(matches!(store.claim(b"charge:1", Duration::from_secs(30)), Err(Error::RecentFailure { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Fails with [`Error::StaleClaim`], writing nothing, if the token no longer holds the key.
    pub fn finish(&self, token: ClaimToken, completion: Completion<'_>) -> Result<()> {
        let resolution = match completion {
            Completion::Success { ttl, result } => {
                let ttl_millis = validate_ttl(ttl)?;
                validate_value(result)?;
                Resolution::Complete {
                    kind: RecordKind::Insert,
                    ttl_millis,
                    result,
                }
            }
            Completion::Failure { backoff, .. } if backoff.is_zero() => {
                Resolution::Release { failed: true }
            }
            Completion::Failure { backoff, failure } => {
                let ttl_millis = validate_ttl(backoff)?;
                validate_value(failure)?;
                Resolution::Complete {
                    kind: RecordKind::Failure,
                    ttl_millis,
                    result: failure,
                }
            }
            Completion::Ambiguous => Resolution::Ambiguous,
        };
        self.resolve(&token, resolution)
    }

    /// Gives up the claim without a result: the key is free again at once.
    ///
    /// Fails with [`Error::StaleClaim`], writing nothing, if the token no longer holds the key.
    pub fn release(&self, token: ClaimToken) -> Result<()> {
        self.resolve(&token, Resolution::Release { failed: false })
    }

    /// Claims that were open when the store was last closed or crashed, and that nobody has
    /// completed, released or replaced since: their side effect may or may not have happened.
    /// Reconcile each with the system the side effect went to, then `complete` or `release` it
    /// (possible while its lease lasts; after it, the key is free and the entry drops out).
    pub fn in_doubt(&self) -> Result<Vec<ClaimToken>> {
        self.shared.check_live()?;
        let now = self.shared.clock.now_millis();
        let mut tokens = self.shared.claims.in_doubt();
        tokens.retain(|token| token.lease_until_millis > now);
        Ok(tokens)
    }

    /// Replaces the token's claim by its result or its release, if the token still holds the key.
    fn resolve(&self, token: &ClaimToken, resolution: Resolution<'_>) -> Result<()> {
        let shared = &*self.shared;
        shared.check_live()?;
        let now = shared.clock.now_millis();
        let hash = shared.index.hash(&token.key);
        let mut buf = Vec::new();
        let mut table = shared.index.lock(hash);
        let slot = match shared.probe(&table, hash, &token.key, now, &mut buf)? {
            Probe::Found(slot) => {
                let record = record::decode(&buf).expect("checked during the probe");
                match claim_of(&record) {
                    // The current claim record's deadline, not the token's: an ambiguous
                    // outcome rewrote the claim with a later one.
                    Some(current) if current.claim_id == token.claim_id => {
                        Ok((slot, current.lease_until_millis))
                    }
                    Some(_) => Err(stale("the key was claimed again by another holder")),
                    None => Err(stale("the key already has a recorded result")),
                }
            }
            Probe::Vacant(_) if now >= token.lease_until_millis => Err(stale("the lease ended")),
            Probe::Vacant(_) => Err(stale("the claim was released or removed")),
        };
        let (slot, claim_until) = match slot {
            Ok(found) => found,
            Err(fenced) => {
                table.counters.claims_fenced += 1;
                return Err(fenced);
            }
        };
        let end = match resolution {
            Resolution::Complete {
                kind,
                ttl_millis,
                result,
            } => {
                let completion = Record {
                    kind,
                    key: &token.key,
                    value: result,
                    expires_at_millis: now + ttl_millis,
                    fingerprint: &token.fingerprint,
                    // A result slides like an insert under the store's policy (see `refresh`).
                    refresh_cap_millis: if kind == RecordKind::Insert {
                        shared.config.refresh.cap_at(now)
                    } else {
                        0
                    },
                };
                let (at, end) = if completion.expires_at_millis < claim_until {
                    // The result's segment may be deleted (all expired) while the Claim record
                    // still lives: this shadow, which lives as long as the claim, keeps replay
                    // from making the claim the key's entry again. Without an origin it hides
                    // only the key's records before itself, so it goes first and the
                    // completion after it stays. The two are one group: a crash that kept the
                    // completion without its shadow would let the claim come back in doubt
                    // once the completion's segment is reclaimed.
                    let shadow = Record {
                        kind: RecordKind::Remove,
                        key: &token.key,
                        value: &[],
                        expires_at_millis: claim_until,
                        fingerprint: &[],
                        refresh_cap_millis: 0,
                    };
                    let mut locations = [0; 2];
                    let end = shared
                        .log
                        .append_group_of_any_size(&[shadow, completion], &mut locations)?;
                    (locations[1], end)
                } else {
                    shared.log.append(&completion)?
                };
                let entry = Slot {
                    tag: hash.tag,
                    expires_at_secs: Slot::deadline_secs(completion.expires_at_millis),
                    location: at,
                };
                table.put(slot, entry, now);
                if kind == RecordKind::Failure {
                    table.counters.claims_failed += 1;
                } else {
                    table.counters.claims_completed += 1;
                }
                end
            }
            Resolution::Release { failed } => {
                let end = shared.remove_entry(&mut table, slot, &token.key, claim_until)?;
                if failed {
                    table.counters.claims_failed += 1;
                } else {
                    table.counters.claims_released += 1;
                }
                end
            }
            Resolution::Ambiguous => {
                // The same claim (id, fingerprint) again, held until reconciled: a later record
                // of the key wins on replay, so a crash cannot shorten it back to the lease.
                let claim_id = token.claim_id.to_le_bytes();
                let doubt = Record {
                    kind: RecordKind::Claim,
                    key: &token.key,
                    value: &claim_id,
                    expires_at_millis: now + crate::validate::MAX_TTL.as_millis() as u64,
                    fingerprint: &token.fingerprint,
                    refresh_cap_millis: 0,
                };
                let (at, end) = shared.log.append(&doubt)?;
                let entry = Slot {
                    tag: hash.tag,
                    expires_at_secs: Slot::deadline_secs(doubt.expires_at_millis),
                    location: at,
                };
                table.put(slot, entry, now);
                shared.settle(&mut table);
                let in_doubt = ClaimToken::from_record(&doubt).expect("an 8-byte claim id");
                // Under the shard lock, replacing the holder's entry: listed in doubt now.
                shared.claims.remember_in_doubt(&in_doubt);
                table.counters.claims_ambiguous += 1;
                drop(table);
                return shared.wait_if_sync(Some(end));
            }
        };
        shared.settle(&mut table);
        // Under the shard lock: a new claim of the key (taken under it too) must not be
        // forgotten in its place.
        shared.claims.forget(&token.key);
        drop(table);
        shared.wait_if_sync(Some(end))
    }
}

/// How a claim ends.
enum Resolution<'a> {
    /// With a result kept for the TTL (an Insert), or a failure kept for its back-off.
    Complete {
        kind: RecordKind,
        ttl_millis: u64,
        result: &'a [u8],
    },
    /// Without one: the key is free again (`failed`: a definite failure without back-off).
    Release { failed: bool },
    /// Unknown: the claim stays, in doubt, until reconciled.
    Ambiguous,
}

fn stale(reason: &str) -> Error {
    Error::StaleClaim {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Durability, ManualClock, Outcome};

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

    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(3600);

    #[test]
    fn claim_then_complete_answers_duplicate_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let token = acquired(store.claim(b"k", LEASE).unwrap());
        assert!(
            matches!(store.claim(b"k", LEASE).unwrap(), Claim::InFlight { until } if until == token.lease_until())
        );
        assert!(matches!(
            store.check_or_insert(b"k", TTL, b"x"),
            Err(Error::ClaimInFlight { .. })
        ));
        assert_eq!(store.get(b"k").unwrap(), None, "a claim has no result yet");
        store.complete(token.clone(), TTL, b"receipt").unwrap();
        assert_eq!(
            store.claim(b"k", LEASE).unwrap(),
            Claim::Duplicate(Value::from(&b"receipt"[..]))
        );
        assert_eq!(
            store.check_or_insert(b"k", TTL, b"x").unwrap(),
            Outcome::Duplicate(Value::from(&b"receipt"[..]))
        );
        assert_eq!(store.get(b"k").unwrap().unwrap(), b"receipt");
        assert!(matches!(
            store.complete(token, TTL, b"again"),
            Err(Error::StaleClaim { .. })
        ));
    }

    #[test]
    fn a_lapsed_lease_frees_the_key_and_fences_the_old_holder() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let old = acquired(store.claim(b"k", LEASE).unwrap());
        clock.advance(LEASE);
        let new = acquired(store.claim(b"k", LEASE).unwrap());
        assert_ne!(old, new);
        for attempt in [
            store.complete(old.clone(), TTL, b"late"),
            store.release(old.clone()),
        ] {
            let Err(Error::StaleClaim { reason }) = attempt else {
                panic!("stale token accepted")
            };
            assert!(reason.contains("claimed again"), "{reason}");
        }
        store.complete(new, TTL, b"fresh").unwrap();
        assert_eq!(store.get(b"k").unwrap().unwrap(), b"fresh");

        // A lapsed lease with nobody else: the holder is told its lease ended.
        let lonely = acquired(store.claim(b"other", LEASE).unwrap());
        clock.advance(LEASE + Duration::from_millis(1));
        let Err(Error::StaleClaim { reason }) = store.complete(lonely, TTL, b"late") else {
            panic!("completed after the lease")
        };
        assert!(reason.contains("lease ended"), "{reason}");
        assert_eq!(store.get(b"other").unwrap(), None, "nothing was written");
    }

    #[test]
    fn release_frees_the_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let token = acquired(store.claim(b"k", LEASE).unwrap());
        store.release(token.clone()).unwrap();
        assert!(matches!(
            store.release(token),
            Err(Error::StaleClaim { .. })
        ));
        assert_eq!(
            store.check_or_insert(b"k", TTL, b"v").unwrap(),
            Outcome::Inserted
        );
    }

    #[test]
    fn open_claims_survive_reopen_in_doubt_with_and_without_a_checkpoint() {
        for checkpoint in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new();
            let store = open(dir.path(), &clock);
            let open_claim = acquired(store.claim(b"in-doubt", LEASE).unwrap());
            let done = acquired(store.claim(b"done", LEASE).unwrap());
            store.complete(done, TTL, b"ok").unwrap();
            let released = acquired(store.claim(b"released", LEASE).unwrap());
            store.release(released).unwrap();
            if checkpoint {
                store.checkpoint().unwrap();
                store.check_or_insert(b"after", TTL, b"x").unwrap();
            }
            drop(store); // as if the process died during the side effect

            let store = open(dir.path(), &clock);
            assert_eq!(
                store.recovery_report().checkpoint_entries_loaded > 0,
                checkpoint
            );
            let in_doubt = store.in_doubt().unwrap();
            assert_eq!(
                in_doubt,
                vec![open_claim.clone()],
                "checkpoint: {checkpoint}"
            );
            assert!(matches!(
                store.claim(b"in-doubt", LEASE).unwrap(),
                Claim::InFlight { .. }
            ));
            assert!(
                store.claim(b"done", LEASE).unwrap() == Claim::Duplicate(Value::from(&b"ok"[..]))
            );
            // Reconciled: the side effect did happen.
            store
                .complete(in_doubt[0].clone(), TTL, b"reconciled")
                .unwrap();
            assert!(store.in_doubt().unwrap().is_empty());
            assert_eq!(store.get(b"in-doubt").unwrap().unwrap(), b"reconciled");
        }
    }

    #[test]
    fn an_in_doubt_claim_becomes_claimable_after_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        acquired(store.claim(b"k", LEASE).unwrap());
        drop(store);
        let store = open(dir.path(), &clock);
        assert_eq!(store.in_doubt().unwrap().len(), 1);
        clock.advance(LEASE);
        assert!(store.in_doubt().unwrap().is_empty(), "the lease ended");
        acquired(store.claim(b"k", LEASE).unwrap());
    }

    /// Issue #9, bug 8: claims recovered in doubt, and claims abandoned by their holder, leave
    /// the registry once their lease ended, in every maintenance round (not only at checkpoints,
    /// which `checkpoint_every_bytes(0)` turns off); inserts never touch the registry.
    #[test]
    fn lapsed_claims_leave_the_registry_every_maintenance_round() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        acquired(store.claim(b"in-doubt", LEASE).unwrap());
        drop(store);
        let store = open(dir.path(), &clock);
        acquired(store.claim(b"abandoned", LEASE).unwrap());
        assert_eq!(store.shared.claims.len(), 2);
        store.check_or_insert(b"plain", TTL, b"v").unwrap();
        store.maintain().unwrap();
        assert_eq!(store.shared.claims.len(), 2, "leases still running");
        clock.advance(LEASE);
        store.maintain().unwrap();
        assert_eq!(store.shared.claims.len(), 0, "lapsed claims were pruned");
        assert!(store.in_doubt().unwrap().is_empty());
    }

    #[test]
    fn fingerprints_refuse_a_reused_key_with_other_content() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let token = acquired(store.claim_fingerprinted(b"k", LEASE, b"amount=5").unwrap());
        assert!(matches!(
            store.claim_fingerprinted(b"k", LEASE, b"amount=6"),
            Err(Error::FingerprintMismatch { .. })
        ));
        assert!(matches!(
            store.claim_fingerprinted(b"k", LEASE, b"amount=5").unwrap(),
            Claim::InFlight { .. }
        ));
        store.complete(token, TTL, b"paid").unwrap();
        assert!(matches!(
            store.check_or_insert_fingerprinted(b"k", TTL, b"x", b"amount=6"),
            Err(Error::FingerprintMismatch { .. })
        ));
        assert_eq!(
            store
                .check_or_insert_fingerprinted(b"k", TTL, b"x", b"amount=5")
                .unwrap(),
            Outcome::Duplicate(Value::from(&b"paid"[..]))
        );
        assert!(matches!(
            store.check_or_insert_fingerprinted(b"k", TTL, b"x", &[0u8; 33]),
            Err(Error::FingerprintTooLarge { len: 33, max: 32 })
        ));
        drop(store);
        let store = open(dir.path(), &clock);
        assert!(matches!(
            store.claim_fingerprinted(b"k", LEASE, b"amount=6"),
            Err(Error::FingerprintMismatch { .. })
        ));
    }

    /// Regression (found by the `ops` fuzz target): ids restarted after a reopen in the same
    /// millisecond, so a released token could complete the next holder's claim.
    #[test]
    fn claim_ids_do_not_repeat_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let old = acquired(store.claim(b"k", LEASE).unwrap());
        store.close().unwrap();
        let store = open(dir.path(), &clock);
        store.release(old.clone()).unwrap();
        let _new = acquired(store.claim(b"k", LEASE).unwrap());
        assert!(matches!(
            store.complete(old, TTL, b"stale"),
            Err(Error::StaleClaim { .. })
        ));
    }

    /// Regression (found by the `ops` fuzz target): a batch that fails on a claimed key must
    /// not have recorded the items before it.
    #[test]
    fn a_batch_with_a_claimed_key_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        let _claim = acquired(store.claim(b"claimed", LEASE).unwrap());
        let items: Vec<(&[u8], Duration, &[u8])> = vec![(b"a", TTL, b"1"), (b"claimed", TTL, b"2")];
        let appended = store.stats().bytes_appended;
        assert!(matches!(
            store.check_or_insert_batch(&items),
            Err(Error::ClaimInFlight { .. })
        ));
        assert_eq!(store.stats().bytes_appended, appended);
        assert_eq!(
            store.check_or_insert(b"a", TTL, b"1").unwrap(),
            Outcome::Inserted
        );
    }

    /// A key recorded without a fingerprint accepts a fingerprinted retry (nothing to compare).
    #[test]
    fn a_key_recorded_without_fingerprint_accepts_one() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let store = open(dir.path(), &clock);
        store.check_or_insert(b"k", TTL, b"v").unwrap();
        assert!(store
            .check_or_insert_fingerprinted(b"k", TTL, b"x", b"fp")
            .unwrap()
            .is_duplicate());
        assert!(matches!(
            store.claim_fingerprinted(b"k", LEASE, b"fp").unwrap(),
            Claim::Duplicate(_)
        ));
    }

    /// Reopens after a power loss that kept any prefix of what a short-lived completion wrote,
    /// then lets the completion expire and maintenance reclaim its segments, then reopens
    /// again: the key must end where the first reopen left it. A completion kept without the
    /// shadow that outlives it (they used to be two appends, a segment roll apart here) was
    /// served, and after its segment was deleted the claim came back in doubt.
    #[test]
    fn a_completion_cut_short_by_a_power_loss_never_brings_its_claim_back() {
        use crate::io::Storage;
        use crate::log::segment::{list_segments, segment_file_name};
        use crate::sim::SimStorage;
        use std::path::Path;

        const DIR: &str = "/store";
        const HOUR: Duration = Duration::from_secs(3600);
        // Larger than a test segment, so the completion opens a segment of its own.
        let result = vec![0xAB; u16::MAX as usize];
        let config = |storage: &SimStorage, clock: &ManualClock| {
            Config::default()
                .storage(storage.process())
                .clock(clock.clone())
                .durability(Durability::Never)
                .background_maintenance(false)
                .checkpoint_every_bytes(0)
                .segment_size_bytes_for_testing(4096)
        };
        let len = |storage: &SimStorage, id: u32| {
            let path = Path::new(DIR).join(segment_file_name(id));
            storage.open(&path).unwrap().len().unwrap()
        };
        // Claim in segment 1, then the completion (1 ms) and whatever follows it.
        let written = |storage: &SimStorage, clock: &ManualClock| {
            let store = Store::open_with(DIR, config(storage, clock)).unwrap();
            // Long-lived keys beside the claim keep its segment too full to compact, so the
            // Claim record stays on disk after the completion supersedes it.
            for kept in 0..3u8 {
                store
                    .check_or_insert(&[b'l', kept], 24 * HOUR, &[kept; 1000])
                    .unwrap();
            }
            let token = acquired(store.claim(b"k", 24 * HOUR).unwrap());
            store.flush().unwrap();
            let claim_segment = *list_segments(storage, Path::new(DIR))
                .unwrap()
                .last()
                .unwrap();
            let claim_end = len(storage, claim_segment);
            store
                .complete(token, Duration::from_millis(1), &result)
                .unwrap();
            store.flush().unwrap();
            drop(store);
            storage.crash();
            // Each segment from the claim's on, with where the bytes after the claim start.
            let after: Vec<(u32, u64)> = list_segments(storage, Path::new(DIR))
                .unwrap()
                .into_iter()
                .filter(|&id| id >= claim_segment)
                .map(|id| (id, if id == claim_segment { claim_end } else { 0 }))
                .collect();
            after
        };

        let mut cuts = Vec::new();
        {
            let (storage, clock) = (SimStorage::new(1), ManualClock::new());
            for (id, start) in written(&storage, &clock) {
                let end = len(&storage, id);
                // Every cut near a segment's ends, where the records around the big result
                // start and stop (headers, shadow, seal), and a few inside it.
                const EDGE: u64 = 160;
                let edges =
                    (start..end.min(start + EDGE)).chain(end.saturating_sub(EDGE).max(start)..=end);
                let mut offsets: Vec<u64> = edges.chain((start..end).step_by(4093)).collect();
                offsets.sort_unstable();
                offsets.dedup();
                cuts.extend(offsets.into_iter().map(|offset| (id, offset)));
            }
        }
        let (mut completed, mut in_doubt) = (0, 0);
        for (cut_id, offset) in cuts {
            let (storage, clock) = (SimStorage::new(1), ManualClock::new());
            for (id, _) in written(&storage, &clock) {
                let path = Path::new(DIR).join(segment_file_name(id));
                if id > cut_id {
                    storage.remove(&path).unwrap();
                } else if id == cut_id {
                    storage.open(&path).unwrap().set_len(offset).unwrap();
                    storage.open(&path).unwrap().sync_data().unwrap();
                }
            }
            storage.sync_dir(Path::new(DIR)).unwrap();
            let store = Store::open_with(DIR, config(&storage, &clock)).unwrap();
            let served = store.get(b"k").unwrap();
            let doubt = store.in_doubt().unwrap();
            match &served {
                Some(value) => {
                    assert_eq!(value.as_ref(), &result[..], "cut {cut_id}:{offset}");
                    assert!(
                        doubt.is_empty(),
                        "cut {cut_id}:{offset}: served and in doubt"
                    );
                    completed += 1;
                }
                None => {
                    assert_eq!(doubt.len(), 1, "cut {cut_id}:{offset}: the claim is lost");
                    in_doubt += 1;
                }
            }
            // The completion expires; filler fills segments past it, and maintenance reclaims
            // everything expired.
            clock.advance(Duration::from_millis(2));
            for filler in 0..4u8 {
                store
                    .check_or_insert(&[b'f', filler], Duration::from_millis(1), &[0; 3000])
                    .unwrap();
            }
            clock.advance(HOUR);
            store.maintain().unwrap();
            store.flush().unwrap();
            drop(store);
            storage.crash();
            let store = Store::open_with(DIR, config(&storage, &clock)).unwrap();
            let doubt = store.in_doubt().unwrap();
            if served.is_some() {
                assert!(
                    doubt.is_empty(),
                    "cut {cut_id}:{offset}: a completed claim came back in doubt"
                );
                assert!(
                    matches!(store.claim(b"k", LEASE).unwrap(), Claim::Acquired(_)),
                    "cut {cut_id}:{offset}: the expired result frees the key"
                );
            } else {
                assert_eq!(doubt.len(), 1, "cut {cut_id}:{offset}: the claim is lost");
            }
        }
        assert!(completed > 0 && in_doubt > 0, "{completed} {in_doubt}");
    }
}
