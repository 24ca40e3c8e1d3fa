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

use super::late::LateMemory;
use super::wheel::{BucketWork, ExpiryWheel};
use crate::log::Location;
use crate::metrics::ShardCounters;

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
        crate::record::deadline_secs(expires_at_millis)
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
    wheel: ExpiryWheel,
    tick_millis: u64,
    /// Locations of entries dropped from the table (removed, reaped, overwritten, shed), for
    /// the owner to release in the log's per-segment live counts. Drained by the owner.
    pub(crate) released: Vec<Location>,
    /// Where the latest removal of a key of this shard ends in the log (0: none yet). A `Sync`
    /// answer of "absent" waits until this is durable: it may rest on that removal.
    pub(crate) last_removal_end: Location,
    /// What the calls on this shard's keys decided (written under the shard lock: no atomics).
    pub(crate) counters: ShardCounters,
    /// Recently expired tags (see `late`); `None` unless a grace period is configured.
    late: Option<Box<LateMemory>>,
}

const MIN_CAPACITY: usize = 64;

impl ShardTable {
    pub(crate) fn new(tick_millis: u64, now_millis: u64) -> ShardTable {
        ShardTable {
            slots: vec![Slot::EMPTY; MIN_CAPACITY].into_boxed_slice(),
            len: 0,
            wheel: ExpiryWheel::new(now_millis / tick_millis),
            tick_millis,
            released: Vec::new(),
            last_removal_end: 0,
            counters: ShardCounters::default(),
            late: None,
        }
    }

    /// Turns on the late-duplicate memory: `grace_millis` (0: off), `capacity` keys per epoch.
    pub(crate) fn remember_expired(&mut self, grace_millis: u64, capacity: usize) {
        self.late = (grace_millis > 0).then(|| Box::new(LateMemory::new(grace_millis, capacity)));
    }

    /// Whether a key with `tag`, about to be inserted (it has no live entry), had an entry that
    /// expired within the grace period: a dead entry of the tag still in the table, or one
    /// remembered by the late-duplicate memory. Always false when the memory is off. A tag match
    /// is a probable match only (see `late`).
    #[inline]
    pub(crate) fn late_duplicate(&self, tag: u32, now_millis: u64) -> bool {
        match &self.late {
            None => false,
            Some(memory) => self.late_duplicate_in(memory, tag, now_millis),
        }
    }

    /// [`ShardTable::late_duplicate`] with the memory on (kept out of line: the insert path
    /// with the memory off inlines only the check above).
    #[inline(never)]
    fn late_duplicate_in(&self, memory: &LateMemory, tag: u32, now_millis: u64) -> bool {
        let grace = memory.grace_millis();
        let mask = self.mask();
        let mut index = tag as usize & mask;
        loop {
            let slot = self.slots[index];
            if slot.is_empty() {
                break;
            }
            // The caller's probe found no live entry, so a slot of the tag not dead by its
            // rounded-up deadline is the key's, expired within its last second (or, at 2^-32,
            // another key's).
            if slot.tag == tag
                && slot.is_dead(now_millis + 1000)
                && u64::from(slot.expires_at_secs) * 1000 + grace > now_millis
            {
                return true;
            }
            index = (index + 1) & mask;
        }
        memory.contains(tag, now_millis)
    }

    /// Notes that `slot` is dropped as expired (for the late-duplicate memory).
    fn expired(&mut self, slot: Slot, now_millis: u64) {
        if let Some(memory) = &mut self.late {
            memory.remember(slot.tag, u64::from(slot.expires_at_secs) * 1000, now_millis);
        }
    }

    /// Expired keys the late-duplicate memory could not take (its epochs were full).
    pub(crate) fn late_overflowed(&self) -> u64 {
        self.late.as_ref().map_or(0, |memory| memory.overflowed)
    }

    /// The wheel tick on which an entry with this slot deadline is dead.
    fn deadline_tick(&self, slot: &Slot) -> u64 {
        (u64::from(slot.expires_at_secs) * 1000).div_ceil(self.tick_millis)
    }

    /// Entries waiting in the expiry wheel (stale ones included).
    pub(crate) fn wheel_entries(&self) -> usize {
        self.wheel.entries()
    }

