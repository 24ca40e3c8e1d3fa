//! The `record` target: the codec of `idem::record`, both record layouts.
//!
//! Layout 2 (of formats 2 and 3; this build writes format 3) has a 15-byte record header: crc
//! u32, one byte packing the layout mark (bit 7), the flags (bits 4..=6) and the kind (bits
//! 0..=3: 1..=9), key_len u16, value_len u16, expires_at_ms u48; after key, value and
//! fingerprint, flag bit 1 (byte 4's bit 5) announces a 6-byte refresh cap (a deadline, never
//! 0); flag bit 2 (byte 4's bit 6) is the continuation flag of format 3's groups (the record
//! decoder accepts it; whether a segment may hold it is recovery's to judge). Format 1 (written by older builds, still read) has a 20-byte
//! header: crc u32, kind u8 (1..=4, bit 7 clear), flags u8, key_len u16, value_len u32 (at most
//! 64 KiB), expires_at_ms u64. The same decoder reads both, told apart by bit 7 of byte 4.
//!
//! Properties checked on every input:
//! 1. Decoding arbitrary bytes (at the start and at a few offsets) never panics, and every answer
//!    is exactly what an independent reading of the layout ([`expected_decode`]) says: the same
//!    error with the same fields, or the same record and length. A decoded record re-encodes to
//!    exactly the bytes it was decoded from with the encoder of its layout (`encode_group_member`
//!    with its continuation flag, or `encode_v1_into`); `decode`, `decode_sized` and `peek_len`
//!    agree, and `continues_group` reads the flag.
//! 2. An arbitrary valid record of either layout (every kind of it, lengths up to every limit,
//!    deadlines around the 48-bit limit) encodes and decodes back to itself (format 2 storing a
//!    deadline past `NEVER_EXPIRES` as it) amid junk; every truncation fails as `Truncated`; a
//!    flipped bit that keeps the record's length is always detected; records of both layouts
//!    back to back are stepped through by `decode_sized`'s lengths.
//! 3. Seals of both formats vouch for their length; group records round-trip through
//!    `encode_group`/`group_extent`, and `group_extent`/`position_value`/`seal_length` answer only
//!    for well-formed records of their kind.
//! 4. Segment headers: decoding arbitrary bytes never panics and agrees with the layout; headers
//!    of versions 1 to 3 round-trip, every other version is `UnsupportedVersion`.

use arbitrary::Unstructured;
use idem::record::{
    continues_group, decode, decode_segment_header, decode_sized, encode_group,
    encode_group_member, encode_into, encode_padding, encode_seal, encode_seal_v1,
    encode_segment_header, encode_segment_header_version, encode_v1_into, encoded_len,
    group_extent, peek_len, position_value, seal_length, seal_record_len, DecodeError, HeaderError,
    Record, RecordKind, SegmentHeader, FORMAT_VERSION, FORMAT_VERSION_1, FORMAT_VERSION_2,
    GROUP_KEY, GROUP_RECORD_LEN, MAX_FINGERPRINT_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES,
    MIN_PADDING_LEN, NEVER_EXPIRES, PADDING_KEY, RECORD_HEADER_LEN, SEAL_KEY, SEAL_RECORD_LEN,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC, V1_SEAL_RECORD_LEN,
};

/// Bytes of a format-1 record header.
pub const V1_HEADER_LEN: usize = 20;
/// The largest value of a format-1 record.
pub const V1_MAX_VALUE_BYTES: usize = 64 * 1024;
/// Flags bit 0: a fingerprint (length byte, then bytes) follows the value.
const FLAG_FINGERPRINT: u8 = 0x01;
/// Flags bit 1 (layout 2 only): a 6-byte refresh cap ends the record.
const FLAG_REFRESH_CAP: u8 = 0x02;
/// Flags bit 2 (layout 2 only): the next record belongs to the same group (format 3).
const FLAG_CONTINUES: u8 = 0x04;
/// Bit 7 of byte 4: the format-2 layout.
const LAYOUT_V2: u8 = 0x80;

