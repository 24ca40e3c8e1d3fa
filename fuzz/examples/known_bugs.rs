//! Plain-API reproductions of the engine bugs the fuzz targets found (fuzz/README.md, "Known
//! engine bugs"). Each prints what happens; a fixed engine prints `ok` for every line.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example known_bugs`

use std::time::Duration;

use idem::record::{
    encode_into, encode_seal_v1, encode_segment_header, encode_segment_header_version,
    encode_v1_into, Record, RecordKind, FORMAT_VERSION_1,
};
use idem::{Claim, Config, Durability, Error, ManualClock, Outcome, Store};

fn config(clock: &ManualClock) -> Config {
    Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .background_maintenance(false)
}

fn report(name: &str, bug: Option<String>) {
    match bug {
        None => println!("ok    {name}"),
        Some(what) => println!("BUG   {name}: {what}"),
    }
}

/// insert k, checkpoint, remove k, crash (drop without close), open.
fn checkpoint_then_crash() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock)).expect("open");
    store
        .check_or_insert(b"k", Duration::from_secs(60), b"v")
        .expect("insert");
    store.checkpoint().expect("checkpoint");
    assert!(store.remove(b"k").expect("remove"));
    drop(store);
    match Store::open_with(dir.path(), config(&clock)) {
        Ok(store) => match store.get(b"k") {
            Ok(None) => None,
            other => Some(format!("get(k) after reopen = {other:?}, expected None")),
        },
        Err(e) => Some(format!("reopen failed: {e}")),
    }
}

/// A claim made after a reopen in the same millisecond gets the id of one made before it.
fn claim_id_reuse() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let lease = Duration::from_secs(30);
    let store = Store::open_with(dir.path(), config(&clock)).expect("open");
    let Claim::Acquired(old) = store.claim(b"k", lease).expect("claim") else {
        return Some("first claim not acquired".into());
    };
    store.close().expect("close");
    let store = Store::open_with(dir.path(), config(&clock)).expect("reopen");
    store.release(old.clone()).expect("release by the holder");
    let Claim::Acquired(_new) = store.claim(b"k", lease).expect("claim") else {
        return Some("second claim not acquired".into());
    };
    match store.complete(old, Duration::from_secs(60), b"stale holder") {
        Err(Error::StaleClaim { .. }) => None,
        other => Some(format!(
            "the released token completed the new holder's claim: {other:?}"
        )),
    }
}

/// A batch failing on a claimed key keeps the items before it.
fn batch_prefix() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock)).expect("open");
    let _claim = store
        .claim(b"claimed", Duration::from_secs(30))
        .expect("claim");
    let ttl = Duration::from_secs(60);
    let items: Vec<(&[u8], Duration, &[u8])> = vec![(b"a", ttl, b"1"), (b"claimed", ttl, b"2")];
    let batch = store.check_or_insert_batch(&items);
    let retry = store.check_or_insert(b"a", ttl, b"1").expect("retry");
    match (batch, retry) {
        (Err(_), Outcome::Duplicate(_)) => Some(
            "the batch failed (ClaimInFlight) but recorded item 0: a retry answers Duplicate"
                .into(),
        ),
        _ => None,
    }
}

/// `segment-00000000.idem` with a live claim.
fn segment_zero_claim() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let mut segment = encode_segment_header(0).to_vec();
    let claim_id = 7u64.to_le_bytes();
    let claim = Record {
        kind: RecordKind::Claim,
        key: b"k",
        value: &claim_id,
        expires_at_millis: ManualClock::DEFAULT_START_MILLIS + 10_000,
        fingerprint: &[],
        refresh_cap_millis: 0,
    };
    encode_into(&mut segment, &claim);
    std::fs::write(dir.path().join("segment-00000000.idem"), &segment).expect("write");
    let path = dir.path().to_path_buf();
    let opened = std::panic::catch_unwind(move || Store::open_with(&path, config(&clock)).is_ok());
    match opened {
        Ok(_) => None,
        Err(_) => Some("open panicked".into()),
    }
}

