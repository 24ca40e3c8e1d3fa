//! The operator tools through the public API: `idem::verify` (read-only, every damage by file
//! and offset, the torn tail apart), `Store::export` / `Store::import` (a round trip preserves
//! every answer; conflicts and damaged files are refused before anything is written) and the
//! directory lock (`Locked` while a store has it open). The command-line wrappers are tested in
//! the binary's own tests (`engine/src/bin/idem/ops.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idem::{Claim, ClaimToken, Clock, Config, Durability, Error, ManualClock, Outcome, Store};
use idem_tests::{parse_segment, segment_files};

const LEASE: Duration = Duration::from_secs(30);

fn config(clock: &ManualClock) -> Config {
    Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .background_maintenance(false)
}

fn small_segments(clock: &ManualClock) -> Config {
    config(clock).segment_size_bytes_for_testing(Config::MIN_TEST_SEGMENT_SIZE_BYTES)
}

fn acquired(claim: Claim) -> ClaimToken {
    match claim {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Every file of a directory with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

/// A store with entries of many deadlines (some fingerprinted, some removed), open claims with
/// and without fingerprints, a completed claim, and expired entries.
struct Source {
    store: Store,
    open_claims: Vec<ClaimToken>,
}

fn fill(dir: &Path, clock: &ManualClock) -> Source {
    let store = Store::open_with(dir, small_segments(clock)).unwrap();
    for i in 0..300u32 {
        let ttl = Duration::from_secs(10 + u64::from(i % 7) * 100);
        let value = format!("value-{i}:{}", "x".repeat((i % 40) as usize));
        if i % 3 == 0 {
            store
                .check_or_insert_fingerprinted(&key(i), ttl, value.as_bytes(), b"fp-a")
                .unwrap();
        } else {
            store
                .check_or_insert(&key(i), ttl, value.as_bytes())
                .unwrap();
        }
    }
    for i in (0..300u32).step_by(11) {
        assert!(store.remove(&key(i)).unwrap());
    }
    let mut open_claims = vec![
        acquired(store.claim(b"claim-open-1", LEASE).unwrap()),
        acquired(
            store
                .claim_fingerprinted(b"claim-open-2", LEASE * 4, b"fp-c")
                .unwrap(),
        ),
    ];
    let done = acquired(store.claim(b"claim-done", LEASE).unwrap());
    store
        .complete(done, Duration::from_secs(5000), b"receipt")
        .unwrap();
    // The entries with a 10 s TTL are expired at export time.
    clock.advance(Duration::from_secs(20));
    open_claims.push(acquired(store.claim(b"claim-open-3", LEASE).unwrap()));
    open_claims.sort_by(|a, b| a.key().cmp(b.key()));
    Source { store, open_claims }
}

fn all_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (0..300).map(key).collect();
    for extra in ["claim-open-1", "claim-open-2", "claim-open-3", "claim-done"] {
        keys.push(extra.as_bytes().to_vec());
    }
    keys
}

/// The answers a store gives for every key: `get`, and a fingerprinted check with a foreign
/// fingerprint (a mismatch shows the fingerprint was kept; a duplicate or claim the value).
fn answers(store: &Store) -> Vec<String> {
    all_keys()
        .iter()
        .map(|k| {
            let get = store.get(k).unwrap();
            // A probe that writes nothing on a live key; on an absent key it would insert, so
            // only live keys are probed.
            let probe = if get.is_some() {
                match store.check_or_insert_fingerprinted(k, LEASE, b"?", b"other-fp") {
                    Ok(outcome) => format!("{outcome:?}"),
                    Err(e) => format!("{e}"),
                }
            } else {
                String::new()
            };
            format!("{get:?} {probe}")
        })
        .collect()
}

#[test]
fn a_round_trip_preserves_every_answer() {
    let clock = ManualClock::new();
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let start = clock.now_millis();
    let source = fill(source_dir.path(), &clock);
    let file = target_dir.path().join("window.idemx");
    let exported = source.store.export(&file).unwrap();
    let live = source.store.count_live().unwrap();
    assert_eq!(exported.entries, live.entries);
    assert_eq!(exported.claims, 3);
    assert_eq!(live.claims, 3);
    assert!(exported.entries > 100, "{exported:?}");

    let target_path = target_dir.path().join("store");
    let target = Store::open_with(&target_path, config(&clock)).unwrap();
    let imported = target.import(&file).unwrap();
    assert_eq!(imported.entries, exported.entries);
    assert_eq!(imported.claims, 3);
    assert_eq!(imported.already_present, 0);
    assert_eq!(target.count_live().unwrap(), live);
    // Imported claims are in doubt with their original tokens (key, fencing token, lease end,
    // fingerprint): the operator reconciles them as after a crash.
    assert_eq!(target.in_doubt().unwrap(), source.open_claims);

    // Same answers now, and on both sides of every deadline (the absolute deadlines were
    // kept to the millisecond): entries at 10 s + k * 100 s, leases at 30, 50 and 120 s, the
    // completed claim's result at 5000 s after the start.
    let mut moments: Vec<u64> = (0..7)
        .map(|k| 10_000 + k * 100_000)
        .chain([30_000, 50_000, 120_000, 5_000_000])
        .flat_map(|deadline| [deadline - 1, deadline])
        .filter(|&moment| start + moment >= clock.now_millis())
        .collect();
    moments.sort_unstable();
    assert_eq!(answers(&source.store), answers(&target));
    // The import is durable and the claims come back in doubt after a reopen.
    drop(target);
    let target = Store::open_with(&target_path, config(&clock)).unwrap();
    assert_eq!(target.in_doubt().unwrap(), source.open_claims);
    for moment in moments {
        clock.set_millis(start + moment);
        assert_eq!(
            answers(&source.store),
            answers(&target),
            "{moment} ms after the start"
        );
        // The source's claims are its own, open; the target's are in doubt until their lease
        // ends, as they would be in the source after a crash.
        let mut open = source.open_claims.clone();
        open.retain(|t| {
            t.lease_until() > std::time::UNIX_EPOCH + Duration::from_millis(start + moment)
        });
        assert_eq!(
            target.in_doubt().unwrap(),
            open,
            "{moment} ms after the start"
        );
    }
}

#[test]
fn imported_claims_keep_their_tokens_and_later_claims_are_fenced_above_them() {
    let clock = ManualClock::new();
    let source_dir = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let source = Store::open_with(source_dir.path(), config(&clock)).unwrap();
    // Push the source's ids far above a fresh store's.
    let mut last = None;
    for i in 0..5 {
        let token = acquired(source.claim(format!("c{i}").as_bytes(), LEASE).unwrap());
        last = Some(token);
    }
    let last = last.unwrap();
    let file = target_dir.path().join("claims.idemx");
    source.export(&file).unwrap();
    let target = Store::open_with(target_dir.path().join("store"), config(&clock)).unwrap();
    let own = acquired(target.claim(b"mine", LEASE).unwrap());
    target.import(&file).unwrap();
    let in_doubt = target.in_doubt().unwrap();
    assert_eq!(in_doubt.len(), 5);
    assert!(in_doubt.contains(&last));
    let newer = acquired(target.claim(b"newer", LEASE).unwrap());
    let highest = in_doubt
        .iter()
        .map(ClaimToken::fencing_token)
        .max()
        .unwrap();
    assert!(newer.fencing_token() > highest.max(own.fencing_token()));
    // The imported token completes its claim in the new store.
    target
        .complete(last.clone(), Duration::from_secs(60), b"reconciled")
        .unwrap();
    assert_eq!(target.get(last.key()).unwrap().unwrap(), b"reconciled");
    // And fencing survives a reopen.
    drop(target);
    let target = Store::open_with(target_dir.path().join("store"), config(&clock)).unwrap();
    let after = acquired(target.claim(b"after-reopen", LEASE).unwrap());
    assert!(after.fencing_token() > newer.fencing_token());
}

#[test]
fn importing_twice_changes_nothing() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let source = fill(&dir.path().join("source"), &clock);
    let file = dir.path().join("window.idemx");
    let exported = source.store.export(&file).unwrap();
    let target = Store::open_with(dir.path().join("target"), config(&clock)).unwrap();
    target.import(&file).unwrap();
    let appended = target.stats().bytes_appended;
    let again = target.import(&file).unwrap();
    assert_eq!(again.entries + again.claims, 0);
    assert_eq!(again.already_present, exported.entries + exported.claims);
    assert_eq!(target.stats().bytes_appended, appended);
}

