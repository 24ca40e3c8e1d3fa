//! The slot array of one shard table, in fixed-size chunks.
//!
//! A table of at least [`CHUNK`] slots is a list of chunks of exactly [`CHUNK`] slots (12 KiB);
//! a smaller table is one chunk of its own size. Every chunk a large table frees when it is
//! rebuilt has the size every other large table asks for, so the allocator hands it out again.
//! One contiguous array per table would instead leave each outgrown array behind as a hole that
//! the next, larger arrays do not fit: with the tables growing by 5/4 in step across the shards,
//! those holes cost about 2.4 bytes of resident memory per key at 10 M keys (measured with
//! glibc's allocator).
//!
//! Invariants: `capacity` is the sum of the chunks' lengths; when it is at least [`CHUNK`] it is
//! a multiple of [`CHUNK`] and every chunk is full-size.

use super::packed::Packed;

/// log2 of the slots in a chunk.
const CHUNK_BITS: u32 = 10;
/// Slots in a chunk of a large table.
pub(super) const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: usize = CHUNK - 1;

#[derive(Debug)]
pub(super) struct SlotArray {
    chunks: Vec<Box<[Packed]>>,
    capacity: usize,
}

fn empty_chunk(slots: usize) -> Box<[Packed]> {
    vec![Packed::EMPTY; slots].into_boxed_slice()
}

impl SlotArray {
    /// An array of `capacity` empty slots: below [`CHUNK`] any size, else a multiple of it.
    pub(super) fn new(capacity: usize) -> SlotArray {
        assert!(capacity > 0 && (capacity < CHUNK || capacity.is_multiple_of(CHUNK)));
        let chunks = if capacity < CHUNK {
            vec![empty_chunk(capacity)]
        } else {
            (0..capacity / CHUNK).map(|_| empty_chunk(CHUNK)).collect()
        };
        SlotArray { chunks, capacity }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.capacity
    }

    #[inline]
    pub(super) fn get(&self, index: usize) -> Packed {
        self.chunks[index >> CHUNK_BITS][index & CHUNK_MASK]
    }

    #[inline]
    pub(super) fn get_ref(&self, index: usize) -> &Packed {
        &self.chunks[index >> CHUNK_BITS][index & CHUNK_MASK]
    }

    #[inline]
    pub(super) fn set(&mut self, index: usize, slot: Packed) {
        self.chunks[index >> CHUNK_BITS][index & CHUNK_MASK] = slot;
    }

    /// Every slot, in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Packed> + '_ {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// Bytes of memory held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.capacity * std::mem::size_of::<Packed>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[Packed]>>()
    }
}