/// The newest segment is `segment-99999999.idem`, torn at creation (empty).
fn segment_id_past_8_digits() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    std::fs::write(dir.path().join("segment-99999999.idem"), b"").expect("write");
    let store = Store::open_with(dir.path(), config(&clock)).expect("open");
    store
        .check_or_insert(b"k", Duration::from_secs(60), b"v")
        .expect("insert");
    store.close().expect("close");
    let store = Store::open_with(dir.path(), config(&clock)).expect("reopen");
    match store.get(b"k").expect("get") {
        Some(_) => None,
        None => Some("a key written to segment-100000000.idem is lost on reopen".into()),
    }
}

/// The newest segment is `segment-4294967295.idem` (the largest id), torn at creation (empty).
fn segment_id_at_u32_max() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    std::fs::write(dir.path().join("segment-4294967295.idem"), b"").expect("write");
    let path = dir.path().to_path_buf();
    let opened = std::panic::catch_unwind(move || {
        Store::open_with(&path, config(&clock)).map(|store| {
            let written = store.check_or_insert(b"k", Duration::from_secs(60), b"v");
            drop(store);
            let reopened = Store::open_with(&path, config(&clock)).map(|s| s.get(b"k").ok());
            (written.is_ok(), reopened)
        })
    });
    match opened {
        Err(_) => Some("open panicked (segment id overflow)".into()),
        Ok(Err(_)) => None,
        Ok(Ok((true, Ok(Some(Some(_)))))) => None,
        Ok(Ok(other)) => Some(format!("open went on past the last id: {other:?}")),
    }
}

/// A format-1 store (as build 107627b wrote it) holding a value of 64 KiB, the largest format 1
/// allowed (format 2 allows 65535 bytes), in a sealed segment among records that expire; the
/// current build opens it and compacts that segment, copying the live record forward.
fn v1_value_of_64_kib_compacted() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let now = ManualClock::DEFAULT_START_MILLIS;
    let mut older = encode_segment_header_version(1, FORMAT_VERSION_1).to_vec();
    let big = vec![b'v'; 64 * 1024];
    let record = |key: &'static [u8], value: &'static [u8], expires_at_millis| Record {
        kind: RecordKind::Insert,
        key,
        value,
        expires_at_millis,
        fingerprint: &[],
        refresh_cap_millis: 0,
    };
    let big: &'static [u8] = big.leak();
    encode_v1_into(&mut older, &record(b"big", big, now + 36_000_000));
    for key in [&b"a"[..], b"b", b"c", b"d", b"e", b"f", b"g", b"h"] {
        encode_v1_into(&mut older, &record(key, b"short", now + 1000));
    }
    older.extend(encode_seal_v1(older.len() as u64));
    let newest = encode_segment_header_version(2, FORMAT_VERSION_1);
    std::fs::write(dir.path().join("segment-00000001.idem"), &older).expect("write");
    std::fs::write(dir.path().join("segment-00000002.idem"), newest).expect("write");
    let store = Store::open_with(dir.path(), config(&clock)).expect("open");
    match store.get(b"big") {
        Ok(Some(value)) if value.len() == 64 * 1024 => {}
        other => {
            return Some(format!(
                "get(big) after open = {:?}",
                other.map(|v| v.map(|v| v.len()))
            ))
        }
    }
    clock.advance(Duration::from_secs(2));
    let maintained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.maintain()));
    match maintained {
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Some(format!(
                "maintain() panicked compacting a format-1 record with a 64 KiB value: {message}"
            ))
        }
        Ok(Err(e)) => Some(format!("maintain() failed: {e}")),
        Ok(Ok(_)) => match store.get(b"big") {
            Ok(Some(value)) if value.len() == 64 * 1024 => None,
            other => Some(format!(
                "get(big) after maintain = {:?}",
                other.map(|v| v.map(|v| v.len()))
            )),
        },
    }
}

/// Segment 1 has a format-2 header and records but a format-1 seal (all CRCs valid); segment 2
/// is empty. Open replays the log and accepts the seal; close writes a checkpoint; the reopen from
/// the checkpoint checks the seal by the segment's format and finds none.
fn seal_of_the_other_format() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let mut older = encode_segment_header(1).to_vec();
    encode_into(
        &mut older,
        &Record {
            kind: RecordKind::Insert,
            key: b"k",
            value: b"v",
            expires_at_millis: ManualClock::DEFAULT_START_MILLIS + 60_000,
            fingerprint: &[],
            refresh_cap_millis: 0,
        },
    );
    older.extend(encode_seal_v1(older.len() as u64));
    std::fs::write(dir.path().join("segment-00000001.idem"), &older).expect("write");
    std::fs::write(
        dir.path().join("segment-00000002.idem"),
        encode_segment_header(2),
    )
    .expect("write");
    let first = match Store::open_with(dir.path(), config(&clock)) {
        Ok(store) => store.close().map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let second = Store::open_with(dir.path(), config(&clock)).map(|s| s.close());
    match (first, second) {
        (Ok(()), Ok(_)) | (Err(_), Err(_)) => None,
        (first, second) => Some(format!(
            "the first open (full replay) and the reopen (from its checkpoint) disagree: \
             {first:?}, then {:?}",
            second.map(|_| ())
        )),
    }
}

