//! redb 4: get + insert in one write transaction per call, committed at a given durability.

use std::path::Path;

use redb::ReadableTable as _;

use idem_bench::{value_for, Key};

use crate::peer::{BoxError, Engine, Peer};

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("dedup");

/// A redb database whose write transactions commit at `durability`.
pub struct Redb {
    pub durability: redb::Durability,
}

pub struct RedbEngine {
    db: redb::Database,
    durability: redb::Durability,
}

impl Peer for Redb {
    type Engine = RedbEngine;

    fn open(&self, dir: &Path) -> Result<RedbEngine, BoxError> {
        Ok(RedbEngine {
            db: redb::Database::create(dir.join("dedup.redb"))?,
            durability: self.durability,
        })
    }
}

impl RedbEngine {
    /// One write transaction over `keys`; returns how many were already there.
    fn commit(&self, keys: &[Key]) -> Result<u64, BoxError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        let mut duplicates = 0;
        {
            let mut table = txn.open_table(TABLE)?;
            for key in keys {
                if table.get(&key[..])?.is_some() {
                    duplicates += 1;
                } else {
                    table.insert(&key[..], &value_for(key)[..])?;
                }
            }
        }
        txn.commit()?;
        Ok(duplicates)
    }
}

impl Engine for RedbEngine {
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        Ok(self.commit(std::slice::from_ref(key))? == 1)
    }

    fn check_or_insert_batch(&mut self, keys: &[Key]) -> Result<u64, BoxError> {
        self.commit(keys)
    }

    /// A durable commit makes the `Durability::None` commits durable too.
    fn flush(&mut self) -> Result<(), BoxError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        let durability = self.durability;
        drop(self.db);
        Ok(format!(
            "get + insert in one write transaction per call; {durability:?} commits"
        ))
    }
}
