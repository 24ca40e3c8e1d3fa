//! Transactions in the `ops` target: their ops ([`TxOp`], tags 242-255 of the byte format), the
//! model of state entries and positions ([`StateModel`]), and the check after every reopen that
//! each transaction committed since the last durable point is there whole or not at all.
//!
//! Semantics modelled (engine/src/transaction.rs, tests/tests/transactions.rs):
//! - a transaction writes nothing before `commit`; dropping it writes nothing;
//! - `check_or_insert` answers `Duplicate`/`ClaimInFlight` at once like the plain call, and a
//!   provisional `Inserted` (a key checked again in the transaction gets the same answer);
//!   `get_state` sees the transaction's own writes, else the committed value, and its first read
//!   of a key is what the commit validates; `set_position` fails with `PositionRegressed` below
//!   the stored position or one the transaction set; every method that adds a record may fail
//!   with `TransactionTooLarge` (its records must fit in one segment);
//! - `commit` fails with `Conflict` and writes nothing if a dedup key it inserts is live, a state
//!   key it read was written by a commit since (whatever the value), or a position it sets was
//!   moved past it; a read-only commit, or one deleting only absent keys, writes nothing; the
//!   inserted keys get their deadline from the commit's time;
//! - after power loss (or a process that saw failing fsyncs ended), the state is the durable
//!   state with some subset of the later commits applied, each whole: [`check_recovered`] finds
//!   the contradiction if one commit is seen partly (a state key, a position or a dedup key of it
//!   present while another is not), or a durable commit is missing.
//!
//! Values written by transaction `#n` start with `S<n>:` (state) or `T<n>:` (dedup), so that an
//! answer tells which commit it comes from.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use idem::record::{encoded_len, SEAL_RECORD_LEN, SEGMENT_HEADER_LEN};
use idem::{MAX_TRANSACTION_BYTES, MAX_TRANSACTION_RECORDS, MAX_VALUE_BYTES};

use super::{show_value, value_of, Item, KeyId, SEGMENT_SIZES};

/// First tag byte of a transaction op; older inputs used only `tag % 22` below it.
pub const FIRST_TAG: u8 = 242;

/// State keys: short ones that are also dedup keys (another namespace), and long ones.
const STATE_KEYS: [u8; 8] = [0, 1, 2, 3, 4, 13, 14, 15];

/// The bytes of state key `n`.
pub fn state_key(n: u8) -> Vec<u8> {
    KeyId(STATE_KEYS[usize::from(n % 8)]).bytes()
}

/// Every state key.
pub fn state_keys() -> Vec<Vec<u8>> {
    (0..8).map(state_key).collect()
}

/// The bytes of position source `n`: two short names and one of the maximum length.
pub fn source(n: u8) -> Vec<u8> {
    match n % 3 {
        0 => b"src-a".to_vec(),
        1 => b"src-b".to_vec(),
        _ => vec![b'P'; idem::MAX_KEY_BYTES],
    }
}

/// Every position source.
pub fn sources() -> Vec<Vec<u8>> {
    (0..3).map(source).collect()
}

/// A position from one byte: 0, the maximum, else steps of 1000 (so later bytes regress).
pub fn position_of(spec: u8) -> u64 {
    match spec {
        0xFF => u64::MAX,
        n => u64::from(n) * 1000,
    }
}

/// A value written by transaction `id`: `<prefix><id>:` and [`value_of`]`(spec)`, cut to the
/// largest value.
pub fn tx_value(prefix: char, id: u64, spec: u8) -> Vec<u8> {
    let mut value = format!("{prefix}{id}:").into_bytes();
    value.extend(value_of(spec));
    value.truncate(MAX_VALUE_BYTES);
    value
}

/// An op on one of two transaction slots, or a read of the committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOp {
    /// Drops the slot's transaction if one is open and starts a new one (the other ops start
    /// one when the slot is empty).
    Open {
        /// Which slot (0 or 1).
        slot: u8,
    },
    /// `Transaction::check_or_insert` (value `T<id>:…`).
    CheckOrInsert {
        /// Which slot.
        slot: u8,
        /// The item.
        item: Item,
    },
    /// `Transaction::get_state`.
    GetState {
        /// Which slot.
        slot: u8,
        /// See [`state_key`].
        key: u8,
    },
    /// `Transaction::put_state` (value `S<id>:…`).
    PutState {
        /// Which slot.
        slot: u8,
        /// See [`state_key`].
        key: u8,
        /// See [`value_of`].
        value: u8,
    },
    /// `Transaction::delete_state`.
    DeleteState {
        /// Which slot.
        slot: u8,
        /// See [`state_key`].
        key: u8,
    },
    /// `Transaction::set_position`.
    SetPosition {
        /// Which slot.
        slot: u8,
        /// See [`source`].
        source: u8,
        /// See [`position_of`].
        position: u8,
    },
    /// `get_state` then `put_state` of the same key (read-modify-write: conflicts).
    ReadModifyWrite {
        /// Which slot.
        slot: u8,
        /// See [`state_key`].
        key: u8,
        /// See [`value_of`].
        value: u8,
    },
    /// `Transaction::commit`.
    Commit {
        /// Which slot.
        slot: u8,
    },
    /// Drops the slot's transaction.
    Drop {
        /// Which slot.
        slot: u8,
    },
    /// `Store::get_state`.
    StoreGetState(u8),
    /// `Store::position`.
    StorePosition(u8),
    /// `Store::positions`, every `get_state`, and the state counts of `stats`.
    StoreState,
}

