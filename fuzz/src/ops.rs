//! The `ops` target: an arbitrary sequence of operations run against a [`Store`] and against a
//! plain in-memory [`Model`]; every answer must be equal, across reopens too.
//!
//! Model semantics (README / FORMAT.md): an entry inserted at `now` with a TTL has the deadline
//! `now + ceil_ms(ttl)` and is live iff `now < deadline`; a live key keeps its first value; a
//! removal drops a live entry; expiry is decided from the store's clock, which only the
//! `Advance` op moves (a [`ManualClock`] advances by whole milliseconds, truncating).
//!
//! Adding an op kind (e.g. claim/complete, checkpoint): add a variant to [`Op`], its semantics
//! to [`Model`], and one arm to [`Harness::step`] that runs it on both and compares. The
//! arbitrary decoding of existing corpus entries shifts when variants are added; that only costs
//! a little corpus quality.

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use idem::{
    Claim, ClaimToken, Config, Durability, Error, ManualClock, Outcome, Store, MAX_KEY_BYTES,
    MAX_TTL,
};

/// Distinct keys the ops draw from: few, so keys collide, repeat, expire and come back.
pub const KEY_SPACE: u8 = 16;

/// The segment size used: the smallest allowed, so big values roll segments quickly.
pub const SEGMENT_SIZE: u32 = Config::MIN_SEGMENT_SIZE_BYTES;

/// Fill ops that run in one input; later ones do nothing.
pub const MAX_FILLS: u32 = 1;

/// Sweep ops that run in one input (each gets every key); later ones do nothing.
pub const MAX_SWEEPS: u32 = 8;

/// The whole input of one run.
#[derive(Arbitrary, Debug, Clone)]
pub struct OpsInput {
    /// How the store is first opened.
    pub config: StoreSpec,
    /// What is done to it.
    pub ops: Vec<Op>,
}

/// How a store is opened; a reopen may change every knob (none of them is persistent).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct StoreSpec {
    /// Durability mode.
    pub durability: DurabilitySpec,
    /// Which hash bits are kept: fewer bits, more collisions.
    pub mask: MaskSpec,
    /// Shards: 1 (every key in one table), 2, or the default.
    pub shards: ShardSpec,
    /// The smallest write buffer (4 KiB) instead of the default 1 MiB.
    pub small_write_buffer: bool,
    /// Runs the background maintenance thread (expiry, segment deletion, compaction,
    /// checkpoints) concurrently with the ops; otherwise only the `Maintain` op does that.
    pub background_maintenance: bool,
    /// Compacts eagerly (a segment is compacted when fewer than 90% of its records are live)
    /// instead of at the default 50%.
    pub eager_compaction: bool,
}

/// [`Durability`] without parameters.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DurabilitySpec {
    /// `Durability::Never`.
    Never,
    /// `Durability::Sync`.
    Sync,
    /// `Durability::Periodic(1 ms)`.
    Periodic,
}

/// The `hash_mask_for_testing` knob.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSpec {
    /// No masking (production).
    Full,
    /// Every key hashes alike: one shard, one tag, one probe run.
    Zero,
    /// Only 8 tag bits survive (`byte << 16`): few tags, home buckets anywhere in a small table
    /// (including the last slots, so probe runs wrap around).
    TagBits(u8),
}

/// The `shard_count` knob.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    /// One shard.
    One,
    /// Two shards.
    Two,
    /// The default (256).
    Default,
}