/// Every kind, by its number.
pub const KINDS: [RecordKind; 10] = [
    RecordKind::Insert,
    RecordKind::Remove,
    RecordKind::Claim,
    RecordKind::Seal,
    RecordKind::StatePut,
    RecordKind::StateRemove,
    RecordKind::Position,
    RecordKind::Group,
    RecordKind::Failure,
    RecordKind::Padding,
];

/// The kind numbered `n` (1..=10).
fn kind_of(n: u8) -> Option<RecordKind> {
    KINDS.get(usize::from(n).checked_sub(1)?).copied()
}

/// Runs every check on one input.
pub fn run(data: &[u8]) {
    check_raw_decode(data);
    // A few more start offsets, so a record embedded after junk is reached too.
    for start in [1, 4, 15, 20, 32] {
        if data.len() > start {
            check_raw_decode(&data[start..]);
        }
    }
    check_raw_header(data);
    let mut u = Unstructured::new(data);
    if let Ok(spec) = RecordSpec::from_unstructured(&mut u) {
        check_round_trip(&spec, &mut u);
        if let Ok(other) = RecordSpec::from_unstructured(&mut u) {
            check_scan(&[&spec, &other]);
        }
    }
    let id = u.arbitrary::<u64>().unwrap_or(0);
    let version = u.arbitrary::<u32>().unwrap_or(0);
    check_headers(id, version);
    check_seals_and_groups(id, &mut u);
}

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A record as the layout describes it, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Format 2 (else 1).
    pub v2: bool,
    /// Its kind.
    pub kind: RecordKind,
    /// Its key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
    /// Its deadline.
    pub expires_at_millis: u64,
    /// Its fingerprint (empty: none).
    pub fingerprint: Vec<u8>,
    /// Its refresh cap (0: none).
    pub refresh_cap_millis: u64,
    /// Bytes it occupies.
    pub len: usize,
}

