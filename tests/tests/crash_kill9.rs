//! Guards the `Sync` promise against kill -9: a child process inserts from several threads and is
//! killed at a random moment, many times over one directory; after each kill every acknowledged
//! key (including every `Duplicate` answer) is present with its exact value, no key that was never
//! attempted appears, and the store keeps working.
//!
//! And what `Never` must keep across kill -9, where the last answers' records may be lost: no
//! hole. Its threads append through lanes that reserve chunks of the log and pad what they leave
//! unused, the one path `Sync` never takes; after each kill each thread's surviving keys are a
//! prefix of those it offered.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use idem::{Config, Outcome, Store, Value};
use idem_tests::crash::{self, own_key, parse, shared_key, value, Event};
use idem_tests::{seeded_rng, LONG_TTL};
use rand::rngs::StdRng;
use rand::Rng;

const ROUNDS: u32 = 24;
const THREADS: u32 = 4;
const SIGKILL: i32 = 9;

/// What one child reported before it died.
#[derive(Debug, Default)]
struct Report {
    ready: bool,
    attempted: BTreeSet<String>,
    /// Every value answered for a key (a key raced for by several threads has several answers).
    acked: BTreeMap<String, Vec<String>>,
}

/// Runs one child round (`mode`: `crash::MODE_INSERT` or `crash::MODE_INSERT_NEVER`) and kills
/// it with SIGKILL at a random moment.
fn run_child(mode: &str, dir: &Path, round: u32, seed: u64, rng: &mut StdRng) -> Report {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
        .arg(mode)
        .arg(dir)
        .arg(round.to_string())
        .arg(THREADS.to_string())
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning crash_child");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut report = Report::default();
    let mut line = Vec::new();
    // Reads one complete line into the report; false at end of stream. A line cut by the kill
    // (no newline) is ignored: the child had not finished saying it.
    let mut read_event = |stdout: &mut BufReader<_>, report: &mut Report| -> bool {
        line.clear();
        let got = stdout
            .read_until(b'\n', &mut line)
            .expect("reading the child");
        if got == 0 || line.last() != Some(&b'\n') {
            return false;
        }
        let text = std::str::from_utf8(&line[..line.len() - 1]).expect("utf-8 line");
        match parse(text).unwrap_or_else(|| panic!("round {round}: bad line {text:?}")) {
            Event::Ready => report.ready = true,
            Event::Attempt(key) => {
                report.attempted.insert(key);
            }
            Event::Ack(key, value) => {
                assert!(report.attempted.contains(&key), "ACK before ATTEMPT: {key}");
                report.acked.entry(key).or_default().push(value);
            }
        }
        true
    };

    if rng.gen_bool(0.2) {
        // Kill blind, possibly while the child is still opening (recovering) the store.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..80)));
    } else if mode == crash::MODE_INSERT_NEVER {
        // `Never` answers in about a microsecond: kill after a random time of appending, from
        // none to several of the writer's rounds.
        let run_for = Duration::from_micros(rng.gen_range(0..40_000));
        let mut since_ready = None;
        while read_event(&mut stdout, &mut report) {
            if report.ready && since_ready.get_or_insert_with(Instant::now).elapsed() >= run_for {
                break;
            }
        }
    } else {
        let acks_wanted = rng.gen_range(0..1_500);
        let mut acks = 0;
        while acks < acks_wanted {
            let before = report.acked.values().map(Vec::len).sum::<usize>();
            if !read_event(&mut stdout, &mut report) {
                break;
            }
            acks += report.acked.values().map(Vec::len).sum::<usize>() - before;
        }
    }
    child.kill().expect("SIGKILL");
    // What the child wrote before it died is still in the pipe.
    while read_event(&mut stdout, &mut report) {}
    let status = child.wait().expect("waiting for the child");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "round {round}: the child must die by our SIGKILL, not by itself ({status}); stderr:\n{stderr}"
    );
    report
}

/// The values a key may legitimately hold: each thread offers its own value for a shared key,
/// only the owner thread offers one for its own key.
fn possible_values(round: u32, key: &str) -> Vec<String> {
    let prefix = format!("r{round}/t");
    match key.strip_prefix(&prefix) {
        Some(rest) => {
            let thread = rest.split('/').next().expect("thread number");
            vec![value(&format!("t{thread}"), key)]
        }
        None => (0..THREADS).map(|t| value(&format!("t{t}"), key)).collect(),
    }
}

