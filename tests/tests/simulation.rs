//! Deterministic simulation: one seed drives random operations, a `ManualClock`, injected storage
//! faults (failed and short writes, failed fsyncs, a full disk) and simulated power loss with
//! reopen, against a model that tracks every state each key may be in. It guards the durability
//! contract of `Sync` mode: every acknowledged answer survives a crash, nothing never inserted is
//! seen, nothing expired or removed comes back, and after a failed write or fsync the store
//! acknowledges nothing more.
//!
//! Every seed reaches reclamation: segments of a few KiB (`segment_size_bytes_for_testing`),
//! eager compaction, `maintain()` between operations, and clock jumps small and large (past TTLs
//! and leases), so rolls, compaction, whole-segment deletion and checkpoints meet removals,
//! re-inserts with shorter and longer TTLs, claims completed with TTLs shorter and longer than
//! their lease, fingerprints, batches, `check_or_insert_with` and power loss. After every crash or
//! restart the store is opened twice: once replaying the whole log (checkpoint file removed) and
//! once from the checkpoint; both must give the same answer for every key, the same `in_doubt()`
//! and the same `live_keys`, and those answers must fit the model.
//!
//! Transactions are mixed in: dedup checks on the same keys (their inserts expire and are
//! removed, claimed and re-inserted like any other), state reads, writes and deletions on a few
//! state keys, and input positions; sometimes two transactions are open at once on a few keys,
//! their actions interleaved with plain calls and maintenance, and both committed: the model
//! predicts which commit conflicts (a dedup key recorded first, a state entry changed since it
//! was read, a position moved past). It keeps every possible world of the state namespace: an
//! acknowledged commit is in all of them, a commit that failed with an I/O error forks each
//! world in two (whole or absent). After every reopen, the state and positions read from the
//! checkpoint and by full replay must be equal and be one of those worlds, and the dedup inserts
//! of an unacknowledged commit are present exactly when the rest of it is.
//!
//! A failing seed is printed; replay it with `IDEM_SIM_SEED=<seed> cargo test --release -p
//! idem-tests --test simulation`. `IDEM_SIM_SEEDS=<n>` sets how many seeds run (default 3000 in
//! release), plus the seeds beyond them that once failed (`FAILED_ONCE`);
//! `IDEM_SIM_FIRST_SEED=<s>` runs the `<n>` seeds from `<s>` on instead (a sweep of new seeds);
//! `IDEM_SIM_TRACE=1` prints every step; `IDEM_SIM_KEEP_GOING=1` runs every seed and lists each
//! failing seed with its message instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use idem::sim::{Faults, SimStorage, Storage};
use idem::{
    Claim, ClaimToken, Clock, Config, Durability, Error, ManualClock, Outcome, Store, Transaction,
    Value, WithError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 48;
/// State keys that transactions write (`st-..`), and input sources (`src-..`).
const STATE_KEYS: u64 = 10;
const SOURCES: u64 = 3;
const DIR: &str = "/sim/store";
const CHECKPOINT_FILE: &str = "checkpoint.idem";
const FINGERPRINTS: [&[u8]; 3] = [b"", b"fp-a", b"fp-b"];
const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
/// How long an expired entry may stay in the index after its deadline (tick plus rounding).
const REAP_SLACK: u64 = 3 * SECOND;

/// One state a key may be in. Deadlines are in milliseconds; an entry past its deadline reads as
/// absent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum St {
    Absent,
    /// A recorded value; `claim` names the claim whose `complete` recorded it.
    Value {
        value: Vec<u8>,
        until: u64,
        fp: Vec<u8>,
        claim: Option<u64>,
    },
    /// A claim (numbered by the simulation) whose lease ends at `until`.
    Claim {
        num: u64,
        until: u64,
        fp: Vec<u8>,
    },
}

/// What a state looks like at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live<'a> {
    None,
    Value(&'a [u8], &'a [u8]),
    Claim(u64, u64, &'a [u8]),
}

impl St {
    fn live(&self, now: u64) -> Live<'_> {
        match self {
            St::Value {
                value, until, fp, ..
            } if *until > now => Live::Value(value, fp),
            St::Claim { num, until, fp } if *until > now => Live::Claim(*num, *until, fp),
            _ => Live::None,
        }
    }
}

/// Whether a fingerprinted call with `given` passes the check against a record's `stored` one.
fn fp_ok(stored: &[u8], given: &[u8]) -> bool {
    given.is_empty() || stored.is_empty() || stored == given
}

#[derive(Debug)]
struct KeyModel {
    states: Vec<St>,
    /// The last events of the key, printed when an answer fits no state.
    history: Vec<String>,
    /// The deadline of every record ever written for the key (an unreaped index entry may hold
    /// any of them).
    deadlines: Vec<u64>,
}

impl Default for KeyModel {
    fn default() -> Self {
        KeyModel {
            states: vec![St::Absent],
            history: Vec::new(),
            deadlines: Vec::new(),
        }
    }
}

/// Every state each key may be in, given the answers seen so far.
#[derive(Debug, Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, KeyModel>,
}

impl Model {
    fn key(&mut self, key: &[u8]) -> &mut KeyModel {
        self.keys.entry(key.to_vec()).or_default()
    }

    fn note(&mut self, key: &[u8], event: String) {
        let history = &mut self.key(key).history;
        history.push(event);
        if history.len() > 16 {
            history.remove(0);
        }
    }

    /// Keeps the states that agree with an observed answer; panics if none does.
    fn observe(
        &mut self,
        key: &[u8],
        now: u64,
        what: &str,
        answer: &str,
        fits: impl Fn(Live<'_>) -> bool,
    ) {
        let model = self.key(key);
        let before = model.states.clone();
        model.states.retain(|state| fits(state.live(now)));
        if model.states.is_empty() {
            let hint = diagnose(&before, now, answer);
            panic!(
                "{what}: key {} at {}: answer {answer} fits no possible state {before:?}{hint}\n  \
                 history of the key:\n    {}",
                String::from_utf8_lossy(key),
                now - ManualClock::DEFAULT_START_MILLIS,
                model.history.join("\n    ")
            );
        }
    }

    fn set(&mut self, key: &[u8], state: St) {
        self.written(key, &state);
        self.key(key).states = vec![state];
    }

    fn written(&mut self, key: &[u8], state: &St) {
        if let St::Value { until, .. } | St::Claim { until, .. } = state {
            self.key(key).deadlines.push(*until);
        }
    }

    fn maybe(&mut self, key: &[u8], state: St) {
        self.written(key, &state);
        let states = &mut self.key(key).states;
        if !states.contains(&state) {
            states.push(state);
        }
    }

    fn may_be_absent(&mut self, key: &[u8], now: u64) -> bool {
        self.key(key)
            .states
            .iter()
            .any(|s| s.live(now) == Live::None)
    }
}

/// A line naming the known bug class an impossible answer belongs to.
fn diagnose(states: &[St], now: u64, answer: &str) -> &'static str {
    let completed = states
        .iter()
        .any(|s| matches!(s, St::Value { claim: Some(_), .. }));
    let absent = states.iter().all(|s| s.live(now) == Live::None);
    if completed && (answer.contains("InFlight") || answer.contains("in doubt")) {
        "\n  => a completed claim came back (InFlight / in doubt) after restart"
    } else if absent && answer.starts_with("Some") {
        "\n  => a removed or expired key came back"
    } else {
        ""
    }
}

fn key(index: u64) -> Vec<u8> {
    format!("key-{index:03}").into_bytes()
}

fn state_key(index: u64) -> Vec<u8> {
    format!("st-{index:02}").into_bytes()
}

fn source(index: u64) -> Vec<u8> {
    format!("src-{index}").into_bytes()
}

/// The state keys a reopen reads: every one transactions write, and two dedup keys' names, which
/// no transaction writes as state (a namespace apart).
fn checked_state_keys() -> Vec<Vec<u8>> {
    (0..STATE_KEYS)
        .map(state_key)
        .chain([key(0), key(1)])
        .collect()
}

fn millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn tracing() -> bool {
    std::env::var_os("IDEM_SIM_TRACE").is_some()
}

/// The TTLs a phase of the run uses: uniform phases fill whole segments with records that
/// expire together (so they are deleted whole), mixed ones make sparse segments to compact.
#[derive(Debug, Clone, Copy)]
enum Regime {
    Short,
    Medium,
    Long,
    Mixed,
}

/// An error that a call may return whatever the storage does.
fn semantic(error: &Error) -> bool {
    matches!(
        error,
        Error::ClaimInFlight { .. } | Error::FingerprintMismatch { .. } | Error::StaleClaim { .. }
    )
}

/// The answers of a freshly opened store: every key's `get`, and `in_doubt()`.
#[derive(Debug, PartialEq)]
struct Snapshot {
    values: Vec<Option<Value>>,
    in_doubt: Vec<ClaimToken>,
    /// `get_state` of every key of [`checked_state_keys`].
    state: Vec<Option<Value>>,
    positions: Vec<(Vec<u8>, u64)>,
}

/// Per-seed totals, for the report and the reachability assertions.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    reopens: u64,
    injected: u64,
    compacted: u64,
    deleted: u64,
    checkpoints: u64,
    claims_completed: u64,
    with_closure_on_claim: u64,
    tx_committed: u64,
    tx_dedup_inserted: u64,
    tx_conflicts: u64,
    /// Conflicts only a compaction between a read and the commit explains.
    tx_unacknowledged: u64,
    tx_unacknowledged_present: u64,
    tx_unacknowledged_absent: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.reopens += other.reopens;
        self.injected += other.injected;
        self.compacted += other.compacted;
        self.deleted += other.deleted;
        self.checkpoints += other.checkpoints;
        self.claims_completed += other.claims_completed;
        self.with_closure_on_claim += other.with_closure_on_claim;
        self.tx_committed += other.tx_committed;
        self.tx_dedup_inserted += other.tx_dedup_inserted;
        self.tx_conflicts += other.tx_conflicts;
        self.tx_unacknowledged += other.tx_unacknowledged;
        self.tx_unacknowledged_present += other.tx_unacknowledged_present;
        self.tx_unacknowledged_absent += other.tx_unacknowledged_absent;
    }
}