impl StoreSpec {
    /// The config this spec stands for, with `clock`.
    pub fn config(&self, clock: &ManualClock) -> Config {
        let mut config = Config::default()
            .durability(match self.durability {
                DurabilitySpec::Never => Durability::Never,
                DurabilitySpec::Sync => Durability::Sync,
                DurabilitySpec::Periodic => Durability::Periodic(Duration::from_millis(1)),
            })
            .clock(clock.clone())
            .segment_size_bytes(SEGMENT_SIZE)
            .background_maintenance(self.background_maintenance);
        if self.eager_compaction {
            config = config.compaction_live_ratio(0.9);
        }
        config = match self.mask {
            MaskSpec::Full => config,
            MaskSpec::Zero => config.hash_mask_for_testing(0),
            MaskSpec::TagBits(bits) => config.hash_mask_for_testing(u64::from(bits) << 16),
        };
        config = match self.shards {
            ShardSpec::One => config.shard_count(1),
            ShardSpec::Two => config.shard_count(2),
            ShardSpec::Default => config,
        };
        if self.small_write_buffer {
            config = config.write_buffer_bytes(0);
        }
        config
    }
}

/// One of [`KEY_SPACE`] keys.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub u8);

impl KeyId {
    /// The key's bytes: short keys that are prefixes of one another, a one-byte key, and two
    /// maximum-length keys that differ only in their last byte.
    pub fn bytes(self) -> Vec<u8> {
        match self.0 % KEY_SPACE {
            13 => vec![b'L'; MAX_KEY_BYTES],
            14 => {
                let mut key = vec![b'L'; MAX_KEY_BYTES];
                key[MAX_KEY_BYTES - 1] = b'M';
                key
            }
            15 => b"k".to_vec(),
            n => format!("key-{n}").into_bytes(),
        }
    }

    /// Every key of the key space.
    pub fn all() -> impl Iterator<Item = KeyId> {
        (0..KEY_SPACE).map(KeyId)
    }
}

/// TTLs: sub-millisecond ones (rounded up), around the second boundary (the index keeps
/// deadlines in rounded-up seconds), up to 10 s, and the maximum.
pub const TTLS: [Duration; 12] = [
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_micros(1500),
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(999),
    Duration::from_millis(1000),
    Duration::from_millis(1001),
    Duration::from_millis(2500),
    Duration::from_secs(10),
    Duration::from_millis(10_001),
    MAX_TTL,
];

/// One of [`TTLS`].
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct TtlId(pub u8);

impl TtlId {
    /// The TTL.
    pub fn duration(self) -> Duration {
        TTLS[usize::from(self.0) % TTLS.len()]
    }
}

/// Clock steps, around the TTLs above (a sub-millisecond step moves a `ManualClock` by 0).
pub const ADVANCES: [Duration; 12] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(9),
    Duration::from_millis(998),
    Duration::from_millis(999),
    Duration::from_millis(1000),
    Duration::from_millis(1001),
    Duration::from_millis(2000),
    Duration::from_secs(10),
    Duration::from_secs(11),
    Duration::from_secs(3600),
];

/// One of [`ADVANCES`].
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct AdvanceId(pub u8);

impl AdvanceId {
    /// The step.
    pub fn duration(self) -> Duration {
        ADVANCES[usize::from(self.0) % ADVANCES.len()]
    }
}

/// A value: short arbitrary bytes, or a big one (up to the limit) so segments roll.
#[derive(Arbitrary, Debug, Clone)]
pub enum ValueSpec {
    /// Up to 32 arbitrary bytes (possibly none).
    Small(Vec<u8>),
    /// A patterned value of 4 KiB, ~30 KiB, or exactly the 64 KiB limit.
    Big {
        /// Distinguishes big values from one another.
        fill: u8,
        /// Size class.
        size: u8,
    },
}

impl ValueSpec {
    /// The value's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            ValueSpec::Small(bytes) => bytes.iter().copied().take(32).collect(),
            ValueSpec::Big { fill, size } => {
                let len = [4096, 30_001, idem::MAX_VALUE_BYTES][usize::from(*size) % 3];
                (0..len)
                    .map(|i| fill.wrapping_add((i / 251) as u8))
                    .collect()
            }
        }
    }
}

/// One check-or-insert item.
#[derive(Arbitrary, Debug, Clone)]
pub struct Item {
    /// The key.
    pub key: KeyId,
    /// The TTL.
    pub ttl: TtlId,
    /// The value recorded if the key is new.
    pub value: ValueSpec,
}

