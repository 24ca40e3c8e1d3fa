//! One shard's table: open addressing with linear probing over 12-byte packed slots.
//!
//! A slot holds a 24-bit tag (hash bits), the entry's deadline rounded *up* to whole seconds, and
//! the record's log location packed into 40 bits (see `packed`: a per-shard number for the 16 MiB
//! log window, and the offset in it). Keys and values live in the log, not here. Callers see an
//! entry as a [`Slot`], the unpacked view.
//!
//! The capacity is any number of slots (at least `MIN_CAPACITY`), not only a power of two: a
//! tag's *home* is `tag * capacity >> 24`, which spreads 24-bit tags evenly over the slots and
//! keeps their order (a rebuild writes the new table nearly front to back), and a run wraps from
//! the last slot to slot 0. The table grows by 5/4 when its load passes 4/5, so while it grows
//! its load stays between 0.64 and 0.8: 12 / 0.64 = 18.75 bytes per entry at most (doubling at
//! 3/4 kept 16-byte slots between 0.375 and 0.75 full: up to 43 bytes per entry). Each rebuild
//! moves a quarter more entries than it adds, so an entry is moved about four times over the
//! table's growth: the cost of the density, paid in short sequential passes.
//!
//! Invariants:
//! - A slot is empty iff its packed word is 0 (no record lives at offset 0 of a segment, and
//!   window number 0 is never used).
//! - Every occupied slot is reachable from its home without crossing an empty slot (wrapping
//!   past the last slot to slot 0); removal uses backward-shift deletion, so there are no
//!   tombstones.
//! - A tag match is only a candidate: the caller compares the full key from the log.
//! - `len` counts occupied slots and stays at most 4/5 of the capacity, so every probe ends at
//!   an empty slot.
//! - Every occupied slot holds one reference on its log window in `windows` (see `packed`).
//! - Past 2^24 slots in one shard, homes lie more than one slot apart: still correct, with
//!   longer runs (raise [`crate::Config::shard_count`] for stores that large).

use super::late::LateMemory;
use super::packed::{Packed, Windows, TAG_BITS, TAG_MASK};
use super::slots::{SlotArray, CHUNK};
use super::wheel::{BucketWork, ExpiryWheel};
use crate::log::Location;
use crate::metrics::ShardCounters;

/// One index entry as callers see it (the table stores it packed: see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Hash bits of the key: 24 of them (the index's hash yields tags below `1 << 24`; higher
    /// bits are ignored).
    pub(crate) tag: u32,
    pub(crate) expires_at_secs: u32,
    pub(crate) location: Location,
}

