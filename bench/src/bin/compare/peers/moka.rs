//! moka's concurrent cache with a TTL: in memory only.

use std::path::Path;

use idem_bench::{value_for, Key, Val, TTL};

use crate::peer::{BoxError, Engine, Peer};

pub struct Moka;

impl Peer for Moka {
    type Engine = moka::sync::Cache<Key, Val>;

    fn has_disk(&self) -> bool {
        false
    }

    fn open(&self, _dir: &Path) -> Result<Self::Engine, BoxError> {
        Ok(moka::sync::Cache::builder().time_to_live(TTL).build())
    }
}

impl Engine for moka::sync::Cache<Key, Val> {
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        let entry = self.entry(*key).or_insert(value_for(key));
        Ok(!entry.is_fresh())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        self.run_pending_tasks();
        Ok(())
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        Ok("entry(key).or_insert(value) (atomic); in memory only".into())
    }
}
