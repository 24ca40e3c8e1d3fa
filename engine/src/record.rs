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
/// The segment format version this build writes. It reads this one and versions 1 to 3.
pub const FORMAT_VERSION: u32 = 4;
/// Format 3, still read: the records of format 4 but Padding (kind 10), which it never holds.
pub const FORMAT_VERSION_3: u32 = 3;
/// Format 2, still read: the record layout of format 3, but a group of records (a transaction,
/// a completion with its shadow) opens with a Group record instead of its records carrying the
/// continuation flag.
pub const FORMAT_VERSION_2: u32 = 2;
/// The first format version, still read (its records have a 20-byte header).
pub const FORMAT_VERSION_1: u32 = 1;

const HEADER_MAGIC_OFFSET: usize = 0;
const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + SEGMENT_MAGIC.len();
const HEADER_RESERVED_OFFSET: usize = HEADER_VERSION_OFFSET + 4;
const HEADER_SEGMENT_ID_OFFSET: usize = HEADER_RESERVED_OFFSET + 4;
const HEADER_RESERVED2_OFFSET: usize = HEADER_SEGMENT_ID_OFFSET + 8;
const HEADER_CRC_OFFSET: usize = HEADER_RESERVED2_OFFSET + 4;
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SEGMENT_HEADER_LEN);

/// Bytes of a record header (formats 2 to 4), before the key.
pub const RECORD_HEADER_LEN: usize = 15;
const RECORD_CRC_OFFSET: usize = 0;
/// Layout 2 (formats 2 to 4): one byte holds the layout mark (bit 7), the flags (bits 4..=6)
/// and the kind (bits 0..=3).
const RECORD_KIND_OFFSET: usize = RECORD_CRC_OFFSET + 4;
const RECORD_KEY_LEN_OFFSET: usize = RECORD_KIND_OFFSET + 1;
const RECORD_VALUE_LEN_OFFSET: usize = RECORD_KEY_LEN_OFFSET + 2;
const RECORD_EXPIRES_OFFSET: usize = RECORD_VALUE_LEN_OFFSET + 2;
const _: () = assert!(RECORD_EXPIRES_OFFSET + 6 == RECORD_HEADER_LEN);

/// Bit 7 of a format-2 record's kind byte: format-1 kind bytes are 1..=4, so the two layouts
/// tell themselves apart, and a zero byte is neither.
const LAYOUT_V2: u8 = 0x80;
const KIND_BITS: u8 = 0x0F;
const FLAGS_SHIFT: u32 = 4;

/// Format 1's record header: crc u32, kind u8, flags u8, key_len u16, value_len u32,
/// expires_at_ms u64.
const V1_RECORD_HEADER_LEN: usize = 20;
const V1_FLAGS_OFFSET: usize = 5;
const V1_KEY_LEN_OFFSET: usize = 6;
const V1_VALUE_LEN_OFFSET: usize = 8;
const V1_EXPIRES_OFFSET: usize = 12;
const V1_MAX_VALUE_BYTES: usize = 64 * 1024;

/// The largest key a record can carry.
pub const MAX_KEY_BYTES: usize = 1024;
/// The largest value a record can carry (a 16-bit length).
pub const MAX_VALUE_BYTES: usize = u16::MAX as usize;
/// The largest request fingerprint a record can carry.
pub const MAX_FINGERPRINT_BYTES: usize = 32;
/// The largest encoded record (format 1's, whose header and values were larger).
pub const MAX_RECORD_BYTES: usize =
    V1_RECORD_HEADER_LEN + MAX_KEY_BYTES + V1_MAX_VALUE_BYTES + 1 + MAX_FINGERPRINT_BYTES;

/// The largest deadline a record can carry: 2^48 - 1 milliseconds (the year 10889). Later
/// deadlines are stored as this one; state and position records, which never expire, carry it.
pub const NEVER_EXPIRES: u64 = (1 << 48) - 1;