/// Input that the store must reject without changing anything.
#[derive(Arbitrary, Debug, Clone)]
pub enum InvalidOp {
    /// `check_or_insert` with an empty key.
    EmptyKeyInsert,
    /// `get` with an empty key.
    EmptyKeyGet,
    /// `remove` with an empty key.
    EmptyKeyRemove,
    /// `check_or_insert` with a key one byte over the limit.
    LongKeyInsert,
    /// `get` with a key one byte over the limit.
    LongKeyGet,
    /// `remove` with a key one byte over the limit.
    LongKeyRemove,
    /// `check_or_insert` with a value one byte over the limit.
    LongValue(KeyId),
    /// `check_or_insert` with a zero TTL.
    ZeroTtl(KeyId),
    /// `check_or_insert` with a TTL just over [`MAX_TTL`].
    HugeTtl(KeyId),
    /// A batch of valid items with one bad item somewhere: nothing of it may be written.
    BatchWithBadItem {
        /// The valid items.
        items: Vec<Item>,
        /// Where the bad item goes.
        at: u8,
    },
}

/// One operation.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `check_or_insert`.
    CheckOrInsert(Item),
    /// `check_or_insert_batch` (up to 16 items).
    Batch(Vec<Item>),
    /// `get`.
    Get(KeyId),
    /// `remove`.
    Remove(KeyId),
    /// Moves the clock.
    Advance(AdvanceId),
    /// `flush`.
    Flush,
    /// `close`, then open again with (possibly) another config.
    Reopen(StoreSpec),
    /// Drop without `close`, then open again with the same config.
    DropReopen,
    /// Bad input.
    Invalid(InvalidOp),
    /// Inserts 17 fresh keys with values at the 64 KiB limit, past the 1 MiB segment size: the
    /// log rolls to a new segment (one batch, or one call per key). At most [`MAX_FILLS`] a run,
    /// and only without a colliding hash mask.
    Fill {
        /// As one batch.
        batch: bool,
        /// Their TTL.
        ttl: TtlId,
    },
    /// `get` of every key, and stats invariants. At most [`MAX_SWEEPS`] a run.
    Sweep,
    /// `maintain`: expiry, deletion of expired segments, compaction, a due checkpoint.
    Maintain,
    /// `checkpoint`: the next open starts from it.
    Checkpoint,
    /// `claim` with a lease.
    Claim {
        /// The key.
        key: KeyId,
        /// The lease.
        lease: TtlId,
    },
    /// `complete` of one of the tokens acquired so far (stale ones included).
    Complete {
        /// Which token (modulo their number).
        token: u8,
        /// The result's TTL.
        ttl: TtlId,
        /// The result.
        value: ValueSpec,
    },
    /// `release` of one of the tokens acquired so far.
    Release {
        /// Which token (modulo their number).
        token: u8,
    },
}

/// What the model answers to a check-or-insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The key was new or expired.
    Inserted,
    /// The key is live with this first value.
    Duplicate(Vec<u8>),
    /// The key is claimed (`Error::ClaimInFlight`).
    ClaimInFlight,
}

impl Answer {
    fn of(result: idem::Result<Outcome>) -> Answer {
        match result {
            Ok(outcome) => outcome.into(),
            Err(Error::ClaimInFlight { .. }) => Answer::ClaimInFlight,
            Err(error) => panic!("check_or_insert failed: {error}"),
        }
    }
}

/// What the model answers to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The key was free: the model's claim number.
    Acquired(u64),
    /// The key holds a result.
    Duplicate(Vec<u8>),
    /// The key is claimed until this deadline.
    InFlight(u64),
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Inserted => Answer::Inserted,
            Outcome::Duplicate(value) => Answer::Duplicate(value.into_vec()),
        }
    }
}

