//! The entries of a checkpoint's shard blocks: the compact encoding of versions 3 and 4 and the
//! fixed 16-byte one of versions 1 and 2 (still read), each decoded with every check a loader
//! needs.
//!
//! Compact entries (`engine/FORMAT.md`): a block's entries are sorted by log location; each is
//! its tag (u32), the distance from the previous entry's location (LEB128; the first from 0)
//! and the change of its deadline seconds from the previous entry's (zigzag LEB128; the first
//! from 0). Sorted by location, neighbours were written close together in time: the location
//! step is about the record size times the shard count (two bytes) and the deadline step is
//! usually 0 (one byte), so an entry takes about 7 bytes instead of 16.
//!
//! Invariants: a decoded block yields exactly its announced count of entries and uses up its
//! body to the last byte; locations strictly increase (so none is 0 and none repeats) and all
//! lie below the checkpoint's replay start; every deadline fits a u32; a varint is never longer
//! than needed. Anything else is a reason to ignore the checkpoint, never a panic.

use crate::index::Slot;
use crate::log::{offset_of, segment_of, Location};

/// Bytes of a fixed entry (versions 1 and 2): tag u32, expires_at_secs u32, location u64.
pub(crate) const FIXED_ENTRY_LEN: usize = 16;

/// The fewest bytes a compact entry takes (a tag and two one-byte varints): a block announcing
/// more entries than its body holds at this size is refused on load, before anything is sized
/// for its count.
pub(crate) const MIN_COMPACT_ENTRY_LEN: usize = 6;

/// How a block's entries are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryLayout {
    /// 16 bytes each, in slot order (checkpoint versions 1 and 2).
    Fixed,
    /// Tag, location step and deadline step, in location order (versions 3 and 4).
    Compact,
}

/// Appends the compact encoding of `slots` to `out`, sorting them by location first (`scratch`
/// is working space; either vector may come back holding the other's allocation).
pub(crate) fn encode_compact(slots: &mut Vec<Slot>, scratch: &mut Vec<Slot>, out: &mut Vec<u8>) {
    sort_by_location(slots, scratch);
    // At most 4 + 10 + 10 bytes an entry: one reservation, no growth while encoding.
    out.reserve(slots.len() * 24);
    let (mut location, mut deadline) = (0u64, 0i64);
    // Each entry is laid out in a small array and appended at once (a push per byte cost a
    // capacity check per byte): the whole array, a copy of fixed size that compiles to a few
    // moves, then cut to the entry's length (appending just the entry's bytes called `memcpy`
    // for a dozen bytes per entry). The reservation above leaves room for the whole array.
    let mut entry = [0u8; 4 + 10 + 10];
    for slot in slots.iter() {
        entry[..4].copy_from_slice(&slot.tag.to_le_bytes());
        let mut len = 4;
        len += put_varint(&mut entry[len..], slot.location - location);
        let secs = i64::from(slot.expires_at_secs);
        len += put_varint(&mut entry[len..], zigzag(secs - deadline));
        let start = out.len();
        out.extend_from_slice(&entry);
        out.truncate(start + len);
        location = slot.location;
        deadline = secs;
    }
}

/// Decodes the `count` entries of a block body, handing each to `each` in block order; `Err`
/// says what is wrong (the caller names the shard). With [`EntryLayout::Fixed`] the caller has
/// checked that the body holds exactly `count` entries.
#[cfg(test)]
pub(crate) fn decode_entries(
    layout: EntryLayout,
    body: &[u8],
    count: usize,
    replay_from: Location,
    each: impl FnMut(Slot),
) -> Result<(), &'static str> {
    decode_entries_in(layout, body, count, 1..replay_from, each)
}

