//! A hierarchical timing wheel (Varghese & Lauck) of one shard's expiry deadlines, kept per
//! *block* of the shard table rather than per entry.
//!
//! Time is counted in ticks of the store's expiry tick (default 1 s) on the store's clock. Level 0
//! has 256 buckets of one tick; each higher level has 64 buckets, each spanning a whole turn of
//! the level below (256, 16 384, 1 048 576, 67 108 864 ticks).
//!
//! A table block is [`BLOCK_SLOTS`] consecutive slots; an entry's *home block* is the block of
//! its home slot. A bucket holds a bitmap of home blocks that have an entry due in the bucket's
//! range, and a count of the schedules it took (for [`crate::Stats::wheel_entries`]). So the
//! wheel costs a bit per block per bucket in use (about half a byte per key at 10 M keys, where
//! a 4-byte tag per key cost 4.7 bytes with the chunks' slack), and firing a block is a
//! sequential scan of its slots instead of one probe per tag. The shard table is the source of
//! truth for deadlines: firing only removes entries that are dead by their own deadline.
//!
//! Table growth: a bucket's bitmap has as many bits as the table had blocks when the bucket was
//! first used (`bits`, a power of two, as the table's block count always is), and a bit `i`
//! stands for every table block `j` with `j ≡ i (mod min(bits, blocks now))`. A block's number
//! is the tag's bits above the block bits, modulo the block count, so an entry scheduled while
//! the table had at least `bits` blocks is found again whether the table grew or shrank since.
//! A schedule made while the table has fewer blocks than the bitmap has bits first folds the
//! bitmap down to that many (an OR of its halves), which keeps that condition.
//!
//! Schedules made by inserts are counted in the owner's [`WheelTally`] while they go to one
//! bucket (with a TTL of an hour, every insert for minutes goes to the same one), and added to
//! the bucket's and level's counts when they go elsewhere or the wheel is read: the tally sits
//! on the cache line the shard writes anyway (its lock's), where the counts' own lines moved
//! between the cores of threads inserting into the shard on every insert. The bucket of the
//! latest such deadline is memoised with the tick the wheel stood at, so inserts sharing a
//! deadline's second find it without dividing the deadline into ticks and searching the levels.
//!
//! Invariants:
//! - Every occupied, non-dead slot's home block is covered by a bit of a bucket that will be
//!   reached no later than the slot's deadline tick (stale extra bits are allowed), or, for a
//!   deadline beyond the wheel's reach, by a bit of the top level's farthest bucket, which
//!   re-schedules it when it cascades.
//! - A fired block removes only slots that are *dead* (deadline passed), so a stale bit (key
//!   removed, or re-inserted with a later deadline) can never drop a live entry.
//! - `current_tick` only grows; every deadline at or before it has been fired.
//! - The memoised bucket is used only at the tick it was found at, and never while cascading:
//!   it is then exactly what `bucket_of` would compute.

/// log2 of [`BLOCK_SLOTS`].
pub(crate) const BLOCK_BITS: u32 = 7;
/// Slots in a table block: a fired block scans this many slots (1.5 KiB of 12-byte slots).
pub(crate) const BLOCK_SLOTS: usize = 1 << BLOCK_BITS;

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

/// Schedules into one bucket not yet added to its count (see the module doc). Kept by the
/// wheel's owner, handed to [`ExpiryWheel::schedule_tallied`] and [`ExpiryWheel::advance`].
/// Not `Copy`: a copy would count the same schedules twice.
#[derive(Debug, Default)]
pub(crate) struct WheelTally {
    /// The bucket: `level << 8 | index`.
    bucket: u32,
    count: u32,
}

/// One bucket: a bitmap of home blocks (see the module doc), empty until first used.
#[derive(Debug, Default)]
struct Bucket {
    bits: Box<[u64]>,
    /// Blocks the bitmap stands for (a power of two); 0 while the bucket is empty.
    blocks: u32,
    /// Schedules taken since the bucket was last drained.
    scheduled: u32,
}

