//! One shard's table: open addressing with linear probing over 12-byte packed slots.
//!
//! A slot holds a 24-bit tag (hash bits), the entry's deadline rounded *up* to whole seconds, and
//! the record's log location packed into 40 bits (see `packed`: a per-shard number for the 16 MiB
//! log window, and the offset in it). Keys and values live in the log, not here. Callers see an
//! entry as a [`Slot`], the unpacked view.
//!
//! The capacity is a power of two and doubles when the load passes 3/4, so an entry is moved
//! about once over the table's growth (a denser table that grew by 5/4 moved each entry about
//! four times, and cost the hot path more than the memory it saved). The slots are 12 bytes
//! instead of 16, and the expiry wheel keeps a bit per block of slots instead of an entry per
//! key (see `wheel`): 18-20 bytes per key at 10 M keys where 16-byte slots and 4-byte wheel
//! entries took 32.
//!
//! Invariants:
//! - A slot is empty iff its packed word is 0 (no record lives at offset 0 of a segment, and
//!   window number 0 is never used).
//! - Every occupied slot is reachable from its home (`tag & mask`) without crossing an empty
//!   slot; removal uses backward-shift deletion, so there are no tombstones (and an entry never
//!   changes its home block by moving, which the wheel relies on).
//! - A tag match is only a candidate: the caller compares the full key from the log.
//! - A key has at most one entry that is not dead by its slot: a put for a key whose record
//!   expired while its rounded-up slot deadline has not passed replaces that entry (the probe
//!   offers its slot; `put_new` finds it again by location). Two such entries would both be
//!   checkpointed, and a reopen would hold the stale one as well: more entries than a full
//!   replay, and one that would answer for the key if a later process's clock stood earlier.
//! - `len` counts occupied slots and stays at most 3/4 of the capacity.
//! - Every occupied slot holds one reference on its log window in `windows` (see `packed`).
//! - Past 2^24 slots in one shard (about 12 M keys), homes stop spreading over the upper slots
//!   (tags are 24 bits): still correct, with longer runs (raise [`crate::Config::shard_count`]
//!   for stores that large).

use super::late::LateMemory;
use super::packed::{Packed, PendingRefs, Windows, TAG_MASK};
use super::wheel::{BucketWork, ExpiryWheel, WheelTally, BLOCK_BITS, BLOCK_SLOTS};
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
    /// No entry (location 0).
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
// `repr(C)`, in this order: an insert writes `len`, `writes`, `insert_fence`, `pending` and
// `counters.first`, which share the cache line of the shard's lock (the table follows the lock's
// byte in its `Mutex`; see the test `an_insert_writes_only_the_lock_s_cache_line_of_the_shard`),
// so that with several threads an insert moves as few of the shard's lines between cores as it
// can: the slot's, and this one. (`slots`, read by every call but written only by a relayout,
// comes after them.)
#[repr(C)]
pub(crate) struct ShardTable {
    len: usize,
    /// Counts every write of an entry into a slot (a put, a re-insert by a rebuild, a
    /// relocation). Only such a write can give a key an entry, so a key found without a live
    /// entry under one count still has none under the same count, at the same time or later.
    writes: u64,
    /// Where the latest single-key insert of the shard ends in the log: the next goes at or
    /// after it (see [`crate::log::Log::append_fenced`]). 0: none yet in this process.
    pub(crate) insert_fence: Location,
    /// What inserts counted here instead of in `windows` and `wheel`, whose counts sit on
    /// lines of their own (see `packed` and `wheel`).
    pending: PendingCounts,
    /// What the calls on this shard's keys decided (written under the shard lock: no atomics).
    pub(crate) counters: ShardCounters,
    /// Read by every call, written only when the table is laid out anew: after the fields
    /// an insert writes.
    slots: Box<[Packed]>,
    tick_millis: u64,
    /// Recently expired tags (see `late`); `None` unless a grace period is configured.
    late: Option<Box<LateMemory>>,
    wheel: ExpiryWheel,
    /// The log windows the slots' locations are packed against.
    windows: Windows,
    /// What the shard changed since the latest checkpoint's snapshot of it, for the next delta
    /// checkpoint: the entries it dropped of those the chain holds, and those it put since.
    pub(crate) changes: CheckpointChanges,
    /// Locations of entries dropped from the table (removed, reaped, overwritten, shed), for
    /// the owner to release in the log's per-segment live counts. Drained by the owner.
    pub(crate) released: Vec<Location>,
    /// Where the latest removal of a key of this shard ends in the log (0: none yet). A `Sync`
    /// answer of "absent" waits until this is durable: it may rest on that removal.
    pub(crate) last_removal_end: Location,
    /// The table never shrinks below this many slots (a power of two; [`MIN_CAPACITY`] unless
    /// [`ShardTable::presize`] set it).
    floor_capacity: usize,
    /// How many times the table was laid out anew (grown, shrunk or cleaned of dead entries):
    /// what sizing ahead of a replay saves, for its tests.
    pub(crate) relayouts: u64,
}

const MIN_CAPACITY: usize = 64;

/// Counts an insert adds to, kept with the shard's lock (see [`ShardTable`]).
#[derive(Debug, Default)]
struct PendingCounts {
    refs: PendingRefs,
    schedules: WheelTally,
}

