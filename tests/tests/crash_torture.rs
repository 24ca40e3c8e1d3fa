//! Crash torture: a child process runs a random mix of inserts, batches, removals and
//! re-inserts, claims (completed, released or left open), reads, `maintain()` and `checkpoint()`
//! with `Sync` durability on a pool of keys shared by all rounds, and is killed with SIGKILL at
//! random moments, round after round, on one store.
//!
//! Time is the parent's: the child's `ManualClock` reads a clock file the parent advances between
//! rounds and during them (by up to hours), so entries expire, leases end and segments (4 KiB,
//! compacted eagerly) are compacted and deleted between and during kills; the parent also runs
//! `maintain()` itself after moving the clock (every tenth round past everything's deadline),
//! and requires the run to have compacted and deleted segments.
//!
//! The parent keeps a model of every key (absent, a value with its deadline, or a claim with its
//! lease) and checks every answer the child reported against it as it happened. After every kill
//! it reopens the store at its clock's time, once with the checkpoint and once by full replay
//! (checkpoint file deleted), and requires of both, and of both alike:
//! - every key answers `get` exactly as the model says (acknowledged values present unless
//!   expired, acknowledged removals absent, nothing never written present), a key whose last
//!   operation was not acknowledged in either of its two possible states;
//! - `in_doubt()` lists exactly the acknowledged claims not completed, released or removed whose
//!   lease has not ended (with their lease and fencing token), plus possibly the unacknowledged
//!   last claim.
//!
//! Fencing tokens: every claim the child acquires (or the reopen first shows, for a claim cut by
//! the kill) must have a `fencing_token()` larger than every token acquired before it in the
//! whole run, across kills and reopens; a claim listed in doubt keeps the token it was acquired
//! with. No segment may be found damaged (`Stats::segments_damaged`): no fault is injected.
//!
//! From a third of the run on, the child also runs transactions (dedup checks on the same pool,
//! state writes, deletions, counter additions read from the state, and positions moved forward),
//! and the parent keeps the state entries and positions in its model: every answer (dedup
//! answers, counters read) must fit it, and after every kill both opens must read every state
//! key and position alike and as the model says, a transaction cut by the kill whole (its dedup
//! inserts, state and positions all there) or not at all; once seen, it stays. Its dedup inserts
//! are then keys like any other (they expire, are removed, claimed, re-inserted).
//!
//! The parent then goes on from what the store holds (the cut operation resolved either way).
//!
//! `IDEM_TORTURE_KILLS` sets the number of kills (default 100 in release builds, 20 in debug
//! builds); `IDEM_TEST_SEED` replays a run's choices (not its kill moments, which are wall-clock
//! time, so a replay fails at another round, or not at all).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use idem::{ManualClock, Store};
use idem_tests::seeded_rng;
use idem_tests::torture::{
    config, counter, key, never_keys, never_state_keys, source, state_key, write_clock, POOL,
};
use rand::rngs::StdRng;
use rand::Rng;

const SIGKILL: i32 = 9;

/// What a key holds, as the model knows it. Expiry is not applied in place: a value or claim
/// whose deadline has passed is absent (time never runs backwards).
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Absent,
    Value { value: String, deadline: u64 },
    Claim { cid: String, lease: u64 },
}

impl State {
    /// The state as seen at `now`: expired values and ended leases are absent.
    fn at(&self, now: u64) -> State {
        match self {
            State::Value { deadline, .. } if *deadline <= now => State::Absent,
            State::Claim { lease, .. } if *lease <= now => State::Absent,
            other => other.clone(),
        }
    }

    /// What a reopened store at `now` answers for a key in this state: `get`, and the lease if
    /// `in_doubt()` lists it.
    fn observed(&self, now: u64) -> (Option<String>, Option<u64>) {
        match self.at(now) {
            State::Absent => (None, None),
            State::Value { value, .. } => (Some(value), None),
            State::Claim { lease, .. } => (None, Some(lease)),
        }
    }
}

/// An operation the child announced (intent line), awaiting its answer.
#[derive(Debug, Clone)]
enum Op {
    Insert(String, u64, String),
    Batch(Vec<(String, u64, String)>),
    Remove(String),
    Claim(String, u64, String),
    Complete(String, String, u64, String),
    Release(String, String),
    Get(String),
    Maintain,
    Checkpoint,
    /// A transaction: dedup items, then state changes and positions in order.
    Tx(Vec<(String, u64, String)>, Vec<TxItem>),
}

