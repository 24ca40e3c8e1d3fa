//! The on-disk encoding of one log record and of a segment header (spec: `engine/FORMAT.md`).
//!
//! Invariants:
//! - Every integer is fixed-width little-endian; no `usize` is ever encoded.
//! - A record's CRC-32 covers every byte of the record after the CRC field, so a decoded record
//!   is exactly what was encoded or decoding fails.
//! - Kind 0 is never valid, so a zero-filled region never decodes as a record.

use std::ops::Range;

/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// The magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"IDEMLOG\0";
/// The segment format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const HEADER_MAGIC_OFFSET: usize = 0;
const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + SEGMENT_MAGIC.len();
const HEADER_RESERVED_OFFSET: usize = HEADER_VERSION_OFFSET + 4;
const HEADER_SEGMENT_ID_OFFSET: usize = HEADER_RESERVED_OFFSET + 4;
const HEADER_RESERVED2_OFFSET: usize = HEADER_SEGMENT_ID_OFFSET + 8;
const HEADER_CRC_OFFSET: usize = HEADER_RESERVED2_OFFSET + 4;
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_LEN);

/// Bytes of a record header, before the key.
pub const RECORD_HEADER_LEN: usize = 20;
const RECORD_CRC_OFFSET: usize = 0;
const RECORD_KIND_OFFSET: usize = RECORD_CRC_OFFSET + 4;
const RECORD_FLAGS_OFFSET: usize = RECORD_KIND_OFFSET + 1;
const RECORD_KEY_LEN_OFFSET: usize = RECORD_FLAGS_OFFSET + 1;
const RECORD_VALUE_LEN_OFFSET: usize = RECORD_KEY_LEN_OFFSET + 2;
const RECORD_EXPIRES_OFFSET: usize = RECORD_VALUE_LEN_OFFSET + 4;
const _: () = assert!(RECORD_EXPIRES_OFFSET + 8 == RECORD_HEADER_LEN);

/// The largest key a record can carry.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value a record can carry.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The largest request fingerprint a record can carry.
pub const MAX_FINGERPRINT_BYTES: usize = 32;
/// The largest encoded record.
pub const MAX_RECORD_BYTES: usize =
    RECORD_HEADER_LEN + MAX_KEY_BYTES + MAX_VALUE_BYTES + 1 + MAX_FINGERPRINT_BYTES;

/// Flag bit: a fingerprint (length byte, then bytes) follows the value.
const FLAG_FINGERPRINT: u8 = 0x01;
const KNOWN_FLAGS: u8 = FLAG_FINGERPRINT;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// The key was inserted with this value and deadline.
    Insert = 1,
    /// The key's live entry was removed. Its deadline is the removed entry's deadline, so the
    /// tombstone may be forgotten once the record it hides would have expired anyway.
    Remove = 2,
    /// The key was claimed for a side effect outside the store, until the deadline (the lease).
    /// The value is the 8-byte claim id (little-endian) that fences stale holders.
    Claim = 3,
    /// The last record of every sealed segment: key `seal`, value the segment's length before
    /// the seal (u64), deadline 0. A sealed segment without it was cut short.
    Seal = 4,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Insert),
            2 => Some(RecordKind::Remove),
            3 => Some(RecordKind::Claim),
            4 => Some(RecordKind::Seal),
            _ => None,
        }
    }
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes remain than the header, or than the lengths in the header announce.
    Truncated {
        /// Bytes the record needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The kind byte is not a known kind (0 is never valid).
    BadKind(u8),
    /// The flags byte has bits this version does not define.
    BadFlags(u8),
    /// A length in the header is out of range.
    BadLength(&'static str),
    /// The checksum does not match the bytes.
    BadChecksum {
        /// The checksum stored in the record.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(
                    f,
                    "record truncated: needs {needed} bytes, {available} remain"
                )
            }
            DecodeError::BadKind(kind) => write!(f, "unknown record kind {kind}"),
            DecodeError::BadFlags(flags) => write!(f, "unknown record flags {flags:#04x}"),
            DecodeError::BadLength(what) => write!(f, "record {what} out of range"),
            DecodeError::BadChecksum { stored, computed } => write!(
                f,
                "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// A decoded record borrowing the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Insert or remove.
    pub kind: RecordKind,
    /// The key.
    pub key: &'a [u8],
    /// The value (empty for a removal, the claim id for a claim).
    pub value: &'a [u8],
    /// Absolute deadline in milliseconds since the Unix epoch.
    pub expires_at_millis: u64,
    /// The request fingerprint recorded with the key (empty: none).
    pub fingerprint: &'a [u8],
}

impl Record<'_> {
    /// Bytes this record occupies when encoded.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.key.len(), self.value.len(), self.fingerprint.len())
    }

    /// For a Remove record found at log location `at`: replay removes the key's entry only if
    /// that entry is located before the returned location. A removal written by a call carries
    /// no value and hides everything before itself; a copy made by compaction, or the shadow
    /// written by a completion, carries the location to use (8 bytes, little-endian), so that it
    /// never removes a record written after the removal it stands for.
    pub fn removes_before(&self, at: u64) -> u64 {
        match <[u8; 8]>::try_from(self.value) {
            Ok(origin) => u64::from_le_bytes(origin),
            Err(_) => at,
        }
    }
}

