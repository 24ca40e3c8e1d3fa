//! Every crash point of a mixed workload. A power loss that keeps any prefix of what was written
//! since the last sync point (a flush, a maintenance round, a checkpoint) must reopen to the
//! state after some prefix of the operations (never part of one, never anything else, never less
//! than the sync point made durable), and what that reopen serves must then stay: maintenance
//! (expiry, compaction, segment deletion), a checkpoint and later reopens, from the checkpoint or
//! by a full replay, may change it only by expiry.
//!
//! The workload mixes what interacts: a removal and a re-insert with another TTL, claims completed
//! with short TTLs (one with a result larger than a segment), a definite failure with a short
//! back-off, a release, an ambiguous outcome, transactions that write dedup keys, state and
//! positions, records that roll segments, and in the random windows clock jumps, maintenance and
//! checkpoints too. The expected states come from a store that ran each prefix of the operations,
//! flushed and was dropped with nothing cut; the cut store is compared with them (and each
//! uncut run's reopen from its checkpoint with its full replay).
//!
//! Every cut is made at, or one byte around, a record boundary of the bytes written after the
//! last sync point (records are found with the public `idem::record` decoder), plus the inside
//! of each new segment's header.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idem::record::{decode_sized, SEGMENT_HEADER_LEN};
use idem::sim::{SimStorage, Storage};
use idem::{Claim, ClaimToken, Clock, Completion, Config, Durability, ManualClock, Store};

const DIR: &str = "/sim/store";
const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(24 * 3600);
const HOUR: Duration = Duration::from_secs(3600);

fn config(storage: &SimStorage, clock: &ManualClock) -> Config {
    idem_tests::sim_config(storage, clock, Durability::Never).segment_size_bytes_for_testing(4096)
}

fn open(storage: &SimStorage, clock: &ManualClock) -> Store {
    Store::open_with(DIR, config(storage, clock)).unwrap()
}

