//! The sharded hash index: key hash → small fixed-size entry (tag, deadline, log location).
//!
//! The top bits of a key's hash pick the shard; each shard is a [`ShardTable`] behind its own
//! `parking_lot` mutex, so threads working on different shards never contend. Hashing is seeded
//! per open store (ahash), so crafted keys cannot force collisions; tests may force them with
//! [`crate::Config::hash_mask_for_testing`].
//!
//! Invariant: the index holds at most one live entry per key; a key's entry and its record are
//! changed only under the key's shard lock, so per key the log order is the operation order.

mod shard;

pub(crate) use shard::{KeyCheck, Probe, ShardTable, Slot};

use parking_lot::{Mutex, MutexGuard};

#[derive(Debug)]
pub(crate) struct Index {
    shards: Box<[Mutex<ShardTable>]>,
    shard_bits: u32,
    hasher: ahash::RandomState,
    hash_mask: u64,
}

/// A key's hash, split into the parts the index uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash {
    pub(crate) shard: usize,
    pub(crate) tag: u32,
}

impl Index {
    pub(crate) fn new(shard_count: usize, hash_mask: u64) -> Index {
        assert!(shard_count.is_power_of_two());
        Index {
            shards: (0..shard_count)
                .map(|_| Mutex::new(ShardTable::new()))
                .collect(),
            shard_bits: shard_count.trailing_zeros(),
            hasher: ahash::RandomState::new(),
            hash_mask,
        }
    }

    pub(crate) fn hash(&self, key: &[u8]) -> KeyHash {
        let hash = self.hasher.hash_one(key) & self.hash_mask;
        let shard = if self.shard_bits == 0 {
            0
        } else {
            (hash >> (64 - self.shard_bits)) as usize
        };
        // Bits 16..48: disjoint from the shard bits for up to 65536 shards.
        let tag = (hash >> 16) as u32;
        KeyHash { shard, tag }
    }

    pub(crate) fn lock(&self, hash: KeyHash) -> MutexGuard<'_, ShardTable> {
        self.shards[hash.shard].lock()
    }

    /// Occupied entries (including expired ones not yet reclaimed) and bytes of slot memory.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let mut entries = 0;
        let mut bytes = 0;
        for shard in self.shards.iter() {
            let table = shard.lock();
            entries += table.len() as u64;
            bytes += (table.capacity() * std::mem::size_of::<Slot>()) as u64;
        }
        (entries, bytes)
    }
}