/// A model entry: a result, or a claim.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The first value (empty for a claim).
    pub value: Vec<u8>,
    /// Live iff `now < expires_at_millis` (for a claim: its lease end).
    pub expires_at_millis: u64,
    /// For a claim: the model's claim number (its tokens name it).
    pub claim: Option<u64>,
    /// For a claim: it was open when the store was last reopened (so it is in doubt).
    pub recovered: bool,
}

/// The reference: a map and a clock.
#[derive(Debug, Clone)]
pub struct Model {
    /// The model's time, in step with the store's [`ManualClock`].
    pub now_millis: u64,
    /// Entries, live or expired (expired ones are never answered).
    pub entries: HashMap<Vec<u8>, Entry>,
}

/// A TTL in whole milliseconds, rounded up (the documented rule).
pub fn ttl_millis(ttl: Duration) -> u64 {
    ttl.as_nanos().div_ceil(1_000_000) as u64
}

impl Model {
    /// An empty model at `now_millis`.
    pub fn new(now_millis: u64) -> Self {
        Model {
            now_millis,
            entries: HashMap::new(),
        }
    }

    /// The live entry of `key`.
    pub fn live(&self, key: &[u8]) -> Option<&Entry> {
        self.entries
            .get(key)
            .filter(|entry| self.now_millis < entry.expires_at_millis)
    }

    /// Live entries.
    pub fn live_count(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| self.now_millis < entry.expires_at_millis)
            .count()
    }

    /// Check-or-insert.
    pub fn check_or_insert(&mut self, key: &[u8], ttl: Duration, value: &[u8]) -> Answer {
        if let Some(entry) = self.live(key) {
            if entry.claim.is_some() {
                return Answer::ClaimInFlight;
            }
            return Answer::Duplicate(entry.value.clone());
        }
        let entry = Entry {
            value: value.to_vec(),
            expires_at_millis: self.now_millis + ttl_millis(ttl),
            claim: None,
            recovered: false,
        };
        self.entries.insert(key.to_vec(), entry);
        Answer::Inserted
    }

    /// A batch: the items in order, one clock reading. An item whose key is claimed fails the
    /// whole call, and then nothing of it is recorded (the fix of
    /// `regressions/ops/batch-claim-in-flight-keeps-prefix`).
    pub fn check_or_insert_batch(
        &mut self,
        items: &[(Vec<u8>, Duration, Vec<u8>)],
    ) -> Result<Vec<Answer>, Answer> {
        let before = self.entries.clone();
        let mut answers = Vec::with_capacity(items.len());
        for (key, ttl, value) in items {
            match self.check_or_insert(key, *ttl, value) {
                Answer::ClaimInFlight => {
                    self.entries = before;
                    return Err(Answer::ClaimInFlight);
                }
                answer => answers.push(answer),
            }
        }
        Ok(answers)
    }

    /// The live value of `key` (a claim has none).
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.live(key)
            .filter(|entry| entry.claim.is_none())
            .map(|entry| entry.value.clone())
    }

    /// Claims `key` for `lease`; a new claim gets the number `number`.
    pub fn claim(&mut self, key: &[u8], lease: Duration, number: u64) -> ClaimAnswer {
        if let Some(entry) = self.live(key) {
            return match entry.claim {
                Some(_) => ClaimAnswer::InFlight(entry.expires_at_millis),
                None => ClaimAnswer::Duplicate(entry.value.clone()),
            };
        }
        let entry = Entry {
            value: Vec::new(),
            expires_at_millis: self.now_millis + ttl_millis(lease),
            claim: Some(number),
            recovered: false,
        };
        self.entries.insert(key.to_vec(), entry);
        ClaimAnswer::Acquired(number)
    }

    /// Whether claim `number` of `key` still holds it (live, not replaced).
    fn holds(&self, key: &[u8], number: u64) -> bool {
        self.live(key)
            .is_some_and(|entry| entry.claim == Some(number))
    }

    /// Completes claim `number`: the result replaces it. False: stale, nothing changes.
    pub fn complete(&mut self, key: &[u8], number: u64, ttl: Duration, value: &[u8]) -> bool {
        if !self.holds(key, number) {
            return false;
        }
        let entry = Entry {
            value: value.to_vec(),
            expires_at_millis: self.now_millis + ttl_millis(ttl),
            claim: None,
            recovered: false,
        };
        self.entries.insert(key.to_vec(), entry);
        true
    }

    /// Releases claim `number`: the key is free. False: stale, nothing changes.
    pub fn release(&mut self, key: &[u8], number: u64) -> bool {
        if !self.holds(key, number) {
            return false;
        }
        self.entries.remove(key);
        true
    }

    /// Keys of the claims in doubt: open at the last reopen, live, not replaced since.
    pub fn in_doubt(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .entries
            .iter()
            .filter(|(_, entry)| {
                entry.recovered
                    && entry.claim.is_some()
                    && self.now_millis < entry.expires_at_millis
            })
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// A reopen: every live claim is now in doubt.
    pub fn reopened(&mut self) {
        let now = self.now_millis;
        for entry in self.entries.values_mut() {
            if entry.claim.is_some() && now < entry.expires_at_millis {
                entry.recovered = true;
            }
        }
    }

    /// Removes a live entry; whether there was one.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let live = self.live(key).is_some();
        self.entries.remove(key);
        live
    }

    /// Moves the clock as `ManualClock::advance` does (whole milliseconds, truncated).
    pub fn advance(&mut self, by: Duration) {
        self.now_millis += by.as_millis() as u64;
    }
}