/// Decodes the op of tag byte `tag` (at least [`FIRST_TAG`]), its arguments from `arg`.
pub fn decode(tag: u8, arg: &mut dyn FnMut() -> Option<u8>) -> Option<TxOp> {
    let mut slot_and = || arg().map(|b| (b & 1, b >> 1));
    Some(match tag - FIRST_TAG {
        0 => TxOp::Open {
            slot: slot_and()?.0,
        },
        1 | 11 => {
            let (slot, key) = slot_and()?;
            TxOp::CheckOrInsert {
                slot,
                item: Item {
                    key,
                    ttl: arg()?,
                    value: arg()?,
                },
            }
        }
        2 => {
            let (slot, key) = slot_and()?;
            TxOp::GetState { slot, key }
        }
        3 | 12 => {
            let (slot, key) = slot_and()?;
            TxOp::PutState {
                slot,
                key,
                value: arg()?,
            }
        }
        4 => {
            let (slot, key) = slot_and()?;
            TxOp::DeleteState { slot, key }
        }
        5 => {
            let (slot, source) = slot_and()?;
            TxOp::SetPosition {
                slot,
                source,
                position: arg()?,
            }
        }
        6 => TxOp::Commit {
            slot: slot_and()?.0,
        },
        7 => TxOp::Drop {
            slot: slot_and()?.0,
        },
        8 => TxOp::StoreGetState(arg()?),
        9 => TxOp::StorePosition(arg()?),
        10 => {
            let (slot, key) = slot_and()?;
            TxOp::ReadModifyWrite {
                slot,
                key,
                value: arg()?,
            }
        }
        _ => TxOp::StoreState,
    })
}

/// Appends the bytes [`decode`] turns into `op`.
pub fn encode(op: &TxOp, out: &mut Vec<u8>) {
    let sk = |slot: u8, key: u8| (slot & 1) | key << 1;
    match *op {
        TxOp::Open { slot } => out.extend([FIRST_TAG, slot & 1]),
        TxOp::CheckOrInsert { slot, item } => {
            out.extend([FIRST_TAG + 1, sk(slot, item.key), item.ttl, item.value])
        }
        TxOp::GetState { slot, key } => out.extend([FIRST_TAG + 2, sk(slot, key)]),
        TxOp::PutState { slot, key, value } => out.extend([FIRST_TAG + 3, sk(slot, key), value]),
        TxOp::DeleteState { slot, key } => out.extend([FIRST_TAG + 4, sk(slot, key)]),
        TxOp::SetPosition {
            slot,
            source,
            position,
        } => out.extend([FIRST_TAG + 5, sk(slot, source), position]),
        TxOp::Commit { slot } => out.extend([FIRST_TAG + 6, slot & 1]),
        TxOp::Drop { slot } => out.extend([FIRST_TAG + 7, slot & 1]),
        TxOp::StoreGetState(key) => out.extend([FIRST_TAG + 8, key]),
        TxOp::StorePosition(source) => out.extend([FIRST_TAG + 9, source]),
        TxOp::ReadModifyWrite { slot, key, value } => {
            out.extend([FIRST_TAG + 10, sk(slot, key), value])
        }
        TxOp::StoreState => out.push(FIRST_TAG + 13),
    }
}

/// The committed state: entries (value, and a version that changes at every write of the key,
/// as the engine's record location does) and positions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// State entries: value and version.
    pub state: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    /// Positions.
    pub positions: BTreeMap<Vec<u8>, u64>,
}

impl World {
    /// The value of state key `key`.
    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.state.get(key).map(|(v, _)| &v[..])
    }

    fn apply(&mut self, commit: &Commit, version: &mut u64) {
        for (key, value) in &commit.state {
            match value {
                Some(value) => {
                    *version += 1;
                    self.state.insert(key.clone(), (value.clone(), *version));
                }
                None => {
                    self.state.remove(key);
                }
            }
        }
        for (source, position) in &commit.positions {
            self.positions.insert(source.clone(), *position);
        }
    }
}

/// What one commit wrote (deletions of absent keys write nothing and are left out).
#[derive(Debug, Clone)]
pub struct Commit {
    /// The transaction's number.
    pub id: u64,
    /// State writes: a value or a deletion.
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Positions set.
    pub positions: Vec<(Vec<u8>, u64)>,
    /// Dedup keys inserted: key, value, deadline, and the model's write count of the key right
    /// after (a later write of the key makes the insert's absence no evidence).
    pub inserts: Vec<(Vec<u8>, Vec<u8>, u64, u64)>,
    /// The commit failed (an injected fault): it may or may not have been written.
    pub maybe: bool,
}

/// State entries and positions as the model knows them.
#[derive(Debug, Clone, Default)]
pub struct StateModel {
    /// The state now, in this process.
    pub world: World,
    /// The state at the last durable point (flush, close, reopen, a `Sync` commit).
    pub base: World,
    /// Commits since the last durable point, in commit order.
    pub pending: Vec<Commit>,
    /// After a failed commit: the state if it was applied (`world` is the state if not).
    pub unknown: Option<World>,
    /// Version counter of [`World`].
    pub version: u64,
}

impl StateModel {
    /// Everything up to now is durable. A failed commit stays pending: it may show up or not.
    pub fn durable(&mut self) {
        self.base = self.world.clone();
        self.pending.retain(|c| c.maybe);
    }