/// One operation of the window the crash may cut.
#[derive(Debug, Clone, Copy)]
enum Op {
    Insert(&'static str, Duration, usize),
    Remove(&'static str),
    Claim(&'static str, Duration),
    Complete(&'static str, Duration, usize),
    Fail(&'static str, Duration),
    Release(&'static str),
    Ambiguous(&'static str),
    /// A dedup key (and its TTL), a state key put, a state key deleted, a position.
    Transaction(&'static str, Duration, &'static str, &'static str, u64),
    /// The clock jumps forward.
    Advance(Duration),
    /// A round of maintenance (expiry, compaction, segment deletion), then a flush.
    Maintain,
    /// A checkpoint, then a flush.
    Checkpoint,
}

impl Op {
    /// Whether the operation ends with everything before it durable: a crash keeps all of it,
    /// so cuts are made only after the window's last one.
    fn syncs(self) -> bool {
        matches!(self, Op::Maintain | Op::Checkpoint)
    }

    /// How far the operation moves the clock (every operation runs 1 ms after the one before).
    fn takes(self) -> Duration {
        match self {
            Op::Advance(by) => by,
            _ => MS,
        }
    }
}

/// Keys every answer is read for.
const KEYS: [&str; 14] = [
    "a",
    "b",
    "e",
    "t1",
    "t2",
    "keep-0",
    "keep-1",
    "c-short",
    "c-long",
    "c-big",
    "c-fail",
    "c-release",
    "c-doubt",
    "c-new",
];
const STATE_KEYS: [&str; 3] = ["s1", "s2", "s3"];

/// Before the window (flushed, checkpointed): long-lived keys, open claims, state, a position.
fn before_window(store: &Store, tokens: &mut BTreeMap<&'static str, ClaimToken>) {
    for i in 0..8 {
        let key = format!("keep-{i}");
        store
            .check_or_insert(key.as_bytes(), DAY, &value(&key, 300))
            .unwrap();
    }
    store.check_or_insert(b"a", HOUR, b"a-first").unwrap();
    // Every claim key but `c-new`, which the scripted window claims.
    for key in KEYS
        .into_iter()
        .filter(|k| k.starts_with("c-") && *k != "c-new")
    {
        assert!(run(store, tokens, Op::Claim(key, DAY)));
    }
    let mut tx = store.transaction();
    tx.put_state(b"s1", b"s1-first").unwrap();
    tx.put_state(b"s2", b"s2-first").unwrap();
    tx.set_position(b"p", 1).unwrap();
    tx.commit().unwrap();
    store.flush().unwrap();
    store.checkpoint().unwrap();
}

/// The window: each operation 1 ms after the one before. An hour's TTL is served on the first
/// reopen and gone after [`later`]; a millisecond's is gone already.
const SCRIPTED: [Op; 14] = [
    Op::Remove("a"),
    Op::Insert("a", HOUR, 40),
    Op::Complete("c-short", HOUR, 40),
    Op::Complete("c-big", MS, 5000),
    Op::Complete("c-long", DAY, 40),
    Op::Fail("c-fail", HOUR),
    Op::Release("c-release"),
    Op::Transaction("t1", HOUR, "s1", "s2", 7),
    Op::Insert("b", DAY, 3000),
    Op::Ambiguous("c-doubt"),
    Op::Transaction("t2", DAY, "s3", "s1", 9),
    Op::Remove("keep-0"),
    Op::Claim("c-new", DAY),
    Op::Insert("e", MS, 2000),
];

fn value(key: &str, len: usize) -> Vec<u8> {
    key.bytes().cycle().take(len).collect()
}

/// Runs `op`; whether it took effect. Random windows hold operations that are refused (a
/// claimed key inserted, a completion without a claim, a position moved back): a refusal must
/// change nothing, crash or no crash.
fn run(store: &Store, tokens: &mut BTreeMap<&'static str, ClaimToken>, op: Op) -> bool {
    match op {
        Op::Insert(key, ttl, len) => store
            .check_or_insert(key.as_bytes(), ttl, &value(key, len))
            .is_ok_and(|outcome| !outcome.is_duplicate()),
        Op::Remove(key) => store.remove(key.as_bytes()).unwrap(),
        Op::Claim(key, lease) => match store.claim(key.as_bytes(), lease) {
            Ok(Claim::Acquired(token)) => {
                tokens.insert(key, token);
                true
            }
            _ => false,
        },
        Op::Complete(key, ttl, len) => tokens
            .remove(key)
            .is_some_and(|token| store.complete(token, ttl, &value(key, len)).is_ok()),
        Op::Fail(key, backoff) => tokens.remove(key).is_some_and(|token| {
            let failure = Completion::Failure {
                backoff,
                failure: b"declined",
            };
            store.finish(token, failure).is_ok()
        }),
        Op::Release(key) => tokens
            .remove(key)
            .is_some_and(|token| store.release(token).is_ok()),
        Op::Ambiguous(key) => tokens
            .get(key)
            .is_some_and(|token| store.finish(token.clone(), Completion::Ambiguous).is_ok()),
        Op::Transaction(dedup, ttl, put, delete, position) => {
            let mut tx = store.transaction();
            let inserted = tx
                .check_or_insert(dedup.as_bytes(), ttl, &value(dedup, 30))
                .is_ok_and(|outcome| !outcome.is_duplicate());
            inserted
                && tx.put_state(put.as_bytes(), &value(dedup, 20)).is_ok()
                && tx.delete_state(delete.as_bytes()).is_ok()
                && tx.set_position(b"p", position).is_ok()
                && tx.commit().is_ok()
        }
        Op::Advance(_) => true,
        Op::Maintain => {
            store.maintain().unwrap();
            store.flush().unwrap();
            true
        }
        Op::Checkpoint => {
            store.checkpoint().unwrap();
            store.flush().unwrap();
            true
        }
    }
}

/// Everything a reader can see, without writing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answers {
    entries: Vec<(&'static str, Option<String>)>,
    in_doubt: Vec<String>,
    state: Vec<(&'static str, Option<String>)>,
    positions: Vec<(String, u64)>,
}

fn answers(store: &Store) -> Answers {
    // Values are ASCII (a key's name repeated), so a failure prints them readably.
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let mut in_doubt: Vec<String> = store
        .in_doubt()
        .unwrap()
        .iter()
        .map(|token| text(token.key()))
        .collect();
    in_doubt.sort();
    let entry = |key: &str| store.get(key.as_bytes()).unwrap().map(|v| text(&v));
    let state = |key: &str| store.get_state(key.as_bytes()).unwrap().map(|v| text(&v));
    Answers {
        entries: KEYS.iter().map(|&key| (key, entry(key))).collect(),
        in_doubt,
        state: STATE_KEYS.iter().map(|&key| (key, state(key))).collect(),
        positions: store
            .positions()
            .unwrap()
            .into_iter()
            .map(|(source, position)| (text(&source), position))
            .collect(),
    }
}

/// After the first reopen: two hours on, records that roll segments, maintenance, a checkpoint.
fn later(store: &Store, clock: &ManualClock) {
    clock.advance(2 * HOUR);
    for i in 0..4 {
        let key = format!("later-{i}");
        store
            .check_or_insert(key.as_bytes(), MS, &[2; 3000])
            .unwrap();
    }
    clock.advance(MS * 2);
    store.maintain().unwrap();
    store.checkpoint().unwrap();
    store.flush().unwrap();
}

/// Answers after the crash or close: on reopen, after [`later`] and a crash (reopened from the
/// checkpoint), and again by a full replay (checkpoint removed).
fn reopened_answers(storage: &SimStorage, clock: &ManualClock) -> [Answers; 3] {
    let store = open(storage, clock);
    let first = answers(&store);
    later(&store, clock);
    drop(store);
    storage.crash();
    let store = open(storage, clock);
    let from_checkpoint = answers(&store);
    drop(store);
    storage
        .remove(&Path::new(DIR).join("checkpoint.idem"))
        .unwrap();
    let store = open(storage, clock);
    assert_eq!(store.recovery_report().checkpoint_entries_loaded, 0);
    [first, from_checkpoint, answers(&store)]
}

/// Runs the workload up to `ops` operations of the window on a new disk; returns the disk, the
/// clock, and where the crash may start cutting (the newest segment and its length after the
/// last operation that made everything durable: the window's start, or a later maintenance or
/// checkpoint).
fn workload(window: &[Op], ops: usize) -> (SimStorage, ManualClock, (u32, u64)) {
    let storage = SimStorage::new(1);
    let clock = ManualClock::new();
    let store = open(&storage, &clock);
    let mut tokens = BTreeMap::new();
    before_window(&store, &mut tokens);
    let window_starts = clock.now_millis();
    let mut cuts_start = *segments(&storage).last().unwrap();
    for op in &window[..ops] {
        clock.advance(op.takes());
        run(&store, &mut tokens, *op);
        if op.syncs() {
            cuts_start = *segments(&storage).last().unwrap();
        }
    }
    store.flush().unwrap();
    drop(store);
    // Every run reopens at the same time, however many operations it ran.
    let window_takes: Duration = window.iter().map(|op| op.takes()).sum();
    clock.set_millis(window_starts + (window_takes + MS).as_millis() as u64);
    (storage, clock, cuts_start)
}

/// The id of a segment file's name (`None` for the store's other files).
fn segment_id(name: &str) -> Option<u32> {
    name.strip_prefix("segment-")?
        .strip_suffix(".idem")?
        .parse()
        .ok()
}

/// How many operations of `window` a crash can no longer take back: those up to its last
/// maintenance or checkpoint, which make everything before them durable.
fn durable_prefix(window: &[Op]) -> usize {
    window
        .iter()
        .rposition(|op| op.syncs())
        .map_or(0, |i| i + 1)
}

/// The log's segments, oldest first, with their lengths.
fn segments(storage: &SimStorage) -> Vec<(u32, u64)> {
    let mut found: Vec<(u32, u64)> = storage
        .list(Path::new(DIR))
        .unwrap()
        .iter()
        .filter_map(|name| {
            let id = segment_id(name)?;
            Some((id, storage.open(&path(name)).unwrap().len().unwrap()))
        })
        .collect();
    found.sort_unstable();
    found
}

fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

fn read(storage: &SimStorage, name: &str) -> Vec<u8> {
    let file = storage.open(&path(name)).unwrap();
    let mut bytes = vec![0; file.len().unwrap() as usize];
    file.read_at(&mut bytes, 0).unwrap();
    bytes
}

/// A new disk holding `files` (name, bytes), all durable.
fn disk_of(files: &[(String, Vec<u8>)]) -> SimStorage {
    let storage = SimStorage::new(2);
    storage.create_dir_all(Path::new(DIR)).unwrap();
    for dir in ["/", "/sim", DIR] {
        storage.sync_dir(Path::new(dir)).unwrap();
    }
    for (name, bytes) in files {
        let file = storage.create_truncate(&path(name)).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file.sync_data().unwrap();
    }
    storage.sync_dir(Path::new(DIR)).unwrap();
    storage
}

/// The offsets to cut segment `bytes` at, from `start` on: each record boundary and a byte to
/// either side of it, and a few inside the header of a new segment.
fn cuts_of(bytes: &[u8], start: usize) -> Vec<usize> {
    let mut at = start.max(SEGMENT_HEADER_LEN);
    let mut cuts = vec![at.saturating_sub(1), at, at + 1];
    if start == 0 {
        cuts.extend([0, 1, SEGMENT_HEADER_LEN / 2]);
    }
    while let Ok((_, len)) = decode_sized(&bytes[at..]) {
        at += len;
        cuts.extend([at - 1, at, at + 1]);
    }
    cuts.retain(|&cut| cut >= start && cut <= bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Cuts the log written by `window` at every record boundary (and a byte to either side) and
/// checks each reopen against the uncut runs of the window's prefixes (see the module doc).
/// Returns which prefixes some cut reopened to.
fn check_every_cut(window: &[Op]) -> Vec<bool> {
    // What each prefix of the window leaves, flushed and reopened with nothing cut.
    let expected: Vec<[Answers; 3]> = (0..=window.len())
        .map(|ops| {
            let (storage, clock, _) = workload(window, ops);
            reopened_answers(&storage, &clock)
        })
        .collect();
    for (ops, [_, from_checkpoint, full_replay]) in expected.iter().enumerate() {
        assert_eq!(
            from_checkpoint, full_replay,
            "uncut run of {ops} operations"
        );
    }

    let (storage, clock, (start_id, start_len)) = workload(window, window.len());
    let files: Vec<(String, Vec<u8>)> = storage
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|name| {
            let bytes = read(&storage, &name);
            (name, bytes)
        })
        .collect();
    let mut cuts: Vec<(u32, usize)> = Vec::new();
    for (name, bytes) in &files {
        let Some(id) = segment_id(name).filter(|&id| id >= start_id) else {
            continue;
        };
        let start = if id == start_id {
            start_len as usize
        } else {
            0
        };
        cuts.extend(cuts_of(bytes, start).into_iter().map(|cut| (id, cut)));
    }
    // In log order, from the window's start to its end (a listing promises no order).
    cuts.sort_unstable();
    // A random window whose operations were all refused wrote nothing: one cut, at its start.
    assert!(!cuts.is_empty());

    let mut matched = vec![false; expected.len()];
    // What a maintenance or checkpoint made durable, no cut may lose.
    let mut lowest = durable_prefix(window);
    for &(cut_id, cut) in &cuts {
        let kept: Vec<(String, Vec<u8>)> = files
            .iter()
            .filter_map(|(name, bytes)| {
                let id = segment_id(name);
                match id {
                    Some(id) if id > cut_id => None,
                    Some(id) if id == cut_id => Some((name.clone(), bytes[..cut].to_vec())),
                    _ => Some((name.clone(), bytes.clone())),
                }
            })
            .collect();
        let disk = disk_of(&kept);
        let clock = ManualClock::starting_at(clock.now_millis());
        let got = reopened_answers(&disk, &clock);
        let prefixes: Vec<usize> = (lowest..expected.len())
            .filter(|&ops| expected[ops] == got)
            .collect();
        assert!(
            !prefixes.is_empty(),
            "cut segment {cut_id} at {cut}: no prefix of at least {lowest} operations \
             gives these answers:\n{got:#?}"
        );
        lowest = prefixes[0];
        for ops in prefixes {
            matched[ops] = true;
        }
    }
    matched
}

#[test]
fn every_crash_point_reopens_to_a_prefix_and_what_it_serves_stays() {
    let mut tokens = BTreeMap::new();
    {
        // Every scripted operation takes effect.
        let (storage, clock) = (SimStorage::new(1), ManualClock::new());
        let store = open(&storage, &clock);
        before_window(&store, &mut tokens);
        for op in SCRIPTED {
            clock.advance(MS);
            assert!(run(&store, &mut tokens, op), "{op:?}");
        }
    }
    let (storage, clock, _) = workload(&SCRIPTED, SCRIPTED.len());
    let [served, later_on, _] = reopened_answers(&storage, &clock);
    assert_ne!(served, later_on, "the hour-long entries expire");
    let matched = check_every_cut(&SCRIPTED);
    assert!(
        matched.iter().all(|&m| m) || matched.iter().filter(|&&m| m).count() >= SCRIPTED.len() - 2,
        "the cuts reach (nearly) every prefix of the window: {matched:?}"
    );
}

/// The same check over random windows of the same kinds of operations on the same keys,
/// refused ones included. `IDEM_CRASH_POINT_SEEDS` sets how many (default 32), from
/// `IDEM_CRASH_POINT_FIRST_SEED` on (default 0: a sweep of new seeds starts further on);
/// `IDEM_CRASH_POINT_SEED` runs one.
#[test]
fn random_windows_reopen_to_a_prefix_at_every_crash_point() {
    let var = |name: &str| std::env::var(name).ok().and_then(|n| n.parse::<u64>().ok());
    let seeds = match var("IDEM_CRASH_POINT_SEED") {
        Some(seed) => seed..seed + 1,
        None => {
            let first = var("IDEM_CRASH_POINT_FIRST_SEED").unwrap_or(0);
            first..first + var("IDEM_CRASH_POINT_SEEDS").unwrap_or(32)
        }
    };
    for seed in seeds {
        let window = random_window(seed);
        let matched = std::panic::catch_unwind(|| check_every_cut(&window)).unwrap_or_else(|_| {
            panic!("seed {seed} failed (replay: IDEM_CRASH_POINT_SEED={seed}): {window:#?}")
        });
        let durable = durable_prefix(&window);
        assert!(
            matched[durable] && matched[window.len()],
            "seed {seed}: the cuts reach from the last sync to the end: {matched:?}"
        );
    }
}

fn random_window(seed: u64) -> Vec<Op> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let ttls = [MS, HOUR, DAY];
    let lens = [20, 300, 3000, 5000];
    let mut position = 1u64;
    (0..rng.gen_range(10..20))
        .map(|_| {
            let key = KEYS[rng.gen_range(0..KEYS.len())];
            let ttl = ttls[rng.gen_range(0..ttls.len())];
            match rng.gen_range(0..11) {
                0 | 1 => Op::Insert(key, ttl, lens[rng.gen_range(0..lens.len())]),
                2 => Op::Remove(key),
                3 => Op::Claim(key, if rng.gen_bool(0.5) { HOUR } else { DAY }),
                4 => Op::Complete(key, ttl, lens[rng.gen_range(0..lens.len())]),
                5 => match rng.gen_range(0..3) {
                    0 => Op::Fail(key, ttl),
                    1 => Op::Release(key),
                    _ => Op::Ambiguous(key),
                },
                // Clock jumps past the short TTLs, the hour-long ones, or leases; maintenance
                // and checkpoints in the window, the cuts after the last of them.
                6 => Op::Advance([2 * MS, HOUR + MS, 2 * HOUR][rng.gen_range(0..3)]),
                7 => [Op::Maintain, Op::Checkpoint][rng.gen_range(0..2)],
                _ => {
                    // Now and then a position moved back: the commit is refused.
                    position = if rng.gen_bool(0.15) {
                        position.saturating_sub(1)
                    } else {
                        position + 2
                    };
                    let state = |rng: &mut StdRng| STATE_KEYS[rng.gen_range(0..STATE_KEYS.len())];
                    Op::Transaction(key, ttl, state(&mut rng), state(&mut rng), position)
                }
            }
        })
        .collect()
}