impl Slot {
    /// No entry (location 0 is never a record's): a placeholder for scratch space.
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
    slots: SlotArray,
    len: usize,
    /// The log windows the slots' locations are packed against.
    windows: Windows,
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

/// Whether `len` entries pass the load limit (4/5) of `capacity` slots.
fn over_limit(len: usize, capacity: usize) -> bool {
    len * 5 > capacity * 4
}

/// The capacity a rebuild gives `live` entries: load 0.64, so a full table grows by 5/4.
fn capacity_for(live: usize) -> usize {
    (live * 25).div_ceil(16)
}

/// A capacity the slot array can have: at least `MIN_CAPACITY`, whole chunks from [`CHUNK`] up
/// (at most 1/64 more slots at 64 chunks).
fn round_capacity(capacity: usize) -> usize {
    let capacity = capacity.max(MIN_CAPACITY);
    if capacity < CHUNK {
        capacity
    } else {
        capacity.next_multiple_of(CHUNK)
    }
}

/// Slots from `from` forward to `to`, wrapping at `capacity`.
fn distance(from: usize, to: usize, capacity: usize) -> usize {
    if to >= from {
        to - from
    } else {
        to + capacity - from
    }
}

impl ShardTable {
    pub(crate) fn new(tick_millis: u64, now_millis: u64) -> ShardTable {
        ShardTable {
            slots: SlotArray::new(MIN_CAPACITY),
            len: 0,
            windows: Windows::new(),
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

    /// The home slot of `tag` (24 bits).
    #[inline]
    fn home(&self, tag: u32) -> usize {
        ((u64::from(tag) * self.slots.len() as u64) >> TAG_BITS) as usize
    }

    /// The slot after `index`, wrapping.
    #[inline]
    fn next(&self, index: usize) -> usize {
        let next = index + 1;
        if next == self.slots.len() {
            0
        } else {
            next
        }
    }

    /// The caller's view of a stored slot.
    #[inline]
    fn view(&self, slot: Packed) -> Slot {
        Slot {
            tag: slot.tag(),
            expires_at_secs: slot.deadline_secs(),
            location: if slot.is_empty() {
                0
            } else {
                self.windows.location(slot)
            },
        }
    }

    /// Whether a key with `tag`, about to be inserted (it has no live entry), had an entry that
    /// expired within the grace period: a dead entry of the tag still in the table, or one
    /// remembered by the late-duplicate memory. Always false when the memory is off. A tag match
    /// is a probable match only (see `late`).
    #[inline]
    pub(crate) fn late_duplicate(&self, tag: u32, now_millis: u64) -> bool {
        match &self.late {
            None => false,
            Some(memory) => self.late_duplicate_in(memory, tag & TAG_MASK, now_millis),
        }
    }

    /// [`ShardTable::late_duplicate`] with the memory on (kept out of line: the insert path
    /// with the memory off inlines only the check above).
    #[inline(never)]
    fn late_duplicate_in(&self, memory: &LateMemory, tag: u32, now_millis: u64) -> bool {
        let grace = memory.grace_millis();
        let mut index = self.home(tag);
        loop {
            let slot = self.slots.get(index);
            if slot.is_empty() {
                break;
            }
            // The caller's probe found no live entry, so a slot of the tag not dead by its
            // rounded-up deadline is the key's, expired within its last second (or, at 2^-24,
            // another key's).
            if slot.tag() == tag
                && slot.is_dead(now_millis + 1000)
                && u64::from(slot.deadline_secs()) * 1000 + grace > now_millis
            {
                return true;
            }
            index = self.next(index);
        }
        memory.contains(tag, now_millis)
    }

    /// Notes that `slot` is dropped as expired (for the late-duplicate memory).
    fn expired(&mut self, slot: Packed, now_millis: u64) {
        if let Some(memory) = &mut self.late {
            memory.remember(
                slot.tag(),
                u64::from(slot.deadline_secs()) * 1000,
                now_millis,
            );
        }
    }

    /// Expired keys the late-duplicate memory could not take (its epochs were full).
    pub(crate) fn late_overflowed(&self) -> u64 {
        self.late.as_ref().map_or(0, |memory| memory.overflowed)
    }

    /// The wheel tick on which an entry with this slot deadline is dead.
    fn deadline_tick(&self, deadline_secs: u32) -> u64 {
        (u64::from(deadline_secs) * 1000).div_ceil(self.tick_millis)
    }

    /// Entries waiting in the expiry wheel (stale ones included).
    pub(crate) fn wheel_entries(&self) -> usize {
        self.wheel.entries()
    }

    /// Bytes of memory held by the slots, the window numbers and the wheel.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + self.windows.heap_bytes()
            + self.wheel.heap_bytes()
            + self.late.as_ref().map_or(0, |memory| memory.heap_bytes())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slot(&self, index: usize) -> Slot {
        self.view(self.slots.get(index))
    }

    /// Finds the live entry for a key with this `tag`, asking `check` to compare the full key of
    /// each candidate's record. Dead entries are never read.
    pub(crate) fn probe<E>(
        &self,
        tag: u32,
        now_millis: u64,
        mut check: impl FnMut(&Slot) -> Result<KeyCheck, E>,
    ) -> Result<Probe, E> {
        let tag = tag & TAG_MASK;
        let mut index = self.home(tag);
        let mut reusable = None;
        for _ in 0..self.slots.len() {
            let slot = self.slots.get(index);
            if slot.is_empty() {
                return Ok(Probe::Vacant(reusable.unwrap_or(index)));
            }
            if slot.is_dead(now_millis) {
                reusable.get_or_insert(index);
            } else if slot.tag() == tag {
                match check(&self.view(slot))? {
                    KeyCheck::Live => return Ok(Probe::Found(index)),
                    KeyCheck::Expired => {
                        reusable.get_or_insert(index);
                    }
                    KeyCheck::Other => {}
                }
            }
            index = self.next(index);
        }
        unreachable!("the load limit keeps an empty slot in every table")
    }

    /// Puts `slot` at `index` (from [`Probe::Vacant`] or [`Probe::Found`]), growing the table if
    /// it passes the load limit. Entries dead at `now_millis` are shed when the table is rebuilt.
    pub(crate) fn put(&mut self, index: usize, slot: Slot, now_millis: u64) {
        self.put_unscheduled(index, slot, now_millis);
        let deadline_tick = self.deadline_tick(slot.expires_at_secs);
        self.wheel.schedule(slot.tag & TAG_MASK, deadline_tick);
    }

    /// [`ShardTable::put`] without the expiry wheel's entry: replay puts entries this way and
    /// schedules the survivors once at the end ([`ShardTable::schedule_all`]).
    pub(crate) fn put_unscheduled(&mut self, index: usize, slot: Slot, now_millis: u64) {
        debug_assert!(!slot.is_empty());
        let packed = self
            .windows
            .pack(slot.tag, slot.expires_at_secs, slot.location);
        let previous = self.slots.get(index);
        if previous.is_empty() {
            self.len += 1;
        } else {
            if previous.is_dead(now_millis) {
                self.expired(previous, now_millis);
            }
            self.released.push(self.windows.location(previous));
            self.windows.release(previous);
        }
        self.slots.set(index, packed);
        if over_limit(self.len, self.slots.len()) {
            self.rebuild(now_millis);
        }
    }

    /// Puts `slot` for a key known to have no live entry (decided under this shard's lock by an
    /// earlier probe): at the first empty or dead slot of its run, with no key comparisons.
    pub(crate) fn put_new(&mut self, slot: Slot, now_millis: u64) {
        let mut index = self.home(slot.tag & TAG_MASK);
        loop {
            let current = self.slots.get(index);
            if current.is_empty() || current.is_dead(now_millis) {
                break;
            }
            index = self.next(index);
        }
        self.put(index, slot, now_millis);
    }

    /// Asks the CPU to start loading the home slot of `tag`, so that a probe of it a little
    /// later finds it in cache (the batch pipeline issues this several keys ahead).
    #[allow(unsafe_code)] // reason: the prefetch intrinsic; see SAFETY
    pub(crate) fn prefetch(&self, tag: u32) {
        let home: *const Packed = self.slots.get_ref(self.home(tag & TAG_MASK));
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
        let mut index = self.home(tag & TAG_MASK);
        loop {
            let slot = self.slots.get(index);
            if slot.is_empty() {
                return false;
            }
            if self.windows.location(slot) == location {
                self.remove(index);
                return true;
            }
            index = self.next(index);
        }
    }

    /// Points the entry at `index` to a copy of its record at `location` (compaction); the
    /// deadline is unchanged, so the wheel needs no new entry.
    pub(crate) fn relocate(&mut self, index: usize, location: Location) {
        let slot = self.slots.get(index);
        assert!(!slot.is_empty(), "relocating an empty slot");
        self.released.push(self.windows.location(slot));
        self.slots.set(index, self.windows.repack(slot, location));
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
        let mut index = self.home(tag);
        let mut removed = 0;
        loop {
            let slot = self.slots.get(index);
            if slot.is_empty() {
                return removed;
            }
            if slot.tag() == tag && slot.is_dead(now_millis) {
                self.expired(slot, now_millis);
                // Backward shift may move a later entry into `index`: look at it again.
                self.remove(index);
                removed += 1;
                continue;
            }
            if let BucketWork::Cascade { from, .. } = work {
                let deadline_tick = self.deadline_tick(slot.deadline_secs());
                // Deadlines past `to` were parked in this bucket for being beyond the wheel's
                // reach (a rare duplicate entry for a colliding tag is harmless).
                if slot.tag() == tag && deadline_tick >= from {
                    wheel.schedule(tag, deadline_tick);
                }
            }
            index = self.next(index);
        }
    }

    /// Empties slot `index`, shifting later entries of its run back so every entry stays
    /// reachable from its home.
    pub(crate) fn remove(&mut self, index: usize) {
        let removed = self.slots.get(index);
        assert!(!removed.is_empty(), "removing an empty slot");
        let capacity = self.slots.len();
        let mut hole = index;
        let mut next = index;
        loop {
            next = self.next(next);
            let candidate = self.slots.get(next);
            if candidate.is_empty() {
                break;
            }
            let home = self.home(candidate.tag());
            if distance(home, next, capacity) >= distance(hole, next, capacity) {
                self.slots.set(hole, candidate);
                hole = next;
            }
        }
        self.slots.set(hole, Packed::EMPTY);
        self.len -= 1;
        self.released.push(self.windows.location(removed));
        self.windows.release(removed);
    }

    /// Re-lays the table at a size fit for its live entries (dropping dead ones): grows by 5/4
    /// when all entries are live, stays or shrinks when many had expired.
    fn rebuild(&mut self, now_millis: u64) {
        self.rebuild_to(0, now_millis);
    }

    /// Re-lays the table with at least `min_capacity` slots, dropping dead entries. Into a new
    /// slot array: reading the old one in order and writing the new one nearly in order (homes
    /// keep the tags' order) cost about 30% less than re-placing the entries in place, where a
    /// displaced entry is chased to its new home out of order (profile share of the rebuild on
    /// `compare`'s idem-never-1t: 6% against 8.7%).
    fn rebuild_to(&mut self, min_capacity: usize, now_millis: u64) {
        // Sized as if every entry were live (one pass over the old array, not two); when many
        // were dead, the table is laid again at the size of what is left.
        let capacity = round_capacity(capacity_for(self.len).max(min_capacity));
        let old = std::mem::replace(&mut self.slots, SlotArray::new(capacity));
        self.len = 0;
        for &slot in old.iter() {
            if slot.is_empty() {
                continue;
            }
            if slot.is_dead(now_millis) {
                self.drop_dead(slot, now_millis);
            } else {
                self.insert_unchecked(slot);
            }
        }
        drop(old);
        let fitting = round_capacity(capacity_for(self.len).max(min_capacity));
        if fitting * 2 <= self.slots.len() {
            self.rebuild_to(fitting, now_millis);
        }
    }

    /// Drops a dead entry taken out of the table.
    fn drop_dead(&mut self, slot: Packed, now_millis: u64) {
        self.released.push(self.windows.location(slot));
        self.expired(slot, now_millis);
        self.windows.release(slot);
    }

    /// Makes room for `additional` more entries without a rebuild on the way.
    pub(crate) fn reserve(&mut self, additional: usize, now_millis: u64) {
        let wanted = self.len + additional;
        if over_limit(wanted, self.slots.len()) {
            // The smallest table that holds them under the load limit: as dense as one that
            // grew to this size entry by entry.
            self.rebuild_to((wanted * 5).div_ceil(4) + 1, now_millis);
        }
    }

    /// Puts a checkpointed entry, known not to be in the table, without its expiry wheel entry
    /// (recovery schedules every entry once at the end: [`ShardTable::schedule_all`]).
    pub(crate) fn install_unscheduled(&mut self, slot: Slot, now_millis: u64) {
        if over_limit(self.len + 1, self.slots.len()) {
            self.rebuild(now_millis);
        }
        let packed = self
            .windows
            .pack(slot.tag, slot.expires_at_secs, slot.location);
        self.insert_unchecked(packed);
    }

    /// Gives every occupied slot its expiry wheel entry, and shows each to `each`: the end of
    /// recovery, which put its entries unscheduled. One pass over the table in slot order, with
    /// the shard's wheel buckets hot, instead of a wheel entry (and a cache miss or two) for every
    /// record replayed, superseded ones included.
    pub(crate) fn schedule_all(&mut self, mut each: impl FnMut(&Slot)) {
        for index in 0..self.slots.len() {
            let packed = self.slots.get(index);
            if !packed.is_empty() {
                let deadline_tick = self.deadline_tick(packed.deadline_secs());
                self.wheel.schedule(packed.tag(), deadline_tick);
                each(&self.view(packed));
            }
        }
    }

    /// Puts a slot known not to be in the table (rebuilds): no probe, no wheel entry, no new
    /// window reference (the slot brings its own).
    fn insert_unchecked(&mut self, slot: Packed) {
        let mut index = self.home(slot.tag());
        while !self.slots.get(index).is_empty() {
            index = self.next(index);
        }
        self.slots.set(index, slot);
        self.len += 1;
    }

    /// Every occupied slot with its index.
    pub(crate) fn occupied(&self) -> impl Iterator<Item = (usize, Slot)> + '_ {
        self.slots
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, slot)| !slot.is_empty())
            .map(|(index, slot)| (index, self.view(slot)))
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
        // At 10 s every entry is dead: a new key reuses the first slot of the run (tag 5's
        // home is slot 0: homes scale the 24-bit tag to the capacity).
        let probe = table
            .probe::<()>(5, 10_000, |_| panic!("dead entries are never read"))
            .unwrap();
        assert_eq!(probe, Probe::Vacant(0));
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