    /// Records an acknowledged commit (durable at once with `sync`).
    pub fn committed(&mut self, commit: Commit, sync: bool) {
        self.world.apply(&commit, &mut self.version);
        self.pending.push(commit);
        if sync {
            self.durable();
        }
    }

    /// Records a failed commit: from now on answers may come from either world.
    pub fn failed(&mut self, commit: Commit) {
        let mut applied = self.world.clone();
        applied.apply(&commit, &mut self.version);
        self.unknown = Some(applied);
        self.pending.push(commit);
    }

    /// The worlds the store's answers may come from now; in `Sync` mode not one resting on a
    /// failed (not durable) commit.
    pub fn worlds(&self, sync: bool) -> Vec<&World> {
        let mut worlds = vec![&self.world];
        if let Some(unknown) = self.unknown.as_ref().filter(|_| !sync) {
            worlds.push(unknown);
        }
        worlds
    }
}

/// What a freshly opened store answers about state: every state key's value, and `positions()`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateSnapshot {
    /// `get_state` of every state key.
    pub state: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// `positions()`.
    pub positions: Vec<(Vec<u8>, u64)>,
}

impl StateSnapshot {
    /// The position of `source`.
    pub fn position(&self, source: &[u8]) -> Option<u64> {
        self.positions
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, p)| *p)
    }

    /// The differences from `other`, one line each.
    pub fn diff(&self, other: &StateSnapshot) -> Vec<String> {
        let mut lines = Vec::new();
        for (key, got) in &self.state {
            let theirs = other.state.get(key).cloned().flatten();
            if *got != theirs {
                lines.push(format!(
                    "get_state({}): with checkpoint {}, full replay {}",
                    crate::show(key),
                    show_opt(got.as_deref()),
                    show_opt(theirs.as_deref())
                ));
            }
        }
        if self.positions != other.positions {
            lines.push(format!(
                "positions: with checkpoint {}, full replay {}",
                show_positions(&self.positions),
                show_positions(&other.positions)
            ));
        }
        lines
    }
}

/// An optional value for messages.
pub fn show_opt(value: Option<&[u8]>) -> String {
    value.map_or("None".into(), |v| format!("Some({})", show_value(v)))
}