/// [`decode_entries`] of a block whose entries must all lie in `range` (a delta checkpoint's:
/// from its predecessor's replay start to its own).
pub(crate) fn decode_entries_in(
    layout: EntryLayout,
    body: &[u8],
    count: usize,
    range: std::ops::Range<Location>,
    mut each: impl FnMut(Slot),
) -> Result<(), &'static str> {
    let replay_from = range.end;
    const OUTSIDE: &str = "has an entry outside the checkpointed log";
    match layout {
        EntryLayout::Fixed => {
            for entry in body.chunks_exact(FIXED_ENTRY_LEN) {
                let slot = Slot {
                    tag: u32::from_le_bytes(entry[0..4].try_into().expect("4 bytes")),
                    expires_at_secs: u32::from_le_bytes(entry[4..8].try_into().expect("4 bytes")),
                    location: u64::from_le_bytes(entry[8..16].try_into().expect("8 bytes")),
                };
                if slot.location == 0 || !range.contains(&slot.location) {
                    return Err(OUTSIDE);
                }
                each(slot);
            }
            Ok(())
        }
        EntryLayout::Compact => {
            const BAD: &str = "has a malformed compact entry";
            let (mut at, mut location, mut deadline) = (0usize, 0u64, 0i64);
            for _ in 0..count {
                let tag = body.get(at..at + 4).ok_or(BAD)?;
                let tag = u32::from_le_bytes(tag.try_into().expect("4 bytes"));
                at += 4;
                let step = get_varint(body, &mut at).ok_or(BAD)?;
                if step == 0 {
                    return Err("has entries out of location order");
                }
                location = location.checked_add(step).ok_or(OUTSIDE)?;
                if location >= replay_from || location < range.start {
                    return Err(OUTSIDE);
                }
                let change = unzigzag(get_varint(body, &mut at).ok_or(BAD)?);
                deadline = deadline.checked_add(change).ok_or(BAD)?;
                let expires_at_secs = u32::try_from(deadline).map_err(|_| BAD)?;
                each(Slot {
                    tag,
                    expires_at_secs,
                    location,
                });
            }
            if at != body.len() {
                return Err("has bytes after its last entry");
            }
            Ok(())
        }
    }
}

/// Sorts by location: an LSD radix sort of the top bits in which the locations differ (the
/// segment's distance from the lowest one above the offset's significant bits), enough of them
/// that few entries share a value (log2(n) + 1 bits, in passes of at most 8 bits: the 256
/// places the scatter writes to stay in the L1 cache), then an insertion sort of what is left
/// out of order,
/// which gives up for a comparison sort when it has too much to do (locations bunched in a
/// narrow range far from the others). Comparison sorting alone made the write twice as slow.
pub(crate) fn sort_by_location(slots: &mut Vec<Slot>, scratch: &mut Vec<Slot>) {
    if slots.is_sorted_by_key(|slot| slot.location) {
        return;
    }
    if slots.len() <= 256 {
        slots.sort_unstable_by_key(|slot| slot.location);
        return;
    }
    let (mut low_segment, mut high_segment, mut high_offset) = (u32::MAX, 0u32, 0u32);
    for slot in slots.iter() {
        low_segment = low_segment.min(segment_of(slot.location));
        high_segment = high_segment.max(segment_of(slot.location));
        high_offset = high_offset.max(offset_of(slot.location));
    }
    let offset_bits = u32::BITS - high_offset.leading_zeros();
    let segment_bits = u32::BITS - (high_segment - low_segment).leading_zeros();
    let bits = offset_bits + segment_bits;
    let top_bits = bits.min(usize::BITS - slots.len().leading_zeros() + 1);
    let shift = bits - top_bits;
    let key = |location: Location| {
        (u64::from(segment_of(location) - low_segment) << offset_bits
            | u64::from(offset_of(location)))
            >> shift
    };
    let passes = top_bits.div_ceil(8).max(1);
    let digit_bits = top_bits.div_ceil(passes);
    let digit_mask = (1u64 << digit_bits) - 1;
    let pass_len = 1usize << digit_bits;
    let mut counts = vec![0u32; passes as usize * pass_len];
    for slot in slots.iter() {
        let key = key(slot.location);
        for (pass, counts) in counts.chunks_exact_mut(pass_len).enumerate() {
            counts[((key >> (pass as u32 * digit_bits)) & digit_mask) as usize] += 1;
        }
    }
    scratch.clear();
    scratch.resize(slots.len(), Slot::EMPTY);
    for (pass, starts) in counts.chunks_exact_mut(pass_len).enumerate() {
        if starts.iter().any(|&count| count as usize == slots.len()) {
            continue; // every key has this digit: the order stands
        }
        let mut sum = 0;
        for start in starts.iter_mut() {
            (*start, sum) = (sum, sum + *start);
        }
        for slot in slots.iter() {
            let digit = (key(slot.location) >> (pass as u32 * digit_bits)) & digit_mask;
            let at = &mut starts[digit as usize];
            scratch[*at as usize] = *slot;
            *at += 1;
        }
        std::mem::swap(slots, scratch);
    }
    let mut budget = 4 * slots.len();
    for i in 1..slots.len() {
        let slot = slots[i];
        let mut j = i;
        while j > 0 && slots[j - 1].location > slot.location {
            slots[j] = slots[j - 1];
            j -= 1;
        }
        slots[j] = slot;
        budget = budget.saturating_sub(i - j);
        if budget == 0 {
            slots.sort_unstable_by_key(|slot| slot.location);
            return;
        }
    }
}