/// A deadline in milliseconds rounded *up* to whole seconds (saturating at `u32::MAX`): the unit
/// of the index's slots and of the segments' deadline stats, so that "dead by the rounded value"
/// never comes before the exact deadline.
pub(crate) fn deadline_secs(expires_at_millis: u64) -> u32 {
    u32::try_from(expires_at_millis.div_ceil(1000)).unwrap_or(u32::MAX)
}

/// The key of every seal record.
pub const SEAL_KEY: &[u8] = b"seal";
/// Bytes of a seal record.
pub const SEAL_RECORD_LEN: usize = RECORD_HEADER_LEN + SEAL_KEY.len() + 8;

/// Encodes the seal of a segment whose records end at `data_len` (where the seal goes).
pub fn encode_seal(data_len: u64) -> Vec<u8> {
    let value = data_len.to_le_bytes();
    let seal = Record {
        kind: RecordKind::Seal,
        key: SEAL_KEY,
        value: &value,
        expires_at_millis: 0,
        fingerprint: &[],
    };
    let mut bytes = Vec::with_capacity(SEAL_RECORD_LEN);
    encode_into(&mut bytes, &seal);
    debug_assert_eq!(bytes.len(), SEAL_RECORD_LEN);
    bytes
}

/// If `record` is a well-formed seal, the segment length it vouches for.
pub fn seal_length(record: &Record<'_>) -> Option<u64> {
    if record.kind != RecordKind::Seal || record.key != SEAL_KEY {
        return None;
    }
    Some(u64::from_le_bytes(record.value.try_into().ok()?))
}

/// Bytes a record with these lengths occupies.
pub fn encoded_len(key_len: usize, value_len: usize, fingerprint_len: usize) -> usize {
    let fingerprint = if fingerprint_len == 0 {
        0
    } else {
        1 + fingerprint_len
    };
    RECORD_HEADER_LEN + key_len + value_len + fingerprint
}

/// Appends the encoding of `record` to `out`.
///
/// # Panics
/// If the key is empty or a length is over its limit: callers validate input first.
pub fn encode_into(out: &mut Vec<u8>, record: &Record<'_>) {
    assert!(!record.key.is_empty() && record.key.len() <= MAX_KEY_BYTES);
    assert!(record.value.len() <= MAX_VALUE_BYTES);
    assert!(record.fingerprint.len() <= MAX_FINGERPRINT_BYTES);
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.push(record.kind as u8);
    out.push(if record.fingerprint.is_empty() {
        0
    } else {
        FLAG_FINGERPRINT
    });
    out.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
    out.extend_from_slice(&record.expires_at_millis.to_le_bytes());
    out.extend_from_slice(record.key);
    out.extend_from_slice(record.value);
    if !record.fingerprint.is_empty() {
        out.push(record.fingerprint.len() as u8);
        out.extend_from_slice(record.fingerprint);
    }
    let crc = crc32fast::hash(&out[start + RECORD_KIND_OFFSET..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, record.encoded_len());
}

/// The key of the record at the start of `bytes` and the record's length, read from its header
/// without checking the CRC (for prefetching ahead of the real decode; never for answers).
pub(crate) fn peek_key(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let len = peek_len(bytes).ok()?;
    let key_len = u16_at(bytes, RECORD_KEY_LEN_OFFSET) as usize;
    let key = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len)?;
    Some((key, len))
}

/// The lengths announced by a record header, checked against the limits; the CRC is not checked.
///
/// Returns the total encoded length of the record.
pub fn peek_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_LEN,
            available: bytes.len(),
        });
    }
    let kind = bytes[RECORD_KIND_OFFSET];
    if RecordKind::from_byte(kind).is_none() {
        return Err(DecodeError::BadKind(kind));
    }
    let flags = bytes[RECORD_FLAGS_OFFSET];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    let key_len = u16_at(bytes, RECORD_KEY_LEN_OFFSET) as usize;
    let value_len = u32_at(bytes, RECORD_VALUE_LEN_OFFSET) as usize;
    if key_len == 0 || key_len > MAX_KEY_BYTES {
        return Err(DecodeError::BadLength("key length"));
    }
    if value_len > MAX_VALUE_BYTES {
        return Err(DecodeError::BadLength("value length"));
    }
    if flags & FLAG_FINGERPRINT == 0 {
        return Ok(encoded_len(key_len, value_len, 0));
    }
    let at = RECORD_HEADER_LEN + key_len + value_len;
    let Some(&fingerprint_len) = bytes.get(at) else {
        return Err(DecodeError::Truncated {
            needed: at + 1,
            available: bytes.len(),
        });
    };
    if fingerprint_len == 0 || fingerprint_len as usize > MAX_FINGERPRINT_BYTES {
        return Err(DecodeError::BadLength("fingerprint length"));
    }
    Ok(encoded_len(key_len, value_len, fingerprint_len as usize))
}