fn show_positions(positions: &[(Vec<u8>, u64)]) -> String {
    let parts: Vec<String> = positions
        .iter()
        .map(|(s, p)| format!("{}={p}", crate::show(s)))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// One key's (or source's) evidence: the value the reopened store shows, whether the durable
/// state has it, and each pending commit that wrote the key with whether it wrote that value.
struct Chain {
    what: String,
    base_matches: bool,
    writers: Vec<(usize, bool)>,
}

/// After a reopen: the recovered state must be the durable state with a subset of the pending
/// commits applied in order, each whole. `gets` are the dedup answers of the reopened store;
/// `write_counts` the model's write count of each dedup key; `now` the time. Panics with the
/// contradiction; returns the recovered world otherwise.
pub fn check_recovered(
    model: &StateModel,
    seen: &StateSnapshot,
    gets: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    write_counts: &std::collections::HashMap<Vec<u8>, u64>,
    now: u64,
    label: &str,
) {
    let pending = &model.pending;
    let mut chains = Vec::new();
    let mut keys: Vec<Vec<u8>> = state_keys();
    keys.extend(model.base.state.keys().cloned());
    keys.extend(seen.state.keys().cloned());
    keys.sort();
    keys.dedup();
    for key in keys {
        let got = seen.state.get(&key).cloned().flatten();
        let writers = pending
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let (_, value) = c.state.iter().find(|(k, _)| *k == key)?;
                Some((i, *value == got))
            })
            .collect();
        chains.push(Chain {
            what: format!(
                "get_state({}) answered {}",
                crate::show(&key),
                show_opt(got.as_deref())
            ),
            base_matches: model.base.value(&key) == got.as_deref(),
            writers,
        });
    }
    for source in sources() {
        let got = seen.position(&source);
        let writers = pending
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let (_, position) = c.positions.iter().find(|(s, _)| *s == source)?;
                Some((i, Some(*position) == got))
            })
            .collect();
        chains.push(Chain {
            what: format!("position({}) answered {got:?}", crate::show(&source)),
            base_matches: model.base.positions.get(&source).copied() == got,
            writers,
        });
    }
    let mut present: Vec<Option<bool>> = vec![None; pending.len()];
    let mut why: Vec<String> = vec![String::new(); pending.len()];
    let fail = |reason: String, why: &[String], present: &[Option<bool>]| -> ! {
        let mut text = String::new();
        for (i, c) in pending.iter().enumerate() {
            let _ = write!(
                text,
                "\n    #{}{}: state {:?}, positions {:?}, inserts {:?}; deduced {:?} ({})",
                c.id,
                if c.maybe { " (failed commit)" } else { "" },
                c.state
                    .iter()
                    .map(|(k, v)| (crate::show(k), v.as_deref().map(show_value)))
                    .collect::<Vec<_>>(),
                c.positions
                    .iter()
                    .map(|(s, p)| (crate::show(s), p))
                    .collect::<Vec<_>>(),
                c.inserts
                    .iter()
                    .map(|(k, v, d, _)| (crate::show(k), show_value(v), d))
                    .collect::<Vec<_>>(),
                present[i],
                why[i]
            );
        }
        panic!(
            "{label}: the recovered state is not the durable state plus whole commits: \
             {reason}\n  durable state: {:?}\n  recovered: {:?}\n  commits since the durable \
             point:{text}",
            model
                .base
                .state
                .iter()
                .map(|(k, (v, _))| (crate::show(k), show_value(v)))
                .collect::<Vec<_>>(),
            seen.state
                .iter()
                .filter_map(|(k, v)| Some((crate::show(k), show_value(v.as_ref()?))))
                .chain(
                    seen.positions
                        .iter()
                        .map(|(s, p)| (crate::show(s), p.to_string()))
                )
                .collect::<Vec<_>>()
        )
    };
    let force = |i: usize,
                 value: bool,
                 reason: String,
                 present: &mut Vec<Option<bool>>,
                 why: &mut Vec<String>|
     -> bool {
        match present[i] {
            Some(v) if v == value => false,
            Some(_) => {
                let before = why[i].clone();
                why[i] = format!("{before}; and {reason}");
                fail(
                    format!(
                        "commit #{} must be {} and {}",
                        pending[i].id,
                        if value { "present" } else { "absent" },
                        if value { "absent" } else { "present" }
                    ),
                    why,
                    present,
                )
            }
            None => {
                present[i] = Some(value);
                why[i] = reason;
                true
            }
        }
    };
    // Dedup keys: a commit's unique value seen means it is there; its live insert not seen,
    // with no later write of the key, means it is not.
    for (i, c) in pending.iter().enumerate() {
        for (key, value, _, _) in &c.inserts {
            let got = gets.get(key).cloned().flatten();
            if got.as_ref() == Some(value) {
                force(
                    i,
                    true,
                    format!("get({}) shows its value", crate::show(key)),
                    &mut present,
                    &mut why,
                );
            }
        }
    }
    for (i, c) in pending.iter().enumerate() {
        for (key, value, deadline, count) in &c.inserts {
            let got = gets.get(key).cloned().flatten();
            let untouched = write_counts.get(key) == Some(count) && now < *deadline;
            if untouched && got.as_ref() != Some(value) {
                force(
                    i,
                    false,
                    format!(
                        "get({}) answered {} instead of its live value",
                        crate::show(key),
                        show_opt(got.as_deref())
                    ),
                    &mut present,
                    &mut why,
                );
            }
        }
    }
    loop {
        let mut changed = false;
        for chain in &chains {
            // The last commit present that wrote the key wrote the value seen; with none, the
            // durable state has it.
            let later_present = |j: usize, present: &[Option<bool>]| {
                chain.writers[j + 1..]
                    .iter()
                    .any(|(w, _)| present[*w] == Some(true))
            };
            let base_ok =
                chain.base_matches && !chain.writers.iter().any(|(w, _)| present[*w] == Some(true));
            let feasible: Vec<usize> = (0..chain.writers.len())
                .filter(|&j| {
                    let (w, matches) = chain.writers[j];
                    matches && present[w] != Some(false) && !later_present(j, &present)
                })
                .collect();
            if !base_ok && feasible.is_empty() {
                fail(
                    format!(
                        "{}: neither the durable state nor any commit present fits",
                        chain.what
                    ),
                    &why,
                    &present,
                );
            }
            let after = feasible.last().map_or(0, |j| j + 1);
            for &(w, _) in &chain.writers[after..] {
                changed |= force(
                    w,
                    false,
                    format!("{} (a later value)", chain.what),
                    &mut present,
                    &mut why,
                );
            }
            if !base_ok && feasible.len() == 1 {
                let (w, _) = chain.writers[feasible[0]];
                changed |= force(w, true, chain.what.clone(), &mut present, &mut why);
            }
        }
        if !changed {
            break;
        }
    }
}

/// The byte limit of one transaction with `segment_size` index (see [`SEGMENT_SIZES`]).
pub fn max_bytes(segment_size: u8) -> usize {
    let segment = SEGMENT_SIZES[usize::from(segment_size & 3)] as usize;
    MAX_TRANSACTION_BYTES.min(segment - SEGMENT_HEADER_LEN - SEAL_RECORD_LEN)
}

/// A dedup key a transaction checked: `Ok((ttl ms, value))` to insert at commit, `Err(value)` a
/// duplicate of that value.
pub type Check = Result<(u64, Vec<u8>), Vec<u8>>;

/// The model of one open transaction.
#[derive(Debug, Clone, Default)]
pub struct TxSlot {
    /// Its number (in its values).
    pub id: u64,
    /// Dedup keys checked, with what the commit does with each.
    pub checks: Vec<(Vec<u8>, Check)>,
    /// State keys read first, with the version seen (`None`: absent).
    pub reads: Vec<(Vec<u8>, Option<u64>)>,
    /// State writes.
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Positions.
    pub positions: Vec<(Vec<u8>, u64)>,
    /// Log bytes counted so far (never less).
    pub bytes: usize,
    /// `segments_compacted` of the stats at its first state read (a compaction since then must
    /// not make the commit conflict: `regressions/ops/tx-read-conflicts-after-compaction`).
    pub compacted_at_read: Option<u64>,
}

impl TxSlot {
    fn records(&self) -> usize {
        self.checks.iter().filter(|(_, c)| c.is_ok()).count()
            + self.writes.len()
            + self.positions.len()
    }