/// Appends `locations` (strictly increasing) as LEB128 steps from the previous one (the first
/// from 0): a delta checkpoint's list of removed locations.
pub(crate) fn encode_locations(locations: &[Location], out: &mut Vec<u8>) {
    out.reserve(locations.len() * 10);
    let mut previous = 0;
    let mut step = [0u8; 10];
    for &location in locations {
        let len = put_varint(&mut step, location - previous);
        out.extend_from_slice(&step[..len]);
        previous = location;
    }
}

/// Decodes `count` locations encoded by [`encode_locations`], each handed to `each`; they must
/// strictly increase, lie below `below`, and use up `body` exactly.
pub(crate) fn decode_locations(
    body: &[u8],
    count: usize,
    below: Location,
    mut each: impl FnMut(Location),
) -> Result<(), &'static str> {
    const BAD: &str = "has a malformed removed location";
    let (mut at, mut location) = (0usize, 0u64);
    for _ in 0..count {
        let step = get_varint(body, &mut at).ok_or(BAD)?;
        if step == 0 {
            return Err("has removed locations out of order");
        }
        location = location.checked_add(step).ok_or(BAD)?;
        if location >= below {
            return Err("removes a location its predecessors do not cover");
        }
        each(location);
    }
    if at != body.len() {
        return Err("has bytes after its last removed location");
    }
    Ok(())
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

// LEB128 by hand: two short functions, inlined in the load loop, with the strictness a
// checkpoint needs (no overlong or overflowing encodings), which the varint crates leave out.
/// Writes `value` at the start of `out` (room for 10 bytes); returns the bytes written.
#[inline(always)]
fn put_varint(out: &mut [u8], mut value: u64) -> usize {
    let mut len = 0;
    while value >= 0x80 {
        out[len] = value as u8 | 0x80;
        value >>= 7;
        len += 1;
    }
    out[len] = value as u8;
    len + 1
}

