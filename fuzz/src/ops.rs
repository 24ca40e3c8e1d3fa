//! The `ops` target: an arbitrary sequence of operations run against a [`Store`] on a simulated
//! disk ([`SimStorage`]) and against a [`Model`] that keeps, for every key, the set of states it
//! may be in; every answer must fit one of them, across reopens and power losses.
//!
//! Semantics modelled (README / FORMAT.md, and issue #9):
//! - an entry inserted at `now` with a TTL has the deadline `now + ceil_ms(ttl)` and is live iff
//!   `now < deadline`; a live key keeps its first value; a removal drops a live entry (a result
//!   or a claim); a claim occupies its key until its lease ends; `complete` replaces the claim by
//!   its result for the result's TTL (shorter or longer than the lease), `release` frees the key;
//!   claims open at a reopen are in doubt until resolved or their lease ends; a fingerprinted
//!   call on a key recorded with another non-empty fingerprint fails with `FingerprintMismatch`
//!   (checked before the claim check);
//! - `check_or_insert_with` runs its closure only when the key is absent: never on a claimed key;
//! - a batch that fails records nothing;
//! - power loss (`SimStorage::crash`): in `Sync` mode every acknowledged write survives; in
//!   `Never`/`Periodic` mode a key may be in any state it took since the last successful
//!   `flush`/`close`/power loss (the log is a prefix, per key this is "any of those states");
//! - every reopen is differential: the store is opened with its checkpoint, every key's answer
//!   and `in_doubt()` are recorded, the store is dropped, the checkpoint deleted, and the store
//!   opened again from a full replay: both must agree with each other and with the model;
//! - no error is allowed unless a fault was injected; with every fsync failing (the `FailSync`
//!   op), a `Sync` store must not acknowledge, or answer from, any record written after it.
//!
//! The input is a compact byte format (see [`decode`] and [`encode`]) so that seeds can be
//! written by hand (`examples/gen_seeds.rs`) and libFuzzer's byte mutations stay meaningful.
//!
//! Transactions (tags 242-255, [`tx`]) run in sessions: the store is shared with up to two open
//! transactions from one op that needs the store to itself (a reopen, a power loss) to the next.
//!
//! Adding an op kind: add a variant to [`Op`] with its tag in [`decode`]/[`encode`], and one arm
//! in [`Harness::step`] that runs it on the store and checks the answer against the model.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use idem::sim::{Faults, SimStorage, Storage};
use idem::{
    Claim, ClaimToken, Config, Durability, Error, ManualClock, Outcome, Store, WithError,
    MAX_KEY_BYTES, MAX_TTL,
};

/// Distinct keys the ops draw from: few, so keys collide, repeat, expire and come back.
pub const KEY_SPACE: u8 = 16;

/// Fill ops that run in one input; later ones do nothing.
pub const MAX_FILLS: u32 = 6;

/// Sweep ops that run in one input (each gets every key); later ones do nothing.
pub const MAX_SWEEPS: u32 = 8;

/// Ops run per input; later ones are ignored.
pub const MAX_OPS: usize = 400;

/// Power losses and reopens per input (each does two opens); later ones do nothing.
pub const MAX_REOPENS: u32 = 24;

/// Where the simulated store lives.
pub const DIR: &str = "/sim/store";

/// The checkpoint file (FORMAT.md).
pub const CHECKPOINT: &str = "checkpoint.idem";

/// Segment sizes: tiny ones, so rolls, compaction and deletion happen after a few records.
pub const SEGMENT_SIZES: [u32; 4] = [4096, 6144, 16 << 10, 1 << 20];

/// The whole input of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsInput {
    /// How the store is first opened.
    pub config: StoreSpec,
    /// Seed of the simulated disk (which unsynced bytes survive a power loss).
    pub seed: u8,
    /// What is done to it.
    pub ops: Vec<Op>,
}

/// How a store is opened; a reopen may change every knob (none of them is persistent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSpec {
    /// Durability mode.
    pub durability: DurabilitySpec,
    /// Compacts eagerly (below 90% live records) instead of at the default 50%.
    pub eager_compaction: bool,
    /// Runs the background maintenance thread concurrently with the ops.
    pub background_maintenance: bool,
    /// The smallest write buffer (4 KiB) instead of the default 1 MiB.
    pub small_write_buffer: bool,
    /// Writes a checkpoint at every maintenance round that follows 4 KiB of appends; with the
    /// larger segment sizes (indices 2 and 3), a delta checkpoint after every 1 KiB between
    /// them.
    pub frequent_checkpoints: bool,
    /// Shards: 1, 2, or the default.
    pub shards: ShardSpec,
    /// Which hash bits are kept: fewer bits, more collisions.
    pub mask: MaskSpec,
    /// Index into [`SEGMENT_SIZES`].
    pub segment_size: u8,
}

/// [`Durability`] without parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilitySpec {
    /// `Durability::Never`.
    Never,
    /// `Durability::Sync`.
    Sync,
    /// `Durability::Periodic(1 ms)`.
    Periodic,
}

/// The `hash_mask_for_testing` knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSpec {
    /// No masking (production).
    Full,
    /// Every key hashes alike: one shard, one tag, one probe run.
    Zero,
    /// Only 4 tag bits survive (`nibble << 20`).
    TagBits(u8),
}

/// The `shard_count` knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSpec {
    /// One shard.
    One,
    /// Two shards.
    Two,
    /// The default (256).
    Default,
}

impl StoreSpec {
    /// Decodes a spec from its two bytes.
    pub fn from_bytes(flags: u8, sizes: u8) -> StoreSpec {
        StoreSpec {
            durability: match flags & 3 {
                0 => DurabilitySpec::Never,
                2 => DurabilitySpec::Periodic,
                _ => DurabilitySpec::Sync,
            },
            eager_compaction: flags & 4 != 0,
            background_maintenance: flags & 8 != 0,
            small_write_buffer: flags & 16 != 0,
            frequent_checkpoints: flags & 32 != 0,
            shards: match flags >> 6 {
                0 => ShardSpec::One,
                1 => ShardSpec::Two,
                _ => ShardSpec::Default,
            },
            mask: match (sizes >> 2) & 3 {
                2 => MaskSpec::Zero,
                3 => MaskSpec::TagBits(sizes >> 4),
                _ => MaskSpec::Full,
            },
            segment_size: sizes & 3,
        }
    }

    /// The two bytes [`StoreSpec::from_bytes`] decodes into this spec.
    pub fn to_bytes(self) -> [u8; 2] {
        let flags = match self.durability {
            DurabilitySpec::Never => 0,
            DurabilitySpec::Sync => 1,
            DurabilitySpec::Periodic => 2,
        } | u8::from(self.eager_compaction) << 2
            | u8::from(self.background_maintenance) << 3
            | u8::from(self.small_write_buffer) << 4
            | u8::from(self.frequent_checkpoints) << 5
            | match self.shards {
                ShardSpec::One => 0,
                ShardSpec::Two => 1 << 6,
                ShardSpec::Default => 2 << 6,
            };
        let sizes = (self.segment_size & 3)
            | match self.mask {
                MaskSpec::Full => 0,
                MaskSpec::Zero => 2 << 2,
                MaskSpec::TagBits(bits) => 3 << 2 | (bits & 15) << 4,
            };
        [flags, sizes]
    }

    /// A plain spec: `durability`, no background thread, one shard, the smallest segments.
    pub fn plain(durability: DurabilitySpec) -> StoreSpec {
        StoreSpec {
            durability,
            eager_compaction: false,
            background_maintenance: false,
            small_write_buffer: false,
            frequent_checkpoints: false,
            shards: ShardSpec::One,
            mask: MaskSpec::Full,
            segment_size: 0,
        }
    }

    /// Whether acknowledged writes are durable.
    pub fn sync(&self) -> bool {
        self.durability == DurabilitySpec::Sync
    }

