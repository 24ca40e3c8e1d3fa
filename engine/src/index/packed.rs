//! The 12-byte form in which a shard table stores an entry, and the per-shard table of log
//! windows that lets a log location fit in 40 bits.
//!
//! A [`Packed`] slot is one 64-bit word and the deadline (`u32` seconds), 4-byte aligned:
//! `word = tag (24 bits) << 40 | window number (16 bits) << 24 | offset in the window (24 bits)`.
//! A *window* is an aligned 16 MiB stretch of one segment (`segment_id << 32 | offset` with the
//! low 24 bits cleared); a shard numbers the windows its entries point into ([`Windows`]), so a
//! location costs 40 bits instead of 64 whatever the segment size.
//!
//! Invariants:
//! - A slot is empty iff its word is 0: window number 0 is never handed out, so an occupied
//!   slot's word is never 0.
//! - Every occupied slot holds one reference on its window number (or on its overflow entry):
//!   a number's reference count (for the last number handed out, plus the owner's
//!   [`PendingRefs`]) is the count of slots that use it, and a number whose count drops to 0 is
//!   free again (and forgotten by the base-to-number map).
//! - Nearly every insert takes a reference on the last number handed out (the log's tail
//!   window). It is counted in the owner's [`PendingRefs`], which the owner keeps on the cache
//!   line it writes anyway (the shard's lock's), not in `refs`, whose line would move between
//!   the cores of threads inserting into the shard on every insert; every method that reads or
//!   lowers a count, or moves the last number on, folds the pending ones in first.
//! - Numbers `1..OVERFLOW` name windows. Once they are all in use (a shard with entries in more
//!   than 65,534 windows: about 1 TiB of log holding its live entries), a new location is kept
//!   whole in an overflow table and the slot holds `OVERFLOW` and the overflow entry's index in
//!   its offset bits: correct, at 8 more bytes for such an entry. At most 2^24 overflow entries
//!   per shard; more is refused with a panic message that says so (2^24 entries of one shard in
//!   more than 1 TiB of log: far past any store this index is sized for).
//! - Tags are 24 bits ([`TAG_BITS`]): the index hashes keys to 24-bit tags.

use std::collections::HashMap;

use crate::log::Location;

/// Bits of a tag: the index's hash yields tags below `1 << TAG_BITS`.
pub(crate) const TAG_BITS: u32 = 24;
/// The mask of a tag's bits.
pub(crate) const TAG_MASK: u32 = (1 << TAG_BITS) - 1;

/// Bits of the offset inside a window (16 MiB windows).
const WINDOW_OFFSET_BITS: u32 = 24;
const WINDOW_OFFSET_MASK: u64 = (1 << WINDOW_OFFSET_BITS) - 1;
/// Bits of a window number.
const NUMBER_BITS: u32 = 16;
/// The window number that means "the location is in the overflow table".
const OVERFLOW: u32 = (1 << NUMBER_BITS) - 1;
/// Bits of a packed location (number and offset).
const LOCATION_BITS: u32 = NUMBER_BITS + WINDOW_OFFSET_BITS;
const LOCATION_MASK: u64 = (1 << LOCATION_BITS) - 1;

/// One stored entry: see the module doc. 12 bytes.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
pub(super) struct Packed {
    word: u64,
    deadline_secs: u32,
}
const _: () = assert!(std::mem::size_of::<Packed>() == 12);

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (word, deadline) = (self.word, self.deadline_secs);
        write!(f, "Packed({word:#x}, {deadline})")
    }
}

impl Packed {
    pub(super) const EMPTY: Packed = Packed {
        word: 0,
        deadline_secs: 0,
    };

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.word == 0
    }

    #[inline]
    pub(super) fn tag(&self) -> u32 {
        (self.word >> LOCATION_BITS) as u32
    }

    #[inline]
    pub(super) fn deadline_secs(&self) -> u32 {
        self.deadline_secs
    }

    /// See [`super::Slot::is_dead`].
    #[inline]
    pub(super) fn is_dead(&self, now_millis: u64) -> bool {
        u64::from(self.deadline_secs) * 1000 <= now_millis
    }

    /// The packed location (window number and offset).
    #[inline]
    fn location_bits(&self) -> u64 {
        self.word & LOCATION_MASK
    }

    /// This entry with another packed location (same tag and deadline).
    fn with_location_bits(self, bits: u64) -> Packed {
        Packed {
            word: (self.word & !LOCATION_MASK) | bits,
            deadline_secs: self.deadline_secs,
        }
    }
}

