//! [`Decision`]: the whole answer of a check-or-insert in one value, refusals included, and the
//! calls that return it ([`Store::decide`], [`Store::decide_fingerprinted`]).
//!
//! Why a new type beside [`Outcome`]: `Outcome` has two variants that existing callers match
//! exhaustively, and refusals (a claim in flight, a recorded failure, a fingerprint mismatch)
//! are errors there; adding variants to it would break those callers. `Decision` carries every
//! case, including the late-duplicate signal, and is `#[non_exhaustive]` so that later cases do
//! not break anyone. Both are computed by the same code under the same shard lock.

use std::time::{Duration, SystemTime};

use crate::answer::{Outcome, Value};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::validate::validate_fingerprint;

/// What a check-or-insert decided ([`Store::decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// First time: the key had no live entry (and none that expired recently, as far as the
    /// late-duplicate memory knows): key and value are now recorded.
    First,
    /// Recorded as new, but the key's previous entry expired shortly before (within
    /// [`crate::Config::late_duplicate_grace`]): the TTL was shorter than the real retry window,
    /// and this may be a duplicate that slipped through. Approximate: a key never seen is
    /// flagged with a small documented probability. Key and value are recorded.
    LateDuplicate,
    /// A replay: the key has a live recorded result, here it is. Nothing was written.
    Replay(Value),
    /// The key is claimed by a side effect in progress elsewhere until `until`.
    InFlight {
        /// When that claim's lease ends (for an in-doubt claim, far in the future).
        until: SystemTime,
    },
    /// The key's side effect failed recently; new attempts are held off until `until`.
    Failed {
        /// When the back-off ends.
        until: SystemTime,
        /// The bytes recorded with the failure.
        failure: Value,
    },
    /// The key was recorded with another request fingerprint: a reused key for another request.
    FingerprintMismatch,
}

impl Decision {
    /// Whether the key and value were recorded by this call ([`Decision::First`] or
    /// [`Decision::LateDuplicate`]): go on with the side effect.
    pub fn is_inserted(&self) -> bool {
        matches!(self, Decision::First | Decision::LateDuplicate)
    }

    /// The [`Outcome`] `check_or_insert` gives for the same answer, if it is not a refusal.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Decision::First | Decision::LateDuplicate => Some(Outcome::Inserted),
            Decision::Replay(value) => Some(Outcome::Duplicate(value.clone())),
            _ => None,
        }
    }

    fn of(answer: Result<(Outcome, bool)>) -> Result<Decision> {
        match answer {
            Ok((Outcome::Inserted, false)) => Ok(Decision::First),
            Ok((Outcome::Inserted, true)) => Ok(Decision::LateDuplicate),
            Ok((Outcome::Duplicate(value), _)) => Ok(Decision::Replay(value)),
            Err(Error::ClaimInFlight { until }) => Ok(Decision::InFlight { until }),
            Err(Error::RecentFailure { until, failure }) => Ok(Decision::Failed { until, failure }),
            Err(Error::FingerprintMismatch { .. }) => Ok(Decision::FingerprintMismatch),
            Err(other) => Err(other),
        }
    }
}

impl Store {
    /// [`Store::check_or_insert`], answering every case in one [`Decision`]: first time, late
    /// duplicate, replay, in flight elsewhere, failure recorded. Errors are left for bad input
    /// and I/O. Same cost, same durability rules (in `Sync` mode no answer before the record it
    /// rests on is durable).
    ///
    /// ```
    /// use std::time::Duration;
    /// use idem::Decision;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(60);
    /// assert_eq!(store.decide(b"msg-1", ttl, b"done")?, Decision::First);
    /// match store.decide(b"msg-1", ttl, b"done")? {
    ///     Decision::Replay(first) => assert_eq!(first, b"done"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decide(&self, key: &[u8], ttl: Duration, value: &[u8]) -> Result<Decision> {
        Decision::of(self.check_or_insert_inner(key, ttl, value, None))
    }

    /// [`Store::decide`] with a request fingerprint (see
    /// [`Store::check_or_insert_fingerprinted`]): a mismatch is [`Decision::FingerprintMismatch`].
    pub fn decide_fingerprinted(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
        fingerprint: &[u8],
    ) -> Result<Decision> {
        validate_fingerprint(fingerprint)?;
        Decision::of(self.check_or_insert_inner(key, ttl, value, Some(fingerprint)))
    }
}