/// Flag bit: a fingerprint (length byte, then bytes) follows the value.
const FLAG_FINGERPRINT: u8 = 0x01;
/// Flag bit (format 2 only): a refresh cap (6 bytes, a deadline in milliseconds, not 0) ends the
/// record, after the fingerprint: the entry slides (see [`Record::refresh_cap_millis`]).
const FLAG_REFRESH_CAP: u8 = 0x02;
/// Flag bit (formats 3 and 4): the next record belongs to the same group (a transaction): a group
/// is a run of records carrying this flag closed by one that does not, and replay applies it
/// whole or not at all.
const FLAG_CONTINUES: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_FINGERPRINT | FLAG_REFRESH_CAP | FLAG_CONTINUES;
/// Bytes of the refresh cap field.
const REFRESH_CAP_BYTES: usize = 6;

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
    /// A state entry (the state namespace of transactions) was set to the value. Never expires.
    StatePut = 5,
    /// A state entry was deleted: a tombstone like Remove (0 or 8 bytes of origin), that never
    /// expires.
    StateRemove = 6,
    /// An input position: the key names the source, the value is the position (u64). Positions
    /// only grow; the largest recorded wins. Never expires.
    Position = 7,
    /// Opens a group of records written atomically (a transaction): key `group`, value the
    /// group's body length (u32, the bytes of the records that follow it) and record count (u32).
    /// Recovery applies a group only if its whole body is there and intact.
    Group = 8,
    /// A claim ended in a definite failure (format 2, kind 9): the key's entry until the
    /// deadline (the end of the back-off), the value the failure's bytes. Claims and
    /// check-or-inserts of the key are refused with the failure until then; after it the key
    /// is free. Replay, compaction and checkpoints treat it as an Insert.
    Failure = 9,
    /// Bytes an append lane reserved and did not fill (format 4, kind 10; see `log`): key
    /// [`PADDING_KEY`], a value of zeros as long as the gap needs, deadline 0. Nothing reads it
    /// but scans, which step over it; it is never a key's entry and never inside a group.
    Padding = 10,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Insert),
            2 => Some(RecordKind::Remove),
            3 => Some(RecordKind::Claim),
            4 => Some(RecordKind::Seal),
            5 => Some(RecordKind::StatePut),
            6 => Some(RecordKind::StateRemove),
            7 => Some(RecordKind::Position),
            8 => Some(RecordKind::Group),
            9 => Some(RecordKind::Failure),
            10 => Some(RecordKind::Padding),
            _ => None,
        }
    }

    /// Whether the record can be a key's dedup entry (what the index points at): an Insert, a
    /// Claim or a Failure.
    pub fn is_entry(self) -> bool {
        matches!(
            self,
            RecordKind::Insert | RecordKind::Claim | RecordKind::Failure
        )
    }

    /// Whether the record belongs to the state namespace (state entries and positions) rather
    /// than to the dedup entries.
    pub fn is_state(self) -> bool {
        matches!(
            self,
            RecordKind::StatePut | RecordKind::StateRemove | RecordKind::Position
        )
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
    /// For an entry recorded under a sliding refresh policy: the latest deadline a duplicate may
    /// move it to (the first insertion plus the cap), in milliseconds since the Unix epoch. 0: the
    /// entry keeps its deadline (the default; nothing is encoded). Format 2 only; later values
    /// than [`NEVER_EXPIRES`] are stored as it.
    pub refresh_cap_millis: u64,
}

impl Record<'_> {
    /// Bytes this record occupies when this build encodes it (format 4). A record decoded from a
    /// format-1 segment occupied more: scans step by [`decode_sized`]'s length.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.key.len(), self.value.len(), self.fingerprint.len())
            + if self.refresh_cap_millis != 0 {
                REFRESH_CAP_BYTES
            } else {
                0
            }
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
/// Bytes of a seal record (formats 2 to 4).
pub const SEAL_RECORD_LEN: usize = RECORD_HEADER_LEN + SEAL_KEY.len() + 8;
/// Bytes of a seal record in a format-1 segment.
pub const V1_SEAL_RECORD_LEN: usize = V1_RECORD_HEADER_LEN + SEAL_KEY.len() + 8;

/// Bytes of a seal record in a segment of `version`.
pub fn seal_record_len(version: u32) -> usize {
    if version == FORMAT_VERSION_1 {
        V1_SEAL_RECORD_LEN
    } else {
        SEAL_RECORD_LEN
    }
}

fn seal_record(value: &[u8; 8]) -> Record<'_> {
    Record {
        kind: RecordKind::Seal,
        key: SEAL_KEY,
        value,
        expires_at_millis: 0,
        fingerprint: &[],
        refresh_cap_millis: 0,
    }
}

