//! [`crate::Store::check_or_insert_batch`] as a pipeline: every shard the batch touches is locked
//! once, each key's index slot is prefetched several keys ahead of its probe, and the new records
//! go into the log as one reserved piece (`Log::append_many`).
//!
//! Phases, all under the batch's shard locks (taken in ascending order; no other path holds two):
//! 1. Probe every key in order, prefetching ahead (a key's home line and the next): a live
//!    record answers `Duplicate` (its end noted for `Sync`), a claim fails the whole batch before
//!    anything is written, a key already planned earlier in the batch answers `Duplicate` of that
//!    item's value; a new key's vacant slot is noted with its table's layout number.
//! 2. Append the planned records in one call ([`crate::log::Log::append_many`]); then extend the
//!    sliding duplicates of phase 1 (see `refresh`), before any slot moves.
//! 3. Put their index entries, shard by shard, each into the slot phase 1 found while its table
//!    has not been laid out anew and the slot still is what the probe saw (else probed for
//!    again: `ShardTable::put_new_at`), and settle the shards' released locations.
//!
//! Invariants:
//! - All or nothing in the process: an error in phase 1 or 2 leaves the index untouched, and no
//!   other caller can see part of the batch (its shards stay locked until phase 3 is done).
//! - Per key, log order is operation order: a key's record is appended while its shard is locked.
//! - In `Sync` mode the answers wait for the batch's records and every record a `Duplicate` rests
//!   on (the caller's wait covers the maximum).

use std::time::Duration;

use parking_lot::MutexGuard;

use crate::answer::{Outcome, Value};
use crate::error::Result;
use crate::index::{KeyHash, Probe, ShardTable, Slot};
use crate::log::Location;
use crate::record::{self, Record, RecordKind};
use crate::refresh::{slide_batch, PlannedSlide};
use crate::shared::Shared;

/// How many keys ahead of its probe a key's home slot is prefetched: enough to cover a DRAM miss
/// with the work of the keys in between, few enough that the lines are still cached.
const PREFETCH_DISTANCE: usize = 12;

/// A shard none of the batch's items is in.
const NO_GUARD: u32 = u32::MAX;

