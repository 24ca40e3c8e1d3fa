//! sled 0.34 with its default configuration (flushes every 500 ms).

use std::path::Path;

use idem_bench::{value_for, Key};

use crate::peer::{BoxError, Engine, Peer};

pub struct Sled;

pub struct SledEngine(sled::Db);

impl Peer for Sled {
    type Engine = SledEngine;

    fn open(&self, dir: &Path) -> Result<SledEngine, BoxError> {
        Ok(SledEngine(sled::Config::new().path(dir).open()?))
    }
}

impl Engine for SledEngine {
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        let value = value_for(key);
        let swapped = self
            .0
            .compare_and_swap(key, None::<&[u8]>, Some(&value[..]))?;
        Ok(swapped.is_err())
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        self.0.flush()?;
        Ok(())
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        drop(self.0);
        Ok("compare_and_swap(key, None, Some(value)); default config (flush every 500 ms)".into())
    }
}
