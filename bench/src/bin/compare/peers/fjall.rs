//! fjall 3 with its default configuration (journal written to the OS per insert, no fsync).

use std::path::Path;

use idem_bench::{value_for, Key};

use crate::peer::{BoxError, Engine, Peer};

pub struct Fjall;

pub struct FjallEngine {
    db: fjall::Database,
    items: fjall::Keyspace,
}

impl Peer for Fjall {
    type Engine = FjallEngine;

    fn open(&self, dir: &Path) -> Result<FjallEngine, BoxError> {
        let db = fjall::Database::builder(dir).open()?;
        let items = db.keyspace("dedup", fjall::KeyspaceCreateOptions::default)?;
        Ok(FjallEngine { db, items })
    }
}

impl Engine for FjallEngine {
    /// Not atomic across threads (get, then insert): fjall runs single-threaded here.
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        if self.items.get(key)?.is_some() {
            return Ok(true);
        }
        self.items.insert(&key[..], &value_for(key)[..])?;
        Ok(false)
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        Ok(self.db.persist(fjall::PersistMode::SyncAll)?)
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        drop(self.items);
        drop(self.db);
        Ok("get + insert (not atomic across threads; 1 thread here); default config: journal written to the OS per insert, no fsync".into())
    }
}