struct Sim {
    rng: StdRng,
    storage: SimStorage,
    clock: ManualClock,
    config: Config,
    model: Model,
    next_value: u64,
    faults: Faults,
    /// Faults injected when the current process opened the store.
    injected_at_open: u64,
    /// Whether a write failed in this process (it must acknowledge nothing more).
    poisoned: bool,
    regime: Regime,
    maintain_chance: f64,
    /// Whether transactions run in this phase. State records never expire, so a segment holding
    /// one is compacted, never deleted whole: phases without them leave segments to delete.
    tx_phase: bool,
    next_claim: u64,
    /// Tokens the simulation holds (some already stale), with their claim numbers.
    tokens: Vec<(ClaimToken, u64)>,
    tally: Tally,
    tx: TxModel,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let storage = SimStorage::new(seed);
        let clock = ManualClock::new();
        let segment = rng.gen_range(4096..8192);
        let ratio = [0.3, 0.5, 0.7, 0.9, 0.95][rng.gen_range(0..5)];
        let checkpoint_every = [0, 0, 4096, 16_384][rng.gen_range(0..4)];
        let mut config = Config::default()
            .durability(Durability::Sync)
            .clock(clock.clone())
            .storage(storage.clone())
            .background_maintenance(false)
            .checkpoint_every_bytes(checkpoint_every)
            // Deltas between the full checkpoints: a reopen loads the chain.
            .checkpoint_delta_every_bytes(checkpoint_every / 4)
            .segment_size_bytes_for_testing(segment)
            .compaction_live_ratio(ratio)
            .shard_count(4);
        if seed.is_multiple_of(2) {
            // Even seeds replay every segment with two threads (the default only shares long
            // stretches): the answers must not depend on it.
            config = config.parallel_replay_min_bytes_for_testing(0);
        }
        if seed % 3 == 1 {
            // Every third seed lays the index out at open for more keys than it will see
            // (`Config::expected_keys`: 512 slots a shard instead of the 64 its keys need, kept
            // from shrinking): the layout must not change an answer. No draw from `rng`, so the
            // seed's run is otherwise the same.
            config = config.expected_keys(KEYS * 16);
        }
        if seed % 5 == 2 {
            // Every fifth seed replays segments through reads instead of maps (the simulated
            // disk maps a file as a copy, and panics if the engine writes or cuts a file while
            // it is mapped): the answers must not depend on it. No draw from `rng` either.
            config = config.map_segments_at_open(false);
        }
        if seed % 7 == 3 {
            // Every seventh seed sends each append through the next append lane in turn, with
            // chunks reserved ahead even in `Sync` mode (`log`'s fenced inserts): one thread
            // then interleaves lanes as several would, so chunks are fenced, padded at every
            // commit and checkpoint, replayed and compacted over. No draw from `rng` either.
            config = config.rotate_append_lanes_for_testing(true);
        }
        if rng.gen_bool(0.3) {
            // Few hash bits: many keys share a tag, so the full-key check is exercised.
            config = config.hash_mask_for_testing(0xF000_0000_000F_0000);
        }
        let faults = if rng.gen_bool(0.4) {
            Faults {
                write_error_per_million: rng.gen_range(0..8_000),
                short_write_per_million: rng.gen_range(0..8_000),
                sync_error_per_million: rng.gen_range(0..8_000),
                space_limit_bytes: rng.gen_bool(0.2).then(|| rng.gen_range(20_000..200_000)),
            }
        } else {
            Faults::default()
        };
        let maintain_chance = rng.gen_range(0.05..0.4);
        Sim {
            rng,
            storage,
            clock,
            config,
            model: Model::default(),
            next_value: 0,
            faults,
            injected_at_open: 0,
            poisoned: false,
            regime: Regime::Mixed,
            maintain_chance,
            tx_phase: false,
            next_claim: 0,
            tokens: Vec::new(),
            tally: Tally::default(),
            tx: TxModel::default(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_millis()
    }

    fn injected(&self) -> u64 {
        self.storage.injected().values().sum()
    }

    /// Whether an I/O error may have a cause: a fault was injected since this process opened.
    fn fault_since_open(&self) -> bool {
        self.injected() > self.injected_at_open
    }

    /// Fails the run on an error that no injected fault explains.
    fn expect_fault(&self, what: &str, call: &str, error: &dyn std::fmt::Display) {
        assert!(
            self.fault_since_open(),
            "{what}: {call} failed with no fault injected since open: {error}"
        );
    }

    fn open_store(&mut self, what: &str) -> Store {
        // Faults off while opening: a failed open is not what this test studies.
        self.storage.set_faults(Faults::default());
        // The process's own view of the disk: if anything keeps this store alive past the next
        // crash, it can no longer change the disk the next process opens.
        let config = self.config.clone().storage(self.storage.process());
        Store::open_with(Path::new(DIR), config)
            .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"))
    }

    fn value(&mut self) -> Vec<u8> {
        self.next_value += 1;
        let len = if self.rng.gen_bool(0.1) {
            self.rng.gen_range(200..600)
        } else {
            self.rng.gen_range(0..120)
        };
        let mut value = format!("v{}", self.next_value).into_bytes();
        value.resize(value.len().max(len), b'.');
        value
    }

    fn ttl(&mut self) -> Duration {
        let regime = match self.regime {
            Regime::Mixed => {
                [Regime::Short, Regime::Medium, Regime::Long][self.rng.gen_range(0..3)]
            }
            other => other,
        };
        let ms = match regime {
            Regime::Short => self.rng.gen_range(1..10 * SECOND),
            Regime::Medium => self.rng.gen_range(10 * SECOND..10 * MINUTE),
            _ => self.rng.gen_range(HOUR..12 * HOUR),
        };
        Duration::from_millis(ms)
    }

    fn lease(&mut self) -> Duration {
        Duration::from_millis(match self.rng.gen_range(0..3) {
            0 => self.rng.gen_range(1..5 * SECOND),
            1 => self.rng.gen_range(30 * SECOND..10 * MINUTE),
            _ => self.rng.gen_range(HOUR..6 * HOUR),
        })
    }

    fn fingerprint(&mut self) -> &'static [u8] {
        FINGERPRINTS[self.rng.gen_range(0..FINGERPRINTS.len())]
    }

    fn advance(&mut self) {
        let by = match self.rng.gen_range(0..100) {
            0..=69 => self.rng.gen_range(0..3 * SECOND),
            70..=92 => self.rng.gen_range(5 * SECOND..5 * MINUTE),
            _ => self.rng.gen_range(HOUR..14 * HOUR),
        };
        self.clock.advance(Duration::from_millis(by));
    }

    fn tally_store(&mut self, store: &Store) {
        let stats = store.stats();
        self.tally.compacted += stats.segments_compacted;
        self.tally.deleted += stats.segments_deleted;
        self.tally.checkpoints += stats.checkpoints_written;
    }

    /// A maintenance round; with no fault since open it must succeed.
    fn maintain(&mut self, store: &Store, what: &str) {
        if let Err(e) = store.maintain() {
            self.expect_fault(what, "maintain", &e);
        }
    }

    /// Reads the checkpoint file, if there is one.
    fn read_checkpoint(&self) -> Option<Vec<u8>> {
        let path = Path::new(DIR).join(CHECKPOINT_FILE);
        let file = self.storage.open(&path).ok()?;
        let len = file.len().unwrap() as usize;
        let mut bytes = vec![0; len];
        let got = file.read_at(&mut bytes, 0).unwrap();
        assert_eq!(got, len);
        Some(bytes)
    }

    fn snapshot(&mut self, store: &Store, what: &str) -> Snapshot {
        let values = (0..KEYS)
            .map(|index| {
                store
                    .get(&key(index))
                    .unwrap_or_else(|e| panic!("{what}: get failed on a freshly opened store: {e}"))
            })
            .collect();
        let in_doubt = store
            .in_doubt()
            .unwrap_or_else(|e| panic!("{what}: in_doubt failed on a freshly opened store: {e}"));
        let state = checked_state_keys()
            .iter()
            .map(|k| {
                store.get_state(k).unwrap_or_else(|e| {
                    panic!("{what}: get_state failed on a freshly opened store: {e}")
                })
            })
            .collect();
        let positions = store
            .positions()
            .unwrap_or_else(|e| panic!("{what}: positions failed on a freshly opened store: {e}"));
        for (source, position) in &positions {
            assert_eq!(
                store.position(source).unwrap(),
                Some(*position),
                "{what}: position() and positions() disagree"
            );
        }
        Snapshot {
            values,
            in_doubt,
            state,
            positions,
        }
    }