/// The varint at `*at`, moving `*at` past it; `None` if it is cut short, longer than 10 bytes,
/// overflows a u64 or is longer than needed.
#[inline(always)]
fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let first = *bytes.get(*at)?;
    if first < 0x80 {
        *at += 1;
        return Some(u64::from(first));
    }
    let mut value = u64::from(first & 0x7f);
    // Two bytes (a typical location step): no loop.
    if let Some(&second) = bytes.get(*at + 1) {
        if (1..0x80).contains(&second) {
            *at += 2;
            return Some(value | u64::from(second) << 7);
        }
    }
    for i in 1..10 {
        let byte = *bytes.get(*at + i)?;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            // A zero last byte adds nothing (overlong); the tenth may carry one bit only.
            if byte == 0 || (i == 9 && byte > 1) {
                return None;
            }
            *at += i + 1;
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn push_varint(out: &mut Vec<u8>, value: u64) {
        let mut bytes = [0u8; 10];
        let len = put_varint(&mut bytes, value);
        out.extend_from_slice(&bytes[..len]);
    }

    fn decode_all(body: &[u8], count: usize, replay_from: Location) -> Result<Vec<Slot>, String> {
        let mut slots = Vec::new();
        decode_entries(EntryLayout::Compact, body, count, replay_from, |s| {
            slots.push(s)
        })
        .map_err(str::to_string)?;
        Ok(slots)
    }

    fn sorted(mut slots: Vec<Slot>) -> Vec<(u32, u32, Location)> {
        slots.sort_unstable_by_key(|s| s.location);
        slots
            .iter()
            .map(|s| (s.tag, s.expires_at_secs, s.location))
            .collect()
    }

    /// Shapes: empty, one entry, extreme values, locations across many segments and at segment
    /// starts, deadlines jumping both ways, long runs of one deadline, random tags.
    #[test]
    fn compact_entries_round_trip_over_many_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let segment = |id: u64, offset: u64| id << 32 | offset;
        let mut shapes: Vec<Vec<Slot>> = vec![
            vec![],
            vec![Slot {
                tag: 0,
                expires_at_secs: 0,
                location: 1,
            }],
            vec![
                Slot {
                    tag: u32::MAX,
                    expires_at_secs: u32::MAX,
                    location: segment(u32::MAX as u64, u32::MAX as u64 - 1),
                },
                Slot {
                    tag: 7,
                    expires_at_secs: 0,
                    location: 1,
                },
                Slot {
                    tag: 7,
                    expires_at_secs: u32::MAX,
                    location: 2,
                },
            ],
        ];
        for shape in 0..40 {
            let n = rng.gen_range(1..3000);
            let segments = rng.gen_range(1..(2 + shape as u64 * 100));
            let mut locations: Vec<Location> = (0..n)
                .map(|_| segment(rng.gen_range(1..=segments), rng.gen_range(32..1 << 26)))
                .collect();
            locations.sort_unstable();
            locations.dedup();
            let base: u32 = rng.gen();
            let slots = locations
                .into_iter()
                .map(|location| Slot {
                    tag: rng.gen(),
                    expires_at_secs: match shape % 4 {
                        0 => base,
                        1 => base.saturating_add(rng.gen_range(0..10)),
                        2 => rng.gen(),
                        _ => rng.gen_range(0..3) * (u32::MAX / 2),
                    },
                    location,
                })
                .collect();
            shapes.push(slots);
        }
        for (i, mut slots) in shapes.into_iter().enumerate() {
            // Slot order in a table is hash order: the encoder sorts.
            let mut shuffled = slots.clone();
            for j in (1..shuffled.len()).rev() {
                shuffled.swap(j, rng.gen_range(0..=j));
            }
            let mut body = Vec::new();
            encode_compact(&mut shuffled, &mut Vec::new(), &mut body);
            let decoded = decode_all(&body, slots.len(), u64::MAX).unwrap();
            assert_eq!(sorted(decoded.clone()), sorted(slots.clone()), "shape {i}");
            assert!(
                decoded.windows(2).all(|w| w[0].location < w[1].location),
                "shape {i}: location order"
            );
            slots.sort_unstable_by_key(|s| s.location);
            assert_eq!(decoded.len(), slots.len());
            // Every shorter body, and every other count, is refused.
            for cut in [0, 1, body.len() / 2, body.len().saturating_sub(1)] {
                if cut < body.len() {
                    assert!(decode_all(&body[..cut], slots.len(), u64::MAX).is_err());
                }
            }
            assert!(decode_all(&body, slots.len() + 1, u64::MAX).is_err());
            if !slots.is_empty() {
                assert!(decode_all(&body, slots.len() - 1, u64::MAX).is_err());
                // The replay start bounds every location.
                let last = slots.last().unwrap().location;
                assert!(decode_all(&body, slots.len(), last).is_err());
                assert!(decode_all(&body, slots.len(), last + 1).is_ok());
            }
        }
    }

    #[test]
    fn the_radix_sort_orders_as_a_comparison_sort_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut scratch = Vec::new();
        for (n, segments, offsets) in [
            (100, 3u32, 1000u32),
            (300, 1, 1 << 20),
            (5000, 4, 1 << 26),
            (5000, 1 << 20, u32::MAX),
            (20_000, 2, 64),
            (20_000, 3, 1 << 26),
        ] {
            let mut slots: Vec<Slot> = (0..n)
                .map(|i| Slot {
                    tag: i,
                    expires_at_secs: rng.gen(),
                    location: u64::from(rng.gen_range(1..=segments)) << 32
                        | u64::from(rng.gen_range(0..offsets)),
                })
                .collect();
            let mut want = slots.clone();
            want.sort_unstable_by_key(|s| (s.location, s.tag));
            sort_by_location(&mut slots, &mut scratch);
            let locations = |s: &[Slot]| s.iter().map(|s| s.location).collect::<Vec<_>>();
            assert_eq!(locations(&slots), locations(&want), "{n} x {segments}");
            let mut tags: Vec<u32> = slots.iter().map(|s| s.tag).collect();
            tags.sort_unstable();
            assert_eq!(tags, (0..n).collect::<Vec<_>>(), "a permutation");
        }
        // Bunched: most locations in a few bytes of one segment, one far away (the insertion
        // sort gives up for a comparison sort).
        let mut slots: Vec<Slot> = (0..5000u64)
            .map(|i| Slot {
                tag: i as u32,
                expires_at_secs: 0,
                location: 1 << 32 | (i * 7919 % 5000),
            })
            .chain([Slot {
                tag: 0,
                expires_at_secs: 0,
                location: u64::from(u32::MAX) << 32,
            }])
            .collect();
        sort_by_location(&mut slots, &mut scratch);
        assert!(slots.windows(2).all(|w| w[0].location < w[1].location));
    }

    #[test]
    fn a_typical_entry_takes_about_7_bytes() {
        // 256 shards, 47-byte records, deadlines a second apart every 100,000 records.
        let mut slots: Vec<Slot> = (0..20_000u64)
            .map(|i| Slot {
                tag: (i as u32).wrapping_mul(2_654_435_761),
                expires_at_secs: 1_800_000_000 + (i * 256 / 100_000) as u32,
                location: 1 << 32 | (32 + i * 256 * 47),
            })
            .collect();
        let mut body = Vec::new();
        encode_compact(&mut slots, &mut Vec::new(), &mut body);
        let per_entry = body.len() as f64 / slots.len() as f64;
        assert!(per_entry <= 7.01, "{per_entry} bytes per entry");
    }

    #[test]
    fn malformed_varints_are_refused() {
        let mut at = 0;
        assert_eq!(get_varint(&[0x80, 0x00], &mut at), None, "overlong");
        assert_eq!(get_varint(&[0xff; 11], &mut at), None, "too long");
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(get_varint(&max, &mut at), Some(u64::MAX));
        assert_eq!(at, 10);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over, &mut 0), None, "overflow");
        assert_eq!(get_varint(&[0x81], &mut 0), None, "cut short");
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 3, u64::MAX] {
            let mut out = Vec::new();
            push_varint(&mut out, value);
            let mut at = 0;
            assert_eq!(get_varint(&out, &mut at), Some(value));
            assert_eq!(at, out.len());
        }
        for value in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(value)), value);
        }
    }

    #[test]
    fn a_zero_location_step_or_a_deadline_out_of_range_is_refused() {
        // Two entries at the same location.
        let mut body = Vec::new();
        for _ in 0..2 {
            body.extend_from_slice(&1u32.to_le_bytes());
            let step = if body.len() == 4 { 5 } else { 0 };
            push_varint(&mut body, step);
            push_varint(&mut body, 0);
        }
        assert_eq!(
            decode_all(&body, 2, u64::MAX).unwrap_err(),
            "has entries out of location order"
        );
        // A deadline below 0.
        let mut body = Vec::new();
        body.extend_from_slice(&1u32.to_le_bytes());
        push_varint(&mut body, 5);
        push_varint(&mut body, zigzag(-1));
        assert!(decode_all(&body, 1, u64::MAX).is_err());
        // A deadline past u32::MAX.
        let mut body = Vec::new();
        body.extend_from_slice(&1u32.to_le_bytes());
        push_varint(&mut body, 5);
        push_varint(&mut body, zigzag(i64::from(u32::MAX) + 1));
        assert!(decode_all(&body, 1, u64::MAX).is_err());
    }
}
