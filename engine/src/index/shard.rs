//! One shard's table: open addressing with linear probing over fixed-size 16-byte slots.
//!
//! A slot holds a 32-bit tag (hash bits), the entry's deadline rounded *up* to whole seconds, and
//! the record's log location. Keys and values live in the log, not here.
//!
//! Invariants:
//! - A slot is empty iff its location is 0 (no record lives at offset 0 of a segment).
//! - Every occupied slot is reachable from its home bucket (`tag & mask`) without crossing an
//!   empty slot; removal uses backward-shift deletion, so there are no tombstones.
//! - A tag match is only a candidate: the caller compares the full key from the log.
//! - `len` counts occupied slots and stays at most 3/4 of the capacity.

use crate::log::Location;

/// One index entry. 16 bytes: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) tag: u32,
    pub(crate) expires_at_secs: u32,
    pub(crate) location: Location,
}
const _: () = assert!(std::mem::size_of::<Slot>() == 16);

impl Slot {
    pub(crate) const EMPTY: Slot = Slot {
        tag: 0,
        expires_at_secs: 0,
        location: 0,
    };

    fn is_empty(&self) -> bool {
        self.location == 0
    }

    /// Whether the entry has certainly expired at `now_millis` (its rounded-up deadline passed),
    /// so it can be dropped without reading its record.
    pub(crate) fn is_dead(&self, now_millis: u64) -> bool {
        u64::from(self.expires_at_secs) * 1000 <= now_millis
    }

    /// Converts an exact deadline into the rounded-up seconds a slot stores.
    pub(crate) fn deadline_secs(expires_at_millis: u64) -> u32 {
        u32::try_from(expires_at_millis.div_ceil(1000)).unwrap_or(u32::MAX)
    }
}

/// What the full-key check said about the record at a candidate slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// The record holds the key and is live.
    Live,
    /// The record holds the key but has expired.
    Expired,
    /// Another key with the same tag.
    Other,
}

/// Where a key is, or where it would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A live entry for the key is at this slot.
    Found(usize),
    /// The key has no live entry; it may be put at this slot (empty, or holding a dead entry).
    Vacant(usize),
}

#[derive(Debug)]
pub(crate) struct ShardTable {
    slots: Box<[Slot]>,
    len: usize,
}

const MIN_CAPACITY: usize = 64;