/// The key of every padding record.
pub const PADDING_KEY: &[u8] = b"p";
/// The shortest padding record: as short as the shortest record (a 1-byte key, no value), so
/// that a gap left where some record would not fit can always be padded.
pub const MIN_PADDING_LEN: usize = RECORD_HEADER_LEN + PADDING_KEY.len();
/// The longest padding record.
pub const MAX_PADDING_LEN: usize = MIN_PADDING_LEN + MAX_VALUE_BYTES;
const _: () = assert!(MIN_PADDING_LEN == encoded_len(1, 0, 0));

/// Appends a padding record exactly `len` bytes long (format 4).
///
/// # Panics
/// If `len` is outside `MIN_PADDING_LEN..=MAX_PADDING_LEN`.
pub fn encode_padding(out: &mut Vec<u8>, len: usize) {
    assert!(
        (MIN_PADDING_LEN..=MAX_PADDING_LEN).contains(&len),
        "a padding record of {len} bytes"
    );
    static ZEROS: [u8; MAX_VALUE_BYTES] = [0; MAX_VALUE_BYTES];
    let start = out.len();
    encode_into(
        out,
        &Record {
            kind: RecordKind::Padding,
            key: PADDING_KEY,
            value: &ZEROS[..len - MIN_PADDING_LEN],
            expires_at_millis: 0,
            fingerprint: &[],
            refresh_cap_millis: 0,
        },
    );
    debug_assert_eq!(out.len() - start, len);
}

/// Encodes the seal of a segment whose records end at `data_len` (where the seal goes).
pub fn encode_seal(data_len: u64) -> Vec<u8> {
    let value = data_len.to_le_bytes();
    let mut bytes = Vec::with_capacity(SEAL_RECORD_LEN);
    encode_into(&mut bytes, &seal_record(&value));
    debug_assert_eq!(bytes.len(), SEAL_RECORD_LEN);
    bytes
}

/// Encodes the seal of a *format-1* segment: a store written by an older build is upgraded by
/// sealing its newest segment in its own format and going on in a new one.
pub fn encode_seal_v1(data_len: u64) -> Vec<u8> {
    let value = data_len.to_le_bytes();
    let mut bytes = Vec::with_capacity(V1_SEAL_RECORD_LEN);
    encode_v1_into(&mut bytes, &seal_record(&value));
    bytes
}

/// If `record` is a well-formed seal, the segment length it vouches for.
pub fn seal_length(record: &Record<'_>) -> Option<u64> {
    if record.kind != RecordKind::Seal || record.key != SEAL_KEY {
        return None;
    }
    Some(u64::from_le_bytes(record.value.try_into().ok()?))
}

/// The position a Position record carries (its 8-byte value), if it is one.
pub fn position_value(record: &Record<'_>) -> Option<u64> {
    if record.kind != RecordKind::Position {
        return None;
    }
    Some(u64::from_le_bytes(record.value.try_into().ok()?))
}

/// The key of every group record (format 2).
pub const GROUP_KEY: &[u8] = b"group";
/// Bytes of a group record (format 2).
pub const GROUP_RECORD_LEN: usize = RECORD_HEADER_LEN + GROUP_KEY.len() + 8;

/// Encodes the format-2 record that opened a group of `records` records occupying `body_len`
/// bytes. This build writes groups with the continuation flag instead ([`encode_group_member`]);
/// this is for tests and fuzzers that write format-2 segments.
pub fn encode_group(out: &mut Vec<u8>, body_len: u32, records: u32) {
    let mut bytes = [0u8; GROUP_RECORD_LEN];
    bytes[RECORD_KIND_OFFSET] = LAYOUT_V2 | RecordKind::Group as u8;
    bytes[RECORD_KEY_LEN_OFFSET..RECORD_VALUE_LEN_OFFSET]
        .copy_from_slice(&(GROUP_KEY.len() as u16).to_le_bytes());
    bytes[RECORD_VALUE_LEN_OFFSET..RECORD_EXPIRES_OFFSET].copy_from_slice(&8u16.to_le_bytes());
    // The deadline (bytes 9..15) is 0.
    let value = RECORD_HEADER_LEN + GROUP_KEY.len();
    bytes[RECORD_HEADER_LEN..value].copy_from_slice(GROUP_KEY);
    bytes[value..value + 4].copy_from_slice(&body_len.to_le_bytes());
    bytes[value + 4..].copy_from_slice(&records.to_le_bytes());
    let crc = crc32(&bytes[RECORD_KIND_OFFSET..]);
    bytes[..RECORD_KIND_OFFSET].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&bytes);
}