    /// Checks the table against `model` (location → tag): every entry findable by probing, the
    /// table's invariants hold, and every window reference is accounted for.
    fn assert_matches(table: &ShardTable, model: &HashMap<u64, u32>, now: u64) {
        assert_eq!(table.len(), model.len());
        assert!(!over_limit(table.len(), table.capacity()));
        for (&location, &tag) in model {
            let probe = table
                .probe::<()>(tag, now, |slot| {
                    Ok(if slot.location == location {
                        KeyCheck::Live
                    } else {
                        KeyCheck::Other
                    })
                })
                .unwrap();
            let Probe::Found(index) = probe else {
                panic!("location {location:#x} (tag {tag:#x}) lost: {probe:?}")
            };
            assert_eq!(table.slot(index).location, location);
        }
        let mut seen: Vec<u64> = table.occupied().map(|(_, s)| s.location).collect();
        seen.sort_unstable();
        let mut expected: Vec<u64> = model.keys().copied().collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
        // No slot sits across an empty slot from its home.
        let capacity = table.capacity();
        for (index, slot) in table.occupied() {
            let home = table.home(slot.tag);
            let mut at = home;
            while at != index {
                assert!(
                    !table.slots.get(at).is_empty(),
                    "slot {index} cut off from home {home}"
                );
                at = table.next(at);
            }
            assert!(distance(home, index, capacity) < capacity);
        }
    }

