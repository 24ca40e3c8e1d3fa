//! A hierarchical timing wheel (Varghese & Lauck) of one shard's expiry deadlines.
//!
//! Time is counted in ticks of the store's expiry tick (default 1 s) on the store's clock. Level 0
//! has 256 buckets of one tick; each higher level has 64 buckets, each spanning a whole turn of
//! the level below (256, 16 384, 1 048 576, 67 108 864 ticks). An entry is just the 4-byte tag of
//! the index slot it was scheduled for: the shard table is the source of truth for deadlines, so
//! the wheel costs 4 bytes per key.
//!
//! Invariants:
//! - Every occupied, non-dead slot has at least one entry with its tag in a bucket that will be
//!   reached no later than the slot's deadline tick (stale extra entries are allowed), or, for a
//!   deadline beyond the wheel's reach, in the top level's farthest bucket, which re-schedules it
//!   when it cascades.
//! - A fired entry removes only slots that are *dead* (deadline passed) and carry its tag, so a
//!   stale entry (key removed, or re-inserted with a later deadline) can never drop a live entry.
//! - `current_tick` only grows; every deadline at or before it has been fired.

/// Where one entry goes, and how to walk the levels.
const LEVEL0_BITS: u32 = 8;
const LEVEL_BITS: u32 = 6;
pub(crate) const LEVELS: usize = 5;

fn level_shift(level: usize) -> u32 {
    if level == 0 {
        0
    } else {
        LEVEL0_BITS + LEVEL_BITS * (level as u32 - 1)
    }
}

fn level_mask(level: usize) -> u64 {
    if level == 0 {
        (1 << LEVEL0_BITS) - 1
    } else {
        (1 << LEVEL_BITS) - 1
    }
}

/// The ticks a whole turn of `level` spans (one bucket of `level + 1`).
fn level_span(level: usize) -> u64 {
    1 << (level_shift(level) + if level == 0 { LEVEL0_BITS } else { LEVEL_BITS })
}

/// A bucket's tags, in chunks that double from 16 up to 1024 entries: a bucket of any size
/// wastes at most one chunk, where one growing `Vec` would waste up to half its capacity (the
/// wheel is 4 bytes per key only if its slack stays small). The chunk being filled sits in the
/// bucket itself, so scheduling touches the bucket and the chunk's tail, not a list of chunks
/// first (one dependent cache miss fewer per insert).
#[derive(Debug, Default)]
struct Bucket {
    filling: Vec<u32>,
    full: Vec<Vec<u32>>,
}

const FIRST_CHUNK_ENTRIES: usize = 16;
const MAX_CHUNK_ENTRIES: usize = 1024;

impl Bucket {
    fn push(&mut self, tag: u32) {
        if self.filling.len() == self.filling.capacity() {
            let capacity = if self.filling.capacity() == 0 {
                FIRST_CHUNK_ENTRIES
            } else {
                (self.filling.capacity() * 2).min(MAX_CHUNK_ENTRIES)
            };
            let full = std::mem::replace(&mut self.filling, Vec::with_capacity(capacity));
            if !full.is_empty() {
                self.full.push(full);
            }
        }
        self.filling.push(tag);
    }

    fn is_empty(&self) -> bool {
        self.filling.is_empty() && self.full.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        self.full.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.filling.capacity() * 4
            + self
                .full
                .iter()
                .map(|chunk| chunk.capacity() * 4)
                .sum::<usize>()
    }

    /// Takes every tag out, into `into`, and frees the chunks.
    fn drain_into(&mut self, into: &mut Vec<u32>) -> usize {
        let full = std::mem::take(&mut self.full);
        let filling = std::mem::take(&mut self.filling);
        let taken = full.iter().map(Vec::len).sum::<usize>() + filling.len();
        into.reserve(taken);
        for chunk in full {
            into.extend_from_slice(&chunk);
        }
        into.extend_from_slice(&filling);
        taken
    }
}

#[derive(Debug)]
struct Level {
    buckets: Box<[Bucket]>,
    entries: usize,
}

