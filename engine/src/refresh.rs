//! The refresh policy: whether a duplicate leaves a key's deadline as it is ([`Refresh::Keep`],
//! the default) or moves it later, a sliding window, up to a cap measured from the first
//! insertion ([`Refresh::Sliding`]).
//!
//! The policy belongs to the key: the call that records it decides (the store's
//! [`crate::Config::refresh`], or [`Store::check_or_insert_refreshing`] per call) and a sliding
//! entry's record carries its cap as an absolute deadline (`Record::refresh_cap_millis`, a
//! 6-byte field announced by a flag bit, so entries that keep their deadline cost nothing). A
//! duplicate answered for such an entry by a check-or-insert (single, fingerprinted, `decide`,
//! batch, `check_or_insert_with`) moves its deadline to `min(now + ttl, cap)`, `ttl` being the
//! duplicate call's, when that is later: by writing the entry again (same key, value,
//! fingerprint and cap; the new deadline) and pointing the index at the copy, under the key's
//! shard lock.
//!
//! Invariants:
//! - An extension is an ordinary Insert record of the key, later in the log than the record it
//!   extends: replay (later record wins), checkpoints (entries point at records), compaction
//!   (copies records whole) and expiry all see the extended deadline with no rule of their own.
//! - A deadline only moves later, and never past the cap.
//! - In `Sync` mode a duplicate that extended answers only once the extension is durable (the
//!   caller waits for its end, which covers the record it extends).
//! - With the default policy nothing here runs: the hot path pays one comparison of two fields
//!   of the record it already decoded.

use std::time::Duration;

use crate::answer::Outcome;
use crate::error::Result;
use crate::index::{ShardTable, Slot};
use crate::log::Location;
use crate::record::{Record, RecordKind};
use crate::shared::Shared;
use crate::store::Store;
use crate::validate::MAX_TTL;

/// What a duplicate does to the deadline of the key it finds ([`crate::Config::refresh`],
/// [`Store::check_or_insert_refreshing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Refresh {
    /// The deadline stays where the first insertion put it (the default).
    #[default]
    Keep,
    /// Every duplicate moves the deadline to `now + ttl` (the duplicate call's TTL) if that is
    /// later, but never past `cap` after the key was recorded: a key retried forever still
    /// expires. A zero `cap` is [`Refresh::Keep`]; a cap above [`MAX_TTL`] is `MAX_TTL`.
    Sliding {
        /// The longest the key may be kept, from the call that recorded it.
        cap: Duration,
    },
}

impl Refresh {
    /// The cap deadline to record with an entry inserted at `now` (0: none, keep the deadline).
    #[inline]
    pub(crate) fn cap_at(self, now_millis: u64) -> u64 {
        match self {
            Refresh::Keep => 0,
            Refresh::Sliding { cap } => {
                let cap = cap.min(MAX_TTL).as_millis() as u64;
                if cap == 0 {
                    0
                } else {
                    now_millis + cap
                }
            }
        }
    }
}

/// Whether a duplicate answered from `found` may move its deadline (the entry slides and its
/// cap is not reached). The one test the default path pays.
#[inline]
pub(crate) fn slides(found: &Record<'_>) -> bool {
    found.refresh_cap_millis > found.expires_at_millis
}

impl Shared {
    /// Extends the entry at `slot` of `table` (its record `found`, a duplicate just answered) to
    /// `min(wanted, cap)` if that is later than its deadline: appends the extension and points
    /// the slot at it. Returns the extension's end (for a `Sync` caller to wait on), or `None`
    /// if the deadline stays.
    #[inline(never)]
    pub(crate) fn slide(
        &self,
        table: &mut ShardTable,
        slot: usize,
        found: &Record<'_>,
        wanted_millis: u64,
        now: u64,
    ) -> Result<Option<Location>> {
        let deadline = wanted_millis.min(found.refresh_cap_millis);
        if found.kind != RecordKind::Insert || deadline <= found.expires_at_millis {
            return Ok(None);
        }
        let extension = Record {
            expires_at_millis: deadline,
            ..*found
        };
        let (at, end) = self.log.append(&extension)?;
        let entry = Slot {
            tag: table.slot(slot).tag,
            expires_at_secs: Slot::deadline_secs(deadline),
            location: at,
        };
        table.put(slot, entry, now);
        table.counters.refreshes += 1;
        self.settle(table);
        Ok(Some(end))
    }
}

/// A duplicate found by a batch's first phase whose entry slides, extended once the batch can no
/// longer be refused (all or nothing: a refused batch writes nothing).
pub(crate) struct PlannedSlide {
    /// The item's index in the batch.
    pub(crate) item: usize,
    /// The entry's slot in its shard (valid until the batch puts its new entries).
    pub(crate) slot: usize,
    /// The found record's bytes.
    pub(crate) record: Vec<u8>,
}

/// Extends the entries of `planned` (a batch's sliding duplicates) under the batch's shard locks
/// (`guards`, item `i`'s at `guard_of[i]`), before the batch puts its new entries (which may
/// move slots). A key repeated in the batch is extended to the latest of its items' deadlines.
/// Returns the furthest extension's end.
pub(crate) fn slide_batch(
    shared: &Shared,
    guards: &mut [parking_lot::MutexGuard<'_, ShardTable>],
    guard_of: &[usize],
    planned: &[PlannedSlide],
    ttls: &[u64],
    now: u64,
) -> Result<Option<Location>> {
    let mut extended: std::collections::HashMap<(usize, usize), u64> = Default::default();
    let mut furthest = None;
    for plan in planned {
        let found = crate::record::decode(&plan.record).expect("decoded during the probe");
        let guard = guard_of[plan.item];
        let current = extended
            .get(&(guard, plan.slot))
            .copied()
            .unwrap_or(found.expires_at_millis);
        let found = Record {
            expires_at_millis: current,
            ..found
        };
        let wanted = now + ttls[plan.item];
        if let Some(end) = shared.slide(&mut guards[guard], plan.slot, &found, wanted, now)? {
            extended.insert((guard, plan.slot), wanted.min(found.refresh_cap_millis));
            furthest = furthest.max(Some(end));
        }
    }
    Ok(furthest)
}

impl Store {
    /// [`Store::check_or_insert`] with the refresh policy of this call instead of the store's
    /// ([`crate::Config::refresh`]). The policy is the key's, fixed by the call that records it:
    /// here, if this call inserts, later duplicates of the key slide its deadline (or leave it,
    /// with [`Refresh::Keep`]); a duplicate answered by this call extends the key if the call
    /// that recorded it chose a sliding policy, whatever this one says.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idem::{Outcome, Refresh};
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let ttl = Duration::from_secs(60);
    /// let sliding = Refresh::Sliding { cap: Duration::from_secs(3600) };
    /// assert_eq!(store.check_or_insert_refreshing(b"session-7", ttl, b"v", sliding)?, Outcome::Inserted);
    /// // Each duplicate keeps the key another minute from now, for at most an hour in all.
    /// assert!(store.check_or_insert(b"session-7", ttl, b"v")?.is_duplicate());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_or_insert_refreshing(
        &self,
        key: &[u8],
        ttl: Duration,
        value: &[u8],
        refresh: Refresh,
    ) -> Result<Outcome> {
        self.check_or_insert_policy(key, ttl, value, None, refresh)
            .map(|(outcome, _)| outcome)
    }
}