/// If `record` is a well-formed group record: its body's length in bytes and record count.
pub fn group_extent(record: &Record<'_>) -> Option<(u32, u32)> {
    if record.kind != RecordKind::Group || record.key != GROUP_KEY || record.value.len() != 8 {
        return None;
    }
    Some((u32_at(record.value, 0), u32_at(record.value, 4)))
}

/// Bytes a record with these lengths occupies when this build encodes it (format 4).
pub const fn encoded_len(key_len: usize, value_len: usize, fingerprint_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len + value_len + fingerprint_bytes(fingerprint_len)
}

const fn fingerprint_bytes(fingerprint_len: usize) -> usize {
    if fingerprint_len == 0 {
        0
    } else {
        1 + fingerprint_len
    }
}

/// Appends the encoding of `record` to `out` (format 4, the layout of format 2). A deadline past
/// [`NEVER_EXPIRES`] is stored as it.
///
/// # Panics
/// If the key is empty or a length is over its limit: callers validate input first.
pub fn encode_into(out: &mut Vec<u8>, record: &Record<'_>) {
    encode_group_member(out, record, false);
}

/// As [`encode_into`], for a record of a group: `continues` for every record of the group but
/// its last (which closes it).
pub fn encode_group_member(out: &mut Vec<u8>, record: &Record<'_>, continues: bool) {
    assert!(!record.key.is_empty() && record.key.len() <= MAX_KEY_BYTES);
    assert!(record.value.len() <= MAX_VALUE_BYTES);
    assert!(record.fingerprint.len() <= MAX_FINGERPRINT_BYTES);
    let start = out.len();
    let mut flags = if record.fingerprint.is_empty() {
        0
    } else {
        FLAG_FINGERPRINT
    };
    if record.refresh_cap_millis != 0 {
        flags |= FLAG_REFRESH_CAP;
    }
    if continues {
        flags |= FLAG_CONTINUES;
    }
    // The header is put together on the stack and copied once, after one reservation for the
    // whole record: a transaction encodes several records per commit.
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[RECORD_KIND_OFFSET] = LAYOUT_V2 | flags << FLAGS_SHIFT | record.kind as u8;
    header[RECORD_KEY_LEN_OFFSET..RECORD_VALUE_LEN_OFFSET]
        .copy_from_slice(&(record.key.len() as u16).to_le_bytes());
    header[RECORD_VALUE_LEN_OFFSET..RECORD_EXPIRES_OFFSET]
        .copy_from_slice(&(record.value.len() as u16).to_le_bytes());
    header[RECORD_EXPIRES_OFFSET..]
        .copy_from_slice(&record.expires_at_millis.min(NEVER_EXPIRES).to_le_bytes()[..6]);
    out.reserve(record.encoded_len());
    out.extend_from_slice(&header);
    finish(out, start, record);
}

/// Appends the format-1 encoding of `record` (for seals of format-1 segments, and tests).
pub fn encode_v1_into(out: &mut Vec<u8>, record: &Record<'_>) {
    assert!(!record.key.is_empty() && record.key.len() <= MAX_KEY_BYTES);
    assert!((record.kind as u8) <= RecordKind::Seal as u8);
    assert_eq!(record.refresh_cap_millis, 0, "format 1 has no refresh cap");
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
    finish(out, start, record);
}