    /// A new process opens the store: once replaying the whole log (checkpoint file removed),
    /// once from the checkpoint. Both must agree with each other and with the model.
    fn reopen(&mut self, what: &str) -> Store {
        self.tally.reopens += 1;
        self.storage.set_faults(Faults::default());
        let dir = Path::new(DIR);
        let checkpoint_path: PathBuf = dir.join(CHECKPOINT_FILE);
        let saved = self.read_checkpoint();
        if saved.is_some() {
            self.storage.remove(&checkpoint_path).unwrap();
            self.storage.sync_dir(dir).unwrap();
        }
        let replay_what = format!("{what} (full replay)");
        let replayed = self.open_store(&replay_what);
        let replay = self.snapshot(&replayed, &replay_what);
        replayed
            .maintain()
            .unwrap_or_else(|e| panic!("{replay_what}: maintain failed without faults: {e}"));
        let replay_live = replayed.stats().live_keys;
        self.tally_store(&replayed);
        drop(replayed);
        if let Some(bytes) = &saved {
            let file = self.storage.create_truncate(&checkpoint_path).unwrap();
            file.write_all_at(bytes, 0).unwrap();
            file.sync_data().unwrap();
            self.storage.sync_dir(dir).unwrap();
        }
        let store = self.open_store(what);
        let from_checkpoint = self.snapshot(&store, what);
        let now = self.now();
        for index in 0..KEYS {
            let (a, b) = (
                &replay.values[index as usize],
                &from_checkpoint.values[index as usize],
            );
            assert!(
                a == b,
                "{what}: full replay differs from checkpoint reopen (checkpoint file {}): key {}: \
                 replay {a:?}, checkpoint {b:?}\n  history of the key:\n    {}",
                if saved.is_some() { "present" } else { "absent" },
                String::from_utf8_lossy(&key(index)),
                self.model.key(&key(index)).history.join("\n    ")
            );
        }
        if replay.in_doubt != from_checkpoint.in_doubt {
            let mut keys: Vec<Vec<u8>> = replay
                .in_doubt
                .iter()
                .chain(&from_checkpoint.in_doubt)
                .map(|t| t.key().to_vec())
                .collect();
            keys.dedup();
            let histories: Vec<String> = keys
                .iter()
                .map(|k| {
                    let model = self.model.key(k);
                    format!(
                        "{} (model states {:?}):\n    {}",
                        String::from_utf8_lossy(k),
                        model.states,
                        model.history.join("\n    ")
                    )
                })
                .collect();
            panic!(
                "{what}: full replay and checkpoint reopen disagree on in_doubt(): replay {:?}, \
                 checkpoint {:?}\n  {}",
                replay.in_doubt,
                from_checkpoint.in_doubt,
                histories.join("\n  ")
            );
        }
        assert!(
            replay.state == from_checkpoint.state && replay.positions == from_checkpoint.positions,
            "{what}: full replay differs from checkpoint reopen (checkpoint file {}) on state or \
             positions:\n  replay state {:?} positions {:?}\n  checkpoint state {:?} positions \
             {:?}\n  transactions:\n    {}",
            if saved.is_some() { "present" } else { "absent" },
            replay.state,
            replay.positions,
            from_checkpoint.state,
            from_checkpoint.positions,
            self.tx.history.join("\n    ")
        );
        self.check_tx_worlds(&from_checkpoint, what);
        self.check_snapshot(&from_checkpoint, now, what);
        store
            .maintain()
            .unwrap_or_else(|e| panic!("{what}: maintain failed without faults: {e}"));
        let live = store.stats().live_keys;
        // Index entries are the live keys plus expired ones the wheels have not reaped yet
        // (within about a tick of their deadline, which checkpoint and replay round alike).
        let answers = from_checkpoint
            .values
            .iter()
            .filter(|v| v.is_some())
            .count()
            + from_checkpoint.in_doubt.len();
        let recent = (0..KEYS)
            .filter(|&index| {
                self.model
                    .key(&key(index))
                    .deadlines
                    .iter()
                    .any(|&until| until <= now && until + REAP_SLACK > now)
            })
            .count();
        for (who, count) in [("full replay", replay_live), ("checkpoint reopen", live)] {
            if !(answers..=answers + recent).contains(&(count as usize)) {
                // Which keys does the index hold that answer absent? Claiming them tells.
                let mut hidden = Vec::new();
                for index in 0..KEYS {
                    let key = key(index);
                    if from_checkpoint.values[index as usize].is_none()
                        && !from_checkpoint
                            .in_doubt
                            .iter()
                            .any(|t| t.key() == key.as_slice())
                    {
                        if let Ok(claim) = store.claim(&key, Duration::from_millis(1)) {
                            if !matches!(claim, Claim::Acquired(_)) {
                                hidden.push(format!(
                                    "{} answers claim() with {claim:?}; history:\n    {}",
                                    String::from_utf8_lossy(&key),
                                    self.model.key(&key).history.join("\n    ")
                                ));
                            }
                        }
                    }
                }
                eprintln!(
                    "{what}: keys absent by get and in_doubt: {}",
                    hidden.join("\n  ")
                );
                eprintln!(
                    "{what}: {:?} at {}",
                    store.recovery_report(),
                    now - ManualClock::DEFAULT_START_MILLIS
                );
                for later in [1u64, 2, 4, 8, 30, 300, 3000, 30000] {
                    self.clock.advance(Duration::from_secs(later));
                    let _ = store.maintain();
                    eprintln!("  +{later} s: live_keys {}", store.stats().live_keys);
                }
            }
            assert!(
                (answers..=answers + recent).contains(&(count as usize)),
                "{what}: {who} has live_keys {count} after maintain, but {answers} keys answer \
                 live and {recent} expired within {REAP_SLACK} ms (full replay {replay_live}, \
                 checkpoint reopen {live})"
            );
        }
        self.injected_at_open = self.injected();
        self.poisoned = false;
        self.storage.set_faults(self.faults);
        store
    }

    /// Checks a fresh process's answers against the model; adopts the tokens in doubt.
    fn check_snapshot(&mut self, snapshot: &Snapshot, now: u64, what: &str) {
        for index in 0..KEYS {
            let key = key(index);
            let seen = snapshot.values[index as usize].clone();
            self.model.observe(
                &key,
                now,
                what,
                &format!(
                    "{:?} from get",
                    seen.as_deref().map(String::from_utf8_lossy)
                ),
                |live| match (&seen, live) {
                    (Some(seen), Live::Value(value, _)) => **seen == *value,
                    (None, Live::Value(..)) => false,
                    (None, _) => true,
                    (Some(_), _) => false,
                },
            );
            let token = snapshot
                .in_doubt
                .iter()
                .find(|t| t.key() == key.as_slice())
                .cloned();
            let known: Vec<(u64, ClaimToken)> =
                self.tokens.iter().map(|(t, n)| (*n, t.clone())).collect();
            match &token {
                Some(token) => {
                    let until = millis(token.lease_until());
                    let fp = token.fingerprint().to_vec();
                    self.model.observe(
                        &key,
                        now,
                        what,
                        &format!("in doubt (claim lease until {until})"),
                        |live| match live {
                            Live::Claim(num, lease, claim_fp) => {
                                lease == until
                                    && claim_fp == fp.as_slice()
                                    && known.iter().all(|(n, t)| *n != num || t == token)
                            }
                            _ => false,
                        },
                    );
                }
                None => self.model.observe(&key, now, what, "not in doubt", |live| {
                    !matches!(live, Live::Claim(..))
                }),
            }
            if let Some(token) = token {
                if let Some(St::Claim { num, .. }) = self.model.key(&key).states.first().cloned() {
                    if !self.tokens.iter().any(|(t, _)| *t == token) {
                        self.tokens.push((token, num));
                    }
                }
            }
        }
    }

    fn trace(&self, text: impl FnOnce() -> String) {
        if tracing() {
            eprintln!("  {}", text());
        }
    }

    fn step(&mut self, mut store: Store, step: usize) -> Store {
        let now = self.now();
        let index = self.rng.gen_range(0..KEYS);
        let key = key(index);
        let what = format!("step {step}");
        let at = now - ManualClock::DEFAULT_START_MILLIS;
        if tracing() {
            eprintln!(
                "{what}: now {at} key {} states {:?}",
                String::from_utf8_lossy(&key),
                self.model.key(&key).states
            );
        }
        let tx_phase = self.tx_phase;
        match self.rng.gen_range(0..if tx_phase { 116 } else { 100 }) {
            100..=108 => {
                if self.op_tx(&store, &what) {
                    // Its fsync failed: power loss may keep any prefix of its group; a process
                    // that just dies leaves all of it to the next one.
                    let power_loss = self.rng.gen_bool(0.5);
                    self.trace(|| format!("after a failed commit, power loss {power_loss}"));
                    self.tally_store(&store);
                    if power_loss {
                        self.storage.crash();
                    }
                    drop(store);
                    store = self.reopen(&format!(
                        "{what} (after a commit whose fsync failed, power loss {power_loss})"
                    ));
                }
            }
            109..=112 => self.op_tx_race(&store, &what),
            113..=115 => self.op_state_read(&store, &what),
            0..=27 => self.op_insert(&store, &key, &what),
            28..=32 => self.op_batch(&store, &what),
            33..=39 => self.op_get(&store, &key, &what),
            40..=47 => self.op_remove(&store, &key, &what),
            48..=55 => self.op_claim(&store, &key, &what),
            56..=63 => self.op_resolve(&store, &what),
            64..=68 => self.op_with(&store, &key, &what),
            69..=82 => {
                self.advance();
                self.trace(|| {
                    format!(
                        "clock -> {}",
                        self.now() - ManualClock::DEFAULT_START_MILLIS
                    )
                });
            }
            83..=90 => self.maintain(&store, &what),
            91..=92 => {
                if let Err(e) = store.checkpoint() {
                    self.expect_fault(&what, "checkpoint", &e);
                }
            }
            93..=94 => {
                // Power loss, then a new process opens the store.
                self.trace(|| "crash".into());
                self.tally_store(&store);
                self.storage.crash();
                drop(store);
                store = self.reopen(&format!("{what} (after crash)"));
            }
            95 => {
                // Power loss right after a maintenance round.
                self.trace(|| "maintain, then crash".into());
                self.maintain(&store, &what);
                self.tally_store(&store);
                self.storage.crash();
                drop(store);
                store = self.reopen(&format!("{what} (after maintain and crash)"));
            }
            96 => {
                // A clean restart.
                self.trace(|| "restart".into());
                self.tally_store(&store);
                if let Err(e) = store.close() {
                    self.expect_fault(&what, "close", &e);
                }
                store = self.reopen(&format!("{what} (after restart)"));
            }
            _ => {
                self.regime = [Regime::Short, Regime::Medium, Regime::Long, Regime::Mixed]
                    [self.rng.gen_range(0..4)];
                self.trace(|| format!("regime {:?}", self.regime));
            }
        }
        if self.rng.gen_bool(self.maintain_chance) {
            self.maintain(&store, &format!("{what} (maintain after)"));
        }
        store
    }

