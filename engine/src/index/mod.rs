//! The sharded hash index: key hash → small fixed-size entry (tag, deadline, log location).
//!
//! The top bits of a key's hash pick the shard, 24 lower bits are its *tag*; each shard is a
//! [`ShardTable`] (12 bytes per slot) behind its own `parking_lot` mutex, so threads working on
//! different shards never contend. Hashing is seeded per open store (ahash), so crafted keys
//! cannot force collisions; tests may force them with [`crate::Config::hash_mask_for_testing`].
//!
//! Invariant: the index holds at most one live entry per key; a key's entry and its record are
//! changed only under the key's shard lock, so per key the log order is the operation order.

mod late;
mod packed;
mod shard;
mod wheel;

pub(crate) use shard::{KeyCheck, Probe, ShardTable, Slot};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};

#[derive(Debug)]
pub(crate) struct Index {
    /// Each on its own cache line: neighbouring shards' locks must not share one.
    shards: Box<[CachePadded<Mutex<ShardTable>>]>,
    shard_bits: u32,
    hasher: ahash::RandomState,
    seeds: [u64; 4],
    hash_mask: u64,
    /// The checkpoints on disk a delta checkpoint may extend (`None`: the next must be full).
    pub(crate) checkpoint_chain: Mutex<Option<crate::checkpoint::Chain>>,
}

/// A key's hash, split into the parts the index uses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash {
    pub(crate) shard: usize,
    pub(crate) tag: u32,
}

impl Index {
    /// Four fresh random hash seeds.
    pub(crate) fn random_seeds() -> [u64; 4] {
        use std::hash::{BuildHasher, Hasher};
        let std_random = std::collections::hash_map::RandomState::new();
        [0u64, 1, 2, 3].map(|i| {
            let mut hasher = std_random.build_hasher();
            hasher.write_u64(i);
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            hasher.finish()
        })
    }

    pub(crate) fn new(
        shard_count: usize,
        hash_mask: u64,
        seeds: [u64; 4],
        tick_millis: u64,
        now_millis: u64,
    ) -> Index {
        assert!(shard_count.is_power_of_two());
        Index {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(Mutex::new(ShardTable::new(tick_millis, now_millis))))
                .collect(),
            shard_bits: shard_count.trailing_zeros(),
            hasher: ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3]),
            seeds,
            hash_mask,
            checkpoint_chain: Mutex::new(None),
        }
    }

    pub(crate) fn hash(&self, key: &[u8]) -> KeyHash {
        let hash = self.hasher.hash_one(key) & self.hash_mask;
        let shard = if self.shard_bits == 0 {
            0
        } else {
            (hash >> (64 - self.shard_bits)) as usize
        };
        // Bits 16..40: disjoint from the shard bits for up to 2^24 shards. 24 bits, because a
        // table slot packs its tag with a 40-bit location into one word (see `shard`).
        let tag = (hash >> 16) as u32 & packed::TAG_MASK;
        KeyHash { shard, tag }
    }

    /// Lays every shard's table out for its share of `keys` live keys and keeps it at least
    /// that large from now on ([`crate::Config::expected_keys`]).
    pub(crate) fn expect_keys(&self, keys: u64, now_millis: u64) {
        if keys == 0 {
            return;
        }
        // Hashing spreads the keys binomially: a shard's count exceeds the mean by four
        // standard deviations (about its square root) with a probability below 1 in 30,000.
        // A flat margin (a quarter more) would double some tables for nothing.
        let mean = keys.div_ceil(self.shards.len() as u64);
        let per_shard = mean + 4 * mean.isqrt() + 16;
        for shard in self.shards.iter() {
            shard.lock().presize(per_shard as usize, now_millis);
        }
    }

    /// Empties every shard (see [`ShardTable::clear`]).
    pub(crate) fn clear(&self, now_millis: u64) {
        for shard in self.shards.iter() {
            shard.lock().clear(now_millis);
        }
    }

    /// Turns on every shard's late-duplicate memory for `grace_millis` (0: off), remembering
    /// `capacity` expired keys over the whole index per epoch (a third of the grace period).
    pub(crate) fn remember_expired(&self, grace_millis: u64, capacity: usize) {
        // A quarter more per shard: keys do not spread over the shards exactly evenly.
        let per_epoch = (capacity + capacity / 4)
            .div_ceil(self.shards.len())
            .max(16);
        for shard in self.shards.iter() {
            shard.lock().remember_expired(grace_millis, per_epoch);
        }
    }

    pub(crate) fn seeds(&self) -> [u64; 4] {
        self.seeds
    }

    pub(crate) fn hash_mask(&self) -> u64 {
        self.hash_mask
    }

    pub(crate) fn lock(&self, hash: KeyHash) -> MutexGuard<'_, ShardTable> {
        self.shards[hash.shard].lock()
    }

    /// Starts loading the home slot of a hashed key into the cache (replay calls it some records
    /// ahead).
    #[allow(dead_code)] // reason: replay now prefetches through the tables it holds locked
    pub(crate) fn prefetch_hash(&self, hash: KeyHash) {
        self.lock(hash).prefetch(hash.tag);
    }

    pub(crate) fn shards(&self) -> &[CachePadded<Mutex<ShardTable>>] {
        &self.shards
    }

    /// Sizes summed over all shards.
    pub(crate) fn usage(&self) -> IndexUsage {
        let mut usage = IndexUsage::default();
        for shard in self.shards.iter() {
            let table = shard.lock();
            usage.entries += table.len() as u64;
            usage.heap_bytes += table.heap_bytes() as u64;
            usage.wheel_entries += table.wheel_entries() as u64;
        }
        usage
    }
}

/// Sizes of the index, for [`crate::Stats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IndexUsage {
    pub(crate) entries: u64,
    pub(crate) heap_bytes: u64,
    pub(crate) wheel_entries: u64,
}