/// A store, its model, and the directory and clock they share.
pub struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    spec: StoreSpec,
    store: Option<Store>,
    /// The reference.
    pub model: Model,
    /// Index of the op being run, for messages.
    step: usize,
    /// Fill ops so far (their keys are fresh).
    fills: u32,
    /// Sweep ops so far.
    sweeps: u32,
    /// Tokens acquired so far, with the model's number of each claim.
    tokens: Vec<(ClaimToken, u64)>,
}

impl Harness {
    /// Opens a fresh store in a scratch directory.
    pub fn new(spec: StoreSpec) -> Self {
        let clock = ManualClock::new();
        let model = Model::new(ManualClock::DEFAULT_START_MILLIS);
        let mut harness = Harness {
            dir: crate::scratch_dir(),
            clock,
            spec,
            store: None,
            model,
            step: 0,
            fills: 0,
            sweeps: 0,
            tokens: Vec::new(),
        };
        harness.open();
        harness
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open between ops")
    }

    fn open(&mut self) {
        let config = self.spec.config(&self.clock);
        let store = Store::open_with(self.dir.path(), config)
            .unwrap_or_else(|e| panic!("step {}: opening the store failed: {e}", self.step));
        let report = store.recovery_report();
        assert_eq!(
            report.truncated_tail, None,
            "step {}: a cleanly closed store had a torn tail",
            self.step
        );
        assert_eq!(
            report.removed_empty_segment, None,
            "step {}: a cleanly closed store had a torn segment",
            self.step
        );
        self.store = Some(store);
        self.model.reopened();
        self.check_in_doubt();
    }

    fn check_in_doubt(&self) {
        let got: Vec<Vec<u8>> = self
            .store()
            .in_doubt()
            .expect("in_doubt")
            .iter()
            .map(|token| token.key().to_vec())
            .collect();
        assert_eq!(got, self.model.in_doubt(), "step {}: in_doubt", self.step);
    }