    /// The config this spec stands for, with `clock` and the view of `storage` of the process
    /// running now ([`SimStorage::process`]: a store kept alive past a crash, by a transaction
    /// session say, changes nothing on the disk after it).
    pub fn config(&self, clock: &ManualClock, storage: &SimStorage) -> Config {
        let mut config = Config::default()
            .durability(match self.durability {
                DurabilitySpec::Never => Durability::Never,
                DurabilitySpec::Sync => Durability::Sync,
                DurabilitySpec::Periodic => Durability::Periodic(Duration::from_millis(1)),
            })
            .clock(clock.clone())
            .storage(storage.process())
            .segment_size_bytes_for_testing(SEGMENT_SIZES[usize::from(self.segment_size & 3)])
            .background_maintenance(self.background_maintenance)
            .checkpoint_every_bytes(if self.frequent_checkpoints { 4096 } else { 0 });
        if self.frequent_checkpoints && self.segment_size & 2 != 0 {
            // Deltas without a bit of their own either: the spec's bytes keep their meaning
            // for the other knobs, and half the checkpointing specs write chains.
            config = config.checkpoint_delta_every_bytes(1024);
        }
        if self.segment_size & 1 == 1 {
            // Every segment replayed by two threads (by default only long stretches are; with
            // one shard there is nothing to share): half the segment sizes, no bit of its own,
            // so the spec's two bytes stay as they are.
            config = config.parallel_replay_min_bytes_for_testing(0);
        }
        if self.small_write_buffer {
            // Segments replayed through reads, not maps (the simulated disk maps files): the
            // answers must not depend on it. No bit of its own either: half the specs.
            config = config.map_segments_at_open(false);
        }
        if self.eager_compaction {
            config = config.compaction_live_ratio(0.9);
        }
        config = match self.mask {
            MaskSpec::Full => config,
            MaskSpec::Zero => config.hash_mask_for_testing(0),
            MaskSpec::TagBits(bits) => config.hash_mask_for_testing(u64::from(bits & 15) << 20),
        };
        config = match self.shards {
            ShardSpec::One => config.shard_count(1),
            // With the appends sent through the lanes in turn, so that one thread's inserts go
            // through chunks, padding and fences as several threads' would (see `log`). No bit
            // of its own either: the specs with two shards.
            ShardSpec::Two => config.shard_count(2).rotate_append_lanes_for_testing(true),
            ShardSpec::Default => config,
        };
        if self.small_write_buffer {
            config = config.write_buffer_bytes(0);
        }
        config
    }
}

/// One of [`KEY_SPACE`] keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// TTLs and leases: sub-millisecond ones (rounded up), around the second boundary (the index
/// keeps deadlines in rounded-up seconds), a minute, an hour, 10 hours, a day, and the maximum.
pub const TTLS: [Duration; 16] = [
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_micros(1500),
    Duration::from_millis(10),
    Duration::from_millis(999),
    Duration::from_millis(1000),
    Duration::from_millis(1001),
    Duration::from_millis(2500),
    Duration::from_secs(10),
    Duration::from_millis(10_001),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(24 * 3600),
    MAX_TTL,
];

/// Index of a TTL in [`TTLS`].
pub mod ttl {
    /// 1 ns.
    pub const NANO: u8 = 0;
    /// 1 s.
    pub const SECOND: u8 = 5;
    /// 10 s.
    pub const TEN_SECONDS: u8 = 8;
    /// 60 s.
    pub const MINUTE: u8 = 10;
    /// 5 min.
    pub const FIVE_MINUTES: u8 = 11;
    /// 1 h.
    pub const HOUR: u8 = 12;
    /// 10 h.
    pub const TEN_HOURS: u8 = 13;
    /// 1 day.
    pub const DAY: u8 = 14;
}

fn ttl_of(id: u8) -> Duration {
    TTLS[usize::from(id) % TTLS.len()]
}

/// Clock steps, around the TTLs above, and big jumps (a sub-millisecond step moves a
/// `ManualClock` by 0).
pub const ADVANCES: [Duration; 16] = [
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(9),
    Duration::from_millis(999),
    Duration::from_millis(1000),
    Duration::from_millis(1001),
    Duration::from_millis(2000),
    Duration::from_secs(10),
    Duration::from_secs(11),
    Duration::from_secs(61),
    Duration::from_secs(301),
    Duration::from_secs(3601),
    Duration::from_secs(10 * 3600 + 1),
    Duration::from_secs(2 * 24 * 3600),
    Duration::from_secs(11 * 365 * 24 * 3600),
];

/// Index of a step in [`ADVANCES`].
pub mod advance {
    /// 2 s.
    pub const TWO_SECONDS: u8 = 7;
    /// 61 s.
    pub const MINUTE: u8 = 10;
    /// 3601 s.
    pub const HOUR: u8 = 12;
    /// 10 h 1 s.
    pub const TEN_HOURS: u8 = 13;
}

fn advance_of(id: u8) -> Duration {
    ADVANCES[usize::from(id) % ADVANCES.len()]
}

/// A value from one byte: `0..0xF0` small distinct values (`v<n>`, padded to up to 28 bytes),
/// `0xF0..` big ones of 1000 B, 4 KiB, ~30 KiB or exactly the 64 KiB limit.
pub fn value_of(spec: u8) -> Vec<u8> {
    if spec < 0xF0 {
        let mut value = format!("v{spec}").into_bytes();
        value.resize(value.len() + usize::from(spec % 5) * 6, b'.');
        return value;
    }
    let len = [1000, 4096, 30_001, idem::MAX_VALUE_BYTES][usize::from(spec & 3)];
    (0..len)
        .map(|i| spec.wrapping_add((i / 251) as u8))
        .collect()
}

/// A fingerprint from one byte: 0 none (the plain API), else one of three.
pub fn fingerprint_of(spec: u8) -> Option<Vec<u8>> {
    match spec % 4 {
        0 => None,
        n => Some(vec![b'f', n]),
    }
}

/// One check-or-insert item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: u8,
    /// Index into [`TTLS`].
    pub ttl: u8,
    /// See [`value_of`].
    pub value: u8,
}

/// Input that the store must reject without changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidOp {
    /// An empty key (insert, get, remove, claim by `aux`).
    EmptyKey,
    /// A key one byte over the limit (insert, get, remove, claim by `aux`).
    LongKey,
    /// `check_or_insert` with a value one byte over the limit.
    LongValue,
    /// `check_or_insert` with a zero TTL.
    ZeroTtl,
    /// `check_or_insert` with a TTL just over [`MAX_TTL`].
    HugeTtl,
    /// A batch of valid items with one with a zero TTL: nothing of it may be written.
    BatchWithBadItem,
    /// A fingerprint over the limit.
    LongFingerprint,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `check_or_insert` (plain, or fingerprinted with `fp != 0`).
    CheckOrInsert {
        /// The item.
        item: Item,
        /// See [`fingerprint_of`].
        fp: u8,
    },
    /// `check_or_insert_batch` (1 to 8 items).
    Batch(Vec<Item>),
    /// `get`.
    Get(u8),
    /// `remove`.
    Remove(u8),
    /// Moves the clock by one of [`ADVANCES`].
    Advance(u8),
    /// `flush`.
    Flush,
    /// `close`, then a differential reopen with (possibly) another config.
    Reopen(StoreSpec),
    /// Drop without `close` (a process crash, the disk keeps every write), differential reopen.
    DropReopen,
    /// Power loss: `SimStorage::crash`, drop, differential reopen.
    PowerLoss,
    /// Bad input.
    Invalid {
        /// What is wrong.
        kind: InvalidOp,
        /// A valid key used with it.
        key: u8,
        /// Which call.
        aux: u8,
    },
    /// Inserts 8 fresh keys with 1000-byte values (segments roll). At most [`MAX_FILLS`].
    Fill {
        /// As one batch.
        batch: bool,
        /// Their TTL (index into [`TTLS`]).
        ttl: u8,
    },
    /// `get` of every key, `in_doubt`, stats. At most [`MAX_SWEEPS`] a run.
    Sweep,
    /// `maintain`: expiry, deletion of expired segments, compaction, a due checkpoint.
    Maintain,
    /// `checkpoint`.
    Checkpoint,
    /// `claim` (or `claim_fingerprinted`).
    Claim {
        /// The key.
        key: u8,
        /// The lease (index into [`TTLS`]).
        lease: u8,
        /// See [`fingerprint_of`].
        fp: u8,
    },
    /// `complete` of one of the tokens acquired so far (stale ones included).
    Complete {
        /// Which token (modulo their number).
        token: u8,
        /// The result's TTL (index into [`TTLS`]).
        ttl: u8,
        /// See [`value_of`].
        value: u8,
    },
    /// `release` of one of the tokens acquired so far.
    Release {
        /// Which token (modulo their number).
        token: u8,
    },
    /// `check_or_insert_with`: the closure may run only if the key is absent.
    With(Item),
    /// From now until the process ends, every fsync fails.
    FailSync,
    /// `in_doubt`.
    InDoubt,
    /// A clock step and `maintain`, twice (expiry, then deletion/compaction of what expired).
    AdvanceMaintain(u8),
    /// `check_or_insert_with` by a second thread whose closure waits while this thread's call
    /// of the same key waits for it: the waiter must get the leader's value, or its error.
    WithRace(Item),
    /// A transaction op, or a read of state and positions (tag bytes 242-255).
    Tx(tx::TxOp),
}

impl Op {
    /// Whether the op needs the store to itself (it ends the transaction session).
    pub fn owns_store(&self) -> bool {
        matches!(self, Op::Reopen(_) | Op::DropReopen | Op::PowerLoss)
    }
}

pub mod tx;

/// Op tags of the byte format below [`tx::FIRST_TAG`] (a tag byte `t` there is `t % TAGS`, as
/// before transactions existed, so older inputs keep their meaning).
const TAGS: u8 = 22;