/// The highest index attempted for a key family (`None` if none was).
fn highest_attempted(attempted: &BTreeSet<String>, key_of: impl Fn(u64) -> String) -> Option<u64> {
    let mut highest = None;
    let mut i = 0;
    // Keys of a family are attempted in index order by one thread (own keys) or by every
    // thread in the same order (shared keys), so the attempted indices form a prefix.
    while attempted.contains(&key_of(i)) {
        highest = Some(i);
        i += 1;
    }
    highest
}

#[test]
fn acknowledged_keys_survive_kill_9() {
    let (mut rng, seed) = seeded_rng("acknowledged_keys_survive_kill_9");
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().segment_size_bytes(crash::SEGMENT_SIZE_BYTES);
    // Every key that must be present, with its value: acknowledged, or seen present after a
    // crash (a record recovery once read is in the file and must stay there).
    let mut must: BTreeMap<String, String> = BTreeMap::new();
    let mut acked_total = 0;
    let mut truncated_tails = 0;

    for round in 0..ROUNDS {
        let report = run_child(crash::MODE_INSERT, dir.path(), round, seed, &mut rng);
        let context = format!("seed {seed}, round {round}");

        let store = Store::open_with(dir.path(), config())
            .unwrap_or_else(|e| panic!("{context}: reopen after kill -9 failed: {e}"));
        truncated_tails += usize::from(store.recovery_report().truncated_tail.is_some());

        // All answers for one key agree: the first inserter's value.
        for (key, values) in &report.acked {
            assert!(
                values.iter().all(|v| *v == values[0]),
                "{context}: key {key} answered with different values {values:?}"
            );
            assert!(
                possible_values(round, key).contains(&values[0]),
                "{context}: {key}"
            );
            must.insert(key.clone(), values[0].clone());
        }
        acked_total += report.acked.len();

        // Attempted but unacknowledged keys may or may not have made it, but only with a value
        // that was offered for them.
        for key in report
            .attempted
            .iter()
            .filter(|k| !report.acked.contains_key(*k))
        {
            if let Some(found) = store.get(key.as_bytes()).unwrap() {
                let found = String::from_utf8(found.into_vec()).unwrap();
                assert!(
                    possible_values(round, key).contains(&found),
                    "{context}: unacknowledged key {key} holds {found:?}, which nobody offered"
                );
                must.insert(key.clone(), found);
            }
        }

        assert_present(&store, &must, &context);
        // Keys never attempted are absent.
        for key in &never_attempted(round, &report.attempted) {
            assert_eq!(
                store.get(key.as_bytes()).unwrap(),
                None,
                "{context}: key {key} was never attempted"
            );
        }
        // No other key was invented either: the store holds exactly the keys found above.
        assert_eq!(store.stats().live_keys, must.len() as u64, "{context}");

        // The recovered store takes new keys: a fresh range is inserted and must survive too.
        for i in 0..5 {
            let key = format!("r{round}/fresh/{i}");
            let outcome = store
                .check_or_insert(key.as_bytes(), LONG_TTL, b"fresh")
                .unwrap();
            assert_eq!(outcome, Outcome::Inserted, "{context}: fresh key {key}");
            must.insert(key, "fresh".to_string());
        }
        store.close().unwrap();
        eprintln!(
            "round {round}: ready {}, {} attempted, {} acknowledged, {} keys in the store",
            report.ready,
            report.attempted.len(),
            report.acked.len(),
            must.len()
        );
    }
    assert!(
        acked_total > 0,
        "seed {seed}: no round acknowledged anything"
    );
    eprintln!("{truncated_tails} of {ROUNDS} reopens cut a torn tail");
}

/// Every key of `must` (acknowledged, or recovered in an earlier round) is a duplicate with its
/// exact value: asked in one batch, which writes nothing if the store is right.
fn assert_present(store: &Store, must: &BTreeMap<String, String>, context: &str) {
    let items: Vec<(&[u8], Duration, &[u8])> = must
        .keys()
        .map(|k| (k.as_bytes(), LONG_TTL, &b"probe"[..]))
        .collect();
    let bytes_before = store.stats().bytes_appended;
    let outcomes = store.check_or_insert_batch(&items).unwrap();
    for ((key, expected), outcome) in must.iter().zip(&outcomes) {
        assert_eq!(
            *outcome,
            Outcome::Duplicate(Value::from(expected.as_bytes())),
            "{context}: key {key} was acknowledged or recovered before"
        );
    }
    assert_eq!(store.stats().bytes_appended, bytes_before, "{context}");
}