    /// Whether a new record of `len` bytes fits (then it is counted).
    pub fn grow(&mut self, len: usize, max: usize) -> bool {
        if self.records() + 1 > MAX_TRANSACTION_RECORDS {
            return false;
        }
        self.grow_bytes(len, max)
    }

    /// Whether `len` more bytes fit (then they are counted).
    pub fn grow_bytes(&mut self, len: usize, max: usize) -> bool {
        if self.bytes + len > max {
            return false;
        }
        self.bytes += len;
        true
    }

    /// Whether a state write of `value` to `key` fits (then it is counted, and recorded).
    pub fn write(&mut self, key: &[u8], value: Option<Vec<u8>>, max: usize) -> bool {
        let len = encoded_len(key.len(), value.as_ref().map_or(0, Vec::len), 0);
        let found = self.writes.iter().position(|(k, _)| k == key);
        let fits = match found {
            Some(i) => {
                let old = self.writes[i].1.as_ref().map_or(0, Vec::len);
                let previous = encoded_len(key.len(), old, 0);
                previous >= len || self.grow_bytes(len - previous, max)
            }
            None => self.grow(len, max),
        };
        if fits {
            match found {
                Some(i) => self.writes[i].1 = value,
                None => self.writes.push((key.to_vec(), value)),
            }
        }
        fits
    }

    /// The transaction's own write of `key`, if any.
    pub fn own(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.writes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The position it set for `source`.
    pub fn own_position(&self, source: &[u8]) -> Option<u64> {
        self.positions
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, p)| *p)
    }
}

/// The open transactions of a session, by slot.
pub type Slots<'s> = [Option<idem::Transaction<'s>>; 2];

use super::{ttl_millis, ttl_of, Harness, State};
use idem::{Error, Outcome, Store};

