//! Guards the input and ownership checks: every bad key, value or TTL is refused with its typed
//! error and changes nothing (not even for the good items of a batch), values exactly at the
//! limits are accepted, and a directory is owned by one store at a time, in one process or across
//! processes.

use std::process::Command;
use std::time::Duration;

use idem::{Config, Durability, Error, Outcome, Stats, Store, MAX_KEY_BYTES, MAX_TTL};
use idem::{ManualClock, MAX_VALUE_BYTES};
use idem_tests::{crash, LONG_TTL};

const TTL: Duration = Duration::from_secs(60);

/// The counters that must not move when input is refused.
fn footprint(store: &Store) -> (u64, u64, u64) {
    let Stats {
        bytes_appended,
        live_keys,
        log_writes,
        ..
    } = store.stats();
    (bytes_appended, live_keys, log_writes)
}

/// A readable sentence: words, no Debug braces, not just a variant name.
fn assert_readable(error: &Error) {
    let message = error.to_string();
    assert!(
        message.len() > 15 && message.contains(' ') && !message.contains('{'),
        "not a readable sentence: {message:?} ({error:?})"
    );
}

fn open(dir: &std::path::Path) -> Store {
    Store::open_with(dir, Config::default().clock(ManualClock::new())).unwrap()
}

#[test]
fn each_bad_input_has_its_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.check_or_insert(b"present", TTL, b"v").unwrap(),
        Outcome::Inserted
    );
    let before = footprint(&store);
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let long_value = vec![b'v'; MAX_VALUE_BYTES + 1];
    let too_long_ttl = MAX_TTL + Duration::from_nanos(1);

    let error = store.check_or_insert(b"", TTL, b"v").unwrap_err();
    assert!(matches!(error, Error::EmptyKey), "{error:?}");
    assert_readable(&error);

    let error = store.check_or_insert(&long_key, TTL, b"v").unwrap_err();
    match &error {
        Error::KeyTooLarge { len, max } => {
            assert_eq!((*len, *max), (MAX_KEY_BYTES + 1, MAX_KEY_BYTES))
        }
        other => panic!("expected KeyTooLarge, got {other:?}"),
    }
    assert_readable(&error);
    let message = error.to_string();
    assert!(
        message.contains(&(MAX_KEY_BYTES + 1).to_string()),
        "{message}"
    );
    assert!(message.contains(&MAX_KEY_BYTES.to_string()), "{message}");

    let error = store.check_or_insert(b"k", TTL, &long_value).unwrap_err();
    match &error {
        Error::ValueTooLarge { len, max } => {
            assert_eq!((*len, *max), (MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES))
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_readable(&error);

    let error = store
        .check_or_insert(b"k", Duration::ZERO, b"v")
        .unwrap_err();
    assert!(matches!(error, Error::ZeroTtl), "{error:?}");
    assert_readable(&error);

    for ttl in [too_long_ttl, MAX_TTL * 2, Duration::MAX] {
        let error = store.check_or_insert(b"k", ttl, b"v").unwrap_err();
        match &error {
            Error::TtlTooLarge { ttl_secs, max_secs } => {
                assert_eq!(*max_secs, MAX_TTL.as_secs());
                assert_eq!(*ttl_secs, ttl.as_secs());
            }
            other => panic!("expected TtlTooLarge for {ttl:?}, got {other:?}"),
        }
        assert_readable(&error);
    }

    // A bad key is refused by the reading calls too.
    assert!(matches!(store.get(b""), Err(Error::EmptyKey)));
    assert!(matches!(
        store.get(&long_key),
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(store.remove(b""), Err(Error::EmptyKey)));
    assert!(matches!(
        store.remove(&long_key),
        Err(Error::KeyTooLarge { .. })
    ));

    // Nothing was written, and the refused key is still free.
    assert_eq!(footprint(&store), before);
    assert_eq!(store.get(b"k").unwrap(), None);
    assert_eq!(store.get(b"present").unwrap().as_deref(), Some(&b"v"[..]));
    store.flush().unwrap();
    assert_eq!(footprint(&store).0, before.0);
}

/// One bad item anywhere in a batch refuses the whole batch before anything is written.
#[test]
fn a_batch_with_one_bad_item_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let long_value = vec![b'v'; MAX_VALUE_BYTES + 1];
    let bad_items: Vec<(Vec<u8>, Duration, Vec<u8>, &str)> = vec![
        (Vec::new(), TTL, b"v".to_vec(), "EmptyKey"),
        (long_key, TTL, b"v".to_vec(), "KeyTooLarge"),
        (b"bad".to_vec(), TTL, long_value, "ValueTooLarge"),
        (b"bad".to_vec(), Duration::ZERO, b"v".to_vec(), "ZeroTtl"),
        (b"bad".to_vec(), Duration::MAX, b"v".to_vec(), "TtlTooLarge"),
    ];
    for (bad_key, bad_ttl, bad_value, variant) in bad_items {
        for position in [0, 5, 9] {
            let mut items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..9)
                .map(|i| (format!("good-{i}").into_bytes(), TTL, b"g".to_vec()))
                .collect();
            items.insert(position, (bad_key.clone(), bad_ttl, bad_value.clone()));
            let before = footprint(&store);
            let error = store.check_or_insert_batch(&items).unwrap_err();
            let matched = match variant {
                "EmptyKey" => matches!(error, Error::EmptyKey),
                "KeyTooLarge" => matches!(error, Error::KeyTooLarge { .. }),
                "ValueTooLarge" => matches!(error, Error::ValueTooLarge { .. }),
                "ZeroTtl" => matches!(error, Error::ZeroTtl),
                "TtlTooLarge" => matches!(error, Error::TtlTooLarge { .. }),
                _ => unreachable!(),
            };
            assert!(matched, "{variant} at {position}: got {error:?}");
            assert_eq!(footprint(&store), before, "{variant} at {position}");
            for i in 0..9 {
                let key = format!("good-{i}");
                assert_eq!(
                    store.get(key.as_bytes()).unwrap(),
                    None,
                    "{variant} at {position}: good item {key} was written"
                );
            }
        }
    }
    // The same good items without the bad one go in.
    let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..9)
        .map(|i| (format!("good-{i}").into_bytes(), TTL, b"g".to_vec()))
        .collect();
    let outcomes = store.check_or_insert_batch(&items).unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Inserted));
    let empty: Vec<(Vec<u8>, Duration, Vec<u8>)> = Vec::new();
    assert_eq!(store.check_or_insert_batch(&empty).unwrap(), Vec::new());
}