#[test]
fn a_conflict_is_refused_by_key_and_nothing_is_written() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let source = fill(&dir.path().join("source"), &clock);
    let file = dir.path().join("window.idemx");
    source.store.export(&file).unwrap();

    for (what, prepare) in [
        ("another value", 0),
        ("a claim where the file has a value", 1),
        ("another fingerprint", 2),
    ] {
        let target_dir = dir.path().join(format!("target-{prepare}"));
        let target = Store::open_with(&target_dir, config(&clock)).unwrap();
        let ttl = Duration::from_secs(600);
        let conflicting = match prepare {
            0 => {
                target.check_or_insert(&key(250), ttl, b"mine").unwrap();
                key(250)
            }
            1 => {
                acquired(target.claim(&key(250), LEASE).unwrap());
                key(250)
            }
            _ => {
                // key(3) was recorded with fingerprint fp-a in the source.
                let value = format!("value-3:{}", "x".repeat(3));
                target
                    .check_or_insert_fingerprinted(&key(3), ttl, value.as_bytes(), b"fp-b")
                    .unwrap();
                key(3)
            }
        };
        let before = target.stats().bytes_appended;
        let live_before = target.count_live().unwrap();
        match target.import(&file) {
            Err(Error::ImportConflict { key, reason }) => {
                assert_eq!(key, conflicting, "{what}: {reason}");
                let message = Error::ImportConflict {
                    key: key.clone(),
                    reason,
                }
                .to_string();
                assert!(
                    message.contains(&String::from_utf8(key).unwrap()),
                    "{message}"
                );
            }
            other => panic!("{what}: conflict not refused: {other:?}"),
        }
        assert_eq!(target.stats().bytes_appended, before, "{what}: wrote");
        assert_eq!(target.count_live().unwrap(), live_before, "{what}");
        assert_eq!(target.get(&key(1)).unwrap(), None, "{what}");
        assert!(target.in_doubt().unwrap().is_empty(), "{what}");
    }
}