impl Bucket {
    /// Marks `block` of a table of `blocks` blocks, and counts the schedule.
    #[inline]
    fn set(&mut self, block: usize, blocks: usize) {
        self.mark(block, blocks);
        self.scheduled = self.scheduled.saturating_add(1);
    }

    /// Marks `block` of a table of `blocks` blocks (no count).
    #[inline]
    fn mark(&mut self, block: usize, blocks: usize) {
        if blocks < self.blocks as usize || self.blocks == 0 {
            self.fit(blocks);
        }
        let bit = block & (self.blocks as usize - 1);
        let word = &mut self.bits[bit / 64];
        // Mostly set already (a block's keys share it): a write only when it changes keeps the
        // line shared between the cores of threads inserting into the shard.
        if *word & (1 << (bit % 64)) == 0 {
            *word |= 1 << (bit % 64);
        }
    }

    /// Gives an empty bucket a bitmap for `blocks` blocks, or folds a larger one down to them.
    #[cold]
    fn fit(&mut self, blocks: usize) {
        debug_assert!(blocks.is_power_of_two());
        let mut bits = vec![0u64; blocks.div_ceil(64)].into_boxed_slice();
        for bit in self.set_bits() {
            let bit = bit & (blocks - 1);
            bits[bit / 64] |= 1 << (bit % 64);
        }
        self.bits = bits;
        self.blocks = blocks as u32;
    }

    fn set_bits(&self) -> impl Iterator<Item = usize> + '_ {
        let len = self.blocks as usize;
        self.bits
            .iter()
            .enumerate()
            .flat_map(move |(word_index, &word)| {
                let mut word = word;
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let bit = word.trailing_zeros() as usize;
                    word &= word - 1;
                    Some(word_index * 64 + bit)
                })
                .filter(move |&bit| bit < len)
            })
    }

    fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    fn heap_bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// The table blocks (of `blocks`) this bucket covers, in order, each once.
    fn blocks_to_visit(&self, blocks: usize) -> Vec<usize> {
        let own = self.blocks as usize;
        let mut visit: Vec<usize> = if own >= blocks {
            self.set_bits().map(|bit| bit & (blocks - 1)).collect()
        } else {
            self.set_bits()
                .flat_map(|bit| (bit..blocks).step_by(own))
                .collect()
        };
        visit.sort_unstable();
        visit.dedup();
        visit
    }
}

#[derive(Debug)]
struct Level {
    buckets: Box<[Bucket]>,
    entries: usize,
}

/// One shard's wheel. Its owner (the shard table) resolves blocks to slots.
#[derive(Debug)]
pub(crate) struct ExpiryWheel {
    levels: [Level; LEVELS],
    current_tick: u64,
    /// True while a bucket is being cascaded at `current_tick`, whose level-0 bucket has not
    /// fired yet: a deadline equal to `current_tick` may still go there.
    cascading: bool,
    /// The bucket of the latest deadline scheduled by its seconds, while the wheel has not
    /// moved since (see [`ExpiryWheel::schedule_secs_tallied`]).
    memo: BucketMemo,
}

/// A deadline's bucket as found at one tick of the wheel: inserts with the same TTL share their
/// deadline's second, so the insert path finds its bucket here instead of dividing the deadline
/// into ticks and searching the levels for every entry.
#[derive(Debug, Clone, Copy)]
struct BucketMemo {
    deadline_secs: u32,
    /// The wheel's `current_tick` when the bucket was found (`u64::MAX`: nothing memoised).
    at_tick: u64,
    bucket: (usize, usize),
}

impl BucketMemo {
    const NONE: BucketMemo = BucketMemo {
        deadline_secs: 0,
        at_tick: u64::MAX,
        bucket: (0, 0),
    };
}

/// What the wheel asks of its owner for one fired or cascaded block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketWork {
    /// Remove the dead slots of this block.
    Fire,
    /// Re-schedule the block's entries whose deadline tick is in `from..to`, and remove dead
    /// ones.
    Cascade {
        /// First tick the cascaded bucket covers.
        from: u64,
        /// One past the last tick it covers; `u64::MAX` for the top level, whose farthest
        /// bucket also holds the deadlines parked beyond the wheel's reach.
        to: u64,
    },
}