    fn op_insert(&mut self, store: &Store, key: &[u8], what: &str) {
        let now = self.now();
        let ttl = self.ttl();
        let value = self.value();
        let fp = self.fingerprint();
        let answer = if fp.is_empty() {
            store.check_or_insert(key, ttl, &value)
        } else {
            store.check_or_insert_fingerprinted(key, ttl, &value, fp)
        };
        self.trace(|| format!("check_or_insert ttl {ttl:?} fp {fp:?} -> {answer:?}"));
        let fresh = St::Value {
            value: value.clone(),
            until: now + ttl.as_millis() as u64,
            fp: fp.to_vec(),
            claim: None,
        };
        self.model.note(
            key,
            format!(
                "@{} check_or_insert {:?} ttl {ttl:?} fp {fp:?} -> {answer:?}",
                now - ManualClock::DEFAULT_START_MILLIS,
                String::from_utf8_lossy(&value)
            ),
        );
        match answer {
            Ok(Outcome::Inserted) => {
                assert!(!self.poisoned, "{what}: acknowledged after a failed write");
                self.model
                    .observe(key, now, what, "Inserted", |l| l == Live::None);
                self.model.set(key, fresh);
            }
            Ok(Outcome::Duplicate(seen)) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                self.model.observe(
                    key,
                    now,
                    what,
                    "Duplicate",
                    |l| matches!(l, Live::Value(v, stored) if *v == *seen && fp_ok(stored, fp)),
                );
            }
            Err(Error::ClaimInFlight { until }) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                let until = millis(until);
                self.model.observe(
                    key,
                    now,
                    what,
                    "ClaimInFlight",
                    |l| matches!(l, Live::Claim(_, u, stored) if u == until && fp_ok(stored, fp)),
                );
            }
            Err(Error::FingerprintMismatch { .. }) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                self.model
                    .observe(key, now, what, "FingerprintMismatch", |l| match l {
                        Live::Value(_, stored) | Live::Claim(_, _, stored) => !fp_ok(stored, fp),
                        Live::None => false,
                    });
            }
            Err(e) => {
                self.expect_fault(what, "check_or_insert", &e);
                self.poisoned = true;
                if self.model.may_be_absent(key, now) {
                    self.model.maybe(key, fresh);
                }
            }
        }
    }

    fn op_batch(&mut self, store: &Store, what: &str) {
        let now = self.now();
        let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..self.rng.gen_range(1..8))
            .map(|_| {
                let key = key(self.rng.gen_range(0..KEYS));
                (key, self.ttl(), self.value())
            })
            .collect();
        let answer = store.check_or_insert_batch(&items);
        self.trace(|| {
            let keys: Vec<_> = items
                .iter()
                .map(|(key, ttl, _)| format!("{} {ttl:?}", String::from_utf8_lossy(key)))
                .collect();
            format!(
                "batch of {} [{}] -> {answer:?}",
                items.len(),
                keys.join(", ")
            )
        });
        for (key, ttl, value) in &items {
            self.model.note(
                key,
                format!(
                    "@{} batch item {:?} ttl {ttl:?} -> {}",
                    now - ManualClock::DEFAULT_START_MILLIS,
                    String::from_utf8_lossy(value),
                    match &answer {
                        Ok(_) => "Ok".to_string(),
                        Err(e) => format!("Err({e})"),
                    }
                ),
            );
        }
        match answer {
            Ok(outcomes) => {
                assert!(
                    !self.poisoned,
                    "{what}: batch acknowledged after a failed write"
                );
                for ((key, ttl, value), outcome) in items.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Inserted => {
                            self.model
                                .observe(key, now, what, "batch Inserted", |l| l == Live::None);
                            let until = now + ttl.as_millis() as u64;
                            self.model.set(
                                key,
                                St::Value {
                                    value: value.clone(),
                                    until,
                                    fp: Vec::new(),
                                    claim: None,
                                },
                            );
                        }
                        Outcome::Duplicate(seen) => self.model.observe(
                            key,
                            now,
                            what,
                            "batch Duplicate",
                            |l| matches!(l, Live::Value(v, _) if *v == *seen),
                        ),
                    }
                }
            }
            Err(Error::ClaimInFlight { .. }) => {
                // A failed batch records nothing: the model keeps every item's states.
                assert!(
                    !self.poisoned,
                    "{what}: batch answered after a failed write"
                );
                let claimed = items.iter().any(|(key, _, _)| {
                    self.model
                        .key(key)
                        .states
                        .iter()
                        .any(|s| matches!(s.live(now), Live::Claim(..)))
                });
                assert!(
                    claimed,
                    "{what}: batch failed with ClaimInFlight, no item is claimed"
                );
            }
            Err(e) => {
                self.expect_fault(what, "check_or_insert_batch", &e);
                self.poisoned = true;
                // Unacknowledged: after power loss any subset of the items may be present.
                for (key, ttl, value) in &items {
                    if self.model.may_be_absent(key, now) {
                        let until = now + ttl.as_millis() as u64;
                        self.model.maybe(
                            key,
                            St::Value {
                                value: value.clone(),
                                until,
                                fp: Vec::new(),
                                claim: None,
                            },
                        );
                    }
                }
            }
        }
    }

    fn op_get(&mut self, store: &Store, key: &[u8], what: &str) {
        let now = self.now();
        let answer = store.get(key);
        self.trace(|| format!("get -> {answer:?}"));
        match answer {
            Ok(seen) => {
                assert!(!self.poisoned, "{what}: get answered after a failed write");
                let text = format!(
                    "{:?} from get",
                    seen.as_deref().map(String::from_utf8_lossy)
                );
                self.model
                    .observe(key, now, what, &text, |l| match (&seen, l) {
                        (Some(seen), Live::Value(v, _)) => **seen == *v,
                        (Some(_), _) => false,
                        (None, l) => !matches!(l, Live::Value(..)),
                    });
            }
            Err(e) => {
                self.expect_fault(what, "get", &e);
                self.poisoned = true;
            }
        }
    }

    fn op_remove(&mut self, store: &Store, key: &[u8], what: &str) {
        let now = self.now();
        let answer = store.remove(key);
        self.trace(|| format!("remove -> {answer:?}"));
        self.model.note(
            key,
            format!(
                "@{} remove -> {answer:?}",
                now - ManualClock::DEFAULT_START_MILLIS
            ),
        );
        match answer {
            Ok(true) => {
                assert!(
                    !self.poisoned,
                    "{what}: removal acknowledged after a failed write"
                );
                self.model
                    .observe(key, now, what, "remove true", |l| l != Live::None);
                self.model.set(key, St::Absent);
            }
            Ok(false) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                self.model
                    .observe(key, now, what, "remove false", |l| l == Live::None)
            }
            Err(e) => {
                self.expect_fault(what, "remove", &e);
                self.poisoned = true;
                self.model.maybe(key, St::Absent);
            }
        }
    }

    fn op_claim(&mut self, store: &Store, key: &[u8], what: &str) {
        let now = self.now();
        let lease = self.lease();
        let fp = self.fingerprint();
        let answer = if fp.is_empty() {
            store.claim(key, lease)
        } else {
            store.claim_fingerprinted(key, lease, fp)
        };
        self.trace(|| format!("claim lease {lease:?} fp {fp:?} -> {answer:?}"));
        let until = now + lease.as_millis() as u64;
        self.next_claim += 1;
        let num = self.next_claim;
        self.model.note(
            key,
            format!(
                "@{} claim #{num} lease {lease:?} fp {fp:?} -> {answer:?}",
                now - ManualClock::DEFAULT_START_MILLIS
            ),
        );
        let fresh = St::Claim {
            num,
            until,
            fp: fp.to_vec(),
        };
        match answer {
            Ok(Claim::Acquired(token)) => {
                assert!(
                    !self.poisoned,
                    "{what}: claim acknowledged after a failed write"
                );
                assert_eq!(millis(token.lease_until()), until, "{what}: lease end");
                self.model
                    .observe(key, now, what, "claim Acquired", |l| l == Live::None);
                self.model.set(key, fresh);
                self.tokens.push((token, num));
                if self.tokens.len() > 24 {
                    self.tokens.remove(0);
                }
            }
            Ok(Claim::Duplicate(seen)) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                self.model.observe(
                    key,
                    now,
                    what,
                    "claim Duplicate",
                    |l| matches!(l, Live::Value(v, stored) if *v == *seen && fp_ok(stored, fp)),
                );
            }
            Ok(Claim::InFlight { until }) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                let until = millis(until);
                self.model.observe(
                    key,
                    now,
                    what,
                    "claim InFlight",
                    |l| matches!(l, Live::Claim(_, u, stored) if u == until && fp_ok(stored, fp)),
                );
            }
            Err(Error::FingerprintMismatch { .. }) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                self.model
                    .observe(key, now, what, "claim FingerprintMismatch", |l| match l {
                        Live::Value(_, stored) | Live::Claim(_, _, stored) => !fp_ok(stored, fp),
                        Live::None => false,
                    });
            }
            // Reserving a block of fencing tokens (fence.idem) failed: the claim was refused
            // before anything was appended, and the log is not poisoned (like a failed
            // checkpoint): later calls may succeed.
            Err(Error::Io { context, .. }) if context.contains("fence.idem") => {
                assert!(
                    self.fault_since_open(),
                    "{what}: claim: fence I/O failed unprompted"
                );
            }
            Err(e) => {
                self.expect_fault(what, "claim", &e);
                self.poisoned = true;
                if self.model.may_be_absent(key, now) {
                    self.model.maybe(key, fresh);
                }
            }
        }
    }

    /// Completes (with a TTL shorter or longer than the lease) or releases a held token.
    fn op_resolve(&mut self, store: &Store, what: &str) {
        if self.tokens.is_empty() {
            return;
        }
        let now = self.now();
        let pick = self.rng.gen_range(0..self.tokens.len());
        let (token, num) = self.tokens[pick].clone();
        let key = token.key().to_vec();
        let release = self.rng.gen_bool(0.25);
        let is_mine = move |l: Live<'_>| matches!(l, Live::Claim(n, ..) if n == num);
        if release {
            let answer = store.release(token.clone());
            self.trace(|| format!("release #{num} -> {answer:?}"));
            self.model.note(
                &key,
                format!(
                    "@{} release #{num} -> {answer:?}",
                    now - ManualClock::DEFAULT_START_MILLIS
                ),
            );
            match answer {
                Ok(()) => {
                    assert!(
                        !self.poisoned,
                        "{what}: release acknowledged after a failed write"
                    );
                    self.model.observe(&key, now, what, "release Ok", is_mine);
                    self.model.set(&key, St::Absent);
                    self.tokens.remove(pick);
                }
                Err(Error::StaleClaim { .. }) => {
                    assert!(!self.poisoned, "{what}: answered after a failed write");
                    self.model
                        .observe(&key, now, what, "release StaleClaim", |l| !is_mine(l));
                    self.tokens.remove(pick);
                }
                Err(e) => {
                    self.expect_fault(what, "release", &e);
                    self.poisoned = true;
                    self.model.maybe(&key, St::Absent);
                }
            }
            return;
        }
        let lease_left = millis(token.lease_until()).saturating_sub(now);
        let ttl = Duration::from_millis(if self.rng.gen_bool(0.5) {
            // Shorter than what is left of the lease (the result expires before the claim would).
            self.rng.gen_range(1..(lease_left / 2).max(2))
        } else {
            lease_left + self.rng.gen_range(1..4 * HOUR)
        });
        let value = self.value();
        let answer = store.complete(token.clone(), ttl, &value);
        self.trace(|| format!("complete #{num} ttl {ttl:?} -> {answer:?}"));
        self.model.note(
            &key,
            format!(
                "@{} complete #{num} {:?} ttl {ttl:?} (lease left {lease_left} ms) -> {answer:?}",
                now - ManualClock::DEFAULT_START_MILLIS,
                String::from_utf8_lossy(&value)
            ),
        );
        let result = St::Value {
            value,
            until: now + ttl.as_millis() as u64,
            fp: token.fingerprint().to_vec(),
            claim: Some(num),
        };
        match answer {
            Ok(()) => {
                assert!(
                    !self.poisoned,
                    "{what}: completion acknowledged after a failed write"
                );
                self.model.observe(&key, now, what, "complete Ok", is_mine);
                self.model.set(&key, result);
                self.tokens.remove(pick);
                self.tally.claims_completed += 1;
            }
            Err(Error::StaleClaim { .. }) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                self.model
                    .observe(&key, now, what, "complete StaleClaim", |l| !is_mine(l));
                self.tokens.remove(pick);
            }
            Err(e) => {
                self.expect_fault(what, "complete", &e);
                self.poisoned = true;
                self.model.maybe(&key, result);
            }
        }
    }

    fn op_with(&mut self, store: &Store, key: &[u8], what: &str) {
        let now = self.now();
        let ttl = self.ttl();
        let value = self.value();
        let fail = self.rng.gen_bool(0.2);
        let mut ran = false;
        let claimed_before = self
            .model
            .key(key)
            .states
            .iter()
            .all(|s| matches!(s.live(now), Live::Claim(..)));
        if claimed_before {
            self.tally.with_closure_on_claim += 1;
        }
        let answer = store.check_or_insert_with(key, ttl, || {
            ran = true;
            if fail {
                Err("the closure failed")
            } else {
                Ok(value.clone())
            }
        });
        self.trace(|| {
            format!("check_or_insert_with ttl {ttl:?} fail {fail} -> {answer:?}, ran {ran}")
        });
        self.model.note(
            key,
            format!(
                "@{} check_or_insert_with {:?} ttl {ttl:?} -> {answer:?} (closure ran: {ran})",
                now - ManualClock::DEFAULT_START_MILLIS,
                String::from_utf8_lossy(&value)
            ),
        );
        if ran {
            assert!(
                !claimed_before,
                "{what}: check_or_insert_with ran its closure on key {} held by a live claim \
                 (answer {answer:?})",
                String::from_utf8_lossy(key)
            );
            self.model
                .observe(key, now, what, "closure ran", |l| l == Live::None);
        }
        match answer {
            Ok(Outcome::Inserted) => {
                assert!(!self.poisoned, "{what}: acknowledged after a failed write");
                assert!(ran, "{what}: Inserted without running the closure");
                self.model.set(
                    key,
                    St::Value {
                        value,
                        until: now + ttl.as_millis() as u64,
                        fp: Vec::new(),
                        claim: None,
                    },
                );
            }
            Ok(Outcome::Duplicate(seen)) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                assert!(!ran, "{what}: the closure ran on a live key");
                self.model.observe(
                    key,
                    now,
                    what,
                    "with Duplicate",
                    |l| matches!(l, Live::Value(v, _) if *v == *seen),
                );
            }
            Err(WithError::Closure(_)) => assert!(ran && fail, "{what}: closure error"),
            Err(WithError::Store(Error::ClaimInFlight { until })) => {
                assert!(!self.poisoned, "{what}: answered after a failed write");
                assert!(
                    !ran,
                    "{what}: check_or_insert_with ran its closure on key {}, then failed with \
                     ClaimInFlight: the key was held by a live claim",
                    String::from_utf8_lossy(key)
                );
                let until = millis(until);
                self.model.observe(
                    key,
                    now,
                    what,
                    "with ClaimInFlight",
                    |l| matches!(l, Live::Claim(_, u, _) if u == until),
                );
            }
            Err(WithError::Store(e)) => {
                assert!(!semantic(&e), "{what}: check_or_insert_with: {e}");
                self.expect_fault(what, "check_or_insert_with", &e);
                self.poisoned = true;
                if ran && !fail && self.model.may_be_absent(key, now) {
                    self.model.maybe(
                        key,
                        St::Value {
                            value,
                            until: now + ttl.as_millis() as u64,
                            fp: Vec::new(),
                            claim: None,
                        },
                    );
                }
            }
            Err(other) => panic!("{what}: check_or_insert_with alone: {other}"),
        }
    }

    fn run(&mut self, steps: usize) -> Tally {
        let mut store = self.open_store("first open");
        self.storage.set_faults(self.faults);
        for step in 0..steps {
            if step % 60 == 0 {
                self.regime = [Regime::Short, Regime::Medium, Regime::Long, Regime::Mixed]
                    [self.rng.gen_range(0..4)];
                // Transactions from the middle on: state records never expire and compaction
                // copies them on, so after the first one hardly any segment expires whole.
                self.tx_phase = step >= steps / 2 && self.rng.gen_bool(0.7);
            }
            store = self.step(store, step);
        }
        // The end: let everything short expire, maintain, then lose power.
        self.clock
            .advance(Duration::from_millis(self.rng.gen_range(0..20 * MINUTE)));
        self.maintain(&store, "final maintain");
        self.tally_store(&store);
        self.storage.crash();
        drop(store);
        let store = self.reopen("final crash");
        self.tally_store(&store);
        drop(store);
        self.tally.injected = self.injected();
        self.tally
    }
}