    /// Bytes of memory held by the slots and the wheel.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
            + self.wheel.heap_bytes()
            + self.late.as_ref().map_or(0, |memory| memory.heap_bytes())
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
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
        mut check: impl FnMut(&Slot) -> Result<KeyCheck, E>,
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
                match check(&slot)? {
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
        self.put_unscheduled(index, slot, now_millis);
        let deadline_tick = self.deadline_tick(&slot);
        self.wheel.schedule(slot.tag, deadline_tick);
    }

    /// [`ShardTable::put`] without the expiry wheel's entry: replay puts entries this way and
    /// schedules the survivors once at the end ([`ShardTable::schedule_all`]).
    pub(crate) fn put_unscheduled(&mut self, index: usize, slot: Slot, now_millis: u64) {
        debug_assert!(!slot.is_empty());
        let previous = self.slots[index];
        if previous.is_empty() {
            self.len += 1;
        } else {
            if previous.is_dead(now_millis) {
                self.expired(previous, now_millis);
            }
            self.released.push(previous.location);
        }
        self.slots[index] = slot;
        if self.len * 4 > self.slots.len() * 3 {
            self.rebuild(now_millis);
        }
    }

    /// Puts `slot` for a key known to have no live entry (decided under this shard's lock by an
    /// earlier probe): at the first empty or dead slot of its run, with no key comparisons.
    pub(crate) fn put_new(&mut self, slot: Slot, now_millis: u64) {
        let mask = self.mask();
        let mut index = slot.tag as usize & mask;
        loop {
            let current = self.slots[index];
            if current.is_empty() || current.is_dead(now_millis) {
                break;
            }
            index = (index + 1) & mask;
        }
        self.put(index, slot, now_millis);
    }