#[test]
fn a_damaged_or_truncated_export_file_is_refused_and_nothing_is_written() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let source = fill(&dir.path().join("source"), &clock);
    let file = dir.path().join("window.idemx");
    source.store.export(&file).unwrap();
    let good = std::fs::read(&file).unwrap();
    // Exporting over an existing file is refused (it is never overwritten).
    assert!(matches!(source.store.export(&file), Err(Error::Io { .. })));
    assert_eq!(std::fs::read(&file).unwrap(), good);

    let target = Store::open_with(dir.path().join("target"), config(&clock)).unwrap();
    let damaged = dir.path().join("damaged.idemx");
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    cases.push(("a flipped byte", flipped));
    cases.push(("cut in an entry", good[..good.len() / 2].to_vec()));
    // Cut just before the end record (28 bytes): every entry is whole, the end is missing.
    cases.push((
        "cut before the end record",
        good[..good.len() - 28].to_vec(),
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    cases.push(("a byte after the end record", trailing));
    let mut header = good.clone();
    header[3] ^= 1;
    cases.push(("a damaged magic", header));
    for (what, bytes) in cases {
        std::fs::write(&damaged, &bytes).unwrap();
        match target.import(&damaged) {
            Err(Error::Corrupt { path, offset, .. }) => {
                assert_eq!(path, damaged, "{what}");
                assert!(offset <= bytes.len() as u64, "{what}");
            }
            other => panic!("{what}: accepted: {other:?}"),
        }
        assert_eq!(target.stats().bytes_appended, 0, "{what}: wrote");
    }
    let mut newer = good.clone();
    newer[8] = 2; // version 2, CRC fixed up: a file from a newer build
    let crc = crc32fast_hash(&newer[..24]);
    newer[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&damaged, &newer).unwrap();
    assert!(matches!(
        target.import(&damaged),
        Err(Error::UnsupportedVersion { found: 2, .. })
    ));
}

/// CRC-32 (IEEE), bitwise: the test crate does not depend on crc32fast.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A closed store of several sealed segments and a checkpoint.
fn closed_store(dir: &Path, clock: &ManualClock) {
    let store = Store::open_with(dir, small_segments(clock)).unwrap();
    for i in 0..200u32 {
        let value = format!("value-{i}-{}", "y".repeat(50));
        assert_eq!(
            store
                .check_or_insert(&key(i), Duration::from_secs(3600), value.as_bytes())
                .unwrap(),
            Outcome::Inserted
        );
    }
    store.close().unwrap();
    assert!(segment_files(dir).len() >= 3);
}

#[test]
fn verify_reports_a_clean_store_and_changes_nothing() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), &clock);
    let before = snapshot(dir.path());
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records(), 200);
    assert_eq!(report.segments.len(), segment_files(dir.path()).len());
    let checkpoint = report.checkpoint.expect("close writes a checkpoint");
    assert_eq!(checkpoint.entries, 200);
    assert!(report.torn_tail.is_none());
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn verify_reports_a_torn_tail_apart_and_leaves_it_for_open() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), &clock);
    let newest = idem_tests::newest_segment(dir.path());
    let len = std::fs::metadata(&newest).unwrap().len();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes.extend_from_slice(&[0x01, 0x02, 0x03, 0x04, 0x01, 0x00, 0x05]);
    std::fs::write(&newest, &bytes).unwrap();
    let before = snapshot(dir.path());
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "a torn tail is not damage: {report:?}");
    let tail = report.torn_tail.expect("the torn tail is reported");
    assert_eq!(
        (tail.path.clone(), tail.offset, tail.bytes),
        (newest, len, 7)
    );
    assert_eq!(snapshot(dir.path()), before, "verify cut nothing");
    // Open cuts it where verify said.
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    let cut = store.recovery_report().truncated_tail.clone().unwrap();
    assert_eq!((cut.path, cut.offset), (tail.path, tail.offset));
}

