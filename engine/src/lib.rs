//! # idem: an embedded dedup store for exactly-once consumers
//!
//! Networks deliver at least once: a producer retries until acknowledged, so a consumer sees some
//! messages twice. "Exactly once" is at-least-once delivery plus an idempotent consumer: a table of
//! idempotency keys, each kept longer than the longest retry window (its TTL), checked before the
//! side effect. idem is that table, embedded in the consumer's process: a log-structured store with
//! a sharded hash index and one atomic primitive, [`Store::check_or_insert`].
//!
//! ```
//! use std::time::Duration;
//! let dir = tempfile::tempdir()?;
//! let store = idem::Store::open(dir.path())?; // Sync durability: answers survive kill -9
//! let key = b"payments/42:seq-1001";
//! match store.check_or_insert(key, Duration::from_secs(24 * 3600), b"charge-ok:tx-9")? {
//!     idem::Outcome::Inserted => { /* first delivery: the record is durable, go on */ }
//!     idem::Outcome::Duplicate(result) => { /* a retry: answer with the recorded result */
//!         let _ = result.as_ref();
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Module map, bottom up: [`record`] is the on-disk format (spec in `engine/FORMAT.md`); `io`
//! the file-system seam and [`sim`] a fault-injecting simulated disk; `log` owns segment files,
//! the write buffer, the group-commit writer and its commit queue; `index` the sharded hash index
//! and its expiry wheels; `fence` the durable source of fencing tokens; `recovery` replay on
//! open; `checkpoint` index snapshots; `shared` the core state the layers above build on (index,
//! log, clock, the claims registry of `claim::registry` and the state of `maintenance::state`),
//! with `answer` ([`Value`], [`Outcome`]) and `validate` (input checks) beside it; then the
//! procedures: `maintenance` (expiry, reclamation, compaction, checkpoints), `batch` (the
//! check-or-insert batch pipeline), `claim` (two-phase claims), `single_flight` (the table behind
//! `check_or_insert_with`); and `store`, the public [`Store`], a façade of open, close and the
//! calls, with `asynchronous` the async forms of the calls that wait for durability (futures
//! woken by the group commit., and `state` and `transaction` (state entries, positions and the
//! atomic commit of [`Transaction`]). Beside them the operator tools: `export`
//! ([`Store::export`], [`Store::import`]: the live window in a checksummed file) and `verify`
//! ([`verify`]: a read-only check of every file). [`Config`], [`Durability`], [`Clock`] and
//! [`Error`] are the knobs and answers. Across the layers: `retention` ([`Completion`]: how a
//! claim's outcome decides how long its key is kept, and which entries refuse a call), `refresh`
//! ([`Refresh`]: whether a duplicate slides its key's deadline, up to a cap),
//! `decision` ([`Decision`], [`Store::decide`]: every answer in one value), `histogram`
//! ([`Histogram`]: fsync latencies and group-commit sizes, recorded by the log writer), the index's
//! late-duplicate memory (`index::late`), `metrics` ([`Metrics`], [`Store::metrics`]: counters
//! kept per shard under its lock) and `trace` (events of the `tracing` feature). Above the store:
//! [`partition`] (one store per partition, ownership epochs, and with the `replication` feature a
//! changelog replicated through NATS JetStream).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod answer;
mod asynchronous;
mod batch;
mod checkpoint;
mod claim;
mod clock;
mod config;
mod decision;
mod error;
mod export;
mod fence;
mod hint;
mod histogram;
mod index;
mod io;
mod log;
mod maintenance;
mod metrics;
pub mod partition;
pub mod record;
mod recovery;
mod refresh;
mod retention;
mod shared;
pub mod sim;
mod single_flight;
mod state;
mod store;
mod store_with;
mod sync;
mod trace;
mod transaction;
mod validate;
mod verify;

pub use answer::{Outcome, Value};
pub use claim::{Claim, ClaimToken};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Durability};
pub use decision::Decision;
pub use error::{Error, Result};
pub use export::{ExportReport, ImportReport, LiveCount, EXPORT_VERSION};
pub use histogram::Histogram;
pub use maintenance::MaintenanceReport;
pub use metrics::{ClaimCounts, DecisionCounts, Metrics};
pub use record::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use recovery::{RecoveryReport, TruncatedTail};
pub use refresh::Refresh;
pub use retention::Completion;
pub use single_flight::WithError;
pub use store::{Stats, Store};
pub use transaction::{Transaction, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_RECORDS};
pub use validate::MAX_TTL;
pub use verify::{verify, CheckpointSummary, Damage, SegmentSummary, TornTail, VerifyReport};