/// References taken on the last window number handed out and not yet added to its count (see
/// the module doc). Kept by the owner of a [`Windows`] and handed to every call that takes or
/// drops a reference; only [`Windows`] changes it. Not `Copy`: a copy would hold the same
/// references twice.
#[derive(Debug, Default)]
pub(super) struct PendingRefs(u32);

/// One shard's window numbers (see the module doc).
#[derive(Debug)]
pub(super) struct Windows {
    /// Number → window base (`segment_id << 32 | offset` with the low 24 bits clear); index 0
    /// unused.
    bases: Vec<Location>,
    /// Number → slots using it (0: free).
    refs: Vec<u32>,
    by_base: HashMap<Location, u32, ahash::RandomState>,
    free: Vec<u32>,
    /// The window last handed out, and its number (0: none): inserts go to the log's tail, so
    /// nearly every lookup is this one.
    last_base: Location,
    last_number: u32,
    /// Numbers below this may name windows (`OVERFLOW` normally; tests lower it to reach the
    /// overflow path).
    number_limit: u32,
    overflow: Vec<Location>,
    overflow_free: Vec<u32>,
}

impl Windows {
    pub(super) fn new() -> Windows {
        Windows {
            bases: vec![0],
            refs: vec![0],
            by_base: HashMap::default(),
            free: Vec::new(),
            last_base: 0,
            last_number: 0,
            number_limit: OVERFLOW,
            overflow: Vec::new(),
            overflow_free: Vec::new(),
        }
    }

    /// Lowers the count of window numbers (tests of the overflow path).
    #[cfg(test)]
    pub(super) fn limit_numbers(&mut self, limit: u32) {
        self.number_limit = limit.clamp(2, OVERFLOW);
    }

    /// Packs an entry of `tag`, `deadline_secs` at `location` (not 0), taking a reference on
    /// its window.
    #[inline]
    pub(super) fn pack(
        &mut self,
        pending: &mut PendingRefs,
        tag: u32,
        deadline_secs: u32,
        location: Location,
    ) -> Packed {
        debug_assert!(location != 0, "no record lives at location 0");
        Packed {
            word: u64::from(tag & TAG_MASK) << LOCATION_BITS | self.acquire(pending, location),
            deadline_secs,
        }
    }

    /// `slot` moved to `location`: takes a reference on the new window, drops the old one.
    pub(super) fn repack(
        &mut self,
        pending: &mut PendingRefs,
        slot: Packed,
        location: Location,
    ) -> Packed {
        let bits = self.acquire(pending, location);
        self.release(pending, slot);
        slot.with_location_bits(bits)
    }

    /// Adds the pending references to the last number's count.
    fn settle(&mut self, pending: &mut PendingRefs) {
        if pending.0 > 0 {
            debug_assert!(self.last_number != 0, "references pending on no number");
            self.refs[self.last_number as usize] += std::mem::take(&mut pending.0);
        }
    }

    /// The location of an occupied slot.
    #[inline]
    pub(super) fn location(&self, slot: Packed) -> Location {
        let bits = slot.location_bits();
        let number = (bits >> WINDOW_OFFSET_BITS) as u32;
        let offset = bits & WINDOW_OFFSET_MASK;
        if number == OVERFLOW {
            self.overflow[offset as usize]
        } else {
            self.bases[number as usize] | offset
        }
    }

    #[inline]
    fn acquire(&mut self, pending: &mut PendingRefs, location: Location) -> u64 {
        let base = location & !WINDOW_OFFSET_MASK;
        let offset = location & WINDOW_OFFSET_MASK;
        if self.last_number != 0 && base == self.last_base && pending.0 < u32::MAX {
            pending.0 += 1;
            return u64::from(self.last_number) << WINDOW_OFFSET_BITS | offset;
        }
        self.acquire_other(pending, base, offset)
    }