/// Appends key, value and fingerprint, then fills in the CRC of everything after it.
fn finish(out: &mut Vec<u8>, start: usize, record: &Record<'_>) {
    out.extend_from_slice(record.key);
    out.extend_from_slice(record.value);
    if !record.fingerprint.is_empty() {
        out.push(record.fingerprint.len() as u8);
        out.extend_from_slice(record.fingerprint);
    }
    if record.refresh_cap_millis != 0 {
        let cap = record.refresh_cap_millis.min(NEVER_EXPIRES).to_le_bytes();
        out.extend_from_slice(&cap[..REFRESH_CAP_BYTES]);
    }
    let crc = crc32(&out[start + RECORD_KIND_OFFSET..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A hasher made once, whose implementation (table or carry-less multiply) is already chosen:
/// `crc32fast::hash` detects the CPU's features on every call, which on a record of a few dozen
/// bytes costs a quarter as much as the checksum itself (every record is checksummed when it is
/// encoded and again whenever it is read).
static CRC_HASHER: std::sync::LazyLock<crc32fast::Hasher> =
    std::sync::LazyLock::new(crc32fast::Hasher::new);

/// The CRC-32 (IEEE) of `bytes`: the same value as `crc32fast::hash`.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut hasher = CRC_HASHER.clone();
    hasher.update(bytes);
    hasher.finalize()
}

/// A record header's fields, read without checking the CRC.
struct Header {
    kind: RecordKind,
    header_len: usize,
    key_len: usize,
    value_len: usize,
    /// Whether a refresh cap ends the record (format 2).
    refresh_cap: bool,
    /// The encoded length of the whole record.
    len: usize,
}

impl Header {
    fn expires_at_millis(&self, bytes: &[u8]) -> u64 {
        if self.header_len == V1_RECORD_HEADER_LEN {
            u64_at(bytes, V1_EXPIRES_OFFSET)
        } else {
            let mut deadline = [0u8; 8];
            deadline[..6].copy_from_slice(&bytes[RECORD_EXPIRES_OFFSET..RECORD_EXPIRES_OFFSET + 6]);
            u64::from_le_bytes(deadline)
        }
    }
}

/// Reads and range-checks the header at the start of `bytes`, in either layout.
#[inline(always)]
fn read_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let Some(&kind_byte) = bytes.get(RECORD_KIND_OFFSET) else {
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_LEN,
            available: bytes.len(),
        });
    };
    let v2 = kind_byte & LAYOUT_V2 != 0;
    let header_len = if v2 {
        RECORD_HEADER_LEN
    } else {
        V1_RECORD_HEADER_LEN
    };
    if bytes.len() < header_len {
        return Err(DecodeError::Truncated {
            needed: header_len,
            available: bytes.len(),
        });
    }
    let (kind, flags, key_len, value_len, max_value) = if v2 {
        let kind = RecordKind::from_byte(kind_byte & KIND_BITS);
        (
            kind.ok_or(DecodeError::BadKind(kind_byte))?,
            (kind_byte & !LAYOUT_V2) >> FLAGS_SHIFT,
            u16_at(bytes, RECORD_KEY_LEN_OFFSET) as usize,
            u16_at(bytes, RECORD_VALUE_LEN_OFFSET) as usize,
            MAX_VALUE_BYTES,
        )
    } else {
        // Format 1 knew only the first four kinds.
        let kind = RecordKind::from_byte(kind_byte).filter(|k| *k as u8 <= RecordKind::Seal as u8);
        (
            kind.ok_or(DecodeError::BadKind(kind_byte))?,
            bytes[V1_FLAGS_OFFSET],
            u16_at(bytes, V1_KEY_LEN_OFFSET) as usize,
            u32_at(bytes, V1_VALUE_LEN_OFFSET) as usize,
            V1_MAX_VALUE_BYTES,
        )
    };
    // Whether the continuation flag (formats 3 and 4, not 2) or a padding record (format 4) may
    // appear is the segment's to judge: they share a layout.
    let known = if v2 { KNOWN_FLAGS } else { FLAG_FINGERPRINT };
    if flags & !known != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    if key_len == 0 || key_len > MAX_KEY_BYTES {
        return Err(DecodeError::BadLength("key length"));
    }
    if value_len > max_value {
        return Err(DecodeError::BadLength("value length"));
    }
    let mut len = header_len + key_len + value_len;
    if flags & FLAG_FINGERPRINT != 0 {
        let Some(&fingerprint_len) = bytes.get(len) else {
            return Err(DecodeError::Truncated {
                needed: len + 1,
                available: bytes.len(),
            });
        };
        if fingerprint_len == 0 || fingerprint_len as usize > MAX_FINGERPRINT_BYTES {
            return Err(DecodeError::BadLength("fingerprint length"));
        }
        len += fingerprint_bytes(fingerprint_len as usize);
    }
    let refresh_cap = flags & FLAG_REFRESH_CAP != 0;
    if refresh_cap {
        len += REFRESH_CAP_BYTES;
    }
    Ok(Header {
        kind,
        header_len,
        key_len,
        value_len,
        refresh_cap,
        len,
    })
}