/// The wheel tick on which an entry with this slot deadline (whole seconds) is dead, on a
/// wheel of `tick_millis` ticks.
#[inline]
pub(crate) fn deadline_tick(deadline_secs: u32, tick_millis: u64) -> u64 {
    (u64::from(deadline_secs) * 1000).div_ceil(tick_millis)
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
            memo: BucketMemo::NONE,
        }
    }

    /// A wheel with no buckets, which allocates nothing: what a shard holds in place of its
    /// wheel while the wheel is out advancing (`ShardTable::reap`). Every schedule into it
    /// panics (it has no bucket to index), so nothing can be put there and lost.
    pub(crate) fn placeholder() -> ExpiryWheel {
        ExpiryWheel {
            levels: std::array::from_fn(|_| Level {
                buckets: Box::default(),
                entries: 0,
            }),
            current_tick: 0,
            cascading: false,
            memo: BucketMemo::NONE,
        }
    }

    #[cfg(test)]
    pub(crate) fn current_tick(&self) -> u64 {
        self.current_tick
    }

    /// Schedules taken and not yet fired (stale ones included), `pending` the owner's tally.
    pub(crate) fn entries(&self, pending: &WheelTally) -> usize {
        self.counted_entries() + pending.count as usize
    }

    fn counted_entries(&self) -> usize {
        self.levels.iter().map(|level| level.entries).sum()
    }

    /// [`ExpiryWheel::schedule_tallied`] for a deadline in whole seconds, on a wheel of
    /// `tick_millis` ticks: its bucket is memoised while the wheel stands at the same tick.
    #[inline]
    pub(crate) fn schedule_secs_tallied(
        &mut self,
        pending: &mut WheelTally,
        block: usize,
        blocks: usize,
        deadline_secs: u32,
        tick_millis: u64,
    ) {
        let memo = self.memo;
        let bucket = if memo.deadline_secs == deadline_secs
            && memo.at_tick == self.current_tick
            && !self.cascading
        {
            memo.bucket
        } else {
            let bucket = self.bucket_of(deadline_tick(deadline_secs, tick_millis));
            if !self.cascading {
                self.memo = BucketMemo {
                    deadline_secs,
                    at_tick: self.current_tick,
                    bucket,
                };
            }
            bucket
        };
        debug_assert_eq!(
            bucket,
            self.bucket_of(deadline_tick(deadline_secs, tick_millis))
        );
        self.schedule_in_bucket_tallied(pending, block, blocks, bucket);
    }

    /// [`ExpiryWheel::schedule_secs_tallied`] for a deadline in ticks (the tests').
    #[cfg(test)]
    pub(crate) fn schedule_tallied(
        &mut self,
        pending: &mut WheelTally,
        block: usize,
        blocks: usize,
        deadline_tick: u64,
    ) {
        let bucket = self.bucket_of(deadline_tick);
        self.schedule_in_bucket_tallied(pending, block, blocks, bucket);
    }

    /// Schedules in `bucket`: the schedule is counted in `pending` while it goes to the same
    /// bucket as the one before (see the module doc).
    #[inline]
    fn schedule_in_bucket_tallied(
        &mut self,
        pending: &mut WheelTally,
        block: usize,
        blocks: usize,
        (level, index): (usize, usize),
    ) {
        self.levels[level].buckets[index].mark(block, blocks);
        debug_assert!(index < 256, "a level has at most 256 buckets");
        let bucket = (level << 8 | index) as u32;
        if pending.bucket == bucket && pending.count > 0 && pending.count < u32::MAX {
            pending.count += 1;
        } else {
            self.settle(pending);
            *pending = WheelTally { bucket, count: 1 };
        }
    }

    /// Adds the tallied schedules to their bucket's and level's counts.
    fn settle(&mut self, pending: &mut WheelTally) {
        let count = std::mem::take(&mut pending.count);
        if count > 0 {
            let (level, index) = (
                (pending.bucket >> 8) as usize,
                (pending.bucket & 0xff) as usize,
            );
            let bucket = &mut self.levels[level].buckets[index];
            bucket.scheduled = bucket.scheduled.saturating_add(count);
            self.levels[level].entries += count as usize;
        }
    }

    /// Bytes of memory held by the buckets and their bitmaps.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.levels
            .iter()
            .flat_map(|level| level.buckets.iter())
            .map(|bucket| bucket.heap_bytes() + std::mem::size_of::<Bucket>())
            .sum()
    }

    /// Schedules `block` of a table of `blocks` blocks (a power of two) to be looked at on
    /// `deadline_tick` (or the next tick, if that has passed).
    #[inline]
    pub(crate) fn schedule(&mut self, block: usize, blocks: usize, deadline_tick: u64) {
        let bucket = self.bucket_of(deadline_tick);
        self.schedule_in(bucket, block, blocks, 1);
    }

    /// The bucket (level, index) a deadline tick goes to now: [`ExpiryWheel::schedule`]'s
    /// choice, which stays the same until the wheel moves.
    #[inline]
    pub(crate) fn bucket_of(&self, deadline_tick: u64) -> (usize, usize) {
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
        (level, index)
    }

    /// Schedules `count` entries of `block` in the bucket `(level, index)` (from
    /// [`ExpiryWheel::bucket_of`], the wheel not moved since): one bit, counted `count` times
    /// (recovery schedules a table's entries block by block).
    #[inline]
    pub(crate) fn schedule_in(
        &mut self,
        (level, index): (usize, usize),
        block: usize,
        blocks: usize,
        count: u32,
    ) {
        let bucket = &mut self.levels[level].buckets[index];
        bucket.set(block, blocks);
        bucket.scheduled = bucket.scheduled.saturating_add(count - 1);
        self.levels[level].entries += count as usize;
    }

    /// Moves time forward towards `to_tick`, handing each due bucket's blocks (of a table of
    /// `blocks` blocks) to `work`, until `to_tick` is reached or about `budget` blocks were handed
    /// out. Returns whether `to_tick` was reached (a bucket is always finished whole, so a slice
    /// may run over `budget`).
    /// `pending` is the owner's tally, which the wheel takes in first: the buckets about to
    /// be drained must hold their whole counts.
    pub(crate) fn advance(
        &mut self,
        mut pending: WheelTally,
        to_tick: u64,
        budget: usize,
        blocks: usize,
        mut work: impl FnMut(&mut ExpiryWheel, usize, BucketWork),
    ) -> bool {
        self.settle(&mut pending);
        let mut handed = 0;
        while self.current_tick < to_tick {
            if handed >= budget {
                return false;
            }
            if self.counted_entries() == 0 {
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
                    to: if level == LEVELS - 1 {
                        u64::MAX
                    } else {
                        tick + span
                    },
                };
                handed += self.drain(level, index, cascade, blocks, &mut work);
            }
            let index = (tick & level_mask(0)) as usize;
            handed += self.drain(0, index, BucketWork::Fire, blocks, &mut work);
        }
        true
    }

    fn drain(
        &mut self,
        level: usize,
        index: usize,
        kind: BucketWork,
        blocks: usize,
        work: &mut impl FnMut(&mut ExpiryWheel, usize, BucketWork),
    ) -> usize {
        if self.levels[level].buckets[index].is_empty() {
            return 0;
        }
        let bucket = std::mem::take(&mut self.levels[level].buckets[index]);
        self.levels[level].entries -= bucket.scheduled as usize;
        let visit = bucket.blocks_to_visit(blocks);
        drop(bucket);
        self.cascading = matches!(kind, BucketWork::Cascade { .. });
        for &block in &visit {
            work(self, block, kind);
        }
        self.cascading = false;
        visit.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Drives a wheel against a model of entries (block, deadline), with the table's block count
    /// changing under it: every entry is seen by a fired block exactly on its deadline tick,
    /// never earlier or later, across all levels, with skipping, growth and shrinking.
    #[test]
    fn every_deadline_fires_on_its_tick_across_table_sizes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let start = 1_000_000u64;
        let mut wheel = ExpiryWheel::new(start);
        // An entry's "tag" bits above the block bits: its block is this modulo the block count.
        let mut entries: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        let sizes = [1usize, 4, 64, 1024, 16];
        let mut blocks = 64usize;
        for id in 0..5_000u32 {
            let delta = match id % 5 {
                0 => rng.gen_range(1..300),
                1 => rng.gen_range(1..20_000),
                2 => rng.gen_range(1..2_000_000),
                3 => rng.gen_range(1..100_000_000),
                _ => rng.gen_range(1..3_000_000_000),
            };
            let high: u64 = rng.gen();
            entries.insert(id, (high, start + delta));
            if id % 1000 == 999 {
                blocks = sizes[rng.gen_range(0..sizes.len())];
            }
            wheel.schedule((high % blocks as u64) as usize, blocks, start + delta);
        }
        let mut fired = 0;
        let mut now = start;
        while !entries.is_empty() && now < start + 4_000_000_000 {
            now += rng.gen_range(1..20_000_000);
            blocks = sizes[rng.gen_range(0..sizes.len())];
            let mut by_block: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
            for (&id, &(high, _)) in &entries {
                by_block
                    .entry((high % blocks as u64) as usize)
                    .or_default()
                    .push(id);
            }
            wheel.advance(
                WheelTally::default(),
                now,
                usize::MAX,
                blocks,
                |wheel, block, work| {
                    let tick = wheel.current_tick();
                    for &id in by_block.get(&block).into_iter().flatten() {
                        let Some(&(_, deadline)) = entries.get(&id) else {
                            continue; // fired earlier in this advance
                        };
                        match work {
                            BucketWork::Fire => {
                                assert!(
                                    deadline >= tick,
                                    "entry {id} (deadline {deadline}) missed"
                                );
                                if deadline == tick {
                                    entries.remove(&id);
                                    fired += 1;
                                }
                            }
                            BucketWork::Cascade { from, to } => {
                                if (from..to).contains(&deadline) {
                                    wheel.schedule(block, blocks, deadline);
                                }
                            }
                        }
                    }
                },
            );
        }
        assert!(
            entries.is_empty(),
            "{} deadlines never fired",
            entries.len()
        );
        assert_eq!(fired, 5_000);
    }

    #[test]
    fn the_placeholder_holds_nothing_and_refuses_schedules() {
        let placeholder = ExpiryWheel::placeholder();
        assert!(placeholder
            .levels
            .iter()
            .all(|level| level.buckets.is_empty()));
        assert_eq!(placeholder.counted_entries(), 0);
        let refused = std::panic::catch_unwind(|| {
            let mut placeholder = ExpiryWheel::placeholder();
            placeholder.schedule(0, 1024, 5);
        });
        assert!(
            refused.is_err(),
            "a schedule into the placeholder would be lost"
        );
    }

    #[test]
    fn advance_respects_the_budget_and_resumes() {
        let mut wheel = ExpiryWheel::new(0);
        for block in 0..1000 {
            wheel.schedule(block, 1024, 1 + (block % 10) as u64);
        }
        let mut seen = 0;
        let mut slices = 0;
        while !wheel.advance(WheelTally::default(), 10, 150, 1024, |_, _, _| seen += 1) {
            slices += 1;
        }
        assert_eq!(seen, 1000);
        assert!(slices >= 4, "work was cut into slices");
        assert_eq!(wheel.entries(&WheelTally::default()), 0);
    }

    /// Inserts' schedules wait in the tally while they go to one bucket: the counts include
    /// them, and an advance takes them in before it drains, so that when everything has fired
    /// the wheel counts nothing (a tally dropped or counted twice leaves a count behind: the
    /// wheel would never again skip an idle stretch).
    #[test]
    fn tallied_schedules_are_counted_once_and_fire() {
        let mut wheel = ExpiryWheel::new(0);
        let mut pending = WheelTally::default();
        let mut scheduled = 0;
        for round in 0..3u64 {
            for block in 0..600 {
                // Runs to one bucket, broken by others now and then.
                let deadline = if block % 97 == 0 {
                    5 + round
                } else {
                    3_000 + round * 300
                };
                wheel.schedule_tallied(&mut pending, block % 64, 64, deadline);
                scheduled += 1;
                assert_eq!(wheel.entries(&pending), scheduled);
            }
        }
        assert!(pending.count > 0, "the last run is still tallied");
        let mut fired = 0;
        assert!(
            wheel.advance(pending, 10_000, usize::MAX, 64, |_, _, work| {
                if work == BucketWork::Fire {
                    fired += 1;
                }
            })
        );
        assert!(fired > 0);
        assert_eq!(wheel.entries(&WheelTally::default()), 0);

        // Every schedule still in the tally: the wheel's own counts say nothing is due.
        let mut pending = WheelTally::default();
        for block in 0..64 {
            wheel.schedule_tallied(&mut pending, block, 64, 20_000);
        }
        assert_eq!(wheel.entries(&pending), 64);
        let mut fired = Vec::new();
        wheel.advance(
            pending,
            30_000,
            usize::MAX,
            64,
            |wheel, block, work| match work {
                BucketWork::Fire => fired.push((block, wheel.current_tick())),
                BucketWork::Cascade { from, to } => {
                    if (from..to).contains(&20_000) {
                        wheel.schedule(block, 64, 20_000);
                    }
                }
            },
        );
        assert_eq!(fired.len(), 64, "each block fired once, on its deadline");
        assert!(fired.iter().all(|&(_, tick)| tick == 20_000));
        assert_eq!(wheel.entries(&WheelTally::default()), 0);
    }

    /// The insert path's memoised bucket is only reused while the wheel stands still: the same
    /// deadline scheduled before and after the wheel moved on (from a far level into a near one)
    /// fires on its tick both times.
    #[test]
    fn a_memoised_bucket_is_not_reused_once_the_wheel_moved() {
        // Ticks of a second, so a deadline's seconds are its tick.
        for (deadline, moved_to) in [(1_000u64, 900u64), (70_000, 65_600), (300, 299)] {
            let mut wheel = ExpiryWheel::new(0);
            let mut pending = WheelTally::default();
            let secs = deadline as u32;
            wheel.schedule_secs_tallied(&mut pending, 1, 64, secs, 1000);
            let mut fired = Vec::new();
            let mut drive = |wheel: &mut ExpiryWheel, pending: WheelTally, to: u64| {
                wheel.advance(
                    pending,
                    to,
                    usize::MAX,
                    64,
                    |wheel, block, work| match work {
                        BucketWork::Fire => fired.push((block, wheel.current_tick())),
                        BucketWork::Cascade { from, to } => {
                            if (from..to).contains(&deadline) {
                                wheel.schedule(block, 64, deadline);
                            }
                        }
                    },
                );
            };
            drive(&mut wheel, pending, moved_to);
            let mut pending = WheelTally::default();
            wheel.schedule_secs_tallied(&mut pending, 2, 64, secs, 1000);
            drive(&mut wheel, pending, deadline + 100_000);
            fired.sort_unstable();
            assert_eq!(
                fired,
                vec![(1, deadline), (2, deadline)],
                "deadline {deadline}, the wheel moved to {moved_to}"
            );
        }
    }

    #[test]
    fn past_deadlines_fire_on_the_next_tick() {
        let mut wheel = ExpiryWheel::new(100);
        wheel.schedule(7, 8, 3);
        let mut fired = vec![];
        wheel.advance(
            WheelTally::default(),
            101,
            usize::MAX,
            8,
            |wheel, block, _| fired.push((block, wheel.current_tick())),
        );
        assert_eq!(fired, vec![(7, 101)]);
    }

    /// A bucket first used by a large table and then by a small one folds its bitmap: both
    /// entries' blocks are visited in a table of either size.
    #[test]
    fn bitmaps_fold_and_spread_with_the_table() {
        let mut bucket = Bucket::default();
        bucket.set(37, 64);
        bucket.set(2, 4);
        assert_eq!(bucket.blocks, 4);
        assert_eq!(bucket.blocks_to_visit(4), vec![1, 2]);
        assert_eq!(bucket.blocks_to_visit(16), vec![1, 2, 5, 6, 9, 10, 13, 14]);
        assert_eq!(bucket.blocks_to_visit(1), vec![0]);
        assert_eq!(bucket.scheduled, 2);
    }
}