/// A possible content of the state namespace: the state entries and positions, and which
/// unacknowledged commits it includes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct World {
    state: BTreeMap<String, String>,
    positions: BTreeMap<String, u64>,
    with: BTreeSet<u64>,
}

/// A commit that failed with an I/O error: after power loss it is there whole or not at all.
#[derive(Debug)]
struct PendingTx {
    id: u64,
    /// Its dedup inserts: the key, the state it leaves, and the key's possible states before it.
    inserts: Vec<(Vec<u8>, St, Vec<St>)>,
}

/// The model of what transactions wrote: every possible world (one, unless commits are
/// unacknowledged), and for conflict prediction a version of each state entry that changes
/// whenever a commit changes the entry.
#[derive(Debug)]
struct TxModel {
    worlds: Vec<World>,
    versions: BTreeMap<String, u64>,
    next_version: u64,
    pending: Vec<PendingTx>,
    next_tx: u64,
    next_value: u64,
    /// The last transaction events, printed when an answer fits no world.
    history: Vec<String>,
}

impl Default for TxModel {
    fn default() -> Self {
        TxModel {
            worlds: vec![World::default()],
            versions: BTreeMap::new(),
            next_version: 0,
            pending: Vec::new(),
            next_tx: 0,
            next_value: 0,
            history: Vec::new(),
        }
    }
}

impl TxModel {
    /// The world while every commit is acknowledged.
    fn world(&self) -> &World {
        assert_eq!(
            self.worlds.len(),
            1,
            "one world while every commit is acknowledged"
        );
        &self.worlds[0]
    }

    fn note(&mut self, event: String) {
        self.history.push(event);
        if self.history.len() > 40 {
            self.history.remove(0);
        }
    }

    /// The highest position of `source` in any world.
    fn position(&self, source: &str) -> Option<u64> {
        self.worlds
            .iter()
            .filter_map(|w| w.positions.get(source).copied())
            .max()
    }
}

/// What an open transaction did, as the model saw it.
#[derive(Debug, Default)]
struct TxRec {
    id: u64,
    /// The answer given for each dedup key checked.
    checked: BTreeMap<Vec<u8>, Outcome>,
    /// Dedup keys answered `Inserted`: key, TTL, value.
    inserts: Vec<(Vec<u8>, Duration, Vec<u8>)>,
    /// State keys read (before any own write), with the version each was read at.
    reads: BTreeMap<String, Option<u64>>,
    writes: BTreeMap<String, Option<String>>,
    positions: BTreeMap<String, u64>,
    /// A maintenance round ran while it was open (compaction may have moved what it read).
    maintained: bool,
}

impl TxRec {
    fn read_only(&self) -> bool {
        self.inserts.is_empty() && self.writes.is_empty() && self.positions.is_empty()
    }

    fn apply(&self, world: &mut World) {
        for (k, write) in &self.writes {
            match write {
                Some(v) => world.state.insert(k.clone(), v.clone()),
                None => world.state.remove(k),
            };
        }
        for (source, &p) in &self.positions {
            let stored = world.positions.entry(source.clone()).or_insert(p);
            *stored = (*stored).max(p);
        }
    }

