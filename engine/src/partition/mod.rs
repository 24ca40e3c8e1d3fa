//! Partitioned stores: one idem [`Store`] per partition of the input, with ownership epochs
//! ([`Partitions`], [`Partition`]).
//!
//! Consumers outgrow one machine by partitioning their input (Kafka partitions, JetStream
//! subjects): each node owns some partitions, and the owner of a partition must hold that
//! partition's dedup window. A [`Partitions`] handle opens one store per partition id under one
//! directory (`<dir>/partition-<id>`); the consumer's rebalance callbacks call
//! [`Partitions::assign`] and [`Partitions::revoke`]. A key is routed to the store of its
//! partition only, so it never lives in two stores.
//!
//! Invariants:
//! - Each partition has an epoch (a fencing token), kept in its own store as the position of the
//!   reserved source [`EPOCH_SOURCE`]: positions only move forward and are committed atomically
//!   with everything else, so the epoch survives crashes and reopens, and never goes back.
//! - Every change of owner moves the epoch forward: `assign` and `revoke` each commit a larger
//!   epoch (durably, in every durability mode) before they return.
//! - Every write through a [`Partition`] handle is a transaction that also sets the epoch
//!   position to the handle's epoch: if the epoch moved past it, the transaction is refused
//!   atomically (nothing of it is written) and the caller gets [`Error::Fenced`]. So a handle
//!   obtained under an old epoch can never write, even racing with the `assign` that fences it.
//!
//! Across nodes (each with its own directory) the epoch is decided by the changelog
//! (`partition::changelog`, feature `replication`): the stream refuses an old owner's appends.
//! Without replication, hand a partition over with [`Store::export`] / [`Store::import`] (or
//! `idem export` / `idem import`) after `revoke`.

#[cfg(feature = "replication")]
pub mod changelog;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use crate::answer::{Outcome, Value};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::transaction::Transaction;

/// The position source holding a partition store's ownership epoch. Sources starting with
/// `"\0idem/"` are reserved for idem: applications must not set them.
pub const EPOCH_SOURCE: &[u8] = b"\0idem/epoch";

/// A partition id (a Kafka partition number, a subject's partition index).
pub type PartitionId = u32;

/// One store per partition under one directory, and who owns which: see the module docs.
///
/// ```
/// use std::time::Duration;
/// let dir = tempfile::tempdir()?;
/// let partitions = idem::partition::Partitions::open(dir.path(), idem::Config::default())?;
/// let p3 = partitions.assign(3)?;               // from the rebalance callback
/// p3.check_or_insert(b"order-17", Duration::from_secs(3600), b"charged")?;
/// partitions.revoke(3)?;                         // the partition moves away
/// assert!(matches!(
///     p3.check_or_insert(b"order-18", Duration::from_secs(3600), b"charged"),
///     Err(idem::Error::Fenced { .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Partitions {
    dir: PathBuf,
    config: Config,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Partitions this node owns, with their store.
    owned: HashMap<PartitionId, Arc<Store>>,
    /// Every store opened, owned or not: a revoked partition's store stays open while an old
    /// handle holds it (its writes are fenced), and a new `assign` reuses it.
    opened: HashMap<PartitionId, Weak<Store>>,
}

impl std::fmt::Debug for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partitions")
            .field("dir", &self.dir)
            .field("owned", &self.owned())
            .finish()
    }
}

impl Partitions {
    /// Opens (creating it if needed) the directory holding the partitions' stores. Each store
    /// is opened with `config` when its partition is first assigned.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Partitions> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Partitions {
            dir,
            config,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The directory of partition `id`'s store.
    pub fn store_dir(&self, id: PartitionId) -> PathBuf {
        store_dir(&self.dir, id)
    }

    /// Takes ownership of partition `id` (the rebalance callback's "assigned"): opens its
    /// store if needed and commits the next epoch, durably, before returning the handle. Every
    /// handle obtained earlier for this partition is fenced from now on.
    pub fn assign(&self, id: PartitionId) -> Result<Partition> {
        self.assign_with(id, |current| Ok(current + 1))
    }