    /// Asks the CPU to start loading the home slot of `tag`, so that a probe of it a little
    /// later finds it in cache (the batch pipeline issues this several keys ahead).
    #[allow(unsafe_code)] // reason: the prefetch intrinsic; see SAFETY
    pub(crate) fn prefetch(&self, tag: u32) {
        let home: *const Slot = &self.slots[tag as usize & self.mask()];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint to the cache: it never dereferences the pointer and
        // cannot fault (the pointer is into `self.slots` anyway). SSE, which provides it, is in
        // the x86_64 baseline. Exercised by every batch test (tests/tests/*, `ops` fuzz target).
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(home.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = home;
    }

    /// Removes the entry that points at `location`, if one does (whether live or dead): before
    /// its segment goes, compaction drops the entries of records it did not copy.
    pub(crate) fn forget_location(&mut self, tag: u32, location: Location) -> bool {
        let mask = self.mask();
        let mut index = tag as usize & mask;
        loop {
            let slot = self.slots[index];
            if slot.is_empty() {
                return false;
            }
            if slot.location == location {
                self.remove(index);
                return true;
            }
            index = (index + 1) & mask;
        }
    }

    /// Points the entry at `index` to a copy of its record at `location` (compaction); the
    /// deadline is unchanged, so the wheel needs no new entry.
    pub(crate) fn relocate(&mut self, index: usize, location: Location) {
        let slot = &mut self.slots[index];
        assert!(!slot.is_empty(), "relocating an empty slot");
        self.released.push(slot.location);
        slot.location = location;
    }

    /// Fires the expiry wheel up to `now_millis`, removing dead entries, in a slice of about
    /// `budget` wheel entries. Returns whether the wheel caught up and how many entries it removed.
    pub(crate) fn reap(&mut self, now_millis: u64, budget: usize) -> (bool, usize) {
        let to_tick = now_millis / self.tick_millis;
        let mut wheel = std::mem::replace(&mut self.wheel, ExpiryWheel::new(0));
        let mut removed = 0;
        let done = wheel.advance(to_tick, budget, |wheel, tag, work| {
            removed += self.sweep_tag(wheel, tag, work, now_millis);
        });
        self.wheel = wheel;
        (done, removed)
    }

    /// Handles one fired or cascaded tag: removes this tag's dead entries; on a cascade also
    /// re-schedules its entries due within the cascaded bucket's range.
    fn sweep_tag(
        &mut self,
        wheel: &mut ExpiryWheel,
        tag: u32,
        work: BucketWork,
        now_millis: u64,
    ) -> usize {
        let mask = self.mask();
        let mut index = tag as usize & mask;
        let mut removed = 0;
        loop {
            let slot = self.slots[index];
            if slot.is_empty() {
                return removed;
            }
            if slot.tag == tag && slot.is_dead(now_millis) {
                self.expired(slot, now_millis);
                // Backward shift may move a later entry into `index`: look at it again.
                self.remove(index);
                removed += 1;
                continue;
            }
            if let BucketWork::Cascade { from, .. } = work {
                let deadline_tick = self.deadline_tick(&slot);
                // Deadlines past `to` were parked in this bucket for being beyond the wheel's
                // reach (a rare duplicate entry for a colliding tag is harmless).
                if slot.tag == tag && deadline_tick >= from {
                    wheel.schedule(tag, deadline_tick);
                }
            }
            index = (index + 1) & mask;
        }
    }

    /// Empties slot `index`, shifting later entries of its run back so every entry stays
    /// reachable from its home bucket.
    pub(crate) fn remove(&mut self, index: usize) {
        assert!(!self.slots[index].is_empty(), "removing an empty slot");
        let removed_location = self.slots[index].location;
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
        self.released.push(removed_location);
    }

    /// Re-lays the table at a size fit for its live entries (dropping dead ones): doubles when
    /// most entries are live, stays or shrinks when many had expired.
    fn rebuild(&mut self, now_millis: u64) {
        self.rebuild_to(0, now_millis);
    }

    /// Re-lays the table with at least `min_capacity` slots, dropping dead entries.
    fn rebuild_to(&mut self, min_capacity: usize, now_millis: u64) {
        let mut live = Vec::with_capacity(self.len);
        let mut dead = Vec::new();
        for slot in self.slots.iter().filter(|slot| !slot.is_empty()) {
            if slot.is_dead(now_millis) {
                self.released.push(slot.location);
                dead.push(*slot);
            } else {
                live.push(*slot);
            }
        }
        for slot in dead {
            self.expired(slot, now_millis);
        }
        let capacity = (live.len() * 2)
            .max(min_capacity)
            .next_power_of_two()
            .max(MIN_CAPACITY);
        self.slots = vec![Slot::EMPTY; capacity].into_boxed_slice();
        self.len = 0;
        for slot in live {
            self.insert_unchecked(slot);
        }
    }

    /// Makes room for `additional` more entries without a rebuild on the way.
    pub(crate) fn reserve(&mut self, additional: usize, now_millis: u64) {
        let wanted = self.len + additional;
        if wanted * 4 > self.slots.len() * 3 {
            // The smallest table that holds them under the load limit: as dense as one that
            // grew to this size entry by entry.
            self.rebuild_to((wanted * 4).div_ceil(3) + 1, now_millis);
        }
    }

    /// Puts a checkpointed entry, known not to be in the table, without its expiry wheel entry
    /// (recovery schedules every entry once at the end: [`ShardTable::schedule_all`]).
    pub(crate) fn install_unscheduled(&mut self, slot: Slot, now_millis: u64) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.rebuild(now_millis);
        }
        self.insert_unchecked(slot);
    }

    /// Gives every occupied slot its expiry wheel entry, and shows each to `each`: the end of
    /// recovery, which put its entries unscheduled. One pass over the table in slot order, with
    /// the shard's wheel buckets hot, instead of a wheel entry (and a cache miss or two) for every
    /// record replayed, superseded ones included.
    pub(crate) fn schedule_all(&mut self, mut each: impl FnMut(&Slot)) {
        for index in 0..self.slots.len() {
            let slot = self.slots[index];
            if !slot.is_empty() {
                let deadline_tick = self.deadline_tick(&slot);
                self.wheel.schedule(slot.tag, deadline_tick);
                each(&slot);
            }
        }
    }

    /// Puts a slot known not to be in the table (rebuilds): no probe, no wheel entry.
    fn insert_unchecked(&mut self, slot: Slot) {
        let mask = self.mask();
        let mut index = slot.tag as usize & mask;
        while !self.slots[index].is_empty() {
            index = (index + 1) & mask;
        }
        self.slots[index] = slot;
        self.len += 1;
    }

    /// Every occupied slot with its index.
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
        let mut table = ShardTable::new(1000, 0);
        // location doubles as the key id; tags collide a lot (8 distinct values).
        let mut model: HashMap<u64, u32> = HashMap::new();
        let now = 0;
        for _ in 0..20_000 {
            let key: u64 = rng.gen_range(1..400);
            let tag = (key % 8) as u32 * 0x1000_0001;
            let probe = table
                .probe::<()>(tag, now, |slot| {
                    Ok(if slot.location == key {
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
        let mut table = ShardTable::new(1000, 0);
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
