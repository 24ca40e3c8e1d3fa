//! idem itself, at a given durability.

use std::path::Path;
use std::time::Duration;

use idem_bench::{value_for, Key, Val, TTL};

use crate::peer::{BoxError, Engine, Peer};

/// `idem::Store` opened with the default configuration at `durability`.
pub struct Idem {
    pub durability: idem::Durability,
    /// Each single-key operation is a transaction: the dedup check, a state write and a
    /// position (issue #11's cost target), instead of a plain `check_or_insert`.
    pub transactional: bool,
    /// Delta checkpoints every this many bytes of log (`Config::checkpoint_delta_every_bytes`;
    /// 0: the default, off), to measure what they cost next to the default.
    pub delta_every_bytes: u64,
    /// `Config::expected_keys` set to the run's key count (its tables never grow in the run).
    pub presized: bool,
}

pub struct IdemEngine {
    store: idem::Store,
    transactional: bool,
    /// The input position of the transactional rows' one source.
    position: std::sync::atomic::AtomicU64,
    /// The batch handed to `check_or_insert_batch`, reused from call to call.
    items: Vec<(Key, Duration, Val)>,
    /// The state key of each customer, made once: formatting one per operation would be
    /// measured as part of the transaction.
    customers: Vec<Vec<u8>>,
}

/// State keys the transactional rows write to: one per "customer".
const CUSTOMERS: u64 = 1024;

impl Peer for Idem {
    type Engine = IdemEngine;

    fn open(&self, dir: &Path) -> Result<IdemEngine, BoxError> {
        self.open_for(dir, 0)
    }

    fn open_for(&self, dir: &Path, keys: usize) -> Result<IdemEngine, BoxError> {
        let mut config = idem::Config::default()
            .durability(self.durability)
            .checkpoint_delta_every_bytes(self.delta_every_bytes);
        if self.presized {
            config = config.expected_keys(keys as u64);
        }
        Ok(IdemEngine {
            store: idem::Store::open_with(dir, config)?,
            transactional: self.transactional,
            position: std::sync::atomic::AtomicU64::new(0),
            items: Vec::new(),
            customers: (0..CUSTOMERS)
                .map(|c| format!("balance/{c}").into_bytes())
                .collect(),
        })
    }
}

impl Engine for IdemEngine {
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        let value = value_for(key);
        if !self.transactional {
            return Ok(self.store.check_or_insert(key, TTL, &value)?.is_duplicate());
        }
        // The consumer's step: dedup record, the customer's new balance, the input position,
        // one commit. Blind state writes: one thread, so no conflict to retry.
        let position = self
            .position
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut tx = self.store.transaction();
        let duplicate = tx.check_or_insert(key, TTL, &value)?.is_duplicate();
        if !duplicate {
            let customer =
                u64::from_le_bytes(key[..8].try_into().expect("16-byte keys")) % CUSTOMERS;
            tx.put_state(&self.customers[customer as usize], &value)?;
        }
        tx.set_position(b"input", position)?;
        tx.commit()?;
        Ok(duplicate)
    }

    fn check_or_insert_batch(&mut self, keys: &[Key]) -> Result<u64, BoxError> {
        self.items.clear();
        self.items
            .extend(keys.iter().map(|key| (*key, TTL, value_for(key))));
        let outcomes = self.store.check_or_insert_batch(&self.items)?;
        Ok(outcomes.iter().filter(|o| o.is_duplicate()).count() as u64)
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        Ok(self.store.flush()?)
    }

    fn close(self, dir: &Path) -> Result<String, BoxError> {
        let stats = self.store.stats();
        self.store.close()?;
        Ok(format!(
            "stats: live_keys={} index_bytes={} ({:.1} B/key) segments={} fsyncs={}; files: {}",
            stats.live_keys,
            stats.index_bytes,
            stats.index_bytes as f64 / stats.live_keys.max(1) as f64,
            stats.segments,
            stats.fsyncs,
            file_breakdown(dir, stats.live_keys)
        ))
    }
}

/// Bytes per live key of each kind of file in an idem directory (segments, checkpoints, ...).
fn file_breakdown(dir: &Path, live_keys: u64) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut kinds: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = name.split(['-', '.']).next().unwrap_or("?").to_string();
        if let Ok(meta) = entry.metadata() {
            *kinds.entry(kind).or_default() += meta.blocks() * 512;
        }
    }
    kinds
        .iter()
        .filter(|(_, bytes)| **bytes > 0)
        .map(|(kind, bytes)| {
            format!(
                "{kind} {:.1} B/key",
                *bytes as f64 / live_keys.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