    /// Takes ownership of partition `id` at `epoch`, an epoch decided elsewhere (by the
    /// changelog's stream): it must be above the store's current epoch, else
    /// [`Error::Fenced`] and nothing changes.
    pub fn assign_at(&self, id: PartitionId, epoch: u64) -> Result<Partition> {
        self.assign_with(id, |current| {
            if epoch > current {
                Ok(epoch)
            } else {
                Err(Error::Fenced {
                    partition: id,
                    epoch,
                    current,
                })
            }
        })
    }

    fn assign_with(
        &self,
        id: PartitionId,
        next: impl FnOnce(u64) -> Result<u64>,
    ) -> Result<Partition> {
        let mut inner = self.inner.lock();
        let store = self.store(&mut inner, id)?;
        let epoch = next(current_epoch(&store)?)?;
        bump_epoch(&store, epoch, id)?;
        inner.owned.insert(id, store.clone());
        Ok(Partition { id, epoch, store })
    }

    /// Gives up partition `id` (the rebalance callback's "revoked"): commits the next epoch
    /// (fencing every handle out there), makes the store durable and closes it once no handle
    /// holds it. Revoking a partition this node does not own does nothing.
    pub fn revoke(&self, id: PartitionId) -> Result<()> {
        let mut inner = self.inner.lock();
        let Some(store) = inner.owned.remove(&id) else {
            return Ok(());
        };
        let epoch = current_epoch(&store)? + 1;
        bump_epoch(&store, epoch, id)?;
        store.flush()?;
        drop(store);
        // The store closes with the last handle; forget it if that was this one.
        if inner.opened.get(&id).is_some_and(|w| w.strong_count() == 0) {
            inner.opened.remove(&id);
        }
        Ok(())
    }