/// A state change or position of a transaction.
#[derive(Debug, Clone)]
enum TxItem {
    Put(String, String),
    Delete(String),
    Add(String, u64),
    Position(String, u64),
}

#[derive(Debug, Default)]
struct Totals {
    ops_acked: u64,
    ops_in_doubt_at_kill: u64,
    inserted: u64,
    reinserted: u64,
    removed: u64,
    claimed: u64,
    completed_shorter_than_lease: u64,
    completed_longer_than_lease: u64,
    released: u64,
    stale: u64,
    claims_in_doubt_seen: u64,
    fencing_tokens_acquired: u64,
    fencing_tokens_rechecked: u64,
    max_fencing_token: u64,
    values_expired: u64,
    checkpoint_opens_with_file: u64,
    segments_deleted: u64,
    segments_compacted: u64,
    tx_committed: u64,
    tx_dedup_inserted: u64,
    tx_refused_inflight: u64,
    /// Conflicts a background compaction explains (it moved a state entry the transaction read).
    tx_cut_present: u64,
    tx_cut_absent: u64,
}

struct Model {
    keys: BTreeMap<String, State>,
    /// State entries and positions as the last acknowledged (or seen) transactions left them.
    state: BTreeMap<String, String>,
    positions: BTreeMap<String, u64>,
    /// The last transactions, for failure messages.
    tx_history: Vec<String>,
    /// Last events of each key, for failure messages.
    history: BTreeMap<String, Vec<String>>,
    /// Keys that held a value once: an `Inserted` on them is a re-insert.
    had_value: BTreeMap<String, bool>,
    /// The fencing token of every claim (by claim id) whose token was seen.
    fences: BTreeMap<String, u64>,
    /// The claim with the largest fencing token so far, and when it was seen.
    last_fence: Option<(u64, String)>,
    seed: u64,
    round: u64,
    totals: Totals,
}

impl Model {
    fn get(&self, k: &str) -> State {
        self.keys.get(k).cloned().unwrap_or(State::Absent)
    }

    fn note(&mut self, k: &str, event: String) {
        let history = self.history.entry(k.to_string()).or_default();
        history.push(format!("round {}: {event}", self.round));
        if history.len() > 16 {
            history.remove(0);
        }
    }

    fn describe(&self, k: &str) -> String {
        format!(
            "key {k}: model {:?}; history:\n    {}",
            self.get(k),
            self.history
                .get(k)
                .map_or(String::new(), |h| h.join("\n    "))
        )
    }

    /// Records the fencing token of a claim acquired now (`cid` on `k`): it must exceed every
    /// token acquired before it.
    fn acquired(&mut self, k: &str, cid: &str, fence: u64, how: &str) {
        if let Some((last, seen)) = &self.last_fence {
            if fence <= *last {
                self.fail(format!(
                    "{how}: claim {cid} on {k} has fencing token {fence}, not above {last} of {seen}\n{}",
                    self.describe(k)
                ));
            }
        }
        self.last_fence = Some((fence, format!("claim {cid} on {k} (round {})", self.round)));
        self.fences.insert(cid.to_string(), fence);
        self.totals.fencing_tokens_acquired += 1;
        self.totals.max_fencing_token = fence;
    }