/// The keys never attempted in `round`: the next ones of every family after the highest
/// attempted, and another round's.
fn never_attempted(round: u32, attempted: &BTreeSet<String>) -> Vec<String> {
    let mut keys = Vec::new();
    for thread in 0..THREADS {
        let key_of = |i| own_key(round, thread, i);
        let next = highest_attempted(attempted, key_of).map_or(0, |h| h + 1);
        keys.extend((next..next + 20).map(key_of));
    }
    let key_of = |j| shared_key(round, j);
    let next = highest_attempted(attempted, key_of).map_or(0, |h| h + 1);
    keys.extend((next..next + 20).map(key_of));
    keys.extend((0..20).map(|i| own_key(round + 1_000, 0, i)));
    keys
}

/// `Durability::Never` answers before a record is written, so a kill may lose the latest
/// answers' records; it must never leave a hole. Each of the writer's rounds writes every record
/// placed so far (it pads the lanes' open chunks first, so the bytes up to the tail are all
/// placed), and a kill keeps what was written (a torn last write is cut at open): the records
/// placed before some moment. A thread places its records one after another, so after each kill
/// the own keys of each thread that survived are a prefix of those it offered. Also: a surviving key holds the value it was answered with (or,
/// unanswered, one that was offered), keys recovered once stay, nothing never offered appears,
/// and `verify` finds the files clean, with padding in them (the lanes did reserve chunks: the
/// path under test).
#[test]
fn never_mode_keeps_a_prefix_of_each_thread_s_records_across_kill_9() {
    let (mut rng, seed) =
        seeded_rng("never_mode_keeps_a_prefix_of_each_thread_s_records_across_kill_9");
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::default().segment_size_bytes(crash::SEGMENT_SIZE_BYTES);
    let mut must: BTreeMap<String, String> = BTreeMap::new();
    let (mut survived, mut lost, mut padding_records) = (0usize, 0usize, 0u64);

    for round in 0..ROUNDS {
        let report = run_child(crash::MODE_INSERT_NEVER, dir.path(), round, seed, &mut rng);
        let context = format!("seed {seed}, round {round}");
        let store = Store::open_with(dir.path(), config())
            .unwrap_or_else(|e| panic!("{context}: reopen after kill -9 failed: {e}"));

        for (key, values) in &report.acked {
            assert!(
                values.iter().all(|v| *v == values[0]),
                "{context}: key {key} answered with different values {values:?}"
            );
        }
        for key in &report.attempted {
            let Some(found) = store.get(key.as_bytes()).unwrap() else {
                lost += 1;
                continue;
            };
            let found = String::from_utf8(found.into_vec()).unwrap();
            match report.acked.get(key) {
                Some(values) => assert_eq!(
                    found, values[0],
                    "{context}: key {key} survived with another value than it was answered with"
                ),
                None => assert!(
                    possible_values(round, key).contains(&found),
                    "{context}: unacknowledged key {key} holds {found:?}, which nobody offered"
                ),
            }
            survived += 1;
            must.insert(key.clone(), found);
        }

        // No hole: each thread's surviving own keys are the first ones it offered.
        for thread in 0..THREADS {
            let key_of = |i| own_key(round, thread, i);
            let Some(highest) = highest_attempted(&report.attempted, key_of) else {
                continue;
            };
            let kept = (0..=highest)
                .take_while(|&i| must.contains_key(&key_of(i)))
                .count() as u64;
            if let Some(after_gap) = (kept..=highest).find(|&i| must.contains_key(&key_of(i))) {
                panic!(
                    "{context}: thread {thread} kept its keys 0..{kept}, lost key {kept} and \
                     kept key {after_gap}: a hole in the log"
                );
            }
        }

        assert_present(&store, &must, &context);
        for key in never_attempted(round, &report.attempted) {
            assert_eq!(
                store.get(key.as_bytes()).unwrap(),
                None,
                "{context}: key {key} was never attempted"
            );
        }
        assert_eq!(store.stats().live_keys, must.len() as u64, "{context}");
        store.close().unwrap();

        let verified = idem::verify(dir.path()).unwrap();
        assert!(verified.is_clean(), "{context}: {:?}", verified.damage);
        padding_records = verified.segments.iter().map(|s| s.padding.0).sum();
        eprintln!(
            "round {round}: ready {}, {} attempted, {} acknowledged, {} keys in the store, \
             {padding_records} padding records in the log",
            report.ready,
            report.attempted.len(),
            report.acked.len(),
            must.len()
        );
    }
    assert!(survived > 0, "seed {seed}: no key survived any kill");
    assert!(
        lost > 0,
        "seed {seed}: no kill lost a key: the test did not cut into `Never`'s lag"
    );
    assert!(
        padding_records > 0,
        "seed {seed}: no lane reserved a chunk: the test did not reach the path it is for"
    );
}