/// The lengths announced by a record header (either format), checked against the limits; the CRC
/// is not checked.
///
/// Returns the total encoded length of the record.
pub fn peek_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    read_header(bytes).map(|header| header.len)
}

/// Decodes the record at the start of `bytes` (either format), checking lengths and the CRC.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    decode_sized(bytes).map(|(record, _)| record)
}

/// The record layout (1, or 2: that of formats 2 to 4) at the start of `bytes`, judged by its
/// kind byte alone (`None` if there is none). A segment holds records of its own layout only
/// ([`layout_of_format`]).
pub fn layout_of(bytes: &[u8]) -> Option<u32> {
    let kind_byte = *bytes.get(RECORD_KIND_OFFSET)?;
    Some(if kind_byte & LAYOUT_V2 != 0 {
        FORMAT_VERSION_2
    } else {
        FORMAT_VERSION_1
    })
}

/// The record layout of a segment of format `version` (see [`layout_of`]).
pub fn layout_of_format(version: u32) -> u32 {
    version.min(FORMAT_VERSION_2)
}

/// Whether the record at the start of `bytes` (of layout 2) carries the continuation flag: the
/// next record belongs to its group. Read from the kind byte alone; decode the record first.
pub fn continues_group(bytes: &[u8]) -> bool {
    bytes.get(RECORD_KIND_OFFSET).is_some_and(|&kind_byte| {
        kind_byte & LAYOUT_V2 != 0 && kind_byte & (FLAG_CONTINUES << FLAGS_SHIFT) != 0
    })
}