    /// Checks the fencing token a claim in doubt (`cid` on `k`) is listed with: the one it was
    /// acquired with, or, if the claim was cut by the kill before its token was reported, a new
    /// one.
    fn in_doubt_fence(&mut self, k: &str, cid: &str, fence: u64, how: &str) {
        match self.fences.get(cid) {
            Some(&known) if known == fence => self.totals.fencing_tokens_rechecked += 1,
            Some(&known) => self.fail(format!(
                "{how}: claim {cid} on {k} is listed with fencing token {fence}, acquired with {known}\n{}",
                self.describe(k)
            )),
            None => self.acquired(k, cid, fence, how),
        }
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "crash torture, seed {} (replay with IDEM_TEST_SEED={}; kill moments vary), round {}: \
             {what}\nso far: {:?}",
            self.seed, self.seed, self.round, self.totals
        )
    }

    /// The answer the store must give to `op` at `now`, and the states it leaves.
    fn apply(&self, op: &Op, now: u64) -> (String, Vec<(String, State)>) {
        match op {
            Op::Insert(k, deadline, v) => match self.get(k).at(now) {
                State::Absent => (
                    "I ins".into(),
                    vec![(
                        k.clone(),
                        State::Value {
                            value: v.clone(),
                            deadline: *deadline,
                        },
                    )],
                ),
                State::Value { value, .. } => (format!("I dup {value}"), vec![]),
                State::Claim { lease, .. } => (format!("I inflight {lease}"), vec![]),
            },
            Op::Batch(items) => {
                for (k, _, _) in items {
                    if let State::Claim { lease, .. } = self.get(k).at(now) {
                        return (format!("B inflight {lease}"), vec![]);
                    }
                }
                let mut overlay: BTreeMap<String, State> = BTreeMap::new();
                let mut answers = Vec::new();
                for (k, deadline, v) in items {
                    let state = overlay.get(k).cloned().unwrap_or_else(|| self.get(k));
                    match state.at(now) {
                        State::Value { value, .. } => answers.push(format!("dup/{value}")),
                        State::Absent => {
                            answers.push("ins".into());
                            overlay.insert(
                                k.clone(),
                                State::Value {
                                    value: v.clone(),
                                    deadline: *deadline,
                                },
                            );
                        }
                        State::Claim { .. } => unreachable!("checked above"),
                    }
                }
                (
                    format!("B {}", answers.join(" ")),
                    overlay.into_iter().collect(),
                )
            }
            Op::Remove(k) => match self.get(k).at(now) {
                State::Absent => ("R false".into(), vec![]),
                _ => ("R true".into(), vec![(k.clone(), State::Absent)]),
            },
            Op::Claim(k, lease, cid) => match self.get(k).at(now) {
                State::Absent => (
                    "C acq".into(),
                    vec![(
                        k.clone(),
                        State::Claim {
                            cid: cid.clone(),
                            lease: *lease,
                        },
                    )],
                ),
                State::Value { value, .. } => (format!("C dup {value}"), vec![]),
                State::Claim { lease, .. } => (format!("C inflight {lease}"), vec![]),
            },
            Op::Complete(k, cid, deadline, v) => match self.get(k).at(now) {
                State::Claim { cid: held, .. } if held == *cid => (
                    "F ok".into(),
                    vec![(
                        k.clone(),
                        State::Value {
                            value: v.clone(),
                            deadline: *deadline,
                        },
                    )],
                ),
                _ => ("F stale".into(), vec![]),
            },
            Op::Release(k, cid) => match self.get(k).at(now) {
                State::Claim { cid: held, .. } if held == *cid => {
                    ("X ok".into(), vec![(k.clone(), State::Absent)])
                }
                _ => ("X stale".into(), vec![]),
            },
            Op::Get(k) => match self.get(k).at(now) {
                State::Value { value, .. } => (format!("G {value}"), vec![]),
                _ => ("G none".into(), vec![]),
            },
            Op::Maintain => ("M".into(), vec![]),
            Op::Checkpoint => ("K".into(), vec![]),
            Op::Tx(items, changes) => {
                for (k, _, _) in items {
                    if let State::Claim { lease, .. } = self.get(k).at(now) {
                        return (format!("A inflight {lease}"), vec![]);
                    }
                }
                let mut answers = Vec::new();
                let mut keys = Vec::new();
                for (k, deadline, v) in items {
                    match self.get(k).at(now) {
                        State::Value { value, .. } => answers.push(format!("dup/{value}")),
                        _ => {
                            answers.push("ins".into());
                            keys.push((
                                k.clone(),
                                State::Value {
                                    value: v.clone(),
                                    deadline: *deadline,
                                },
                            ));
                        }
                    }
                }
                let (_, _, read) = self.tx_effect(changes);
                answers.extend(read.iter().map(|old| format!("r:{old}")));
                (
                    format!("A ok {}", answers.join(" ")).trim_end().to_string(),
                    keys,
                )
            }
        }
    }

    /// The state entries and positions after a transaction's `changes`, and what its counter
    /// additions read.
    fn tx_effect(
        &self,
        changes: &[TxItem],
    ) -> (BTreeMap<String, String>, BTreeMap<String, u64>, Vec<u64>) {
        let (mut state, mut positions) = (self.state.clone(), self.positions.clone());
        let mut read = Vec::new();
        for change in changes {
            match change {
                TxItem::Put(k, v) => {
                    state.insert(k.clone(), v.clone());
                }
                TxItem::Delete(k) => {
                    state.remove(k);
                }
                TxItem::Add(k, n) => {
                    let old = state.get(k).map_or(0, |v| v.parse().expect("a counter"));
                    read.push(old);
                    state.insert(k.clone(), (old + n).to_string());
                }
                TxItem::Position(s, p) => {
                    let stored = positions.entry(s.clone()).or_insert(*p);
                    *stored = (*stored).max(*p);
                }
            }
        }
        (state, positions, read)
    }

    fn note_tx(&mut self, event: String) {
        self.tx_history
            .push(format!("round {}: {event}", self.round));
        if self.tx_history.len() > 24 {
            self.tx_history.remove(0);
        }
    }
}

