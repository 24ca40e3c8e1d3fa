//! Outcome-aware retention: how a claim's side effect ended decides how long its key is kept
//! ([`Completion`]), and which found entries refuse a call instead of answering it (`refusal`).
//!
//! Invariants:
//! - A success is an Insert kept for its TTL (a replay answers its bytes).
//! - A definite failure with a back-off is a Failure record (kind 9) kept until the back-off
//!   ends: every call on the key is refused with [`Error::RecentFailure`] until then, and the
//!   key is free after it. Without a back-off it is a release: the key is free at once.
//! - An ambiguous outcome is the claim written again with the same claim id and a deadline
//!   [`crate::MAX_TTL`] away: the key answers `InFlight`, and the claim is listed by
//!   [`Store::in_doubt`](crate::Store::in_doubt), until the application reconciles it with
//!   `complete`, `finish` or `release`. It is never silently retried.

use std::time::Duration;

use crate::answer::Value;
use crate::error::Error;
use crate::record::{Record, RecordKind};

/// How a claim's side effect ended, given to [`crate::Store::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Completion<'a> {
    /// It happened: record `result` for `ttl` (what [`crate::Store::complete`] does). Later
    /// calls on the key replay `result`.
    Success {
        /// How long the result is kept.
        ttl: Duration,
        /// The result, answered to every later call on the key.
        result: &'a [u8],
    },
    /// It definitely did not happen (the dependency refused it). With a zero `backoff` the key
    /// is claimable again at once (as after [`crate::Store::release`]); otherwise, until
    /// `backoff` from now, claims and check-or-inserts of the key fail with
    /// [`Error::RecentFailure`] carrying `failure`, so that a retry storm does not hammer a
    /// failing dependency.
    Failure {
        /// How long the key refuses new attempts (zero: not at all).
        backoff: Duration,
        /// Bytes recorded with the failure (an error code, a message); empty is fine.
        failure: &'a [u8],
    },
    /// Nobody knows (a timeout, a lost connection): the key stays claimed and in doubt, listed
    /// by [`crate::Store::in_doubt`] and answering `InFlight`, until the application reconciles
    /// it with the system the side effect went to and then completes, finishes or releases the
    /// token (the same token, or the one `in_doubt` lists). It is never retried silently: its
    /// claim lasts [`crate::MAX_TTL`].
    Ambiguous,
}

/// The refusal a found entry answers with instead of a replay, if it is one: a claim in flight,
/// or a failure in its back-off.
#[inline]
pub(crate) fn refusal(record: &Record<'_>) -> Option<Error> {
    let until = || crate::claim::system_time(record.expires_at_millis);
    match record.kind {
        RecordKind::Claim => Some(Error::ClaimInFlight { until: until() }),
        RecordKind::Failure => Some(Error::RecentFailure {
            until: until(),
            failure: Value::from(record.value),
        }),
        _ => None,
    }
}