    /// Runs one op on store and model and compares the answers.
    pub fn step(&mut self, op: &Op) {
        match op {
            Op::CheckOrInsert(item) => self.check_or_insert(item),
            Op::Batch(items) => self.batch(&items[..items.len().min(16)]),
            Op::Get(key) => self.get(&key.bytes()),
            Op::Remove(key) => {
                let key = key.bytes();
                let got = self.store().remove(&key).expect("remove");
                let want = self.model.remove(&key);
                assert_eq!(
                    got,
                    want,
                    "step {}: remove({})",
                    self.step,
                    crate::show(&key)
                );
            }
            Op::Advance(by) => {
                let by = by.duration();
                self.clock.advance(by);
                self.model.advance(by);
            }
            Op::Flush => self.store().flush().expect("flush"),
            Op::Reopen(spec) => {
                let store = self.store.take().expect("open");
                store.close().expect("close");
                let same_index = (self.spec.mask, self.spec.shards) == (spec.mask, spec.shards);
                self.spec = *spec;
                self.open();
                // close wrote a checkpoint; it fits an index of the same shape.
                let ignored = &self.store().recovery_report().checkpoint_ignored;
                assert!(
                    !same_index || ignored.is_none(),
                    "step {}: the checkpoint written at close was ignored: {ignored:?}",
                    self.step
                );
            }
            Op::DropReopen => {
                drop(self.store.take());
                self.open();
            }
            Op::Invalid(invalid) => self.invalid(invalid),
            Op::Fill { batch, ttl } => self.fill(*batch, ttl.duration()),
            Op::Maintain => {
                self.store().maintain().expect("maintain");
            }
            Op::Checkpoint => self.store().checkpoint().expect("checkpoint"),
            Op::Claim { key, lease } => self.claim(&key.bytes(), lease.duration()),
            Op::Complete { token, ttl, value } => {
                self.resolve(*token, Some((ttl.duration(), value.bytes())))
            }
            Op::Release { token } => self.resolve(*token, None),
            Op::Sweep => {
                if self.sweeps < MAX_SWEEPS {
                    self.sweeps += 1;
                    self.sweep(false);
                }
            }
        }
        self.step += 1;
    }

    fn check_or_insert(&mut self, item: &Item) {
        let (key, ttl, value) = (item.key.bytes(), item.ttl.duration(), item.value.bytes());
        let got = Answer::of(self.store().check_or_insert(&key, ttl, &value));
        let want = self.model.check_or_insert(&key, ttl, &value);
        same(&got, &want, || {
            format!(
                "step {}: check_or_insert({}, {ttl:?})",
                self.step,
                crate::show(&key)
            )
        });
        assert_eq!(
            got,
            want,
            "step {}: check_or_insert({}, {ttl:?})",
            self.step,
            crate::show(&key)
        );
    }

    fn batch(&mut self, items: &[Item]) {
        let owned: Vec<(Vec<u8>, Duration, Vec<u8>)> = items
            .iter()
            .map(|item| (item.key.bytes(), item.ttl.duration(), item.value.bytes()))
            .collect();
        let got = match self.store().check_or_insert_batch(&owned) {
            Ok(outcomes) => Ok(outcomes.into_iter().map(Answer::from).collect()),
            Err(Error::ClaimInFlight { .. }) => Err(Answer::ClaimInFlight),
            Err(error) => panic!("step {}: batch failed: {error}", self.step),
        };
        let want = self.model.check_or_insert_batch(&owned);
        same(&got, &want, || {
            format!("step {}: batch of {}", self.step, owned.len())
        });
    }

    fn claim(&mut self, key: &[u8], lease: Duration) {
        let number = self.tokens.len() as u64;
        let got = self.store().claim(key, lease).expect("claim");
        let want = self.model.claim(key, lease, number);
        match (got, want) {
            (Claim::Acquired(token), ClaimAnswer::Acquired(number)) => {
                assert_eq!(token.key(), key);
                let until = self.model.live(key).expect("claimed").expires_at_millis;
                assert_eq!(
                    token.lease_until(),
                    system_time(until),
                    "step {}",
                    self.step
                );
                self.tokens.push((token, number));
            }
            (Claim::Duplicate(value), ClaimAnswer::Duplicate(want)) => {
                assert_eq!(value.as_ref(), &want[..], "step {}: claim", self.step)
            }
            (Claim::InFlight { until }, ClaimAnswer::InFlight(want)) => {
                assert_eq!(until, system_time(want), "step {}: claim", self.step)
            }
            (got, want) => panic!(
                "step {}: claim({}) answered {got:?}, the model {want:?}",
                self.step,
                crate::show(key)
            ),
        }
    }