fn parse_op(line: &str) -> Option<Op> {
    let mut parts = line.split(' ');
    let tag = parts.next()?;
    let mut next = || parts.next().map(str::to_string);
    Some(match tag {
        "i" => Op::Insert(next()?, next()?.parse().ok()?, next()?),
        "b" => Op::Batch(
            line[2..]
                .split(' ')
                .map(|item| {
                    let mut fields = item.split('/');
                    Some((
                        fields.next()?.to_string(),
                        fields.next()?.parse().ok()?,
                        fields.next()?.to_string(),
                    ))
                })
                .collect::<Option<_>>()?,
        ),
        "r" => Op::Remove(next()?),
        "c" => Op::Claim(next()?, next()?.parse().ok()?, next()?),
        "f" => Op::Complete(next()?, next()?, next()?.parse().ok()?, next()?),
        "x" => Op::Release(next()?, next()?),
        "g" => Op::Get(next()?),
        "m" => Op::Maintain,
        "k" => Op::Checkpoint,
        "t" => {
            let mut items = Vec::new();
            let mut changes = Vec::new();
            for token in line[1..].split(' ').filter(|t| !t.is_empty()) {
                let (kind, rest) = token.split_once(':')?;
                match kind {
                    "i" => {
                        let mut fields = rest.split('/');
                        items.push((
                            fields.next()?.to_string(),
                            fields.next()?.parse().ok()?,
                            fields.next()?.to_string(),
                        ));
                    }
                    "d" => changes.push(TxItem::Delete(rest.to_string())),
                    _ => {
                        let (k, v) = rest.split_once(':')?;
                        changes.push(match kind {
                            "s" => TxItem::Put(k.to_string(), v.to_string()),
                            "a" => TxItem::Add(k.to_string(), v.parse().ok()?),
                            "p" => TxItem::Position(k.to_string(), v.parse().ok()?),
                            _ => return None,
                        });
                    }
                }
            }
            Op::Tx(items, changes)
        }
        _ => return None,
    })
}

/// What one open of the store answers: `get` of every key checked, and `in_doubt()`.
#[derive(Debug, PartialEq, Eq)]
struct Observation {
    values: BTreeMap<String, Option<String>>,
    /// Key -> (lease end, fencing token).
    in_doubt: BTreeMap<String, (u64, u64)>,
    /// State entries present, of the keys checked.
    state: BTreeMap<String, String>,
    positions: BTreeMap<String, u64>,
}

/// Every state key the child may write or that must stay absent.
fn checked_state_keys() -> Vec<String> {
    (0..8)
        .map(state_key)
        .chain((0..3).map(counter))
        .chain(never_state_keys())
        .collect()
}