/// What `decode_sized` must answer for `data`, read from the layouts (FORMAT.md) without the
/// engine's code: the header's length first (`Truncated` if short), then kind, flags, key length,
/// value length, the fingerprint length byte (`Truncated` if missing, `BadLength` if out of
/// range), the whole record (`Truncated`), then the CRC over bytes 4..len.
pub fn expected_decode(data: &[u8]) -> Result<Expected, DecodeError> {
    let truncated = |needed: usize| DecodeError::Truncated {
        needed,
        available: data.len(),
    };
    // Without the kind byte the layout is unknown: the shorter (format-2) header is asked for.
    let Some(&kind_byte) = data.get(4) else {
        return Err(truncated(RECORD_HEADER_LEN));
    };
    let v2 = kind_byte & LAYOUT_V2 != 0;
    let header_len = if v2 { RECORD_HEADER_LEN } else { V1_HEADER_LEN };
    if data.len() < header_len {
        return Err(truncated(header_len));
    }
    let (kind, flags, key_len, value_len, max_value, expires_at_millis) = if v2 {
        let kind = kind_of(kind_byte & 0x0F).ok_or(DecodeError::BadKind(kind_byte))?;
        let mut deadline = [0u8; 8];
        deadline[..6].copy_from_slice(&data[9..15]);
        (
            kind,
            (kind_byte & 0x70) >> 4,
            u16_at(data, 5),
            u16_at(data, 7),
            usize::from(u16::MAX),
            u64::from_le_bytes(deadline),
        )
    } else {
        let kind = kind_of(kind_byte)
            .filter(|kind| (*kind as u8) <= 4)
            .ok_or(DecodeError::BadKind(kind_byte))?;
        (
            kind,
            data[5],
            u16_at(data, 6),
            u32_at(data, 8) as usize,
            V1_MAX_VALUE_BYTES,
            u64::from_le_bytes(data[12..20].try_into().expect("8 bytes")),
        )
    };
    let known = if v2 {
        FLAG_FINGERPRINT | FLAG_REFRESH_CAP | FLAG_CONTINUES
    } else {
        FLAG_FINGERPRINT
    };
    if flags & !known != 0 {
        return Err(DecodeError::BadFlags(flags));
    }
    if key_len == 0 || key_len > MAX_KEY_BYTES {
        return Err(DecodeError::BadLength("key length"));
    }
    if value_len > max_value {
        return Err(DecodeError::BadLength("value length"));
    }
    let value_end = header_len + key_len + value_len;
    let mut len = value_end;
    if flags & FLAG_FINGERPRINT != 0 {
        let Some(&fingerprint_len) = data.get(value_end) else {
            return Err(truncated(value_end + 1));
        };
        let fingerprint_len = usize::from(fingerprint_len);
        if fingerprint_len == 0 || fingerprint_len > MAX_FINGERPRINT_BYTES {
            return Err(DecodeError::BadLength("fingerprint length"));
        }
        len += 1 + fingerprint_len;
    }
    let fields_end = len;
    if flags & FLAG_REFRESH_CAP != 0 {
        len += 6;
    }
    if data.len() < len {
        return Err(truncated(len));
    }
    let stored = u32_at(data, 0);
    let computed = crc32fast::hash(&data[4..len]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let mut refresh_cap = [0u8; 8];
    refresh_cap[..6].copy_from_slice(&data[len - 6..len]);
    let refresh_cap_millis = if flags & FLAG_REFRESH_CAP != 0 {
        u64::from_le_bytes(refresh_cap)
    } else {
        0
    };
    if flags & FLAG_REFRESH_CAP != 0 && refresh_cap_millis == 0 {
        return Err(DecodeError::BadLength("refresh cap"));
    }
    let fingerprint = if flags & FLAG_FINGERPRINT != 0 {
        data[value_end + 1..fields_end].to_vec()
    } else {
        Vec::new()
    };
    Ok(Expected {
        v2,
        kind,
        key: data[header_len..header_len + key_len].to_vec(),
        value: data[header_len + key_len..value_end].to_vec(),
        expires_at_millis,
        fingerprint,
        refresh_cap_millis,
        len,
    })
}

/// Property 1.
pub fn check_raw_decode(data: &[u8]) {
    let sized = decode_sized(data);
    let peeked = peek_len(data);
    // Error messages are part of the API (they go into reports): they must not panic either.
    if let Err(error) = &sized {
        let _ = error.to_string();
    }
    assert_eq!(
        decode(data),
        sized.clone().map(|(record, _)| record),
        "decode and decode_sized disagree"
    );
    let expected = expected_decode(data);
    match (&expected, &sized) {
        (Ok(want), Ok((record, len))) => {
            assert_eq!(*len, want.len, "decode_sized's length");
            assert_eq!(
                (
                    record.kind,
                    record.key,
                    record.value,
                    record.expires_at_millis,
                    record.fingerprint,
                    record.refresh_cap_millis
                ),
                (
                    want.kind,
                    &want.key[..],
                    &want.value[..],
                    want.expires_at_millis,
                    &want.fingerprint[..],
                    want.refresh_cap_millis
                ),
                "the decoded record is not what its bytes say"
            );
            assert_eq!(peeked, Ok(*len), "peek_len disagrees with decode_sized");
            // The layouts differ by exactly their headers.
            let header_len = if want.v2 {
                RECORD_HEADER_LEN
            } else {
                V1_HEADER_LEN
            };
            assert_eq!(*len, record.encoded_len() + header_len - RECORD_HEADER_LEN);
            if want.v2 {
                assert!(record.expires_at_millis <= NEVER_EXPIRES);
            }
            let mut again = Vec::with_capacity(*len);
            let continues = want.v2 && data[4] & (FLAG_CONTINUES << 4) != 0;
            assert_eq!(continues_group(data), continues, "continues_group");
            if want.v2 {
                encode_group_member(&mut again, record, continues);
            } else {
                encode_v1_into(&mut again, record);
            }
            assert_eq!(
                again,
                &data[..*len],
                "a decoded record (format {}) does not re-encode to its bytes",
                if want.v2 { 2 } else { 1 }
            );
            assert_eq!(decode(&data[..*len]).as_ref(), Ok(record));
            assert!(matches!(
                decode(&data[..len - 1]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        (Err(want), Err(got)) => {
            assert_eq!(
                got, want,
                "decode_sized names another fault than the bytes have"
            )
        }
        (want, got) => panic!("decode_sized answered {got:?}, the bytes say {want:?}"),
    }
    // peek_len checks everything but the length of the whole record and the CRC.
    match (&expected, &peeked) {
        (Ok(want), _) => assert_eq!(peeked, Ok(want.len)),
        (Err(DecodeError::BadChecksum { .. }), Ok(len)) => assert!(*len <= data.len()),
        (Err(DecodeError::Truncated { needed, .. }), Ok(len)) => assert_eq!(len, needed),
        (Err(want), got) => assert_eq!(got.as_ref(), Err(want), "peek_len"),
    }
}

/// Property 4 on arbitrary bytes: the answer is exactly what the header layout says.
pub fn check_raw_header(data: &[u8]) {
    let got = decode_segment_header(data);
    let want = if data.len() < SEGMENT_HEADER_LEN {
        Err(HeaderError::Truncated)
    } else if data[..8] != SEGMENT_MAGIC {
        Err(HeaderError::BadMagic)
    } else if u32_at(data, 28) != crc32fast::hash(&data[..28]) {
        Err(HeaderError::BadChecksum)
    } else {
        match u32_at(data, 8) {
            version @ FORMAT_VERSION_1..=FORMAT_VERSION => Ok(SegmentHeader {
                segment_id: u64::from_le_bytes(data[16..24].try_into().expect("8 bytes")),
                version,
            }),
            version => Err(HeaderError::UnsupportedVersion(version)),
        }
    };
    assert_eq!(got, want, "decode_segment_header");
    if let Ok(header) = got {
        let reserved_zero = data[12..16].iter().chain(&data[24..28]).all(|&b| b == 0);
        if reserved_zero {
            assert_eq!(
                encode_segment_header_version(header.segment_id, header.version)[..],
                data[..SEGMENT_HEADER_LEN]
            );
        }
    }
}

/// Property 4 on encoded headers.
fn check_headers(id: u64, version: u32) {
    assert_eq!(
        decode_segment_header(&encode_segment_header(id)),
        Ok(SegmentHeader {
            segment_id: id,
            version: FORMAT_VERSION
        })
    );
    for version in [
        FORMAT_VERSION_1,
        FORMAT_VERSION_2,
        FORMAT_VERSION,
        0,
        FORMAT_VERSION + 1,
        version,
    ] {
        let header = encode_segment_header_version(id, version);
        check_raw_header(&header);
        let want = if (FORMAT_VERSION_1..=FORMAT_VERSION).contains(&version) {
            Ok(SegmentHeader {
                segment_id: id,
                version,
            })
        } else {
            Err(HeaderError::UnsupportedVersion(version))
        };
        assert_eq!(decode_segment_header(&header), want, "version {version}");
    }
}

/// Property 3.
fn check_seals_and_groups(id: u64, u: &mut Unstructured<'_>) {
    // A seal vouches for the length it was made for, in both formats.
    for (seal, version) in [
        (encode_seal(id), FORMAT_VERSION),
        (encode_seal_v1(id), FORMAT_VERSION_1),
    ] {
        assert_eq!(seal.len(), seal_record_len(version));
        check_raw_decode(&seal);
        let (record, len) = decode_sized(&seal).expect("a seal decodes");
        assert_eq!(len, seal.len());
        assert_eq!((record.kind, record.key), (RecordKind::Seal, SEAL_KEY));
        assert_eq!(record.expires_at_millis, 0);
        assert_eq!(seal_length(&record), Some(id));
        assert_eq!(position_value(&record), None);
        assert_eq!(group_extent(&record), None);
    }
    assert_eq!(seal_record_len(FORMAT_VERSION), SEAL_RECORD_LEN);
    assert_eq!(seal_record_len(FORMAT_VERSION_1), V1_SEAL_RECORD_LEN);
    assert_eq!(encode_seal_v1(id)[4], RecordKind::Seal as u8);

    // A group record announces its body's length and record count.
    let body_len = u.arbitrary::<u32>().unwrap_or(0);
    let count = u.arbitrary::<u32>().unwrap_or(0);
    let mut group = vec![0x5A; usize::from(u.arbitrary::<u8>().unwrap_or(0) % 4)];
    let prefix = group.len();
    encode_group(&mut group, body_len, count);
    let group = &group[prefix..];
    assert_eq!(group.len(), GROUP_RECORD_LEN);
    check_raw_decode(group);
    let (record, len) = decode_sized(group).expect("a group record decodes");
    assert_eq!(len, GROUP_RECORD_LEN);
    assert_eq!((record.kind, record.key), (RecordKind::Group, GROUP_KEY));
    assert_eq!(group_extent(&record), Some((body_len, count)));
    assert_eq!(seal_length(&record), None);
    assert_eq!(position_value(&record), None);

    // A padding record of any length in its range is exactly that long and decodes as
    // padding: key `p`, a value of zeros, no deadline.
    let padding_len = MIN_PADDING_LEN + usize::from(u.arbitrary::<u16>().unwrap_or(0)) % 600;
    let mut padding = Vec::new();
    encode_padding(&mut padding, padding_len);
    assert_eq!(padding.len(), padding_len);
    check_raw_decode(&padding);
    let (record, len) = decode_sized(&padding).expect("a padding record decodes");
    assert_eq!(len, padding_len);
    assert_eq!(
        (record.kind, record.key),
        (RecordKind::Padding, PADDING_KEY)
    );
    assert!(record.value.iter().all(|&b| b == 0));
    assert_eq!(record.expires_at_millis, 0);

    // The helpers answer for well-formed records of their kind only.
    let key_choice = u.arbitrary::<u8>().unwrap_or(0);
    let value_len = usize::from(u.arbitrary::<u8>().unwrap_or(8) % 12);
    let value: Vec<u8> = (0..value_len as u8).collect();
    let key: &[u8] = match key_choice % 3 {
        0 => GROUP_KEY,
        1 => SEAL_KEY,
        _ => b"source-1",
    };
    for kind in KINDS {
        let record = Record {
            kind,
            key,
            value: &value,
            expires_at_millis: 0,
            fingerprint: &[],
            refresh_cap_millis: 0,
        };
        let eight = value.len() == 8;
        let word = |n: usize| u32::from_le_bytes(value[n..n + 4].try_into().expect("4 bytes"));
        let eight_bytes = || u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
        assert_eq!(
            group_extent(&record),
            (kind == RecordKind::Group && key == GROUP_KEY && eight).then(|| (word(0), word(4)))
        );
        assert_eq!(
            seal_length(&record),
            (kind == RecordKind::Seal && key == SEAL_KEY && eight).then(eight_bytes)
        );
        assert_eq!(
            position_value(&record),
            (kind == RecordKind::Position && eight).then(eight_bytes)
        );
        assert_eq!(
            kind.is_state(),
            matches!(
                kind,
                RecordKind::StatePut | RecordKind::StateRemove | RecordKind::Position
            )
        );
    }
}

/// A valid record, owned, and the layout to encode it in.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// Encoded by `encode_v1_into` (kinds 1..=4 only) instead of `encode_into`.
    pub v1: bool,
    /// Its kind.
    pub kind: RecordKind,
    /// 1..=MAX_KEY_BYTES bytes.
    pub key: Vec<u8>,
    /// Up to the layout's limit.
    pub value: Vec<u8>,
    /// The deadline.
    pub expires_at_millis: u64,
    /// 0..=MAX_FINGERPRINT_BYTES bytes (none: no fingerprint).
    pub fingerprint: Vec<u8>,
    /// The refresh cap (0: none; layout 2 only).
    pub refresh_cap_millis: u64,
    /// Encoded with the continuation flag (layout 2 only: a record of a format-3 group that is
    /// not its last).
    pub continues: bool,
}

impl RecordSpec {
    /// Builds a valid record; lengths span the whole legal range of its layout, including both
    /// limits; deadlines cluster around the 48-bit limit of format 2.
    pub fn from_unstructured(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let choice = u.arbitrary::<u8>()?;
        // One record in four is of format 1, which knew the first four kinds.
        let v1 = choice & 0xC0 == 0xC0;
        let kind = if v1 {
            KINDS[usize::from(choice % 4)]
        } else {
            KINDS[usize::from(choice % 8)]
        };
        let max_value = if v1 {
            V1_MAX_VALUE_BYTES
        } else {
            MAX_VALUE_BYTES
        };
        let key_len = match u.arbitrary::<u8>()? {
            0 => MAX_KEY_BYTES,
            1 => 1,
            n => usize::from(n % 64) + 1,
        };
        let value_len = match u.arbitrary::<u8>()? {
            0 => max_value,
            1 => 0,
            2 => max_value - 1,
            3 => 8,
            n => usize::from(n % 128),
        };
        let fingerprint_len = match u.arbitrary::<u8>()? {
            0 => MAX_FINGERPRINT_BYTES,
            n => usize::from(n % 4),
        };
        let key = fill(u, key_len);
        let value = fill(u, value_len);
        let fingerprint = fill(u, fingerprint_len);
        let expires_at_millis = match u.arbitrary::<u8>()? {
            0 => NEVER_EXPIRES,
            1 => NEVER_EXPIRES - 1,
            2 => NEVER_EXPIRES + 1,
            3 => u64::MAX,
            4 => 0,
            5 => 1 << 48,
            _ => u.arbitrary()?,
        };
        // Drawn last, so that earlier inputs keep their meaning; most records have none.
        let refresh_cap_millis = match u.arbitrary::<u8>().unwrap_or(0) {
            _ if v1 => 0,
            0..=191 => 0,
            192 => 1,
            193 => NEVER_EXPIRES,
            194 => NEVER_EXPIRES + 1,
            195 => u64::MAX,
            _ => u.arbitrary::<u64>().unwrap_or(1).max(1),
        };
        // Drawn after it, for the same reason.
        let continues = !v1 && u.arbitrary::<u8>().unwrap_or(0) >= 160;
        Ok(RecordSpec {
            v1,
            kind,
            key,
            value,
            expires_at_millis,
            fingerprint,
            refresh_cap_millis,
            continues,
        })
    }

    /// The borrowed record.
    pub fn record(&self) -> Record<'_> {
        Record {
            kind: self.kind,
            key: &self.key,
            value: &self.value,
            expires_at_millis: self.expires_at_millis,
            fingerprint: &self.fingerprint,
            refresh_cap_millis: self.refresh_cap_millis,
        }
    }

    /// Appends its encoding in its layout.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.v1 {
            encode_v1_into(out, &self.record());
        } else if self.continues {
            encode_group_member(out, &self.record(), true);
        } else {
            encode_into(out, &self.record());
        }
    }

    /// The record decoding must give back: format 2 stores a deadline past `NEVER_EXPIRES` as it.
    pub fn decoded(&self) -> Record<'_> {
        let mut record = self.record();
        if !self.v1 {
            record.expires_at_millis = record.expires_at_millis.min(NEVER_EXPIRES);
            record.refresh_cap_millis = record.refresh_cap_millis.min(NEVER_EXPIRES);
        }
        record
    }

    /// Bytes its encoding occupies.
    pub fn encoded_len(&self) -> usize {
        let header = if self.v1 {
            V1_HEADER_LEN
        } else {
            RECORD_HEADER_LEN
        };
        let fingerprint = if self.fingerprint.is_empty() {
            0
        } else {
            1 + self.fingerprint.len()
        };
        let refresh_cap = if self.refresh_cap_millis != 0 { 6 } else { 0 };
        header + self.key.len() + self.value.len() + fingerprint + refresh_cap
    }
}