    #[inline(never)]
    fn acquire_other(&mut self, pending: &mut PendingRefs, base: Location, offset: u64) -> u64 {
        // The last number may change below (and a fresh one may reuse a freed slot of `refs`).
        self.settle(pending);
        let number = match self.by_base.get(&base) {
            Some(&number) => number,
            None => match self.new_number(base) {
                Some(number) => number,
                None => return self.acquire_overflow(base | offset),
            },
        };
        self.refs[number as usize] += 1;
        self.last_base = base;
        self.last_number = number;
        u64::from(number) << WINDOW_OFFSET_BITS | offset
    }

    fn new_number(&mut self, base: Location) -> Option<u32> {
        let number = match self.free.pop() {
            Some(number) => number,
            None if (self.bases.len() as u32) < self.number_limit => {
                self.bases.push(0);
                self.refs.push(0);
                self.bases.len() as u32 - 1
            }
            None => return None,
        };
        self.bases[number as usize] = base;
        self.by_base.insert(base, number);
        Some(number)
    }

    #[cold]
    fn acquire_overflow(&mut self, location: Location) -> u64 {
        let index = match self.overflow_free.pop() {
            Some(index) => {
                self.overflow[index as usize] = location;
                index
            }
            None => {
                let index = self.overflow.len();
                assert!(
                    index < 1 << WINDOW_OFFSET_BITS,
                    "index shard: more than 2^24 entries beyond its 65,534 log windows"
                );
                self.overflow.push(location);
                index as u32
            }
        };
        u64::from(OVERFLOW) << WINDOW_OFFSET_BITS | u64::from(index)
    }

    /// Drops the reference of an occupied slot that leaves the table.
    #[inline]
    pub(super) fn release(&mut self, pending: &mut PendingRefs, slot: Packed) {
        let bits = slot.location_bits();
        let number = (bits >> WINDOW_OFFSET_BITS) as u32;
        if number == OVERFLOW {
            self.overflow_free.push((bits & WINDOW_OFFSET_MASK) as u32);
            return;
        }
        if number == self.last_number {
            self.settle(pending);
        }
        let refs = &mut self.refs[number as usize];
        *refs -= 1;
        if *refs == 0 {
            self.by_base.remove(&self.bases[number as usize]);
            self.free.push(number);
            if self.last_number == number {
                self.last_number = 0;
            }
        }
    }

    /// Window numbers in use (tests).
    #[cfg(test)]
    pub(super) fn numbers_in_use(&self) -> usize {
        self.by_base.len()
    }

    /// Overflow entries in use (tests).
    #[cfg(test)]
    pub(super) fn overflow_in_use(&self) -> usize {
        self.overflow.len() - self.overflow_free.len()
    }

    /// Bytes of memory held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.bases.capacity() * 8
            + self.refs.capacity() * 4
            + self.by_base.capacity() * 16
            + self.free.capacity() * 4
            + self.overflow.capacity() * 8
            + self.overflow_free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::location;

    #[test]
    fn locations_round_trip_and_numbers_are_reused() {
        let mut windows = Windows::new();
        let mut pending = PendingRefs::default();
        let spots = [
            location(1, 32),
            location(1, (1 << 24) - 1),
            location(1, 1 << 24),
            location(7, u32::MAX),
            location(u32::MAX, 32),
        ];
        let packed: Vec<Packed> = spots
            .iter()
            .enumerate()
            .map(|(i, &at)| windows.pack(&mut pending, TAG_MASK - i as u32, 9, at))
            .collect();
        for (i, (p, &at)) in packed.iter().zip(&spots).enumerate() {
            assert!(!p.is_empty());
            assert_eq!(windows.location(*p), at);
            assert_eq!(p.tag(), TAG_MASK - i as u32);
            assert_eq!(p.deadline_secs(), 9);
        }
        assert_eq!(windows.numbers_in_use(), 4, "two spots share a window");
        for p in &packed {
            windows.release(&mut pending, *p);
        }
        assert_eq!(windows.numbers_in_use(), 0);
        let again = windows.pack(&mut pending, 0, 1, location(3, 100));
        assert_eq!(windows.location(again), location(3, 100));
        assert!(windows.bases.len() <= 5, "freed numbers are reused");
        assert!(
            !again.is_empty(),
            "tag 0 at a window's first byte is still occupied"
        );
    }