    fn describe(&self) -> String {
        format!(
            "tx#{}: inserts {:?}, reads {:?}, writes {:?}, positions {:?}",
            self.id,
            self.inserts
                .iter()
                .map(|(k, ttl, v)| format!(
                    "{}={} ttl {ttl:?}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                ))
                .collect::<Vec<_>>(),
            self.reads,
            self.writes,
            self.positions
        )
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("the simulation writes text")
}

impl Sim {
    fn new_tx(&mut self) -> TxRec {
        self.tx.next_tx += 1;
        TxRec {
            id: self.tx.next_tx,
            ..TxRec::default()
        }
    }

    fn state_value(&mut self) -> String {
        self.tx.next_value += 1;
        let pad = self.rng.gen_range(0..60);
        format!("s{}{}", self.tx.next_value, ".".repeat(pad))
    }

    /// One random action of open transaction `rec`. `race`: keys drawn from a few, so that two
    /// transactions meet. False if the transaction must be dropped (an I/O error).
    fn tx_action(
        &mut self,
        tx: &mut Transaction<'_>,
        rec: &mut TxRec,
        race: bool,
        what: &str,
    ) -> bool {
        let now = self.now();
        let at = now - ManualClock::DEFAULT_START_MILLIS;
        let id = rec.id;
        let state_keys = if race { 3 } else { STATE_KEYS };
        match self.rng.gen_range(0..10) {
            0..=2 => {
                let k = key(self.rng.gen_range(0..if race { 4 } else { KEYS }));
                let ttl = self.ttl();
                let value = self.value();
                let answer = tx.check_or_insert(&k, ttl, &value);
                self.trace(|| {
                    let k = String::from_utf8_lossy(&k);
                    format!("tx#{id} check_or_insert {k} ttl {ttl:?} -> {answer:?}")
                });
                self.model.note(
                    &k,
                    format!(
                        "@{at} tx#{id} check_or_insert {:?} ttl {ttl:?} -> {answer:?}",
                        String::from_utf8_lossy(&value)
                    ),
                );
                if let Some(before) = rec.checked.get(&k) {
                    match answer {
                        Ok(again) => assert_eq!(
                            &again, before,
                            "{what}: tx#{id} answered a key checked twice differently"
                        ),
                        Err(e) => panic!("{what}: tx#{id}: a key checked again failed: {e}"),
                    }
                    return true;
                }
                match answer {
                    Ok(Outcome::Inserted) => {
                        assert!(!self.poisoned, "{what}: tx answered after a failed write");
                        self.model
                            .observe(&k, now, what, "tx Inserted", |l| l == Live::None);
                        rec.checked.insert(k.clone(), Outcome::Inserted);
                        rec.inserts.push((k, ttl, value));
                    }
                    Ok(Outcome::Duplicate(seen)) => {
                        assert!(!self.poisoned, "{what}: tx answered after a failed write");
                        self.model.observe(
                            &k,
                            now,
                            what,
                            "tx Duplicate",
                            |l| matches!(l, Live::Value(v, _) if *v == *seen),
                        );
                        rec.checked.insert(k, Outcome::Duplicate(seen));
                    }
                    Err(Error::ClaimInFlight { until }) => {
                        assert!(!self.poisoned, "{what}: tx answered after a failed write");
                        let until = millis(until);
                        self.model.observe(
                            &k,
                            now,
                            what,
                            "tx ClaimInFlight",
                            |l| matches!(l, Live::Claim(_, u, _) if u == until),
                        );
                    }
                    Err(Error::TransactionTooLarge { .. }) => {}
                    Err(e) => {
                        self.expect_fault(what, "tx check_or_insert", &e);
                        self.poisoned = true;
                        return false;
                    }
                }
            }
            3..=5 => {
                let k = text(&state_key(self.rng.gen_range(0..state_keys)));
                if !self.tx_read(tx, rec, &k, what) {
                    return false;
                }
                if self.rng.gen_bool(0.5) {
                    // Read, modify, write.
                    let value = format!("{}+", self.state_value());
                    tx_write(tx, rec, &k, Some(value), what);
                }
            }
            6..=7 => {
                let k = text(&state_key(self.rng.gen_range(0..state_keys)));
                let value = self.state_value();
                tx_write(tx, rec, &k, Some(value), what);
            }
            8 => {
                let k = text(&state_key(self.rng.gen_range(0..state_keys)));
                tx_write(tx, rec, &k, None, what);
            }
            _ => {
                let s = text(&source(
                    self.rng.gen_range(0..if race { 1 } else { SOURCES }),
                ));
                let base = self
                    .tx
                    .position(&s)
                    .max(rec.positions.get(&s).copied())
                    .unwrap_or(0);
                if base > 0 && self.rng.gen_bool(0.15) {
                    let requested = base - self.rng.gen_range(1..=base.min(5));
                    let answer = tx.set_position(s.as_bytes(), requested);
                    self.trace(|| format!("tx#{id} set_position {s} {requested} -> {answer:?}"));
                    match answer {
                        Err(Error::PositionRegressed { stored, .. }) => assert!(
                            self.poisoned || stored == base,
                            "{what}: tx#{id} set_position {s} {requested}: regressed from \
                             {stored}, the model says {base}"
                        ),
                        // Poisoned: the highest world may hold a commit the store never applied.
                        Ok(()) if self.poisoned => {
                            rec.positions.insert(s, requested);
                        }
                        // The refusal rests on the stored position's record: in `Sync` it waits
                        // until that record (or compaction's copy of it) is durable, and fails
                        // if the log cannot make it so.
                        Err(e) => {
                            self.expect_fault(what, "tx set_position refusal", &e);
                            self.poisoned = true;
                            return false;
                        }
                        Ok(()) => panic!(
                            "{what}: tx#{id} set_position {s} {requested} below {base}: accepted"
                        ),
                    }
                } else {
                    let requested = base + self.rng.gen_range(0..30);
                    let answer = tx.set_position(s.as_bytes(), requested);
                    self.trace(|| format!("tx#{id} set_position {s} {requested} -> {answer:?}"));
                    match answer {
                        Ok(()) => {
                            rec.positions.insert(s, requested);
                        }
                        Err(Error::TransactionTooLarge { .. }) => {}
                        // Poisoned: the store's own position may be one no world has yet.
                        Err(Error::PositionRegressed { .. }) if self.poisoned => {}
                        Err(e) => panic!("{what}: tx#{id} set_position {s} {requested}: {e}"),
                    }
                }
            }
        }
        true
    }

    /// `get_state` in a transaction; false on an I/O error.
    fn tx_read(&mut self, tx: &mut Transaction<'_>, rec: &mut TxRec, k: &str, what: &str) -> bool {
        let answer = tx.get_state(k.as_bytes());
        let id = rec.id;
        self.trace(|| format!("tx#{id} get_state {k} -> {answer:?}"));
        if let Some(own) = rec.writes.get(k) {
            let got =
                answer.unwrap_or_else(|e| panic!("{what}: tx#{id} reading its own write: {e}"));
            assert_eq!(
                got.map(|v| text(&v)),
                *own,
                "{what}: tx#{id} get_state {k} does not see its own write"
            );
            return true;
        }
        match answer {
            Ok(got) => {
                assert!(
                    !self.poisoned,
                    "{what}: tx get_state answered after a failed write"
                );
                let expected = self.tx.world().state.get(k).cloned();
                assert_eq!(
                    got.map(|v| text(&v)),
                    expected,
                    "{what}: tx#{id} get_state {k}\n  transactions:\n    {}",
                    self.tx.history.join("\n    ")
                );
                let version = self.tx.versions.get(k).copied();
                rec.reads.entry(k.to_string()).or_insert(version);
                true
            }
            Err(e) => {
                self.expect_fault(what, "tx get_state", &e);
                self.poisoned = true;
                false
            }
        }
    }

    /// Commits `rec`'s transaction and checks the answer against the model's prediction.
    fn tx_commit(&mut self, tx: Transaction<'_>, rec: TxRec, what: &str) {
        let now = self.now();
        let at = now - ManualClock::DEFAULT_START_MILLIS;
        let id = rec.id;
        // Conflicts certain, and possible (the model does not know which of a key's states holds).
        let mut certain: Vec<String> = Vec::new();
        let mut possible: Vec<String> = Vec::new();
        if !self.poisoned && !rec.read_only() {
            for (k, ..) in &rec.inserts {
                let lives: Vec<bool> = self
                    .model
                    .key(k)
                    .states
                    .iter()
                    .map(|s| s.live(now) != Live::None)
                    .collect();
                let name = format!("dedup key {} live", String::from_utf8_lossy(k));
                if lives.iter().all(|&l| l) {
                    certain.push(name);
                } else if lives.iter().any(|&l| l) {
                    possible.push(name);
                }
            }
            for (k, version) in &rec.reads {
                if self.tx.versions.get(k) != version.as_ref() {
                    certain.push(format!("state {k} changed since read"));
                }
            }
            let world = self.tx.world();
            for (s, p) in &rec.positions {
                if let Some(stored) = world.positions.get(s).filter(|&stored| stored > p) {
                    certain.push(format!("position {s} moved to {stored} past {p}"));
                }
            }
        }
        let answer = tx.commit();
        self.trace(|| {
            format!("tx#{id} commit -> {answer:?} (certain {certain:?}, possible {possible:?})")
        });
        self.tx
            .note(format!("@{at} {} commit -> {answer:?}", rec.describe()));
        for (k, ..) in &rec.inserts {
            self.model
                .note(k, format!("@{at} tx#{id} commit -> {answer:?}"));
        }
        match answer {
            Ok(()) => {
                assert!(
                    !self.poisoned,
                    "{what}: commit acknowledged after a failed write"
                );
                assert!(
                    certain.is_empty(),
                    "{what}: {} committed, but it conflicts: {certain:?}\n  transactions:\n    {}",
                    rec.describe(),
                    self.tx.history.join("\n    ")
                );
                if rec.read_only() {
                    return;
                }
                self.tally.tx_committed += 1;
                for (k, ttl, value) in &rec.inserts {
                    self.model
                        .observe(k, now, what, "tx commit Ok", |l| l == Live::None);
                    self.model.set(
                        k,
                        St::Value {
                            value: value.clone(),
                            until: now + ttl.as_millis() as u64,
                            fp: Vec::new(),
                            claim: None,
                        },
                    );
                    self.tally.tx_dedup_inserted += 1;
                }
                for (k, write) in &rec.writes {
                    let exists = self.tx.worlds[0].state.contains_key(k);
                    match write {
                        Some(_) => {
                            self.tx.next_version += 1;
                            self.tx.versions.insert(k.clone(), self.tx.next_version);
                        }
                        None if exists => {
                            self.tx.versions.remove(k);
                        }
                        None => {}
                    }
                }
                rec.apply(&mut self.tx.worlds[0]);
            }
            Err(Error::Conflict { reason }) => {
                if self.poisoned {
                    return;
                }
                // Compaction moving an entry read is no conflict (it used to be).
                assert!(
                    !(certain.is_empty() && possible.is_empty()),
                    "{what}: {} failed with Conflict ({reason}), but nothing conflicts\n  \
                     transactions:\n    {}",
                    rec.describe(),
                    self.tx.history.join("\n    ")
                );
                self.tally.tx_conflicts += 1;
            }
            Err(e) => {
                assert!(
                    !matches!(
                        e,
                        Error::PositionRegressed { .. } | Error::TransactionTooLarge { .. }
                    ),
                    "{what}: tx#{id} commit: {e}"
                );
                self.expect_fault(what, "commit", &e);
                self.poisoned = true;
                if rec.read_only() {
                    return;
                }
                // Whole or not at all, after power loss: every world forks.
                self.tally.tx_unacknowledged += 1;
                let mut forks = Vec::new();
                for world in &self.tx.worlds {
                    let mut with = world.clone();
                    rec.apply(&mut with);
                    with.with.insert(id);
                    forks.push(with);
                }
                self.tx.worlds.extend(forks);
                let mut inserts = Vec::new();
                for (k, ttl, value) in &rec.inserts {
                    if self.model.may_be_absent(k, now) {
                        let before = self.model.key(k).states.clone();
                        let st = St::Value {
                            value: value.clone(),
                            until: now + ttl.as_millis() as u64,
                            fp: Vec::new(),
                            claim: None,
                        };
                        self.model.maybe(k, st.clone());
                        inserts.push((k.clone(), st, before));
                    }
                }
                self.tx.pending.push(PendingTx { id, inserts });
            }
        }
    }

    /// One transaction: a few actions, sometimes a clock step or a maintenance round before the
    /// commit, sometimes dropped instead of committed. Sometimes the commit's fsync fails and
    /// it returns true: the caller loses power at once, so that a torn group reaches recovery.
    fn op_tx(&mut self, store: &Store, what: &str) -> bool {
        if self.tx.pending.len() >= 4 {
            return false;
        }
        let mut rec = self.new_tx();
        let mut tx = store.transaction();
        for _ in 0..self.rng.gen_range(1..7) {
            if !self.tx_action(&mut tx, &mut rec, false, what) {
                return false;
            }
        }
        match self.rng.gen_range(0..10) {
            0 => {
                self.clock
                    .advance(Duration::from_millis(self.rng.gen_range(0..3 * SECOND)));
            }
            1 => {
                self.maintain(store, what);
                rec.maintained = true;
            }
            2 => {
                self.tx.note(format!("{} dropped", rec.describe()));
                return false;
            }
            _ => {}
        }
        let tear = !self.poisoned && !rec.read_only() && self.rng.gen_bool(0.06);
        if tear {
            self.storage.set_faults(Faults {
                sync_error_per_million: 1_000_000,
                ..self.faults
            });
        }
        self.tx_commit(tx, rec, what);
        if tear {
            self.storage.set_faults(self.faults);
        }
        tear
    }

    /// Two transactions open at once on a few keys, their actions interleaved with plain calls
    /// on the same keys and maintenance, then both committed: the model predicts which conflict.
    fn op_tx_race(&mut self, store: &Store, what: &str) {
        if self.poisoned {
            return;
        }
        let (mut a, mut ra) = (store.transaction(), self.new_tx());
        let (mut b, mut rb) = (store.transaction(), self.new_tx());
        self.tx
            .note(format!("race of tx#{} and tx#{}", ra.id, rb.id));
        for _ in 0..self.rng.gen_range(2..10) {
            let ok = match self.rng.gen_range(0..12) {
                0..=4 => self.tx_action(&mut a, &mut ra, true, what),
                5..=9 => self.tx_action(&mut b, &mut rb, true, what),
                10 => {
                    let k = key(self.rng.gen_range(0..4));
                    match self.rng.gen_range(0..3) {
                        0 => self.op_insert(store, &k, what),
                        1 => self.op_remove(store, &k, what),
                        _ => self.op_claim(store, &k, what),
                    }
                    !self.poisoned
                }
                _ => {
                    self.maintain(store, what);
                    ra.maintained = true;
                    rb.maintained = true;
                    !self.poisoned
                }
            };
            if !ok {
                return;
            }
        }
        if self.rng.gen_bool(0.5) {
            self.tx_commit(a, ra, what);
            self.tx_commit(b, rb, what);
        } else {
            self.tx_commit(b, rb, what);
            self.tx_commit(a, ra, what);
        }
    }

    /// `get_state` and `positions` outside transactions, against the model.
    fn op_state_read(&mut self, store: &Store, what: &str) {
        let k = state_key(self.rng.gen_range(0..STATE_KEYS));
        let answer = store.get_state(&k);
        let positions = store.positions();
        self.trace(|| format!("get_state -> {answer:?}, positions -> {positions:?}"));
        match (answer, positions) {
            (Ok(got), Ok(positions)) => {
                assert!(
                    !self.poisoned,
                    "{what}: get_state answered after a failed write"
                );
                let world = self.tx.world();
                assert_eq!(
                    got.map(|v| text(&v)),
                    world.state.get(&text(&k)).cloned(),
                    "{what}: get_state {}",
                    text(&k)
                );
                let positions: BTreeMap<String, u64> =
                    positions.into_iter().map(|(s, p)| (text(&s), p)).collect();
                assert_eq!(positions, world.positions, "{what}: positions()");
                assert_eq!(
                    store.get_state(&key(0)).unwrap(),
                    None,
                    "{what}: a dedup key's name read as state"
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                self.expect_fault(what, "get_state", &e);
                self.poisoned = true;
            }
        }
    }

    /// After a reopen: the state and positions must be one possible world (acknowledged commits
    /// whole, each unacknowledged one whole or absent), and the dedup inserts of an
    /// unacknowledged commit present exactly when the rest of it is.
    fn check_tx_worlds(&mut self, snapshot: &Snapshot, what: &str) {
        let keys = checked_state_keys();
        let state: BTreeMap<String, String> = keys
            .iter()
            .zip(&snapshot.state)
            .filter_map(|(k, v)| v.as_ref().map(|v| (text(k), text(v))))
            .collect();
        let positions: BTreeMap<String, u64> = snapshot
            .positions
            .iter()
            .map(|(s, p)| (text(s), *p))
            .collect();
        let before = std::mem::take(&mut self.tx.worlds);
        self.tx.worlds = before
            .iter()
            .filter(|w| w.state == state && w.positions == positions)
            .cloned()
            .collect();
        assert!(
            !self.tx.worlds.is_empty(),
            "{what}: state {state:?} and positions {positions:?} fit no possible outcome: an \
             acknowledged commit lost or an unacknowledged one applied in part\n  possible: \
             {before:?}\n  transactions:\n    {}",
            self.tx.history.join("\n    ")
        );
        for pending in std::mem::take(&mut self.tx.pending) {
            let present = self.tx.worlds.iter().all(|w| w.with.contains(&pending.id));
            let absent = self.tx.worlds.iter().all(|w| !w.with.contains(&pending.id));
            self.tx.note(format!(
                "unacknowledged tx#{} after reopen: {}",
                pending.id,
                if present {
                    "present"
                } else if absent {
                    "absent"
                } else {
                    "not told apart"
                }
            ));
            for (k, st, earlier) in pending.inserts {
                let states = &mut self.model.key(&k).states;
                if present {
                    // Its dedup record was written: the key holds it, or what came after it.
                    states.retain(|s| !earlier.contains(s));
                    self.model
                        .note(&k, format!("tx#{} present after reopen", pending.id));
                } else if absent {
                    states.retain(|s| *s != st);
                    self.model
                        .note(&k, format!("tx#{} absent after reopen", pending.id));
                }
            }
            if present {
                self.tally.tx_unacknowledged_present += 1;
            } else if absent {
                self.tally.tx_unacknowledged_absent += 1;
            }
        }
        let mut world = self.tx.worlds.swap_remove(0);
        world.with.clear();
        // Entries an unacknowledged commit left have no version yet: every entry gets a new one.
        for k in world.state.keys() {
            self.tx.next_version += 1;
            self.tx.versions.insert(k.clone(), self.tx.next_version);
        }
        self.tx.versions.retain(|k, _| world.state.contains_key(k));
        self.tx.worlds = vec![world];
    }
}

/// Puts or deletes a state entry in a transaction (a value this small always fits).
fn tx_write(tx: &mut Transaction<'_>, rec: &mut TxRec, k: &str, value: Option<String>, what: &str) {
    let answer = match &value {
        Some(v) => tx.put_state(k.as_bytes(), v.as_bytes()),
        None => tx.delete_state(k.as_bytes()),
    };
    match answer {
        Ok(()) => {
            rec.writes.insert(k.to_string(), value);
        }
        Err(Error::TransactionTooLarge { .. }) => {}
        Err(e) => panic!("{what}: tx#{} writing state {k}: {e}", rec.id),
    }
}

/// Seeds beyond the default range that failed once, run with it every time. 3699 ... 26824: a
/// sweep of 30,000 seeds found a transaction's `set_position` refusal failing `Poisoned` after an
/// injected fault (it waits in `Sync` for the stored position's record, or compaction's copy of
/// it), which the model did not allow; the engine was right. 7325274: a key batch-inserted again
/// after its record expired, within its slot's rounded-up second, kept its expired entry beside
/// the new one, so a checkpoint reopen held more entries than a full replay (the engine was
/// wrong: `a_key_sent_again_after_its_record_expired_keeps_one_entry` in `integrity`).
const FAILED_ONCE: [u64; 17] = [
    3699, 4004, 4291, 7526, 8483, 8491, 9667, 9971, 13107, 19306, 21692, 23287, 23510, 23982,
    25697, 26824, 7325274,
];

fn seeds() -> Vec<u64> {
    match std::env::var("IDEM_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("IDEM_SIM_SEED is a number")],
        Err(_) => {
            let count = std::env::var("IDEM_SIM_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(if cfg!(debug_assertions) { 200 } else { 3000 });
            // A sweep of seeds not run before starts further on; the seeds that once failed
            // are run only with the default range.
            match std::env::var("IDEM_SIM_FIRST_SEED") {
                Ok(first) => {
                    let first: u64 = first.parse().expect("IDEM_SIM_FIRST_SEED is a number");
                    (first..first + count).collect()
                }
                Err(_) => (0..count)
                    .chain(FAILED_ONCE.iter().copied().filter(|&seed| seed >= count))
                    .collect(),
            }
        }
    }
}

/// What one seed's run ended with: its tally, or the panic that failed it.
type SeedOutcome = (u64, Faults, std::thread::Result<Tally>);

/// Runs `seeds` on as many threads as there are cores, in seed order per outcome. Without
/// `keep_going` the workers stop taking seeds after the first failure; the outcomes then end at
/// the first failed seed, so it is the one reported, as a serial run would.
fn run_seeds(seeds: &[u64], keep_going: bool) -> Vec<SeedOutcome> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut outcomes: Vec<(usize, SeedOutcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while keep_going || !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else { break };
                        let mut sim = Sim::new(seed);
                        let result =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run(700)));
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        mine.push((i, (seed, sim.faults, result)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("a worker catches its seeds' panics"))
            .collect()
    });
    outcomes.sort_by_key(|(i, _)| *i);
    let mut outcomes: Vec<SeedOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    if let Some(first) = outcomes.iter().position(|(_, _, result)| result.is_err()) {
        if !keep_going {
            outcomes.truncate(first + 1);
        }
    }
    outcomes
}

#[test]
fn seeded_simulation_keeps_every_acknowledged_answer() {
    let seeds = seeds();
    let mut total = Tally::default();
    let mut reclaiming_seeds = 0;
    let started = std::time::Instant::now();
    let keep_going = std::env::var_os("IDEM_SIM_KEEP_GOING").is_some();
    let mut failed: Vec<(u64, String)> = Vec::new();
    if keep_going {
        std::panic::set_hook(Box::new(|_| {}));
    }
    // Seeds are independent (each its own simulated disk and clock): they run on every core,
    // each worker taking the next seed, and are judged in seed order afterwards.
    let outcomes = run_seeds(&seeds, keep_going);
    for (seed, faults, result) in outcomes {
        match result {
            Ok(tally) => {
                total.add(&tally);
                if tally.compacted > 0 && tally.deleted > 0 {
                    reclaiming_seeds += 1;
                }
            }
            Err(panic) if keep_going => {
                let faulty = faults != Faults::default();
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first_line = message.lines().next().unwrap_or("").to_string();
                eprintln!("seed {seed} (faults: {faulty}): {first_line}");
                failed.push((seed, message));
            }
            Err(panic) => {
                eprintln!(
                    "simulation failed for seed {seed} (faults {faults:?}): replay with \
                     IDEM_SIM_SEED={seed}"
                );
                std::panic::resume_unwind(panic);
            }
        }
    }
    if keep_going {
        let _ = std::panic::take_hook();
    }
    println!(
        "simulation: {} seeds in {:.1?}: {total:?}; {reclaiming_seeds} seeds both compacted and \
         deleted segments",
        seeds.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed (IDEM_SIM_KEEP_GOING): {:?}",
        failed.len(),
        seeds.len(),
        failed.iter().map(|(seed, _)| seed).collect::<Vec<_>>()
    );
    if seeds.len() >= 20 {
        assert!(
            total.compacted > 0 && total.deleted > 0,
            "reclamation never ran: {total:?}"
        );
        assert!(
            total.tx_committed > 0
                && total.tx_dedup_inserted > 0
                && total.tx_conflicts > 0
                && total.tx_unacknowledged_present > 0
                && total.tx_unacknowledged_absent > 0,
            "transactions did not reach every case: {total:?}"
        );
        assert!(
            reclaiming_seeds * 10 >= seeds.len() * 6,
            "only {reclaiming_seeds} of {} seeds both compacted and deleted segments",
            seeds.len()
        );
    }
}

/// With every fsync failing, nothing written in this process can become durable, so in `Sync`
/// mode no call may answer `Ok` (or `ClaimInFlight` / `FingerprintMismatch`) about such a record:
/// not its writer, and not the other threads that found it in the index before the store saw the
/// failed fsync. Several threads race on a few fresh keys; keys written before the faults began
/// are durable and may be answered.
#[test]
fn sync_answers_nothing_about_records_that_cannot_become_durable() {
    use std::sync::{Barrier, Mutex};
    const THREADS: u64 = 4;
    let rounds: u64 = std::env::var("IDEM_SIM_FSYNC_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 20 } else { 150 });
    let ttl = Duration::from_secs(3600);
    let mut violations: Vec<String> = Vec::new();
    for round in 0..rounds {
        let storage = SimStorage::new(round);
        let config = Config::default()
            .durability(Durability::Sync)
            .clock(ManualClock::new())
            .storage(storage.clone())
            .background_maintenance(false)
            .checkpoint_every_bytes(0)
            .segment_size_bytes_for_testing(4096)
            .shard_count(4);
        let store = Store::open_with(Path::new(DIR), config).unwrap();
        store.check_or_insert(b"old", ttl, b"durable").unwrap();
        storage.set_faults(Faults {
            sync_error_per_million: 1_000_000,
            ..Faults::default()
        });
        let found = Mutex::new(Vec::new());
        let barrier = Barrier::new(THREADS as usize);
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (store, found, barrier) = (&store, &found, &barrier);
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(round * THREADS + thread);
                    let bad = |what: String| found.lock().unwrap().push(what);
                    barrier.wait();
                    for _ in 0..40 {
                        let key = format!("new-{}", rng.gen_range(0..3)).into_bytes();
                        let fp = FINGERPRINTS[rng.gen_range(1..FINGERPRINTS.len())];
                        match rng.gen_range(0..8) {
                            0 => match store.check_or_insert(&key, ttl, b"v") {
                                Ok(answer) => bad(format!("check_or_insert -> Ok({answer:?})")),
                                Err(e) if semantic(&e) => bad(format!("check_or_insert -> {e:?}")),
                                Err(_) => {}
                            },
                            1 => match store.check_or_insert_fingerprinted(&key, ttl, b"v", fp) {
                                Ok(answer) => bad(format!("fingerprinted -> Ok({answer:?})")),
                                Err(e) if semantic(&e) => bad(format!("fingerprinted -> {e:?}")),
                                Err(_) => {}
                            },
                            2 => match store.claim(&key, ttl) {
                                Ok(answer) => bad(format!("claim -> Ok({answer:?})")),
                                Err(e) if semantic(&e) => bad(format!("claim -> {e:?}")),
                                Err(_) => {}
                            },
                            3 => match store.claim_fingerprinted(&key, ttl, fp) {
                                Ok(answer) => bad(format!("claim_fingerprinted -> Ok({answer:?})")),
                                Err(e) if semantic(&e) => {
                                    bad(format!("claim_fingerprinted -> {e:?}"))
                                }
                                Err(_) => {}
                            },
                            4 | 5 => {
                                let answer = store.check_or_insert_with(&key, ttl, || {
                                    std::thread::sleep(Duration::from_micros(200));
                                    Ok::<_, std::convert::Infallible>(b"made".to_vec())
                                });
                                match answer {
                                    Ok(answer) => {
                                        bad(format!("check_or_insert_with -> Ok({answer:?})"))
                                    }
                                    Err(WithError::Store(e)) if semantic(&e) => {
                                        bad(format!("check_or_insert_with -> {e:?}"))
                                    }
                                    Err(_) => {}
                                }
                            }
                            6 => {
                                if let Ok(Some(value)) = store.get(&key) {
                                    bad(format!("get -> Some({value:?})"));
                                }
                            }
                            _ => {
                                if let Ok(true) = store.remove(&key) {
                                    bad("remove -> Ok(true)".into());
                                }
                                if let Ok(Some(value)) = store.get(b"old") {
                                    assert_eq!(value, b"durable");
                                }
                            }
                        }
                    }
                });
            }
        });
        for what in found.into_inner().unwrap() {
            violations.push(format!("round {round}: {what}"));
        }
    }
    println!(
        "every-fsync-fails oracle: {rounds} rounds, {} violations",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "Sync mode answered about records that could not become durable ({} times):\n  {}",
        violations.len(),
        violations[..violations.len().min(20)].join("\n  ")
    );
}