    fn put_fresh(table: &mut ShardTable, tag: u32, location: u64, deadline: u32, now: u64) {
        let Probe::Vacant(index) = table
            .probe::<()>(tag, now, |slot| {
                assert_ne!(slot.location, location, "a fresh key was found");
                Ok(KeyCheck::Other)
            })
            .unwrap()
        else {
            panic!("fresh key found")
        };
        table.put(
            index,
            Slot {
                tag,
                expires_at_secs: deadline,
                location,
            },
            now,
        );
    }

    fn remove_key(table: &mut ShardTable, tag: u32, location: u64, now: u64) {
        let Probe::Found(index) = table
            .probe::<()>(tag, now, |slot| {
                Ok(if slot.location == location {
                    KeyCheck::Live
                } else {
                    KeyCheck::Other
                })
            })
            .unwrap()
        else {
            panic!("key {location:#x} not found")
        };
        table.remove(index);
    }

    /// Many keys: the table grows by 5/4 steps through non-power-of-two sizes, stays between
    /// the load bounds, keeps every key findable while keys are removed between the resizes
    /// (backward shift across a resize), and releases exactly the removed locations.
    #[test]
    fn growth_under_many_keys_with_removals_across_resizes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut table = ShardTable::new(1000, 0);
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut capacities = vec![table.capacity()];
        let mut released = 0;
        // Locations spread over many segments and windows, as a long log would.
        let location_of =
            |i: u64| crate::log::location(1 + (i / 50_000) as u32, 32 + (i % 50_000) as u32 * 997);
        for i in 0..60_000u64 {
            let tag = rng.gen::<u32>() & TAG_MASK;
            let location = location_of(i);
            put_fresh(&mut table, tag, location, u32::MAX, 0);
            model.insert(location, tag);
            if *capacities.last().unwrap() != table.capacity() {
                capacities.push(table.capacity());
                // Just after a rebuild: load at least 0.64 (when nothing was dead), less the
                // rounding to whole chunks.
                assert!(
                    table.capacity() < 16 * CHUNK || table.len() * 100 >= table.capacity() * 60,
                    "{} in {}",
                    table.len(),
                    table.capacity()
                );
            }
            if i % 3 == 0 {
                let victim = location_of(rng.gen_range(0..=i));
                if let Some(tag) = model.remove(&victim) {
                    remove_key(&mut table, tag, victim, 0);
                    released += 1;
                }
            }
            if i % 10_000 == 0 {
                assert_matches(&table, &model, 0);
            }
        }
        assert_matches(&table, &model, 0);
        assert!(capacities.iter().any(|c| !c.is_power_of_two()));
        for pair in capacities.windows(2).filter(|pair| pair[0] >= 16 * CHUNK) {
            let growth = pair[1] as f64 / pair[0] as f64;
            assert!((1.2..1.33).contains(&growth), "grew {pair:?}");
        }
        assert_eq!(table.released.len(), released);
        // Removing everything frees every window number.
        for (location, tag) in std::mem::take(&mut model) {
            remove_key(&mut table, tag, location, 0);
        }
        assert_eq!(table.len(), 0);
        assert_eq!(table.windows.numbers_in_use(), 0);
    }