impl Harness {
    /// Runs one transaction op with the session's store and open transactions.
    pub(super) fn tx_step<'s>(&mut self, op: &TxOp, store: &'s Store, txs: &mut Slots<'s>) {
        let reads_only = matches!(
            op,
            TxOp::StoreGetState(_) | TxOp::StorePosition(_) | TxOp::StoreState
        );
        if self.model.state.unknown.is_some() && !reads_only {
            // A commit failed: the state the next transaction would see is unknown to the
            // model. Until the next reopen only reads run.
            return;
        }
        match *op {
            TxOp::Open { slot } => {
                self.tx_drop(slot, txs);
                self.tx_slot(slot, store, txs);
            }
            TxOp::CheckOrInsert { slot, item } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_check_or_insert(s, item, txs);
            }
            TxOp::GetState { slot, key } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_get_state(s, &state_key(key), store, txs);
            }
            TxOp::PutState { slot, key, value } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_write(s, &state_key(key), Some(value), txs);
            }
            TxOp::DeleteState { slot, key } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_write(s, &state_key(key), None, txs);
            }
            TxOp::ReadModifyWrite { slot, key, value } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_get_state(s, &state_key(key), store, txs);
                self.tx_write(s, &state_key(key), Some(value), txs);
            }
            TxOp::SetPosition {
                slot,
                source: n,
                position,
            } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_set_position(s, &source(n), position_of(position), txs);
            }
            TxOp::Commit { slot } => {
                let s = self.tx_slot(slot, store, txs);
                self.tx_commit(s, txs);
            }
            TxOp::Drop { slot } => self.tx_drop(slot, txs),
            TxOp::StoreGetState(key) => self.store_get_state(store, &state_key(key)),
            TxOp::StorePosition(n) => self.store_position(store, &source(n)),
            TxOp::StoreState => self.store_state(store),
        }
    }

    /// The slot's transaction, started if there is none.
    fn tx_slot<'s>(&mut self, slot: u8, store: &'s Store, txs: &mut Slots<'s>) -> usize {
        let s = usize::from(slot & 1);
        if txs[s].is_none() {
            txs[s] = Some(store.transaction());
            self.next_tx += 1;
            self.slots[s] = Some(TxSlot {
                id: self.next_tx,
                ..TxSlot::default()
            });
        }
        s
    }

    fn tx_drop(&mut self, slot: u8, txs: &mut Slots<'_>) {
        let s = usize::from(slot & 1);
        txs[s] = None;
        self.slots[s] = None;
    }

    /// The session ended: its transactions were dropped.
    pub(super) fn tx_session_ended(&mut self) {
        self.slots = [None, None];
    }

    fn tx_check_or_insert(&mut self, s: usize, item: Item, txs: &mut Slots<'_>) {
        let mut slot = self.slots[s].take().expect("an open slot");
        let key = KeyId(item.key).bytes();
        let ttl = ttl_of(item.ttl);
        let id = slot.id;
        let value = tx_value('T', id, item.value);
        let now = self.model.now;
        let got = txs[s]
            .as_mut()
            .expect("an open transaction")
            .check_or_insert(&key, ttl, &value);
        let what = || {
            format!(
                "step {}: transaction #{id} check_or_insert({}, {ttl:?}) answered {}",
                self.step,
                crate::show(&key),
                super::short(&got)
            )
        };
        if let Some((_, check)) = slot.checks.iter().find(|(k, _)| *k == key) {
            let same = match (check, &got) {
                (Ok(_), Ok(Outcome::Inserted)) => true,
                (Err(seen), Ok(Outcome::Duplicate(v))) => v[..] == seen[..],
                _ => false,
            };
            assert!(same, "{}: the key was checked before: {check:?}", what());
            self.slots[s] = Some(slot);
            return;
        }
        let len = encoded_len(key.len(), value.len(), 0);
        let max = max_bytes(self.spec.segment_size);
        match &got {
            Ok(Outcome::Inserted) => {
                self.model.observe(&key, &what, |s| !s.live(now));
                assert!(
                    slot.grow(len, max),
                    "{}: {} bytes do not fit in {max}",
                    what(),
                    slot.bytes + len
                );
                slot.checks
                    .push((key.clone(), Ok((ttl_millis(ttl), value.clone()))));
            }
            Err(Error::TransactionTooLarge { .. }) => {
                self.model.observe(&key, &what, |s| !s.live(now));
                assert!(
                    !slot.clone().grow(len, max),
                    "{}: {} bytes fit in {max}",
                    what(),
                    slot.bytes + len
                );
            }
            Ok(Outcome::Duplicate(seen)) => {
                let fits = |s: &State| s.live_value(now) == Some(&seen[..]);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
                slot.checks.push((key.clone(), Err(seen.to_vec())));
            }
            Err(Error::ClaimInFlight { until }) => {
                let until = super::millis(*until);
                let fits = |s: &State| s.live_claim(now) == Some(until);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(e) => self.allowed(e, &what()),
        }
        self.slots[s] = Some(slot);
    }

    fn tx_get_state(&mut self, s: usize, key: &[u8], store: &Store, txs: &mut Slots<'_>) {
        let slot = self.slots[s].as_mut().expect("an open slot");
        if slot.compacted_at_read.is_none() {
            slot.compacted_at_read = Some(store.stats().segments_compacted);
        }
        let got = txs[s]
            .as_mut()
            .expect("an open transaction")
            .get_state(key)
            .map(|v| v.map(|v| v.to_vec()));
        let world = &self.model.state.world;
        let expected = match slot.own(key) {
            Some(own) => own.clone(),
            None => world.value(key).map(<[u8]>::to_vec),
        };
        match got {
            Ok(got) => {
                assert!(
                    got == expected,
                    "step {}: transaction #{} get_state({}) answered {}, expected {}{}",
                    self.step,
                    slot.id,
                    crate::show(key),
                    show_opt(got.as_deref()),
                    show_opt(expected.as_deref()),
                    if slot.own(key).is_some() {
                        " (its own write)"
                    } else {
                        ""
                    }
                );
                if slot.own(key).is_none() && !slot.reads.iter().any(|(k, _)| k == key) {
                    let version = world.state.get(key).map(|(_, v)| *v);
                    slot.reads.push((key.to_vec(), version));
                }
            }
            Err(e) => {
                let what = format!("step {}: transaction get_state", self.step);
                // Its own write is answered without the store.
                assert!(
                    slot.own(key).is_none(),
                    "{what} failed on its own write: {e}"
                );
                self.allowed(&e, &what);
            }
        }
    }

    fn tx_write(&mut self, s: usize, key: &[u8], value: Option<u8>, txs: &mut Slots<'_>) {
        let max = max_bytes(self.spec.segment_size);
        let slot = self.slots[s].as_mut().expect("an open slot");
        let value = value.map(|v| tx_value('S', slot.id, v));
        let tx = txs[s].as_mut().expect("an open transaction");
        let got = match &value {
            Some(value) => tx.put_state(key, value),
            None => tx.delete_state(key),
        };
        let before = slot.bytes;
        let fits = slot.write(key, value.clone(), max);
        let ok = match &got {
            Ok(()) => fits,
            Err(Error::TransactionTooLarge { .. }) => !fits,
            Err(_) => false,
        };
        assert!(
            ok,
            "step {}: transaction #{} {}({}) answered {got:?}; the model: {} bytes counted before, \
             limit {max}",
            self.step,
            slot.id,
            if value.is_some() {
                "put_state"
            } else {
                "delete_state"
            },
            crate::show(key),
            before
        );
    }

    fn tx_set_position(&mut self, s: usize, source: &[u8], position: u64, txs: &mut Slots<'_>) {
        let max = max_bytes(self.spec.segment_size);
        let faulted = self.faulted;
        let slot = self.slots[s].as_mut().expect("an open slot");
        let got = txs[s]
            .as_mut()
            .expect("an open transaction")
            .set_position(source, position);
        let stored = self.model.state.world.positions.get(source).copied();
        let own = slot.own_position(source);
        let expected = match stored.max(own).filter(|&p| p > position) {
            Some(stored) => Err(Some(stored)),
            None if own.is_some() => {
                let at = slot.positions.iter().position(|(s, _)| s == source);
                slot.positions[at.expect("own")].1 = position;
                Ok(())
            }
            None if slot.grow(encoded_len(source.len(), 8, 0), max) => {
                slot.positions.push((source.to_vec(), position));
                Ok(())
            }
            None => Err(None),
        };
        let ok = match (&got, expected) {
            (Ok(()), Ok(())) => true,
            (
                Err(Error::PositionRegressed {
                    source_len,
                    stored,
                    requested,
                }),
                Err(Some(expected)),
            ) => *source_len == source.len() && *stored == expected && *requested == position,
            (Err(Error::TransactionTooLarge { .. }), Err(None)) => true,
            // A refusal rests on the stored position's record: in `Sync` it waits until that
            // record is durable, and fails instead once fsyncs fail (an injected fault only).
            (Err(Error::Poisoned { .. }), Err(Some(_))) => faulted,
            _ => false,
        };
        assert!(
            ok,
            "step {}: transaction #{} set_position({}, {position}) answered {got:?}; expected \
             {expected:?} (stored {stored:?}, its own {own:?}; Err(Some(p)): regressed below p, \
             Err(None): too large)",
            self.step,
            slot.id,
            crate::show(source),
        );
    }

    fn tx_commit(&mut self, s: usize, txs: &mut Slots<'_>) {
        let slot = self.slots[s].take().expect("an open slot");
        let tx = txs[s].take().expect("an open transaction");
        let now = self.model.now;
        let got = tx.commit();
        let what = || {
            format!(
                "step {}: commit of transaction #{} answered {} (checks {:?}, reads {:?}, writes \
                 {:?}, positions {:?})",
                self.step,
                slot.id,
                super::short(&got),
                slot.checks
                    .iter()
                    .map(|(k, c)| (crate::show(k), c.is_ok()))
                    .collect::<Vec<_>>(),
                slot.reads
                    .iter()
                    .map(|(k, v)| (crate::show(k), v))
                    .collect::<Vec<_>>(),
                slot.writes
                    .iter()
                    .map(|(k, v)| (crate::show(k), v.as_deref().map(show_value)))
                    .collect::<Vec<_>>(),
                slot.positions
                    .iter()
                    .map(|(k, p)| (crate::show(k), p))
                    .collect::<Vec<_>>()
            )
        };
        let inserts: Vec<(Vec<u8>, u64, Vec<u8>)> = slot
            .checks
            .iter()
            .filter_map(|(k, c)| c.as_ref().ok().map(|(t, v)| (k.clone(), *t, v.clone())))
            .collect();
        let read_only = inserts.is_empty() && slot.writes.is_empty() && slot.positions.is_empty();
        let world = &self.model.state.world;
        let stale_read = slot
            .reads
            .iter()
            .find(|(k, version)| world.state.get(k).map(|(_, v)| *v) != *version);
        let passed = slot
            .positions
            .iter()
            .find(|(src, p)| world.positions.get(src).is_some_and(|w| w > p));
        let state_conflict = !read_only && (stale_read.is_some() || passed.is_some());
        let state: Vec<(Vec<u8>, Option<Vec<u8>>)> = slot
            .writes
            .iter()
            .filter(|(k, v)| v.is_some() || world.state.contains_key(k))
            .cloned()
            .collect();
        let writes_nothing = inserts.is_empty() && state.is_empty() && slot.positions.is_empty();
        let result = |(key, ttl, value): &(Vec<u8>, u64, Vec<u8>)| {
            (
                key.clone(),
                State::Result {
                    value: value.clone(),
                    deadline: now + ttl,
                    fp: Vec::new(),
                },
            )
        };
        match &got {
            Ok(()) => {
                assert!(
                    !state_conflict,
                    "{}: committed although {}",
                    what(),
                    match (stale_read, passed) {
                        (Some((k, _)), _) => format!(
                            "state key {} was written by a commit since it was read",
                            crate::show(k)
                        ),
                        (_, Some((src, p))) => format!(
                            "position {} is past {p}: {:?}",
                            crate::show(src),
                            world.positions.get(src)
                        ),
                        _ => unreachable!(),
                    }
                );
                if read_only {
                    return;
                }
                for (key, _, _) in &inserts {
                    self.model.observe(key, &what, |s| !s.live(now));
                }
                if writes_nothing {
                    return;
                }
                self.acknowledged(&what);
                let sync = self.spec.sync();
                let mut recorded = Vec::new();
                for insert in &inserts {
                    let (key, new) = result(insert);
                    self.model.set(&key, new, sync);
                    let count = self.model.write_counts[&key];
                    recorded.push((key, insert.2.clone(), now + insert.1, count));
                }
                let commit = Commit {
                    id: slot.id,
                    state,
                    positions: slot.positions.clone(),
                    inserts: recorded,
                    maybe: false,
                };
                self.model.state.committed(commit, sync);
            }
            Err(Error::Conflict { .. }) => {
                assert!(!read_only, "{}: a read-only commit conflicts", what());
                // Compaction moving an entry read is no conflict (it was, until reads were
                // validated by version: regressions/ops/tx-read-conflicts-after-compaction).
                if !state_conflict {
                    // Then a dedup key it inserts must have been recorded since.
                    match &inserts[..] {
                        [] => panic!("{}: nothing it checked or read has changed", what()),
                        [(key, _, _)] => self.model.observe(key, &what, |s| s.live(now)),
                        many => assert!(
                            many.iter().any(|(k, _, _)| self
                                .model
                                .states(k)
                                .iter()
                                .any(|s| s.live(now))),
                            "{}: no key it inserts can be live, nothing it read has changed",
                            what()
                        ),
                    }
                }
            }
            Err(e) => {
                self.allowed(e, &what());
                if read_only || writes_nothing || state_conflict {
                    return;
                }
                let mut recorded = Vec::new();
                for insert in &inserts {
                    if self.faulted {
                        self.tainted.insert(insert.0.clone());
                    }
                    let (key, new) = result(insert);
                    self.model.maybe(&key, new);
                    let count = self.model.write_counts[&key];
                    recorded.push((key, insert.2.clone(), now + insert.1, count));
                }
                self.model.state.failed(Commit {
                    id: slot.id,
                    state,
                    positions: slot.positions.clone(),
                    inserts: recorded,
                    maybe: true,
                });
            }
        }
    }

    fn store_get_state(&mut self, store: &Store, key: &[u8]) {
        match store.get_state(key) {
            Ok(got) => {
                let got = got.map(|v| v.to_vec());
                let worlds = self.model.state.worlds(self.spec.sync());
                assert!(
                    worlds.iter().any(|w| w.value(key) == got.as_deref()),
                    "step {}: get_state({}) answered {}, the model has {}",
                    self.step,
                    crate::show(key),
                    show_opt(got.as_deref()),
                    worlds
                        .iter()
                        .map(|w| show_opt(w.value(key)))
                        .collect::<Vec<_>>()
                        .join(" or ")
                );
            }
            Err(e) => self.allowed(&e, "get_state"),
        }
    }

    fn store_position(&mut self, store: &Store, source: &[u8]) {
        match store.position(source) {
            Ok(got) => {
                let worlds = self.model.state.worlds(self.spec.sync());
                assert!(
                    worlds
                        .iter()
                        .any(|w| w.positions.get(source).copied() == got),
                    "step {}: position({}) answered {got:?}, the model has {:?}",
                    self.step,
                    crate::show(source),
                    worlds
                        .iter()
                        .map(|w| w.positions.get(source))
                        .collect::<Vec<_>>()
                );
            }
            Err(e) => self.allowed(&e, "position"),
        }
    }

    /// `positions()`, `get_state` and `position` of every key and source, the stats' counts.
    pub(super) fn store_state(&mut self, store: &Store) {
        match store.positions() {
            Ok(got) => {
                let worlds = self.model.state.worlds(self.spec.sync());
                let fits = |w: &&World| {
                    got.len() == w.positions.len()
                        && got
                            .iter()
                            .zip(&w.positions)
                            .all(|((s, p), (ws, wp))| s == ws && p == wp)
                };
                assert!(
                    worlds.iter().any(fits),
                    "step {}: positions() answered {}, the model has {:?}",
                    self.step,
                    show_positions(&got),
                    worlds.iter().map(|w| &w.positions).collect::<Vec<_>>()
                );
            }
            Err(e) => self.allowed(&e, "positions"),
        }
        for key in state_keys() {
            self.store_get_state(store, &key);
        }
        for source in sources() {
            self.store_position(store, &source);
        }
        if !self.faulted && self.model.state.unknown.is_none() {
            let stats = store.stats();
            let world = &self.model.state.world;
            assert_eq!(
                (stats.state_entries, stats.positions),
                (world.state.len() as u64, world.positions.len() as u64),
                "step {}: stats (state_entries, positions)",
                self.step
            );
        }
    }

    /// What a freshly opened store answers about state (checked against its own stats).
    pub(super) fn state_snapshot(&self, store: &Store, what: &str) -> StateSnapshot {
        let fail = |e: Error| -> ! {
            panic!(
                "step {}: {what}: a state read failed on a fresh store: {e}",
                self.step
            )
        };
        let mut state = BTreeMap::new();
        for key in state_keys() {
            let got = store.get_state(&key).unwrap_or_else(|e| fail(e));
            state.insert(key, got.map(|v| v.to_vec()));
        }
        let positions = store.positions().unwrap_or_else(|e| fail(e));
        for source in sources() {
            let one = store.position(&source).unwrap_or_else(|e| fail(e));
            let listed = positions
                .iter()
                .find(|(s, _)| *s == source)
                .map(|(_, p)| *p);
            assert_eq!(
                one,
                listed,
                "step {}: {what}: position({}) and positions() disagree",
                self.step,
                crate::show(&source)
            );
        }
        let stats = store.stats();
        let entries = state.values().filter(|v| v.is_some()).count() as u64;
        assert_eq!(
            (stats.state_entries, stats.positions),
            (entries, positions.len() as u64),
            "step {}: {what}: stats (state_entries, positions) of a fresh store",
            self.step
        );
        StateSnapshot { state, positions }
    }

    /// After a reopen: the recovered state is checked (see [`check_recovered`]) and becomes the
    /// model's, durable.
    pub(super) fn state_recovered(
        &mut self,
        seen: &StateSnapshot,
        gets: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        label: &str,
    ) {
        let model = &mut self.model;
        check_recovered(
            &model.state,
            seen,
            gets,
            &model.write_counts,
            model.now,
            label,
        );
        let mut world = World::default();
        for (key, value) in &seen.state {
            if let Some(value) = value {
                model.state.version += 1;
                world
                    .state
                    .insert(key.clone(), (value.clone(), model.state.version));
            }
        }
        world.positions = seen.positions.iter().cloned().collect();
        model.state.world = world;
        model.state.unknown = None;
        model.state.pending.clear();
        model.state.durable();
    }
}

impl Harness {
    /// [`Harness::tx_step`] as one step of the run (numbered, traced with `IDEM_FUZZ_TRACE`).
    pub(super) fn tx_step_traced<'s>(&mut self, op: &TxOp, store: &'s Store, txs: &mut Slots<'s>) {
        if std::env::var_os("IDEM_FUZZ_TRACE").is_some() {
            eprintln!("step {}: {op:?} (now {})", self.step, self.model.now);
        }
        self.tx_step(op, store, txs);
        self.step += 1;
    }
}