impl ShardTable {
    pub(crate) fn new() -> ShardTable {
        Self::with_capacity(MIN_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> ShardTable {
        assert!(capacity.is_power_of_two());
        ShardTable {
            slots: vec![Slot::EMPTY; capacity].into_boxed_slice(),
            len: 0,
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slot(&self, index: usize) -> Slot {
        self.slots[index]
    }

    /// Finds the live entry for a key with this `tag`, asking `check` to compare the full key of
    /// each candidate's record. Dead entries are never read.
    pub(crate) fn probe<E>(
        &self,
        tag: u32,
        now_millis: u64,
        mut check: impl FnMut(Location) -> Result<KeyCheck, E>,
    ) -> Result<Probe, E> {
        let mask = self.mask();
        let mut index = tag as usize & mask;
        let mut reusable = None;
        for _ in 0..self.slots.len() {
            let slot = self.slots[index];
            if slot.is_empty() {
                return Ok(Probe::Vacant(reusable.unwrap_or(index)));
            }
            if slot.is_dead(now_millis) {
                reusable.get_or_insert(index);
            } else if slot.tag == tag {
                match check(slot.location)? {
                    KeyCheck::Live => return Ok(Probe::Found(index)),
                    KeyCheck::Expired => {
                        reusable.get_or_insert(index);
                    }
                    KeyCheck::Other => {}
                }
            }
            index = (index + 1) & mask;
        }
        unreachable!("the load limit keeps an empty slot in every table")
    }

    /// Puts `slot` at `index` (from [`Probe::Vacant`] or [`Probe::Found`]), growing the table if
    /// it passes the load limit. Entries dead at `now_millis` are shed when the table is rebuilt.
    pub(crate) fn put(&mut self, index: usize, slot: Slot, now_millis: u64) {
        debug_assert!(!slot.is_empty());
        if self.slots[index].is_empty() {
            self.len += 1;
        }
        self.slots[index] = slot;
        if self.len * 4 > self.slots.len() * 3 {
            self.rebuild(now_millis);
        }
    }

    /// Empties slot `index`, shifting later entries of its run back so every entry stays
    /// reachable from its home bucket.
    pub(crate) fn remove(&mut self, index: usize) {
        assert!(!self.slots[index].is_empty(), "removing an empty slot");
        let mask = self.mask();
        let mut hole = index;
        let mut next = index;
        loop {
            next = (next + 1) & mask;
            let candidate = self.slots[next];
            if candidate.is_empty() {
                break;
            }
            let home = candidate.tag as usize & mask;
            let distance_from_home = next.wrapping_sub(home) & mask;
            let distance_from_hole = next.wrapping_sub(hole) & mask;
            if distance_from_home >= distance_from_hole {
                self.slots[hole] = candidate;
                hole = next;
            }
        }
        self.slots[hole] = Slot::EMPTY;
        self.len -= 1;
    }

    /// Re-lays the table at a size fit for its live entries (dropping dead ones): doubles when
    /// most entries are live, stays or shrinks when many had expired.
    fn rebuild(&mut self, now_millis: u64) {
        let live: Vec<Slot> = self
            .slots
            .iter()
            .copied()
            .filter(|slot| !slot.is_empty() && !slot.is_dead(now_millis))
            .collect();
        let capacity = (live.len() * 2).next_power_of_two().max(MIN_CAPACITY);
        let mut table = ShardTable::with_capacity(capacity);
        for slot in live {
            table.insert_unchecked(slot);
        }
        *self = table;
    }

    fn insert_unchecked(&mut self, slot: Slot) {
        let mask = self.mask();
        let mut index = slot.tag as usize & mask;
        while !self.slots[index].is_empty() {
            index = (index + 1) & mask;
        }
        self.slots[index] = slot;
        self.len += 1;
    }

    /// Every occupied slot with its index (for audits and tests).
    #[cfg(test)]
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (usize, Slot)> + '_ {
        self.slots
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, slot)| !slot.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A model check: random puts and removes with heavy tag collisions; every key stays findable
    /// and the table never holds a key twice.
    #[test]
    fn probing_and_backward_shift_deletion_match_a_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut table = ShardTable::new();
        // location doubles as the key id; tags collide a lot (8 distinct values).
        let mut model: HashMap<u64, u32> = HashMap::new();
        let now = 0;
        for _ in 0..20_000 {
            let key: u64 = rng.gen_range(1..400);
            let tag = (key % 8) as u32 * 0x1000_0001;
            let probe = table
                .probe::<()>(tag, now, |location| {
                    Ok(if location == key {
                        KeyCheck::Live
                    } else {
                        KeyCheck::Other
                    })
                })
                .unwrap();
            match (probe, model.contains_key(&key)) {
                (Probe::Found(index), true) => {
                    if rng.gen_bool(0.5) {
                        table.remove(index);
                        model.remove(&key);
                    }
                }
                (Probe::Vacant(index), false) => {
                    let slot = Slot {
                        tag,
                        expires_at_secs: u32::MAX,
                        location: key,
                    };
                    table.put(index, slot, now);
                    model.insert(key, tag);
                }
                (probe, present) => panic!("probe {probe:?} but model has key: {present}"),
            }
            assert_eq!(table.len(), model.len());
        }
        let mut seen: Vec<u64> = table.occupied().map(|(_, s)| s.location).collect();
        seen.sort_unstable();
        let mut expected: Vec<u64> = model.keys().copied().collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn dead_entries_are_reused_and_shed_on_rebuild() {
        let mut table = ShardTable::new();
        for key in 1..=40u64 {
            let Probe::Vacant(index) = table.probe::<()>(5, 0, |_| Ok(KeyCheck::Other)).unwrap()
            else {
                panic!("fresh key found")
            };
            table.put(
                index,
                Slot {
                    tag: 5,
                    expires_at_secs: 10,
                    location: key,
                },
                0,
            );
        }
        assert_eq!(table.len(), 40);
        // At 10 s every entry is dead: a new key reuses the first slot of the run.
        let probe = table
            .probe::<()>(5, 10_000, |_| panic!("dead entries are never read"))
            .unwrap();
        assert_eq!(probe, Probe::Vacant(5));
        for key in 41..=100u64 {
            let Probe::Vacant(index) = table
                .probe::<()>(key as u32, 10_000, |_| Ok(KeyCheck::Other))
                .unwrap()
            else {
                panic!("fresh key found")
            };
            table.put(
                index,
                Slot {
                    tag: key as u32,
                    expires_at_secs: 99,
                    location: key,
                },
                10_000,
            );
        }
        assert!(table
            .occupied()
            .all(|(_, s)| s.location > 40 || !s.is_dead(10_000) || s.tag == 5));
        assert!(
            table.capacity() <= 256,
            "dead entries shed instead of growing forever"
        );
    }

    #[test]
    fn deadline_rounds_up() {
        assert_eq!(Slot::deadline_secs(1000), 1);
        assert_eq!(Slot::deadline_secs(1001), 2);
        let slot = Slot {
            tag: 0,
            expires_at_secs: Slot::deadline_secs(1001),
            location: 1,
        };
        assert!(!slot.is_dead(1001), "never dead before the exact deadline");
        assert!(slot.is_dead(2000));
    }
}
