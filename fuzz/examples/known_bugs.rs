//! Plain-API reproductions of the engine bugs the fuzz targets found (fuzz/README.md, "Known
//! engine bugs"). Each prints what happens; a fixed engine prints `ok` for every line.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example known_bugs`

use std::time::Duration;

use idem::record::{encode_into, encode_segment_header, Record, RecordKind};
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
}