fn observe(store: &Store, keys: &[String]) -> Result<Observation, String> {
    let damaged = store.stats().segments_damaged;
    if damaged != 0 {
        return Err(format!("{damaged} segments found damaged"));
    }
    let mut values = BTreeMap::new();
    for k in keys {
        let got = store
            .get(k.as_bytes())
            .map_err(|e| format!("get {k}: {e}"))?;
        values.insert(
            k.clone(),
            got.map(|v| String::from_utf8_lossy(&v).into_owned()),
        );
    }
    let mut in_doubt = BTreeMap::new();
    for token in store.in_doubt().map_err(|e| format!("in_doubt: {e}"))? {
        let lease = token
            .lease_until()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let k = String::from_utf8_lossy(token.key()).into_owned();
        if in_doubt
            .insert(k.clone(), (lease, token.fencing_token()))
            .is_some()
        {
            return Err(format!("in_doubt lists {k} twice"));
        }
    }
    let mut state = BTreeMap::new();
    for k in checked_state_keys() {
        if let Some(v) = store
            .get_state(k.as_bytes())
            .map_err(|e| format!("get_state {k}: {e}"))?
        {
            state.insert(k, String::from_utf8_lossy(&v).into_owned());
        }
    }
    let mut positions = BTreeMap::new();
    for (s, p) in store.positions().map_err(|e| format!("positions: {e}"))? {
        let s = String::from_utf8_lossy(&s).into_owned();
        if store
            .position(s.as_bytes())
            .map_err(|e| format!("position: {e}"))?
            != Some(p)
        {
            return Err(format!("position({s}) differs from positions()"));
        }
        positions.insert(s, p);
    }
    for i in 0..3 {
        let s = source(i);
        if !positions.contains_key(&s) && store.position(s.as_bytes()).ok().flatten().is_some() {
            return Err(format!("position({s}) is set, positions() omits it"));
        }
    }
    Ok(Observation {
        values,
        in_doubt,
        state,
        positions,
    })
}

fn open_at(dir: &Path, clock: &ManualClock) -> Result<Store, String> {
    Store::open_with(dir, config(clock, 0.9, false)).map_err(|e| format!("reopen: {e}"))
}

/// A consumer outage longer than anything the child writes lives: its TTLs (at most ten hours)
/// and its completed claims' result TTLs (at most four times a lease of at most two hours).
const OUTAGE_MILLIS: u64 = 12 * 3_600_000;

/// How far the parent moves the clock: mostly not or by seconds, sometimes minutes to hours.
fn advance(rng: &mut StdRng) -> u64 {
    match rng.gen_range(0..100) {
        0..=24 => 0,
        25..=64 => rng.gen_range(100..6_000),
        65..=84 => rng.gen_range(6_000..60_000),
        85..=93 => rng.gen_range(60_000..7_200_000),
        _ => rng.gen_range(7_200_000..40_000_000),
    }
}

