//! In-memory ceilings: what a dedup table costs with no log, no expiry and no durability at all.
//!
//! - [`Hashbrown`], the ceiling idem is judged against: 64 shards of
//!   `parking_lot::Mutex<hashbrown::HashMap<[u8;16],[u8;16]>>` with hashbrown's default hasher
//!   (foldhash). The key is hashed once: the shard comes from bits 40..46 of the hash (hashbrown
//!   takes the bucket from the low bits and the control tag from the top 7), and the shard's map
//!   is entered with that hash. Each shard sits on its own 128-byte line, so two threads never
//!   share a cache line unless they share a shard.
//! - [`StdSipHash`], the weak ceiling kept for comparison with earlier runs: 64 shards of
//!   `parking_lot::Mutex<std::collections::HashMap>` with SipHash, hashed twice (shard, then map).

use std::hash::BuildHasher;
use std::path::Path;

use idem_bench::{value_for, Key, Val};

use crate::peer::{BoxError, Engine, Peer};

/// Shards of both ceilings.
pub const SHARDS: usize = 64;
const _: () = assert!(SHARDS.is_power_of_two() && SHARDS <= 128);

/// The strong ceiling: sharded hashbrown with its default hasher.
pub struct Hashbrown {
    /// Each shard made `with_capacity` for its share of the run's keys (the fair partner of
    /// idem's presized rows: neither grows in the run).
    pub presized: bool,
}

/// One shard on its own cache lines (128 bytes: adjacent-line prefetch pairs lines on x86).
#[repr(align(128))]
struct Padded<T>(T);

type HashbrownMap = hashbrown::HashMap<Key, Val, hashbrown::DefaultHashBuilder>;

pub struct HashbrownEngine {
    /// Each shard's capacity at open (0: grows from empty).
    capacity: usize,
    /// One hasher for the shard choice and every shard's map (maps rehash with it on growth).
    hasher: hashbrown::DefaultHashBuilder,
    shards: Vec<Padded<parking_lot::Mutex<HashbrownMap>>>,
}

impl Peer for Hashbrown {
    type Engine = HashbrownEngine;

    fn has_disk(&self) -> bool {
        false
    }

    fn open(&self, dir: &Path) -> Result<HashbrownEngine, BoxError> {
        self.open_for(dir, 0)
    }

    fn open_for(&self, _dir: &Path, keys: usize) -> Result<HashbrownEngine, BoxError> {
        let hasher = hashbrown::DefaultHashBuilder::default();
        // The same room for the hash spread as idem's presizing: mean + 4 standard deviations.
        let mean = keys.div_ceil(SHARDS);
        let capacity = if self.presized {
            mean + 4 * mean.isqrt() + 16
        } else {
            0
        };
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(parking_lot::Mutex::new(
                    HashbrownMap::with_capacity_and_hasher(capacity, hasher.clone()),
                ))
            })
            .collect();
        Ok(HashbrownEngine {
            capacity,
            hasher,
            shards,
        })
    }
}

impl Engine for HashbrownEngine {
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        let hash = self.hasher.hash_one(key);
        let shard = (hash >> 40) as usize % SHARDS;
        let mut map = self.shards[shard].0.lock();
        match map.raw_entry_mut().from_key_hashed_nocheck(hash, key) {
            hashbrown::hash_map::RawEntryMut::Occupied(_) => Ok(true),
            hashbrown::hash_map::RawEntryMut::Vacant(slot) => {
                slot.insert_hashed_nocheck(hash, *key, value_for(key));
                Ok(false)
            }
        }
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        drop(self.shards);
        let sized = match self.capacity {
            0 => String::new(),
            n => format!(", each made with_capacity({n})"),
        };
        Ok(format!(
            "{SHARDS} shards (128-byte aligned) of parking_lot::Mutex<hashbrown::HashMap<[u8;16],[u8;16]>> (foldhash, one hash per op){sized}"
        ))
    }
}

/// The weak ceiling: sharded std `HashMap` with SipHash.
pub struct StdSipHash;

type StdMap = std::collections::HashMap<Key, Val>;

pub struct StdSipHashEngine {
    hasher: std::hash::RandomState,
    shards: Vec<parking_lot::Mutex<StdMap>>,
}

impl Peer for StdSipHash {
    type Engine = StdSipHashEngine;

    fn has_disk(&self) -> bool {
        false
    }

    fn open(&self, _dir: &Path) -> Result<StdSipHashEngine, BoxError> {
        Ok(StdSipHashEngine {
            hasher: std::hash::RandomState::new(),
            shards: (0..SHARDS).map(|_| Default::default()).collect(),
        })
    }
}

impl Engine for StdSipHashEngine {
    fn check_or_insert(&self, key: &Key) -> Result<bool, BoxError> {
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut map = self.shards[shard].lock();
        match map.entry(*key) {
            std::collections::hash_map::Entry::Occupied(_) => Ok(true),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value_for(key));
                Ok(false)
            }
        }
    }

    fn close(self, _dir: &Path) -> Result<String, BoxError> {
        drop(self.shards);
        Ok(format!(
            "{SHARDS} shards of parking_lot::Mutex<std HashMap<[u8;16],[u8;16]>> (SipHash)"
        ))
    }
}