/// One shard's wheel. Its owner (the shard table) resolves tags to slots.
#[derive(Debug)]
pub(crate) struct ExpiryWheel {
    levels: [Level; LEVELS],
    current_tick: u64,
    /// True while a bucket is being cascaded at `current_tick`, whose level-0 bucket has not
    /// fired yet: a deadline equal to `current_tick` may still go there.
    cascading: bool,
}

/// What the wheel asks of its owner for one fired or cascaded bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketWork {
    /// Remove dead slots with this tag.
    Fire,
    /// Re-schedule this tag's slots whose deadline tick is at or after `from` (those beyond
    /// `to` were parked there for being beyond the wheel's reach), and remove dead ones.
    Cascade {
        /// First tick the cascaded bucket covers.
        from: u64,
        /// One past the last tick it covers.
        to: u64,
    },
}

impl ExpiryWheel {
    pub(crate) fn new(current_tick: u64) -> ExpiryWheel {
        let level = |level: usize| Level {
            buckets: (0..=level_mask(level)).map(|_| Bucket::default()).collect(),
            entries: 0,
        };
        ExpiryWheel {
            levels: [level(0), level(1), level(2), level(3), level(4)],
            current_tick,
            cascading: false,
        }
    }

    #[cfg(test)]
    pub(crate) fn current_tick(&self) -> u64 {
        self.current_tick
    }

    pub(crate) fn entries(&self) -> usize {
        self.levels.iter().map(|level| level.entries).sum()
    }