/// Insert `k`, close (a checkpoint is written), then the record of `k` is replaced in place by a
/// Position record of the same key and length (CRC valid), below the checkpoint's replay start;
/// reopen from the checkpoint and `get(k)`.
fn index_entry_at_a_state_record() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let store = Store::open_with(dir.path(), config(&clock)).expect("open");
    store
        .check_or_insert(b"k", Duration::from_secs(3600), b"abcdefgh")
        .expect("insert");
    store.close().expect("close");
    let path = dir.path().join("segment-00000001.idem");
    let mut segment = std::fs::read(&path).expect("read");
    let mut position = Vec::new();
    encode_into(
        &mut position,
        &Record {
            kind: RecordKind::Position,
            key: b"k",
            value: &42u64.to_le_bytes(),
            expires_at_millis: idem::record::NEVER_EXPIRES,
            fingerprint: &[],
            refresh_cap_millis: 0,
        },
    );
    let at = idem::record::SEGMENT_HEADER_LEN;
    segment[at..at + position.len()].copy_from_slice(&position);
    std::fs::write(&path, &segment).expect("write");
    let store = Store::open_with(dir.path(), config(&clock)).expect("reopen");
    match store.get(b"k") {
        Ok(Some(value)) if value[..] == 42u64.to_le_bytes()[..] => Some(format!(
            "get(k) served the Position record's value {:?} as k's dedup result",
            &value[..]
        )),
        _ => None,
    }
}

/// Commit state entry `s`; fill the segment with 1-second entries; a transaction reads `s`;
/// a minute later `maintain()` compacts the segment (copying `s` forward); the transaction
/// writes `s` and commits. No commit wrote `s` since the read.
fn read_conflicts_after_compaction() -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let config = config(&clock)
        .segment_size_bytes_for_testing(4096)
        .compaction_live_ratio(0.9);
    let store = Store::open_with(dir.path(), config).expect("open");
    let mut tx = store.transaction();
    tx.put_state(b"s", b"1").expect("put");
    tx.commit().expect("commit");
    for i in 0..8 {
        let key = format!("fill-{i}");
        store
            .check_or_insert(key.as_bytes(), Duration::from_secs(1), &[7; 1000])
            .expect("insert");
    }
    let mut tx = store.transaction();
    tx.get_state(b"s").expect("read");
    clock.advance(Duration::from_secs(61));
    store.maintain().expect("maintain");
    store.maintain().expect("maintain");
    let compacted = store.stats().segments_compacted;
    tx.put_state(b"s", b"2").expect("put");
    match tx.commit() {
        Err(Error::Conflict { reason }) => Some(format!(
            "commit failed with Conflict ({reason}) after {compacted} compaction(s); no commit \
             wrote the key"
        )),
        _ => None,
    }
}

fn main() {
    // The panic of one reproduction is reported, not printed with a backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    report("checkpoint, then crash, then open", checkpoint_then_crash());
    report("claim id reused after reopen", claim_id_reuse());
    report(
        "batch keeps the prefix before a claimed key",
        batch_prefix(),
    );
    report("segment 0 with a live claim", segment_zero_claim());
    report("segment id past 8 digits", segment_id_past_8_digits());
    report("segment id at u32::MAX", segment_id_at_u32_max());
    report(
        "format-1 value of 64 KiB compacted",
        v1_value_of_64_kib_compacted(),
    );
    report("a seal of the other format", seal_of_the_other_format());
    report(
        "an index entry at a state record",
        index_entry_at_a_state_record(),
    );
    report(
        "a transaction's read conflicts after compaction",
        read_conflicts_after_compaction(),
    );
}
