//! The state namespace that transactions write: state entries (key to value, no TTL) and input
//! positions (source to a `u64` that only grows). Both are kept in memory, values included (the
//! consumer's state is small next to its dedup window, and a read must not wait for the disk),
//! each with the location of the record that set it, so that compaction can copy it and the
//! checkpoint and replay can tell the latest record from an older one.
//!
//! Invariants:
//! - Every state entry and position is the effect of the latest record of its key in the log
//!   (state) or of its largest position (positions); its `location` is that record's (or its
//!   compaction copy's) location, and `end` where that record ends.
//! - State keys and dedup keys never meet: state lives only here, dedup entries only in the index.
//! - `released` lists the locations of records that stopped being live (overwritten, removed), for
//!   the owner to subtract from the log's per-segment live counts.

use std::collections::{BTreeMap, HashMap};

use crate::log::Location;

/// One state entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateEntry {
    pub(crate) value: Box<[u8]>,
    pub(crate) location: Location,
    pub(crate) end: Location,
    /// Changes with every put of the key (never with a compaction copy): what a transaction's
    /// read is validated against.
    pub(crate) version: u64,
}

/// One source's input position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PositionEntry {
    pub(crate) position: u64,
    pub(crate) location: Location,
    pub(crate) end: Location,
}

/// State entries and positions; the store keeps them under one lock.
#[derive(Debug, Default)]
pub(crate) struct StateTables {
    pub(crate) entries: HashMap<Box<[u8]>, StateEntry, ahash::RandomState>,
    pub(crate) positions: BTreeMap<Box<[u8]>, PositionEntry>,
    /// Where the latest state removal ends (0: none): in `Sync` an absent answer may rest on it.
    pub(crate) last_removal_end: Location,
    pub(crate) released: Vec<Location>,
    /// The version the next put gives its entry (unique within the process's life).
    next_version: u64,
}

impl StateTables {
    /// Sets `key` to `value` by the record at `at..end`.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8], at: Location, end: Location) {
        self.next_version += 1;
        let version = self.next_version;
        if let Some(entry) = self.entries.get_mut(key) {
            // An overwrite (a balance updated again) reuses the key and, at the same length,
            // the value's allocation.
            self.released.push(entry.location);
            if entry.value.len() == value.len() {
                entry.value.copy_from_slice(value);
            } else {
                entry.value = value.into();
            }
            (entry.location, entry.end, entry.version) = (at, end, version);
            return;
        }
        let entry = StateEntry {
            value: value.into(),
            location: at,
            end,
            version,
        };
        self.entries.insert(key.into(), entry);
    }

    /// Applies a state removal found at `at..end` that hides records of its key located before
    /// `removes_before` (see [`crate::record::Record::removes_before`]).
    pub(crate) fn remove(&mut self, key: &[u8], removes_before: Location, end: Location) {
        if let Some(entry) = self.entries.get(key) {
            if entry.location < removes_before {
                self.released.push(entry.location);
                self.entries.remove(key);
            }
        }
        self.last_removal_end = self.last_removal_end.max(end);
    }

    /// Applies a position record: the largest position of a source wins (an equal one moves the
    /// entry to the later record, a compaction copy).
    pub(crate) fn set_position(
        &mut self,
        source: &[u8],
        position: u64,
        at: Location,
        end: Location,
    ) {
        let entry = PositionEntry {
            position,
            location: at,
            end,
        };
        match self.positions.get_mut(source) {
            Some(current) if current.position > position => self.released.push(at),
            Some(current) => {
                self.released.push(current.location);
                *current = entry;
            }
            None => {
                self.positions.insert(source.into(), entry);
            }
        }
    }

    /// Points the entry of `key` at `to` if it is still at `from` (compaction copied it).
    pub(crate) fn relocate_entry(
        &mut self,
        key: &[u8],
        from: Location,
        to: (Location, Location),
    ) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) if entry.location == from => {
                (entry.location, entry.end) = to;
                true
            }
            _ => false,
        }
    }

    /// Points the position of `source` at `to` if it is still at `from` (compaction copied it).
    pub(crate) fn relocate_position(
        &mut self,
        source: &[u8],
        from: Location,
        to: (Location, Location),
    ) -> bool {
        match self.positions.get_mut(source) {
            Some(entry) if entry.location == from => {
                (entry.location, entry.end) = to;
                true
            }
            _ => false,
        }
    }

    /// Every live location, for the log's per-segment live counts.
    pub(crate) fn locations(&self) -> impl Iterator<Item = Location> + '_ {
        self.entries
            .values()
            .map(|e| e.location)
            .chain(self.positions.values().map(|p| p.location))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_put_wins_and_releases_the_older_record() {
        let mut state = StateTables::default();
        state.put(b"k", b"1", 10, 20);
        state.put(b"k", b"2", 30, 40);
        assert_eq!(&*state.entries[&b"k"[..]].value, b"2");
        assert_eq!(state.released, vec![10]);
    }

    #[test]
    fn a_removal_hides_only_what_precedes_its_origin() {
        let mut state = StateTables::default();
        state.put(b"k", b"1", 10, 20);
        state.put(b"k", b"2", 50, 60);
        // A tombstone copied past the re-put (origin 30) leaves the later entry alone.
        state.remove(b"k", 30, 110);
        assert_eq!(&*state.entries[&b"k"[..]].value, b"2");
        state.remove(b"k", 70, 120);
        assert!(state.entries.is_empty());
        assert_eq!(state.last_removal_end, 120);
    }

    #[test]
    fn positions_keep_the_largest() {
        let mut state = StateTables::default();
        state.set_position(b"s", 5, 10, 20);
        state.set_position(b"s", 3, 30, 40);
        assert_eq!(state.positions[&b"s"[..]].position, 5);
        assert_eq!(state.positions[&b"s"[..]].location, 10);
        state.set_position(b"s", 5, 50, 60);
        assert_eq!(state.positions[&b"s"[..]].location, 50);
        assert_eq!(state.released, vec![30, 10]);
    }
}