    /// Bytes of memory held by bucket storage.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.levels
            .iter()
            .flat_map(|level| level.buckets.iter())
            .map(|bucket| bucket.heap_bytes() + std::mem::size_of::<Bucket>())
            .sum()
    }

    /// Schedules `tag` to be looked at on `deadline_tick` (or the next tick, if that has passed).
    pub(crate) fn schedule(&mut self, tag: u32, deadline_tick: u64) {
        let earliest = self.current_tick + u64::from(!self.cascading);
        let deadline = deadline_tick.max(earliest);
        // A deadline beyond the top level's reach (the clock jumped, or the wheel was not
        // advanced for years) waits in the top level's farthest bucket; when that bucket
        // cascades, the entry is looked at again and re-scheduled from there.
        let reach = level_span(LEVELS - 1) - 1;
        let deadline = deadline.min(self.current_tick + reach);
        let delta = deadline - self.current_tick;
        let level = (0..LEVELS)
            .find(|&level| delta < level_span(level))
            .expect("a clamped deadline is within the top level's reach");
        let index = ((deadline >> level_shift(level)) & level_mask(level)) as usize;
        self.levels[level].buckets[index].push(tag);
        self.levels[level].entries += 1;
    }

    /// Moves time forward towards `to_tick`, handing each due bucket's tags to `work`, until
    /// `to_tick` is reached or about `budget` tags were handed out. Returns whether `to_tick` was
    /// reached (a bucket is always finished whole, so a slice may run over `budget`).
    pub(crate) fn advance(
        &mut self,
        to_tick: u64,
        budget: usize,
        mut work: impl FnMut(&mut ExpiryWheel, u32, BucketWork),
    ) -> bool {
        let mut handed = 0;
        while self.current_tick < to_tick {
            if handed >= budget {
                return false;
            }
            if self.entries() == 0 {
                self.current_tick = to_tick;
                break;
            }
            // Skip stretches where the low levels are empty: jump to the tick before the next
            // boundary of the lowest non-empty level, so its bucket cascades next.
            let lowest = (0..LEVELS)
                .find(|&l| self.levels[l].entries > 0)
                .unwrap_or(0);
            if lowest > 0 {
                let boundary_mask = (1u64 << level_shift(lowest)) - 1;
                let before_boundary = self.current_tick | boundary_mask;
                if before_boundary > self.current_tick {
                    self.current_tick = before_boundary.min(to_tick);
                    continue;
                }
            }
            self.current_tick += 1;
            let tick = self.current_tick;
            for level in (1..LEVELS).rev() {
                if tick & ((1u64 << level_shift(level)) - 1) != 0 {
                    continue;
                }
                let index = ((tick >> level_shift(level)) & level_mask(level)) as usize;
                let span = 1u64 << level_shift(level);
                let cascade = BucketWork::Cascade {
                    from: tick,
                    to: tick + span,
                };
                handed += self.drain(level, index, cascade, &mut work);
            }
            let index = (tick & level_mask(0)) as usize;
            handed += self.drain(0, index, BucketWork::Fire, &mut work);
        }
        true
    }

    fn drain(
        &mut self,
        level: usize,
        index: usize,
        kind: BucketWork,
        work: &mut impl FnMut(&mut ExpiryWheel, u32, BucketWork),
    ) -> usize {
        if self.levels[level].buckets[index].is_empty() {
            return 0;
        }
        let mut tags = Vec::new();
        let taken = self.levels[level].buckets[index].drain_into(&mut tags);
        self.levels[level].entries -= taken;
        tags.sort_unstable();
        tags.dedup();
        self.cascading = matches!(kind, BucketWork::Cascade { .. });
        for &tag in &tags {
            work(self, tag, kind);
        }
        self.cascading = false;
        tags.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Drives a wheel against a model of tag → deadline: every tag is handed out (fired) exactly at
    /// its deadline tick, never earlier, across all levels and with skipping.
    #[test]
    fn every_deadline_fires_on_its_tick() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let start = 1_000_000u64;
        let mut wheel = ExpiryWheel::new(start);
        let mut deadlines: BTreeMap<u32, u64> = BTreeMap::new();
        for tag in 0..5_000u32 {
            let delta = match tag % 5 {
                0 => rng.gen_range(1..300),
                1 => rng.gen_range(1..20_000),
                2 => rng.gen_range(1..2_000_000),
                3 => rng.gen_range(1..100_000_000),
                _ => rng.gen_range(1..3_000_000_000),
            };
            deadlines.insert(tag, start + delta);
            wheel.schedule(tag, start + delta);
        }
        let mut fired: BTreeMap<u32, u64> = BTreeMap::new();
        let mut now = start;
        while !deadlines.is_empty() && now < start + 4_000_000_000 {
            now += rng.gen_range(1..20_000_000);
            wheel.advance(now, usize::MAX, |wheel, tag, work| {
                let deadline = deadlines[&tag];
                match work {
                    BucketWork::Fire => {
                        assert_eq!(deadline, wheel.current_tick(), "tag {tag} fired off its tick");
                        fired.insert(tag, wheel.current_tick());
                    }
                    BucketWork::Cascade { from, to } => {
                        assert!(
                            (from..to).contains(&deadline),
                            "tag {tag} (deadline {deadline}) cascaded from a bucket for {from}..{to}"
                        );
                        wheel.schedule(tag, deadline);
                    }
                }
            });
            deadlines.retain(|tag, _| !fired.contains_key(tag));
        }
        assert!(
            deadlines.is_empty(),
            "{} deadlines never fired",
            deadlines.len()
        );
        assert_eq!(wheel.entries(), 0);
    }

    #[test]
    fn advance_respects_the_budget_and_resumes() {
        let mut wheel = ExpiryWheel::new(0);
        for tag in 0..1000 {
            wheel.schedule(tag, 1 + u64::from(tag % 10));
        }
        let mut seen = 0;
        let mut slices = 0;
        while !wheel.advance(10, 150, |_, _, _| seen += 1) {
            slices += 1;
        }
        assert_eq!(seen, 1000);
        assert!(slices >= 4, "work was cut into slices");
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut wheel = ExpiryWheel::new(100);
        wheel.schedule(7, 3);
        let mut fired = vec![];
        wheel.advance(101, usize::MAX, |wheel, tag, _| {
            fired.push((tag, wheel.current_tick()))
        });
        assert_eq!(fired, vec![(7, 101)]);
    }
}