    /// Runs that wrap from the last slot to slot 0: tags whose homes are the last slots, put,
    /// found, removed with backward shift across the wrap, and through a rebuild.
    #[test]
    fn runs_wrap_around_the_end() {
        let mut table = ShardTable::new(1000, 0);
        let mut model: HashMap<u64, u32> = HashMap::new();
        // Tags at the very top of the range: homes at the last slot or two.
        for i in 0..40u64 {
            let tag = TAG_MASK - (i % 3) as u32;
            put_fresh(&mut table, tag, 100 + i, u32::MAX, 0);
            model.insert(100 + i, tag);
        }
        assert_eq!(table.capacity(), MIN_CAPACITY);
        assert!(!table.slots.get(0).is_empty(), "the run wrapped to slot 0");
        // Keys whose home is slot 0, behind the wrapped run.
        for i in 0..5u64 {
            put_fresh(&mut table, 1, 200 + i, u32::MAX, 0);
            model.insert(200 + i, 1);
        }
        assert_matches(&table, &model, 0);
        // Remove from the middle of the wrapped run, then the start.
        for location in [110, 100, 139, 101, 202] {
            let tag = model.remove(&location).unwrap();
            remove_key(&mut table, tag, location, 0);
            assert_matches(&table, &model, 0);
        }
        // Grow past a rebuild with the wrapped run in place, then remove across it again.
        for i in 0..40u64 {
            let tag = TAG_MASK - (i % 5) as u32;
            put_fresh(&mut table, tag, 300 + i, u32::MAX, 0);
            model.insert(300 + i, tag);
        }
        assert!(table.capacity() > MIN_CAPACITY);
        assert_matches(&table, &model, 0);
        for location in [300, 120, 200, 339] {
            let tag = model.remove(&location).unwrap();
            remove_key(&mut table, tag, location, 0);
            assert_matches(&table, &model, 0);
        }
    }