/// What a shard changed since the latest checkpoint's snapshot of it (full or delta), for the
/// next delta checkpoint (see [`ShardTable::changes`] and `checkpoint`). Tracked only while
/// `below` is not 0: deltas are on and the chain in memory holds.
///
/// Invariants, while `below` is not 0:
/// - `removed` lists every location below `below` that left the table since `below` was set (a
///   location leaves once: records are never put back at an old location).
/// - `added` lists every entry put into the table (or moved there by compaction) at a location
///   from `below` on since `below` was set, and `gone` every location from `below` on that left
///   the table since. The table's entries from `below` on are exactly `added` less `gone`, so a
///   delta is written from these lists without a scan of the table (the scan read every slot:
///   about 200 MB at 10 M keys, for every 32 MiB of log).
/// - Past a bound (`removed` and `added` each at twice the table's entries, at least 2 Ki) the
///   lists are given up (`overflowed`, `below` 0): the next checkpoint must then be a full one,
///   whose scan of the table starts them again.
#[derive(Debug, Default)]
pub(crate) struct CheckpointChanges {
    below: Location,
    removed: Vec<Location>,
    added: Vec<Slot>,
    gone: Vec<Location>,
    overflowed: bool,
}

impl CheckpointChanges {
    fn bound(entries: usize) -> usize {
        2 * entries.max(1024)
    }

    fn left(&mut self, location: Location, entries: usize) {
        if self.below == 0 {
            return;
        }
        if location < self.below {
            if self.removed.len() >= Self::bound(entries) {
                return self.give_up();
            }
            self.removed.push(location);
        } else {
            // At most one per entry of `added`: bounded by it.
            self.gone.push(location);
        }
    }

    fn put(&mut self, slot: Slot, entries: usize) {
        if self.below == 0 {
            return;
        }
        if self.added.len() >= Self::bound(entries) {
            return self.give_up();
        }
        self.added.push(slot);
    }

    fn give_up(&mut self) {
        *self = CheckpointChanges {
            overflowed: true,
            ..CheckpointChanges::default()
        };
    }

    /// Starts tracking from a snapshot of everything below `below` (0: stops tracking), with
    /// `later` the table's entries from `below` on (those the snapshot left out: a full
    /// checkpoint's scan finds them, a load has none yet).
    pub(crate) fn start(&mut self, below: Location, later: &[Slot]) {
        *self = CheckpointChanges {
            below,
            added: if below == 0 {
                Vec::new()
            } else {
                later.to_vec()
            },
            ..CheckpointChanges::default()
        };
    }

    /// A delta's snapshot at `to` (its replay start): puts into `live` the entries put from
    /// `below` on, below `to`, still in the table and not dead at `now_millis`, in location
    /// order; returns the locations below `below` that left the table, and tracks on from `to`
    /// (what was put or left from `to` on stays listed). `None`: the lists were given up, or
    /// were never started; a full checkpoint is needed.
    pub(crate) fn take_delta(
        &mut self,
        to: Location,
        now_millis: u64,
        live: &mut Vec<Slot>,
    ) -> Option<Vec<Location>> {
        if std::mem::take(&mut self.overflowed) || self.below == 0 {
            return None;
        }
        // Puts come in log order (each shard's appends and puts share its lock); compaction's
        // and a batch's may interleave differently, so the order is checked, not assumed.
        if !self.added.is_sorted_by_key(|slot| slot.location) {
            self.added.sort_unstable_by_key(|slot| slot.location);
        }
        self.gone.sort_unstable();
        let taken = self.added.partition_point(|slot| slot.location < to);
        let gone = self.gone.partition_point(|&location| location < to);
        let mut next_gone = 0;
        for slot in &self.added[..taken] {
            debug_assert!(
                slot.location >= self.below,
                "an entry put below the snapshot"
            );
            while next_gone < gone && self.gone[next_gone] < slot.location {
                next_gone += 1;
            }
            if next_gone < gone && self.gone[next_gone] == slot.location {
                continue;
            }
            if !slot.is_dead(now_millis) {
                live.push(*slot);
            }
        }
        self.added.drain(..taken);
        self.gone.drain(..gone);
        self.below = to;
        Some(std::mem::take(&mut self.removed))
    }
}

/// How many wheel entries' worth of work (the maintenance slice's unit) a fired block counts
/// for: a block scan reads 128 slots in order, about the cost of 16 random probes.
const BLOCK_COST: usize = 16;

/// The fewest slots that hold `entries` under the load limit (at most 3/4 full).
fn slots_holding(entries: usize) -> usize {
    (entries * 4).div_ceil(3) + 1
}

fn empty_slots(capacity: usize) -> Box<[Packed]> {
    vec![Packed::EMPTY; capacity].into_boxed_slice()
}

impl ShardTable {
    pub(crate) fn new(tick_millis: u64, now_millis: u64) -> ShardTable {
        ShardTable {
            slots: empty_slots(MIN_CAPACITY),
            len: 0,
            pending: PendingCounts::default(),
            windows: Windows::new(),
            wheel: ExpiryWheel::new(now_millis / tick_millis),
            tick_millis,
            released: Vec::new(),
            changes: CheckpointChanges::default(),
            last_removal_end: 0,
            counters: ShardCounters::default(),
            late: None,
            floor_capacity: MIN_CAPACITY,
            relayouts: 0,
            writes: 0,
            insert_fence: 0,
        }
    }

