//! Input checks shared by every call: keys, values, TTLs and fingerprints. Invariant: a call
//! validates all of its input before it takes a lock or appends a byte, so bad input changes
//! nothing.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::record::{self, Record, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// The longest TTL accepted: ten years. Retry windows are hours or days; this bound keeps every
/// deadline inside the index's 32-bit seconds.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// With a fingerprint given, a found record must carry the same one.
pub(crate) fn check_fingerprint(record: &Record<'_>, fingerprint: Option<&[u8]>) -> Result<()> {
    match fingerprint {
        // A record stored without a fingerprint cannot be told apart: it is accepted.
        Some(fingerprint)
            if !record.fingerprint.is_empty() && record.fingerprint != fingerprint =>
        {
            Err(Error::FingerprintMismatch {
                key_len: record.key.len(),
            })
        }
        _ => Ok(()),
    }
}

pub(crate) fn validate_fingerprint(fingerprint: &[u8]) -> Result<()> {
    if fingerprint.len() > record::MAX_FINGERPRINT_BYTES {
        return Err(Error::FingerprintTooLarge {
            len: fingerprint.len(),
            max: record::MAX_FINGERPRINT_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

pub(crate) fn validate_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a TTL and returns it in whole milliseconds, rounded up (a 1 ns TTL lives 1 ms).
pub(crate) fn validate_ttl(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::ZeroTtl);
    }
    if ttl > MAX_TTL {
        return Err(Error::TtlTooLarge {
            ttl_secs: ttl.as_secs(),
            max_secs: MAX_TTL.as_secs(),
        });
    }
    // Rounded up to whole milliseconds, in 64-bit arithmetic: `as_nanos` is a u128, and its
    // division is a call to a slow 128-bit divide on every check-or-insert. Whole seconds are
    // whole milliseconds, so only the sub-second part rounds.
    Ok(ttl.as_secs() * 1000 + u64::from(ttl.subsec_nanos().div_ceil(1_000_000)))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A TTL becomes whole milliseconds rounded up (a key never lives shorter than asked), the
    /// same as dividing its nanoseconds, at the edges and at the longest TTL allowed.
    #[test]
    fn a_ttl_is_rounded_up_to_whole_milliseconds() {
        let cases = [
            (Duration::from_nanos(1), 1),
            (Duration::from_nanos(999_999), 1),
            (Duration::from_millis(1), 1),
            (Duration::from_nanos(1_000_001), 2),
            (Duration::new(3, 0), 3_000),
            (Duration::new(3, 1), 3_001),
            (Duration::new(59, 999_999_999), 60_000),
            (MAX_TTL, MAX_TTL.as_secs() * 1000),
        ];
        for (ttl, millis) in cases {
            assert_eq!(validate_ttl(ttl).unwrap(), millis, "{ttl:?}");
            assert_eq!(ttl.as_nanos().div_ceil(1_000_000) as u64, millis, "{ttl:?}");
        }
        assert!(matches!(validate_ttl(Duration::ZERO), Err(Error::ZeroTtl)));
        assert!(matches!(
            validate_ttl(MAX_TTL + Duration::from_nanos(1)),
            Err(Error::TtlTooLarge { .. })
        ));
    }
}