/// Runs the batch; `ttls` are the items' validated TTLs in milliseconds.
pub(crate) fn check_or_insert_batch<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    shared: &Shared,
    items: &[(K, Duration, V)],
    ttls: &[u64],
) -> Result<Vec<Outcome>> {
    debug_assert_eq!(items.len(), ttls.len());
    let now = shared.clock.now_millis();
    let hashes: Vec<KeyHash> = items
        .iter()
        .map(|(key, _, _)| shared.index.hash(key.as_ref()))
        .collect();
    // The batch's shards, locked in ascending order; each item's guard found by a table over
    // all shards (linear in items + shards: sorting the items' shards cost more than a probe).
    let shards = shared.index.shards();
    let mut guard_of_shard = vec![NO_GUARD; shards.len()];
    for hash in &hashes {
        guard_of_shard[hash.shard] = 0;
    }
    let mut guards: Vec<MutexGuard<'_, ShardTable>> = Vec::new();
    for (shard, guard) in guard_of_shard.iter_mut().enumerate() {
        if *guard != NO_GUARD {
            *guard = guards.len() as u32;
            guards.push(shards[shard].lock());
        }
    }
    let guard_of: Vec<usize> = hashes
        .iter()
        .map(|hash| guard_of_shard[hash.shard] as usize)
        .collect();

    // Phase 1: decide every item.
    let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
    let mut planned = PlannedKeys::with_capacity(items.len());
    let mut wait_for: Option<Location> = None;
    let mut slides: Vec<PlannedSlide> = Vec::new();
    // The planned items whose key has an expired entry for phase 3 to replace, in item order
    // (few: a key re-sent after its record expired, within its slot's rounded-up second).
    let mut expired_entries: Vec<(usize, Location)> = Vec::new();
    // The slot each planned item's probe found vacant, for phase 3 to put it in without a
    // second probe where the table is as it was (see `ShardTable::put_new_at`).
    let mut vacancies = vec![0usize; items.len()];
    let mut buf = Vec::new();
    for (i, ((key, _, _), hash)) in items.iter().zip(&hashes).enumerate() {
        if let Some(ahead) = hashes.get(i + PREFETCH_DISTANCE) {
            guards[guard_of[i + PREFETCH_DISTANCE]].prefetch(ahead.tag);
        }
        let key = key.as_ref();
        let table = &*guards[guard_of[i]];
        match shared.probe(table, *hash, key, now, &mut buf)? {
            Probe::Found(slot) => {
                let record = record::decode(&buf).expect("checked during the probe");
                let end = shared.end_of(table, slot, &record);
                if let Some(refusal) = crate::retention::refusal(&record) {
                    guards[guard_of[i]].counters.refused(&refusal);
                    drop(guards);
                    return shared.answer_when_durable(end, Err(refusal));
                }
                wait_for = wait_for.max(end);
                if crate::refresh::slides(&record) {
                    slides.push(PlannedSlide {
                        item: i,
                        slot,
                        record: buf.clone(),
                    });
                }
                outcomes[i] = Some(Outcome::Duplicate(Value::from(record.value)));
            }
            Probe::Vacant(slot) => {
                if let Some(first) = planned.find(hash, |j| {
                    hashes[j].tag == hash.tag
                        && hashes[j].shard == hash.shard
                        && items[j].0.as_ref() == key
                }) {
                    outcomes[i] = Some(Outcome::Duplicate(Value::from(items[first].2.as_ref())));
                } else {
                    planned.insert(hash, i);
                    vacancies[i] = slot;
                    if let Some(expired) = table.expired_entry_at(slot, now) {
                        expired_entries.push((i, expired));
                    }
                }
            }
        }
    }
    // The tables' layouts under which the vacancies were found (before anything is put).
    let layouts: Vec<u64> = guards.iter().map(|table| table.relayouts).collect();

    // Phase 2: the new records, in item order, reserved in the log as one piece.
    let new_items: Vec<usize> = (0..items.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    let records: Vec<Record<'_>> = new_items
        .iter()
        .map(|&i| Record {
            kind: RecordKind::Insert,
            key: items[i].0.as_ref(),
            value: items[i].2.as_ref(),
            expires_at_millis: now + ttls[i],
            fingerprint: &[],
            refresh_cap_millis: shared.config.refresh.cap_at(now),
        })
        .collect();
    let mut locations = Vec::with_capacity(records.len());
    let end = shared.log.append_many(&records, &mut locations)?;
    if !slides.is_empty() {
        // Before phase 3, whose puts may move slots.
        let slid = slide_batch(shared, &mut guards, &guard_of, &slides, ttls, now)?;
        wait_for = wait_for.max(slid);
    }

    // Phase 3: their index entries, shard by shard: a shard's wheel bucket and table header
    // stay in cache across its items instead of being fetched again for every item (the
    // order of puts is free: each key is in the batch once, phase 1 saw to that).
    let by_shard = order_by_shard(new_items.len(), guards.len(), |n| guard_of[new_items[n]]);
    for (k, &n) in by_shard.iter().enumerate() {
        let i = new_items[n];
        // Phase 1 loaded these slots, but a large batch has evicted the early ones since.
        if let Some(&ahead) = by_shard.get(k + PREFETCH_DISTANCE) {
            let ahead = new_items[ahead];
            guards[guard_of[ahead]].prefetch_slot_for_write(vacancies[ahead]);
        }
        let entry = Slot {
            tag: hashes[i].tag,
            expires_at_secs: Slot::deadline_secs(records[n].expires_at_millis),
            location: locations[n],
        };
        let guard = guard_of[i];
        let table = &mut guards[guard];
        let late = table.late_duplicate(entry.tag, now);
        let replacing = match expired_entries.binary_search_by_key(&i, |&(item, _)| item) {
            Ok(at) => Some(expired_entries[at].1),
            Err(_) => None,
        };
        table.put_new_at(vacancies[i], layouts[guard], entry, replacing, now);
        table.counters.inserted(late);
        outcomes[i] = Some(Outcome::Inserted);
    }
    // Counted once the batch cannot be refused any more.
    for (i, outcome) in outcomes.iter().enumerate() {
        if let Some(Outcome::Duplicate(_)) = outcome {
            guards[guard_of[i]].counters.replays += 1;
        }
    }
    for table in guards.iter_mut() {
        shared.settle(table);
    }
    drop(guards);
    shared.wait_if_sync(wait_for.max(end))?;
    Ok(outcomes
        .into_iter()
        .map(|outcome| outcome.expect("every item was decided"))
        .collect())
}

/// The positions `0..len` ordered by their group (`group_of`, below `groups`), keeping the
/// order within a group: a counting sort, linear in `len + groups`.
fn order_by_shard(len: usize, groups: usize, group_of: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut starts = vec![0usize; groups + 1];
    for n in 0..len {
        starts[group_of(n) + 1] += 1;
    }
    for g in 0..groups {
        starts[g + 1] += starts[g];
    }
    let mut ordered = vec![0usize; len];
    for n in 0..len {
        let group = group_of(n);
        ordered[starts[group]] = n;
        starts[group] += 1;
    }
    ordered
}

/// The items the batch will insert, by hash: finds a key planned earlier in the same batch. An
/// open-addressing table of item indices; the caller compares an item's hash and key bytes
/// (kept in the batch, not here: a smaller table to clear for every batch).
struct PlannedKeys {
    slots: Vec<u32>,
}

const NO_ITEM: u32 = u32::MAX;

impl PlannedKeys {
    fn with_capacity(items: usize) -> PlannedKeys {
        let len = (items * 2).next_power_of_two().max(16);
        PlannedKeys {
            slots: vec![NO_ITEM; len],
        }
    }

    /// Where `hash` starts probing.
    fn home(&self, hash: &KeyHash) -> usize {
        let mixed = (hash.shard as u64) << 32 | u64::from(hash.tag);
        (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & (self.slots.len() - 1)
    }

    /// The planned item `same` accepts (same hash and key) among those of `hash`'s probe.
    fn find(&self, hash: &KeyHash, same: impl Fn(usize) -> bool) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut index = self.home(hash);
        loop {
            let item = self.slots[index];
            if item == NO_ITEM {
                return None;
            }
            if same(item as usize) {
                return Some(item as usize);
            }
            index = (index + 1) & mask;
        }
    }

    fn insert(&mut self, hash: &KeyHash, item: usize) {
        let mask = self.slots.len() - 1;
        let mut index = self.home(hash);
        while self.slots[index] != NO_ITEM {
            index = (index + 1) & mask;
        }
        self.slots[index] = u32::try_from(item).expect("a batch has fewer than 2^32 items");
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::order_by_shard;

    #[test]
    fn order_by_shard_groups_positions_and_keeps_their_order_within_a_group() {
        let groups_of = [3usize, 0, 3, 1, 0, 2, 3, 1];
        let ordered = order_by_shard(groups_of.len(), 4, |n| groups_of[n]);
        assert_eq!(ordered, vec![1, 4, 3, 7, 5, 0, 2, 6]);
        assert!(order_by_shard(0, 4, |_| unreachable!()).is_empty());
    }
}