    /// Expiry through the wheel and relocation keep the window references exact, and entries of
    /// windows past the numbers go to the overflow table and stay exact.
    #[test]
    fn reaping_and_relocating_keep_windows_exact() {
        let mut table = ShardTable::new(1000, 0);
        table.windows.limit_numbers(4);
        let mut model: HashMap<u64, u32> = HashMap::new();
        for i in 0..300u64 {
            let location = crate::log::location(1 + (i % 10) as u32, 32 + i as u32);
            let tag = (i * 7919 % (1 << 24)) as u32;
            put_fresh(&mut table, tag, location, 5 + (i % 2) as u32, 0);
            model.insert(location, tag);
        }
        assert_matches(&table, &model, 0);
        assert!(table.windows.overflow_in_use() > 0);
        // Compaction moves every entry of segment 1 to segment 20.
        let moves: Vec<(usize, u64)> = table
            .occupied()
            .filter(|(_, s)| crate::log::segment_of(s.location) == 1)
            .map(|(i, s)| (i, s.location))
            .collect();
        for (index, from) in moves {
            let to = crate::log::location(20, crate::log::offset_of(from));
            table.relocate(index, to);
            let tag = model.remove(&from).unwrap();
            model.insert(to, tag);
        }
        assert_matches(&table, &model, 0);
        // At 5 s the entries with deadline 5 are dead; the wheel removes them.
        let (done, removed) = table.reap(5_000, usize::MAX);
        assert!(done);
        assert_eq!(removed, 150);
        model.retain(|location, _| crate::log::offset_of(*location) % 2 == 1);
        assert_matches(&table, &model, 5_000);
        let (_, removed) = table.reap(6_000, usize::MAX);
        assert_eq!(removed, 150);
        assert_eq!(table.len(), 0);
        assert_eq!(table.windows.numbers_in_use(), 0);
        assert_eq!(table.windows.overflow_in_use(), 0);
    }