#[test]
fn verify_names_a_flipped_byte_in_a_sealed_segment_and_every_damaged_record() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), &clock);
    let segments = segment_files(dir.path());
    let oldest = segments.values().next().unwrap().clone();
    let mut bytes = std::fs::read(&oldest).unwrap();
    let records = parse_segment(&bytes);
    // A value byte of the third and of the fifth record: both are named.
    let damaged: Vec<u64> = [2, 4].iter().map(|&i| records[i].start).collect();
    for &start in &damaged {
        bytes[start as usize + 30] ^= 0x40;
    }
    std::fs::write(&oldest, &bytes).unwrap();
    let before = snapshot(dir.path());
    let report = idem::verify(dir.path()).unwrap();
    assert!(!report.is_clean());
    let found: Vec<(PathBuf, u64)> = report
        .damage
        .iter()
        .map(|d| (d.path.clone(), d.offset))
        .collect();
    assert_eq!(
        found,
        damaged
            .iter()
            .map(|&offset| (oldest.clone(), offset))
            .collect::<Vec<_>>()
    );
    assert!(report.damage[0].reason.contains("checksum"), "{report:?}");
    assert_eq!(snapshot(dir.path()), before);
    // Open refuses the same segment (a full replay reads it: no checkpoint).
    std::fs::remove_file(dir.path().join("checkpoint.idem")).unwrap();
    match Store::open_with(dir.path(), config(&clock)) {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (oldest, damaged[0]));
        }
        other => panic!("open accepted a damaged segment: {other:?}"),
    }
}

#[test]
fn verify_names_a_corrupt_checkpoint() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), &clock);
    let path = dir.path().join("checkpoint.idem");
    let mut bytes = std::fs::read(&path).unwrap();
    // A byte of the segment table's first row (the table starts after the 80-byte header).
    let at = 85;
    bytes[at] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.damage.len(), 1, "{report:?}");
    let damage = &report.damage[0];
    assert_eq!((damage.path.clone(), damage.offset), (path, 80), "{damage}");
    assert!(damage.reason.contains("checksum"), "{damage}");
    assert!(report.checkpoint.is_none());
}

#[test]
fn verify_names_a_truncated_sealed_segment() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), &clock);
    let oldest = segment_files(dir.path()).values().next().unwrap().clone();
    let bytes = std::fs::read(&oldest).unwrap();
    let records = parse_segment(&bytes);
    // Cut inside the fourth record, then at a record boundary.
    let inside = records[3].start + 5;
    std::fs::write(&oldest, &bytes[..inside as usize]).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(
        (report.damage[0].path.clone(), report.damage[0].offset),
        (oldest.clone(), records[3].start)
    );
    let boundary = records[3].start;
    std::fs::write(&oldest, &bytes[..boundary as usize]).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(
        (report.damage[0].path.clone(), report.damage[0].offset),
        (oldest, boundary)
    );
    assert!(report.damage[0].reason.contains("seal"), "{report:?}");
}