/// Decodes the record at the start of `bytes`, checking lengths and the CRC.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let len = peek_len(bytes)?;
    if bytes.len() < len {
        return Err(DecodeError::Truncated {
            needed: len,
            available: bytes.len(),
        });
    }
    let stored = u32_at(bytes, RECORD_CRC_OFFSET);
    let computed = crc32fast::hash(&bytes[RECORD_KIND_OFFSET..len]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let kind = RecordKind::from_byte(bytes[RECORD_KIND_OFFSET]).expect("checked by peek_len");
    let key_len = u16_at(bytes, RECORD_KEY_LEN_OFFSET) as usize;
    let value_len = u32_at(bytes, RECORD_VALUE_LEN_OFFSET) as usize;
    let key_range = RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len;
    let value_range: Range<usize> = key_range.end..key_range.end + value_len;
    let fingerprint = if bytes[RECORD_FLAGS_OFFSET] & FLAG_FINGERPRINT == 0 {
        &[][..]
    } else {
        &bytes[value_range.end + 1..len]
    };
    Ok(Record {
        kind,
        key: &bytes[key_range],
        value: &bytes[value_range],
        expires_at_millis: u64_at(bytes, RECORD_EXPIRES_OFFSET),
        fingerprint,
    })
}

/// Why bytes did not decode as a segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`SEGMENT_HEADER_LEN`] bytes.
    Truncated,
    /// The magic is wrong: this is not a segment file.
    BadMagic,
    /// The checksum does not match.
    BadChecksum,
    /// A version this build does not read.
    UnsupportedVersion(u32),
}

/// Encodes the header of segment `segment_id`.
pub fn encode_segment_header(segment_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    header[HEADER_VERSION_OFFSET..HEADER_RESERVED_OFFSET]
        .copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[HEADER_SEGMENT_ID_OFFSET..HEADER_RESERVED2_OFFSET]
        .copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32fast::hash(&header[..HEADER_CRC_OFFSET]);
    header[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Decodes a segment header, returning the segment id it names.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Truncated);
    }
    if bytes[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let stored = u32_at(bytes, HEADER_CRC_OFFSET);
    if stored != crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]) {
        return Err(HeaderError::BadChecksum);
    }
    let version = u32_at(bytes, HEADER_VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(u64_at(bytes, HEADER_SEGMENT_ID_OFFSET))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_filled_bytes_never_decode() {
        let zeros = [0u8; 256];
        assert_eq!(decode(&zeros), Err(DecodeError::BadKind(0)));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_segment_header(42);
        assert_eq!(decode_segment_header(&header), Ok(42));
        let mut flipped = header;
        flipped[17] ^= 1;
        assert_eq!(
            decode_segment_header(&flipped),
            Err(HeaderError::BadChecksum)
        );
        let mut foreign = header;
        foreign[0] = b'X';
        assert_eq!(decode_segment_header(&foreign), Err(HeaderError::BadMagic));
        assert_eq!(
            decode_segment_header(&header[..31]),
            Err(HeaderError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn records_round_trip(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            value in proptest::collection::vec(any::<u8>(), 0..128),
            expires in any::<u64>(),
            kind in 1u8..=4,
            fingerprint in proptest::collection::vec(any::<u8>(), 0..=MAX_FINGERPRINT_BYTES),
        ) {
            let kind = RecordKind::from_byte(kind).unwrap();
            let record = Record { kind, key: &key, value: &value, expires_at_millis: expires, fingerprint: &fingerprint };
            let mut bytes = vec![0xAA];
            encode_into(&mut bytes, &record);
            prop_assert_eq!(decode(&bytes[1..]), Ok(record));
            prop_assert_eq!(peek_len(&bytes[1..]), Ok(record.encoded_len()));
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            key in proptest::collection::vec(any::<u8>(), 1..32),
            value in proptest::collection::vec(any::<u8>(), 0..32),
            bit in any::<prop::sample::Index>(),
        ) {
            let record = Record { kind: RecordKind::Insert, key: &key, value: &value, expires_at_millis: 7, fingerprint: b"fp" };
            let mut bytes = Vec::new();
            encode_into(&mut bytes, &record);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
            let _ = decode_segment_header(&bytes);
        }
    }
}