    /// Lays the table out for `entries` entries under the load limit and keeps it at least
    /// that large from now on (a rebuild that drops dead entries does not shrink it below).
    pub(crate) fn presize(&mut self, entries: usize, now_millis: u64) {
        // The capacity a table that grew entry by entry reaches for them: past 3/4 it doubles.
        let capacity = slots_holding(entries).next_power_of_two().max(MIN_CAPACITY);
        self.floor_capacity = capacity;
        if capacity > self.slots.len() {
            self.rebuild_to(capacity, now_millis);
        }
    }

    /// Empties the table and its wheel, keeping its floor ([`ShardTable::presize`]): a
    /// checkpoint found bad while it was being installed leaves nothing behind.
    pub(crate) fn clear(&mut self, now_millis: u64) {
        let floor = self.floor_capacity;
        *self = ShardTable::new(self.tick_millis, now_millis);
        self.floor_capacity = floor;
        self.slots = empty_slots(floor);
    }

    /// Turns on the late-duplicate memory: `grace_millis` (0: off), `capacity` keys per epoch.
    pub(crate) fn remember_expired(&mut self, grace_millis: u64, capacity: usize) {
        self.late = (grace_millis > 0).then(|| Box::new(LateMemory::new(grace_millis, capacity)));
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The home slot of a (24-bit) tag.
    #[inline]
    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask()
    }

    /// Blocks of the table (a power of two; one for a table smaller than a block).
    #[inline]
    fn blocks(&self) -> usize {
        (self.slots.len() >> BLOCK_BITS).max(1)
    }

    /// The block of a (24-bit) tag's home slot.
    #[inline]
    fn home_block(&self, tag: u32) -> usize {
        self.home(tag) >> BLOCK_BITS
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
        let mask = self.mask();
        let mut index = self.home(tag);
        loop {
            let slot = self.slots[index];
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
            index = (index + 1) & mask;
        }
        memory.contains(tag, now_millis)
    }

    /// Notes that the entry at `location` left the table: for the log's live counts, and for the
    /// next delta checkpoint if the latest checkpoint holds it.
    #[inline]
    fn release(&mut self, location: Location) {
        self.released.push(location);
        self.changes.left(location, self.len);
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
        super::wheel::deadline_tick(deadline_secs, self.tick_millis)
    }

    /// Schedules the expiry of a stored slot.
    #[inline]
    fn schedule(&mut self, slot: Packed) {
        let (block, blocks) = (self.home_block(slot.tag()), self.blocks());
        self.wheel.schedule_secs_tallied(
            &mut self.pending.schedules,
            block,
            blocks,
            slot.deadline_secs(),
            self.tick_millis,
        );
    }

    /// Expiry schedules waiting in the wheel (stale ones included).
    pub(crate) fn wheel_entries(&self) -> usize {
        self.wheel.entries(&self.pending.schedules)
    }