#[test]
fn verify_names_a_damaged_segment_header_and_fence_file() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small_segments(&clock)).unwrap();
    acquired(store.claim(b"c", LEASE).unwrap());
    for i in 0..100u32 {
        store
            .check_or_insert(&key(i), Duration::from_secs(60), &[7u8; 60])
            .unwrap();
    }
    store.close().unwrap();
    let oldest = segment_files(dir.path()).values().next().unwrap().clone();
    let mut bytes = std::fs::read(&oldest).unwrap();
    bytes[17] ^= 1; // the segment id, under the header CRC
    std::fs::write(&oldest, &bytes).unwrap();
    let fence = dir.path().join("fence.idem");
    let mut fence_bytes = std::fs::read(&fence).unwrap();
    fence_bytes[13] ^= 1;
    std::fs::write(&fence, &fence_bytes).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    let found: Vec<(PathBuf, u64)> = report
        .damage
        .iter()
        .map(|d| (d.path.clone(), d.offset))
        .collect();
    assert_eq!(found, vec![(oldest, 0), (fence, 20)], "{report:?}");
}

#[test]
fn the_tools_get_locked_while_a_store_is_open() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    closed_store(dir.path(), &clock);
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    assert!(matches!(
        idem::verify(dir.path()),
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        Store::open_with(dir.path(), config(&clock)),
        Err(Error::Locked { .. })
    ));
    drop(store);
    assert!(idem::verify(dir.path()).unwrap().is_clean());
    // While verify runs nobody can open the store either: verify holds the lock (checked
    // through a missing directory, which is an error, not an empty report).
    assert!(matches!(
        idem::verify(dir.path().join("missing")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn damage_in_the_newest_segment_before_the_checkpoint_is_not_a_torn_tail() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    for i in 0..50u32 {
        store
            .check_or_insert(&key(i), Duration::from_secs(3600), &[9u8; 40])
            .unwrap();
    }
    store.close().unwrap(); // one segment, and a checkpoint past all of it
    let newest = idem_tests::newest_segment(dir.path());
    let mut bytes = std::fs::read(&newest).unwrap();
    let records = parse_segment(&bytes);
    bytes[records[10].start as usize + 25] ^= 0x08;
    std::fs::write(&newest, &bytes).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert_eq!(report.damage.len(), 1, "{report:?}");
    assert_eq!(
        (report.damage[0].path.clone(), report.damage[0].offset),
        (newest.clone(), records[10].start)
    );
    // Without the checkpoint nothing says those bytes were durable: a torn tail, as open sees it.
    std::fs::remove_file(dir.path().join("checkpoint.idem")).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.torn_tail.unwrap().offset, records[10].start);
}

/// State entries and positions of transactions travel with the window, in their own
/// namespaces; a state entry held with another value is a conflict, and nothing is written.
#[test]
fn state_entries_and_positions_round_trip_and_conflict() {
    let clock = ManualClock::new();
    let scratch = tempfile::tempdir().unwrap();
    let source = Store::open_with(scratch.path().join("source"), config(&clock)).unwrap();
    let mut tx = source.transaction();
    tx.check_or_insert(b"same", LEASE, b"dedup value").unwrap();
    tx.put_state(b"same", b"state value").unwrap();
    tx.put_state(b"balance/7", &250u64.to_le_bytes()).unwrap();
    tx.set_position(b"orders/3", 1_000_457).unwrap();
    tx.set_position(b"same", 9).unwrap();
    tx.commit().unwrap();
    let file = scratch.path().join("window.idemx");
    let exported = source.export(&file).unwrap();
    assert_eq!(
        (exported.entries, exported.state_entries, exported.positions),
        (1, 2, 2)
    );

    let target = Store::open_with(scratch.path().join("target"), config(&clock)).unwrap();
    let imported = target.import(&file).unwrap();
    assert_eq!(
        (imported.entries, imported.state_entries, imported.positions),
        (1, 2, 2)
    );
    assert_eq!(target.get(b"same").unwrap().unwrap(), b"dedup value");
    assert_eq!(target.get_state(b"same").unwrap().unwrap(), b"state value");
    assert_eq!(
        target.get_state(b"balance/7").unwrap().unwrap().as_ref(),
        250u64.to_le_bytes()
    );
    assert_eq!(target.positions().unwrap(), source.positions().unwrap());
    // Twice: everything is already there.
    let again = target.import(&file).unwrap();
    assert_eq!(
        (again.state_entries, again.positions, again.already_present),
        (0, 0, 5)
    );

    let other = Store::open_with(scratch.path().join("other"), config(&clock)).unwrap();
    let mut tx = other.transaction();
    tx.put_state(b"balance/7", &1u64.to_le_bytes()).unwrap();
    tx.commit().unwrap();
    let appended = other.stats().bytes_appended;
    match other.import(&file) {
        Err(Error::ImportConflict { key, .. }) => assert_eq!(key, b"balance/7"),
        other => panic!("expected ImportConflict, got {other:?}"),
    }
    assert_eq!(other.stats().bytes_appended, appended);
    assert_eq!(other.get(b"same").unwrap(), None);
}

/// The delta checkpoint files of a store dropped without `close` (as a crash leaves them).
fn delta_files(dir: &Path) -> Vec<PathBuf> {
    let mut deltas: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("checkpoint-delta-") && name.ends_with(".idem")
        })
        .collect();
    deltas.sort();
    deltas
}