/// Decodes an input: two config bytes, a seed byte, then ops (a tag byte and its arguments);
/// an op cut short by the end of the input is dropped. Tag bytes from [`tx::FIRST_TAG`] up are
/// transaction ops ([`tx::decode`]).
pub fn decode(bytes: &[u8]) -> OpsInput {
    let mut at = 0;
    let mut next = || {
        let byte = bytes.get(at).copied();
        at += 1;
        byte
    };
    let config = StoreSpec::from_bytes(next().unwrap_or(1), next().unwrap_or(0));
    let seed = next().unwrap_or(0);
    let mut ops = Vec::new();
    while let Some(tag) = next() {
        let mut arg = || next();
        if tag >= tx::FIRST_TAG {
            match tx::decode(tag, &mut arg) {
                Some(op) => {
                    ops.push(Op::Tx(op));
                    continue;
                }
                None => break,
            }
        }
        let op = (|| -> Option<Op> {
            Some(match tag % TAGS {
                0 => Op::CheckOrInsert {
                    item: Item {
                        key: arg()?,
                        ttl: arg()?,
                        value: arg()?,
                    },
                    fp: arg()?,
                },
                1 => {
                    let n = arg()? % 8 + 1;
                    let mut items = Vec::new();
                    for _ in 0..n {
                        items.push(Item {
                            key: arg()?,
                            ttl: arg()?,
                            value: arg()?,
                        });
                    }
                    Op::Batch(items)
                }
                2 => Op::Get(arg()?),
                3 => Op::Remove(arg()?),
                4 => Op::Advance(arg()?),
                5 => Op::Flush,
                6 => Op::Reopen(StoreSpec::from_bytes(arg()?, arg()?)),
                7 => Op::DropReopen,
                8 => Op::PowerLoss,
                9 => Op::Invalid {
                    kind: match arg()? % 7 {
                        0 => InvalidOp::EmptyKey,
                        1 => InvalidOp::LongKey,
                        2 => InvalidOp::LongValue,
                        3 => InvalidOp::ZeroTtl,
                        4 => InvalidOp::HugeTtl,
                        5 => InvalidOp::BatchWithBadItem,
                        _ => InvalidOp::LongFingerprint,
                    },
                    key: arg()?,
                    aux: arg()?,
                },
                10 => {
                    let b = arg()?;
                    Op::Fill {
                        batch: b & 0x80 != 0,
                        ttl: b & 0x7F,
                    }
                }
                11 => Op::Sweep,
                12 => Op::Maintain,
                13 => Op::Checkpoint,
                14 => Op::Claim {
                    key: arg()?,
                    lease: arg()?,
                    fp: arg()?,
                },
                15 => Op::Complete {
                    token: arg()?,
                    ttl: arg()?,
                    value: arg()?,
                },
                16 => Op::Release { token: arg()? },
                17 => Op::With(Item {
                    key: arg()?,
                    ttl: arg()?,
                    value: arg()?,
                }),
                18 => Op::FailSync,
                19 => Op::InDoubt,
                20 => Op::AdvanceMaintain(arg()?),
                _ => Op::WithRace(Item {
                    key: arg()?,
                    ttl: arg()?,
                    value: arg()?,
                }),
            })
        })();
        match op {
            Some(op) => ops.push(op),
            None => break,
        }
    }
    OpsInput { config, seed, ops }
}

/// The bytes [`decode`] turns into `input` (for hand-written seeds).
pub fn encode(input: &OpsInput) -> Vec<u8> {
    let mut out = input.config.to_bytes().to_vec();
    out.push(input.seed);
    let item = |out: &mut Vec<u8>, item: &Item| out.extend([item.key, item.ttl, item.value]);
    for op in &input.ops {
        match op {
            Op::CheckOrInsert { item: it, fp } => {
                out.push(0);
                item(&mut out, it);
                out.push(*fp);
            }
            Op::Batch(items) => {
                assert!((1..=8).contains(&items.len()), "a batch has 1 to 8 items");
                out.extend([1, items.len() as u8 - 1]);
                for it in items {
                    item(&mut out, it);
                }
            }
            Op::Get(key) => out.extend([2, *key]),
            Op::Remove(key) => out.extend([3, *key]),
            Op::Advance(by) => out.extend([4, *by]),
            Op::Flush => out.push(5),
            Op::Reopen(spec) => {
                out.push(6);
                out.extend(spec.to_bytes());
            }
            Op::DropReopen => out.push(7),
            Op::PowerLoss => out.push(8),
            Op::Invalid { kind, key, aux } => {
                let kind = match kind {
                    InvalidOp::EmptyKey => 0,
                    InvalidOp::LongKey => 1,
                    InvalidOp::LongValue => 2,
                    InvalidOp::ZeroTtl => 3,
                    InvalidOp::HugeTtl => 4,
                    InvalidOp::BatchWithBadItem => 5,
                    InvalidOp::LongFingerprint => 6,
                };
                out.extend([9, kind, *key, *aux]);
            }
            Op::Fill { batch, ttl } => out.extend([10, u8::from(*batch) << 7 | (ttl & 0x7F)]),
            Op::Sweep => out.push(11),
            Op::Maintain => out.push(12),
            Op::Checkpoint => out.push(13),
            Op::Claim { key, lease, fp } => out.extend([14, *key, *lease, *fp]),
            Op::Complete { token, ttl, value } => out.extend([15, *token, *ttl, *value]),
            Op::Release { token } => out.extend([16, *token]),
            Op::With(it) => {
                out.push(17);
                item(&mut out, it);
            }
            Op::FailSync => out.push(18),
            Op::InDoubt => out.push(19),
            Op::AdvanceMaintain(by) => out.extend([20, *by]),
            Op::WithRace(it) => {
                out.push(21);
                item(&mut out, it);
            }
            Op::Tx(op) => tx::encode(op, &mut out),
        }
    }
    out
}

/// What one key may hold.
#[derive(Clone, PartialEq, Eq)]
pub enum State {
    /// Nothing (never written, removed, released).
    Absent,
    /// A result; live iff `now < deadline`.
    Result {
        /// The first value.
        value: Vec<u8>,
        /// Absolute deadline in ms.
        deadline: u64,
        /// The fingerprint recorded with it (empty: none).
        fp: Vec<u8>,
    },
    /// A claim; it holds the key iff `now < lease_end`.
    Claim {
        /// The harness's number of the claim (its token).
        number: u64,
        /// Lease end in ms.
        lease_end: u64,
        /// The fingerprint recorded with it (empty: none).
        fp: Vec<u8>,
        /// Open at the last reopen: in doubt.
        recovered: bool,
    },
}

/// A value for messages: text if short text, else its length and first byte.
pub fn show_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if value.len() <= 32 => format!("{text:?}"),
        _ => format!(
            "<{} bytes 0x{:02x}..>",
            value.len(),
            value.first().unwrap_or(&0)
        ),
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Absent => write!(f, "Absent"),
            State::Result {
                value,
                deadline,
                fp,
            } => write!(
                f,
                "Result({}, deadline {deadline}, fp {})",
                show_value(value),
                show_value(fp)
            ),
            State::Claim {
                number,
                lease_end,
                fp,
                recovered,
            } => write!(
                f,
                "Claim(#{number}, lease end {lease_end}, fp {}, in doubt: {recovered})",
                show_value(fp)
            ),
        }
    }
}

impl State {
    /// Whether the state occupies its key at `now`.
    pub fn live(&self, now: u64) -> bool {
        match self {
            State::Absent => false,
            State::Result { deadline, .. } => now < *deadline,
            State::Claim { lease_end, .. } => now < *lease_end,
        }
    }

    fn fp(&self) -> &[u8] {
        match self {
            State::Absent => &[],
            State::Result { fp, .. } | State::Claim { fp, .. } => fp,
        }
    }

    /// A call with fingerprint `fp` on this (live) state fails with `FingerprintMismatch`.
    fn mismatches(&self, fp: Option<&[u8]>) -> bool {
        fp.is_some_and(|fp| !self.fp().is_empty() && self.fp() != fp)
    }

    /// The live result value.
    fn live_value(&self, now: u64) -> Option<&[u8]> {
        match self {
            State::Result { value, .. } if self.live(now) => Some(value),
            _ => None,
        }
    }

    /// The lease end of a live claim.
    fn live_claim(&self, now: u64) -> Option<u64> {
        match self {
            State::Claim { lease_end, .. } if self.live(now) => Some(*lease_end),
            _ => None,
        }
    }
}

