//! The late-duplicate memory of one shard: which keys' entries expired recently, so that an
//! insert of such a key can be flagged as a *late duplicate* (the key came back shortly after its
//! TTL ended: the TTL was shorter than the real retry window). It only signals; it never changes
//! what is inserted.
//!
//! Shape: a ring of `EPOCHS` Bloom filters, each covering `epoch_millis` of expiry times
//! (`grace / (EPOCHS - 1)`, so the epochs still in the ring cover at least the grace period).
//! An expired entry's 24-bit tag sets `HASHES` bits in the filter of the epoch its deadline falls
//! in; each filter has 16 bits per key of its capacity (2 bytes per remembered key).
//!
//! Invariants and limits:
//! - No false negatives while an epoch holds at most its capacity: a key whose entry was dropped
//!   as expired at most `grace` after its deadline, and whose epoch is still in the ring, is
//!   found. Past capacity an epoch takes no more keys (counted in `overflowed`): the memory stays
//!   bounded and may miss.
//! - False positives: a key never seen is flagged with probability about
//!   `(1 - e^(-HASHES / 16))^HASHES` per epoch in the window at full capacity (0.24% for 4
//!   hashes), summed over the live epochs; less while epochs are partly filled. Tag collisions
//!   (two keys with the same 24-bit tag) add 2^-24 per remembered key.
//! - A key may be flagged up to one epoch (`grace / (EPOCHS - 1)`) past the grace period.

/// Filters in the ring.
const EPOCHS: usize = 4;
/// Bits set (and tested) per key.
const HASHES: u32 = 4;
/// Filter bits per key of capacity: 2 bytes.
const BITS_PER_KEY: usize = 16;

#[derive(Debug)]
struct Epoch {
    /// Which epoch (deadline / epoch_millis) the filter holds; `u64::MAX`: none yet.
    number: u64,
    keys: usize,
    bits: Box<[u64]>,
}

/// One shard's memory of recently expired tags (see the module doc).
#[derive(Debug)]
pub(crate) struct LateMemory {
    grace_millis: u64,
    epoch_millis: u64,
    capacity: usize,
    /// log2 of the bits in a filter.
    bit_shift: u32,
    epochs: [Epoch; EPOCHS],
    /// Expired keys not remembered because their epoch was full.
    pub(crate) overflowed: u64,
}

impl LateMemory {
    /// A memory for `grace_millis` (> 0), remembering up to `capacity` keys per epoch.
    pub(crate) fn new(grace_millis: u64, capacity: usize) -> LateMemory {
        let capacity = capacity.max(1);
        let bits = (capacity * BITS_PER_KEY).next_power_of_two().max(64);
        let epoch = || Epoch {
            number: u64::MAX,
            keys: 0,
            bits: vec![0u64; bits / 64].into_boxed_slice(),
        };
        LateMemory {
            grace_millis,
            epoch_millis: (grace_millis / (EPOCHS as u64 - 1)).max(1),
            capacity,
            bit_shift: bits.trailing_zeros(),
            epochs: [epoch(), epoch(), epoch(), epoch()],
            overflowed: 0,
        }
    }

    pub(crate) fn grace_millis(&self) -> u64 {
        self.grace_millis
    }

    /// Bytes of memory held by the filters.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.epochs.iter().map(|e| e.bits.len() * 8).sum()
    }

    /// The `HASHES` bit positions of `tag`: double hashing over a 64-bit mix of the tag (the tag's
    /// low bits place it in the table, so they are mixed, not used as they are).
    fn positions(&self, tag: u32) -> impl Iterator<Item = usize> {
        let mixed = u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mixed = mixed ^ (mixed >> 29);
        let h1 = mixed;
        let h2 = mixed.wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1;
        let shift = 64 - self.bit_shift;
        (0..u64::from(HASHES)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) >> shift) as usize)
    }

    /// Remembers that the entry with `tag`, whose deadline was `deadline_millis`, expired. Entries
    /// dropped longer than the grace after their deadline are not remembered.
    pub(crate) fn remember(&mut self, tag: u32, deadline_millis: u64, now_millis: u64) {
        if deadline_millis.saturating_add(self.grace_millis) <= now_millis {
            return;
        }
        let number = deadline_millis / self.epoch_millis;
        let positions: [usize; HASHES as usize] = {
            let mut out = [0; HASHES as usize];
            for (o, p) in out.iter_mut().zip(self.positions(tag)) {
                *o = p;
            }
            out
        };
        let epoch = &mut self.epochs[number as usize % EPOCHS];
        if epoch.number != number {
            if epoch.number != u64::MAX && epoch.number > number {
                return; // a newer epoch holds the ring slot: this deadline is too old
            }
            epoch.number = number;
            epoch.keys = 0;
            epoch.bits.fill(0);
        }
        if epoch.keys >= self.capacity {
            self.overflowed += 1;
            return;
        }
        epoch.keys += 1;
        for p in positions {
            epoch.bits[p / 64] |= 1 << (p % 64);
        }
    }

    /// Whether an entry with `tag` expired within the grace period before `now_millis` (up to one
    /// epoch more; with the false-positive rate of the module doc).
    pub(crate) fn contains(&self, tag: u32, now_millis: u64) -> bool {
        let oldest = now_millis.saturating_sub(self.grace_millis) / self.epoch_millis;
        let newest = now_millis / self.epoch_millis;
        self.epochs.iter().any(|epoch| {
            epoch.number != u64::MAX
                && epoch.number >= oldest
                && epoch.number <= newest
                && self
                    .positions(tag)
                    .all(|p| epoch.bits[p / 64] & (1 << (p % 64)) != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_grace_and_forgets_after() {
        let mut memory = LateMemory::new(3_000, 100);
        memory.remember(7, 10_000, 10_500);
        assert!(memory.contains(7, 10_500));
        assert!(memory.contains(7, 12_999));
        assert!(!memory.contains(7, 15_000), "an epoch past the grace");
        // Dropped too long after its deadline: not remembered.
        memory.remember(8, 10_000, 13_001);
        assert!(!memory.contains(8, 13_001));
    }

    #[test]
    fn a_full_epoch_takes_no_more_keys() {
        let mut memory = LateMemory::new(3_000, 2);
        for tag in 0..5 {
            memory.remember(tag, 1_000, 1_000);
        }
        assert_eq!(memory.overflowed, 3);
        assert!(memory.contains(0, 1_000) && memory.contains(1, 1_000));
    }

    /// The false-positive rate at full capacity, against the documented bound.
    #[test]
    fn false_positive_rate_at_capacity_is_as_documented() {
        let capacity = 4096;
        let mut memory = LateMemory::new(3_000, capacity);
        let mut state = 0x1234_5678_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for _ in 0..capacity {
            memory.remember(next(), 1_000, 1_000);
        }
        let trials = 200_000;
        let hits = (0..trials)
            .filter(|_| memory.contains(next(), 1_000))
            .count();
        let rate = hits as f64 / trials as f64;
        // One full epoch: (1 - e^(-4/16))^4 = 0.24%: filters are rounded up to a power of two of
        // bits, so the real rate is at or below it.
        assert!(rate < 0.0035, "false-positive rate {rate}");
    }
}