/// A store with a full checkpoint and at least two deltas after it, dropped without `close`.
fn store_with_deltas(dir: &Path, clock: &ManualClock) -> Vec<PathBuf> {
    let config = config(clock)
        .checkpoint_every_bytes(1 << 20)
        .checkpoint_delta_every_bytes(8 << 10);
    let store = Store::open_with(dir, config).unwrap();
    for i in 0..600u32 {
        let value = format!("value-{i}-{}", "z".repeat(40));
        store
            .check_or_insert(&key(i), Duration::from_secs(3600), value.as_bytes())
            .unwrap();
        if i % 3 == 0 {
            store.remove(&key(i / 2)).unwrap();
        }
        if i % 50 == 49 {
            store.maintain().unwrap();
        }
    }
    drop(store);
    let deltas = delta_files(dir);
    assert!(deltas.len() >= 2, "{deltas:?}");
    deltas
}

/// Verify loads the delta chain as an open does: it counts the deltas, reports the replay
/// start after the last, and names a damaged delta by file and offset as damage (open ignores
/// it and every delta after it), while a delta a crash left from an earlier chain is a note.
#[test]
fn verify_follows_the_delta_checkpoints_and_names_a_damaged_one() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let deltas = store_with_deltas(dir.path(), &clock);
    let before = snapshot(dir.path());
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.notes.is_empty(), "{report:?}");
    let checkpoint = report.checkpoint.clone().expect("a full checkpoint");
    assert_eq!(checkpoint.deltas as usize, deltas.len());
    assert_eq!(snapshot(dir.path()), before, "verify changes nothing");
    // What an open says of the same chain.
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    assert_eq!(
        store.recovery_report().checkpoint_deltas_loaded,
        u64::from(checkpoint.deltas)
    );
    drop(store);
    let replay_start = (
        checkpoint.replay_from_segment,
        checkpoint.replay_from_offset,
    );

    // Damage in the first delta's body (past its 96-byte header and the segment table).
    let dir = tempfile::tempdir().unwrap();
    let deltas = store_with_deltas(dir.path(), &clock);
    let mut bytes = std::fs::read(&deltas[0]).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x55;
    std::fs::write(&deltas[0], &bytes).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert_eq!(report.damage.len(), 1, "{report:?}");
    let damage = &report.damage[0];
    assert_eq!(damage.path, deltas[0]);
    assert!(
        damage.offset > 96 && damage.offset < bytes.len() as u64,
        "{damage}"
    );
    assert!(damage.reason.contains("delta checkpoint"), "{damage}");
    let checkpoint = report.checkpoint.expect("the full checkpoint is sound");
    assert_eq!(
        checkpoint.deltas, 0,
        "the chain ends before the damaged delta"
    );
    assert_ne!(
        (
            checkpoint.replay_from_segment,
            checkpoint.replay_from_offset
        ),
        replay_start,
        "replay starts at the full checkpoint's start"
    );
    let store = Store::open_with(dir.path(), config(&clock)).unwrap();
    let ignored = store.recovery_report().checkpoint_delta_ignored.clone();
    assert!(
        ignored.is_some_and(|why| why.contains("checkpoint-delta-000001")),
        "open ignores the same delta"
    );
    drop(store);

    // A delta of an earlier chain: a crash after a full checkpoint replaced the chain's.
    let dir = tempfile::tempdir().unwrap();
    let deltas = store_with_deltas(dir.path(), &clock);
    let stale = std::fs::read(&deltas[0]).unwrap();
    Store::open_with(dir.path(), config(&clock))
        .unwrap()
        .close()
        .unwrap();
    assert!(
        delta_files(dir.path()).is_empty(),
        "close writes a full one"
    );
    std::fs::write(&deltas[0], &stale).unwrap();
    let report = idem::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.checkpoint.clone().expect("full").deltas, 0);
    assert!(
        report
            .notes
            .iter()
            .any(|note| note.contains("checkpoint-delta-000001") && note.contains("earlier")),
        "{report:?}"
    );
}
