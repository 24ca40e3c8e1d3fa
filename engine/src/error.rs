//! Every failure the store reports, as one typed enum.
//!
//! Invariant: an error returned for bad input (key, value, TTL) means nothing was written and no
//! state changed. An error for damage names the file and the byte offset where it was found.

use std::path::PathBuf;

/// The result type of every fallible idem call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
///
/// The variants are the diagnosis: input errors (`EmptyKey`, `KeyTooLarge`, `ValueTooLarge`,
/// `ZeroTtl`, `TtlTooLarge`) change nothing; `Locked` means another owner holds the directory;
/// `NotASegment`, `UnsupportedVersion` and `Corrupt` describe damaged files; `Poisoned` means an
/// earlier write or fsync failed and the store no longer acknowledges anything as durable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key was empty; idempotency keys must identify something.
    #[error("key is empty: an idempotency key must have at least one byte")]
    EmptyKey,
    /// The key is longer than [`crate::MAX_KEY_BYTES`].
    #[error("key is {len} bytes, over the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than [`crate::MAX_VALUE_BYTES`].
    #[error("value is {len} bytes, over the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A TTL of zero would record an entry that is expired on arrival.
    #[error("ttl is zero: an entry must live for some time")]
    ZeroTtl,
    /// The TTL is longer than [`crate::MAX_TTL`].
    #[error("ttl of {ttl_secs} s is over the limit of {max_secs} s")]
    TtlTooLarge {
        /// The rejected TTL in whole seconds.
        ttl_secs: u64,
        /// The limit in seconds.
        max_secs: u64,
    },
    /// A fingerprint is longer than [`crate::record::MAX_FINGERPRINT_BYTES`].
    #[error("fingerprint is {len} bytes, over the limit of {max} bytes")]
    FingerprintTooLarge {
        /// Length of the rejected fingerprint.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The key was recorded (or claimed) by a request with another fingerprint: this request
    /// reuses an idempotency key for different content, and gets no other request's result.
    #[error(
        "idempotency key ({key_len} bytes) was used before with a different request fingerprint"
    )]
    FingerprintMismatch {
        /// Length of the key, to help find it without logging its bytes.
        key_len: usize,
    },
    /// The key is claimed by a side effect in progress (see [`crate::Store::claim`]); it has no
    /// result yet. Retry after `until`, when the lease ends.
    #[error("key is claimed by a side effect in progress until {until:?}")]
    ClaimInFlight {
        /// When the current claim's lease ends.
        until: std::time::SystemTime,
    },
    /// The key's last claim ended in a definite failure recorded with a back-off (see
    /// [`crate::Completion::Failure`]): until `until` the key is neither claimable nor
    /// insertable, so a retry storm does not hammer a failing dependency. After it the key is
    /// free.
    #[error("key's side effect failed; retry after {until:?}")]
    RecentFailure {
        /// When the back-off ends.
        until: std::time::SystemTime,
        /// The bytes recorded with the failure.
        failure: crate::Value,
    },
    /// A claim token no longer holds its key: its lease ended, or the key was completed,
    /// released, removed or claimed again. The holder must not record a result.
    #[error("stale claim: {reason}")]
    StaleClaim {
        /// What happened to the claim.
        reason: String,
    },
    /// Another process, or another `Store` in this process, has the directory open.
    #[error("store directory {dir} is already open (lock file {lock_file} is held)")]
    Locked {
        /// The store directory.
        dir: PathBuf,
        /// The lock file that is held.
        lock_file: PathBuf,
    },
    /// A file named like a segment does not start with the idem segment magic.
    #[error("{path} is not an idem segment file (bad magic)")]
    NotASegment {
        /// The offending file.
        path: PathBuf,
    },
    /// A transaction lost a race: another transaction or call committed first a change to a dedup
    /// key it checked, a state key it read, or a position it set. Nothing of it was written;
    /// retry the whole transaction (its reads will see the winner's writes).
    #[error("transaction conflict: {reason}; nothing was written, retry it")]
    Conflict {
        /// What changed under the transaction (key lengths only, never key bytes).
        reason: String,
    },
    /// A position may only move forward: the source is already at a later position.
    #[error(
        "position of source ({source_len} bytes) is {stored}; it cannot move back to {requested}"
    )]
    PositionRegressed {
        /// Length of the source name.
        source_len: usize,
        /// The stored position.
        stored: u64,
        /// The rejected position.
        requested: u64,
    },
    /// A transaction is over the documented limits ([`crate::MAX_TRANSACTION_RECORDS`] records,
    /// and bytes that fit in one segment: `max_bytes`). Nothing was written.
    #[error("transaction of {records} records and {bytes} bytes is over the limit ({max_bytes} bytes, or too many records)")]
    TransactionTooLarge {
        /// Records the transaction would write.
        records: usize,
        /// Bytes they take in the log.
        bytes: usize,
        /// The largest number of bytes a transaction may write.
        max_bytes: usize,
    },
    /// A segment or checkpoint was written by a format version this build cannot read.
    #[error("{path} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        /// The offending file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A file is damaged somewhere other than the torn tail of the newest segment.
    #[error("{path} is corrupt at byte offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the first damaged structure.
        offset: u64,
        /// What was wrong there.
        reason: String,
    },
    /// A write or fsync failed earlier; nothing more is acknowledged as durable.
    #[error("store is poisoned after an earlier I/O failure ({cause}); reopen it to recover")]
    Poisoned {
        /// A description of the first failure.
        cause: String,
    },
    /// An import would change the answer for a key: the store holds it live with another
    /// value, fingerprint or claim than the export file has (or the file holds it twice).
    /// Nothing was imported.
    #[error("import refused: key {} {reason}", crate::export::printable_key(key))]
    ImportConflict {
        /// The key in conflict.
        key: Vec<u8>,
        /// How the two differ.
        reason: String,
    },
    /// A partition handle's ownership epoch is no longer the partition's current one: the
    /// partition was revoked or assigned again (here or, through the changelog, to another
    /// node) since the handle was obtained. Nothing was written; the holder must stop writing
    /// for this partition (see `idem::partition`).
    #[error("partition {partition} is fenced: this handle's epoch is {epoch}, the partition is at epoch {current}; nothing was written")]
    Fenced {
        /// The partition id.
        partition: u32,
        /// The epoch the handle was obtained under.
        epoch: u64,
        /// The partition's current epoch (0 if unknown: the handle's owner lost the partition).
        current: u64,
    },
    /// A replicated partition's changelog did not confirm a write (a failed or timed-out
    /// publish, a broken connection). No answer was given for the write; the stream may or may
    /// not hold it, and the partition resynchronises from the stream before its next write.
    #[error("changelog of partition {partition}: {reason}")]
    Replication {
        /// The partition id.
        partition: u32,
        /// What failed.
        reason: String,
    },
    /// An operating-system I/O error, with what idem was doing.
    #[error("{context}: {source}")]
    Io {
        /// What idem was doing, with the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