/// A transaction that read a state entry must commit if nothing changed the entry; compaction
/// copying the entry's record to the log's tail is no change.
/// Found by the extended simulator: compaction used to move a state entry a transaction had
/// read, and its commit failed with `Conflict` (reads were validated by log location).
#[test]
fn compaction_moving_a_state_entry_read_is_no_conflict() {
    let storage = SimStorage::new(1);
    let clock = ManualClock::new();
    let config = Config::default()
        .durability(Durability::Sync)
        .clock(clock.clone())
        .storage(storage)
        .background_maintenance(false)
        .checkpoint_every_bytes(0)
        .segment_size_bytes_for_testing(4096)
        .compaction_live_ratio(0.9);
    let store = Store::open_with(Path::new(DIR), config).unwrap();
    let mut tx = store.transaction();
    tx.put_state(b"balance", b"100").unwrap();
    tx.commit().unwrap();
    // Fill the segment holding the entry with short-lived records, then let them expire.
    for i in 0..200 {
        let key = format!("filler-{i}");
        store
            .check_or_insert(key.as_bytes(), Duration::from_secs(1), &[b'.'; 64])
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    let mut tx = store.transaction();
    assert_eq!(tx.get_state(b"balance").unwrap().unwrap(), b"100");
    tx.put_state(b"balance", b"90").unwrap();
    let compacted = store.maintain().unwrap().segments_compacted;
    assert!(compacted > 0, "the entry's segment was compacted");
    tx.commit()
        .expect("nothing changed the entry read: the commit must succeed");
    assert_eq!(store.get_state(b"balance").unwrap().unwrap(), b"90");
}
