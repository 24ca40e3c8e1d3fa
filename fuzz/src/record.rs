//! The `record` target: the codec of `idem::record`.
//!
//! Properties checked on every input:
//! 1. Decoding arbitrary bytes (at the start and at a few offsets) never panics, and every answer
//!    agrees with the bytes: an error names what is really wrong there; a decoded record
//!    re-encodes to exactly the bytes it was decoded from, and `peek_len` agrees with it.
//! 2. An arbitrary valid record (built from the same bytes) encodes and decodes back to itself,
//!    surrounded by junk; every truncation of it fails as `Truncated`; a flipped bit that keeps
//!    the record's length is always detected.
//! 3. Segment headers: decoding arbitrary bytes never panics; encode/decode round-trips.

use arbitrary::Unstructured;
use idem::record::{
    decode, decode_segment_header, encode_into, encode_seal, encode_segment_header, encoded_len,
    peek_len, seal_length, DecodeError, HeaderError, Record, RecordKind, FORMAT_VERSION,
    MAX_FINGERPRINT_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, RECORD_HEADER_LEN, SEAL_RECORD_LEN,
    SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};

/// Runs every check on one input.
pub fn run(data: &[u8]) {
    check_raw_decode(data);
    // A few more start offsets, so a record embedded after junk is reached too.
    for start in [1, 4, 20, 32] {
        if data.len() > start {
            check_raw_decode(&data[start..]);
        }
    }
    check_raw_header(data);
    let mut u = Unstructured::new(data);
    if let Ok(spec) = RecordSpec::from_unstructured(&mut u) {
        check_round_trip(&spec, &mut u);
    }
    let id = u.arbitrary::<u64>().unwrap_or(0);
    assert_eq!(decode_segment_header(&encode_segment_header(id)), Ok(id));
    // A seal vouches for the length it was made for.
    let seal = encode_seal(id);
    assert_eq!(seal.len(), SEAL_RECORD_LEN);
    assert_eq!(decode(&seal).ok().as_ref().and_then(seal_length), Some(id));
}

/// Flags bit 0: a fingerprint follows the value (FORMAT.md).
const FLAG_FINGERPRINT: u8 = 0x01;

fn u32_le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

/// Property 1.
pub fn check_raw_decode(data: &[u8]) {
    let decoded = decode(data);
    let peeked = peek_len(data);
    // Error messages are part of the API (they go into reports): they must not panic either.
    if let Err(error) = &decoded {
        let _ = error.to_string();
    }
    match &decoded {
        Ok(record) => {
            let len = record.encoded_len();
            assert_eq!(peeked, Ok(len), "peek_len disagrees with decode");
            assert!(len <= data.len());
            assert!(!record.key.is_empty() && record.key.len() <= MAX_KEY_BYTES);
            assert!(record.value.len() <= MAX_VALUE_BYTES);
            assert!(record.fingerprint.len() <= MAX_FINGERPRINT_BYTES);
            assert_eq!(data[4], record.kind as u8);
            assert_eq!(
                data[5] & FLAG_FINGERPRINT != 0,
                !record.fingerprint.is_empty()
            );
            let mut again = Vec::with_capacity(len);
            encode_into(&mut again, record);
            assert_eq!(
                again,
                &data[..len],
                "a decoded record does not re-encode to its bytes"
            );
            assert_eq!(decode(&data[..len]).as_ref(), Ok(record));
            assert!(matches!(
                decode(&data[..len - 1]),
                Err(DecodeError::Truncated { .. })
            ));
        }
        Err(DecodeError::Truncated { needed, available }) => {
            assert_eq!(*available, data.len());
            assert!(needed > available);
            if data.len() >= RECORD_HEADER_LEN {
                // Either the header announces more bytes than there are, or the fingerprint
                // length byte it announces is missing.
                let missing_fingerprint_len = data[5] & FLAG_FINGERPRINT != 0
                    && peeked
                        == Err(DecodeError::Truncated {
                            needed: *needed,
                            available: *available,
                        });
                assert!(
                    peeked == Ok(*needed) || missing_fingerprint_len,
                    "truncation must be of a valid header"
                );
            } else {
                assert_eq!(*needed, RECORD_HEADER_LEN);
            }
        }
        Err(DecodeError::BadKind(kind)) => {
            assert!(data.len() >= RECORD_HEADER_LEN);
            assert_eq!(*kind, data[4]);
            assert!(![
                RecordKind::Insert as u8,
                RecordKind::Remove as u8,
                RecordKind::Claim as u8,
                RecordKind::Seal as u8
            ]
            .contains(kind));
        }
        Err(DecodeError::BadFlags(flags)) => {
            assert_eq!(*flags, data[5]);
            assert_ne!(*flags & !FLAG_FINGERPRINT, 0);
        }
        Err(DecodeError::BadLength(_)) => {
            let key_len = u16::from_le_bytes([data[6], data[7]]) as usize;
            let value_len = u32_le(&data[8..]) as usize;
            let lengths_bad =
                key_len == 0 || key_len > MAX_KEY_BYTES || value_len > MAX_VALUE_BYTES;
            let fingerprint_len = data
                .get(RECORD_HEADER_LEN + key_len + value_len)
                .map(|&len| usize::from(len));
            let fingerprint_bad = data[5] & FLAG_FINGERPRINT != 0
                && fingerprint_len.is_some_and(|len| len == 0 || len > MAX_FINGERPRINT_BYTES);
            assert!(lengths_bad || fingerprint_bad);
        }
        Err(DecodeError::BadChecksum { stored, computed }) => {
            assert_ne!(stored, computed);
            assert_eq!(*stored, u32_le(data));
            let len = peeked
                .clone()
                .expect("a checksum is only checked after the lengths");
            assert!(len <= data.len());
        }
    }
    // peek_len only fails for reasons decode fails for first.
    if let Err(error) = peeked {
        assert_eq!(decoded, Err(error));
    }
}