    /// Bytes of memory held by the slots, the window numbers and the wheel.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Packed>()
            + self.windows.heap_bytes()
            + self.wheel.heap_bytes()
            + self.late.as_ref().map_or(0, |memory| memory.heap_bytes())
    }

    /// The count of entry writes so far (see the field `writes`): a transaction compares it
    /// at commit with the count under which it found its keys vacant.
    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slot(&self, index: usize) -> Slot {
        self.view(self.slots[index])
    }

    /// Finds the live entry for a key with this `tag`, asking `check` to compare the full key of
    /// each candidate's record. Dead entries are never read.
    ///
    /// A vacant key's slot is its own expired entry if it has one (its record's deadline passed,
    /// its slot's rounded-up one not yet), else the first dead or empty slot of its run: a put
    /// there replaces the expired entry instead of leaving it beside the new one, so a key never
    /// has two entries (see the module invariants).
    pub(crate) fn probe<E>(
        &self,
        tag: u32,
        now_millis: u64,
        mut check: impl FnMut(&Slot) -> Result<KeyCheck, E>,
    ) -> Result<Probe, E> {
        let tag = tag & TAG_MASK;
        let mask = self.mask();
        let mut index = self.home(tag);
        let mut reusable = None;
        for _ in 0..self.slots.len() {
            let slot = self.slots[index];
            if slot.is_empty() {
                return Ok(Probe::Vacant(reusable.unwrap_or(index)));
            }
            if slot.is_dead(now_millis) {
                reusable.get_or_insert(index);
            } else if slot.tag() == tag {
                match check(&self.view(slot))? {
                    KeyCheck::Live => return Ok(Probe::Found(index)),
                    KeyCheck::Expired => reusable = Some(index),
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
        let packed = self.store(index, slot, now_millis);
        self.schedule(packed);
    }

    /// [`ShardTable::put`] without the expiry wheel's entry: replay puts entries this way and
    /// schedules the survivors once at the end ([`ShardTable::schedule_all`]).
    pub(crate) fn put_unscheduled(&mut self, index: usize, slot: Slot, now_millis: u64) {
        self.store(index, slot, now_millis);
    }

    /// Puts `slot` at `index`; returns it as stored.
    #[inline]
    fn store(&mut self, index: usize, slot: Slot, now_millis: u64) -> Packed {
        debug_assert!(!slot.is_empty());
        let packed = self.windows.pack(
            &mut self.pending.refs,
            slot.tag,
            slot.expires_at_secs,
            slot.location,
        );
        let previous = self.slots[index];
        if previous.is_empty() {
            self.len += 1;
        } else {
            if previous.is_dead(now_millis) {
                self.expired(previous, now_millis);
            }
            self.release(self.windows.location(previous));
            self.windows.release(&mut self.pending.refs, previous);
        }
        self.slots[index] = packed;
        self.writes += 1;
        self.changes.put(slot, self.len);
        if self.len * 4 > self.slots.len() * 3 {
            self.rebuild(now_millis);
        }
        packed
    }

    /// Puts `slot` for a key known to have no live entry (decided under this shard's lock by an
    /// earlier probe), with no key comparisons: over the key's expired entry at `replacing` (see
    /// [`ShardTable::expired_entry_at`]) if it is still in the table, else at the first empty or
    /// dead slot of its run. Slots may have moved since the probe (other puts, a rebuild), so
    /// the expired entry is found again by its location, which no other entry has.
    pub(crate) fn put_new(&mut self, slot: Slot, replacing: Option<Location>, now_millis: u64) {
        let tag = slot.tag & TAG_MASK;
        let mask = self.mask();
        let mut index = self.home(tag);
        let mut free = None;
        loop {
            let current = self.slots[index];
            if current.is_empty() {
                break;
            }
            if replacing.is_some_and(|stale| {
                current.tag() == tag && self.windows.location(current) == stale
            }) {
                free = Some(index);
                break;
            }
            if free.is_none() && current.is_dead(now_millis) {
                free = Some(index);
                if replacing.is_none() {
                    break;
                }
            }
            index = (index + 1) & mask;
        }
        self.put(free.unwrap_or(index), slot, now_millis);
    }

    /// [`ShardTable::put_new`] given the slot a probe found vacant for the key (`vacancy`) while
    /// the table had the layout numbered `layout` (its `relayouts`): put there without probing
    /// again if it still is the key's slot, else probed for anew. It still is if the table was
    /// not laid out anew since (no entry moved) and the slot still holds what the probe saw
    /// there: the key's own expired entry (`replacing`), or an empty or dead slot. Puts since
    /// only filled empty or dead slots, so the live entries before it in its run are all still
    /// there and it is still the first slot a put may take.
    pub(crate) fn put_new_at(
        &mut self,
        vacancy: usize,
        layout: u64,
        slot: Slot,
        replacing: Option<Location>,
        now_millis: u64,
    ) {
        if layout == self.relayouts {
            let current = self.slots[vacancy];
            let still_vacant = match replacing {
                Some(stale) => {
                    !current.is_empty()
                        && current.tag() == slot.tag & TAG_MASK
                        && self.windows.location(current) == stale
                }
                None => current.is_empty() || current.is_dead(now_millis),
            };
            if still_vacant {
                self.put(vacancy, slot, now_millis);
                return;
            }
        }
        self.put_new(slot, replacing, now_millis);
    }

    /// The location of the entry at `index`, where a probe found its key vacant, if that entry
    /// is the key's own expired one (occupied and not dead by its slot: a probe offers such a
    /// slot only for the key's own entry whose record expired): what [`ShardTable::put_new`]
    /// must replace. `None` for an empty or dead slot.
    pub(crate) fn expired_entry_at(&self, index: usize, now_millis: u64) -> Option<Location> {
        let slot = self.slots[index];
        (!slot.is_empty() && !slot.is_dead(now_millis)).then(|| self.windows.location(slot))
    }

    /// Asks the CPU to start loading the home slot of `tag` and the line after it, so that a
    /// probe of them a little later finds them in cache (the batch pipeline issues this several
    /// keys ahead). The second line because a vacant key's probe, 3-4 slots of 12 bytes on
    /// average, crosses into it more often than not: prefetching it cut the batch's probing
    /// from 56-63 to 48-58 ns per key at 2 M keys (a third line gained nothing).
    #[inline]
    pub(crate) fn prefetch(&self, tag: u32) {
        let home: *const Packed = &self.slots[self.home(tag & TAG_MASK)];
        crate::hint::prefetch_read(home);
        // Past the table's end for its last slots: harmless, a prefetch never faults.
        crate::hint::prefetch_read(home.cast::<u8>().wrapping_add(64));
    }

    /// Asks the CPU to fetch slot `index` for writing it (a put into a vacancy found earlier).
    #[inline]
    pub(crate) fn prefetch_slot_for_write(&self, index: usize) {
        crate::hint::prefetch_write(&self.slots[index & self.mask()]);
    }

    /// Removes the entry that points at `location`, if one does (whether live or dead): before
    /// its segment goes, compaction drops the entries of records it did not copy.
    pub(crate) fn forget_location(&mut self, tag: u32, location: Location) -> bool {
        let mask = self.mask();
        let mut index = self.home(tag & TAG_MASK);
        loop {
            let slot = self.slots[index];
            if slot.is_empty() {
                return false;
            }
            if self.windows.location(slot) == location {
                self.remove(index);
                return true;
            }
            index = (index + 1) & mask;
        }
    }

    /// Points the entry at `index` to a copy of its record at `location` (compaction); the
    /// deadline is unchanged, so the wheel needs no new entry.
    pub(crate) fn relocate(&mut self, index: usize, location: Location) {
        let slot = self.slots[index];
        assert!(!slot.is_empty(), "relocating an empty slot");
        self.release(self.windows.location(slot));
        self.slots[index] = self.windows.repack(&mut self.pending.refs, slot, location);
        self.writes += 1;
        let moved = Slot {
            tag: slot.tag(),
            expires_at_secs: slot.deadline_secs(),
            location,
        };
        self.changes.put(moved, self.len);
    }

    /// Fires the expiry wheel up to `now_millis`, removing dead entries, in a slice of about
    /// `budget` wheel entries' worth of work. Returns whether the wheel caught up and how many
    /// entries it removed.
    pub(crate) fn reap(&mut self, now_millis: u64, budget: usize) -> (bool, usize) {
        let to_tick = now_millis / self.tick_millis;
        let blocks = self.blocks();
        // Out of the table while it advances (the sweeps borrow the table); the placeholder
        // left behind allocates nothing: a full wheel built and dropped here, per shard per
        // round, cost more than the round's reaping.
        let mut wheel = std::mem::replace(&mut self.wheel, ExpiryWheel::placeholder());
        let mut removed = 0;
        let budget = budget.div_ceil(BLOCK_COST);
        let pending = std::mem::take(&mut self.pending.schedules);
        let done = wheel.advance(pending, to_tick, budget, blocks, |wheel, block, work| {
            removed += self.sweep_block(wheel, block, work, now_millis);
        });
        self.wheel = wheel;
        (done, removed)
    }

    /// Handles one fired or cascaded block: removes the dead entries from its first slot to
    /// the end of the run that crosses its last (entries homed in the block may sit past it);
    /// on a cascade also re-schedules the block's entries due within the cascaded range.
    fn sweep_block(
        &mut self,
        wheel: &mut ExpiryWheel,
        block: usize,
        work: BucketWork,
        now_millis: u64,
    ) -> usize {
        let mask = self.mask();
        let blocks = self.blocks();
        let start = block << BLOCK_BITS;
        let end = (start + BLOCK_SLOTS).min(self.slots.len());
        let mut index = start;
        let mut removed = 0;
        loop {
            let slot = self.slots[index & mask];
            if slot.is_empty() {
                if index >= end {
                    return removed;
                }
                index += 1;
                continue;
            }
            if slot.is_dead(now_millis) {
                self.expired(slot, now_millis);
                // Backward shift may move a later entry into this slot: look at it again.
                self.remove(index & mask);
                removed += 1;
                continue;
            }
            if let BucketWork::Cascade { from, to } = work {
                let deadline_tick = self.deadline_tick(slot.deadline_secs());
                if (from..to).contains(&deadline_tick) && self.home_block(slot.tag()) == block {
                    wheel.schedule(block, blocks, deadline_tick);
                }
            }
            index += 1;
        }
    }

    /// Empties slot `index`, shifting later entries of its run back so every entry stays
    /// reachable from its home bucket.
    pub(crate) fn remove(&mut self, index: usize) {
        let removed = self.slots[index];
        assert!(!removed.is_empty(), "removing an empty slot");
        let mask = self.mask();
        let mut hole = index;
        let mut next = index;
        loop {
            next = (next + 1) & mask;
            let candidate = self.slots[next];
            if candidate.is_empty() {
                break;
            }
            let home = self.home(candidate.tag());
            let distance_from_home = next.wrapping_sub(home) & mask;
            let distance_from_hole = next.wrapping_sub(hole) & mask;
            if distance_from_home >= distance_from_hole {
                self.slots[hole] = candidate;
                hole = next;
            }
        }
        self.slots[hole] = Packed::EMPTY;
        self.len -= 1;
        self.release(self.windows.location(removed));
        self.windows.release(&mut self.pending.refs, removed);
    }

    /// Re-lays the table at a size fit for its live entries (dropping dead ones): doubles when
    /// most entries are live, stays or shrinks when many had expired.
    fn rebuild(&mut self, now_millis: u64) {
        self.rebuild_to(0, now_millis);
    }

    /// Re-lays the table with at least `min_capacity` slots, dropping dead entries. In one pass
    /// from the old array into the new one, sized as if every entry were live (homes keep their
    /// order, so the new array is written in two nearly sequential streams); when many were
    /// dead, the table is laid again at the size of what is left.
    fn rebuild_to(&mut self, min_capacity: usize, now_millis: u64) {
        self.relayouts += 1;
        let floor = self.floor_capacity;
        let capacity_for =
            |live: usize| (live * 2).max(min_capacity).next_power_of_two().max(floor);
        let old = std::mem::replace(&mut self.slots, empty_slots(capacity_for(self.len)));
        self.len = 0;
        for &slot in old.iter() {
            if slot.is_empty() {
                continue;
            }
            if slot.is_dead(now_millis) {
                self.release(self.windows.location(slot));
                self.expired(slot, now_millis);
                self.windows.release(&mut self.pending.refs, slot);
            } else {
                self.insert_unchecked(slot);
            }
        }
        drop(old);
        let fitting = capacity_for(self.len);
        if fitting < self.slots.len() {
            self.rebuild_to(fitting, now_millis);
        }
    }

    /// Makes room for `additional` more entries without a rebuild on the way.
    pub(crate) fn reserve(&mut self, additional: usize, now_millis: u64) {
        let wanted = self.len + additional;
        if wanted * 4 > self.slots.len() * 3 {
            // The smallest table that holds them under the load limit: as dense as one that
            // grew to this size entry by entry.
            self.rebuild_to(slots_holding(wanted), now_millis);
        }
    }

    /// Puts a checkpointed entry, known not to be in the table, without its expiry wheel entry
    /// (recovery schedules every entry once at the end: [`ShardTable::schedule_all`]).
    pub(crate) fn install_unscheduled(&mut self, slot: Slot, now_millis: u64) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.rebuild(now_millis);
        }
        let packed = self.windows.pack(
            &mut self.pending.refs,
            slot.tag,
            slot.expires_at_secs,
            slot.location,
        );
        self.insert_unchecked(packed);
    }

    /// Gives every occupied slot its expiry wheel entry, and shows each to `each`: the end of
    /// recovery, which put its entries unscheduled. One pass over the table in slot order, with
    /// the shard's wheel buckets hot, instead of a wheel entry (and a cache miss or two) for every
    /// record replayed, superseded ones included.
    pub(crate) fn schedule_all(&mut self, mut each: impl FnMut(&Slot)) {
        // A block's entries fall in few wheel buckets (a bucket spans more ticks the farther
        // its deadlines are): each bucket a block's entries go to is marked once, counted for
        // all of them, instead of a schedule per entry; and a deadline's bucket is looked up in
        // a small cache by its seconds, not computed (a division and a level search) per entry.
        const DISTINCT: usize = 8;
        const CACHED: usize = 64;
        let blocks = self.blocks();
        let block_slots = BLOCK_SLOTS.min(self.slots.len());
        let mut cache = [(u32::MAX, (0usize, 0usize)); CACHED];
        let mut buckets = [((0usize, 0usize), 0u32); DISTINCT];
        for block in 0..self.slots.len() / block_slots {
            let mut distinct = 0;
            for index in block * block_slots..(block + 1) * block_slots {
                let slot = self.slots[index];
                if slot.is_empty() {
                    continue;
                }
                each(&self.view(slot));
                // The home block, which may precede the slot's own (runs cross blocks).
                let home = self.home_block(slot.tag());
                let secs = slot.deadline_secs();
                let cached = &mut cache[secs as usize % CACHED];
                if cached.0 != secs {
                    *cached = (secs, self.wheel.bucket_of(self.deadline_tick(secs)));
                }
                let bucket = cached.1;
                if home != block {
                    self.wheel.schedule_in(bucket, home, blocks, 1);
                    continue;
                }
                match buckets[..distinct].iter_mut().find(|b| b.0 == bucket) {
                    Some(seen) => seen.1 += 1,
                    None if distinct < DISTINCT => {
                        buckets[distinct] = (bucket, 1);
                        distinct += 1;
                    }
                    None => self.wheel.schedule_in(bucket, block, blocks, 1),
                }
            }
            for &(bucket, count) in &buckets[..distinct] {
                self.wheel.schedule_in(bucket, block, blocks, count);
            }
        }
    }

    /// Puts a slot known not to be in the table (rebuilds): no probe, no wheel entry, no new
    /// window reference (the slot brings its own).
    fn insert_unchecked(&mut self, slot: Packed) {
        let mask = self.mask();
        let mut index = self.home(slot.tag());
        while !self.slots[index].is_empty() {
            index = (index + 1) & mask;
        }
        self.slots[index] = slot;
        self.len += 1;
        self.writes += 1;
    }

    /// Appends to `out` every entry located below `to` and not dead at `now_millis`, and to
    /// `later` those from `to` on (a full checkpoint's snapshot of the shard, and the start of
    /// what the next delta lists). One pass over the slots.
    pub(crate) fn collect_live(
        &self,
        to: Location,
        now_millis: u64,
        out: &mut Vec<Slot>,
        later: &mut Vec<Slot>,
    ) {
        for &slot in self.slots.iter() {
            if slot.is_empty() {
                continue;
            }
            let entry = self.view(slot);
            if entry.is_dead(now_millis) {
                continue;
            }
            if entry.location < to {
                out.push(entry);
            } else {
                later.push(entry);
            }
        }
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

    /// A presized table holds its expected entries without growing, and a rebuild that sheds
    /// dead entries leaves it at its floor; a table left to grow doubles its way there and
    /// shrinks back.
    #[test]
    fn a_presized_table_neither_grows_to_its_size_nor_shrinks_below_it() {
        let fill = |table: &mut ShardTable, entries: u64| -> Vec<usize> {
            let mut capacities = vec![table.capacity()];
            for key in 1..=entries {
                let tag = (key as u32).wrapping_mul(0x9e37_79b9) & TAG_MASK;
                let Probe::Vacant(index) =
                    table.probe::<()>(tag, 0, |_| Ok(KeyCheck::Other)).unwrap()
                else {
                    panic!("fresh key found")
                };
                let slot = Slot {
                    tag,
                    expires_at_secs: 10,
                    location: key,
                };
                table.put(index, slot, 0);
                if *capacities.last().unwrap() != table.capacity() {
                    capacities.push(table.capacity());
                }
            }
            capacities
        };
        let mut presized = ShardTable::new(1000, 0);
        presized.presize(1000, 0);
        assert_eq!(presized.capacity(), 2048);
        assert_eq!(
            fill(&mut presized, 1500),
            vec![2048],
            "no growth on the way"
        );
        let mut growing = ShardTable::new(1000, 0);
        assert_eq!(
            fill(&mut growing, 1500),
            vec![64, 128, 256, 512, 1024, 2048],
            "doubles its way there"
        );
        // At 10 s every entry is dead: a rebuild sheds them all.
        presized.rebuild(10_000);
        growing.rebuild(10_000);
        assert_eq!((presized.len(), growing.len()), (0, 0));
        assert_eq!(presized.capacity(), 2048, "the floor holds");
        assert_eq!(growing.capacity(), MIN_CAPACITY);
        // A larger expectation later raises the floor; a smaller one lowers it without a
        // rebuild.
        presized.presize(3000, 10_000);
        assert_eq!(presized.capacity(), 4096);
        presized.presize(10, 10_000);
        assert_eq!(presized.capacity(), 4096);
        presized.rebuild(10_000);
        assert_eq!(presized.capacity(), MIN_CAPACITY);
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

    /// A key whose record expired while its slot's rounded-up deadline has not passed gets its
    /// new entry over the expired one: the probe offers that slot even when a dead one comes
    /// first in the run, and `put_new` finds the entry again by its location after it moved, or
    /// falls back to the first dead slot once it is gone. A key never has two entries.
    #[test]
    fn a_key_s_new_entry_replaces_its_own_expired_one() {
        // Tags 5, 69 and 133 share home 5 in a 64-slot table.
        let fresh = || -> ShardTable {
            let mut table = ShardTable::new(1000, 0);
            put_at(&mut table, 5, 100, 2); // dead from 2 s on
            put_at(&mut table, 69, 200, 9); // the key: its record expired, its slot not
            table
        };
        let expired_key = |slot: &Slot| {
            Ok::<_, ()>(match slot.location {
                200 => KeyCheck::Expired,
                _ => KeyCheck::Other,
            })
        };
        let new_entry = |location| Slot {
            tag: 69,
            expires_at_secs: 99,
            location,
        };

        let mut table = fresh();
        let Probe::Vacant(index) = table.probe(69, 3_000, expired_key).unwrap() else {
            panic!("an expired key is vacant")
        };
        assert_eq!(
            index,
            index_of(&table, 200),
            "the key's own slot, not the dead one"
        );
        assert_eq!(table.expired_entry_at(index, 3_000), Some(200));
        assert_eq!(table.expired_entry_at(index_of(&table, 100), 3_000), None);
        table.put(index, new_entry(300), 3_000);
        let locations: Vec<Location> = table.occupied().map(|(_, s)| s.location).collect();
        assert_eq!(locations, vec![100, 300]);

        // Found again by location after a backward shift moved it.
        let mut table = fresh();
        table.remove(index_of(&table, 100));
        table.put_new(new_entry(300), Some(200), 3_000);
        let locations: Vec<Location> = table.occupied().map(|(_, s)| s.location).collect();
        assert_eq!(locations, vec![300]);

        // Gone since the probe (reaped, or replaced by another put): the first dead slot.
        let mut table = fresh();
        table.put_new(new_entry(300), Some(12_345), 3_000);
        let mut locations: Vec<Location> = table.occupied().map(|(_, s)| s.location).collect();
        locations.sort_unstable();
        assert_eq!(locations, vec![200, 300], "the dead entry's slot reused");
        assert_eq!(table.len(), 2);
    }

    /// Puts an entry of `tag` at `location` (deadline `secs`), as a fresh key.
    fn put_at(table: &mut ShardTable, tag: u32, location: Location, secs: u32) {
        let Probe::Vacant(index) = table.probe::<()>(tag, 0, |_| Ok(KeyCheck::Other)).unwrap()
        else {
            panic!("fresh key found")
        };
        let slot = Slot {
            tag,
            expires_at_secs: secs,
            location,
        };
        table.put(index, slot, 0);
    }

    /// The index of the entry at `location` (tags are distinct in the test below).
    fn index_of(table: &ShardTable, location: Location) -> usize {
        table
            .occupied()
            .find(|(_, slot)| slot.location == location)
            .expect("the entry is in the table")
            .0
    }

    /// A delta lists exactly the table's entries in its range: what was put since the previous
    /// snapshot (including, after a full one, what its scan found past its start), less what
    /// left; relocations count as a removal and a put; what is put past the delta's start waits
    /// for the next one; entries dead by their deadline are left out.
    #[test]
    fn a_delta_lists_the_puts_since_the_snapshot_less_what_left() {
        let mut table = ShardTable::new(1000, 0);
        let locations = |slots: &[Slot]| slots.iter().map(|s| s.location).collect::<Vec<_>>();
        for (tag, location) in [(1, 10), (2, 20), (3, 30)] {
            put_at(&mut table, tag, location, 100);
        }
        // A full checkpoint at 25: the scan splits the entries at its start.
        let (mut below, mut later) = (Vec::new(), Vec::new());
        table.collect_live(25, 0, &mut below, &mut later);
        assert_eq!(locations(&below), [10, 20]);
        assert_eq!(locations(&later), [30]);
        table.changes.start(25, &later);

        put_at(&mut table, 4, 40, 100);
        put_at(&mut table, 9, 42, 100);
        table.relocate(index_of(&table, 20), 50);
        table.remove(index_of(&table, 42));
        put_at(&mut table, 5, 45, 1); // dead at the delta's time
        put_at(&mut table, 6, 60, 100); // past the delta's start
        let mut live = Vec::new();
        let removed = table.changes.take_delta(55, 2_000, &mut live).unwrap();
        assert_eq!(locations(&live), [30, 40, 50]);
        assert_eq!(
            removed,
            [20],
            "the relocated entry's old place, held by the full one"
        );

        put_at(&mut table, 7, 70, 100);
        table.remove(index_of(&table, 40));
        live.clear();
        let removed = table.changes.take_delta(80, 2_000, &mut live).unwrap();
        assert_eq!(locations(&live), [60, 70]);
        assert_eq!(removed, [40]);

        // Without a start (deltas off, or after giving up) there is nothing to take.
        table.changes.start(0, &[]);
        put_at(&mut table, 8, 90, 100);
        assert!(table.changes.take_delta(100, 2_000, &mut live).is_none());
    }

    /// Puts an entry of a random new tag at `location`, dead within ten minutes of `now`;
    /// returns its deadline (seconds).
    fn put_random(
        table: &mut ShardTable,
        rng: &mut impl rand::Rng,
        now: u64,
        location: u64,
    ) -> u32 {
        let tag = rng.gen::<u32>() & TAG_MASK;
        let deadline = (now / 1000) as u32 + rng.gen_range(1..600);
        let Probe::Vacant(index) = table
            .probe::<()>(tag, now, |_| Ok(KeyCheck::Other))
            .unwrap()
        else {
            panic!("no key is ever found")
        };
        let slot = Slot {
            tag,
            expires_at_secs: deadline,
            location,
        };
        table.put(index, slot, now);
        deadline
    }

    /// The block wheel reaps every entry dead by the tick it reached, whatever the table did
    /// since the entry was scheduled: grew, shrank (a rebuild shedding dead entries), moved
    /// entries by backward shifts. Stale schedules never drop a live entry.
    #[test]
    fn the_block_wheel_reaps_every_dead_entry_across_growth_and_shrinking() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let mut table = ShardTable::new(1000, 0);
        let mut now = 0u64;
        let mut next_location = 1u64;
        let mut live: HashMap<u64, u32> = HashMap::new();
        let mut shrank = false;
        for round in 0..80 {
            let puts = if round % 10 == 9 {
                6_000
            } else {
                rng.gen_range(0..1_500)
            };
            for _ in 0..puts {
                let before = table.capacity();
                let deadline = put_random(&mut table, &mut rng, now, next_location);
                shrank |= table.capacity() < before;
                live.insert(next_location, deadline);
                next_location += 1;
            }
            if round == 40 {
                // Fill the table up to its load limit with entries that die unreaped, so that a
                // later put rebuilds it smaller with the live entries' schedules still in the
                // wheel, made for the larger table.
                let most: Vec<Slot> = table
                    .occupied()
                    .filter(|(index, _)| index % 10 != 0)
                    .map(|(_, slot)| slot)
                    .collect();
                for slot in most {
                    assert!(table.forget_location(slot.tag, slot.location));
                    live.remove(&slot.location);
                }
                let filler = (now / 1000) as u32 + 1;
                while (table.len() + 1) * 4 <= table.capacity() * 3 {
                    let tag = rng.gen::<u32>() & TAG_MASK;
                    table.install_unscheduled(
                        Slot {
                            tag,
                            expires_at_secs: filler,
                            location: next_location,
                        },
                        now,
                    );
                    next_location += 1;
                }
                now += 2_000;
                let before = table.capacity();
                for _ in 0..100_000 {
                    if table.capacity() < before {
                        break;
                    }
                    let deadline = put_random(&mut table, &mut rng, now, next_location);
                    live.insert(next_location, deadline);
                    next_location += 1;
                }
                assert!(table.capacity() < before, "the table shrank");
                shrank = true;
            }
            // Some live entries removed by hand (backward shifts under the wheel's schedules).
            let some: Vec<(usize, Slot)> = table.occupied().step_by(7).collect();
            for (_, slot) in some {
                assert!(table.forget_location(slot.tag, slot.location));
                live.remove(&slot.location);
            }
            now += rng.gen_range(0..90_000);
            if round % 3 != 2 {
                table.reap(now, usize::MAX);
                let reached = now / 1000;
                for (_, slot) in table.occupied() {
                    assert!(
                        u64::from(slot.expires_at_secs) > reached,
                        "round {round}: {slot:?} dead at tick {reached} but not reaped"
                    );
                }
            }
            table.released.clear();
            live.retain(|_, deadline| u64::from(*deadline) * 1000 > now);
            let held: std::collections::HashSet<u64> =
                table.occupied().map(|(_, slot)| slot.location).collect();
            for location in live.keys() {
                assert!(
                    held.contains(location),
                    "round {round}: live entry {location} lost"
                );
            }
        }
        assert!(shrank, "the test must see a table shrink");
    }

    /// What an insert writes in the shard (besides its slot) lies in the first cache line of
    /// the shard's lock and table, the one the lock's acquisition brings in: a field moved past
    /// it costs every insert one more line taken from the other core when threads share a shard.
    #[test]
    fn an_insert_writes_only_the_lock_s_cache_line_of_the_shard() {
        use std::mem::offset_of;
        let shard =
            crossbeam_utils::CachePadded::new(parking_lot::Mutex::new(ShardTable::new(1000, 0)));
        assert!(std::mem::align_of_val(&shard) >= 64);
        let start = &*shard as *const parking_lot::Mutex<ShardTable> as usize;
        let table = &*shard.lock() as *const ShardTable as usize - start;
        let ends = [
            ("len", offset_of!(ShardTable, len) + 8),
            ("writes", offset_of!(ShardTable, writes) + 8),
            ("insert_fence", offset_of!(ShardTable, insert_fence) + 8),
            (
                "pending",
                offset_of!(ShardTable, pending) + std::mem::size_of::<PendingCounts>(),
            ),
            ("counters.first", offset_of!(ShardTable, counters.first) + 8),
        ];
        for (field, end) in ends {
            assert!(
                table + end <= 64,
                "{field} ends at byte {} of the shard, past its first cache line",
                table + end
            );
        }
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