    /// Completes (with a result) or releases one of the tokens acquired so far.
    fn resolve(&mut self, token: u8, result: Option<(Duration, Vec<u8>)>) {
        if self.tokens.is_empty() {
            return;
        }
        let (token, number) = self.tokens[usize::from(token) % self.tokens.len()].clone();
        let key = token.key().to_vec();
        let (got, want) = match &result {
            Some((ttl, value)) => (
                self.store().complete(token, *ttl, value),
                self.model.complete(&key, number, *ttl, value),
            ),
            None => (
                self.store().release(token),
                self.model.release(&key, number),
            ),
        };
        match got {
            Ok(()) => assert!(want, "step {}: a stale token resolved", self.step),
            Err(Error::StaleClaim { reason }) => assert!(
                !want,
                "step {}: a holding token was called stale: {reason}",
                self.step
            ),
            Err(error) => panic!("step {}: resolving a claim failed: {error}", self.step),
        }
    }

    fn fill(&mut self, batch: bool, ttl: Duration) {
        // Each fill writes 1.1 MiB: a few per run are enough to roll segments and keep the
        // target fast.
        // One fill rolls the log. More, or fills under a colliding hash mask, would slow runs
        // down: there a probe reads and checksums the whole 64 KiB record of every key sharing
        // its tag.
        if self.fills >= MAX_FILLS || !matches!(self.spec.mask, MaskSpec::Full) {
            return;
        }
        self.fills += 1;
        let owned: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..17u8)
            .map(|i| {
                let key = format!("fill-{}-{i}", self.fills).into_bytes();
                let fill = i.wrapping_add(self.fills as u8);
                (key, ttl, ValueSpec::Big { fill, size: 2 }.bytes())
            })
            .collect();
        let got: Vec<Answer> = if batch {
            self.store()
                .check_or_insert_batch(&owned)
                .expect("check_or_insert_batch (fill keys are never claimed)")
                .into_iter()
                .map(Answer::from)
                .collect()
        } else {
            owned
                .iter()
                .map(|(key, ttl, value)| Answer::of(self.store().check_or_insert(key, *ttl, value)))
                .collect()
        };
        for ((key, ttl, value), got) in owned.iter().zip(got) {
            let want = self.model.check_or_insert(key, *ttl, value);
            same(&got, &want, || {
                format!("step {}: fill {}", self.step, crate::show(key))
            });
        }
    }

    fn get(&self, key: &[u8]) {
        let got = self.store().get(key).expect("get").map(|v| v.into_vec());
        let want = self.model.get(key);
        same(&got, &want, || {
            format!("step {}: get({})", self.step, crate::show(key))
        });
    }

    fn invalid(&mut self, op: &InvalidOp) {
        let store = self.store.as_ref().expect("open");
        let long_key = vec![b'x'; MAX_KEY_BYTES + 1];
        let ttl = Duration::from_secs(1);
        let error = match op {
            InvalidOp::EmptyKeyInsert => store.check_or_insert(b"", ttl, b"v").err(),
            InvalidOp::EmptyKeyGet => store.get(b"").err(),
            InvalidOp::EmptyKeyRemove => store.remove(b"").err(),
            InvalidOp::LongKeyInsert => store.check_or_insert(&long_key, ttl, b"v").err(),
            InvalidOp::LongKeyGet => store.get(&long_key).err(),
            InvalidOp::LongKeyRemove => store.remove(&long_key).err(),
            InvalidOp::LongValue(key) => {
                let value = vec![7u8; idem::MAX_VALUE_BYTES + 1];
                store.check_or_insert(&key.bytes(), ttl, &value).err()
            }
            InvalidOp::ZeroTtl(key) => store
                .check_or_insert(&key.bytes(), Duration::ZERO, b"v")
                .err(),
            InvalidOp::HugeTtl(key) => {
                let huge = MAX_TTL + Duration::from_nanos(1);
                store.check_or_insert(&key.bytes(), huge, b"v").err()
            }
            InvalidOp::BatchWithBadItem { items, at } => {
                let mut owned: Vec<(Vec<u8>, Duration, Vec<u8>)> = items
                    .iter()
                    .take(16)
                    .map(|item| (item.key.bytes(), item.ttl.duration(), item.value.bytes()))
                    .collect();
                let at = usize::from(*at) % (owned.len() + 1);
                owned.insert(at, (b"bad".to_vec(), Duration::ZERO, b"v".to_vec()));
                store.check_or_insert_batch(&owned).err()
            }
        };
        let error = error.unwrap_or_else(|| panic!("step {}: {op:?} was accepted", self.step));
        let expected_kind = match op {
            InvalidOp::EmptyKeyInsert | InvalidOp::EmptyKeyGet | InvalidOp::EmptyKeyRemove => {
                matches!(error, Error::EmptyKey)
            }
            InvalidOp::LongKeyInsert | InvalidOp::LongKeyGet | InvalidOp::LongKeyRemove => {
                matches!(error, Error::KeyTooLarge { len, max } if len == MAX_KEY_BYTES + 1 && max == MAX_KEY_BYTES)
            }
            InvalidOp::LongValue(_) => matches!(error, Error::ValueTooLarge { .. }),
            InvalidOp::ZeroTtl(_) | InvalidOp::BatchWithBadItem { .. } => {
                matches!(error, Error::ZeroTtl)
            }
            InvalidOp::HugeTtl(_) => matches!(error, Error::TtlTooLarge { .. }),
        };
        assert!(
            expected_kind,
            "step {}: {op:?} failed with the wrong error: {error:?}",
            self.step
        );
        // The model is unchanged; the next ops (and the final sweep) check the store is too.
    }

    /// Gets every key of the key space (and with `fills`, every key of the model: the fill keys
    /// hold 64 KiB each, so only the final sweeps read them all), and checks the stats.
    pub fn sweep(&self, fills: bool) {
        for key in KeyId::all() {
            self.get(&key.bytes());
        }
        if fills {
            for key in self.model.entries.keys() {
                self.get(key);
            }
        }
        self.check_in_doubt();
        let stats = self.store().stats();
        assert!(
            stats.live_keys >= self.model.live_count() as u64,
            "step {}: stats count {} index entries, the model has {} live keys",
            self.step,
            stats.live_keys,
            self.model.live_count()
        );
        assert!(stats.segments >= 1);
    }

    /// The end of a run: a sweep, a clean close and reopen, another sweep, a close.
    pub fn finish(mut self) {
        self.sweep(true);
        let store = self.store.take().expect("open");
        store.close().expect("close");
        self.open();
        self.sweep(true);
        let store = self.store.take().expect("open");
        store.close().expect("close");
    }
}

/// Asserts `got == want`, printing long byte strings shortened.
fn same<T: PartialEq + std::fmt::Debug>(got: &T, want: &T, what: impl FnOnce() -> String) {
    if got != want {
        let short = |text: String| {
            if text.len() > 600 {
                let head: String = text.chars().take(600).collect();
                format!("{head}…({} chars)", text.len())
            } else {
                text
            }
        };
        panic!(
            "{}\n  store: {}\n  model: {}",
            what(),
            short(format!("{got:?}")),
            short(format!("{want:?}"))
        );
    }
}

fn system_time(millis: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(millis)
}

/// Runs one input.
pub fn run(input: &OpsInput) {
    let mut harness = Harness::new(input.config);
    for op in input.ops.iter().take(256) {
        harness.step(op);
    }
    harness.finish();
}