    /// Random packs, repacks and releases against a model of the live slots, most on the
    /// latest window (as inserts are, so most references wait in `PendingRefs`): every live
    /// slot keeps its location, and a number is in use exactly while a live slot uses it. A
    /// reference lost or counted twice frees a number early (a live slot's location changes
    /// once it is reused) or never.
    #[test]
    fn pending_references_keep_every_count_exact() {
        use rand::{Rng, SeedableRng};
        for limit in [OVERFLOW, 4] {
            let mut windows = Windows::new();
            windows.limit_numbers(limit);
            let mut pending = PendingRefs::default();
            let mut live: Vec<(Packed, Location)> = Vec::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(limit));
            let mut tail_segment = 1u32;
            for step in 0..20_000 {
                let roll = rng.gen_range(0..100);
                if roll < 55 || live.is_empty() {
                    // Mostly the tail window; sometimes an older one, or a new tail.
                    if rng.gen_ratio(1, 50) {
                        tail_segment += 1;
                    }
                    let segment = if rng.gen_ratio(1, 10) {
                        rng.gen_range(1..=tail_segment)
                    } else {
                        tail_segment
                    };
                    let at = location(segment, rng.gen_range(32..32 + (1 << 20)));
                    live.push((windows.pack(&mut pending, 7, 1, at), at));
                } else if roll < 90 {
                    let (slot, _) = live.swap_remove(rng.gen_range(0..live.len()));
                    windows.release(&mut pending, slot);
                } else {
                    let i = rng.gen_range(0..live.len());
                    let at = location(tail_segment, rng.gen_range(32..32 + (1 << 20)));
                    live[i] = (windows.repack(&mut pending, live[i].0, at), at);
                }
                if step % 97 == 0 || live.len() < 3 {
                    for (slot, at) in &live {
                        assert_eq!(windows.location(*slot), *at, "step {step}");
                    }
                    let mut numbers: Vec<u64> = live
                        .iter()
                        .map(|(slot, _)| slot.location_bits() >> WINDOW_OFFSET_BITS)
                        .filter(|&number| number != u64::from(OVERFLOW))
                        .collect();
                    numbers.sort_unstable();
                    numbers.dedup();
                    assert_eq!(windows.numbers_in_use(), numbers.len(), "step {step}");
                }
            }
            for (slot, _) in live.drain(..) {
                windows.release(&mut pending, slot);
            }
            assert_eq!(windows.numbers_in_use(), 0);
            assert_eq!(windows.overflow_in_use(), 0);
        }
    }

    #[test]
    fn past_the_window_numbers_locations_overflow_and_stay_exact() {
        let mut windows = Windows::new();
        let mut pending = PendingRefs::default();
        windows.limit_numbers(3); // numbers 1 and 2
        let mut packed = Vec::new();
        for segment in 1..=6u32 {
            let at = location(segment, 40);
            packed.push((windows.pack(&mut pending, 5, 1, at), at));
        }
        assert_eq!(windows.numbers_in_use(), 2);
        assert_eq!(windows.overflow_in_use(), 4);
        for (p, at) in &packed {
            assert_eq!(windows.location(*p), *at);
        }
        let (moved, _) = packed[4];
        let moved = windows.repack(&mut pending, moved, location(1, 80));
        assert_eq!(windows.location(moved), location(1, 80));
        assert_eq!(windows.overflow_in_use(), 3);
        packed[4] = (moved, location(1, 80));
        for (p, _) in packed {
            windows.release(&mut pending, p);
        }
        assert_eq!(windows.numbers_in_use(), 0);
        assert_eq!(windows.overflow_in_use(), 0);
    }
}