/// Keys, values and TTLs exactly at their limits are accepted, read back and survive reopen.
#[test]
fn values_at_the_limits_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let config = || Config::default().clock(clock.clone());
    let store = Store::open_with(dir.path(), config()).unwrap();
    let max_key = vec![0xfe; MAX_KEY_BYTES];
    let max_value: Vec<u8> = (0..MAX_VALUE_BYTES).map(|i| (i % 251) as u8).collect();
    let cases: Vec<(Vec<u8>, Duration, Vec<u8>)> = vec![
        (max_key.clone(), TTL, b"max key".to_vec()),
        (b"max value".to_vec(), TTL, max_value.clone()),
        (b"max both".to_vec(), MAX_TTL, max_value.clone()),
        (vec![0x00], TTL, Vec::new()),
        (b"max ttl".to_vec(), MAX_TTL, b"ten years".to_vec()),
        (
            b"tiny ttl".to_vec(),
            Duration::from_nanos(1),
            b"1 ms".to_vec(),
        ),
    ];
    for (key, ttl, value) in &cases {
        assert_eq!(
            store.check_or_insert(key, *ttl, value).unwrap(),
            Outcome::Inserted
        );
        assert_eq!(store.get(key).unwrap().as_deref(), Some(&value[..]));
    }
    let mut everything = max_key.clone();
    everything[0] = 0x01;
    let batch = vec![(everything.clone(), MAX_TTL, max_value.clone())];
    assert_eq!(
        store.check_or_insert_batch(&batch).unwrap(),
        vec![Outcome::Inserted]
    );
    store.close().unwrap();
    let store = Store::open_with(dir.path(), config()).unwrap();
    for (key, _, value) in &cases {
        assert_eq!(store.get(key).unwrap().as_deref(), Some(&value[..]));
    }
    assert_eq!(
        store.get(&everything).unwrap().as_deref(),
        Some(&max_value[..])
    );
    // The ten-year entries are still there just before their deadline, gone after it.
    clock.advance(MAX_TTL - Duration::from_millis(1));
    assert!(store.get(b"max ttl").unwrap().is_some());
    assert_eq!(store.get(b"tiny ttl").unwrap(), None);
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.get(b"max ttl").unwrap(), None);
}

/// Runs the child binary in `open` mode on `dir` and returns its one-line answer.
fn open_in_another_process(dir: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_crash_child"))
        .arg(crash::MODE_OPEN)
        .arg(dir)
        .output()
        .expect("running crash_child");
    assert!(
        output.status.success(),
        "crash_child open failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A directory has one owner: a second open, in this process or another, is `Locked`, and
/// neither the refused open nor the other process disturbs the owner.
#[test]
fn a_second_open_is_locked_in_process_and_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().durability(Durability::Sync);
    let first = Store::open_with(dir.path(), config()).unwrap();
    first.check_or_insert(b"before", LONG_TTL, b"1").unwrap();

    let error = Store::open_with(dir.path(), config()).unwrap_err();
    match &error {
        Error::Locked { dir: locked, .. } => assert_eq!(locked, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert_readable(&error);
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{error}"
    );
    // The refused open released nothing: still locked, here and for another process.
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    assert_eq!(open_in_another_process(dir.path()), crash::OPEN_LOCKED);

    // The owner goes on unharmed.
    assert_eq!(
        first.check_or_insert(b"after", LONG_TTL, b"2").unwrap(),
        Outcome::Inserted
    );
    assert_eq!(first.get(b"before").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(
        first.check_or_insert(b"before", LONG_TTL, b"x").unwrap(),
        Outcome::Duplicate(idem::Value::from(&b"1"[..]))
    );
    assert_eq!(first.stats().live_keys, 2);
    first.close().unwrap();

    // Once closed, the directory can be opened again, by another process and by this one.
    assert_eq!(open_in_another_process(dir.path()), crash::OPEN_OK);
    let again = Store::open_with(dir.path(), config()).unwrap();
    assert_eq!(again.get(b"after").unwrap().as_deref(), Some(&b"2"[..]));
    drop(again);
    // A dropped store releases the directory too.
    Store::open_with(dir.path(), config())
        .unwrap()
        .close()
        .unwrap();
}