#[test]
fn kill9_torture_loses_nothing_acknowledged() {
    let kills: u64 = std::env::var("IDEM_TORTURE_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 20 } else { 100 });
    let (mut rng, seed) = seeded_rng("crash torture");
    let dir = tempfile::tempdir().unwrap();
    let clock_dir = tempfile::tempdir().unwrap();
    let clock_file = clock_dir.path().join("clock");
    let checkpoint_file = dir.path().join("checkpoint.idem");
    let mut now = ManualClock::DEFAULT_START_MILLIS;
    let mut model = Model {
        keys: BTreeMap::new(),
        state: BTreeMap::new(),
        positions: BTreeMap::new(),
        tx_history: Vec::new(),
        history: BTreeMap::new(),
        had_value: BTreeMap::new(),
        fences: BTreeMap::new(),
        last_fence: None,
        seed,
        round: 0,
        totals: Totals::default(),
    };
    let mut checked: Vec<String> = (0..POOL).map(key).collect();
    checked.extend(never_keys());
    let started = Instant::now();
    for round in 0..kills {
        model.round = round;
        write_clock(&clock_file, now);
        let ratio = if rng.gen_bool(0.75) { 0.9 } else { 0.5 };
        let background = rng.gen_bool(0.5);
        // Transactions from a third of the run on: state records never expire, so segments that
        // hold them (or their compaction copies) are compacted, never deleted whole.
        let transactions = round >= kills / 3 && rng.gen_bool(0.8);
        let mut child = Command::new(env!("CARGO_BIN_EXE_torture_child"))
            .arg(dir.path())
            .arg(&clock_file)
            .arg(round.to_string())
            .arg(rng.gen::<u64>().to_string())
            .arg(ratio.to_string())
            .arg(background.to_string())
            .arg(transactions.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill (no newline) was not said.
                    Ok(_) if !line.ends_with('\n') => break,
                    Ok(_) => {
                        line.pop();
                        if lines.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        // Let it work for a while (opening included), moving its clock now and then, then kill
        // it mid-flight.
        for _ in 0..rng.gen_range(1..4) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(30..250)));
            if rng.gen_bool(0.5) {
                now += rng.gen_range(50..8_000);
                write_clock(&clock_file, now);
            }
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().unwrap();
        if status.signal() != Some(SIGKILL) {
            model.fail(format!(
                "the child ended by itself ({status}); see its stderr above"
            ));
        }
        reader.join().unwrap();

        // Check every answer of the child against the model, in order.
        let mut child_now = now;
        let mut pending: Option<Op> = None;
        let mut round_stats = (0, 0);
        for line in received.try_iter() {
            let tag = line.split(' ').next().unwrap_or("");
            if tag == "T" {
                child_now = line[2..].parse().unwrap();
                assert!(child_now <= now, "the child's clock ran ahead");
                continue;
            }
            if tag == "D" {
                let f: Vec<&str> = line.split(' ').collect();
                let (k, lease, cid) = (f[1], f[2].parse::<u64>().unwrap(), f[3]);
                let fence: u64 = f[4].parse().unwrap();
                match model.get(k).at(child_now) {
                    State::Claim {
                        lease: held,
                        cid: old,
                    } if held == lease => {
                        let how = "the child's in_doubt()";
                        model.in_doubt_fence(k, &old, fence, how);
                        model.fences.insert(cid.to_string(), fence);
                    }
                    other => model.fail(format!(
                        "the child's in_doubt() lists {k} (lease {lease}) but it is {other:?}\n{}",
                        model.describe(k)
                    )),
                }
                model.keys.insert(
                    k.to_string(),
                    State::Claim {
                        cid: cid.to_string(),
                        lease,
                    },
                );
                model.note(k, format!("in doubt at child start, named {cid}"));
                continue;
            }
            if let Some(op) = parse_op(&line) {
                assert!(pending.is_none(), "two intents in a row: {line}");
                pending = Some(op);
                continue;
            }
            let op = pending
                .take()
                .unwrap_or_else(|| panic!("answer without intent: {line}"));
            let (expected, changes) = model.apply(&op, child_now);
            if let Op::Maintain = op {
                let f: Vec<u64> = line[2..].split(' ').map(|n| n.parse().unwrap()).collect();
                round_stats = (f[0], f[1]);
                if f[2] != 0 {
                    model.fail(format!(
                        "at {child_now} the child's maintain() found {} segments damaged",
                        f[2]
                    ));
                }
                model.totals.ops_acked += 1;
                continue;
            }
            // `C acq <fence>`: the fencing token is checked apart from the answer.
            let (line, fence) = match line.strip_prefix("C acq ") {
                Some(fence) => ("C acq".to_string(), Some(fence.parse::<u64>().unwrap())),
                None => (line, None),
            };
            if line != expected {
                let keys: Vec<&String> = match &op {
                    Op::Insert(k, ..)
                    | Op::Remove(k)
                    | Op::Claim(k, ..)
                    | Op::Complete(k, ..)
                    | Op::Release(k, ..)
                    | Op::Get(k) => vec![k],
                    Op::Batch(items) | Op::Tx(items, _) => items.iter().map(|(k, ..)| k).collect(),
                    _ => vec![],
                };
                let mut what = format!(
                    "at {child_now} the child's {op:?} was answered {line:?}, the model expects {expected:?}"
                );
                for k in keys {
                    write!(what, "\n  {}", model.describe(k)).unwrap();
                }
                if let Op::Tx(..) = op {
                    write!(
                        what,
                        "\n  state {:?}, positions {:?}; transactions:\n    {}",
                        model.state,
                        model.positions,
                        model.tx_history.join("\n    ")
                    )
                    .unwrap();
                }
                model.fail(what);
            }
            model.totals.ops_acked += 1;
            if let (Op::Claim(k, _, cid), Some(fence)) = (&op, fence) {
                let how = format!("at {child_now} the child's claim");
                model.acquired(k, cid, fence, &how);
            }
            match &op {
                Op::Complete(k, _, deadline, _) if line == "F ok" => {
                    if let State::Claim { lease, .. } = model.get(k) {
                        if *deadline < lease {
                            model.totals.completed_shorter_than_lease += 1;
                        } else {
                            model.totals.completed_longer_than_lease += 1;
                        }
                    }
                }
                Op::Release(..) if line == "X ok" => model.totals.released += 1,
                Op::Remove(..) if line == "R true" => model.totals.removed += 1,
                Op::Claim(..) if line == "C acq" => model.totals.claimed += 1,
                Op::Tx(_, tx_changes) if line.starts_with("A ok") => {
                    let (state, positions, _) = model.tx_effect(tx_changes);
                    model.state = state;
                    model.positions = positions;
                    model.totals.tx_committed += 1;
                    model.totals.tx_dedup_inserted += changes.len() as u64;
                    model.note_tx(format!("at {child_now}: {op:?} -> {line}"));
                }
                Op::Tx(..) => model.totals.tx_refused_inflight += 1,
                _ if line.ends_with("stale") => model.totals.stale += 1,
                _ => {}
            }
            for (k, state) in changes {
                if let State::Value { .. } = state {
                    if matches!(op, Op::Insert(..) | Op::Batch(..)) {
                        model.totals.inserted += 1;
                        if model.had_value.contains_key(&k) {
                            model.totals.reinserted += 1;
                        }
                    }
                    model.had_value.insert(k.clone(), true);
                }
                model.note(&k, format!("at {child_now}: {op:?} -> {line} -> {state:?}"));
                model.keys.insert(k, state);
            }
        }
        model.totals.segments_deleted += round_stats.0;
        model.totals.segments_compacted += round_stats.1;

        // The operation cut by the kill may or may not have happened.
        let mut candidates: BTreeMap<String, Vec<State>> = BTreeMap::new();
        if let Some(op) = &pending {
            model.totals.ops_in_doubt_at_kill += 1;
            let (_, changes) = model.apply(op, child_now);
            for (k, after) in changes {
                model.note(
                    &k,
                    format!("at {child_now}: {op:?} cut by the kill; may leave {after:?}"),
                );
                candidates.insert(k.clone(), vec![model.get(&k), after]);
            }
        }

        // Reopen at the parent's time: with the checkpoint, then by full replay.
        let with_checkpoint = checkpoint_file.exists();
        model.totals.checkpoint_opens_with_file += u64::from(with_checkpoint);
        let clock = ManualClock::starting_at(now);
        let store = open_at(dir.path(), &clock).unwrap_or_else(|e| model.fail(e));
        let first = observe(&store, &checked).unwrap_or_else(|e| model.fail(e));
        drop(store);
        if with_checkpoint {
            std::fs::remove_file(&checkpoint_file).unwrap();
        }
        let store = open_at(dir.path(), &clock).unwrap_or_else(|e| model.fail(e));
        let replayed = observe(&store, &checked).unwrap_or_else(|e| model.fail(e));

        let mut problems = String::new();
        // A transaction cut by the kill: all of it there, or none of it.
        if let Some(op @ Op::Tx(_, tx_changes)) = &pending {
            let (state, positions, _) = model.tx_effect(tx_changes);
            let (expected, dedup) = model.apply(op, child_now);
            let commits = expected.starts_with("A ok");
            // A committing transaction moves a position forward: its presence always shows.
            let present = commits && first.state == state && first.positions == positions;
            let absent = first.state == model.state && first.positions == model.positions;
            if !present && !absent {
                model.fail(format!(
                    "after the kill, reopened at {now}: the cut transaction {op:?} is neither \
                     whole nor absent: state {:?} positions {:?}; before it state {:?} positions \
                     {:?}; after it state {state:?} positions {positions:?}\n  transactions:\n    {}",
                    first.state,
                    first.positions,
                    model.state,
                    model.positions,
                    model.tx_history.join("\n    ")
                ));
            }
            for (k, after) in dedup {
                let state = if present { after } else { model.get(&k) };
                model.note(
                    &k,
                    format!("the transaction cut by the kill is present: {present}"),
                );
                candidates.insert(k, vec![state]);
            }
            model.note_tx(format!(
                "at {child_now}: {op:?} cut by the kill; present: {present}"
            ));
            if present {
                model.state = state;
                model.positions = positions;
                model.totals.tx_cut_present += 1;
            } else if commits {
                model.totals.tx_cut_absent += 1;
            }
        }
        for (name, seen) in [("with checkpoint", &first), ("full replay", &replayed)] {
            if seen.state != model.state || seen.positions != model.positions {
                write!(
                    problems,
                    "\n  {name}: state {:?} positions {:?}, the model says state {:?} positions \
                     {:?}\n  transactions:\n    {}",
                    seen.state,
                    seen.positions,
                    model.state,
                    model.positions,
                    model.tx_history.join("\n    ")
                )
                .unwrap();
            }
        }
        for (name, seen) in [("with checkpoint", &first), ("full replay", &replayed)] {
            for k in seen.in_doubt.keys() {
                if !checked.contains(k) {
                    write!(problems, "\n  {name}: in_doubt lists {k}, never claimed").unwrap();
                }
            }
        }
        for k in &checked {
            let states = candidates
                .get(k)
                .cloned()
                .unwrap_or_else(|| vec![model.get(k)]);
            let mut matched: Option<State> = None;
            for (name, seen) in [("with checkpoint", &first), ("full replay", &replayed)] {
                let got = (
                    seen.values.get(k).cloned().flatten(),
                    seen.in_doubt.get(k).map(|&(lease, _)| lease),
                );
                match states.iter().find(|s| s.observed(now) == got) {
                    Some(s) => matched = Some(s.clone()),
                    None => write!(
                        problems,
                        "\n  {name}: {k} reads (get, in doubt) = {got:?}, expected {}\n    {}",
                        states
                            .iter()
                            .map(|s| format!("{:?}", s.observed(now)))
                            .collect::<Vec<_>>()
                            .join(" or "),
                        model.describe(k)
                    )
                    .unwrap(),
                }
            }
            let differ = first.values.get(k) != replayed.values.get(k)
                || first.in_doubt.get(k) != replayed.in_doubt.get(k);
            if differ && !problems.contains(&format!(" {k} reads")) {
                write!(
                    problems,
                    "\n  {k}: with checkpoint {:?}/{:?}, full replay {:?}/{:?}",
                    first.values.get(k),
                    first.in_doubt.get(k),
                    replayed.values.get(k),
                    replayed.in_doubt.get(k)
                )
                .unwrap();
            }
            // The run goes on from what the store holds now.
            if let (Some(State::Claim { cid, .. }), Some(&(_, fence)), false) =
                (&matched, replayed.in_doubt.get(k), differ)
            {
                model.in_doubt_fence(k, cid, fence, &format!("reopened at {now}, in_doubt()"));
            }
            if let Some(state) = matched {
                if candidates.contains_key(k) {
                    model.note(k, format!("after the kill: {state:?}"));
                }
                if let State::Value { deadline, .. } = &state {
                    model.totals.values_expired += u64::from(*deadline <= now);
                }
                model.keys.insert(k.clone(), state.at(now));
            }
        }
        if !problems.is_empty() {
            model.fail(format!(
                "after the kill, reopened at {now} (checkpoint file present: {with_checkpoint}):{problems}"
            ));
        }
        model.totals.claims_in_doubt_seen += replayed.in_doubt.len() as u64;

        // Move the clock on for the next round, sometimes reclaim here at the new time (segments
        // expire whole between kills), then leave the store closed (with a checkpoint) or dropped.
        // Every tenth round the consumer was down longer than anything lives, and reclaims: every
        // sealed segment is then deleted whole, or compacted if a state entry or position points
        // into it, whatever the random steps did (left to them, a run may delete none).
        let outage = round % 10 == 5;
        now += advance(&mut rng) + if outage { OUTAGE_MILLIS } else { 0 };
        clock.set_millis(now);
        if outage || rng.gen_bool(0.6) {
            let report = store
                .maintain()
                .unwrap_or_else(|e| model.fail(format!("maintain: {e}")));
            model.totals.segments_deleted += report.segments_deleted;
            model.totals.segments_compacted += report.segments_compacted;
            let damaged = store.stats().segments_damaged;
            if damaged != 0 {
                model.fail(format!(
                    "maintain at {now}: {damaged} segments found damaged"
                ));
            }
        }
        if rng.gen_bool(0.5) {
            store
                .close()
                .unwrap_or_else(|e| model.fail(format!("close: {e}")));
        } else {
            drop(store);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "crash torture: {kills} kills in {elapsed:.1} s (seed {seed}); {:#?}",
        model.totals
    );
    if kills >= 20 {
        assert!(
            model.totals.tx_committed > 0 && model.totals.tx_dedup_inserted > 0,
            "the run must commit transactions: {:?}",
            model.totals
        );
        assert!(
            model.totals.segments_compacted > 0 && model.totals.segments_deleted > 0,
            "the run must compact and delete segments: {:?}",
            model.totals
        );
    }
}