    /// The partitions this node owns, ascending.
    pub fn owned(&self) -> Vec<PartitionId> {
        let mut ids: Vec<PartitionId> = self.inner.lock().owned.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The handle of an owned partition, at its current epoch (`None` if not owned here).
    pub fn get(&self, id: PartitionId) -> Result<Option<Partition>> {
        let inner = self.inner.lock();
        let Some(store) = inner.owned.get(&id) else {
            return Ok(None);
        };
        let epoch = current_epoch(store)?;
        Ok(Some(Partition {
            id,
            epoch,
            store: store.clone(),
        }))
    }

    /// The stored epoch of partition `id` (0 if it never had an owner). Opens the store
    /// briefly if no handle holds it.
    pub fn epoch(&self, id: PartitionId) -> Result<u64> {
        let mut inner = self.inner.lock();
        let store = self.store(&mut inner, id)?;
        current_epoch(&store)
    }

    /// Partition `id`'s store, opened if needed, whether this node owns the partition or not:
    /// for a standby's copy (`changelog::Changelog::follow`) or tools. Writes made on it
    /// directly are not fenced.
    pub fn open_store(&self, id: PartitionId) -> Result<Arc<Store>> {
        let mut inner = self.inner.lock();
        self.store(&mut inner, id)
    }

    /// The open store of partition `id`, or opens it.
    fn store(&self, inner: &mut Inner, id: PartitionId) -> Result<Arc<Store>> {
        if let Some(store) = inner.opened.get(&id).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(Store::open_with(self.store_dir(id), self.config.clone())?);
        inner.opened.insert(id, Arc::downgrade(&store));
        Ok(store)
    }
}

/// `<dir>/partition-<id>`, zero-padded so that listings sort by id.
pub(crate) fn store_dir(dir: &Path, id: PartitionId) -> PathBuf {
    dir.join(format!("partition-{id:05}"))
}

/// The epoch stored in a partition's store (0: never owned).
pub(crate) fn current_epoch(store: &Store) -> Result<u64> {
    Ok(store.position(EPOCH_SOURCE)?.unwrap_or(0))
}

/// Commits `epoch` as the partition's epoch, durable before it returns in every mode.
fn bump_epoch(store: &Store, epoch: u64, id: PartitionId) -> Result<()> {
    let mut tx = store.transaction();
    tx.set_position(EPOCH_SOURCE, epoch)
        .map_err(|e| fenced_or(e, store, id, epoch))?;
    tx.commit().map_err(|e| fenced_or(e, store, id, epoch))?;
    store.flush()
}

/// `error` as [`Error::Fenced`] if the partition's epoch moved past `epoch`; else unchanged.
pub(crate) fn fenced_or(error: Error, store: &Store, id: PartitionId, epoch: u64) -> Error {
    match error {
        Error::Conflict { .. } | Error::PositionRegressed { .. } => match current_epoch(store) {
            Ok(current) if current != epoch => Error::Fenced {
                partition: id,
                epoch,
                current,
            },
            _ => error,
        },
        other => other,
    }
}

/// A partition owned at one epoch: every write through it is refused with [`Error::Fenced`]
/// once the partition's epoch has moved past it. Cheap to clone.
#[derive(Clone)]
pub struct Partition {
    id: PartitionId,
    epoch: u64,
    store: Arc<Store>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl Partition {
    /// The partition id.
    pub fn id(&self) -> PartitionId {
        self.id
    }

    /// The epoch this handle was obtained under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The partition's store, for reads (`get`, `get_state`, `position`, `stats`, `export`).
    /// Writes made on it directly are not fenced: write through the handle.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// [`Store::check_or_insert`] under this handle's epoch.
    pub fn check_or_insert(&self, key: &[u8], ttl: Duration, value: &[u8]) -> Result<Outcome> {
        let mut tx = self.transaction()?;
        let outcome = tx.check_or_insert(key, ttl, value)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// [`Store::check_or_insert_batch`] under this handle's epoch: one transaction, all or
    /// nothing. A key given twice is `Duplicate` of its first value the second time.
    pub fn check_or_insert_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, Duration, V)],
    ) -> Result<Vec<Outcome>> {
        let mut tx = self.transaction()?;
        let mut first: HashMap<&[u8], &[u8]> = HashMap::new();
        let mut outcomes = Vec::with_capacity(items.len());
        for (key, ttl, value) in items {
            let (key, value) = (key.as_ref(), value.as_ref());
            let outcome = match first.get(key) {
                Some(&earlier) => Outcome::Duplicate(Value::from(earlier)),
                None => {
                    let outcome = tx.check_or_insert(key, *ttl, value)?;
                    if outcome == Outcome::Inserted {
                        first.insert(key, value);
                    }
                    outcome
                }
            };
            outcomes.push(outcome);
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// A transaction on the partition's store under this handle's epoch: commit it with
    /// [`PartitionTransaction::commit`], which refuses it with [`Error::Fenced`] (nothing
    /// written) if the epoch moved on. Fails at once with `Fenced` if it already has.
    pub fn transaction(&self) -> Result<PartitionTransaction<'_>> {
        let mut tx = self.store.transaction();
        tx.set_position(EPOCH_SOURCE, self.epoch)
            .map_err(|e| fenced_or(e, &self.store, self.id, self.epoch))?;
        Ok(PartitionTransaction {
            tx: Some(tx),
            partition: self,
        })
    }

    /// The partition's current epoch, as its store has it.
    pub fn current_epoch(&self) -> Result<u64> {
        current_epoch(&self.store)
    }

    /// [`Store::get`] on the partition's store.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>> {
        self.store.get(key)
    }
}

/// A [`Transaction`] of a [`Partition`], carrying the handle's epoch: it derefs to the
/// transaction for `check_or_insert`, `get_state`, `put_state`, `set_position`, ...
#[must_use = "a transaction writes nothing until it is committed"]
pub struct PartitionTransaction<'p> {
    /// Always `Some` until `commit` takes it.
    tx: Option<Transaction<'p>>,
    partition: &'p Partition,
}

impl std::fmt::Debug for PartitionTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionTransaction")
            .field("partition", &self.partition)
            .field("tx", &self.tx)
            .finish()
    }
}

impl<'p> std::ops::Deref for PartitionTransaction<'p> {
    type Target = Transaction<'p>;
    fn deref(&self) -> &Transaction<'p> {
        self.tx.as_ref().expect("present until commit")
    }
}

impl std::ops::DerefMut for PartitionTransaction<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.tx.as_mut().expect("present until commit")
    }
}

impl PartitionTransaction<'_> {
    /// Commits atomically, or fails with nothing written: [`Error::Fenced`] if the partition's
    /// epoch moved past the handle's, else as [`Transaction::commit`].
    pub fn commit(mut self) -> Result<()> {
        let tx = self.tx.take().expect("present until commit");
        let p = self.partition;
        tx.commit()
            .map_err(|e| fenced_or(e, &p.store, p.id, p.epoch))
    }
}