    /// A tag above 24 bits is the same key as its low 24 bits (callers may pass a checkpoint's
    /// 32-bit tag).
    #[test]
    fn tags_are_taken_modulo_24_bits() {
        let mut table = ShardTable::new(1000, 0);
        put_fresh(&mut table, 0xAB12_3456, 77, u32::MAX, 0);
        let probe = table
            .probe::<()>(0x12_3456, 0, |slot| {
                assert_eq!(slot.tag, 0x12_3456);
                Ok(KeyCheck::Live)
            })
            .unwrap();
        assert!(matches!(probe, Probe::Found(_)));
    }

    /// Growth drops the dead entries and keeps the live ones, wrapped runs included; a shrink
    /// too.
    #[test]
    fn growth_drops_dead_entries_and_keeps_live_ones() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut table = ShardTable::new(1000, 0);
        let mut live: HashMap<u64, u32> = HashMap::new();
        let mut dead = Vec::new();
        for i in 1..=4_000u64 {
            // A quarter of the tags at the very top, so runs wrap.
            let tag = if i % 4 == 0 {
                TAG_MASK - rng.gen_range(0..64)
            } else {
                rng.gen::<u32>() & TAG_MASK
            };
            let deadline = if i % 3 == 0 { 5 } else { u32::MAX };
            put_fresh(&mut table, tag, i, deadline, 0);
            if deadline == 5 {
                dead.push(i);
            } else {
                live.insert(i, tag);
            }
        }
        assert!(table.capacity() >= CHUNK);
        table.released.clear();
        let now = 10_000;
        let before = table.capacity();
        let mut i = 10_000u64;
        while table.capacity() == before {
            let tag = rng.gen::<u32>() & TAG_MASK;
            put_fresh(&mut table, tag, i, u32::MAX, now);
            live.insert(i, tag);
            i += 1;
        }
        assert!(table.capacity() > before);
        assert_matches(&table, &live, now);
        let mut released = std::mem::take(&mut table.released);
        released.sort_unstable();
        // Each dead entry was released once: reused by a put before the growth, or dropped by it.
        assert_eq!(released, dead);
        // All but 100 entries go: a rebuild shrinks the table.
        let keep: HashMap<u64, u32> = live.iter().take(100).map(|(&l, &t)| (l, t)).collect();
        for (&location, &tag) in live.iter().skip(100) {
            remove_key(&mut table, tag, location, now);
        }
        table.reserve(1, now);
        table.rebuild(now);
        assert!(table.capacity() < CHUNK);
        assert_matches(&table, &keep, now);
    }
}