/// Property 3 on arbitrary bytes.
pub fn check_raw_header(data: &[u8]) {
    match decode_segment_header(data) {
        Ok(id) => {
            assert!(data.len() >= SEGMENT_HEADER_LEN);
            assert_eq!(data[..8], SEGMENT_MAGIC);
            let reserved_zero = data[12..16].iter().chain(&data[24..28]).all(|&b| b == 0);
            if reserved_zero {
                assert_eq!(encode_segment_header(id)[..], data[..SEGMENT_HEADER_LEN]);
            }
        }
        Err(HeaderError::Truncated) => assert!(data.len() < SEGMENT_HEADER_LEN),
        Err(HeaderError::BadMagic) => assert_ne!(data[..8], SEGMENT_MAGIC),
        Err(HeaderError::BadChecksum) => {}
        Err(HeaderError::UnsupportedVersion(version)) => assert_ne!(version, FORMAT_VERSION),
    }
}

/// A valid record, owned.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// Insert or remove.
    pub kind: RecordKind,
    /// 1..=MAX_KEY_BYTES bytes.
    pub key: Vec<u8>,
    /// 0..=MAX_VALUE_BYTES bytes.
    pub value: Vec<u8>,
    /// The deadline.
    pub expires_at_millis: u64,
    /// 0..=MAX_FINGERPRINT_BYTES bytes (none: no fingerprint).
    pub fingerprint: Vec<u8>,
}

impl RecordSpec {
    /// Builds a valid record; lengths span the whole legal range, including both limits.
    pub fn from_unstructured(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        let kind = match u.arbitrary::<u8>()? % 4 {
            0 => RecordKind::Insert,
            1 => RecordKind::Remove,
            2 => RecordKind::Claim,
            _ => RecordKind::Seal,
        };
        let key_len = match u.arbitrary::<u8>()? {
            0 => MAX_KEY_BYTES,
            1 => 1,
            n => usize::from(n % 64) + 1,
        };
        let value_len = match u.arbitrary::<u8>()? {
            0 => MAX_VALUE_BYTES,
            1 => 0,
            2 => MAX_VALUE_BYTES - 1,
            n => usize::from(n % 128),
        };
        let fingerprint_len = match u.arbitrary::<u8>()? {
            0 => MAX_FINGERPRINT_BYTES,
            n => usize::from(n % 4),
        };
        let key = fill(u, key_len);
        let value = fill(u, value_len);
        let fingerprint = fill(u, fingerprint_len);
        let expires_at_millis = u.arbitrary()?;
        Ok(RecordSpec {
            kind,
            key,
            value,
            expires_at_millis,
            fingerprint,
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
        }
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
    let record = spec.record();
    let prefix = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 8);
    let mut bytes = vec![0xA5; prefix];
    encode_into(&mut bytes, &record);
    let len = bytes.len() - prefix;
    assert_eq!(
        len,
        encoded_len(spec.key.len(), spec.value.len(), spec.fingerprint.len())
    );
    assert_eq!(len, record.encoded_len());
    let suffix = u.arbitrary::<u8>().unwrap_or(0) % 8;
    bytes.extend((0..suffix).map(|i| i.wrapping_mul(37)));
    let encoded = &bytes[prefix..];
    assert_eq!(decode(encoded), Ok(record), "round trip with trailing junk");
    assert_eq!(peek_len(encoded), Ok(len));
    assert_eq!(decode(&encoded[..len]), Ok(record));
    check_raw_decode(encoded);
    for cut in [0, 1, RECORD_HEADER_LEN - 1, RECORD_HEADER_LEN, len - 1] {
        if cut < len {
            assert!(
                matches!(decode(&encoded[..cut]), Err(DecodeError::Truncated { .. })),
                "a record cut to {cut} of {len} bytes must be Truncated"
            );
        }
    }
    // One flipped bit. CRC-32 detects every single-bit error in data of a fixed length; a flip in
    // a length field changes which bytes the CRC covers, so there only "no panic, and whatever
    // decodes re-encodes to its bytes" is promised (check_raw_decode).
    let bit = u.arbitrary::<u32>().unwrap_or(0) as usize % (len * 8);
    let mut flipped = encoded[..len].to_vec();
    flipped[bit / 8] ^= 1 << (bit % 8);
    check_raw_decode(&flipped);
    if let Ok(other) = decode(&flipped) {
        assert_ne!(
            other.encoded_len(),
            len,
            "bit {bit} flipped undetected in a record of {len} bytes"
        );
    }
}