/// A TTL in whole milliseconds, rounded up (the documented rule).
pub fn ttl_millis(ttl: Duration) -> u64 {
    ttl.as_nanos().div_ceil(1_000_000) as u64
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

fn push_unique(states: &mut Vec<State>, state: State) {
    if !states.contains(&state) {
        states.push(state);
    }
}

/// The reference: the states each key may be in now, and those it may be in after a power
/// loss now.
#[derive(Debug, Clone)]
pub struct Model {
    /// The model's time, in step with the store's [`ManualClock`].
    pub now: u64,
    /// Possible states now (a missing key: `[Absent]`).
    pub states: BTreeMap<Vec<u8>, Vec<State>>,
    /// Possible states after a power loss now (a missing key: `[Absent]`).
    pub after_crash: BTreeMap<Vec<u8>, Vec<State>>,
    /// How many writes (acknowledged or failed) each key had.
    pub write_counts: HashMap<Vec<u8>, u64>,
    /// State entries and positions.
    pub state: tx::StateModel,
}

impl Model {
    fn new(now: u64) -> Model {
        Model {
            now,
            states: BTreeMap::new(),
            after_crash: BTreeMap::new(),
            write_counts: HashMap::new(),
            state: tx::StateModel::default(),
        }
    }

    /// The possible states of `key`.
    pub fn states(&self, key: &[u8]) -> Vec<State> {
        self.states
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![State::Absent])
    }

    /// Keeps the states of `key` that fit an observed answer; panics if none does.
    fn observe(&mut self, key: &[u8], what: &dyn Fn() -> String, fits: impl Fn(&State) -> bool) {
        let before = self.states(key);
        let kept: Vec<State> = before.iter().filter(|s| fits(s)).cloned().collect();
        if kept.is_empty() {
            panic!(
                "{}\n  no possible state of {} fits that answer (now {}): {}",
                what(),
                crate::show(key),
                self.now,
                show_states(&before)
            );
        }
        self.states.insert(key.to_vec(), kept);
    }

    /// An acknowledged write: the key is in `state`; after a power loss too in `Sync` mode,
    /// otherwise it may or may not be.
    fn set(&mut self, key: &[u8], state: State, sync: bool) {
        *self.write_counts.entry(key.to_vec()).or_default() += 1;
        self.states.insert(key.to_vec(), vec![state.clone()]);
        if sync {
            self.after_crash.insert(key.to_vec(), vec![state]);
        } else {
            let crash = self
                .after_crash
                .entry(key.to_vec())
                .or_insert_with(|| vec![State::Absent]);
            push_unique(crash, state);
        }
    }

    /// A write that failed: it may or may not have happened.
    fn maybe(&mut self, key: &[u8], state: State) {
        *self.write_counts.entry(key.to_vec()).or_default() += 1;
        for map in [&mut self.states, &mut self.after_crash] {
            let states = map
                .entry(key.to_vec())
                .or_insert_with(|| vec![State::Absent]);
            push_unique(states, state.clone());
        }
    }

    /// Everything acknowledged is durable (`flush`, `close`, the disk after a power loss).
    fn durable(&mut self) {
        self.after_crash = self.states.clone();
        self.state.durable();
    }

    /// Power loss.
    fn crashed(&mut self) {
        self.states = self.after_crash.clone();
    }

    /// A process that saw an I/O failure ended: acknowledged writes it had not written out may
    /// be lost even without power loss.
    fn faulted_process_ended(&mut self) {
        for (key, states) in self.after_crash.clone() {
            let now = self
                .states
                .entry(key)
                .or_insert_with(|| vec![State::Absent]);
            for state in states {
                push_unique(now, state);
            }
        }
    }

    /// A reopen: every claim is now one that was open at a reopen.
    fn reopened(&mut self) {
        for map in [&mut self.states, &mut self.after_crash] {
            for states in map.values_mut() {
                let old = std::mem::take(states);
                for mut state in old {
                    if let State::Claim { recovered, .. } = &mut state {
                        *recovered = true;
                    }
                    push_unique(states, state);
                }
            }
        }
    }

    /// Every key the model knows (written at some point).
    fn keys(&self) -> Vec<Vec<u8>> {
        self.states
            .keys()
            .chain(self.after_crash.keys())
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect()
    }

    /// Keys live in every possible state.
    fn certainly_live(&self) -> usize {
        self.states
            .values()
            .filter(|states| states.iter().all(|s| s.live(self.now)))
            .count()
    }
}

fn show_states(states: &[State]) -> String {
    let text = format!("{states:?}");
    if text.len() > 800 {
        let head: String = text.chars().take(800).collect();
        format!("{head}…")
    } else {
        text
    }
}

fn short<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    if text.len() > 200 {
        let head: String = text.chars().take(200).collect();
        format!("{head}…({} chars)", text.len())
    } else {
        text
    }
}

/// A claim `in_doubt()` lists: its key, lease end (ms) and fencing token.
type Doubt = (Vec<u8>, u64, u64);

fn doubts(tokens: &[ClaimToken]) -> Vec<Doubt> {
    let mut listed: Vec<Doubt> = tokens
        .iter()
        .map(|t| (t.key().to_vec(), millis(t.lease_until()), t.fencing_token()))
        .collect();
    listed.sort();
    listed
}

/// What a freshly opened store answers: every key's `get`, and `in_doubt`.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    gets: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    in_doubt: Vec<Doubt>,
    state: tx::StateSnapshot,
}

/// A store, its model, and the disk and clock they share.
pub struct Harness {
    storage: SimStorage,
    clock: ManualClock,
    spec: StoreSpec,
    store: Option<Arc<Store>>,
    /// The reference.
    pub model: Model,
    /// Index of the op being run, for messages.
    step: usize,
    fills: u32,
    sweeps: u32,
    reopens: u32,
    /// Tokens acquired so far, with the harness's number of each claim.
    tokens: Vec<(ClaimToken, u64)>,
    next_claim: u64,
    /// The fencing token of each acquired claim, by its number.
    fences: HashMap<u64, u64>,
    /// The largest fencing token handed out so far (on this disk, across reopens and power
    /// losses): every new one must be larger.
    last_fence: Option<u64>,
    /// Every fsync fails in this process.
    faulted: bool,
    /// What a power loss could leave of each key when the fsyncs began to fail (a missing key:
    /// `[Absent]`).
    durable_at_fault: BTreeMap<Vec<u8>, Vec<State>>,
    /// Keys whose write failed since every fsync fails, in this process (the record may be in
    /// the log, not durable): nothing may be answered from it in `Sync` mode.
    tainted: HashSet<Vec<u8>>,
    /// The model of the open transactions of the session, by slot.
    slots: [Option<tx::TxSlot>; 2],
    /// Transactions started so far.
    next_tx: u64,
}

impl Harness {
    /// Opens a fresh store on a fresh simulated disk.
    pub fn new(spec: StoreSpec, seed: u8) -> Self {
        let clock = ManualClock::new();
        let model = Model::new(ManualClock::DEFAULT_START_MILLIS);
        let mut harness = Harness {
            storage: SimStorage::new(u64::from(seed)),
            clock,
            spec,
            store: None,
            model,
            step: 0,
            fills: 0,
            sweeps: 0,
            reopens: 0,
            tokens: Vec::new(),
            next_claim: 0,
            fences: HashMap::new(),
            last_fence: None,
            faulted: false,
            durable_at_fault: BTreeMap::new(),
            tainted: HashSet::new(),
            slots: [None, None],
            next_tx: 0,
        };
        let store = harness.open_store("first open");
        harness.store = Some(Arc::new(store));
        harness
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("the store is open between ops")
    }

