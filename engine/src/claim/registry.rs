//! The claims registry (claims open in this process or recovered in doubt) and the
//! [`ClaimToken`] a holder proves itself with. The state part of claims: it imports nothing
//! above the index and the record format, so the core state (`shared`) can own a registry.
//!
//! Invariants:
//! - Every claim that is its key's live entry is in the registry: put there, and taken out, under
//!   the key's shard lock. So an empty registry means no key is claimed.
//! - Entries leave when the claim is completed, released or removed, and when its lease has
//!   ended (`prune`, every maintenance round).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::error::Result;
use crate::fence::FencingTokens;
use crate::record::{Record, RecordKind};

/// Proof of holding a claim: pass it to [`crate::Store::complete`] or [`crate::Store::release`].
///
/// Its [`ClaimToken::fencing_token`] is larger than that of every claim taken before it in this
/// store, across reopens and crashes: hand it to the system the side effect goes to, which can
/// then refuse a holder whose token is lower than one it has already seen (a holder that paused
/// past its lease while another took the key over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken {
    pub(crate) key: Box<[u8]>,
    pub(crate) claim_id: u64,
    pub(crate) lease_until_millis: u64,
    pub(crate) fingerprint: Box<[u8]>,
}

impl ClaimToken {
    /// The claimed key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// When the lease ends: after it the token can no longer complete or release.
    pub fn lease_until(&self) -> SystemTime {
        system_time(self.lease_until_millis)
    }

    /// The request fingerprint the claim was made with (empty if none).
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// The claim's fencing token: strictly larger than the token of every claim taken earlier
    /// in this store, whatever key, across reopens and crashes.
    ///
    /// ```
    /// use std::time::Duration;
    /// let dir = tempfile::tempdir()?;
    /// let store = idem::Store::open(dir.path())?;
    /// let lease = Duration::from_secs(30);
    /// let idem::Claim::Acquired(first) = store.claim(b"a", lease)? else { unreachable!() };
    /// let idem::Claim::Acquired(second) = store.claim(b"b", lease)? else { unreachable!() };
    /// assert!(second.fencing_token() > first.fencing_token());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.claim_id
    }

    pub(crate) fn from_record(record: &Record<'_>) -> Option<ClaimToken> {
        let claim_id = u64::from_le_bytes(record.value.try_into().ok()?);
        Some(ClaimToken {
            key: record.key.into(),
            claim_id,
            lease_until_millis: record.expires_at_millis,
            fingerprint: record.fingerprint.into(),
        })
    }
}

pub(crate) fn system_time(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

#[derive(Debug)]
struct OpenClaim {
    token: ClaimToken,
    /// Found open by recovery: its side effect is in doubt.
    recovered: bool,
}

/// Claims opened in this process, and claims recovered open at startup (in doubt).
#[derive(Debug)]
pub(crate) struct ClaimRegistry {
    open: Mutex<HashMap<Box<[u8]>, OpenClaim>>,
    /// `open.len()`, readable without the lock: the batch path checks it on every call.
    count: AtomicUsize,
    fencing_tokens: FencingTokens,
}

impl ClaimRegistry {
    pub(crate) fn recovered(
        in_doubt: Vec<ClaimToken>,
        fencing_tokens: FencingTokens,
    ) -> ClaimRegistry {
        let registry = ClaimRegistry {
            open: Mutex::default(),
            count: AtomicUsize::new(0),
            fencing_tokens,
        };
        {
            let mut open = registry.open.lock();
            for token in in_doubt {
                let key = token.key.clone();
                open.insert(
                    key,
                    OpenClaim {
                        token,
                        recovered: true,
                    },
                );
            }
            registry.count.store(open.len(), Ordering::Release);
        }
        registry
    }

    pub(crate) fn next_claim_id(&self) -> Result<u64> {
        self.fencing_tokens.next()
    }

    pub(crate) fn remember(&self, token: &ClaimToken) {
        let mut open = self.open.lock();
        let claim = OpenClaim {
            token: token.clone(),
            recovered: false,
        };
        open.insert(token.key.clone(), claim);
        self.count.store(open.len(), Ordering::Release);
    }

    /// Puts a claim written by import in the registry as in doubt (its side effect happened,
    /// or not, in another store).
    pub(crate) fn remember_in_doubt(&self, token: &ClaimToken) {
        let mut open = self.open.lock();
        let claim = OpenClaim {
            token: token.clone(),
            recovered: true,
        };
        open.insert(token.key.clone(), claim);
        self.count.store(open.len(), Ordering::Release);
    }

    /// Makes every claim id handed out from now on larger than `id` (see `FencingTokens`).
    pub(crate) fn advance_claim_ids_past(&self, id: u64) -> Result<()> {
        self.fencing_tokens.advance_past(id)
    }

    /// Drops the key's claim, if any: it was completed, released, superseded or removed.
    pub(crate) fn forget(&self, key: &[u8]) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut open = self.open.lock();
        open.remove(key);
        self.count.store(open.len(), Ordering::Release);
    }

    /// Claims in the registry (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Forgets the claims whose lease ended (those recovered in doubt too: they are no longer
    /// in doubt, the key is free).
    pub(crate) fn prune(&self, now_millis: u64) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut open = self.open.lock();
        open.retain(|_, claim| claim.token.lease_until_millis > now_millis);
        self.count.store(open.len(), Ordering::Release);
    }

    /// Keys of the claims open now whose lease has not ended (for checkpoints).
    pub(crate) fn live_keys(&self, now_millis: u64) -> Vec<Box<[u8]>> {
        let mut open = self.open.lock();
        open.retain(|_, claim| claim.token.lease_until_millis > now_millis);
        self.count.store(open.len(), Ordering::Release);
        open.iter()
            .filter(|(_, claim)| claim.token.lease_until_millis > now_millis)
            .map(|(key, _)| key.clone())
            .collect()
    }

    pub(crate) fn in_doubt(&self) -> Vec<ClaimToken> {
        let open = self.open.lock();
        let mut tokens: Vec<ClaimToken> = open
            .values()
            .filter(|claim| claim.recovered)
            .map(|claim| claim.token.clone())
            .collect();
        tokens.sort_by(|a, b| a.key.cmp(&b.key));
        tokens
    }
}

/// Reads the claim a found record holds, if it is one.
pub(crate) fn claim_of(record: &Record<'_>) -> Option<ClaimToken> {
    (record.kind == RecordKind::Claim)
        .then(|| ClaimToken::from_record(record))
        .flatten()
}