/// Like [`decode`], also returning the record's encoded length (which depends on its format, so
/// scans step with this, not with [`Record::encoded_len`]).
// Inlined into its callers (replay's checking loop above all): returned through memory, the
// result's tail (the kind byte and the padding after it) was copied with overlapping 4-byte
// moves that defeat store-to-load forwarding, a stall per record on each move.
#[inline(always)]
pub fn decode_sized(bytes: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    let header = read_header(bytes)?;
    let len = header.len;
    if bytes.len() < len {
        return Err(DecodeError::Truncated {
            needed: len,
            available: bytes.len(),
        });
    }
    let stored = u32_at(bytes, RECORD_CRC_OFFSET);
    let computed = crc32(&bytes[RECORD_KIND_OFFSET..len]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let key_range = header.header_len..header.header_len + header.key_len;
    let value_range: Range<usize> = key_range.end..key_range.end + header.value_len;
    let (fields_end, refresh_cap_millis) = if header.refresh_cap {
        let at = len - REFRESH_CAP_BYTES;
        let mut cap = [0u8; 8];
        cap[..REFRESH_CAP_BYTES].copy_from_slice(&bytes[at..len]);
        (at, u64::from_le_bytes(cap))
    } else {
        (len, 0)
    };
    if header.refresh_cap && refresh_cap_millis == 0 {
        // The encoder marks only a cap it writes, and never writes 0 ("no cap").
        return Err(DecodeError::BadLength("refresh cap"));
    }
    let fingerprint = if value_range.end == fields_end {
        &[][..]
    } else {
        &bytes[value_range.end + 1..fields_end]
    };
    let record = Record {
        kind: header.kind,
        key: &bytes[key_range],
        value: &bytes[value_range],
        expires_at_millis: header.expires_at_millis(bytes),
        fingerprint,
        refresh_cap_millis,
    };
    Ok((record, len))
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

/// Encodes the header of segment `segment_id` in the format this build writes.
pub fn encode_segment_header(segment_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    encode_segment_header_version(segment_id, FORMAT_VERSION)
}

/// Encodes a segment header naming `version` (older versions: for tests of upgrades).
pub fn encode_segment_header_version(segment_id: u64, version: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    header[HEADER_VERSION_OFFSET..HEADER_RESERVED_OFFSET].copy_from_slice(&version.to_le_bytes());
    header[HEADER_SEGMENT_ID_OFFSET..HEADER_RESERVED2_OFFSET]
        .copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32fast::hash(&header[..HEADER_CRC_OFFSET]);
    header[HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment id it names.
    pub segment_id: u64,
    /// The format version of the build that created the segment (1 or 2).
    pub version: u32,
}

/// Decodes a segment header of a version this build reads.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
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
    if !(FORMAT_VERSION_1..=FORMAT_VERSION).contains(&version) {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    Ok(SegmentHeader {
        segment_id: u64_at(bytes, HEADER_SEGMENT_ID_OFFSET),
        version,
    })
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

    /// The cached hasher gives `crc32fast::hash`'s value at every length (short ones take the
    /// table path, long ones the carry-less multiply), call after call.
    #[test]
    fn the_cached_hasher_computes_the_standard_crc() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, 15, 16, 28, 47, 63, 64, 127, 128, 129, 500, 1000] {
            assert_eq!(
                crc32(&bytes[..len]),
                crc32fast::hash(&bytes[..len]),
                "{len} bytes"
            );
            assert_eq!(
                crc32(&bytes[..len]),
                crc32fast::hash(&bytes[..len]),
                "{len} again"
            );
        }
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "the CRC-32 check value");
    }

    #[test]
    fn zero_filled_bytes_never_decode() {
        let zeros = [0u8; 256];
        assert_eq!(decode(&zeros), Err(DecodeError::BadKind(0)));
    }

    #[test]
    fn the_format_2_header_is_15_bytes_and_a_16_byte_entry_takes_47() {
        let record = Record {
            kind: RecordKind::Insert,
            key: &[1; 16],
            value: &[2; 16],
            expires_at_millis: 1_800_000_000_000,
            fingerprint: &[],
            refresh_cap_millis: 0,
        };
        let mut bytes = Vec::new();
        encode_into(&mut bytes, &record);
        assert_eq!(bytes.len(), 47);
        assert_eq!(bytes[4], 0x81, "layout mark, no flags, kind 1");
    }

    #[test]
    fn seals_and_groups_round_trip() {
        let seal = encode_seal(4096);
        assert_eq!(seal.len(), SEAL_RECORD_LEN);
        assert_eq!(seal_length(&decode(&seal).unwrap()), Some(4096));
        let old = encode_seal_v1(4096);
        assert_eq!(old.len(), seal_record_len(FORMAT_VERSION_1));
        assert_eq!(seal_length(&decode(&old).unwrap()), Some(4096));
        let mut group = Vec::new();
        encode_group(&mut group, 300, 4);
        assert_eq!(group.len(), GROUP_RECORD_LEN);
        assert_eq!(group_extent(&decode(&group).unwrap()), Some((300, 4)));
        // The fixed-size encoder gives exactly the general encoder's bytes.
        for (body_len, records) in [(0, 0), (300, 4), (0x0102_0304, 7), (u32::MAX, u32::MAX)] {
            let value = [body_len.to_le_bytes(), records.to_le_bytes()].concat();
            let mut general = Vec::new();
            encode_into(
                &mut general,
                &Record {
                    kind: RecordKind::Group,
                    key: GROUP_KEY,
                    value: &value,
                    expires_at_millis: 0,
                    fingerprint: &[],
                    refresh_cap_millis: 0,
                },
            );
            let mut fixed = vec![0xaa];
            encode_group(&mut fixed, body_len, records);
            assert_eq!(
                &fixed[1..],
                &general[..],
                "body {body_len}, records {records}"
            );
        }
    }

    #[test]
    fn a_refresh_cap_takes_6_bytes_after_the_fingerprint_and_zero_is_refused() {
        let record = Record {
            kind: RecordKind::Insert,
            key: &[1; 16],
            value: &[2; 16],
            expires_at_millis: 1_800_000_000_000,
            fingerprint: b"fp",
            refresh_cap_millis: 1_800_000_360_000,
        };
        let mut bytes = Vec::new();
        encode_into(&mut bytes, &record);
        assert_eq!(bytes.len(), 47 + 3 + 6);
        assert_eq!(bytes[4], 0x81 | 0x30, "layout mark, both flags, kind 1");
        assert_eq!(decode(&bytes), Ok(record));
        // A cap of 0 is never written: a record announcing one is refused.
        let cap = bytes.len() - 6;
        bytes[cap..].fill(0);
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::BadLength("refresh cap")));
        // Format 1 has no such flag.
        let mut old = Vec::new();
        encode_v1_into(
            &mut old,
            &Record {
                refresh_cap_millis: 0,
                ..record
            },
        );
        old[5] |= 0x02;
        assert_eq!(decode(&old), Err(DecodeError::BadFlags(0x03)));
    }

    #[test]
    fn format_1_never_had_the_new_kinds() {
        let mut bytes = Vec::new();
        encode_v1_into(
            &mut bytes,
            &Record {
                kind: RecordKind::Insert,
                key: b"k",
                value: b"v",
                expires_at_millis: 1,
                fingerprint: &[],
                refresh_cap_millis: 0,
            },
        );
        bytes[4] = RecordKind::StatePut as u8;
        assert_eq!(decode(&bytes), Err(DecodeError::BadKind(5)));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_segment_header(42);
        assert_eq!(
            decode_segment_header(&header),
            Ok(SegmentHeader {
                segment_id: 42,
                version: FORMAT_VERSION
            })
        );
        let old = encode_segment_header_version(7, FORMAT_VERSION_1);
        assert_eq!(decode_segment_header(&old).map(|h| h.version), Ok(1));
        let future = encode_segment_header_version(7, FORMAT_VERSION + 1);
        assert_eq!(
            decode_segment_header(&future),
            Err(HeaderError::UnsupportedVersion(FORMAT_VERSION + 1))
        );
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
            expires in 0..=NEVER_EXPIRES,
            kind in 1u8..=9,
            fingerprint in proptest::collection::vec(any::<u8>(), 0..=MAX_FINGERPRINT_BYTES),
            cap in prop_oneof![Just(0u64), 1..=NEVER_EXPIRES],
        ) {
            let kind = RecordKind::from_byte(kind).unwrap();
            let record = Record { kind, key: &key, value: &value, expires_at_millis: expires, fingerprint: &fingerprint, refresh_cap_millis: cap };
            let mut bytes = vec![0xAA];
            encode_into(&mut bytes, &record);
            prop_assert_eq!(decode(&bytes[1..]), Ok(record));
            prop_assert_eq!(peek_len(&bytes[1..]), Ok(record.encoded_len()));
            prop_assert_eq!(decode_sized(&bytes[1..]).map(|(_, len)| len), Ok(record.encoded_len()));
        }

        #[test]
        fn format_1_records_still_decode(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            value in proptest::collection::vec(any::<u8>(), 0..128),
            expires in any::<u64>(),
            kind in 1u8..=4,
            fingerprint in proptest::collection::vec(any::<u8>(), 0..=MAX_FINGERPRINT_BYTES),
        ) {
            let kind = RecordKind::from_byte(kind).unwrap();
            let record = Record { kind, key: &key, value: &value, expires_at_millis: expires, fingerprint: &fingerprint, refresh_cap_millis: 0 };
            let mut bytes = Vec::new();
            encode_v1_into(&mut bytes, &record);
            prop_assert_eq!(bytes.len(), record.encoded_len() + V1_RECORD_HEADER_LEN - RECORD_HEADER_LEN);
            prop_assert_eq!(decode_sized(&bytes), Ok((record, bytes.len())));
            prop_assert_eq!(peek_len(&bytes), Ok(bytes.len()));
        }

        #[test]
        fn deadlines_past_the_48_bit_range_are_stored_as_never(expires in NEVER_EXPIRES..) {
            let record = Record { kind: RecordKind::Insert, key: b"k", value: b"v", expires_at_millis: expires, fingerprint: &[], refresh_cap_millis: 0 };
            let mut bytes = Vec::new();
            encode_into(&mut bytes, &record);
            prop_assert_eq!(decode(&bytes).unwrap().expires_at_millis, NEVER_EXPIRES);
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            key in proptest::collection::vec(any::<u8>(), 1..32),
            value in proptest::collection::vec(any::<u8>(), 0..32),
            bit in any::<prop::sample::Index>(),
        ) {
            let record = Record { kind: RecordKind::Insert, key: &key, value: &value, expires_at_millis: 7, fingerprint: b"fp", refresh_cap_millis: 7 };
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