    fn dir() -> &'static Path {
        Path::new(DIR)
    }

    fn open_store(&self, what: &str) -> Store {
        self.storage.set_faults(Faults::default());
        Store::open_with(Self::dir(), self.spec.config(&self.clock, &self.storage))
            .unwrap_or_else(|e| panic!("step {}: {what}: opening the store failed: {e}", self.step))
    }

    /// Every key to ask about: the key space and every key ever written.
    fn universe(&self) -> Vec<Vec<u8>> {
        let mut keys: HashSet<Vec<u8>> = KeyId::all().map(KeyId::bytes).collect();
        keys.extend(self.model.keys());
        let mut keys: Vec<Vec<u8>> = keys.into_iter().collect();
        keys.sort();
        keys
    }

    fn snapshot(&self, store: &Store, what: &str) -> Snapshot {
        let mut gets = BTreeMap::new();
        for key in self.universe() {
            let got = store.get(&key).unwrap_or_else(|e| {
                panic!(
                    "step {}: {what}: get({}) failed on a fresh store: {e}",
                    self.step,
                    crate::show(&key)
                )
            });
            gets.insert(key, got.map(|v| v.into_vec()));
        }
        let in_doubt = doubts(
            &store
                .in_doubt()
                .unwrap_or_else(|e| panic!("step {}: {what}: in_doubt failed: {e}", self.step)),
        );
        let state = self.state_snapshot(store, what);
        Snapshot {
            gets,
            in_doubt,
            state,
        }
    }

    /// The store is gone (closed, dropped or crashed, the model adjusted): opens it with its
    /// checkpoint and then with a full replay, checks both against each other and the model.
    fn reopen(&mut self, what: &str, closed_cleanly: bool) {
        assert!(self.store.is_none());
        self.faulted = false;
        self.tainted.clear();
        self.model.reopened();
        let with_checkpoint = self.open_store(what);
        if closed_cleanly {
            let ignored = &with_checkpoint.recovery_report().checkpoint_ignored;
            assert!(
                ignored.is_none(),
                "step {}: {what}: the checkpoint written at close was ignored: {ignored:?}",
                self.step
            );
        }
        if std::env::var_os("IDEM_FUZZ_TRACE").is_some() {
            let report = with_checkpoint.recovery_report();
            eprintln!(
                "  reopened from a checkpoint with {} deltas (ignored: {:?}, {:?})",
                report.checkpoint_deltas_loaded,
                report.checkpoint_ignored,
                report.checkpoint_delta_ignored
            );
        }
        let a = self.snapshot(&with_checkpoint, what);
        drop(with_checkpoint);
        let checkpoint = Self::dir().join(CHECKPOINT);
        let had_checkpoint = self.storage.remove(&checkpoint).is_ok();
        self.storage
            .sync_dir(Self::dir())
            .expect("syncing the directory");
        let replayed = self.open_store(what);
        let b = self.snapshot(&replayed, what);
        if a != b {
            let differing: Vec<&Vec<u8>> = a
                .gets
                .keys()
                .filter(|k| a.gets.get(*k) != b.gets.get(*k))
                .chain(
                    a.in_doubt
                        .iter()
                        .chain(&b.in_doubt)
                        .filter(|entry| !a.in_doubt.contains(entry) || !b.in_doubt.contains(entry))
                        .map(|(k, _, _)| k),
                )
                .collect();
            let mut diffs = Vec::new();
            for (key, got) in &a.gets {
                let other = b.gets.get(key).cloned().flatten();
                if *got != other {
                    diffs.push(format!(
                        "get({}): with checkpoint {}, full replay {}",
                        crate::show(key),
                        got.as_deref()
                            .map_or("None".into(), |v| format!("Some({})", show_value(v))),
                        other
                            .as_deref()
                            .map_or("None".into(), |v| format!("Some({})", show_value(v)))
                    ));
                }
            }
            diffs.extend(a.state.diff(&b.state));
            if a.in_doubt != b.in_doubt {
                diffs.push(format!(
                    "in_doubt: with checkpoint {:?}, full replay {:?}",
                    a.in_doubt
                        .iter()
                        .map(|(k, t, f)| (crate::show(k), t, f))
                        .collect::<Vec<_>>(),
                    b.in_doubt
                        .iter()
                        .map(|(k, t, f)| (crate::show(k), t, f))
                        .collect::<Vec<_>>()
                ));
            }
            panic!(
                "step {}: {what}: the reopen from the checkpoint (present: {had_checkpoint}) and \
                 the full replay disagree (now {}):\n  {}\n  model: {}",
                self.step,
                self.model.now,
                diffs.join("\n  "),
                differing
                    .iter()
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .map(|k| format!("{} {}", crate::show(k), show_states(&self.model.states(k))))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        self.store = Some(Arc::new(replayed));
        let label = format!("step {}: {what}", self.step);
        self.state_recovered(&b.state, &b.gets, &label);
        for (key, got) in &b.gets {
            self.observe_get(key, got.as_deref(), &label);
        }
        self.observe_in_doubt(&b.in_doubt, &label);
    }

    fn observe_get(&mut self, key: &[u8], got: Option<&[u8]>, label: &str) {
        let now = self.model.now;
        self.model.observe(
            key,
            &|| {
                format!(
                    "{label}: get({}) answered {}",
                    crate::show(key),
                    got.map_or("None".into(), |v| format!("Some({})", show_value(v)))
                )
            },
            |s| s.live_value(now) == got,
        );
    }

    fn observe_in_doubt(&mut self, listed: &[Doubt], label: &str) {
        let now = self.model.now;
        let fences = &self.fences;
        let mut seen = HashSet::new();
        for (key, _, _) in listed {
            assert!(
                seen.insert(key.clone()),
                "{label}: in_doubt lists {} twice",
                crate::show(key)
            );
        }
        for key in self.universe() {
            let listed = listed
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|(_, t, f)| (*t, *f));
            self.model.observe(
                &key,
                &|| {
                    format!(
                        "{label}: in_doubt() {} {}",
                        match listed {
                            Some((until, fence)) =>
                                format!("lists (lease end {until}, fencing token {fence})"),
                            None => "does not list".into(),
                        },
                        crate::show(&key)
                    )
                },
                |s| {
                    let in_doubt = matches!(
                        s,
                        State::Claim {
                            recovered: true,
                            ..
                        }
                    ) && s.live_claim(now).is_some();
                    // The recovered token keeps the fencing token the claim was acquired with
                    // (unknown for a claim whose write failed: any).
                    let same_fence = |fence: u64| match s {
                        State::Claim { number, .. } => {
                            fences.get(number).is_none_or(|f| *f == fence)
                        }
                        _ => false,
                    };
                    match listed {
                        Some((until, fence)) => {
                            in_doubt && s.live_claim(now) == Some(until) && same_fence(fence)
                        }
                        None => !in_doubt,
                    }
                },
            );
        }
        for (key, _, _) in listed {
            assert!(
                self.universe().contains(key),
                "{label}: in_doubt lists {}, never claimed",
                crate::show(key)
            );
        }
    }

    fn check_in_doubt(&mut self) {
        let label = format!("step {}", self.step);
        match self.store().in_doubt() {
            Ok(tokens) => {
                self.observe_in_doubt(&doubts(&tokens), &label);
            }
            Err(e) => self.allowed(&e, "in_doubt"),
        }
    }

    /// An error is allowed only once a fault was injected in this process.
    fn allowed(&self, error: &Error, what: &str) {
        assert!(
            self.faulted,
            "step {}: {what} failed with no injected fault: {error}",
            self.step
        );
    }

    /// An Ok answer (or an answer derived from a record: Duplicate, InFlight, ClaimInFlight,
    /// FingerprintMismatch) about `key`, that fits the states `fits` accepts: in `Sync` mode it
    /// must survive a power loss. Once every fsync fails, a key written since (its record may be
    /// in the log, not durable) must be answered from a state that was durable when the fsyncs
    /// began to fail (an answer that the failed write's state would give too, such as `get` ==
    /// None on a key whose claim failed, is fine when the durable state gives it as well).
    fn answered(&self, key: &[u8], what: &dyn Fn() -> String, fits: &dyn Fn(&State) -> bool) {
        if !(self.spec.sync() && self.faulted && self.tainted.contains(key)) {
            return;
        }
        let durable = self
            .durable_at_fault
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![State::Absent]);
        if !durable.iter().any(fits) {
            panic!(
                "step {}: {} although every fsync fails and {} was written since: an answer \
                 from a record that is not durable (Sync mode); durable states: {}",
                self.step,
                what(),
                crate::show(key),
                show_states(&durable)
            );
        }
    }

    /// A new record was acknowledged: in a faulted `Sync` process that is a lie.
    fn acknowledged(&self, what: &dyn Fn() -> String) {
        if self.spec.sync() && self.faulted {
            panic!(
                "step {}: {} acknowledged although every fsync fails (Sync mode)",
                self.step,
                what()
            );
        }
    }

    /// Runs one op on store and model and compares the answers.
    pub fn step(&mut self, op: &Op) {
        let trace = std::env::var_os("IDEM_FUZZ_TRACE").is_some();
        if trace {
            eprintln!("step {}: {op:?} (now {})", self.step, self.model.now);
        }
        match op {
            Op::CheckOrInsert { item, fp } => self.check_or_insert(item, fingerprint_of(*fp)),
            Op::Batch(items) => self.batch(items),
            Op::Get(key) => self.get(&KeyId(*key).bytes()),
            Op::Remove(key) => self.remove(&KeyId(*key).bytes()),
            Op::Advance(by) => self.advance(advance_of(*by)),
            Op::Flush => match self.store().flush() {
                Ok(()) => self.model.durable(),
                Err(e) => self.allowed(&e, "flush"),
            },
            Op::Reopen(spec) => {
                if self.reopens < MAX_REOPENS {
                    self.reopens += 1;
                    self.close_and_reopen(Some(*spec));
                }
            }
            Op::DropReopen => {
                if self.reopens < MAX_REOPENS {
                    self.reopens += 1;
                    drop(self.store.take());
                    if self.faulted {
                        self.model.faulted_process_ended();
                    } else {
                        // The disk keeps every write: each commit is there.
                        self.model.state.durable();
                    }
                    self.reopen("drop and reopen", false);
                }
            }
            Op::PowerLoss => {
                if self.reopens < MAX_REOPENS {
                    self.reopens += 1;
                    self.power_loss();
                }
            }
            Op::Invalid { kind, key, aux } => self.invalid(*kind, KeyId(*key).bytes(), *aux),
            Op::Fill { batch, ttl } => self.fill(*batch, ttl_of(*ttl)),
            Op::Maintain => self.maintain(),
            Op::Checkpoint => {
                if let Err(e) = self.store().checkpoint() {
                    self.allowed(&e, "checkpoint");
                }
            }
            Op::Claim { key, lease, fp } => {
                self.claim(&KeyId(*key).bytes(), ttl_of(*lease), fingerprint_of(*fp))
            }
            Op::Complete { token, ttl, value } => {
                self.resolve(*token, Some((ttl_of(*ttl), value_of(*value))))
            }
            Op::Release { token } => self.resolve(*token, None),
            Op::Sweep => {
                if self.sweeps < MAX_SWEEPS {
                    self.sweeps += 1;
                    self.sweep(false);
                }
            }
            Op::With(item) => self.with(item),
            Op::FailSync => {
                if !self.faulted {
                    self.durable_at_fault = self.model.after_crash.clone();
                }
                self.faulted = true;
                self.storage.set_faults(Faults {
                    sync_error_per_million: 1_000_000,
                    ..Faults::default()
                });
            }
            Op::InDoubt => self.check_in_doubt(),
            Op::AdvanceMaintain(by) => {
                self.advance(advance_of(*by));
                self.maintain();
                self.maintain();
            }
            Op::WithRace(item) => self.with_race(item),
            Op::Tx(op) => {
                // Outside a session (a harness used op by op): a session of one op.
                let store = Arc::clone(self.store.as_ref().expect("open"));
                let mut txs: tx::Slots<'_> = [None, None];
                self.tx_step(op, &store, &mut txs);
                drop(txs);
                self.tx_session_ended();
            }
        }
        if trace {
            if let Some(store) = &self.store {
                let stats = store.stats();
                eprintln!(
                    "  segments {} deleted {} compacted {} checkpoints {} live {}",
                    stats.segments,
                    stats.segments_deleted,
                    stats.segments_compacted,
                    stats.checkpoints_written,
                    stats.live_keys
                );
            }
        }
        self.step += 1;
    }

    fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        self.model.now += by.as_millis() as u64;
    }

    fn maintain(&mut self) {
        if let Err(e) = self.store().maintain() {
            self.allowed(&e, "maintain");
        }
    }

    fn close_and_reopen(&mut self, spec: Option<StoreSpec>) {
        let store = Arc::into_inner(self.store.take().expect("open"))
            .expect("no transaction session holds the store");
        let same_index =
            spec.is_none_or(|spec| (self.spec.mask, self.spec.shards) == (spec.mask, spec.shards));
        let clean = match store.close() {
            Ok(()) => {
                self.model.durable();
                true
            }
            Err(e) => {
                self.allowed(&e, "close");
                false
            }
        };
        if self.faulted {
            self.model.faulted_process_ended();
        }
        if let Some(spec) = spec {
            self.spec = spec;
        }
        self.reopen("close and reopen", clean && same_index);
    }

    fn power_loss(&mut self) {
        self.storage.crash();
        drop(self.store.take());
        self.model.crashed();
        self.reopen("power loss and reopen", false);
        // What the disk holds after a power loss is durable.
        self.model.durable();
    }

    fn check_or_insert(&mut self, item: &Item, fp: Option<Vec<u8>>) {
        let (key, ttl, value) = (
            KeyId(item.key).bytes(),
            ttl_of(item.ttl),
            value_of(item.value),
        );
        let now = self.model.now;
        let got = match &fp {
            None => self.store().check_or_insert(&key, ttl, &value),
            Some(fp) => self
                .store()
                .check_or_insert_fingerprinted(&key, ttl, &value, fp),
        };
        let what = || {
            format!(
                "step {}: check_or_insert({}, {ttl:?}, fp {fp:?}) answered {}",
                self.step,
                crate::show(&key),
                short(&got)
            )
        };
        let new = State::Result {
            value: value.clone(),
            deadline: now + ttl_millis(ttl),
            fp: fp.clone().unwrap_or_default(),
        };
        let fp = fp.as_deref();
        match &got {
            Ok(Outcome::Inserted) => {
                self.acknowledged(&what);
                self.model.observe(&key, &what, |s| !s.live(now));
                self.model.set(&key, new, self.spec.sync());
            }
            Ok(Outcome::Duplicate(seen)) => {
                let fits = |s: &State| s.live_value(now) == Some(&seen[..]) && !s.mismatches(fp);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(Error::ClaimInFlight { until }) => {
                let until = millis(*until);
                let fits = |s: &State| s.live_claim(now) == Some(until) && !s.mismatches(fp);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(Error::FingerprintMismatch { key_len }) => {
                assert_eq!(*key_len, key.len(), "{}", what());
                let fits = |s: &State| s.live(now) && s.mismatches(fp);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(e) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                if self.model.states(&key).iter().any(|s| !s.live(now)) {
                    self.model.maybe(&key, new);
                }
            }
        }
    }

    fn batch(&mut self, items: &[Item]) {
        let owned: Vec<(Vec<u8>, Duration, Vec<u8>)> = items
            .iter()
            .map(|item| {
                (
                    KeyId(item.key).bytes(),
                    ttl_of(item.ttl),
                    value_of(item.value),
                )
            })
            .collect();
        let now = self.model.now;
        let got = self.store().check_or_insert_batch(&owned);
        let keys: Vec<String> = owned.iter().map(|(k, _, _)| crate::show(k)).collect();
        let what = || {
            format!(
                "step {}: check_or_insert_batch({}) answered {}",
                self.step,
                keys.join(", "),
                short(&got)
            )
        };
        match &got {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), owned.len(), "{}", what());
                for ((key, ttl, value), outcome) in owned.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Inserted => {
                            self.acknowledged(&what);
                            self.model.observe(key, &what, |s| !s.live(now));
                            let new = State::Result {
                                value: value.clone(),
                                deadline: now + ttl_millis(*ttl),
                                fp: Vec::new(),
                            };
                            self.model.set(key, new, self.spec.sync());
                        }
                        Outcome::Duplicate(seen) => {
                            let fits = |s: &State| s.live_value(now) == Some(&seen[..]);
                            self.answered(key, &what, &fits);
                            self.model.observe(key, &what, fits);
                        }
                    }
                }
            }
            Err(Error::ClaimInFlight { until }) => {
                let until = millis(*until);
                let claimed = owned.iter().any(|(key, _, _)| {
                    self.model
                        .states(key)
                        .iter()
                        .any(|s| s.live_claim(now) == Some(until))
                });
                assert!(
                    claimed,
                    "{}: no item's key is claimed until {until}",
                    what()
                );
                // A failed batch records nothing: every key answers as before.
                for (key, _, _) in &owned {
                    self.get(key);
                }
            }
            Err(e) => {
                self.allowed(e, &what());
                for (key, _, _) in &owned {
                    if self.faulted {
                        self.tainted.insert(key.to_vec());
                    }
                }
                for (key, ttl, value) in &owned {
                    if self.model.states(key).iter().any(|s| !s.live(now)) {
                        let new = State::Result {
                            value: value.clone(),
                            deadline: now + ttl_millis(*ttl),
                            fp: Vec::new(),
                        };
                        self.model.maybe(key, new);
                    }
                }
            }
        }
    }

    fn get(&mut self, key: &[u8]) {
        match self.store().get(key) {
            Ok(got) => {
                let got = got.map(|v| v.into_vec());
                let label = format!("step {}", self.step);
                let now = self.model.now;
                self.answered(
                    key,
                    &|| {
                        format!(
                            "{label}: get({}) answered {}",
                            crate::show(key),
                            short(&got)
                        )
                    },
                    &|s| s.live_value(now) == got.as_deref(),
                );
                self.observe_get(key, got.as_deref(), &label);
            }
            Err(e) => self.allowed(&e, "get"),
        }
    }

    fn remove(&mut self, key: &[u8]) {
        let now = self.model.now;
        let got = self.store().remove(key);
        let what = || {
            format!(
                "step {}: remove({}) answered {}",
                self.step,
                crate::show(key),
                short(&got)
            )
        };
        match &got {
            Ok(true) => {
                self.acknowledged(&what);
                self.model.observe(key, &what, |s| s.live(now));
                self.model.set(key, State::Absent, self.spec.sync());
            }
            Ok(false) => {
                let fits = |s: &State| !s.live(now);
                self.answered(key, &what, &fits);
                self.model.observe(key, &what, fits);
            }
            Err(e) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                self.model.maybe(key, State::Absent);
            }
        }
    }

    fn claim(&mut self, key: &[u8], lease: Duration, fp: Option<Vec<u8>>) {
        let now = self.model.now;
        let got = match &fp {
            None => self.store().claim(key, lease),
            Some(fp) => self.store().claim_fingerprinted(key, lease, fp),
        };
        let what = || {
            format!(
                "step {}: claim({}, {lease:?}, fp {fp:?}) answered {}",
                self.step,
                crate::show(key),
                short(&got)
            )
        };
        let number = self.next_claim;
        self.next_claim += 1;
        let new = State::Claim {
            number,
            lease_end: now + ttl_millis(lease),
            fp: fp.clone().unwrap_or_default(),
            recovered: false,
        };
        let fp = fp.as_deref();
        match &got {
            Ok(Claim::Acquired(token)) => {
                self.acknowledged(&what);
                assert_eq!(token.key(), key, "{}", what());
                assert_eq!(
                    millis(token.lease_until()),
                    now + ttl_millis(lease),
                    "{}: lease end",
                    what()
                );
                self.model.observe(key, &what, |s| !s.live(now));
                let fence = token.fencing_token();
                assert!(
                    self.last_fence.is_none_or(|last| fence > last),
                    "{}: fencing token {fence} not above the last one handed out ({:?})",
                    what(),
                    self.last_fence
                );
                self.last_fence = Some(fence);
                self.fences.insert(number, fence);
                self.model.set(key, new, self.spec.sync());
                self.tokens.push((token.clone(), number));
            }
            Ok(Claim::Duplicate(seen)) => {
                let fits = |s: &State| s.live_value(now) == Some(&seen[..]) && !s.mismatches(fp);
                self.answered(key, &what, &fits);
                self.model.observe(key, &what, fits);
            }
            Ok(Claim::InFlight { until }) => {
                let until = millis(*until);
                let fits = |s: &State| s.live_claim(now) == Some(until) && !s.mismatches(fp);
                self.answered(key, &what, &fits);
                self.model.observe(key, &what, fits);
            }
            Err(Error::FingerprintMismatch { .. }) => {
                let fits = |s: &State| s.live(now) && s.mismatches(fp);
                self.answered(key, &what, &fits);
                self.model.observe(key, &what, fits);
            }
            Err(e) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                if self.model.states(key).iter().any(|s| !s.live(now)) {
                    self.model.maybe(key, new);
                }
            }
        }
    }

    /// Completes (with a result) or releases one of the tokens acquired so far.
    fn resolve(&mut self, token: u8, result: Option<(Duration, Vec<u8>)>) {
        if self.tokens.is_empty() {
            return;
        }
        let (token, number) = self.tokens[usize::from(token) % self.tokens.len()].clone();
        let key = token.key().to_vec();
        let fp = token.fingerprint().to_vec();
        let now = self.model.now;
        let (got, new) = match &result {
            Some((ttl, value)) => (
                self.store().complete(token, *ttl, value),
                State::Result {
                    value: value.clone(),
                    deadline: now + ttl_millis(*ttl),
                    fp,
                },
            ),
            None => (self.store().release(token), State::Absent),
        };
        let what = || {
            format!(
                "step {}: {} of claim #{number} of {} answered {}",
                self.step,
                match &result {
                    Some((ttl, _)) => format!("complete (ttl {ttl:?})"),
                    None => "release".into(),
                },
                crate::show(&key),
                short(&got)
            )
        };
        let holds =
            |s: &State| matches!(s, State::Claim { number: n, .. } if *n == number) && s.live(now);
        match &got {
            Ok(()) => {
                self.acknowledged(&what);
                self.model.observe(&key, &what, holds);
                self.model.set(&key, new, self.spec.sync());
            }
            Err(Error::StaleClaim { .. }) => {
                self.model.observe(&key, &what, |s| !holds(s));
            }
            Err(e) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                if self.model.states(&key).iter().any(holds) {
                    self.model.maybe(&key, new);
                }
            }
        }
    }

    fn with(&mut self, item: &Item) {
        let (key, ttl, value) = (
            KeyId(item.key).bytes(),
            ttl_of(item.ttl),
            value_of(item.value),
        );
        let now = self.model.now;
        let ran = Cell::new(false);
        let got = self.store().check_or_insert_with(&key, ttl, || {
            ran.set(true);
            Ok::<_, std::convert::Infallible>(value.clone())
        });
        let ran = ran.get();
        let what = || {
            format!(
                "step {}: check_or_insert_with({}, {ttl:?}) answered {} (closure ran: {ran})",
                self.step,
                crate::show(&key),
                short(&got)
            )
        };
        let new = State::Result {
            value: value.clone(),
            deadline: now + ttl_millis(ttl),
            fp: Vec::new(),
        };
        // Bug 11 of issue #9: the closure must not run on a key held by a claim.
        assert!(
            !(ran && matches!(&got, Err(WithError::Store(Error::ClaimInFlight { .. })))),
            "{}: check_or_insert_with ran its closure on a key held by a claim",
            what()
        );
        if ran {
            // The side effect happened: the key must have been free.
            self.model
                .observe(&key, &|| format!("{}: the closure ran", what()), |s| {
                    !s.live(now)
                });
        }
        match &got {
            Ok(Outcome::Inserted) => {
                assert!(ran, "{}: inserted without running the closure", what());
                self.acknowledged(&what);
                self.model.set(&key, new, self.spec.sync());
            }
            Ok(Outcome::Duplicate(seen)) => {
                assert!(!ran, "{}: the closure ran on a live key", what());
                let fits = |s: &State| s.live_value(now) == Some(&seen[..]);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(WithError::Store(Error::ClaimInFlight { until })) => {
                assert!(
                    !ran,
                    "{}: check_or_insert_with ran its closure on a key held by a claim",
                    what()
                );
                let until = millis(*until);
                let fits = |s: &State| s.live_claim(now) == Some(until);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(WithError::Store(e)) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                if ran {
                    self.model.maybe(&key, new);
                }
            }
            Err(e) => panic!("{}: unexpected error {e:?}", what()),
        }
    }

    /// A second thread leads `check_or_insert_with` of the key; its closure signals, then
    /// waits a little, while this thread's call of the same key waits for it (or, if it comes
    /// late, finds the leader's value). Both must agree with the model; in a faulted `Sync`
    /// process neither may return Ok.
    fn with_race(&mut self, item: &Item) {
        let (key, ttl, value) = (
            KeyId(item.key).bytes(),
            ttl_of(item.ttl),
            value_of(item.value),
        );
        let now = self.model.now;
        let store = self.store.as_ref().expect("open");
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (leader, follower) = std::thread::scope(|scope| {
            let (key, value) = (&key, &value);
            let leader = scope.spawn(move || {
                // Dropped when the leader returns, so the wait below never outlasts it.
                let started_tx = started_tx;
                let ran = Cell::new(false);
                let got = store.check_or_insert_with(key, ttl, || {
                    ran.set(true);
                    let _ = started_tx.send(());
                    std::thread::sleep(Duration::from_millis(2));
                    Ok::<_, std::convert::Infallible>(value.clone())
                });
                (got, ran.get())
            });
            // Wait until the leader's closure runs (or the leader returned without it).
            let _ = started_rx.recv_timeout(Duration::from_secs(5));
            let ran = Cell::new(false);
            let follower = store.check_or_insert_with(key, ttl, || {
                ran.set(true);
                Ok::<_, std::convert::Infallible>(b"follower".to_vec())
            });
            (leader.join().expect("leader thread"), (follower, ran.get()))
        });
        let what = || {
            format!(
                "step {}: check_or_insert_with race on {}: leader {} (ran {}), follower {} (ran {})",
                self.step,
                crate::show(&key),
                short(&leader.0),
                leader.1,
                short(&follower.0),
                follower.1
            )
        };
        let new = State::Result {
            value: value.clone(),
            deadline: now + ttl_millis(ttl),
            fp: Vec::new(),
        };
        assert!(
            !follower.1 || !leader.1 || leader.0.is_err(),
            "{}: both closures ran",
            what()
        );
        // The leader's answer first.
        match &leader.0 {
            Ok(Outcome::Inserted) => {
                assert!(leader.1, "{}", what());
                self.acknowledged(&what);
                self.model.observe(&key, &what, |s| !s.live(now));
                self.model.set(&key, new, self.spec.sync());
            }
            Ok(Outcome::Duplicate(seen)) => {
                let fits = |s: &State| s.live_value(now) == Some(&seen[..]);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(WithError::Store(Error::ClaimInFlight { until })) => {
                assert!(!leader.1, "{}: closure ran on a claimed key", what());
                let until = millis(*until);
                let fits = |s: &State| s.live_claim(now) == Some(until);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(WithError::Store(e)) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                if leader.1 {
                    self.model.maybe(&key, new.clone());
                }
            }
            Err(e) => panic!("{}: unexpected leader error {e:?}", what()),
        }
        // The follower ran after or while the leader: it sees the key as the model has it now,
        // unless it took over after a failed leader.
        match &follower.0 {
            Ok(Outcome::Inserted) => {
                assert!(follower.1, "{}", what());
                self.acknowledged(&what);
                self.model.observe(&key, &what, |s| !s.live(now));
                let mine = State::Result {
                    value: b"follower".to_vec(),
                    deadline: now + ttl_millis(ttl),
                    fp: Vec::new(),
                };
                self.model.set(&key, mine, self.spec.sync());
            }
            Ok(Outcome::Duplicate(seen)) => {
                assert!(!follower.1, "{}: closure ran on a live key", what());
                let fits = |s: &State| s.live_value(now) == Some(&seen[..]);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(WithError::Store(Error::ClaimInFlight { until })) => {
                assert!(!follower.1, "{}: closure ran on a claimed key", what());
                let until = millis(*until);
                let fits = |s: &State| s.live_claim(now) == Some(until);
                self.answered(&key, &what, &fits);
                self.model.observe(&key, &what, fits);
            }
            Err(WithError::Store(e)) => {
                self.allowed(e, &what());
                if self.faulted {
                    self.tainted.insert(key.to_vec());
                }
                if follower.1 {
                    let mine = State::Result {
                        value: b"follower".to_vec(),
                        deadline: now + ttl_millis(ttl),
                        fp: Vec::new(),
                    };
                    self.model.maybe(&key, mine);
                }
            }
            Err(e) => panic!("{}: unexpected follower error {e:?}", what()),
        }
    }

    fn fill(&mut self, batch: bool, ttl: Duration) {
        if self.fills >= MAX_FILLS {
            return;
        }
        self.fills += 1;
        let items: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..8u8)
            .map(|i| {
                let key = format!("fill-{}-{i}", self.fills).into_bytes();
                (key, ttl, value_of(0xF0 | (i << 2)))
            })
            .collect();
        let now = self.model.now;
        let answers: Vec<idem::Result<Outcome>> = if batch {
            match self.store().check_or_insert_batch(&items) {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(e) => {
                    self.allowed(&e, "fill batch");
                    items.iter().map(|_| Err(Error::ZeroTtl)).collect()
                }
            }
        } else {
            items
                .iter()
                .map(|(key, ttl, value)| self.store().check_or_insert(key, *ttl, value))
                .collect()
        };
        for ((key, ttl, value), got) in items.iter().zip(answers) {
            let new = State::Result {
                value: value.clone(),
                deadline: now + ttl_millis(*ttl),
                fp: Vec::new(),
            };
            let what = || format!("step {}: fill {}", self.step, crate::show(key));
            match got {
                Ok(Outcome::Inserted) => {
                    self.acknowledged(&what);
                    self.model.observe(key, &what, |s| !s.live(now));
                    self.model.set(key, new, self.spec.sync());
                }
                Ok(Outcome::Duplicate(_)) => panic!("{}: a fresh key was a duplicate", what()),
                Err(e) => {
                    self.allowed(&e, &what());
                    if self.faulted {
                        self.tainted.insert(key.to_vec());
                    }
                    self.model.maybe(key, new);
                }
            }
        }
    }

    fn invalid(&mut self, kind: InvalidOp, key: Vec<u8>, aux: u8) {
        let store = self.store.as_ref().expect("open");
        let long_key = vec![b'x'; MAX_KEY_BYTES + 1];
        let ttl = Duration::from_secs(1);
        let bad_key = |bad: &[u8]| match aux % 4 {
            0 => store.check_or_insert(bad, ttl, b"v").err(),
            1 => store.get(bad).err(),
            2 => store.remove(bad).err(),
            _ => store.claim(bad, ttl).err(),
        };
        let error = match kind {
            InvalidOp::EmptyKey => bad_key(b""),
            InvalidOp::LongKey => bad_key(&long_key),
            InvalidOp::LongValue => {
                let value = vec![7u8; idem::MAX_VALUE_BYTES + 1];
                store.check_or_insert(&key, ttl, &value).err()
            }
            InvalidOp::ZeroTtl => store.check_or_insert(&key, Duration::ZERO, b"v").err(),
            InvalidOp::HugeTtl => {
                let huge = MAX_TTL + Duration::from_nanos(1);
                store.check_or_insert(&key, huge, b"v").err()
            }
            InvalidOp::BatchWithBadItem => {
                let mut owned: Vec<(Vec<u8>, Duration, Vec<u8>)> = (0..aux % 5)
                    .map(|i| (KeyId(key[0].wrapping_add(i)).bytes(), ttl, value_of(i)))
                    .collect();
                let at = usize::from(aux) % (owned.len() + 1);
                owned.insert(at, (b"bad".to_vec(), Duration::ZERO, b"v".to_vec()));
                store.check_or_insert_batch(&owned).err()
            }
            InvalidOp::LongFingerprint => {
                let fp = vec![b'f'; idem::record::MAX_FINGERPRINT_BYTES + 1];
                if aux.is_multiple_of(2) {
                    store
                        .check_or_insert_fingerprinted(&key, ttl, b"v", &fp)
                        .err()
                } else {
                    store.claim_fingerprinted(&key, ttl, &fp).err()
                }
            }
        };
        let error =
            error.unwrap_or_else(|| panic!("step {}: {kind:?} ({aux}) was accepted", self.step));
        if matches!(error, Error::Poisoned { .. } | Error::Io { .. }) {
            // Validation may come after the poison check.
            self.allowed(&error, "invalid input");
            return;
        }
        let expected_kind = match kind {
            InvalidOp::EmptyKey => matches!(error, Error::EmptyKey),
            InvalidOp::LongKey => {
                matches!(error, Error::KeyTooLarge { len, max } if len == MAX_KEY_BYTES + 1 && max == MAX_KEY_BYTES)
            }
            InvalidOp::LongValue => matches!(error, Error::ValueTooLarge { .. }),
            InvalidOp::ZeroTtl | InvalidOp::BatchWithBadItem => matches!(error, Error::ZeroTtl),
            InvalidOp::HugeTtl => matches!(error, Error::TtlTooLarge { .. }),
            InvalidOp::LongFingerprint => matches!(error, Error::FingerprintTooLarge { .. }),
        };
        assert!(
            expected_kind,
            "step {}: {kind:?} failed with the wrong error: {error:?}",
            self.step
        );
        // The model is unchanged; the next ops (and the final sweeps) check the store is too.
    }

    /// Gets every key of the key space (and with `all`, every key ever written), `in_doubt`,
    /// and the stats.
    pub fn sweep(&mut self, all: bool) {
        let keys: Vec<Vec<u8>> = if all {
            self.universe()
        } else {
            KeyId::all().map(KeyId::bytes).collect()
        };
        for key in keys {
            self.get(&key);
        }
        self.check_in_doubt();
        let store = Arc::clone(self.store.as_ref().expect("open"));
        self.store_state(&store);
        if !self.faulted {
            let stats = self.store().stats();
            assert!(
                stats.live_keys >= self.model.certainly_live() as u64,
                "step {}: stats count {} index entries, the model has {} certainly live keys",
                self.step,
                stats.live_keys,
                self.model.certainly_live()
            );
            assert!(stats.segments >= 1);
        }
    }

    /// The end of a run: a sweep, a clean close and differential reopen, a sweep, a power loss
    /// and differential reopen, a sweep, a close.
    pub fn finish(mut self) {
        self.sweep(true);
        self.close_and_reopen(None);
        self.sweep(true);
        self.power_loss();
        self.sweep(true);
        let store = Arc::into_inner(self.store.take().expect("open"))
            .expect("no transaction session holds the store");
        store.close().expect("close");
    }
}

/// Runs one input.
pub fn run(input: &OpsInput) {
    let mut harness = Harness::new(input.config, input.seed);
    let ops: Vec<&Op> = input.ops.iter().take(MAX_OPS).collect();
    let mut at = 0;
    while at < ops.len() {
        // A session: the ops up to the next one that needs the store to itself, with up to two
        // transactions open across them.
        let store = Arc::clone(harness.store.as_ref().expect("open"));
        let mut txs: tx::Slots<'_> = [None, None];
        while let Some(op) = ops.get(at).filter(|op| !op.owns_store()) {
            match op {
                Op::Tx(op) => harness.tx_step_traced(op, &store, &mut txs),
                op => harness.step(op),
            }
            at += 1;
        }
        drop(txs);
        harness.tx_session_ended();
        drop(store);
        if let Some(op) = ops.get(at) {
            harness.step(op);
            at += 1;
        }
    }
    harness.finish();
}

/// Runs one input given as bytes (the fuzz target).
pub fn run_bytes(bytes: &[u8]) {
    run(&decode(bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let input = OpsInput {
            config: StoreSpec::plain(DurabilitySpec::Never),
            seed: 3,
            ops: vec![
                Op::CheckOrInsert {
                    item: Item {
                        key: 1,
                        ttl: 2,
                        value: 3,
                    },
                    fp: 1,
                },
                Op::Batch(vec![Item {
                    key: 1,
                    ttl: 1,
                    value: 1,
                }]),
                Op::Reopen(StoreSpec {
                    mask: MaskSpec::TagBits(5),
                    ..StoreSpec::plain(DurabilitySpec::Periodic)
                }),
                Op::PowerLoss,
                Op::Fill {
                    batch: true,
                    ttl: 3,
                },
                Op::WithRace(Item {
                    key: 2,
                    ttl: 3,
                    value: 4,
                }),
                Op::Tx(tx::TxOp::SetPosition {
                    slot: 1,
                    source: 2,
                    position: 0xFF,
                }),
                Op::Tx(tx::TxOp::CheckOrInsert {
                    slot: 0,
                    item: Item {
                        key: 127,
                        ttl: 1,
                        value: 2,
                    },
                }),
                Op::Tx(tx::TxOp::ReadModifyWrite {
                    slot: 1,
                    key: 3,
                    value: 4,
                }),
                Op::Tx(tx::TxOp::StoreState),
                Op::Tx(tx::TxOp::Commit { slot: 1 }),
            ],
        };
        assert_eq!(decode(&encode(&input)), input);
    }

    #[test]
    fn older_inputs_keep_their_meaning() {
        // Below the transaction tags a tag byte is read modulo 22, as before.
        let old = [1, 0, 7, 22 + 2, 5, 220 + 11, 220 + 12];
        let input = decode(&old);
        assert_eq!(input.ops, vec![Op::Get(5), Op::Sweep, Op::Maintain]);
    }
}