/// `len` bytes taken from `u` while it lasts, then a fixed pattern.
fn fill(u: &mut Unstructured<'_>, len: usize) -> Vec<u8> {
    let take = len.min(u.len());
    let mut bytes = u.bytes(take).map(<[u8]>::to_vec).unwrap_or_default();
    bytes.extend((bytes.len()..len).map(|i| (i * 31 + 7) as u8));
    bytes
}

/// Property 2.
fn check_round_trip(spec: &RecordSpec, u: &mut Unstructured<'_>) {
    let prefix = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 8);
    let mut bytes = vec![0xA5; prefix];
    spec.encode(&mut bytes);
    let len = bytes.len() - prefix;
    assert_eq!(len, spec.encoded_len(), "encoded length");
    let record = spec.decoded();
    if !spec.v1 {
        let refresh_cap = u8::from(spec.refresh_cap_millis != 0);
        assert_eq!(
            len,
            encoded_len(spec.key.len(), spec.value.len(), spec.fingerprint.len())
                + 6 * usize::from(refresh_cap)
        );
        assert_eq!(len, record.encoded_len());
        let flags = (u8::from(!spec.fingerprint.is_empty())
            | refresh_cap << 1
            | u8::from(spec.continues) << 2)
            << 4;
        assert_eq!(bytes[prefix + 4], LAYOUT_V2 | flags | spec.kind as u8);
    } else {
        assert_eq!(bytes[prefix + 4], spec.kind as u8);
        assert_eq!(bytes[prefix + 5], u8::from(!spec.fingerprint.is_empty()));
    }
    let suffix = u.arbitrary::<u8>().unwrap_or(0) % 8;
    bytes.extend((0..suffix).map(|i| i.wrapping_mul(37)));
    let encoded = &bytes[prefix..];
    assert_eq!(
        decode_sized(encoded),
        Ok((record, len)),
        "round trip with trailing junk"
    );
    assert_eq!(peek_len(encoded), Ok(len));
    assert_eq!(decode(&encoded[..len]), Ok(record));
    check_raw_decode(encoded);
    let random_cut = u.arbitrary::<u16>().unwrap_or(0) as usize % len;
    for cut in [
        0,
        1,
        4,
        5,
        RECORD_HEADER_LEN - 1,
        RECORD_HEADER_LEN,
        V1_HEADER_LEN - 1,
        V1_HEADER_LEN,
        len - 1,
        random_cut,
    ] {
        if cut < len {
            assert!(
                matches!(decode(&encoded[..cut]), Err(DecodeError::Truncated { .. })),
                "a record cut to {cut} of {len} bytes must be Truncated"
            );
            check_raw_decode(&encoded[..cut]);
        }
    }
    // One flipped bit. CRC-32 detects every single-bit error in data of a fixed length; a flip in
    // a length field or the layout mark changes which bytes the CRC covers, so there only "no
    // panic, and whatever decodes is what its bytes say" is promised (check_raw_decode).
    let bit = u.arbitrary::<u32>().unwrap_or(0) as usize % (len * 8);
    let mut flipped = encoded[..len].to_vec();
    flipped[bit / 8] ^= 1 << (bit % 8);
    check_raw_decode(&flipped);
    if let Ok((_, other_len)) = decode_sized(&flipped) {
        assert_ne!(
            other_len, len,
            "bit {bit} flipped undetected in a record of {len} bytes"
        );
    }
    // A flip of a deadline bit above the 48 bits of format 2 is not even stored: the record
    // decodes unchanged only when it was saturated anyway.
    if !spec.v1 && spec.expires_at_millis > NEVER_EXPIRES {
        assert_eq!(record.expires_at_millis, NEVER_EXPIRES);
    }
}

/// Records of both layouts back to back: a scan stepping by `decode_sized`'s lengths finds each.
fn check_scan(specs: &[&RecordSpec]) {
    let mut bytes = Vec::new();
    for spec in specs {
        spec.encode(&mut bytes);
    }
    let mut offset = 0;
    for spec in specs {
        let (record, len) = decode_sized(&bytes[offset..]).expect("a record of the scan");
        assert_eq!((record, len), (spec.decoded(), spec.encoded_len()));
        offset += len;
    }
    assert_eq!(offset, bytes.len());
}
